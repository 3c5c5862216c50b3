//! The op table: one struct of function pointers per group, one global instance.
//!
//! The table is written only while one CPU runs and nothing reads it concurrently
//! (boot, before secondary CPUs start); afterwards it is read-only. That is the same
//! discipline as Linux's `pv_ops`.

use core::cell::UnsafeCell;

use crate::ops::{console::ConsoleOps, cpu::CpuOps, irq::IrqOps, mmu::MmuOps, power::PowerOps};

/// All op groups.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct PvOps {
    /// CPU state: cpuid, MSRs, control and descriptor-table registers.
    pub cpu: CpuOps,
    /// Interrupt flag and halting.
    pub irq: IrqOps,
    /// Page tables and TLB.
    pub mmu: MmuOps,
    /// Early console.
    pub console: ConsoleOps,
    /// Shutdown and reboot.
    pub power: PowerOps,
}

impl PvOps {
    /// The native table: every op is the bare instruction.
    pub const NATIVE: PvOps = PvOps {
        cpu: CpuOps::NATIVE,
        irq: IrqOps::NATIVE,
        mmu: MmuOps::NATIVE,
        console: ConsoleOps::NATIVE,
        power: PowerOps::NATIVE,
    };
}

/// Holder of the global table.
#[repr(transparent)]
pub struct OpsCell(UnsafeCell<PvOps>);

// SAFETY: the table is mutated only through `OpsCell::install`, whose contract
// (one CPU, no concurrent readers) rules out data races; all other access reads.
unsafe impl Sync for OpsCell {}

impl OpsCell {
    /// Reads the current table.
    #[inline(always)]
    pub fn get(&self) -> &PvOps {
        // SAFETY: writes happen only under `install`'s contract, so no write can
        // overlap this shared borrow.
        unsafe { &*self.0.get() }
    }

    /// Replaces the table.
    ///
    /// # Safety
    /// Only one CPU may be running, and no other reference to the table may be live
    /// (call it at boot, before secondary CPUs start and before patching).
    pub unsafe fn install(&self, ops: PvOps) {
        // SAFETY: the caller guarantees exclusive access.
        unsafe { *self.0.get() = ops };
    }
}

/// The global op table every API call goes through.
pub static PV_OPS: OpsCell = OpsCell(UnsafeCell::new(PvOps::NATIVE));

/// The current table.
#[inline(always)]
pub fn ops() -> &'static PvOps {
    PV_OPS.get()
}
