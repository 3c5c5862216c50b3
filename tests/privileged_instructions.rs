//! pvkernel touches privileged state only through the `paravirt` API: raw `cli`,
//! `sti`, `hlt`, `wrmsr`, `rdmsr`, `mov` to/from `cr3`, `invlpg`, `lgdt`, `lidt` and
//! `iretq` may appear only in pvkernel's boot code (`src/boot/`) and in `paravirt`'s
//! backends (`src/backends/`). This scans the asm text of every other source file.

use std::path::{Path, PathBuf};

const FORBIDDEN: &[&str] = &["cli", "sti", "hlt", "wrmsr", "rdmsr", "invlpg", "lgdt", "lidt", "iretq"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("readable source dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The contents of every string literal (normal and raw), with `//` comments of the
/// Rust code and `/* */` comments inside the strings removed.
fn string_literals(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'\'' => {
                // A char literal like '"' must not open a string; lifetimes pass through.
                if b.get(i + 2) == Some(&b'\'') {
                    i += 3;
                } else if b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'') {
                    i += 4;
                } else {
                    i += 1;
                }
            }
            b'r' if b.get(i + 1) == Some(&b'#')
                || (b.get(i + 1) == Some(&b'"') && (i == 0 || !b[i - 1].is_ascii_alphanumeric())) =>
            {
                let hashes = b[i + 1..].iter().take_while(|&&c| c == b'#').count();
                let open = i + 1 + hashes;
                if b.get(open) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                let body_start = open + 1;
                let end = src[body_start..].find(&close).map_or(b.len(), |n| body_start + n);
                out.push(src[body_start..end].to_string());
                i = end + close.len();
            }
            b'"' => {
                let mut j = i + 1;
                let mut s = String::new();
                while j < b.len() && b[j] != b'"' {
                    if b[j] == b'\\' {
                        j += 1;
                    }
                    if j < b.len() {
                        s.push(b[j] as char);
                    }
                    j += 1;
                }
                out.push(s);
                i = j + 1;
            }
            _ => i += 1,
        }
    }
    out.into_iter().map(strip_block_comments).collect()
}

fn strip_block_comments(s: String) -> String {
    let mut out = String::new();
    let mut rest = s.as_str();
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..].find("*/").map_or("", |e| &rest[start + e + 2..]);
    }
    out.push_str(rest);
    out
}

/// Forbidden instructions in one file's asm text, as "mnemonic in `line`".
fn violations(src: &str) -> Vec<String> {
    let mut found = Vec::new();
    for lit in string_literals(src) {
        for stmt in lit.split(['\n', ';']) {
            let words: Vec<&str> = stmt
                .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .filter(|w| !w.is_empty())
                .collect();
            let Some(first) =
                words.iter().position(|w| !w.ends_with(':') && !w.chars().all(|c| c.is_ascii_digit()))
            else {
                continue;
            };
            let mnemonic = words[first].to_ascii_lowercase();
            if FORBIDDEN.contains(&mnemonic.as_str())
                || (mnemonic == "mov" && words[first..].iter().any(|w| w.eq_ignore_ascii_case("cr3")))
            {
                found.push(format!("{mnemonic} in `{}`", stmt.trim()));
            }
        }
    }
    found
}

fn scan(root: &Path, allowed: &str) -> (Vec<String>, Vec<String>) {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(!files.is_empty(), "no sources under {}", root.display());
    let (mut bad, mut allowed_hits) = (Vec::new(), Vec::new());
    for f in files {
        let src = std::fs::read_to_string(&f).expect("readable source");
        let v = violations(&src);
        let rel = f.strip_prefix(root).unwrap_or(&f).to_string_lossy().to_string();
        for hit in v {
            if rel.starts_with(allowed) {
                allowed_hits.push(format!("{rel}: {hit}"));
            } else {
                bad.push(format!("{rel}: {hit}"));
            }
        }
    }
    (bad, allowed_hits)
}

#[test]
fn pvkernel_uses_only_the_api_outside_boot() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/pvkernel/src");
    let (bad, boot_hits) = scan(&root, "boot/");
    assert!(bad.is_empty(), "raw privileged instructions outside boot/:\n{}", bad.join("\n"));
    // The scanner must see the boot code's own wrmsr and mov to cr3, or it is blind.
    assert!(boot_hits.iter().any(|h| h.contains("wrmsr")), "scanner missed boot's wrmsr: {boot_hits:?}");
    assert!(boot_hits.iter().any(|h| h.contains("cr3")), "scanner missed boot's cr3: {boot_hits:?}");
}

#[test]
fn paravirt_keeps_instructions_in_its_backends() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/paravirt/src");
    let (bad, backend_hits) = scan(&root, "backends/");
    assert!(bad.is_empty(), "raw privileged instructions outside backends/:\n{}", bad.join("\n"));
    assert!(backend_hits.iter().any(|h| h.starts_with("backends/native/ops.rs: cli")), "{backend_hits:?}");
}

#[test]
fn the_scanner_sees_each_form() {
    let src = r##"
        // a comment about cli is fine
        asm!("cli", options(nomem));
        asm!("mov {0}, cr3", out(reg) _);
        global_asm!(r#"
            2:  lgdt [rdi]    /* hlt in a comment is fine */
            mov cr3, rax
        "#);
        let s = "pushfq; pop rax; sti";
    "##;
    let v = violations(src);
    let names: Vec<&str> = v.iter().map(|s| s.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["cli", "mov", "lgdt", "mov", "sti"], "{v:?}");
}

/// Every op of the API is exercised by pvkernel (its boot path or its suite):
/// the kernel's sources name each `group::op`.
#[test]
fn pvkernel_uses_every_op() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ops_src = std::fs::read_to_string(root.join("crates/paravirt/src/ops/mod.rs")).expect("ops/mod.rs");
    let names: Vec<&str> = ops_src
        .lines()
        .filter_map(|l| l.split_once("= \"")?.1.split_once('"').map(|(n, _)| n))
        .filter(|n| n.contains('.'))
        .collect();
    assert!(names.len() >= 45, "parsed only {} op names", names.len());
    let mut files = Vec::new();
    rust_files(&root.join("crates/pvkernel/src"), &mut files);
    let kernel: String = files.iter().map(|f| std::fs::read_to_string(f).expect("source")).collect();
    let used = |path: &str| {
        kernel.match_indices(path).any(|(i, _)| {
            let next = kernel[i + path.len()..].chars().next().unwrap_or(' ');
            !(next.is_ascii_alphanumeric() || next == '_')
        })
    };
    let unused: Vec<&&str> = names.iter().filter(|n| !used(&n.replace('.', "::"))).collect();
    assert!(unused.is_empty(), "ops pvkernel never calls: {unused:?}");
}
