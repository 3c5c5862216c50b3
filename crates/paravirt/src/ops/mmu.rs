//! mmu: fault address, page-table root, page-table entry writes and TLB flushes.

use crate::backends::native::ops as native;
use crate::table::ops;

/// The mmu op table.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct MmuOps {
    /// `mov rax, cr2`: the last page-fault address.
    pub read_cr2: fn() -> u64,
    /// `mov rax, cr3`: the page-table root.
    pub read_cr3: fn() -> u64,
    /// `mov cr3, rdi`: switches address space (and flushes non-global TLB entries).
    pub write_cr3: unsafe fn(u64),
    /// Writes a level-1 entry (maps 4 KiB).
    pub set_pte: unsafe fn(*mut u64, u64),
    /// Writes a level-2 entry.
    pub set_pmd: unsafe fn(*mut u64, u64),
    /// Writes a level-3 entry.
    pub set_pud: unsafe fn(*mut u64, u64),
    /// Writes a level-4 entry.
    pub set_p4d: unsafe fn(*mut u64, u64),
    /// Clears a level-1 entry.
    pub pte_clear: unsafe fn(*mut u64),
    /// Flushes every non-global TLB entry on this CPU.
    pub flush_tlb_all: fn(),
    /// `invlpg`: flushes the TLB entry for one virtual address on this CPU.
    pub flush_tlb_one: fn(u64),
}

impl MmuOps {
    /// The bare instructions and plain stores.
    pub const NATIVE: MmuOps = MmuOps {
        read_cr2: native::read_cr2,
        read_cr3: native::read_cr3,
        write_cr3: native::write_cr3,
        set_pte: native::set_entry,
        set_pmd: native::set_entry,
        set_pud: native::set_entry,
        set_p4d: native::set_entry,
        pte_clear: native::pte_clear,
        flush_tlb_all: native::flush_tlb_all,
        flush_tlb_one: native::flush_tlb_one,
    };
}

/// The address of the last page fault on this CPU.
#[inline(always)]
pub fn read_cr2() -> u64 {
    (ops().mmu.read_cr2)()
}

/// The physical address (and flags) of the current top-level page table.
#[inline(always)]
pub fn read_cr3() -> u64 {
    (ops().mmu.read_cr3)()
}

/// Switches to another page-table root.
///
/// # Safety
/// The new tables must map the running code, stack and every live reference.
#[inline(always)]
pub unsafe fn write_cr3(value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().mmu.write_cr3)(value) }
}

macro_rules! entry_setter {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// `entry` must point into a live page-table page of the right level, and the
        /// new mapping must not alias memory in a way that breaks Rust's rules.
        #[inline(always)]
        pub unsafe fn $name(entry: *mut u64, value: u64) {
            // SAFETY: forwarded to the caller.
            unsafe { (ops().mmu.$name)(entry, value) }
        }
    };
}

entry_setter!(
    /// Writes a level-1 page-table entry.
    set_pte
);
entry_setter!(
    /// Writes a level-2 page-table entry.
    set_pmd
);
entry_setter!(
    /// Writes a level-3 page-table entry.
    set_pud
);
entry_setter!(
    /// Writes a level-4 page-table entry.
    set_p4d
);

/// Clears a level-1 page-table entry.
///
/// # Safety
/// `entry` must point into a live page table; nothing may still use the mapping.
#[inline(always)]
pub unsafe fn pte_clear(entry: *mut u64) {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().mmu.pte_clear)(entry) }
}

/// Flushes every non-global TLB entry on this CPU.
#[inline(always)]
pub fn flush_tlb_all() {
    (ops().mmu.flush_tlb_all)()
}

/// Flushes the TLB entry for `va` on this CPU.
#[inline(always)]
pub fn flush_tlb_one(va: u64) {
    (ops().mmu.flush_tlb_one)(va)
}
