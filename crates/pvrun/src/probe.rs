//! What the host offers, and what pvrun advertises to the guest because of
//! it.
//!
//! * The **hypercall probe** ([`probe_hypercalls`]): a throw-away VM (its own
//!   VM fd, 2 MiB of RAM, one vCPU in 32-bit protected mode) runs
//!   `mov eax, 1 (KVM_HC_VAPIC_POLL_IRQ); vmcall; out 0xf4, eax` (`vmmcall`
//!   on AMD and Hygon hosts) under a [`PROBE_TIMEOUT`] watchdog, the
//!   runner's own signal-based one. If the `out` is reached, guest
//!   hypercalls return on this host; if the watchdog has to break
//!   `KVM_RUN`, they hang. [`probe_hypercalls_cached`] runs it once per
//!   process and KVM device, and keeps its verdict per host
//!   ([`crate::probe_cache`]), so that a launch does not pay the watchdog.
//! * The **feature plan** ([`FeaturePlan::new`], pure): which KVM feature
//!   bits (CPUID 0x40000001 EAX) are cleared and why: the hypercall-based
//!   ones ([`HYPERCALL_FEATURES`]) unless the probe saw a hypercall return,
//!   and the `--cpuid-mask` ones.
//! * **`--probe-host`** ([`HostProbe`]): all of the above plus the KVM API
//!   version and capabilities, printed one item per line.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_cpuid_entry2, KVM_CAP_BINARY_STATS_FD, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};
use vm_memory::{Bytes, GuestAddress};

use crate::config::{VmConfig, CPUS_MAX};
use crate::cpuid::{self, CpuidSpec, Personality, KVM_CPUID_FEATURES};
use crate::devices::Devices;
use crate::error::Error;
use crate::layout::{DEBUG_EXIT_PORT, MIB};
use crate::runner::{self, ExitKind};
use crate::vm::{self, SetupError, VcpuLimit, Vm};

/// How long the probe's hypercall may take before it is declared hanging.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// The probe VM's RAM.
pub const PROBE_MEM_BYTES: u64 = 2 * MIB;
/// Where the probe's code is written and entered.
pub const PROBE_CODE_ADDR: u64 = 0x1000;
/// The hypercall the probe makes: `KVM_HC_VAPIC_POLL_IRQ`, a no-op that
/// returns 0 (Documentation/virt/kvm/x86/hypercalls.rst).
pub const KVM_HC_VAPIC_POLL_IRQ: u32 = 1;
/// KVM feature bits whose guest side makes hypercalls, cleared when
/// hypercalls do not return: PV_UNHALT (7, `KVM_HC_KICK_CPU`), PV_SEND_IPI
/// (11, `KVM_HC_SEND_IPI`), PV_SCHED_YIELD (13, `KVM_HC_SCHED_YIELD`) and
/// HC_MAP_GPA_RANGE (16, `KVM_HC_MAP_GPA_RANGE`).
pub const HYPERCALL_FEATURES: [u8; 4] = [7, 11, 13, 16];

/// The hypercall instruction of the host's CPU vendor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallInsn {
    /// Intel's `vmcall` (0f 01 c1).
    Vmcall,
    /// AMD's `vmmcall` (0f 01 d9).
    Vmmcall,
}

impl HypercallInsn {
    /// The instruction for a CPU whose CPUID leaf 0 vendor string is
    /// `vendor`: `vmmcall` for AuthenticAMD and HygonGenuine, `vmcall` for
    /// GenuineIntel and anything else.
    pub fn for_vendor(vendor: &str) -> Self {
        match vendor {
            "AuthenticAMD" | "HygonGenuine" => HypercallInsn::Vmmcall,
            _ => HypercallInsn::Vmcall,
        }
    }

    /// The instruction for this host's CPU.
    pub fn host() -> Self {
        Self::for_vendor(&host_vendor())
    }

    /// The encoding.
    pub fn bytes(self) -> [u8; 3] {
        match self {
            HypercallInsn::Vmcall => [0x0f, 0x01, 0xc1],
            HypercallInsn::Vmmcall => [0x0f, 0x01, 0xd9],
        }
    }

    /// The mnemonic.
    pub fn name(self) -> &'static str {
        match self {
            HypercallInsn::Vmcall => "vmcall",
            HypercallInsn::Vmmcall => "vmmcall",
        }
    }
}

impl fmt::Display for HypercallInsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.bytes();
        write!(f, "{} ({a:02x} {b:02x} {c:02x})", self.name())
    }
}

/// The host CPU's vendor string (CPUID leaf 0 of the host, not of KVM).
pub fn host_vendor() -> String {
    let r = std::arch::x86_64::__cpuid(0);
    let mut bytes = Vec::with_capacity(12);
    for reg in [r.ebx, r.edx, r.ecx] {
        bytes.extend_from_slice(&reg.to_le_bytes());
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The probe guest: `mov eax, KVM_HC_VAPIC_POLL_IRQ; <insn>; out 0xf4, eax;
/// hlt`.
pub fn probe_code(insn: HypercallInsn) -> Vec<u8> {
    let mut code = vec![0xb8];
    code.extend_from_slice(&KVM_HC_VAPIC_POLL_IRQ.to_le_bytes());
    code.extend_from_slice(&insn.bytes());
    code.extend_from_slice(&[0xe7, DEBUG_EXIT_PORT as u8, 0xf4]);
    code
}

/// What the hypercall probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HypercallProbe {
    /// The hypercall returned (with this EAX) and the guest went on.
    Returns {
        /// The instruction used.
        insn: HypercallInsn,
        /// EAX after the hypercall (0 = success, `-KVM_ENOSYS` = -1000 if
        /// this KVM does not know the call).
        eax: u32,
        /// From starting the probe vCPU to its debug exit.
        elapsed: Duration,
    },
    /// The hypercall did not return within [`PROBE_TIMEOUT`]; the watchdog
    /// broke `KVM_RUN`.
    Hangs {
        /// The instruction used.
        insn: HypercallInsn,
        /// From starting the probe vCPU until it was back from the kick.
        elapsed: Duration,
        /// The vCPU thread did not come back even after the kick (it was
        /// abandoned).
        stuck: bool,
    },
    /// The probe VM could not be built or the probe guest crashed.
    Failed {
        /// The instruction used.
        insn: HypercallInsn,
        /// Why (one line).
        reason: String,
    },
    /// Not run (`--no-hypercall-probe`): hypercalls are assumed to hang.
    Skipped,
    /// Not run because the guest does not see KVM (every personality but kvm).
    NotNeeded,
}

impl HypercallProbe {
    /// True if a guest hypercall returned.
    pub fn returns(&self) -> bool {
        matches!(self, HypercallProbe::Returns { .. })
    }

    /// Why hypercall-based features are cleared, or `None` if they are
    /// kept (the hypercall returned) or irrelevant (personality none).
    pub fn clear_reason(&self) -> Option<ClearReason> {
        match self {
            HypercallProbe::Returns { .. } | HypercallProbe::NotNeeded => None,
            HypercallProbe::Hangs { .. } => Some(ClearReason::HypercallsHang),
            HypercallProbe::Failed { .. } => Some(ClearReason::HypercallProbeFailed),
            HypercallProbe::Skipped => Some(ClearReason::HypercallProbeSkipped),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

impl fmt::Display for HypercallProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HypercallProbe::Returns { insn, eax, elapsed } => {
                write!(f, "returns: {insn} with eax = {eax:#x}, in {}", ms(*elapsed))
            }
            HypercallProbe::Hangs { insn, elapsed, stuck } => write!(
                f,
                "hangs: {insn} did not return within {}; {}",
                ms(PROBE_TIMEOUT),
                if *stuck {
                    format!("the probe vCPU did not come back from KVM_RUN ({} in all)", ms(*elapsed))
                } else {
                    format!("the watchdog broke KVM_RUN after {}", ms(*elapsed))
                }
            ),
            HypercallProbe::Failed { insn, reason } => {
                write!(f, "failed: {insn}: {reason}")
            }
            HypercallProbe::Skipped => {
                write!(f, "skipped (--no-hypercall-probe): assumed to hang")
            }
            HypercallProbe::NotNeeded => write!(f, "not run (the guest does not see KVM)"),
        }
    }
}

/// Runs the hypercall probe now (see the module docs); never fails: a probe
/// that cannot run is [`HypercallProbe::Failed`].
pub fn probe_hypercalls(kvm_path: &Path, insn: HypercallInsn) -> HypercallProbe {
    let mut started = None;
    let result = run_probe(kvm_path, insn, &mut started);
    let elapsed = started.map_or(Duration::ZERO, |t: Instant| t.elapsed());
    match result {
        Ok(exit) if exit.kind == ExitKind::DebugExit => {
            HypercallProbe::Returns { insn, eax: exit.value, elapsed }
        }
        Ok(_) => HypercallProbe::Failed { insn, reason: "the probe guest requested a reset".to_owned() },
        Err(Error::Timeout { stuck, .. }) => HypercallProbe::Hangs { insn, elapsed, stuck },
        Err(e) => HypercallProbe::Failed { insn, reason: e.to_string() },
    }
}

fn run_probe(
    kvm_path: &Path,
    insn: HypercallInsn,
    started: &mut Option<Instant>,
) -> Result<runner::GuestExit, Error> {
    let kvm = vm::open_kvm(kvm_path)?;
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(SetupError::ioctl("report the supported CPUID"))?;
    let vm = Vm::new_bare(kvm, PROBE_MEM_BYTES)?;
    vm.memory()
        .write_slice(&probe_code(insn), GuestAddress(PROBE_CODE_ADDR))
        .map_err(SetupError::ProbeCode)?;
    let vcpu = vm.create_vcpu(0)?;
    let spec = CpuidSpec { cpus: 1, personality: Personality::Kvm, kvm_features_clear: 0, tsc_khz: 0 };
    vcpu.set_cpuid(&cpuid::vcpu_cpuid(supported.as_slice(), 0, &spec))?;
    vcpu.enter_protected_mode(vm.memory(), GuestAddress(PROBE_CODE_ADDR), 0)?;
    let devices = Arc::new(Mutex::new(Devices::new(Box::new(std::io::sink()))));
    *started = Some(Instant::now());
    runner::run_vcpus(Arc::new(vm), vec![(vcpu, None)], devices, PROBE_TIMEOUT, false)
}

/// [`probe_hypercalls`] with this host's instruction, at most once per
/// process and KVM device, and not at all while the host's kept verdict
/// ([`crate::probe_cache`]) matches this host (KVM API `api_version`); with
/// `refresh`, the probe runs again and replaces the kept verdict.
pub fn probe_hypercalls_cached(kvm_path: &Path, api_version: i32, refresh: bool) -> HypercallProbe {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, HypercallProbe>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    // Held while probing, so concurrent runs wait for one probe.
    let mut cache = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if refresh {
        cache.remove(kvm_path);
    }
    cache
        .entry(kvm_path.to_owned())
        .or_insert_with(|| {
            let dir = crate::probe_cache::dir();
            let key = crate::probe_cache::key(kvm_path, api_version);
            if let Some(kept) =
                dir.as_deref().filter(|_| !refresh).and_then(|d| crate::probe_cache::load(d, &key))
            {
                return kept;
            }
            let probe = probe_hypercalls(kvm_path, HypercallInsn::host());
            if let Some(d) = &dir {
                crate::probe_cache::store(d, &key, &probe);
            }
            probe
        })
        .clone()
}

/// Why pvrun clears a KVM feature bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClearReason {
    /// A hypercall-based feature, and the probe's hypercall hung.
    HypercallsHang,
    /// A hypercall-based feature, and the probe was skipped.
    HypercallProbeSkipped,
    /// A hypercall-based feature, and the probe could not tell.
    HypercallProbeFailed,
    /// Named in `--cpuid-mask`.
    CpuidMask,
}

impl fmt::Display for ClearReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClearReason::HypercallsHang => "hypercall-based: guest hypercalls do not return on this host",
            ClearReason::HypercallProbeSkipped => {
                "hypercall-based: --no-hypercall-probe assumes guest hypercalls do not return"
            }
            ClearReason::HypercallProbeFailed => {
                "hypercall-based: the hypercall probe failed, so guest hypercalls are assumed \
                 not to return"
            }
            ClearReason::CpuidMask => "--cpuid-mask",
        })
    }
}

/// One KVM feature bit pvrun clears.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClearedFeature {
    /// The bit number in CPUID 0x40000001 EAX.
    pub bit: u8,
    /// Why.
    pub reason: ClearReason,
    /// Whether KVM offered it (if not, clearing it changes nothing).
    pub offered: bool,
}

impl fmt::Display for ClearedFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bit {} {}: {}{}",
            self.bit,
            cpuid::feature_label(self.bit),
            self.reason,
            if self.offered { "" } else { " (not offered by KVM anyway)" }
        )
    }
}

/// What the guest is told in CPUID 0x40000001 EAX, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeaturePlan {
    /// The personality.
    pub personality: Personality,
    /// KVM's feature word (`KVM_GET_SUPPORTED_CPUID` 0x40000001 EAX);
    /// `None` if KVM reports no such leaf.
    pub offered: Option<u32>,
    /// The hypercall probe's outcome.
    pub hypercalls: HypercallProbe,
    /// The bits cleared, by bit number; empty for personality none.
    pub cleared: Vec<ClearedFeature>,
}

impl FeaturePlan {
    /// The decision: with personality kvm, clear [`HYPERCALL_FEATURES`]
    /// unless `hypercalls` returned, and every bit of `cpuid_mask`; with
    /// personality none, nothing (the leaf is hidden altogether).
    pub fn new(
        offered: Option<u32>,
        personality: Personality,
        hypercalls: HypercallProbe,
        cpuid_mask: u32,
    ) -> Self {
        let mut cleared = Vec::new();
        if personality == Personality::Kvm {
            let is_offered = |bit: u8| offered.is_some_and(|w| w & (1 << bit) != 0);
            if let Some(reason) = hypercalls.clear_reason() {
                cleared.extend(HYPERCALL_FEATURES.iter().map(|&bit| ClearedFeature {
                    bit,
                    reason,
                    offered: is_offered(bit),
                }));
            }
            for bit in cpuid::bits(cpuid_mask) {
                if !cleared.iter().any(|c| c.bit == bit) {
                    cleared.push(ClearedFeature {
                        bit,
                        reason: ClearReason::CpuidMask,
                        offered: is_offered(bit),
                    });
                }
            }
            cleared.sort_by_key(|c| c.bit);
        }
        FeaturePlan { personality, offered, hypercalls, cleared }
    }

    /// The plan for a run of `config` on a KVM whose supported CPUID is
    /// `supported`: the probe runs (cached) only for personality kvm and
    /// without `--no-hypercall-probe`.
    pub fn for_config(config: &VmConfig, supported: &[kvm_cpuid_entry2], api_version: i32) -> Self {
        let hypercalls = match (config.personality, config.hypercall_probe) {
            (
                Personality::None
                | Personality::Lguest
                | Personality::Vmi
                | Personality::Vmware
                | Personality::Hyperv,
                _,
            ) => HypercallProbe::NotNeeded,
            (Personality::Kvm, false) => HypercallProbe::Skipped,
            (Personality::Kvm, true) => {
                probe_hypercalls_cached(&config.kvm_path, api_version, config.refresh_probe)
            }
        };
        Self::new(offered_features(supported), config.personality, hypercalls, config.cpuid_mask)
    }

    /// Every bit cleared.
    pub fn clear_mask(&self) -> u32 {
        self.cleared.iter().fold(0, |m, c| m | (1 << c.bit))
    }

    /// The feature word the guest sees: `None` with personality none or if
    /// KVM has no such leaf.
    pub fn advertised(&self) -> Option<u32> {
        match self.personality {
            Personality::Kvm => self.offered.map(|w| w & !self.clear_mask()),
            Personality::None
            | Personality::Lguest
            | Personality::Vmi
            | Personality::Vmware
            | Personality::Hyperv => None,
        }
    }
}

/// KVM's feature word in `supported`, if it has the leaf.
pub fn offered_features(supported: &[kvm_cpuid_entry2]) -> Option<u32> {
    cpuid::find(supported, KVM_CPUID_FEATURES).map(|e| e.eax)
}

/// The capabilities `--probe-host` lists.
pub const LISTED_CAPS: [(&str, u32); 10] = [
    ("KVM_CAP_IRQCHIP", Cap::Irqchip as u32),
    ("KVM_CAP_SPLIT_IRQCHIP", Cap::SplitIrqchip as u32),
    ("KVM_CAP_X86_USER_SPACE_MSR", Cap::X86UserSpaceMsr as u32),
    ("KVM_CAP_X86_MSR_FILTER", Cap::X86MsrFilter as u32),
    ("KVM_CAP_KVMCLOCK_CTRL", Cap::KvmclockCtrl as u32),
    ("KVM_CAP_GET_TSC_KHZ", Cap::GetTscKhz as u32),
    ("KVM_CAP_XEN_HVM", Cap::XenHvm as u32),
    ("KVM_CAP_HYPERV", Cap::Hyperv as u32),
    ("KVM_CAP_TSC_CONTROL", Cap::TscControl as u32),
    ("KVM_CAP_BINARY_STATS_FD", KVM_CAP_BINARY_STATS_FD),
];

/// Everything `--probe-host` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostProbe {
    /// The KVM device.
    pub kvm_path: PathBuf,
    /// `KVM_GET_API_VERSION`.
    pub api_version: i32,
    /// Each of [`LISTED_CAPS`]: its name and whether `KVM_CHECK_EXTENSION`
    /// says it is present.
    pub caps: Vec<(&'static str, bool)>,
    /// How many vCPUs a VM may have (`KVM_CAP_MAX_VCPUS`, or a fallback).
    pub max_vcpus: VcpuLimit,
    /// The host CPU's vendor string.
    pub host_vendor: String,
    /// KVM's CPUID 0x40000000: the signature and EAX (the last hypervisor
    /// leaf); `None` if KVM reports no such leaf.
    pub signature: Option<(String, u32)>,
    /// The feature plan (for the personality and mask of the probe's
    /// configuration); `plan.hypercalls` is a fresh probe unless skipped.
    pub plan: FeaturePlan,
}

impl HostProbe {
    /// Probes the KVM device of `config` (only `kvm_path`, `personality`,
    /// `cpuid_mask` and `hypercall_probe` are used). The hypercall probe
    /// runs afresh (not cached) unless `hypercall_probe` is false.
    pub fn run(config: &VmConfig) -> Result<Self, Error> {
        let kvm = vm::open_kvm(&config.kvm_path)?;
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(SetupError::ioctl("report the supported CPUID"))?;
        // Always afresh, and kept for the runs that follow.
        let hypercalls = if config.hypercall_probe {
            probe_hypercalls_cached(&config.kvm_path, kvm.get_api_version(), true)
        } else {
            HypercallProbe::Skipped
        };
        Ok(HostProbe {
            kvm_path: config.kvm_path.clone(),
            api_version: kvm.get_api_version(),
            caps: list_caps(&kvm),
            max_vcpus: VcpuLimit::query(&kvm),
            host_vendor: host_vendor(),
            signature: cpuid::find(supported.as_slice(), cpuid::HYPERVISOR_LEAF_FIRST)
                .map(|e| (cpuid::signature(e), e.eax)),
            plan: FeaturePlan::new(
                offered_features(supported.as_slice()),
                config.personality,
                hypercalls,
                config.cpuid_mask,
            ),
        })
    }

    /// The report, one item per line.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            format!("KVM device: {}", self.kvm_path.display()),
            format!("KVM API version: {}", self.api_version),
        ];
        for (name, present) in &self.caps {
            out.push(format!("{name}: {}", if *present { "present" } else { "absent" }));
        }
        out.push(format!(
            "max vCPUs: {} ({}; pvrun takes at most {CPUS_MAX})",
            self.max_vcpus.kvm,
            self.max_vcpus.source.name()
        ));
        out.push(format!("host CPU vendor: {}", self.host_vendor));
        out.push(match &self.signature {
            Some((sig, max)) => {
                format!("KVM CPUID signature (0x40000000): \"{sig}\", max leaf {max:#x}")
            }
            None => "KVM CPUID signature (0x40000000): none".to_owned(),
        });
        match self.plan.offered {
            Some(word) => {
                out.push(format!("KVM features (0x40000001 EAX): {word:#010x}"));
                for bit in cpuid::bits(word) {
                    out.push(format!("  bit {bit} {}", cpuid::feature_label(bit)));
                }
            }
            None => out.push("KVM features (0x40000001 EAX): none".to_owned()),
        }
        out.push(format!("hypercall probe: {}", self.plan.hypercalls));
        out.push(format!("personality: {}", self.plan.personality.name()));
        match self.plan.advertised() {
            Some(word) => out.push(format!("advertised features (0x40000001 EAX): {word:#010x}")),
            None if self.plan.personality == Personality::None => out.push(
                "advertised features (0x40000001 EAX): none (personality none hides the \
                 hypervisor leaves and CPUID.1:ECX bit 31)"
                    .to_owned(),
            ),
            None if self.plan.personality == Personality::Lguest => out.push(
                "advertised features (0x40000001 EAX): none (personality lguest serves its own \
                 hypercalls and hides KVM's leaves)"
                    .to_owned(),
            ),
            None => out.push("advertised features (0x40000001 EAX): none".to_owned()),
        }
        for c in &self.plan.cleared {
            out.push(format!("  cleared {c}"));
        }
        out
    }
}

impl fmt::Display for HostProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.lines() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

fn list_caps(kvm: &Kvm) -> Vec<(&'static str, bool)> {
    LISTED_CAPS.iter().map(|&(name, cap)| (name, kvm.check_extension_raw(cap.into()) > 0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST_WORD: u32 = 0x0100_7efb;

    fn hangs() -> HypercallProbe {
        HypercallProbe::Hangs {
            insn: HypercallInsn::Vmcall,
            elapsed: Duration::from_millis(101),
            stuck: false,
        }
    }

    fn returns() -> HypercallProbe {
        HypercallProbe::Returns { insn: HypercallInsn::Vmmcall, eax: 0, elapsed: Duration::from_micros(300) }
    }

    #[test]
    fn hanging_hypercalls_clear_the_hypercall_features() {
        let plan = FeaturePlan::new(Some(HOST_WORD), Personality::Kvm, hangs(), 0);
        let bits: Vec<u8> = plan.cleared.iter().map(|c| c.bit).collect();
        assert_eq!(bits, vec![7, 11, 13, 16]);
        assert!(plan.cleared.iter().all(|c| c.reason == ClearReason::HypercallsHang));
        // Bit 16 is not in this host's word.
        let offered: Vec<bool> = plan.cleared.iter().map(|c| c.offered).collect();
        assert_eq!(offered, vec![true, true, true, false]);
        assert_eq!(plan.clear_mask(), 0x0001_2880);
        assert_eq!(plan.advertised(), Some(0x0100_567b));
        assert_eq!(
            plan.cleared[0].to_string(),
            "bit 7 pv_unhalt: hypercall-based: guest hypercalls do not return on this host"
        );
        assert!(plan.cleared[3].to_string().ends_with("(not offered by KVM anyway)"));
    }

    #[test]
    fn returning_hypercalls_keep_them() {
        let plan = FeaturePlan::new(Some(HOST_WORD), Personality::Kvm, returns(), 0);
        assert!(plan.cleared.is_empty());
        assert_eq!(plan.advertised(), Some(HOST_WORD));
        let plan = FeaturePlan::new(Some(HOST_WORD), Personality::Kvm, returns(), 1 << 5);
        assert_eq!(plan.advertised(), Some(HOST_WORD & !(1 << 5)));
        assert_eq!(plan.cleared[0].reason, ClearReason::CpuidMask);
        assert_eq!(plan.cleared[0].to_string(), "bit 5 steal_time: --cpuid-mask");
    }

    #[test]
    fn skipped_or_failed_probes_clear_them_too() {
        for (probe, reason) in [
            (HypercallProbe::Skipped, ClearReason::HypercallProbeSkipped),
            (
                HypercallProbe::Failed { insn: HypercallInsn::Vmcall, reason: "x".into() },
                ClearReason::HypercallProbeFailed,
            ),
        ] {
            let plan = FeaturePlan::new(Some(HOST_WORD), Personality::Kvm, probe, 0);
            assert_eq!(plan.clear_mask(), 0x0001_2880);
            assert!(plan.cleared.iter().all(|c| c.reason == reason));
        }
    }

    #[test]
    fn mask_and_probe_combine_sorted_without_duplicates() {
        let plan =
            FeaturePlan::new(Some(HOST_WORD), Personality::Kvm, hangs(), (1 << 7) | (1 << 5) | (1 << 8));
        let got: Vec<(u8, ClearReason)> = plan.cleared.iter().map(|c| (c.bit, c.reason)).collect();
        assert_eq!(
            got,
            vec![
                (5, ClearReason::CpuidMask),
                (7, ClearReason::HypercallsHang),
                (8, ClearReason::CpuidMask),
                (11, ClearReason::HypercallsHang),
                (13, ClearReason::HypercallsHang),
                (16, ClearReason::HypercallsHang),
            ]
        );
        assert_eq!(plan.cleared[2].to_string(), "bit 8 bit 8: --cpuid-mask (not offered by KVM anyway)");
    }

    #[test]
    fn personality_none_advertises_nothing() {
        let plan = FeaturePlan::new(Some(HOST_WORD), Personality::None, HypercallProbe::NotNeeded, 1 << 5);
        assert!(plan.cleared.is_empty());
        assert_eq!(plan.advertised(), None);
        let plan = FeaturePlan::new(None, Personality::Kvm, hangs(), 0);
        assert_eq!(plan.advertised(), None);
    }

    #[test]
    fn the_instruction_follows_the_host_vendor() {
        assert_eq!(HypercallInsn::for_vendor("GenuineIntel"), HypercallInsn::Vmcall);
        assert_eq!(HypercallInsn::for_vendor("AuthenticAMD"), HypercallInsn::Vmmcall);
        assert_eq!(HypercallInsn::for_vendor("HygonGenuine"), HypercallInsn::Vmmcall);
        assert_eq!(HypercallInsn::Vmcall.to_string(), "vmcall (0f 01 c1)");
        assert_eq!(HypercallInsn::Vmmcall.to_string(), "vmmcall (0f 01 d9)");
        assert_eq!(host_vendor().len(), 12);
    }

    #[test]
    fn probe_guest_code() {
        assert_eq!(probe_code(HypercallInsn::Vmcall), [0xb8, 1, 0, 0, 0, 0x0f, 0x01, 0xc1, 0xe7, 0xf4, 0xf4]);
        assert_eq!(&probe_code(HypercallInsn::Vmmcall)[5..8], &[0x0f, 0x01, 0xd9]);
    }

    #[test]
    fn probe_report_lines() {
        let probe = HostProbe {
            kvm_path: "/dev/kvm".into(),
            api_version: 12,
            caps: vec![("KVM_CAP_IRQCHIP", true), ("KVM_CAP_HYPERV", false)],
            max_vcpus: VcpuLimit::from_caps(1024, 2),
            host_vendor: "GenuineIntel".into(),
            signature: Some(("KVMKVMKVM".into(), 0x4000_0001)),
            plan: FeaturePlan::new(Some(HOST_WORD), Personality::Kvm, hangs(), 1 << 5),
        };
        let lines = probe.lines();
        for want in [
            "KVM API version: 12",
            "KVM_CAP_IRQCHIP: present",
            "KVM_CAP_HYPERV: absent",
            "max vCPUs: 1024 (KVM_CAP_MAX_VCPUS; pvrun takes at most 255)",
            "KVM CPUID signature (0x40000000): \"KVMKVMKVM\", max leaf 0x40000001",
            "KVM features (0x40000001 EAX): 0x01007efb",
            "  bit 24 clocksource_stable_bit",
            "hypercall probe: hangs: vmcall (0f 01 c1) did not return within 100.0 ms; \
             the watchdog broke KVM_RUN after 101.0 ms",
            "advertised features (0x40000001 EAX): 0x0100565b",
            "  cleared bit 5 steal_time: --cpuid-mask",
        ] {
            assert!(lines.iter().any(|l| l == want), "{want:?} in {lines:#?}");
        }
        assert_eq!(lines.iter().filter(|l| l.starts_with("  bit ")).count(), 14);
        assert_eq!(lines.iter().filter(|l| l.starts_with("  cleared ")).count(), 5);
        assert!(probe.to_string().ends_with('\n'));
    }

    #[test]
    fn probe_report_says_where_the_vcpu_limit_came_from() {
        let probe = |max_vcpus| HostProbe {
            kvm_path: "/dev/kvm".into(),
            api_version: 12,
            caps: vec![],
            max_vcpus,
            host_vendor: "GenuineIntel".into(),
            signature: None,
            plan: FeaturePlan::new(None, Personality::None, HypercallProbe::NotNeeded, 0),
        };
        let max_line = |p: HostProbe| p.lines().into_iter().find(|l| l.starts_with("max vCPUs: ")).unwrap();
        assert_eq!(
            max_line(probe(VcpuLimit::from_caps(64, 4))),
            "max vCPUs: 64 (KVM_CAP_MAX_VCPUS; pvrun takes at most 255)"
        );
        assert_eq!(
            max_line(probe(VcpuLimit::from_caps(0, 4))),
            "max vCPUs: 4 (KVM_CAP_NR_VCPUS; KVM reports no KVM_CAP_MAX_VCPUS; pvrun takes at most 255)"
        );
        assert_eq!(
            max_line(probe(VcpuLimit::from_caps(0, 0))),
            "max vCPUs: 8 (pvrun's fallback; KVM reports neither KVM_CAP_MAX_VCPUS nor \
             KVM_CAP_NR_VCPUS; pvrun takes at most 255)"
        );
    }
}
