//! Loops for the patching benchmark: the same op as the raw instruction sequence and
//! as the API's call site, with identical operands and clobbers so the compiler
//! builds the same loop around both. The operands are those the op's contract
//! passes (`set_pte` names the address it maps, in rdx, though the native store
//! does not read it). Only the native forms live here (they are raw
//! privileged instructions, which belong in a backend).

use core::arch::asm;

use crate::ops::Op;

/// Which form of an op a loop runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The bare instruction sequence.
    Raw,
    /// The API function (a patchable site).
    Site,
    /// An empty asm block with the same clobbers: the loop's own cost.
    Empty,
}

/// Scratch state the loops operate on.
#[derive(Clone, Copy, Debug)]
pub struct BenchEnv {
    /// A live, unused level-1 page-table entry (for set_pte / pte_clear).
    pub pte: *mut u64,
    /// The value that entry holds (written back each iteration).
    pub pte_value: u64,
    /// An address mapped by `pte` (for flush_tlb_one).
    pub va: u64,
}

macro_rules! bench_loop {
    ($iters:expr, $form:expr, raw: $raw:literal, site: $site:expr, [$($operands:tt)*]) => {{
        match $form {
            Form::Raw => {
                for _ in 0..$iters {
                    // SAFETY: the caller guarantees the op is harmless to repeat here
                    // (same value written back, flushes of a live mapping).
                    unsafe { asm!($raw, $($operands)* clobber_abi("C")) };
                }
            }
            Form::Site => {
                for _ in 0..$iters {
                    $site;
                }
            }
            Form::Empty => {
                for _ in 0..$iters {
                    // SAFETY: an empty block.
                    unsafe { asm!("", $($operands)* clobber_abi("C")) };
                }
            }
        }
    }};
}

/// The ops with a short native form that are safe to repeat in a loop.
pub const BENCH_OPS: &[Op] = &[
    Op::IrqDisable,
    Op::IrqSaveFlags,
    Op::IrqRestoreFlags,
    Op::MmuReadCr2,
    Op::MmuReadCr3,
    Op::MmuWriteCr3,
    Op::MmuSetPte,
    Op::MmuPteClear,
    Op::MmuFlushTlbOne,
    Op::MmuFlushTlbAll,
    Op::CpuReadCr0,
    Op::CpuReadCr4,
    Op::CpuWriteCr4,
    Op::CpuReadMsr,
    Op::CpuWriteMsr,
    Op::CpuWbinvd,
    Op::CpuIoDelay,
];

const EFER: u32 = 0xc000_0080;

/// Runs `iters` iterations of `op` in `form`; false if `op` is not benchmarked.
///
/// # Safety
/// Interrupts must be disabled (restore_flags writes the flags it read, IF clear);
/// `env` must describe a live test mapping nobody else uses.
pub unsafe fn run(op: Op, form: Form, iters: u64, env: &BenchEnv) -> bool {
    use crate::{cpu, irq, mmu};
    let iters = core::hint::black_box(iters);
    let flags = irq::save_flags();
    let cr3 = mmu::read_cr3();
    let cr4 = cpu::read_cr4();
    // SAFETY: EFER exists on every x86_64 CPU.
    let efer = unsafe { cpu::read_msr(EFER) };
    let (pte, pte_value, va) = (env.pte, env.pte_value, env.va);
    match op {
        Op::IrqDisable => bench_loop!(iters, form, raw: "cli", site: irq::disable(), []),
        Op::IrqSaveFlags => bench_loop!(iters, form, raw: "pushfq; pop rax",
            site: { let _ = irq::save_flags(); }, [lateout("rax") _,]),
        Op::IrqRestoreFlags => bench_loop!(iters, form, raw: "push rdi; popfq",
            // SAFETY: the flags were read on this CPU just above.
            site: unsafe { irq::restore_flags(flags) }, [in("rdi") flags,]),
        Op::MmuReadCr2 => bench_loop!(iters, form, raw: "mov rax, cr2",
            site: { let _ = mmu::read_cr2(); }, [lateout("rax") _,]),
        Op::MmuReadCr3 => bench_loop!(iters, form, raw: "mov rax, cr3",
            site: { let _ = mmu::read_cr3(); }, [lateout("rax") _,]),
        Op::MmuWriteCr3 => bench_loop!(iters, form, raw: "mov cr3, rdi",
            // SAFETY: the current root written back.
            site: unsafe { mmu::write_cr3(cr3) }, [in("rdi") cr3,]),
        Op::MmuSetPte => bench_loop!(iters, form, raw: "mov [rdi], rsi",
            // SAFETY: the entry's own value written back.
            site: unsafe { mmu::set_pte(pte, pte_value, va) }, [in("rdi") pte, in("rsi") pte_value, in("rdx") va,]),
        Op::MmuPteClear => bench_loop!(iters, form, raw: "mov qword ptr [rdi], 0",
            // SAFETY: the caller's spare entry; clearing it unmaps a test page.
            site: unsafe { mmu::pte_clear(pte, va) }, [in("rdi") pte, in("rsi") va,]),
        Op::MmuFlushTlbOne => bench_loop!(iters, form, raw: "invlpg [rdi]",
            site: mmu::flush_tlb_one(va), [in("rdi") va,]),
        Op::MmuFlushTlbAll => bench_loop!(iters, form, raw: "mov rax, cr3; mov cr3, rax",
            site: mmu::flush_tlb_all(), []),
        Op::CpuReadCr0 => bench_loop!(iters, form, raw: "mov rax, cr0",
            site: { let _ = cpu::read_cr0(); }, [lateout("rax") _,]),
        Op::CpuReadCr4 => bench_loop!(iters, form, raw: "mov rax, cr4",
            site: { let _ = cpu::read_cr4(); }, [lateout("rax") _,]),
        Op::CpuWriteCr4 => bench_loop!(iters, form, raw: "mov cr4, rdi",
            // SAFETY: CR4's own value written back.
            site: unsafe { cpu::write_cr4(cr4) }, [in("rdi") cr4,]),
        Op::CpuReadMsr => {
            bench_loop!(iters, form, raw: "mov ecx, edi; rdmsr; shl rdx, 32; or rax, rdx",
            // SAFETY: EFER exists.
            site: { let _ = unsafe { cpu::read_msr(EFER) }; }, [in("rdi") EFER, lateout("rax") _,])
        }
        Op::CpuWriteMsr => bench_loop!(iters, form,
            raw: "mov ecx, edi; mov eax, esi; mov rdx, rsi; shr rdx, 32; wrmsr",
            // SAFETY: EFER's own value written back.
            site: unsafe { cpu::write_msr(EFER, efer) }, [in("rdi") EFER, in("rsi") efer,]),
        Op::CpuWbinvd => bench_loop!(iters, form, raw: "wbinvd", site: cpu::wbinvd(), []),
        Op::CpuIoDelay => bench_loop!(iters, form, raw: "out 0x80, al", site: cpu::io_delay(), []),
        // Not in BENCH_OPS (no native inline form): the clock against raw rdtsc,
        // and two ops measured against the empty loop only.
        Op::TimeClockNs => bench_loop!(iters, form, raw: "rdtsc",
            site: { let _ = crate::time::clock_ns(); }, [lateout("rax") _, lateout("rdx") _,]),
        Op::TimeStealClock => bench_loop!(iters, form, raw: "",
            site: { let _ = crate::time::steal_clock(0); }, [lateout("rax") _,]),
        Op::ApicEoi => bench_loop!(iters, form, raw: "", site: crate::apic::eoi(), []),
        _ => return false,
    }
    true
}
