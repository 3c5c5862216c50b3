//! The boot matrix: every platform, one boot each, one table.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::platform::Platform;
use crate::run::{self, Boot};
use crate::LabError;

/// Outcome of one platform.
#[derive(Debug, Serialize)]
pub enum Verdict {
    /// Every test ok.
    Passed,
    /// Something went wrong (the list says what).
    Failed(Vec<String>),
    /// Not present on this machine.
    Skipped(String),
}

/// One row.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The platform.
    pub platform: Platform,
    /// Its verdict.
    pub verdict: Verdict,
    /// The boot, when it ran.
    pub boot: Option<Boot>,
}

/// Runs `platforms` one after the other (they compete for two cores otherwise).
pub fn run(platforms: &[&'static Platform], kernel: &Path, extra_cmdline: &str, echo: bool) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, &p) in platforms.iter().enumerate() {
        if let Err(why) = p.availability() {
            eprintln!("pvlab: [{}/{}] {:<18} SKIP: {why}", i + 1, platforms.len(), p.name);
            rows.push(Row { platform: *p, verdict: Verdict::Skipped(why), boot: None });
            continue;
        }
        eprintln!("pvlab: [{}/{}] {:<18} booting…", i + 1, platforms.len(), p.name);
        let token = run::fresh_token();
        let cmdline = format!("pvkernel.token={token} {extra_cmdline}").trim().to_string();
        let row = match run::boot(p, kernel, &cmdline, echo) {
            Ok(boot) => {
                let problems = boot.problems(p, Some(&token));
                let verdict = if problems.is_empty() { Verdict::Passed } else { Verdict::Failed(problems) };
                Row { platform: *p, verdict, boot: Some(boot) }
            }
            Err(e) => Row { platform: *p, verdict: Verdict::Failed(vec![e.to_string()]), boot: None },
        };
        rows.push(row);
    }
    rows
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.0} ms", d.as_secs_f64() * 1000.0))
}

/// The table, as text.
pub fn render(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{:<18} {:<7} {:>4} {:>4} {:>4}  {:<8} {:>4} {:>11} {:>10}\n",
        "platform", "result", "pass", "fail", "skip", "backend", "cpus", "first line", "exit"
    ));
    for r in rows {
        let (result, boot) = match (&r.verdict, &r.boot) {
            (Verdict::Passed, b) => ("ok", b.as_ref()),
            (Verdict::Failed(_), b) => ("FAILED", b.as_ref()),
            (Verdict::Skipped(_), _) => ("skipped", None),
        };
        match boot {
            Some(b) => s.push_str(&format!(
                "{:<18} {:<7} {:>4} {:>4} {:>4}  {:<8} {:>4} {:>11} {:>10}\n",
                r.platform.name,
                result,
                b.report.passed(),
                b.report.failed(),
                b.report.skipped(),
                b.report.platform_field("backend").unwrap_or_else(|| "?".into()),
                b.report.diagnostic("cpus").and_then(|c| c.split_whitespace().next()).unwrap_or("?"),
                ms(b.first_tap_line),
                ms(Some(b.total)),
            )),
            None => s.push_str(&format!("{:<18} {:<7}\n", r.platform.name, result)),
        }
    }
    for r in rows {
        if let Some(d) = r.boot.as_ref().and_then(Boot::clock_drift) {
            s.push_str(&format!(
                "  {}: guest clock vs host: {:+.4} % over the clock marks\n",
                r.platform.name,
                d * 100.0
            ));
        }
        if r.boot.as_ref().is_some_and(|b| b.stopped_after_tap) {
            s.push_str(&format!(
                "  {}: no debug-exit port: pvlab ended the VMM {} s after the kernel's last line\n",
                r.platform.name,
                crate::run::FINISHED_GRACE.as_secs()
            ));
        }
        match &r.verdict {
            Verdict::Failed(problems) => {
                for p in problems {
                    s.push_str(&format!("  {}: {}\n", r.platform.name, p));
                }
            }
            Verdict::Skipped(why) => s.push_str(&format!("  {}: skipped: {}\n", r.platform.name, why)),
            Verdict::Passed => {}
        }
    }
    s
}

/// Whether any platform failed.
pub fn any_failed(rows: &[Row]) -> bool {
    rows.iter().any(|r| matches!(r.verdict, Verdict::Failed(_)))
}

/// Writes each boot's serial log and a `results.json` (`crate::results`) under `dir`.
pub fn save(rows: &[Row], kernel: &Path, dir: &Path) -> Result<(), LabError> {
    let err = |p: &Path, e: std::io::Error| LabError::Output(p.display().to_string(), e.to_string());
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    for r in rows {
        if let Some(b) = &r.boot {
            let path = dir.join(format!("{}.log", r.platform.name));
            let mut text = String::new();
            for l in &b.lines {
                text.push_str(&format!("[{:>9.3}] {}\n", l.at.as_secs_f64(), l.text));
            }
            if !b.stderr.is_empty() {
                text.push_str("--- launcher stderr ---\n");
                text.push_str(&b.stderr);
            }
            std::fs::write(&path, text).map_err(|e| err(&path, e))?;
        }
    }
    crate::results::Results::new(kernel, rows, Vec::new()).write(&dir.join("results.json"))
}
