//! Detection: the KVM signature at any hypervisor CPUID base (KVM may sit behind
//! Hyper-V's leaves at 0x40000000, then its own are at 0x40000100).

use super::abi::SIGNATURE;
use crate::select::{CpuidSource, Probe};

/// Priority of KVM when found (Linux ranks hypervisors by a comparable number).
pub const PRIORITY: u32 = 30;

/// The KVM CPUID base, if KVM is present.
pub fn base(probe: &Probe) -> Option<u32> {
    probe.find(SIGNATURE).map(|l| l.base)
}

/// Feature bits (CPUID base+1 EAX).
pub fn features(probe: &Probe, src: &dyn CpuidSource) -> u32 {
    match base(probe) {
        Some(b) => src.cpuid(b + 1, 0).eax,
        None => 0,
    }
}

/// Priority when KVM is present.
pub fn detect(probe: &Probe, _src: &dyn CpuidSource) -> Option<u32> {
    base(probe).map(|_| PRIORITY)
}
