//! The legacy PIT, read-only: channel 0's count, an exit-based clock to compare
//! paravirtual clocks against.

/// Channel 0's current count (latch, then low and high byte): three port accesses.
pub fn count() -> u16 {
    let (lo, hi): (u8, u8);
    // SAFETY: PIT ports 0x43 (command) and 0x40 (channel 0 data); latching and
    // reading the count changes nothing else. Absent hardware reads all-ones.
    unsafe {
        core::arch::asm!("out 0x43, al", in("al") 0u8, options(nomem, nostack));
        core::arch::asm!("in al, 0x40", out("al") lo, options(nomem, nostack));
        core::arch::asm!("in al, 0x40", out("al") hi, options(nomem, nostack));
    }
    u16::from_le_bytes([lo, hi])
}
