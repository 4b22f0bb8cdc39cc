//! Phase 2: what the caches say about the Plan's Jobs. Malformed ones and those of deleted
//! nodes go; finished ones complete their node (see [`super::finish`]) and expire after their
//! TTL; unfinished ones of an earlier version or hash go unless their upgrade may have begun,
//! which is left to finish. What is left is [`Jobs`].

use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;

use super::decision::{Change, JobFields, Merge, Note, Target, completed_message};
use super::facts::{annotation, finished_at, is_go_era, node_label, until};
use super::finish::{self, Completion};
use super::pass::Pass;
use super::plan::Resolved;
use super::pods;
use crate::api::{ANNOTATION_TTL, LABEL_NODE, LABEL_VERSION, Reason};
use crate::controller::cordon::claims;
use crate::controller::job;

/// The Plan's Jobs that go on, by node.
#[derive(Default)]
pub(super) struct Jobs<'a> {
    /// The Job of the current version and hash of each node (finished and failed ones too).
    pub current: BTreeMap<String, &'a Job>,
    /// Unfinished Jobs of an earlier version or hash whose upgrade may have begun: they finish
    /// before the node runs the current one.
    pub finishing: BTreeMap<String, &'a Job>,
}

/// Sorts the Plan's Jobs, completing the nodes whose Jobs succeeded.
pub(super) fn sort<'a>(pass: &mut Pass<'_, 'a>, r: &Resolved) -> Jobs<'a> {
    let mut jobs = Jobs::default();
    let mut completed = Vec::new();
    for &job in pass.cx.obs.jobs {
        if job::hook_of(job).is_some() {
            continue; // a hook's, followed by `hooks`
        }
        let name = job.metadata.name.clone().unwrap_or_default();
        let labels = job.metadata.labels.clone().unwrap_or_default();
        let node_name = labels.get(LABEL_NODE).cloned();
        if let Some(node) = node_name.as_deref().and_then(|n| pass.node(n)) {
            adopt_go_cordon(pass, job, node);
        }
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let (Some(node_name), Some(job_version)) = (node_name, labels.get(LABEL_VERSION)) else {
            pass.out.before.push(Change::DeleteJob {
                name,
                why: "it lacks the node or version label".into(),
                unless_begun: false,
            });
            continue;
        };
        let Some(node) = pass.node(&node_name) else {
            pass.out.before.push(Change::DeleteJob {
                name,
                why: format!("node {node_name} no longer exists"),
                unless_begun: false,
            });
            continue;
        };
        let job_hash = labels.get(&pass.cx.plan_label).cloned().unwrap_or_default();
        let finished = finished_at(job);
        let current = *job_version == r.version && job_hash == r.hash;
        if finished.is_none() {
            if current {
                sync_ttl(pass, job);
                jobs.current.insert(node_name, job);
            } else if pods::upgrade_may_have_started(job, pass.cx.obs.pods) {
                sync_ttl(pass, job);
                jobs.finishing.insert(node_name, job);
            } else {
                let why = if *job_version != r.version {
                    format!("it applies version {job_version}, not {}", r.version)
                } else {
                    format!("it applies hash {job_hash}, superseded by {}", r.hash)
                };
                pass.out.before.push(Change::DeleteJob {
                    name,
                    why,
                    unless_begun: true,
                });
            }
            continue;
        }
        if *job_version != r.version {
            // As the Go controller: a finished Job of another version is dropped unlabelled.
            pass.out.before.push(Change::DeleteJob {
                name,
                why: format!("it applied version {job_version}, not {}", r.version),
                unless_begun: false,
            });
            continue;
        }
        let Some((succeeded, at)) = finished else {
            continue;
        };
        let label = node_label(node, &pass.cx.plan_label);
        // Recorded: the node carries this Job's hash, or the Job's hash was superseded and
        // the node already carries a hash of this Plan (another Job's, maybe the current
        // one): labelling it back would undo that, and two Jobs would relabel it in turn.
        let recorded = label == Some(job_hash.as_str()) || (job_hash != r.hash && label.is_some());
        // A succeeded Job whose node is not labelled yet never expires: its node would run
        // again.
        if (!succeeded || recorded) && expire(pass, job, at) {
            continue;
        }
        sync_ttl(pass, job);
        if succeeded && !recorded {
            match finish::complete(pass, r, job, node, &job_hash, at) {
                Completion::Labelled => completed.push(node_name),
                Completion::Waiting => {}
                // A failure like a failed Job's, which `track` follows (retries included).
                Completion::NotConverged(why) if current => {
                    pass.ledger.not_converged.insert(node_name.clone(), why);
                    jobs.current.insert(node_name, job);
                }
                Completion::NotConverged(_) => {}
            }
        } else if !succeeded && current {
            jobs.current.insert(node_name, job);
        }
    }
    note_completions(pass, completed);
    jobs
}

/// One Plan event for the nodes whose Jobs completed in this pass (each node gets its own);
/// the recorder merges it with those of the next passes of a wave.
fn note_completions(pass: &mut Pass<'_, '_>, nodes: Vec<String>) {
    if nodes.is_empty() {
        return;
    }
    pass.out.notes.push(
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
fn adopt_go_cordon(pass: &mut Pass<'_, '_>, job: &Job, node: &Node) {
    let cordons = pass.cx.gated();
    let unschedulable = node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let node_name = node.metadata.name.clone().unwrap_or_default();
    if cordons
        && unschedulable
        && is_go_era(job)
        && claims(node).next().is_none()
        && pass.ledger.adopted_cordons.insert(node_name.clone())
    {
        pass.out
            .before
            .push(Change::AdoptCordon { node: node_name });
    }
}

/// Keeps a Job's TTL what the Plan asks now: `postCompleteDelay` may have grown since the Job
/// was created, and a Job deleted before its node is labelled would run the node again.
fn sync_ttl(pass: &mut Pass<'_, '_>, job: &Job) {
    let wanted = job::ttl_seconds(pass.cx.plan, pass.cx.obs.settings);
    let spec_ttl = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished);
    let annotated = annotation(job, ANNOTATION_TTL).and_then(|t| t.parse::<i32>().ok());
    if spec_ttl != Some(wanted) || annotated != Some(wanted) {
        pass.out.before.push(Change::UpdateJob {
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
pub(super) fn expire(pass: &mut Pass<'_, '_>, job: &Job, finished: Timestamp) -> bool {
    let ttl = i64::from(job::ttl_seconds(pass.cx.plan, pass.cx.obs.settings));
    let expiry = finished
        .checked_add(jiff::SignedDuration::from_secs(ttl))
        .unwrap_or(finished);
    let now = pass.cx.obs.now;
    if now >= expiry {
        pass.out.before.push(Change::DeleteJob {
            name: job.metadata.name.clone().unwrap_or_default(),
            why: format!("it finished more than {ttl}s ago"),
            unless_begun: false,
        });
        return true;
    }
    pass.out.requeue_within(until(now, expiry));
    false
}
