//! Memory: physical frames, the kernel heap, page tables.

pub mod frame;
pub mod heap;
pub mod paging;

/// Size of a page / frame.
pub const PAGE_SIZE: u64 = 4096;
/// Highest physical address the boot page tables identity-map.
pub const IDENTITY_LIMIT: u64 = 4 << 30;

extern "C" {
    static __kernel_start: u8;
    static __rw_start: u8;
    static __kernel_end: u8;
}

/// Physical range `[start, end)` of text and read-only data (page-aligned).
pub fn kernel_read_only() -> (u64, u64) {
    (core::ptr::addr_of!(__kernel_start) as u64, core::ptr::addr_of!(__rw_start) as u64)
}

/// Physical range `[start, end)` occupied by the kernel image.
pub fn kernel_image() -> (u64, u64) {
    // Linker-script symbols: only their addresses are used.
    (core::ptr::addr_of!(__kernel_start) as u64, core::ptr::addr_of!(__kernel_end) as u64)
}
