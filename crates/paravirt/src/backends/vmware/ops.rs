//! The mapping from the API onto the VMware backdoor. Each op is taken only
//! where the host answers for it (checked once, at install); the rest stay
//! native, which VMware virtualizes in hardware.
//!
//! | op | VMware mechanism | fallback |
//! |----|------------------|----------|
//! | time.tsc_khz | timing leaf base+0x10 EAX, else GETHZ (Hz / 1000); also seeds the native TSC clock, so `clock_ns` and `sched_clock` need no calibration | native: CPUID 0x15/0x16 or the PIT |
//! | time.wall_clock | GETTIMEFULL (ESI:EDX seconds, EBX µs), else GETTIME | native: the CMOS RTC |
//! | time.steal_clock | the CPU's STEALCLOCK record, TSC ticks → ns at the TSC frequency | native: 0 |
//!
//! Linux's own use (`arch/x86/kernel/cpu/vmware.c`) is the same set, less the
//! wall clock (VMware Tools sets the time there from user space).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

pub use super::abi::Regs;
use super::abi::{self, cmd, stealclock, StealTime};
use super::probe;
use crate::backends::native::ops as native;
use crate::ops::time::WallClock;
use crate::ops::Op;
use crate::select::{AbiLine, InitEnv, OpSet};
use crate::table::PvOps;
use crate::{current_cpu, virt_to_phys, MAX_CPUS};

/// Whether the CPU runs at privilege level 0, where a port read cannot fault.
fn at_cpl0() -> bool {
    let cs: u16;
    // SAFETY: reading CS has no side effect.
    unsafe { core::arch::asm!("mov {0:x}, cs", out(reg) cs, options(nomem, nostack, preserves_flags)) };
    cs & 3 == 0
}

/// One backdoor call: `in eax, dx` with EAX = magic, ECX = `command`, EBX =
/// `ebx`, EDX = port | `edx_high` << 16, ESI = `esi`, EDI = `edi`, each
/// zero-extended. Outside CPL 0 (where `in` would fault) nothing is called
/// and the answer is an absent port's: EAX all ones, the rest as given.
pub fn backdoor(command: u32, ebx: u32, edx_high: u16, esi: u32, edi: u32) -> Regs {
    let edx_in = u32::from(abi::PORT) | (u32::from(edx_high) << 16);
    if !at_cpl0() {
        return Regs { eax: abi::UNSUPPORTED, ebx, ecx: command, edx: edx_in, esi, edi };
    }
    let (eax, ebx_out, ecx, edx, esi_out, edi_out): (u64, u64, u64, u64, u64, u64);
    // SAFETY: a port read at CPL 0 (checked above), which cannot fault; a
    // VMware host (or QEMU's vmport) may write EAX, EBX, ECX, EDX, ESI and
    // EDI, all declared as outputs. RBX is reserved by the compiler: it is
    // swapped in and out.
    unsafe {
        core::arch::asm!(
            "xchg rbx, {b}",
            "in eax, dx",
            "xchg rbx, {b}",
            b = inout(reg) u64::from(ebx) => ebx_out,
            inout("rax") u64::from(abi::MAGIC) => eax,
            inout("rcx") u64::from(command) => ecx,
            inout("rdx") u64::from(edx_in) => edx,
            inout("rsi") u64::from(esi) => esi_out,
            inout("rdi") u64::from(edi) => edi_out,
            options(nostack, preserves_flags),
        );
    }
    let low = |r: u64| r as u32;
    Regs {
        eax: low(eax),
        ebx: low(ebx_out),
        ecx: low(ecx),
        edx: low(edx),
        esi: low(esi_out),
        edi: low(edi_out),
    }
}

/// Where the TSC frequency came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TscSource {
    /// Neither the leaf nor GETHZ: native.
    Native,
    /// The timing leaf, base + 0x10.
    TimingLeaf,
    /// GETHZ.
    GetHz,
}

/// Where the wall clock comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WallSource {
    /// Neither command: native (the RTC).
    Native,
    /// GETTIMEFULL.
    GetTimeFull,
    /// GETTIME.
    GetTime,
}

/// What the backend uses, for the kernel's report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// The TSC frequency's source.
    pub tsc: TscSource,
    /// The TSC frequency, kHz (0: native).
    pub tsc_khz: u64,
    /// The APIC bus frequency the host gave, kHz (0: none).
    pub apic_khz: u64,
    /// The wall clock's source.
    pub wall: WallSource,
    /// The host keeps a steal clock.
    pub steal: bool,
    /// CPUs whose STEALCLOCK registration the host accepted.
    pub steal_cpus: u32,
}

/// Feature bits of the `abi:` line: which sources are in use.
pub mod feature {
    /// TSC kHz from the timing leaf.
    pub const TIMING_LEAF: u64 = 1 << 0;
    /// TSC Hz from GETHZ.
    pub const GETHZ: u64 = 1 << 1;
    /// The wall clock from GETTIMEFULL.
    pub const GETTIMEFULL: u64 = 1 << 2;
    /// The wall clock from GETTIME.
    pub const GETTIME: u64 = 1 << 3;
    /// Steal time from STEALCLOCK.
    pub const STEALCLOCK: u64 = 1 << 4;
}

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static APIC_KHZ: AtomicU64 = AtomicU64::new(0);
static TSC_SOURCE: AtomicU32 = AtomicU32::new(0);
static WALL_SOURCE: AtomicU32 = AtomicU32::new(0);
static STEAL: AtomicBool = AtomicBool::new(false);
static STEAL_CPUS: AtomicU32 = AtomicU32::new(0);

/// The steal-time records the host writes, one per CPU.
struct Records(UnsafeCell<[StealTime; MAX_CPUS]>);
// SAFETY: the host writes each record's `clock` with one aligned 8-byte store;
// the guest only reads it, with volatile loads.
unsafe impl Sync for Records {}
static RECORDS: Records = Records(UnsafeCell::new([StealTime { clock: 0, reserved: [0; 7] }; MAX_CPUS]));

fn record(cpu: u32) -> *const StealTime {
    let i = crate::cpus::slot(cpu);
    // SAFETY: in bounds (`slot` refuses anything else); only a raw pointer is formed.
    unsafe { (RECORDS.0.get() as *const StealTime).add(i) }
}

/// What the backend uses.
pub fn usage() -> Usage {
    Usage {
        tsc: match TSC_SOURCE.load(Ordering::Relaxed) {
            1 => TscSource::TimingLeaf,
            2 => TscSource::GetHz,
            _ => TscSource::Native,
        },
        tsc_khz: TSC_KHZ.load(Ordering::Relaxed),
        apic_khz: APIC_KHZ.load(Ordering::Relaxed),
        wall: match WALL_SOURCE.load(Ordering::Relaxed) {
            1 => WallSource::GetTimeFull,
            2 => WallSource::GetTime,
            _ => WallSource::Native,
        },
        steal: STEAL.load(Ordering::Relaxed),
        steal_cpus: STEAL_CPUS.load(Ordering::Relaxed),
    }
}

/// TSC and APIC bus kHz from the timing leaf at `base` + 0x10, if the range
/// reaches it and it names a frequency.
pub fn timing_leaf(max_leaf: u32, base: u32, leaf: impl Fn(u32) -> (u32, u32)) -> Option<(u64, u64)> {
    let l = base + abi::TIMING_LEAF_OFFSET;
    if max_leaf < l {
        return None;
    }
    let (tsc, apic) = leaf(l);
    (tsc != 0).then_some((u64::from(tsc), u64::from(apic)))
}

/// TSC and APIC bus kHz from GETHZ's registers, if the host knows them.
pub fn gethz_khz(r: &Regs) -> Option<(u64, u64)> {
    let hz = (u64::from(r.ebx) << 32) | u64::from(r.eax);
    (r.ebx != abi::UNSUPPORTED && hz >= 1000).then_some((hz / 1000, u64::from(r.ecx) / 1000))
}

/// The wall clock in GETTIMEFULL's registers, if it answered (EAX left as
/// the magic).
pub fn gettimefull_wall(r: &Regs) -> Option<WallClock> {
    let secs = (u64::from(r.esi) << 32) | u64::from(r.edx);
    (r.eax == abi::MAGIC && r.ebx < 1_000_000).then_some(WallClock { secs, nsecs: u64::from(r.ebx) * 1000 })
}

/// The wall clock in GETTIME's registers, if it answered.
pub fn gettime_wall(r: &Regs) -> Option<WallClock> {
    (r.eax != abi::UNSUPPORTED && r.ebx < 1_000_000)
        .then_some(WallClock { secs: u64::from(r.eax), nsecs: u64::from(r.ebx) * 1000 })
}

/// Reads what the host serves and overrides the ops it answers for.
pub fn install(env: &InitEnv, ops: &mut PvOps) -> (OpSet, AbiLine) {
    let mut set = OpSet::EMPTY;
    let mut features = 0u64;
    let base = probe::signed_base(env.probe);
    let leaf = base.and_then(|b| {
        let max = env.cpuid.cpuid(b, 0).eax;
        timing_leaf(max, b, |l| {
            let r = env.cpuid.cpuid(l, 0);
            (r.eax, r.ebx)
        })
    });
    let (khz, source) = match leaf {
        Some(k) => (Some(k), 1),
        None => (gethz_khz(&backdoor(cmd::GETHZ, abi::UNSUPPORTED, 0, 0, 0)), 2),
    };
    if let Some((tsc, apic)) = khz {
        TSC_KHZ.store(tsc, Ordering::Relaxed);
        APIC_KHZ.store(apic, Ordering::Relaxed);
        TSC_SOURCE.store(source, Ordering::Relaxed);
        native::seed_tsc_khz(tsc);
        ops.time.tsc_khz = tsc_khz;
        set.insert(Op::TimeTscKhz);
        features |= if source == 1 { feature::TIMING_LEAF } else { feature::GETHZ };
    }
    if gettimefull_wall(&backdoor(cmd::GETTIMEFULL, abi::UNSUPPORTED, 0, 0, 0)).is_some() {
        WALL_SOURCE.store(1, Ordering::Relaxed);
        features |= feature::GETTIMEFULL;
    } else if gettime_wall(&backdoor(cmd::GETTIME, abi::UNSUPPORTED, 0, 0, 0)).is_some() {
        WALL_SOURCE.store(2, Ordering::Relaxed);
        features |= feature::GETTIME;
    }
    if WALL_SOURCE.load(Ordering::Relaxed) != 0 {
        ops.time.wall_clock = wall_clock;
        set.insert(Op::TimeWallClock);
    }
    // As Linux: a disabling call tells whether the host keeps a steal clock,
    // and its ticks mean nothing without the TSC frequency. Stricter than
    // Linux, only "disabled" counts (a host that leaves EAX alone does not).
    let (esi, edi) = stealclock::DISABLE_ARGS;
    let available = backdoor(cmd::STEALCLOCK, 0, 0, esi, edi).eax == stealclock::DISABLED;
    if available && khz.is_some() {
        STEAL.store(true, Ordering::Relaxed);
        ops.time.steal_clock = steal_clock;
        set.insert(Op::TimeStealClock);
        features |= feature::STEALCLOCK;
    }
    init_cpu(current_cpu());
    (set, AbiLine { name: "vmware-backdoor", features: Some(features) })
}

/// Registers this CPU's steal-time record, if the host keeps a steal clock.
pub fn init_cpu(cpu: u32) {
    if !STEAL.load(Ordering::Relaxed) {
        return;
    }
    let rec = record(cpu);
    // SAFETY: this CPU's own record, not registered yet (or no longer, after
    // a refused call): no host writes it, and only this CPU registers it.
    unsafe { (rec as *mut StealTime).write_volatile(StealTime::default()) };
    let pa = virt_to_phys(rec as u64);
    let r = backdoor(cmd::STEALCLOCK, 0, 0, (pa >> 32) as u32, pa as u32);
    if r.eax == stealclock::ENABLED {
        STEAL_CPUS.fetch_add(1, Ordering::Relaxed);
    }
}

extern "C" fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

extern "C" fn wall_clock() -> WallClock {
    let wall = match WALL_SOURCE.load(Ordering::Relaxed) {
        1 => gettimefull_wall(&backdoor(cmd::GETTIMEFULL, abi::UNSUPPORTED, 0, 0, 0)),
        _ => gettime_wall(&backdoor(cmd::GETTIME, abi::UNSUPPORTED, 0, 0, 0)),
    };
    wall.unwrap_or_else(|| native::wall_clock())
}

/// Ticks at `khz` as ns, without overflow.
fn ticks_to_ns(ticks: u64, khz: u64) -> u64 {
    native::ticks_to_ns(ticks, khz)
}

extern "C" fn steal_clock(cpu: u32) -> u64 {
    // SAFETY: a static record; the host stores `clock` with one aligned
    // 8-byte write, so one volatile load reads it whole.
    let ticks = unsafe { core::ptr::addr_of!((*record(cpu)).clock).read_volatile() };
    ticks_to_ns(ticks, TSC_KHZ.load(Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timing_leaf_counts_only_inside_the_range() {
        let leaf = |l: u32| if l == 0x4000_0010 { (2_400_000, 1_000_000) } else { (0, 0) };
        assert_eq!(timing_leaf(0x4000_0010, 0x4000_0000, leaf), Some((2_400_000, 1_000_000)));
        assert_eq!(timing_leaf(0x4000_0001, 0x4000_0000, leaf), None, "max leaf below it");
        assert_eq!(timing_leaf(0x4000_0010, 0x4000_0000, |_| (0, 0)), None, "no frequency");
    }

    #[test]
    fn gethz_unsupported_is_ebx_all_ones() {
        let r = Regs { eax: 0x8f0d_1800, ebx: 0, ecx: 1_000_000_000, ..Regs::default() };
        assert_eq!(gethz_khz(&r), Some((2_400_000, 1_000_000)));
        let qemu_tcg = Regs { eax: abi::MAGIC, ebx: abi::UNSUPPORTED, ..Regs::default() };
        assert_eq!(gethz_khz(&qemu_tcg), None);
    }

    #[test]
    fn gettimefull_answers_by_leaving_the_magic() {
        let r = Regs { eax: abi::MAGIC, ebx: 250_000, ecx: 0, edx: 0x6932_1000, esi: 0, edi: 0 };
        assert_eq!(gettimefull_wall(&r), Some(WallClock { secs: 0x6932_1000, nsecs: 250_000_000 }));
        let unserved = Regs { eax: abi::UNSUPPORTED, ..r };
        assert_eq!(gettimefull_wall(&unserved), None);
        assert_eq!(gettime_wall(&Regs { eax: 0x6932_1000, ebx: 5, ..Regs::default() }).unwrap().nsecs, 5000);
        assert_eq!(gettime_wall(&Regs { eax: abi::UNSUPPORTED, ..Regs::default() }), None);
    }
}
