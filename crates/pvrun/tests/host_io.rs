//! What the host does to pvrun's own input and output: a stdout that stalls
//! or fails, a stderr on a full device, kernel files that are not files.
//! Each ends with the documented status, at most one `pvrun: error:` line,
//! in bounded time, and never a panic.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{have_kvm, kernel, pvrun_bin, ElfSpec};

/// 32-bit: writes `count` bytes 'x' to COM1 without a newline, then "tail"
/// (no newline either), then exits with 3.
fn flood_guest(count: u32) -> Vec<u8> {
    let mut code = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    code.push(0xb9); // mov ecx, count
    code.extend_from_slice(&count.to_le_bytes());
    code.extend_from_slice(&[0xb0, b'x', 0xee]); // l: mov al, 'x'; out dx, al
    code.extend_from_slice(&[0xe2, 0xfb]); // loop l
    for b in b"tail" {
        code.extend_from_slice(&[0xb0, *b, 0xee]);
    }
    code.extend_from_slice(&[0xb0, 3, 0xe6, 0xf4, 0xf4]); // mov al, 3; out 0xf4, al; hlt
    code
}

/// A stdout pipe nobody reads: the guest's output fills it, the rest waits in
/// pvrun's queue, and pvrun still ends with the guest's status soon after the
/// guest does (the final drain gives up on a stalled reader), blaming nobody.
#[test]
fn a_stalled_stdout_neither_stalls_the_guest_nor_outlives_the_run() {
    if !have_kvm("a_stalled_stdout_neither_stalls_the_guest_nor_outlives_the_run") {
        return;
    }
    let k = kernel("stalled-stdout", &ElfSpec::new(&flood_guest(200_000)));
    let start = Instant::now();
    let mut child = Command::new(pvrun_bin())
        .args(["--timeout", "20"])
        .arg(&k)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pvrun");
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    // Hold stdout open, unread, until pvrun is done (or overstays).
    let _stdout = child.stdout.take().unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("pvrun did not end with its stdout stalled");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    let stderr = err_reader.join().unwrap();
    assert_eq!(status.code(), Some(7), "the guest's status; stderr: {stderr}");
    assert_eq!(stderr, "", "a stalled reader is no error of the guest's");
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

/// Kernel "files" that are not regular files are refused before any read:
/// a FIFO (opening it would wait for a writer), a character device (/dev/zero
/// would never end), a directory.
#[test]
fn kernels_that_are_not_regular_files_are_refused_unread() {
    let dir = common::scratch_dir("not-a-file");
    let fifo = dir.join("kernel.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        common::skip("mkfifo unavailable: kernels_that_are_not_regular_files_are_refused_unread (FIFO case)");
    } else {
        let out = common::pvrun(&[fifo.to_str().unwrap()]);
        out.assert_error(2, &["is not a regular file (it is a FIFO)"]);
        assert!(out.elapsed < Duration::from_secs(2), "{out:#?}");
    }
    common::pvrun(&["/dev/zero"]).assert_error(2, &["/dev/zero", "character device"]);
    common::pvrun(&[dir.to_str().unwrap()]).assert_error(2, &["directory"]);
}

/// A kernel file of 2 GiB (sparse: a tiny ELF, then a hole) costs no more
/// memory than a small one: pvrun reads the headers, the notes and the
/// segments, not the file. Run under a 1 GiB address-space limit, which a
/// read of the whole file could not fit in.
#[test]
fn a_huge_sparse_kernel_is_not_read_whole() {
    if !have_kvm("a_huge_sparse_kernel_is_not_read_whole") {
        return;
    }
    let k = kernel("huge-sparse", &ElfSpec::new(&common::asm::debug_exit(4)));
    std::fs::OpenOptions::new().write(true).open(&k).unwrap().set_len(2 << 30).unwrap();
    if Command::new("prlimit").arg("--version").output().is_err() {
        common::skip("prlimit unavailable: a_huge_sparse_kernel_is_not_read_whole");
        return;
    }
    let mut cmd = Command::new("prlimit");
    cmd.args(["--as=1073741824", "--", pvrun_bin(), "--mem", "64", "--no-hypercall-probe"]).arg(&k);
    let out = common::run_cmd(cmd, Duration::from_secs(20));
    assert_eq!(out.code(), (4 << 1) | 1, "{out:#?}");
    assert!(out.elapsed < Duration::from_secs(5), "{out:#?}");
}

/// Runs pvrun with stdout and/or stderr on /dev/full.
fn with_full(args: &[&str], stdout_full: bool, stderr_full: bool) -> std::process::ExitStatus {
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let mut cmd = Command::new(pvrun_bin());
    cmd.args(args).stdin(Stdio::null());
    cmd.stdout(if stdout_full { Stdio::from(full()) } else { Stdio::null() });
    cmd.stderr(if stderr_full { Stdio::from(full()) } else { Stdio::null() });
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("pvrun {args:?} did not end");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A full stdout or stderr is an outcome, never a panic (status 101): the
/// error's own status when stderr cannot take its line, 70 when stdout
/// cannot take `--probe-host`'s report or `--help`, the guest's own status
/// when stdout cannot take its serial output.
#[test]
fn full_output_devices_are_outcomes_not_panics() {
    if !std::path::Path::new("/dev/full").exists() {
        common::skip("/dev/full absent: full_output_devices_are_outcomes_not_panics");
        return;
    }
    assert_eq!(with_full(&["/nonexistent-kernel"], false, true).code(), Some(2));
    assert_eq!(with_full(&["--mem", "1", "k"], true, true).code(), Some(2));
    assert_eq!(with_full(&["--help"], true, false).code(), Some(70));
    if !have_kvm("full_output_devices_are_outcomes_not_panics: guests") {
        return;
    }
    assert_eq!(with_full(&["--probe-host", "--no-hypercall-probe"], true, false).code(), Some(70));
    let mut code = common::asm::serial_write(b"hello\n");
    code.extend(common::asm::debug_exit(6));
    let k = kernel("full-stdout", &ElfSpec::new(&code));
    let k = k.to_str().unwrap();
    assert_eq!(with_full(&[k], true, false).code(), Some(13), "serial output lost, the guest's status kept");
    assert_eq!(with_full(&["--stats", k], true, true).code(), Some(13));
    let crash = kernel("full-stderr-crash", &ElfSpec::new(&common::asm::triple_fault()));
    assert_eq!(with_full(&[crash.to_str().unwrap()], false, true).code(), Some(4));
}

/// Serial output the host could not take is reported, once, after the run.
#[test]
fn lost_serial_output_is_reported() {
    if !std::path::Path::new("/dev/full").exists() || !have_kvm("lost_serial_output_is_reported") {
        return;
    }
    let mut code = common::asm::serial_write(b"hello\n");
    code.extend(common::asm::debug_exit(6));
    let k = kernel("lost-output", &ElfSpec::new(&code));
    let out = Command::new(pvrun_bin())
        .arg(&k)
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap()))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(13));
    assert_eq!(
        stderr,
        "pvrun: serial output: 6 bytes lost (stdout failed, or stalled with 16 MiB waiting)\n"
    );
}

/// `--escape-serial`: what could drive the terminal arrives as `\xNN`; text,
/// newlines and tabs as they are. Without it, the bytes pass unchanged.
#[test]
fn escape_serial_shows_control_characters() {
    if !have_kvm("escape_serial_shows_control_characters") {
        return;
    }
    let mut code = common::asm::serial_write(b"\x1b[2Jhi\tthere\x07\n");
    code.extend(common::asm::debug_exit(0));
    let k = kernel("escape-serial", &ElfSpec::new(&code));
    let out = common::pvrun_kernel(&k, &["--escape-serial"]);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stdout, "\\x1b[2Jhi\tthere\\x07\n");
    let raw = common::pvrun_kernel(&k, &[]);
    assert_eq!(raw.stdout, "\x1b[2Jhi\tthere\x07\n");
}

/// A partial line (a prompt) reaches stdout once the guest has been idle a
/// moment, while the guest still runs: pvrun does not wait for its newline.
#[test]
fn a_prompt_without_a_newline_reaches_stdout_while_the_guest_runs() {
    if !have_kvm("a_prompt_without_a_newline_reaches_stdout_while_the_guest_runs") {
        return;
    }
    let mut code = common::asm::serial_write(b"login: ");
    code.extend(common::asm::spin());
    let k = kernel("prompt", &ElfSpec::new(&code));
    let mut child = Command::new(pvrun_bin())
        .args(["--timeout", "30"])
        .arg(&k)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pvrun");
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok(n @ 1..) = stdout.read(&mut buf) {
            if tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.len() < 7 && Instant::now() < deadline {
        if let Ok(bytes) = rx.recv_timeout(Duration::from_millis(50)) {
            seen.extend(bytes);
        }
    }
    let running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(String::from_utf8_lossy(&seen), "login: ", "the prompt, before any newline");
    assert!(running, "seen while the guest was still running");
}
