//! The `pvrun` binary: parses the command line, runs the guest and turns the
//! outcome into the process exit status.

use clap::error::ErrorKind;
use clap::Parser;

use pvrun::cli::{clap_error_line, Cli};
use pvrun::error::EXIT_BAD_INPUT;

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
    match pvrun::run(&cli.into_config(), Box::new(std::io::stdout())) {
        Ok(exit) => exit.status,
        Err(err) => {
            eprintln!("pvrun: error: {err}");
            err.exit_code()
        }
    }
}
