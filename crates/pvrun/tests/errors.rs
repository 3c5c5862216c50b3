//! End-to-end tests of the `pvrun` binary: crafted guests for each way a run
//! can end, and crafted inputs for each error.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{asm, have_kvm, kernel, pvrun, pvrun_kernel, skip, write_file, ElfSpec, PvhNote};

// ---------------------------------------------------------------- guests

#[test]
fn debug_exit_zero_gives_status_1() {
    if !have_kvm("debug_exit_zero_gives_status_1") {
        return;
    }
    let k = kernel("exit0", &ElfSpec::new(&asm::debug_exit(0)));
    let out = pvrun_kernel(&k, &[]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stderr, "", "{out:#?}");
    assert_eq!(out.stdout, "");
}

#[test]
fn serial_output_reaches_stdout() {
    if !have_kvm("serial_output_reaches_stdout") {
        return;
    }
    let mut code = asm::serial_write(b"hi\n");
    code.extend(asm::debug_exit(0));
    let k = kernel("serial", &ElfSpec::new(&code));
    let out = pvrun_kernel(&k, &[]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stdout, "hi\n", "{out:#?}");
    assert_eq!(out.stderr, "", "{out:#?}");
}

#[test]
fn serial_polling_the_lsr_works() {
    if !have_kvm("serial_polling_the_lsr_works") {
        return;
    }
    // mov dx, 0x3fd; wait: in al, dx; test al, 0x20; jz wait; then write.
    let mut code = vec![0x66, 0xba, 0xfd, 0x03, 0xec, 0xa8, 0x20, 0x74, 0xfb];
    code.extend(asm::serial_write(b"ok\n"));
    code.extend(asm::debug_exit(0));
    let out = pvrun_kernel(&kernel("lsr", &ElfSpec::new(&code)), &[]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stdout, "ok\n", "{out:#?}");
}

#[test]
fn memory_above_the_32bit_gap_boots() {
    if !have_kvm("memory_above_the_32bit_gap_boots") {
        return;
    }
    let k = kernel("bigmem", &ElfSpec::new(&asm::debug_exit(4)));
    for mem in ["3072", "4096", "16384"] {
        let out = pvrun_kernel(&k, &["--mem", mem]);
        assert_eq!(out.code(), 9, "--mem {mem}: {out:#?}");
    }
}

#[test]
fn partial_serial_line_is_flushed_at_exit() {
    if !have_kvm("partial_serial_line_is_flushed_at_exit") {
        return;
    }
    let mut code = asm::serial_write(b"a\nbc");
    code.extend(asm::debug_exit(0));
    let k = kernel("partial", &ElfSpec::new(&code));
    let out = pvrun_kernel(&k, &[]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stdout, "a\nbc", "{out:#?}");
}

#[test]
fn debug_exit_three_gives_status_7() {
    if !have_kvm("debug_exit_three_gives_status_7") {
        return;
    }
    let k = kernel("exit3", &ElfSpec::new(&asm::debug_exit(3)));
    let out = pvrun_kernel(&k, &["--mem", "16", "--cmdline", "x=y"]);
    assert_eq!(out.code(), 7, "{out:#?}");
    assert_eq!(out.stderr, "", "{out:#?}");
}

#[test]
fn eight_byte_pvh_note_works() {
    if !have_kvm("eight_byte_pvh_note_works") {
        return;
    }
    let spec = ElfSpec { note: PvhNote::Entry64(common::LOAD_ADDR), ..ElfSpec::new(&asm::debug_exit(2)) };
    let out = pvrun_kernel(&kernel("note64", &spec), &[]);
    assert_eq!(out.code(), 5, "{out:#?}");
}

/// Two PVH notes: the same entry twice is fine; two different entries are
/// refused before KVM is touched (which one a loader takes is not defined),
/// whether the second lies in RAM or not.
#[test]
fn disagreeing_pvh_notes_are_refused() {
    let load = common::LOAD_ADDR as u32;
    for second in [0xffff_fff0, 0, load + 16] {
        let spec = ElfSpec { note: PvhNote::Twice(load, second), ..ElfSpec::new(&asm::debug_exit(2)) };
        let out = pvrun_kernel(&kernel("two-notes", &spec), &[]);
        out.assert_error(2, &["two PVH entry notes that disagree", &format!("{second:#x}")]);
    }
    if !have_kvm("disagreeing_pvh_notes_are_refused: the same note twice") {
        return;
    }
    let spec = ElfSpec { note: PvhNote::Twice(load, load), ..ElfSpec::new(&asm::debug_exit(2)) };
    let out = pvrun_kernel(&kernel("same-note-twice", &spec), &[]);
    assert_eq!(out.code(), 5, "{out:#?}");
}

#[test]
fn ebx_points_at_start_info() {
    if !have_kvm("ebx_points_at_start_info") {
        return;
    }
    // mov eax, [ebx] (the magic); cmp eax, 0x336ec578; jne fail;
    // mov al, 9; out 0xf4, al; fail: mov al, 1; out 0xf4, al
    let mut code = vec![0x8b, 0x03, 0x3d];
    code.extend_from_slice(&0x336e_c578u32.to_le_bytes());
    code.extend_from_slice(&[0x75, 0x04]);
    code.extend(asm::debug_exit(9)[..4].iter());
    code.extend(asm::debug_exit(1));
    let out = pvrun_kernel(&kernel("ebx", &ElfSpec::new(&code)), &[]);
    assert_eq!(out.code(), 19, "{out:#?}");
}

#[test]
fn triple_fault_is_a_crash_with_registers() {
    if !have_kvm("triple_fault_is_a_crash_with_registers") {
        return;
    }
    let k = kernel("triple", &ElfSpec::new(&asm::triple_fault()));
    let out = pvrun_kernel(&k, &[]);
    out.assert_error(
        4,
        &[
            "triple fault",
            "RIP",
            "rax=",
            "rbx=0x6000",
            "rcx=",
            "rdx=",
            "rsi=",
            "rdi=",
            "rsp=",
            "rbp=",
            "rip=0x",
            "rflags=",
            "cr0=0x11",
            "cr3=",
            "cr4=",
            "efer=",
        ],
    );
}

#[test]
fn jump_outside_ram_is_an_internal_error() {
    if !have_kvm("jump_outside_ram_is_an_internal_error") {
        return;
    }
    let k = kernel("internal", &ElfSpec::new(&asm::jump_to(0xd000_0000)));
    let out = pvrun_kernel(&k, &[]);
    out.assert_error(4, &["internal error", "suberror 1 (emulation failure)", "RIP 0xd0000000"]);
}

#[test]
fn int3_without_an_idt_is_a_crash() {
    if !have_kvm("int3_without_an_idt_is_a_crash") {
        return;
    }
    // Real KVM delivers #BP, fails (no IDT) and triple faults; this host's
    // instruction emulator gives up on int3 with an emulation failure
    // instead. Either way it is a crash, reported with RIP.
    let k = kernel("int3", &ElfSpec::new(&[0xcc]));
    let out = pvrun_kernel(&k, &[]);
    out.assert_error(4, &["guest crashed", "RIP 0x100000"]);
    assert!(out.stderr.contains("triple fault") || out.stderr.contains("emulation failure"), "{out:#?}");
}

#[test]
fn hlt_with_interrupts_off_times_out() {
    if !have_kvm("hlt_with_interrupts_off_times_out") {
        return;
    }
    let k = kernel("clihlt", &ElfSpec::new(&asm::cli_hlt()));
    let out = pvrun_kernel(&k, &["--timeout", "1"]);
    out.assert_error(124, &["did not finish within 1 s", "RIP 0x10000"]);
    assert!(out.elapsed < Duration::from_secs(3), "{out:#?}");
}

#[test]
fn spin_loop_times_out() {
    if !have_kvm("spin_loop_times_out") {
        return;
    }
    let k = kernel("spin", &ElfSpec::new(&asm::spin()));
    let out = pvrun_kernel(&k, &["--timeout", "0.5"]);
    out.assert_error(124, &["did not finish within 0.5 s", "RIP 0x100000"]);
    assert!(out.elapsed < Duration::from_secs(3), "{out:#?}");
}

#[test]
fn vmcall_times_out() {
    if !have_kvm("vmcall_times_out") {
        return;
    }
    let k = kernel("vmcall", &ElfSpec::new(&asm::vmcall()));
    let out = pvrun_kernel(&k, &["--timeout", "1"]);
    out.assert_error(124, &["did not finish within 1 s"]);
    assert!(out.elapsed < Duration::from_secs(3), "{out:#?}");
}

// ---------------------------------------------------------------- bad input

#[test]
fn missing_kernel_file() {
    let out = pvrun(&["/nonexistent/kernel.elf"]);
    out.assert_error(2, &["cannot read kernel /nonexistent/kernel.elf: No such file or directory"]);
}

#[test]
fn kernel_that_is_not_an_elf() {
    let bytes: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let k = write_file("notelf", "random.bin", &bytes);
    let out = pvrun_kernel(&k, &[]);
    out.assert_error(2, &["not an ELF", "random.bin"]);
}

#[test]
fn kernel_without_pvh_note() {
    let spec = ElfSpec { note: PvhNote::Omit, ..ElfSpec::new(&asm::debug_exit(0)) };
    let out = pvrun_kernel(&kernel("nonote", &spec), &[]);
    out.assert_error(2, &["no PVH entry point", "XEN_ELFNOTE_PHYS32_ENTRY"]);
}

#[test]
fn segment_outside_ram() {
    let spec = ElfSpec { paddr: 64 << 30, ..ElfSpec::new(&asm::debug_exit(0)) };
    let out = pvrun_kernel(&kernel("farseg", &spec), &[]);
    out.assert_error(2, &["0x1000000000", "outside guest RAM", "128 MiB"]);
}

#[test]
fn mem_zero_is_rejected() {
    let k = kernel("mem0", &ElfSpec::new(&asm::debug_exit(0)));
    let out = pvrun_kernel(&k, &["--mem", "0"]);
    out.assert_error(2, &["0 MiB", "between 16 and 16384 MiB"]);
}

#[test]
fn mem_huge_is_rejected() {
    let k = kernel("memhuge", &ElfSpec::new(&asm::debug_exit(0)));
    let out = pvrun_kernel(&k, &["--mem", "100000000"]);
    out.assert_error(2, &["100000000 MiB", "between 16 and 16384 MiB"]);
}

#[test]
fn mem_too_small_is_rejected() {
    let k = kernel("mem8", &ElfSpec::new(&asm::debug_exit(0)));
    let out = pvrun_kernel(&k, &["--mem", "8"]);
    out.assert_error(2, &["8 MiB", "between 16 and 16384 MiB"]);
}

#[test]
fn mem_not_a_number_is_a_usage_error() {
    let out = pvrun(&["--mem", "lots", "k"]);
    out.assert_error(2, &["--mem"]);
}

#[test]
fn missing_kernel_argument_is_a_usage_error() {
    let out = pvrun(&[]);
    out.assert_error(2, &["<KERNEL>"]);
}

#[test]
fn zero_timeout_is_rejected() {
    let out = pvrun(&["--timeout", "0", "k"]);
    out.assert_error(2, &["timeout"]);
}

#[test]
fn command_line_too_long() {
    let k = kernel("cmdline", &ElfSpec::new(&asm::debug_exit(0)));
    let long = "x".repeat(4096);
    let out = pvrun_kernel(&k, &["--cmdline", &long]);
    out.assert_error(2, &["command line", "4096 bytes", "4095"]);
}

#[test]
fn help_and_version() {
    let out = pvrun(&["--help"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    for w in [
        "--mem",
        "--cmdline",
        "--timeout",
        "--kvm",
        "--cpus",
        "--personality",
        "--cpuid-mask",
        "--no-hypercall-probe",
        "--probe-host",
        "0xf4",
        "0x64",
        "124",
        "steal_time (5)",
    ] {
        assert!(out.stdout.contains(w), "help mentions {w}: {}", out.stdout);
    }
    let out = pvrun(&["--version"]);
    assert_eq!(out.code(), 0, "{out:#?}");
    assert!(out.stdout.starts_with("pvrun "), "{out:#?}");
}

// ---------------------------------------------------------------- KVM unavailable

#[test]
fn kvm_device_missing() {
    let k = kernel("kvmmissing", &ElfSpec::new(&asm::debug_exit(0)));
    let out = pvrun_kernel(&k, &["--kvm", "/nonexistent"]);
    out.assert_error(6, &["/nonexistent", "not found", "KVM is enabled"]);
}

#[test]
fn kvm_path_is_not_kvm() {
    let k = kernel("kvmnull", &ElfSpec::new(&asm::debug_exit(0)));
    let out = pvrun_kernel(&k, &["--kvm", "/dev/null"]);
    out.assert_error(6, &["/dev/null", "not a KVM device"]);
}

#[test]
fn kvm_permission_denied() {
    let test = "kvm_permission_denied";
    if !have_kvm(test) {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip(&format!("not root, cannot switch to user nobody: {test}"));
        return;
    }
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(setpriv) = setpriv else {
        skip(&format!("setpriv not installed: {test}"));
        return;
    };
    // The binary must be reachable by nobody.
    let bin = std::path::Path::new(common::pvrun_bin());
    // Under /tmp, not target/tmp: nobody must be able to reach the files.
    let dir = common::scratch_dir_in(&std::env::temp_dir(), "perm");
    let bin_copy = dir.join("pvrun");
    std::fs::copy(bin, &bin_copy).unwrap();
    common::set_mode(&bin_copy, 0o755);
    let k = dir.join("kernel.elf");
    std::fs::write(&k, common::build_elf(&ElfSpec::new(&asm::debug_exit(0)))).unwrap();
    common::set_mode(&k, 0o644);

    // Probe first: is /dev/kvm actually closed to nobody here?
    let mut probe = Command::new(setpriv);
    probe.args(["--reuid=65534", "--regid=65534", "--clear-groups", "test", "-w", "/dev/kvm"]);
    let probe = common::run_cmd(probe, Duration::from_secs(10));
    if probe.status.success() {
        skip(&format!("/dev/kvm is writable by nobody on this host: {test}"));
        return;
    }

    let mut cmd = Command::new(setpriv);
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&bin_copy).arg(&k);
    let out = common::run_cmd(cmd, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    out.assert_error(6, &["permission denied", "/dev/kvm", "kvm"]);
}
