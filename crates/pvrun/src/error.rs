//! The top-level error and the process exit statuses.
//!
//! Each concern has its own error enum (`ConfigError`, `LoadError`,
//! `KvmError`, `SetupError`, `GuestError`); [`Error`] gathers them and maps
//! each to an exit status. Every `Display` is a single line, so the binary
//! can print exactly `pvrun: error: <message>`.
//!
//! Guest debug-exit statuses are `(v << 1) | 1`, always odd. The error
//! statuses are even so they can never be mistaken for a guest result.

use std::time::Duration;

use crate::config::ConfigError;
use crate::loader::LoadError;
use crate::vcpu::RegisterDump;
use crate::vm::{KvmError, SetupError};

/// Exit status for bad input: arguments, kernel file, memory size, command line.
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit status when KVM is missing, inaccessible, not KVM, or lacks what pvrun needs.
pub const EXIT_KVM_UNAVAILABLE: i32 = 6;
/// Exit status when the guest crashed (triple fault, KVM internal error, failed entry).
pub const EXIT_GUEST_CRASHED: i32 = 4;
/// Exit status for a failure of pvrun itself (out of memory, thread spawn, ...).
pub const EXIT_VMM_FAILURE: i32 = 70;
/// Exit status when the watchdog fired (as timeout(1) uses).
pub const EXIT_TIMEOUT: i32 = 124;

/// Renders an I/O error the way `strerror` does, without Rust's
/// " (os error N)" suffix: "No such file or directory".
pub fn io_message(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(i) if err.raw_os_error().is_some() => text[..i].to_owned(),
        _ => text,
    }
}

/// Every way a run can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid (exit 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The kernel cannot be read or loaded (exit 2).
    #[error(transparent)]
    Load(#[from] LoadError),
    /// KVM is not usable (exit 6).
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// Building the VM failed (exit 6 if KVM refused, 70 otherwise).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The guest crashed (exit 4).
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// The watchdog fired (exit 124).
    #[error(
        "guest did not finish within {} s{}",
        timeout.as_secs_f64(),
        match (rip, stuck) {
            (Some(rip), false) => format!(" (vCPU {vcpu} stopped at RIP {rip:#x})"),
            (Some(rip), true) => {
                format!(" (vCPU {vcpu} stopped at RIP {rip:#x}; another vCPU did not come back from KVM_RUN)")
            }
            (None, true) => " (a vCPU did not come back from KVM_RUN; RIP unknown)".to_owned(),
            (None, false) => String::new(),
        }
    )]
    Timeout {
        /// The configured timeout.
        timeout: Duration,
        /// Where vCPU `vcpu` was when it was stopped, if it could be read.
        rip: Option<u64>,
        /// The lowest-numbered vCPU whose RIP could be read (0, the BSP, if
        /// it came back), or 0.
        vcpu: u8,
        /// True if a vCPU thread never came back from KVM_RUN.
        stuck: bool,
    },
}

impl Error {
    /// The process exit status for this error; never 0, and never the odd
    /// status of a guest debug exit.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Load(_) => EXIT_BAD_INPUT,
            Error::Kvm(_) => EXIT_KVM_UNAVAILABLE,
            Error::Setup(e) if e.is_kvm_refusal() => EXIT_KVM_UNAVAILABLE,
            Error::Setup(_) => EXIT_VMM_FAILURE,
            Error::Guest(_) => EXIT_GUEST_CRASHED,
            Error::Timeout { .. } => EXIT_TIMEOUT,
        }
    }
}

/// Name of a `KVM_INTERNAL_ERROR_*` suberror.
pub fn internal_suberror_name(suberror: u32) -> &'static str {
    match suberror {
        1 => "emulation failure",
        2 => "simultaneous exceptions",
        3 => "delivery event",
        4 => "unexpected exit reason",
        _ => "unknown suberror",
    }
}

/// For an emulation failure that carries the instruction bytes
/// (`KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES` in `flags`, the
/// first data word), the bytes as text: `data[1..3]` hold `insn_size` (one
/// byte) followed by up to 15 instruction bytes (`struct
/// kvm_run.emulation_failure`).
fn insn_bytes_text(suberror: u32, data: &[u64]) -> String {
    const EMULATION_FAILURE: u32 = 1;
    const FLAG_INSTRUCTION_BYTES: u64 = 1;
    if suberror != EMULATION_FAILURE || data.len() < 3 || data[0] & FLAG_INSTRUCTION_BYTES == 0 {
        return String::new();
    }
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&data[1].to_le_bytes());
    raw[8..].copy_from_slice(&data[2].to_le_bytes());
    let size = usize::from(raw[0]).min(15);
    let bytes: Vec<String> = raw[1..=size].iter().map(|b| format!("{b:02x}")).collect();
    format!(", instruction bytes [{}]", bytes.join(" "))
}

fn rip_text(rip: &Option<u64>) -> String {
    rip.map_or_else(|| "unknown".to_owned(), |r| format!("{r:#x}"))
}

fn regs_text(regs: &Option<Box<RegisterDump>>) -> String {
    regs.as_ref().map_or_else(|| " (registers unavailable)".to_owned(), |r| format!(": {r}"))
}

/// How the guest crashed (exit 4).
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// KVM_EXIT_SHUTDOWN: a triple fault (or another shutdown condition).
    #[error(
        "guest crashed: vCPU {vcpu}: triple fault (KVM_EXIT_SHUTDOWN) at RIP {}{}",
        rip_text(&regs.as_ref().map(|r| r.rip)),
        regs_text(regs)
    )]
    TripleFault {
        /// The vCPU that crashed.
        vcpu: u8,
        /// The registers at the time, if they could be read.
        regs: Option<Box<RegisterDump>>,
    },
    /// KVM_EXIT_INTERNAL_ERROR.
    #[error(
        "guest crashed: vCPU {vcpu}: KVM internal error, suberror {suberror} ({}), data [{}]{}, \
         at RIP {}{}",
        internal_suberror_name(*suberror),
        data.iter().map(|d| format!("{d:#x}")).collect::<Vec<_>>().join(", "),
        insn_bytes_text(*suberror, data),
        rip_text(&regs.as_ref().map(|r| r.rip)),
        regs_text(regs)
    )]
    InternalError {
        /// The vCPU that crashed.
        vcpu: u8,
        /// `KVM_INTERNAL_ERROR_*`.
        suberror: u32,
        /// The `data` words KVM supplied.
        data: Vec<u64>,
        /// The registers at the time, if they could be read.
        regs: Option<Box<RegisterDump>>,
    },
    /// KVM_EXIT_FAIL_ENTRY: the hardware refused to enter the guest.
    #[error(
        "guest crashed: vCPU {vcpu}: VM entry failed (KVM_EXIT_FAIL_ENTRY), hardware reason \
         {reason:#x} on host cpu {cpu}, at RIP {}",
        rip_text(rip)
    )]
    FailEntry {
        /// The vCPU that crashed.
        vcpu: u8,
        /// `hardware_entry_failure_reason`.
        reason: u64,
        /// The host CPU.
        cpu: u32,
        /// RIP, if it could be read.
        rip: Option<u64>,
    },
    /// An exit pvrun does not handle (e.g. KVM_EXIT_HLT without an irqchip).
    #[error("guest stopped with an unexpected exit: vCPU {vcpu}: {what}, at RIP {}", rip_text(rip))]
    UnexpectedExit {
        /// The vCPU that stopped.
        vcpu: u8,
        /// Which exit.
        what: String,
        /// RIP, if it could be read.
        rip: Option<u64>,
    },
    /// A served ABI ended the guest for breaking its rules (lguest's "sudden
    /// death": an unknown hypercall, a call before INIT, a mapping into the
    /// switcher's range, a malformed ring slot, ...).
    #[error("guest killed: vCPU {vcpu}: lguest: {reason}")]
    Killed {
        /// The vCPU.
        vcpu: u8,
        /// Why, in one line.
        reason: String,
    },
    /// KVM_RUN itself failed.
    #[error("guest stopped: vCPU {vcpu}: KVM_RUN failed: {}, at RIP {}", io_message(source), rip_text(rip))]
    RunFailed {
        /// The vCPU that stopped.
        vcpu: u8,
        /// The error from KVM_RUN.
        source: std::io::Error,
        /// RIP, if it could be read.
        rip: Option<u64>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_message_drops_the_os_error_suffix() {
        let e = std::io::Error::from_raw_os_error(libc::ENOENT);
        assert_eq!(io_message(&e), "No such file or directory");
        let e = std::io::Error::other("plain");
        assert_eq!(io_message(&e), "plain");
    }

    #[test]
    fn timeout_message() {
        let e = Error::Timeout {
            timeout: Duration::from_millis(500),
            rip: Some(0x100005),
            vcpu: 0,
            stuck: false,
        };
        assert_eq!(e.to_string(), "guest did not finish within 0.5 s (vCPU 0 stopped at RIP 0x100005)");
        assert_eq!(e.exit_code(), 124);
    }

    #[test]
    fn internal_error_message_names_the_suberror() {
        let e = Error::Guest(GuestError::InternalError {
            vcpu: 0,
            suberror: 1,
            data: vec![0, 0xd000_0000],
            regs: None,
        });
        let s = e.to_string();
        assert!(s.contains("suberror 1 (emulation failure)"), "{s}");
        assert!(s.starts_with("guest crashed: vCPU 0: KVM internal error"), "{s}");
        assert!(s.contains("data [0x0, 0xd0000000]"), "{s}");
        assert!(!s.contains('\n'));
        assert!(!s.contains("instruction bytes"), "{s}");
        assert_eq!(e.exit_code(), 4);
    }

    #[test]
    fn crash_messages_name_the_vcpu() {
        let e = GuestError::TripleFault { vcpu: 1, regs: None };
        assert_eq!(
            e.to_string(),
            "guest crashed: vCPU 1: triple fault (KVM_EXIT_SHUTDOWN) at RIP unknown \
             (registers unavailable)"
        );
        let e = GuestError::UnexpectedExit { vcpu: 3, what: "x".into(), rip: Some(0x10) };
        assert!(e.to_string().contains("vCPU 3: x, at RIP 0x10"), "{e}");
        let e = Error::Timeout { timeout: Duration::from_secs(1), rip: None, vcpu: 0, stuck: true };
        assert!(e.to_string().contains("a vCPU did not come back"), "{e}");
    }

    #[test]
    fn emulation_failure_shows_the_instruction_bytes() {
        // What this host reports for `int3`: flags = 1, insn_size = 15,
        // insn_bytes = cc 00 ...
        let e = GuestError::InternalError {
            vcpu: 0,
            suberror: 1,
            data: vec![0x1, 0xcc0f, 0x0, 0x1000],
            regs: None,
        };
        let s = e.to_string();
        assert!(s.contains("instruction bytes [cc 00 00 00 00 00 00 00 00 00 00 00 00 00 00]"), "{s}");
    }
}
