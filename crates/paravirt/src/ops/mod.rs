//! The API, one module per op group. Each module holds the group's op table type
//! (`XxxOps`, with its native defaults) and the typed free functions the kernel
//! calls. Every free function is a *patchable call site* (see [`crate::patch`]).
//!
//! Hook timing, as Linux's `asm/hypervisor.h` documents it: every op may be called
//! at any time, on any CPU, with or without a heap; none allocates. Before
//! [`crate::init`] the native table serves them through an indirect call.

use core::mem::offset_of;

use crate::table::PvOps;

pub mod apic;
pub mod console;
pub mod cpu;
pub mod irq;
pub mod lock;
pub mod mmu;
pub mod power;
pub mod time;

/// Static facts about one op.
#[derive(Clone, Copy, Debug)]
pub struct OpInfo {
    /// The op.
    pub op: Op,
    /// `group.op`.
    pub name: &'static str,
    /// Byte offset of its function pointer in [`PvOps`].
    pub offset: usize,
    /// The native instruction bytes a site may hold inline, honouring the site's
    /// register contract (arguments in rdi, rsi; result in rax; the C ABI's
    /// caller-saved registers may be clobbered). `None`: always a call.
    pub native_inline: Option<&'static [u8]>,
    /// The site is entered by a jump and never returns (`cpu.iret`): patched to a
    /// `jmp`, not a `call`.
    pub jump: bool,
    /// Bytes the site reserves at least, beyond what the native form and the
    /// indirect call need: room for a backend's own inline form (lguest's
    /// `irq.disable` is a 7-byte store to its shared page).
    pub min_site_len: usize,
}

macro_rules! define_ops {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $group:ident . $field:ident, $native:expr
        $(, site $min:literal)?; )*) => {
        /// Every op of the API.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Op {
            $( $(#[$doc])* $variant, )*
        }

        /// Facts about every op, indexed by `Op as usize`.
        pub const OP_INFO: &[OpInfo] = &[
            $( OpInfo {
                op: Op::$variant,
                name: $name,
                offset: offset_of!(PvOps, $group) + offset_of!(group_type!($group), $field),
                native_inline: $native,
                jump: matches!(Op::$variant, Op::CpuIret),
                min_site_len: 0 $(+ $min)?,
            }, )*
        ];
    };
}

macro_rules! group_type {
    (cpu) => {
        cpu::CpuOps
    };
    (irq) => {
        irq::IrqOps
    };
    (mmu) => {
        mmu::MmuOps
    };
    (time) => {
        time::TimeOps
    };
    (apic) => {
        apic::ApicOps
    };
    (lock) => {
        lock::LockOps
    };
    (console) => {
        console::ConsoleOps
    };
    (power) => {
        power::PowerOps
    };
}

define_ops! {
    /// cpuid.
    CpuCpuid = "cpu.cpuid", cpu.cpuid, None;
    /// rdmsr: `mov ecx, edi; rdmsr; shl rdx, 32; or rax, rdx`.
    CpuReadMsr = "cpu.read_msr", cpu.read_msr,
        Some(&[0x89, 0xf9, 0x0f, 0x32, 0x48, 0xc1, 0xe2, 0x20, 0x48, 0x09, 0xd0]);
    /// wrmsr: `mov ecx, edi; mov eax, esi; mov rdx, rsi; shr rdx, 32; wrmsr`.
    CpuWriteMsr = "cpu.write_msr", cpu.write_msr,
        Some(&[0x89, 0xf9, 0x89, 0xf0, 0x48, 0x89, 0xf2, 0x48, 0xc1, 0xea, 0x20, 0x0f, 0x30]);
    /// rdmsr with #GP reported.
    CpuReadMsrSafe = "cpu.read_msr_safe", cpu.read_msr_safe, None;
    /// wrmsr with #GP reported.
    CpuWriteMsrSafe = "cpu.write_msr_safe", cpu.write_msr_safe, None;
    /// `mov rax, cr0`.
    CpuReadCr0 = "cpu.read_cr0", cpu.read_cr0, Some(&[0x0f, 0x20, 0xc0]);
    /// `mov cr0, rdi`.
    CpuWriteCr0 = "cpu.write_cr0", cpu.write_cr0, Some(&[0x0f, 0x22, 0xc7]);
    /// `mov rax, cr4`.
    CpuReadCr4 = "cpu.read_cr4", cpu.read_cr4, Some(&[0x0f, 0x20, 0xe0]);
    /// `mov cr4, rdi`.
    CpuWriteCr4 = "cpu.write_cr4", cpu.write_cr4, Some(&[0x0f, 0x22, 0xe7]);
    /// `lgdt [rdi]`.
    CpuLoadGdt = "cpu.load_gdt", cpu.load_gdt, Some(&[0x0f, 0x01, 0x17]);
    /// `lidt [rdi]`.
    CpuLoadIdt = "cpu.load_idt", cpu.load_idt, Some(&[0x0f, 0x01, 0x1f]);
    /// `ltr di`.
    CpuLoadTr = "cpu.load_tr", cpu.load_tr, Some(&[0x0f, 0x00, 0xdf]);
    /// `wbinvd`.
    CpuWbinvd = "cpu.wbinvd", cpu.wbinvd, Some(&[0x0f, 0x09]);
    /// `out 0x80, al`.
    CpuIoDelay = "cpu.io_delay", cpu.io_delay, Some(&[0xe6, 0x80]);
    /// `iretq` (a jump site: see `cpu::iret`).
    CpuIret = "cpu.iret", cpu.iret, Some(&[0x48, 0xcf]);
    /// `pushfq; pop rax`.
    IrqSaveFlags = "irq.save_flags", irq.save_flags, Some(&[0x9c, 0x58]);
    /// `push rdi; popfq`.
    IrqRestoreFlags = "irq.restore_flags", irq.restore_flags, Some(&[0x57, 0x9d]);
    /// `cli` (the site has room for lguest's `mov byte ptr [rip + d32], 0`).
    IrqDisable = "irq.disable", irq.disable, Some(&[0xfa]), site 7;
    /// `sti`.
    IrqEnable = "irq.enable", irq.enable, Some(&[0xfb]);
    /// `sti; hlt`.
    IrqSafeHalt = "irq.safe_halt", irq.safe_halt, Some(&[0xfb, 0xf4]);
    /// `hlt`.
    IrqHalt = "irq.halt", irq.halt, Some(&[0xf4]);
    /// `mov rax, cr2`.
    MmuReadCr2 = "mmu.read_cr2", mmu.read_cr2, Some(&[0x0f, 0x20, 0xd0]);
    /// `mov rax, cr3`.
    MmuReadCr3 = "mmu.read_cr3", mmu.read_cr3, Some(&[0x0f, 0x20, 0xd8]);
    /// `mov cr3, rdi`.
    MmuWriteCr3 = "mmu.write_cr3", mmu.write_cr3, Some(&[0x0f, 0x22, 0xdf]);
    /// `mov [rdi], rsi`.
    MmuSetPte = "mmu.set_pte", mmu.set_pte, Some(&[0x48, 0x89, 0x37]);
    /// `mov [rdi], rsi`.
    MmuSetPmd = "mmu.set_pmd", mmu.set_pmd, Some(&[0x48, 0x89, 0x37]);
    /// `mov [rdi], rsi`.
    MmuSetPud = "mmu.set_pud", mmu.set_pud, Some(&[0x48, 0x89, 0x37]);
    /// `mov [rdi], rsi`.
    MmuSetP4d = "mmu.set_p4d", mmu.set_p4d, Some(&[0x48, 0x89, 0x37]);
    /// `mov rax, [rdi]`.
    MmuReadEntry = "mmu.read_entry", mmu.read_entry, Some(&[0x48, 0x8b, 0x07]);
    /// `mov qword ptr [rdi], 0`.
    MmuPteClear = "mmu.pte_clear", mmu.pte_clear,
        Some(&[0x48, 0xc7, 0x07, 0x00, 0x00, 0x00, 0x00]);
    /// `mov rax, cr3; mov cr3, rax`.
    MmuFlushTlbAll = "mmu.flush_tlb_all", mmu.flush_tlb_all,
        Some(&[0x0f, 0x20, 0xd8, 0x0f, 0x22, 0xd8]);
    /// `invlpg [rdi]`.
    MmuFlushTlbOne = "mmu.flush_tlb_one", mmu.flush_tlb_one, Some(&[0x0f, 0x01, 0x3f]);
    /// TLB flush of a range on a set of CPUs.
    MmuFlushTlbMulti = "mmu.flush_tlb_multi", mmu.flush_tlb_multi, None;
    /// A page became a page-table page.
    MmuAllocPt = "mmu.alloc_pt", mmu.alloc_pt, None;
    /// A page stopped being a page-table page.
    MmuReleasePt = "mmu.release_pt", mmu.release_pt, None;
    /// Start batching page-table updates.
    MmuLazyEnter = "mmu.lazy_enter", mmu.lazy_enter, None;
    /// Apply the batch and stop batching.
    MmuLazyLeave = "mmu.lazy_leave", mmu.lazy_leave, None;
    /// Apply the batch, keep batching.
    MmuLazyFlush = "mmu.lazy_flush", mmu.lazy_flush, None;
    /// Clocksource in ns.
    TimeClockNs = "time.clock_ns", time.clock_ns, None;
    /// Scheduler clock in ns since boot.
    TimeSchedClock = "time.sched_clock", time.sched_clock, None;
    /// Time a CPU was runnable but not running, in ns.
    TimeStealClock = "time.steal_clock", time.steal_clock, None;
    /// Wall-clock time.
    TimeWallClock = "time.wall_clock", time.wall_clock, None;
    /// TSC frequency in kHz.
    TimeTscKhz = "time.tsc_khz", time.tsc_khz, None;
    /// Arm a paravirtual one-shot timer (none natively).
    TimeSetTimer = "time.set_timer", time.set_timer, None;
    /// End of interrupt.
    ApicEoi = "apic.eoi", apic.eoi, None;
    /// IPI to one CPU.
    ApicSendIpi = "apic.send_ipi", apic.send_ipi, None;
    /// IPI to a set of CPUs.
    ApicSendIpiMask = "apic.send_ipi_mask", apic.send_ipi_mask, None;
    /// Wait while a byte holds a value.
    LockWait = "lock.wait", lock.wait, None;
    /// Wake a waiting CPU.
    LockKick = "lock.kick", lock.kick, None;
    /// Whether a vCPU is descheduled.
    LockVcpuIsPreempted = "lock.vcpu_is_preempted", lock.vcpu_is_preempted, None;
    /// Give this vCPU's time to a preempted one.
    LockYieldTo = "lock.yield_to", lock.yield_to, None;
    /// Early console write.
    ConsoleWrite = "console.write", console.write, None;
    /// Power off with a status.
    PowerShutdown = "power.shutdown", power.shutdown, None;
    /// Reset.
    PowerReboot = "power.reboot", power.reboot, None;
}

/// Number of ops.
pub const OP_COUNT: usize = OP_INFO.len();

impl Op {
    /// Facts about this op.
    pub const fn info(self) -> &'static OpInfo {
        &OP_INFO[self as usize]
    }

    /// `group.op`.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// Every op.
    pub fn all() -> impl Iterator<Item = Op> {
        OP_INFO.iter().map(|i| i.op)
    }
}
