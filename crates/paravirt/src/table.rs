//! The op table: one struct of function pointers per group, one global instance
//! (Linux's `pv_ops`). Unpatched sites call through it; the patcher reads it.
//!
//! The table is written only while one CPU runs and nothing reads it concurrently
//! (boot, before secondary CPUs start); afterwards it is read-only.

use core::cell::UnsafeCell;

use crate::ops::{
    apic::ApicOps, console::ConsoleOps, cpu::CpuOps, irq::IrqOps, lock::LockOps, mmu::MmuOps,
    power::PowerOps, time::TimeOps, Op,
};

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
    /// Clocks.
    pub time: TimeOps,
    /// EOI and IPIs.
    pub apic: ApicOps,
    /// Paravirtual spinlock support.
    pub lock: LockOps,
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
        time: TimeOps::NATIVE,
        apic: ApicOps::NATIVE,
        lock: LockOps::NATIVE,
        console: ConsoleOps::NATIVE,
        power: PowerOps::NATIVE,
    };

    /// Address of the function that serves `op` in this table.
    pub fn target(&self, op: Op) -> u64 {
        // SAFETY: PvOps is repr(C) and made only of function pointers; `offset` is
        // the offset of one of them (checked by the patch tests).
        unsafe { core::ptr::read((self as *const PvOps as *const u8).add(op.info().offset) as *const u64) }
    }

    /// Makes the code at `address` serve `op` (a backend whose hypervisor
    /// hands it code addresses: a VMI ROM's calls).
    ///
    /// # Safety
    /// `address` must be a function with `op`'s signature and calling
    /// convention (`extern "C"`, as the op's field has it).
    pub unsafe fn set_target(&mut self, op: Op, address: u64) {
        // SAFETY: as in `target`, `offset` is the offset of `op`'s function
        // pointer; the caller vouches for what it now points at.
        unsafe {
            core::ptr::write((self as *mut PvOps as *mut u8).add(op.info().offset) as *mut u64, address)
        }
    }
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

/// The global op table every unpatched site calls through.
pub static PV_OPS: OpsCell = OpsCell(UnsafeCell::new(PvOps::NATIVE));

/// The current table.
#[inline(always)]
pub fn ops() -> &'static PvOps {
    PV_OPS.get()
}
