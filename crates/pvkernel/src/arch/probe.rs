//! Instructions that are expected to fault, for the trap self-tests. Each has an
//! entry in the exception table, so the trap handler resumes at its fixup and
//! records the fault (see [`super::traps::last_fault`]).

use super::traps::{last_fault, FaultInfo};

#[repr(C)]
struct ProbeResult {
    value: u64,
    faulted: u64,
}

core::arch::global_asm!(
    r#"
    .section .text.probe, "ax"
    .global probe_read_u64
probe_read_u64:
    xor edx, edx
2:  mov rax, [rdi]
    ret
4:  mov edx, 1
    xor eax, eax
    ret
    .pushsection .pv_extable, "a"
    .balign 8
    .quad 2b, 4b
    .popsection

    .global probe_write_u64
probe_write_u64:
    xor edx, edx
2:  mov [rdi], rsi
    xor eax, eax
    ret
4:  mov edx, 1
    xor eax, eax
    ret
    .pushsection .pv_extable, "a"
    .balign 8
    .quad 2b, 4b
    .popsection

    .global probe_ud2
probe_ud2:
    xor edx, edx
probe_ud2_insn:
    ud2
    xor eax, eax
    ret
4:  mov edx, 1
    lea rax, [rip + probe_ud2_insn]
    ret
    .pushsection .pv_extable, "a"
    .balign 8
    .quad probe_ud2_insn, 4b
    .popsection

    .global probe_divide_by_zero
probe_divide_by_zero:
    mov eax, 1
    xor ecx, ecx
    xor edx, edx
probe_div_insn:
    div ecx
    xor edx, edx
    ret
4:  mov edx, 1
    lea rax, [rip + probe_div_insn]
    ret
    .pushsection .pv_extable, "a"
    .balign 8
    .quad probe_div_insn, 4b
    .popsection
    .text
    "#
);

extern "C" {
    fn probe_read_u64(addr: u64) -> ProbeResult;
    fn probe_write_u64(addr: u64, value: u64) -> ProbeResult;
    fn probe_ud2() -> ProbeResult;
    fn probe_divide_by_zero() -> ProbeResult;
}

fn finish(r: ProbeResult) -> Result<u64, FaultInfo> {
    match (r.faulted != 0, last_fault()) {
        (false, _) => Ok(r.value),
        (true, Some(f)) => Err(f),
        // The fixup ran but nothing was recorded: report a impossible vector.
        (true, None) => Err(FaultInfo { vector: u64::MAX, error: 0, cr2: 0, rip: 0 }),
    }
}

/// Reads a u64 at `addr`; a fault is returned instead of taken.
pub fn read_u64(addr: u64) -> Result<u64, FaultInfo> {
    // SAFETY: the probe only reads; a fault resumes at its fixup.
    finish(unsafe { probe_read_u64(addr) })
}

/// Writes a u64 at `addr`; a fault is returned instead of taken.
///
/// # Safety
/// If the write succeeds it must not break anything (callers aim it at memory
/// that must refuse it, or at memory they own).
pub unsafe fn write_u64(addr: u64, value: u64) -> Result<u64, FaultInfo> {
    // SAFETY: forwarded to the caller; a fault resumes at the fixup.
    finish(unsafe { probe_write_u64(addr, value) })
}

/// Executes `ud2`. Ok(rip of the ud2) is impossible; Err holds the recorded #UD.
pub fn invalid_opcode() -> Result<u64, FaultInfo> {
    // SAFETY: ud2 faults and resumes at the fixup; no state changes.
    finish(unsafe { probe_ud2() })
}

/// Divides by zero; Err holds the recorded #DE.
pub fn divide_by_zero() -> Result<u64, FaultInfo> {
    // SAFETY: the div faults and resumes at the fixup; no state changes.
    finish(unsafe { probe_divide_by_zero() })
}
