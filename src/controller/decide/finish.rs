//! Finishing a node whose Job succeeded: it goes back into service at once (its claim is
//! released), waits out `postCompleteDelay` and `healthGates.nodeReadyFor` holding its slot, and
//! is then labelled done with the Job's hash. Called from [`super::jobs`] for a finished Job,
//! and from [`super::track`] for a node whose succeeded Job went away while it waited.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;

use super::decision::{Change, Note, Target};
use super::facts::annotation;
use super::facts::{
    completion_labels, listed, post_complete_delay, ran_for, ready_since, uid_of, until,
};
use super::history;
use super::pass::Pass;
use super::plan::Resolved;
use crate::api::{
    ANNOTATION_BOOT_ID, ANNOTATION_HISTORY, LABEL_VERSION, NodeStatus, Phase, Reason,
    UPGRADED_PREFIX,
};
use crate::controller::cordon::claims;
use crate::controller::status::stamp;
use crate::syntax::duration;
use crate::validation::versions;

/// How often a node waiting to be Ready for `nodeReadyFor` is looked at while it is not.
const NOT_READY_RETRY: Duration = Duration::from_secs(10);
/// How often a node that has not shown its upgrade yet is looked at again (a change of its
/// version, boot ID or labels wakes the Plan too).
const CONVERGE_RETRY: Duration = Duration::from_secs(15);

/// Where a node whose Job succeeded stands after a pass.
pub(super) enum Completion {
    /// Labelled done in this pass.
    Labelled,
    /// Waiting (its delay, its health, or to show the upgrade), holding its slot.
    Waiting,
    /// It did not show the upgrade within `spec.convergence.within`: a failure, and why.
    NotConverged(String),
}

/// A Job succeeded: the node goes back into service at once, and is labelled done (with the
/// Job's hash) after `postCompleteDelay`, `healthGates.nodeReadyFor` and once it shows the
/// upgrade happened (`spec.convergence`), which hold its slot until then.
pub(super) fn complete(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    job: &Job,
    node: &Node,
    job_hash: &str,
    at: Timestamp,
) -> Completion {
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let seen = matches!(
        pass.cx.old_phase(&node_name),
        Some(Phase::WaitingDelay | Phase::WaitingHealthy | Phase::Converging)
    );
    if !seen {
        pass.out.finished_jobs.push((true, ran_for(job, at)));
    }
    let job_name = job.metadata.name.clone().unwrap_or_default();
    if pass.claims(&node_name, node) {
        pass.release(&node_name);
    }
    let delay = post_complete_delay(pass.cx.plan);
    let ready_at = at
        .checked_add(jiff::SignedDuration::from_nanos(delay.unwrap_or(0)))
        .unwrap_or(at);
    let now = pass.cx.obs.now;
    if now < ready_at {
        pass.out.requeue_within(until(now, ready_at));
        let message = format!("waiting postCompleteDelay until {}", stamp(ready_at));
        let entry = pass
            .cx
            .entry(&node_name, Phase::WaitingDelay, &job_name, &message);
        if pass.cx.old_phase(&node_name) != Some(Phase::WaitingDelay) {
            let text = format!(
                "Job completed on Node {node_name}, waiting {} PostCompleteDelay",
                duration::format(delay.unwrap_or(0))
            );
            let key = format!("JobCompleteWaiting/{}", uid_of(job));
            pass.out
                .note_once(&node_name, false, Reason::JobCompleteWaiting, text, &key);
        }
        pass.out.enter(entry);
        return Completion::Waiting;
    }
    if wait_until_healthy(pass, node, &job_name, ready_at) {
        return Completion::Waiting;
    }
    // An earlier Job (finished after an edit) names its version only as a label value.
    let version = match job
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_VERSION))
    {
        Some(label) if job_hash != r.hash => label,
        _ => &r.version,
    };
    if let Some(waiting) = converging(pass, job, node, version, at) {
        return waiting;
    }
    let upgraded = Upgraded {
        version,
        job: &job_name,
        completed: at,
        ran_for: Some(ran_for(job, at)),
    };
    label_done(pass, r, &node_name, job_hash, &upgraded);
    Completion::Labelled
}

/// `spec.convergence`: a node whose Job succeeded at `at` is done only once it shows the
/// upgrade (its kubelet reports `version`, it rebooted, it carries a label). Until then it
/// waits, `Converging`, for at most `within`; past that it has not converged.
fn converging(
    pass: &mut Pass<'_, '_>,
    job: &Job,
    node: &Node,
    version: &str,
    at: Timestamp,
) -> Option<Completion> {
    let spec = &pass.cx.plan.spec;
    let check = versions::convergence_check(spec)?;
    let boot_id = annotation(job, ANNOTATION_BOOT_ID);
    let missing = versions::not_shown(&check, node, version, boot_id.as_deref())?;
    let within = versions::convergence_within(spec);
    let deadline = at
        .checked_add(jiff::SignedDuration::try_from(within).unwrap_or_default())
        .unwrap_or(at);
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let now = pass.cx.obs.now;
    if now >= deadline {
        return Some(Completion::NotConverged(format!(
            "Job {job_name} succeeded at {} but node {node_name} did not show the upgrade \
             within {} (spec.convergence.within): waited for it {missing}",
            stamp(at),
            duration::format(i64::try_from(within.as_nanos()).unwrap_or(i64::MAX))
        )));
    }
    pass.out
        .requeue_within(until(now, deadline).min(CONVERGE_RETRY));
    let message = format!(
        "Job {job_name} succeeded; waiting for the node {missing}, until {}",
        stamp(deadline)
    );
    let entry = pass
        .cx
        .entry(&node_name, Phase::Converging, &job_name, &message);
    pass.out.enter(entry);
    Some(Completion::Waiting)
}

/// A node's upgrade by this Plan, as its completion records it.
struct Upgraded<'a> {
    version: &'a str,
    job: &'a str,
    completed: Timestamp,
    ran_for: Option<Duration>,
}

impl Upgraded<'_> {
    /// The record written with the node's completion label: the node says what this Plan last
    /// ran and when (`kubectl describe node`), without an event per node.
    fn record(&self) -> String {
        let mut record = serde_json::json!({"version": self.version, "job": self.job,
            "completed": stamp(self.completed)});
        if let Some(ran_for) = self.ran_for {
            record["seconds"] = ran_for.as_secs().into();
        }
        record.to_string()
    }
}

/// A node whose Job succeeded and went away (deleted by hand, or expired) while it waited out
/// `postCompleteDelay` or `healthGates.nodeReadyFor`: it never runs again for this hash; it
/// is labelled done once both are over.
pub(super) fn without_job(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    node_name: &str,
    job_name: &str,
    waiting: &NodeStatus,
) {
    let now = pass.cx.obs.now;
    let since: Timestamp = waiting
        .since
        .as_deref()
        .and_then(|t| t.parse().ok())
        .unwrap_or(now);
    let from = if waiting.phase == Phase::WaitingDelay.as_str() {
        let delay = post_complete_delay(pass.cx.plan).unwrap_or(0);
        let ready_at = since
            .checked_add(jiff::SignedDuration::from_nanos(delay))
            .unwrap_or(since);
        if now < ready_at {
            pass.out.requeue_within(until(now, ready_at));
            pass.out.enter(waiting.clone());
            return;
        }
        ready_at
    } else {
        since
    };
    if let Some(node) = pass.node(node_name)
        && !wait_until_healthy(pass, node, job_name, from)
    {
        let upgraded = Upgraded {
            version: &r.version,
            job: job_name,
            completed: since,
            ran_for: None,
        };
        label_done(pass, r, node_name, &r.hash, &upgraded);
    }
}

/// Labels a node done with `job_hash` (and the Plan's postCompleteLabels), recording the
/// upgrade in the same write: this Plan's record and the node's history.
fn label_done(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    node_name: &str,
    job_hash: &str,
    upgraded: &Upgraded<'_>,
) {
    let mut labels = completion_labels(pass.cx.plan, &r.version, &r.hash);
    labels.insert(pass.cx.plan_label.clone(), job_hash.to_owned());
    let key = format!("{UPGRADED_PREFIX}{}", pass.cx.plan_name);
    let history = history::node(
        pass.node(node_name),
        &history::Upgrade {
            plan: &pass.cx.plan_name,
            version: upgraded.version,
            succeeded: true,
            at: &stamp(upgraded.completed),
            seconds: upgraded.ran_for.map(|d| d.as_secs()),
        },
    );
    pass.out.before.push(Change::LabelNode {
        node: node_name.to_owned(),
        labels,
        annotations: BTreeMap::from([
            (key, upgraded.record()),
            (ANNOTATION_HISTORY.to_owned(), history),
        ]),
    });
    if job_hash == r.hash {
        pass.ledger.done_now.insert(node_name.to_owned());
    }
}

/// `healthGates.nodeReadyFor`: a node whose Job succeeded (its delay over at `from`) keeps
/// its slot, as `WaitingHealthy`, until it has been Ready and schedulable for that long;
/// returns whether it waits.
fn wait_until_healthy(
    pass: &mut Pass<'_, '_>,
    node: &Node,
    job_name: &str,
    from: Timestamp,
) -> bool {
    let Some((message, recheck)) = ready_gate(pass, node, from) else {
        return false;
    };
    let node_name = node.metadata.name.clone().unwrap_or_default();
    pass.out.requeue_within(recheck);
    if pass.cx.old_phase(&node_name) != Some(Phase::WaitingHealthy) {
        let text = format!("Job {job_name} completed on Node {node_name}; {message}");
        pass.out.notes.push(
            Note::new(
                Target::Node(node_name.clone()),
                false,
                Reason::WaitingForHealth,
                text,
            )
            .once(format!("WaitingForHealth/{job_name}/{}", stamp(from))),
        );
    }
    let entry = pass
        .cx
        .entry(&node_name, Phase::WaitingHealthy, job_name, &message);
    pass.out.enter(entry);
    true
}

/// Why a node does not pass `healthGates.nodeReadyFor` yet (and when to look again), or
/// `None` when it does: Ready and schedulable now, and Ready since `from` or later for the
/// whole time.
fn ready_gate(pass: &Pass<'_, '_>, node: &Node, from: Timestamp) -> Option<(String, Duration)> {
    let needed = pass
        .cx
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
        && !pass.ledger.released.contains(name);
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
    let now = pass.cx.obs.now;
    let open = from
        .max(ready_since)
        .checked_add(jiff::SignedDuration::from_nanos(needed))
        .unwrap_or(from);
    (now < open).then(|| {
        (
            format!("waiting until {} for the node to be {wanted}", stamp(open)),
            until(now, open),
        )
    })
}
