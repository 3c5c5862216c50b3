//! The Xen backend, PVH/HVM flavour: a hypercall page, the Xen console, Xen's
//! shutdown and memory map, and the TSC frequency from Xen's time leaf; every other
//! op stays native (hardware virtualization). The PV flavour (ring-3 kernel, page
//! tables by hypercall) is not implemented.

pub mod abi;
pub mod ops;
pub mod probe;

use crate::select::Backend;

/// Xen.
pub const BACKEND: Backend = Backend {
    name: "xen",
    detect: probe::detect,
    install: ops::install,
    init_cpu: |_| {},
    memory_map: ops::memory_map,
};
