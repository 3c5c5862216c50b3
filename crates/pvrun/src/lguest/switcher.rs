//! The switcher: the only code of the lguest personality that runs at CPL0
//! in the guest, and what it runs on (GDT, TSS, IDT, stacks, page tables).
//!
//! lguest's Switcher (4.13 `drivers/lguest/x86/switcher_32.S`) swapped whole
//! worlds; ours need not, because KVM already separates host and guest. It only
//! turns a ring-3 trap into an exit to pvrun and returns, so it is a handful
//! of instructions (every CPL0 instruction costs ~0.6 µs where the host
//! emulates CPL0):
//!
//! - a stub per vector pushes the vector and exits through [`TRAP_PORT`];
//!   pvrun reflects the exception to the guest's handler by rewriting the
//!   hardware frame, then the stub's `iretq` returns into that handler;
//! - the hypercall gate (vector 4, DPL 3) exits through [`HCALL_PORT`] with
//!   EAX = the call; pvrun serves it and the gate's `iretq` returns;
//! - three completions run a TLB operation only CPL0 can do: pvrun points RIP
//!   at one of them (operand in RAX) before it resumes the vCPU.
//!
//! The code is assembled into pvrun's read-only data (never executed on the
//! host) and copied into the guest; it uses no absolute address, so it runs
//! wherever it is mapped. Everything else here is written by [`write`].

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use pvabi::lguest::{SWITCHER_ADDR, TRAP_VECTOR};

/// Port of the switcher's exception exit (the stub pushed the vector).
pub const TRAP_PORT: u16 = 0x1e;
/// Port of the hypercall exit (EAX = the call). 4.13's trap was vector 0x1F.
pub const HCALL_PORT: u16 = 0x1f;

core::arch::global_asm!(
    r#"
    .pushsection .rodata.pvrun_lguest_switcher, "a"
    .balign 4096
    .global pvrun_lguest_switcher
pvrun_lguest_switcher:
    /* Vector n: push n (imm8), jump to the common exit; 8 bytes apart. */
    .set vec, 0
    .rept 256
    .balign 8
    .byte 0x6a, vec
    jmp pvrun_lguest_trap_exit
    .set vec, vec + 1
    .endr

    .global pvrun_lguest_trap_exit
pvrun_lguest_trap_exit:
    out {trap_port}, al
    .global pvrun_lguest_trap_resume
pvrun_lguest_trap_resume:
    iretq

    .global pvrun_lguest_hcall
pvrun_lguest_hcall:
    out {hcall_port}, eax
    .global pvrun_lguest_hcall_resume
pvrun_lguest_hcall_resume:
    iretq

    .global pvrun_lguest_load_cr3
pvrun_lguest_load_cr3:
    mov cr3, rax
    iretq

    .global pvrun_lguest_flush_all
pvrun_lguest_flush_all:
    mov rax, cr3
    mov cr3, rax
    iretq

    .global pvrun_lguest_invlpg
pvrun_lguest_invlpg:
    invlpg [rax]
    iretq
    .global pvrun_lguest_switcher_end
pvrun_lguest_switcher_end:
    .popsection
    "#,
    trap_port = const TRAP_PORT,
    hcall_port = const HCALL_PORT,
);

extern "C" {
    static pvrun_lguest_switcher: u8;
    static pvrun_lguest_trap_exit: u8;
    static pvrun_lguest_trap_resume: u8;
    static pvrun_lguest_hcall: u8;
    static pvrun_lguest_hcall_resume: u8;
    static pvrun_lguest_load_cr3: u8;
    static pvrun_lguest_flush_all: u8;
    static pvrun_lguest_invlpg: u8;
    static pvrun_lguest_switcher_end: u8;
}

/// The switcher's code bytes.
pub fn code() -> &'static [u8] {
    let (start, end) =
        (&raw const pvrun_lguest_switcher as usize, &raw const pvrun_lguest_switcher_end as usize);
    // SAFETY: both symbols bound the assembled block above, in read-only data
    // that lives as long as the program.
    unsafe { std::slice::from_raw_parts(start as *const u8, end - start) }
}

fn offset(symbol: *const u8) -> u64 {
    (symbol as usize - &raw const pvrun_lguest_switcher as usize) as u64
}

/// Guest-virtual addresses of the switcher's entry and resume points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entries {
    /// Stub of vector 0 (vector n is 8·n further).
    pub stubs: u64,
    /// The exception exit's `out`.
    pub trap_exit: u64,
    /// The `iretq` after it.
    pub trap_resume: u64,
    /// The hypercall gate's `out`.
    pub hcall: u64,
    /// The `iretq` after it.
    pub hcall_resume: u64,
    /// `mov cr3, rax; iretq`.
    pub load_cr3: u64,
    /// `mov rax, cr3; mov cr3, rax; iretq`.
    pub flush_all: u64,
    /// `invlpg [rax]; iretq`.
    pub invlpg: u64,
}

impl Entries {
    /// Where each point is once the code sits at [`CODE`] in the switcher's slot.
    pub fn new() -> Self {
        let at = |s: *const u8| SWITCHER_ADDR + CODE + offset(s);
        Entries {
            stubs: SWITCHER_ADDR + CODE,
            trap_exit: at(&raw const pvrun_lguest_trap_exit),
            trap_resume: at(&raw const pvrun_lguest_trap_resume),
            hcall: at(&raw const pvrun_lguest_hcall),
            hcall_resume: at(&raw const pvrun_lguest_hcall_resume),
            load_cr3: at(&raw const pvrun_lguest_load_cr3),
            flush_all: at(&raw const pvrun_lguest_flush_all),
            invlpg: at(&raw const pvrun_lguest_invlpg),
        }
    }

    /// Whether a vCPU stopped at `rip` has its interrupt-return frame at RSP:
    /// it has left the switcher's exits and only returns from here (so an
    /// interrupt can be delivered by rewriting that frame). Elsewhere in the
    /// switcher the vCPU is on its way to an exit, where pvrun gets it anyway.
    pub fn frame_at_rsp(&self, rip: u64) -> bool {
        rip == self.trap_resume
            || rip == self.hcall_resume
            || (self.load_cr3..self.invlpg + INVLPG_LEN).contains(&rip)
    }

    /// Whether `rip` lies in the switcher's code.
    pub fn contains(&self, rip: u64) -> bool {
        (SWITCHER_ADDR..SWITCHER_ADDR + PAGE).contains(&rip)
    }
}

impl Default for Entries {
    fn default() -> Self {
        Self::new()
    }
}

/// `invlpg [rax]; iretq`.
const INVLPG_LEN: u64 = 5;

const PAGE: u64 = 4096;

/// Offsets in the switcher's slot (and in its reserved physical area): the
/// pages mapped, then the tables that map them.
pub const CODE: u64 = 0;
/// GDT.
pub const GDT: u64 = 0x1000;
/// TSS, followed by its I/O bitmap.
pub const TSS: u64 = 0x1080;
/// IDT.
pub const IDT: u64 = 0x4000;
/// Top of the stack the CPU switches to on a trap from ring 3 (TSS.RSP0).
pub const STACK_TOP: u64 = 0x7000;
/// Top of the stack of #DF, NMI and #MC (TSS.IST1).
pub const IST_TOP: u64 = 0x8000;
/// Pages mapped in the slot.
pub const MAPPED_PAGES: u64 = 8;
/// The slot's page-directory-pointer table, directory and page table.
pub const SLOT_PDPT: u64 = 0x8000;
/// Its page directory.
pub const SLOT_PD: u64 = 0x9000;
/// Its page table.
pub const SLOT_PT: u64 = 0xa000;
/// Bytes of the switcher itself (the boot page tables follow).
pub const SIZE: u64 = 0xb000;

/// Kernel code selector (the switcher's).
pub const KERNEL_CS: u16 = 0x08;
/// Kernel data selector.
pub const KERNEL_DS: u16 = 0x10;
/// TSS selector.
pub const TSS_SEL: u16 = 0x38;
/// The GDT: null, kernel code64 and data (DPL 0), unused 0x18/0x20, user data
/// (0x28, DPL 3: the guest's SS 0x2b) and user code64 (0x30: its CS 0x33),
/// then the 16-byte TSS descriptor at 0x38.
pub const GDT_ENTRIES: [u64; 7] =
    [0, 0x00af_9a00_0000_ffff, 0x00cf_9200_0000_ffff, 0, 0, 0x00cf_f200_0000_ffff, 0x00af_fa00_0000_ffff];
/// Bytes of the GDT (7 entries plus the two-slot TSS descriptor).
pub const GDT_LEN: u64 = 9 * 8;

/// Size of the 64-bit TSS before its I/O bitmap.
pub const TSS_LEN: u64 = 0x68;
/// The I/O bitmap: one bit per port, then the 0xff terminator.
pub const IO_BITMAP_LEN: u64 = 65536 / 8 + 1;
/// The TSS limit (inclusive).
pub const TSS_LIMIT: u64 = TSS_LEN + IO_BITMAP_LEN - 1;

/// Ports the guest may reach from ring 3: pvrun's own devices (COM1, the
/// debug-exit port, the bench marker). The rest raise #GP in the guest.
pub const GUEST_PORTS: [(u16, u16); 3] = [(0x3f8, 8), (0xf4, 4), (0xf8, 4)];

/// Page-table flags.
const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;

/// Why the switcher could not be written: guest memory refused.
pub type WriteError = vm_memory::GuestMemoryError;

/// Writes the switcher into `mem` at physical `base`: its code, GDT, TSS with
/// the I/O bitmap, IDT (a stub per vector; vector 4 is the DPL-3 hypercall
/// gate, vector 3 DPL 3 too so `int3` reaches the guest; #DF, NMI and #MC on
/// their own stack), and the page tables that map it into PML4 slot 511.
/// Returns the PML4 entry that maps the slot.
pub fn write(mem: &GuestMemoryMmap, base: u64) -> Result<u64, WriteError> {
    let at = |off: u64| GuestAddress(base + off);
    let code = code();
    assert!(code.len() as u64 <= PAGE, "the switcher outgrew its page");
    mem.write_slice(code, at(CODE))?;

    for (i, e) in GDT_ENTRIES.iter().enumerate() {
        mem.write_obj(*e, at(GDT + i as u64 * 8))?;
    }
    let tss = SWITCHER_ADDR + TSS;
    let (low, high) = system_descriptor(tss, TSS_LIMIT, 0x89);
    mem.write_obj(low, at(GDT + u64::from(TSS_SEL)))?;
    mem.write_obj(high, at(GDT + u64::from(TSS_SEL) + 8))?;

    // TSS: RSP0 at +4, IST1 at +0x24, the I/O map base at +0x66.
    mem.write_obj(SWITCHER_ADDR + STACK_TOP, at(TSS + 4))?;
    mem.write_obj(SWITCHER_ADDR + IST_TOP, at(TSS + 0x24))?;
    mem.write_obj(TSS_LEN as u16, at(TSS + 0x66))?;
    mem.write_slice(&io_bitmap(), at(TSS + TSS_LEN))?;

    let entries = Entries::new();
    for vector in 0..=255u8 {
        let handler =
            if vector == TRAP_VECTOR { entries.hcall } else { entries.stubs + u64::from(vector) * 8 };
        let dpl = if vector == 3 || vector == TRAP_VECTOR { 3 } else { 0 };
        let ist = if matches!(vector, 2 | 8 | 18) { 1 } else { 0 };
        let (low, high) = gate(handler, KERNEL_CS, ist, dpl);
        mem.write_obj(low, at(IDT + u64::from(vector) * 16))?;
        mem.write_obj(high, at(IDT + u64::from(vector) * 16 + 8))?;
    }

    // Slot 511 -> PDPT[0] -> PD[0] -> PT: the mapped pages, supervisor only
    // (no NX: the guest runs with EFER.NXE clear).
    let table = |off: u64| (base + off) | PRESENT | WRITABLE;
    mem.write_obj(table(SLOT_PD), at(SLOT_PDPT))?;
    mem.write_obj(table(SLOT_PT), at(SLOT_PD))?;
    for page in 0..MAPPED_PAGES {
        mem.write_obj(table(page * PAGE), at(SLOT_PT + page * 8))?;
    }
    Ok(table(SLOT_PDPT))
}

/// The I/O bitmap: every port denied but [`GUEST_PORTS`], then the terminator.
pub fn io_bitmap() -> Vec<u8> {
    let mut map = vec![0xff; IO_BITMAP_LEN as usize];
    for (first, count) in GUEST_PORTS {
        for port in first..first + count {
            map[usize::from(port / 8)] &= !(1 << (port % 8));
        }
    }
    map
}

/// A 64-bit interrupt gate (Intel SDM vol. 3, figure 6-8).
pub fn gate(handler: u64, selector: u16, ist: u8, dpl: u8) -> (u64, u64) {
    let low = (handler & 0xffff)
        | (u64::from(selector) << 16)
        | (u64::from(ist) << 32)
        | ((0x8e | u64::from(dpl) << 5) << 40)
        | ((handler >> 16) & 0xffff) << 48;
    (low, handler >> 32)
}

/// A 16-byte system-segment descriptor (a 64-bit TSS: type 9).
pub fn system_descriptor(base: u64, limit: u64, access: u8) -> (u64, u64) {
    let low = (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | (u64::from(access) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((base >> 24) & 0xff) << 56);
    (low, base >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pvabi::lguest::Gate;

    #[test]
    fn the_code_fits_one_page_and_has_its_stubs() {
        let c = code();
        assert!(c.len() <= 4096, "{} bytes", c.len());
        // Vector 0x81: push imm8 0x81 at 8·0x81.
        assert_eq!(&c[0x81 * 8..0x81 * 8 + 2], &[0x6a, 0x81]);
        let e = Entries::new();
        let byte = |va: u64| c[(va - SWITCHER_ADDR) as usize];
        assert_eq!(byte(e.trap_exit), 0xe6, "out imm8, al");
        assert_eq!(byte(e.trap_resume), 0x48, "iretq");
        assert_eq!(byte(e.hcall), 0xe7, "out imm8, eax");
        assert_eq!(
            c[(e.invlpg - SWITCHER_ADDR) as usize..][..INVLPG_LEN as usize],
            [0x0f, 0x01, 0x38, 0x48, 0xcf]
        );
        assert!(e.frame_at_rsp(e.trap_resume) && e.frame_at_rsp(e.flush_all + 3));
        assert!(!e.frame_at_rsp(e.trap_exit) && !e.frame_at_rsp(e.stubs + 16) && !e.frame_at_rsp(e.hcall));
    }

    #[test]
    fn gates_decode_back() {
        let (low, high) = gate(0xffff_ff80_0000_0123, KERNEL_CS, 1, 3);
        let g = Gate::decode(low, high);
        assert_eq!((g.offset, g.kind, g.present), (0xffff_ff80_0000_0123, 0xe, true));
        assert_eq!((low >> 45) & 3, 3, "DPL");
        assert_eq!((low >> 32) & 7, 1, "IST");
    }

    #[test]
    fn io_bitmap_allows_only_pvruns_devices() {
        let map = io_bitmap();
        let allowed = |p: u16| map[usize::from(p / 8)] & (1 << (p % 8)) == 0;
        for p in [0x3f8, 0x3fd, 0x3ff, 0xf4, 0xf8, 0xfb] {
            assert!(allowed(p), "{p:#x}");
        }
        for p in [0x3f7, 0x400, 0xf3, 0xfc, 0x80, 0x40, 0x1f, 0x1e, 0xffff] {
            assert!(!allowed(p), "{p:#x}");
        }
        assert_eq!(*map.last().unwrap(), 0xff);
    }
}
