//! Entry points for fuzzing what a guest or a file can hand pvrun, each a
//! function of arbitrary bytes that must never panic (nor hang, nor grow
//! without bound). The cargo-fuzz targets in `crates/pvrun/fuzz/` call them
//! under libFuzzer; `tests/fuzz_smoke.rs` runs each over its seed corpus and
//! a few thousand mutations on stable, in `cargo test`.
//!
//! | target | what the bytes drive |
//! |--------|----------------------|
//! | [`exit_handler`] | a sequence of port and MMIO exits of any port, size, count and data, on every vCPU |
//! | [`loader`] | a kernel file: the ELF checks, then the load into guest memory when they pass |
//! | [`boot_info`] | the memory size and command line `hvm_start_info` is built from |
//! | [`bench_marker`] | the bench-marker protocol: writes, reads, and the counters it reads |
//! | [`vmi_calls`] | the VMI trap ROM's calls: registers and the ROM's data page |
//! | [`lguest_calls`] | lguest64 hypercalls: registers and the `lguest_data` page |

use std::cell::RefCell;
use std::path::Path;
use std::time::Instant;

use kvm_bindings::kvm_regs;
use kvm_ioctls::VcpuExit;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::{BenchMarker, Devices, StatsSource};
use crate::exit::handle_exit_sized;
use crate::layout::MIB;
use crate::loader::{EntryKind, KernelImage};

/// Reads the fuzzer's bytes front to back; runs dry as zeros.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn empty(&self) -> bool {
        self.0.is_empty()
    }
    fn u8(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else { return 0 };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }
    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// Counters that come from the fuzzer's bytes (and sometimes are missing).
struct ScriptedCounters(Vec<u64>);

impl StatsSource for ScriptedCounters {
    fn counters(&mut self) -> Option<(u64, u64)> {
        let (a, b) = (self.0.pop()?, self.0.pop()?);
        Some((a, b))
    }
}

thread_local! {
    static DEVICES: RefCell<Devices> = RefCell::new(Devices::new(Box::new(std::io::sink())));
    static SMALL_MEM: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (2 * MIB) as usize)]).expect("2 MiB of memory");
}

/// Port and MMIO exits: records of (kind, vCPU, port or address, element
/// size, count, data), served as the run loop serves them.
pub fn exit_handler(data: &[u8]) {
    DEVICES.with_borrow_mut(|devices| {
        let mut r = Input(data);
        while !r.empty() {
            let kind = r.u8();
            // Any vCPU a VM may have: 0..CPUS_MAX.
            let vcpu = r.u8() % crate::config::CPUS_MAX as u8;
            match kind % 5 {
                0 | 1 => {
                    let port = r.u16();
                    let size = usize::from(r.u8() % 5);
                    let count = usize::from(r.u8()) + 1;
                    let len = (size * count).clamp(1, 1024);
                    if kind % 5 == 0 {
                        let bytes = r.take(len).to_vec();
                        let _ = handle_exit_sized(VcpuExit::IoOut(port, &bytes), vcpu, Some(size), devices);
                    } else {
                        let mut buf = vec![0u8; len];
                        let _ = handle_exit_sized(VcpuExit::IoIn(port, &mut buf), vcpu, Some(size), devices);
                    }
                }
                2 => {
                    let addr = r.u64();
                    let mut buf = vec![0u8; usize::from(r.u8() % 9)];
                    let _ = handle_exit_sized(VcpuExit::MmioRead(addr, &mut buf), vcpu, None, devices);
                    assert!(buf.iter().all(|&b| b == 0xff), "unclaimed MMIO reads all-ones");
                }
                3 => {
                    let addr = r.u64();
                    let len = usize::from(r.u8() % 9);
                    let bytes = r.take(len).to_vec();
                    let _ = handle_exit_sized(VcpuExit::MmioWrite(addr, &bytes), vcpu, None, devices);
                }
                _ => {
                    let values = (0..r.u8() % 8).map(|_| r.u64()).collect();
                    devices.set_stats_source(vcpu, Some(Box::new(ScriptedCounters(values))));
                }
            }
        }
    });
}

/// A kernel file: checked for a 64 MiB guest as a PVH and as an lguest64
/// kernel; loaded into memory when the PVH checks pass.
pub fn loader(data: &[u8]) {
    thread_local! {
        static MEM: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), (64 * MIB) as usize)]).expect("64 MiB of memory");
    }
    for kind in [EntryKind::Pvh, EntryKind::Lguest] {
        if let Ok(mut image) = KernelImage::parse(Path::new("fuzz"), data.to_vec(), 64 * MIB, kind) {
            if kind == EntryKind::Pvh {
                MEM.with(|mem| {
                    let _ = image.load(mem);
                });
            }
        }
    }
}

/// `hvm_start_info`, its memory map and the command line, for a memory
/// size and a command line from the bytes.
pub fn boot_info(data: &[u8]) {
    let mut r = Input(data);
    let mem_bytes = r.u64() % (32 << 30);
    let cmdline = String::from_utf8_lossy(r.take(usize::MAX)).into_owned();
    SMALL_MEM.with(|mem| {
        if crate::pvh::check_cmdline(&cmdline).is_ok() && mem_bytes >= 16 * MIB {
            let _ = crate::pvh::write_boot_info(mem, mem_bytes, &cmdline);
        }
    });
}

/// The bench-marker protocol: writes of any size and value, reads of any
/// size, counters that come and go.
pub fn bench_marker(data: &[u8]) {
    let mut r = Input(data);
    let counters = (0..r.u8() % 16).map(|_| r.u64()).collect();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(r.u64()));
    let mut m = BenchMarker::new(Some(Box::new(ScriptedCounters(counters))), served);
    while !r.empty() {
        let op = r.u8();
        let len = usize::from(op >> 4) % 9;
        if op & 1 == 0 {
            let bytes = r.take(len).to_vec();
            m.write(&bytes);
        } else {
            let mut buf = vec![0u8; len];
            let ok = m.read(&mut buf);
            assert!(ok == (len == 4), "only 32-bit reads are valid");
        }
    }
}

/// The VMI trap ROM's calls: for each record, the ROM's data page (lazy
/// mode, queue count and slots) and the registers of one trap.
pub fn vmi_calls(data: &[u8]) {
    use crate::vmi::alarm::{AlarmClock, Armed};
    use crate::vmi::calls::Cpu;
    use crate::vmi::rom::{DATA_ADDRESS, DATA_COUNT, DATA_QUEUE};

    #[derive(Debug)]
    struct NoAlarm;
    impl AlarmClock for NoAlarm {
        fn set(&self, alarm: Armed) {
            assert!(alarm.at >= Instant::now() - std::time::Duration::from_secs(1));
        }
        fn cancel(&self) -> bool {
            false
        }
        fn fired(&self) -> u64 {
            0
        }
    }
    SMALL_MEM.with(|mem| {
        let mut vmi = crate::vmi::Vmi::new(
            mem.clone(),
            vec![(0, 2 * MIB)],
            Vec::new(),
            2_000_000_000,
            Box::new(NoAlarm),
        );
        let mut r = Input(data);
        while !r.empty() {
            let count = u64::from(r.u8());
            let _ = mem.write_obj(count, GuestAddress(DATA_ADDRESS + DATA_COUNT));
            let n = usize::from(r.u8()) * 8;
            let slots = r.take(n).to_vec();
            let _ = mem.write_slice(&slots, GuestAddress(DATA_ADDRESS + DATA_QUEUE));
            let page = r.u64() & 0x1f_f000;
            let entry = r.u64();
            let _ = mem.write_obj(entry, GuestAddress(page));
            let mut cpu = Cpu::default();
            cpu.sregs.cr3 = r.u64() & 0x1f_f000;
            (cpu.regs.rdi, cpu.regs.rsi, cpu.regs.rdx, cpu.regs.rcx) = (r.u64(), r.u64(), r.u64(), r.u64());
            let number = u32::from(r.u16());
            let _ = vmi.trap(number, &mut cpu);
        }
    });
}

/// lguest64 hypercalls: INIT, then for each record the registers of one
/// call and a write somewhere into `lguest_data` (the ring included).
pub fn lguest_calls(data: &[u8]) {
    use crate::lguest::boot::{self, Layout};
    use crate::lguest::Lguest;

    const MEM: u64 = 16 * MIB;
    const DATA: u64 = 0x20_0000;
    thread_local! {
        static MEM16: GuestMemoryMmap =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("16 MiB of memory");
    }
    MEM16.with(|mem| {
        let layout = Layout::new(MEM);
        let Ok(slot) = boot::write(mem, &layout, "") else { return };
        let mut lg = Lguest::new(mem.clone(), layout, slot, Vec::new(), 2_000_000);
        let mut regs = kvm_regs { rax: pvabi::lguest::hcall::LGUEST_INIT, rbx: DATA, ..Default::default() };
        let status = DATA + pvabi::lguest::offset::HCALL_STATUS as u64;
        let _ = mem.write_slice(&[pvabi::lguest::HCALL_STATUS_FREE; 64], GuestAddress(status));
        if lg.hypercall(&mut regs).is_err() {
            return;
        }
        let mut r = Input(data);
        while !r.empty() {
            let at = u64::from(r.u16()) % 4096;
            let n = usize::from(r.u8() % 64);
            let bytes = r.take(n).to_vec();
            let _ = mem.write_slice(&bytes, GuestAddress(DATA + at));
            let mut regs = kvm_regs {
                rax: u64::from(r.u8()),
                rbx: r.u64(),
                rcx: r.u64(),
                rdx: r.u64(),
                rsi: r.u64(),
                ..Default::default()
            };
            if lg.hypercall(&mut regs).is_err() {
                return;
            }
        }
    });
}
