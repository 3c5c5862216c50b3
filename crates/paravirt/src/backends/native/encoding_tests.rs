//! The native forms as the assembler encodes them, to check the byte tables the
//! patcher writes (`OpInfo::native_inline`).

use crate::ops::Op;

macro_rules! assembled {
    ($($label:ident: $text:literal;)*) => {
        core::arch::global_asm!(
            ".pushsection .rodata.pv_native_forms, \"a\"",
            $( concat!(stringify!($label), "_start:"), $text, concat!(stringify!($label), "_end:"), )*
            ".popsection",
        );
        extern "C" {
            $( #[link_name = concat!(stringify!($label), "_start")] static $label: u8; )*
        }
        fn assembled_forms() -> std::vec::Vec<(&'static str, &'static [u8])> {
            std::vec![$( {
                extern "C" {
                    #[link_name = concat!(stringify!($label), "_end")]
                    static END: u8;
                }
                let start = core::ptr::addr_of!($label);
                let end = core::ptr::addr_of!(END);
                // SAFETY: both labels delimit bytes in .rodata emitted above.
                (stringify!($label), unsafe {
                    core::slice::from_raw_parts(start, end as usize - start as usize)
                })
            } ),*]
        }
    };
}

assembled! {
    cpu_read_msr: "mov ecx, edi; rdmsr; shl rdx, 32; or rax, rdx";
    cpu_write_msr: "mov ecx, edi; mov eax, esi; mov rdx, rsi; shr rdx, 32; wrmsr";
    cpu_read_cr0: "mov rax, cr0";
    cpu_write_cr0: "mov cr0, rdi";
    cpu_read_cr4: "mov rax, cr4";
    cpu_write_cr4: "mov cr4, rdi";
    cpu_load_gdt: "lgdt [rdi]";
    cpu_load_idt: "lidt [rdi]";
    cpu_load_tr: "ltr di";
    cpu_wbinvd: "wbinvd";
    cpu_io_delay: "out 0x80, al";
    cpu_iret: "iretq";
    irq_save_flags: "pushfq; pop rax";
    irq_restore_flags: "push rdi; popfq";
    irq_disable: "cli";
    irq_enable: "sti";
    irq_safe_halt: "sti; hlt";
    irq_halt: "hlt";
    mmu_read_cr2: "mov rax, cr2";
    mmu_read_cr3: "mov rax, cr3";
    mmu_write_cr3: "mov cr3, rdi";
    mmu_set_pte: "mov [rdi], rsi";
    mmu_set_pmd: "mov [rdi], rsi";
    mmu_set_pud: "mov [rdi], rsi";
    mmu_set_p4d: "mov [rdi], rsi";
    mmu_read_entry: "mov rax, [rdi]";
    mmu_pte_clear: "mov qword ptr [rdi], 0";
    mmu_flush_tlb_all: "mov rax, cr3; mov cr3, rax";
    mmu_flush_tlb_one: "invlpg [rdi]";
}

#[test]
fn byte_tables_match_the_assembler() {
    let forms = assembled_forms();
    let mut checked = 0;
    for info in crate::ops::OP_INFO {
        let Some(native) = info.native_inline else {
            continue;
        };
        let label = info.name.replace('.', "_");
        let (_, bytes) = forms
            .iter()
            .find(|(l, _)| *l == label)
            .unwrap_or_else(|| panic!("no assembled form for {}", info.name));
        assert_eq!(native, *bytes, "{}", info.name);
        checked += 1;
    }
    assert_eq!(checked, forms.len(), "an assembled form has no op");
    assert!(Op::IrqDisable.info().native_inline.is_some());
}
