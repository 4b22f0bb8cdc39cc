//! Native drain: which pods of a node to evict, delete, leave alone or refuse on, with the
//! meaning of `kubectl drain`'s options (the Plan's `drain` fields), and the drain itself run
//! from the controller through the Eviction API.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::core::{Selector, SelectorExt};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{
    ANNOTATION_DRAIN_STARTED, ANNOTATION_DRAINED, ANNOTATION_MIRROR_POD, DrainSpec, IntOrDuration,
    LABEL_CONTROLLER, Plan, Reason,
};
use crate::controller::cordon;
use crate::controller::decide::{DrainProgress, Note, Target};
use crate::controller::events::{Events, PlanRef};
use crate::controller::status::stamp;
use crate::metrics::Metrics;
use crate::syntax::duration;

/// What a drain may do, from a Plan's `drain`.
#[derive(Debug, Clone, Default)]
pub struct DrainOptions {
    pub ignore_daemon_sets: bool,
    pub delete_emptydir_data: bool,
    pub force: bool,
    pub grace_period: Option<i64>,
    pub timeout: Option<Duration>,
    pub disable_eviction: bool,
    pub skip_wait_for_delete_timeout: Option<Duration>,
    pub pod_selector: Option<Selector>,
    pub on_timeout: OnTimeout,
}

/// What a drain does when its timeout passes with pods left (`drain.onTimeout`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OnTimeout {
    /// The drain fails; the node keeps its slot.
    #[default]
    Fail,
    /// Keep evicting until the Job's deadline ends it.
    Retry,
    /// Delete the pods left instead of evicting them, then wait once more up to the timeout.
    Delete,
    /// Give the node up: the rollout goes on without it.
    Skip,
}

impl OnTimeout {
    fn parse(text: Option<&str>) -> Self {
        match text {
            Some("Retry") => Self::Retry,
            Some("Delete") => Self::Delete,
            Some("Skip") => Self::Skip,
            _ => Self::Fail,
        }
    }
}

/// Why a drain ended without draining the node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undrained {
    Failed(String),
    Skipped(String),
}

impl DrainOptions {
    /// The options of a (valid) drain spec, with kubectl's defaults.
    pub fn from_spec(spec: &DrainSpec) -> Self {
        let timeout = match &spec.timeout {
            Some(IntOrDuration::Nanos(n)) => Some(*n),
            Some(IntOrDuration::Text(t)) => duration::parse(t).ok(),
            None => None,
        }
        .filter(|n| *n > 0)
        .map(|n| Duration::from_nanos(n.unsigned_abs()));
        Self {
            ignore_daemon_sets: spec.ignore_daemon_sets.unwrap_or(true),
            delete_emptydir_data: spec
                .delete_emptydir_data
                .or(spec.delete_local_data)
                .unwrap_or(true),
            force: spec.force.unwrap_or(false),
            grace_period: spec.grace_period.map(i64::from).filter(|g| *g >= 0),
            timeout,
            disable_eviction: spec.disable_eviction.unwrap_or(false),
            skip_wait_for_delete_timeout: spec
                .skip_wait_for_delete_timeout
                .filter(|s| *s > 0)
                .map(|s| Duration::from_secs(s.unsigned_abs())),
            pod_selector: spec
                .pod_selector
                .clone()
                .and_then(|s| Selector::try_from(s).ok()),
            on_timeout: OnTimeout::parse(spec.on_timeout.as_deref()),
        }
    }
}

/// What the drain does with one pod of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    /// Ask the Eviction API (which respects PodDisruptionBudgets).
    Evict,
    /// Delete it (`disableEviction`).
    Delete,
    /// Already terminating: wait for it to go.
    Wait,
    /// Leave it alone, for this reason.
    Skip(&'static str),
    /// The drain cannot proceed while this pod is there, for this reason.
    Block(&'static str),
}

/// Decides what to do with a pod on the node being drained (kubectl drain's filters, in order).
pub fn pod_action(pod: &Pod, options: &DrainOptions, now: Timestamp) -> PodAction {
    let empty = Default::default();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    if labels.contains_key(LABEL_CONTROLLER) {
        return PodAction::Skip("it belongs to the upgrade controller");
    }
    if let Some(selector) = &options.pod_selector
        && !selector.matches(labels)
    {
        return PodAction::Skip("drain.podSelector does not select it");
    }
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default();
    let terminal = matches!(phase, "Succeeded" | "Failed");
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        return match options.skip_wait_for_delete_timeout {
            Some(skip)
                if now.as_second() - deleted.0.as_second()
                    > i64::try_from(skip.as_secs()).unwrap_or(i64::MAX) =>
            {
                PodAction::Skip("it has been terminating longer than skipWaitForDeleteTimeout")
            }
            _ => PodAction::Wait,
        };
    }
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if controller.is_some_and(|o| o.kind == "DaemonSet") {
        return if options.ignore_daemon_sets {
            PodAction::Skip("DaemonSet pods are ignored")
        } else {
            PodAction::Block(
                "it is managed by a DaemonSet (set drain.ignoreDaemonSets to ignore such pods)",
            )
        };
    }
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(ANNOTATION_MIRROR_POD)) {
        return PodAction::Skip("it is a static (mirror) pod");
    }
    let has_emptydir = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()));
    if has_emptydir && !terminal && !options.delete_emptydir_data {
        return PodAction::Block(
            "it uses emptyDir data (set drain.deleteEmptydirData to delete it)",
        );
    }
    if controller.is_none() && !terminal && !options.force {
        return PodAction::Block(
            "no controller manages it, so it would be gone for good (set drain.force to delete it)",
        );
    }
    if options.disable_eviction {
        PodAction::Delete
    } else {
        PodAction::Evict
    }
}

/// `namespace/name` of a pod.
pub fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Why an eviction of pod `key` (in `namespace`) was refused (429): the budget, named when the
/// API server named it in the refusal's message or causes.
fn refusal(key: &str, namespace: &str, refused: &kube::core::Status) -> String {
    let causes = refused
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.message.as_str());
    match std::iter::once(refused.message.as_str())
        .chain(causes)
        .find_map(budget_in)
    {
        Some(budget) => format!("pod {key} blocked by PodDisruptionBudget {namespace}/{budget}"),
        None => format!(
            "pod {key} blocked by a PodDisruptionBudget ({})",
            refused.message
        ),
    }
}

/// The PodDisruptionBudget named in an eviction refusal, if the API server named one.
pub fn budget_in(message: &str) -> Option<String> {
    // "The disruption budget web needs 1 healthy pods and has 1 currently"
    let rest = message.split("disruption budget ").nth(1)?;
    let name = rest.split_whitespace().next()?;
    (!name.is_empty() && name != "would").then(|| name.trim_end_matches(['.', ',']).to_owned())
}

/// What a drain task needs to know.
#[derive(Debug, Clone)]
pub struct DrainRequest {
    pub plan: PlanRef,
    pub node: String,
    /// The upgrade pod waiting in its gate, and its Job.
    pub pod: String,
    pub job: String,
    /// `None`: cordon only.
    pub options: Option<DrainOptions>,
}

/// Asks for a Plan to be reconciled soon (drains report progress this way).
#[derive(Debug, Clone)]
pub struct Wake(UnboundedSender<ObjectRef<Plan>>);

impl Wake {
    pub fn new(sender: UnboundedSender<ObjectRef<Plan>>) -> Self {
        Wake(sender)
    }

    pub fn plan(&self, namespace: &str, name: &str) {
        self.object(ObjectRef::new(name).within(namespace));
    }

    pub fn object(&self, plan: ObjectRef<Plan>) {
        // The controller has stopped when nobody receives: nothing is left to wake.
        let _ = self.0.send(plan);
    }
}

/// What a drain task may use: the API, events, metrics and a way to wake its Plan.
#[derive(Clone)]
pub struct DrainHandle {
    pub client: Client,
    /// This controller instance, whose cordon claims the drains write.
    pub claimant: cordon::Claimant,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    pub wake: Wake,
}

impl DrainHandle {
    /// Records an event of a drain on its Plan and its Node.
    async fn tell(&self, request: &DrainRequest, warning: bool, reason: Reason, message: String) {
        let note = Note::new(Target::Plan, warning, reason, message);
        self.events
            .on_plan_and_node(&request.plan, &request.node, &note)
            .await;
    }

    fn wake(&self, request: &DrainRequest) {
        self.wake.plan(&request.plan.namespace, &request.plan.name);
    }
}

/// Cordons the node, evicts or deletes its pods as the options say, waits for them to go, then
/// lets the upgrade pod go on. Progress is kept in `progress` and each change wakes the Plan.
/// Runs until done, failed (a blocking pod, or the timeout) or aborted; starting it again
/// resumes it, with the timeout counted from when this Job's drain began (see `drain_started`).
#[tracing::instrument(name = "drain", skip_all, fields(plan = %request.plan.name, node = %request.node, job = %request.job))]
pub async fn run(handle: DrainHandle, request: DrainRequest, progress: Arc<Mutex<DrainProgress>>) {
    let started = std::time::Instant::now();
    let set = |state: DrainProgress| {
        let mut current = progress.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *current != state;
        *current = state;
        changed
    };
    let who = &handle.claimant;
    match cordon::cordon(&handle.client, who, &request.plan.name, &request.node, true).await {
        Ok(Some((node, outcome))) => {
            let target = Target::Node(request.node.clone());
            let note = Note::new(target, false, outcome.reason, outcome.message);
            handle.events.on_node(&node, &note).await;
        }
        Ok(None) => {}
        Err(e) => {
            set(DrainProgress::Running(format!("cordoning: {e}; retrying")));
            handle.wake(&request);
            return;
        }
    }
    let since = match drain_started(&handle.client, &request).await {
        Ok(since) => since,
        Err(e) => {
            set(DrainProgress::Running(format!(
                "recording the drain's start: {e}; retrying"
            )));
            handle.wake(&request);
            return;
        }
    };
    let result = match &request.options {
        None => Ok(0),
        Some(options) => evict_all(&handle, &request, options, since, &set).await,
    };
    match result {
        Ok(evicted) => {
            if let Err(e) = open_gate(&handle.client, &request).await {
                set(DrainProgress::Running(format!(
                    "telling pod {} to go on: {e}; retrying",
                    request.pod
                )));
                handle.wake(&request);
                return;
            }
            if request.options.is_some() {
                handle.metrics.drain_finished("drained", started.elapsed());
                let message = format!(
                    "Node {} drained in {}s ({evicted} pods evicted or deleted)",
                    request.node,
                    started.elapsed().as_secs()
                );
                handle.tell(&request, false, Reason::Drained, message).await;
            }
            set(DrainProgress::Done(request.pod.clone()));
        }
        Err(Undrained::Failed(message)) => {
            handle.metrics.drain_finished("failed", started.elapsed());
            handle
                .tell(&request, true, Reason::DrainFailed, message.clone())
                .await;
            set(DrainProgress::Failed(message));
        }
        Err(Undrained::Skipped(message)) => {
            handle.metrics.drain_finished("skipped", started.elapsed());
            handle
                .tell(&request, true, Reason::DrainSkipped, message.clone())
                .await;
            set(DrainProgress::Skipped(message));
        }
    }
    handle.wake(&request);
}

/// Lets the upgrade pod go on: the annotation its gate container waits for.
async fn open_gate(client: &Client, request: &DrainRequest) -> Result<(), kube::Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &request.plan.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION_DRAINED: stamp(Timestamp::now())}}});
    pods.patch(&request.pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// When this Job's drain began: recorded on the Job the first time, so a controller restarted in
/// the middle of a drain keeps its timeout, and a replaced Job gets a fresh one.
async fn drain_started(client: &Client, request: &DrainRequest) -> Result<Timestamp, kube::Error> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), &request.plan.namespace);
    let job = jobs.get(&request.job).await?;
    if let Some(since) = job
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_DRAIN_STARTED))
        .and_then(|t| t.parse().ok())
    {
        return Ok(since);
    }
    let now = Timestamp::now();
    let patch =
        serde_json::json!({"metadata": {"annotations": {ANNOTATION_DRAIN_STARTED: stamp(now)}}});
    jobs.patch(&request.job, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(now)
}

/// Evicts (or deletes) the node's pods until none that the drain covers is left. Returns how
/// many pods were evicted or deleted, or why the drain did not drain the node. At the timeout,
/// `onTimeout` decides: fail, skip the node, go on evicting, or delete the pods left (once; the
/// timeout then starts over).
async fn evict_all(
    handle: &DrainHandle,
    request: &DrainRequest,
    options: &DrainOptions,
    since: Timestamp,
    set: &impl Fn(DrainProgress) -> bool,
) -> Result<usize, Undrained> {
    let mut since = since;
    let mut timed_out = false;
    let node = &request.node;
    let all: Api<Pod> = Api::all(handle.client.clone());
    let listing = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    let message = format!("Draining node {node} for Plan {}", request.plan.name);
    handle.tell(request, false, Reason::Draining, message).await;
    let mut round = Round::new(options);
    let mut pause = Duration::from_millis(500);
    loop {
        let pods = all.list(&listing).await.map_err(|e| {
            Undrained::Failed(format!("drain of node {node}: cannot list its pods: {e}"))
        })?;
        let now = Timestamp::now();
        let mut waiting: Vec<String> = Vec::new();
        for pod in &pods.items {
            let key = pod_key(pod);
            match pod_action(pod, options, now) {
                PodAction::Skip(_) => {}
                PodAction::Block(reason) => {
                    return Err(Undrained::Failed(format!(
                        "drain of node {node} cannot proceed: pod {key}: {reason}"
                    )));
                }
                PodAction::Wait => waiting.push(format!("waiting for pod {key} to terminate")),
                action @ (PodAction::Evict | PodAction::Delete) => {
                    // After a timeout with onTimeout: Delete, the pods left are deleted.
                    let evict = action == PodAction::Evict && !round.delete_instead;
                    if let Some(wait) = round.remove(handle, request, pod, evict).await {
                        waiting.push(wait);
                    }
                }
            }
        }
        if waiting.is_empty() {
            return Ok(round.evicted.len());
        }
        // Budget refusals first: they are what an operator needs to see.
        waiting.sort_by_key(|w| !w.contains("PodDisruptionBudget"));
        let summary = match waiting.len() {
            1 => waiting[0].clone(),
            n => format!("{} (and {} more)", waiting[0], n - 1),
        };
        if let Some(timeout) = options.timeout
            && !timed_out
            && now.as_second() - since.as_second()
                >= i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX)
        {
            let after = duration::format(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
            let message = format!(
                "drain of node {node} timed out after {after}: {}",
                waiting[0]
            );
            match options.on_timeout {
                OnTimeout::Fail => return Err(Undrained::Failed(message)),
                OnTimeout::Skip if round.delete_instead => return Err(Undrained::Failed(message)),
                OnTimeout::Skip => {
                    return Err(Undrained::Skipped(format!(
                        "{message}; skipping the node (onTimeout: Skip)"
                    )));
                }
                OnTimeout::Retry => {
                    timed_out = true;
                    let text = format!(
                        "{message}; evicting on until the Job's deadline (onTimeout: Retry)"
                    );
                    handle
                        .tell(request, true, Reason::DrainTimedOut, text)
                        .await;
                }
                OnTimeout::Delete if round.delete_instead => {
                    return Err(Undrained::Failed(format!(
                        "{message} (the pods left were deleted at the first timeout)"
                    )));
                }
                OnTimeout::Delete => {
                    round.delete_instead = true;
                    since = now;
                    let text = format!(
                        "{message}; deleting the pods left instead of evicting them \
                         (onTimeout: Delete)"
                    );
                    handle
                        .tell(request, true, Reason::DrainTimedOut, text)
                        .await;
                    continue;
                }
            }
        }
        if set(DrainProgress::Running(summary)) {
            handle.wake(request);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// What a drain remembers between its passes over the node's pods, so each pod's eviction and
/// budget refusal is told once.
struct Round {
    delete: kube::api::DeleteParams,
    evicted: BTreeSet<String>,
    told_budget: BTreeSet<String>,
    /// The timeout passed with `onTimeout: Delete`: pods are deleted, not evicted.
    delete_instead: bool,
}

impl Round {
    fn new(options: &DrainOptions) -> Self {
        Round {
            delete: kube::api::DeleteParams {
                grace_period_seconds: options.grace_period.and_then(|g| u32::try_from(g).ok()),
                ..Default::default()
            },
            evicted: BTreeSet::new(),
            told_budget: BTreeSet::new(),
            delete_instead: false,
        }
    }

    /// Evicts (or deletes) one pod; returns what the drain then waits for, if anything.
    async fn remove(
        &mut self,
        handle: &DrainHandle,
        request: &DrainRequest,
        pod: &Pod,
        evict: bool,
    ) -> Option<String> {
        let node = &request.node;
        let key = pod_key(pod);
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(handle.client.clone(), namespace);
        let result = if evict {
            let params = kube::api::EvictParams {
                delete_options: Some(self.delete.clone()),
                ..Default::default()
            };
            api.evict(name, &params).await.map(drop)
        } else {
            api.delete(name, &self.delete).await.map(drop)
        };
        match result {
            Ok(()) => {
                let (done, reason, message) = if evict {
                    let message = format!("Evicted pod {key} from node {node}");
                    ("evicted", Reason::Evicted, message)
                } else {
                    let message = format!("Deleted pod {key} from node {node} (eviction disabled)");
                    ("deleted", Reason::Deleted, message)
                };
                handle.metrics.eviction(done);
                if self.evicted.insert(key.clone()) {
                    handle.tell(request, false, reason, message).await;
                }
                Some(format!("waiting for pod {key} to terminate"))
            }
            Err(kube::Error::Api(s)) if s.code == 404 => None,
            Err(kube::Error::Api(s)) if s.code == 429 => {
                let reason = refusal(&key, namespace, &s);
                // Counted and told once per pod and drain, not once per retry.
                if self.told_budget.insert(key.clone()) {
                    handle.metrics.eviction("blocked");
                    let message = format!("Drain of node {node}: {reason}");
                    handle
                        .tell(request, false, Reason::WaitingForBudget, message)
                        .await;
                }
                Some(reason)
            }
            Err(e) => {
                handle.metrics.eviction("error");
                let verb = if evict { "evicting" } else { "deleting" };
                Some(format!("{verb} pod {key}: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: &str = "2026-11-26T12:00:00Z";

    fn pod(spec: serde_json::Value) -> Pod {
        let mut base = json!({"metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Running"}});
        merge(&mut base, spec);
        serde_json::from_value(base).unwrap()
    }

    fn merge(base: &mut serde_json::Value, patch: serde_json::Value) {
        match (base, patch) {
            (serde_json::Value::Object(b), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        b.remove(&k);
                    } else {
                        merge(b.entry(k).or_insert(serde_json::Value::Null), v);
                    }
                }
            }
            (b, p) => *b = p,
        }
    }

    fn options(spec: serde_json::Value) -> DrainOptions {
        DrainOptions::from_spec(&serde_json::from_value(spec).unwrap())
    }

    fn action(pod_spec: serde_json::Value, drain: serde_json::Value) -> PodAction {
        pod_action(&pod(pod_spec), &options(drain), NOW.parse().unwrap())
    }

    #[test]
    fn defaults_are_kubectls() {
        let o = options(json!({}));
        assert!(o.ignore_daemon_sets && o.delete_emptydir_data && !o.force && !o.disable_eviction);
        assert_eq!(
            (o.timeout, o.grace_period, o.skip_wait_for_delete_timeout),
            (None, None, None)
        );
        assert!(!options(json!({"deleteLocalData": false})).delete_emptydir_data);
        assert!(!options(json!({"deleteEmptydirData": false})).delete_emptydir_data);
        assert_eq!(
            options(json!({"timeout": 300_000_000_000i64})).timeout,
            Some(Duration::from_secs(300))
        );
        assert_eq!(
            options(json!({"timeout": "90s"})).timeout,
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            options(json!({"timeout": 0})).timeout,
            None,
            "0 waits forever, as kubectl"
        );
        assert_eq!(
            options(json!({"skipWaitForDeleteTimeout": 60})).skip_wait_for_delete_timeout,
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            options(json!({"skipWaitForDeleteTimeout": 0})).skip_wait_for_delete_timeout,
            None
        );
        assert_eq!(options(json!({"gracePeriod": 30})).grace_period, Some(30));
        assert_eq!(options(json!({})).on_timeout, OnTimeout::Fail);
        for (text, policy) in [
            ("Fail", OnTimeout::Fail),
            ("Retry", OnTimeout::Retry),
            ("Delete", OnTimeout::Delete),
            ("Skip", OnTimeout::Skip),
        ] {
            assert_eq!(options(json!({"onTimeout": text})).on_timeout, policy);
        }
    }

    #[test]
    fn replicated_pods_are_evicted_or_deleted() {
        assert_eq!(action(json!({}), json!({})), PodAction::Evict);
        assert_eq!(
            action(json!({}), json!({"disableEviction": true})),
            PodAction::Delete
        );
    }

    #[test]
    fn daemonset_pods() {
        let ds = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "d", "uid": "u", "controller": true}]}});
        assert_eq!(
            action(ds.clone(), json!({})),
            PodAction::Skip("DaemonSet pods are ignored")
        );
        assert!(matches!(
            action(ds, json!({"ignoreDaemonSets": false})),
            PodAction::Block(_)
        ));
    }

    #[test]
    fn bare_pods_need_force() {
        let bare = json!({"metadata": {"ownerReferences": null}});
        assert!(
            matches!(action(bare.clone(), json!({})), PodAction::Block(r) if r.contains("drain.force"))
        );
        assert_eq!(
            action(bare.clone(), json!({"force": true})),
            PodAction::Evict
        );
        assert_eq!(
            action(
                bare.clone(),
                json!({"force": true, "disableEviction": true})
            ),
            PodAction::Delete
        );
        assert_eq!(
            action(
                json!({"metadata": {"ownerReferences": null}, "status": {"phase": "Succeeded"}}),
                json!({})
            ),
            PodAction::Evict,
            "finished pods go"
        );
    }

    #[test]
    fn emptydir_pods_follow_the_flag() {
        let local = json!({"spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}});
        assert_eq!(action(local.clone(), json!({})), PodAction::Evict);
        assert!(
            matches!(action(local.clone(), json!({"deleteEmptydirData": false})), PodAction::Block(r) if r.contains("emptyDir"))
        );
        assert!(matches!(
            action(local, json!({"deleteLocalData": false})),
            PodAction::Block(_)
        ));
    }

    #[test]
    fn mirror_pods_and_our_own_pods_are_skipped() {
        let mirror = json!({"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u", "controller": true}],
            "annotations": {"kubernetes.io/config.mirror": "x"}}});
        assert_eq!(
            action(mirror, json!({})),
            PodAction::Skip("it is a static (mirror) pod")
        );
        let ours = json!({"metadata": {"labels": {"upgrade.cattle.io/controller": "system-upgrade-controller"}}});
        assert_eq!(
            action(ours.clone(), json!({"force": true})),
            PodAction::Skip("it belongs to the upgrade controller")
        );
    }

    #[test]
    fn pod_selector_limits_the_drain() {
        let drain = json!({"podSelector": {"matchExpressions": [{"key": "component", "operator": "NotIn", "values": ["sonobuoy"]}]}});
        assert_eq!(
            action(
                json!({"metadata": {"labels": {"component": "sonobuoy"}}}),
                drain.clone()
            ),
            PodAction::Skip("drain.podSelector does not select it")
        );
        assert_eq!(action(json!({}), drain), PodAction::Evict);
    }

    #[test]
    fn terminating_pods_are_waited_for_unless_stuck() {
        let deleting = json!({"metadata": {"deletionTimestamp": "2026-11-26T11:58:00Z"}});
        assert_eq!(action(deleting.clone(), json!({})), PodAction::Wait);
        assert_eq!(
            action(deleting.clone(), json!({"skipWaitForDeleteTimeout": 300})),
            PodAction::Wait
        );
        assert!(matches!(
            action(deleting, json!({"skipWaitForDeleteTimeout": 60})),
            PodAction::Skip(_)
        ));
    }

    #[test]
    fn budgets_are_read_from_refusals() {
        assert_eq!(
            budget_in("The disruption budget web-pdb needs 1 healthy pods and has 1 currently")
                .as_deref(),
            Some("web-pdb")
        );
        assert_eq!(
            budget_in("Cannot evict pod as it would violate the pod's disruption budget."),
            None
        );
    }
}
