//! Time tests.

use paravirt::cpu;

use super::{Ctx, Test, TestResult};
use crate::ensure;

pub static TESTS: &[Test] = &[Test {
    name: "time.tsc_monotonic",
    run: tsc_monotonic,
}];

fn tsc_monotonic(_: &mut Ctx) -> TestResult {
    let first = cpu::read_tsc();
    let mut prev = first;
    for i in 0..200 {
        let now = cpu::read_tsc();
        ensure!(
            now >= prev,
            "TSC went back at read {}: {} -> {}",
            i,
            prev,
            now
        );
        prev = now;
    }
    ensure!(prev > first, "TSC did not advance over 200 reads");
    Ok(())
}
