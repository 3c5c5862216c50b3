//! pvlab: builds pvkernel, boots it on every platform present, parses the TAP it
//! prints on the serial port and reports a matrix.
//!
//! ```no_run
//! let kernel = pvlab::build::kernel()?;
//! let platform = pvlab::platform::by_name("qemu-tcg-microvm")?;
//! let boot = pvlab::run::boot(platform, &kernel, "pvkernel.token=42", false)?;
//! assert!(boot.problems(platform, Some("42")).is_empty());
//! # Ok::<(), pvlab::LabError>(())
//! ```
#![deny(missing_docs)]

pub mod bench;
pub mod build;
pub mod compare;
pub mod matrix;
pub mod platform;
pub mod report;
pub mod results;
pub mod run;
pub mod scale;
pub mod tap;

/// Errors of the lab itself (not of the kernel under test).
#[derive(Clone, Debug, thiserror::Error)]
pub enum LabError {
    /// Building the kernel or a tool failed.
    #[error("build failed: {0}")]
    Build(String),
    /// The kernel given with `--kernel` cannot be used.
    #[error("kernel {0}: {1}")]
    Kernel(String, String),
    /// A platform name nobody knows.
    #[error("unknown platform `{0}` (known: {1})")]
    UnknownPlatform(String, String),
    /// The launcher could not be started.
    #[error("{0}: cannot launch: {1}")]
    Launch(String, String),
    /// A benchmark boot did not complete.
    #[error("{0}: benchmark boot failed: {1}")]
    Bench(String, String),
    /// Results could not be written.
    #[error("cannot write {0}: {1}")]
    Output(String, String),
    /// A file pvlab was asked to read cannot be used.
    #[error("cannot read {0}: {1}")]
    Input(String, String),
    /// The command line asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
}
