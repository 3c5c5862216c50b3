//! Multi-CPU: every CPU answers IPIs, TLB shootdown reaches them, kick wakes a
//! waiter, clocks agree across CPUs, steal time per CPU.

use core::sync::atomic::{AtomicU8, Ordering};

use alloc::string::String;
use alloc::vec::Vec;

use paravirt::{lock, mmu, time};

use super::{mem::TEST_VA, skip, Ctx, Test, TestResult};
use crate::arch::probe;
use crate::boot::smp::online;
use crate::mm::{frame, paging, PAGE_SIZE};
use crate::smp::{call, call_async};
use crate::{ensure, percpu};

pub static TESTS: &[Test] = &[
    Test { name: "smp.cpus_online", run: cpus_online },
    Test { name: "smp.ipi_reaches_every_cpu", run: ipi_every_cpu },
    Test { name: "smp.tlb_shootdown", run: tlb_shootdown },
    Test { name: "smp.kick_wakes_waiter", run: kick_wakes_waiter },
    Test { name: "smp.clock_monotonic_across_cpus", run: clock_across_cpus },
    Test { name: "smp.steal_time_per_cpu", run: steal_per_cpu },
    Test { name: "smp.latency_against_cpus", run: latency_against_cpus },
];

const SECOND: u64 = 1_000_000_000;

fn others() -> Vec<u32> {
    let me = percpu::current_index();
    online().iter().filter(|&c| c != me).collect()
}

fn cpus_online(ctx: &mut Ctx) -> TestResult {
    let online = online().len();
    let taken = crate::cpus_taken(ctx.boot.cmdline());
    match crate::cmdline_value(ctx.boot.cmdline(), "pvkernel.cpus").and_then(|v| v.parse::<u32>().ok()) {
        Some(want) => {
            let want = want.min(taken);
            ensure!(online == want, "{} CPUs online, {} expected (the kernel takes {})", online, want, taken)
        }
        None if online == 1 => return skip("one CPU and no pvkernel.cpus= to expect more"),
        None => {}
    }
    Ok(())
}

fn whoami(_: u64) -> u64 {
    u64::from(percpu::current_index())
}

fn ipi_every_cpu(_: &mut Ctx) -> TestResult {
    let cpus = others();
    if cpus.is_empty() {
        return skip("one CPU");
    }
    for cpu in cpus {
        let before = percpu::of(cpu).calls_handled.load(Ordering::Relaxed);
        let r = call(cpu, whoami, 0).map_err(|e| alloc::format!("CPU {}: {:?}", cpu, e))?;
        ensure!(r == u64::from(cpu), "call to CPU {} ran on CPU {}", cpu, r);
        let after = percpu::of(cpu).calls_handled.load(Ordering::Relaxed);
        ensure!(after == before + 1, "CPU {} handled {} calls for one IPI", cpu, after - before);
    }
    Ok(())
}

fn read_on(va: u64) -> u64 {
    probe::read_u64(va).unwrap_or(u64::MAX)
}

/// Every CPU caches a translation; after the PTE changes and `flush_tlb_multi`,
/// every CPU sees the new frame.
fn tlb_shootdown(_: &mut Ctx) -> TestResult {
    let cpus = others();
    if cpus.is_empty() {
        return skip("one CPU");
    }
    let va = TEST_VA + 0x50_0000;
    let (a, b) = (frame::alloc(), frame::alloc());
    let (Some(a), Some(b)) = (a, b) else {
        return Err(String::from("out of frames").into());
    };
    // SAFETY: fresh frames we own.
    unsafe {
        (a as *mut u64).write_volatile(0xaaaa);
        (b as *mut u64).write_volatile(0xbbbb);
    }
    // SAFETY: a private test address.
    unsafe { paging::map(va, a, paging::WRITABLE) }.map_err(|e| alloc::format!("map: {:?}", e))?;
    for &cpu in &cpus {
        let seen = call(cpu, read_on, va).map_err(|e| alloc::format!("CPU {}: {:?}", cpu, e))?;
        ensure!(seen == 0xaaaa, "CPU {} reads {:#x} before the change", cpu, seen);
    }
    let pte = paging::entry(va).ok_or(String::from("no PTE"))?;
    // SAFETY: our test mapping.
    unsafe { mmu::set_pte(pte, paging::kernel_pte(b, paging::WRITABLE), va) };
    mmu::flush_tlb_multi(&online(), va, va + PAGE_SIZE);
    let mut stale = String::new();
    for &cpu in &cpus {
        let seen = call(cpu, read_on, va).map_err(|e| alloc::format!("CPU {}: {:?}", cpu, e))?;
        if seen != 0xbbbb {
            stale.push_str(&alloc::format!(" CPU {} reads {:#x};", cpu, seen));
        }
    }
    ensure!(read_on(va) == 0xbbbb, "this CPU still reads the old frame");
    // SAFETY: test mapping, unused now; both frames are ours.
    unsafe {
        let _ = paging::unmap(va);
        frame::free(a);
        frame::free(b);
    }
    ensure!(stale.is_empty(), "stale after flush_tlb_multi:{}", stale);
    Ok(())
}

static GATE: AtomicU8 = AtomicU8::new(0);

fn wait_for_gate(_: u64) -> u64 {
    let t0 = time::clock_ns();
    while GATE.load(Ordering::Acquire) == 0 {
        lock::wait(&GATE, 0);
        if time::clock_ns() - t0 > 5 * SECOND {
            return 0;
        }
    }
    1
}

fn kick_wakes_waiter(_: &mut Ctx) -> TestResult {
    let Some(&cpu) = others().first() else {
        return skip("one CPU");
    };
    GATE.store(0, Ordering::Release);
    let pending = call_async(cpu, wait_for_gate, 0);
    GATE.store(1, Ordering::Release);
    lock::kick(cpu);
    let r = pending.wait(5 * SECOND).map_err(|e| alloc::format!("waiter: {:?}", e))?;
    ensure!(r == 1, "the waiter on CPU {} gave up", cpu);
    Ok(())
}

fn now(_: u64) -> u64 {
    time::clock_ns()
}

fn clock_across_cpus(_: &mut Ctx) -> TestResult {
    let cpus = others();
    if cpus.is_empty() {
        return skip("one CPU");
    }
    for _ in 0..3 {
        for &cpu in &cpus {
            let t0 = time::clock_ns();
            let t1 = call(cpu, now, 0).map_err(|e| alloc::format!("CPU {}: {:?}", cpu, e))?;
            let t2 = time::clock_ns();
            ensure!(t0 <= t1 && t1 <= t2, "CPU {} read {} between {} and {}", cpu, t1, t0, t2);
        }
    }
    Ok(())
}

fn steal_here(_: u64) -> u64 {
    time::steal_clock(percpu::current_index())
}

fn steal_per_cpu(_: &mut Ctx) -> TestResult {
    let cpus = others();
    if cpus.is_empty() {
        return skip("one CPU");
    }
    for &cpu in &cpus {
        let a = call(cpu, steal_here, 0).map_err(|e| alloc::format!("CPU {}: {:?}", cpu, e))?;
        let b = call(cpu, steal_here, 0).map_err(|e| alloc::format!("CPU {}: {:?}", cpu, e))?;
        ensure!(b >= a, "CPU {} steal went back: {} -> {}", cpu, a, b);
        ensure!(time::steal_clock(cpu) >= b, "CPU {} steal read remotely is behind", cpu);
    }
    Ok(())
}

fn nothing(_: u64) -> u64 {
    0
}

/// How cross-CPU work grows with the CPU count: a round trip of a call (an
/// IPI and its answer) to each other CPU, and one page's TLB shootdown to
/// every CPU at once. `# bench smp.ipi cpus=N avg_ns= max_ns=` and `# bench
/// smp.shootdown cpus=N ns=` (the mean of a few rounds; pvlab's `scale` reads
/// them).
fn latency_against_cpus(_: &mut Ctx) -> TestResult {
    const ROUNDS: u64 = 5;
    let cpus = others();
    if cpus.is_empty() {
        return skip("one CPU");
    }
    let n = cpus.len() + 1;
    let (mut total, mut worst) = (0u64, 0u64);
    for &cpu in &cpus {
        let t0 = time::clock_ns();
        for _ in 0..ROUNDS {
            call(cpu, nothing, 0).map_err(|e| alloc::format!("CPU {}: {:?}", cpu, e))?;
        }
        let each = (time::clock_ns() - t0) / ROUNDS;
        total += each;
        worst = worst.max(each);
    }
    crate::diag!("bench smp.ipi cpus={} avg_ns={} max_ns={}", n, total / cpus.len() as u64, worst);
    let va = TEST_VA + 0x51_0000;
    let everyone = online();
    let t0 = time::clock_ns();
    for _ in 0..ROUNDS {
        mmu::flush_tlb_multi(&everyone, va, va + PAGE_SIZE);
    }
    crate::diag!("bench smp.shootdown cpus={} ns={}", n, (time::clock_ns() - t0) / ROUNDS);
    Ok(())
}
