//! pvkernel: the paravirt reference kernel.
//!
//! One ELF that boots on every platform we can reach, runs its conformance suite
//! and reports TAP version 14 on the console, then exits through the platform's
//! power op (status 0 = all passed). Privileged state is touched only through the
//! `paravirt` API; raw instructions are allowed only in `boot/`.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod arch;
mod boot;
mod lock;
mod mm;
mod percpu;
mod platform;
mod smp;
mod suite;
mod sync;
mod tap;

use boot::BootInfo;

pub use paravirt::select::cmdline_value;

/// Entered from a boot protocol with everything it told us.
pub fn kernel_main(mut boot: BootInfo) -> ! {
    let owns_hardware = boot.owns_hardware();
    if boot.kernel_pages_are_user() {
        mm::paging::map_kernel_as_user();
    }
    // The boot CPU is CPU 0; under Xen PV, with no local APIC, CPU numbers are
    // vCPU ids and stand in for APIC IDs.
    let bsp_apic_id = if owns_hardware { arch::apic::id() } else { 0 };
    percpu::init_this_cpu(0, bsp_apic_id);
    // A kernel that owns the CPU loads its tables first, so that faults during
    // backend set-up are reported; a Xen PV kernel can load them only through
    // the backend (a trap table instead of an IDT).
    if owns_hardware {
        arch::gdt::init(0, None);
        arch::traps::init();
    }
    let cmdline = boot.take_cmdline();
    // SAFETY: one CPU, interrupts off, no op in flight; the kernel is identity-mapped.
    let selection = unsafe {
        paravirt::init(&paravirt::InitParams {
            cmdline,
            virt_to_phys: |v| v,
            current_cpu: percpu::current_index,
            boot: boot.flow,
        })
    };
    if !owns_hardware {
        arch::gdt::init(0, None);
        arch::traps::init();
    }
    // Only now: under Xen the console is a hypercall, not the UART.
    // An empty line first: firmware may have left a partial line on the
    // console (SeaBIOS's "Booting from ROM.."), and TAP's version line must
    // start a line.
    tap::line(format_args!(""));
    tap::line(format_args!("TAP version 14"));
    if boot.regions().is_empty() {
        let mut ranges = [paravirt::MemoryRange::default(); boot::MAX_REGIONS];
        let n = paravirt::memory_map(&mut ranges);
        for r in &ranges[..n] {
            boot.push_region(boot::MemRegion {
                start: r.start,
                len: r.len,
                kind: boot::MemKind::from_e820(r.kind),
            });
        }
        diag!("memory map: {} ranges from the {} backend", n, selection.decision.backend.name);
    }
    if owns_hardware {
        arch::apic::mask_legacy_pic();
    }
    arch::apic::init(owns_hardware);
    mm::frame::init(&boot);
    if let Some((start, end)) = boot.unmapped_ram {
        match mm::paging::map_identity(start, end) {
            Ok(()) => diag!("mapped RAM {:#x}..{:#x} the loader left unmapped", start, end),
            Err(e) => tap::bail_out(format_args!("mapping RAM {:#x}..{:#x}: {:?}", start, end, e)),
        }
    }
    if let Err(e) = mm::paging::protect_kernel_text() {
        tap::bail_out(format_args!("write-protecting kernel text: {:?}", e));
    }
    if let Err(e) = mm::heap::init() {
        tap::bail_out(format_args!("heap: {}", e));
    }

    let p = platform::detect(boot.flow, selection.decision.backend.name);
    let abi = selection.abi;
    diag!(
        "platform: {}  backend: {}  abi: {}{}  boot: {} v{}  hv: \"{}\"  mem: {} MiB",
        p.name,
        selection.decision.backend.name,
        abi.name,
        abi.features.map(|f| alloc::format!(" features={:#010x}", f)).unwrap_or_default(),
        boot.protocol,
        boot.version,
        p.signature_str(),
        boot.ram_bytes() >> 20
    );
    diag!("cmdline: {}", boot.cmdline());
    match selection.override_problem() {
        Some(paravirt::select::OverrideProblem::Unknown(n)) => {
            diag!("pv={}: no such backend; selected by probing", n)
        }
        Some(paravirt::select::OverrideProblem::Unavailable(n)) if !owns_hardware => {
            diag!("pv={}: a kernel entered in ring 3 runs only on the backend of its entry", n)
        }
        Some(paravirt::select::OverrideProblem::Unavailable(n)) => {
            diag!("pv={}: backend not detected here; selected by probing", n)
        }
        None => {}
    }
    for b in paravirt::backends::BACKENDS {
        if let Some(why) = (b.refusal)() {
            diag!("probe {}: {}", b.name, why);
        }
    }
    match selection.patched {
        Some(s) => diag!("patched: {} inline, {} call, {} skipped", s.inline, s.call, s.skipped),
        None => diag!("patched: off (pv.patch=off): every site is an indirect call"),
    }
    for op in paravirt::ops::Op::all() {
        diag!("op {} -> {}", op.name(), selection.implementation(op));
    }

    if let Some(kind) = cmdline_value(boot.cmdline(), "pvkernel.crash") {
        crash(kind);
    }

    boot::smp::mark_online(0);
    smp::init();
    start_cpus(boot.cmdline());

    let filter = cmdline_value(boot.cmdline(), "pvkernel.tests").unwrap_or("");
    let mut ctx = suite::Ctx { boot: &boot, selection: &selection };
    let failed = suite::run(&mut ctx, filter);
    let (used, total) = mm::frame::stats();
    diag!("frames: {} of {} in use; {} failed", used, total, failed);
    paravirt::power::shutdown(if failed == 0 { tap::EXIT_OK } else { tap::EXIT_FAILED })
}

/// Starts the other CPUs and reports them: how many came online and how long
/// it took, their APIC IDs, and any CPU not taken (beyond what the kernel
/// takes, parked) or not started, with the reason.
fn start_cpus(cmdline: &str) {
    let expected = expected_cpus(cmdline);
    let take = cpus_taken(cmdline);
    let s = if expected > 1 || take < expected {
        boot::smp::start_aps(expected, take, 1_000_000_000)
    } else {
        boot::smp::Started {
            online: boot::smp::online(),
            took_ns: 0,
            parked: 0,
            parked_ids: alloc::vec::Vec::new(),
            failed: alloc::vec::Vec::new(),
        }
    };
    let ids = |cpus: &mut dyn Iterator<Item = u32>| {
        cpus.map(|id| alloc::format!("{id}")).collect::<alloc::vec::Vec<_>>().join(",")
    };
    let mut line = alloc::format!(
        "{} online in {} ms, {} expected; APIC IDs {}",
        s.online.len(),
        s.took_ns / 1_000_000,
        expected,
        ids(&mut s.online.iter().map(paravirt::cpus::apic_id))
    );
    if s.parked > 0 {
        line += &alloc::format!(
            "; {} parked beyond the {} this kernel takes (APIC IDs {})",
            s.parked,
            take,
            ids(&mut s.parked_ids.iter().copied())
        );
    }
    for (cpu, why) in &s.failed {
        line += &alloc::format!("; CPU {cpu} not started: {why}");
    }
    diag!("cpus: {}", line);
}

/// How many CPUs to wait for: `pvkernel.cpus=N`, else what CPUID leaf 1 says
/// (logical processors per package, when the HTT bit is set).
fn expected_cpus(cmdline: &str) -> u32 {
    if let Some(n) = cmdline_value(cmdline, "pvkernel.cpus").and_then(|v| v.parse().ok()) {
        return u32::max(n, 1);
    }
    let l1 = paravirt::cpu::cpuid(1, 0);
    if l1.edx & (1 << 28) == 0 {
        return 1;
    }
    ((l1.ebx >> 16) & 0xff).max(1)
}

/// How many CPUs the kernel takes at most: paravirt's capacity, or fewer
/// with `pvkernel.max_cpus=N` (the rest are parked, and said so).
pub(crate) fn cpus_taken(cmdline: &str) -> u32 {
    let max = paravirt::MAX_CPUS as u32;
    cmdline_value(cmdline, "pvkernel.max_cpus")
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(max, |n| n.clamp(1, max))
}

/// Deliberate endings for the host's tests of the fatal paths.
fn crash(kind: &str) -> ! {
    match kind {
        "page_fault" => {
            // SAFETY: this is meant to fault fatally; nothing is mapped there.
            let v = unsafe { core::ptr::read_volatile(0xffff_c000_dead_0000 as *const u64) };
            tap::bail_out(format_args!("read of unmapped memory returned {:#x}", v))
        }
        "panic" => panic!("requested by pvkernel.crash=panic"),
        "reboot" => paravirt::power::reboot(),
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
