//! pvrun's start-up and per-exit cost, side by side with a minimal KVM_RUN
//! loop built in the same run (this binary, started with `--bare N`: one VM,
//! 2 MiB, one vCPU, nothing else; with `--irqchip`, also KVM's in-kernel
//! irqchip and PIT, as pvrun's VM has).
//!
//! `cargo bench -p pvrun --bench startup [-- --runs N --exits M]`
//!
//! - **start-up**: from just before the process is spawned to its first
//!   `KVM_RUN` (the child prints CLOCK_MONOTONIC there: pvrun with
//!   `PVRUN_STARTUP_STAMP`), with pvrun's default personality (kvm), its
//!   hypercall verdict kept from a first run (as on any launch but a host's
//!   first);
//! - **per exit**: a guest that makes M `out`s to an unclaimed port, against
//!   one that makes none, wall time of the whole process, divided by M.
//!
//! - **whole run**: spawn to exit, for a guest that exits at once; it
//!   includes tearing the VM down, where KVM's in-kernel irqchip is
//!   costly on some hosts (hence the second bare loop, with one).
//!
//! Medians of N runs (20 by default), the kinds interleaved run by run so
//! that a noisy moment hits them alike; ratios are pvrun / bare loop.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// 32-bit guest code: `exits` writes to port 0x80, then the debug exit.
fn guest_code(exits: u32) -> Vec<u8> {
    let mut c = vec![0xb9]; // mov ecx, exits
    c.extend_from_slice(&exits.to_le_bytes());
    c.extend_from_slice(&[0xe3, 0x04]); // jecxz done
    c.extend_from_slice(&[0xe6, 0x80]); // l: out 0x80, al
    c.extend_from_slice(&[0xe2, 0xfc]); // loop l
    c.extend_from_slice(&[0xb0, 0x00, 0xe6, 0xf4, 0xf4]); // done: mov al, 0; out 0xf4, al; hlt
    c
}

/// An ELF64 with one PT_LOAD at 1 MiB and a PVH entry note, entered at its start.
fn pvh_elf(code: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    let mut note = Vec::new();
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&4u32.to_le_bytes());
    note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
    note.extend_from_slice(b"Xen\0");
    note.extend_from_slice(&(LOAD as u32).to_le_bytes());
    let mut f = vec![0u8; 0x1000];
    f[..7].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1]);
    let put = |f: &mut Vec<u8>, at: usize, v: &[u8]| f[at..at + v.len()].copy_from_slice(v);
    put(&mut f, 16, &2u16.to_le_bytes());
    put(&mut f, 18, &62u16.to_le_bytes());
    put(&mut f, 20, &1u32.to_le_bytes());
    put(&mut f, 24, &LOAD.to_le_bytes());
    put(&mut f, 32, &64u64.to_le_bytes());
    put(&mut f, 52, &64u16.to_le_bytes());
    put(&mut f, 54, &56u16.to_le_bytes());
    put(&mut f, 56, &2u16.to_le_bytes());
    let ph = |f: &mut Vec<u8>, at: usize, kind: u32, flags: u32, off: u64, addr: u64, len: u64| {
        put(f, at, &kind.to_le_bytes());
        put(f, at + 4, &flags.to_le_bytes());
        put(f, at + 8, &off.to_le_bytes());
        put(f, at + 16, &addr.to_le_bytes());
        put(f, at + 24, &addr.to_le_bytes());
        put(f, at + 32, &len.to_le_bytes());
        put(f, at + 40, &len.to_le_bytes());
    };
    ph(&mut f, 64, 1, 5, 0x1000, LOAD, code.len() as u64);
    ph(&mut f, 120, 4, 4, 176, 0, note.len() as u64);
    put(&mut f, 176, &note);
    f.extend_from_slice(code);
    f
}

/// `--bare N [--irqchip]`: the minimal KVM_RUN loop.
fn bare(exits: u32, irqchip: bool) {
    use kvm_bindings::{kvm_segment, kvm_userspace_memory_region};
    use kvm_ioctls::{Kvm, VcpuExit};

    const MEM: usize = 2 << 20;
    const CODE: u64 = 0x1000;
    let kvm = Kvm::new().expect("open /dev/kvm");
    let vm = kvm.create_vm().expect("create a VM");
    // SAFETY: a private anonymous mapping, checked below.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(host, libc::MAP_FAILED, "mmap");
    let code = guest_code(exits);
    // SAFETY: the mapping is MEM bytes long; the code fits at CODE.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), (host as *mut u8).add(CODE as usize), code.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: the region is a live mapping that outlives the VM (the process ends first).
    unsafe { vm.set_user_memory_region(region) }.expect("memory");
    if irqchip {
        vm.set_tss_address(0xfffb_d000).expect("TSS");
        vm.create_irq_chip().expect("irqchip");
        vm.create_pit2(kvm_bindings::kvm_pit_config::default()).expect("PIT");
    }
    let mut vcpu = vm.create_vcpu(0).expect("vCPU");
    let mut sregs = vcpu.get_sregs().expect("sregs");
    let flat = |selector: u16, type_: u8| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = flat(0x08, 0xb);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) =
        (flat(0x10, 3), flat(0x10, 3), flat(0x10, 3), flat(0x10, 3), flat(0x10, 3));
    sregs.cr0 |= 1;
    vcpu.set_sregs(&sregs).expect("set sregs");
    let mut regs = vcpu.get_regs().expect("regs");
    (regs.rip, regs.rflags) = (CODE, 2);
    vcpu.set_regs(&regs).expect("set regs");
    eprintln!("bare: first KVM_RUN at {}", monotonic_ns());
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(0xf4, _) => break,
            VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

/// One run: the child's start-up (ns from spawn to its first KVM_RUN) and
/// its whole wall time (ns). pvrun ends with status (0 << 1) | 1 for the
/// guest's debug exit 0; the bare loop with 0.
fn run_once((mut cmd, expect): (Command, i32)) -> (u64, u64) {
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let t0 = monotonic_ns();
    let mut child = cmd.spawn().expect("spawn");
    let mut err = String::new();
    let _ = child.stderr.take().expect("stderr").read_to_string(&mut err);
    let status = child.wait().expect("wait");
    let t1 = monotonic_ns();
    assert_eq!(status.code(), Some(expect), "the guest's debug exit 0; stderr: {err}");
    let first = err
        .lines()
        .find_map(|l| l.split_once("first KVM_RUN at ").and_then(|(_, ns)| ns.trim().parse::<u64>().ok()))
        .unwrap_or_else(|| panic!("no start-up stamp in: {err}"));
    (first.saturating_sub(t0), t1 - t0)
}

fn median(mut v: Vec<u64>) -> f64 {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    }
}

/// Medians of one kind of run.
struct Series {
    startup: f64,
    total: f64,
}

/// Runs each of `kinds` `runs` times, interleaved; the medians of each.
fn series(runs: usize, kinds: &[&dyn Fn() -> (Command, i32)]) -> Vec<Series> {
    let mut samples = vec![(Vec::new(), Vec::new()); kinds.len()];
    for _ in 0..runs {
        for (kind, (s, t)) in kinds.iter().zip(&mut samples) {
            let (startup, total) = run_once(kind());
            s.push(startup);
            t.push(total);
        }
    }
    samples.into_iter().map(|(s, t)| Series { startup: median(s), total: median(t) }).collect()
}

fn arg(args: &[String], name: &str, default: u32) -> u32 {
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--bare") {
        bare(
            args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(0),
            args.iter().any(|a| a == "--irqchip"),
        );
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm absent: the start-up benchmark needs KVM");
        return;
    }
    let runs = arg(&args, "--runs", 20) as usize;
    let exits = arg(&args, "--exits", 20_000);
    let me = std::env::current_exe().expect("own path");
    let pvrun = PathBuf::from(env!("CARGO_BIN_EXE_pvrun"));
    let dir = std::env::temp_dir().join(format!("pvrun-startup-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let cache = dir.join("cache");
    let kernel = |n: u32| {
        let path = dir.join(format!("exits-{n}.elf"));
        std::fs::write(&path, pvh_elf(&guest_code(n))).expect("write kernel");
        path
    };
    let (k0, kn) = (kernel(0), kernel(exits));
    let pvrun_cmd = |k: &Path| {
        let mut c = Command::new(&pvrun);
        c.arg(k).env("PVRUN_STARTUP_STAMP", "1").env("PVRUN_CACHE_DIR", &cache);
        (c, 1)
    };
    let bare_cmd = |n: u32, irqchip: bool| {
        let mut c = Command::new(&me);
        c.args(["--bare", &n.to_string()]);
        if irqchip {
            c.arg("--irqchip");
        }
        (c, 0)
    };
    // A host's first launch probes (and keeps the verdict); every later one does not.
    let (first, _) = run_once(pvrun_cmd(&k0));
    eprintln!("startup: {runs} runs of each kind, {exits} exits for the per-exit figure…");
    let kinds: [&dyn Fn() -> (Command, i32); 5] =
        [&|| pvrun_cmd(&k0), &|| bare_cmd(0, false), &|| pvrun_cmd(&kn), &|| bare_cmd(exits, false), &|| {
            bare_cmd(0, true)
        }];
    let [p0, b0, pn, bn, bi] = <[Series; 5]>::try_from(series(runs, &kinds)).ok().expect("five series");
    let per_exit = |n: &Series, zero: &Series| (n.total - zero.total) / f64::from(exits);
    let (pe, be) = (per_exit(&pn, &p0), per_exit(&bn, &b0));
    let ms = |ns: f64| format!("{:.3} ms", ns / 1e6);
    let row = |what: &str, p: String, b: String, ratio: f64| {
        println!("{what:<46} {p:>12} {b:>12} {ratio:>7.2}×");
    };
    println!("pvrun start-up and per-exit cost against a bare KVM_RUN loop (medians of {runs})");
    println!("{:<46} {:>12} {:>12} {:>8}", "", "pvrun", "bare loop", "ratio");
    row("start-up: spawn → first KVM_RUN", ms(p0.startup), ms(b0.startup), p0.startup / b0.startup);
    println!("{:<46} {:>12}", "  (a host's first launch, probing)", ms(first as f64));
    row(
        &format!("per exit ({exits} outs to port 0x80)"),
        format!("{:.2} µs", pe / 1e3),
        format!("{:.2} µs", be / 1e3),
        pe / be,
    );
    row("whole run, the guest exiting at once", ms(p0.total), ms(b0.total), p0.total / b0.total);
    row("  against a bare loop with irqchip and PIT", ms(p0.total), ms(bi.total), p0.total / bi.total);
    let _ = std::fs::remove_dir_all(&dir);
}
