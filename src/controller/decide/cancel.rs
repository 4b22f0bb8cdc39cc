//! Phase: cancelling a rollout. `upgrade.cattle.io/cancel` (any value) ends the rollout of the
//! current hash: nothing new starts, Jobs whose upgrade has not begun stop and their nodes are
//! released, upgrades that began finish. `status.cancelled` keeps it across passes and restarts;
//! `upgrade.cattle.io/resume` or a new version or hash starts the Plan again. Both annotations
//! are removed once acted on. An annotation, not a spec field: cancelling is an operator's act
//! on one rollout, not a state to declare (a field kept in Git would cancel the next version
//! too).

use k8s_openapi::api::core::v1::Node;

use super::choose;
use super::decision::Change;
use super::facts::{finished_at, listed};
use super::jobs::Jobs;
use super::pass::Pass;
use super::plan::Resolved;
use super::pods;
use crate::api::{ANNOTATION_CANCEL, ANNOTATION_RESUME, Cancellation, Phase, Reason};
use crate::controller::select;
use crate::controller::status::COMPLETE;

/// Acts on the cancel and resume annotations; whether the rollout of `r.hash` is cancelled.
pub(super) fn judge(pass: &mut Pass<'_, '_>, r: &Resolved) -> bool {
    let cx = pass.cx;
    let annotation =
        |key: &str| (cx.plan.metadata.annotations.as_ref()).and_then(|a| a.get(key).cloned());
    if let Some(c) = &pass.out.status.cancelled
        && !r.hash.is_empty()
        && c.hash != r.hash
    {
        let text = format!(
            "Plan {}: hash {} is a new rollout; the cancelled one ({}) stays cancelled",
            cx.plan_name, r.hash, c.hash
        );
        pass.out.status.cancelled = None;
        pass.out.note(false, Reason::Resumed, text);
    }
    let (cancel, resume) = (annotation(ANNOTATION_CANCEL), annotation(ANNOTATION_RESUME));
    if let Some(value) = resume {
        if cancel.is_none() {
            let text = match pass.out.status.cancelled.take() {
                Some(_) => format!(
                    "Plan {} resumes its rollout ({ANNOTATION_RESUME})",
                    cx.plan_name
                ),
                None => format!(
                    "{ANNOTATION_RESUME}: the rollout of Plan {} is not cancelled",
                    cx.plan_name
                ),
            };
            pass.out.note(false, Reason::Resumed, text);
        }
        pass.out.after.push(Change::ClearAnnotation {
            key: ANNOTATION_RESUME,
            value,
        });
    }
    if let Some(value) = cancel
        && !r.hash.is_empty()
    {
        if pass.out.status.cancelled.is_none() {
            pass.out.status.cancelled = Some(Cancellation {
                hash: r.hash.clone(),
                version: Some(r.version.clone()),
                since: Some(cx.now.clone()),
            });
            let text = format!(
                "Plan {}: the rollout of version {} (hash {}) is cancelled ({ANNOTATION_CANCEL}): \
                 upgrades not begun stop, begun ones finish",
                cx.plan_name, r.version, r.hash
            );
            pass.out.note(false, Reason::Cancelled, text);
        }
        pass.out.after.push(Change::ClearAnnotation {
            key: ANNOTATION_CANCEL,
            value,
        });
    }
    pass.out
        .status
        .cancelled
        .as_ref()
        .is_some_and(|c| c.hash == r.hash)
}

/// The nodes of a cancelled rollout that go on: those whose upgrade may have begun (a Job
/// finishing from an earlier hash, a Job past its gate, one that succeeded and whose node waits
/// to be labelled, one that failed: a failure stays one, with its slot, until someone acts).
/// The others are let go: their Jobs stop and their claims go back.
pub(super) fn begun<'a>(pass: &Pass<'_, 'a>, jobs: &Jobs<'a>) -> Vec<&'a Node> {
    let pods = pass.cx.obs.pods;
    choose::under_way(pass, jobs)
        .into_iter()
        .filter(|name| {
            if jobs.finishing.contains_key(name) {
                return true;
            }
            if let Some(job) = jobs.current.get(name) {
                return finished_at(job).is_some() || pods::upgrade_may_have_started(job, pods);
            }
            // Waiting to be labelled, or failed with its Job expired since.
            pass.out.entries.get(name).is_some_and(|e| {
                matches!(
                    Phase::parse(&e.phase),
                    Some(Phase::WaitingDelay | Phase::WaitingHealthy | Phase::Converging)
                )
            }) || pass.cx.old_phase(name) == Some(Phase::Failed)
        })
        .filter_map(|name| pass.node(&name))
        .collect()
}

/// Complete is False with reason Cancelled: the nodes done and not done, what still runs, and
/// how to start again.
pub(super) fn condition(pass: &mut Pass<'_, '_>, r: &Resolved, applying: &[String]) {
    let cx = pass.cx;
    let mut done = Vec::new();
    let mut not_done = Vec::new();
    if let Ok(Some(selector)) = select::node_selector(cx.plan) {
        for (name, node) in &cx.nodes {
            if !select::eligible(&cx.plan_name, &selector, node) {
                continue;
            }
            if pass.ledger.done_now.contains(name) || select::done(&cx.plan_name, node, &r.hash) {
                done.push(name.as_str());
            } else {
                not_done.push(name.as_str());
            }
        }
    }
    let since = (pass.out.status.cancelled.as_ref())
        .and_then(|c| c.since.clone())
        .unwrap_or_default();
    let mut message = format!(
        "the rollout of version {} was cancelled at {since}: {} of {} node(s) done",
        r.version,
        done.len(),
        done.len() + not_done.len()
    );
    if !done.is_empty() {
        message.push_str(&format!(" ({})", listed("node", &done)));
    }
    if !not_done.is_empty() {
        message.push_str(&format!("; not done: {}", listed("node", &not_done)));
    }
    if !applying.is_empty() {
        message.push_str(&format!(
            "; the upgrades that began on {} finish",
            applying.join(",")
        ));
    }
    message.push_str(&format!(
        "; annotate the Plan with {ANNOTATION_RESUME}=true, or set a new version, to start again"
    ));
    pass.out
        .set_condition(COMPLETE, "False", Reason::Cancelled, &message);
}
