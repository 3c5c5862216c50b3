//! A TAP version 14 parser for the kernel's serial output.

use serde::{Deserialize, Serialize};

/// One test point.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestPoint {
    /// Its number.
    pub number: usize,
    /// Its description (after ` - `).
    pub name: String,
    /// `ok` (true) or `not ok`.
    pub ok: bool,
    /// `# SKIP` reason, if skipped.
    pub skip: Option<String>,
    /// `message:` from the YAML block, if any.
    pub message: Option<String>,
}

/// A `# bench` line: `# bench <name> key=value ...`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bench {
    /// Benchmark name.
    pub name: String,
    /// Its numeric fields.
    pub fields: Vec<(String, f64)>,
    /// Its other `key=value` fields.
    pub labels: Vec<(String, String)>,
}

/// Everything parsed from one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TapReport {
    /// `TAP version N` seen.
    pub version: Option<u32>,
    /// The plan `1..N`.
    pub plan: Option<usize>,
    /// Test points in order.
    pub tests: Vec<TestPoint>,
    /// `# ` diagnostic lines (without the `# `).
    pub diagnostics: Vec<String>,
    /// `Bail out!` reason.
    pub bail_out: Option<String>,
    /// Benchmarks.
    pub benches: Vec<Bench>,
}

impl TapReport {
    /// Parses a whole transcript; lines that are not TAP (a hypervisor's own
    /// output) are ignored.
    pub fn parse(text: &str) -> TapReport {
        let mut r = TapReport::default();
        for line in text.lines() {
            r.feed(line);
        }
        r
    }

    /// Feeds one line.
    pub fn feed(&mut self, line: &str) {
        let line = line.trim_end_matches('\r');
        if let Some(v) = line.strip_prefix("TAP version ") {
            self.version = v.trim().parse().ok();
        } else if let Some(n) = line.strip_prefix("1..") {
            self.plan = n.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(rest) = line.strip_prefix("ok ") {
            self.push_point(true, rest);
        } else if let Some(rest) = line.strip_prefix("not ok ") {
            self.push_point(false, rest);
        } else if let Some(reason) = line.strip_prefix("Bail out!") {
            self.bail_out = Some(reason.trim().to_string());
        } else if let Some(bench) = line.strip_prefix("# bench ") {
            self.benches.extend(parse_bench(bench));
        } else if let Some(d) = line.strip_prefix("# ") {
            self.diagnostics.push(d.to_string());
        } else if let Some(msg) = line.trim_start().strip_prefix("message: ") {
            if let Some(last) = self.tests.last_mut() {
                last.message = Some(msg.trim().trim_matches('"').to_string());
            }
        }
    }

    fn push_point(&mut self, ok: bool, rest: &str) {
        let (num, desc) = rest.split_once(' ').unwrap_or((rest, ""));
        let Ok(number) = num.parse() else { return };
        let desc = desc.trim_start_matches("- ");
        let (name, skip) = match desc.split_once(" # SKIP") {
            Some((n, why)) => (n, Some(why.trim().to_string())),
            None => (desc, None),
        };
        self.tests.push(TestPoint { number, name: name.trim().to_string(), ok, skip, message: None });
    }

    /// Value of a `# key: value` diagnostic (first match).
    pub fn diagnostic(&self, key: &str) -> Option<&str> {
        self.diagnostics.iter().find_map(|d| d.strip_prefix(key)?.strip_prefix(": "))
    }

    /// Field `key` of the `# platform:` line, e.g. `backend`.
    pub fn platform_field(&self, key: &str) -> Option<String> {
        let line = self.diagnostics.iter().find(|d| d.starts_with("platform: "))?;
        if key == "platform" {
            return line["platform: ".len()..].split_whitespace().next().map(str::to_string);
        }
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w.strip_suffix(':') == Some(key) {
                return words.next().map(|v| v.trim_matches('"').to_string());
            }
        }
        None
    }

    /// Tests that passed (not skipped).
    pub fn passed(&self) -> usize {
        self.tests.iter().filter(|t| t.ok && t.skip.is_none()).count()
    }

    /// Tests that failed.
    pub fn failed(&self) -> usize {
        self.tests.iter().filter(|t| !t.ok).count()
    }

    /// Tests skipped.
    pub fn skipped(&self) -> usize {
        self.tests.iter().filter(|t| t.skip.is_some()).count()
    }

    /// A complete, all-green run: a plan, that many points numbered 1..N, none
    /// failed, no bail-out.
    pub fn is_success(&self) -> bool {
        self.problems().is_empty()
    }

    /// What is wrong with the run, one phrase each (empty when it is a success).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.version != Some(14) {
            p.push("no `TAP version 14` line".to_string());
        }
        if let Some(b) = &self.bail_out {
            p.push(format!("Bail out! {b}"));
        }
        match self.plan {
            None => p.push("no plan line".to_string()),
            Some(n) if n != self.tests.len() => {
                p.push(format!("plan says {n} tests, {} reported", self.tests.len()))
            }
            Some(_) => {}
        }
        for (i, t) in self.tests.iter().enumerate() {
            if t.number != i + 1 {
                p.push(format!("test {} numbered {}", i + 1, t.number));
            }
            if !t.ok {
                p.push(format!(
                    "not ok {} - {}{}",
                    t.number,
                    t.name,
                    t.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default()
                ));
            }
        }
        p
    }
}

fn parse_bench(rest: &str) -> Option<Bench> {
    let mut words = rest.split_whitespace();
    let name = words.next()?.to_string();
    let (mut fields, mut labels) = (Vec::new(), Vec::new());
    for (k, v) in words.filter_map(|w| w.split_once('=')) {
        match v.parse::<f64>() {
            Ok(n) => fields.push((k.to_string(), n)),
            Err(_) => labels.push((k.to_string(), v.to_string())),
        }
    }
    Some(Bench { name, fields, labels })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
(XEN) noise before
TAP version 14
# platform: kvm  backend: native  boot: pvh v1  hv: \"KVMKVMKVM\"  mem: 127 MiB
1..3
ok 1 - boot.start_info
not ok 2 - mem.heap
  ---
  message: \"heap leaked 8 bytes\"
  ...
ok 3 - cpu.msr # SKIP x2APIC enabled
# bench irq.disable impl=native-inline iters=1000 cycles_per_op=3.5 exits=0
";

    #[test]
    fn parses_points_plan_and_diagnostics() {
        let r = TapReport::parse(SAMPLE);
        assert_eq!(r.version, Some(14));
        assert_eq!(r.plan, Some(3));
        assert_eq!(r.tests.len(), 3);
        assert_eq!(r.passed(), 1);
        assert_eq!(r.failed(), 1);
        assert_eq!(r.skipped(), 1);
        assert_eq!(r.tests[1].message.as_deref(), Some("heap leaked 8 bytes"));
        assert_eq!(r.tests[2].skip.as_deref(), Some("x2APIC enabled"));
        assert_eq!(r.platform_field("platform").as_deref(), Some("kvm"));
        assert_eq!(r.platform_field("backend").as_deref(), Some("native"));
        assert_eq!(r.platform_field("hv").as_deref(), Some("KVMKVMKVM"));
        assert_eq!(r.benches[0].name, "irq.disable");
        assert_eq!(r.benches[0].fields[1], ("cycles_per_op".to_string(), 3.5));
        assert_eq!(r.benches[0].labels, [("impl".to_string(), "native-inline".to_string())]);
        assert!(!r.is_success());
        assert!(r.problems().iter().any(|p| p.contains("heap leaked")));
    }

    #[test]
    fn success_needs_plan_and_every_point() {
        let ok = "TAP version 14\n1..2\nok 1 - a\nok 2 - b\n";
        assert!(TapReport::parse(ok).is_success());
        let short = "TAP version 14\n1..3\nok 1 - a\nok 2 - b\n";
        assert!(!TapReport::parse(short).is_success());
        let bail = "TAP version 14\n1..2\nok 1 - a\nBail out! #PF\n";
        let r = TapReport::parse(bail);
        assert_eq!(r.bail_out.as_deref(), Some("#PF"));
        assert!(!r.is_success());
        assert!(!TapReport::parse("").is_success());
    }
}
