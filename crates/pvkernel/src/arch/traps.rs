//! Trap entry: one stub per vector, an IDT, and the Rust dispatcher.
//!
//! A fault at an instruction listed in `paravirt`'s exception table resumes at its
//! fixup and is recorded (see [`last_fault`]); any other exception is fatal and
//! reported as a TAP `Bail out!` with vector, RIP, error code and CR2.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use paravirt::cpu::{self, DescriptorTablePointer};

use super::gdt::{IST_DOUBLE_FAULT, KERNEL_CS};
use crate::sync::BootCell;

/// Saved state of the interrupted context, as pushed by the stubs and the CPU.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// General-purpose registers, in the order `trap_common` pushes them (reversed).
    pub r15: u64,
    #[allow(missing_docs)]
    pub r14: u64,
    #[allow(missing_docs)]
    pub r13: u64,
    #[allow(missing_docs)]
    pub r12: u64,
    #[allow(missing_docs)]
    pub r11: u64,
    #[allow(missing_docs)]
    pub r10: u64,
    #[allow(missing_docs)]
    pub r9: u64,
    #[allow(missing_docs)]
    pub r8: u64,
    #[allow(missing_docs)]
    pub rbp: u64,
    #[allow(missing_docs)]
    pub rdi: u64,
    #[allow(missing_docs)]
    pub rsi: u64,
    #[allow(missing_docs)]
    pub rdx: u64,
    #[allow(missing_docs)]
    pub rcx: u64,
    #[allow(missing_docs)]
    pub rbx: u64,
    #[allow(missing_docs)]
    pub rax: u64,
    /// Vector number (pushed by the stub).
    pub vector: u64,
    /// Error code (pushed by the CPU, or 0 by the stub).
    pub error: u64,
    /// Interrupted RIP.
    pub rip: u64,
    /// Interrupted CS.
    pub cs: u64,
    /// Interrupted RFLAGS.
    pub rflags: u64,
    /// Interrupted RSP.
    pub rsp: u64,
    /// Interrupted SS.
    pub ss: u64,
}

/// Vectors for which the CPU pushes an error code.
const fn has_error_code(v: usize) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21 | 29 | 30)
}

/// Mnemonics of the architectural exceptions.
pub const EXCEPTION_NAMES: [&str; 32] = [
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF",
    "#15", "#MF", "#AC", "#MC", "#XM", "#VE", "#CP", "#22", "#23", "#24", "#25", "#26", "#27", "#HV", "#VC",
    "#SX", "#31",
];

/// Each stub is padded to this size so the IDT can compute addresses.
const STUB_SIZE: u64 = 16;

core::arch::global_asm!(
    r#"
    .section .text.traps, "ax"
    .code64
    .altmacro
    .macro trap_stub vec, err
    .balign 16
    .if \err == 0
    push 0
    .endif
    push \vec
    jmp trap_common
    .endm

    .balign 16
    .global trap_stubs
trap_stubs:
    .set vec, 0
    .rept 256
    .if vec == 8 || (vec >= 10 && vec <= 14) || vec == 17 || vec == 21 || vec == 29 || vec == 30
    trap_stub %vec, 1
    .else
    trap_stub %vec, 0
    .endif
    .set vec, vec + 1
    .endr
    .noaltmacro

trap_common:
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
    push rdi
    push rbp
    push r8
    push r9
    push r10
    push r11
    push r12
    push r13
    push r14
    push r15
    mov rdi, rsp
    cld
    call {dispatch}
    pop r15
    pop r14
    pop r13
    pop r12
    pop r11
    pop r10
    pop r9
    pop r8
    pop rbp
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
    add rsp, 16
    "#,
    // `iretq`, through the API: a deprivileged backend restores its virtual
    // interrupt flag from the frame on the way out.
    paravirt::iret_site!(),
    r#"
    .text
    "#,
    dispatch = sym trap_dispatch,
    pv_ops = sym paravirt::table::PV_OPS,
    pv_iret_offset = const paravirt::cpu::iret::OFFSET,
    pv_iret_len = const paravirt::cpu::iret::LEN,
    pv_iret_op = const paravirt::cpu::iret::OP,
);

extern "C" {
    static trap_stubs: u8;
}

/// A fault that was expected (its instruction is in the exception table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultInfo {
    /// Exception vector.
    pub vector: u64,
    /// Error code (0 when the exception has none).
    pub error: u64,
    /// CR2 at the time of the fault (page faults only; else 0).
    pub cr2: u64,
    /// RIP of the faulting instruction.
    pub rip: u64,
}

static LAST_VECTOR: AtomicU64 = AtomicU64::new(u64::MAX);
static LAST_ERROR: AtomicU64 = AtomicU64::new(0);
static LAST_CR2: AtomicU64 = AtomicU64::new(0);
static LAST_RIP: AtomicU64 = AtomicU64::new(0);

/// Takes the last recovered fault, if one happened since the previous call.
pub fn last_fault() -> Option<FaultInfo> {
    let vector = LAST_VECTOR.swap(u64::MAX, Ordering::AcqRel);
    (vector != u64::MAX).then(|| FaultInfo {
        vector,
        error: LAST_ERROR.load(Ordering::Relaxed),
        cr2: LAST_CR2.load(Ordering::Relaxed),
        rip: LAST_RIP.load(Ordering::Relaxed),
    })
}

/// Handler for an interrupt vector (≥ 32).
pub type IrqHandler = fn(&mut TrapFrame);

static IRQ_HANDLERS: [AtomicUsize; 256] = [const { AtomicUsize::new(0) }; 256];
static IRQ_COUNTS: [AtomicU64; 256] = [const { AtomicU64::new(0) }; 256];

/// Installs `handler` for `vector` (32..=255).
pub fn set_irq_handler(vector: u8, handler: IrqHandler) {
    assert!(vector >= 32, "vectors below 32 are exceptions");
    IRQ_HANDLERS[usize::from(vector)].store(handler as usize, Ordering::Release);
}

/// How many times `vector` has been delivered.
pub fn irq_count(vector: u8) -> u64 {
    IRQ_COUNTS[usize::from(vector)].load(Ordering::Relaxed)
}

extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    let vector = frame.vector as usize;
    if vector >= 32 {
        IRQ_COUNTS[vector].fetch_add(1, Ordering::Relaxed);
        let h = IRQ_HANDLERS[vector].load(Ordering::Acquire);
        if h != 0 {
            // SAFETY: only `set_irq_handler` stores non-zero values, each an IrqHandler.
            let handler: IrqHandler = unsafe { core::mem::transmute::<usize, IrqHandler>(h) };
            handler(frame);
        }
        return;
    }
    let cr2 = if vector == 14 { paravirt::mmu::read_cr2() } else { 0 };
    if let Some(fixup) = paravirt::extable::search(frame.rip) {
        LAST_ERROR.store(frame.error, Ordering::Relaxed);
        LAST_CR2.store(cr2, Ordering::Relaxed);
        LAST_RIP.store(frame.rip, Ordering::Relaxed);
        LAST_VECTOR.store(frame.vector, Ordering::Release);
        frame.rip = fixup;
        return;
    }
    crate::tap::bail_out(format_args!(
        "unexpected exception {} (vector {}) at rip={:#x} error={:#x} cr2={:#x} rsp={:#x}",
        EXCEPTION_NAMES[vector], vector, frame.rip, frame.error, cr2, frame.rsp
    ));
}

#[derive(Clone, Copy)]
#[repr(C)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

static IDT: BootCell<[IdtEntry; 256]> = BootCell::new(
    [IdtEntry {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    }; 256],
);

/// Loads the (shared) IDT on a secondary CPU.
pub fn load_on_this_cpu() {
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<[IdtEntry; 256]>() - 1) as u16,
        base: IDT.as_ptr() as u64,
    };
    // SAFETY: the boot CPU built the IDT before starting any other CPU.
    unsafe { cpu::load_idt(&ptr) };
}

/// Builds and loads the IDT. Once, on the boot CPU, after [`super::gdt::init`].
pub fn init() {
    debug_assert!(!has_error_code(0) && has_error_code(14));
    let stubs = core::ptr::addr_of!(trap_stubs) as u64;
    // SAFETY: boot CPU only, before the IDT is loaded.
    let idt = unsafe { IDT.get_mut() };
    for (v, e) in idt.iter_mut().enumerate() {
        let addr = stubs + v as u64 * STUB_SIZE;
        *e = IdtEntry {
            offset_low: addr as u16,
            selector: KERNEL_CS,
            ist: if v == 8 { IST_DOUBLE_FAULT } else { 0 },
            type_attr: 0x8e, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (addr >> 16) as u16,
            offset_high: (addr >> 32) as u32,
            reserved: 0,
        };
    }
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<[IdtEntry; 256]>() - 1) as u16,
        base: idt.as_ptr() as u64,
    };
    // SAFETY: the IDT is a static that lives forever and every entry points at a stub.
    unsafe { cpu::load_idt(&ptr) };
}
