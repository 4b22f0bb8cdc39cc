//! What a pass tells the notifications' receivers: read from the difference between the status
//! the pass found and the one it wrote, and from the changes it made, so a notice follows a
//! change that happened (a restart, or a pass that found nothing new, tells nothing again).

use std::collections::BTreeMap;

use crate::api::{LABEL_NODE, NodeStatus, Phase, Plan, PlanStatus};
use crate::controller::decide::{Change, Decision};
use crate::controller::status::{self, COMPLETE, STALLED};
use crate::notify::message::{Kind, Notice};

/// The notices of a pass of `plan` (whose status is the one the pass read) that decided
/// `decision` and wrote it, at `now` (RFC 3339).
pub fn of(plan: &Plan, decision: &Decision, now: &str) -> Vec<Notice> {
    let none = PlanStatus::default();
    let old = plan.status.as_ref().unwrap_or(&none);
    let new = &decision.status;
    let namespace = plan.metadata.namespace.clone().unwrap_or_default();
    let name = plan.metadata.name.clone().unwrap_or_default();
    let version = new.latest_version.clone();
    let of_version = version
        .as_deref()
        .map(|v| format!(" to {v}"))
        .unwrap_or_default();
    let notice = |kind: Kind, node: Option<&str>, reason: Option<&str>, message: String| Notice {
        kind,
        namespace: namespace.clone(),
        plan: name.clone(),
        node: node.map(str::to_owned),
        version: version.clone(),
        reason: reason.map(str::to_owned),
        message,
        time: now.to_owned(),
    };
    let mut out = Vec::new();

    for change in decision.before.iter().chain(&decision.after) {
        if let Change::LabelNode { node, labels, .. } = change
            && !labels.is_empty()
        {
            out.push(notice(
                Kind::NodeDone,
                Some(node),
                None,
                format!("node {node} upgraded{of_version} (Plan {namespace}/{name})"),
            ));
        }
    }

    let was_applying = old.applying.as_deref().unwrap_or_default();
    let started: Vec<&str> = (decision.before.iter().chain(&decision.after))
        .filter_map(|change| match change {
            Change::CreateJob(job) => job.metadata.labels.as_ref()?.get(LABEL_NODE),
            _ => None,
        })
        .map(String::as_str)
        .filter(|node| !was_applying.iter().any(|n| n == node))
        .collect();
    if !started.is_empty() && first_start(old, new) {
        let selected = new
            .history
            .as_ref()
            .and_then(|h| h.first())
            .map(|r| r.selected);
        let on = selected
            .map(|n| format!(" on {n} node(s)"))
            .unwrap_or_default();
        out.push(notice(
            Kind::PlanStarted,
            None,
            None,
            format!("Plan {namespace}/{name} started rolling out{of_version}{on}"),
        ));
    }
    for node in &started {
        out.push(notice(
            Kind::NodeStarted,
            Some(node),
            None,
            format!("node {node} started its upgrade{of_version} (Plan {namespace}/{name})"),
        ));
    }

    let old_entries: BTreeMap<&str, &NodeStatus> = (old.nodes.iter().flatten())
        .map(|e| (e.name.as_str(), e))
        .collect();
    for entry in new.nodes.iter().flatten() {
        let before = old_entries
            .get(entry.name.as_str())
            .map(|e| e.phase.as_str());
        let kind = match Phase::parse(&entry.phase) {
            Some(Phase::Failed | Phase::Skipped) => Kind::NodeFailed,
            Some(Phase::Held) => Kind::NodeHeld,
            _ => continue,
        };
        if before == Some(entry.phase.as_str()) {
            continue;
        }
        let node = entry.name.as_str();
        let why = entry.message.as_deref().unwrap_or("no reason given");
        let message = match kind {
            Kind::NodeHeld => format!("node {node} is held (Plan {namespace}/{name}): {why}"),
            _ if entry.phase == Phase::Skipped.as_str() => format!(
                "node {node} was skipped by the rollout{of_version} (Plan {namespace}/{name}): {why}"
            ),
            _ => format!(
                "node {node} failed to upgrade{of_version} (Plan {namespace}/{name}): {why}"
            ),
        };
        out.push(notice(kind, Some(node), Some(&entry.phase), message));
    }

    let conditions = |s: &PlanStatus| s.conditions.clone().unwrap_or_default();
    let (old_conditions, new_conditions) = (conditions(old), conditions(new));
    let complete = status::get(&new_conditions, COMPLETE);
    let complete_reason = complete.and_then(|c| c.reason.as_deref());
    let complete_message = complete
        .and_then(|c| c.message.as_deref())
        .unwrap_or_default();
    let old_complete = status::get(&old_conditions, COMPLETE);
    if status::is(&new_conditions, COMPLETE, "True")
        && !status::is(&old_conditions, COMPLETE, "True")
    {
        let done = new
            .history
            .as_ref()
            .and_then(|h| h.first())
            .map(|r| format!(": {} of {} node(s) done", r.done, r.selected))
            .unwrap_or_default();
        out.push(notice(
            Kind::PlanComplete,
            None,
            complete_reason,
            format!(
                "Plan {namespace}/{name} is complete{}{done}",
                version
                    .as_deref()
                    .map(|v| format!(" at {v}"))
                    .unwrap_or_default()
            ),
        ));
    }
    let stalled = status::get(&new_conditions, STALLED).filter(|c| c.status == "True");
    let was_stalled = status::get(&old_conditions, STALLED).filter(|c| c.status == "True");
    if let Some(stalled) = stalled
        && was_stalled.is_none_or(|w| w.reason != stalled.reason)
    {
        let reason = stalled.reason.as_deref();
        out.push(notice(
            Kind::PlanStalled,
            None,
            reason,
            format!(
                "Plan {namespace}/{name} is stalled ({}): {complete_message}",
                reason.unwrap_or("Stalled")
            ),
        ));
    }
    let awaiting = crate::api::Reason::AwaitingApproval.as_str();
    if complete_reason == Some(awaiting)
        && old_complete.and_then(|c| c.reason.as_deref()) != Some(awaiting)
    {
        out.push(notice(
            Kind::AwaitingApproval,
            None,
            complete_reason,
            format!("Plan {namespace}/{name} awaits approval: {complete_message}"),
        ));
    }
    out
}

/// Whether no node of the new status' rollout had started before this pass: nothing applied,
/// and the rollout (the newest `status.history` entry) either new or with nothing done yet.
fn first_start(old: &PlanStatus, new: &PlanStatus) -> bool {
    let busy = old.applying.as_ref().is_some_and(|a| !a.is_empty());
    let hash = new.latest_hash.as_deref();
    let earlier = old
        .history
        .as_ref()
        .and_then(|h| h.first())
        .filter(|run| Some(run.hash.as_str()) == hash);
    !busy && earlier.is_none_or(|run| run.done == 0 && run.failed == 0)
}
