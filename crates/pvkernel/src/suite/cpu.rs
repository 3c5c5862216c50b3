//! CPU tests: identification, MSRs, control registers.

use paravirt::cpu;

use super::{Ctx, Test, TestResult};
use crate::ensure;

pub static TESTS: &[Test] = &[
    Test { name: "cpu.cpuid", run: cpuid },
    Test { name: "cpu.msr", run: msr },
    Test { name: "cpu.control_registers", run: control_registers },
];

const IA32_EFER: u32 = 0xc000_0080;
const IA32_APIC_BASE: u32 = 0x1b;
/// x2APIC ID: reading it in xAPIC mode is a #GP on every x86 implementation
/// (unlike an unimplemented index, which some emulators read as 0).
const X2APIC_ID: u32 = 0x802;

fn cpuid(_: &mut Ctx) -> TestResult {
    let l0 = cpu::cpuid(0, 0);
    ensure!(l0.eax >= 1, "max basic leaf {}", l0.eax);
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&l0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&l0.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&l0.ecx.to_le_bytes());
    ensure!(vendor.iter().all(|b| b.is_ascii_graphic()), "vendor {:?}", vendor);
    let ext = cpu::cpuid(0x8000_0001, 0);
    ensure!(ext.edx & (1 << 29) != 0, "long mode bit clear in 0x80000001");
    Ok(())
}

fn msr(_: &mut Ctx) -> TestResult {
    // SAFETY: EFER exists on every x86_64 CPU; reading it is harmless.
    let efer = unsafe { cpu::read_msr(IA32_EFER) };
    ensure!(efer & 0x500 == 0x500, "EFER {:#x} lacks LME|LMA", efer);
    // SAFETY: the safe variant reports #GP; reading has no side effect.
    let safe = unsafe { cpu::read_msr_safe(IA32_EFER) };
    ensure!(safe == Ok(efer), "read_msr_safe(EFER) = {:?}", safe);
    // SAFETY: APIC_BASE exists on every x86_64 CPU.
    let apic_base = unsafe { cpu::read_msr_safe(IA32_APIC_BASE) };
    if apic_base.is_ok_and(|b| b & (1 << 10) != 0) {
        return super::skip("x2APIC enabled: no MSR is known to fault");
    }
    // SAFETY: in xAPIC mode this read is a #GP, which the safe variant catches.
    let missing = unsafe { cpu::read_msr_safe(X2APIC_ID) };
    ensure!(missing.is_err(), "MSR {:#x} read as {:?} in xAPIC mode", X2APIC_ID, missing);
    let fault = crate::arch::traps::last_fault();
    ensure!(fault.map(|f| f.vector) == Some(13), "faulting MSR gave {:?}, want #GP", fault);
    // SAFETY: a write in xAPIC mode is a #GP too, caught.
    let w = unsafe { cpu::write_msr_safe(X2APIC_ID, 1) };
    ensure!(w.is_err(), "write to MSR {:#x} succeeded", X2APIC_ID);
    let _ = crate::arch::traps::last_fault();
    Ok(())
}

fn control_registers(_: &mut Ctx) -> TestResult {
    let cr0 = cpu::read_cr0();
    ensure!(cr0 & 0x8000_0001 == 0x8000_0001, "CR0 {:#x} lacks PG|PE", cr0);
    let cr4 = cpu::read_cr4();
    ensure!(cr4 & 0x20 != 0, "CR4 {:#x} lacks PAE", cr4);
    let root = paravirt::mmu::read_cr3() & crate::mm::paging::ADDR_MASK;
    ensure!(root != 0 && root.is_multiple_of(4096), "CR3 {:#x}", root);
    ensure!(crate::mm::paging::translate(root) == Some(root), "page tables not identity-mapped");
    Ok(())
}
