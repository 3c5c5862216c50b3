//! VMware backend specifics: what the detection did (and that it left other
//! hypervisors' guests alone), and which of the backdoor's services are in use.

use paravirt::backends::vmware::abi::{self, cmd};
use paravirt::backends::vmware::ops::{self as vmware, TscSource, WallSource};
use paravirt::backends::vmware::probe::{self, Outcome};

use super::{skip, Ctx, Test, TestResult};
use crate::boot::smp::online;
use crate::{diag, ensure};

pub static TESTS: &[Test] = &[
    Test { name: "vmware.probe_leaves_other_guests_alone", run: probe_outcome },
    Test { name: "vmware.services_reported", run: services },
];

fn is_vmware(ctx: &Ctx) -> bool {
    ctx.selection.decision.backend.name == "vmware"
}

/// Under KVM, Xen or Hyper-V (hosts known not to be VMware) the port is
/// never read; elsewhere GETVERSION is one port read; in ring 3 nothing runs
/// at all.
fn probe_outcome(ctx: &mut Ctx) -> TestResult {
    let (reads, ticks) = probe::cost();
    let khz = paravirt::time::tsc_khz().max(1);
    let us = ticks * 1000 / khz;
    let platform = crate::platform::detect(ctx.boot.flow, ctx.selection.decision.backend.name);
    let other_signs = matches!(platform.name, "kvm" | "xen" | "hyperv");
    match probe::outcome() {
        Outcome::NotRun => {
            ensure!(reads == 0, "not run, yet {} port reads", reads);
            if matches!(ctx.boot.flow, paravirt::BootFlow::Hardware) {
                // Only an override skips probing on a hardware boot flow.
                ensure!(
                    crate::cmdline_value(ctx.boot.cmdline(), "pv").is_some(),
                    "not run, and no pv= given"
                );
                diag!("vmware probe: not run (pv= chose the backend)");
            } else {
                diag!("vmware probe: not run (the {} boot flow enters in ring 3)", ctx.boot.protocol);
            }
        }
        Outcome::Skipped => {
            ensure!(reads == 0, "skipped, yet {} port reads", reads);
            ensure!(other_signs, "port left alone under {:?}, which may be VMware", platform.name);
            diag!("vmware probe: port untouched ({} signs the CPUID leaves)", platform.name);
        }
        Outcome::Absent => {
            ensure!(!other_signs, "port probed under {}", platform.name);
            ensure!(reads == 1, "{} port reads for one GETVERSION", reads);
            diag!("vmware probe: no backdoor (1 port read, {} µs)", us);
        }
        Outcome::Found { version, vmx_type, base } => {
            ensure!(reads == 1, "{} port reads for one GETVERSION", reads);
            // EAX left as the magic would mean the host never wrote it.
            ensure!(version == abi::VERSION, "GETVERSION answered version {:#x}", version);
            match base {
                Some(b) => {
                    diag!("vmware backdoor: version {}, VMX type {}, leaves at {:#x}", version, vmx_type, b)
                }
                None => diag!(
                    "vmware backdoor: version {}, VMX type {}, unsigned CPUID leaves",
                    version,
                    vmx_type
                ),
            }
        }
    }
    Ok(())
}

/// One line per service: where the TSC frequency, the wall clock and steal
/// time come from; steal-time records registered on every CPU online.
fn services(ctx: &mut Ctx) -> TestResult {
    if !is_vmware(ctx) {
        return skip("backend is not vmware");
    }
    let u = vmware::usage();
    match u.tsc {
        TscSource::TimingLeaf => {
            diag!("vmware tsc: {} kHz, APIC bus {} kHz, from the timing leaf", u.tsc_khz, u.apic_khz)
        }
        TscSource::GetHz => diag!("vmware tsc: {} kHz, APIC bus {} kHz, from GETHZ", u.tsc_khz, u.apic_khz),
        TscSource::Native => diag!("vmware tsc: not served (native calibration)"),
    }
    if u.tsc != TscSource::Native {
        ensure!(paravirt::time::tsc_khz() == u.tsc_khz, "time.tsc_khz is not the host's");
    }
    let wall = match u.wall {
        WallSource::GetTimeFull => "GETTIMEFULL",
        WallSource::GetTime => "GETTIME",
        WallSource::Native => "not served (the RTC)",
    };
    diag!("vmware wall clock: {}", wall);
    if u.wall != WallSource::Native {
        let w = paravirt::time::wall_clock();
        // After 2020-01-01 and before 2100: a real date, not zeros.
        ensure!((1_577_836_800..4_102_444_800).contains(&w.secs), "wall clock {} s", w.secs);
    }
    // GETMEMSIZE: MiB on VMware (and pvrun), bytes on QEMU; either way the
    // memory the kernel was given, give or take the holes of its map.
    let answer = u64::from(vmware::backdoor(cmd::GETMEMSIZE, 0, 0, 0, 0).eax);
    let mib = ctx.boot.ram_bytes() >> 20;
    let near = |m: u64| m >= mib && m <= mib + 2;
    let unit = if answer == u64::from(abi::UNSUPPORTED) {
        "nothing: not served"
    } else if near(answer) {
        "MiB"
    } else if near(answer >> 20) {
        "bytes"
    } else {
        return Err(alloc::format!("GETMEMSIZE {:#x} is neither {} MiB nor its bytes", answer, mib).into());
    };
    diag!("vmware memory: GETMEMSIZE {} in {}", answer, unit);
    let cpus = online().len();
    if u.steal {
        diag!("vmware steal clock: registered on {} of {} CPUs", u.steal_cpus, cpus);
        ensure!(u.steal_cpus == cpus, "steal clock on {} of {} CPUs", u.steal_cpus, cpus);
    } else {
        diag!("vmware steal clock: not served");
    }
    Ok(())
}
