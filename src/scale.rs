//! `pvlab scale`: how the kernel's start-up and its cross-CPU work grow with
//! the number of CPUs, and its start-up with the guest's memory. Each point is
//! one boot of `pvkernel.tests=smp.` (the SMP tests and their latency bench):
//! launch → first line of the kernel, → every CPU online (the kernel's `# cpus`
//! line), → first test result; and the kernel's `smp.ipi` (a call to each other
//! CPU: mean and worst) and `smp.shootdown` (one page, every CPU at once).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::platform::{Launcher, Platform, GUEST_MEM_MIB};
use crate::run::{self, Boot};
use crate::tap::Bench;
use crate::LabError;

/// CPU counts tried under QEMU TCG.
pub const TCG_CPUS: &[u32] = &[1, 2, 4, 8, 16, 64];
/// CPU counts tried under pvrun.
pub const PVRUN_CPUS: &[u32] = &[1, 2, 4, 8, 16];
/// Memory sizes tried (MiB), under pvrun and QEMU TCG.
pub const MEM_MIB: &[u32] = &[128, 1024, 4096, 16384];

/// One boot's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// `qemu-tcg` or `pvrun`.
    pub launcher: &'static str,
    /// vCPUs given.
    pub cpus: u32,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// CPUs the kernel reported online.
    pub online: Option<u32>,
    /// Launch → the kernel's first line, ms.
    pub first_line_ms: Option<f64>,
    /// Launch → every CPU online (`# cpus`), ms.
    pub all_online_ms: Option<f64>,
    /// Launch → the first test result, ms.
    pub first_test_ms: Option<f64>,
    /// A call to each other CPU: mean and worst, µs.
    pub ipi_us: Option<(f64, f64)>,
    /// One page's shootdown to every CPU, µs.
    pub shootdown_us: Option<f64>,
    /// Why the point is missing (the platform could not run it), if it is.
    pub skipped: Option<String>,
}

fn platform(launcher: &'static str, cpus: u32, mem_mib: u32) -> Platform {
    let name: &'static str = Box::leak(format!("{launcher}-{cpus}cpu-{mem_mib}m").into_boxed_str());
    let (launcher_kind, backend, expect) = match launcher {
        "pvrun" => (Launcher::Pvrun("kvm"), "kvm", "kvm"),
        _ => (Launcher::QemuTcg(crate::platform::Q35), "native", "tcg"),
    };
    Platform {
        name,
        launcher: launcher_kind,
        expect_platform: expect,
        expect_backend: backend,
        cpus,
        mem_mib,
        extra_args: &[],
        check_clock: false,
        timeout: Duration::from_secs(180),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn field(b: &Bench, key: &str) -> Option<f64> {
    b.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn point(launcher: &'static str, cpus: u32, mem_mib: u32, boot: &Boot) -> Point {
    let at = |f: &dyn Fn(&str) -> bool| boot.lines.iter().find(|l| f(&l.text)).map(|l| ms(l.at));
    let bench = |name: &str| boot.report.benches.iter().find(|b| b.name == name);
    let online = boot.report.diagnostic("cpus").and_then(|c| c.split_whitespace().next()?.parse().ok());
    Point {
        launcher,
        cpus,
        mem_mib,
        online,
        first_line_ms: boot.first_tap_line.map(ms),
        all_online_ms: at(&|t: &str| t.starts_with("# cpus:")),
        first_test_ms: at(&|t: &str| t.starts_with("ok ") || t.starts_with("not ok ")),
        ipi_us: bench("smp.ipi").and_then(|b| Some((field(b, "avg_ns")? / 1e3, field(b, "max_ns")? / 1e3))),
        shootdown_us: bench("smp.shootdown").and_then(|b| Some(field(b, "ns")? / 1e3)),
        skipped: None,
    }
}

/// Boots `launcher` with `cpus` vCPUs and `mem_mib` MiB once.
pub fn measure(launcher: &'static str, cpus: u32, mem_mib: u32, kernel: &Path) -> Result<Point, LabError> {
    let p = platform(launcher, cpus, mem_mib);
    let missing = |why: String| Point {
        launcher,
        cpus,
        mem_mib,
        online: None,
        first_line_ms: None,
        all_online_ms: None,
        first_test_ms: None,
        ipi_us: None,
        shootdown_us: None,
        skipped: Some(why),
    };
    if let Err(why) = p.availability() {
        return Ok(missing(why));
    }
    eprintln!("pvlab: scale: {launcher} with {cpus} vCPUs and {mem_mib} MiB…");
    let boot = run::boot(&p, kernel, "pvkernel.tests=smp.", false)?;
    let problems = boot.report.problems();
    if !problems.is_empty() || boot.guest_exit_value() != Some(0) {
        return Err(LabError::Bench(p.name.to_string(), problems.join("; ")));
    }
    Ok(point(launcher, cpus, mem_mib, &boot))
}

/// Every point: CPU counts at 128 MiB (512 MiB for 64 vCPUs), then memory sizes
/// at 2 vCPUs.
pub fn measure_all(kernel: &Path) -> Result<Vec<Point>, LabError> {
    let mut points = Vec::new();
    for &cpus in TCG_CPUS {
        points.push(measure("qemu-tcg", cpus, if cpus > 16 { 512 } else { GUEST_MEM_MIB }, kernel)?);
    }
    for &cpus in PVRUN_CPUS {
        points.push(measure("pvrun", cpus, GUEST_MEM_MIB, kernel)?);
    }
    // 2 vCPUs at 128 MiB are already in the CPU series.
    for launcher in ["pvrun", "qemu-tcg"] {
        for &mem in MEM_MIB.iter().filter(|&&m| m != GUEST_MEM_MIB) {
            points.push(measure(launcher, 2, mem, kernel)?);
        }
    }
    Ok(points)
}

fn cell(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

/// The two tables: against the CPU count, against memory.
pub fn render(points: &[Point]) -> String {
    let mut s = String::from("\nagainst CPUs (ms from launch; µs per operation)\n");
    s.push_str(&format!(
        "{:<9} {:>5} {:>7} {:>11} {:>11} {:>11} {:>16} {:>13}\n",
        "launcher", "cpus", "online", "first line", "all online", "first test", "IPI avg/max", "shootdown"
    ));
    let row = |p: &Point| -> String {
        if let Some(why) = &p.skipped {
            return format!("{:<9} {:>5} SKIP: {why}\n", p.launcher, p.cpus);
        }
        let ipi = p.ipi_us.map_or("-".into(), |(a, m)| format!("{}/{}", cell(Some(a)), cell(Some(m))));
        format!(
            "{:<9} {:>5} {:>7} {:>11} {:>11} {:>11} {:>16} {:>13}\n",
            p.launcher,
            p.cpus,
            p.online.map_or("-".into(), |n| n.to_string()),
            cell(p.first_line_ms),
            cell(p.all_online_ms),
            cell(p.first_test_ms),
            ipi,
            cell(p.shootdown_us)
        )
    };
    for p in points.iter().filter(|p| p.mem_mib <= 512 && !(p.cpus == 2 && p.mem_mib != GUEST_MEM_MIB)) {
        s.push_str(&row(p));
    }
    s.push_str("\nagainst memory (2 vCPUs; ms from launch)\n");
    s.push_str(&format!(
        "{:<9} {:>9} {:>11} {:>11} {:>11}\n",
        "launcher", "MiB", "first line", "all online", "first test"
    ));
    let mut seen = Vec::new();
    for p in points.iter().filter(|p| p.cpus == 2) {
        if seen.contains(&(p.launcher, p.mem_mib)) {
            continue;
        }
        seen.push((p.launcher, p.mem_mib));
        match &p.skipped {
            Some(why) => s.push_str(&format!("{:<9} {:>9} SKIP: {why}\n", p.launcher, p.mem_mib)),
            None => s.push_str(&format!(
                "{:<9} {:>9} {:>11} {:>11} {:>11}\n",
                p.launcher,
                p.mem_mib,
                cell(p.first_line_ms),
                cell(p.all_online_ms),
                cell(p.first_test_ms)
            )),
        }
    }
    s
}
