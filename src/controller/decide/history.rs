//! What a pass leaves for people to read later: the Plan's last rollouts (`status.history`, one
//! per hash, newest first) and each node's last upgrades (the `upgrade.cattle.io/history`
//! annotation, written with the node's completion label or when its Job fails).

use k8s_openapi::api::core::v1::Node;

use super::decision::Tally;
use crate::api::{
    ANNOTATION_HISTORY, Condition, NODE_HISTORY, PLAN_HISTORY, PlanRun, PlanStatus, Reason,
};
use crate::controller::status::{self, COMPLETE, STALLED};

/// Brings `status.history` up to date with this pass: a new hash opens a run; the run of the
/// current hash counts its nodes and says how it ended (`Complete`, `Cancelled`, `Failed`) once
/// it has.
pub(super) fn plan(status: &mut PlanStatus, conditions: &[Condition], tally: &Tally, now: &str) {
    let (Some(hash), Some(version)) = (
        status.latest_hash.clone().filter(|h| !h.is_empty()),
        status.latest_version.clone(),
    ) else {
        return;
    };
    let mut runs = status.history.take().unwrap_or_default();
    if runs.first().is_none_or(|run| run.hash != hash) {
        runs.insert(
            0,
            PlanRun {
                version,
                hash,
                started: now.to_owned(),
                ..PlanRun::default()
            },
        );
    }
    runs.truncate(PLAN_HISTORY);
    let run = &mut runs[0];
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    run.done = count(tally.done);
    run.failed = count(tally.failed);
    run.selected = count(tally.selected);
    let reason = status::get(conditions, COMPLETE).and_then(|c| c.reason.as_deref());
    let result = if status::is(conditions, COMPLETE, "True") {
        Some("Complete")
    } else if reason == Some(Reason::Cancelled.as_str()) {
        Some("Cancelled")
    } else if status::is(conditions, STALLED, "True") && tally.failed > 0 {
        Some("Failed")
    } else {
        None
    };
    if run.result.as_deref() != result {
        run.result = result.map(str::to_owned);
        run.finished = result.map(|_| now.to_owned());
    }
    status.history = Some(runs);
}

/// One upgrade of a node, as its history keeps it.
pub(super) struct Upgrade<'a> {
    pub plan: &'a str,
    pub version: &'a str,
    pub succeeded: bool,
    pub at: &'a str,
    pub seconds: Option<u64>,
}

/// The node's history annotation with `upgrade` first, at most [`NODE_HISTORY`] entries (an
/// unreadable one is started over).
pub(super) fn node(node: Option<&Node>, upgrade: &Upgrade<'_>) -> String {
    let old = node
        .and_then(|n| n.metadata.annotations.as_ref())
        .and_then(|a| a.get(ANNOTATION_HISTORY))
        .and_then(|text| serde_json::from_str::<Vec<serde_json::Value>>(text).ok())
        .unwrap_or_default();
    let mut entry = serde_json::json!({
        "plan": upgrade.plan,
        "version": upgrade.version,
        "result": if upgrade.succeeded { "Succeeded" } else { "Failed" },
        "at": upgrade.at,
    });
    if let Some(seconds) = upgrade.seconds {
        entry["seconds"] = seconds.into();
    }
    let entries: Vec<serde_json::Value> = std::iter::once(entry)
        .chain(old)
        .take(NODE_HISTORY)
        .collect();
    serde_json::Value::from(entries).to_string()
}
