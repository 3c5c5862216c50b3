//! Cross-CPU calls and TLB shootdown on top of IPIs. A call writes the target's
//! mailbox and sends [`CALL_VECTOR`]; the target runs the function in its
//! interrupt handler and acknowledges.

use core::sync::atomic::Ordering;

use crate::arch::apic::CALL_VECTOR;
use crate::arch::traps::{self, TrapFrame};
use crate::lock::SpinLock;
use crate::percpu;

/// Serializes callers (one outstanding request per mailbox).
static CALL_LOCK: SpinLock<()> = SpinLock::new(());

/// A function another CPU runs: argument in, result out.
pub type CallFn = fn(u64) -> u64;

/// Why a call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The CPU did not answer in time.
    Timeout,
}

/// A request in flight.
pub struct Pending {
    cpu: u32,
    seq: u64,
}

/// Installs the call handler and the remote TLB flush. Once, on the boot CPU.
pub fn init() {
    traps::set_irq_handler(CALL_VECTOR, handle_call);
    paravirt::mmu::set_remote_flush(remote_flush);
}

fn handle_call(_: &mut TrapFrame) {
    let me = percpu::this();
    let mb = &me.mailbox;
    let f = mb.func.load(Ordering::Acquire);
    if f != 0 {
        // SAFETY: only `call_async` stores non-zero values, each a CallFn.
        let f: CallFn = unsafe { core::mem::transmute::<usize, CallFn>(f) };
        let r = f(mb.arg.load(Ordering::Relaxed));
        mb.result.store(r, Ordering::Relaxed);
        me.calls_handled.fetch_add(1, Ordering::Relaxed);
        mb.done.store(mb.requested.load(Ordering::Relaxed), Ordering::Release);
    }
    paravirt::apic::eoi();
}

/// Asks CPU `cpu` to run `f(arg)` and returns without waiting.
pub fn call_async(cpu: u32, f: CallFn, arg: u64) -> Pending {
    let _g = CALL_LOCK.lock();
    let mb = &percpu::of(cpu).mailbox;
    mb.arg.store(arg, Ordering::Relaxed);
    mb.func.store(f as usize, Ordering::Relaxed);
    let seq = mb.requested.fetch_add(1, Ordering::Release) + 1;
    paravirt::apic::send_ipi(cpu, u32::from(CALL_VECTOR));
    Pending { cpu, seq }
}

impl Pending {
    /// Waits up to `timeout_ns` for the result.
    pub fn wait(self, timeout_ns: u64) -> Result<u64, CallError> {
        let mb = &percpu::of(self.cpu).mailbox;
        let t0 = paravirt::time::clock_ns();
        while mb.done.load(Ordering::Acquire) < self.seq {
            if paravirt::time::clock_ns() - t0 > timeout_ns {
                return Err(CallError::Timeout);
            }
            // A descheduled target cannot answer: give it our time (as Linux does).
            if paravirt::lock::vcpu_is_preempted(self.cpu) {
                paravirt::lock::yield_to(self.cpu);
            }
            core::hint::spin_loop();
        }
        Ok(mb.result.load(Ordering::Relaxed))
    }
}

/// Runs `f(arg)` on CPU `cpu` and waits (1 s at most) for its result.
pub fn call(cpu: u32, f: CallFn, arg: u64) -> Result<u64, CallError> {
    call_async(cpu, f, arg).wait(1_000_000_000)
}

/// Start and end of the range the current shootdown flushes (one at a time: the
/// remote flush holds FLUSH_LOCK).
static FLUSH_RANGE: SpinLock<()> = SpinLock::new(());
static FLUSH_START: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static FLUSH_END: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

fn flush_here(_: u64) -> u64 {
    let (start, end) = (FLUSH_START.load(Ordering::Acquire), FLUSH_END.load(Ordering::Acquire));
    // This CPU only: the flush stays local.
    paravirt::mmu::flush_tlb_multi(&paravirt::CpuSet::of(percpu::current_index()), start, end);
    0
}

/// The kernel's remote TLB flush: a call to every CPU in `cpus`, all sent
/// before any is waited for (the CPUs flush at once: the cost grows with the
/// sends, not with round trips).
fn remote_flush(cpus: &paravirt::CpuSet, start: u64, end: u64) {
    let _g = FLUSH_RANGE.lock();
    FLUSH_START.store(start, Ordering::Release);
    FLUSH_END.store(end, Ordering::Release);
    let targets = cpus.and(&crate::boot::smp::online());
    let pending: alloc::vec::Vec<Pending> =
        targets.iter().map(|cpu| call_async(cpu, flush_here, 0)).collect();
    for p in pending {
        let _ = p.wait(1_000_000_000);
    }
}

/// What an AP does when it has nothing to do: wait for interrupts.
pub fn idle() -> ! {
    loop {
        // SAFETY: the IDT is loaded and every vector has a handler.
        unsafe { paravirt::irq::safe_halt() };
    }
}
