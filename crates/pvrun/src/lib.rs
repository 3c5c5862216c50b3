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
//! guest address is a constant in [`layout`].

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
pub mod vcpu;
pub mod vm;

use std::io::Write;
use std::sync::{Arc, Mutex};

pub use config::{ConfigError, VmConfig};
pub use devices::DeviceStats;
pub use error::{Error, GuestError};
pub use loader::LoadError;
pub use runner::GuestExit;
pub use vm::{KvmError, SetupError};

use devices::Devices;
use loader::KernelImage;
use vm::Vm;

/// Boots the kernel described by `config` and runs it until it writes to the
/// debug-exit port, crashes, or runs out of time. The guest's serial output
/// is written to `serial_out`, flushed line by line.
///
/// Checks happen cheapest first: the configuration, then the kernel file,
/// then KVM, so bad input is reported as such even where KVM is missing.
pub fn run(config: &VmConfig, serial_out: Box<dyn Write + Send>) -> Result<GuestExit, Error> {
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

    let devices = Arc::new(Mutex::new(Devices::new(serial_out)));
    runner::run_vcpus(Arc::new(vm), vec![vcpu], devices, config.timeout)
}
