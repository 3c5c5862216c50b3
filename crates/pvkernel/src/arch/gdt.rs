//! GDT with a TSS per CPU, so that a double fault runs on its own stack (IST1).

use paravirt::cpu::{self, DescriptorTablePointer};
use paravirt::MAX_CPUS;

use crate::sync::BootCell;

/// Kernel code selector (same as the boot GDT's, so CS need not be reloaded).
pub const KERNEL_CS: u16 = 0x08;
/// TSS selector.
pub const TSS_SEL: u16 = 0x18;
/// IST slot used for #DF.
pub const IST_DOUBLE_FAULT: u8 = 1;

/// Size of a CPU's double-fault stack.
pub const IST_STACK_SIZE: usize = 16 * 1024;

/// 64-bit TSS (Intel SDM vol. 3, 8.7).
#[derive(Clone, Copy)]
#[repr(C, packed(4))]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap_base: u16,
}

#[repr(C, align(16))]
struct IstStack([u8; IST_STACK_SIZE]);

/// The boot CPU's double-fault stack (the others' come with their stacks:
/// `boot::smp`).
#[link_section = ".stack"]
static BOOT_DOUBLE_FAULT_STACK: BootCell<IstStack> = BootCell::new(IstStack([0; IST_STACK_SIZE]));

const TSS: Tss = Tss {
    reserved0: 0,
    rsp: [0; 3],
    reserved1: 0,
    ist: [0; 7],
    reserved2: 0,
    reserved3: 0,
    iomap_base: core::mem::size_of::<Tss>() as u16,
};

static TSSES: BootCell<[Tss; MAX_CPUS]> = BootCell::new([TSS; MAX_CPUS]);

const GDT: [u64; 5] = [
    0,
    0x00af_9a00_0000_ffff, // 64-bit code
    0x00cf_9200_0000_ffff, // data
    0,                     // TSS low
    0,                     // TSS high
];

static GDTS: BootCell<[[u64; 5]; MAX_CPUS]> = BootCell::new([GDT; MAX_CPUS]);

/// Loads CPU `cpu`'s GDT and TSS, its double faults running on the stack that
/// ends at `double_fault_stack_top` (`None`: the boot CPU's static one). Once
/// per CPU, on that CPU, before interrupts.
pub fn init(cpu: u32, double_fault_stack_top: Option<u64>) {
    let i = paravirt::cpus::slot(cpu);
    // SAFETY: each CPU touches only its own slots, once, before anything else does.
    let (tss, gdt) = unsafe { (TSSES.slot_mut(i), GDTS.slot_mut(i)) };
    let ist_top =
        double_fault_stack_top.unwrap_or(BOOT_DOUBLE_FAULT_STACK.as_ptr() as u64 + IST_STACK_SIZE as u64);
    tss.ist[usize::from(IST_DOUBLE_FAULT) - 1] = ist_top;

    let base = tss as *const Tss as u64;
    let limit = (core::mem::size_of::<Tss>() - 1) as u64;
    // Available 64-bit TSS descriptor (type 9, present).
    gdt[3] = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    gdt[4] = base >> 32;

    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
        base: gdt.as_ptr() as u64,
    };
    // SAFETY: the GDT is a static that lives forever and keeps the boot selectors
    // 0x08/0x10 at the same slots; the TSS descriptor at 0x18 is valid and available.
    unsafe {
        cpu::load_gdt(&ptr);
        cpu::load_tr(TSS_SEL);
    }
}
