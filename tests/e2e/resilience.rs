//! The concurrency invariant under load and across a controller killed mid-rollout.

use std::time::Duration;

use serde_json::json;

use crate::scenario::{JobWatch, Scenario};
use crate::support::{Ctx, Server, wait};

/// 20 nodes, concurrency 3: never more than 3 nodes with an unfinished Job, even when the
/// controller is SIGKILLed in the middle; it finishes after a restart, no node runs twice and no
/// Job is left behind.
pub fn twenty_nodes_concurrency_three_survive_a_sigkill(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "big", 20);
    let watch = JobWatch::start(ctx, "big");
    let spec = json!({"concurrency": 3, "version": "v1.30.4+k3s1", "cordon": true, "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan(
        "big",
        spec,
        json!({"annotations": {"suc-test/duration": "3s"}}),
    );
    let labelled = |s: &Scenario| {
        s.nodes
            .iter()
            .filter(|n| s.node_label(n, "plan.upgrade.cattle.io/big").is_some())
            .count()
    };
    wait(
        "a third of the nodes done",
        Duration::from_secs(120),
        || (labelled(&s) >= 7).then_some(()),
    );
    ctx.with_server(Server::kill_hard);
    ctx.stop_server();
    let done_at_kill = labelled(&s);
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        labelled(&s) - done_at_kill <= 3,
        "nodes kept being labelled without a controller"
    );
    let restarted = Server::start(ctx, "after-kill", &[]);
    restarted.wait_ready();
    ctx.set_server(restarted);
    s.wait_condition(
        "big",
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(240),
    );
    assert!(
        watch.max_unfinished() <= 3,
        "{} nodes ran at once",
        watch.max_unfinished()
    );
    assert_eq!(
        watch.max_unfinished(),
        3,
        "the rollout used its concurrency"
    );
    let per_node = watch.jobs_per_node();
    assert_eq!(per_node.len(), 20, "{per_node:?}");
    assert!(
        per_node.values().all(|n| *n == 1),
        "a node ran twice: {per_node:?}"
    );
    let hash = s.plan_json("big")["status"]["latestHash"]
        .as_str()
        .unwrap()
        .to_owned();
    for node in &s.nodes {
        assert_eq!(
            s.node_label(node, "plan.upgrade.cattle.io/big").as_deref(),
            Some(hash.as_str())
        );
        assert!(!s.unschedulable(node), "{node} left cordoned");
    }
    let unfinished = s
        .jobs("big")
        .into_iter()
        .filter(|j| {
            j.status
                .as_ref()
                .and_then(|st| st.completion_time.as_ref())
                .is_none()
        })
        .count();
    assert_eq!(unfinished, 0, "orphaned Jobs");
}
