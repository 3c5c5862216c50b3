//! The conformance kit (`docs/conformance-kit.md`): `pvlab run --vmm` boots
//! pvkernel through VMM command lines pvlab does not build in — the two QEMU
//! lines the doc shows — and reports them as matrix rows. Run through the
//! pvlab binary, as a hypervisor developer would; the JSON on stdout is
//! checked field by field.

use std::process::Command;

use serde_json::Value;

/// QEMU's microvm: PVH, a 16550 on COM1, the debug-exit port; two vCPUs.
const MICROVM: &str = "qemu-system-x86_64 -M microvm,rtc=on -accel tcg -cpu max -smp {cpus} -m {mem} \
    -nodefaults -no-user-config -display none -serial stdio \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 -kernel {kernel} -append {cmdline}";

/// QEMU's pc with its defaults and no debug-exit port: pvlab ends it once the
/// kernel's last line has come; three vCPUs, 192 MiB. Its defaults include
/// VMware's backdoor (`vmport`): the kernel takes the vmware backend.
const PC_NOGRAPHIC: &str = "qemu-system-x86_64 -M pc -accel tcg -cpu qemu64 -smp {cpus} -m {mem} \
    -nographic -no-reboot -kernel {kernel} -append {cmdline}";

fn have_qemu(test: &str) -> bool {
    let found =
        Command::new("qemu-system-x86_64").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        // Straight to stderr, past the harness's capture: a skip is never silent.
        use std::io::Write;
        let _ =
            writeln!(std::io::stderr().lock(), "SKIP: {test}: qemu-system-x86_64 absent (scripts/setup.sh)");
    }
    found
}

/// `pvlab --json run --vmm template ...`: its exit status and the document.
fn kit_run(template: &str, args: &[&str]) -> (Option<i32>, Value) {
    let kernel = pvlab::build::kernel().expect("kernel builds");
    let out = Command::new(env!("CARGO_BIN_EXE_pvlab"))
        .args(["--json", "run", "--kernel"])
        .arg(&kernel)
        .args(["--vmm", template, "--timeout", "120"])
        .args(args)
        .output()
        .expect("pvlab runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let doc = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code(), doc)
}

/// What every kit row must show: passed, the name and launcher given, every
/// test point ok, all CPUs online, the backend and the op lines.
fn check_row(doc: &Value, name: &str, template: &str, cpus: u64, mem: u64, backend: &str) -> Value {
    assert_eq!(doc["schema"], "pvlab-results");
    assert_eq!(doc["version"], 1);
    let rows = doc["platforms"].as_array().expect("platforms");
    assert_eq!(rows.len(), 1, "one row");
    let row = &rows[0];
    assert_eq!(row["name"], name);
    assert_eq!(row["verdict"], "passed", "{:#}", row["problems"]);
    assert_eq!(row["launcher"], format!("vmm {template}"));
    assert_eq!((row["cpus"].as_u64(), row["mem_mib"].as_u64()), (Some(cpus), Some(mem)));
    let boot = row["boot"].clone();
    let tests = boot["tests"].as_array().expect("tests");
    assert!(tests.len() >= 12, "only {} test points", tests.len());
    assert!(tests.iter().all(|t| t["ok"] == true), "a test point failed");
    assert_eq!(boot["cpus_online"].as_u64(), Some(cpus));
    assert_eq!(boot["platform_line"]["platform"], "tcg");
    assert_eq!(boot["platform_line"]["backend"], backend);
    assert_eq!(boot["ops"]["irq.disable"], "native-inline");
    assert!(boot["cmdline"].as_str().unwrap().contains(&format!("pvkernel.cpus={cpus}")));
    boot
}

#[test]
fn kit_boots_on_qemu_microvm_with_the_debug_exit_port() {
    if !have_qemu("kit_boots_on_qemu_microvm_with_the_debug_exit_port") {
        return;
    }
    let args = ["--name", "microvm", "--cpus", "2", "--mem", "256", "--expect-backend", "native"];
    let (status, doc) = kit_run(MICROVM, &args);
    let boot = check_row(&doc, "microvm", MICROVM, 2, 256, "native");
    assert_eq!(status, Some(0), "pvlab's status for a passed row");
    // The kernel ended the VMM itself: debug-exit value 0.
    assert_eq!(boot["exit_value"], 0);
    assert_eq!(boot["status"], 1);
}

#[test]
fn kit_boots_on_qemu_pc_without_the_debug_exit_port() {
    if !have_qemu("kit_boots_on_qemu_pc_without_the_debug_exit_port") {
        return;
    }
    let args = [
        "--name",
        "pc-nographic",
        "--cpus",
        "3",
        "--mem",
        "192",
        "--expect-platform",
        "tcg",
        "--expect-backend",
        "vmware",
    ];
    let (status, doc) = kit_run(PC_NOGRAPHIC, &args);
    let boot = check_row(&doc, "pc-nographic", PC_NOGRAPHIC, 3, 192, "vmware");
    // QEMU serves none of the time commands under TCG: the ops stay native.
    assert_eq!(boot["ops"]["time.tsc_khz"], "native");
    assert_eq!(status, Some(0), "pvlab's status for a passed row");
    // Nothing ends this QEMU but pvlab, once the kernel's last line came.
    assert_eq!(boot["status"], Value::Null);
    assert_eq!(boot["exit_value"], Value::Null);
    assert!(boot["diagnostics"]
        .as_array()
        .unwrap()
        .iter()
        .any(|d| d.as_str().unwrap().starts_with("frames")));
}

#[test]
fn kit_reports_a_wrong_backend_as_a_failed_row() {
    if !have_qemu("kit_reports_a_wrong_backend_as_a_failed_row") {
        return;
    }
    let (status, doc) = kit_run(MICROVM, &["--name", "want-kvm", "--expect-backend", "kvm"]);
    let row = &doc["platforms"][0];
    assert_eq!(row["verdict"], "failed");
    let problems = row["problems"].to_string();
    assert!(problems.contains("kvm") && problems.contains("native"), "{problems}");
    assert_ne!(status, Some(0), "a failed row fails pvlab");
}
