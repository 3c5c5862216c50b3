//! The VMI ROM image and the trap flavour's calls on plain memory (no KVM
//! needed).

use std::sync::{Arc, Mutex};

use kvm_bindings::kvm_cpuid_entry2;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use pvabi::vmi::{self, alarm, call, check_rom, counter, page, reloc, RomError};

use super::alarm::{AlarmClock, Armed, Wire};
use super::calls::{Cpu, Next};
use super::rom::{self, Corruption, Flavour, DATA_ADDRESS, DATA_COUNT, DATA_LAZY, DATA_QUEUE, QUEUE_LEN};
use super::Vmi;
use crate::layout::{MIB, MMIO_GAP_START};

const MEM: u64 = 16 * MIB;
const ROOT: u64 = 0x1000;
const HZ: u64 = 2_000_000_000;

/// Every call the ROM answers, and how, in each flavour.
fn table(image: &[u8], flavour: Flavour) -> Vec<(u64, u8, u16)> {
    (0..call::COUNT)
        .map(|n| {
            let (kind, offset) = rom::relocation(image, flavour, n);
            (n, kind, offset)
        })
        .collect()
}

#[test]
fn both_flavours_build_a_rom_guests_accept() {
    for flavour in [Flavour::Native, Flavour::Trap] {
        let image = rom::image(flavour, HZ, None);
        let info = check_rom(&image).unwrap();
        assert_eq!(info.len, image.len());
        assert!(info.pci_ids_match);
        assert!(image.len() as u64 <= rom::ROM_SPAN);
        for (n, kind, offset) in table(&image, flavour) {
            match kind {
                reloc::CALL_REL | reloc::JUMP_REL => {
                    assert!(usize::from(offset) >= 0x400 && usize::from(offset) < image.len(), "call {n}")
                }
                reloc::NONE | reloc::NOP => assert_eq!(offset, 0, "call {n}"),
                other => panic!("call {n}: type {other}"),
            }
            assert_eq!(kind == reloc::JUMP_REL, n == call::IRET, "call {n}: only IRET is a jump");
        }
    }
}

#[test]
fn the_flavours_differ_where_the_abi_page_says() {
    let image = rom::image(Flavour::Trap, HZ, None);
    let kind = |f, n| rom::relocation(&image, f, n).0;
    // Native: nothing to tell a hypervisor, so laziness and page registration are NOPs.
    for n in [call::SET_LAZY_MODE, call::ALLOCATE_PAGE, call::RELEASE_PAGE, call::IO_DELAY] {
        assert_eq!(kind(Flavour::Native, n), reloc::NOP, "native {n}");
    }
    // Native has no source for these: the guest keeps its own code.
    for n in [call::SET_ALARM, call::CANCEL_ALARM, call::GET_WALLCLOCK_TIME, call::SHUTDOWN] {
        assert_eq!(kind(Flavour::Native, n), reloc::NONE, "native {n}");
        assert_eq!(kind(Flavour::Trap, n), reloc::CALL_REL, "trap {n}");
    }
    assert_eq!(kind(Flavour::Trap, call::SET_LAZY_MODE), reloc::CALL_REL);
    // Neither serves the MSRs (KVM traps them itself) nor calls API 3.0 never had.
    for n in [call::RDMSR, call::WRMSR, 49, 72, call::SET_PXE_LONG] {
        assert_eq!(kind(Flavour::Native, n), reloc::NONE);
        assert_eq!(kind(Flavour::Trap, n), reloc::NONE);
    }
}

#[test]
fn each_corruption_is_the_defect_it_names() {
    let bad = |c| rom::image(Flavour::Trap, HZ, Some(c));
    assert!(matches!(check_rom(&bad(Corruption::Checksum)), Err(RomError::BadChecksum(_))));
    assert_eq!(check_rom(&bad(Corruption::Major)), Err(RomError::WrongMajor(3)));
    assert_eq!(check_rom(&bad(Corruption::Signature)), Err(RomError::NoVmiSignature));
    let image = bad(Corruption::Reloc);
    assert!(check_rom(&image).is_ok(), "the header stays good");
    let (kind, offset) = rom::relocation(&image, Flavour::Trap, call::DISABLE_INTERRUPTS);
    assert_eq!(kind, reloc::CALL_REL);
    assert!(usize::from(offset) >= image.len(), "DisableInterrupts answers past the ROM");
}

/// An alarm that records what it is told.
#[derive(Debug, Default)]
struct FakeAlarm {
    set: Mutex<Vec<Armed>>,
    armed: Mutex<bool>,
}

impl AlarmClock for Arc<FakeAlarm> {
    fn set(&self, alarm: Armed) {
        self.set.lock().unwrap().push(alarm);
        *self.armed.lock().unwrap() = true;
    }
    fn cancel(&self) -> bool {
        std::mem::take(&mut *self.armed.lock().unwrap())
    }
    fn fired(&self) -> u64 {
        0
    }
}

/// Memory with an identity map of the first 2 MiB (one 4 KiB table) under
/// [`ROOT`], the ROM's data page zeroed, and a trap-flavour [`Vmi`].
fn guest() -> (Vmi, GuestMemoryMmap, Arc<FakeAlarm>) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let w = |a: u64, v: u64| mem.write_obj(v, GuestAddress(a)).unwrap();
    w(ROOT, 0x2000 | 3);
    w(0x2000, 0x3000 | 3);
    w(0x3000, 0x4000 | 3);
    for i in 0..512 {
        w(0x4000 + 8 * i, (i << 12) | 3);
    }
    super::install_rom(&mem, Flavour::Trap, HZ, None).unwrap();
    let cpuid = vec![kvm_cpuid_entry2 { function: 7, eax: 1, ebx: 2, ecx: 3, edx: 4, ..Default::default() }];
    let fake = Arc::new(FakeAlarm::default());
    let vmi = Vmi::new(mem.clone(), vec![(0, MEM)], cpuid, HZ, Box::new(fake.clone()));
    (vmi, mem, fake)
}

fn cpu(args: [u64; 4]) -> Cpu {
    let mut c = Cpu::default();
    (c.regs.rdi, c.regs.rsi, c.regs.rdx, c.regs.rcx) = (args[0], args[1], args[2], args[3]);
    c.regs.rflags = 0x2;
    c.sregs.cr3 = ROOT;
    c
}

fn trap(vmi: &mut Vmi, number: u64, args: [u64; 4]) -> Result<(Next, Cpu), String> {
    let mut c = cpu(args);
    vmi.trap(number as u32, &mut c).map(|n| (n, c)).map_err(|d| d.0)
}

#[test]
fn registers_calls_answer_in_registers() {
    let (mut vmi, _mem, _) = guest();
    let (_, c) = trap(&mut vmi, call::CPUID, [7, 0, 0, 0]).unwrap();
    assert_eq!((c.regs.rax, c.regs.rdx), (1 | 2 << 32, 3 | 4 << 32));
    let (_, c) = trap(&mut vmi, call::ENABLE_INTERRUPTS, [0; 4]).unwrap();
    assert_eq!(c.regs.rflags & 0x200, 0x200);
    let mut on = cpu([0; 4]);
    on.regs.rflags |= 0x200;
    vmi.trap(call::DISABLE_INTERRUPTS as u32, &mut on).unwrap();
    assert_eq!(on.regs.rflags, 0x2, "only IF changes");
    let (_, c) = trap(&mut vmi, call::SET_INTERRUPT_MASK, [0x200, 0, 0, 0]).unwrap();
    assert_eq!(c.regs.rflags, 0x202);
    let (_, c) = trap(&mut vmi, call::SET_CR4, [0x6f8, 0, 0, 0]).unwrap();
    assert!(c.sregs_changed && c.sregs.cr4 == 0x6f8);
    let (_, c) = trap(&mut vmi, rom::TRAP_INIT.into(), [0; 4]).unwrap();
    assert_eq!(c.regs.rax, 0, "vmi_init succeeds");
}

#[test]
fn power_calls_end_the_run() {
    let (mut vmi, _mem, _) = guest();
    assert_eq!(trap(&mut vmi, call::SHUTDOWN, [5, 0, 0, 0]).unwrap().0, Next::Exit(5));
    assert_eq!(trap(&mut vmi, call::REBOOT, [vmi::REBOOT_HARD, 0, 0, 0]).unwrap().0, Next::Reset);
}

#[test]
fn page_table_updates_are_checked() {
    let (mut vmi, _mem, _) = guest();
    let ok = |vmi: &mut Vmi, pte: u64, ptep: u64, flags: u64| trap(vmi, call::SET_PXE, [pte, ptep, flags, 0]);
    ok(&mut vmi, 0x5000 | 3, 0x8000, page::PT).unwrap();
    ok(&mut vmi, MMIO_GAP_START | 3, 0x8008, page::PT).expect("the MMIO gap may be mapped");
    ok(&mut vmi, 0, 0x8010, page::PT | page::CURRENT_AS).expect("a clear maps nothing");
    assert_eq!(vmi.usage().updates, 3);
    let cases = [
        ([0x5003, 0x8000, page::PT | page::PD, 0], "name no one page-table level"),
        ([0x5003, 0x8004, page::PT, 0], "not 8-byte aligned"),
        ([0x5003, 0x40_0000, page::PT, 0], "does not map"),
        ([(MEM + 0x1000) | 3, 0x8000, page::PT, 0], "outside guest RAM and the MMIO gap"),
    ];
    for (args, reason) in cases {
        let err = trap(&mut vmi, call::SET_PXE, args).unwrap_err();
        assert!(err.starts_with("vmi: ") && err.contains(reason), "{err}");
    }
}

#[test]
fn registered_tables_hold_entries_of_their_level() {
    let (mut vmi, _mem, _) = guest();
    trap(&mut vmi, call::ALLOCATE_PAGE, [0x9, page::PD | page::ZEROED, 0, 0]).unwrap();
    let err = trap(&mut vmi, call::SET_PXE, [0x5003, 0x9008, page::PT, 0]).unwrap_err();
    assert!(err.contains("registered as level 0x2"), "{err}");
    trap(&mut vmi, call::SET_PXE, [0x5003, 0x9008, page::PD, 0]).unwrap();
    trap(&mut vmi, call::RELEASE_PAGE, [0x9, page::PD, 0, 0]).unwrap();
    trap(&mut vmi, call::SET_PXE, [0x5003, 0x9008, page::PT, 0]).expect("released: any level");
    let err = trap(&mut vmi, call::ALLOCATE_PAGE, [MEM >> 12, page::PT, 0, 0]).unwrap_err();
    assert!(err.contains("outside guest RAM"), "{err}");
}

fn queue(mem: &GuestMemoryMmap, entries: &[[u64; 4]]) {
    for (i, e) in entries.iter().enumerate() {
        for (w, v) in e.iter().enumerate() {
            let at = DATA_ADDRESS + DATA_QUEUE + 32 * i as u64 + 8 * w as u64;
            mem.write_obj(*v, GuestAddress(at)).unwrap();
        }
    }
    mem.write_obj(entries.len() as u64, GuestAddress(DATA_ADDRESS + DATA_COUNT)).unwrap();
}

#[test]
fn any_exit_first_hears_the_queued_updates() {
    let (mut vmi, mem, _) = guest();
    mem.write_obj(vmi::lazy::MMU, GuestAddress(DATA_ADDRESS + DATA_LAZY)).unwrap();
    queue(&mem, &[[0x5003, 0x8000, page::PT, 0x1000], [0x6003, 0x8008, page::PT, 0x2000]]);
    trap(&mut vmi, call::SET_LAZY_MODE, [vmi::lazy::NONE, 0, 0, 0]).unwrap();
    assert_eq!((vmi.usage().updates, vmi.usage().deferred), (2, 2));
    let count: u64 = mem.read_obj(GuestAddress(DATA_ADDRESS + DATA_COUNT)).unwrap();
    assert_eq!(count, 0, "the queue is empty again");
    // A bad queued update is found at the next exit, whatever the call.
    queue(&mem, &[[(MEM + 0x1000) | 1, 0x8000, page::PT, 0]]);
    let err = trap(&mut vmi, call::CPUID, [0; 4]).unwrap_err();
    assert!(err.contains("outside guest RAM"), "{err}");
    queue(&mem, &[]);
    mem.write_obj(QUEUE_LEN + 1, GuestAddress(DATA_ADDRESS + DATA_COUNT)).unwrap();
    let err = trap(&mut vmi, call::CPUID, [0; 4]).unwrap_err();
    assert!(err.contains("slots"), "{err}");
}

#[test]
fn counters_add_up_and_alarms_are_absolute() {
    let (mut vmi, _mem, fake) = guest();
    let tsc = 10 * HZ;
    let read =
        |vmi: &mut Vmi, which| trap(vmi, call::GET_CYCLE_COUNTER, [which, 0, tsc, 0]).unwrap().1.regs.rax;
    let real = read(&mut vmi, counter::REAL);
    let available = read(&mut vmi, counter::AVAILABLE);
    let stolen = read(&mut vmi, counter::STOLEN);
    assert_eq!(real, tsc);
    assert!(available <= real && stolen <= real);
    assert_eq!(read(&mut vmi, 9), 0, "an unknown counter reads 0");

    // 2 ms ahead of the TSC the ROM read (RCX), as a vector.
    let flags = counter::REAL | alarm::WIRED_VECTOR | (0x40 << alarm::VECTOR_SHIFT);
    let before = std::time::Instant::now();
    trap(&mut vmi, call::SET_ALARM, [flags, tsc + HZ / 500, 0, tsc]).unwrap();
    let set = fake.set.lock().unwrap().pop().unwrap();
    assert_eq!((set.wire, set.period), (Wire::Vector(0x40), None));
    let ahead = set.at.duration_since(before);
    assert!(ahead >= std::time::Duration::from_millis(2) && ahead < std::time::Duration::from_millis(200));
    let (_, c) = trap(&mut vmi, call::CANCEL_ALARM, [flags, 0, 0, 0]).unwrap();
    assert_eq!(c.regs.rax, 1);
    let (_, c) = trap(&mut vmi, call::CANCEL_ALARM, [flags, 0, 0, 0]).unwrap();
    assert_eq!(c.regs.rax, 0, "nothing armed any more");

    let periodic = counter::REAL | alarm::IS_PERIODIC;
    trap(&mut vmi, call::SET_ALARM, [periodic, tsc, HZ / 100, tsc]).unwrap();
    let set = fake.set.lock().unwrap().pop().unwrap();
    assert_eq!((set.wire, set.period), (Wire::Irq0, Some(std::time::Duration::from_millis(10))));
    trap(&mut vmi, call::SET_ALARM, [counter::STOLEN, tsc, 0, tsc]).unwrap();
    assert!(fake.set.lock().unwrap().is_empty(), "an alarm on STOLEN does nothing");
    for (flags, reason) in [
        (counter::REAL | alarm::WIRED_LVTT, "LVT timer"),
        (counter::REAL | alarm::WIRED_VECTOR | (3 << alarm::VECTOR_SHIFT), "exception vector"),
    ] {
        let err = trap(&mut vmi, call::SET_ALARM, [flags, tsc, 0, tsc]).unwrap_err();
        assert!(err.contains(reason), "{err}");
    }
}

#[test]
fn calls_the_rom_never_makes_and_bad_roots_are_sudden_death() {
    let (mut vmi, _mem, _) = guest();
    for n in [call::GET_CR3, call::RDMSR, 72, 0x1ff] {
        let err = trap(&mut vmi, n, [0; 4]).unwrap_err();
        assert!(err.contains("never makes"), "{n}: {err}");
    }
    let err = trap(&mut vmi, call::SET_CR3, [MEM, 0, 0, 0]).unwrap_err();
    assert!(err.contains("SetCR3"), "{err}");
    trap(&mut vmi, call::SET_CR3, [ROOT, 0, 0, 0]).unwrap();
}
