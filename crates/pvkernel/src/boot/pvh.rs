//! PVH boot: the ELF note, the 32-bit entry, and `hvm_start_info`.
//!
//! Spec: Xen `docs/misc/pvh.pandoc` and
//! `xen/include/public/arch-x86/hvm/start_info.h`. The loader enters
//! `pvh_start32` in 32-bit protected mode with paging off and `ebx` = physical
//! address of `hvm_start_info`.

use super::{BootInfo, MemKind, MemRegion};

use pvabi::pvh::{HvmMemmapTableEntry, HvmStartInfo, XEN_HVM_START_MAGIC_VALUE};

core::arch::global_asm!(
    r#"
    .section .note.pvh, "a"
    .balign 4
    .long 4           /* namesz: "Xen\0" */
    .long 8           /* descsz */
    .long {phys32_entry} /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .text.boot, "ax"
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov esi, ebx                      /* keep hvm_start_info */
    mov esp, offset boot_stack_top    /* PVH promises no stack */

    /* Zero .bss (the boot page tables live there). */
    mov edi, offset __bss_start
    mov ecx, offset __bss_end
    sub ecx, edi
    shr ecx, 2
    xor eax, eax
    rep stosd

    /* PML4[0] -> PDPT; PDPT[0..4] -> four PDs; each PD maps 1 GiB in 2 MiB pages. */
    mov eax, offset boot_pdpt
    or eax, 0x3
    mov [boot_pml4], eax
    mov eax, offset boot_pd
    or eax, 0x3
    mov edi, offset boot_pdpt
    mov ecx, 4
2:  mov [edi], eax
    add eax, 0x1000
    add edi, 8
    dec ecx
    jnz 2b
    mov edi, offset boot_pd
    mov eax, 0x83                     /* present | writable | 2 MiB */
    xor edx, edx
    mov ecx, 2048
3:  mov [edi], eax
    mov [edi + 4], edx
    add eax, 0x200000
    adc edx, 0
    add edi, 8
    dec ecx
    jnz 3b

    mov eax, cr4
    or eax, 0x20                      /* PAE */
    mov cr4, eax
    mov eax, offset boot_pml4
    mov cr3, eax
    mov ecx, 0xc0000080               /* EFER */
    rdmsr
    or eax, 0x100                     /* LME */
    wrmsr
    mov eax, cr0
    or eax, 0x80010001                /* PG | WP | PE */
    mov cr0, eax

    lgdt [boot_gdt_ptr]
    push 0x08
    mov eax, offset pvh_start64
    push eax
    retf

    .code64
pvh_start64:
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov ss, eax
    xor eax, eax
    mov fs, eax
    mov gs, eax
    lea rsp, [rip + boot_stack_top]
    xor ebp, ebp
    mov edi, esi                      /* hvm_start_info physical address */
    call {entry}
4:  hlt
    jmp 4b

    .section .rodata.boot_gdt, "a"
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff          /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff          /* 0x10: data */
boot_gdt_end:
    .balign 4
boot_gdt_ptr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .bss.pagetables, "aw", @nobits
    .balign 4096
    .global boot_pml4
    .global boot_pdpt
    .global boot_pd
boot_pml4: .space 4096
boot_pdpt: .space 4096
boot_pd:   .space 4096 * 4

    .section .stack, "aw", @nobits
    .balign 4096
    .space 65536
    .global boot_stack_top
boot_stack_top:
    .text
    "#,
    entry = sym pvh_entry,
    phys32_entry = const pvabi::pvh::XEN_ELFNOTE_PHYS32_ENTRY,
);

/// Rust side of the PVH entry: convert `hvm_start_info` into [`BootInfo`].
extern "C" fn pvh_entry(start_info_paddr: u64) -> ! {
    let boot = parse(start_info_paddr);
    crate::kernel_main(boot)
}

/// Reads `hvm_start_info` (identity-mapped) into a [`BootInfo`].
fn parse(paddr: u64) -> BootInfo {
    let mut boot = BootInfo::empty("pvh");
    boot.start_info_paddr = paddr;
    // SAFETY: the PVH loader passed this address in ebx; the first 4 GiB are
    // identity-mapped, and the structure is read-only to us.
    let info = unsafe { core::ptr::read_unaligned(paddr as *const HvmStartInfo) };
    if info.magic != XEN_HVM_START_MAGIC_VALUE {
        boot.error = Some("hvm_start_info magic mismatch");
        return boot;
    }
    boot.version = info.version;
    if info.cmdline_paddr != 0 {
        // SAFETY: the loader put a NUL-terminated string there (identity-mapped);
        // read_cstr stops at the NUL or at the buffer's size.
        unsafe { boot.set_cmdline_from_cstr(info.cmdline_paddr as *const u8) };
    }
    if info.version >= 1 && info.memmap_paddr != 0 {
        for i in 0..info.memmap_entries as usize {
            // SAFETY: the loader promises `memmap_entries` entries at `memmap_paddr`.
            let e = unsafe {
                core::ptr::read_unaligned((info.memmap_paddr as *const HvmMemmapTableEntry).add(i))
            };
            boot.push_region(MemRegion { start: e.addr, len: e.size, kind: MemKind::from_e820(e.type_) });
        }
    }
    boot
}
