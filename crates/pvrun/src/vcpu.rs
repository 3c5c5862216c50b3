//! One vCPU: its PVH boot state, the thin `KVM_RUN` wrapper, and the state
//! read back for crash reports.

use std::fmt;

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_fpu, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_run, kvm_segment, kvm_sregs, CpuId,
    Msrs, KVM_EXIT_INTERNAL_ERROR, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::{Kvm, SyncReg, VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout;
use crate::stats::{KvmStats, StatsError};
use crate::vm::SetupError;

/// CR0.PE: protected mode.
pub const X86_CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (hard-wired to 1 on every CPU since the 486).
pub const X86_CR0_ET: u64 = 1 << 4;
/// EFLAGS bit 1 is reserved and always 1; IF, TF and VM are clear, as PVH requires.
pub const EFLAGS_RESERVED: u64 = 1 << 1;

/// LAPIC register offsets and LVT delivery modes (Intel SDM vol. 3, 11.5.1).
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// GDT selectors of the boot GDT written at [`layout::BOOT_GDT_START`].
pub const BOOT_CS: u16 = 0x08;
/// Data segment selector of the boot GDT.
pub const BOOT_DS: u16 = 0x10;
/// TSS selector of the boot GDT.
pub const BOOT_TSS: u16 = 0x18;

/// Builds a GDT descriptor from `flags` (access byte in bits 0..8, G/DB/L/AVL
/// in bits 12..16), `base` and `limit`, as Firecracker's `gdt_entry`.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The boot GDT: null, flat 32-bit code (type 0xb), flat 32-bit data
/// (type 0x3), and a 32-bit busy TSS (type 0xb, base 0, limit 0x67).
pub const BOOT_GDT: [u64; 4] =
    [0, gdt_entry(0xc09b, 0, 0xfffff), gdt_entry(0xc093, 0, 0xfffff), gdt_entry(0x008b, 0, 0x67)];

/// The `kvm_segment` KVM wants for GDT descriptor `entry` loaded with
/// `selector`.
pub fn segment_from_gdt(entry: u64, selector: u16) -> kvm_segment {
    let limit = ((entry & 0x0000_0000_0000_ffff) | ((entry & 0x000f_0000_0000_0000) >> 32)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base: (((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000)),
        // A page-granular limit covers the whole last page.
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: if (entry >> 47) & 1 == 1 { 0 } else { 1 },
        padding: 0,
    }
}

/// Puts `sregs` in the PVH entry state (pvh.pandoc, "x86/HVM direct boot
/// ABI"): 32-bit protected mode, paging off, flat CS/DS/ES/FS/GS/SS, a busy
/// 32-bit TSS in TR, CR0 = PE|ET, CR4 = 0, EFER = 0. Other fields (APIC base,
/// interrupt bitmap) are kept.
pub fn set_pvh_sregs(sregs: &mut kvm_sregs) {
    let code = segment_from_gdt(BOOT_GDT[1], BOOT_CS);
    let data = segment_from_gdt(BOOT_GDT[2], BOOT_DS);
    let tss = segment_from_gdt(BOOT_GDT[3], BOOT_TSS);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.gdt.base = layout::BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = layout::BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr2 = 0;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// The PVH entry registers: EIP = entry, EBX = `hvm_start_info`, EFLAGS = 0x2.
pub fn pvh_regs(entry: GuestAddress, start_info: GuestAddress) -> kvm_regs {
    kvm_regs { rip: entry.0, rbx: start_info.0, rflags: EFLAGS_RESERVED, ..Default::default() }
}

/// The registers of a stopped vCPU, for crash reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RegisterDump {
    /// RAX.
    pub rax: u64,
    /// RBX.
    pub rbx: u64,
    /// RCX.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// RSI.
    pub rsi: u64,
    /// RDI.
    pub rdi: u64,
    /// RSP.
    pub rsp: u64,
    /// RBP.
    pub rbp: u64,
    /// RIP.
    pub rip: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

impl RegisterDump {
    /// Combines general and special registers.
    pub fn from_kvm(regs: &kvm_regs, sregs: &kvm_sregs) -> Self {
        RegisterDump {
            rax: regs.rax,
            rbx: regs.rbx,
            rcx: regs.rcx,
            rdx: regs.rdx,
            rsi: regs.rsi,
            rdi: regs.rdi,
            rsp: regs.rsp,
            rbp: regs.rbp,
            rip: regs.rip,
            rflags: regs.rflags,
            cr0: sregs.cr0,
            cr3: sregs.cr3,
            cr4: sregs.cr4,
            efer: sregs.efer,
        }
    }
}

impl fmt::Display for RegisterDump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x} rsp={:#x} rbp={:#x} \
             rip={:#x} rflags={:#x} cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rsp,
            self.rbp,
            self.rip,
            self.rflags,
            self.cr0,
            self.cr3,
            self.cr4,
            self.efer
        )
    }
}

/// The details KVM gives with `KVM_EXIT_INTERNAL_ERROR`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InternalErrorInfo {
    /// `KVM_INTERNAL_ERROR_*`.
    pub suberror: u32,
    /// The `data` words (`ndata` of them, at most 16).
    pub data: Vec<u64>,
}

/// One virtual CPU.
#[derive(Debug)]
pub struct Vcpu {
    index: u8,
    fd: VcpuFd,
    /// Registers travel through `kvm_run` (see [`Vcpu::enable_sync_regs`]).
    sync: bool,
    /// So do the control and segment registers ([`Vcpu::enable_sync_sregs`]).
    sync_sregs: bool,
}

impl Vcpu {
    /// Wraps a vCPU fd created by [`crate::vm::Vm::create_vcpu`].
    pub(crate) fn new(index: u8, fd: VcpuFd) -> Self {
        Vcpu { index, fd, sync: false, sync_sregs: false }
    }

    /// The vCPU's index (and APIC id).
    pub fn index(&self) -> u8 {
        self.index
    }

    /// Puts the bootstrap processor in the PVH entry state: `cpuid`, FPU,
    /// LAPIC LINT pins, segment and control registers (with the boot GDT
    /// written to guest memory) and the entry registers.
    pub fn configure_pvh(
        &self,
        cpuid: &[kvm_cpuid_entry2],
        mem: &GuestMemoryMmap,
        entry: GuestAddress,
        start_info: GuestAddress,
    ) -> Result<(), SetupError> {
        self.set_cpuid(cpuid)?;
        self.set_lint()?;
        self.enter_protected_mode(mem, entry, start_info.0)
    }

    /// Prepares an application processor: sets `cpuid` and makes sure it
    /// waits for INIT/SIPI (`KVM_MP_STATE_UNINITIALIZED`, KVM's default for
    /// a non-BSP vCPU with an in-kernel irqchip). Its registers stay in
    /// KVM's reset state; the guest starts it with INIT-SIPI-SIPI.
    pub fn configure_ap(&self, cpuid: &[kvm_cpuid_entry2]) -> Result<(), SetupError> {
        self.set_cpuid(cpuid)?;
        self.fd
            .set_mp_state(kvm_mp_state { mp_state: KVM_MP_STATE_UNINITIALIZED })
            .map_err(SetupError::ioctl("put an application processor in wait-for-SIPI"))?;
        let state = self.mp_state()?;
        if state != KVM_MP_STATE_UNINITIALIZED {
            return Err(SetupError::ApNotWaiting { vcpu: self.index, state });
        }
        Ok(())
    }

    /// `KVM_GET_MP_STATE`: `KVM_MP_STATE_*`.
    pub fn mp_state(&self) -> Result<u32, SetupError> {
        self.fd.get_mp_state().map(|s| s.mp_state).map_err(SetupError::ioctl("read the MP state"))
    }

    /// 32-bit protected mode at `entry` as PVH defines it: FPU reset, the
    /// boot GDT written to guest memory, flat segments, paging off, EBX =
    /// `rbx`, EFLAGS = 0x2.
    pub fn enter_protected_mode(
        &self,
        mem: &GuestMemoryMmap,
        entry: GuestAddress,
        rbx: u64,
    ) -> Result<(), SetupError> {
        self.reset_fpu()?;

        for (i, entry) in BOOT_GDT.iter().enumerate() {
            let addr = layout::BOOT_GDT_START + (i * std::mem::size_of::<u64>()) as u64;
            mem.write_obj(*entry, GuestAddress(addr)).map_err(SetupError::Gdt)?;
        }
        mem.write_obj(0u64, GuestAddress(layout::BOOT_IDT_START)).map_err(SetupError::Gdt)?;

        self.set_state(|sregs| {
            set_pvh_sregs(sregs);
            pvh_regs(entry, GuestAddress(rbx))
        })
    }

    /// `KVM_SET_CPUID2` with `entries` (see [`crate::cpuid::vcpu_cpuid`]).
    pub fn set_cpuid(&self, entries: &[kvm_cpuid_entry2]) -> Result<(), SetupError> {
        let cpuid =
            CpuId::from_entries(entries).map_err(|_| SetupError::CpuidTooLarge { entries: entries.len() })?;
        self.fd.set_cpuid2(&cpuid).map_err(SetupError::ioctl("set the CPUID"))
    }

    /// Wires LAPIC LINT0 to ExtINT and LINT1 to NMI, as a PC BIOS leaves them
    /// (virtual wire mode).
    fn set_lint(&self) -> Result<(), SetupError> {
        let mut lapic = self.fd.get_lapic().map_err(SetupError::ioctl("read the LAPIC"))?;
        for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
            let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
            for (i, b) in value.to_le_bytes().iter().enumerate() {
                lapic.regs[reg + i] = *b as std::os::raw::c_char;
            }
        }
        self.fd.set_lapic(&lapic).map_err(SetupError::ioctl("set the LAPIC"))
    }

    /// Opens this vCPU's binary statistics (`KVM_GET_STATS_FD`);
    /// [`StatsError::Unsupported`] if `kvm` has none.
    pub fn open_stats(&self, kvm: &Kvm) -> Result<KvmStats, StatsError> {
        KvmStats::open_vcpu(kvm, &self.fd)
    }

    /// The thin `KVM_RUN` wrapper: enters the guest once and returns KVM's
    /// exit (or errno, e.g. `EINTR` when a signal or `immediate_exit`
    /// stopped it).
    pub fn run(&mut self) -> Result<VcpuExit<'_>, kvm_ioctls::Error> {
        self.fd.run()
    }

    /// Sets or clears `kvm_run.immediate_exit`: while set, `KVM_RUN` returns
    /// `EINTR` at once instead of entering the guest.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// The address of this vCPU's `kvm_run` mapping, for the watchdog's
    /// signal handler; valid as long as this `Vcpu` lives.
    pub fn kvm_run_ptr(&mut self) -> *mut kvm_run {
        self.fd.get_kvm_run()
    }

    /// After an `in` exit: puts the low bytes of `value` (as many as one
    /// access) into each of the exit's accesses (one, or a string `ins`'s
    /// count), where KVM takes what the guest reads from: the exit's data
    /// area, which KVM moves into AL, AX or EAX (or memory) as it resumes.
    pub fn complete_io_in(&mut self, value: u32) {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        let bytes = value.to_le_bytes();
        // SAFETY: `run` is this vCPU's live kvm_run mapping and the last exit
        // was an I/O exit, so its `io` member is the one KVM filled: KVM put
        // `data_offset` inside the mapping, with room for `size` × `count`
        // bytes; exactly those are written (`size` ≤ 4 for port I/O),
        // through raw pointers.
        unsafe {
            let io = std::ptr::addr_of!((*run).__bindgen_anon_1.io).read();
            let size = usize::from(io.size).min(bytes.len());
            let data = (run as *mut u8).add(io.data_offset as usize);
            for i in 0..io.count as usize {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), data.add(i * size), size);
            }
        }
    }

    /// After a `rdmsr` or `wrmsr` exit (`KVM_EXIT_X86_RDMSR`/`WRMSR`): `Some`
    /// completes it (a read gets the value), `None` makes KVM inject #GP.
    pub fn complete_msr(&mut self, value: Option<u64>) {
        let run: *mut kvm_run = self.fd.get_kvm_run();
        // SAFETY: `run` is this vCPU's live kvm_run mapping and the last exit
        // was an MSR exit, so its `msr` member is the one KVM filled and
        // reads back at the next KVM_RUN; two of its fields are written
        // through raw pointers.
        unsafe {
            let msr = std::ptr::addr_of_mut!((*run).__bindgen_anon_1.msr);
            std::ptr::addr_of_mut!((*msr).error).write(u8::from(value.is_none()));
            std::ptr::addr_of_mut!((*msr).data).write(value.unwrap_or(0));
        }
    }

    /// Lets [`Self::sync_regs`] and [`Self::set_sync_regs`] use the copy of the
    /// registers KVM keeps in `kvm_run` (`KVM_CAP_SYNC_REGS`), saving two ioctls
    /// per exit; without the capability they fall back to `KVM_GET/SET_REGS`.
    pub fn enable_sync_regs(&mut self, kvm: &Kvm) {
        self.sync = kvm.check_extension(kvm_ioctls::Cap::SyncRegs);
        if self.sync {
            self.fd.set_sync_valid_reg(SyncReg::Register);
        }
    }

    /// Also keeps the control and segment registers in `kvm_run`, read by
    /// [`Self::sync_sregs`] without an ioctl (after [`Self::enable_sync_regs`]).
    pub fn enable_sync_sregs(&mut self) {
        if self.sync {
            self.fd.set_sync_valid_reg(SyncReg::SystemRegister);
            self.sync_sregs = true;
        }
    }

    /// The control and segment registers as of the last exit (all zero if KVM
    /// refuses): from `kvm_run` after [`Self::enable_sync_sregs`].
    pub fn sync_sregs(&mut self) -> kvm_sregs {
        if self.sync_sregs {
            self.fd.sync_regs().sregs
        } else {
            self.fd.get_sregs().unwrap_or_default()
        }
    }

    /// The general registers as of the last exit (all zero if KVM refuses).
    pub fn sync_regs(&mut self) -> kvm_regs {
        if self.sync {
            self.fd.sync_regs().regs
        } else {
            self.fd.get_regs().unwrap_or_default()
        }
    }

    /// Sets the general registers for the next entry.
    pub fn set_sync_regs(&mut self, regs: &kvm_regs) {
        if self.sync {
            self.fd.sync_regs_mut().regs = *regs;
            self.fd.set_sync_dirty_reg(SyncReg::Register);
        } else {
            // A refusal surfaces as a crash at the next entry.
            let _ = self.fd.set_regs(regs);
        }
    }

    /// `KVM_GET_SREGS`; `None` if KVM refuses.
    pub fn sregs(&self) -> Option<kvm_sregs> {
        self.fd.get_sregs().ok()
    }

    /// `KVM_SET_SREGS`; `false` if KVM refuses.
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> bool {
        self.fd.set_sregs(sregs).is_ok()
    }

    /// Reads MSR `index` (`KVM_GET_MSRS`); `None` if KVM refuses.
    pub fn msr(&self, index: u32) -> Option<u64> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry { index, ..Default::default() }]).ok()?;
        (self.fd.get_msrs(&mut msrs).ok()? == 1).then(|| msrs.as_slice()[0].data)
    }

    /// Writes MSR `index` (`KVM_SET_MSRS`); `false` if KVM refuses.
    pub fn set_msr(&self, index: u32, data: u64) -> bool {
        Msrs::from_entries(&[kvm_msr_entry { index, data, ..Default::default() }])
            .is_ok_and(|msrs| self.fd.set_msrs(&msrs).is_ok_and(|n| n == 1))
    }

    /// The guest's TSC frequency (`KVM_GET_TSC_KHZ`); `None` if KVM cannot say.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|&k| k != 0)
    }

    /// Sets the FPU to its reset state (x87 control word 0x37f, MXCSR 0x1f80).
    pub fn reset_fpu(&self) -> Result<(), SetupError> {
        let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
        self.fd.set_fpu(&fpu).map_err(SetupError::ioctl("set the FPU state"))
    }

    /// Puts the vCPU at `regs` with the special registers `edit` makes of
    /// KVM's current ones.
    pub fn set_state(&self, edit: impl FnOnce(&mut kvm_sregs) -> kvm_regs) -> Result<(), SetupError> {
        let mut sregs = self.fd.get_sregs().map_err(SetupError::ioctl("read the special registers"))?;
        let regs = edit(&mut sregs);
        self.fd.set_sregs(&sregs).map_err(SetupError::ioctl("set the special registers"))?;
        self.fd.set_regs(&regs).map_err(SetupError::ioctl("set the registers"))
    }

    /// Reads the registers for a crash report; `None` if KVM refuses.
    pub fn registers(&self) -> Option<RegisterDump> {
        let regs = self.fd.get_regs().ok()?;
        let sregs = self.fd.get_sregs().ok()?;
        Some(RegisterDump::from_kvm(&regs, &sregs))
    }

    /// Reads RIP; `None` if KVM refuses.
    pub fn rip(&self) -> Option<u64> {
        self.fd.get_regs().ok().map(|r| r.rip)
    }

    /// The suberror and data of the last exit if it was
    /// `KVM_EXIT_INTERNAL_ERROR`.
    pub fn internal_error_info(&mut self) -> Option<InternalErrorInfo> {
        let run = self.fd.get_kvm_run();
        if run.exit_reason != KVM_EXIT_INTERNAL_ERROR {
            return None;
        }
        // SAFETY: `exit_reason` is KVM_EXIT_INTERNAL_ERROR, so KVM filled
        // the `internal` member of the exit union (kvm_run docs); the union
        // holds only integers, so the copy is a plain read of initialised
        // bytes.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        Some(InternalErrorInfo { suberror: internal.suberror, data: internal.data[..n].to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_gdt_descriptors() {
        assert_eq!(BOOT_GDT[1], 0x00cf_9b00_0000_ffff);
        assert_eq!(BOOT_GDT[2], 0x00cf_9300_0000_ffff);
        assert_eq!(BOOT_GDT[3], 0x0000_8b00_0000_0067);
    }

    #[test]
    fn pvh_segment_state() {
        let mut sregs = kvm_sregs::default();
        set_pvh_sregs(&mut sregs);
        let cs = sregs.cs;
        assert_eq!(
            (cs.base, cs.limit, cs.type_, cs.s, cs.db, cs.g, cs.present, cs.l),
            (0, 0xffff_ffff, 0xb, 1, 1, 1, 1, 0)
        );
        for seg in [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!(
                (seg.base, seg.limit, seg.type_, seg.s, seg.db, seg.g, seg.present),
                (0, 0xffff_ffff, 0x3, 1, 1, 1, 1)
            );
        }
        let tr = sregs.tr;
        assert_eq!((tr.base, tr.limit, tr.type_, tr.s, tr.present, tr.unusable), (0, 0x67, 0xb, 0, 1, 0));
        assert_eq!(sregs.cr0, 0x11);
        assert_eq!((sregs.cr3, sregs.cr4, sregs.efer), (0, 0, 0));
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn pvh_entry_registers() {
        let regs = pvh_regs(GuestAddress(0x10_0000), GuestAddress(0x6000));
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x10_0000, 0x6000, 2));
        assert_eq!((regs.rax, regs.rsp), (0, 0));
    }

    #[test]
    fn register_dump_is_one_line() {
        let d = RegisterDump { rip: 0x100010, ..Default::default() };
        let s = d.to_string();
        assert!(s.contains("rip=0x100010"));
        for name in
            ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rflags", "cr0", "cr3", "cr4", "efer"]
        {
            assert!(s.contains(&format!("{name}=0x")), "{name} in {s}");
        }
        assert!(!s.contains('\n'));
    }
}
