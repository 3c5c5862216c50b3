//! The mapping from the API onto Xen, PVH/HVM flavour: the CPU virtualizes
//! privileged instructions in hardware, so most ops stay native; Xen supplies
//! what hardware cannot.
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

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use super::abi::{self, hypercall as hc, shared_info as si, E820Entry, XenAddToPhysmap, XenMemoryMap};
use super::probe;
use crate::backends::native::ops as native;
use crate::backends::pvclock::{self, PvclockVcpuTimeInfo};
use crate::ops::time::WallClock;
use crate::ops::Op;
use crate::select::{AbiLine, InitEnv, OpSet};
use crate::table::PvOps;
use crate::{virt_to_phys, MemoryRange};

#[repr(C, align(4096))]
struct Page(UnsafeCell<[u8; 4096]>);

// SAFETY: Xen fills the page once at install; afterwards it is only executed.
unsafe impl Sync for Page {}

/// The hypercall page (Xen writes one 32-byte stub per hypercall into it). It
/// lives in `.data` so it is in an executable, writable mapping.
#[link_section = ".data.xen_hypercall_page"]
static HYPERCALL_PAGE: Page = Page(UnsafeCell::new([0xc3; 4096]));

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);

/// The page Xen's `shared_info` is mapped over.
static SHARED_INFO: Page = Page(UnsafeCell::new([0; 4096]));
static LAST_NS: pvclock::Monotonic = pvclock::Monotonic::new();
static BOOT_NS: AtomicU64 = AtomicU64::new(0);

/// Calls hypercall `nr` with up to three arguments (rdi, rsi, rdx).
fn hypercall3(nr: u32, a0: u64, a1: u64, a2: u64) -> i64 {
    let stub = HYPERCALL_PAGE.0.get() as u64 + u64::from(nr) * abi::HYPERCALL_STUB_SIZE;
    let ret: i64;
    // SAFETY: Xen installed the page at `install`; each stub follows the C ABI
    // (arguments in rdi, rsi, rdx, r10, r8; result in rax).
    unsafe {
        core::arch::asm!("call {stub}", stub = in(reg) stub,
            inlateout("rdi") a0 => _, inlateout("rsi") a1 => _, inlateout("rdx") a2 => _,
            lateout("rax") ret, clobber_abi("C"));
    }
    ret
}

/// Installs the hypercall page and overrides the ops Xen serves.
pub fn install(env: &InitEnv, ops: &mut PvOps) -> (OpSet, AbiLine) {
    let base = probe::base(env.probe).unwrap_or(0x4000_0000);
    let version = env.cpuid.cpuid(base + abi::leaf::VERSION, 0).eax;
    let pages = env.cpuid.cpuid(base + abi::leaf::HYPERCALL_PAGES, 0);
    let page_pa = virt_to_phys(HYPERCALL_PAGE.0.get() as u64);
    // SAFETY: the MSR CPUID names installs hypercall pages at the given guest
    // physical address; ours is a page-aligned static the kernel never touches.
    unsafe { native::write_msr(pages.ebx, page_pa) };

    let mut set = OpSet::EMPTY;
    ops.console.write = console_write;
    set.insert(Op::ConsoleWrite);
    ops.power.shutdown = shutdown;
    ops.power.reboot = reboot;
    set.insert(Op::PowerShutdown);
    set.insert(Op::PowerReboot);
    let khz = env.cpuid.cpuid(base + abi::leaf::TIME, 0).ecx;
    if khz != 0 {
        TSC_KHZ.store(u64::from(khz), Ordering::Relaxed);
        native::seed_tsc_khz(u64::from(khz));
        ops.time.tsc_khz = tsc_khz;
        set.insert(Op::TimeTscKhz);
    }
    if map_shared_info() {
        ops.time.clock_ns = clock_ns;
        ops.time.sched_clock = sched_clock;
        ops.time.wall_clock = wall_clock;
        for op in [Op::TimeClockNs, Op::TimeSchedClock, Op::TimeWallClock] {
            set.insert(op);
        }
        BOOT_NS.store(clock_ns(), Ordering::Relaxed);
    }
    (set, AbiLine { name: "xen-hvm", features: Some(u64::from(version)) })
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
fn time_record() -> *const PvclockVcpuTimeInfo {
    (SHARED_INFO.0.get() as usize + si::VCPU_TIME) as *const PvclockVcpuTimeInfo
}

/// Xen system time: vCPU 0's record, extrapolated with this CPU's TSC and kept
/// monotonic across CPUs (the TSC-stable flag is rarely set under Xen).
extern "C" fn clock_ns() -> u64 {
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

fn sched_shutdown(reason: u32) {
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
    loop {
        native::irq_disable();
        native::halt();
    }
}

extern "C" fn reboot() -> ! {
    sched_shutdown(abi::shutdown::REBOOT);
    loop {
        native::irq_disable();
        native::halt();
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
