//! `status.history` and the nodes' `upgrade.cattle.io/history`.

use super::*;

fn node_history(d: &Decision, node: &str) -> Option<Vec<Value>> {
    d.before.iter().find_map(|c| match c {
        Change::LabelNode {
            node: n,
            annotations,
            ..
        } if n == node => annotations
            .get("upgrade.cattle.io/history")
            .map(|h| serde_json::from_str(h).unwrap()),
        _ => None,
    })
}

#[test]
fn a_node_keeps_its_last_upgrades_failed_or_not_newest_first() {
    let mut w = World::new(spec()).nodes(&["a"]);
    // Nine upgrades by other Plans before: the history keeps ten.
    let older: Vec<Value> = (0..10)
        .map(
            |i| json!({"plan": "os", "version": format!("v{i}"), "result": "Succeeded", "at": NOW}),
        )
        .collect();
    w.node_mut("a")["metadata"]["annotations"] =
        json!({"upgrade.cattle.io/history": Value::from(older).to_string()});
    w.settle();
    w.finish_job("a", false, "2026-11-23T10:05:00Z");
    let d = w.step();
    let history = node_history(&d, "a").expect("the failure is recorded");
    assert_eq!(history.len(), 10, "bounded");
    assert_eq!(history[0]["plan"], "p");
    assert_eq!(history[0]["result"], "Failed");
    assert_eq!(history[0]["version"], "v1.30.4-k3s1", "as latestVersion");
    assert_eq!(history[0]["at"], "2026-11-23T10:05:00Z");
    assert_eq!(history[1]["version"], "v0", "the older ones follow");
    let labelled = d
        .before
        .iter()
        .any(|c| matches!(c, Change::LabelNode { labels, .. } if !labels.is_empty()));
    assert!(!labelled, "a failure labels nothing");
    // Told once per failed Job.
    assert!(node_history(&w.step(), "a").is_none());

    // Retried on request, it succeeds: the success goes first.
    w.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": "all"});
    w.now = "2026-11-23T10:10:00Z".into();
    w.settle();
    w.finish_job("a", true, "2026-11-23T10:09:00Z");
    let d = w.settle();
    let history: Vec<Value> = serde_json::from_str(
        w.node_mut("a")["metadata"]["annotations"]["upgrade.cattle.io/history"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(history[0]["result"], "Succeeded", "{history:?}");
    assert_eq!(history[1]["result"], "Failed");
    assert_eq!(history.len(), 10);
    assert_eq!(condition(&d, COMPLETE).0, "True");
}

#[test]
fn a_plan_keeps_its_last_rollouts() {
    let mut w = World::new(spec()).nodes(&["a", "b"]);
    let d = w.settle();
    let runs = d.status.history.clone().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(
        (runs[0].version.as_str(), runs[0].started.as_str()),
        ("v1.30.4-k3s1", NOW)
    );
    assert_eq!(
        (runs[0].done, runs[0].selected, runs[0].result.as_deref()),
        (0, 2, None)
    );
    for _ in 0..2 {
        let node = d.status.applying.clone().unwrap_or_default();
        let node = w.settle().status.applying.clone().unwrap_or(node);
        w.finish_job(&node[0], true, NOW);
    }
    w.now = "2026-11-23T10:30:00Z".into();
    let d = w.settle();
    assert_eq!(condition(&d, COMPLETE).0, "True");
    let run = &d.status.history.clone().unwrap()[0];
    assert_eq!((run.done, run.result.as_deref()), (2, Some("Complete")));
    assert_eq!(run.finished.as_deref(), Some("2026-11-23T10:30:00Z"));
    // Each new version is a run; five are kept.
    for patch in 5..=10 {
        w.plan["spec"]["version"] = json!(format!("v1.30.{patch}+k3s1"));
        w.step();
    }
    let runs = w.step().status.history.unwrap();
    assert_eq!(runs.len(), 5);
    assert_eq!(runs[0].version, "v1.30.10-k3s1");
    assert_eq!(runs[4].version, "v1.30.6-k3s1");
}
