//! The native backend: every op is the bare instruction (bare metal, or a
//! hypervisor that virtualizes the instruction in hardware).

pub mod bench;
pub mod ops;

#[cfg(all(test, target_arch = "x86_64"))]
mod encoding_tests;

use crate::select::{AbiLine, Backend, InitEnv, OpSet};
use crate::table::PvOps;

/// Native: always present, lowest priority.
pub const BACKEND: Backend = Backend {
    name: "native",
    detect: |_, _| Some(0),
    install,
    init_cpu: |_| {},
    memory_map: |_| 0,
    start_cpu: |_, _, _| crate::StartCpu::Unsupported,
    patch: Backend::NO_PATCH,
    patched_name: |_| "native-inline",
    refusal: Backend::NO_REFUSAL,
};

fn install(_: &InitEnv, _: &mut PvOps) -> (OpSet, AbiLine) {
    (OpSet::EMPTY, AbiLine { name: "none", features: None })
}
