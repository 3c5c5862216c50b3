//! The local APIC (xAPIC, MMIO): enabling it and its one-shot timer. EOIs and IPIs
//! go through `paravirt::apic`.

use paravirt::cpu;

/// Vector of the APIC timer.
pub const TIMER_VECTOR: u8 = 0x40;
/// Vector for test IPIs.
pub const TEST_IPI_VECTOR: u8 = 0x41;
/// Vector that runs a cross-CPU call (see `smp::call`).
pub const CALL_VECTOR: u8 = 0x42;
/// Spurious-interrupt vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;

const IA32_APIC_BASE: u32 = 0x1b;
const SVR: u64 = 0xf0;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_DIVIDE: u64 = 0x3e0;

fn base() -> u64 {
    // SAFETY: IA32_APIC_BASE exists on every x86_64 CPU.
    (unsafe { cpu::read_msr(IA32_APIC_BASE) }) & 0x000f_ffff_ffff_f000
}

fn write(reg: u64, v: u32) {
    // SAFETY: the APIC page lies in the identity-mapped first 4 GiB; offsets are
    // architectural (SDM vol. 3, table 11-1).
    unsafe { core::ptr::write_volatile((base() + reg) as *mut u32, v) };
}

/// This CPU's APIC ID (CPUID.1:EBX[31:24]).
pub fn id() -> u32 {
    cpu::cpuid(1, 0).ebx >> 24
}

/// Masks every line of the legacy 8259 PICs, so that nothing but the local APIC
/// delivers interrupts (as kernels do when they use the APIC). Once, at boot.
pub fn mask_legacy_pic() {
    // SAFETY: ports 0x21/0xa1 are the PICs' mask registers; writing 0xff masks all
    // lines and has no memory effect. On machines without a PIC the writes vanish.
    unsafe {
        core::arch::asm!("out 0x21, al", "out 0xa1, al", in("al") 0xffu8, options(nomem, nostack));
    }
}

/// Software-enables the local APIC (when the kernel owns one: not under Xen PV,
/// whose timer and IPIs arrive as events on the same vectors) and installs the
/// vectors' handlers. Once per CPU, before interrupts are enabled.
pub fn init(owns_apic: bool) {
    if owns_apic {
        write(SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
    }
    super::traps::set_irq_handler(TIMER_VECTOR, |_| paravirt::apic::eoi());
    super::traps::set_irq_handler(TEST_IPI_VECTOR, |_| paravirt::apic::eoi());
    super::traps::set_irq_handler(SPURIOUS_VECTOR, |_| {});
}

const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
/// ICR destination shorthand "all excluding self".
const ALL_BUT_SELF: u32 = 0b11 << 18;

fn read(reg: u64) -> u32 {
    // SAFETY: as `write`.
    unsafe { core::ptr::read_volatile((base() + reg) as *const u32) }
}

fn send_icr(low: u32) {
    write(ICR_HIGH, 0);
    write(ICR_LOW, low);
    while read(ICR_LOW) & (1 << 12) != 0 {
        core::hint::spin_loop();
    }
}

fn delay_us(us: u64) {
    let t0 = paravirt::time::clock_ns();
    while paravirt::time::clock_ns() - t0 < us * 1000 {
        core::hint::spin_loop();
    }
}

/// INIT, then two STARTUPs with `vector` (the trampoline's page number), to every
/// other CPU (SDM vol. 3, 8.4.4.1).
pub fn send_init_sipi_all(vector: u8) {
    send_icr(ALL_BUT_SELF | (1 << 14) | (0b101 << 8)); // INIT, assert
    delay_us(10_000);
    for _ in 0..2 {
        send_icr(ALL_BUT_SELF | (0b110 << 8) | u32::from(vector)); // STARTUP
        delay_us(200);
    }
}

/// Fires [`TIMER_VECTOR`] once, `ns` from now: through the platform's
/// paravirtual timer when it has one, else the APIC timer, counted as 1 GHz
/// (the rate of every APIC timer we run on; only "soon" matters to callers).
pub fn arm_timer(ns: u64) {
    if !paravirt::time::set_timer(paravirt::time::clock_ns() + ns, u32::from(TIMER_VECTOR)) {
        one_shot(ns.min(u64::from(u32::MAX)) as u32);
    }
}

/// Fires [`TIMER_VECTOR`] once after `ticks` APIC-timer ticks (divide by 1).
fn one_shot(ticks: u32) {
    write(TIMER_DIVIDE, 0xb);
    write(LVT_TIMER, u32::from(TIMER_VECTOR));
    write(TIMER_INITIAL, ticks);
}
