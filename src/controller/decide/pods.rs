//! What a Job's pods say about where its upgrade stands: whether the pod is on its node, whether
//! its `cordon`/`drain` gate runs, whether the upgrade may have begun.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, ContainerState, Pod};

use crate::api::ANNOTATION_DRAINED;
use crate::controller::job::GATE_NAMES;

/// Whether a Job has any pod (in any phase).
pub fn has_pod(job: &Job, pods: &[&Pod]) -> bool {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    pods.iter().any(|p| owned_by(p, uid))
}

/// Whether a Job has a pod the scheduler placed on its node (in any phase).
pub fn has_pod_on_node(job: &Job, pods: &[&Pod]) -> bool {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    pods.iter()
        .any(|p| owned_by(p, uid) && bound_node(p).is_some())
}

/// Whether the Job of UID `uid` owns the pod.
pub fn owned_by(pod: &Pod, uid: &str) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid)
}

/// The pods of every Job of this name, whichever incarnation (each Job object has its own UID),
/// in any phase, being deleted or not.
pub fn of_job_named<'a>(job_name: &str, pods: &[&'a Pod]) -> Vec<&'a Pod> {
    pods.iter()
        .copied()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Job" && o.name == job_name)
        })
        .collect()
}

/// The pods of a Job that are neither finished nor being deleted, newest first.
pub fn active_pods<'a>(job: &Job, pods: &[&'a Pod]) -> Vec<&'a Pod> {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    let mut active: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| owned_by(p, uid))
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .collect();
    active.sort_by_key(|p| std::cmp::Reverse(p.metadata.creation_timestamp.as_ref().map(|t| t.0)));
    active
}

/// The active pod of a Job that has got furthest: one on its node before one the scheduler has
/// not placed, else the newest. A Job has two active pods when the Job controller loses count
/// (seen after a Job was re-created under the name of one just deleted): the second cannot be
/// placed beside the first, so waiting for it would hold the node for good.
pub fn furthest_pod<'a>(job: &Job, pods: &[&'a Pod]) -> Option<&'a Pod> {
    let active = active_pods(job, pods);
    let bound = active.iter().find(|p| bound_node(p).is_some()).copied();
    bound.or_else(|| active.first().copied())
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// The node the pod is bound to, if the scheduler has placed it.
pub fn bound_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The pod's `cordon` or `drain` init container.
pub fn gate(pod: &Pod) -> Option<&Container> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| GATE_NAMES.contains(&c.name.as_str()))
}

/// Whether a gate is this controller's (a shell loop waiting for the controller), rather than
/// the Go controller's `kubectl cordon`/`kubectl drain`.
pub fn is_native_gate(container: &Container) -> bool {
    container
        .command
        .as_ref()
        .and_then(|c| c.first())
        .map(String::as_str)
        == Some("sh")
}

fn init_state<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerState> {
    pod.status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)?
        .state
        .as_ref()
}

/// Whether the pod's gate container is running: the pod is on its node, `prepare` has finished
/// and the gate's image was pulled, so the upgrade waits only for the controller.
pub fn gate_running(pod: &Pod) -> bool {
    gate(pod)
        .and_then(|g| init_state(pod, &g.name))
        .is_some_and(|s| s.running.is_some())
}

/// Whether a drain may begin for this pod. A pod of this controller's Jobs qualifies once its
/// gate runs. A pod of the Go controller's Jobs runs its own kubectl in its gate, so it
/// qualifies only once it runs on its node (past that gate).
pub fn ready_for_drain(pod: &Pod) -> bool {
    match gate(pod) {
        Some(g) if is_native_gate(g) => gate_running(pod),
        _ => bound_node(pod).is_some() && phase(pod) == "Running",
    }
}

/// Why a pod that may not be drained for yet is not ready: not scheduled (with the scheduler's
/// reason), or not started on its node (with the container runtime's reason).
pub fn not_ready_reason(pod: &Pod) -> String {
    if bound_node(pod).is_none() {
        let why = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| {
                c.iter()
                    .find(|c| c.type_ == "PodScheduled" && c.status == "False")
            })
            .and_then(|c| c.message.clone());
        return match why {
            Some(why) => format!(
                "waiting for pod {} to be scheduled on the node; the node is not touched until \
                 then: {why}",
                name(pod)
            ),
            None => format!(
                "waiting for pod {} to be scheduled on the node; the node is not touched until then",
                name(pod)
            ),
        };
    }
    let waiting = gate(pod)
        .and_then(|g| init_state(pod, &g.name))
        .and_then(|s| s.waiting.as_ref())
        .map(|w| {
            let reason = w.reason.clone().unwrap_or_default();
            match &w.message {
                Some(message) => format!("{reason}: {message}"),
                None => reason,
            }
        })
        .filter(|w| !w.is_empty());
    match waiting {
        Some(why) => format!("waiting for pod {} to start on the node: {why}", name(pod)),
        None => format!("waiting for pod {} to start on the node", name(pod)),
    }
}

fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

/// Whether the upgrade of a Job may have begun on its node, so stopping the Job could interrupt
/// it, or undo one that is over: a pod that succeeded (the Job's status may not say so yet). It
/// has not while every active pod is unscheduled, or still runs an init container (`prepare`, or
/// the gate before the controller opened it): the upgrade container starts only after all of
/// them. A pod that failed ran nothing that stopping the Job could interrupt: the Job's next pod
/// waits in its gate again.
pub fn upgrade_may_have_started(job: &Job, pods: &[&Pod]) -> bool {
    let uid = job.metadata.uid.as_deref().unwrap_or_default();
    let succeeded = pods
        .iter()
        .any(|p| owned_by(p, uid) && phase(p) == "Succeeded");
    succeeded || active_pods(job, pods).into_iter().any(pod_may_have_begun)
}

/// Whether an active pod's upgrade may have begun: it is on its node and runs, or its gate was
/// opened, or all its init containers are done (or it has none).
fn pod_may_have_begun(pod: &Pod) -> bool {
    if bound_node(pod).is_none() {
        return false;
    }
    if phase(pod) == "Running" {
        return true;
    }
    let opened = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(ANNOTATION_DRAINED));
    if opened {
        return true;
    }
    let inits = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    // All init containers done (or none): the upgrade container starts any moment.
    inits.iter().all(|c| {
        init_state(pod, &c.name)
            .and_then(|s| s.terminated.as_ref())
            .is_some_and(|t| t.exit_code == 0)
    })
}

/// Pods of a Plan whose Job is gone (deleted, maybe replaced under the same name) but which the
/// garbage collector has not removed yet, still waiting in `prepare` or their gate: nothing of
/// the upgrade runs in them, and the Jobs' anti-affinity keeps the node's next upgrade pod off
/// the node while they stay. Only pods older than `before` count, so a new Job's pod seen before
/// its Job is not taken for one.
pub fn stranded<'a>(pods: &[&'a Pod], jobs: &[&Job], before: jiff::Timestamp) -> Vec<&'a Pod> {
    let uids = job_uids(jobs);
    pods.iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .filter(|p| {
            p.metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| t.0 < before)
        })
        .filter(|p| job_gone(p, &uids))
        .filter(|p| !pod_may_have_begun(p))
        .collect()
}

/// The Job controller's finalizer on the pods it tracks.
pub const JOB_TRACKING_FINALIZER: &str = "batch.kubernetes.io/job-tracking";

/// Pods of a Plan whose Job is gone, being deleted since before `before`, that the Job
/// controller's tracking finalizer still keeps, with the finalizer's index: nothing of the
/// upgrade ever ran in them, and the Job controller, which removes that finalizer from pods of
/// Jobs that are gone, missed them (found by the long soak: a pod of a Job deleted and re-created
/// under its name stayed Terminating for ten minutes after an API server restart, and the
/// Jobs' anti-affinity kept the node's new upgrade pod off the node all that time).
pub fn held_by_finalizer<'a>(
    pods: &[&'a Pod],
    jobs: &[&Job],
    before: jiff::Timestamp,
) -> Vec<(&'a Pod, usize)> {
    let uids = job_uids(jobs);
    pods.iter()
        .copied()
        .filter(|p| {
            p.metadata
                .deletion_timestamp
                .as_ref()
                .is_some_and(|t| t.0 < before)
        })
        .filter(|p| job_gone(p, &uids))
        .filter(|p| !pod_may_have_begun(p) || matches!(phase(p), "Succeeded" | "Failed"))
        .filter_map(|p| {
            let index = p
                .metadata
                .finalizers
                .iter()
                .flatten()
                .position(|f| f == JOB_TRACKING_FINALIZER)?;
            Some((p, index))
        })
        .collect()
}

fn job_uids<'a>(jobs: &[&'a Job]) -> Vec<&'a str> {
    jobs.iter()
        .filter_map(|j| j.metadata.uid.as_deref())
        .collect()
}

/// Whether the Job that controls a pod is none of `uids` (deleted, or replaced under its name).
fn job_gone(pod: &Pod, uids: &[&str]) -> bool {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Job" && o.controller == Some(true));
    owner.is_some_and(|o| !uids.contains(&o.uid.as_str()))
}

/// Whether a pod's `prepare` init container (if it has one) finished successfully.
pub fn prepared(pod: &Pod) -> bool {
    let has_prepare = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == "prepare"));
    if !has_prepare {
        return true;
    }
    init_state(pod, "prepare")
        .and_then(|s| s.terminated.as_ref())
        .is_some_and(|t| t.exit_code == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        let mut base = json!({"metadata": {"name": "pod", "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "job-uid", "controller": true}]},
            "spec": {"containers": [{"name": "upgrade"}]}, "status": {"phase": "Pending"}});
        merge(&mut base, value);
        serde_json::from_value(base).unwrap()
    }

    fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
        match (base, patch) {
            (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                }
            }
            (b, p) => *b = p,
        }
    }

    fn job() -> Job {
        serde_json::from_value(json!({"metadata": {"name": "j", "uid": "job-uid"}})).unwrap()
    }

    const NATIVE: &str = r#"{"name": "drain", "command": ["sh", "-c", "wait"]}"#;
    const KUBECTL: &str = r#"{"name": "drain", "args": ["drain", "a"]}"#;

    fn gated(gate: &str, state: serde_json::Value, node: Option<&str>) -> Pod {
        let gate: serde_json::Value = serde_json::from_str(gate).unwrap();
        let mut spec = json!({"initContainers": [gate]});
        if let Some(node) = node {
            spec["nodeName"] = json!(node);
        }
        pod(
            json!({"spec": spec, "status": {"initContainerStatuses": [{"name": "drain", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": state}]}}),
        )
    }

    #[test]
    fn a_pending_unscheduled_pod_is_not_ready_and_says_why() {
        let p = pod(
            json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
            "message": "0/6 nodes are available: 1 node(s) had untolerated taint {CriticalAddonsOnly: true}"}]},
            "spec": {"initContainers": [serde_json::from_str::<serde_json::Value>(NATIVE).unwrap()]}}),
        );
        assert!(!ready_for_drain(&p));
        let why = not_ready_reason(&p);
        assert!(
            why.contains("to be scheduled") && why.contains("untolerated taint"),
            "{why}"
        );
        assert!(!upgrade_may_have_started(&job(), &[&p]));
    }

    #[test]
    fn a_native_gate_is_ready_once_it_runs() {
        let waiting = gated(
            NATIVE,
            json!({"waiting": {"reason": "ErrImagePull", "message": "pull access denied"}}),
            Some("a"),
        );
        assert!(!ready_for_drain(&waiting));
        assert!(not_ready_reason(&waiting).contains("ErrImagePull: pull access denied"));
        let running = gated(NATIVE, json!({"running": {}}), Some("a"));
        assert!(ready_for_drain(&running));
        assert!(
            !upgrade_may_have_started(&job(), &[&running]),
            "held in the gate"
        );
    }

    #[test]
    fn a_kubectl_gate_is_ready_only_when_the_pod_runs() {
        let in_gate = gated(KUBECTL, json!({"running": {}}), Some("a"));
        assert!(!ready_for_drain(&in_gate));
        assert!(!upgrade_may_have_started(&job(), &[&in_gate]));
        let mut past = gated(KUBECTL, json!({"terminated": {"exitCode": 0}}), Some("a"));
        past.status.as_mut().unwrap().phase = Some("Running".into());
        assert!(ready_for_drain(&past));
        assert!(upgrade_may_have_started(&job(), &[&past]));
    }

    #[test]
    fn an_upgrade_may_have_started_once_every_init_container_is_done_or_the_gate_opened() {
        let no_inits = pod(json!({"spec": {"nodeName": "a"}}));
        assert!(upgrade_may_have_started(&job(), &[&no_inits]));
        let done = gated(NATIVE, json!({"terminated": {"exitCode": 0}}), Some("a"));
        assert!(upgrade_may_have_started(&job(), &[&done]));
        let mut opened = gated(NATIVE, json!({"running": {}}), Some("a"));
        opened.metadata.annotations =
            Some([(ANNOTATION_DRAINED.to_owned(), "now".to_owned())].into());
        assert!(upgrade_may_have_started(&job(), &[&opened]));
        // A pod that succeeded ran the upgrade (its Job's status may lag); one that failed runs
        // nothing any more, and the Job's next pod waits in its gate.
        let mut succeeded = pod(json!({"spec": {"nodeName": "a"}}));
        succeeded.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(upgrade_may_have_started(&job(), &[&succeeded]));
        let mut failed = pod(json!({"spec": {"nodeName": "a"}}));
        failed.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(!upgrade_may_have_started(&job(), &[&failed]));
        let in_gate = gated(NATIVE, json!({"running": {}}), Some("a"));
        assert!(!upgrade_may_have_started(&job(), &[&failed, &in_gate]));
        assert!(!upgrade_may_have_started(&job(), &[]));
    }
}
