//! The mapping from the API onto KVM's ABI.
//!
//! | op | KVM mechanism | needs |
//! |----|---------------|-------|
//! | cpu.io_delay | nothing | NOP_IO_DELAY |
//! | time.clock_ns, time.sched_clock, time.tsc_khz | kvmclock (pvclock under its version seqlock) | CLOCKSOURCE2 |
//! | time.wall_clock | MSR_KVM_WALL_CLOCK_NEW + kvmclock | CLOCKSOURCE2 |
//! | time.steal_clock, lock.vcpu_is_preempted | steal-time record | STEAL_TIME |
//!
//! Records are for the boot CPU; secondary CPUs register theirs when SMP arrives.

use core::cell::UnsafeCell;
use core::sync::atomic::{fence, AtomicU64, Ordering};

use super::abi::{self, feature, KvmStealTime, PvclockVcpuTimeInfo, PvclockWallClock};
use super::probe;
use crate::backends::native::ops as native;
use crate::ops::time::WallClock;
use crate::ops::Op;
use crate::select::{AbiLine, InitEnv, OpSet};
use crate::table::PvOps;

/// Memory the hypervisor writes into.
#[repr(C, align(64))]
struct Shared {
    steal: KvmStealTime,
    time: PvclockVcpuTimeInfo,
    wall: PvclockWallClock,
}

struct SharedCell(UnsafeCell<Shared>);

// SAFETY: the host writes these records; the guest only reads them with volatile
// loads under the records' version protocol (and writes nothing after set-up).
unsafe impl Sync for SharedCell {}

static SHARED: SharedCell = SharedCell(UnsafeCell::new(Shared {
    steal: KvmStealTime {
        steal: 0,
        version: 0,
        flags: 0,
        preempted: 0,
        u8_pad: [0; 3],
        pad: [0; 11],
    },
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
    wall: PvclockWallClock {
        version: 0,
        sec: 0,
        nsec: 0,
    },
}));

fn shared() -> *mut Shared {
    SHARED.0.get()
}

/// Physical address of the shared records (filled in at install).
static SHARED_PHYS: AtomicU64 = AtomicU64::new(0);
/// Largest clock value handed out, to keep an unstable pvclock monotonic.
static LAST_NS: AtomicU64 = AtomicU64::new(0);
static BOOT_NS: AtomicU64 = AtomicU64::new(0);

/// Registers what CPUID advertises and overrides the matching ops.
pub fn install(env: &InitEnv, ops: &mut PvOps) -> (OpSet, AbiLine) {
    let features = probe::features(env.probe, env.cpuid);
    let has = |bit: u32| features & (1 << bit) != 0;
    let mut set = OpSet::EMPTY;
    let phys = (env.virt_to_phys)(shared() as u64);
    SHARED_PHYS.store(phys, Ordering::Relaxed);

    if has(feature::NOP_IO_DELAY) {
        ops.cpu.io_delay = native::nop;
        set.insert(Op::CpuIoDelay);
    }
    if has(feature::CLOCKSOURCE2) {
        let time_pa = phys + core::mem::offset_of!(Shared, time) as u64;
        // SAFETY: the record is a static the host may write; the MSR is KVM's public
        // kvmclock MSR, advertised by CLOCKSOURCE2.
        unsafe { native::write_msr(abi::MSR_SYSTEM_TIME_NEW, time_pa | abi::MSR_ENABLE) };
        ops.time.clock_ns = clock_ns;
        ops.time.sched_clock = sched_clock;
        ops.time.tsc_khz = tsc_khz;
        ops.time.wall_clock = wall_clock;
        for op in [
            Op::TimeClockNs,
            Op::TimeSchedClock,
            Op::TimeTscKhz,
            Op::TimeWallClock,
        ] {
            set.insert(op);
        }
        BOOT_NS.store(clock_ns(), Ordering::Relaxed);
    }
    if has(feature::STEAL_TIME) {
        let steal_pa = phys + core::mem::offset_of!(Shared, steal) as u64;
        // SAFETY: 64-byte aligned static record; public MSR advertised by STEAL_TIME.
        unsafe { native::write_msr(abi::MSR_STEAL_TIME, steal_pa | abi::MSR_ENABLE) };
        ops.time.steal_clock = steal_clock;
        ops.lock.vcpu_is_preempted = vcpu_is_preempted;
        set.insert(Op::TimeStealClock);
        set.insert(Op::LockVcpuIsPreempted);
    }
    (
        set,
        AbiLine {
            name: "kvm-pv",
            features: Some(u64::from(features)),
        },
    )
}

/// Reads the pvclock record consistently (version even and unchanged).
fn read_time_info() -> PvclockVcpuTimeInfo {
    let p = shared();
    loop {
        // SAFETY: `p` points at the static record; volatile because the host writes it.
        let v1 = unsafe { core::ptr::addr_of!((*p).time.version).read_volatile() };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let t = unsafe { core::ptr::addr_of!((*p).time).read_volatile() };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let v2 = unsafe { core::ptr::addr_of!((*p).time.version).read_volatile() };
        if v1 == v2 && v1 & 1 == 0 {
            return t;
        }
        core::hint::spin_loop();
    }
}

extern "C" fn clock_ns() -> u64 {
    let t = read_time_info();
    let delta = native::read_tsc().wrapping_sub(t.tsc_timestamp);
    let ns =
        t.system_time
            .wrapping_add(abi::pvclock_scale(delta, t.tsc_to_system_mul, t.tsc_shift));
    if t.flags & abi::PVCLOCK_TSC_STABLE != 0 {
        return ns;
    }
    // Not stable across CPUs: never go below what anyone has seen (Linux does the same).
    let mut last = LAST_NS.load(Ordering::Relaxed);
    loop {
        if ns <= last {
            return last;
        }
        match LAST_NS.compare_exchange_weak(last, ns, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return ns,
            Err(l) => last = l,
        }
    }
}

extern "C" fn sched_clock() -> u64 {
    clock_ns().saturating_sub(BOOT_NS.load(Ordering::Relaxed))
}

extern "C" fn tsc_khz() -> u64 {
    let t = read_time_info();
    // ns per tick = mul * 2^shift / 2^32, so kHz = 10^6 * 2^32 / (mul * 2^shift).
    let mut khz = (1_000_000u128 << 32) / u128::from(t.tsc_to_system_mul.max(1));
    if t.tsc_shift < 0 {
        khz <<= (-t.tsc_shift) as u32;
    } else {
        khz >>= t.tsc_shift as u32;
    }
    khz as u64
}

extern "C" fn wall_clock() -> WallClock {
    let phys = SHARED_PHYS.load(Ordering::Relaxed) + core::mem::offset_of!(Shared, wall) as u64;
    // SAFETY: asks the host to fill the static wall-clock record (public MSR).
    unsafe { native::write_msr(abi::MSR_WALL_CLOCK_NEW, phys) };
    let p = shared();
    let (sec, nsec) = loop {
        // SAFETY: static record the host just wrote; volatile reads.
        let w = unsafe { core::ptr::addr_of!((*p).wall).read_volatile() };
        if w.version & 1 == 0 {
            break (w.sec, w.nsec);
        }
    };
    let total = u64::from(nsec) + clock_ns();
    WallClock {
        secs: u64::from(sec) + total / 1_000_000_000,
        nsecs: total % 1_000_000_000,
    }
}

extern "C" fn steal_clock(_cpu: u32) -> u64 {
    let p = shared();
    loop {
        // SAFETY: static record the host writes; volatile reads under its version.
        let v1 = unsafe { core::ptr::addr_of!((*p).steal.version).read_volatile() };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let steal = unsafe { core::ptr::addr_of!((*p).steal.steal).read_volatile() };
        fence(Ordering::Acquire);
        // SAFETY: as above.
        let v2 = unsafe { core::ptr::addr_of!((*p).steal.version).read_volatile() };
        if v1 == v2 && v1 & 1 == 0 {
            return steal;
        }
    }
}

extern "C" fn vcpu_is_preempted(_cpu: u32) -> u64 {
    // SAFETY: static record the host writes; a single volatile byte read.
    u64::from(unsafe { core::ptr::addr_of!((*shared()).steal.preempted).read_volatile() } & 1)
}
