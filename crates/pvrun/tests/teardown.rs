//! Every vCPU thread is joined at the end of a run, including application
//! processors that never received a SIPI and sat in `KVM_RUN` all along.
//! A test binary of its own, with a single test, so the process's thread
//! count is not disturbed by other tests.

mod common;

use std::io;
use std::time::{Duration, Instant};

use common::{asm, have_kvm, kernel, ElfSpec};
use pvrun::{Error, VmConfig};

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
}
