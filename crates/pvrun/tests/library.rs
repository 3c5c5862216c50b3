//! Tests of the library API (`pvrun::run`) with crafted guests.

mod common;

use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{asm, have_kvm, kernel, ElfSpec};
use pvrun::{Error, VmConfig};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A writer that never returns: the host side of a pipe nobody reads.
struct Blocked;

impl Write for Blocked {
    fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        loop {
            std::thread::park();
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn run_reports_the_debug_exit_and_serial_output() {
    if !have_kvm("run_reports_the_debug_exit_and_serial_output") {
        return;
    }
    let mut code = asm::serial_write(b"hello\n");
    code.extend(asm::debug_exit(3));
    let config = VmConfig::new(kernel("lib-exit", &ElfSpec::new(&code)));
    let out = Captured::default();
    let exit = pvrun::run(&config, Box::new(out.clone())).unwrap();
    assert_eq!((exit.value, exit.status), (3, 7));
    assert_eq!(exit.stats.serial_bytes, 6);
    assert_eq!(exit.stats.unknown_pio, 0);
    assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\n");
}

#[test]
fn run_errors_carry_their_exit_codes() {
    let config = VmConfig { mem_mib: 8, ..VmConfig::new("/nonexistent") };
    let err = pvrun::run(&config, Box::new(io::sink())).unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    assert_eq!(err.exit_code(), 2);

    let config = VmConfig {
        kvm_path: "/nonexistent-kvm".into(),
        ..VmConfig::new(kernel("lib-nokvm", &ElfSpec::new(&asm::debug_exit(0))))
    };
    let err = pvrun::run(&config, Box::new(io::sink())).unwrap_err();
    assert!(matches!(err, Error::Kvm(_)), "{err:?}");
    assert_eq!(err.exit_code(), 6);
}

/// A serial writer that never returns (the host side of a pipe nobody
/// reads) stalls no vCPU: its lines only queue. The spinning guest is stopped
/// by the watchdog as any other, its vCPU comes back and is joined, and the
/// VM goes with it; only pvrun's writer thread stays, blocked in the writer.
#[test]
fn a_writer_that_never_returns_stalls_no_vcpu() {
    if !have_kvm("a_writer_that_never_returns_stalls_no_vcpu") {
        return;
    }
    let mut code = asm::serial_write(b"x\n");
    code.extend(asm::spin());
    let config = VmConfig {
        timeout: Duration::from_millis(300),
        ..VmConfig::new(kernel("lib-stuck", &ElfSpec::new(&code)))
    };
    let start = Instant::now();
    let err = pvrun::run(&config, Box::new(Blocked)).unwrap_err();
    let elapsed = start.elapsed();
    match &err {
        Error::Timeout { rip, stuck, .. } => {
            assert!(!*stuck, "every vCPU came back: {err:?}");
            assert!(rip.is_some(), "{err:?}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(err.exit_code(), 124);
    // The timeout, then at most the output's stall limit for the final drain.
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn application_processors_wait_for_init_sipi() {
    if !have_kvm("application_processors_wait_for_init_sipi") {
        return;
    }
    use kvm_bindings::{KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED};
    use pvrun::cpuid::{vcpu_cpuid, CpuidSpec};

    let kvm = pvrun::vm::open_kvm(std::path::Path::new("/dev/kvm")).unwrap();
    let supported = kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES).unwrap();
    let vm = pvrun::vm::Vm::new(kvm, 16 << 20).unwrap();
    let spec = CpuidSpec { cpus: 3, personality: pvrun::Personality::Kvm, kvm_features_clear: 0, tsc_khz: 0 };
    let vcpus: Vec<_> = (0..3).map(|i| vm.create_vcpu(i).unwrap()).collect();
    assert_eq!(vcpus[0].mp_state().unwrap(), KVM_MP_STATE_RUNNABLE);
    for ap in &vcpus[1..] {
        ap.configure_ap(&vcpu_cpuid(supported.as_slice(), ap.index(), &spec)).unwrap();
        assert_eq!(ap.mp_state().unwrap(), KVM_MP_STATE_UNINITIALIZED);
    }
}
