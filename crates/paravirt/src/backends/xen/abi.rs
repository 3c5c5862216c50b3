//! Xen's public ABI, the parts both flavours use.
//!
//! Sources: Xen `xen/include/public/xen.h` (hypercall numbers, `start_info`,
//! `shared_info`/`vcpu_info`, `mmu_update`, `mmuext_op`, `multicall_entry`,
//! console_io), `xen/include/public/arch-x86/xen.h` and `xen-x86_64.h`
//! (`trap_info`, flat selectors, the M2P address, `arch_vcpu_info`),
//! `xen/include/public/arch-x86/cpuid.h` (the CPUID leaves), `sched.h`,
//! `memory.h` (`XENMEM_memory_map`, `struct xen_memory_map`), `physdev.h`,
//! `event_channel.h`, `callback.h`, `vcpu.h`.

/// Signature at the Xen CPUID base (cpuid.h: "XenVMMXenVMM").
pub const SIGNATURE: &[u8; 12] = b"XenVMMXenVMM";

/// Offsets from the CPUID base (cpuid.h).
pub mod leaf {
    /// EAX = major << 16 | minor.
    pub const VERSION: u32 = 1;
    /// EAX = number of hypercall pages, EBX = MSR that installs them.
    pub const HYPERCALL_PAGES: u32 = 2;
    /// Time leaf; subleaf 0: ECX = guest TSC frequency in kHz.
    pub const TIME: u32 = 3;
}

/// Hypercall numbers (xen.h, `__HYPERVISOR_*`).
pub mod hypercall {
    /// `set_trap_table(const struct trap_info *)`.
    pub const SET_TRAP_TABLE: u32 = 0;
    /// `mmu_update(reqs, count, done, domid)`.
    pub const MMU_UPDATE: u32 = 1;
    /// `set_callbacks(event, failsafe, syscall)` (x86-64).
    pub const SET_CALLBACKS: u32 = 4;
    /// `vm_assist(cmd, type)`.
    pub const VM_ASSIST: u32 = 21;
    /// `fpu_taskswitch(set)`: sets or clears CR0.TS.
    pub const FPU_TASKSWITCH: u32 = 5;
    /// `memory_op`.
    pub const MEMORY_OP: u32 = 12;
    /// `multicall(entries, count)`.
    pub const MULTICALL: u32 = 13;
    /// `update_va_mapping(va, pte, flags)`.
    pub const UPDATE_VA_MAPPING: u32 = 14;
    /// `set_timer_op(absolute system time in ns)`.
    pub const SET_TIMER_OP: u32 = 15;
    /// `xen_version(cmd, arg)`; any hypercall delivers pending events on return.
    pub const XEN_VERSION: u32 = 17;
    /// `console_io`.
    pub const CONSOLE_IO: u32 = 18;
    /// `vcpu_op(cmd, vcpu, arg)`.
    pub const VCPU_OP: u32 = 24;
    /// `mmuext_op(ops, count, done, domid)`.
    pub const MMUEXT_OP: u32 = 26;
    /// `sched_op`.
    pub const SCHED_OP: u32 = 29;
    /// `event_channel_op(cmd, arg)`.
    pub const EVENT_CHANNEL_OP: u32 = 32;
    /// `physdev_op(cmd, arg)`.
    pub const PHYSDEV_OP: u32 = 33;
    /// `hvm_op(cmd, arg)`.
    pub const HVM_OP: u32 = 34;
}

/// `hvm_op` command setting an HVM parameter (hvm/hvm_op.h), argument
/// [`XenHvmParam`].
pub const HVMOP_SET_PARAM: u64 = 0;
/// The parameter naming how event upcalls reach an HVM guest (hvm/params.h).
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
/// `HVM_PARAM_CALLBACK_IRQ` value type "vector" (bits 63:56 = 2; bits 7:0 = the
/// vector): the upcall arrives as that interrupt vector, with no EOI needed.
pub const HVM_PARAM_CALLBACK_TYPE_VECTOR: u64 = 2 << 56;

/// `struct xen_hvm_param` (hvm/hvm_op.h), 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenHvmParam {
    /// Domain ([`DOMID_SELF`]).
    pub domid: u16,
    /// Padding.
    pub pad: u16,
    /// `HVM_PARAM_*`.
    pub index: u32,
    /// The value.
    pub value: u64,
}

/// Xen PV: the guest-visible layout of a 64-bit PV domain.
pub mod pv {
    /// `start_info.magic` starts with this (xen.h: "xen-<version>-<platform>").
    pub const START_INFO_MAGIC: &[u8; 4] = b"xen-";
    /// Offsets into `struct start_info` on x86-64 (xen.h).
    pub mod start_info {
        /// `nr_pages`: pages given to the domain.
        pub const NR_PAGES: usize = 32;
        /// `shared_info`: MACHINE address of the shared-info page.
        pub const SHARED_INFO: usize = 40;
        /// `pt_base`: VIRTUAL address of the bootstrap top-level table.
        pub const PT_BASE: usize = 88;
        /// `nr_pt_frames`: bootstrap page-table frames (they follow `pt_base`).
        pub const NR_PT_FRAMES: usize = 96;
        /// `mfn_list`: VIRTUAL address of the pfn-to-mfn list.
        pub const MFN_LIST: usize = 104;
        /// `cmd_line`: NUL-terminated, 1024 bytes.
        pub const CMD_LINE: usize = 128;
    }
    /// The read-only machine-to-phys table (xen-x86_64.h `MACH2PHYS_VIRT_START`).
    pub const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;
    /// 64-bit kernel code selector in Xen's GDT (xen-x86_64.h `FLAT_KERNEL_CS64`).
    pub const FLAT_KERNEL_CS64: u16 = 0xe033;
    /// 64-bit kernel stack selector (xen-x86_64.h `FLAT_KERNEL_SS64`).
    pub const FLAT_KERNEL_SS64: u16 = 0xe02b;
}

/// `struct trap_info` (arch-x86/xen.h): one exception's handler. A table ends
/// with an all-zero entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapInfo {
    /// Exception vector.
    pub vector: u8,
    /// Bits 0-1: DPL (who may `int n` it); bit 2: mask events on entry.
    pub flags: u8,
    /// Code selector.
    pub cs: u16,
    /// Handler (virtual address).
    pub address: u64,
}

/// `struct mmu_update` (xen.h): `ptr` is the MACHINE address of the entry, its
/// low two bits the command; `val` the new entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmuUpdate {
    /// Entry's machine address | `MMU_*`.
    pub ptr: u64,
    /// New contents.
    pub val: u64,
}

/// `mmu_update` command: a checked write to a page-table entry (xen.h).
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;

/// `struct mmuext_op` (xen.h), 24 bytes on x86-64.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmuextOp {
    /// `MMUEXT_*`.
    pub cmd: u32,
    /// Padding.
    pub pad: u32,
    /// mfn or linear address.
    pub arg1: u64,
    /// Entry count, vCPU-mask pointer or source mfn.
    pub arg2: u64,
}

/// `mmuext_op` commands (xen.h).
pub mod mmuext {
    /// Pin a top-level table (validates the whole tree).
    pub const PIN_L4_TABLE: u32 = 3;
    /// Drop a pin.
    pub const UNPIN_TABLE: u32 = 4;
    /// Load a new top-level table (the PV `mov cr3`).
    pub const NEW_BASEPTR: u32 = 5;
    /// Flush this vCPU's TLB.
    pub const TLB_FLUSH_LOCAL: u32 = 6;
    /// Flush one address on this vCPU.
    pub const INVLPG_LOCAL: u32 = 7;
    /// Flush the TLBs of the vCPUs in a mask (`arg2`: pointer to the mask).
    pub const TLB_FLUSH_MULTI: u32 = 8;
    /// Flush one address on the vCPUs in a mask.
    pub const INVLPG_MULTI: u32 = 9;
    /// Write back and invalidate caches (the PV `wbinvd`).
    pub const FLUSH_CACHE: u32 = 12;
}

/// `update_va_mapping` flags (xen.h): invalidate just that address, locally.
pub const UVMF_INVLPG: u64 = 2;

/// `struct multicall_entry` (xen.h): one hypercall of a batch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MulticallEntry {
    /// Hypercall number.
    pub op: u64,
    /// Its result (written by Xen).
    pub result: i64,
    /// Its arguments.
    pub args: [u64; 6],
}

/// `event_channel_op` commands and arguments (event_channel.h).
pub mod evtchn {
    /// Bind a virtual IRQ: `struct evtchn_bind_virq { virq, vcpu, port(out) }`.
    pub const BIND_VIRQ: u64 = 1;
    /// Notify a port: `struct evtchn_send { port }`.
    pub const SEND: u64 = 4;
    /// Bind an IPI port: `struct evtchn_bind_ipi { vcpu, port(out) }`.
    pub const BIND_IPI: u64 = 7;
    /// Unmask a port (and redeliver if pending): `struct evtchn_unmask { port }`.
    pub const UNMASK: u64 = 9;
    /// The per-vCPU one-shot timer (xen.h `VIRQ_TIMER`).
    pub const VIRQ_TIMER: u32 = 0;
}

/// `vcpu_op` command stopping the vCPU's default 100 Hz periodic timer
/// (vcpu.h `VCPUOP_stop_periodic_timer`): only the one-shot timer remains.
pub const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;

/// `vcpu_op` commands bringing a secondary vCPU up (vcpu.h): `INITIALISE` takes
/// a [`VcpuGuestContext`], `UP` starts it.
pub mod vcpuop {
    /// Set the vCPU's initial state.
    pub const INITIALISE: u64 = 0;
    /// Make it runnable.
    pub const UP: u64 = 1;
}

/// `vcpu_op` command registering a vCPU's runstate area (vcpu.h), argument: the
/// area's guest virtual address.
pub const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u64 = 5;
/// `vm_assist` command and type: Xen sets bit 63 of `state_entry_time` while it
/// updates a runstate area (xen.h `VMASST_CMD_enable`, `VMASST_TYPE_runstate_update_flag`).
pub const VMASST_CMD_ENABLE: u64 = 0;
/// See [`VMASST_CMD_ENABLE`].
pub const VMASST_TYPE_RUNSTATE_UPDATE_FLAG: u64 = 5;
/// `XEN_RUNSTATE_UPDATE`: the area is being written.
pub const XEN_RUNSTATE_UPDATE: u64 = 1 << 63;

/// `struct vcpu_runstate_info` (vcpu.h), 48 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuRunstateInfo {
    /// `RUNSTATE_*`.
    pub state: i32,
    /// Padding.
    pub pad: u32,
    /// System time of the last state change (bit 63: update in progress).
    pub state_entry_time: u64,
    /// Time spent in each state, ns.
    pub time: [u64; 4],
}

/// `RUNSTATE_*` (vcpu.h): indices into [`VcpuRunstateInfo::time`].
pub mod runstate {
    /// Runnable but not running: time stolen by other vCPUs.
    pub const RUNNABLE: usize = 1;
    /// Not runnable, not blocked: time the hypervisor took it away.
    pub const OFFLINE: usize = 3;
}

/// `vcpu_guest_context.flags`: the vCPU starts in kernel mode (arch-x86/xen.h).
pub const VGCF_IN_KERNEL: u64 = 1 << 2;

/// `struct cpu_user_regs` (arch-x86/xen-x86_64.h), 200 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct CpuUserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub error_code: u32,
    pub entry_vector: u32,
    pub rip: u64,
    /// CS, then padding and `saved_upcall_mask` (zero here).
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    /// Each selector sits in the low 16 bits of its own word.
    pub ss: u64,
    pub es: u64,
    pub ds: u64,
    pub fs: u64,
    pub gs: u64,
}

/// `struct vcpu_guest_context` (arch-x86/xen.h, x86-64): a PV vCPU's initial
/// state for `VCPUOP_initialise`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VcpuGuestContext {
    /// FXSAVE image (ignored without `VGCF_I387_VALID`).
    pub fpu_ctxt: [u8; 512],
    /// `VGCF_*`.
    pub flags: u64,
    /// Registers.
    pub user_regs: CpuUserRegs,
    /// The virtual IDT, indexed by vector.
    pub trap_ctxt: [TrapInfo; 256],
    /// LDT base and entries.
    pub ldt_base: u64,
    #[allow(missing_docs)]
    pub ldt_ents: u64,
    /// GDT frames and entries (0: Xen's GDT only).
    pub gdt_frames: [u64; 16],
    #[allow(missing_docs)]
    pub gdt_ents: u64,
    /// Kernel stack for ring changes.
    pub kernel_ss: u64,
    #[allow(missing_docs)]
    pub kernel_sp: u64,
    /// Control registers; `ctrlreg[3]` = root mfn << 12.
    pub ctrlreg: [u64; 8],
    /// Debug registers.
    pub debugreg: [u64; 8],
    /// The event upcall.
    pub event_callback_eip: u64,
    /// The failsafe callback.
    pub failsafe_callback_eip: u64,
    /// The `syscall` entry (none).
    pub syscall_callback_eip: u64,
    /// `VMASST_TYPE_*` bits.
    pub vm_assist: u64,
    /// Segment bases.
    pub fs_base: u64,
    #[allow(missing_docs)]
    pub gs_base_kernel: u64,
    #[allow(missing_docs)]
    pub gs_base_user: u64,
}

/// `physdev_op` command setting the virtual I/O privilege level (physdev.h),
/// argument `struct physdev_set_iopl { iopl }`.
pub const PHYSDEVOP_SET_IOPL: u64 = 6;

/// `console_io` command: write to the console (xen.h).
pub const CONSOLEIO_WRITE: u64 = 0;

/// `sched_op` commands (sched.h).
pub mod sched {
    /// Give up the CPU.
    pub const YIELD: u64 = 0;
    /// Block until an event arrives.
    pub const BLOCK: u64 = 1;
    /// Shut the domain down; argument: `struct sched_shutdown { reason }`.
    pub const SHUTDOWN: u64 = 2;
    /// Block until one of some ports is pending (even masked); argument:
    /// [`super::SchedPoll`].
    pub const POLL: u64 = 3;
}

/// `struct sched_poll` (sched.h), 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SchedPoll {
    /// Guest address of an array of `evtchn_port_t` (u32).
    pub ports: u64,
    /// Entries in it.
    pub nr_ports: u32,
    /// Padding.
    pub pad: u32,
    /// Absolute system time to give up at (0: never).
    pub timeout: u64,
}

/// `sched_shutdown.reason` values (sched.h).
pub mod shutdown {
    /// Power off.
    pub const POWEROFF: u32 = 0;
    /// Reboot.
    pub const REBOOT: u32 = 1;
    /// Crash.
    pub const CRASH: u32 = 3;
}

/// `memory_op` command returning the domain's memory map (memory.h).
pub const XENMEM_MEMORY_MAP: u64 = 9;
/// `memory_op` command mapping a Xen page into the guest's physical space (memory.h).
pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
/// `xen_add_to_physmap.space`: the shared-info page (memory.h).
pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
/// `DOMID_SELF` (xen.h).
pub const DOMID_SELF: u16 = 0x7ff0;

/// `struct xen_add_to_physmap` (memory.h), 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenAddToPhysmap {
    /// Domain ([`DOMID_SELF`]).
    pub domid: u16,
    /// Pages, for ranges (0 here).
    pub size: u16,
    /// `XENMAPSPACE_*`.
    pub space: u32,
    /// Index within the space.
    pub idx: u64,
    /// Guest frame to map it at.
    pub gpfn: u64,
}

/// `struct shared_info` offsets on x86-64 (xen.h, arch-x86/xen.h): 32
/// `vcpu_info`s of 64 bytes, each with its `vcpu_time_info` at +32, then the
/// event-channel bitmaps, then the wall clock.
pub mod shared_info {
    /// `XEN_LEGACY_MAX_VCPUS`: the `vcpu_info`s shared_info holds; a vCPU
    /// beyond needs `VCPUOP_register_vcpu_info`, which this backend does not use.
    pub const VCPUS: usize = 32;
    /// Size of one `vcpu_info`.
    pub const VCPU_INFO_SIZE: usize = 64;
    /// Offset of `time` (a pvclock record) in a `vcpu_info`.
    pub const VCPU_TIME: usize = 32;
    /// `vcpu_info` offsets (xen.h; `arch_vcpu_info` from arch-x86/xen.h).
    pub mod vcpu_info {
        /// `evtchn_upcall_pending` (u8).
        pub const UPCALL_PENDING: usize = 0;
        /// `evtchn_upcall_mask` (u8): events masked, the PV "interrupt flag".
        pub const UPCALL_MASK: usize = 1;
        /// `evtchn_pending_sel` (u64): which words of `evtchn_pending` to scan.
        pub const PENDING_SEL: usize = 8;
        /// `arch.cr2`: the faulting address of the last #PF.
        pub const CR2: usize = 16;
    }
    /// `shared_info.evtchn_pending` (64 words).
    pub const EVTCHN_PENDING: usize = 0x800;
    /// `shared_info.evtchn_mask` (64 words).
    pub const EVTCHN_MASK: usize = 0xa00;
    /// `wc_version`: the wall clock's seqlock.
    pub const WC_VERSION: usize = 0xc00;
    /// `wc_sec`: seconds at system time 0.
    pub const WC_SEC: usize = 0xc04;
    /// `wc_nsec`.
    pub const WC_NSEC: usize = 0xc08;
    /// `wc_sec_hi`: the high 32 bits of the seconds (x86-64).
    pub const WC_SEC_HI: usize = 0xc0c;
}

/// `struct xen_memory_map` (memory.h): in: capacity of `buffer` in entries;
/// out: entries written. Entries are E820 records.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct XenMemoryMap {
    /// Entries in `buffer`.
    pub nr_entries: u32,
    /// Padding (the handle is 8-byte aligned).
    pub pad: u32,
    /// Guest-virtual address of an array of [`E820Entry`].
    pub buffer: u64,
}

/// An E820 entry, packed as the BIOS defines it (20 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// Type (1 = RAM).
    pub kind: u32,
}

/// Size of one hypercall stub in the hypercall page.
pub const HYPERCALL_STUB_SIZE: u64 = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_headers() {
        assert_eq!(core::mem::size_of::<E820Entry>(), 20);
        assert_eq!(core::mem::size_of::<XenMemoryMap>(), 16);
        assert_eq!(core::mem::size_of::<XenAddToPhysmap>(), 24);
        assert_eq!(core::mem::offset_of!(XenAddToPhysmap, gpfn), 16);
        assert_eq!(core::mem::size_of::<TrapInfo>(), 16);
        assert_eq!(core::mem::size_of::<XenHvmParam>(), 16);
        assert_eq!(core::mem::size_of::<CpuUserRegs>(), 200);
        assert_eq!(core::mem::size_of::<VcpuRunstateInfo>(), 48);
        assert_eq!(core::mem::size_of::<SchedPoll>(), 24);
        assert_eq!(core::mem::offset_of!(VcpuGuestContext, user_regs), 520);
        assert_eq!(core::mem::offset_of!(VcpuGuestContext, trap_ctxt), 720);
        assert_eq!(core::mem::offset_of!(VcpuGuestContext, ctrlreg), 4816 + 8 * 21);
        assert_eq!(core::mem::size_of::<VcpuGuestContext>(), 4816 + 8 * 44);
        assert_eq!(core::mem::size_of::<MmuUpdate>(), 16);
        assert_eq!(core::mem::size_of::<MmuextOp>(), 24);
        assert_eq!(core::mem::size_of::<MulticallEntry>(), 64);
    }
}
