//! irq: the interrupt flag and halting.

use crate::backends::native::ops as native;
use crate::table::ops;

/// RFLAGS.IF: interrupts enabled.
pub const FLAGS_IF: u64 = 1 << 9;

/// The irq op table.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct IrqOps {
    /// `pushf; pop rax`: the current flags (only IF is meaningful to callers).
    pub save_flags: fn() -> u64,
    /// `push rdi; popf`: restores flags saved by `save_flags`.
    pub restore_flags: unsafe fn(u64),
    /// `cli`.
    pub disable: fn(),
    /// `sti`.
    pub enable: unsafe fn(),
    /// `sti; hlt`: enable interrupts and halt, with no window in between.
    pub safe_halt: unsafe fn(),
    /// `hlt` with the interrupt flag left as it is.
    pub halt: fn(),
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

/// The current interrupt state, to hand back to [`restore_flags`].
#[inline(always)]
pub fn save_flags() -> u64 {
    (ops().irq.save_flags)()
}

/// Restores the interrupt state saved by [`save_flags`].
///
/// # Safety
/// `flags` must come from [`save_flags`] on this CPU; enabling interrupts requires
/// a valid IDT.
#[inline(always)]
pub unsafe fn restore_flags(flags: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().irq.restore_flags)(flags) }
}

/// Disables interrupts on this CPU.
#[inline(always)]
pub fn disable() {
    (ops().irq.disable)()
}

/// Enables interrupts on this CPU.
///
/// # Safety
/// A valid IDT with handlers for every interrupt that may arrive must be loaded.
#[inline(always)]
pub unsafe fn enable() {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().irq.enable)() }
}

/// Enables interrupts and halts until the next one, atomically.
///
/// # Safety
/// As [`enable`].
#[inline(always)]
pub unsafe fn safe_halt() {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().irq.safe_halt)() }
}

/// Halts until the next interrupt (forever if interrupts are disabled).
#[inline(always)]
pub fn halt() {
    (ops().irq.halt)()
}

/// Runs `f` with interrupts disabled, restoring the previous state afterwards.
#[inline]
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    let flags = save_flags();
    disable();
    let r = f();
    // SAFETY: `flags` came from save_flags on this CPU just above; if they had IF set,
    // interrupts were already enabled, so a valid IDT is loaded.
    unsafe { restore_flags(flags) };
    r
}
