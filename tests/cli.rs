//! The binary's offline commands: `crd` and `check`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code may panic.

use std::io::Write;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_system-upgrade-controller");

fn plans(kind: &str) -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/plans")
        .join(kind);
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    files.sort();
    files
}

#[test]
fn crd_prints_the_committed_crd() {
    let output = Command::new(BIN).arg("crd").output().unwrap();
    assert!(output.status.success());
    let committed =
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/crd.yaml"))
            .unwrap();
    assert_eq!(output.stdout, committed);
}

#[test]
fn check_accepts_valid_plans() {
    let files = plans("valid");
    let output = Command::new(BIN)
        .arg("check")
        .arg("-f")
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.ends_with(&format!("{} Plan(s) checked: all valid\n", files.len())),
        "{stdout}"
    );
}

#[test]
fn check_fails_on_each_invalid_plan_with_the_webhooks_message() {
    for file in plans("invalid") {
        let output = Command::new(BIN)
            .args(["check", "-f", &file])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{file}: {stdout}");
        let text = std::fs::read_to_string(&file).unwrap();
        for expected in text.lines().filter_map(|l| l.strip_prefix("# expect: ")) {
            assert!(
                stdout.contains(expected),
                "{file}: missing {expected:?} in {stdout}"
            );
        }
    }
}

#[test]
fn check_reads_standard_input_and_reports_missing_files() {
    let mut child = Command::new(BIN)
        .args(["check", "-f", "-", "/nonexistent/plan.yaml"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"apiVersion: upgrade.cattle.io/v1\nkind: Plan\nmetadata: {name: p}\nspec: {version: v1.2.3, nodeSelector: {}, upgrade: {image: x}}\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("-: document 1: Plan \"p\": valid"),
        "{stdout}"
    );
    assert!(
        stdout.contains("/nonexistent/plan.yaml: cannot read: "),
        "{stdout}"
    );
}

#[test]
fn bad_flags_fail_with_usage() {
    let output = Command::new(BIN)
        .args(["run", "--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--listen"));
}
