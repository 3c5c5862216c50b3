//! lguest64 boot (pvrun `--personality lguest`): the ELF notes pvrun looks for,
//! the 64-bit ring-3 entry, and the zero page (`boot_params`).
//!
//! Spec: `docs/abi/lguest.md` (the contract) and `pvabi::lguest`. pvrun enters
//! `lguest_start` in 64-bit ring 3 on an identity map of RAM it built, with
//! RSI = physical address of the zero page, whose e820 table and command line
//! are Linux's (`Documentation/x86/zero-page.txt`). As 4.13's `lguest_entry`
//! did, the kernel then builds its own first page table, which the backend
//! installs right after `LGUEST_INIT`.

use super::{BootInfo, MemKind, MemRegion};

use pvabi::lguest::{self as abi, zero_page as zp};

core::arch::global_asm!(
    r#"
    .section .note.lguest, "a"
    .balign 4
    .long 7, 8, {entry_note}
    .asciz "Lguest"
    .balign 4
    .quad lguest_start
    .long 7, 8, {abi_note}
    .asciz "Lguest"
    .balign 4
    .long {major}, {minor}

    .section .text.boot, "ax"
    .code64
    .global lguest_start
lguest_start:
    cld
    lea rsp, [rip + boot_stack_top]
    /* Zero .bss (the boot page tables live there); RSI survives rep stosq. */
    lea rdi, [rip + __bss_start]
    lea rcx, [rip + __bss_end]
    sub rcx, rdi
    shr rcx, 3
    xor eax, eax
    rep stosq
    xor ebp, ebp
    mov rdi, rsi                      /* the zero page */
    call {entry}
2:  ud2                               /* not reached; hlt is privileged here */
    jmp 2b
    .text
    "#,
    entry = sym lguest_entry,
    entry_note = const abi::ELFNOTE_ENTRY,
    abi_note = const abi::ELFNOTE_ABI,
    major = const abi::ABI_MAJOR,
    minor = const abi::ABI_MINOR,
);

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const HUGE: u64 = 1 << 7;

extern "C" {
    static mut boot_pml4: [u64; 512];
    static mut boot_pdpt: [u64; 512];
    static mut boot_pd: [[u64; 512]; 4];
}

/// Rust side of the lguest64 entry.
extern "C" fn lguest_entry(zero_page: u64) -> ! {
    let page_table = build_page_tables();
    let boot = parse(zero_page, page_table);
    crate::kernel_main(boot)
}

/// The PVH entry's tables, built here instead: the first 4 GiB identity-mapped
/// in 2 MiB pages, user-accessible (the kernel runs in ring 3). Slot 511 stays
/// empty: the host puts the switcher there. Returns the root.
fn build_page_tables() -> u64 {
    // SAFETY: boot CPU, before anything else runs; the three tables live in .bss,
    // zeroed by `lguest_start`, and nothing else refers to them yet. Raw
    // pointers only: no reference to a `static mut` is formed.
    unsafe {
        let pml4 = &raw mut boot_pml4;
        let pdpt = &raw mut boot_pdpt;
        let pd = &raw mut boot_pd;
        (*pml4)[0] = pdpt as u64 | PRESENT | WRITABLE | USER;
        for gib in 0..4 {
            (*pdpt)[gib] = &raw mut (*pd)[gib] as u64 | PRESENT | WRITABLE | USER;
            for (i, e) in (*pd)[gib].iter_mut().enumerate() {
                *e = ((gib as u64) << 30 | (i as u64) << 21) | PRESENT | WRITABLE | USER | HUGE;
            }
        }
        pml4 as u64
    }
}

fn read<T: Copy>(zero_page: u64, offset: usize) -> T {
    // SAFETY: pvrun put the zero page (4 KiB) at this identity-mapped address;
    // every offset used is inside it.
    unsafe { core::ptr::read_unaligned((zero_page + offset as u64) as *const T) }
}

/// Reads the zero page into a [`BootInfo`].
fn parse(zero_page: u64, page_table: u64) -> BootInfo {
    let mut boot = BootInfo::empty("lguest");
    boot.flow = paravirt::BootFlow::Lguest { page_table };
    boot.start_info_paddr = zero_page;
    if read::<u16>(zero_page, zp::BOOT_FLAG) != zp::BOOT_FLAG_VALUE
        || read::<u32>(zero_page, zp::HEADER) != zp::HEADER_VALUE
        || read::<u32>(zero_page, zp::HARDWARE_SUBARCH) != zp::SUBARCH_LGUEST
    {
        boot.error = Some("zero page: no boot_params header for the lguest subarchitecture");
        return boot;
    }
    boot.version = u32::from(read::<u16>(zero_page, zp::VERSION));
    let cmdline = u64::from(read::<u32>(zero_page, zp::CMD_LINE_PTR));
    if cmdline != 0 {
        // SAFETY: the launcher put a NUL-terminated string there (identity-mapped);
        // the copy stops at the NUL or at the buffer's size.
        unsafe { boot.set_cmdline_from_cstr(cmdline as *const u8) };
    }
    let entries = usize::from(read::<u8>(zero_page, zp::E820_ENTRIES)).min(zp::E820_MAX);
    for i in 0..entries {
        let at = zp::E820_TABLE + i * zp::E820_ENTRY_SIZE;
        boot.push_region(MemRegion {
            start: read(zero_page, at),
            len: read(zero_page, at + 8),
            kind: MemKind::from_e820(read(zero_page, at + 16)),
        });
    }
    boot
}
