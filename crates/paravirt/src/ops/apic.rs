//! apic: end of interrupt and inter-processor interrupts.

use crate::backends::native::ops as native;
use crate::cpus::CpuSet;
use crate::ops::Op;
use crate::pv_site;

/// The apic op table.
#[derive(Clone, Copy)]
#[repr(C)]
#[allow(missing_docs)]
pub struct ApicOps {
    pub eoi: extern "C" fn(),
    pub send_ipi: extern "C" fn(u32, u32),
    pub send_ipi_mask: extern "C" fn(*const CpuSet, u32),
}

impl ApicOps {
    /// The local APIC in xAPIC mode (MMIO at the base IA32_APIC_BASE names).
    pub const NATIVE: ApicOps =
        ApicOps { eoi: native::apic_eoi, send_ipi: native::send_ipi, send_ipi_mask: native::send_ipi_mask };
}

/// Signals the end of the current interrupt to the local APIC.
#[inline(always)]
pub fn eoi() {
    // SAFETY: an EOI only retires the in-service interrupt.
    unsafe { pv_site!(Op::ApicEoi;) };
}

/// Sends a fixed interrupt `vector` to CPU `cpu` (an index: see [`crate::cpus`]).
#[inline(always)]
pub fn send_ipi(cpu: u32, vector: u32) {
    // SAFETY: the receiver must handle `vector`; that is the kernel's contract.
    unsafe { pv_site!(Op::ApicSendIpi; in("rdi") cpu, in("rsi") vector,) };
}

/// Sends `vector` to every CPU in `cpus`.
#[inline(always)]
pub fn send_ipi_mask(cpus: &CpuSet, vector: u32) {
    let cpus: *const CpuSet = cpus;
    // SAFETY: as send_ipi; the set outlives the call.
    unsafe { pv_site!(Op::ApicSendIpiMask; in("rdi") cpus, in("rsi") vector,) };
}
