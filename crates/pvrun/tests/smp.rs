//! End-to-end tests of `--cpus`: the CPUID each vCPU sees, an application
//! processor started by the guest with INIT-SIPI-SIPI, per-vCPU serial
//! lines, crashes on an AP, teardown of APs that never started, the limits
//! (1..=255 and KVM's), and 16, 64 and 255 vCPUs all woken at once.

mod common;

use std::process::Command;
use std::time::Duration;

use common::asm::{self, AP_FLAG, TRAMPOLINE};
use common::{have_kvm, kernel, parse_hex_words, pvrun, pvrun_kernel, run_cmd, skip, ElfSpec, LOAD_ADDR};

/// Offset in the kernel image where the AP trampoline is stored before the
/// BSP copies it to [`TRAMPOLINE`].
const TRAMPOLINE_OFFSET: usize = 0x800;

/// A kernel whose BSP runs `bsp_before`, copies `trampoline` (16-bit
/// real-mode code) to 0x8000, wakes the CPU with APIC ID 1 with
/// INIT-SIPI-SIPI, then runs `bsp_after`.
fn smp_kernel(test: &str, bsp_before: &[u8], trampoline: &[u8], bsp_after: &[u8]) -> ElfSpec {
    let mut code = bsp_before.to_vec();
    code.extend(asm::copy_trampoline(LOAD_ADDR as u32 + TRAMPOLINE_OFFSET as u32, trampoline.len() as u32));
    code.extend(asm::init_sipi_sipi(1));
    code.extend_from_slice(bsp_after);
    assert!(code.len() <= TRAMPOLINE_OFFSET, "{test}: BSP code too long");
    code.resize(TRAMPOLINE_OFFSET, 0x90);
    code.extend_from_slice(trampoline);
    ElfSpec::new(&code)
}

/// BSP: exit 0x7e unless its own APIC ID (CPUID.1:EBX[31:24]) is 0.
fn bsp_checks_apic_id_zero() -> Vec<u8> {
    let mut v = asm::cpuid(1);
    // shr ebx, 24; jz ok; mov al, 0x7e; out 0xf4, al; hlt; ok:
    v.extend_from_slice(&[0xc1, 0xeb, 0x18, 0x74, 0x05]);
    v.extend(asm::debug_exit(0x7e));
    v
}

#[test]
fn ap_started_with_init_sipi_sipi_reports_its_apic_id() {
    if !have_kvm("ap_started_with_init_sipi_sipi_reports_its_apic_id") {
        return;
    }
    let mut trampoline = asm::real_flat_ds();
    trampoline.extend(asm::real_report_apic_id());
    let spec = smp_kernel("sipi", &bsp_checks_apic_id_zero(), &trampoline, &asm::wait_ap_flag_and_exit());
    let out = pvrun_kernel(&kernel("sipi", &spec), &["--cpus", "2", "--timeout", "10"]);
    // The AP stored 0x10 | 1 at AP_FLAG; the BSP exited with it.
    assert_eq!(
        out.code(),
        (0x11 << 1) | 1,
        "AP at {TRAMPOLINE:#x} should set {AP_FLAG:#x} to 0x11: {out:#?}"
    );
    assert_eq!(out.stderr, "", "{out:#?}");
}

#[test]
fn serial_lines_of_two_vcpus_stay_whole() {
    if !have_kvm("serial_lines_of_two_vcpus_stay_whole") {
        return;
    }
    const LINES: u8 = 20;
    const WIDTH: u8 = 40;
    // AP, real mode: LINES lines of WIDTH 'B's, then AP_FLAG = 1; cli; hlt.
    let mut trampoline = asm::real_flat_ds();
    trampoline.extend_from_slice(&[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xbe, LINES, 0x00, // mov si, LINES
        0xb9, WIDTH, 0x00, // outer: mov cx, WIDTH
        0xb0, b'B', 0xee, // inner: mov al, 'B'; out dx, al
        0xe2, 0xfb, // loop inner
        0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
        0x4e, 0x75, 0xf2, // dec si; jnz outer
        0xc6, 0x06, // mov byte [AP_FLAG], 1
    ]);
    trampoline.extend_from_slice(&(AP_FLAG as u16).to_le_bytes());
    trampoline.push(1);
    trampoline.extend(asm::cli_hlt());
    // BSP, after the SIPIs: the same with 'A's, then wait for the AP.
    let mut bsp = vec![
        0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xbe, LINES, 0, 0, 0, // mov esi, LINES
        0xb9, WIDTH, 0, 0, 0, // outer: mov ecx, WIDTH
        0xb0, b'A', 0xee, // inner: mov al, 'A'; out dx, al
        0xe2, 0xfb, // loop inner
        0xb0, b'\n', 0xee, // mov al, '\n'; out dx, al
        0x4e, 0x75, 0xf0, // dec esi; jnz outer
    ];
    bsp.extend(asm::wait_ap_flag_and_exit());
    let spec = smp_kernel("serial-smp", &[], &trampoline, &bsp);
    let out = pvrun_kernel(&kernel("serial-smp", &spec), &["--cpus", "2", "--timeout", "10"]);
    assert_eq!(out.code(), 3, "{out:#?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    let a = "A".repeat(WIDTH.into());
    let b = "B".repeat(WIDTH.into());
    assert_eq!(lines.len(), 2 * usize::from(LINES), "{out:#?}");
    for line in &lines {
        assert!(*line == a || *line == b, "mixed line {line:?}: {out:#?}");
    }
    assert_eq!(lines.iter().filter(|l| **l == a).count(), LINES.into());
    // How much the two vCPUs overlapped (informative): lines whose
    // predecessor came from the other vCPU.
    let switches = lines.windows(2).filter(|w| w[0] != w[1]).count();
    eprintln!("serial_lines_of_two_vcpus_stay_whole: {switches} switches between vCPUs");
}

#[test]
fn a_crash_on_an_ap_names_the_vcpu() {
    if !have_kvm("a_crash_on_an_ap_names_the_vcpu") {
        return;
    }
    // AP, real mode: lidt [AP_FLAG] (six zero bytes: limit 0), then ud2:
    // nothing can be delivered, so it shuts down. The BSP waits forever.
    let mut trampoline = asm::real_flat_ds();
    trampoline.extend_from_slice(&[0x0f, 0x01, 0x1e]);
    trampoline.extend_from_slice(&(AP_FLAG as u16).to_le_bytes());
    trampoline.extend_from_slice(&[0x0f, 0x0b]);
    let spec = smp_kernel("ap-crash", &[], &trampoline, &asm::spin());
    let out = pvrun_kernel(&kernel("ap-crash", &spec), &["--cpus", "2", "--timeout", "10"]);
    out.assert_error(4, &["guest crashed: vCPU 1: "]);
    eprintln!("AP crash: {}", out.stderr.trim_end());
    assert!(out.stderr.contains("triple fault") || out.stderr.contains("emulation failure"), "{out:#?}");
    assert!(out.elapsed < Duration::from_secs(5), "{out:#?}");
}

#[test]
fn four_cpus_show_in_cpuid_and_idle_aps_are_torn_down() {
    if !have_kvm("four_cpus_show_in_cpuid_and_idle_aps_are_torn_down") {
        return;
    }
    let mut code = asm::print_cpuid(1);
    code.extend(asm::print_cpuid(0xb));
    code.extend(asm::debug_exit(0));
    let k = kernel("cpus4", &ElfSpec::new(&code));
    let out = pvrun_kernel(&k, &["--cpus", "4", "--no-hypercall-probe"]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stderr, "", "{out:#?}");
    let lines: Vec<Vec<u32>> = out.stdout.lines().map(parse_hex_words).collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    let (ebx, edx) = (lines[0][1], lines[0][3]);
    assert_eq!((ebx >> 16) & 0xff, 4, "CPUID.1:EBX[23:16]: {out:#?}");
    assert_eq!(ebx >> 24, 0, "the BSP's APIC ID: {out:#?}");
    assert_ne!(edx & (1 << 28), 0, "HTT: {out:#?}");
    assert_eq!(lines[1][3], 0, "CPUID.0xB:EDX (x2APIC ID): {out:#?}");
    // Three APs sat in KVM_RUN waiting for a SIPI; they must not hold the
    // run up (tests/teardown.rs checks that their threads are joined).
    assert!(out.elapsed < Duration::from_secs(3), "{out:#?}");

    let out = pvrun_kernel(&k, &["--no-hypercall-probe"]);
    let lines: Vec<Vec<u32>> = out.stdout.lines().map(parse_hex_words).collect();
    assert_eq!((lines[0][1] >> 16) & 0xff, 1, "one CPU: {out:#?}");
    // pvrun clears HTT for one CPU, but this repository's host forces it on
    // (as it forces SSE/AVX/XSAVE bits), so the guest may see it either way.
    eprintln!("one CPU: the guest sees HTT {}", if lines[0][3] & (1 << 28) != 0 { "set" } else { "clear" });
}

#[test]
fn a_timeout_with_waiting_aps_reports_the_bsp() {
    if !have_kvm("a_timeout_with_waiting_aps_reports_the_bsp") {
        return;
    }
    let k = kernel("smp-spin", &ElfSpec::new(&asm::spin()));
    let out = pvrun_kernel(&k, &["--cpus", "8", "--timeout", "0.3"]);
    out.assert_error(124, &["did not finish within 0.3 s", "vCPU 0 stopped at RIP 0x100000"]);
    assert!(out.elapsed < Duration::from_secs(2), "{out:#?}");
}

#[test]
fn cpus_out_of_range_are_bad_input() {
    let k = kernel("cpus-range", &ElfSpec::new(&asm::debug_exit(0)));
    // Checked before KVM is opened: the same with or without /dev/kvm.
    for n in ["0", "256", "1024"] {
        let out = pvrun_kernel(&k, &["--cpus", n]);
        out.assert_error(2, &[&format!("vCPU count {n} is out of range"), "between 1 and 255"]);
    }
    let out = pvrun_kernel(&k, &["--cpus", "256", "--kvm", "/nonexistent"]);
    out.assert_error(2, &["vCPU count 256 is out of range: --cpus must be between 1 and 255"]);
    let out = pvrun_kernel(&k, &["--cpus", "two"]);
    out.assert_error(2, &["--cpus"]);
}

// ------------------------------------------------ many vCPUs (up to 255)

/// The byte address of the AP check-in counter (a dword, below 1 MiB).
const CHECKED_IN: u32 = 0x9000;
/// A 256-bit bitmap of the APIC IDs that checked in (32 bytes).
const ID_BITMAP: u32 = 0x9100;
/// Where the trampoline sits in the image before the BSP copies it.
const CHECK_IN_TRAMPOLINE_OFFSET: usize = 0x400;
/// How many times the BSP polls the counter before giving up (each poll is
/// three emulated instructions; the watchdog is the other bound).
const CHECK_IN_POLLS: u32 = 20_000_000;

/// A kernel for `--cpus N`: the BSP reads N from CPUID.1:EBX[23:16], sends
/// INIT-SIPI-SIPI to all but itself (the ICR's "all excluding self"
/// shorthand), and polls until N - 1 APs have checked in (or
/// [`CHECK_IN_POLLS`] polls). Each AP, in real mode, sets the bit of its
/// APIC ID (CPUID.1:EBX[31:24]) in [`ID_BITMAP`] with `lock bts`, counts
/// itself with `lock inc` and halts. The BSP then prints the bitmap (eight
/// hex dwords, low first) and exits with the count plus one (itself): status
/// `(N << 1) | 1` when every AP came.
fn all_aps_check_in_kernel() -> ElfSpec {
    check_in_kernel(&asm::cli_hlt(), false)
}

/// [`all_aps_check_in_kernel`] with `ap_tail` (16-bit) run by each AP after
/// it checked in; with `bsp_spins`, the BSP spins once they all did (or it
/// gave up) instead of printing and exiting.
fn check_in_kernel(ap_tail: &[u8], bsp_spins: bool) -> ElfSpec {
    const ICR_LOW: u32 = 0xfee0_0300;
    let vector = TRAMPOLINE >> 12;
    #[rustfmt::skip]
    let mut trampoline = vec![
        0x31, 0xc0, 0x8e, 0xd8, // xor ax, ax; mov ds, ax
        0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
        0x66, 0x31, 0xc9, // xor ecx, ecx
        0x0f, 0xa2, // cpuid
        0x66, 0xc1, 0xeb, 0x18, // shr ebx, 24: the APIC ID
        0xf0, 0x66, 0x0f, 0xab, 0x1e, // lock bts [ID_BITMAP], ebx
    ];
    trampoline.extend_from_slice(&(ID_BITMAP as u16).to_le_bytes());
    trampoline.extend_from_slice(&[0xf0, 0x66, 0xff, 0x06]); // lock inc dword [CHECKED_IN]
    trampoline.extend_from_slice(&(CHECKED_IN as u16).to_le_bytes());
    trampoline.extend_from_slice(ap_tail);

    let mut bsp =
        asm::copy_trampoline(LOAD_ADDR as u32 + CHECK_IN_TRAMPOLINE_OFFSET as u32, trampoline.len() as u32);
    bsp.extend(asm::cpuid(1));
    bsp.extend_from_slice(&[0xc1, 0xeb, 0x10, 0x0f, 0xb6, 0xdb, 0x4b]); // shr ebx, 16; movzx ebx, bl; dec ebx
    bsp.extend(asm::store32(ICR_LOW, 0x000c_4500)); // INIT, all excluding self
    bsp.extend(asm::store32(ICR_LOW, 0x000c_4600 | vector)); // SIPI, all excluding self
    bsp.extend(asm::store32(ICR_LOW, 0x000c_4600 | vector)); // and again
    bsp.push(0xb9); // mov ecx, CHECK_IN_POLLS
    bsp.extend_from_slice(&CHECK_IN_POLLS.to_le_bytes());
    bsp.extend_from_slice(&[0x39, 0x1d]); // poll: cmp [CHECKED_IN], ebx
    bsp.extend_from_slice(&CHECKED_IN.to_le_bytes());
    bsp.extend_from_slice(&[0x74, 0x02, 0xe2, 0xf6]); // je done; loop poll
    if bsp_spins {
        bsp.extend(asm::spin());
    }
    for i in 0..8 {
        // done: the bitmap, eight dwords
        bsp.push(0xa1); // mov eax, [ID_BITMAP + 4 * i]
        bsp.extend_from_slice(&(ID_BITMAP + 4 * i).to_le_bytes());
        bsp.extend(asm::print_hex_eax());
        bsp.extend(asm::serial_write(if i == 7 { b"\n" } else { b" " }));
    }
    bsp.push(0xa1); // mov eax, [CHECKED_IN]
    bsp.extend_from_slice(&CHECKED_IN.to_le_bytes());
    bsp.push(0x40); // inc eax
    bsp.extend(asm::exit_eax());
    assert!(bsp.len() <= CHECK_IN_TRAMPOLINE_OFFSET, "BSP code too long: {}", bsp.len());
    bsp.resize(CHECK_IN_TRAMPOLINE_OFFSET, 0x90);
    bsp.extend_from_slice(&trampoline);
    ElfSpec::new(&bsp)
}

/// pvrun's own vCPU limit on this host, from `--probe-host`'s line
/// `max vCPUs: N (KVM_CAP_MAX_VCPUS; pvrun takes at most 255)`:
/// min(N, 255).
fn host_cpus_max() -> u32 {
    let out = pvrun(&["--probe-host", "--no-hypercall-probe"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    let line =
        out.stdout.lines().find(|l| l.starts_with("max vCPUs: ")).unwrap_or_else(|| panic!("{out:#?}"));
    assert!(line.ends_with("; pvrun takes at most 255)"), "{line}");
    let n: u32 = line["max vCPUs: ".len()..].split(' ').next().unwrap().parse().unwrap();
    eprintln!("{line}");
    n.min(255)
}

/// Boots [`all_aps_check_in_kernel`] with `--cpus cpus` and checks that
/// every AP checked in, each with its own APIC ID, within `limit`.
fn all_aps_check_in(test: &str, cpus: u32, limit: Duration) {
    let k = kernel(test, &all_aps_check_in_kernel());
    let n = cpus.to_string();
    let mut cmd = Command::new(common::pvrun_bin());
    cmd.args(["--cpus", &n, "--no-hypercall-probe", "--timeout", "120"]).arg(&k);
    let out = run_cmd(cmd, Duration::from_secs(150));
    eprintln!("{test}: --cpus {cpus}: status {:?} in {:?}", out.status.code(), out.elapsed);
    assert_eq!(out.stderr, "", "{out:#?}");
    let words = parse_hex_words(out.stdout.trim_end());
    assert_eq!(words.len(), 8, "{out:#?}");
    // APIC IDs 1..cpus, each once: bits 1..cpus of the bitmap, nothing else.
    for id in 0..256 {
        let set = words[id / 32] & (1 << (id % 32)) != 0;
        assert_eq!(set, (1..cpus as usize).contains(&id), "APIC ID {id} in the bitmap: {out:#?}");
    }
    // The BSP counted all of them (the status keeps 8 bits).
    assert_eq!(
        out.code(),
        ((cpus << 1) | 1) as i32 & 0xff,
        "{} APs of {cpus} checked in: {out:#?}",
        cpus - 1
    );
    assert!(out.elapsed < limit, "{test}: {:?} (limit {limit:?})", out.elapsed);
}

#[test]
fn sixteen_vcpus_all_check_in() {
    if !have_kvm("sixteen_vcpus_all_check_in") {
        return;
    }
    if host_cpus_max() < 16 {
        skip("this host's KVM allows fewer than 16 vCPUs: sixteen_vcpus_all_check_in");
        return;
    }
    all_aps_check_in("sixteen_vcpus_all_check_in", 16, Duration::from_secs(30));
}

#[test]
fn sixty_four_vcpus_all_check_in() {
    if !have_kvm("sixty_four_vcpus_all_check_in") {
        return;
    }
    if host_cpus_max() < 64 {
        skip("this host's KVM_CAP_MAX_VCPUS is below 64: sixty_four_vcpus_all_check_in");
        return;
    }
    all_aps_check_in("sixty_four_vcpus_all_check_in", 64, Duration::from_secs(60));
}

#[test]
fn two_hundred_fifty_five_vcpus_all_check_in() {
    if !have_kvm("two_hundred_fifty_five_vcpus_all_check_in") {
        return;
    }
    if host_cpus_max() < 255 {
        skip("this host's KVM_CAP_MAX_VCPUS is below 255: two_hundred_fifty_five_vcpus_all_check_in");
        return;
    }
    all_aps_check_in("two_hundred_fifty_five_vcpus_all_check_in", 255, Duration::from_secs(60));
}

/// The watchdog stops 255 vCPUs that all run (the APs spin after checking
/// in, the BSP once they all did) within its grace: status 124, one line
/// naming vCPU 0, no vCPU left in KVM_RUN.
#[test]
fn the_watchdog_stops_255_spinning_vcpus() {
    let test = "the_watchdog_stops_255_spinning_vcpus";
    if !have_kvm(test) {
        return;
    }
    if host_cpus_max() < 255 {
        skip(&format!("this host's KVM_CAP_MAX_VCPUS is below 255: {test}"));
        return;
    }
    let k = kernel(test, &check_in_kernel(&asm::spin(), true));
    let out = pvrun_kernel(&k, &["--cpus", "255", "--no-hypercall-probe", "--timeout", "1"]);
    eprintln!("{test}: {:?}: {}", out.elapsed, out.stderr.trim_end());
    out.assert_error(124, &["did not finish within 1 s", "(vCPU 0 stopped at RIP 0x"]);
    // 1 s, the kicks (at most 0.5 s), and creating and tearing down 255
    // vCPUs (tests/teardown.rs checks that none is left behind).
    assert!(out.elapsed < Duration::from_secs(3), "{out:#?}");
}
