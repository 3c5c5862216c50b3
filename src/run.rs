//! Booting the kernel once on one platform: launch, read the serial port with
//! timestamps, enforce a watchdog, and judge the result.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::platform::Platform;
use crate::tap::TapReport;
use crate::LabError;

/// A line of serial output and when it arrived (since launch).
#[derive(Clone, Debug, Serialize)]
pub struct TimedLine {
    /// Time since launch.
    pub at: Duration,
    /// The line, without its newline.
    pub text: String,
}

/// What one boot produced.
#[derive(Clone, Debug, Serialize)]
pub struct Boot {
    /// Platform name.
    pub platform: &'static str,
    /// Command line given to the kernel.
    pub cmdline: String,
    /// Process exit status (`None`: killed by the watchdog or by a signal).
    pub status: Option<i32>,
    /// The watchdog fired.
    pub timed_out: bool,
    /// Launch → `TAP version` line.
    pub first_tap_line: Option<Duration>,
    /// Launch → process exit.
    pub total: Duration,
    /// Serial output, timestamped.
    pub lines: Vec<TimedLine>,
    /// The launcher's standard error.
    pub stderr: String,
    /// The parsed TAP.
    pub report: TapReport,
    /// The kernel had finished (its last line came) but the launcher did not
    /// exit: pvlab ended it after [`FINISHED_GRACE`] (a VMM without QEMU's
    /// debug-exit port).
    pub stopped_after_tap: bool,
}

/// How long a launcher may outlive the kernel's last line before pvlab ends it.
pub const FINISHED_GRACE: Duration = Duration::from_secs(2);

impl Boot {
    /// The kernel's debug-exit value, when the process ended through port 0xf4
    /// (status `(value << 1) | 1`).
    pub fn guest_exit_value(&self) -> Option<i32> {
        self.status.filter(|s| s % 2 == 1).map(|s| s >> 1)
    }

    /// Everything wrong with this boot as a run of the full suite (empty = green).
    pub fn problems(&self, platform: &Platform, token: Option<&str>) -> Vec<String> {
        let mut p = Vec::new();
        if self.timed_out {
            p.push(format!("watchdog: no exit within {:.0} s", platform.timeout.as_secs_f64()));
        }
        match self.guest_exit_value() {
            Some(0) => {}
            Some(v) => p.push(format!("kernel exit value {v}")),
            // A VMM without the debug-exit port: the TAP stream says how it went.
            None if self.stopped_after_tap => {}
            None if !self.timed_out => p.push(format!(
                "launcher exited with {} ({})",
                self.status.map_or("a signal".to_string(), |s| s.to_string()),
                self.stderr.lines().last().unwrap_or("no message")
            )),
            None => {}
        }
        p.extend(self.report.problems());
        match self.report.platform_field("platform") {
            Some(_) if platform.expect_platform == "*" => {}
            Some(got) if got == platform.expect_platform => {}
            Some(got) => p.push(format!("platform line says {got}, expected {}", platform.expect_platform)),
            None => p.push("no `# platform:` line".to_string()),
        }
        match self.report.platform_field("backend") {
            Some(_) if platform.expect_backend == "*" => {}
            Some(got) if got == platform.expect_backend => {}
            Some(got) => p.push(format!("backend {got} selected, expected {}", platform.expect_backend)),
            None => p.push("no backend on the `# platform:` line".to_string()),
        }
        if let Some(drift) = self.clock_drift().filter(|_| platform.check_clock) {
            if drift.abs() > MAX_CLOCK_DRIFT {
                p.push(format!(
                    "guest clock drifts {:+.3} % against the host's over the marks (limit {} %)",
                    drift * 100.0,
                    MAX_CLOCK_DRIFT * 100.0
                ));
            }
        }
        // The echo comes from the boot.cmdline test; a filtered run may skip it.
        let echo_test_ran = self.report.tests.iter().any(|t| t.name == "boot.cmdline");
        if let Some(token) = token.filter(|_| echo_test_ran) {
            match self.report.diagnostic("cmdline token") {
                Some(t) if t == token => {}
                Some(t) => p.push(format!("kernel echoed token {t}, passed {token}")),
                None => p.push("kernel did not echo the command-line token".to_string()),
            }
        }
        p
    }
}

/// Largest relative difference allowed between the guest's clock and the host's
/// over the `# clock mark` interval.
pub const MAX_CLOCK_DRIFT: f64 = 0.001;

impl Boot {
    /// Relative rate difference of the guest's clock against the host's, from
    /// the `# clock mark <i> <ns>` lines and their arrival times here. The marks
    /// come in two clusters; the offset host − guest of the least delayed line of
    /// each cluster (delays only ever add) gives the drift over the interval.
    pub fn clock_drift(&self) -> Option<f64> {
        let marks: Vec<(u64, f64)> = self
            .lines
            .iter()
            .filter_map(|l| {
                let rest = l.text.strip_prefix("# clock mark ")?;
                let (_, ns) = rest.split_once(' ')?;
                let guest = ns.trim().parse::<u64>().ok()?;
                Some((guest, l.at.as_nanos() as f64 - guest as f64))
            })
            .collect();
        if marks.len() < 2 {
            return None;
        }
        let (first, second) = marks.split_at(marks.len() / 2);
        let best = |c: &[(u64, f64)]| c.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
        let ((g0, o0), (g1, o1)) = (best(first)?, best(second)?);
        let span = g1.checked_sub(g0)? as f64;
        (span > 0.0).then(|| -(o1 - o0) / span)
    }
}

/// A fresh token for the kernel to echo (proves the command line arrived).
pub fn fresh_token() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}", nanos as u64, std::process::id())
}

/// Boots `kernel` on `platform` with `cmdline`; `echo` prints serial lines live.
pub fn boot(platform: &Platform, kernel: &Path, cmdline: &str, echo: bool) -> Result<Boot, LabError> {
    boot_with(platform, kernel, cmdline, &[], echo)
}

/// As [`boot`], with extra arguments for the launcher.
pub fn boot_with(
    platform: &Platform,
    kernel: &Path,
    cmdline: &str,
    launcher_args: &[&str],
    echo: bool,
) -> Result<Boot, LabError> {
    let mut cmd = platform.command(kernel, cmdline, launcher_args)?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| LabError::Launch(platform.name.to_string(), e.to_string()))?;

    let stdout = child.stdout.take().expect("stdout is piped");
    let (tx, rx) = mpsc::channel::<TimedLine>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let text = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
            if tx.send(TimedLine { at: start.elapsed(), text }).is_err() {
                break;
            }
            buf.clear();
        }
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr_pipe.read_to_string(&mut s);
        s
    });

    let mut lines = Vec::new();
    let mut report = TapReport::default();
    let mut timed_out = false;
    let mut stopped_after_tap = false;
    let mut finished_at = None;
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            take_line(l, &mut lines, &mut report, echo, platform.name);
        }
        // The kernel's last words: the frame count after the suite, or a bail-out.
        if finished_at.is_none() && (report.diagnostic("frames").is_some() || report.bail_out.is_some()) {
            finished_at = Some(Instant::now());
        }
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if start.elapsed() > platform.timeout => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().ok().and_then(|s| s.code());
            }
            Ok(None) if finished_at.is_some_and(|t| t.elapsed() > FINISHED_GRACE) => {
                stopped_after_tap = true;
                let _ = child.kill();
                break child.wait().ok().and_then(|s| s.code());
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(LabError::Launch(platform.name.to_string(), e.to_string())),
        }
    };
    let total = start.elapsed();
    let _ = reader.join();
    for l in rx.try_iter() {
        take_line(l, &mut lines, &mut report, echo, platform.name);
    }
    let stderr = err_reader.join().unwrap_or_default();
    let first_tap_line = lines.iter().find(|l| l.text.starts_with("TAP version")).map(|l| l.at);
    Ok(Boot {
        platform: platform.name,
        cmdline: platform.kernel_cmdline(cmdline),
        status: if timed_out { None } else { status },
        timed_out,
        first_tap_line,
        total,
        lines,
        stderr,
        report,
        stopped_after_tap,
    })
}

fn take_line(l: TimedLine, lines: &mut Vec<TimedLine>, report: &mut TapReport, echo: bool, name: &str) {
    if echo {
        eprintln!("[{name} {:>8.3}s] {}", l.at.as_secs_f64(), l.text);
    }
    report.feed(&l.text);
    lines.push(l);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot_with_lines(lines: &[(u64, String)]) -> Boot {
        Boot {
            platform: "test",
            cmdline: String::new(),
            status: Some(1),
            timed_out: false,
            first_tap_line: None,
            total: Duration::ZERO,
            lines: lines
                .iter()
                .map(|(at, text)| TimedLine { at: Duration::from_nanos(*at), text: text.clone() })
                .collect(),
            stderr: String::new(),
            report: TapReport::default(),
            stopped_after_tap: false,
        }
    }

    /// Marks of a guest clock running `rate` times the host's, each line delayed
    /// by `delays[i]` ns on its way to the host.
    fn marks(rate: f64, delays: &[u64]) -> Vec<(u64, String)> {
        let host_times = [0u64, 30, 60, 90, 1200, 1230, 1260, 1290].map(|ms| 1_000_000_000 + ms * 1_000_000);
        host_times
            .iter()
            .zip(delays)
            .enumerate()
            .map(|(i, (&h, &d))| {
                let guest = ((h - 1_000_000_000) as f64 * rate) as u64 + 5_000;
                (h + d, format!("# clock mark {i} {guest}"))
            })
            .collect()
    }

    #[test]
    fn drift_ignores_delayed_lines() {
        // Exact clock, but some lines held up by several ms (a busy host).
        let b = boot_with_lines(&marks(
            1.0,
            &[3_000_000, 200_000, 8_000_000, 250_000, 150_000, 5_000_000, 900_000, 4_000_000],
        ));
        let d = b.clock_drift().unwrap();
        assert!(d.abs() < 0.0001, "drift {d}");
    }

    #[test]
    fn drift_measures_a_slow_guest() {
        let b = boot_with_lines(&marks(0.998, &[100_000; 8]));
        let d = b.clock_drift().unwrap();
        assert!((d + 0.002).abs() < 0.0002, "drift {d}");
        assert!(boot_with_lines(&[]).clock_drift().is_none());
    }
}
