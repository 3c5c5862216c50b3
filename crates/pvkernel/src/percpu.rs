//! Per-CPU data, reached through the GS base (IA32_GS_BASE points at this CPU's
//! [`PerCpu`]). Indexed by the CPU's *index*: 0 for the boot CPU, then 1, 2, ...
//! in the order the others arrive (or, under Xen PV, their vCPU ids), below
//! `paravirt::MAX_CPUS`; every CPU also records its APIC ID with paravirt, which
//! sends IPIs by index (`paravirt::cpus`).

use core::sync::atomic::{AtomicU64, AtomicUsize};

use paravirt::MAX_CPUS;

const IA32_GS_BASE: u32 = 0xc000_0101;

/// Work another CPU asked this one to do (see `smp::call`).
#[derive(Default)]
pub struct Mailbox {
    /// The function, as `fn(u64) -> u64` (0 = none).
    pub func: AtomicUsize,
    /// Its argument.
    pub arg: AtomicU64,
    /// Its result.
    pub result: AtomicU64,
    /// Incremented by the caller for each request.
    pub requested: AtomicU64,
    /// Set to `requested` by this CPU when the request is done.
    pub done: AtomicU64,
}

/// One CPU's data.
#[repr(C)]
pub struct PerCpu {
    /// This structure's own address (read through GS).
    self_ptr: u64,
    /// The CPU's index (read through GS: the second word).
    index: u64,
    /// The APIC ID.
    pub apic_id: u64,
    /// IPIs of the call vector handled here.
    pub calls_handled: AtomicU64,
    /// Cross-CPU calls.
    pub mailbox: Mailbox,
}

#[allow(clippy::declare_interior_mutable_const)] // used only as an array initializer
const EMPTY: PerCpu = PerCpu {
    self_ptr: 0,
    index: 0,
    apic_id: 0,
    calls_handled: AtomicU64::new(0),
    mailbox: Mailbox {
        func: AtomicUsize::new(0),
        arg: AtomicU64::new(0),
        result: AtomicU64::new(0),
        requested: AtomicU64::new(0),
        done: AtomicU64::new(0),
    },
};

static CPUS: crate::sync::BootCell<[PerCpu; MAX_CPUS]> = crate::sync::BootCell::new([EMPTY; MAX_CPUS]);

/// Sets this CPU's GS base to its slot and records its APIC ID. Once per CPU,
/// first thing after entry; `index` is below `MAX_CPUS` (a CPU beyond is
/// parked before it gets here).
pub fn init_this_cpu(index: u32, apic_id: u32) {
    let i = paravirt::cpus::slot(index);
    // SAFETY: each CPU writes only its own slot, once, before anyone reads it.
    let slot = unsafe { CPUS.slot_mut(i) };
    slot.self_ptr = slot as *mut PerCpu as u64;
    slot.index = u64::from(index);
    slot.apic_id = u64::from(apic_id);
    // Within capacity (checked above), so this cannot fail.
    let _ = paravirt::cpus::set_apic_id(index, apic_id);
    // SAFETY: GS is not otherwise used by the kernel; its base now points at a static.
    unsafe { paravirt::cpu::write_msr(IA32_GS_BASE, slot.self_ptr) };
}

/// This CPU's index (through GS).
pub fn current_index() -> u32 {
    let index: u64;
    // SAFETY: GS points at this CPU's PerCpu (init_this_cpu ran first); the index
    // is the second word.
    unsafe {
        core::arch::asm!("mov {}, gs:[8]", out(reg) index, options(nostack, readonly, preserves_flags))
    };
    index as u32
}

/// The data of CPU `index`.
pub fn of(index: u32) -> &'static PerCpu {
    // SAFETY: shared access to atomics and fields written once at that CPU's start.
    unsafe { &(*CPUS.as_ptr())[paravirt::cpus::slot(index)] }
}

/// This CPU's data.
pub fn this() -> &'static PerCpu {
    of(current_index())
}
