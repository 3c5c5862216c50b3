//! irq: the interrupt flag and halting.

use crate::backends::native::ops as native;
use crate::ops::Op;
use crate::pv_site;

/// RFLAGS.IF: interrupts enabled.
pub const FLAGS_IF: u64 = 1 << 9;

/// The irq op table.
#[derive(Clone, Copy)]
#[repr(C)]
#[allow(missing_docs)]
pub struct IrqOps {
    pub save_flags: extern "C" fn() -> u64,
    pub restore_flags: unsafe extern "C" fn(u64),
    pub disable: extern "C" fn(),
    pub enable: unsafe extern "C" fn(),
    pub safe_halt: unsafe extern "C" fn(),
    pub halt: extern "C" fn(),
}

impl IrqOps {
    /// The bare instructions.
    pub const NATIVE: IrqOps = IrqOps {
        save_flags: native::save_flags,
        restore_flags: native::restore_flags,
        disable: native::irq_disable,
        enable: native::irq_enable,
        safe_halt: native::safe_halt,
        halt: native::halt,
    };
}

/// The current interrupt state (only [`FLAGS_IF`] is meaningful), to hand back to
/// [`restore_flags`].
#[inline(always)]
pub fn save_flags() -> u64 {
    let f: u64;
    // SAFETY: reading the flags has no side effect.
    unsafe { pv_site!(Op::IrqSaveFlags; lateout("rax") f,) };
    f
}

/// Restores the interrupt state saved by [`save_flags`].
///
/// # Safety
/// `flags` must come from [`save_flags`] on this CPU; enabling interrupts needs a
/// valid IDT.
#[inline(always)]
pub unsafe fn restore_flags(flags: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::IrqRestoreFlags; in("rdi") flags,) };
}

/// Disables interrupts on this CPU.
#[inline(always)]
pub fn disable() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { pv_site!(Op::IrqDisable;) };
}

/// Enables interrupts on this CPU.
///
/// # Safety
/// A valid IDT with handlers for every interrupt that may arrive must be loaded.
#[inline(always)]
pub unsafe fn enable() {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::IrqEnable;) };
}

/// Enables interrupts and halts until the next one, with no window in between.
///
/// # Safety
/// As [`enable`].
#[inline(always)]
pub unsafe fn safe_halt() {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::IrqSafeHalt;) };
}

/// Halts until the next interrupt (forever if interrupts are disabled).
#[inline(always)]
pub fn halt() {
    // SAFETY: halting has no memory effect.
    unsafe { pv_site!(Op::IrqHalt;) };
}

/// Runs `f` with interrupts disabled, restoring the previous state afterwards.
#[inline]
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let flags = save_flags();
    disable();
    let r = f();
    // SAFETY: `flags` came from save_flags on this CPU just above; if IF was set,
    // interrupts were already enabled, so a valid IDT is loaded.
    unsafe { restore_flags(flags) };
    r
}
