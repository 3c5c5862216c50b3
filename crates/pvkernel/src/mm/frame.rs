//! Physical frame allocator over the boot memory map.
//!
//! Usable RAM is every RAM region above 1 MiB and below the identity-mapped limit,
//! minus the kernel image. Frames come from a free list first (frames handed back,
//! linked through their own first word), then from a bump pointer across the ranges.

use crate::lock::SpinLock;

use super::{kernel_image, IDENTITY_LIMIT, PAGE_SIZE};
use crate::boot::{BootInfo, MemKind};

const MAX_RANGES: usize = 64;

struct Allocator {
    ranges: [(u64, u64); MAX_RANGES],
    count: usize,
    /// Index of the range the bump pointer is in, and the pointer itself.
    current: usize,
    next: u64,
    free_head: u64,
    allocated: u64,
    total: u64,
}

static FRAMES: SpinLock<Allocator> = SpinLock::new(Allocator {
    ranges: [(0, 0); MAX_RANGES],
    count: 0,
    current: 0,
    next: 0,
    free_head: 0,
    allocated: 0,
    total: 0,
});

fn align_up(x: u64) -> u64 {
    (x + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// Builds the usable ranges. Once, at boot.
pub fn init(boot: &BootInfo) {
    let (kstart, kend) = kernel_image();
    let mut a = FRAMES.lock();
    let push = |a: &mut Allocator, s: u64, e: u64| {
        let (s, e) = (align_up(s), e & !(PAGE_SIZE - 1));
        if e > s && a.count < MAX_RANGES {
            a.ranges[a.count] = (s, e);
            a.count += 1;
            a.total += (e - s) / PAGE_SIZE;
        }
    };
    for r in boot.regions().iter().filter(|r| r.kind == MemKind::Ram) {
        let s = r.start.max(1 << 20);
        let e = r.end().min(IDENTITY_LIMIT);
        if e <= s {
            continue;
        }
        // Cut the kernel image out.
        if kend <= s || kstart >= e {
            push(&mut a, s, e);
        } else {
            push(&mut a, s, kstart);
            push(&mut a, kend, e);
        }
    }
    a.current = 0;
    a.next = if a.count > 0 { a.ranges[0].0 } else { 0 };
}

/// Allocates one 4 KiB frame (contents undefined). `None` when memory is exhausted.
pub fn alloc() -> Option<u64> {
    let mut a = FRAMES.lock();
    if a.free_head != 0 {
        let f = a.free_head;
        // SAFETY: free frames are identity-mapped RAM owned by the allocator; their
        // first word holds the next free frame.
        a.free_head = unsafe { core::ptr::read_volatile(f as *const u64) };
        a.allocated += 1;
        return Some(f);
    }
    while a.current < a.count {
        let (_, end) = a.ranges[a.current];
        if a.next + PAGE_SIZE <= end {
            let f = a.next;
            a.next += PAGE_SIZE;
            a.allocated += 1;
            return Some(f);
        }
        a.current += 1;
        if a.current < a.count {
            a.next = a.ranges[a.current].0;
        }
    }
    None
}

/// Allocates `n` physically contiguous frames from the bump region.
pub fn alloc_contiguous(n: u64) -> Option<u64> {
    let mut a = FRAMES.lock();
    while a.current < a.count {
        let (_, end) = a.ranges[a.current];
        if a.next + n * PAGE_SIZE <= end {
            let f = a.next;
            a.next += n * PAGE_SIZE;
            a.allocated += n;
            return Some(f);
        }
        a.current += 1;
        if a.current < a.count {
            a.next = a.ranges[a.current].0;
        }
    }
    None
}

/// Allocates a frame filled with zeros.
pub fn alloc_zeroed() -> Option<u64> {
    let f = alloc()?;
    // SAFETY: the frame is identity-mapped RAM just handed to us.
    unsafe { core::ptr::write_bytes(f as *mut u8, 0, PAGE_SIZE as usize) };
    Some(f)
}

/// Returns a frame.
///
/// # Safety
/// `frame` must come from [`alloc`] and no longer be used by anyone.
pub unsafe fn free(frame: u64) {
    let mut a = FRAMES.lock();
    // SAFETY: the caller gives the frame back to us; we store the list link in it.
    unsafe { core::ptr::write_volatile(frame as *mut u64, a.free_head) };
    a.free_head = frame;
    a.allocated -= 1;
}

/// Whether `frame` lies in a usable range.
pub fn is_usable(frame: u64) -> bool {
    let a = FRAMES.lock();
    a.ranges[..a.count].iter().any(|&(s, e)| frame >= s && frame + PAGE_SIZE <= e)
}

/// (frames in use, usable frames in total).
pub fn stats() -> (u64, u64) {
    let a = FRAMES.lock();
    (a.allocated, a.total)
}
