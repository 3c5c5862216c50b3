//! End-to-end tests of `--personality hyperv` with guests of a few
//! instructions: the leaves, the synthetic MSRs and the hypercall page as a
//! real `rdmsr`/`wrmsr`/`call` sees them (`docs/abi/hyperv.md` §1–§5, §7).
//! The kernel's own tests, in pvlab, boot pvkernel on it (`pvrun-hyperv`).

mod common;

use common::{asm, have_kvm, kernel, parse_hex_words, pvrun_kernel, ElfSpec};
use pvabi::hyperv::{hypercall, msr};

fn imm(opcode: u8, value: u32) -> Vec<u8> {
    let mut v = vec![opcode];
    v.extend_from_slice(&value.to_le_bytes());
    v
}

/// `mov ecx, index; mov eax, value; xor edx, edx; wrmsr`
fn wrmsr(index: u32, value: u32) -> Vec<u8> {
    let mut v = imm(0xb9, index);
    v.extend(imm(0xb8, value));
    v.extend_from_slice(&[0x31, 0xd2, 0x0f, 0x30]);
    v
}

/// `mov ecx, index; rdmsr`
fn rdmsr(index: u32) -> Vec<u8> {
    let mut v = imm(0xb9, index);
    v.extend_from_slice(&[0x0f, 0x32]);
    v
}

/// `cmp eax, value; jne +3; or esi, bit`
fn bit_if_eax(value: u32, bit: u8) -> Vec<u8> {
    let mut v = imm(0x3d, value);
    v.extend_from_slice(&[0x75, 0x03, 0x83, 0xce, bit]);
    v
}

/// The hypercall page's GPA in these guests.
const PAGE: u32 = 0x5000;

/// `mov ecx, control; mov edx, input; mov eax, PAGE; call eax`
fn hypercall(control: u32, input: u32) -> Vec<u8> {
    let mut v = imm(0xb9, control);
    v.extend(imm(0xba, input));
    v.extend(imm(0xb8, PAGE));
    v.extend_from_slice(&[0xff, 0xd0]);
    v
}

/// Exits with bit 0: the page did not enable before an OS identity; bit 1:
/// it did after; bit 2: an unknown call code answered status 2; bit 3: an
/// IPI with vector 0x0f answered 5; bit 4: VP_INDEX read 0; bit 5: the TSC
/// frequency's low half read non-zero.
fn msr_guest() -> Vec<u8> {
    let mut code = imm(0xbc, 0x7_0000); // mov esp, 0x70000
    code.extend_from_slice(&[0x31, 0xf6]); // xor esi, esi
    code.extend(wrmsr(msr::HYPERCALL, PAGE | 1));
    code.extend(rdmsr(msr::HYPERCALL));
    code.extend(bit_if_eax(PAGE, 1));
    code.extend(wrmsr(msr::GUEST_OS_ID, 1));
    code.extend(wrmsr(msr::HYPERCALL, PAGE | 1));
    code.extend(rdmsr(msr::HYPERCALL));
    code.extend(bit_if_eax(PAGE | 1, 2));
    code.extend(hypercall(0x0002, 0));
    code.extend(bit_if_eax(u32::from(hypercall::status::INVALID_HYPERCALL_CODE), 4));
    code.extend(hypercall(u32::from(hypercall::SEND_IPI) | hypercall::FAST as u32, 0x0f));
    code.extend(bit_if_eax(u32::from(hypercall::status::INVALID_PARAMETER), 8));
    code.extend(rdmsr(msr::VP_INDEX));
    code.extend(bit_if_eax(0, 16));
    code.extend(rdmsr(msr::TSC_FREQUENCY));
    code.extend_from_slice(&[0x85, 0xc0, 0x74, 0x03, 0x83, 0xce, 32]); // test eax, eax; je +3; or esi, 32
    code.extend_from_slice(&[0x89, 0xf0]); // mov eax, esi
    code.extend(asm::exit_eax());
    code
}

#[test]
fn the_msrs_and_the_hypercall_page_answer_as_the_abi_says() {
    if !have_kvm("the_msrs_and_the_hypercall_page_answer_as_the_abi_says") {
        return;
    }
    let k = kernel("hyperv-msrs", &ElfSpec::new(&msr_guest()));
    let out = pvrun_kernel(&k, &["--personality", "hyperv", "--stats"]);
    assert_eq!(out.code(), (0x3f << 1) | 1, "{out:#?}");
    assert!(
        out.stderr.contains(
            "vCPU 0: hyperv: msr_reads=4 msr_writes=3 msr_faults=0 hypercalls=2 failed=2 ipis_sent=0"
        ),
        "{out:#?}"
    );
    // Without the personality these MSRs are KVM's to refuse or ignore:
    // the guest never gets all six answers.
    let out = pvrun_kernel(&k, &["--personality", "kvm", "--no-hypercall-probe"]);
    assert_ne!(out.code(), (0x3f << 1) | 1, "{out:#?}");
}

#[test]
fn a_page_outside_ram_is_a_general_protection_fault() {
    if !have_kvm("a_page_outside_ram_is_a_general_protection_fault") {
        return;
    }
    let mut code = wrmsr(msr::GUEST_OS_ID, 1);
    code.extend(wrmsr(msr::HYPERCALL, 0xf000_0000 | 1));
    code.extend(asm::debug_exit(0));
    let k = kernel("hyperv-page-outside-ram", &ElfSpec::new(&code));
    let out = pvrun_kernel(&k, &["--personality", "hyperv", "--stats"]);
    // The #GP finds no IDT: a triple fault, status 4, one line naming it.
    assert_eq!(out.code(), 4, "{out:#?}");
    assert!(out.stderr.contains("triple fault"), "{out:#?}");
    assert!(out.stderr.contains("msr_faults=1"), "{out:#?}");
}

#[test]
fn the_leaves_sign_microsoft_hv() {
    if !have_kvm("the_leaves_sign_microsoft_hv") {
        return;
    }
    let mut code = asm::print_cpuid(0x4000_0000);
    code.extend(asm::print_cpuid(0x4000_0001));
    code.extend(asm::print_cpuid(0x4000_0003));
    code.extend(asm::debug_exit(0));
    let k = kernel("hyperv-leaves", &ElfSpec::new(&code));
    let out = pvrun_kernel(&k, &["--personality", "hyperv", "--cpus", "2"]);
    assert_eq!(out.code(), 1, "{out:#?}");
    let lines: Vec<Vec<u32>> = out.stdout.lines().map(parse_hex_words).collect();
    assert_eq!(lines.len(), 3, "{out:#?}");
    let signature: Vec<u8> = lines[0][1..].iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!((&signature[..], lines[0][0]), (&b"Microsoft Hv"[..], 0x4000_0005));
    assert_eq!(lines[1][0], 0x3123_7648, "Hv#1");
    assert_ne!(lines[2][0] & pvabi::hyperv::privilege::HYPERCALL_MSRS, 0, "{out:#?}");
}
