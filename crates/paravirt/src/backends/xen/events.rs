//! Event channels, both flavours: ports bound to the timer and to IPIs, and the
//! upcall that turns pending ports into the kernel's interrupt vectors.
//!
//! Xen signals events through each vCPU's `vcpu_info` (`evtchn_upcall_pending`,
//! the selector word) and the `evtchn_pending`/`evtchn_mask` bitmaps in
//! `shared_info`. It enters the upcall through `set_callbacks` (PV) or the
//! vector named by `HVM_PARAM_CALLBACK_IRQ` (HVM/PVH). The upcall marks the
//! vectors its ports stand for and runs each through the handler the kernel's IDT
//! gives for it, with the frame an interrupt would have pushed, so the kernel
//! sees ordinary interrupts on its own vectors.
//!
//! Per CPU: the kernel's CPU number is the Xen vCPU id under PV (the backend
//! starts the vCPUs itself); under HVM/PVH only CPU 0 binds ports. Each CPU
//! scans its own `vcpu_info` and handles only the ports bound to it.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::abi::{evtchn, hypercall as hc, shared_info as si, SchedPoll};
use super::hypercall::{call, call3, ptr};
use super::ops::SHARED_INFO;
use crate::ops::cpu::DescriptorTablePointer;
use crate::MAX_CPUS;

const IF: u64 = 1 << 9;
/// No port bound.
pub(super) const NO_PORT: u32 = u32::MAX;

static EVENTS: AtomicU64 = AtomicU64::new(0);

/// Events delivered through the upcall so far.
pub fn delivered() -> u64 {
    EVENTS.load(Ordering::Relaxed)
}

/// Binds an event channel with `cmd` (the argument's last word receives the
/// port); `None` if Xen refused.
fn bind_port<const N: usize>(cmd: u64, arg: &mut [u32; N]) -> Option<u32> {
    (call3(hc::EVENT_CHANNEL_OP, cmd, arg.as_mut_ptr() as u64, 0) == 0).then(|| arg[N - 1])
}

/// [`bind_port`], then unmasks the port; [`NO_PORT`] if Xen refused.
fn bind<const N: usize>(cmd: u64, arg: &mut [u32; N]) -> u32 {
    let Some(port) = bind_port(cmd, arg) else { return NO_PORT };
    call3(hc::EVENT_CHANNEL_OP, evtchn::UNMASK, ptr(&port), 0);
    port
}

/// Handlers of the kernel's IDT, by vector: where the entry stubs and the upcall
/// send each exception and event.
pub(super) static HANDLERS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

core::arch::global_asm!(
    r#"
    .pushsection .text.xen_upcall, "ax"
    /* Entered with events (PV) or interrupts (HVM) off, an interrupt frame on
       the stack. Run every pending vector's handler, then return. */
    .macro xen_upcall_body
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    cld
2:
    mov rbx, rsp
    and rsp, -16
    call {next}
    mov rsp, rbx
    test rax, rax
    jz 3f
    /* Enter the vector's handler as an interrupt would, returning to 2b. */
    mov rcx, rsp
    push qword ptr [rcx + 80 + 32]
    push rcx
    pushfq
    push qword ptr [rcx + 80 + 8]
    lea rdx, [rip + 2b]
    push rdx
    jmp rax
3:
    mov rdi, [rsp + 80 + 16]
    mov rbx, rsp
    and rsp, -16
    call {exit}
    mov rsp, rbx
    test rax, rax
    jnz 2b
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    iretq
    .endm

    /* PV: Xen pushes rcx and r11 above the frame and reports the kernel's CS
       and SS with RPL 0 (see the PV trap stubs). */
    .balign 16
    .global xen_pv_upcall
xen_pv_upcall:
    pop rcx
    pop r11
    or byte ptr [rsp + 8], 3
    or byte ptr [rsp + 32], 3
    xen_upcall_body

    /* HVM: an interrupt gate at the callback vector. */
    .balign 16
    .global xen_hvm_upcall
xen_hvm_upcall:
    xen_upcall_body
    .popsection
    "#,
    next = sym upcall_next,
    exit = sym upcall_exit,
);

extern "C" {
    /// The PV event callback (`set_callbacks`).
    pub(super) fn xen_pv_upcall();
    /// The HVM callback-vector handler.
    pub(super) fn xen_hvm_upcall();
}

/// Address of an assembly entry point (to hand to Xen; never called from Rust).
pub(super) fn entry_address(f: unsafe extern "C" fn()) -> u64 {
    f as usize as u64
}

/// One present gate of an IDT.
pub(super) struct Gate {
    /// Vector.
    pub vector: usize,
    /// Descriptor privilege level.
    pub dpl: u8,
}

/// Records the handler of every gate of `idt` in [`HANDLERS`] (0 when absent)
/// and calls `each` for the present ones.
///
/// # Safety
/// `idt` must describe a readable IDT.
pub(super) unsafe fn record_idt(idt: &DescriptorTablePointer, mut each: impl FnMut(Gate)) {
    let gates = (usize::from(idt.limit) + 1) / 16;
    for (vector, slot) in HANDLERS.iter().enumerate().take(gates) {
        // SAFETY: gate `vector` lies within the table the caller described.
        let (lo, hi) = unsafe {
            let g = (idt.base + vector as u64 * 16) as *const u64;
            (g.read_unaligned(), g.add(1).read_unaligned())
        };
        let present = lo & (1 << 47) != 0;
        let handler = (lo & 0xffff) | ((lo >> 32) & 0xffff_0000) | ((hi & 0xffff_ffff) << 32);
        slot.store(if present { handler } else { 0 }, Ordering::Release);
        if present {
            each(Gate { vector, dpl: ((lo >> 45) & 3) as u8 });
        }
    }
}

/// This CPU's index into the per-CPU tables (and its vCPU id: under Xen PV
/// the kernel starts vCPU n as its CPU n).
fn this_cpu() -> usize {
    crate::cpus::slot(crate::current_cpu())
}

/// The byte or word at `off` in this vCPU's `vcpu_info`, of the
/// [`si::VCPUS`] shared_info holds (a vCPU beyond is never started: see
/// `pv::start_cpu`).
pub(super) fn vcpu_field<T>(off: usize) -> *mut T {
    let cpu = this_cpu();
    assert!(cpu < si::VCPUS, "xen: vCPU {cpu} has no vcpu_info in shared_info (it holds {})", si::VCPUS);
    (SHARED_INFO.0.get() as usize + cpu * si::VCPU_INFO_SIZE + off) as *mut T
}

pub(super) fn upcall_mask() -> &'static AtomicU8 {
    // SAFETY: the mask byte of this vCPU's vcpu_info, in the mapped shared_info.
    unsafe { AtomicU8::from_ptr(vcpu_field(si::vcpu_info::UPCALL_MASK)) }
}

pub(super) fn upcall_pending() -> &'static AtomicU8 {
    // SAFETY: as `upcall_mask`.
    unsafe { AtomicU8::from_ptr(vcpu_field(si::vcpu_info::UPCALL_PENDING)) }
}

fn shared_word(base: usize, word: usize) -> &'static AtomicU64 {
    // SAFETY: `evtchn_pending`/`evtchn_mask` are 64 words each in shared_info.
    unsafe { AtomicU64::from_ptr((SHARED_INFO.0.get() as usize + base + word * 8) as *mut u64) }
}

/// Per CPU: the port of its one-shot timer.
pub(super) static TIMER_PORT: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NO_PORT) }; MAX_CPUS];
static TIMER_VECTOR: AtomicU32 = AtomicU32::new(0);
/// Per CPU: the port other CPUs notify to interrupt it.
pub(super) static IPI_PORT: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NO_PORT) }; MAX_CPUS];
/// Per CPU: vectors waiting to be run through the kernel's handlers (set by the
/// timer port and by IPI senders).
static PENDING_VECTORS: [[AtomicU64; 4]; MAX_CPUS] = [const { [const { AtomicU64::new(0) }; 4] }; MAX_CPUS];
/// Per CPU: words of `evtchn_pending` still to scan (Xen's selector, accumulated).
static PENDING_WORDS: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// Marks `vector` for delivery on `cpu`; exception vectors (and 0: no timer
/// vector set yet) are never raised by events.
pub(super) fn raise(cpu: usize, vector: u32) {
    if !(32..256).contains(&vector) {
        return;
    }
    PENDING_VECTORS[crate::cpus::slot(cpu as u32)][(vector as usize / 64) % 4]
        .fetch_or(1 << (vector % 64), Ordering::AcqRel);
}

fn take_vector(cpu: usize) -> Option<usize> {
    for (w, word) in PENDING_VECTORS[cpu].iter().enumerate() {
        let bits = word.load(Ordering::Acquire);
        if bits != 0 {
            let b = bits.trailing_zeros();
            word.fetch_and(!(1 << b), Ordering::AcqRel);
            return Some(w * 64 + b as usize);
        }
    }
    None
}

/// The ports of word `w` bound to `cpu`.
fn owned_ports(cpu: usize, w: usize) -> u64 {
    [&TIMER_PORT[cpu], &IPI_PORT[cpu]]
        .iter()
        .map(|p| p.load(Ordering::Relaxed))
        .filter(|&p| p != NO_PORT && p as usize / 64 == w)
        .fold(0, |m, p| m | 1 << (p % 64))
}

/// Moves this CPU's pending, unmasked ports to its pending vectors; true if any.
fn collect_events(cpu: usize) -> bool {
    upcall_pending().store(0, Ordering::SeqCst);
    // SAFETY: this vCPU's selector word in the mapped shared_info.
    let sel = unsafe { AtomicU64::from_ptr(vcpu_field(si::vcpu_info::PENDING_SEL)) };
    PENDING_WORDS[cpu].fetch_or(sel.swap(0, Ordering::AcqRel), Ordering::AcqRel);
    let mut any = false;
    let mut words = PENDING_WORDS[cpu].load(Ordering::Acquire);
    while words != 0 {
        let w = words.trailing_zeros() as usize;
        words &= words - 1;
        let ready = shared_word(si::EVTCHN_PENDING, w).load(Ordering::Acquire)
            & !shared_word(si::EVTCHN_MASK, w).load(Ordering::Acquire)
            & owned_ports(cpu, w);
        if ready == 0 {
            PENDING_WORDS[cpu].fetch_and(!(1 << w), Ordering::AcqRel);
            continue;
        }
        let mut bits = ready;
        while bits != 0 {
            let b = bits.trailing_zeros();
            bits &= bits - 1;
            shared_word(si::EVTCHN_PENDING, w).fetch_and(!(1 << b), Ordering::AcqRel);
            EVENTS.fetch_add(1, Ordering::Relaxed);
            if (w * 64) as u32 + b == TIMER_PORT[cpu].load(Ordering::Relaxed) {
                raise(cpu, TIMER_VECTOR.load(Ordering::Relaxed));
            }
            // An IPI port only wakes us: senders set their vectors first.
            any = true;
        }
    }
    any
}

/// The next handler to run from the upcall, or 0 when nothing is pending.
extern "C" fn upcall_next() -> u64 {
    let cpu = this_cpu();
    loop {
        if let Some(v) = take_vector(cpu) {
            match HANDLERS[v].load(Ordering::Acquire) {
                0 => continue, // no handler: drop it, as a masked line would
                h => return h,
            }
        }
        if !collect_events(cpu) && PENDING_VECTORS[cpu].iter().all(|w| w.load(Ordering::Acquire) == 0) {
            return 0;
        }
    }
}

/// Leaving the upcall: restore the interrupted context's event mask; 1 means an
/// event slipped in after unmasking and the upcall must run again (masked).
extern "C" fn upcall_exit(interrupted_rflags: u64) -> u64 {
    if interrupted_rflags & IF == 0 {
        return 0;
    }
    upcall_mask().store(0, Ordering::SeqCst);
    if upcall_pending().load(Ordering::SeqCst) != 0 {
        upcall_mask().store(1, Ordering::SeqCst);
        return 1;
    }
    0
}

/// Stops vCPU `cpu`'s default 100 Hz periodic timer and binds its `VIRQ_TIMER`,
/// so the port fires only for [`set_timer`] deadlines. Any vCPU may do this for
/// any other.
pub(super) fn bind_timer(cpu: u32) {
    call(hc::VCPU_OP, [super::abi::VCPUOP_STOP_PERIODIC_TIMER, u64::from(cpu), 0, 0, 0]);
    let port = bind(evtchn::BIND_VIRQ, &mut [evtchn::VIRQ_TIMER, cpu, 0]);
    TIMER_PORT[crate::cpus::slot(cpu)].store(port, Ordering::Relaxed);
}

/// Binds an IPI port for vCPU `cpu` (from any vCPU).
pub(super) fn bind_ipi(cpu: u32) {
    let port = bind(evtchn::BIND_IPI, &mut [cpu, 0]);
    IPI_PORT[crate::cpus::slot(cpu)].store(port, Ordering::Relaxed);
}

/// Per CPU: the port a spinlock waiter polls (masked: it never raises the upcall).
static KICK_PORT: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(NO_PORT) }; MAX_CPUS];

/// Binds vCPU `cpu`'s kick port, masked (from any vCPU).
pub(super) fn bind_kick(cpu: u32) {
    let Some(port) = bind_port(evtchn::BIND_IPI, &mut [cpu, 0]) else { return };
    shared_word(si::EVTCHN_MASK, port as usize / 64).fetch_or(1 << (port % 64), Ordering::AcqRel);
    KICK_PORT[crate::cpus::slot(cpu)].store(port, Ordering::Relaxed);
}

/// The PV spinlock wait: clear this CPU's kick port, re-check the byte, then
/// `SCHEDOP_poll` on the port until a [`lock_kick`] (or an event to deliver)
/// arrives. Spins (returns at once) where no kick port is bound.
pub(super) extern "C" fn lock_wait(byte: *const u8, value: u8) {
    let port = KICK_PORT[this_cpu()].load(Ordering::Relaxed);
    if port == NO_PORT {
        return;
    }
    shared_word(si::EVTCHN_PENDING, port as usize / 64).fetch_and(!(1 << (port % 64)), Ordering::AcqRel);
    // SAFETY: the caller's lock byte, read once after the clear: a kick after
    // this read leaves the port pending and the poll returns at once.
    if unsafe { AtomicU8::from_ptr(byte as *mut u8) }.load(Ordering::Acquire) != value {
        return;
    }
    let poll = SchedPoll { ports: ptr(&port), nr_ports: 1, pad: 0, timeout: 0 };
    call3(hc::SCHED_OP, super::abi::sched::POLL, ptr(&poll), 0);
}

/// Wakes `cpu` from [`lock_wait`].
pub(super) extern "C" fn lock_kick(cpu: u32) {
    let port = KICK_PORT[crate::cpus::slot(cpu)].load(Ordering::Relaxed);
    if port != NO_PORT {
        call3(hc::EVENT_CHANNEL_OP, evtchn::SEND, ptr(&port), 0);
    }
}

/// Raises `vector` on `cpu` through its IPI port; false if it has none.
pub(super) fn send_ipi(cpu: u32, vector: u32) -> bool {
    let port = IPI_PORT[crate::cpus::slot(cpu)].load(Ordering::Relaxed);
    if port == NO_PORT {
        return false;
    }
    raise(cpu as usize, vector);
    call3(hc::EVENT_CHANNEL_OP, evtchn::SEND, ptr(&port), 0);
    true
}

/// The one-shot timer of the calling vCPU: `set_timer_op` at an absolute Xen
/// system time fires its `VIRQ_TIMER`; the upcall raises `vector` for it.
pub(super) extern "C" fn set_timer(deadline_ns: u64, vector: u32) -> bool {
    if TIMER_PORT[this_cpu()].load(Ordering::Relaxed) == NO_PORT {
        return false;
    }
    TIMER_VECTOR.store(vector, Ordering::Relaxed);
    // 0 would cancel the timer; a deadline in the past fires at once.
    call3(hc::SET_TIMER_OP, deadline_ns.max(1), 0, 0) == 0
}
