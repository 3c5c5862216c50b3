//! `pvlab bench`: for every op with a short native form, (a) the raw instruction,
//! (b) the patched call site and (c) the unpatched indirect call, per platform.
//! (a) and (b) come from one boot, (c) from a boot with `pv.patch=off`. All figures
//! are per iteration of a loop around the op. Instructions are exact where pvrun's
//! counters exist and are shown with the empty loop's own instructions subtracted;
//! cycles are TSC ticks including the loop (the loops around (a) and (b) are the
//! same code, so their ratio compares the ops).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::platform::Platform;
use crate::run;
use crate::tap::Bench;
use crate::LabError;

/// Where `pvlab bench` (and `pvlab report`) measure by default: where costs are
/// deterministic — exact KVM counters (pvrun) or QEMU's instruction-counted
/// clock. Elsewhere the TSC is too coarse or traps for single instructions.
pub const DEFAULT_PLATFORMS: &[&str] = &["qemu-tcg-icount", "pvrun-kvm", "pvrun-none"];
/// Iterations per measurement by default.
pub const DEFAULT_ITERS: u64 = 1000;
/// Cycle measurements per op and form by default (the least is kept).
pub const DEFAULT_REPS: u32 = 5;

/// The [`DEFAULT_PLATFORMS`].
pub fn default_platforms() -> Result<Vec<&'static Platform>, LabError> {
    DEFAULT_PLATFORMS.iter().map(|n| crate::platform::by_name(n)).collect()
}

/// [`measure`]s each of `platforms` this machine has, with progress on stderr;
/// an absent platform or a failed boot is reported there and left out.
pub fn measure_present(
    platforms: &[&'static Platform],
    kernel: &Path,
    iters: u64,
    reps: u32,
) -> Vec<PlatformBench> {
    let mut out = Vec::new();
    for &p in platforms {
        if let Err(why) = p.availability() {
            eprintln!("pvlab: {:<18} SKIP: {why}", p.name);
            continue;
        }
        eprintln!("pvlab: {:<18} benchmarking ({iters} iterations)…", p.name);
        match measure(p, kernel, iters, reps) {
            Ok(r) => out.push(r),
            Err(e) => eprintln!("pvlab: {e}"),
        }
    }
    out
}

/// One metric of one form.
fn field(b: &Bench, key: &str) -> Option<f64> {
    b.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// Per-op results on one platform.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpCost {
    /// `group.op`.
    pub op: String,
    /// Implementation after patching.
    pub implementation: String,
    /// (a), (b), (c) cycles per iteration, loop included.
    pub cycles: [Option<f64>; 3],
    /// Cycles of the empty loop per iteration.
    pub loop_cycles: Option<f64>,
    /// (a), (b), (c) net instructions per op (exact counters only).
    pub insns: [Option<f64>; 3],
    /// (a), (b), (c) exits per op (exact counters only).
    pub exits: [Option<f64>; 3],
}

/// One platform's table.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlatformBench {
    /// Platform name.
    pub platform: String,
    /// Rows.
    pub ops: Vec<OpCost>,
    /// The kernel's other `# bench` lines (clock sources, cross-CPU latencies).
    pub other: Vec<Bench>,
}

fn net(b: &Bench, form: &str, metric: &str) -> Option<f64> {
    Some(field(b, &format!("{form}_{metric}"))? - field(b, &format!("loop_{metric}"))?)
}

fn benches(platform: &Platform, kernel: &Path, cmdline: &str) -> Result<Vec<Bench>, LabError> {
    let boot = run::boot(platform, kernel, cmdline, false)?;
    let problems: Vec<String> = boot.report.problems();
    if !problems.is_empty() {
        return Err(LabError::Bench(platform.name.to_string(), problems.join("; ")));
    }
    Ok(boot.report.benches)
}

/// Boots `platform` twice and assembles its table.
pub fn measure(
    platform: &'static Platform,
    kernel: &Path,
    iters: u64,
    reps: u32,
) -> Result<PlatformBench, LabError> {
    let base = format!("pvkernel.tests=bench pvkernel.bench.iters={iters} pvkernel.bench.reps={reps}");
    let patched = benches(platform, kernel, &base)?;
    let unpatched = benches(platform, kernel, &format!("{base} pv.patch=off"))?;
    let unpatched: BTreeMap<&str, &Bench> = unpatched.iter().map(|b| (b.name.as_str(), b)).collect();
    let (per_op, other): (Vec<Bench>, Vec<Bench>) =
        patched.into_iter().partition(|b| field(b, "raw_cycles").is_some());
    let ops = per_op
        .iter()
        .map(|b| {
            let c = unpatched.get(b.name.as_str());
            let tri = |metric: &str| {
                [net(b, "raw", metric), net(b, "site", metric), c.and_then(|c| net(c, "site", metric))]
            };
            let gross = |metric: &str| {
                [
                    field(b, &format!("raw_{metric}")),
                    field(b, &format!("site_{metric}")),
                    c.and_then(|c| field(c, &format!("site_{metric}"))),
                ]
            };
            OpCost {
                op: b.name.clone(),
                implementation: b
                    .labels
                    .iter()
                    .find(|(k, _)| k == "impl")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
                cycles: gross("cycles"),
                loop_cycles: field(b, "loop_cycles"),
                insns: tri("insns"),
                exits: gross("exits"),
            }
        })
        .collect();
    Ok(PlatformBench { platform: platform.name.to_string(), ops, other })
}

fn cell(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1}"))
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if a > 0.0 => format!("{:.2}", b / a),
        _ => "-".to_string(),
    }
}

/// The tables, as text.
pub fn render(results: &[PlatformBench]) -> String {
    let mut s = String::new();
    for p in results {
        let exact = p.ops.iter().any(|o| o.insns[0].is_some());
        s.push_str(&format!(
            "\n{}: (a) raw instruction, (b) patched site, (c) unpatched indirect call; per iteration\n",
            p.platform
        ));
        if exact {
            s.push_str(&format!(
                "{:<20} {:<14} {:>7} {:>7} {:>7} {:>6} {:>6}  {:>6} {:>5} {:>5}  {:>9} {:>9}\n",
                "op",
                "impl",
                "insn a",
                "insn b",
                "insn c",
                "b/a",
                "c/a",
                "exit a",
                "b",
                "c",
                "cyc a",
                "cyc b"
            ));
            for o in &p.ops {
                s.push_str(&format!(
                    "{:<20} {:<14} {:>7} {:>7} {:>7} {:>6} {:>6}  {:>6} {:>5} {:>5}  {:>9} {:>9}\n",
                    o.op,
                    o.implementation,
                    cell(o.insns[0]),
                    cell(o.insns[1]),
                    cell(o.insns[2]),
                    ratio(o.insns[0], o.insns[1]),
                    ratio(o.insns[0], o.insns[2]),
                    cell(o.exits[0]),
                    cell(o.exits[1]),
                    cell(o.exits[2]),
                    cell(o.cycles[0]),
                    cell(o.cycles[1]),
                ));
            }
        } else {
            s.push_str(&format!(
                "{:<20} {:<14} {:>9} {:>9} {:>9} {:>6} {:>6} {:>9}\n",
                "op", "impl", "cyc a", "cyc b", "cyc c", "b/a", "c/a", "loop"
            ));
            for o in &p.ops {
                s.push_str(&format!(
                    "{:<20} {:<14} {:>9} {:>9} {:>9} {:>6} {:>6} {:>9}\n",
                    o.op,
                    o.implementation,
                    cell(o.cycles[0]),
                    cell(o.cycles[1]),
                    cell(o.cycles[2]),
                    ratio(o.cycles[0], o.cycles[1]),
                    ratio(o.cycles[0], o.cycles[2]),
                    cell(o.loop_cycles),
                ));
            }
        }
    }
    s
}

/// The other benchmarks, one line each.
pub fn render_other(results: &[PlatformBench]) -> String {
    let mut s = String::new();
    for p in results.iter().filter(|p| !p.other.is_empty()) {
        s.push_str(&format!("\n{}: clocks and cross-CPU latencies\n", p.platform));
        for b in &p.other {
            let labels = b.labels.iter().map(|(k, v)| format!("{k}={v}"));
            let fields = b.fields.iter().map(|(k, v)| format!("{k}={v}"));
            let all: Vec<String> = labels.chain(fields).collect();
            s.push_str(&format!("  {:<22} {}\n", b.name, all.join(" ")));
        }
    }
    s
}
