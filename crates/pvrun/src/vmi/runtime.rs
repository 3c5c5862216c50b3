//! The glue between [`Vmi`] and the run loop: the ROM's trap port, the
//! registers through `kvm_run`, and the alarm's interrupts through the VM.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::kvm_cpuid_entry2;

use super::alarm::{Alarm, Wire};
use super::calls::{Cpu, Next};
use super::rom::TRAP_PORT;
use super::{install_rom, Corruption, Flavour, Usage, Vmi};
use crate::error::GuestError;
use crate::layout;
use crate::runner::{Death, Flow, RunCtx, ServedAbi, VcpuStop};
use crate::vcpu::Vcpu;
use crate::vm::{SetupError, Vm};

/// The trap flavour of one vCPU, as the run loop drives it.
#[derive(Debug)]
pub struct VmiVcpu {
    vmi: Vmi,
    /// The vCPU thread (`pthread_t`; 0 until it first runs), which the
    /// alarm kicks.
    thread: Arc<AtomicU64>,
}

impl VmiVcpu {
    /// The personality's counters.
    pub fn usage(&self) -> Usage {
        self.vmi.usage()
    }
}

/// Puts the ROM into the guest and, for the trap flavour, readies vCPU 0's
/// side of it: the served calls (returned) and its alarm, which raises its
/// interrupts through `vm`. The native flavour serves nothing at run time.
pub fn setup(
    vm: &Arc<Vm>,
    vcpu: &mut Vcpu,
    cpuid: Vec<kvm_cpuid_entry2>,
    flavour: Flavour,
    corruption: Option<Corruption>,
) -> Result<Option<VmiVcpu>, SetupError> {
    let khz =
        vcpu.tsc_khz().ok_or_else(|| SetupError::VmiRom("KVM does not report the TSC frequency".into()))?;
    let cycle_hz = u64::from(khz) * 1000;
    install_rom(vm.memory(), flavour, cycle_hz, corruption)?;
    if flavour == Flavour::Native {
        return Ok(None);
    }
    vcpu.enable_sync_regs(vm.kvm());
    vcpu.enable_sync_sregs();
    let apic_id = vcpu.index();
    let target = Arc::downgrade(vm);
    let thread = Arc::new(AtomicU64::new(0));
    let kick = thread.clone();
    let alarm = Alarm::start(move |wire| {
        // The VM outlives every alarm that can still fire, except at the end
        // of the run, when a missed alarm no longer matters.
        let Some(vm) = target.upgrade() else { return };
        match wire {
            Wire::Vector(v) => vm.signal_vector(apic_id, v),
            Wire::Irq0 => vm.pulse_irq(0),
        };
        // A vCPU running CPL0 code without exits takes the interrupt only at
        // its next exit (up to ~1.3 ms here): kick it out of KVM_RUN.
        let t = kick.load(Ordering::Acquire);
        if t != 0 {
            // SAFETY: `t` is the vCPU thread's own id, stored by it; that
            // thread owns this alarm, whose drop joins this thread before
            // the vCPU thread can end, so the id is live.
            unsafe { libc::pthread_kill(t as libc::pthread_t, crate::runner::kick_signal()) };
        }
    })
    .map_err(|e| SetupError::VmiRom(format!("cannot start the alarm thread: {e}")))?;
    let ram = layout::ram_regions(vm.mem_bytes());
    let vmi = Vmi::new(vm.memory().clone(), ram, cpuid, cycle_hz, Box::new(alarm));
    Ok(Some(VmiVcpu { vmi, thread }))
}

fn killed(vcpu: &Vcpu, death: Death) -> GuestError {
    GuestError::Killed { vcpu: vcpu.index(), reason: death.0 }
}

impl ServedAbi for VmiVcpu {
    fn counters(&self) -> String {
        let u = self.usage();
        format!("vmi: traps={} updates={} deferred={} alarms={}", u.traps, u.updates, u.deferred, u.alarms)
    }

    fn owns_port(&self, port: u16) -> bool {
        port == TRAP_PORT
    }

    fn port_out(&mut self, vcpu: &mut Vcpu, _port: u16, _ctx: &RunCtx) -> Result<Flow, GuestError> {
        let mut cpu = Cpu { regs: vcpu.sync_regs(), sregs: vcpu.sync_sregs(), sregs_changed: false };
        let next = self.vmi.trap(cpu.regs.rax as u32, &mut cpu).map_err(|d| killed(vcpu, d))?;
        if cpu.sregs_changed && !vcpu.set_sregs(&cpu.sregs) {
            let (cr0, cr4) = (cpu.sregs.cr0, cpu.sregs.cr4);
            return Err(killed(vcpu, Death(format!("vmi: KVM refused CR0 {cr0:#x} / CR4 {cr4:#x}"))));
        }
        vcpu.set_sync_regs(&cpu.regs);
        Ok(match next {
            Next::Resume => Flow::Run,
            Next::Exit(status) => Flow::Stop(VcpuStop::DebugExit(status)),
            Next::Reset => Flow::Stop(VcpuStop::Reset),
        })
    }

    fn before_run(&mut self, _vcpu: &mut Vcpu, _ctx: &RunCtx) -> Result<Flow, GuestError> {
        if self.thread.load(Ordering::Relaxed) == 0 {
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            self.thread.store(me as u64, Ordering::Release);
        }
        Ok(Flow::Run)
    }
}
