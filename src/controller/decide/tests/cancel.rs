//! Cancelling a rollout (`upgrade.cattle.io/cancel`) and resuming it.

use super::*;

fn cancel(w: &mut World) {
    w.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/cancel": "true"});
}

fn cleared(decision: &Decision, key: &str) -> bool {
    decision
        .after
        .iter()
        .any(|c| matches!(c, Change::ClearAnnotation { key: k, .. } if *k == key))
}

#[test]
fn a_cancelled_rollout_stops_what_has_not_begun_and_lets_begun_upgrades_finish() {
    let mut spec = spec();
    spec["concurrency"] = json!(2);
    let mut w = World::new(spec).nodes(&["a", "b", "c", "d"]);
    // Cordons are under way and gates shut: no upgrade has begun until one is made to.
    w.drains_finish = false;
    let d = w.settle();
    assert_eq!(d.status.applying.as_ref().map(Vec::len), Some(2));
    let [first, second] = [
        &d.status.applying.as_ref().unwrap()[0],
        &d.status.applying.as_ref().unwrap()[1],
    ];
    let (first, second) = (first.clone(), second.clone());
    upgrade_runs(&mut w, &first);

    cancel(&mut w);
    let d = w.step();
    assert!(
        cleared(&d, "upgrade.cattle.io/cancel"),
        "the request is consumed"
    );
    let cancelled = d.status.cancelled.clone().expect("status.cancelled");
    assert_eq!(
        Some(cancelled.hash.as_str()),
        d.status.latest_hash.as_deref()
    );
    let second_job = job::job_name("p", &second, &cancelled.hash);
    let deletion = d
        .before
        .iter()
        .find_map(|c| match c {
            Change::DeleteJob {
                name, unless_begun, ..
            } if *name == second_job => Some(*unless_begun),
            _ => None,
        })
        .expect("the Job that has not begun goes");
    assert!(
        deletion,
        "deleted only if its pods still show it has not begun"
    );
    assert!(
        d.before
            .iter()
            .any(|c| matches!(c, Change::Release { node } if *node == second)),
        "its node is released"
    );
    assert!(
        deleted(&d).iter().all(|n| *n == second_job),
        "the begun upgrade goes on"
    );
    assert_eq!(d.status.applying, Some(vec![first.clone()]));
    let (status, reason, message) = condition(&d, COMPLETE);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Cancelled"));
    assert!(message.contains("0 of 4 node(s) done"), "{message}");
    assert!(
        message.contains(&format!("the upgrades that began on {first} finish")),
        "{message}"
    );
    assert!(
        message.contains("upgrade.cattle.io/resume=true"),
        "{message}"
    );
    assert!(reasons(&d).contains(&"Cancelled"));
    assert_eq!(condition(&d, STALLED).0, "False");

    w.finish_job(&first, true, NOW);
    let d = w.step();
    assert!(created(&d).is_empty(), "nothing new starts");
    let (_, reason, message) = condition(&d, COMPLETE);
    assert_eq!(reason, "Cancelled");
    assert!(
        message.contains(&format!("1 of 4 node(s) done (node {first})")),
        "{message}"
    );
    assert!(message.contains("not done: nodes "), "{message}");
    assert_eq!(condition(&d, RECONCILING).0, "False", "at rest, as asked");
    let d = w.step();
    assert!(created(&d).is_empty() && deleted(&d).is_empty());
    assert!(d.status.cancelled.is_some(), "it stays cancelled");

    // Resumed: the rest of the rollout starts again.
    w.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/resume": "true"});
    let d = w.step();
    assert!(cleared(&d, "upgrade.cattle.io/resume"));
    assert_eq!(d.status.cancelled, None);
    assert_eq!(created(&d).len(), 2);
    assert!(reasons(&d).contains(&"Resumed"));
}

#[test]
fn a_new_version_starts_a_cancelled_plan_again() {
    let mut w = World::new(spec()).nodes(&["a", "b"]);
    w.drains_finish = false;
    w.settle();
    cancel(&mut w);
    let d = w.step();
    assert!(d.status.cancelled.is_some());
    assert!(created(&w.step()).is_empty());
    w.plan["spec"]["version"] = json!("v1.30.5+k3s1");
    let d = w.step();
    assert_eq!(d.status.cancelled, None);
    assert_eq!(created(&d).len(), 1);
}

#[test]
fn cancelling_runs_the_owed_after_hook_when_asked() {
    let mut spec = spec();
    spec["hooks"] = json!({"after": {"image": "alpine:3.20"}, "afterWhenCancelled": true});
    let mut w = World::new(spec).nodes(&["a", "b"]);
    w.drains_finish = false;
    let d = w.settle();
    let running = d.status.applying.clone().unwrap();
    cancel(&mut w);
    let d = w.step();
    assert_eq!(
        created(&d),
        ["hook/after"],
        "nothing began on {running:?}, so the after hook runs at once"
    );
    w.finish_hook("after", true, NOW);
    let d = w.step();
    assert_eq!(condition(&d, COMPLETE).1, "Cancelled");
    assert!(created(&d).is_empty());
}

#[test]
fn a_failed_node_stays_failed_and_is_not_retried_while_the_rollout_is_cancelled() {
    let mut spec = spec();
    spec["retry"] = json!({"limit": 3, "backoff": "1m"});
    let mut w = World::new(spec).nodes(&["a", "b"]);
    let d = w.settle();
    let node = d.status.applying.clone().unwrap()[0].clone();
    w.finish_job(&node, false, NOW);
    w.step();
    cancel(&mut w);
    let d = w.step();
    assert_eq!(
        d.status.applying,
        Some(vec![node.clone()]),
        "it keeps its slot"
    );
    let e = entry(&d, &node);
    assert_eq!(e.phase, "Failed");
    assert!(
        e.message
            .unwrap()
            .contains("waits while the rollout is cancelled"),
        "no automatic retry"
    );
    assert!(deleted(&d).is_empty() && created(&d).is_empty());
    // An hour on: past its backoff, and its Job expired; still no new Job.
    w.now = "2026-11-23T11:00:00Z".into();
    w.step();
    let d = w.step();
    assert!(created(&d).is_empty(), "not after its backoff either");
    assert_eq!(d.status.applying, Some(vec![node.clone()]));
    assert_eq!(entry(&d, &node).phase, "Failed");
    assert!(
        w.node_mut(&node)["metadata"]["annotations"]
            .get("cordoned.upgrade.cattle.io/p")
            .is_some(),
        "a failure stays cordoned until someone acts"
    );
}
