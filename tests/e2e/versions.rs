//! Version safety for K3s Plans against the real API server: servers first when a server Plan
//! and an agent Plan are applied together, a downgrade and a two-minor jump held until allowed.
//! The simulated nodes report the version their upgrade brought them to (the test bed's
//! kubelet-versions); the test bed's own servers run v1.30.4+k3s1, so these scenarios aim at
//! that version.

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
    let mut spec = json!({"concurrency": 2, "version": TARGET, "upgrade": {"image": "rancher/k3s-upgrade"},
        "nodeSelector": {"matchLabels": {crate::scenario::SCENARIO_LABEL: "vhold"}}});
    // spec.version is checked against the nodes at admission, naming each.
    let plan = json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
        "metadata": {"name": "vhold", "namespace": crate::support::NAMESPACE}, "spec": spec});
    let refused = ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&plan.to_string()));
    assert!(!refused.ok, "admitted: {}", refused.stdout);
    assert!(
        refused.stderr.contains(&format!(
            "Plan \"vhold\" is invalid: spec.version: node {newer} runs v1.31.2+k3s1, newer than {TARGET}"
        )) && refused.stderr.contains(&format!("; and: node {older} runs v1.28.5+k3s1")),
        "{}",
        refused.stderr
    );
    // Admitted while the nodes ran older versions, and paused; the nodes move meanwhile (an
    // upgrade by hand, a restored snapshot): the controller holds them when it resumes.
    set_kubelet(ctx, &newer, "v1.30.0+k3s1");
    set_kubelet(ctx, &older, "v1.30.0+k3s1");
    spec["paused"] = json!(true);
    s.apply_plan("vhold", spec.clone(), json!({}));
    set_kubelet(ctx, &newer, "v1.31.2+k3s1");
    set_kubelet(ctx, &older, "v1.28.5+k3s1");
    spec["paused"] = json!(false);
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
            .contains("upgrade through v1.29 first (one minor at a time)"),
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

/// An upgrade Job that "completes" while the node stays on its old version
/// (rancher/system-upgrade-controller#262): the node waits, Converging, then fails
/// NotConverged (never labelled done), and the Plan is Stalled with a warning.
pub fn an_upgrade_that_changes_nothing_is_not_called_done(ctx: &Ctx) {
    let server = ctx.ensure_server();
    let s = Scenario::new(ctx, "noconv", 1);
    let node = s.nodes[0].clone();
    set_kubelet(ctx, &node, "v1.30.1+k3s1");
    s.apply_plan(
        "noconv",
        json!({"concurrency": 1, "version": TARGET, "upgrade": {"image": "rancher/k3s-upgrade"},
            "convergence": {"within": "15s"}}),
        json!({"labels": {"suc-test/no-converge": "true"}}),
    );
    wait("the node to wait for its version", MINUTE, || {
        let entry = s.plan_json("noconv")["status"]["nodes"][0].clone();
        (entry["phase"] == "Converging").then_some(entry)
    });
    let message = s.wait_condition("noconv", "Complete", "False", "NotConverged", MINUTE);
    assert!(
        message.contains(&format!(
            "did not show the upgrade within 15s (spec.convergence.within): waited for it to report kubelet {TARGET} (it reports v1.30.1+k3s1)"
        )),
        "{message}"
    );
    assert_eq!(s.condition("noconv", "Stalled").unwrap().0, "True");
    assert_eq!(
        s.labelled("noconv"),
        0,
        "a node that did not change is not done"
    );
    assert!(
        s.plan_events("noconv")
            .iter()
            .any(|e| e.starts_with("NotConverged: Job ")),
        "{:?}",
        s.plan_events("noconv")
    );
    let failed = "suc_plan_nodes{namespace=\"system-upgrade\",plan=\"noconv\",state=\"failed\"}";
    wait("the metric", MINUTE, || {
        (server.sample(failed) == 1.0).then_some(())
    });
    // The node reaches the version after all (K3s restarted late): retrying it finds it done.
    set_kubelet(ctx, &node, TARGET);
    ctx.kubectl(&[
        "-n",
        crate::support::NAMESPACE,
        "annotate",
        "plan",
        "noconv",
        "upgrade.cattle.io/retry=all",
    ])
    .expect_ok();
    s.wait_condition("noconv", "Complete", "True", "Complete", 2 * MINUTE);
    s.cleanup();
}
