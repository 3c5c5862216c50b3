//! `pvlab`: the boot matrix (default) — build pvkernel, boot it everywhere, report.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pvlab::platform::{self, Platform};
use pvlab::{build, matrix};

/// Build pvkernel, boot it on every platform present, and report the TAP results
/// as a matrix. Exits non-zero if any test on any platform fails.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Only these platforms (repeatable; see `pvlab list`).
    #[arg(short, long = "platform", value_name = "NAME", global = true)]
    platforms: Vec<String>,
    /// Boot this kernel ELF instead of building pvkernel.
    #[arg(long, value_name = "ELF", global = true)]
    kernel: Option<PathBuf>,
    /// Extra words for the kernel command line.
    #[arg(long, value_name = "WORDS", default_value = "", global = true)]
    cmdline: String,
    /// Print the serial output live.
    #[arg(short, long, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boot on every platform and print the matrix (the default).
    Matrix,
    /// List the platforms and whether this machine has them.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pvlab: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode, pvlab::LabError> {
    let selected: Vec<&'static Platform> = if cli.platforms.is_empty() {
        platform::ALL.iter().collect()
    } else {
        cli.platforms
            .iter()
            .map(|n| platform::by_name(n))
            .collect::<Result<_, _>>()?
    };
    match cli.command.unwrap_or(Cmd::Matrix) {
        Cmd::List => {
            for p in selected {
                let state = p
                    .availability()
                    .map_or_else(|why| format!("absent: {why}"), |()| "present".into());
                println!("{:<18} {}", p.name, state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Matrix => {
            let kernel = match cli.kernel {
                Some(k) => k,
                None => {
                    eprintln!("pvlab: building pvkernel…");
                    build::kernel()?
                }
            };
            let rows = matrix::run(&selected, &kernel, &cli.cmdline, cli.verbose);
            print!("{}", matrix::render(&rows));
            let dir = build::output_dir();
            matrix::save(&rows, &dir)?;
            println!("logs and results.json: {}", dir.display());
            Ok(if matrix::any_failed(&rows) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
