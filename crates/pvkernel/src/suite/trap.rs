//! Trap tests: expected faults are caught, reported and survived.

use super::{mem::TEST_VA, Ctx, Test, TestResult};
use crate::arch::probe;
use crate::ensure;

pub static TESTS: &[Test] = &[
    Test { name: "trap.page_fault", run: page_fault },
    Test { name: "trap.invalid_opcode", run: invalid_opcode },
    Test { name: "trap.general_protection", run: general_protection },
    Test { name: "trap.divide_error", run: divide_error },
];

fn page_fault(_: &mut Ctx) -> TestResult {
    let va = TEST_VA + 0x7_0000;
    match probe::read_u64(va) {
        Ok(v) => Err(alloc::format!("read of unmapped {:#x} returned {:#x}", va, v).into()),
        Err(f) => {
            ensure!(f.vector == 14, "expected #PF (14), got vector {}", f.vector);
            if f.cr2 == 0 && crate::platform::detect(paravirt::BootFlow::Hardware, "").name == "xen" {
                // QEMU's emulation of nested SVM returns Xen's stale CR2 copy to a
                // guest `mov rax, cr2`; vector and error code still prove the fault.
                crate::diag!("CR2 read 0 (Xen on an emulated SVM); checked vector and error code only");
            } else {
                ensure!(f.cr2 == va, "cr2 {:#x} != {:#x}", f.cr2, va);
            }
            ensure!(f.error & 1 == 0, "error code {:#x} says present", f.error);
            ensure!(f.error & 2 == 0, "error code {:#x} says write", f.error);
            Ok(())
        }
    }
}

fn invalid_opcode(_: &mut Ctx) -> TestResult {
    match probe::invalid_opcode() {
        Ok(_) => Err(alloc::string::String::from("ud2 did not fault").into()),
        Err(f) => {
            ensure!(f.vector == 6, "expected #UD (6), got {}", f.vector);
            ensure!(f.rip != 0, "no rip recorded");
            Ok(())
        }
    }
}

fn general_protection(_: &mut Ctx) -> TestResult {
    let non_canonical = 0x8000_0000_0000_0000;
    match probe::read_u64(non_canonical) {
        Ok(_) => Err(alloc::string::String::from("non-canonical read did not fault").into()),
        Err(f) => {
            ensure!(f.vector == 13, "expected #GP (13), got {}", f.vector);
            ensure!(f.error == 0, "error code {:#x}", f.error);
            Ok(())
        }
    }
}

fn divide_error(_: &mut Ctx) -> TestResult {
    match probe::divide_by_zero() {
        Ok(_) => Err(alloc::string::String::from("div by zero did not fault").into()),
        Err(f) => {
            ensure!(f.vector == 0, "expected #DE (0), got {}", f.vector);
            Ok(())
        }
    }
}
