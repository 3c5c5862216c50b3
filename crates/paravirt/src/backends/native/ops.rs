//! Native implementations: the bare instructions.
//!
//! These run at CPL0 only; on a hosted build they compile (for unit tests of the
//! surrounding logic) but must not be called.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::ops::cpu::{CpuidResult, DescriptorTablePointer, MsrFault};

pub(crate) fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    #[allow(unused_unsafe)]
    // SAFETY: cpuid is available on every x86_64 CPU and has no side effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    CpuidResult { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

pub(crate) unsafe fn read_msr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists and reading it is harmless.
    unsafe { asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub(crate) unsafe fn write_msr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the write keeps the kernel sound.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

pub(crate) unsafe fn read_msr_safe(msr: u32) -> Result<u64, MsrFault> {
    let (lo, hi): (u32, u32);
    let faulted: u32;
    // SAFETY: a #GP on the rdmsr resumes at label 4 through the `.pv_extable` entry,
    // which the kernel's trap handler honours; eax/edx are zeroed first so the
    // outputs are defined either way.
    unsafe {
        asm!(
            "xor {f:e}, {f:e}",
            "xor eax, eax",
            "xor edx, edx",
            "2: rdmsr",
            "3:",
            ".pushsection .pv_extable, \"a\"",
            ".balign 8",
            ".quad 2b, 4f",
            ".popsection",
            ".pushsection .text.pv_fixup, \"ax\"",
            "4: mov {f:e}, 1",
            "jmp 3b",
            ".popsection",
            f = out(reg) faulted,
            in("ecx") msr,
            out("eax") lo,
            out("edx") hi,
            options(nostack),
        )
    };
    if faulted != 0 {
        Err(MsrFault { msr })
    } else {
        Ok((u64::from(hi) << 32) | u64::from(lo))
    }
}

pub(crate) unsafe fn write_msr_safe(msr: u32, value: u64) -> Result<(), MsrFault> {
    let faulted: u32;
    // SAFETY: as read_msr_safe; the caller guarantees a successful write is sound.
    unsafe {
        asm!(
            "xor {f:e}, {f:e}",
            "2: wrmsr",
            "3:",
            ".pushsection .pv_extable, \"a\"",
            ".balign 8",
            ".quad 2b, 4f",
            ".popsection",
            ".pushsection .text.pv_fixup, \"ax\"",
            "4: mov {f:e}, 1",
            "jmp 3b",
            ".popsection",
            f = out(reg) faulted,
            in("ecx") msr,
            in("eax") value as u32,
            in("edx") (value >> 32) as u32,
            options(nostack),
        )
    };
    if faulted != 0 {
        Err(MsrFault { msr })
    } else {
        Ok(())
    }
}

macro_rules! read_cr {
    ($name:ident, $cr:literal) => {
        pub(crate) fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effect (CPL0 only).
            unsafe { asm!(concat!("mov {}, ", $cr), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

macro_rules! write_cr {
    ($name:ident, $cr:literal) => {
        pub(crate) unsafe fn $name(v: u64) {
            // SAFETY: the caller guarantees the new value keeps the kernel sound.
            unsafe { asm!(concat!("mov ", $cr, ", {}"), in(reg) v, options(nostack, preserves_flags)) };
        }
    };
}

read_cr!(read_cr0, "cr0");
read_cr!(read_cr2, "cr2");
read_cr!(read_cr3, "cr3");
read_cr!(read_cr4, "cr4");
write_cr!(write_cr0, "cr0");
write_cr!(write_cr3, "cr3");
write_cr!(write_cr4, "cr4");

pub(crate) unsafe fn load_gdt(p: &DescriptorTablePointer) {
    // SAFETY: the caller guarantees the table stays valid while loaded.
    unsafe { asm!("lgdt [{}]", in(reg) p, options(readonly, nostack, preserves_flags)) };
}

pub(crate) unsafe fn load_idt(p: &DescriptorTablePointer) {
    // SAFETY: the caller guarantees the table stays valid while loaded.
    unsafe { asm!("lidt [{}]", in(reg) p, options(readonly, nostack, preserves_flags)) };
}

pub(crate) unsafe fn load_tr(sel: u16) {
    // SAFETY: the caller guarantees `sel` names an available TSS.
    unsafe { asm!("ltr {:x}", in(reg) sel, options(nostack, preserves_flags)) };
}

pub(crate) fn wbinvd() {
    // SAFETY: wbinvd only writes back caches; memory contents are unchanged.
    unsafe { asm!("wbinvd", options(nostack, preserves_flags)) };
}

pub(crate) fn io_delay() {
    // SAFETY: port 0x80 is the POST diagnostic port, free to write on PCs.
    unsafe { asm!("out 0x80, al", in("al") 0u8, options(nomem, nostack, preserves_flags)) };
}

pub(crate) fn read_tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub(crate) fn save_flags() -> u64 {
    let f: u64;
    // SAFETY: pushf/pop only copy RFLAGS through the stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) f, options(nomem, preserves_flags)) };
    f
}

pub(crate) unsafe fn restore_flags(f: u64) {
    // SAFETY: the caller passes flags saved on this CPU.
    unsafe { asm!("push {}", "popfq", in(reg) f, options(nomem)) };
}

pub(crate) fn irq_disable() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

pub(crate) unsafe fn irq_enable() {
    // SAFETY: the caller guarantees a valid IDT.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

pub(crate) unsafe fn safe_halt() {
    // SAFETY: the caller guarantees a valid IDT; `sti` delays interrupts by one
    // instruction, so none can slip in before `hlt`.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

pub(crate) fn halt() {
    // SAFETY: hlt waits for an interrupt; no memory effect.
    unsafe { asm!("hlt", options(nomem, nostack)) };
}

pub(crate) unsafe fn set_entry(entry: *mut u64, value: u64) {
    // SAFETY: the caller guarantees `entry` is a live page-table slot.
    unsafe { core::ptr::write_volatile(entry, value) };
}

pub(crate) unsafe fn pte_clear(entry: *mut u64) {
    // SAFETY: as set_entry.
    unsafe { core::ptr::write_volatile(entry, 0) };
}

pub(crate) fn flush_tlb_all() {
    // SAFETY: reloading CR3 with its own value only drops non-global TLB entries.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
}

pub(crate) fn flush_tlb_one(va: u64) {
    // SAFETY: invlpg only drops a TLB entry.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}

// --- console: COM1 16550 ---

const COM1: u16 = 0x3f8;
/// FIFO depth of a 16550A: after THRE, this many bytes may be written blind.
const UART_FIFO: usize = 16;
static COM1_READY: AtomicBool = AtomicBool::new(false);

fn outb(port: u16, v: u8) {
    // SAFETY: only used on the COM1 and debug-exit ports, which have no memory effect.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) };
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as outb.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags)) };
    v
}

fn com1_init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0x07); // enable and clear the FIFOs
}

pub(crate) fn console_write(bytes: &[u8]) {
    if !COM1_READY.swap(true, Ordering::Relaxed) {
        com1_init();
    }
    for chunk in bytes.chunks(UART_FIFO) {
        // Wait for an empty transmitter, then fill the FIFO: one status read per 16
        // bytes instead of one per byte (each is a VM exit under a hypervisor).
        while inb(COM1 + 5) & 0x20 == 0 {
            core::hint::spin_loop();
        }
        for &b in chunk {
            outb(COM1, b);
        }
    }
}

// --- power ---

/// QEMU's isa-debug-exit port: the emulator exits with `(value << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

pub(crate) fn shutdown(status: u32) -> ! {
    // SAFETY: writing the debug-exit port ends the VM where the device exists and is
    // ignored elsewhere.
    unsafe { asm!("out dx, eax", in("dx") DEBUG_EXIT_PORT, in("eax") status, options(nomem, nostack)) };
    loop {
        irq_disable();
        halt();
    }
}

pub(crate) fn reboot() -> ! {
    // Keyboard controller reset line.
    outb(0x64, 0xfe);
    // Then a triple fault: an empty IDT and an exception.
    let empty = DescriptorTablePointer { limit: 0, base: 0 };
    // SAFETY: we are resetting the machine on purpose.
    unsafe {
        load_idt(&empty);
        asm!("ud2", options(nomem, nostack, noreturn));
    }
}
