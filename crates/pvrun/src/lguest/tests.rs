//! The lguest rules on plain memory: hypercalls and the ring, interrupt and
//! exception delivery, sudden death (no KVM needed).

use kvm_bindings::{kvm_cpuid_entry2, kvm_regs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use pvabi::lguest::{hcall, offset, HcallArgs, HCALL_STATUS_FREE, IRQ_ENABLED, RESERVE_MEM};

use super::boot::{self, Layout};
use super::switcher::{self, KERNEL_CS};
use super::traps::{CpuAccess, Resume};
use super::{Completion, Lguest, Next};
use crate::layout::MIB;

const MEM: u64 = 64 * MIB;
const DATA: u64 = 0x20_0000;
const STACK_TOP: u64 = 0x40_0000;
const HANDLER: u64 = 0x10_0400;

fn guest() -> (Lguest, GuestMemoryMmap) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
    let layout = Layout::new(MEM);
    let slot = boot::write(&mem, &layout, "").unwrap();
    let cpuid =
        vec![kvm_cpuid_entry2 { function: 0, eax: 0xd, ebx: 1, ecx: 2, edx: 3, ..Default::default() }];
    let mut lg = Lguest::new(mem.clone(), layout, slot, cpuid, 2_500_000);
    // The guest's page starts with every ring slot free (as the backend's does).
    mem.write_slice(&[HCALL_STATUS_FREE; 64], GuestAddress(DATA + offset::HCALL_STATUS as u64)).unwrap();
    mem.write_obj(0x10_0300u64, GuestAddress(DATA + offset::NOIRQ_IRET as u64)).unwrap();
    assert_eq!(call(&mut lg, hcall::LGUEST_INIT, [DATA, 0, 0, 0]), Ok(Next::Resume));
    (lg, mem)
}

fn call(lg: &mut Lguest, nr: u64, a: [u64; 4]) -> Result<Next, String> {
    let mut regs = kvm_regs { rax: nr, rbx: a[0], rcx: a[1], rdx: a[2], rsi: a[3], ..Default::default() };
    lg.hypercall(&mut regs).map_err(|d| d.0)
}

fn get<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, field: usize) -> T {
    mem.read_obj(GuestAddress(DATA + field as u64)).unwrap()
}

fn put<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, field: usize, v: T) {
    mem.write_obj(v, GuestAddress(DATA + field as u64)).unwrap();
}

fn queue(mem: &GuestMemoryMmap, slot: usize, args: [u64; 5]) {
    let base = DATA + (offset::HCALLS + slot * std::mem::size_of::<HcallArgs>()) as u64;
    for (i, a) in args.iter().enumerate() {
        mem.write_obj(*a, GuestAddress(base + 8 * i as u64)).unwrap();
    }
    put(mem, offset::HCALL_STATUS + slot, 0u8);
}

/// An interrupt gate for `handler` (selector and DPL as the kernel writes them).
fn gate(handler: u64) -> (u64, u64) {
    switcher::gate(handler, 0x08, 0, 0)
}

#[test]
fn init_fills_what_the_host_owns() {
    let (_lg, mem) = guest();
    assert_eq!(get::<u32>(&mem, offset::TSC_KHZ), 2_500_000);
    assert_eq!(get::<u64>(&mem, offset::RESERVE_MEM), RESERVE_MEM);
    assert!(get::<i64>(&mem, offset::TIME) > 1_600_000_000, "wall clock written");
}

#[test]
fn the_ring_runs_in_order_before_the_call_and_wraps() {
    let (mut lg, mem) = guest();
    // Three batches of 40: the host's cursor follows the guest's around the ring.
    let mut next = 0;
    for batch in 0..3u64 {
        for i in 0..40u64 {
            let vector = 0x30 + (batch * 40 + i) % 0xc0;
            let (low, high) = gate(HANDLER + i);
            queue(&mem, next, [hcall::LOAD_IDT_ENTRY, vector, low, high, 0]);
            next = (next + 1) % 64;
        }
        assert_eq!(call(&mut lg, hcall::FLUSH_ASYNC, [0; 4]), Ok(Next::Resume));
        let mut statuses = [0u8; 64];
        mem.read_slice(&mut statuses, GuestAddress(DATA + offset::HCALL_STATUS as u64)).unwrap();
        assert!(statuses.iter().all(|&s| s == HCALL_STATUS_FREE), "batch {batch}: {statuses:?}");
    }
    assert_eq!(lg.usage().async_calls, 120);
    assert_eq!(lg.usage().hypercalls, 4, "INIT and three flushes");
    // The last batch's last gate: vector 0x30 + 119.
    assert_eq!(lg.idt[0x30 + 119].map(|h| h.address), Some(HANDLER + 39));
}

#[test]
fn queued_page_table_calls_merge_into_one_completion() {
    let (mut lg, mem) = guest();
    queue(&mem, 0, [hcall::SET_PTE, 0, 0x1000, 0, 0]);
    queue(&mem, 1, [hcall::SET_PTE, 0, 0x1000, 0, 0]);
    assert_eq!(call(&mut lg, hcall::FLUSH_ASYNC, [0; 4]), Ok(Next::Resume));
    assert_eq!(lg.take_completion(), Completion::Invlpg(0x1000));
    queue(&mem, 2, [hcall::SET_PTE, 0, 0x1000, 0, 0]);
    assert_eq!(call(&mut lg, hcall::SET_PTE, [0, 0x2000, 0, 0]), Ok(Next::Resume));
    assert_eq!(lg.take_completion(), Completion::FlushAll);
    let root = 0x50_0000;
    assert_eq!(call(&mut lg, hcall::NEW_PGTABLE, [root, 0, 0, 0]), Ok(Next::Resume));
    assert_eq!(lg.take_completion(), Completion::LoadCr3(root));
    // The switcher was put into the new root's slot 511.
    let slot: u64 = mem.read_obj(GuestAddress(root + 511 * 8)).unwrap();
    assert_eq!(slot, lg.switcher_entry);
}

#[test]
fn cpuid_answers_from_the_vcpus_table() {
    let (mut lg, _mem) = guest();
    let mut regs = kvm_regs { rax: hcall::CPUID, rbx: 0, rcx: 0, ..Default::default() };
    lg.hypercall(&mut regs).unwrap();
    assert_eq!((regs.rax, regs.rbx, regs.rcx, regs.rdx), (0xd, 1, 2, 3));
    let mut regs = kvm_regs { rax: hcall::CPUID, rbx: 0x4000_0000, ..Default::default() };
    lg.hypercall(&mut regs).unwrap();
    assert_eq!((regs.rax, regs.rbx, regs.rcx, regs.rdx), (0, 0, 0, 0), "absent leaf");
}

#[test]
fn invalid_calls_are_sudden_death() {
    let cases: &[(u64, [u64; 4], &str)] = &[
        (hcall::LGUEST_INIT, [DATA, 0, 0, 0], "already have lguest_data"),
        (3, [0; 4], "unknown hypercall 3"),
        (hcall::LOAD_IDT_ENTRY, [256, 0, 0, 0], "LOAD_IDT_ENTRY for vector 256"),
        (hcall::LOAD_IDT_ENTRY, [0x40, 0x0000_8c00_0000_0000, 0, 0], "gate type 0xc"),
        (hcall::SET_STACK, [0x2b, 0x1000, 3, 0], "SET_STACK of 3 pages"),
        (hcall::SET_PMD, [0x50_0000, 512, 0, 0], "SET_PMD index 512"),
        (hcall::SET_PGD, [0x50_0001, 3, 0, 0], "not a page of guest RAM"),
        (hcall::NEW_PGTABLE, [MEM - 4096, 0, 0, 0], "not a page of guest RAM"),
        (hcall::CONSOLE_WRITE, [0x1000, 4097, 0, 0], "CONSOLE_WRITE of 4097 bytes"),
        (hcall::SHUTDOWN, [MEM - 2, 1, 0, 0], "runs outside guest RAM"),
        (hcall::SET_PTE, [0, 0x1000, (1 << 40) | 1, 0], "beyond guest RAM"),
        (hcall::SET_PTE, [0, 0x8000_0000_0000, 0, 0], "not a canonical address"),
    ];
    for (nr, args, reason) in cases {
        let (mut lg, _mem) = guest();
        let got = call(&mut lg, *nr, *args).unwrap_err();
        assert!(got.contains(reason), "call {nr}: {got:?} lacks {reason:?}");
    }
    // A large page in a directory entry that covers the switcher's memory.
    let (mut lg, mem) = guest();
    let reserved = Layout::new(MEM).reserved;
    mem.write_obj((reserved & !0x1f_ffff) | 0x83, GuestAddress(0x50_0000 + 8)).unwrap();
    let got = call(&mut lg, hcall::SET_PMD, [0x50_0000, 1, 0, 0]).unwrap_err();
    assert!(got.contains("maps the switcher's memory"), "{got}");
}

#[test]
fn shutdown_reads_at_most_127_bytes_of_reason() {
    let (mut lg, mem) = guest();
    mem.write_slice(&[b'x'; 200], GuestAddress(0x60_0000)).unwrap();
    match call(&mut lg, hcall::SHUTDOWN, [0x60_0000, 1, 0, 0]) {
        Ok(Next::PowerOff(reason)) => assert_eq!(reason.len(), 127),
        other => panic!("{other:?}"),
    }
    mem.write_slice(b"again\0", GuestAddress(0x60_0000)).unwrap();
    assert_eq!(call(&mut lg, hcall::SHUTDOWN, [0x60_0000, 2, 0, 0]), Ok(Next::Restart("again".into())));
}

/// A guest stopped in ring 3 at `rip` on a stack at [`STACK_TOP`].
fn ring3(rip: u64) -> kvm_regs {
    kvm_regs { rip, rsp: STACK_TOP, rflags: 0x202, ..Default::default() }
}

fn word(mem: &GuestMemoryMmap, at: u64) -> u64 {
    mem.read_obj(GuestAddress(at)).unwrap()
}

fn timer_handler(lg: &mut Lguest) {
    let (low, high) = gate(HANDLER);
    call(lg, hcall::LOAD_IDT_ENTRY, [0x20, low, high, 0]).unwrap();
}

#[test]
fn an_interrupt_is_delivered_onto_the_guest_stack() {
    let (mut lg, mem) = guest();
    timer_handler(&mut lg);
    put(&mem, offset::BLOCKED_INTERRUPTS, 0u64);
    put(&mem, offset::IRQ_ENABLED, IRQ_ENABLED);
    put(&mem, offset::TIME, 0i64);
    lg.raise(0);
    let mut regs = ring3(0x10_0123);
    assert_eq!(lg.deliver_pending(&mut regs, Resume::Regs), Ok(true));
    assert_eq!((regs.rip, regs.rsp), (HANDLER, STACK_TOP - 40));
    // RIP, CS, RFLAGS (virtual IF set), RSP, SS: what the CPU would push.
    let frame: Vec<u64> = (0..5).map(|i| word(&mem, STACK_TOP - 40 + 8 * i)).collect();
    assert_eq!(frame, [0x10_0123, 0x33, 0x202, STACK_TOP, 0x2b]);
    assert_eq!(get::<u32>(&mem, offset::IRQ_ENABLED), 0, "an interrupt gate disables");
    assert!(get::<i64>(&mem, offset::TIME) > 0, "time written at delivery");
    assert_eq!(lg.usage().interrupts, 1);
    assert_eq!(lg.deliver_pending(&mut regs, Resume::Regs), Ok(false), "delivered once");
}

#[test]
fn interrupts_off_or_blocked_hold_the_interrupt_back() {
    let (mut lg, mem) = guest();
    timer_handler(&mut lg);
    lg.raise(0);
    // Blocked (the guest starts with IRQ 0 masked): nothing, not even pending.
    put(&mem, offset::BLOCKED_INTERRUPTS, 1u64);
    put(&mem, offset::IRQ_ENABLED, IRQ_ENABLED);
    let mut regs = ring3(0x10_0000);
    assert_eq!(lg.deliver_pending(&mut regs, Resume::Regs), Ok(false));
    assert_eq!(get::<i32>(&mem, offset::IRQ_PENDING), 0);
    // Unblocked but interrupts off: noted in irq_pending, not delivered.
    put(&mem, offset::BLOCKED_INTERRUPTS, 0u64);
    put(&mem, offset::IRQ_ENABLED, 0u32);
    assert_eq!(lg.deliver_pending(&mut regs, Resume::Regs), Ok(false));
    assert_eq!(get::<i32>(&mem, offset::IRQ_PENDING), IRQ_ENABLED as i32);
    assert_eq!(regs.rip, 0x10_0000);
    // The guest enables and sends SEND_INTERRUPTS: delivered, pending cleared.
    put(&mem, offset::IRQ_ENABLED, IRQ_ENABLED);
    call(&mut lg, hcall::SEND_INTERRUPTS, [0; 4]).unwrap();
    assert_eq!(lg.deliver_pending(&mut regs, Resume::Regs), Ok(true));
    assert_eq!(get::<i32>(&mem, offset::IRQ_PENDING), 0);
}

#[test]
fn at_noirq_iret_the_frame_on_the_stack_is_reused() {
    let (mut lg, mem) = guest();
    timer_handler(&mut lg);
    put(&mem, offset::BLOCKED_INTERRUPTS, 0u64);
    put(&mem, offset::IRQ_ENABLED, IRQ_ENABLED);
    lg.raise(0);
    let mut regs = ring3(0x10_0300); // `noirq_iret`, as registered
    assert_eq!(lg.deliver_pending(&mut regs, Resume::Regs), Ok(true));
    assert_eq!((regs.rip, regs.rsp), (HANDLER, STACK_TOP), "nothing pushed");
}

#[test]
fn delivery_rewrites_the_switchers_frame_when_stopped_there() {
    let (mut lg, mem) = guest();
    timer_handler(&mut lg);
    put(&mem, offset::BLOCKED_INTERRUPTS, 0u64);
    put(&mem, offset::IRQ_ENABLED, IRQ_ENABLED);
    lg.raise(0);
    let layout = Layout::new(MEM);
    let va = pvabi::lguest::SWITCHER_ADDR + switcher::STACK_TOP - 40;
    let pa = layout.reserved + switcher::STACK_TOP - 40;
    for (i, w) in [0x10_0777u64, 0x33, 0x202, STACK_TOP, 0x2b].iter().enumerate() {
        mem.write_obj(*w, GuestAddress(pa + 8 * i as u64)).unwrap();
    }
    let mut regs = kvm_regs { rsp: va, ..Default::default() };
    assert_eq!(lg.deliver_pending(&mut regs, Resume::Frame(va)), Ok(true));
    assert_eq!(word(&mem, pa), HANDLER, "the switcher's iretq goes to the handler");
    assert_eq!(word(&mem, pa + 24), STACK_TOP - 40);
    assert_eq!(word(&mem, STACK_TOP - 40), 0x10_0777, "the interrupted RIP is on the guest stack");
}

/// What the switcher's stub and the CPU leave on its stack for `vector`.
fn trap_frame(mem: &GuestMemoryMmap, vector: u64, error: Option<u64>, rip: u64) -> kvm_regs {
    let layout = Layout::new(MEM);
    let mut words = vec![vector];
    words.extend(error);
    words.extend([rip, 0x33, 0x202, STACK_TOP, 0x2b]);
    let top = switcher::STACK_TOP - 8 * words.len() as u64;
    for (i, w) in words.iter().enumerate() {
        mem.write_obj(*w, GuestAddress(layout.reserved + top + 8 * i as u64)).unwrap();
    }
    kvm_regs { rsp: pvabi::lguest::SWITCHER_ADDR + top, rip: 0, ..Default::default() }
}

#[derive(Default)]
struct FakeCpu {
    cr2: u64,
    gs_base: u64,
}

impl CpuAccess for FakeCpu {
    fn cr2(&mut self) -> u64 {
        self.cr2
    }
    fn read_msr(&mut self, msr: u32) -> Option<u64> {
        (msr == 0xc000_0101).then_some(self.gs_base)
    }
    fn write_msr(&mut self, msr: u32, value: u64) -> bool {
        if msr == 0xc000_0101 {
            self.gs_base = value;
        }
        msr == 0xc000_0101
    }
}

#[test]
fn a_page_fault_is_reflected_with_its_error_code_and_cr2() {
    let (mut lg, mem) = guest();
    let (low, high) = gate(HANDLER);
    call(&mut lg, hcall::LOAD_IDT_ENTRY, [14, low, high, 0]).unwrap();
    put(&mem, offset::IRQ_ENABLED, IRQ_ENABLED);
    let mut regs = trap_frame(&mem, 14, Some(6), 0x10_0050);
    let mut cpu = FakeCpu { cr2: 0xdead_0000, ..Default::default() };
    lg.trap(&mut regs, &mut cpu).unwrap();
    assert_eq!(get::<u64>(&mem, offset::CR2), 0xdead_0000);
    let frame = regs.rsp;
    let layout = Layout::new(MEM);
    let pa = |va: u64| layout.reserved + (va - pvabi::lguest::SWITCHER_ADDR);
    assert_eq!(word(&mem, pa(frame)), HANDLER);
    // On the guest stack: error, RIP, CS, RFLAGS, RSP, SS.
    let sp = word(&mem, pa(frame + 24));
    assert_eq!(sp, STACK_TOP - 48);
    let pushed: Vec<u64> = (0..6).map(|i| word(&mem, sp + 8 * i)).collect();
    assert_eq!(pushed, [6, 0x10_0050, 0x33, 0x202, STACK_TOP, 0x2b]);
    assert_eq!(lg.usage().traps, 1);
}

#[test]
fn rdmsr_and_wrmsr_behind_a_gp_are_served() {
    let (mut lg, mem) = guest();
    // wrmsr at 0x100040 with ECX = GS_BASE, EDX:EAX = 0x1:0x2000; then rdmsr.
    mem.write_slice(&[0x0f, 0x30, 0x3e, 0x0f, 0x32], GuestAddress(0x10_0040)).unwrap();
    let mut cpu = FakeCpu::default();
    let mut regs = trap_frame(&mem, 13, Some(0), 0x10_0040);
    (regs.rcx, regs.rdx, regs.rax) = (0xc000_0101, 1, 0x2000);
    lg.trap(&mut regs, &mut cpu).unwrap();
    assert_eq!(cpu.gs_base, 0x1_0000_2000);
    let layout = Layout::new(MEM);
    let pa = layout.reserved + (regs.rsp - pvabi::lguest::SWITCHER_ADDR);
    assert_eq!(word(&mem, pa), 0x10_0042, "the return skips the wrmsr");
    let mut regs = trap_frame(&mem, 13, Some(0), 0x10_0042);
    regs.rcx = 0xc000_0101;
    lg.trap(&mut regs, &mut cpu).unwrap();
    assert_eq!((regs.rdx, regs.rax), (1, 0x2000));
    assert_eq!(lg.usage().msrs, 2);
    // An MSR pvrun does not serve is a #GP for the guest, with no handler: death.
    let mut regs = trap_frame(&mem, 13, Some(0), 0x10_0042);
    regs.rcx = 0x802;
    let err = lg.trap(&mut regs, &mut cpu).unwrap_err();
    assert!(err.0.contains("#GP (vector 13"), "{err}");
}

#[test]
fn faults_inside_the_switcher_and_double_faults_are_sudden_death() {
    let (mut lg, mem) = guest();
    let mut regs = trap_frame(&mem, 8, Some(0), 0x10_0000);
    let err = lg.trap(&mut regs, &mut FakeCpu::default()).unwrap_err();
    assert!(err.0.starts_with("#DF (vector 8)"), "{err}");
    let mut regs = trap_frame(&mem, 14, Some(2), 0x10_0000);
    // The frame's CS is the switcher's own.
    let layout = Layout::new(MEM);
    let cs = layout.reserved + (regs.rsp + 24 - pvabi::lguest::SWITCHER_ADDR);
    mem.write_obj(u64::from(KERNEL_CS), GuestAddress(cs)).unwrap();
    let err = lg.trap(&mut regs, &mut FakeCpu::default()).unwrap_err();
    assert!(err.0.contains("inside the switcher"), "{err}");
    regs.rsp = 0x1000;
    let err = lg.trap(&mut regs, &mut FakeCpu::default()).unwrap_err();
    assert!(err.0.contains("left its stack"), "{err}");
}

#[test]
fn completions_merge_to_what_covers_both() {
    use Completion::*;
    assert_eq!(None.merge(Invlpg(1)), Invlpg(1));
    assert_eq!(Invlpg(1).merge(Invlpg(1)), Invlpg(1));
    assert_eq!(Invlpg(1).merge(Invlpg(2)), FlushAll);
    assert_eq!(FlushAll.merge(LoadCr3(5)), LoadCr3(5));
    assert_eq!(LoadCr3(5).merge(Invlpg(2)), LoadCr3(5));
    assert_eq!(FlushAll.merge(None), FlushAll);
}

#[test]
fn an_ending_beats_a_halt() {
    assert_eq!(Next::Halt.then(Next::Resume), Next::Halt);
    assert_eq!(Next::Halt.then(Next::PowerOff("x".into())), Next::PowerOff("x".into()));
    assert_eq!(Next::Restart("r".into()).then(Next::Halt), Next::Restart("r".into()));
    assert_eq!(Next::Resume.then(Next::Resume), Next::Resume);
}
