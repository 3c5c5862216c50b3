//! The native backend: every op is the bare instruction (bare metal, or a
//! hypervisor that virtualizes the instruction in hardware).

pub mod ops;
