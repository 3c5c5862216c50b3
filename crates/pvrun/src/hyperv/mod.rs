//! Hyper-V's guest interface, served (`--personality hyperv`). The contract
//! is `docs/abi/hyperv.md` (version 1), the wire constants `pvabi::hyperv`.
//!
//! The guest sees "Microsoft Hv" at 0x40000000 and the leaves up to
//! 0x40000005 (see [`crate::cpuid`]); every other privileged operation stays
//! KVM's. What runs here:
//!
//! - [`msrs`]: the synthetic MSRs — guest OS identity, hypercall page, VP
//!   index, reference counter, reference TSC page, frequencies — a pure
//!   function of the partition's state;
//! - [`hypercalls`]: the two IPI hypercalls, pure;
//! - this module: the glue. KVM sends every MSR it does not know to pvrun
//!   (`KVM_CAP_X86_USER_SPACE_MSR`); the hypercall page pvrun writes is
//!   `out 0xea, al; ret` (this host's `vmcall`/`vmmcall` never return), so a
//!   call exits here with RCX, RDX and R8 intact; an IPI is a
//!   `KVM_SIGNAL_MSI` per target, which KVM delivers as it does the APIC's
//!   own IPIs. (Kicking the target's thread out of `KVM_RUN` as well, as
//!   the VMI alarm does, made IPIs slower here: targets wait halted, and
//!   KVM wakes those itself; docs/abi/hyperv.md §7.)

pub mod hypercalls;
pub mod msrs;

use std::sync::{Arc, Mutex, MutexGuard, Weak};

use pvabi::hyperv::TscPage;
use vm_memory::{Bytes, GuestAddress};

use self::msrs::{Effect, Host, Partition};
use crate::error::GuestError;
use crate::runner::{Flow, RunCtx, ServedAbi};
use crate::vcpu::Vcpu;
use crate::vm::Vm;

/// The port of the hypercall page's `out`: an 8-bit immediate, so no
/// register carries it and RCX, RDX, R8 reach pvrun untouched.
pub const HYPERCALL_PORT: u8 = 0xea;

/// The hypercall page: `out 0xea, al; ret`, the rest `int3`.
pub fn hypercall_page() -> [u8; 4096] {
    let mut page = [0xccu8; 4096];
    page[..3].copy_from_slice(&[0xe6, HYPERCALL_PORT, 0xc3]);
    page
}

/// IA32_TSC, read through KVM for the reference counter.
pub const MSR_IA32_TSC: u32 = 0x10;

/// What every vCPU of the VM shares.
#[derive(Debug)]
pub struct Shared {
    partition: Mutex<Partition>,
    host: Host,
    vm: Weak<Vm>,
    /// How many vCPUs (VPs) the VM has.
    vps: u32,
}

impl Shared {
    /// The state for a VM of `vcpus` vCPUs whose TSC runs at `tsc_khz` (0:
    /// unknown; then no clock is offered) and read `tsc_now` as the VM was
    /// made (reference time 0).
    pub fn new(vm: &Arc<Vm>, vcpus: usize, tsc_khz: u32, tsc_now: u64) -> Arc<Self> {
        let host = Host {
            tsc_at_start: tsc_now,
            tsc_hz: u64::from(tsc_khz) * 1000,
            apic_hz: u64::from(crate::vm::KVM_APIC_BUS_KHZ) * 1000,
            ram: crate::layout::ram_regions(vm.mem_bytes()),
        };
        Arc::new(Shared {
            partition: Mutex::new(Partition::default()),
            host,
            vm: Arc::downgrade(vm),
            vps: vcpus as u32,
        })
    }

    fn partition(&self) -> MutexGuard<'_, Partition> {
        self.partition.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One vCPU's side.
#[derive(Debug)]
pub struct HypervVcpu {
    index: u8,
    shared: Arc<Shared>,
    msr_reads: u64,
    msr_writes: u64,
    msr_faults: u64,
    calls: u64,
    failed: u64,
    ipis: u64,
}

/// Readies `vcpu`'s side: its registers through `kvm_run`.
pub fn setup(vm: &Vm, vcpu: &mut Vcpu, shared: &Arc<Shared>) -> HypervVcpu {
    vcpu.enable_sync_regs(vm.kvm());
    HypervVcpu {
        index: vcpu.index(),
        shared: shared.clone(),
        msr_reads: 0,
        msr_writes: 0,
        msr_faults: 0,
        calls: 0,
        failed: 0,
        ipis: 0,
    }
}

/// The TSC page's bytes, as the TLFS lays them out.
fn tsc_page_bytes(page: &TscPage) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..4].copy_from_slice(&page.tsc_sequence.to_le_bytes());
    b[8..16].copy_from_slice(&page.tsc_scale.to_le_bytes());
    b[16..].copy_from_slice(&page.tsc_offset.to_le_bytes());
    b
}

impl ServedAbi for HypervVcpu {
    fn owns_port(&self, port: u16) -> bool {
        port == u16::from(HYPERCALL_PORT)
    }

    /// A hypercall, if the page is enabled; otherwise a write to an
    /// unclaimed port.
    fn port_out(&mut self, vcpu: &mut Vcpu, _port: u16, _ctx: &RunCtx) -> Result<Flow, GuestError> {
        // Only while the page is enabled (the VM outlives its running vCPUs,
        // so the upgrade holds).
        let Some(vm) = self.shared.vm.upgrade().filter(|_| self.shared.partition().hypercalls_enabled())
        else {
            return Ok(Flow::Run);
        };
        let mut regs = vcpu.sync_regs();
        let call = hypercalls::Regs { rcx: regs.rcx, rdx: regs.rdx, r8: regs.r8 };
        let read = |gpa: u64, buf: &mut [u8]| vm.memory().read_slice(buf, GuestAddress(gpa)).is_ok();
        let status = match hypercalls::call(call, self.shared.vps, &read) {
            Ok(ipi) => {
                for &vp in &ipi.targets {
                    // VP index n is vCPU n, whose APIC ID is n (≤ 254).
                    vm.signal_vector(vp as u8, ipi.vector);
                }
                self.ipis += ipi.targets.len() as u64;
                pvabi::hyperv::hypercall::status::SUCCESS
            }
            Err(status) => {
                self.failed += 1;
                status
            }
        };
        self.calls += 1;
        regs.rax = hypercalls::result(status);
        vcpu.set_sync_regs(&regs);
        Ok(Flow::Run)
    }

    fn msr_read(&mut self, vcpu: &mut Vcpu, index: u32) -> Option<u64> {
        self.msr_reads += 1;
        let partition = *self.shared.partition();
        let value = msrs::read(&partition, &self.shared.host, u32::from(self.index), index, || {
            vcpu.msr(MSR_IA32_TSC)
        });
        if value.is_none() {
            self.msr_faults += 1;
        }
        value
    }

    fn msr_write(&mut self, _vcpu: &mut Vcpu, index: u32, value: u64) -> bool {
        self.msr_writes += 1;
        let mut partition = self.shared.partition();
        let before = *partition;
        let effect = match msrs::write(&mut partition, &self.shared.host, index, value) {
            Ok(effect) => effect,
            Err(()) => {
                self.msr_faults += 1;
                return false;
            }
        };
        let Some(vm) = self.shared.vm.upgrade() else { return true };
        // Both pages were checked to lie in RAM.
        let written = match effect {
            Effect::None => Ok(()),
            Effect::HypercallPage(gpa) => vm.memory().write_slice(&hypercall_page(), GuestAddress(gpa)),
            Effect::TscPage(gpa, page) => vm.memory().write_slice(&tsc_page_bytes(&page), GuestAddress(gpa)),
        };
        if written.is_err() {
            // Not reached: a page in RAM is writable. Undo, and fault.
            *partition = before;
            self.msr_faults += 1;
            return false;
        }
        true
    }

    fn before_run(&mut self, _vcpu: &mut Vcpu, _ctx: &RunCtx) -> Result<Flow, GuestError> {
        Ok(Flow::Run)
    }

    fn counters(&self) -> String {
        format!(
            "hyperv: msr_reads={} msr_writes={} msr_faults={} hypercalls={} failed={} ipis_sent={}",
            self.msr_reads, self.msr_writes, self.msr_faults, self.calls, self.failed, self.ipis
        )
    }
}
