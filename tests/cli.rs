//! The binary's offline commands (`crd`, `check`, `completion`) and the exit status of every
//! command that reads files or a cluster.

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
    // An unread file may hold anything: 3, not the 1 of an invalid Plan.
    assert_eq!(output.status.code(), Some(3), "{stdout}");
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

/// Starts `run` with the given environment, waits for it to listen, stops it with SIGTERM and
/// returns its log.
fn run_with_env(env: &[(&str, &str)]) -> String {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .arg("run")
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        log.push_str(&line);
        if line.contains("listening on https://") {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
        }
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{log}");
    log
}

#[test]
fn environment_twins_configure_run_like_the_go_controllers_variables() {
    let base = [
        ("SYSTEM_UPGRADE_WEBHOOK_ONLY", "true"),
        ("SYSTEM_UPGRADE_LISTEN", "127.0.0.1:0"),
    ];
    let quiet = run_with_env(&[
        base[0],
        base[1],
        ("SYSTEM_UPGRADE_CONTROLLER_DEBUG", "false"),
    ]);
    assert!(quiet.contains("listening on https://127.0.0.1:"), "{quiet}");
    assert!(!quiet.contains("DEBUG"), "{quiet}");
    assert!(quiet.contains("SIGTERM received"), "{quiet}");
    let debug = run_with_env(&[
        base[0],
        base[1],
        ("SYSTEM_UPGRADE_CONTROLLER_DEBUG", "true"),
        ("SYSTEM_UPGRADE_LOG_FORMAT", "json"),
    ]);
    assert!(debug.lines().all(|l| l.starts_with('{')), "{debug}");
    assert!(debug.contains("\"level\":\"DEBUG\""), "{debug}");
    // Go's strconv.ParseBool spellings, as the Go controller's manifests may carry them.
    for (value, on) in [
        ("1", true),
        ("T", true),
        ("TRUE", true),
        ("0", false),
        ("F", false),
    ] {
        let log = run_with_env(&[
            ("SYSTEM_UPGRADE_WEBHOOK_ONLY", "1"),
            base[1],
            ("SYSTEM_UPGRADE_CONTROLLER_DEBUG", value),
        ]);
        assert_eq!(log.contains("DEBUG"), on, "{value}: {log}");
    }
}

/// As with the Go controller, a `SYSTEM_UPGRADE_*` or `CATTLE_ELECTION_*` variable that is set
/// but empty means "use the default", and a polling interval of 1m or less means 15m.
#[test]
fn empty_settings_take_their_defaults() {
    use std::io::{BufRead, BufReader};
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--webhook-only",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env_remove("RUST_LOG")
        .env("SYSTEM_UPGRADE_CONTROLLER_DEBUG", "t")
        .env("SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT", "")
        .env("SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS", "")
        .env("SYSTEM_UPGRADE_JOB_IMAGE_PULL_POLICY", "")
        .env("SYSTEM_UPGRADE_JOB_PRIVILEGED", "")
        .env("SYSTEM_UPGRADE_CONTROLLER_LEADER_ELECT", "")
        .env("CATTLE_ELECTION_LEASE_DURATION", "")
        .env("SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL", "1m")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("listening on") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    for expected in [
        "job_backoff_limit: 2,",
        "job_active_deadline_seconds: 600,",
        "job_image_pull_policy: \"IfNotPresent\"",
        "job_privileged: true,",
        "leader_elect: false,",
        "leader_election_lease_duration: 45s,",
        "plan_polling_interval: PollingInterval { configured: 60s, effective: 900s }",
        "not longer than 1m; using the default",
        "listening on",
    ] {
        assert!(log.contains(expected), "{expected:?} not in:\n{log}");
    }
}

#[test]
fn version_names_the_release_and_the_commit() {
    let output = Command::new(BIN).arg("--version").output().unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let prefix = format!(
        "system-upgrade-controller {} (commit ",
        env!("CARGO_PKG_VERSION")
    );
    assert!(printed.starts_with(&prefix), "{printed}");
    // Built from a git checkout (as the tests always are), the commit is HEAD's.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    if head.status.success() {
        let head = String::from_utf8(head.stdout).unwrap();
        assert!(
            printed[prefix.len()..].starts_with(head.trim()),
            "{printed} does not name HEAD {head}"
        );
    }
}

const VALID: &str = "apiVersion: upgrade.cattle.io/v1\nkind: Plan\nmetadata: {name: good}\n\
spec: {version: v1.30.4+k3s1, concurrency: 1, nodeSelector: {}, upgrade: {image: rancher/k3s-upgrade}}\n";
const INVALID: &str = "apiVersion: upgrade.cattle.io/v1\nkind: Plan\nmetadata: {name: bad}\n\
spec: {version: v1.30.4+k3s1, concurrency: 0, nodeSelector: {}, upgrade: {image: rancher/k3s-upgrade}}\n";

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(BIN).args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_reads_directories_and_their_subdirectories_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), VALID).unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    std::fs::create_dir(dir.path().join("more")).unwrap();
    std::fs::write(dir.path().join("more/b.yml"), INVALID).unwrap();
    let top = dir.path().display().to_string();
    let (code, stdout, _) = run(&["check", "-f", &top]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.ends_with("1 Plan(s) checked: all valid\n"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&["check", "-R", "-f", &top]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(
        stdout.contains("more/b.yml: document 1: Plan \"bad\": error: spec.concurrency"),
        "{stdout}"
    );
    let empty = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run(&["check", "-f", &empty.path().display().to_string()]);
    assert_eq!(code, Some(3), "{stdout}");
    assert!(
        stdout.contains("cannot read: no .yaml, .yml or .json file in directory"),
        "{stdout}"
    );
}

#[test]
fn check_reports_as_json_or_yaml_for_scripts() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plans.yaml");
    std::fs::write(&file, format!("{VALID}---\n{INVALID}")).unwrap();
    let file = file.display().to_string();
    let (code, stdout, _) = run(&["check", "-o", "json", "-f", &file]);
    assert_eq!(code, Some(1), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["plans"], 2);
    assert_eq!(report["unreadable"], false);
    let documents = &report["files"][0]["documents"];
    assert_eq!(documents[0]["name"], "good");
    assert_eq!(documents[0]["valid"], true);
    assert_eq!(documents[1]["valid"], false);
    assert!(
        documents[1]["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("spec.concurrency"),
        "{report}"
    );
    let (code, stdout, _) = run(&["check", "-o", "yaml", "-f", &file]);
    assert_eq!(code, Some(1));
    let yaml = system_upgrade_controller::yaml::documents(&stdout).unwrap();
    assert_eq!(yaml[0], report, "the same report");
}

#[test]
fn exit_statuses_tell_invalid_unreadable_misuse_and_cluster_apart() {
    let dir = tempfile::tempdir().unwrap();
    let invalid = dir.path().join("bad.yaml");
    std::fs::write(&invalid, INVALID).unwrap();
    let invalid = invalid.display().to_string();
    assert_eq!(run(&["check", "-f", &invalid]).0, Some(1));
    assert_eq!(run(&["check", "-f", "/nonexistent.yaml"]).0, Some(3));
    assert_eq!(run(&["check", "--bogus"]).0, Some(2));
    assert_eq!(run(&["preview", "--bogus"]).0, Some(2));
    // A kubeconfig whose API server does not answer (nothing listens on port 1).
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n\
         users: [{name: u, user: {token: t}}]\ncontexts: [{name: here, context: {cluster: c, user: u}}]\n\
         current-context: here\n",
    )
    .unwrap();
    let kubeconfig = kubeconfig.display().to_string();
    let (code, _, stderr) = run(&["preview", "--kubeconfig", &kubeconfig, "-f", &invalid]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("listing nodes"), "{stderr}");
    let (code, _, stderr) = run(&[
        "preview",
        "--kubeconfig",
        &kubeconfig,
        "-f",
        "/nonexistent.yaml",
    ]);
    assert_eq!(code, Some(3), "{stderr}");
    let (code, _, stderr) = run(&[
        "preview",
        "--kubeconfig",
        &kubeconfig,
        "--context",
        "elsewhere",
        "-f",
        &invalid,
    ]);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(stderr.contains("elsewhere"), "{stderr}");
    let (code, _, stderr) = run(&["switch-back-check", "--kubeconfig", &kubeconfig]);
    assert_eq!(code, Some(4), "{stderr}");
}

#[test]
fn completion_scripts_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let (code, stdout, stderr) = run(&["completion", shell]);
        assert_eq!(code, Some(0), "{shell}: {stderr}");
        assert!(
            stdout.contains("check") && stdout.contains("preview"),
            "{shell}"
        );
    }
    assert_eq!(run(&["completion", "tcsh"]).0, Some(2));
}
