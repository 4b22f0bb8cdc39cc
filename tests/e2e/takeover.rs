//! Taking over from the Go controller, and the safety rules a takeover leans on: a cluster set
//! up as the Go controller leaves it (its Deployment, bindings and CRD, labelled nodes, a running
//! and a failed Job of its shape, cordoned nodes) migrated with the README's commands; the Go
//! CRD without `status.nodes`; a Job name held by another controller; finished Jobs handled while
//! a Plan is invalid; Job settings that follow the Plan in place.

use std::time::Duration;

use serde_json::{Value, json};
use system_upgrade_controller::api::Plan;
use system_upgrade_controller::controller::{hash, job};

use crate::scenario::{JobWatch, SCENARIO_LABEL, Scenario};
use crate::support::{Ctx, JOB_SERVICE_ACCOUNT, NAMESPACE, Server, repo, wait, wait_with_log};

const MINUTE: Duration = Duration::from_secs(60);
const VERSION: &str = "v1.30.4+k3s1";

fn apply(ctx: &Ctx, object: &Value) {
    ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()))
        .expect_ok();
}

/// The hash the Go controller computes for a Plan spec (version and service account; no digest
/// annotation, no Secrets), from this crate's Go-compatible hash.
fn go_hash(spec: &Value) -> String {
    let plan: Plan = serde_json::from_value(json!({
        "metadata": {"name": "x"}, "spec": spec,
        "status": {"latestVersion": VERSION.replace('+', "-")},
    }))
    .unwrap();
    hash::plan_hash(&hash::go_shape(&plan), &[])
}

/// The Plan CRD as the Go controller installs it: this controller's without `status.nodes`.
fn go_crd() -> Value {
    crd_without(&["status"])
}

/// This controller's Plan CRD without the named fields of `status` and `spec`.
fn crd_without(parts: &[&str]) -> Value {
    let text = std::fs::read_to_string(repo("deploy/crd.yaml")).unwrap();
    let mut crd = system_upgrade_controller::yaml::documents(&text)
        .unwrap()
        .remove(0);
    for version in crd["spec"]["versions"].as_array_mut().unwrap() {
        let schema = &mut version["schema"]["openAPIV3Schema"]["properties"];
        if parts.contains(&"status") {
            schema["status"]["properties"]
                .as_object_mut()
                .unwrap()
                .remove("nodes");
        }
        if parts.contains(&"spec") {
            schema["spec"]["properties"]
                .as_object_mut()
                .unwrap()
                .remove("paused");
        }
    }
    crd
}

fn install_go_crd(ctx: &Ctx) {
    ctx.kubectl_with_input(&["replace", "-f", "-"], Some(&go_crd().to_string()))
        .expect_ok();
    wait_crd_nodes(ctx, false);
}

/// Waits until the served CRD has (or lacks) `status.nodes`.
fn wait_crd_nodes(ctx: &Ctx, present: bool) {
    wait("the Plan CRD to change", MINUTE, || {
        let out = ctx.kubectl(&["get", "crd", "plans.upgrade.cattle.io", "-o", "json"]);
        let crd: Value = serde_json::from_str(&out.expect_ok().stdout).unwrap();
        let has = system_upgrade_controller::controller::crd_has_node_status(&crd)?;
        (has == present).then_some(())
    });
}

/// A Job as the Go controller creates it for a node: its labels, owner and TTL annotation, no
/// template digest, a `cordon` init container running kubectl, the upgrade container.
fn go_job(
    plan: &str,
    plan_uid: &str,
    node: &str,
    hostname: &str,
    hash: &str,
    fate: &Value,
) -> Value {
    let mut labels = json!({
        "upgrade.cattle.io/controller": "system-upgrade-controller",
        "upgrade.cattle.io/plan": plan,
        "upgrade.cattle.io/node": node,
        "upgrade.cattle.io/version": VERSION.replace('+', "-"),
        "upgrade.cattle.io/exclusive": "false",
        format!("plan.upgrade.cattle.io/{plan}"): hash,
    });
    let mut pod_labels = labels.clone();
    for (k, v) in fate["labels"].as_object().into_iter().flatten() {
        pod_labels[k] = v.clone();
    }
    labels["upgrade.cattle.io/controller"] = json!("system-upgrade-controller");
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": job::job_name(plan, node, hash), "namespace": NAMESPACE, "labels": labels,
            "annotations": {"upgrade.cattle.io/ttl-seconds-after-finished": "900"},
            "ownerReferences": [{"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan", "name": plan, "uid": plan_uid,
                "controller": true, "blockOwnerDeletion": false}],
        },
        "spec": {
            "completions": 1, "parallelism": 1, "backoffLimit": 0, "activeDeadlineSeconds": 900,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": fate["annotations"]},
                "spec": {
                    "restartPolicy": "Never", "hostPID": true, "hostIPC": true, "hostNetwork": true,
                    "serviceAccountName": "system-upgrade",
                    "tolerations": [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": [hostname]}]}]}}},
                    "initContainers": [{"name": "cordon", "image": "rancher/kubectl:v1.30.3", "args": ["cordon", node]}],
                    "containers": [{"name": "upgrade", "image": format!("rancher/k3s-upgrade:{}", VERSION.replace('+', "-"))}],
                },
            },
        },
    })
}

/// The objects of a Go controller install (its v0.6-era manifest and the later split RBAC):
/// ServiceAccount `system-upgrade` bound to cluster-admin and to the drainer role, its
/// ConfigMap, and its Deployment (selector `upgrade.cattle.io/controller`, Recreate).
fn go_install() -> Vec<Value> {
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "system-upgrade", "namespace": NAMESPACE}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system-upgrade"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "system-upgrade", "namespace": NAMESPACE}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system-upgrade-controller-drainer"},
            "rules": [{"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]},
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system-upgrade-drainer"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system-upgrade-controller-drainer"},
            "subjects": [{"kind": "ServiceAccount", "name": "system-upgrade", "namespace": NAMESPACE}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "system-upgrade-controller", "namespace": NAMESPACE},
            "rules": [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete", "get", "list", "watch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "system-upgrade", "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "system-upgrade-controller"},
            "subjects": [{"kind": "ServiceAccount", "name": "system-upgrade", "namespace": NAMESPACE}]}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "default-controller-env", "namespace": NAMESPACE},
            "data": {"SYSTEM_UPGRADE_CONTROLLER_DEBUG": "false", "SYSTEM_UPGRADE_CONTROLLER_THREADS": "2",
                "SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS": "900", "SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT": "99",
                "SYSTEM_UPGRADE_JOB_IMAGE_PULL_POLICY": "Always", "SYSTEM_UPGRADE_JOB_KUBECTL_IMAGE": "rancher/kubectl:v1.30.3",
                "SYSTEM_UPGRADE_JOB_PRIVILEGED": "true", "SYSTEM_UPGRADE_JOB_TTL_SECONDS_AFTER_FINISH": "900",
                "SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL": "15m"}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "system-upgrade-controller", "namespace": NAMESPACE},
            "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                "selector": {"matchLabels": {"upgrade.cattle.io/controller": "system-upgrade-controller"}},
                "template": {"metadata": {"labels": {"upgrade.cattle.io/controller": "system-upgrade-controller"}},
                    "spec": {"serviceAccountName": "system-upgrade",
                        "containers": [{"name": "system-upgrade-controller", "image": "rancher/system-upgrade-controller:v0.16.0",
                            "envFrom": [{"configMapRef": {"name": "default-controller-env"}}]}]}}}}),
    ]
}

/// Removes what this suite installed that a Go install does not have: our webhook
/// configurations and the bindings and roles of this controller's deploy/.
fn remove_our_install(ctx: &Ctx) {
    for args in [
        &[
            "delete",
            "mutatingwebhookconfiguration,validatingwebhookconfiguration",
            "system-upgrade-controller",
            "--ignore-not-found",
        ][..],
        &[
            "delete",
            "clusterrolebinding",
            "system-upgrade-controller",
            "system-upgrade",
            "--ignore-not-found",
        ],
        &[
            "delete",
            "clusterrole",
            "system-upgrade",
            "--ignore-not-found",
        ],
        &[
            "-n",
            NAMESPACE,
            "delete",
            "rolebinding",
            "system-upgrade-controller",
            "system-upgrade",
            "--ignore-not-found",
        ],
        &[
            "-n",
            NAMESPACE,
            "delete",
            "role",
            "system-upgrade",
            "--ignore-not-found",
        ],
        &[
            "-n",
            NAMESPACE,
            "delete",
            "deployment",
            "system-upgrade-controller",
            "--ignore-not-found",
        ],
    ] {
        ctx.kubectl(args).expect_ok();
    }
}

fn can_as(ctx: &Ctx, account: &str, args: &[&str]) -> bool {
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    full.extend_from_slice(&["--as", account]);
    ctx.kubectl(&full).stdout.trim() == "yes"
}

/// A cluster the Go controller ran until now: nodes it upgraded, one it is upgrading (its Job
/// runs, its kubectl cordoned the node, `applying` names the node's hostname), one it failed on
/// (left cordoned), one an administrator cordoned, one waiting. The README's commands migrate
/// it; this controller then finishes the rollout: no node runs twice, the cordons the Go Jobs
/// made are returned, the administrator's stays, a spec edit retries the failed node.
pub fn a_go_controller_install_is_taken_over(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.stop_server();
    let s = Scenario::new(ctx, "mig", 5);
    let [done, running, failed, admin, waiting] = [0, 1, 2, 3, 4].map(|i| s.nodes[i].clone());
    let running_host = format!("{running}-host");
    ctx.kubectl(&[
        "label",
        "node",
        &running,
        &format!("kubernetes.io/hostname={running_host}"),
        "--overwrite",
    ])
    .expect_ok();

    // The Go controller's install and CRD.
    remove_our_install(ctx);
    install_go_crd(ctx);
    for object in go_install() {
        apply(ctx, &object);
    }

    // Its Plan, stored without a webhook, and the status it wrote.
    let spec = json!({
        "concurrency": 2, "version": VERSION, "serviceAccountName": "system-upgrade", "cordon": true,
        "nodeSelector": {"matchLabels": {SCENARIO_LABEL: "mig"}},
        "upgrade": {"image": "rancher/k3s-upgrade"},
    });
    let hash = go_hash(&spec);
    s.apply_plan("mig", spec.clone(), json!({}));
    let plan_uid = s.plan("mig").unwrap().metadata.uid.unwrap();
    let label = "plan.upgrade.cattle.io/mig";
    ctx.kubectl(&["label", "node", &done, &format!("{label}={hash}")])
        .expect_ok();
    for node in [&running, &failed, &admin] {
        ctx.kubectl(&["cordon", node]).expect_ok();
    }
    let watch = JobWatch::start(ctx, "mig");
    apply(
        ctx,
        &go_job(
            "mig",
            &plan_uid,
            &running,
            &running_host,
            &hash,
            &json!({"annotations": {"suc-test/duration": "45s"}}),
        ),
    );
    apply(
        ctx,
        &go_job(
            "mig",
            &plan_uid,
            &failed,
            &failed,
            &hash,
            &json!({"labels": {"suc-test/fail": "true"}, "annotations": {"suc-test/duration": "1s"}}),
        ),
    );
    let go_status = json!({"status": {
        "latestVersion": VERSION.replace('+', "-"), "latestHash": hash, "applying": [failed, running_host],
        "conditions": [{"type": "Complete", "status": "False", "reason": "JobFailed", "lastUpdateTime": "2026-11-26T10:00:00Z"},
            {"type": "Validated", "status": "True", "reason": "PlanIsValid", "lastUpdateTime": "2026-11-26T10:00:00Z"},
            {"type": "LatestResolved", "status": "True", "reason": "Version", "lastUpdateTime": "2026-11-26T10:00:00Z"}]}});
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "plan",
        "mig",
        "--subresource=status",
        "--type=merge",
        "-p",
        &go_status.to_string(),
    ])
    .expect_ok();
    let failed_job = job::job_name("mig", &failed, &hash);
    let running_job = job::job_name("mig", &running, &hash);
    wait("the Go Job of the failed node to fail", MINUTE, || {
        let out = ctx.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "job",
            &failed_job,
            "-o",
            "jsonpath={.status.failed}",
        ]);
        (out.stdout.trim() == "1").then_some(())
    });
    wait("the Go Job's upgrade to run", MINUTE, || {
        let out = ctx.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "pods",
            "-l",
            &format!("job-name={running_job}"),
            "-o",
            "jsonpath={.items[0].status.phase}",
        ]);
        (out.stdout.trim() == "Running").then_some(())
    });

    // Applying over the Go install without the README's first step fails on the bindings whose
    // roleRef cannot change, so cluster-admin cannot silently stay with the Jobs' account.
    let refused = ctx.kubectl(&["apply", "-k", &repo("deploy").display().to_string()]);
    assert!(
        !refused.ok && refused.stderr.contains("cannot change roleRef"),
        "{}",
        refused.stderr
    );
    assert!(can_as(
        ctx,
        JOB_SERVICE_ACCOUNT,
        &["create", "jobs.batch", "-n", NAMESPACE]
    ));

    // The README's migration.
    crate::servers::migrate(ctx, &repo("deploy").display().to_string());
    wait_crd_nodes(ctx, true);
    for args in [
        &["create", "jobs.batch", "-n", NAMESPACE][..],
        &["patch", "nodes"],
        &["create", "pods", "--subresource=eviction", "-n", "default"],
        &["*", "*"],
    ] {
        assert!(
            !can_as(ctx, JOB_SERVICE_ACCOUNT, args),
            "the Jobs' account kept {args:?}"
        );
    }
    assert!(can_as(ctx, JOB_SERVICE_ACCOUNT, &["list", "nodes"]));
    let deployment = ctx
        .kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "deployment",
            "system-upgrade-controller",
            "-o",
            "json",
        ])
        .expect_ok();
    let deployment: Value = serde_json::from_str(&deployment.stdout).unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "system-upgrade-controller"
    );
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    assert!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .starts_with("system-upgrade-controller")
    );
    // The image is not runnable on simulated nodes: this test runs the controller itself.
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "scale",
        "deployment/system-upgrade-controller",
        "--replicas=0",
    ])
    .expect_ok();

    let server = Server::start(ctx, "takeover", &["--node-name", &done]);
    server.wait_ready();
    ctx.wait_for_ca_bundles();

    // The running Go Job is adopted, not killed; its node is named by node name now.
    wait_with_log("the Go Job to be adopted", MINUTE, &server.log, || {
        let out = ctx.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "job",
            &running_job,
            "-o",
            "jsonpath={.metadata.annotations.upgrade\\.cattle\\.io/adopted}",
        ]);
        (!out.stdout.trim().is_empty()).then_some(())
    });
    let applying = s.plan_json("mig")["status"]["applying"].clone();
    assert!(
        applying.as_array().unwrap().contains(&json!(running)),
        "{applying}"
    );
    // The failed node holds its slot and is reported once.
    let message = s.wait_condition("mig", "Complete", "False", "JobFailed", MINUTE);
    assert!(message.contains(&failed_job), "{message}");
    // Its Job succeeds: labelled with the hash and uncordoned (its kubectl had cordoned it).
    wait_with_log(
        "the adopted Job's node to be labelled and uncordoned",
        2 * MINUTE,
        &server.log,
        || {
            (s.node_label(&running, label).as_deref() == Some(hash.as_str())
                && !s.unschedulable(&running))
            .then_some(())
        },
    );
    // The freed slot goes to the waiting nodes, one after the other (the failed one holds the
    // other slot); the administrator's cordon stays.
    wait_with_log(
        "the waiting nodes to be done",
        2 * MINUTE,
        &server.log,
        || {
            [&admin, &waiting]
                .iter()
                .all(|n| s.node_label(n, label).as_deref() == Some(hash.as_str()))
                .then_some(())
        },
    );
    assert!(
        s.unschedulable(&admin),
        "an administrator's cordon was lifted"
    );
    assert!(s.node_label(&failed, label).is_none());
    let job_failed_events = s
        .plan_events("mig")
        .iter()
        .filter(|e| e.starts_with("JobFailed"))
        .count();
    assert_eq!(job_failed_events, 1);

    // One edit of the Plan retries the failed node with this controller's Job.
    let mut edited = spec.clone();
    edited["upgrade"]["args"] = json!(["--retry"]);
    s.apply_plan("mig", edited, json!({}));
    s.wait_condition("mig", "Complete", "True", "Complete", 2 * MINUTE);
    assert_eq!(s.node_label(&failed, label).as_deref(), Some(hash.as_str()));
    assert!(
        !s.unschedulable(&failed),
        "the failed Go Job's cordon was not returned"
    );
    assert!(!s.unschedulable(&running));

    // Nothing ran twice: the done node got no Job, the adopted one only the Go Job.
    let per_node = watch.jobs_per_node();
    assert_eq!(per_node.get(&done), None, "{per_node:?}");
    assert_eq!(per_node.get(&running), Some(&1), "{per_node:?}");
    assert_eq!(
        per_node.get(&failed),
        Some(&2),
        "the failed Go Job and the retry: {per_node:?}"
    );
    assert_eq!(per_node.get(&admin), Some(&1), "{per_node:?}");
    assert_eq!(per_node.get(&waiting), Some(&1), "{per_node:?}");
    assert!(watch.max_unfinished() <= 2, "{:?}", watch.worst_moment());

    // The controller says where it runs, on its node, as the Go controller does.
    let node_events = s.events("default", "Node", &done);
    assert!(
        node_events.iter().any(|e| e.starts_with("Starting: ")),
        "{node_events:?}"
    );
    assert!(
        node_events
            .iter()
            .any(|e| e.starts_with("Started: system-upgrade-controller ")),
        "{node_events:?}"
    );

    s.delete_plan("mig");
    ctx.kubectl(&["uncordon", &admin]).expect_ok();
    crate::servers::delete_deployment(ctx);
    drop(server);
    ctx.ensure_server();
}

/// A Go controller (or Rancher's) started again rewrites the CRD without this controller's
/// fields: this controller says so on each Plan (condition and event) and in `/readyz`, goes on
/// without the node entries, holds new starts while spec fields are missing (a pause stored
/// there would be lost), and still records each one-shot event once.
pub fn a_crd_without_node_status_is_reported_and_events_stay_one_shot(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.stop_server();
    let s = Scenario::new(ctx, "gocrd", 1);
    install_go_crd(ctx);
    let server = Server::start(ctx, "go-crd", &["--job-backoff-limit", "0"]);
    server.wait_ready();
    wait_with_log("the report of the Go CRD", MINUTE, &server.log, || {
        std::fs::read_to_string(&server.log)
            .unwrap()
            .contains("the Plan CRD in the cluster lacks status.nodes")
            .then_some(())
    });
    let readyz = || {
        let out = std::process::Command::new("curl")
            .args(["-sk", &format!("https://127.0.0.1:{}/readyz", server.port)])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let told = readyz();
    assert!(
        told.starts_with("ok\nwarning: the Plan CRD in the cluster lacks status.nodes"),
        "{told}"
    );
    let spec = json!({"concurrency": 1, "version": VERSION, "cordon": true, "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan("gocrd", spec, json!({"labels": {"suc-test/fail": "true"}}));
    s.wait_condition("gocrd", "Complete", "False", "JobFailed", MINUTE);
    assert!(s.plan_json("gocrd")["status"].get("nodes").is_none());
    let (status, reason, message) = s.condition("gocrd", "CRDCurrent").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("False", "CRDOutdated"));
    assert!(message.contains("lacks status.nodes"), "{message}");
    assert!(
        s.plan_events("gocrd")
            .iter()
            .any(|e| e.starts_with("CRDOutdated")),
        "{:?}",
        s.plan_events("gocrd")
    );
    // Nudge a few reconciles: node label changes wake every Plan.
    for i in 0..4 {
        ctx.kubectl(&[
            "label",
            "node",
            &s.nodes[0],
            &format!("suc-test/nudge={i}"),
            "--overwrite",
        ])
        .expect_ok();
        std::thread::sleep(Duration::from_secs(1));
    }
    let events = s.plan_events("gocrd");
    assert_eq!(
        events.iter().filter(|e| e.starts_with("JobFailed")).count(),
        1,
        "{events:?}"
    );
    let node_events = s.node_events(&s.nodes[0]);
    assert_eq!(
        node_events
            .iter()
            .filter(|e| e.starts_with("JobFailed"))
            .count(),
        1,
        "{node_events:?}"
    );
    // A CRD that lacks spec.paused too: the edit that would retry the node starts nothing.
    ctx.kubectl_with_input(
        &["replace", "-f", "-"],
        Some(&crd_without(&["status", "spec"]).to_string()),
    )
    .expect_ok();
    wait_with_log("the spec gap to be told", MINUTE, &server.log, || {
        let (_, _, message) = s.condition("gocrd", "CRDCurrent")?;
        message.contains("spec.paused").then_some(())
    });
    let fixed = json!({"concurrency": 1, "version": VERSION, "cordon": true, "upgrade": {"image": "rancher/k3s-upgrade", "args": ["--fixed"]}});
    s.apply_plan("gocrd", fixed.clone(), json!({}));
    s.wait_condition("gocrd", "Complete", "False", "CRDOutdated", MINUTE);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        s.jobs("gocrd").is_empty(),
        "a Job started while spec fields are dropped"
    );
    // This controller's CRD back: the node runs, and the condition and warning go.
    ctx.kubectl(&[
        "apply",
        "-f",
        &repo("deploy/crd.yaml").display().to_string(),
    ])
    .expect_ok();
    wait_crd_nodes(ctx, true);
    s.apply_plan("gocrd", fixed, json!({}));
    s.wait_condition("gocrd", "Complete", "True", "Complete", MINUTE);
    assert!(s.condition("gocrd", "CRDCurrent").is_none());
    assert_eq!(readyz(), "ok\n");
    s.delete_plan("gocrd");
    drop(server);
    ctx.ensure_server();
}

/// A Job of the name a node's upgrade needs, owned by another controller: reported on the Plan
/// (not swallowed), and the node runs once it is gone.
pub fn a_job_name_held_by_another_controller_is_reported(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "clash", 1);
    let node = s.nodes[0].clone();
    let spec = json!({"concurrency": 1, "version": VERSION, "upgrade": {"image": "rancher/k3s-upgrade"},
        "nodeSelector": {"matchLabels": {SCENARIO_LABEL: "nobody"}}});
    s.apply_plan("clash", spec.clone(), json!({}));
    let hash = wait("the Plan's hash", MINUTE, || {
        s.plan("clash")?.status?.latest_hash
    });
    let name = job::job_name("clash", &node, &hash);
    let foreign = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"upgrade.cattle.io/controller": "other"}},
        "spec": {"suspend": true, "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]}}}});
    apply(ctx, &foreign);
    let mut selecting = spec;
    selecting["nodeSelector"] = json!({"matchLabels": {SCENARIO_LABEL: "clash"}});
    s.apply_plan("clash", selecting, json!({}));
    let event = wait("the conflict to be reported", MINUTE, || {
        s.plan_events("clash")
            .into_iter()
            .find(|e| e.starts_with("JobConflict"))
    });
    assert!(
        event.contains(&name) && event.contains("controller \"other\""),
        "{event}"
    );
    ctx.kubectl(&["-n", NAMESPACE, "delete", "job", &name])
        .expect_ok();
    s.wait_condition("clash", "Complete", "True", "Complete", 2 * MINUTE);
    s.delete_plan("clash");
}

/// The Secret of a Plan disappears while its Job runs: the Plan is not valid any more, but the
/// Job that runs is followed to the end: its node is labelled and uncordoned.
pub fn finished_jobs_complete_while_the_plans_secret_is_missing(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "nosec", 2);
    ctx.put_secret("nosec-secret", "k=v");
    let spec = json!({"concurrency": 1, "version": VERSION, "cordon": true,
        "secrets": [{"name": "nosec-secret", "path": "/s"}], "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan(
        "nosec",
        spec,
        json!({"annotations": {"suc-test/duration": "8s"}}),
    );
    let node = wait("a node to upgrade", MINUTE, || {
        let plan = s.plan_json("nosec");
        let entry = plan["status"]["nodes"][0].clone();
        (entry["phase"] == "Upgrading").then(|| entry["name"].as_str().unwrap().to_owned())
    });
    let hash = s
        .plan("nosec")
        .unwrap()
        .status
        .unwrap()
        .latest_hash
        .unwrap();
    assert!(s.unschedulable(&node));
    ctx.kubectl(&["-n", NAMESPACE, "delete", "secret", "nosec-secret"])
        .expect_ok();
    let message = s.wait_condition("nosec", "Validated", "False", "Error", MINUTE);
    assert!(
        message.contains("secrets \"nosec-secret\" not found"),
        "{message}"
    );
    wait("the node to be labelled and uncordoned", MINUTE, || {
        (s.node_label(&node, "plan.upgrade.cattle.io/nosec")
            .as_deref()
            == Some(hash.as_str())
            && !s.unschedulable(&node))
        .then_some(())
    });
    assert_eq!(s.condition("nosec", "Complete").unwrap().1, "NotReady");
    assert_eq!(
        s.jobs("nosec").len(),
        1,
        "no other node started while the Plan is invalid"
    );
    s.delete_plan("nosec");
}

/// Settings of running Jobs follow the Plan in place: a longer postCompleteDelay raises the TTL
/// of a Job waiting for it (the Kubernetes TTL controller would otherwise delete it before its
/// node is labelled, and the node would run again), and a new jobActiveDeadlineSecs applies to
/// the running Job instead of replacing it.
pub fn job_settings_follow_the_plan_in_place(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.stop_server();
    let server = Server::start(ctx, "ttl", &["--job-ttl-seconds-after-finish", "5"]);
    server.wait_ready();
    ctx.wait_for_ca_bundles();
    let s = Scenario::new(ctx, "ttl", 2);
    let (a, b) = (s.nodes[0].clone(), s.nodes[1].clone());
    let watch = JobWatch::start(ctx, "ttl");
    let slow_watch = JobWatch::start(ctx, "ttl-slow");
    // Without the convergence check, whose bound the TTL would cover too (10m).
    let spec = |delay: &str| {
        json!({"concurrency": 1, "version": VERSION, "postCompleteDelay": delay,
        "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": a}}, "upgrade": {"image": "rancher/k3s-upgrade"},
        "convergence": {"check": "None"}})
    };
    s.apply_plan("ttl", spec("15s"), json!({}));
    let job = wait("the Job to succeed", MINUTE, || {
        s.jobs("ttl")
            .into_iter()
            .find(|j| j.status.as_ref().and_then(|st| st.succeeded) == Some(1))
    });
    assert_eq!(job.spec.unwrap().ttl_seconds_after_finished, Some(75));
    // Mid-delay, the delay grows past the Job's TTL.
    s.apply_plan("ttl", spec("85s"), json!({}));
    wait_with_log("the TTL to follow the delay", MINUTE, &server.log, || {
        let job = s.jobs("ttl").into_iter().next()?;
        (job.spec?.ttl_seconds_after_finished == Some(145)).then_some(())
    });
    assert!(
        s.node_label(&a, "plan.upgrade.cattle.io/ttl").is_none(),
        "labelled before the delay"
    );

    // Meanwhile, a long upgrade on the other node gets a shorter deadline in place.
    let slow = json!({"concurrency": 1, "version": VERSION, "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": b}},
        "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan(
        "ttl-slow",
        slow.clone(),
        json!({"annotations": {"suc-test/duration": "120s"}}),
    );
    let slow_job = wait("the slow Job to run", MINUTE, || {
        s.jobs("ttl-slow")
            .into_iter()
            .find(|j| j.status.as_ref().and_then(|st| st.active) == Some(1))
    });
    let mut shorter = slow;
    shorter["jobActiveDeadlineSecs"] = json!(8);
    s.apply_plan(
        "ttl-slow",
        shorter,
        json!({"annotations": {"suc-test/duration": "120s"}}),
    );
    let message = s.wait_condition("ttl-slow", "Complete", "False", "JobFailed", MINUTE);
    assert!(message.contains("DeadlineExceeded"), "{message}");
    assert_eq!(
        slow_watch.jobs_per_node().get(&b),
        Some(&1),
        "the Job was patched, not replaced"
    );
    assert!(slow_job.spec.unwrap().active_deadline_seconds != Some(8));

    // The first node is labelled after its delay, by the one Job it ever had.
    wait_with_log(
        "the node to be labelled after the longer delay",
        2 * MINUTE,
        &server.log,
        || s.node_label(&a, "plan.upgrade.cattle.io/ttl").map(|_| ()),
    );
    s.wait_condition("ttl", "Complete", "True", "Complete", MINUTE);
    assert_eq!(
        watch.jobs_per_node().get(&a),
        Some(&1),
        "the node ran twice"
    );
    s.delete_plan("ttl");
    s.delete_plan("ttl-slow");
    drop(server);
    ctx.ensure_server();
}

/// `switch-back-check` names what the Go controller would choke on (a percentage concurrency)
/// or run unasked (a paused Plan), with exit status 1, and no longer once they are changed.
pub fn switch_back_check_lists_what_the_go_controller_cannot_take(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "sback", 1);
    let base = json!({"version": VERSION, "upgrade": {"image": "rancher/k3s-upgrade"},
        "nodeSelector": {"matchLabels": {SCENARIO_LABEL: "nobody"}}});
    let mut percent = base.clone();
    percent["concurrency"] = json!("25%");
    s.apply_plan("sback-pct", percent, json!({}));
    let mut paused = base.clone();
    paused["concurrency"] = json!(1);
    paused["paused"] = json!(true);
    s.apply_plan("sback-held", paused, json!({}));
    let check = || {
        let out = std::process::Command::new(crate::support::BIN)
            .args(["switch-back-check", "--kubeconfig"])
            .arg(&ctx.cluster.kubeconfig)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    };
    let (clear, text) = check();
    assert!(!clear, "{text}");
    assert!(
        text.contains("Plan system-upgrade/sback-pct spec.concurrency is \"25%\""),
        "{text}"
    );
    assert!(
        text.contains("Plan system-upgrade/sback-held spec.paused is true"),
        "{text}"
    );
    let mut fixed = base;
    fixed["concurrency"] = json!(1);
    s.apply_plan("sback-pct", fixed, json!({}));
    s.delete_plan("sback-held");
    let (_, text) = check();
    assert!(!text.contains("sback-"), "{text}");
    s.delete_plan("sback-pct");
}
