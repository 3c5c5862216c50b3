//! CPU structures: descriptor tables and trap entry.

pub mod gdt;
pub mod probe;
pub mod traps;
