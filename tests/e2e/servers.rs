//! The controller's own Deployment on the cluster most users have, one K3s server (and agents),
//! and on three servers: a Go controller's Deployment (its v0.14+ shape: one replica, Recreate,
//! a required anti-affinity on its app label) replaced in place with the README's commands,
//! `kubectl drain` of a server, and a replica deleted while its server is cordoned. Simulated
//! nodes run the pods (kwok marks them ready), which is all the scheduler, the Deployment and
//! ReplicaSet controllers, PodDisruptionBudgets and evictions need; the real-node suite runs the
//! same on a kubelet with the controller's image.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};

use crate::scenario::Scenario;
use crate::support::{Ctx, NAMESPACE, repo, wait};

const MINUTE: Duration = Duration::from_secs(60);
/// The controller's pods (this one's and the Go controller's since v0.14), not its Jobs' pods.
const CONTROLLER_PODS: &str = "app.kubernetes.io/name=system-upgrade-controller";

/// The Go controller's Deployment since v0.14, as its manifests install it.
pub fn go_deployment(image: &str, pull_policy: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "system-upgrade-controller", "namespace": NAMESPACE},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"upgrade.cattle.io/controller": "system-upgrade-controller"}},
            "template": {
                "metadata": {"labels": {"upgrade.cattle.io/controller": "system-upgrade-controller",
                    "app.kubernetes.io/name": "system-upgrade-controller",
                    "app.kubernetes.io/component": "controller"}},
                "spec": {"serviceAccountName": "system-upgrade",
                    "affinity": {
                        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                            {"matchExpressions": [
                                {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"},
                                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}},
                        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                            {"labelSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name",
                                "operator": "In", "values": ["system-upgrade-controller"]}]},
                             "topologyKey": "kubernetes.io/hostname"}]}},
                    "tolerations": [
                        {"key": "CriticalAddonsOnly", "operator": "Exists"},
                        {"key": "node-role.kubernetes.io/master", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "node-role.kubernetes.io/controlplane", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
                        {"key": "node-role.kubernetes.io/etcd", "operator": "Exists", "effect": "NoExecute"}],
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534},
                    "containers": [{"name": "system-upgrade-controller", "image": image,
                        "imagePullPolicy": pull_policy,
                        "command": ["sleep", "3600"],
                        "envFrom": [{"configMapRef": {"name": "default-controller-env"}}]}]}}}})
}

/// Deletes the controller's Deployment (the Go controller's or this one's), waiting for it to go.
pub fn delete_deployment(ctx: &Ctx) {
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "delete",
        "deployment",
        "system-upgrade-controller",
        "--ignore-not-found",
        "--wait=true",
    ])
    .expect_ok();
}

/// The Go controller as its manifests leave a cluster, for this controller to replace: whatever
/// Deployment of the controller's name was there goes first (without our webhooks in the way).
pub fn install_go_controller(ctx: &Ctx, image: &str, pull_policy: &str) {
    delete_deployment(ctx);
    ctx.kubectl(&[
        "apply",
        "-f",
        &repo("deploy/namespace.yaml").display().to_string(),
    ])
    .expect_ok();
    for object in [
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "system-upgrade", "namespace": NAMESPACE}}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "default-controller-env", "namespace": NAMESPACE},
            "data": {"SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT": "99"}}),
        go_deployment(image, pull_policy),
    ] {
        ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()))
            .expect_ok();
    }
}

/// The README's migration: the Go controller's bindings go, then `kubectl apply -k` installs
/// this controller over it (`deploy/`, or an overlay of it).
pub fn migrate(ctx: &Ctx, kustomization: &str) {
    for args in [
        &[
            "delete",
            "clusterrolebinding",
            "system-upgrade",
            "system-upgrade-drainer",
            "--ignore-not-found",
        ][..],
        &[
            "-n",
            NAMESPACE,
            "delete",
            "rolebinding",
            "system-upgrade",
            "--ignore-not-found",
        ],
        &[
            "delete",
            "clusterrole",
            "system-upgrade-controller-drainer",
            "--ignore-not-found",
        ],
    ] {
        ctx.kubectl(args).expect_ok();
    }
    ctx.kubectl(&["apply", "-k", kustomization]).expect_ok();
}

/// The controller Deployment's pods that are not going away.
pub fn controller_pods(ctx: &Ctx) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    ctx.block_on(api.list(&ListParams::default().labels(CONTROLLER_PODS)))
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

pub fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn node_of(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// Waits until the Deployment's two replicas are ready (and no other of its pods is left),
/// each on one of `servers`; returns their nodes.
pub fn two_ready_replicas(ctx: &Ctx, servers: &[String], what: &str) -> Vec<String> {
    wait(what, 3 * MINUTE, || {
        let pods = controller_pods(ctx);
        let ready: Vec<String> = pods.iter().filter(|p| pod_ready(p)).map(node_of).collect();
        (pods.len() == 2 && ready.len() == 2).then_some(ready)
    })
    .into_iter()
    .inspect(|node| assert!(servers.contains(node), "a replica runs on {node}"))
    .collect()
}

/// `kubectl drain` of a server as an administrator or kured runs it; returns whether it ended.
pub fn drain(ctx: &Ctx, server: &str) -> bool {
    let out = ctx.kubectl(&[
        "drain",
        server,
        "--ignore-daemonsets",
        "--delete-emptydir-data",
        "--force",
        "--timeout=150s",
    ]);
    if !out.ok {
        eprintln!("kubectl drain {server}: {}", out.stderr);
    }
    out.ok
}

/// The migration, a drain and a cordon on a cluster whose servers are `servers` (the first
/// one is where the Go controller runs).
fn migrate_drain_and_cordon(ctx: &Ctx, servers: &[String]) {
    ctx.stop_server();
    let deploy = repo("deploy").display().to_string();
    install_go_controller(
        ctx,
        "rancher/system-upgrade-controller:v0.16.3",
        "IfNotPresent",
    );
    let go = wait("the Go controller's pod to run", MINUTE, || {
        let pods = controller_pods(ctx);
        (pods.len() == 1 && pod_ready(&pods[0])).then(|| node_of(&pods[0]))
    });
    assert!(servers.contains(&go), "the Go controller runs on {go}");

    // The README's migration: the Go pod goes first, then both replicas start.
    migrate(ctx, &deploy);
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "deployment/system-upgrade-controller",
        "--timeout=180s",
    ])
    .expect_ok();
    two_ready_replicas(ctx, servers, "both replicas of this controller to be ready");
    let images: Vec<String> = controller_pods(ctx)
        .iter()
        .map(|p| {
            p.spec.as_ref().unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect();
    assert!(
        images
            .iter()
            .all(|i| i.starts_with("system-upgrade-controller")),
        "the Go pod is gone: {images:?}"
    );

    // kubectl drain of the server the Go controller ran on (both replicas, with one server)
    // ends: each replica is evicted in turn under the budget and starts again where it can.
    assert!(drain(ctx, &go), "kubectl drain {go} did not end");
    let after_drain = two_ready_replicas(ctx, servers, "both replicas ready after the drain");
    if servers.len() == 1 {
        assert_eq!(
            after_drain,
            [go.clone(), go.clone()],
            "back on the only server"
        );
    }

    // While that server stays cordoned, a replica that dies is replaced.
    let victim = controller_pods(ctx)
        .into_iter()
        .find(|p| node_of(p) == go)
        .or_else(|| controller_pods(ctx).into_iter().next())
        .unwrap();
    let victim = victim.metadata.name.unwrap();
    ctx.kubectl(&["-n", NAMESPACE, "delete", "pod", &victim, "--wait=true"])
        .expect_ok();
    two_ready_replicas(
        ctx,
        servers,
        "a deleted replica to be replaced on a cordoned cluster",
    );
    ctx.kubectl(&["uncordon", &go]).expect_ok();

    // The K3s server Plan (cordon, one server at a time), run by the suite's own server: a
    // replica on the server it cordons dies meanwhile and is replaced.
    ctx.ensure_server();
    let plan = format!("servers-{}", servers.len());
    let s = Scenario::new(ctx, &plan, 0);
    let label = format!("plan.upgrade.cattle.io/{plan}");
    for server in servers {
        ctx.kubectl(&["label", "node", server, &format!("{label}-")])
            .expect_ok();
    }
    s.apply_plan(
        &plan,
        json!({"concurrency": 1, "version": "v1.30.4+k3s1", "cordon": true,
            "nodeSelector": {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
            "upgrade": {"image": "rancher/k3s-upgrade"}}),
        json!({"annotations": {"suc-test/duration": "8s"}}),
    );
    let cordoned = wait("a server cordoned by its Plan", MINUTE, || {
        servers.iter().find(|n| s.unschedulable(n)).cloned()
    });
    if let Some(victim) = controller_pods(ctx)
        .into_iter()
        .find(|p| node_of(p) == cordoned)
        .and_then(|p| p.metadata.name)
    {
        ctx.kubectl(&["-n", NAMESPACE, "delete", "pod", &victim, "--wait=true"])
            .expect_ok();
    }
    two_ready_replicas(
        ctx,
        servers,
        "replicas ready while a server Plan cordons a server",
    );
    s.wait_condition(&plan, "Complete", "True", "Complete", 3 * MINUTE);
    assert!(
        servers.iter().all(|n| !s.unschedulable(n)),
        "a server left cordoned"
    );
    s.delete_plan(&plan);

    // Leave the suite's own server in charge again.
    delete_deployment(ctx);
    ctx.ensure_server();
}

/// One K3s server and agents: the test bed's own shape.
pub fn the_controller_survives_migration_drain_and_cordon_on_one_server(ctx: &Ctx) {
    migrate_drain_and_cordon(ctx, &["server-1".to_owned()]);
}

/// Three K3s servers: two more join the test bed's one for this test.
pub fn the_controller_survives_migration_drain_and_cordon_on_three_servers(ctx: &Ctx) {
    let s = Scenario::new(ctx, "srv", 2);
    for node in &s.nodes {
        ctx.kubectl(&[
            "label",
            "node",
            node,
            "node-role.kubernetes.io/control-plane=true",
            "node-role.kubernetes.io/master=true",
            "node-role.kubernetes.io/etcd=true",
        ])
        .expect_ok();
    }
    let mut servers = vec!["server-1".to_owned()];
    servers.extend(s.nodes.iter().cloned());
    migrate_drain_and_cordon(ctx, &servers);
}
