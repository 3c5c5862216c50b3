//! VMware's guest "backdoor" and hypervisor CPUID leaves, the part paravirt's
//! `vmware` backend uses and pvrun serves (`--personality vmware`). The
//! contract, each fact with its source, is `docs/abi/vmware.md` (version 1).
//!
//! Sources: open-vm-tools `lib/include/backdoor_def.h` (`BDOOR_*`), Linux
//! `arch/x86/include/asm/vmware.h` and `arch/x86/kernel/cpu/vmware.c`
//! (`VMWARE_CMD_*`, `struct vmware_steal_time`, `STEALCLOCK_*`), QEMU
//! `hw/i386/vmport.c` (what QEMU answers).
//!
//! A call is one 32-bit `in eax, dx` at CPL 0 with EAX = [`MAGIC`], DX =
//! [`PORT`], ECX = command (bits 15:0), EBX, ESI, EDI and EDX bits 31:16 as
//! inputs; every one of EAX, EBX, ECX, EDX, ESI, EDI may come back changed.

/// EAX of every call: "VMXh" (`BDOOR_MAGIC`, `VMWARE_HYPERVISOR_MAGIC`).
pub const MAGIC: u32 = 0x564d_5868;
/// The low-bandwidth backdoor port, "VX" (`BDOOR_PORT`).
pub const PORT: u16 = 0x5658;
/// The CPUID signature in EBX, ECX, EDX of the hypervisor base leaf.
pub const SIGNATURE: [u8; 12] = *b"VMwareVMware";
/// The timing leaf's offset from the hypervisor base: EAX = TSC kHz, EBX = APIC bus kHz.
pub const TIMING_LEAF_OFFSET: u32 = 0x10;
/// EAX of an unknown command, of a call without the magic, and of an
/// unclaimed port (all ones).
pub const UNSUPPORTED: u32 = 0xffff_ffff;

/// Command numbers (ECX bits 15:0; `BDOOR_CMD_*`, `VMWARE_CMD_*`).
pub mod cmd {
    /// GETVERSION: EAX = [`super::VERSION`], EBX = [`super::MAGIC`], ECX = the VMX type.
    pub const GETVERSION: u32 = 10;
    /// GETMEMSIZE (QEMU: GETRAMSIZE): EAX = memory size (informational only:
    /// VMware answers MiB, QEMU bytes).
    pub const GETMEMSIZE: u32 = 20;
    /// GETTIME: EAX = epoch seconds (32 bits), EBX = µs, ECX = max lag µs.
    pub const GETTIME: u32 = 23;
    /// GETHZ (EBX = [`super::UNSUPPORTED`] in): EBX:EAX = TSC Hz, ECX = APIC
    /// bus Hz; EBX = [`super::UNSUPPORTED`] out when the host does not know.
    pub const GETHZ: u32 = 45;
    /// GETTIMEFULL: EAX left as the magic on success; ESI:EDX = epoch
    /// seconds, EBX = µs, ECX = max lag µs.
    pub const GETTIMEFULL: u32 = 46;
    /// GET_VCPU_INFO (EBX = 0 in): EAX = [`super::vcpu_info`] bits.
    pub const GET_VCPU_INFO: u32 = 68;
    /// STEALCLOCK: ESI:EDI = the record's physical address (ESI high), or
    /// ESI = 0, EDI = 1 to disable; EAX = a [`super::stealclock`] result.
    pub const STEALCLOCK: u32 = 91;
}

/// The registers of one backdoor call: what the guest puts in, or what it
/// finds after the `in` (only their low 32 bits count).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regs {
    /// EAX: [`MAGIC`] in; the result out.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX: the command in (bits 15:0).
    pub ecx: u32,
    /// EDX: [`PORT`] in bits 15:0.
    pub edx: u32,
    /// ESI.
    pub esi: u32,
    /// EDI.
    pub edi: u32,
}

/// GETVERSION's EAX (`VERSION_MAGIC`).
pub const VERSION: u32 = 6;
/// GETVERSION's ECX for an ESX host (`vm_vmx_type.h`); QEMU answers the same.
pub const VMX_TYPE_ESX: u32 = 2;

/// GET_VCPU_INFO's EAX bits (`BDOOR_CMD_VCPU_*`, Linux `VCPU_*`).
pub mod vcpu_info {
    /// The vCPUs' TSCs are synchronized.
    pub const SYNC_VTSCS: u32 = 1 << 1;
    /// x2APIC usable without interrupt remapping.
    pub const LEGACY_X2APIC: u32 = 1 << 3;
    /// Reserved: set (with every other bit) when the command is not served.
    pub const RESERVED: u32 = 1 << 31;
}

/// STEALCLOCK's EAX (Linux `STEALCLOCK_*`).
pub mod stealclock {
    /// The host keeps no steal clock ([`super::UNSUPPORTED`]).
    pub const NOT_AVAILABLE: u32 = super::UNSUPPORTED;
    /// Registration removed (or refused).
    pub const DISABLED: u32 = 0;
    /// The host writes the record from now on.
    pub const ENABLED: u32 = 1;
    /// ESI, EDI of the disabling call.
    pub const DISABLE_ARGS: (u32, u32) = (0, 1);
}

/// One vCPU's steal-time record (`struct vmware_steal_time`, Linux 5.7+):
/// 64 bytes, 64-byte aligned; the host writes `clock` (stolen time in TSC
/// ticks, never decreasing) with one aligned 8-byte store.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StealTime {
    /// Stolen time, in TSC ticks.
    pub clock: u64,
    /// Zero; never written.
    pub reserved: [u64; 7],
}

/// Size of [`StealTime`].
pub const STEAL_TIME_SIZE: usize = 64;

const _: () = assert!(core::mem::size_of::<StealTime>() == STEAL_TIME_SIZE);
const _: () = assert!(core::mem::align_of::<StealTime>() == 64);
