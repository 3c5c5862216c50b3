//! `pvlab report`: one self-contained HTML page from a [`Results`] — inline CSS
//! and inline SVG only: no script, no font, nothing fetched. Its sections: the
//! platforms; the platform × test matrix; per-op cost (`pvlab bench`'s tables
//! in [`Results::bench`], with a chart); boot time per platform; what the PV
//! features save (lazy MMU batching, the paravirtual clock against the PIT); the
//! op → implementation map.
//!
//! Every number on the page has a machine-readable twin: the element showing it
//! carries `data-key` (stable, below) and `data-value` (the number as the
//! results hold it, in full precision), so a tool can read the page as data:
//!
//! | key | value |
//! | --- | --- |
//! | `generated_unix`, `version` | the run's |
//! | `platform/<p>/cpus`, `platform/<p>/mem_mib` | what the platform gave |
//! | `count/<p>/passed`, `.../failed`, `.../skipped` | test points |
//! | `pass/<p>/<test>` | 1 passed, 0 skipped or failed (`data-status` says which) |
//! | `boot/<p>/first_line_ms`, `.../exit_ms`, `.../clock_drift_percent` | the boot's |
//! | `bench/<p>/<op>/<insns\|exits\|cycles>/<raw\|patched\|unpatched>` | [`OpCost`] |
//! | `bench/<p>/<op>/loop_cycles` | [`OpCost::loop_cycles`] |
//! | `lazy/<p>/writes`, `.../unbatched`, `.../batched`, `.../fewer`, `.../exits_unbatched` | the boot's `lazy mmu:` line |
//! | `clock/<p>/<boot\|bench>/<time.clock_ns\|pit.read>/<field>` | those `# bench` lines, from the matrix boot or `pvlab bench` |

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use crate::bench::{OpCost, PlatformBench};
use crate::results::{BootResult, PlatformResult, Results};
use crate::tap::Bench;
use crate::LabError;

/// Runs `pvlab bench`, with its defaults, on its default platforms present here.
pub fn bench_default_platforms(kernel: &Path) -> Result<Vec<PlatformBench>, crate::LabError> {
    let platforms = crate::bench::default_platforms()?;
    Ok(crate::bench::measure_present(
        &platforms,
        kernel,
        crate::bench::DEFAULT_ITERS,
        crate::bench::DEFAULT_REPS,
    ))
}

/// Keeps only the platforms named (all when `names` is empty), in the matrix and
/// in the bench tables.
pub fn select(mut results: Results, names: &[String]) -> Results {
    if !names.is_empty() {
        results.platforms.retain(|p| names.contains(&p.name));
        results.bench.retain(|b| names.contains(&b.platform));
    }
    results
}

/// Renders `results` and writes the page to `path` (creating its directory);
/// returns its size in bytes.
pub fn write(results: &Results, path: &Path) -> Result<usize, LabError> {
    let html = render(results);
    let err = |e: std::io::Error| LabError::Output(path.display().to_string(), e.to_string());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, &html).map_err(err)?;
    Ok(html.len())
}

/// HTML-escapes text (for element content and attribute values alike).
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number for people: integers with thousands separators, others rounded.
fn human(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    let s = if v.fract() == 0.0 || a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    let (sign, rest) = s.strip_prefix('-').map_or(("", s.as_str()), |r| ("-", r));
    let (int, frac) = rest.split_once('.').map_or((rest, None), |(i, f)| (i, Some(f)));
    let mut grouped = String::new();
    for (i, ch) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(ch);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

/// ` data-key="…" data-value="…"`: a number's machine-readable twin.
fn twin(key: &str, v: f64) -> String {
    format!(" data-key=\"{}\" data-value=\"{v}\"", escape(key))
}

/// A numeric table cell (a dash when there is no value).
fn td_num(key: &str, v: Option<f64>, unit: &str) -> String {
    match v {
        Some(v) => format!("<td class=\"n\"{}>{}{}</td>", twin(key, v), human(v), unit),
        None => "<td class=\"n none\">–</td>".to_string(),
    }
}

/// `YYYY-MM-DD HH:MM UTC` (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

const CSS: &str = "\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Helvetica Neue',Arial,sans-serif;\
margin:24px 32px;color:#1f2328;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:32px 0 8px;border-bottom:1px solid #d0d7de;\
padding-bottom:4px}h3{font-size:16px;margin:20px 0 6px}
p.sub,p.note{color:#57606a;margin:4px 0}nav a{margin-right:14px;color:#0969da;text-decoration:none}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
table{border-collapse:collapse;margin:8px 0 14px}th,td{border:1px solid #d0d7de;padding:3px 7px;\
vertical-align:top}th{background:#f6f8fa;text-align:left}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}td.none{color:#8c959f}
table.m td.c{text-align:center;padding:1px 0;min-width:22px}table.m th.t{font-weight:normal;\
font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12.5px;white-space:nowrap}
th.v{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;padding:6px 2px;\
text-align:left}
.pass{background:#dafbe1;color:#1a7f37}.skip{background:#eaeef2;color:#6e7781}\
.fail{background:#ffcecb;color:#cf222e;font-weight:bold}.absent{background:#fafbfc}
.v-passed{color:#1a7f37;font-weight:bold}.v-failed{color:#cf222e;font-weight:bold}.v-skipped{color:#6e7781}
ul.problems li{color:#cf222e}div.wide{overflow-x:auto}table.ops td{white-space:nowrap;padding:1px 5px}
svg.chart{display:block;max-width:100%;height:auto;margin:6px 0 16px}
svg.chart text{font:12px system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;fill:#1f2328}
svg.chart text.cap{font-weight:bold;font-size:13px}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;border-radius:3px}
";

/// Bar colours of a chart's series.
const SERIES_COLORS: &[&str] = &["#4c78a8", "#f58518", "#b279a2", "#54a24b", "#e45756"];

/// One bar: its value (none: a dash) and its key.
struct BarValue {
    key: String,
    value: Option<f64>,
}

/// A labelled group of bars, one per series.
struct BarGroup {
    label: String,
    bars: Vec<BarValue>,
}

const CHART_W: f64 = 1100.0;
const LABEL_W: f64 = 270.0;
const BARS_W: f64 = 600.0;
const BAR_H: f64 = 13.0;

/// A horizontal bar chart: groups down the page, one bar per series in each,
/// lengths proportional to the largest value, each bar labelled with its value.
fn bar_chart(caption: &str, unit: &str, series: &[&str], groups: &[BarGroup]) -> String {
    let max = groups.iter().flat_map(|g| &g.bars).filter_map(|b| b.value).fold(0.0_f64, f64::max);
    let per_group = series.len() as f64 * (BAR_H + 2.0) + 10.0;
    let top = 48.0;
    let height = top + per_group * groups.len() as f64 + 6.0;
    let mut s = format!(
        "<svg class=\"chart\" width=\"{CHART_W}\" height=\"{height}\" viewBox=\"0 0 {CHART_W} {height}\" \
         role=\"img\" aria-label=\"{cap}\"><title>{cap}</title>\
         <text class=\"cap\" x=\"0\" y=\"16\">{cap}</text>",
        cap = escape(caption)
    );
    let mut x = LABEL_W;
    for (i, name) in series.iter().enumerate() {
        let color = SERIES_COLORS[i % SERIES_COLORS.len()];
        let _ = write!(
            s,
            "<rect x=\"{x}\" y=\"26\" width=\"12\" height=\"12\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"36\">{}</text>",
            x + 16.0,
            escape(name)
        );
        x += 16.0 + 8.0 * name.chars().count() as f64 + 24.0;
    }
    for (gi, g) in groups.iter().enumerate() {
        let y0 = top + per_group * gi as f64;
        let mid = y0 + series.len() as f64 * (BAR_H + 2.0) / 2.0 + 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{mid}\" text-anchor=\"end\">{}</text>",
            LABEL_W - 8.0,
            escape(&g.label)
        );
        for (bi, bar) in g.bars.iter().enumerate() {
            let y = y0 + bi as f64 * (BAR_H + 2.0);
            let color = SERIES_COLORS[bi % SERIES_COLORS.len()];
            let ty = y + BAR_H - 2.5;
            match bar.value {
                Some(v) => {
                    let w = if max > 0.0 && v > 0.0 { (v / max * BARS_W).max(1.0) } else { 0.0 };
                    let _ = write!(
                        s,
                        "<rect x=\"{LABEL_W}\" y=\"{y}\" width=\"{w:.1}\" height=\"{BAR_H}\" fill=\"{color}\"/>\
                         <text x=\"{:.1}\" y=\"{ty}\"{}>{} {}</text>",
                        LABEL_W + w + 5.0,
                        twin(&bar.key, v),
                        human(v),
                        escape(unit)
                    );
                }
                None => {
                    let _ = write!(s, "<text x=\"{}\" y=\"{ty}\" fill=\"#8c959f\">–</text>", LABEL_W + 5.0);
                }
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

/// Tests in suite order: each platform's order, merged.
fn test_order(platforms: &[PlatformResult]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for b in platforms.iter().filter_map(|p| p.boot.as_ref()) {
        let mut pos = 0;
        for t in &b.tests {
            match order.iter().position(|x| *x == t.name) {
                Some(i) => pos = i + 1,
                None => {
                    order.insert(pos, t.name.clone());
                    pos += 1;
                }
            }
        }
    }
    order
}

fn header(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "<header><h1>pvlab report</h1><p class=\"sub\">generated <span{}>{}</span> · kernel <code>{}</code> · \
         schema <code>{}</code> version <span{}>{}</span></p>\
         <nav><a href=\"#platforms\">Platforms</a><a href=\"#matrix\">Test matrix</a>\
         <a href=\"#bench\">Per-op cost</a><a href=\"#boot\">Boot time</a>\
         <a href=\"#pv\">What PV saves</a><a href=\"#ops\">Op implementations</a></nav></header>",
        twin("generated_unix", r.generated_unix as f64),
        utc(r.generated_unix),
        escape(&r.kernel),
        escape(&r.schema),
        twin("version", f64::from(r.version)),
        r.version
    );
}

fn counts(b: &BootResult) -> [f64; 3] {
    let passed = b.tests.iter().filter(|t| t.ok && t.skip.is_none()).count();
    let failed = b.tests.iter().filter(|t| !t.ok).count();
    let skipped = b.tests.iter().filter(|t| t.skip.is_some()).count();
    [passed as f64, failed as f64, skipped as f64]
}

fn platforms_section(s: &mut String, r: &Results) {
    s.push_str(
        "<section id=\"platforms\"><h2>Platforms</h2><table><tr><th>platform</th><th>launcher</th>\
         <th>verdict</th><th>backend</th><th>CPUs</th><th>memory</th><th>passed</th><th>failed</th>\
         <th>skipped</th><th>first TAP line</th><th>exit</th><th>guest clock vs host</th></tr>\n",
    );
    for p in &r.platforms {
        let n = escape(&p.name);
        let _ = write!(
            s,
            "<tr><th>{n}</th><td><code>{}</code></td><td class=\"v-{}\">{}</td>",
            escape(&p.launcher),
            escape(&p.verdict),
            escape(&p.verdict)
        );
        let backend = p.boot.as_ref().and_then(|b| b.platform_line.get("backend"));
        let _ = write!(s, "<td>{}</td>", backend.map_or("–".to_string(), |b| escape(b)));
        s.push_str(&td_num(&format!("platform/{}/cpus", p.name), Some(f64::from(p.cpus)), ""));
        s.push_str(&td_num(&format!("platform/{}/mem_mib", p.name), Some(f64::from(p.mem_mib)), " MiB"));
        match &p.boot {
            Some(b) => {
                let c = counts(b);
                for (what, v) in ["passed", "failed", "skipped"].iter().zip(c) {
                    s.push_str(&td_num(&format!("count/{}/{what}", p.name), Some(v), ""));
                }
                s.push_str(&td_num(&format!("boot/{}/first_line_ms", p.name), b.first_line_ms, " ms"));
                s.push_str(&td_num(&format!("boot/{}/exit_ms", p.name), Some(b.exit_ms), " ms"));
                s.push_str(&td_num(
                    &format!("boot/{}/clock_drift_percent", p.name),
                    b.clock_drift_percent,
                    " %",
                ));
            }
            None => {
                let why = p.skip_reason.as_deref().unwrap_or("did not boot");
                let _ = write!(s, "<td colspan=\"6\" class=\"none\">{}</td>", escape(why));
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    let failed: Vec<&PlatformResult> = r.platforms.iter().filter(|p| !p.problems.is_empty()).collect();
    if !failed.is_empty() {
        s.push_str("<h3>Problems</h3><ul class=\"problems\">");
        for p in failed {
            for problem in &p.problems {
                let _ = write!(s, "<li><b>{}</b>: {}</li>", escape(&p.name), escape(problem));
            }
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</section>\n");
}

fn matrix_section(s: &mut String, r: &Results) {
    s.push_str(
        "<section id=\"matrix\"><h2>Test matrix</h2><p class=\"note legend\">\
         <span class=\"pass\">✓ passed</span><span class=\"skip\">– skipped (hover: why)</span>\
         <span class=\"fail\">✗ failed (hover: the message)</span>\
         <span class=\"absent\">· not run</span></p>\n",
    );
    let skipped: Vec<&PlatformResult> = r.platforms.iter().filter(|p| p.boot.is_none()).collect();
    if !skipped.is_empty() {
        s.push_str("<p class=\"note\">Not booted:</p><ul>");
        for p in skipped {
            let why = p.skip_reason.clone().unwrap_or_else(|| p.problems.join("; "));
            let _ =
                write!(s, "<li><b>{}</b> ({}): {}</li>", escape(&p.name), escape(&p.verdict), escape(&why));
        }
        s.push_str("</ul>\n");
    }
    s.push_str("<table class=\"m\"><tr><th>test</th>");
    for p in &r.platforms {
        let title = match (&p.boot, &p.skip_reason) {
            (None, Some(why)) => format!("skipped: {why}"),
            _ => p.verdict.clone(),
        };
        let _ = write!(s, "<th class=\"v\" title=\"{}\">{}</th>", escape(&title), escape(&p.name));
    }
    s.push_str("</tr>\n");
    let mut failures = Vec::new();
    for test in test_order(&r.platforms) {
        let _ = write!(s, "<tr><th class=\"t\">{}</th>", escape(&test));
        for p in &r.platforms {
            let point = p.boot.as_ref().and_then(|b| b.tests.iter().find(|t| t.name == test));
            let Some(t) = point else {
                let why = p.skip_reason.as_deref().unwrap_or("not run");
                let _ = write!(s, "<td class=\"c absent\" title=\"{}\">·</td>", escape(why));
                continue;
            };
            let key = format!("pass/{}/{}", p.name, test);
            let (class, mark, title, v) = match (&t.skip, t.ok) {
                (Some(why), _) => ("skip", "–", format!("SKIP: {why}"), 0.0),
                (None, true) => ("pass", "✓", "passed".to_string(), 1.0),
                (None, false) => {
                    let msg = t.message.clone().unwrap_or_else(|| "not ok".into());
                    failures.push((p.name.clone(), test.clone(), msg.clone()));
                    ("fail", "✗", format!("not ok: {msg}"), 0.0)
                }
            };
            let _ = write!(
                s,
                "<td class=\"c {class}\" data-status=\"{class}\" title=\"{}\"{}>{mark}</td>",
                escape(&title),
                twin(&key, v)
            );
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    if !failures.is_empty() {
        s.push_str("<h3>Failed tests</h3><ul class=\"problems\">");
        for (p, t, msg) in failures {
            let _ = write!(s, "<li><b>{}</b> <code>{}</code>: {}</li>", escape(&p), escape(&t), escape(&msg));
        }
        s.push_str("</ul>\n");
    }
    s.push_str("</section>\n");
}

const FORMS: [&str; 3] = ["raw", "patched", "unpatched"];

fn bench_section(s: &mut String, r: &Results) {
    s.push_str(
        "<section id=\"bench\"><h2>Per-op cost</h2><p class=\"note\">From <code>pvlab bench</code>, per \
         iteration of a loop around the op: (raw) the native instruction, (patched) the patched call \
         site, (unpatched) the indirect call with <code>pv.patch=off</code>. Where pvrun's exact \
         counters exist: instructions (the empty loop's subtracted) and exits; elsewhere TSC cycles, \
         loop included.</p>\n",
    );
    if r.bench.is_empty() {
        s.push_str(
            "<p class=\"note\">No benchmark in these results (run without <code>--no-bench</code>).</p>\n",
        );
    }
    for p in &r.bench {
        let exact = p.ops.iter().any(|o| o.insns[0].is_some());
        let name = escape(&p.platform);
        let key =
            |o: &OpCost, metric: &str, form: &str| format!("bench/{}/{}/{metric}/{form}", p.platform, o.op);
        if exact {
            let _ = writeln!(
                s,
                "<h3>{name}: exact counters</h3><table><tr><th rowspan=\"2\">op</th><th rowspan=\"2\">\
                 implementation</th><th colspan=\"3\">instructions</th><th colspan=\"3\">exits</th></tr>\
                 <tr><th>raw</th><th>patched</th><th>unpatched</th><th>raw</th><th>patched</th>\
                 <th>unpatched</th></tr>"
            );
        } else {
            let _ = writeln!(
                s,
                "<h3>{name}: cycles</h3><table><tr><th rowspan=\"2\">op</th><th rowspan=\"2\">\
                 implementation</th><th colspan=\"3\">cycles</th><th rowspan=\"2\">empty loop</th></tr>\
                 <tr><th>raw</th><th>patched</th><th>unpatched</th></tr>"
            );
        }
        for o in &p.ops {
            let _ = write!(
                s,
                "<tr><th><code>{}</code></th><td>{}</td>",
                escape(&o.op),
                escape(&o.implementation)
            );
            if exact {
                for (metric, values) in [("insns", &o.insns), ("exits", &o.exits)] {
                    for (form, v) in FORMS.iter().zip(values) {
                        s.push_str(&td_num(&key(o, metric, form), *v, ""));
                    }
                }
            } else {
                for (form, v) in FORMS.iter().zip(&o.cycles) {
                    s.push_str(&td_num(&key(o, "cycles", form), *v, ""));
                }
                s.push_str(&td_num(&format!("bench/{}/{}/loop_cycles", p.platform, o.op), o.loop_cycles, ""));
            }
            s.push_str("</tr>\n");
        }
        s.push_str("</table>\n");
        let (metric, unit) = if exact { ("insns", "insns") } else { ("cycles", "cycles") };
        let groups: Vec<BarGroup> = p
            .ops
            .iter()
            .map(|o| {
                let values = if exact { &o.insns } else { &o.cycles };
                BarGroup {
                    label: o.op.clone(),
                    bars: FORMS
                        .iter()
                        .zip(values)
                        .map(|(form, v)| BarValue { key: key(o, metric, form), value: *v })
                        .collect(),
                }
            })
            .collect();
        let caption = format!("{}: {} per op, patched site vs raw instruction", p.platform, unit);
        s.push_str(&bar_chart(&caption, unit, &["raw", "patched", "unpatched (indirect call)"], &groups));
    }
    s.push_str("</section>\n");
}

fn boot_section(s: &mut String, r: &Results) {
    s.push_str(
        "<section id=\"boot\"><h2>Boot time</h2><p class=\"note\">Launch → the kernel's first TAP \
         line → the launcher's exit, per platform (the whole suite ran in between).</p>\n",
    );
    let booted: Vec<(&PlatformResult, &BootResult)> =
        r.platforms.iter().filter_map(|p| Some((p, p.boot.as_ref()?))).collect();
    if booted.is_empty() {
        s.push_str("<p class=\"note\">No platform booted.</p></section>\n");
        return;
    }
    let max = booted.iter().map(|(_, b)| b.exit_ms.max(b.first_line_ms.unwrap_or(0.0))).fold(0.0, f64::max);
    // Narrower than the other charts: the labels are longer.
    let scale = |ms: f64| if max > 0.0 { ms.max(0.0) / max * (BARS_W - 80.0) } else { 0.0 };
    let row_h = 22.0;
    let top = 48.0;
    let height = top + row_h * booted.len() as f64 + 6.0;
    let caption = "Boot time: launch → first TAP line → exit";
    let _ = write!(
        s,
        "<svg class=\"chart\" width=\"{CHART_W}\" height=\"{height}\" viewBox=\"0 0 {CHART_W} {height}\" \
         role=\"img\" aria-label=\"{caption}\"><title>{caption}</title>\
         <text class=\"cap\" x=\"0\" y=\"16\">{caption}</text>\
         <rect x=\"{LABEL_W}\" y=\"26\" width=\"12\" height=\"12\" fill=\"{a}\"/>\
         <text x=\"{}\" y=\"36\">launch → first TAP line</text>\
         <rect x=\"{}\" y=\"26\" width=\"12\" height=\"12\" fill=\"{b}\"/>\
         <text x=\"{}\" y=\"36\">first TAP line → exit</text>",
        LABEL_W + 16.0,
        LABEL_W + 200.0,
        LABEL_W + 216.0,
        a = SERIES_COLORS[0],
        b = SERIES_COLORS[1],
    );
    for (i, (p, b)) in booted.iter().enumerate() {
        let y = top + row_h * i as f64;
        let first = b.first_line_ms.unwrap_or(b.exit_ms).min(b.exit_ms);
        let w1 = scale(first);
        let w2 = (scale(b.exit_ms) - w1).max(0.0);
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\
             <rect x=\"{LABEL_W}\" y=\"{y}\" width=\"{w1:.1}\" height=\"16\" fill=\"{}\"/>\
             <rect x=\"{:.1}\" y=\"{y}\" width=\"{w2:.1}\" height=\"16\" fill=\"{}\"/>",
            LABEL_W - 8.0,
            y + 12.0,
            escape(&p.name),
            SERIES_COLORS[0],
            LABEL_W + w1,
            SERIES_COLORS[1]
        );
        let first_text = match b.first_line_ms {
            Some(ms) => format!(
                "first line <tspan{}>{} ms</tspan>",
                twin(&format!("boot/{}/first_line_ms", p.name), ms),
                human(ms)
            ),
            None => "no TAP line".to_string(),
        };
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{}\">{first_text} · exit <tspan{}>{} ms</tspan></text>",
            LABEL_W + w1 + w2 + 6.0,
            y + 12.0,
            twin(&format!("boot/{}/exit_ms", p.name), b.exit_ms),
            human(b.exit_ms)
        );
    }
    s.push_str("</svg>\n</section>\n");
}

/// A boot's `lazy mmu: N PTE writes: …` line, parsed.
#[derive(Default)]
struct Lazy {
    writes: Option<f64>,
    unbatched: Option<f64>,
    batched: Option<f64>,
    fewer: Option<f64>,
    exits_unbatched: Option<f64>,
    note: String,
}

fn parse_lazy(b: &BootResult) -> Option<Lazy> {
    let rest = b.diagnostics.iter().find_map(|d| d.strip_prefix("lazy mmu: "))?;
    let mut l = Lazy::default();
    let tail = match rest.split_once(" PTE writes: ") {
        Some((n, tail)) => {
            l.writes = n.trim().parse().ok();
            tail
        }
        None => rest,
    };
    // `U hypercalls unbatched, B batched (Rx fewer)`
    if let Some((u, after)) = tail.split_once(" hypercalls unbatched, ") {
        l.unbatched = u.trim().parse().ok();
        if let Some((bt, after)) = after.split_once(" batched") {
            l.batched = bt.trim().parse().ok();
            l.fewer = after
                .trim()
                .strip_prefix('(')
                .and_then(|x| x.split_once("x fewer"))
                .and_then(|(r, _)| r.trim().parse().ok());
        }
    } else if let Some((e, note)) = tail.split_once(" exits unbatched") {
        // `E exits unbatched: why`
        l.exits_unbatched = e.trim().parse().ok();
        l.note = note.trim_start_matches(':').trim().to_string();
    } else {
        l.note = tail.to_string();
    }
    Some(l)
}

/// The `# bench` lines of the clock comparison.
const CLOCK_BENCHES: [&str; 2] = ["time.clock_ns", "pit.read"];

fn bench_field(b: &Bench, key: &str) -> Option<f64> {
    b.fields.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn label<'a>(b: &'a Bench, key: &str) -> Option<&'a str> {
    b.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn clock_name(imp: &str) -> String {
    match imp {
        "kvm" => "kvmclock".into(),
        "xen" => "Xen pvclock".into(),
        "native" => "TSC (native)".into(),
        other => other.to_string(),
    }
}

fn pv_section(s: &mut String, r: &Results) {
    s.push_str(
        "<section id=\"pv\"><h2>What the PV features save</h2><h3>Lazy MMU: batched page-table \
         updates</h3><p class=\"note\">The suite writes the same page-table entries unbatched, then \
         in one lazy-MMU batch, and compares the tables; where the backend counts them it reports the \
         hypercalls each way.</p>\n<table><tr><th>platform</th><th>PTE writes</th><th>hypercalls \
         unbatched</th><th>batched</th><th>fewer</th><th>note</th></tr>\n",
    );
    let mut groups = Vec::new();
    for p in &r.platforms {
        let Some(l) = p.boot.as_ref().and_then(parse_lazy) else { continue };
        let k = |what: &str| format!("lazy/{}/{what}", p.name);
        let _ = write!(s, "<tr><th>{}</th>", escape(&p.name));
        s.push_str(&td_num(&k("writes"), l.writes, ""));
        match l.exits_unbatched {
            Some(e) => s.push_str(&td_num(&k("exits_unbatched"), Some(e), " exits")),
            None => s.push_str(&td_num(&k("unbatched"), l.unbatched, "")),
        }
        s.push_str(&td_num(&k("batched"), l.batched, ""));
        s.push_str(&td_num(&k("fewer"), l.fewer, "×"));
        let _ = writeln!(s, "<td>{}</td></tr>", escape(&l.note));
        if l.unbatched.is_some() || l.batched.is_some() {
            groups.push(BarGroup {
                label: p.name.clone(),
                bars: vec![
                    BarValue { key: k("unbatched"), value: l.unbatched },
                    BarValue { key: k("batched"), value: l.batched },
                ],
            });
        }
    }
    s.push_str("</table>\n");
    if groups.is_empty() {
        s.push_str("<p class=\"note\">No platform here counts its page-table hypercalls (Xen PV and pvrun's lguest and VMI personalities do).</p>\n");
    } else {
        s.push_str(&bar_chart(
            "Lazy MMU: hypercalls for the same page-table writes",
            "hypercalls",
            &["unbatched", "batched"],
            &groups,
        ));
    }

    s.push_str(
        "<h3>Paravirtual clock vs the PIT</h3><p class=\"note\">Cycles per read of the kernel's \
         clock (<code>time.clock_ns</code>: kvmclock, Xen's pvclock or the TSC) against reading the \
         legacy PIT (<code>pit.read</code>), from <code>bench.clock_sources_and_latencies</code> in \
         the matrix boot and from <code>pvlab bench</code>.</p>\n<table><tr><th>platform</th>\
         <th>from</th><th>clock</th><th>clock cycles</th><th>PIT cycles</th><th>clock insns</th>\
         <th>PIT insns</th></tr>\n",
    );
    let mut sources: Vec<(&str, &str, &[Bench])> = Vec::new();
    for p in &r.platforms {
        if let Some(b) = &p.boot {
            sources.push((p.name.as_str(), "boot", &b.benches));
        }
    }
    for p in &r.bench {
        sources.push((p.platform.as_str(), "bench", &p.other));
    }
    let mut groups = Vec::new();
    for (platform, from, benches) in sources {
        let find = |n: &str| benches.iter().find(|b| b.name == n);
        let (Some(clock), Some(pit)) = (find(CLOCK_BENCHES[0]), find(CLOCK_BENCHES[1])) else { continue };
        let k = |b: &Bench, f: &str| format!("clock/{platform}/{from}/{}/{f}", b.name);
        let imp = clock_name(label(clock, "impl").unwrap_or("?"));
        let _ = write!(
            s,
            "<tr><th>{}</th><td>{}</td><td>{}</td>",
            escape(platform),
            if from == "boot" { "matrix boot" } else { "pvlab bench" },
            escape(&imp)
        );
        for (b, f) in [(clock, "cycles"), (pit, "cycles"), (clock, "insns"), (pit, "insns")] {
            s.push_str(&td_num(&k(b, f), bench_field(b, f), ""));
        }
        s.push_str("</tr>\n");
        groups.push(BarGroup {
            label: format!("{platform} ({}, {imp})", if from == "boot" { "boot" } else { "bench" }),
            bars: [clock, pit]
                .iter()
                .map(|b| BarValue { key: k(b, "cycles"), value: bench_field(b, "cycles") })
                .collect(),
        });
    }
    s.push_str("</table>\n");
    if groups.is_empty() {
        s.push_str("<p class=\"note\">No clock benchmark in these results.</p>\n");
    } else {
        s.push_str(&bar_chart(
            "Cycles per clock read: the kernel's clock vs the PIT",
            "cycles",
            &["time.clock_ns", "pit.read"],
            &groups,
        ));
    }
    s.push_str("</section>\n");
}

/// Soft background colours for the implementations in the op map.
const IMPL_COLORS: &[&str] = &[
    "#dbeafe", "#dcfce7", "#fef3c7", "#fce7f3", "#e0e7ff", "#ccfbf1", "#fee2e2", "#f3e8ff", "#ecfccb",
    "#ffedd5", "#e5e7eb", "#cffafe",
];

fn ops_section(s: &mut String, r: &Results) {
    s.push_str(
        "<section id=\"ops\"><h2>Op implementations</h2><p class=\"note\">What each paravirt op \
         was bound to after probing and patching (the kernel's <code># op</code> lines). Platforms \
         whose maps are identical share a column.</p>\n",
    );
    // Columns: the booted platforms, those with the same map together.
    let mut columns: Vec<(Vec<&str>, &BTreeMap<String, String>)> = Vec::new();
    for p in &r.platforms {
        let Some(b) = &p.boot else { continue };
        match columns.iter_mut().find(|(_, ops)| **ops == b.ops) {
            Some((names, _)) => names.push(&p.name),
            None => columns.push((vec![&p.name], &b.ops)),
        }
    }
    let ops: BTreeSet<&String> = columns.iter().flat_map(|(_, ops)| ops.keys()).collect();
    if ops.is_empty() {
        s.push_str("<p class=\"note\">No <code># op</code> lines in these results.</p></section>\n");
        return;
    }
    let impls: Vec<&String> =
        columns.iter().flat_map(|(_, ops)| ops.values()).collect::<BTreeSet<_>>().into_iter().collect();
    let color = |imp: &str| {
        let i = impls.iter().position(|x| x.as_str() == imp).unwrap_or(0);
        IMPL_COLORS[i % IMPL_COLORS.len()]
    };
    s.push_str("<div class=\"wide\"><table class=\"m ops\"><tr><th>op</th>");
    for (names, _) in &columns {
        let names: Vec<String> = names.iter().map(|n| escape(n)).collect();
        let _ = write!(s, "<th class=\"v\">{}</th>", names.join("<br>"));
    }
    s.push_str("</tr>\n");
    for op in ops {
        let _ = write!(s, "<tr><th class=\"t\">{}</th>", escape(op));
        for (_, map) in &columns {
            match map.get(op) {
                Some(imp) => {
                    let _ = write!(
                        s,
                        "<td style=\"background:{}\"><code>{}</code></td>",
                        color(imp),
                        escape(imp)
                    );
                }
                None => s.push_str("<td class=\"none\">–</td>"),
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table></div>\n</section>\n");
}

/// The report: one self-contained HTML page (see the module documentation).
pub fn render(results: &Results) -> String {
    let mut s = String::with_capacity(64 * 1024);
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>pvlab report</title><style>\n{CSS}</style></head>\n<body>\n"
    );
    header(&mut s, results);
    platforms_section(&mut s, results);
    matrix_section(&mut s, results);
    bench_section(&mut s, results);
    boot_section(&mut s, results);
    pv_section(&mut s, results);
    ops_section(&mut s, results);
    s.push_str("</body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_for_people() {
        assert_eq!(human(8210.0), "8,210");
        assert_eq!(human(1234567.0), "1,234,567");
        assert_eq!(human(84.51904), "84.5");
        assert_eq!(human(8033.357), "8,033");
        assert_eq!(human(-7.8), "-7.8");
        assert_eq!(human(0.06), "0.06");
        assert_eq!(human(0.0), "0");
    }

    #[test]
    fn dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_796_297_726), "2026-12-03 11:35 UTC");
    }

    #[test]
    fn escapes() {
        assert_eq!(escape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }
}
