//! Opening KVM and building the VM: guest memory, the in-kernel irqchip and
//! PIT, and its vCPUs (all created after the irqchip, so each has a LAPIC).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::config::CPUS_MAX;
use crate::error::io_message;
use crate::layout;
use crate::vcpu::Vcpu;

/// The KVM API version pvrun speaks (`KVM_GET_API_VERSION`; stable since 2.6.22).
pub const KVM_API_VERSION: i32 = 12;

/// Capabilities pvrun cannot run without.
const REQUIRED_CAPS: [(Cap, &str); 5] = [
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// KVM cannot be used (exit 6).
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// The device node does not exist.
    #[error(
        "KVM device {} not found: {}; check that KVM is enabled (kvm_intel or kvm_amd loaded, \
         virtualization turned on in the firmware) or pass --kvm",
        path.display(),
        io_message(source)
    )]
    NotFound {
        /// The device path.
        path: PathBuf,
        /// The open error.
        source: std::io::Error,
    },
    /// The device exists but we may not open it.
    #[error(
        "permission denied opening KVM device {}: add this user to the 'kvm' group \
         (or check the device's permissions)",
        path.display()
    )]
    PermissionDenied {
        /// The device path.
        path: PathBuf,
    },
    /// Opening failed another way.
    #[error("cannot open KVM device {}: {}", path.display(), io_message(source))]
    Open {
        /// The device path.
        path: PathBuf,
        /// The open error.
        source: std::io::Error,
    },
    /// The file opened, but it does not answer KVM ioctls.
    #[error(
        "{} is not a KVM device (KVM_GET_API_VERSION failed: {})",
        path.display(),
        io_message(source)
    )]
    NotKvm {
        /// The device path.
        path: PathBuf,
        /// The ioctl error.
        source: std::io::Error,
    },
    /// KVM answers with an API version we do not speak.
    #[error("KVM device {} has API version {got}; pvrun needs {KVM_API_VERSION}", path.display())]
    ApiVersion {
        /// The device path.
        path: PathBuf,
        /// The version it reported.
        got: i32,
    },
    /// A capability pvrun needs is missing.
    #[error("KVM device {} lacks the required capability {cap}", path.display())]
    MissingCap {
        /// The device path.
        path: PathBuf,
        /// The capability's name.
        cap: &'static str,
    },
}

/// Building the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A KVM ioctl failed while building the VM or its vCPUs (exit 6: this
    /// KVM cannot run the guest).
    #[error("KVM refused to {what}: {}", io_message(source))]
    KvmIoctl {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The guest memory could not be allocated (exit 70).
    #[error("cannot allocate {mem_mib} MiB of guest memory: {reason}")]
    GuestMemory {
        /// The requested size.
        mem_mib: u64,
        /// Why.
        reason: String,
    },
    /// The boot information could not be written (exit 70).
    #[error("cannot write the PVH boot information: {0}")]
    BootInfo(#[from] crate::pvh::BootInfoError),
    /// The boot GDT could not be written (exit 70).
    #[error("cannot write the boot GDT: {0}")]
    Gdt(vm_memory::GuestMemoryError),
    /// The lguest switcher, boot page tables or zero page could not be
    /// written (exit 70).
    #[error("cannot write the lguest switcher and boot structures: {0}")]
    LguestBoot(vm_memory::GuestMemoryError),
    /// KVM lacks a capability this VM needs (exit 6).
    #[error("KVM lacks {0}, which this personality needs")]
    MissingCapability(&'static str),
    /// The VMI ROM could not be written, or its alarm thread started (exit 70).
    #[error("cannot set up the VMI ROM: {0}")]
    VmiRom(String),
    /// The hypercall probe's code could not be written (exit 70).
    #[error("cannot write the hypercall probe's code: {0}")]
    ProbeCode(vm_memory::GuestMemoryError),
    /// The patched CPUID table does not fit KVM's limit (exit 70).
    #[error("the CPUID table has {entries} entries, more than KVM's limit")]
    CpuidTooLarge {
        /// How many entries.
        entries: usize,
    },
    /// An application processor is not waiting for INIT/SIPI after being
    /// put there (exit 6: this KVM cannot start it the usual way).
    #[error(
        "vCPU {vcpu} is in MP state {state} after KVM_SET_MP_STATE(UNINITIALIZED); \
         KVM must keep application processors waiting for INIT/SIPI"
    )]
    ApNotWaiting {
        /// The vCPU.
        vcpu: u8,
        /// The MP state KVM reports.
        state: u32,
    },
    /// The vCPU thread could not be started (exit 70).
    #[error("cannot start a vCPU thread: {}", io_message(.0))]
    SpawnThread(std::io::Error),
    /// The watchdog signal handler could not be installed (exit 70).
    #[error("cannot install the vCPU signal handler: {}", io_message(.0))]
    SignalHandler(std::io::Error),
    /// A vCPU thread died without reporting (exit 70).
    #[error("a vCPU thread panicked")]
    VcpuThreadPanicked,
}

impl SetupError {
    /// Whether this failure means KVM refused something (exit 6) rather than
    /// pvrun failing on its own (exit 70).
    pub fn is_kvm_refusal(&self) -> bool {
        matches!(
            self,
            SetupError::KvmIoctl { .. } | SetupError::ApNotWaiting { .. } | SetupError::MissingCapability(_)
        )
    }

    /// A `KvmIoctl` error from a kvm-ioctls error.
    pub fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> SetupError {
        move |e| SetupError::KvmIoctl { what, source: std::io::Error::from_raw_os_error(e.errno()) }
    }
}

/// Opens the KVM device at `path` and checks the API version and the
/// capabilities pvrun needs.
pub fn open_kvm(path: &Path) -> Result<Kvm, KvmError> {
    let cpath = CString::new(path.as_os_str().as_bytes()).map_err(|_| KvmError::Open {
        path: path.to_owned(),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    let kvm = Kvm::new_with_path(&cpath).map_err(|e| {
        let source = std::io::Error::from_raw_os_error(e.errno());
        match e.errno() {
            libc::ENOENT | libc::ENXIO | libc::ENODEV => KvmError::NotFound { path: path.to_owned(), source },
            libc::EACCES | libc::EPERM => KvmError::PermissionDenied { path: path.to_owned() },
            _ => KvmError::Open { path: path.to_owned(), source },
        }
    })?;
    let version = kvm.get_api_version();
    if version < 0 {
        // kvm-ioctls returns the raw ioctl result; errno is still that of the
        // failed ioctl.
        return Err(KvmError::NotKvm { path: path.to_owned(), source: std::io::Error::last_os_error() });
    }
    if version != KVM_API_VERSION {
        return Err(KvmError::ApiVersion { path: path.to_owned(), got: version });
    }
    for (cap, name) in REQUIRED_CAPS {
        if !kvm.check_extension(cap) {
            return Err(KvmError::MissingCap { path: path.to_owned(), cap: name });
        }
    }
    Ok(kvm)
}

/// The vCPU limit pvrun assumes when KVM reports neither `KVM_CAP_MAX_VCPUS`
/// nor `KVM_CAP_NR_VCPUS`.
pub const VCPUS_FALLBACK: u32 = 8;

/// Where a KVM's vCPU limit ([`VcpuLimit`]) came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuLimitSource {
    /// `KVM_CAP_MAX_VCPUS`: the most vCPUs a VM may have.
    MaxVcpus,
    /// `KVM_CAP_NR_VCPUS` (the recommended count), because KVM reports no
    /// `KVM_CAP_MAX_VCPUS`.
    NrVcpus,
    /// Neither capability: [`VCPUS_FALLBACK`].
    Fallback,
}

impl VcpuLimitSource {
    /// The capability (or the fallback), as `--probe-host` names it.
    pub fn name(self) -> &'static str {
        match self {
            VcpuLimitSource::MaxVcpus => "KVM_CAP_MAX_VCPUS",
            VcpuLimitSource::NrVcpus => "KVM_CAP_NR_VCPUS; KVM reports no KVM_CAP_MAX_VCPUS",
            VcpuLimitSource::Fallback => {
                "pvrun's fallback; KVM reports neither KVM_CAP_MAX_VCPUS nor KVM_CAP_NR_VCPUS"
            }
        }
    }
}

/// How many vCPUs a VM of this KVM may have, and where that number came
/// from. pvrun itself takes at most [`CPUS_MAX`] (xAPIC IDs 0..=254).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuLimit {
    /// KVM's number (or [`VCPUS_FALLBACK`]); may exceed [`CPUS_MAX`].
    pub kvm: u32,
    /// Where it came from.
    pub source: VcpuLimitSource,
}

impl VcpuLimit {
    /// The limit from what `KVM_CHECK_EXTENSION` answered for
    /// `KVM_CAP_MAX_VCPUS` and `KVM_CAP_NR_VCPUS` (0 or a negative error:
    /// nothing): the first positive one, else [`VCPUS_FALLBACK`].
    pub fn from_caps(max_vcpus: i32, nr_vcpus: i32) -> Self {
        match (u32::try_from(max_vcpus), u32::try_from(nr_vcpus)) {
            (Ok(kvm @ 1..), _) => VcpuLimit { kvm, source: VcpuLimitSource::MaxVcpus },
            (_, Ok(kvm @ 1..)) => VcpuLimit { kvm, source: VcpuLimitSource::NrVcpus },
            _ => VcpuLimit { kvm: VCPUS_FALLBACK, source: VcpuLimitSource::Fallback },
        }
    }

    /// Asks `kvm`.
    pub fn query(kvm: &Kvm) -> Self {
        Self::from_caps(kvm.check_extension_int(Cap::MaxVcpus), kvm.check_extension_int(Cap::NrVcpus))
    }

    /// The most vCPUs pvrun runs on this KVM: KVM's limit, at most [`CPUS_MAX`].
    pub fn cpus_max(&self) -> u32 {
        self.kvm.min(CPUS_MAX)
    }
}

impl std::fmt::Display for VcpuLimit {
    /// `KVM_CAP_MAX_VCPUS is 1024`, `KVM_CAP_NR_VCPUS is 2; KVM reports no
    /// KVM_CAP_MAX_VCPUS`, or the fallback with its number.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.source {
            VcpuLimitSource::MaxVcpus => write!(f, "KVM_CAP_MAX_VCPUS is {}", self.kvm),
            VcpuLimitSource::NrVcpus => {
                write!(f, "KVM_CAP_NR_VCPUS is {}; KVM reports no KVM_CAP_MAX_VCPUS", self.kvm)
            }
            VcpuLimitSource::Fallback => write!(
                f,
                "KVM reports neither KVM_CAP_MAX_VCPUS nor KVM_CAP_NR_VCPUS; pvrun assumes {}",
                self.kvm
            ),
        }
    }
}

/// A VM: its KVM handles and its guest memory.
///
/// The memory must outlive every vCPU that may still run, which is why the
/// vCPU thread holds an `Arc<Vm>`.
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    memory: GuestMemoryMmap,
    mem_bytes: u64,
}

/// KVM's local APIC timer runs at 1 GHz (`APIC_BUS_CYCLE_NS` = 1), kHz.
pub const KVM_APIC_BUS_KHZ: u32 = 1_000_000;

impl Vm {
    /// Creates the VM with `mem_bytes` of RAM laid out as by
    /// [`layout::ram_regions`], the in-kernel irqchip and a PIT. The irqchip
    /// exists before any vCPU is created, so every vCPU gets a LAPIC.
    pub fn new(kvm: Kvm, mem_bytes: u64) -> Result<Self, SetupError> {
        Self::build(kvm, mem_bytes, true, None)
    }

    /// As [`Vm::new`], with the guest-physical range `rom` (start, length;
    /// inside the first RAM region) read-only to the guest: its writes there
    /// exit as MMIO and are dropped, as a ROM's are. pvrun writes it.
    pub fn with_rom(kvm: Kvm, mem_bytes: u64, rom: (u64, u64)) -> Result<Self, SetupError> {
        if !kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem) {
            return Err(SetupError::MissingCapability("KVM_CAP_READONLY_MEM"));
        }
        Self::build(kvm, mem_bytes, true, Some(rom))
    }

    /// A VM with RAM only: no irqchip, no PIT (the hypercall probe's).
    pub fn new_bare(kvm: Kvm, mem_bytes: u64) -> Result<Self, SetupError> {
        Self::build(kvm, mem_bytes, false, None)
    }

    fn build(kvm: Kvm, mem_bytes: u64, irqchip: bool, rom: Option<(u64, u64)>) -> Result<Self, SetupError> {
        let fd = kvm.create_vm().map_err(SetupError::ioctl("create a VM"))?;

        let ranges: Vec<(GuestAddress, usize)> = layout::memory_slots(mem_bytes, rom)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let memory = GuestMemoryMmap::from_ranges(&ranges).map_err(|e| SetupError::GuestMemory {
            mem_mib: mem_bytes / layout::MIB,
            reason: e.to_string(),
        })?;
        for (slot, region) in memory.iter().enumerate() {
            let read_only = rom.is_some_and(|(start, _)| start == region.start_addr().0);
            let mem_region = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: if read_only { kvm_bindings::KVM_MEM_READONLY } else { 0 },
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the host range [userspace_addr, +memory_size) is a live
            // mapping owned by `memory`, which lives in this `Vm` as long as
            // the VM fd does (fields drop in declaration order: `fd` before
            // `memory`), and slots do not overlap because the regions do not.
            unsafe { fd.set_user_memory_region(mem_region) }
                .map_err(SetupError::ioctl("register guest memory"))?;
        }

        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(SetupError::ioctl("set the TSS address"))?;
        if irqchip {
            fd.create_irq_chip().map_err(SetupError::ioctl("create the in-kernel irqchip"))?;
            let pit_config = kvm_pit_config { flags: KVM_PIT_SPEAKER_DUMMY, ..Default::default() };
            fd.create_pit2(pit_config).map_err(SetupError::ioctl("create the PIT"))?;
        }

        Ok(Vm { kvm, fd, memory, mem_bytes })
    }

    /// Sends every MSR access KVM does not know to user space
    /// (`KVM_CAP_X86_USER_SPACE_MSR` with `KVM_MSR_EXIT_REASON_UNKNOWN`), where
    /// the served ABI answers it or faults it as KVM would have.
    pub fn exit_on_unknown_msrs(&self) -> Result<(), SetupError> {
        if !self.kvm.check_extension(kvm_ioctls::Cap::X86UserSpaceMsr) {
            return Err(SetupError::MissingCapability("KVM_CAP_X86_USER_SPACE_MSR"));
        }
        let mut cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
            ..Default::default()
        };
        cap.args[0] = u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_UNKNOWN);
        self.fd.enable_cap(&cap).map_err(SetupError::ioctl("send unknown MSRs to user space"))
    }

    /// Creates vCPU number `index` (its APIC id is the same number). vCPU 0
    /// is the bootstrap processor; with the in-kernel irqchip KVM keeps the
    /// others waiting for INIT/SIPI.
    pub fn create_vcpu(&self, index: u8) -> Result<Vcpu, SetupError> {
        let fd = self.fd.create_vcpu(u64::from(index)).map_err(SetupError::ioctl("create a vCPU"))?;
        Ok(Vcpu::new(index, fd))
    }

    /// The guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The `/dev/kvm` handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// Guest RAM size in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_bytes
    }

    /// Raises interrupt `vector` on the local APIC of vCPU `apic_id`: a
    /// fixed, edge-triggered MSI (`KVM_SIGNAL_MSI`); `false` if KVM refuses.
    pub fn signal_vector(&self, apic_id: u8, vector: u8) -> bool {
        let msi = kvm_bindings::kvm_msi {
            address_lo: 0xfee0_0000 | u32::from(apic_id) << 12,
            data: u32::from(vector),
            ..Default::default()
        };
        self.fd.signal_msi(msi).is_ok()
    }

    /// Pulses ISA interrupt line `irq` (`KVM_IRQ_LINE` high, then low);
    /// `false` if KVM refuses.
    pub fn pulse_irq(&self, irq: u32) -> bool {
        self.fd.set_irq_line(irq, true).is_ok() && self.fd.set_irq_line(irq, false).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_limit_prefers_max_vcpus_then_nr_vcpus_then_8() {
        let l = VcpuLimit::from_caps(1024, 2);
        assert_eq!(l, VcpuLimit { kvm: 1024, source: VcpuLimitSource::MaxVcpus });
        assert_eq!(l.cpus_max(), CPUS_MAX);
        assert_eq!(l.to_string(), "KVM_CAP_MAX_VCPUS is 1024");
        let l = VcpuLimit::from_caps(240, 2);
        assert_eq!((l.kvm, l.cpus_max()), (240, 240));
        for max in [0, -1] {
            let l = VcpuLimit::from_caps(max, 2);
            assert_eq!(l, VcpuLimit { kvm: 2, source: VcpuLimitSource::NrVcpus }, "{max}");
            assert_eq!(l.cpus_max(), 2);
        }
        for (max, nr) in [(0, 0), (-1, -1), (0, -22)] {
            let l = VcpuLimit::from_caps(max, nr);
            assert_eq!(l, VcpuLimit { kvm: VCPUS_FALLBACK, source: VcpuLimitSource::Fallback });
            assert_eq!(l.cpus_max(), 8);
        }
        assert_eq!(VcpuLimitSource::MaxVcpus.name(), "KVM_CAP_MAX_VCPUS");
    }
}
