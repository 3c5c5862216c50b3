//! Xen PV boot: the ELF notes Xen's PV domain builder reads, the 64-bit entry,
//! and `start_info`.
//!
//! Spec: Xen `xen/include/public/elfnote.h` and `xen.h` (`struct start_info`, and
//! the layout comment above it). The builder loads the kernel at `p_paddr` plus
//! `VIRT_BASE` (0), so virtual = pseudo-physical for the kernel, and maps
//! `[0, v_end)`: the kernel, the pfn-to-mfn list, `start_info`, the bootstrap
//! page tables and stack, and at least 512 KiB of padding up to a 4 MiB
//! boundary. It enters `xen_pv_start` in 64-bit ring 3 with `rsi` =
//! `start_info`.
//!
//! The same ELF also carries the PVH note; Xen uses that one when dom0 is PVH.

use super::{BootInfo, MemKind, MemRegion};

use pvabi::xen_pv as note;

core::arch::global_asm!(
    r#"
    .section .note.xen, "a"
    .balign 4
    .long 4, 8, {entry_note}
    .asciz "Xen"
    .quad xen_pv_start
    .long 4, 8, {hypercall_note}
    .asciz "Xen"
    .quad {hypercall_page}
    .long 4, 8, {virt_base_note}
    .asciz "Xen"
    .quad 0
    .long 4, 8, {paddr_offset_note}
    .asciz "Xen"
    .quad 0
    .long 4, 8, {xen_version_note}
    .asciz "Xen"
    .asciz "xen-3.0"
    .long 4, 12, {guest_os_note}
    .asciz "Xen"
    .asciz "pvkernel"
    .balign 4
    .long 4, 8, {loader_note}
    .asciz "Xen"
    .asciz "generic"
    .balign 4

    .section .text.boot, "ax"
    .code64
    .global xen_pv_start
xen_pv_start:
    cld
    lea rsp, [rip + boot_stack_top]
    xor ebp, ebp
    mov rdi, rsi                      /* start_info (virtual) */
    call {entry}
2:  ud2                               /* not reached; hlt is privileged here */
    jmp 2b
    .text
    "#,
    entry = sym xen_pv_entry,
    hypercall_page = sym paravirt::backends::xen::hypercall::XEN_HYPERCALL_PAGE,
    entry_note = const note::XEN_ELFNOTE_ENTRY,
    hypercall_note = const note::XEN_ELFNOTE_HYPERCALL_PAGE,
    virt_base_note = const note::XEN_ELFNOTE_VIRT_BASE,
    paddr_offset_note = const note::XEN_ELFNOTE_PADDR_OFFSET,
    xen_version_note = const note::XEN_ELFNOTE_XEN_VERSION,
    guest_os_note = const note::XEN_ELFNOTE_GUEST_OS,
    loader_note = const note::XEN_ELFNOTE_LOADER,
);

use paravirt::backends::xen::abi::pv::{start_info as field, START_INFO_MAGIC};

const PAGE: u64 = 4096;
const FOUR_MIB: u64 = 4 << 20;

/// Rust side of the PV entry.
extern "C" fn xen_pv_entry(start_info: u64) -> ! {
    let boot = parse(start_info);
    crate::kernel_main(boot)
}

/// Reads `start_info` into a [`BootInfo`]: the command line, and the RAM past
/// the bootstrap area, of which only the part below `v_end` is mapped yet.
fn parse(start_info: u64) -> BootInfo {
    let mut boot = BootInfo::empty("xen-pv");
    boot.flow = paravirt::BootFlow::XenPv { start_info };
    boot.start_info_paddr = start_info;
    let word = |off: usize| {
        // SAFETY: Xen mapped `start_info` for us; offsets from xen.h.
        unsafe { ((start_info + off as u64) as *const u64).read() }
    };
    // SAFETY: `magic` is the first 32 bytes of the mapped structure.
    let magic = unsafe { (start_info as *const [u8; 4]).read() };
    if &magic != START_INFO_MAGIC {
        boot.error = Some("start_info magic mismatch");
        return boot;
    }
    // SAFETY: `cmd_line` is 1024 bytes, NUL-terminated by Xen (strlcpy).
    unsafe { boot.set_cmdline_from_cstr((start_info + field::CMD_LINE as u64) as *const u8) };
    let ram_end = word(field::NR_PAGES) * PAGE;
    // The bootstrap stack page follows the page tables; the mapping ends at the
    // next 4 MiB boundary with at least 512 KiB to spare (xen.h).
    let stack_end = word(field::PT_BASE) + word(field::NR_PT_FRAMES) * PAGE + PAGE;
    let mut mapped_end = stack_end.next_multiple_of(FOUR_MIB);
    if mapped_end - stack_end < 512 << 10 {
        mapped_end += FOUR_MIB;
    }
    // Pseudo-physical RAM is [0, nr_pages); Xen's bootstrap structures follow the
    // kernel image (the pfn-to-mfn list starts on the next page).
    let (_, kernel_end) = crate::mm::kernel_image();
    let bootstrap = kernel_end.next_multiple_of(PAGE);
    boot.push_region(MemRegion { start: 0, len: bootstrap, kind: MemKind::Ram });
    boot.push_region(MemRegion { start: bootstrap, len: stack_end - bootstrap, kind: MemKind::Reserved });
    boot.push_region(MemRegion {
        start: stack_end,
        len: ram_end.saturating_sub(stack_end),
        kind: MemKind::Ram,
    });
    if ram_end > mapped_end {
        boot.unmapped_ram = Some((mapped_end, ram_end));
    }
    boot
}
