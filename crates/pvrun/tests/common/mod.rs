//! Helpers for the integration tests: a tiny ELF64 builder, hand-assembled
//! 32-bit guests, and a runner for the `pvrun` binary that never hangs.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where the test kernels are linked (and entered).
pub const LOAD_ADDR: u64 = 0x10_0000;

/// The PVH note to put in the ELF.
#[derive(Clone, Copy, Debug)]
pub enum PvhNote {
    /// No PT_NOTE at all.
    Omit,
    /// A 4-byte descriptor with this entry.
    Entry32(u32),
    /// An 8-byte descriptor with this entry.
    Entry64(u64),
    /// lguest64 notes ("Lguest"): this 64-bit entry, and the ABI version
    /// (major, minor) when given.
    Lguest(u64, Option<(u32, u32)>),
    /// Two 4-byte PVH entry notes, in this order.
    Twice(u32, u32),
}

/// What to build.
#[derive(Clone, Debug)]
pub struct ElfSpec {
    /// Bytes of the single PT_LOAD segment.
    pub code: Vec<u8>,
    /// Physical (and virtual) address of that segment.
    pub paddr: u64,
    /// The PVH entry note.
    pub note: PvhNote,
}

impl ElfSpec {
    /// A kernel at 1 MiB entered at its first byte through a 4-byte note.
    pub fn new(code: &[u8]) -> Self {
        ElfSpec { code: code.to_vec(), paddr: LOAD_ADDR, note: PvhNote::Entry32(LOAD_ADDR as u32) }
    }
}

/// One ELF note, name and descriptor padded to 4 bytes.
fn one_note(name: &[u8], n_type: u32, desc: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(name.len() as u32).to_le_bytes());
    v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    v.extend_from_slice(&n_type.to_le_bytes());
    v.extend_from_slice(name);
    v.resize(v.len().next_multiple_of(4), 0);
    v.extend_from_slice(desc);
    v.resize(v.len().next_multiple_of(4), 0);
    v
}

fn note_bytes(note: PvhNote) -> Option<Vec<u8>> {
    Some(match note {
        PvhNote::Omit => return None,
        // XEN_ELFNOTE_PHYS32_ENTRY
        PvhNote::Entry32(e) => one_note(b"Xen\0", 18, &e.to_le_bytes()),
        PvhNote::Entry64(e) => one_note(b"Xen\0", 18, &e.to_le_bytes()),
        PvhNote::Twice(a, b) => {
            let mut v = one_note(b"Xen\0", 18, &a.to_le_bytes());
            v.extend(one_note(b"Xen\0", 18, &b.to_le_bytes()));
            v
        }
        PvhNote::Lguest(entry, abi) => {
            let mut v = one_note(b"Lguest\0", 1, &entry.to_le_bytes());
            if let Some((major, minor)) = abi {
                let desc: Vec<u8> = major.to_le_bytes().into_iter().chain(minor.to_le_bytes()).collect();
                v.extend(one_note(b"Lguest\0", 2, &desc));
            }
            v
        }
    })
}

/// Builds an ET_EXEC, EM_X86_64 ELF64 with one PT_LOAD (and maybe a PT_NOTE).
pub fn build_elf(spec: &ElfSpec) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    const CODE_OFFSET: usize = 0x1000;
    let note = note_bytes(spec.note);
    let phnum = 1 + usize::from(note.is_some());
    let note_offset = EHDR + phnum * PHDR;

    let mut f = vec![0u8; CODE_OFFSET];
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI.
    f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    let put16 = |f: &mut Vec<u8>, off: usize, v: u16| f[off..off + 2].copy_from_slice(&v.to_le_bytes());
    let put32 = |f: &mut Vec<u8>, off: usize, v: u32| f[off..off + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |f: &mut Vec<u8>, off: usize, v: u64| f[off..off + 8].copy_from_slice(&v.to_le_bytes());
    put16(&mut f, 16, 2); // e_type = ET_EXEC
    put16(&mut f, 18, 62); // e_machine = EM_X86_64
    put32(&mut f, 20, 1); // e_version
    put64(&mut f, 24, spec.paddr); // e_entry
    put64(&mut f, 32, EHDR as u64); // e_phoff
    put64(&mut f, 40, 0); // e_shoff
    put32(&mut f, 48, 0); // e_flags
    put16(&mut f, 52, EHDR as u16); // e_ehsize
    put16(&mut f, 54, PHDR as u16); // e_phentsize
    put16(&mut f, 56, phnum as u16); // e_phnum
    put16(&mut f, 58, 64); // e_shentsize
    put16(&mut f, 60, 0); // e_shnum
    put16(&mut f, 62, 0); // e_shstrndx

    // PT_LOAD, R+X.
    let ph = EHDR;
    put32(&mut f, ph, 1);
    put32(&mut f, ph + 4, 5);
    put64(&mut f, ph + 8, CODE_OFFSET as u64);
    put64(&mut f, ph + 16, spec.paddr);
    put64(&mut f, ph + 24, spec.paddr);
    put64(&mut f, ph + 32, spec.code.len() as u64);
    put64(&mut f, ph + 40, spec.code.len() as u64);
    put64(&mut f, ph + 48, 0x1000);

    if let Some(note) = &note {
        let ph = EHDR + PHDR;
        put32(&mut f, ph, 4); // PT_NOTE
        put32(&mut f, ph + 4, 4);
        put64(&mut f, ph + 8, note_offset as u64);
        put64(&mut f, ph + 16, 0);
        put64(&mut f, ph + 24, 0);
        put64(&mut f, ph + 32, note.len() as u64);
        put64(&mut f, ph + 40, note.len() as u64);
        put64(&mut f, ph + 48, 4);
        f[note_offset..note_offset + note.len()].copy_from_slice(note);
    }
    assert!(note_offset + note.map_or(0, |n| n.len()) <= CODE_OFFSET);
    f.extend_from_slice(&spec.code);
    f
}

/// Hand-assembled 32-bit guest code.
pub mod asm {
    /// `mov al, v; out 0xf4, al; hlt`
    pub fn debug_exit(v: u8) -> Vec<u8> {
        vec![0xb0, v, 0xe6, 0xf4, 0xf4]
    }

    /// `mov dx, 0x3f8; (mov al, b; out dx, al)*`
    pub fn serial_write(text: &[u8]) -> Vec<u8> {
        let mut v = vec![0x66, 0xba, 0xf8, 0x03];
        for b in text {
            v.extend_from_slice(&[0xb0, *b, 0xee]);
        }
        v
    }

    /// `lidt [LOAD_ADDR + 0x100]` (a descriptor with limit 0), then `ud2`:
    /// #UD cannot be delivered, nor #GP, nor #DF → triple fault.
    pub fn triple_fault() -> Vec<u8> {
        let desc_addr = (super::LOAD_ADDR + 0x100) as u32;
        let mut v = vec![0x0f, 0x01, 0x1d];
        v.extend_from_slice(&desc_addr.to_le_bytes());
        v.extend_from_slice(&[0x0f, 0x0b]); // ud2
        v.resize(0x100, 0x90);
        v.extend_from_slice(&[0; 6]); // IDT descriptor: limit 0, base 0
        v
    }

    /// `mov eax, addr; jmp eax`
    pub fn jump_to(addr: u32) -> Vec<u8> {
        let mut v = vec![0xb8];
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&[0xff, 0xe0]);
        v
    }

    /// `cli; hlt; jmp $-1` (back to the hlt)
    pub fn cli_hlt() -> Vec<u8> {
        vec![0xfa, 0xf4, 0xeb, 0xfd]
    }

    /// `jmp $`
    pub fn spin() -> Vec<u8> {
        vec![0xeb, 0xfe]
    }

    /// `vmcall; jmp $`
    pub fn vmcall() -> Vec<u8> {
        vec![0x0f, 0x01, 0xc1, 0xeb, 0xfe]
    }

    /// The bench marker's "pvbm" magic.
    pub const BENCH_MAGIC: u32 = 0x6d62_7670;
    /// Debug-exit value of a guest whose RESET read 0 (no statistics): status 253.
    pub const EXIT_NO_STATS: u8 = 126;
    /// Debug-exit value of a guest whose RESET read neither the magic nor 0: status 251.
    pub const EXIT_NO_MAGIC: u8 = 125;

    /// `mov eax, cmd; out 0xf8, eax`
    pub fn bench_out(cmd: u32) -> Vec<u8> {
        let mut v = vec![0xb8];
        v.extend_from_slice(&cmd.to_le_bytes());
        v.extend_from_slice(&[0xe7, 0xf8]);
        v
    }

    /// `in eax, 0xf8`
    pub fn bench_in() -> Vec<u8> {
        vec![0xe5, 0xf8]
    }

    /// RESET, read the port, go on if it returned the magic; otherwise
    /// debug-exit with [`EXIT_NO_STATS`] (it read 0) or [`EXIT_NO_MAGIC`].
    pub fn bench_reset_expect_magic() -> Vec<u8> {
        let mut v = vec![0x31, 0xc0, 0xe7, 0xf8]; // xor eax, eax; out 0xf8, eax
        v.extend(bench_in());
        v.push(0x3d); // cmp eax, BENCH_MAGIC
        v.extend_from_slice(&BENCH_MAGIC.to_le_bytes());
        let mut fail = vec![0x85, 0xc0, 0x75, 0x05]; // test eax, eax; jnz +5
        fail.extend(debug_exit(EXIT_NO_STATS));
        fail.extend(debug_exit(EXIT_NO_MAGIC));
        v.extend_from_slice(&[0x74, fail.len() as u8]); // je past the failure exits
        v.extend(fail);
        v
    }

    /// A measured region: `mov eax, 1; out 0xf8, eax` (START), `inc eax`,
    /// `nops` × `nop`, `out 0xf8, eax` (STOP).
    pub fn bench_region(nops: usize) -> Vec<u8> {
        let mut v = bench_out(1);
        v.push(0x40); // inc eax
        v.extend(std::iter::repeat_n(0x90, nops));
        v.extend_from_slice(&[0xe7, 0xf8]);
        v
    }

    /// Prints EAX to COM1 as 8 hex digits; clobbers EAX, ECX, EDX and
    /// leaves the value in EBX. Needs no stack.
    pub fn print_hex_eax() -> Vec<u8> {
        vec![
            0x89, 0xc3, // mov ebx, eax
            0xb9, 0x08, 0x00, 0x00, 0x00, // mov ecx, 8
            0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
            0xc1, 0xc3, 0x04, // L: rol ebx, 4
            0x88, 0xd8, // mov al, bl
            0x24, 0x0f, // and al, 0xf
            0x3c, 0x0a, // cmp al, 10
            0x72, 0x02, // jb +2
            0x04, 0x07, // add al, 'a' - '0' - 10
            0x04, 0x30, // add al, '0'
            0xee, // out dx, al
            0x49, // dec ecx
            0x75, 0xed, // jnz L
        ]
    }

    /// `mov eax, leaf; xor ecx, ecx; cpuid`
    pub fn cpuid(leaf: u32) -> Vec<u8> {
        let mut v = vec![0xb8];
        v.extend_from_slice(&leaf.to_le_bytes());
        v.extend_from_slice(&[0x31, 0xc9, 0x0f, 0xa2]);
        v
    }

    /// Runs CPUID `leaf` (subleaf 0) and prints one line `eax ebx ecx edx`
    /// in hex to COM1 (parse it with [`super::parse_hex_words`]). Clobbers
    /// EAX..EDX, ESI, EDI, EBP; needs no stack.
    pub fn print_cpuid(leaf: u32) -> Vec<u8> {
        let mut v = cpuid(leaf);
        v.extend_from_slice(&[0x89, 0xde, 0x89, 0xcf, 0x89, 0xd5]); // mov esi, ebx; mov edi, ecx; mov ebp, edx
        v.extend(print_hex_eax());
        for reg in [0xf0u8, 0xf8, 0xe8] {
            // mov eax, esi / edi / ebp
            v.extend(serial_write(b" "));
            v.extend_from_slice(&[0x89, reg]);
            v.extend(print_hex_eax());
        }
        v.extend(serial_write(b"\n"));
        v
    }

    /// `out 0xf4, eax; hlt`: exit with EAX as the value.
    pub fn exit_eax() -> Vec<u8> {
        vec![0xe7, 0xf4, 0xf4]
    }

    /// `mov al, 0xfe; out 0x64, al; jmp $`: keyboard-controller reset.
    pub fn kbd_reset() -> Vec<u8> {
        vec![0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe]
    }

    /// Where the BSP copies an AP's real-mode trampoline (SIPI vector 0x08).
    pub const TRAMPOLINE: u32 = 0x8000;
    /// A byte the AP sets when it has run (below 1 MiB, real-mode reachable).
    pub const AP_FLAG: u32 = 0x9000;

    /// 32-bit: copies `len` bytes from `src` to [`TRAMPOLINE`]
    /// (`mov esi, src; mov edi, TRAMPOLINE; mov ecx, len; cld; rep movsb`).
    pub fn copy_trampoline(src: u32, len: u32) -> Vec<u8> {
        let mut v = vec![0xbe];
        v.extend_from_slice(&src.to_le_bytes());
        v.push(0xbf);
        v.extend_from_slice(&TRAMPOLINE.to_le_bytes());
        v.push(0xb9);
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&[0xfc, 0xf3, 0xa4]);
        v
    }

    /// 32-bit, paging off: `mov dword [addr], value`.
    pub fn store32(addr: u32, value: u32) -> Vec<u8> {
        let mut v = vec![0xc7, 0x05];
        v.extend_from_slice(&addr.to_le_bytes());
        v.extend_from_slice(&value.to_le_bytes());
        v
    }

    /// 32-bit: INIT, SIPI, SIPI to the CPU with APIC ID `apic_id` through
    /// the xAPIC ICR (0xfee00310 high, 0xfee00300 low), SIPI vector 0x08
    /// (start at [`TRAMPOLINE`]).
    pub fn init_sipi_sipi(apic_id: u8) -> Vec<u8> {
        const ICR_LOW: u32 = 0xfee0_0300;
        const ICR_HIGH: u32 = 0xfee0_0310;
        let dest = u32::from(apic_id) << 24;
        let mut v = Vec::new();
        for low in [0x4500, 0x4600 | (TRAMPOLINE >> 12), 0x4600 | (TRAMPOLINE >> 12)] {
            v.extend(store32(ICR_HIGH, dest));
            v.extend(store32(ICR_LOW, low));
        }
        v
    }

    /// 32-bit: waits until the byte at [`AP_FLAG`] is non-zero, then exits
    /// with it (`L: movzx eax, byte [AP_FLAG]; test eax, eax; jz L; out 0xf4, eax`).
    pub fn wait_ap_flag_and_exit() -> Vec<u8> {
        let mut v = vec![0x0f, 0xb6, 0x05];
        v.extend_from_slice(&AP_FLAG.to_le_bytes());
        v.extend_from_slice(&[0x85, 0xc0, 0x74, 0xf5]);
        v.extend(exit_eax());
        v
    }

    /// 16-bit real mode (the AP after SIPI): `xor ax, ax; mov ds, ax`.
    pub fn real_flat_ds() -> Vec<u8> {
        vec![0x31, 0xc0, 0x8e, 0xd8]
    }

    /// 16-bit real mode: reads its own APIC ID from CPUID.1:EBX[31:24] and
    /// stores `0x10 | id` at [`AP_FLAG`] (DS must be 0), then `cli; hlt`.
    pub fn real_report_apic_id() -> Vec<u8> {
        let mut v = vec![
            0x66, 0xb8, 0x01, 0x00, 0x00, 0x00, // mov eax, 1
            0x66, 0x31, 0xc9, // xor ecx, ecx
            0x0f, 0xa2, // cpuid
            0x66, 0xc1, 0xeb, 0x18, // shr ebx, 24
            0x80, 0xcb, 0x10, // or bl, 0x10
            0x88, 0x1e, // mov [AP_FLAG], bl
        ];
        v.extend_from_slice(&(AP_FLAG as u16).to_le_bytes());
        v.extend(cli_hlt());
        v
    }

    /// After a STOP: reads the four result words and prints them to COM1 as
    /// one line `w0 w1 w2 w3` in hex. `after[i]` runs right after word `i`
    /// was printed, with the word in EBX.
    pub fn bench_print_result(after: [&[u8]; 4]) -> Vec<u8> {
        let mut v = Vec::new();
        for (i, code) in after.iter().enumerate() {
            v.extend(bench_in());
            v.extend(print_hex_eax());
            v.extend_from_slice(code);
            v.extend(serial_write(if i == 3 { b"\n" } else { b" " }));
        }
        v
    }
}

/// Parses a line of space-separated hex words (as [`asm::print_cpuid`]
/// prints them).
pub fn parse_hex_words(line: &str) -> Vec<u32> {
    line.split(' ').map(|w| u32::from_str_radix(w, 16).unwrap_or_else(|_| panic!("{line:?}"))).collect()
}

/// Parses the lines printed by [`asm::bench_print_result`] into
/// `(insn delta, exits delta)`.
pub fn parse_bench_lines(stdout: &str) -> Vec<(u64, u64)> {
    stdout
        .lines()
        .map(|line| {
            let w: Vec<u64> = line
                .split(' ')
                .map(|w| u64::from_str_radix(w, 16).unwrap_or_else(|_| panic!("{line:?}")))
                .collect();
            assert_eq!(w.len(), 4, "{line:?}");
            (w[1] << 32 | w[0], w[3] << 32 | w[2])
        })
        .collect()
}

/// A fresh scratch directory for one test, under cargo's target/tmp (so
/// `cargo clean` removes it).
pub fn scratch_dir(test: &str) -> PathBuf {
    scratch_dir_in(Path::new(env!("CARGO_TARGET_TMPDIR")), test)
}

/// A fresh, world-readable scratch directory for one test under `base`.
pub fn scratch_dir_in(base: &Path, test: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = base.join(format!(
        "pvrun-test-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        test
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    set_mode(&dir, 0o755);
    dir
}

/// chmod.
pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes `bytes` to a world-readable file `name` in a scratch directory.
pub fn write_file(test: &str, name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir(test).join(name);
    std::fs::write(&path, bytes).unwrap();
    set_mode(&path, 0o644);
    path
}

/// Builds `spec` into a kernel file.
pub fn kernel(test: &str, spec: &ElfSpec) -> PathBuf {
    write_file(test, "kernel.elf", &build_elf(spec))
}

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Outcome {
    /// The exit status.
    pub status: ExitStatus,
    /// stdout.
    pub stdout: String,
    /// stderr.
    pub stderr: String,
    /// Wall time.
    pub elapsed: Duration,
}

impl Outcome {
    /// The exit code (panics if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status.code().unwrap_or_else(|| panic!("pvrun was killed by a signal: {self:?}"))
    }

    /// Asserts the exit code and that stderr is exactly one line
    /// `pvrun: error: ...` containing every one of `words`.
    pub fn assert_error(&self, code: i32, words: &[&str]) {
        assert_eq!(self.code(), code, "exit status; {self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "stderr must be one line; {self:#?}");
        assert!(self.stderr.ends_with('\n'), "{self:#?}");
        assert!(lines[0].starts_with("pvrun: error: "), "stderr must start with 'pvrun: error: '; {self:#?}");
        for w in words {
            assert!(lines[0].contains(w), "stderr must contain {w:?}; {self:#?}");
        }
    }
}

/// The binary under test.
pub fn pvrun_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pvrun")
}

/// Runs `cmd` with a hard limit, killing it if it overstays (the test then
/// fails instead of hanging). pvrun keeps its hypercall verdict under the
/// tests' own directory unless `cmd` names another.
pub fn run_cmd(mut cmd: Command, limit: Duration) -> Outcome {
    if !cmd.get_envs().any(|(k, _)| k == "PVRUN_CACHE_DIR") {
        cmd.env("PVRUN_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("pvrun-cache"));
    }
    let start = Instant::now();
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pvrun");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let status = child.wait().unwrap();
            panic!(
                "pvrun did not exit within {limit:?} (killed: {status:?}); stderr so far: {}",
                err_reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let elapsed = start.elapsed();
    Outcome { status, stdout: out_reader.join().unwrap(), stderr: err_reader.join().unwrap(), elapsed }
}

/// Runs `pvrun args...` with a 20 s hard limit.
pub fn pvrun(args: &[&str]) -> Outcome {
    let mut cmd = Command::new(pvrun_bin());
    cmd.args(args);
    run_cmd(cmd, Duration::from_secs(20))
}

/// Runs `pvrun args... kernel`.
pub fn pvrun_kernel(kernel: &Path, args: &[&str]) -> Outcome {
    let mut cmd = Command::new(pvrun_bin());
    cmd.args(args).arg(kernel);
    run_cmd(cmd, Duration::from_secs(20))
}

/// True if /dev/kvm exists; otherwise prints a loud SKIP line for `test`.
pub fn have_kvm(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        true
    } else {
        skip(&format!("/dev/kvm absent: {test}"));
        false
    }
}

/// Prints a SKIP line straight to the process's stderr, past the test harness's
/// output capture, so a skipped test is visible in every run.
pub fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIP: {why}");
}
