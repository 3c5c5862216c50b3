//! End-to-end tests of `--personality vmware` with guests of a few
//! instructions: the CPUID leaves, and the backdoor's register convention as
//! a real `in eax, dx` sees it (`docs/abi/vmware.md` §2, §3, §7). The
//! kernel's own tests, in pvlab, boot pvkernel on it (`pvrun-vmware`).

mod common;

use common::{asm, have_kvm, kernel, parse_hex_words, pvrun_kernel, ElfSpec};
use pvabi::vmware::{MAGIC, PORT};

/// `mov eax, magic; mov ebx, ebx_in; mov ecx, command; mov edx, PORT; in eax, dx`.
fn backdoor(magic: u32, ebx_in: u32, command: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for (opcode, value) in [(0xb8u8, magic), (0xbb, ebx_in), (0xb9, command), (0xba, u32::from(PORT))] {
        v.push(opcode);
        v.extend_from_slice(&value.to_le_bytes());
    }
    v.push(0xed); // in eax, dx
    v
}

/// `cmp <reg>, value; jne +3; or esi, bit` for EAX (0xc0), EBX (0xc3) or ECX (0xc1).
fn set_bit_if(reg: u8, value: u32, bit: u8) -> Vec<u8> {
    let mut v = vec![0x81, 0xf8 | (reg & 7)];
    v.extend_from_slice(&value.to_le_bytes());
    v.extend_from_slice(&[0x75, 0x03, 0x83, 0xce, bit]);
    v
}

/// Exits with bit 0: GETVERSION answered (EAX 6, EBX magic, ECX 2); bit 1:
/// a wrong magic changed EAX to all ones and left EBX; bit 2: a one-byte
/// read of the port reads 0xff; bit 3: GETHZ gave a frequency (EBX not all
/// ones).
fn backdoor_guest() -> Vec<u8> {
    let mut code = vec![0x31, 0xf6]; // xor esi, esi
    code.extend(backdoor(MAGIC, 0xffff_ffff, 10));
    // Three conditions for one bit: count them in EDI.
    code.extend_from_slice(&[0x31, 0xff]); // xor edi, edi
    for (reg, value) in [(0xc0u8, 6u32), (0xc3, MAGIC), (0xc1, 2)] {
        code.extend(vec![0x81, 0xf8 | (reg & 7)]);
        code.extend_from_slice(&value.to_le_bytes());
        code.extend_from_slice(&[0x75, 0x01, 0x47]); // jne +1; inc edi
    }
    code.extend_from_slice(&[0x83, 0xff, 0x03, 0x75, 0x03, 0x83, 0xce, 0x01]); // cmp edi, 3; jne +3; or esi, 1
    code.extend(backdoor(0x1234_5678, 0x55, 10));
    code.extend_from_slice(&[0x31, 0xff]); // xor edi, edi
    for (reg, value) in [(0xc0u8, 0xffff_ffffu32), (0xc3, 0x55)] {
        code.extend(vec![0x81, 0xf8 | (reg & 7)]);
        code.extend_from_slice(&value.to_le_bytes());
        code.extend_from_slice(&[0x75, 0x01, 0x47]); // jne +1; inc edi
    }
    code.extend_from_slice(&[0x83, 0xff, 0x02, 0x75, 0x03, 0x83, 0xce, 0x02]); // cmp edi, 2; jne +3; or esi, 2
    code.extend(backdoor(MAGIC, 0, 10));
    code.extend_from_slice(&[0xb8, 0, 0, 0, 0, 0xec]); // mov eax, 0; in al, dx
    code.extend(set_bit_if(0xc0, 0xff, 4));
    code.extend(backdoor(MAGIC, 0xffff_ffff, 45));
    code.extend_from_slice(&[0x81, 0xfb, 0xff, 0xff, 0xff, 0xff, 0x74, 0x03, 0x83, 0xce, 0x08]); // cmp ebx, -1; je +3; or esi, 8
    code.extend_from_slice(&[0x89, 0xf0]); // mov eax, esi
    code.extend(asm::exit_eax());
    code
}

#[test]
fn the_backdoor_answers_as_the_abi_says() {
    if !have_kvm("the_backdoor_answers_as_the_abi_says") {
        return;
    }
    let k = kernel("vmware-backdoor", &ElfSpec::new(&backdoor_guest()));
    let out = pvrun_kernel(&k, &["--personality", "vmware", "--stats"]);
    assert_eq!(out.code(), (0xf << 1) | 1, "{out:#?}");
    // GETVERSION twice and GETHZ answered; the wrong magic, and the byte read, not.
    assert!(out.stderr.contains("vCPU 0: vmware: calls=3 unsupported=2 steal_enabled=0"), "{out:#?}");
    // Without the personality nothing answers: a port that reads all ones
    // (bits 1 and 2 hold anywhere, bit 0 and 3 only with the backdoor).
    let out = pvrun_kernel(&k, &["--personality", "kvm", "--no-hypercall-probe"]);
    assert_eq!(out.code(), (0x6 << 1) | 1, "{out:#?}");
}

#[test]
fn the_leaves_sign_vmware_and_give_the_tsc_frequency() {
    if !have_kvm("the_leaves_sign_vmware_and_give_the_tsc_frequency") {
        return;
    }
    let mut code = asm::print_cpuid(0x4000_0000);
    code.extend(asm::print_cpuid(0x4000_0010));
    code.extend(asm::debug_exit(0));
    let k = kernel("vmware-leaves", &ElfSpec::new(&code));
    let out = pvrun_kernel(&k, &["--personality", "vmware"]);
    assert_eq!(out.code(), 1, "{out:#?}");
    let lines: Vec<Vec<u32>> = out.stdout.lines().map(parse_hex_words).collect();
    assert_eq!(lines.len(), 2, "{out:#?}");
    let signature: Vec<u8> = lines[0][1..].iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!(&signature, b"VMwareVMware");
    assert_eq!(lines[0][0], 0x4000_0010, "the range reaches the timing leaf");
    let (tsc_khz, apic_khz) = (lines[1][0], lines[1][1]);
    assert!((100_000..10_000_000).contains(&tsc_khz), "TSC {tsc_khz} kHz");
    assert_eq!(apic_khz, 1_000_000, "KVM's APIC bus: 1 GHz");
}
