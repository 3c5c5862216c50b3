//! The Xen backend, both flavours.
//!
//! - PVH/HVM ([`ops`]): hardware virtualizes the CPU, so most ops stay native;
//!   Xen supplies the console, shutdown, the memory map and the clocks.
//! - PV ([`pv`]): the kernel runs deprivileged in ring 3 and every privileged op
//!   becomes a hypercall or a `vcpu_info` access. Chosen by the boot flow (Xen's
//!   PV domain builder entered the kernel), never by probing.

pub mod abi;
pub mod events;
pub mod hypercall;
pub mod ops;
pub mod probe;
pub mod pv;
pub mod runstate;

use crate::select::{AbiLine, Backend, InitEnv, OpSet};
use crate::table::PvOps;

/// Xen.
pub const BACKEND: Backend = Backend {
    name: "xen",
    detect: probe::detect,
    install,
    init_cpu: |_| {},
    memory_map,
    start_cpu,
    patch: Backend::NO_PATCH,
    patched_name: |_| "xen",
    refusal: Backend::NO_REFUSAL,
};

fn install(env: &InitEnv, ops: &mut PvOps) -> (OpSet, AbiLine) {
    match crate::xen_pv_start_info() {
        Some(start_info) => pv::install(start_info, ops),
        None => ops::install(env, ops),
    }
}

/// PV guests take their memory from `start_info` (the boot protocol's job).
fn memory_map(out: &mut [crate::MemoryRange]) -> usize {
    match crate::xen_pv_start_info() {
        Some(_) => 0,
        None => ops::memory_map(out),
    }
}

/// PV: `VCPUOP_initialise` + `VCPUOP_up`; HVM/PVH CPUs start the hardware way.
fn start_cpu(cpu: u32, entry: u64, stack_top: u64) -> crate::StartCpu {
    match crate::xen_pv_start_info() {
        Some(_) => pv::start_cpu(cpu, entry, stack_top),
        None => crate::StartCpu::Unsupported,
    }
}
