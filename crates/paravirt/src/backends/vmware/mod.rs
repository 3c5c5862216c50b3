//! The VMware backend: VMware's guest backdoor (I/O port 0x5658) and its
//! hypervisor CPUID leaves — the ABI that replaced VMI and that Linux still
//! uses (`arch/x86/kernel/cpu/vmware.c`). The contract is
//! `docs/abi/vmware.md`, the wire types `pvabi::vmware`.
//!
//! - [`probe`]: the "VMwareVMware" signature at any hypervisor CPUID base, or
//!   — where no hypervisor announces itself (QEMU's vmport under TCG) — a
//!   GETVERSION through the port; the port is never touched where KVM, Xen or
//!   Hyper-V sign the CPUID leaves;
//! - [`ops`]: the backdoor call and the mapping: TSC kHz from the timing leaf
//!   or GETHZ, the wall clock from GETTIMEFULL or GETTIME, steal time from a
//!   per-CPU STEALCLOCK record — each only where the host answers, native
//!   otherwise.

pub mod ops;
pub mod probe;

pub use pvabi::vmware as abi;

use crate::select::Backend;

/// VMware.
pub const BACKEND: Backend = Backend {
    name: "vmware",
    detect: probe::detect,
    install: ops::install,
    init_cpu: ops::init_cpu,
    memory_map: |_| 0,
    start_cpu: |_, _, _| crate::StartCpu::Unsupported,
    patch: Backend::NO_PATCH,
    patched_name: |_| "vmware",
    refusal: probe::refusal,
};
