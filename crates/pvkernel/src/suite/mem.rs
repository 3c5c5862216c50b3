//! Memory tests: frames, heap, page tables.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

use super::{Ctx, Test, TestResult};
use crate::ensure;
use crate::mm::{frame, paging, PAGE_SIZE};

pub static TESTS: &[Test] = &[
    Test { name: "mem.frame_roundtrip", run: frame_roundtrip },
    Test { name: "mem.heap", run: heap },
    Test { name: "mmu.map_translate_unmap", run: map_translate_unmap },
];

/// A free slot in the kernel half for test mappings (PML4 index 384).
pub const TEST_VA: u64 = 0xffff_c000_0000_0000;

fn frame_roundtrip(_: &mut Ctx) -> TestResult {
    let (used0, total) = frame::stats();
    ensure!(total > 0, "no usable frames");
    let a = frame::alloc().ok_or(String::from("alloc failed"))?;
    let b = frame::alloc().ok_or(String::from("alloc failed"))?;
    ensure!(a != b, "same frame twice: {:#x}", a);
    for f in [a, b] {
        ensure!(f % PAGE_SIZE == 0, "frame {:#x} not aligned", f);
        ensure!(frame::is_usable(f), "frame {:#x} outside usable RAM", f);
        let (ks, ke) = crate::mm::kernel_image();
        ensure!(f + PAGE_SIZE <= ks || f >= ke, "frame {:#x} inside the kernel", f);
    }
    // SAFETY: `b` came from alloc and is not used.
    unsafe { frame::free(b) };
    let c = frame::alloc().ok_or(String::from("alloc failed"))?;
    ensure!(c == b, "freed frame {:#x} not reused (got {:#x})", b, c);
    // SAFETY: both came from alloc and are unused.
    unsafe {
        frame::free(a);
        frame::free(c);
    }
    ensure!(frame::stats().0 == used0, "frame count leaked");
    Ok(())
}

fn heap(_: &mut Ctx) -> TestResult {
    let (used0, _) = crate::mm::heap::usage();
    {
        let b = Box::new(0x5a5a_u64);
        ensure!(*b == 0x5a5a, "box");
        let mut v: Vec<u32> = Vec::new();
        for i in 0..2000 {
            v.push(i * 3);
        }
        ensure!(v.iter().map(|&x| u64::from(x)).sum::<u64>() == 3 * 1999 * 2000 / 2, "vec sum");
        let s = alloc::format!("{}-{}", "heap", v.len());
        ensure!(s == "heap-2000", "format: {}", s);
        let mut m = BTreeMap::new();
        for i in 0..64u32 {
            m.insert(i.wrapping_mul(2654435761), i);
        }
        ensure!(m.len() == 64 && m.values().sum::<u32>() == 63 * 64 / 2, "btreemap");
    }
    let (used1, _) = crate::mm::heap::usage();
    ensure!(used1 == used0, "heap leaked {} bytes", used1 as i64 - used0 as i64);
    Ok(())
}

fn map_translate_unmap(_: &mut Ctx) -> TestResult {
    let pa = frame::alloc_zeroed().ok_or(String::from("alloc failed"))?;
    let va = TEST_VA + 0x1000;
    ensure!(paging::translate(va).is_none(), "test VA already mapped");
    // SAFETY: TEST_VA is reserved for tests; nothing else aliases the fresh frame.
    unsafe { paging::map(va, pa, paging::WRITABLE) }.map_err(|e| alloc::format!("map: {:?}", e))?;
    ensure!(paging::translate(va) == Some(pa), "translate gives {:?}", paging::translate(va));
    ensure!(paging::translate(va + 0x123) == Some(pa + 0x123), "offset lost");
    // SAFETY: `va` maps `pa`, a frame we own.
    unsafe { core::ptr::write_volatile((va + 8) as *mut u64, 0xfeed_f00d) };
    // SAFETY: identity map of the same frame.
    let seen = unsafe { core::ptr::read_volatile((pa + 8) as *const u64) };
    ensure!(seen == 0xfeed_f00d, "write through the mapping not visible: {:#x}", seen);
    // SAFETY: nothing uses the mapping any more.
    let old = unsafe { paging::unmap(va) }.map_err(|e| alloc::format!("unmap: {:?}", e))?;
    ensure!(old == pa, "unmap returned {:#x}", old);
    ensure!(paging::translate(va).is_none(), "still mapped after unmap");
    // SAFETY: the frame is unmapped and unused.
    unsafe { frame::free(pa) };
    Ok(())
}
