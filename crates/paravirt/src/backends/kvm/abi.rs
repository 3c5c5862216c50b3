//! KVM's paravirtual ABI: CPUID leaves, MSRs and shared structures.
//!
//! Sources: Linux `Documentation/virt/kvm/x86/cpuid.rst` (signature, feature bits),
//! `Documentation/virt/kvm/x86/msr.rst` (MSR numbers and the structures they point
//! at), `arch/x86/include/asm/pvclock-abi.h` (pvclock layout and scaling).

/// Signature at the KVM CPUID base (cpuid.rst: "KVMKVMKVM\0\0\0").
pub const SIGNATURE: &[u8; 12] = b"KVMKVMKVM\0\0\0";

/// Feature bits in CPUID base+1 EAX (cpuid.rst).
pub mod feature {
    /// Old kvmclock MSRs 0x11/0x12.
    pub const CLOCKSOURCE: u32 = 0;
    /// io_delay is not needed.
    pub const NOP_IO_DELAY: u32 = 1;
    /// kvmclock at MSRs 0x4b564d00/01.
    pub const CLOCKSOURCE2: u32 = 3;
    /// Async page faults.
    pub const ASYNC_PF: u32 = 4;
    /// Steal time at MSR 0x4b564d03.
    pub const STEAL_TIME: u32 = 5;
    /// PV end of interrupt.
    pub const PV_EOI: u32 = 6;
    /// PV unhalt (KVM_HC_KICK_CPU).
    pub const PV_UNHALT: u32 = 7;
    /// PV TLB flush through steal time.
    pub const PV_TLB_FLUSH: u32 = 9;
    /// PV IPI hypercall.
    pub const PV_SEND_IPI: u32 = 11;
    /// Poll control MSR.
    pub const POLL_CONTROL: u32 = 12;
    /// Sched-yield hypercall.
    pub const PV_SCHED_YIELD: u32 = 13;
    /// kvmclock's TSC_STABLE flag can be trusted (a bit in base+1 EAX too).
    pub const CLOCKSOURCE_STABLE: u32 = 24;
}

/// MSR_KVM_WALL_CLOCK_NEW (msr.rst): GPA of a [`PvclockWallClock`].
pub const MSR_WALL_CLOCK_NEW: u32 = 0x4b56_4d00;
/// MSR_KVM_SYSTEM_TIME_NEW (msr.rst): GPA of a [`PvclockVcpuTimeInfo`] | enable.
pub const MSR_SYSTEM_TIME_NEW: u32 = 0x4b56_4d01;
/// MSR_KVM_STEAL_TIME (msr.rst): GPA of a [`KvmStealTime`] (64-byte aligned) | enable.
pub const MSR_STEAL_TIME: u32 = 0x4b56_4d03;
/// MSR_KVM_PV_EOI_EN (msr.rst): GPA of a 4-byte aligned, zeroed word | enable.
pub const MSR_PV_EOI_EN: u32 = 0x4b56_4d04;
/// MSR_KVM_POLL_CONTROL (msr.rst): bit 0 = 1 lets the host poll before halting.
pub const MSR_POLL_CONTROL: u32 = 0x4b56_4d05;
/// The enable bit of the MSRs above.
pub const MSR_ENABLE: u64 = 1;
/// Bit of the PV EOI word KVM sets when the next EOI may skip the APIC (msr.rst).
pub const PV_EOI_BIT: u32 = 0;

/// `kvm_steal_time.preempted` flags (msr.rst).
pub mod preempted {
    /// The vCPU is not running.
    pub const PREEMPTED: u8 = 1 << 0;
    /// Flush the vCPU's TLB before it runs again.
    pub const FLUSH_TLB: u8 = 1 << 1;
}

/// Hypercall numbers (hypercalls.rst).
pub mod hc {
    /// Wake a vCPU halted in `lock.wait`: rbx = flags (0), rcx = APIC ID.
    pub const KICK_CPU: u64 = 5;
    /// IPI a set of vCPUs: rbx/rcx = bitmap low/high, rdx = lowest APIC ID, rsi = ICR.
    pub const SEND_IPI: u64 = 10;
    /// Yield to a preempted vCPU: rbx = its APIC ID.
    pub const SCHED_YIELD: u64 = 11;
}

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

/// `struct kvm_steal_time` (msr.rst), 64 bytes.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub struct KvmStealTime {
    /// ns the vCPU was runnable but not running.
    pub steal: u64,
    /// Odd while the host updates the record.
    pub version: u32,
    /// Flags.
    pub flags: u32,
    /// Non-zero while the vCPU is preempted.
    pub preempted: u8,
    /// Padding.
    pub u8_pad: [u8; 3],
    /// Padding.
    pub pad: [u32; 11],
}

/// Scales a TSC delta to ns with a pvclock record's multiplier and shift.
#[inline(always)]
pub fn pvclock_scale(delta: u64, mul: u32, shift: i8) -> u64 {
    let d = if shift < 0 { delta >> (-shift) as u32 } else { delta << shift as u32 };
    ((u128::from(d) * u128::from(mul)) >> 32) as u64
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
        assert_eq!(core::mem::size_of::<KvmStealTime>(), 64);
        assert_eq!(core::mem::offset_of!(KvmStealTime, preempted), 16);
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
}
