//! The mapping from the API onto lguest64. The kernel runs in ring 3: the
//! switcher owns the real GDT, IDT and TSS, the interrupt flag is a word in
//! `lguest_data`, and page-table writes are the kernel's own stores followed by
//! a notification (the host keeps no tables for the guest: KVM walks the
//! guest's, and pvrun validates what it is told and flushes on its behalf).
//!
//! | op | lguest64 |
//! |----|----------|
//! | cpu.cpuid | `LHCALL_CPUID` (new): ring-3 `cpuid` shows the host's CPU |
//! | cpu.read/write_cr0, read/write_cr4 | shadows (4.13 kept `current_cr0`); nothing reaches the host |
//! | cpu.load_gdt, load_tr | kept the switcher's (its GDT has the ring-3 selectors) |
//! | cpu.load_idt | `LOAD_IDT_ENTRY` per gate, batched through the ring |
//! | cpu.wbinvd, io_delay | nothing |
//! | cpu.iret | `lguest_iret`: the frame's IF into `irq_enabled`, then `iretq` at `noirq_iret` |
//! | cpu.read/write_msr(_safe) | native: the instruction traps and pvrun emulates the MSRs it serves, else the guest gets #GP |
//! | irq.save_flags, disable | inline loads and stores of `irq_enabled` (4.13 patched these two inline) |
//! | irq.restore_flags, enable | store, then `SEND_INTERRUPTS` if `irq_pending` |
//! | irq.safe_halt | `HALT` (the host re-enables on wake-up) |
//! | irq.halt | `HALT` with every IRQ blocked when interrupts are off |
//! | mmu.read_cr2 | `lguest_data.cr2` (the host writes it as it reflects a #PF) |
//! | mmu.read_cr3, write_cr3 | cached root; `NEW_PGTABLE` |
//! | mmu.set_pte, pte_clear | store, then `SET_PTE(root, va, pte)` |
//! | mmu.set_pmd, set_pud, set_p4d | store, then `SET_PMD` / `SET_PUD` (new) / `SET_PGD` (table, index) |
//! | mmu.flush_tlb_all, flush_tlb_one | `FLUSH_TLB(1)`; `SET_PTE(root, va, 0)` (4.13's `flush_tlb_single`), nothing right after a `set_pte` of the same address (that call already flushed it) |
//! | mmu.flush_tlb_multi | the local flush (one CPU) |
//! | mmu.lazy_* | calls go into the async ring; leaving or flushing is one `FLUSH_ASYNC` |
//! | time.tsc_khz | `lguest_data.tsc_khz` |
//! | time.clock_ns, sched_clock | the TSC at that rate |
//! | time.wall_clock | `lguest_data.time` |
//! | time.set_timer | `SET_CLOCKEVENT(delta)` raising IRQ 0, delivered through the gate of the kernel's vector |
//! | apic.eoi, send_ipi(_mask) | nothing: no local APIC, one CPU |
//! | console.write | `CONSOLE_WRITE` (new) |
//! | power.shutdown | the debug-exit port, then `SHUTDOWN(reason, POWEROFF)` |
//! | power.reboot | `SHUTDOWN(reason, RESTART)` |

use core::sync::atomic::{compiler_fence, AtomicU64, AtomicU8, Ordering};

use super::abi::{self, hcall};
use super::hypercall::{
    self, call, data, restore_irq, trap, BLOCKED_INTERRUPTS, CR2, IRQ_ENABLED, KERNEL_ADDRESS, LGUEST_DATA,
    NOIRQ_IRET, TIME_NSEC, TIME_SEC, TSC_KHZ,
};
use crate::backends::native::ops as native;
use crate::ops::cpu::{CpuidResult, DescriptorTablePointer};
use crate::ops::time::WallClock;
use crate::ops::Op;
use crate::patch::Patch;
use crate::select::{AbiLine, InitEnv, OpSet};
use crate::table::PvOps;
use crate::BootFlow;

// -------------------------------------------------------------- start-up ---

/// The root the kernel runs on (the host never tells; 4.13 kept it too).
static CR3: AtomicU64 = AtomicU64::new(0);

/// Registers `lguest_data`, switches to the kernel's first page table (4.13's
/// `lguest_entry`: `LGUEST_INIT`, then `NEW_PGTABLE`) and overrides every op
/// that touches privileged state.
pub fn install(env: &InitEnv, ops: &mut PvOps) -> (OpSet, AbiLine) {
    let BootFlow::Lguest { page_table } = env.boot else {
        panic!("lguest: the backend runs only a kernel entered at its lguest64 entry");
    };
    // Before INIT: the host reads these from the page then.
    NOIRQ_IRET.set(lguest_noirq_iret as *const () as u64);
    KERNEL_ADDRESS.set(0);
    let page = (env.virt_to_phys)(data() as u64);
    trap(hcall::LGUEST_INIT, page, 0, 0);
    CR3.store(page_table, Ordering::Relaxed);
    trap(hcall::NEW_PGTABLE, page_table, 0, 0);

    let khz = u64::from(TSC_KHZ.get());
    if khz != 0 {
        native::seed_tsc_khz(khz);
    }

    let mut set = OpSet::EMPTY;
    serve! { ops, set;
        cpu.cpuid = cpuid => CpuCpuid;
        cpu.read_cr0 = read_cr0 => CpuReadCr0;
        cpu.write_cr0 = write_cr0 => CpuWriteCr0;
        cpu.read_cr4 = read_cr4 => CpuReadCr4;
        cpu.write_cr4 = write_cr4 => CpuWriteCr4;
        cpu.load_gdt = keep_switcher_table => CpuLoadGdt;
        cpu.load_tr = keep_switcher_tss => CpuLoadTr;
        cpu.load_idt = load_idt => CpuLoadIdt;
        cpu.wbinvd = nothing => CpuWbinvd;
        cpu.io_delay = nothing => CpuIoDelay;
        cpu.iret = lguest_iret => CpuIret;
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
        mmu.pte_clear = pte_clear => MmuPteClear;
        mmu.set_pmd = set_pmd => MmuSetPmd;
        mmu.set_pud = set_pud => MmuSetPud;
        mmu.set_p4d = set_p4d => MmuSetP4d;
        mmu.flush_tlb_all = flush_tlb_all => MmuFlushTlbAll;
        mmu.flush_tlb_one = flush_tlb_one => MmuFlushTlbOne;
        mmu.flush_tlb_multi = flush_tlb_multi => MmuFlushTlbMulti;
        mmu.lazy_enter = hypercall::lazy_enter => MmuLazyEnter;
        mmu.lazy_leave = hypercall::lazy_leave => MmuLazyLeave;
        mmu.lazy_flush = hypercall::flush => MmuLazyFlush;
        time.clock_ns = clock_ns => TimeClockNs;
        time.sched_clock = sched_clock => TimeSchedClock;
        time.wall_clock = wall_clock => TimeWallClock;
        time.set_timer = set_timer => TimeSetTimer;
        apic.eoi = nothing => ApicEoi;
        apic.send_ipi = no_ipi => ApicSendIpi;
        apic.send_ipi_mask = no_ipi_mask => ApicSendIpiMask;
        console.write = console_write => ConsoleWrite;
        power.shutdown = shutdown => PowerShutdown;
        power.reboot = reboot => PowerReboot;
    }
    if khz != 0 {
        serve! { ops, set; time.tsc_khz = tsc_khz => TimeTscKhz; }
    }
    let version = (u64::from(abi::ABI_MAJOR) << 16) | u64::from(abi::ABI_MINOR);
    (set, AbiLine { name: "lguest64", features: Some(version) })
}

/// The two ops 4.13 patched inline: a load and a store of `irq_enabled`.
pub fn patch(op: Op) -> Option<Patch> {
    let irq_enabled = data() as u64;
    match op {
        // mov eax, dword ptr [rip + irq_enabled]
        Op::IrqSaveFlags => {
            Some(Patch::InlineRel { code: &[0x8b, 0x05, 0, 0, 0, 0], disp_at: 2, target: irq_enabled })
        }
        // mov byte ptr [rip + irq_enabled + 1], 0: the flag is 0x200 or 0.
        Op::IrqDisable => Some(Patch::InlineRel {
            code: &[0xc6, 0x05, 0, 0, 0, 0, 0x00],
            disp_at: 2,
            target: irq_enabled + 1,
        }),
        _ => None,
    }
}

// --------------------------------------------------------------------- cpu ---

extern "C" fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    hypercall::cpuid(leaf, subleaf)
}

/// PG | AM | WP | NE | ET | MP | PE, as the switcher sets CR0.
static CR0: AtomicU64 = AtomicU64::new(0x8005_0033);
/// PAE (and nothing a ring-3 kernel could use).
static CR4: AtomicU64 = AtomicU64::new(0x20);

extern "C" fn read_cr0() -> u64 {
    CR0.load(Ordering::Relaxed)
}

unsafe extern "C" fn write_cr0(value: u64) {
    CR0.store(value, Ordering::Relaxed);
}

extern "C" fn read_cr4() -> u64 {
    CR4.load(Ordering::Relaxed)
}

unsafe extern "C" fn write_cr4(value: u64) {
    CR4.store(value, Ordering::Relaxed);
}

/// The switcher's GDT has the flat ring-3 selectors the kernel runs on.
unsafe extern "C" fn keep_switcher_table(_: *const DescriptorTablePointer) {}

/// The switcher's TSS holds its own stacks and the I/O bitmap.
unsafe extern "C" fn keep_switcher_tss(_: u16) {}

extern "C" fn nothing() {}

/// Base of the kernel's IDT, for the gate IRQ 0 borrows (see [`set_timer`]).
static IDT_BASE: AtomicU64 = AtomicU64::new(0);

/// The two halves of gate `vector` of the kernel's IDT.
fn idt_gate(vector: u8) -> (u64, u64) {
    let g = (IDT_BASE.load(Ordering::Relaxed) + u64::from(vector) * 16) as *const u64;
    // SAFETY: `load_idt` recorded a table of 256 gates that stays loaded.
    unsafe { (g.read_volatile(), g.add(1).read_volatile()) }
}

/// Hands the host every gate of the kernel's IDT (4.13's `lguest_load_idt`),
/// 64 to a trap.
unsafe extern "C" fn load_idt(idt: *const DescriptorTablePointer) {
    // SAFETY: the caller passes a valid descriptor-table pointer.
    let idt = unsafe { idt.read_unaligned() };
    IDT_BASE.store(idt.base, Ordering::Relaxed);
    let gates = (usize::from(idt.limit) + 1) / 16;
    hypercall::lazy_enter();
    for vector in 0..gates.min(256) {
        let (low, high) = idt_gate(vector as u8);
        call(hcall::LOAD_IDT_ENTRY, vector as u64, low, high);
    }
    hypercall::lazy_leave();
    TIMER_VECTOR.store(abi::FIRST_EXTERNAL_VECTOR, Ordering::Relaxed);
}

core::arch::global_asm!(
    r#"
    .pushsection .text.lguest_iret, "ax"
    /* 4.13's lguest_iret: the frame's IF becomes the virtual flag, then the
       return. The host never delivers an interrupt at lguest_noirq_iret: it
       would reuse this frame instead (the flag is already restored). */
    .global lguest_iret
lguest_iret:
    push rax
    mov eax, dword ptr [rsp + 24]
    and eax, {if_flag}
    mov dword ptr [rip + {data}], eax
    pop rax
    .global lguest_noirq_iret
lguest_noirq_iret:
    iretq
    .popsection
    "#,
    if_flag = const abi::IRQ_ENABLED,
    data = sym LGUEST_DATA,
);

extern "C" {
    fn lguest_iret() -> !;
    fn lguest_noirq_iret();
}

// --------------------------------------------------------------------- irq ---

extern "C" fn save_flags() -> u64 {
    u64::from(IRQ_ENABLED.get())
}

unsafe extern "C" fn restore_flags(flags: u64) {
    restore_irq(flags as u32);
}

extern "C" fn disable() {
    IRQ_ENABLED.set(0);
    compiler_fence(Ordering::SeqCst);
}

unsafe extern "C" fn enable() {
    restore_irq(abi::IRQ_ENABLED);
}

unsafe extern "C" fn safe_halt() {
    trap(hcall::HALT, 0, 0, 0);
}

/// `hlt` keeps the interrupt flag: with interrupts off nothing may wake the
/// guest, so every IRQ is blocked while it halts (the host's `HALT` wakes only
/// for an unblocked one, and re-enables).
extern "C" fn halt() {
    let flags = save_flags();
    if flags != 0 {
        trap(hcall::HALT, 0, 0, 0);
        return;
    }
    let blocked = BLOCKED_INTERRUPTS.get();
    BLOCKED_INTERRUPTS.set(u64::MAX);
    trap(hcall::HALT, 0, 0, 0);
    BLOCKED_INTERRUPTS.set(blocked);
    disable();
}

// --------------------------------------------------------------------- mmu ---

extern "C" fn read_cr2() -> u64 {
    CR2.get()
}

extern "C" fn read_cr3() -> u64 {
    CR3.load(Ordering::Relaxed)
}

unsafe extern "C" fn write_cr3(root: u64) {
    CR3.store(root, Ordering::Relaxed);
    mmu_call(hcall::NEW_PGTABLE, root, 0, 0);
}

fn root() -> u64 {
    CR3.load(Ordering::Relaxed) & !0xfff
}

/// The address the last `SET_PTE` named, when nothing has been sent since:
/// a flush of it would only repeat the `invlpg` that call already asked for.
static JUST_SET: AtomicU64 = AtomicU64::new(u64::MAX);

/// Sends an mmu call, forgetting which address was just set.
fn mmu_call(nr: u64, a1: u64, a2: u64, a3: u64) {
    JUST_SET.store(u64::MAX, Ordering::Relaxed);
    call(nr, a1, a2, a3);
}

unsafe extern "C" fn set_pte(entry: *mut u64, value: u64, va: u64) {
    // SAFETY: the caller guarantees a live page-table entry.
    unsafe { entry.write_volatile(value) };
    call(hcall::SET_PTE, root(), va, value);
    JUST_SET.store(va & !0xfff, Ordering::Relaxed);
}

unsafe extern "C" fn pte_clear(entry: *mut u64, va: u64) {
    // SAFETY: as set_pte.
    unsafe { entry.write_volatile(0) };
    call(hcall::SET_PTE, root(), va, 0);
    JUST_SET.store(va & !0xfff, Ordering::Relaxed);
}

/// An upper-level entry: the store, then (table page, index) to the host.
fn set_upper(nr: u64, entry: *mut u64, value: u64) {
    // SAFETY: the caller guarantees a live page-table entry.
    unsafe { entry.write_volatile(value) };
    let pa = crate::virt_to_phys(entry as u64);
    mmu_call(nr, pa & !0xfff, (pa & 0xfff) / 8, 0);
}

unsafe extern "C" fn set_pmd(entry: *mut u64, value: u64) {
    set_upper(hcall::SET_PMD, entry, value);
}

unsafe extern "C" fn set_pud(entry: *mut u64, value: u64) {
    set_upper(hcall::SET_PUD, entry, value);
}

unsafe extern "C" fn set_p4d(entry: *mut u64, value: u64) {
    set_upper(hcall::SET_PGD, entry, value);
}

extern "C" fn flush_tlb_all() {
    mmu_call(hcall::FLUSH_TLB, 1, 0, 0);
}

/// 4.13's `flush_tlb_single`: `SET_PTE(root, va, 0)`, which makes pvrun drop
/// the translation. Right after a `set_pte` of the same address it would
/// only repeat that call's `invlpg`, so it is skipped.
extern "C" fn flush_tlb_one(va: u64) {
    if JUST_SET.load(Ordering::Relaxed) != va & !0xfff {
        mmu_call(hcall::SET_PTE, root(), va, 0);
    }
}

/// One CPU: the local flush, page by page for a short range.
extern "C" fn flush_tlb_multi(_cpus: *const crate::cpus::CpuSet, start: u64, end: u64) {
    if end.saturating_sub(start) <= 4096 {
        flush_tlb_one(start);
    } else {
        flush_tlb_all();
    }
}

// -------------------------------------------------------------------- time ---

extern "C" fn tsc_khz() -> u64 {
    u64::from(TSC_KHZ.get())
}

extern "C" fn clock_ns() -> u64 {
    native::clock_ns()
}

extern "C" fn sched_clock() -> u64 {
    native::sched_clock()
}

/// `lguest_data.time`, read seconds, nanoseconds, seconds again (4.13's rule).
extern "C" fn wall_clock() -> WallClock {
    loop {
        let sec = TIME_SEC.get();
        compiler_fence(Ordering::SeqCst);
        let nsec = TIME_NSEC.get();
        compiler_fence(Ordering::SeqCst);
        if TIME_SEC.get() == sec {
            return WallClock { secs: sec as u64, nsecs: nsec as u64 };
        }
    }
}

/// The vector whose gate the host holds for IRQ 0.
static TIMER_VECTOR: AtomicU8 = AtomicU8::new(0);

/// IRQ 0 always arrives through gate 0x20; the kernel names the vector it
/// wants, so gate 0x20 gets that vector's handler (a stub that reports its
/// own vector). The first call also unmasks IRQ 0, which the guest starts with
/// blocked.
extern "C" fn set_timer(deadline_ns: u64, vector: u32) -> bool {
    let vector = vector as u8;
    if TIMER_VECTOR.swap(vector, Ordering::Relaxed) != vector {
        let (low, high) = idt_gate(vector);
        trap(hcall::LOAD_IDT_ENTRY, u64::from(abi::FIRST_EXTERNAL_VECTOR), low, high);
    }
    let blocked = BLOCKED_INTERRUPTS.get();
    if blocked & 1 != 0 {
        BLOCKED_INTERRUPTS.set(blocked & !1);
    }
    let delta = deadline_ns.saturating_sub(clock_ns()).max(abi::CLOCK_MIN_DELTA_NS);
    trap(hcall::SET_CLOCKEVENT, delta, 0, 0);
    true
}

// -------------------------------------------------------------------- apic ---

/// One CPU and no local APIC: there is nobody to interrupt.
extern "C" fn no_ipi(_cpu: u32, _vector: u32) {}

extern "C" fn no_ipi_mask(_cpus: *const crate::cpus::CpuSet, _vector: u32) {}

// --------------------------------------------------------- console, power ---

extern "C" fn console_write(ptr: *const u8, len: usize) {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(abi::CONSOLE_WRITE_MAX as usize);
        let pa = crate::virt_to_phys(ptr as u64 + done as u64);
        trap(hcall::CONSOLE_WRITE, pa, n as u64, 0);
        done += n;
    }
}

fn shutdown_with(reason: &'static [u8], how: u64) -> ! {
    loop {
        trap(hcall::SHUTDOWN, crate::virt_to_phys(reason.as_ptr() as u64), how, 0);
    }
}

/// The status goes out through the debug-exit port (the switcher's I/O bitmap
/// lets the kernel reach it); `SHUTDOWN` powers off where there is none.
extern "C" fn shutdown(status: u32) -> ! {
    native::debug_exit(status);
    shutdown_with(b"power off\0", abi::SHUTDOWN_POWEROFF)
}

extern "C" fn reboot() -> ! {
    shutdown_with(b"reboot\0", abi::SHUTDOWN_RESTART)
}
