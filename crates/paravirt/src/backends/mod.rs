//! Backends: each maps the API onto one vendor ABI. [`BACKENDS`] is the detection
//! table; native comes first and is always present.

use crate::select::Backend;

/// `serve!(ops, set; group.field = function => Op;...)`: installs each
/// function in the op table `ops` and adds its op to the `OpSet` `set`.
macro_rules! serve {
    ($ops:ident, $set:ident; $($group:ident . $field:ident = $f:expr => $op:ident;)*) => {
        $( $ops.$group.$field = $f; $set.insert($crate::ops::Op::$op); )*
    };
}

pub mod hyperv;
pub mod kvm;
pub mod lguest;
pub mod native;
pub mod pvclock;
pub mod vmi;
pub mod vmware;
pub mod xen;

/// Every backend, native first.
pub static BACKENDS: &[Backend] = &[
    native::BACKEND,
    kvm::BACKEND,
    xen::BACKEND,
    lguest::BACKEND,
    vmi::BACKEND,
    vmware::BACKEND,
    hyperv::BACKEND,
];
