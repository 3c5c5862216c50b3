//! KVM backend specifics: which features are in use, and that the PV EOI path runs.

use paravirt::backends::kvm::ops::{self as kvm, FEATURE_NAMES};

use super::{skip, Ctx, Test, TestResult};
use crate::arch::{apic, traps};
use crate::{diag, ensure};

pub static TESTS: &[Test] = &[
    Test { name: "kvm.features_reported", run: features },
    Test { name: "kvm.eoi_goes_through_the_backend", run: eoi_counted },
];

fn is_kvm(ctx: &Ctx) -> bool {
    ctx.selection.decision.backend.name == "kvm"
}

/// One line per known feature: used, advertised but unused, or absent.
fn features(ctx: &mut Ctx) -> TestResult {
    if !is_kvm(ctx) {
        return skip("backend is not kvm");
    }
    let u = kvm::usage();
    for &(bit, name) in FEATURE_NAMES {
        let state = match (u.advertised & (1 << bit) != 0, u.used & (1 << bit) != 0) {
            (_, true) => "used",
            (true, false) => "advertised, not used",
            (false, false) => "absent",
        };
        diag!("kvm feature {}: {}", name, state);
    }
    ensure!(
        u.used & !u.advertised == 0,
        "uses features KVM did not advertise: {:#x}",
        u.used & !u.advertised
    );
    Ok(())
}

/// A timer interrupt's EOI goes through the backend: PV (KVM set the bit) or the
/// APIC (it did not); either way the backend counts it.
fn eoi_counted(ctx: &mut Ctx) -> TestResult {
    if !is_kvm(ctx) {
        return skip("backend is not kvm");
    }
    let u0 = kvm::usage();
    if u0.used & (1 << paravirt::backends::kvm::abi::feature::PV_EOI) == 0 {
        return skip("KVM does not advertise PV EOI");
    }
    paravirt::irq::disable();
    let ticks = traps::irq_count(apic::TIMER_VECTOR);
    apic::arm_timer(1_000_000);
    // SAFETY: the IDT is loaded; the timer handler acknowledges through apic.eoi.
    unsafe { paravirt::irq::safe_halt() };
    paravirt::irq::disable();
    ensure!(traps::irq_count(apic::TIMER_VECTOR) > ticks, "no timer interrupt");
    let u1 = kvm::usage();
    let (pv, apic_eois) = (u1.eoi_pv - u0.eoi_pv, u1.eoi_apic - u0.eoi_apic);
    diag!(
        "kvm pv_eoi: {} by the PV bit, {} by the APIC (totals {} / {})",
        pv,
        apic_eois,
        u1.eoi_pv,
        u1.eoi_apic
    );
    ensure!(pv + apic_eois >= 1, "the EOI did not go through the kvm backend");
    Ok(())
}
