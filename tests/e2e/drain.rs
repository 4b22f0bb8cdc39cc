//! Native drain against the real control plane: evictions, PodDisruptionBudgets, the order
//! prepare → drain → upgrade, failures, and a drain resumed after a restart.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

use crate::scenario::{SCENARIO_LABEL, Scenario};
use crate::support::{Ctx, NAMESPACE, Server, wait};

const MINUTE: Duration = Duration::from_secs(60);
const APPS: &str = "drain-apps";

fn ensure_namespace(ctx: &Ctx) {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APPS}});
    ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&ns.to_string()))
        .expect_ok();
}

pub fn apply(ctx: &Ctx, object: serde_json::Value) {
    ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()))
        .expect_ok();
}

/// A Deployment whose pods run on the scenario's nodes, spread one per node where possible.
fn deployment(
    name: &str,
    scenario: &str,
    replicas: i32,
    extra_pod_spec: serde_json::Value,
) -> serde_json::Value {
    let mut pod_spec = json!({
        "nodeSelector": {SCENARIO_LABEL: scenario},
        "containers": [{"name": "app", "image": "nginx"}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app": name}}}],
    });
    for (k, v) in extra_pod_spec.as_object().into_iter().flatten() {
        pod_spec[k] = v.clone();
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": APPS},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}},
    })
}

/// One pod on the scenario's node, of a Deployment whose PodDisruptionBudget allows no eviction.
fn guarded_pod(ctx: &Ctx, app: &str, scenario: &str) {
    apply(ctx, deployment(app, scenario, 1, json!({})));
    apply(
        ctx,
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": app, "namespace": APPS},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": app}}}}),
    );
    wait("the guarded pod", MINUTE, || {
        (running(ctx, app) == 1).then_some(())
    });
}

fn pods_on(ctx: &Ctx, node: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), APPS);
    let list = ctx
        .block_on(api.list(&ListParams::default().fields(&format!("spec.nodeName={node}"))))
        .unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn running(ctx: &Ctx, app: &str) -> usize {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), APPS);
    let list = ctx
        .block_on(api.list(&ListParams::default().labels(&format!("app={app}"))))
        .unwrap();
    list.items
        .iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .count()
}

fn node_entry(s: &Scenario, plan: &str) -> (String, String) {
    let plan = s.plan_json(plan);
    let entry = &plan["status"]["nodes"][0];
    (
        entry["phase"].as_str().unwrap_or("").to_owned(),
        entry["message"].as_str().unwrap_or("").to_owned(),
    )
}

fn drain_plan(
    s: &Scenario,
    name: &str,
    node: &str,
    drain: serde_json::Value,
    annotations: serde_json::Value,
) {
    let spec = json!({
        "concurrency": 1, "version": "v1.30.4+k3s1",
        "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}},
        "drain": drain,
        "prepare": {"image": "rancher/k3s-upgrade", "args": ["prepare", "server-plan"]},
        "upgrade": {"image": "rancher/k3s-upgrade"},
    });
    s.apply_plan(name, spec, json!({"annotations": annotations}));
}

/// Evictions the API server refused (429) so far, by its own metrics.
fn refused_evictions(ctx: &Ctx) -> f64 {
    let text = ctx
        .kubectl(&["get", "--raw", "/metrics"])
        .expect_ok()
        .stdout;
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("code=\"429\"") && l.contains("subresource=\"eviction\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn time(value: &serde_json::Value) -> Timestamp {
    value
        .as_str()
        .unwrap_or_else(|| panic!("no time in {value}"))
        .parse()
        .unwrap()
}

/// Deployment pods are evicted and rescheduled, DaemonSet pods stay, and the order is
/// prepare → cordon and drain → upgrade, with the node serving its workloads during prepare.
pub fn drains_evict_workloads_between_prepare_and_upgrade(ctx: &Ctx) {
    ctx.ensure_server();
    ensure_namespace(ctx);
    let s = Scenario::new(ctx, "dr", 2);
    let (a, b) = (s.nodes[0].clone(), s.nodes[1].clone());
    apply(ctx, deployment("dr-web", "dr", 4, json!({})));
    apply(
        ctx,
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "dr-agent", "namespace": APPS},
            "spec": {"selector": {"matchLabels": {"app": "dr-agent"}}, "template": {"metadata": {"labels": {"app": "dr-agent"}},
                "spec": {"nodeSelector": {SCENARIO_LABEL: "dr"}, "containers": [{"name": "agent", "image": "busybox"}]}}},
        }),
    );
    wait("4 web pods and a DaemonSet pod per node", MINUTE, || {
        let on_a = pods_on(ctx, &a);
        (running(ctx, "dr-web") == 4
            && running(ctx, "dr-agent") == 2
            && on_a
                .iter()
                .any(|p| p.metadata.labels.as_ref().unwrap()["app"] == "dr-web"))
        .then_some(())
    });
    let daemon_uid = pods_on(ctx, &a)
        .into_iter()
        .find(|p| p.metadata.labels.as_ref().unwrap()["app"] == "dr-agent")
        .unwrap()
        .metadata
        .uid;

    drain_plan(
        &s,
        "dr",
        &a,
        json!({}),
        json!({"suc-test/prepare-duration": "6s", "suc-test/duration": "3s"}),
    );
    // While prepare runs, the node keeps serving and is not cordoned.
    wait("prepare to be running", MINUTE, || {
        (node_entry(&s, "dr").0 == "Preparing").then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_entry(&s, "dr").0, "Preparing");
    assert!(!s.unschedulable(&a), "cordoned while prepare runs");
    assert!(
        pods_on(ctx, &a)
            .iter()
            .any(|p| p.metadata.labels.as_ref().unwrap()["app"] == "dr-web"),
        "evicted during prepare"
    );

    s.wait_condition("dr", "Complete", "True", "Complete", 2 * MINUTE);
    // The web pods left node a and run elsewhere; the DaemonSet pod stayed.
    wait("the web pods rescheduled on the other node", MINUTE, || {
        (running(ctx, "dr-web") == 4).then_some(())
    });
    let on_b = pods_on(ctx, &b)
        .iter()
        .filter(|p| p.metadata.labels.as_ref().unwrap()["app"] == "dr-web")
        .count();
    assert!(on_b >= 3, "{on_b} web pods on the other node");
    let daemon_after = pods_on(ctx, &a)
        .into_iter()
        .find(|p| p.metadata.labels.as_ref().unwrap()["app"] == "dr-agent")
        .map(|p| p.metadata.uid);
    assert_eq!(
        daemon_after,
        Some(daemon_uid),
        "the DaemonSet pod was not touched"
    );
    assert!(!s.unschedulable(&a), "uncordoned after the upgrade");

    // Timestamps: prepare ended, then the node was drained, then the upgrade container started.
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let pod = ctx
        .block_on(api.list(&ListParams::default().labels("upgrade.cattle.io/plan=dr")))
        .unwrap()
        .items
        .remove(0);
    let pod = serde_json::to_value(&pod).unwrap();
    let inits = pod["status"]["initContainerStatuses"].as_array().unwrap();
    let names: Vec<&str> = inits.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["prepare", "drain"]);
    let drained = time(&pod["metadata"]["annotations"]["upgrade.cattle.io/drained"]);
    let upgrade = &pod["status"]["containerStatuses"][0]["state"];
    let upgrade_started =
        time(&upgrade.get("terminated").unwrap_or(&upgrade["running"])["startedAt"]);
    assert!(
        drained <= upgrade_started,
        "the upgrade started at {upgrade_started} before the drain ended at {drained}"
    );
    let events = s.events(NAMESPACE, "Plan", "dr");
    let position = |reason: &str| {
        events
            .iter()
            .position(|e| e.starts_with(reason))
            .unwrap_or_else(|| panic!("no {reason} event in {events:?}"))
    };
    assert!(
        position("Draining") < position("Evicted") && position("Evicted") < position("Drained"),
        "{events:?}"
    );
    for event in ["Cordoned", "Draining", "Evicted", "Drained", "Uncordoned"] {
        assert!(
            s.events("default", "Node", &a)
                .iter()
                .any(|e| e.starts_with(event)),
            "no {event} event on the node"
        );
    }
    let metrics = ctx.ensure_server().metrics();
    assert!(
        metrics.contains("suc_evictions_total{result=\"evicted\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("suc_drain_duration_seconds_count"),
        "{metrics}"
    );
    ctx.kubectl(&[
        "-n",
        APPS,
        "delete",
        "deployment/dr-web",
        "daemonset/dr-agent",
    ])
    .expect_ok();
}

/// A bare pod blocks without force and is deleted with it; an emptyDir pod follows its flag.
pub fn bare_and_emptydir_pods_follow_the_drain_flags(ctx: &Ctx) {
    ctx.ensure_server();
    ensure_namespace(ctx);
    let s = Scenario::new(ctx, "bare", 2);
    let (a, b) = (s.nodes[0].clone(), s.nodes[1].clone());
    apply(
        ctx,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare-pod", "namespace": APPS},
        "spec": {"nodeName": a, "containers": [{"name": "c", "image": "busybox"}]}}),
    );
    apply(
        ctx,
        deployment(
            "bare-scratch",
            "bare",
            1,
            json!({"nodeSelector": {"kubernetes.io/hostname": b},
        "volumes": [{"name": "scratch", "emptyDir": {}}]}),
        ),
    );
    wait("the pods", MINUTE, || {
        (pods_on(ctx, &a).len() == 1 && pods_on(ctx, &b).len() == 1).then_some(())
    });

    drain_plan(&s, "bare", &a, json!({}), json!({}));
    let message = s.wait_condition("bare", "Complete", "False", "DrainFailed", MINUTE);
    assert_eq!(
        message,
        format!(
            "drain of node {a} cannot proceed: pod {APPS}/bare-pod: no controller manages it, so it would be gone for good (set drain.force to delete it)"
        )
    );
    assert_eq!(
        node_entry(&s, "bare"),
        ("Failed".to_owned(), message.clone())
    );
    assert!(
        s.unschedulable(&a),
        "a failed drain leaves the node cordoned"
    );
    let job = s.jobs("bare").remove(0);
    assert_eq!(
        job.spec.as_ref().unwrap().suspend,
        Some(true),
        "the Job is suspended: its upgrade never starts"
    );
    assert_eq!(pods_on(ctx, &a).len(), 1, "the bare pod is still there");
    // With force it goes for good, and the upgrade proceeds.
    drain_plan(&s, "bare", &a, json!({"force": true}), json!({}));
    s.wait_condition("bare", "Complete", "True", "Complete", 2 * MINUTE);
    assert!(pods_on(ctx, &a).is_empty());

    // emptyDir data: refused when deleteEmptydirData is false, evicted by default.
    drain_plan(
        &s,
        "bare-local",
        &b,
        json!({"deleteEmptydirData": false}),
        json!({}),
    );
    let message = s.wait_condition("bare-local", "Complete", "False", "DrainFailed", MINUTE);
    assert!(
        message.contains("uses emptyDir data (set drain.deleteEmptydirData to delete it)"),
        "{message}"
    );
    drain_plan(&s, "bare-local", &b, json!({}), json!({}));
    s.wait_condition("bare-local", "Complete", "True", "Complete", 2 * MINUTE);
    ctx.kubectl(&["-n", APPS, "delete", "deployment/bare-scratch"])
        .expect_ok();
}

/// A PodDisruptionBudget blocks evictions until the drain's timeout, naming the pod and the
/// budget; disableEviction deletes instead; skipWaitForDeleteTimeout moves on past stuck pods.
pub fn budgets_block_until_the_timeout(ctx: &Ctx) {
    ctx.ensure_server();
    ensure_namespace(ctx);
    let s = Scenario::new(ctx, "pdb", 1);
    let a = s.nodes[0].clone();
    guarded_pod(ctx, "pdb-db", "pdb");
    let pod = pods_on(ctx, &a).remove(0).metadata.name.unwrap();

    drain_plan(&s, "pdb", &a, json!({"timeout": "12s"}), json!({}));
    let blocked = format!("pod {APPS}/{pod} blocked by PodDisruptionBudget {APPS}/pdb-db");
    wait("the blocking pod in the status", MINUTE, || {
        (node_entry(&s, "pdb") == ("Draining".to_owned(), blocked.clone())).then_some(())
    });
    let message = s.wait_condition("pdb", "Complete", "False", "DrainFailed", MINUTE);
    assert_eq!(
        message,
        format!("drain of node {a} timed out after 12s: {blocked}")
    );
    assert!(
        s.events(NAMESPACE, "Plan", "pdb")
            .iter()
            .any(|e| *e == format!("DrainFailed: {message}"))
    );
    assert!(
        s.events("default", "Node", &a)
            .iter()
            .any(|e| e.starts_with("WaitingForBudget"))
    );
    assert_eq!(running(ctx, "pdb-db"), 1, "the budget was respected");
    assert!(s.unschedulable(&a));

    // disableEviction deletes the pod, budget or not.
    drain_plan(
        &s,
        "pdb",
        &a,
        json!({"timeout": "12s", "disableEviction": true}),
        json!({}),
    );
    s.wait_condition("pdb", "Complete", "True", "Complete", 2 * MINUTE);
    assert!(
        s.events("default", "Node", &a)
            .iter()
            .any(|e| e.starts_with(&format!("Deleted: Deleted pod {APPS}/{pod}")))
    );
    ctx.kubectl(&["-n", APPS, "delete", "deployment/pdb-db", "pdb/pdb-db"])
        .expect_ok();
    s.delete_plan("pdb");

    // A pod that never finishes terminating (a finalizer holds it): waited for, unless it has
    // been terminating longer than skipWaitForDeleteTimeout.
    apply(
        ctx,
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "pdb-stuck", "namespace": APPS},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "pdb-stuck"}}, "template": {"metadata": {"labels": {"app": "pdb-stuck"},
            "finalizers": ["suc-test/hold"]}, "spec": {"nodeSelector": {"kubernetes.io/hostname": a}, "containers": [{"name": "c", "image": "busybox"}]}}}}),
    );
    wait("the stuck pod", MINUTE, || {
        (running(ctx, "pdb-stuck") == 1).then_some(())
    });
    let stuck = pods_on(ctx, &a).remove(0).metadata.name.unwrap();
    ctx.kubectl(&["-n", APPS, "scale", "replicaset/pdb-stuck", "--replicas=0"])
        .expect_ok();
    ctx.kubectl(&["-n", APPS, "delete", "pod", &stuck, "--wait=false"])
        .expect_ok();
    drain_plan(
        &s,
        "pdb-skip",
        &a,
        json!({"skipWaitForDeleteTimeout": 3, "timeout": "60s"}),
        json!({}),
    );
    s.wait_condition("pdb-skip", "Complete", "True", "Complete", MINUTE);
    ctx.kubectl(&[
        "-n",
        APPS,
        "patch",
        "pod",
        &stuck,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/metadata/finalizers"}]"#,
    ])
    .expect_ok();
    ctx.kubectl(&["-n", APPS, "delete", "replicaset/pdb-stuck"])
        .expect_ok();
}

/// A controller killed in the middle of a drain finishes it after a restart.
pub fn a_drain_resumes_after_a_restart(ctx: &Ctx) {
    ctx.ensure_server();
    ensure_namespace(ctx);
    let s = Scenario::new(ctx, "resume", 1);
    let a = s.nodes[0].clone();
    apply(ctx, deployment("resume-db", "resume", 1, json!({})));
    apply(
        ctx,
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "resume-db", "namespace": APPS},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "resume-db"}}}}),
    );
    wait("the guarded pod", MINUTE, || {
        (running(ctx, "resume-db") == 1).then_some(())
    });
    let guarded = pods_on(ctx, &a).remove(0).metadata.name.unwrap();
    drain_plan(&s, "resume", &a, json!({"timeout": "10m"}), json!({}));
    wait("the drain to be blocked", MINUTE, || {
        node_entry(&s, "resume")
            .1
            .contains("blocked by PodDisruptionBudget")
            .then_some(())
    });
    ctx.with_server(Server::kill_hard);
    ctx.stop_server();
    // The budget allows it now, but nobody is draining.
    ctx.kubectl(&["-n", APPS, "delete", "pdb/resume-db"])
        .expect_ok();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(running(ctx, "resume-db"), 1, "evicted without a controller");
    let restarted = Server::start(ctx, "after-drain-kill", &[]);
    restarted.wait_ready();
    ctx.set_server(restarted);
    s.wait_condition("resume", "Complete", "True", "Complete", 2 * MINUTE);
    // The pod was evicted after the restart (its replacement may be back once uncordoned).
    assert!(
        !pods_on(ctx, &a)
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(guarded.as_str())),
        "the drain finished after the restart"
    );
    assert!(!s.unschedulable(&a));
    ctx.kubectl(&["-n", APPS, "delete", "deployment/resume-db"])
        .expect_ok();
}

/// Plans shaped like the Go controller's examples with `drain` (an OS package upgrade opted in
/// per node, and a K3s agent upgrade that prepares by waiting for the servers) run end to end
/// with native drain. Prints the eviction timeline.
pub fn go_example_plans_with_drain_run_end_to_end(ctx: &Ctx) {
    ctx.ensure_server();
    ensure_namespace(ctx);
    ctx.kubectl(&[
        "apply",
        "-f",
        crate::support::repo("deploy/rbac.yaml").to_str().unwrap(),
    ])
    .expect_ok();
    let s = Scenario::new(ctx, "ex", 4);
    // Workloads: a replicated web app, and a bare pod only `force` removes.
    apply(ctx, deployment("ex-web", "ex", 4, json!({})));
    apply(
        ctx,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ex-debug", "namespace": APPS},
        "spec": {"nodeName": s.nodes[1], "containers": [{"name": "c", "image": "busybox"}]}}),
    );
    wait("the workloads", MINUTE, || {
        (running(ctx, "ex-web") == 4).then_some(())
    });
    // The OS upgrade: nodes opt in with the label plan.upgrade.cattle.io/ex-os.
    ctx.put_secret("ex-os", "upgrade.sh=apt-get -y upgrade");
    for node in &s.nodes[..2] {
        ctx.kubectl(&["label", "node", node, "plan.upgrade.cattle.io/ex-os=true"])
            .expect_ok();
    }
    s.apply_plan("ex-os", json!({
        "concurrency": 2,
        "nodeSelector": {"matchExpressions": [{"key": "plan.upgrade.cattle.io/ex-os", "operator": "Exists"}]},
        "serviceAccountName": "system-upgrade",
        "secrets": [{"name": "ex-os", "path": "/host/run/system-upgrade/secrets/ex-os"}],
        "drain": {"force": true},
        "version": "jammy",
        "upgrade": {"image": "ubuntu", "command": ["chroot", "/host"], "args": ["sh", "/run/system-upgrade/secrets/ex-os/upgrade.sh"]},
    }), json!({}));
    // The K3s agent upgrade on the other two nodes.
    for node in &s.nodes[2..] {
        ctx.kubectl(&["label", "node", node, "k3s-upgrade=true"])
            .expect_ok();
    }
    s.apply_plan(
        "ex-agent",
        json!({
            "concurrency": 2,
            "version": "v1.30.4+k3s1",
            "nodeSelector": {"matchExpressions": [
                {"key": "k3s-upgrade", "operator": "Exists"},
                {"key": "k3s-upgrade", "operator": "NotIn", "values": ["disabled", "false"]},
                {"key": "node-role.kubernetes.io/master", "operator": "NotIn", "values": ["true"]},
            ]},
            "serviceAccountName": "system-upgrade",
            "prepare": {"image": "rancher/k3s-upgrade", "args": ["prepare", "k3s-server"]},
            "drain": {"force": true},
            "upgrade": {"image": "rancher/k3s-upgrade"},
        }),
        json!({}),
    );
    for plan in ["ex-os", "ex-agent"] {
        s.wait_condition(plan, "Complete", "True", "Complete", 3 * MINUTE);
    }
    for node in &s.nodes {
        assert!(!s.unschedulable(node), "{node} left cordoned");
    }
    assert_eq!(
        s.node_label(&s.nodes[0], "plan.upgrade.cattle.io/ex-os")
            .map(|h| h.len()),
        Some(56)
    );
    assert_eq!(
        s.node_label(&s.nodes[3], "plan.upgrade.cattle.io/ex-agent")
            .map(|h| h.len()),
        Some(56)
    );
    let debug_gone = ctx.kubectl(&["-n", APPS, "get", "pod", "ex-debug"]);
    assert!(!debug_gone.ok, "force removed the bare pod");
    wait("the web app back at full strength", MINUTE, || {
        (running(ctx, "ex-web") == 4).then_some(())
    });

    // The eviction timeline, as the events tell it.
    let out = ctx
        .kubectl(&["get", "events.events.k8s.io", "-A", "-o", "json"])
        .expect_ok()
        .stdout;
    let events: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut timeline: Vec<(String, String, String, String)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["reportingController"]
                .as_str()
                .is_some_and(|c| c.starts_with("upgrade.cattle.io/"))
        })
        .filter(|e| {
            e["regarding"]["kind"] == "Node"
                && e["regarding"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("ex-"))
        })
        .map(|e| {
            (
                e["eventTime"].as_str().unwrap_or("").to_owned(),
                e["regarding"]["name"].as_str().unwrap_or("").to_owned(),
                e["reason"].as_str().unwrap_or("").to_owned(),
                e["note"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    timeline.sort();
    println!("eviction timeline:");
    for (time, node, reason, note) in &timeline {
        println!("  {time}  {node:<6} {reason:<12} {note}");
    }
    assert!(timeline.iter().any(|(_, _, reason, _)| reason == "Evicted"));
    ctx.kubectl(&["-n", APPS, "delete", "deployment/ex-web"])
        .expect_ok();
    ctx.kubectl(&["-n", NAMESPACE, "delete", "secret", "ex-os"])
        .expect_ok();
}

/// A node whose taint the upgrade pod does not tolerate: the pod stays unscheduled, so the node
/// is never cordoned and its workload never evicted; the node entry says why, and after the
/// Job's deadline nothing is left cordoned.
pub fn an_untolerated_taint_never_cordons_or_drains(ctx: &Ctx) {
    let server = ctx.ensure_server();
    ensure_namespace(ctx);
    let s = Scenario::new(ctx, "taint", 1);
    let a = s.nodes[0].clone();
    let toleration = json!([{"key": "CriticalAddonsOnly", "operator": "Exists"}]);
    apply(
        ctx,
        deployment("taint-web", "taint", 1, json!({"tolerations": toleration})),
    );
    wait("the workload on the node", MINUTE, || {
        (running(ctx, "taint-web") == 1).then_some(())
    });
    let workload = pods_on(ctx, &a).remove(0).metadata.uid.unwrap();
    ctx.kubectl(&["taint", "node", &a, "CriticalAddonsOnly=true:NoExecute"])
        .expect_ok();
    let evictions_before = server.sample("suc_evictions_total{result=\"evicted\"}");
    let spec = json!({
        "concurrency": 1, "version": "v1.30.4+k3s1", "jobActiveDeadlineSecs": 15,
        "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": a}},
        "cordon": true, "drain": {"force": true},
        "upgrade": {"image": "rancher/k3s-upgrade"},
    });
    s.apply_plan("taint", spec, json!({}));
    let mut said = String::new();
    let message = wait("the Job to reach its deadline", 2 * MINUTE, || {
        assert!(!s.unschedulable(&a), "the node was cordoned");
        let pods = pods_on(ctx, &a);
        assert!(
            pods.iter()
                .any(|p| p.metadata.uid.as_deref() == Some(workload.as_str())),
            "the workload was evicted"
        );
        let (phase, message) = node_entry(&s, "taint");
        if phase == "Preparing" && message.contains("to be scheduled") {
            said = message;
        }
        s.condition("taint", "Complete")
            .filter(|(_, reason, _)| reason == "JobFailed")
            .map(|(_, _, m)| m)
    });
    assert!(
        said.contains("untolerated taint"),
        "the node entry said why it waited: {said:?}"
    );
    assert!(message.contains("DeadlineExceeded"), "{message}");
    assert!(!s.unschedulable(&a), "nothing is left cordoned");
    assert_eq!(
        server.sample("suc_evictions_total{result=\"evicted\"}"),
        evictions_before
    );
    let node = s.node(&a).unwrap();
    assert!(
        !node
            .metadata
            .annotations
            .unwrap_or_default()
            .keys()
            .any(|k| k.starts_with("cordoned.upgrade.cattle.io/")),
        "no cordon claim"
    );
    s.delete_plan("taint");
    ctx.kubectl(&["-n", APPS, "delete", "deployment/taint-web"])
        .expect_ok();
}

/// A drain held by a PodDisruptionBudget stops trying once its Job has failed (here: its
/// deadline passed); the node stays cordoned, as after any failure.
pub fn a_drain_stops_when_its_job_fails(ctx: &Ctx) {
    let server = ctx.ensure_server();
    ensure_namespace(ctx);
    let s = Scenario::new(ctx, "stop", 1);
    let a = s.nodes[0].clone();
    guarded_pod(ctx, "stop-db", "stop");
    let spec = json!({
        "concurrency": 1, "version": "v1.30.4+k3s1", "jobActiveDeadlineSecs": 15,
        "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": a}},
        "drain": {}, "upgrade": {"image": "rancher/k3s-upgrade"},
    });
    s.apply_plan("stop", spec, json!({}));
    // Our counter counts a pod a budget holds once per drain; the API server counts every refusal.
    let blocked = "suc_evictions_total{result=\"blocked\"}";
    let before = server.sample(blocked);
    wait("evictions refused by the budget", MINUTE, || {
        (server.sample(blocked) > before).then_some(())
    });
    let refusals = wait("the API server to count refusals", MINUTE, || {
        let n = refused_evictions(ctx);
        (n > 0.0).then_some(n)
    });
    wait("the drain to retry", MINUTE, || {
        (refused_evictions(ctx) > refusals).then_some(())
    });
    assert_eq!(
        server.sample(blocked),
        before + 1.0,
        "counted once, not per retry"
    );
    let message = s.wait_condition("stop", "Complete", "False", "JobFailed", MINUTE);
    assert!(message.contains("DeadlineExceeded"), "{message}");
    // The drain retries at least every 5 s while it runs; once stopped, no more refusals.
    std::thread::sleep(Duration::from_secs(3));
    let after_failure = refused_evictions(ctx);
    std::thread::sleep(Duration::from_secs(12));
    assert_eq!(
        refused_evictions(ctx),
        after_failure,
        "the drain went on after its Job failed"
    );
    assert_eq!(running(ctx, "stop-db"), 1);
    assert!(s.unschedulable(&a), "a failed node stays cordoned");
    s.delete_plan("stop");
    ctx.kubectl(&["-n", APPS, "delete", "deployment/stop-db", "pdb/stop-db"])
        .expect_ok();
}

/// `drain.onTimeout`: Skip gives a blocked node up (uncordoned, unlabelled) and upgrades the
/// others; Delete deletes the pods a budget protects once the timeout passes; Retry keeps
/// evicting past the timeout until the pod can go.
pub fn drain_timeouts_skip_delete_or_retry_as_the_plan_says(ctx: &Ctx) {
    ctx.ensure_server();
    ensure_namespace(ctx);
    let s = Scenario::new(ctx, "dto", 2);
    let a = s.nodes[0].clone();
    let b = s.nodes[1].clone();
    apply(
        ctx,
        deployment(
            "dto-db",
            "dto",
            1,
            json!({"nodeSelector": {"kubernetes.io/hostname": a}}),
        ),
    );
    apply(
        ctx,
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "dto-db", "namespace": APPS},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "dto-db"}}}}),
    );
    wait("the guarded pod", MINUTE, || {
        (running(ctx, "dto-db") == 1).then_some(())
    });
    let spec = |on_timeout: &str| {
        json!({
            "concurrency": 1, "version": "v1.30.4+k3s1",
            "drain": {"timeout": "4s", "onTimeout": on_timeout},
            "upgrade": {"image": "rancher/k3s-upgrade"},
        })
    };
    s.apply_plan("dto", spec("Skip"), json!({}));
    let message = s.wait_condition("dto", "Complete", "False", "DrainSkipped", 2 * MINUTE);
    assert!(
        message.contains(&format!("nodes {a} timed out")),
        "{message}"
    );
    assert!(
        s.node_label(&b, "plan.upgrade.cattle.io/dto").is_some(),
        "{b} upgraded"
    );
    assert!(s.node_label(&a, "plan.upgrade.cattle.io/dto").is_none());
    wait("the skipped node to be uncordoned", MINUTE, || {
        (!s.unschedulable(&a)).then_some(())
    });
    assert_eq!(running(ctx, "dto-db"), 1, "the budget was respected");
    assert_eq!(s.condition("dto", "Stalled").unwrap().0, "True");
    let entry = &s.plan_json("dto")["status"]["nodes"][0];
    assert_eq!(
        (entry["name"].as_str(), entry["phase"].as_str()),
        (Some(a.as_str()), Some("Skipped"))
    );
    assert!(
        s.plan_events("dto")
            .iter()
            .any(|e| e.starts_with("DrainSkipped: drain of node")),
        "{:?}",
        s.plan_events("dto")
    );

    // Delete, and a retry by request: the protected pod is deleted after the timeout.
    s.apply_plan(
        "dto",
        spec("Delete"),
        json!({"annotations": {"upgrade.cattle.io/retry": "all"}}),
    );
    s.wait_condition("dto", "Complete", "True", "Complete", 2 * MINUTE);
    let events = s.node_events(&a);
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("DrainTimedOut:") && e.contains("deleting the pods left")),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e.starts_with("Deleted: Deleted pod")),
        "{events:?}"
    );
    assert!(!s.unschedulable(&a));
    wait("the replacement pod", MINUTE, || {
        (running(ctx, "dto-db") == 1).then_some(())
    });

    // Retry: past the timeout the drain goes on (no failure) until the budget allows it.
    s.apply_plan(
        "dto-retry",
        {
            let mut retry = spec("Retry");
            retry["nodeSelector"] = json!({"matchLabels": {"kubernetes.io/hostname": a}});
            retry
        },
        json!({}),
    );
    wait("the drain to time out and go on", MINUTE, || {
        s.node_events(&a)
            .iter()
            .any(|e| e.starts_with("DrainTimedOut:") && e.contains("onTimeout: Retry"))
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_entry(&s, "dto-retry").0, "Draining");
    assert_ne!(
        s.condition("dto-retry", "Complete").unwrap().1,
        "DrainFailed"
    );
    ctx.kubectl(&["-n", APPS, "delete", "pdb/dto-db"])
        .expect_ok();
    s.wait_condition("dto-retry", "Complete", "True", "Complete", 2 * MINUTE);
    ctx.kubectl(&["-n", APPS, "delete", "deployment/dto-db"])
        .expect_ok();
    s.cleanup();
}

/// A VolumeAttachment as the attach/detach controller leaves it while `pv` is attached to `node`.
pub fn attachment(name: &str, node: &str, pv: &str) -> serde_json::Value {
    json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "VolumeAttachment",
        "metadata": {"name": name},
        "spec": {"attacher": "driver.longhorn.io", "nodeName": node,
            "source": {"persistentVolumeName": pv}},
    })
}

/// Once a node's pods are gone, its upgrade waits until the volumes they used are detached: a
/// VolumeAttachment of the node holds the gate shut (the entry names it) until it goes, while
/// one whose volume a DaemonSet pod left on the node still uses does not.
pub fn drains_wait_for_volumes_to_detach(ctx: &Ctx) {
    ctx.ensure_server();
    ensure_namespace(ctx);
    let s = Scenario::new(ctx, "vol", 2);
    remove_volumes(ctx);
    let a = s.nodes[0].clone();
    // A claim bound to a volume, used by a DaemonSet pod that the drain leaves on the node.
    bound_volume(ctx, APPS, "vol-agent", "vol-pv-agent");
    apply(
        ctx,
        json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "vol-agent", "namespace": APPS},
            "spec": {"selector": {"matchLabels": {"app": "vol-agent"}}, "template": {"metadata": {"labels": {"app": "vol-agent"}},
                "spec": {"nodeSelector": {SCENARIO_LABEL: "vol"}, "containers": [{"name": "agent", "image": "busybox"}],
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "vol-agent"}}]}}},
        }),
    );
    apply(ctx, deployment("vol-db", "vol", 2, json!({})));
    wait("the DaemonSet pods and the db pods", MINUTE, || {
        (running(ctx, "vol-agent") == 2 && running(ctx, "vol-db") == 2).then_some(())
    });
    for (name, pv) in [("vol-va-db", "vol-pv-db"), ("vol-va-agent", "vol-pv-agent")] {
        apply(ctx, attachment(name, &a, pv));
    }

    drain_plan(&s, "vol", &a, json!({}), json!({"suc-test/duration": "1s"}));
    let expected =
        format!("waiting for volume vol-pv-db (driver.longhorn.io) to detach from node {a}");
    wait("the drain to wait for the db volume", 2 * MINUTE, || {
        let (phase, message) = node_entry(&s, "vol");
        (phase == "Draining" && message.contains(&expected)).then_some(())
    });
    assert!(
        !pods_on(ctx, &a)
            .iter()
            .any(|p| p.metadata.labels.as_ref().unwrap()["app"] == "vol-db"),
        "the db pod is still on the node"
    );
    std::thread::sleep(Duration::from_secs(3));
    let (phase, message) = node_entry(&s, "vol");
    assert_eq!(phase, "Draining", "{message}");
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let upgrade_pods = ctx
        .block_on(api.list(&ListParams::default().labels("upgrade.cattle.io/plan=vol")))
        .unwrap()
        .items;
    assert!(
        upgrade_pods.iter().all(|p| p
            .metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key("upgrade.cattle.io/drained"))),
        "the gate opened with a volume attached"
    );
    assert!(
        s.plan_events("vol")
            .iter()
            .any(|e| e.starts_with("WaitingForVolumes") && e.contains("vol-pv-db")),
        "{:?}",
        s.plan_events("vol")
    );

    // The volume detaches: the upgrade runs; the DaemonSet pod's volume stays attached.
    ctx.kubectl(&["delete", "volumeattachment", "vol-va-db"])
        .expect_ok();
    s.wait_condition("vol", "Complete", "True", "Complete", 2 * MINUTE);
    assert!(!s.unschedulable(&a), "uncordoned after the upgrade");

    ctx.kubectl(&[
        "-n",
        APPS,
        "delete",
        "daemonset/vol-agent",
        "deployment/vol-db",
    ])
    .expect_ok();
    remove_volumes(ctx);
    s.cleanup();
}

/// Removes the volume test's claim, volume and attachments.
fn remove_volumes(ctx: &Ctx) {
    remove_volume(ctx, APPS, "vol-agent", "vol-pv-agent");
    ctx.kubectl(&[
        "delete",
        "volumeattachment",
        "vol-va-db",
        "vol-va-agent",
        "--ignore-not-found",
    ])
    .expect_ok();
}

/// A PersistentVolume `pv` (a host path, made when first mounted) and claim `claim` bound to it,
/// as the volume binder would leave them (the test bed runs no binder).
pub fn bound_volume(ctx: &Ctx, namespace: &str, claim: &str, pv: &str) {
    apply(
        ctx,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "manual",
                "hostPath": {"path": format!("/tmp/{pv}"), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": namespace, "name": claim}}}),
    );
    apply(
        ctx,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace,
                "annotations": {"pv.kubernetes.io/bind-completed": "yes"}},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "manual", "volumeName": pv,
                "resources": {"requests": {"storage": "1Gi"}}}}),
    );
    // The kubelet mounts a volume only when it names its claim's UID, as a binder would.
    let uid = ctx
        .kubectl(&[
            "get",
            &format!("pvc/{claim}"),
            "-n",
            namespace,
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .expect_ok()
        .stdout;
    let claim_ref = json!({"spec": {"claimRef": {"uid": uid.trim()}}}).to_string();
    ctx.kubectl(&[
        "patch",
        &format!("pv/{pv}"),
        "--type=merge",
        "-p",
        &claim_ref,
    ])
    .expect_ok();
    let bound = json!({"status": {"phase": "Bound", "accessModes": ["ReadWriteMany"], "capacity": {"storage": "1Gi"}}})
        .to_string();
    let pv_object = format!("pv/{pv}");
    let claim_object = format!("pvc/{claim}");
    ctx.kubectl(&[
        "patch",
        &pv_object,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Bound"}}"#,
    ])
    .expect_ok();
    ctx.kubectl(&[
        "patch",
        &claim_object,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        &bound,
    ])
    .expect_ok();
}

/// Removes a claim and volume made by [`bound_volume`]; the test bed runs no controller that
/// would take their protection finalizers off.
pub fn remove_volume(ctx: &Ctx, namespace: &str, claim: &str, pv: &str) {
    let clear = r#"{"metadata":{"finalizers":null}}"#;
    let claim_object = format!("pvc/{claim}");
    let pv_object = format!("pv/{pv}");
    // Absent already: nothing to clear.
    let _ = ctx.kubectl(&[
        "patch",
        &claim_object,
        "-n",
        namespace,
        "--type=merge",
        "-p",
        clear,
    ]);
    ctx.kubectl(&[
        "delete",
        &claim_object,
        "-n",
        namespace,
        "--ignore-not-found",
    ])
    .expect_ok();
    let _ = ctx.kubectl(&["patch", &pv_object, "--type=merge", "-p", clear]);
    ctx.kubectl(&["delete", &pv_object, "--ignore-not-found"])
        .expect_ok();
}

/// The nodes carrying Plan `plan`'s PreferNoSchedule taint, of `nodes`.
fn upcoming(s: &Scenario, plan: &str, nodes: &[String]) -> Vec<String> {
    let key = format!("upcoming.upgrade.cattle.io/{plan}");
    nodes
        .iter()
        .filter(|n| {
            s.node(n)
                .and_then(|n| n.spec)
                .and_then(|s| s.taints)
                .is_some_and(|t| {
                    t.iter()
                        .any(|t| t.key == key && t.effect == "PreferNoSchedule")
                })
        })
        .cloned()
        .collect()
}

/// Nodes waiting for their turn in a rollout that drains carry the Plan's PreferNoSchedule
/// taint, so evicted pods prefer nodes already done; each loses it when done, and all lose it
/// when the Plan is deleted mid-rollout.
pub fn waiting_nodes_carry_a_prefer_no_schedule_taint(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "upc", 3);
    let spec = |duration: &str| {
        (
            json!({"concurrency": 1, "version": "v1.30.4+k3s1", "drain": {},
                "upgrade": {"image": "rancher/k3s-upgrade"}}),
            json!({"annotations": {"suc-test/duration": duration}}),
        )
    };
    let (plan, meta) = spec("3s");
    s.apply_plan("upc", plan, meta);
    let first = wait("a node to be drained while the others wait", MINUTE, || {
        let plan = s.plan_json("upc");
        let entry = &plan["status"]["nodes"][0];
        let node = entry["name"].as_str()?.to_owned();
        let tainted = upcoming(&s, "upc", &s.nodes);
        (matches!(entry["phase"].as_str(), Some("Draining" | "Upgrading")) && tainted.len() >= 2)
            .then_some((node, tainted))
    });
    assert!(
        first.1.iter().filter(|n| **n != first.0).count() == 2,
        "the two waiting nodes are not both tainted: {first:?}"
    );
    s.wait_condition("upc", "Complete", "True", "Complete", 3 * MINUTE);
    wait("every taint to go", MINUTE, || {
        upcoming(&s, "upc", &s.nodes).is_empty().then_some(())
    });

    // Deleted mid-rollout: the nodes lose the taint.
    s.delete_plan("upc");
    let (plan, meta) = spec("60s");
    s.apply_plan("upc2", plan, meta);
    wait("the waiting nodes to be tainted", MINUTE, || {
        (upcoming(&s, "upc2", &s.nodes).len() >= 2).then_some(())
    });
    s.delete_plan("upc2");
    wait("the taints of the deleted Plan to go", MINUTE, || {
        upcoming(&s, "upc2", &s.nodes).is_empty().then_some(())
    });
    s.cleanup();
}

/// Two nodes drained at once (concurrency 2) whose pods share a PodDisruptionBudget allowing one
/// disruption, with nowhere else to go: without care both nodes end cordoned and half drained,
/// each eviction refused because the other's evicted pod cannot be scheduled, for good. The
/// later drain gives way (or never cordons), so the rollout completes and every pod runs.
pub fn drains_of_one_plan_never_deadlock_on_a_shared_budget(ctx: &Ctx) {
    ctx.ensure_server();
    ensure_namespace(ctx);
    let s = Scenario::new(ctx, "pdb", 2);
    apply(ctx, deployment("pdb-web", "pdb", 4, json!({})));
    apply(
        ctx,
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "pdb-web", "namespace": APPS},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "pdb-web"}}}}),
    );
    wait("two web pods on each node", MINUTE, || {
        let spread = s.nodes.iter().all(|n| {
            pods_on(ctx, n)
                .iter()
                .filter(|p| p.metadata.labels.as_ref().unwrap()["app"] == "pdb-web")
                .count()
                == 2
        });
        (running(ctx, "pdb-web") == 4 && spread).then_some(())
    });
    s.apply_plan(
        "pdb",
        json!({"concurrency": 2, "version": "v1.30.4+k3s1", "drain": {},
            "upgrade": {"image": "rancher/k3s-upgrade"}}),
        json!({"annotations": {"suc-test/duration": "2s"}}),
    );
    s.wait_condition("pdb", "Complete", "True", "Complete", 4 * MINUTE);
    wait("every web pod running again", MINUTE, || {
        (running(ctx, "pdb-web") == 4).then_some(())
    });
    for node in &s.nodes {
        assert!(!s.unschedulable(node), "{node} left cordoned");
    }
    let events = s.plan_events("pdb");
    assert!(
        events.iter().any(|e| e.starts_with("DrainGaveWay")
            || (e.starts_with("WaitingForBudget") && e.contains("not cordoning yet"))),
        "neither drain gave way nor waited to cordon: {events:?}"
    );
    ctx.kubectl(&["-n", APPS, "delete", "deployment/pdb-web", "pdb/pdb-web"])
        .expect_ok();
    s.cleanup();
}
