//! Native drain: which pods of a node to evict, delete, leave alone or refuse on, with the
//! meaning of `kubectl drain`'s options (the Plan's `drain` fields), and the drain itself run
//! from the controller through the Eviction API.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
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
use crate::controller::budgets::{Board, Seat};
use crate::controller::cordon;
use crate::controller::decide::{DrainProgress, Note, Target};
use crate::controller::detach::{self, DetachTimeout, VolumeWait};
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
    /// Wait for the node's volumes to detach once its pods are gone (`drain.volumeDetach`).
    pub volumes: Option<VolumeWait>,
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
    /// This replica no longer holds the Lease: the drain stops, and the leader resumes it.
    NotLeading,
    /// The Job is gone (deleted, by hand or with its Plan, or replaced): the drain stops.
    JobGone,
    /// A PodDisruptionBudget refused an eviction while an earlier drain of the same Plan holds
    /// its node: this one gives way (uncordons its node and waits for the earlier ones); why.
    GiveWay(String),
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
            volumes: VolumeWait::from_spec(spec.volume_detach.as_ref()),
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
    pub job_uid: String,
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
    /// With leader election: checked before each step that writes (found by the soak: a
    /// leader resumed from SIGSTOP after another took the Lease cordoned nodes before it
    /// noticed).
    pub fence: Option<crate::leader::Fence>,
    /// This controller instance, whose cordon claims the drains write.
    pub claimant: cordon::Claimant,
    pub events: Arc<Events>,
    pub metrics: Arc<Metrics>,
    pub wake: Wake,
    /// The nodes each Plan's drains hold cordoned (so drains of one Plan never wait on each
    /// other's PodDisruptionBudgets for good).
    pub board: Arc<Board>,
}

impl DrainHandle {
    /// Whether this replica may write: it holds the Lease (always, without leader election).
    async fn leads(&self) -> bool {
        match &self.fence {
            None => true,
            Some(fence) => fence.holds().await,
        }
    }

    /// Whether the last [`DrainHandle::leads`] still proves this replica holds the Lease: asked
    /// right before each write, so a replica stopped since (SIGSTOP, a frozen VM) reads the
    /// Lease again when it wakes instead of writing.
    fn may_write(&self) -> bool {
        self.fence.as_ref().is_none_or(crate::leader::Fence::valid)
    }

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
/// Runs until done, failed (a blocking pod, or the timeout) or aborted; a step the API server
/// does not answer is tried again after a backoff (see [`again`]). Starting it again resumes it,
/// with the timeout counted from when this pod's drain began (see `drain_started`).
#[tracing::instrument(name = "drain", skip_all, fields(plan = %request.plan.name, node = %request.node, job = %request.job))]
pub async fn run(handle: DrainHandle, request: DrainRequest, progress: Arc<Mutex<DrainProgress>>) {
    let started = std::time::Instant::now();
    let set = |state: DrainProgress| {
        let mut current = crate::sync::lock(&progress);
        let changed = *current != state;
        *current = state;
        changed
    };
    let mut failures = 0;
    // Gave way to an earlier drain of the Plan: the next cordon starts the timeout afresh.
    let mut gave_way = false;
    // The drains this one gave way to: it cordons again only once they are over.
    let mut behind: Vec<String> = Vec::new();
    let result = loop {
        let mut told_budget = false;
        let (since, proved, seat) = loop {
            // Waiting for the drains it gave way to writes nothing, so it proves nothing.
            let others = handle.board.others(&request.plan.uid, &request.node);
            behind.retain(|n| others.iter().any(|(o, _)| o == n));
            if !behind.is_empty() {
                tokio::time::sleep(BUDGET_LOOK).await;
                continue;
            }
            if !handle.leads().await {
                return not_leading(&handle, &request);
            }
            if !job_stands(&handle.client, &request).await {
                // Deleted (by hand, or replaced): its node is not cordoned for it.
                return job_gone(&handle, &request);
            }
            if let Some(options) = &request.options
                && let Some(wait) = budget_wait(&handle, &request, options).await
            {
                if !told_budget {
                    told_budget = true;
                    handle.metrics.eviction("would_block");
                    let message = format!("Drain of node {}: {wait}", request.node);
                    handle
                        .tell(&request, false, Reason::WaitingForBudget, message)
                        .await;
                }
                if set(DrainProgress::Running(wait)) {
                    handle.wake(&request);
                }
                tokio::time::sleep(BUDGET_LOOK).await;
                continue;
            }
            let proved = tokio::time::Instant::now();
            match begin(&handle, &request, gave_way).await {
                Ok(since) => {
                    let seat = handle.board.take(&request.plan.uid, &request.node);
                    break (since, proved, seat);
                }
                Err(what) => again(&handle, &request, &set, &mut failures, what).await,
            }
        };
        let drained = match &request.options {
            None => Ok(0),
            Some(options) => {
                match evict_all(&handle, &request, options, since, proved, &seat, &set).await {
                    Ok(evicted) => match &options.volumes {
                        Some(wait) => await_volumes(&handle, &request, wait, &set)
                            .await
                            .map(|()| evicted),
                        None => Ok(evicted),
                    },
                    Err(undrained) => Err(undrained),
                }
            }
        };
        let Err(Undrained::GiveWay(message)) = drained else {
            break drained;
        };
        // Uncordoned while the earlier drains finish, so their evicted pods can come here.
        behind = seat.behind();
        drop(seat);
        gave_way = true;
        if let Err(undrained) = give_way(&handle, &request, &set, &mut failures, message).await {
            break Err(undrained);
        }
    };
    match result {
        Ok(evicted) => {
            loop {
                if !handle.leads().await {
                    return not_leading(&handle, &request);
                }
                // A retry comes after a wait: the Job may have gone meanwhile.
                if failures > 0 && !job_stands(&handle.client, &request).await {
                    return job_gone(&handle, &request);
                }
                let Err(e) = open_gate(&handle, &request).await else {
                    break;
                };
                let what = format!("telling pod {} to go on: {e}", request.pod);
                again(&handle, &request, &set, &mut failures, what).await;
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
        Err(Undrained::NotLeading) => return not_leading(&handle, &request),
        // Giving way ends in another cordon (above), never here.
        Err(Undrained::JobGone | Undrained::GiveWay(_)) => return job_gone(&handle, &request),
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

/// How often a drain waiting to cordon because of a PodDisruptionBudget looks again.
const BUDGET_LOOK: Duration = Duration::from_secs(3);

/// Before a drain cordons its node while other drains of its Plan hold theirs: why it must wait,
/// if a PodDisruptionBudget would refuse evicting one of the node's pods now (a server-side dry
/// run of each eviction). Its drain could not finish while those drains hold the budget, and
/// cordoning would only take one more node from the pods they evict. Alone, a drain cordons
/// and waits for its budgets within its timeout, as before. A failed dry run does not hold it.
async fn budget_wait(
    handle: &DrainHandle,
    request: &DrainRequest,
    options: &DrainOptions,
) -> Option<String> {
    if options.disable_eviction {
        return None;
    }
    let others: Vec<String> = handle
        .board
        .others(&request.plan.uid, &request.node)
        .into_iter()
        .map(|(node, _)| node)
        .collect();
    if others.is_empty() {
        return None;
    }
    let node = &request.node;
    let all: Api<Pod> = Api::all(handle.client.clone());
    let listing = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    let pods = all.list(&listing).await.ok()?.items;
    let now = Timestamp::now();
    let params = kube::api::EvictParams {
        post_options: kube::api::PostParams {
            dry_run: true,
            field_manager: None,
        },
        ..Default::default()
    };
    for pod in pods
        .iter()
        .filter(|p| pod_action(p, options, now) == PodAction::Evict)
    {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(handle.client.clone(), namespace);
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        if let Err(kube::Error::Api(s)) = api.evict(name, &params).await
            && s.code == 429
        {
            return Some(format!(
                "not cordoning yet: {} while node {} of this Plan is drained",
                refusal(&pod_key(pod), namespace, &s),
                others.join(", ")
            ));
        }
    }
    None
}

/// Gives way to an earlier drain of the Plan: uncordons the node (this Plan's claim) and says
/// why; the drain then waits before cordoning again (see [`budget_wait`]).
async fn give_way(
    handle: &DrainHandle,
    request: &DrainRequest,
    set: &impl Fn(DrainProgress) -> bool,
    failures: &mut u32,
    message: String,
) -> Result<(), Undrained> {
    handle.metrics.eviction("gave_way");
    handle
        .tell(
            request,
            true,
            Reason::DrainGaveWay,
            format!("Drain of node {}: {message}", request.node),
        )
        .await;
    if set(DrainProgress::Running(message)) {
        handle.wake(request);
    }
    loop {
        if !handle.leads().await {
            return Err(Undrained::NotLeading);
        }
        let may_write = || handle.may_write();
        let released = cordon::cordon(
            &handle.client,
            &handle.claimant,
            &request.plan.name,
            &request.node,
            false,
            &may_write,
        )
        .await;
        match released {
            Ok(Some((node, outcome))) => {
                let target = Target::Node(request.node.clone());
                let note = Note::new(target, false, outcome.reason, outcome.message);
                handle.events.on_node(&node, &note).await;
                return Ok(());
            }
            Ok(None) => return Ok(()),
            Err(e) => again(handle, request, set, failures, format!("uncordoning: {e}")).await,
        }
    }
}

/// Whether the drain's Job still stands (not deleted, not replaced under its name), as the API
/// server has it now. Found by the soak: a Job deleted by hand had its node cordoned 200 ms
/// later by a drain started before. A failed read counts as standing: the step says why.
async fn job_stands(client: &Client, request: &DrainRequest) -> bool {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> =
        Api::namespaced(client.clone(), &request.plan.namespace);
    match jobs.get_opt(&request.job).await {
        Ok(Some(job)) => {
            job.metadata.uid.as_deref() == Some(request.job_uid.as_str())
                && job.metadata.deletion_timestamp.is_none()
        }
        Ok(None) => false,
        Err(_) => true,
    }
}

/// A drain whose Job is gone stops, writing nothing more, and wakes its Plan (which returns
/// the node if the drain had cordoned it).
fn job_gone(handle: &DrainHandle, request: &DrainRequest) {
    tracing::info!(job = %request.job, "the Job is gone; the drain stops");
    handle.wake(request);
}

/// A drain stopped because this replica no longer holds the Lease.
/// A drain that cannot prove this replica holds the Lease (it lost it, or could not read it in
/// time) stops and wakes its Plan: a replica that still leads starts the drain again from the
/// next pass, and one that lost the Lease stops its controller. (A replay of the long soak ended
/// with four nodes cordoned and their upgrades waiting in their gates; a drain stopped this way
/// woke nothing, and nothing else may wake the Plan for minutes.)
fn not_leading(handle: &DrainHandle, request: &DrainRequest) {
    tracing::warn!(node = %request.node, "this replica cannot prove it holds the Lease; the drain stops");
    handle.wake(request);
}

/// Cordons the node (told on the node) and reads, or records, when this pod's drain began.
async fn begin(
    handle: &DrainHandle,
    request: &DrainRequest,
    fresh: bool,
) -> Result<Timestamp, String> {
    let who = &handle.claimant;
    let may_write = || handle.may_write();
    let cordoned = cordon::cordon(
        &handle.client,
        who,
        &request.plan.name,
        &request.node,
        true,
        &may_write,
    )
    .await;
    match cordoned {
        Ok(Some((node, outcome))) => {
            let target = Target::Node(request.node.clone());
            let note = Note::new(target, false, outcome.reason, outcome.message);
            handle.events.on_node(&node, &note).await;
        }
        Ok(None) => {}
        Err(e) => return Err(format!("cordoning: {e}")),
    }
    drain_started(handle, request, fresh)
        .await
        .map_err(|e| format!("recording the drain's start: {e}"))
}

/// Waits before a step that failed (`what`) is tried again: 1 s, doubling up to 30 s. The
/// progress says so, and the Plan is woken when that changes what it says.
async fn again(
    handle: &DrainHandle,
    request: &DrainRequest,
    set: &impl Fn(DrainProgress) -> bool,
    failures: &mut u32,
    what: String,
) {
    *failures += 1;
    let wait = Duration::from_secs(1 << (*failures - 1).min(5)).min(Duration::from_secs(30));
    tracing::warn!(error = %what, ?wait, "drain step failed; retrying");
    if set(DrainProgress::Running(format!("{what}; retrying"))) {
        handle.wake(request);
    }
    tokio::time::sleep(wait).await;
}

/// Lets the upgrade pod go on: the annotation its gate container waits for.
async fn open_gate(handle: &DrainHandle, request: &DrainRequest) -> Result<(), String> {
    let pods: Api<Pod> = Api::namespaced(handle.client.clone(), &request.plan.namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {ANNOTATION_DRAINED: stamp(Timestamp::now())}}});
    if !handle.may_write() {
        return Err(FENCED.to_owned());
    }
    pods.patch(&request.pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// When this pod's drain began: recorded on the upgrade pod the first time, so a controller
/// restarted in the middle of a drain keeps its timeout, while the Job's next pod (after a
/// reboot failed the first) and a replaced Job's pod each get a timeout of their own; so does a
/// drain cordoning again after it gave way (`fresh`).
async fn drain_started(
    handle: &DrainHandle,
    request: &DrainRequest,
    fresh: bool,
) -> Result<Timestamp, String> {
    let pods: Api<Pod> = Api::namespaced(handle.client.clone(), &request.plan.namespace);
    let pod = pods.get(&request.pod).await.map_err(|e| e.to_string())?;
    if !fresh
        && let Some(since) = pod
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
    if !handle.may_write() {
        return Err(FENCED.to_owned());
    }
    pods.patch(&request.pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| e.to_string())?;
    Ok(now)
}

/// Why a write waits: the replica must read the Lease again first.
const FENCED: &str = "this replica's hold on the Lease is not proved now; reading it again";

/// Evicts (or deletes) the node's pods until none that the drain covers is left: those on the
/// node at its first successful list, as `kubectl drain` does (pods arriving later, say an
/// operator tolerating every taint, are not waited for). A failed list is tried again like a
/// failed eviction. Returns how many pods were evicted or deleted, or why the drain did not
/// drain the node. At the timeout, `onTimeout` decides: fail, skip the node, go on evicting, or
/// delete the pods left (once; the timeout then starts over).
/// How old the proof that a drain's Job stands may be when the drain evicts or deletes a pod.
/// Found by the long soak: an operator deleted a Job while its drain's first round waited on a
/// slow API server (the Draining event, the pod list); the eviction went out 150 ms after the
/// deletion, 3 s after the drain had last seen the Job.
const PROOF_AGE: Duration = Duration::from_secs(1);

/// Evicts (or deletes) the node's pods until they are gone, as `options` say. `proved` is when
/// the Job was last seen standing.
async fn evict_all(
    handle: &DrainHandle,
    request: &DrainRequest,
    options: &DrainOptions,
    since: Timestamp,
    mut proved: tokio::time::Instant,
    seat: &Seat,
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
    // The UIDs of the pods on the node when the drain began.
    let mut drained: Option<BTreeSet<String>> = None;
    let mut first = true;
    loop {
        if !handle.leads().await {
            return Err(Undrained::NotLeading);
        }
        // Each round after the first proves the Job still stands: found by the long soak, a
        // drain whose Plan was deleted evicted a pod 2 s after its Job went, on a retry.
        if !first {
            if !job_stands(&handle.client, request).await {
                return Err(Undrained::JobGone);
            }
            proved = tokio::time::Instant::now();
        }
        first = false;
        let listed = all.list(&listing).await;
        let now = Timestamp::now();
        let mut waiting: Vec<String> = Vec::new();
        let pods = match listed {
            Ok(list) => list.items,
            Err(e) => {
                waiting.push(format!("listing the pods of node {node}: {e}"));
                Vec::new()
            }
        };
        let uid = |pod: &Pod| pod.metadata.uid.clone().unwrap_or_default();
        if drained.is_none() && waiting.is_empty() {
            drained = Some(pods.iter().map(uid).collect());
        }
        let covered = pods
            .iter()
            .filter(|p| drained.as_ref().is_some_and(|d| d.contains(&uid(p))));
        for pod in covered {
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
                    if proved.elapsed() > PROOF_AGE {
                        if !job_stands(&handle.client, request).await {
                            return Err(Undrained::JobGone);
                        }
                        proved = tokio::time::Instant::now();
                    }
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
        if std::mem::take(&mut round.refused) {
            let earlier = seat.behind();
            if !earlier.is_empty() {
                let refused = waiting
                    .iter()
                    .find(|w| w.contains("PodDisruptionBudget"))
                    .unwrap_or(&waiting[0]);
                return Err(Undrained::GiveWay(format!(
                    "{refused}; node {node} gives way to node {} of this Plan, whose drain \
                     began first: uncordoned until that drain is done",
                    earlier.join(", ")
                )));
            }
        }
        // Budget refusals first: they are what an operator needs to see.
        waiting.sort_by_key(|w| !w.contains("PodDisruptionBudget"));
        let summary = match waiting.len() {
            1 => waiting[0].clone(),
            n => format!("{} (and {} more)", waiting[0], n - 1),
        };
        let elapsed =
            Duration::from_secs(u64::try_from(now.as_second() - since.as_second()).unwrap_or(0));
        let step = timeout_step(
            options,
            node,
            &waiting[0],
            elapsed,
            timed_out,
            round.delete_instead,
        );
        match step {
            TimeoutStep::GoOn => {}
            TimeoutStep::Fail(message) => return Err(Undrained::Failed(message)),
            TimeoutStep::Skip(message) => return Err(Undrained::Skipped(message)),
            TimeoutStep::KeepEvicting(text) => {
                timed_out = true;
                handle
                    .tell(request, true, Reason::DrainTimedOut, text)
                    .await;
            }
            TimeoutStep::DeleteInstead(text) => {
                round.delete_instead = true;
                since = now;
                handle
                    .tell(request, true, Reason::DrainTimedOut, text)
                    .await;
                continue;
            }
        }
        if set(DrainProgress::Running(summary)) {
            handle.wake(request);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// Waits, once the pods are gone, until no volume attached to the node is left but those pods
/// still on it use (see `detach`), up to `wait.timeout` (counted from here, so afresh after a
/// controller restart), then as `wait.on_timeout` says. The node's entry names the volumes.
async fn await_volumes(
    handle: &DrainHandle,
    request: &DrainRequest,
    wait: &VolumeWait,
    set: &impl Fn(DrainProgress) -> bool,
) -> Result<(), Undrained> {
    let node = &request.node;
    let started = tokio::time::Instant::now();
    let mut told = false;
    let mut pause = Duration::from_millis(500);
    loop {
        if !handle.leads().await {
            return Err(Undrained::NotLeading);
        }
        if !job_stands(&handle.client, request).await {
            return Err(Undrained::JobGone);
        }
        let found = match detach::kept_volumes(&handle.client, node).await {
            Ok(kept) => detach::attachments(&handle.client)
                .await
                .map(|all| detach::waiting_for(&all, node, &kept)),
            Err(e) => Err(e),
        };
        let text = match found {
            Ok(volumes) if volumes.is_empty() => return Ok(()),
            Ok(volumes) => {
                let text = detach::waiting_message(node, &volumes);
                if !told {
                    told = true;
                    let message = format!("Drain of node {node}: {text}");
                    handle
                        .tell(request, false, Reason::WaitingForVolumes, message)
                        .await;
                }
                text
            }
            Err(e) => e,
        };
        if started.elapsed() >= wait.timeout {
            let after =
                duration::format(i64::try_from(wait.timeout.as_nanos()).unwrap_or(i64::MAX));
            let message = format!("volumes still attached to node {node} after {after}: {text}");
            return match wait.on_timeout {
                DetachTimeout::Fail => Err(Undrained::Failed(format!(
                    "{message} (drain.volumeDetach.onTimeout: Fail)"
                ))),
                DetachTimeout::Skip => Err(Undrained::Skipped(format!(
                    "{message}; skipping the node (drain.volumeDetach.onTimeout: Skip)"
                ))),
                DetachTimeout::Proceed => {
                    let message = format!(
                        "{message}; the upgrade runs anyway (drain.volumeDetach.onTimeout: Proceed)"
                    );
                    handle
                        .tell(request, true, Reason::VolumesStillAttached, message)
                        .await;
                    Ok(())
                }
            };
        }
        if set(DrainProgress::Running(text)) {
            handle.wake(request);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// What a drain whose pods are not all gone does next, as `drain.timeout` and `onTimeout` say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum TimeoutStep {
    /// Before the timeout (or after one already told with `Retry`): keep evicting.
    GoOn,
    /// The node fails, with this message.
    Fail(String),
    /// The node is given up (`Skip`).
    Skip(String),
    /// Told once (`Retry`); evictions go on until the Job's deadline.
    KeepEvicting(String),
    /// Told (`Delete`); the pods left are deleted instead of evicted, the timeout starting over.
    DeleteInstead(String),
}

/// The step of a drain that has waited `elapsed` for its pods (`waiting` the first it waits
/// for), `timed_out` once told with `Retry`, `deleting` once `Delete` switched to deletions.
fn timeout_step(
    options: &DrainOptions,
    node: &str,
    waiting: &str,
    elapsed: Duration,
    timed_out: bool,
    deleting: bool,
) -> TimeoutStep {
    let Some(timeout) = options.timeout else {
        return TimeoutStep::GoOn;
    };
    if timed_out || elapsed.as_secs() < timeout.as_secs() {
        return TimeoutStep::GoOn;
    }
    let after = duration::format(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX));
    let message = format!("drain of node {node} timed out after {after}: {waiting}");
    match options.on_timeout {
        OnTimeout::Fail => TimeoutStep::Fail(message),
        OnTimeout::Skip if deleting => TimeoutStep::Fail(message),
        OnTimeout::Skip => {
            TimeoutStep::Skip(format!("{message}; skipping the node (onTimeout: Skip)"))
        }
        OnTimeout::Retry => TimeoutStep::KeepEvicting(format!(
            "{message}; evicting on until the Job's deadline (onTimeout: Retry)"
        )),
        OnTimeout::Delete if deleting => TimeoutStep::Fail(format!(
            "{message} (the pods left were deleted at the first timeout)"
        )),
        OnTimeout::Delete => TimeoutStep::DeleteInstead(format!(
            "{message}; deleting the pods left instead of evicting them (onTimeout: Delete)"
        )),
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
    /// A PodDisruptionBudget refused an eviction in this round.
    refused: bool,
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
            refused: false,
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
        if !handle.may_write() {
            // The next round reads the Lease again first.
            return Some(FENCED.to_owned());
        }
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
                self.refused = true;
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
pub(crate) mod tests {
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

    /// What a drain does at its timeout, for each `onTimeout`, decided without the API.
    #[test]
    fn the_timeout_step_follows_on_timeout() {
        let options = |on_timeout: &str| {
            DrainOptions::from_spec(
                &serde_json::from_value(json!({"timeout": "5m", "onTimeout": on_timeout})).unwrap(),
            )
        };
        let step = |on: &str, secs: u64, timed_out: bool, deleting: bool| {
            let elapsed = Duration::from_secs(secs);
            timeout_step(
                &options(on),
                "n",
                "pod web/a blocked",
                elapsed,
                timed_out,
                deleting,
            )
        };
        let timed_out = "drain of node n timed out after 5m0s: pod web/a blocked";
        for on in ["Fail", "Retry", "Delete", "Skip"] {
            assert_eq!(
                step(on, 299, false, false),
                TimeoutStep::GoOn,
                "{on} before"
            );
        }
        assert_eq!(
            step("Fail", 300, false, false),
            TimeoutStep::Fail(timed_out.into())
        );
        assert!(
            matches!(step("Skip", 300, false, false), TimeoutStep::Skip(m) if m.ends_with("(onTimeout: Skip)"))
        );
        assert!(matches!(
            step("Retry", 300, false, false),
            TimeoutStep::KeepEvicting(_)
        ));
        assert_eq!(
            step("Retry", 900, true, false),
            TimeoutStep::GoOn,
            "told once"
        );
        assert!(matches!(
            step("Delete", 300, false, false),
            TimeoutStep::DeleteInstead(_)
        ));
        assert!(
            matches!(step("Delete", 300, false, true), TimeoutStep::Fail(m) if m.contains("deleted at the first timeout"))
        );
        // Without a timeout the drain waits (the Job's deadline bounds it).
        let none = DrainOptions::from_spec(&serde_json::from_value(json!({})).unwrap());
        let forever = Duration::from_secs(86_400);
        assert_eq!(
            timeout_step(&none, "n", "x", forever, false, false),
            TimeoutStep::GoOn
        );
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

    /// A drain task against a scripted API server; its events go to a server that is gone.
    fn task(
        options: serde_json::Value,
    ) -> (
        crate::controller::testing::ApiServer,
        Arc<Mutex<DrainProgress>>,
        tokio::task::JoinHandle<()>,
    ) {
        let (api, progress, running, _) = task_fenced(options, false);
        (api, progress, running)
    }

    /// A drain task under test: the API server it talks to, its progress, the task, and the
    /// Plans it wakes.
    type Fenced = (
        crate::controller::testing::ApiServer,
        Arc<Mutex<DrainProgress>>,
        tokio::task::JoinHandle<()>,
        tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Plan>>,
    );

    /// A drain handle talking to a scripted API server (for a replica elected as `me` when
    /// `fenced`), with the Plans its drains wake.
    pub(crate) fn test_handle(
        fenced: bool,
    ) -> (
        DrainHandle,
        crate::controller::testing::ApiServer,
        tokio::sync::mpsc::UnboundedReceiver<ObjectRef<Plan>>,
    ) {
        use crate::controller::events::{Events, Reporter};
        let (client, api) = crate::controller::testing::client();
        let fence = fenced
            .then(|| crate::leader::Fence::new(client.clone(), "system-upgrade", "suc", "me"));
        let (events_client, _gone) = crate::controller::testing::client();
        let (nodes, _) = kube::runtime::reflector::store();
        let reporter = Reporter::new("suc", Some("server-1"));
        let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
        let handle = DrainHandle {
            client,
            fence,
            claimant: cordon::Claimant::new("system-upgrade", "suc"),
            events: Arc::new(Events::new(events_client, reporter, nodes)),
            metrics: Metrics::new(),
            wake: Wake::new(wake),
            board: Arc::default(),
        };
        (handle, api, woken)
    }

    /// As [`task`], for a replica elected as `me` when `fenced`; with the Plans it wakes.
    fn task_fenced(options: serde_json::Value, fenced: bool) -> Fenced {
        task_with(options, fenced, Arc::default())
    }

    /// As [`task_fenced`], with the board of drains under way it shares with others.
    fn task_with(options: serde_json::Value, fenced: bool, board: Arc<Board>) -> Fenced {
        let (mut handle, api, woken) = test_handle(fenced);
        handle.board = board;
        let request = DrainRequest {
            plan: PlanRef {
                name: "p".into(),
                namespace: "system-upgrade".into(),
                uid: "plan-uid".into(),
            },
            node: "n".into(),
            pod: "upgrade-pod".into(),
            job: "job".into(),
            job_uid: "job-uid".into(),
            options: Some(DrainOptions::from_spec(
                &serde_json::from_value(options).unwrap(),
            )),
        };
        let progress = Arc::new(Mutex::new(DrainProgress::Running("starting".into())));
        let running = tokio::spawn(run(handle, request, progress.clone()));
        (api, progress, running, woken)
    }

    fn listed(pods: &[(&str, bool)]) -> serde_json::Value {
        let items: Vec<serde_json::Value> = pods
            .iter()
            .map(|(name, terminating)| {
                let mut p = serde_json::to_value(pod(
                    json!({"metadata": {"name": name, "uid": format!("uid-{name}")}}),
                ))
                .unwrap();
                if *terminating {
                    p["metadata"]["deletionTimestamp"] = json!("2026-11-26T12:00:00Z");
                }
                p
            })
            .collect();
        json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})
    }

    const UPGRADE_POD: &str = "/api/v1/namespaces/system-upgrade/pods/upgrade-pod";
    const JOB: &str = "/apis/batch/v1/namespaces/system-upgrade/jobs/job";

    /// The drain's Job as the API server answers: `uid`'s Job.
    async fn job_stands(api: &mut crate::controller::testing::ApiServer, uid: &str) {
        let job = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "job", "namespace": "system-upgrade", "uid": uid}});
        api.expect("GET", JOB, 200, job).await;
    }

    /// One look of the volume wait: the Job stands, the pods left on the node (none has a
    /// claim), and the cluster's VolumeAttachments (node, volume).
    async fn volumes(
        api: &mut crate::controller::testing::ApiServer,
        pods: &[(&str, bool)],
        attached: &[(&str, &str)],
    ) {
        job_stands(api, "job-uid").await;
        api.expect("GET", "/api/v1/pods?", 200, listed(pods)).await;
        let items: Vec<serde_json::Value> = attached
            .iter()
            .map(|(node, pv)| {
                json!({"metadata": {"name": format!("csi-{pv}")}, "spec": {"attacher": "rbd.csi.ceph.com",
                    "nodeName": node, "source": {"persistentVolumeName": pv}}})
            })
            .collect();
        api.expect(
            "GET",
            "/apis/storage.k8s.io/v1/volumeattachments",
            200,
            json!({"kind": "VolumeAttachmentList", "apiVersion": "storage.k8s.io/v1",
                "metadata": {}, "items": items}),
        )
        .await;
    }

    /// The API server's refusal of an eviction that budget `web` does not allow.
    async fn budget_refuses(
        api: &mut crate::controller::testing::ApiServer,
        pod: &str,
    ) -> crate::controller::testing::Seen {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 429,
            "reason": "TooManyRequests", "message": "Cannot evict pod as it would violate the pod's disruption budget.",
            "details": {"causes": [{"reason": "DisruptionBudget",
                "message": "The disruption budget web needs 1 healthy pods and has 1 currently"}]}});
        let path = format!("/api/v1/namespaces/ns/pods/{pod}/eviction");
        api.expect("POST", &path, 429, status).await
    }

    /// While another drain of its Plan holds its node, a drain whose eviction a budget would
    /// refuse (a server-side dry run) does not cordon its node, and says which budget holds it;
    /// it cordons once that drain is over.
    #[tokio::test(start_paused = true)]
    async fn a_drain_waits_uncordoned_while_a_budget_would_refuse_it_during_another_drain() {
        let board = Arc::new(Board::default());
        let other = board.take("plan-uid", "other");
        let (mut api, progress, running, _) = task_with(json!({}), false, board.clone());
        job_stands(&mut api, "job-uid").await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[("web-1", false)]))
            .await;
        let dry = budget_refuses(&mut api, "web-1").await;
        assert!(dry.uri.contains("dryRun=All"), "{}", dry.uri);
        job_stands(&mut api, "job-uid").await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[("web-1", false)]))
            .await;
        budget_refuses(&mut api, "web-1").await;
        assert_eq!(
            *progress.lock().unwrap(),
            DrainProgress::Running(
                "not cordoning yet: pod ns/web-1 blocked by PodDisruptionBudget ns/web while \
                 node other of this Plan is drained"
                    .into()
            )
        );
        // The other drain is over: no dry run, the node is cordoned and drained.
        drop(other);
        cordon_and_start(&mut api, None).await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[])).await;
        running.abort();
    }

    /// Two drains of a Plan, each node cordoned: a budget refuses the later one's eviction, so it
    /// gives way (uncordons its node) and cordons again, with a timeout of its own, only once the
    /// earlier drain is over; the earlier one never gives way.
    #[tokio::test(start_paused = true)]
    async fn the_later_of_two_drains_refused_by_a_budget_gives_way_to_the_earlier() {
        let board = Arc::new(Board::default());
        let earlier = board.take("plan-uid", "other");
        tokio::time::advance(Duration::from_secs(1)).await;
        let (mut api, progress, running, _) = task_with(json!({}), false, board.clone());
        job_stands(&mut api, "job-uid").await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[("web-1", false)]))
            .await;
        // The dry run passes: the node is cordoned.
        api.expect(
            "POST",
            "/api/v1/namespaces/ns/pods/web-1/eviction",
            201,
            json!({}),
        )
        .await;
        let node = json!({"metadata": {"name": "n", "resourceVersion": "1"}, "spec": {}});
        api.expect("GET", "/api/v1/nodes/n", 200, node.clone())
            .await;
        api.expect("PATCH", "/api/v1/nodes/n", 200, node).await;
        let upgrade_pod = json!({"metadata": {"name": "upgrade-pod", "annotations": {
            "upgrade.cattle.io/drain-started": "2026-11-26T11:00:00Z"}}});
        api.expect("GET", UPGRADE_POD, 200, upgrade_pod).await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[("web-1", false)]))
            .await;
        let evicted = budget_refuses(&mut api, "web-1").await;
        assert!(!evicted.uri.contains("dryRun"), "{}", evicted.uri);
        // It gives way: this Plan's claim goes and the node is uncordoned.
        let claimed = json!({"metadata": {"name": "n", "resourceVersion": "2", "annotations": {
            "cordoned.upgrade.cattle.io/p": "system-upgrade/suc 2026-11-26T11:00:00Z"}}, "spec": {"unschedulable": true}});
        api.expect("GET", "/api/v1/nodes/n", 200, claimed).await;
        let released = api.expect("PATCH", "/api/v1/nodes/n", 200, json!({})).await;
        assert_eq!(
            released.body["spec"]["unschedulable"],
            serde_json::Value::Null
        );
        assert!(matches!(&*progress.lock().unwrap(),
            DrainProgress::Running(m) if m.contains("gives way to node other of this Plan")));
        // It waits for the earlier drain, asking nothing meanwhile.
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(earlier);
        job_stands(&mut api, "job-uid").await;
        // Alone now: no dry run; cordoned again, with a drain start of its own.
        cordon_fresh(&mut api).await;
        running.abort();
    }

    /// A drain cordoning again after it gave way: its node claimed and a new drain start
    /// recorded on the pod, whatever start it had.
    async fn cordon_fresh(api: &mut crate::controller::testing::ApiServer) {
        let node = json!({"metadata": {"name": "n", "resourceVersion": "3"}, "spec": {}});
        api.expect("GET", "/api/v1/nodes/n", 200, node.clone())
            .await;
        api.expect("PATCH", "/api/v1/nodes/n", 200, node).await;
        let upgrade_pod = json!({"metadata": {"name": "upgrade-pod", "annotations": {
            "upgrade.cattle.io/drain-started": "2026-11-26T11:00:00Z"}}});
        api.expect("GET", UPGRADE_POD, 200, upgrade_pod.clone())
            .await;
        let recorded = api.expect("PATCH", UPGRADE_POD, 200, upgrade_pod).await;
        assert_ne!(
            recorded.body["metadata"]["annotations"]["upgrade.cattle.io/drain-started"],
            "2026-11-26T11:00:00Z"
        );
    }

    /// Once its pods are gone, a drain waits for the node's volumes to detach before it lets the
    /// upgrade run, and says which volumes it waits for.
    #[tokio::test(start_paused = true)]
    async fn a_drain_opens_the_gate_only_once_the_volumes_are_detached() {
        let (mut api, progress, running) = task(json!({}));
        cordon_and_start(&mut api, None).await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[])).await;
        volumes(&mut api, &[], &[("n", "pv-db"), ("other", "pv-x")]).await;
        volumes(&mut api, &[], &[("n", "pv-db")]).await;
        assert_eq!(
            *progress.lock().unwrap(),
            DrainProgress::Running(
                "waiting for volume pv-db (rbd.csi.ceph.com) to detach from node n".into()
            )
        );
        volumes(&mut api, &[], &[("other", "pv-x")]).await;
        let opened = api.expect("PATCH", UPGRADE_POD, 200, json!({})).await;
        assert!(opened.body["metadata"]["annotations"]["upgrade.cattle.io/drained"].is_string());
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .unwrap()
            .unwrap();
        api.done().await;
    }

    /// Volumes still attached at `volumeDetach.timeout`: the drain fails by default, and the
    /// upgrade runs anyway with `onTimeout: Proceed`.
    #[tokio::test(start_paused = true)]
    async fn volumes_left_attached_at_the_timeout_fail_the_drain_or_let_it_proceed() {
        for (policy, gate_opens) in [("Fail", false), ("Proceed", true)] {
            let detach = json!({"volumeDetach": {"timeout": "5s", "onTimeout": policy}});
            let (mut api, progress, running) = task(detach);
            cordon_and_start(&mut api, None).await;
            api.expect("GET", "/api/v1/pods?", 200, listed(&[])).await;
            volumes(&mut api, &[], &[("n", "pv-db")]).await;
            // 0.5 + 1 + 2 + 4 s: past 5 s at the fifth look.
            for _ in 0..4 {
                volumes(&mut api, &[], &[("n", "pv-db")]).await;
            }
            if gate_opens {
                api.expect("PATCH", UPGRADE_POD, 200, json!({})).await;
            }
            tokio::time::timeout(Duration::from_secs(5), running)
                .await
                .unwrap()
                .unwrap();
            api.done().await;
            let progress = progress.lock().unwrap().clone();
            if gate_opens {
                assert_eq!(progress, DrainProgress::Done("upgrade-pod".into()));
            } else {
                assert!(
                    matches!(&progress, DrainProgress::Failed(m) if m.contains("volumes still attached to node n after 5s: waiting for volume pv-db")),
                    "{progress:?}"
                );
            }
        }
    }

    /// Found by the soak: a Job deleted by hand had its node cordoned 200 ms later by the drain
    /// started before. A drain whose Job is gone, or replaced under its name, touches nothing.
    #[tokio::test]
    async fn a_drain_whose_job_is_gone_touches_nothing() {
        let (mut api, progress, running) = task(json!({}));
        api.refuse("GET", JOB, 404).await;
        running.await.unwrap();
        api.done().await;
        let (mut api, _, running) = task(json!({}));
        job_stands(&mut api, "another-uid").await;
        running.await.unwrap();
        api.done().await;
        assert_eq!(
            *progress.lock().unwrap(),
            DrainProgress::Running("starting".into())
        );
    }

    /// Found by the soak: a leader stopped (SIGSTOP) past the Lease's expiry woke with drains
    /// running and cordoned nodes before it noticed another replica led. Each step that writes
    /// reads the Lease first: a replica that does not hold it writes nothing.
    #[tokio::test]
    async fn a_replica_that_does_not_hold_the_lease_drains_nothing() {
        crate::controller::testing::crypto();
        let lease = |holder: &str| lease(holder, 0);
        let (mut api, progress, running, mut woken) = task_fenced(json!({}), true);
        api.expect("GET", LEASE, 200, lease("other")).await;
        running.await.unwrap();
        // Its Plan is woken: the next pass starts the drain again, or finds the controller gone.
        assert!(woken.try_recv().is_ok(), "the Plan was not woken");
        assert_eq!(
            *progress.lock().unwrap(),
            DrainProgress::Running("starting".into())
        );
        api.done().await;
        // Holding it, the drain goes on to cordon the node.
        let (mut api, _, running, _woken) = task_fenced(json!({}), true);
        api.expect("GET", LEASE, 200, lease("me")).await;
        job_stands(&mut api, "job-uid").await;
        api.expect(
            "GET",
            "/api/v1/nodes/n",
            200,
            json!({"metadata": {"name": "n"}}),
        )
        .await;
        running.abort();
    }

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/system-upgrade/leases/suc";

    /// The Lease as the API server answers, held by `holder`, renewed `ago` seconds ago for 15 s.
    fn lease(holder: &str, ago: i64) -> serde_json::Value {
        let renewed = Timestamp::now() - jiff::SignedDuration::from_secs(ago);
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "suc", "namespace": "system-upgrade"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15,
                "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}})
    }

    /// Found by the long soak: a replica stopped (SIGSTOP) after it read the Lease and before
    /// its cordon cordoned the node 10 ms after it woke, the Lease another's by then. A read of
    /// the Lease proves the hold only until the Lease could expire: a write after that reads the
    /// Lease again instead.
    #[tokio::test]
    async fn a_replica_stopped_between_its_check_and_its_cordon_reads_the_lease_again() {
        crate::controller::testing::crypto();
        let (mut api, progress, running, _woken) = task_fenced(json!({}), true);
        // Renewed 13 s ago for 15 s: held, with a second of proof left after the margin.
        api.expect("GET", LEASE, 200, lease("me", 13)).await;
        job_stands(&mut api, "job-uid").await;
        // The replica is stopped here for longer than that.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        api.expect(
            "GET",
            "/api/v1/nodes/n",
            200,
            json!({"metadata": {"name": "n"}}),
        )
        .await;
        // No PATCH of the node: it reads the Lease again, and another replica holds it now.
        api.expect("GET", LEASE, 200, lease("other", 1)).await;
        running.await.unwrap();
        api.done().await;
        assert!(matches!(
            &*progress.lock().unwrap(),
            DrainProgress::Running(message) if message.contains("not proved")
        ));
    }

    /// The drain's first steps: cordon the node, record the pod's drain start.
    async fn cordon_and_start(
        api: &mut crate::controller::testing::ApiServer,
        started: Option<&str>,
    ) {
        job_stands(api, "job-uid").await;
        let node = json!({"metadata": {"name": "n", "resourceVersion": "1"}, "spec": {}});
        api.expect("GET", "/api/v1/nodes/n", 200, node.clone())
            .await;
        let claim = api.expect("PATCH", "/api/v1/nodes/n", 200, node).await;
        assert_eq!(
            claim.body["metadata"]["annotations"]["cordoned.upgrade.cattle.io/p"]
                .as_str()
                .unwrap()
                .split_once(' ')
                .unwrap()
                .0,
            "system-upgrade/suc"
        );
        let annotations = started.map(|t| json!({"upgrade.cattle.io/drain-started": t}));
        let upgrade_pod = json!({"metadata": {"name": "upgrade-pod", "annotations": annotations}});
        api.expect("GET", UPGRADE_POD, 200, upgrade_pod.clone())
            .await;
        if started.is_none() {
            let recorded = api.expect("PATCH", UPGRADE_POD, 200, upgrade_pod).await;
            assert!(
                recorded.body["metadata"]["annotations"]["upgrade.cattle.io/drain-started"]
                    .is_string()
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_list_is_retried_and_only_the_pods_found_first_are_waited_for() {
        let (mut api, progress, running) = task(json!({}));
        cordon_and_start(&mut api, None).await;
        api.refuse("GET", "/api/v1/pods?", 500).await;
        // Each round after the first proves the Job still stands.
        job_stands(&mut api, "job-uid").await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[("web-1", false)]))
            .await;
        api.expect(
            "POST",
            "/api/v1/namespaces/ns/pods/web-1/eviction",
            201,
            json!({}),
        )
        .await;
        // An operator tolerating every taint arrives: it is not evicted, nor waited for.
        job_stands(&mut api, "job-uid").await;
        api.expect(
            "GET",
            "/api/v1/pods?",
            200,
            listed(&[("web-1", true), ("operator", false)]),
        )
        .await;
        job_stands(&mut api, "job-uid").await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[("operator", false)]))
            .await;
        volumes(&mut api, &[("operator", false)], &[]).await;
        let opened = api.expect("PATCH", UPGRADE_POD, 200, json!({})).await;
        assert!(opened.body["metadata"]["annotations"]["upgrade.cattle.io/drained"].is_string());
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            *progress.lock().unwrap(),
            DrainProgress::Done("upgrade-pod".into())
        );
        api.done().await;
    }

    /// Found by the long soak: a Plan was deleted while its drain waited to retry an eviction
    /// the API server had not answered; the retry evicted the pod 2 s after the Job went and
    /// after the node was returned. Each round after the first proves the Job still stands.
    #[tokio::test(start_paused = true)]
    async fn a_drain_whose_job_goes_between_rounds_evicts_nothing_more() {
        let (mut api, progress, running, mut woken) = task_fenced(json!({}), false);
        cordon_and_start(&mut api, None).await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[("web-1", false)]))
            .await;
        api.refuse("POST", "/api/v1/namespaces/ns/pods/web-1/eviction", 504)
            .await;
        api.refuse("GET", JOB, 404).await;
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .unwrap()
            .unwrap();
        api.done().await;
        assert!(woken.try_recv().is_ok(), "the Plan was not woken");
        assert!(matches!(
            *progress.lock().unwrap(),
            DrainProgress::Running(_)
        ));
    }

    /// Found by the long soak: the Job was deleted by hand while the drain's first round waited
    /// on a slow API server; the eviction went out 3 s after the drain had last seen the Job.
    /// A drain evicts only on a proof at most a second old that its Job stands.
    #[tokio::test(start_paused = true)]
    async fn a_drain_evicts_only_while_it_has_just_seen_its_job() {
        let (mut api, progress, running, _woken) = task_fenced(json!({}), false);
        cordon_and_start(&mut api, None).await;
        // The pod list takes 3 s: the Job was seen standing too long ago to evict on that.
        tokio::time::sleep(Duration::from_secs(3)).await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[("web-1", false)]))
            .await;
        api.refuse("GET", JOB, 404).await;
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .unwrap()
            .unwrap();
        api.done().await;
        assert!(matches!(
            *progress.lock().unwrap(),
            DrainProgress::Running(_)
        ));
        // Seen a moment ago: it evicts at once, without asking again.
        let (mut api, _, running, _woken) = task_fenced(json!({}), false);
        cordon_and_start(&mut api, None).await;
        api.expect("GET", "/api/v1/pods?", 200, listed(&[("web-1", false)]))
            .await;
        api.expect(
            "POST",
            "/api/v1/namespaces/ns/pods/web-1/eviction",
            201,
            json!({}),
        )
        .await;
        running.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_failing_past_the_timeout_fails_as_the_plan_says_and_steps_back_off() {
        let (mut api, progress, running) = task(json!({"timeout": "1m"}));
        // The pod's drain began two minutes ago (a restarted controller resumes it).
        let then = stamp(Timestamp::now() - jiff::SignedDuration::from_secs(120));
        // The node cannot be read at first: the cordon is tried again after a backoff.
        job_stands(&mut api, "job-uid").await;
        api.refuse("GET", "/api/v1/nodes/n", 500).await;
        let first = tokio::time::Instant::now();
        cordon_and_start(&mut api, Some(&then)).await;
        assert!(first.elapsed() >= Duration::from_secs(1), "no backoff");
        api.refuse("GET", "/api/v1/pods?", 503).await;
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .unwrap()
            .unwrap();
        let DrainProgress::Failed(message) = progress.lock().unwrap().clone() else {
            panic!("{:?}", progress.lock().unwrap())
        };
        assert!(
            message.contains("timed out after 1m")
                && message.contains("listing the pods of node n"),
            "{message}"
        );
        api.done().await;
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
