//! The PVH boot ABI, written from Xen's `docs/misc/pvh.pandoc` ("x86/HVM direct
//! boot ABI") and `xen/include/public/arch-x86/hvm/start_info.h`.
//!
//! The kernel is entered in 32-bit protected mode, paging off, at the address in
//! the `XEN_ELFNOTE_PHYS32_ENTRY` ELF note, with EBX = physical address of an
//! [`HvmStartInfo`]. All fields are little-endian and naturally aligned.

/// `XEN_HVM_START_MAGIC_VALUE`: the value of [`HvmStartInfo::magic`].
pub const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
/// `XEN_HVM_MEMMAP_TYPE_RAM`: usable RAM.
pub const XEN_HVM_MEMMAP_TYPE_RAM: u32 = 1;
/// `XEN_HVM_MEMMAP_TYPE_RESERVED`: reserved, not usable by the OS.
pub const XEN_HVM_MEMMAP_TYPE_RESERVED: u32 = 2;
/// `XEN_ELFNOTE_PHYS32_ENTRY`: the ELF note type that carries the 32-bit physical
/// PVH entry point (note name `"Xen"`).
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// `struct hvm_start_info` (start_info.h). Version 0 ends at `rsdp_paddr`;
/// version 1 adds the memory map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmStartInfo {
    /// Must be [`XEN_HVM_START_MAGIC_VALUE`].
    pub magic: u32,
    /// Version of this structure (0 or 1).
    pub version: u32,
    /// `SIF_xxx` flags.
    pub flags: u32,
    /// Number of modules passed to the kernel.
    pub nr_modules: u32,
    /// Physical address of the module list (0: none).
    pub modlist_paddr: u64,
    /// Physical address of the NUL-terminated command line (0: none).
    pub cmdline_paddr: u64,
    /// Physical address of the ACPI RSDP (0: no ACPI).
    pub rsdp_paddr: u64,
    /// Physical address of the memory map (version ≥ 1).
    pub memmap_paddr: u64,
    /// Number of entries in the memory map (version ≥ 1).
    pub memmap_entries: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// `struct hvm_memmap_table_entry` (start_info.h): one memory map entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HvmMemmapTableEntry {
    /// Base physical address of the region.
    pub addr: u64,
    /// Size of the region in bytes.
    pub size: u64,
    /// `XEN_HVM_MEMMAP_TYPE_*` (E820 numbering).
    pub type_: u32,
    /// Must be zero.
    pub reserved: u32,
}

const _: () = assert!(core::mem::size_of::<HvmStartInfo>() == 56);
const _: () = assert!(core::mem::size_of::<HvmMemmapTableEntry>() == 24);

macro_rules! as_bytes {
    ($t:ty) => {
        impl $t {
            /// The structure's bytes, as they go into guest memory.
            pub fn as_bytes(&self) -> &[u8] {
                // SAFETY: the type is repr(C), made only of integers, with no padding
                // (its size is checked above), so all its bytes are initialised.
                unsafe {
                    core::slice::from_raw_parts(
                        self as *const Self as *const u8,
                        core::mem::size_of::<Self>(),
                    )
                }
            }
        }
    };
}

as_bytes!(HvmStartInfo);
as_bytes!(HvmMemmapTableEntry);
