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
    }
}
