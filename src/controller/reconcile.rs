//! One reconcile of a Plan: observe (caches, channel), decide (pure), then act on the API in a
//! safe order: cleanups, the status with `applying` (guarded by resourceVersion), then the
//! nodes that start. Events are recorded once the status is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};

use crate::api::{LABEL_CONTROLLER, Plan, PlanStatus};
use crate::controller::decide::{
    self, CORDON_CLAIM_PREFIX, Change, Decision, Note, Observed, Resolution, Target,
};
use crate::controller::drain::{DrainOptions, DrainProgress, DrainRequest};
use crate::controller::job::{
    ANNOTATION_ADOPTED, ANNOTATION_TEMPLATE, ANNOTATION_TTL, JobSettings, LABEL_PLAN,
};
use crate::controller::resolve::{ChannelClient, ChannelError};
use crate::controller::status;
use crate::metrics::Metrics;

/// Controller-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub job: JobSettings,
    pub polling_interval: Duration,
}

/// The state of a Plan's channel polling, in memory.
#[derive(Debug, Clone)]
struct Poll {
    channel: String,
    next: Instant,
    failures: u32,
}

/// The watch caches: Plans, this controller's Jobs and their pods, Nodes, Secrets.
pub type Caches = (
    Store<Plan>,
    Store<Job>,
    Store<Node>,
    Store<Secret>,
    Store<Pod>,
);

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub plans: Store<Plan>,
    pub jobs: Store<Job>,
    pub nodes: Store<Node>,
    pub secrets: Store<Secret>,
    /// Pods of this controller's Jobs.
    pub pods: Store<Pod>,
    pub reporter: Reporter,
    pub channel: ChannelClient,
    /// UID of the kube-system Namespace, sent to channels as X-SUC-Cluster-ID.
    pub cluster_id: String,
    pub metrics: Arc<Metrics>,
    polls: Mutex<HashMap<String, Poll>>,
    failures: Mutex<HashMap<String, u32>>,
    /// Drains, by the UID of the Job they are for.
    drains: Mutex<HashMap<String, DrainTask>>,
    /// Asks for a Plan to be reconciled (drains report progress this way).
    wake: tokio::sync::mpsc::UnboundedSender<ObjectRef<Plan>>,
    /// Every cache has been filled once. Until then a Plan could look as if none of its Jobs or
    /// nodes existed, and decisions on that would break the concurrency limit after a restart.
    caches_synced: std::sync::atomic::AtomicBool,
    /// Keys of the one-shot events already recorded (see [`Note::once`]).
    said: Mutex<std::collections::HashSet<String>>,
    /// The Plan CRD in the cluster has no `status.nodes` (the Go controller's CRD): the field is
    /// not written, and the node entries are kept nowhere.
    pub nodes_pruned: std::sync::atomic::AtomicBool,
}

/// How many one-shot event keys are remembered before the memory is cleared (a cleared key can
/// send its event once more).
const SAID_LIMIT: usize = 10_000;

/// A drain running (or finished) in the background.
struct DrainTask {
    plan_uid: String,
    pod: String,
    progress: Arc<Mutex<DrainProgress>>,
    handle: tokio::task::JoinHandle<()>,
}

/// Why a reconcile did not finish; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the Plan changed while it was reconciled; retrying")]
    Conflict,
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// Something outside the controller blocks the Plan; said in an event, retried with backoff.
    #[error("{0}")]
    Blocked(String),
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        settings: Settings,
        stores: Caches,
        reporter: Reporter,
        channel: ChannelClient,
        cluster_id: String,
        metrics: Arc<Metrics>,
        wake: tokio::sync::mpsc::UnboundedSender<ObjectRef<Plan>>,
    ) -> Self {
        let (plans, jobs, nodes, secrets, pods) = stores;
        Self {
            client,
            settings,
            plans,
            jobs,
            nodes,
            secrets,
            pods,
            reporter,
            channel,
            cluster_id,
            metrics,
            polls: Mutex::default(),
            failures: Mutex::default(),
            drains: Mutex::default(),
            wake,
            caches_synced: std::sync::atomic::AtomicBool::new(false),
            said: Mutex::default(),
            nodes_pruned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether an event should be recorded: always, unless it is one-shot and was recorded before.
    pub fn first_time(&self, note: &Note) -> bool {
        let Some(key) = &note.once else {
            return true;
        };
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.len() >= SAID_LIMIT {
            said.clear();
        }
        said.insert(key.clone())
    }

    /// Marks every cache filled and reconciles each Plan, including those whose reconcile was
    /// skipped while waiting for the caches.
    pub fn caches_filled(&self) {
        self.caches_synced
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for plan in self.plans.state() {
            let _ = self.wake.send(ObjectRef::from_obj(plan.as_ref()));
        }
    }

    /// Asks for the Plan to be reconciled soon.
    pub fn wake(&self, namespace: &str, plan: &str) {
        let _ = self.wake.send(ObjectRef::new(plan).within(namespace));
    }

    /// Records an event of a drain on its Plan and its Node.
    pub async fn event(
        &self,
        request: &DrainRequest,
        warning: bool,
        reason: &'static str,
        message: &str,
    ) {
        let plan = ObjectReference {
            api_version: Some("upgrade.cattle.io/v1".into()),
            kind: Some("Plan".into()),
            name: Some(request.plan.clone()),
            namespace: Some(request.namespace.clone()),
            uid: Some(request.plan_uid.clone()),
            ..ObjectReference::default()
        };
        let note = Note {
            target: Target::Plan,
            warning,
            reason,
            message: message.to_owned(),
            once: None,
        };
        send(self, &plan, &note).await;
        if let Some(node) = self.nodes.get(&ObjectRef::new(&request.node)) {
            publish_node(self, &node, &note).await;
        }
    }

    /// The drains of a Plan's Jobs, by Job UID.
    fn drains_of(&self, plan_uid: &str) -> BTreeMap<String, DrainProgress> {
        let drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        drains
            .iter()
            .filter(|(_, task)| task.plan_uid == plan_uid)
            .map(|(uid, task)| {
                (
                    uid.clone(),
                    task.progress
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                )
            })
            .collect()
    }

    /// Starts a drain for a Job's pod unless one is running, or finished for this very pod.
    fn start_drain(self: &Arc<Self>, plan: &Plan, node: &str, pod: &str, job: &str, job_uid: &str) {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(task) = drains.get(job_uid) {
            let done_for_pod = matches!(&*task.progress.lock().unwrap_or_else(|e| e.into_inner()), DrainProgress::Done(p) if p == pod);
            if (!task.handle.is_finished() && task.pod == pod) || done_for_pod {
                return;
            }
            task.handle.abort();
        }
        let request = DrainRequest {
            plan: plan.name_any(),
            plan_uid: plan.metadata.uid.clone().unwrap_or_default(),
            namespace: plan.namespace().unwrap_or_default(),
            node: node.to_owned(),
            pod: pod.to_owned(),
            job: job.to_owned(),
            options: plan.spec.drain.as_ref().map(DrainOptions::from_spec),
        };
        tracing::info!(plan = %request.plan, %node, %pod, drain = request.options.is_some(), "starting cordon/drain");
        let progress = Arc::new(Mutex::new(DrainProgress::Running("starting".into())));
        let handle = tokio::spawn(crate::controller::drain::run(
            self.clone(),
            request.clone(),
            progress.clone(),
        ));
        drains.insert(
            job_uid.to_owned(),
            DrainTask {
                plan_uid: request.plan_uid,
                pod: pod.to_owned(),
                progress,
                handle,
            },
        );
    }

    /// Stops and forgets a Plan's drains, except those of the Jobs in `keep`.
    pub fn forget_drains(&self, plan_uid: &str, keep: &[String]) {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        drains.retain(|uid, task| {
            let keep_it = task.plan_uid != plan_uid || keep.contains(uid);
            if !keep_it {
                task.handle.abort();
            }
            keep_it
        });
    }

    /// Stops every drain: the controller is stopping (shutdown, or another replica now leads and
    /// resumes the drains from the Jobs' annotations).
    pub fn stop_drains(&self) {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        for (_, task) in drains.drain() {
            task.handle.abort();
        }
    }

    /// How long to wait before retrying a Plan whose reconcile failed: 1s doubling to 5 min.
    pub fn backoff(&self, plan: &Plan, error: &ReconcileError) -> Duration {
        let key = plan.metadata.uid.clone().unwrap_or_default();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key).or_insert(0);
        if matches!(error, ReconcileError::Conflict) {
            return Duration::from_millis(200);
        }
        *count = (*count + 1).min(20);
        Duration::from_secs(1u64 << (*count - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, plan: &Plan) {
        let key = plan.metadata.uid.clone().unwrap_or_default();
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

/// Reconciles one Plan.
pub async fn reconcile(plan: Arc<Plan>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if !ctx.caches_synced.load(std::sync::atomic::Ordering::SeqCst) {
        // Context::caches_filled wakes this Plan once the caches are filled.
        tracing::debug!(plan = %plan.name_any(), "caches not filled yet; the Plan waits");
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let result = reconcile_inner(&plan, &ctx).await;
    ctx.metrics
        .observe_reconcile(result.is_ok(), started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&plan);
    }
    result
}

async fn reconcile_inner(plan: &Plan, ctx: &Arc<Context>) -> Result<Action, ReconcileError> {
    let name = plan.name_any();
    let namespace = plan.namespace().unwrap_or_default();
    let resolution = resolve(plan, ctx).await;

    let nodes = ctx.nodes.state();
    let node_refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let jobs = ctx.jobs.state();
    let job_refs: Vec<&Job> = jobs
        .iter()
        .map(|j| j.as_ref())
        .filter(|j| j.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|j| {
            let labels = j.metadata.labels.as_ref();
            labels.and_then(|l| l.get(LABEL_PLAN)) == Some(&name)
                && labels.and_then(|l| l.get(LABEL_CONTROLLER))
                    == Some(&ctx.settings.job.controller_name)
        })
        .collect();
    let secrets = ctx.secrets.state();
    let secret_map: BTreeMap<String, &Secret> = secrets
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .map(|s| (s.name_any(), s.as_ref()))
        .collect();
    let pods = ctx.pods.state();
    let pod_refs: Vec<&Pod> = pods
        .iter()
        .map(|p| p.as_ref())
        .filter(|p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
        .filter(|p| p.metadata.labels.as_ref().and_then(|l| l.get(LABEL_PLAN)) == Some(&name))
        .collect();
    let plan_uid = plan.metadata.uid.clone().unwrap_or_default();
    // Drains of Jobs that finished, failed, were suspended or deleted stop.
    ctx.forget_drains(&plan_uid, &decide::drainable_jobs(&job_refs));
    let drains = ctx.drains_of(&plan_uid);
    let decision = decide::decide(&Observed {
        plan,
        nodes: &node_refs,
        jobs: &job_refs,
        secrets: &secret_map,
        now: jiff::Timestamp::now(),
        resolution,
        settings: &ctx.settings.job,
        pods: &pod_refs,
        drains: &drains,
    });
    tracing::debug!(plan = %name, before = decision.before.len(), after = decision.after.len(), requeue = ?decision.requeue, "decided");

    for change in &decision.before {
        apply(ctx, plan, change).await?;
    }
    write_status(ctx, plan, &decision).await?;
    for change in &decision.after {
        apply(ctx, plan, change).await?;
    }
    for note in &decision.notes {
        if ctx.first_time(note) {
            publish(ctx, plan, note).await;
        }
    }
    Ok(Action::requeue(decision.requeue))
}

/// Resolves the Plan's version; the channel is polled at most once per interval, and after a
/// failure again with backoff (5 s doubling, at most the interval).
async fn resolve(plan: &Plan, ctx: &Context) -> Resolution {
    let version = plan.spec.version.as_deref().filter(|v| !v.is_empty());
    let channel = plan.spec.channel.as_deref().filter(|c| !c.is_empty());
    // Resolution does not wait for the other rules (as in the Go controller): only starting
    // nodes needs a valid Plan.
    if let Some(version) = version {
        return Resolution::Version(version.to_owned());
    }
    let Some(channel) = channel else {
        return Resolution::Missing;
    };
    let key = plan.metadata.uid.clone().unwrap_or_default();
    let status = plan.status.clone().unwrap_or_default();
    // A stored version that is not a tag (written by an older controller) is not sent back as
    // a header, where it could make every poll fail.
    let latest = status
        .latest_version
        .clone()
        .filter(|v| crate::syntax::image::is_tag(v))
        .unwrap_or_default();
    let resolved = status::is(
        status.conditions.as_deref().unwrap_or_default(),
        status::LATEST_RESOLVED,
        "True",
    );
    let now = Instant::now();
    let previous = ctx
        .polls
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .cloned();
    if let Some(poll) = &previous
        && poll.channel == channel
        && now < poll.next
        && (resolved || poll.failures > 0)
    {
        return Resolution::ChannelNotDue(poll.next - now);
    }
    let result = ctx
        .channel
        .resolve(channel, &latest, &ctx.cluster_id)
        .await
        .and_then(|version| {
            // An answer that cannot be a tag (say `v1.2.3%0A` in a Location) is a failed poll:
            // the stored version stays, and the next good answer replaces it.
            match crate::validation::resolved_version_problem(&plan.spec, &version) {
                None => Ok(version),
                Some(problem) => Err(ChannelError(format!(
                    "the channel answered a version that cannot be used: {problem}"
                ))),
            }
        });
    let mut polls = ctx.polls.lock().unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(version) => {
            let interval = ctx.settings.polling_interval;
            polls.insert(
                key,
                Poll {
                    channel: channel.to_owned(),
                    next: now + interval,
                    failures: 0,
                },
            );
            tracing::info!(plan = %plan.name_any(), %channel, %version, "polled the channel");
            Resolution::Channel(version)
        }
        Err(error) => {
            let failures = previous
                .filter(|p| p.channel == channel)
                .map_or(0, |p| p.failures)
                + 1;
            let retry = Duration::from_secs(5u64 << (failures - 1).min(10))
                .min(ctx.settings.polling_interval);
            polls.insert(
                key,
                Poll {
                    channel: channel.to_owned(),
                    next: now + retry,
                    failures,
                },
            );
            tracing::warn!(plan = %plan.name_any(), %channel, %error, ?retry, "channel poll failed");
            Resolution::ChannelFailed {
                error: error.0,
                retry,
            }
        }
    }
}

/// Writes the status when it changed, only if the Plan was not changed meanwhile.
async fn write_status(
    ctx: &Context,
    plan: &Plan,
    decision: &Decision,
) -> Result<(), ReconcileError> {
    let wanted = &decision.status;
    // While the CRD prunes status.nodes, the stored status never has them: compare without, so
    // an unchanged status is not written again and again.
    let pruned = ctx.nodes_pruned.load(std::sync::atomic::Ordering::Relaxed);
    let unchanged = match plan.status.as_ref() {
        Some(stored) if pruned => {
            *stored
                == PlanStatus {
                    nodes: stored.nodes.clone(),
                    ..wanted.clone()
                }
        }
        stored => stored == Some(wanted),
    };
    if unchanged {
        return Ok(());
    }
    let mut status = serde_json::to_value(wanted).unwrap_or_default();
    if let Some(fields) = status.as_object_mut() {
        // A merge patch removes what is set to null.
        for key in [
            "conditions",
            "latestVersion",
            "latestHash",
            "applying",
            "nodes",
        ] {
            fields.entry(key).or_insert(serde_json::Value::Null);
        }
    }
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": plan.resource_version()},
        "status": status,
    });
    let api: Api<Plan> = Api::namespaced(ctx.client.clone(), &plan.namespace().unwrap_or_default());
    match api
        .patch_status(
            &plan.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(stored) => {
            if wanted.nodes.is_some() {
                let kept = stored.status.as_ref().is_some_and(|s| s.nodes.is_some());
                if !kept {
                    crd_lacks_nodes(ctx);
                } else if ctx
                    .nodes_pruned
                    .swap(false, std::sync::atomic::Ordering::Relaxed)
                {
                    tracing::info!("the Plan CRD keeps status.nodes again");
                }
            }
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Err(ReconcileError::Conflict),
        Err(e) => Err(e.into()),
    }
}

/// The API server pruned `status.nodes`: the Plan CRD in the cluster is not this controller's.
/// Said once; the controller goes on without the per-node status.
pub fn crd_lacks_nodes(ctx: &Context) {
    if !ctx
        .nodes_pruned
        .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::error!(
            "the Plan CRD in the cluster has no status.nodes (it is the Go controller's, which \
             rewrites it whenever it starts): per-node progress is not shown and a failed node is \
             retried once its Job expires; apply this controller's CRD (kubectl apply -f \
             deploy/crd.yaml, or kubectl apply -k deploy/) and keep the Go controller stopped"
        );
    }
}

async fn apply(ctx: &Arc<Context>, plan: &Plan, change: &Change) -> Result<(), ReconcileError> {
    let namespace = plan.namespace().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
    match change {
        Change::DeleteJob { name, why } => {
            tracing::info!(plan = %plan.name_any(), job = %name, %why, "deleting Job");
            match jobs.delete(name, &DeleteParams::background()).await {
                Ok(_) => ctx.metrics.job_changed("deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Change::CreateJob(job) => {
            let name = job.name_any();
            match jobs.create(&PostParams::default(), job).await {
                Ok(_) => {
                    tracing::info!(plan = %plan.name_any(), job = %name, "created Job");
                    ctx.metrics.job_changed("created");
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return foreign_job(ctx, plan, &jobs, &name).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Change::AdoptJob { name, template } => {
            tracing::info!(plan = %plan.name_any(), job = %name, "adopting a Job of the Go controller");
            let patch = serde_json::json!({"metadata": {"annotations": {
                ANNOTATION_TEMPLATE: template,
                ANNOTATION_ADOPTED: decide::stamp(jiff::Timestamp::now()),
            }}});
            patch_job(&jobs, name, &patch).await?;
        }
        Change::UpdateJob { name, fields } => {
            tracing::info!(plan = %plan.name_any(), job = %name, ?fields, "updating the Job's settings");
            let mut patch = serde_json::json!({"spec": {}});
            if let Some(deadline) = fields.active_deadline_seconds {
                patch["spec"]["activeDeadlineSeconds"] = serde_json::json!(deadline);
            }
            if let Some(limit) = fields.backoff_limit {
                patch["spec"]["backoffLimit"] = serde_json::json!(limit);
            }
            if let Some(ttl) = fields.ttl_seconds_after_finished {
                patch["spec"]["ttlSecondsAfterFinished"] = serde_json::json!(ttl);
                patch["metadata"] =
                    serde_json::json!({"annotations": {ANNOTATION_TTL: ttl.to_string()}});
            }
            patch_job(&jobs, name, &patch).await?;
        }
        Change::AdoptCordon { node } => adopt_cordon(ctx, &plan.name_any(), node).await?,
        Change::LabelNode { node, labels } => {
            let nodes: Api<Node> = Api::all(ctx.client.clone());
            let patch = serde_json::json!({"metadata": {"labels": labels}});
            match nodes
                .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::info!(plan = %plan.name_any(), %node, "labelled node done");
                    ctx.metrics.node_upgraded();
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Change::Drain {
            node,
            pod,
            job,
            job_uid,
        } => ctx.start_drain(plan, node, pod, job, job_uid),
        Change::FailDrain { job, message } => {
            // Suspending stops the pod (waiting in its gate), so the upgrade never starts.
            let patch = serde_json::json!({
                "metadata": {"annotations": {crate::controller::job::ANNOTATION_DRAIN_FAILED: message}},
                "spec": {"suspend": true},
            });
            patch_job(&jobs, job, &patch).await?;
        }
        Change::Release { node } => {
            cordon(ctx, &plan.name_any(), node, false).await?;
        }
    }
    Ok(())
}

/// A merge patch of a Job; a Job already gone needs none.
async fn patch_job(
    jobs: &Api<Job>,
    name: &str,
    patch: &serde_json::Value,
) -> Result<(), ReconcileError> {
    match jobs
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// A Job of the wanted name already exists. Ours (a replaced one still going away, or one the
/// cache has not shown yet) is waited for; one of another controller blocks the node, which is
/// said in an event and the reconcile fails until it is gone.
async fn foreign_job(
    ctx: &Context,
    plan: &Plan,
    jobs: &Api<Job>,
    name: &str,
) -> Result<(), ReconcileError> {
    let existing = jobs.get_opt(name).await?;
    let owner = existing
        .as_ref()
        .and_then(|j| j.metadata.labels.as_ref())
        .and_then(|l| l.get(LABEL_CONTROLLER))
        .cloned();
    if existing.is_none() || owner.as_deref() == Some(ctx.settings.job.controller_name.as_str()) {
        return Ok(());
    }
    let message = format!(
        "Job {}/{name} already exists and belongs to {}; delete it or give it another name so \
         this Plan can run its node",
        plan.namespace().unwrap_or_default(),
        match &owner {
            Some(owner) => format!("controller {owner:?}"),
            None => "no upgrade controller".to_owned(),
        }
    );
    let note = Note {
        target: Target::Plan,
        warning: true,
        reason: "JobConflict",
        message: message.clone(),
        once: Some(format!("JobConflict/{name}")),
    };
    if ctx.first_time(&note) {
        publish(ctx, plan, &note).await;
    }
    Err(ReconcileError::Blocked(message))
}

/// Records the cordon of a node as this Plan's claim without changing the node's
/// schedulability: only when the node is cordoned and nobody claims it (see `decide`).
async fn adopt_cordon(ctx: &Context, plan: &str, node: &str) -> Result<(), ReconcileError> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let Some(current) = nodes.get_opt(node).await? else {
        return Ok(());
    };
    let unschedulable = current.spec.as_ref().and_then(|s| s.unschedulable) == Some(true);
    let claimed = current
        .metadata
        .annotations
        .iter()
        .flatten()
        .any(|(k, _)| k.starts_with(CORDON_CLAIM_PREFIX));
    if !unschedulable || claimed {
        return Ok(());
    }
    let key = format!("{CORDON_CLAIM_PREFIX}{plan}");
    let patch = serde_json::json!({"metadata": {
        "resourceVersion": current.resource_version(),
        "annotations": {&key: decide::stamp(jiff::Timestamp::now())},
    }});
    match nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(%plan, %node, "adopted the cordon of a Go controller's Job");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.code == 409 => Err(ReconcileError::Conflict),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Cordons a node for a Plan (recording the claim), or drops the Plan's claim and uncordons the
/// node when no claim is left. A node cordoned by someone else is never claimed, so never
/// uncordoned by us. Read-modify-write with the node's resourceVersion, so Plans acting on the
/// same node at once cannot lose each other's claims. The claim's value is when it was made.
pub async fn cordon(
    ctx: &Context,
    plan: &str,
    node: &str,
    claim: bool,
) -> Result<(), ReconcileError> {
    let nodes: Api<Node> = Api::all(ctx.client.clone());
    let key = format!("{CORDON_CLAIM_PREFIX}{plan}");
    for _ in 0..5 {
        let Some(current) = nodes.get_opt(node).await? else {
            return Ok(());
        };
        let annotations = current.metadata.annotations.clone().unwrap_or_default();
        let claims: Vec<&String> = annotations
            .keys()
            .filter(|k| k.starts_with(CORDON_CLAIM_PREFIX))
            .collect();
        let unschedulable = current
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        let patch = if claim {
            if annotations.contains_key(&key) {
                return Ok(());
            }
            if unschedulable && claims.is_empty() {
                return Ok(()); // cordoned by someone else: left to them
            }
            serde_json::json!({
                "metadata": {"resourceVersion": current.resource_version(), "annotations": {&key: decide::stamp(jiff::Timestamp::now())}},
                "spec": {"unschedulable": true},
            })
        } else {
            if !annotations.contains_key(&key) {
                return Ok(());
            }
            let mut patch = serde_json::json!({
                "metadata": {"resourceVersion": current.resource_version(), "annotations": {&key: null}},
            });
            if claims.len() == 1 {
                patch["spec"] = serde_json::json!({"unschedulable": null});
            }
            patch
        };
        match nodes
            .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                let (reason, message) = if claim {
                    ("Cordoned", format!("Cordoned for Plan {plan}"))
                } else if claims.len() == 1 {
                    (
                        "Uncordoned",
                        format!("Uncordoned: Plan {plan} released the node"),
                    )
                } else {
                    (
                        "CordonReleased",
                        format!("Plan {plan} released the node; other Plans keep it cordoned"),
                    )
                };
                tracing::info!(%plan, %node, reason, "cordon");
                let note = Note {
                    target: Target::Node(node.to_owned()),
                    warning: false,
                    reason,
                    message,
                    once: None,
                };
                publish_node(ctx, &current, &note).await;
                return Ok(());
            }
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ReconcileError::Conflict)
}

async fn publish(ctx: &Context, plan: &Plan, note: &Note) {
    match &note.target {
        Target::Plan => {
            let reference = plan.object_ref(&());
            send(ctx, &reference, note).await;
        }
        Target::Node(name) => {
            if let Some(node) = ctx
                .nodes
                .get(&kube::runtime::reflector::ObjectRef::new(name))
            {
                publish_node(ctx, &node, note).await;
            }
        }
    }
}

async fn publish_node(ctx: &Context, node: &Node, note: &Note) {
    let reference = ObjectReference {
        namespace: None,
        ..node.object_ref(&())
    };
    send(ctx, &reference, note).await;
}

/// Records an event (events.k8s.io/v1). Each transition is its own event: kube's recorder folds
/// events of one reason into a series that keeps the first message, which would hide, say, the
/// version a Plan resolved to after a bump.
async fn send(ctx: &Context, reference: &ObjectReference, note: &Note) {
    record(&ctx.client, &ctx.reporter, reference, note).await;
}

/// Records an event about the node the controller runs on (`Starting`, `Started`,
/// `StartFailed`, as the Go controller does); nothing without a node name.
pub async fn controller_event(
    client: &Client,
    reporter: &Reporter,
    warning: bool,
    reason: &'static str,
    message: String,
) {
    let Some(node) = reporter.instance.clone() else {
        return;
    };
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Node".into()),
        name: Some(node),
        ..ObjectReference::default()
    };
    let note = Note {
        target: Target::Plan,
        warning,
        reason,
        message,
        once: None,
    };
    record(client, reporter, &reference, &note).await;
}

/// Records an event about `reference`.
async fn record(client: &Client, reporter: &Reporter, reference: &ObjectReference, note: &Note) {
    let now = jiff::Timestamp::now();
    let namespace = reference
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned());
    // Event names are DNS subdomains: the object's name (cut to leave room) and a time.
    let object: String = reference
        .name
        .clone()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let event = Event {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{object}.{:x}", now.as_nanosecond())),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(if note.warning { "Warning" } else { "Normal" }.to_owned()),
        reason: Some(note.reason.to_owned()),
        action: Some(note.reason.to_owned()),
        note: Some(truncate(&note.message, 1000)),
        regarding: Some(reference.clone()),
        reporting_controller: Some(format!("upgrade.cattle.io/{}", reporter.controller)),
        reporting_instance: Some(
            reporter
                .instance
                .clone()
                .unwrap_or_else(|| reporter.controller.clone()),
        ),
        ..Event::default()
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &namespace);
    if let Err(e) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(error = %e, reason = note.reason, "could not record an event");
    }
}

/// Who records events.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub controller: String,
    /// The node the controller runs on (or its host name).
    pub instance: Option<String>,
}

impl Reporter {
    pub fn new(controller: &str, node_name: Option<&str>) -> Self {
        Reporter {
            controller: controller.to_owned(),
            instance: node_name
                .map(str::to_owned)
                .or_else(|| std::env::var("HOSTNAME").ok()),
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}
