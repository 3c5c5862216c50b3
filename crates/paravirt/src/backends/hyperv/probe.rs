//! Detection: "Microsoft Hv" at 0x40000000 (Hyper-V's leaves have no other
//! base), a range reaching the implementation-limits leaf, and the "Hv#1"
//! interface (TLFS, "Feature and interface discovery"). KVM and Xen can show these leaves too, beside their
//! own at 0x40000100; their own backends rank higher and win there.

use super::abi::{leaf, INTERFACE_HV1, SIGNATURE};
use crate::select::{CpuidSource, Probe};

/// Priority of Hyper-V when found: below KVM's (30) and Xen's (40), whose
/// own ABIs serve those hosts better when they also offer these leaves;
/// above VMware's (20).
pub const PRIORITY: u32 = 25;

/// What the host offers, from the leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offer {
    /// 0x40000003 EAX: the partition's privileges.
    pub privileges: u32,
    /// 0x40000003 EDX: feature bits.
    pub features: u32,
    /// 0x40000004 EAX: recommendations.
    pub recommendations: u32,
}

/// Whether the leaves are Hyper-V's: the signature at 0x40000000, a range
/// reaching 0x40000005, and the "Hv#1" interface.
pub fn present(probe: &Probe, src: &dyn CpuidSource) -> bool {
    probe.find(&SIGNATURE).is_some_and(|l| l.base == leaf::VENDOR && l.max_leaf >= leaf::LIMITS)
        && src.cpuid(leaf::INTERFACE, 0).eax == INTERFACE_HV1
}

/// The offer, if the leaves are Hyper-V's.
pub fn offer(probe: &Probe, src: &dyn CpuidSource) -> Option<Offer> {
    present(probe, src).then(|| {
        let features = src.cpuid(leaf::FEATURES, 0);
        Offer {
            privileges: features.eax,
            features: features.edx,
            recommendations: src.cpuid(leaf::ENLIGHTENMENTS, 0).eax,
        }
    })
}

/// Priority when Hyper-V is present.
pub fn detect(probe: &Probe, src: &dyn CpuidSource) -> Option<u32> {
    present(probe, src).then_some(PRIORITY)
}
