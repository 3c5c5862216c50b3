//! The Hyper-V backend: Microsoft's synthetic MSRs, reference TSC page and
//! hypercalls (the TLFS), the part Linux's `arch/x86/hyperv` and
//! `drivers/clocksource/hyperv_timer.c` use for time and IPIs. The contract
//! is `docs/abi/hyperv.md`, the wire types `pvabi::hyperv`.
//!
//! - [`probe`]: "Microsoft Hv" at 0x40000000 with the "Hv#1" interface;
//! - [`ops`]: the clock from the reference TSC page (else the reference
//!   counter MSR), the TSC frequency from its MSR, and IPIs by
//!   HvCallSendSyntheticClusterIpi(Ex) — each only where the partition's
//!   privileges and the host's recommendations allow, native otherwise.

pub mod ops;
pub mod probe;

pub use pvabi::hyperv as abi;

use crate::select::Backend;

/// Hyper-V.
pub const BACKEND: Backend = Backend {
    name: "hyperv",
    detect: probe::detect,
    install: ops::install,
    init_cpu: ops::init_cpu,
    memory_map: |_| 0,
    start_cpu: |_, _, _| crate::StartCpu::Unsupported,
    patch: Backend::NO_PATCH,
    patched_name: |_| "hyperv",
    refusal: Backend::NO_REFUSAL,
};
