//! The mapping from the API onto KVM's ABI. Each feature is used only when CPUID
//! 0x40000001 advertises it; otherwise the op stays native.
//!
//! | op | KVM mechanism | feature |
//! |----|---------------|---------|
//! | cpu.io_delay | nothing | NOP_IO_DELAY |
//! | time.clock_ns, sched_clock, tsc_khz | kvmclock, per CPU, under its version seqlock | CLOCKSOURCE2 |
//! | time.wall_clock | MSR_KVM_WALL_CLOCK_NEW + kvmclock | CLOCKSOURCE2 |
//! | time.steal_clock, lock.vcpu_is_preempted | steal-time record, per CPU | STEAL_TIME |
//! | mmu.flush_tlb_multi | preempted vCPUs flagged FLUSH_TLB in their steal-time record, the rest by IPI | PV_TLB_FLUSH + STEAL_TIME |
//! | apic.eoi | `btr` of the PV EOI word; the APIC only when KVM did not set it | PV_EOI |
//! | apic.send_ipi_mask | KVM_HC_SEND_IPI | PV_SEND_IPI |
//! | lock.wait / lock.kick | halt until KVM_HC_KICK_CPU | PV_UNHALT |
//! | lock.yield_to | KVM_HC_SCHED_YIELD | PV_SCHED_YIELD |
//! | (boot) | MSR_KVM_POLL_CONTROL = 1 | POLL_CONTROL |
//!
//! The hypercall instruction is `vmcall` on Intel and `vmmcall` on AMD/Hygon.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use super::abi::{self, feature, hc, KvmStealTime, PvclockVcpuTimeInfo, PvclockWallClock};
use super::probe;
use crate::backends::native::ops as native;
use crate::backends::pvclock::{self, versioned};
use crate::cpus::CpuSet;
use crate::ops::time::WallClock;
use crate::ops::Op;
use crate::select::{AbiLine, InitEnv, OpSet};
use crate::table::PvOps;
use crate::{current_cpu, virt_to_phys, MAX_CPUS};

/// Memory the hypervisor writes into, one per CPU.
#[repr(C, align(64))]
struct PerCpu {
    steal: KvmStealTime,
    time: PvclockVcpuTimeInfo,
    wall: PvclockWallClock,
    pv_eoi: u32,
}

struct Shared(UnsafeCell<[PerCpu; MAX_CPUS]>);

// SAFETY: the host writes these records; the guest reads them with volatile loads
// under each record's version protocol, and writes only its own CPU's PV EOI word
// (with one instruction) and steal-time flags (with cmpxchg).
unsafe impl Sync for Shared {}

const EMPTY: PerCpu = PerCpu {
    steal: KvmStealTime { steal: 0, version: 0, flags: 0, preempted: 0, u8_pad: [0; 3], pad: [0; 11] },
    time: PvclockVcpuTimeInfo {
        version: 0,
        pad0: 0,
        tsc_timestamp: 0,
        system_time: 0,
        tsc_to_system_mul: 0,
        tsc_shift: 0,
        flags: 0,
        pad: [0; 2],
    },
    wall: PvclockWallClock { version: 0, sec: 0, nsec: 0 },
    pv_eoi: 0,
};

static SHARED: Shared = Shared(UnsafeCell::new([EMPTY; MAX_CPUS]));

fn per_cpu(cpu: u32) -> *mut PerCpu {
    let i = crate::cpus::slot(cpu);
    // SAFETY: in bounds (`slot` refuses anything else); only a raw pointer is formed.
    unsafe { (SHARED.0.get() as *mut PerCpu).add(i) }
}

/// Features in use (bit n = KVM feature n), for reports.
static USED: AtomicU32 = AtomicU32::new(0);
/// Feature word CPUID advertised.
static ADVERTISED: AtomicU32 = AtomicU32::new(0);
static VMMCALL: AtomicBool = AtomicBool::new(false);
/// Largest clock value handed out, to keep an unstable pvclock monotonic.
static LAST_NS: pvclock::Monotonic = pvclock::Monotonic::new();
static BOOT_NS: AtomicU64 = AtomicU64::new(0);
static EOI_PV: AtomicU64 = AtomicU64::new(0);
static EOI_APIC: AtomicU64 = AtomicU64::new(0);
static TLB_DEFERRED: AtomicU64 = AtomicU64::new(0);

/// What the backend does with each feature, for the kernel's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPUID 0x40000001 EAX.
    pub advertised: u32,
    /// Features in use (same bit numbers).
    pub used: u32,
    /// EOIs that KVM let us skip (PV EOI bit was set).
    pub eoi_pv: u64,
    /// EOIs written to the APIC.
    pub eoi_apic: u64,
    /// Remote TLB flushes deferred to a preempted vCPU's next entry.
    pub tlb_deferred: u64,
}

/// The current usage counters.
pub fn usage() -> Usage {
    Usage {
        advertised: ADVERTISED.load(Ordering::Relaxed),
        used: USED.load(Ordering::Relaxed),
        eoi_pv: EOI_PV.load(Ordering::Relaxed),
        eoi_apic: EOI_APIC.load(Ordering::Relaxed),
        tlb_deferred: TLB_DEFERRED.load(Ordering::Relaxed),
    }
}

/// Names of the feature bits, for reports (cpuid.rst).
pub const FEATURE_NAMES: &[(u32, &str)] = &[
    (feature::CLOCKSOURCE, "clocksource"),
    (feature::NOP_IO_DELAY, "nop_io_delay"),
    (feature::CLOCKSOURCE2, "clocksource2"),
    (feature::ASYNC_PF, "async_pf"),
    (feature::STEAL_TIME, "steal_time"),
    (feature::PV_EOI, "pv_eoi"),
    (feature::PV_UNHALT, "pv_unhalt"),
    (feature::PV_TLB_FLUSH, "pv_tlb_flush"),
    (feature::PV_SEND_IPI, "pv_send_ipi"),
    (feature::POLL_CONTROL, "poll_control"),
    (feature::PV_SCHED_YIELD, "pv_sched_yield"),
    (feature::CLOCKSOURCE_STABLE, "clocksource_stable"),
];

fn has(bit: u32) -> bool {
    ADVERTISED.load(Ordering::Relaxed) & (1 << bit) != 0
}

fn mark_used(bit: u32) {
    USED.fetch_or(1 << bit, Ordering::Relaxed);
}

/// Registers the boot CPU's records and overrides the ops CPUID allows.
pub fn install(env: &InitEnv, ops: &mut PvOps) -> (OpSet, AbiLine) {
    let features = probe::features(env.probe, env.cpuid);
    ADVERTISED.store(features, Ordering::Relaxed);
    let vendor = env.cpuid.cpuid(0, 0);
    // "AuthenticAMD" / "HygonGenuine": EBX is "Auth" / "Hygo".
    VMMCALL.store(vendor.ebx == 0x6874_7541 || vendor.ebx == 0x6f67_7948, Ordering::Relaxed);
    let mut set = OpSet::EMPTY;
    // Each feature CPUID advertises: install its ops, record them and the feature.
    let mut provide = |bit: u32, taken: &[Op], install: fn(&mut PvOps)| {
        if has(bit) {
            install(ops);
            for &op in taken {
                set.insert(op);
            }
            mark_used(bit);
        }
    };
    provide(feature::NOP_IO_DELAY, &[Op::CpuIoDelay], |o| o.cpu.io_delay = native::nop);
    provide(
        feature::CLOCKSOURCE2,
        &[Op::TimeClockNs, Op::TimeSchedClock, Op::TimeTscKhz, Op::TimeWallClock],
        |o| {
            o.time.clock_ns = clock_ns;
            o.time.sched_clock = sched_clock;
            o.time.tsc_khz = tsc_khz;
            o.time.wall_clock = wall_clock;
        },
    );
    provide(feature::STEAL_TIME, &[Op::TimeStealClock, Op::LockVcpuIsPreempted], |o| {
        o.time.steal_clock = steal_clock;
        o.lock.vcpu_is_preempted = vcpu_is_preempted;
    });
    // PV TLB flush rides on the steal-time record.
    if has(feature::STEAL_TIME) {
        provide(feature::PV_TLB_FLUSH, &[Op::MmuFlushTlbMulti], |o| o.mmu.flush_tlb_multi = flush_tlb_multi);
    }
    provide(feature::PV_EOI, &[Op::ApicEoi], |o| o.apic.eoi = pv_eoi);
    provide(feature::PV_SEND_IPI, &[Op::ApicSendIpiMask, Op::ApicSendIpi], |o| {
        o.apic.send_ipi_mask = send_ipi_mask;
        o.apic.send_ipi = send_ipi;
    });
    provide(feature::PV_UNHALT, &[Op::LockWait, Op::LockKick], |o| {
        o.lock.wait = lock_wait;
        o.lock.kick = lock_kick;
    });
    provide(feature::PV_SCHED_YIELD, &[Op::LockYieldTo], |o| o.lock.yield_to = yield_to);
    // Poll control has no op: init_cpu enables host polling before halts.
    provide(feature::POLL_CONTROL, &[], |_| {});
    init_cpu(current_cpu());
    if has(feature::CLOCKSOURCE2) {
        BOOT_NS.store(clock_ns(), Ordering::Relaxed);
    }
    (set, AbiLine { name: "kvm-pv", features: Some(u64::from(features)) })
}

/// Registers this CPU's kvmclock, steal-time and PV EOI records.
pub fn init_cpu(cpu: u32) {
    let p = per_cpu(cpu);
    let msr = |index: u32, field: *const u8| {
        let value = virt_to_phys(field as u64) | abi::MSR_ENABLE;
        // SAFETY: `index` is KVM's public MSR for a feature CPUID advertised, and
        // `field` is this CPU's static record for it.
        unsafe { native::write_msr(index, value) };
    };
    if has(feature::CLOCKSOURCE2) {
        // SAFETY: `p` points into the static array; only the address is taken.
        msr(abi::MSR_SYSTEM_TIME_NEW, unsafe { core::ptr::addr_of!((*p).time) }.cast());
    }
    if has(feature::STEAL_TIME) {
        // SAFETY: as above.
        msr(abi::MSR_STEAL_TIME, unsafe { core::ptr::addr_of!((*p).steal) }.cast());
    }
    if has(feature::PV_EOI) {
        // SAFETY: as above.
        msr(abi::MSR_PV_EOI_EN, unsafe { core::ptr::addr_of!((*p).pv_eoi) }.cast());
    }
    if has(feature::POLL_CONTROL) {
        // SAFETY: public MSR advertised by POLL_CONTROL; 1 lets the host poll.
        unsafe { native::write_msr(abi::MSR_POLL_CONTROL, 1) };
    }
}

/// A hypercall with up to four arguments (rbx, rcx, rdx, rsi), `vmcall` or
/// `vmmcall` by vendor.
fn hypercall(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    let ret: i64;
    // SAFETY: used only for hypercalls whose feature bit KVM advertised; rbx is
    // reserved by the compiler, so it is swapped in and out around the call.
    unsafe {
        if VMMCALL.load(Ordering::Relaxed) {
            core::arch::asm!("xchg rbx, {a0}", "vmmcall", "xchg rbx, {a0}",
                a0 = inout(reg) a0 => _, inout("rax") nr => ret, in("rcx") a1, in("rdx") a2, in("rsi") a3,
                options(nostack));
        } else {
            core::arch::asm!("xchg rbx, {a0}", "vmcall", "xchg rbx, {a0}",
                a0 = inout(reg) a0 => _, inout("rax") nr => ret, in("rcx") a1, in("rdx") a2, in("rsi") a3,
                options(nostack));
        }
    }
    ret
}

extern "C" fn clock_ns() -> u64 {
    // With TSC_STABLE every vCPU's record gives the same time, so CPU 0's serves
    // all (as Linux's vDSO does) and the read needs no CPU number: the hot path is
    // two loads of the version, five of the record, rdtsc and a 64×32 multiply.
    // SAFETY: CPU 0's record is static; KVM maintains it once registered (and it
    // reads as zeros before).
    let (ns, stable) = unsafe { pvclock::read(time_record(0)) };
    if stable {
        return ns;
    }
    clock_ns_per_cpu()
}

/// Without TSC_STABLE: this CPU's own record, kept monotonic across CPUs.
#[cold]
#[inline(never)]
fn clock_ns_per_cpu() -> u64 {
    // SAFETY: this CPU's static record.
    LAST_NS.clamp(unsafe { pvclock::read(time_record(current_cpu())) }.0)
}

/// CPU `cpu`'s kvmclock record.
fn time_record(cpu: u32) -> *const PvclockVcpuTimeInfo {
    // SAFETY: `per_cpu` points into the static array; only the address is taken.
    unsafe { core::ptr::addr_of!((*per_cpu(cpu)).time) }
}

extern "C" fn sched_clock() -> u64 {
    clock_ns().saturating_sub(BOOT_NS.load(Ordering::Relaxed))
}

extern "C" fn tsc_khz() -> u64 {
    // SAFETY: this CPU's static record.
    unsafe { pvclock::tsc_khz(time_record(current_cpu())) }
}

extern "C" fn wall_clock() -> WallClock {
    let p = per_cpu(current_cpu());
    // SAFETY: `p` points into the static array; only the address is taken.
    let pa = virt_to_phys(unsafe { core::ptr::addr_of!((*p).wall) } as u64);
    // SAFETY: asks the host to fill this CPU's static wall-clock record (public MSR).
    unsafe { native::write_msr(abi::MSR_WALL_CLOCK_NEW, pa) };
    let (sec, nsec) = loop {
        // SAFETY: static record the host just wrote; volatile reads.
        let w = unsafe { core::ptr::addr_of!((*p).wall).read_volatile() };
        if w.version & 1 == 0 {
            break (w.sec, w.nsec);
        }
    };
    let total = u64::from(nsec) + clock_ns();
    WallClock { secs: u64::from(sec) + total / 1_000_000_000, nsecs: total % 1_000_000_000 }
}

extern "C" fn steal_clock(cpu: u32) -> u64 {
    let p = per_cpu(cpu);
    loop {
        // SAFETY: `p` points at a static record the host writes; volatile reads,
        // validated by its version.
        let steal = unsafe {
            versioned(core::ptr::addr_of!((*p).steal.version), || {
                core::ptr::addr_of!((*p).steal.steal).read_volatile()
            })
        };
        if let Some(steal) = steal {
            return steal;
        }
        core::hint::spin_loop();
    }
}

fn preempted_byte(cpu: u32) -> &'static AtomicU8 {
    // SAFETY: the byte lives in a static record for the whole run; AtomicU8 has the
    // layout of u8, and both the host and we access it atomically.
    unsafe { &*(core::ptr::addr_of!((*per_cpu(cpu)).steal.preempted) as *const AtomicU8) }
}

extern "C" fn vcpu_is_preempted(cpu: u32) -> u64 {
    u64::from(preempted_byte(cpu).load(Ordering::Relaxed) & abi::preempted::PREEMPTED)
}

/// Linux's kvm_flush_tlb_multi: a preempted vCPU gets FLUSH_TLB in its steal-time
/// record (KVM flushes before it runs again); only running ones need the IPI.
extern "C" fn flush_tlb_multi(cpus: *const CpuSet, start: u64, end: u64) {
    // SAFETY: the op's caller passes a live set (`mmu::flush_tlb_multi` takes a reference).
    let cpus = unsafe { &*cpus };
    let me = current_cpu();
    let mut rest = *cpus;
    for cpu in cpus.iter().filter(|&c| c != me) {
        let b = preempted_byte(cpu);
        let state = b.load(Ordering::Relaxed);
        if state & abi::preempted::PREEMPTED != 0
            && b.compare_exchange(
                state,
                state | abi::preempted::FLUSH_TLB,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            rest.remove(cpu);
            TLB_DEFERRED.fetch_add(1, Ordering::Relaxed);
        }
    }
    native::flush_tlb_multi(&rest, start, end);
}

/// PV EOI: if KVM set the bit, clearing it (one `btr`, so no interrupt can slip
/// between test and clear) is the whole EOI; otherwise write the APIC.
extern "C" fn pv_eoi() {
    // SAFETY: points into the static array; only the address is taken.
    let word = unsafe { core::ptr::addr_of!((*per_cpu(current_cpu())).pv_eoi) };
    let was_set: u8;
    // SAFETY: this CPU's PV EOI word, registered with KVM; only this CPU writes it.
    unsafe {
        core::arch::asm!("btr dword ptr [{w}], {bit}", "setc {s}",
            w = in(reg) word, bit = const abi::PV_EOI_BIT, s = out(reg_byte) was_set,
            options(nostack));
    }
    if was_set != 0 {
        EOI_PV.fetch_add(1, Ordering::Relaxed);
    } else {
        EOI_APIC.fetch_add(1, Ordering::Relaxed);
        native::apic_eoi();
    }
}

/// APIC ICR delivery mode "fixed", physical destination.
const ICR_FIXED: u64 = 0;

/// KVM_HC_SEND_IPI names APIC IDs in a 128-bit window from its lowest: one
/// call per window the set's APIC IDs span (Linux's __send_ipi_mask); a call
/// KVM refuses falls back to the APIC for that window's CPUs.
extern "C" fn send_ipi_mask(cpus: *const CpuSet, vector: u32) {
    // SAFETY: the op's caller passes a live set (`apic::send_ipi_mask` takes a reference).
    let mut left = unsafe { *cpus };
    while let Some(first) = left.iter().min_by_key(|&c| crate::cpus::apic_id(c)) {
        let min = crate::cpus::apic_id(first);
        let (mut low, mut high, mut window) = (0u64, 0u64, CpuSet::EMPTY);
        for cpu in left.iter() {
            match crate::cpus::apic_id(cpu) - min {
                d @ 0..64 => low |= 1 << d,
                d @ 64..128 => high |= 1 << (d - 64),
                _ => continue,
            }
            window.insert(cpu);
        }
        let r = hypercall(hc::SEND_IPI, low, high, u64::from(min), ICR_FIXED | u64::from(vector & 0xff));
        if r < 0 {
            native::send_ipi_mask(&window, vector);
        }
        for cpu in window.iter() {
            left.remove(cpu);
        }
    }
}

extern "C" fn send_ipi(cpu: u32, vector: u32) {
    send_ipi_mask(&CpuSet::of(cpu), vector);
}

/// Halts until kicked while `*byte == value` (as Linux's kvm_wait).
extern "C" fn lock_wait(byte: *const u8, value: u8) {
    let flags = native::save_flags();
    native::irq_disable();
    // SAFETY: the caller passes a live byte (the lock op's contract).
    if unsafe { byte.read_volatile() } == value {
        if flags & crate::ops::irq::FLAGS_IF != 0 {
            // SAFETY: interrupts were enabled by the caller, so an IDT is loaded.
            unsafe { native::safe_halt() };
        } else {
            native::halt();
        }
    }
    // SAFETY: restores the caller's flags.
    unsafe { native::restore_flags(flags) };
}

/// KVM names the target by APIC ID.
extern "C" fn yield_to(cpu: u32) {
    hypercall(hc::SCHED_YIELD, u64::from(crate::cpus::apic_id(cpu)), 0, 0, 0);
}

/// KVM names the target by APIC ID.
extern "C" fn lock_kick(cpu: u32) {
    hypercall(hc::KICK_CPU, 0, u64::from(crate::cpus::apic_id(cpu)), 0, 0);
}
