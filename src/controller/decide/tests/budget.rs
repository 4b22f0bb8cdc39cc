//! `spec.failureBudget`: the rollout goes on without failed nodes, up to the budget.

use super::*;

fn applying(d: &Decision) -> Vec<String> {
    d.status.applying.clone().unwrap_or_default()
}

fn cordoned(w: &mut World, node: &str) -> bool {
    w.node_mut(node)["metadata"]["annotations"]
        .get("cordoned.upgrade.cattle.io/p")
        .is_some()
}

#[test]
fn a_budget_of_two_goes_on_past_two_failures_and_stops_at_the_third() {
    let mut plan = spec();
    plan["failureBudget"] = json!({"nodes": 2});
    let mut w = World::new(plan).nodes(&["a", "b", "c", "d"]);
    let mut failed = Vec::new();
    for round in 1..=2 {
        let d = w.settle();
        let node = applying(&d)[0].clone();
        w.finish_job(&node, false, NOW);
        let d = w.settle();
        failed.push(node.clone());
        let e = entry(&d, &node);
        assert_eq!(e.phase, "Failed");
        assert_eq!(e.given_up, Some(true));
        assert!(e.message.unwrap().contains(&format!(
            "the rollout goes on without it (failureBudget: {round} of 2)"
        )),);
        assert!(!applying(&d).contains(&node), "it holds no slot");
        assert_eq!(applying(&d).len(), 1, "the next node started");
        assert!(
            cordoned(&mut w, &node),
            "kept cordoned (failedNodes: Cordoned)"
        );
        assert_eq!(condition(&d, STALLED).0, "False");
        assert_eq!(d.tally.failed, round);
    }
    // The third failure is over the budget: the rollout stops there, naming all three.
    let d = w.settle();
    let third = applying(&d)[0].clone();
    w.finish_job(&third, false, NOW);
    let d = w.settle();
    assert_eq!(
        applying(&d),
        std::slice::from_ref(&third),
        "it keeps its slot, as without a budget"
    );
    let (status, reason, message) = condition(&d, COMPLETE);
    failed.sort();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "JobFailed"));
    assert!(
        message.contains(&format!("on Node {third}")),
        "{third}: {message}"
    );
    assert!(
        message.contains(&format!(
            "also failed, within failureBudget: nodes {}",
            failed.join(",")
        )),
        "{message}"
    );
    assert_eq!(condition(&d, STALLED).0, "True");
    assert_eq!(d.tally.failed, 3);
    assert!(entry(&d, &third).given_up.is_none());
}

#[test]
fn an_uncordoned_failed_node_is_released_and_the_plan_ends_naming_it() {
    let mut plan = spec();
    plan["failureBudget"] = json!({"nodes": "50%", "failedNodes": "Uncordoned"});
    let mut w = World::new(plan).nodes(&["a", "b"]);
    let d = w.settle();
    let first = applying(&d)[0].clone();
    w.finish_job(&first, false, NOW);
    let d = w.settle();
    assert!(
        !cordoned(&mut w, &first),
        "released (failedNodes: Uncordoned)"
    );
    let second = applying(&d)[0].clone();
    assert_ne!(first, second);
    w.finish_job(&second, true, NOW);
    let d = w.settle();
    assert!(applying(&d).is_empty());
    let (status, reason, message) = condition(&d, COMPLETE);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "JobFailed"));
    assert!(
        message.contains(&format!("went on without node {first} that failed")),
        "{message}"
    );
    assert_eq!(d.status.progress.as_deref(), Some("1/2"));
    // Retried on request: it runs again.
    w.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": first.clone()});
    let d = w.step();
    assert_eq!(
        deleted(&d).len(),
        1,
        "its failed Job goes to run again: {:?}",
        d.before
    );
    assert_eq!(created(&w.step()), [first]);
}
