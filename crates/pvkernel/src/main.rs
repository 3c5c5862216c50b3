//! pvkernel: the paravirt reference kernel.
//!
//! One ELF that boots on every platform we can reach, runs its conformance suite
//! and reports TAP version 14 on the console, then exits through the platform's
//! power op (status 0 = all passed). Privileged state is touched only through the
//! `paravirt` API; raw instructions are allowed only in `boot/`.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

mod arch;
mod boot;
mod lock;
mod mm;
mod platform;
mod suite;
mod sync;
mod tap;

use boot::BootInfo;

/// Value of `key=value` on a command line (first match).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_ascii_whitespace().find_map(|w| {
        let (k, v) = w.split_once('=')?;
        (k == key).then_some(v)
    })
}

/// Entered from a boot protocol with everything it told us.
pub fn kernel_main(boot: BootInfo) -> ! {
    tap::line(format_args!("TAP version 14"));
    arch::gdt::init();
    arch::traps::init();
    mm::frame::init(&boot);
    if let Err(e) = mm::heap::init() {
        tap::bail_out(format_args!("heap: {}", e));
    }

    let p = platform::detect();
    diag!(
        "platform: {}  backend: native  boot: {} v{}  hv: \"{}\"  mem: {} MiB",
        p.name,
        boot.protocol,
        boot.version,
        p.signature_str(),
        boot.ram_bytes() >> 20
    );
    diag!("cmdline: {}", boot.cmdline());

    if let Some(kind) = cmdline_value(boot.cmdline(), "pvkernel.crash") {
        crash(kind);
    }

    let filter = cmdline_value(boot.cmdline(), "pvkernel.tests").unwrap_or("");
    let mut ctx = suite::Ctx { boot: &boot };
    let failed = suite::run(&mut ctx, filter);
    let (used, total) = mm::frame::stats();
    diag!("frames: {} of {} in use; {} failed", used, total, failed);
    paravirt::power::shutdown(if failed == 0 { tap::EXIT_OK } else { tap::EXIT_FAILED })
}

/// Deliberate faults for the host's tests of the fatal paths.
fn crash(kind: &str) -> ! {
    match kind {
        "page_fault" => {
            // SAFETY: this is meant to fault fatally; nothing is mapped there.
            let v = unsafe { core::ptr::read_volatile(0xffff_c000_dead_0000 as *const u64) };
            tap::bail_out(format_args!("read of unmapped memory returned {:#x}", v))
        }
        "panic" => panic!("requested by pvkernel.crash=panic"),
        "hang" => loop {
            paravirt::irq::disable();
            paravirt::irq::halt();
        },
        other => tap::bail_out(format_args!("unknown pvkernel.crash={}", other)),
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(l) => tap::bail_out(format_args!("panic at {}:{}: {}", l.file(), l.line(), info.message())),
        None => tap::bail_out(format_args!("panic: {}", info.message())),
    }
}
