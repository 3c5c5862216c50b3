//! The CPUID each vCPU gets: KVM's supported set (`KVM_GET_SUPPORTED_CPUID`)
//! patched with the vCPU's APIC ID and the CPU count, the hypervisor
//! personality, and KVM paravirtual feature bits cleared.
//!
//! Everything here is pure (entries in, entries out), so it is unit-tested
//! with made-up tables.

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID leaf 1 ECX bit 31: running under a hypervisor.
pub const CPUID_1_ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID leaf 1 EDX bit 28: HTT, "`EBX[23:16]` is valid" (more than one
/// logical processor per package).
pub const CPUID_1_EDX_HTT: u32 = 1 << 28;
/// First leaf of the hypervisor range (`KVM_CPUID_SIGNATURE`).
pub const HYPERVISOR_LEAF_FIRST: u32 = 0x4000_0000;
/// Last leaf of the range pvrun hides with [`Personality::None`].
pub const HYPERVISOR_LEAF_LAST: u32 = 0x4000_00ff;
/// `KVM_CPUID_FEATURES`: EAX holds the KVM paravirtual feature bits.
pub const KVM_CPUID_FEATURES: u32 = 0x4000_0001;

/// KVM's paravirtual feature bits (CPUID 0x40000001 EAX), by bit number,
/// named as `KVM_FEATURE_*` in Documentation/virt/kvm/x86/cpuid.rst,
/// lowercased and without the prefix.
pub const KVM_FEATURES: [(u8, &str); 18] = [
    (0, "clocksource"),
    (1, "nop_io_delay"),
    (2, "mmu_op"),
    (3, "clocksource2"),
    (4, "async_pf"),
    (5, "steal_time"),
    (6, "pv_eoi"),
    (7, "pv_unhalt"),
    (9, "pv_tlb_flush"),
    (10, "async_pf_vmexit"),
    (11, "pv_send_ipi"),
    (12, "poll_control"),
    (13, "pv_sched_yield"),
    (14, "async_pf_int"),
    (15, "msi_ext_dest_id"),
    (16, "hc_map_gpa_range"),
    (17, "migration_control"),
    (24, "clocksource_stable_bit"),
];

/// The name of KVM feature bit `bit`, if it has one.
pub fn feature_name(bit: u8) -> Option<&'static str> {
    KVM_FEATURES.iter().find(|(b, _)| *b == bit).map(|(_, name)| *name)
}

/// `name` as used in messages: the feature name, or `bit N` if unnamed.
pub fn feature_label(bit: u8) -> String {
    feature_name(bit).map_or_else(|| format!("bit {bit}"), str::to_owned)
}

/// The set bits of `word`, lowest first.
pub fn bits(word: u32) -> impl Iterator<Item = u8> {
    (0..32u8).filter(move |b| word & (1 << b) != 0)
}

/// What the guest is told about the hypervisor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Personality {
    /// The guest sees KVM: CPUID.1:ECX bit 31 set and leaves
    /// 0x40000000/0x40000001 as KVM reports them, minus the cleared bits.
    #[default]
    Kvm,
    /// The guest sees no hypervisor: CPUID.1:ECX bit 31 clear and no leaf in
    /// 0x40000000..=0x400000ff, so a kernel takes its native path.
    None,
    /// lguest64: the kernel is entered in ring 3 at its lguest64 entry and
    /// served lguest's hypercalls (see `docs/abi/lguest.md`). CPUID.1:ECX bit 31
    /// set, no leaf in 0x40000000..=0x400000ff (lguest had no signature; the
    /// boot flow tells the kernel). One vCPU.
    Lguest,
    /// VMI/64: a VMI option ROM at 0xC0000 serves the kernel's privileged
    /// operations (see `docs/abi/vmi.md`). CPUID.1:ECX bit 31 set, no leaf in
    /// 0x40000000..=0x400000ff (VMI announced itself by its ROM).
    Vmi,
    /// VMware's backdoor (see `docs/abi/vmware.md`): KVM's leaves replaced
    /// by "VMwareVMware" at 0x40000000 and the timing leaf 0x40000010, and
    /// the backdoor port 0x5658 served (TSC and APIC frequencies, the wall
    /// clock, a steal clock per vCPU).
    Vmware,
    /// Hyper-V (see `docs/abi/hyperv.md`): KVM's leaves replaced by
    /// "Microsoft Hv" and the leaves up to 0x40000005, the synthetic MSRs
    /// (reference TSC page, frequencies, VP index) and the IPI hypercalls
    /// served.
    Hyperv,
}

impl Personality {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Personality::Kvm => "kvm",
            Personality::None => "none",
            Personality::Lguest => "lguest",
            Personality::Vmi => "vmi",
            Personality::Vmware => "vmware",
            Personality::Hyperv => "hyperv",
        }
    }
}

/// A `--cpuid-mask` list that names something that is not a KVM feature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown KVM feature '{item}' in the CPUID mask; valid names: {}; or bit numbers 0..=31",
    KVM_FEATURES.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
)]
pub struct MaskError {
    /// The item that was not understood.
    pub item: String,
}

/// Parses a `--cpuid-mask` list: comma-separated feature names (see
/// [`KVM_FEATURES`], case-insensitive, an optional `kvm_feature_` prefix
/// allowed) and/or bit numbers 0..=31. Returns the bits to clear from
/// CPUID 0x40000001 EAX. Empty items are ignored.
pub fn parse_feature_mask(list: &str) -> Result<u32, MaskError> {
    let mut mask = 0u32;
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let lower = item.to_ascii_lowercase();
        let name = lower.strip_prefix("kvm_feature_").unwrap_or(&lower);
        let bit = match name.parse::<u8>() {
            Ok(n) if n < 32 => Some(n),
            Ok(_) => None,
            Err(_) => KVM_FEATURES.iter().find(|(_, n)| *n == name).map(|(b, _)| *b),
        };
        match bit {
            Some(b) => mask |= 1 << b,
            None => return Err(MaskError { item: item.to_owned() }),
        }
    }
    Ok(mask)
}

/// How to patch KVM's supported CPUID for every vCPU of a VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidSpec {
    /// Number of vCPUs (1..=255, [`crate::config::CPUS_MAX`]):
    /// `CPUID.1:EBX[23:16]` (8 bits), and HTT when > 1. vCPU `n` has APIC
    /// ID `n` (0..=254: the xAPIC's 8 bits, 0xFF being the broadcast ID).
    pub cpus: u8,
    /// What the guest sees of the hypervisor.
    pub personality: Personality,
    /// KVM feature bits to clear from CPUID 0x40000001 EAX (personality kvm).
    pub kvm_features_clear: u32,
    /// The guest TSC's frequency, kHz, for VMware's timing leaf (personality
    /// vmware; 0: unknown, and the leaf says so).
    pub tsc_khz: u32,
}

/// VMware's timing leaf, at its hypervisor base + 0x10.
pub const VMWARE_TIMING_LEAF: u32 = HYPERVISOR_LEAF_FIRST + pvabi::vmware::TIMING_LEAF_OFFSET;

/// A 12-byte hypervisor signature as CPUID's EBX, ECX, EDX.
fn signature_words(signature: &[u8; 12]) -> [u32; 3] {
    let word =
        |i: usize| u32::from_le_bytes([signature[i], signature[i + 1], signature[i + 2], signature[i + 3]]);
    [word(0), word(4), word(8)]
}

/// The leaves personality vmware adds: the base leaf (the range reaching the
/// timing leaf, "VMwareVMware") and the timing leaf (TSC and APIC bus kHz;
/// ECX 0: the backdoor is the port, not vmcall).
pub fn vmware_leaves(tsc_khz: u32) -> [kvm_cpuid_entry2; 2] {
    let [ebx, ecx, edx] = signature_words(&pvabi::vmware::SIGNATURE);
    let base = kvm_cpuid_entry2 {
        function: HYPERVISOR_LEAF_FIRST,
        eax: VMWARE_TIMING_LEAF,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    let timing = kvm_cpuid_entry2 {
        function: VMWARE_TIMING_LEAF,
        eax: tsc_khz,
        ebx: crate::vm::KVM_APIC_BUS_KHZ,
        ..Default::default()
    };
    [base, timing]
}

/// The leaves personality hyperv adds, 0x40000000..=0x40000005: the
/// signature, "Hv#1", a version, the privileges and features served (the
/// frequency MSRs and reference TSC page only when the TSC frequency is
/// known), the recommendation to send IPIs by hypercall (with the "Ex" form
/// beyond 64 vCPUs), and the vCPU limit.
pub fn hyperv_leaves(tsc_khz: u32, cpus: u8) -> [kvm_cpuid_entry2; 6] {
    use pvabi::hyperv::{feature, leaf, privilege, recommend, INTERFACE_HV1, SIGNATURE};
    let sig = signature_words(&SIGNATURE);
    let clock = if tsc_khz != 0 { privilege::REFERENCE_TSC | privilege::FREQUENCY_MSRS } else { 0 };
    let entry = |function, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
        function,
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    };
    [
        entry(leaf::VENDOR, leaf::LIMITS, sig[0], sig[1], sig[2]),
        entry(leaf::INTERFACE, INTERFACE_HV1, 0, 0, 0),
        // Build 1, version 1.0: pvrun's, not a Windows release.
        entry(leaf::VERSION, 1, 1 << 16, 0, 0),
        entry(
            leaf::FEATURES,
            privilege::TIME_REF_COUNT | privilege::HYPERCALL_MSRS | privilege::VP_INDEX | clock,
            0,
            0,
            if tsc_khz != 0 { feature::FREQUENCY_MSRS } else { 0 },
        ),
        // No spinlock notifications (retry count all ones).
        entry(leaf::ENLIGHTENMENTS, recommend::CLUSTER_IPI | recommend::EX_PROCESSOR_MASKS, u32::MAX, 0, 0),
        entry(leaf::LIMITS, u32::from(cpus), u32::from(cpus), 0, 0),
    ]
}

/// KVM's supported CPUID `supported` patched for the vCPU with APIC ID
/// `apic_id`:
///
/// * leaf 1: `EBX[31:24]` = APIC ID, `EBX[23:16]` = CPU count, EDX.HTT set iff
///   more than one CPU, ECX bit 31 (hypervisor) clear for personality none and
///   set otherwise;
/// * leaves 0xB and 0x1F (every subleaf present): EDX = x2APIC ID;
/// * personality kvm: CPUID 0x40000001 EAX minus `kvm_features_clear`;
/// * personalities none, lguest and vmi: every leaf in 0x40000000..=0x400000ff dropped;
/// * personality vmware: those leaves replaced by [`vmware_leaves`];
/// * personality hyperv: those leaves replaced by [`hyperv_leaves`].
pub fn vcpu_cpuid(supported: &[kvm_cpuid_entry2], apic_id: u8, spec: &CpuidSpec) -> Vec<kvm_cpuid_entry2> {
    let mut out = Vec::with_capacity(supported.len());
    for entry in supported {
        let mut e = *entry;
        let hypervisor_leaf = (HYPERVISOR_LEAF_FIRST..=HYPERVISOR_LEAF_LAST).contains(&e.function);
        match (e.function, spec.personality) {
            (
                _,
                Personality::None
                | Personality::Lguest
                | Personality::Vmi
                | Personality::Vmware
                | Personality::Hyperv,
            ) if hypervisor_leaf => continue,
            (1, personality) => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(spec.cpus) << 16) | (u32::from(apic_id) << 24);
                if spec.cpus > 1 {
                    e.edx |= CPUID_1_EDX_HTT;
                } else {
                    e.edx &= !CPUID_1_EDX_HTT;
                }
                if personality != Personality::None {
                    e.ecx |= CPUID_1_ECX_HYPERVISOR;
                } else {
                    e.ecx &= !CPUID_1_ECX_HYPERVISOR;
                }
            }
            (0xb | 0x1f, _) => e.edx = u32::from(apic_id),
            (KVM_CPUID_FEATURES, Personality::Kvm) => e.eax &= !spec.kvm_features_clear,
            _ => {}
        }
        out.push(e);
    }
    match spec.personality {
        Personality::Vmware => out.extend(vmware_leaves(spec.tsc_khz)),
        Personality::Hyperv => out.extend(hyperv_leaves(spec.tsc_khz, spec.cpus)),
        _ => {}
    }
    out
}

/// The 12-byte vendor-style signature in EBX, ECX, EDX of `entry` (e.g.
/// `KVMKVMKVM\0\0\0` for 0x40000000), trailing NULs removed, other
/// unprintable bytes escaped.
pub fn signature(entry: &kvm_cpuid_entry2) -> String {
    let mut bytes = Vec::with_capacity(12);
    for r in [entry.ebx, entry.ecx, entry.edx] {
        bytes.extend_from_slice(&r.to_le_bytes());
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes.iter().flat_map(|b| b.escape_ascii()).map(char::from).collect()
}

/// What `cpuid` answers for `leaf`, `subleaf` from `entries` (EAX, EBX, ECX,
/// EDX; zeros for a leaf the table lacks).
pub fn lookup(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> [u32; 4] {
    let e = entries.iter().find(|e| {
        e.function == leaf
            && (e.flags & kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == subleaf)
    });
    e.map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
}

/// The entry for `function` (subleaf 0) in `entries`.
pub fn find(entries: &[kvm_cpuid_entry2], function: u32) -> Option<&kvm_cpuid_entry2> {
    entries.iter().find(|e| e.function == function && e.index == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// Leaves as this repository's host reports them (abridged).
    fn supported() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, [0x1c, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]),
            entry(1, 0, [0x000c_06f2, 0x0102_0800, 0x8120_2000, 0x0f8b_fbff]),
            entry(0xb, 0, [0, 0, 0, 0]),
            entry(0xb, 1, [0, 0, 0, 0]),
            entry(0x1f, 0, [0, 0, 0, 0]),
            entry(0x4000_0000, 0, [0x4000_0001, 0x4b4d_564b, 0x564b_4d56, 0x4d]),
            entry(0x4000_0001, 0, [0x0100_7efb, 0, 0, 0]),
            entry(0x4000_0010, 0, [1, 2, 3, 4]),
            entry(0x8000_0000, 0, [0x8000_0021, 0, 0, 0]),
        ]
    }

    fn spec(cpus: u8, personality: Personality, clear: u32) -> CpuidSpec {
        CpuidSpec { cpus, personality, kvm_features_clear: clear, tsc_khz: 2_400_000 }
    }

    fn leaf(entries: &[kvm_cpuid_entry2], function: u32) -> kvm_cpuid_entry2 {
        *find(entries, function).unwrap_or_else(|| panic!("leaf {function:#x}"))
    }

    #[test]
    fn apic_ids_and_count() {
        for (cpus, apic_id) in
            [(4u8, 0u8), (4, 3), (8, 7), (16, 15), (64, 63), (255, 0), (255, 128), (255, 254)]
        {
            let out = vcpu_cpuid(&supported(), apic_id, &spec(cpus, Personality::Kvm, 0));
            let l1 = leaf(&out, 1);
            assert_eq!(l1.ebx >> 24, u32::from(apic_id));
            assert_eq!((l1.ebx >> 16) & 0xff, u32::from(cpus));
            assert_eq!(l1.ebx & 0xffff, 0x0800, "CLFLUSH size and brand kept");
            assert_ne!(l1.edx & CPUID_1_EDX_HTT, 0, "HTT with {cpus} CPUs");
            assert_eq!(l1.edx & !CPUID_1_EDX_HTT, 0x0f8b_fbff, "other bits kept");
            for e in out.iter().filter(|e| e.function == 0xb || e.function == 0x1f) {
                assert_eq!(e.edx, u32::from(apic_id), "leaf {:#x}.{}", e.function, e.index);
            }
            assert_eq!(out.len(), supported().len());
        }
    }

    #[test]
    fn one_cpu_has_no_htt() {
        let mut table = supported();
        table[1].edx |= CPUID_1_EDX_HTT;
        let l1 = leaf(&vcpu_cpuid(&table, 0, &spec(1, Personality::Kvm, 0)), 1);
        assert_eq!(l1.edx & CPUID_1_EDX_HTT, 0);
        assert_eq!((l1.ebx >> 16) & 0xff, 1);
        assert_eq!(l1.ebx >> 24, 0);
    }

    #[test]
    fn personality_kvm_keeps_the_leaves_and_sets_the_hypervisor_bit() {
        let mut table = supported();
        table[1].ecx &= !CPUID_1_ECX_HYPERVISOR;
        let out = vcpu_cpuid(&table, 0, &spec(1, Personality::Kvm, 0));
        assert_ne!(leaf(&out, 1).ecx & CPUID_1_ECX_HYPERVISOR, 0);
        assert_eq!(signature(&leaf(&out, 0x4000_0000)), "KVMKVMKVM");
        assert_eq!(leaf(&out, KVM_CPUID_FEATURES).eax, 0x0100_7efb);
        assert!(find(&out, 0x4000_0010).is_some());
    }

    #[test]
    fn personality_none_drops_the_leaves_and_the_hypervisor_bit() {
        let out = vcpu_cpuid(&supported(), 1, &spec(2, Personality::None, 1 << 5));
        assert_eq!(leaf(&out, 1).ecx & CPUID_1_ECX_HYPERVISOR, 0);
        assert_eq!(leaf(&out, 1).ecx, 0x0120_2000, "other bits kept");
        assert!(out.iter().all(|e| !(HYPERVISOR_LEAF_FIRST..=HYPERVISOR_LEAF_LAST).contains(&e.function)));
        assert_eq!(out.len(), supported().len() - 3);
        // The rest is patched as usual.
        assert_eq!(leaf(&out, 1).ebx >> 16, 0x0102);
        assert!(find(&out, 0x8000_0000).is_some());
    }

    #[test]
    fn personality_lguest_drops_the_leaves_but_keeps_the_hypervisor_bit() {
        let out = vcpu_cpuid(&supported(), 0, &spec(1, Personality::Lguest, 0));
        assert_ne!(leaf(&out, 1).ecx & CPUID_1_ECX_HYPERVISOR, 0);
        assert!(out.iter().all(|e| !(HYPERVISOR_LEAF_FIRST..=HYPERVISOR_LEAF_LAST).contains(&e.function)));
    }

    #[test]
    fn personality_vmware_signs_vmware_and_answers_the_timing_leaf() {
        let out = vcpu_cpuid(&supported(), 0, &spec(2, Personality::Vmware, 0));
        assert_ne!(leaf(&out, 1).ecx & CPUID_1_ECX_HYPERVISOR, 0);
        let base = leaf(&out, 0x4000_0000);
        assert_eq!(signature(&base), "VMwareVMware");
        assert_eq!(base.eax, 0x4000_0010, "the range reaches the timing leaf");
        let timing = leaf(&out, 0x4000_0010);
        assert_eq!((timing.eax, timing.ebx, timing.ecx, timing.edx), (2_400_000, 1_000_000, 0, 0));
        assert!(find(&out, KVM_CPUID_FEATURES).is_none(), "KVM's leaves are gone");
        let hv: Vec<_> = out.iter().filter(|e| (0x4000_0000..=0x4000_00ff).contains(&e.function)).collect();
        assert_eq!(hv.len(), 2);
    }

    #[test]
    fn personality_hyperv_signs_microsoft_hv_and_offers_what_is_served() {
        use pvabi::hyperv::{feature, privilege, recommend};
        let out = vcpu_cpuid(&supported(), 0, &spec(3, Personality::Hyperv, 0));
        let base = leaf(&out, 0x4000_0000);
        assert_eq!((signature(&base).as_str(), base.eax), ("Microsoft Hv", 0x4000_0005));
        assert_eq!(leaf(&out, 0x4000_0001).eax, 0x3123_7648, "Hv#1");
        let features = leaf(&out, 0x4000_0003);
        let clock = privilege::REFERENCE_TSC | privilege::FREQUENCY_MSRS;
        assert_eq!(features.eax & clock, clock);
        assert_ne!(features.edx & feature::FREQUENCY_MSRS, 0);
        assert_ne!(leaf(&out, 0x4000_0004).eax & recommend::CLUSTER_IPI, 0);
        assert_eq!(leaf(&out, 0x4000_0005).eax, 3, "the vCPU limit");
        let hv = out.iter().filter(|e| (0x4000_0000..=0x4000_00ff).contains(&e.function)).count();
        assert_eq!(hv, 6);
        // Without a known TSC frequency, no clock is offered.
        let mut no_tsc = spec(3, Personality::Hyperv, 0);
        no_tsc.tsc_khz = 0;
        let features = leaf(&vcpu_cpuid(&supported(), 0, &no_tsc), 0x4000_0003);
        assert_eq!((features.eax & clock, features.edx & feature::FREQUENCY_MSRS), (0, 0));
    }

    #[test]
    fn masks_clear_feature_bits() {
        let clear = (1 << 5) | (1 << 7) | (1 << 16);
        let out = vcpu_cpuid(&supported(), 0, &spec(1, Personality::Kvm, clear));
        assert_eq!(leaf(&out, KVM_CPUID_FEATURES).eax, 0x0100_7efb & !clear);
        assert_eq!(leaf(&out, KVM_CPUID_FEATURES).eax, 0x0100_7e5b);
        // Only 0x40000001 EAX is touched.
        assert_eq!(leaf(&out, 0x4000_0010).eax, 1);
    }

    #[test]
    fn mask_parsing() {
        assert_eq!(parse_feature_mask("steal_time"), Ok(1 << 5));
        assert_eq!(parse_feature_mask("pv_eoi,steal_time,clocksource2"), Ok((1 << 6) | (1 << 5) | (1 << 3)));
        assert_eq!(parse_feature_mask("7, 13,pv_unhalt"), Ok((1 << 7) | (1 << 13)));
        assert_eq!(parse_feature_mask("KVM_FEATURE_PV_EOI,31"), Ok((1 << 6) | (1 << 31)));
        assert_eq!(parse_feature_mask("clocksource_stable_bit"), Ok(1 << 24));
        assert_eq!(parse_feature_mask(""), Ok(0));
        assert_eq!(parse_feature_mask("0,"), Ok(1));
        for (name_bit, name) in KVM_FEATURES {
            assert_eq!(parse_feature_mask(name), Ok(1 << name_bit));
        }
    }

    #[test]
    fn unknown_mask_items_list_the_valid_names() {
        for bad in ["steal", "32", "-1", "pv_eoi,bogus", "0x5"] {
            let err = parse_feature_mask(bad).unwrap_err();
            let text = err.to_string();
            assert!(text.contains("unknown KVM feature"), "{text}");
            assert!(
                text.contains("clocksource, nop_io_delay, mmu_op") && text.contains("pv_unhalt"),
                "{text}"
            );
            assert!(!text.contains('\n'));
        }
        assert_eq!(parse_feature_mask("pv_eoi,bogus").unwrap_err().item, "bogus");
    }

    #[test]
    fn feature_names() {
        assert_eq!(feature_name(7), Some("pv_unhalt"));
        assert_eq!(feature_name(8), None);
        assert_eq!(feature_label(8), "bit 8");
        assert_eq!(bits(0x8000_00a1).collect::<Vec<_>>(), vec![0, 5, 7, 31]);
    }
}
