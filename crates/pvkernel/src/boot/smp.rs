//! Starting the other CPUs: the INIT-SIPI-SIPI sequence (Intel SDM vol. 3, 8.4.4)
//! sent to all-but-self, and a trampoline at [`TRAMPOLINE`] that takes each AP from
//! real mode to long mode on the kernel's page tables.
//!
//! The APIC IDs are not known in advance (no ACPI), so the start IPIs are
//! broadcast and the APs count themselves in: arrival `i` becomes CPU `i + 1`
//! and takes the `i`th of the stacks prepared for it. An AP that arrives when
//! every prepared stack is taken (more CPUs than the kernel takes) is parked
//! by the trampoline itself, interrupts off, in `hlt`, and noted with its APIC
//! ID; it never touches kernel state.

use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use paravirt::{CpuSet, MAX_CPUS};

use crate::arch::gdt::IST_STACK_SIZE;
use crate::mm::frame;

/// Physical address the trampoline runs at (SIPI vector 0x08).
pub const TRAMPOLINE: u64 = 0x8000;
const AP_STACK_SIZE: usize = 32 * 1024;
/// Frames of an AP's block: its stack, then its double-fault stack.
const AP_BLOCK_FRAMES: u64 = ((AP_STACK_SIZE + IST_STACK_SIZE) / 4096) as u64;
/// Most APIC IDs of parked CPUs the trampoline records.
const PARKED_MAX: u64 = 64;

// Trampoline layout: a short jump over the data, then fixed offsets (so the code
// can name them with plain numbers; it runs at TRAMPOLINE, not where it is linked).
const OFF_CR3: u64 = 0x08;
const OFF_ENTRY: u64 = 0x10;
/// Address of the table of the APs' blocks (u64 each, by arrival).
const OFF_BLOCKS: u64 = 0x18;
/// How many blocks the table holds (u32).
const OFF_SLOTS: u64 = 0x20;
/// Arrivals so far (u32, `lock xadd`).
const OFF_ARRIVALS: u64 = 0x28;
/// Parked APs so far (u32): each takes a slot of PARKED_IDS with it.
const OFF_PARKED: u64 = 0x2c;
const OFF_GDT: u64 = 0x30;
const OFF_GDTR: u64 = 0x50;
/// Parked APs whose APIC ID is written (u32): counted after the write.
const OFF_NOTED: u64 = 0x58;
/// The parked APs' APIC IDs (u32 each, PARKED_MAX of them).
const OFF_PARKED_IDS: u64 = 0x60;

core::arch::global_asm!(
    r#"
    .section .text.trampoline, "ax"
    .global ap_trampoline_start
    .global ap_trampoline_end
    .code16
ap_trampoline_start:
    jmp ap_code16
    .org ap_trampoline_start + {gdt}
    .quad 0
    .quad 0x00af9a000000ffff          /* 0x08: 64-bit code, as in the kernel's GDT */
    .quad 0x00cf92000000ffff          /* 0x10: data */
    .quad 0x00cf9a000000ffff          /* 0x18: 32-bit code, only for the switch */
    .org ap_trampoline_start + {gdtr}
    .word 31
    .long {tramp} + {gdt}
    .org ap_trampoline_start + {parked_ids} + 4 * {parked_max}
    .balign 16
ap_code16:
    cli
    cld
    mov ax, cs
    mov ds, ax
    lgdt [{gdtr}]
    mov eax, cr0
    or eax, 1
    mov cr0, eax
    .byte 0x66, 0xea                  /* jmp far 0x18:ap_prot32 (32-bit offset) */
    .long {tramp} + (ap_prot32 - ap_trampoline_start)
    .word 0x18

    .code32
ap_prot32:
    mov eax, 0x10
    mov ds, eax
    mov es, eax
    mov ss, eax
    mov eax, cr4
    or eax, 0x20                      /* PAE */
    mov cr4, eax
    mov eax, [{tramp} + {cr3}]
    mov cr3, eax
    mov ecx, 0xc0000080               /* EFER.LME */
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    or eax, 0x80010001                /* PG | WP | PE */
    mov cr0, eax
    .byte 0xea                        /* jmp far 0x08:ap_long64 */
    .long {tramp} + (ap_long64 - ap_trampoline_start)
    .word 0x08

    .code64
ap_long64:
    xor eax, eax
    mov ds, eax
    mov es, eax
    mov ss, eax
    mov eax, 1
    lock xadd dword ptr [{tramp} + {arrivals}], eax
    mov edi, eax                      /* arrival index: picks the block */
    cmp eax, dword ptr [{tramp} + {slots}]
    jae 3f
    mov rax, qword ptr [{tramp} + {blocks}]
    mov rsp, qword ptr [rax + rdi * 8]
    add rsp, {stack_size}             /* the block starts with the stack */
    mov rax, qword ptr [{tramp} + {entry}]
    call rax
2:  hlt
    jmp 2b
3:  /* No block left: note the APIC ID, park for good (no stack used). */
    mov eax, 1
    lock xadd dword ptr [{tramp} + {parked}], eax
    cmp eax, {parked_max}
    jae 4f
    mov esi, eax
    mov eax, 1
    cpuid
    shr ebx, 24
    mov dword ptr [{tramp} + {parked_ids} + rsi * 4], ebx
4:  lock inc dword ptr [{tramp} + {noted}]
5:  cli
    hlt
    jmp 5b
    .balign 8
ap_trampoline_end:
    .text
    "#,
    tramp = const TRAMPOLINE,
    cr3 = const OFF_CR3,
    entry = const OFF_ENTRY,
    blocks = const OFF_BLOCKS,
    slots = const OFF_SLOTS,
    stack_size = const AP_STACK_SIZE,
    arrivals = const OFF_ARRIVALS,
    parked = const OFF_PARKED,
    parked_ids = const OFF_PARKED_IDS,
    noted = const OFF_NOTED,
    parked_max = const PARKED_MAX,
    gdt = const OFF_GDT,
    gdtr = const OFF_GDTR,
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

/// CPUs online, by index (the boot CPU's bit 0 once it registered).
static ONLINE: [core::sync::atomic::AtomicU64; MAX_CPUS / 64] =
    [const { core::sync::atomic::AtomicU64::new(0) }; MAX_CPUS / 64];
/// The APs' blocks (stack, then double-fault stack), by arrival; filled before
/// they start, read by each AP for its own.
static BLOCKS: crate::sync::BootCell<Vec<u64>> = crate::sync::BootCell::new(Vec::new());

/// CPUs online.
pub fn online() -> CpuSet {
    let mut set = CpuSet::EMPTY;
    for (w, word) in ONLINE.iter().enumerate() {
        let mut bits = word.load(Ordering::Acquire);
        while bits != 0 {
            set.insert(w as u32 * 64 + bits.trailing_zeros());
            bits &= bits - 1;
        }
    }
    set
}

/// Marks CPU `index` online.
pub fn mark_online(index: u32) {
    let i = paravirt::cpus::slot(index);
    ONLINE[i / 64].fetch_or(1 << (i % 64), Ordering::AcqRel);
}

/// A data slot of the copied trampoline.
fn slot(offset: u64) -> *mut u64 {
    (TRAMPOLINE + offset) as *mut u64
}

/// What starting the other CPUs came to.
pub struct Started {
    /// CPUs online (the boot CPU included).
    pub online: CpuSet,
    /// How long it took until the last came online (or the wait ended), ns.
    pub took_ns: u64,
    /// APs that arrived with no block left: parked, with the APIC IDs recorded
    /// (at most 64 of them).
    pub parked: u32,
    /// Their APIC IDs.
    pub parked_ids: Vec<u32>,
    /// CPUs that could not be started, and why.
    pub failed: Vec<(u32, alloc::string::String)>,
}

/// Starts every other CPU, giving up to `take - 1` of them a block (stack and
/// double-fault stack), and waits until `expected` CPUs (this one included,
/// at most `take`) are online or `timeout_ns` passed. Once, on the boot CPU,
/// after the kernel's page tables, GDT, IDT, frame allocator, heap and
/// paravirt are set up.
pub fn start_aps(expected: u32, take: u32, timeout_ns: u64) -> Started {
    let t0 = paravirt::time::clock_ns();
    let want = expected.min(take).max(1);
    let mut failed = Vec::new();
    // Blocks for every AP we will take (all arrivals may be more than expected).
    let mut blocks = Vec::new();
    for cpu in 1..take.min(MAX_CPUS as u32) {
        match frame::alloc_contiguous(AP_BLOCK_FRAMES) {
            Some(base) => blocks.push(base),
            None => {
                failed.push((cpu, alloc::format!("no memory for its stacks ({} KiB)", AP_BLOCK_FRAMES * 4)));
                break;
            }
        }
    }
    // SAFETY: the APs are not started yet; after this only reads happen.
    unsafe { *BLOCKS.as_ptr() = blocks };
    if !start_through_hypervisor(want, &mut failed) {
        start_with_init_sipi();
    }
    let mut took_ns;
    loop {
        took_ns = paravirt::time::clock_ns() - t0;
        if online().len() >= want || took_ns >= timeout_ns {
            break;
        }
        core::hint::spin_loop();
    }
    // More CPUs expected than taken: wait (within the same time) for the rest
    // to arrive and be parked, so that the report names them.
    if expected > want {
        while online().len() + parked_aps().0 < expected && paravirt::time::clock_ns() - t0 < timeout_ns {
            core::hint::spin_loop();
        }
    }
    let (parked, parked_ids) = parked_aps();
    Started { online: online(), took_ns, parked, parked_ids, failed }
}

/// The APs the trampoline parked, and their APIC IDs.
fn parked_aps() -> (u32, Vec<u32>) {
    // SAFETY: the trampoline's data, in identity-mapped low RAM; plain reads of
    // what the parked APs wrote with `lock xadd` and a store.
    unsafe {
        let noted = (slot(OFF_NOTED) as *const u32).read_volatile();
        // Those noted wrote their IDs first; the rest may still be writing.
        let n = (u64::from(noted).min(PARKED_MAX)) as usize;
        let ids = (0..n).map(|i| ((TRAMPOLINE + OFF_PARKED_IDS) as *const u32).add(i).read_volatile());
        (noted, ids.collect())
    }
}

/// The block (stack, then double-fault stack) of AP number `ap` (0 for CPU 1).
fn block(ap: usize) -> Option<u64> {
    // SAFETY: written before any AP started; read only since.
    unsafe { (&*BLOCKS.as_ptr()).get(ap).copied() }
}

/// Asks the backend to start CPUs 1..`want` (Xen PV, where the kernel cannot
/// send INIT-SIPI); false if it cannot, so the hardware way applies.
fn start_through_hypervisor(want: u32, failed: &mut Vec<(u32, alloc::string::String)>) -> bool {
    for cpu in 1..want {
        let Some(base) = block(cpu as usize - 1) else { break };
        // CPU n runs on its block's stack; a call would have pushed a return address.
        let top = base + AP_STACK_SIZE as u64 - 8;
        match paravirt::start_cpu(cpu, hypervisor_ap_entry as *const () as u64, top) {
            paravirt::StartCpu::Unsupported => return false,
            paravirt::StartCpu::Started => {}
            paravirt::StartCpu::Failed(e) => {
                failed.push((cpu, alloc::format!("the hypervisor refused to start it ({e})")))
            }
            paravirt::StartCpu::Beyond { max } => {
                failed.push((cpu, alloc::format!("the backend runs {max} CPUs")));
                break;
            }
        }
    }
    true
}

/// Copies the real-mode trampoline below 1 MiB and sends INIT-SIPI-SIPI to every
/// other CPU.
fn start_with_init_sipi() {
    let start = core::ptr::addr_of!(ap_trampoline_start);
    let len = core::ptr::addr_of!(ap_trampoline_end) as usize - start as usize;
    // SAFETY: written before any AP started; read only since.
    let blocks = unsafe { &*BLOCKS.as_ptr() };
    // SAFETY: [TRAMPOLINE, +len) is identity-mapped low RAM below the kernel that
    // nothing else uses after boot (the loader's structures were already copied).
    unsafe {
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
        slot(OFF_CR3).write_volatile(paravirt::mmu::read_cr3());
        slot(OFF_ENTRY).write_volatile(ap_entry as *const () as u64);
        slot(OFF_BLOCKS).write_volatile(blocks.as_ptr() as u64);
        (slot(OFF_SLOTS) as *mut u32).write_volatile(blocks.len() as u32);
        (slot(OFF_ARRIVALS) as *mut u32).write_volatile(0);
        (slot(OFF_PARKED) as *mut u32).write_volatile(0);
        (slot(OFF_NOTED) as *mut u32).write_volatile(0);
    }
    crate::arch::apic::send_init_sipi_all((TRAMPOLINE >> 12) as u8);
}

/// Entry of a CPU the backend started (`cpu` in rdi), on its block's stack, on
/// the kernel's tables, with interrupts (events) off. No local APIC is ours
/// here: the index stands in for the APIC ID.
extern "C" fn hypervisor_ap_entry(cpu: u64) -> ! {
    let cpu = cpu as u32;
    ap_main(cpu, cpu, block(cpu as usize - 1), false)
}

/// Rust entry of an AP, on its own stack, in long mode on the kernel's tables:
/// arrival `i` is CPU `i + 1`.
extern "C" fn ap_entry(arrival: u32) -> ! {
    let apic_id = paravirt::cpu::cpuid(1, 0).ebx >> 24;
    ap_main(arrival + 1, apic_id, block(arrival as usize), true)
}

/// An AP's set-up, the same however it was started: per-CPU area, GDT, IDT,
/// local APIC (when the kernel owns one), the backend's per-CPU state; then idle.
fn ap_main(cpu: u32, apic_id: u32, block: Option<u64>, owns_apic: bool) -> ! {
    crate::percpu::init_this_cpu(cpu, apic_id);
    let double_fault_top = block.map(|b| b + (AP_STACK_SIZE + IST_STACK_SIZE) as u64);
    crate::arch::gdt::init(cpu, double_fault_top);
    crate::arch::traps::load_on_this_cpu();
    crate::arch::apic::init(owns_apic);
    if paravirt::init_secondary().is_ok() {
        mark_online(cpu);
    }
    crate::smp::idle()
}
