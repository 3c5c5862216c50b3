//! Exception fixup table: instructions allowed to fault, and where to resume.
//!
//! An op such as [`crate::cpu::read_msr_safe`] emits an entry into the
//! `.pv_extable` section naming its faulting instruction and a fixup address. The
//! kernel's trap handler calls [`search`] with the faulting RIP; on a hit it resumes
//! at the fixup instead of treating the fault as fatal. The kernel's linker script
//! must keep `.pv_extable` between `__pv_extable_start` and `__pv_extable_end`.

/// One table entry, as emitted by the asm `.quad insn, fixup`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Entry {
    /// Address of the instruction that may fault.
    pub insn: u64,
    /// Where to resume when it does.
    pub fixup: u64,
}

/// Finds the fixup for a fault at `rip` in `table`.
pub fn search_in(table: &[Entry], rip: u64) -> Option<u64> {
    table.iter().find(|e| e.insn == rip).map(|e| e.fixup)
}

/// The linked table (empty on hosted builds).
pub fn table() -> &'static [Entry] {
    #[cfg(target_os = "none")]
    {
        extern "C" {
            static __pv_extable_start: Entry;
            static __pv_extable_end: Entry;
        }
        // SAFETY: the linker script places every `.pv_extable` entry, each a pair of
        // quads, between these two symbols; the section is never written.
        unsafe {
            let start = core::ptr::addr_of!(__pv_extable_start);
            let end = core::ptr::addr_of!(__pv_extable_end);
            let len = (end as usize - start as usize) / core::mem::size_of::<Entry>();
            core::slice::from_raw_parts(start, len)
        }
    }
    #[cfg(not(target_os = "none"))]
    {
        &[]
    }
}

/// Finds the fixup for a fault at `rip` in the linked table.
pub fn search(rip: u64) -> Option<u64> {
    search_in(table(), rip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exact_rip_only() {
        let t = [Entry { insn: 0x1000, fixup: 0x2000 }, Entry { insn: 0x1010, fixup: 0x2010 }];
        assert_eq!(search_in(&t, 0x1010), Some(0x2010));
        assert_eq!(search_in(&t, 0x1001), None);
        assert_eq!(search_in(&[], 0x1000), None);
    }
}
