//! 4-level page tables: map, unmap and translate 4 KiB pages in the current address
//! space. Entries are written only through `paravirt::mmu` so a backend can trap or
//! batch them.

use paravirt::mmu;

use super::{frame, PAGE_SIZE};

/// Present.
pub const PRESENT: u64 = 1 << 0;
/// Writable.
pub const WRITABLE: u64 = 1 << 1;
/// Large page (at level 2 or 3).
pub const HUGE: u64 = 1 << 7;
/// Physical address bits of an entry.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Why a mapping operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// No frame left for an intermediate table.
    OutOfFrames,
    /// The address is already mapped.
    AlreadyMapped,
    /// The address is not mapped.
    NotMapped,
    /// A huge page covers the address.
    HugePage,
}

fn index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

fn table_at(paddr: u64) -> *mut u64 {
    paddr as *mut u64
}

/// Root of the current address space.
pub fn root() -> u64 {
    mmu::read_cr3() & ADDR_MASK
}

/// Pointer to the level-1 entry for `va` under `root`, allocating intermediate
/// tables when `create` is set.
fn walk(root: u64, va: u64, create: bool) -> Result<*mut u64, MapError> {
    let mut table = root;
    for level in (2..=4).rev() {
        // SAFETY: `table` is a page-table page (identity-mapped) and the index < 512.
        let slot = unsafe { table_at(table).add(index(va, level)) };
        // SAFETY: as above; entries are read with a plain load.
        let entry = unsafe { slot.read_volatile() };
        if entry & PRESENT == 0 {
            if !create {
                return Err(MapError::NotMapped);
            }
            let new = frame::alloc_zeroed().ok_or(MapError::OutOfFrames)?;
            let value = new | PRESENT | WRITABLE;
            // SAFETY: `slot` is a live entry of the right level; the new table is zeroed.
            unsafe {
                match level {
                    4 => mmu::set_p4d(slot, value),
                    3 => mmu::set_pud(slot, value),
                    _ => mmu::set_pmd(slot, value),
                }
            }
            table = new;
        } else if entry & HUGE != 0 {
            return Err(MapError::HugePage);
        } else {
            table = entry & ADDR_MASK;
        }
    }
    // SAFETY: `table` is a level-1 page-table page.
    Ok(unsafe { table_at(table).add(index(va, 1)) })
}

/// Maps the 4 KiB page at `va` to `pa` with `flags` (PRESENT is implied).
///
/// # Safety
/// The new mapping must not create aliases that break Rust's rules for live references.
pub unsafe fn map(va: u64, pa: u64, flags: u64) -> Result<(), MapError> {
    let slot = walk(root(), va, true)?;
    // SAFETY: `slot` is a valid level-1 entry.
    if unsafe { slot.read_volatile() } & PRESENT != 0 {
        return Err(MapError::AlreadyMapped);
    }
    // SAFETY: as above; the caller vouches for the mapping.
    unsafe { mmu::set_pte(slot, (pa & ADDR_MASK) | flags | PRESENT) };
    mmu::flush_tlb_one(va);
    Ok(())
}

/// Unmaps the page at `va`, returning the frame it mapped.
///
/// # Safety
/// Nothing may use the mapping any more.
pub unsafe fn unmap(va: u64) -> Result<u64, MapError> {
    let slot = walk(root(), va, false)?;
    // SAFETY: `slot` is a valid level-1 entry.
    let old = unsafe { slot.read_volatile() };
    if old & PRESENT == 0 {
        return Err(MapError::NotMapped);
    }
    // SAFETY: as above; the caller guarantees the mapping is unused.
    unsafe { mmu::pte_clear(slot) };
    mmu::flush_tlb_one(va);
    Ok(old & ADDR_MASK)
}

/// Physical address `va` maps to in the current address space.
pub fn translate(va: u64) -> Option<u64> {
    let mut table = root();
    for level in (1..=4).rev() {
        // SAFETY: `table` is a page-table page; index < 512.
        let entry = unsafe { table_at(table).add(index(va, level)).read_volatile() };
        if entry & PRESENT == 0 {
            return None;
        }
        if level == 1 || entry & HUGE != 0 {
            let page = PAGE_SIZE << (9 * (level - 1));
            return Some((entry & ADDR_MASK & !(page - 1)) | (va & (page - 1)));
        }
        table = entry & ADDR_MASK;
    }
    None
}
