//! power: ending the machine.

use crate::backends::native::ops as native;
use crate::table::ops;

/// The power op table.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct PowerOps {
    /// Powers off, reporting `status` (0 = success) where the platform can carry it.
    pub shutdown: fn(u32) -> !,
    /// Resets the machine.
    pub reboot: fn() -> !,
}

impl PowerOps {
    /// The isa-debug-exit port (0xf4) for the status, then the keyboard-controller
    /// and triple-fault resets.
    pub const NATIVE: PowerOps = PowerOps {
        shutdown: native::shutdown,
        reboot: native::reboot,
    };
}

/// Powers off with `status` (0 = success).
#[inline(always)]
pub fn shutdown(status: u32) -> ! {
    (ops().power.shutdown)(status)
}

/// Resets the machine.
#[inline(always)]
pub fn reboot() -> ! {
    (ops().power.reboot)()
}
