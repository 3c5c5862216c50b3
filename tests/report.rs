//! `pvlab report`'s page, rendered from a small real matrix run: it is
//! self-contained, every number on it has a `data-key`/`data-value` twin equal to
//! the number in the results, and a real browser (headless chromium) draws it and
//! sees the same numbers. A platform or a browser this machine lacks prints a
//! loud SKIP line and that part is left out.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use pvlab::platform::{self, Platform};
use pvlab::results::{BootResult, PlatformResult, Results};
use pvlab::tap::Bench;

/// Straight to stderr, past the harness's capture: a skip is never silent.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

fn available(name: &str) -> Option<&'static Platform> {
    let p = platform::by_name(name).expect("known platform");
    match p.availability() {
        Ok(()) => Some(p),
        Err(why) => {
            say(&format!("SKIP: {name}: {why}"));
            None
        }
    }
}

/// A small real run, booted once for every test here: the matrix on
/// qemu-tcg-microvm, pvrun-kvm and pvrun-lguest (those present; an absent one
/// becomes a skipped row), and `pvlab bench` with few iterations on
/// qemu-tcg-icount (cycles) and pvrun-kvm (exact counters).
fn real() -> &'static Results {
    static RESULTS: OnceLock<Results> = OnceLock::new();
    RESULTS.get_or_init(|| {
        let kernel = pvlab::build::kernel().expect("kernel builds");
        let names = ["qemu-tcg-microvm", "pvrun-kvm", "pvrun-lguest"];
        let platforms: Vec<&'static Platform> = names
            .iter()
            .map(|n| {
                let p = platform::by_name(n).expect("known platform");
                if let Err(why) = p.availability() {
                    say(&format!("SKIP: {n}: {why} (a skipped column in the report)"));
                }
                p
            })
            .collect();
        let rows = pvlab::matrix::run(&platforms, &kernel, "", false);
        let mut bench = Vec::new();
        for name in ["qemu-tcg-icount", "pvrun-kvm"] {
            if let Some(p) = available(name) {
                bench.push(pvlab::bench::measure(p, &kernel, 50, 1).expect("bench boots"));
            }
        }
        let r = Results::new(&kernel, &rows, bench);
        let booted = r.platforms.iter().filter_map(|p| p.boot.as_ref()).filter(|b| !b.tests.is_empty());
        assert!(booted.count() >= 1, "no platform booted: {:#?}", r.platforms);
        r
    })
}

/// The real run plus two made-up rows that take the other paths: a failed
/// platform (a test failed with a message full of markup, a lazy-MMU line with
/// hypercall counts) and a skipped one (a reason full of markup).
fn with_made_up_rows() -> Results {
    let mut r = real().clone();
    let model = r.platforms.iter().find(|p| p.boot.is_some()).expect("a booted platform").clone();
    let mut failed = PlatformResult { name: "made-up-failed".into(), verdict: "failed".into(), ..model };
    let boot = failed.boot.as_mut().expect("boot");
    let t = &mut boot.tests[1];
    t.ok = false;
    t.skip = None;
    t.message = Some("<b>bad</b> & \"worse\" 'quoted'".into());
    failed.problems = vec![format!("not ok 2 - {}: <b>bad</b>", t.name)];
    boot.diagnostics.retain(|d| !d.starts_with("lazy mmu:"));
    boot.diagnostics
        .push("lazy mmu: 4096 PTE writes: 8210 hypercalls unbatched, 24 batched (342x fewer)".into());
    let mut skipped = PlatformResult {
        name: "made-up-absent".into(),
        verdict: "skipped".into(),
        skip_reason: Some("no \"such\" <hypervisor> & never".into()),
        boot: None,
        problems: Vec::new(),
        ..failed.clone()
    };
    skipped.cpus = 3;
    r.platforms.push(failed);
    r.platforms.push(skipped);
    r
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// Every `data-key="…" data-value="…"` pair, in page order.
fn twins(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("data-key=\"") {
        rest = &rest[i + "data-key=\"".len()..];
        let end = rest.find('"').expect("data-key closed");
        let key = unescape(&rest[..end]);
        rest = rest[end + 1..]
            .strip_prefix(" data-value=\"")
            .unwrap_or_else(|| panic!("{key}: no data-value right after data-key"));
        let end = rest.find('"').expect("data-value closed");
        out.push((key, unescape(&rest[..end])));
        rest = &rest[end + 1..];
    }
    out
}

fn bench_field(benches: &[Bench], name: &str, field: &str) -> Option<f64> {
    let b = benches.iter().find(|b| b.name == name)?;
    b.fields.iter().find(|(k, _)| k == field).map(|(_, v)| *v)
}

/// A number of the `lazy mmu:` line, read word by word (the page parses it its own way).
fn lazy(b: &BootResult, field: &str) -> Option<f64> {
    let line = b.diagnostics.iter().find(|d| d.starts_with("lazy mmu:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let before = |w: &str| {
        words.windows(2).find(|x| x[1] == w).and_then(|x| x[0].trim_matches(['(', 'x']).parse().ok())
    };
    match field {
        "writes" => before("PTE"),
        "unbatched" => before("hypercalls"),
        "batched" => before("batched"),
        "fewer" => before("fewer)"),
        "exits_unbatched" => before("exits"),
        _ => None,
    }
}

/// The number `key` names, looked up in the results.
fn expected(r: &Results, key: &str) -> Option<f64> {
    let platform = |name: &str| r.platforms.iter().find(|p| p.name == name);
    let boot = |name: &str| platform(name)?.boot.as_ref();
    let op = |p: &str, op: &str| r.bench.iter().find(|b| b.platform == p)?.ops.iter().find(|o| o.op == op);
    let parts: Vec<&str> = key.split('/').collect();
    match parts.as_slice() {
        ["generated_unix"] => Some(r.generated_unix as f64),
        ["version"] => Some(f64::from(r.version)),
        ["platform", p, "cpus"] => Some(f64::from(platform(p)?.cpus)),
        ["platform", p, "mem_mib"] => Some(f64::from(platform(p)?.mem_mib)),
        ["count", p, what] => {
            let tests = &boot(p)?.tests;
            let n = match *what {
                "passed" => tests.iter().filter(|t| t.ok && t.skip.is_none()).count(),
                "failed" => tests.iter().filter(|t| !t.ok).count(),
                "skipped" => tests.iter().filter(|t| t.skip.is_some()).count(),
                _ => return None,
            };
            Some(n as f64)
        }
        ["pass", p, test] => {
            let t = boot(p)?.tests.iter().find(|t| t.name == *test)?;
            Some(if t.ok && t.skip.is_none() { 1.0 } else { 0.0 })
        }
        ["boot", p, "first_line_ms"] => boot(p)?.first_line_ms,
        ["boot", p, "exit_ms"] => Some(boot(p)?.exit_ms),
        ["boot", p, "clock_drift_percent"] => boot(p)?.clock_drift_percent,
        ["bench", p, o, "loop_cycles"] => op(p, o)?.loop_cycles,
        ["bench", p, o, metric, form] => {
            let o = op(p, o)?;
            let values = match *metric {
                "insns" => o.insns,
                "exits" => o.exits,
                "cycles" => o.cycles,
                _ => return None,
            };
            values[["raw", "patched", "unpatched"].iter().position(|f| f == form)?]
        }
        ["lazy", p, field] => lazy(boot(p)?, field),
        ["clock", p, "boot", name, field] => bench_field(&boot(p)?.benches, name, field),
        ["clock", p, "bench", name, field] => {
            bench_field(&r.bench.iter().find(|b| b.platform == *p)?.other, name, field)
        }
        _ => None,
    }
}

/// Keys the page must have: each booted platform's test points, counts and
/// times, each bench figure shown, the lazy-MMU counts and clock reads present.
fn required(r: &Results) -> Vec<String> {
    let mut keys = vec!["generated_unix".to_string(), "version".to_string()];
    for p in &r.platforms {
        let n = &p.name;
        keys.push(format!("platform/{n}/cpus"));
        let Some(b) = &p.boot else { continue };
        keys.extend(["passed", "failed", "skipped"].map(|w| format!("count/{n}/{w}")));
        keys.extend(b.tests.iter().map(|t| format!("pass/{n}/{}", t.name)));
        keys.push(format!("boot/{n}/exit_ms"));
        if b.first_line_ms.is_some() {
            keys.push(format!("boot/{n}/first_line_ms"));
        }
        if lazy(b, "unbatched").is_some() {
            keys.extend(["writes", "unbatched", "batched", "fewer"].map(|w| format!("lazy/{n}/{w}")));
        }
        for name in ["time.clock_ns", "pit.read"] {
            if bench_field(&b.benches, "time.clock_ns", "cycles").is_some()
                && bench_field(&b.benches, "pit.read", "cycles").is_some()
            {
                keys.push(format!("clock/{n}/boot/{name}/cycles"));
            }
        }
    }
    for p in &r.bench {
        let exact = p.ops.iter().any(|o| o.insns[0].is_some());
        let metrics: &[&str] = if exact { &["insns", "exits"] } else { &["cycles"] };
        for o in &p.ops {
            for m in metrics {
                for (i, form) in ["raw", "patched", "unpatched"].iter().enumerate() {
                    let v = match *m {
                        "insns" => o.insns[i],
                        "exits" => o.exits[i],
                        _ => o.cycles[i],
                    };
                    if v.is_some() {
                        keys.push(format!("bench/{}/{}/{m}/{form}", p.platform, o.op));
                    }
                }
            }
        }
    }
    keys
}

/// Every twin on the page equals the results' number; every required key is there.
fn check_numbers(what: &str, html: &str, r: &Results) -> usize {
    let pairs = twins(html);
    for (key, value) in &pairs {
        let shown: f64 = value.parse().unwrap_or_else(|_| panic!("{what}: {key}: `{value}` is not a number"));
        let want = expected(r, key).unwrap_or_else(|| panic!("{what}: {key}: no such number in the results"));
        assert!(shown == want, "{what}: {key}: page says {shown}, results say {want}");
    }
    let have: std::collections::BTreeSet<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
    let missing: Vec<String> = required(r).into_iter().filter(|k| !have.contains(k.as_str())).collect();
    assert!(missing.is_empty(), "{what}: keys missing from the page: {missing:#?}");
    pairs.len()
}

fn assert_self_contained(html: &str) {
    let lower = html.to_ascii_lowercase();
    for bad in ["http://", "https://", "<script", "<link", "@import", "<iframe", "<object", "<embed", "url("]
    {
        assert!(!lower.contains(bad), "the page contains `{bad}`");
    }
    for (i, _) in lower.match_indices("src=") {
        let v = lower[i + 4..].trim_start_matches(['"', '\'']);
        assert!(v.starts_with("data:"), "the page loads `{}`", &html[i..(i + 60).min(html.len())]);
    }
    for (i, _) in lower.match_indices("href=") {
        let v = lower[i + 5..].trim_start_matches(['"', '\'']);
        assert!(v.starts_with('#'), "the page links out: `{}`", &html[i..(i + 60).min(html.len())]);
    }
}

/// A fresh directory of this test's own (the tests run at once).
fn scratch_dir(test: &str) -> PathBuf {
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pvlab-report-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

#[test]
fn page_is_self_contained_and_its_numbers_are_the_results() {
    let r = real();
    let html = pvlab::report::render(r);
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert_self_contained(&html);
    let n = check_numbers("real run", &html, r);
    assert!(n > 50, "only {n} numbers on the page");
    for section in ["id=\"matrix\"", "id=\"bench\"", "id=\"boot\"", "id=\"pv\"", "id=\"ops\""] {
        assert!(html.contains(section), "no section {section}");
    }
    assert!(html.matches("<svg").count() >= 2, "too few charts");
    if !r.bench.is_empty() {
        assert!(html.contains("patched site vs raw instruction"), "no per-op chart");
    }
    // The op map shows each booted platform's implementation of irq.disable.
    for p in r.platforms.iter().filter(|p| p.boot.is_some()) {
        let imp = &p.boot.as_ref().expect("boot").ops["irq.disable"];
        assert!(html.contains(&format!("<code>{imp}</code>")), "{}: irq.disable -> {imp} not shown", p.name);
    }
}

#[test]
fn markup_in_results_is_escaped_and_failures_and_skips_are_shown() {
    let r = with_made_up_rows();
    let html = pvlab::report::render(&r);
    assert_self_contained(&html);
    check_numbers("made-up rows", &html, &r);
    for raw in ["<b>bad</b>", "<hypervisor>", "\"such\"", "\"worse\""] {
        assert!(!html.contains(raw), "`{raw}` reached the page unescaped");
    }
    assert!(html.contains("no &quot;such&quot; &lt;hypervisor&gt; &amp; never"), "skip reason not shown");
    assert!(html.contains("not ok: &lt;b&gt;bad&lt;/b&gt; &amp; &quot;worse&quot; &#39;quoted&#39;"));
    assert!(html.contains("data-key=\"lazy/made-up-failed/unbatched\" data-value=\"8210\""));
    assert!(html.contains("data-key=\"lazy/made-up-failed/fewer\" data-value=\"342\""));
    let fail_cell = html.matches("data-status=\"fail\"").count();
    assert_eq!(fail_cell, 1, "one failed test point");
}

#[test]
fn cli_renders_an_earlier_results_json() {
    let r = real();
    let dir = scratch_dir("cli");
    let json = dir.join("results.json");
    let out = dir.join("from.html");
    r.write(&json).expect("results.json written");
    let run = Command::new(env!("CARGO_BIN_EXE_pvlab"))
        .args(["report", "--from"])
        .arg(&json)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("pvlab runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "pvlab report failed: {stdout}{}", String::from_utf8_lossy(&run.stderr));
    let page = std::fs::read_to_string(&out).expect("page written");
    assert!(stdout.contains(&out.display().to_string()), "path not printed: {stdout}");
    assert!(stdout.contains(&format!("({} bytes)", page.len())), "size not printed: {stdout}");
    // The file's numbers read back exactly (serde_json's float_roundtrip):
    // the page from the file is the page from the run.
    assert_eq!(page, pvlab::report::render(r));
    check_numbers("--from", &page, r);
    let _ = std::fs::remove_dir_all(&dir);
}

fn browser() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |d| d.join(name)))
        .find(|p| p.is_file())
}

/// Runs the browser headless on `args`; its stdout (stderr goes to a log).
fn headless(bin: &Path, dir: &Path, args: &[String]) -> String {
    let log = std::fs::File::create(dir.join("chromium.log")).expect("log");
    let mut child = Command::new(bin)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("browser starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{} {args:?}: no answer in 120 s (log: {}/chromium.log)", bin.display(), dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().expect("reader");
    assert!(status.success(), "{} {args:?}: {status} (log: {}/chromium.log)", bin.display(), dir.display());
    out
}

#[test]
fn a_real_browser_draws_the_page_and_sees_the_numbers() {
    let Some(bin) = browser() else {
        say("SKIP: report in a browser: no chromium, chromium-browser or google-chrome on PATH (scripts/setup.sh installs chromium)");
        return;
    };
    let r = with_made_up_rows();
    let dir = scratch_dir("browser");
    let page = dir.join("report.html");
    let bytes = pvlab::report::write(&r, &page).expect("page written");
    let html = std::fs::read_to_string(&page).expect("page");
    assert_eq!(bytes, html.len());
    let url = format!("file://{}", page.display());

    let shot = dir.join("report.png");
    headless(
        &bin,
        &dir,
        &[format!("--screenshot={}", shot.display()), "--window-size=1400,3000".into(), url.clone()],
    );
    let file = std::fs::File::open(&shot).expect("the screenshot exists");
    let mut reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let frame = reader.next_frame(&mut buf).expect("PNG decodes");
    assert_eq!((frame.width, frame.height), (1400, 3000));
    assert_eq!(frame.bit_depth, png::BitDepth::Eight, "8-bit screenshot");
    let channels = frame.color_type.samples();
    let pixels = &buf[..frame.buffer_size()];
    let mut colors = std::collections::HashSet::new();
    let mut not_white = 0usize;
    for px in pixels.chunks_exact(channels) {
        if px[..channels.min(3)].iter().any(|&c| c != 255) {
            not_white += 1;
        }
        if colors.len() < 1000 {
            colors.insert(px.to_vec());
        }
    }
    let total = pixels.len() / channels;
    assert!(colors.len() > 3, "the screenshot has {} colours", colors.len());
    assert!(not_white * 100 > total, "the screenshot is nearly all white ({not_white} of {total} pixels)");

    let dom = headless(&bin, &dir, &["--dump-dom".into(), url]);
    assert!(dom.contains("id=\"matrix\""), "no matrix in the DOM: {}", &dom[..dom.len().min(500)]);
    let n = check_numbers("browser DOM", &dom, &r);
    assert_eq!(n, twins(&html).len(), "the browser sees another count of numbers than the page has");
    assert!(dom.matches("<svg").count() >= 2, "the browser sees too few charts");
    say(&format!(
        "report.rs: chromium drew {} ({bytes} bytes, {n} numbers, {}{} colours)",
        page.display(),
        if colors.len() >= 1000 { "≥" } else { "" },
        colors.len()
    ));
    let _ = std::fs::remove_dir_all(&dir);
}
