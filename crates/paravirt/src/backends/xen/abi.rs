//! Xen's public ABI, the parts the PVH/HVM flavour uses.
//!
//! Sources: Xen `xen/include/public/xen.h` (hypercall numbers, `SCHEDOP_*` via
//! `sched.h`, console_io), `xen/include/public/arch-x86/cpuid.h` (the CPUID
//! leaves), `xen/include/public/sched.h`, `xen/include/public/memory.h`
//! (`XENMEM_memory_map`, `struct xen_memory_map`), `xen/include/public/physdev.h`.

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

/// Hypercall numbers (xen.h).
pub mod hypercall {
    /// `memory_op`.
    pub const MEMORY_OP: u32 = 12;
    /// `console_io`.
    pub const CONSOLE_IO: u32 = 18;
    /// `sched_op`.
    pub const SCHED_OP: u32 = 29;
}

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
    /// Size of one `vcpu_info`.
    pub const VCPU_INFO_SIZE: usize = 64;
    /// Offset of `time` (a pvclock record) in a `vcpu_info`.
    pub const VCPU_TIME: usize = 32;
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
    }
}
