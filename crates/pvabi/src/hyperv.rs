//! Microsoft Hyper-V's guest interface, the part paravirt's `hyperv` backend
//! uses and pvrun serves (`--personality hyperv`): the CPUID leaves, the
//! synthetic MSRs, the reference TSC page and the IPI hypercalls. The
//! contract, each fact with its source, is `docs/abi/hyperv.md` (version 1).
//!
//! Sources: Microsoft's *Hypervisor Top Level Functional Specification*
//! v6.0b (TLFS), and Linux `include/hyperv/hvgdk_mini.h` (formerly
//! `arch/x86/include/asm/hyperv-tlfs.h`) for the names used here.

/// CPUID leaves (TLFS, "Feature and interface discovery").
pub mod leaf {
    /// EAX = the highest leaf; EBX, ECX, EDX = [`super::SIGNATURE`].
    pub const VENDOR: u32 = 0x4000_0000;
    /// EAX = [`super::INTERFACE_HV1`].
    pub const INTERFACE: u32 = 0x4000_0001;
    /// EAX = build number, EBX = major << 16 | minor version.
    pub const VERSION: u32 = 0x4000_0002;
    /// EAX = partition privileges ([`super::privilege`]), EDX = feature bits ([`super::feature`]).
    pub const FEATURES: u32 = 0x4000_0003;
    /// EAX = recommendations ([`super::recommend`]), EBX = spinlock retries.
    pub const ENLIGHTENMENTS: u32 = 0x4000_0004;
    /// EAX = the most virtual processors, EBX = the most logical processors.
    pub const LIMITS: u32 = 0x4000_0005;
}

/// "Microsoft Hv" in EBX, ECX, EDX of [`leaf::VENDOR`].
pub const SIGNATURE: [u8; 12] = *b"Microsoft Hv";
/// "Hv#1" in EAX of [`leaf::INTERFACE`]: the TLFS interface.
pub const INTERFACE_HV1: u32 = 0x3123_7648;

/// Partition privileges, [`leaf::FEATURES`] EAX (`HV_MSR_*_AVAILABLE`, `HV_ACCESS_*`).
pub mod privilege {
    /// HV_X64_MSR_TIME_REF_COUNT may be read (AccessPartitionReferenceCounter).
    pub const TIME_REF_COUNT: u32 = 1 << 1;
    /// HV_X64_MSR_GUEST_OS_ID and HV_X64_MSR_HYPERCALL (AccessHypercallMsrs).
    pub const HYPERCALL_MSRS: u32 = 1 << 5;
    /// HV_X64_MSR_VP_INDEX (AccessVpIndex).
    pub const VP_INDEX: u32 = 1 << 6;
    /// HV_X64_MSR_REFERENCE_TSC (AccessPartitionReferenceTsc).
    pub const REFERENCE_TSC: u32 = 1 << 9;
    /// HV_X64_MSR_TSC_FREQUENCY and HV_X64_MSR_APIC_FREQUENCY (AccessFrequencyRegs).
    pub const FREQUENCY_MSRS: u32 = 1 << 11;
}

/// Feature bits, [`leaf::FEATURES`] EDX.
pub mod feature {
    /// The frequency MSRs exist (`HV_FEATURE_FREQUENCY_MSRS_AVAILABLE`).
    pub const FREQUENCY_MSRS: u32 = 1 << 8;
}

/// Recommendations, [`leaf::ENLIGHTENMENTS`] EAX (`HV_X64_*_RECOMMENDED`).
pub mod recommend {
    /// Send IPIs with HvCallSendSyntheticClusterIpi rather than the APIC.
    pub const CLUSTER_IPI: u32 = 1 << 10;
    /// Use the "Ex" hypercalls, whose processor sets reach beyond 64 VPs.
    pub const EX_PROCESSOR_MASKS: u32 = 1 << 11;
}

/// Synthetic MSRs (TLFS, "Synthetic MSRs"; `HV_X64_MSR_*`).
pub mod msr {
    /// The guest OS identity; partition-wide. The hypercall page cannot be
    /// enabled while it is 0.
    pub const GUEST_OS_ID: u32 = 0x4000_0000;
    /// Bit 0 enable, bits 63:12 the GPA page number of the hypercall page;
    /// partition-wide.
    pub const HYPERCALL: u32 = 0x4000_0001;
    /// This VP's index (read-only).
    pub const VP_INDEX: u32 = 0x4000_0002;
    /// Partition reference time, 100 ns units (read-only).
    pub const TIME_REF_COUNT: u32 = 0x4000_0020;
    /// Bit 0 enable, bits 63:12 the GPA page number of the reference TSC
    /// page; partition-wide.
    pub const REFERENCE_TSC: u32 = 0x4000_0021;
    /// The TSC frequency, Hz (read-only).
    pub const TSC_FREQUENCY: u32 = 0x4000_0022;
    /// The local APIC timer's frequency, Hz (read-only).
    pub const APIC_FREQUENCY: u32 = 0x4000_0023;
    /// The enable bit of [`HYPERCALL`] and [`REFERENCE_TSC`].
    pub const ENABLE: u64 = 1;
    /// The GPA bits of [`HYPERCALL`] and [`REFERENCE_TSC`].
    pub const PAGE_MASK: u64 = !0xfff;
}

/// The reference TSC page (TLFS, "Reference TSC page"; `struct ms_hyperv_tsc_page`):
/// reference time (100 ns units) = ((TSC × `tsc_scale`) >> 64) + `tsc_offset`,
/// valid while `tsc_sequence` is the same before and after the read; a
/// sequence of 0 means "use HV_X64_MSR_TIME_REF_COUNT instead".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TscPage {
    /// Changes whenever scale or offset change; 0: the page is not valid.
    pub tsc_sequence: u32,
    /// Reserved.
    pub reserved: u32,
    /// 64.64 fixed-point 100-ns units per TSC tick.
    pub tsc_scale: u64,
    /// Added after scaling, 100 ns units.
    pub tsc_offset: i64,
}

/// The reference counter's unit: 100 ns.
pub const REFERENCE_UNIT_NS: u64 = 100;

/// Hypercalls (TLFS, "Hypercall interface"): the input value in RCX, an input GPA (or, in the
/// fast form, the first 8 bytes of input) in RDX, an output GPA (or the next
/// 8 bytes) in R8; the result value comes back in RAX.
pub mod hypercall {
    /// Input value bits 15:0: the call code.
    pub const CODE_MASK: u64 = 0xffff;
    /// Input value bit 16: the fast form (input in registers).
    pub const FAST: u64 = 1 << 16;
    /// Input value bits 26:17: the variable header size, in 8-byte units.
    pub const VARHEAD_SHIFT: u32 = 17;
    /// Mask of the variable header size after shifting.
    pub const VARHEAD_MASK: u64 = 0x3ff;
    /// Input value bits 43:32: the rep count (0 for a simple call).
    pub const REP_COUNT_SHIFT: u32 = 32;
    /// Mask of the rep count after shifting.
    pub const REP_COUNT_MASK: u64 = 0xfff;

    /// HvCallSendSyntheticClusterIpi: [`super::SendIpi`]; fast: RDX = vector, R8 = mask.
    pub const SEND_IPI: u16 = 0x000b;
    /// HvCallSendSyntheticClusterIpiEx: [`super::SendIpi`]'s vector, then a
    /// processor set ([`super::vpset`]).
    pub const SEND_IPI_EX: u16 = 0x0015;

    /// Result codes (RAX bits 15:0, `HV_STATUS_*`).
    pub mod status {
        /// Done.
        pub const SUCCESS: u16 = 0;
        /// The call code is not one this hypervisor serves.
        pub const INVALID_HYPERCALL_CODE: u16 = 2;
        /// A reserved bit, a rep count or a header size the call does not take.
        pub const INVALID_HYPERCALL_INPUT: u16 = 3;
        /// The input or output GPA is not 8-byte aligned or crosses a page.
        pub const INVALID_ALIGNMENT: u16 = 4;
        /// A parameter is out of range (or the input lies outside RAM).
        pub const INVALID_PARAMETER: u16 = 5;
    }
}

/// HvCallSendSyntheticClusterIpi's input (`struct hv_send_ipi`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendIpi {
    /// The vector, 0x10..=0xff.
    pub vector: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// Bit n: VP index n.
    pub cpu_mask: u64,
}

/// The lowest and highest vector an IPI hypercall may send.
pub const IPI_VECTORS: core::ops::RangeInclusive<u32> = 0x10..=0xff;

/// Processor sets of the "Ex" hypercalls (`struct hv_vpset`): a format word,
/// a valid-bank mask, then one 64-bit bank (VPs 64·b .. 64·b+63) per bit set
/// in the mask, lowest first.
pub mod vpset {
    /// The banks that follow name the VPs.
    pub const FORMAT_SPARSE_4K: u64 = 0;
    /// Every VP; no banks follow.
    pub const FORMAT_ALL: u64 = 1;
    /// Banks a set can hold: 64 × 64 = 4096 VPs.
    pub const MAX_BANKS: usize = 64;
}
