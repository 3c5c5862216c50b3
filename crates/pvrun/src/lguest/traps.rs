//! Exceptions and interrupts, lguest's way (4.13 `interrupts_and_traps.c`):
//! pvrun writes the interrupt frame onto the guest's stack itself and points
//! the vCPU at the handler the guest registered, honouring `irq_enabled`,
//! `blocked_interrupts`, `irq_pending` and `noirq_iret`.
//!
//! The vCPU's return state is either in its registers (stopped in ring 3) or
//! in the interrupt-return frame on the switcher's stack (stopped in the
//! switcher, about to `iretq`): [`Resume`] says which, and delivery rewrites
//! that state in place.

use kvm_bindings::kvm_regs;

use pvabi::lguest::{has_error_code, offset, IRQ_ENABLED, SWITCHER_ADDR};

use super::boot::RFLAGS_IF;
use super::{die, switcher, Death, Handler, Lguest};
use crate::paging;

/// Where the interrupted context's return state is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// In the vCPU's registers: it was stopped in ring 3.
    Regs,
    /// In the interrupt-return frame at this address on the switcher's stack.
    Frame(u64),
}

/// The five words of an interrupt-return frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Context {
    /// RIP.
    pub rip: u64,
    /// CS.
    pub cs: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RSP.
    pub rsp: u64,
    /// SS.
    pub ss: u64,
}

/// What only the vCPU itself holds: CR2, and the MSRs pvrun serves.
pub trait CpuAccess {
    /// CR2 (the fault address of the #PF being reflected).
    fn cr2(&mut self) -> u64;
    /// The value of `msr`, or `None` if pvrun does not serve it (#GP).
    fn read_msr(&mut self, msr: u32) -> Option<u64>;
    /// Writes `msr`; `false` if pvrun does not serve it or the value (#GP).
    fn write_msr(&mut self, msr: u32, value: u64) -> bool;
}

const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_NT: u64 = 1 << 14;
const RFLAGS_RF: u64 = 1 << 16;

const NAMES: [&str; 19] = [
    "#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "CSO", "#TS", "#NP", "#SS", "#GP", "#PF",
    "#15", "#MF", "#AC", "#MC",
];

fn name(vector: u8) -> &'static str {
    NAMES.get(usize::from(vector)).copied().unwrap_or("exception")
}

impl Lguest {
    /// Physical address of a word on the switcher's stacks.
    fn switcher_stack(&self, va: u64) -> Option<u64> {
        let lowest = SWITCHER_ADDR + switcher::IDT + 4096;
        (lowest..SWITCHER_ADDR + switcher::IST_TOP - 8)
            .contains(&va)
            .then(|| self.layout.reserved + (va - SWITCHER_ADDR))
    }

    fn stack_word(&self, va: u64) -> Result<u64, Death> {
        match self.switcher_stack(va) {
            Some(pa) => self.read_phys(pa),
            None => die!("the switcher's stack pointer {va:#x} left its stack"),
        }
    }

    fn load(&self, regs: &kvm_regs, at: Resume) -> Result<Context, Death> {
        Ok(match at {
            Resume::Regs => Context {
                rip: regs.rip,
                cs: u64::from(pvabi::lguest::GUEST_CS),
                rflags: regs.rflags,
                rsp: regs.rsp,
                ss: u64::from(pvabi::lguest::GUEST_SS),
            },
            Resume::Frame(va) => Context {
                rip: self.stack_word(va)?,
                cs: self.stack_word(va.wrapping_add(8))?,
                rflags: self.stack_word(va.wrapping_add(16))?,
                rsp: self.stack_word(va.wrapping_add(24))?,
                ss: self.stack_word(va.wrapping_add(32))?,
            },
        })
    }

    fn store(&self, regs: &mut kvm_regs, at: Resume, ctx: &Context) -> Result<(), Death> {
        match at {
            Resume::Regs => (regs.rip, regs.rsp, regs.rflags) = (ctx.rip, ctx.rsp, ctx.rflags),
            Resume::Frame(va) => {
                for (i, w) in [ctx.rip, ctx.cs, ctx.rflags, ctx.rsp, ctx.ss].into_iter().enumerate() {
                    match self.switcher_stack(va.wrapping_add(8 * i as u64)) {
                        Some(pa) => self.write_phys(pa, w)?,
                        None => die!("the switcher's stack pointer {va:#x} left its stack"),
                    }
                }
            }
        }
        Ok(())
    }

    /// Enters `handler` for `vector` from `ctx`: pushes the frame the CPU would
    /// (RSP aligned to 16, then SS, RSP, RFLAGS with the virtual IF, CS, RIP,
    /// and the error code) onto the guest's stack, unless `reuse` says the
    /// frame on top already is the one to return through (`noirq_iret`).
    fn enter(
        &mut self,
        ctx: &mut Context,
        vector: u8,
        error: Option<u64>,
        handler: Handler,
        reuse: bool,
    ) -> Result<(), Death> {
        let virtual_if = if self.data.is_some() { self.get::<u32>(offset::IRQ_ENABLED) } else { 0 };
        if !reuse {
            let flags = (ctx.rflags & !RFLAGS_IF) | (u64::from(virtual_if) & RFLAGS_IF);
            let words = [ctx.rip, ctx.cs, flags, ctx.rsp, ctx.ss];
            let words: Vec<u64> = error.into_iter().chain(words).collect();
            let sp = (ctx.rsp & !15).wrapping_sub(8 * words.len() as u64);
            for (i, w) in words.iter().enumerate() {
                if paging::write_u64(&self.mem, self.cr3, sp.wrapping_add(8 * i as u64), *w).is_err() {
                    die!(
                        "cannot deliver vector {vector}: the guest stack at {:#x} is not mapped writable (RIP {:#x})",
                        ctx.rsp,
                        ctx.rip
                    );
                }
            }
            ctx.rsp = sp;
        }
        ctx.rip = handler.address;
        ctx.rflags &= !(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF);
        if handler.interrupt_gate && self.data.is_some() {
            self.put(offset::IRQ_ENABLED, 0u32);
        }
        Ok(())
    }

    /// The switcher's exception exit. RSP points at the vector its stub pushed,
    /// then the CPU's frame (with an error code for some vectors). pvrun serves
    /// `rdmsr`/`wrmsr` behind a #GP itself, and reflects anything else to the
    /// guest's handler; either way RSP is left at the frame its `iretq` pops.
    pub fn trap(&mut self, regs: &mut kvm_regs, cpu: &mut dyn CpuAccess) -> Result<(), Death> {
        let vector = self.stack_word(regs.rsp)? as u8;
        let with_error = vector < 32 && has_error_code(vector);
        let error = if with_error { Some(self.stack_word(regs.rsp.wrapping_add(8))?) } else { None };
        let frame = regs.rsp.wrapping_add(if with_error { 16 } else { 8 });
        let at = Resume::Frame(frame);
        let mut ctx = self.load(regs, at)?;
        regs.rsp = frame;
        if ctx.cs & 3 != 3 {
            die!("{} (vector {vector}) inside the switcher, at RIP {:#x}", name(vector), ctx.rip);
        }
        match vector {
            2 | 8 | 18 => die!("{} (vector {vector}) at RIP {:#x}", name(vector), ctx.rip),
            32.. => die!("unexpected interrupt, vector {vector}, at RIP {:#x}", ctx.rip),
            _ => {}
        }
        if vector == 13 && error == Some(0) && self.emulate_msr(regs, &mut ctx, cpu) {
            self.usage.msrs += 1;
            return self.store(regs, at, &ctx);
        }
        if vector == 14 && self.data.is_some() {
            self.put(offset::CR2, cpu.cr2());
        }
        let Some(handler) = self.idt[usize::from(vector)] else {
            die!(
                "{} (vector {vector}, error {:#x}) at RIP {:#x}, and the guest has no handler for it",
                name(vector),
                error.unwrap_or(0),
                ctx.rip
            );
        };
        self.usage.traps += 1;
        self.enter(&mut ctx, vector, error, handler, false)?;
        self.store(regs, at, &ctx)
    }

    /// `rdmsr`/`wrmsr` at the #GP's RIP, for an MSR pvrun serves: done, and
    /// the return skips the instruction. Anything else: `false` (a #GP for the
    /// guest).
    fn emulate_msr(&mut self, regs: &mut kvm_regs, ctx: &mut Context, cpu: &mut dyn CpuAccess) -> bool {
        let mut insn = [0u8; 15];
        let mut len = 0;
        while len < insn.len()
            && paging::read_bytes(&self.mem, self.cr3, ctx.rip + len as u64, &mut insn[len..=len]).is_ok()
        {
            len += 1;
        }
        let prefixes = insn[..len]
            .iter()
            .take_while(|b| matches!(b, 0x26 | 0x2e | 0x36 | 0x3e | 0x64 | 0x65 | 0x66 | 0x67 | 0x40..=0x4f))
            .count();
        let msr = regs.rcx as u32;
        let done = match insn.get(prefixes..prefixes + 2).filter(|_| prefixes + 2 <= len) {
            Some([0x0f, 0x32]) => match cpu.read_msr(msr) {
                Some(v) => {
                    (regs.rax, regs.rdx) = (v & 0xffff_ffff, v >> 32);
                    true
                }
                None => false,
            },
            Some([0x0f, 0x30]) => cpu.write_msr(msr, (regs.rdx << 32) | (regs.rax & 0xffff_ffff)),
            _ => false,
        };
        if done {
            ctx.rip += prefixes as u64 + 2;
        }
        done
    }

    /// 4.13's `try_deliver_interrupt`: the lowest pending IRQ the guest has not
    /// blocked is delivered if `irq_enabled` is set (and its gate exists);
    /// with interrupts off it is noted in `irq_pending` instead, so the guest's
    /// next enable asks for it. `irq_pending` is cleared once nothing
    /// deliverable remains. Returns whether an interrupt was delivered.
    pub fn deliver_pending(&mut self, regs: &mut kvm_regs, at: Resume) -> Result<bool, Death> {
        if self.data.is_none() {
            return Ok(false);
        }
        let ready = self.deliverable();
        if ready == 0 {
            if self.get::<i32>(offset::IRQ_PENDING) != 0 {
                self.put(offset::IRQ_PENDING, 0i32);
            }
            return Ok(false);
        }
        if self.get::<u32>(offset::IRQ_ENABLED) == 0 {
            self.put(offset::IRQ_PENDING, IRQ_ENABLED as i32);
            return Ok(false);
        }
        let irq = ready.trailing_zeros();
        let vector = Self::irq_vector(irq);
        let Some(handler) = self.idt[usize::from(vector)] else {
            return Ok(false); // no gate yet: it stays pending, as in 4.13
        };
        self.irqs_pending &= !(1 << irq);
        let mut ctx = self.load(regs, at)?;
        let reuse = self.noirq_iret != 0 && ctx.rip == self.noirq_iret;
        self.enter(&mut ctx, vector, None, handler, reuse)?;
        self.store(regs, at, &ctx)?;
        self.write_time();
        self.usage.interrupts += 1;
        if self.deliverable() == 0 {
            self.put(offset::IRQ_PENDING, 0i32);
        }
        Ok(true)
    }

    /// HALT's wake-up (4.13: the host sets `irq_enabled` as it wakes the guest).
    pub fn wake(&mut self) {
        if self.data.is_some() {
            self.put(offset::IRQ_ENABLED, IRQ_ENABLED);
        }
    }
}
