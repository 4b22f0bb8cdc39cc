//! The heart of a reconcile, as a pure function: from what is observed (the Plan, Nodes, the
//! Plan's Jobs, Secrets, the time and the version resolution) to the Plan's new status, the
//! changes to make to Jobs and Nodes, the events to record and when to look again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};

use crate::api::{
    LATEST_HASH_VAR, LATEST_VERSION_VAR, NodeStatus, PLAN_LABEL_PREFIX, Plan, PlanStatus,
};
use crate::controller::drain::DrainProgress;
use crate::controller::job::{
    self, ANNOTATION_DRAIN_FAILED, ANNOTATION_TEMPLATE, ANNOTATION_TTL, JobSettings, LABEL_NODE,
    LABEL_VERSION,
};
use crate::controller::status::{self, COMPLETE, LATEST_RESOLVED, VALIDATED, Wanted};
use crate::controller::{hash, resolve, select};
use crate::syntax::{duration, window};
use crate::validation;

/// Annotation prefix on a Node recording that a Plan cordoned it (`cordoned.upgrade.cattle.io/<plan>`).
pub const CORDON_CLAIM_PREFIX: &str = "cordoned.upgrade.cattle.io/";
/// How often a Plan is looked at when nothing else wakes it.
pub const RESYNC: Duration = Duration::from_secs(600);
/// How often a Plan waiting for its window checks again.
pub const WINDOW_RETRY: Duration = Duration::from_secs(60);

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
    /// Not attempted because the Plan is invalid.
    Skipped,
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
    pub reason: &'static str,
    pub message: String,
}

/// A change to make in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    DeleteJob {
        name: String,
        why: String,
    },
    CreateJob(Box<Job>),
    /// Let a Job that was created paused (by the Go controller) run.
    UnpauseJob(String),
    /// Set labels on a node (the completion label and postCompleteLabels).
    LabelNode {
        node: String,
        labels: BTreeMap<String, String>,
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
    /// Drop this Plan's cordon claim; uncordon the node when no claim is left.
    Release {
        node: String,
    },
}

/// Everything a reconcile pass decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub status: PlanStatus,
    /// Changes that do not depend on the new status (completions, stale Jobs); done first.
    pub before: Vec<Change>,
    /// Changes that need the new `applying` persisted first (starting nodes).
    pub after: Vec<Change>,
    pub notes: Vec<Note>,
    pub requeue: Duration,
}

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
}

/// RFC 3339 with whole seconds, as condition times are written.
pub fn stamp(now: Timestamp) -> String {
    now.round(jiff::Unit::Second).unwrap_or(now).to_string()
}

/// Decides one pass for a Plan.
pub fn decide(obs: &Observed<'_>) -> Decision {
    let plan = obs.plan;
    let plan_name = plan.metadata.name.clone().unwrap_or_default();
    let namespace = plan.metadata.namespace.clone().unwrap_or_default();
    let now = stamp(obs.now);
    let mut status = plan.status.clone().unwrap_or_default();
    let applying_before: Vec<String> = status.applying.clone().unwrap_or_default();
    let mut conditions = status.conditions.take().unwrap_or_default();
    status::ensure(&mut conditions, COMPLETE, &now);
    status::ensure(&mut conditions, VALIDATED, &now);
    let mut notes = Vec::new();
    let mut requeue = RESYNC;
    let mut note = |warning: bool, reason: &'static str, message: String| {
        notes.push(Note {
            target: Target::Plan,
            warning,
            reason,
            message,
        });
    };

    // Validation: the webhook's rules, and the Secrets that must exist.
    let mut problems: Vec<String> = validation::validate(plan)
        .problems
        .into_iter()
        .map(|p| p.message)
        .collect();
    let hashed_secrets: Vec<&str> = plan
        .spec
        .secrets
        .iter()
        .flatten()
        .filter(|s| !s.ignore_updates.unwrap_or(false))
        .map(|s| s.name.as_str())
        .collect();
    let missing: Vec<String> = hashed_secrets
        .iter()
        .filter(|name| !obs.secrets.contains_key(**name))
        .map(|name| format!("secrets \"{name}\" not found"))
        .collect();
    problems.extend(missing.iter().cloned());
    let valid = problems.is_empty();
    if valid {
        if status::set(
            &mut conditions,
            VALIDATED,
            &Wanted::new("True", "PlanIsValid", ""),
            &now,
        ) {
            note(false, "Validated", "Plan is valid".to_owned());
        }
    } else {
        let message = problems.join("; ");
        let before = status::get(&conditions, VALIDATED).and_then(|c| c.message.clone());
        status::set(
            &mut conditions,
            VALIDATED,
            &Wanted::new("False", "Error", &message),
            &now,
        );
        if before.as_deref() != Some(message.as_str()) {
            note(
                true,
                "ValidateFailed",
                format!("Failed to validate plan: {message}"),
            );
        }
    }

    // Resolution.
    status::ensure(&mut conditions, LATEST_RESOLVED, &now);
    let was_resolved = status::is(&conditions, LATEST_RESOLVED, "True");
    let previous_version = status.latest_version.clone().unwrap_or_default();
    let mut resolved_now =
        |conditions: &mut Vec<_>, version: String, reason: &str, source: &str| {
            if !was_resolved || previous_version != version {
                note(
                    false,
                    "Resolved",
                    format!("Resolved latest version from Spec.{source}: {version}"),
                );
                status::set(
                    conditions,
                    COMPLETE,
                    &Wanted::new("False", "Resolved", ""),
                    &now,
                );
            }
            status::set(
                conditions,
                LATEST_RESOLVED,
                &Wanted::new("True", reason, ""),
                &now,
            );
            version
        };
    match &obs.resolution {
        Resolution::Version(v) => {
            status.latest_version = Some(resolved_now(
                &mut conditions,
                resolve::munge(v),
                "Version",
                "Version",
            ));
        }
        Resolution::Channel(v) => {
            status.latest_version = Some(resolved_now(
                &mut conditions,
                resolve::munge(v),
                "Channel",
                "Channel",
            ));
        }
        Resolution::ChannelFailed { error, retry } => {
            requeue = requeue.min(*retry);
            notes.push(Note {
                target: Target::Plan,
                warning: true,
                reason: "ResolveFailed",
                message: format!("Failed to resolve latest version from Spec.Channel: {error}"),
            });
            if previous_version.is_empty() {
                let message =
                    format!("Failed to resolve latest version from Spec.Channel: {error}");
                status::set(
                    &mut conditions,
                    LATEST_RESOLVED,
                    &Wanted::new("False", "ChannelError", &message),
                    &now,
                );
            } else {
                // The rollout continues with the version resolved before; say the poll failed.
                let message =
                    format!("channel poll failed, still applying {previous_version}: {error}");
                status::set(
                    &mut conditions,
                    LATEST_RESOLVED,
                    &Wanted::new("True", "Channel", &message),
                    &now,
                );
            }
        }
        Resolution::ChannelNotDue(after) => requeue = requeue.min(*after),
        Resolution::Missing => {
            let message = "cannot resolve plan: missing channel and version";
            if status::set(
                &mut conditions,
                LATEST_RESOLVED,
                &Wanted::new("False", "Error", message),
                &now,
            ) {
                notes.push(Note {
                    target: Target::Plan,
                    warning: true,
                    reason: "ResolveFailed",
                    message: message.to_owned(),
                });
            }
        }
        Resolution::Skipped => {}
    }
    let version = status.latest_version.clone().unwrap_or_default();
    let resolved = status::is(&conditions, LATEST_RESOLVED, "True") && !version.is_empty();

    // The hash, from the version just resolved.
    if resolved && missing.is_empty() {
        let mut with_version = plan.clone();
        with_version.status = Some(PlanStatus {
            latest_version: Some(version.clone()),
            ..status.clone()
        });
        let json = serde_json::to_value(&with_version).unwrap_or_default();
        let secrets: Vec<&Secret> = hashed_secrets
            .iter()
            .filter_map(|name| obs.secrets.get(*name).copied())
            .collect();
        status.latest_hash = Some(hash::plan_hash(&json, &secrets));
    }
    let hash = status.latest_hash.clone().unwrap_or_default();

    let mut before = Vec::new();
    let mut after = Vec::new();
    if !(valid && resolved && !hash.is_empty()) {
        status::set(
            &mut conditions,
            COMPLETE,
            &Wanted::new("False", "NotReady", "plan is not valid and resolved"),
            &now,
        );
        status.conditions = Some(conditions);
        return Decision {
            status,
            before,
            after,
            notes,
            requeue,
        };
    }

    // The Plan as the Jobs are built from it: with the new version and hash.
    let mut current = plan.clone();
    current.status = Some(PlanStatus {
        latest_version: Some(version.clone()),
        latest_hash: Some(hash.clone()),
        ..PlanStatus::default()
    });
    let node_by_name: BTreeMap<String, &Node> = obs
        .nodes
        .iter()
        .map(|n| (n.metadata.name.clone().unwrap_or_default(), *n))
        .collect();
    let plan_label = format!("{PLAN_LABEL_PREFIX}{plan_name}");
    let delay = plan
        .spec
        .post_complete_delay
        .as_deref()
        .and_then(|d| duration::parse(d).ok())
        .filter(|d| *d > 0);
    let old_entries: BTreeMap<String, NodeStatus> = status
        .nodes
        .take()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name.clone(), e))
        .collect();
    let mut entries: BTreeMap<String, NodeStatus> = BTreeMap::new();
    let mut done_now: BTreeSet<String> = BTreeSet::new();
    let mut released: BTreeSet<String> = BTreeSet::new();
    let mut current_jobs: BTreeMap<String, &Job> = BTreeMap::new();

    // Jobs: stale ones go; finished ones complete their node, then expire.
    for job in obs.jobs {
        let name = job.metadata.name.clone().unwrap_or_default();
        if job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let labels = job.metadata.labels.clone().unwrap_or_default();
        let (Some(node_name), Some(job_version)) =
            (labels.get(LABEL_NODE), labels.get(LABEL_VERSION))
        else {
            before.push(Change::DeleteJob {
                name,
                why: "it lacks the node or version label".into(),
            });
            continue;
        };
        if *job_version != version {
            before.push(Change::DeleteJob {
                name,
                why: format!("it applies version {job_version}, not {version}"),
            });
            continue;
        }
        let Some(node) = node_by_name.get(node_name) else {
            before.push(Change::DeleteJob {
                name,
                why: format!("node {node_name} no longer exists"),
            });
            continue;
        };
        let job_hash = labels.get(&plan_label).cloned().unwrap_or_default();
        let finished = finished_at(job);
        if let Some((succeeded, at)) = finished {
            // Expire finished Jobs after their TTL (also when the TTL controller is off).
            let ttl = job_ttl(job);
            let expiry = at
                .checked_add(jiff::SignedDuration::from_secs(ttl))
                .unwrap_or(at);
            if obs.now >= expiry {
                before.push(Change::DeleteJob {
                    name: name.clone(),
                    why: format!("it finished more than {ttl}s ago"),
                });
            } else {
                requeue = requeue.min(until(obs.now, expiry));
            }
            if succeeded {
                let node_labels = node.metadata.labels.clone().unwrap_or_default();
                if node_labels.get(&plan_label) == Some(&job_hash) {
                    continue;
                }
                // The node is returned to service at once; the delay only holds the next node.
                if has_claim(node, &plan_name) && released.insert(node_name.clone()) {
                    before.push(Change::Release {
                        node: node_name.clone(),
                    });
                }
                let ready_at = match delay {
                    Some(nanos) => at
                        .checked_add(jiff::SignedDuration::from_nanos(nanos))
                        .unwrap_or(at),
                    None => at,
                };
                if obs.now < ready_at {
                    requeue = requeue.min(until(obs.now, ready_at));
                    let message = format!("waiting postCompleteDelay until {}", stamp(ready_at));
                    let entry = entry_for(
                        &old_entries,
                        node_name,
                        "WaitingDelay",
                        &name,
                        &message,
                        &now,
                    );
                    if old_entries.get(node_name).map(|e| e.phase.as_str()) != Some("WaitingDelay")
                    {
                        let text = format!(
                            "Job completed on Node {node_name}, waiting {} PostCompleteDelay",
                            duration::format(delay.unwrap_or(0))
                        );
                        notes.push(Note {
                            target: Target::Plan,
                            warning: false,
                            reason: "JobCompleteWaiting",
                            message: text.clone(),
                        });
                        notes.push(Note {
                            target: Target::Node(node_name.clone()),
                            warning: false,
                            reason: "JobCompleteWaiting",
                            message: text,
                        });
                    }
                    entries.insert(node_name.clone(), entry);
                } else {
                    let mut labels = completion_labels(plan, &version, &hash);
                    labels.insert(plan_label.clone(), job_hash.clone());
                    before.push(Change::LabelNode {
                        node: node_name.clone(),
                        labels,
                    });
                    if job_hash == hash {
                        done_now.insert(node_name.clone());
                    }
                    let text = format!("Job completed on Node {node_name}");
                    notes.push(Note {
                        target: Target::Plan,
                        warning: false,
                        reason: "JobComplete",
                        message: text.clone(),
                    });
                    notes.push(Note {
                        target: Target::Node(node_name.clone()),
                        warning: false,
                        reason: "JobComplete",
                        message: format!("{text} for Plan {plan_name} (version {version})"),
                    });
                }
                continue;
            }
        }
        if job_hash == hash {
            current_jobs.insert(node_name.clone(), job);
        } else if finished.is_none() {
            before.push(Change::DeleteJob {
                name,
                why: format!("it applies hash {job_hash}, superseded by {hash}"),
            });
        }
    }

    // Which nodes apply the Plan now.
    let Ok(Some(selector)) = select::node_selector(plan) else {
        // No selector selects no node.
        return finish(
            status,
            conditions,
            (before, after, notes, requeue),
            Vec::new(),
            &applying_before,
            entries,
            &now,
            &version,
            &hash,
        );
    };
    let candidates: Vec<&Node> = obs
        .nodes
        .iter()
        .copied()
        .filter(|n| !done_now.contains(n.metadata.name.as_deref().unwrap_or_default()))
        .collect();
    let concurrency =
        usize::try_from(plan.spec.concurrency.unwrap_or(1).max(0)).unwrap_or(usize::MAX);
    let selected = select::select(
        plan,
        &selector,
        &candidates,
        &applying_before,
        concurrency,
        &hash,
    );
    let selected_names: Vec<String> = selected
        .iter()
        .map(|n| n.metadata.name.clone().unwrap_or_default())
        .collect();

    // A rollout may only start inside its window; once started it runs to completion.
    if applying_before.is_empty()
        && !selected.is_empty()
        && let Some(spec) = &plan.spec.window
    {
        let days: Vec<String> = spec.days.iter().flatten().map(|d| d.0.clone()).collect();
        let open = window::TimeWindow::parse(
            &days,
            spec.start_time.as_deref().unwrap_or_default(),
            spec.end_time.as_deref().unwrap_or_default(),
            spec.time_zone.as_deref().unwrap_or_default(),
        )
        .is_ok_and(|w| w.contains(obs.now));
        if !open {
            let message = "current time is not within configured window";
            if status::get(&conditions, COMPLETE).and_then(|c| c.reason.as_deref())
                != Some("Waiting")
            {
                notes.push(Note {
                    target: Target::Plan,
                    warning: false,
                    reason: "Waiting",
                    message: format!("Waiting for start of Spec.Window to sync Jobs for version {version}. Hash: {hash}"),
                });
            }
            status::set(
                &mut conditions,
                COMPLETE,
                &Wanted::new("False", "Waiting", message),
                &now,
            );
            status.conditions = Some(conditions);
            status.nodes = (!entries.is_empty()).then(|| entries.into_values().collect());
            return Decision {
                status,
                before,
                after,
                notes,
                requeue: requeue.min(WINDOW_RETRY),
            };
        }
    }

    // With cordon or drain, the Job waits in its gate (after prepare) for the controller.
    let gated = plan.spec.cordon.unwrap_or(false) || plan.spec.drain.is_some();
    for node in &selected {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        if entries.contains_key(&node_name) {
            continue; // waiting out its delay
        }
        let desired = job::build(&current, node, obs.settings);
        let desired_name = desired.metadata.name.clone().unwrap_or_default();
        let desired_template = annotation(&desired, ANNOTATION_TEMPLATE).unwrap_or_default();
        let previous = old_entries.get(&node_name);
        let Some(existing) = current_jobs.get(&node_name) else {
            // A failure stays a failure, even after its Job expired, until the Plan's pod
            // template or hash changes.
            if let Some(failed) = previous.filter(|p| {
                p.phase == "Failed"
                    && p.template.as_deref() == Some(desired_template.as_str())
                    && p.job.as_deref() == Some(desired_name.as_str())
            }) {
                entries.insert(node_name, failed.clone());
                continue;
            }
            after.push(Change::CreateJob(Box::new(desired)));
            if previous.is_none() {
                notes.push(Note {
                    target: Target::Node(node_name.clone()),
                    warning: false,
                    reason: "Upgrading",
                    message: format!(
                        "Plan {plan_name} starts Job {desired_name} (version {version})"
                    ),
                });
            }
            let phase = if gated { "Preparing" } else { "Upgrading" };
            entries.insert(
                node_name.clone(),
                entry_for(&old_entries, &node_name, phase, &desired_name, "", &now),
            );
            continue;
        };
        let existing_name = existing.metadata.name.clone().unwrap_or_default();
        // Jobs from the Go controller carry no template digest; they are kept as they are.
        let template = annotation(existing, ANNOTATION_TEMPLATE);
        let changed = template.as_ref().is_some_and(|t| *t != desired_template);
        let failure = match (
            finished_at(existing),
            annotation(existing, ANNOTATION_DRAIN_FAILED),
        ) {
            (Some((false, at)), _) => Some((
                failure_message(existing, &namespace, &node_name),
                stamp(at),
                "JobFailed",
            )),
            (_, Some(message)) => Some((message, now.clone(), "DrainFailed")),
            _ => None,
        };
        if let (Some((message, at, reason)), false) = (failure, changed) {
            let since = previous
                .filter(|p| p.phase == "Failed")
                .and_then(|p| p.since.clone())
                .unwrap_or(at);
            let entry = NodeStatus {
                name: node_name.clone(),
                phase: "Failed".into(),
                job: Some(existing_name),
                message: Some(message.clone()),
                since: Some(since),
                template: template.or(Some(desired_template.clone())),
            };
            if previous.map(|p| p.phase.as_str()) != Some("Failed") {
                notes.push(Note {
                    target: Target::Plan,
                    warning: true,
                    reason,
                    message: message.clone(),
                });
                notes.push(Note {
                    target: Target::Node(node_name.clone()),
                    warning: true,
                    reason,
                    message,
                });
            }
            entries.insert(node_name, entry);
            continue;
        }
        if changed {
            before.push(Change::DeleteJob {
                name: existing_name.clone(),
                why: "the Plan changed its pod template".into(),
            });
            let entry = entry_for(
                &old_entries,
                &node_name,
                "Upgrading",
                &existing_name,
                "replacing the Job after a Plan edit",
                &now,
            );
            entries.insert(node_name.clone(), entry);
            continue;
        }
        if existing.spec.as_ref().and_then(|s| s.parallelism) == Some(0) {
            after.push(Change::UnpauseJob(existing_name.clone()));
        }
        let (phase, message) = if gated {
            gate_phase(obs, &node_name, existing, &mut after, &mut notes)
        } else {
            ("Upgrading", String::new())
        };
        let entry = entry_for(
            &old_entries,
            &node_name,
            phase,
            &existing_name,
            &message,
            &now,
        );
        entries.insert(node_name.clone(), entry);
    }

    // Running Jobs of nodes that are no longer applying stop; their nodes are released.
    for (node_name, job) in &current_jobs {
        if !selected_names.contains(node_name) && finished_at(job).is_none() {
            let name = job.metadata.name.clone().unwrap_or_default();
            before.push(Change::DeleteJob {
                name,
                why: format!("node {node_name} no longer needs the Plan"),
            });
        }
    }
    for node in obs.nodes {
        let node_name = node.metadata.name.clone().unwrap_or_default();
        if has_claim(node, &plan_name)
            && !selected_names.contains(&node_name)
            && !released.contains(&node_name)
        {
            before.push(Change::Release { node: node_name });
        }
    }

    finish(
        status,
        conditions,
        (before, after, notes, requeue),
        selected_names,
        &applying_before,
        entries,
        &now,
        &version,
        &hash,
    )
}

/// Where a gated Job stands: preparing (its pod not there or `prepare` still running), draining
/// (the controller cordons and drains; a drain is started or kept going), or upgrading (the gate
/// was opened). A failed drain suspends the Job, so its upgrade never starts.
fn gate_phase(
    obs: &Observed<'_>,
    node_name: &str,
    job: &Job,
    after: &mut Vec<Change>,
    notes: &mut Vec<Note>,
) -> (&'static str, String) {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let uid = job.metadata.uid.clone().unwrap_or_default();
    let pod = obs
        .pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Failed"))
        .max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
    let Some(pod) = pod else {
        return ("Preparing", "waiting for the Job's pod".into());
    };
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    if pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded") {
        return ("Upgrading", "the upgrade finished".into());
    }
    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(job::ANNOTATION_DRAINED))
    {
        return ("Upgrading", String::new());
    }
    if !prepared(pod) {
        return (
            "Preparing",
            "prepare is running; the node keeps its workloads until it ends".into(),
        );
    }
    match obs.drains.get(&uid) {
        Some(DrainProgress::Failed(message)) => {
            after.push(Change::FailDrain {
                job: job_name,
                message: message.clone(),
            });
            notes.push(Note {
                target: Target::Plan,
                warning: true,
                reason: "DrainFailed",
                message: message.clone(),
            });
            ("Failed", message.clone())
        }
        Some(DrainProgress::Done(opened)) if *opened == pod_name => {
            ("Draining", "drained; starting the upgrade".into())
        }
        progress => {
            let message = match progress {
                Some(DrainProgress::Running(text)) => text.clone(),
                _ => "starting".into(),
            };
            after.push(Change::Drain {
                node: node_name.to_owned(),
                pod: pod_name,
                job: job_name,
                job_uid: uid.clone(),
            });
            ("Draining", message)
        }
    }
}

/// Whether a pod's `prepare` init container (if it has one) finished successfully.
fn prepared(pod: &Pod) -> bool {
    let has_prepare = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == "prepare"));
    if !has_prepare {
        return true;
    }
    pod.status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref())
        .and_then(|s| s.iter().find(|c| c.name == "prepare"))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

/// Sets `applying`, the node entries and the Complete condition.
#[allow(clippy::too_many_arguments)]
fn finish(
    mut status: PlanStatus,
    mut conditions: Vec<crate::api::Condition>,
    (before, after, mut notes, requeue): (Vec<Change>, Vec<Change>, Vec<Note>, Duration),
    applying: Vec<String>,
    applying_before: &[String],
    entries: BTreeMap<String, NodeStatus>,
    now: &str,
    version: &str,
    hash: &str,
) -> Decision {
    let failed = entries
        .values()
        .find(|e| e.phase == "Failed")
        .and_then(|e| e.message.clone());
    if applying.is_empty() {
        if status::set(
            &mut conditions,
            COMPLETE,
            &Wanted::new("True", "Complete", ""),
            now,
        ) {
            notes.push(Note {
                target: Target::Plan,
                warning: false,
                reason: "Complete",
                message: format!("Jobs complete for version {version}. Hash: {hash}"),
            });
        }
    } else if applying != applying_before {
        status::set(
            &mut conditions,
            COMPLETE,
            &Wanted::new("False", "SyncJob", ""),
            now,
        );
        notes.push(Note {
            target: Target::Plan,
            warning: false,
            reason: "SyncJob",
            message: format!(
                "Jobs synced for version {version} on Nodes {}. Hash: {hash}",
                applying.join(",")
            ),
        });
    } else if let Some(message) = failed {
        // A drain failure is no Job failure: say which it is.
        let reason = if message.starts_with("drain of node ") {
            "DrainFailed"
        } else {
            "JobFailed"
        };
        status::set(
            &mut conditions,
            COMPLETE,
            &Wanted::new("False", reason, &message),
            now,
        );
    } else if status::is(&conditions, COMPLETE, "True")
        || status::get(&conditions, COMPLETE).and_then(|c| c.reason.as_deref()) == Some("JobFailed")
    {
        // Applying again (e.g. after a failure was retried): the Plan is not complete.
        status::set(
            &mut conditions,
            COMPLETE,
            &Wanted::new("False", "SyncJob", ""),
            now,
        );
    }
    status.conditions = Some(conditions);
    status.applying = (!applying.is_empty()).then_some(applying);
    status.nodes = (!entries.is_empty()).then(|| entries.into_values().collect());
    Decision {
        status,
        before,
        after,
        notes,
        requeue,
    }
}

/// A node entry, keeping `since` when the phase does not change.
fn entry_for(
    old: &BTreeMap<String, NodeStatus>,
    node: &str,
    phase: &str,
    job: &str,
    message: &str,
    now: &str,
) -> NodeStatus {
    let since = old
        .get(node)
        .filter(|e| e.phase == phase)
        .and_then(|e| e.since.clone())
        .unwrap_or_else(|| now.to_owned());
    NodeStatus {
        name: node.to_owned(),
        phase: phase.to_owned(),
        job: Some(job.to_owned()),
        message: (!message.is_empty()).then(|| message.to_owned()),
        since: Some(since),
        template: None,
    }
}

fn annotation(job: &Job, key: &str) -> Option<String> {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
}

/// Whether a node carries this Plan's cordon claim.
pub fn has_claim(node: &Node, plan: &str) -> bool {
    node.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(&format!("{CORDON_CLAIM_PREFIX}{plan}")))
}

/// When a Job finished, and whether it succeeded.
pub fn finished_at(job: &Job) -> Option<(bool, Timestamp)> {
    let status = job.status.as_ref()?;
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        let at = condition.last_transition_time.as_ref().map(|t| t.0);
        match condition.type_.as_str() {
            "Complete" => {
                return Some((true, status.completion_time.as_ref().map(|t| t.0).or(at)?));
            }
            "Failed" => return Some((false, at?)),
            _ => {}
        }
    }
    None
}

/// The Job's TTL: its spec, else the annotation copy, else now (delete).
fn job_ttl(job: &Job) -> i64 {
    job.spec
        .as_ref()
        .and_then(|s| s.ttl_seconds_after_finished)
        .map(i64::from)
        .or_else(|| annotation(job, ANNOTATION_TTL).and_then(|t| t.parse().ok()))
        .unwrap_or(0)
}

/// "Job <ns>/<job> failed on Node <node>: <reason>: <message>", as in the Go controller.
fn failure_message(job: &Job, namespace: &str, node: &str) -> String {
    let name = job.metadata.name.clone().unwrap_or_default();
    let failed = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"));
    let reason = failed.and_then(|c| c.reason.clone()).unwrap_or_default();
    let message = failed.and_then(|c| c.message.clone()).unwrap_or_default();
    format!("Job {namespace}/{name} failed on Node {node}: {reason}: {message}")
}

/// The Plan's postCompleteLabels with `$(LATEST_VERSION)` and `$(LATEST_HASH)` expanded the
/// Kubernetes way (`$$` escapes, unknown variables stay as written).
pub fn completion_labels(plan: &Plan, version: &str, hash: &str) -> BTreeMap<String, String> {
    plan.spec
        .post_complete_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), expand(v, version, hash)))
        .collect()
}

fn expand(value: &str, version: &str, hash: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix(LATEST_VERSION_VAR) {
            out.push_str(version);
            rest = after;
        } else if let Some(after) = rest.strip_prefix(LATEST_HASH_VAR) {
            out.push_str(hash);
            rest = after;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

fn until(now: Timestamp, then: Timestamp) -> Duration {
    let seconds = then.as_second() - now.as_second();
    Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1))
}

#[cfg(test)]
mod tests;
