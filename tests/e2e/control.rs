//! Rollout control beyond the Go controller: pausing a Plan or a node, concurrency as a
//! percentage, and a status GitOps tools can trust (kstatus, `kubectl wait`, Argo CD's health).

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::scenario::{JobWatch, Scenario, assert_rollout_kept_its_promises};
use crate::support::{Ctx, NAMESPACE, path, repo, script, wait};

const MINUTE: Duration = Duration::from_secs(60);

fn spec() -> Value {
    json!({"concurrency": 1, "version": "v1.30.4+k3s1", "upgrade": {"image": "rancher/k3s-upgrade"}})
}

pub fn patch_plan(ctx: &Ctx, plan: &str, patch: Value) {
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "plan",
        plan,
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])
    .expect_ok();
}

/// The test probe (tests/testbin/probe), built once.
fn probe() -> &'static str {
    static PROBE: OnceLock<String> = OnceLock::new();
    PROBE.get_or_init(|| {
        script("tests/testbin/build-probe.sh", &[])
            .trim()
            .to_owned()
    })
}

/// What the probe says of an object: kstatus' status (or, with a Lua script, Argo CD's health)
/// and its message.
fn judge(object: &Value, lua: Option<&str>) -> (String, String) {
    use std::io::Write;
    let mut command = Command::new(probe());
    if let Some(script) = lua {
        command.args(["-lua", script]);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(object.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.trim_end_matches('\n').split_once('\t').unwrap();
    (status.to_owned(), message.to_owned())
}

/// The Plan as the API server returns it (as Flux and Argo CD read it).
fn plan_object(ctx: &Ctx, plan: &str) -> Value {
    let out = ctx
        .kubectl(&["-n", NAMESPACE, "get", "plan", plan, "-o", "json"])
        .expect_ok();
    serde_json::from_str(&out.stdout).unwrap()
}

/// The Plan's row of `kubectl get plans`, by column name.
fn row(ctx: &Ctx, plan: &str) -> Vec<(String, String)> {
    let table = ctx
        .kubectl(&["-n", NAMESPACE, "get", "plan", plan])
        .expect_ok()
        .stdout;
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let line = lines.next().unwrap();
    // Columns start where their header does; the last runs to the end of the line.
    let starts: Vec<usize> = header
        .match_indices(|c: char| c != ' ')
        .filter(|(i, _)| *i == 0 || header.as_bytes()[i - 1] == b' ')
        .map(|(i, _)| i)
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &start)| {
            let end = starts
                .get(k + 1)
                .copied()
                .unwrap_or(line.len())
                .min(line.len());
            let name = header[start..].split(' ').next().unwrap().to_owned();
            (name, line.get(start..end).unwrap_or("").trim().to_owned())
        })
        .collect()
}

fn column(row: &[(String, String)], name: &str) -> String {
    row.iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
}

/// `spec.paused` holds a rollout (the Job already running finishes), the pause label holds a
/// node, and both show in the Complete condition, the printer columns and events.
pub fn paused_plans_and_nodes_hold_the_rollout(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "pause", 3);
    let watch = JobWatch::start(ctx, "pause");
    s.apply_plan(
        "pause",
        spec(),
        json!({"annotations": {"suc-test/duration": "6s"}}),
    );
    let first = wait("the first Job", MINUTE, || {
        s.jobs("pause").into_iter().next()
    });
    let first_node = first.metadata.labels.unwrap()["upgrade.cattle.io/node"].clone();
    patch_plan(ctx, "pause", json!({"spec": {"paused": true}}));
    let message = s.wait_condition("pause", "Complete", "False", "Paused", MINUTE);
    assert!(
        message.starts_with("spec.paused is true: 2 node(s) wait"),
        "{message}"
    );
    // The running Job finishes and its node is labelled; nobody else starts.
    wait("the first node to be done", MINUTE, || {
        (s.labelled("pause") == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(s.jobs("pause").len(), 1, "a paused Plan started a Job");
    assert!(
        s.node_label(&first_node, "plan.upgrade.cattle.io/pause")
            .is_some()
    );
    // The per-Plan gauges say the same.
    let server = ctx.ensure_server();
    let gauge = |state: &str| {
        server.sample(&format!(
            "suc_plan_nodes{{namespace=\"{NAMESPACE}\",plan=\"pause\",state=\"{state}\"}}"
        ))
    };
    assert_eq!(
        (
            gauge("selected"),
            gauge("done"),
            gauge("waiting"),
            gauge("gated")
        ),
        (3.0, 1.0, 2.0, 2.0)
    );
    let paused_row = row(ctx, "pause");
    assert_eq!(column(&paused_row, "REASON"), "Paused", "{paused_row:?}");
    assert_eq!(column(&paused_row, "PROGRESS"), "1/3", "{paused_row:?}");
    assert_eq!(column(&paused_row, "COMPLETE"), "False");
    assert!(
        s.plan_events("pause")
            .iter()
            .any(|e| e.starts_with("Paused: spec.paused is true")),
        "{:?}",
        s.plan_events("pause")
    );

    // Resumed with one of the two nodes left labelled pause: only the other runs.
    let held = s.nodes.iter().find(|n| **n != first_node).unwrap().clone();
    ctx.kubectl(&["label", "node", &held, "upgrade.cattle.io/pause=true"])
        .expect_ok();
    patch_plan(ctx, "pause", json!({"spec": {"paused": false}}));
    let message = s.wait_condition("pause", "Complete", "False", "Paused", MINUTE);
    wait("the free node to be done", MINUTE, || {
        (s.labelled("pause") == 2).then_some(())
    });
    let message = if message.contains("every node left") {
        message
    } else {
        s.wait_condition("pause", "Complete", "False", "Paused", MINUTE);
        wait("the label to hold the rollout", MINUTE, || {
            s.condition("pause", "Complete")
                .map(|c| c.2)
                .filter(|m| m.contains("every node left"))
        })
    };
    assert!(
        message.contains("every node left (1) is labelled upgrade.cattle.io/pause=true"),
        "{message}"
    );
    assert!(
        s.node_label(&held, "plan.upgrade.cattle.io/pause")
            .is_none()
    );
    assert!(
        s.plan_events("pause")
            .iter()
            .any(|e| e.starts_with("Resumed:")),
        "{:?}",
        s.plan_events("pause")
    );
    // Unlabelled, it runs, and the Plan completes with one Job per node.
    ctx.kubectl(&["label", "node", &held, "upgrade.cattle.io/pause-"])
        .expect_ok();
    s.wait_condition("pause", "Complete", "True", "Complete", MINUTE);
    assert_rollout_kept_its_promises(&s, &watch, 1);
    assert_eq!(column(&row(ctx, "pause"), "PROGRESS"), "3/3");
    assert_eq!((gauge("done"), gauge("applying")), (3.0, 0.0));
    s.cleanup();
    wait("the deleted Plan's gauges to go", MINUTE, || {
        (!server.metrics().contains("plan=\"pause\"")).then_some(())
    });
}

/// `concurrency: "25%"` runs a quarter of the selected nodes at a time (8 nodes: 2), and the
/// webhook explains a percentage it cannot use.
pub fn percentage_concurrency_counts_the_selected_nodes(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "pct", 8);
    let watch = JobWatch::start(ctx, "pct");
    let mut plan = spec();
    plan["concurrency"] = json!("25%");
    s.apply_plan(
        "pct",
        plan,
        json!({"annotations": {"suc-test/duration": "4s"}}),
    );
    s.wait_condition("pct", "Complete", "True", "Complete", 3 * MINUTE);
    assert_rollout_kept_its_promises(&s, &watch, 2);
    assert_eq!(watch.max_unfinished(), 2, "25% of 8 nodes is 2 at a time");
    assert_eq!(s.plan_json("pct")["spec"]["concurrency"], "25%");

    let mut bad = spec();
    bad["concurrency"] = json!("150%");
    bad["nodeSelector"] = json!({});
    let refused = ctx.kubectl_with_input(
        &["apply", "-f", "-"],
        Some(
            &json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
                "metadata": {"name": "pct-bad", "namespace": NAMESPACE}, "spec": bad})
            .to_string(),
        ),
    );
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("spec.concurrency: \"150%\" is not between 1% and 100%"),
        "{}",
        refused.stderr
    );
    s.cleanup();
}

/// After an edit, neither kstatus (Flux), `kubectl wait` nor the Argo CD health script reads the
/// earlier spec's completion as the new one's: the Plan is in progress until the nodes carry the
/// new hash. A failure is Failed/Degraded, a pause Current/Suspended.
pub fn status_lets_gitops_tools_tell_an_edit_from_its_completion(ctx: &Ctx) {
    ctx.ensure_server();
    let lua = repo("docs/gitops/argocd-health.lua");
    let lua = path(&lua);
    // The ConfigMap users copy carries the same script.
    let configmap = std::fs::read_to_string(repo("docs/gitops/argocd-cm.yaml")).unwrap();
    let script_text = std::fs::read_to_string(lua).unwrap();
    for line in script_text.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            configmap.contains(&format!("    {line}\n")),
            "argocd-cm.yaml lacks {line:?}"
        );
    }
    let s = Scenario::new(ctx, "gitops", 3);
    // Its bumps move the scenario's agents past the test bed's servers (v1.30.4).
    let mut gitops = spec();
    gitops["versionSafety"] = json!({"serversFirst": false});
    s.apply_plan(
        "gitops",
        gitops,
        json!({"annotations": {"suc-test/duration": "3s"}}),
    );
    wait("kstatus to say Current", 2 * MINUTE, || {
        (judge(&plan_object(ctx, "gitops"), None).0 == "Current").then_some(())
    });
    let object = plan_object(ctx, "gitops");
    assert_eq!(
        object["status"]["observedGeneration"],
        object["metadata"]["generation"]
    );
    assert_eq!(judge(&object, Some(lua)).0, "Healthy");
    assert_eq!(s.labelled("gitops"), 3);
    let table = ctx
        .kubectl(&["-n", NAMESPACE, "get", "plans"])
        .expect_ok()
        .stdout;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "IMAGE", "CHANNEL", "VERSION", "LATEST", "PROGRESS", "COMPLETE", "REASON",
            "MESSAGE"
        ]
    );

    // An edit: from the first read after it until every node carries the new hash, no tool says
    // done.
    patch_plan(ctx, "gitops", json!({"spec": {"version": "v1.30.5+k3s1"}}));
    let started = Instant::now();
    let mut samples = 0;
    loop {
        let object = plan_object(ctx, "gitops");
        let fresh = object["status"]["observedGeneration"] == object["metadata"]["generation"];
        let hash = object["status"]["latestHash"].as_str().unwrap_or_default();
        let done = fresh
            && s.nodes
                .iter()
                .all(|n| s.node_label(n, "plan.upgrade.cattle.io/gitops").as_deref() == Some(hash));
        let (kstatus, _) = judge(&object, None);
        let (health, _) = judge(&object, Some(lua));
        samples += 1;
        if done && kstatus == "Current" && health == "Healthy" {
            break;
        }
        assert_ne!(
            kstatus, "Current",
            "kstatus says Current before the nodes are done: {object}"
        );
        assert_ne!(
            health, "Healthy",
            "Argo CD says Healthy before the nodes are done: {object}"
        );
        assert!(
            started.elapsed() < 2 * MINUTE,
            "the edit never completed: {object}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(samples > 1, "the rollout of the edit was not observed");
    assert_eq!(column(&row(ctx, "gitops"), "LATEST"), "v1.30.5-k3s1");

    // `kubectl wait` right after an edit returns only once the edit is rolled out.
    patch_plan(ctx, "gitops", json!({"spec": {"version": "v1.30.6+k3s1"}}));
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "wait",
        "--for=condition=Complete",
        "plan/gitops",
        "--timeout=120s",
    ])
    .expect_ok();
    let hash = s.plan_json("gitops")["status"]["latestHash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        s.plan_json("gitops")["status"]["latestVersion"],
        "v1.30.6-k3s1"
    );
    for node in &s.nodes {
        assert_eq!(
            s.node_label(node, "plan.upgrade.cattle.io/gitops")
                .as_deref(),
            Some(hash.as_str()),
            "kubectl wait returned before {node} was upgraded"
        );
    }

    // Paused with work left: kstatus Current (what the spec asks), Argo CD Suspended.
    patch_plan(
        ctx,
        "gitops",
        json!({"spec": {"version": "v1.30.7+k3s1", "paused": true}}),
    );
    s.wait_condition("gitops", "Complete", "False", "Paused", MINUTE);
    let object = plan_object(ctx, "gitops");
    assert_eq!(judge(&object, None).0, "Current", "{object}");
    assert_eq!(judge(&object, Some(lua)).0, "Suspended", "{object}");

    // A failed node: Failed and Degraded, with the reason.
    patch_plan(
        ctx,
        "gitops",
        json!({"metadata": {"labels": {"suc-test/fail": "true"}}, "spec": {"paused": false}}),
    );
    s.wait_condition("gitops", "Complete", "False", "JobFailed", 2 * MINUTE);
    let object = plan_object(ctx, "gitops");
    let (kstatus, message) = judge(&object, None);
    assert_eq!(kstatus, "Failed", "{object}");
    let (health, why) = judge(&object, Some(lua));
    assert_eq!(health, "Degraded", "{object}");
    assert!(why.contains("failed on Node"), "{why} / {message}");
    s.cleanup();
}

/// A failed node is retried after its backoff up to `spec.retry.limit`, then the Plan reports
/// the failure; `kubectl annotate plan NAME upgrade.cattle.io/retry=all` retries it at once and
/// the controller removes the annotation.
pub fn failed_nodes_are_retried_automatically_and_on_request(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "retry", 1);
    let node = s.nodes[0].clone();
    let watch = JobWatch::start(ctx, "retry");
    let mut plan = spec();
    plan["retry"] = json!({"limit": 1, "backoff": "3s"});
    // Plan labels reach the pods: this one makes kwok fail them.
    s.apply_plan("retry", plan, json!({"labels": {"suc-test/fail": "true"}}));
    let message = s.wait_condition("retry", "Complete", "False", "Retrying", 2 * MINUTE);
    assert!(message.contains("; retry 1 of 1 at "), "{message}");
    assert_eq!(s.condition("retry", "Stalled").unwrap().0, "False");
    // The retry fails too: now the Plan reports the failure.
    let message = s.wait_condition("retry", "Complete", "False", "JobFailed", 2 * MINUTE);
    assert!(
        message.contains(&format!("failed on Node {node}")),
        "{message}"
    );
    assert_eq!(watch.jobs_per_node()[&node], 2, "one retry");
    let entry = &s.plan_json("retry")["status"]["nodes"][0];
    assert_eq!(entry["phase"], "Failed");
    assert_eq!(entry["retries"], 1);
    let events = s.plan_events("retry");
    assert!(
        events
            .iter()
            .any(|e| e.starts_with(&format!("Retrying: Node {node}: retry 1 of 1"))),
        "{events:?}"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(watch.jobs_per_node()[&node], 2, "no retry beyond the limit");

    // By hand: the node runs again at once, and the request is consumed.
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "annotate",
        "plan",
        "retry",
        "upgrade.cattle.io/retry=all",
    ])
    .expect_ok();
    wait("the retry by request", MINUTE, || {
        (watch.jobs_per_node()[&node] >= 3).then_some(())
    });
    wait("the annotation to be removed", MINUTE, || {
        s.plan_json("retry")["metadata"]["annotations"]
            .get("upgrade.cattle.io/retry")
            .is_none()
            .then_some(())
    });
    assert!(
        s.plan_events("retry")
            .iter()
            .any(|e| e.contains("retried on request (upgrade.cattle.io/retry)")),
        "{:?}",
        s.plan_events("retry")
    );
    // A request naming a node that has not failed says so, and is consumed too.
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "annotate",
        "plan",
        "retry",
        "upgrade.cattle.io/retry=nosuch-node",
    ])
    .expect_ok();
    wait("the unmatched request to be reported", MINUTE, || {
        s.plan_events("retry")
            .iter()
            .any(|e| e.contains("no failed node to retry among nosuch-node"))
            .then_some(())
    });
    wait("the annotation to be removed", MINUTE, || {
        s.plan_json("retry")["metadata"]["annotations"]
            .get("upgrade.cattle.io/retry")
            .is_none()
            .then_some(())
    });
    s.cleanup();
}

/// `healthGates.nodeReadyFor`: a node whose Job succeeded keeps its slot, as WaitingHealthy,
/// until it has been Ready and schedulable that long; only then does the next node start.
pub fn a_node_must_be_healthy_for_a_while_before_the_next_starts(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "ready", 2);
    let watch = JobWatch::start(ctx, "ready");
    let mut plan = spec();
    plan["healthGates"] = json!({"nodeReadyFor": "8s"});
    s.apply_plan("ready", plan, json!({}));
    let entry = wait("a node waiting to be healthy", MINUTE, || {
        let plan = s.plan_json("ready");
        plan["status"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["phase"] == "WaitingHealthy")
            .cloned()
    });
    let first = entry["name"].as_str().unwrap().to_owned();
    assert!(
        entry["message"]
            .as_str()
            .unwrap()
            .contains("for the node to be Ready and schedulable for 8s (healthGates.nodeReadyFor)"),
        "{entry}"
    );
    assert!(
        s.node_label(&first, "plan.upgrade.cattle.io/ready")
            .is_none()
    );
    assert_eq!(s.jobs("ready").len(), 1, "the next node waits");
    s.wait_condition("ready", "Complete", "True", "Complete", 2 * MINUTE);
    assert_rollout_kept_its_promises(&s, &watch, 1);
    // The second Job was created no sooner than 8 s after the first completed.
    let jobs = s.jobs("ready");
    let completed = jobs
        .iter()
        .find(|j| j.metadata.labels.as_ref().unwrap()["upgrade.cattle.io/node"] == first)
        .and_then(|j| j.status.as_ref()?.completion_time.clone())
        .unwrap()
        .0;
    let second = jobs
        .iter()
        .find(|j| j.metadata.labels.as_ref().unwrap()["upgrade.cattle.io/node"] != first)
        .and_then(|j| j.metadata.creation_timestamp.clone())
        .unwrap()
        .0;
    let gap = second.duration_since(completed).as_secs_f64();
    assert!(
        gap >= 7.0,
        "the next node started {gap:.1}s after the first completed"
    );
    assert!(
        s.node_events(&first)
            .iter()
            .any(|e| e.starts_with("WaitingForHealth:")),
        "{:?}",
        s.node_events(&first)
    );
    s.cleanup();
}

/// A minimal Prometheus HTTP API: `/api/v1/query` answers one firing alert while `firing` is
/// set, no series otherwise, and records the queries it was asked.
struct Prometheus {
    url: String,
    firing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    asked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Prometheus {
    fn start(ctx: &Ctx) -> Prometheus {
        use std::sync::atomic::Ordering;
        let firing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let listener = ctx
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (state_firing, state_asked) = (firing.clone(), asked.clone());
        let app = axum::Router::new().route(
            "/api/v1/query",
            axum::routing::get(
                move |axum::extract::RawQuery(raw): axum::extract::RawQuery| {
                    let (firing, asked) = (state_firing.clone(), state_asked.clone());
                    async move {
                        let query = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
                            .find(|(k, _)| k == "query")
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default();
                        asked.lock().unwrap().push(query);
                        let result = if firing.load(Ordering::SeqCst) {
                            json!([{"metric": {"__name__": "ALERTS", "alertname": "NodeDown", "alertstate": "firing"}, "value": [1, "1"]}])
                        } else {
                            json!([])
                        };
                        axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": result}}))
                    }
                },
            ),
        );
        ctx.runtime.spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Prometheus { url, firing, asked }
    }
}

/// `healthGates.allNodesReady` and `healthGates.prometheus` hold new starts while a selected
/// node is not Ready or the query returns series, say so in Complete and an event, and never fail
/// the Plan; once open, the rollout goes on.
pub fn closed_health_gates_hold_the_rollout_until_they_open(ctx: &Ctx) {
    use std::sync::atomic::Ordering;
    ctx.ensure_server();
    let s = Scenario::new(ctx, "gate", 2);
    // A node that no kubelet (nor kwok) runs: NotReady for as long as the test says.
    let sick = "gate-sick";
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": sick, "labels": {
        "kubernetes.io/hostname": sick, "kubernetes.io/os": "linux", crate::scenario::SCENARIO_LABEL: "gate"}}});
    ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&node.to_string()))
        .expect_ok();
    let prometheus = Prometheus::start(ctx);
    let query = r#"ALERTS{alertstate="firing",severity="critical"}"#;
    let mut plan = spec();
    plan["healthGates"] = json!({"allNodesReady": true, "prometheus": {"url": prometheus.url, "query": query, "timeout": "5s"}});
    s.apply_plan("gate", plan, json!({}));
    let message = s.wait_condition("gate", "Complete", "False", "WaitingForHealth", MINUTE);
    assert!(
        message.contains(&format!(
            "node {sick} not Ready (healthGates.allNodesReady)"
        )),
        "{message}"
    );
    assert!(
        message.contains(
            r#"the Prometheus query returns 1 series: ALERTS{alertname="NodeDown",alertstate="firing"}"#
        ),
        "{message}"
    );
    assert!(prometheus.asked.lock().unwrap().iter().all(|q| q == query));
    assert!(!prometheus.asked.lock().unwrap().is_empty());
    assert!(s.jobs("gate").is_empty());
    assert_eq!(s.condition("gate", "Stalled").unwrap().0, "False");
    assert_eq!(s.condition("gate", "Reconciling").unwrap().0, "True");
    assert!(
        s.plan_events("gate")
            .iter()
            .any(|e| e.starts_with("WaitingForHealth: 3 node(s) wait")),
        "{:?}",
        s.plan_events("gate")
    );
    // The sick node opts out: only the query holds now.
    ctx.kubectl(&[
        "label",
        "node",
        sick,
        "plan.upgrade.cattle.io/gate=disabled",
    ])
    .expect_ok();
    wait("only the query to hold the rollout", MINUTE, || {
        s.condition("gate", "Complete")
            .filter(|(_, r, m)| r == "WaitingForHealth" && !m.contains("not Ready"))
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(s.jobs("gate").is_empty());
    // The alert clears: the rollout goes on (the answer is reused for at most 15 s).
    prometheus.firing.store(false, Ordering::SeqCst);
    let started = Instant::now();
    s.wait_condition("gate", "Complete", "True", "Complete", 2 * MINUTE);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert_eq!(s.labelled("gate"), 2);
    ctx.kubectl(&["delete", "node", sick]).expect_ok();
    s.cleanup();
}

/// `preview` with the test cluster's kubeconfig: the output of the command as run.
fn preview(ctx: &Ctx, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_system-upgrade-controller"))
        .arg("preview")
        .args(args)
        .env("KUBECONFIG", &ctx.cluster.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "preview failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `preview -f` changes nothing and sorts the nodes as the controller would; `preview plan/NAME`
/// names, in its batches, exactly the nodes the controller then starts, wave by wave.
pub fn preview_shows_what_a_plan_would_do_and_the_controller_does_it(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "pv", 5);
    let (out_node, held_node) = (&s.nodes[0], &s.nodes[1]);
    ctx.kubectl(&[
        "label",
        "node",
        out_node,
        "plan.upgrade.cattle.io/pv=disabled",
    ])
    .expect_ok();
    ctx.kubectl(&["label", "node", held_node, "upgrade.cattle.io/pause=true"])
        .expect_ok();
    let plan = json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
        "metadata": {"name": "pv", "namespace": NAMESPACE, "annotations": {"suc-test/duration": "20s"}},
        "spec": {"concurrency": 2, "version": "v1.30.4+k3s1", "paused": true,
            "nodeSelector": {"matchLabels": {crate::scenario::SCENARIO_LABEL: "pv"}},
            "upgrade": {"image": "rancher/k3s-upgrade"}}});
    let file = std::env::temp_dir().join("suc-e2e-preview.yaml");
    std::fs::write(&file, plan.to_string()).unwrap();
    let text = preview(ctx, &["-f", file.to_str().unwrap()]);
    assert!(text.starts_with("Plan system-upgrade/pv\n"), "{text}");
    // The same as data, for scripts: JSON and YAML alike.
    let data: Value =
        serde_json::from_str(&preview(ctx, &["-o", "json", "-f", file.to_str().unwrap()])).unwrap();
    let entry = &data[0];
    assert_eq!(entry["plan"], "pv", "{data}");
    assert_eq!(entry["valid"], true);
    assert_eq!(entry["version"], "v1.30.4-k3s1");
    assert_eq!(entry["nodes"]["matching"], 5, "{data}");
    assert_eq!(entry["nodes"]["selected"], 4);
    assert_eq!(entry["nodes"]["optedOut"], json!([out_node]));
    let batched: usize = entry["order"]["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_array().unwrap().len())
        .sum();
    assert!(
        text.contains(&format!("order:       {batched} node(s) to start")),
        "{text}\n{data}"
    );
    let yaml = preview(ctx, &["-o", "yaml", "-f", file.to_str().unwrap()]);
    assert_eq!(
        system_upgrade_controller::yaml::documents(&yaml).unwrap()[0],
        data
    );
    // The kubeconfig's context by name gives the same; an invalid Plan exits 1, saying why.
    let context = ctx
        .kubectl(&["config", "current-context"])
        .expect_ok()
        .stdout;
    let by_context = preview(
        ctx,
        &["--context", context.trim(), "-f", file.to_str().unwrap()],
    );
    assert_eq!(by_context.lines().next(), text.lines().next());
    let mut invalid = plan.clone();
    invalid["spec"]["concurrency"] = json!(0);
    let invalid_file = std::env::temp_dir().join("suc-e2e-preview-invalid.yaml");
    std::fs::write(&invalid_file, invalid.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_system-upgrade-controller"))
        .args(["preview", "-f", invalid_file.to_str().unwrap()])
        .env("KUBECONFIG", &ctx.cluster.kubeconfig)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("invalid:") && stdout.contains("spec.concurrency"),
        "{stdout}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_system-upgrade-controller"))
        .args([
            "preview",
            "-o",
            "json",
            "-f",
            invalid_file.to_str().unwrap(),
        ])
        .env("KUBECONFIG", &ctx.cluster.kubeconfig)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let data: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(data[0]["valid"], false);
    assert!(
        data[0]["problems"][0]
            .as_str()
            .unwrap()
            .contains("spec.concurrency")
    );
    assert!(
        text.contains("version:     v1.30.4-k3s1 (from spec.version)"),
        "{text}"
    );
    assert!(
        text.contains("5 match spec.nodeSelector; 4 selected, 0 done"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "opted out (plan.upgrade.cattle.io/pv=disabled) (1): {out_node}"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "held (upgrade.cattle.io/pause=true) (1): {held_node}"
        )),
        "{text}"
    );
    assert!(text.contains("hold:        spec.paused is true"), "{text}");
    assert!(
        text.contains("3 node(s) to start, at most 2 running at once"),
        "{text}"
    );
    assert!(text.contains("depends on the UID it gets"), "{text}");
    // It changed nothing.
    assert!(s.plan("pv").is_none());
    assert!(s.jobs("pv").is_empty());

    // In the cluster (paused): the first batch is what the controller starts once resumed.
    s.apply_plan("pv", plan["spec"].clone(), plan["metadata"].clone());
    s.wait_condition("pv", "Complete", "False", "Paused", MINUTE);
    let text = preview(ctx, &["plan/pv"]);
    assert!(!text.contains("depends on the UID"), "{text}");
    let hash = s.plan_json("pv")["status"]["latestHash"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains(&format!("hash:        {hash}")), "{text}");
    let first: BTreeSet<String> = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("1: "))
        .unwrap()
        .split(", ")
        .map(str::to_owned)
        .collect();
    assert_eq!(first.len(), 2, "{text}");
    patch_plan(ctx, "pv", json!({"spec": {"paused": false}}));
    let started: BTreeSet<String> = wait("two Jobs", MINUTE, || {
        let jobs = s.jobs("pv");
        (jobs.len() == 2).then(|| {
            jobs.iter()
                .map(|j| j.metadata.labels.as_ref().unwrap()["upgrade.cattle.io/node"].clone())
                .collect()
        })
    });
    assert_eq!(started, first, "preview said:\n{text}");
    // And the second batch is the node the controller starts when the first frees its slots.
    let second: String = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("2: "))
        .unwrap()
        .to_owned();
    let next: String = wait("the third Job", 2 * MINUTE, || {
        s.jobs("pv")
            .iter()
            .map(|j| j.metadata.labels.as_ref().unwrap()["upgrade.cattle.io/node"].clone())
            .find(|n| !first.contains(n))
    });
    assert_eq!(next, second, "preview said:\n{text}");
    s.cleanup(); // the scenario's nodes go, labels and all
}

/// `healthGates.objects` on a custom resource: a kind the API server does not serve, objects the
/// controller may not read (its RBAC is the user's to grant), and an expression that is false
/// each keep the gate closed with why in Complete; flipping the object's status opens it.
pub fn object_gates_hold_the_rollout_until_their_expression_is_true(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "cel", 1);
    let apply = |object: Value| {
        ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&object.to_string()))
            .expect_ok();
    };
    apply(
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.suc-test.io"},
        "spec": {"group": "suc-test.io", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]}}),
    );
    wait("the Widget kind to be served", MINUTE, || {
        ctx.kubectl(&["get", "widgets.suc-test.io", "-A"])
            .ok
            .then_some(())
    });
    let widget = |health: &str| {
        json!({"apiVersion": "suc-test.io/v1", "kind": "Widget",
            "metadata": {"name": "storage", "namespace": "default"}, "status": {"health": health}})
    };
    apply(widget("degraded"));

    // A kind nobody serves: named in the reason.
    let gate = |kind: &str| {
        let mut plan = spec();
        plan["healthGates"] = json!({"objects": [{"apiVersion": "suc-test.io/v1", "kind": kind,
            "namespace": "default", "name": "storage", "expression": "object.status.health == 'ok'"}]});
        plan
    };
    let applied = s.apply_plan("cel", gate("Gizmo"), json!({}));
    // The webhook tried the gate on the cluster as it is: a warning, not a refusal.
    assert!(
        applied.stderr.contains(
            "spec.healthGates.objects[0] is closed now: the API server serves no kind Gizmo"
        ),
        "{}",
        applied.stderr
    );
    let message = s.wait_condition("cel", "Complete", "False", "WaitingForHealth", MINUTE);
    assert!(
        message.contains("the API server serves no kind Gizmo in suc-test.io/v1"),
        "{message}"
    );
    // Served, but the controller may not read it: the reason names what to grant.
    s.apply_plan("cel", gate("Widget"), json!({}));
    let message = wait("the missing permission in Complete", MINUTE, || {
        s.condition("cel", "Complete")
            .map(|(_, _, m)| m)
            .filter(|m| m.contains("may not read Widget default/storage"))
    });
    assert!(message.contains("widgets.suc-test.io"), "{message}");
    apply(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "suc-reads-widgets", "namespace": "default"},
        "rules": [{"apiGroups": ["suc-test.io"], "resources": ["widgets"], "verbs": ["get", "list"]}]}),
    );
    apply(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "suc-reads-widgets", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "suc-reads-widgets"},
        "subjects": [{"kind": "ServiceAccount", "name": "system-upgrade-controller", "namespace": NAMESPACE}]}),
    );
    // A field named wrongly shows when the webhook tries the expression on the object.
    let mut typo = gate("Widget");
    typo["healthGates"]["objects"][0]["expression"] = json!("object.status.helth == 'ok'");
    let applied = wait("the webhook to read the Widget", MINUTE, || {
        let applied = s.apply_plan("cel", typo.clone(), json!({}));
        applied
            .stderr
            .contains("No such key: helth")
            .then_some(applied)
    });
    assert!(
        applied.stderr.contains("spec.healthGates.objects[0] is closed now: Widget default/storage: the expression fails"),
        "{}",
        applied.stderr
    );
    s.apply_plan("cel", gate("Widget"), json!({}));
    // Readable and unhealthy: the expression is false.
    wait("the expression to be false", MINUTE, || {
        s.condition("cel", "Complete")
            .map(|(_, _, m)| m)
            .filter(|m| m.contains("object.status.health == 'ok' is false for Widget default/storage (healthGates.objects[0])"))
    });
    assert!(s.jobs("cel").is_empty());
    // Healthy: the rollout goes on.
    apply(widget("ok"));
    s.wait_condition("cel", "Complete", "True", "Complete", 2 * MINUTE);
    assert_eq!(s.labelled("cel"), 1);
    ctx.kubectl(&["delete", "crd", "widgets.suc-test.io", "--ignore-not-found"])
        .expect_ok();
    ctx.kubectl(&[
        "-n",
        "default",
        "delete",
        "role,rolebinding",
        "suc-reads-widgets",
        "--ignore-not-found",
    ])
    .expect_ok();
    s.cleanup();
}

/// `spec.hooks`: the before hook runs once before the first node and the after hook once after
/// the last, as Jobs bound to no node; the Plan is Complete only after the after hook. A failed
/// hook holds the rollout (Stalled, no node Job) until the retry annotation names it. Three nodes,
/// the most common K3s shape.
pub fn hooks_run_once_around_the_rollout_in_order(ctx: &Ctx) {
    use k8s_openapi::api::batch::v1::Job;
    ctx.ensure_server();
    let s = Scenario::new(ctx, "hooks", 3);
    let mut plan = spec();
    plan["hooks"] = json!({
        "before": {"image": "busybox:1.36", "command": ["sh", "-c", "echo noout set"]},
        "after": {"image": "busybox:1.36", "command": ["sh", "-c", "echo noout unset"]},
    });
    // Plan labels reach the hook's pod too: this one makes kwok fail it.
    s.apply_plan("hooks", plan, json!({"labels": {"suc-test/fail": "true"}}));
    let message = s.wait_condition("hooks", "Complete", "False", "HookFailed", 3 * MINUTE);
    assert!(
        message.contains("the before hook's Job hook-hooks-before-with-")
            && message.contains("upgrade.cattle.io/retry=hook/before"),
        "{message}"
    );
    assert_eq!(s.condition("hooks", "Stalled").unwrap().0, "True");
    let node_job = |j: &Job| {
        j.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("upgrade.cattle.io/node"))
    };
    assert!(
        !s.jobs("hooks").iter().any(node_job),
        "no node starts while the before hook has failed"
    );
    assert!(
        s.plan_events("hooks")
            .iter()
            .any(|e| e.starts_with("HookFailed: the before hook's Job")),
        "{:?}",
        s.plan_events("hooks")
    );

    // Fixed, and retried by hand: the hook runs again, then the nodes, then the after hook.
    patch_plan(
        ctx,
        "hooks",
        json!({"metadata": {"labels": {"suc-test/fail": null}}}),
    );
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "annotate",
        "plan",
        "hooks",
        "upgrade.cattle.io/retry=hook/before",
    ])
    .expect_ok();
    s.wait_condition("hooks", "Complete", "True", "Complete", 3 * MINUTE);
    let status = s.plan_json("hooks")["status"].clone();
    assert_eq!(status["hooks"][0]["name"], "before");
    assert_eq!(status["hooks"][0]["phase"], "Succeeded");
    assert_eq!(status["hooks"][1]["name"], "after");
    assert_eq!(status["hooks"][1]["phase"], "Succeeded");
    assert_eq!(status["progress"], "3/3");

    // In order, by the API server's clock: the before hook ended before any node's Job was
    // created, and every node's Job ended before the after hook's was created.
    let jobs = s.jobs("hooks");
    let created = |j: &Job| j.metadata.creation_timestamp.clone().unwrap().0;
    let ended = |j: &Job| {
        j.status
            .as_ref()
            .and_then(|s| s.completion_time.clone())
            .unwrap_or_else(|| panic!("{:?} has not completed", j.metadata.name))
            .0
    };
    let hook = |which: &str| -> Vec<&Job> {
        jobs.iter()
            .filter(|j| {
                j.metadata
                    .labels
                    .as_ref()
                    .unwrap()
                    .get("upgrade.cattle.io/hook")
                    == Some(&which.to_owned())
            })
            .collect()
    };
    let (before, after) = (hook("before"), hook("after"));
    assert_eq!((before.len(), after.len()), (1, 1), "{jobs:?}");
    let nodes: Vec<&Job> = jobs.iter().filter(|j| node_job(j)).collect();
    assert_eq!(nodes.len(), 3, "each node once");
    for node in &nodes {
        assert!(
            ended(before[0]) <= created(node),
            "{:?}",
            node.metadata.name
        );
        assert!(ended(node) <= created(after[0]), "{:?}", node.metadata.name);
    }
    let pod = &after[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.host_pid, None, "a hook shares nothing with a host");
    assert_eq!(pod.node_name, None);
    let events = s.plan_events("hooks");
    for expected in [
        "RunningHook: Plan hooks: the before hook retried on request",
        "HookSucceeded: Plan hooks: the before hook succeeded",
        "RunningHook: Plan hooks: the after hook runs after the last node",
        "HookSucceeded: Plan hooks: the after hook succeeded",
    ] {
        assert!(
            events.iter().any(|e| e.starts_with(expected)),
            "{expected} not in {events:?}"
        );
    }
    // Nothing runs again once the Plan is Complete.
    s.wait_observed("hooks", MINUTE);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.jobs("hooks").len(), 5);
    s.cleanup();
}

/// `hooks.afterWhenDeleted`: a Plan deleted in the middle of its rollout starts no more nodes,
/// lets the upgrade under way finish, runs its after hook, and only then goes (its finalizer
/// `upgrade.cattle.io/after-hook` held it meanwhile).
pub fn deleting_a_plan_runs_its_after_hook_first_when_asked(ctx: &Ctx) {
    use k8s_openapi::api::batch::v1::Job;
    ctx.ensure_server();
    let s = Scenario::new(ctx, "hookdel", 3);
    let mut plan = spec();
    plan["hooks"] = json!({
        "before": {"image": "busybox:1.36", "command": ["true"]},
        "after": {"image": "busybox:1.36", "command": ["true"]},
        "afterWhenDeleted": true,
    });
    // Each pod (the hooks' too) runs 6 s on the test bed.
    s.apply_plan(
        "hookdel",
        plan,
        json!({"annotations": {"suc-test/duration": "6s"}}),
    );
    let is = |j: &Job, key: &str| {
        j.metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(key))
    };
    wait("the first node's Job", 2 * MINUTE, || {
        s.jobs("hookdel")
            .iter()
            .any(|j| is(j, "upgrade.cattle.io/node"))
            .then_some(())
    });
    let stored = s.plan_json("hookdel");
    assert_eq!(
        stored["metadata"]["finalizers"],
        json!(["upgrade.cattle.io/after-hook"]),
        "held while the after hook is owed"
    );
    let uid = stored["metadata"]["uid"].as_str().unwrap().to_owned();
    ctx.kubectl(&["-n", NAMESPACE, "delete", "plan", "hookdel", "--wait=false"])
        .expect_ok();
    let jobs = wait("the after hook's Job", 2 * MINUTE, || {
        let jobs = s.jobs("hookdel");
        jobs.iter()
            .any(|j| {
                is(j, "upgrade.cattle.io/hook")
                    && j.metadata.name.as_deref().unwrap().contains("-after-")
            })
            .then_some(jobs)
    });
    let nodes: Vec<&Job> = jobs
        .iter()
        .filter(|j| is(j, "upgrade.cattle.io/node"))
        .collect();
    assert_eq!(
        nodes.len(),
        1,
        "no node starts once the Plan is being deleted"
    );
    let finished = nodes[0]
        .status
        .as_ref()
        .and_then(|s| s.completion_time.clone())
        .expect("the upgrade under way finished first");
    let after = jobs
        .iter()
        .find(|j| j.metadata.name.as_deref().unwrap().contains("-after-"))
        .unwrap();
    assert!(finished.0 <= after.metadata.creation_timestamp.clone().unwrap().0);
    assert!(s.plan("hookdel").is_some(), "the finalizer holds the Plan");
    wait("the Plan to go", 2 * MINUTE, || {
        s.plan("hookdel").is_none().then_some(())
    });
    let events = s.events_of(NAMESPACE, &uid);
    for expected in [
        "RunningHook: Plan hookdel: the after hook runs because the Plan is being deleted",
        "HookSucceeded: Plan hookdel: the after hook succeeded",
    ] {
        assert!(
            events.iter().any(|e| e.starts_with(expected)),
            "{expected} not in {events:?}"
        );
    }
    s.cleanup();
}

/// The node a Job of a Plan upgrades.
fn job_node(job: &k8s_openapi::api::batch::v1::Job) -> String {
    job.metadata.labels.as_ref().unwrap()["upgrade.cattle.io/node"].clone()
}

/// Applies the Plan (concurrency 2 over the scenario's three nodes) so that one chosen node's
/// upgrade runs while the other chosen node's Job waits, its pod unschedulable (never begun):
/// every node is tainted first (a taint upgrade pods do not tolerate), then all but one of the
/// two chosen are untainted. Returns the running node and the blocked one.
fn one_running_one_blocked(
    s: &Scenario,
    plan: &str,
    spec: Value,
    metadata: Value,
) -> (String, String) {
    let taint = |node: &str, on: bool| {
        let taint = if on {
            "suc-test/block=true:NoSchedule"
        } else {
            "suc-test/block-"
        };
        s.ctx.kubectl(&["taint", "node", node, taint]).expect_ok();
    };
    for node in &s.nodes {
        taint(node, true);
    }
    s.apply_plan(plan, spec, metadata);
    let chosen = wait("the first two nodes' Jobs", 2 * MINUTE, || {
        let names: Vec<String> = s.jobs(plan).iter().map(job_node).collect();
        (names.len() == 2).then_some(names)
    });
    let (running, blocked) = (chosen[0].clone(), chosen[1].clone());
    for node in s.nodes.iter().filter(|n| **n != blocked) {
        taint(node, false);
    }
    wait("the upgrade to run", 2 * MINUTE, || {
        s.plan_json(plan)["status"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["name"] == running.as_str() && e["phase"] == "Upgrading")
            .then_some(())
    });
    (running, blocked)
}

/// `upgrade.cattle.io/cancel`: the upgrade that began finishes, the Job whose pod never began is
/// deleted, nothing new starts, and Complete says Cancelled with the nodes done and not; the
/// resume annotation starts the rest. Three nodes, concurrency 2: one node's upgrade runs, one
/// node's pod cannot be scheduled (a taint it does not tolerate), one waits its turn.
pub fn a_cancelled_rollout_lets_begun_upgrades_finish_and_resumes_on_request(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "cancel", 3);
    let mut plan = spec();
    plan["concurrency"] = json!(2);
    plan["cordon"] = json!(true);
    let metadata = json!({"annotations": {"suc-test/duration": "25s"}});
    let (running, blocked) = one_running_one_blocked(&s, "cancel", plan, metadata);
    let waiting: Vec<&String> = s
        .nodes
        .iter()
        .filter(|n| **n != running && **n != blocked)
        .collect();

    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "annotate",
        "plan",
        "cancel",
        "upgrade.cattle.io/cancel=true",
    ])
    .expect_ok();
    let message = s.wait_condition("cancel", "Complete", "False", "Cancelled", MINUTE);
    assert!(
        message.contains(&format!("the upgrades that began on {running} finish")),
        "{message}"
    );
    wait("the blocked node's Job to go", MINUTE, || {
        (!s.jobs("cancel").iter().any(|j| job_node(j) == blocked)).then_some(())
    });
    wait("the annotation to be removed", MINUTE, || {
        s.plan_json("cancel")["metadata"]["annotations"]
            .get("upgrade.cattle.io/cancel")
            .is_none()
            .then_some(())
    });
    // The begun upgrade finishes and is labelled; nothing else starts.
    let message = wait("the begun upgrade to finish", 2 * MINUTE, || {
        s.condition("cancel", "Complete")
            .map(|(_, _, m)| m)
            .filter(|m| m.contains("1 of 3 node(s) done"))
    });
    assert!(message.contains(&format!("(node {running})")), "{message}");
    assert!(
        s.node_label(&running, "plan.upgrade.cattle.io/cancel")
            .is_some()
    );
    assert!(!s.unschedulable(&running), "uncordoned once done");
    assert!(s.condition("cancel", "Stalled").unwrap().0 == "False");
    std::thread::sleep(Duration::from_secs(3));
    let nodes: Vec<String> = s.jobs("cancel").iter().map(job_node).collect();
    assert_eq!(nodes, std::slice::from_ref(&running), "nothing new started");
    assert!(!nodes.contains(waiting[0]));
    assert!(
        s.plan_events("cancel")
            .iter()
            .any(|e| e.starts_with("Cancelled: Plan cancel: the rollout of version")),
        "{:?}",
        s.plan_events("cancel")
    );

    // Resumed (the taint gone): the other two run and the Plan completes.
    ctx.kubectl(&["taint", "node", &blocked, "suc-test/block-"])
        .expect_ok();
    patch_plan(
        ctx,
        "cancel",
        json!({"metadata": {"annotations": {"suc-test/duration": "1s"}}}),
    );
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "annotate",
        "plan",
        "cancel",
        "upgrade.cattle.io/resume=true",
    ])
    .expect_ok();
    s.wait_condition("cancel", "Complete", "True", "Complete", 2 * MINUTE);
    assert!(s.plan_json("cancel")["status"].get("cancelled").is_none());
    s.cleanup();
}

/// `spec.windows` in another time zone (Asia/Kolkata, +05:30), with `onClose: Stop`: the
/// rollout starts while the window is open although `spec.window` is closed; once the window
/// closes, the upgrade that began finishes, the Job whose pod never began goes, and nothing else
/// starts until the window opens again.
pub fn windows_in_another_zone_start_and_stop_a_rollout(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "windows", 3);
    let zone = jiff::tz::TimeZone::get("Asia/Kolkata").unwrap();
    let local = |minutes: i64| {
        let at = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::from_mins(minutes))
            .unwrap();
        at.to_zoned(zone.clone()).strftime("%H:%M").to_string()
    };
    let all_week = json!(["su", "mo", "tu", "we", "th", "fr", "sa"]);
    let window = |start: i64, end: i64| {
        json!([{"days": all_week, "startTime": local(start), "endTime": local(end),
            "timeZone": "Asia/Kolkata", "onClose": "Stop"}])
    };
    let mut plan = spec();
    plan["concurrency"] = json!(2);
    plan["cordon"] = json!(true);
    // The Go controller's field: a minute a week, long past; the list decides.
    plan["window"] = json!({"days": ["su"], "startTime": local(-180), "endTime": local(-179)});
    plan["windows"] = window(-60, 60);
    let metadata = json!({"annotations": {"suc-test/duration": "20s"}});
    let (running, blocked) = one_running_one_blocked(&s, "windows", plan.clone(), metadata);

    // The window closes (it ended a minute ago, local time).
    plan["windows"] = window(-120, -1);
    s.apply_plan("windows", plan.clone(), json!({}));
    let message = s.wait_condition("windows", "Complete", "False", "Waiting", MINUTE);
    assert!(message.contains("(onClose: Stop)"), "{message}");
    assert!(
        message.contains(&format!("the upgrades that began on {running} finish")),
        "{message}"
    );
    wait("the blocked node's Job to go", MINUTE, || {
        (!s.jobs("windows").iter().any(|j| job_node(j) == blocked)).then_some(())
    });
    wait("the begun upgrade to be labelled", 2 * MINUTE, || {
        s.node_label(&running, "plan.upgrade.cattle.io/windows")
    });
    s.wait_observed("windows", MINUTE);
    std::thread::sleep(Duration::from_secs(3));
    let nodes: Vec<String> = s.jobs("windows").iter().map(job_node).collect();
    assert_eq!(nodes, std::slice::from_ref(&running), "nothing new starts");
    assert_eq!(
        s.condition("windows", "Complete").unwrap().1,
        "Waiting",
        "outside every window"
    );

    // Open again: the rest runs.
    ctx.kubectl(&["taint", "node", &blocked, "suc-test/block-"])
        .expect_ok();
    plan["windows"] = window(-60, 60);
    s.apply_plan(
        "windows",
        plan,
        json!({"annotations": {"suc-test/duration": "1s"}}),
    );
    s.wait_condition("windows", "Complete", "True", "Complete", 2 * MINUTE);
    s.cleanup();
}

/// `spec.failureBudget: {nodes: 2}` with three failing nodes (concurrency 3, every pod fails on
/// the test bed): the first two failures are given up (their slots freed, kept cordoned), the
/// third is over the budget and stops the rollout, which names all three.
pub fn a_failure_budget_of_two_gives_up_two_failed_nodes_and_stops_at_the_third(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "budget", 3);
    let mut plan = spec();
    plan["concurrency"] = json!(3);
    plan["cordon"] = json!(true);
    plan["failureBudget"] = json!({"nodes": 2});
    s.apply_plan("budget", plan, json!({"labels": {"suc-test/fail": "true"}}));
    let message = s.wait_condition("budget", "Complete", "False", "JobFailed", 3 * MINUTE);
    let entries = wait("three failed entries", MINUTE, || {
        let entries: Vec<Value> = s.plan_json("budget")["status"]["nodes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (entries.iter().filter(|e| e["phase"] == "Failed").count() == 3).then_some(entries)
    });
    let given_up: Vec<&str> = entries
        .iter()
        .filter(|e| e["givenUp"] == true)
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(given_up.len(), 2, "{entries:?}");
    let holding = entries
        .iter()
        .find(|e| e["givenUp"].is_null())
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .unwrap();
    let message = if message.contains(&format!("on Node {holding}")) {
        message
    } else {
        s.condition("budget", "Complete").unwrap().2
    };
    assert!(message.contains(&format!("on Node {holding}")), "{message}");
    assert!(
        message.contains(&format!(
            "also failed, within failureBudget: nodes {}",
            given_up.join(",")
        )),
        "{message}"
    );
    assert_eq!(
        s.plan_json("budget")["status"]["applying"],
        json!([holding]),
        "only the failure over the budget holds a slot"
    );
    assert_eq!(s.condition("budget", "Stalled").unwrap().0, "True");
    for node in &given_up {
        assert!(
            s.unschedulable(node),
            "{node} stays cordoned (failedNodes: Cordoned)"
        );
        // The node's history tells the failure.
        let annotations = s.node(node).unwrap().metadata.annotations.unwrap();
        let history: Vec<Value> =
            serde_json::from_str(&annotations["upgrade.cattle.io/history"]).unwrap();
        assert_eq!(history[0]["plan"], "budget", "{history:?}");
        assert_eq!(history[0]["result"], "Failed", "{history:?}");
    }
    s.cleanup();
}

/// The nodes of a Plan's Jobs, in the order they were created.
fn job_nodes_in_order(s: &Scenario, plan: &str) -> Vec<String> {
    let mut jobs = s.jobs(plan);
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone().map(|t| t.0));
    jobs.iter().map(job_node).collect()
}

/// `spec.canary` by count: one node goes first and alone, the rest waits (`AwaitingApproval`,
/// neither Reconciling nor Stalled) until `upgrade.cattle.io/approve`, which the controller
/// removes once acted on.
pub fn a_canary_wave_runs_alone_and_the_rest_waits_for_approval(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "canary", 3);
    let mut plan = spec();
    plan["concurrency"] = json!(2);
    plan["canary"] = json!({"nodes": 1});
    let metadata = json!({"annotations": {"suc-test/duration": "2s"}});
    s.apply_plan("canary", plan, metadata);
    let message = s.wait_condition(
        "canary",
        "Complete",
        "False",
        "AwaitingApproval",
        2 * MINUTE,
    );
    let first = job_nodes_in_order(&s, "canary");
    assert_eq!(first.len(), 1, "only the wave ran: {first:?}");
    assert!(
        message.contains(&format!(
            "the first wave (node {}) is done; 2 node(s) wait for approval",
            first[0]
        )) && message.contains("annotate plan canary upgrade.cattle.io/approve=true"),
        "{message}"
    );
    let canary = &s.plan_json("canary")["status"]["canary"];
    assert_eq!(canary["phase"], "AwaitingApproval", "{canary}");
    assert_eq!(canary["nodes"], json!(first), "{canary}");
    assert_eq!(s.condition("canary", "Reconciling").unwrap().0, "False");
    assert_eq!(s.condition("canary", "Stalled").unwrap().0, "False");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(s.jobs("canary").len(), 1, "the hold holds");

    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "annotate",
        "plan",
        "canary",
        "upgrade.cattle.io/approve=true",
    ])
    .expect_ok();
    s.wait_condition("canary", "Complete", "True", "Complete", 2 * MINUTE);
    let plan = s.plan_json("canary");
    assert!(
        plan["metadata"]["annotations"]
            .get("upgrade.cattle.io/approve")
            .is_none(),
        "the approval is removed once acted on"
    );
    assert_eq!(plan["status"]["canary"]["phase"], "Approved");
    assert_eq!(job_nodes_in_order(&s, "canary").len(), 3);
    let events = s.plan_events("canary");
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("AwaitingApproval: 2 node(s) wait"))
            && events
                .iter()
                .any(|e| e.starts_with("CanaryLifted: Plan canary: the rollout of version")),
        "{events:?}"
    );
    s.cleanup();
}

/// `spec.canary` by selector with `soakFor`: the labelled node goes first, the rest starts once
/// the wave has been done for the soak (`Soaking` meanwhile, Reconciling).
pub fn a_canary_wave_by_label_soaks_before_the_rest_start(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "soak", 3);
    let chosen = s.nodes[2].clone();
    ctx.kubectl(&["label", "node", &chosen, "upgrade-first=true"])
        .expect_ok();
    let mut plan = spec();
    plan["concurrency"] = json!(2);
    plan["canary"] =
        json!({"nodeSelector": {"matchLabels": {"upgrade-first": "true"}}, "soakFor": "20s"});
    plan["healthGates"] = json!({"allNodesReady": true});
    let metadata = json!({"annotations": {"suc-test/duration": "2s"}});
    s.apply_plan("soak", plan, metadata);
    let message = s.wait_condition("soak", "Complete", "False", "Soaking", 2 * MINUTE);
    let soak_began = std::time::Instant::now();
    assert!(
        message.contains(&format!("the first wave (node {chosen}) is done")),
        "{message}"
    );
    assert_eq!(
        job_nodes_in_order(&s, "soak"),
        std::slice::from_ref(&chosen)
    );
    assert_eq!(s.condition("soak", "Reconciling").unwrap().0, "True");
    let second = wait("the rest to start", MINUTE, || {
        (s.jobs("soak").len() > 1).then(std::time::Instant::now)
    });
    assert!(
        second.duration_since(soak_began) >= Duration::from_secs(15),
        "the rest started {:?} into a 20 s soak",
        second.duration_since(soak_began)
    );
    s.wait_condition("soak", "Complete", "True", "Complete", 2 * MINUTE);
    assert_eq!(s.plan_json("soak")["status"]["canary"]["phase"], "Soaked");
    s.cleanup();
}

/// When a Job ran: from its creation to its completion.
fn job_span(job: &k8s_openapi::api::batch::v1::Job) -> (jiff::Timestamp, jiff::Timestamp) {
    let created = job.metadata.creation_timestamp.clone().unwrap().0;
    let completed = (job.status.as_ref())
        .and_then(|s| s.completion_time.clone())
        .map_or(jiff::Timestamp::MAX, |t| t.0);
    (created, completed)
}

/// Three Plans applied together: `order-apt` waits (`WaitingForPlans`) until `order-k3s` is
/// Complete, and it shares an `exclusiveGroup` with `order-kernel`, so their Jobs never run at
/// the same time. A `dependsOn` cycle is refused at admission.
pub fn ordered_plans_and_an_exclusive_group_applied_together(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "order", 3);
    let selector = json!({"matchLabels": {"suc-test/scenario": "order"}});
    let plan = |name: &str, duration: &str, extra: Value| {
        let mut spec = spec();
        spec["nodeSelector"] = selector.clone();
        for (k, v) in extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
            "metadata": {"name": name, "namespace": NAMESPACE, "annotations": {"suc-test/duration": duration}},
            "spec": spec})
    };
    // The kernel Plan runs longest, so apt, once K3s is done, waits for it too.
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        plan("order-apt", "2s", json!({"dependsOn": ["order-k3s"], "exclusiveGroup": "maintenance"})),
        plan("order-kernel", "10s", json!({"exclusiveGroup": "maintenance"})),
        plan("order-k3s", "2s", json!({})),
    ]});
    ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&list.to_string()))
        .expect_ok();
    for name in ["order-k3s", "order-kernel", "order-apt"] {
        s.wait_condition(name, "Complete", "True", "Complete", 4 * MINUTE);
    }
    let k3s_done = s
        .jobs("order-k3s")
        .iter()
        .map(|j| job_span(j).1)
        .max()
        .unwrap();
    let apt: Vec<_> = s.jobs("order-apt").iter().map(job_span).collect();
    let kernel: Vec<_> = s.jobs("order-kernel").iter().map(job_span).collect();
    assert_eq!((apt.len(), kernel.len()), (3, 3));
    for (start, _) in &apt {
        assert!(
            *start >= k3s_done,
            "an apt Job started at {start}, before K3s was done at {k3s_done}"
        );
    }
    for (a_start, a_end) in &apt {
        for (k_start, k_end) in &kernel {
            assert!(
                a_end <= k_start || k_end <= a_start,
                "apt ran {a_start}..{a_end} while kernel ran {k_start}..{k_end}"
            );
        }
    }
    let waited = s.plan_events("order-apt");
    assert!(
        waited.iter().any(|e| e.starts_with(
            "WaitingForPlans: 3 node(s) wait: waiting for spec.dependsOn: Plan order-k3s"
        )),
        "{waited:?}"
    );
    let held = s
        .plan_events("order-apt")
        .into_iter()
        .chain(s.plan_events("order-kernel"));
    assert!(
        held.into_iter().any(|e| e.starts_with("WaitingForGroup:")),
        "one of the group waited for the other"
    );

    // A cycle through a stored Plan is refused, naming it.
    let cycle = plan("order-k3s", "2s", json!({"dependsOn": ["order-apt"]}));
    let out = ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&cycle.to_string()));
    assert!(!out.ok, "a cycle was admitted");
    assert!(
        out.stderr.contains(
            "spec.dependsOn: Plans order-k3s → order-apt → order-k3s wait for each other"
        ),
        "{}",
        out.stderr
    );
    for name in ["order-apt", "order-kernel", "order-k3s"] {
        s.delete_plan(name);
    }
    s.cleanup();
}
