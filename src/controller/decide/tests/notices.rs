//! What a pass tells the notifications' receivers (`controller::notices`), read from what the
//! pass changed: each thing once, however many passes follow.

use super::*;
use crate::notify::message::{Kind, Notice};

/// A pass, and what it tells.
fn told(w: &mut World) -> Vec<Notice> {
    let plan: Plan = serde_json::from_value(w.plan.clone()).unwrap();
    let decision = w.decide();
    w.apply(&decision);
    crate::controller::notices::of(&plan, &decision, &w.now)
}

/// Passes until nothing more happens, with every notice told on the way.
fn told_settling(w: &mut World) -> Vec<Notice> {
    (0..8).flat_map(|_| told(w)).collect()
}

fn kinds(notices: &[Notice]) -> Vec<(Kind, Option<String>)> {
    notices.iter().map(|n| (n.kind, n.node.clone())).collect()
}

#[test]
fn a_rollout_tells_its_start_each_node_and_its_end_once() {
    let mut w = World::new(spec()).nodes(&["a", "b"]);
    let first = told_settling(&mut w);
    assert_eq!(
        kinds(&first),
        [
            (Kind::PlanStarted, None),
            (Kind::NodeStarted, Some("a".into()))
        ],
        "{first:?}"
    );
    assert!(
        first[0].message.contains("v1.30.4-k3s1"),
        "{:?}",
        first[0].message
    );
    assert!(
        first[0].message.contains("on 2 node(s)"),
        "{:?}",
        first[0].message
    );
    w.finish_job("a", true, "2026-11-23T09:55:00Z");
    let next = told_settling(&mut w);
    assert_eq!(
        kinds(&next),
        [
            (Kind::NodeDone, Some("a".into())),
            (Kind::NodeStarted, Some("b".into()))
        ],
        "a second node does not start the rollout again: {next:?}"
    );
    w.finish_job("b", true, "2026-11-23T09:56:00Z");
    let end = told_settling(&mut w);
    assert_eq!(
        kinds(&end),
        [
            (Kind::NodeDone, Some("b".into())),
            (Kind::PlanComplete, None)
        ],
        "{end:?}"
    );
    assert!(
        end[1].message.contains("2 of 2 node(s) done"),
        "{:?}",
        end[1].message
    );
    assert!(told_settling(&mut w).is_empty(), "nothing twice");

    // A new version is a new rollout.
    w.plan["spec"]["version"] = json!("v1.30.5+k3s1");
    let again = told_settling(&mut w);
    assert_eq!(again[0].kind, Kind::PlanStarted, "{again:?}");
    assert_eq!(
        again[0].version.as_deref(),
        Some("v1.30.5-k3s1"),
        "as latestVersion"
    );
}

#[test]
fn a_failed_node_and_the_stalled_plan_are_told_once() {
    let mut w = World::new(spec()).nodes(&["a", "b"]);
    told_settling(&mut w);
    w.finish_job("a", false, "2026-11-23T09:55:00Z");
    let failed = told_settling(&mut w);
    assert_eq!(
        kinds(&failed),
        [
            (Kind::NodeFailed, Some("a".into())),
            (Kind::PlanStalled, None)
        ],
        "{failed:?}"
    );
    assert_eq!(failed[0].reason.as_deref(), Some("Failed"));
    assert!(
        failed[1].message.contains("(JobFailed)"),
        "{:?}",
        failed[1].message
    );
    assert!(told_settling(&mut w).is_empty(), "told once");
}

#[test]
fn a_held_node_is_told() {
    let mut w = World::new(spec()).nodes(&["a"]);
    // The node runs a newer version than the Plan's: a downgrade, held.
    w.node_mut("a")["status"]["nodeInfo"]["kubeletVersion"] = json!("v1.31.1+k3s1");
    let held = told_settling(&mut w);
    assert!(
        held.iter()
            .any(|n| n.kind == Kind::NodeHeld && n.node.as_deref() == Some("a")),
        "{held:?}"
    );
    assert!(
        told_settling(&mut w)
            .iter()
            .all(|n| n.kind != Kind::NodeHeld)
    );
}

#[test]
fn a_first_wave_done_tells_that_the_rest_awaits_approval() {
    let mut spec = spec();
    spec["canary"] = json!({"nodes": 1});
    let mut w = World::new(spec).nodes(&["a", "b"]);
    told_settling(&mut w);
    w.finish_job("a", true, "2026-11-23T09:55:00Z");
    let held = told_settling(&mut w);
    assert_eq!(
        kinds(&held),
        [
            (Kind::NodeDone, Some("a".into())),
            (Kind::AwaitingApproval, None)
        ],
        "{held:?}"
    );
    assert!(
        held[1].message.contains("upgrade.cattle.io/approve"),
        "{:?}",
        held[1].message
    );
    assert!(told_settling(&mut w).is_empty(), "told once");
}
