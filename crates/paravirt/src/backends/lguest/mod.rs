//! The lguest backend: the kernel runs deprivileged, in ring 3, beneath pvrun's
//! switcher, and speaks lguest64 (Linux 4.13's lguest ABI re-created for
//! x86-64; the contract is `docs/abi/lguest.md`, the wire types
//! `pvabi::lguest`).
//!
//! Chosen by the boot flow ([`crate::BootFlow::Lguest`]: pvrun entered the
//! kernel at its lguest64 entry), never by probing: the ABI has no CPUID
//! signature, as lguest had none.
//!
//! - [`hypercall`]: the trap (`int 4`) and the async ring that batches calls in
//!   lazy mode.
//! - [`ops`]: the mapping of every op, and `lguest_data`, the page shared with
//!   the host.

pub mod hypercall;
pub mod ops;
pub mod probe;

pub use pvabi::lguest as abi;

use crate::select::Backend;

/// lguest.
pub const BACKEND: Backend = Backend {
    name: "lguest",
    detect: probe::detect,
    install: ops::install,
    init_cpu: |_| {},
    memory_map: |_| 0,
    start_cpu: |_, _, _| crate::StartCpu::Unsupported,
    patch: ops::patch,
    patched_name: |_| "lguest-inline",
    refusal: Backend::NO_REFUSAL,
};
