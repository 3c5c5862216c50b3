//! pvrun's bench marker port (0xf8): exact guest instruction and exit counts for a
//! code region, from KVM's per-vCPU statistics. Protocol (crates/pvrun/README.md):
//! `out` 0 = reset (the next `in` returns the magic when counters exist), 1 = start,
//! 2 = stop; after a stop four `in`s return insn low/high and exits low/high.

const PORT: u16 = 0xf8;
const MAGIC: u32 = 0x6d62_7670; // "pvbm"

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
    out(0);
    inl() == MAGIC
}

/// Marks the start of a measured region.
#[inline(always)]
pub fn start() {
    out(1);
}

/// Marks the end; returns (instructions, exits) of the region when counted.
#[inline(always)]
pub fn stop() -> (u64, u64) {
    out(2);
    let words = [inl(), inl(), inl(), inl()];
    (u64::from(words[0]) | (u64::from(words[1]) << 32), u64::from(words[2]) | (u64::from(words[3]) << 32))
}
