//! Backends: each maps the API onto one vendor ABI. [`BACKENDS`] is the detection
//! table; native comes first and is always present.

use crate::select::Backend;

pub mod kvm;
pub mod lguest;
pub mod native;
pub mod pvclock;
pub mod vmi;
pub mod vmware;
pub mod xen;

/// Every backend, native first.
pub static BACKENDS: &[Backend] =
    &[native::BACKEND, kvm::BACKEND, xen::BACKEND, lguest::BACKEND, vmi::BACKEND, vmware::BACKEND];
