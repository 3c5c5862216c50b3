//! The lguest personality (`--personality lguest`): pvrun serves lguest64, Linux
//! 4.13's lguest ABI re-created for x86-64, to a kernel that runs in ring 3. The
//! contract is `docs/abi/lguest.md`; the wire types are `pvabi::lguest`.
//!
//! Who does what:
//! - [`switcher`]: the only CPL0 code, a few instructions that turn ring-3
//!   traps into exits to pvrun and return.
//! - [`boot`]: guest-physical layout, zero page, boot page tables, entry state.
//! - [`hcalls`]: the hypercalls and the async ring, with lguest's "sudden
//!   death" for anything invalid.
//! - [`traps`]: exceptions reflected to the guest's handlers, interrupts
//!   delivered by the lguest rules, the MSRs served on #GP.
//! - [`clock`]: the one-shot clock event (IRQ 0) and HALT's sleep.
//! - [`runtime`]: the glue to the vCPU and the run loop.
//!
//! lguest was uniprocessor (its async ring and interrupt model are), so is this
//! personality.

pub mod boot;
pub mod clock;
pub mod hcalls;
pub mod runtime;
pub mod switcher;
#[cfg(test)]
mod tests;
pub mod traps;

use kvm_bindings::kvm_cpuid_entry2;
use vm_memory::GuestMemoryMmap;

use pvabi::lguest::FIRST_EXTERNAL_VECTOR;

use boot::Layout;
use clock::Clock;
use switcher::Entries;

pub(crate) use crate::runner::{die, Death};

/// A handler the guest registered with `LOAD_IDT_ENTRY`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handler {
    /// Its address.
    pub address: u64,
    /// An interrupt gate (delivery clears `irq_enabled`), not a trap gate.
    pub interrupt_gate: bool,
}

/// What the vCPU does on its way back from a hypercall: a TLB operation only
/// CPL0 can do, run by one of the switcher's completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Nothing.
    None,
    /// `invlpg` of one address.
    Invlpg(u64),
    /// Reload CR3 (drops every non-global translation).
    FlushAll,
    /// Load this CR3.
    LoadCr3(u64),
}

impl Completion {
    /// The one completion that covers both.
    pub fn merge(self, other: Completion) -> Completion {
        use Completion::*;
        match (self, other) {
            (_, LoadCr3(root)) | (LoadCr3(root), _) => LoadCr3(root),
            (None, c) | (c, None) => c,
            (Invlpg(a), Invlpg(b)) if a == b => Invlpg(a),
            _ => FlushAll,
        }
    }
}

/// What the run loop does after a hypercall or trap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run the guest.
    Resume,
    /// Sleep until an interrupt can be delivered (`HALT`).
    Halt,
    /// The guest powered off, with its reason.
    PowerOff(String),
    /// The guest asked for a restart, with its reason.
    Restart(String),
}

impl Next {
    /// The stronger of two outcomes: an ending beats a halt beats running on.
    pub fn then(self, other: Next) -> Next {
        match (&self, &other) {
            (Next::PowerOff(_) | Next::Restart(_), _) => self,
            (_, Next::PowerOff(_) | Next::Restart(_)) => other,
            (Next::Halt, _) | (_, Next::Halt) => Next::Halt,
            _ => Next::Resume,
        }
    }
}

/// What the personality counts (shown by `--stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Synchronous hypercalls (traps through vector 4).
    pub hypercalls: u64,
    /// Calls run from the async ring.
    pub async_calls: u64,
    /// Exceptions reflected to the guest.
    pub traps: u64,
    /// `rdmsr`/`wrmsr` emulated on #GP.
    pub msrs: u64,
    /// Interrupts delivered.
    pub interrupts: u64,
}

/// The lguest state of the (one) vCPU and its guest.
#[derive(Debug)]
pub struct Lguest {
    mem: GuestMemoryMmap,
    layout: Layout,
    entries: Entries,
    /// The PML4 entry that maps the switcher, written into every new root.
    switcher_entry: u64,
    /// What `LHCALL_CPUID` answers from.
    cpuid: Vec<kvm_cpuid_entry2>,
    tsc_khz: u32,
    /// `lguest_data`'s guest-physical address, once registered.
    data: Option<u64>,
    /// The host's ring cursor (4.13's `next_hcall`).
    next_hcall: usize,
    idt: Vec<Option<Handler>>,
    /// Bit n: IRQ n waits for delivery.
    irqs_pending: u32,
    noirq_iret: u64,
    /// The root the vCPU runs on (or will, after the pending completion).
    cr3: u64,
    clock: Clock,
    completion: Completion,
    /// Console bytes the guest wrote, for the run loop to pass on.
    console: Vec<u8>,
    usage: Usage,
}

impl Lguest {
    /// The state of a guest at its entry: no `lguest_data` yet, on the boot page
    /// tables. `cpuid` is the table the VM's vCPU was given.
    pub fn new(
        mem: GuestMemoryMmap,
        layout: Layout,
        switcher_entry: u64,
        cpuid: Vec<kvm_cpuid_entry2>,
        tsc_khz: u32,
    ) -> Self {
        let cr3 = layout.boot_pml4();
        Lguest {
            mem,
            layout,
            entries: Entries::new(),
            switcher_entry,
            cpuid,
            tsc_khz,
            data: None,
            next_hcall: 0,
            idt: vec![None; 256],
            irqs_pending: 0,
            noirq_iret: 0,
            cr3,
            clock: Clock::default(),
            completion: Completion::None,
            console: Vec::new(),
            usage: Usage::default(),
        }
    }

    /// The counters.
    pub fn usage(&self) -> Usage {
        self.usage
    }

    /// Takes the completion the last hypercalls asked for.
    pub fn take_completion(&mut self) -> Completion {
        std::mem::replace(&mut self.completion, Completion::None)
    }

    /// Takes the console bytes written since the last call.
    pub fn take_console(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.console)
    }

    /// Where the switcher's code points are.
    pub fn entries(&self) -> &Entries {
        &self.entries
    }

    /// The clock event.
    pub fn clock(&mut self) -> &mut Clock {
        &mut self.clock
    }

    /// Marks IRQ `irq` pending (the clock event raises IRQ 0).
    pub fn raise(&mut self, irq: u32) {
        self.irqs_pending |= 1 << irq;
    }

    /// The vector IRQ `irq` arrives at.
    pub fn irq_vector(irq: u32) -> u8 {
        FIRST_EXTERNAL_VECTOR + irq as u8
    }
}

/// Sets up the lguest personality on vCPU 0 of a VM of `mem_bytes` built
/// without an in-kernel irqchip: writes the switcher, boot page tables and
/// zero page (with `cmdline`), puts the vCPU at the switcher's first return to
/// ring 3 with `entry` as its target, and returns what the run loop drives.
pub fn setup(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kvm: &kvm_ioctls::Kvm,
    vcpu: &mut crate::vcpu::Vcpu,
    cpuid: &[kvm_cpuid_entry2],
    entry: u64,
    cmdline: &str,
) -> Result<runtime::LguestVcpu, crate::vm::SetupError> {
    use crate::vm::SetupError;
    let layout = Layout::new(mem_bytes);
    let switcher_entry = boot::write(mem, &layout, cmdline).map_err(SetupError::LguestBoot)?;
    let rsp = boot::write_entry_frame(mem, &layout, entry).map_err(SetupError::LguestBoot)?;
    vcpu.set_cpuid(cpuid)?;
    vcpu.reset_fpu()?;
    vcpu.set_state(|sregs| boot::entry_state(sregs, &layout, rsp))?;
    vcpu.enable_sync_regs(kvm);
    let tsc_khz = vcpu.tsc_khz().unwrap_or(0);
    let lg = Lguest::new(mem.clone(), layout, switcher_entry, cpuid.to_vec(), tsc_khz);
    Ok(runtime::LguestVcpu::new(lg, crate::runner::kick_signal()))
}
