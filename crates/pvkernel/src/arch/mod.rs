//! CPU structures: descriptor tables and trap entry.

pub mod apic;
pub mod bench_port;
pub mod gdt;
pub mod pit;
pub mod probe;
pub mod traps;
