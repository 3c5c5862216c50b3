//! The Xen PV boot protocol's ELF notes (Xen `xen/include/public/elfnote.h`).
//!
//! Xen's PV domain builder reads these `"Xen"` notes, loads the kernel at
//! `VIRT_BASE + p_paddr`, fills the hypercall page, and enters `ENTRY` in 64-bit
//! ring 3 with `rsi` = virtual address of `start_info` and a bootstrap stack.

/// `XEN_ELFNOTE_ENTRY`: virtual entry address.
pub const XEN_ELFNOTE_ENTRY: u32 = 1;
/// `XEN_ELFNOTE_HYPERCALL_PAGE`: virtual address Xen fills with hypercall stubs.
pub const XEN_ELFNOTE_HYPERCALL_PAGE: u32 = 2;
/// `XEN_ELFNOTE_VIRT_BASE`: virtual address of pseudo-physical 0.
pub const XEN_ELFNOTE_VIRT_BASE: u32 = 3;
/// `XEN_ELFNOTE_PADDR_OFFSET`: subtracted from virtual addresses to get `p_paddr`.
pub const XEN_ELFNOTE_PADDR_OFFSET: u32 = 4;
/// `XEN_ELFNOTE_XEN_VERSION`: the ABI version string, `"xen-3.0"`.
pub const XEN_ELFNOTE_XEN_VERSION: u32 = 5;
/// `XEN_ELFNOTE_GUEST_OS`: the guest's name (informational).
pub const XEN_ELFNOTE_GUEST_OS: u32 = 6;
/// `XEN_ELFNOTE_LOADER`: `"generic"`.
pub const XEN_ELFNOTE_LOADER: u32 = 8;
