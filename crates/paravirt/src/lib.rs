//! paravirt-ops for Rust kernels.
//!
//! Every privileged operation a kernel performs goes through one API, grouped by
//! concern as in Linux's `paravirt_types.h`:
//!
//! | group | module | what it replaces |
//! |-------|--------|------------------|
//! | cpu | [`cpu`] | `cpuid`, `rdmsr`/`wrmsr`, control registers, `lgdt`/`lidt`/`ltr`, `wbinvd` |
//! | irq | [`irq`] | `pushf`/`popf`, `cli`/`sti`, `sti; hlt`, `hlt` |
//! | mmu | [`mmu`] | `cr2`/`cr3`, page-table writes, `invlpg` |
//! | console | [`console`] | early serial output |
//! | power | [`power`] | shutdown and reboot |
//!
//! A *backend* maps the API onto one hypervisor's ABI; the native backend maps it
//! onto the bare instructions. The kernel calls the free functions of each group
//! module (`paravirt::irq::disable()`); nobody reaches a backend directly.
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod backends;
pub mod extable;
pub mod ops;
pub mod table;

pub use ops::{console, cpu, irq, mmu, power};
