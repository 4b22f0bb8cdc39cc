//! The soak's history and its checker: the API server's audit log read back as one list of
//! writes in the order they were answered, and the project's safety rules checked after every
//! write, not only at the end (tests/e2e/soak.rs makes the history).
//!
//! Who wrote is read from the audit event: the controller acts as its ServiceAccount, the soak's
//! operator as the user `soak-operator` (both impersonated, see soak.rs); everyone else
//! (kube-controller-manager, the scheduler, kwok) is the system. The checker trusts nothing the
//! controller says about itself (no status, no run digest): what a Job runs, whether its upgrade
//! began, and who asked for what are read from the objects and requests alone.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;

use serde_json::Value;

/// Plans, nodes and Secrets of the soak are named with this prefix.
pub const PREFIX: &str = "soak";
pub const OPERATOR: &str = "soak-operator";
const CLAIM_PREFIX: &str = "cordoned.upgrade.cattle.io/";
const DRAINED: &str = "upgrade.cattle.io/drained";
/// How long a cordon may outlast its reason while the controller can act (it needs a pass after
/// the Job's end, and its caches lag).
pub const CORDON_GRACE_US: i64 = 60_000_000;
/// How soon after its last Job ended unfinished (deleted, or failed) a node's next Job of the Plan
/// goes on with the same turn rather than taking a new one (a retry, a Job deleted by hand and
/// created again), not counting outages.
const CONTINUE_US: i64 = 30_000_000;
/// How far back a percentage's node count is taken (the controller's caches lag behind labels).
const SELECTION_LAG_US: i64 = 30_000_000;
/// Lines of a node's history a violation shows.
const TRAIL: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Actor {
    Controller,
    Operator,
    System,
}

/// One answered write, as the audit log recorded it.
#[derive(Clone, Debug)]
pub struct Write {
    /// Microseconds since the epoch at which the answer was complete.
    pub at: i64,
    /// When the API server received the request: a write received before another completed is
    /// concurrent with it, and may have taken effect before it.
    pub received: i64,
    pub actor: Actor,
    /// The user agent, for the report.
    pub agent: String,
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    pub request: Value,
    pub response: Value,
}

/// The rules of the project the checker holds every write to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// More nodes of a Plan cordoned by us or running its upgrade than its concurrency.
    Concurrency,
    /// A node cordoned, or a pod evicted from it, before the upgrade pod runs there.
    TouchedBeforeItsPod,
    /// A Job whose upgrade may have begun deleted with no change of what it runs and no
    /// operator action.
    BegunJobEnded,
    /// A node upgraded twice for one hash, or by two Jobs at once.
    UpgradedTwice,
    /// A node cordoned by us long after the controller was done with it.
    LeftCordoned,
    /// A node the operator cordoned was uncordoned by the controller.
    OperatorCordonUndone,
    /// The cluster once the faults stopped: nodes, Jobs and the Plans' status.
    EndState,
}

#[derive(Clone, Debug)]
pub struct Violation {
    pub rule: Rule,
    pub at: i64,
    pub message: String,
    /// The writes about the node concerned leading up to the violation.
    pub trail: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{:?} at {}: {}", self.rule, clock(self.at), self.message)?;
        for line in &self.trail {
            writeln!(f, "    {line}")?;
        }
        Ok(())
    }
}

/// A time as `HH:MM:SS.micros` (UTC), for reports.
pub fn clock(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us)
        .map(|t| t.strftime("%H:%M:%S%.6f").to_string())
        .unwrap_or_else(|_| us.to_string())
}

pub fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}

/// The writes of an audit log about the soak's objects answered at or after `since`, in the
/// order they were answered. Lines that are not audit events (a line cut by a crash) are skipped.
pub fn read_audit(text: &str, since: i64, controller_user: &str) -> Vec<Write> {
    let mut writes: Vec<Write> = text
        .lines()
        // Every object of the soak is named for it (nodes, Plans, Jobs and their pods, the
        // workloads' namespace, the Secret): the rest of the log need not be parsed.
        .filter(|line| line.contains(PREFIX))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter_map(|e| {
            let at = e["stageTimestamp"]
                .as_str()?
                .parse::<jiff::Timestamp>()
                .ok()?
                .as_microsecond();
            if at < since {
                return None;
            }
            let received = e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map_or(at, |t| t.as_microsecond());
            let user = e["impersonatedUser"]["username"]
                .as_str()
                .or(e["user"]["username"].as_str())
                .unwrap_or("");
            let actor = if user == controller_user {
                Actor::Controller
            } else if user == OPERATOR {
                Actor::Operator
            } else {
                Actor::System
            };
            let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
            let object = &e["objectRef"];
            let mut name = text(&object["name"]);
            if name.is_empty() {
                name = text(&e["responseObject"]["metadata"]["name"]);
            }
            Some(Write {
                at,
                received,
                actor,
                agent: text(&e["userAgent"]),
                verb: text(&e["verb"]),
                resource: text(&object["resource"]),
                subresource: text(&object["subresource"]),
                namespace: text(&object["namespace"]),
                name,
                code: e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                request: e["requestObject"].clone(),
                response: e["responseObject"].clone(),
            })
        })
        .collect();
    writes.sort_by_key(|w| w.at);
    writes
}

/// A stretch of time in which the controller could not act (no replica leading, or no API
/// server): the time a cordon may outlast its reason is counted without it.
#[derive(Clone, Copy, Debug)]
pub struct Outage {
    pub from: i64,
    pub to: i64,
}

fn overlap(outages: &[Outage], from: i64, to: i64) -> i64 {
    outages
        .iter()
        .map(|o| (o.to.min(to) - o.from.max(from)).max(0))
        .sum()
}

#[derive(Debug, Default)]
struct JobRec {
    uid: String,
    name: String,
    plan: String,
    node: String,
    hash: String,
    created: i64,
    /// Complete (true) or Failed (false).
    finished: Option<bool>,
    pod_failed: bool,
    /// A pod of it succeeded (its status may lag behind).
    pod_succeeded: bool,
    deleted: bool,
    /// When it was deleted or failed, if it did.
    ended: Option<i64>,
    /// When it stopped being live (deleted or finished), as the API server answered it.
    gone_at: Option<i64>,
    begun: bool,
    /// The node's label of this Plan when the Job was created.
    label_at_create: Option<String>,
}

impl JobRec {
    fn live(&self) -> bool {
        !self.deleted && self.finished.is_none()
    }

    /// Live for a write received at `received`: live, or gone only after it was received (the
    /// two were concurrent, so the write may have taken effect first). Found by the long soak:
    /// an operator's Job deletion answered 1 ms after the controller's cordon was received.
    fn live_for(&self, received: i64) -> bool {
        self.live() || self.gone_at.is_some_and(|gone| gone > received)
    }

    fn failed(&self) -> bool {
        self.finished == Some(false) || self.pod_failed
    }
}

/// A pod of an upgrade Job.
#[derive(Debug, Default)]
struct UpgradePod {
    job_uid: String,
    node: Option<String>,
    /// It runs on its node: its gate (or prepare) started, or it is Running.
    runs: bool,
    /// The resourceVersion of the state `runs` was read from: writes are replayed in the order
    /// of their answers, and a create can be answered after the first update of what it created
    /// (found by the long soak: the pod's create, answered 1 ms after kwok's status patch, read
    /// as the pod no longer running).
    version: u64,
}

#[derive(Debug, Default)]
struct PlanRec {
    exists: bool,
    /// What the Plan runs: version, channel, prepare, upgrade, Secrets, service account.
    run: Value,
    secrets: Vec<String>,
    concurrency: Value,
    selector: Value,
    /// When what it runs changed, or a Secret it names, or the Plan went.
    run_changed: Vec<i64>,
    /// The number of nodes it selected, from when.
    selected: Vec<(i64, usize)>,
}

#[derive(Debug, Default)]
struct NodeRec {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    unschedulable: bool,
    /// Cordoned by the operator (and not uncordoned by them since).
    operator_cordoned: bool,
    /// Per Plan: since when its claim on the node has had no reason.
    unjustified: BTreeMap<String, i64>,
    /// The Plans that select it, and when each last began or stopped to.
    selected_by: BTreeSet<String>,
    selection_changed: BTreeMap<String, i64>,
    trail: VecDeque<String>,
}

/// The state the writes build, and the violations found so far.
#[derive(Default)]
pub struct Checker {
    jobs: Vec<JobRec>,
    /// Pods of upgrade Jobs, by name.
    upgrade_pods: BTreeMap<String, UpgradePod>,
    /// Other pods: namespace/name → node.
    workload_pods: BTreeMap<String, String>,
    plans: BTreeMap<String, PlanRec>,
    nodes: BTreeMap<String, NodeRec>,
    outages: Vec<Outage>,
    pub violations: Vec<Violation>,
    /// Operator writes and controller writes seen, for the report.
    pub counts: BTreeMap<String, usize>,
    now: i64,
}

fn map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
        .collect()
}

/// Whether a label selector (matchLabels and matchExpressions) selects a node's labels.
pub fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let labels_match = map(&selector["matchLabels"])
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_match = selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let value = labels.get(key).map(String::as_str);
            match e["operator"].as_str().unwrap_or("") {
                "In" => value.is_some_and(|v| values.contains(&v)),
                "NotIn" => value.is_none_or(|v| !values.contains(&v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        });
    labels_match && expressions_match
}

/// How many nodes a concurrency allows of `selected` (a percentage is rounded down, at least 1).
pub fn allowed(concurrency: &Value, selected: usize) -> usize {
    if let Some(n) = concurrency.as_u64() {
        return n as usize;
    }
    let Some(percent) = concurrency
        .as_str()
        .and_then(|t| t.strip_suffix('%'))
        .and_then(|p| p.parse::<usize>().ok())
    else {
        return 0;
    };
    (selected * percent / 100).max(1)
}

impl Checker {
    pub fn new(outages: Vec<Outage>) -> Checker {
        Checker {
            outages,
            ..Checker::default()
        }
    }

    /// Checks a whole history, from the nodes as they were when it began; the violations are
    /// in `self.violations`.
    pub fn run(outages: Vec<Outage>, nodes: &[Value], writes: &[Write], end: i64) -> Checker {
        let mut checker = Checker::new(outages);
        for node in nodes {
            let name = node["metadata"]["name"].as_str().unwrap_or("");
            if !name.starts_with(PREFIX) {
                continue;
            }
            let rec = checker.nodes.entry(name.to_owned()).or_default();
            rec.labels = map(&node["metadata"]["labels"]);
            rec.annotations = map(&node["metadata"]["annotations"]);
            rec.unschedulable = node["spec"]["unschedulable"] == true;
        }
        for write in writes {
            checker.apply(write);
        }
        checker.finish(end);
        checker
    }

    fn violate(&mut self, rule: Rule, node: &str, message: String) {
        let trail = self
            .nodes
            .get(node)
            .map(|n| n.trail.iter().cloned().collect())
            .unwrap_or_default();
        self.violations.push(Violation {
            rule,
            at: self.now,
            message,
            trail,
        });
    }

    fn note(&mut self, node: &str, w: &Write, what: &str) {
        let line = format!(
            "{} {:?} {} {}{} {}: {what}",
            clock(w.at),
            w.actor,
            w.verb,
            w.resource,
            if w.subresource.is_empty() {
                String::new()
            } else {
                format!("/{}", w.subresource)
            },
            w.name
        );
        let trail = &mut self.nodes.entry(node.to_owned()).or_default().trail;
        trail.push_back(line);
        if trail.len() > TRAIL {
            trail.pop_front();
        }
    }

    /// Applies one write and checks the rules it could break.
    pub fn apply(&mut self, w: &Write) {
        self.now = w.at;
        if !(200..300).contains(&w.code) {
            // Refused writes changed nothing; an eviction tried is still checked.
            if w.subresource == "eviction" && w.actor == Actor::Controller {
                self.eviction(w);
            }
            return;
        }
        *self
            .counts
            .entry(format!("{:?} {} {}", w.actor, w.verb, w.resource))
            .or_default() += 1;
        match (w.resource.as_str(), w.subresource.as_str()) {
            ("plans", "") => self.plan(w),
            ("secrets", _) => self.secret(w),
            ("nodes", "") => self.node(w),
            ("pods", "binding") => self.binding(w),
            ("pods", "eviction") => self.eviction(w),
            ("pods", _) => self.pod(w),
            ("jobs", _) => self.job(w),
            _ => {}
        }
        self.sweep();
    }

    fn plan(&mut self, w: &Write) {
        if !w.name.starts_with(PREFIX) {
            return;
        }
        let rec = self.plans.entry(w.name.clone()).or_default();
        if w.verb == "delete" {
            rec.exists = false;
            rec.run_changed.push(w.at);
            return;
        }
        let spec = &w.response["spec"];
        if spec.is_null() {
            return;
        }
        let run = serde_json::json!({
            "version": spec["version"], "channel": spec["channel"], "prepare": spec["prepare"],
            "upgrade": spec["upgrade"], "secrets": spec["secrets"],
            "serviceAccountName": spec["serviceAccountName"],
        });
        if !rec.exists || rec.run != run {
            rec.run_changed.push(w.at);
        }
        rec.exists = true;
        rec.run = run;
        rec.secrets = spec["secrets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str().map(str::to_owned))
            .collect();
        rec.concurrency = spec["concurrency"].clone();
        rec.selector = spec["nodeSelector"].clone();
        self.reselect(w.at);
    }

    fn secret(&mut self, w: &Write) {
        if w.verb == "get" {
            return;
        }
        for rec in self.plans.values_mut() {
            if rec.secrets.contains(&w.name) {
                rec.run_changed.push(w.at);
            }
        }
    }

    /// Records each Plan's selected count and each node's selection changes.
    fn reselect(&mut self, at: i64) {
        for (plan, rec) in &mut self.plans {
            let mut count = 0;
            for node in self.nodes.values_mut() {
                let now = rec.exists && selects(&rec.selector, &node.labels);
                count += usize::from(now);
                let changed = if now {
                    node.selected_by.insert(plan.clone())
                } else {
                    node.selected_by.remove(plan)
                };
                if changed {
                    node.selection_changed.insert(plan.clone(), at);
                }
            }
            if rec.selected.last().map(|s| s.1) != Some(count) {
                rec.selected.push((at, count));
            }
        }
    }

    fn node(&mut self, w: &Write) {
        if !w.name.starts_with(PREFIX) || w.response["metadata"].is_null() {
            return;
        }
        let name = w.name.clone();
        let labels = map(&w.response["metadata"]["labels"]);
        let annotations = map(&w.response["metadata"]["annotations"]);
        let unschedulable = w.response["spec"]["unschedulable"] == true;
        let rec = self.nodes.entry(name.clone()).or_default();
        let claims = |a: &BTreeMap<String, String>| -> BTreeSet<String> {
            a.keys()
                .filter_map(|k| k.strip_prefix(CLAIM_PREFIX))
                .map(str::to_owned)
                .collect()
        };
        let before = claims(&rec.annotations);
        let after = claims(&annotations);
        let was = rec.unschedulable;
        let labels_changed = rec.labels != labels;
        rec.labels = labels;
        rec.annotations = annotations;
        rec.unschedulable = unschedulable;
        let added: Vec<String> = after.difference(&before).cloned().collect();
        let removed: Vec<String> = before.difference(&after).cloned().collect();
        let mut what = Vec::new();
        if was != unschedulable {
            what.push(format!("unschedulable={unschedulable}"));
        }
        what.extend(added.iter().map(|p| format!("+claim {p}")));
        what.extend(removed.iter().map(|p| format!("-claim {p}")));
        if labels_changed {
            what.push("labels changed".into());
        }
        if !what.is_empty() {
            self.note(&name, w, &what.join(", "));
        }
        match w.actor {
            Actor::Operator if was != unschedulable => {
                self.nodes
                    .get_mut(&name)
                    .unwrap_or_else(|| unreachable!())
                    .operator_cordoned = unschedulable;
            }
            Actor::Controller => {
                for plan in &added {
                    self.check_pod_runs(plan, &name, "cordoned", w.received);
                    // A node whose Job of the Plan runs is held already; the claim adds none.
                    let held = self
                        .jobs
                        .iter()
                        .any(|j| j.plan == *plan && j.node == name && j.live());
                    if !held {
                        self.check_concurrency(plan, &name);
                    }
                }
                if !was && unschedulable && after.is_empty() {
                    self.violate(
                        Rule::TouchedBeforeItsPod,
                        &name,
                        format!("node {name} cordoned by the controller with no claim of a Plan"),
                    );
                }
                let operator = self.nodes.get(&name).is_some_and(|n| n.operator_cordoned);
                if was && !unschedulable && operator {
                    self.violate(
                        Rule::OperatorCordonUndone,
                        &name,
                        format!(
                            "node {name}, cordoned by the operator, uncordoned by the controller"
                        ),
                    );
                }
            }
            _ => {}
        }
        if labels_changed {
            self.reselect(w.at);
        }
    }

    /// An upgrade pod's or a workload pod's node, from the scheduler's binding.
    fn binding(&mut self, w: &Write) {
        let node = w.request["target"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if let Some(pod) = self.upgrade_pods.get_mut(&w.name) {
            pod.node = Some(node);
        } else {
            self.workload_pods
                .insert(format!("{}/{}", w.namespace, w.name), node);
        }
    }

    fn pod(&mut self, w: &Write) {
        let pod = &w.response;
        if pod["metadata"].is_null() {
            return;
        }
        let labels = map(&pod["metadata"]["labels"]);
        let job_uid = labels
            .get("batch.kubernetes.io/controller-uid")
            .or(labels.get("controller-uid"))
            .cloned();
        let Some(job) = job_uid.and_then(|uid| self.jobs.iter().position(|j| j.uid == uid)) else {
            if let Some(node) = pod["spec"]["nodeName"].as_str() {
                self.workload_pods
                    .insert(format!("{}/{}", w.namespace, w.name), node.to_owned());
            }
            return;
        };
        let status = &pod["status"];
        let started = |list: &Value| {
            list.as_array()
                .into_iter()
                .flatten()
                .any(|c| c["state"]["running"].is_object() || c["state"]["terminated"].is_object())
        };
        let upgrade_started = started(&status["containerStatuses"]);
        let runs = status["phase"] == "Running"
            || upgrade_started
            || started(&status["initContainerStatuses"]);
        let opened = pod["metadata"]["annotations"][DRAINED].is_string();
        let failed = status["phase"] == "Failed";
        if status["phase"] == "Succeeded" {
            self.jobs[job].pod_succeeded = true;
        }
        let entry = self.upgrade_pods.entry(w.name.clone()).or_default();
        entry.job_uid.clone_from(&self.jobs[job].uid);
        let version: Option<u64> = pod["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|v| v.parse().ok());
        if w.verb != "delete" && version.is_some_and(|v| v < entry.version) {
            return; // an older state, answered late
        }
        entry.version = version.unwrap_or(entry.version).max(entry.version);
        if let Some(node) = pod["spec"]["nodeName"].as_str() {
            entry.node = Some(node.to_owned());
        }
        let was_running = entry.runs;
        entry.runs = runs && w.verb != "delete";
        let now_running = entry.runs;
        let node_name = self.jobs[job].node.clone();
        if now_running && !was_running {
            self.note(&node_name, w, "upgrade pod runs");
        }
        if failed && !self.jobs[job].pod_failed {
            self.jobs[job].pod_failed = true;
            self.jobs[job].ended.get_or_insert(w.at);
            self.note(&node_name, w, "upgrade pod failed");
        }
        if (opened || upgrade_started) && !self.jobs[job].begun && w.verb != "delete" {
            self.jobs[job].begun = true;
            self.note(&node_name, w, "upgrade may have begun");
            self.check_once(job);
        }
    }

    /// Whether an upgrade pod of a Job of `plan` live for a write received at `received` runs
    /// on `node` (its gate at least).
    fn pod_runs(&self, plan: &str, node: &str, received: i64) -> bool {
        self.jobs
            .iter()
            .filter(|j| j.plan == plan && j.node == node && j.live_for(received))
            .any(|j| {
                self.upgrade_pods
                    .values()
                    .any(|p| p.job_uid == j.uid && p.node.as_deref() == Some(node) && p.runs)
            })
    }

    fn check_pod_runs(&mut self, plan: &str, node: &str, what: &str, received: i64) {
        if !self.pod_runs(plan, node, received) {
            self.violate(
                Rule::TouchedBeforeItsPod,
                node,
                format!("node {node} {what} for Plan {plan} before an upgrade pod of it ran there"),
            );
        }
    }

    /// An eviction the controller asked for: some Plan's upgrade pod must run on the pod's node.
    fn eviction(&mut self, w: &Write) {
        let key = format!("{}/{}", w.namespace, w.name);
        let Some(node) = self.workload_pods.get(&key).cloned() else {
            return;
        };
        if !node.starts_with(PREFIX) {
            return;
        }
        self.note(&node, w, &format!("evict {key} ({})", w.code));
        let plans: Vec<String> = self.plans.keys().cloned().collect();
        if !plans.iter().any(|p| self.pod_runs(p, &node, w.received)) {
            self.violate(
                Rule::TouchedBeforeItsPod,
                &node,
                format!("pod {key} evicted from node {node} before an upgrade pod ran there"),
            );
        }
    }

    fn job(&mut self, w: &Write) {
        let position =
            |jobs: &[JobRec], name: &str| jobs.iter().rposition(|j| j.name == name && !j.deleted);
        if w.verb == "delete" {
            if let Some(i) = position(&self.jobs, &w.name) {
                self.job_deleted(i, w);
            }
            return;
        }
        let job = &w.response;
        let labels = map(&job["metadata"]["labels"]);
        let Some(plan) = labels
            .get("upgrade.cattle.io/plan")
            .filter(|p| p.starts_with(PREFIX))
        else {
            return;
        };
        let uid = job["metadata"]["uid"].as_str().unwrap_or("").to_owned();
        let finished = job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["status"] == "True")
            .find_map(|c| match c["type"].as_str() {
                Some("Complete") => Some(true),
                Some("Failed") => Some(false),
                _ => None,
            });
        let node = labels
            .get("upgrade.cattle.io/node")
            .cloned()
            .unwrap_or_default();
        if let Some(rec) = self.jobs.iter_mut().find(|j| j.uid == uid) {
            if rec.finished.is_none() && finished.is_some() {
                rec.finished = finished;
                rec.gone_at.get_or_insert(w.at);
                if finished == Some(false) {
                    rec.ended.get_or_insert(w.at);
                }
                let what = if finished == Some(true) {
                    "Job complete"
                } else {
                    "Job failed"
                };
                self.note(&node, w, what);
            }
            return;
        }
        let plan = plan.clone();
        let joined = !self.busy(&plan).contains(&node) && !self.turn_goes_on(&plan, &node);
        let label_at_create = self.nodes.get(&node).and_then(|n| {
            n.labels
                .get(&format!("plan.upgrade.cattle.io/{plan}"))
                .cloned()
        });
        self.jobs.push(JobRec {
            uid,
            name: w.name.clone(),
            hash: labels
                .get(&format!("plan.upgrade.cattle.io/{plan}"))
                .cloned()
                .unwrap_or_default(),
            plan: plan.clone(),
            node: node.clone(),
            created: w.at,
            finished,
            label_at_create,
            ..JobRec::default()
        });
        self.note(&node, w, &format!("Job created by {:?}", w.actor));
        if w.actor == Actor::Controller && joined {
            self.check_concurrency(&plan, &node);
        }
    }

    /// A Job deleted: by the controller only once it finished or failed, or before its upgrade
    /// may have begun, or for a change of what it runs or an operator's action (the node
    /// labelled out, the Plan deleted); by the system only once finished or its Plan gone.
    fn job_deleted(&mut self, i: usize, w: &Write) {
        self.jobs[i].deleted = true;
        self.jobs[i].ended.get_or_insert(w.at);
        self.jobs[i].gone_at.get_or_insert(w.at);
        let j = &self.jobs[i];
        let (node, plan, name, created) =
            (j.node.clone(), j.plan.clone(), j.name.clone(), j.created);
        let killed = j.begun && j.finished.is_none() && !j.pod_failed;
        self.note(
            &node,
            w,
            &format!(
                "Job deleted by {:?}{}",
                w.actor,
                if killed {
                    " while its upgrade may run"
                } else {
                    ""
                }
            ),
        );
        if !killed || w.actor == Actor::Operator {
            return;
        }
        let rec = self.plans.get(&plan);
        let run_changed =
            rec.is_some_and(|p| !p.exists || p.run_changed.iter().any(|t| *t > created));
        let reselected = self
            .nodes
            .get(&node)
            .and_then(|n| n.selection_changed.get(&plan))
            .is_some_and(|t| *t > created);
        let justified = match w.actor {
            Actor::Controller => run_changed || reselected,
            _ => rec.is_none_or(|p| !p.exists),
        };
        if !justified {
            self.violate(
                Rule::BegunJobEnded,
                &node,
                format!(
                    "Job {name} of Plan {plan} on node {node} deleted by {:?} ({}) while its upgrade \
                     may have been running, with no change of what it runs and no operator action",
                    w.actor, w.agent
                ),
            );
        }
    }

    /// A Job's upgrade began: no other Job of the same Plan, node and hash may run at once, nor
    /// have succeeded while the node kept that hash's label.
    fn check_once(&mut self, i: usize) {
        let j = &self.jobs[i];
        let twin = self.jobs.iter().enumerate().find_map(|(k, other)| {
            if k == i
                || other.plan != j.plan
                || other.node != j.node
                || other.hash != j.hash
                || !other.begun
            {
                return None;
            }
            if other.live() && !other.pod_failed {
                return Some(format!("while Job {} ran the same upgrade", other.name));
            }
            if (other.finished == Some(true) || other.pod_succeeded)
                && j.label_at_create.as_deref() == Some(j.hash.as_str())
            {
                return Some(format!(
                    "after Job {} had succeeded and the node carried its hash",
                    other.name
                ));
            }
            None
        });
        if let Some(why) = twin {
            let (node, message) = (
                j.node.clone(),
                format!(
                    "node {} upgraded again by Job {} of Plan {} for hash {} {why}",
                    j.node, j.name, j.plan, j.hash
                ),
            );
            self.violate(Rule::UpgradedTwice, &node, message);
        }
    }

    /// A node taken by a Plan that did not hold it: the nodes it cordons or runs the upgrade on
    /// stay within its concurrency (a percentage of the most nodes it selected lately). A node it
    /// holds already (cordoned, or running an earlier Job) may go on to the next hash: after the
    /// concurrency is lowered the held nodes finish, and only new ones wait.
    fn check_concurrency(&mut self, plan: &str, node: &str) {
        let Some(rec) = self.plans.get(plan) else {
            return;
        };
        let lately = self.now - SELECTION_LAG_US;
        let mut most = 0;
        for (i, (at, count)) in rec.selected.iter().enumerate() {
            let until = rec.selected.get(i + 1).map_or(i64::MAX, |s| s.0);
            if until >= lately {
                most = most.max(*count);
            }
            let _ = at;
        }
        let limit = allowed(&rec.concurrency, most);
        let busy = self.busy(plan);
        if busy.len() > limit {
            let message = format!(
                "Plan {plan} (concurrency {}) took node {node} while {} nodes were busy: {}",
                rec.concurrency,
                busy.len(),
                busy.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            self.violate(Rule::Concurrency, node, message);
        }
    }

    /// Whether the node's last Job of the Plan ended unfinished a moment ago: a new one goes on
    /// with that turn.
    fn turn_goes_on(&self, plan: &str, node: &str) -> bool {
        let last = self
            .jobs
            .iter()
            .filter(|j| j.plan == plan && j.node == node)
            .max_by_key(|j| j.created);
        last.and_then(|j| {
            j.ended
                .filter(|_| !j.pod_succeeded && j.finished != Some(true))
        })
        .is_some_and(|ended| {
            self.now - ended - overlap(&self.outages, ended, self.now) <= CONTINUE_US
        })
    }

    /// The nodes a Plan holds: cordoned with its claim, or with a Job of it that has not ended.
    fn busy(&self, plan: &str) -> BTreeSet<String> {
        let claim = format!("{CLAIM_PREFIX}{plan}");
        let cordoned = self
            .nodes
            .iter()
            .filter(|(_, n)| n.unschedulable && n.annotations.contains_key(&claim))
            .map(|(name, _)| name.clone());
        let running = self
            .jobs
            .iter()
            .filter(|j| j.plan == plan && j.live())
            .map(|j| j.node.clone());
        cordoned.chain(running).collect()
    }

    /// Each claim of ours must have a reason (a Job of its Plan on the node that has not ended,
    /// or failed): one without outlives it by at most the grace, not counting outages.
    fn sweep(&mut self) {
        let now = self.now;
        let mut late = Vec::new();
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for name in names {
            let claims: Vec<String> = self.nodes[&name]
                .annotations
                .keys()
                .filter_map(|k| k.strip_prefix(CLAIM_PREFIX))
                .map(str::to_owned)
                .collect();
            let reasons: BTreeSet<String> = claims
                .iter()
                .filter(|plan| {
                    self.jobs.iter().any(|j| {
                        j.plan == **plan
                            && j.node == name
                            && !j.deleted
                            && (j.finished.is_none() || j.failed())
                    })
                })
                .cloned()
                .collect();
            let node = self.nodes.get_mut(&name).unwrap_or_else(|| unreachable!());
            node.unjustified
                .retain(|plan, _| claims.contains(plan) && !reasons.contains(plan));
            for plan in claims.iter().filter(|p| !reasons.contains(*p)) {
                let since = *node.unjustified.entry(plan.clone()).or_insert(now);
                let counted = now - since - overlap(&self.outages, since, now);
                if counted > CORDON_GRACE_US {
                    late.push((name.clone(), plan.clone(), since));
                }
            }
        }
        for (name, plan, since) in late {
            self.violate(
                Rule::LeftCordoned,
                &name,
                format!(
                    "node {name} kept Plan {plan}'s cordon claim from {} on with no Job of it \
                     running or failed there",
                    clock(since)
                ),
            );
            // Told once per stretch.
            if let Some(node) = self.nodes.get_mut(&name) {
                node.unjustified.insert(plan, i64::MAX / 2);
            }
        }
    }

    /// The end of the history: claims still without reason are checked once more.
    pub fn finish(&mut self, end: i64) {
        self.now = self.now.max(end);
        self.sweep();
    }
}

/// The end state, read once the faults stopped and the rollouts settled: every node a Plan
/// selects carries its latest hash or is reported failed with a reason; no node is cordoned by
/// us or left unschedulable; no Job runs; the Plans' status agrees with the nodes.
pub fn end_state(plans: &[Value], nodes: &[Value], jobs: &[Value]) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut violate = |message: String| {
        found.push(Violation {
            rule: Rule::EndState,
            at: now_us(),
            message,
            trail: Vec::new(),
        })
    };
    for node in nodes {
        let name = node["metadata"]["name"].as_str().unwrap_or("");
        let claims: Vec<&String> = node["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with(CLAIM_PREFIX))
            .collect();
        if !claims.is_empty() {
            violate(format!(
                "node {name} still carries cordon claims {claims:?}"
            ));
        }
        if node["spec"]["unschedulable"] == true {
            violate(format!("node {name} is left unschedulable"));
        }
    }
    for job in jobs {
        let done = job["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["status"] == "True" && (c["type"] == "Complete" || c["type"] == "Failed"));
        if !done {
            violate(format!(
                "Job {} still runs",
                job["metadata"]["name"].as_str().unwrap_or("")
            ));
        }
    }
    for plan in plans {
        let name = plan["metadata"]["name"].as_str().unwrap_or("");
        let status = &plan["status"];
        let hash = status["latestHash"].as_str().unwrap_or("");
        let label = format!("plan.upgrade.cattle.io/{name}");
        let entries: BTreeMap<&str, &Value> = status["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| Some((e["name"].as_str()?, e)))
            .collect();
        let mut behind = Vec::new();
        for node in nodes {
            let labels = map(&node["metadata"]["labels"]);
            if !selects(&plan["spec"]["nodeSelector"], &labels) {
                continue;
            }
            let node_name = node["metadata"]["name"].as_str().unwrap_or("");
            if labels.get(&label).map(String::as_str) == Some(hash) {
                continue;
            }
            behind.push(node_name);
            let reported = entries.get(node_name).is_some_and(|e| {
                e["phase"] == "Failed" && e["message"].as_str().is_some_and(|m| !m.is_empty())
            });
            if !reported {
                violate(format!(
                    "node {node_name} lacks Plan {name}'s hash {hash} and its status does not say \
                     it failed: {}",
                    entries
                        .get(node_name)
                        .map_or("no entry".into(), |e| e.to_string())
                ));
            }
        }
        let complete = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Complete");
        let complete_true = complete.is_some_and(|c| c["status"] == "True");
        if complete_true != behind.is_empty() {
            violate(format!(
                "Plan {name} says Complete={} while {} of its nodes lack its hash",
                complete.map_or("absent".into(), |c| c["status"].to_string()),
                behind.len()
            ));
        }
        let mut applying: Vec<&str> = status["applying"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        applying.sort_unstable();
        let mut behind_sorted = behind.clone();
        behind_sorted.sort_unstable();
        if applying.iter().any(|n| !behind_sorted.contains(n)) {
            violate(format!(
                "Plan {name} lists {applying:?} as applying; of those only {behind_sorted:?} lack its hash"
            ));
        }
    }
    found
}

/// A short account of a history for the report: writes per actor, verb and resource.
pub fn summary(counts: &BTreeMap<String, usize>) -> String {
    let mut out = String::new();
    for (what, n) in counts {
        let _ = writeln!(out, "  {n:>6} {what}");
    }
    out
}

/// Histories built by hand, for the checker's own tests.
#[derive(Default)]
struct Built {
    writes: Vec<Write>,
    at: i64,
    /// How long before its answer each write is received (0: at once).
    latency: i64,
}

impl Built {
    fn push(
        &mut self,
        actor: Actor,
        verb: &str,
        resource: &str,
        name: &str,
        response: Value,
    ) -> &mut Self {
        self.push_full(actor, verb, resource, "", name, 201, Value::Null, response)
    }

    #[allow(clippy::too_many_arguments)]
    fn push_full(
        &mut self,
        actor: Actor,
        verb: &str,
        resource: &str,
        subresource: &str,
        name: &str,
        code: u16,
        request: Value,
        response: Value,
    ) -> &mut Self {
        self.at += 1_000_000;
        self.writes.push(Write {
            at: self.at,
            received: self.at - self.latency,
            actor,
            agent: "test".into(),
            verb: verb.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: "ns".into(),
            name: name.into(),
            code,
            request,
            response,
        });
        self
    }

    fn wait(&mut self, seconds: i64) -> &mut Self {
        self.at += seconds * 1_000_000;
        self
    }

    fn plan(&mut self, concurrency: Value, version: &str) -> &mut Self {
        let plan = serde_json::json!({"metadata": {"name": "soak-p"}, "spec": {
            "concurrency": concurrency, "version": version, "nodeSelector": {"matchLabels": {"pool": "a"}}}});
        self.push(Actor::Operator, "update", "plans", "soak-p", plan)
    }

    fn node(
        &mut self,
        actor: Actor,
        name: &str,
        claimed: bool,
        cordoned: bool,
        hash: Option<&str>,
    ) -> &mut Self {
        let mut labels = serde_json::json!({"pool": "a"});
        if let Some(hash) = hash {
            labels["plan.upgrade.cattle.io/soak-p"] = hash.into();
        }
        let annotations = if claimed {
            serde_json::json!({"cordoned.upgrade.cattle.io/soak-p": "ns/c now"})
        } else {
            serde_json::json!({})
        };
        let node = serde_json::json!({"metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"unschedulable": cordoned}});
        self.push(actor, "patch", "nodes", name, node)
    }

    fn job(&mut self, uid: &str, node: &str, hash: &str) -> &mut Self {
        let job = serde_json::json!({"metadata": {"name": format!("apply-{node}-{hash}"), "uid": uid, "labels": {
            "upgrade.cattle.io/plan": "soak-p", "upgrade.cattle.io/node": node, "plan.upgrade.cattle.io/soak-p": hash}}});
        self.push(
            Actor::Controller,
            "create",
            "jobs",
            &format!("apply-{node}-{hash}"),
            job,
        )
    }

    fn job_done(&mut self, uid: &str, node: &str, hash: &str, kind: &str) -> &mut Self {
        let job = serde_json::json!({"metadata": {"name": format!("apply-{node}-{hash}"), "uid": uid, "labels": {
            "upgrade.cattle.io/plan": "soak-p", "upgrade.cattle.io/node": node, "plan.upgrade.cattle.io/soak-p": hash}},
            "status": {"conditions": [{"type": kind, "status": "True"}]}});
        self.push(
            Actor::System,
            "update",
            "jobs",
            &format!("apply-{node}-{hash}"),
            job,
        )
    }

    fn delete_job(&mut self, actor: Actor, node: &str, hash: &str) -> &mut Self {
        self.push(
            actor,
            "delete",
            "jobs",
            &format!("apply-{node}-{hash}"),
            Value::Null,
        )
    }

    /// The Job's pod, bound to `node`: `gate` (its gate runs), `opened` (drained, the upgrade
    /// may begin), or `failed`.
    fn pod(&mut self, uid: &str, node: &str, state: &str) -> &mut Self {
        self.pod_write(uid, node, state, "patch", None)
    }

    /// As [`Built::pod`], written by `verb` and answered with `version` as its
    /// resourceVersion.
    fn pod_write(
        &mut self,
        uid: &str,
        node: &str,
        state: &str,
        verb: &str,
        version: Option<&str>,
    ) -> &mut Self {
        let name = format!("pod-{uid}");
        let mut pod = serde_json::json!({"metadata": {"name": name, "labels": {"batch.kubernetes.io/controller-uid": uid}},
            "spec": {"nodeName": node}, "status": {"phase": "Pending"}});
        if let Some(version) = version {
            pod["metadata"]["resourceVersion"] = version.into();
        }
        match state {
            "gate" => {
                pod["status"]["initContainerStatuses"] =
                    serde_json::json!([{"name": "drain", "state": {"running": {}}}])
            }
            "opened" => {
                pod["metadata"]["annotations"] = serde_json::json!({DRAINED: "now"});
                pod["status"]["initContainerStatuses"] =
                    serde_json::json!([{"name": "drain", "state": {"running": {}}}]);
            }
            "failed" => pod["status"]["phase"] = "Failed".into(),
            _ => {}
        }
        self.push(Actor::System, verb, "pods", &name, pod)
    }

    fn workload(&mut self, name: &str, node: &str) -> &mut Self {
        let request = serde_json::json!({"target": {"name": node}});
        self.push_full(
            Actor::System,
            "create",
            "pods",
            "binding",
            name,
            201,
            request,
            Value::Null,
        )
    }

    fn evict(&mut self, name: &str) -> &mut Self {
        self.push_full(
            Actor::Controller,
            "create",
            "pods",
            "eviction",
            name,
            201,
            Value::Null,
            Value::Null,
        )
    }

    /// One node's upgrade that keeps every rule: Job, pod in its gate, cordon, drain, upgrade,
    /// label and uncordon.
    fn upgrade(&mut self, uid: &str, node: &str, hash: &str) -> &mut Self {
        self.job(uid, node, hash)
            .pod(uid, node, "gate")
            .node(Actor::Controller, node, true, true, None)
            .evict(&format!("w-{node}"))
            .pod(uid, node, "opened")
            .job_done(uid, node, hash, "Complete")
            .node(Actor::Controller, node, false, false, Some(hash))
    }

    fn rules(&self, outages: Vec<Outage>) -> Vec<Rule> {
        let checker = Checker::run(outages, &[], &self.writes, self.at);
        checker.violations.iter().map(|v| v.rule).collect()
    }
}

fn history() -> Built {
    let mut b = Built::default();
    b.node(Actor::System, "soak-1", false, false, None)
        .node(Actor::System, "soak-2", false, false, None)
        .workload("w-soak-1", "soak-1")
        .workload("w-soak-2", "soak-2")
        .plan(1.into(), "v1");
    b
}

/// A rollout that keeps the rules passes, with the writes a real one makes (a retry after a
/// failure, a Job replaced after a version bump, one deleted by the operator and run again).
pub fn the_checker_passes_a_history_that_keeps_the_rules() {
    let mut b = history();
    b.upgrade("u1", "soak-1", "h1");
    // A failed upgrade, retried with a new Job of the same hash.
    b.job("u2", "soak-2", "h1")
        .pod("u2", "soak-2", "opened")
        .pod("u2", "soak-2", "failed");
    b.job_done("u2", "soak-2", "h1", "Failed")
        .delete_job(Actor::Controller, "soak-2", "h1");
    b.upgrade("u3", "soak-2", "h1");
    // A version bump replaces a begun Job; an operator deletes another.
    b.plan(1.into(), "v2")
        .job("u4", "soak-1", "h2")
        .pod("u4", "soak-1", "opened");
    b.plan(1.into(), "v3")
        .delete_job(Actor::Controller, "soak-1", "h2");
    b.job("u5", "soak-1", "h3")
        .pod("u5", "soak-1", "opened")
        .delete_job(Actor::Operator, "soak-1", "h3");
    b.upgrade("u6", "soak-1", "h3");
    // Percentages of two nodes allow one.
    b.plan("50%".into(), "v4").upgrade("u7", "soak-2", "h4");
    // A claim left while the controller was down for longer than the grace.
    b.job("u8", "soak-1", "h4")
        .pod("u8", "soak-1", "gate")
        .node(Actor::Controller, "soak-1", true, true, None);
    b.job_done("u8", "soak-1", "h4", "Complete");
    let down_from = b.at;
    b.wait(120);
    b.node(Actor::Controller, "soak-1", false, false, Some("h4"));
    let outage = Outage {
        from: down_from,
        to: b.at - 10_000_000,
    };
    assert_eq!(b.rules(vec![outage]), Vec::<Rule>::new());
}

/// Each kind of violation, alone in an otherwise good history, is caught and named.
pub fn the_checker_catches_each_kind_of_violation() {
    // Two nodes taken at once with a concurrency of 1.
    let mut b = history();
    b.job("u1", "soak-1", "h1").job("u2", "soak-2", "h1");
    assert_eq!(b.rules(vec![]), [Rule::Concurrency]);
    // A percentage allows no more than its share either (50% of 2 is 1).
    let mut b = history();
    b.plan("50%".into(), "v1")
        .job("u1", "soak-1", "h1")
        .job("u2", "soak-2", "h1");
    assert_eq!(b.rules(vec![]), [Rule::Concurrency]);
    // A claim counts while the Job is gone.
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod("u1", "soak-1", "gate")
        .node(Actor::Controller, "soak-1", true, true, None);
    b.delete_job(Actor::Operator, "soak-1", "h1")
        .job("u2", "soak-2", "h1");
    assert_eq!(b.rules(vec![]), [Rule::Concurrency]);

    // Lowered while two nodes are held: they go on (a new hash on a node still cordoned), a third
    // node waits. Found as a false alarm by the soak (seed 4): only a node joining counts.
    let mut b = history();
    b.plan(2.into(), "v1");
    for (uid, node) in [("u1", "soak-1"), ("u2", "soak-2")] {
        b.job(uid, node, "h1").pod(uid, node, "gate").node(
            Actor::Controller,
            node,
            true,
            true,
            None,
        );
    }
    b.plan(1.into(), "v2")
        .job_done("u1", "soak-1", "h1", "Complete")
        .delete_job(Actor::Controller, "soak-1", "h1");
    b.job("u3", "soak-1", "h2");
    assert_eq!(b.rules(vec![]), Vec::<Rule>::new());
    b.node(Actor::System, "soak-3", false, false, None)
        .job("u4", "soak-3", "h2");
    assert_eq!(b.rules(vec![]), [Rule::Concurrency]);

    // A Job deleted by hand is created again for the same turn (seed 5's false alarm, with the
    // concurrency lowered meanwhile); long after, it is a new turn.
    let mut b = history();
    b.plan(2.into(), "v1");
    b.job("u1", "soak-1", "h1")
        .job("u2", "soak-2", "h1")
        .plan(1.into(), "v1");
    b.delete_job(Actor::Operator, "soak-1", "h1")
        .wait(10)
        .job("u3", "soak-1", "h1");
    assert_eq!(b.rules(vec![]), Vec::<Rule>::new());
    b.delete_job(Actor::Operator, "soak-1", "h1")
        .wait(40)
        .job("u4", "soak-1", "h1");
    assert_eq!(b.rules(vec![]), [Rule::Concurrency]);

    // Cordoned before the pod runs there: no pod, or a pod not yet started.
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .node(Actor::Controller, "soak-1", true, true, None);
    assert_eq!(b.rules(vec![]), [Rule::TouchedBeforeItsPod]);
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod("u1", "soak-1", "pending")
        .node(Actor::Controller, "soak-1", true, true, None);
    assert_eq!(b.rules(vec![]), [Rule::TouchedBeforeItsPod]);
    // A pod that runs on another node does not count.
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod("u1", "soak-2", "gate")
        .node(Actor::Controller, "soak-1", true, true, None);
    assert_eq!(b.rules(vec![]), [Rule::TouchedBeforeItsPod]);
    // Cordoned for a Job the operator deleted: caught when the cordon was received after the
    // deletion was answered; not when the two were concurrent (the cordon received first, found
    // by the long soak 1 ms apart), as the cordon may have taken effect first.
    let concurrent = |latency: i64| {
        let mut b = history();
        b.job("u1", "soak-1", "h1").pod("u1", "soak-1", "gate");
        b.delete_job(Actor::Operator, "soak-1", "h1");
        b.latency = latency;
        b.node(Actor::Controller, "soak-1", true, true, None);
        b.latency = 0;
        b.node(Actor::Controller, "soak-1", false, false, None);
        b.rules(vec![])
    };
    assert_eq!(concurrent(0), [Rule::TouchedBeforeItsPod]);
    assert_eq!(concurrent(500_000), [Rule::TouchedBeforeItsPod]);
    assert_eq!(concurrent(1_500_000), Vec::<Rule>::new());
    // Drained before: an eviction with no upgrade pod there.
    let mut b = history();
    b.job("u1", "soak-1", "h1").evict("w-soak-1");
    assert_eq!(b.rules(vec![]), [Rule::TouchedBeforeItsPod]);
    // Cordoned with no claim at all.
    let mut b = history();
    b.node(Actor::Controller, "soak-2", false, true, None);
    assert_eq!(b.rules(vec![]), [Rule::TouchedBeforeItsPod]);

    // A begun Job deleted by the controller with nothing changed; by the garbage collector
    // while its Plan stands.
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod("u1", "soak-1", "opened")
        .delete_job(Actor::Controller, "soak-1", "h1");
    assert_eq!(b.rules(vec![]), [Rule::BegunJobEnded]);
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod("u1", "soak-1", "opened")
        .delete_job(Actor::System, "soak-1", "h1");
    assert_eq!(b.rules(vec![]), [Rule::BegunJobEnded]);
    // Not begun yet: replacing it is fine.
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod("u1", "soak-1", "gate")
        .delete_job(Actor::Controller, "soak-1", "h1");
    assert_eq!(b.rules(vec![]), Vec::<Rule>::new());

    // Upgraded twice: after success with the label in place, and two Jobs at once.
    let mut b = history();
    b.upgrade("u1", "soak-1", "h1")
        .job("u2", "soak-1", "h1")
        .pod("u2", "soak-1", "opened");
    assert_eq!(b.rules(vec![]), [Rule::UpgradedTwice]);
    let mut b = history();
    b.plan(2.into(), "v1");
    b.job("u1", "soak-1", "h1").pod("u1", "soak-1", "opened");
    let mut twin = Built {
        at: b.at,
        ..Built::default()
    };
    twin.job("u2", "soak-1", "h1");
    // The same name twice (a Job re-created by name): the second is another uid.
    let mut job = twin.writes[0].clone();
    job.response["metadata"]["name"] = "apply-soak-1-h1-b".into();
    job.name = "apply-soak-1-h1-b".into();
    b.writes.push(job);
    b.at += 1_000_000;
    b.pod("u2", "soak-1", "opened");
    assert_eq!(b.rules(vec![]), [Rule::UpgradedTwice]);

    // A claim kept long after the Job completed, with the controller up; and shorter outages
    // than the wait do not excuse it.
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod("u1", "soak-1", "gate")
        .node(Actor::Controller, "soak-1", true, true, None);
    b.job_done("u1", "soak-1", "h1", "Complete").node(
        Actor::Controller,
        "soak-1",
        true,
        true,
        Some("h1"),
    );
    let from = b.at;
    b.wait(90).node(Actor::System, "soak-2", false, false, None);
    let short = Outage {
        from,
        to: from + 20_000_000,
    };
    assert_eq!(b.rules(vec![short]), [Rule::LeftCordoned]);
    let long = Outage {
        from,
        to: from + 60_000_000,
    };
    assert_eq!(b.rules(vec![long]), Vec::<Rule>::new());
    // Found at the end of the history too.
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod("u1", "soak-1", "gate")
        .node(Actor::Controller, "soak-1", true, true, None);
    b.delete_job(Actor::Operator, "soak-1", "h1").wait(61);
    assert_eq!(b.rules(vec![]), [Rule::LeftCordoned]);

    // The operator's cordon undone by the controller.
    let mut b = history();
    b.node(Actor::Operator, "soak-2", false, true, None).node(
        Actor::Controller,
        "soak-2",
        false,
        false,
        None,
    );
    assert_eq!(b.rules(vec![]), [Rule::OperatorCordonUndone]);
}

/// The end state: claims, unschedulable nodes, running Jobs, nodes behind with no failure
/// reported, and a Complete condition or `applying` list that disagrees with the nodes.
pub fn the_end_state_check_catches_what_is_left_behind() {
    let node = |name: &str, hash: &str, claim: bool| {
        let annotations = if claim {
            serde_json::json!({"cordoned.upgrade.cattle.io/soak-p": "x"})
        } else {
            serde_json::json!({})
        };
        serde_json::json!({"metadata": {"name": name, "annotations": annotations,
            "labels": {"pool": "a", "plan.upgrade.cattle.io/soak-p": hash}}, "spec": {"unschedulable": claim}})
    };
    let plan = |complete: &str, applying: Value, entries: Value| {
        serde_json::json!({"metadata": {"name": "soak-p"}, "spec": {"nodeSelector": {"matchLabels": {"pool": "a"}}},
            "status": {"latestHash": "h2", "applying": applying, "nodes": entries,
                "conditions": [{"type": "Complete", "status": complete}]}})
    };
    let done = [node("soak-1", "h2", false), node("soak-2", "h2", false)];
    let good = plan("True", serde_json::json!([]), serde_json::json!([]));
    assert!(end_state(std::slice::from_ref(&good), &done, &[]).is_empty());
    let rules = |plans: &[Value], nodes: &[Value], jobs: &[Value]| {
        end_state(plans, nodes, jobs)
            .into_iter()
            .map(|v| v.message)
            .collect::<Vec<_>>()
    };
    let behind = [node("soak-1", "h2", false), node("soak-2", "h1", false)];
    let failed =
        serde_json::json!([{"name": "soak-2", "phase": "Failed", "message": "Job failed"}]);
    // Behind and reported failed, Complete=False, applying names it: agrees.
    assert!(
        rules(
            &[plan("False", serde_json::json!(["soak-2"]), failed.clone())],
            &behind,
            &[]
        )
        .is_empty()
    );
    // Behind with no failure reported; and Complete=True besides.
    let found = rules(
        &[plan("True", serde_json::json!([]), serde_json::json!([]))],
        &behind,
        &[],
    );
    assert_eq!(found.len(), 2, "{found:?}");
    // A claim and a cordon left; a Job still running; applying a node that is done.
    let found = rules(
        std::slice::from_ref(&good),
        &[node("soak-1", "h2", true), node("soak-2", "h2", false)],
        &[],
    );
    assert_eq!(found.len(), 2, "{found:?}");
    let running = serde_json::json!({"metadata": {"name": "apply"}, "status": {}});
    assert_eq!(rules(&[good], &done, &[running]).len(), 1);
    let found = rules(
        &[plan(
            "True",
            serde_json::json!(["soak-1"]),
            serde_json::json!([]),
        )],
        &done,
        &[],
    );
    assert_eq!(found.len(), 1, "{found:?}");
}

/// Audit events are read as the API server writes them: who (through impersonation), what,
/// when answered, and only from the soak's start.
pub fn audit_events_are_read_with_who_and_when() {
    let line = |user: &str, at: &str| {
        serde_json::json!({"kind": "Event", "stage": "ResponseComplete", "verb": "patch",
            "user": {"username": "admin"}, "impersonatedUser": {"username": user}, "userAgent": "ua",
            "objectRef": {"resource": "nodes", "name": "soak-1"}, "responseStatus": {"code": 200},
            "responseObject": {"metadata": {"name": "soak-1"}}, "stageTimestamp": at})
        .to_string()
    };
    let text = [
        line("sa", "2026-12-05T01:00:02.000002Z"),
        line(OPERATOR, "2026-12-05T01:00:01.000001Z"),
        line("other", "2026-12-05T00:59:59.000000Z"),
        "{\"kind\": \"Event\", \"stage\"".to_owned(),
    ]
    .join("\n");
    let since = "2026-12-05T01:00:00Z"
        .parse::<jiff::Timestamp>()
        .unwrap()
        .as_microsecond();
    let writes = read_audit(&text, since, "sa");
    let actors: Vec<Actor> = writes.iter().map(|w| w.actor).collect();
    assert_eq!(actors, [Actor::Operator, Actor::Controller]);
    assert_eq!(writes[0].at + 1_000_001, writes[1].at);
    assert_eq!(
        (writes[1].code, writes[1].resource.as_str()),
        (200, "nodes")
    );
}

/// A recorded history (the audit log of the soak that found it, trimmed to one node and its
/// Plan, with managed fields and pod volumes left out): the node's upgrade pod succeeded, its
/// Job's status had not caught up, and a Plan label edit made the controller of that day delete
/// the Job, so the upgrade ran again later. The checker names it.
pub fn the_checker_catches_the_violation_the_soak_found() {
    let text = std::fs::read_to_string(crate::support::repo(
        "tests/soak/histories/pod-succeeded-before-its-job.jsonl",
    ))
    .unwrap();
    let writes = read_audit(&text, 0, crate::support::SERVICE_ACCOUNT);
    let end = writes.last().unwrap().at;
    let checker = Checker::run(Vec::new(), &[], &writes, end);
    let rules: Vec<Rule> = checker.violations.iter().map(|v| v.rule).collect();
    assert_eq!(rules, [Rule::BegunJobEnded], "{:#?}", checker.violations);
    let found = checker.violations[0].to_string();
    assert!(
        found.contains("upgrade may have begun") && found.contains("Job deleted by Controller"),
        "the trail shows the history that breaks the rule:\n{found}"
    );
}

/// Found by the long soak: a pod's create was answered 1 ms after kwok's first status patch of
/// it, and the checker, replaying answers in order, read the create's older state (no container
/// started) as the pod no longer running, then flagged the node's cordon. Within a pod, the
/// newest resourceVersion counts; a newer state that says the pod does not run still does.
pub fn a_late_answer_about_a_pod_does_not_undo_a_newer_one() {
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod_write("u1", "soak-1", "gate", "patch", Some("20"))
        .pod_write("u1", "soak-1", "", "create", Some("10"))
        .node(Actor::Controller, "soak-1", true, true, None)
        .evict("w-soak-1")
        .pod("u1", "soak-1", "opened")
        .job_done("u1", "soak-1", "h1", "Complete")
        .node(Actor::Controller, "soak-1", false, false, Some("h1"));
    assert_eq!(b.rules(vec![]), Vec::<Rule>::new());
    let mut b = history();
    b.job("u1", "soak-1", "h1")
        .pod_write("u1", "soak-1", "gate", "patch", Some("20"))
        .pod_write("u1", "soak-1", "", "patch", Some("30"))
        .node(Actor::Controller, "soak-1", true, true, None);
    assert!(b.rules(vec![]).contains(&Rule::TouchedBeforeItsPod));
}
