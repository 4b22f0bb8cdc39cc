//! The last phase: the count of the Plan's nodes ([`Tally`], behind `status.progress` and the
//! metrics), the Complete condition, the kstatus conditions, and the [`Decision`] a pass
//! returns.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;

use super::decision::{Decision, Merge, Note, Tally, Target};
use super::facts::{entries_list, listed, node_names};
use super::holds::Gate;
use super::pass::{Effects, Pass};
use super::plan::Resolved;
use super::versions;
use crate::api::{ANNOTATION_RETRY, LABEL_PAUSE, Phase, Reason};
use crate::controller::select;
use crate::controller::status::{self, COMPLETE, RECONCILING, STALLED, VALIDATED};

/// Ends a pass that applies the Plan to `selected`, counted in `tally`: sets Complete (which
/// waits for the after hook, `after_hook`, when it runs or failed), and finishes.
pub(super) fn conclude(
    mut pass: Pass<'_, '_>,
    r: &Resolved,
    gate: Option<&Gate>,
    selected: &[&Node],
    tally: Tally,
    after_hook: Option<&Gate>,
) -> Decision {
    complete_condition(&mut pass, r, gate, &tally, selected, after_hook);
    finish(pass, gate, tally, Some(selected))
}

/// Counts the Plan's nodes: eligible, done (labelled with the hash, or in this pass),
/// applying (`selected`), and waiting, some of them held by the pause label.
pub(super) fn count(pass: &Pass<'_, '_>, r: &Resolved, selected: &[&Node]) -> Tally {
    let cx = pass.cx;
    let applying: BTreeSet<&str> = selected
        .iter()
        .map(|n| n.metadata.name.as_deref().unwrap_or_default())
        .collect();
    let mut tally = Tally {
        applying: applying.len(),
        ..Tally::default()
    };
    if let Ok(Some(selector)) = select::node_selector(cx.plan) {
        for (name, node) in &cx.nodes {
            if !select::eligible(&cx.plan_name, &selector, node) {
                continue;
            }
            tally.selected += 1;
            if pass.ledger.done_now.contains(name)
                || (!r.hash.is_empty() && select::done(&cx.plan_name, node, &r.hash))
            {
                tally.done += 1;
            } else if pass.ledger.given_up.contains(name) {
                // Counted as failed, from its entry.
            } else if pass.ledger.skipped.contains(name) {
                tally.skipped += 1;
            } else if !applying.contains(name.as_str()) {
                tally.waiting += 1;
                tally.held += usize::from(select::paused(node));
                tally.version_held += usize::from(pass.ledger.version_held.contains_key(name));
            }
        }
    }
    tally
}

/// The Complete condition of a pass that applies the Plan to `selected`: not ready, complete
/// (nothing left), paused (`spec.paused` with nodes waiting, or every node left labelled
/// paused), syncing (a new set of nodes), failed (a node's Job or drain), or rolling again
/// after a completion, a retried failure or a pause.
fn complete_condition(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    gate: Option<&Gate>,
    tally: &Tally,
    selected: &[&Node],
    after_hook: Option<&Gate>,
) {
    let ready = r.ready;
    let applying = node_names(selected);
    if r.cancelled {
        super::cancel::condition(pass, r, &applying);
        return;
    }
    if r.window_stopped {
        super::holds::stopped_condition(pass, r, &applying);
        return;
    }
    let reason_before = status::get(&pass.out.conditions, COMPLETE).and_then(|c| c.reason.clone());
    let was_paused = reason_before.as_deref() == Some(Reason::Paused.as_str());
    let paused = pass.cx.paused();
    let label_held = applying.is_empty() && tally.held > 0;
    let gated = gate.is_some() && tally.waiting > tally.held;
    let held =
        (paused && (tally.waiting > 0 || !pass.ledger.held.is_empty())) || label_held || gated;
    let stored_applying = pass.out.status.applying.clone();
    if ready
        && applying.is_empty()
        && tally.version_held > 0
        && !paused
        && gate.is_none()
        && pass.ledger.failure.is_none()
    {
        // Nothing runs and held nodes are what is left: the hold is the Plan's state.
        versions::hold_condition(pass, &r.version);
        return;
    }
    if ready && held && pass.ledger.failure.is_none() {
        if !applying.is_empty() && stored_applying.as_deref() != Some(applying.as_slice()) {
            note_sync(&mut pass.out, r, &applying);
        }
        match gate {
            Some((reason, gate)) if !paused && gated => {
                gate_condition(pass, *reason, gate, tally, &reason_before, &applying);
            }
            _ => pause_condition(pass, paused, was_paused, tally, &applying),
        }
        return;
    }
    let plan_name = &pass.cx.plan_name;
    let out = &mut pass.out;
    if ready && was_paused {
        let message = format!("Plan {plan_name} starts nodes again");
        out.note(false, Reason::Resumed, message);
    }
    let ledger = &pass.ledger;
    if !ready {
        out.set_condition(
            COMPLETE,
            "False",
            Reason::NotReady,
            "plan is not valid and resolved",
        );
    } else if applying.is_empty() && !ledger.given_up.is_empty() {
        let nodes: Vec<&str> = ledger.given_up.iter().map(String::as_str).collect();
        let message = format!(
            "the rollout went on without {} that failed (within spec.failureBudget), and every \
             other node is done or skipped; see status.nodes for why, then annotate the Plan with \
             {ANNOTATION_RETRY}=all to try them again",
            listed("node", &nodes)
        );
        out.set_condition(COMPLETE, "False", Reason::JobFailed, &message);
    } else if applying.is_empty() && !ledger.skipped.is_empty() {
        let nodes: Vec<&str> = ledger.skipped.iter().map(String::as_str).collect();
        let message = format!(
            "the drains of nodes {} timed out and they were skipped (onTimeout: Skip); \
             annotate the Plan with {ANNOTATION_RETRY}=all to try them again",
            nodes.join(",")
        );
        out.set_condition(COMPLETE, "False", Reason::DrainSkipped, &message);
    } else if let Some((reason, message)) = after_hook.filter(|_| applying.is_empty()) {
        out.set_condition(COMPLETE, "False", *reason, message);
    } else if applying.is_empty() {
        if out.set_condition(COMPLETE, "True", Reason::Complete, "") {
            out.note(
                false,
                Reason::Complete,
                format!("Jobs complete for version {}. Hash: {}", r.version, r.hash),
            );
        }
    } else if stored_applying.as_deref() != Some(applying.as_slice()) {
        // Also when only the stored form changes (hostnames the Go controller wrote).
        out.set_condition(COMPLETE, "False", Reason::SyncJob, "");
        note_sync(out, r, &applying);
    } else if let Some((reason, message)) = &ledger.failure {
        out.set_condition(COMPLETE, "False", *reason, message);
    } else if let Some((node, message)) = ledger.refused.iter().next() {
        let message = format!("node {node}: {message}");
        out.set_condition(COMPLETE, "False", Reason::JobRefused, &message);
    } else if let Some((reason, message)) = ledger.held.values().next() {
        out.set_condition(COMPLETE, "False", *reason, message);
    } else if let Some(message) = &ledger.retrying {
        out.set_condition(COMPLETE, "False", Reason::Retrying, message);
    } else if status::is(&out.conditions, COMPLETE, "True")
        || was_paused
        || reason_before.as_deref().is_some_and(|r| {
            [
                Reason::JobFailed,
                Reason::NotConverged,
                Reason::Retrying,
                Reason::WaitingForHealth,
            ]
            .iter()
            .any(|x| x.as_str() == r)
        })
    {
        // Applying again (after a failure was retried, or a pause): not complete.
        out.set_condition(COMPLETE, "False", Reason::SyncJob, "");
    }
}

/// The Plan's SyncJob event for a new set of applying nodes (merged with later ones).
fn note_sync(out: &mut Effects, r: &Resolved, applying: &[String]) {
    let message = format!(
        "Jobs synced for version {} on Nodes {}. Hash: {}",
        r.version,
        applying.join(","),
        r.hash
    );
    out.notes
        .push(Note::new(Target::Plan, false, Reason::SyncJob, message).merging(Merge::Latest));
}

/// Complete is False with reason Paused, saying what holds the rollout; told once.
fn pause_condition(
    pass: &mut Pass<'_, '_>,
    paused: bool,
    was_paused: bool,
    tally: &Tally,
    applying: &[String],
) {
    let Tally { waiting, held, .. } = *tally;
    let mut message = if pass.cx.deleting() {
        format!("the Plan is being deleted: {waiting} node(s) wait and start no more")
    } else if paused {
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
    pass.out
        .set_condition(COMPLETE, "False", Reason::Paused, &message);
    if !was_paused {
        // Told when the rollout becomes paused, not on every change of the counts.
        pass.out.note(false, Reason::Paused, message);
    }
}

/// Complete is False with reason WaitingForHealth, saying which gate holds the rollout; told
/// when it closes.
fn gate_condition(
    pass: &mut Pass<'_, '_>,
    reason: Reason,
    gate: &str,
    tally: &Tally,
    reason_before: &Option<String>,
    applying: &[String],
) {
    let mut message = format!("{} node(s) wait: {gate}", tally.waiting);
    if !applying.is_empty() {
        message.push_str(&format!(
            "; the upgrades running on {} go on",
            applying.join(",")
        ));
    }
    pass.out.set_condition(COMPLETE, "False", reason, &message);
    if reason_before.as_deref() != Some(reason.as_str()) {
        pass.out
            .note(reason == Reason::CRDOutdated, reason, message);
    }
}

/// The one way a pass ends: the conditions, the node entries and (unless `None`, which keeps
/// it as stored) `applying` go into the status, and the Decision is returned.
pub(super) fn finish(
    pass: Pass<'_, '_>,
    gate: Option<&Gate>,
    mut tally: Tally,
    applying: Option<&[&Node]>,
) -> Decision {
    tally.cordoned = pass
        .cx
        .nodes
        .iter()
        .filter(|(name, node)| pass.claims(name, node) && !pass.ledger.released.contains(*name))
        .count();
    let Pass {
        cx,
        mut out,
        ledger,
    } = pass;
    kstatus_conditions(&mut out);
    let generation = cx.plan.metadata.generation;
    for condition in &mut out.conditions {
        condition.observed_generation = generation;
    }
    let mut status = out.status;
    status.observed_generation = generation;
    status.conditions = Some(out.conditions);
    tally.failed = out
        .entries
        .values()
        .filter(|e| e.phase == Phase::Failed.as_str())
        .count();
    tally.refused = ledger.refused.len();
    let holding = gate.is_some() || cx.paused();
    let canary = gate.is_some_and(|(r, _)| matches!(r, Reason::AwaitingApproval | Reason::Soaking))
        && !cx.paused();
    tally.canary_held = if canary {
        tally.waiting - tally.held
    } else {
        0
    };
    tally.gated = out
        .entries
        .values()
        .filter(|e| e.phase == Phase::WaitingHealthy.as_str())
        .count()
        + if holding && !canary {
            tally.waiting - tally.held
        } else {
            0
        };
    status.nodes = entries_list(out.entries);
    if let Some(selected) = applying {
        let applying = node_names(selected);
        status.applying = (!applying.is_empty()).then_some(applying);
    }
    status.progress = Some(format!("{}/{}", tally.done, tally.selected));
    let conditions = status.conditions.take().unwrap_or_default();
    super::history::plan(&mut status, &conditions, &tally, &cx.now);
    status.conditions = Some(conditions);
    Decision {
        finished_jobs: out.finished_jobs,
        finished_hooks: out.finished_hooks,
        tally,
        status,
        before: out.before,
        after: out.after,
        notes: out.notes,
        requeue: out.requeue,
    }
}

/// `Reconciling` and `Stalled`, read from Complete and Validated as kstatus (Flux, `kubectl
/// wait`, Argo CD) expects: a rollout under way or waiting for its window or its channel is
/// Reconciling; one that a failure or an invalid spec stops is Stalled; a complete or
/// paused Plan is neither (paused is what its spec asks for).
fn kstatus_conditions(out: &mut Effects) {
    let complete = status::get(&out.conditions, COMPLETE);
    let complete_true = complete.is_some_and(|c| c.status == "True");
    let reason = complete
        .and_then(|c| c.reason.as_deref())
        .and_then(|r| Reason::ALL.iter().copied().find(|x| x.as_str() == r));
    let invalid = status::is(&out.conditions, VALIDATED, "False");
    let (reconciling, stalled) = match reason {
        _ if complete_true => (None, None),
        // At rest as asked: a pause, a cancelled rollout, a first wave waiting for approval.
        Some(Reason::Paused | Reason::Cancelled | Reason::AwaitingApproval) => (None, None),
        Some(
            failed @ (Reason::JobFailed
            | Reason::DrainFailed
            | Reason::DrainSkipped
            | Reason::JobRefused
            | Reason::CRDOutdated
            | Reason::DowngradeHeld
            | Reason::MinorSkipHeld
            | Reason::NotConverged
            | Reason::HookFailed),
        ) => (None, Some(failed)),
        _ if invalid => (None, Some(Reason::ValidateFailed)),
        Some(other) => (Some(other), None),
        None => (Some(Reason::SyncJob), None),
    };
    for (type_, cause) in [(RECONCILING, reconciling), (STALLED, stalled)] {
        match cause {
            Some(reason) => {
                out.set_condition(type_, "True", reason, "");
            }
            None => out.clear_condition(type_),
        }
    }
}
