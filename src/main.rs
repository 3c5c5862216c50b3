//! `pvlab`: the boot matrix (default) — build pvkernel, boot it everywhere, report.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pvlab::platform::{self, Platform};
use pvlab::{bench, build, compare, matrix, scale};

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
    /// Per-op cost of (a) the raw instruction, (b) the patched site and (c) the
    /// unpatched indirect call, on every platform present.
    Bench {
        /// Iterations per measurement (the kernel also runs twice as many).
        #[arg(long, default_value_t = 1000)]
        iters: u64,
        /// Cycle measurements per op and form; the least is kept.
        #[arg(long, default_value_t = 5)]
        reps: u32,
    },
    /// How start-up and cross-CPU work grow with the CPU count (QEMU TCG: 1 to
    /// 64 vCPUs; pvrun: 1 to 16) and start-up with memory (128 MiB to 16 GiB):
    /// one boot per point, the SMP tests and their latency bench.
    Scale,
    /// The same kernel on two platforms side by side (default: pvrun-kvm, where
    /// KVM emulates the kernel's CPL0 code, against pvrun-lguest, where it runs
    /// in ring 3): the suite without its clock-mark wait, the everyday
    /// operations one by one, and a CPU-bound workload, with ratios.
    Compare {
        /// MiB of page tables built and data checksummed by the workload.
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=256))]
        workload: u64,
    },
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
        cli.platforms.iter().map(|n| platform::by_name(n)).collect::<Result<_, _>>()?
    };
    match cli.command.unwrap_or(Cmd::Matrix) {
        Cmd::List => {
            for p in selected {
                let state =
                    p.availability().map_or_else(|why| format!("absent: {why}"), |()| "present".into());
                println!("{:<18} {}", p.name, state);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Bench { iters, reps } => {
            let kernel = kernel_path(cli.kernel)?;
            let selected = if cli.platforms.is_empty() {
                // Where costs are deterministic: exact KVM counters, or QEMU's
                // instruction-counted clock. Elsewhere the TSC is too coarse or traps
                // (ask for those platforms with -p).
                eprintln!("pvlab: benchmarking where costs are exact; -p adds others");
                ["qemu-tcg-icount", "pvrun-kvm", "pvrun-none"]
                    .iter()
                    .map(|n| platform::by_name(n))
                    .collect::<Result<Vec<_>, _>>()?
            } else {
                selected
            };
            let mut results = Vec::new();
            for p in selected {
                if let Err(why) = p.availability() {
                    eprintln!("pvlab: {:<18} SKIP: {why}", p.name);
                    continue;
                }
                eprintln!("pvlab: {:<18} benchmarking ({iters} iterations)…", p.name);
                match bench::measure(p, &kernel, iters, reps) {
                    Ok(r) => results.push(r),
                    Err(e) => eprintln!("pvlab: {e}"),
                }
            }
            print!("{}", bench::render(&results));
            print!("{}", bench::render_other(&results));
            let dir = build::output_dir();
            let path = dir.join("bench.json");
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::write(&path, serde_json::to_string_pretty(&results).unwrap_or_default())
                })
                .map_err(|e| pvlab::LabError::Output(path.display().to_string(), e.to_string()))?;
            println!("bench.json: {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Scale => {
            let kernel = kernel_path(cli.kernel)?;
            let points = scale::measure_all(&kernel)?;
            print!("{}", scale::render(&points));
            let dir = build::output_dir();
            let path = dir.join("scale.json");
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::write(&path, serde_json::to_string_pretty(&points).unwrap_or_default())
                })
                .map_err(|e| pvlab::LabError::Output(path.display().to_string(), e.to_string()))?;
            println!("\nscale.json: {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Compare { workload } => {
            let kernel = kernel_path(cli.kernel)?;
            let pair = match cli.platforms.len() {
                0 => vec![platform::by_name("pvrun-kvm")?, platform::by_name("pvrun-lguest")?],
                2 => selected,
                _ => return Err(pvlab::LabError::Usage("compare takes two platforms (-p A -p B)".into())),
            };
            for p in &pair {
                if let Err(why) = p.availability() {
                    return Err(pvlab::LabError::Launch(p.name.to_string(), why));
                }
            }
            let a = compare::measure(pair[0], &kernel, workload)?;
            let b = compare::measure(pair[1], &kernel, workload)?;
            print!("{}", compare::render(&a, &b));
            let dir = build::output_dir();
            let path = dir.join("compare.json");
            std::fs::create_dir_all(&dir)
                .and_then(|()| {
                    std::fs::write(&path, serde_json::to_string_pretty(&[&a, &b]).unwrap_or_default())
                })
                .map_err(|e| pvlab::LabError::Output(path.display().to_string(), e.to_string()))?;
            println!("\ncompare.json: {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Matrix => {
            let kernel = kernel_path(cli.kernel)?;
            let rows = matrix::run(&selected, &kernel, &cli.cmdline, cli.verbose);
            print!("{}", matrix::render(&rows));
            let dir = build::output_dir();
            matrix::save(&rows, &dir)?;
            println!("logs and results.json: {}", dir.display());
            Ok(if matrix::any_failed(&rows) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
    }
}

fn kernel_path(given: Option<PathBuf>) -> Result<PathBuf, pvlab::LabError> {
    match given {
        Some(k) => match std::fs::metadata(&k) {
            Ok(m) if m.is_file() => Ok(k),
            Ok(_) => Err(pvlab::LabError::Kernel(k.display().to_string(), "not a file".into())),
            Err(e) => Err(pvlab::LabError::Kernel(k.display().to_string(), e.to_string())),
        },
        None => {
            eprintln!("pvlab: building pvkernel…");
            build::kernel()
        }
    }
}
