//! console: early output, usable before anything else is set up.

use crate::backends::native::ops as native;
use crate::ops::Op;
use crate::pv_site;

/// The console op table.
#[derive(Clone, Copy)]
#[repr(C)]
#[allow(missing_docs)]
pub struct ConsoleOps {
    pub write: extern "C" fn(*const u8, usize),
}

impl ConsoleOps {
    /// COM1, a 16550 UART at port 0x3f8.
    pub const NATIVE: ConsoleOps = ConsoleOps { write: native::console_write };
}

/// Writes bytes to the early console, blocking until they are accepted.
#[inline(always)]
pub fn write(bytes: &[u8]) {
    // SAFETY: the implementation reads exactly `len` bytes from `ptr`.
    unsafe { pv_site!(Op::ConsoleWrite; in("rdi") bytes.as_ptr(), in("rsi") bytes.len(),) };
}

/// A `core::fmt::Write` sink on the early console.
pub struct Console;

impl core::fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        write(s.as_bytes());
        Ok(())
    }
}
