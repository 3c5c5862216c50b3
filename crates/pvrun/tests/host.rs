//! End-to-end tests of what the guest is told about the hypervisor:
//! `--personality`, `--cpuid-mask`, the hypercall probe, `--probe-host`,
//! and the keyboard-controller reset.

mod common;

use std::io;
use std::sync::{Arc, Mutex};

use common::{asm, have_kvm, kernel, parse_hex_words, pvrun, pvrun_kernel, ElfSpec};
use pvrun::{HypercallProbe, Personality, VmConfig};

/// Serial output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// "KVMK", the first four bytes of KVM's signature, as EBX holds them.
const KVMK: u32 = 0x4b4d_564b;

/// Exits with `hypervisor bit | (0x40000000 says KVM) << 1`.
fn hypervisor_visibility_guest() -> Vec<u8> {
    let mut code = vec![0x31, 0xf6]; // xor esi, esi
    code.extend(asm::cpuid(1));
    code.extend_from_slice(&[0xc1, 0xe9, 0x1f, 0x09, 0xce]); // shr ecx, 31; or esi, ecx
    code.extend(asm::cpuid(0x4000_0000));
    code.extend_from_slice(&[0x81, 0xfb]); // cmp ebx, KVMK
    code.extend_from_slice(&KVMK.to_le_bytes());
    code.extend_from_slice(&[0x75, 0x03, 0x83, 0xce, 0x02]); // jne +3; or esi, 2
    code.extend_from_slice(&[0x89, 0xf0]); // mov eax, esi
    code.extend(asm::exit_eax());
    code
}

#[test]
fn personality_none_hides_the_hypervisor() {
    if !have_kvm("personality_none_hides_the_hypervisor") {
        return;
    }
    let k = kernel("personality", &ElfSpec::new(&hypervisor_visibility_guest()));
    // kvm (the default): both visible, value 3.
    let out = pvrun_kernel(&k, &["--no-hypercall-probe"]);
    assert_eq!(out.code(), (3 << 1) | 1, "{out:#?}");
    let out = pvrun_kernel(&k, &["--personality", "kvm", "--no-hypercall-probe"]);
    assert_eq!(out.code(), (3 << 1) | 1, "{out:#?}");
    // none: neither, value 0.
    let out = pvrun_kernel(&k, &["--personality", "none"]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stderr, "", "{out:#?}");

    // 0x40000000 then reads like some other leaf, not KVM's.
    let mut code = asm::print_cpuid(0x4000_0000);
    code.extend(asm::debug_exit(0));
    let k = kernel("personality-leaf", &ElfSpec::new(&code));
    let out = pvrun_kernel(&k, &["--personality", "none"]);
    assert_eq!(out.code(), 1, "{out:#?}");
    let words = parse_hex_words(out.stdout.trim_end());
    assert_ne!(words[1], KVMK, "{out:#?}");
    eprintln!("personality none: CPUID 0x40000000 reads {words:08x?}");
}

/// Prints CPUID 0x40000001 (EAX = KVM features) and exits 0.
fn features_guest(test: &str) -> std::path::PathBuf {
    let mut code = asm::print_cpuid(0x4000_0001);
    code.extend(asm::debug_exit(0));
    kernel(test, &ElfSpec::new(&code))
}

fn guest_features(k: &std::path::Path, args: &[&str]) -> u32 {
    let out = pvrun_kernel(k, args);
    assert_eq!(out.code(), 1, "{out:#?}");
    parse_hex_words(out.stdout.trim_end())[0]
}

/// The feature word `pvrun --probe-host args` says it would advertise.
fn probe_host_advertised(args: &[&str]) -> u32 {
    let mut all = vec!["--probe-host"];
    all.extend_from_slice(args);
    let out = pvrun(&all);
    assert_eq!(out.code(), 0, "{out:#?}");
    let line = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("advertised features (0x40000001 EAX): 0x"))
        .unwrap_or_else(|| panic!("{out:#?}"));
    u32::from_str_radix(&line[..8], 16).unwrap()
}

#[test]
fn cpuid_mask_clears_feature_bits() {
    if !have_kvm("cpuid_mask_clears_feature_bits") {
        return;
    }
    let k = features_guest("cpuid-mask");
    let plain = guest_features(&k, &["--no-hypercall-probe"]);
    let masked = guest_features(&k, &["--no-hypercall-probe", "--cpuid-mask", "steal_time"]);
    assert_eq!(masked & (1 << 5), 0, "steal_time visible: {masked:#x}");
    assert_eq!(masked, plain & !(1 << 5), "{plain:#x} {masked:#x}");
    // Names and numbers, repeated.
    let more = guest_features(
        &k,
        &["--no-hypercall-probe", "--cpuid-mask", "pv_eoi,3", "--cpuid-mask", "clocksource"],
    );
    assert_eq!(more, plain & !((1 << 6) | (1 << 3) | 1), "{more:#x}");
    // What the guest sees is what --probe-host announces.
    assert_eq!(masked, probe_host_advertised(&["--no-hypercall-probe", "--cpuid-mask", "steal_time"]));
}

#[test]
fn unknown_cpuid_mask_names_are_bad_input() {
    let out = pvrun(&["--cpuid-mask", "steal_time,warp_drive", "k.elf"]);
    out.assert_error(
        2,
        &[
            "unknown KVM feature 'warp_drive'",
            "valid names: clocksource, nop_io_delay",
            "pv_unhalt",
            "clocksource_stable_bit",
        ],
    );
    let out = pvrun(&["--probe-host", "--cpuid-mask", "32"]);
    out.assert_error(2, &["unknown KVM feature '32'"]);
}

#[test]
fn the_hypercall_probe_decides_the_hypercall_features() {
    if !have_kvm("the_hypercall_probe_decides_the_hypercall_features") {
        return;
    }
    let k = features_guest("hypercall-features");
    let report = pvrun::run_with_stats(&VmConfig::new(&k), Box::new(io::sink()));
    assert_eq!(report.result.unwrap().status, 1);
    let plan = report.features.expect("KVM was opened");
    eprintln!("hypercall probe: {}", plan.hypercalls);
    let hypercall_bits = (1 << 7) | (1 << 11) | (1 << 13) | (1 << 16);
    match &plan.hypercalls {
        HypercallProbe::Returns { .. } => assert_eq!(plan.clear_mask(), 0),
        HypercallProbe::Hangs { .. } => assert_eq!(plan.clear_mask(), hypercall_bits),
        other => panic!("the probe should have run: {other:?}"),
    }
    // The guest saw exactly the advertised word.
    let serial = Captured::default();
    let report = pvrun::run_with_stats(&VmConfig::new(&k), Box::new(serial.clone()));
    assert_eq!(report.result.unwrap().status, 1);
    let seen = parse_hex_words(serial.text().trim_end())[0];
    assert_eq!(Some(seen), report.features.unwrap().advertised());

    // Personality none: no probe at all, nothing advertised.
    let config = VmConfig { personality: Personality::None, ..VmConfig::new(&k) };
    let report = pvrun::run_with_stats(&config, Box::new(io::sink()));
    let plan = report.features.unwrap();
    assert_eq!(plan.hypercalls, HypercallProbe::NotNeeded);
    assert_eq!(plan.advertised(), None);
}

#[test]
fn probe_host_reports_the_host() {
    if !have_kvm("probe_host_reports_the_host") {
        return;
    }
    let out = pvrun(&["--probe-host"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(out.stderr, "", "{out:#?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let has = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    for prefix in [
        "KVM device: /dev/kvm",
        "KVM API version: 12",
        "KVM_CAP_IRQCHIP: ",
        "KVM_CAP_SPLIT_IRQCHIP: ",
        "KVM_CAP_X86_USER_SPACE_MSR: ",
        "KVM_CAP_X86_MSR_FILTER: ",
        "KVM_CAP_KVMCLOCK_CTRL: ",
        "KVM_CAP_GET_TSC_KHZ: ",
        "KVM_CAP_XEN_HVM: ",
        "KVM_CAP_HYPERV: ",
        "KVM_CAP_TSC_CONTROL: ",
        "KVM_CAP_BINARY_STATS_FD: ",
        "max vCPUs: ",
        "host CPU vendor: ",
        "KVM CPUID signature (0x40000000): ",
        "KVM features (0x40000001 EAX): ",
        "hypercall probe: ",
        "personality: kvm",
        "advertised features (0x40000001 EAX): ",
    ] {
        assert!(has(prefix), "{prefix:?} in {}", out.stdout);
    }
    assert!(has("KVM_CAP_IRQCHIP: present"), "{}", out.stdout);
    let max = lines.iter().find(|l| l.starts_with("max vCPUs: ")).unwrap();
    assert!(max.ends_with("; pvrun takes at most 255)"), "{max}");
    assert!(has("KVM CPUID signature (0x40000000): \"KVMKVMKVM\""), "{}", out.stdout);
    // This repository's host: a guest hypercall never returns (as
    // errors.rs's vmcall_times_out shows), so the probe says so and the
    // four hypercall-based features are cleared, with the reason.
    let probe = lines.iter().find(|l| l.starts_with("hypercall probe: ")).unwrap();
    assert!(
        probe.starts_with("hypercall probe: hangs: vmcall (0f 01 c1)")
            || probe.starts_with("hypercall probe: hangs: vmmcall (0f 01 d9)"),
        "{probe}"
    );
    assert!(probe.contains(" ms"), "{probe}");
    let why = "hypercall-based: guest hypercalls do not return on this host";
    for (bit, name) in
        [(7, "pv_unhalt"), (11, "pv_send_ipi"), (13, "pv_sched_yield"), (16, "hc_map_gpa_range")]
    {
        let want = format!("  cleared bit {bit} {name}: {why}");
        assert!(lines.iter().any(|l| l.starts_with(&want)), "{want:?} in {}", out.stdout);
    }
    assert_eq!(lines.iter().filter(|l| l.starts_with("  cleared ")).count(), 4, "{}", out.stdout);

    // With a mask, --no-hypercall-probe and personality none.
    let out = pvrun(&["--probe-host", "--no-hypercall-probe", "--cpuid-mask", "pv_eoi"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.stdout.contains("hypercall probe: skipped (--no-hypercall-probe)"));
    assert!(out.stdout.contains("  cleared bit 6 pv_eoi: --cpuid-mask\n"));
    assert!(out.stdout.contains("  cleared bit 7 pv_unhalt: hypercall-based: --no-hypercall-probe"));
    let out = pvrun(&["--probe-host", "--personality", "none", "--no-hypercall-probe"]);
    assert!(out.stdout.contains("personality: none\n"), "{out:#?}");
    assert!(out.stdout.contains("advertised features (0x40000001 EAX): none (personality none"), "{out:#?}");
}

#[test]
fn probe_host_errors_are_one_line() {
    let out = pvrun(&["--probe-host", "--kvm", "/nonexistent"]);
    out.assert_error(6, &["/nonexistent", "not found"]);
    let out = pvrun(&["--probe-host", "kernel.elf"]);
    out.assert_error(2, &["--probe-host"]);
}

#[test]
fn library_probe_host() {
    if !have_kvm("library_probe_host") {
        return;
    }
    let config = VmConfig { cpuid_mask: 1 << 5, hypercall_probe: false, ..VmConfig::new("") };
    let probe = pvrun::probe_host(&config).unwrap();
    assert_eq!(probe.api_version, 12);
    assert_eq!(probe.caps.len(), 10);
    assert_eq!(probe.plan.hypercalls, HypercallProbe::Skipped);
    let offered = probe.plan.offered.expect("KVM reports 0x40000001");
    assert_eq!(
        probe.plan.advertised(),
        Some(offered & !((1 << 5) | (1 << 7) | (1 << 11) | (1 << 13) | (1 << 16)))
    );
}

#[test]
fn keyboard_controller_reset_exits_0() {
    if !have_kvm("keyboard_controller_reset_exits_0") {
        return;
    }
    let mut code = asm::serial_write(b"bye\n");
    code.extend(asm::kbd_reset());
    let k = kernel("reset", &ElfSpec::new(&code));
    let out = pvrun_kernel(&k, &["--no-hypercall-probe"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert_eq!(out.stdout, "bye\n", "{out:#?}");
    assert_eq!(out.stderr, "pvrun: guest requested a reset\n", "{out:#?}");

    // With --stats, the stats line comes first.
    let out = pvrun_kernel(&k, &["--no-hypercall-probe", "--stats"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    assert!(lines[0].starts_with("pvrun: stats: "), "{out:#?}");
    assert_eq!(lines[1], "pvrun: guest requested a reset");

    // The library reports it as such.
    let exit = pvrun::run(&VmConfig::new(&k), Box::new(io::sink())).unwrap();
    assert_eq!(exit.kind, pvrun::ExitKind::Reset);
    assert_eq!(exit.status, 0);

    // With APs waiting for INIT/SIPI, the BSP's reset ends the run all the
    // same.
    let out = pvrun_kernel(&k, &["--cpus", "2", "--no-hypercall-probe"]);
    assert_eq!(out.code(), 0, "{out:#?}");
}

/// The hypercall verdict is kept per host (`PVRUN_CACHE_DIR`): a run reads
/// it instead of probing, a verdict for another host or a file that is not
/// ours is ignored (and replaced), and `--refresh-probe` probes again.
#[test]
fn the_hypercall_verdict_is_kept_per_host() {
    if !have_kvm("the_hypercall_verdict_is_kept_per_host") {
        return;
    }
    let dir = common::scratch_dir("probe-cache");
    let file = dir.join("cache/hypercall-probe");
    let run = |args: &[&str], kernel: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(common::pvrun_bin());
        cmd.env("PVRUN_CACHE_DIR", dir.join("cache")).args(args);
        cmd.args(kernel);
        common::run_cmd(cmd, std::time::Duration::from_secs(20))
    };
    let k = features_guest("probe-cache");
    let seen = |args: &[&str]| {
        let out = run(args, Some(&k));
        assert_eq!(out.code(), 1, "{out:#?}");
        parse_hex_words(out.stdout.trim_end())[0]
    };
    let pv_unhalt = 1 << 7;
    // The key and the verdict, less the time the probe took.
    let gist = |text: &str| -> Vec<String> {
        text.lines().map(|l| l.split(' ').take(3).collect::<Vec<_>>().join(" ")).collect()
    };

    // --probe-host probes and keeps what it found.
    let out = run(&["--probe-host"], None);
    assert_eq!(out.code(), 0, "{out:#?}");
    if !out.stdout.contains("  bit 7 pv_unhalt") {
        common::skip("this KVM does not offer pv_unhalt: the_hypercall_verdict_is_kept_per_host");
        return;
    }
    let kept = std::fs::read_to_string(&file).expect("--probe-host kept its verdict");
    let real = seen(&[]);
    let hangs = kept.contains("verdict: hangs ");
    assert_eq!(real & pv_unhalt == 0, hangs, "{kept}");

    // A kept verdict is used as it is: the opposite one, planted, decides.
    let verdict_line = kept.lines().find(|l| l.starts_with("verdict: ")).unwrap();
    let opposite = if hangs { "verdict: returns vmmcall 0 5" } else { "verdict: hangs vmmcall 100000 false" };
    std::fs::write(&file, kept.replace(verdict_line, opposite)).unwrap();
    assert_eq!(seen(&[]) & pv_unhalt == 0, !hangs, "the planted verdict decided, no probe ran");

    // --refresh-probe probes again, and keeps the real verdict.
    assert_eq!(seen(&["--refresh-probe"]), real);
    assert_eq!(gist(&std::fs::read_to_string(&file).unwrap()), gist(&kept));

    // Another host's verdict, or a file that is not ours: probed and replaced.
    let other_host = kept.replace(verdict_line, opposite).replace("key: ", "key: another host ");
    for planted in [other_host.as_str(), "not a verdict\n", ""] {
        std::fs::write(&file, planted).unwrap();
        assert_eq!(seen(&[]), real, "{planted:?} was not taken");
        assert_eq!(gist(&std::fs::read_to_string(&file).unwrap()), gist(&kept));
    }
}
