//! How the guest reaches the host: `lguest_data` (the shared page), the trap,
//! and the async ring.
//!
//! The trap is `int 4` with the call number in RAX and up to four arguments in
//! RBX, RCX, RDX and RSI (4.13's register order, widened); RAX comes back as the
//! return value and every other register is preserved. In lazy mode most calls
//! go into the 64-slot ring in `lguest_data` instead (4.13's `async_hcall`): the
//! host runs them, in order, before the next synchronous call, so a batch costs
//! one trap.

use core::cell::UnsafeCell;
use core::marker::PhantomData;
use core::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::abi::{self, offset, HcallArgs, LguestData};
use crate::ops::cpu::CpuidResult;

/// `lguest_data`, alone in its page.
#[repr(C, align(4096))]
pub struct SharedPage(UnsafeCell<LguestData>);

// SAFETY: the host writes the page only while this (single) vCPU is stopped, and
// the guest accesses it with volatile loads and stores from one CPU, with
// interrupts disabled around the ring's updates.
unsafe impl Sync for SharedPage {}

/// The page registered with `LGUEST_INIT`.
pub static LGUEST_DATA: SharedPage = SharedPage(UnsafeCell::new(LguestData::new(0, 0)));

/// The shared page's address.
pub fn data() -> *mut LguestData {
    LGUEST_DATA.0.get()
}

/// One field of the shared page, by its byte offset in `lguest_data`.
pub struct Field<T>(usize, PhantomData<T>);

impl<T: Copy> Field<T> {
    const fn at(offset: usize) -> Self {
        Field(offset, PhantomData)
    }

    fn ptr(&self) -> *mut T {
        data().cast::<u8>().wrapping_add(self.0).cast()
    }

    /// Reads the field.
    pub fn get(&self) -> T {
        // SAFETY: an aligned field of the shared page, which lives forever; the
        // host writes it only while this vCPU is stopped.
        unsafe { self.ptr().read_volatile() }
    }

    /// Writes the field.
    pub fn set(&self, value: T) {
        // SAFETY: as `get`.
        unsafe { self.ptr().write_volatile(value) }
    }
}

/// `irq_enabled`.
pub const IRQ_ENABLED: Field<u32> = Field::at(offset::IRQ_ENABLED);
/// `blocked_interrupts`.
pub const BLOCKED_INTERRUPTS: Field<u64> = Field::at(offset::BLOCKED_INTERRUPTS);
/// `cr2`.
pub const CR2: Field<u64> = Field::at(offset::CR2);
/// `time.sec`.
pub const TIME_SEC: Field<i64> = Field::at(offset::TIME);
/// `time.nsec`.
pub const TIME_NSEC: Field<i64> = Field::at(offset::TIME + 8);
/// `irq_pending`.
pub const IRQ_PENDING: Field<i32> = Field::at(offset::IRQ_PENDING);
/// `tsc_khz`.
pub const TSC_KHZ: Field<u32> = Field::at(offset::TSC_KHZ);
/// `noirq_iret`.
pub const NOIRQ_IRET: Field<u64> = Field::at(offset::NOIRQ_IRET);
/// `kernel_address`.
pub const KERNEL_ADDRESS: Field<u64> = Field::at(offset::KERNEL_ADDRESS);

fn status(slot: usize) -> Field<u8> {
    Field::at(offset::HCALL_STATUS + slot)
}

fn args(slot: usize) -> Field<HcallArgs> {
    Field::at(offset::HCALLS + slot * core::mem::size_of::<HcallArgs>())
}

static TRAPS: AtomicU64 = AtomicU64::new(0);
static QUEUED: AtomicU64 = AtomicU64::new(0);

/// Counters a conformance kit wants to see.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Traps into the host (`int 4`).
    pub traps: u64,
    /// Calls that went into the async ring instead.
    pub queued: u64,
}

/// The counters so far.
pub fn usage() -> Usage {
    Usage { traps: TRAPS.load(Ordering::Relaxed), queued: QUEUED.load(Ordering::Relaxed) }
}

/// The four registers of a trap's return.
#[derive(Clone, Copy, Debug, Default)]
pub struct Regs {
    rax: u64,
    rbx: u64,
    rcx: u64,
    rdx: u64,
}

fn trap_regs(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> Regs {
    TRAPS.fetch_add(1, Ordering::Relaxed);
    // Every synchronous call drains the ring first.
    PENDING.store(false, Ordering::Relaxed);
    let (rax, rbx, rcx, rdx);
    // SAFETY: `int 4` enters the host's switcher through its DPL-3 gate and comes
    // back to the next instruction; the host reads only the memory the call's
    // arguments name and writes only RAX (and, for CPUID, RBX..RDX). LLVM keeps
    // RBX for itself, so it is swapped in and out around the trap.
    unsafe {
        core::arch::asm!(
            "xchg {b}, rbx",
            "int 4",
            "xchg {b}, rbx",
            b = inout(reg) a1 => rbx,
            inlateout("rax") nr => rax,
            inlateout("rcx") a2 => rcx,
            inlateout("rdx") a3 => rdx,
            in("rsi") a4,
        );
    }
    Regs { rax, rbx, rcx, rdx }
}

/// A synchronous call: one trap; RAX back.
pub fn trap(nr: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    trap_regs(nr, a1, a2, a3, 0).rax
}

/// `cpuid` as the VM defines it (ring-3 `cpuid` shows the host's CPU).
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let r = trap_regs(abi::hcall::CPUID, u64::from(leaf), u64::from(subleaf), 0, 0);
    CpuidResult { eax: r.rax as u32, ebx: r.rbx as u32, ecx: r.rcx as u32, edx: r.rdx as u32 }
}

// ------------------------------------------------------------- the ring ---

/// Lazy mode: calls go into the ring.
static LAZY: AtomicBool = AtomicBool::new(false);
/// Something was queued since the last trap.
static PENDING: AtomicBool = AtomicBool::new(false);
/// The next slot to fill (4.13's guest-side `next_call`).
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// Starts queueing calls.
pub extern "C" fn lazy_enter() {
    LAZY.store(true, Ordering::Relaxed);
}

/// Has the host run what was queued (one `FLUSH_ASYNC` trap, if anything was).
pub extern "C" fn flush() {
    if PENDING.load(Ordering::Relaxed) {
        trap(abi::hcall::FLUSH_ASYNC, 0, 0, 0);
    }
}

/// Flushes and stops queueing.
pub extern "C" fn lazy_leave() {
    flush();
    LAZY.store(false, Ordering::Relaxed);
}

/// A call that may wait in the ring: queued in lazy mode, else a trap. A full
/// ring makes it a trap too, which drains the ring before it runs.
pub fn call(nr: u64, a1: u64, a2: u64, a3: u64) {
    if !LAZY.load(Ordering::Relaxed) {
        trap(nr, a1, a2, a3);
        return;
    }
    // Interrupts off while the slot is claimed (the ring is single-producer).
    let was = IRQ_ENABLED.get();
    IRQ_ENABLED.set(0);
    compiler_fence(Ordering::SeqCst);
    let slot = NEXT.load(Ordering::Relaxed);
    if status(slot).get() == abi::HCALL_STATUS_FREE {
        // The arguments before the status that hands them to the host (x86 keeps
        // stores in order; the fence keeps the compiler from reordering them).
        args(slot).set(HcallArgs { arg0: nr, arg1: a1, arg2: a2, arg3: a3, arg4: 0 });
        compiler_fence(Ordering::SeqCst);
        status(slot).set(abi::HCALL_STATUS_PENDING);
        NEXT.store((slot + 1) % abi::RING_SIZE, Ordering::Relaxed);
        PENDING.store(true, Ordering::Relaxed);
        QUEUED.fetch_add(1, Ordering::Relaxed);
    } else {
        trap(nr, a1, a2, a3);
    }
    restore_irq(was);
}

/// Sets the virtual interrupt flag to `flags` (0 or [`abi::IRQ_ENABLED`]); when
/// that enables interrupts and the host held one back meanwhile
/// (`irq_pending`), traps so it can be delivered now (4.13's `lg_restore_fl`:
/// flags AND pending, both 0x200).
pub fn restore_irq(flags: u32) {
    compiler_fence(Ordering::SeqCst);
    IRQ_ENABLED.set(flags & abi::IRQ_ENABLED);
    let pending = IRQ_PENDING.get() as u32;
    compiler_fence(Ordering::SeqCst);
    if flags & pending & abi::IRQ_ENABLED != 0 {
        trap(abi::hcall::SEND_INTERRUPTS, 0, 0, 0);
    }
}
