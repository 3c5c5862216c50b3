//! Starting the other CPUs: the INIT-SIPI-SIPI sequence (Intel SDM vol. 3, 8.4.4)
//! sent to all-but-self, and a trampoline at [`TRAMPOLINE`] that takes each AP from
//! real mode to long mode on the kernel's page tables.
//!
//! The APIC IDs are not known in advance (no ACPI), so the start IPIs are
//! broadcast and the APs count themselves in; each takes a stack by arrival order.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use paravirt::MAX_CPUS;

/// Physical address the trampoline runs at (SIPI vector 0x08).
pub const TRAMPOLINE: u64 = 0x8000;
const AP_STACK_SIZE: usize = 32 * 1024;

#[repr(C, align(16))]
struct ApStack([u8; AP_STACK_SIZE]);

#[link_section = ".stack"]
static AP_STACKS: crate::sync::BootCell<[ApStack; MAX_CPUS]> =
    crate::sync::BootCell::new([const { ApStack([0; AP_STACK_SIZE]) }; MAX_CPUS]);

// Trampoline layout: a short jump over the data, then fixed offsets (so the code
// can name them with plain numbers; it runs at TRAMPOLINE, not where it is linked).
const OFF_CR3: u64 = 0x08;
const OFF_ENTRY: u64 = 0x10;
const OFF_STACK_BASE: u64 = 0x18;
const OFF_STACK_SIZE: u64 = 0x20;
const OFF_ARRIVALS: u64 = 0x28;
const OFF_GDT: u64 = 0x30;
const OFF_GDTR: u64 = 0x50;

core::arch::global_asm!(
    r#"
    .section .text.trampoline, "ax"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    jmp ap_code16
    .org ap_trampoline_start + {gdt}
    .quad 0
    .quad 0x00af9a000000ffff          /* 0x08: 64-bit code, as in the kernel's GDT */
    .quad 0x00cf92000000ffff          /* 0x10: data */
    .quad 0x00cf9a000000ffff          /* 0x18: 32-bit code, only for the switch */
    .org ap_trampoline_start + {gdtr}
    .word 31
    .long {tramp} + {gdt}
    .balign 16
ap_code16:
    cli
    cld
    mov ax, cs
    mov ds, ax
    lgdt [{gdtr}]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea                  /* jmp far 0x18:ap_prot32 (32-bit offset) */
    .long {tramp} + (ap_prot32 - ap_trampoline_start)
    .word 0x18

    .code32
ap_prot32:
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov ss, eax
    mov eax, cr4
    or eax, 0x20                      /* PAE */
    mov cr4, eax
    mov eax, [{tramp} + {cr3}]
    mov cr3, eax
    mov ecx, 0xc0000080               /* EFER.LME */
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80010001                /* PG | WP | PE */
    mov cr0, eax
    .byte 0xea                        /* jmp far 0x08:ap_long64 */
    .long {tramp} + (ap_long64 - ap_trampoline_start)
    .word 0x08

    .code64
ap_long64:
    xor eax, eax
    mov ds, eax
    mov es, eax
    mov ss, eax
    mov eax, 1
    lock xadd dword ptr [{tramp} + {arrivals}], eax
    mov edi, eax                      /* arrival index: picks the stack */
    inc eax
    imul rax, qword ptr [{tramp} + {stack_size}]
    add rax, qword ptr [{tramp} + {stack_base}]
    mov rsp, rax
    mov rax, qword ptr [{tramp} + {entry}]
    call rax
2:  hlt
    jmp 2b
    .balign 8
ap_trampoline_end:
    .text
    "#,
    tramp = const TRAMPOLINE,
    cr3 = const OFF_CR3,
    entry = const OFF_ENTRY,
    stack_base = const OFF_STACK_BASE,
    stack_size = const OFF_STACK_SIZE,
    arrivals = const OFF_ARRIVALS,
    gdt = const OFF_GDT,
    gdtr = const OFF_GDTR,
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// APs that reached [`ap_entry`] (APIC ID bits).
static ONLINE: AtomicU64 = AtomicU64::new(0);
static ARRIVED: AtomicU32 = AtomicU32::new(0);

/// CPUs online, as a mask of APIC IDs (the boot CPU included once it registered).
pub fn online_mask() -> u64 {
    ONLINE.load(Ordering::Acquire)
}

/// Marks this CPU online.
pub fn mark_online(apic_id: u32) {
    ONLINE.fetch_or(1 << apic_id, Ordering::AcqRel);
}

/// A data slot of the copied trampoline.
fn slot(offset: u64) -> *mut u64 {
    (TRAMPOLINE + offset) as *mut u64
}

/// Starts every other CPU and waits until `expected` CPUs (this one included) are
/// online or `timeout_ns` passed. Returns the online mask. Once, on the boot CPU,
/// after the kernel's page tables, GDT, IDT and paravirt are set up.
pub fn start_aps(expected: u32, timeout_ns: u64) -> u64 {
    if !start_through_hypervisor(expected) {
        start_with_init_sipi();
    }
    let t0 = paravirt::time::clock_ns();
    while online_mask().count_ones() < expected && paravirt::time::clock_ns() - t0 < timeout_ns {
        core::hint::spin_loop();
    }
    online_mask()
}

/// Asks the backend to start CPUs 1..`expected` (Xen PV, where the kernel cannot
/// send INIT-SIPI); false if it cannot, so the hardware way applies.
fn start_through_hypervisor(expected: u32) -> bool {
    for cpu in 1..expected.min(MAX_CPUS as u32) {
        // CPU n runs on stack slot n; a call would have pushed a return address.
        let top = AP_STACKS.as_ptr() as u64 + (u64::from(cpu) + 1) * AP_STACK_SIZE as u64 - 8;
        match paravirt::start_cpu(cpu, hypervisor_ap_entry as *const () as u64, top) {
            paravirt::StartCpu::Unsupported => return false,
            paravirt::StartCpu::Started => {}
            paravirt::StartCpu::Failed(e) => {
                crate::diag!("cpu {}: the hypervisor refused to start it ({})", cpu, e)
            }
        }
    }
    true
}

/// Copies the real-mode trampoline below 1 MiB and sends INIT-SIPI-SIPI to every
/// other CPU.
fn start_with_init_sipi() {
    let start = core::ptr::addr_of!(ap_trampoline_start);
    let len = core::ptr::addr_of!(ap_trampoline_end) as usize - start as usize;
    // SAFETY: [TRAMPOLINE, +len) is identity-mapped low RAM below the kernel that
    // nothing else uses after boot (the loader's structures were already copied).
    unsafe {
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
        slot(OFF_CR3).write_volatile(paravirt::mmu::read_cr3());
        slot(OFF_ENTRY).write_volatile(ap_entry as *const () as u64);
        // Arrival i takes the top of stack slot i (the trampoline adds one first).
        slot(OFF_STACK_BASE).write_volatile(AP_STACKS.as_ptr() as u64);
        slot(OFF_STACK_SIZE).write_volatile(AP_STACK_SIZE as u64);
        (slot(OFF_ARRIVALS) as *mut u32).write_volatile(0);
    }
    crate::arch::apic::send_init_sipi_all((TRAMPOLINE >> 12) as u8);
}

/// Entry of a CPU the backend started (`cpu` in rdi), on its stack slot, on the
/// kernel's tables, with interrupts (events) off. No local APIC is ours here.
extern "C" fn hypervisor_ap_entry(cpu: u64) -> ! {
    ap_main(cpu as u32, false)
}

/// Rust entry of an AP, on its own stack, in long mode on the kernel's tables.
extern "C" fn ap_entry(_arrival: u32) -> ! {
    ap_main(paravirt::cpu::cpuid(1, 0).ebx >> 24, true)
}

/// An AP's set-up, the same however it was started: per-CPU area, GDT, IDT,
/// local APIC (when the kernel owns one), the backend's per-CPU state; then idle.
fn ap_main(cpu: u32, owns_apic: bool) -> ! {
    ARRIVED.fetch_add(1, Ordering::Relaxed);
    crate::percpu::init_this_cpu(cpu);
    crate::arch::gdt::init(cpu);
    crate::arch::traps::load_on_this_cpu();
    crate::arch::apic::init(owns_apic);
    paravirt::init_secondary();
    mark_online(cpu);
    crate::smp::idle()
}
