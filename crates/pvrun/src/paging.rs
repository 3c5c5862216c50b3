//! Walking the guest's page tables, to reach what the guest names by virtual
//! address: its stack (where interrupt frames go) and its code (the
//! instruction an emulated `rdmsr` or `wrmsr` sits at).

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const HUGE: u64 = 1 << 7;
const ADDR: u64 = 0x000f_ffff_ffff_f000;

/// Why a virtual address could not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// No present mapping (or a table outside RAM).
    NotMapped,
    /// Mapped, but not writable at some level.
    ReadOnly,
}

/// The physical address `va` maps to under `root`, checking write access
/// when `write` (the CPU would, at CPL0 with CR0.WP set). 4-level paging;
/// 1 GiB and 2 MiB pages honoured.
pub fn translate(mem: &GuestMemoryMmap, root: u64, va: u64, write: bool) -> Result<u64, WalkError> {
    let mut table = root & ADDR;
    for level in (1..=4u32).rev() {
        let index = (va >> (12 + 9 * (level - 1))) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).map_err(|_| WalkError::NotMapped)?;
        if entry & PRESENT == 0 {
            return Err(WalkError::NotMapped);
        }
        if write && entry & WRITABLE == 0 {
            return Err(WalkError::ReadOnly);
        }
        if level == 1 || (level <= 3 && entry & HUGE != 0) {
            let page = 1u64 << (12 + 9 * (level - 1));
            return Ok((entry & ADDR & !(page - 1)) | (va & (page - 1)));
        }
        table = entry & ADDR;
    }
    unreachable!("the walk ends at level 1")
}

/// Reads a u64 at virtual `va` (8-aligned, so it never straddles a page).
pub fn read_u64(mem: &GuestMemoryMmap, root: u64, va: u64) -> Result<u64, WalkError> {
    let pa = translate(mem, root, va, false)?;
    mem.read_obj(GuestAddress(pa)).map_err(|_| WalkError::NotMapped)
}

/// Writes a u64 at virtual `va` (8-aligned).
pub fn write_u64(mem: &GuestMemoryMmap, root: u64, va: u64, value: u64) -> Result<(), WalkError> {
    let pa = translate(mem, root, va, true)?;
    mem.write_obj(value, GuestAddress(pa)).map_err(|_| WalkError::NotMapped)
}

/// Reads `buf.len()` bytes from virtual `va`, byte by byte across pages.
pub fn read_bytes(mem: &GuestMemoryMmap, root: u64, va: u64, buf: &mut [u8]) -> Result<(), WalkError> {
    for (i, b) in buf.iter_mut().enumerate() {
        let pa = translate(mem, root, va.wrapping_add(i as u64), false)?;
        *b = mem.read_obj(GuestAddress(pa)).map_err(|_| WalkError::NotMapped)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_4k_2m_and_1g_pages() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 22)]).unwrap();
        let w = |a: u64, v: u64| mem.write_obj(v, GuestAddress(a)).unwrap();
        // root 0x1000: slot 0 -> pdpt 0x2000; pdpt[0] -> pd 0x3000; pdpt[1] = 1 GiB page;
        // pd[0] -> pt 0x4000 (pt[5] -> 0x9000, read-only); pd[1] = 2 MiB page at 0x20_0000.
        w(0x1000, 0x2000 | 3);
        w(0x2000, 0x3000 | 3);
        w(0x2008, 0x4000_0000 | 0x83);
        w(0x3000, 0x4000 | 3);
        w(0x3008, 0x20_0000 | 0x83);
        w(0x4000 + 5 * 8, 0x9000 | 1);
        assert_eq!(translate(&mem, 0x1000, 0x5123, false), Ok(0x9123));
        assert_eq!(translate(&mem, 0x1000, 0x5123, true), Err(WalkError::ReadOnly));
        assert_eq!(translate(&mem, 0x1000, 0x20_1234, true), Ok(0x20_1234));
        assert_eq!(translate(&mem, 0x1000, 0x4123_4567, false), Ok(0x4123_4567));
        assert_eq!(translate(&mem, 0x1000, 0x6000, false), Err(WalkError::NotMapped));
        assert_eq!(translate(&mem, 0x1000, 0xffff_ff80_0000_0000, false), Err(WalkError::NotMapped));
        write_u64(&mem, 0x1000, 0x20_0010, 7).unwrap();
        assert_eq!(read_u64(&mem, 0x1000, 0x20_0010), Ok(7));
    }
}
