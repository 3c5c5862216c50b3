//! Detection: none. lguest announces itself through the boot flow (the host
//! enters the kernel at its lguest64 entry), not through CPUID.

use crate::select::{CpuidSource, Probe};

/// Priority of the backend once the boot flow has chosen it.
pub const PRIORITY: u32 = 100;

/// Never detected by probing: a kernel entered at CPL0 cannot speak lguest.
pub fn detect(_probe: &Probe, _src: &dyn CpuidSource) -> Option<u32> {
    None
}
