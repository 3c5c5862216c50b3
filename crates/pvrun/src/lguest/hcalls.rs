//! The hypercalls (4.13 `drivers/lguest/hypercalls.c`, `page_tables.c`,
//! `interrupts_and_traps.c`, re-created for lguest64) and the async ring.
//!
//! The guest writes its own page tables and then tells pvrun; KVM walks those
//! tables itself, so pvrun keeps no shadows. It validates what it is told
//! (lguest's sudden death for anything invalid), keeps the switcher mapped in
//! every root, and has the vCPU flush its TLB on the way back, as only CPL0
//! can.

use kvm_bindings::kvm_regs;
use vm_memory::{Bytes, GuestAddress};

use pvabi::lguest::{
    hcall, offset, Gate, HcallArgs, Timespec, CONSOLE_WRITE_MAX, GATE_INTERRUPT, GATE_TRAP,
    HCALL_STATUS_FREE, HCALL_STATUS_PENDING, LGUEST_IRQS, RESERVE_MEM, RING_SIZE, SHUTDOWN_REASON_MAX,
    SHUTDOWN_RESTART, SWITCHER_ADDR, SWITCHER_PML4_SLOT, TRAP_VECTOR,
};

use super::{die, Completion, Death, Handler, Lguest, Next};

const PAGE: u64 = 4096;
const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Whether `va` is a canonical 48-bit address (the CPU faults on any other).
pub(super) fn canonical(va: u64) -> bool {
    (va as i64) << 16 >> 16 == va as i64
}

/// Size of `struct lguest_data`.
const DATA_SIZE: u64 = std::mem::size_of::<pvabi::lguest::LguestData>() as u64;

impl Lguest {
    /// A hypercall trap. `regs` are the vCPU's at the switcher's exit: RAX = the
    /// call, RBX, RCX, RDX, RSI = its arguments. Queued calls run first, in
    /// order, then this one; RAX (and for `CPUID`, RBX..RDX) come back.
    pub fn hypercall(&mut self, regs: &mut kvm_regs) -> Result<Next, Death> {
        self.usage.hypercalls += 1;
        let nr = regs.rax;
        let args = [regs.rbx, regs.rcx, regs.rdx, regs.rsi];
        if self.data.is_none() {
            if nr != hcall::LGUEST_INIT {
                die!("hypercall {nr} before LGUEST_INIT");
            }
            self.init(args[0])?;
            regs.rax = 0;
            return Ok(Next::Resume);
        }
        let queued = self.drain_ring()?;
        if matches!(queued, Next::PowerOff(_) | Next::Restart(_)) {
            return Ok(queued);
        }
        regs.rax = 0;
        let now = self.call(nr, args, Some(regs))?;
        Ok(queued.then(now))
    }

    /// `LGUEST_INIT`: records `lguest_data` and fills what the host owns in it.
    fn init(&mut self, pa: u64) -> Result<(), Death> {
        if !self.layout.is_guest_ram(pa, DATA_SIZE) || !pa.is_multiple_of(8) {
            die!("lguest_data at {pa:#x} is not 8-aligned guest RAM");
        }
        self.data = Some(pa);
        self.put(offset::TSC_KHZ, self.tsc_khz);
        self.put(offset::RESERVE_MEM, RESERVE_MEM);
        self.noirq_iret = self.get(offset::NOIRQ_IRET);
        self.write_time();
        Ok(())
    }

    /// 4.13's `do_async_hcalls`: from the host's cursor, every pending slot in
    /// order, each marked free once run; stops at the first free slot, after
    /// one lap, or at a call that ends the guest.
    fn drain_ring(&mut self) -> Result<Next, Death> {
        let mut outcome = Next::Resume;
        for _ in 0..RING_SIZE {
            let slot = self.next_hcall;
            let status: u8 = self.get(offset::HCALL_STATUS + slot);
            match status {
                HCALL_STATUS_FREE => break,
                HCALL_STATUS_PENDING => {}
                other => {
                    die!("async ring slot {slot} has status {other:#x} (neither pending 0 nor free 0xff)")
                }
            }
            self.next_hcall = (slot + 1) % RING_SIZE;
            let base = offset::HCALLS + slot * std::mem::size_of::<HcallArgs>();
            let a: [u64; 5] = std::array::from_fn(|i| self.get(base + 8 * i));
            let next = self.call(a[0], [a[1], a[2], a[3], a[4]], None)?;
            self.put(offset::HCALL_STATUS + slot, HCALL_STATUS_FREE);
            self.usage.async_calls += 1;
            outcome = outcome.then(next);
            if matches!(outcome, Next::PowerOff(_) | Next::Restart(_)) {
                break;
            }
        }
        Ok(outcome)
    }

    /// One call, synchronous (`regs` to answer in) or from the ring.
    fn call(&mut self, nr: u64, a: [u64; 4], regs: Option<&mut kvm_regs>) -> Result<Next, Death> {
        match nr {
            hcall::FLUSH_ASYNC | hcall::SEND_INTERRUPTS => {}
            hcall::LGUEST_INIT => die!("already have lguest_data"),
            hcall::SHUTDOWN => return self.shutdown(a[0], a[1]),
            hcall::NEW_PGTABLE => self.new_pgtable(a[0])?,
            hcall::FLUSH_TLB => self.complete(Completion::FlushAll),
            hcall::LOAD_IDT_ENTRY => self.load_idt_entry(a[0], a[1], a[2])?,
            hcall::SET_STACK => {
                if a[2] > 2 {
                    die!("SET_STACK of {} pages (at most 2)", a[2]);
                }
            }
            hcall::SET_CLOCKEVENT => self.clock.set(a[0]),
            hcall::HALT => return Ok(Next::Halt),
            hcall::SET_PMD | hcall::SET_PUD | hcall::SET_PGD => self.set_upper(nr, a[0], a[1])?,
            hcall::SET_PTE => self.set_pte(a[1], a[2])?,
            hcall::CONSOLE_WRITE => self.console_write(a[0], a[1])?,
            hcall::CPUID => match regs {
                Some(regs) => self.cpuid(a[0] as u32, a[1] as u32, regs),
                None => die!("CPUID answers in registers: it cannot wait in the async ring"),
            },
            other => die!("unknown hypercall {other}"),
        }
        Ok(Next::Resume)
    }

    fn complete(&mut self, c: Completion) {
        self.completion = self.completion.merge(c);
    }

    fn shutdown(&mut self, pa: u64, how: u64) -> Result<Next, Death> {
        let mut reason = Vec::with_capacity(SHUTDOWN_REASON_MAX);
        for i in 0..SHUTDOWN_REASON_MAX as u64 - 1 {
            let at = pa.wrapping_add(i);
            if !self.layout.is_guest_ram(at, 1) {
                die!("SHUTDOWN reason at {pa:#x} runs outside guest RAM");
            }
            let b: u8 = self.read_phys(at)?;
            if b == 0 {
                break;
            }
            reason.push(b);
        }
        let reason = String::from_utf8_lossy(&reason).into_owned();
        Ok(if how == SHUTDOWN_RESTART { Next::Restart(reason) } else { Next::PowerOff(reason) })
    }

    /// A new root: the switcher goes into its slot 511, and the vCPU loads it
    /// on the way back.
    fn new_pgtable(&mut self, root: u64) -> Result<(), Death> {
        let pa = root & ADDR;
        if !self.layout.is_guest_ram(pa, PAGE) {
            die!("NEW_PGTABLE {root:#x} is not a page of guest RAM");
        }
        self.write_phys(pa + 8 * SWITCHER_PML4_SLOT as u64, self.switcher_entry)?;
        self.cr3 = pa;
        self.complete(Completion::LoadCr3(pa));
        Ok(())
    }

    /// 4.13's `load_guest_idt_entry`: vectors the host owns (NMI, #DF, 15, and
    /// the trap vector) are ignored; a gate that is neither an interrupt nor a
    /// trap gate is sudden death.
    fn load_idt_entry(&mut self, vector: u64, low: u64, high: u64) -> Result<(), Death> {
        if vector >= 256 {
            die!("LOAD_IDT_ENTRY for vector {vector}");
        }
        if matches!(vector as u8, 2 | 8 | 15) || vector as u8 == TRAP_VECTOR {
            return Ok(());
        }
        let g = Gate::decode(low, high);
        if !g.present {
            self.idt[vector as usize] = None;
            return Ok(());
        }
        if g.kind != GATE_INTERRUPT && g.kind != GATE_TRAP {
            die!("LOAD_IDT_ENTRY {vector}: gate type {:#x} is neither interrupt nor trap", g.kind);
        }
        if g.offset >= SWITCHER_ADDR || !canonical(g.offset) {
            die!("LOAD_IDT_ENTRY {vector}: handler {:#x} in the switcher's range or not canonical", g.offset);
        }
        self.idt[vector as usize] =
            Some(Handler { address: g.offset, interrupt_gate: g.kind == GATE_INTERRUPT });
        Ok(())
    }

    /// A page-table entry the guest wrote must not map the reserved area or
    /// memory beyond RAM.
    fn check_entry(&self, what: &str, value: u64, page: u64) -> Result<(), Death> {
        if value & PRESENT == 0 {
            return Ok(());
        }
        let frame = value & ADDR & !(page - 1);
        if frame.saturating_add(page) > self.layout.ram_end() {
            die!("{what} maps {frame:#x}, beyond guest RAM");
        }
        if frame < self.layout.reserved + super::boot::RESERVED_BYTES && frame + page > self.layout.reserved {
            die!("{what} maps the switcher's memory ({frame:#x})");
        }
        Ok(())
    }

    /// `SET_PTE(root, va, pte)`: the switcher's range is sudden death; the
    /// vCPU drops its translation of `va` on the way back.
    fn set_pte(&mut self, va: u64, pte: u64) -> Result<(), Death> {
        if va >= SWITCHER_ADDR {
            die!("SET_PTE for {va:#x}, in the switcher's range");
        }
        if !canonical(va) {
            die!("SET_PTE for {va:#x}, not a canonical address");
        }
        self.check_entry("SET_PTE", pte, PAGE)?;
        self.complete(Completion::Invlpg(va));
        Ok(())
    }

    /// `SET_PMD`, `SET_PUD`, `SET_PGD(table, index)`: the entry is read from
    /// the guest's table; slot 511 of a root is the switcher's.
    fn set_upper(&mut self, nr: u64, table: u64, index: u64) -> Result<(), Death> {
        let (name, page) = match nr {
            hcall::SET_PMD => ("SET_PMD", 2 << 20),
            hcall::SET_PUD => ("SET_PUD", 1 << 30),
            _ => ("SET_PGD", PAGE),
        };
        if index >= 512 {
            die!("{name} index {index} (a table has 512 entries)");
        }
        if !table.is_multiple_of(PAGE) || !self.layout.is_guest_ram(table, PAGE) {
            die!("{name} table {table:#x} is not a page of guest RAM");
        }
        if nr == hcall::SET_PGD && index == SWITCHER_PML4_SLOT as u64 {
            die!("SET_PGD of slot 511, the switcher's");
        }
        let value: u64 = self.read_phys(table + 8 * index)?;
        let huge = nr != hcall::SET_PGD && value & HUGE != 0;
        self.check_entry(name, value, if huge { page } else { PAGE })?;
        self.complete(Completion::FlushAll);
        Ok(())
    }

    fn console_write(&mut self, pa: u64, len: u64) -> Result<(), Death> {
        if len > CONSOLE_WRITE_MAX || !self.layout.is_guest_ram(pa, len) {
            die!("CONSOLE_WRITE of {len} bytes at {pa:#x} (at most {CONSOLE_WRITE_MAX}, in guest RAM)");
        }
        let start = self.console.len();
        self.console.resize(start + len as usize, 0);
        if self.mem.read_slice(&mut self.console[start..], GuestAddress(pa)).is_err() {
            die!("CONSOLE_WRITE at {pa:#x}: guest memory refused the read");
        }
        Ok(())
    }

    /// The VM's CPUID, as the vCPU was given it; a leaf it lacks reads as zeros.
    fn cpuid(&self, leaf: u32, subleaf: u32, regs: &mut kvm_regs) {
        let [a, b, c, d] = crate::cpuid::lookup(&self.cpuid, leaf, subleaf);
        (regs.rax, regs.rbx, regs.rcx, regs.rdx) = (a.into(), b.into(), c.into(), d.into());
    }

    /// `lguest_data.time`: the wall clock now.
    pub(super) fn write_time(&self) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        self.put(offset::TIME + std::mem::offset_of!(Timespec, sec), now.as_secs() as i64);
        self.put(offset::TIME + std::mem::offset_of!(Timespec, nsec), i64::from(now.subsec_nanos()));
    }

    /// IRQs the guest has not masked, of those pending.
    pub(super) fn deliverable(&self) -> u32 {
        if self.data.is_none() || self.irqs_pending == 0 {
            return 0;
        }
        let blocked: u64 = self.get(offset::BLOCKED_INTERRUPTS);
        self.irqs_pending & !(blocked as u32) & (((1u64 << LGUEST_IRQS) - 1) as u32)
    }

    // ------------------------------------------------------- guest memory ---

    /// Reads a field of `lguest_data` (registered: `data` is set and in RAM).
    pub(super) fn get<T: vm_memory::ByteValued>(&self, field: usize) -> T {
        let at = GuestAddress(self.data.expect("lguest_data registered") + field as u64);
        // INIT checked the whole structure lies in RAM.
        self.mem.read_obj(at).expect("lguest_data in RAM")
    }

    /// Writes a field of `lguest_data`.
    pub(super) fn put<T: vm_memory::ByteValued>(&self, field: usize, value: T) {
        let at = GuestAddress(self.data.expect("lguest_data registered") + field as u64);
        self.mem.write_obj(value, at).expect("lguest_data in RAM");
    }

    pub(super) fn read_phys<T: vm_memory::ByteValued>(&self, pa: u64) -> Result<T, Death> {
        match self.mem.read_obj(GuestAddress(pa)) {
            Ok(v) => Ok(v),
            Err(_) => die!("read of guest-physical {pa:#x} outside RAM"),
        }
    }

    pub(super) fn write_phys<T: vm_memory::ByteValued>(&self, pa: u64, value: T) -> Result<(), Death> {
        match self.mem.write_obj(value, GuestAddress(pa)) {
            Ok(()) => Ok(()),
            Err(_) => die!("write of guest-physical {pa:#x} outside RAM"),
        }
    }
}
