//! pvrun: a small KVM-based VMM that boots a PVH kernel ELF.
//!
//! One call, [`run`], does everything: check the configuration and the
//! kernel, open KVM, probe whether guest hypercalls return (once per
//! process), build the VM (guest RAM, in-kernel irqchip and PIT, vCPU 0 in
//! the PVH entry state, the other vCPUs waiting for INIT/SIPI), run it with
//! a watchdog and report how the guest ended. The guest's COM1 output goes
//! to the writer passed in; the guest ends the run by writing a value to
//! port 0xf4 (QEMU's isa-debug-exit) or by asking for a reset (0xfe to port
//! 0x64).
//!
//! Modules follow the boot: [`config`] → [`loader`] → [`probe`] /
//! [`cpuid`] → [`vm`] / [`pvh`] / [`vcpu`] → [`runner`] (which drives
//! [`exit`] and [`devices`]). Every guest address is a constant in
//! [`layout`]. [`stats`] reads KVM's per-vCPU counters, for the
//! bench-marker port and [`run_with_stats`]. [`probe_host`] reports what
//! the host offers without running a guest.

#![deny(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod cli;
pub mod config;
pub mod cpuid;
pub mod devices;
pub mod error;
pub mod exit;
pub mod fuzzing;
pub mod hyperv;
pub mod layout;
pub mod lguest;
pub mod loader;
pub mod output;
pub mod paging;
pub mod probe;
pub mod probe_cache;
pub mod pvh;
pub mod runner;
pub mod schedstat;
pub mod stats;
pub mod vcpu;
pub mod vm;
pub mod vmi;
pub mod vmware;

use std::io::Write;
use std::sync::{Arc, Mutex};

pub use config::{ConfigError, VmConfig};
pub use cpuid::{parse_feature_mask, MaskError, Personality};
pub use devices::DeviceStats;
pub use error::{Error, GuestError};
pub use loader::LoadError;
pub use probe::{ClearReason, ClearedFeature, FeaturePlan, HostProbe, HypercallProbe};
pub use runner::{ExitKind, GuestExit};
pub use stats::{StatsError, StatsSummary};
pub use vm::{KvmError, SetupError, VcpuLimit, VcpuLimitSource};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;

use cpuid::CpuidSpec;
use devices::{Devices, StatsSource};
use loader::{EntryKind, KernelImage};
use runner::ServedAbi;
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
    /// What the guest was told in CPUID 0x40000001 and why (with the
    /// hypercall probe's outcome): `None` if the run stopped before KVM was
    /// opened.
    pub features: Option<FeaturePlan>,
    /// What a served ABI (lguest, VMI's trap ROM) counted, one line per vCPU
    /// that had one (`vCPU 0: vmi: traps=N ...`).
    pub abi_counters: Vec<String>,
}

/// Boots the kernel described by `config` and runs it until it writes to the
/// debug-exit port, asks for a reset, crashes, or runs out of time. The
/// guest's serial output is written to `serial_out`, flushed line by line
/// (each vCPU's lines whole; a partial line after a short idle).
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
    let mut features = None;
    let mut abi_counters = Vec::new();
    let result = boot(config, serial_out, &mut vcpu_stats, &mut features, &mut abi_counters);
    let kvm_stats = vcpu_stats.map(|stats| {
        let snapshots = stats?.iter().map(|s| s.snapshot()).collect::<Result<Vec<_>, _>>()?;
        Ok(StatsSummary::from_snapshots(&snapshots))
    });
    RunReport { result, kvm_stats, features, abi_counters }
}

/// What `pvrun --probe-host` prints: the KVM API version and capabilities,
/// KVM's CPUID signature and feature word, a fresh hypercall probe (unless
/// `config.hypercall_probe` is false) and the feature word a run of
/// `config` would advertise. Only `kvm_path`, `personality`, `cpuid_mask`
/// and `hypercall_probe` of `config` are used.
pub fn probe_host(config: &VmConfig) -> Result<HostProbe, Error> {
    HostProbe::run(config)
}

type VcpuStats = Result<Vec<Arc<KvmStats>>, StatsError>;

/// Builds and runs the VM; `vcpu_stats` receives the vCPUs' statistics as
/// soon as they exist, so they can be read however the run ends,
/// `features` the CPUID feature plan, and `abi_counters` what a served ABI
/// counted.
fn boot(
    config: &VmConfig,
    serial_out: Box<dyn Write + Send>,
    vcpu_stats: &mut Option<VcpuStats>,
    features: &mut Option<FeaturePlan>,
    abi_counters: &mut Vec<String>,
) -> Result<GuestExit, Error> {
    config.validate()?;
    let mem_bytes = config.mem_bytes();
    let lguest = config.personality == Personality::Lguest;
    let entry_kind = if lguest { EntryKind::Lguest } else { EntryKind::Pvh };
    let mut kernel = KernelImage::read(&config.kernel, mem_bytes, entry_kind)?;
    let kvm = vm::open_kvm(&config.kvm_path)?;
    // Every KVM runs one vCPU: the two capability queries are for more.
    if config.cpus > 1 {
        config.check_vcpu_limit(VcpuLimit::query(&kvm))?;
    }
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(SetupError::ioctl("report the supported CPUID"))?;

    // The hypercall probe (its own VM) runs before the real VM exists.
    let plan = FeaturePlan::for_config(config, supported.as_slice(), kvm.get_api_version());
    let mut spec = CpuidSpec {
        // Validated: 1..=CPUS_MAX (255), so it fits CPUID.1:EBX[23:16].
        cpus: config.cpus as u8,
        personality: config.personality,
        kvm_features_clear: plan.clear_mask(),
        // Known once a vCPU exists.
        tsc_khz: 0,
    };
    *features = Some(plan);

    // lguest delivers interrupts itself: no in-kernel irqchip or PIT.
    // VMI's ROM is read-only to the guest, as a ROM is.
    let vm = Arc::new(match config.personality {
        Personality::Lguest => Vm::new_bare(kvm, mem_bytes)?,
        Personality::Vmi => Vm::with_rom(kvm, mem_bytes, (vmi::rom::ROM_ADDRESS, vmi::rom::ROM_SPAN))?,
        Personality::Kvm | Personality::None | Personality::Vmware | Personality::Hyperv => {
            Vm::new(kvm, mem_bytes)?
        }
    });
    let entry = kernel.load(vm.memory())?;
    // Every vCPU exists before any is configured: on this repository's host,
    // an AP created after the BSP's state was set never receives the BSP's
    // INIT/SIPI.
    let mut vcpus = (0..spec.cpus).map(|index| vm.create_vcpu(index)).collect::<Result<Vec<_>, _>>()?;
    let mut abis: Vec<Option<Box<dyn ServedAbi>>> = Vec::with_capacity(vcpus.len());
    spec.tsc_khz = vcpus[0].tsc_khz().unwrap_or(0);
    let steal_clocks = (config.personality == Personality::Vmware)
        .then(|| vmware::steal::StealClocks::new(vm.memory().clone(), u64::from(spec.tsc_khz), vcpus.len()));
    let hyperv = (config.personality == Personality::Hyperv)
        .then(|| {
            let tsc_now = vcpus[0].msr(hyperv::MSR_IA32_TSC).unwrap_or(0);
            vm.exit_on_unknown_msrs().map(|()| hyperv::Shared::new(&vm, vcpus.len(), spec.tsc_khz, tsc_now))
        })
        .transpose()?;
    if lguest {
        let cpuid = cpuid::vcpu_cpuid(supported.as_slice(), 0, &spec);
        let abi =
            lguest::setup(vm.memory(), mem_bytes, vm.kvm(), &mut vcpus[0], &cpuid, entry.0, &config.cmdline)?;
        abis.push(Some(Box::new(abi)));
    } else {
        let start_info =
            pvh::write_boot_info(vm.memory(), mem_bytes, &config.cmdline).map_err(SetupError::from)?;
        for vcpu in &mut vcpus {
            let index = vcpu.index();
            let cpuid = cpuid::vcpu_cpuid(supported.as_slice(), index, &spec);
            if index == 0 {
                vcpu.configure_pvh(&cpuid, vm.memory(), entry, start_info)?;
            } else {
                vcpu.configure_ap(&cpuid)?;
            }
            let abi: Option<Box<dyn ServedAbi>> = match config.personality {
                Personality::Vmi if index == 0 => {
                    let served =
                        vmi::runtime::setup(&vm, vcpu, cpuid, config.vmi_flavour(), config.vmi_corrupt)?;
                    served.map(|s| Box::new(s) as Box<dyn ServedAbi>)
                }
                Personality::Vmware => steal_clocks.as_ref().map(|clocks| {
                    Box::new(vmware::setup(&vm, vcpu, spec.tsc_khz, clocks)) as Box<dyn ServedAbi>
                }),
                Personality::Hyperv => hyperv
                    .as_ref()
                    .map(|shared| Box::new(hyperv::setup(&vm, vcpu, shared)) as Box<dyn ServedAbi>),
                _ => None,
            };
            abis.push(abi);
        }
    }

    // Statistics are optional: without them the bench marker answers RESET
    // with 0 and `--stats` says why.
    let mut devices = Devices::new(serial_out);
    devices.escape_serial(config.escape_serial);
    let mut all_stats = Vec::with_capacity(vcpus.len());
    let mut stats_error = None;
    for vcpu in &vcpus {
        match vcpu.open_stats(vm.kvm()) {
            Ok(stats) => {
                let stats = Arc::new(stats);
                devices.set_stats_source(vcpu.index(), Some(Box::new(stats.clone())));
                all_stats.push(stats);
            }
            Err(e) => {
                devices.set_stats_source(vcpu.index(), None::<Box<dyn StatsSource>>);
                stats_error.get_or_insert(e);
            }
        }
    }
    *vcpu_stats = Some(match stats_error {
        None => Ok(all_stats),
        Some(e) => Err(e),
    });

    let devices = Arc::new(Mutex::new(devices));
    let stamp = std::env::var_os(runner::STARTUP_STAMP_ENV).is_some();
    let vcpus = vcpus.into_iter().zip(abis).collect();
    let result = runner::run_vcpus(vm, vcpus, devices.clone(), config.timeout, stamp);
    // A vCPU stuck past the watchdog may hold the lock: then say nothing.
    if let Ok(d) = devices.try_lock() {
        *abi_counters = d.abi_counters();
    }
    result
}
