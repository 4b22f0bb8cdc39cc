use super::facts::expand;
use super::retries::{backoff_after, retry_request_nodes};
use super::*;
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret};
use serde_json::{Value, json};

use crate::api::{
    ANNOTATION_ADOPTED, ANNOTATION_RUN, ANNOTATION_TEMPLATE, NodeStatus, Plan, Reason,
};
use crate::controller::job::{self, JobSettings};
use crate::controller::status::{
    self, COMPLETE, CRD_CURRENT, LATEST_RESOLVED, RECONCILING, STALLED, VALIDATED, stamp,
};

const NOW: &str = "2026-11-23T10:00:00Z"; // a Monday

struct World {
    plan: Value,
    nodes: Vec<Value>,
    jobs: Vec<Value>,
    /// The pods of the Jobs (one per Job).
    pods: Vec<Value>,
    /// Drains by Job UID, as the controller's drain tasks report them.
    drains: BTreeMap<String, DrainProgress>,
    /// Whether a requested drain finishes at once (else it stays running).
    drains_finish: bool,
    /// Whether prepare containers have finished.
    prepared: bool,
    /// Nodes the scheduler cannot place upgrade pods on (a taint they do not tolerate).
    unschedulable: Vec<String>,
    /// Jobs created so far (their UIDs are numbered).
    created: usize,
    secrets: Vec<Value>,
    now: String,
    /// Overrides the resolution, which otherwise follows spec.version.
    resolution: Option<Resolution>,
    /// The Prometheus gate's answer.
    query: Option<QueryOutcome>,
    object_gates: Vec<String>,
    /// Jobs the API server refused, as the shell keeps them.
    refusals: BTreeMap<String, Refusal>,
    /// Fields the cluster's Plan CRD lacks.
    crd_gaps: Vec<String>,
    /// The other Plans of the namespace.
    peers: Vec<Peer>,
}

impl World {
    fn new(spec: Value) -> Self {
        World {
            plan: json!({
                "apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
                "metadata": {"name": "p", "namespace": "system-upgrade", "uid": "plan-uid", "generation": 1},
                "spec": spec,
            }),
            nodes: Vec::new(),
            jobs: Vec::new(),
            pods: Vec::new(),
            drains: BTreeMap::new(),
            drains_finish: true,
            prepared: true,
            unschedulable: Vec::new(),
            created: 0,
            secrets: Vec::new(),
            now: NOW.into(),
            resolution: None,
            query: None,
            object_gates: Vec::new(),
            refusals: BTreeMap::new(),
            crd_gaps: Vec::new(),
            peers: Vec::new(),
        }
    }

    fn nodes(mut self, names: &[&str]) -> Self {
        for name in names {
            self.nodes.push(json!({"metadata": {"name": name, "uid": format!("uid-{name}"), "labels": {"kubernetes.io/hostname": name}}}));
        }
        self
    }

    fn node_mut(&mut self, name: &str) -> &mut Value {
        self.nodes
            .iter_mut()
            .find(|n| n["metadata"]["name"] == name)
            .unwrap()
    }

    fn decide(&self) -> Decision {
        let plan: Plan = serde_json::from_value(self.plan.clone()).unwrap();
        let nodes: Vec<Node> = self
            .nodes
            .iter()
            .map(|n| serde_json::from_value(n.clone()).unwrap())
            .collect();
        let jobs: Vec<Job> = self
            .jobs
            .iter()
            .map(|j| serde_json::from_value(j.clone()).unwrap())
            .collect();
        let secrets: Vec<Secret> = self
            .secrets
            .iter()
            .map(|s| serde_json::from_value(s.clone()).unwrap())
            .collect();
        let pods: Vec<Pod> = self
            .pods
            .iter()
            .map(|p| serde_json::from_value(p.clone()).unwrap())
            .collect();
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let node_refs: Vec<&Node> = nodes.iter().collect();
        let job_refs: Vec<&Job> = jobs.iter().collect();
        let secret_map: BTreeMap<String, &Secret> = secrets
            .iter()
            .map(|s| (s.metadata.name.clone().unwrap(), s))
            .collect();
        let settings = JobSettings::default();
        decide(&Observed {
            plan: &plan,
            nodes: &node_refs,
            jobs: &job_refs,
            secrets: &secret_map,
            now: self.now.parse().unwrap(),
            resolution: self.resolution.clone().unwrap_or_else(
                || match self.plan["spec"]["version"].as_str() {
                    Some(v) => Resolution::Version(v.to_owned()),
                    None => Resolution::Missing,
                },
            ),
            settings: &settings,
            pods: &pod_refs,
            drains: &self.drains,
            query: self.query.clone(),
            object_gates: &self.object_gates,
            refusals: &self.refusals,
            crd_gaps: &self.crd_gaps,
            peers: &self.peers,
        })
    }

    /// Applies a decision the way the cluster would: status persisted, Jobs created (running)
    /// or deleted, nodes labelled and cordoned.
    fn apply(&mut self, decision: &Decision) {
        self.plan["status"] = serde_json::to_value(&decision.status).unwrap();
        for change in decision.before.iter().chain(&decision.after) {
            match change {
                Change::DeletePod { name, .. } | Change::ReleasePod { name, .. } => {
                    self.pods.retain(|p| p["metadata"]["name"] != name.as_str());
                }
                Change::DeleteJob { name, .. } => {
                    let uid = self
                        .jobs
                        .iter()
                        .find(|j| j["metadata"]["name"] == name.as_str())
                        .map(|j| j["metadata"]["uid"].as_str().unwrap().to_owned())
                        .unwrap_or_default();
                    self.jobs.retain(|j| j["metadata"]["name"] != name.as_str());
                    self.pods
                        .retain(|p| p["metadata"]["ownerReferences"][0]["uid"] != uid.as_str());
                    self.drains.remove(&uid);
                }
                Change::CreateJob(job) => {
                    let mut value = serde_json::to_value(job).unwrap();
                    let name = value["metadata"]["name"].as_str().unwrap().to_owned();
                    // Each Job object has its own UID, also one replacing another of its name.
                    self.created += 1;
                    let uid = format!("uid-{name}-{}", self.created);
                    value["metadata"]["uid"] = json!(uid);
                    value["metadata"]["creationTimestamp"] = json!(self.now);
                    value["status"] = json!({"active": 1});
                    let template = value["spec"]["template"].clone();
                    // A hook's pod names no node: the scheduler puts it anywhere.
                    let node = template["metadata"]["labels"]["upgrade.cattle.io/node"]
                        .as_str()
                        .unwrap_or("anywhere")
                        .to_owned();
                    let scheduled = !self.unschedulable.contains(&node);
                    let mut spec = template["spec"].clone();
                    if scheduled {
                        spec["nodeName"] = json!(node);
                    }
                    let status = if scheduled {
                        json!({"phase": "Pending", "initContainerStatuses": init_statuses(&template, self.prepared)})
                    } else {
                        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                            "message": "0/3 nodes are available: 1 node(s) had untolerated taint {CriticalAddonsOnly: true}"}]})
                    };
                    self.pods.push(json!({
                        "metadata": {"name": format!("{name}-pod"), "namespace": "system-upgrade", "labels": template["metadata"]["labels"],
                            "creationTimestamp": self.now, "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name, "uid": uid, "controller": true}]},
                        "spec": spec,
                        "status": status,
                    }));
                    self.jobs.push(value);
                }
                Change::Drain {
                    node, pod, job_uid, ..
                } => {
                    let node = self.node_mut(node);
                    node["metadata"]["annotations"]["cordoned.upgrade.cattle.io/p"] = json!("true");
                    node["spec"]["unschedulable"] = json!(true);
                    if self.drains_finish {
                        let pod_value = self
                            .pods
                            .iter_mut()
                            .find(|p| p["metadata"]["name"] == pod.as_str())
                            .unwrap();
                        pod_value["metadata"]["annotations"]["upgrade.cattle.io/drained"] =
                            json!("now");
                        self.drains
                            .insert(job_uid.clone(), DrainProgress::Done(pod.clone()));
                    } else {
                        self.drains.insert(
                            job_uid.clone(),
                            DrainProgress::Running("waiting for pod web/x to terminate".into()),
                        );
                    }
                }
                Change::FailDrain { job, message } => {
                    let job = self
                        .jobs
                        .iter_mut()
                        .find(|j| j["metadata"]["name"] == job.as_str())
                        .unwrap();
                    job["metadata"]["annotations"]["upgrade.cattle.io/drain-failed"] =
                        json!(message);
                    job["spec"]["suspend"] = json!(true);
                }
                Change::AnnotateJob { name, annotations } => {
                    let job = self.job_mut(name);
                    for (k, v) in annotations {
                        job["metadata"]["annotations"][k] = json!(v);
                    }
                }
                Change::UpdateJob { name, fields } => {
                    let job = self.job_mut(name);
                    if let Some(deadline) = fields.active_deadline_seconds {
                        job["spec"]["activeDeadlineSeconds"] = json!(deadline);
                    }
                    if let Some(limit) = fields.backoff_limit {
                        job["spec"]["backoffLimit"] = json!(limit);
                    }
                    if let Some(ttl) = fields.ttl_seconds_after_finished {
                        job["spec"]["ttlSecondsAfterFinished"] = json!(ttl);
                        job["metadata"]["annotations"]["upgrade.cattle.io/ttl-seconds-after-finished"] =
                            json!(ttl.to_string());
                    }
                }
                Change::AdoptCordon { node } => {
                    let node = self.node_mut(node);
                    node["metadata"]["annotations"]["cordoned.upgrade.cattle.io/p"] = json!("now");
                }
                Change::LabelNode {
                    node,
                    labels,
                    annotations,
                } => {
                    let node = self.node_mut(node);
                    for (k, v) in labels {
                        node["metadata"]["labels"][k] = json!(v);
                    }
                    for (k, v) in annotations {
                        node["metadata"]["annotations"][k] = json!(v);
                    }
                }
                Change::Finalizer { on } => {
                    let key = "upgrade.cattle.io/after-hook";
                    let meta = &mut self.plan["metadata"];
                    let mut list = meta["finalizers"].as_array().cloned().unwrap_or_default();
                    list.retain(|f| f != key);
                    if *on {
                        list.push(json!(key));
                    }
                    meta["finalizers"] = json!(list);
                }
                Change::ClearAnnotation { key, value } => {
                    let annotations = &mut self.plan["metadata"]["annotations"];
                    if annotations[*key] == value.as_str() {
                        annotations.as_object_mut().unwrap().remove(*key);
                    }
                }
                Change::Taint { node, on } => {
                    let key = "upcoming.upgrade.cattle.io/p";
                    let node = self.node_mut(node);
                    let mut taints = node["spec"]["taints"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default();
                    taints.retain(|t| t["key"] != key);
                    if *on {
                        taints.push(json!({"key": key, "effect": "PreferNoSchedule"}));
                    }
                    node["spec"]["taints"] = json!(taints);
                }
                Change::Release { node } => {
                    let node = self.node_mut(node);
                    node["metadata"]["annotations"]
                        .as_object_mut()
                        .unwrap()
                        .remove("cordoned.upgrade.cattle.io/p");
                    node["spec"]["unschedulable"] = json!(false);
                }
            }
        }
    }

    fn job_mut(&mut self, name: &str) -> &mut Value {
        self.jobs
            .iter_mut()
            .find(|j| j["metadata"]["name"] == name)
            .unwrap()
    }

    /// The pod of the node's Job.
    fn pod_mut(&mut self, node: &str) -> &mut Value {
        self.pods
            .iter_mut()
            .find(|p| p["metadata"]["labels"]["upgrade.cattle.io/node"] == node)
            .unwrap()
    }

    fn step(&mut self) -> Decision {
        let decision = self.decide();
        self.apply(&decision);
        decision
    }

    /// Runs passes until nothing more happens: Job created, pod prepared, node drained, gate
    /// opened. Returns the last pass.
    fn settle(&mut self) -> Decision {
        let mut last = self.step();
        for _ in 0..6 {
            let next = self.step();
            let quiet =
                next.before.is_empty() && next.after.is_empty() && next.status == last.status;
            last = next;
            if quiet {
                break;
            }
        }
        last
    }

    fn node_label(&mut self, node: &str, key: &str) -> Option<String> {
        self.node_mut(node)["metadata"]["labels"][key]
            .as_str()
            .map(str::to_owned)
    }

    fn finish_job(&mut self, node: &str, succeeded: bool, at: &str) {
        self.finish_job_unconverged(node, succeeded, at);
        if succeeded {
            // As K3s does once it restarts: the node reports the version its Job installed.
            let job = self
                .jobs
                .iter()
                .find(|j| j["metadata"]["labels"]["upgrade.cattle.io/node"] == node)
                .unwrap();
            let version = job["metadata"]["labels"]["upgrade.cattle.io/version"]
                .as_str()
                .unwrap()
                .to_owned();
            if let Some(v) = crate::syntax::kube_version::KubeVersion::parse(&version) {
                runs(self, node, &v.to_string());
            }
        }
    }

    /// Finishes the node's Job without the node showing the upgrade.
    fn finish_job_unconverged(&mut self, node: &str, succeeded: bool, at: &str) {
        let job = self
            .jobs
            .iter_mut()
            .find(|j| j["metadata"]["labels"]["upgrade.cattle.io/node"] == node)
            .unwrap();
        finish(job, succeeded, at);
    }

    /// Finishes the Job of a hook (`before` or `after`).
    fn finish_hook(&mut self, hook: &str, succeeded: bool, at: &str) {
        let job = self
            .jobs
            .iter_mut()
            .find(|j| j["metadata"]["labels"]["upgrade.cattle.io/hook"] == hook)
            .unwrap();
        finish(job, succeeded, at);
    }
}

/// A Job's status once it succeeded or failed at `at`.
fn finish(job: &mut Value, succeeded: bool, at: &str) {
    job["status"] = if succeeded {
        json!({"succeeded": 1, "completionTime": at, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": at}]})
    } else {
        json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": at,
            "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})
    };
}

/// The statuses of a pod's init containers: `prepare` running (or done), then the gate waiting
/// for it (or running once it is done), as the kubelet reports them.
fn init_statuses(template: &Value, prepared: bool) -> Vec<Value> {
    let mut previous_done = true;
    template["spec"]["initContainers"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let state = if !previous_done {
                json!({"waiting": {"reason": "PodInitializing"}})
            } else if c["name"] == "prepare" && prepared {
                json!({"terminated": {"exitCode": 0}})
            } else {
                json!({"running": {}})
            };
            previous_done = state.get("terminated").is_some();
            json!({"name": c["name"], "ready": false, "restartCount": 0, "image": "x", "imageID": "", "state": state})
        })
        .collect()
}

fn spec() -> Value {
    json!({"concurrency": 1, "version": "v1.30.4+k3s1", "nodeSelector": {}, "cordon": true, "upgrade": {"image": "rancher/k3s-upgrade"}})
}

fn condition(decision: &Decision, type_: &str) -> (String, String, String) {
    let c = status::get(decision.status.conditions.as_deref().unwrap(), type_).unwrap();
    (
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    )
}

fn created(decision: &Decision) -> Vec<String> {
    decision
        .after
        .iter()
        .filter_map(|c| match c {
            Change::CreateJob(job) => {
                let labels = job.metadata.labels.as_ref().unwrap();
                Some(match labels.get("upgrade.cattle.io/hook") {
                    Some(hook) => format!("hook/{hook}"),
                    None => labels["upgrade.cattle.io/node"].clone(),
                })
            }
            _ => None,
        })
        .collect()
}

fn deleted(decision: &Decision) -> Vec<String> {
    decision
        .before
        .iter()
        .filter_map(|c| match c {
            Change::DeleteJob { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect()
}

fn reasons(decision: &Decision) -> Vec<&'static str> {
    decision.notes.iter().map(|n| n.reason.as_str()).collect()
}

mod budget;
mod canary;
mod cancel;
mod history;
mod hooks;
mod notices;
mod order;
mod windows;

#[test]
fn static_version_resolves_and_starts_one_node() {
    let mut world = World::new(spec()).nodes(&["a", "b", "c"]);
    let first = world.step();
    assert_eq!(first.status.latest_version.as_deref(), Some("v1.30.4-k3s1"));
    let hash = first.status.latest_hash.clone().unwrap();
    assert_eq!(hash.len(), 56);
    assert_eq!(
        condition(&first, VALIDATED),
        ("True".into(), "PlanIsValid".into(), "".into())
    );
    assert_eq!(
        condition(&first, LATEST_RESOLVED),
        ("True".into(), "Version".into(), "".into())
    );
    assert_eq!(
        condition(&first, COMPLETE),
        ("False".into(), "SyncJob".into(), "".into())
    );
    assert_eq!(first.status.applying.as_ref().unwrap().len(), 1);
    let node = first.status.applying.as_ref().unwrap()[0].clone();
    assert_eq!(created(&first), std::slice::from_ref(&node));
    assert!(
        !first
            .after
            .iter()
            .any(|c| matches!(c, Change::Drain { .. })),
        "no cordon before the Job's prepare"
    );
    for reason in ["Validated", "Resolved", "SyncJob"] {
        assert!(
            reasons(&first).contains(&reason),
            "{reason}: {:?}",
            reasons(&first)
        );
    }
    assert_eq!(first.status.nodes.as_ref().unwrap()[0].phase, "Preparing");

    // The pod has prepared: the node is drained (here: at once), then the upgrade goes on.
    let second = world.step();
    assert!(
        second
            .after
            .iter()
            .any(|c| matches!(c, Change::Drain { node: n, .. } if *n == node))
    );
    assert_eq!(second.status.nodes.as_ref().unwrap()[0].phase, "Draining");
    let third = world.step();
    assert_eq!(third.status.nodes.as_ref().unwrap()[0].phase, "Upgrading");
    assert!(created(&third).is_empty());
    assert_eq!(third.status.applying, first.status.applying);
    // Nothing more happens while the Job runs.
    let fourth = world.step();
    assert!(fourth.after.is_empty() && fourth.before.is_empty());
    assert!(
        reasons(&fourth).is_empty(),
        "no repeated events: {:?}",
        reasons(&fourth)
    );
    assert_eq!(fourth.status, world.decide().status, "stable");
}

#[test]
fn prepare_runs_before_the_node_is_cordoned() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.prepared = false;
    let mut plan = spec();
    plan["prepare"] = json!({"image": "rancher/k3s-upgrade", "args": ["prepare", "server-plan"]});
    world.plan["spec"] = plan;
    world.step();
    let waiting = world.step();
    let entry = &waiting.status.nodes.as_ref().unwrap()[0];
    assert_eq!(entry.phase, "Preparing");
    assert!(
        entry
            .message
            .as_deref()
            .unwrap()
            .contains("prepare is running")
    );
    assert!(
        !waiting
            .after
            .iter()
            .any(|c| matches!(c, Change::Drain { .. })),
        "not cordoned while prepare waits"
    );
    assert_ne!(world.node_mut("a")["spec"]["unschedulable"], true);
    // Prepare ends: now the drain starts.
    world.pods[0]["status"]["initContainerStatuses"][0]["state"] =
        json!({"terminated": {"exitCode": 0}});
    world.pods[0]["status"]["initContainerStatuses"][1]["state"] = json!({"running": {}});
    let drained = world.step();
    assert!(
        drained
            .after
            .iter()
            .any(|c| matches!(c, Change::Drain { .. }))
    );
}

#[test]
fn drains_show_progress_and_failures_halt_the_node() {
    let mut plan = spec();
    plan["drain"] = json!({"timeout": "5m"});
    let mut world = World::new(plan).nodes(&["a", "b"]);
    world.drains_finish = false;
    world.step();
    world.step();
    let draining = world.step();
    let entry = &draining.status.nodes.as_ref().unwrap()[0];
    assert_eq!(
        (entry.phase.as_str(), entry.message.as_deref()),
        ("Draining", Some("waiting for pod web/x to terminate"))
    );
    // The drain gives up.
    let job_uid = world.jobs[0]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    let message =
        "drain of node a timed out after 5m0s: pod web/x blocked by PodDisruptionBudget web/pdb"
            .to_owned();
    world
        .drains
        .insert(job_uid, DrainProgress::Failed(message.clone()));
    let failed = world.step();
    assert!(
        failed
            .after
            .iter()
            .any(|c| matches!(c, Change::FailDrain { message: m, .. } if *m == message))
    );
    assert!(
        failed
            .notes
            .iter()
            .any(|n| n.reason == "DrainFailed" && n.warning)
    );
    let halted = world.step();
    let entry = &halted.status.nodes.as_ref().unwrap()[0];
    assert_eq!(
        (entry.phase.as_str(), entry.message.as_deref()),
        ("Failed", Some(message.as_str()))
    );
    assert_eq!(
        condition(&halted, COMPLETE),
        ("False".into(), "DrainFailed".into(), message.clone())
    );
    let again = world.step();
    assert!(created(&again).is_empty(), "the other node never starts");
    assert_eq!(halted.status.applying.as_ref().unwrap().len(), 1);
    // An edit retries it.
    world.plan["spec"]["drain"]["disableEviction"] = json!(true);
    let edited = world.step();
    assert_eq!(deleted(&edited).len(), 1);
}

#[test]
fn a_rollout_runs_node_by_node_to_completion() {
    let mut world = World::new(spec()).nodes(&["a", "b", "c"]);
    let mut upgraded = Vec::new();
    for _ in 0..3 {
        let decision = world.settle();
        let node = decision.status.applying.as_ref().unwrap()[0].clone();
        assert_eq!(
            decision.status.applying.as_ref().unwrap().len(),
            1,
            "never more than the concurrency"
        );
        world.finish_job(&node, true, NOW);
        upgraded.push(node);
    }
    let done = world.step();
    assert_eq!(
        condition(&done, COMPLETE),
        ("True".into(), "Complete".into(), "".into())
    );
    assert!(done.status.applying.is_none());
    assert!(done.status.nodes.is_none());
    assert!(reasons(&done).contains(&"Complete"));
    upgraded.sort();
    assert_eq!(upgraded, ["a", "b", "c"]);
    let hash = done.status.latest_hash.clone().unwrap();
    for node in &world.nodes {
        assert_eq!(
            node["metadata"]["labels"]["plan.upgrade.cattle.io/p"],
            hash.as_str()
        );
        assert_eq!(node["spec"]["unschedulable"], false, "uncordoned");
    }
    let again = world.step();
    assert!(again.before.is_empty() && again.after.is_empty() && again.notes.is_empty());
}

#[test]
fn completion_labels_the_node_and_starts_the_next_in_the_same_pass() {
    let mut plan = spec();
    plan["postCompleteLabels"] = json!({"example.com/v": "$(LATEST_VERSION)", "example.com/h": "$(LATEST_HASH)", "example.com/s": "static"});
    let mut world = World::new(plan).nodes(&["a", "b"]);
    let first = world.settle();
    let hash = first.status.latest_hash.clone().unwrap();
    let node = first.status.applying.as_ref().unwrap()[0].clone();
    world.finish_job(&node, true, NOW);
    let second = world.step();
    let (label, annotations) = second
        .before
        .iter()
        .find_map(|c| match c {
            Change::LabelNode {
                node: n,
                labels,
                annotations,
            } if *n == node => Some((labels.clone(), annotations.clone())),
            _ => None,
        })
        .unwrap();
    // The node records its upgrade in the same write (no event on the node).
    let record: Value = serde_json::from_str(&annotations["upgraded.upgrade.cattle.io/p"]).unwrap();
    assert_eq!(record["version"], "v1.30.4-k3s1");
    assert_eq!(record["completed"], NOW);
    assert!(record["job"].as_str().unwrap().starts_with("apply-p-on-"));
    assert!(record["seconds"].is_u64());
    assert!(
        !second
            .notes
            .iter()
            .any(|n| matches!(n.target, Target::Node(_))),
        "no routine event on the node"
    );
    assert_eq!(label["plan.upgrade.cattle.io/p"], hash);
    assert_eq!(label["example.com/v"], "v1.30.4-k3s1");
    assert_eq!(label["example.com/h"], hash);
    assert_eq!(label["example.com/s"], "static");
    assert!(
        second
            .before
            .contains(&Change::Release { node: node.clone() })
    );
    let other = if node == "a" { "b" } else { "a" };
    assert_eq!(second.status.applying.clone().unwrap(), [other.to_string()]);
    assert_eq!(created(&second), [other.to_string()]);
    assert!(reasons(&second).contains(&"JobComplete"));
}

#[test]
fn post_complete_delay_holds_the_slot() {
    let mut plan = spec();
    plan["postCompleteDelay"] = json!("2m");
    let mut world = World::new(plan).nodes(&["a", "b"]);
    let first = world.settle();
    let node = first.status.applying.as_ref().unwrap()[0].clone();
    world.finish_job(&node, true, NOW);
    world.now = "2026-11-23T10:01:00Z".into();
    let waiting = world.step();
    assert!(
        waiting
            .before
            .contains(&Change::Release { node: node.clone() }),
        "uncordoned at once"
    );
    assert!(
        !waiting
            .before
            .iter()
            .any(|c| matches!(c, Change::LabelNode { .. })),
        "not labelled yet"
    );
    assert_eq!(
        waiting.status.applying.clone().unwrap(),
        std::slice::from_ref(&node)
    );
    assert!(created(&waiting).is_empty());
    assert_eq!(waiting.requeue, Duration::from_secs(60));
    let entry = &waiting.status.nodes.as_ref().unwrap()[0];
    assert_eq!(
        (entry.phase.as_str(), entry.message.as_deref()),
        (
            "WaitingDelay",
            Some("waiting postCompleteDelay until 2026-11-23T10:02:00Z")
        )
    );
    let messages: Vec<&str> = waiting.notes.iter().map(|n| n.message.as_str()).collect();
    assert!(
        messages.contains(
            &format!("Job completed on Node {node}, waiting 2m0s PostCompleteDelay").as_str()
        ),
        "{messages:?}"
    );
    world.now = "2026-11-23T10:02:00Z".into();
    let after = world.step();
    assert!(
        after
            .before
            .iter()
            .any(|c| matches!(c, Change::LabelNode { node: n, .. } if *n == node))
    );
    assert_eq!(
        created(&after).len(),
        1,
        "the next node starts after the delay"
    );
}

#[test]
fn a_failure_halts_the_slot_even_after_the_job_expires() {
    let mut world = World::new(spec()).nodes(&["a", "b"]);
    let first = world.step();
    let node = first.status.applying.as_ref().unwrap()[0].clone();
    world.finish_job(&node, false, NOW);
    let failed = world.step();
    let job_name = job::job_name("p", &node, first.status.latest_hash.as_deref().unwrap());
    let (status, reason, message) = condition(&failed, COMPLETE);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "JobFailed"));
    assert_eq!(
        message,
        format!(
            "Job system-upgrade/{job_name} failed on Node {node}: BackoffLimitExceeded: Job has reached the specified backoff limit"
        )
    );
    assert!(
        failed
            .notes
            .iter()
            .any(|n| n.reason == "JobFailed" && n.warning)
    );
    assert_eq!(
        failed.status.applying.clone().unwrap(),
        std::slice::from_ref(&node),
        "the node keeps its slot"
    );
    assert!(created(&failed).is_empty());
    assert!(
        !failed
            .before
            .iter()
            .any(|c| matches!(c, Change::Release { .. })),
        "stays cordoned"
    );
    assert_eq!(failed.status.nodes.as_ref().unwrap()[0].phase, "Failed");

    // The TTL expires: the Job goes, the halt stays.
    world.now = "2026-11-23T10:15:01Z".into();
    let expired = world.step();
    assert_eq!(deleted(&expired), [job_name]);
    let later = world.step();
    assert!(created(&later).is_empty(), "no automatic retry");
    assert_eq!(condition(&later, COMPLETE).1, "JobFailed");
    assert!(later.notes.is_empty(), "{:?}", later.notes);

    // Editing the Plan so its Job changes retries the node.
    world.plan["spec"]["upgrade"]["args"] = json!(["--fixed"]);
    let retried = world.step();
    assert_eq!(created(&retried), [node]);
}

#[test]
fn an_edit_replaces_a_failed_job_that_still_exists() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.step();
    world.finish_job("a", false, NOW);
    world.step();
    world.plan["spec"]["upgrade"]["args"] = json!(["--fixed"]);
    let edited = world.step();
    assert_eq!(deleted(&edited).len(), 1, "the failed Job is replaced");
    let recreated = world.step();
    assert_eq!(created(&recreated), ["a"]);
    assert_eq!(condition(&recreated, COMPLETE).1, "SyncJob");
}

#[test]
fn a_version_bump_replaces_old_jobs() {
    let mut world = World::new(spec()).nodes(&["a", "b"]);
    world.step();
    world.plan["spec"]["version"] = json!("v1.31.0+k3s1");
    let bumped = world.step();
    assert_eq!(deleted(&bumped).len(), 1);
    assert!(reasons(&bumped).contains(&"Resolved"));
    assert_eq!(created(&bumped).len(), 1);
    let job = bumped
        .after
        .iter()
        .find_map(|c| match c {
            Change::CreateJob(j) => Some(j.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        job.metadata.labels.as_ref().unwrap()["upgrade.cattle.io/version"],
        "v1.31.0-k3s1"
    );
}

#[test]
fn lowering_concurrency_keeps_running_nodes() {
    let mut plan = spec();
    plan["concurrency"] = json!(3);
    let mut world = World::new(plan).nodes(&["a", "b", "c", "d", "e"]);
    let first = world.step();
    assert_eq!(first.status.applying.as_ref().unwrap().len(), 3);
    world.plan["spec"]["concurrency"] = json!(1);
    let lowered = world.step();
    assert_eq!(lowered.status.applying, first.status.applying);
    assert!(deleted(&lowered).is_empty() && created(&lowered).is_empty());
    for node in first.status.applying.clone().unwrap() {
        world.finish_job(&node, true, NOW);
    }
    let next = world.step();
    assert_eq!(
        next.status.applying.as_ref().unwrap().len(),
        1,
        "then one at a time"
    );
}

/// Found by the soak (seed 619132735): a replica chose 15 nodes at "10%", two creates timed out,
/// the operator lowered it to "5%", and the next leader created the two Jobs while 13 ran.
#[test]
fn a_node_chosen_before_whose_job_was_never_created_waits_for_room() {
    let mut plan = spec();
    plan["concurrency"] = json!(3);
    plan["cordon"] = json!(false);
    let mut world = World::new(plan).nodes(&["a", "b", "c", "d", "e"]);
    let first = world.decide();
    let chosen = first.status.applying.clone().unwrap();
    assert_eq!(chosen.len(), 3);
    world.apply(&first);
    // The create of the last chosen node's Job failed: the status names it, no Job exists.
    let lost = chosen[2].clone();
    world
        .jobs
        .retain(|j| j["metadata"]["labels"]["upgrade.cattle.io/node"] != lost.as_str());
    world
        .pods
        .retain(|p| p["metadata"]["labels"]["upgrade.cattle.io/node"] != lost.as_str());

    // As it was: the node keeps its place and gets its Job.
    let mut same = World {
        plan: world.plan.clone(),
        nodes: world.nodes.clone(),
        jobs: world.jobs.clone(),
        pods: world.pods.clone(),
        ..World::new(spec())
    };
    assert_eq!(created(&same.step()), std::slice::from_ref(&lost));

    // Lowered to 2: nothing began there, so it waits; the two running keep theirs.
    world.plan["spec"]["concurrency"] = json!(2);
    let lowered = world.step();
    assert!(created(&lowered).is_empty(), "{:?}", created(&lowered));
    assert_eq!(lowered.status.applying.as_ref().unwrap(), &chosen[..2]);
    // Once one finishes, the next in order (the same node) starts.
    world.finish_job(&chosen[0], true, NOW);
    assert_eq!(created(&world.step()), [lost]);
}

/// A node whose Job went away after this Plan cordoned it keeps its place even past a lowered
/// concurrency: its upgrade may have begun, so its Job comes back.
#[test]
fn a_node_cordoned_for_the_plan_keeps_its_place_when_its_job_goes() {
    let mut plan = spec();
    plan["concurrency"] = json!(2);
    let mut world = World::new(plan).nodes(&["a", "b", "c"]);
    let first = world.settle();
    let chosen = first.status.applying.clone().unwrap();
    assert_eq!(chosen.len(), 2);
    let gone = chosen[1].clone();
    assert_eq!(
        world.node_mut(&gone)["spec"]["unschedulable"],
        json!(true),
        "cordoned by the drain"
    );
    world
        .jobs
        .retain(|j| j["metadata"]["labels"]["upgrade.cattle.io/node"] != gone.as_str());
    world
        .pods
        .retain(|p| p["metadata"]["labels"]["upgrade.cattle.io/node"] != gone.as_str());
    world.plan["spec"]["concurrency"] = json!(1);
    let next = world.step();
    assert_eq!(created(&next), [gone]);
    assert_eq!(next.status.applying.unwrap(), chosen);
}

#[test]
fn nodes_that_stop_needing_the_plan_are_let_go() {
    let mut plan = spec();
    plan["nodeSelector"] = json!({"matchLabels": {"upgrade": "true"}});
    let mut world = World::new(plan).nodes(&["a"]);
    world.node_mut("a")["metadata"]["labels"]["upgrade"] = json!("true");
    let first = world.step();
    assert_eq!(created(&first), ["a"]);
    world.settle();
    world.node_mut("a")["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("upgrade");
    let gone = world.step();
    assert_eq!(deleted(&gone).len(), 1, "the out-of-turn Job is deleted");
    assert!(
        gone.before.contains(&Change::Release { node: "a".into() }),
        "and the node uncordoned"
    );
    assert_eq!(condition(&gone, COMPLETE).0, "True");
}

#[test]
fn deleted_nodes_lose_their_jobs() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.step();
    world.nodes.clear();
    let decision = world.step();
    assert_eq!(deleted(&decision).len(), 1);
    assert!(decision.status.applying.is_none());
}

#[test]
fn ineligible_nodes_never_get_jobs() {
    let mut world = World::new(spec()).nodes(&["opted-out", "no-hostname", "done"]);
    world.node_mut("opted-out")["metadata"]["labels"]["plan.upgrade.cattle.io/p"] =
        json!("disabled");
    world.node_mut("no-hostname")["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("kubernetes.io/hostname");
    let hash = World::new(spec()).decide().status.latest_hash.unwrap();
    world.node_mut("done")["metadata"]["labels"]["plan.upgrade.cattle.io/p"] = json!(hash);
    let decision = world.step();
    assert!(created(&decision).is_empty());
    assert_eq!(
        condition(&decision, COMPLETE),
        ("True".into(), "Complete".into(), "".into())
    );
}

#[test]
fn without_a_selector_nothing_is_selected() {
    let mut plan = spec();
    plan.as_object_mut().unwrap().remove("nodeSelector");
    let decision = World::new(plan).nodes(&["a"]).decide();
    assert!(created(&decision).is_empty());
    assert_eq!(condition(&decision, COMPLETE).0, "True");
}

#[test]
fn invalid_and_unresolved_plans_do_nothing() {
    let mut plan = spec();
    plan["drain"] = json!({"deleteLocalData": true, "deleteEmptydirData": true});
    let decision = World::new(plan).nodes(&["a"]).decide();
    let (status, reason, message) = condition(&decision, VALIDATED);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Error"));
    assert!(
        message.contains("spec.drain cannot specify both deleteEmptydirData and deleteLocalData")
    );
    assert_eq!(
        condition(&decision, COMPLETE),
        (
            "False".into(),
            "NotReady".into(),
            "plan is not valid and resolved".into()
        )
    );
    assert!(decision.after.is_empty());
    assert!(reasons(&decision).contains(&"ValidateFailed"));

    let mut world = World::new(spec()).nodes(&["a"]);
    world.plan["spec"]
        .as_object_mut()
        .unwrap()
        .remove("version");
    world.resolution = Some(Resolution::Missing);
    let decision = world.decide();
    assert_eq!(
        condition(&decision, LATEST_RESOLVED),
        (
            "False".into(),
            "Error".into(),
            "cannot resolve plan: missing channel and version".into()
        )
    );
    assert!(decision.status.latest_version.is_none() && decision.status.latest_hash.is_none());
    assert!(decision.after.is_empty());
}

#[test]
fn missing_secrets_block_until_created() {
    let mut plan = spec();
    plan["secrets"] = json!([{"name": "s", "path": "/x"}, {"name": "ignored", "path": "/y", "ignoreUpdates": true}]);
    let mut world = World::new(plan).nodes(&["a"]);
    let blocked = world.decide();
    assert!(
        condition(&blocked, VALIDATED)
            .2
            .contains("secrets \"s\" not found")
    );
    assert!(blocked.after.is_empty());
    world
        .secrets
        .push(json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}}));
    let with_secret = world.decide();
    assert_eq!(created(&with_secret).len(), 1);
    // The Secret's content is part of the hash.
    let first_hash = with_secret.status.latest_hash.clone();
    world.secrets[0]["data"]["k"] = json!("dzI=");
    assert_ne!(world.decide().status.latest_hash, first_hash);
}

#[test]
fn windows_gate_the_start_only() {
    let mut plan = spec();
    plan["window"] =
        json!({"days": ["tu"], "startTime": "01:00", "endTime": "02:00", "timeZone": "UTC"});
    let mut world = World::new(plan).nodes(&["a", "b"]);
    let waiting = world.step();
    assert_eq!(
        condition(&waiting, COMPLETE),
        (
            "False".into(),
            "Waiting".into(),
            "current time is not within configured window".into()
        )
    );
    assert!(created(&waiting).is_empty());
    assert_eq!(waiting.requeue, WINDOW_RETRY);
    assert!(reasons(&waiting).contains(&"Waiting"));
    assert!(
        !reasons(&world.step()).contains(&"Waiting"),
        "the Waiting event is sent once"
    );
    world.now = "2026-11-24T01:30:00Z".into();
    let open = world.step();
    assert_eq!(created(&open).len(), 1);
    // The window closes while a node is applying: the rollout continues to the end.
    world.now = "2026-11-24T05:00:00Z".into();
    let node = open.status.applying.clone().unwrap()[0].clone();
    world.finish_job(&node, true, "2026-11-24T04:00:00Z");
    let continued = world.step();
    assert_eq!(created(&continued).len(), 1);
}

#[test]
fn channel_failures_are_visible_and_retried() {
    let mut plan = spec();
    plan.as_object_mut().unwrap().remove("version");
    plan["channel"] = json!("https://update.k3s.io/v1-release/channels/stable");
    let mut world = World::new(plan).nodes(&["a"]);
    world.resolution = Some(Resolution::ChannelFailed {
        error: "unexpected response: HTTP/1.1 503 Service Unavailable".into(),
        retry: Duration::from_secs(10),
    });
    let failed = world.step();
    assert_eq!(condition(&failed, LATEST_RESOLVED).1, "ChannelError");
    assert_eq!(failed.requeue, Duration::from_secs(10));
    assert!(
        failed
            .notes
            .iter()
            .any(|n| n.reason == "ResolveFailed" && n.message.contains("503"))
    );
    assert!(failed.after.is_empty());
    world.resolution = Some(Resolution::Channel("v1.30.4+k3s1".into()));
    let resolved = world.step();
    assert_eq!(
        condition(&resolved, LATEST_RESOLVED),
        ("True".into(), "Channel".into(), "".into())
    );
    assert_eq!(created(&resolved).len(), 1);
    // A later failure keeps the rollout going with the resolved version.
    world.resolution = Some(Resolution::ChannelFailed {
        error: "timeout".into(),
        retry: Duration::from_secs(20),
    });
    let later = world.step();
    let (status, _, message) = condition(&later, LATEST_RESOLVED);
    assert_eq!(status, "True");
    assert!(
        message.contains("still applying v1.30.4-k3s1: timeout"),
        "{message}"
    );
    assert_eq!(later.status.applying, resolved.status.applying);
    assert_ne!(
        condition(&later, COMPLETE).1,
        "NotReady",
        "a failed poll does not stop a rollout of the version resolved before"
    );
    world.resolution = Some(Resolution::ChannelNotDue(Duration::from_secs(300)));
    assert_eq!(world.step().requeue, Duration::from_secs(300));
}

#[test]
fn expansion_follows_kubernetes_rules() {
    assert_eq!(expand("$(LATEST_VERSION)", "v1", "h"), "v1");
    assert_eq!(expand("k3s-$(LATEST_HASH)-x", "v1", "h"), "k3s-h-x");
    assert_eq!(expand("$$(LATEST_VERSION)", "v1", "h"), "$(LATEST_VERSION)");
    assert_eq!(expand("$(OTHER)", "v1", "h"), "$(OTHER)");
    assert_eq!(expand("a$b$", "v1", "h"), "a$b$");
}

#[test]
fn finished_jobs_expire_after_their_ttl() {
    let mut world = World::new(spec()).nodes(&["a", "b"]);
    world.step();
    let node = world.plan["status"]["applying"][0]
        .as_str()
        .unwrap()
        .to_owned();
    world.finish_job(&node, true, NOW);
    let done = world.step();
    assert!(deleted(&done).is_empty());
    assert_eq!(
        done.requeue, RESYNC,
        "the TTL (900s) is further away than the resync"
    );
    world.now = "2026-11-23T10:15:00Z".into();
    assert_eq!(deleted(&world.decide()).len(), 1);
}

fn changes(decision: &Decision) -> impl Iterator<Item = &Change> {
    decision.before.iter().chain(&decision.after)
}

fn drains(decision: &Decision) -> usize {
    changes(decision)
        .filter(|c| matches!(c, Change::Drain { .. }))
        .count()
}

fn entry(decision: &Decision, node: &str) -> NodeStatus {
    decision
        .status
        .nodes
        .iter()
        .flatten()
        .find(|e| e.name == node)
        .cloned()
        .unwrap_or_else(|| panic!("no entry for {node}: {:?}", decision.status.nodes))
}

/// A Job as the Go controller leaves it: no template digest of ours.
fn make_go_era(world: &mut World, node: &str) {
    let job = world
        .jobs
        .iter_mut()
        .find(|j| j["metadata"]["labels"]["upgrade.cattle.io/node"] == node)
        .unwrap();
    let annotations = job["metadata"]["annotations"].as_object_mut().unwrap();
    annotations.remove(ANNOTATION_TEMPLATE);
    annotations.remove(ANNOTATION_RUN);
}

/// The upgrade container of the node's pod runs (the gate was passed).
fn upgrade_runs(world: &mut World, node: &str) {
    let pod = world.pod_mut(node);
    pod["status"]["phase"] = json!("Running");
    for status in pod["status"]["initContainerStatuses"]
        .as_array_mut()
        .unwrap()
    {
        status["state"] = json!({"terminated": {"exitCode": 0}});
    }
}

#[test]
fn no_cordon_or_drain_while_the_pod_is_not_on_its_node() {
    let mut plan = spec();
    plan["drain"] = json!({});
    plan["nodeSelector"] = json!({"matchLabels": {"kubernetes.io/hostname": "tainted"}});
    let mut world = World::new(plan).nodes(&["tainted"]);
    world.unschedulable.push("tainted".into());
    for _ in 0..4 {
        let pass = world.step();
        assert_eq!(drains(&pass), 0, "no drain for a pod that is not scheduled");
    }
    let waiting = entry(&world.decide(), "tainted");
    assert_eq!(waiting.phase, "Preparing");
    let message = waiting.message.unwrap();
    assert!(
        message.contains("to be scheduled") && message.contains("untolerated taint"),
        "{message}"
    );
    assert_ne!(world.node_mut("tainted")["spec"]["unschedulable"], true);
    // The Job reaches its deadline: nothing to return, the node was never cordoned.
    world.finish_job("tainted", false, NOW);
    let failed = world.step();
    assert!(!changes(&failed).any(|c| matches!(c, Change::Release { .. })));
    assert_eq!(entry(&failed, "tainted").phase, "Failed");
}

#[test]
fn a_scheduled_pod_is_drained_only_once_its_gate_runs() {
    let mut plan = spec();
    plan["drain"] = json!({});
    let mut world = World::new(plan).nodes(&["a"]);
    world.step();
    // Bound, but the gate's image is still being pulled.
    world.pods[0]["status"]["initContainerStatuses"][0]["state"] =
        json!({"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}});
    let pulling = world.step();
    assert_eq!(drains(&pulling), 0);
    assert!(
        entry(&pulling, "a")
            .message
            .unwrap()
            .contains("ErrImagePull: pull access denied")
    );
    world.pods[0]["status"]["initContainerStatuses"][0]["state"] = json!({"running": {}});
    assert_eq!(drains(&world.step()), 1);
}

#[test]
fn a_hash_change_lets_a_running_upgrade_finish_then_runs_the_node_again() {
    let mut world = World::new(spec()).nodes(&["a"]);
    let first = world.settle();
    let old_hash = first.status.latest_hash.clone().unwrap();
    upgrade_runs(&mut world, "a");
    world.plan["spec"]["serviceAccountName"] = json!("other");
    let changed = world.step();
    let new_hash = changed.status.latest_hash.clone().unwrap();
    assert_ne!(old_hash, new_hash);
    assert!(
        deleted(&changed).is_empty(),
        "the running upgrade is not killed"
    );
    assert!(created(&changed).is_empty(), "one Job per node at a time");
    let e = entry(&changed, "a");
    assert_eq!(e.phase, "Upgrading");
    assert!(e.message.unwrap().contains("finishing the upgrade"));
    assert_eq!(
        changed.status.applying.as_deref(),
        Some(&["a".to_owned()][..])
    );
    // It succeeds: the node records the hash it ran, and runs again with the new one.
    world.finish_job("a", true, NOW);
    let finished = world.step();
    let labelled = changes(&finished)
        .find_map(|c| match c {
            Change::LabelNode { labels, .. } => Some(labels["plan.upgrade.cattle.io/p"].clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(labelled, old_hash);
    assert_eq!(created(&finished), ["a"]);
}

#[test]
fn a_hash_change_replaces_a_job_whose_upgrade_has_not_begun() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.prepared = false;
    world.plan["spec"]["prepare"] = json!({"image": "rancher/k3s-upgrade", "args": ["prepare"]});
    world.step();
    world.plan["spec"]["serviceAccountName"] = json!("other");
    let changed = world.step();
    assert_eq!(deleted(&changed).len(), 1, "prepare only waited: replaced");
    assert_eq!(created(&changed), ["a"]);
}

#[test]
fn a_version_bump_lets_a_running_upgrade_finish_unlabelled() {
    let mut world = World::new(spec()).nodes(&["a", "b"]);
    let first = world.settle();
    let node = first.status.applying.clone().unwrap()[0].clone();
    upgrade_runs(&mut world, &node);
    world.plan["spec"]["version"] = json!("v1.31.0+k3s1");
    let bumped = world.step();
    assert!(deleted(&bumped).is_empty());
    assert!(
        created(&bumped).is_empty(),
        "the running node keeps the only slot"
    );
    world.finish_job(&node, true, NOW);
    let finished = world.step();
    assert_eq!(
        deleted(&finished).len(),
        1,
        "dropped, as the Go controller does"
    );
    assert!(!changes(&finished).any(|c| matches!(c, Change::LabelNode { .. })));
    assert_eq!(created(&finished), [node]);
}

#[test]
fn only_unfinished_unsuspended_jobs_keep_their_drains() {
    let job = |name: &str, extra: Value| -> Job {
        let mut value = json!({"metadata": {"name": name, "uid": name}, "spec": {"template": {}}});
        for (k, v) in extra.as_object().unwrap() {
            value[k]
                .as_object_mut()
                .unwrap()
                .extend(v.as_object().unwrap().clone());
        }
        serde_json::from_value(value).unwrap()
    };
    let running = job("running", json!({}));
    let suspended = job("suspended", json!({"spec": {"suspend": true}}));
    let deleting = job(
        "deleting",
        json!({"metadata": {"deletionTimestamp": "2026-11-23T10:00:00Z"}}),
    );
    let mut failed = job("failed", json!({}));
    failed.status = serde_json::from_value(
        json!({"conditions": [{"type": "Failed", "status": "True", "lastTransitionTime": NOW}]}),
    )
    .unwrap();
    let mut complete = job("complete", json!({}));
    complete.status = serde_json::from_value(
        json!({"conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": NOW}]}),
    )
    .unwrap();
    assert_eq!(
        drainable_jobs(&[&running, &suspended, &deleting, &failed, &complete]),
        ["running"]
    );
}

#[test]
fn finished_jobs_complete_their_node_while_the_plan_is_invalid() {
    let mut plan = spec();
    plan["secrets"] = json!([{"name": "s", "path": "/x"}]);
    let mut world = World::new(plan).nodes(&["a", "b"]);
    world
        .secrets
        .push(json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}}));
    let first = world.settle();
    let node = first.status.applying.clone().unwrap()[0].clone();
    let hash = first.status.latest_hash.clone().unwrap();
    world.secrets.clear();
    let invalid = world.step();
    assert_eq!(condition(&invalid, VALIDATED).0, "False");
    assert_eq!(condition(&invalid, COMPLETE).1, "NotReady");
    assert!(
        deleted(&invalid).is_empty(),
        "the running Job is followed, not dropped"
    );
    assert_eq!(invalid.status.applying, first.status.applying);
    world.finish_job(&node, true, NOW);
    let done = world.step();
    assert!(
        done.before
            .contains(&Change::Release { node: node.clone() }),
        "uncordoned"
    );
    let label = changes(&done)
        .find_map(|c| match c {
            Change::LabelNode { labels, .. } => Some(labels["plan.upgrade.cattle.io/p"].clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(label, hash, "labelled with the hash it ran");
    assert!(
        created(&done).is_empty(),
        "no new node starts while invalid"
    );
    assert_eq!(condition(&done, COMPLETE).1, "NotReady");
}

#[test]
fn failures_and_expiry_are_handled_while_the_plan_is_invalid() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    world.plan["spec"]["window"] =
        json!({"days": ["mo"], "startTime": "25:00", "endTime": "03:00"});
    world.finish_job("a", false, NOW);
    let failed = world.step();
    assert_eq!(entry(&failed, "a").phase, "Failed");
    world.now = "2026-11-23T10:15:01Z".into();
    assert_eq!(deleted(&world.step()).len(), 1, "expired as usual");
}

#[test]
fn job_settings_follow_the_plan_without_replacing_the_job() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    world.plan["spec"]["jobActiveDeadlineSecs"] = json!(1800);
    let edited = world.step();
    assert!(deleted(&edited).is_empty() && created(&edited).is_empty());
    assert!(
        edited.before.iter().any(|c| matches!(c, Change::UpdateJob { fields, .. }
            if fields.active_deadline_seconds == Some(Some(1800)) && fields.backoff_limit.is_none())),
        "{:?}",
        edited.before
    );
    world.plan["spec"]["jobActiveDeadlineSecs"] = json!(0);
    let unlimited = world.step();
    assert!(
        unlimited
            .before
            .iter()
            .any(|c| matches!(c, Change::UpdateJob { fields, .. }
        if fields.active_deadline_seconds == Some(None)))
    );
    let settled = world.step();
    assert!(
        !settled
            .before
            .iter()
            .any(|c| matches!(c, Change::UpdateJob { .. })),
        "once in line, nothing more"
    );
}

#[test]
fn a_longer_post_complete_delay_raises_the_ttl_of_a_job_waiting_for_it() {
    let mut plan = spec();
    plan["postCompleteDelay"] = json!("1m");
    let mut world = World::new(plan).nodes(&["a", "b"]);
    let first = world.settle();
    let node = first.status.applying.clone().unwrap()[0].clone();
    world.finish_job(&node, true, NOW);
    world.step();
    // The delay grows past the 900s TTL the Job was created with.
    world.plan["spec"]["postCompleteDelay"] = json!("30m");
    let raised = world.step();
    assert!(
        raised
            .before
            .iter()
            .any(|c| matches!(c, Change::UpdateJob { fields, .. }
            // 30m, the 10m a K3s node may take to report its version (convergence), and 60s.
            if fields.ttl_seconds_after_finished == Some(2460))),
        "{:?}",
        raised.before
    );
    // Past the old TTL, the Job waiting for its delay is still there.
    world.now = "2026-11-23T10:20:00Z".into();
    let later = world.step();
    assert!(deleted(&later).is_empty());
    assert_eq!(entry(&later, &node).phase, "WaitingDelay");
    world.now = "2026-11-23T10:30:00Z".into();
    let labelled = world.step();
    assert!(changes(&labelled).any(|c| matches!(c, Change::LabelNode { .. })));
    assert_eq!(
        created(&labelled).len(),
        1,
        "the other node, not this one again"
    );
}

#[test]
fn removing_the_node_selector_stops_jobs_and_releases_nodes() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    assert_eq!(world.node_mut("a")["spec"]["unschedulable"], true);
    world.plan["spec"]
        .as_object_mut()
        .unwrap()
        .remove("nodeSelector");
    let gone = world.step();
    assert_eq!(deleted(&gone).len(), 1);
    assert!(gone.before.contains(&Change::Release { node: "a".into() }));
    assert!(gone.status.applying.is_none());
    assert_eq!(condition(&gone, COMPLETE).0, "True");
}

#[test]
fn a_go_era_job_that_succeeds_returns_the_cordon_its_kubectl_made() {
    let mut world = World::new(spec()).nodes(&["a", "b"]);
    let first = world.settle();
    let node = first.status.applying.clone().unwrap()[0].clone();
    make_go_era(&mut world, &node);
    upgrade_runs(&mut world, &node);
    // The Go controller's kubectl cordoned the node; no claim of ours records it.
    let n = world.node_mut(&node);
    n["metadata"]["annotations"] = json!({});
    n["spec"]["unschedulable"] = json!(true);
    world.finish_job(&node, true, NOW);
    let done = world.step();
    let adopt = done
        .before
        .iter()
        .position(|c| *c == Change::AdoptCordon { node: node.clone() })
        .expect("the cordon is adopted");
    let release = done
        .before
        .iter()
        .position(|c| *c == Change::Release { node: node.clone() })
        .expect("and returned");
    assert!(adopt < release);
}

#[test]
fn a_node_an_administrator_cordoned_stays_cordoned() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.node_mut("a")["spec"]["unschedulable"] = json!(true);
    let first = world.step();
    assert_eq!(created(&first), ["a"]);
    // Our own Job: the drain would not claim a node cordoned by someone else.
    world.finish_job("a", true, NOW);
    let done = world.step();
    assert!(
        !changes(&done).any(|c| matches!(c, Change::AdoptCordon { .. } | Change::Release { .. }))
    );
}

#[test]
fn a_go_era_job_whose_upgrade_has_not_begun_is_replaced() {
    let mut plan = spec();
    plan["drain"] = json!({});
    let mut world = World::new(plan).nodes(&["a"]);
    world.prepared = false;
    world.plan["spec"]["prepare"] = json!({"image": "rancher/k3s-upgrade"});
    world.step();
    make_go_era(&mut world, "a");
    world.jobs[0]["spec"]["parallelism"] = json!(0);
    // Its kubectl already cordoned the node.
    world.node_mut("a")["spec"]["unschedulable"] = json!(true);
    let replaced = world.step();
    assert_eq!(deleted(&replaced).len(), 1);
    assert!(
        replaced
            .before
            .contains(&Change::AdoptCordon { node: "a".into() })
    );
    let e = entry(&replaced, "a");
    assert!(e.message.unwrap().contains("Go controller"));
    // Ours runs next and, once it succeeds, returns the node.
    let recreated = world.settle();
    assert_eq!(
        recreated.status.applying.as_deref(),
        Some(&["a".to_owned()][..])
    );
    world.finish_job("a", true, NOW);
    assert!(
        world
            .step()
            .before
            .contains(&Change::Release { node: "a".into() })
    );
}

#[test]
fn a_go_era_job_whose_upgrade_began_is_adopted_and_an_edit_replaces_it() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    make_go_era(&mut world, "a");
    upgrade_runs(&mut world, "a");
    let adopted = world.step();
    let name = world.jobs[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        adopted
            .before
            .iter()
            .any(|c| matches!(c, Change::AnnotateJob { name: n, annotations } if *n == name && annotations.contains_key(ANNOTATION_ADOPTED)))
    );
    assert!(deleted(&adopted).is_empty());
    assert!(world.step().before.is_empty(), "adopted once");
    world.plan["spec"]["upgrade"]["args"] = json!(["--changed"]);
    assert_eq!(deleted(&world.step()), [name]);
}

#[test]
fn a_failed_go_era_job_is_retried_by_one_edit_also_after_it_expired() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    make_go_era(&mut world, "a");
    world.finish_job("a", false, NOW);
    let failed = world.step();
    assert_eq!(entry(&failed, "a").phase, "Failed");
    assert!(
        failed
            .before
            .iter()
            .any(|c| matches!(c, Change::AnnotateJob { annotations, .. } if annotations.contains_key(ANNOTATION_ADOPTED)))
    );
    world.now = "2026-11-23T10:15:01Z".into();
    assert_eq!(deleted(&world.step()).len(), 1, "expired");
    let still = world.step();
    assert!(created(&still).is_empty(), "still failed");
    world.plan["spec"]["upgrade"]["args"] = json!(["--fixed"]);
    assert_eq!(created(&world.step()), ["a"]);
}

#[test]
fn a_failed_go_era_job_is_replaced_by_an_edit_while_it_exists() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    make_go_era(&mut world, "a");
    world.finish_job("a", false, NOW);
    world.step();
    world.plan["spec"]["upgrade"]["args"] = json!(["--fixed"]);
    assert_eq!(deleted(&world.step()).len(), 1);
}

#[test]
fn applying_written_by_the_go_controller_names_hostnames() {
    let mut world = World::new(spec()).nodes(&["ip-10-0-0-1.ec2.internal", "b"]);
    world.node_mut("ip-10-0-0-1.ec2.internal")["metadata"]["labels"]["kubernetes.io/hostname"] =
        json!("ip-10-0-0-1");
    let first = world.settle();
    let node = first.status.applying.clone().unwrap()[0].clone();
    let hostname = if node == "b" { "b" } else { "ip-10-0-0-1" };
    // The Go controller wrote the hostname; its Job runs.
    world.plan["status"]["applying"] = json!([hostname]);
    make_go_era(&mut world, &node);
    upgrade_runs(&mut world, &node);
    let read = world.step();
    assert!(deleted(&read).is_empty(), "{:?}", read.before);
    assert!(created(&read).is_empty());
    assert_eq!(read.status.applying.as_deref(), Some(&[node][..]));
}

#[test]
fn a_plan_without_concurrency_starts_nothing_and_says_so() {
    let mut plan = spec();
    plan.as_object_mut().unwrap().remove("concurrency");
    let decision = World::new(plan).nodes(&["a"]).decide();
    let (status, _, message) = condition(&decision, VALIDATED);
    assert_eq!(status, "False");
    assert!(message.contains("spec.concurrency: not set"), "{message}");
    assert!(created(&decision).is_empty());
}

#[test]
fn resolution_and_hash_do_not_wait_for_validation() {
    let mut plan = spec();
    plan["upgrade"]["image"] = json!("");
    plan["version"] = json!("v1.2.3+test");
    let decision = World::new(plan).nodes(&["a"]).decide();
    assert_eq!(condition(&decision, VALIDATED).0, "False");
    assert_eq!(
        condition(&decision, LATEST_RESOLVED),
        ("True".into(), "Version".into(), "".into())
    );
    assert_eq!(
        decision.status.latest_version.as_deref(),
        Some("v1.2.3-test")
    );
    assert_eq!(
        decision.status.latest_hash.as_ref().map(String::len),
        Some(56)
    );
    assert!(created(&decision).is_empty());
    assert_eq!(condition(&decision, COMPLETE).1, "NotReady");
}

#[test]
fn one_shot_events_carry_keys() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    world.finish_job("a", false, NOW);
    let failed = world.step();
    assert!(
        failed
            .notes
            .iter()
            .filter(|n| n.reason == "JobFailed")
            .all(|n| n.once.is_some())
    );
}

#[test]
fn a_replaced_job_that_fails_again_is_told_again() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    world.finish_job("a", false, NOW);
    let first = world.step();
    let failed = |d: &Decision| {
        d.notes
            .iter()
            .filter(|n| n.reason == "JobFailed" && n.target == Target::Plan)
            .map(|n| n.once.clone().unwrap())
            .collect::<Vec<_>>()
    };
    let first_keys = failed(&first);
    assert_eq!(first_keys.len(), 1);
    // An edit replaces the Job under the same name; it fails too.
    world.plan["spec"]["upgrade"]["args"] = json!(["--still-broken"]);
    world.settle();
    world.finish_job("a", false, NOW);
    let second_keys = failed(&world.step());
    assert_eq!(second_keys.len(), 1);
    assert_ne!(
        first_keys, second_keys,
        "a new Job's failure has a key of its own"
    );
}

#[test]
fn an_invalid_plan_starts_no_drain_but_lets_one_under_way_go_on() {
    let mut plan = spec();
    plan["drain"] = json!({});
    plan["secrets"] = json!([{"name": "s", "path": "/x"}]);
    let secret = json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}});
    let mut world = World::new(plan).nodes(&["a", "b"]);
    world.secrets.push(secret);
    world.drains_finish = false;
    world.step();
    assert_eq!(drains(&world.step()), 1, "the drain starts");
    world.secrets.clear();
    let invalid = world.step();
    assert_eq!(drains(&invalid), 1, "the drain under way goes on");
    assert_eq!(
        entry(&invalid, &invalid.status.applying.clone().unwrap()[0])
            .message
            .as_deref(),
        Some("waiting for pod web/x to terminate")
    );
    // Without a drain under way (e.g. after a restart), none starts while the Plan is invalid.
    world.drains.clear();
    let waiting = world.step();
    assert_eq!(drains(&waiting), 0);
    let node = waiting.status.applying.clone().unwrap()[0].clone();
    assert!(
        entry(&waiting, &node)
            .message
            .unwrap()
            .contains("before draining")
    );
}

#[test]
fn a_wave_of_completions_is_one_plan_event_and_a_record_on_each_node() {
    let mut plan = spec();
    plan["concurrency"] = json!(3);
    let mut world = World::new(plan).nodes(&["a", "b", "c", "d"]);
    let first = world.settle();
    let wave = first.status.applying.clone().unwrap();
    assert_eq!(wave.len(), 3);
    for node in &wave {
        world.finish_job(node, true, NOW);
    }
    let second = world.step();
    let completions: Vec<&Note> = second
        .notes
        .iter()
        .filter(|n| n.reason == Reason::JobComplete)
        .collect();
    let on_plan: Vec<&&Note> = completions
        .iter()
        .filter(|n| n.target == Target::Plan)
        .collect();
    assert_eq!(on_plan.len(), 1, "{completions:?}");
    assert_eq!(
        on_plan[0].message,
        format!("Jobs completed on Nodes {}", wave.join(","))
    );
    for node in &wave {
        let recorded = second.before.iter().any(|c| {
            matches!(c, Change::LabelNode { node: n, annotations, .. }
                if n == node && annotations.contains_key("upgraded.upgrade.cattle.io/p"))
        });
        assert!(recorded, "no record on {node}");
    }
    assert_eq!(
        completions.len(),
        1,
        "no event on the nodes: {completions:?}"
    );

    // A single completion keeps the Go controller's message.
    let rest = ["a", "b", "c", "d"]
        .into_iter()
        .find(|n| !wave.iter().any(|w| w == n))
        .unwrap();
    world.settle();
    world.finish_job(rest, true, NOW);
    let last = world.step();
    let on_plan: Vec<&Note> = last
        .notes
        .iter()
        .filter(|n| n.reason == Reason::JobComplete && n.target == Target::Plan)
        .collect();
    assert_eq!(on_plan.len(), 1);
    assert_eq!(on_plan[0].message, format!("Job completed on Node {rest}"));
}

#[test]
fn a_node_done_with_a_new_hash_is_not_labelled_back_by_its_earlier_job() {
    let mut plan = spec();
    plan["cordon"] = json!(false);
    plan["secrets"] = json!([{"name": "s", "path": "/x"}]);
    let mut world = World::new(plan).nodes(&["a"]);
    world
        .secrets
        .push(json!({"metadata": {"name": "s"}, "type": "Opaque", "data": {"k": "dg=="}}));
    world.settle();
    world.finish_job("a", true, NOW);
    let done = world.settle();
    let first = done.status.latest_hash.clone().unwrap();
    assert_eq!(
        world.node_label("a", "plan.upgrade.cattle.io/p").as_deref(),
        Some(first.as_str())
    );
    // The Secret changes: a new hash, a second Job on the node next to the finished first one.
    world.secrets[0]["data"]["k"] = json!("dzI=");
    let rerun = world.settle();
    let second = rerun.status.latest_hash.clone().unwrap();
    assert_ne!(first, second);
    let new_job = world
        .jobs
        .iter_mut()
        .find(|j| j["metadata"]["labels"]["plan.upgrade.cattle.io/p"] == second.as_str())
        .unwrap();
    new_job["status"] = json!({"succeeded": 1, "completionTime": NOW, "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": NOW}]});
    world.settle();
    assert_eq!(
        world.node_label("a", "plan.upgrade.cattle.io/p").as_deref(),
        Some(second.as_str())
    );
    for _ in 0..3 {
        let pass = world.step();
        assert!(
            !pass
                .before
                .iter()
                .any(|c| matches!(c, Change::LabelNode { .. })),
            "labelled again: {:?}",
            pass.before
        );
    }
    assert_eq!(
        world.node_label("a", "plan.upgrade.cattle.io/p").as_deref(),
        Some(second.as_str())
    );
}

/// The (status, reason) of a condition.
fn short(decision: &Decision, type_: &str) -> (String, String) {
    let (status, reason, _) = condition(decision, type_);
    (status, reason)
}

fn pair(status: &str, reason: &str) -> (String, String) {
    (status.to_owned(), reason.to_owned())
}

#[test]
fn a_paused_plan_starts_nobody_and_lets_running_jobs_finish() {
    let mut world = World::new(spec()).nodes(&["a", "b", "c"]);
    let first = world.settle();
    let running = first.status.applying.clone().unwrap();
    world.plan["spec"]["paused"] = json!(true);
    let paused = world.step();
    assert_eq!(paused.status.applying.as_ref(), Some(&running), "kept");
    let (status, reason, message) = condition(&paused, COMPLETE);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Paused"));
    assert!(
        message.starts_with("spec.paused is true: 2 node(s) wait")
            && message.ends_with(&format!("the upgrades running on {} finish", running[0])),
        "{message}"
    );
    assert_eq!(reasons(&paused), ["Paused"], "told once");
    assert!(world.step().notes.is_empty());
    // The running Job finishes; nobody new starts.
    world.finish_job(&running[0], true, NOW);
    let after = world.step();
    assert!(created(&after).is_empty());
    assert!(after.status.applying.is_none());
    assert_eq!(short(&after, COMPLETE), pair("False", "Paused"));
    assert_eq!(after.status.progress.as_deref(), Some("1/3"));
    assert_eq!(
        (after.tally.done, after.tally.waiting, after.tally.applying),
        (1, 2, 0)
    );
    // Paused is what the spec asks for: not reconciling, not stalled.
    assert_eq!(short(&after, RECONCILING).0, "False");
    assert_eq!(short(&after, STALLED).0, "False");
    // Resumed: the next node starts at once.
    world.plan["spec"]["paused"] = json!(false);
    let resumed = world.step();
    assert_eq!(created(&resumed).len(), 1);
    assert_eq!(short(&resumed, COMPLETE), pair("False", "SyncJob"));
    assert!(
        reasons(&resumed).contains(&"Resumed"),
        "{:?}",
        reasons(&resumed)
    );
    assert_eq!(short(&resumed, RECONCILING), pair("True", "SyncJob"));
}

#[test]
fn a_paused_plan_with_nothing_left_is_complete() {
    let mut s = spec();
    s["paused"] = json!(true);
    let mut world = World::new(s).nodes(&["a"]);
    let hash = world.step().status.latest_hash.unwrap();
    world.node_mut("a")["metadata"]["labels"]["plan.upgrade.cattle.io/p"] = json!(hash);
    let done = world.step();
    assert_eq!(short(&done, COMPLETE), pair("True", "Complete"));
    assert_eq!(done.status.progress.as_deref(), Some("1/1"));
}

#[test]
fn nodes_labelled_pause_are_skipped_until_unlabelled() {
    let mut world = World::new(spec()).nodes(&["a", "b"]);
    for node in ["a", "b"] {
        world.node_mut(node)["metadata"]["labels"]["upgrade.cattle.io/pause"] = json!("true");
    }
    let held = world.step();
    assert!(created(&held).is_empty());
    let (status, reason, message) = condition(&held, COMPLETE);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Paused"));
    assert!(message.contains("every node left (2) is labelled upgrade.cattle.io/pause=true"));
    assert_eq!(held.tally.held, 2);
    // One node unlabelled: it starts, the other still waits.
    world.node_mut("b")["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("upgrade.cattle.io/pause");
    let started = world.step();
    assert_eq!(created(&started), ["b"]);
    assert_eq!(short(&started, COMPLETE), pair("False", "SyncJob"));
    world.settle();
    world.finish_job("b", true, NOW);
    let rest = world.step();
    assert_eq!(short(&rest, COMPLETE), pair("False", "Paused"));
    assert_eq!(rest.status.progress.as_deref(), Some("1/2"));
}

#[test]
fn a_percentage_counts_the_eligible_nodes_done_or_not() {
    let mut s = spec();
    s["concurrency"] = json!("50%");
    let names = ["a", "b", "c", "d", "e"];
    let mut world = World::new(s).nodes(&names);
    // Opted out: not counted.
    world.node_mut("e")["metadata"]["labels"]["plan.upgrade.cattle.io/p"] = json!("disabled");
    let first = world.settle();
    assert_eq!(first.status.applying.as_ref().unwrap().len(), 2, "50% of 4");
    for node in first.status.applying.clone().unwrap() {
        world.finish_job(&node, true, NOW);
    }
    // Two done, two left: still 50% of the four, so both start.
    let second = world.step();
    assert_eq!(created(&second).len(), 2);
    assert_eq!(second.status.progress.as_deref(), Some("2/4"));
    // A malformed percentage starts nothing and says why.
    world.plan["spec"]["concurrency"] = json!("half");
    let (status, _, message) = condition(&world.step(), VALIDATED);
    assert_eq!(status, "False");
    assert!(
        message.contains("spec.concurrency: \"half\" is neither"),
        "{message}"
    );
}

#[test]
fn conditions_carry_the_generation_they_describe() {
    let mut world = World::new(spec()).nodes(&["a"]);
    let first = world.step();
    assert_eq!(first.status.observed_generation, Some(1));
    assert!(
        first
            .status
            .conditions
            .iter()
            .flatten()
            .all(|c| c.observed_generation == Some(1))
    );
    assert_eq!(short(&first, RECONCILING), pair("True", "SyncJob"));
    assert_eq!(short(&first, STALLED).0, "False");
    world.settle();
    world.finish_job("a", true, NOW);
    let done = world.step();
    assert_eq!(short(&done, COMPLETE).0, "True");
    assert_eq!(short(&done, RECONCILING).0, "False");
    // An edit: the next pass speaks of generation 2.
    world.plan["metadata"]["generation"] = json!(2);
    world.plan["spec"]["version"] = json!("v1.31.0+k3s1");
    let edited = world.step();
    assert_eq!(edited.status.observed_generation, Some(2));
    assert_eq!(short(&edited, COMPLETE).0, "False");
    assert_eq!(short(&edited, RECONCILING).0, "True");
    assert_eq!(edited.status.progress.as_deref(), Some("0/1"));
}

#[test]
fn failures_and_invalid_specs_are_stalled() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    world.finish_job("a", false, NOW);
    let failed = world.step();
    let failed = if short(&failed, COMPLETE).1 == "JobFailed" {
        failed
    } else {
        world.step()
    };
    assert_eq!(short(&failed, STALLED), pair("True", "JobFailed"));
    assert_eq!(short(&failed, RECONCILING).0, "False");
    assert_eq!(failed.tally.failed, 1);
    world.plan["spec"]["concurrency"] = json!(0);
    let invalid = world.step();
    assert_eq!(short(&invalid, STALLED), pair("True", "ValidateFailed"));
}

fn at(minutes: i64) -> String {
    let now: Timestamp = NOW.parse().unwrap();
    stamp(now + jiff::SignedDuration::from_secs(minutes * 60))
}

#[test]
fn failed_nodes_are_retried_with_backoff_up_to_the_limit() {
    let mut s = spec();
    s["retry"] = json!({"limit": 2, "backoff": "1m"});
    let mut world = World::new(s).nodes(&["a"]);
    world.settle();
    world.finish_job("a", false, NOW);
    let failed = world.step();
    let (status, reason, message) = condition(&failed, COMPLETE);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "Retrying"));
    assert!(
        message.ends_with(&format!("; retry 1 of 2 at {}", at(1))),
        "{message}"
    );
    assert_eq!(entry(&failed, "a").phase, "Failed");
    assert_eq!(failed.requeue, Duration::from_secs(60));
    assert!(
        reasons(&failed).contains(&"JobFailed"),
        "the failure is told"
    );
    assert_eq!(
        short(&failed, STALLED).0,
        "False",
        "not stalled while a retry is due"
    );
    // Not yet due: nothing happens.
    world.now = at(0);
    assert!(world.step().before.is_empty());
    // Due: the Job goes, with a Retrying event, and the next pass creates it anew.
    world.now = at(1);
    let retry = world.step();
    assert_eq!(deleted(&retry).len(), 1);
    assert!(
        reasons(&retry).contains(&"Retrying"),
        "{:?}",
        reasons(&retry)
    );
    let marker = entry(&retry, "a");
    assert_eq!(
        (marker.phase.as_str(), marker.retries),
        ("Retrying", Some(1))
    );
    let again = world.step();
    assert_eq!(created(&again), ["a"]);
    assert_eq!(entry(&again, "a").retries, Some(1));
    // It fails again: the next retry waits twice as long.
    world.settle();
    world.finish_job("a", false, &at(1));
    let second = world.step();
    let (_, reason, message) = condition(&second, COMPLETE);
    assert_eq!(reason, "Retrying");
    assert!(
        message.ends_with(&format!("retry 2 of 2 at {}", at(3))),
        "{message}"
    );
    world.now = at(3);
    world.step();
    world.settle();
    assert_eq!(entry(&world.decide(), "a").retries, Some(2));
    // The third failure is final: the Plan reports it, and nothing is retried.
    world.finish_job("a", false, &at(3));
    let last = world.step();
    assert_eq!(short(&last, COMPLETE), pair("False", "JobFailed"));
    assert_eq!(short(&last, STALLED), pair("True", "JobFailed"));
    world.now = at(600);
    world.step(); // the failed Job expires
    let later = world.step();
    assert!(later.before.is_empty() && later.after.is_empty());
    assert_eq!(entry(&later, "a").phase, "Failed");
    assert_eq!(short(&later, COMPLETE).1, "JobFailed");
}

#[test]
fn the_retry_annotation_retries_failed_nodes_now_and_is_consumed() {
    let mut s = spec();
    s["concurrency"] = json!(2);
    let mut world = World::new(s).nodes(&["a", "b", "c"]);
    let first = world.settle();
    let running = first.status.applying.clone().unwrap();
    for node in &running {
        world.finish_job(node, false, NOW);
    }
    world.step();
    assert_eq!(short(&world.step(), COMPLETE).1, "JobFailed");
    // One node by name: only it is retried.
    world.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": running[0]});
    let one = world.step();
    assert_eq!(deleted(&one).len(), 1);
    assert!(
        one.after
            .iter()
            .any(|c| matches!(c, Change::ClearAnnotation { value, .. } if *value == running[0]))
    );
    assert!(
        world.plan["metadata"]["annotations"]
            .get("upgrade.cattle.io/retry")
            .is_none()
    );
    assert_eq!(entry(&one, &running[0]).phase, "Retrying");
    assert_eq!(entry(&one, &running[1]).phase, "Failed");
    assert_eq!(created(&world.step()), [running[0].clone()]);
    // "all": every failed node; a name that has not failed is reported.
    world.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": "all"});
    let all = world.step();
    assert_eq!(deleted(&all).len(), 1, "the other failed node");
    world.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": "c, nosuch"});
    let unmatched = world.step();
    let warning = unmatched
        .notes
        .iter()
        .find(|n| n.reason == Reason::Retrying)
        .unwrap();
    assert!(warning.warning);
    assert!(
        warning
            .message
            .contains("no failed node to retry among c,nosuch"),
        "{}",
        warning.message
    );
    assert!(
        unmatched
            .after
            .iter()
            .any(|c| matches!(c, Change::ClearAnnotation { .. }))
    );
}

#[test]
fn a_failed_node_whose_job_expired_is_retried_by_creating_the_job() {
    let mut s = spec();
    s["retry"] = json!({"limit": 1, "backoff": "20m"});
    let mut world = World::new(s).nodes(&["a"]);
    world.settle();
    world.finish_job("a", false, NOW);
    world.step();
    // The Job expires (TTL 15 minutes) before the retry is due.
    world.now = at(16);
    let expired = world.step();
    assert_eq!(deleted(&expired).len(), 1);
    world.apply(&expired);
    let waiting = world.step();
    assert!(created(&waiting).is_empty());
    assert_eq!(short(&waiting, COMPLETE).1, "Retrying");
    world.now = at(20);
    let retried = world.step();
    assert_eq!(created(&retried), ["a"]);
    assert_eq!(entry(&retried, "a").retries, Some(1));
}

#[test]
fn backoff_doubles_up_to_an_hour() {
    let minute = Duration::from_secs(60);
    let secs = |d: jiff::SignedDuration| d.as_secs();
    assert_eq!(secs(backoff_after(minute, 0)), 60);
    assert_eq!(secs(backoff_after(minute, 1)), 120);
    assert_eq!(secs(backoff_after(minute, 5)), 1920);
    assert_eq!(secs(backoff_after(minute, 6)), 3600, "capped");
    assert_eq!(secs(backoff_after(minute, 99)), 3600);
    let day = Duration::from_secs(86400);
    assert_eq!(
        secs(backoff_after(day, 3)),
        86400,
        "a longer backoff is its own cap"
    );
    assert_eq!(secs(backoff_after(Duration::ZERO, 4)), 0);
    assert_eq!(retry_request_nodes("all"), None);
    assert_eq!(retry_request_nodes(" * "), None);
    assert_eq!(
        retry_request_nodes("a, b c,,"),
        Some(["a", "b", "c"].map(str::to_owned).into())
    );
}

#[test]
fn a_skipped_drain_lets_the_rollout_go_on_without_the_node() {
    let mut s = spec();
    s["drain"] = json!({"timeout": "1m", "onTimeout": "Skip"});
    let mut world = World::new(s).nodes(&["a", "b"]);
    world.drains_finish = false;
    let first = world.settle();
    let node = first.status.applying.clone().unwrap()[0].clone();
    let other = if node == "a" { "b" } else { "a" };
    assert_eq!(entry(&first, &node).phase, "Draining");
    let uid = world.jobs[0]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    world.drains.insert(
        uid,
        DrainProgress::Skipped("drain of node timed out after 1m; skipping the node".into()),
    );
    let skipped = world.step();
    assert_eq!(deleted(&skipped).len(), 1, "its Job goes");
    assert!(
        skipped
            .before
            .iter()
            .any(|c| matches!(c, Change::Release { node: n } if *n == node)),
        "the node is returned"
    );
    assert!(skipped.status.applying.is_none(), "it leaves applying");
    assert_eq!(entry(&skipped, &node).phase, "Skipped");
    // The next node starts; the skipped one stays listed and is not started again.
    let next = world.step();
    assert_eq!(created(&next), [other.to_owned()]);
    assert_eq!(entry(&next, &node).phase, "Skipped");
    world.drains_finish = true;
    world.settle();
    world.finish_job(other, true, NOW);
    let rest = world.step();
    let (status, reason, message) = condition(&rest, COMPLETE);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DrainSkipped")
    );
    assert!(
        message.contains(&format!("nodes {node} timed out")),
        "{message}"
    );
    assert_eq!(short(&rest, STALLED), pair("True", "DrainSkipped"));
    assert_eq!(
        (rest.tally.skipped, rest.tally.done, rest.tally.waiting),
        (1, 1, 0)
    );
    assert!(created(&world.step()).is_empty());
    // Retried by request: it runs again.
    world.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": "all"});
    let retried = world.step();
    assert_eq!(created(&retried), std::slice::from_ref(&node));
    assert!(reasons(&retried).contains(&"Retrying"));
    // A new hash forgets the skip too (checked by the entry's Job name).
    world.plan["spec"]["version"] = json!("v1.31.0+k3s1");
    let bumped = world.step();
    assert!(
        bumped
            .status
            .nodes
            .iter()
            .flatten()
            .all(|e| e.phase != "Skipped")
    );
}

fn set_ready(world: &mut World, node: &str, ready: bool, since: &str) {
    world.node_mut(node)["status"]["conditions"] = json!([
        {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": since}
    ]);
}

#[test]
fn a_node_must_be_ready_for_a_while_before_the_next_starts() {
    let mut s = spec();
    s["healthGates"] = json!({"nodeReadyFor": "2m"});
    let mut world = World::new(s).nodes(&["a", "b"]);
    for n in ["a", "b"] {
        set_ready(&mut world, n, true, "2026-11-20T00:00:00Z");
    }
    let first = world.settle();
    let node = first.status.applying.clone().unwrap()[0].clone();
    let other = if node == "a" { "b" } else { "a" };
    world.finish_job(&node, true, NOW);
    let done = world.step();
    let waiting = entry(&done, &node);
    assert_eq!(waiting.phase, "WaitingHealthy");
    assert!(
        waiting
            .message
            .as_deref()
            .unwrap()
            .contains(&format!("waiting until {}", at(2))),
        "{waiting:?}"
    );
    assert!(created(&done).is_empty(), "the slot is held");
    assert!(reasons(&done).contains(&"WaitingForHealth"));
    assert_eq!(done.requeue, Duration::from_secs(120));
    assert!(
        world
            .node_label(&node, "plan.upgrade.cattle.io/p")
            .is_none()
    );
    // The node reboots: NotReady, then Ready again; the count starts over from then.
    world.now = at(1);
    set_ready(&mut world, &node, false, &at(1));
    let rebooting = world.step();
    assert!(
        entry(&rebooting, &node)
            .message
            .unwrap()
            .ends_with("it is not Ready")
    );
    set_ready(&mut world, &node, true, &at(1));
    world.now = at(2);
    let soon = world.step();
    assert!(
        entry(&soon, &node)
            .message
            .unwrap()
            .contains(&format!("waiting until {}", at(3)))
    );
    world.now = at(3);
    let labelled = world.step();
    assert!(
        world
            .node_label(&node, "plan.upgrade.cattle.io/p")
            .is_some()
    );
    assert_eq!(
        created(&labelled),
        [other.to_owned()],
        "the next node starts at once"
    );
}

#[test]
fn a_node_waiting_to_be_healthy_is_never_rerun_when_its_job_expires() {
    let mut s = spec();
    s["healthGates"] = json!({"nodeReadyFor": "1m"});
    let mut world = World::new(s).nodes(&["a"]);
    world.settle();
    set_ready(&mut world, "a", false, NOW);
    world.finish_job("a", true, NOW);
    world.step();
    // The Job is gone (the TTL controller), the node still NotReady.
    world.jobs.clear();
    world.now = at(30);
    let gone = world.step();
    assert!(created(&gone).is_empty(), "not run again");
    assert_eq!(entry(&gone, "a").phase, "WaitingHealthy");
    set_ready(&mut world, "a", true, &at(30));
    world.now = at(31);
    world.step();
    assert!(world.node_label("a", "plan.upgrade.cattle.io/p").is_some());
}

#[test]
fn closed_gates_hold_new_starts_and_never_fail_the_plan() {
    let mut s = spec();
    s["concurrency"] = json!(2);
    s["healthGates"] =
        json!({"allNodesReady": true, "prometheus": {"url": "http://p:9090", "query": "up == 0"}});
    let mut world = World::new(s).nodes(&["a", "b", "c"]);
    for n in ["a", "b", "c"] {
        set_ready(&mut world, n, true, "2026-11-20T00:00:00Z");
    }
    set_ready(&mut world, "c", false, NOW);
    world.query = Some(QueryOutcome::Firing("1 series: up{job=\"db\"}".into()));
    let held = world.step();
    assert!(created(&held).is_empty());
    let (status, reason, message) = condition(&held, COMPLETE);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "WaitingForHealth")
    );
    assert!(
        message.contains("node c not Ready (healthGates.allNodesReady)"),
        "{message}"
    );
    assert!(
        message.contains("the Prometheus query returns 1 series"),
        "{message}"
    );
    assert!(reasons(&held).contains(&"WaitingForHealth"));
    assert_eq!(held.requeue, GATE_RETRY);
    assert_eq!(short(&held, RECONCILING), pair("True", "WaitingForHealth"));
    assert_eq!(short(&held, STALLED).0, "False");
    assert!(world.step().notes.is_empty(), "told once");
    // A failing query holds too.
    set_ready(&mut world, "c", true, NOW);
    world.query = Some(QueryOutcome::Failed("connection refused".into()));
    let failing = world.step();
    assert!(
        condition(&failing, COMPLETE)
            .2
            .contains("query failed: connection refused")
    );
    // Open: nodes start.
    world.query = Some(QueryOutcome::Clear);
    let open = world.step();
    assert_eq!(created(&open).len(), 2);
    assert_eq!(short(&open, COMPLETE), pair("False", "SyncJob"));
}

// Safety in everyday operation: what may end a begun upgrade, what a pause holds, takeovers.

/// The node's Job and its pod, for a test that edits them.
fn job_of<'w>(world: &'w mut World, node: &str) -> &'w mut Value {
    world
        .jobs
        .iter_mut()
        .find(|j| j["metadata"]["labels"]["upgrade.cattle.io/node"] == node)
        .unwrap()
}

fn annotated(decision: &Decision) -> Vec<&BTreeMap<String, String>> {
    decision
        .before
        .iter()
        .filter_map(|c| match c {
            Change::AnnotateJob { annotations, .. } => Some(annotations),
            _ => None,
        })
        .collect()
}

#[test]
fn a_drain_edit_never_ends_a_begun_upgrade_but_a_change_of_what_it_runs_does() {
    let mut s = spec();
    s["drain"] = json!({"timeout": "5m"});
    let mut world = World::new(s).nodes(&["a"]);
    world.settle();
    upgrade_runs(&mut world, "a");
    for edit in [
        json!({"timeout": "30m", "onTimeout": "Skip"}),
        json!({"timeout": 600_000_000_000i64, "force": true, "gracePeriod": 5}),
    ] {
        world.plan["spec"]["drain"] = edit;
        let edited = world.step();
        assert!(
            deleted(&edited).is_empty(),
            "a drain edit killed the upgrade"
        );
        // The Job now stands for the edited Plan, so a later failure is not retried by it.
        assert_eq!(annotated(&edited).len(), 1);
        assert!(world.step().before.is_empty(), "recorded once");
    }
    // Tolerations and the cordon/drain choice are not what the upgrade runs either.
    world.plan["spec"]["tolerations"] =
        json!([{"key": "CriticalAddonsOnly", "operator": "Exists"}]);
    world.plan["spec"]["drain"] = Value::Null;
    assert!(deleted(&world.step()).is_empty());
    // A change of what it runs replaces it.
    world.plan["spec"]["upgrade"]["envs"] =
        json!([{"name": "INSTALL_K3S_SKIP_START", "value": "true"}]);
    assert_eq!(deleted(&world.step()).len(), 1);
}

/// Found by the soak (seed 1): a pod that succeeded while its Job's status had not caught up
/// yet made the Job look as if nothing had begun, so a Plan label edit (copied to the pod
/// template) replaced it and the node ran the same upgrade again.
#[test]
fn a_job_whose_pod_succeeded_before_its_status_caught_up_is_never_replaced() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    upgrade_runs(&mut world, "a");
    world.pod_mut("a")["status"]["phase"] = json!("Succeeded");
    world.plan["metadata"]["labels"] = json!({"team": "platform"});
    let edited = world.step();
    assert!(
        deleted(&edited).is_empty(),
        "the finished upgrade was undone"
    );
    assert_eq!(
        annotated(&edited).len(),
        1,
        "the edit is recorded on the Job"
    );
}

/// Found by the soak (seed 6): a Job of an earlier hash whose first pod failed in its upgrade
/// and whose next pod waited in its gate was kept to "finish", but nothing opens the gate of a
/// Job the Plan no longer asks for, so the node stayed cordoned until the Job's deadline. Its
/// upgrade is not running: it is replaced by the Job of the current hash.
#[test]
fn a_superseded_job_whose_next_pod_waits_in_its_gate_is_replaced() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    upgrade_runs(&mut world, "a");
    let mut failed = world.pod_mut("a").clone();
    failed["metadata"]["name"] = json!("failed-pod");
    failed["status"]["phase"] = json!("Failed");
    world.pods.push(failed);
    // The next pod, in its gate (not opened for it).
    let pod = world.pod_mut("a");
    pod["metadata"]["annotations"] = json!({});
    pod["status"]["phase"] = json!("Pending");
    for status in pod["status"]["initContainerStatuses"]
        .as_array_mut()
        .unwrap()
    {
        status["state"] = json!({"running": {}});
    }
    world.plan["spec"]["version"] = json!("v1.30.5+k3s1");
    let bumped = world.step();
    assert_eq!(deleted(&bumped).len(), 1, "{:?}", bumped.before);
}

/// Found by the soak (seed 3): the Job controller gave a Job a second pod while its first still
/// waited in its gate on the node; the second could never be placed beside the first, and the
/// node waited on it for good ("prepare is running"). The pod on the node is the one drained for.
#[test]
fn a_second_pod_that_cannot_be_placed_does_not_hold_the_drain() {
    let mut s = spec();
    s["drain"] = json!({});
    let mut world = World::new(s).nodes(&["a"]);
    world.drains_finish = false;
    world.step();
    let mut second = world.pod_mut("a").clone();
    second["metadata"]["name"] = json!("second-pod");
    second["metadata"]["creationTimestamp"] = json!("2026-11-23T10:00:05Z");
    second["spec"]["nodeName"] = Value::Null;
    second["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
        "message": "0/3 nodes are available: 1 node(s) didn't match pod anti-affinity rules"}]});
    world.pods.push(second);
    let pass = world.step();
    let drained: Vec<&String> = changes(&pass)
        .filter_map(|c| match c {
            Change::Drain { pod, .. } => Some(pod),
            _ => None,
        })
        .collect();
    assert_eq!(drained.len(), 1, "{:?}", pass.after);
    assert_ne!(drained[0], "second-pod");
    // Alone, an unplaced pod is reported as such, not as a prepare that runs.
    let first = world.pod_mut("a")["metadata"]["name"].clone();
    world.pods.retain(|p| p["metadata"]["name"] != first);
    let message = entry(&world.decide(), "a").message.unwrap_or_default();
    assert!(
        message.contains("to be scheduled") && message.contains("anti-affinity"),
        "{message}"
    );
}

/// Found by the long soak: after a Plan was deleted and created again across an API server
/// restart, a pod of the deleted Job stayed in its gate for minutes (the garbage collector had
/// lost track of it), and the anti-affinity of the node's new upgrade pod kept that one off the
/// node. Such a pod, seen for two minutes, is deleted; a running one, or a new one whose Job is
/// only late in the cache, is not.
/// A node draining for its Job, and a pod like that Job's whose Job is gone.
fn world_with_an_orphan() -> (World, Value) {
    let mut s = spec();
    s["drain"] = json!({});
    let mut world = World::new(s).nodes(&["a"]);
    world.drains_finish = false;
    world.step();
    let mut orphan = world.pod_mut("a").clone();
    orphan["metadata"]["name"] = json!("orphan");
    orphan["metadata"]["ownerReferences"][0]["uid"] = json!("deleted-job-uid");
    orphan["metadata"]["annotations"] = json!({});
    (world, orphan)
}

#[test]
fn a_pod_of_a_job_that_is_gone_waiting_in_its_gate_is_deleted() {
    let (mut world, orphan) = world_with_an_orphan();
    let stranded = |world: &World| -> Vec<String> {
        changes(&world.decide())
            .filter_map(|c| match c {
                Change::DeletePod { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect()
    };
    for (age, running, expected) in [
        ("2026-11-23T09:57:00Z", false, vec!["orphan".to_owned()]),
        ("2026-11-23T09:59:00Z", false, vec![]),
        ("2026-11-23T09:57:00Z", true, vec![]),
    ] {
        let mut pod = orphan.clone();
        pod["metadata"]["creationTimestamp"] = json!(age);
        if running {
            pod["metadata"]["annotations"] = json!({"upgrade.cattle.io/drained": "now"});
        }
        world.pods.push(pod);
        assert_eq!(
            stranded(&world),
            expected,
            "created {age}, running {running}"
        );
        world.pods.retain(|p| p["metadata"]["name"] != "orphan");
    }
    // The node's own Job's pod is never one.
    assert!(stranded(&world).is_empty());
}

#[test]
fn a_drain_edit_replaces_a_job_whose_upgrade_has_not_begun() {
    let mut s = spec();
    s["drain"] = json!({"timeout": "5m"});
    let mut world = World::new(s).nodes(&["a"]);
    world.drains_finish = false;
    let draining = world.settle();
    assert_eq!(entry(&draining, "a").phase, "Draining");
    world.plan["spec"]["drain"]["onTimeout"] = json!("Skip");
    assert_eq!(
        deleted(&world.step()).len(),
        1,
        "nothing began: it follows the edit"
    );
}

fn released(decision: &Decision, node: &str) -> bool {
    decision.before.contains(&Change::Release {
        node: node.to_owned(),
    })
}

fn seconds_after_now(seconds: i64) -> String {
    let now: Timestamp = NOW.parse().unwrap();
    stamp(now + jiff::SignedDuration::from_secs(seconds))
}

#[test]
fn a_job_replaced_under_its_name_is_created_once_the_old_one_and_its_pods_are_gone() {
    let mut s = spec();
    s["drain"] = json!({"timeout": "5m"});
    let mut world = World::new(s).nodes(&["a"]);
    world.drains_finish = false;
    world.settle();
    let old_name = world.jobs[0]["metadata"]["name"].clone();
    let mut old_pod = world.pods[0].clone();
    // A drain edit is not in the hash: the new Job has the old one's name.
    world.plan["spec"]["drain"]["onTimeout"] = json!("Skip");
    let replaced = world.step();
    assert_eq!(deleted(&replaced).len(), 1);
    // The garbage collector has not removed the old Job's pod yet.
    old_pod["metadata"]["deletionTimestamp"] = json!(NOW);
    world.pods.push(old_pod);
    let waiting = world.step();
    assert!(
        created(&waiting).is_empty(),
        "not under the name of a Job whose pod stays"
    );
    let e = entry(&waiting, "a");
    assert_eq!(e.phase, "Preparing");
    let message = e.message.unwrap();
    assert!(
        message.contains("pods of the Job it replaces are gone (left: "),
        "{message}"
    );
    assert_eq!(waiting.requeue, Duration::from_secs(5));
    assert!(
        !released(&waiting, "a"),
        "a short wait keeps the node's cordon"
    );
    // It lingers: the node's cordon goes back meanwhile.
    world.now = seconds_after_now(61);
    let lingering = world.step();
    assert!(released(&lingering, "a"));
    assert!(created(&lingering).is_empty());
    world.pods.clear();
    let recreated = world.step();
    assert_eq!(created(&recreated), ["a"]);
    assert_eq!(world.jobs[0]["metadata"]["name"], old_name);
    // Its pod waits in its gate: the drain cordons the node again.
    let draining = world.step();
    assert_eq!(drains(&draining), 1);
    assert_eq!(world.node_mut("a")["spec"]["unschedulable"], true);
}

#[test]
fn a_job_deleted_in_the_pass_is_not_created_again_under_its_name_in_that_pass() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    // A Job without its version label is deleted; the node's new Job has the same name.
    let job = job_of(&mut world, "a");
    job["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("upgrade.cattle.io/version");
    let pass = world.step();
    assert_eq!(deleted(&pass).len(), 1);
    assert!(created(&pass).is_empty());
    let message = entry(&pass, "a").message.unwrap();
    assert!(message.contains("it replaces is gone"), "{message}");
    assert_eq!(created(&world.step()), ["a"]);
}

#[test]
fn a_job_the_job_controller_gives_no_pod_is_nudged_and_does_not_keep_its_node_cordoned() {
    let mut s = spec();
    s["drain"] = json!({});
    let mut world = World::new(s).nodes(&["a"]);
    world.drains_finish = false;
    let draining = world.settle();
    assert_eq!(entry(&draining, "a").phase, "Draining");
    // The Job stands cordoned for, but has no pod (the Job controller lost count of it).
    world.pods.clear();
    world.drains.clear();
    let fresh = world.step();
    assert!(!released(&fresh, "a") && annotated(&fresh).is_empty());
    assert_eq!(
        entry(&fresh, "a").message.as_deref(),
        Some("waiting for the Job's pod")
    );
    world.now = seconds_after_now(61);
    let idle = world.step();
    assert!(
        released(&idle, "a"),
        "no pod on the node for a minute: the cordon goes back"
    );
    assert!(annotated(&idle).is_empty());
    world.now = seconds_after_now(300);
    let nudged = world.step();
    let stamps = annotated(&nudged);
    assert_eq!(stamps.len(), 1);
    assert_eq!(
        stamps[0]["upgrade.cattle.io/nudged"],
        seconds_after_now(300)
    );
    let message = entry(&nudged, "a").message.unwrap();
    assert!(message.contains("has created no pod for Job"), "{message}");
    assert!(reasons(&nudged).contains(&"JobRefused"));
    assert_eq!(short(&nudged, COMPLETE).1, "JobRefused");
    world.now = seconds_after_now(360);
    assert!(annotated(&world.step()).is_empty(), "once per five minutes");
    world.now = seconds_after_now(600);
    assert_eq!(annotated(&world.step()).len(), 1);
}

#[test]
fn a_begun_job_of_an_earlier_controller_version_is_never_replaced_for_its_rendering() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.settle();
    upgrade_runs(&mut world, "a");
    // Created by a version without a run digest, whose rendering differs from this one's.
    let job = job_of(&mut world, "a");
    let annotations = job["metadata"]["annotations"].as_object_mut().unwrap();
    annotations.remove(ANNOTATION_RUN);
    annotations.insert(ANNOTATION_TEMPLATE.into(), json!("0123456789abcdef"));
    let pass = world.step();
    assert!(deleted(&pass).is_empty());
    assert_eq!(annotated(&pass).len(), 1);
    assert_eq!(entry(&pass, "a").phase, "Upgrading");
}

fn failed_with_retries(world: &mut World) {
    world.settle();
    world.finish_job("a", false, NOW);
    let failed = world.step();
    assert_eq!(short(&failed, COMPLETE).1, "Retrying");
}

#[test]
fn automatic_retries_wait_while_the_plan_or_the_node_is_paused() {
    let mut s = spec();
    s["retry"] = json!({"limit": 20, "backoff": "10s"});
    let mut world = World::new(s).nodes(&["a"]);
    failed_with_retries(&mut world);
    world.plan["spec"]["paused"] = json!(true);
    world.now = at(5);
    let paused = world.step();
    assert!(deleted(&paused).is_empty() && created(&paused).is_empty());
    let message = entry(&paused, "a").message.unwrap();
    assert!(
        message.contains("retry 1 of 20 waits while spec.paused is true"),
        "{message}"
    );
    assert_eq!(short(&paused, COMPLETE), pair("False", "Paused"));
    assert_eq!(short(&paused, STALLED).0, "False");
    // The node in repair: labelled paused, the Plan resumed.
    world.plan["spec"]["paused"] = json!(false);
    world.node_mut("a")["metadata"]["labels"]["upgrade.cattle.io/pause"] = json!("true");
    let held = world.step();
    assert!(deleted(&held).is_empty() && created(&held).is_empty());
    let (_, reason, message) = condition(&held, COMPLETE);
    assert_eq!(reason, "Paused");
    assert!(
        message.contains("node a is labelled upgrade.cattle.io/pause=true"),
        "{message}"
    );
    // The retry annotation is the operator's override.
    world.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": "a"});
    assert_eq!(deleted(&world.step()).len(), 1);
    assert_eq!(
        created(&world.step()),
        ["a"],
        "created while the label holds the node"
    );
}

#[test]
fn a_job_gone_while_the_plan_is_paused_is_created_again_only_on_resume() {
    let mut world = World::new(spec()).nodes(&["a", "b"]);
    let first = world.settle();
    let node = first.status.applying.clone().unwrap()[0].clone();
    world.plan["spec"]["paused"] = json!(true);
    // Deleted by hand while it waits in its gate; the node was cordoned for it.
    world.jobs.clear();
    world.pods.clear();
    let paused = world.step();
    assert!(created(&paused).is_empty());
    assert!(
        paused
            .before
            .iter()
            .any(|c| matches!(c, Change::Release { node: n } if *n == node)),
        "not kept cordoned while nothing runs there"
    );
    assert!(
        entry(&paused, &node)
            .message
            .unwrap()
            .contains("spec.paused is true")
    );
    assert_eq!(
        paused.status.applying.as_deref(),
        Some(std::slice::from_ref(&node)),
        "its slot kept"
    );
    world.plan["spec"]["paused"] = json!(false);
    assert_eq!(created(&world.step()), [node]);
}

#[test]
fn automatic_retries_wait_while_a_health_gate_is_closed() {
    let mut s = spec();
    s["retry"] = json!({"limit": 3, "backoff": "10s"});
    s["healthGates"] = json!({"prometheus": {"url": "http://prometheus:9090", "query": "up == 0"}});
    let mut world = World::new(s).nodes(&["a"]);
    world.query = Some(QueryOutcome::Clear);
    failed_with_retries(&mut world);
    world.query = Some(QueryOutcome::Firing("1 series".into()));
    world.now = at(5);
    let gated = world.step();
    assert!(deleted(&gated).is_empty());
    assert_eq!(short(&gated, COMPLETE).1, "WaitingForHealth");
    world.query = Some(QueryOutcome::Clear);
    assert_eq!(deleted(&world.step()).len(), 1);
}

#[test]
fn a_node_the_go_controller_left_cordoned_without_a_job_is_returned_after_its_upgrade() {
    let mut world = World::new(spec()).nodes(&["a", "b"]);
    // As the Go controller leaves it when the Job expired before the takeover.
    world.plan["status"] = json!({"applying": ["a"], "latestVersion": "v1.30.4-k3s1"});
    world.node_mut("a")["spec"]["unschedulable"] = json!(true);
    let first = world.step();
    assert!(
        first
            .before
            .iter()
            .any(|c| matches!(c, Change::AdoptCordon { node } if node == "a"))
    );
    assert_eq!(created(&first), ["a"]);
    world.settle();
    world.finish_job("a", true, NOW);
    let done = world.step();
    assert!(
        done.before
            .iter()
            .any(|c| matches!(c, Change::Release { node } if node == "a")),
        "uncordoned as the Go controller would"
    );
    // A node an administrator cordoned, never applying under Go, is not adopted.
    world.node_mut("b")["spec"]["unschedulable"] = json!(true);
    let next = world.settle();
    assert!(
        !next
            .before
            .iter()
            .any(|c| matches!(c, Change::AdoptCordon { node } if node == "b"))
    );
}

#[test]
fn node_ready_for_waits_out_a_plans_cordon_but_not_someone_elses() {
    let mut s = spec();
    s["healthGates"] = json!({"nodeReadyFor": "1m"});
    let mut world = World::new(s).nodes(&["a"]);
    set_ready(&mut world, "a", true, "2026-11-23T09:00:00Z");
    world.settle();
    world.finish_job("a", true, NOW);
    world.step();
    // An administrator cordons it meanwhile: nobody claims that cordon.
    world.node_mut("a")["spec"]["unschedulable"] = json!(true);
    world.now = at(2);
    let judged = world.step();
    assert_eq!(
        world.node_label("a", "plan.upgrade.cattle.io/p").as_deref(),
        Some(judged.status.latest_hash.as_deref().unwrap())
    );
    // Another Plan's cordon is waited out.
    let mut world = World::new(spec_with_gate()).nodes(&["a"]);
    set_ready(&mut world, "a", true, "2026-11-23T09:00:00Z");
    world.settle();
    world.finish_job("a", true, NOW);
    world.step();
    world.node_mut("a")["spec"]["unschedulable"] = json!(true);
    world.node_mut("a")["metadata"]["annotations"]["cordoned.upgrade.cattle.io/os"] =
        json!("system-upgrade/system-upgrade-controller 2026-11-23T10:00:30Z");
    world.now = at(2);
    let waiting = world.step();
    let message = entry(&waiting, "a").message.unwrap();
    assert!(message.contains("it is cordoned for Plan os"), "{message}");
}

fn spec_with_gate() -> Value {
    let mut s = spec();
    s["healthGates"] = json!({"nodeReadyFor": "1m"});
    s
}

#[test]
fn a_skipped_node_that_is_opted_out_no_longer_stalls_the_plan() {
    let mut s = spec();
    s["drain"] = json!({"timeout": "1m", "onTimeout": "Skip"});
    let mut world = World::new(s).nodes(&["a"]);
    world.drains_finish = false;
    world.settle();
    let uid = world.jobs[0]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    world
        .drains
        .insert(uid, DrainProgress::Skipped("timed out".into()));
    world.step();
    assert_eq!(short(&world.step(), COMPLETE).1, "DrainSkipped");
    world.node_mut("a")["metadata"]["labels"]["plan.upgrade.cattle.io/p"] = json!("disabled");
    let opted_out = world.step();
    assert_eq!(short(&opted_out, COMPLETE), pair("True", "Complete"));
    assert_eq!(short(&opted_out, STALLED).0, "False");
}

#[test]
fn the_retry_annotation_stays_until_a_pass_can_act_on_it() {
    let mut s = spec();
    s["window"] = json!({"days": ["tu"], "startTime": "01:00", "endTime": "02:00"});
    let mut world = World::new(s).nodes(&["a"]);
    world.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": "all"});
    let closed = world.step();
    assert!(
        !closed
            .after
            .iter()
            .any(|c| matches!(c, Change::ClearAnnotation { .. })),
        "a pass that waits for its window did not act on it"
    );
    world.plan["spec"]["version"] = Value::Null;
    let unresolved = world.step();
    assert!(
        !unresolved
            .after
            .iter()
            .any(|c| matches!(c, Change::ClearAnnotation { .. }))
    );
}

#[test]
fn a_job_gone_while_its_node_waits_out_the_delay_never_runs_the_node_again() {
    let mut s = spec();
    s["postCompleteDelay"] = json!("30m");
    let mut world = World::new(s).nodes(&["a"]);
    world.settle();
    world.finish_job("a", true, NOW);
    let waiting = world.step();
    assert_eq!(entry(&waiting, "a").phase, "WaitingDelay");
    world.jobs.clear();
    world.pods.clear();
    world.now = at(10);
    let gone = world.step();
    assert!(created(&gone).is_empty(), "upgraded twice");
    assert_eq!(entry(&gone, "a").phase, "WaitingDelay");
    world.now = at(31);
    let labelled = world.step();
    assert!(created(&labelled).is_empty());
    assert!(world.node_label("a", "plan.upgrade.cattle.io/p").is_some());
}

#[test]
fn a_refused_job_is_shown_told_once_and_tried_again_after_its_backoff() {
    let mut world = World::new(spec()).nodes(&["a"]);
    let first = world.decide();
    let Change::CreateJob(job) = &first.after[0] else {
        panic!("{:?}", first.after)
    };
    let name = job.metadata.name.clone().unwrap();
    let template = job.metadata.annotations.as_ref().unwrap()[ANNOTATION_TEMPLATE].clone();
    world.plan["status"] = serde_json::to_value(&first.status).unwrap();
    let message = "admission webhook \"deny.example.com\" denied the request: no privileged pods";
    world.refusals.insert(
        name.clone(),
        Refusal::Job {
            template,
            message: message.into(),
            retry_at: at(1).parse().unwrap(),
        },
    );
    let refused = world.step();
    assert!(created(&refused).is_empty());
    let (status, reason, shown) = condition(&refused, COMPLETE);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "JobRefused"));
    assert!(shown.contains(message), "{shown}");
    assert_eq!(short(&refused, STALLED), pair("True", "JobRefused"));
    assert!(entry(&refused, "a").message.unwrap().contains(message));
    assert_eq!(refused.tally.refused, 1);
    let warnings: Vec<&Note> = refused
        .notes
        .iter()
        .filter(|n| n.reason == Reason::JobRefused)
        .collect();
    assert_eq!(warnings.len(), 2, "on the Plan and the node");
    assert!(warnings.iter().all(|n| n.warning && n.once.is_some()));
    assert_eq!(refused.requeue, Duration::from_secs(60));
    // Due: created again; an edit of the pod template tries at once.
    world.now = at(1);
    assert_eq!(created(&world.decide()), ["a"]);
    world.now = NOW.into();
    world.plan["spec"]["upgrade"]["args"] = json!(["--fixed"]);
    assert_eq!(created(&world.decide()), ["a"]);
}

#[test]
fn a_job_whose_pod_cannot_be_created_says_why() {
    let mut world = World::new(spec()).nodes(&["a"]);
    world.step();
    let name = world.jobs[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    world.pods.clear();
    let message =
        "Error creating: pods \"x\" is forbidden: exceeded quota: pods, requested: pods=1";
    world.refusals.insert(
        name,
        Refusal::Pod {
            message: message.into(),
        },
    );
    let pass = world.step();
    let (_, reason, shown) = condition(&pass, COMPLETE);
    assert_eq!(reason, "JobRefused");
    assert!(shown.contains("exceeded quota"), "{shown}");
    assert_eq!(entry(&pass, "a").phase, "Preparing");
    assert!(
        deleted(&pass).is_empty(),
        "the Job stays; its pod may come once the quota allows"
    );
}

#[test]
fn a_crd_that_lacks_spec_fields_holds_new_starts_and_says_so_on_the_plan() {
    let mut world = World::new(spec()).nodes(&["a", "b"]);
    let first = world.settle();
    let running = first.status.applying.clone().unwrap()[0].clone();
    // Rancher's controller rewrote the CRD: spec.paused and status.nodes are gone.
    world.crd_gaps = vec!["spec.paused".into(), "status.nodes".into()];
    world.finish_job(&running, true, NOW);
    let held = world.step();
    assert!(
        created(&held).is_empty(),
        "a pause stored in spec.paused would be lost"
    );
    let (status, reason, message) = condition(&held, CRD_CURRENT);
    assert_eq!((status.as_str(), reason.as_str()), ("False", "CRDOutdated"));
    assert!(
        message.contains("spec.paused, status.nodes") && message.contains("deploy/crd.yaml"),
        "{message}"
    );
    assert_eq!(short(&held, COMPLETE).1, "CRDOutdated");
    assert_eq!(short(&held, STALLED), pair("True", "CRDOutdated"));
    let warning = held
        .notes
        .iter()
        .find(|n| n.reason == Reason::CRDOutdated)
        .unwrap();
    assert!(warning.warning && warning.once.is_some());
    // Only status fields lost: the rollout goes on, and says so.
    world.crd_gaps = vec!["status.nodes".into()];
    let goes_on = world.step();
    assert_eq!(created(&goes_on).len(), 1);
    assert_eq!(condition(&goes_on, CRD_CURRENT).1, "CRDOutdated");
    // This controller's CRD again: the condition goes.
    world.crd_gaps.clear();
    let current = world.step();
    assert!(status::get(current.status.conditions.as_deref().unwrap(), CRD_CURRENT).is_none());
}

/// `preview` plays a rollout with `controller::simulate`; this file's World steps the same
/// decision with a cluster model of its own. On the same Plan and nodes both start the same
/// nodes in the same waves, drain first, with a percentage and a held node.
#[test]
fn the_simulated_rollout_preview_plays_starts_what_stepping_the_decision_starts() {
    let spec = json!({"concurrency": "40%", "version": "v1.30.4+k3s1", "nodeSelector": {},
        "drain": {"force": true}, "prepare": {"image": "busybox"},
        "upgrade": {"image": "rancher/k3s-upgrade"}});
    let mut world = World::new(spec).nodes(&["a", "b", "c", "d", "e", "f"]);
    world.node_mut("c")["metadata"]["labels"]["upgrade.cattle.io/pause"] = json!("true");
    let plan: Plan = serde_json::from_value(world.plan.clone()).unwrap();
    let nodes: Vec<Node> = world
        .nodes
        .iter()
        .map(|n| serde_json::from_value(n.clone()).unwrap())
        .collect();
    let simulated = crate::controller::simulate::Cluster::new(
        plan,
        nodes,
        Resolution::Version("v1.30.4+k3s1".into()),
        NOW.parse().unwrap(),
    )
    .play();
    let expected: Vec<Vec<String>> = simulated
        .steps
        .iter()
        .filter(|s| !s.started.is_empty())
        .map(|s| s.started.clone())
        .collect();

    let mut stepped: Vec<Vec<String>> = Vec::new();
    for _ in 0..40 {
        let decision = world.step();
        let started = created(&decision);
        if !started.is_empty() {
            stepped.push(started);
        }
        // Upgrades whose gate the drain opened succeed, as they do in the simulation.
        let opened: Vec<String> = world
            .pods
            .iter()
            .filter(|p| !p["metadata"]["annotations"]["upgrade.cattle.io/drained"].is_null())
            .map(|p| {
                p["metadata"]["labels"]["upgrade.cattle.io/node"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        for node in opened {
            let finished = world.jobs.iter().any(|j| {
                j["metadata"]["labels"]["upgrade.cattle.io/node"] == node.as_str()
                    && !j["status"]["conditions"].is_null()
            });
            if !finished {
                world.finish_job(&node, true, NOW);
            }
        }
    }
    assert_eq!(stepped, expected);
    assert_eq!(expected.len(), 3, "five nodes two at a time: {expected:?}");
    assert!(expected.iter().flatten().all(|n| n != "c"), "c is held");
    assert!(!simulated.complete, "c keeps the Plan from completing");
    let (_, reason, _) = condition(&simulated.last, COMPLETE);
    assert_eq!(reason, "Paused");
}

/// Found by the long soak: a pod of a Job deleted and re-created under its name stayed
/// Terminating for ten minutes, kept by the Job controller's tracking finalizer, and the Jobs'
/// anti-affinity kept the node's new upgrade pod off the node. After two minutes of deletion,
/// the finalizer of such a pod, whose upgrade never began, is removed; not sooner, and never
/// from a pod whose upgrade may have begun or one of a Job that stands.
#[test]
fn a_terminating_pod_of_a_job_that_is_gone_is_released_from_the_job_finalizer() {
    let (mut world, mut orphan) = world_with_an_orphan();
    orphan["metadata"]["finalizers"] =
        json!(["example.com/other", "batch.kubernetes.io/job-tracking"]);
    let released = |world: &World| -> Vec<(String, usize)> {
        changes(&world.decide())
            .filter_map(|c| match c {
                Change::ReleasePod { name, index, .. } => Some((name.clone(), *index)),
                _ => None,
            })
            .collect()
    };
    for (deleted, begun, expected) in [
        (
            "2026-11-23T09:57:00Z",
            false,
            vec![("orphan".to_owned(), 1)],
        ),
        ("2026-11-23T09:59:00Z", false, vec![]),
        ("2026-11-23T09:57:00Z", true, vec![]),
    ] {
        let mut pod = orphan.clone();
        pod["metadata"]["deletionTimestamp"] = json!(deleted);
        if begun {
            pod["metadata"]["annotations"] = json!({"upgrade.cattle.io/drained": "now"});
        }
        world.pods.push(pod);
        assert_eq!(
            released(&world),
            expected,
            "deleted {deleted}, begun {begun}"
        );
        world.pods.retain(|p| p["metadata"]["name"] != "orphan");
    }
    // The node's own Job's pod, being deleted, is the Job controller's to finish.
    world.pod_mut("a")["metadata"]["deletionTimestamp"] = json!("2026-11-23T09:50:00Z");
    world.pod_mut("a")["metadata"]["finalizers"] = json!(["batch.kubernetes.io/job-tracking"]);
    assert!(released(&world).is_empty());
}

/// A node whose drain failed while the Plan was paused is retried on request once it resumes
/// (what the soak's operator does when it settles).
#[test]
fn a_drain_that_failed_while_paused_is_retried_on_request() {
    let mut plan = spec();
    plan["drain"] = json!({"timeout": "20s"});
    let mut world = World::new(plan).nodes(&["a", "b"]);
    world.drains_finish = false;
    world.step();
    world.step();
    world.step();
    world.plan["spec"]["paused"] = json!(true);
    world.step();
    let job_uid = world.jobs[0]["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_owned();
    world
        .drains
        .insert(job_uid, DrainProgress::Failed("drain timed out".into()));
    world.step();
    world.step();
    world.plan["spec"]["paused"] = json!(false);
    let resumed = world.step();
    let entry = &resumed.status.nodes.as_ref().unwrap()[0];
    assert_eq!(entry.phase, "Failed", "{entry:?}");
    world.plan["metadata"]["annotations"] = json!({"upgrade.cattle.io/retry": "all"});
    let retried = world.step();
    assert_eq!(deleted(&retried).len(), 1, "{:?}", retried.status.nodes);
}

/// A failed node keeps its slot (and the rollout stays stopped) also after the concurrency is
/// lowered below the nodes that hold one: its Job exists, so something began there.
#[test]
fn a_failed_node_keeps_its_slot_when_the_concurrency_is_lowered() {
    let mut plan = spec();
    plan["concurrency"] = json!(2);
    plan["cordon"] = json!(false);
    let mut world = World::new(plan).nodes(&["a", "b", "c"]);
    let first = world.settle();
    let chosen = first.status.applying.clone().unwrap();
    assert_eq!(chosen.len(), 2);
    world.finish_job(&chosen[0], false, NOW);
    world.step();
    world.plan["spec"]["concurrency"] = json!(1);
    let lowered = world.step();
    assert_eq!(lowered.status.applying.clone().unwrap(), chosen);
    assert_eq!(condition(&lowered, COMPLETE).1, "JobFailed");
    world.finish_job(&chosen[1], true, NOW);
    let next = world.step();
    assert!(created(&next).is_empty(), "the rollout stays stopped");
    assert_eq!(entry(&next, &chosen[0]).phase, "Failed");
}

/// The node's kubelet reports `version`.
fn runs(world: &mut World, node: &str, version: &str) {
    world.node_mut(node)["status"]["nodeInfo"] = json!({"kubeletVersion": version, "architecture": "",
        "bootID": "", "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "",
        "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""});
}

fn make_server(world: &mut World, node: &str) {
    world.node_mut(node)["metadata"]["labels"]["node-role.kubernetes.io/control-plane"] =
        json!("true");
}

#[test]
fn a_node_on_a_newer_version_is_held_and_never_downgraded() {
    let mut s = spec();
    s["concurrency"] = json!(2);
    let mut world = World::new(s).nodes(&["newer", "older"]);
    runs(&mut world, "newer", "v1.31.0+k3s1");
    runs(&mut world, "older", "v1.30.1+k3s1");
    let first = world.step();
    assert_eq!(
        created(&first),
        ["older"],
        "only the node the version moves up"
    );
    let held = entry(&first, "newer");
    assert_eq!(held.phase, "Held");
    assert_eq!(held.job, None);
    let message = held.message.unwrap();
    assert!(
        message.contains("runs v1.31.0+k3s1, newer than v1.30.4+k3s1"),
        "{message}"
    );
    assert_eq!(first.tally.version_held, 1);
    // The other node is done: the hold is what is left, a warning told once.
    world.finish_job("older", true, NOW);
    let left = world.step();
    assert_eq!(short(&left, COMPLETE), pair("False", "DowngradeHeld"));
    assert_eq!(short(&left, STALLED).1, "DowngradeHeld");
    let warned: Vec<_> = left
        .notes
        .iter()
        .filter(|n| n.reason == Reason::DowngradeHeld)
        .collect();
    assert_eq!(warned.len(), 1);
    assert!(warned[0].warning);
    assert!(created(&world.step()).is_empty());
    // Asked for explicitly, it runs.
    world.plan["spec"]["versionSafety"] = json!({"allowDowngrade": true});
    assert_eq!(created(&world.step()), ["newer"]);
}

#[test]
fn a_skipped_minor_is_held_with_the_chain_to_follow() {
    let mut world = World::new(spec()).nodes(&["a"]);
    runs(&mut world, "a", "v1.28.9+k3s1");
    let pass = world.step();
    assert!(created(&pass).is_empty());
    assert_eq!(short(&pass, COMPLETE), pair("False", "MinorSkipHeld"));
    let message = entry(&pass, "a").message.unwrap();
    assert!(message.contains("upgrade through v1.29 first"), "{message}");
    world.plan["spec"]["versionSafety"] = json!({"allowMinorSkip": true});
    assert_eq!(created(&world.step()), ["a"]);
}

#[test]
fn agents_start_once_every_server_runs_the_target() {
    let mut s = spec();
    s["concurrency"] = json!(3);
    let mut world = World::new(s).nodes(&["agent-1", "agent-2", "server"]);
    for node in ["agent-1", "agent-2", "server"] {
        runs(&mut world, node, "v1.29.9+k3s1");
    }
    make_server(&mut world, "server");
    let first = world.step();
    assert_eq!(
        created(&first),
        ["server"],
        "servers first, within one Plan too"
    );
    let waiting = entry(&first, "agent-1");
    assert_eq!(waiting.phase, "Held");
    assert!(
        waiting
            .message
            .unwrap()
            .contains("server runs v1.29.9+k3s1")
    );
    // The server's Job succeeds, but its kubelet has not come back on the new version yet.
    world.finish_job_unconverged("server", true, NOW);
    let done = world.step();
    assert!(created(&done).is_empty());
    let converging = entry(&done, "server");
    assert_eq!(converging.phase, "Converging");
    assert!(
        converging.message.unwrap().contains(
            "waiting for the node to report kubelet v1.30.4+k3s1 (it reports v1.29.9+k3s1)"
        )
    );
    assert_eq!(entry(&done, "agent-1").phase, "Held");
    runs(&mut world, "server", "v1.30.4+k3s1");
    let freed = world.step();
    assert_eq!(created(&freed), ["agent-1", "agent-2"]);
    assert_eq!(
        world.node_label("server", "plan.upgrade.cattle.io/p"),
        freed.status.latest_hash
    );
}

#[test]
fn a_node_that_does_not_show_its_upgrade_in_time_fails_and_is_retried_like_a_failed_job() {
    let mut s = spec();
    s["retry"] = json!({"limit": 1, "backoff": "1m"});
    let mut world = World::new(s).nodes(&["a"]);
    runs(&mut world, "a", "v1.30.1+k3s1");
    world.settle();
    // The Job "completes" in seconds; the node stays on its old version (rancher/system-upgrade-controller#262).
    world.finish_job_unconverged("a", true, NOW);
    let waiting = world.step();
    let e = entry(&waiting, "a");
    assert_eq!(e.phase, "Converging");
    assert!(e.message.unwrap().contains(&format!("until {}", at(10))));
    assert_eq!(world.node_label("a", "plan.upgrade.cattle.io/p"), None);
    assert!(waiting.requeue <= Duration::from_secs(15));
    world.now = at(10);
    let failed = world.step();
    let e = entry(&failed, "a");
    assert_eq!(e.phase, "Failed");
    let message = e.message.unwrap();
    assert!(
        message.contains("did not show the upgrade within 10m0s (spec.convergence.within): waited for it to report kubelet v1.30.4+k3s1 (it reports v1.30.1+k3s1)"),
        "{message}"
    );
    assert!(reasons(&failed).contains(&"NotConverged"));
    assert_eq!(
        world.node_label("a", "plan.upgrade.cattle.io/p"),
        None,
        "never labelled done"
    );
    // Its retry (spec.retry) runs the Job again.
    world.now = at(11);
    let retried = world.step();
    assert_eq!(deleted(&retried).len(), 1);
    assert_eq!(created(&world.step()), ["a"]);
    // This time it shows the upgrade: done.
    world.settle();
    world.finish_job("a", true, &at(11));
    world.step();
    assert!(world.node_label("a", "plan.upgrade.cattle.io/p").is_some());
    // Its retries used up, a node that never shows it stays failed: Complete=False/NotConverged.
    let mut s = spec();
    s["convergence"] = json!({"within": "2m"});
    let mut world = World::new(s).nodes(&["b"]);
    runs(&mut world, "b", "v1.30.1+k3s1");
    world.settle();
    world.finish_job_unconverged("b", true, NOW);
    world.step();
    world.now = at(2);
    let stuck = world.step();
    assert_eq!(short(&stuck, COMPLETE), pair("False", "NotConverged"));
    assert_eq!(short(&stuck, STALLED).1, "NotConverged");
}

/// An OS Plan on node `a` with this convergence check, its Job finished without the node
/// showing it; returns the entry's message.
fn os_upgrade_unshown(world: &mut World) -> String {
    world.settle();
    world.finish_job_unconverged("a", true, NOW);
    let waiting = world.step();
    entry(&waiting, "a").message.unwrap()
}

fn os_plan(convergence: Value) -> World {
    let mut s = spec();
    s["upgrade"] = json!({"image": "example/os-upgrade"});
    s["version"] = json!("bookworm");
    s["convergence"] = convergence;
    World::new(s).nodes(&["a"])
}

#[test]
fn reboot_and_label_checks_say_what_a_node_must_show() {
    let mut world = os_plan(json!({"check": "Reboot"}));
    world.node_mut("a")["status"]["nodeInfo"] = json!({"bootID": "boot-1", "kubeletVersion": "", "architecture": "",
        "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "", "machineID": "",
        "operatingSystem": "", "osImage": "", "systemUUID": ""});
    let message = os_upgrade_unshown(&mut world);
    assert!(
        message.contains("waiting for the node to reboot (its boot ID is still boot-1)"),
        "{message}"
    );
    assert_eq!(
        world.jobs[0]["metadata"]["annotations"]["upgrade.cattle.io/boot-id"],
        "boot-1"
    );
    world.node_mut("a")["status"]["nodeInfo"]["bootID"] = json!("boot-2");
    world.step();
    assert!(world.node_label("a", "plan.upgrade.cattle.io/p").is_some());

    let mut world = os_plan(json!({"check": "NodeLabel", "nodeLabel": "example.com/kernel=6.1"}));
    let message = os_upgrade_unshown(&mut world);
    assert!(
        message.contains("to carry the label example.com/kernel=6.1"),
        "{message}"
    );
    world.node_mut("a")["metadata"]["labels"]["example.com/kernel"] = json!("6.1");
    world.step();
    assert!(world.node_label("a", "plan.upgrade.cattle.io/p").is_some());
}

#[test]
fn many_held_agents_write_a_bounded_status() {
    let names: Vec<String> = (0..60).map(|i| format!("agent-{i:02}")).collect();
    let mut all: Vec<&str> = names.iter().map(String::as_str).collect();
    all.push("server");
    let mut world = World::new(spec()).nodes(&all);
    for node in &all {
        runs(&mut world, node, "v1.29.9+k3s1");
    }
    make_server(&mut world, "server");
    world.plan["spec"]["nodeSelector"] = json!({"matchExpressions": [
        {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]});
    let pass = world.step();
    let entries = pass.status.nodes.clone().unwrap_or_default();
    assert_eq!(entries.len(), 50, "at most 50 Held entries");
    assert!(entries.iter().all(|e| e.phase == "Held"));
    assert_eq!(pass.tally.version_held, 60);
    let (_, _, message) = condition(&pass, COMPLETE);
    assert!(
        message.contains("(59 more node(s) held, up to 50 in status.nodes)"),
        "{message}"
    );
}

#[test]
fn an_agent_plan_without_its_server_plan_says_which_server_is_behind() {
    let mut s = spec();
    s["nodeSelector"] = json!({"matchExpressions": [{"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"}]});
    let mut world = World::new(s).nodes(&["agent", "server"]);
    runs(&mut world, "agent", "v1.29.9+k3s1");
    runs(&mut world, "server", "v1.29.9+k3s1");
    make_server(&mut world, "server");
    let pass = world.step();
    assert!(created(&pass).is_empty());
    let (status, reason, message) = condition(&pass, COMPLETE);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "WaitingForServers")
    );
    assert!(message.contains("server runs v1.29.9+k3s1") && message.contains("serversFirst"));
    // Told once, not as a warning: waiting for the servers is the normal order.
    let told: Vec<_> = pass
        .notes
        .iter()
        .filter(|n| n.reason == Reason::WaitingForServers)
        .collect();
    assert_eq!(told.len(), 1);
    assert!(!told[0].warning);
    world.plan["spec"]["versionSafety"] = json!({"serversFirst": false});
    assert_eq!(created(&world.step()), ["agent"]);
}

#[test]
fn an_upgrade_under_way_goes_on_when_a_version_rule_would_hold_its_node() {
    let mut world = World::new(spec()).nodes(&["a"]);
    runs(&mut world, "a", "v1.30.1+k3s1");
    world.settle();
    // Something else moved the node past the target meanwhile.
    runs(&mut world, "a", "v1.31.0+k3s1");
    let pass = world.step();
    assert!(deleted(&pass).is_empty());
    assert_ne!(entry(&pass, "a").phase, "Held");
}

#[test]
fn a_channel_that_answers_an_older_version_is_not_followed() {
    let mut s = spec();
    s.as_object_mut().unwrap().remove("version");
    s["channel"] = json!("https://update.k3s.io/v1-release/channels/stable");
    let mut world = World::new(s).nodes(&["a"]);
    world.resolution = Some(Resolution::Channel("v1.31.2+k3s1".into()));
    let first = world.settle();
    let hash = first.status.latest_hash.clone();
    world.resolution = Some(Resolution::Channel("v1.30.9+k3s1".into()));
    let back = world.step();
    assert_eq!(back.status.latest_version.as_deref(), Some("v1.31.2-k3s1"));
    assert_eq!(back.status.latest_hash, hash);
    assert!(deleted(&back).is_empty() && created(&back).is_empty());
    let (_, _, message) = condition(&back, LATEST_RESOLVED);
    assert!(message.contains("older than v1.31.2+k3s1"), "{message}");
    assert!(reasons(&back).contains(&"ChannelWentBack"));
    // It flaps back up: nothing changes either.
    world.resolution = Some(Resolution::Channel("v1.31.2+k3s1".into()));
    let up = world.step();
    assert!(deleted(&up).is_empty() && created(&up).is_empty());
    assert_eq!(up.status.latest_hash, hash);
    // Allowed, the channel is followed down.
    world.plan["spec"]["versionSafety"] = json!({"allowDowngrade": true});
    world.resolution = Some(Resolution::Channel("v1.30.9+k3s1".into()));
    let down = world.step();
    assert_eq!(down.status.latest_version.as_deref(), Some("v1.30.9-k3s1"));
}

fn tainted(world: &mut World) -> Vec<String> {
    let mut found: Vec<String> = ["a", "b", "c"]
        .into_iter()
        .filter(|n| {
            world.node_mut(n)["spec"]["taints"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["key"] == "upcoming.upgrade.cattle.io/p"))
        })
        .map(str::to_owned)
        .collect();
    found.sort();
    found
}

/// Nodes waiting for their turn in a rollout that drains carry the Plan's PreferNoSchedule
/// taint, and lose it when done, when the Plan is paused, and when it opts out.
#[test]
fn nodes_waiting_for_their_turn_prefer_no_pods() {
    let mut s = spec();
    s["drain"] = json!({});
    let mut world = World::new(s).nodes(&["a", "b", "c"]);
    world.settle();
    let running: Vec<String> = world
        .jobs
        .iter()
        .map(|j| {
            j["spec"]["template"]["metadata"]["labels"]["upgrade.cattle.io/node"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(running.len(), 1);
    assert_eq!(tainted(&mut world), ["a", "b", "c"]);
    let now = world.now.clone();
    world.finish_job(&running[0], true, &now);
    world.settle();
    let left = tainted(&mut world);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&running[0]));

    world.plan["spec"]["paused"] = json!(true);
    world.settle();
    assert!(tainted(&mut world).is_empty());
    world.plan["spec"]["paused"] = json!(false);
    world.settle();
    assert_eq!(tainted(&mut world).len(), 2);
    world.plan["spec"]["drain"]["preferUpgradedNodes"] = json!(false);
    world.settle();
    assert!(tainted(&mut world).is_empty());

    // Without a drain nothing is evicted, so no node is tainted.
    let mut world = World::new(spec()).nodes(&["a", "b", "c"]);
    world.settle();
    assert!(tainted(&mut world).is_empty());
}

/// A closed object gate holds new starts like any health gate, with its reason in the
/// Complete condition, and the rollout goes on once it opens.
#[test]
fn a_closed_object_gate_holds_new_starts_and_says_why() {
    let mut s = spec();
    s["healthGates"] = json!({"objects": [{"apiVersion": "ceph.rook.io/v1", "kind": "CephCluster",
        "namespace": "rook-ceph", "name": "rook-ceph", "expression": "object.status.ceph.health == 'HEALTH_OK'"}]});
    let mut world = World::new(s).nodes(&["a"]);
    world.object_gates = vec![
        "object.status.ceph.health == 'HEALTH_OK' is false for CephCluster rook-ceph/rook-ceph \
         (healthGates.objects[0])"
            .into(),
    ];
    let held = world.step();
    assert!(created(&held).is_empty());
    let (status, reason, message) = condition(&held, COMPLETE);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "WaitingForHealth")
    );
    assert!(
        message.contains("is false for CephCluster rook-ceph/rook-ceph (healthGates.objects[0])"),
        "{message}"
    );
    assert_eq!(held.requeue, GATE_RETRY);
    world.object_gates.clear();
    assert_eq!(created(&world.step()), ["a"]);
}
