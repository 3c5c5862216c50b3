//! Native implementations: the bare instructions.
//!
//! These run at CPL0 only; on a hosted build they compile (for unit tests of the
//! surrounding logic) but must not be called.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::cpus::CpuSet;

use crate::ops::cpu::{CpuidResult, DescriptorTablePointer, MsrResult};

pub(crate) extern "C" fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    #[allow(unused_unsafe)]
    // SAFETY: cpuid is available on every x86_64 CPU and has no side effects.
    let r = unsafe { core::arch::x86_64::__cpuid_count(leaf, subleaf) };
    CpuidResult { eax: r.eax, ebx: r.ebx, ecx: r.ecx, edx: r.edx }
}

pub(crate) unsafe extern "C" fn read_msr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: the caller guarantees the MSR exists and reading it is harmless.
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub(crate) unsafe extern "C" fn write_msr(msr: u32, value: u64) {
    // SAFETY: the caller guarantees the write keeps the kernel sound.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

pub(crate) unsafe extern "C" fn read_msr_safe(msr: u32) -> MsrResult {
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
        MsrResult { value: 0, faulted: 1 }
    } else {
        MsrResult { value: (u64::from(hi) << 32) | u64::from(lo), faulted: 0 }
    }
}

pub(crate) unsafe extern "C" fn write_msr_safe(msr: u32, value: u64) -> MsrResult {
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
    MsrResult { value: 0, faulted: u64::from(faulted) }
}

macro_rules! read_cr {
    ($name:ident, $cr:literal) => {
        pub(crate) extern "C" fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading a control register has no side effect (CPL0 only).
            unsafe { asm!(concat!("mov {}, ", $cr), out(reg) v, options(nomem, nostack, preserves_flags)) };
            v
        }
    };
}

macro_rules! write_cr {
    ($name:ident, $cr:literal) => {
        pub(crate) unsafe extern "C" fn $name(v: u64) {
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

pub(crate) unsafe extern "C" fn load_gdt(p: *const DescriptorTablePointer) {
    // SAFETY: the caller guarantees the table stays valid while loaded.
    unsafe { asm!("lgdt [{}]", in(reg) p, options(readonly, nostack, preserves_flags)) };
}

pub(crate) unsafe extern "C" fn load_idt(p: *const DescriptorTablePointer) {
    // SAFETY: the caller guarantees the table stays valid while loaded.
    unsafe { asm!("lidt [{}]", in(reg) p, options(readonly, nostack, preserves_flags)) };
}

pub(crate) unsafe extern "C" fn load_tr(sel: u16) {
    // SAFETY: the caller guarantees `sel` names an available TSS.
    unsafe { asm!("ltr {:x}", in(reg) sel, options(nostack, preserves_flags)) };
}

pub(crate) extern "C" fn wbinvd() {
    // SAFETY: wbinvd only writes back caches; memory contents are unchanged.
    unsafe { asm!("wbinvd", options(nostack, preserves_flags)) };
}

pub(crate) extern "C" fn io_delay() {
    // SAFETY: port 0x80 is the POST diagnostic port, free to write on PCs.
    unsafe { asm!("out 0x80, al", in("al") 0u8, options(nomem, nostack, preserves_flags)) };
}

core::arch::global_asm!(
    ".pushsection .text.paravirt_native_iret, \"ax\"",
    ".global paravirt_native_iret",
    "paravirt_native_iret:",
    "iretq",
    ".popsection",
);

extern "C" {
    /// `iretq`, for the table: sites jump here only when unpatched.
    #[link_name = "paravirt_native_iret"]
    pub(crate) fn iret() -> !;
}

pub(crate) fn read_tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the time-stamp counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub(crate) extern "C" fn save_flags() -> u64 {
    let f: u64;
    // SAFETY: pushf/pop only copy RFLAGS through the stack.
    unsafe { asm!("pushfq", "pop {}", out(reg) f, options(nomem, preserves_flags)) };
    f
}

pub(crate) unsafe extern "C" fn restore_flags(f: u64) {
    // SAFETY: the caller passes flags saved on this CPU.
    unsafe { asm!("push {}", "popfq", in(reg) f, options(nomem)) };
}

pub(crate) extern "C" fn irq_disable() {
    // SAFETY: masking interrupts cannot break memory safety.
    unsafe { asm!("cli", options(nomem, nostack)) };
}

pub(crate) unsafe extern "C" fn irq_enable() {
    // SAFETY: the caller guarantees a valid IDT.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

pub(crate) unsafe extern "C" fn safe_halt() {
    // SAFETY: the caller guarantees a valid IDT; `sti` delays interrupts by one
    // instruction, so none can slip in before `hlt`.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

pub(crate) extern "C" fn halt() {
    // SAFETY: hlt waits for an interrupt; no memory effect.
    unsafe { asm!("hlt", options(nomem, nostack)) };
}

pub(crate) unsafe extern "C" fn set_entry(entry: *mut u64, value: u64) {
    // SAFETY: the caller guarantees `entry` is a live page-table slot.
    unsafe { core::ptr::write_volatile(entry, value) };
}

pub(crate) unsafe extern "C" fn read_entry(entry: *const u64) -> u64 {
    // SAFETY: the caller guarantees `entry` is a live page-table slot.
    unsafe { core::ptr::read_volatile(entry) }
}

pub(crate) unsafe extern "C" fn set_pte(entry: *mut u64, value: u64, _va: u64) {
    // SAFETY: as set_entry.
    unsafe { core::ptr::write_volatile(entry, value) };
}

pub(crate) unsafe extern "C" fn pte_clear(entry: *mut u64, _va: u64) {
    // SAFETY: as set_entry.
    unsafe { core::ptr::write_volatile(entry, 0) };
}

pub(crate) extern "C" fn flush_tlb_all() {
    // SAFETY: reloading CR3 with its own value only drops non-global TLB entries.
    unsafe { asm!("mov {0}, cr3", "mov cr3, {0}", out(reg) _, options(nostack, preserves_flags)) };
}

pub(crate) extern "C" fn flush_tlb_one(va: u64) {
    // SAFETY: invlpg only drops a TLB entry.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}

// --- console: COM1 16550 ---

const COM1: u16 = 0x3f8;
/// FIFO depth of a 16550A: after THRE, this many bytes may be written blind.
const UART_FIFO: usize = 16;
static COM1_READY: AtomicBool = AtomicBool::new(false);

pub(crate) fn outb(port: u16, v: u8) {
    // SAFETY: only used on the COM1 and debug-exit ports, which have no memory effect.
    unsafe { asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags)) };
}

pub(crate) fn inb(port: u16) -> u8 {
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

pub(crate) extern "C" fn console_write(ptr: *const u8, len: usize) {
    // SAFETY: the console op's contract: `ptr` points at `len` readable bytes.
    let bytes = unsafe { core::slice::from_raw_parts(ptr, len) };
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

/// Writes `status` to the debug-exit port: the VM ends where the device exists.
pub(crate) fn debug_exit(status: u32) {
    // SAFETY: writing the debug-exit port ends the VM where the device exists and is
    // ignored elsewhere.
    unsafe { asm!("out dx, eax", in("dx") DEBUG_EXIT_PORT, in("eax") status, options(nomem, nostack)) };
}

pub(crate) extern "C" fn shutdown(status: u32) -> ! {
    debug_exit(status);
    loop {
        irq_disable();
        halt();
    }
}

pub(crate) extern "C" fn reboot() -> ! {
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

pub(crate) extern "C" fn nop() {}

pub(crate) extern "C" fn pt_notify(_level: u32, _pfn: u64) {}

pub(crate) extern "C" fn flush_tlb_multi(cpus: *const CpuSet, start: u64, end: u64) {
    // SAFETY: the op's caller passes a live set (`mmu::flush_tlb_multi` takes a reference).
    let cpus = unsafe { &*cpus };
    let me = crate::current_cpu();
    let mut others = *cpus;
    others.remove(me);
    crate::ops::mmu::remote_flush(&others, start, end);
    if cpus.contains(me) {
        flush_tlb_range(start, end);
    }
}

/// Flushes `[start, end)` on this CPU; a large range is cheaper as a full flush.
pub(crate) fn flush_tlb_range(start: u64, end: u64) {
    if end.saturating_sub(start) > 64 * 4096 {
        flush_tlb_all();
    } else {
        let mut va = start & !0xfff;
        while va < end {
            flush_tlb_one(va);
            va += 4096;
        }
    }
}

// --- time ---

use core::sync::atomic::AtomicU64;

static TSC_KHZ: AtomicU64 = AtomicU64::new(0);
static BOOT_TSC: AtomicU64 = AtomicU64::new(0);

/// Converts TSC ticks to ns at `khz` without overflow.
pub(crate) fn ticks_to_ns(ticks: u64, khz: u64) -> u64 {
    if khz == 0 {
        return 0;
    }
    ((u128::from(ticks) * 1_000_000) / u128::from(khz)) as u64
}

/// TSC frequency from CPUID leaves 0x15/0x16, else the hypervisor timing leaf
/// 0x40000010, else 0 (unknown).
pub(crate) fn tsc_khz_from_cpuid(cpuid: impl Fn(u32, u32) -> CpuidResult) -> u64 {
    let max = cpuid(0, 0).eax;
    if max >= 0x15 {
        let l = cpuid(0x15, 0);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax) / 1000;
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16, 0).eax & 0xffff;
        if mhz != 0 {
            return u64::from(mhz) * 1000;
        }
    }
    let hv = cpuid(0x4000_0000, 0).eax;
    if (0x4000_0010..0x4001_0000).contains(&hv) {
        let khz = cpuid(0x4000_0010, 0).eax;
        if khz != 0 {
            return u64::from(khz);
        }
    }
    0
}

/// PIT input clock.
const PIT_HZ: u64 = 1_193_182;

/// Channel 0's current count (latch, then low and high byte).
fn pit_count() -> u16 {
    outb(0x43, 0x00);
    let lo = inb(0x40);
    let hi = inb(0x40);
    u16::from_le_bytes([lo, hi])
}

/// TSC kHz measured against ~10 ms of PIT channel 0 counting down in mode 0 (it
/// needs neither the gate nor the speaker port, which microVMs lack), or 0 when
/// there is no PIT. The one interrupt mode 0 raises at terminal count arrives
/// while the legacy PIC is masked (the kernel masks it at boot).
fn calibrate_tsc_with_pit() -> u64 {
    const SPAN: u16 = (PIT_HZ / 100) as u16; // 10 ms
    outb(0x43, 0x30); // channel 0, lobyte/hibyte, mode 0
    outb(0x40, 0xff);
    outb(0x40, 0xff);
    let c0 = pit_count();
    let t0 = read_tsc();
    let mut polls = 0u32;
    loop {
        let c = pit_count();
        let elapsed = c0.wrapping_sub(c);
        if (SPAN..0x8000).contains(&elapsed) {
            let ticks = read_tsc() - t0;
            return ticks * PIT_HZ / u64::from(elapsed) / 1000;
        }
        polls += 1;
        if polls > 1_000_000 {
            return 0; // the count never moved: no PIT
        }
    }
}

/// Tells the native clock the TSC frequency a backend learned from its hypervisor,
/// so it need not calibrate.
pub(crate) fn seed_tsc_khz(khz: u64) {
    TSC_KHZ.store(khz, Ordering::Relaxed);
}

/// No paravirtual timer on bare hardware: the kernel programs its local APIC.
pub(crate) extern "C" fn set_timer(_deadline_ns: u64, _vector: u32) -> bool {
    false
}

pub(crate) extern "C" fn tsc_khz() -> u64 {
    let cached = TSC_KHZ.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let mut khz = tsc_khz_from_cpuid(|l, s| cpuid(l, s));
    if khz == 0 {
        khz = calibrate_tsc_with_pit();
    }
    if khz == 0 {
        khz = 1_000_000; // last resort: assume 1 GHz rather than divide by zero
    }
    TSC_KHZ.store(khz, Ordering::Relaxed);
    khz
}

pub(crate) extern "C" fn clock_ns() -> u64 {
    ticks_to_ns(read_tsc(), tsc_khz())
}

pub(crate) extern "C" fn sched_clock() -> u64 {
    let now = read_tsc();
    let _ = BOOT_TSC.compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    ticks_to_ns(now - BOOT_TSC.load(Ordering::Relaxed), tsc_khz())
}

pub(crate) extern "C" fn steal_clock(_cpu: u32) -> u64 {
    0
}

fn cmos(reg: u8) -> u8 {
    outb(0x70, reg);
    inb(0x71)
}

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub(crate) extern "C" fn wall_clock() -> crate::ops::time::WallClock {
    use crate::ops::time::WallClock;
    // No RTC answers all-ones (status A can never be 0xff on a real one).
    if cmos(0x0a) == 0xff {
        return WallClock::default();
    }
    // Wait for the end of an update cycle, then read twice until stable.
    let read = || {
        let mut spins = 0;
        while cmos(0x0a) & 0x80 != 0 && spins < 100_000 {
            spins += 1;
        }
        [cmos(0x00), cmos(0x02), cmos(0x04), cmos(0x07), cmos(0x08), cmos(0x09), cmos(0x0b)]
    };
    let mut r = read();
    for _ in 0..4 {
        let again = read();
        if again == r {
            break;
        }
        r = again;
    }
    let [sec, min, hour, day, mon, year, status_b] = r;
    if [sec, min, hour, day, mon, year] == [0xff; 6] {
        return WallClock::default(); // no RTC here
    }
    let bcd = status_b & 0x04 == 0;
    let conv = |v: u8| if bcd { (v & 0x0f) + (v >> 4) * 10 } else { v };
    let pm = hour & 0x80 != 0 && status_b & 0x02 == 0;
    let mut h = conv(hour & 0x7f);
    if status_b & 0x02 == 0 {
        h %= 12;
        if pm {
            h += 12;
        }
    }
    let (s, mi, d, mo, y) = (conv(sec), conv(min), conv(day), conv(mon), conv(year));
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return WallClock::default();
    }
    let days = days_from_civil(2000 + i64::from(y), u32::from(mo), u32::from(d));
    let secs = days * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s);
    WallClock { secs: secs.max(0) as u64, nsecs: 0 }
}

// --- apic (xAPIC, MMIO) ---

const IA32_APIC_BASE: u32 = 0x1b;
const APIC_EOI: u64 = 0xb0;
const APIC_ICR_LOW: u64 = 0x300;
const APIC_ICR_HIGH: u64 = 0x310;
static APIC_BASE: AtomicU64 = AtomicU64::new(0);

fn apic_base() -> u64 {
    let b = APIC_BASE.load(Ordering::Relaxed);
    if b != 0 {
        return b;
    }
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    let b = unsafe { read_msr(IA32_APIC_BASE) } & 0x000f_ffff_ffff_f000;
    APIC_BASE.store(b, Ordering::Relaxed);
    b
}

fn apic_write(reg: u64, v: u32) {
    // SAFETY: the local APIC page is identity-mapped by the kernel; the register
    // offsets are architectural (SDM vol. 3, table 11-1).
    unsafe { core::ptr::write_volatile((apic_base() + reg) as *mut u32, v) };
}

fn apic_read(reg: u64) -> u32 {
    // SAFETY: as apic_write.
    unsafe { core::ptr::read_volatile((apic_base() + reg) as *const u32) }
}

pub(crate) extern "C" fn apic_eoi() {
    apic_write(APIC_EOI, 0);
}

pub(crate) extern "C" fn send_ipi(cpu: u32, vector: u32) {
    apic_write(APIC_ICR_HIGH, crate::cpus::apic_id(cpu) << 24);
    // Fixed delivery, physical destination, assert.
    apic_write(APIC_ICR_LOW, (vector & 0xff) | (1 << 14));
    while apic_read(APIC_ICR_LOW) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
}

pub(crate) extern "C" fn send_ipi_mask(cpus: *const CpuSet, vector: u32) {
    // SAFETY: the op's caller passes a live set (`apic::send_ipi_mask` takes a reference).
    for cpu in unsafe { &*cpus }.iter() {
        send_ipi(cpu, vector);
    }
}

// --- lock ---

pub(crate) extern "C" fn lock_wait(_byte: *const u8, _value: u8) {}

pub(crate) extern "C" fn lock_kick(_cpu: u32) {}

pub(crate) extern "C" fn lock_yield_to(_cpu: u32) {
    core::hint::spin_loop();
}

pub(crate) extern "C" fn vcpu_is_preempted(_cpu: u32) -> u64 {
    0
}
