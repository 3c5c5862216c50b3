//! What the kernel's everyday work costs on this platform, through the API as
//! the kernel uses it: one `# bench op:<name>` line per operation (time, and where
//! pvrun counts them, emulated instructions, exits and the exits pvrun served),
//! and a CPU-bound workload. Nothing is asserted about speed: the figures are
//! for comparing platforms side by side (`pvlab compare`).

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};

use paravirt::{irq, mmu, time};

use super::{mem::TEST_VA, skip, Ctx, Test, TestResult};
use crate::arch::bench_port::{self, Counts};
use crate::mm::{frame, paging, PAGE_SIZE};
use crate::{diag, ensure};

pub static TESTS: &[Test] =
    &[Test { name: "bench.op_costs", run: op_costs }, Test { name: "bench.workload", run: workload }];

/// The cost of one call of an operation.
#[derive(Clone, Copy, Default)]
struct Cost {
    ns: f64,
    insns: f64,
    exits: f64,
    served: f64,
}

/// `f` run `n` times: wall time and pvrun's counts (zeros where there are none).
fn run(n: u64, counted: bool, f: &mut impl FnMut()) -> (u64, Counts) {
    if counted {
        bench_port::start();
    }
    let t0 = time::clock_ns();
    for _ in 0..core::hint::black_box(n) {
        f();
    }
    let ns = time::clock_ns() - t0;
    let counts = if counted { bench_port::stop_counts() } else { Counts::default() };
    (ns, counts)
}

/// Per call of `f`: the difference between 2n and n calls (the constant cost
/// around a run cancels), the least of three tries for each figure.
fn cost(n: u64, counted: bool, mut f: impl FnMut()) -> Cost {
    let mut best: Option<Cost> = None;
    for _ in 0..3 {
        let (ns1, c1) = run(n, counted, &mut f);
        let (ns2, c2) = run(2 * n, counted, &mut f);
        let per = |a: u64, b: u64| b.saturating_sub(a) as f64 / n as f64;
        let c = Cost {
            ns: per(ns1, ns2),
            insns: per(c1.insns, c2.insns),
            exits: per(c1.exits, c2.exits),
            served: per(c1.served, c2.served),
        };
        best = Some(match best {
            None => c,
            Some(b) => Cost {
                ns: b.ns.min(c.ns),
                insns: b.insns.min(c.insns),
                exits: b.exits.min(c.exits),
                served: b.served.min(c.served),
            },
        });
    }
    best.unwrap_or_default()
}

/// `c` less the loop's own cost `base` (each figure at least 0).
fn net(c: Cost, base: Cost) -> Cost {
    Cost {
        ns: (c.ns - base.ns).max(0.0),
        insns: (c.insns - base.insns).max(0.0),
        exits: (c.exits - base.exits).max(0.0),
        served: (c.served - base.served).max(0.0),
    }
}

fn report(name: &str, imp: &str, c: Cost) {
    diag!(
        "bench op:{} impl={} ns={:.0} insns={:.2} exits={:.2} served={:.2}",
        name,
        imp,
        c.ns,
        c.insns,
        c.exits,
        c.served
    );
}

static WOKE: AtomicU64 = AtomicU64::new(0);

/// Calls per run for operations that may exit to the VMM (tens of µs each).
const TRAPS: u64 = 20;

/// The everyday operations, each as the kernel calls it.
fn op_costs(ctx: &mut Ctx) -> TestResult {
    use paravirt::ops::Op;
    let counted = bench_port::present();
    let imp = |op: Op| ctx.selection.implementation(op);
    let flags = irq::save_flags();
    irq::disable();
    // Every figure is net of the loop around the call.
    let base = cost(1000, counted, || {});
    let show = |name: &str, imp: &str, c: Cost| report(name, imp, net(c, base));
    show("irq.disable", imp(Op::IrqDisable), cost(1000, counted, irq::disable));
    show(
        "irq.enable",
        imp(Op::IrqEnable),
        cost(1000, counted, || {
            // SAFETY: the IDT is loaded; nothing is armed to interrupt.
            unsafe { irq::enable() };
            irq::disable();
        }),
    );
    show(
        "irq.save_flags",
        imp(Op::IrqSaveFlags),
        cost(1000, counted, || {
            core::hint::black_box(irq::save_flags());
        }),
    );
    let off = irq::save_flags();
    show(
        "irq.restore_flags",
        imp(Op::IrqRestoreFlags),
        // SAFETY: the flags were saved on this CPU just above (IF clear).
        cost(1000, counted, || unsafe { irq::restore_flags(off) }),
    );
    show(
        "time.clock_ns",
        imp(Op::TimeClockNs),
        cost(1000, counted, || {
            core::hint::black_box(time::clock_ns());
        }),
    );

    // A live mapping rewritten with its own value, then flushed, as a kernel
    // changing a mapping does.
    let va = TEST_VA + 0x50_0000;
    let f = frame::alloc().ok_or(String::from("out of frames"))?;
    // SAFETY: a test address mapped to a fresh frame nothing else uses.
    unsafe { paging::map(va, f, paging::WRITABLE) }.map_err(|e| alloc::format!("map: {:?}", e))?;
    let pte = paging::entry(va).ok_or(String::from("no PTE"))?;
    // SAFETY: the live entry just written.
    let value = unsafe { mmu::read_entry(pte) };
    let rewrite = || {
        // SAFETY: the entry's own value written back, then flushed.
        unsafe { mmu::set_pte(pte, value, va) };
        mmu::flush_tlb_one(va);
    };
    show("mmu.set_pte+flush", imp(Op::MmuSetPte), cost(TRAPS, counted, rewrite));
    let batch = cost(TRAPS / 4, counted, || {
        mmu::lazy_enter();
        for _ in 0..64 {
            rewrite();
        }
        mmu::lazy_leave();
    });
    let per = |v: f64| v / 64.0;
    let batch = net(batch, base);
    report(
        "mmu.set_pte+flush(lazy,per entry)",
        imp(Op::MmuSetPte),
        Cost {
            ns: per(batch.ns),
            insns: per(batch.insns),
            exits: per(batch.exits),
            served: per(batch.served),
        },
    );
    let root = mmu::read_cr3();
    // SAFETY: the current root written back.
    show("mmu.write_cr3", imp(Op::MmuWriteCr3), cost(TRAPS, counted, || unsafe { mmu::write_cr3(root) }));
    // SAFETY: the test mapping is unused now.
    let _ = unsafe { paging::unmap(va) };
    // SAFETY: unmapped above.
    unsafe { frame::free(f) };

    // A VMM round trip: a write pvrun's bench-marker port ignores (one exit,
    // from CPL0 or, under lguest, straight from ring 3).
    show("vmm.port_write", "raw", cost(TRAPS, counted, bench_port::ignored_write));
    if let paravirt::BootFlow::Lguest { .. } = ctx.boot.flow {
        let trap = || {
            paravirt::backends::lguest::hypercall::trap(
                paravirt::backends::lguest::abi::hcall::FLUSH_ASYNC,
                0,
                0,
                0,
            );
        };
        show("lguest.hypercall", "lguest", cost(TRAPS, counted, trap));
    }

    // safe_halt woken by a timer armed 1 µs ahead: the wake-up latency.
    crate::arch::traps::set_irq_handler(crate::arch::apic::TIMER_VECTOR, |_| {
        WOKE.store(time::clock_ns(), Ordering::Relaxed);
        paravirt::apic::eoi();
    });
    let mut latencies: Vec<u64> = Vec::with_capacity(20);
    for _ in 0..20 {
        let t0 = time::clock_ns();
        crate::arch::apic::arm_timer(1_000);
        // SAFETY: the IDT is loaded; the timer handler acknowledges.
        unsafe { irq::safe_halt() };
        irq::disable();
        latencies.push(WOKE.load(Ordering::Relaxed).saturating_sub(t0));
    }
    crate::arch::traps::set_irq_handler(crate::arch::apic::TIMER_VECTOR, |_| paravirt::apic::eoi());
    latencies.sort_unstable();
    diag!("bench op:irq.safe_halt(wake-up) impl={} ns={} samples=20", imp(Op::IrqSafeHalt), latencies[10]);
    // SAFETY: saved on this CPU at the start.
    unsafe { irq::restore_flags(flags) };
    Ok(())
}

/// Checksums `data` (FNV-1a over 64-bit words, rotated): work for the CPU.
fn checksum(data: &[u64], mut h: u64) -> u64 {
    for &w in data {
        h = (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(5);
    }
    h
}

/// A CPU-bound kernel workload (`pvkernel.workload=<MiB>`, else skipped):
/// build the page tables that map N MiB (N × 256 PTEs, in lazy mode), and
/// checksum N MiB (a 1 MiB buffer N times). Same work, same checksum, on
/// every platform.
fn workload(ctx: &mut Ctx) -> TestResult {
    let Some(mib) =
        crate::cmdline_value(ctx.boot.cmdline(), "pvkernel.workload").and_then(|v| v.parse::<u64>().ok())
    else {
        return skip("pvkernel.workload=<MiB> not given");
    };
    ensure!((1..=256).contains(&mib), "pvkernel.workload={} MiB (1..=256)", mib);
    let counted = bench_port::present();
    let words = (1 << 20) / 8;
    let mut buf: Vec<u64> = (0..words as u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15)).collect();
    let base = TEST_VA + 0x1000_0000;
    let backing = frame::alloc().ok_or(String::from("out of frames"))?;
    if counted {
        bench_port::start();
    }
    let t0 = time::clock_ns();
    mmu::lazy_enter();
    let mut mapped = Ok(());
    for i in 0..mib * 256 {
        // Every page maps the same frame: the work is the tables, not the RAM.
        // SAFETY: a test range nothing else uses; aliases of a frame nobody reads.
        if let Err(e) = unsafe { paging::map(base + i * PAGE_SIZE, backing, paging::WRITABLE) } {
            mapped = Err(e);
            break;
        }
    }
    mmu::lazy_leave();
    let t1 = time::clock_ns();
    let mut h = 0xcbf2_9ce4_8422_2325;
    for pass in 0..mib {
        buf[0] = pass;
        h = checksum(&buf, h);
    }
    let t2 = time::clock_ns();
    let c = if counted { bench_port::stop_counts() } else { Counts::default() };
    mmu::lazy_enter();
    for i in 0..mib * 256 {
        // SAFETY: our mappings, unused.
        let _ = unsafe { paging::unmap(base + i * PAGE_SIZE) };
    }
    mmu::lazy_leave();
    // SAFETY: unmapped above.
    unsafe { frame::free(backing) };
    mapped.map_err(|e| alloc::format!("map: {:?}", e))?;
    diag!(
        "bench workload mib={} ns={} tables_ns={} checksum_ns={} insns={} exits={} served={} checksum={:#018x}",
        mib,
        t2 - t0,
        t1 - t0,
        t2 - t1,
        c.insns,
        c.exits,
        c.served,
        h
    );
    Ok(())
}
