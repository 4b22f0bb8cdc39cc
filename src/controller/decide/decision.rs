//! What goes into a pass and what comes out of it: the observation, the decision, and the
//! vocabulary they share with the reconcile's shell (changes, events, drains, refusals).

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};

use crate::api::{LABEL_NODE, Plan, PlanStatus, Reason};
use crate::controller::job::{Hook, JobSettings};

/// Most nodes named in the Plan's JobComplete event of one pass (the rest are counted).
const COMPLETED_LISTED: usize = 20;

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
    /// Why object health gates (`healthGates.objects`) are closed; empty when all are open.
    pub object_gates: &'a [String],
    /// Jobs (by name) the API server refused, or whose pods cannot be created.
    pub refusals: &'a BTreeMap<String, Refusal>,
    /// Fields of this controller's Plan CRD that the CRD in the cluster lacks (`spec.paused`,
    /// `status.nodes`): the API server drops them.
    pub crd_gaps: &'a [String],
    /// The other Plans this controller serves, for `spec.dependsOn` and `spec.exclusiveGroup`.
    pub peers: &'a [Peer],
}

/// Another Plan, as far as the order between Plans needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    /// Its `spec.dependsOn`.
    pub depends_on: Vec<String>,
    /// Its `spec.exclusiveGroup`.
    pub exclusive_group: Option<String>,
    /// What it has under way: the nodes it applies on and its hooks that run (this process's
    /// last pass of it when newer than the cache).
    pub busy: Vec<String>,
    /// Its Complete condition, when its status is about its current spec: whether True, and
    /// its reason and message.
    pub complete: Option<(bool, String, String)>,
    /// It is Stalled (failed, or invalid).
    pub stalled: bool,
}

impl Peer {
    /// The Plan as a peer of others: what its status says.
    pub fn of(plan: &crate::api::Plan) -> Peer {
        use crate::controller::status::{self, COMPLETE, STALLED};
        let none = crate::api::PlanStatus::default();
        let st = plan.status.as_ref().unwrap_or(&none);
        let conditions = st.conditions.as_deref().unwrap_or_default();
        let current =
            st.observed_generation.is_some() && st.observed_generation == plan.metadata.generation;
        let complete = status::get(conditions, COMPLETE)
            .filter(|_| current)
            .map(|c| {
                (
                    c.status == "True",
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            });
        Peer {
            name: plan.metadata.name.clone().unwrap_or_default(),
            depends_on: plan.spec.depends_on.clone().unwrap_or_default(),
            exclusive_group: plan.spec.exclusive_group.clone(),
            busy: Peer::busy(st),
            complete,
            stalled: status::is(conditions, STALLED, "True"),
        }
    }

    /// What a status says is under way: the nodes applying and the hooks that run.
    pub fn busy(status: &crate::api::PlanStatus) -> Vec<String> {
        let hooks_running = status.hooks.iter().flatten().filter(|h| {
            h.phase == crate::api::HookPhase::Running.as_str()
                || h.phase == crate::api::HookPhase::Starting.as_str()
        });
        (status.applying.iter().flatten().cloned())
            .chain(hooks_running.map(|h| format!("hook/{}", h.name)))
            .collect()
    }
}

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
    /// Hook Jobs seen finished in this pass, and whether they succeeded.
    pub finished_hooks: Vec<(Hook, bool)>,
}

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
    /// Set labels on a node (the completion label and postCompleteLabels), and annotations
    /// (the record of the upgrade, the node's history) in the same write. Without labels, it
    /// only records a failed upgrade in the node's history.
    LabelNode {
        node: String,
        labels: BTreeMap<String, String>,
        annotations: BTreeMap<String, String>,
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
    /// Remove the Job controller's tracking finalizer (at `index` of the pod's finalizers) from
    /// a pod of this Plan being deleted whose Job is gone, as the Job controller would have.
    ReleasePod {
        name: String,
        index: usize,
        why: String,
    },
    /// Drop this Plan's cordon claim; uncordon the node when no claim is left.
    Release {
        node: String,
    },
    /// Remove an annotation of the Plan (retry, cancel, resume), if it still has this value: the
    /// request was acted on.
    ClearAnnotation {
        key: &'static str,
        value: String,
    },
    /// Put the Plan's finalizer `upgrade.cattle.io/after-hook` on the Plan (`on`), or take it
    /// off (`hooks.afterWhenDeleted`).
    Finalizer {
        on: bool,
    },
    /// Put the Plan's `upcoming.upgrade.cattle.io/<plan>:PreferNoSchedule` taint on the node
    /// (`on`), or take it off.
    Taint {
        node: String,
        on: bool,
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
            | Change::ReleasePod { .. }
            | Change::Release { .. }
            | Change::Taint { .. }
            | Change::Finalizer { .. }
            | Change::ClearAnnotation { .. } => None,
        }
    }

    /// The node a change is about, if it names one (a tracing field).
    pub fn node(&self) -> Option<&str> {
        match self {
            Change::LabelNode { node, .. }
            | Change::AdoptCordon { node }
            | Change::Drain { node, .. }
            | Change::Taint { node, .. }
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

/// Settings of a Job that may change while it exists; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFields {
    /// `activeDeadlineSeconds`; `Some(None)` removes the deadline.
    pub active_deadline_seconds: Option<Option<i64>>,
    pub backoff_limit: Option<i32>,
    /// `ttlSecondsAfterFinished`, also written to the TTL annotation.
    pub ttl_seconds_after_finished: Option<i32>,
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
    /// Waiting nodes a version rule holds (a downgrade, a skipped minor, servers behind).
    pub version_held: usize,
    /// Waiting nodes (not label-held) the first wave's hold keeps waiting (`spec.canary`:
    /// awaiting approval or soaking).
    pub canary_held: usize,
}

impl Tally {
    /// The counts in the order of the metric's states (`metrics::PLAN_NODE_STATES`).
    pub fn counts(&self) -> [usize; 12] {
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
            self.version_held,
            self.canary_held,
        ]
    }
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
