//! lguest64: the 64-bit lguest ABI that pvrun serves (`--personality lguest`) and
//! paravirt's `lguest` backend speaks. The contract is `docs/abi/lguest.md`.
//!
//! Faithful to Linux 4.13 (the last release with lguest), re-created for x86-64:
//! - `arch/x86/include/asm/lguest_hcall.h`: the `LHCALL_*` numbers, the shutdown
//!   reasons, the register convention (number in EAX, arguments in EBX, ECX, EDX,
//!   ESI, widened here to 64 bits);
//! - `include/linux/lguest.h`: `struct lguest_data`, the page the guest shares
//!   with the host, here in its natural x86-64 layout ([`LguestData`]);
//! - `arch/x86/lguest/boot.c` and `drivers/lguest/hypercalls.c`: the async
//!   hypercall ring (64 slots, 0xFF = free) and the interrupt-flag protocol
//!   (`irq_enabled` holds 0x200 or 0);
//! - `Documentation/x86/zero-page.txt` and `boot.txt`: the `boot_params` fields
//!   the launcher fills ([`zero_page`]), with `hardware_subarch` = 1 (lguest).
//!
//! Differences from 4.13, each explained in the ABI page: the trap is `int 4`
//! (not `int $0x1F`, which this host turns into #UD); new calls are numbered
//! from 20 ([`hcall::SET_PUD`], [`hcall::CONSOLE_WRITE`], [`hcall::CPUID`]); the kernel finds its
//! entry through an ELF note ([`ELFNOTE_NAME`]) instead of a bzImage header.

/// ABI major version: a kernel built for another major is refused.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor version: additions that older kernels may ignore.
pub const ABI_MINOR: u32 = 0;

/// The trap vector: the guest makes a hypercall with `int 4` (bytes `cd 04`).
/// Vector 4 is #OF, which only `into` raises and `into` is invalid in 64-bit
/// mode, so the vector is free, and its DPL-3 gate is one of the two a ring-3
/// `int n` reaches on the hosts pvrun targets (4.13 used 0x1F).
pub const TRAP_VECTOR: u8 = 4;

/// Hypercall numbers (`LHCALL_*`), as in Linux 4.13 where they exist there.
/// Numbers 3, 8, 11, 12, 16, 17 and 18 had other meanings in some release and
/// are never reused; calling them (or any unlisted number) kills the guest.
pub mod hcall {
    /// Does nothing; the trap makes the host drain the async ring.
    pub const FLUSH_ASYNC: u64 = 0;
    /// First call: a1 = guest-physical address of [`super::LguestData`].
    pub const LGUEST_INIT: u64 = 1;
    /// a1 = physical address of a NUL-terminated reason, a2 = [`super::SHUTDOWN_POWEROFF`]
    /// or [`super::SHUTDOWN_RESTART`].
    pub const SHUTDOWN: u64 = 2;
    /// a1 = physical address of the new top-level page table (the CR3 value).
    pub const NEW_PGTABLE: u64 = 4;
    /// a1 = 0: flush the current address space's user part; a1 ≠ 0: flush all.
    pub const FLUSH_TLB: u64 = 5;
    /// a1 = vector, a2 = low 8 bytes of the 16-byte gate, a3 = high 8 bytes.
    pub const LOAD_IDT_ENTRY: u64 = 6;
    /// a1 = stack segment, a2 = stack pointer, a3 = pages (at most 2).
    pub const SET_STACK: u64 = 7;
    /// a1 = nanoseconds from now to raise IRQ 0 (0 cancels).
    pub const SET_CLOCKEVENT: u64 = 9;
    /// Sleep until an interrupt can be delivered; it re-enables interrupts.
    pub const HALT: u64 = 10;
    /// a1 = physical address of a page directory, a2 = index of the changed entry.
    pub const SET_PMD: u64 = 13;
    /// a1 = top-level table, a2 = virtual address, a3 = the new PTE.
    pub const SET_PTE: u64 = 14;
    /// a1 = physical address of the top-level table, a2 = index of the changed entry.
    pub const SET_PGD: u64 = 15;
    /// Does nothing; the trap lets the host deliver pending interrupts.
    pub const SEND_INTERRUPTS: u64 = 19;
    /// New in lguest64: a1 = physical address of a PDPT, a2 = index of the changed entry.
    pub const SET_PUD: u64 = 20;
    /// New in lguest64: a1 = physical address of bytes, a2 = their length
    /// (at most [`super::CONSOLE_WRITE_MAX`]).
    pub const CONSOLE_WRITE: u64 = 21;
    /// New in lguest64: a1 = leaf, a2 = subleaf; returns EAX, EBX, ECX, EDX in
    /// RAX, RBX, RCX, RDX (ring-3 `cpuid` shows the host's CPU, not the VM's).
    pub const CPUID: u64 = 22;
}

/// `LGUEST_SHUTDOWN_POWEROFF`.
pub const SHUTDOWN_POWEROFF: u64 = 1;
/// `LGUEST_SHUTDOWN_RESTART`.
pub const SHUTDOWN_RESTART: u64 = 2;
/// The host reads at most this many bytes of a shutdown reason (4.13: 128,
/// the last forced to NUL).
pub const SHUTDOWN_REASON_MAX: usize = 128;
/// Longest console write in one call.
pub const CONSOLE_WRITE_MAX: u64 = 4096;

/// `irq_enabled` and `irq_pending` hold this value (X86_EFLAGS_IF) or 0.
pub const IRQ_ENABLED: u32 = 0x200;
/// `LGUEST_IRQS`: width of the interrupt bitmaps. IRQ n arrives at vector 0x20 + n.
pub const LGUEST_IRQS: u32 = 32;
/// Vector of IRQ 0 (the clock event).
pub const FIRST_EXTERNAL_VECTOR: u8 = 0x20;
/// `LHCALL_RING_SIZE`: slots of the async ring.
pub const RING_SIZE: usize = 64;
/// A ring slot's status when the host has run it (or it was never used).
pub const HCALL_STATUS_FREE: u8 = 0xff;
/// A ring slot's status while the call waits for the host.
pub const HCALL_STATUS_PENDING: u8 = 0;
/// `LG_CLOCK_MIN_DELTA`: the guest never asks for an event sooner (ns).
pub const CLOCK_MIN_DELTA_NS: u64 = 100;

/// `struct timespec` as the host writes it into [`LguestData::time`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timespec {
    /// Seconds since the Unix epoch.
    pub sec: i64,
    /// Nanoseconds within the second.
    pub nsec: i64,
}

/// `struct hcall_args`: one async ring slot (`arg0` is the call number).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HcallArgs {
    /// Call number.
    pub arg0: u64,
    /// First argument.
    pub arg1: u64,
    /// Second argument.
    pub arg2: u64,
    /// Third argument.
    pub arg3: u64,
    /// Fourth argument.
    pub arg4: u64,
}

/// `struct lguest_data`: the page the guest registers with [`hcall::LGUEST_INIT`].
/// G→H: the guest writes, the host reads; H→G the reverse.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LguestData {
    /// G→H (the host writes it too, on delivery and wake-up): [`IRQ_ENABLED`]
    /// when the guest takes interrupts, 0 when not.
    pub irq_enabled: u32,
    /// G→H: bit n set = IRQ n masked. The guest starts with bit 0 (the timer) set.
    pub blocked_interrupts: [u64; 1],
    /// H→G: the fault address of the last page fault reflected to the guest.
    pub cr2: u64,
    /// H→G: wall-clock time, written at INIT and at each interrupt delivery.
    pub time: Timespec,
    /// H→G: [`IRQ_ENABLED`] when the host had an interrupt for the guest while
    /// `irq_enabled` was 0; the guest then calls [`hcall::SEND_INTERRUPTS`]
    /// when it enables.
    pub irq_pending: i32,
    /// Shared: per ring slot, [`HCALL_STATUS_FREE`] or [`HCALL_STATUS_PENDING`].
    /// The guest sets them all free before INIT.
    pub hcall_status: [u8; RING_SIZE],
    /// G→H: the async calls.
    pub hcalls: [HcallArgs; RING_SIZE],
    /// H→G: bytes at the top of the virtual address space the guest must not
    /// map (the switcher's slot).
    pub reserve_mem: u64,
    /// H→G: TSC frequency; 0 = do not use the TSC.
    pub tsc_khz: u32,
    /// G→H: address of the guest's interrupt-unsafe `iretq` (see the ABI page).
    pub noirq_iret: u64,
    /// G→H: above this address every address space maps the same (0: all of it).
    pub kernel_address: u64,
    /// G→H: the 32-bit system-call vector, 0x80; kept for layout, unused in 64-bit.
    pub syscall_vec: u32,
}

impl LguestData {
    /// The state a guest registers: interrupts off, the timer masked, every ring
    /// slot free, `noirq_iret` and `kernel_address` as given.
    pub const fn new(noirq_iret: u64, kernel_address: u64) -> Self {
        LguestData {
            irq_enabled: 0,
            blocked_interrupts: [1],
            cr2: 0,
            time: Timespec { sec: 0, nsec: 0 },
            irq_pending: 0,
            hcall_status: [HCALL_STATUS_FREE; RING_SIZE],
            hcalls: [HcallArgs { arg0: 0, arg1: 0, arg2: 0, arg3: 0, arg4: 0 }; RING_SIZE],
            reserve_mem: 0,
            tsc_khz: 0,
            noirq_iret,
            kernel_address,
            syscall_vec: 0x80,
        }
    }
}

/// Byte offsets of [`LguestData`]'s fields (what the host reads and writes).
pub mod offset {
    use super::LguestData;
    use core::mem::offset_of;

    /// `irq_enabled`.
    pub const IRQ_ENABLED: usize = offset_of!(LguestData, irq_enabled);
    /// `blocked_interrupts`.
    pub const BLOCKED_INTERRUPTS: usize = offset_of!(LguestData, blocked_interrupts);
    /// `cr2`.
    pub const CR2: usize = offset_of!(LguestData, cr2);
    /// `time`.
    pub const TIME: usize = offset_of!(LguestData, time);
    /// `irq_pending`.
    pub const IRQ_PENDING: usize = offset_of!(LguestData, irq_pending);
    /// `hcall_status`.
    pub const HCALL_STATUS: usize = offset_of!(LguestData, hcall_status);
    /// `hcalls`.
    pub const HCALLS: usize = offset_of!(LguestData, hcalls);
    /// `reserve_mem`.
    pub const RESERVE_MEM: usize = offset_of!(LguestData, reserve_mem);
    /// `tsc_khz`.
    pub const TSC_KHZ: usize = offset_of!(LguestData, tsc_khz);
    /// `noirq_iret`.
    pub const NOIRQ_IRET: usize = offset_of!(LguestData, noirq_iret);
    /// `kernel_address`.
    pub const KERNEL_ADDRESS: usize = offset_of!(LguestData, kernel_address);
    /// `syscall_vec`.
    pub const SYSCALL_VEC: usize = offset_of!(LguestData, syscall_vec);
}

// The natural x86-64 layout of 4.13's struct (checked against a compiled copy).
const _: () = {
    assert!(offset::IRQ_ENABLED == 0);
    assert!(offset::BLOCKED_INTERRUPTS == 8);
    assert!(offset::CR2 == 16);
    assert!(offset::TIME == 24);
    assert!(offset::IRQ_PENDING == 40);
    assert!(offset::HCALL_STATUS == 44);
    assert!(offset::HCALLS == 112);
    assert!(offset::RESERVE_MEM == 2672);
    assert!(offset::TSC_KHZ == 2680);
    assert!(offset::NOIRQ_IRET == 2688);
    assert!(offset::KERNEL_ADDRESS == 2696);
    assert!(offset::SYSCALL_VEC == 2704);
    assert!(core::mem::size_of::<LguestData>() == 2712);
    assert!(core::mem::size_of::<HcallArgs>() == 40);
};

/// Where the switcher lives in every address space: the whole top-level slot
/// 511 (the top 512 GiB). The host owns that entry of every table passed to
/// [`hcall::NEW_PGTABLE`]; [`LguestData::reserve_mem`] says how much is reserved.
pub const SWITCHER_PML4_SLOT: usize = 511;
/// The lowest reserved virtual address.
pub const SWITCHER_ADDR: u64 = 0xffff_ff80_0000_0000;
/// Bytes reserved at the top of the address space.
pub const RESERVE_MEM: u64 = 1 << 39;

/// Selectors of the switcher's GDT that the guest runs with (ring 3).
pub const GUEST_CS: u16 = 0x33;
/// Guest stack (and data) selector.
pub const GUEST_SS: u16 = 0x2b;

/// The boot protocol: the ELF note that names the lguest64 entry, and what the
/// kernel is handed there.
///
/// The note is `"Lguest"` with type [`ELFNOTE_ENTRY`] (an 8-byte entry address,
/// equal to its physical address: the kernel is entered on an identity map) and
/// type [`ELFNOTE_ABI`] (two u32: the ABI major and minor the kernel speaks).
pub const ELFNOTE_NAME: &[u8] = b"Lguest\0";
/// Note type: the 64-bit entry point.
pub const ELFNOTE_ENTRY: u32 = 1;
/// Note type: the ABI version the kernel was built for.
pub const ELFNOTE_ABI: u32 = 2;

/// The `boot_params` "zero page" the launcher fills at guest-physical 0 (Linux
/// `Documentation/x86/zero-page.txt`, `boot.txt`): the fields lguest used.
pub mod zero_page {
    /// Physical address of the zero page; the kernel gets it in RSI. 4.13's
    /// launcher used 0, which a Rust kernel cannot read through (a null
    /// pointer), so lguest64 moves it one page up.
    pub const ADDRESS: u64 = 0x1000;
    /// Size of `struct boot_params`.
    pub const SIZE: usize = 4096;
    /// Where the command line goes (right after the zero page, as 4.13's launcher).
    pub const CMDLINE_ADDRESS: u64 = ADDRESS + SIZE as u64;
    /// Longest command line, NUL included.
    pub const CMDLINE_MAX: usize = 4096;
    /// `e820_entries` (u8).
    pub const E820_ENTRIES: usize = 0x1e8;
    /// `hdr.boot_flag` (u16), 0xAA55.
    pub const BOOT_FLAG: usize = 0x1fe;
    /// `hdr.header` (u32), "HdrS".
    pub const HEADER: usize = 0x202;
    /// `hdr.version` (u16).
    pub const VERSION: usize = 0x206;
    /// `hdr.type_of_loader` (u8).
    pub const TYPE_OF_LOADER: usize = 0x210;
    /// `hdr.cmd_line_ptr` (u32).
    pub const CMD_LINE_PTR: usize = 0x228;
    /// `hdr.cmdline_size` (u32).
    pub const CMDLINE_SIZE: usize = 0x238;
    /// `hdr.hardware_subarch` (u32).
    pub const HARDWARE_SUBARCH: usize = 0x23c;
    /// `e820_table`: entries of [`E820_ENTRY_SIZE`] bytes.
    pub const E820_TABLE: usize = 0x2d0;
    /// Size of one packed e820 entry: addr u64, size u64, type u32.
    pub const E820_ENTRY_SIZE: usize = 20;
    /// Entries `e820_table` holds.
    pub const E820_MAX: usize = 128;
    /// `0xAA55`.
    pub const BOOT_FLAG_VALUE: u16 = 0xaa55;
    /// `"HdrS"`.
    pub const HEADER_VALUE: u32 = 0x5372_6448;
    /// Boot protocol 2.07, the first with `hardware_subarch`.
    pub const VERSION_VALUE: u16 = 0x0207;
    /// "undefined" boot loader.
    pub const TYPE_OF_LOADER_VALUE: u8 = 0xff;
    /// `X86_SUBARCH_LGUEST`.
    pub const SUBARCH_LGUEST: u32 = 1;
    /// E820 type of usable RAM.
    pub const E820_RAM: u32 = 1;
    /// E820 type of reserved memory.
    pub const E820_RESERVED: u32 = 2;
}

/// Decodes a 16-byte x86-64 gate descriptor (as passed to
/// [`hcall::LOAD_IDT_ENTRY`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    /// Handler address.
    pub offset: u64,
    /// Descriptor type: 0xE interrupt gate, 0xF trap gate.
    pub kind: u8,
    /// Present bit.
    pub present: bool,
}

/// Interrupt gate: delivery clears `irq_enabled`.
pub const GATE_INTERRUPT: u8 = 0xe;
/// Trap gate: delivery leaves `irq_enabled` alone.
pub const GATE_TRAP: u8 = 0xf;

impl Gate {
    /// Decodes the two halves of a gate (Intel SDM vol. 3, figure 6-8).
    pub const fn decode(low: u64, high: u64) -> Self {
        Gate {
            offset: (low & 0xffff) | ((low >> 32) & 0xffff_0000) | ((high & 0xffff_ffff) << 32),
            kind: ((low >> 40) & 0xf) as u8,
            present: (low >> 47) & 1 == 1,
        }
    }
}

/// Vectors whose exception pushes an error code.
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10..=14 | 17 | 21 | 29 | 30)
}
