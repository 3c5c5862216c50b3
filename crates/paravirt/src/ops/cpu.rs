//! cpu: identification, model-specific registers, control and descriptor-table
//! registers, cache and I/O-delay operations.

use crate::backends::native::ops as native;
use crate::table::ops;

/// The four registers `cpuid` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuidResult {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Operand of `lgdt`/`lidt`: limit and linear base of a descriptor table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, packed(2))]
pub struct DescriptorTablePointer {
    /// Size of the table in bytes, minus one.
    pub limit: u16,
    /// Linear address of the table.
    pub base: u64,
}

/// An MSR access the CPU (or hypervisor) refused with #GP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrFault {
    /// The MSR index that faulted.
    pub msr: u32,
}

/// The cpu op table.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct CpuOps {
    /// `cpuid` with EAX = leaf, ECX = subleaf.
    pub cpuid: fn(u32, u32) -> CpuidResult,
    /// `rdmsr`.
    pub read_msr: unsafe fn(u32) -> u64,
    /// `wrmsr`.
    pub write_msr: unsafe fn(u32, u64),
    /// `rdmsr` that reports #GP instead of taking it.
    pub read_msr_safe: unsafe fn(u32) -> Result<u64, MsrFault>,
    /// `wrmsr` that reports #GP instead of taking it.
    pub write_msr_safe: unsafe fn(u32, u64) -> Result<(), MsrFault>,
    /// `mov rax, cr0`.
    pub read_cr0: fn() -> u64,
    /// `mov cr0, rax`.
    pub write_cr0: unsafe fn(u64),
    /// `mov rax, cr4`.
    pub read_cr4: fn() -> u64,
    /// `mov cr4, rax`.
    pub write_cr4: unsafe fn(u64),
    /// `lgdt`.
    pub load_gdt: unsafe fn(&DescriptorTablePointer),
    /// `lidt`.
    pub load_idt: unsafe fn(&DescriptorTablePointer),
    /// `ltr`.
    pub load_tr: unsafe fn(u16),
    /// `wbinvd`.
    pub wbinvd: fn(),
    /// A short delay between accesses to slow legacy devices (`out 0x80`).
    pub io_delay: fn(),
}

impl CpuOps {
    /// The bare instructions.
    pub const NATIVE: CpuOps = CpuOps {
        cpuid: native::cpuid,
        read_msr: native::read_msr,
        write_msr: native::write_msr,
        read_msr_safe: native::read_msr_safe,
        write_msr_safe: native::write_msr_safe,
        read_cr0: native::read_cr0,
        write_cr0: native::write_cr0,
        read_cr4: native::read_cr4,
        write_cr4: native::write_cr4,
        load_gdt: native::load_gdt,
        load_idt: native::load_idt,
        load_tr: native::load_tr,
        wbinvd: native::wbinvd,
        io_delay: native::io_delay,
    };
}

/// `cpuid` for `leaf`/`subleaf`.
#[inline(always)]
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    (ops().cpu.cpuid)(leaf, subleaf)
}

/// Reads an MSR.
///
/// # Safety
/// `msr` must exist on this CPU and reading it must have no side effect the caller
/// does not expect (a #GP here is a kernel bug).
#[inline(always)]
pub unsafe fn read_msr(msr: u32) -> u64 {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().cpu.read_msr)(msr) }
}

/// Writes an MSR.
///
/// # Safety
/// The write must not break memory safety (e.g. EFER, segment bases in use).
#[inline(always)]
pub unsafe fn write_msr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().cpu.write_msr)(msr, value) }
}

/// Reads an MSR that may not exist; a #GP becomes `Err`.
///
/// # Safety
/// As [`read_msr`], except that a missing MSR is allowed.
#[inline(always)]
pub unsafe fn read_msr_safe(msr: u32) -> Result<u64, MsrFault> {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().cpu.read_msr_safe)(msr) }
}

/// Writes an MSR that may not exist or may refuse the value; a #GP becomes `Err`.
///
/// # Safety
/// As [`write_msr`].
#[inline(always)]
pub unsafe fn write_msr_safe(msr: u32, value: u64) -> Result<(), MsrFault> {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().cpu.write_msr_safe)(msr, value) }
}

/// Reads CR0.
#[inline(always)]
pub fn read_cr0() -> u64 {
    (ops().cpu.read_cr0)()
}

/// Writes CR0.
///
/// # Safety
/// Must not turn off paging or protection the kernel relies on.
#[inline(always)]
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().cpu.write_cr0)(value) }
}

/// Reads CR4.
#[inline(always)]
pub fn read_cr4() -> u64 {
    (ops().cpu.read_cr4)()
}

/// Writes CR4.
///
/// # Safety
/// Must not turn off features the kernel relies on (PAE, ...).
#[inline(always)]
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().cpu.write_cr4)(value) }
}

/// Loads the GDT register.
///
/// # Safety
/// The table must stay valid and hold the selectors in use for as long as it is loaded.
#[inline(always)]
pub unsafe fn load_gdt(gdt: &DescriptorTablePointer) {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().cpu.load_gdt)(gdt) }
}

/// Loads the IDT register.
///
/// # Safety
/// The table must stay valid and point at correct handlers while loaded.
#[inline(always)]
pub unsafe fn load_idt(idt: &DescriptorTablePointer) {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().cpu.load_idt)(idt) }
}

/// Loads the task register.
///
/// # Safety
/// `selector` must name an available TSS descriptor in the loaded GDT.
#[inline(always)]
pub unsafe fn load_tr(selector: u16) {
    // SAFETY: forwarded to the caller.
    unsafe { (ops().cpu.load_tr)(selector) }
}

/// Writes back and invalidates all caches.
#[inline(always)]
pub fn wbinvd() {
    (ops().cpu.wbinvd)()
}

/// Delays briefly between accesses to slow legacy devices.
#[inline(always)]
pub fn io_delay() {
    (ops().cpu.io_delay)()
}

/// Reads the time-stamp counter (unprivileged; here so callers need no raw asm).
#[inline(always)]
pub fn read_tsc() -> u64 {
    native::read_tsc()
}
