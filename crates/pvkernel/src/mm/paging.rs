//! 4-level page tables: map, unmap and translate 4 KiB pages in the current address
//! space. Entries are written and read only through `paravirt::mmu` so a backend
//! can trap or batch the writes and translate the frames (Xen PV stores machine
//! frames in entries).

use paravirt::mmu;
use paravirt::mmu::level as mmu_level;

use super::{frame, PAGE_SIZE};

/// Present.
pub const PRESENT: u64 = 1 << 0;
/// Writable.
pub const WRITABLE: u64 = 1 << 1;
/// User-accessible.
pub const USER: u64 = 1 << 2;
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

/// Flags every mapping gets besides the caller's: [`USER`] when the kernel runs
/// in ring 3 on tables the hardware walks as written (lguest).
static KERNEL_EXTRA: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Makes every mapping from now on user-accessible. Once, at boot, before the
/// first mapping.
pub fn map_kernel_as_user() {
    KERNEL_EXTRA.store(USER, core::sync::atomic::Ordering::Relaxed);
}

fn extra() -> u64 {
    KERNEL_EXTRA.load(core::sync::atomic::Ordering::Relaxed)
}

/// The level-1 entry that maps frame `pa` with `flags` the way every kernel
/// mapping is made (present, plus [`USER`] where the kernel runs in ring 3).
pub fn kernel_pte(pa: u64, flags: u64) -> u64 {
    (pa & ADDR_MASK) | flags | PRESENT | extra()
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
        // SAFETY: as above.
        let entry = unsafe { mmu::read_entry(slot) };
        if entry & PRESENT == 0 {
            if !create {
                return Err(MapError::NotMapped);
            }
            let new = frame::alloc_zeroed().ok_or(MapError::OutOfFrames)?;
            mmu::alloc_pt(level - 1, new >> 12);
            let value = new | PRESENT | WRITABLE | extra();
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
    // SAFETY: forwarded to the caller.
    unsafe { map_in(root(), va, pa, flags) }
}

/// The level-1 entry for `va` in the current address space, if its tables exist.
pub fn entry(va: u64) -> Option<*mut u64> {
    walk(root(), va, false).ok()
}

/// As [`map`], in the address space rooted at `root`.
///
/// # Safety
/// As [`map`]; `root` must be a live top-level table.
pub unsafe fn map_in(root: u64, va: u64, pa: u64, flags: u64) -> Result<(), MapError> {
    let slot = walk(root, va, true)?;
    // SAFETY: `slot` is a valid level-1 entry.
    if unsafe { mmu::read_entry(slot) } & PRESENT != 0 {
        return Err(MapError::AlreadyMapped);
    }
    // SAFETY: as above; the caller vouches for the mapping.
    unsafe { mmu::set_pte(slot, kernel_pte(pa, flags), va) };
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
    let old = unsafe { mmu::read_entry(slot) };
    if old & PRESENT == 0 {
        return Err(MapError::NotMapped);
    }
    // SAFETY: as above; the caller guarantees the mapping is unused.
    unsafe { mmu::pte_clear(slot, va) };
    mmu::flush_tlb_one(va);
    Ok(old & ADDR_MASK)
}

/// Physical address `va` maps to in the current address space.
pub fn translate(va: u64) -> Option<u64> {
    let mut table = root();
    for level in (1..=4).rev() {
        // SAFETY: `table` is a page-table page; index < 512.
        let entry = unsafe { mmu::read_entry(table_at(table).add(index(va, level))) };
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

/// Makes kernel text and read-only data read-only. Once, at boot, after patching
/// (the patcher still clears CR0.WP for its writes, so this order is a belt, not
/// a requirement). When the boot tables map the first 2 MiB with one large page
/// (PVH entry), that page is split into 4 KiB pages first.
pub fn protect_kernel_text() -> Result<(), MapError> {
    let (ro_start, ro_end) = super::kernel_read_only();
    if ro_end > HUGE_PAGE {
        return Err(MapError::HugePage); // the kernel outgrew the first 2 MiB page
    }
    let root = root();
    // SAFETY: the boot tables map the first GiB through pml4[0] -> pdpt[0] -> pd.
    let pd = unsafe {
        let pdpt = mmu::read_entry(table_at(root)) & ADDR_MASK;
        mmu::read_entry(table_at(pdpt)) & ADDR_MASK
    };
    let pd0 = table_at(pd);
    // SAFETY: pd0 is the level-2 entry mapping [0, 2 MiB).
    if unsafe { mmu::read_entry(pd0) } & HUGE == 0 {
        return write_protect(ro_start, ro_end);
    }
    let pt = frame::alloc().ok_or(MapError::OutOfFrames)?;
    for i in 0..512u64 {
        let pa = i * PAGE_SIZE;
        let writable = if pa >= ro_start && pa < ro_end { 0 } else { WRITABLE };
        // SAFETY: `pt` is a fresh frame we own; entries are filled before it is linked.
        unsafe { mmu::set_pte(table_at(pt).add(i as usize), kernel_pte(pa, writable), pa) };
    }
    mmu::alloc_pt(mmu_level::PTE, pt >> 12);
    // SAFETY: the new table maps the same frames with the same attributes except
    // write access to text, which nothing writes (the patcher is done).
    unsafe { mmu::set_pmd(pd0, pt | PRESENT | WRITABLE | extra()) };
    mmu::flush_tlb_all();
    Ok(())
}

/// Clears the write bit of every 4 KiB page in `[start, end)`, in one batch.
fn write_protect(start: u64, end: u64) -> Result<(), MapError> {
    let root = root();
    mmu::lazy_enter();
    let mut result = Ok(());
    for va in (start..end).step_by(PAGE_SIZE as usize) {
        match walk(root, va, false) {
            Ok(slot) => {
                // SAFETY: `slot` is the live level-1 entry of kernel text/rodata;
                // dropping write access keeps every mapping the kernel relies on.
                unsafe {
                    let e = mmu::read_entry(slot);
                    mmu::set_pte(slot, e & !WRITABLE, va);
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    mmu::flush_tlb_all();
    mmu::lazy_leave();
    result
}

/// Maps `[start, end)` at its physical address (for RAM the loader did not map),
/// batching the entry writes. Once, at boot, before frames from that range are
/// handed out: the tables come from frames the loader did map.
pub fn map_identity(start: u64, end: u64) -> Result<(), MapError> {
    mmu::lazy_enter();
    let mut result = Ok(());
    for pa in (start..end).step_by(PAGE_SIZE as usize) {
        // SAFETY: RAM nobody uses yet, mapped at its own address like the rest.
        if let Err(e) = unsafe { map(pa, pa, WRITABLE) } {
            result = Err(e);
            break;
        }
    }
    mmu::lazy_leave();
    result
}

/// Size of a level-2 large page.
pub const HUGE_PAGE: u64 = 2 << 20;
