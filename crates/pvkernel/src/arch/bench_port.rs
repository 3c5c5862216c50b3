//! pvrun's bench marker port: exact guest instruction and exit counts for a code
//! region, from KVM's per-vCPU statistics (protocol: `pvabi::bench`).

use pvabi::bench::{MAGIC, PORT, RESET, START, STOP};

fn out(v: u32) {
    // SAFETY: port 0xf8 is pvrun's marker port; elsewhere the write goes nowhere.
    unsafe { core::arch::asm!("out dx, eax", in("dx") PORT, in("eax") v, options(nomem, nostack)) };
}

fn inl() -> u32 {
    let v: u32;
    // SAFETY: as `out`; an absent port reads all-ones.
    unsafe { core::arch::asm!("in eax, dx", in("dx") PORT, out("eax") v, options(nomem, nostack)) };
    v
}

/// Whether exact counters are available here.
pub fn present() -> bool {
    out(RESET);
    inl() == MAGIC
}

/// Marks the start of a measured region.
#[inline(always)]
pub fn start() {
    out(START);
}

/// Marks the end; returns (instructions, exits) of the region when counted.
#[inline(always)]
pub fn stop() -> (u64, u64) {
    out(STOP);
    let words = [inl(), inl(), inl(), inl()];
    (u64::from(words[0]) | (u64::from(words[1]) << 32), u64::from(words[2]) | (u64::from(words[3]) << 32))
}
