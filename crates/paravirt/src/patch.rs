//! Call-site patching.
//!
//! Every API function is an inline-asm *site*: an indirect `call` through the op
//! table, padded to the site's length, plus a record in the `.pv_sites` section
//! (`{ site - &record: i32, op: u16, len: u8, flags: u8 }`, position independent as
//! Linux's `.parainstructions` entries are). After the backend is selected the
//! patcher rewrites each site once, on one CPU:
//!
//! * native op with a short native form → the native bytes inline. Padding goes in
//!   front as redundant `ds` (0x3e) prefixes on the first instruction, not as NOPs,
//!   so the patched site executes exactly the instructions the raw sequence does;
//! * anything else → `call rel32` straight to the implementation, then one NOP;
//! * an op the backend says does nothing (a VMI ROM's NOP relocation) → NOPs.
//!
//! The kernel's linker script must keep `.pv_sites` between `__pv_sites_start` and
//! `__pv_sites_end`.

use crate::ops::Op;

/// Length of the unpatched form, `call qword ptr [rip + disp32]`.
pub const INDIRECT_CALL_LEN: usize = 6;
/// Length of `call rel32`.
pub const DIRECT_CALL_LEN: usize = 5;
/// Longest site.
pub const MAX_SITE_LEN: usize = 15;
/// The prefix used to pad an inline native sequence (a `ds` segment override, which
/// has no effect on these instructions in 64-bit mode).
pub const PAD_PREFIX: u8 = 0x3e;
/// Most prefixes we put on one instruction (the architectural limit is 15 bytes per
/// instruction; we stay well inside it).
pub const MAX_PAD_PREFIXES: usize = 6;

/// Bytes a site occupies for `op`: the longest of the indirect call, the native
/// form and the op's reserved minimum.
pub const fn site_len(op: Op) -> usize {
    let info = op.info();
    let mut len = INDIRECT_CALL_LEN;
    if let Some(b) = info.native_inline {
        if b.len() > len {
            len = b.len();
        }
    }
    if info.min_site_len > len {
        len = info.min_site_len;
    }
    len
}

/// Emits a patchable site for `$op` (an [`Op`] path) with the given asm operands.
/// The site follows the C calling convention: arguments in rdi, rsi, rdx, results in
/// rax (and rdx); every caller-saved register is clobbered.
#[doc(hidden)]
#[macro_export]
macro_rules! pv_site {
    ($op:expr; $($operands:tt)*) => {
        ::core::arch::asm!(
            "662:",
            "call qword ptr [rip + {pv_table} + {pv_offset}]",
            ".skip {pv_len} - (. - 662b), 0x90",
            "663:",
            ".pushsection .pv_sites, \"a\"",
            ".balign 4",
            ".long 662b - .",
            ".short {pv_op}",
            ".byte 663b - 662b",
            ".byte 0",
            ".popsection",
            pv_table = sym $crate::table::PV_OPS,
            pv_offset = const $op.info().offset,
            pv_op = const $op as u16,
            pv_len = const $crate::patch::site_len($op),
            $($operands)*
            clobber_abi("C"),
        )
    };
}

/// The text of a patchable `cpu.iret` site, for a kernel's trap exit written in
/// `global_asm!`: an indirect `jmp` through the op table, padded, plus its
/// `.pv_sites` record. The `global_asm!` that uses it must pass the operands
/// `pv_ops = sym paravirt::table::PV_OPS`, `pv_iret_offset = const
/// paravirt::cpu::iret::OFFSET`, `pv_iret_len = const paravirt::cpu::iret::LEN`
/// and `pv_iret_op = const paravirt::cpu::iret::OP`.
#[macro_export]
macro_rules! iret_site {
    () => {
        concat!(
            "662:\n",
            "jmp qword ptr [rip + {pv_ops} + {pv_iret_offset}]\n",
            ".skip {pv_iret_len} - (. - 662b), 0xcc\n",
            "663:\n",
            ".pushsection .pv_sites, \"a\"\n",
            ".balign 4\n",
            ".long 662b - .\n",
            ".short {pv_iret_op}\n",
            ".byte 663b - 662b\n",
            ".byte 0\n",
            ".popsection\n",
        )
    };
}

/// One `.pv_sites` record.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct SiteRecord {
    /// Site address minus the address of this field.
    pub rel: i32,
    /// The op (`Op as u16`).
    pub op: u16,
    /// Site length in bytes.
    pub len: u8,
    /// Reserved.
    pub flags: u8,
}

impl SiteRecord {
    /// The site's address.
    pub fn address(&self) -> u64 {
        (core::ptr::addr_of!(self.rel) as i64 + i64::from(self.rel)) as u64
    }

    /// The op, if the record names a known one.
    pub fn op(&self) -> Option<Op> {
        Op::all().nth(usize::from(self.op))
    }
}

/// What to write at a site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patch {
    /// The native bytes, inline.
    Inline(&'static [u8]),
    /// One instruction with a RIP-relative operand, inline: `code` with the 4
    /// bytes at `disp_at` replaced by `target` minus the end of the site (the
    /// instruction ends the site; padding goes in front, as for `Inline`). A
    /// backend's own short form, e.g. lguest's store to its shared page.
    InlineRel {
        /// The instruction, its displacement bytes zero.
        code: &'static [u8],
        /// Offset of the 32-bit displacement in `code`.
        disp_at: usize,
        /// The address the operand names.
        target: u64,
    },
    /// A direct call to this address.
    Call(u64),
    /// A direct jump to this address (a site that never returns: `cpu.iret`).
    Jump(u64),
    /// Nothing: the site becomes NOPs (an op without a result that the
    /// backend says has no effect, e.g. a VMI ROM's NOP relocation).
    Nop,
}

/// Why a site could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The site is shorter than the code.
    TooShort,
    /// The site is longer than [`MAX_SITE_LEN`].
    TooLong,
    /// More padding than fits as prefixes.
    TooMuchPadding,
    /// The call target (or a RIP-relative operand) is out of rel32 range.
    OutOfRange,
    /// An inline form's displacement does not lie inside its code.
    BadTemplate,
}

/// The bytes to write at a site of `len` bytes at address `site`.
pub fn encode(site: u64, len: usize, patch: Patch) -> Result<([u8; MAX_SITE_LEN], usize), EncodeError> {
    if len > MAX_SITE_LEN {
        return Err(EncodeError::TooLong);
    }
    let mut out = [0u8; MAX_SITE_LEN];
    let mut inline = |code: &[u8]| {
        let pad = len.checked_sub(code.len()).ok_or(EncodeError::TooShort)?;
        if pad > MAX_PAD_PREFIXES {
            return Err(EncodeError::TooMuchPadding);
        }
        out[..pad].fill(PAD_PREFIX);
        out[pad..len].copy_from_slice(code);
        Ok(pad)
    };
    match patch {
        Patch::Inline(native) => {
            inline(native)?;
        }
        Patch::InlineRel { code, disp_at, target } => {
            if disp_at + 4 > code.len() {
                return Err(EncodeError::BadTemplate);
            }
            let pad = inline(code)?;
            let rel = target as i64 - (site as i64 + len as i64);
            let rel = i32::try_from(rel).map_err(|_| EncodeError::OutOfRange)?;
            out[pad + disp_at..pad + disp_at + 4].copy_from_slice(&rel.to_le_bytes());
        }
        Patch::Call(target) | Patch::Jump(target) => {
            if len < DIRECT_CALL_LEN {
                return Err(EncodeError::TooShort);
            }
            let rel = target as i64 - (site as i64 + DIRECT_CALL_LEN as i64);
            let rel = i32::try_from(rel).map_err(|_| EncodeError::OutOfRange)?;
            out[0] = if matches!(patch, Patch::Jump(_)) { 0xe9 } else { 0xe8 };
            out[1..5].copy_from_slice(&rel.to_le_bytes());
            out[5..len].copy_from_slice(nop(len - DIRECT_CALL_LEN));
        }
        Patch::Nop => {
            // At most two instructions: the longest NOP is 9 bytes.
            let first = len.min(9);
            out[..first].copy_from_slice(nop(first));
            out[first..len].copy_from_slice(nop(len - first));
        }
    }
    Ok((out, len))
}

/// One NOP instruction of exactly `n` bytes (0..=9), the forms the Intel SDM
/// recommends (vol. 2B, NOP).
pub fn nop(n: usize) -> &'static [u8] {
    const NOPS: [&[u8]; 10] = [
        &[],
        &[0x90],
        &[0x66, 0x90],
        &[0x0f, 0x1f, 0x00],
        &[0x0f, 0x1f, 0x40, 0x00],
        &[0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00],
        &[0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00],
        &[0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
        &[0x66, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00],
    ];
    NOPS[n]
}

/// The linked site records (empty on hosted builds).
pub fn sites() -> &'static [SiteRecord] {
    #[cfg(target_os = "none")]
    {
        extern "C" {
            static __pv_sites_start: SiteRecord;
            static __pv_sites_end: SiteRecord;
        }
        let start = core::ptr::addr_of!(__pv_sites_start);
        let end = core::ptr::addr_of!(__pv_sites_end);
        let len = (end as usize - start as usize) / core::mem::size_of::<SiteRecord>();
        // SAFETY: the linker script places every `.pv_sites` record between the two
        // symbols; the section is never written.
        unsafe { core::slice::from_raw_parts(start, len) }
    }
    #[cfg(not(target_os = "none"))]
    {
        &[]
    }
}

/// What patching did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatchStats {
    /// Sites rewritten to inline bytes (native, a backend's own, or NOPs).
    pub inline: usize,
    /// Sites rewritten to a direct call.
    pub call: usize,
    /// Sites left as indirect calls (unknown op or unencodable).
    pub skipped: usize,
}

/// Rewrites every site with `decide(op)`.
///
/// # Safety
/// Only one CPU may run, with interrupts disabled, and no site may be executing
/// (call it once at boot). Kernel text must be mapped (it is made writable by
/// clearing CR0.WP for the duration, through the installed table's cpu ops: a
/// deprivileged kernel such as Xen PV's cannot, and its text is writable anyway).
pub unsafe fn apply(decide: impl Fn(Op) -> Patch) -> PatchStats {
    use crate::backends::native::ops as native;
    let mut stats = PatchStats::default();
    // Call the table's functions directly: the sites we rewrite must not be in use.
    let cpu = crate::table::ops().cpu;
    let cr0 = (cpu.read_cr0)();
    // SAFETY: clearing WP only lets ring 0 write read-only pages; restored below.
    unsafe { (cpu.write_cr0)(cr0 & !(1 << 16)) };
    for rec in sites() {
        let Some(op) = rec.op() else {
            stats.skipped += 1;
            continue;
        };
        let patch = decide(op);
        let addr = rec.address();
        match encode(addr, usize::from(rec.len), patch) {
            Ok((bytes, len)) => {
                // SAFETY: `addr..addr+len` is a site in kernel text (from its record);
                // no CPU executes it now (caller's contract).
                unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, len) };
                match patch {
                    Patch::Inline(_) | Patch::InlineRel { .. } | Patch::Nop => stats.inline += 1,
                    Patch::Call(_) | Patch::Jump(_) => stats.call += 1,
                }
            }
            Err(_) => stats.skipped += 1,
        }
    }
    // SAFETY: restores the caller's CR0.
    unsafe { (cpu.write_cr0)(cr0) };
    // Serialize so the CPU does not run stale prefetched bytes (SDM vol. 3, 8.1.3).
    let _ = native::cpuid(0, 0);
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_is_prefix_padded_to_site_length() {
        let (b, n) = encode(0x1000, 6, Patch::Inline(&[0xfa])).unwrap();
        assert_eq!(&b[..n], &[0x3e, 0x3e, 0x3e, 0x3e, 0x3e, 0xfa]);
        let (b, n) = encode(0x1000, 6, Patch::Inline(&[0x0f, 0x01, 0x3f])).unwrap();
        assert_eq!(&b[..n], &[0x3e, 0x3e, 0x3e, 0x0f, 0x01, 0x3f]);
        let msr = Op::CpuReadMsr.info().native_inline.unwrap();
        let (b, n) = encode(0x1000, site_len(Op::CpuReadMsr), Patch::Inline(msr)).unwrap();
        assert_eq!(&b[..n], msr, "an 11-byte native form fills its site exactly");
    }

    #[test]
    fn call_is_rel32_then_one_nop() {
        let (b, n) = encode(0x1000, 6, Patch::Call(0x2000)).unwrap();
        // rel = 0x2000 - (0x1000 + 5) = 0xffb
        assert_eq!(&b[..n], &[0xe8, 0xfb, 0x0f, 0x00, 0x00, 0x90]);
        let (b, n) = encode(0x5000, 13, Patch::Call(0x1000)).unwrap();
        let rel = (0x1000i64 - 0x5005) as i32;
        assert_eq!(&b[1..5], &rel.to_le_bytes());
        assert_eq!(&b[5..n], nop(8));
    }

    #[test]
    fn inline_rel_points_its_operand_at_the_target() {
        // `mov byte ptr [rip + d32], 0` in a 7-byte site at 0x1000, naming 0x3001:
        // the instruction ends at 0x1007, so d32 = 0x1ffa.
        let code = &[0xc6, 0x05, 0, 0, 0, 0, 0x00];
        let (b, n) = encode(0x1000, 7, Patch::InlineRel { code, disp_at: 2, target: 0x3001 }).unwrap();
        assert_eq!(&b[..n], &[0xc6, 0x05, 0xfa, 0x1f, 0x00, 0x00, 0x00]);
        // A 6-byte form in an 8-byte site: two prefixes in front, still ending the site.
        let code = &[0x8b, 0x05, 0, 0, 0, 0];
        let (b, n) = encode(0x1000, 8, Patch::InlineRel { code, disp_at: 2, target: 0x1000 }).unwrap();
        assert_eq!(&b[..n], &[0x3e, 0x3e, 0x8b, 0x05, 0xf8, 0xff, 0xff, 0xff]);
        assert_eq!(
            encode(0, 7, Patch::InlineRel { code, disp_at: 4, target: 0 }),
            Err(EncodeError::BadTemplate)
        );
        assert_eq!(
            encode(0, 6, Patch::InlineRel { code, disp_at: 2, target: 1 << 40 }),
            Err(EncodeError::OutOfRange)
        );
    }

    #[test]
    fn jump_is_rel32_then_one_nop() {
        let (b, n) = encode(0x1000, 6, Patch::Jump(0x2000)).unwrap();
        assert_eq!(&b[..n], &[0xe9, 0xfb, 0x0f, 0x00, 0x00, 0x90]);
    }

    #[test]
    fn nop_fills_the_site_with_at_most_two_instructions() {
        let (b, n) = encode(0x1000, 6, Patch::Nop).unwrap();
        assert_eq!(&b[..n], nop(6));
        let (b, n) = encode(0x1000, 15, Patch::Nop).unwrap();
        assert_eq!(&b[..9], nop(9));
        assert_eq!(&b[9..n], nop(6));
    }

    #[test]
    fn encode_rejects_what_does_not_fit() {
        assert_eq!(encode(0, 2, Patch::Inline(&[1, 2, 3])), Err(EncodeError::TooShort));
        assert_eq!(encode(0, 4, Patch::Call(0)), Err(EncodeError::TooShort));
        assert_eq!(encode(0, 16, Patch::Call(0)), Err(EncodeError::TooLong));
        assert_eq!(encode(0, 8, Patch::Inline(&[0xfa])), Err(EncodeError::TooMuchPadding));
        assert_eq!(encode(0, 6, Patch::Call(1 << 40)), Err(EncodeError::OutOfRange));
    }

    #[test]
    fn every_native_form_fits_its_site() {
        for info in crate::ops::OP_INFO {
            let len = site_len(info.op);
            assert!((INDIRECT_CALL_LEN..=MAX_SITE_LEN).contains(&len), "{}", info.name);
            if let Some(native) = info.native_inline {
                assert!(encode(0x1000, len, Patch::Inline(native)).is_ok(), "{}", info.name);
            }
        }
    }

    #[test]
    fn nops_have_their_length() {
        for n in 0..10 {
            assert_eq!(nop(n).len(), n);
        }
    }

    #[test]
    fn ops_are_indexed_by_discriminant() {
        for (i, info) in crate::ops::OP_INFO.iter().enumerate() {
            assert_eq!(info.op as usize, i);
            assert_eq!(info.offset % 8, 0, "{} misaligned", info.name);
        }
        let mut offsets: std::vec::Vec<_> = crate::ops::OP_INFO.iter().map(|i| i.offset).collect();
        offsets.sort();
        offsets.dedup();
        assert_eq!(offsets.len(), crate::ops::OP_COUNT, "two ops share a table slot");
        assert_eq!(crate::ops::OP_COUNT * 8, core::mem::size_of::<crate::table::PvOps>());
    }
}
