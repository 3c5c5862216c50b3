//! The kernel heap: a linked-list allocator over frames taken at boot.

use linked_list_allocator::LockedHeap;

use super::{frame, PAGE_SIZE};

/// Heap size taken at boot.
pub const HEAP_FRAMES: u64 = 1024; // 4 MiB

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Gives the heap its memory. Once, at boot, after [`frame::init`].
pub fn init() -> Result<(), &'static str> {
    let base = frame::alloc_contiguous(HEAP_FRAMES).ok_or("not enough RAM for the heap")?;
    // SAFETY: the frames are identity-mapped RAM owned by nobody else from now on,
    // and the heap is initialised exactly once.
    unsafe { HEAP.lock().init(base as *mut u8, (HEAP_FRAMES * PAGE_SIZE) as usize) };
    Ok(())
}

/// Bytes in use and free.
pub fn usage() -> (usize, usize) {
    let h = HEAP.lock();
    (h.used(), h.free())
}
