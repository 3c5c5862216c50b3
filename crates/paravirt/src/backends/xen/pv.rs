//! The mapping from the API onto Xen, PV flavour. The kernel runs in ring 3 of a
//! 64-bit PV domain: it may not touch its page tables, the interrupt flag, the
//! descriptor tables or the local APIC, so every such op becomes a hypercall or a
//! write to Xen's shared `vcpu_info`.
//!
//! | op | Xen PV mechanism |
//! |----|------------------|
//! | cpu.cpuid | the forced-emulation prefix (`ud2; "xen"; cpuid`): Xen's CPUID policy |
//! | cpu.write_cr0 | `fpu_taskswitch` for TS; Xen owns the other bits |
//! | cpu.load_gdt, cpu.load_tr | kept Xen's GDT (flat `FLAT_KERNEL_*` selectors) and its TSS |
//! | cpu.load_idt | `set_trap_table` with one entry stub per exception (pops Xen's rcx/r11) |
//! | cpu.wbinvd | `mmuext_op(MMUEXT_FLUSH_CACHE)` |
//! | cpu.io_delay | nothing (no bus to wait for) |
//! | cpu.read/write_msr, read_cr0/cr4, write_cr4, read_tsc | native: Xen emulates the trapping ones |
//! | irq.save/restore_flags, disable, enable | `vcpu_info.evtchn_upcall_mask`; enabling with an event pending forces the upcall (`xen_version`) |
//! | irq.safe_halt, irq.halt | `sched_op(SCHEDOP_block)` (unmasks events atomically) |
//! | (events) | `set_callbacks` upcall: pending ports → vectors, each run through the kernel's IDT handler |
//! | mmu.read_cr2 | `vcpu_info.arch.cr2` |
//! | mmu.read_cr3, write_cr3 | cached root; `mmuext_op(MMUEXT_NEW_BASEPTR)` |
//! | mmu.set_pte, pte_clear | `mmu_update`, queued in lazy mode |
//! | mmu.set_pmd/pud/p4d | `mmu_update` at once (walks must see them) |
//! | mmu.read_entry | machine frame → pseudo-physical through the M2P table |
//! | mmu.flush_tlb_all, flush_tlb_one | `mmuext_op` (`TLB_FLUSH_LOCAL`, `INVLPG_LOCAL`) |
//! | mmu.flush_tlb_multi | `mmuext_op` (`INVLPG_MULTI` per page, or `TLB_FLUSH_MULTI`) with a vCPU mask: no IPIs |
//! | mmu.alloc_pt, release_pt | `update_va_mapping` read-only/writable; `MMUEXT_PIN_L4_TABLE`/`UNPIN_TABLE` for roots |
//! | mmu.lazy_* | queued entry writes (+ one deferred TLB flush) sent as one `multicall` |
//! | time.clock_ns, sched_clock, wall_clock, tsc_khz | `shared_info` (mapped with `update_va_mapping`): pvclock + `wc_*` |
//! | time.set_timer | `set_timer_op` + `VIRQ_TIMER` bound to an event channel |
//! | time.steal_clock, lock.vcpu_is_preempted | the vCPU's runstate area (`VCPUOP_register_runstate_memory_area`): runnable + offline time; state runnable |
//! | apic.eoi | nothing (the upcall acknowledges each port) |
//! | apic.send_ipi(_mask) | the target's IPI event channel (`EVTCHNOP_bind_ipi` / `EVTCHNOP_send`) |
//! | lock.yield_to | `sched_op(SCHEDOP_yield)` |
//! | lock.wait, lock.kick | `SCHEDOP_poll` on the vCPU's masked kick port; `EVTCHNOP_send` to it |
//! | console.write | `console_io` |
//! | power.* | debug-exit port (after `PHYSDEVOP_set_iopl`) and `SCHEDOP_shutdown` |
//!
//! | (secondary CPUs) | [`start_cpu`]: `VCPUOP_initialise` with a `vcpu_guest_context`, then `VCPUOP_up` |
//!
//! CPU numbers are vCPU ids: the boot CPU is vCPU 0 and [`start_cpu`] starts
//! vCPU n as CPU n. Per-CPU state (the `vcpu_info`, the root, the lazy queue,
//! the timer and IPI ports) is indexed by it.
//!
//! Frames: the kernel's addresses are Xen's pseudo-physical ones (the domain
//! builder maps the kernel at `virt_base` 0, and the kernel keeps virtual =
//! pseudo-physical), so a frame's kernel address is `pfn << 12`.

use core::cell::UnsafeCell;
use core::sync::atomic::{compiler_fence, AtomicU64, AtomicU8, Ordering};

use super::abi::{
    self, hypercall as hc, mmuext, pv, shared_info as si, MmuUpdate, MmuextOp, MulticallEntry, TrapInfo,
};
use super::events::{self, upcall_mask, upcall_pending, vcpu_field};
use super::hypercall::{self, call, call3, ptr};
use super::ops::{self as common, SHARED_INFO};
use super::runstate;
use crate::backends::native::ops as native;
use crate::backends::pvclock;
use crate::cpus::CpuSet;
use crate::lazy::{LazyQueue, Update};
use crate::ops::cpu::{CpuidResult, DescriptorTablePointer};
use crate::select::{AbiLine, OpSet};
use crate::table::PvOps;
use crate::StartCpu;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
const IF: u64 = 1 << 9;

static NR_PAGES: AtomicU64 = AtomicU64::new(0);
static P2M: AtomicU64 = AtomicU64::new(0);
/// vCPUs this flavour runs: the `vcpu_info`s shared_info holds.
const MAX_VCPUS: usize = si::VCPUS;

/// Per vCPU: the root it runs on (pseudo-physical).
static CR3: [AtomicU64; MAX_VCPUS] = [const { AtomicU64::new(0) }; MAX_VCPUS];

/// This CPU's index, which is its vCPU id (the kernel starts vCPU n as CPU n).
/// [`start_cpu`] starts none beyond [`MAX_VCPUS`].
fn this_cpu() -> usize {
    let cpu = crate::cpus::slot(crate::current_cpu());
    assert!(cpu < MAX_VCPUS, "xen-pv: CPU {cpu} is beyond the {MAX_VCPUS} vCPUs this flavour runs");
    cpu
}

/// Counters a conformance kit wants to see.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// Hypercalls made (a multicall counts once).
    pub hypercalls: u64,
    /// Page-table entry writes sent to Xen.
    pub pt_updates: u64,
    /// Lazy batches sent as one multicall.
    pub batches: u64,
    /// Events delivered through the upcall.
    pub events: u64,
}

static PT_UPDATES: AtomicU64 = AtomicU64::new(0);
static BATCHES: AtomicU64 = AtomicU64::new(0);

/// The current counters.
pub fn usage() -> Usage {
    Usage {
        hypercalls: hypercall::count(),
        pt_updates: PT_UPDATES.load(Ordering::Relaxed),
        batches: BATCHES.load(Ordering::Relaxed),
        events: events::delivered(),
    }
}

// ---------------------------------------------------------------- start-up ---

/// Reads `start_info`, maps `shared_info`, registers the trap entry points and
/// the event upcall, binds the timer and IPI ports, and overrides the ops Xen PV
/// serves (here: all that touch privileged state).
pub fn install(start_info: u64, ops: &mut PvOps) -> (OpSet, AbiLine) {
    let field = |off: usize| (start_info + off as u64) as *const u64;
    // SAFETY: Xen passed `start_info` (mapped, read-only to us in practice);
    // offsets from xen.h.
    let (nr_pages, shared_info, mfn_list, pt_base) = unsafe {
        (
            field(pv::start_info::NR_PAGES).read(),
            field(pv::start_info::SHARED_INFO).read(),
            field(pv::start_info::MFN_LIST).read(),
            field(pv::start_info::PT_BASE).read(),
        )
    };
    NR_PAGES.store(nr_pages, Ordering::Relaxed);
    P2M.store(mfn_list, Ordering::Relaxed);
    CR3[this_cpu()].store(pt_base, Ordering::Relaxed);

    // shared_info first: the irq ops live in it.
    let si_va = SHARED_INFO.0.get() as u64;
    let r = call3(hc::UPDATE_VA_MAPPING, si_va, shared_info | PRESENT | WRITABLE, abi::UVMF_INVLPG);
    assert_eq!(r, 0, "xen-pv: mapping shared_info failed");
    // The debug-exit port and the PIT/RTC need I/O privilege at (virtual) ring 1.
    let iopl = 1u32;
    call3(hc::PHYSDEV_OP, abi::PHYSDEVOP_SET_IOPL, ptr(&iopl), 0);

    // The entry points follow Xen's callback frames (see their assembly).
    let (upcall, failsafe) =
        (events::entry_address(events::xen_pv_upcall), events::entry_address(xen_pv_failsafe));
    let r = call3(hc::SET_CALLBACKS, upcall, failsafe, 0);
    assert_eq!(r, 0, "xen-pv: set_callbacks failed");
    events::bind_timer(0);
    events::bind_ipi(0);
    events::bind_kick(0);
    runstate::enable_update_flag();
    let steal = runstate::register(0);

    let mut set = OpSet::EMPTY;
    common::install_common(ops, &mut set);
    // Every op this flavour serves, with the function that serves it.
    serve! { ops, set;
        cpu.cpuid = cpuid => CpuCpuid;
        cpu.write_cr0 = write_cr0 => CpuWriteCr0;
        cpu.load_gdt = keep_xen_table => CpuLoadGdt;
        cpu.load_tr = keep_xen_tss => CpuLoadTr;
        cpu.load_idt = load_idt => CpuLoadIdt;
        cpu.wbinvd = wbinvd => CpuWbinvd;
        cpu.io_delay = io_delay => CpuIoDelay;
        irq.save_flags = save_flags => IrqSaveFlags;
        irq.restore_flags = restore_flags => IrqRestoreFlags;
        irq.disable = disable => IrqDisable;
        irq.enable = enable => IrqEnable;
        irq.safe_halt = safe_halt => IrqSafeHalt;
        irq.halt = halt => IrqHalt;
        mmu.read_cr2 = read_cr2 => MmuReadCr2;
        mmu.read_cr3 = read_cr3 => MmuReadCr3;
        mmu.write_cr3 = write_cr3 => MmuWriteCr3;
        mmu.set_pte = set_pte => MmuSetPte;
        mmu.set_pmd = set_upper => MmuSetPmd;
        mmu.set_pud = set_upper => MmuSetPud;
        mmu.set_p4d = set_upper => MmuSetP4d;
        mmu.read_entry = read_entry => MmuReadEntry;
        mmu.pte_clear = pte_clear => MmuPteClear;
        mmu.flush_tlb_all = flush_tlb_all => MmuFlushTlbAll;
        mmu.flush_tlb_one = flush_tlb_one => MmuFlushTlbOne;
        mmu.flush_tlb_multi = flush_tlb_multi => MmuFlushTlbMulti;
        mmu.alloc_pt = alloc_pt => MmuAllocPt;
        mmu.release_pt = release_pt => MmuReleasePt;
        mmu.lazy_enter = lazy_enter => MmuLazyEnter;
        mmu.lazy_leave = lazy_leave => MmuLazyLeave;
        mmu.lazy_flush = lazy_flush => MmuLazyFlush;
        time.set_timer = events::set_timer => TimeSetTimer;
        apic.eoi = eoi => ApicEoi;
        apic.send_ipi = send_ipi => ApicSendIpi;
        apic.send_ipi_mask = send_ipi_mask => ApicSendIpiMask;
        lock.yield_to = yield_to => LockYieldTo;
        lock.wait = events::lock_wait => LockWait;
        lock.kick = events::lock_kick => LockKick;
    }
    // SAFETY: shared_info is mapped; vCPU 0's record is Xen's.
    let khz = unsafe { pvclock::tsc_khz(common::time_record()) };
    if khz != 0 {
        TSC_KHZ.store(khz, Ordering::Relaxed);
        native::seed_tsc_khz(khz);
        serve! { ops, set; time.tsc_khz = tsc_khz => TimeTscKhz; }
    }
    if steal {
        serve! { ops, set;
            time.steal_clock = runstate::steal_clock => TimeStealClock;
            lock.vcpu_is_preempted = runstate::vcpu_is_preempted => LockVcpuIsPreempted;
        }
    }
    common::install_clocks(ops, &mut set);

    let version = call3(hc::XEN_VERSION, 0, 0, 0) as u64;
    (set, AbiLine { name: "xen-pv", features: Some(version) })
}

// ------------------------------------------------------------ frames, M2P ---

fn pfn_to_mfn(pfn: u64) -> u64 {
    if pfn < NR_PAGES.load(Ordering::Relaxed) {
        // SAFETY: Xen's pfn-to-mfn list has `nr_pages` entries and is mapped.
        unsafe { (P2M.load(Ordering::Relaxed) as *const u64).add(pfn as usize).read_volatile() }
    } else {
        pfn // not RAM of ours (an I/O frame): the number is the machine one
    }
}

fn mfn_to_pfn(mfn: u64) -> u64 {
    // SAFETY: Xen maps the machine-to-phys table read-only into every PV guest;
    // `mfn` comes from one of our entries, so it is a real machine frame.
    let pfn = unsafe { (pv::MACH2PHYS_VIRT_START as *const u64).add(mfn as usize).read_volatile() };
    if pfn < NR_PAGES.load(Ordering::Relaxed) && pfn_to_mfn(pfn) == mfn {
        pfn
    } else {
        mfn // a frame that is not ours: keep the machine number
    }
}

/// Machine address of kernel virtual address `va`.
fn machine_addr(va: u64) -> u64 {
    let pa = crate::virt_to_phys(va);
    (pfn_to_mfn(pa >> 12) << 12) | (pa & 0xfff)
}

fn entry_to_machine(v: u64) -> u64 {
    if v & PRESENT == 0 {
        return v;
    }
    (v & !ADDR_MASK) | (pfn_to_mfn((v & ADDR_MASK) >> 12) << 12)
}

fn entry_to_phys(v: u64) -> u64 {
    if v & PRESENT == 0 {
        return v;
    }
    (v & !ADDR_MASK) | (mfn_to_pfn((v & ADDR_MASK) >> 12) << 12)
}

// --------------------------------------------------------------------- cpu ---

extern "C" fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let (eax, rbx, ecx, edx): (u32, u64, u32, u32);
    // SAFETY: `ud2; "xen"; cpuid` is Xen's forced-emulation prefix: Xen's #UD
    // handler recognises it and emulates the cpuid with the domain's policy.
    unsafe {
        core::arch::asm!(
            "mov {b}, rbx",
            "ud2", ".ascii \"xen\"", "cpuid",
            "xchg {b}, rbx",
            b = out(reg) rbx,
            inlateout("eax") leaf => eax, inlateout("ecx") subleaf => ecx, lateout("edx") edx,
        );
    }
    CpuidResult { eax, ebx: rbx as u32, ecx, edx }
}

unsafe extern "C" fn write_cr0(value: u64) {
    const TS: u64 = 1 << 3;
    if (value ^ native::read_cr0()) & TS != 0 {
        call3(hc::FPU_TASKSWITCH, u64::from(value & TS != 0), 0, 0);
    }
}

/// Xen's GDT already holds the flat 64-bit selectors a PV kernel runs on.
unsafe extern "C" fn keep_xen_table(_: *const DescriptorTablePointer) {}

/// Xen keeps the TSS (stack switches are Xen's job for a PV guest).
unsafe extern "C" fn keep_xen_tss(_: u16) {}

extern "C" fn wbinvd() {
    mmuext_one(mmuext::FLUSH_CACHE, 0, 0);
}

extern "C" fn io_delay() {}

// --------------------------------------------------- traps and the upcall ---

/// Spacing of the per-exception entry stubs.
const TRAP_STUB_SIZE: u64 = 32;

core::arch::global_asm!(
    r#"
    .pushsection .text.xen_pv_entry, "ax"
    .balign 32
xen_pv_trap_stubs:
    /* Xen pushes rcx and r11 above the hardware frame: restore them. It reports
       a kernel-mode CS and SS with RPL 0; the kernel really runs in ring 3, so
       set RPL 3 again, which lets the kernel's own `iretq` return directly (as
       Xen's public headers describe for a kernel-to-kernel return). Then enter
       the kernel's handler with the frame the CPU would have built. */
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .balign 32
    pop rcx
    pop r11
    .if \n == 8 || (\n >= 10 && \n <= 14) || \n == 17 || \n == 21 || \n == 29 || \n == 30
    or byte ptr [rsp + 16], 3
    or byte ptr [rsp + 40], 3
    .else
    or byte ptr [rsp + 8], 3
    or byte ptr [rsp + 32], 3
    .endif
    jmp qword ptr [rip + {handlers} + \n * 8]
    .endr

    /* Xen could not load a segment register while returning to us. */
    .balign 16
xen_pv_failsafe:
    and rsp, -16
    call {failsafe}
    ud2
    .popsection
    "#,
    handlers = sym events::HANDLERS,
    failsafe = sym failsafe,
);

extern "C" {
    fn xen_pv_trap_stubs();
    fn xen_pv_failsafe();
}

/// Per exception vector: the DPL Xen was given (for secondary vCPUs' contexts);
/// `u8::MAX` for vectors without a stub.
static TRAP_DPL: [AtomicU8; 32] = [const { AtomicU8::new(u8::MAX) }; 32];

/// The trap-table entry for exception `vector`, if the kernel's IDT has one.
fn trap_entry(vector: usize) -> Option<TrapInfo> {
    let dpl = TRAP_DPL.get(vector)?.load(Ordering::Relaxed);
    let stubs = events::entry_address(xen_pv_trap_stubs);
    (dpl != u8::MAX).then(|| TrapInfo {
        vector: vector as u8,
        flags: dpl, // and no event masking: events stay as they were
        cs: pv::FLAT_KERNEL_CS64,
        address: stubs + vector as u64 * TRAP_STUB_SIZE,
    })
}

/// Reads the kernel's IDT and hands Xen a trap table pointing at our stubs.
unsafe extern "C" fn load_idt(idt: *const DescriptorTablePointer) {
    // SAFETY: the caller passes a valid descriptor-table pointer.
    let idt = unsafe { idt.read_unaligned() };
    // SAFETY: the caller's IDT is readable.
    unsafe {
        events::record_idt(&idt, |g| {
            // NMI and #DF are Xen's; every other exception comes through a stub.
            if g.vector < 32 && g.vector != 2 && g.vector != 8 {
                TRAP_DPL[g.vector].store(g.dpl, Ordering::Relaxed);
            }
        })
    };
    let mut table = [TrapInfo::default(); 33];
    for (slot, entry) in table.iter_mut().zip((0..32).filter_map(trap_entry)) {
        *slot = entry;
    }
    // `table[n]` is the zero terminator.
    let r = call3(hc::SET_TRAP_TABLE, table.as_ptr() as u64, 0, 0);
    assert_eq!(r, 0, "xen-pv: set_trap_table failed");
}

extern "C" fn failsafe() -> ! {
    panic!("xen-pv: failsafe callback (Xen could not reload a segment register)")
}

// --------------------------------------------------------------------- irq ---

extern "C" fn save_flags() -> u64 {
    if upcall_mask().load(Ordering::Relaxed) == 0 {
        IF
    } else {
        0
    }
}

unsafe extern "C" fn restore_flags(flags: u64) {
    if flags & IF != 0 {
        // SAFETY: forwarded: the caller restores a state it saved.
        unsafe { enable() }
    } else {
        disable()
    }
}

extern "C" fn disable() {
    upcall_mask().store(1, Ordering::Relaxed);
    compiler_fence(Ordering::SeqCst);
}

unsafe extern "C" fn enable() {
    compiler_fence(Ordering::SeqCst);
    upcall_mask().store(0, Ordering::SeqCst);
    if upcall_pending().load(Ordering::SeqCst) != 0 {
        // Any hypercall delivers pending events on its way back.
        call3(hc::XEN_VERSION, 0, 0, 0);
    }
}

unsafe extern "C" fn safe_halt() {
    call3(hc::SCHED_OP, abi::sched::BLOCK, 0, 0);
}

extern "C" fn halt() {
    let mask = upcall_mask().load(Ordering::Relaxed);
    call3(hc::SCHED_OP, abi::sched::BLOCK, 0, 0);
    upcall_mask().store(mask, Ordering::SeqCst);
}

// --------------------------------------------------------------------- mmu ---

extern "C" fn read_cr2() -> u64 {
    // SAFETY: this vCPU's `arch.cr2`, written by Xen before it delivers a #PF.
    unsafe { vcpu_field::<u64>(si::vcpu_info::CR2).read_volatile() }
}

extern "C" fn read_cr3() -> u64 {
    CR3[this_cpu()].load(Ordering::Relaxed)
}

unsafe extern "C" fn write_cr3(root: u64) {
    flush_queue();
    mmuext_one(mmuext::NEW_BASEPTR, pfn_to_mfn((root & ADDR_MASK) >> 12), 0);
    CR3[this_cpu()].store(root & ADDR_MASK, Ordering::Relaxed);
}

/// Entry writes waiting in lazy mode, and whether a TLB flush is owed after them.
struct LazyState {
    queue: LazyQueue<QUEUE_LEN>,
    flush_owed: bool,
    reqs: [MmuUpdate; QUEUE_LEN],
}

const QUEUE_LEN: usize = 512;

struct LazyCell([UnsafeCell<LazyState>; MAX_VCPUS]);

// SAFETY: each CPU uses only its own slot, and never from the upcall (entry
// writes are not made in interrupt handlers), so no slot is shared.
unsafe impl Sync for LazyCell {}

static LAZY: LazyCell = LazyCell(
    [const {
        UnsafeCell::new(LazyState {
            queue: LazyQueue::new(),
            flush_owed: false,
            reqs: [MmuUpdate { ptr: 0, val: 0 }; QUEUE_LEN],
        })
    }; MAX_VCPUS],
);

/// This CPU's lazy state.
fn lazy() -> &'static mut LazyState {
    // SAFETY: see `LazyCell`: this CPU's slot, and no op re-enters another's use.
    unsafe { &mut *LAZY.0[this_cpu()].get() }
}

/// Sends `batch` (plus the owed TLB flush) as one multicall.
fn send_batch(reqs: &mut [MmuUpdate; QUEUE_LEN], flush_owed: &mut bool, batch: &[Update]) {
    for (r, u) in reqs.iter_mut().zip(batch) {
        *r = MmuUpdate {
            ptr: machine_addr(u.entry as u64) | abi::MMU_NORMAL_PT_UPDATE,
            val: entry_to_machine(u.value),
        };
    }
    let flush = MmuextOp { cmd: mmuext::TLB_FLUSH_LOCAL, ..MmuextOp::default() };
    let mut calls = [MulticallEntry::default(); 2];
    calls[0].op = u64::from(hc::MMU_UPDATE);
    calls[0].args = [reqs.as_ptr() as u64, batch.len() as u64, 0, u64::from(abi::DOMID_SELF), 0, 0];
    let mut n = 1;
    if core::mem::take(flush_owed) {
        calls[1].op = u64::from(hc::MMUEXT_OP);
        calls[1].args = [ptr(&flush), 1, 0, u64::from(abi::DOMID_SELF), 0, 0];
        n = 2;
    }
    let r = call3(hc::MULTICALL, calls.as_mut_ptr() as u64, n, 0);
    PT_UPDATES.fetch_add(batch.len() as u64, Ordering::Relaxed);
    BATCHES.fetch_add(1, Ordering::Relaxed);
    assert!(r == 0 && calls[..n as usize].iter().all(|c| c.result == 0), "xen-pv: batched mmu_update failed");
}

/// Applies one entry write now.
fn update_now(entry: *mut u64, value: u64) {
    let req = MmuUpdate {
        ptr: machine_addr(entry as u64) | abi::MMU_NORMAL_PT_UPDATE,
        val: entry_to_machine(value),
    };
    let r = call(hc::MMU_UPDATE, [ptr(&req), 1, 0, u64::from(abi::DOMID_SELF), 0]);
    PT_UPDATES.fetch_add(1, Ordering::Relaxed);
    assert_eq!(r, 0, "xen-pv: mmu_update of entry {:p} to {:#x} failed", entry, value);
}

fn queue_write(entry: *mut u64, value: u64) {
    let s = lazy();
    if !s.queue.is_active() {
        update_now(entry, value);
        return;
    }
    let (reqs, owed) = (&mut s.reqs, &mut s.flush_owed);
    s.queue.write(Update { entry, value }, &mut |b| send_batch(reqs, owed, b));
}

/// Sends whatever lazy mode queued, so a following immediate op sees it.
fn flush_queue() {
    let s = lazy();
    let (reqs, owed) = (&mut s.reqs, &mut s.flush_owed);
    s.queue.flush(&mut |b| send_batch(reqs, owed, b));
    if core::mem::take(&mut s.flush_owed) {
        mmuext_one(mmuext::TLB_FLUSH_LOCAL, 0, 0);
    }
}

unsafe extern "C" fn set_pte(entry: *mut u64, value: u64, _va: u64) {
    queue_write(entry, value);
}

unsafe extern "C" fn pte_clear(entry: *mut u64, _va: u64) {
    queue_write(entry, 0);
}

/// Upper levels are applied at once: a walk that follows them must see them.
unsafe extern "C" fn set_upper(entry: *mut u64, value: u64) {
    flush_queue();
    update_now(entry, value);
}

unsafe extern "C" fn read_entry(entry: *const u64) -> u64 {
    // SAFETY: the caller guarantees a live page-table entry (mapped read-only).
    entry_to_phys(unsafe { entry.read_volatile() })
}

fn mmuext_one(cmd: u32, arg1: u64, arg2: u64) -> i64 {
    let op = MmuextOp { cmd, pad: 0, arg1, arg2 };
    call(hc::MMUEXT_OP, [ptr(&op), 1, 0, u64::from(abi::DOMID_SELF), 0])
}

/// In lazy mode a flush is owed and sent with the batch (lazy semantics allow
/// stale translations until then).
fn flush_or_defer(now: impl FnOnce()) {
    let s = lazy();
    if s.queue.is_active() {
        s.flush_owed = true;
    } else {
        now();
    }
}

extern "C" fn flush_tlb_all() {
    flush_or_defer(|| {
        mmuext_one(mmuext::TLB_FLUSH_LOCAL, 0, 0);
    });
}

extern "C" fn flush_tlb_one(va: u64) {
    flush_or_defer(|| {
        mmuext_one(mmuext::INVLPG_LOCAL, va, 0);
    });
}

/// Xen flushes every vCPU in the mask itself (no IPIs): the range page by page
/// when it is short, else the whole TLB.
extern "C" fn flush_tlb_multi(cpus: *const CpuSet, start: u64, end: u64) {
    flush_queue();
    const MAX_PAGES: u64 = 32;
    // vCPU ids are the kernel's CPU indices, and a CpuSet is laid out as
    // Xen's vcpumask (a bitmap of 64-bit words).
    // SAFETY: the op's caller passes a live set (`mmu::flush_tlb_multi` takes a reference).
    let mask: &CpuSet = unsafe { &*cpus };
    let pages = end.saturating_sub(start).div_ceil(4096);
    if pages > MAX_PAGES {
        mmuext_one(mmuext::TLB_FLUSH_MULTI, 0, ptr(mask));
        return;
    }
    let mut ops = [MmuextOp::default(); MAX_PAGES as usize];
    for (i, op) in ops.iter_mut().take(pages as usize).enumerate() {
        *op = MmuextOp { cmd: mmuext::INVLPG_MULTI, pad: 0, arg1: start + i as u64 * 4096, arg2: ptr(mask) };
    }
    call(hc::MMUEXT_OP, [ops.as_ptr() as u64, pages, 0, u64::from(abi::DOMID_SELF), 0]);
}

/// Maps frame `pfn` (at its kernel address) with `flags`.
fn remap_frame(pfn: u64, flags: u64) -> i64 {
    call3(hc::UPDATE_VA_MAPPING, pfn << 12, (pfn_to_mfn(pfn) << 12) | flags, abi::UVMF_INVLPG)
}

extern "C" fn alloc_pt(level: u32, pfn: u64) {
    flush_queue();
    // Xen accepts a page-table page only while no writable mapping of it exists.
    let r = remap_frame(pfn, PRESENT);
    assert_eq!(r, 0, "xen-pv: write-protecting page-table frame {:#x} failed", pfn);
    if level == crate::mmu::level::P4D {
        let r = mmuext_one(mmuext::PIN_L4_TABLE, pfn_to_mfn(pfn), 0);
        assert_eq!(r, 0, "xen-pv: pinning top-level table {:#x} failed", pfn);
    }
}

extern "C" fn release_pt(level: u32, pfn: u64) {
    flush_queue();
    if level == crate::mmu::level::P4D {
        let r = mmuext_one(mmuext::UNPIN_TABLE, pfn_to_mfn(pfn), 0);
        assert_eq!(r, 0, "xen-pv: unpinning top-level table {:#x} failed", pfn);
    }
    let r = remap_frame(pfn, PRESENT | WRITABLE);
    assert_eq!(r, 0, "xen-pv: frame {:#x} is still in use as a page table", pfn);
}

extern "C" fn lazy_enter() {
    lazy().queue.enter();
}

extern "C" fn lazy_flush() {
    flush_queue();
}

extern "C" fn lazy_leave() {
    flush_queue();
    let s = lazy();
    let (reqs, owed) = (&mut s.reqs, &mut s.flush_owed);
    s.queue.leave(&mut |b| send_batch(reqs, owed, b));
}

// -------------------------------------------------------- time, apic, lock ---

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

extern "C" fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

extern "C" fn eoi() {}

extern "C" fn send_ipi(cpu: u32, vector: u32) {
    events::send_ipi(cpu, vector);
}

extern "C" fn send_ipi_mask(cpus: *const CpuSet, vector: u32) {
    // SAFETY: the op's caller passes a live set (`apic::send_ipi_mask` takes a reference).
    for cpu in unsafe { &*cpus }.iter() {
        events::send_ipi(cpu, vector);
    }
}

extern "C" fn yield_to(_cpu: u32) {
    call3(hc::SCHED_OP, abi::sched::YIELD, 0, 0);
}

// --------------------------------------------------------- secondary vCPUs ---

/// Brings vCPU `cpu` up at `entry` (`rdi` = `cpu`) on `stack_top`, in kernel
/// mode on this CPU's page tables, with the same trap table and callbacks, its
/// timer and IPI ports bound and its events masked.
pub fn start_cpu(cpu: u32, entry: u64, stack_top: u64) -> StartCpu {
    if cpu as usize >= MAX_VCPUS {
        return StartCpu::Beyond { max: MAX_VCPUS as u32 };
    }
    events::bind_timer(cpu);
    events::bind_ipi(cpu);
    events::bind_kick(cpu);
    runstate::register(cpu);
    let root = CR3[this_cpu()].load(Ordering::Relaxed);
    CR3[cpu as usize].store(root, Ordering::Relaxed);
    let (upcall, failsafe) =
        (events::entry_address(events::xen_pv_upcall), events::entry_address(xen_pv_failsafe));
    let mut ctx = abi::VcpuGuestContext {
        fpu_ctxt: [0; 512],
        flags: abi::VGCF_IN_KERNEL,
        user_regs: abi::CpuUserRegs {
            rip: entry,
            rsp: stack_top,
            rdi: u64::from(cpu),
            cs: u64::from(pv::FLAT_KERNEL_CS64),
            ss: u64::from(pv::FLAT_KERNEL_SS64),
            rflags: 1 << 12, // IOPL 1: the vCPU's virtual I/O privilege
            ..abi::CpuUserRegs::default()
        },
        trap_ctxt: [TrapInfo::default(); 256],
        ldt_base: 0,
        ldt_ents: 0,
        gdt_frames: [0; 16],
        gdt_ents: 0, // Xen's GDT, as on the boot vCPU
        kernel_ss: u64::from(pv::FLAT_KERNEL_SS64),
        kernel_sp: stack_top,
        ctrlreg: [0; 8],
        debugreg: [0; 8],
        event_callback_eip: upcall,
        failsafe_callback_eip: failsafe,
        syscall_callback_eip: 0,
        vm_assist: 0,
        fs_base: 0,
        gs_base_kernel: 0,
        gs_base_user: 0,
    };
    for (v, slot) in ctx.trap_ctxt.iter_mut().enumerate().take(32) {
        if let Some(e) = trap_entry(v) {
            *slot = e;
        }
    }
    ctx.ctrlreg[3] = pfn_to_mfn(root >> 12) << 12;
    let r = call(hc::VCPU_OP, [abi::vcpuop::INITIALISE, u64::from(cpu), ptr(&ctx), 0, 0]);
    if r != 0 {
        return StartCpu::Failed(r);
    }
    match call(hc::VCPU_OP, [abi::vcpuop::UP, u64::from(cpu), 0, 0, 0]) {
        0 => StartCpu::Started,
        r => StartCpu::Failed(r),
    }
}
