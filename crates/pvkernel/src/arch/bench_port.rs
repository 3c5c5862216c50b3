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
    let c = stop_counts();
    (c.insns, c.exits)
}

/// What a region cost, as pvrun counted it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Instructions KVM's emulator ran.
    pub insns: u64,
    /// Exits of the vCPU (KVM's count: the host kernel's own included).
    pub exits: u64,
    /// Exits pvrun itself served (port accesses, a served ABI's traps).
    pub served: u64,
}

/// Marks the end; returns all three counts of the region.
#[inline(always)]
pub fn stop_counts() -> Counts {
    out(STOP);
    let word = || u64::from(inl()) | (u64::from(inl()) << 32);
    Counts { insns: word(), exits: word(), served: word() }
}

/// A write the marker ignores (an unknown command): one VMM round trip.
pub fn ignored_write() {
    out(0xffff_fffe);
}
