//! The VMI/64 option ROM pvrun puts in the guest at 0xC0000: VMI's idea is
//! that the hypervisor ships the paravirtual code, so this is the only part of
//! the `vmi` personality that runs in the guest.
//!
//! One image holds two *flavours* of every call, chosen by a byte of the
//! ROM's private configuration (`--vmi-rom`):
//!
//! - **native**: each call runs the native instruction sequence (`cli`,
//!   `mov cr3`, `invlpg`, ...) — what a ROM does when the hardware virtualizes
//!   everything (API 2.0 calls them identity translations);
//! - **trap**: each call first exits to pvrun (`out` to [`TRAP_PORT`], EAX =
//!   the call number) and pvrun serves it through the KVM API; the ROM then
//!   runs natively only what the KVM API cannot reach (a TLB flush, `lgdt`,
//!   `hlt`).
//!   Page-table updates are written by the ROM at once and told to pvrun in
//!   the same exit, or queued in the ROM's data page while lazy and told in one
//!   exit at the flush.
//!
//! `get_reloc` answers from the flavour's table: which calls are a `call`
//! into the ROM, which a `jmp` (IRET), which do nothing (NOP: the guest drops
//! the call site) and which keep the guest's native code (NONE).
//!
//! The code is assembled into pvrun's read-only data (never executed on the
//! host) and uses only RIP-relative addresses, so it runs wherever the guest
//! maps it; [`image`] adds the header, license, PCI header, configuration,
//! relocation tables and checksum.

use pvabi::vmi::{self, call, header, reloc};

/// The port of the trap flavour's exits (EAX = the call number). Private to
/// pvrun and its ROM: the guest never sees it, only the calls.
pub const TRAP_PORT: u16 = 0x1c;
/// The trap of `vmi_init` (not a call number: the header's entry point).
pub const TRAP_INIT: u32 = 0x100;

/// Where pvrun puts the ROM (the first address the guest probes).
pub const ROM_ADDRESS: u64 = vmi::ROM_WINDOW_START;
/// Bytes reserved for the ROM image; its data page follows.
pub const ROM_SPAN: u64 = 0x4000;
/// The trap flavour's data page: lazy mode and the deferred-update queue,
/// written by the ROM, read by pvrun at each exit.
pub const DATA_ADDRESS: u64 = ROM_ADDRESS + ROM_SPAN;

/// The data page: the lazy mode (u64, SetLazyMode's argument).
pub const DATA_LAZY: u64 = 0;
/// The data page: how many queue slots are full (u64).
pub const DATA_COUNT: u64 = 8;
/// The data page: the queue, [`QUEUE_LEN`] slots of (entry, its address,
/// flags, virtual address), 8 bytes each.
pub const DATA_QUEUE: u64 = 64;
/// Bytes of one queue slot.
pub const QUEUE_SLOT: u64 = 32;
/// Slots of the queue (what fits in the page).
pub const QUEUE_LEN: u64 = (4096 - DATA_QUEUE) / QUEUE_SLOT;

/// The configuration in the header's reserved bytes: the flavour (u8).
const CONFIG_FLAVOUR: usize = header::RESERVED;
/// The configuration: cycles per second of the cycle counters (u64).
const CONFIG_CYCLE_HZ: usize = header::RESERVED + 8;
/// Offset of the license string.
const LICENSE_AT: usize = header::SIZE;
/// The license, NUL-terminated. API 3.0's Linux wanted "GPL"; this ROM is the
/// project's own code.
pub const LICENSE: &[u8] = b"MIT OR Apache-2.0\0";
/// Offset of the PCI data structure.
const PCI_AT: usize = 168;
/// Offset of the relocation tables: one per flavour, [`call::COUNT`] slots of
/// (offset of the code: u16, type: u8, 0).
const TABLES_AT: usize = 0x100;
/// Bytes of one flavour's table.
const TABLE_BYTES: usize = call::COUNT as usize * 4;
/// Where the code starts.
const CODE_AT: usize = 0x400;

/// How the ROM's calls are done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// The native instructions, inside the ROM.
    Native = 0,
    /// An exit to pvrun per call.
    Trap = 1,
}

/// A deliberate defect, to test that guests refuse a broken ROM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Corruption {
    /// The bytes do not sum to 0.
    Checksum,
    /// API major version 3 (a 32-bit VMI ROM).
    Major,
    /// No "cVmi" signature (still an option ROM).
    Signature,
    /// `get_reloc` answers an address past the ROM's end for DisableInterrupts.
    Reloc,
}

const _: () = {
    assert!(TABLES_AT + 2 * TABLE_BYTES <= CODE_AT);
    assert!(PCI_AT >= LICENSE_AT + LICENSE.len() && PCI_AT + vmi::pci::SIZE <= TABLES_AT);
    assert!(DATA_QUEUE + QUEUE_LEN * QUEUE_SLOT <= 4096);
};

core::arch::global_asm!(
    r#"
    .pushsection .rodata.pvrun_vmi_rom, "a"
    .balign 16
    .global pvrun_vmi_rom
pvrun_vmi_rom:
    .skip {vmi_init}
    .byte 0xe9
    .long pvrun_vmi_init - (. + 4)
    .skip {get_reloc} - (. - pvrun_vmi_rom)
    .byte 0xe9
    .long pvrun_vmi_get_reloc - (. + 4)
    .skip {code_at} - (. - pvrun_vmi_rom)

    .macro trap number
    mov eax, \number
    out {port}, eax
    .endm

/* vmi_init: the trap flavour tells pvrun (which answers 0 in RAX). */
pvrun_vmi_init:
    cmp byte ptr [rip + pvrun_vmi_rom + {cfg_flavour}], {trap}
    jne 1f
    trap {t_init}
    ret
1:  xor eax, eax
    ret

/* get_reloc(RDI = call): RAX = address (0 for NONE/NOP), RDX = type. */
pvrun_vmi_get_reloc:
    xor eax, eax
    xor edx, edx
    cmp rdi, {count}
    jae 2f
    movzx ecx, byte ptr [rip + pvrun_vmi_rom + {cfg_flavour}]
    imul ecx, ecx, {table_bytes}
    lea r8, [rip + pvrun_vmi_rom + {tables_at}]
    add r8, rcx
    movzx edx, byte ptr [r8 + rdi * 4 + 2]
    movzx eax, word ptr [r8 + rdi * 4]
    test eax, eax
    jz 2f
    lea rcx, [rip + pvrun_vmi_rom]
    add rax, rcx
2:  ret

/* ---- native flavour ---- */
pvrun_vmi_n_cpuid:
    push rbx
    mov eax, edi
    mov ecx, esi
    cpuid
    shl rbx, 32
    or rax, rbx
    shl rdx, 32
    mov ecx, ecx
    or rdx, rcx
    pop rbx
    ret
pvrun_vmi_lgdt:
    lgdt [rdi]
    ret
pvrun_vmi_lidt:
    lidt [rdi]
    ret
pvrun_vmi_ltr:
    ltr di
    ret
pvrun_vmi_wbinvd:
    wbinvd
    ret
pvrun_vmi_n_set_cr0:
    mov cr0, rdi
    ret
pvrun_vmi_n_set_cr3:
    mov cr3, rdi
    ret
pvrun_vmi_n_set_cr4:
    mov cr4, rdi
    ret
pvrun_vmi_get_cr0:
    mov rax, cr0
    ret
pvrun_vmi_get_cr2:
    mov rax, cr2
    ret
pvrun_vmi_get_cr3:
    mov rax, cr3
    ret
pvrun_vmi_get_cr4:
    mov rax, cr4
    ret
pvrun_vmi_n_enable:
    sti
    ret
pvrun_vmi_n_disable:
    cli
    ret
pvrun_vmi_get_mask:
    pushfq
    pop rax
    and eax, 0x200
    ret
pvrun_vmi_n_set_mask:
    test edi, 0x200
    jz 3f
    sti
    ret
3:  cli
    ret
pvrun_vmi_iret:
    iretq
pvrun_vmi_n_halt:
    sti
    hlt
    ret
pvrun_vmi_n_reboot:
    mov al, 0xfe
    out 0x64, al
4:  cli
    hlt
    jmp 4b
pvrun_vmi_n_set_pxe:
    mov [rsi], rdi
    ret
pvrun_vmi_n_inval_page:
    invlpg [rdi]
    ret
/* FlushTLB(RDI): reload CR3; for GLOBAL also toggle CR4.PGE when it is set. */
pvrun_vmi_flush_tlb:
    mov rax, cr3
    mov cr3, rax
    test edi, {flush_global}
    jz 5f
    mov rax, cr4
    test eax, 0x80
    jz 5f
    btr rax, 7
    mov cr4, rax
    bts rax, 7
    mov cr4, rax
5:  ret
pvrun_vmi_cycle_hz:
    mov rax, [rip + pvrun_vmi_rom + {cfg_cycle_hz}]
    ret
/* REAL and AVAILABLE are the TSC; nothing is stolen from a native ROM. */
pvrun_vmi_n_cycle_counter:
    cmp rdi, {stolen}
    jae 6f
    rdtsc
    shl rdx, 32
    or rax, rdx
    ret
6:  xor eax, eax
    ret

/* ---- trap flavour: pvrun reads the arguments and writes RAX/RDX/RFLAGS.
   Reads of what the CPU holds (CR0/2/3/4, the interrupt flag) are the native
   ones above: pvrun would only read the same registers. ---- */
pvrun_vmi_t_cpuid:
    trap {c_cpuid}
    ret
pvrun_vmi_t_set_cr0:
    trap {c_set_cr0}
    ret
pvrun_vmi_t_set_cr3:
    trap {c_set_cr3}
    mov cr3, rdi
    ret
pvrun_vmi_t_set_cr4:
    trap {c_set_cr4}
    ret
pvrun_vmi_t_enable:
    trap {c_enable}
    ret
pvrun_vmi_t_disable:
    trap {c_disable}
    ret
pvrun_vmi_t_set_mask:
    trap {c_set_mask}
    ret
/* pvrun hears of the halt; the halt itself is the CPU's (sti's shadow
   keeps an interrupt from slipping in before hlt). */
pvrun_vmi_t_halt:
    trap {c_halt}
    sti
    hlt
    ret
pvrun_vmi_t_reboot:
    trap {c_reboot}
    ret
pvrun_vmi_t_shutdown:
    trap {c_shutdown}
    ret
/* SetPxE: the entry is in memory at once; pvrun hears of it now, or at the
   next exit when it is deferred (lazy MMU mode or DEFER) and the queue has room. */
pvrun_vmi_t_set_pxe:
    mov [rsi], rdi
    test rdx, {defer}
    jnz 7f
    cmp qword ptr [rip + pvrun_vmi_rom + {data} + {data_lazy}], {lazy_mmu}
    jne 8f
7:  mov rax, [rip + pvrun_vmi_rom + {data} + {data_count}]
    cmp rax, {queue_len}
    jae 8f
    shl rax, 5
    lea r8, [rip + pvrun_vmi_rom + {data} + {data_queue}]
    add r8, rax
    mov [r8], rdi
    mov [r8 + 8], rsi
    mov [r8 + 16], rdx
    mov [r8 + 24], rcx
    inc qword ptr [rip + pvrun_vmi_rom + {data} + {data_count}]
    ret
8:  trap {c_set_pxe}
    ret
/* Flushes exit only to hand pvrun queued updates first, and not while lazy
   (the queue waits for SetLazyMode(0)); the flush itself is the CPU's. */
pvrun_vmi_t_inval_page:
    call pvrun_vmi_t_flush_queue
    invlpg [rdi]
    ret
pvrun_vmi_t_flush_tlb:
    call pvrun_vmi_t_flush_queue
    jmp pvrun_vmi_flush_tlb
pvrun_vmi_t_flush_queue:
    cmp qword ptr [rip + pvrun_vmi_rom + {data} + {data_lazy}], {lazy_mmu}
    je 10f
    cmp qword ptr [rip + pvrun_vmi_rom + {data} + {data_count}], 0
    je 10f
    trap {c_flush_tlb}
10: ret
pvrun_vmi_t_allocate_page:
    trap {c_allocate_page}
    ret
pvrun_vmi_t_release_page:
    trap {c_release_page}
    ret
/* SetLazyMode: local, except that leaving with a non-empty queue exits once. */
pvrun_vmi_t_set_lazy_mode:
    mov [rip + pvrun_vmi_rom + {data} + {data_lazy}], rdi
    test rdi, rdi
    jnz 9f
    cmp qword ptr [rip + pvrun_vmi_rom + {data} + {data_count}], 0
    je 9f
    trap {c_set_lazy_mode}
9:  ret
/* The counters and alarms need the TSC now: in RDX and RCX respectively. */
pvrun_vmi_t_cycle_counter:
    rdtsc
    shl rdx, 32
    or rdx, rax
    trap {c_cycle_counter}
    ret
pvrun_vmi_t_set_alarm:
    mov r8, rdx
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rcx, rax
    mov rdx, r8
    trap {c_set_alarm}
    ret
pvrun_vmi_t_cancel_alarm:
    trap {c_cancel_alarm}
    ret
pvrun_vmi_t_wallclock:
    trap {c_wallclock}
    ret
    .global pvrun_vmi_rom_end
pvrun_vmi_rom_end:

    /* (call, flavour, type, 0, offset: u32), read by pvrun into the tables. */
    .macro reloc number, flavour, type, code
    .byte \number, \flavour, \type, 0
    .long \code - pvrun_vmi_rom
    .endm
    .macro both number, type, code
    reloc \number, {native}, \type, \code
    reloc \number, {trap}, \type, \code
    .endm
    .macro noop number, flavour
    .byte \number, \flavour, {nop}, 0
    .long 0
    .endm
    .global pvrun_vmi_rom_relocs
pvrun_vmi_rom_relocs:
    reloc {c_cpuid}, {native}, {call_rel}, pvrun_vmi_n_cpuid
    reloc {c_cpuid}, {trap}, {call_rel}, pvrun_vmi_t_cpuid
    both {c_set_gdt}, {call_rel}, pvrun_vmi_lgdt
    both {c_set_idt}, {call_rel}, pvrun_vmi_lidt
    both {c_set_tr}, {call_rel}, pvrun_vmi_ltr
    both {c_wbinvd}, {call_rel}, pvrun_vmi_wbinvd
    reloc {c_set_cr0}, {native}, {call_rel}, pvrun_vmi_n_set_cr0
    reloc {c_set_cr0}, {trap}, {call_rel}, pvrun_vmi_t_set_cr0
    reloc {c_set_cr3}, {native}, {call_rel}, pvrun_vmi_n_set_cr3
    reloc {c_set_cr3}, {trap}, {call_rel}, pvrun_vmi_t_set_cr3
    reloc {c_set_cr4}, {native}, {call_rel}, pvrun_vmi_n_set_cr4
    reloc {c_set_cr4}, {trap}, {call_rel}, pvrun_vmi_t_set_cr4
    both {c_get_cr0}, {call_rel}, pvrun_vmi_get_cr0
    both {c_get_cr2}, {call_rel}, pvrun_vmi_get_cr2
    both {c_get_cr3}, {call_rel}, pvrun_vmi_get_cr3
    both {c_get_cr4}, {call_rel}, pvrun_vmi_get_cr4
    reloc {c_enable}, {native}, {call_rel}, pvrun_vmi_n_enable
    reloc {c_enable}, {trap}, {call_rel}, pvrun_vmi_t_enable
    reloc {c_disable}, {native}, {call_rel}, pvrun_vmi_n_disable
    reloc {c_disable}, {trap}, {call_rel}, pvrun_vmi_t_disable
    both {c_get_mask}, {call_rel}, pvrun_vmi_get_mask
    reloc {c_set_mask}, {native}, {call_rel}, pvrun_vmi_n_set_mask
    reloc {c_set_mask}, {trap}, {call_rel}, pvrun_vmi_t_set_mask
    both {c_iret}, {jump_rel}, pvrun_vmi_iret
    reloc {c_halt}, {native}, {call_rel}, pvrun_vmi_n_halt
    reloc {c_halt}, {trap}, {call_rel}, pvrun_vmi_t_halt
    reloc {c_reboot}, {native}, {call_rel}, pvrun_vmi_n_reboot
    reloc {c_reboot}, {trap}, {call_rel}, pvrun_vmi_t_reboot
    reloc {c_shutdown}, {trap}, {call_rel}, pvrun_vmi_t_shutdown
    reloc {c_set_pxe}, {native}, {call_rel}, pvrun_vmi_n_set_pxe
    reloc {c_set_pxe}, {trap}, {call_rel}, pvrun_vmi_t_set_pxe
    reloc {c_inval_page}, {native}, {call_rel}, pvrun_vmi_n_inval_page
    reloc {c_inval_page}, {trap}, {call_rel}, pvrun_vmi_t_inval_page
    reloc {c_flush_tlb}, {native}, {call_rel}, pvrun_vmi_flush_tlb
    reloc {c_flush_tlb}, {trap}, {call_rel}, pvrun_vmi_t_flush_tlb
    noop {c_allocate_page}, {native}
    reloc {c_allocate_page}, {trap}, {call_rel}, pvrun_vmi_t_allocate_page
    noop {c_release_page}, {native}
    reloc {c_release_page}, {trap}, {call_rel}, pvrun_vmi_t_release_page
    noop {c_set_lazy_mode}, {native}
    reloc {c_set_lazy_mode}, {trap}, {call_rel}, pvrun_vmi_t_set_lazy_mode
    noop {c_io_delay}, {native}
    noop {c_io_delay}, {trap}
    both {c_cycle_hz}, {call_rel}, pvrun_vmi_cycle_hz
    reloc {c_cycle_counter}, {native}, {call_rel}, pvrun_vmi_n_cycle_counter
    reloc {c_cycle_counter}, {trap}, {call_rel}, pvrun_vmi_t_cycle_counter
    reloc {c_set_alarm}, {trap}, {call_rel}, pvrun_vmi_t_set_alarm
    reloc {c_cancel_alarm}, {trap}, {call_rel}, pvrun_vmi_t_cancel_alarm
    reloc {c_wallclock}, {trap}, {call_rel}, pvrun_vmi_t_wallclock
    .global pvrun_vmi_rom_relocs_end
pvrun_vmi_rom_relocs_end:
    .purgem trap
    .purgem reloc
    .purgem both
    .purgem noop
    .popsection
    "#,
    vmi_init = const header::VMI_INIT,
    get_reloc = const header::GET_RELOC,
    code_at = const CODE_AT,
    port = const TRAP_PORT,
    cfg_flavour = const CONFIG_FLAVOUR,
    cfg_cycle_hz = const CONFIG_CYCLE_HZ,
    native = const Flavour::Native as u8,
    trap = const Flavour::Trap as u8,
    t_init = const TRAP_INIT,
    count = const call::COUNT,
    table_bytes = const TABLE_BYTES,
    tables_at = const TABLES_AT,
    flush_global = const vmi::flush::GLOBAL,
    stolen = const vmi::counter::STOLEN,
    defer = const vmi::page::DEFER,
    lazy_mmu = const vmi::lazy::MMU,
    data = const ROM_SPAN,
    data_lazy = const DATA_LAZY,
    data_count = const DATA_COUNT,
    data_queue = const DATA_QUEUE,
    queue_len = const QUEUE_LEN,
    call_rel = const reloc::CALL_REL,
    jump_rel = const reloc::JUMP_REL,
    nop = const reloc::NOP,
    c_cpuid = const call::CPUID,
    c_set_gdt = const call::SET_GDT,
    c_set_idt = const call::SET_IDT,
    c_set_tr = const call::SET_TR,
    c_wbinvd = const call::WBINVD,
    c_set_cr0 = const call::SET_CR0,
    c_set_cr3 = const call::SET_CR3,
    c_set_cr4 = const call::SET_CR4,
    c_get_cr0 = const call::GET_CR0,
    c_get_cr2 = const call::GET_CR2,
    c_get_cr3 = const call::GET_CR3,
    c_get_cr4 = const call::GET_CR4,
    c_enable = const call::ENABLE_INTERRUPTS,
    c_disable = const call::DISABLE_INTERRUPTS,
    c_get_mask = const call::GET_INTERRUPT_MASK,
    c_set_mask = const call::SET_INTERRUPT_MASK,
    c_iret = const call::IRET,
    c_halt = const call::HALT,
    c_reboot = const call::REBOOT,
    c_shutdown = const call::SHUTDOWN,
    c_set_pxe = const call::SET_PXE,
    c_inval_page = const call::INVAL_PAGE,
    c_flush_tlb = const call::FLUSH_TLB,
    c_allocate_page = const call::ALLOCATE_PAGE,
    c_release_page = const call::RELEASE_PAGE,
    c_set_lazy_mode = const call::SET_LAZY_MODE,
    c_io_delay = const call::IO_DELAY,
    c_cycle_hz = const call::GET_CYCLE_FREQUENCY,
    c_cycle_counter = const call::GET_CYCLE_COUNTER,
    c_set_alarm = const call::SET_ALARM,
    c_cancel_alarm = const call::CANCEL_ALARM,
    c_wallclock = const call::GET_WALLCLOCK_TIME,
);

extern "C" {
    static pvrun_vmi_rom: u8;
    static pvrun_vmi_rom_end: u8;
    static pvrun_vmi_rom_relocs: u8;
    static pvrun_vmi_rom_relocs_end: u8;
}

fn bytes_between(start: *const u8, end: *const u8) -> &'static [u8] {
    let len = end as usize - start as usize;
    // SAFETY: both symbols are labels of the one `.rodata` block above, `end`
    // after `start`; the bytes are never written.
    unsafe { std::slice::from_raw_parts(start, len) }
}

/// The assembled code, from offset 0 (the header's room) to the end.
fn code() -> &'static [u8] {
    let (start, end) = (&raw const pvrun_vmi_rom, &raw const pvrun_vmi_rom_end);
    bytes_between(start, end)
}

/// One relocation record of the assembled table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The call number.
    pub call: u8,
    /// Which flavour's table.
    pub flavour: u8,
    /// The relocation type.
    pub kind: u8,
    /// Offset of the code in the ROM (0 for NOP).
    pub offset: u32,
}

/// The assembled relocation records.
pub fn records() -> impl Iterator<Item = Record> {
    let (start, end) = (&raw const pvrun_vmi_rom_relocs, &raw const pvrun_vmi_rom_relocs_end);
    bytes_between(start, end).chunks_exact(8).map(|r| Record {
        call: r[0],
        flavour: r[1],
        kind: r[2],
        offset: u32::from_le_bytes([r[4], r[5], r[6], r[7]]),
    })
}

/// The ROM image: header, license, PCI header, configuration, relocation
/// tables, code, padded to a whole number of 512-byte units whose bytes sum
/// to 0 (the last byte is the checksum), then `corruption`, if any.
pub fn image(flavour: Flavour, cycle_hz: u64, corruption: Option<Corruption>) -> Vec<u8> {
    let code = code();
    let len = (code.len() + 1).next_multiple_of(vmi::ROM_LENGTH_UNIT);
    assert!(len as u64 <= ROM_SPAN && len / vmi::ROM_LENGTH_UNIT <= 255, "the VMI ROM outgrew its span");
    let mut rom = vec![0u8; len];
    rom[header::VMI_INIT..code.len()].copy_from_slice(&code[header::VMI_INIT..]);

    let put16 = |rom: &mut [u8], at: usize, v: u16| rom[at..at + 2].copy_from_slice(&v.to_le_bytes());
    put16(&mut rom, header::ROM_SIGNATURE, vmi::ROM_SIGNATURE);
    rom[header::ROM_LENGTH] = (len / vmi::ROM_LENGTH_UNIT) as u8;
    // The 16-bit BIOS entry: `retf` (nothing to initialize in real mode).
    rom[header::ROM_ENTRY] = 0xcb;
    rom[header::VROM_SIGNATURE..][..4].copy_from_slice(&vmi::VROM_SIGNATURE.to_le_bytes());
    rom[header::API_MINOR] = vmi::API_MINOR;
    rom[header::API_MAJOR] = vmi::API_MAJOR;
    rom[header::JUMP_SLOTS] = call::COUNT as u8;
    put16(&mut rom, header::LICENSE_OFFS, LICENSE_AT as u16);
    put16(&mut rom, header::PCI_HEADER_OFFS, PCI_AT as u16);
    rom[LICENSE_AT..LICENSE_AT + LICENSE.len()].copy_from_slice(LICENSE);
    rom[PCI_AT..PCI_AT + 4].copy_from_slice(&vmi::PCI_SIGNATURE);
    put16(&mut rom, PCI_AT + vmi::pci::VENDOR, vmi::PCI_VENDOR);
    put16(&mut rom, PCI_AT + vmi::pci::DEVICE, vmi::PCI_DEVICE);
    put16(&mut rom, PCI_AT + vmi::pci::LENGTH, vmi::pci::SIZE as u16);
    rom[CONFIG_FLAVOUR] = flavour as u8;
    rom[CONFIG_CYCLE_HZ..CONFIG_CYCLE_HZ + 8].copy_from_slice(&cycle_hz.to_le_bytes());
    for r in records() {
        let slot = TABLES_AT + usize::from(r.flavour) * TABLE_BYTES + usize::from(r.call) * 4;
        put16(&mut rom, slot, r.offset as u16);
        rom[slot + 2] = r.kind;
    }

    match corruption {
        Some(Corruption::Major) => rom[header::API_MAJOR] = 3,
        Some(Corruption::Signature) => rom[header::VROM_SIGNATURE..][..4].fill(0),
        Some(Corruption::Reloc) => {
            let slot = TABLES_AT + flavour as usize * TABLE_BYTES + call::DISABLE_INTERRUPTS as usize * 4;
            put16(&mut rom, slot, (len + 16) as u16);
        }
        Some(Corruption::Checksum) | None => {}
    }
    let sum = vmi::checksum(&rom[..len - 1]);
    rom[len - 1] = 0u8.wrapping_sub(sum);
    if corruption == Some(Corruption::Checksum) {
        rom[len - 1] ^= 0x5a;
    }
    rom
}

/// What the flavour's table says of `call`: (type, offset of its code).
pub fn relocation(rom: &[u8], flavour: Flavour, number: u64) -> (u8, u16) {
    let slot = TABLES_AT + flavour as usize * TABLE_BYTES + number as usize * 4;
    (rom[slot + 2], u16::from_le_bytes([rom[slot], rom[slot + 1]]))
}
