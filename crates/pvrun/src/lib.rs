//! pvrun: a small KVM-based VMM that boots a PVH kernel ELF.
//!
//! One call, [`run`], does everything: check the configuration and the
//! kernel, open KVM, build the VM (guest RAM, in-kernel irqchip and PIT, one
//! vCPU in the PVH entry state), run it with a watchdog and report how the
//! guest ended. The guest's COM1 output goes to the writer passed in; the
//! guest ends the run by writing a value to port 0xf4 (QEMU's
//! isa-debug-exit).
//!
//! Modules follow the boot: [`config`] → [`loader`] → [`vm`] / [`pvh`] /
//! [`vcpu`] → [`runner`] (which drives [`exit`] and [`devices`]). Every
//! guest address is a constant in [`layout`]. [`stats`] reads KVM's
//! per-vCPU counters, for the bench-marker port and [`run_with_stats`].

#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod devices;
pub mod error;
pub mod exit;
pub mod layout;
pub mod loader;
pub mod pvh;
pub mod runner;
pub mod stats;
pub mod vcpu;
pub mod vm;

use std::io::Write;
use std::sync::{Arc, Mutex};

pub use config::{ConfigError, VmConfig};
pub use devices::DeviceStats;
pub use error::{Error, GuestError};
pub use loader::LoadError;
pub use runner::GuestExit;
pub use stats::{StatsError, StatsSummary};
pub use vm::{KvmError, SetupError};

use devices::{Devices, StatsSource};
use loader::KernelImage;
use stats::KvmStats;
use vm::Vm;

/// The outcome of [`run_with_stats`].
#[derive(Debug)]
pub struct RunReport {
    /// How the run ended, exactly as [`run`] reports it.
    pub result: Result<GuestExit, Error>,
    /// KVM's exit and instruction counters at the end of the run, summed
    /// over the vCPUs: `None` if the run stopped before a vCPU existed,
    /// `Some(Err(..))` if this KVM has no (usable) binary statistics.
    pub kvm_stats: Option<Result<StatsSummary, StatsError>>,
}

/// Boots the kernel described by `config` and runs it until it writes to the
/// debug-exit port, crashes, or runs out of time. The guest's serial output
/// is written to `serial_out`, flushed line by line.
///
/// Checks happen cheapest first: the configuration, then the kernel file,
/// then KVM, so bad input is reported as such even where KVM is missing.
pub fn run(config: &VmConfig, serial_out: Box<dyn Write + Send>) -> Result<GuestExit, Error> {
    run_with_stats(config, serial_out).result
}

/// [`run`], also reporting KVM's per-vCPU counters (`exits`,
/// `insn_emulation`, ...) at the end of the run, whatever its outcome.
pub fn run_with_stats(config: &VmConfig, serial_out: Box<dyn Write + Send>) -> RunReport {
    let mut vcpu_stats = None;
    let result = boot(config, serial_out, &mut vcpu_stats);
    let kvm_stats = vcpu_stats.map(|stats| {
        let snapshots = stats?
            .iter()
            .map(|s| s.snapshot())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StatsSummary::from_snapshots(&snapshots))
    });
    RunReport { result, kvm_stats }
}

type VcpuStats = Result<Vec<Arc<KvmStats>>, StatsError>;

/// Builds and runs the VM; `vcpu_stats` receives the vCPUs' statistics as
/// soon as they exist, so they can be read however the run ends.
fn boot(
    config: &VmConfig,
    serial_out: Box<dyn Write + Send>,
    vcpu_stats: &mut Option<VcpuStats>,
) -> Result<GuestExit, Error> {
    config.validate()?;
    let mem_bytes = config.mem_bytes();
    let kernel = KernelImage::read(&config.kernel, mem_bytes)?;
    let kvm = vm::open_kvm(&config.kvm_path)?;

    let vm = Vm::new(kvm, mem_bytes)?;
    let entry = kernel.load(vm.memory())?;
    let start_info =
        pvh::write_boot_info(vm.memory(), mem_bytes, &config.cmdline).map_err(SetupError::from)?;
    let vcpu = vm.create_vcpu(0)?;
    vcpu.configure_pvh(vm.kvm(), vm.memory(), entry, start_info)?;

    // Statistics are optional: without them the bench marker answers RESET
    // with 0 and `--stats` says why.
    let stats = vcpu.open_stats(vm.kvm()).map(Arc::new);
    let mut devices = Devices::new(serial_out);
    let source = stats
        .as_ref()
        .ok()
        .map(|s| Box::new(s.clone()) as Box<dyn StatsSource>);
    devices.set_stats_source(vcpu.index(), source);
    *vcpu_stats = Some(stats.map(|s| vec![s]));

    let devices = Arc::new(Mutex::new(devices));
    runner::run_vcpus(Arc::new(vm), vec![vcpu], devices, config.timeout)
}
