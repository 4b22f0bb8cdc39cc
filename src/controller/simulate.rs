//! A rollout played forward in simulated time by the controller's own decision: what `preview`
//! shows. Each step runs [`decide`] on the cluster as it stands and applies the decision the way
//! the cluster would: the status is stored, Jobs are created and their pods placed on their
//! nodes with `prepare` done, drains finish at once (the node cordoned with the Plan's claim,
//! the gate opened), nodes are labelled and released. Upgrades whose gate is open succeed at the
//! next step; when nothing moves, time jumps to when the decision asked to look again
//! (`postCompleteDelay`, `healthGates.nodeReadyFor`), and a rollout that waits for nothing the
//! simulation can bring (a failed node, a refused Job) ends there.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, Node, Pod,
    PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

use crate::api::{
    ANNOTATION_APPROVE, ANNOTATION_DRAINED, FINALIZER_AFTER_HOOK, LABEL_NODE, LABEL_VERSION,
    PLAN_LABEL_PREFIX, Plan, Reason,
};
use crate::controller::cordon::{self, Claimant};
use crate::controller::decide::{
    self, Change, Decision, DrainProgress, Observed, Peer, QueryOutcome, Refusal, Resolution, pods,
};
use crate::controller::job::{GATE_NAMES, Hook, JobSettings, hook_of};
use crate::controller::status::{self, COMPLETE, stamp};
use crate::validation::versions;

/// The cluster as the decision sees it.
pub struct Cluster {
    pub plan: Plan,
    pub nodes: Vec<Node>,
    /// The Plan's Jobs (of this controller) and their pods.
    pub jobs: Vec<Job>,
    pub pods: Vec<Pod>,
    /// Secrets of the Plan's namespace, by name.
    pub secrets: BTreeMap<String, Secret>,
    /// Drains by Job UID.
    pub drains: BTreeMap<String, DrainProgress>,
    pub now: Timestamp,
    pub resolution: Resolution,
    pub query: Option<QueryOutcome>,
    pub refusals: BTreeMap<String, Refusal>,
    pub crd_gaps: Vec<String>,
    pub settings: JobSettings,
    /// The other Plans of the namespace (`spec.dependsOn`, `spec.exclusiveGroup`).
    pub peers: Vec<Peer>,
    /// Whether a person approves the rollout once its first wave holds it (`spec.canary`).
    pub approves: bool,
    /// Jobs created so far, for their UIDs.
    created: usize,
}

/// One step of a rollout that changed which nodes run or are done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at: Timestamp,
    /// Nodes whose Job was created in this step.
    pub started: Vec<String>,
    /// Nodes labelled done with the Plan's hash in this step.
    pub done: Vec<String>,
    /// Hooks (`spec.hooks`) whose Job was created in this step.
    pub hooks: Vec<Hook>,
    /// The hold after a first wave (`spec.canary`) that began in this step: what it says.
    pub held: Option<String>,
}

/// A rollout played to its end, or to where it stops.
#[derive(Debug, Clone)]
pub struct Rollout {
    pub steps: Vec<Step>,
    /// The last decision: its status says how the rollout ends (Complete, or why not).
    pub last: Decision,
    /// Whether the Plan became Complete.
    pub complete: bool,
}

/// Passes per node (and for four more) after which a rollout that has not ended is taken for
/// one that does not end.
const STEPS_PER_NODE: usize = 8;

impl Cluster {
    pub fn new(plan: Plan, nodes: Vec<Node>, resolution: Resolution, now: Timestamp) -> Self {
        Cluster {
            plan,
            nodes,
            jobs: Vec::new(),
            pods: Vec::new(),
            secrets: BTreeMap::new(),
            drains: BTreeMap::new(),
            now,
            resolution,
            query: None,
            refusals: BTreeMap::new(),
            crd_gaps: Vec::new(),
            settings: JobSettings::default(),
            approves: false,
            peers: Vec::new(),
            created: 0,
        }
    }

    /// The decision of one pass on the cluster as it stands.
    pub fn decide(&self) -> Decision {
        let nodes: Vec<&Node> = self.nodes.iter().collect();
        let jobs: Vec<&Job> = self.jobs.iter().collect();
        let pods: Vec<&Pod> = self.pods.iter().collect();
        let secrets: BTreeMap<String, &Secret> =
            self.secrets.iter().map(|(k, v)| (k.clone(), v)).collect();
        decide::decide(&Observed {
            peers: &self.peers,
            plan: &self.plan,
            nodes: &nodes,
            jobs: &jobs,
            secrets: &secrets,
            now: self.now,
            resolution: self.resolution.clone(),
            settings: &self.settings,
            pods: &pods,
            drains: &self.drains,
            query: self.query.clone(),
            object_gates: &[],
            refusals: &self.refusals,
            crd_gaps: &self.crd_gaps,
        })
    }

    /// Plays the rollout forward until the Plan is Complete or nothing more can happen.
    pub fn play(mut self) -> Rollout {
        let limit = STEPS_PER_NODE * (self.nodes.len() + 4);
        let hash_label = format!(
            "{PLAN_LABEL_PREFIX}{}",
            self.plan.metadata.name.as_deref().unwrap_or_default()
        );
        let mut steps = Vec::new();
        let mut last = None;
        // The canary hold of the pass before, if one held.
        let mut held_reason: Option<String> = None;
        for _ in 0..limit {
            let decision = self.decide();
            let hash = decision.status.latest_hash.clone().unwrap_or_default();
            let step = Step {
                at: self.now,
                started: decision
                    .after
                    .iter()
                    .filter(|c| matches!(c, Change::CreateJob(_)))
                    .filter_map(|c| c.node().map(str::to_owned))
                    .collect(),
                hooks: decision
                    .after
                    .iter()
                    .filter_map(|c| match c {
                        Change::CreateJob(job) => hook_of(job),
                        _ => None,
                    })
                    .collect(),
                done: decision
                    .before
                    .iter()
                    .filter_map(|c| match c {
                        Change::LabelNode { node, labels, .. }
                            if labels.get(&hash_label) == Some(&hash) =>
                        {
                            Some(node.clone())
                        }
                        _ => None,
                    })
                    .collect(),
                held: None,
            };
            let mut step = step;
            let complete_reason = decision
                .status
                .conditions
                .as_deref()
                .and_then(|c| status::get(c, COMPLETE))
                .map(|c| {
                    (
                        c.reason.clone().unwrap_or_default(),
                        c.message.clone().unwrap_or_default(),
                    )
                });
            let canary_hold = complete_reason.filter(|(reason, _)| {
                [Reason::AwaitingApproval, Reason::Soaking]
                    .iter()
                    .any(|r| r.as_str() == reason)
            });
            if let Some((reason, message)) = &canary_hold
                && held_reason.as_deref() != Some(reason.as_str())
            {
                step.held = Some(message.clone());
            }
            held_reason = canary_hold.as_ref().map(|(reason, _)| reason.clone());
            let stored = self.plan.status.clone();
            let quiet = decision.before.is_empty()
                && decision.after.is_empty()
                && stored.as_ref() == Some(&decision.status);
            self.apply(&decision);
            let complete = decision
                .status
                .conditions
                .as_deref()
                .is_some_and(|c| status::is(c, COMPLETE, "True"));
            let approving = held_reason.as_deref() == Some(Reason::AwaitingApproval.as_str())
                && quiet
                && self.approves;
            if approving {
                let annotations = self.plan.metadata.annotations.get_or_insert_default();
                annotations.insert(ANNOTATION_APPROVE.to_owned(), "true".to_owned());
            }
            if !step.started.is_empty()
                || !step.done.is_empty()
                || !step.hooks.is_empty()
                || step.held.is_some()
            {
                steps.push(step);
            }
            let requeue = decision.requeue;
            if complete {
                return Rollout {
                    steps,
                    last: decision,
                    complete: true,
                };
            }
            let soak_ends = (decision.status.canary.as_ref())
                .and_then(|wave| decide::canary::soak_ends(&self.plan, wave))
                .filter(|_| held_reason.as_deref() == Some(Reason::Soaking.as_str()));
            last = Some(decision);
            let upgraded = self.finish_upgrades();
            if quiet && !upgraded && !approving {
                if let Some(ends) = soak_ends {
                    // A long soak passes in one step.
                    self.now = ends.max(self.now);
                    continue;
                }
                if requeue >= decide::RESYNC {
                    break;
                }
                self.advance(requeue);
            } else {
                self.advance(Duration::from_secs(1));
            }
        }
        let last = last.unwrap_or_else(|| self.decide());
        Rollout {
            steps,
            last,
            complete: false,
        }
    }

    fn advance(&mut self, by: Duration) {
        let by = jiff::SignedDuration::try_from(by).unwrap_or(jiff::SignedDuration::ZERO);
        self.now = self.now.checked_add(by).unwrap_or(self.now);
    }

    /// Applies a decision the way the cluster would.
    pub fn apply(&mut self, decision: &Decision) {
        self.plan.status = Some(decision.status.clone());
        for change in decision.before.iter().chain(&decision.after) {
            self.change(change);
        }
    }

    fn change(&mut self, change: &Change) {
        let now = stamp(self.now);
        let plan_name = self.plan.metadata.name.clone().unwrap_or_default();
        let namespace = self.plan.metadata.namespace.clone().unwrap_or_default();
        let who = Claimant::new(&namespace, &self.settings.controller_name);
        match change {
            // A pod being deleted goes once nothing keeps it.
            Change::DeletePod { name, .. } | Change::ReleasePod { name, .. } => {
                self.pods.retain(|p| p.metadata.name.as_ref() != Some(name));
            }
            Change::DeleteJob { name, .. } => {
                let uid = self
                    .job(name)
                    .and_then(|j| j.metadata.uid.clone())
                    .unwrap_or_default();
                self.jobs.retain(|j| j.metadata.name.as_ref() != Some(name));
                self.pods.retain(|p| !pods::owned_by(p, &uid));
                self.drains.remove(&uid);
            }
            Change::CreateJob(job) => self.create(job),
            Change::Drain {
                node, pod, job_uid, ..
            } => {
                if let Some(node) = self.node_mut(node)
                    && let Some((patch, _)) =
                        cordon::cordon_patch(node, &plan_name, true, &who, &now)
                {
                    merge(node, &patch);
                }
                if let Some(pod) = self
                    .pods
                    .iter_mut()
                    .find(|p| p.metadata.name.as_ref() == Some(pod))
                {
                    pod.metadata
                        .annotations
                        .get_or_insert_default()
                        .insert(ANNOTATION_DRAINED.to_owned(), now.clone());
                }
                self.drains
                    .insert(job_uid.clone(), DrainProgress::Done(pod.clone()));
            }
            Change::FailDrain { job, .. } => {
                if let Some(job) = self.job_mut(job) {
                    job.spec.get_or_insert_default().suspend = Some(true);
                }
            }
            Change::AnnotateJob { name, annotations } => {
                if let Some(job) = self.job_mut(name) {
                    let all = job.metadata.annotations.get_or_insert_default();
                    all.extend(annotations.clone());
                }
            }
            Change::UpdateJob { name, fields } => {
                if let Some(job) = self.job_mut(name) {
                    let spec = job.spec.get_or_insert_default();
                    if let Some(deadline) = fields.active_deadline_seconds {
                        spec.active_deadline_seconds = deadline;
                    }
                    if let Some(limit) = fields.backoff_limit {
                        spec.backoff_limit = Some(limit);
                    }
                    if let Some(ttl) = fields.ttl_seconds_after_finished {
                        spec.ttl_seconds_after_finished = Some(ttl);
                    }
                }
            }
            Change::AdoptCordon { node } => {
                if let Some(node) = self.node_mut(node)
                    && let Some(patch) = cordon::adopt_patch(node, &plan_name, &who, &now)
                {
                    merge(node, &patch);
                }
            }
            Change::LabelNode {
                node,
                labels,
                annotations,
            } => {
                if let Some(node) = self.node_mut(node) {
                    node.metadata
                        .labels
                        .get_or_insert_default()
                        .extend(labels.clone());
                    node.metadata
                        .annotations
                        .get_or_insert_default()
                        .extend(annotations.clone());
                }
            }
            Change::Finalizer { on } => {
                let list = self.plan.metadata.finalizers.get_or_insert_default();
                list.retain(|f| f != FINALIZER_AFTER_HOOK);
                if *on {
                    list.push(FINALIZER_AFTER_HOOK.to_owned());
                }
            }
            Change::ClearAnnotation { key, value } => {
                if let Some(annotations) = self.plan.metadata.annotations.as_mut()
                    && annotations.get(*key) == Some(value)
                {
                    annotations.remove(*key);
                }
            }
            Change::Taint { node, on } => {
                if let Some(node) = self.node_mut(node)
                    && let Some(patch) = cordon::taint_patch(node, &plan_name, *on)
                {
                    merge(node, &patch);
                }
            }
            Change::Release { node } => {
                if let Some(node) = self.node_mut(node)
                    && let Some((patch, _)) =
                        cordon::cordon_patch(node, &plan_name, false, &who, &now)
                {
                    merge(node, &patch);
                }
            }
        }
    }

    /// A created Job runs at once: its pod is on its node, `prepare` done, and its gate (if it
    /// has one) waits for the controller.
    fn create(&mut self, job: &Job) {
        let mut job = job.clone();
        let name = job.metadata.name.clone().unwrap_or_default();
        self.created += 1;
        let uid = format!("simulated-{name}-{}", self.created);
        job.metadata.uid = Some(uid.clone());
        job.metadata.creation_timestamp = Some(Time(self.now));
        job.status = Some(JobStatus {
            active: Some(1),
            start_time: Some(Time(self.now)),
            ..JobStatus::default()
        });
        let template = job
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let mut spec = template.spec.unwrap_or_default();
        let mut metadata = template.metadata.unwrap_or_default();
        let node = metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_NODE))
            .cloned();
        // A hook's pod goes wherever the scheduler puts it; no node matters here.
        spec.node_name = node;
        metadata.name = Some(format!("{name}-simulated"));
        metadata.namespace = job.metadata.namespace.clone();
        metadata.creation_timestamp = Some(Time(self.now));
        metadata.owner_references = Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name: name.clone(),
            uid,
            controller: Some(true),
            ..OwnerReference::default()
        }]);
        let inits = spec.init_containers.clone().unwrap_or_default();
        let gated = inits.iter().any(|c| GATE_NAMES.contains(&c.name.as_str()));
        let init_container_statuses = inits
            .iter()
            .map(|c| {
                let state = if GATE_NAMES.contains(&c.name.as_str()) {
                    ContainerState {
                        running: Some(ContainerStateRunning::default()),
                        ..ContainerState::default()
                    }
                } else {
                    ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            exit_code: 0,
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }
                };
                ContainerStatus {
                    name: c.name.clone(),
                    state: Some(state),
                    ..ContainerStatus::default()
                }
            })
            .collect();
        self.pods.push(Pod {
            metadata,
            spec: Some(spec),
            status: Some(PodStatus {
                phase: Some(if gated { "Pending" } else { "Running" }.into()),
                init_container_statuses: Some(init_container_statuses),
                ..PodStatus::default()
            }),
        });
        self.jobs.push(job);
    }

    /// Upgrades that run (their gate opened, or without one) succeed now; returns whether any
    /// did.
    fn finish_upgrades(&mut self) -> bool {
        let now = Time(self.now);
        let mut finished = false;
        let mut upgraded = Vec::new();
        for job in &mut self.jobs {
            let running = job.status.as_ref().is_some_and(|s| s.active == Some(1));
            let uid = job.metadata.uid.clone().unwrap_or_default();
            let Some(pod) = self.pods.iter_mut().find(|p| pods::owned_by(p, &uid)) else {
                continue;
            };
            let opened = pods::gate(pod).is_none()
                || pod
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(ANNOTATION_DRAINED));
            if !running || !opened {
                continue;
            }
            pod.status.get_or_insert_default().phase = Some("Succeeded".into());
            let status = job.status.get_or_insert_default();
            status.active = None;
            status.succeeded = Some(1);
            status.completion_time = Some(now.clone());
            status.conditions = Some(vec![JobCondition {
                type_: "Complete".into(),
                status: "True".into(),
                last_transition_time: Some(now.clone()),
                ..JobCondition::default()
            }]);
            finished = true;
            let labels = job.metadata.labels.clone().unwrap_or_default();
            if let (Some(node), Some(version)) = (labels.get(LABEL_NODE), labels.get(LABEL_VERSION))
                && let Some(version) = versions::target(&self.plan.spec, version)
            {
                upgraded.push((node.clone(), version));
            }
        }
        // A K3s or RKE2 upgrade that succeeds brings the node's kubelet back on its version.
        for (name, version) in upgraded {
            if let Some(node) = self.node_mut(&name) {
                let status = node.status.get_or_insert_default();
                status.node_info.get_or_insert_default().kubelet_version = version.to_string();
            }
        }
        finished
    }

    fn job(&self, name: &str) -> Option<&Job> {
        self.jobs
            .iter()
            .find(|j| j.metadata.name.as_deref() == Some(name))
    }

    fn job_mut(&mut self, name: &str) -> Option<&mut Job> {
        self.jobs
            .iter_mut()
            .find(|j| j.metadata.name.as_deref() == Some(name))
    }

    fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.metadata.name.as_deref() == Some(name))
    }
}

/// Applies a JSON merge patch to a node, as the API server would.
fn merge(node: &mut Node, patch: &serde_json::Value) {
    let Ok(mut value) = serde_json::to_value(&*node) else {
        return;
    };
    json_patch::merge(&mut value, patch);
    if let Ok(patched) = serde_json::from_value(value) {
        *node = patched;
    }
}
