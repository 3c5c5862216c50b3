//! lock: paravirtual spinlock support (wait for a kick instead of spinning, and ask
//! whether a lock holder's vCPU is running).

use crate::backends::native::ops as native;
use crate::ops::Op;
use crate::pv_site;

/// The lock op table.
#[derive(Clone, Copy)]
#[repr(C)]
#[allow(missing_docs)]
pub struct LockOps {
    pub wait: extern "C" fn(*const u8, u8),
    pub kick: extern "C" fn(u32),
    pub vcpu_is_preempted: extern "C" fn(u32) -> u64,
    pub yield_to: extern "C" fn(u32),
}

impl LockOps {
    /// Native, as Linux's: waiting returns at once (the caller spins), kicking does
    /// nothing, no CPU is ever preempted, and yielding is a pause.
    pub const NATIVE: LockOps = LockOps {
        wait: native::lock_wait,
        kick: native::lock_kick,
        vcpu_is_preempted: native::vcpu_is_preempted,
        yield_to: native::lock_yield_to,
    };
}

/// Waits while `*byte == value`, possibly until [`kick`]ed; may return early, so
/// callers re-check in a loop.
#[inline(always)]
pub fn wait(byte: &core::sync::atomic::AtomicU8, value: u8) {
    // SAFETY: the implementation only reads the byte.
    unsafe { pv_site!(Op::LockWait; in("rdi") byte.as_ptr() as *const u8, in("rsi") u64::from(value),) };
}

/// Wakes CPU `cpu` (APIC ID) if it waits in [`wait`].
#[inline(always)]
pub fn kick(cpu: u32) {
    // SAFETY: a wake-up has no memory effect.
    unsafe { pv_site!(Op::LockKick; in("rdi") cpu,) };
}

/// Whether the vCPU behind `cpu` is currently descheduled by the hypervisor.
#[inline(always)]
pub fn vcpu_is_preempted(cpu: u32) -> bool {
    let v: u64;
    // SAFETY: a query.
    unsafe { pv_site!(Op::LockVcpuIsPreempted; in("rdi") cpu, lateout("rax") v,) };
    v != 0
}

/// Gives the rest of this vCPU's time slice to `cpu` (APIC ID), which the caller
/// waits for and found preempted ([`vcpu_is_preempted`]). A hint: may do nothing.
#[inline(always)]
pub fn yield_to(cpu: u32) {
    // SAFETY: a scheduling hint with no memory effect.
    unsafe { pv_site!(Op::LockYieldTo; in("rdi") cpu,) };
}
