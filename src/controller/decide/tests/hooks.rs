//! `spec.hooks`: run once around a rollout, holding nodes and Complete as they should.

use super::*;
use crate::api::HookStatus;
use crate::controller::job::Hook;

const LATER: &str = "2026-11-23T10:05:00Z";

fn hooked(hooks: Value) -> Value {
    json!({"concurrency": 1, "version": "v1.30.4+k3s1", "nodeSelector": {},
        "upgrade": {"image": "rancher/k3s-upgrade"}, "hooks": hooks})
}

fn both() -> Value {
    json!({"before": {"image": "quay.io/ceph/ceph:v18", "command": ["ceph", "osd", "set", "noout"]},
        "after": {"image": "quay.io/ceph/ceph:v18", "command": ["ceph", "osd", "unset", "noout"]}})
}

fn hook(decision: &Decision, name: &str) -> HookStatus {
    decision
        .status
        .hooks
        .iter()
        .flatten()
        .find(|h| h.name == name)
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no entry for the {name} hook in {:?}",
                decision.status.hooks
            )
        })
}

#[test]
fn hooks_run_once_before_the_first_node_and_after_the_last() {
    let mut w = World::new(hooked(both())).nodes(&["a", "b"]);
    let d = w.step();
    assert_eq!(created(&d), ["hook/before"]);
    let (status, reason, message) = condition(&d, COMPLETE);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "RunningHook"));
    assert!(message.contains("the before hook runs first"), "{message}");
    assert_eq!(hook(&d, "before").phase, "Running");
    assert_eq!(condition(&d, RECONCILING).0, "True");
    let job = w.jobs[0].clone();
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["command"][3],
        "noout"
    );
    assert!(job["spec"]["template"]["spec"]["nodeName"].is_null());
    assert!(job["spec"]["template"]["spec"]["hostPID"].is_null());
    assert!(job["metadata"]["labels"]["upgrade.cattle.io/node"].is_null());
    assert_eq!(job["metadata"]["labels"]["upgrade.cattle.io/plan"], "p");

    // Nodes wait while it runs.
    assert!(created(&w.step()).is_empty());
    w.finish_hook("before", true, NOW);
    let d = w.step();
    assert_eq!(
        created(&d),
        ["a"],
        "the first node starts in the pass that sees it succeed"
    );
    assert_eq!(d.finished_hooks, [(Hook::Before, true)]);
    assert!(reasons(&d).contains(&"HookSucceeded"));
    assert_eq!(hook(&d, "before").phase, "Succeeded");
    assert_eq!(hook(&d, "after").phase, "Due");

    w.finish_job("a", true, NOW);
    let d = w.step();
    assert_eq!(created(&d), ["b"], "the before hook does not run again");
    w.finish_job("b", true, NOW);
    let d = w.step();
    assert_eq!(created(&d), ["hook/after"]);
    let (status, reason, _) = condition(&d, COMPLETE);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RunningHook"),
        "Complete waits for the after hook"
    );
    assert_eq!(d.status.progress.as_deref(), Some("2/2"));

    w.finish_hook("after", true, LATER);
    let d = w.step();
    assert_eq!(condition(&d, COMPLETE).0, "True");
    assert_eq!(hook(&d, "after").phase, "Succeeded");
    assert_eq!(d.finished_hooks, [(Hook::After, true)]);
    let d = w.step();
    assert!(d.after.is_empty(), "nothing runs again: {:?}", d.after);
    assert_eq!(condition(&d, COMPLETE).0, "True");
}

#[test]
fn an_after_hook_alone_runs_once_the_nodes_are_done() {
    let mut w = World::new(hooked(json!({"after": {"image": "alpine:3.20"}}))).nodes(&["a"]);
    let d = w.step();
    assert_eq!(
        created(&d),
        ["a"],
        "without a before hook the node starts at once"
    );
    assert_eq!(hook(&d, "after").phase, "Due");
    w.finish_job("a", true, NOW);
    let d = w.step();
    assert_eq!(created(&d), ["hook/after"]);
    w.finish_hook("after", true, NOW);
    assert_eq!(condition(&w.step(), COMPLETE).0, "True");
}

#[test]
fn a_failed_hook_holds_the_rollout_until_the_retry_annotation_names_it() {
    let mut w = World::new(hooked(both())).nodes(&["a"]);
    w.step();
    w.finish_hook("before", false, NOW);
    let d = w.step();
    assert!(created(&d).is_empty());
    let (status, reason, message) = condition(&d, COMPLETE);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "HookFailed"));
    assert!(
        message.contains("upgrade.cattle.io/retry=hook/before"),
        "{message}"
    );
    assert!(message.contains("BackoffLimitExceeded"), "{message}");
    assert_eq!(condition(&d, STALLED).0, "True");
    assert!(reasons(&d).contains(&"HookFailed"));
    assert_eq!(d.finished_hooks, [(Hook::Before, false)]);
    assert_eq!(hook(&d, "before").phase, "Failed");
    // Still held, told once.
    let d = w.step();
    assert!(created(&d).is_empty());
    assert!(!reasons(&d).contains(&"HookFailed"));

    w.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": "hook/before"});
    let d = w.step();
    let name = job::hook_job_name("p", Hook::Before, d.status.latest_hash.as_deref().unwrap());
    assert_eq!(deleted(&d), [name], "the failed Job goes first");
    assert_eq!(hook(&d, "before").phase, "Starting");
    assert!(
        d.after
            .iter()
            .any(|c| matches!(c, Change::ClearAnnotation { .. })),
        "the annotation is consumed"
    );
    assert!(!reasons(&d).contains(&"Retrying"), "{:?}", reasons(&d));
    let d = w.step();
    assert_eq!(created(&d), ["hook/before"]);
    assert_eq!(hook(&d, "before").phase, "Running");
    w.finish_hook("before", true, NOW);
    assert_eq!(created(&w.step()), ["a"]);
}

#[test]
fn spec_retry_retries_a_failed_hook_after_its_backoff() {
    let mut spec = hooked(json!({"before": {"image": "alpine:3.20"}}));
    spec["retry"] = json!({"limit": 1, "backoff": "1m"});
    let mut w = World::new(spec).nodes(&["a"]);
    w.step();
    w.finish_hook("before", false, NOW);
    let d = w.step();
    let (_, reason, message) = condition(&d, COMPLETE);
    assert_eq!(reason, "Retrying");
    assert!(
        message.contains("retry 1 of 1 at 2026-11-23T10:01:00Z"),
        "{message}"
    );
    assert!(d.requeue <= std::time::Duration::from_secs(60));
    assert_eq!(condition(&d, STALLED).0, "False");

    w.now = "2026-11-23T10:01:00Z".into();
    let d = w.step();
    assert_eq!(deleted(&d).len(), 1);
    assert_eq!(created(&w.step()), ["hook/before"]);
    w.finish_hook("before", false, "2026-11-23T10:01:30Z");
    let d = w.step();
    assert_eq!(
        condition(&d, COMPLETE).1,
        "HookFailed",
        "its retries are used up"
    );
    assert_eq!(hook(&d, "before").retries, Some(1));
}

#[test]
fn a_new_version_runs_the_before_hook_again_after_a_failure() {
    let mut w = World::new(hooked(both())).nodes(&["a"]);
    w.step();
    w.finish_hook("before", false, NOW);
    w.step();
    w.plan["spec"]["version"] = json!("v1.30.5+k3s1");
    let d = w.step();
    assert_eq!(
        created(&d),
        ["hook/before"],
        "the new hash's rollout starts with its hook"
    );
    assert_eq!(hook(&d, "before").hash, d.status.latest_hash);
}

#[test]
fn the_after_hook_runs_when_the_plan_is_paused_for_long_and_the_before_hook_on_resuming() {
    let mut hooks = both();
    hooks["afterWhenPausedFor"] = json!("1h");
    let mut w = World::new(hooked(hooks)).nodes(&["a", "b"]);
    w.step();
    w.finish_hook("before", true, NOW);
    assert_eq!(created(&w.step()), ["a"]);
    w.plan["spec"]["paused"] = json!(true);
    // Paused while a's upgrade runs: it finishes, and the hour counts from then.
    let d = w.step();
    assert_eq!(hook(&d, "after").phase, "Due");
    w.finish_job("a", true, NOW);
    let d = w.step();
    let after = hook(&d, "after");
    assert_eq!(after.phase, "Paused");
    assert!(
        after
            .message
            .as_deref()
            .unwrap()
            .contains("2026-11-23T11:00:00Z"),
        "{after:?}"
    );
    assert_eq!(condition(&d, COMPLETE).1, "Paused");
    w.now = "2026-11-23T10:30:00Z".into();
    assert!(created(&w.step()).is_empty());
    w.now = "2026-11-23T11:00:00Z".into();
    let d = w.step();
    assert_eq!(created(&d), ["hook/after"]);
    w.finish_hook("after", true, "2026-11-23T11:00:30Z");
    let d = w.step();
    assert_eq!(hook(&d, "after").phase, "Succeeded");
    assert!(created(&d).is_empty(), "b waits for the resume");

    // Resumed: the before hook runs again (its earlier Job goes first), then b.
    w.plan["spec"]["paused"] = json!(false);
    let d = w.step();
    assert_eq!(deleted(&d).len(), 1, "{:?}", d.before);
    assert_eq!(hook(&d, "before").phase, "Starting");
    assert!(created(&d).is_empty());
    assert_eq!(created(&w.step()), ["hook/before"]);
    w.finish_hook("before", true, "2026-11-23T11:05:00Z");
    assert_eq!(created(&w.step()), ["b"]);
}

#[test]
fn removing_the_hooks_stops_their_jobs_and_clears_their_status() {
    let mut w = World::new(hooked(both())).nodes(&["a"]);
    w.step();
    w.plan["spec"].as_object_mut().unwrap().remove("hooks");
    let d = w.step();
    assert_eq!(deleted(&d).len(), 1);
    assert_eq!(d.status.hooks, None);
    assert_eq!(created(&d), ["a"]);
}

fn finalizer_changes(decision: &Decision) -> Vec<bool> {
    decision
        .after
        .iter()
        .filter_map(|c| match c {
            Change::Finalizer { on } => Some(*on),
            _ => None,
        })
        .collect()
}

fn finalizers(w: &World) -> Value {
    w.plan["metadata"]["finalizers"].clone()
}

#[test]
fn deleting_a_plan_runs_its_after_hook_first_when_asked() {
    let mut hooks = both();
    hooks["afterWhenDeleted"] = json!(true);
    let mut w = World::new(hooked(hooks)).nodes(&["a", "b"]);
    let d = w.step();
    assert!(finalizer_changes(&d).is_empty(), "nothing owed yet");
    w.finish_hook("before", true, NOW);
    let d = w.step();
    assert_eq!(created(&d), ["a"]);
    assert_eq!(finalizer_changes(&d), [true], "the after hook is owed");
    assert_eq!(finalizers(&w), json!(["upgrade.cattle.io/after-hook"]));

    // Deleted while a upgrades: b never starts, a finishes, then the after hook runs.
    w.plan["metadata"]["deletionTimestamp"] = json!("2026-11-23T10:01:00Z");
    let d = w.step();
    assert!(created(&d).is_empty());
    assert!(finalizer_changes(&d).is_empty(), "kept while owed");
    let (_, reason, message) = condition(&d, COMPLETE);
    assert_eq!(reason, "Paused");
    assert!(
        message.starts_with("the Plan is being deleted"),
        "{message}"
    );
    w.finish_job("a", true, NOW);
    let d = w.step();
    assert_eq!(created(&d), ["hook/after"], "b does not start");
    let after = hook(&d, "after");
    assert_eq!(after.phase, "Running");
    assert!(after.message.unwrap().contains("being deleted"));
    w.finish_hook("after", true, LATER);
    let d = w.step();
    assert_eq!(finalizer_changes(&d), [false], "the Plan may go");
    assert_eq!(finalizers(&w), json!([]));
}

#[test]
fn without_after_when_deleted_no_finalizer_is_added() {
    let mut w = World::new(hooked(both())).nodes(&["a"]);
    w.step();
    w.finish_hook("before", true, NOW);
    let d = w.step();
    assert_eq!(created(&d), ["a"]);
    assert!(finalizer_changes(&d).is_empty());
    assert!(w.plan["metadata"].get("finalizers").is_none());
}

#[test]
fn a_failed_after_hook_runs_once_more_on_deletion_then_the_plan_goes_with_a_warning() {
    let mut hooks = json!({"after": {"image": "alpine:3.20"}, "afterWhenDeleted": true});
    hooks["after"]["command"] = json!(["false"]);
    let mut w = World::new(hooked(hooks)).nodes(&["a"]);
    w.step();
    w.finish_job("a", true, NOW);
    assert_eq!(created(&w.step()), ["hook/after"]);
    w.finish_hook("after", false, NOW);
    let d = w.step();
    assert_eq!(condition(&d, COMPLETE).1, "HookFailed");
    assert!(
        finalizer_changes(&d).is_empty(),
        "kept: the hook is still owed"
    );

    w.plan["metadata"]["deletionTimestamp"] = json!(LATER);
    w.now = LATER.into();
    let d = w.step();
    assert_eq!(
        deleted(&d).len(),
        1,
        "the failed Job goes, to run once more"
    );
    assert_eq!(created(&w.step()), ["hook/after"]);
    w.finish_hook("after", false, "2026-11-23T10:06:00Z");
    w.now = "2026-11-23T10:06:00Z".into();
    let d = w.step();
    assert_eq!(finalizer_changes(&d), [false]);
    let warning = d
        .notes
        .iter()
        .find(|n| n.message.contains("is deleted without its after hook"))
        .expect("a warning says the hook did not run");
    assert!(warning.warning);
}

#[test]
fn a_hook_job_to_replace_is_deleted_again_until_it_is_seen_going() {
    let mut w = World::new(hooked(both())).nodes(&["a"]);
    w.step();
    w.finish_hook("before", false, NOW);
    w.step();
    w.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": "hook/before"});
    // The deletion is decided but does not happen (a failed request): only the status is kept.
    let d = w.decide();
    assert_eq!(deleted(&d).len(), 1);
    w.plan["status"] = serde_json::to_value(&d.status).unwrap();
    w.plan["metadata"]["annotations"] = json!({});
    let d = w.decide();
    assert_eq!(hook(&d, "before").phase, "Starting");
    assert_eq!(deleted(&d).len(), 1, "asked again");
    assert!(created(&d).is_empty());
}
