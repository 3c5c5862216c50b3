//! `pvlab compare`: the same kernel on two platforms side by side, in one run
//! (by default pvrun-kvm, where KVM emulates every CPL0 instruction of the
//! kernel, against pvrun-lguest, where the kernel runs in ring 3): the suite's
//! time without its deliberate clock-mark wait, the kernel's everyday
//! operations one by one, and a CPU-bound workload. Each figure is shown with
//! the ratio of the first platform's to the second's.

use std::path::Path;

use serde::Serialize;

use crate::platform::Platform;
use crate::run::{self, Boot};
use crate::tap::Bench;
use crate::LabError;

/// One platform's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Side {
    /// Platform name.
    pub platform: &'static str,
    /// The suite's own time less its clock-mark wait, in ms (the kernel's
    /// `# suite:` line).
    pub suite_ms: Option<f64>,
    /// Tests run (not skipped), of those planned.
    pub suite_tests: (usize, usize),
    /// Each test that ran (passed, not skipped) and its time in µs.
    pub durations: Vec<(String, f64)>,
    /// `# bench op:<name>` lines.
    pub ops: Vec<Bench>,
    /// The `# bench workload` line.
    pub workload: Option<Bench>,
}

fn field(b: &Bench, key: &str) -> Option<f64> {
    b.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn label<'a>(b: &'a Bench, key: &str) -> Option<&'a str> {
    b.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn checked(p: &Platform, boot: Boot) -> Result<Boot, LabError> {
    let problems = boot.report.problems();
    if problems.is_empty() {
        Ok(boot)
    } else {
        Err(LabError::Bench(p.name.to_string(), problems.join("; ")))
    }
}

/// Boots `p` three times: the whole suite, the operations, the workload of
/// `workload_mib` MiB.
pub fn measure(p: &'static Platform, kernel: &Path, workload_mib: u64) -> Result<Side, LabError> {
    eprintln!("pvlab: {:<18} the suite…", p.name);
    let suite = checked(p, run::boot(p, kernel, "pvkernel.durations=1", false)?)?;
    let suite_ms = suite.report.diagnostic("suite").and_then(parse_suite);
    let ran: Vec<&str> =
        suite.report.tests.iter().filter(|t| t.ok && t.skip.is_none()).map(|t| t.name.as_str()).collect();
    let durations = suite
        .report
        .diagnostics
        .iter()
        .filter_map(|d| parse_duration(d))
        .filter(|(name, _)| ran.contains(&name.as_str()))
        .collect();
    eprintln!("pvlab: {:<18} the operations…", p.name);
    let ops = checked(p, run::boot(p, kernel, "pvkernel.tests=bench.op_costs", false)?)?;
    eprintln!("pvlab: {:<18} the workload ({workload_mib} MiB)…", p.name);
    let cmdline = format!("pvkernel.tests=bench.workload pvkernel.workload={workload_mib}");
    let work = checked(p, run::boot(p, kernel, &cmdline, false)?)?;
    Ok(Side {
        platform: p.name,
        suite_ms,
        suite_tests: (ran.len(), suite.report.tests.len()),
        durations,
        ops: ops.report.benches.into_iter().filter(|b| b.name.starts_with("op:")).collect(),
        workload: work.report.benches.into_iter().find(|b| b.name == "workload"),
    })
}

/// `duration <test> <N> us` → (test, N).
fn parse_duration(d: &str) -> Option<(String, f64)> {
    let mut w = d.strip_prefix("duration ")?.split_whitespace();
    let (name, us) = (w.next()?, w.next()?.parse().ok()?);
    Some((name.to_string(), us))
}

/// The test that waits on purpose (for the host to compare clocks).
const CLOCK_MARKS: &str = "time.clock_marks_for_the_host";

/// Milliseconds both sides spent in the tests both ran, clock marks aside.
fn common_ms(a: &Side, b: &Side) -> (f64, f64, usize) {
    let mut sums = (0.0, 0.0, 0);
    for (name, us) in a.durations.iter().filter(|(n, _)| n != CLOCK_MARKS) {
        if let Some((_, other)) = b.durations.iter().find(|(n, _)| n == name) {
            sums = (sums.0 + us / 1e3, sums.1 + other / 1e3, sums.2 + 1);
        }
    }
    sums
}

/// `N ms, M ms of it waiting in ...` → N − M.
fn parse_suite(line: &str) -> Option<f64> {
    let mut numbers = line.split_whitespace().filter_map(|w| w.parse::<f64>().ok());
    let (total, marks) = (numbers.next()?, numbers.next()?);
    Some(total - marks)
}

fn num(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}{unit}"),
        Some(v) => format!("{v:.2}{unit}"),
        None => "-".into(),
    }
}

/// `a / b`, as "123×".
fn times(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.1}×", a / b),
        (Some(a), Some(_)) if a > 0.0 => "∞".into(),
        _ => "-".into(),
    }
}

/// The comparison as text.
pub fn render(a: &Side, b: &Side) -> String {
    let mut s = String::new();
    let w = |b: &Side, key: &str| b.workload.as_ref().and_then(|x| field(x, key));
    s.push_str(&format!("\n{} vs {} (ratio = {} / {})\n", a.platform, b.platform, a.platform, b.platform));
    s.push_str(&format!("{:<34} {:>14} {:>14} {:>9}\n", "", a.platform, b.platform, "ratio"));
    s.push_str(&format!(
        "{:<34} {:>14} {:>14} {:>9}\n",
        format!("suite without clock marks ({}/{} ran)", a.suite_tests.0, b.suite_tests.0),
        num(a.suite_ms, " ms"),
        num(b.suite_ms, " ms"),
        times(a.suite_ms, b.suite_ms)
    ));
    let (ca, cb, n) = common_ms(a, b);
    s.push_str(&format!(
        "{:<34} {:>14} {:>14} {:>9}\n",
        format!("  the {n} tests both ran"),
        num(Some(ca), " ms"),
        num(Some(cb), " ms"),
        times(Some(ca), Some(cb))
    ));
    let slowest = |x: &Side| {
        let mut d: Vec<&(String, f64)> = x.durations.iter().filter(|(n, _)| n != CLOCK_MARKS).collect();
        d.sort_by(|p, q| q.1.total_cmp(&p.1));
        d.iter().take(3).map(|(n, us)| format!("{n} {:.0} ms", us / 1e3)).collect::<Vec<_>>().join(", ")
    };
    s.push_str(&format!("  slowest on {}: {}\n", a.platform, slowest(a)));
    s.push_str(&format!("  slowest on {}: {}\n", b.platform, slowest(b)));
    let ms = |v: Option<f64>| v.map(|v| v / 1e6);
    let mib = a.workload.as_ref().and_then(|x| field(x, "mib")).unwrap_or(0.0);
    for (name, key) in [("workload", "ns"), ("  page tables", "tables_ns"), ("  checksum", "checksum_ns")] {
        let name = if key == "ns" { format!("workload ({mib} MiB)") } else { name.to_string() };
        s.push_str(&format!(
            "{:<34} {:>14} {:>14} {:>9}\n",
            name,
            num(ms(w(a, key)), " ms"),
            num(ms(w(b, key)), " ms"),
            times(w(a, key), w(b, key))
        ));
    }
    let sums: Vec<Option<&str>> =
        [a, b].iter().map(|x| x.workload.as_ref().and_then(|w| label(w, "checksum"))).collect();
    if sums[0] != sums[1] {
        s.push_str(&format!("  workload checksums differ: {:?} vs {:?}\n", sums[0], sums[1]));
    }
    s.push_str(&format!(
        "\n{:<34} {:>22} {:>22} {:>9}\n",
        "per call: ns / emulated insns / exits", a.platform, b.platform, "ratio ns"
    ));
    for op in &a.ops {
        let other = b.ops.iter().find(|o| o.name == op.name);
        let cell = |x: Option<&Bench>| match x {
            Some(x) => format!(
                "{} / {} / {}",
                num(field(x, "ns"), ""),
                num(field(x, "insns"), ""),
                num(field(x, "exits"), "")
            ),
            None => "-".into(),
        };
        s.push_str(&format!(
            "{:<34} {:>22} {:>22} {:>9}\n",
            op.name.trim_start_matches("op:"),
            cell(Some(op)),
            cell(other),
            times(field(op, "ns"), other.and_then(|o| field(o, "ns")))
        ));
    }
    for op in b.ops.iter().filter(|o| !a.ops.iter().any(|x| x.name == o.name)) {
        s.push_str(&format!(
            "{:<34} {:>22} {:>22}\n",
            op.name.trim_start_matches("op:"),
            "-",
            format!(
                "{} / {} / {}",
                num(field(op, "ns"), ""),
                num(field(op, "insns"), ""),
                num(field(op, "exits"), "")
            )
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suite_line_gives_the_time_without_the_marks() {
        assert_eq!(
            parse_suite("1500 ms, 1210 ms of it waiting in time.clock_marks_for_the_host"),
            Some(290.0)
        );
        assert_eq!(parse_suite("garbage"), None);
    }

    #[test]
    fn durations_of_tests_both_ran() {
        assert_eq!(parse_duration("duration mem.heap 123 us"), Some(("mem.heap".into(), 123.0)));
        assert_eq!(parse_duration("durations 1"), None);
        let side = |d: &[(&str, f64)]| Side {
            platform: "x",
            suite_ms: None,
            suite_tests: (0, 0),
            durations: d.iter().map(|(n, us)| (n.to_string(), *us)).collect(),
            ops: vec![],
            workload: None,
        };
        let a = side(&[("a", 4000.0), ("b", 1000.0), (CLOCK_MARKS, 1e6)]);
        let b = side(&[("a", 1000.0), ("c", 9000.0), (CLOCK_MARKS, 1e6)]);
        assert_eq!(common_ms(&a, &b), (4.0, 1.0, 1));
    }

    #[test]
    fn ratios() {
        assert_eq!(times(Some(10.0), Some(2.0)), "5.0×");
        assert_eq!(times(Some(1.0), Some(0.0)), "∞");
        assert_eq!(times(None, Some(1.0)), "-");
    }
}
