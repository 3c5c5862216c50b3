//! time: clocksource, scheduler clock, steal time, wall clock, TSC frequency.

use crate::backends::native::ops as native;
use crate::ops::Op;
use crate::pv_site;

/// Seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct WallClock {
    /// Whole seconds (0 when the platform has no wall clock).
    pub secs: u64,
    /// Nanoseconds within the second.
    pub nsecs: u64,
}

/// The time op table.
#[derive(Clone, Copy)]
#[repr(C)]
#[allow(missing_docs)]
pub struct TimeOps {
    pub clock_ns: extern "C" fn() -> u64,
    pub sched_clock: extern "C" fn() -> u64,
    pub steal_clock: extern "C" fn(u32) -> u64,
    pub wall_clock: extern "C" fn() -> WallClock,
    pub tsc_khz: extern "C" fn() -> u64,
    pub set_timer: extern "C" fn(u64, u32) -> bool,
}

impl TimeOps {
    /// The TSC (frequency from CPUID or calibrated against the PIT), no steal time,
    /// the CMOS real-time clock.
    pub const NATIVE: TimeOps = TimeOps {
        clock_ns: native::clock_ns,
        sched_clock: native::sched_clock,
        steal_clock: native::steal_clock,
        wall_clock: native::wall_clock,
        tsc_khz: native::tsc_khz,
        set_timer: native::set_timer,
    };
}

/// A monotonic clock in nanoseconds (arbitrary origin, same on every CPU).
#[inline(always)]
pub fn clock_ns() -> u64 {
    let v: u64;
    // SAFETY: reading a clock has no side effect.
    unsafe { pv_site!(Op::TimeClockNs; lateout("rax") v,) };
    v
}

/// Nanoseconds since boot, cheap, for scheduling decisions.
#[inline(always)]
pub fn sched_clock() -> u64 {
    let v: u64;
    // SAFETY: reading a clock has no side effect.
    unsafe { pv_site!(Op::TimeSchedClock; lateout("rax") v,) };
    v
}

/// Nanoseconds `cpu` was runnable but the hypervisor ran something else
/// (0 on bare metal). Never decreases.
#[inline(always)]
pub fn steal_clock(cpu: u32) -> u64 {
    let v: u64;
    // SAFETY: reading a clock has no side effect.
    unsafe { pv_site!(Op::TimeStealClock; in("rdi") cpu, lateout("rax") v,) };
    v
}

/// The wall-clock time.
#[inline(always)]
pub fn wall_clock() -> WallClock {
    let (secs, nsecs): (u64, u64);
    // SAFETY: reading a clock has no side effect.
    unsafe { pv_site!(Op::TimeWallClock; lateout("rax") secs, lateout("rdx") nsecs,) };
    WallClock { secs, nsecs }
}

/// The TSC frequency in kHz.
#[inline(always)]
pub fn tsc_khz() -> u64 {
    let v: u64;
    // SAFETY: reading a frequency has no side effect.
    unsafe { pv_site!(Op::TimeTscKhz; lateout("rax") v,) };
    v
}

/// Arms this CPU's paravirtual one-shot timer: interrupt `vector` is raised once
/// [`clock_ns`] reaches `deadline_ns` (a deadline in the past fires at once).
/// Returns false when the platform has no such timer (natively: program the local
/// APIC instead). Under Xen PV this is `set_timer_op` with `VIRQ_TIMER`.
#[inline(always)]
pub fn set_timer(deadline_ns: u64, vector: u32) -> bool {
    let armed: u64;
    // SAFETY: arming a timer only schedules an interrupt the kernel asked for.
    unsafe { pv_site!(Op::TimeSetTimer; in("rdi") deadline_ns, in("rsi") vector, lateout("rax") armed,) };
    armed as u8 != 0
}
