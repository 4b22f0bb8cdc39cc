//! `spec.canary`: the first wave runs alone, then the rest waits for approval or a soak.

use super::*;

/// NOW is 2026-11-23T10:00:00Z.
fn canary(canary: Value) -> Value {
    let mut plan = spec();
    plan["concurrency"] = json!(2);
    plan["canary"] = canary;
    plan
}

fn applying(d: &Decision) -> Vec<String> {
    d.status.applying.clone().unwrap_or_default()
}

fn wave(d: &Decision) -> crate::api::CanaryStatus {
    d.status.canary.clone().unwrap()
}

fn approve(w: &mut World) {
    w.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/approve": "true"});
}

#[test]
fn the_first_wave_runs_alone_then_waits_for_approval() {
    let mut w = World::new(canary(json!({"nodes": 1}))).nodes(&["a", "b", "c", "d"]);
    let d = w.settle();
    let first = applying(&d);
    assert_eq!(first.len(), 1, "one node goes first, not two: {first:?}");
    assert_eq!(wave(&d).phase, "Running");
    w.finish_job(&first[0], true, NOW);
    let d = w.settle();
    assert!(applying(&d).is_empty(), "nothing else starts");
    let (status, reason, message) = condition(&d, COMPLETE);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "AwaitingApproval")
    );
    assert!(
        message.contains(&format!("the first wave (node {}) is done", first[0]))
            && message.contains(
                "kubectl -n system-upgrade annotate plan p upgrade.cattle.io/approve=true"
            ),
        "{message}"
    );
    assert_eq!(wave(&d).phase, "AwaitingApproval");
    assert_eq!(wave(&d).nodes, Some(first.clone()));
    assert_eq!(d.tally.canary_held, 3);
    assert_eq!(d.tally.gated, 0);
    assert_eq!(condition(&d, STALLED).0, "False");
    assert_eq!(
        condition(&d, RECONCILING).0,
        "False",
        "at rest until a person acts"
    );
    // Held across passes, with no event each time.
    let again = w.step();
    assert!(created(&again).is_empty());
    assert!(!reasons(&again).contains(&"AwaitingApproval"));

    approve(&mut w);
    let d = w.step();
    assert!(reasons(&d).contains(&"CanaryLifted"), "{:?}", reasons(&d));
    assert_eq!(created(&d).len(), 2, "the rest start, two at a time");
    assert_eq!(wave(&d).phase, "Approved");
    assert!(
        w.plan["metadata"]["annotations"]
            .get("upgrade.cattle.io/approve")
            .is_none(),
        "removed once acted on"
    );

    // A new version opens a new first wave.
    for node in applying(&d) {
        w.finish_job(&node, true, NOW);
    }
    let d = w.settle();
    let last = applying(&d);
    for node in &last {
        w.finish_job(node, true, NOW);
    }
    assert_eq!(condition(&w.settle(), COMPLETE).0, "True");
    w.plan["spec"]["version"] = json!("v1.30.5+k3s1");
    let d = w.settle();
    assert_eq!(applying(&d).len(), 1);
    assert_eq!(wave(&d).phase, "Running");
}

#[test]
fn a_wave_by_selector_soaks_with_the_gates_open_before_the_rest_start() {
    let mut plan =
        canary(json!({"nodeSelector": {"matchLabels": {"canary": "yes"}}, "soakFor": "30m"}));
    // The object gates' outcome stands in for what the controller read of the cluster.
    plan["healthGates"] = json!({"allNodesReady": false});
    let mut w = World::new(plan).nodes(&["a", "b", "c"]);
    w.node_mut("c")["metadata"]["labels"]["canary"] = json!("yes");
    let d = w.settle();
    assert_eq!(applying(&d), ["c"], "only the selected node goes first");
    w.finish_job("c", true, NOW);
    let d = w.settle();
    assert!(applying(&d).is_empty());
    let (_, reason, message) = condition(&d, COMPLETE);
    assert_eq!(reason, "Soaking");
    assert!(
        message.contains("start at 2026-11-23T10:30:00Z"),
        "{message}"
    );
    assert!(d.requeue <= std::time::Duration::from_secs(600));
    assert_eq!(condition(&d, RECONCILING).0, "True");
    // A gate that closes for a while starts the soak again.
    w.now = "2026-11-23T10:20:00Z".into();
    w.object_gates = vec!["a CephCluster is not HEALTH_OK".into()];
    let d = w.step();
    assert_eq!(condition(&d, COMPLETE).1, "WaitingForHealth");
    assert_eq!(wave(&d).since.as_deref(), Some("2026-11-23T10:20:00Z"));
    w.object_gates.clear();
    w.now = "2026-11-23T10:40:00Z".into();
    let d = w.step();
    assert!(
        created(&d).is_empty(),
        "20 minutes of 30 with the gates open"
    );
    assert!(
        condition(&d, COMPLETE)
            .2
            .contains("start at 2026-11-23T10:50:00Z")
    );
    w.now = "2026-11-23T10:50:00Z".into();
    let d = w.step();
    assert_eq!(created(&d).len(), 2, "soaked: the rest start");
    assert_eq!(wave(&d).phase, "Soaked");
    assert!(reasons(&d).contains(&"CanaryLifted"));
}

#[test]
fn a_failed_node_of_the_wave_holds_the_rest_even_within_the_failure_budget() {
    let mut plan = canary(json!({"nodes": 1, "soakFor": "1m"}));
    plan["failureBudget"] = json!({"nodes": 2});
    let mut w = World::new(plan).nodes(&["a", "b", "c"]);
    let d = w.settle();
    let first = applying(&d)[0].clone();
    w.finish_job(&first, false, NOW);
    let d = w.settle();
    assert!(applying(&d).is_empty(), "{:?}", applying(&d));
    let (_, reason, message) = condition(&d, COMPLETE);
    assert_eq!(reason, "AwaitingApproval", "{message}");
    assert!(
        message.contains(&format!("node {first} of it failed")),
        "{message}"
    );
    // No soak lifts a failed wave.
    w.now = "2026-11-23T11:00:00Z".into();
    assert!(created(&w.step()).is_empty());
}

#[test]
fn a_selector_that_matches_no_node_holds_and_says_so() {
    let mut w = World::new(canary(
        json!({"nodeSelector": {"matchLabels": {"canary": "yes"}}}),
    ))
    .nodes(&["a", "b"]);
    let d = w.settle();
    assert!(applying(&d).is_empty());
    let (_, reason, message) = condition(&d, COMPLETE);
    assert_eq!(reason, "AwaitingApproval");
    assert!(
        message.contains("matches none of the 2 node(s)"),
        "{message}"
    );
    approve(&mut w);
    assert_eq!(created(&w.step()).len(), 2);
}

#[test]
fn a_plan_done_before_its_canary_was_added_holds_no_new_node() {
    let mut w = World::new(spec()).nodes(&["a"]);
    let d = w.settle();
    w.finish_job(&applying(&d)[0], true, NOW);
    assert_eq!(condition(&w.settle(), COMPLETE).0, "True");
    w.plan["spec"]["canary"] = json!({"nodes": 1});
    let d = w.step();
    assert_eq!(wave(&d).phase, "Done");
    // A node that joins later is not held for approval: the rollout was proven.
    w = w.nodes(&["b"]);
    assert_eq!(created(&w.step()), ["b"]);
}
