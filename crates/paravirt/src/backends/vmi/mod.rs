//! The VMI backend: VMware's Virtual Machine Interface, re-created for x86-64
//! as VMI/64 (the contract is `docs/abi/vmi.md`, the wire types
//! `pvabi::vmi`). The hypervisor ships the paravirtual code as an option ROM
//! in the guest's memory; this backend finds it, asks it how to patch each
//! call site, and lets the patcher carry out its answers.
//!
//! - [`probe`]: the ROM scan, its checks, `get_reloc` and `vmi_init`;
//! - [`ops`]: which op is which VMI call, and the wrappers for the calls
//!   whose signature differs from the op's.

pub mod ops;
pub mod probe;

pub use pvabi::vmi as abi;

use crate::select::Backend;

/// VMI.
pub const BACKEND: Backend = Backend {
    name: "vmi",
    detect: probe::detect,
    install: ops::install,
    init_cpu: |_| {},
    memory_map: |_| 0,
    start_cpu: |_, _, _| crate::StartCpu::Unsupported,
    patch: ops::patch,
    patched_name: ops::patched_name,
    refusal: probe::refusal,
};
