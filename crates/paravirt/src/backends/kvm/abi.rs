//! KVM's paravirtual ABI: CPUID leaves, MSRs and shared structures.
//!
//! Sources: Linux `Documentation/virt/kvm/x86/cpuid.rst` (signature, feature bits),
//! `Documentation/virt/kvm/x86/msr.rst` (MSR numbers and the structures they point
//! at), `crate::backends::pvclock` for the pvclock records both KVM and Xen use.

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

pub use crate::backends::pvclock::{PvclockVcpuTimeInfo, PvclockWallClock, PVCLOCK_TSC_STABLE};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_spec() {
        assert_eq!(core::mem::size_of::<KvmStealTime>(), 64);
        assert_eq!(core::mem::offset_of!(KvmStealTime, preempted), 16);
    }
}
