//! Backend selection: probe every backend (as Linux's `hypervisor.c` does), the
//! highest priority wins, and `pv=<name>` on the command line overrides.

use crate::ops::cpu::CpuidResult;
use crate::ops::Op;
use crate::table::PvOps;

/// Where CPUID answers come from (the CPU, or a table in tests).
pub trait CpuidSource {
    /// `cpuid` with EAX = leaf, ECX = subleaf.
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult;
}

/// The CPU's own `cpuid` (through the native op: selection runs before patching).
pub struct CpuCpuid;

impl CpuidSource for CpuCpuid {
    fn cpuid(&self, leaf: u32, subleaf: u32) -> CpuidResult {
        crate::backends::native::ops::cpuid(leaf, subleaf)
    }
}

/// First hypervisor leaf base, last base scanned, and the step between them.
pub const HV_LEAF_FIRST: u32 = 0x4000_0000;
/// Last base scanned.
pub const HV_LEAF_LAST: u32 = 0x4001_0000;
/// Step between bases.
pub const HV_LEAF_STEP: u32 = 0x100;
/// Most hypervisor leaf bases remembered.
pub const MAX_HV_LEAVES: usize = 8;

/// One hypervisor CPUID range found by the scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HvLeaf {
    /// Its base leaf (0x40000000, 0x40000100, ...).
    pub base: u32,
    /// EAX of the base leaf: the highest leaf in this range.
    pub max_leaf: u32,
    /// EBX, ECX, EDX of the base leaf.
    pub signature: [u8; 12],
}

/// What the scan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// CPUID.1:ECX bit 31, "running under a hypervisor".
    pub hypervisor_bit: bool,
    leaves: [Option<HvLeaf>; MAX_HV_LEAVES],
}

impl Probe {
    /// Scans 0x40000000..=0x40010000 in steps of 0x100, keeping every base whose
    /// max-leaf field is plausible (within its own range).
    pub fn scan(src: &dyn CpuidSource) -> Probe {
        let mut p = Probe { hypervisor_bit: src.cpuid(1, 0).ecx & (1 << 31) != 0, ..Default::default() };
        if !p.hypervisor_bit {
            return p;
        }
        let mut n = 0;
        let mut base = HV_LEAF_FIRST;
        while base <= HV_LEAF_LAST && n < MAX_HV_LEAVES {
            let r = src.cpuid(base, 0);
            if r.eax >= base && r.eax < base + HV_LEAF_STEP {
                let mut signature = [0u8; 12];
                signature[..4].copy_from_slice(&r.ebx.to_le_bytes());
                signature[4..8].copy_from_slice(&r.ecx.to_le_bytes());
                signature[8..].copy_from_slice(&r.edx.to_le_bytes());
                p.leaves[n] = Some(HvLeaf { base, max_leaf: r.eax, signature });
                n += 1;
            }
            base += HV_LEAF_STEP;
        }
        p
    }

    /// Every hypervisor range found, lowest base first.
    pub fn leaves(&self) -> impl Iterator<Item = &HvLeaf> {
        self.leaves.iter().flatten()
    }

    /// The range announcing `signature`, if any.
    pub fn find(&self, signature: &[u8; 12]) -> Option<&HvLeaf> {
        self.leaves().find(|l| &l.signature == signature)
    }
}

/// A set of ops (bit n = `Op` n).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpSet(u64);

const _: () = assert!(crate::ops::OP_COUNT <= 64);

impl OpSet {
    /// The empty set.
    pub const EMPTY: OpSet = OpSet(0);
    /// Adds an op.
    pub fn insert(&mut self, op: Op) {
        self.0 |= 1 << op as u64;
    }
    /// Whether `op` is in the set.
    pub fn contains(&self, op: Op) -> bool {
        self.0 & (1 << op as u64) != 0
    }
    /// Number of ops in the set.
    pub fn len(&self) -> usize {
        self.0.count_ones() as usize
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

/// What a backend's set-up may use.
pub struct InitEnv<'a> {
    /// CPUID answers.
    pub cpuid: &'a dyn CpuidSource,
    /// The probe result.
    pub probe: &'a Probe,
    /// Physical address of a kernel virtual address (for structures the
    /// hypervisor writes into).
    pub virt_to_phys: fn(u64) -> u64,
    /// How the kernel was entered.
    pub boot: crate::BootFlow,
}

/// A backend descriptor, one per vendor ABI.
pub struct Backend {
    /// Name for `pv=` and reports.
    pub name: &'static str,
    /// Priority when present (higher wins), `None` when absent.
    pub detect: fn(&Probe, &dyn CpuidSource) -> Option<u32>,
    /// Overwrites the ops it implements in `ops` (the rest stay native) and returns
    /// their set, plus a one-line description of the ABI in use.
    pub install: fn(&InitEnv, &mut PvOps) -> (OpSet, AbiLine),
    /// Per-CPU set-up on a secondary CPU (the boot CPU's is part of `install`).
    pub init_cpu: fn(u32),
    /// The physical memory map, for boot protocols that carry none; returns the
    /// number of ranges written (0: the backend has no map to offer).
    pub memory_map: fn(&mut [crate::MemoryRange]) -> usize,
    /// Starts a secondary CPU through the hypervisor (see [`crate::start_cpu`]).
    pub start_cpu: fn(u32, u64, u64) -> crate::StartCpu,
    /// The backend's own patch for an op it provides, if it has one (a call
    /// to the op table's function otherwise); called after `install`.
    pub patch: fn(Op) -> Option<crate::patch::Patch>,
    /// How `# op` lines name an op this backend serves with its own patch.
    pub patched_name: fn(crate::patch::Patch) -> &'static str,
    /// What the probe found of the backend's hypervisor and refused, and why
    /// (a VMI ROM with a bad checksum, ...); `None` when it refused nothing.
    pub refusal: fn() -> Option<Note>,
}

impl Backend {
    /// Ops served with their own patch by no backend.
    pub const NO_PATCH: fn(Op) -> Option<crate::patch::Patch> = |_| None;
    /// Nothing refused.
    pub const NO_REFUSAL: fn() -> Option<Note> = || None;
}

/// A short text a backend keeps without a heap (at most [`Note::CAPACITY`]
/// bytes; longer text is cut).
#[derive(Clone, Copy)]
pub struct Note {
    bytes: [u8; Note::CAPACITY],
    len: usize,
}

impl Note {
    /// Most bytes a note holds.
    pub const CAPACITY: usize = 120;

    /// An empty note.
    pub const fn new() -> Note {
        Note { bytes: [0; Note::CAPACITY], len: 0 }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        match core::str::from_utf8(&self.bytes[..self.len]) {
            Ok(s) => s,
            // Cut inside a character: keep the whole ones.
            Err(e) => core::str::from_utf8(&self.bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

impl Default for Note {
    fn default() -> Self {
        Note::new()
    }
}

impl core::fmt::Write for Note {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(Note::CAPACITY - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

impl core::fmt::Display for Note {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl core::fmt::Debug for Note {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A short description of the ABI a backend found (`kvm-pv features=0x...`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiLine {
    /// ABI name.
    pub name: &'static str,
    /// Feature word, when the ABI has one.
    pub features: Option<u64>,
}

/// Why the command line's `pv=` was not honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverrideProblem<'a> {
    /// No backend has that name.
    Unknown(&'a str),
    /// The backend exists but did not detect its hypervisor.
    Unavailable(&'a str),
}

/// The outcome of selection.
#[derive(Clone, Copy)]
pub struct Decision<'a> {
    /// The winner.
    pub backend: &'static Backend,
    /// Its priority.
    pub priority: u32,
    /// Chosen by `pv=`.
    pub by_override: bool,
    /// A `pv=` that could not be honoured (selection fell back to probing).
    pub problem: Option<OverrideProblem<'a>>,
}

/// The decision when the boot flow leaves one possible backend: a `pv=` naming
/// another is reported as unavailable.
pub fn only<'a>(backend: &'static Backend, priority: u32, requested: Option<&'a str>) -> Decision<'a> {
    let problem = requested.filter(|r| *r != backend.name).map(OverrideProblem::Unavailable);
    Decision { backend, priority, by_override: requested == Some(backend.name), problem }
}

/// Picks a backend from `backends` (the first entry must be native, which is
/// always present with priority 0).
pub fn decide<'a>(
    backends: &'static [Backend],
    probe: &Probe,
    src: &dyn CpuidSource,
    requested: Option<&'a str>,
) -> Decision<'a> {
    let mut problem = None;
    if let Some(name) = requested {
        match backends.iter().find(|b| b.name == name) {
            None => problem = Some(OverrideProblem::Unknown(name)),
            Some(b) => match (b.detect)(probe, src) {
                Some(priority) => return Decision { backend: b, priority, by_override: true, problem: None },
                None => problem = Some(OverrideProblem::Unavailable(name)),
            },
        }
    }
    let mut best = (&backends[0], 0);
    for b in backends {
        if let Some(p) = (b.detect)(probe, src) {
            if p > best.1 {
                best = (b, p);
            }
        }
    }
    Decision { backend: best.0, priority: best.1, by_override: false, problem }
}

/// Value of `key=value` on a command line.
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|w| {
        let (k, v) = w.split_once('=')?;
        (k == key).then_some(v)
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::backends::BACKENDS;
    use std::collections::HashMap;

    /// A CPUID table; absent leaves read as zeros (as on hardware past max leaf,
    /// near enough for these tests).
    #[derive(Default)]
    pub struct FakeCpuid(pub HashMap<u32, CpuidResult>);

    impl CpuidSource for FakeCpuid {
        fn cpuid(&self, leaf: u32, _subleaf: u32) -> CpuidResult {
            self.0.get(&leaf).copied().unwrap_or_default()
        }
    }

    fn sig(s: &[u8; 12]) -> (u32, u32, u32) {
        let w = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
        (w(0), w(4), w(8))
    }

    impl FakeCpuid {
        pub fn bare() -> Self {
            let mut t = FakeCpuid::default();
            t.0.insert(0, CpuidResult { eax: 0xd, ..Default::default() });
            t.0.insert(1, CpuidResult::default());
            t
        }

        pub fn with_hv(mut self, base: u32, s: &[u8; 12], max: u32) -> Self {
            self.0.get_mut(&1).unwrap().ecx |= 1 << 31;
            let (ebx, ecx, edx) = sig(s);
            self.0.insert(base, CpuidResult { eax: max, ebx, ecx, edx });
            self
        }

        pub fn leaf(mut self, leaf: u32, eax: u32) -> Self {
            self.0.insert(leaf, CpuidResult { eax, ..Default::default() });
            self
        }
    }

    pub const KVM: &[u8; 12] = b"KVMKVMKVM\0\0\0";
    pub const HYPERV: &[u8; 12] = b"Microsoft Hv";
    pub const XEN: &[u8; 12] = b"XenVMMXenVMM";
    pub const TCG: &[u8; 12] = b"TCGTCGTCGTCG";

    fn pick(t: &FakeCpuid, req: Option<&str>) -> (&'static str, Option<OverrideProblem<'static>>) {
        let probe = Probe::scan(t);
        // The requested name outlives the call in these tests.
        let req: Option<&'static str> = req.map(|r| &*std::string::String::from(r).leak());
        let d = decide(BACKENDS, &probe, t, req);
        (d.backend.name, d.problem)
    }

    #[test]
    fn bare_metal_is_native() {
        let t = FakeCpuid::bare();
        assert!(!Probe::scan(&t).hypervisor_bit);
        assert_eq!(pick(&t, None).0, "native");
    }

    #[test]
    fn hypervisor_leaves_ignored_without_the_hypervisor_bit() {
        let mut t = FakeCpuid::bare().with_hv(0x4000_0000, KVM, 0x4000_0001);
        t.0.get_mut(&1).unwrap().ecx = 0;
        assert_eq!(Probe::scan(&t).leaves().count(), 0);
        assert_eq!(pick(&t, None).0, "native");
    }

    #[test]
    fn kvm_is_found_at_the_base_leaf() {
        let t = FakeCpuid::bare().with_hv(0x4000_0000, KVM, 0x4000_0001).leaf(0x4000_0001, 0x01007efb);
        assert_eq!(pick(&t, None).0, "kvm");
    }

    #[test]
    fn kvm_behind_hyperv_is_found_at_the_next_base() {
        let t = FakeCpuid::bare()
            .with_hv(0x4000_0000, HYPERV, 0x4000_000a)
            .with_hv(0x4000_0100, KVM, 0x4000_0101)
            .leaf(0x4000_0101, 0x8);
        let probe = Probe::scan(&t);
        assert_eq!(probe.leaves().count(), 2);
        assert_eq!(probe.find(KVM).map(|l| l.base), Some(0x4000_0100));
        assert_eq!(pick(&t, None).0, "kvm");
    }

    #[test]
    fn several_ranges_and_an_implausible_one() {
        let t = FakeCpuid::bare()
            .with_hv(0x4000_0000, XEN, 0x4000_0005)
            .with_hv(0x4000_0200, KVM, 0x4000_0201)
            // max leaf outside its own range: not a hypervisor range
            .with_hv(0x4000_0300, TCG, 0x1234);
        let probe = Probe::scan(&t);
        let bases: std::vec::Vec<u32> = probe.leaves().map(|l| l.base).collect();
        assert_eq!(bases, [0x4000_0000, 0x4000_0200]);
        // Both known: the higher priority (Xen) wins, and pv= can pick KVM.
        assert_eq!(pick(&t, None).0, "xen");
        assert_eq!(pick(&t, Some("kvm")), ("kvm", None));
    }

    #[test]
    fn xen_is_found_behind_viridian() {
        let t = FakeCpuid::bare().with_hv(0x4000_0000, HYPERV, 0x4000_0005).with_hv(
            0x4000_0100,
            XEN,
            0x4000_0105,
        );
        assert_eq!(Probe::scan(&t).find(XEN).map(|l| l.base), Some(0x4000_0100));
        assert_eq!(pick(&t, None).0, "xen");
    }

    #[test]
    fn unknown_hypervisor_is_native() {
        let t = FakeCpuid::bare().with_hv(0x4000_0000, TCG, 0x4000_0001);
        assert_eq!(pick(&t, None).0, "native");
    }

    #[test]
    fn override_to_native_beats_probing() {
        let t = FakeCpuid::bare().with_hv(0x4000_0000, KVM, 0x4000_0001);
        assert_eq!(pick(&t, Some("native")), ("native", None));
    }

    #[test]
    fn unknown_override_falls_back_with_a_reason() {
        let t = FakeCpuid::bare().with_hv(0x4000_0000, KVM, 0x4000_0001);
        assert_eq!(pick(&t, Some("bogus")), ("kvm", Some(OverrideProblem::Unknown("bogus"))));
    }

    #[test]
    fn vmi_without_its_rom_is_unavailable() {
        let t = FakeCpuid::bare().with_hv(0x4000_0000, KVM, 0x4000_0001);
        assert_eq!(pick(&t, Some("vmi")), ("kvm", Some(OverrideProblem::Unavailable("vmi"))));
    }

    #[test]
    fn unavailable_override_falls_back_with_a_reason() {
        let t = FakeCpuid::bare();
        assert_eq!(pick(&t, Some("kvm")), ("native", Some(OverrideProblem::Unavailable("kvm"))));
    }

    #[test]
    fn a_boot_flow_with_one_backend_reports_other_overrides() {
        let xen = &BACKENDS[2];
        let d = only(xen, 100, None);
        assert_eq!((d.backend.name, d.by_override, d.problem), ("xen", false, None));
        let d = only(xen, 100, Some("xen"));
        assert!(d.by_override && d.problem.is_none());
        let d = only(xen, 100, Some("kvm"));
        assert_eq!((d.backend.name, d.problem), ("xen", Some(OverrideProblem::Unavailable("kvm"))));
    }

    #[test]
    fn notes_keep_what_fits() {
        use core::fmt::Write;
        let mut n = Note::new();
        let why = "bad checksum";
        write!(n, "ROM at {:#x}: {why}", 0xc0000).unwrap();
        assert_eq!(n.as_str(), "ROM at 0xc0000: bad checksum");
        let mut long = Note::new();
        for _ in 0..50 {
            long.write_str("αβγ").unwrap();
        }
        assert!(long.as_str().len() <= Note::CAPACITY && long.as_str().ends_with('γ'));
    }

    #[test]
    fn cmdline_values() {
        assert_eq!(cmdline_value("a=1 pv=kvm b", "pv"), Some("kvm"));
        assert_eq!(cmdline_value("pvx=1", "pv"), None);
        assert_eq!(cmdline_value("", "pv"), None);
    }
}
