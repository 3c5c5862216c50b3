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

/// ESI |= `bit` if every (register, value) pair holds: each pair is `cmp
/// <reg>, value; jne +1; inc edi`, with EAX 0, ECX 1, EBX 3 (ModRM reg
/// numbers), then `cmp edi, count; jne +3; or esi, bit`.
fn set_bit_if(pairs: &[(u8, u32)], bit: u8) -> Vec<u8> {
    let mut v = vec![0x31, 0xff]; // xor edi, edi
    for &(reg, value) in pairs {
        v.extend_from_slice(&[0x81, 0xf8 | reg]);
        v.extend_from_slice(&value.to_le_bytes());
        v.extend_from_slice(&[0x75, 0x01, 0x47]);
    }
    v.extend_from_slice(&[0x83, 0xff, pairs.len() as u8, 0x75, 0x03, 0x83, 0xce, bit]);
    v
}

const EAX: u8 = 0;
const ECX: u8 = 1;
const EBX: u8 = 3;

/// Exits with bit 0: GETVERSION answered (EAX 6, EBX magic, ECX 2); bit 1:
/// a wrong magic changed EAX to all ones and left EBX; bit 2: a one-byte
/// read of the port reads 0xff; bit 4: a string read (`rep insb`) reads
/// 0xff bytes; bit 3: GETHZ gave a frequency (EBX not all ones).
fn backdoor_guest() -> Vec<u8> {
    let mut code = vec![0x31, 0xf6]; // xor esi, esi
    code.extend(backdoor(MAGIC, 0xffff_ffff, 10));
    code.extend(set_bit_if(&[(EAX, 6), (EBX, MAGIC), (ECX, 2)], 1));
    code.extend(backdoor(0x1234_5678, 0x55, 10));
    code.extend(set_bit_if(&[(EAX, 0xffff_ffff), (EBX, 0x55)], 2));
    code.extend(backdoor(MAGIC, 0, 10));
    code.extend_from_slice(&[0xb8, 0, 0, 0, 0, 0xec]); // mov eax, 0; in al, dx
    code.extend(set_bit_if(&[(EAX, 0xff)], 4));
    // rep insb, four bytes to 0x9000: no call, an unclaimed port's bytes.
    code.extend_from_slice(&[0xbf, 0x00, 0x90, 0, 0, 0xb9, 4, 0, 0, 0, 0xfc]); // mov edi, 0x9000; mov ecx, 4; cld
    code.extend_from_slice(&[0xb8]);
    code.extend_from_slice(&MAGIC.to_le_bytes()); // mov eax, magic
    code.extend_from_slice(&[0xf3, 0x6c]); // rep insb
    code.extend_from_slice(&[0x81, 0x3d, 0x00, 0x90, 0, 0, 0xff, 0xff, 0xff, 0xff]); // cmp dword [0x9000], -1
    code.extend_from_slice(&[0x75, 0x03, 0x83, 0xce, 0x10]); // jne +3; or esi, 16
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
    assert_eq!(out.code(), (0x1f << 1) | 1, "{out:#?}");
    // GETVERSION twice and GETHZ answered; the wrong magic, and the byte read, not.
    assert!(out.stderr.contains("vCPU 0: vmware: calls=3 unsupported=2 steal_enabled=0"), "{out:#?}");
    // Without the personality nothing answers: a port that reads all ones
    // (bits 1, 2 and 4 hold anywhere, bits 0 and 3 only with the backdoor).
    let out = pvrun_kernel(&k, &["--personality", "kvm", "--no-hypercall-probe"]);
    assert_eq!(out.code(), (0x16 << 1) | 1, "{out:#?}");
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
