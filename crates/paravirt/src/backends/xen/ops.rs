//! The mapping from the API onto Xen, PVH/HVM flavour: the CPU virtualizes
//! privileged instructions in hardware, so most ops stay native; Xen supplies
//! what hardware cannot. The console, power and clock functions here serve the
//! PV flavour ([`super::pv`]) too.
//!
//! | op / service | Xen mechanism |
//! |--------------|---------------|
//! | (boot) | hypercall page installed through the MSR CPUID base+2 names |
//! | console.write | `console_io(CONSOLEIO_write)` (the UART belongs to Xen) |
//! | power.shutdown | the debug-exit port when dom0 may use it, then `sched_op(SCHEDOP_shutdown, poweroff/crash)` |
//! | power.reboot | `sched_op(SCHEDOP_shutdown, reboot)` |
//! | time.tsc_khz (and the native TSC clock) | CPUID base+3 (time leaf), ECX |
//! | time.clock_ns, sched_clock, wall_clock | pvclock in `shared_info` (mapped with `XENMEM_add_to_physmap`), vCPU 0's record, kept monotonic; `wc_*` for the wall clock |
//! | memory map | `memory_op(XENMEM_memory_map)` (hvm_start_info v0 has none) |
//! | time.steal_clock, lock.vcpu_is_preempted | the boot vCPU's runstate area (`VCPUOP_register_runstate_memory_area`); 0 / false for the others |
//! | time.set_timer | `set_timer_op` + `VIRQ_TIMER`, delivered through `HVM_PARAM_CALLBACK_IRQ` (vector callback, [`CALLBACK_VECTOR`]) on the boot vCPU |
//! | cpu.load_idt | native `lidt`, with the callback vector's gate claimed first |
//! | irq.safe_halt | native `sti; hlt`: Xen turns the HLT exit into `SCHEDOP_block`, and the `sti` shadow keeps the wake-up race closed |

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use super::abi::XenHvmParam;
use super::abi::{self, hypercall as hc, shared_info as si, E820Entry, XenAddToPhysmap, XenMemoryMap};
use super::events;
use super::hypercall::{call3 as hypercall3, ptr, Page, XEN_HYPERCALL_PAGE};
use super::probe;
use super::runstate;
use crate::backends::native::ops as native;
use crate::backends::pvclock::{self, PvclockVcpuTimeInfo};
use crate::ops::cpu::DescriptorTablePointer;
use crate::ops::time::WallClock;
use crate::ops::Op;
use crate::select::{AbiLine, InitEnv, OpSet};
use crate::table::PvOps;
use crate::{virt_to_phys, MemoryRange};

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// The page Xen's `shared_info` is mapped over (HVM: by `XENMEM_add_to_physmap`
/// at its frame; PV: by `update_va_mapping` at its address).
pub(super) static SHARED_INFO: Page = Page(UnsafeCell::new([0; 4096]));
static LAST_NS: pvclock::Monotonic = pvclock::Monotonic::new();
static BOOT_NS: AtomicU64 = AtomicU64::new(0);

/// Installs the hypercall page and overrides the ops Xen serves.
pub fn install(env: &InitEnv, ops: &mut PvOps) -> (OpSet, AbiLine) {
    let base = probe::base(env.probe).unwrap_or(0x4000_0000);
    let version = env.cpuid.cpuid(base + abi::leaf::VERSION, 0).eax;
    let pages = env.cpuid.cpuid(base + abi::leaf::HYPERCALL_PAGES, 0);
    let page_pa = virt_to_phys(XEN_HYPERCALL_PAGE.0.get() as u64);
    // SAFETY: the MSR CPUID names installs hypercall pages at the given guest
    // physical address; ours is a page-aligned static the kernel never touches.
    unsafe { native::write_msr(pages.ebx, page_pa) };

    let mut set = OpSet::EMPTY;
    install_common(ops, &mut set);
    let khz = env.cpuid.cpuid(base + abi::leaf::TIME, 0).ecx;
    if khz != 0 {
        TSC_KHZ.store(u64::from(khz), Ordering::Relaxed);
        native::seed_tsc_khz(u64::from(khz));
        ops.time.tsc_khz = tsc_khz;
        set.insert(Op::TimeTscKhz);
    }
    if map_shared_info() {
        install_clocks(ops, &mut set);
        // The boot vCPU's runstate only: other CPUs are known by APIC ID here.
        runstate::enable_update_flag();
        if runstate::register(0) {
            ops.time.steal_clock = runstate::steal_clock;
            ops.lock.vcpu_is_preempted = runstate::vcpu_is_preempted;
            set.insert(Op::TimeStealClock);
            set.insert(Op::LockVcpuIsPreempted);
        }
        if install_event_callback() {
            ops.cpu.load_idt = load_idt;
            ops.time.set_timer = set_timer;
            set.insert(Op::CpuLoadIdt);
            set.insert(Op::TimeSetTimer);
        }
    }
    (set, AbiLine { name: "xen-hvm", features: Some(u64::from(version)) })
}

/// The ops both flavours serve the same way: the console and power.
pub(super) fn install_common(ops: &mut PvOps, set: &mut OpSet) {
    ops.console.write = console_write;
    set.insert(Op::ConsoleWrite);
    ops.power.shutdown = shutdown;
    ops.power.reboot = reboot;
    set.insert(Op::PowerShutdown);
    set.insert(Op::PowerReboot);
}

/// The clocks from the mapped `shared_info` (both flavours).
pub(super) fn install_clocks(ops: &mut PvOps, set: &mut OpSet) {
    ops.time.clock_ns = clock_ns;
    ops.time.sched_clock = sched_clock;
    ops.time.wall_clock = wall_clock;
    for op in [Op::TimeClockNs, Op::TimeSchedClock, Op::TimeWallClock] {
        set.insert(op);
    }
    BOOT_NS.store(clock_ns(), Ordering::Relaxed);
}

/// Vector the HVM event callback arrives on (as Linux's
/// `HYPERVISOR_CALLBACK_VECTOR`): the backend claims it in the kernel's IDT.
pub const CALLBACK_VECTOR: u8 = 0xf3;

/// Binds the timer port and asks Xen for the callback vector; claims the vector
/// in the IDT the kernel already loaded. False if Xen refused.
fn install_event_callback() -> bool {
    events::bind_timer(0);
    if events::TIMER_PORT[0].load(Ordering::Relaxed) == events::NO_PORT {
        return false;
    }
    let param = XenHvmParam {
        domid: abi::DOMID_SELF,
        pad: 0,
        index: abi::HVM_PARAM_CALLBACK_IRQ,
        value: abi::HVM_PARAM_CALLBACK_TYPE_VECTOR | u64::from(CALLBACK_VECTOR),
    };
    if hypercall3(hc::HVM_OP, abi::HVMOP_SET_PARAM, ptr(&param), 0) != 0 {
        return false;
    }
    let mut idt = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: `sidt` stores the current IDT register into `idt`.
    unsafe { core::arch::asm!("sidt [{}]", in(reg) &mut idt, options(nostack)) };
    // SAFETY: the register describes the IDT the kernel loaded (or an empty one).
    unsafe { claim_callback_gate(&idt) };
    true
}

/// Records the IDT's handlers (the upcall runs them) and points the callback
/// vector's gate at the upcall, as an interrupt gate with the kernel's code
/// selector. Leaves an IDT too short for the vector alone.
///
/// # Safety
/// `idt` must describe a writable IDT.
unsafe fn claim_callback_gate(idt: &DescriptorTablePointer) {
    let v = usize::from(CALLBACK_VECTOR);
    if (usize::from(idt.limit) + 1) / 16 <= v {
        return;
    }
    // SAFETY: forwarded from the caller.
    unsafe { events::record_idt(idt, |_| {}) };
    let gates = idt.base as *mut u64;
    let handler = events::entry_address(events::xen_hvm_upcall);
    // SAFETY: gate 0 and gate `v` lie within the table (checked above).
    unsafe {
        let selector = (gates.read() >> 16) & 0xffff;
        let lo = (handler & 0xffff) | (selector << 16) | (0x8e << 40) | ((handler & 0xffff_0000) << 32);
        gates.add(2 * v).write_volatile(lo);
        gates.add(2 * v + 1).write_volatile(handler >> 32);
    }
}

/// Loads an IDT with the callback gate claimed in it.
unsafe extern "C" fn load_idt(idt: *const DescriptorTablePointer) {
    // SAFETY: the caller passes a valid, writable IDT.
    unsafe {
        claim_callback_gate(&idt.read_unaligned());
        native::load_idt(idt);
    }
}

/// The Xen one-shot timer, for the boot vCPU (its ports are bound there);
/// other vCPUs keep their local APIC timer.
extern "C" fn set_timer(deadline_ns: u64, vector: u32) -> bool {
    crate::current_cpu() == 0 && events::set_timer(deadline_ns, vector)
}

/// Maps `shared_info` over [`SHARED_INFO`]; false if Xen refused.
fn map_shared_info() -> bool {
    let gpfn = virt_to_phys(SHARED_INFO.0.get() as u64) >> 12;
    let mut req = XenAddToPhysmap {
        domid: abi::DOMID_SELF,
        size: 0,
        space: abi::XENMAPSPACE_SHARED_INFO,
        idx: 0,
        gpfn,
    };
    hypercall3(hc::MEMORY_OP, abi::XENMEM_ADD_TO_PHYSMAP, &mut req as *mut XenAddToPhysmap as u64, 0) == 0
}

/// vCPU 0's pvclock record in `shared_info`.
pub(super) fn time_record() -> *const PvclockVcpuTimeInfo {
    (SHARED_INFO.0.get() as usize + si::VCPU_TIME) as *const PvclockVcpuTimeInfo
}

/// Xen system time: vCPU 0's record, extrapolated with this CPU's TSC and kept
/// monotonic across CPUs (the TSC-stable flag is rarely set under Xen).
pub(super) extern "C" fn clock_ns() -> u64 {
    // SAFETY: `shared_info` is mapped over the static page; Xen maintains vCPU 0's
    // record there.
    let (ns, stable) = unsafe { pvclock::read(time_record()) };
    if stable {
        ns
    } else {
        LAST_NS.clamp(ns)
    }
}

extern "C" fn sched_clock() -> u64 {
    clock_ns().saturating_sub(BOOT_NS.load(Ordering::Relaxed))
}

/// Wall time at system time 0 (`wc_*`, under `wc_version`) plus system time.
extern "C" fn wall_clock() -> WallClock {
    let base = SHARED_INFO.0.get() as usize;
    let field = |off: usize| (base + off) as *const u32;
    let (sec_lo, nsec, sec_hi) = loop {
        // SAFETY: the `wc_*` words of the mapped shared_info, read under their
        // version.
        let r = unsafe {
            pvclock::versioned(field(si::WC_VERSION), || {
                (
                    field(si::WC_SEC).read_volatile(),
                    field(si::WC_NSEC).read_volatile(),
                    field(si::WC_SEC_HI).read_volatile(),
                )
            })
        };
        if let Some(r) = r {
            break r;
        }
        core::hint::spin_loop();
    };
    let secs = (u64::from(sec_hi) << 32) | u64::from(sec_lo);
    let total = u64::from(nsec) + clock_ns();
    WallClock { secs: secs + total / 1_000_000_000, nsecs: total % 1_000_000_000 }
}

extern "C" fn console_write(ptr: *const u8, len: usize) {
    hypercall3(hc::CONSOLE_IO, abi::CONSOLEIO_WRITE, len as u64, ptr as u64);
}

pub(super) fn sched_shutdown(reason: u32) {
    let arg = reason;
    hypercall3(hc::SCHED_OP, abi::sched::SHUTDOWN, &arg as *const u32 as u64, 0);
}

extern "C" fn shutdown(status: u32) -> ! {
    // The debug-exit port carries the status where the platform has it (QEMU).
    // SAFETY: writing the debug-exit port ends the VM or is ignored.
    unsafe {
        core::arch::asm!("out dx, eax", in("dx") native::DEBUG_EXIT_PORT, in("eax") status, options(nomem, nostack))
    };
    sched_shutdown(if status == 0 { abi::shutdown::POWEROFF } else { abi::shutdown::CRASH });
    park()
}

extern "C" fn reboot() -> ! {
    sched_shutdown(abi::shutdown::REBOOT);
    park()
}

/// After a shutdown request: give the CPU away until Xen stops the domain
/// (`hlt` is privileged in a PV guest, `sched_op` works in both flavours).
fn park() -> ! {
    loop {
        hypercall3(hc::SCHED_OP, abi::sched::YIELD, 0, 0);
    }
}

extern "C" fn tsc_khz() -> u64 {
    TSC_KHZ.load(Ordering::Relaxed)
}

/// The domain's memory map from `XENMEM_memory_map`.
pub fn memory_map(out: &mut [MemoryRange]) -> usize {
    let mut raw = [E820Entry::default(); 64];
    let mut map = XenMemoryMap { nr_entries: raw.len() as u32, pad: 0, buffer: raw.as_mut_ptr() as u64 };
    let r = hypercall3(hc::MEMORY_OP, abi::XENMEM_MEMORY_MAP, &mut map as *mut XenMemoryMap as u64, 0);
    if r < 0 {
        return 0;
    }
    let n = (map.nr_entries as usize).min(raw.len()).min(out.len());
    for (o, e) in out.iter_mut().zip(&raw[..n]) {
        *o = MemoryRange { start: e.addr, len: e.size, kind: e.kind };
    }
    n
}
