//! The seeded soak: from a seed, a random mix of operator actions, workloads whose budgets block
//! evictions for a while, and faults (the leader killed or stopped, both replicas down,
//! kube-apiserver restarted, nodes NotReady, upgrades failing, Jobs deleted by hand, conflicting
//! writes) against two replicas with leader election; then the history the API server audited is
//! checked write by write (history.rs) and the end state once the faults stop.
//!
//!   cargo test --features e2e --test e2e -- --exact a_seeded_soak_keeps_the_safety_rules
//!
//! takes its seeds from `SUC_SOAK_SEEDS` (default `1,2`: one server, then three), its length
//! from `SUC_SOAK_SECONDS` (of faults and actions per seed, default 40), its node count from
//! `SUC_SOAK_NODES` (default 50) and how long the end may take to settle from
//! `SUC_SOAK_SETTLE_SECONDS` (default 300). `SUC_SOAK_OUT=FILE` appends one JSON line per seed.
//! `tests/soak/run.sh` runs the long soak.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use crate::history::{self, Checker, Outage, PREFIX};
use crate::resilience::ELECTION;
use crate::scenario::{SCENARIO_LABEL, Scenario};
use crate::support::{Ctx, NAMESPACE, SERVICE_ACCOUNT, Server, free_port, wait};

const SECRET: &str = "soak-os-script";
const OUT_LABEL: &str = "suc-test/soak-out";
/// Above the test bed's v1.30.4+k3s1, one minor at most.
const VERSIONS: [&str; 4] = [
    "v1.30.5+k3s1",
    "v1.30.6+k3s1",
    "v1.30.7+k3s1",
    "v1.31.0+k3s1",
];
/// How long after a fault the controller may take to act again (the Lease runs out, caches
/// refill), counted as an outage.
const TAKEOVER: Duration = Duration::from_secs(20);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The short soak of the test command: fixed seeds, a minute of chaos each.
pub fn a_seeded_soak_keeps_the_safety_rules(ctx: &Ctx) {
    let seeds: Vec<u64> = std::env::var("SUC_SOAK_SEEDS")
        .unwrap_or_else(|_| "1,2".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let seconds = env_or("SUC_SOAK_SECONDS", 40u64);
    let nodes = env_or("SUC_SOAK_NODES", 50usize);
    let mut failed = Vec::new();
    for seed in seeds {
        let report = run(ctx, seed, Duration::from_secs(seconds), nodes);
        eprintln!("{}", report.text);
        if let Ok(path) = std::env::var("SUC_SOAK_OUT") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .unwrap();
            writeln!(file, "{}", report.json).unwrap();
        }
        if report.violations > 0 {
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "the soak broke the rules with seeds {failed:?} (the reports above say how; replay one with \
         SUC_SOAK_SEEDS=<seed> SUC_SOAK_SECONDS={seconds} SUC_SOAK_NODES={nodes} cargo test \
         --features e2e --test e2e -- --exact a_seeded_soak_keeps_the_safety_rules)"
    );
}

pub struct Report {
    pub text: String,
    pub json: Value,
    pub violations: usize,
}

/// What a fault or action left to undo, and when.
#[derive(Debug)]
enum Undo {
    StartReplica(usize),
    Resume(u32),
    NodeBack(String),
    Succeed(String),
    Unblock,
    Uncordon(String),
    Unpause(String),
    UnpauseNode(String),
    LabelIn(String),
    Recreate(String),
}

/// A replica set behind one address: TLS passes through to the first replica that accepts a
/// connection, as a Service would send it to a ready pod.
struct Proxy {
    port: u16,
    targets: Arc<Mutex<Vec<u16>>>,
}

impl Proxy {
    fn start(ctx: &Ctx) -> Proxy {
        let port = free_port();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let shared = targets.clone();
        let listener = ctx
            .runtime
            .block_on(tokio::net::TcpListener::bind(("127.0.0.1", port)))
            .unwrap();
        ctx.runtime.spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let ports = shared.lock().unwrap().clone();
                tokio::spawn(async move {
                    for port in ports {
                        if let Ok(mut outbound) =
                            tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                        {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                            return;
                        }
                    }
                });
            }
        });
        Proxy { port, targets }
    }
}

struct Soak<'a> {
    ctx: &'a Ctx,
    seed: u64,
    rng: StdRng,
    operator: PathBuf,
    replicas: [Option<Server>; 2],
    proxy: Proxy,
    nodes: Vec<String>,
    pending: Vec<(Instant, Undo)>,
    outages: Vec<Outage>,
    done: BTreeMap<&'static str, usize>,
    refused: usize,
    plans: Vec<&'static str>,
    /// What the last refused kubectl said.
    last_error: String,
    /// The namespace of the workloads (one per seed: the last one may still be terminating).
    workloads: String,
}

/// A kubeconfig acting as the soak's operator (impersonated, in system:masters), so the audit
/// log tells its writes from everyone else's.
fn operator_kubeconfig(ctx: &Ctx) -> PathBuf {
    let text = std::fs::read_to_string(&ctx.cluster.kubeconfig).unwrap();
    let text = text.replacen(
        "  user:\n",
        &format!(
            "  user:\n    as: {}\n    as-groups: [\"system:masters\"]\n",
            history::OPERATOR
        ),
        1,
    );
    let path = ctx.cluster.dir.join("soak-operator.kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(ctx: &Ctx, seed: u64, chaos: Duration, node_count: usize) -> Report {
    let audit_log = ctx
        .cluster
        .kubeconfig
        .parent()
        .unwrap()
        .join("logs/audit.log");
    assert!(
        audit_log.exists(),
        "the soak reads the API server's audit log, and {} does not exist: start the cluster with \
         `tests/cluster/cluster.sh up --audit-policy tests/cluster/audit-policy.yaml`",
        audit_log.display()
    );
    ctx.ensure_server();
    ctx.stop_server();
    let servers = if seed % 2 == 1 { 1 } else { 3 };
    eprintln!(
        "soak: seed {seed}, {node_count} nodes ({servers} server(s)), {chaos:?} of faults and actions"
    );
    let scenario = Scenario::new(ctx, PREFIX, node_count);
    let started = history::now_us();
    let nodes_at_start: Vec<Value> = {
        let out = ctx.kubectl(&["get", "nodes", "-o", "json"]).expect_ok();
        let list: Value = serde_json::from_str(&out.stdout).unwrap();
        list["items"].as_array().unwrap().clone()
    };
    let mut soak = Soak {
        ctx,
        seed,
        rng: StdRng::seed_from_u64(seed),
        operator: operator_kubeconfig(ctx),
        replicas: [None, None],
        proxy: Proxy::start(ctx),
        nodes: scenario.nodes.clone(),
        pending: Vec::new(),
        outages: Vec::new(),
        done: BTreeMap::new(),
        refused: 0,
        plans: vec!["soak-server", "soak-agent", "soak-os"],
        last_error: String::new(),
        workloads: format!("soak-workloads-{seed}"),
    };
    for i in 0..2 {
        soak.start_replica(i);
    }
    ctx.register_webhooks(&format!("https://127.0.0.1:{}", soak.proxy.port));
    soak.setup(servers);
    let until = Instant::now() + chaos;
    while Instant::now() < until {
        soak.undo_due(false);
        soak.step();
        let pause = soak.rng.random_range(500..2500);
        std::thread::sleep(Duration::from_millis(pause));
    }
    soak.undo_due(true);
    let settled = soak.settle();
    let end = history::now_us();
    let end_state = soak.end_state();
    for replica in &mut soak.replicas {
        replica.take();
    }
    let text = std::fs::read_to_string(&audit_log).unwrap();
    let writes = history::read_audit(&text, started, SERVICE_ACCOUNT);
    let checker = Checker::run(soak.outages.clone(), &nodes_at_start, &writes, end);
    let mut violations = checker.violations.clone();
    violations.extend(end_state);
    let mut report = format!(
        "soak: seed {seed}: {} writes checked, {} violation(s); settled in {settled:?}\n  actions and faults: {:?} ({} refused)\n  outages counted: {}\n{}",
        writes.len(),
        violations.len(),
        soak.done,
        soak.refused,
        soak.outages.len(),
        history::summary(&checker.counts)
    );
    for v in &violations {
        report.push_str(&format!("VIOLATION (seed {seed}) {v}"));
    }
    if !violations.is_empty() {
        report.push_str(&format!(
            "replay: SUC_SOAK_SEEDS={seed} SUC_SOAK_SECONDS={} SUC_SOAK_NODES={node_count} cargo test --features e2e --test e2e -- --exact a_seeded_soak_keeps_the_safety_rules\n",
            chaos.as_secs()
        ));
        report.push_str(&format!("kept: {}\n", keep_evidence(ctx, seed, &audit_log)));
    }
    soak.cleanup();
    drop(scenario);
    let json = json!({
        "seed": seed, "nodes": node_count, "servers": servers, "seconds": chaos.as_secs(),
        "writes": writes.len(), "actions": soak.done, "refused": soak.refused,
        "violations": violations.iter().map(|v| format!("{:?}: {}", v.rule, v.message)).collect::<Vec<_>>(),
        "settled_seconds": settled.as_secs(),
    });
    Report {
        text: report,
        json,
        violations: violations.len(),
    }
}

/// Copies what a failed seed's violations are read from (the audit log, the replicas' logs)
/// out of the cluster's directory, which goes with the cluster, into `target/soak-failures/SEED`;
/// returns where (found by the long soak: a replay's evidence was gone before it was read).
/// A soak Plan's concurrency as it is created, and as the operator puts it back at the end.
fn first_concurrency(plan: &str) -> Value {
    match plan {
        "soak-server" => json!(1),
        "soak-agent" => json!("10%"),
        _ => json!("20%"),
    }
}

fn keep_evidence(ctx: &Ctx, seed: u64, audit_log: &std::path::Path) -> String {
    let kept = crate::support::repo("target/soak-failures").join(seed.to_string());
    // A replay's evidence replaces the last run's of that seed, not mixes with it.
    let _ = std::fs::remove_dir_all(&kept);
    let _ = std::fs::create_dir_all(&kept);
    let _ = std::fs::copy(audit_log, kept.join("audit.log"));
    let prefix = format!("server-soak-{seed}-");
    for entry in std::fs::read_dir(&ctx.cluster.dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            let _ = std::fs::copy(entry.path(), kept.join(&name));
        }
    }
    kept.display().to_string()
}

impl Soak<'_> {
    /// kubectl as the operator; a refusal (the webhook or API server down, a conflict) is
    /// counted, as an operator would retry later.
    fn kubectl(&mut self, args: &[&str], input: Option<&str>) -> bool {
        use std::io::Write as _;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &self.operator)
            .args(["--request-timeout=10s"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        if let Some(input) = input {
            stdin.write_all(input.as_bytes()).unwrap();
        }
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            self.refused += 1;
            self.last_error = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        out.status.success()
    }

    fn apply(&mut self, object: &Value) -> bool {
        self.kubectl(&["apply", "-f", "-"], Some(&object.to_string()))
    }

    fn patch_plan(&mut self, plan: &str, patch: Value) -> bool {
        self.kubectl(
            &[
                "-n",
                NAMESPACE,
                "patch",
                "plan",
                plan,
                "--type=merge",
                "-p",
                &patch.to_string(),
            ],
            None,
        )
    }

    /// Sets (`key=value`) or removes (`key-`) a node's label as the operator.
    fn label_node(&mut self, node: &str, label: &str) -> bool {
        self.kubectl(&["label", "node", node, label, "--overwrite"], None)
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.rng.random_range(0..items.len())].clone()
    }

    fn node(&mut self) -> String {
        let nodes = self.nodes.clone();
        self.pick(&nodes)
    }

    fn later(&mut self, seconds: std::ops::Range<u64>, undo: Undo) -> Duration {
        let wait = Duration::from_secs(self.rng.random_range(seconds));
        self.pending.push((Instant::now() + wait, undo));
        wait
    }

    fn outage(&mut self, from: Instant, lasting: Duration) {
        let now = history::now_us();
        let from_us = now - i64::try_from(from.elapsed().as_micros()).unwrap();
        self.outages.push(Outage {
            from: from_us,
            to: from_us + i64::try_from((lasting + TAKEOVER).as_micros()).unwrap(),
        });
    }

    fn start_replica(&mut self, i: usize) {
        let server = Server::spawn(self.ctx, &format!("soak-{}-{i}", self.seed), ELECTION);
        server.wait_ready();
        let mut targets = self.proxy.targets.lock().unwrap();
        targets.retain(|p| self.replicas.iter().flatten().any(|r| r.port == *p));
        targets.push(server.port);
        drop(targets);
        self.replicas[i] = Some(server);
    }

    /// The replica holding the Lease, by the pid ending its identity.
    fn leader(&self) -> Option<usize> {
        let out = self.ctx.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "lease",
            "system-upgrade-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        let holder = out.stdout.trim().to_owned();
        self.replicas.iter().position(|r| {
            r.as_ref()
                .is_some_and(|r| holder.ends_with(&format!("_{}", r.pid())))
        })
    }

    /// The cluster a rollout starts from: nodes with their roles, workloads behind budgets, the
    /// Secret, and three Plans (K3s servers, agents with prepare and drain, an OS Plan with a
    /// Secret over all nodes).
    fn setup(&mut self, servers: usize) {
        for (i, node) in self.nodes.clone().iter().enumerate() {
            if i < servers {
                self.ctx
                    .kubectl(&[
                        "label",
                        "node",
                        node,
                        "node-role.kubernetes.io/control-plane=true",
                        "--overwrite",
                    ])
                    .expect_ok();
            }
        }
        // Left from an earlier run of the same seed, it is reused.
        let _ = self.ctx.kubectl(&["create", "namespace", &self.workloads]);
        let replicas = self.nodes.len() / 2;
        for (app, count, budget) in [
            ("web", replicas, json!({"minAvailable": "50%"})),
            ("db", 3, json!({"maxUnavailable": 1})),
        ] {
            let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": format!("soak-{app}"), "namespace": &self.workloads},
                "spec": {"replicas": count, "selector": {"matchLabels": {"app": app}},
                    "template": {"metadata": {"labels": {"app": app}}, "spec": {
                        "nodeSelector": {SCENARIO_LABEL: PREFIX},
                        "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": app, "image": "registry.invalid/soak"}]}}}});
            let mut spec = budget;
            spec["selector"] = json!({"matchLabels": {"app": app}});
            let pdb = json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                "metadata": {"name": format!("soak-{app}"), "namespace": &self.workloads}, "spec": spec});
            let list = json!({"apiVersion": "v1", "kind": "List", "items": [deployment, pdb]});
            self.ctx
                .kubectl_with_input(&["apply", "-f", "-"], Some(&list.to_string()))
                .expect_ok();
        }
        self.secret_edit();
        for plan in self.plans.clone() {
            assert!(
                self.create_plan(plan),
                "the soak's Plan {plan} was refused: {}",
                self.last_error
            );
        }
    }

    fn plan_object(&mut self, name: &str) -> Value {
        let duration = format!("{}s", self.rng.random_range(1..4));
        let out = json!({"key": OUT_LABEL, "operator": "DoesNotExist"});
        let role = "node-role.kubernetes.io/control-plane";
        // The soak bumps versions up and down, and the agents' Plan apart from the servers':
        // the version rules would hold nodes for good. They have their own tests (versions.rs).
        let mut spec = json!({"version": VERSIONS[0], "upgrade": {"image": "rancher/k3s-upgrade"},
            "versionSafety": {"allowDowngrade": true, "serversFirst": false}});
        match name {
            "soak-server" => {
                spec["nodeSelector"] = json!({"matchLabels": {SCENARIO_LABEL: PREFIX, role: "true"}, "matchExpressions": [out]});
                spec["concurrency"] = first_concurrency(name);
                spec["cordon"] = json!(true);
            }
            "soak-agent" => {
                spec["nodeSelector"] = json!({"matchLabels": {SCENARIO_LABEL: PREFIX}, "matchExpressions": [out, {"key": role, "operator": "DoesNotExist"}]});
                spec["concurrency"] = first_concurrency(name);
                spec["prepare"] =
                    json!({"image": "rancher/k3s-upgrade", "args": ["prepare", "soak-server"]});
                spec["drain"] =
                    json!({"force": true, "ignoreDaemonSets": true, "deleteEmptydirData": true});
            }
            _ => {
                spec["nodeSelector"] =
                    json!({"matchLabels": {SCENARIO_LABEL: PREFIX}, "matchExpressions": [out]});
                spec["concurrency"] = first_concurrency(name);
                spec["cordon"] = json!(true);
                spec["version"] = json!("v1.0.0");
                spec.as_object_mut().unwrap().remove("versionSafety");
                spec["upgrade"] = json!({"image": "registry.invalid/os-upgrade", "command": ["sh", "-c"], "args": ["sh /host/run/system-upgrade/secrets/soak-os-script/script"]});
                spec["secrets"] = json!([{"name": SECRET, "path": "/host/run/system-upgrade/secrets/soak-os-script"}]);
            }
        }
        json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
            "metadata": {"name": name, "namespace": NAMESPACE, "annotations": {"suc-test/duration": duration}},
            "spec": spec})
    }

    fn create_plan(&mut self, name: &str) -> bool {
        let plan = self.plan_object(name);
        self.apply(&plan)
    }

    fn secret_edit(&mut self) {
        let value = format!("echo {}", self.rng.random_range(0..1_000_000u32));
        let secret = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE}, "stringData": {"script": value}});
        self.apply(&secret);
    }

    /// One random action or fault.
    fn step(&mut self) {
        let plans = self.plans.clone();
        let plan = self.pick(&plans).to_owned();
        let what: &'static str = match self.rng.random_range(0..21) {
            0 | 1 => {
                let version = self.pick(&VERSIONS);
                let version = if plan == "soak-os" {
                    format!("v1.{}.0", self.rng.random_range(1..5))
                } else {
                    version.to_owned()
                };
                self.patch_plan(&plan, json!({"spec": {"version": version}}));
                "version bump"
            }
            2 => {
                self.secret_edit();
                "Secret edit"
            }
            3 => {
                let timeout = self.pick(&[Value::Null, json!("20s"), json!("90s")]);
                let on_timeout =
                    self.pick(&[Value::Null, json!("Skip"), json!("Retry"), json!("Fail")]);
                let drain = json!({"force": true, "ignoreDaemonSets": true, "deleteEmptydirData": true, "timeout": timeout, "onTimeout": if timeout.is_null() { Value::Null } else { on_timeout }, "skipWaitForDeleteTimeout": self.rng.random_range(0..30)});
                self.patch_plan("soak-agent", json!({"spec": {"drain": drain}}));
                "drain edit"
            }
            4 => {
                let retry = self.pick(&[
                    Value::Null,
                    json!({"limit": 2, "backoff": "5s"}),
                    json!({"limit": 5, "backoff": "2s"}),
                ]);
                self.patch_plan(&plan, json!({"spec": {"retry": retry}}));
                "retry edit"
            }
            5 => {
                if self.patch_plan(&plan, json!({"spec": {"paused": true}})) {
                    self.later(5..30, Undo::Unpause(plan));
                }
                "Plan paused"
            }
            6 => {
                let node = self.node();
                if self.label_node(&node, "upgrade.cattle.io/pause=true") {
                    self.later(5..30, Undo::UnpauseNode(node));
                }
                "node paused"
            }
            7 => {
                // Every failed node, or one named (failed or not).
                let which = if self.rng.random_bool(0.5) {
                    "all".to_owned()
                } else {
                    self.node()
                };
                self.kubectl(
                    &[
                        "-n",
                        NAMESPACE,
                        "annotate",
                        "plan",
                        &plan,
                        &format!("upgrade.cattle.io/retry={which}"),
                        "--overwrite",
                    ],
                    None,
                );
                "retry requested"
            }
            8 => {
                if plan != "soak-server"
                    && self.kubectl(
                        &["-n", NAMESPACE, "delete", "plan", &plan, "--wait=false"],
                        None,
                    )
                {
                    self.later(5..20, Undo::Recreate(plan));
                }
                "Plan deleted"
            }
            9 => {
                let node = self.node();
                if self.label_node(&node, &format!("{OUT_LABEL}=true")) {
                    self.later(3..25, Undo::LabelIn(node));
                }
                "node labelled out"
            }
            10 => {
                let concurrency =
                    self.pick(&[json!(1), json!(3), json!("5%"), json!("15%"), json!("30%")]);
                let target = if plan == "soak-server" {
                    "soak-agent".to_owned()
                } else {
                    plan
                };
                self.patch_plan(&target, json!({"spec": {"concurrency": concurrency}}));
                "concurrency edit"
            }
            11 => self.kill_leader(),
            12 => self.stop_leader(),
            13 => self.both_down(),
            14 => {
                let down = self.rng.random_range(2..6);
                let from = Instant::now();
                self.ctx
                    .cluster
                    .restart_apiserver(Duration::from_secs(down));
                self.outage(from, from.elapsed());
                "kube-apiserver restarted"
            }
            15 => {
                let node = self.node();
                if self.label_node(&node, "type-") {
                    self.later(45..80, Undo::NodeBack(node));
                }
                "node NotReady"
            }
            16 => {
                if self.kubectl(
                    &[
                        "-n",
                        NAMESPACE,
                        "label",
                        "plan",
                        &plan,
                        "suc-test/fail=true",
                        "--overwrite",
                    ],
                    None,
                ) {
                    self.later(5..25, Undo::Succeed(plan));
                }
                "upgrades failing"
            }
            17 => {
                self.delete_a_job();
                "Job deleted by hand"
            }
            18 => {
                self.conflicting_writes();
                "conflicting writes"
            }
            19 => {
                let window = self.window();
                self.patch_plan(&plan, json!({"spec": {"window": window}}));
                "window edit"
            }
            _ => {
                if self
                    .ctx
                    .kubectl(&[
                        "-n",
                        &self.workloads,
                        "patch",
                        "pdb",
                        "soak-db",
                        "--type=merge",
                        "-p",
                        r#"{"spec":{"maxUnavailable":0}}"#,
                    ])
                    .ok
                {
                    self.later(10..40, Undo::Unblock);
                }
                "budget blocks evictions"
            }
        };
        *self.done.entry(what).or_default() += 1;
    }

    /// A window open all week, one open only yesterday (closed now), or none.
    fn window(&mut self) -> Value {
        const DAYS: [&str; 7] = ["su", "mo", "tu", "we", "th", "fr", "sa"];
        let today = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .weekday()
            .to_sunday_zero_offset() as usize;
        let days: Vec<&str> = match self.rng.random_range(0..3) {
            0 => return Value::Null,
            1 => DAYS.to_vec(),
            _ => vec![DAYS[(today + 6) % 7]],
        };
        json!({"days": days, "startTime": "00:00:00", "endTime": "23:59:59", "timeZone": "UTC"})
    }

    fn kill_leader(&mut self) -> &'static str {
        let Some(i) = self.leader() else {
            return "leader killed (none led)";
        };
        let from = Instant::now();
        if let Some(replica) = self.replicas[i].as_mut() {
            replica.kill_hard();
        }
        self.replicas[i] = None;
        let back = self.later(2..10, Undo::StartReplica(i));
        self.outage(from, back.min(Duration::from_secs(10)));
        "leader killed"
    }

    fn stop_leader(&mut self) -> &'static str {
        let Some(pid) = self
            .leader()
            .and_then(|i| self.replicas[i].as_ref())
            .map(Server::pid)
        else {
            return "leader stopped (none led)";
        };
        let from = Instant::now();
        let _ = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status();
        let back = self.later(5..25, Undo::Resume(pid));
        self.outage(from, back);
        "leader stopped"
    }

    fn both_down(&mut self) -> &'static str {
        let from = Instant::now();
        for i in 0..2 {
            if let Some(mut replica) = self.replicas[i].take() {
                replica.kill_hard();
            }
        }
        let back = self.later(5..20, Undo::StartReplica(0));
        self.pending
            .push((Instant::now() + back, Undo::StartReplica(1)));
        self.outage(from, back);
        "both replicas down"
    }

    fn delete_a_job(&mut self) {
        let out = self.ctx.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "jobs",
            "-l",
            "upgrade.cattle.io/plan",
            "-o",
            "jsonpath={range .items[?(@.status.active)]}{.metadata.name}{\"\\n\"}{end}",
        ]);
        let jobs: Vec<String> = out
            .stdout
            .lines()
            .filter(|l| l.contains(PREFIX))
            .map(str::to_owned)
            .collect();
        if !jobs.is_empty() {
            let job = self.pick(&jobs);
            self.kubectl(
                &["-n", NAMESPACE, "delete", "job", &job, "--wait=false"],
                None,
            );
        }
    }

    /// Writes racing the controller's on busy nodes (annotations), and a node cordoned by hand.
    fn conflicting_writes(&mut self) {
        for _ in 0..4 {
            let node = self.node();
            let value = self.rng.random_range(0..1000u32).to_string();
            self.kubectl(
                &[
                    "annotate",
                    "node",
                    &node,
                    &format!("suc-test/touched={value}"),
                    "--overwrite",
                ],
                None,
            );
        }
        let node = self.node();
        if self.kubectl(&["cordon", &node], None) {
            self.later(5..30, Undo::Uncordon(node));
        }
    }

    /// Undoes what is due (or everything, at the end).
    fn undo_due(&mut self, all: bool) {
        let now = Instant::now();
        let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(at, _)| all || *at <= now);
        self.pending = rest;
        for (_, undo) in due {
            self.undo(undo);
        }
    }

    fn undo(&mut self, undo: Undo) {
        let ok = match &undo {
            Undo::StartReplica(i) => {
                if self.replicas[*i].is_none() {
                    self.start_replica(*i);
                }
                true
            }
            Undo::Resume(pid) => Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status()
                .is_ok(),
            Undo::NodeBack(node) => self.label_node(node, "type=kwok"),
            Undo::Succeed(plan) => self.kubectl(
                &["-n", NAMESPACE, "label", "plan", plan, "suc-test/fail-"],
                None,
            ),
            Undo::Unblock => {
                self.ctx
                    .kubectl(&[
                        "-n",
                        &self.workloads,
                        "patch",
                        "pdb",
                        "soak-db",
                        "--type=merge",
                        "-p",
                        r#"{"spec":{"maxUnavailable":1}}"#,
                    ])
                    .ok
            }
            Undo::Uncordon(node) => self.kubectl(&["uncordon", node], None),
            Undo::Unpause(plan) => self.patch_plan(plan, json!({"spec": {"paused": false}})),
            Undo::UnpauseNode(node) => self.label_node(node, "upgrade.cattle.io/pause-"),
            Undo::LabelIn(node) => self.label_node(node, &format!("{OUT_LABEL}-")),
            Undo::Recreate(plan) => {
                let gone = !self.ctx.kubectl(&["-n", NAMESPACE, "get", "plan", plan]).ok;
                !gone || self.create_plan(plan)
            }
        };
        if !ok {
            // Refused (the webhook or the API server was down): tried again shortly.
            self.pending
                .push((Instant::now() + Duration::from_secs(2), undo));
        }
    }

    /// Once the faults stop: every undo done (retried until accepted), every Plan asked to retry
    /// what failed, then a wait until the end state holds or time runs out.
    fn settle(&mut self) -> Duration {
        let from = Instant::now();
        let deadline = from + Duration::from_secs(120);
        while !self.pending.is_empty() && Instant::now() < deadline {
            self.undo_due(true);
            if !self.pending.is_empty() {
                std::thread::sleep(Duration::from_secs(2));
            }
        }
        for i in 0..2 {
            if self.replicas[i].is_none() {
                self.start_replica(i);
            }
        }
        // The operator removes the windows (a window edit may have left one closed today), as a
        // rollout that waits for next week's window never reaches the end state (found by the
        // long soak: seed 619132735 ended with the server Plan waiting for Friday).
        for plan in self.plans.clone() {
            wait("the window to be removed", Duration::from_secs(60), || {
                self.patch_plan(plan, json!({"spec": {"window": null}}))
                    .then_some(())
            });
        }
        // And puts each Plan's concurrency back: 200 nodes one at a time outlast the settle
        // (seed 1794609592 ended with soak-os at 1 and 120 nodes to go).
        for plan in self.plans.clone() {
            wait(
                "the concurrency to be restored",
                Duration::from_secs(60),
                || {
                    self.patch_plan(
                        plan,
                        json!({"spec": {"concurrency": first_concurrency(plan)}}),
                    )
                    .then_some(())
                },
            );
        }
        for plan in self.plans.clone() {
            wait(
                "the retry request to be taken",
                Duration::from_secs(60),
                || {
                    self.kubectl(
                        &[
                            "-n",
                            NAMESPACE,
                            "annotate",
                            "plan",
                            plan,
                            "upgrade.cattle.io/retry=all",
                            "--overwrite",
                        ],
                        None,
                    )
                    .then_some(())
                },
            );
        }
        let limit = Duration::from_secs(env_or("SUC_SOAK_SETTLE_SECONDS", 300u64));
        let mut asked = Instant::now();
        while from.elapsed() < limit {
            if self.end_state().is_empty() {
                break;
            }
            // A Job created while "upgrades failing" held may fail after the request above (seed
            // 619132735 left two agent nodes failed, rightly cordoned): the operator asks again.
            // (Earlier runs asked with a timestamp, which names no node: nothing was retried.)
            if asked.elapsed() > Duration::from_secs(30) {
                asked = Instant::now();
                self.retry_failed();
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        from.elapsed()
    }

    /// Asks for a retry of every Plan whose status names a failed node.
    fn retry_failed(&mut self) {
        for plan in self.list("plans", Some(NAMESPACE)) {
            let failed = plan["status"]["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().any(|n| n["phase"] == "Failed"));
            let name = plan["metadata"]["name"].as_str().unwrap_or_default();
            if failed {
                let value = "upgrade.cattle.io/retry=all";
                let args = [
                    "-n",
                    NAMESPACE,
                    "annotate",
                    "plan",
                    name,
                    value,
                    "--overwrite",
                ];
                self.kubectl(&args, None);
            }
        }
    }

    fn list(&self, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let mut args = vec!["get", kind, "-o", "json"];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        let out = self.ctx.kubectl(&args).expect_ok();
        let list: Value = serde_json::from_str(&out.stdout).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| {
                i["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(PREFIX))
                    || i["metadata"]["labels"]["upgrade.cattle.io/plan"]
                        .as_str()
                        .is_some_and(|p| p.starts_with(PREFIX))
            })
            .cloned()
            .collect()
    }

    fn end_state(&self) -> Vec<history::Violation> {
        let plans = self.list("plans", Some(NAMESPACE));
        let nodes = self.list("nodes", None);
        let jobs = self.list("jobs", Some(NAMESPACE));
        history::end_state(&plans, &nodes, &jobs)
    }

    fn cleanup(&mut self) {
        for plan in self.plans.clone() {
            self.ctx
                .kubectl(&[
                    "-n",
                    NAMESPACE,
                    "delete",
                    "plan",
                    plan,
                    "--ignore-not-found",
                ])
                .expect_ok();
        }
        self.ctx
            .kubectl(&[
                "delete",
                "namespace",
                &self.workloads,
                "--ignore-not-found",
                "--wait=false",
            ])
            .expect_ok();
        self.ctx
            .kubectl(&[
                "-n",
                NAMESPACE,
                "delete",
                "secret",
                SECRET,
                "--ignore-not-found",
            ])
            .expect_ok();
    }
}
