//! VMware's backdoor, served (`--personality vmware`). The contract is
//! `docs/abi/vmware.md` (version 1), the wire constants `pvabi::vmware`.
//!
//! The guest sees the "VMwareVMware" signature at 0x40000000 and the timing
//! leaf 0x40000010 (see [`crate::cpuid`]); every other privileged operation
//! stays KVM's, as on a VMware host it stays the hardware's. What runs here:
//!
//! - [`commands`]: the backdoor's commands, a pure function of the registers
//!   and the host's facts;
//! - [`steal`]: the per-vCPU steal clocks and the thread that keeps them;
//! - this module: the glue — a 32-bit `in` from port 0x5658 exits to pvrun,
//!   the registers come and go through `kvm_run`, EAX through the exit's
//!   data.

pub mod commands;
pub mod steal;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use pvabi::vmware as abi;

use self::commands::{Host, Regs, Steal};
use self::steal::StealClocks;
use crate::error::GuestError;
use crate::runner::{Flow, RunCtx, ServedAbi};
use crate::vcpu::Vcpu;
use crate::vm::{Vm, KVM_APIC_BUS_KHZ};

/// One vCPU's side of the backdoor.
#[derive(Debug)]
pub struct VmwareVcpu {
    index: u8,
    host: Host,
    clocks: Arc<StealClocks>,
    /// Calls answered, calls answered "unsupported", steal-clock
    /// registrations taken and refused.
    calls: u64,
    unsupported: u64,
    steal_enabled: u64,
    steal_refused: u64,
}

/// Readies `vcpu`'s side: its registers through `kvm_run`, the host facts
/// (`tsc_khz` 0 when KVM cannot say: then no GETHZ and no steal clock; no
/// steal clock either where the host keeps no schedstats) and the VM's
/// shared steal clocks.
pub fn setup(vm: &Vm, vcpu: &mut Vcpu, tsc_khz: u32, clocks: &Arc<StealClocks>) -> VmwareVcpu {
    vcpu.enable_sync_regs(vm.kvm());
    let steal = crate::schedstat::this_thread_run_delay().is_some();
    let host = Host { tsc_khz, apic_khz: KVM_APIC_BUS_KHZ, mem_bytes: vm.mem_bytes(), steal, now: (0, 0) };
    VmwareVcpu {
        index: vcpu.index(),
        host,
        clocks: clocks.clone(),
        calls: 0,
        unsupported: 0,
        steal_enabled: 0,
        steal_refused: 0,
    }
}

/// The host's wall clock: seconds and microseconds since the Unix epoch.
fn now() -> (u64, u32) {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (t.as_secs(), t.subsec_micros())
}

impl ServedAbi for VmwareVcpu {
    fn owns_port(&self, port: u16) -> bool {
        port == abi::PORT
    }

    /// Writes to the port mean nothing in this ABI: ignored, as VMware does.
    fn port_out(&mut self, _vcpu: &mut Vcpu, _port: u16, _ctx: &RunCtx) -> Result<Flow, GuestError> {
        self.unsupported += 1;
        Ok(Flow::Run)
    }

    fn port_in(&mut self, vcpu: &mut Vcpu, _port: u16, size: u8, _ctx: &RunCtx) -> Result<u32, GuestError> {
        // The backdoor is a 32-bit read; narrower ones read an unclaimed port.
        if size != 4 {
            self.unsupported += 1;
            return Ok(abi::UNSUPPORTED);
        }
        let mut kvm = vcpu.sync_regs();
        let low = |r: u64| r as u32;
        let before = Regs {
            eax: low(kvm.rax),
            ebx: low(kvm.rbx),
            ecx: low(kvm.rcx),
            edx: low(kvm.rdx),
            esi: low(kvm.rsi),
            edi: low(kvm.rdi),
        };
        let mut r = before;
        self.host.now = now();
        let out = commands::call(&mut r, &self.host);
        match out.steal {
            Some(Steal::Enable(gpa)) => match self.clocks.enable(self.index, gpa) {
                Ok(()) => self.steal_enabled += 1,
                Err(_) => {
                    self.steal_refused += 1;
                    r.eax = abi::stealclock::DISABLED;
                }
            },
            Some(Steal::Disable) => self.clocks.disable(self.index),
            None => {}
        }
        if out.served.is_some() {
            self.calls += 1;
        } else {
            self.unsupported += 1;
        }
        // The registers as 32-bit writes leave them: zero-extended. EAX goes
        // through the exit's data; when the others change too, it also goes
        // with them (the registers set through kvm_run land after the read
        // completes on some hosts, and would undo it).
        if (r.ebx, r.ecx, r.edx, r.esi, r.edi) != (before.ebx, before.ecx, before.edx, before.esi, before.edi)
        {
            kvm.rax = u64::from(r.eax);
            kvm.rbx = u64::from(r.ebx);
            kvm.rcx = u64::from(r.ecx);
            kvm.rdx = u64::from(r.edx);
            kvm.rsi = u64::from(r.esi);
            kvm.rdi = u64::from(r.edi);
            vcpu.set_sync_regs(&kvm);
        }
        Ok(r.eax)
    }

    fn before_run(&mut self, _vcpu: &mut Vcpu, _ctx: &RunCtx) -> Result<Flow, GuestError> {
        Ok(Flow::Run)
    }

    fn counters(&self) -> String {
        let mut line = format!(
            "vmware: calls={} unsupported={} steal_enabled={} steal_refused={}",
            self.calls, self.unsupported, self.steal_enabled, self.steal_refused
        );
        if self.index == 0 {
            line.push_str(&format!(" steal_updates={} (all vCPUs)", self.clocks.updates()));
        }
        line
    }
}
