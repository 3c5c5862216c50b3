//! The mapping from the API onto Hyper-V's interface. Each op is taken only
//! where the partition's privileges (CPUID 0x40000003) allow it and, for
//! IPIs, the host recommends it (0x40000004); the rest stay native, which
//! Hyper-V virtualizes in hardware.
//!
//! | op | Hyper-V mechanism | needs |
//! |----|-------------------|-------|
//! | time.clock_ns, sched_clock | reference TSC page (100 ns units, read at ns resolution); the reference counter MSR while the page is invalid | AccessPartitionReferenceTsc, else AccessPartitionReferenceCounter (MSR only) |
//! | time.tsc_khz | HV_X64_MSR_TSC_FREQUENCY; also seeds the native TSC clock | AccessFrequencyRegs + FrequencyMsrsAvailable |
//! | apic.send_ipi_mask, send_ipi | HvCallSendSyntheticClusterIpi (fast, VPs < 64), else the Ex form with a sparse set | AccessHypercallMsrs + AccessVpIndex + CLUSTER_IPI recommended (Ex: EX_PROCESSOR_MASKS) |
//!
//! Linux's own use is the same set, plus the synthetic timers, the APIC
//! access MSRs and VMBus, which have no op here.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::abi::{self, hypercall as hc, msr, privilege, recommend, vpset, TscPage};
use super::probe;
use crate::backends::native::ops as native;
use crate::cpus::CpuSet;
use crate::select::{AbiLine, InitEnv, OpSet};
use crate::table::PvOps;
use crate::{current_cpu, virt_to_phys, MAX_CPUS};

/// Feature bits of the `abi:` line: what the backend uses.
pub mod feature {
    /// The reference TSC page.
    pub const TSC_PAGE: u64 = 1 << 0;
    /// The reference counter MSR (alone, or behind an invalid page).
    pub const REFERENCE_COUNTER: u64 = 1 << 1;
    /// The TSC frequency MSR.
    pub const FREQUENCY_MSR: u64 = 1 << 2;
    /// The hypercall page.
    pub const HYPERCALLS: u64 = 1 << 3;
    /// IPIs by hypercall.
    pub const IPI: u64 = 1 << 4;
    /// ... with the Ex form beyond VP 63.
    pub const IPI_EX: u64 = 1 << 5;
}

/// A page the hypervisor fills, 4 KiB aligned.
#[repr(C, align(4096))]
struct Page<T>(UnsafeCell<T>);

// SAFETY: the hypervisor writes these pages; the guest only reads the TSC
// page (volatile, under its sequence) and only calls into the hypercall page.
unsafe impl<T> Sync for Page<T> {}

/// The reference TSC page.
static TSC_PAGE: Page<TscPage> =
    Page(UnsafeCell::new(TscPage { tsc_sequence: 0, reserved: 0, tsc_scale: 0, tsc_offset: 0 }));

/// The hypercall page: in `.text`, so it is mapped executable; the
/// hypervisor writes its code (TLFS, "Establishing the hypercall interface"), the guest only calls it.
#[link_section = ".text.hyperv_hypercall_page"]
static HYPERCALL_PAGE: Page<[u8; 4096]> = Page(UnsafeCell::new([0xcc; 4096]));

/// Linux's guest OS identity for an open-source OS (TLFS, "Guest OS
/// identity for open source operating systems"): bit 63 set, OS type 0x7f
/// ("other") in bits 62:56; no version.
const GUEST_OS_ID: u64 = 1 << 63 | 0x7f << 56;

static OFFER: AtomicU64 = AtomicU64::new(0);
static USED: AtomicU64 = AtomicU64::new(0);
static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static BOOT_NS: AtomicU64 = AtomicU64::new(0);
/// Each CPU's VP index (HV_X64_MSR_VP_INDEX), by dense CPU index.
static VP_INDEX: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(u32::MAX) }; MAX_CPUS];
/// IPIs sent by hypercall, and hypercalls the host refused (then native).
static IPIS: AtomicU64 = AtomicU64::new(0);
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// A per-CPU input block for the Ex call: vector, format, bank mask and
/// up to 4 banks (256 VPs); 64-byte aligned, so it never crosses a page.
#[repr(C, align(64))]
struct ExInput(UnsafeCell<[u64; 8]>);
// SAFETY: each CPU uses only its own block, with interrupts off.
unsafe impl Sync for ExInput {}
static EX_INPUT: [ExInput; MAX_CPUS] = [const { ExInput(UnsafeCell::new([0; 8])) }; MAX_CPUS];

/// What the backend does, for the kernel's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPUID 0x40000003 EAX (privileges).
    pub privileges: u32,
    /// CPUID 0x40000004 EAX (recommendations).
    pub recommendations: u32,
    /// [`feature`] bits in use.
    pub used: u64,
    /// IPIs sent by hypercall.
    pub ipis: u64,
    /// Hypercalls refused (the IPI then went through the APIC).
    pub refused: u64,
    /// The TSC page's sequence now (0: invalid).
    pub tsc_sequence: u32,
}

/// The current usage.
pub fn usage() -> Usage {
    let offer = OFFER.load(Ordering::Relaxed);
    Usage {
        privileges: offer as u32,
        recommendations: (offer >> 32) as u32,
        used: USED.load(Ordering::Relaxed),
        ipis: IPIS.load(Ordering::Relaxed),
        refused: REFUSED.load(Ordering::Relaxed),
        // SAFETY: the static page; a volatile read of its first field.
        tsc_sequence: unsafe { core::ptr::addr_of!((*TSC_PAGE.0.get()).tsc_sequence).read_volatile() },
    }
}

/// VP index of dense CPU `cpu`, as its own MSR said (`u32::MAX` before it ran).
pub fn vp_index(cpu: u32) -> u32 {
    VP_INDEX[crate::cpus::slot(cpu)].load(Ordering::Relaxed)
}

fn uses(bit: u64) -> bool {
    USED.load(Ordering::Relaxed) & bit != 0
}

/// Enables what the offer allows and installs the ops.
pub fn install(env: &InitEnv, ops: &mut PvOps) -> (OpSet, AbiLine) {
    let offer = probe::offer(env.probe, env.cpuid).unwrap_or_default();
    OFFER.store(u64::from(offer.privileges) | u64::from(offer.recommendations) << 32, Ordering::Relaxed);
    let mut set = OpSet::EMPTY;
    let mut used = 0;
    let has = |bit: u32| offer.privileges & bit != 0;
    if has(privilege::FREQUENCY_MSRS) && offer.features & abi::feature::FREQUENCY_MSRS != 0 {
        // SAFETY: the frequency MSRs exist (the privilege and the feature bit say so).
        let khz = unsafe { native::read_msr(msr::TSC_FREQUENCY) } / 1000;
        if khz != 0 {
            TSC_KHZ.store(khz, Ordering::Relaxed);
            native::seed_tsc_khz(khz);
            serve!(ops, set; time.tsc_khz = tsc_khz => TimeTscKhz;);
            used |= feature::FREQUENCY_MSR;
        }
    }
    if has(privilege::REFERENCE_TSC) {
        let pa = virt_to_phys(TSC_PAGE.0.get() as u64);
        // SAFETY: the privilege allows the MSR; the page is ours, static and aligned.
        unsafe { native::write_msr(msr::REFERENCE_TSC, pa | msr::ENABLE) };
        used |= feature::TSC_PAGE;
    }
    if has(privilege::TIME_REF_COUNT) {
        used |= feature::REFERENCE_COUNTER;
    }
    if used & (feature::TSC_PAGE | feature::REFERENCE_COUNTER) != 0 {
        USED.store(used, Ordering::Relaxed);
        serve!(ops, set; time.clock_ns = clock_ns => TimeClockNs; time.sched_clock = sched_clock => TimeSchedClock;);
        BOOT_NS.store(clock_ns(), Ordering::Relaxed);
    }
    if has(privilege::HYPERCALL_MSRS) && has(privilege::VP_INDEX) {
        // SAFETY: the privilege allows the MSRs; the page is ours, static,
        // aligned and in `.text`. The identity must come first (same section).
        let enabled = unsafe {
            native::write_msr(msr::GUEST_OS_ID, GUEST_OS_ID);
            native::write_msr(msr::HYPERCALL, virt_to_phys(HYPERCALL_PAGE.0.get() as u64) | msr::ENABLE);
            native::read_msr(msr::HYPERCALL) & msr::ENABLE != 0
        };
        if enabled {
            used |= feature::HYPERCALLS;
            if offer.recommendations & recommend::CLUSTER_IPI != 0 {
                serve!(ops, set;
                    apic.send_ipi_mask = send_ipi_mask => ApicSendIpiMask;
                    apic.send_ipi = send_ipi => ApicSendIpi;
                );
                used |= feature::IPI;
                if offer.recommendations & recommend::EX_PROCESSOR_MASKS != 0 {
                    used |= feature::IPI_EX;
                }
            }
        }
    }
    USED.store(used, Ordering::Relaxed);
    init_cpu(current_cpu());
    (set, AbiLine { name: "hyperv-tlfs", features: Some(used) })
}

/// Records this CPU's VP index (the partition-wide pages need nothing per CPU).
pub fn init_cpu(cpu: u32) {
    if OFFER.load(Ordering::Relaxed) as u32 & privilege::VP_INDEX != 0 {
        // SAFETY: the privilege allows the MSR.
        let vp = unsafe { native::read_msr(msr::VP_INDEX) };
        VP_INDEX[crate::cpus::slot(cpu)].store(vp as u32, Ordering::Relaxed);
    }
}

/// Reference time in ns from the TSC page, `None` while its sequence is 0
/// (Linux's `hv_read_tsc_page_tsc`) or before it was registered.
pub fn tsc_page_ns() -> Option<u64> {
    let page = TSC_PAGE.0.get();
    loop {
        // SAFETY: the static page the hypervisor writes; volatile reads,
        // validated by the sequence read before and after.
        let (seq, scale, offset) = unsafe {
            (
                core::ptr::addr_of!((*page).tsc_sequence).read_volatile(),
                core::ptr::addr_of!((*page).tsc_scale).read_volatile(),
                core::ptr::addr_of!((*page).tsc_offset).read_volatile(),
            )
        };
        if seq == 0 {
            return None;
        }
        let tsc = native::read_tsc();
        // SAFETY: as above.
        if unsafe { core::ptr::addr_of!((*page).tsc_sequence).read_volatile() } == seq {
            // ((tsc × scale) >> 64) + offset, in 100 ns units, taken at ns resolution.
            let ns = (u128::from(tsc) * u128::from(scale) * u128::from(abi::REFERENCE_UNIT_NS)) >> 64;
            return Some((ns as u64).wrapping_add((offset as u64).wrapping_mul(abi::REFERENCE_UNIT_NS)));
        }
    }
}

/// Reference time in ns from HV_X64_MSR_TIME_REF_COUNT (100 ns units),
/// `None` without the privilege.
pub fn reference_counter_ns() -> Option<u64> {
    // SAFETY: the privilege allows the MSR.
    uses(feature::REFERENCE_COUNTER)
        .then(|| unsafe { native::read_msr(msr::TIME_REF_COUNT) } * abi::REFERENCE_UNIT_NS)
}

extern "C" fn clock_ns() -> u64 {
    if uses(feature::TSC_PAGE) {
        if let Some(ns) = tsc_page_ns() {
            return ns;
        }
    }
    if let Some(ns) = reference_counter_ns() {
        return ns;
    }
    // A page gone invalid without a counter to fall back on: the TSC.
    native::ticks_to_ns(native::read_tsc(), TSC_KHZ.load(Ordering::Relaxed).max(1))
}

extern "C" fn sched_clock() -> u64 {
    clock_ns().saturating_sub(BOOT_NS.load(Ordering::Relaxed))
}

extern "C" fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// One hypercall through the page: RCX = input value, RDX and R8 = input
/// and output (GPAs, or data in the fast form); the result value in RAX.
fn hypercall(control: u64, input: u64, output: u64) -> u64 {
    let result: u64;
    // SAFETY: the page was enabled (its MSR read back enabled) and filled by
    // the hypervisor with code that follows the TLFS calling convention,
    // which may change RAX, RCX, RDX, R8-R11 and memory named by the GPAs.
    unsafe {
        core::arch::asm!(
            "call {page}",
            page = in(reg) HYPERCALL_PAGE.0.get() as u64,
            inout("rcx") control => _,
            inout("rdx") input => _,
            inout("r8") output => _,
            out("rax") result,
            out("r9") _, out("r10") _, out("r11") _,
        );
    }
    result
}

/// HvCallSendSyntheticClusterIpi: the fast form while every target's VP
/// index is below 64, else the Ex form (if recommended) with a sparse set
/// of banks; vectors below 0x10, a VP index not yet known, or a refusal go
/// through the APIC.
extern "C" fn send_ipi_mask(cpus: *const CpuSet, vector: u32) {
    // SAFETY: the op's caller passes a live set (`apic::send_ipi_mask` takes a reference).
    let cpus = unsafe { &*cpus };
    let vps = || cpus.iter().map(vp_index);
    let status = if !abi::IPI_VECTORS.contains(&vector) || vps().any(|vp| vp == u32::MAX) {
        None
    } else if vps().all(|vp| vp < 64) {
        let mask = vps().fold(0u64, |m, vp| m | 1 << vp);
        Some(hypercall(u64::from(hc::SEND_IPI) | hc::FAST, u64::from(vector), mask))
    } else if uses(feature::IPI_EX) && vps().all(|vp| vp < 256) {
        Some(send_ipi_ex(vector, cpus))
    } else {
        None
    };
    match status {
        Some(s) if s & 0xffff == u64::from(hc::status::SUCCESS) => {
            IPIS.fetch_add(1, Ordering::Relaxed);
        }
        Some(_) => {
            REFUSED.fetch_add(1, Ordering::Relaxed);
            native::send_ipi_mask(cpus, vector);
        }
        None => native::send_ipi_mask(cpus, vector),
    }
}

/// The Ex form's input for VPs < 256 (`struct hv_send_ipi_ex`): vector,
/// the sparse format, the valid-bank mask, then each non-empty bank, lowest
/// first; and the bank count, which is the call's variable header size.
pub fn ex_input(vector: u32, vps: impl Iterator<Item = u32>) -> ([u64; 8], usize) {
    let mut banks = [0u64; 4];
    for vp in vps {
        banks[(vp / 64) as usize] |= 1 << (vp % 64);
    }
    let mut input = [u64::from(vector), vpset::FORMAT_SPARSE_4K, 0, 0, 0, 0, 0, 0];
    let mut n = 0;
    for (b, &bank) in banks.iter().enumerate().filter(|(_, &bank)| bank != 0) {
        input[2] |= 1 << b;
        input[3 + n] = bank;
        n += 1;
    }
    (input, n)
}

/// The Ex form, every target's VP index below 256: the input in this CPU's
/// block, with interrupts off so no handler reuses it mid-call.
fn send_ipi_ex(vector: u32, cpus: &CpuSet) -> u64 {
    let flags = native::save_flags();
    native::irq_disable();
    let block = EX_INPUT[crate::cpus::slot(current_cpu())].0.get();
    let (input, banks) = ex_input(vector, cpus.iter().map(vp_index));
    // SAFETY: this CPU's own block, interrupts off: nothing else touches it.
    unsafe { block.write(input) };
    let control = u64::from(hc::SEND_IPI_EX) | (banks as u64) << hc::VARHEAD_SHIFT;
    let status = hypercall(control, virt_to_phys(block as u64), 0);
    // SAFETY: restores the caller's flags.
    unsafe { native::restore_flags(flags) };
    status
}

extern "C" fn send_ipi(cpu: u32, vector: u32) {
    send_ipi_mask(&CpuSet::of(cpu), vector);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout pvrun's decoder takes (`crates/pvrun/src/hyperv/hypercalls.rs`):
    /// VPs 1, 128 and 130 are banks 0 and 2.
    #[test]
    fn the_ex_input_lists_non_empty_banks_lowest_first() {
        let (input, banks) = ex_input(0x41, [130, 1, 128].into_iter());
        assert_eq!(banks, 2);
        assert_eq!(input[..5], [0x41, vpset::FORMAT_SPARSE_4K, 0b101, 0b10, 0b101]);
        assert_eq!(input[5..], [0, 0, 0]);
        let (input, banks) = ex_input(0xf0, [255].into_iter());
        assert_eq!((banks, input[2], input[3]), (1, 0b1000, 1 << 63));
    }
}
