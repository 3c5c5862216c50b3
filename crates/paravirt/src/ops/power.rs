//! power: ending the machine.

use crate::backends::native::ops as native;
use crate::ops::Op;
use crate::pv_site;

/// The power op table.
#[derive(Clone, Copy)]
#[repr(C)]
#[allow(missing_docs)]
pub struct PowerOps {
    pub shutdown: extern "C" fn(u32) -> !,
    pub reboot: extern "C" fn() -> !,
}

impl PowerOps {
    /// The isa-debug-exit port (0xf4) for the status, then halt; reboot through the
    /// keyboard controller, then a triple fault.
    pub const NATIVE: PowerOps = PowerOps { shutdown: native::shutdown, reboot: native::reboot };
}

/// Powers off with `status` (0 = success) where the platform can carry it.
#[inline(always)]
pub fn shutdown(status: u32) -> ! {
    // SAFETY: ends the machine.
    unsafe { pv_site!(Op::PowerShutdown; in("rdi") status, options(noreturn),) }
}

/// Resets the machine.
#[inline(always)]
pub fn reboot() -> ! {
    // SAFETY: ends the machine.
    unsafe { pv_site!(Op::PowerReboot; options(noreturn),) }
}
