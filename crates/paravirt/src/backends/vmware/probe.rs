//! Detection. With the "VMwareVMware" signature at some hypervisor CPUID base
//! the backdoor is still confirmed by GETVERSION before any other command.
//! Without it the port alone can tell (QEMU's vmport under TCG, which signs
//! the leaves "TCGTCGTCGTCG"): one GETVERSION, which on a host without the
//! port reads all ones and leaves EBX as it was. The port is not touched
//! where KVM, Xen or Hyper-V sign the leaves — hosts known not to be VMware
//! (KVM, Xen and Hyper-V have backends of their own),
//! and a guest there pays nothing for this one — nor by a kernel in ring 3
//! (the lguest and Xen PV boot flows never probe; `in` would #GP there).

use core::cell::UnsafeCell;
use core::fmt::Write;
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::abi::{self, cmd};
use super::ops::backdoor;
use crate::select::{CpuidSource, Note, Probe};

/// Priority of VMware when found: below KVM's and Xen's, whose own backends
/// serve those hosts better (a VMware backdoor beside them is an extra).
pub const PRIORITY: u32 = 20;

/// Signatures of hypervisors known not to be VMware: the port is not
/// probed under them.
const OTHERS: &[&[u8; 12]] =
    &[crate::backends::kvm::abi::SIGNATURE, crate::backends::xen::abi::SIGNATURE, b"Microsoft Hv"];

/// What detection did, for reports and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not run yet (or not on a hardware boot flow).
    NotRun,
    /// The port was left alone: another hypervisor signed the CPUID leaves.
    Skipped,
    /// GETVERSION through the port found no backdoor.
    Absent,
    /// The backdoor answered GETVERSION.
    Found {
        /// Its EAX (6 on VMware and QEMU).
        version: u32,
        /// Its ECX, the VMX type (2: ESX).
        vmx_type: u32,
        /// The VMware CPUID base, when the leaves are signed.
        base: Option<u32>,
    },
}

const NOT_RUN: u8 = 0;
const SKIPPED: u8 = 1;
const ABSENT: u8 = 2;
const FOUND: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(NOT_RUN);
static VERSION: AtomicU32 = AtomicU32::new(0);
static VMX_TYPE: AtomicU32 = AtomicU32::new(0);
/// The VMware CPUID base, 0 when unsigned.
static BASE: AtomicU32 = AtomicU32::new(0);
/// Ports read by the probe, and the TSC ticks they took.
static PORT_READS: AtomicU32 = AtomicU32::new(0);
static PROBE_TICKS: AtomicU64 = AtomicU64::new(0);

/// The refusal note: written once, by `detect`, before `STATE` is published.
struct RefusalCell(UnsafeCell<Option<Note>>);
// SAFETY: written only by `detect`, which runs once on the boot CPU before any
// reader (readers first load `STATE` with Acquire, after it was stored with
// Release).
unsafe impl Sync for RefusalCell {}
static REFUSAL: RefusalCell = RefusalCell(UnsafeCell::new(None));

/// The VMware base leaf, if the CPUID leaves are signed "VMwareVMware".
pub fn signed_base(probe: &Probe) -> Option<u32> {
    probe.find(&abi::SIGNATURE).map(|l| l.base)
}

/// Whether GETVERSION's answer is the backdoor's: EBX came back as the
/// magic (an unclaimed port changes only EAX, to all ones).
pub fn answers_getversion(eax: u32, ebx: u32) -> bool {
    eax != abi::UNSUPPORTED && ebx == abi::MAGIC
}

/// Whether the port may be probed under these CPUID leaves.
pub fn may_probe_port(probe: &Probe) -> bool {
    !probe.leaves().any(|l| OTHERS.contains(&&l.signature))
}

/// Priority when the backdoor answers (probed once, on the boot CPU).
pub fn detect(probe: &Probe, _src: &dyn CpuidSource) -> Option<u32> {
    if STATE.load(Ordering::Acquire) == NOT_RUN {
        run(probe);
    }
    (STATE.load(Ordering::Acquire) == FOUND).then_some(PRIORITY)
}

fn run(probe: &Probe) {
    let base = signed_base(probe);
    // A hosted build (the unit tests) has no port to read.
    if cfg!(not(target_os = "none")) || (base.is_none() && !may_probe_port(probe)) {
        STATE.store(SKIPPED, Ordering::Release);
        return;
    }
    let t0 = crate::backends::native::ops::read_tsc();
    // EBX in: anything but the magic (Linux's pre-2024 choice).
    let r = backdoor(cmd::GETVERSION, abi::UNSUPPORTED, 0, 0, 0);
    PROBE_TICKS.store(crate::backends::native::ops::read_tsc() - t0, Ordering::Relaxed);
    PORT_READS.store(1, Ordering::Relaxed);
    let state = if answers_getversion(r.eax, r.ebx) {
        VERSION.store(r.eax, Ordering::Relaxed);
        VMX_TYPE.store(r.ecx, Ordering::Relaxed);
        BASE.store(base.unwrap_or(0), Ordering::Relaxed);
        FOUND
    } else {
        if let Some(b) = base {
            let mut note = Note::new();
            let _ = write!(
                note,
                "VMwareVMware at {b:#x} but no backdoor: GETVERSION gave eax={:#x} ebx={:#x}",
                r.eax, r.ebx
            );
            // SAFETY: see `RefusalCell`: this is the one write, before STATE.
            unsafe { *REFUSAL.0.get() = Some(note) };
        }
        ABSENT
    };
    STATE.store(state, Ordering::Release);
}

/// What detection did.
pub fn outcome() -> Outcome {
    match STATE.load(Ordering::Acquire) {
        SKIPPED => Outcome::Skipped,
        ABSENT => Outcome::Absent,
        FOUND => Outcome::Found {
            version: VERSION.load(Ordering::Relaxed),
            vmx_type: VMX_TYPE.load(Ordering::Relaxed),
            base: Some(BASE.load(Ordering::Relaxed)).filter(|&b| b != 0),
        },
        _ => Outcome::NotRun,
    }
}

/// Port reads the probe made (0 or 1) and the TSC ticks they took.
pub fn cost() -> (u32, u64) {
    (PORT_READS.load(Ordering::Relaxed), PROBE_TICKS.load(Ordering::Relaxed))
}

/// The signature without a backdoor, when that is what the probe found.
pub fn refusal() -> Option<Note> {
    if STATE.load(Ordering::Acquire) == NOT_RUN {
        return None;
    }
    // SAFETY: published before STATE (see `RefusalCell`); never written again.
    unsafe { *REFUSAL.0.get() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::select::tests::FakeCpuid;

    #[test]
    fn getversion_is_the_backdoors_only_with_the_magic_in_ebx() {
        assert!(answers_getversion(6, abi::MAGIC));
        // An unclaimed port: EAX all ones, EBX as it went in.
        assert!(!answers_getversion(abi::UNSUPPORTED, abi::UNSUPPORTED));
        assert!(!answers_getversion(abi::UNSUPPORTED, abi::MAGIC));
        assert!(!answers_getversion(6, 0));
    }

    #[test]
    fn the_port_is_left_alone_under_kvm_xen_and_hyper_v() {
        for (sig, probe_port) in [
            (*b"KVMKVMKVM\0\0\0", false),
            (*b"XenVMMXenVMM", false),
            (*b"Microsoft Hv", false),
            (*b"TCGTCGTCGTCG", true),
            (*b"VMwareVMware", true),
        ] {
            let probe = Probe::scan(&FakeCpuid::bare().with_hv(0x4000_0000, &sig, 0x4000_0010));
            assert_eq!(may_probe_port(&probe), probe_port, "{}", core::str::from_utf8(&sig).unwrap());
        }
        assert!(may_probe_port(&Probe::scan(&FakeCpuid::bare())), "no hypervisor bit: probed");
        let vmware = Probe::scan(&FakeCpuid::bare().with_hv(0x4000_0100, b"VMwareVMware", 0x4000_0110));
        assert_eq!(signed_base(&vmware), Some(0x4000_0100), "any base");
    }

    #[test]
    fn a_hosted_build_never_touches_the_port() {
        let probe = Probe::scan(&FakeCpuid::bare());
        assert_eq!(detect(&probe, &FakeCpuid::bare()), None);
        assert_eq!(outcome(), Outcome::Skipped);
        assert_eq!(cost().0, 0);
    }
}
