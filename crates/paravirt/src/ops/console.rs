//! console: early output, usable before anything else is set up.

use crate::backends::native::ops as native;
use crate::table::ops;

/// The console op table.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct ConsoleOps {
    /// Writes bytes to the early console, blocking until accepted.
    pub write: fn(&[u8]),
}

impl ConsoleOps {
    /// COM1, a 16550 UART at port 0x3f8.
    pub const NATIVE: ConsoleOps = ConsoleOps {
        write: native::console_write,
    };
}

/// Writes bytes to the early console.
#[inline(always)]
pub fn write(bytes: &[u8]) {
    (ops().console.write)(bytes)
}

/// A `core::fmt::Write` sink on the early console.
pub struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write(s.as_bytes());
        Ok(())
    }
}
