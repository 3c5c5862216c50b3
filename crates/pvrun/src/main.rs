//! The `pvrun` binary: parses the command line, runs the guest and turns the
//! outcome into the process exit status.

use clap::error::ErrorKind;
use clap::Parser;

use pvrun::cli::{clap_error_line, Cli};
use pvrun::error::EXIT_BAD_INPUT;
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
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = err.print();
                    0
                }
                _ => {
                    eprintln!("pvrun: error: {}", clap_error_line(&err));
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
            eprintln!("{line}");
        }
        for line in &report.abi_counters {
            eprintln!("pvrun: stats: {line}");
        }
    }
    match report.result {
        Ok(exit) => {
            match (exit.kind, &exit.reason) {
                (ExitKind::Reset, _) => eprintln!("pvrun: guest requested a reset"),
                (ExitKind::PowerOff, Some(reason)) => eprintln!("pvrun: guest powered off: {reason}"),
                _ => {}
            }
            exit.status
        }
        Err(err) => {
            eprintln!("pvrun: error: {err}");
            err.exit_code()
        }
    }
}

/// `--probe-host`: the report on stdout, exit 0; or the error line.
fn probe_host(config: &pvrun::VmConfig) -> i32 {
    match pvrun::probe_host(config) {
        Ok(probe) => {
            print!("{probe}");
            0
        }
        Err(err) => {
            eprintln!("pvrun: error: {err}");
            err.exit_code()
        }
    }
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
