//! The hypercall page and the calls through it, counted.
//!
//! HVM/PVH guests ask Xen to fill the page through the MSR that CPUID base+2
//! names; for PV guests Xen fills it while building the domain, at the address
//! the kernel's `XEN_ELFNOTE_HYPERCALL_PAGE` note gives: this page's symbol.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};

use super::abi;

/// One page, page-aligned.
#[repr(C, align(4096))]
pub struct Page(pub UnsafeCell<[u8; 4096]>);

// SAFETY: each page is written by Xen or through hypercalls only; the kernel
// reads it with volatile loads.
unsafe impl Sync for Page {}

/// The hypercall page (Xen writes one 32-byte stub per hypercall into it). It
/// lives in `.data` so it is in an executable, writable mapping; `#[no_mangle]`
/// so a kernel's PV ELF note can name it.
#[no_mangle]
#[link_section = ".data.xen_hypercall_page"]
pub static XEN_HYPERCALL_PAGE: Page = Page(UnsafeCell::new([0xc3; 4096]));

static HYPERCALLS: AtomicU64 = AtomicU64::new(0);

/// Hypercalls made so far (every call through the page, a multicall counting once).
pub fn count() -> u64 {
    HYPERCALLS.load(Ordering::Relaxed)
}

/// Calls hypercall `nr` with up to five arguments (rdi, rsi, rdx, r10, r8).
pub fn call(nr: u32, a: [u64; 5]) -> i64 {
    HYPERCALLS.fetch_add(1, Ordering::Relaxed);
    let stub = XEN_HYPERCALL_PAGE.0.get() as u64 + u64::from(nr) * abi::HYPERCALL_STUB_SIZE;
    let ret: i64;
    // SAFETY: Xen installed the page before any call; each stub follows the
    // hypercall ABI (arguments in rdi, rsi, rdx, r10, r8; result in rax; rcx and
    // r11 clobbered) and Xen only touches memory the arguments point to.
    unsafe {
        core::arch::asm!("call {stub}", stub = in(reg) stub,
            inlateout("rdi") a[0] => _, inlateout("rsi") a[1] => _, inlateout("rdx") a[2] => _,
            inlateout("r10") a[3] => _, inlateout("r8") a[4] => _,
            lateout("rax") ret, clobber_abi("C"));
    }
    ret
}

/// [`call`] with up to three arguments.
pub fn call3(nr: u32, a0: u64, a1: u64, a2: u64) -> i64 {
    call(nr, [a0, a1, a2, 0, 0])
}

/// Physical-address-independent pointer argument.
pub fn ptr<T>(p: &T) -> u64 {
    p as *const T as u64
}
