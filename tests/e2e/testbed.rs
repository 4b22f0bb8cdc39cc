//! The test bed itself: simulated nodes look like a K3s cluster, Job pods run and end as a test
//! decides, and a component that fails to start fails loudly.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{ListParams, PostParams};

use crate::support::{Ctx, repo, wait};

/// The cluster's own nodes (not those a scenario adds and may leave behind after a failure).
pub fn nodes_look_like_a_k3s_cluster_and_are_ready(ctx: &Ctx) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let list = ctx
        .block_on(nodes.list(&ListParams::default().labels("type=kwok,!suc-test/scenario")))
        .unwrap();
    assert!(list.items.len() >= 3, "{} nodes", list.items.len());
    let mut control_planes = 0;
    for node in &list.items {
        let name = node.metadata.name.clone().unwrap();
        let labels = node.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("kubernetes.io/hostname"), Some(&name));
        assert_eq!(
            labels.get("kubernetes.io/os").map(String::as_str),
            Some("linux")
        );
        assert!(matches!(
            labels.get("kubernetes.io/arch").map(String::as_str),
            Some("amd64" | "arm64")
        ));
        if labels
            .get("node-role.kubernetes.io/control-plane")
            .map(String::as_str)
            == Some("true")
        {
            control_planes += 1;
        }
        let spec = node.spec.clone().unwrap_or_default();
        assert!(
            spec.taints.unwrap_or_default().is_empty(),
            "{name} is tainted"
        );
        assert!(!spec.unschedulable.unwrap_or(false), "{name} is cordoned");
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "{name} is not Ready");
    }
    assert_eq!(control_planes, 1);
}

fn job(name: &str, node: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Job {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels, "annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "containers": [{"name": "upgrade", "image": "busybox"}],
                },
            },
        },
    }))
    .unwrap()
}

/// Waits for the Job to finish; returns whether it succeeded and, for a success, how long it ran
/// by its own status (start to completion, whole seconds).
fn finish(ctx: &Ctx, jobs: &Api<Job>, name: &str) -> (bool, Duration) {
    let succeeded = wait(
        &format!("Job {name} to finish"),
        Duration::from_secs(60),
        || {
            let job = ctx.block_on(jobs.get(name)).unwrap();
            let conditions = job.status.and_then(|s| s.conditions).unwrap_or_default();
            let done = |kind: &str| {
                conditions
                    .iter()
                    .any(|c| c.type_ == kind && c.status == "True")
            };
            if done("Complete") {
                Some(true)
            } else if done("Failed") {
                Some(false)
            } else {
                None
            }
        },
    );
    let status = ctx.block_on(jobs.get(name)).unwrap().status.unwrap();
    let ran = match (status.start_time, status.completion_time) {
        (Some(start), Some(end)) => Duration::from_secs(
            end.0
                .as_second()
                .saturating_sub(start.0.as_second())
                .unsigned_abs(),
        ),
        _ => Duration::ZERO,
    };
    (succeeded, ran)
}

pub fn job_pods_succeed_or_fail_as_the_test_decides(ctx: &Ctx) {
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), "default");
    for name in ["stage-succeed", "stage-fail", "stage-slow"] {
        let _ = ctx.block_on(jobs.delete(name, &kube::api::DeleteParams::background()));
    }
    wait("old test Jobs to go", Duration::from_secs(30), || {
        let list = ctx.block_on(jobs.list(&ListParams::default())).unwrap();
        (!list.items.iter().any(|j| {
            j.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .starts_with("stage-")
        }))
        .then_some(())
    });
    let create = |job: Job| {
        ctx.block_on(jobs.create(&PostParams::default(), &job))
            .unwrap()
    };
    create(job(
        "stage-succeed",
        "agent-1",
        serde_json::json!({}),
        serde_json::json!({}),
    ));
    create(job(
        "stage-fail",
        "agent-2",
        serde_json::json!({"suc-test/fail": "true"}),
        serde_json::json!({}),
    ));
    create(job(
        "stage-slow",
        "server-1",
        serde_json::json!({}),
        serde_json::json!({"suc-test/duration": "6s"}),
    ));

    let (succeeded, fast) = finish(ctx, &jobs, "stage-succeed");
    assert!(succeeded, "a Job pod succeeds by default");
    let (succeeded, _) = finish(ctx, &jobs, "stage-fail");
    assert!(!succeeded, "a pod labelled suc-test/fail=true fails");
    let failed = ctx.block_on(jobs.get("stage-fail")).unwrap();
    let reason = failed
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Failed")
        .unwrap()
        .reason;
    assert_eq!(reason.as_deref(), Some("BackoffLimitExceeded"));
    let (succeeded, slow) = finish(ctx, &jobs, "stage-slow");
    assert!(succeeded);
    // Compared with each other, not a wall-clock bound, so a busy machine cannot fail it.
    assert!(
        fast < slow,
        "the default (about 2s) is shorter than the annotated 6s: {fast:?} vs {slow:?}"
    );
    assert!(
        slow >= Duration::from_secs(6),
        "the annotation sets the duration: {slow:?}"
    );
    for name in ["stage-succeed", "stage-fail", "stage-slow"] {
        ctx.block_on(jobs.delete(name, &kube::api::DeleteParams::background()))
            .unwrap();
    }
}

pub fn a_component_that_fails_to_start_fails_loudly(ctx: &Ctx) {
    // A copy of the binary cache in which kube-apiserver cannot start.
    let real = Command::new("bash")
        .arg(repo("tests/testbin/build.sh"))
        .arg("control-plane")
        .output()
        .unwrap();
    assert!(real.status.success());
    let real = std::path::PathBuf::from(String::from_utf8(real.stdout).unwrap().trim());
    let cache = ctx.cluster.dir.join("broken-cache");
    let broken = cache.join(real.file_name().unwrap());
    std::fs::create_dir_all(&broken).unwrap();
    for entry in std::fs::read_dir(&real).unwrap() {
        let entry = entry.unwrap();
        let target = broken.join(entry.file_name());
        let _ = std::fs::remove_file(&target);
        if entry.file_name() == "kube-apiserver" {
            std::fs::write(
                &target,
                "#!/bin/sh\necho 'E1126 simulated: cannot bind to the secure port' >&2\nexit 1\n",
            )
            .unwrap();
            Command::new("chmod")
                .arg("+x")
                .arg(&target)
                .status()
                .unwrap();
        } else {
            std::os::unix::fs::symlink(entry.path(), &target).unwrap();
        }
    }
    let dir = ctx.cluster.dir.join("broken-cluster");
    let out = Command::new("bash")
        .arg(repo("tests/cluster/cluster.sh"))
        .args(["up", "--nodes", "1", "--dir"])
        .arg(&dir)
        .env("SUC_TESTBIN_CACHE", &cache)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the start must fail");
    assert!(
        stderr.contains("FAILED: kube-apiserver exited during start-up"),
        "{stderr}"
    );
    assert!(
        stderr.contains("E1126 simulated: cannot bind to the secure port"),
        "the log tail is shown: {stderr}"
    );
    // Nothing is left running.
    assert!(!dir.join("pids/etcd").exists(), "etcd was not stopped");
    let _ = std::fs::remove_dir_all(&cache);
    let _ = std::fs::remove_dir_all(&dir);
}
