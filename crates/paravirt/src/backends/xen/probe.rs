//! Detection: the Xen signature at a hypervisor CPUID base (Xen can also expose
//! Viridian leaves at 0x40000000 and its own at 0x40000100).

use super::abi::SIGNATURE;
use crate::select::{CpuidSource, Probe};

/// Priority of Xen when found.
pub const PRIORITY: u32 = 40;

/// The Xen CPUID base, if Xen is present.
pub fn base(probe: &Probe) -> Option<u32> {
    probe.find(SIGNATURE).map(|l| l.base)
}

/// Priority when Xen is present.
pub fn detect(probe: &Probe, _src: &dyn CpuidSource) -> Option<u32> {
    base(probe).map(|_| PRIORITY)
}

/// Priority reported when Xen's PV domain builder entered the kernel.
pub const PV_PRIORITY: u32 = 100;
