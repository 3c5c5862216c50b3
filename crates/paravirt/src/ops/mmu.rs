//! mmu: fault address, page-table root, page-table entry writes, TLB flushes,
//! page-table page life cycle and lazy (batched) updates.
//!
//! Lazy mode: between [`lazy_enter`] and [`lazy_leave`] a backend may queue entry
//! writes and apply them later (Xen PV batches them into one multicall). Until
//! [`lazy_flush`] or [`lazy_leave`], reads of the affected entries may see old
//! values. Native applies writes at once.

use crate::backends::native::ops as native;
use crate::cpus::CpuSet;
use crate::ops::Op;
use crate::pv_site;

/// Page-table levels, as passed to [`alloc_pt`]/[`release_pt`].
pub mod level {
    /// Page table (4 KiB entries).
    pub const PTE: u32 = 1;
    /// Page directory.
    pub const PMD: u32 = 2;
    /// Page-directory pointer table.
    pub const PUD: u32 = 3;
    /// Top level (PML4).
    pub const P4D: u32 = 4;
}

/// The mmu op table.
#[derive(Clone, Copy)]
#[repr(C)]
#[allow(missing_docs)]
pub struct MmuOps {
    pub read_cr2: extern "C" fn() -> u64,
    pub read_cr3: extern "C" fn() -> u64,
    pub write_cr3: unsafe extern "C" fn(u64),
    pub set_pte: unsafe extern "C" fn(*mut u64, u64, u64),
    pub set_pmd: unsafe extern "C" fn(*mut u64, u64),
    pub set_pud: unsafe extern "C" fn(*mut u64, u64),
    pub set_p4d: unsafe extern "C" fn(*mut u64, u64),
    pub read_entry: unsafe extern "C" fn(*const u64) -> u64,
    pub pte_clear: unsafe extern "C" fn(*mut u64, u64),
    pub flush_tlb_all: extern "C" fn(),
    pub flush_tlb_one: extern "C" fn(u64),
    pub flush_tlb_multi: extern "C" fn(*const CpuSet, u64, u64),
    pub alloc_pt: extern "C" fn(u32, u64),
    pub release_pt: extern "C" fn(u32, u64),
    pub lazy_enter: extern "C" fn(),
    pub lazy_leave: extern "C" fn(),
    pub lazy_flush: extern "C" fn(),
}

impl MmuOps {
    /// The bare instructions and plain stores.
    pub const NATIVE: MmuOps = MmuOps {
        read_cr2: native::read_cr2,
        read_cr3: native::read_cr3,
        write_cr3: native::write_cr3,
        set_pte: native::set_pte,
        set_pmd: native::set_entry,
        set_pud: native::set_entry,
        set_p4d: native::set_entry,
        read_entry: native::read_entry,
        pte_clear: native::pte_clear,
        flush_tlb_all: native::flush_tlb_all,
        flush_tlb_one: native::flush_tlb_one,
        flush_tlb_multi: native::flush_tlb_multi,
        alloc_pt: native::pt_notify,
        release_pt: native::pt_notify,
        lazy_enter: native::nop,
        lazy_leave: native::nop,
        lazy_flush: native::nop,
    };
}

/// The address of the last page fault on this CPU.
#[inline(always)]
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no side effect.
    unsafe { pv_site!(Op::MmuReadCr2; lateout("rax") v,) };
    v
}

/// The physical address (and flags) of the current top-level page table.
#[inline(always)]
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no side effect.
    unsafe { pv_site!(Op::MmuReadCr3; lateout("rax") v,) };
    v
}

/// Switches to another page-table root.
///
/// # Safety
/// The new tables must map the running code, stack and every live reference.
#[inline(always)]
pub unsafe fn write_cr3(value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::MmuWriteCr3; in("rdi") value,) };
}

macro_rules! entry_setter {
    ($(#[$doc:meta])* $name:ident, $op:expr) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// `entry` must point into a live page-table page of that level, and the new
        /// mapping must not alias memory in a way that breaks Rust's rules.
        #[inline(always)]
        pub unsafe fn $name(entry: *mut u64, value: u64) {
            // SAFETY: forwarded to the caller.
            unsafe { pv_site!($op; in("rdi") entry, in("rsi") value,) };
        }
    };
}

/// Writes the level-1 page-table entry that maps `va` (Linux's `set_pte_at`: a
/// shadow-notify ABI such as lguest names the address it changed).
///
/// # Safety
/// `entry` must point into a live level-1 table and be the entry for `va` in the
/// tables it belongs to; the new mapping must not alias memory in a way that
/// breaks Rust's rules.
#[inline(always)]
pub unsafe fn set_pte(entry: *mut u64, value: u64, va: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::MmuSetPte; in("rdi") entry, in("rsi") value, in("rdx") va,) };
}
entry_setter!(
    /// Writes a level-2 page-table entry.
    set_pmd, Op::MmuSetPmd
);
entry_setter!(
    /// Writes a level-3 page-table entry.
    set_pud, Op::MmuSetPud
);
entry_setter!(
    /// Writes a level-4 page-table entry.
    set_p4d, Op::MmuSetP4d
);

/// Reads a page-table entry of any level, with the frame address as the kernel
/// knows it (Xen PV stores machine frames in entries and translates them back).
///
/// # Safety
/// `entry` must point into a live page-table page.
#[inline(always)]
pub unsafe fn read_entry(entry: *const u64) -> u64 {
    let v: u64;
    // SAFETY: forwarded to the caller; a read has no side effect.
    unsafe { pv_site!(Op::MmuReadEntry; in("rdi") entry, lateout("rax") v,) };
    v
}

/// Clears the level-1 page-table entry that maps `va` (Linux's `pte_clear(mm,
/// addr, ptep)`).
///
/// # Safety
/// `entry` must point into a live page table and be the entry for `va`; nothing
/// may still use the mapping.
#[inline(always)]
pub unsafe fn pte_clear(entry: *mut u64, va: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::MmuPteClear; in("rdi") entry, in("rsi") va,) };
}

/// Flushes every non-global TLB entry on this CPU.
#[inline(always)]
pub fn flush_tlb_all() {
    // SAFETY: a flush only drops cached translations.
    unsafe { pv_site!(Op::MmuFlushTlbAll;) };
}

/// Flushes the TLB entry for `va` on this CPU.
#[inline(always)]
pub fn flush_tlb_one(va: u64) {
    // SAFETY: a flush only drops cached translations.
    unsafe { pv_site!(Op::MmuFlushTlbOne; in("rdi") va,) };
}

/// Flushes `[start, end)` on every CPU in `cpus`, waiting until all are done. This CPU flushes itself; the others are reached through the
/// kernel's handler (see [`set_remote_flush`]) unless the backend can do better
/// (KVM flushes preempted vCPUs on their next entry instead).
#[inline(always)]
pub fn flush_tlb_multi(cpus: &CpuSet, start: u64, end: u64) {
    let cpus: *const CpuSet = cpus;
    // SAFETY: a flush only drops cached translations; the set outlives the call.
    unsafe { pv_site!(Op::MmuFlushTlbMulti; in("rdi") cpus, in("rsi") start, in("rdx") end,) };
}

/// Tells the backend that frame `pfn` is now a page-table page of `level` (Xen PV
/// must pin or write-protect it). Call after zeroing it and before linking it in.
#[inline(always)]
pub fn alloc_pt(level: u32, pfn: u64) {
    // SAFETY: a notification; no memory effect on native.
    unsafe { pv_site!(Op::MmuAllocPt; in("rdi") level, in("rsi") pfn,) };
}

/// Tells the backend that frame `pfn` stopped being a page-table page of `level`.
/// Call after unlinking it and flushing.
#[inline(always)]
pub fn release_pt(level: u32, pfn: u64) {
    // SAFETY: a notification; no memory effect on native.
    unsafe { pv_site!(Op::MmuReleasePt; in("rdi") level, in("rsi") pfn,) };
}

/// Starts batching entry writes on this CPU.
#[inline(always)]
pub fn lazy_enter() {
    // SAFETY: a mode change; no memory effect by itself.
    unsafe { pv_site!(Op::MmuLazyEnter;) };
}

/// Applies queued entry writes and stops batching.
#[inline(always)]
pub fn lazy_leave() {
    // SAFETY: applies writes the caller already vouched for.
    unsafe { pv_site!(Op::MmuLazyLeave;) };
}

/// Applies queued entry writes and keeps batching.
#[inline(always)]
pub fn lazy_flush() {
    // SAFETY: applies writes the caller already vouched for.
    unsafe { pv_site!(Op::MmuLazyFlush;) };
}

use core::sync::atomic::{AtomicUsize, Ordering};

/// How the kernel flushes other CPUs' TLBs: `(cpus, start, end)`, returning when
/// they are done. Registered once by the kernel when it can send IPIs.
pub type RemoteFlush = fn(&CpuSet, u64, u64);

static REMOTE_FLUSH: AtomicUsize = AtomicUsize::new(0);

/// Registers the kernel's remote TLB flush (IPIs and a wait for completion).
pub fn set_remote_flush(f: RemoteFlush) {
    REMOTE_FLUSH.store(f as usize, Ordering::Release);
}

/// Flushes `[start, end)` on the CPUs in `cpus` other than this one, through the
/// kernel's handler (nothing happens before one is registered).
pub(crate) fn remote_flush(cpus: &CpuSet, start: u64, end: u64) {
    let f = REMOTE_FLUSH.load(Ordering::Acquire);
    if f != 0 && !cpus.is_empty() {
        // SAFETY: only `set_remote_flush` stores non-zero values, each a RemoteFlush.
        let f: RemoteFlush = unsafe { core::mem::transmute::<usize, RemoteFlush>(f) };
        f(cpus, start, end);
    }
}
