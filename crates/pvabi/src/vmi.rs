//! VMI/64: VMware's Virtual Machine Interface, API 3.0 re-created for x86-64.
//! pvrun serves it (`--personality vmi`) as an option ROM in the guest's memory;
//! paravirt's `vmi` backend finds the ROM and patches its call sites from the
//! ROM's own answers. The contract is `docs/abi/vmi.md`.
//!
//! Faithful to VMI API 3.0 as Linux 2.6.21–2.6.36 consumed it:
//! - `arch/x86/include/asm/vmi.h`: `struct vrom_header` ([`header`]), the
//!   signatures, the call numbers ([`call`]), relocation types ([`reloc`]) and
//!   page-update flags ([`page`]);
//! - `arch/x86/include/asm/vmi_time.h`: the cycle counters ([`counter`]) and
//!   alarm flags ([`alarm`]);
//! - `arch/x86/kernel/vmi_32.c`: the probe (0xC0000–0xDFFFF in 2 KiB steps,
//!   [`check_rom`]), `vmi_init`, `get_reloc` and the patching flow;
//! - VMware's "Paravirtualization API Version 2.0" (2006): the ROM checksum,
//!   lazy-mode and time semantics.
//!
//! Differences from 3.0, each explained in the ABI page: the major version is
//! [`API_MAJOR`] (0x40), so a 32-bit VMI guest refuses the ROM; calls follow
//! the System V AMD64 convention; `get_reloc` returns `{eip: u64, type}` in
//! RAX and RDX; `SetPxE` takes a 64-bit entry and the virtual address as a
//! fourth argument; `Shutdown` takes an exit status; alarms may name their
//! vector ([`alarm::WIRED_VECTOR`]).

/// Start of the window the guest scans for the ROM.
pub const ROM_WINDOW_START: u64 = 0xc_0000;
/// End (exclusive) of the window.
pub const ROM_WINDOW_END: u64 = 0xe_0000;
/// A ROM starts on a multiple of this (2 KiB).
pub const ROM_ALIGN: u64 = 2048;

/// `rom_signature`: every option ROM starts with the bytes 55 AA.
pub const ROM_SIGNATURE: u16 = 0xaa55;
/// `vrom_signature` at offset 8: the bytes "cVmi".
pub const VROM_SIGNATURE: u32 = u32::from_le_bytes(*b"cVmi");
/// API major version of VMI/64. API 3.0's guests accept only major 3.
pub const API_MAJOR: u8 = 0x40;
/// API minor version: calls and flags added without breaking older guests.
pub const API_MINOR: u8 = 0;
/// `rom_length` counts units of this many bytes.
pub const ROM_LENGTH_UNIT: usize = 512;

/// PCI vendor ID in the ROM's PCI header (VMware).
pub const PCI_VENDOR: u16 = 0x15ad;
/// PCI device ID in the ROM's PCI header (the VMI ROM).
pub const PCI_DEVICE: u16 = 0x0801;
/// Signature of the PCI data structure.
pub const PCI_SIGNATURE: [u8; 4] = *b"PCIR";

/// Offsets in `struct vrom_header` (packed; 144 bytes).
pub mod header {
    /// `rom_signature` (u16, [`super::ROM_SIGNATURE`]).
    pub const ROM_SIGNATURE: usize = 0;
    /// `rom_length` (u8, units of 512 bytes): the checksum covers this length.
    pub const ROM_LENGTH: usize = 2;
    /// `rom_entry[4]`: the 16-bit BIOS initialization entry.
    pub const ROM_ENTRY: usize = 3;
    /// `vrom_signature` (u32, [`super::VROM_SIGNATURE`]).
    pub const VROM_SIGNATURE: usize = 8;
    /// `api_version_min` (u8).
    pub const API_MINOR: usize = 12;
    /// `api_version_maj` (u8).
    pub const API_MAJOR: usize = 13;
    /// `jump_slots` (u8): call numbers `get_reloc` answers, 0 to n − 1.
    pub const JUMP_SLOTS: usize = 14;
    /// `virtual_top` (u32): top of the address space the ROM reserves; 0 = none.
    pub const VIRTUAL_TOP: usize = 16;
    /// `license_offs` (u16): offset of a NUL-terminated license string.
    pub const LICENSE_OFFS: usize = 22;
    /// `pci_header_offs` (u16): offset of the PCI data structure.
    pub const PCI_HEADER_OFFS: usize = 24;
    /// `pnp_header_offs` (u16): offset of a PnP header, 0 = none.
    pub const PNP_HEADER_OFFS: usize = 26;
    /// `reserved[96]`: the ROM's own.
    pub const RESERVED: usize = 32;
    /// `vmi_init[8]`: entry point; returns 0 in RAX when the ROM is ready.
    pub const VMI_INIT: usize = 128;
    /// `get_reloc[8]`: entry point; RDI = call number, returns
    /// [`super::Relocation`] in RAX (address) and RDX (type).
    pub const GET_RELOC: usize = 136;
    /// Size of the header.
    pub const SIZE: usize = 144;
}

/// Offsets in the PCI data structure the header points at (PCI Firmware
/// Specification 3.0, 5.1.2).
pub mod pci {
    /// "PCIR".
    pub const SIGNATURE: usize = 0;
    /// Vendor ID (u16).
    pub const VENDOR: usize = 4;
    /// Device ID (u16).
    pub const DEVICE: usize = 6;
    /// Length of the structure (u16).
    pub const LENGTH: usize = 10;
    /// Size of the structure.
    pub const SIZE: usize = 24;
}

/// Call numbers, as API 3.0 numbered them (`VMI_CALL_*`). Unlisted numbers
/// (49–60, 72) and numbers at or past [`COUNT`] are answered
/// [`super::reloc::NONE`].
pub mod call {
    /// `cpuid`: RDI = leaf, RSI = subleaf; RAX = EAX | EBX << 32,
    /// RDX = ECX | EDX << 32.
    pub const CPUID: u64 = 0;
    /// `wrmsr`: RDI = MSR, RSI = value.
    pub const WRMSR: u64 = 1;
    /// `rdmsr`: RDI = MSR; RAX = value.
    pub const RDMSR: u64 = 2;
    /// `lgdt`: RDI = address of the 10-byte pseudo-descriptor.
    pub const SET_GDT: u64 = 3;
    /// `lldt`: RDI = selector.
    pub const SET_LDT: u64 = 4;
    /// `lidt`: RDI = address of the pseudo-descriptor.
    pub const SET_IDT: u64 = 5;
    /// `ltr`: RDI = selector.
    pub const SET_TR: u64 = 6;
    /// `sgdt` into RDI.
    pub const GET_GDT: u64 = 7;
    /// `sldt`; RAX = selector.
    pub const GET_LDT: u64 = 8;
    /// `sidt` into RDI.
    pub const GET_IDT: u64 = 9;
    /// `str`; RAX = selector.
    pub const GET_TR: u64 = 10;
    /// Write GDT entry: RDI = table, RSI = index, RDX = low, RCX = high.
    pub const WRITE_GDT_ENTRY: u64 = 11;
    /// Write LDT entry: as [`WRITE_GDT_ENTRY`].
    pub const WRITE_LDT_ENTRY: u64 = 12;
    /// Write IDT entry: as [`WRITE_GDT_ENTRY`].
    pub const WRITE_IDT_ENTRY: u64 = 13;
    /// RDI = selector, RSI = kernel stack pointer.
    pub const UPDATE_KERNEL_STACK: u64 = 14;
    /// `mov cr0, rdi`.
    pub const SET_CR0: u64 = 15;
    /// `mov cr2, rdi`.
    pub const SET_CR2: u64 = 16;
    /// `mov cr3, rdi`: flushes deferred page-table updates first.
    pub const SET_CR3: u64 = 17;
    /// `mov cr4, rdi`.
    pub const SET_CR4: u64 = 18;
    /// RAX = CR0.
    pub const GET_CR0: u64 = 19;
    /// RAX = CR2.
    pub const GET_CR2: u64 = 20;
    /// RAX = CR3.
    pub const GET_CR3: u64 = 21;
    /// RAX = CR4.
    pub const GET_CR4: u64 = 22;
    /// `wbinvd`.
    pub const WBINVD: u64 = 23;
    /// RDI = debug register, RSI = value.
    pub const SET_DR: u64 = 24;
    /// RDI = debug register; RAX = value.
    pub const GET_DR: u64 = 25;
    /// RDI = counter; RAX = value.
    pub const RDPMC: u64 = 26;
    /// RAX = the TSC.
    pub const RDTSC: u64 = 27;
    /// `clts`.
    pub const CLTS: u64 = 28;
    /// Interrupts on; delivers what is pending before it returns.
    pub const ENABLE_INTERRUPTS: u64 = 29;
    /// Interrupts off.
    pub const DISABLE_INTERRUPTS: u64 = 30;
    /// RAX = 0x200 when interrupts are on, else 0.
    pub const GET_INTERRUPT_MASK: u64 = 31;
    /// RDI bit 9 = the new interrupt flag; delivers what is pending when on.
    pub const SET_INTERRUPT_MASK: u64 = 32;
    /// Return from an interrupt: the `iretq` frame is at RSP. Jumped to.
    pub const IRET: u64 = 33;
    /// `sysexit`; no VMI/64 ROM serves it.
    pub const SYSEXIT: u64 = 34;
    /// Halt until an interrupt, with interrupts on ("all VMI halts are safe").
    pub const HALT: u64 = 35;
    /// RDI = [`super::REBOOT_SOFT`] or [`super::REBOOT_HARD`].
    pub const REBOOT: u64 = 36;
    /// Power off. VMI/64: RDI = exit status (new).
    pub const SHUTDOWN: u64 = 37;
    /// Write a page-table entry: RDI = entry, RSI = its address, RDX = flags
    /// ([`super::page`]), RCX = the virtual address it maps, with
    /// [`super::page::CURRENT_AS`].
    pub const SET_PXE: u64 = 38;
    /// API 3.0's PAE form; reserved in VMI/64 (SetPxE is 64-bit).
    pub const SET_PXE_LONG: u64 = 39;
    /// Re-read an entry the guest wrote itself: RDI = its address, RSI = flags,
    /// RDX = virtual address.
    pub const UPDATE_PXE: u64 = 40;
    /// API 3.0's PAE form; reserved in VMI/64.
    pub const UPDATE_PXE_LONG: u64 = 41;
    /// Not defined by API 3.0's users.
    pub const MACHINE_TO_PHYSICAL: u64 = 42;
    /// Not defined by API 3.0's users.
    pub const PHYSICAL_TO_MACHINE: u64 = 43;
    /// A frame became a page-table page: RDI = frame number, RSI = flags
    /// (level | [`super::page::ZEROED`]), RDX = clone source, RCX = start,
    /// R8 = count.
    pub const ALLOCATE_PAGE: u64 = 44;
    /// A frame stopped being one: RDI = frame number, RSI = level.
    pub const RELEASE_PAGE: u64 = 45;
    /// `invlpg`: RDI = virtual address; flushes deferred updates first.
    pub const INVAL_PAGE: u64 = 46;
    /// RDI = [`super::flush::TLB`] (| [`super::flush::GLOBAL`]); flushes
    /// deferred updates first.
    pub const FLUSH_TLB: u64 = 47;
    /// A linear-mapping hint: RDI = slot, RSI = va, RDX = pages, RCX = pfn.
    pub const SET_LINEAR_MAPPING: u64 = 48;
    /// RDI = IOPL mask (pre-shifted).
    pub const SET_IOPL_MASK: u64 = 61;
    /// RDI = initial AP state, RSI = APIC ID.
    pub const SET_INITIAL_AP_STATE: u64 = 62;
    /// RDI = APIC register offset, RSI = value.
    pub const APIC_WRITE: u64 = 63;
    /// RDI = APIC register offset; RAX = value.
    pub const APIC_READ: u64 = 64;
    /// The port-0x80 delay.
    pub const IO_DELAY: u64 = 65;
    /// RAX = cycles per second of the cycle counters.
    pub const GET_CYCLE_FREQUENCY: u64 = 66;
    /// RDI = [`super::counter`]; RAX = its value (0 for an unknown counter).
    pub const GET_CYCLE_COUNTER: u64 = 67;
    /// RDI = flags ([`super::alarm`]), RSI = absolute expiry in cycles of the
    /// flags' counter, RDX = period (0 = one-shot).
    pub const SET_ALARM: u64 = 68;
    /// RDI = flags; RAX = 1 if an alarm was armed, else 0.
    pub const CANCEL_ALARM: u64 = 69;
    /// RAX = nanoseconds since the Unix epoch.
    pub const GET_WALLCLOCK_TIME: u64 = 70;
    /// RAX = 1 once after the wall clock moved against the cycle counters.
    pub const WALLCLOCK_UPDATED: u64 = 71;
    /// RDI = [`super::lazy`] mode; leaving a mode flushes what it deferred.
    pub const SET_LAZY_MODE: u64 = 73;
    /// One past the last call number.
    pub const COUNT: u64 = 74;
}

/// Relocation types `get_reloc` answers (`VMI_RELOCATION_*`).
pub mod reloc {
    /// Keep the native code.
    pub const NONE: u8 = 0;
    /// Patch the site into `call rel32` to the address.
    pub const CALL_REL: u8 = 1;
    /// Patch the site into `jmp rel32` to the address.
    pub const JUMP_REL: u8 = 2;
    /// The call does nothing: the site becomes NOPs.
    pub const NOP: u8 = 3;
}

/// What `get_reloc` returns: `struct vmi_relocation_info`, widened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relocation {
    /// Where the call's code is (0 for NONE and NOP).
    pub eip: u64,
    /// One of [`reloc`].
    pub kind: u8,
}

/// Page-update flags (`VMI_PAGE_*`).
pub mod page {
    /// Level 1: a page table.
    pub const PT: u64 = 0x01;
    /// Level 2: a page directory.
    pub const PD: u64 = 0x02;
    /// Level 3: a page-directory-pointer table.
    pub const PDP: u64 = 0x04;
    /// Level 4: the PML4.
    pub const PML4: u64 = 0x08;
    /// Mask of the level bits.
    pub const LEVEL_MASK: u64 = 0x0f;
    /// AllocatePage: the page is zeroed.
    pub const ZEROED: u64 = 0x40;
    /// AllocatePage: copy the kernel range of another top-level table.
    pub const CLONE: u64 = 0x20;
    /// Updates: the entry belongs to the running address space (the virtual
    /// address argument is meaningful).
    pub const CURRENT_AS: u64 = 0x10;
    /// Updates: the hypervisor may learn of this update at the next flush.
    pub const DEFER: u64 = 0x20;
}

/// FlushTLB's argument (`VMI_FLUSH_*`).
pub mod flush {
    /// Flush non-global translations.
    pub const TLB: u64 = 0x1;
    /// Flush global ones too.
    pub const GLOBAL: u64 = 0x2;
}

/// SetLazyMode's modes (`VMI_LAZY_*`).
pub mod lazy {
    /// Not lazy: leaving a lazy mode flushes what it deferred.
    pub const NONE: u64 = 0;
    /// Page-table updates may be deferred.
    pub const MMU: u64 = 1;
    /// CPU state (CR3, kernel stack) may be deferred.
    pub const CPU: u64 = 2;
}

/// The cycle counters (`VMI_CYCLES_*`); all count at the cycle frequency.
pub mod counter {
    /// Real time: counts while the VM exists.
    pub const REAL: u64 = 0;
    /// Time this vCPU ran or halted.
    pub const AVAILABLE: u64 = 1;
    /// Time this vCPU was ready but not running. REAL = AVAILABLE + STOLEN.
    pub const STOLEN: u64 = 2;
}

/// Alarm flags (`VMI_ALARM_*`).
pub mod alarm {
    /// The counter the expiry counts in ([`super::counter`]).
    pub const COUNTER_MASK: u64 = 0xff;
    /// Fires as IRQ 0.
    pub const WIRED_IRQ0: u64 = 0;
    /// Fires through the local APIC's timer entry.
    pub const WIRED_LVTT: u64 = 0x1_0000;
    /// New in VMI/64: fires as a fixed interrupt at the vector in bits 24–31,
    /// on this vCPU's local APIC.
    pub const WIRED_VECTOR: u64 = 0x2_0000;
    /// Where [`WIRED_VECTOR`]'s vector is.
    pub const VECTOR_SHIFT: u32 = 24;
    /// Periodic (with a non-zero period).
    pub const IS_PERIODIC: u64 = 0x100;
}

/// Reboot: like INIT.
pub const REBOOT_SOFT: u64 = 0;
/// Reboot: a reset.
pub const REBOOT_HARD: u64 = 1;

/// GetInterruptMask's answer when interrupts are on (X86_EFLAGS_IF).
pub const INTERRUPTS_ON: u64 = 0x200;

/// What a ROM found in the window is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RomInfo {
    /// Its length in bytes (`rom_length` × 512).
    pub len: usize,
    /// API minor version.
    pub minor: u8,
    /// Number of calls `get_reloc` answers.
    pub jump_slots: u8,
    /// Its PCI IDs are VMware's VMI ROM ones.
    pub pci_ids_match: bool,
}

/// Why bytes that start with 55 AA are not a usable VMI/64 ROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RomError {
    /// No 55 AA: not an option ROM at all.
    NotARom,
    /// An option ROM without "cVmi": some other device's.
    NoVmiSignature,
    /// `rom_length` is shorter than the header, or the ROM runs past the window.
    BadLength(usize),
    /// The bytes of `rom_length` × 512 do not sum to 0 (mod 256).
    BadChecksum(u8),
    /// Another API major version (3 is a 32-bit VMI ROM).
    WrongMajor(u8),
    /// A header offset (license, PCI header) points outside the ROM.
    BadOffset(usize),
}

impl core::fmt::Display for RomError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            RomError::NotARom => write!(f, "no option ROM signature (55 AA)"),
            RomError::NoVmiSignature => write!(f, "an option ROM without the \"cVmi\" signature"),
            RomError::BadLength(n) => write!(f, "ROM length {n} bytes is too short or leaves the window"),
            RomError::BadChecksum(sum) => write!(f, "bad checksum: the bytes sum to {sum:#04x}, not 0"),
            RomError::WrongMajor(m) => write!(f, "API major version {m:#x}, not {API_MAJOR:#x}"),
            RomError::BadOffset(o) => write!(f, "a header offset ({o:#x}) points outside the ROM"),
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Checks the ROM at the start of `window` (the bytes from its address to the
/// end of the probe window), as a VMI/64 guest must before calling into it:
/// both signatures, the length, the checksum, the major version and the header
/// offsets, in that order.
pub fn check_rom(window: &[u8]) -> Result<RomInfo, RomError> {
    if window.len() < 3 || u16_at(window, header::ROM_SIGNATURE) != ROM_SIGNATURE {
        return Err(RomError::NotARom);
    }
    if window.len() < header::SIZE {
        return Err(RomError::BadLength(window.len()));
    }
    let sig = header::VROM_SIGNATURE;
    if u32::from_le_bytes([window[sig], window[sig + 1], window[sig + 2], window[sig + 3]]) != VROM_SIGNATURE
    {
        return Err(RomError::NoVmiSignature);
    }
    let len = usize::from(window[header::ROM_LENGTH]) * ROM_LENGTH_UNIT;
    if len < header::SIZE || len > window.len() {
        return Err(RomError::BadLength(len));
    }
    let rom = &window[..len];
    let sum = checksum(rom);
    if sum != 0 {
        return Err(RomError::BadChecksum(sum));
    }
    if rom[header::API_MAJOR] != API_MAJOR {
        return Err(RomError::WrongMajor(rom[header::API_MAJOR]));
    }
    for field in [header::LICENSE_OFFS, header::PCI_HEADER_OFFS] {
        let at = usize::from(u16_at(rom, field));
        if at < header::SIZE || at >= len {
            return Err(RomError::BadOffset(at));
        }
    }
    let pci = usize::from(u16_at(rom, header::PCI_HEADER_OFFS));
    let pci_ids_match = pci + pci::SIZE <= len
        && rom[pci..pci + 4] == PCI_SIGNATURE
        && u16_at(rom, pci + pci::VENDOR) == PCI_VENDOR
        && u16_at(rom, pci + pci::DEVICE) == PCI_DEVICE;
    Ok(RomInfo { len, minor: rom[header::API_MINOR], jump_slots: rom[header::JUMP_SLOTS], pci_ids_match })
}

/// The 8-bit sum of `bytes` (a ROM's is 0).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rom() -> [u8; 1024] {
        let mut r = [0u8; 1024];
        r[..2].copy_from_slice(&ROM_SIGNATURE.to_le_bytes());
        r[header::ROM_LENGTH] = 2;
        r[8..12].copy_from_slice(b"cVmi");
        r[header::API_MAJOR] = API_MAJOR;
        r[header::JUMP_SLOTS] = call::COUNT as u8;
        r[header::LICENSE_OFFS..][..2].copy_from_slice(&200u16.to_le_bytes());
        r[header::PCI_HEADER_OFFS..][..2].copy_from_slice(&256u16.to_le_bytes());
        r[256..260].copy_from_slice(&PCI_SIGNATURE);
        r[260..262].copy_from_slice(&PCI_VENDOR.to_le_bytes());
        r[262..264].copy_from_slice(&PCI_DEVICE.to_le_bytes());
        fix(&mut r);
        r
    }

    fn fix(r: &mut [u8]) {
        r[100] = 0;
        r[100] = 0u8.wrapping_sub(checksum(&r[..1024]));
    }

    #[test]
    fn a_good_rom_passes() {
        let info = check_rom(&rom()).unwrap();
        assert_eq!(info, RomInfo { len: 1024, minor: 0, jump_slots: 74, pci_ids_match: true });
    }

    #[test]
    fn each_defect_is_named() {
        let mut r = rom();
        r[0] = 0;
        assert_eq!(check_rom(&r), Err(RomError::NotARom));
        let mut r = rom();
        r[9] = b'X';
        assert_eq!(check_rom(&r), Err(RomError::NoVmiSignature));
        let mut r = rom();
        r[500] ^= 1;
        assert_eq!(check_rom(&r), Err(RomError::BadChecksum(1)));
        let mut r = rom();
        r[header::API_MAJOR] = 3;
        fix(&mut r);
        assert_eq!(check_rom(&r), Err(RomError::WrongMajor(3)));
        let mut r = rom();
        r[header::ROM_LENGTH] = 4;
        assert_eq!(check_rom(&r), Err(RomError::BadLength(2048)));
        let mut r = rom();
        r[header::LICENSE_OFFS] = 0;
        r[header::LICENSE_OFFS + 1] = 8;
        fix(&mut r);
        assert_eq!(check_rom(&r), Err(RomError::BadOffset(2048)));
        let mut r = rom();
        r[261] = 0;
        fix(&mut r);
        assert!(!check_rom(&r).unwrap().pci_ids_match, "other PCI IDs are accepted, and noted");
    }
}
