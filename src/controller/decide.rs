//! The heart of a reconcile, as a pure function: from what is observed (the Plan, Nodes, the
//! Plan's Jobs and their pods, Secrets, the time and the version resolution) to the Plan's new
//! status, the changes to make to Jobs and Nodes, the events to record and when to look again.
//!
//! A pass runs named phases over one accumulator ([`Pass`]): validate, resolve, hash, handle
//! the Jobs (finished ones complete their node; stale ones go unless their upgrade may have
//! begun), select the nodes (within the window and the concurrency), track each selected node
//! (start, adopt, replace, drain), release what is left over, and finish the status. Only
//! starting something new needs a valid, resolved Plan; finishing what runs never waits for it.

pub(crate) mod pods;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};

use crate::api::{
    ANNOTATION_ADOPTED, ANNOTATION_DRAIN_FAILED, ANNOTATION_DRAINED, ANNOTATION_RETRY,
    ANNOTATION_RUN, ANNOTATION_TEMPLATE, ANNOTATION_TTL, Condition, LABEL_HOSTNAME, LABEL_NODE,
    LABEL_PAUSE, LABEL_VERSION, LATEST_HASH_VAR, LATEST_VERSION_VAR, NodeStatus, PLAN_LABEL_PREFIX,
    Phase, Plan, PlanStatus, Reason,
};
use crate::controller::cordon::{Claimant, claims, has_claim};
use crate::controller::job::{self, JobSettings};
use crate::controller::status::{
    self, COMPLETE, CRD_CURRENT, LATEST_RESOLVED, RECONCILING, STALLED, VALIDATED, Wanted, stamp,
};
use crate::controller::{hash, resolve, select};
use crate::syntax::{duration, window};
use crate::validation;

pub use pods::upgrade_may_have_started;

/// How often a Plan is looked at when nothing else wakes it.
pub const RESYNC: Duration = Duration::from_secs(600);
/// How often a Plan waiting for its window checks again.
pub const WINDOW_RETRY: Duration = Duration::from_secs(60);
/// Most nodes named in the Plan's JobComplete event of one pass (the rest are counted).
const COMPLETED_LISTED: usize = 20;
/// The controller's own rule for a stored Plan without `concurrency` (the webhook sets it on
/// create): the Go controller read it as 0 and upgraded nothing, so it must not start silently.
pub const CONCURRENCY_UNSET: &str = "spec.concurrency: not set, so this Plan upgrades no node \
    (the Go controller reads a missing concurrency as 0); set spec.concurrency, e.g. to 1, to start";

/// What version resolution found in this pass (done by the caller: it may need the network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// `spec.version` is set.
    Version(String),
    /// The channel answered this version (unmunged).
    Channel(String),
    /// The channel could not be read; retry after the given time.
    ChannelFailed { error: String, retry: Duration },
    /// The channel was read recently; poll again after the given time.
    ChannelNotDue(Duration),
    /// Neither version nor channel.
    Missing,
}

/// The answer of a Plan's Prometheus health gate (asked by the caller: it needs the network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryOutcome {
    /// No series: the gate is open.
    Clear,
    /// The series returned, summarised.
    Firing(String),
    /// The query could not be answered; why.
    Failed(String),
}

/// How often a Plan held by a health gate looks again.
pub const GATE_RETRY: Duration = Duration::from_secs(15);
/// How often a Plan with a Job that has no pod is looked at (the pod may not be created).
const NO_POD_RETRY: Duration = Duration::from_secs(10);
/// How often a node waiting to be Ready for `nodeReadyFor` is looked at while it is not.
const NOT_READY_RETRY: Duration = Duration::from_secs(10);

/// How a node's drain is going, as the reconcile sees it (kept by the drain registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainProgress {
    /// Under way; what it waits for.
    Running(String),
    /// Drained, and this pod told to go on.
    Done(String),
    /// Given up; why.
    Failed(String),
    /// Timed out with `onTimeout: Skip`: the rollout goes on without the node; why.
    Skipped(String),
}

/// Why the API server would not take a node's Job, or its pod (kept by the reconcile's shell,
/// by Job name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Creating the Job was refused: the template digest it had, the API server's words, and
    /// when to try again (at once when the Plan's pod template changes).
    Job {
        template: String,
        message: String,
        retry_at: Timestamp,
    },
    /// The Job exists but the Job controller cannot create its pod (its `FailedCreate` event).
    Pod { message: String },
}

/// Who an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Plan,
    Node(String),
}

/// An event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub target: Target,
    pub warning: bool,
    pub reason: Reason,
    pub message: String,
    /// Set on events that tell of a node's step once: the recorder sends an event with the same
    /// key only once, even if the node entries that normally keep it one-shot were lost (a CRD
    /// without `status.nodes` prunes them).
    pub once: Option<String>,
    /// Set on Plan events of a rollout's progress: the recorder holds such an event briefly and
    /// merges the same Plan's later ones of the same reason into it.
    pub merge: Option<Merge>,
}

/// How a held Plan event takes in a later one of the same reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// The nodes are added to those already named (JobComplete).
    Nodes(Vec<String>),
    /// The later event replaces the held one (SyncJob: the latest set of nodes is what counts).
    Latest,
}

impl Note {
    pub fn new(target: Target, warning: bool, reason: Reason, message: String) -> Self {
        Note {
            target,
            warning,
            reason,
            message,
            once: None,
            merge: None,
        }
    }

    /// Makes the note one-shot under `key`.
    pub fn once(mut self, key: String) -> Self {
        self.once = Some(key);
        self
    }

    /// Makes the note mergeable with later ones of its Plan and reason.
    pub fn merging(mut self, merge: Merge) -> Self {
        self.merge = Some(merge);
        self
    }

    /// Takes in a later note of the same Plan and reason, as this note's `merge` says.
    pub fn absorb(&mut self, later: &Note) {
        match (&mut self.merge, &later.merge) {
            (Some(Merge::Nodes(nodes)), Some(Merge::Nodes(more))) => {
                for node in more {
                    if !nodes.contains(node) {
                        nodes.push(node.clone());
                    }
                }
                self.message = completed_message(nodes);
            }
            _ => *self = later.clone(),
        }
    }
}

/// The Plan's JobComplete message for nodes whose Jobs completed; a single node gets the Go
/// controller's message.
pub fn completed_message(nodes: &[String]) -> String {
    match nodes {
        [node] => format!("Job completed on Node {node}"),
        _ if nodes.len() <= COMPLETED_LISTED => {
            format!("Jobs completed on Nodes {}", nodes.join(","))
        }
        _ => format!(
            "Jobs completed on {} Nodes: {} and {} more",
            nodes.len(),
            nodes[..COMPLETED_LISTED].join(","),
            nodes.len() - COMPLETED_LISTED
        ),
    }
}

/// Settings of a Job that may change while it exists; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFields {
    /// `activeDeadlineSeconds`; `Some(None)` removes the deadline.
    pub active_deadline_seconds: Option<Option<i64>>,
    pub backoff_limit: Option<i32>,
    /// `ttlSecondsAfterFinished`, also written to the TTL annotation.
    pub ttl_seconds_after_finished: Option<i32>,
}

/// How long a pod whose Job is gone is seen before it is deleted (its Job may only be late in
/// the cache).
const STRANDED_AFTER_SECS: i64 = 120;

/// A change to make in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    DeleteJob {
        name: String,
        why: String,
        /// Decided because the Job's upgrade had not begun: the shell stops the Job's drain and
        /// deletes the Job only if its pods, read afresh, still say so (a drain may have opened
        /// the gate since the caches were read).
        unless_begun: bool,
    },
    CreateJob(Box<Job>),
    /// Set annotations on a Job: take over one the Go controller created (the pod template and
    /// run it stands for, the Plan's as they are now, so a later edit replaces it like one of
    /// ours), or record that a begun upgrade's Job stands for the Plan as edited when the edit
    /// did not change what the upgrade runs.
    AnnotateJob {
        name: String,
        annotations: BTreeMap<String, String>,
    },
    /// Bring the settings of an existing Job in line with the Plan and the controller's settings.
    UpdateJob {
        name: String,
        fields: JobFields,
    },
    /// Set labels on a node (the completion label and postCompleteLabels).
    LabelNode {
        node: String,
        labels: BTreeMap<String, String>,
    },
    /// Record the cordon a Go controller's Job made as this Plan's claim, so the node is
    /// uncordoned when its upgrade succeeds, as the Go controller would have done.
    AdoptCordon {
        node: String,
    },
    /// Cordon the node and drain it (per the Plan's `drain`; cordon only without one), then let
    /// the pod's upgrade start. Kept running across passes; started when not running.
    Drain {
        node: String,
        pod: String,
        job: String,
        job_uid: String,
    },
    /// Suspend a Job whose node could not be drained, recording why.
    FailDrain {
        job: String,
        message: String,
    },
    /// Delete a pod of this Plan whose Job is gone and whose upgrade never began.
    DeletePod {
        name: String,
        why: String,
    },
    /// Drop this Plan's cordon claim; uncordon the node when no claim is left.
    Release {
        node: String,
    },
    /// Remove the Plan's retry annotation, if it still has this value: the request was acted on.
    ClearRetry {
        value: String,
    },
}

impl Change {
    /// The Job a change is about, if any (a tracing field).
    pub fn job(&self) -> Option<&str> {
        match self {
            Change::DeleteJob { name, .. }
            | Change::AnnotateJob { name, .. }
            | Change::UpdateJob { name, .. } => Some(name),
            Change::CreateJob(job) => job.metadata.name.as_deref(),
            Change::Drain { job, .. } | Change::FailDrain { job, .. } => Some(job),
            Change::LabelNode { .. }
            | Change::AdoptCordon { .. }
            | Change::DeletePod { .. }
            | Change::Release { .. }
            | Change::ClearRetry { .. } => None,
        }
    }

    /// The node a change is about, if it names one (a tracing field).
    pub fn node(&self) -> Option<&str> {
        match self {
            Change::LabelNode { node, .. }
            | Change::AdoptCordon { node }
            | Change::Drain { node, .. }
            | Change::Release { node } => Some(node),
            Change::CreateJob(job) => job
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_NODE))
                .map(String::as_str),
            _ => None,
        }
    }
}

/// How the Plan's nodes stand after a pass: `status.progress` and the per-Plan metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Nodes the Plan applies to: selected, with a hostname label, not opted out.
    pub selected: usize,
    /// Of those, done with the latest hash.
    pub done: usize,
    /// Nodes in `status.applying`.
    pub applying: usize,
    /// Of those, failed.
    pub failed: usize,
    /// Selected nodes neither done nor applying.
    pub waiting: usize,
    /// Of those waiting, held by the pause label.
    pub held: usize,
    /// Selected nodes given up after a drain timeout (`onTimeout: Skip`), neither done nor
    /// applying nor waiting.
    pub skipped: usize,
    /// Nodes held by a health gate or `spec.paused` (waiting, not label-held), and nodes
    /// waiting to be healthy after their Job.
    pub gated: usize,
    /// Nodes this Plan keeps cordoned (its claim), whether it applies to them or not.
    pub cordoned: usize,
    /// Applying nodes whose Job the API server refused, or whose pod cannot be created.
    pub refused: usize,
}

impl Tally {
    /// The counts in the order of the metric's states (`metrics::PLAN_NODE_STATES`).
    pub fn counts(&self) -> [usize; 10] {
        [
            self.selected,
            self.done,
            self.applying,
            self.failed,
            self.waiting,
            self.held,
            self.skipped,
            self.gated,
            self.cordoned,
            self.refused,
        ]
    }
}

/// Everything a reconcile pass decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: PlanStatus,
    pub tally: Tally,
    /// Changes that do not depend on the new status (completions, stale Jobs); done first.
    pub before: Vec<Change>,
    /// Changes that need the new `applying` persisted first (starting nodes).
    pub after: Vec<Change>,
    pub notes: Vec<Note>,
    pub requeue: Duration,
    /// Jobs this pass saw finished for the first time: succeeded or not, and how long they ran.
    pub finished_jobs: Vec<(bool, Duration)>,
}

/// What the reconcile observed.
pub struct Observed<'a> {
    pub plan: &'a Plan,
    pub nodes: &'a [&'a Node],
    /// The Jobs labelled with this Plan (and this controller's name).
    pub jobs: &'a [&'a Job],
    /// Secrets of the Plan's namespace by name.
    pub secrets: &'a BTreeMap<String, &'a Secret>,
    pub now: Timestamp,
    pub resolution: Resolution,
    pub settings: &'a JobSettings,
    /// Pods of the Plan's Jobs.
    pub pods: &'a [&'a Pod],
    /// Drains in progress or finished, by the UID of the Job they are for.
    pub drains: &'a BTreeMap<String, DrainProgress>,
    /// The Prometheus health gate's answer; `None` without such a gate.
    pub query: Option<QueryOutcome>,
    /// Jobs (by name) the API server refused, or whose pods cannot be created.
    pub refusals: &'a BTreeMap<String, Refusal>,
    /// Fields of this controller's Plan CRD that the CRD in the cluster lacks (`spec.paused`,
    /// `status.nodes`): the API server drops them.
    pub crd_gaps: &'a [String],
}

/// Decides one pass for a Plan.
pub fn decide(obs: &Observed<'_>) -> Decision {
    let mut pass = Pass::new(obs);
    pass.validate();
    pass.crd_gaps();
    pass.resolve();
    pass.hash();
    pass.ready = pass.problems.is_empty() && pass.resolved && !pass.hash.is_empty();
    if pass.version.is_empty() || pass.hash.is_empty() {
        // Never resolved: no Job of this Plan can be judged yet.
        let continuing = pass.continuing();
        pass.count(&continuing);
        pass.complete_condition(&continuing, false);
        return pass.finish(Some(&continuing));
    }
    pass.handle_jobs();
    pass.carry_skipped();
    let ready = pass.ready;
    if ready {
        pass.health_gates();
    }
    let selected = if ready {
        pass.select()
    } else {
        pass.continuing()
    };
    if ready && pass.window_closed(&selected) {
        pass.count(&[]);
        pass.wait_for_window();
        return pass.finish(None);
    }
    pass.track(&selected, ready);
    if ready {
        // Only a pass that could act on the retry annotation consumes it.
        pass.consume_retry_request();
    }
    let mut selected = selected;
    selected.retain(|n| {
        !pass
            .skipped
            .contains(n.metadata.name.as_deref().unwrap_or_default())
    });
    if ready {
        pass.release_leftovers(&selected);
    }
    pass.delete_stranded_pods();
    pass.count(&selected);
    pass.complete_condition(&selected, ready);
    pass.finish(Some(&selected))
}

/// Which Jobs may have a drain running for them: those neither finished, suspended nor being
/// deleted. Drains of other Jobs are stopped.
pub fn drainable_jobs(jobs: &[&Job]) -> Vec<String> {
    jobs.iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter(|j| finished_at(j).is_none())
        .filter(|j| j.spec.as_ref().and_then(|s| s.suspend) != Some(true))
        .filter_map(|j| j.metadata.uid.clone())
        .collect()
}

/// The accumulator the phases of a pass read and add to.
struct Pass<'a> {
    obs: &'a Observed<'a>,
    plan: &'a Plan,
    plan_name: String,
    /// This controller instance, whose cordon claims are this Plan's.
    who: Claimant,
    /// New nodes may start: the Plan is valid and resolved (set once hashed).
    ready: bool,
    namespace: String,
    plan_label: String,
    /// This pass's time, as written into conditions and node entries.
    now: String,
    status: PlanStatus,
    conditions: Vec<Condition>,
    /// `status.applying` as persisted, as node names (the Go controller wrote hostnames).
    applying_before: Vec<String>,
    old_entries: BTreeMap<String, NodeStatus>,
    entries: BTreeMap<String, NodeStatus>,
    notes: Vec<Note>,
    before: Vec<Change>,
    after: Vec<Change>,
    requeue: Duration,
    /// Validation problems (the webhook's rules and the controller's own).
    problems: Vec<String>,
    /// Every Secret the hash needs is there.
    secrets_present: bool,
    version: String,
    resolved: bool,
    hash: String,
    nodes: BTreeMap<String, &'a Node>,
    /// Nodes labelled done in this pass.
    done_now: BTreeSet<String>,
    /// Nodes labelled done (or due to be) in this pass, for the Plan's one JobComplete event.
    completed: Vec<String>,
    /// Nodes whose claim is released in this pass.
    released: BTreeSet<String>,
    /// Nodes whose Go-era cordon is adopted in this pass.
    adopted_cordons: BTreeSet<String>,
    /// The Job of the current version and hash of each node.
    current_jobs: BTreeMap<String, &'a Job>,
    /// Unfinished Jobs of an earlier version or hash whose upgrade may have begun: they finish
    /// before the node runs the current one.
    finishing: BTreeMap<String, &'a Job>,
    /// The reason of the first failure of this pass (`JobFailed` or `DrainFailed`).
    failure: Option<(Reason, String)>,
    /// A failed node waiting for its automatic retry (for the Complete condition).
    retrying: Option<String>,
    /// The retry annotation's value, and the nodes it asked for that were retried.
    retry_request: Option<String>,
    retried_on_request: BTreeSet<String>,
    /// Nodes whose drain timed out with `onTimeout: Skip` (for the current hash).
    skipped: BTreeSet<String>,
    /// Why new starts are held, if they are: a closed health gate, or a Plan CRD that lacks this
    /// controller's spec fields; with the reason for the Complete condition.
    gate: Option<(Reason, String)>,
    /// Applying nodes whose Job waits to be created, or whose retry waits, because a pause or a
    /// closed gate holds them: the reason and what it says.
    held: BTreeMap<String, (Reason, String)>,
    /// Applying nodes whose Job the API server refused (or whose pod cannot be created): why.
    refused: BTreeMap<String, String>,
    finished_jobs: Vec<(bool, Duration)>,
    tally: Tally,
}

impl<'a> Pass<'a> {
    /// The pass's starting state: the stored status taken apart (conditions made present,
    /// `applying` read as node names, node entries by node).
    fn new(obs: &'a Observed<'a>) -> Self {
        let plan = obs.plan;
        let plan_name = plan.metadata.name.clone().unwrap_or_default();
        let now = stamp(obs.now);
        let mut status = plan.status.clone().unwrap_or_default();
        let mut conditions = status.conditions.take().unwrap_or_default();
        status::ensure(&mut conditions, COMPLETE, &now);
        status::ensure(&mut conditions, VALIDATED, &now);
        let nodes: BTreeMap<String, &Node> = obs
            .nodes
            .iter()
            .map(|n| (n.metadata.name.clone().unwrap_or_default(), *n))
            .collect();
        let applying_before = as_node_names(status.applying.as_deref().unwrap_or_default(), &nodes);
        let old_entries = status
            .nodes
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect();
        let namespace = plan.metadata.namespace.clone().unwrap_or_default();
        Pass {
            obs,
            plan,
            plan_label: format!("{PLAN_LABEL_PREFIX}{plan_name}"),
            plan_name,
            who: Claimant::new(&namespace, &obs.settings.controller_name),
            ready: false,
            namespace,
            now,
            status,
            conditions,
            applying_before,
            old_entries,
            entries: BTreeMap::new(),
            notes: Vec::new(),
            before: Vec::new(),
            after: Vec::new(),
            requeue: RESYNC,
            problems: Vec::new(),
            secrets_present: true,
            version: String::new(),
            resolved: false,
            hash: String::new(),
            nodes,
            done_now: BTreeSet::new(),
            completed: Vec::new(),
            released: BTreeSet::new(),
            adopted_cordons: BTreeSet::new(),
            current_jobs: BTreeMap::new(),
            finishing: BTreeMap::new(),
            failure: None,
            retrying: None,
            retry_request: plan
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_RETRY))
                .cloned(),
            retried_on_request: BTreeSet::new(),
            skipped: BTreeSet::new(),
            gate: None,
            held: BTreeMap::new(),
            refused: BTreeMap::new(),
            finished_jobs: Vec::new(),
            tally: Tally::default(),
        }
    }

    /// An event on the Plan.
    fn note(&mut self, warning: bool, reason: Reason, message: String) {
        self.notes
            .push(Note::new(Target::Plan, warning, reason, message));
    }

    /// The same one-shot event on the Plan and on a node, told once per `key`.
    fn note_once(&mut self, node: &str, warning: bool, reason: Reason, message: String, key: &str) {
        let on_plan = Note::new(Target::Plan, warning, reason, message.clone());
        self.notes.push(on_plan.once(key.to_owned()));
        let on_node = Note::new(Target::Node(node.to_owned()), warning, reason, message);
        self.notes.push(on_node.once(format!("{key}/node")));
    }

    /// Validation: the webhook's rules, a concurrency that is set, and the Secrets that must
    /// exist. Sets `Validated`.
    fn validate(&mut self) {
        let plan = self.plan;
        self.problems = validation::validate(plan)
            .problems
            .into_iter()
            .map(|p| p.message)
            .collect();
        if plan.spec.concurrency.is_none() {
            self.problems.push(CONCURRENCY_UNSET.to_owned());
        }
        for name in hashed_secrets(plan) {
            if !self.obs.secrets.contains_key(name) {
                self.secrets_present = false;
                self.problems.push(format!("secrets \"{name}\" not found"));
            }
        }
        if self.problems.is_empty() {
            if self.set_condition(VALIDATED, "True", Reason::PlanIsValid, "") {
                self.note(false, Reason::Validated, "Plan is valid".to_owned());
            }
        } else {
            let message = self.problems.join("; ");
            let before = status::get(&self.conditions, VALIDATED).and_then(|c| c.message.clone());
            self.set_condition(VALIDATED, "False", Reason::Error, &message);
            if before.as_deref() != Some(message.as_str()) {
                self.note(
                    true,
                    Reason::ValidateFailed,
                    format!("Failed to validate plan: {message}"),
                );
            }
        }
    }

    /// A Plan CRD in the cluster that lacks fields of this controller's (the Go controller's or
    /// Rancher's, which rewrite it when they start): the API server drops those fields, so the
    /// Plan says so (condition CRDCurrent, a warning event), and while spec fields are missing
    /// nothing new starts, since a pause, gate or retry setting stored in them is lost.
    fn crd_gaps(&mut self) {
        let gaps = self.obs.crd_gaps;
        if gaps.is_empty() {
            self.conditions.retain(|c| c.type_ != CRD_CURRENT);
            return;
        }
        let mut message = format!(
            "the Plan CRD in the cluster lacks {}, which the API server then drops (the Go \
             controller, and Rancher's, rewrite the CRD when they start); apply this controller's \
             CRD: kubectl apply -f deploy/crd.yaml (or helm upgrade)",
            gaps.join(", ")
        );
        if gaps.iter().any(|g| g.starts_with("spec.")) {
            message.push_str(
                "; no node starts until then, since a pause, a gate or a retry setting stored in \
                 those fields is lost",
            );
            let hold = "the Plan CRD in the cluster lacks this controller's spec fields (see the \
                        CRDCurrent condition)";
            self.gate = Some((Reason::CRDOutdated, hold.to_owned()));
        }
        self.set_condition(CRD_CURRENT, "False", Reason::CRDOutdated, &message);
        let key = format!("{}/{}", Reason::CRDOutdated, gaps.join(","));
        self.notes
            .push(Note::new(Target::Plan, true, Reason::CRDOutdated, message).once(key));
    }

    /// Resolution, whatever validation found: `latestVersion` and `LatestResolved`.
    fn resolve(&mut self) {
        status::ensure(&mut self.conditions, LATEST_RESOLVED, &self.now);
        let previous = self.status.latest_version.clone().unwrap_or_default();
        match self.obs.resolution.clone() {
            Resolution::Version(v) => self.resolved_to(resolve::munge(&v), Reason::Version),
            Resolution::Channel(v) => self.resolved_to(resolve::munge(&v), Reason::Channel),
            Resolution::ChannelFailed { error, retry } => {
                self.requeue = self.requeue.min(retry);
                let failed = format!("Failed to resolve latest version from Spec.Channel: {error}");
                self.note(true, Reason::ResolveFailed, failed.clone());
                if previous.is_empty() {
                    self.set_condition(LATEST_RESOLVED, "False", Reason::ChannelError, &failed);
                } else {
                    // The rollout continues with the version resolved before; say the poll failed.
                    let message =
                        format!("channel poll failed, still applying {previous}: {error}");
                    self.set_condition(LATEST_RESOLVED, "True", Reason::Channel, &message);
                }
            }
            Resolution::ChannelNotDue(after) => self.requeue = self.requeue.min(after),
            Resolution::Missing => {
                let message = "cannot resolve plan: missing channel and version";
                if self.set_condition(LATEST_RESOLVED, "False", Reason::Error, message) {
                    self.note(true, Reason::ResolveFailed, message.to_owned());
                }
            }
        }
        self.version = self.status.latest_version.clone().unwrap_or_default();
        self.resolved =
            status::is(&self.conditions, LATEST_RESOLVED, "True") && !self.version.is_empty();
    }

    /// Sets a condition; returns whether its status changed.
    fn set_condition(&mut self, type_: &str, status_: &str, reason: Reason, message: &str) -> bool {
        let wanted = Wanted::new(status_, reason.as_str(), message);
        status::set(&mut self.conditions, type_, &wanted, &self.now)
    }

    /// A version was resolved (from `reason`: Version or Channel); a new one is told and makes
    /// the Plan incomplete.
    fn resolved_to(&mut self, version: String, reason: Reason) {
        let was_resolved = status::is(&self.conditions, LATEST_RESOLVED, "True");
        let previous = self.status.latest_version.clone().unwrap_or_default();
        if !was_resolved || previous != version {
            self.note(
                false,
                Reason::Resolved,
                format!("Resolved latest version from Spec.{reason}: {version}"),
            );
            self.set_condition(COMPLETE, "False", Reason::Resolved, "");
        }
        self.set_condition(LATEST_RESOLVED, "True", reason, "");
        self.status.latest_version = Some(version);
    }

    /// The hash of the version just resolved, when every Secret it covers is there (else the
    /// previous hash stays, as in the Go controller).
    fn hash(&mut self) {
        if self.resolved && self.secrets_present {
            let mut with_version = self.plan.clone();
            with_version.status = Some(PlanStatus {
                latest_version: Some(self.version.clone()),
                ..self.status.clone()
            });
            let secrets: Vec<&Secret> = hashed_secrets(self.plan)
                .filter_map(|name| self.obs.secrets.get(name).copied())
                .collect();
            self.status.latest_hash =
                Some(hash::plan_hash(&hash::go_shape(&with_version), &secrets));
        }
        self.hash = self.status.latest_hash.clone().unwrap_or_default();
    }

    /// The Jobs of the Plan: malformed ones and those of deleted nodes go; finished ones complete
    /// their node and expire after their TTL; unfinished ones of an earlier version or hash go
    /// unless their upgrade may have begun, which is left to finish.
    fn handle_jobs(&mut self) {
        for &job in self.obs.jobs {
            let name = job.metadata.name.clone().unwrap_or_default();
            let labels = job.metadata.labels.clone().unwrap_or_default();
            let node_name = labels.get(LABEL_NODE).cloned();
            if let Some(node) = node_name
                .as_deref()
                .and_then(|n| self.nodes.get(n).copied())
            {
                self.adopt_go_cordon(job, node);
            }
            if job.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let (Some(node_name), Some(job_version)) = (node_name, labels.get(LABEL_VERSION))
            else {
                self.before.push(Change::DeleteJob {
                    name,
                    why: "it lacks the node or version label".into(),
                    unless_begun: false,
                });
                continue;
            };
            let Some(node) = self.nodes.get(&node_name).copied() else {
                self.before.push(Change::DeleteJob {
                    name,
                    why: format!("node {node_name} no longer exists"),
                    unless_begun: false,
                });
                continue;
            };
            let job_hash = labels.get(&self.plan_label).cloned().unwrap_or_default();
            let finished = finished_at(job);
            let current = *job_version == self.version && job_hash == self.hash;
            if finished.is_none() {
                if current {
                    self.sync_ttl(job);
                    self.current_jobs.insert(node_name, job);
                } else if pods::upgrade_may_have_started(job, self.obs.pods) {
                    self.sync_ttl(job);
                    self.finishing.insert(node_name, job);
                } else {
                    let why = if *job_version != self.version {
                        format!("it applies version {job_version}, not {}", self.version)
                    } else {
                        format!("it applies hash {job_hash}, superseded by {}", self.hash)
                    };
                    self.before.push(Change::DeleteJob {
                        name,
                        why,
                        unless_begun: true,
                    });
                }
                continue;
            }
            if *job_version != self.version {
                // As the Go controller: a finished Job of another version is dropped unlabelled.
                self.before.push(Change::DeleteJob {
                    name,
                    why: format!("it applied version {job_version}, not {}", self.version),
                    unless_begun: false,
                });
                continue;
            }
            let Some((succeeded, at)) = finished else {
                continue;
            };
            let label = node_label(node, &self.plan_label);
            // Recorded: the node carries this Job's hash, or the Job's hash was superseded and
            // the node already carries a hash of this Plan (another Job's, maybe the current
            // one): labelling it back would undo that, and two Jobs would relabel it in turn.
            let recorded =
                label == Some(job_hash.as_str()) || (job_hash != self.hash && label.is_some());
            // A succeeded Job whose node is not labelled yet never expires: its node would run
            // again.
            if (!succeeded || recorded) && self.expire(job, at) {
                continue;
            }
            self.sync_ttl(job);
            if succeeded && !recorded {
                self.complete(job, node, &job_hash, at);
            } else if !succeeded && current {
                self.current_jobs.insert(node_name, job);
            }
        }
        self.note_completions();
    }

    /// One Plan event for the nodes whose Jobs completed in this pass (each node gets its own);
    /// the recorder merges it with those of the next passes of a wave.
    fn note_completions(&mut self) {
        let nodes = std::mem::take(&mut self.completed);
        if nodes.is_empty() {
            return;
        }
        self.notes.push(
            Note::new(
                Target::Plan,
                false,
                Reason::JobComplete,
                completed_message(&nodes),
            )
            .merging(Merge::Nodes(nodes)),
        );
    }

    /// A Job the Go controller created cordoned its node (through its kubectl container) when the
    /// Plan cordons or drains; the Go controller uncordons such a node when the Job succeeds. The
    /// cordon becomes this Plan's claim, so it is returned the same way, also when a Job of this
    /// controller finishes the node's upgrade. A node cordoned by an administrator before this
    /// controller's own Jobs stays cordoned.
    fn adopt_go_cordon(&mut self, job: &Job, node: &Node) {
        let cordons = self.plan.spec.cordon.unwrap_or(false) || self.plan.spec.drain.is_some();
        let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        let node_name = node.metadata.name.clone().unwrap_or_default();
        if cordons
            && unschedulable
            && is_go_era(job)
            && claims(node).next().is_none()
            && self.adopted_cordons.insert(node_name.clone())
        {
            self.before.push(Change::AdoptCordon { node: node_name });
        }
    }

    /// Keeps a Job's TTL what the Plan asks now: `postCompleteDelay` may have grown since the Job
    /// was created, and a Job deleted before its node is labelled would run the node again.
    fn sync_ttl(&mut self, job: &Job) {
        let wanted = job::ttl_seconds(self.plan, self.obs.settings);
        let spec_ttl = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished);
        let annotated = annotation(job, ANNOTATION_TTL).and_then(|t| t.parse::<i32>().ok());
        if spec_ttl != Some(wanted) || annotated != Some(wanted) {
            self.before.push(Change::UpdateJob {
                name: job.metadata.name.clone().unwrap_or_default(),
                fields: JobFields {
                    ttl_seconds_after_finished: Some(wanted),
                    ..JobFields::default()
                },
            });
        }
    }

    /// Deletes a finished Job after its TTL (also when the TTL controller is off); returns
    /// whether it did.
    fn expire(&mut self, job: &Job, finished: Timestamp) -> bool {
        let ttl = i64::from(job::ttl_seconds(self.plan, self.obs.settings));
        let expiry = finished
            .checked_add(jiff::SignedDuration::from_secs(ttl))
            .unwrap_or(finished);
        if self.obs.now >= expiry {
            self.before.push(Change::DeleteJob {
                name: job.metadata.name.clone().unwrap_or_default(),
                why: format!("it finished more than {ttl}s ago"),
                unless_begun: false,
            });
            return true;
        }
        self.requeue = self.requeue.min(until(self.obs.now, expiry));
        false
    }

    /// A Job succeeded: the node goes back into service at once, and is labelled done (with the
    /// Job's hash) after `postCompleteDelay`, which holds its slot until then.
    fn complete(&mut self, job: &Job, node: &Node, job_hash: &str, at: Timestamp) {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        let seen = matches!(
            self.old_phase(&node_name),
            Some(Phase::WaitingDelay | Phase::WaitingHealthy)
        );
        if !seen {
            self.finished_jobs.push((true, ran_for(job, at)));
        }
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let claimed = has_claim(node, &self.plan_name, &self.who)
            || self.adopted_cordons.contains(&node_name);
        if claimed && self.released.insert(node_name.clone()) {
            self.before.push(Change::Release {
                node: node_name.clone(),
            });
        }
        let delay = post_complete_delay(self.plan);
        let ready_at = at
            .checked_add(jiff::SignedDuration::from_nanos(delay.unwrap_or(0)))
            .unwrap_or(at);
        if self.obs.now < ready_at {
            self.requeue = self.requeue.min(until(self.obs.now, ready_at));
            let message = format!("waiting postCompleteDelay until {}", stamp(ready_at));
            let entry = self.entry(&node_name, Phase::WaitingDelay, &job_name, &message);
            if self.old_phase(&node_name) != Some(Phase::WaitingDelay) {
                let text = format!(
                    "Job completed on Node {node_name}, waiting {} PostCompleteDelay",
                    duration::format(delay.unwrap_or(0))
                );
                let key = format!("JobCompleteWaiting/{}", uid_of(job));
                self.note_once(&node_name, false, Reason::JobCompleteWaiting, text, &key);
            }
            self.entries.insert(node_name, entry);
            return;
        }
        if self.wait_until_healthy(node, &job_name, ready_at) {
            return;
        }
        self.label_done(&node_name, job_hash);
        self.notes.push(Note::new(
            Target::Node(node_name.clone()),
            false,
            Reason::JobComplete,
            format!(
                "Job completed on Node {node_name} for Plan {} (version {})",
                self.plan_name, self.version
            ),
        ));
        self.completed.push(node_name);
    }

    /// Labels a node done with `job_hash` (and the Plan's postCompleteLabels).
    fn label_done(&mut self, node_name: &str, job_hash: &str) {
        let mut labels = completion_labels(self.plan, &self.version, &self.hash);
        labels.insert(self.plan_label.clone(), job_hash.to_owned());
        self.before.push(Change::LabelNode {
            node: node_name.to_owned(),
            labels,
        });
        if job_hash == self.hash {
            self.done_now.insert(node_name.to_owned());
        }
    }

    /// `healthGates.nodeReadyFor`: a node whose Job succeeded (its delay over at `from`) keeps
    /// its slot, as `WaitingHealthy`, until it has been Ready and schedulable for that long;
    /// returns whether it waits.
    fn wait_until_healthy(&mut self, node: &Node, job_name: &str, from: Timestamp) -> bool {
        let Some((message, recheck)) = self.ready_gate(node, from) else {
            return false;
        };
        let node_name = node.metadata.name.clone().unwrap_or_default();
        self.requeue = self.requeue.min(recheck);
        if self.old_phase(&node_name) != Some(Phase::WaitingHealthy) {
            let text = format!("Job {job_name} completed on Node {node_name}; {message}");
            self.notes.push(
                Note::new(
                    Target::Node(node_name.clone()),
                    false,
                    Reason::WaitingForHealth,
                    text,
                )
                .once(format!("WaitingForHealth/{job_name}/{}", stamp(from))),
            );
        }
        let entry = self.entry(&node_name, Phase::WaitingHealthy, job_name, &message);
        self.entries.insert(node_name, entry);
        true
    }

    /// Why a node does not pass `healthGates.nodeReadyFor` yet (and when to look again), or
    /// `None` when it does: Ready and schedulable now, and Ready since `from` or later for the
    /// whole time.
    fn ready_gate(&self, node: &Node, from: Timestamp) -> Option<(String, Duration)> {
        let needed = self
            .plan
            .spec
            .health_gates
            .as_ref()
            .and_then(|g| g.node_ready_for.as_deref())
            .and_then(|d| duration::parse(d).ok())
            .filter(|n| *n > 0)?;
        let wanted = format!(
            "Ready and schedulable for {} (healthGates.nodeReadyFor)",
            duration::format(needed)
        );
        let name = node.metadata.name.as_deref().unwrap_or_default();
        let Some(ready_since) = ready_since(node) else {
            return Some((
                format!("waiting for the node to be {wanted}; it is not Ready"),
                NOT_READY_RETRY,
            ));
        };
        // A cordon some Plan holds is waited out (it is released when that Plan is done with
        // the node); a cordon nobody claims is someone else's (an administrator, kured) and not
        // the rollout's to wait for: the node is judged on its readiness alone.
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
            && !self.released.contains(name);
        let holders: Vec<&str> = claims(node).collect();
        if cordoned && !holders.is_empty() {
            return Some((
                format!(
                    "waiting for the node to be {wanted}; it is cordoned for {}",
                    listed("Plan", &holders)
                ),
                NOT_READY_RETRY,
            ));
        }
        let open = from
            .max(ready_since)
            .checked_add(jiff::SignedDuration::from_nanos(needed))
            .unwrap_or(from);
        (self.obs.now < open).then(|| {
            (
                format!("waiting until {} for the node to be {wanted}", stamp(open)),
                until(self.obs.now, open),
            )
        })
    }

    /// The health gates that hold new starts: every selected node Ready
    /// (`healthGates.allNodesReady`), and the Prometheus query without series.
    fn health_gates(&mut self) {
        let Some(gates) = &self.plan.spec.health_gates else {
            return;
        };
        let mut closed = Vec::new();
        if gates.all_nodes_ready == Some(true)
            && let Ok(Some(selector)) = select::node_selector(self.plan)
        {
            let not_ready: Vec<&str> = self
                .nodes
                .iter()
                .filter(|(_, n)| select::eligible(&self.plan_name, &selector, n))
                .filter(|(_, n)| ready_since(n).is_none())
                .map(|(name, _)| name.as_str())
                .collect();
            if !not_ready.is_empty() {
                closed.push(format!(
                    "{} not Ready (healthGates.allNodesReady)",
                    listed("node", &not_ready)
                ));
            }
        }
        match &self.obs.query {
            Some(QueryOutcome::Firing(series)) => closed.push(format!(
                "the Prometheus query returns {series} (healthGates.prometheus)"
            )),
            Some(QueryOutcome::Failed(error)) => closed.push(format!(
                "the Prometheus query failed: {error} (healthGates.prometheus)"
            )),
            Some(QueryOutcome::Clear) | None => {}
        }
        if !closed.is_empty() {
            self.requeue = self.requeue.min(GATE_RETRY);
            if self.gate.is_none() {
                self.gate = Some((Reason::WaitingForHealth, closed.join("; ")));
            }
        }
    }

    /// The nodes that apply or finish the Plan now: those already applying, or still finishing
    /// an earlier Job, are kept (counting against the concurrency); others start in the stable
    /// per-Plan order up to `concurrency` (a percentage counts the eligible nodes, done or not),
    /// none while the Plan is paused. Without a `nodeSelector` nothing is selected.
    fn select(&self) -> Vec<&'a Node> {
        let Ok(Some(selector)) = select::node_selector(self.plan) else {
            return Vec::new();
        };
        let eligible = self
            .nodes
            .values()
            .filter(|n| select::eligible(&self.plan_name, &selector, n))
            .count();
        let candidates: Vec<&Node> = self
            .nodes
            .values()
            .copied()
            .filter(|n| {
                let name = n.metadata.name.as_deref().unwrap_or_default();
                !self.done_now.contains(name) && !self.skipped.contains(name)
            })
            .collect();
        let concurrency = if self.plan.spec.paused == Some(true) || self.gate.is_some() {
            0
        } else {
            self.plan
                .spec
                .concurrency
                .as_ref()
                .and_then(|c| c.nodes(eligible))
                .unwrap_or(0)
        };
        select::select(
            self.plan,
            &selector,
            &candidates,
            &self.running(),
            concurrency,
            &self.hash,
        )
    }

    /// The nodes with an upgrade under way: persisted as applying, or with a running Job.
    fn running(&self) -> Vec<String> {
        let mut running: BTreeSet<String> = self.applying_before.iter().cloned().collect();
        running.extend(self.finishing.keys().cloned());
        running.extend(
            self.current_jobs
                .iter()
                .filter(|(_, j)| finished_at(j).is_none())
                .filter(|(_, j)| j.spec.as_ref().and_then(|s| s.parallelism) != Some(0))
                .map(|(n, _)| n.clone()),
        );
        running
            .into_iter()
            .filter(|n| !self.skipped.contains(n))
            .collect()
    }

    /// When the Plan may not start anything (invalid or unresolved): the nodes whose upgrade is
    /// under way keep their place, so their Jobs are followed to the end; nothing else is chosen.
    fn continuing(&self) -> Vec<&'a Node> {
        self.running()
            .iter()
            .filter(|n| !self.done_now.contains(*n))
            .filter_map(|n| self.nodes.get(n).copied())
            .collect()
    }

    /// A rollout may only start inside its window; once started it runs to completion.
    fn window_closed(&self, selected: &[&Node]) -> bool {
        let Some(spec) = &self.plan.spec.window else {
            return false;
        };
        if selected.is_empty() || !self.running().is_empty() {
            return false;
        }
        let days: Vec<String> = spec.days.iter().flatten().map(|d| d.0.clone()).collect();
        !window::TimeWindow::parse(
            &days,
            spec.start_time.as_deref().unwrap_or_default(),
            spec.end_time.as_deref().unwrap_or_default(),
            spec.time_zone.as_deref().unwrap_or_default(),
        )
        .is_ok_and(|w| w.contains(self.obs.now))
    }

    /// The window is closed and nothing runs: `Complete` says so (told once), and the Plan is
    /// looked at again within a minute.
    fn wait_for_window(&mut self) {
        let message = "current time is not within configured window";
        if status::get(&self.conditions, COMPLETE).and_then(|c| c.reason.as_deref())
            != Some(Reason::Waiting.as_str())
        {
            self.note(
                false,
                Reason::Waiting,
                format!(
                    "Waiting for start of Spec.Window to sync Jobs for version {}. Hash: {}",
                    self.version, self.hash
                ),
            );
        }
        self.set_condition(COMPLETE, "False", Reason::Waiting, message);
        self.requeue = self.requeue.min(WINDOW_RETRY);
    }

    /// Each selected node: finishing an earlier Job, started (when the Plan is ready), failed,
    /// replaced after an edit, or followed through its gate (cordon, drain, upgrade).
    fn track(&mut self, selected: &[&'a Node], ready: bool) {
        let gated = self.plan.spec.cordon.unwrap_or(false) || self.plan.spec.drain.is_some();
        for &node in selected {
            let node_name = node.metadata.name.clone().unwrap_or_default();
            if self.entries.contains_key(&node_name) {
                continue; // waiting out its delay
            }
            if let Some(job) = self.finishing.get(&node_name).copied() {
                let job_name = job.metadata.name.clone().unwrap_or_default();
                let message = "finishing the upgrade its Job began before the Plan changed; the \
                               node runs the Plan again when it ends";
                let entry = self.entry(&node_name, Phase::Upgrading, &job_name, message);
                self.entries.insert(node_name, entry);
                continue;
            }
            let existing = self.current_jobs.get(&node_name).copied();
            let desired = ready.then(|| job::build(&self.current_plan(), node, self.obs.settings));
            match (existing, desired) {
                (None, Some(desired)) => self.start(&node_name, desired, gated),
                (None, None) => {
                    if let Some(old) = self.old_entries.get(&node_name).cloned() {
                        self.entries.insert(node_name, old);
                    }
                }
                (Some(job), desired) => self.follow(&node_name, job, desired.as_ref(), gated),
            }
        }
    }

    /// The Plan as Jobs are built from it: with the version and hash of this pass.
    fn current_plan(&self) -> Plan {
        let mut current = self.plan.clone();
        current.status = Some(PlanStatus {
            latest_version: Some(self.version.clone()),
            latest_hash: Some(self.hash.clone()),
            ..PlanStatus::default()
        });
        current
    }

    /// A selected node without a Job: it gets one, unless it failed with the very pod template
    /// the Plan still has (a failure stays a failure, even after its Job expired, until the
    /// Plan's pod template or hash changes).
    fn start(&mut self, node_name: &str, desired: Job, gated: bool) {
        let desired_name = desired.metadata.name.clone().unwrap_or_default();
        let template = annotation(&desired, ANNOTATION_TEMPLATE).unwrap_or_default();
        let previous = self.old_entries.get(node_name).cloned();
        if let Some(waiting) = previous.as_ref().filter(|p| {
            matches!(
                Phase::parse(&p.phase),
                Some(Phase::WaitingDelay | Phase::WaitingHealthy)
            ) && p.job.as_deref() == Some(desired_name.as_str())
        }) {
            self.completed_without_job(node_name, &desired_name, waiting);
            return;
        }
        let mut retries = None;
        if let Some(failed) = previous.as_ref().filter(|p| {
            p.phase == Phase::Failed.as_str()
                && p.template.as_deref() == Some(template.as_str())
                && p.job.as_deref() == Some(desired_name.as_str())
        }) {
            // Its Job expired: a retry that is due creates the Job at once.
            let since = failed.since.clone().unwrap_or_default();
            let message = failed.message.clone().unwrap_or_default();
            match self.retry_due(node_name, &since, failed.retries.unwrap_or(0)) {
                RetryDue::Now { retries: next, why } => {
                    self.note_retry(node_name, &desired_name, &since, &why, &message);
                    retries = Some(next);
                }
                RetryDue::At(at) => {
                    self.wait_for_retry(at, &message);
                    self.entries.insert(node_name.to_owned(), failed.clone());
                    return;
                }
                RetryDue::Held((reason, why)) => {
                    let mut entry = failed.clone();
                    let shown = format!("{message}; its retry waits while {why}");
                    entry.message = Some(shown.clone());
                    self.held.insert(node_name.to_owned(), (reason, shown));
                    self.entries.insert(node_name.to_owned(), entry);
                    return;
                }
                RetryDue::Never => {
                    self.record_failure(Reason::JobFailed, message);
                    self.entries.insert(node_name.to_owned(), failed.clone());
                    return;
                }
            }
        } else if !self.retried_on_request.contains(node_name)
            && previous.as_ref().is_none_or(|p| {
                // A retry decided last pass (on request, or when nothing held it) goes on.
                p.phase != Phase::Retrying.as_str()
                    || p.job.as_deref() != Some(desired_name.as_str())
            })
            && let Some((reason, why)) = self.hold(node_name)
        {
            // Its Job went away (deleted by hand, or retried) while a pause or a gate holds the
            // node: it keeps its slot, and nothing of this Plan keeps it cordoned meanwhile.
            let message = format!("its Job is created once nothing holds the node: {why}");
            let entry = self.entry(node_name, Phase::Preparing, &desired_name, &message);
            self.entries.insert(node_name.to_owned(), entry);
            self.held.insert(
                node_name.to_owned(),
                (reason, format!("node {node_name}: {message}")),
            );
            if let Some(node) = self.nodes.get(node_name).copied()
                && has_claim(node, &self.plan_name, &self.who)
                && self.released.insert(node_name.to_owned())
            {
                self.before.push(Change::Release {
                    node: node_name.to_owned(),
                });
            }
            return;
        }
        if let Some(Refusal::Job {
            template: refused,
            message,
            retry_at,
        }) = self.obs.refusals.get(&desired_name)
            && *refused == template
            && self.obs.now < *retry_at
        {
            let text = format!("the API server refused Job {desired_name}: {message}");
            self.refuse(node_name, &desired_name, text);
            if let Some(entry) = self.entries.get_mut(node_name) {
                entry.message = Some(format!(
                    "{}; trying again at {}",
                    entry.message.clone().unwrap_or_default(),
                    stamp(*retry_at)
                ));
            }
            self.requeue = self.requeue.min(until(self.obs.now, *retry_at));
            return;
        }
        self.adopt_go_applying_cordon(node_name, gated);
        self.after.push(Change::CreateJob(Box::new(desired)));
        if previous.is_none() {
            self.notes.push(
                Note::new(
                    Target::Node(node_name.to_owned()),
                    false,
                    Reason::Upgrading,
                    format!(
                        "Plan {} starts Job {desired_name} (version {})",
                        self.plan_name, self.version
                    ),
                )
                .once(format!("Upgrading/{desired_name}/{template}")),
            );
        }
        let phase = if gated {
            Phase::Preparing
        } else {
            Phase::Upgrading
        };
        let mut entry = self.entry(node_name, phase, &desired_name, "");
        entry.retries = retries.or(entry.retries);
        self.entries.insert(node_name.to_owned(), entry);
    }

    /// A node whose Job succeeded and went away (deleted by hand, or expired) while it waited out
    /// `postCompleteDelay` or `healthGates.nodeReadyFor`: it never runs again for this hash; it
    /// is labelled done once both are over.
    fn completed_without_job(&mut self, node_name: &str, job_name: &str, waiting: &NodeStatus) {
        let since: Timestamp = waiting
            .since
            .as_deref()
            .and_then(|t| t.parse().ok())
            .unwrap_or(self.obs.now);
        let from = if waiting.phase == Phase::WaitingDelay.as_str() {
            let delay = post_complete_delay(self.plan).unwrap_or(0);
            let ready_at = since
                .checked_add(jiff::SignedDuration::from_nanos(delay))
                .unwrap_or(since);
            if self.obs.now < ready_at {
                self.requeue = self.requeue.min(until(self.obs.now, ready_at));
                self.entries.insert(node_name.to_owned(), waiting.clone());
                return;
            }
            ready_at
        } else {
            since
        };
        if let Some(node) = self.nodes.get(node_name).copied()
            && !self.wait_until_healthy(node, job_name, from)
        {
            let hash = self.hash.clone();
            self.label_done(node_name, &hash);
        }
    }

    /// A node the Go controller named in `applying` (no entry of ours) and that is cordoned with
    /// no claim: its Go Job cordoned it and went away before the takeover. The Go controller
    /// would uncordon it when the upgrade succeeds, so the cordon becomes this Plan's claim.
    fn adopt_go_applying_cordon(&mut self, node_name: &str, gated: bool) {
        let Some(node) = self.nodes.get(node_name).copied() else {
            return;
        };
        let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
        if gated
            && unschedulable
            && self.applying_before.iter().any(|n| n == node_name)
            && !self.old_entries.contains_key(node_name)
            && claims(node).next().is_none()
            && self.adopted_cordons.insert(node_name.to_owned())
        {
            self.before.push(Change::AdoptCordon {
                node: node_name.to_owned(),
            });
        }
    }

    /// A selected node with a Job of the current hash. `desired` is the Job the Plan asks for now
    /// (`None` while the Plan is not ready: then the Job is only followed, never replaced).
    fn follow(&mut self, node_name: &str, job: &'a Job, desired: Option<&Job>, gated: bool) {
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let desired_template = desired.and_then(|d| annotation(d, ANNOTATION_TEMPLATE));
        let desired_run = desired.and_then(|d| annotation(d, ANNOTATION_RUN));
        let mut template = annotation(job, ANNOTATION_TEMPLATE);
        let finished = finished_at(job);
        let begun = finished.is_none() && pods::upgrade_may_have_started(job, self.obs.pods);
        if let (Some(desired_template), Some(desired_run)) = (&desired_template, &desired_run)
            && template.as_ref() != Some(desired_template)
        {
            let run = annotation(job, ANNOTATION_RUN);
            if template.is_none() {
                // A Go controller's Job. Not begun: this controller's own Job replaces it
                // (native drain, the gate). Begun or failed: adopted as the Plan is now.
                if finished.is_none() && !begun {
                    self.replace(
                        node_name,
                        &job_name,
                        "replacing the Go controller's Job, whose upgrade had not begun",
                        true,
                    );
                    return;
                }
                self.restamp(&job_name, desired_template, desired_run, true);
                template = Some(desired_template.clone());
            } else if begun && run.as_ref().is_none_or(|r| r == desired_run) {
                // Once the upgrade may have begun, only a change of what it runs ends it: an
                // edit of the drain, tolerations or the Job's rendering (a Job of an earlier
                // version of this controller, without a run digest) is recorded, not applied.
                self.restamp(&job_name, desired_template, desired_run, false);
                template = Some(desired_template.clone());
            }
        }
        let changed = matches!((&template, &desired_template), (Some(t), Some(d)) if t != d);
        if let Some((reason, message)) = self.failure_of(job, node_name) {
            if !changed {
                self.fail(node_name, job, reason, message, template);
                return;
            }
        } else if let (Some(desired), false) = (desired, changed)
            && finished.is_none()
        {
            self.sync_job_fields(job, desired);
        }
        if changed {
            // Begun, only a change of what it runs gets here; else it must not have begun.
            self.replace(
                node_name,
                &job_name,
                "replacing the Job after a Plan edit",
                !begun,
            );
            return;
        }
        if finished.is_none() && !pods::has_pod(job, self.obs.pods) {
            // No pod event wakes the Plan while the Job controller fails to create one: the
            // reconcile looks again (and reads why, see `Refusal::Pod`).
            self.requeue = self.requeue.min(NO_POD_RETRY);
        }
        if finished.is_none()
            && let Some(Refusal::Pod { message }) = self.obs.refusals.get(&job_name)
        {
            let text = format!("the pod of Job {job_name} cannot be created: {message}");
            self.refuse(node_name, &job_name, text);
            return;
        }
        let (phase, message) = if gated && finished.is_none() {
            self.gate_phase(node_name, job, desired.is_some())
        } else {
            (Phase::Upgrading, String::new())
        };
        let entry = self.entry(node_name, phase, &job_name, &message);
        self.entries.insert(node_name.to_owned(), entry);
    }

    /// A node whose Job the API server refused, or whose pod cannot be created: its entry says
    /// why, and each distinct message is told once in a warning event on the Plan and the node.
    fn refuse(&mut self, node_name: &str, job_name: &str, text: String) {
        let entry = self.entry(node_name, Phase::Preparing, job_name, &text);
        self.entries.insert(node_name.to_owned(), entry);
        let key = format!("{}/{job_name}/{text}", Reason::JobRefused);
        let message = format!("Node {node_name}: {text}");
        self.note_once(node_name, true, Reason::JobRefused, message, &key);
        self.refused.insert(node_name.to_owned(), text);
    }

    /// Records on a Job the pod template and run of the Plan as it is now (`adopted`: a Go
    /// controller's Job taken over).
    fn restamp(&mut self, job_name: &str, template: &str, run: &str, adopted: bool) {
        let mut annotations = BTreeMap::from([
            (ANNOTATION_TEMPLATE.to_owned(), template.to_owned()),
            (ANNOTATION_RUN.to_owned(), run.to_owned()),
        ]);
        if adopted {
            annotations.insert(ANNOTATION_ADOPTED.to_owned(), self.now.clone());
        }
        self.before.push(Change::AnnotateJob {
            name: job_name.to_owned(),
            annotations,
        });
    }

    /// What holds a node whose Job would be created now (a retry, or a Job that went away):
    /// `spec.paused`, the node's pause label, or a closed health gate; the reason for the
    /// Complete condition and what to say. Jobs that exist are never held.
    fn hold(&self, node_name: &str) -> Option<(Reason, String)> {
        if self.plan.spec.paused == Some(true) {
            return Some((Reason::Paused, "spec.paused is true".into()));
        }
        if self.nodes.get(node_name).is_some_and(|n| select::paused(n)) {
            let why = format!("node {node_name} is labelled {LABEL_PAUSE}=true");
            return Some((Reason::Paused, why));
        }
        self.gate.clone()
    }

    /// Deletes a node's Job so the next pass creates the one the Plan asks for now.
    fn replace(&mut self, node_name: &str, job_name: &str, why: &str, unless_begun: bool) {
        self.before.push(Change::DeleteJob {
            name: job_name.to_owned(),
            why: why.to_owned(),
            unless_begun,
        });
        let entry = self.entry(node_name, Phase::Upgrading, job_name, why);
        self.entries.insert(node_name.to_owned(), entry);
    }

    /// Why a Job failed: the Job failed (its reason and message), or its node could not be drained.
    fn failure_of(&self, job: &Job, node_name: &str) -> Option<(Reason, String)> {
        match (finished_at(job), annotation(job, ANNOTATION_DRAIN_FAILED)) {
            (Some((false, _)), _) => Some((
                Reason::JobFailed,
                failure_message(job, &self.namespace, node_name),
            )),
            (_, Some(message)) => Some((Reason::DrainFailed, message)),
            _ => None,
        }
    }

    /// A failed node keeps its slot, recording the pod template it failed with (once), so an
    /// edit of the Plan that changes it retries the node.
    fn fail(
        &mut self,
        node_name: &str,
        job: &Job,
        reason: Reason,
        message: String,
        template: Option<String>,
    ) {
        let job_name = job.metadata.name.as_deref().unwrap_or_default();
        let previous = self
            .old_entries
            .get(node_name)
            .filter(|p| p.phase == Phase::Failed.as_str() && p.job.as_deref() == Some(job_name));
        let since = previous
            .and_then(|p| p.since.clone())
            .unwrap_or_else(|| self.now.clone());
        let template = previous.and_then(|p| p.template.clone()).or(template);
        let retries = self
            .old_entries
            .get(node_name)
            .filter(|p| p.job.as_deref() == Some(job_name))
            .and_then(|p| p.retries);
        if previous.is_none() {
            if let Some((false, at)) = finished_at(job) {
                self.finished_jobs.push((false, ran_for(job, at)));
            }
            // Per Job object: a Job replaced under the same name that fails again is told again.
            let key = format!("{reason}/{}", uid_of(job));
            self.note_once(node_name, true, reason, message.clone(), &key);
        }
        let shown = match self.retry_due(node_name, &since, retries.unwrap_or(0)) {
            RetryDue::Now { retries, why } => {
                self.retry(node_name, job_name, &since, retries, &why, &message);
                return;
            }
            RetryDue::At(at) => {
                let shown = format!(
                    "{message}; retry {} at {}",
                    retry_ordinal(self.plan, retries),
                    stamp(at)
                );
                self.wait_for_retry(at, &shown);
                shown
            }
            RetryDue::Held((reason, why)) => {
                let shown = format!(
                    "{message}; retry {} waits while {why}",
                    retry_ordinal(self.plan, retries)
                );
                self.held
                    .insert(node_name.to_owned(), (reason, shown.clone()));
                shown
            }
            RetryDue::Never => {
                self.record_failure(reason, message.clone());
                message
            }
        };
        self.entries.insert(
            node_name.to_owned(),
            NodeStatus {
                name: node_name.to_owned(),
                phase: Phase::Failed.as_str().into(),
                job: Some(job_name.to_owned()),
                message: Some(shown),
                since: Some(since),
                template,
                retries,
            },
        );
    }

    /// When a failed node (failed since `since`, retried `retries` times) is tried again: now
    /// when the retry annotation names it (its count starts over), or automatically
    /// (`spec.retry`) once its backoff has passed and nothing holds the node (a pause, a closed
    /// gate); never when its retries are used up.
    fn retry_due(&mut self, node_name: &str, since: &str, retries: i32) -> RetryDue {
        if self.ready
            && let Some(request) = &self.retry_request
            && retry_requested(request, node_name)
        {
            self.retried_on_request.insert(node_name.to_owned());
            return RetryDue::Now {
                retries: 0,
                why: format!("retried on request ({ANNOTATION_RETRY})"),
            };
        }
        let Some((limit, backoff)) = retry_policy(self.plan) else {
            return RetryDue::Never;
        };
        if retries >= limit {
            return RetryDue::Never;
        }
        if let Some(hold) = self.hold(node_name) {
            return RetryDue::Held(hold);
        }
        let failed_at: Timestamp = since.parse().unwrap_or(self.obs.now);
        let due = failed_at
            .checked_add(backoff_after(backoff, retries))
            .unwrap_or(failed_at);
        if self.obs.now < due {
            return RetryDue::At(due);
        }
        RetryDue::Now {
            retries: retries + 1,
            why: format!("retry {} of {limit}", retries + 1),
        }
    }

    /// A failed node is tried again: its Job goes (the next pass creates it anew, drain
    /// included), and the node keeps its slot meanwhile.
    fn retry(
        &mut self,
        node_name: &str,
        job_name: &str,
        since: &str,
        retries: i32,
        why: &str,
        failure: &str,
    ) {
        self.before.push(Change::DeleteJob {
            name: job_name.to_owned(),
            why: format!("{why} after: {failure}"),
            unless_begun: false,
        });
        self.note_retry(node_name, job_name, since, why, failure);
        self.entries.insert(
            node_name.to_owned(),
            NodeStatus {
                name: node_name.to_owned(),
                phase: Phase::Retrying.as_str().into(),
                job: Some(job_name.to_owned()),
                message: Some(format!("{why}: the Job is created again")),
                since: Some(self.now.clone()),
                template: None,
                retries: Some(retries),
            },
        );
    }

    /// The Retrying events of a node tried again (once per failure).
    fn note_retry(
        &mut self,
        node_name: &str,
        job_name: &str,
        since: &str,
        why: &str,
        failure: &str,
    ) {
        let message = format!("Node {node_name}: {why} of Job {job_name}, which failed: {failure}");
        let key = format!("Retrying/{job_name}/{since}");
        self.note_once(node_name, false, Reason::Retrying, message, &key);
    }

    /// A failed node waits for its automatic retry: the Plan is not failed (yet), and is looked
    /// at again when the retry is due.
    fn wait_for_retry(&mut self, at: Timestamp, message: &str) {
        self.requeue = self.requeue.min(until(self.obs.now, at));
        if self.retrying.is_none() {
            self.retrying = Some(message.to_owned());
        }
    }

    /// A node whose drain timed out with `onTimeout: Skip`: its Job goes and the node is
    /// returned at once; it leaves `applying`, and the rollout goes on without it.
    fn skip(&mut self, node_name: &str, job_name: &str) {
        self.skipped.insert(node_name.to_owned());
        self.before.push(Change::DeleteJob {
            name: job_name.to_owned(),
            why: "its node's drain timed out (onTimeout: Skip)".into(),
            unless_begun: false,
        });
        if self.released.insert(node_name.to_owned()) {
            self.before.push(Change::Release {
                node: node_name.to_owned(),
            });
        }
    }

    /// Nodes skipped earlier stay skipped (and listed in `status.nodes`) while the Plan's hash
    /// is the same, unless the retry annotation names them.
    fn carry_skipped(&mut self) {
        let skipped: Vec<NodeStatus> = self
            .old_entries
            .values()
            .filter(|e| e.phase == Phase::Skipped.as_str())
            .cloned()
            .collect();
        let selector = select::node_selector(self.plan).ok().flatten();
        for entry in skipped {
            let node = entry.name.clone();
            let current = job::job_name(&self.plan_name, &node, &self.hash);
            let eligible = self.nodes.get(&node).is_some_and(|n| {
                selector
                    .as_ref()
                    .is_some_and(|s| select::eligible(&self.plan_name, s, n))
            });
            if !eligible || entry.job.as_deref() != Some(current.as_str()) {
                // Gone, deselected or opted out; or the Plan changed: it runs like any other node.
                continue;
            }
            if self.ready
                && let Some(request) = &self.retry_request
                && retry_requested(request, &node)
            {
                self.retried_on_request.insert(node.clone());
                let why = format!("retried on request ({ANNOTATION_RETRY})");
                let since = entry.since.clone().unwrap_or_default();
                let message = entry.message.clone().unwrap_or_default();
                self.note_retry(&node, &current, &since, &why, &message);
                continue;
            }
            self.skipped.insert(node.clone());
            self.entries.insert(node, entry);
        }
    }

    /// The retry annotation is consumed: removed once acted on, with a word about the nodes it
    /// named that had not failed.
    fn consume_retry_request(&mut self) {
        let Some(value) = self.retry_request.take() else {
            return;
        };
        let unmatched: Vec<String> = match retry_request_nodes(&value) {
            None if self.retried_on_request.is_empty() => vec!["(all)".to_owned()],
            None => Vec::new(),
            Some(nodes) => nodes
                .into_iter()
                .filter(|n| !self.retried_on_request.contains(n))
                .collect(),
        };
        if !unmatched.is_empty() {
            self.note(
                true,
                Reason::Retrying,
                format!(
                    "{ANNOTATION_RETRY}={value}: no failed node to retry among {}",
                    unmatched.join(",")
                ),
            );
        }
        self.after.push(Change::ClearRetry { value });
    }

    /// Keeps the first failure of the pass for the Complete condition.
    fn record_failure(&mut self, reason: Reason, message: String) {
        if self.failure.is_none() {
            self.failure = Some((reason, message));
        }
    }

    /// A running Job's deadline and retries follow the Plan and the settings (they are not part
    /// of the pod template, so an edit of them must not replace, and so re-run, the Job).
    fn sync_job_fields(&mut self, job: &Job, desired: &Job) {
        let (Some(spec), Some(wanted)) = (job.spec.as_ref(), desired.spec.as_ref()) else {
            return;
        };
        let mut fields = JobFields::default();
        if spec.active_deadline_seconds != wanted.active_deadline_seconds {
            fields.active_deadline_seconds = Some(wanted.active_deadline_seconds);
        }
        if spec.backoff_limit != wanted.backoff_limit {
            fields.backoff_limit = wanted.backoff_limit;
        }
        if fields != JobFields::default() {
            self.before.push(Change::UpdateJob {
                name: job.metadata.name.clone().unwrap_or_default(),
                fields,
            });
        }
    }

    /// Where a gated Job stands: preparing (its pod not on the node yet, or `prepare` running),
    /// draining (the controller cordons and drains; a drain is started or kept going), or
    /// upgrading (the gate was opened). A failed drain suspends the Job, so its upgrade never
    /// starts. A drain starts only once the pod waits in its gate on its node, and only while
    /// the Plan is valid (`may_drain`).
    fn gate_phase(&mut self, node_name: &str, job: &Job, may_drain: bool) -> (Phase, String) {
        let job_name = job.metadata.name.clone().unwrap_or_default();
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let Some(pod) = pods::furthest_pod(job, self.obs.pods) else {
            return (Phase::Preparing, "waiting for the Job's pod".into());
        };
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        if pods::bound_node(pod).is_none() {
            return (Phase::Preparing, pods::not_ready_reason(pod));
        }
        if pod
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(ANNOTATION_DRAINED))
        {
            return (Phase::Upgrading, String::new());
        }
        if !pods::prepared(pod) {
            return (
                Phase::Preparing,
                "prepare is running; the node keeps its workloads until it ends".into(),
            );
        }
        if !pods::ready_for_drain(pod) {
            return (Phase::Preparing, pods::not_ready_reason(pod));
        }
        match self.obs.drains.get(&uid) {
            Some(DrainProgress::Failed(message)) => {
                self.after.push(Change::FailDrain {
                    job: job_name,
                    message: message.clone(),
                });
                self.note(true, Reason::DrainFailed, message.clone());
                self.record_failure(Reason::DrainFailed, message.clone());
                (Phase::Failed, message.clone())
            }
            Some(DrainProgress::Skipped(message)) => {
                self.skip(node_name, &job_name);
                (Phase::Skipped, message.clone())
            }
            Some(DrainProgress::Done(opened)) if *opened == pod_name => {
                (Phase::Draining, "drained; starting the upgrade".into())
            }
            // A drain begun while the Plan was valid goes on; a new one waits for it to be.
            None | Some(DrainProgress::Done(_)) if !may_drain => (
                Phase::Draining,
                "waiting for the Plan to be valid and resolved before draining the node".into(),
            ),
            progress => {
                let message = match progress {
                    Some(DrainProgress::Running(text)) => text.clone(),
                    _ => "starting".into(),
                };
                self.after.push(Change::Drain {
                    node: node_name.to_owned(),
                    pod: pod_name,
                    job: job_name,
                    job_uid: uid.clone(),
                });
                (Phase::Draining, message)
            }
        }
    }

    /// Pods whose Job is gone and which still wait in `prepare` or their gate go: the garbage
    /// collector can take minutes after an API server outage, and meanwhile they keep the node's
    /// next upgrade pod off the node (found by the soak). Seen for two minutes first.
    fn delete_stranded_pods(&mut self) {
        let before = self
            .obs
            .now
            .checked_sub(jiff::SignedDuration::from_secs(STRANDED_AFTER_SECS))
            .unwrap_or(self.obs.now);
        for pod in pods::stranded(self.obs.pods, self.obs.jobs, before) {
            self.before.push(Change::DeletePod {
                name: pod.metadata.name.clone().unwrap_or_default(),
                why: "its Job is gone and its upgrade never began".into(),
            });
        }
    }

    /// Running Jobs of nodes that no longer apply the Plan stop (as with the Go controller), and
    /// their nodes are released.
    fn release_leftovers(&mut self, selected: &[&Node]) {
        let selected: BTreeSet<&str> = selected
            .iter()
            .map(|n| n.metadata.name.as_deref().unwrap_or_default())
            .collect();
        let leftovers: Vec<(String, String)> = self
            .current_jobs
            .iter()
            .chain(self.finishing.iter())
            .filter(|(node, job)| {
                !selected.contains(node.as_str())
                    && !self.skipped.contains(node.as_str())
                    && finished_at(job).is_none()
            })
            .map(|(node, job)| (node.clone(), job.metadata.name.clone().unwrap_or_default()))
            .collect();
        for (node, name) in leftovers {
            self.before.push(Change::DeleteJob {
                name,
                why: format!("node {node} no longer needs the Plan"),
                unless_begun: false,
            });
        }
        let releases: Vec<String> = self
            .nodes
            .iter()
            .filter(|(name, node)| {
                (has_claim(node, &self.plan_name, &self.who)
                    || self.adopted_cordons.contains(*name))
                    && !selected.contains(name.as_str())
                    && !self.released.contains(*name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for node in releases {
            self.released.insert(node.clone());
            self.before.push(Change::Release { node });
        }
    }

    /// Counts the Plan's nodes: eligible, done (labelled with the hash, or in this pass),
    /// applying (`selected`), and waiting, some of them held by the pause label.
    fn count(&mut self, selected: &[&Node]) {
        let applying: BTreeSet<&str> = selected
            .iter()
            .map(|n| n.metadata.name.as_deref().unwrap_or_default())
            .collect();
        let mut tally = Tally {
            applying: applying.len(),
            ..Tally::default()
        };
        if let Ok(Some(selector)) = select::node_selector(self.plan) {
            for (name, node) in &self.nodes {
                if !select::eligible(&self.plan_name, &selector, node) {
                    continue;
                }
                tally.selected += 1;
                if self.done_now.contains(name)
                    || (!self.hash.is_empty() && select::done(&self.plan_name, node, &self.hash))
                {
                    tally.done += 1;
                } else if self.skipped.contains(name) {
                    tally.skipped += 1;
                } else if !applying.contains(name.as_str()) {
                    tally.waiting += 1;
                    tally.held += usize::from(select::paused(node));
                }
            }
        }
        self.tally = tally;
    }

    /// The Complete condition of a pass that applies the Plan to `selected`: not ready, complete
    /// (nothing left), paused (`spec.paused` with nodes waiting, or every node left labelled
    /// paused), syncing (a new set of nodes), failed (a node's Job or drain), or rolling again
    /// after a completion, a retried failure or a pause.
    fn complete_condition(&mut self, selected: &[&Node], ready: bool) {
        let applying = node_names(selected);
        let reason_before = status::get(&self.conditions, COMPLETE).and_then(|c| c.reason.clone());
        let was_paused = reason_before.as_deref() == Some(Reason::Paused.as_str());
        let paused = self.plan.spec.paused == Some(true);
        let label_held = applying.is_empty() && self.tally.held > 0;
        let gated = self.gate.is_some() && self.tally.waiting > self.tally.held;
        let held =
            (paused && (self.tally.waiting > 0 || !self.held.is_empty())) || label_held || gated;
        if ready && held && self.failure.is_none() {
            if !applying.is_empty() && self.status.applying.as_deref() != Some(applying.as_slice())
            {
                self.note_sync(&applying);
            }
            match self.gate.clone() {
                Some((reason, gate)) if !paused && gated => {
                    self.gate_condition(reason, &gate, &reason_before, &applying);
                }
                _ => self.pause_condition(paused, was_paused, &applying),
            }
            return;
        }
        if ready && was_paused {
            let message = format!("Plan {} starts nodes again", self.plan_name);
            self.note(false, Reason::Resumed, message);
        }
        if !ready {
            self.set_condition(
                COMPLETE,
                "False",
                Reason::NotReady,
                "plan is not valid and resolved",
            );
        } else if applying.is_empty() && !self.skipped.is_empty() {
            let nodes: Vec<&str> = self.skipped.iter().map(String::as_str).collect();
            let message = format!(
                "the drains of nodes {} timed out and they were skipped (onTimeout: Skip); \
                 annotate the Plan with {ANNOTATION_RETRY}=all to try them again",
                nodes.join(",")
            );
            self.set_condition(COMPLETE, "False", Reason::DrainSkipped, &message);
        } else if applying.is_empty() {
            if self.set_condition(COMPLETE, "True", Reason::Complete, "") {
                self.note(
                    false,
                    Reason::Complete,
                    format!(
                        "Jobs complete for version {}. Hash: {}",
                        self.version, self.hash
                    ),
                );
            }
        } else if self.status.applying.as_deref() != Some(applying.as_slice()) {
            // Also when only the stored form changes (hostnames the Go controller wrote).
            self.set_condition(COMPLETE, "False", Reason::SyncJob, "");
            self.note_sync(&applying);
        } else if let Some((reason, message)) = self.failure.clone() {
            self.set_condition(COMPLETE, "False", reason, &message);
        } else if let Some((node, message)) = self.refused.iter().next() {
            let message = format!("node {node}: {message}");
            self.set_condition(COMPLETE, "False", Reason::JobRefused, &message);
        } else if let Some((reason, message)) = self.held.values().next().cloned() {
            self.set_condition(COMPLETE, "False", reason, &message);
        } else if let Some(message) = self.retrying.clone() {
            self.set_condition(COMPLETE, "False", Reason::Retrying, &message);
        } else if status::is(&self.conditions, COMPLETE, "True")
            || was_paused
            || reason_before.as_deref().is_some_and(|r| {
                [
                    Reason::JobFailed,
                    Reason::Retrying,
                    Reason::WaitingForHealth,
                ]
                .iter()
                .any(|x| x.as_str() == r)
            })
        {
            // Applying again (after a failure was retried, or a pause): not complete.
            self.set_condition(COMPLETE, "False", Reason::SyncJob, "");
        }
    }

    /// The Plan's SyncJob event for a new set of applying nodes (merged with later ones).
    fn note_sync(&mut self, applying: &[String]) {
        let message = format!(
            "Jobs synced for version {} on Nodes {}. Hash: {}",
            self.version,
            applying.join(","),
            self.hash
        );
        self.notes
            .push(Note::new(Target::Plan, false, Reason::SyncJob, message).merging(Merge::Latest));
    }

    /// Complete is False with reason Paused, saying what holds the rollout; told once.
    fn pause_condition(&mut self, paused: bool, was_paused: bool, applying: &[String]) {
        let Tally { waiting, held, .. } = self.tally;
        let mut message = if paused {
            format!("spec.paused is true: {waiting} node(s) wait; set it to false to resume")
        } else {
            format!(
                "every node left ({held}) is labelled {LABEL_PAUSE}=true; remove the label to \
                 upgrade it"
            )
        };
        if !applying.is_empty() {
            message.push_str(&format!(
                "; the upgrades running on {} finish",
                applying.join(",")
            ));
        }
        self.set_condition(COMPLETE, "False", Reason::Paused, &message);
        if !was_paused {
            // Told when the rollout becomes paused, not on every change of the counts.
            self.note(false, Reason::Paused, message);
        }
    }

    /// Complete is False with reason WaitingForHealth, saying which gate holds the rollout; told
    /// when it closes.
    fn gate_condition(
        &mut self,
        reason: Reason,
        gate: &str,
        reason_before: &Option<String>,
        applying: &[String],
    ) {
        let waiting = self.tally.waiting;
        let mut message = format!("{waiting} node(s) wait: {gate}");
        if !applying.is_empty() {
            message.push_str(&format!(
                "; the upgrades running on {} go on",
                applying.join(",")
            ));
        }
        self.set_condition(COMPLETE, "False", reason, &message);
        if reason_before.as_deref() != Some(reason.as_str()) {
            self.note(reason == Reason::CRDOutdated, reason, message);
        }
    }

    /// The one way a pass ends: the conditions, the node entries and (unless `None`, which keeps
    /// it as stored) `applying` go into the status, and the Decision is returned.
    fn finish(mut self, selected: Option<&[&Node]>) -> Decision {
        self.kstatus_conditions();
        let generation = self.plan.metadata.generation;
        for condition in &mut self.conditions {
            condition.observed_generation = generation;
        }
        self.status.observed_generation = generation;
        self.status.conditions = Some(std::mem::take(&mut self.conditions));
        self.tally.failed = self
            .entries
            .values()
            .filter(|e| e.phase == Phase::Failed.as_str())
            .count();
        self.tally.refused = self.refused.len();
        self.tally.cordoned = self
            .nodes
            .iter()
            .filter(|(name, node)| {
                (has_claim(node, &self.plan_name, &self.who)
                    || self.adopted_cordons.contains(*name))
                    && !self.released.contains(*name)
            })
            .count();
        let holding = self.gate.is_some() || self.plan.spec.paused == Some(true);
        self.tally.gated = self
            .entries
            .values()
            .filter(|e| e.phase == Phase::WaitingHealthy.as_str())
            .count()
            + if holding {
                self.tally.waiting - self.tally.held
            } else {
                0
            };
        self.status.nodes = entries_list(std::mem::take(&mut self.entries));
        if let Some(selected) = selected {
            let applying = node_names(selected);
            self.status.applying = (!applying.is_empty()).then_some(applying);
        }
        self.status.progress = Some(format!("{}/{}", self.tally.done, self.tally.selected));
        Decision {
            finished_jobs: self.finished_jobs,
            tally: self.tally,
            status: self.status,
            before: self.before,
            after: self.after,
            notes: self.notes,
            requeue: self.requeue,
        }
    }

    /// `Reconciling` and `Stalled`, read from Complete and Validated as kstatus (Flux, `kubectl
    /// wait`, Argo CD) expects: a rollout under way or waiting for its window or its channel is
    /// Reconciling; one that a failure or an invalid spec stops is Stalled; a complete or
    /// paused Plan is neither (paused is what its spec asks for).
    fn kstatus_conditions(&mut self) {
        let complete = status::get(&self.conditions, COMPLETE);
        let complete_true = complete.is_some_and(|c| c.status == "True");
        let reason = complete
            .and_then(|c| c.reason.as_deref())
            .and_then(|r| Reason::ALL.iter().copied().find(|x| x.as_str() == r));
        let invalid = status::is(&self.conditions, VALIDATED, "False");
        let (reconciling, stalled) = match reason {
            _ if complete_true => (None, None),
            Some(Reason::Paused) => (None, None),
            Some(
                failed @ (Reason::JobFailed
                | Reason::DrainFailed
                | Reason::DrainSkipped
                | Reason::JobRefused
                | Reason::CRDOutdated),
            ) => (None, Some(failed)),
            _ if invalid => (None, Some(Reason::ValidateFailed)),
            Some(other) => (Some(other), None),
            None => (Some(Reason::SyncJob), None),
        };
        for (type_, cause) in [(RECONCILING, reconciling), (STALLED, stalled)] {
            match cause {
                Some(reason) => self.set_condition(type_, "True", reason, ""),
                None => {
                    let wanted = Wanted::new("False", "", "");
                    status::set(&mut self.conditions, type_, &wanted, &self.now)
                }
            };
        }
    }

    /// The phase the stored status gave a node.
    fn old_phase(&self, node: &str) -> Option<Phase> {
        self.old_entries
            .get(node)
            .and_then(|e| Phase::parse(&e.phase))
    }

    /// A node entry, keeping `since` when the phase does not change.
    fn entry(&self, node: &str, phase: Phase, job: &str, message: &str) -> NodeStatus {
        let since = self
            .old_entries
            .get(node)
            .filter(|e| e.phase == phase.as_str())
            .and_then(|e| e.since.clone())
            .unwrap_or_else(|| self.now.clone());
        // Retries count per Job name (one per node and hash), whatever the phase.
        let retries = self
            .old_entries
            .get(node)
            .filter(|e| e.job.as_deref() == Some(job))
            .and_then(|e| e.retries);
        NodeStatus {
            name: node.to_owned(),
            phase: phase.as_str().to_owned(),
            job: Some(job.to_owned()),
            message: (!message.is_empty()).then(|| message.to_owned()),
            since: Some(since),
            template: None,
            retries,
        }
    }
}

/// How long a Job ran until `end`: from its start (or creation).
fn ran_for(job: &Job, end: Timestamp) -> Duration {
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map_or(end, |t| t.0);
    end.duration_since(start)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Since when a node has been Ready, if it is.
fn ready_since(node: &Node) -> Option<Timestamp> {
    let ready = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
    )
}

/// "node a", "nodes a,b,c", "nodes a,b,c,d,e and 3 more".
fn listed(what: &str, names: &[&str]) -> String {
    const SHOWN: usize = 5;
    match names {
        [one] => format!("{what} {one}"),
        _ if names.len() <= SHOWN => format!("{what}s {}", names.join(",")),
        _ => format!(
            "{what}s {} and {} more",
            names[..SHOWN].join(","),
            names.len() - SHOWN
        ),
    }
}

/// When a failed node is tried again.
enum RetryDue {
    Never,
    At(Timestamp),
    /// Automatically, once nothing holds the node: the hold's reason and what it says.
    Held((Reason, String)),
    Now {
        retries: i32,
        why: String,
    },
}

/// Longest wait between automatic retries (unless the Plan's backoff is longer).
const RETRY_BACKOFF_CAP: Duration = Duration::from_secs(3600);
/// The backoff when `spec.retry` sets none.
const RETRY_BACKOFF_DEFAULT: Duration = Duration::from_secs(60);

/// The Plan's retry limit and first backoff, when it retries at all.
fn retry_policy(plan: &Plan) -> Option<(i32, Duration)> {
    let spec = plan.spec.retry.as_ref()?;
    let limit = spec.limit.unwrap_or(0).clamp(0, 100);
    let backoff = match spec.backoff.as_deref().map(duration::parse) {
        None => RETRY_BACKOFF_DEFAULT,
        Some(Ok(nanos)) => Duration::from_nanos(u64::try_from(nanos).ok()?),
        Some(Err(_)) => return None,
    };
    (limit > 0).then_some((limit, backoff))
}

/// The wait before retry number `retries + 1`: the backoff doubled `retries` times, capped.
fn backoff_after(backoff: Duration, retries: i32) -> jiff::SignedDuration {
    let cap = RETRY_BACKOFF_CAP.max(backoff);
    let factor = 1u32 << retries.clamp(0, 20);
    let wait = backoff.checked_mul(factor).unwrap_or(cap).min(cap);
    jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::MAX)
}

/// "2 of 3": the next automatic retry of a node retried `retries` times.
fn retry_ordinal(plan: &Plan, retries: Option<i32>) -> String {
    let limit = retry_policy(plan).map_or(0, |(limit, _)| limit);
    format!("{} of {limit}", retries.unwrap_or(0) + 1)
}

/// The nodes a retry annotation names; `None` for `all` (or `*`).
fn retry_request_nodes(value: &str) -> Option<BTreeSet<String>> {
    let value = value.trim();
    if value == "all" || value == "*" {
        return None;
    }
    Some(
        value
            .split([',', ' '])
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

fn retry_requested(value: &str, node: &str) -> bool {
    retry_request_nodes(value).is_none_or(|nodes| nodes.contains(node))
}

fn node_names(nodes: &[&Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn entries_list(entries: BTreeMap<String, NodeStatus>) -> Option<Vec<NodeStatus>> {
    (!entries.is_empty()).then(|| entries.into_values().collect())
}

/// The Secrets of `spec.secrets` whose content is part of the hash, in spec order.
fn hashed_secrets(plan: &Plan) -> impl Iterator<Item = &str> {
    plan.spec
        .secrets
        .iter()
        .flatten()
        .filter(|s| !s.ignore_updates.unwrap_or(false))
        .map(|s| s.name.as_str())
}

/// `status.applying` as node names: the Go controller writes the nodes' hostname labels there,
/// this controller their names; both are read (an unknown entry is kept as it is).
fn as_node_names(applying: &[String], nodes: &BTreeMap<String, &Node>) -> Vec<String> {
    applying
        .iter()
        .map(|entry| {
            if nodes.contains_key(entry) {
                return entry.clone();
            }
            nodes
                .iter()
                .find(|(_, n)| node_label(n, LABEL_HOSTNAME) == Some(entry.as_str()))
                .map_or_else(|| entry.clone(), |(name, _)| name.clone())
        })
        .collect()
}

fn node_label<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

fn post_complete_delay(plan: &Plan) -> Option<i64> {
    plan.spec
        .post_complete_delay
        .as_deref()
        .and_then(|d| duration::parse(d).ok())
        .filter(|d| *d > 0)
}

/// Whether a Job was created by the Go controller: it carries no template digest of ours, or
/// this controller adopted it.
fn is_go_era(job: &Job) -> bool {
    annotation(job, ANNOTATION_TEMPLATE).is_none() || annotation(job, ANNOTATION_ADOPTED).is_some()
}

fn uid_of(job: &Job) -> &str {
    job.metadata.uid.as_deref().unwrap_or_default()
}

fn annotation(job: &Job, key: &str) -> Option<String> {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
}

/// When a Job finished, and whether it succeeded.
pub fn finished_at(job: &Job) -> Option<(bool, Timestamp)> {
    let status = job.status.as_ref()?;
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        let at = condition.last_transition_time.as_ref().map(|t| t.0);
        match condition.type_.as_str() {
            "Complete" => {
                return Some((true, status.completion_time.as_ref().map(|t| t.0).or(at)?));
            }
            "Failed" => return Some((false, at?)),
            _ => {}
        }
    }
    None
}

/// "Job <ns>/<job> failed on Node <node>: <reason>: <message>", as in the Go controller.
fn failure_message(job: &Job, namespace: &str, node: &str) -> String {
    let name = job.metadata.name.clone().unwrap_or_default();
    let failed = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"));
    let reason = failed.and_then(|c| c.reason.clone()).unwrap_or_default();
    let message = failed.and_then(|c| c.message.clone()).unwrap_or_default();
    format!("Job {namespace}/{name} failed on Node {node}: {reason}: {message}")
}

/// The Plan's postCompleteLabels with `$(LATEST_VERSION)` and `$(LATEST_HASH)` expanded the
/// Kubernetes way (`$$` escapes, unknown variables stay as written).
pub fn completion_labels(plan: &Plan, version: &str, hash: &str) -> BTreeMap<String, String> {
    plan.spec
        .post_complete_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), expand(v, version, hash)))
        .collect()
}

fn expand(value: &str, version: &str, hash: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix(LATEST_VERSION_VAR) {
            out.push_str(version);
            rest = after;
        } else if let Some(after) = rest.strip_prefix(LATEST_HASH_VAR) {
            out.push_str(hash);
            rest = after;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    let seconds = then.as_second() - now.as_second();
    Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1))
}

#[cfg(test)]
mod tests;
