//! irq ops: flag save/restore, enable/disable, halting.

use paravirt::irq::{self, FLAGS_IF};

use super::{Ctx, Test, TestResult};
use crate::arch::{apic, traps};
use crate::ensure;

pub static TESTS: &[Test] = &[
    Test { name: "irq.save_restore_nesting", run: save_restore_nesting },
    Test { name: "irq.safe_halt_wakes_on_timer", run: safe_halt_wakes },
    Test { name: "apic.self_ipi", run: self_ipi },
];

fn save_restore_nesting(_: &mut Ctx) -> TestResult {
    irq::disable();
    ensure!(irq::save_flags() & FLAGS_IF == 0, "IF set after disable");
    let outer = irq::save_flags();
    // SAFETY: the IDT is loaded and every vector has a handler.
    unsafe { irq::enable() };
    let enabled = irq::save_flags();
    ensure!(enabled & FLAGS_IF != 0, "IF clear after enable");
    let inner = irq::without_interrupts(|| {
        let f = irq::save_flags();
        irq::without_interrupts(irq::save_flags) | (f & FLAGS_IF)
    });
    ensure!(inner & FLAGS_IF == 0, "IF set inside nested without_interrupts");
    ensure!(irq::save_flags() & FLAGS_IF != 0, "nesting did not restore IF");
    // SAFETY: `outer` was saved on this CPU.
    unsafe { irq::restore_flags(outer) };
    ensure!(irq::save_flags() & FLAGS_IF == 0, "restore_flags did not clear IF");
    Ok(())
}

fn safe_halt_wakes(ctx: &mut Ctx) -> TestResult {
    let xen_events = paravirt::backends::xen::events::delivered;
    let xen_timer = ctx.selection.decision.backend.name == "xen"
        && ctx.selection.provided.contains(paravirt::ops::Op::TimeSetTimer);
    irq::disable();
    let (before, events_before) = (traps::irq_count(apic::TIMER_VECTOR), xen_events());
    apic::arm_timer(1_000_000);
    // SAFETY: the IDT is loaded; the timer handler acknowledges the interrupt.
    unsafe { irq::safe_halt() };
    irq::disable();
    let after = traps::irq_count(apic::TIMER_VECTOR);
    ensure!(after > before, "woke without the timer interrupt ({} -> {})", before, after);
    if xen_timer {
        // The tick must have come as a Xen event (VIRQ_TIMER), not from the APIC.
        let events = xen_events() - events_before;
        crate::diag!("timer: {} Xen event(s) delivered through the upcall", events);
        ensure!(events > 0, "the Xen timer fired no event");
    }
    Ok(())
}

fn self_ipi(ctx: &mut Ctx) -> TestResult {
    if ctx.selection.decision.backend.name == "lguest" {
        return super::skip("lguest is uniprocessor without a local APIC: no IPIs");
    }
    irq::disable();
    let before = traps::irq_count(apic::TEST_IPI_VECTOR);
    paravirt::apic::send_ipi(crate::percpu::current_index(), u32::from(apic::TEST_IPI_VECTOR));
    // Pending with IF clear; `sti; hlt` takes it at once.
    // SAFETY: the IDT is loaded; the handler acknowledges the IPI.
    unsafe { irq::safe_halt() };
    irq::disable();
    ensure!(traps::irq_count(apic::TEST_IPI_VECTOR) == before + 1, "self-IPI not delivered once");
    let before = traps::irq_count(apic::TEST_IPI_VECTOR);
    let me = paravirt::CpuSet::of(crate::percpu::current_index());
    paravirt::apic::send_ipi_mask(&me, u32::from(apic::TEST_IPI_VECTOR));
    // SAFETY: as above.
    unsafe { irq::safe_halt() };
    irq::disable();
    ensure!(traps::irq_count(apic::TEST_IPI_VECTOR) == before + 1, "masked self-IPI not delivered");
    Ok(())
}
