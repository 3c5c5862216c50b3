//! Building what the lab runs: the kernel (for `x86_64-unknown-none`) and the
//! `pvrun` VMM. Each is built once per process, by a nested `cargo` with its own
//! target directory so it never waits on the caller's build lock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::LabError;

/// The kernel's Rust target.
pub const KERNEL_TARGET: &str = "x86_64-unknown-none";

/// Repository root (where this crate's manifest is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir(sub: &str) -> PathBuf {
    let base =
        std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    base.join(sub)
}

fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut c = Command::new(cargo);
    // Flags meant for the host build must not leak into a nested one.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR"] {
        c.env_remove(var);
    }
    c
}

fn run_build(mut cmd: Command, what: &str) -> Result<(), LabError> {
    let out = cmd.output().map_err(|e| LabError::Build(format!("{what}: cannot run cargo: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first_error =
        stderr.lines().find(|l| l.starts_with("error")).unwrap_or("cargo failed without an error line");
    // Keep the whole output for the curious; report one line.
    let log = target_dir("pvlab").join(format!("build-{what}.log"));
    let _ = std::fs::create_dir_all(log.parent().unwrap_or(Path::new(".")));
    let _ = std::fs::write(&log, stderr.as_bytes());
    Err(LabError::Build(format!("{what}: {first_error} (full log: {})", log.display())))
}

/// Adds the kernel's rustup target if it is missing (`RUSTUP_AUTO_INSTALL=0`
/// machines will not do it for us).
pub fn ensure_kernel_target() -> Result<(), LabError> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| LabError::Build(format!("cannot run rustup to check for {KERNEL_TARGET}: {e}")))?;
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == KERNEL_TARGET) {
        return Ok(());
    }
    eprintln!("pvlab: adding rustup target {KERNEL_TARGET}");
    let add = Command::new("rustup")
        .args(["target", "add", KERNEL_TARGET])
        .output()
        .map_err(|e| LabError::Build(format!("cannot run rustup: {e}")))?;
    if !add.status.success() {
        let why = String::from_utf8_lossy(&add.stderr);
        let why = why.lines().find(|l| !l.trim().is_empty()).unwrap_or("unknown reason");
        return Err(LabError::Build(format!("cannot add rustup target {KERNEL_TARGET}: {why}")));
    }
    Ok(())
}

static KERNEL: OnceLock<Result<PathBuf, LabError>> = OnceLock::new();
static PVRUN: OnceLock<Result<PathBuf, LabError>> = OnceLock::new();
static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds pvkernel (release) and returns the ELF's path.
pub fn kernel() -> Result<PathBuf, LabError> {
    KERNEL
        .get_or_init(|| {
            let _serial = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            ensure_kernel_target()?;
            let dir = repo_root().join("crates/pvkernel");
            let tdir = target_dir("pvkernel");
            let mut cmd = cargo();
            cmd.current_dir(&dir)
                .args(["build", "--release", "--target", KERNEL_TARGET])
                .env("CARGO_TARGET_DIR", &tdir);
            run_build(cmd, "pvkernel")?;
            Ok(tdir.join(KERNEL_TARGET).join("release/pvkernel"))
        })
        .clone()
}

/// The `pvrun` binary: `$PVRUN` if set, else built (release) from this workspace.
pub fn pvrun() -> Result<PathBuf, LabError> {
    PVRUN
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("PVRUN") {
                return Ok(PathBuf::from(p));
            }
            let _serial = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let tdir = target_dir("tools");
            let mut cmd = cargo();
            cmd.current_dir(repo_root())
                .args(["build", "--release", "-p", "pvrun", "--bin", "pvrun"])
                .env("CARGO_TARGET_DIR", &tdir);
            run_build(cmd, "pvrun")?;
            Ok(tdir.join("release/pvrun"))
        })
        .clone()
}

/// Directory for logs and results.
pub fn output_dir() -> PathBuf {
    target_dir("pvlab")
}
