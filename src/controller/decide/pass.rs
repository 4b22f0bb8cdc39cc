//! What every phase of a pass shares: the observation and the stored status taken apart
//! ([`Context`], read only), what the pass writes ([`Effects`]) and what it learns about nodes
//! as it goes ([`Ledger`]). The phases' own findings are handed on as values instead
//! (`Resolved`, `Jobs`, the gate, the chosen nodes).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;

use super::RESYNC;
use super::decision::{Change, Note, Observed, Target};
use super::facts::as_node_names;
use crate::api::{
    ANNOTATION_RETRY, Condition, NodeStatus, PLAN_LABEL_PREFIX, Phase, Plan, PlanStatus, Reason,
};
use crate::controller::cordon::{Claimant, has_claim};
use crate::controller::job::Hook;
use crate::controller::status::{self, COMPLETE, VALIDATED, Wanted, stamp};

/// The observation and the stored status, taken apart once; no phase changes it.
pub(super) struct Context<'a> {
    pub obs: &'a Observed<'a>,
    pub plan: &'a Plan,
    pub plan_name: String,
    /// This controller instance, whose cordon claims are this Plan's.
    pub who: Claimant,
    pub namespace: String,
    pub plan_label: String,
    /// This pass's time, as written into conditions and node entries.
    pub now: String,
    pub nodes: BTreeMap<String, &'a Node>,
    /// `status.applying` as persisted, as node names (the Go controller wrote hostnames).
    pub applying_before: Vec<String>,
    /// The node entries as persisted, by node.
    pub old_entries: BTreeMap<String, NodeStatus>,
    /// The retry annotation's value.
    pub retry_request: Option<String>,
}

impl<'a> Context<'a> {
    /// The context of a pass, and its effects starting from the stored status (conditions made
    /// present, node entries taken out to be written anew).
    pub fn new(obs: &'a Observed<'a>) -> (Self, Effects) {
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
        let cx = Context {
            obs,
            plan,
            plan_label: format!("{PLAN_LABEL_PREFIX}{plan_name}"),
            plan_name,
            who: Claimant::new(&namespace, &obs.settings.controller_name),
            namespace,
            now: now.clone(),
            nodes,
            applying_before,
            old_entries,
            retry_request: plan
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ANNOTATION_RETRY))
                .cloned(),
        };
        let effects = Effects {
            now,
            status,
            conditions,
            entries: BTreeMap::new(),
            notes: Vec::new(),
            before: Vec::new(),
            after: Vec::new(),
            requeue: RESYNC,
            finished_jobs: Vec::new(),
            finished_hooks: Vec::new(),
        };
        (cx, effects)
    }

    /// `spec.paused` is true, or the Plan is being deleted (a finalizer holds it): either way
    /// nothing new starts and what runs finishes.
    pub fn paused(&self) -> bool {
        self.plan.spec.paused == Some(true) || self.deleting()
    }

    /// The Plan is being deleted (a finalizer, ours or another's, holds it).
    pub fn deleting(&self) -> bool {
        self.plan.metadata.deletion_timestamp.is_some()
    }

    /// The Plan cordons or drains: its Jobs wait in a gate for the controller.
    pub fn gated(&self) -> bool {
        self.plan.spec.cordon.unwrap_or(false) || self.plan.spec.drain.is_some()
    }

    /// The phase the stored status gave a node.
    pub fn old_phase(&self, node: &str) -> Option<Phase> {
        self.old_entries
            .get(node)
            .and_then(|e| Phase::parse(&e.phase))
    }

    /// A node entry, keeping `since` when the phase does not change.
    pub fn entry(&self, node: &str, phase: Phase, job: &str, message: &str) -> NodeStatus {
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
            given_up: None,
            retries,
        }
    }
}

/// What a pass writes, gathered as the phases run; `progress::finish` makes the Decision of it.
pub(super) struct Effects {
    now: String,
    /// The stored status, its conditions and node entries taken out; `latestVersion` and
    /// `latestHash` are set by the `plan` phase.
    pub status: PlanStatus,
    pub conditions: Vec<Condition>,
    /// The node entries of this pass, by node.
    pub entries: BTreeMap<String, NodeStatus>,
    pub notes: Vec<Note>,
    /// Changes that do not need the new `applying` persisted first.
    pub before: Vec<Change>,
    /// Changes that do (starting nodes).
    pub after: Vec<Change>,
    pub requeue: Duration,
    pub finished_jobs: Vec<(bool, Duration)>,
    /// Hook Jobs seen finished in this pass, and whether they succeeded.
    pub finished_hooks: Vec<(Hook, bool)>,
}

impl Effects {
    /// An event on the Plan.
    pub fn note(&mut self, warning: bool, reason: Reason, message: String) {
        self.notes
            .push(Note::new(Target::Plan, warning, reason, message));
    }

    /// The same one-shot event on the Plan and on a node, told once per `key`.
    pub fn note_once(
        &mut self,
        node: &str,
        warning: bool,
        reason: Reason,
        message: String,
        key: &str,
    ) {
        let on_plan = Note::new(Target::Plan, warning, reason, message.clone());
        self.notes.push(on_plan.once(key.to_owned()));
        let on_node = Note::new(Target::Node(node.to_owned()), warning, reason, message);
        self.notes.push(on_node.once(format!("{key}/node")));
    }

    /// Sets a condition; returns whether its status changed.
    pub fn set_condition(
        &mut self,
        type_: &str,
        status_: &str,
        reason: Reason,
        message: &str,
    ) -> bool {
        let wanted = Wanted::new(status_, reason.as_str(), message);
        status::set(&mut self.conditions, type_, &wanted, &self.now)
    }

    /// Sets a condition to False with no reason (the kstatus conditions at rest).
    pub fn clear_condition(&mut self, type_: &str) {
        let wanted = Wanted::new("False", "", "");
        status::set(&mut self.conditions, type_, &wanted, &self.now);
    }

    /// Looks again within `after`.
    pub fn requeue_within(&mut self, after: Duration) {
        self.requeue = self.requeue.min(after);
    }

    /// Records a node's entry.
    pub fn enter(&mut self, entry: NodeStatus) {
        self.entries.insert(entry.name.clone(), entry);
    }
}

/// What the pass has learnt about nodes so far; each phase reads what the ones before added.
#[derive(Default)]
pub(super) struct Ledger {
    /// Nodes labelled done in this pass.
    pub done_now: BTreeSet<String>,
    /// Nodes whose claim is released in this pass.
    pub released: BTreeSet<String>,
    /// Nodes whose Go-era cordon is adopted in this pass.
    pub adopted_cordons: BTreeSet<String>,
    /// Nodes whose drain timed out with `onTimeout: Skip` (for the current hash).
    pub skipped: BTreeSet<String>,
    /// Failed nodes the rollout goes on without (`spec.failureBudget`; also in `skipped`, so
    /// they hold no slot).
    pub given_up: BTreeSet<String>,
    /// Nodes the retry annotation asked for that were retried.
    pub retried_on_request: BTreeSet<String>,
    /// Applying nodes whose Job waits to be created, or whose retry waits, because a pause or a
    /// closed gate holds them: the reason and what it says.
    pub held: BTreeMap<String, (Reason, String)>,
    /// Nodes a version rule holds (a downgrade, a skipped minor, servers behind): the reason
    /// and what it says. They do not start; an upgrade under way on one goes on.
    pub version_held: BTreeMap<String, (Reason, String)>,
    /// Nodes whose Job succeeded but which did not show the upgrade in time: why.
    pub not_converged: BTreeMap<String, String>,
    /// Applying nodes whose Job the API server refused (or whose pod cannot be created): why.
    pub refused: BTreeMap<String, String>,
    /// The reason of the first failure of this pass (`JobFailed` or `DrainFailed`).
    pub failure: Option<(Reason, String)>,
    /// A failed node waiting for its automatic retry (for the Complete condition).
    pub retrying: Option<String>,
}

/// A pass at work: the context every phase reads, and what the phases write and learn.
pub(super) struct Pass<'p, 'a> {
    pub cx: &'p Context<'a>,
    pub out: Effects,
    pub ledger: Ledger,
}

impl<'p, 'a> Pass<'p, 'a> {
    pub fn new(cx: &'p Context<'a>, out: Effects) -> Self {
        Pass {
            cx,
            out,
            ledger: Ledger::default(),
        }
    }

    /// Whether this Plan holds a claim on the node (its own, or a Go-era cordon adopted now).
    pub fn claims(&self, name: &str, node: &Node) -> bool {
        has_claim(node, &self.cx.plan_name, &self.cx.who)
            || self.ledger.adopted_cordons.contains(name)
    }

    /// Gives the node's claim back (once per pass).
    pub fn release(&mut self, node: &str) {
        if self.ledger.released.insert(node.to_owned()) {
            self.out.before.push(Change::Release {
                node: node.to_owned(),
            });
        }
    }

    /// Keeps the first failure of the pass for the Complete condition.
    pub fn record_failure(&mut self, reason: Reason, message: String) {
        if self.ledger.failure.is_none() {
            self.ledger.failure = Some((reason, message));
        }
    }

    /// The node of that name, if it exists.
    pub fn node(&self, name: &str) -> Option<&'a Node> {
        self.cx.nodes.get(name).copied()
    }
}
