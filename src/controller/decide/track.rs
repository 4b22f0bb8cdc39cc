//! Phase: each chosen node. It finishes an earlier Job, gets its Job (when the Plan is ready and
//! nothing holds it), is followed through its gate (cordon, drain, upgrade), fails and is
//! retried (see [`super::retries`]), or has its Job replaced after an edit of the Plan. Once a
//! node's upgrade may have begun, only a change of what it runs replaces its Job.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;

use super::choose;
use super::decision::{Change, DrainProgress, JobFields, Refusal};
use super::facts::{annotation, failure_message, finished_at, until};
use super::finish;
use super::holds::{Gate, hold};
use super::jobs::Jobs;
use super::pass::Pass;
use super::plan::Resolved;
use super::pods;
use super::retries::{self, RetryDue};
use crate::api::{
    ANNOTATION_ADOPTED, ANNOTATION_DRAIN_FAILED, ANNOTATION_DRAINED, ANNOTATION_NUDGED,
    ANNOTATION_RUN, ANNOTATION_TEMPLATE, Phase, Plan, PlanStatus, Reason,
};
use crate::controller::cordon::has_claim;
use crate::controller::job;
use crate::controller::status::stamp;

/// How often a Plan with a Job that has no pod is looked at (the pod may not be created).
const NO_POD_RETRY: Duration = Duration::from_secs(10);
/// How often a node whose new Job waits for the Job it replaces to go is looked at.
const PREDECESSOR_RETRY: Duration = Duration::from_secs(5);
/// How long a node keeps this Plan's cordon while no pod of its Job is on it.
const IDLE_CORDON_GRACE: Duration = Duration::from_secs(60);
/// After how long without a pod a Job is nudged: the Job controller's count of the pods it
/// expects lapses after five minutes, but it looks at the Job again only when something changes.
const NUDGE_AFTER: Duration = Duration::from_secs(300);

/// Each chosen node: finishing an earlier Job, started (when the Plan is ready), failed,
/// replaced after an edit, or followed through its gate (cordon, drain, upgrade).
pub(super) fn nodes<'a>(
    pass: &mut Pass<'_, 'a>,
    r: &Resolved,
    jobs: &Jobs<'a>,
    gate: Option<&Gate>,
    chosen: &[&'a Node],
) {
    let gated = pass.cx.gated();
    let current = r.ready.then(|| current_plan(pass.cx.plan, r));
    for &node in chosen {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        if pass.out.entries.contains_key(&node_name) {
            continue; // waiting out its delay
        }
        if let Some(job) = jobs.finishing.get(&node_name).copied() {
            let job_name = job.metadata.name.clone().unwrap_or_default();
            let message = "finishing the upgrade its Job began before the Plan changed; the \
                           node runs the Plan again when it ends";
            let entry = pass
                .cx
                .entry(&node_name, Phase::Upgrading, &job_name, message);
            pass.out.enter(entry);
            continue;
        }
        let existing = jobs.current.get(&node_name).copied();
        let desired = current
            .as_ref()
            .map(|plan| job::build(plan, node, pass.cx.obs.settings));
        match (existing, desired) {
            (None, Some(desired)) => start(pass, r, gate, &node_name, desired, gated),
            (None, None) => {
                if let Some(old) = pass.cx.old_entries.get(&node_name).cloned() {
                    pass.out.enter(old);
                }
            }
            (Some(job), desired) => follow(pass, r, gate, &node_name, job, desired.as_ref()),
        }
    }
}

/// The Plan as Jobs are built from it: with the version and hash of this pass.
pub(super) fn current_plan(plan: &Plan, r: &Resolved) -> Plan {
    let mut current = plan.clone();
    current.status = Some(PlanStatus {
        latest_version: Some(r.version.clone()),
        latest_hash: Some(r.hash.clone()),
        ..PlanStatus::default()
    });
    current
}

/// A selected node without a Job: it gets one, unless it failed with the very pod template
/// the Plan still has (a failure stays a failure, even after its Job expired, until the
/// Plan's pod template or hash changes).
fn start(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    gate: Option<&Gate>,
    node_name: &str,
    desired: Job,
    gated: bool,
) {
    let desired_name = desired.metadata.name.clone().unwrap_or_default();
    let template = annotation(&desired, ANNOTATION_TEMPLATE).unwrap_or_default();
    let previous = pass.cx.old_entries.get(node_name).cloned();
    if let Some(waiting) = previous.as_ref().filter(|p| {
        matches!(
            Phase::parse(&p.phase),
            Some(Phase::WaitingDelay | Phase::WaitingHealthy)
        ) && p.job.as_deref() == Some(desired_name.as_str())
    }) {
        finish::without_job(pass, r, node_name, &desired_name, waiting);
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
        match retries::due(
            pass,
            r,
            gate,
            node_name,
            &since,
            failed.retries.unwrap_or(0),
        ) {
            RetryDue::Now { retries: next, why } => {
                retries::note_retry(pass, node_name, &desired_name, &since, &why, &message);
                retries = Some(next);
            }
            RetryDue::At(at) => {
                retries::wait_for_retry(pass, at, &message);
                pass.out.enter(failed.clone());
                return;
            }
            RetryDue::Held((reason, why)) => {
                let mut entry = failed.clone();
                let shown = format!("{message}; its retry waits while {why}");
                entry.message = Some(shown.clone());
                pass.ledger
                    .held
                    .insert(node_name.to_owned(), (reason, shown));
                pass.out.enter(entry);
                return;
            }
            RetryDue::Never => {
                pass.record_failure(Reason::JobFailed, message);
                pass.out.enter(failed.clone());
                return;
            }
        }
    } else if !pass.ledger.retried_on_request.contains(node_name)
        && previous.as_ref().is_none_or(|p| {
            // A retry decided last pass (on request, or when nothing held it) goes on.
            p.phase != Phase::Retrying.as_str() || p.job.as_deref() != Some(desired_name.as_str())
        })
        && let Some((reason, why)) = hold(pass, gate, node_name)
    {
        // Its Job went away (deleted by hand, or retried) while a pause or a gate holds the
        // node: it keeps its slot, and nothing of this Plan keeps it cordoned meanwhile.
        let message = format!("its Job is created once nothing holds the node: {why}");
        let entry = pass
            .cx
            .entry(node_name, Phase::Preparing, &desired_name, &message);
        pass.out.enter(entry);
        pass.ledger.held.insert(
            node_name.to_owned(),
            (reason, format!("node {node_name}: {message}")),
        );
        if let Some(node) = pass.node(node_name)
            && has_claim(node, &pass.cx.plan_name, &pass.cx.who)
        {
            pass.release(node_name);
        }
        return;
    }
    let now = pass.cx.obs.now;
    if let Some(Refusal::Job {
        template: refused,
        message,
        retry_at,
    }) = pass.cx.obs.refusals.get(&desired_name)
        && *refused == template
        && now < *retry_at
    {
        let text = format!("the API server refused Job {desired_name}: {message}");
        refuse(pass, node_name, &desired_name, text);
        if let Some(entry) = pass.out.entries.get_mut(node_name) {
            entry.message = Some(format!(
                "{}; trying again at {}",
                entry.message.clone().unwrap_or_default(),
                stamp(*retry_at)
            ));
        }
        pass.out.requeue_within(until(now, *retry_at));
        return;
    }
    if let Some(lingering) = predecessor(pass, &desired_name) {
        // The Job controller counts the pods it expects by Job name: a Job re-created under
        // the name of one whose pods may still come or go can wait for a pod that never
        // comes (found by the soak: three replacements in 35 s, no pod until the deadline).
        let message = format!("its Job is created once {lingering}");
        let entry = pass
            .cx
            .entry(node_name, Phase::Preparing, &desired_name, &message);
        let since = entry.since.as_deref().and_then(|s| s.parse().ok());
        pass.out.enter(entry);
        return_idle_cordon(pass, node_name, since);
        pass.out.requeue_within(PREDECESSOR_RETRY);
        return;
    }
    adopt_go_applying_cordon(pass, node_name, gated);
    pass.out.after.push(Change::CreateJob(Box::new(desired)));
    let phase = if gated {
        Phase::Preparing
    } else {
        Phase::Upgrading
    };
    let mut entry = pass.cx.entry(node_name, phase, &desired_name, "");
    entry.retries = retries.or(entry.retries);
    pass.out.enter(entry);
}

/// What of an earlier Job of this name is still there: the Job itself (deleted in this pass, or
/// being deleted), or its pods.
fn predecessor(pass: &Pass<'_, '_>, job_name: &str) -> Option<String> {
    let deleting = pass
        .out
        .before
        .iter()
        .any(|c| matches!(c, Change::DeleteJob { name, .. } if name == job_name));
    let cached = pass
        .cx
        .obs
        .jobs
        .iter()
        .any(|j| j.metadata.name.as_deref() == Some(job_name));
    if deleting || cached {
        return Some(format!("the Job {job_name} it replaces is gone"));
    }
    let pods: Vec<&str> = pods::of_job_named(job_name, pass.cx.obs.pods)
        .into_iter()
        .filter_map(|p| p.metadata.name.as_deref())
        .collect();
    (!pods.is_empty()).then(|| {
        format!(
            "the pods of the Job it replaces are gone (left: {})",
            pods.join(", ")
        )
    })
}

/// Returns this Plan's cordon of a node on which no pod of the Plan has run for
/// [`IDLE_CORDON_GRACE`] since `since`: its drain cordons it again once its pod waits in its
/// gate. A replacement normally takes seconds; a node must not stay cordoned while its Job
/// waits for a pod that may never come.
fn return_idle_cordon(pass: &mut Pass<'_, '_>, node_name: &str, since: Option<jiff::Timestamp>) {
    let Some(since) = since else {
        return;
    };
    let grace = jiff::SignedDuration::try_from(IDLE_CORDON_GRACE).unwrap_or_default();
    let now = pass.cx.obs.now;
    let Some(node) = pass.node(node_name) else {
        return;
    };
    if !has_claim(node, &pass.cx.plan_name, &pass.cx.who) {
        return;
    }
    match since.checked_add(grace) {
        Ok(due) if now < due => pass.out.requeue_within(until(now, due)),
        _ => pass.release(node_name),
    }
}

/// A node the Go controller named in `applying` (no entry of ours) and that is cordoned with
/// no claim: its Go Job cordoned it and went away before the takeover. The Go controller
/// would uncordon it when the upgrade succeeds, so the cordon becomes this Plan's claim.
fn adopt_go_applying_cordon(pass: &mut Pass<'_, '_>, node_name: &str, gated: bool) {
    let Some(node) = pass.node(node_name) else {
        return;
    };
    if gated
        && choose::go_era_cordon(pass, node_name, node)
        && pass.ledger.adopted_cordons.insert(node_name.to_owned())
    {
        pass.out.before.push(Change::AdoptCordon {
            node: node_name.to_owned(),
        });
    }
}

/// A selected node with a Job of the current hash. `desired` is the Job the Plan asks for now
/// (`None` while the Plan is not ready: then the Job is only followed, never replaced).
fn follow(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    gate: Option<&Gate>,
    node_name: &str,
    job: &Job,
    desired: Option<&Job>,
) {
    let gated = pass.cx.gated();
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let desired_template = desired.and_then(|d| annotation(d, ANNOTATION_TEMPLATE));
    let desired_run = desired.and_then(|d| annotation(d, ANNOTATION_RUN));
    let mut template = annotation(job, ANNOTATION_TEMPLATE);
    let finished = finished_at(job);
    let begun = finished.is_none() && pods::upgrade_may_have_started(job, pass.cx.obs.pods);
    if let (Some(desired_template), Some(desired_run)) = (&desired_template, &desired_run)
        && template.as_ref() != Some(desired_template)
    {
        let run = annotation(job, ANNOTATION_RUN);
        if template.is_none() {
            // A Go controller's Job. Not begun: this controller's own Job replaces it
            // (native drain, the gate). Begun or failed: adopted as the Plan is now.
            if finished.is_none() && !begun {
                replace(
                    pass,
                    node_name,
                    &job_name,
                    "replacing the Go controller's Job, whose upgrade had not begun",
                    true,
                );
                return;
            }
            restamp(pass, &job_name, desired_template, desired_run, true);
            template = Some(desired_template.clone());
        } else if begun && run.as_ref().is_none_or(|r| r == desired_run) {
            // Once the upgrade may have begun, only a change of what it runs ends it: an
            // edit of the drain, tolerations or the Job's rendering (a Job of an earlier
            // version of this controller, without a run digest) is recorded, not applied.
            restamp(pass, &job_name, desired_template, desired_run, false);
            template = Some(desired_template.clone());
        }
    }
    let changed = matches!((&template, &desired_template), (Some(t), Some(d)) if t != d);
    if let Some(failure) = failure_of(pass, job, node_name) {
        if !changed {
            retries::fail(pass, r, gate, node_name, job, failure, template);
            return;
        }
    } else if let (Some(desired), false) = (desired, changed)
        && finished.is_none()
    {
        sync_job_fields(pass, job, desired);
    }
    if changed {
        // Begun, only a change of what it runs gets here; else it must not have begun.
        replace(
            pass,
            node_name,
            &job_name,
            "replacing the Job after a Plan edit",
            !begun,
        );
        return;
    }
    if finished.is_none() && !pods::has_pod(job, pass.cx.obs.pods) {
        // No pod event wakes the Plan while the Job controller fails to create one: the
        // reconcile looks again (and reads why, see `Refusal::Pod`).
        pass.out.requeue_within(NO_POD_RETRY);
    }
    if finished.is_none()
        && let Some(Refusal::Pod { message }) = pass.cx.obs.refusals.get(&job_name)
    {
        let text = format!("the pod of Job {job_name} cannot be created: {message}");
        refuse(pass, node_name, &job_name, text);
        return;
    }
    if finished.is_none() && !begun {
        let created = job.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if !pods::has_pod(job, pass.cx.obs.pods)
            && let Some(text) = nudge(pass, job, created)
        {
            refuse(pass, node_name, &job_name, text);
            if gated {
                return_idle_cordon(pass, node_name, created);
            }
            return;
        }
        if gated && !pods::has_pod_on_node(job, pass.cx.obs.pods) {
            return_idle_cordon(pass, node_name, created);
        }
    }
    let (phase, message) = if gated && finished.is_none() {
        gate_phase(pass, node_name, job, desired.is_some())
    } else {
        (Phase::Upgrading, String::new())
    };
    let entry = pass.cx.entry(node_name, phase, &job_name, &message);
    pass.out.enter(entry);
}

/// A Job without a pod [`NUDGE_AFTER`] after it was created (or last nudged) is annotated, so
/// the Job controller looks at it again; returns what the node's entry says meanwhile.
fn nudge(pass: &mut Pass<'_, '_>, job: &Job, created: Option<jiff::Timestamp>) -> Option<String> {
    let created = created?;
    let now = pass.cx.obs.now;
    let after = jiff::SignedDuration::try_from(NUDGE_AFTER).unwrap_or_default();
    let due = created.checked_add(after).unwrap_or(created);
    if now < due {
        pass.out.requeue_within(until(now, due));
        return None;
    }
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let nudged = annotation(job, ANNOTATION_NUDGED).and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let next = nudged.and_then(|t| t.checked_add(after).ok());
    if next.is_none_or(|next| now >= next) {
        pass.out.before.push(Change::AnnotateJob {
            name: job_name.clone(),
            annotations: BTreeMap::from([(ANNOTATION_NUDGED.to_owned(), pass.cx.now.clone())]),
        });
    }
    let last = match nudged {
        Some(at) if next.is_some_and(|next| now < next) => stamp(at),
        _ => pass.cx.now.clone(),
    };
    Some(format!(
        "the Job controller has created no pod for Job {job_name} since {}; the controller \
         nudged the Job at {last} so the Job controller looks at it again",
        stamp(created)
    ))
}

/// A node whose Job the API server refused, or whose pod cannot be created: its entry says
/// why, and each distinct message is told once in a warning event on the Plan and the node.
fn refuse(pass: &mut Pass<'_, '_>, node_name: &str, job_name: &str, text: String) {
    let entry = pass.cx.entry(node_name, Phase::Preparing, job_name, &text);
    pass.out.enter(entry);
    let key = format!("{}/{job_name}/{text}", Reason::JobRefused);
    let message = format!("Node {node_name}: {text}");
    pass.out
        .note_once(node_name, true, Reason::JobRefused, message, &key);
    pass.ledger.refused.insert(node_name.to_owned(), text);
}

/// Records on a Job the pod template and run of the Plan as it is now (`adopted`: a Go
/// controller's Job taken over).
fn restamp(pass: &mut Pass<'_, '_>, job_name: &str, template: &str, run: &str, adopted: bool) {
    let mut annotations = BTreeMap::from([
        (ANNOTATION_TEMPLATE.to_owned(), template.to_owned()),
        (ANNOTATION_RUN.to_owned(), run.to_owned()),
    ]);
    if adopted {
        annotations.insert(ANNOTATION_ADOPTED.to_owned(), pass.cx.now.clone());
    }
    pass.out.before.push(Change::AnnotateJob {
        name: job_name.to_owned(),
        annotations,
    });
}

/// Deletes a node's Job so the next pass creates the one the Plan asks for now.
fn replace(
    pass: &mut Pass<'_, '_>,
    node_name: &str,
    job_name: &str,
    why: &str,
    unless_begun: bool,
) {
    pass.out.before.push(Change::DeleteJob {
        name: job_name.to_owned(),
        why: why.to_owned(),
        unless_begun,
    });
    let entry = pass.cx.entry(node_name, Phase::Upgrading, job_name, why);
    pass.out.enter(entry);
}

/// Why a Job failed: the Job failed (its reason and message), its node could not be drained,
/// or it succeeded but its node did not show the upgrade in time.
fn failure_of(pass: &Pass<'_, '_>, job: &Job, node_name: &str) -> Option<(Reason, String)> {
    if let Some(why) = pass.ledger.not_converged.get(node_name) {
        return Some((Reason::NotConverged, why.clone()));
    }
    match (finished_at(job), annotation(job, ANNOTATION_DRAIN_FAILED)) {
        (Some((false, _)), _) => Some((
            Reason::JobFailed,
            failure_message(job, &pass.cx.namespace, node_name),
        )),
        (_, Some(message)) => Some((Reason::DrainFailed, message)),
        _ => None,
    }
}

/// A running Job's deadline and retries follow the Plan and the settings (they are not part
/// of the pod template, so an edit of them must not replace, and so re-run, the Job).
fn sync_job_fields(pass: &mut Pass<'_, '_>, job: &Job, desired: &Job) {
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
        pass.out.before.push(Change::UpdateJob {
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
fn gate_phase(
    pass: &mut Pass<'_, '_>,
    node_name: &str,
    job: &Job,
    may_drain: bool,
) -> (Phase, String) {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let Some(pod) = pods::furthest_pod(job, pass.cx.obs.pods) else {
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
    match pass.cx.obs.drains.get(&uid) {
        Some(DrainProgress::Failed(message)) => {
            pass.out.after.push(Change::FailDrain {
                job: job_name,
                message: message.clone(),
            });
            pass.out.note(true, Reason::DrainFailed, message.clone());
            pass.record_failure(Reason::DrainFailed, message.clone());
            (Phase::Failed, message.clone())
        }
        Some(DrainProgress::Skipped(message)) => {
            retries::skip(pass, node_name, &job_name);
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
            pass.out.after.push(Change::Drain {
                node: node_name.to_owned(),
                pod: pod_name,
                job: job_name,
                job_uid: uid.clone(),
            });
            (Phase::Draining, message)
        }
    }
}
