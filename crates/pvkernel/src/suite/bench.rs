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

pub static TESTS: &[Test] = &[Test {
    name: "bench.patched_site_costs_the_raw_instruction",
    run: patch_bench,
}];

/// Cost of one form of one op over a run of iterations, loop overhead included.
#[derive(Clone, Copy, Default)]
struct Cost {
    cycles: u64,
    insns: u64,
    exits: u64,
}

/// The marginal cost of `iters` more iterations: a run of 2×iters minus a run of
/// iters, so the constant cost around a loop (register set-up, the markers)
/// cancels and only the per-iteration cost remains. Cycles are the least of
/// `reps` tries (the machine is noisy); counts are exact and taken once.
fn measure(
    op: paravirt::ops::Op,
    form: Form,
    iters: u64,
    reps: u32,
    env: &BenchEnv,
    counted: bool,
) -> Cost {
    let mut best: Option<Cost> = None;
    for rep in 0..reps {
        let count = counted && rep == 0;
        let short = measure_once(op, form, iters, env, count);
        let long = measure_once(op, form, 2 * iters, env, count);
        let c = Cost {
            cycles: long.cycles.saturating_sub(short.cycles),
            insns: long.insns.saturating_sub(short.insns),
            exits: long.exits.saturating_sub(short.exits),
        };
        best = Some(match best {
            None => c,
            Some(b) => Cost {
                cycles: b.cycles.min(c.cycles),
                ..b
            },
        });
    }
    best.unwrap_or_default()
}

fn measure_once(
    op: paravirt::ops::Op,
    form: Form,
    iters: u64,
    env: &BenchEnv,
    counted: bool,
) -> Cost {
    let t0 = cpu::read_tsc();
    if counted {
        bench_port::start();
    }
    // SAFETY: interrupts are off and `env` is this test's private mapping.
    unsafe { bench::run(op, form, iters, env) };
    let (insns, exits) = if counted { bench_port::stop() } else { (0, 0) };
    let cycles = cpu::read_tsc() - t0;
    Cost {
        cycles,
        insns,
        exits,
    }
}

fn patch_bench(ctx: &mut Ctx) -> TestResult {
    let iters: u64 = crate::cmdline_value(ctx.boot.cmdline(), "pvkernel.bench.iters")
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .max(1);
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
    let env = BenchEnv {
        pte,
        pte_value: unsafe { pte.read_volatile() },
        va,
    };
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
        unsafe { paravirt::mmu::set_pte(env.pte, env.pte_value) };
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
                let _ = write!(
                    mismatches,
                    " {} (raw {} vs site {})",
                    op.name(),
                    raw.insns,
                    site.insns
                );
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
    ensure!(
        mismatches.is_empty(),
        "patched sites cost more instructions than raw:{}",
        mismatches
    );
    Ok(())
}
