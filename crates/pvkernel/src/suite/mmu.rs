//! mmu ops: entry writes with flushes, lazy batching, address-space switches.

use alloc::string::String;
use alloc::vec::Vec;

use paravirt::mmu;

use super::{mem::TEST_VA, Ctx, Test, TestResult};
use crate::arch::probe;
use crate::mm::{frame, paging, PAGE_SIZE};
use crate::{diag, ensure};

pub static TESTS: &[Test] = &[
    Test { name: "mmu.set_pte_then_flush_one", run: set_pte_flush_one },
    Test { name: "mmu.set_pte_then_flush_all_and_multi", run: set_pte_flush_all },
    Test { name: "mmu.lazy_batch_equals_unbatched", run: lazy_batch_equivalence },
    Test { name: "mmu.lazy_batch_4096_fewer_hypercalls", run: lazy_batch_hypercalls },
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
    unsafe { mmu::set_pte(slot, paging::kernel_pte(b, paging::WRITABLE), va) };
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
    let me = paravirt::CpuSet::of(crate::percpu::current_index());
    retarget(TEST_VA + 0x12_000, |va| mmu::flush_tlb_multi(&me, va, va + PAGE_SIZE))
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
        let (pv, bv) = unsafe { (mmu::read_entry(pe), mmu::read_entry(be)) };
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

/// PTE writes in the 4096-page conformance run, per side.
const CONFORMANCE_PAGES: u64 = 4096;
/// The batched side must need at least this many times fewer hypercalls.
const MIN_BATCH_GAIN: u64 = 32;

/// Who counts the hypercalls of the 4096-page run.
#[derive(Clone, Copy)]
enum Counter {
    /// The Xen PV backend counts its own.
    XenBackend,
    /// pvrun counts the traps it serves (the bench marker's served exits).
    Pvrun,
}

impl Counter {
    /// The hypercalls `f` makes, by this counter.
    fn count(self, f: impl FnOnce() -> TestResult) -> Result<u64, super::Failure> {
        match self {
            Counter::XenBackend => {
                let before = paravirt::backends::xen::pv::usage().hypercalls;
                f()?;
                Ok(paravirt::backends::xen::pv::usage().hypercalls - before)
            }
            Counter::Pvrun => {
                crate::arch::bench_port::start();
                let r = f();
                let served = crate::arch::bench_port::stop_counts().served;
                r.map(|()| served)
            }
        }
    }
}

/// 4096 PTE writes unbatched, then the same 4096 in lazy mode: identical page
/// tables everywhere, and where entry writes are hypercalls (Xen PV, counted by
/// the backend; lguest, counted by pvrun) at least [`MIN_BATCH_GAIN`]× fewer
/// hypercalls batched. Both sides build their own page tables (8 level-1
/// tables each), so the counts include that too.
fn lazy_batch_hypercalls(ctx: &mut Ctx) -> TestResult {
    let counter = match ctx.selection.abi.name {
        "xen-pv" => Some(Counter::XenBackend),
        _ if crate::arch::bench_port::present() => Some(Counter::Pvrun),
        _ => None,
    };
    let count = |f: &dyn Fn() -> TestResult| match counter {
        Some(c) => c.count(f).map(Some),
        None => f().map(|()| None),
    };
    let frames: Vec<u64> = (0..16).map(|i| frame_with(0xba7c_0000 + i)).collect::<Result<_, _>>()?;
    let frame_of = |i: u64| frames[(i % 16) as usize];
    let plain = TEST_VA + 0x4000_0000;
    let batched = TEST_VA + 0x4200_0000;
    let map_side = |base: u64| -> TestResult {
        for i in 0..CONFORMANCE_PAGES {
            // SAFETY: test VA range; aliases of frames nobody holds references to.
            unsafe { paging::map(base + i * PAGE_SIZE, frame_of(i), paging::WRITABLE) }
                .map_err(|e| alloc::format!("map: {:?}", e))?;
        }
        Ok(())
    };
    let unbatched_calls = count(&|| map_side(plain))?;
    let batched_calls = count(&|| {
        mmu::lazy_enter();
        let r = map_side(batched);
        mmu::lazy_leave();
        r
    })?;
    let mut differ = 0;
    for i in 0..CONFORMANCE_PAGES {
        let pe = paging::entry(plain + i * PAGE_SIZE).ok_or(String::from("no PTE"))?;
        let be = paging::entry(batched + i * PAGE_SIZE).ok_or(String::from("no PTE"))?;
        // SAFETY: both are live PTEs of our test ranges.
        if unsafe { mmu::read_entry(pe) != mmu::read_entry(be) } {
            differ += 1;
        }
    }
    let last = CONFORMANCE_PAGES - 1;
    let seen = read(batched + last * PAGE_SIZE)?;
    mmu::lazy_enter();
    for i in 0..CONFORMANCE_PAGES {
        // SAFETY: our test mappings, unused afterwards.
        unsafe {
            let _ = paging::unmap(plain + i * PAGE_SIZE);
            let _ = paging::unmap(batched + i * PAGE_SIZE);
        }
    }
    mmu::lazy_leave();
    for &f in &frames {
        // SAFETY: unmapped above.
        unsafe { frame::free(f) };
    }
    ensure!(differ == 0, "{} of {} batched PTEs differ from the unbatched ones", differ, CONFORMANCE_PAGES);
    ensure!(seen == 0xba7c_0000 + last % 16, "the last batched page reads {:#x}", seen);
    match (unbatched_calls, batched_calls) {
        // Every entry write a hypercall: batching must save.
        (Some(u), Some(b)) if u >= CONFORMANCE_PAGES => {
            diag!(
                "lazy mmu: {} PTE writes: {} hypercalls unbatched, {} batched ({:.0}x fewer)",
                CONFORMANCE_PAGES,
                u,
                b,
                u as f64 / b.max(1) as f64
            );
            ensure!(u >= MIN_BATCH_GAIN * b, "batching saved too little: {} vs {} hypercalls", u, b);
        }
        (Some(u), _) => diag!(
            "lazy mmu: {} PTE writes: {} exits unbatched: entry writes do not trap here, tables compared only",
            CONFORMANCE_PAGES,
            u
        ),
        _ => diag!("lazy mmu: {} PTE writes: no counter here, tables compared only", CONFORMANCE_PAGES),
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
    // Tear the new space down: the root first (Xen PV unpins it, which lets go
    // of the tables under it), then its private tables.
    mmu::release_pt(mmu::level::P4D, new_root >> 12);
    // SAFETY: the new space is no longer loaded anywhere.
    unsafe { free_private_tables(new_root, only_new, marker) };
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
        let entry = unsafe { mmu::read_entry((table as *const u64).add(idx)) };
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
