//! The PVH boot ABI: the structures pvrun hands to the kernel, and the code
//! that writes them into guest memory.
//!
//! Written from the specification, not generated:
//! - Xen `docs/misc/pvh.pandoc` ("x86/HVM direct boot ABI"): the kernel is
//!   entered in 32-bit protected mode with paging off at the address given
//!   by the `XEN_ELFNOTE_PHYS32_ENTRY` ELF note, with EBX holding the
//!   physical address of a `hvm_start_info` structure.
//! - Xen `xen/include/public/arch-x86/hvm/start_info.h`: the layout of
//!   `hvm_start_info` (version 1 adds the memory map fields),
//!   `hvm_memmap_table_entry` and the `XEN_HVM_MEMMAP_TYPE_*` values. All
//!   fields are little-endian, every structure is naturally aligned and the
//!   sizes are fixed (56 and 24 bytes), which the `const` assertions below
//!   check.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;

pub use pvabi::pvh::{
    HvmMemmapTableEntry, HvmStartInfo, XEN_ELFNOTE_PHYS32_ENTRY, XEN_HVM_MEMMAP_TYPE_RAM,
    XEN_HVM_MEMMAP_TYPE_RESERVED, XEN_HVM_START_MAGIC_VALUE,
};

/// The version of `hvm_start_info` pvrun writes (1: has a memory map).
pub const HVM_START_INFO_VERSION: u32 = 1;

/// Why the boot information could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BootInfoError {
    /// The command line does not fit in its slot.
    #[error(
        "kernel command line is {len} bytes long; the limit is {max} bytes",
        max = layout::CMDLINE_MAX_SIZE - 1
    )]
    CmdlineTooLong {
        /// Length of the rejected command line in bytes.
        len: usize,
    },
    /// The command line contains a NUL byte, which would cut it short.
    #[error("kernel command line contains a NUL byte")]
    CmdlineHasNul,
    /// The memory map has more entries than its slot holds.
    #[error("memory map has {0} entries, more than fit in guest memory")]
    MemmapTooLarge(usize),
    /// Guest memory rejected the write (it is too small to hold the structure).
    #[error("cannot write {what} at guest address {addr:#x}: {source}")]
    GuestWrite {
        /// Which structure was being written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The guest memory error.
        source: vm_memory::GuestMemoryError,
    },
}

/// Checks that `cmdline` can be passed to the kernel: at most
/// `CMDLINE_MAX_SIZE - 1` bytes and no NUL byte inside.
pub fn check_cmdline(cmdline: &str) -> Result<(), BootInfoError> {
    if cmdline.len() > layout::CMDLINE_MAX_SIZE - 1 {
        return Err(BootInfoError::CmdlineTooLong { len: cmdline.len() });
    }
    if cmdline.as_bytes().contains(&0) {
        return Err(BootInfoError::CmdlineHasNul);
    }
    Ok(())
}

/// The memory map for a guest with `mem_bytes` of RAM laid out as by
/// [`layout::ram_regions`]: usable low memory below the EBDA, the EBDA/VGA/BIOS
/// area reserved, and RAM from 1 MiB on (split around the 32-bit MMIO gap).
pub fn memmap_entries(mem_bytes: u64) -> Vec<HvmMemmapTableEntry> {
    let entry = |addr, size, type_| HvmMemmapTableEntry { addr, size, type_, reserved: 0 };
    let mut entries = vec![
        entry(0, layout::EBDA_START, XEN_HVM_MEMMAP_TYPE_RAM),
        entry(layout::EBDA_START, layout::HIMEM_START - layout::EBDA_START, XEN_HVM_MEMMAP_TYPE_RESERVED),
    ];
    for (start, len) in layout::ram_regions(mem_bytes) {
        let end = start + len;
        let start = start.max(layout::HIMEM_START);
        if end > start {
            entries.push(entry(start, end - start, XEN_HVM_MEMMAP_TYPE_RAM));
        }
    }
    entries
}

/// Writes the command line, the memory map and the `hvm_start_info` at their
/// [`layout`] addresses and returns the address of `hvm_start_info` (to be
/// passed in EBX).
pub fn write_boot_info(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    cmdline: &str,
) -> Result<GuestAddress, BootInfoError> {
    check_cmdline(cmdline)?;
    let write_err = |what, addr| move |source| BootInfoError::GuestWrite { what, addr, source };

    let mut cmdline_bytes = Vec::with_capacity(cmdline.len() + 1);
    cmdline_bytes.extend_from_slice(cmdline.as_bytes());
    cmdline_bytes.push(0);
    mem.write_slice(&cmdline_bytes, GuestAddress(layout::CMDLINE_START))
        .map_err(write_err("the command line", layout::CMDLINE_START))?;

    let entries = memmap_entries(mem_bytes);
    if entries.len() > layout::MEMMAP_MAX_ENTRIES {
        return Err(BootInfoError::MemmapTooLarge(entries.len()));
    }
    let mut addr = layout::MEMMAP_START;
    for entry in &entries {
        mem.write_slice(entry.as_bytes(), GuestAddress(addr)).map_err(write_err("the memory map", addr))?;
        addr += std::mem::size_of::<HvmMemmapTableEntry>() as u64;
    }

    let start_info = HvmStartInfo {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: HVM_START_INFO_VERSION,
        cmdline_paddr: layout::CMDLINE_START,
        memmap_paddr: layout::MEMMAP_START,
        // Cannot truncate: bounded by MEMMAP_MAX_ENTRIES above.
        memmap_entries: entries.len() as u32,
        ..Default::default()
    };
    mem.write_slice(start_info.as_bytes(), GuestAddress(layout::PVH_INFO_START))
        .map_err(write_err("hvm_start_info", layout::PVH_INFO_START))?;
    Ok(GuestAddress(layout::PVH_INFO_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GIB, MIB};

    fn u32_at(bytes: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
    }
    fn u64_at(bytes: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(bytes[off..off + 8].try_into().unwrap())
    }

    fn guest_mem(bytes: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).unwrap()
    }

    #[test]
    fn start_info_bytes_follow_the_abi() {
        let mem = guest_mem(16 * MIB);
        let addr = write_boot_info(&mem, 16 * MIB, "console=ttyS0 quiet").unwrap();
        assert_eq!(addr, GuestAddress(0x6000));

        let mut si = [0u8; 56];
        mem.read_slice(&mut si, GuestAddress(0x6000)).unwrap();
        assert_eq!(u32_at(&si, 0), 0x336e_c578, "magic");
        assert_eq!(u32_at(&si, 4), 1, "version");
        assert_eq!(u32_at(&si, 8), 0, "flags");
        assert_eq!(u32_at(&si, 12), 0, "nr_modules");
        assert_eq!(u64_at(&si, 16), 0, "modlist_paddr");
        assert_eq!(u64_at(&si, 24), 0x20000, "cmdline_paddr");
        assert_eq!(u64_at(&si, 32), 0, "rsdp_paddr");
        assert_eq!(u64_at(&si, 40), 0x7000, "memmap_paddr");
        assert_eq!(u32_at(&si, 48), 3, "memmap_entries");
        assert_eq!(u32_at(&si, 52), 0, "reserved");

        let mut cmdline = [0xaau8; 21];
        mem.read_slice(&mut cmdline, GuestAddress(0x20000)).unwrap();
        assert_eq!(&cmdline[..20], b"console=ttyS0 quiet\0");

        let mut mm = [0u8; 3 * 24];
        mem.read_slice(&mut mm, GuestAddress(0x7000)).unwrap();
        let expect: [(u64, u64, u32); 3] =
            [(0, 0x9fc00, 1), (0x9fc00, 0x100000 - 0x9fc00, 2), (0x100000, 16 * MIB - 0x100000, 1)];
        for (i, (a, s, t)) in expect.iter().enumerate() {
            let e = &mm[i * 24..];
            assert_eq!(u64_at(e, 0), *a, "entry {i} addr");
            assert_eq!(u64_at(e, 8), *s, "entry {i} size");
            assert_eq!(u32_at(e, 16), *t, "entry {i} type");
            assert_eq!(u32_at(e, 20), 0, "entry {i} reserved");
        }
    }

    #[test]
    fn empty_cmdline_is_a_single_nul() {
        let mem = guest_mem(16 * MIB);
        mem.write_slice(&[0xff; 4], GuestAddress(0x20000)).unwrap();
        write_boot_info(&mem, 16 * MIB, "").unwrap();
        let mut b = [0u8; 2];
        mem.read_slice(&mut b, GuestAddress(0x20000)).unwrap();
        assert_eq!(b, [0, 0xff]);
    }

    #[test]
    fn memmap_skips_the_mmio_gap() {
        let e = memmap_entries(4 * GIB);
        assert_eq!(e.len(), 4);
        assert_eq!((e[2].addr, e[2].size), (MIB, 3 * GIB - MIB));
        assert_eq!((e[3].addr, e[3].size), (4 * GIB, GIB));
        assert!(e.iter().all(|e| e.reserved == 0));
    }

    #[test]
    fn cmdline_limits() {
        assert!(check_cmdline(&"x".repeat(4095)).is_ok());
        let err = check_cmdline(&"x".repeat(4096)).unwrap_err();
        assert_eq!(err.to_string(), "kernel command line is 4096 bytes long; the limit is 4095 bytes");
        assert!(matches!(check_cmdline("a\0b"), Err(BootInfoError::CmdlineHasNul)));
        let mem = guest_mem(16 * MIB);
        assert!(matches!(
            write_boot_info(&mem, 16 * MIB, &"y".repeat(5000)),
            Err(BootInfoError::CmdlineTooLong { len: 5000 })
        ));
    }
}
