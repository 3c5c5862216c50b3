//! Steal time and preemption from each vCPU's runstate area (vcpu.h
//! `VCPUOP_register_runstate_memory_area`), for both flavours. Xen writes the
//! area on every state change; with `VMASST_TYPE_runstate_update_flag` it marks
//! the write in progress in bit 63 of `state_entry_time`.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use super::abi::{self, hypercall as hc, runstate, VcpuRunstateInfo};
use super::hypercall::{call, call3, ptr};
use crate::MAX_CPUS;

struct Areas([UnsafeCell<VcpuRunstateInfo>; MAX_CPUS]);

// SAFETY: Xen writes the areas; the kernel only reads them (volatile).
unsafe impl Sync for Areas {}

static AREAS: Areas = Areas(
    [const { UnsafeCell::new(VcpuRunstateInfo { state: 0, pad: 0, state_entry_time: 0, time: [0; 4] }) };
        MAX_CPUS],
);
static REGISTERED: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// Asks Xen to flag its updates (once per domain; harmless if repeated).
pub(super) fn enable_update_flag() {
    call3(hc::VM_ASSIST, abi::VMASST_CMD_ENABLE, abi::VMASST_TYPE_RUNSTATE_UPDATE_FLAG, 0);
}

/// Registers vCPU `vcpu`'s area (from any vCPU); false if Xen refused.
pub(super) fn register(vcpu: u32) -> bool {
    let Some(cell) = AREAS.0.get(vcpu as usize) else { return false };
    let addr = cell.get() as u64;
    let ok =
        call(hc::VCPU_OP, [abi::VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, u64::from(vcpu), ptr(&addr), 0, 0])
            == 0;
    REGISTERED[vcpu as usize].store(ok, Ordering::Release);
    ok
}

/// A consistent copy of `vcpu`'s area, if it is registered.
fn read(vcpu: u32) -> Option<VcpuRunstateInfo> {
    let i = vcpu as usize;
    if !REGISTERED.get(i)?.load(Ordering::Acquire) {
        return None;
    }
    let p = AREAS.0[i].get();
    loop {
        // SAFETY: the registered area of a static, written only by Xen; the entry
        // time brackets the copy, so a torn read is retried.
        let (before, copy, after) = unsafe {
            let t0 = core::ptr::addr_of!((*p).state_entry_time).read_volatile();
            core::sync::atomic::fence(Ordering::Acquire);
            let copy = p.read_volatile();
            core::sync::atomic::fence(Ordering::Acquire);
            (t0, copy, core::ptr::addr_of!((*p).state_entry_time).read_volatile())
        };
        if before == after && before & abi::XEN_RUNSTATE_UPDATE == 0 {
            return Some(copy);
        }
        core::hint::spin_loop();
    }
}

/// Time `cpu` was runnable but not running, or offline: Xen's steal time.
pub(super) extern "C" fn steal_clock(cpu: u32) -> u64 {
    read(cpu).map_or(0, |r| r.time[runstate::RUNNABLE] + r.time[runstate::OFFLINE])
}

/// Whether `cpu` is runnable but not running (its lock holder may be preempted).
pub(super) extern "C" fn vcpu_is_preempted(cpu: u32) -> u64 {
    read(cpu).is_some_and(|r| r.state as usize == runstate::RUNNABLE) as u64
}
