//! pvrun's bench-marker port: exact guest instruction and exit counts for a code
//! region, from KVM's per-vCPU binary statistics (`insn_emulation`, `exits`).
//!
//! Every access is 32 bits (`out PORT, eax` / `in eax, PORT`); state is per vCPU:
//!
//! | guest does | effect |
//! |------------|--------|
//! | `out` [`RESET`] | forget any START and pending result; the next `in` returns [`MAGIC`] if statistics are available, else 0 |
//! | `out` [`START`] | snapshot this vCPU's `insn_emulation` and `exits` |
//! | `out` [`STOP`] | snapshot again; the deltas become the pending result |
//! | six `in`s after STOP | insn delta low, high; exits delta low, high; served-exits delta low, high |
//! | `in` with nothing pending | `0xffff_ffff` |
//!
//! *Served exits* are the exits pvrun itself handled for the vCPU (port and
//! MMIO accesses, a served ABI's traps), START's own exit not counted: KVM's
//! `exits` also counts exits the host kernel handles without pvrun. A reader
//! may stop after the first four words; the next STOP or RESET drops the rest.
//!
//! Anything else is ignored. Without pvrun the port reads all-ones.

/// The port. Not 0xf5: QEMU's isa-debug-exit at 0xf4 is usually mapped with
/// `iosize=4`, covering 0xf4..=0xf7, and the same kernel runs there.
pub const PORT: u16 = 0xf8;
/// Forget everything; the next read says whether counters exist.
pub const RESET: u32 = 0;
/// Start a region.
pub const START: u32 = 1;
/// End a region.
pub const STOP: u32 = 2;
/// "pvbm", little-endian: counters are available.
pub const MAGIC: u32 = 0x6d62_7670;

/// QEMU's isa-debug-exit port, which pvrun implements too: writing `v` ends the
/// machine with process status `(v << 1) | 1`.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
