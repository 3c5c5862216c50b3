//! The KVM backend: KVM's paravirtual interface (kvmclock, steal time, ...), each
//! feature used only when CPUID 0x40000001 advertises it; every other op stays
//! native, which KVM virtualizes in hardware.

pub mod abi;
pub mod ops;
pub mod probe;

use crate::select::Backend;

/// KVM.
pub const BACKEND: Backend = Backend {
    name: "kvm",
    detect: probe::detect,
    install: ops::install,
    init_cpu: ops::init_cpu,
    memory_map: |_| 0,
    start_cpu: |_, _, _| crate::StartCpu::Unsupported,
    patch: Backend::NO_PATCH,
    patched_name: |_| "kvm",
    refusal: Backend::NO_REFUSAL,
};
