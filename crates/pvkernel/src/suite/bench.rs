//! The patching benchmark: for every op with a short native form, the raw
//! instruction (a) against the API's call site (b) — and, in a boot with
//! `pv.patch=off`, the same site as an unpatched indirect call (c).
//!
//! Prints one `# bench` line per op. Where pvrun's exact counters exist, the test
//! asserts that a site patched to native executes exactly as many instructions as
//! the raw sequence. `pvkernel.bench.iters=N` sets the iterations (default 50),
//! `pvkernel.bench.reps=N` how often cycles are measured (the least is kept).

use alloc::string::String;
use core::fmt::Write;

use paravirt::backends::native::bench::{self, BenchEnv, Form, BENCH_OPS};
use paravirt::{cpu, irq};

use super::{mem::TEST_VA, Ctx, Test, TestResult};
use crate::arch::bench_port;
use crate::mm::{frame, paging};
use crate::{diag, ensure};

pub static TESTS: &[Test] = &[
    Test { name: "bench.clock_sources_and_latencies", run: clock_bench },
    Test { name: "bench.patched_site_costs_the_raw_instruction", run: patch_bench },
];

/// Cost of one form of one op over a run of iterations, loop overhead included.
#[derive(Clone, Copy, Default)]
struct Cost {
    cycles: u64,
    insns: u64,
    exits: u64,
}

/// The marginal cost of `iters` more iterations: a run of 2×iters minus a run of
/// iters, so the constant cost around a loop (register set-up, the markers)
/// cancels and only the per-iteration cost remains. Of `reps` tries each figure
/// keeps its least value: cycles because the machine is noisy, counts because a
/// host update of a shared record can send one read round its retry loop.
fn measure(op: paravirt::ops::Op, form: Form, iters: u64, reps: u32, env: &BenchEnv, counted: bool) -> Cost {
    let mut best: Option<Cost> = None;
    for _ in 0..reps {
        let short = measure_once(op, form, iters, env, counted);
        let long = measure_once(op, form, 2 * iters, env, counted);
        let c = Cost {
            cycles: long.cycles.saturating_sub(short.cycles),
            insns: long.insns.saturating_sub(short.insns),
            exits: long.exits.saturating_sub(short.exits),
        };
        best = Some(match best {
            None => c,
            Some(b) => Cost {
                cycles: b.cycles.min(c.cycles),
                insns: b.insns.min(c.insns),
                exits: b.exits.min(c.exits),
            },
        });
    }
    best.unwrap_or_default()
}

fn measure_once(op: paravirt::ops::Op, form: Form, iters: u64, env: &BenchEnv, counted: bool) -> Cost {
    if counted {
        bench_port::start();
    }
    // The cycles leave the markers out: each is an exit, and its cost varies.
    let t0 = cpu::read_tsc();
    // SAFETY: interrupts are off and `env` is this test's private mapping.
    unsafe { bench::run(op, form, iters, env) };
    let cycles = cpu::read_tsc() - t0;
    let (insns, exits) = if counted { bench_port::stop() } else { (0, 0) };
    Cost { cycles, insns, exits }
}

/// Iterations per measurement: `pvkernel.bench.iters`, default 50.
fn bench_iters(ctx: &Ctx) -> u64 {
    crate::cmdline_value(ctx.boot.cmdline(), "pvkernel.bench.iters")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .max(1)
}

fn patch_bench(ctx: &mut Ctx) -> TestResult {
    if !ctx.boot.owns_hardware() {
        return super::skip("raw privileged instructions fault in a deprivileged (Xen PV, lguest) kernel");
    }
    let iters = bench_iters(ctx);
    let reps: u32 = crate::cmdline_value(ctx.boot.cmdline(), "pvkernel.bench.reps")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let counted = bench_port::present();
    let va = TEST_VA + 0x40_0000;
    let f = frame::alloc().ok_or(String::from("out of frames"))?;
    // SAFETY: a test VA mapped to a fresh frame; nothing else uses it.
    unsafe { paging::map(va, f, paging::WRITABLE) }.map_err(|e| alloc::format!("map: {:?}", e))?;
    let pte = paging::entry(va).ok_or(String::from("no PTE"))?;
    // SAFETY: the entry just written.
    let env = BenchEnv { pte, pte_value: unsafe { paravirt::mmu::read_entry(pte) }, va };
    let flags = irq::save_flags();
    irq::disable();
    let mut mismatches = String::new();
    for &op in BENCH_OPS {
        let imp = ctx.selection.implementation(op);
        let raw = measure(op, Form::Raw, iters, reps, &env, counted);
        let site = measure(op, Form::Site, iters, reps, &env, counted);
        let empty = measure(op, Form::Empty, iters, reps, &env, counted);
        // pte_clear's loop unmapped the page: map it again for the next op.
        // SAFETY: restores the entry's own value.
        unsafe { paravirt::mmu::set_pte(env.pte, env.pte_value, va) };
        paravirt::mmu::flush_tlb_one(va);
        let per = |c: u64| c as f64 / iters as f64;
        let mut line = String::new();
        let _ = write!(
            line,
            "bench {} impl={} iters={} raw_cycles={:.1} site_cycles={:.1} loop_cycles={:.1}",
            op.name(),
            imp,
            iters,
            per(raw.cycles),
            per(site.cycles),
            per(empty.cycles)
        );
        if counted {
            let _ = write!(
                line,
                " raw_insns={:.2} site_insns={:.2} loop_insns={:.2} raw_exits={:.2} site_exits={:.2} loop_exits={:.2}",
                per(raw.insns),
                per(site.insns),
                per(empty.insns),
                per(raw.exits),
                per(site.exits),
                per(empty.exits)
            );
            if imp == "native-inline" && raw.insns != site.insns {
                let _ = write!(mismatches, " {} (raw {} vs site {})", op.name(), raw.insns, site.insns);
            }
        }
        diag!("{}", line);
    }
    // SAFETY: `flags` were saved on this CPU above.
    unsafe { irq::restore_flags(flags) };
    // SAFETY: the test mapping is unused now.
    let _ = unsafe { paging::unmap(va) };
    // SAFETY: unmapped above.
    unsafe { frame::free(f) };
    if !counted {
        diag!("bench: no exact counters here (pvrun's port 0xf8 absent); cycles only");
    }
    ensure!(mismatches.is_empty(), "patched sites cost more instructions than raw:{}", mismatches);
    Ok(())
}

/// Cost of calling `f` once, by the same two-run slope as [`measure`], minus the
/// cost of calling an empty function.
fn measure_fn(f: fn(), iters: u64, counted: bool) -> (f64, f64, f64) {
    fn run(f: fn(), n: u64, counted: bool) -> Cost {
        if counted {
            bench_port::start();
        }
        let t0 = cpu::read_tsc();
        for _ in 0..core::hint::black_box(n) {
            core::hint::black_box(f)();
        }
        let cycles = cpu::read_tsc() - t0;
        let (insns, exits) = if counted { bench_port::stop() } else { (0, 0) };
        Cost { cycles, insns, exits }
    }
    fn empty() {}
    let slope = |f: fn()| {
        let (a, b) = (run(f, iters, counted), run(f, 2 * iters, counted));
        (
            b.cycles.saturating_sub(a.cycles) as f64 / iters as f64,
            b.insns.saturating_sub(a.insns) as f64 / iters as f64,
            b.exits.saturating_sub(a.exits) as f64 / iters as f64,
        )
    };
    let (c, i, e) = slope(f);
    let (c0, i0, e0) = slope(empty);
    (c - c0, i - i0, e - e0)
}

fn read_pit() {
    let _ = crate::arch::pit::count();
}

/// Clock sources and other per-call costs: kvmclock (or the native clock) vs raw
/// `rdtsc` vs an exit-based clock (the PIT), steal time, EOI. Where counts are
/// exact and the clock is paravirtual: at most 30 instructions and no exit.
fn clock_bench(ctx: &mut Ctx) -> TestResult {
    let counted = bench_port::present();
    let iters = bench_iters(ctx);
    let flags = irq::save_flags();
    irq::disable();
    use paravirt::ops::Op;
    // These ops touch no page table: the loop environment is unused.
    let env = BenchEnv { pte: core::ptr::null_mut(), pte_value: 0, va: 0 };
    let net = |op: Op, form: Form| {
        let x = measure(op, form, iters, 3, &env, counted);
        let e = measure(op, Form::Empty, iters, 3, &env, counted);
        let per = |a: u64, b: u64| (a as f64 - b as f64) / iters as f64;
        (per(x.cycles, e.cycles), per(x.insns, e.insns), per(x.exits, e.exits))
    };
    // An lguest guest has no PIT (its ports are not in the switcher's I/O bitmap).
    let has_pit = !matches!(ctx.boot.flow, paravirt::BootFlow::Lguest { .. });
    let pit = if has_pit { measure_fn(read_pit, iters, counted) } else { (f64::NAN, f64::NAN, f64::NAN) };
    let rows = [
        ("time.clock_ns", ctx.selection.implementation(Op::TimeClockNs), net(Op::TimeClockNs, Form::Site)),
        ("cpu.rdtsc", "raw", net(Op::TimeClockNs, Form::Raw)),
        ("pit.read", "raw", pit),
        (
            "time.steal_clock",
            ctx.selection.implementation(Op::TimeStealClock),
            net(Op::TimeStealClock, Form::Site),
        ),
        ("apic.eoi", ctx.selection.implementation(Op::ApicEoi), net(Op::ApicEoi, Form::Site)),
    ];
    let mut problems = String::new();
    for (name, imp, (c, i, e)) in rows {
        if c.is_nan() {
            continue;
        }
        if counted {
            diag!("bench {} impl={} cycles={:.1} insns={:.2} exits={:.2}", name, imp, c, i, e);
            let pv = imp == "kvm";
            // Exits per call are whole numbers; a fraction is a stray exit (a host
            // interrupt) landing in one run of the pair.
            let e = (e + 0.5) as u64 as f64;
            if pv && name == "time.clock_ns" && (i > 30.0 || e > 0.0) {
                let _ = write!(problems, " kvmclock read costs {:.1} insns, {:.2} exits;", i, e);
            }
            if pv && name == "time.steal_clock" && e > 0.0 {
                let _ = write!(problems, " steal-time read exits {:.2} times;", e);
            }
        } else {
            diag!("bench {} impl={} cycles={:.1}", name, imp, c);
        }
    }
    // SAFETY: saved on this CPU above.
    unsafe { irq::restore_flags(flags) };
    cross_cpu_latency(iters);
    ensure!(problems.is_empty(), "targets missed:{}", problems);
    Ok(())
}

fn nothing(_: u64) -> u64 {
    0
}

static WOKEN_AT: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
static GATE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

fn wait_then_stamp(_: u64) -> u64 {
    use core::sync::atomic::Ordering;
    while GATE.load(Ordering::Acquire) == 0 {
        paravirt::lock::wait(&GATE, 0);
    }
    WOKEN_AT.store(paravirt::time::clock_ns(), Ordering::Release);
    0
}

/// IPI round trip (a call that does nothing) and kick→wake latency to another CPU.
fn cross_cpu_latency(iters: u64) {
    use core::sync::atomic::Ordering;
    let me = crate::percpu::current_index();
    let Some(cpu) = crate::boot::smp::online().iter().find(|&c| c != me) else {
        return;
    };
    let t0 = paravirt::time::clock_ns();
    for _ in 0..iters {
        let _ = crate::smp::call(cpu, nothing, 0);
    }
    let rtt = (paravirt::time::clock_ns() - t0) / iters;
    let mut total = 0;
    let rounds = 10;
    for _ in 0..rounds {
        GATE.store(0, Ordering::Release);
        let pending = crate::smp::call_async(cpu, wait_then_stamp, 0);
        // Let the waiter reach its wait.
        let spin = paravirt::time::clock_ns();
        while paravirt::time::clock_ns() - spin < 200_000 {
            core::hint::spin_loop();
        }
        let kicked = paravirt::time::clock_ns();
        GATE.store(1, Ordering::Release);
        paravirt::lock::kick(cpu);
        let _ = pending.wait(1_000_000_000);
        total += WOKEN_AT.load(Ordering::Acquire).saturating_sub(kicked);
    }
    diag!("bench smp.ipi_round_trip cpu={} ns={}", cpu, rtt);
    diag!("bench smp.kick_to_wake cpu={} ns={}", cpu, total / rounds);
}
