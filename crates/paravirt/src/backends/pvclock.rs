//! pvclock: the time records KVM and Xen share (Linux
//! `arch/x86/include/asm/pvclock-abi.h`, Xen `xen/include/public/xen.h`
//! `struct vcpu_time_info`), and reading them.
//!
//! The host keeps, per vCPU, a TSC timestamp, the system time at that TSC and a
//! scale; the guest extrapolates with `rdtsc` under the record's version seqlock.

use core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::backends::native::ops as native;

/// `struct pvclock_vcpu_time_info` (pvclock-abi.h), 32 bytes.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct PvclockVcpuTimeInfo {
    /// Odd while the host updates the record.
    pub version: u32,
    /// Padding.
    pub pad0: u32,
    /// TSC when `system_time` was taken.
    pub tsc_timestamp: u64,
    /// ns since the host's reference point.
    pub system_time: u64,
    /// TSC → ns multiplier (32.32 fixed point after the shift).
    pub tsc_to_system_mul: u32,
    /// Shift applied to the TSC delta first.
    pub tsc_shift: i8,
    /// PVCLOCK_* flags.
    pub flags: u8,
    /// Padding.
    pub pad: [u8; 2],
}

/// `PVCLOCK_TSC_STABLE_BIT`: readings are monotonic across CPUs.
pub const PVCLOCK_TSC_STABLE: u8 = 1 << 0;

/// `struct pvclock_wall_clock` (pvclock-abi.h): wall time at system_time 0.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct PvclockWallClock {
    /// Odd while the host updates the record.
    pub version: u32,
    /// Seconds since the epoch.
    pub sec: u32,
    /// Nanoseconds.
    pub nsec: u32,
}

/// Scales a TSC delta to ns with a pvclock record's multiplier and shift.
#[inline(always)]
pub fn pvclock_scale(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift < 0 { delta >> (-shift) as u32 } else { delta << shift as u32 };
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
}

/// Runs `read` under a host-written record's version seqlock: `Some` when the
/// version was even and the same before and after.
///
/// # Safety
/// `version` must point at a readable `u32` for the whole call.
#[inline(always)]
pub unsafe fn versioned<T>(version: *const u32, read: impl FnOnce() -> T) -> Option<T> {
    // SAFETY: the caller guarantees `version` is readable; volatile because the
    // host writes it concurrently.
    let before = unsafe { version.read_volatile() };
    fence(Ordering::Acquire);
    let value = read();
    fence(Ordering::Acquire);
    // SAFETY: as above.
    let after = unsafe { version.read_volatile() };
    (before == after && before & 1 == 0).then_some(value)
}

/// Nanoseconds of system time from the record at `p`, and whether its
/// TSC_STABLE flag was set.
///
/// # Safety
/// `p` must point at a live record (one the host maintains, or zeroed memory).
#[inline(always)]
pub unsafe fn read(p: *const PvclockVcpuTimeInfo) -> (u64, bool) {
    // SAFETY: forwarded to the caller.
    match unsafe { try_read(p) } {
        Some(r) => r,
        None => read_retry(p),
    }
}

/// The record was being updated: try until it is not.
#[cold]
#[inline(never)]
fn read_retry(p: *const PvclockVcpuTimeInfo) -> (u64, bool) {
    loop {
        core::hint::spin_loop();
        // SAFETY: `read`'s caller guarantees `p`.
        if let Some(r) = unsafe { try_read(p) } {
            return r;
        }
    }
}

/// One read of the record and the TSC; `None` if the version changed or was odd.
///
/// # Safety
/// As [`read`].
#[inline(always)]
unsafe fn try_read(p: *const PvclockVcpuTimeInfo) -> Option<(u64, bool)> {
    // SAFETY: the caller guarantees `p`; only the address is taken.
    let version = unsafe { core::ptr::addr_of!((*p).version) };
    // SAFETY: `p` points at a live record the host writes (the caller's
    // guarantee); volatile loads, validated by the version.
    let (stamp, system, mul, shift, flags, tsc) = unsafe {
        versioned(version, || {
            (
                core::ptr::addr_of!((*p).tsc_timestamp).read_volatile(),
                core::ptr::addr_of!((*p).system_time).read_volatile(),
                core::ptr::addr_of!((*p).tsc_to_system_mul).read_volatile(),
                core::ptr::addr_of!((*p).tsc_shift).read_volatile(),
                core::ptr::addr_of!((*p).flags).read_volatile(),
                native::read_tsc(),
            )
        })
    }?;
    let ns = system.wrapping_add(pvclock_scale(tsc.wrapping_sub(stamp), mul, shift));
    Some((ns, flags & PVCLOCK_TSC_STABLE != 0))
}

/// The TSC frequency in kHz a record implies: ns per tick is mul × 2^shift / 2^32.
///
/// # Safety
/// As [`read`].
pub unsafe fn tsc_khz(p: *const PvclockVcpuTimeInfo) -> u64 {
    // SAFETY: the caller guarantees `p`; each field is read once, under the version.
    let (mul, shift) = unsafe {
        versioned(core::ptr::addr_of!((*p).version), || {
            (
                core::ptr::addr_of!((*p).tsc_to_system_mul).read_volatile(),
                core::ptr::addr_of!((*p).tsc_shift).read_volatile(),
            )
        })
    }
    .unwrap_or((0, 0));
    let mut khz = (1_000_000u128 << 32) / u128::from(mul.max(1));
    if shift < 0 {
        khz <<= (-shift) as u32;
    } else {
        khz >>= shift as u32;
    }
    khz as u64
}

/// Keeps readings from records without TSC_STABLE monotonic across CPUs (as
/// Linux's pvclock does): never return less than any CPU has seen.
pub struct Monotonic(AtomicU64);

impl Monotonic {
    /// Nothing seen yet.
    pub const fn new() -> Self {
        Monotonic(AtomicU64::new(0))
    }

    /// `ns`, or the largest value handed out so far if that is larger.
    pub fn clamp(&self, ns: u64) -> u64 {
        let mut last = self.0.load(Ordering::Relaxed);
        loop {
            if ns <= last {
                return last;
            }
            match self.0.compare_exchange_weak(last, ns, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return ns,
                Err(l) => last = l,
            }
        }
    }
}

impl Default for Monotonic {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_spec() {
        assert_eq!(core::mem::size_of::<PvclockVcpuTimeInfo>(), 32);
        assert_eq!(core::mem::offset_of!(PvclockVcpuTimeInfo, tsc_to_system_mul), 24);
        assert_eq!(core::mem::offset_of!(PvclockVcpuTimeInfo, flags), 29);
        assert_eq!(core::mem::size_of::<PvclockWallClock>(), 12);
    }

    #[test]
    fn scaling() {
        // 1 GHz TSC: mul = 2^32 with shift 0 means 1 tick = 1 ns... mul is u32, so
        // use shift 1 and mul 2^31.
        assert_eq!(pvclock_scale(1_000, 1 << 31, 1), 1_000);
        // 2 GHz TSC: half a ns per tick.
        assert_eq!(pvclock_scale(2_000, 1 << 31, 0), 1_000);
        assert_eq!(pvclock_scale(4_000, 1 << 31, -1), 1_000);
        // No overflow for large deltas.
        assert_eq!(pvclock_scale(u64::MAX >> 1, 1 << 31, 0), (u64::MAX >> 1) / 2);
    }

    #[test]
    fn monotonic_never_goes_back() {
        let m = Monotonic::new();
        assert_eq!(m.clamp(10), 10);
        assert_eq!(m.clamp(5), 10);
        assert_eq!(m.clamp(11), 11);
    }

    #[test]
    fn versioned_rejects_odd_versions() {
        let odd = 3u32;
        // SAFETY: a local u32.
        assert_eq!(unsafe { versioned(&odd, || 1) }, None);
        let even = 4u32;
        // SAFETY: a local u32.
        assert_eq!(unsafe { versioned(&even, || 7) }, Some(7));
    }

    #[test]
    fn frequency_from_scale() {
        // 2 GHz: half a ns per tick, mul = 2^31, shift 0.
        let r = PvclockVcpuTimeInfo { tsc_to_system_mul: 1 << 31, ..Default::default() };
        // SAFETY: a local record.
        assert_eq!(unsafe { tsc_khz(&r) }, 2_000_000);
    }
}
