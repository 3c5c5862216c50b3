//! The paravirt machinery itself: selection report and patched call sites.

use paravirt::ops::Op;
use paravirt::patch::{self, Patch};

use super::{skip, Ctx, Test, TestResult};
use crate::arch::probe;
use crate::ensure;

pub static TESTS: &[Test] = &[
    Test { name: "pv.every_op_has_an_implementation", run: every_op_reported },
    Test { name: "pv.sites_patched", run: sites_patched },
    Test { name: "pv.site_bytes", run: site_bytes },
    Test { name: "pv.text_write_protected", run: text_write_protected },
];

fn every_op_reported(ctx: &mut Ctx) -> TestResult {
    let sel = ctx.selection;
    for op in Op::all() {
        let imp = sel.implementation(op);
        ensure!(!imp.is_empty(), "{} has no implementation", op.name());
        let backend = sel.decision.backend;
        if sel.provided.contains(op) && sel.patched.is_some() {
            let own = (backend.patch)(op).map(backend.patched_name);
            ensure!(imp == backend.name || Some(imp) == own, "{} -> {}", op.name(), imp);
        }
    }
    // A backend that serves no op must say so in its feature word: 0,
    // nothing of its host's in use (QEMU's vmport under TCG answers none of
    // the commands the vmware backend maps). A word that names a feature
    // while no op is served is a backend that dropped what it took.
    if sel.decision.backend.name != "native" && sel.provided.is_empty() {
        ensure!(
            sel.abi.features == Some(0),
            "backend {} provides no op, yet its features are {:?}",
            sel.decision.backend.name,
            sel.abi.features
        );
    }
    Ok(())
}

fn sites_patched(ctx: &mut Ctx) -> TestResult {
    let Some(stats) = ctx.selection.patched else {
        return skip("pv.patch=off");
    };
    let sites = patch::sites();
    ensure!(!sites.is_empty(), "no call sites recorded");
    ensure!(stats.skipped == 0, "{} sites left unpatched", stats.skipped);
    ensure!(stats.inline + stats.call == sites.len(), "stats {:?} for {} sites", stats, sites.len());
    ensure!(stats.inline > 0, "no site inlined");
    // Every op the kernel uses appears at some site.
    for op in [Op::IrqDisable, Op::IrqSaveFlags, Op::MmuSetPte, Op::TimeClockNs, Op::ApicEoi] {
        ensure!(sites.iter().any(|s| s.op() == Some(op)), "no site for {}", op.name());
    }
    Ok(())
}

/// The kernel reads its own text: each site holds exactly what the patcher meant.
fn site_bytes(ctx: &mut Ctx) -> TestResult {
    if ctx.selection.patched.is_none() {
        return skip("pv.patch=off");
    }
    let ops = paravirt::table::ops();
    for rec in patch::sites() {
        let op = rec.op().ok_or(alloc::format!("bad op {} in a site record", rec.op))?;
        let want = paravirt::decide_patch(op, &ctx.selection.provided, ops, ctx.selection.decision.backend);
        let len = usize::from(rec.len);
        let (bytes, n) =
            patch::encode(rec.address(), len, want).map_err(|e| alloc::format!("{}: {:?}", op.name(), e))?;
        // SAFETY: the record names `len` bytes of kernel text, which is readable.
        let have = unsafe { core::slice::from_raw_parts(rec.address() as *const u8, len) };
        ensure!(
            have == &bytes[..n],
            "{} at {:#x}: {:02x?} != {:02x?}",
            op.name(),
            rec.address(),
            have,
            &bytes[..n]
        );
        let at_end = match want {
            Patch::Inline(native) => have.ends_with(native),
            // The opcode bytes in place, ending the site (the displacement varies).
            Patch::InlineRel { code, disp_at, .. } => have[len - code.len()..].starts_with(&code[..disp_at]),
            Patch::Call(_) | Patch::Jump(_) | Patch::Nop => true,
        };
        ensure!(at_end, "{}: the inline form does not end the site", op.name());
    }
    Ok(())
}

fn text_write_protected(_: &mut Ctx) -> TestResult {
    let (start, _) = crate::mm::kernel_read_only();
    let target = start + 0x10;
    let before = probe::read_u64(target).map_err(|f| alloc::format!("read faulted: {:?}", f))?;
    // SAFETY: the page is read-only, so the write must fault; if it did not, the
    // value written equals the one read, so nothing changes.
    match unsafe { probe::write_u64(target, before) } {
        Ok(_) => Err(alloc::format!("write to text at {:#x} succeeded", target).into()),
        Err(f) => {
            ensure!(f.vector == 14, "expected #PF, got vector {}", f.vector);
            ensure!(f.error & 3 == 3, "error code {:#x} is not present|write", f.error);
            Ok(())
        }
    }
}
