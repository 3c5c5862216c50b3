//! What the guest is handed: where the switcher lives in guest-physical memory,
//! the zero page and command line, the identity map it starts on, and the
//! vCPU state at the lguest64 entry (see `docs/abi/lguest.md`, "Boot").

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use pvabi::lguest::{zero_page as zp, GUEST_CS, GUEST_SS, SWITCHER_ADDR, SWITCHER_PML4_SLOT};

use super::switcher::{self, Entries};
use crate::layout::{self as memlayout, GIB};

const PAGE: u64 = 4096;
const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;

/// Bytes reserved at the top of the first RAM region: the switcher, then the
/// boot page tables (a PML4, a PDPT, and a page directory per GiB of RAM).
pub const RESERVED_BYTES: u64 = 128 << 10;

/// Where things are in guest-physical memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// RAM as `(start, len)` regions (the MMIO gap excluded).
    pub ram: Vec<(u64, u64)>,
    /// Base of the reserved area: the switcher at its start.
    pub reserved: u64,
}

impl Layout {
    /// The layout for `mem_bytes` of RAM.
    pub fn new(mem_bytes: u64) -> Self {
        let ram = memlayout::ram_regions(mem_bytes);
        let (start, len) = ram[0];
        Layout { reserved: start + len - RESERVED_BYTES, ram }
    }

    /// One past the highest RAM address.
    pub fn ram_end(&self) -> u64 {
        self.ram.iter().map(|(s, l)| s + l).max().unwrap_or(0)
    }

    /// Whether `[start, start + len)` is guest RAM the guest owns (not the
    /// reserved area).
    pub fn is_guest_ram(&self, start: u64, len: u64) -> bool {
        let Some(end) = start.checked_add(len) else {
            return false;
        };
        let in_ram = self.ram.iter().any(|&(s, l)| start >= s && end <= s + l);
        in_ram && (end <= self.reserved || start >= self.reserved + RESERVED_BYTES)
    }

    /// Whether physical address `pa` lies in the reserved area.
    pub fn is_reserved(&self, pa: u64) -> bool {
        (self.reserved..self.reserved + RESERVED_BYTES).contains(&pa)
    }

    /// The root of the boot page tables.
    pub fn boot_pml4(&self) -> u64 {
        self.reserved + switcher::SIZE
    }

    /// The memory map the kernel gets: RAM, the reserved area, RAM above the gap.
    pub fn e820(&self) -> Vec<(u64, u64, u32)> {
        let mut map = Vec::with_capacity(self.ram.len() + 1);
        for &(start, len) in &self.ram {
            if (start..start + len).contains(&self.reserved) {
                map.push((start, self.reserved - start, zp::E820_RAM));
                map.push((self.reserved, RESERVED_BYTES, zp::E820_RESERVED));
                let after = self.reserved + RESERVED_BYTES;
                if start + len > after {
                    map.push((after, start + len - after, zp::E820_RAM));
                }
            } else {
                map.push((start, len, zp::E820_RAM));
            }
        }
        map
    }
}

// Every boot page table fits at the largest --mem: a PML4, a PDPT and one
// directory per GiB of the 17 GiB that 16 GiB of RAM spans with the gap.
const _: () = assert!(switcher::SIZE + (2 + 17) * PAGE <= RESERVED_BYTES);

/// Guest memory refused a write (it is smaller than the layout needs).
pub type WriteError = vm_memory::GuestMemoryError;

/// Writes everything the guest starts with: the switcher, the boot page tables
/// (all RAM identity-mapped with 2 MiB user pages, slot 511 = the switcher),
/// the zero page and the command line. Returns the switcher's PML4 entry.
pub fn write(mem: &GuestMemoryMmap, layout: &Layout, cmdline: &str) -> Result<u64, WriteError> {
    let switcher_entry = switcher::write(mem, layout.reserved)?;

    let pml4 = layout.boot_pml4();
    let pdpt = pml4 + PAGE;
    let gibs = layout.ram_end().div_ceil(GIB);
    mem.write_obj(pdpt | PRESENT | WRITABLE | USER, GuestAddress(pml4))?;
    mem.write_obj(switcher_entry, GuestAddress(pml4 + 8 * SWITCHER_PML4_SLOT as u64))?;
    for gib in 0..gibs {
        let pd = pdpt + PAGE * (1 + gib);
        mem.write_obj(pd | PRESENT | WRITABLE | USER, GuestAddress(pdpt + 8 * gib))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| ((gib << 30 | i << 21) | PRESENT | WRITABLE | USER | HUGE).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd))?;
    }

    let mut page = vec![0u8; zp::SIZE];
    let mut put = |off: usize, bytes: &[u8]| page[off..off + bytes.len()].copy_from_slice(bytes);
    put(zp::BOOT_FLAG, &zp::BOOT_FLAG_VALUE.to_le_bytes());
    put(zp::HEADER, &zp::HEADER_VALUE.to_le_bytes());
    put(zp::VERSION, &zp::VERSION_VALUE.to_le_bytes());
    put(zp::TYPE_OF_LOADER, &[zp::TYPE_OF_LOADER_VALUE]);
    put(zp::CMD_LINE_PTR, &(zp::CMDLINE_ADDRESS as u32).to_le_bytes());
    put(zp::CMDLINE_SIZE, &(zp::CMDLINE_MAX as u32 - 1).to_le_bytes());
    put(zp::HARDWARE_SUBARCH, &zp::SUBARCH_LGUEST.to_le_bytes());
    let e820 = layout.e820();
    put(zp::E820_ENTRIES, &[e820.len() as u8]);
    for (i, (start, len, kind)) in e820.iter().enumerate() {
        let at = zp::E820_TABLE + i * zp::E820_ENTRY_SIZE;
        put(at, &start.to_le_bytes());
        put(at + 8, &len.to_le_bytes());
        put(at + 16, &kind.to_le_bytes());
    }
    mem.write_slice(&page, GuestAddress(zp::ADDRESS))?;
    let mut line = cmdline.as_bytes().to_vec();
    line.push(0);
    mem.write_slice(&line, GuestAddress(zp::CMDLINE_ADDRESS))?;
    Ok(switcher_entry)
}

/// The frame the switcher's first `iretq` pops: the kernel's entry at ring 3.
/// Written at the top of the switcher's stack.
pub fn write_entry_frame(mem: &GuestMemoryMmap, layout: &Layout, entry: u64) -> Result<u64, WriteError> {
    let frame = [entry, u64::from(GUEST_CS), RFLAGS_IF, 0, u64::from(GUEST_SS)];
    let rsp = SWITCHER_ADDR + switcher::STACK_TOP - 40;
    for (i, word) in frame.iter().enumerate() {
        let pa = layout.reserved + switcher::STACK_TOP - 40 + 8 * i as u64;
        mem.write_obj(*word, GuestAddress(pa))?;
    }
    Ok(rsp)
}

/// RFLAGS.IF.
pub const RFLAGS_IF: u64 = 1 << 9;
/// Bit 1 of RFLAGS, always set.
const RFLAGS_FIXED: u64 = 1 << 1;

/// CR0: PG | AM | WP | NE | ET | MP | PE.
pub const CR0: u64 = 0x8005_0033;
/// CR4: PAE (| OSFXSR | OSXMMEXCPT, so user code may use SSE).
pub const CR4: u64 = 0x620;
/// EFER: LMA | LME.
pub const EFER: u64 = 0x500;

fn segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: (selector & 3) as u8,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The vCPU at the switcher's first `iretq` (CPL0, on the switcher's stack
/// with the entry frame on it), so that the kernel starts in ring 3 the way
/// every later return does. `rsp` is [`write_entry_frame`]'s.
pub fn entry_state(sregs: &mut kvm_sregs, layout: &Layout, rsp: u64) -> kvm_regs {
    sregs.cs = segment(switcher::KERNEL_CS, true);
    sregs.ss = segment(switcher::KERNEL_DS, false);
    // Data selectors with DPL 3 survive the switch to ring 3 (a lower DPL would be
    // nulled, and a null GS load clears the GS base on this CPU).
    for s in [&mut sregs.ds, &mut sregs.es, &mut sregs.fs, &mut sregs.gs] {
        *s = segment(GUEST_SS, false);
    }
    sregs.tr = kvm_segment {
        base: SWITCHER_ADDR + switcher::TSS,
        limit: switcher::TSS_LIMIT as u32,
        selector: switcher::TSS_SEL,
        type_: 0xb, // busy 64-bit TSS
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_segment { unusable: 1, ..Default::default() };
    sregs.gdt.base = SWITCHER_ADDR + switcher::GDT;
    sregs.gdt.limit = (switcher::GDT_LEN - 1) as u16;
    sregs.idt.base = SWITCHER_ADDR + switcher::IDT;
    sregs.idt.limit = 4095;
    sregs.cr0 = CR0;
    sregs.cr3 = layout.boot_pml4();
    sregs.cr4 = CR4;
    sregs.efer = EFER;
    kvm_regs {
        rip: Entries::new().hcall_resume,
        rsp,
        rsi: zp::ADDRESS,
        rflags: RFLAGS_FIXED,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MIB;

    fn mem(bytes: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> =
            memlayout::ram_regions(bytes).into_iter().map(|(s, l)| (GuestAddress(s), l as usize)).collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn the_reserved_area_tops_the_first_region() {
        let l = Layout::new(128 * MIB);
        assert_eq!(l.reserved, 128 * MIB - RESERVED_BYTES);
        assert_eq!(l.e820(), vec![(0, l.reserved, 1), (l.reserved, RESERVED_BYTES, 2)]);
        assert!(l.is_guest_ram(0x10_0000, 4096));
        assert!(!l.is_guest_ram(l.reserved - 8, 16));
        assert!(!l.is_guest_ram(128 * MIB, 8));
        assert!(!l.is_guest_ram(u64::MAX, 2));
        let big = Layout::new(16 * GIB);
        assert_eq!(big.reserved, 3 * GIB - RESERVED_BYTES);
        assert_eq!(big.e820().len(), 3);
        assert_eq!(big.ram_end(), 17 * GIB);
    }

    #[test]
    fn boot_tables_map_ram_and_the_switcher() {
        let m = mem(64 * MIB);
        let l = Layout::new(64 * MIB);
        let slot = write(&m, &l, "a b").unwrap();
        let pml4 = l.boot_pml4();
        let read = |a: u64| m.read_obj::<u64>(GuestAddress(a)).unwrap();
        assert_eq!(read(pml4 + 511 * 8), slot);
        assert_eq!(slot & !0xfff, l.reserved + switcher::SLOT_PDPT);
        let pdpt = read(pml4) & !0xfff;
        let pd = read(pdpt) & !0xfff;
        assert_eq!(read(pd + 8) & !0xfff, 2 * MIB);
        assert_eq!(read(pd + 8) & 0xff, 0x87);
        let mut cmd = [0u8; 4];
        m.read_slice(&mut cmd, GuestAddress(zp::CMDLINE_ADDRESS)).unwrap();
        assert_eq!(&cmd, b"a b\0");
        assert_eq!(m.read_obj::<u32>(GuestAddress(zp::ADDRESS + zp::HARDWARE_SUBARCH as u64)).unwrap(), 1);
        assert_eq!(m.read_obj::<u8>(GuestAddress(zp::ADDRESS + zp::E820_ENTRIES as u64)).unwrap(), 2);
    }
}
