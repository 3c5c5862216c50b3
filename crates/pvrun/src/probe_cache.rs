//! The hypercall probe's verdict, kept per host so that a launch does not pay
//! the probe's 100 ms watchdog: a small text file in the user's cache
//! directory, keyed by what decides the verdict — the host kernel's release,
//! the KVM API version, the host CPU and the KVM device. A key that differs,
//! a file that does not parse, or `--refresh-probe` makes pvrun probe again
//! and rewrite the file (atomically: a temporary file renamed over it). A
//! probe that failed (could not tell) is never kept.
//!
//! Where: `$PVRUN_CACHE_DIR`, else `$XDG_CACHE_HOME/pvrun`, else
//! `~/.cache/pvrun`; file `hypercall-probe`. Without any of them, nothing
//! is kept.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::probe::{HypercallInsn, HypercallProbe};

/// The file's first line: its format.
const MAGIC: &str = "pvrun hypercall probe v1";
/// The file's name in the cache directory.
pub const FILE_NAME: &str = "hypercall-probe";

/// The cache directory, if the environment names one.
pub fn dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("PVRUN_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("pvrun")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/pvrun")))
}

/// What the verdict depends on, as one line.
pub fn key(kvm_path: &Path, api_version: i32) -> String {
    // SAFETY: `uname` fills the struct it is given; a zeroed one is valid.
    let release = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) == 0 {
            std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
        } else {
            String::from("?")
        }
    };
    // The CPU as CPUID names it (cheaper here than /proc/cpuinfo: no syscalls).
    let cpuid = raw_cpuid::CpuId::new();
    let brand = cpuid.get_processor_brand_string();
    let brand = brand.as_ref().map_or("?", |b| b.as_str().trim());
    let (family, model, stepping) =
        cpuid.get_feature_info().map_or((0, 0, 0), |f| (f.family_id(), f.model_id(), f.stepping_id()));
    format!(
        "{release} | KVM API {api_version} | {brand} family {family} model {model} stepping {stepping} | {}",
        kvm_path.display()
    )
}

fn insn_name(insn: HypercallInsn) -> &'static str {
    match insn {
        HypercallInsn::Vmcall => "vmcall",
        HypercallInsn::Vmmcall => "vmmcall",
    }
}

fn insn_by_name(name: &str) -> Option<HypercallInsn> {
    match name {
        "vmcall" => Some(HypercallInsn::Vmcall),
        "vmmcall" => Some(HypercallInsn::Vmmcall),
        _ => None,
    }
}

/// The file's text for a verdict worth keeping.
pub fn format(key: &str, probe: &HypercallProbe) -> Option<String> {
    let verdict = match probe {
        HypercallProbe::Returns { insn, eax, elapsed } => {
            format!("returns {} {eax} {}", insn_name(*insn), elapsed.as_micros())
        }
        HypercallProbe::Hangs { insn, elapsed, stuck } => {
            format!("hangs {} {} {stuck}", insn_name(*insn), elapsed.as_micros())
        }
        HypercallProbe::Failed { .. } | HypercallProbe::Skipped | HypercallProbe::NotNeeded => return None,
    };
    Some(format!("{MAGIC}\nkey: {key}\nverdict: {verdict}\n"))
}

/// The verdict in `text` if it was written for `key`.
pub fn parse(text: &str, key: &str) -> Option<HypercallProbe> {
    let mut lines = text.lines();
    if lines.next()? != MAGIC || lines.next()?.strip_prefix("key: ")? != key {
        return None;
    }
    let verdict = lines.next()?.strip_prefix("verdict: ")?;
    let w: Vec<&str> = verdict.split(' ').collect();
    let micros = |s: &str| s.parse::<u64>().ok().map(Duration::from_micros);
    match w.as_slice() {
        ["returns", insn, eax, us] => Some(HypercallProbe::Returns {
            insn: insn_by_name(insn)?,
            eax: eax.parse().ok()?,
            elapsed: micros(us)?,
        }),
        ["hangs", insn, us, stuck] => Some(HypercallProbe::Hangs {
            insn: insn_by_name(insn)?,
            elapsed: micros(us)?,
            stuck: stuck.parse().ok()?,
        }),
        _ => None,
    }
}

/// The kept verdict for `key` in `dir`, if there is one.
pub fn load(dir: &Path, key: &str) -> Option<HypercallProbe> {
    // At most 4 KiB: a file that is not ours, or absurdly long, is not read further.
    let mut text = String::new();
    std::fs::File::open(dir.join(FILE_NAME)).ok()?.take(4096).read_to_string(&mut text).ok()?;
    (text.len() < 4096).then(|| parse(&text, key))?
}

/// Keeps `probe` for `key` in `dir` (quietly does nothing if it cannot).
pub fn store(dir: &Path, key: &str, probe: &HypercallProbe) {
    let Some(text) = format(key, probe) else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!("{FILE_NAME}.{}", std::process::id()));
    if std::fs::write(&tmp, text).is_ok() && std::fs::rename(&tmp, dir.join(FILE_NAME)).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_round_trip_and_other_keys_are_misses() {
        let hangs = HypercallProbe::Hangs {
            insn: HypercallInsn::Vmmcall,
            elapsed: Duration::from_micros(101_300),
            stuck: false,
        };
        let text = format("host A", &hangs).unwrap();
        assert_eq!(parse(&text, "host A"), Some(hangs));
        assert_eq!(parse(&text, "host B"), None, "another host, another verdict");
        let returns = HypercallProbe::Returns {
            insn: HypercallInsn::Vmcall,
            eax: 0,
            elapsed: Duration::from_micros(35),
        };
        assert_eq!(parse(&format("k", &returns).unwrap(), "k"), Some(returns));
        let failed = HypercallProbe::Failed { insn: HypercallInsn::Vmcall, reason: "x".into() };
        assert_eq!(format("k", &failed), None, "a probe that could not tell is not kept");
        for junk in ["", "pvrun hypercall probe v1\nkey: k\nverdict: hangs vmcall x false\n", "garbage\n"] {
            assert_eq!(parse(junk, "k"), None, "{junk:?}");
        }
    }

    #[test]
    fn the_file_is_written_whole_and_read_back() {
        let dir = std::env::temp_dir().join(format!("pvrun-probe-cache-{}", std::process::id()));
        let probe = HypercallProbe::Hangs {
            insn: HypercallInsn::Vmcall,
            elapsed: Duration::from_millis(100),
            stuck: true,
        };
        store(&dir, "key", &probe);
        assert_eq!(load(&dir, "key"), Some(probe));
        assert_eq!(load(&dir, "other"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
