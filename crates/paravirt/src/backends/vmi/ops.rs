//! The mapping from the API onto VMI/64. An op whose signature is its VMI
//! call's is served by the ROM's code itself: the patcher turns each site into
//! what `get_reloc` answered — `call rel32` into the ROM, `jmp rel32` (IRET),
//! NOPs, or the native code (NONE: the op is not served). The other ops are
//! short wrappers here that call the ROM (Linux's `vmi_32.c` wrapped the same
//! calls: `set_pte` adds the level and address flags, time converts cycles).
//!
//! | op | VMI call | how |
//! |----|----------|-----|
//! | cpu.cpuid | CPUID | ROM |
//! | cpu.read/write_cr0, read/write_cr4 | GetCR0/SetCR0, GetCR4/SetCR4 | ROM |
//! | cpu.load_gdt, load_idt, load_tr | SetGDT, SetIDT, SetTR | ROM |
//! | cpu.wbinvd, io_delay | WBINVD, IODelay | ROM |
//! | cpu.iret | IRET | ROM (a jump) |
//! | irq.save_flags, restore_flags | GetInterruptMask, SetInterruptMask | ROM |
//! | irq.disable, enable | DisableInterrupts, EnableInterrupts | ROM |
//! | irq.safe_halt | Halt | ROM |
//! | mmu.read_cr2, read_cr3, write_cr3 | GetCR2, GetCR3, SetCR3 | ROM |
//! | mmu.flush_tlb_one | InvalPage | ROM |
//! | mmu.set_pte, pte_clear | SetPxE(entry, ptep, PT \| CURRENT_AS, va) | wrapper |
//! | mmu.set_pmd, set_pud, set_p4d | SetPxE(entry, ptep, PD / PDP / PML4, 0) | wrapper |
//! | mmu.flush_tlb_all | FlushTLB(TLB) | wrapper |
//! | mmu.alloc_pt, release_pt | AllocatePage(pfn, level \| ZEROED), ReleasePage(pfn, level) | wrapper |
//! | mmu.lazy_enter, lazy_leave, lazy_flush | SetLazyMode(MMU), (NONE), (NONE) then (MMU) | wrapper |
//! | time.tsc_khz | GetCycleFrequency / 1000 | wrapper |
//! | time.clock_ns, sched_clock, steal_clock | GetCycleCounter(REAL / AVAILABLE / STOLEN) in ns | wrapper |
//! | time.wall_clock | GetWallclockTime | wrapper |
//! | time.set_timer | SetAlarm(REAL \| WIRED_VECTOR, expiry in cycles, 0) | wrapper |
//! | power.shutdown, reboot | Shutdown(status), Reboot(HARD) | wrapper |
//! | irq.halt, mmu.read_entry, flush_tlb_multi, apic.*, lock.*, console.*, MSRs | – | native |

use core::sync::atomic::{AtomicU64, Ordering};

use super::abi::{self, call, counter, page, reloc};
use super::probe;
use crate::backends::native::ops as native;
use crate::ops::mmu::level;
use crate::ops::time::WallClock;
use crate::ops::Op;
use crate::patch::Patch;
use crate::select::{AbiLine, InitEnv, OpSet};
use crate::table::PvOps;

/// Ops the ROM's code serves as is: the op's signature is its call's.
const DIRECT: &[(Op, u64)] = &[
    (Op::CpuCpuid, call::CPUID),
    (Op::CpuReadCr0, call::GET_CR0),
    (Op::CpuWriteCr0, call::SET_CR0),
    (Op::CpuReadCr4, call::GET_CR4),
    (Op::CpuWriteCr4, call::SET_CR4),
    (Op::CpuLoadGdt, call::SET_GDT),
    (Op::CpuLoadIdt, call::SET_IDT),
    (Op::CpuLoadTr, call::SET_TR),
    (Op::CpuWbinvd, call::WBINVD),
    (Op::CpuIoDelay, call::IO_DELAY),
    (Op::CpuIret, call::IRET),
    (Op::IrqSaveFlags, call::GET_INTERRUPT_MASK),
    (Op::IrqRestoreFlags, call::SET_INTERRUPT_MASK),
    (Op::IrqDisable, call::DISABLE_INTERRUPTS),
    (Op::IrqEnable, call::ENABLE_INTERRUPTS),
    (Op::IrqSafeHalt, call::HALT),
    (Op::MmuReadCr2, call::GET_CR2),
    (Op::MmuReadCr3, call::GET_CR3),
    (Op::MmuWriteCr3, call::SET_CR3),
    (Op::MmuFlushTlbOne, call::INVAL_PAGE),
];

/// Ops served by a wrapper here, and the call each needs. A NOP answer makes
/// the op's sites NOPs (only the calls `probe` allows to be NOPs).
const WRAPPED: &[(Op, u64)] = &[
    (Op::MmuSetPte, call::SET_PXE),
    (Op::MmuSetPmd, call::SET_PXE),
    (Op::MmuSetPud, call::SET_PXE),
    (Op::MmuSetP4d, call::SET_PXE),
    (Op::MmuPteClear, call::SET_PXE),
    (Op::MmuFlushTlbAll, call::FLUSH_TLB),
    (Op::MmuAllocPt, call::ALLOCATE_PAGE),
    (Op::MmuReleasePt, call::RELEASE_PAGE),
    (Op::MmuLazyEnter, call::SET_LAZY_MODE),
    (Op::MmuLazyLeave, call::SET_LAZY_MODE),
    (Op::MmuLazyFlush, call::SET_LAZY_MODE),
    (Op::TimeWallClock, call::GET_WALLCLOCK_TIME),
    (Op::PowerShutdown, call::SHUTDOWN),
    (Op::PowerReboot, call::REBOOT),
];

/// Time ops: they need both GetCycleFrequency and GetCycleCounter (and
/// set_timer SetAlarm too).
const TIME: &[Op] = &[Op::TimeTscKhz, Op::TimeClockNs, Op::TimeSchedClock, Op::TimeStealClock];

fn kind(number: u64) -> u8 {
    probe::relocation(number).kind
}

fn calls_rom(number: u64) -> bool {
    kind(number) == reloc::CALL_REL
}

/// Installs the ROM's answers: its code for the direct ops, the wrappers for
/// the others whose call the ROM serves; the rest stay native.
pub fn install(_env: &InitEnv, ops: &mut PvOps) -> (OpSet, AbiLine) {
    let mut set = OpSet::EMPTY;
    for &(op, number) in DIRECT {
        let r = probe::relocation(number);
        let target = match r.kind {
            reloc::CALL_REL | reloc::JUMP_REL => r.eip,
            reloc::NOP => native::nop as *const () as u64,
            _ => continue,
        };
        // SAFETY: the probe accepted `get_reloc`'s answer for this call: code in
        // the ROM with the call's System V signature, which is the op's (the
        // DIRECT table pairs them), or a NOP the probe allows for it (only calls
        // without a result), served here by an empty function.
        unsafe { ops.set_target(op, target) };
        set.insert(op);
    }
    for &(op, number) in WRAPPED {
        let served = match kind(number) {
            reloc::CALL_REL => true,
            reloc::NOP => {
                // SAFETY: only calls without a result may be NOPs (the probe
                // checks): an empty function serves any of their signatures.
                unsafe { ops.set_target(op, native::nop as *const () as u64) };
                set.insert(op);
                continue;
            }
            _ => false,
        };
        if !served {
            continue;
        }
        match op {
            Op::MmuSetPte => ops.mmu.set_pte = set_pte,
            Op::MmuSetPmd => ops.mmu.set_pmd = set_pmd,
            Op::MmuSetPud => ops.mmu.set_pud = set_pud,
            Op::MmuSetP4d => ops.mmu.set_p4d = set_p4d,
            Op::MmuPteClear => ops.mmu.pte_clear = pte_clear,
            Op::MmuFlushTlbAll => ops.mmu.flush_tlb_all = flush_tlb_all,
            Op::MmuAllocPt => ops.mmu.alloc_pt = alloc_pt,
            Op::MmuReleasePt => ops.mmu.release_pt = release_pt,
            Op::MmuLazyEnter => ops.mmu.lazy_enter = lazy_enter,
            Op::MmuLazyLeave => ops.mmu.lazy_leave = lazy_leave,
            Op::MmuLazyFlush => ops.mmu.lazy_flush = lazy_flush,
            Op::TimeWallClock => ops.time.wall_clock = wall_clock,
            Op::PowerShutdown => ops.power.shutdown = shutdown,
            Op::PowerReboot => ops.power.reboot = reboot,
            _ => continue,
        }
        set.insert(op);
    }
    if calls_rom(call::GET_CYCLE_FREQUENCY) && calls_rom(call::GET_CYCLE_COUNTER) {
        let khz = rom(call::GET_CYCLE_FREQUENCY, 0, 0, 0, 0).0 / 1000;
        if khz != 0 {
            KHZ.store(khz, Ordering::Relaxed);
            native::seed_tsc_khz(khz);
            ops.time.tsc_khz = tsc_khz;
            ops.time.clock_ns = clock_ns;
            ops.time.sched_clock = sched_clock;
            ops.time.steal_clock = steal_clock;
            TIME.iter().for_each(|&op| set.insert(op));
            if calls_rom(call::SET_ALARM) {
                ops.time.set_timer = set_timer;
                set.insert(Op::TimeSetTimer);
            }
        }
    }
    // SAFETY: the probe checked the header, 144 bytes at the ROM's base.
    let minor = unsafe { ((probe::rom_base() + abi::header::API_MINOR as u64) as *const u8).read_volatile() };
    let version = u64::from(abi::API_MAJOR) << 8 | u64::from(minor);
    (set, AbiLine { name: "vmi64", features: Some(version) })
}

/// The ROM's own answer for an op it serves directly (a call, the IRET jump,
/// NOPs), and NOPs for a wrapped op whose call does nothing.
pub fn patch(op: Op) -> Option<Patch> {
    if let Some(&(_, number)) = DIRECT.iter().find(|(o, _)| *o == op) {
        let r = probe::relocation(number);
        return match r.kind {
            reloc::CALL_REL => Some(Patch::Call(r.eip)),
            reloc::JUMP_REL => Some(Patch::Jump(r.eip)),
            reloc::NOP => Some(Patch::Nop),
            _ => None,
        };
    }
    let (_, number) = WRAPPED.iter().find(|(o, _)| *o == op)?;
    (kind(*number) == reloc::NOP).then_some(Patch::Nop)
}

/// How `# op` lines name the ROM's patches.
pub fn patched_name(patch: Patch) -> &'static str {
    match patch {
        Patch::Call(_) => "vmi(call)",
        Patch::Jump(_) => "vmi(jump)",
        Patch::Nop => "vmi(nop)",
        Patch::Inline(_) | Patch::InlineRel { .. } => "vmi",
    }
}

/// Two words, as a System V function returns them (RAX, RDX).
#[repr(C)]
struct Words(u64, u64);

/// Calls the ROM's code for `number` with up to five arguments.
fn rom(number: u64, a: u64, b: u64, c: u64, d: u64) -> Words {
    let eip = probe::relocation(number).eip;
    // SAFETY: a wrapper is installed only when `get_reloc` answered CALL_REL
    // for its call: `eip` is that call's code in the probed ROM, a System V
    // function of at most five integer arguments answering at most two words
    // (docs/abi/vmi.md); unused argument registers are ignored.
    let f: extern "C" fn(u64, u64, u64, u64, u64) -> Words = unsafe { core::mem::transmute(eip) };
    f(a, b, c, d, 0)
}

// --------------------------------------------------------------------- mmu ---

unsafe extern "C" fn set_pte(entry: *mut u64, value: u64, va: u64) {
    rom(call::SET_PXE, value, entry as u64, page::PT | page::CURRENT_AS, va);
}

unsafe extern "C" fn pte_clear(entry: *mut u64, va: u64) {
    rom(call::SET_PXE, 0, entry as u64, page::PT | page::CURRENT_AS, va);
}

unsafe extern "C" fn set_pmd(entry: *mut u64, value: u64) {
    rom(call::SET_PXE, value, entry as u64, page::PD, 0);
}

unsafe extern "C" fn set_pud(entry: *mut u64, value: u64) {
    rom(call::SET_PXE, value, entry as u64, page::PDP, 0);
}

unsafe extern "C" fn set_p4d(entry: *mut u64, value: u64) {
    rom(call::SET_PXE, value, entry as u64, page::PML4, 0);
}

extern "C" fn flush_tlb_all() {
    rom(call::FLUSH_TLB, abi::flush::TLB, 0, 0, 0);
}

/// VMI's page-level flag for one of [`level`]'s levels.
fn level_flag(lvl: u32) -> u64 {
    match lvl {
        level::PTE => page::PT,
        level::PMD => page::PD,
        level::PUD => page::PDP,
        _ => page::PML4,
    }
}

extern "C" fn alloc_pt(lvl: u32, pfn: u64) {
    rom(call::ALLOCATE_PAGE, pfn, level_flag(lvl) | page::ZEROED, 0, 0);
}

extern "C" fn release_pt(lvl: u32, pfn: u64) {
    rom(call::RELEASE_PAGE, pfn, level_flag(lvl), 0, 0);
}

extern "C" fn lazy_enter() {
    rom(call::SET_LAZY_MODE, abi::lazy::MMU, 0, 0, 0);
}

extern "C" fn lazy_leave() {
    rom(call::SET_LAZY_MODE, abi::lazy::NONE, 0, 0, 0);
}

/// Linux's `arch_flush_lazy_mmu_mode`: leave, then enter again.
extern "C" fn lazy_flush() {
    lazy_leave();
    lazy_enter();
}

// -------------------------------------------------------------------- time ---

/// kHz of the cycle counters (GetCycleFrequency / 1000).
static KHZ: AtomicU64 = AtomicU64::new(0);
/// The AVAILABLE counter at the first `sched_clock`.
static BOOT_AVAILABLE: AtomicU64 = AtomicU64::new(0);

fn cycles(which: u64) -> u64 {
    rom(call::GET_CYCLE_COUNTER, which, 0, 0, 0).0
}

fn ns(cycles: u64) -> u64 {
    native::ticks_to_ns(cycles, KHZ.load(Ordering::Relaxed))
}

extern "C" fn tsc_khz() -> u64 {
    KHZ.load(Ordering::Relaxed)
}

extern "C" fn clock_ns() -> u64 {
    ns(cycles(counter::REAL))
}

/// AVAILABLE, as Linux's VMI `sched_clock`: time this vCPU ran or halted.
extern "C" fn sched_clock() -> u64 {
    let now = cycles(counter::AVAILABLE);
    let _ = BOOT_AVAILABLE.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    ns(now.saturating_sub(BOOT_AVAILABLE.load(Ordering::Relaxed)))
}

/// STOLEN is this vCPU's counter: another CPU's is not VMI's to read.
extern "C" fn steal_clock(cpu: u32) -> u64 {
    if cpu != crate::current_cpu() {
        return 0;
    }
    ns(cycles(counter::STOLEN))
}

/// A one-shot alarm on the REAL counter at `deadline_ns` (the clock_ns
/// domain), as a fixed interrupt at `vector`.
extern "C" fn set_timer(deadline_ns: u64, vector: u32) -> bool {
    let expiry = (u128::from(deadline_ns) * u128::from(KHZ.load(Ordering::Relaxed)) / 1_000_000) as u64;
    let flags =
        counter::REAL | abi::alarm::WIRED_VECTOR | (u64::from(vector & 0xff) << abi::alarm::VECTOR_SHIFT);
    rom(call::SET_ALARM, flags, expiry, 0, 0);
    true
}

extern "C" fn wall_clock() -> WallClock {
    let ns = rom(call::GET_WALLCLOCK_TIME, 0, 0, 0, 0).0;
    WallClock { secs: ns / 1_000_000_000, nsecs: ns % 1_000_000_000 }
}

// ------------------------------------------------------------------- power ---

/// Shutdown(status); should the ROM return, the native way.
extern "C" fn shutdown(status: u32) -> ! {
    rom(call::SHUTDOWN, u64::from(status), 0, 0, 0);
    native::shutdown(status)
}

/// Reboot(HARD); should the ROM return, the native way.
extern "C" fn reboot() -> ! {
    rom(call::REBOOT, abi::REBOOT_HARD, 0, 0, 0);
    native::reboot()
}
