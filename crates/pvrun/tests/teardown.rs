//! Every vCPU thread is joined at the end of a run, including application
//! processors that never received a SIPI and sat in `KVM_RUN` all along,
//! and 255 vCPUs all running guest code when the watchdog fires.
//! A test binary of its own, with a single test, so the process's thread
//! count is not disturbed by other tests.

mod common;

use std::io;
use std::time::{Duration, Instant};

use common::asm::{self, TRAMPOLINE};
use common::{have_kvm, kernel, skip, ElfSpec, LOAD_ADDR};
use pvrun::{Error, VcpuLimit, VmConfig};

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn waiting_aps_are_stopped_and_joined() {
    if !have_kvm("waiting_aps_are_stopped_and_joined") {
        return;
    }
    let before = threads();

    // The BSP exits at once; seven APs wait for INIT/SIPI.
    let config = VmConfig {
        cpus: 8,
        hypercall_probe: false,
        ..VmConfig::new(kernel("teardown-exit", &ElfSpec::new(&asm::debug_exit(1))))
    };
    let start = Instant::now();
    let exit = pvrun::run(&config, Box::new(io::sink())).unwrap();
    assert_eq!(exit.status, 3);
    assert_eq!(threads(), before, "every vCPU thread is joined");
    // Not held up by the watchdog's 500 ms grace period.
    let elapsed = start.elapsed();
    eprintln!("8 vCPUs, BSP exits at once: {elapsed:?}");
    assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");

    // The watchdog: the BSP spins, the APs wait; all come back.
    let config = VmConfig {
        timeout: Duration::from_millis(200),
        kernel: kernel("teardown-spin", &ElfSpec::new(&asm::spin())),
        ..config
    };
    let err = pvrun::run(&config, Box::new(io::sink())).unwrap_err();
    match err {
        Error::Timeout { rip, vcpu, stuck, .. } => {
            assert_eq!((rip, vcpu, stuck), (Some(0x10_0000), 0, false))
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(threads(), before, "every vCPU thread is joined");

    // The hypercall probe's vCPU, stuck in a hypercall on hosts where they
    // hang, is brought back too.
    let probe =
        pvrun::probe::probe_hypercalls(std::path::Path::new("/dev/kvm"), pvrun::probe::HypercallInsn::host());
    eprintln!("hypercall probe: {probe}");
    assert!(!matches!(probe, pvrun::HypercallProbe::Hangs { stuck: true, .. }), "{probe}");
    assert_eq!(threads(), before, "the probe's vCPU thread is joined");

    // 255 vCPUs (pvrun's most), all running: the BSP wakes every AP into
    // `jmp $` (INIT-SIPI-SIPI, all excluding self) and spins too. The
    // watchdog must bring all 255 back within its grace, on two host CPUs.
    let kvm = pvrun::vm::open_kvm(std::path::Path::new("/dev/kvm")).unwrap();
    let limit = VcpuLimit::query(&kvm);
    drop(kvm);
    if limit.cpus_max() < 255 {
        skip(&format!(
            "255 vCPUs: this host's KVM allows {} ({limit}): waiting_aps_are_stopped_and_joined",
            limit.cpus_max()
        ));
        return;
    }
    const ICR_LOW: u32 = 0xfee0_0300;
    const TRAMPOLINE_OFFSET: u32 = 0x100;
    let mut code = asm::copy_trampoline(LOAD_ADDR as u32 + TRAMPOLINE_OFFSET, 2);
    code.extend(asm::store32(ICR_LOW, 0x000c_4500)); // INIT, all excluding self
    code.extend(asm::store32(ICR_LOW, 0x000c_4600 | (TRAMPOLINE >> 12))); // SIPI
    code.extend(asm::store32(ICR_LOW, 0x000c_4600 | (TRAMPOLINE >> 12))); // SIPI
    code.extend(asm::spin());
    code.resize(TRAMPOLINE_OFFSET as usize, 0x90);
    code.extend(asm::spin()); // the APs' trampoline
    let config = VmConfig {
        cpus: 255,
        timeout: Duration::from_secs(1),
        kernel: kernel("teardown-255", &ElfSpec::new(&code)),
        ..config
    };
    let start = Instant::now();
    let err = pvrun::run(&config, Box::new(io::sink())).unwrap_err();
    let elapsed = start.elapsed();
    eprintln!("255 vCPUs spinning, --timeout 1: {elapsed:?}");
    match err {
        Error::Timeout { rip, vcpu, stuck, .. } => {
            assert!(!stuck, "every vCPU came back from KVM_RUN");
            assert_eq!(vcpu, 0);
            assert!(rip.is_some());
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(threads(), before, "all 255 vCPU threads are joined");
    // 1 s, the kicks (at most KICK_GRACE), building and tearing down the VM.
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
}
