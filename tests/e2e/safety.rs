//! Safety in everyday operation, on the real API server: an edit of the drain settings never
//! ends a running upgrade; a pause holds automatic retries; a Job or pod the API server refuses
//! is reported, not left silent; a node the Go controller left cordoned without a Job is
//! returned after its upgrade.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::control::patch_plan;
use crate::scenario::{JobWatch, Scenario};
use crate::support::{Ctx, NAMESPACE, wait};

const MINUTE: Duration = Duration::from_secs(60);

/// The UIDs of a Plan's Jobs, by node.
fn job_uids(s: &Scenario, plan: &str) -> BTreeMap<String, String> {
    s.jobs(plan)
        .into_iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .map(|j| {
            let node = j.metadata.labels.unwrap()["upgrade.cattle.io/node"].clone();
            (node, j.metadata.uid.unwrap())
        })
        .collect()
}

fn phases(s: &Scenario, plan: &str) -> Vec<String> {
    s.plan_json(plan)["status"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["phase"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Two nodes past their drain, their upgrades running: the edit the docs recommend after a
/// failed drain (a longer timeout, `onTimeout: Skip`) and other drain settings change nothing
/// that runs; both upgrades finish, each node upgraded once.
pub fn editing_the_drain_never_ends_a_running_upgrade(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "dredit", 2);
    let watch = JobWatch::start(ctx, "dredit");
    let spec = json!({"concurrency": 2, "version": "v1.30.4+k3s1", "drain": {"timeout": "5m"},
        "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan(
        "dredit",
        spec.clone(),
        json!({"annotations": {"suc-test/duration": "25s"}}),
    );
    wait("both upgrades to run past their drain", MINUTE, || {
        let phases = phases(&s, "dredit");
        (phases.len() == 2 && phases.iter().all(|p| p == "Upgrading")).then_some(())
    });
    let before = job_uids(&s, "dredit");
    assert_eq!(before.len(), 2);
    patch_plan(
        ctx,
        "dredit",
        json!({"spec": {"drain": {"timeout": "30m", "onTimeout": "Skip", "force": true}}}),
    );
    s.wait_observed("dredit", MINUTE);
    assert_eq!(
        job_uids(&s, "dredit"),
        before,
        "a drain edit ended an upgrade"
    );
    s.wait_condition("dredit", "Complete", "True", "Complete", 2 * MINUTE);
    let per_node = watch.jobs_per_node();
    assert!(per_node.values().all(|n| *n == 1), "{per_node:?}");
    assert!(s.nodes.iter().all(|n| !s.unschedulable(n)));
}

/// A node whose Job failed, with automatic retries: a paused Plan, then the node's pause label,
/// hold its retry (status says so); once nothing holds it, it is retried.
pub fn a_pause_holds_automatic_retries(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "phold", 1);
    let node = s.nodes[0].clone();
    let watch = JobWatch::start(ctx, "phold");
    let spec = json!({"concurrency": 1, "version": "v1.30.4+k3s1", "cordon": true,
        "retry": {"limit": 20, "backoff": "5s"}, "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan("phold", spec, json!({"labels": {"suc-test/fail": "true"}}));
    s.wait_condition("phold", "Complete", "False", "Retrying", 2 * MINUTE);
    patch_plan(ctx, "phold", json!({"spec": {"paused": true}}));
    let message = s.wait_condition("phold", "Complete", "False", "Paused", MINUTE);
    assert!(message.contains("spec.paused is true"), "{message}");
    let jobs = watch.jobs_per_node()[&node];
    // Its retries are 5 s apart: twice that without one shows the pause holds it.
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        watch.jobs_per_node()[&node],
        jobs,
        "retried while the Plan was paused"
    );
    let entry = s.plan_json("phold")["status"]["nodes"][0]["message"].clone();
    assert!(
        entry
            .as_str()
            .unwrap()
            .contains("waits while spec.paused is true"),
        "{entry}"
    );
    // The node in repair: labelled paused, the Plan resumed.
    ctx.kubectl(&["label", "node", &node, "upgrade.cattle.io/pause=true"])
        .expect_ok();
    patch_plan(ctx, "phold", json!({"spec": {"paused": false}}));
    wait("the node's label to hold the retry", MINUTE, || {
        let (_, _, message) = s.condition("phold", "Complete")?;
        message
            .contains("upgrade.cattle.io/pause=true")
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(10));
    assert_eq!(
        watch.jobs_per_node()[&node],
        jobs,
        "retried while the node was labelled paused"
    );
    ctx.kubectl(&["label", "node", &node, "upgrade.cattle.io/pause-"])
        .expect_ok();
    wait("the retry once nothing holds the node", MINUTE, || {
        (watch.jobs_per_node()[&node] > jobs).then_some(())
    });
    s.cleanup();
}

/// An admission policy refusing a Plan's Jobs, then Pod Security admission refusing their
/// pods: each is said in the node's entry, `Complete=False/JobRefused` with the API server's
/// words, one warning event per message and the metric; once allowed, the rollout goes on.
pub fn refused_jobs_and_pods_are_reported_and_go_on_once_allowed(ctx: &Ctx) {
    let server = ctx.ensure_server();
    let s = Scenario::new(ctx, "refused", 1);
    let policy = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "suc-test-no-refused-jobs"},
        "spec": {"failurePolicy": "Fail",
            "matchConstraints": {"resourceRules": [{"apiGroups": ["batch"], "apiVersions": ["v1"],
                "operations": ["CREATE"], "resources": ["jobs"]}]},
            "validations": [{"expression": "!has(object.metadata.labels) || !('upgrade.cattle.io/plan' in object.metadata.labels) || object.metadata.labels['upgrade.cattle.io/plan'] != 'refused'",
                "message": "jobs of Plan refused are not allowed in this namespace"}]}});
    let binding = json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "suc-test-no-refused-jobs"},
        "spec": {"policyName": "suc-test-no-refused-jobs", "validationActions": ["Deny"]}});
    for object in [&policy, &binding] {
        ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()))
            .expect_ok();
    }
    // The policy takes a moment to be in force.
    std::thread::sleep(Duration::from_secs(2));
    // The bump below moves the scenario's agents past the test bed's servers (v1.30.4).
    let spec = json!({"concurrency": 1, "version": "v1.30.4+k3s1", "upgrade": {"image": "rancher/k3s-upgrade"},
        "versionSafety": {"serversFirst": false}});
    s.apply_plan("refused", spec.clone(), json!({}));
    let message = s.wait_condition("refused", "Complete", "False", "JobRefused", MINUTE);
    assert!(
        message.contains("jobs of Plan refused are not allowed in this namespace"),
        "{message}"
    );
    assert_eq!(s.condition("refused", "Stalled").unwrap().0, "True");
    let entry = s.plan_json("refused")["status"]["nodes"][0].clone();
    assert!(
        entry["message"]
            .as_str()
            .unwrap()
            .contains("the API server refused Job"),
        "{entry}"
    );
    let refused = "suc_plan_nodes{namespace=\"system-upgrade\",plan=\"refused\",state=\"refused\"}";
    wait("the metric", MINUTE, || {
        (server.sample(refused) == 1.0).then_some(())
    });
    // Tried again with a backoff: still one event for the one message.
    std::thread::sleep(Duration::from_secs(12));
    let told = s
        .plan_events("refused")
        .iter()
        .filter(|e| e.starts_with("JobRefused"))
        .count();
    assert_eq!(told, 1, "{:?}", s.plan_events("refused"));
    ctx.kubectl(&[
        "delete",
        "validatingadmissionpolicybinding,validatingadmissionpolicy",
        "suc-test-no-refused-jobs",
    ])
    .expect_ok();
    s.wait_condition("refused", "Complete", "True", "Complete", 2 * MINUTE);

    // Pod Security admission refuses the privileged pods: the Job exists, its pod never does.
    ctx.kubectl(&[
        "label",
        "namespace",
        NAMESPACE,
        "pod-security.kubernetes.io/enforce=baseline",
        "--overwrite",
    ])
    .expect_ok();
    let mut bumped = spec;
    bumped["version"] = json!("v1.30.5+k3s1");
    s.apply_plan("refused", bumped, json!({}));
    let message = s.wait_condition("refused", "Complete", "False", "JobRefused", MINUTE);
    let restore = || {
        ctx.kubectl(&[
            "label",
            "namespace",
            NAMESPACE,
            "pod-security.kubernetes.io/enforce=privileged",
            "--overwrite",
        ])
        .expect_ok();
    };
    if !message.contains("violates PodSecurity") {
        restore();
        panic!("{message}");
    }
    restore();
    s.wait_condition("refused", "Complete", "True", "Complete", 3 * MINUTE);
    wait("the metric to clear", MINUTE, || {
        (server.sample(refused) == 0.0).then_some(())
    });
}

/// As the Go controller leaves a cluster whose Job expired before the migration: the Plan's
/// status names the node in `applying`, the node is cordoned, no Job exists. This controller
/// runs the node and returns it, as the Go controller would have.
pub fn a_node_the_go_controller_left_cordoned_without_a_job_is_returned(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "strand", 1);
    let node = s.nodes[0].clone();
    // A Plan that selects no node yet.
    let spec = json!({"concurrency": 1, "version": "v1.30.4+k3s1", "cordon": true,
        "nodeSelector": {"matchLabels": {"suc-test/strand": "in"}},
        "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan("strand", spec, json!({}));
    s.wait_condition("strand", "Complete", "True", "Complete", MINUTE);
    // The Go controller's state, set while no controller runs.
    ctx.stop_server();
    ctx.kubectl(&["label", "node", &node, "suc-test/strand=in"])
        .expect_ok();
    ctx.kubectl(&["cordon", &node]).expect_ok();
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "plan",
        "strand",
        "--subresource=status",
        "--type=merge",
        "-p",
        &json!({"status": {"applying": [node], "nodes": null}}).to_string(),
    ])
    .expect_ok();
    ctx.ensure_server();
    wait("the node to be upgraded and returned", 2 * MINUTE, || {
        let labelled = s
            .node_label(&node, "plan.upgrade.cattle.io/strand")
            .is_some();
        (labelled && !s.unschedulable(&node)).then_some(())
    });
}
