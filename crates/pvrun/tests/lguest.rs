//! `--personality lguest` with hand-assembled ring-3 guests: the boot protocol,
//! the ways a guest ends, and lguest's "sudden death" for every invalid call
//! (status 4, exactly one `pvrun: error:` line naming the reason).

mod common;

use common::{have_kvm, kernel, pvrun_kernel, ElfSpec, PvhNote, LOAD_ADDR};

/// Where the guests put `lguest_data` (RAM, not the kernel's page).
const DATA: u32 = 0x20_0000;
/// A page the guests use as a page table.
const TABLE: u32 = 0x30_0000;
/// Where the guests keep their strings: this far into their code page.
const STRINGS: usize = 0x100;

/// 64-bit ring-3 code, hand-assembled.
mod x64 {
    /// `mov r64, imm64` for rax (0), rcx (1), rdx (2), rbx (3), rsi (6).
    pub fn mov(reg: u8, value: u64) -> Vec<u8> {
        let mut v = vec![0x48, 0xb8 + reg];
        v.extend_from_slice(&value.to_le_bytes());
        v
    }

    /// A hypercall: RAX = `nr`, RBX, RCX, RDX = the arguments, `int 4`.
    pub fn hcall(nr: u64, a1: u64, a2: u64, a3: u64) -> Vec<u8> {
        let mut v = mov(3, a1);
        v.extend(mov(1, a2));
        v.extend(mov(2, a3));
        v.extend(mov(0, nr));
        v.extend_from_slice(&[0xcd, 0x04]);
        v
    }

    /// `mov byte ptr [addr], value`
    pub fn store8(addr: u32, value: u8) -> Vec<u8> {
        let mut v = vec![0xc6, 0x04, 0x25];
        v.extend_from_slice(&addr.to_le_bytes());
        v.push(value);
        v
    }

    /// `mov al, v; out 0xf4, al` (the switcher's I/O bitmap lets ring 3 reach
    /// the debug-exit port), then `jmp $`.
    pub fn debug_exit(v: u8) -> Vec<u8> {
        vec![0xb0, v, 0xe6, 0xf4, 0xeb, 0xfe]
    }
}

/// A guest: `code`, then `strings` at [`STRINGS`] (addressed from [`LOAD_ADDR`]).
fn guest(test: &str, code: &[u8], strings: &[u8]) -> std::path::PathBuf {
    let mut bytes = code.to_vec();
    assert!(bytes.len() <= STRINGS, "{test}: code too long");
    bytes.resize(STRINGS, 0xcc);
    bytes.extend_from_slice(strings);
    let spec = ElfSpec { code: bytes, paddr: LOAD_ADDR, note: PvhNote::Lguest(LOAD_ADDR, Some((1, 0))) };
    kernel(test, &spec)
}

fn init() -> Vec<u8> {
    x64::hcall(1, u64::from(DATA), 0, 0)
}

fn run(test: &str, code: &[u8], strings: &[u8]) -> common::Outcome {
    pvrun_kernel(&guest(test, code, strings), &["--personality", "lguest", "--timeout", "10"])
}

/// Runs `code` and expects sudden death naming `reason`.
fn killed(test: &str, code: &[u8], reason: &str) {
    if !have_kvm(test) {
        return;
    }
    let out = run(test, code, &[]);
    out.assert_error(4, &["guest killed: vCPU 0: lguest: ", reason]);
    assert_eq!(out.stdout, "", "{out:#?}");
}

#[test]
fn a_guest_starts_in_ring_3_and_exits_through_the_debug_port() {
    if !have_kvm("a_guest_starts_in_ring_3_and_exits_through_the_debug_port") {
        return;
    }
    let mut code = init();
    code.extend(x64::debug_exit(5));
    let out = run("lg_exit", &code, &[]);
    assert_eq!(out.code(), 11, "{out:#?}");
    assert_eq!(out.stderr, "", "{out:#?}");
}

#[test]
fn console_write_reaches_stdout() {
    if !have_kvm("console_write_reaches_stdout") {
        return;
    }
    let text = b"hello from ring 3\n";
    let mut code = init();
    code.extend(x64::hcall(21, LOAD_ADDR + STRINGS as u64, text.len() as u64, 0));
    code.extend(x64::debug_exit(0));
    let out = run("lg_console", &code, text);
    assert_eq!(out.code(), 1, "{out:#?}");
    assert_eq!(out.stdout, "hello from ring 3\n");
}

#[test]
fn shutdown_powers_off_or_restarts_with_its_reason() {
    if !have_kvm("shutdown_powers_off_or_restarts_with_its_reason") {
        return;
    }
    for (how, line) in [(1, "pvrun: guest powered off: goodbye\n"), (2, "pvrun: guest requested a reset\n")] {
        let mut code = init();
        code.extend(x64::hcall(2, LOAD_ADDR + STRINGS as u64, how, 0));
        code.extend(x64::debug_exit(9));
        let out = run("lg_shutdown", &code, b"goodbye\0");
        assert_eq!(out.code(), 0, "{out:#?}");
        assert_eq!(out.stderr, line, "{out:#?}");
    }
}

#[test]
fn a_call_before_init_is_sudden_death() {
    killed("lg_before_init", &x64::hcall(5, 0, 0, 0), "hypercall 5 before LGUEST_INIT");
}

#[test]
fn init_twice_is_sudden_death() {
    let mut code = init();
    code.extend(init());
    killed("lg_init_twice", &code, "already have lguest_data");
}

#[test]
fn init_outside_ram_is_sudden_death() {
    killed("lg_init_far", &x64::hcall(1, 0x1_0000_0000, 0, 0), "lguest_data at 0x100000000");
}

#[test]
fn unknown_and_retired_numbers_are_sudden_death() {
    for nr in [3, 8, 11, 12, 16, 17, 18, 23, 99, u64::MAX] {
        let mut code = init();
        code.extend(x64::hcall(nr, 0, 0, 0));
        killed("lg_unknown", &code, &format!("unknown hypercall {nr}"));
    }
}

#[test]
fn mapping_into_the_switchers_range_is_sudden_death() {
    // SET_PTE for an address in slot 511.
    let mut code = init();
    code.extend(x64::hcall(14, u64::from(TABLE), 0xffff_ff80_0000_1000, 0));
    killed("lg_switcher_va", &code, "in the switcher's range");
    // SET_PGD of slot 511.
    let mut code = init();
    code.extend(x64::hcall(15, u64::from(TABLE), 511, 0));
    killed("lg_switcher_slot", &code, "slot 511, the switcher's");
    // A PTE naming the switcher's memory (the top 128 KiB of the 128 MiB).
    let mut code = init();
    code.extend(x64::hcall(14, u64::from(TABLE), 0x1000, ((128 << 20) - (64 << 10)) | 1));
    killed("lg_switcher_frame", &code, "maps the switcher's memory");
}

#[test]
fn a_malformed_ring_slot_is_sudden_death() {
    // Slot 0's status is neither pending (0) nor free (0xff); the next
    // synchronous call drains the ring and finds it.
    let mut code = x64::store8(DATA + 44, 7);
    code.extend(init());
    code.extend(x64::hcall(0, 0, 0, 0));
    killed("lg_ring", &code, "async ring slot 0 has status 0x7");
}

#[test]
fn a_trap_without_a_handler_is_sudden_death() {
    let mut code = init();
    code.extend_from_slice(&[0x0f, 0x0b]); // ud2
    killed("lg_ud2", &code, "#UD (vector 6, error 0x0) at RIP 0x1000");
}

#[test]
fn the_kernel_must_carry_the_lguest_entry_and_major() {
    if !have_kvm("the_kernel_must_carry_the_lguest_entry_and_major") {
        return;
    }
    let pvh_only = kernel("lg_pvh_only", &ElfSpec::new(&x64::debug_exit(0)));
    let out = pvrun_kernel(&pvh_only, &["--personality", "lguest"]);
    out.assert_error(2, &["no lguest64 entry point", "\"Lguest\""]);
    let spec =
        ElfSpec { note: PvhNote::Lguest(LOAD_ADDR, Some((2, 0))), ..ElfSpec::new(&x64::debug_exit(0)) };
    let out = pvrun_kernel(&kernel("lg_abi2", &spec), &["--personality", "lguest"]);
    out.assert_error(2, &["speaks lguest64 ABI 2.0", "pvrun serves 1.0"]);
    let out =
        pvrun_kernel(&guest("lg_smp", &x64::debug_exit(0), &[]), &["--personality", "lguest", "--cpus", "2"]);
    out.assert_error(2, &["lguest is uniprocessor"]);
}
