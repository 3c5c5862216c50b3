//! End-to-end tests of the bench-marker port (0xf8) and `--stats`, with
//! crafted guests that print what they measured to COM1.

mod common;

use std::io;

use common::asm::{
    self, bench_in, bench_out, bench_print_result, bench_region, bench_reset_expect_magic, EXIT_NO_MAGIC,
    EXIT_NO_STATS,
};
use common::{have_kvm, kernel, parse_bench_lines, pvrun_kernel, skip, ElfSpec, Outcome};
use pvrun::VmConfig;

/// Status of a guest whose RESET read 0: pvrun has no statistics here.
const STATUS_NO_STATS: i32 = ((EXIT_NO_STATS as i32) << 1) | 1;
/// Status of a guest whose RESET read neither the magic nor 0.
const STATUS_NO_MAGIC: i32 = ((EXIT_NO_MAGIC as i32) << 1) | 1;

/// True if the guest found the bench marker with statistics; prints a SKIP
/// line if pvrun has no statistics on this host, fails if the magic is
/// missing otherwise.
fn stats_available(test: &str, out: &Outcome) -> bool {
    match out.code() {
        STATUS_NO_STATS => {
            skip(&format!("KVM binary statistics unavailable (the bench marker read 0): {test}"));
            false
        }
        STATUS_NO_MAGIC => {
            panic!("the bench marker did not answer RESET with 0 or the magic: {out:#?}")
        }
        _ => true,
    }
}

#[test]
fn one_hundred_nops_are_exactly_one_hundred_more_emulated_instructions() {
    const TEST: &str = "one_hundred_nops_are_exactly_one_hundred_more_emulated_instructions";
    if !have_kvm(TEST) {
        return;
    }
    let mut code = bench_reset_expect_magic();
    // Region with no nops: ESI:EDI = its instruction delta (low, high).
    code.extend(bench_region(0));
    code.extend(bench_print_result([
        &[0x89, 0xde], // mov esi, ebx
        &[0x89, 0xdf], // mov edi, ebx
        &[],
        &[],
    ]));
    // The same region with 100 nops: EBP:EDI = the difference (64-bit).
    code.extend(bench_region(100));
    code.extend(bench_print_result([
        &[0x89, 0xdd], // mov ebp, ebx
        &[
            0x29, 0xf5, // sub ebp, esi
            0x19, 0xfb, // sbb ebx, edi
            0x89, 0xdf, // mov edi, ebx
        ],
        &[],
        &[],
    ]));
    // Exit with the difference, or 127 if it is negative or ≥ 128 (so no
    // other difference can alias status 201).
    code.extend_from_slice(&[
        0x85, 0xff, // test edi, edi
        0x75, 0x0c, // jnz clamp
        0x81, 0xfd, 0x7f, 0x00, 0x00, 0x00, // cmp ebp, 127
        0x77, 0x04, // ja clamp
        0x89, 0xe8, // mov eax, ebp
        0xeb, 0x05, // jmp out
        0xb8, 0x7f, 0x00, 0x00, 0x00, // clamp: mov eax, 127
        0xe7, 0xf4, // out: out 0xf4, eax
        0xf4, // hlt
    ]);
    let out = pvrun_kernel(&kernel("bench100", &ElfSpec::new(&code)), &[]);
    if !stats_available(TEST, &out) {
        return;
    }
    let regions = parse_bench_lines(&out.stdout);
    assert_eq!(regions.len(), 2, "{out:#?}");
    let (empty, hundred) = (regions[0], regions[1]);
    eprintln!("empty region: insn={} exits={}", empty.0, empty.1);
    eprintln!("100 nops:     insn={} exits={}", hundred.0, hundred.1);
    assert_eq!(
        out.code(),
        (100 << 1) | 1,
        "100 nops must be exactly 100 more emulated instructions \
         (empty region {empty:?}, 100 nops {hundred:?}); {out:#?}"
    );
    assert_eq!(hundred.0 - empty.0, 100);
    assert_eq!(out.stderr, "", "{out:#?}");
}

#[test]
fn the_marker_overhead_is_constant() {
    const TEST: &str = "the_marker_overhead_is_constant";
    if !have_kvm(TEST) {
        return;
    }
    let mut code = bench_reset_expect_magic();
    for _ in 0..3 {
        code.extend(bench_region(0));
        code.extend(bench_print_result([&[], &[], &[], &[]]));
    }
    code.extend(asm::debug_exit(0));
    let out = pvrun_kernel(&kernel("bench-empty", &ElfSpec::new(&code)), &["--stats"]);
    if !stats_available(TEST, &out) {
        return;
    }
    assert_eq!(out.code(), 1, "{out:#?}");
    let regions = parse_bench_lines(&out.stdout);
    assert_eq!(regions.len(), 3, "{out:#?}");
    // Each empty region holds one guest instruction (`inc eax`) besides the
    // markers.
    eprintln!("empty region (inc eax only): insn={} exits={}", regions[0].0, regions[0].1);
    assert!(regions.iter().all(|r| *r == regions[0]), "the overhead must not vary: {regions:?}");
    assert!(regions[0].0 >= 1, "{regions:?}");
    assert!(out.stderr.starts_with("pvrun: stats: exits="), "{out:#?}");
}

/// A guest that sends the marker garbage, then checks it still works: RESET
/// must read the magic or 0. Exits with 0, or 124 if a read was wrong.
fn garbage_guest() -> Vec<u8> {
    let mut code = bench_out(7); // unknown command
    code.extend_from_slice(&[0xb0, 0x01, 0xe6, 0xf8]); // mov al, 1; out 0xf8, al (8-bit)
    code.extend_from_slice(&[0x66, 0xb8, 0x02, 0x00, 0x66, 0xe7, 0xf8]); // out 0xf8, ax (16-bit)
    code.extend_from_slice(&[0xe4, 0xf8]); // in al, 0xf8 (8-bit)
    code.extend(bench_out(2)); // STOP without START
    let mut fail = asm::debug_exit(124);
    // Nothing pending: a 32-bit read is all-ones.
    code.extend(bench_in());
    code.extend_from_slice(&[0x83, 0xf8, 0xff]); // cmp eax, -1
    let mut check = vec![0x31, 0xc0, 0xe7, 0xf8]; // RESET
    check.extend(bench_in());
    check.extend_from_slice(&[0x85, 0xc0, 0x74, 0x07]); // test eax, eax; jz ok
    check.push(0x3d); // cmp eax, magic
    check.extend_from_slice(&asm::BENCH_MAGIC.to_le_bytes());
    check.extend_from_slice(&[0x75, 0x05]); // jne fail
    check.extend(asm::debug_exit(0)); // ok
    code.extend_from_slice(&[0x75, check.len() as u8]); // jne fail
    code.extend(check);
    code.append(&mut fail);
    code
}

#[test]
fn garbage_on_the_marker_port_leaves_the_run_healthy() {
    if !have_kvm("garbage_on_the_marker_port_leaves_the_run_healthy") {
        return;
    }
    let k = kernel("bench-garbage", &ElfSpec::new(&garbage_guest()));
    let out = pvrun_kernel(&k, &[]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stderr, "", "{out:#?}");

    let exit = pvrun::run(&VmConfig::new(k), Box::new(io::sink())).unwrap();
    assert_eq!(exit.value, 0);
    // 7, the 8- and 16-bit outs, the 8-bit in, STOP without START.
    assert_eq!(exit.stats.bench_garbage, 5, "{:?}", exit.stats);
    // The 32-bit in, RESET and its read.
    assert_eq!(exit.stats.bench_accesses, 3, "{:?}", exit.stats);
    assert_eq!(exit.stats.unknown_pio, 0, "{:?}", exit.stats);
}

#[test]
fn stats_line_at_the_end_of_a_run() {
    if !have_kvm("stats_line_at_the_end_of_a_run") {
        return;
    }
    let mut code = asm::serial_write(b"hi\n");
    code.extend(asm::debug_exit(0));
    let k = kernel("stats-line", &ElfSpec::new(&code));
    let out = pvrun_kernel(&k, &["--stats"]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stdout, "hi\n", "{out:#?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{out:#?}");
    let rest = lines[0].strip_prefix("pvrun: stats: ").unwrap_or_else(|| panic!("{out:#?}"));
    if let Some(why) = rest.strip_prefix("unavailable: ") {
        skip(&format!("KVM binary statistics unavailable ({why}): stats_line_at_the_end_of_a_run"));
        return;
    }
    let counters: Vec<(&str, u64)> = rest
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or_else(|| panic!("{kv:?}"));
            (k, v.parse().unwrap_or_else(|_| panic!("{kv:?}")))
        })
        .collect();
    let names: Vec<&str> = counters.iter().map(|(k, _)| *k).collect();
    assert_eq!(names[0], "exits", "{out:#?}");
    let known = ["exits", "insn_emulation", "halt_exits", "io_exits", "mmio_exits"];
    assert!(names.iter().all(|n| known.contains(n)), "{out:#?}");
    let get = |name| counters.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
    // 3 serial bytes and the debug exit are 4 exits to pvrun at least. (Not
    // `io_exits`: this host's KVM variant leaves it at 0.)
    assert!(get("exits").unwrap() >= 4, "{out:#?}");

    // Without --stats: nothing on stderr.
    let out = pvrun_kernel(&k, &[]);
    assert_eq!(out.stderr, "", "{out:#?}");
}

#[test]
fn stats_line_comes_before_the_error_line() {
    if !have_kvm("stats_line_comes_before_the_error_line") {
        return;
    }
    let k = kernel("stats-timeout", &ElfSpec::new(&asm::spin()));
    let out = pvrun_kernel(&k, &["--stats", "--timeout", "0.3"]);
    assert_eq!(out.code(), 124, "{out:#?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert!(lines[0].starts_with("pvrun: stats: "), "{out:#?}");
    assert!(lines[1].starts_with("pvrun: error: guest did not finish"), "{out:#?}");
}

#[test]
fn library_reports_the_stats() {
    if !have_kvm("library_reports_the_stats") {
        return;
    }
    let config = VmConfig::new(kernel("stats-lib", &ElfSpec::new(&asm::debug_exit(2))));
    let report = pvrun::run_with_stats(&config, Box::new(io::sink()));
    assert_eq!(report.result.unwrap().status, 5);
    match report.kvm_stats.expect("a vCPU was created") {
        Ok(summary) => assert!(summary.get("exits").is_some(), "{summary:?}"),
        Err(e) => skip(&format!("KVM binary statistics unavailable ({e}): library_reports_the_stats")),
    }
    // No VM at all: no statistics.
    let report = pvrun::run_with_stats(&VmConfig::new("/nonexistent/kernel"), Box::new(io::sink()));
    assert!(report.result.is_err());
    assert!(report.kvm_stats.is_none());
}
