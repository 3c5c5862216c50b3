//! ABI definitions shared by the VMM (`pvrun`) and the kernel (`pvkernel`): the
//! public PVH boot structures, the Xen PV ELF notes, the lguest64, VMI/64, VMware
//! backdoor and Hyper-V ABIs pvrun serves, and the project's own bench-marker port protocol.
//! `no_std`, no dependencies: plain `repr(C)` structs and constants.
#![no_std]
#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod bench;
pub mod hyperv;
pub mod lguest;
pub mod pvh;
pub mod vmi;
pub mod vmware;
pub mod xen_pv;
