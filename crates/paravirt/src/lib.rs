//! paravirt-ops for Rust kernels.
//!
//! Every privileged operation a kernel performs goes through one API, grouped by
//! concern as in Linux's `paravirt_types.h`:
//!
//! | group | module | what it replaces |
//! |-------|--------|------------------|
//! | cpu | [`cpu`] | `cpuid`, `rdmsr`/`wrmsr`, control registers, `lgdt`/`lidt`/`ltr`, `wbinvd`, port-0x80 delay |
//! | irq | [`irq`] | `pushf`/`popf`, `cli`/`sti`, `sti; hlt`, `hlt` |
//! | mmu | [`mmu`] | `cr2`/`cr3`, page-table writes, `invlpg`, TLB shootdown, lazy batching |
//! | time | [`time`] | TSC-based clocks, steal time, the RTC |
//! | apic | [`apic`] | EOI and IPIs |
//! | lock | [`lock`] | paravirtual spinlock wait/kick |
//! | console | [`console`] | early serial output |
//! | power | [`power`] | shutdown and reboot |
//!
//! A *backend* maps the API onto one hypervisor's ABI ([`backends`]); the native
//! backend maps it onto the bare instructions; the VMI backend onto code the
//! hypervisor ships in an option ROM. At boot, [`init`] probes every
//! backend, installs the winner's ops over the native defaults, and patches every
//! call site: native ops with a short form become the instruction itself, inline;
//! the rest become direct calls.
//!
//! ```ignore
//! // In the kernel, once, on the boot CPU, interrupts off:
//! let params = paravirt::InitParams {
//!     cmdline, virt_to_phys: |v| v, current_cpu: my_apic_id, boot: paravirt::BootFlow::Hardware,
//! };
//! let sel = unsafe { paravirt::init(&params) };
//! paravirt::irq::disable();               // patched to `cli` on native
//! let now = paravirt::time::clock_ns();   // kvmclock under KVM, TSC natively
//! ```
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(test)]
extern crate std;

pub mod backends;
pub mod cpus;
pub mod extable;
pub mod lazy;
pub mod ops;
pub mod patch;
pub mod select;
pub mod table;

pub use cpus::{CpuSet, MAX_CPUS};
pub use ops::{apic, console, cpu, irq, lock, mmu, power, time};

use core::sync::atomic::{AtomicUsize, Ordering};

use ops::Op;
use patch::{Patch, PatchStats};
use select::{AbiLine, CpuCpuid, Decision, InitEnv, OpSet, OverrideProblem, Probe};
use table::PvOps;

/// What the kernel hands to [`init`].
pub struct InitParams<'a> {
    /// The kernel command line (`pv=<backend>` overrides probing, `pv.patch=off`
    /// leaves every site an indirect call).
    pub cmdline: &'a str,
    /// Physical address of a kernel virtual address.
    pub virt_to_phys: fn(u64) -> u64,
    /// The running CPU's index: dense, 0 for the boot CPU, below
    /// [`MAX_CPUS`] (not its APIC ID: see [`cpus`]); must work on every CPU
    /// from before it calls any op.
    pub current_cpu: fn() -> u32,
    /// How the kernel was entered.
    pub boot: BootFlow,
}

/// How the kernel was entered, when that decides the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootFlow {
    /// Entered at ring 0 on (possibly virtualized) hardware: PVH, multiboot, a
    /// VMM's direct entry. The backend is chosen by probing; the kernel must
    /// have the first MiB mapped at its physical address (the VMI probe reads
    /// the option-ROM window 0xC0000–0xDFFFF there, and may call into it).
    Hardware,
    /// Entered by Xen's PV domain builder in ring 3: only the Xen backend can run
    /// the kernel (`start_info` is the virtual address Xen passed in `rsi`).
    XenPv {
        /// Virtual address of Xen's `start_info`.
        start_info: u64,
    },
    /// Entered at the lguest64 entry in ring 3 (pvrun `--personality lguest`):
    /// only the lguest backend can run the kernel. It registers `lguest_data`
    /// and switches to `page_table` (lguest_entry's `LGUEST_INIT` then
    /// `NEW_PGTABLE`).
    Lguest {
        /// Physical address of the kernel's first top-level page table: an
        /// identity map of the kernel, user-accessible, slot 511 left empty.
        page_table: u64,
    },
}

static BOOT_FLOW: AtomicUsize = AtomicUsize::new(0);

/// Xen PV's `start_info`, when the kernel was entered through Xen's PV builder.
pub fn xen_pv_start_info() -> Option<u64> {
    match BOOT_FLOW.load(Ordering::Relaxed) {
        0 => None,
        v => Some(v as u64),
    }
}

static CURRENT_CPU: AtomicUsize = AtomicUsize::new(0);
static VIRT_TO_PHYS: AtomicUsize = AtomicUsize::new(0);

/// The running CPU's index, as the kernel reports it (0 before [`init`]).
pub fn current_cpu() -> u32 {
    let f = CURRENT_CPU.load(Ordering::Relaxed);
    if f == 0 {
        return 0;
    }
    // SAFETY: only `init` stores non-zero values, each a `fn() -> u32`.
    let f: fn() -> u32 = unsafe { core::mem::transmute::<usize, fn() -> u32>(f) };
    f()
}

/// Physical address of a kernel virtual address (identity before [`init`]).
pub fn virt_to_phys(va: u64) -> u64 {
    let f = VIRT_TO_PHYS.load(Ordering::Relaxed);
    if f == 0 {
        return va;
    }
    // SAFETY: only `init` stores non-zero values, each a `fn(u64) -> u64`.
    let f: fn(u64) -> u64 = unsafe { core::mem::transmute::<usize, fn(u64) -> u64>(f) };
    f(va)
}

/// The outcome of [`init`].
#[derive(Clone, Copy)]
pub struct Selection<'a> {
    /// Which backend won and why.
    pub decision: Decision<'a>,
    /// The ops the backend implements (the rest are native).
    pub provided: OpSet,
    /// The ABI the backend found.
    pub abi: AbiLine,
    /// What the patcher did (`None` when patching was turned off).
    pub patched: Option<PatchStats>,
}

impl Selection<'_> {
    /// How `op` is served: `native-inline`, `native`, the backend's name, or
    /// what the backend calls its own patch (`lguest-inline`, `vmi(call)`);
    /// `indirect` when sites were not patched.
    pub fn implementation(&self, op: Op) -> &'static str {
        let backend = self.decision.backend;
        let inline = op.info().native_inline.is_some();
        match (self.patched.is_some(), self.provided.contains(op)) {
            (false, _) => "indirect",
            (true, true) => (backend.patch)(op).map_or(backend.name, backend.patched_name),
            (true, false) if inline => "native-inline",
            (true, false) => "native",
        }
    }

    /// A `pv=` the command line asked for that could not be honoured.
    pub fn override_problem(&self) -> Option<OverrideProblem<'_>> {
        self.decision.problem
    }
}

static INIT_DONE: AtomicUsize = AtomicUsize::new(0);
static SELECTED: AtomicUsize = AtomicUsize::new(0);

/// Selects the backend, installs its ops and patches every call site.
///
/// Once per boot, on the boot CPU, with interrupts disabled, before secondary CPUs
/// start; safe before the heap exists.
///
/// # Safety
/// Only one CPU may run and no op may be executing concurrently; kernel text must
/// be mapped at its link address.
pub unsafe fn init<'a>(params: &InitParams<'a>) -> Selection<'a> {
    assert_eq!(INIT_DONE.swap(1, Ordering::SeqCst), 0, "paravirt::init runs once");
    CURRENT_CPU.store(params.current_cpu as usize, Ordering::Relaxed);
    VIRT_TO_PHYS.store(params.virt_to_phys as usize, Ordering::Relaxed);
    let src = CpuCpuid;
    let probe = Probe::scan(&src);
    let requested = select::cmdline_value(params.cmdline, "pv");
    let decision = match params.boot {
        BootFlow::Hardware => select::decide(backends::BACKENDS, &probe, &src, requested),
        BootFlow::XenPv { start_info } => {
            BOOT_FLOW.store(start_info as usize, Ordering::Relaxed);
            select::only(&backends::xen::BACKEND, backends::xen::probe::PV_PRIORITY, requested)
        }
        BootFlow::Lguest { .. } => {
            select::only(&backends::lguest::BACKEND, backends::lguest::probe::PRIORITY, requested)
        }
    };
    let mut ops = PvOps::NATIVE;
    let env = InitEnv { cpuid: &src, probe: &probe, virt_to_phys: params.virt_to_phys, boot: params.boot };
    let (provided, abi) = (decision.backend.install)(&env, &mut ops);
    SELECTED.store(decision.backend as *const select::Backend as usize, Ordering::Release);
    // SAFETY: one CPU, no op running (caller's contract).
    unsafe { table::PV_OPS.install(ops) };
    let patch_off = select::cmdline_value(params.cmdline, "pv.patch") == Some("off");
    let patched = (!patch_off).then(|| {
        // SAFETY: as above; sites are not executing while we rewrite them.
        unsafe { patch::apply(|op| decide_patch(op, &provided, &ops, decision.backend)) }
    });
    Selection { decision, provided, abi, patched }
}

/// A physical memory range as a hypervisor reports it (E820 types: 1 = RAM).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryRange {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// E820 type.
    pub kind: u32,
}

/// The memory map from the selected backend, for boot protocols that carry none
/// (Xen's PVH dom0 gets hvm_start_info version 0). Returns the number of ranges
/// written; 0 when the backend has none. After [`init`].
pub fn memory_map(out: &mut [MemoryRange]) -> usize {
    let b = SELECTED.load(Ordering::Acquire);
    if b == 0 {
        return 0;
    }
    // SAFETY: `init` stored a pointer to an entry of the static BACKENDS table.
    let backend = unsafe { &*(b as *const select::Backend) };
    (backend.memory_map)(out)
}

/// The outcome of [`start_cpu`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartCpu {
    /// The backend starts no CPUs: use the hardware way (INIT-SIPI-SIPI).
    Unsupported,
    /// The CPU was told to start; it runs `entry` when it comes up.
    Started,
    /// The hypervisor refused (its error code).
    Failed(i64),
    /// The backend runs no CPU with that index: only `max` of them (Xen PV:
    /// the `vcpu_info`s shared_info holds).
    Beyond {
        /// How many CPUs the backend can run.
        max: u32,
    },
}

/// Starts CPU `cpu` through the hypervisor (Xen PV: a deprivileged kernel has
/// no INIT-SIPI): it enters `entry` in 64-bit mode on the current page tables,
/// with `rdi` = `cpu`, `rsp` = `stack_top`, and interrupts (events) disabled; it
/// must call [`init_secondary`] before using backend ops other than cpu and irq.
/// After [`init`].
pub fn start_cpu(cpu: u32, entry: u64, stack_top: u64) -> StartCpu {
    let b = SELECTED.load(Ordering::Acquire);
    if b == 0 {
        return StartCpu::Unsupported;
    }
    // SAFETY: `init` stored a pointer to an entry of the static BACKENDS table.
    let backend = unsafe { &*(b as *const select::Backend) };
    (backend.start_cpu)(cpu, entry, stack_top)
}

/// Sets up the selected backend's per-CPU state (kvmclock, steal time, ...) on a
/// secondary CPU. Once per CPU, on that CPU, before it calls any op other than the
/// cpu and irq groups; safe before the heap exists. A CPU whose index is beyond
/// [`MAX_CPUS`] is refused: it must call no op but the cpu and irq groups (the
/// kernel should park it and say so).
pub fn init_secondary() -> Result<(), cpus::CpuError> {
    let cpu = current_cpu();
    cpus::check(cpu)?;
    let b = SELECTED.load(Ordering::Acquire);
    if b != 0 {
        // SAFETY: `init` stored a pointer to an entry of the static BACKENDS table.
        let backend = unsafe { &*(b as *const select::Backend) };
        (backend.init_cpu)(cpu);
    }
    Ok(())
}

/// The patch for `op`: the backend's own inline form for an op it provides (if it
/// has one), the native bytes inline when the op stayed native and has a short
/// form, else a direct call to whatever the table holds.
pub fn decide_patch(op: Op, provided: &OpSet, ops: &PvOps, backend: &select::Backend) -> Patch {
    let to_implementation =
        || if op.info().jump { Patch::Jump(ops.target(op)) } else { Patch::Call(ops.target(op)) };
    if provided.contains(op) {
        return (backend.patch)(op).unwrap_or_else(to_implementation);
    }
    match op.info().native_inline {
        Some(bytes) => Patch::Inline(bytes),
        None => to_implementation(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::BACKENDS;

    fn selection(patched: bool, provided: &[Op]) -> Selection<'static> {
        let mut set = OpSet::EMPTY;
        for &op in provided {
            set.insert(op);
        }
        Selection {
            decision: Decision { backend: &BACKENDS[1], priority: 30, by_override: false, problem: None },
            provided: set,
            abi: AbiLine { name: "kvm-pv", features: Some(0x8) },
            patched: patched.then(PatchStats::default),
        }
    }

    #[test]
    fn fallback_report_names_each_implementation() {
        let s = selection(true, &[Op::TimeClockNs, Op::CpuIoDelay]);
        assert_eq!(s.implementation(Op::TimeClockNs), "kvm");
        assert_eq!(s.implementation(Op::CpuIoDelay), "kvm", "a provided op beats its native form");
        assert_eq!(s.implementation(Op::IrqDisable), "native-inline");
        assert_eq!(s.implementation(Op::CpuCpuid), "native", "no short form: a call to native");
        let unpatched = selection(false, &[Op::TimeClockNs]);
        assert_eq!(unpatched.implementation(Op::TimeClockNs), "indirect");
        assert_eq!(unpatched.implementation(Op::IrqDisable), "indirect");
    }

    #[test]
    fn patch_decision_follows_the_fallback() {
        let mut ops = PvOps::NATIVE;
        extern "C" fn fake_clock() -> u64 {
            42
        }
        ops.time.clock_ns = fake_clock;
        let mut provided = OpSet::EMPTY;
        provided.insert(Op::TimeClockNs);
        let kvm = &BACKENDS[1];
        assert_eq!(
            decide_patch(Op::TimeClockNs, &provided, &ops, kvm),
            Patch::Call(fake_clock as *const () as u64)
        );
        assert_eq!(decide_patch(Op::IrqDisable, &provided, &ops, kvm), Patch::Inline(&[0xfa]));
        assert_eq!(
            decide_patch(Op::ConsoleWrite, &provided, &ops, kvm),
            Patch::Call(ops.console.write as usize as u64)
        );
        // A backend that overrides an op with a native form gets a call, not the bytes.
        provided.insert(Op::CpuIoDelay);
        assert!(matches!(decide_patch(Op::CpuIoDelay, &provided, &ops, kvm), Patch::Call(_)));
    }
}
