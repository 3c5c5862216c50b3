//! End-to-end tests of `--personality vmi` that need no kernel of the
//! project's: the ROM is where guests look for it and stays read-only, its
//! data page is the guest's to write, and the options are checked. (The
//! kernel's own tests, in pvlab, boot pvkernel against both flavours and
//! every `--vmi-corrupt` defect.)

mod common;

use common::{have_kvm, kernel, pvrun_kernel, ElfSpec};

/// Writes 0x1234 over the ROM's first word and 0x77 into the data page, then
/// exits with bit 0 = the ROM still starts with 55 AA, bit 1 = the data page
/// kept the 0x77.
fn rom_probe_guest() -> Vec<u8> {
    let mut code = vec![0x66, 0xc7, 0x05, 0x00, 0x00, 0x0c, 0x00, 0x34, 0x12]; // mov word [0xc0000], 0x1234
    code.extend_from_slice(&[0xc6, 0x05, 0x00, 0x40, 0x0c, 0x00, 0x77]); // mov byte [0xc4000], 0x77
    code.extend_from_slice(&[0x31, 0xf6]); // xor esi, esi
    code.extend_from_slice(&[0x66, 0x81, 0x3d, 0x00, 0x00, 0x0c, 0x00, 0x55, 0xaa]); // cmp word [0xc0000], 0xaa55
    code.extend_from_slice(&[0x75, 0x03, 0x83, 0xce, 0x01]); // jne +3; or esi, 1
    code.extend_from_slice(&[0x80, 0x3d, 0x00, 0x40, 0x0c, 0x00, 0x77]); // cmp byte [0xc4000], 0x77
    code.extend_from_slice(&[0x75, 0x03, 0x83, 0xce, 0x02]); // jne +3; or esi, 2
    code.extend_from_slice(&[0x89, 0xf0, 0xe7, 0xf4, 0xf4]); // mov eax, esi; out 0xf4, eax; hlt
    code
}

#[test]
fn the_rom_is_read_only_and_its_data_page_writable() {
    if !have_kvm("the_rom_is_read_only_and_its_data_page_writable") {
        return;
    }
    let k = kernel("vmi-rom", &ElfSpec::new(&rom_probe_guest()));
    for flavour in ["trap", "native"] {
        let out = pvrun_kernel(&k, &["--personality", "vmi", "--vmi-rom", flavour]);
        assert_eq!(out.code(), (3 << 1) | 1, "{flavour}: {out:#?}");
    }
    // The trap ROM's counters close --stats: this guest never called it.
    let out = pvrun_kernel(&k, &["--personality", "vmi", "--stats"]);
    assert!(
        out.stderr.contains("pvrun: stats: vCPU 0: vmi: traps=0 updates=0 deferred=0 alarms=0\n"),
        "{out:#?}"
    );
    // Without the personality the window is plain RAM: the write sticks.
    let out = pvrun_kernel(&k, &["--no-hypercall-probe"]);
    assert_eq!(out.code(), (2 << 1) | 1, "{out:#?}");
}

#[test]
fn vmi_options_are_checked() {
    let k = kernel("vmi-options", &ElfSpec::new(&rom_probe_guest()));
    pvrun_kernel(&k, &["--vmi-rom", "native"]).assert_error(2, &["--personality vmi", "--personality kvm"]);
    pvrun_kernel(&k, &["--personality", "none", "--vmi-corrupt", "checksum"])
        .assert_error(2, &["--personality vmi"]);
    pvrun_kernel(&k, &["--personality", "vmi", "--cpus", "2"]).assert_error(2, &["one vCPU", "--cpus 2"]);
    let out = pvrun_kernel(&k, &["--personality", "vmi", "--vmi-rom", "bogus"]);
    assert_eq!(out.code(), 2, "{out:#?}");
    if have_kvm("vmi_options_are_checked: native with 2 vCPUs") {
        let out = pvrun_kernel(&k, &["--personality", "vmi", "--vmi-rom", "native", "--cpus", "2"]);
        assert_eq!(out.code(), (3 << 1) | 1, "{out:#?}");
    }
}
