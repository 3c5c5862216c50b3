//! The guest's physical address map and I/O port map.
//!
//! Every guest physical address (GPA) and port number that pvrun uses is a
//! named constant here, so the memory layout can be read in one place:
//!
//! ```text
//! 0x0000_0000 ┌──────────────────────────────┐
//!             │ (unused low RAM)             │
//! 0x0000_0500 │ boot GDT (4 entries)         │  BOOT_GDT_START
//! 0x0000_0520 │ boot IDT (empty)             │  BOOT_IDT_START
//! 0x0000_6000 │ hvm_start_info               │  PVH_INFO_START
//! 0x0000_7000 │ hvm_memmap_table_entry[]     │  MEMMAP_START
//! 0x0002_0000 │ kernel command line (≤4 KiB) │  CMDLINE_START
//! 0x0009_fc00 ├──────────────────────────────┤  EBDA_START (reserved in the memmap)
//! 0x0010_0000 ├──────────────────────────────┤  HIMEM_START: the kernel is linked here
//!             │ RAM                          │
//!   min(mem,  ├──────────────────────────────┤
//!   3 GiB)    │ hole: LAPIC, IOAPIC, KVM TSS │  MMIO_GAP_START .. MMIO_GAP_END
//! 0x1_0000_0000├─────────────────────────────┤  only if mem > 3 GiB:
//!             │ RAM above 4 GiB              │  the rest of the RAM
//!             └──────────────────────────────┘
//! ```
//!
//! Everything pvrun writes for the boot lives below 1 MiB, as in Firecracker.

/// Size of one KiB.
pub const KIB: u64 = 1 << 10;
/// Size of one MiB.
pub const MIB: u64 = 1 << 20;
/// Size of one GiB.
pub const GIB: u64 = 1 << 30;

/// Where the boot GDT is written (null, code, data and TSS descriptors).
pub const BOOT_GDT_START: u64 = 0x500;
/// Where the (empty) boot IDT is said to be; the PVH kernel installs its own.
pub const BOOT_IDT_START: u64 = 0x520;

/// Where the PVH `hvm_start_info` structure is written; its address is
/// passed to the kernel in EBX.
pub const PVH_INFO_START: u64 = 0x6000;
/// Where the PVH memory map (`hvm_memmap_table_entry` array) is written.
pub const MEMMAP_START: u64 = 0x7000;
/// Most memory map entries that fit between [`MEMMAP_START`] and
/// [`CMDLINE_START`] (24 bytes each); pvrun uses at most 4.
pub const MEMMAP_MAX_ENTRIES: usize = ((CMDLINE_START - MEMMAP_START) / 24) as usize;

/// Where the kernel command line is written (NUL-terminated).
pub const CMDLINE_START: u64 = 0x20000;
/// Room for the command line including its terminating NUL: the longest
/// accepted command line is `CMDLINE_MAX_SIZE - 1` = 4095 bytes.
pub const CMDLINE_MAX_SIZE: usize = 4096;

/// Start of the Extended BIOS Data Area: RAM below this is reported as usable
/// low memory; `[EBDA_START, HIMEM_START)` is reported as reserved (VGA hole
/// and BIOS ROM area on a PC).
pub const EBDA_START: u64 = 0x9fc00;

/// Start of "high" memory (1 MiB). The PVH kernel is linked here and every
/// loadable ELF segment must lie at or above it.
pub const HIMEM_START: u64 = 0x10_0000;

/// Start of the 32-bit MMIO gap (3 GiB): RAM beyond this is relocated above
/// 4 GiB so the LAPIC (0xfee0_0000), IOAPIC (0xfec0_0000) and KVM's TSS pages
/// are not shadowed by RAM.
pub const MMIO_GAP_START: u64 = 3 * GIB;
/// End of the 32-bit MMIO gap (4 GiB).
pub const MMIO_GAP_END: u64 = 4 * GIB;

/// Where KVM places the three pages of its real-mode TSS (`KVM_SET_TSS_ADDR`),
/// inside the MMIO gap; the same address Firecracker and QEMU use.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

/// Smallest accepted guest memory size in MiB.
pub const MEM_MIB_MIN: u64 = 16;
/// Largest accepted guest memory size in MiB (16 GiB).
pub const MEM_MIB_MAX: u64 = 16384;
/// Default guest memory size in MiB.
pub const MEM_MIB_DEFAULT: u64 = 128;

/// I/O port of the first 16550 UART (COM1); it occupies 8 ports.
pub const COM1_PORT: u16 = 0x3f8;
/// Number of ports a 16550 UART decodes.
pub const COM1_PORT_COUNT: u16 = 8;
/// The keyboard controller's command port: writing
/// [`KBD_RESET_COMMAND`] pulses the CPU reset line, which ends the run as a
/// reset (exit status 0). Nothing else of the controller is emulated.
pub const KBD_CONTROLLER_PORT: u16 = 0x64;
/// The i8042 "pulse output line 0" command that resets a PC.
pub const KBD_RESET_COMMAND: u8 = 0xfe;
/// QEMU `isa-debug-exit` port: an `out` of value `v` ends the run and pvrun
/// exits with status `(v << 1) | 1`.
pub use pvabi::bench::DEBUG_EXIT_PORT;
/// Bench-marker port and its commands: an ABI shared with the guest kernel,
/// documented in [`pvabi::bench`]. pvrun takes each snapshot at the exit of the
/// `out` itself, before the guest is re-entered, so the markers cost a constant
/// the guest measures with an empty region. Garbage (other values, other access
/// sizes, STOP without START) is ignored and counted in
/// `DeviceStats::bench_garbage`; if the counters cannot be read, STOP leaves
/// nothing pending.
pub use pvabi::bench::{
    MAGIC as BENCH_MAGIC, PORT as BENCH_MARKER_PORT, RESET as BENCH_RESET, START as BENCH_START,
    STOP as BENCH_STOP,
};

/// The regions of guest RAM for a guest of `mem_bytes` bytes, as
/// `(start GPA, length)` pairs sorted by address: one region if the RAM fits
/// below [`MMIO_GAP_START`], else a second one starting at [`MMIO_GAP_END`].
pub fn ram_regions(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, mem_bytes - MMIO_GAP_START)]
    }
}

/// The memory slots of a guest of `mem_bytes` bytes: [`ram_regions`], with
/// the range `rom` (start, length), if any, cut out of the first region as a
/// slot of its own (which the VM makes read-only).
pub fn memory_slots(mem_bytes: u64, rom: Option<(u64, u64)>) -> Vec<(u64, u64)> {
    let mut slots = ram_regions(mem_bytes);
    if let Some((start, len)) = rom {
        let (first_start, first_len) = slots[0];
        assert!(start > first_start && start + len < first_start + first_len, "the ROM lies inside low RAM");
        slots.splice(
            0..1,
            [
                (first_start, start - first_start),
                (start, len),
                (start + len, first_start + first_len - start - len),
            ],
        );
    }
    slots
}

// The fixed boot structures are in ascending order, do not overlap, and
// stay below 1 MiB; KVM's TSS pages sit inside the MMIO gap.
const _: () = {
    assert!(BOOT_GDT_START + 4 * 8 <= BOOT_IDT_START);
    assert!(BOOT_IDT_START + 8 <= PVH_INFO_START);
    assert!(PVH_INFO_START + 56 <= MEMMAP_START);
    assert!(MEMMAP_MAX_ENTRIES >= 4);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(EBDA_START < HIMEM_START);
    assert!(MEM_MIB_MIN * MIB > HIMEM_START);
    assert!(KVM_TSS_ADDRESS >= MMIO_GAP_START && KVM_TSS_ADDRESS + 3 * 4096 <= MMIO_GAP_END);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_magic_spells_pvbm() {
        assert_eq!(&BENCH_MAGIC.to_le_bytes(), b"pvbm");
    }

    #[test]
    fn a_rom_gets_a_slot_of_its_own() {
        assert_eq!(memory_slots(128 * MIB, None), vec![(0, 128 * MIB)]);
        assert_eq!(
            memory_slots(128 * MIB, Some((0xc_0000, 0x4000))),
            vec![(0, 0xc_0000), (0xc_0000, 0x4000), (0xc_4000, 128 * MIB - 0xc_4000)]
        );
        assert_eq!(memory_slots(4 * GIB, Some((0xc_0000, 0x4000)))[3], (4 * GIB, GIB));
    }

    #[test]
    fn ram_regions_split_around_the_gap() {
        assert_eq!(ram_regions(128 * MIB), vec![(0, 128 * MIB)]);
        assert_eq!(ram_regions(3 * GIB), vec![(0, 3 * GIB)]);
        assert_eq!(ram_regions(16 * GIB), vec![(0, 3 * GIB), (4 * GIB, 13 * GIB)]);
    }
}
