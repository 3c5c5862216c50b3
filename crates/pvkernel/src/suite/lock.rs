//! lock ops and the remaining cpu ops.

use core::sync::atomic::AtomicU8;

use paravirt::{cpu, lock};

use super::{Ctx, Test, TestResult};
use crate::ensure;

pub static TESTS: &[Test] = &[
    Test { name: "lock.wait_kick_preempted", run: wait_kick },
    Test { name: "cpu.control_register_roundtrip", run: cr_roundtrip },
    Test { name: "cpu.io_delay_and_wbinvd", run: delay_and_wbinvd },
];

fn wait_kick(_: &mut Ctx) -> TestResult {
    let me = crate::percpu::current_index();
    let byte = AtomicU8::new(1);
    // The value differs, so wait must return.
    lock::wait(&byte, 0);
    lock::kick(me);
    ensure!(!lock::vcpu_is_preempted(me), "the running CPU reports itself preempted");
    Ok(())
}

fn cr_roundtrip(_: &mut Ctx) -> TestResult {
    let cr0 = cpu::read_cr0();
    let cr4 = cpu::read_cr4();
    // SAFETY: writing back the values just read changes nothing.
    unsafe {
        cpu::write_cr0(cr0);
        cpu::write_cr4(cr4);
    }
    ensure!(cpu::read_cr0() == cr0 && cpu::read_cr4() == cr4, "CR0/CR4 changed on write-back");
    // SAFETY: EFER write-back of its own value.
    unsafe {
        let efer = cpu::read_msr(0xc000_0080);
        cpu::write_msr(0xc000_0080, efer);
        ensure!(cpu::read_msr(0xc000_0080) == efer, "EFER changed on write-back");
    }
    Ok(())
}

fn delay_and_wbinvd(_: &mut Ctx) -> TestResult {
    let t0 = cpu::read_tsc();
    cpu::io_delay();
    cpu::wbinvd();
    ensure!(cpu::read_tsc() >= t0, "TSC went back");
    Ok(())
}
