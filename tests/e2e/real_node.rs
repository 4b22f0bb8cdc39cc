//! On a real node (`cluster.sh up --real-node`): the controller installed from its image with
//! `kubectl apply -k`, and upgrade Jobs whose containers really run on a kubelet.
//!
//! The node, `real-server`, is labelled like a K3s server, so the Deployment's replicas run there;
//! the simulated nodes are agents. Its containerd holds images built on this machine: the
//! controller's and `suc-busybox` (busybox's `sh`, `grep`, `sleep`, tags `v1.0.0` and `v1.1.0`).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::ListParams;
use kube::runtime::watcher;
use serde_json::json;
use system_upgrade_controller::api::ANNOTATION_DRAINED;

use crate::scenario::{JobWatch, Scenario, assert_rollout_kept_its_promises};
use crate::servers;
use crate::support::{Ctx, NAMESPACE, client_builder_trusting, path, repo, wait};

pub const REAL_NODE: &str = "real-server";
const DEPLOYMENT: &str = "deployment/system-upgrade-controller";
const SERVICE_HOST: &str = "system-upgrade-controller.system-upgrade.svc";
const CONTROLLER_PODS: &str = "app.kubernetes.io/name=system-upgrade-controller";

/// Installs deploy/ (with the no-registry overlay) and waits until both replicas are Ready and one
/// holds the Lease. Idempotent, so every test can run alone.
fn install(ctx: &Ctx) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    assert!(
        ctx.block_on(nodes.get_opt(REAL_NODE)).unwrap().is_some(),
        "this cluster has no node {REAL_NODE}: start one with `tests/cluster/cluster.sh up --real-node`"
    );
    let overlay = repo("tests/cluster/real-node-deploy");
    ctx.kubectl(&["apply", "-k", path(&overlay)]).expect_ok();
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        DEPLOYMENT,
        "--timeout=180s",
    ])
    .expect_ok();
    wait("a leader", Duration::from_secs(60), || leader(ctx));
}

fn controller_pods(ctx: &Ctx) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let pods = ctx
        .block_on(api.list(&ListParams::default().labels(CONTROLLER_PODS)))
        .unwrap();
    pods.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod named by the Lease's holder (`<pod>_<n>`), if it is one of the controller's pods.
fn leader(ctx: &Ctx) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let lease = ctx
        .block_on(api.get_opt("system-upgrade-controller"))
        .unwrap()?;
    let holder = lease.spec?.holder_identity?;
    let pod = holder.split('_').next()?.to_owned();
    controller_pods(ctx)
        .iter()
        .any(|p| p.metadata.name.as_deref() == Some(pod.as_str()))
        .then_some(pod)
}

/// Seconds since boot: the clock this machine and the node's containers share.
fn uptime() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// Two replicas from the locally built image run on the real node, one leads, the API server
/// reaches the webhook through the Service and is refused a bad Plan with our message, and
/// `/healthz` and `/metrics` answer through the Service with a certificate for its DNS name.
pub fn the_controller_runs_in_cluster_from_its_image(ctx: &Ctx) {
    install(ctx);
    let pods = controller_pods(ctx);
    assert_eq!(pods.len(), 2, "two replicas");
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.node_name.as_deref(), Some(REAL_NODE));
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some("system-upgrade-controller:0.1.0")
        );
        assert!(ready(pod), "{:?} is not Ready", pod.metadata.name);
    }
    let leader = leader(ctx).unwrap();
    eprintln!("real node: {leader} holds the Lease");

    // The API server calls the webhook through the Service (deploy/ names no URL).
    let config = ctx
        .kubectl(&[
            "get",
            "validatingwebhookconfiguration",
            "system-upgrade-controller",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.service.name}",
        ])
        .expect_ok();
    assert_eq!(config.stdout, "system-upgrade-controller");
    let bad = json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
        "metadata": {"name": "real-bad", "namespace": NAMESPACE},
        "spec": {"concurrency": -1, "serviceAccountName": "system-upgrade", "version": "v1.0.0",
            "nodeSelector": {}, "upgrade": {"image": "suc-busybox"}}});
    let refused = ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&bad.to_string()));
    assert!(!refused.ok, "a bad Plan was stored");
    assert!(
        refused.stderr.contains("denied the request")
            && refused
                .stderr
                .contains("spec.concurrency: must be at least 1"),
        "{}",
        refused.stderr
    );
    // The real kubelet reports its own version, which the version rules read: a K3s Plan that
    // would move the real node down to v1.30.4 is refused by the in-cluster webhook.
    let runs = ctx
        .kubectl(&[
            "get",
            "node",
            REAL_NODE,
            "-o",
            "jsonpath={.status.nodeInfo.kubeletVersion}",
        ])
        .expect_ok()
        .stdout;
    assert!(runs.starts_with("v1."), "the real kubelet reports {runs:?}");
    let down = json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
        "metadata": {"name": "real-down", "namespace": NAMESPACE},
        "spec": {"concurrency": 1, "version": "v1.30.4+k3s1", "upgrade": {"image": "rancher/k3s-upgrade"},
            "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": REAL_NODE}}}});
    let refused = ctx.kubectl_with_input(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&down.to_string()),
    );
    assert!(!refused.ok, "a downgrade of the real node was admitted");
    assert!(
        refused.stderr.contains(&format!(
            "spec.version: node {REAL_NODE} runs {}, newer than v1.30.4+k3s1",
            runs.trim()
        )),
        "{}",
        refused.stderr
    );

    // Through the Service's ClusterIP (kube-proxy's rules on this machine), trusting only the
    // controller's CA and checking the certificate's DNS name.
    let ca = ctx.wait_for_ca_bundles();
    let ip = ctx
        .kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "service",
            "system-upgrade-controller",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .expect_ok()
        .stdout;
    let address = std::net::SocketAddr::new(ip.trim().parse().unwrap(), 443);
    let client = client_builder_trusting(&ca)
        .resolve(SERVICE_HOST, address)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let healthz = client
        .get(format!("https://{SERVICE_HOST}/healthz"))
        .send()
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let metrics = client
        .get(format!("https://{SERVICE_HOST}/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    // The image was built from this checkout: its build info names this commit.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(repo("."))
        .output()
        .unwrap();
    let head = String::from_utf8(head.stdout).unwrap();
    let build_info = metrics
        .lines()
        .find(|l| l.starts_with("suc_build_info{"))
        .unwrap_or_else(|| panic!("no build info in:\n{metrics}"));
    assert!(
        build_info.contains(&format!("commit=\"{}", head.trim())),
        "{build_info} is not commit {head}"
    );
    assert!(metrics.contains("suc_leader"), "{metrics}");
}

/// A Plan with `prepare`, `drain` and an upgrade container on the real node: prepare runs while
/// the node keeps its workloads, then the node is cordoned and a Deployment's pod is evicted and
/// rescheduled on a simulated node, the gate opens, the upgrade writes a file on this machine
/// through `/host`, and the node is labelled and uncordoned; the Job's log shows each step.
pub fn a_plan_with_prepare_drain_and_upgrade_runs_on_the_real_node(ctx: &Ctx) {
    install(ctx);
    let plan = "real-drain";
    // No simulated nodes of its own: the scenario only removes the Plan before and after.
    let s = Scenario::new(ctx, plan, 0);
    // An earlier run's Jobs and pods go with its Plan; none may be mistaken for this run's.
    let job_pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), NAMESPACE);
    let plan_pods = ListParams::default().labels(&format!("upgrade.cattle.io/plan={plan}"));
    wait(
        "an earlier run's Jobs and pods to go",
        Duration::from_secs(60),
        || {
            let pods = ctx.block_on(job_pods_api.list(&plan_pods)).unwrap();
            (s.jobs(plan).is_empty() && pods.items.is_empty()).then_some(())
        },
    );
    // A node keeps the label of an earlier run, which would mark it done.
    forget_earlier_run(ctx, plan);
    let out = ctx.cluster.dir.join(plan);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let host_out = format!("/host{}", out.display());

    // A workload that prefers the real node, so it runs there until the drain moves it, with a
    // volume the drain then waits to see detached.
    crate::drain::remove_volume(ctx, "default", "real-data", "real-data-pv");
    crate::drain::bound_volume(ctx, "default", "real-data", "real-data-pv");
    let workload = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "real-workload", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "real-workload"}},
            "template": {"metadata": {"labels": {"app": "real-workload"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "preference": {"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [REAL_NODE]}]}}]}},
                    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "real-data"}}],
                    "containers": [{"name": "c", "image": "suc-busybox:v1.0.0",
                        "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"],
                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}}}});
    let delete_workload = |wait: &str| {
        ctx.kubectl(&[
            "-n",
            "default",
            "delete",
            "deployment",
            "real-workload",
            "--ignore-not-found",
            wait,
        ])
        .expect_ok();
    };
    // Fresh each run: an earlier run's drain left its pod on a simulated node.
    delete_workload("--wait=true");
    ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&workload.to_string()))
        .expect_ok();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), "default");
    let workload_pods = || {
        ctx.block_on(pods.list(&ListParams::default().labels("app=real-workload")))
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect::<Vec<_>>()
    };
    let on_real = wait(
        "the workload running on the real node",
        Duration::from_secs(60),
        || {
            workload_pods().into_iter().find(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(REAL_NODE)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            })
        },
    );
    let workload_uid = on_real.metadata.uid.clone().unwrap();

    // Watch the upgrade pod for the moment (seconds since boot) the gate's annotation lands.
    let opened_at: Arc<Mutex<Option<f64>>> = Arc::default();
    let job_pods = job_pods_api.clone();
    let shared = opened_at.clone();
    let config = watcher::Config::default().labels(&format!("upgrade.cattle.io/plan={plan}"));
    let gate_watch = ctx.runtime.spawn(async move {
        let mut stream = watcher::watcher(job_pods, config).boxed();
        while let Some(Ok(event)) = stream.next().await {
            if let watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) = event {
                let opened = pod
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(ANNOTATION_DRAINED));
                let mut first = shared.lock().unwrap();
                if opened && first.is_none() {
                    *first = Some(uptime());
                }
            }
        }
    });

    let spec = json!({"concurrency": 1, "serviceAccountName": "system-upgrade", "version": "v1.0.0",
        "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": REAL_NODE}},
        "prepare": {"image": "suc-busybox", "command": ["sh", "-c"],
            "args": ["echo \"prepare starts on $SYSTEM_UPGRADE_NODE_NAME\"; sleep 5; echo 'prepare done'"]},
        "drain": {"force": false, "timeout": "2m"},
        "upgrade": {"image": "suc-busybox", "command": ["sh", "-c"],
            "args": [format!("cat /proc/uptime > {host_out}/upgrade-started; \
                echo \"upgrade to $SYSTEM_UPGRADE_PLAN_LATEST_VERSION on $SYSTEM_UPGRADE_NODE_NAME\"; \
                echo \"$SYSTEM_UPGRADE_NODE_NAME $SYSTEM_UPGRADE_PLAN_LATEST_VERSION\" > {host_out}/marker; \
                echo 'marker written'")]}});
    // The workload's volume attached to the node, as a CSI driver's attacher would leave it.
    crate::drain::apply(
        ctx,
        crate::drain::attachment("real-data-va", REAL_NODE, "real-data-pv"),
    );
    // A look-alike of the gate's annotation, copied from the Plan to the pod: a gate that matched
    // it (dots read as any character) would let the upgrade start before the drain.
    s.apply_plan(
        plan,
        spec,
        json!({"annotations": {"upgrade-cattle-io/drained": "decoy"}}),
    );

    let cordoned = || s.unschedulable(REAL_NODE);
    // Prepare runs while the node is schedulable and the workload stays where it was.
    let upgrade_pod = || {
        ctx.block_on(job_pods_api.list(&plan_pods))
            .unwrap()
            .items
            .into_iter()
            .next()
    };
    wait(
        "prepare running on the real node",
        Duration::from_secs(90),
        || {
            let pod = upgrade_pod()?;
            let statuses = pod.status?.init_container_statuses?;
            statuses
                .iter()
                .any(|s| {
                    s.name == "prepare" && s.state.as_ref().is_some_and(|st| st.running.is_some())
                })
                .then_some(())
        },
    );
    assert!(!cordoned(), "cordoned while prepare ran");
    assert!(
        workload_pods()
            .iter()
            .any(|p| p.metadata.uid.as_deref() == Some(workload_uid.as_str())),
        "the workload moved while prepare ran"
    );

    // Then the cordon and the drain: the workload's pod is evicted and replaced on an agent.
    let mut saw_cordon = false;
    let moved = wait(
        "the workload rescheduled on a simulated node",
        Duration::from_secs(120),
        || {
            saw_cordon |= cordoned();
            workload_pods().into_iter().find(|p| {
                p.metadata.uid.as_deref() != Some(workload_uid.as_str())
                    && p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_deref())
                        .is_some_and(|n| n != REAL_NODE)
            })
        },
    );
    saw_cordon |= cordoned();
    assert!(saw_cordon, "the node was never cordoned");
    let moved_to = moved.spec.unwrap().node_name.unwrap();
    let evicted = format!(
        "Evicted: Evicted pod default/{} from node {REAL_NODE}",
        on_real.metadata.name.as_deref().unwrap()
    );
    let events = s.plan_events(plan);
    assert!(events.contains(&evicted), "no {evicted:?} in {events:#?}");

    // The pod is gone but its volume is still attached: the upgrade waits, and says why.
    let detach = format!(
        "waiting for volume real-data-pv (driver.longhorn.io) to detach from node {REAL_NODE}"
    );
    wait(
        "the drain to wait for the volume",
        Duration::from_secs(60),
        || {
            let plan = s.plan_json(plan);
            let message = plan["status"]["nodes"][0]["message"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            message.contains(&detach).then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        opened_at.lock().unwrap().is_none(),
        "the gate opened with the volume attached"
    );
    assert!(
        !out.join("marker").exists(),
        "the upgrade ran with the volume attached"
    );
    ctx.kubectl(&["delete", "volumeattachment", "real-data-va"])
        .expect_ok();

    // The upgrade ran on the node: its file is on this machine.
    let marker = wait(
        "the upgrade's marker file",
        Duration::from_secs(120),
        || std::fs::read_to_string(out.join("marker")).ok(),
    );
    assert_eq!(marker.trim(), format!("{REAL_NODE} v1.0.0"));

    s.wait_condition(
        plan,
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(120),
    );
    let hash = s.plan_json(plan)["status"]["latestHash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.node_label(REAL_NODE, &format!("plan.upgrade.cattle.io/{plan}")),
        Some(hash)
    );
    assert!(!cordoned(), "the node was left cordoned");

    // The Job's log, container by container in the order they ran: prepare, the gate waiting
    // and opening, the upgrade. (`kubectl logs --all-containers` does not keep that order.)
    let pod = upgrade_pod().unwrap().metadata.name.unwrap();
    let logs: String = ["prepare", "drain", "upgrade"]
        .iter()
        .map(|container| {
            ctx.kubectl(&["-n", NAMESPACE, "logs", &pod, "-c", container])
                .expect_ok()
                .stdout
        })
        .collect();
    let steps = [
        "prepare starts on real-server",
        "prepare done",
        "waiting for the controller to prepare node real-server",
        "node ready; the upgrade starts",
        "upgrade to v1.0.0 on real-server",
        "marker written",
    ];
    let mut from = 0;
    for step in steps {
        let at = logs[from..]
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} missing or out of order in:\n{logs}"));
        from += at + step.len();
    }

    // The gate's latency: annotation seen by our watch → upgrade container running (one clock).
    let started: f64 = std::fs::read_to_string(out.join("upgrade-started"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let opened = opened_at
        .lock()
        .unwrap()
        .expect("the watch saw the gate open");
    gate_watch.abort();
    let latency = started - opened;
    eprintln!(
        "real node: gate latency {latency:.2}s (drained annotation → upgrade running); workload moved to {moved_to}"
    );
    assert!(latency > 0.0, "the upgrade started before the gate opened");

    delete_workload("--wait=true");
    crate::drain::remove_volume(ctx, "default", "real-data", "real-data-pv");
    s.delete_plan(plan);
}

/// The leading replica's pod is force-deleted mid-rollout: the other replica takes the Lease and
/// finishes, never running more nodes at once than the Plan's concurrency or a node twice.
pub fn the_leader_pod_killed_mid_rollout_hands_over(ctx: &Ctx) {
    install(ctx);
    let s = Scenario::new(ctx, "real-ha", 6);
    let watch = JobWatch::start(ctx, "real-ha");
    s.apply_plan(
        "real-ha",
        json!({"concurrency": 2, "serviceAccountName": "system-upgrade", "version": "v1.0.0",
            "upgrade": {"image": "suc-busybox"}}),
        json!({"annotations": {"suc-test/duration": "3s"}}),
    );
    wait("two nodes done", Duration::from_secs(120), || {
        (s.labelled("real-ha") >= 2).then_some(())
    });
    let old = leader(ctx).unwrap();
    let killed_at = Instant::now();
    let new = kill_leader(ctx);
    let took_over = killed_at.elapsed();
    s.wait_condition(
        "real-ha",
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(180),
    );
    eprintln!("real node: {new} led {took_over:?} after {old} was force-deleted");
    assert_rollout_kept_its_promises(&s, &watch, 2);
    let survivors: BTreeSet<String> = controller_pods(ctx)
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert!(
        survivors.contains(&new),
        "{new} is not running: {survivors:?}"
    );
    s.delete_plan("real-ha");
}

/// Forgets that the real node ran `plan` before (a kept cluster's earlier run labelled it).
fn forget_earlier_run(ctx: &Ctx, plan: &str) {
    ctx.kubectl(&[
        "label",
        "node",
        REAL_NODE,
        &format!("plan.upgrade.cattle.io/{plan}-"),
    ])
    .expect_ok();
}

/// Kills the leading replica's pod at once; returns the pod that leads next.
fn kill_leader(ctx: &Ctx) -> String {
    let old = wait("a leader", Duration::from_secs(60), || leader(ctx));
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        &old,
        "--force",
        "--grace-period=0",
    ])
    .expect_ok();
    wait("another replica to lead", Duration::from_secs(90), || {
        leader(ctx).filter(|l| *l != old)
    })
}

/// The API server reaches a replica through the Service and is refused a bad Plan with our
/// message.
fn webhook_answers(ctx: &Ctx) {
    let bad = json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
        "metadata": {"name": "real-bad", "namespace": NAMESPACE},
        "spec": {"concurrency": -1, "version": "v1.0.0", "nodeSelector": {}, "upgrade": {"image": "suc-busybox"}}});
    let refused = wait(
        "the webhook to answer through the Service",
        Duration::from_secs(60),
        || {
            let out = ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&bad.to_string()));
            (!out.ok && out.stderr.contains("denied the request")).then_some(out.stderr)
        },
    );
    assert!(
        refused.contains("spec.concurrency: must be at least 1"),
        "{refused}"
    );
}

/// The usual K3s cluster, one server: the Go controller's Deployment (its v0.14+ shape, a
/// required anti-affinity on its app label) is replaced in place by the README's commands, both
/// replicas of this controller start on that one server from its image, one leads, and the
/// webhook answers.
pub fn the_go_controllers_deployment_is_replaced_on_the_only_server(ctx: &Ctx) {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    assert!(
        ctx.block_on(nodes.get_opt(REAL_NODE)).unwrap().is_some(),
        "this cluster has no node {REAL_NODE}"
    );
    servers::install_go_controller(ctx, "suc-busybox:v1.0.0", "IfNotPresent");
    wait(
        "the Go controller's pod to run on the server",
        Duration::from_secs(90),
        || {
            let pods = servers::controller_pods(ctx);
            (pods.len() == 1
                && servers::pod_ready(&pods[0])
                && pods[0].spec.as_ref()?.node_name.as_deref() == Some(REAL_NODE))
            .then_some(())
        },
    );
    servers::migrate(ctx, path(&repo("tests/cluster/real-node-deploy")));
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        DEPLOYMENT,
        "--timeout=180s",
    ])
    .expect_ok();
    servers::two_ready_replicas(ctx, &[REAL_NODE.to_owned()], "both replicas ready");
    for pod in controller_pods(ctx) {
        assert_eq!(
            pod.spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some("system-upgrade-controller:0.1.0"),
            "the Go pod is gone"
        );
    }
    wait("a leader", Duration::from_secs(60), || leader(ctx));
    webhook_answers(ctx);
}

/// Upgrades that really fail on a kubelet: a container that exits non-zero until the Job's
/// deadline ends it (the node stays cordoned, the Plan says JobFailed) and is retried by request
/// once fixed; a drain a PodDisruptionBudget blocks (DrainFailed, the node left cordoned) that
/// an edit to `onTimeout: Skip` gives up, returning the node.
pub fn upgrades_that_really_fail_are_reported_and_retried_on_the_real_node(ctx: &Ctx) {
    install(ctx);
    let plan = "real-fail";
    let s = Scenario::new(ctx, plan, 0);
    forget_earlier_run(ctx, plan);
    let dir = ctx.cluster.dir.join(plan);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fixed = format!("/host{}/fixed", dir.display());
    let spec = json!({"concurrency": 1, "serviceAccountName": "system-upgrade", "version": "v1.0.0",
        "cordon": true, "jobActiveDeadlineSecs": 25,
        "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": REAL_NODE}},
        "upgrade": {"image": "suc-busybox", "command": ["sh", "-c"],
            "args": [format!("if [ -f {fixed} ]; then echo upgraded; else echo 'the upgrade fails'; exit 3; fi")]}});
    s.apply_plan(plan, spec, json!({}));
    let message = s.wait_condition(
        plan,
        "Complete",
        "False",
        "JobFailed",
        Duration::from_secs(120),
    );
    assert!(
        message.contains(&format!("failed on Node {REAL_NODE}")),
        "{message}"
    );
    assert!(s.unschedulable(REAL_NODE), "a failed node stays cordoned");
    assert!(
        s.plan_events(plan)
            .iter()
            .any(|e| e.starts_with("JobFailed")),
        "{:?}",
        s.plan_events(plan)
    );
    // Fixed on the node, retried by request: it runs again, succeeds, and is returned.
    std::fs::write(dir.join("fixed"), "yes").unwrap();
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "annotate",
        "plan",
        plan,
        "upgrade.cattle.io/retry=all",
    ])
    .expect_ok();
    s.wait_condition(
        plan,
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(120),
    );
    assert!(!s.unschedulable(REAL_NODE), "left cordoned after success");
    s.delete_plan(plan);

    // A drain a budget blocks: a workload that can run only on this node, and a budget that
    // allows no disruption of it.
    let plan = "real-pdb";
    let s = Scenario::new(ctx, plan, 0);
    forget_earlier_run(ctx, plan);
    let workload = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "real-pinned", "namespace": "default"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "real-pinned"}},
            "template": {"metadata": {"labels": {"app": "real-pinned"}},
                "spec": {"terminationGracePeriodSeconds": 1,
                    "nodeSelector": {"kubernetes.io/hostname": REAL_NODE},
                    "containers": [{"name": "c", "image": "suc-busybox:v1.0.0",
                        "imagePullPolicy": "IfNotPresent", "command": ["sleep", "3600"]}]}}}});
    let budget = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "real-pinned", "namespace": "default"},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "real-pinned"}}}});
    for object in [&workload, &budget] {
        ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()))
            .expect_ok();
    }
    ctx.kubectl(&[
        "-n",
        "default",
        "rollout",
        "status",
        "deployment/real-pinned",
        "--timeout=90s",
    ])
    .expect_ok();
    let spec = json!({"concurrency": 1, "serviceAccountName": "system-upgrade", "version": "v1.0.0",
        "drain": {"timeout": "15s"},
        "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": REAL_NODE}},
        "upgrade": {"image": "suc-busybox", "command": ["sh", "-c"], "args": ["echo upgraded"]}});
    s.apply_plan(plan, spec.clone(), json!({}));
    let message = s.wait_condition(
        plan,
        "Complete",
        "False",
        "DrainFailed",
        Duration::from_secs(120),
    );
    assert!(
        message.contains("blocked by PodDisruptionBudget default/real-pinned"),
        "{message}"
    );
    assert!(
        s.unschedulable(REAL_NODE),
        "a failed drain leaves the node cordoned"
    );
    // The docs' advice after a failed drain: give such a node up with onTimeout: Skip.
    let mut skip = spec;
    skip["drain"]["onTimeout"] = json!("Skip");
    s.apply_plan(plan, skip, json!({}));
    s.wait_condition(
        plan,
        "Complete",
        "False",
        "DrainSkipped",
        Duration::from_secs(120),
    );
    wait(
        "the skipped node to be returned",
        Duration::from_secs(30),
        || (!s.unschedulable(REAL_NODE)).then_some(()),
    );
    s.delete_plan(plan);
    for kind in ["deployment", "poddisruptionbudget"] {
        ctx.kubectl(&[
            "-n",
            "default",
            "delete",
            kind,
            "real-pinned",
            "--ignore-not-found",
            "--wait=false",
        ])
        .expect_ok();
    }
}

/// The one server drained, cordoned, and upgraded by a server Plan with `cordon: true`: `kubectl
/// drain` ends with both replicas back beside it, a leader that dies while the server is cordoned
/// is replaced there, and the server Plan finishes (and uncordons the server) after its leader
/// died mid-upgrade.
pub fn the_only_server_drained_cordoned_and_upgraded_keeps_its_controller(ctx: &Ctx) {
    install(ctx);
    let servers = [REAL_NODE.to_owned()];
    assert!(
        servers::drain(ctx, REAL_NODE),
        "kubectl drain {REAL_NODE} did not end"
    );
    servers::two_ready_replicas(ctx, &servers, "both replicas back on the drained server");
    webhook_answers(ctx);
    kill_leader(ctx);
    servers::two_ready_replicas(
        ctx,
        &servers,
        "a dead replica replaced on the cordoned server",
    );
    // kube-proxy may still send a Service connection to the dead replica for a moment.
    webhook_answers(ctx);
    ctx.kubectl(&["uncordon", REAL_NODE]).expect_ok();

    // The K3s server Plan's shape: cordon, no drain, the only server.
    let plan = "real-server-plan";
    let s = Scenario::new(ctx, plan, 0);
    forget_earlier_run(ctx, plan);
    s.apply_plan(
        plan,
        json!({"concurrency": 1, "serviceAccountName": "system-upgrade", "version": "v1.0.0", "cordon": true,
            "nodeSelector": {"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
            "upgrade": {"image": "suc-busybox", "command": ["sh", "-c"], "args": ["sleep 20; echo upgraded"]}}),
        json!({}),
    );
    wait(
        "the server cordoned by its Plan, its upgrade running",
        Duration::from_secs(90),
        || {
            let phase = s.plan_json(plan)["status"]["nodes"][0]["phase"].clone();
            (s.unschedulable(REAL_NODE) && phase == "Upgrading").then_some(())
        },
    );
    // Its leader dies while the only server is cordoned: another replica leads and finishes.
    kill_leader(ctx);
    s.wait_condition(
        plan,
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(180),
    );
    assert!(
        !s.unschedulable(REAL_NODE),
        "the only server was left cordoned"
    );
    servers::two_ready_replicas(ctx, &servers, "both replicas ready after the upgrade");
    s.delete_plan(plan);
}
