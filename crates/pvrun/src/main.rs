//! The `pvrun` binary: parses the command line, runs the guest and turns the
//! outcome into the process exit status.

use std::io::Write;

use clap::error::ErrorKind;
use clap::Parser;

use pvrun::cli::{clap_error_line, Cli};
use pvrun::error::{EXIT_BAD_INPUT, EXIT_VMM_FAILURE};
use pvrun::ExitKind;

fn main() {
    // `process::exit` skips destructors on purpose: a vCPU thread the
    // watchdog could not bring back must not keep the process alive.
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            return match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => match err.print() {
                    Ok(()) => 0,
                    Err(e) => {
                        say(format_args!("pvrun: error: cannot write to stdout: {e}"));
                        EXIT_VMM_FAILURE
                    }
                },
                _ => {
                    say(format_args!("pvrun: error: {}", clap_error_line(&err)));
                    EXIT_BAD_INPUT
                }
            };
        }
    };
    if cli.probe_host {
        return probe_host(&cli.into_config());
    }
    let print_stats = cli.stats;
    let report = pvrun::run_with_stats(&cli.into_config(), Box::new(std::io::stdout()));
    if print_stats {
        // Nothing to say if no VM was built: the error line says why.
        if let Some(line) = stats_line(&report) {
            say(format_args!("{line}"));
        }
        for line in &report.abi_counters {
            say(format_args!("pvrun: stats: {line}"));
        }
    }
    match report.result {
        Ok(exit) => {
            if exit.stats.serial_lost_bytes > 0 {
                let lost = exit.stats.serial_lost_bytes;
                say(format_args!(
                    "pvrun: serial output: {lost} bytes lost (stdout failed, or stalled with 16 MiB waiting)"
                ));
            }
            match (exit.kind, &exit.reason) {
                (ExitKind::Reset, _) => say(format_args!("pvrun: guest requested a reset")),
                (ExitKind::PowerOff, Some(reason)) => say(format_args!("pvrun: guest powered off: {reason}")),
                _ => {}
            }
            exit.status
        }
        Err(err) => {
            say(format_args!("pvrun: error: {err}"));
            err.exit_code()
        }
    }
}

/// `--probe-host`: the report on stdout, exit 0; or the error line (a
/// stdout that cannot take the report is pvrun's failure: 70).
fn probe_host(config: &pvrun::VmConfig) -> i32 {
    match pvrun::probe_host(config) {
        Ok(probe) => {
            let mut out = std::io::stdout().lock();
            match write!(out, "{probe}").and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) => {
                    say(format_args!("pvrun: error: cannot write the report to stdout: {e}"));
                    EXIT_VMM_FAILURE
                }
            }
        }
        Err(err) => {
            say(format_args!("pvrun: error: {err}"));
            err.exit_code()
        }
    }
}

/// One line on stderr. A stderr that cannot take it (a full device, a
/// closed pipe) leaves nobody to tell: the line is dropped, never a panic.
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The `--stats` line, if a vCPU was created.
fn stats_line(report: &pvrun::RunReport) -> Option<String> {
    Some(match report.kvm_stats.as_ref()? {
        Ok(summary) if summary.counters.is_empty() => {
            "pvrun: stats: unavailable: this KVM has none of the counters".to_owned()
        }
        Ok(summary) => format!("pvrun: stats: {summary}"),
        Err(err) => format!("pvrun: stats: unavailable: {err}"),
    })
}
