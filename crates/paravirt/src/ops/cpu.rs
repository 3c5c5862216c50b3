//! cpu: identification, model-specific registers, control and descriptor-table
//! registers, cache and I/O-delay operations.

use crate::backends::native::ops as native;
use crate::ops::Op;
use crate::pv_site;

/// The four registers `cpuid` returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
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

/// Result of a safe MSR access on the wire (rax = value, rdx = 0 or 1 if #GP).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct MsrResult {
    /// The value read (0 after a fault).
    pub value: u64,
    /// Non-zero when the access raised #GP.
    pub faulted: u64,
}

/// The cpu op table. Each field is one op; see the free functions for semantics.
#[derive(Clone, Copy)]
#[repr(C)]
#[allow(missing_docs)]
pub struct CpuOps {
    pub cpuid: extern "C" fn(u32, u32) -> CpuidResult,
    pub read_msr: unsafe extern "C" fn(u32) -> u64,
    pub write_msr: unsafe extern "C" fn(u32, u64),
    pub read_msr_safe: unsafe extern "C" fn(u32) -> MsrResult,
    pub write_msr_safe: unsafe extern "C" fn(u32, u64) -> MsrResult,
    pub read_cr0: extern "C" fn() -> u64,
    pub write_cr0: unsafe extern "C" fn(u64),
    pub read_cr4: extern "C" fn() -> u64,
    pub write_cr4: unsafe extern "C" fn(u64),
    pub load_gdt: unsafe extern "C" fn(*const DescriptorTablePointer),
    pub load_idt: unsafe extern "C" fn(*const DescriptorTablePointer),
    pub load_tr: unsafe extern "C" fn(u16),
    pub wbinvd: extern "C" fn(),
    pub io_delay: extern "C" fn(),
    /// Entered by a jump, never called: see [`iret`].
    pub iret: unsafe extern "C" fn() -> !,
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
        iret: native::iret,
    };
}

/// `cpuid` for `leaf`/`subleaf`.
#[inline(always)]
pub fn cpuid(leaf: u32, subleaf: u32) -> CpuidResult {
    let (lo, hi): (u64, u64);
    // SAFETY: the site calls the table's cpuid (C ABI: 16-byte struct in rax:rdx).
    unsafe {
        pv_site!(Op::CpuCpuid; in("rdi") leaf, in("rsi") subleaf, lateout("rax") lo, lateout("rdx") hi,)
    };
    CpuidResult { eax: lo as u32, ebx: (lo >> 32) as u32, ecx: hi as u32, edx: (hi >> 32) as u32 }
}

/// Reads an MSR.
///
/// # Safety
/// `msr` must exist here and reading it must have no side effect the caller does
/// not expect (a #GP is a kernel bug).
#[inline(always)]
pub unsafe fn read_msr(msr: u32) -> u64 {
    let v: u64;
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::CpuReadMsr; in("rdi") msr, lateout("rax") v,) };
    v
}

/// Writes an MSR.
///
/// # Safety
/// The write must not break memory safety (EFER, segment bases in use, ...).
#[inline(always)]
pub unsafe fn write_msr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::CpuWriteMsr; in("rdi") msr, in("rsi") value,) };
}

/// Reads an MSR that may not exist; a #GP becomes `Err`.
///
/// # Safety
/// As [`read_msr`], except that a missing MSR is allowed.
#[inline(always)]
pub unsafe fn read_msr_safe(msr: u32) -> Result<u64, MsrFault> {
    let (value, faulted): (u64, u64);
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::CpuReadMsrSafe; in("rdi") msr, lateout("rax") value, lateout("rdx") faulted,) };
    if faulted == 0 {
        Ok(value)
    } else {
        Err(MsrFault { msr })
    }
}

/// Writes an MSR that may not exist or may refuse the value; a #GP becomes `Err`.
///
/// # Safety
/// As [`write_msr`].
#[inline(always)]
pub unsafe fn write_msr_safe(msr: u32, value: u64) -> Result<(), MsrFault> {
    let faulted: u64;
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::CpuWriteMsrSafe; in("rdi") msr, in("rsi") value, lateout("rdx") faulted,) };
    if faulted == 0 {
        Ok(())
    } else {
        Err(MsrFault { msr })
    }
}

/// Reads CR0.
#[inline(always)]
pub fn read_cr0() -> u64 {
    let v: u64;
    // SAFETY: reading CR0 has no side effect.
    unsafe { pv_site!(Op::CpuReadCr0; lateout("rax") v,) };
    v
}

/// Writes CR0.
///
/// # Safety
/// Must not turn off paging or protection the kernel relies on.
#[inline(always)]
pub unsafe fn write_cr0(value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::CpuWriteCr0; in("rdi") value,) };
}

/// Reads CR4.
#[inline(always)]
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no side effect.
    unsafe { pv_site!(Op::CpuReadCr4; lateout("rax") v,) };
    v
}

/// Writes CR4.
///
/// # Safety
/// Must not turn off features the kernel relies on (PAE, ...).
#[inline(always)]
pub unsafe fn write_cr4(value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::CpuWriteCr4; in("rdi") value,) };
}

/// Loads the GDT register.
///
/// # Safety
/// The table must stay valid and hold the selectors in use while it is loaded.
#[inline(always)]
pub unsafe fn load_gdt(gdt: &DescriptorTablePointer) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::CpuLoadGdt; in("rdi") gdt as *const DescriptorTablePointer,) };
}

/// Loads the IDT register.
///
/// # Safety
/// The table must stay valid and point at correct handlers while loaded.
#[inline(always)]
pub unsafe fn load_idt(idt: &DescriptorTablePointer) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::CpuLoadIdt; in("rdi") idt as *const DescriptorTablePointer,) };
}

/// Loads the task register.
///
/// # Safety
/// `selector` must name an available TSS descriptor in the loaded GDT.
#[inline(always)]
pub unsafe fn load_tr(selector: u16) {
    // SAFETY: forwarded to the caller.
    unsafe { pv_site!(Op::CpuLoadTr; in("rdi") u64::from(selector),) };
}

/// Writes back and invalidates all caches.
#[inline(always)]
pub fn wbinvd() {
    // SAFETY: wbinvd does not change memory contents.
    unsafe { pv_site!(Op::CpuWbinvd;) };
}

/// Delays briefly between accesses to slow legacy devices.
#[inline(always)]
pub fn io_delay() {
    // SAFETY: a delay has no memory effect.
    unsafe { pv_site!(Op::CpuIoDelay;) };
}

/// `iretq`: the return from an interrupt or exception, as a patchable *jump*
/// site in the kernel's trap exit (Linux's `INTERRUPT_RETURN`). A deprivileged
/// backend must restore its virtual interrupt flag from the frame as it returns
/// (lguest's `lguest_iret`); natively the site is the `iretq` itself.
///
/// The site lives in the kernel's own assembly: [`crate::iret_site!`] gives its
/// text, and these constants its operands.
pub mod iret {
    use crate::ops::Op;

    /// The op.
    pub const OP: u16 = Op::CpuIret as u16;
    /// Offset of its entry in [`crate::table::PvOps`].
    pub const OFFSET: usize = Op::CpuIret.info().offset;
    /// Length of the site.
    pub const LEN: usize = crate::patch::site_len(Op::CpuIret);
}

/// Reads the time-stamp counter (unprivileged: not an op, here so callers need no
/// raw asm).
#[inline(always)]
pub fn read_tsc() -> u64 {
    native::read_tsc()
}
