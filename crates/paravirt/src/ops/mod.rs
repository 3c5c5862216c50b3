//! The API, one module per op group. Each module holds the group's op table type
//! (`XxxOps`, with its native defaults) and the typed free functions the kernel calls.
//!
//! Hook timing, as Linux's `asm/hypervisor.h` documents it: every op here may be
//! called at any time after [`crate::table::PV_OPS`] holds its final table, on any
//! CPU, with or without a heap; none allocates.

pub mod console;
pub mod cpu;
pub mod irq;
pub mod mmu;
pub mod power;
