//! mmu ops: entry writes with flushes, lazy batching, address-space switches.

use alloc::string::String;
use alloc::vec::Vec;

use paravirt::mmu;

use super::{mem::TEST_VA, Ctx, Test, TestResult};
use crate::arch::probe;
use crate::ensure;
use crate::mm::{frame, paging, PAGE_SIZE};

pub static TESTS: &[Test] = &[
    Test { name: "mmu.set_pte_then_flush_one", run: set_pte_flush_one },
    Test { name: "mmu.set_pte_then_flush_all_and_multi", run: set_pte_flush_all },
    Test { name: "mmu.lazy_batch_equals_unbatched", run: lazy_batch_equivalence },
    Test { name: "mmu.cr3_switch", run: cr3_switch },
];

fn frame_with(marker: u64) -> Result<u64, String> {
    let f = frame::alloc().ok_or(String::from("out of frames"))?;
    // SAFETY: a fresh identity-mapped frame we own.
    unsafe { core::ptr::write_volatile(f as *mut u64, marker) };
    Ok(f)
}

fn read(va: u64) -> Result<u64, String> {
    probe::read_u64(va).map_err(|f| alloc::format!("read {:#x} faulted: {:?}", va, f))
}

/// Maps `va` to frame A, rewrites the PTE to frame B, flushes with `flush`, and
/// checks that the new frame is what `va` now shows.
fn retarget(va: u64, flush: impl Fn(u64)) -> TestResult {
    let a = frame_with(0xaaaa)?;
    let b = frame_with(0xbbbb)?;
    // SAFETY: TEST_VA is reserved for tests; nothing else uses these frames.
    unsafe { paging::map(va, a, paging::WRITABLE) }.map_err(|e| alloc::format!("map: {:?}", e))?;
    ensure!(read(va)? == 0xaaaa, "first mapping not visible");
    let slot = paging::entry(va).ok_or(String::from("no PTE"))?;
    // SAFETY: `slot` is the live PTE for `va`, which only this test uses.
    unsafe { mmu::set_pte(slot, b | paging::PRESENT | paging::WRITABLE) };
    flush(va);
    let seen = read(va)?;
    // SAFETY: the mapping is ours and unused afterwards.
    let _ = unsafe { paging::unmap(va) };
    // SAFETY: both frames are unmapped now.
    unsafe {
        frame::free(a);
        frame::free(b);
    }
    ensure!(seen == 0xbbbb, "after set_pte + flush {:#x} still shows {:#x}", va, seen);
    Ok(())
}

fn set_pte_flush_one(_: &mut Ctx) -> TestResult {
    retarget(TEST_VA + 0x10_000, mmu::flush_tlb_one)
}

fn set_pte_flush_all(_: &mut Ctx) -> TestResult {
    retarget(TEST_VA + 0x11_000, |_| mmu::flush_tlb_all())?;
    let me = 1u64 << crate::arch::apic::id();
    retarget(TEST_VA + 0x12_000, |va| mmu::flush_tlb_multi(me, va, va + PAGE_SIZE))
}

const BATCH_PAGES: u64 = 32;

fn map_range(base: u64, frames: &[u64]) -> TestResult {
    for (i, &f) in frames.iter().enumerate() {
        // SAFETY: test VA range; aliases of frames nobody holds references to.
        unsafe { paging::map(base + i as u64 * PAGE_SIZE, f, paging::WRITABLE) }
            .map_err(|e| alloc::format!("map: {:?}", e))?;
    }
    Ok(())
}

fn lazy_batch_equivalence(_: &mut Ctx) -> TestResult {
    let frames: Vec<u64> = (0..BATCH_PAGES).map(|i| frame_with(i * 7)).collect::<Result<_, _>>()?;
    let plain = TEST_VA + 0x100_000;
    let batched = TEST_VA + 0x200_000;
    map_range(plain, &frames)?;
    mmu::lazy_enter();
    // Half, an explicit mid-batch flush, then the rest.
    let half = frames.len() / 2;
    let r = map_range(batched, &frames[..half]).and_then(|()| {
        mmu::lazy_flush();
        map_range(batched + half as u64 * PAGE_SIZE, &frames[half..])
    });
    mmu::lazy_leave();
    r?;
    for i in 0..BATCH_PAGES {
        let (p, b) = (plain + i * PAGE_SIZE, batched + i * PAGE_SIZE);
        let pe = paging::entry(p).ok_or(String::from("no PTE"))?;
        let be = paging::entry(b).ok_or(String::from("no PTE"))?;
        // SAFETY: both are live PTEs of our test ranges.
        let (pv, bv) = unsafe { (pe.read_volatile(), be.read_volatile()) };
        ensure!(pv == bv, "page {}: batched PTE {:#x} != unbatched {:#x}", i, bv, pv);
        ensure!(read(b)? == i * 7, "page {} reads wrong through the batched mapping", i);
    }
    for i in 0..BATCH_PAGES {
        // SAFETY: our test mappings, unused afterwards.
        unsafe {
            let _ = paging::unmap(plain + i * PAGE_SIZE);
            let _ = paging::unmap(batched + i * PAGE_SIZE);
        }
    }
    for f in frames {
        // SAFETY: unmapped above.
        unsafe { frame::free(f) };
    }
    Ok(())
}

/// A second address space: the kernel's top-level entries plus one mapping only
/// it has.
fn cr3_switch(_: &mut Ctx) -> TestResult {
    let old = mmu::read_cr3();
    let new_root = frame::alloc().ok_or(String::from("out of frames"))?;
    // SAFETY: copying the live top-level table into a fresh frame we own.
    unsafe {
        core::ptr::copy_nonoverlapping((old & paging::ADDR_MASK) as *const u64, new_root as *mut u64, 512)
    };
    mmu::alloc_pt(mmu::level::P4D, new_root >> 12);
    let only_new = 0xffff_c080_0000_0000; // PML4 slot 385: empty in the kernel's space
    let marker = frame_with(0x5eed)?;
    // SAFETY: slot 385 is unused in the copy (it was empty in the original).
    unsafe { paging::map_in(new_root, only_new, marker, paging::WRITABLE) }
        .map_err(|e| alloc::format!("map_in: {:?}", e))?;
    // SAFETY: the new space maps the kernel exactly as the old one (same entries).
    unsafe { mmu::write_cr3(new_root) };
    let seen = probe::read_u64(only_new);
    let root_seen = mmu::read_cr3() & paging::ADDR_MASK;
    // SAFETY: back to the original tables.
    unsafe { mmu::write_cr3(old) };
    let old_space_faults = probe::read_u64(only_new).is_err();
    // Tear the new space down: its private tables, then the root.
    // SAFETY: the new space is no longer loaded anywhere.
    unsafe { free_private_tables(new_root, only_new, marker) };
    mmu::release_pt(mmu::level::P4D, new_root >> 12);
    // SAFETY: released above and never loaded again.
    unsafe { frame::free(new_root) };
    ensure!(root_seen == new_root, "cr3 reads {:#x} after writing {:#x}", root_seen, new_root);
    ensure!(seen == Ok(0x5eed), "new space shows {:?}", seen);
    ensure!(old_space_faults, "old space maps the new-only address");
    Ok(())
}

/// Frees the level-3..1 tables that `map_in` built under `root` for `va` (a slot
/// nothing else uses), and the mapped frame.
///
/// # Safety
/// `root` must not be loaded on any CPU.
unsafe fn free_private_tables(root: u64, va: u64, mapped: u64) {
    let mut tables = [0u64; 3];
    let mut table = root;
    for (i, level) in (2..=4u32).rev().enumerate() {
        let idx = ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize;
        // SAFETY: `table` is a page-table page of the private chain.
        let entry = unsafe { (table as *const u64).add(idx).read_volatile() };
        table = entry & paging::ADDR_MASK;
        tables[i] = table;
    }
    for (i, &t) in tables.iter().enumerate().rev() {
        mmu::release_pt(3 - i as u32, t >> 12);
        // SAFETY: the chain is private to the unloaded space.
        unsafe { frame::free(t) };
    }
    // SAFETY: only the private mapping referred to it.
    unsafe { frame::free(mapped) };
}
