//! The glue between [`Lguest`] and the run loop: the switcher's two exit
//! ports, delivery before each entry, and HALT.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_regs;

use super::clock::nap;
use super::hcalls::canonical;
use super::switcher::{HCALL_PORT, TRAP_PORT};
use super::traps::{CpuAccess, Resume};
use super::{Completion, Lguest, Next, Usage};
use crate::error::GuestError;
use crate::runner::{Flow, RunCtx, ServedAbi, VcpuStop};
use crate::vcpu::Vcpu;

/// How long HALT sleeps between looks at the stop flag when no deadline is near.
const HALT_NAP: Duration = Duration::from_millis(50);

/// MSR numbers pvrun serves on #GP.
const IA32_EFER: u32 = 0xc000_0080;
const IA32_FS_BASE: u32 = 0xc000_0100;
const IA32_GS_BASE: u32 = 0xc000_0101;
const IA32_KERNEL_GS_BASE: u32 = 0xc000_0102;

/// The lguest personality of one vCPU, as the run loop drives it.
#[derive(Debug)]
pub struct LguestVcpu {
    lg: Lguest,
    kick_signal: i32,
    attached: bool,
}

impl LguestVcpu {
    /// Serves `lg` on the vCPU whose thread gets `kick_signal` from the clock.
    pub fn new(lg: Lguest, kick_signal: i32) -> Self {
        LguestVcpu { lg, kick_signal, attached: false }
    }

    /// The personality's counters.
    pub fn usage(&self) -> Usage {
        self.lg.usage()
    }

    fn killed(vcpu: &Vcpu, reason: super::Death) -> GuestError {
        GuestError::Killed { vcpu: vcpu.index(), reason: reason.0 }
    }

    /// Sleeps until an interrupt can be delivered (or the run stops), then
    /// re-enables interrupts as 4.13's host did on wake-up.
    fn halt(&mut self, ctx: &RunCtx) {
        loop {
            if ctx.stop.load(Ordering::Acquire) {
                return;
            }
            if self.lg.clock().expired() {
                self.lg.raise(0);
            }
            if self.lg.deliverable() != 0 {
                self.lg.wake();
                return;
            }
            let nap_for = self
                .lg
                .clock()
                .deadline()
                .map_or(HALT_NAP, |d| d.saturating_duration_since(Instant::now()).min(HALT_NAP));
            nap(nap_for);
        }
    }

    fn complete(&mut self, regs: &mut kvm_regs) {
        let e = *self.lg.entries();
        (regs.rip, regs.rax) = match self.lg.take_completion() {
            Completion::None => return,
            Completion::Invlpg(va) => (e.invlpg, va),
            Completion::FlushAll => (e.flush_all, regs.rax),
            Completion::LoadCr3(root) => (e.load_cr3, root),
        };
    }
}

impl ServedAbi for LguestVcpu {
    fn counters(&self) -> String {
        let u = self.usage();
        format!(
            "lguest: hypercalls={} async_calls={} traps={} msrs={} interrupts={}",
            u.hypercalls, u.async_calls, u.traps, u.msrs, u.interrupts
        )
    }

    fn owns_port(&self, port: u16) -> bool {
        port == HCALL_PORT || port == TRAP_PORT
    }

    fn port_out(&mut self, vcpu: &mut Vcpu, port: u16, ctx: &RunCtx) -> Result<Flow, GuestError> {
        let mut regs = vcpu.sync_regs();
        let outcome = if port == HCALL_PORT {
            self.lg.hypercall(&mut regs)
        } else {
            self.lg.trap(&mut regs, &mut KvmCpu(vcpu)).map(|()| Next::Resume)
        };
        let next = outcome.map_err(|d| Self::killed(vcpu, d))?;
        let console = self.lg.take_console();
        if !console.is_empty() {
            ctx.console(vcpu.index(), &console);
        }
        match next {
            Next::Resume => {}
            Next::Halt => self.halt(ctx),
            Next::PowerOff(reason) => return Ok(Flow::Stop(VcpuStop::PowerOff(reason))),
            Next::Restart(_) => return Ok(Flow::Stop(VcpuStop::Reset)),
        }
        if port == HCALL_PORT {
            self.complete(&mut regs);
        }
        // At either exit the vCPU returns through the frame at RSP.
        let rsp = regs.rsp;
        self.lg.deliver_pending(&mut regs, Resume::Frame(rsp)).map_err(|d| Self::killed(vcpu, d))?;
        vcpu.set_sync_regs(&regs);
        Ok(Flow::Run)
    }

    fn before_run(&mut self, vcpu: &mut Vcpu, _ctx: &RunCtx) -> Result<Flow, GuestError> {
        if !self.attached {
            // On the vCPU thread: the clock's timer signals this thread.
            self.lg.clock().attach(self.kick_signal);
            self.attached = true;
        }
        if self.lg.clock().expired() {
            self.lg.raise(0);
        }
        if self.lg.deliverable() == 0 {
            return Ok(Flow::Run);
        }
        let mut regs = vcpu.sync_regs();
        let entries = *self.lg.entries();
        let at = if !entries.contains(regs.rip) {
            Resume::Regs
        } else if entries.frame_at_rsp(regs.rip) {
            Resume::Frame(regs.rsp)
        } else {
            // On its way to an exit in the switcher: delivery happens there.
            return Ok(Flow::Run);
        };
        if self.lg.deliver_pending(&mut regs, at).map_err(|d| Self::killed(vcpu, d))? {
            vcpu.set_sync_regs(&regs);
        }
        Ok(Flow::Run)
    }
}

/// CR2 and the MSRs pvrun serves, from the vCPU through KVM.
struct KvmCpu<'a>(&'a mut Vcpu);

impl CpuAccess for KvmCpu<'_> {
    fn cr2(&mut self) -> u64 {
        self.0.sregs().map_or(0, |s| s.cr2)
    }

    fn read_msr(&mut self, msr: u32) -> Option<u64> {
        match msr {
            IA32_EFER => self.0.sregs().map(|s| s.efer),
            IA32_FS_BASE => self.0.sregs().map(|s| s.fs.base),
            IA32_GS_BASE => self.0.sregs().map(|s| s.gs.base),
            IA32_KERNEL_GS_BASE => self.0.msr(msr),
            _ => None,
        }
    }

    fn write_msr(&mut self, msr: u32, value: u64) -> bool {
        match msr {
            // Writing EFER back unchanged is allowed; changing it is not.
            IA32_EFER => self.0.sregs().is_some_and(|s| s.efer == value),
            IA32_FS_BASE | IA32_GS_BASE if canonical(value) => {
                let Some(mut s) = self.0.sregs() else { return false };
                if msr == IA32_FS_BASE {
                    s.fs.base = value;
                } else {
                    s.gs.base = value;
                }
                self.0.set_sregs(&s)
            }
            IA32_KERNEL_GS_BASE if canonical(value) => self.0.set_msr(msr, value),
            _ => false,
        }
    }
}
