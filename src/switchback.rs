//! `system-upgrade-controller switch-back-check`: what in the cluster must change before the Go
//! controller takes over again, changing nothing. The Go controller cannot read a percentage
//! concurrency or a drain timeout of more than 2^31 nanoseconds (the whole Plan fails to decode),
//! has no pause (a paused Plan would start at once), never opens this controller's gates or
//! resumes a Job suspended after a failed drain, and uncordons only where its own Job succeeds.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::api::{
    ANNOTATION_DRAIN_FAILED, CanaryPhase, FINALIZER_AFTER_HOOK, IntOrDuration, IntOrPercent,
    LABEL_CONTROLLER, Plan, TAINT_UPCOMING_PREFIX,
};
use crate::config::{SwitchBackConfig, kube_config};
use crate::controller::cordon::{Claimant, claims_of, upcoming_taints};
use crate::controller::decide::pods::is_native_gate;
use crate::controller::decide::{finished_at, upgrade_may_have_started};
use crate::error::Error;
use crate::syntax::duration;

/// One thing found, about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Whether it must change first (else it is only worth knowing).
    pub blocking: bool,
    pub object: String,
    pub problem: String,
    pub fix: String,
}

impl Finding {
    fn must(object: String, problem: String, fix: impl Into<String>) -> Self {
        Finding {
            blocking: true,
            object,
            problem,
            fix: fix.into(),
        }
    }

    fn note(object: String, problem: String, fix: impl Into<String>) -> Self {
        Finding {
            blocking: false,
            object,
            problem,
            fix: fix.into(),
        }
    }
}

/// What the cluster holds that the Go controller would choke on, run unasked, or leave stuck.
pub fn findings(
    plans: &[Plan],
    jobs: &[Job],
    pods: &[Pod],
    nodes: &[Node],
    who: &Claimant,
) -> Vec<Finding> {
    let mut found = Vec::new();
    for plan in plans {
        let object = format!(
            "Plan {}/{}",
            plan.namespace().unwrap_or_default(),
            plan.name_any()
        );
        let spec = &plan.spec;
        if let Some(IntOrPercent::Text(percent)) = &spec.concurrency {
            found.push(Finding::must(
                object.clone(),
                format!(
                    "spec.concurrency is {percent:?}; the Go controller reads only integers and \
                     cannot read the Plan at all"
                ),
                "set spec.concurrency to a number of nodes",
            ));
        }
        if let Some(IntOrDuration::Nanos(nanos)) =
            spec.drain.as_ref().and_then(|d| d.timeout.as_ref())
            && *nanos > i64::from(i32::MAX)
        {
            found.push(Finding::must(
                object.clone(),
                format!(
                    "spec.drain.timeout is {nanos} nanoseconds, more than the Go controller's \
                     32-bit field holds, so it cannot read the Plan at all"
                ),
                format!(
                    "write it as a duration: timeout: {}",
                    duration::format(*nanos)
                ),
            ));
        }
        if plan
            .metadata
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FINALIZER_AFTER_HOOK)
        {
            found.push(Finding::must(
                object.clone(),
                format!(
                    "it carries the finalizer {FINALIZER_AFTER_HOOK} (its after hook is owed); the \
                     Go controller never removes it, so deleting the Plan would hang"
                ),
                "let the rollout and its after hook finish here (status.hooks), or remove the \
                 finalizer: kubectl patch plan with --type=json and a remove of \
                 /metadata/finalizers",
            ));
        }
        if let Some(cancelled) = plan.status.as_ref().and_then(|s| s.cancelled.as_ref()) {
            found.push(Finding::must(
                object.clone(),
                format!(
                    "its rollout of hash {} is cancelled; the Go controller has no cancel and \
                     would start the nodes left at once",
                    cancelled.hash
                ),
                "leave the Plan cancelled here until the nodes may run, or delete it (or its \
                 nodeSelector) before switching",
            ));
        }
        if let Some(wave) = (plan.status.as_ref())
            .and_then(|s| s.canary.as_ref())
            .filter(|w| CanaryPhase::parse(&w.phase).is_some_and(|p| !p.lifted()))
        {
            found.push(Finding::must(
                object.clone(),
                format!(
                    "its first wave (spec.canary) is {}; the Go controller has no canary and \
                     would start every node left at once",
                    wave.phase
                ),
                "approve or finish the rollout here first, or delete the Plan (or its \
                 nodeSelector) before switching",
            ));
        }
        if spec.windows.as_ref().is_some_and(|w| !w.is_empty()) {
            found.push(Finding::must(
                object.clone(),
                "spec.windows is set; the Go controller knows only spec.window and would start \
                 the rollout outside these windows"
                    .to_owned(),
                "keep one window in spec.window and remove spec.windows",
            ));
        }
        if spec.paused == Some(true) {
            found.push(Finding::must(
                object.clone(),
                "spec.paused is true; the Go controller has no pause and starts the Plan's \
                 nodes at once"
                    .to_owned(),
                "let the rollout finish here first, or delete the Plan (or its nodeSelector) \
                 until it may run",
            ));
        }
        let ignored: Vec<&str> = [
            ("spec.retry", spec.retry.is_some()),
            ("spec.failureBudget", spec.failure_budget.is_some()),
            ("spec.canary", spec.canary.is_some()),
            ("spec.dependsOn", spec.depends_on.is_some()),
            ("spec.exclusiveGroup", spec.exclusive_group.is_some()),
            ("spec.healthGates", spec.health_gates.is_some()),
            ("spec.versionSafety", spec.version_safety.is_some()),
            ("spec.convergence", spec.convergence.is_some()),
            ("spec.hooks", spec.hooks.is_some()),
            (
                "spec.window.onClose",
                spec.window.as_ref().is_some_and(|w| w.on_close.is_some()),
            ),
            (
                "spec.drain.onTimeout",
                spec.drain.as_ref().is_some_and(|d| d.on_timeout.is_some()),
            ),
            (
                "spec.drain.volumeDetach",
                spec.drain
                    .as_ref()
                    .is_some_and(|d| d.volume_detach.is_some()),
            ),
        ]
        .into_iter()
        .filter_map(|(field, set)| set.then_some(field))
        .collect();
        if !ignored.is_empty() {
            found.push(Finding::note(
                object.clone(),
                format!(
                    "{} mean nothing to the Go controller (and its CRD drops them)",
                    ignored.join(", ")
                ),
                "nothing to do; rollouts go on without them",
            ));
        }
    }
    for job in jobs {
        if finished_at(job).is_some() || job.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let object = format!(
            "Job {}/{}",
            job.namespace().unwrap_or_default(),
            job.name_any()
        );
        let suspended = job.spec.as_ref().and_then(|s| s.suspend) == Some(true);
        if suspended
            || job
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(ANNOTATION_DRAIN_FAILED))
        {
            found.push(Finding::must(
                object,
                "is suspended after its node's drain failed; the Go controller never resumes it"
                    .to_owned(),
                format!(
                    "kubectl -n {} delete job {}",
                    job.namespace().unwrap_or_default(),
                    job.name_any()
                ),
            ));
            continue;
        }
        let native = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.init_containers.as_ref())
            .and_then(|c| c.iter().find(|c| c.name == "cordon" || c.name == "drain"))
            .is_some_and(is_native_gate);
        let pods: Vec<&Pod> = pods.iter().collect();
        let still_gated = !upgrade_may_have_started(job, &pods);
        if native && still_gated {
            found.push(Finding::must(
                object,
                "waits in its gate for this controller to cordon or drain its node; the Go \
                 controller never opens it, so the Job would wait until its deadline"
                    .to_owned(),
                "let this controller take it past its drain first, or delete the Job (the Go \
                 controller starts the node again with its own)",
            ));
        }
    }
    for node in nodes {
        let tainted: Vec<&str> = upcoming_taints(node).collect();
        if !tainted.is_empty() {
            let fix = tainted
                .iter()
                .map(|plan| {
                    format!(
                        "kubectl taint node {} {TAINT_UPCOMING_PREFIX}{plan}-",
                        node.name_any()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            found.push(Finding::note(
                format!("Node {}", node.name_any()),
                format!(
                    "carries the PreferNoSchedule taint of Plan {} (waiting for its turn); the \
                     Go controller never removes it",
                    tainted.join(", ")
                ),
                fix,
            ));
        }
        let plans: Vec<&str> = claims_of(node, who).collect();
        if plans.is_empty() {
            continue;
        }
        found.push(Finding::must(
            format!("Node {}", node.name_any()),
            format!(
                "is cordoned for Plan {} by this controller; the Go controller uncordons a node \
                 only when its own Job succeeds there",
                plans.join(", ")
            ),
            format!(
                "let the upgrade finish here, or kubectl uncordon {} once you are done with it",
                node.name_any()
            ),
        ));
    }
    found
}

/// The findings as text, blocking ones first, then the steps of the switch.
pub fn report(found: &[Finding], namespace: &str) -> String {
    let mut out = String::new();
    let blocking: Vec<&Finding> = found.iter().filter(|f| f.blocking).collect();
    let notes: Vec<&Finding> = found.iter().filter(|f| !f.blocking).collect();
    if blocking.is_empty() {
        out.push_str("nothing blocks a switch back to the Go controller\n");
    } else {
        out.push_str(&format!(
            "{} thing(s) to change before the Go controller takes over:\n",
            blocking.len()
        ));
        for f in &blocking {
            out.push_str(&format!("- {} {}\n  fix: {}\n", f.object, f.problem, f.fix));
        }
    }
    if !notes.is_empty() {
        out.push_str("worth knowing:\n");
        for f in &notes {
            out.push_str(&format!("- {} {}\n", f.object, f.problem));
        }
    }
    out.push_str(&format!(
        "then (see docs/compatibility.md, \"Switching back to the Go controller\"):\n  \
         kubectl delete mutatingwebhookconfiguration,validatingwebhookconfiguration system-upgrade-controller\n  \
         kubectl delete clusterrolebinding system-upgrade system-upgrade-controller\n  \
         kubectl -n {namespace} delete rolebinding system-upgrade system-upgrade-controller\n  \
         and apply the Go controller's manifests\n"
    ));
    out
}

/// Reads the cluster and reports; `Ok(true)` when nothing blocks.
pub async fn run(config: &SwitchBackConfig) -> Result<(String, bool), Error> {
    let client = Client::try_from(
        kube_config(config.kubeconfig.as_deref(), config.context.as_deref()).await?,
    )
    .map_err(|e| Error::KubeConfig(e.to_string()))?;
    let namespace = config.served.namespace.as_str();
    let ours = format!("{LABEL_CONTROLLER}={}", config.name);
    let read = |what: &str, e: kube::Error| Error::Cluster(format!("listing {what}: {e}"));
    let plans = Api::<Plan>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| read("Plans", e))?
        .items;
    let jobs = Api::<Job>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&ours))
        .await
        .map_err(|e| read("Jobs", e))?
        .items;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&ours))
        .await
        .map_err(|e| read("pods", e))?
        .items;
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .map_err(|e| read("nodes", e))?
        .items;
    let who = Claimant::new(namespace, &config.name);
    let found = findings(&plans, &jobs, &pods, &nodes, &who);
    let clear = !found.iter().any(|f| f.blocking);
    Ok((report(&found, namespace), clear))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(name: &str, spec: serde_json::Value) -> Plan {
        serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": "system-upgrade"}, "spec": spec}),
        )
        .unwrap()
    }

    fn gated_job(uid: &str, suspended: bool) -> Job {
        serde_json::from_value(json!({"metadata": {"name": format!("job-{uid}"), "namespace": "system-upgrade", "uid": uid},
            "spec": {"suspend": suspended, "template": {"spec": {"containers": [{"name": "upgrade"}],
                "initContainers": [{"name": "drain", "command": ["sh", "-c", "wait"]}]}}}}))
        .unwrap()
    }

    fn pod(job_uid: &str, drained: bool) -> Pod {
        let annotations = if drained {
            json!({"upgrade.cattle.io/drained": "now"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({"metadata": {"name": "p", "annotations": annotations,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": job_uid, "controller": true}]},
            "spec": {"nodeName": "n", "containers": [{"name": "upgrade"}], "initContainers": [{"name": "drain", "command": ["sh"]}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": "drain", "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": {"running": {}}}]}}))
        .unwrap()
    }

    #[test]
    fn what_the_go_controller_would_choke_on_run_or_leave_stuck_is_found() {
        let plans = [
            plan(
                "pct",
                json!({"concurrency": "25%", "upgrade": {"image": "x"}}),
            ),
            plan(
                "long",
                json!({"concurrency": 1, "drain": {"timeout": 300_000_000_000i64}, "upgrade": {"image": "x"}}),
            ),
            plan(
                "short",
                json!({"concurrency": 1, "drain": {"timeout": 2_000_000_000}, "upgrade": {"image": "x"}}),
            ),
            plan(
                "held",
                json!({"concurrency": 1, "paused": true, "retry": {"limit": 2}, "upgrade": {"image": "x"}}),
            ),
            plan(
                "fine",
                json!({"concurrency": 1, "drain": {"timeout": "5m"}, "upgrade": {"image": "x"}}),
            ),
            {
                let mut hooked = plan(
                    "hooked",
                    json!({"concurrency": 1, "upgrade": {"image": "x"},
                        "hooks": {"after": {"image": "y"}, "afterWhenDeleted": true}}),
                );
                hooked.metadata.finalizers = Some(vec![FINALIZER_AFTER_HOOK.to_owned()]);
                hooked
            },
            {
                let mut cancelled = plan(
                    "cancelled",
                    json!({"concurrency": 1, "upgrade": {"image": "x"}}),
                );
                cancelled.status =
                    serde_json::from_value(json!({"cancelled": {"hash": "h1"}})).unwrap();
                cancelled
            },
            {
                let mut waiting = plan(
                    "waiting",
                    json!({"concurrency": 1, "upgrade": {"image": "x"}, "canary": {"nodes": 1}}),
                );
                waiting.status = serde_json::from_value(
                    json!({"canary": {"hash": "h1", "phase": "AwaitingApproval"}}),
                )
                .unwrap();
                waiting
            },
        ];
        let jobs = [
            gated_job("waiting", false),
            gated_job("opened", false),
            gated_job("failed", true),
        ];
        let pods = [pod("waiting", false), pod("opened", true)];
        let node: Node = serde_json::from_value(json!({"metadata": {"name": "agent-1", "annotations": {
            "cordoned.upgrade.cattle.io/os": "system-upgrade/system-upgrade-controller 2026-12-01T00:00:00Z",
            "cordoned.upgrade.cattle.io/theirs": "rancher/other 2026-12-01T00:00:00Z"}}})).unwrap();
        let who = Claimant::new("system-upgrade", "system-upgrade-controller");
        let found = findings(&plans, &jobs, &pods, &[node], &who);
        let blocking: Vec<(&str, &str)> = found
            .iter()
            .filter(|f| f.blocking)
            .map(|f| (f.object.as_str(), f.fix.as_str()))
            .collect();
        assert_eq!(
            blocking.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            [
                "Plan system-upgrade/pct",
                "Plan system-upgrade/long",
                "Plan system-upgrade/held",
                "Plan system-upgrade/hooked",
                "Plan system-upgrade/cancelled",
                "Plan system-upgrade/waiting",
                "Job system-upgrade/job-waiting",
                "Job system-upgrade/job-failed",
                "Node agent-1",
            ],
            "{found:#?}"
        );
        assert_eq!(blocking[1].1, "write it as a duration: timeout: 5m0s");
        assert!(
            found
                .iter()
                .any(|f| !f.blocking && f.problem.starts_with("spec.retry"))
        );
        assert!(
            found
                .iter()
                .any(|f| !f.blocking && f.problem.starts_with("spec.hooks mean nothing"))
        );
        let text = report(&found, "system-upgrade");
        assert!(
            text.starts_with("9 thing(s) to change before the Go controller takes over:\n"),
            "{text}"
        );
        assert!(text.contains("Plan os by this controller"), "{text}");
        assert!(
            !text.contains("theirs"),
            "another instance's claim is not ours: {text}"
        );
        assert!(report(&[], "system-upgrade").starts_with("nothing blocks"));
    }
}
