//! What to run: the VM configuration and its validation.

use std::path::PathBuf;
use std::time::Duration;

use crate::cpuid::Personality;
use crate::layout;
use crate::pvh::{self, BootInfoError};
use crate::vm::VcpuLimit;
use crate::vmi::{Corruption, Flavour};

/// Longest accepted timeout (one day): keeps `Instant + timeout` finite.
pub const TIMEOUT_MAX: Duration = Duration::from_secs(24 * 60 * 60);
/// Most vCPUs pvrun runs: vCPU `n` has APIC ID `n` and the guest is told
/// xAPIC IDs (8 bits, 0xFF being the broadcast ID), so IDs 0..=254. A KVM
/// may allow fewer ([`VcpuLimit`], checked once KVM is open).
pub const CPUS_MAX: u32 = 255;

/// The configuration of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// The PVH kernel ELF.
    pub kernel: PathBuf,
    /// Guest RAM in MiB ([`layout::MEM_MIB_MIN`]..=[`layout::MEM_MIB_MAX`]).
    pub mem_mib: u64,
    /// Kernel command line (at most 4095 bytes, no NUL).
    pub cmdline: String,
    /// How long the guest may run before the watchdog stops it.
    pub timeout: Duration,
    /// The KVM device.
    pub kvm_path: PathBuf,
    /// Number of vCPUs (1..=[`CPUS_MAX`], and at most what KVM allows:
    /// [`VcpuLimit`]); vCPU 0 boots, the others wait for INIT/SIPI.
    pub cpus: u32,
    /// What the guest sees of the hypervisor in CPUID.
    pub personality: Personality,
    /// KVM feature bits (CPUID 0x40000001 EAX) to hide from the guest, as
    /// parsed by [`crate::cpuid::parse_feature_mask`].
    pub cpuid_mask: u32,
    /// Run the hypercall probe (once per process) before building the VM;
    /// if false, hypercalls are assumed to hang and the hypercall-based
    /// features are hidden.
    pub hypercall_probe: bool,
    /// Probe again even if this host's verdict is kept (`--refresh-probe`).
    pub refresh_probe: bool,
    /// Personality vmi: how the ROM's calls are done (`None`: the trap
    /// flavour, the default).
    pub vmi_rom: Option<Flavour>,
    /// Personality vmi: a defect to build into the ROM (for testing guests).
    pub vmi_corrupt: Option<Corruption>,
    /// Show the guest's control characters on stdout as `\xNN`, so it cannot
    /// drive the terminal (`--escape-serial`).
    pub escape_serial: bool,
}

impl VmConfig {
    /// A configuration with the defaults: 128 MiB, empty command line, 60 s,
    /// `/dev/kvm`, one vCPU, personality kvm, no mask, hypercall probe on.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            mem_mib: layout::MEM_MIB_DEFAULT,
            cmdline: String::new(),
            timeout: Duration::from_secs(60),
            kvm_path: PathBuf::from("/dev/kvm"),
            cpus: 1,
            personality: Personality::Kvm,
            cpuid_mask: 0,
            hypercall_probe: true,
            refresh_probe: false,
            vmi_rom: None,
            vmi_corrupt: None,
            escape_serial: false,
        }
    }

    /// The VMI ROM's flavour (personality vmi).
    pub fn vmi_flavour(&self) -> Flavour {
        self.vmi_rom.unwrap_or(Flavour::Trap)
    }

    /// Guest RAM in bytes.
    pub fn mem_bytes(&self) -> u64 {
        self.mem_mib.saturating_mul(layout::MIB)
    }

    /// Checks every field that can be checked without touching the kernel
    /// file or KVM.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(layout::MEM_MIB_MIN..=layout::MEM_MIB_MAX).contains(&self.mem_mib) {
            return Err(ConfigError::MemOutOfRange { mib: self.mem_mib });
        }
        if !(1..=CPUS_MAX).contains(&self.cpus) {
            return Err(ConfigError::CpusOutOfRange { cpus: self.cpus });
        }
        if self.personality == Personality::Lguest && self.cpus != 1 {
            return Err(ConfigError::LguestIsUniprocessor { cpus: self.cpus });
        }
        if self.personality != Personality::Vmi && (self.vmi_rom.is_some() || self.vmi_corrupt.is_some()) {
            return Err(ConfigError::VmiOptionWithoutVmi { personality: self.personality.name() });
        }
        if self.personality == Personality::Vmi && self.vmi_flavour() == Flavour::Trap && self.cpus != 1 {
            return Err(ConfigError::VmiTrapIsUniprocessor { cpus: self.cpus });
        }
        pvh::check_cmdline(&self.cmdline)?;
        if self.timeout.is_zero() || self.timeout > TIMEOUT_MAX {
            return Err(ConfigError::InvalidTimeout { timeout: self.timeout });
        }
        Ok(())
    }

    /// Checks `cpus` against what this KVM allows (`limit`, from
    /// [`VcpuLimit::query`]); [`VmConfig::validate`] has checked it against
    /// [`CPUS_MAX`] already.
    pub fn check_vcpu_limit(&self, limit: VcpuLimit) -> Result<(), ConfigError> {
        if self.cpus > limit.cpus_max() {
            return Err(ConfigError::CpusAboveKvmLimit { cpus: self.cpus, limit });
        }
        Ok(())
    }
}

/// An invalid configuration (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `mem_mib` is outside the supported range.
    #[error(
        "memory size {mib} MiB is out of range: --mem must be between {} and {} MiB",
        layout::MEM_MIB_MIN,
        layout::MEM_MIB_MAX
    )]
    MemOutOfRange {
        /// The rejected size.
        mib: u64,
    },
    /// `cpus` is outside 1..=[`CPUS_MAX`].
    #[error("vCPU count {cpus} is out of range: --cpus must be between 1 and {CPUS_MAX}")]
    CpusOutOfRange {
        /// The rejected count.
        cpus: u32,
    },
    /// `cpus` is more than this KVM allows.
    #[error(
        "vCPU count {cpus} is more than this KVM allows: --cpus must be at most {} here ({limit})",
        limit.cpus_max()
    )]
    CpusAboveKvmLimit {
        /// The rejected count.
        cpus: u32,
        /// KVM's limit.
        limit: VcpuLimit,
    },
    /// lguest (its async ring, its interrupt model) is uniprocessor.
    #[error("--personality lguest runs one vCPU (lguest is uniprocessor); got --cpus {cpus}")]
    LguestIsUniprocessor {
        /// The rejected count.
        cpus: u32,
    },
    /// `--vmi-rom` or `--vmi-corrupt` without `--personality vmi`.
    #[error("--vmi-rom and --vmi-corrupt need --personality vmi (got --personality {personality})")]
    VmiOptionWithoutVmi {
        /// The personality given.
        personality: &'static str,
    },
    /// The trap flavour's ROM keeps one data page (lazy mode, queue).
    #[error(
        "--personality vmi with the trap ROM runs one vCPU (its ROM keeps one data page); \
         got --cpus {cpus} (--vmi-rom native runs any number)"
    )]
    VmiTrapIsUniprocessor {
        /// The rejected count.
        cpus: u32,
    },
    /// The command line cannot be passed to the kernel.
    #[error(transparent)]
    Cmdline(#[from] BootInfoError),
    /// The timeout is zero or absurdly long.
    #[error(
        "timeout {} s is invalid: it must be greater than 0 and at most {} s",
        timeout.as_secs_f64(),
        TIMEOUT_MAX.as_secs()
    )]
    InvalidTimeout {
        /// The rejected timeout.
        timeout: Duration,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = VmConfig::new("k");
        assert_eq!(c.mem_mib, 128);
        assert_eq!(c.mem_bytes(), 128 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn mem_range_is_enforced() {
        for (mib, ok) in [
            (0, false),
            (8, false),
            (15, false),
            (16, true),
            (16384, true),
            (16385, false),
            (100_000_000, false),
            (u64::MAX, false),
        ] {
            let c = VmConfig { mem_mib: mib, ..VmConfig::new("k") };
            assert_eq!(c.validate().is_ok(), ok, "{mib} MiB");
        }
        let c = VmConfig { mem_mib: 8, ..VmConfig::new("k") };
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "memory size 8 MiB is out of range: --mem must be between 16 and 16384 MiB"
        );
    }

    #[test]
    fn cpus_range_is_enforced() {
        for (cpus, ok) in [
            (0, false),
            (1, true),
            (2, true),
            (8, true),
            (9, true),
            (64, true),
            (254, true),
            (255, true),
            (256, false),
            (1024, false),
            (u32::MAX, false),
        ] {
            let c = VmConfig { cpus, ..VmConfig::new("k") };
            assert_eq!(c.validate().is_ok(), ok, "{cpus} CPUs");
        }
        for cpus in [0, 256] {
            let c = VmConfig { cpus, ..VmConfig::new("k") };
            assert_eq!(
                c.validate().unwrap_err().to_string(),
                format!("vCPU count {cpus} is out of range: --cpus must be between 1 and 255")
            );
        }
    }

    #[test]
    fn cpus_are_checked_against_kvms_limit() {
        use crate::error::{Error, EXIT_BAD_INPUT};
        use crate::vm::VcpuLimitSource;
        let limit = VcpuLimit { kvm: 12, source: VcpuLimitSource::MaxVcpus };
        for (cpus, ok) in [(1, true), (12, true), (13, false), (255, false)] {
            let c = VmConfig { cpus, ..VmConfig::new("k") };
            assert_eq!(c.check_vcpu_limit(limit).is_ok(), ok, "{cpus} CPUs");
        }
        let err =
            Error::from(VmConfig { cpus: 13, ..VmConfig::new("k") }.check_vcpu_limit(limit).unwrap_err());
        assert_eq!(
            err.to_string(),
            "vCPU count 13 is more than this KVM allows: --cpus must be at most 12 here \
             (KVM_CAP_MAX_VCPUS is 12)"
        );
        assert_eq!(err.exit_code(), EXIT_BAD_INPUT);
        // A KVM that allows more than pvrun takes: pvrun's 255 is the limit.
        let big = VcpuLimit { kvm: 1024, source: VcpuLimitSource::MaxVcpus };
        assert_eq!(big.cpus_max(), 255);
        VmConfig { cpus: 255, ..VmConfig::new("k") }.check_vcpu_limit(big).unwrap();
        // The fallbacks say where the number came from.
        let nr = VcpuLimit::from_caps(0, 2);
        let err = VmConfig { cpus: 3, ..VmConfig::new("k") }.check_vcpu_limit(nr).unwrap_err();
        assert_eq!(
            err.to_string(),
            "vCPU count 3 is more than this KVM allows: --cpus must be at most 2 here \
             (KVM_CAP_NR_VCPUS is 2; KVM reports no KVM_CAP_MAX_VCPUS)"
        );
        let none = VcpuLimit::from_caps(-1, 0);
        let err = VmConfig { cpus: 9, ..VmConfig::new("k") }.check_vcpu_limit(none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "vCPU count 9 is more than this KVM allows: --cpus must be at most 8 here \
             (KVM reports neither KVM_CAP_MAX_VCPUS nor KVM_CAP_NR_VCPUS; pvrun assumes 8)"
        );
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn vmi_options_need_the_vmi_personality() {
        let c = VmConfig { vmi_rom: Some(Flavour::Native), ..VmConfig::new("k") };
        assert!(matches!(c.validate(), Err(ConfigError::VmiOptionWithoutVmi { personality: "kvm" })));
        let vmi = VmConfig { personality: Personality::Vmi, ..VmConfig::new("k") };
        vmi.validate().unwrap();
        assert_eq!(vmi.vmi_flavour(), Flavour::Trap);
        let c = VmConfig { cpus: 2, ..vmi.clone() };
        assert!(matches!(c.validate(), Err(ConfigError::VmiTrapIsUniprocessor { cpus: 2 })));
        let c = VmConfig { cpus: 2, vmi_rom: Some(Flavour::Native), ..vmi };
        c.validate().unwrap();
    }

    #[test]
    fn timeout_must_be_positive() {
        let c = VmConfig { timeout: Duration::ZERO, ..VmConfig::new("k") };
        assert!(matches!(c.validate(), Err(ConfigError::InvalidTimeout { .. })));
    }
}
