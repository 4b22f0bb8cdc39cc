//! Retries and failures: a failed node keeps its slot (the rollout stops there) until the
//! Plan's pod template or hash changes, `spec.retry` retries it after its backoff, or the retry
//! annotation names it; a node whose drain timed out with `onTimeout: Skip` is given up for
//! this hash, unless the retry annotation names it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;

use super::decision::Change;
use super::facts::{finished_at, listed, ran_for, uid_of, until};
use super::history;
use super::holds::{Gate, hold};
use super::pass::{Context, Pass};
use super::plan::Resolved;
use crate::api::{ANNOTATION_HISTORY, ANNOTATION_RETRY, NodeStatus, Phase, Plan, Reason};
use crate::controller::job;
use crate::controller::select;
use crate::controller::status::stamp;
use crate::syntax::duration;

/// Nodes skipped earlier stay skipped (and listed in `status.nodes`) while the Plan's hash
/// is the same, unless the retry annotation names them.
pub(super) fn carry_skipped(pass: &mut Pass<'_, '_>, r: &Resolved) {
    let cx = pass.cx;
    let skipped: Vec<NodeStatus> = cx
        .old_entries
        .values()
        .filter(|e| {
            e.phase == Phase::Skipped.as_str()
                || (e.phase == Phase::Failed.as_str() && e.given_up == Some(true))
        })
        .cloned()
        .collect();
    let selector = select::node_selector(cx.plan).ok().flatten();
    for entry in skipped {
        let node = entry.name.clone();
        let current = job::job_name(&cx.plan_name, &node, &r.hash);
        let eligible = pass.node(&node).is_some_and(|n| {
            selector
                .as_ref()
                .is_some_and(|s| select::eligible(&cx.plan_name, s, n))
        });
        if !eligible || entry.job.as_deref() != Some(current.as_str()) {
            // Gone, deselected or opted out; or the Plan changed: it runs like any other node.
            continue;
        }
        if r.ready
            && let Some(request) = &cx.retry_request
            && retry_requested(request, &node)
        {
            pass.ledger.retried_on_request.insert(node.clone());
            let why = format!("retried on request ({ANNOTATION_RETRY})");
            let since = entry.since.clone().unwrap_or_default();
            let message = entry.message.clone().unwrap_or_default();
            note_retry(pass, &node, &current, &since, &why, &message);
            continue;
        }
        if entry.given_up == Some(true) {
            if failure_budget(cx).is_none() {
                // The budget is gone: the node holds its slot again, as any failed node.
                continue;
            }
            pass.ledger.given_up.insert(node.clone());
            if !keeps_failed_cordoned(cx)
                && let Some(n) = pass.node(&node)
                && pass.claims(&node, n)
            {
                pass.release(&node);
            }
        }
        pass.ledger.skipped.insert(node.clone());
        pass.out.enter(entry);
    }
}

/// A failed node keeps its slot, recording the pod template it failed with (once), so an
/// edit of the Plan that changes it retries the node.
pub(super) fn fail(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    gate: Option<&Gate>,
    node_name: &str,
    job: &Job,
    (reason, message): (Reason, String),
    template: Option<String>,
) {
    let cx = pass.cx;
    let job_name = job.metadata.name.as_deref().unwrap_or_default();
    let previous = cx
        .old_entries
        .get(node_name)
        .filter(|p| p.phase == Phase::Failed.as_str() && p.job.as_deref() == Some(job_name));
    let since = previous
        .and_then(|p| p.since.clone())
        .unwrap_or_else(|| cx.now.clone());
    let template = previous.and_then(|p| p.template.clone()).or(template);
    let retries = cx
        .old_entries
        .get(node_name)
        .filter(|p| p.job.as_deref() == Some(job_name))
        .and_then(|p| p.retries);
    if previous.is_none() {
        if let Some((false, at)) = finished_at(job) {
            pass.out.finished_jobs.push((false, ran_for(job, at)));
        }
        // Per Job object: a Job replaced under the same name that fails again is told again.
        let key = format!("{reason}/{}", uid_of(job));
        pass.out
            .note_once(node_name, true, reason, message.clone(), &key);
        record_failure_on_node(pass, job, node_name, &r.version);
    }
    let shown = match due(pass, r, gate, node_name, &since, retries.unwrap_or(0)) {
        RetryDue::Now { retries, why } => {
            retry(pass, node_name, job_name, &since, retries, &why, &message);
            return;
        }
        RetryDue::At(at) => {
            let shown = format!(
                "{message}; retry {} at {}",
                retry_ordinal(cx.plan, retries),
                stamp(at)
            );
            wait_for_retry(pass, at, &shown);
            shown
        }
        RetryDue::Held((reason, why)) => {
            let shown = format!(
                "{message}; retry {} waits while {why}",
                retry_ordinal(cx.plan, retries)
            );
            pass.ledger
                .held
                .insert(node_name.to_owned(), (reason, shown.clone()));
            shown
        }
        RetryDue::Never if within_budget(pass) => {
            give_up(pass, node_name);
            format!(
                "{message}; the rollout goes on without it (failureBudget: {} of {})",
                pass.ledger.given_up.len(),
                failure_budget(pass.cx).unwrap_or(0)
            )
        }
        RetryDue::Never => {
            let also = given_up_list(pass);
            pass.record_failure(reason, format!("{message}{also}"));
            message
        }
    };
    let given_up = pass.ledger.given_up.contains(node_name).then_some(true);
    pass.out.enter(NodeStatus {
        name: node_name.to_owned(),
        phase: Phase::Failed.as_str().into(),
        job: Some(job_name.to_owned()),
        message: Some(shown),
        since: Some(since),
        template,
        retries,
        given_up,
    });
}

/// When a failed node (failed since `since`, retried `retries` times) is tried again: now
/// when the retry annotation names it (its count starts over), or automatically
/// (`spec.retry`) once its backoff has passed and nothing holds the node (a pause, a closed
/// gate); never when its retries are used up.
pub(super) fn due(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    gate: Option<&Gate>,
    node_name: &str,
    since: &str,
    retries: i32,
) -> RetryDue {
    let cx = pass.cx;
    if r.ready
        && let Some(request) = &cx.retry_request
        && retry_requested(request, node_name)
    {
        pass.ledger.retried_on_request.insert(node_name.to_owned());
        return RetryDue::Now {
            retries: 0,
            why: format!("retried on request ({ANNOTATION_RETRY})"),
        };
    }
    let Some((limit, backoff)) = retry_policy(cx.plan) else {
        return RetryDue::Never;
    };
    if retries >= limit {
        return RetryDue::Never;
    }
    // Nothing starts anew in a cancelled rollout, nor after a window closed with Stop.
    if r.cancelled {
        return RetryDue::Held((Reason::Cancelled, "the rollout is cancelled".into()));
    }
    if r.window_stopped {
        let why = "the window closed (onClose: Stop)".into();
        return RetryDue::Held((Reason::Waiting, why));
    }
    if let Some(hold) = hold(pass, gate, node_name) {
        return RetryDue::Held(hold);
    }
    let now = cx.obs.now;
    let failed_at: Timestamp = since.parse().unwrap_or(now);
    let due = failed_at
        .checked_add(backoff_after(backoff, retries))
        .unwrap_or(failed_at);
    if now < due {
        return RetryDue::At(due);
    }
    RetryDue::Now {
        retries: retries + 1,
        why: format!("retry {} of {limit}", retries + 1),
    }
}

/// How many nodes the Plan's `failureBudget` lets fail, if it has one: a number, or a
/// percentage of the nodes it selects (rounded down, at least one).
pub(super) fn failure_budget(cx: &Context<'_>) -> Option<usize> {
    let budget = cx.plan.spec.failure_budget.as_ref()?;
    let selector = select::node_selector(cx.plan).ok().flatten();
    let selected = cx
        .nodes
        .values()
        .filter(|n| {
            selector
                .as_ref()
                .is_some_and(|s| select::eligible(&cx.plan_name, s, n))
        })
        .count();
    budget.nodes.nodes(selected)
}

/// A failed Job (each one, when first seen failed) goes into the node's history.
fn record_failure_on_node(pass: &mut Pass<'_, '_>, job: &Job, node_name: &str, version: &str) {
    let at = finished_at(job).map_or(pass.cx.obs.now, |(_, at)| at);
    let history = history::node(
        pass.node(node_name),
        &history::Upgrade {
            plan: &pass.cx.plan_name,
            version,
            succeeded: false,
            at: &stamp(at),
            seconds: Some(ran_for(job, at).as_secs()),
        },
    );
    pass.out.before.push(Change::LabelNode {
        node: node_name.to_owned(),
        labels: BTreeMap::new(),
        annotations: BTreeMap::from([(ANNOTATION_HISTORY.to_owned(), history)]),
    });
}

/// Another failed node fits in the budget.
fn within_budget(pass: &Pass<'_, '_>) -> bool {
    failure_budget(pass.cx).is_some_and(|allowed| pass.ledger.given_up.len() < allowed)
}

/// The rollout goes on without a failed node: it holds no slot (as a skipped node), and its
/// claim goes back unless the budget keeps failed nodes cordoned.
fn give_up(pass: &mut Pass<'_, '_>, node_name: &str) {
    pass.ledger.given_up.insert(node_name.to_owned());
    pass.ledger.skipped.insert(node_name.to_owned());
    if !keeps_failed_cordoned(pass.cx)
        && let Some(node) = pass.node(node_name)
        && pass.claims(node_name, node)
    {
        pass.release(node_name);
    }
}

/// `failureBudget.failedNodes` is not `Uncordoned`.
pub(super) fn keeps_failed_cordoned(cx: &Context<'_>) -> bool {
    cx.plan
        .spec
        .failure_budget
        .as_ref()
        .is_none_or(|b| b.failed_nodes.as_deref() != Some("Uncordoned"))
}

/// "; also failed: …" naming the nodes the rollout went on without, or nothing.
pub(super) fn given_up_list(pass: &Pass<'_, '_>) -> String {
    let nodes: Vec<&str> = pass.ledger.given_up.iter().map(String::as_str).collect();
    if nodes.is_empty() {
        String::new()
    } else {
        format!(
            "; also failed, within failureBudget: {}",
            listed("node", &nodes)
        )
    }
}

/// A failed node is tried again: its Job goes (the next pass creates it anew, drain
/// included), and the node keeps its slot meanwhile.
fn retry(
    pass: &mut Pass<'_, '_>,
    node_name: &str,
    job_name: &str,
    since: &str,
    retries: i32,
    why: &str,
    failure: &str,
) {
    pass.out.before.push(Change::DeleteJob {
        name: job_name.to_owned(),
        why: format!("{why} after: {failure}"),
        unless_begun: false,
    });
    note_retry(pass, node_name, job_name, since, why, failure);
    pass.out.enter(NodeStatus {
        name: node_name.to_owned(),
        phase: Phase::Retrying.as_str().into(),
        job: Some(job_name.to_owned()),
        message: Some(format!("{why}: the Job is created again")),
        since: Some(pass.cx.now.clone()),
        template: None,
        retries: Some(retries),
        given_up: None,
    });
}

/// The Retrying events of a node tried again (once per failure).
pub(super) fn note_retry(
    pass: &mut Pass<'_, '_>,
    node_name: &str,
    job_name: &str,
    since: &str,
    why: &str,
    failure: &str,
) {
    let message = format!("Node {node_name}: {why} of Job {job_name}, which failed: {failure}");
    let key = format!("Retrying/{job_name}/{since}");
    pass.out
        .note_once(node_name, false, Reason::Retrying, message, &key);
}

/// A failed node waits for its automatic retry: the Plan is not failed (yet), and is looked
/// at again when the retry is due.
pub(super) fn wait_for_retry(pass: &mut Pass<'_, '_>, at: Timestamp, message: &str) {
    pass.out.requeue_within(until(pass.cx.obs.now, at));
    if pass.ledger.retrying.is_none() {
        pass.ledger.retrying = Some(message.to_owned());
    }
}

/// A node whose drain timed out with `onTimeout: Skip`: its Job goes and the node is
/// returned at once; it leaves `applying`, and the rollout goes on without it.
pub(super) fn skip(pass: &mut Pass<'_, '_>, node_name: &str, job_name: &str) {
    pass.ledger.skipped.insert(node_name.to_owned());
    pass.out.before.push(Change::DeleteJob {
        name: job_name.to_owned(),
        why: "its node's drain timed out (onTimeout: Skip)".into(),
        unless_begun: false,
    });
    pass.release(node_name);
}

/// The retry annotation is consumed: removed once acted on, with a word about the nodes it
/// named that had not failed.
pub(super) fn consume_retry_request(pass: &mut Pass<'_, '_>) {
    let Some(value) = pass.cx.retry_request.clone() else {
        return;
    };
    let retried = &pass.ledger.retried_on_request;
    let unmatched: Vec<String> = match retry_request_nodes(&value) {
        None if retried.is_empty() => vec!["(all)".to_owned()],
        None => Vec::new(),
        Some(nodes) => nodes.into_iter().filter(|n| !retried.contains(n)).collect(),
    };
    if !unmatched.is_empty() {
        pass.out.note(
            true,
            Reason::Retrying,
            format!(
                "{ANNOTATION_RETRY}={value}: no failed node to retry among {}",
                unmatched.join(",")
            ),
        );
    }
    pass.out.after.push(Change::ClearAnnotation {
        key: ANNOTATION_RETRY,
        value,
    });
}

/// When a failed node is tried again.
pub(super) enum RetryDue {
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
pub(super) fn retry_policy(plan: &Plan) -> Option<(i32, Duration)> {
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
pub(super) fn backoff_after(backoff: Duration, retries: i32) -> jiff::SignedDuration {
    let cap = RETRY_BACKOFF_CAP.max(backoff);
    let factor = 1u32 << retries.clamp(0, 20);
    let wait = backoff.checked_mul(factor).unwrap_or(cap).min(cap);
    jiff::SignedDuration::try_from(wait).unwrap_or(jiff::SignedDuration::MAX)
}

/// "2 of 3": the next automatic retry of a node retried `retries` times.
pub(super) fn retry_ordinal(plan: &Plan, retries: Option<i32>) -> String {
    let limit = retry_policy(plan).map_or(0, |(limit, _)| limit);
    format!("{} of {limit}", retries.unwrap_or(0) + 1)
}

/// The nodes a retry annotation names; `None` for `all` (or `*`).
pub(super) fn retry_request_nodes(value: &str) -> Option<BTreeSet<String>> {
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

pub(super) fn retry_requested(value: &str, node: &str) -> bool {
    retry_request_nodes(value).is_none_or(|nodes| nodes.contains(node))
}
