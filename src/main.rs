//! `pvlab`: the boot matrix (default) — build pvkernel, boot it everywhere, report.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pvlab::platform::{self, Platform};
use pvlab::{bench, build, compare, matrix, report, scale};

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
    /// Print the results as JSON on stdout instead of tables (`results.json`'s
    /// schema for the matrix and `run`: docs/results-schema.md).
    #[arg(long, global = true)]
    json: bool,
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
        #[arg(long, default_value_t = bench::DEFAULT_ITERS)]
        iters: u64,
        /// Cycle measurements per op and form; the least is kept.
        #[arg(long, default_value_t = bench::DEFAULT_REPS)]
        reps: u32,
    },
    /// Boot pvkernel on your own VMM (the conformance kit: docs/conformance-kit.md)
    /// and report it as one matrix row.
    Run {
        /// The VMM's command line. `{kernel}` and `{cmdline}` are replaced (each
        /// stays one argument), and `{cpus}` and `{mem}`; its standard output
        /// must carry the guest's COM1.
        #[arg(long, value_name = "COMMAND")]
        vmm: String,
        /// The name of the row.
        #[arg(long, default_value = "vmm")]
        name: String,
        /// vCPUs the VMM gives (the kernel waits for this many; `{cpus}`).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        cpus: u32,
        /// Guest memory, MiB (`{mem}`).
        #[arg(long, default_value_t = platform::GUEST_MEM_MIB, value_parser = clap::value_parser!(u32).range(16..))]
        mem: u32,
        /// The backend the kernel must select (`*`: any).
        #[arg(long, default_value = "*")]
        expect_backend: String,
        /// What the kernel must name on its `# platform:` line (`*`: anything).
        #[arg(long, default_value = "*")]
        expect_platform: String,
        /// Seconds before the boot is ended as hung.
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
        timeout: u64,
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
    /// One self-contained HTML page (inline CSS and SVG; no script, nothing
    /// fetched): the platform × test matrix, per-op costs, boot times, what the
    /// PV features save and the op implementations. Boots the matrix (and `pvlab
    /// bench`'s default platforms) unless given --from, and writes results.json.
    /// Exits non-zero if a platform it booted failed.
    Report {
        /// Render this earlier results.json instead of booting (-p then keeps
        /// only the platforms named).
        #[arg(long, value_name = "RESULTS_JSON")]
        from: Option<PathBuf>,
        /// Where to write the page [default: target/pvlab/report.html].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Skip the benchmark boots (no per-op cost tables).
        #[arg(long)]
        no_bench: bool,
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
            let mut json = Vec::new();
            for p in selected {
                let available = p.availability();
                if cli.json {
                    json.push(serde_json::json!({
                        "name": p.name,
                        "launcher": pvlab::results::launcher_name(&p.launcher),
                        "present": available.is_ok(),
                        "reason": available.as_ref().err(),
                    }));
                } else {
                    let state = available.map_or_else(|why| format!("absent: {why}"), |()| "present".into());
                    println!("{:<18} {}", p.name, state);
                }
            }
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { vmm, name, cpus, mem, expect_backend, expect_platform, timeout } => {
            if !vmm.contains("{kernel}") {
                return Err(pvlab::LabError::Usage(
                    "--vmm must name the kernel as {kernel} (and should pass {cmdline})".into(),
                ));
            }
            let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
            let p: &'static Platform = Box::leak(Box::new(Platform {
                name: leak(name),
                launcher: platform::Launcher::Vmm(leak(vmm)),
                expect_platform: leak(expect_platform),
                expect_backend: leak(expect_backend),
                cpus,
                mem_mib: mem,
                extra_args: &[],
                check_clock: false,
                timeout: std::time::Duration::from_secs(timeout),
            }));
            matrix_run(&[p], &cli.kernel, &cli.cmdline, cli.verbose, cli.json)
        }
        Cmd::Bench { iters, reps } => {
            let kernel = kernel_path(cli.kernel)?;
            let selected = if cli.platforms.is_empty() {
                eprintln!("pvlab: benchmarking where costs are exact; -p adds others");
                bench::default_platforms()?
            } else {
                selected
            };
            let results = bench::measure_present(&selected, &kernel, iters, reps);
            let json = serde_json::to_string_pretty(&results).unwrap_or_default();
            let path = save_output("bench.json", &json)?;
            if cli.json {
                println!("{json}");
            } else {
                print!("{}", bench::render(&results));
                print!("{}", bench::render_other(&results));
                println!("bench.json: {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Scale => {
            let kernel = kernel_path(cli.kernel)?;
            let points = scale::measure_all(&kernel)?;
            let json = serde_json::to_string_pretty(&points).unwrap_or_default();
            let path = save_output("scale.json", &json)?;
            if cli.json {
                println!("{json}");
            } else {
                print!("{}", scale::render(&points));
                println!("\nscale.json: {}", path.display());
            }
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
            let json = serde_json::to_string_pretty(&[&a, &b]).unwrap_or_default();
            let path = save_output("compare.json", &json)?;
            if cli.json {
                println!("{json}");
            } else {
                print!("{}", compare::render(&a, &b));
                println!("\ncompare.json: {}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report { from, out, no_bench } => {
            let (results, failed) = match from {
                Some(path) => (report::select(pvlab::results::Results::read(&path)?, &cli.platforms), false),
                None => {
                    let kernel = kernel_path(cli.kernel)?;
                    let rows = matrix::run(&selected, &kernel, &cli.cmdline, cli.verbose);
                    let dir = build::output_dir();
                    matrix::save(&rows, &kernel, &dir)?;
                    let bench = if no_bench { Vec::new() } else { report::bench_default_platforms(&kernel)? };
                    let results = pvlab::results::Results::new(&kernel, &rows, bench);
                    results.write(&dir.join("results.json"))?;
                    if !cli.json {
                        print!("{}", matrix::render(&rows));
                        println!("logs and results.json: {}", dir.display());
                    }
                    (results, matrix::any_failed(&rows))
                }
            };
            let out = out.unwrap_or_else(|| build::output_dir().join("report.html"));
            let bytes = report::write(&results, &out)?;
            if cli.json {
                println!("{}", serde_json::json!({ "report": out, "bytes": bytes }));
            } else {
                println!("report: {} ({bytes} bytes)", out.display());
            }
            Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Cmd::Matrix => matrix_run(&selected, &cli.kernel, &cli.cmdline, cli.verbose, cli.json),
    }
}

/// Writes `text` to `name` in pvlab's output directory; returns its path.
fn save_output(name: &str, text: &str) -> Result<PathBuf, pvlab::LabError> {
    let dir = build::output_dir();
    let path = dir.join(name);
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, text))
        .map_err(|e| pvlab::LabError::Output(path.display().to_string(), e.to_string()))?;
    Ok(path)
}

/// Boots `platforms`, prints the matrix (or, with `json`, the results), saves
/// the logs and `results.json`; fails if a platform failed.
fn matrix_run(
    platforms: &[&'static Platform],
    kernel: &Option<PathBuf>,
    cmdline: &str,
    verbose: bool,
    json: bool,
) -> Result<ExitCode, pvlab::LabError> {
    let kernel = kernel_path(kernel.clone())?;
    let rows = matrix::run(platforms, &kernel, cmdline, verbose);
    let dir = build::output_dir();
    matrix::save(&rows, &kernel, &dir)?;
    if json {
        println!("{}", pvlab::results::Results::new(&kernel, &rows, Vec::new()).to_json());
    } else {
        print!("{}", matrix::render(&rows));
        println!("logs and results.json: {}", dir.display());
    }
    Ok(if matrix::any_failed(&rows) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
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
