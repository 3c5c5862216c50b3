//! The command line of the `pvrun` binary.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::{VmConfig, TIMEOUT_MAX};

const AFTER_HELP: &str = "\
The guest's serial port (COM1) is copied to stdout, line by line.

Exit status:
  (v << 1) | 1  the guest wrote v to port 0xf4 (QEMU isa-debug-exit): always odd
  2             bad input: arguments, kernel file, memory size, command line
  4             the guest crashed: triple fault, KVM internal error, failed entry
  6             KVM unavailable: device missing, permission denied, not KVM,
                wrong API version or a missing capability
  70            pvrun itself failed (e.g. could not allocate guest memory)
  124           the guest did not finish within --timeout

Errors are printed as one line, 'pvrun: error: <message>', on stderr.

With --stats, the run ends with one more line on stderr (before any error):
  pvrun: stats: exits=N insn_emulation=N halt_exits=N io_exits=N mmio_exits=N
KVM's per-vCPU counters (KVM_GET_STATS_FD) for the whole run, those this KVM
has; or 'pvrun: stats: unavailable: <why>'.

Port 0xf8 is a bench marker: the guest brackets a region of its code with
START/STOP and reads back the emulated instructions and exits it took (see
the README).";

/// Boots a PVH kernel ELF in a minimal KVM virtual machine.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "pvrun",
    version,
    about = "Boots a PVH kernel ELF in a minimal KVM virtual machine",
    long_about = "Boots a PVH kernel ELF in a minimal KVM virtual machine: one vCPU, \
                  guest RAM at physical address 0, a 16550 UART on COM1 (0x3f8) copied to \
                  stdout, and QEMU's isa-debug-exit port at 0xf4 to end the run with a status.",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// The kernel: an x86-64 ELF with a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)
    #[arg(value_name = "KERNEL")]
    pub kernel: PathBuf,

    /// Guest RAM in MiB (16..=16384)
    #[arg(long, value_name = "MiB", default_value_t = crate::layout::MEM_MIB_DEFAULT, allow_negative_numbers = true)]
    pub mem: u64,

    /// Kernel command line (at most 4095 bytes)
    #[arg(long, value_name = "STRING", default_value = "")]
    pub cmdline: String,

    /// Stop the guest after this many seconds (decimals allowed, e.g. 0.5)
    #[arg(
        long,
        value_name = "SECONDS",
        default_value = "60",
        value_parser = parse_timeout,
        allow_negative_numbers = true
    )]
    pub timeout: Duration,

    /// The KVM device to use
    #[arg(long, value_name = "PATH", default_value = "/dev/kvm")]
    pub kvm: PathBuf,

    /// At the end, print KVM's exit and emulated-instruction counts on stderr
    #[arg(long)]
    pub stats: bool,
}

/// Parses a timeout in seconds: a positive decimal number.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("the timeout must be greater than 0 (got {s})"));
    }
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero() && *d <= TIMEOUT_MAX)
        .ok_or_else(|| {
            format!(
                "the timeout must be greater than 0 and at most {} s (got {s})",
                TIMEOUT_MAX.as_secs()
            )
        })
}

impl Cli {
    /// The run configuration (validated later, by [`crate::run`]); `--stats`
    /// is not part of it (the binary prints them).
    pub fn into_config(self) -> VmConfig {
        VmConfig {
            kernel: self.kernel,
            mem_mib: self.mem,
            cmdline: self.cmdline,
            timeout: self.timeout,
            kvm_path: self.kvm,
        }
    }
}

/// The one-line message for a clap error (without clap's "error: " prefix,
/// usage block and hint).
pub fn clap_error_line(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let text: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let text = text.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{text} (see 'pvrun --help')")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigError;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("pvrun").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = parse(&["k.elf"]).unwrap().into_config();
        assert_eq!(c, VmConfig::new("k.elf"));
        assert_eq!(c.timeout, Duration::from_secs(60));
        assert!(!parse(&["k.elf"]).unwrap().stats);
        assert!(parse(&["--stats", "k.elf"]).unwrap().stats);
    }

    #[test]
    fn mem_range() {
        for (mem, ok) in [
            ("16", true),
            ("128", true),
            ("16384", true),
            ("0", false),
            ("8", false),
            ("16385", false),
            ("100000000", false),
        ] {
            let config = parse(&["--mem", mem, "k"]).unwrap().into_config();
            assert_eq!(config.validate().is_ok(), ok, "--mem {mem}");
            if !ok {
                assert!(matches!(
                    config.validate(),
                    Err(ConfigError::MemOutOfRange { .. })
                ));
            }
        }
        for bad in ["-1", "abc", "99999999999999999999999"] {
            assert!(parse(&["--mem", bad, "k"]).is_err(), "--mem {bad}");
        }
    }

    #[test]
    fn timeout_accepts_decimals() {
        let c = parse(&["--timeout", "0.5", "k"]).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(500));
        for bad in ["0", "-1", "abc", "nan", "inf", "1e30"] {
            assert!(parse(&["--timeout", bad, "k"]).is_err(), "--timeout {bad}");
        }
    }

    #[test]
    fn all_options() {
        let c = parse(&[
            "--mem",
            "64",
            "--cmdline",
            "a b",
            "--kvm",
            "/x",
            "--timeout",
            "2",
            "k",
        ])
        .unwrap()
        .into_config();
        assert_eq!(c.mem_mib, 64);
        assert_eq!(c.cmdline, "a b");
        assert_eq!(c.kvm_path, PathBuf::from("/x"));
        assert_eq!(c.timeout, Duration::from_secs(2));
    }

    #[test]
    fn clap_errors_become_one_line() {
        let err = parse(&[]).unwrap_err();
        let line = clap_error_line(&err);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("<KERNEL>"), "{line}");
        let err = parse(&["--mem", "abc", "k"]).unwrap_err();
        let line = clap_error_line(&err);
        assert!(
            line.starts_with("invalid value 'abc' for '--mem <MiB>'"),
            "{line}"
        );
    }
}
