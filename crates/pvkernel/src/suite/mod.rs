//! The conformance suite: small tests, each reporting one TAP line.

use alloc::string::String;

use crate::boot::BootInfo;
use crate::tap::{self, Outcome};

mod bench;
mod boot;
mod cpu;
mod hyperv;
mod irq;
mod kvm;
mod lock;
mod mem;
mod mmu;
mod pv;
mod smp;
mod speed;
mod time;
mod trap;
mod vmware;

/// What a test can look at.
pub struct Ctx<'a> {
    /// The boot information.
    pub boot: &'a BootInfo,
    /// Which backend serves which op.
    pub selection: &'a paravirt::Selection<'a>,
}

/// A test's verdict: `Ok(())` passes, `Err(message)` fails, [`skip`] skips.
pub type TestResult = Result<(), Failure>;

/// A failed or skipped test.
pub enum Failure {
    /// Failed with a message.
    Fail(String),
    /// Not applicable on this platform.
    Skip(&'static str),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Fail(s)
    }
}

/// Skips the current test.
pub fn skip(why: &'static str) -> TestResult {
    Err(Failure::Skip(why))
}

/// Fails the test with a formatted message unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err($crate::suite::Failure::Fail(alloc::format!($($arg)*)));
        }
    };
}

/// One test.
pub struct Test {
    /// `group.name`.
    pub name: &'static str,
    /// The body.
    pub run: fn(&mut Ctx) -> TestResult,
}

/// Every test, in the order they run.
pub fn all() -> impl Iterator<Item = &'static Test> {
    boot::TESTS
        .iter()
        .chain(pv::TESTS)
        .chain(mem::TESTS)
        .chain(mmu::TESTS)
        .chain(trap::TESTS)
        .chain(cpu::TESTS)
        .chain(irq::TESTS)
        .chain(time::TESTS)
        .chain(lock::TESTS)
        .chain(smp::TESTS)
        .chain(kvm::TESTS)
        .chain(vmware::TESTS)
        .chain(hyperv::TESTS)
        .chain(bench::TESTS)
        .chain(speed::TESTS)
}

/// Runs every test whose name starts with `filter`; returns the number failed.
pub fn run(ctx: &mut Ctx, filter: &str) -> usize {
    let count = all().filter(|t| t.name.starts_with(filter)).count();
    tap::line(format_args!("1..{}", count));
    let mut failed = 0;
    let durations = crate::cmdline_value(ctx.boot.cmdline(), "pvkernel.durations") == Some("1");
    let (start, mut marks) = (paravirt::time::clock_ns(), 0);
    for (i, t) in all().filter(|t| t.name.starts_with(filter)).enumerate() {
        let t0 = paravirt::time::clock_ns();
        let result = (t.run)(ctx);
        let took = paravirt::time::clock_ns() - t0;
        if t.name == "time.clock_marks_for_the_host" {
            marks += took;
        }
        let outcome = match result {
            Ok(()) => Outcome::Pass,
            Err(Failure::Skip(why)) => Outcome::Skip(why),
            Err(Failure::Fail(msg)) => {
                failed += 1;
                Outcome::Fail(msg)
            }
        };
        tap::result(i + 1, t.name, &outcome);
        if durations {
            crate::diag!("duration {} {} us", t.name, took / 1000);
        }
    }
    let total = paravirt::time::clock_ns() - start;
    crate::diag!(
        "suite: {} ms, {} ms of it waiting in time.clock_marks_for_the_host",
        total / 1_000_000,
        marks / 1_000_000
    );
    failed
}
