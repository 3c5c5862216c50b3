//! Boot-protocol tests: what the loader handed over.

use super::{skip, Ctx, Test, TestResult};
use crate::boot::MemKind;
use crate::{diag, ensure};

pub static TESTS: &[Test] = &[
    Test { name: "boot.start_info", run: start_info },
    Test { name: "boot.cmdline", run: cmdline },
    Test { name: "boot.memory_map", run: memory_map },
];

fn start_info(ctx: &mut Ctx) -> TestResult {
    let b = ctx.boot;
    ensure!(b.error.is_none(), "boot structure unusable: {}", b.error.unwrap_or(""));
    ensure!(b.start_info_paddr != 0, "no boot structure address");
    match b.protocol {
        "pvh" => ensure!(b.version <= 1, "unknown hvm_start_info version {}", b.version),
        "lguest" => ensure!(b.version >= 0x207, "boot protocol {:#x} predates hardware_subarch", b.version),
        _ => {}
    }
    Ok(())
}

/// The host passes `pvkernel.token=<word>`; we echo it so the host can compare.
fn cmdline(ctx: &mut Ctx) -> TestResult {
    let line = ctx.boot.cmdline();
    let Some(token) = crate::cmdline_value(line, "pvkernel.token") else {
        return skip("no pvkernel.token= on the command line");
    };
    ensure!(!token.is_empty(), "pvkernel.token is empty");
    ensure!(token.bytes().all(|b| b.is_ascii_graphic()), "pvkernel.token has non-printable bytes");
    diag!("cmdline token: {}", token);
    Ok(())
}

fn memory_map(ctx: &mut Ctx) -> TestResult {
    let regions = ctx.boot.regions();
    ensure!(!regions.is_empty(), "empty memory map");
    let ram = || regions.iter().filter(|r| r.kind == MemKind::Ram);
    ensure!(ram().count() > 0, "no RAM in the memory map");
    for (i, a) in ram().enumerate() {
        ensure!(a.len > 0, "RAM region {} is empty", i);
        for b in ram().skip(i + 1) {
            ensure!(
                a.end() <= b.start || b.end() <= a.start,
                "RAM regions overlap: {:#x}+{:#x} and {:#x}+{:#x}",
                a.start,
                a.len,
                b.start,
                b.len
            );
        }
    }
    let (kstart, kend) = crate::mm::kernel_image();
    ensure!(
        ram().any(|r| r.start <= kstart && kend <= r.end()),
        "kernel image {:#x}..{:#x} is not inside RAM",
        kstart,
        kend
    );
    // The smallest guest any platform gives is pvrun's 16 MiB, less the
    // legacy hole [0x9fc00, 1 MiB) the map reserves.
    ensure!(ctx.boot.ram_bytes() >= 15 << 20, "less than 15 MiB of RAM: {} bytes", ctx.boot.ram_bytes());
    Ok(())
}
