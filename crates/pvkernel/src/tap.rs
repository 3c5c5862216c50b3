//! TAP version 14 on the console (see the project's DESIGN, section 3).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, Ordering};

/// Exit status when every test passed.
pub const EXIT_OK: u32 = 0;
/// Exit status when a test failed.
pub const EXIT_FAILED: u32 = 1;
/// Exit status after `Bail out!`.
pub const EXIT_BAIL_OUT: u32 = 2;

static BAILING: AtomicBool = AtomicBool::new(false);

/// Collects a line, so the console gets it in few writes (each is a trap to the
/// host under some backends).
struct LineBuf {
    buf: [u8; 256],
    len: usize,
}

impl LineBuf {
    fn flush(&mut self) {
        paravirt::console::write(&self.buf[..self.len]);
        self.len = 0;
    }
}

impl Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for chunk in s.as_bytes().chunks(self.buf.len()) {
            if self.len + chunk.len() > self.buf.len() {
                self.flush();
            }
            self.buf[self.len..self.len + chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len();
        }
        Ok(())
    }
}

/// Prints a line (no prefix).
pub fn line(args: fmt::Arguments) {
    let mut b = LineBuf { buf: [0; 256], len: 0 };
    let _ = b.write_fmt(args);
    let _ = b.write_str("\n");
    b.flush();
}

/// Prints a `# ` diagnostic line.
#[macro_export]
macro_rules! diag {
    ($($arg:tt)*) => { $crate::tap::line(format_args!("# {}", format_args!($($arg)*))) };
}

/// Prints `Bail out! <reason>` and shuts down with [`EXIT_BAIL_OUT`].
pub fn bail_out(reason: fmt::Arguments) -> ! {
    // A fault while bailing out must not recurse forever.
    if !BAILING.swap(true, Ordering::SeqCst) {
        line(format_args!("Bail out! {}", reason));
    }
    paravirt::power::shutdown(EXIT_BAIL_OUT)
}

/// Writes a YAML-ish string, escaping quotes and backslashes.
struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for ch in self.0.chars() {
            match ch {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Outcome of one test.
pub enum Outcome {
    /// Passed.
    Pass,
    /// Failed, with a message.
    Fail(alloc::string::String),
    /// Not applicable here, with the reason.
    Skip(&'static str),
}

/// Prints the result line for test `n`.
pub fn result(n: usize, name: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Pass => line(format_args!("ok {} - {}", n, name)),
        Outcome::Skip(why) => line(format_args!("ok {} - {} # SKIP {}", n, name, why)),
        Outcome::Fail(msg) => {
            line(format_args!("not ok {} - {}", n, name));
            line(format_args!("  ---\n  message: \"{}\"\n  ...", Escaped(msg)));
        }
    }
}
