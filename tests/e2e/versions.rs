//! Version safety for K3s Plans against the real API server: servers first when a server Plan
//! and an agent Plan are applied together, a downgrade and a two-minor jump held until allowed.
//! The simulated nodes report the version their upgrade brought them to (`kubelets.rs`); the
//! test bed's own servers run v1.30.4+k3s1, so these scenarios aim at that version.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use crate::scenario::Scenario;
use crate::support::{Ctx, wait};

const MINUTE: Duration = Duration::from_secs(60);
const TARGET: &str = "v1.30.4+k3s1";
const CONTROL_PLANE: &str = "node-role.kubernetes.io/control-plane";

fn set_kubelet(ctx: &Ctx, node: &str, version: &str) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let patch = json!({"status": {"nodeInfo": {"kubeletVersion": version}}});
    ctx.block_on(nodes.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch)))
        .unwrap();
}

fn kubelet(s: &Scenario, node: &str) -> String {
    s.node(node)
        .and_then(|n| n.status?.node_info)
        .map(|i| i.kubelet_version)
        .unwrap_or_default()
}

/// A server Plan and an agent Plan without a `prepare` step, applied together: the agents wait,
/// held with the server's name, until the server reports the target; then they run.
pub fn servers_go_first_when_server_and_agent_plans_are_applied_together(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "skew", 3);
    let server = s.nodes[0].clone();
    let agents = [s.nodes[1].clone(), s.nodes[2].clone()];
    ctx.kubectl(&["label", "node", &server, &format!("{CONTROL_PLANE}=true")])
        .expect_ok();
    for node in &s.nodes {
        set_kubelet(ctx, node, "v1.29.9+k3s1");
    }
    let selector = |operator: &str| {
        json!({"matchLabels": {crate::scenario::SCENARIO_LABEL: "skew"},
            "matchExpressions": [{"key": CONTROL_PLANE, "operator": operator}]})
    };
    // The server's upgrade takes a while: long enough to see the agents held.
    s.apply_plan(
        "skew-server",
        json!({"concurrency": 1, "version": TARGET, "cordon": true, "nodeSelector": selector("Exists"),
            "upgrade": {"image": "rancher/k3s-upgrade"}}),
        json!({"annotations": {"suc-test/duration": "8s"}}),
    );
    s.apply_plan(
        "skew-agent",
        json!({"concurrency": 2, "version": TARGET, "cordon": true, "nodeSelector": selector("DoesNotExist"),
            "upgrade": {"image": "rancher/k3s-upgrade"}}),
        json!({}),
    );
    let message = s.wait_condition(
        "skew-agent",
        "Complete",
        "False",
        "WaitingForServers",
        MINUTE,
    );
    assert!(
        message.contains(&format!("{server} runs v1.29.9+k3s1")),
        "{message}"
    );
    let entries = s.plan_json("skew-agent")["status"]["nodes"].clone();
    for agent in &agents {
        let entry = entries
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == agent.as_str())
            .unwrap_or_else(|| panic!("no entry for {agent}: {entries}"));
        assert_eq!(entry["phase"], "Held", "{entry}");
    }
    // From now until both are done: no agent Job while the server is behind.
    let started = Instant::now();
    loop {
        let agent_jobs = s.jobs("skew-agent").len();
        if agent_jobs > 0 {
            assert_eq!(
                kubelet(&s, &server),
                TARGET,
                "an agent's Job exists while the server is behind"
            );
        }
        let complete = |plan: &str| {
            s.condition(plan, "Complete")
                .is_some_and(|c| c.0 == "True" && c.1 == "Complete")
        };
        if complete("skew-server") && complete("skew-agent") {
            break;
        }
        assert!(
            started.elapsed() < 3 * MINUTE,
            "the rollouts did not finish: {:?} {:?}",
            s.condition("skew-server", "Complete"),
            s.condition("skew-agent", "Complete")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for node in &s.nodes {
        assert_eq!(kubelet(&s, node), TARGET, "{node}");
    }
    assert!(
        s.plan_events("skew-agent")
            .iter()
            .any(|e| e.starts_with("WaitingForServers: node ")),
        "{:?}",
        s.plan_events("skew-agent")
    );
    s.cleanup();
}

/// A node on a newer version and one two minors behind: neither starts, each says why (the
/// chain to follow for the jump), the Plan is Stalled with a warning and the metric counts
/// them; allowed explicitly, both run.
pub fn a_downgrade_and_a_two_minor_jump_are_held_until_allowed(ctx: &Ctx) {
    let server = ctx.ensure_server();
    let s = Scenario::new(ctx, "vhold", 2);
    let (newer, older) = (s.nodes[0].clone(), s.nodes[1].clone());
    set_kubelet(ctx, &newer, "v1.31.2+k3s1");
    set_kubelet(ctx, &older, "v1.28.5+k3s1");
    let spec =
        json!({"concurrency": 2, "version": TARGET, "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan("vhold", spec.clone(), json!({}));
    let message = s.wait_condition("vhold", "Complete", "False", "DowngradeHeld", MINUTE);
    assert!(
        message.contains(&format!(
            "node {newer} runs v1.31.2+k3s1, newer than {TARGET}"
        )) && message.contains("1 more node(s) held"),
        "{message}"
    );
    assert_eq!(s.condition("vhold", "Stalled").unwrap().0, "True");
    let entries = s.plan_json("vhold")["status"]["nodes"].clone();
    let jump = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == older.as_str())
        .unwrap()
        .clone();
    assert_eq!(jump["phase"], "Held");
    assert!(
        jump["message"]
            .as_str()
            .unwrap()
            .contains("upgrade through v1.29, then v1.30 first"),
        "{jump}"
    );
    let held = "suc_plan_nodes{namespace=\"system-upgrade\",plan=\"vhold\",state=\"version_held\"}";
    wait("the metric", MINUTE, || {
        (server.sample(held) == 2.0).then_some(())
    });
    assert!(
        s.plan_events("vhold")
            .iter()
            .any(|e| e.starts_with("DowngradeHeld: node ")),
        "{:?}",
        s.plan_events("vhold")
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(s.jobs("vhold").is_empty(), "a held node got a Job");
    let mut allowed = spec;
    allowed["versionSafety"] = json!({"allowDowngrade": true, "allowMinorSkip": true});
    s.apply_plan("vhold", allowed, json!({}));
    s.wait_condition("vhold", "Complete", "True", "Complete", 2 * MINUTE);
    assert_eq!(kubelet(&s, &newer), TARGET);
    assert_eq!(kubelet(&s, &older), TARGET);
    s.cleanup();
}
