//! The VMI personality (`--personality vmi`): pvrun serves VMI/64, VMware's
//! VMI API 3.0 re-created for x86-64, as an option ROM in the guest. The
//! contract is `docs/abi/vmi.md`; the wire types are `pvabi::vmi`.
//!
//! The kernel runs at CPL0 on the usual PVH VM (in-kernel irqchip and PIT);
//! what differs is the ROM at 0xC0000 and what pvrun does at its exits:
//! - [`rom`]: the ROM image, both flavours of every call, and its tables;
//! - [`calls`]: the trap flavour's calls, served on plain registers and
//!   memory (page-table updates checked and counted, interrupt flag, control
//!   registers, cycle counters, alarms, power);
//! - [`alarm`]: the alarm, a thread that raises the interrupt at its expiry;
//! - [`runtime`]: the glue to the vCPU and the run loop.
//!
//! The trap flavour's data page (lazy mode, deferred queue) is one page, so
//! that flavour is uniprocessor; the native flavour keeps no state and runs
//! any number of vCPUs.

pub mod alarm;
pub mod calls;
pub mod rom;
pub mod runtime;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use kvm_bindings::kvm_cpuid_entry2;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub use rom::{Corruption, Flavour};

use crate::vm::SetupError;
use alarm::AlarmClock;

/// What the trap flavour counts (shown by `--stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Exits through the ROM's trap port.
    pub traps: u64,
    /// Page-table updates pvrun was told of.
    pub updates: u64,
    /// Of them, told late, from the ROM's queue.
    pub deferred: u64,
    /// Alarms that fired.
    pub alarms: u64,
}

/// The VMI state of the guest, as the trap flavour serves it.
#[derive(Debug)]
pub struct Vmi {
    mem: GuestMemoryMmap,
    /// Guest RAM as (start, length).
    ram: Vec<(u64, u64)>,
    /// What `CPUID` answers from.
    cpuid: Vec<kvm_cpuid_entry2>,
    /// Frames the guest registered as page-table pages, and their level flag.
    page_tables: HashMap<u64, u64>,
    alarm: Box<dyn AlarmClock>,
    /// Cycles per second (the TSC's rate).
    cycle_hz: u64,
    /// The vCPU thread's run delay (ns) when stolen time was first asked for.
    stolen_base: Option<u64>,
    usage: Usage,
}

/// Writes the ROM (and a zeroed data page after it) into guest memory.
pub fn install_rom(
    mem: &GuestMemoryMmap,
    flavour: Flavour,
    cycle_hz: u64,
    corruption: Option<Corruption>,
) -> Result<(), SetupError> {
    let image = rom::image(flavour, cycle_hz, corruption);
    let write = |bytes: &[u8], at: u64| {
        mem.write_slice(bytes, GuestAddress(at)).map_err(|e| SetupError::VmiRom(e.to_string()))
    };
    write(&image, rom::ROM_ADDRESS)?;
    write(&[0u8; 4096], rom::DATA_ADDRESS)
}

impl Vmi {
    /// The trap flavour's state for a guest with `ram`, answering CPUID from
    /// `cpuid` and raising alarms through `alarm`.
    pub fn new(
        mem: GuestMemoryMmap,
        ram: Vec<(u64, u64)>,
        cpuid: Vec<kvm_cpuid_entry2>,
        cycle_hz: u64,
        alarm: Box<dyn AlarmClock>,
    ) -> Self {
        Vmi {
            mem,
            ram,
            cpuid,
            page_tables: HashMap::new(),
            alarm,
            cycle_hz,
            stolen_base: None,
            usage: Usage::default(),
        }
    }

    /// The counters.
    pub fn usage(&self) -> Usage {
        Usage { alarms: self.alarm.fired(), ..self.usage }
    }

    /// Whether `[pa, pa + len)` is guest RAM.
    fn in_ram(&self, pa: u64, len: u64) -> bool {
        self.ram
            .iter()
            .any(|&(start, size)| pa >= start && pa.checked_add(len).is_some_and(|e| e <= start + size))
    }
}
