//! The trap flavour's calls, served on the registers the exit left and on
//! guest memory: a pure exit handler (the vCPU and the run loop are
//! [`super::runtime`]'s).
//!
//! Every exit first drains the ROM's queue of deferred page-table updates,
//! in order (API 2.0: "page faults, invalidations and TLB flushes implicitly
//! flush pending MMU updates"; any exit is a flush here). What pvrun does with
//! an update is VMI's point: the hypervisor hears of every one, and checks it.
//! A guest that breaks the ABI is ended with one line (`guest killed: vCPU 0:
//! vmi: ...`), as lguest's "sudden death" ends one.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use pvabi::vmi::{alarm, call, counter, page, INTERRUPTS_ON};

use super::alarm::{Armed, Wire};
use super::rom::{DATA_ADDRESS, DATA_COUNT, DATA_QUEUE, QUEUE_LEN, QUEUE_SLOT, TRAP_INIT};
use super::Vmi;
use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};
use crate::paging;
use crate::runner::{die, Death};

const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const IF: u64 = INTERRUPTS_ON;

/// The vCPU's registers at a trap, as the exit left them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    /// General registers and RFLAGS (written back after every call).
    pub regs: kvm_regs,
    /// Control registers.
    pub sregs: kvm_sregs,
    /// Whether a call changed `sregs` (written back only then).
    pub sregs_changed: bool,
}

/// What the run loop does after a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Run the guest on.
    Resume,
    /// Power off with this status (Shutdown), as the debug-exit port does.
    Exit(u32),
    /// Reset (Reboot).
    Reset,
}

impl Vmi {
    /// Serves the trap of call `number` (EAX at the ROM's `out`).
    pub fn trap(&mut self, number: u32, cpu: &mut Cpu) -> Result<Next, Death> {
        self.usage.traps += 1;
        let root = cpu.sregs.cr3;
        self.drain(root)?;
        let r = &mut cpu.regs;
        let s = &mut cpu.sregs;
        let (a1, a2, a3, a4) = (r.rdi, r.rsi, r.rdx, r.rcx);
        if number == TRAP_INIT {
            r.rax = 0;
            return Ok(Next::Resume);
        }
        match u64::from(number) {
            call::CPUID => {
                let [a, b, c, d] = crate::cpuid::lookup(&self.cpuid, a1 as u32, a2 as u32);
                r.rax = u64::from(a) | u64::from(b) << 32;
                r.rdx = u64::from(c) | u64::from(d) << 32;
            }
            call::SET_CR0 => (s.cr0, cpu.sregs_changed) = (a1, true),
            call::SET_CR4 => (s.cr4, cpu.sregs_changed) = (a1, true),
            // The ROM loads CR3 itself once pvrun has flushed the queue.
            call::SET_CR3 if !self.in_ram(a1 & ADDR, 4096) => {
                die!("vmi: SetCR3 to {a1:#x}, outside guest RAM")
            }
            call::SET_CR3 => {}
            call::ENABLE_INTERRUPTS => r.rflags |= IF,
            call::DISABLE_INTERRUPTS => r.rflags &= !IF,
            call::SET_INTERRUPT_MASK => r.rflags = (r.rflags & !IF) | (a1 & IF),
            // The ROM halts with `sti; hlt` once pvrun has heard of it.
            call::HALT => {}
            call::REBOOT => return Ok(Next::Reset),
            call::SHUTDOWN => return Ok(Next::Exit(a1 as u32)),
            call::SET_PXE => self.update(root, a1, a2, a3, false)?,
            // The queue was drained above; the ROM runs the flush itself.
            call::FLUSH_TLB | call::SET_LAZY_MODE => {}
            call::ALLOCATE_PAGE => self.allocate_page(a1, a2)?,
            call::RELEASE_PAGE => {
                self.page_tables.remove(&a1);
            }
            call::GET_CYCLE_COUNTER => r.rax = self.counter(a1, a3),
            call::SET_ALARM => self.set_alarm(a1, a2, a3, a4)?,
            call::CANCEL_ALARM => r.rax = u64::from(self.alarm.cancel()),
            call::GET_WALLCLOCK_TIME => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                r.rax = now.as_nanos() as u64;
            }
            other => die!("vmi: a trap with call number {other}, which the ROM never makes"),
        }
        Ok(Next::Resume)
    }

    /// Tells pvrun of the updates the ROM queued, oldest first, and empties
    /// the queue.
    fn drain(&mut self, root: u64) -> Result<(), Death> {
        let count: u64 = self.read(DATA_ADDRESS + DATA_COUNT)?;
        if count == 0 {
            return Ok(());
        }
        if count > QUEUE_LEN {
            die!("vmi: the ROM's queue says it holds {count} updates; it has {QUEUE_LEN} slots");
        }
        for i in 0..count {
            let slot = DATA_ADDRESS + DATA_QUEUE + i * QUEUE_SLOT;
            let [pte, ptep, flags, _va]: [u64; 4] =
                std::array::from_fn(|w| self.mem.read_obj(GuestAddress(slot + 8 * w as u64)).unwrap_or(0));
            self.update(root, pte, ptep, flags, true)?;
        }
        self.mem.write_obj(0u64, GuestAddress(DATA_ADDRESS + DATA_COUNT)).map_err(|e| Death(e.to_string()))
    }

    /// Checks one page-table update (the ROM has already written it): the
    /// entry lies in RAM and in a frame registered at that level (if
    /// registered at all), and a present entry maps RAM or the MMIO gap.
    fn update(&mut self, root: u64, pte: u64, ptep: u64, flags: u64, deferred: bool) -> Result<(), Death> {
        let level = flags & page::LEVEL_MASK;
        if ![page::PT, page::PD, page::PDP, page::PML4].contains(&level) {
            die!("vmi: SetPxE with flags {flags:#x}, which name no one page-table level");
        }
        if !ptep.is_multiple_of(8) {
            die!("vmi: SetPxE of an entry at {ptep:#x}, not 8-byte aligned");
        }
        let Ok(pa) = paging::translate(&self.mem, root, ptep, false) else {
            die!("vmi: SetPxE of an entry at {ptep:#x}, which CR3 {root:#x} does not map");
        };
        if !self.in_ram(pa, 8) {
            die!("vmi: SetPxE of an entry at {ptep:#x} (physical {pa:#x}), outside guest RAM");
        }
        if let Some(&registered) = self.page_tables.get(&(pa >> 12)) {
            if registered != level {
                die!("vmi: SetPxE of a level-{level:#x} entry into frame {:#x}, registered as level {registered:#x}", pa >> 12);
            }
        }
        if pte & PRESENT != 0 {
            let huge = pte & HUGE != 0 && (level == page::PD || level == page::PDP);
            let frame = pte & ADDR & if huge { !0x1f_ffff } else { !0 };
            if !self.in_ram(frame, 4096) && !(MMIO_GAP_START..MMIO_GAP_END).contains(&frame) {
                die!("vmi: SetPxE maps frame {frame:#x}, outside guest RAM and the MMIO gap");
            }
        }
        self.usage.updates += 1;
        self.usage.deferred += u64::from(deferred);
        Ok(())
    }

    fn allocate_page(&mut self, pfn: u64, flags: u64) -> Result<(), Death> {
        let level = flags & page::LEVEL_MASK;
        if ![page::PT, page::PD, page::PDP, page::PML4].contains(&level) {
            die!("vmi: AllocatePage with flags {flags:#x}, which name no one page-table level");
        }
        if pfn > u64::MAX >> 12 || !self.in_ram(pfn << 12, 4096) {
            die!("vmi: AllocatePage of frame {pfn:#x}, outside guest RAM");
        }
        self.page_tables.insert(pfn, level);
        Ok(())
    }

    /// Cycles this vCPU's thread waited to run since the first look (the
    /// kernel's `run_delay`; 0 where the host keeps no schedstats).
    fn stolen(&mut self) -> u64 {
        let ns = crate::schedstat::this_thread_run_delay().unwrap_or(0);
        let base = *self.stolen_base.get_or_insert(ns);
        let cycles = u128::from(ns.saturating_sub(base)) * u128::from(self.cycle_hz) / 1_000_000_000;
        cycles as u64
    }

    /// GetCycleCounter(`which`), the ROM having read the TSC into `tsc`.
    fn counter(&mut self, which: u64, tsc: u64) -> u64 {
        match which {
            counter::REAL => tsc,
            counter::AVAILABLE => tsc.saturating_sub(self.stolen()),
            counter::STOLEN => self.stolen(),
            _ => 0,
        }
    }

    fn cycles(&self, n: u64) -> Duration {
        Duration::from_nanos((u128::from(n) * 1_000_000_000 / u128::from(self.cycle_hz.max(1))) as u64)
    }

    /// SetAlarm(`flags`, absolute `expiry`, `period`), the ROM having read the
    /// TSC into `tsc`. An alarm on STOLEN or an unknown counter does nothing.
    fn set_alarm(&mut self, flags: u64, expiry: u64, period: u64, tsc: u64) -> Result<(), Death> {
        let now = match flags & alarm::COUNTER_MASK {
            counter::REAL => tsc,
            counter::AVAILABLE => tsc.saturating_sub(self.stolen()),
            _ => return Ok(()),
        };
        let wire = if flags & alarm::WIRED_VECTOR != 0 {
            let vector = (flags >> alarm::VECTOR_SHIFT) as u8;
            if vector < 32 {
                die!("vmi: SetAlarm to vector {vector}, an exception vector");
            }
            Wire::Vector(vector)
        } else if flags & alarm::WIRED_LVTT != 0 {
            die!("vmi: SetAlarm wired to the LVT timer, which pvrun does not serve (use WIRED_VECTOR)");
        } else {
            Wire::Irq0
        };
        let period = (flags & alarm::IS_PERIODIC != 0 && period != 0).then(|| self.cycles(period));
        let at = Instant::now() + self.cycles(expiry.saturating_sub(now));
        self.alarm.set(Armed { at, period, wire });
        Ok(())
    }

    fn read(&self, pa: u64) -> Result<u64, Death> {
        match self.mem.read_obj(GuestAddress(pa)) {
            Ok(v) => Ok(v),
            Err(_) => die!("vmi: read of guest-physical {pa:#x} outside RAM"),
        }
    }
}
