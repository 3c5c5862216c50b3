//! `results.json`: what a pvlab run found, in a documented, versioned schema
//! (`docs/results-schema.md`) for tools and for `pvlab report`. Version
//! [`VERSION`]; a reader refuses another major.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bench::PlatformBench;
use crate::matrix::{Row, Verdict};
use crate::platform::{Launcher, XenDom0};
use crate::run::Boot;
use crate::tap::{Bench, TestPoint};
use crate::LabError;

/// The `schema` field's value.
pub const SCHEMA: &str = "pvlab-results";
/// The schema's version: a change that breaks readers bumps it.
pub const VERSION: u32 = 1;

/// A whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// [`VERSION`] of the writer.
    pub version: u32,
    /// When it was written: seconds since the Unix epoch.
    pub generated_unix: u64,
    /// The kernel ELF booted.
    pub kernel: String,
    /// One entry per platform, in matrix order.
    pub platforms: Vec<PlatformResult>,
    /// `pvlab bench`'s tables, when they were run (empty otherwise).
    #[serde(default)]
    pub bench: Vec<PlatformBench>,
}

/// One platform.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlatformResult {
    /// Its name (`qemu-tcg-pc`, `pvrun-kvm`, the `--name` of a `pvlab run --vmm`, ...).
    pub name: String,
    /// How it was launched: `qemu-tcg <machine>`, `qemu-kvm`, `pvrun
    /// <personality>`, `xen pv`, `xen pvh`, or `vmm <command>`.
    pub launcher: String,
    /// vCPUs given.
    pub cpus: u32,
    /// Guest memory, MiB.
    pub mem_mib: u32,
    /// What the kernel had to report on its `# platform:` line (`*`: anything).
    pub expect_platform: String,
    /// The backend it had to select (`*`: any).
    pub expect_backend: String,
    /// `passed`, `failed` or `skipped`.
    pub verdict: String,
    /// What went wrong (`failed`), one phrase each.
    pub problems: Vec<String>,
    /// Why it did not run (`skipped`).
    pub skip_reason: Option<String>,
    /// The boot, when it ran.
    pub boot: Option<BootResult>,
}

/// One boot.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BootResult {
    /// The kernel command line given.
    pub cmdline: String,
    /// The launcher's exit status (`None`: killed).
    pub status: Option<i32>,
    /// The kernel's debug-exit value (0 = every test passed).
    pub exit_value: Option<i32>,
    /// The watchdog fired.
    pub timed_out: bool,
    /// Launch → `TAP version 14`, ms.
    pub first_line_ms: Option<f64>,
    /// Launch → the launcher's exit, ms.
    pub exit_ms: f64,
    /// Fields of the `# platform:` line (`platform`, `backend`, `abi`, `boot`, `hv`, `mem`, ...).
    pub platform_line: BTreeMap<String, String>,
    /// CPUs the kernel brought online (its `# cpus:` line).
    pub cpus_online: Option<u32>,
    /// Guest clock against the host's over the clock marks, percent.
    pub clock_drift_percent: Option<f64>,
    /// The TAP test points, in order.
    pub tests: Vec<TestPoint>,
    /// `# op` lines: op → implementation.
    pub ops: BTreeMap<String, String>,
    /// `# bench` lines.
    pub benches: Vec<Bench>,
    /// Every other `# ` diagnostic, in order.
    pub diagnostics: Vec<String>,
    /// `Bail out!` reason.
    pub bail_out: Option<String>,
    /// The serial output, timestamped (ms since launch).
    pub serial: Vec<SerialLine>,
    /// The launcher's standard error.
    pub stderr: String,
}

/// One serial line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SerialLine {
    /// ms since launch.
    pub at_ms: f64,
    /// The line.
    pub text: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The launcher, as the schema spells it.
pub fn launcher_name(l: &Launcher) -> String {
    match l {
        Launcher::QemuTcg(m) => format!("qemu-tcg {m}"),
        Launcher::QemuKvm => "qemu-kvm".into(),
        Launcher::Pvrun(p) => format!("pvrun {p}"),
        Launcher::Xen(XenDom0::Pv) => "xen pv".into(),
        Launcher::Xen(XenDom0::Pvh) => "xen pvh".into(),
        Launcher::Vmm(cmd) => format!("vmm {cmd}"),
    }
}

/// The `# platform:` line as fields.
fn platform_line(boot: &Boot) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let Some(line) = boot.report.diagnostics.iter().find_map(|d| d.strip_prefix("platform: ")) else {
        return fields;
    };
    let mut words = line.split_whitespace().peekable();
    if let Some(first) = words.next() {
        fields.insert("platform".into(), first.to_string());
    }
    while let Some(w) = words.next() {
        if let Some(key) = w.strip_suffix(':') {
            let mut value = Vec::new();
            while let Some(v) = words.peek().filter(|v| !v.ends_with(':')) {
                value.push(v.trim_matches('"').to_string());
                words.next();
            }
            fields.insert(key.to_string(), value.join(" "));
        }
    }
    fields
}

impl BootResult {
    /// The schema's form of a boot.
    pub fn from_boot(boot: &Boot) -> BootResult {
        let r = &boot.report;
        let ops = r
            .diagnostics
            .iter()
            .filter_map(|d| d.strip_prefix("op ")?.split_once(" -> "))
            .map(|(op, imp)| (op.to_string(), imp.to_string()))
            .collect();
        BootResult {
            cmdline: boot.cmdline.clone(),
            status: boot.status,
            exit_value: boot.guest_exit_value(),
            timed_out: boot.timed_out,
            first_line_ms: boot.first_tap_line.map(ms),
            exit_ms: ms(boot.total),
            platform_line: platform_line(boot),
            cpus_online: r.diagnostic("cpus").and_then(|c| c.split_whitespace().next()?.parse().ok()),
            clock_drift_percent: boot.clock_drift().map(|d| d * 100.0),
            tests: r.tests.clone(),
            ops,
            benches: r.benches.clone(),
            diagnostics: r.diagnostics.iter().filter(|d| !d.starts_with("op ")).cloned().collect(),
            bail_out: r.bail_out.clone(),
            serial: boot.lines.iter().map(|l| SerialLine { at_ms: ms(l.at), text: l.text.clone() }).collect(),
            stderr: boot.stderr.clone(),
        }
    }
}

impl Results {
    /// The schema's form of a matrix run (and `pvlab bench`'s tables, if any).
    pub fn new(kernel: &Path, rows: &[Row], bench: Vec<PlatformBench>) -> Results {
        let platforms = rows
            .iter()
            .map(|row| {
                let p = &row.platform;
                let (verdict, problems, skip_reason) = match &row.verdict {
                    Verdict::Passed => ("passed", Vec::new(), None),
                    Verdict::Failed(problems) => ("failed", problems.clone(), None),
                    Verdict::Skipped(why) => ("skipped", Vec::new(), Some(why.clone())),
                };
                PlatformResult {
                    name: p.name.to_string(),
                    launcher: launcher_name(&p.launcher),
                    cpus: p.cpus,
                    mem_mib: p.mem_mib,
                    expect_platform: p.expect_platform.to_string(),
                    expect_backend: p.expect_backend.to_string(),
                    verdict: verdict.to_string(),
                    problems,
                    skip_reason,
                    boot: row.boot.as_ref().map(BootResult::from_boot),
                }
            })
            .collect();
        let generated_unix =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Results {
            schema: SCHEMA.into(),
            version: VERSION,
            generated_unix,
            kernel: kernel.display().to_string(),
            platforms,
            bench,
        }
    }

    /// As JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a `results.json`, refusing another schema or version.
    pub fn read(path: &Path) -> Result<Results, LabError> {
        let err = |e: String| LabError::Input(path.display().to_string(), e);
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        match (value.get("schema").and_then(|s| s.as_str()), value.get("version").and_then(|v| v.as_u64())) {
            (Some(SCHEMA), Some(v)) if v == u64::from(VERSION) => {}
            (Some(SCHEMA), Some(v)) => {
                return Err(err(format!("schema version {v}; this pvlab reads {VERSION}")))
            }
            _ => return Err(err(format!("not a {SCHEMA} file (no \"schema\": \"{SCHEMA}\")"))),
        }
        serde_json::from_value(value).map_err(|e| err(e.to_string()))
    }

    /// Writes it to `path`.
    pub fn write(&self, path: &Path) -> Result<(), LabError> {
        std::fs::write(path, self.to_json())
            .map_err(|e| LabError::Output(path.display().to_string(), e.to_string()))
    }
}
