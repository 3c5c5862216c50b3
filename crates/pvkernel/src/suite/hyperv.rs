//! Hyper-V backend specifics: the host's clock sources agree with each
//! other, every CPU knows its VP index, and IPIs went by hypercall.

use paravirt::backends::hyperv::ops::{self as hyperv, feature};

use super::{skip, Ctx, Test, TestResult};
use crate::boot::smp::online;
use crate::{diag, ensure};

pub static TESTS: &[Test] = &[
    Test { name: "hyperv.page_and_counter_agree", run: page_and_counter },
    Test { name: "hyperv.services_reported", run: services },
];

fn is_hyperv(ctx: &Ctx) -> bool {
    ctx.selection.decision.backend.name == "hyperv"
}

/// The reference TSC page and the reference counter MSR are two views of
/// one partition clock (TLFS, "Partition reference counter" and "Reference TSC page"): a counter read between two page
/// reads lies between them, to its 100 ns unit.
fn page_and_counter(ctx: &mut Ctx) -> TestResult {
    if !is_hyperv(ctx) {
        return skip("backend is not hyperv");
    }
    let used = hyperv::usage().used;
    if used & feature::TSC_PAGE == 0 || used & feature::REFERENCE_COUNTER == 0 {
        return skip("the host offers only one of the TSC page and the reference counter");
    }
    let Some(before) = hyperv::tsc_page_ns() else {
        return Err(alloc::string::String::from("the reference TSC page is invalid (sequence 0)").into());
    };
    let counter = hyperv::reference_counter_ns().unwrap_or(0);
    let after = hyperv::tsc_page_ns().unwrap_or(0);
    diag!("hyperv clock: page {} ns, counter {} ns, page {} ns", before, counter, after);
    ensure!(
        counter + 100 > before && counter <= after,
        "counter {} ns outside the page's {}..{} ns",
        counter,
        before,
        after
    );
    Ok(())
}

/// One line per service; each online CPU has a distinct VP index; IPIs
/// the host was asked for were all taken.
fn services(ctx: &mut Ctx) -> TestResult {
    if !is_hyperv(ctx) {
        return skip("backend is not hyperv");
    }
    let u = hyperv::usage();
    diag!(
        "hyperv: privileges {:#x}, recommendations {:#x}, features used {:#x}, TSC page sequence {}",
        u.privileges,
        u.recommendations,
        u.used,
        u.tsc_sequence
    );
    if u.used & feature::TSC_PAGE != 0 {
        ensure!(u.tsc_sequence != 0, "the TSC page was registered but is invalid");
    }
    if u.used & feature::FREQUENCY_MSR != 0 {
        diag!("hyperv tsc: {} kHz from HV_X64_MSR_TSC_FREQUENCY", paravirt::time::tsc_khz());
    }
    let cpus = online();
    let mut seen = paravirt::cpus::CpuSet::EMPTY;
    for cpu in cpus.iter() {
        let vp = hyperv::vp_index(cpu);
        ensure!(vp != u32::MAX, "CPU {} has no VP index", cpu);
        ensure!(vp < 256 && !seen.contains(vp), "CPU {}'s VP index {} is repeated or beyond 255", cpu, vp);
        seen.insert(vp);
    }
    diag!("hyperv vp indices: {} CPUs, each its own", cpus.len());
    if u.used & feature::IPI != 0 {
        diag!("hyperv ipis: {} sent by hypercall, {} refused", u.ipis, u.refused);
        ensure!(u.refused == 0, "the host refused {} IPI hypercalls", u.refused);
    }
    Ok(())
}
