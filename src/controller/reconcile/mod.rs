//! One reconcile of a Plan: observe (caches, channel, drains), decide (pure), then act on the
//! API in a safe order: cleanups, the status with `applying` (guarded by resourceVersion), then
//! the nodes that start. Events are recorded once the status is written.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};

use crate::api::{
    ANNOTATION_DRAIN_FAILED, ANNOTATION_TEMPLATE, ANNOTATION_TTL, FINALIZER_AFTER_HOOK,
    LABEL_CONTROLLER, LABEL_PLAN, Plan, Reason,
};
use crate::controller::cordon::{self, Claimant, CordonError};
use crate::controller::crd;
use crate::controller::decide::{
    self, Change, Decision, JobFields, Note, Observed, Resolution, Target,
};
use crate::controller::drain::Wake;
use crate::controller::drains::Drains;
use crate::controller::events::Events;
use crate::controller::expect::{Expectations, Shown};
use crate::controller::job::JobSettings;
use crate::controller::objects::ObjectGates;
use crate::controller::peers::Peers;
use crate::controller::poll::Channels;
use crate::controller::query::Queries;
use crate::controller::refusals::{self, Refusals};
use crate::controller::status;
use crate::metrics::Metrics;
use crate::server::Readiness;

mod act;

#[cfg(test)]
use act::*;
pub use act::{act, job_fields_patch, release};

/// Controller-wide settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub job: JobSettings,
    pub polling_interval: Duration,
}

impl Settings {
    /// This controller instance, as its cordon claims name it.
    pub fn claimant(&self) -> Claimant {
        Claimant::new(&self.namespace, &self.job.controller_name)
    }
}

/// The watch caches: Plans, this controller's Jobs and their pods, Nodes, Secrets.
#[derive(Clone)]
pub struct Caches {
    pub plans: Store<Plan>,
    pub jobs: Store<Job>,
    pub nodes: Store<Node>,
    pub secrets: Store<Secret>,
    /// Pods of this controller's Jobs.
    pub pods: Store<Pod>,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub caches: Caches,
    pub events: Arc<Events>,
    pub drains: Drains,
    pub channels: Channels,
    /// The Prometheus health gates' answers.
    pub queries: Queries,
    /// The object health gates' answers.
    pub objects: ObjectGates,
    pub metrics: Arc<Metrics>,
    /// Asks for a Plan to be reconciled.
    pub wake: Wake,
    /// Every cache has been filled once. Until then a Plan could look as if none of its Jobs or
    /// nodes existed, and decisions on that would break the concurrency limit after a restart.
    caches_synced: AtomicBool,
    /// The fields of this controller's Plan CRD that the CRD in the cluster lacks (the Go
    /// controller's has no `status.nodes`): the API server drops them.
    pub crd: crd::Gaps,
    /// Where `/readyz` tells what the CRD lacks.
    readiness: Arc<Readiness>,
    backoff: Backoff,
    /// What each Plan's last pass wrote that the caches may not show yet.
    pub expect: Expectations,
    /// Jobs the API server refused, and Jobs whose pod cannot be created.
    pub refusals: Refusals,
    /// The other Plans, for the order between Plans.
    pub peers: Peers,
    /// With leader election: proves, before each write of a pass, that this replica still
    /// holds the Lease (a process stopped in the middle of a pass must not write on waking).
    pub fence: Option<crate::leader::Fence>,
    /// Tells the notifications' receivers what passes did (none in tests that need none).
    pub notifier: Option<crate::notify::Notifier>,
}

/// Why a reconcile did not finish; it is retried with backoff. Each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the Plan changed while it was reconciled; retrying")]
    Conflict,
    #[error("writing the Plan's status: {0}")]
    WriteStatus(kube::Error),
    #[error("{action} Job {job}: {error}")]
    Job {
        action: &'static str,
        job: String,
        error: kube::Error,
    },
    #[error("labelling node {node} done (or recording its history): {error}")]
    LabelNode { node: String, error: kube::Error },
    #[error("removing an annotation the Plan's pass acted on: {0}")]
    ClearAnnotation(kube::Error),
    #[error("writing the Plan's after-hook finalizer: {0}")]
    Finalizer(kube::Error),
    #[error(transparent)]
    Cordon(#[from] CordonError),
    /// Something outside the controller blocks the Plan; said in an event, retried with backoff.
    #[error("{0}")]
    Blocked(String),
    /// This replica could not prove it holds the Lease before a write: it writes nothing more
    /// (the election stops its controller once it notices).
    #[error("this replica does not hold the Lease (or cannot read it); not writing")]
    NotLeading,
}

impl ReconcileError {
    /// A short, fixed name of what failed, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Conflict | Self::Cordon(CordonError::Conflict(_)) => "conflict",
            Self::WriteStatus(_) => "write_status",
            Self::Job { .. } => "job",
            Self::LabelNode { .. } => "label_node",
            Self::ClearAnnotation(_) => "clear_annotation",
            Self::Finalizer(_) => "finalizer",
            Self::Cordon(_) => "cordon",
            Self::Blocked(_) => "blocked",
            Self::NotLeading => "not_leading",
        }
    }

    fn job(action: &'static str, job: &str, error: kube::Error) -> Self {
        Self::Job {
            action,
            job: job.to_owned(),
            error,
        }
    }
}

impl Context {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: Client,
        settings: Settings,
        caches: Caches,
        events: Arc<Events>,
        drains: Drains,
        (channels, queries): (Channels, Queries),
        (metrics, readiness): (Arc<Metrics>, Arc<Readiness>),
        wake: Wake,
    ) -> Self {
        Self {
            objects: ObjectGates::new(client.clone()),
            client,
            settings,
            caches,
            events,
            drains,
            channels,
            queries,
            metrics,
            wake,
            caches_synced: AtomicBool::new(false),
            crd: crd::Gaps::default(),
            readiness,
            backoff: Backoff::default(),
            expect: Expectations::default(),
            refusals: Refusals::default(),
            peers: Peers::default(),
            fence: None,
            notifier: None,
        }
    }

    /// Whether the last read of the Lease still proves this replica holds it (always without
    /// leader election), asked right before a write with no wait between.
    pub(crate) fn proved(&self) -> bool {
        self.fence.as_ref().is_none_or(crate::leader::Fence::valid)
    }

    /// Whether this replica may write now: without leader election always; with it, while the
    /// last read of the Lease still proves the hold, else after reading it again.
    async fn may_write(&self) -> Result<(), ReconcileError> {
        match &self.fence {
            None => Ok(()),
            Some(fence) if fence.valid() || fence.holds().await => Ok(()),
            Some(_) => Err(ReconcileError::NotLeading),
        }
    }

    /// Marks every cache filled and reconciles each Plan, including those whose reconcile was
    /// skipped while waiting for the caches.
    pub fn caches_filled(&self) {
        self.caches_synced.store(true, Ordering::SeqCst);
        self.wake_all();
    }

    /// Asks for every Plan to be reconciled.
    fn wake_all(&self) {
        for plan in self.caches.plans.state() {
            self.wake.object(ObjectRef::from_obj(plan.as_ref()));
        }
    }

    /// How long to wait before retrying a Plan whose reconcile failed.
    pub fn backoff(&self, plan: &Plan, error: &ReconcileError) -> Duration {
        self.backoff.after_failure(plan, error)
    }

    /// The Plan CRD in the cluster lacks these fields of this controller's (none: it is this
    /// controller's). A change is logged, told in `/readyz` and shown on every Plan (each is
    /// reconciled again).
    pub fn crd_seen(&self, gaps: Vec<String>) {
        let described = crd::describe(&gaps);
        if !self.crd.set(gaps) {
            return;
        }
        match &described {
            Some(text) => tracing::error!("{text}"),
            None => tracing::info!("the Plan CRD in the cluster is this controller's"),
        }
        self.readiness.set_notice("crd", described);
        self.wake_all();
    }
}

/// Per-Plan count of failed reconciles in a row: 1 s doubling to 5 min; a conflict retries
/// after 200 ms without counting.
#[derive(Default)]
struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    fn after_failure(&self, plan: &Plan, error: &ReconcileError) -> Duration {
        if error.kind() == "conflict" {
            return Duration::from_millis(200);
        }
        let key = plan.metadata.uid.clone().unwrap_or_default();
        let mut failures = crate::sync::lock(&self.failures);
        let count = failures.entry(key).or_insert(0);
        *count = (*count + 1).min(20);
        Duration::from_secs(1u64 << (*count - 1).min(8)).min(Duration::from_secs(300))
    }

    fn succeeded(&self, plan: &Plan) {
        let key = plan.metadata.uid.clone().unwrap_or_default();
        crate::sync::lock(&self.failures).remove(&key);
    }
}

/// Reconciles one Plan.
#[tracing::instrument(name = "reconcile", skip_all, fields(plan = %plan.name_any()))]
pub async fn reconcile(plan: Arc<Plan>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    if !ctx.caches_synced.load(Ordering::SeqCst) {
        // Context::caches_filled wakes this Plan once the caches are filled.
        tracing::debug!("caches not filled yet; the Plan waits");
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let result = reconcile_inner(&plan, &ctx).await;
    let failed = result.as_ref().err().map(ReconcileError::kind);
    ctx.metrics.observe_reconcile(failed, started.elapsed());
    if result.is_ok() {
        ctx.backoff.succeeded(&plan);
    }
    result
}

/// What the caches hold for one Plan.
struct Snapshot {
    nodes: Vec<Arc<Node>>,
    jobs: Vec<Arc<Job>>,
    secrets: Vec<Arc<Secret>>,
    pods: Vec<Arc<Pod>>,
}

impl Snapshot {
    /// The nodes, and the Plan's Jobs, pods and namespace's Secrets.
    fn of(plan: &Plan, ctx: &Context) -> Self {
        let name = plan.name_any();
        let namespace = plan.namespace().unwrap_or_default();
        let in_namespace =
            |meta: &kube::api::ObjectMeta| meta.namespace.as_deref() == Some(namespace.as_str());
        let label = |meta: &kube::api::ObjectMeta, key: &str| {
            meta.labels.as_ref().and_then(|l| l.get(key)).cloned()
        };
        let controller = &ctx.settings.job.controller_name;
        Snapshot {
            nodes: ctx.caches.nodes.state(),
            jobs: (ctx.caches.jobs.state().into_iter())
                .filter(|j| in_namespace(&j.metadata))
                .filter(|j| label(&j.metadata, LABEL_PLAN).as_ref() == Some(&name))
                .filter(|j| label(&j.metadata, LABEL_CONTROLLER).as_ref() == Some(controller))
                .collect(),
            secrets: (ctx.caches.secrets.state().into_iter())
                .filter(|s| in_namespace(&s.metadata))
                .collect(),
            pods: (ctx.caches.pods.state().into_iter())
                .filter(|p| in_namespace(&p.metadata))
                .filter(|p| label(&p.metadata, LABEL_PLAN).as_ref() == Some(&name))
                .collect(),
        }
    }
}

async fn reconcile_inner(plan: &Plan, ctx: &Context) -> Result<Action, ReconcileError> {
    let resolution = ctx.channels.resolve(plan).await;
    match &resolution {
        Resolution::Channel(_) => ctx.metrics.channel_polled("resolved"),
        Resolution::ChannelFailed { .. } => ctx.metrics.channel_polled("failed"),
        _ => {}
    }
    let query = ctx.queries.check(plan).await;
    let object_gates = ctx.objects.check(plan).await;
    let seen = Snapshot::of(plan, ctx);
    let nodes: Vec<&Node> = seen.nodes.iter().map(AsRef::as_ref).collect();
    let jobs: Vec<&Job> = seen.jobs.iter().map(AsRef::as_ref).collect();
    let secrets: BTreeMap<String, &Secret> = seen
        .secrets
        .iter()
        .map(|s| (s.name_any(), s.as_ref()))
        .collect();
    let pods: Vec<&Pod> = seen.pods.iter().map(AsRef::as_ref).collect();
    let plan_uid = plan.metadata.uid.clone().unwrap_or_default();
    let shown = Shown {
        plan_version: plan.metadata.resource_version.as_deref(),
        jobs: jobs
            .iter()
            .filter_map(|j| j.metadata.name.as_deref())
            .collect(),
        live_jobs: jobs
            .iter()
            .filter(|j| j.metadata.deletion_timestamp.is_none())
            .filter_map(|j| j.metadata.name.as_deref())
            .collect(),
        labels: (nodes.iter())
            .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
            .collect(),
    };
    if let Some(unseen) = ctx.expect.unseen(&plan_uid, &shown, Instant::now()) {
        // The watch event that shows it runs the Plan again; the requeue is a fallback.
        tracing::debug!(%unseen, "the caches do not show the last pass's writes yet; waiting");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Drains of Jobs that finished, failed, were suspended or deleted stop.
    ctx.drains.forget(&plan_uid, &decide::drainable_jobs(&jobs));
    let drains = ctx.drains.of(&plan_uid);
    look_up_pod_refusals(ctx, &plan_uid, &jobs, &pods).await;
    let refusals = ctx.refusals.of(&plan_uid);
    // Passes of one exclusive group run one at a time, from reading the others to writing.
    let _turn = match plan.spec.exclusive_group.as_deref() {
        Some(group) => Some(ctx.peers.exclusive(group).await),
        None => None,
    };
    let peers = ctx.peers.of(&ctx.caches.plans.state(), plan);
    let decision = decide::decide(&Observed {
        peers: &peers,
        query,
        object_gates: &object_gates,
        plan,
        nodes: &nodes,
        jobs: &jobs,
        secrets: &secrets,
        now: jiff::Timestamp::now(),
        resolution,
        settings: &ctx.settings.job,
        pods: &pods,
        drains: &drains,
        refusals: &refusals,
        crd_gaps: &ctx.crd.now(),
    });
    tracing::debug!(before = decision.before.len(), after = decision.after.len(), requeue = ?decision.requeue, "decided");
    ctx.peers.record(plan, &decision);
    act(ctx, plan, &decision).await?;
    if let Some(notifier) = ctx.notifier.as_ref().filter(|n| n.listening()) {
        let now = jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_default();
        notifier.tell(&crate::controller::notices::of(
            plan,
            &decision,
            &now.to_string(),
        ));
    }
    // Only for a pass whose status was written: a retried pass would count its Jobs again.
    for (succeeded, took) in &decision.finished_jobs {
        let result = if *succeeded { "succeeded" } else { "failed" };
        ctx.metrics.job_finished(result, *took);
    }
    for (hook, succeeded) in &decision.finished_hooks {
        ctx.metrics.hook_finished(hook.as_str(), *succeeded);
    }
    ctx.metrics.plan_nodes(
        &plan.namespace().unwrap_or_default(),
        &plan.name_any(),
        decision.tally.counts(),
    );
    Ok(Action::requeue(decision.requeue))
}

/// For the Plan's Jobs that have had no pod for a while, why: the Job controller's newest
/// `FailedCreate` event (a quota, Pod Security admission, a webhook). Read at most every
/// [`refusals::LOOKUP_EVERY`] per Job; a Job with a pod has no such refusal.
async fn look_up_pod_refusals(ctx: &Context, plan_uid: &str, jobs: &[&Job], pods: &[&Pod]) {
    let now = jiff::Timestamp::now();
    for job in jobs {
        let (Some(name), Some(uid)) = (job.metadata.name.as_deref(), job.metadata.uid.as_deref())
        else {
            continue;
        };
        if decide::pods::has_pod(job, pods) {
            ctx.refusals.clear(plan_uid, name);
            continue;
        }
        let age = job
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(Duration::ZERO, |t| {
                now.duration_since(t.0).try_into().unwrap_or(Duration::ZERO)
            });
        let waiting = job.metadata.deletion_timestamp.is_none()
            && decide::finished_at(job).is_none()
            && job.spec.as_ref().and_then(|s| s.suspend) != Some(true)
            && job.spec.as_ref().and_then(|s| s.parallelism) != Some(0);
        if !waiting || age < refusals::NO_POD_GRACE || !ctx.refusals.lookup_due(uid, Instant::now())
        {
            continue;
        }
        let events: Api<k8s_openapi::api::core::v1::Event> =
            Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
        let fields = format!("involvedObject.uid={uid},reason=FailedCreate");
        match events
            .list(&kube::api::ListParams::default().fields(&fields))
            .await
        {
            Ok(list) => {
                let newest = list.items.into_iter().max_by_key(|e| {
                    e.last_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .or(e.event_time.as_ref().map(|t| t.0))
                });
                if let Some(message) = newest.and_then(|e| e.message) {
                    ctx.refusals.pod_refused(plan_uid, name, &message);
                }
            }
            Err(e) => tracing::debug!(job = name, error = %e, "cannot read the Job's events"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The requests a reconcile makes, in order, against a scripted API server.

    use super::*;
    use crate::controller::drain::DrainHandle;
    use crate::controller::events::Reporter;
    use crate::controller::resolve::ChannelClient;
    use crate::controller::testing::{self, ApiServer};
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher::Event;
    use serde_json::json;

    const JOBS: &str = "/apis/batch/v1/namespaces/system-upgrade/jobs";
    const PLAN_STATUS: &str = "/apis/upgrade.cattle.io/v1/namespaces/system-upgrade/plans/p/status";
    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/";

    fn plan() -> Plan {
        serde_json::from_value(json!({
            "apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
            "metadata": {"name": "p", "namespace": "system-upgrade", "uid": "plan-uid", "resourceVersion": "10"},
            "spec": {"concurrency": 1, "version": "v1.30.4+k3s1", "nodeSelector": {},
                     "upgrade": {"image": "rancher/k3s-upgrade"}},
        }))
        .unwrap()
    }

    fn node(name: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "uid": format!("{name}-uid"), "resourceVersion": "5",
                         "labels": {"kubernetes.io/hostname": name}},
        }))
        .unwrap()
    }

    fn fill<K>(writer: &mut Writer<K>, objects: &[K])
    where
        K: kube::Resource + Clone + 'static,
        K::DynamicType: Default + Eq + std::hash::Hash + Clone,
    {
        writer.apply_watcher_event(&Event::Init);
        for object in objects {
            writer.apply_watcher_event(&Event::InitApply(object.clone()));
        }
        writer.apply_watcher_event(&Event::InitDone);
    }

    /// A context over caches holding `plan` and `nodes` (no Jobs, pods or Secrets yet), with
    /// every API request going to the returned server.
    fn context(plan: &Plan, nodes: &[Node]) -> (Context, ApiServer) {
        let (client, server) = testing::client();
        let (plans, mut plan_writer) = reflector::store();
        fill(&mut plan_writer, std::slice::from_ref(plan));
        let (nodes_store, mut node_writer) = reflector::store();
        fill(&mut node_writer, nodes);
        let (jobs, mut job_writer) = reflector::store();
        fill(&mut job_writer, &[]);
        let (secrets, mut secret_writer) = reflector::store();
        fill(&mut secret_writer, &[]);
        let (pods, mut pod_writer) = reflector::store();
        fill(&mut pod_writer, &[]);
        let caches = Caches {
            plans,
            jobs,
            nodes: nodes_store.clone(),
            secrets,
            pods,
        };
        let (wake, _) = tokio::sync::mpsc::unbounded_channel();
        let wake = Wake::new(wake);
        let reporter = Reporter {
            controller: "system-upgrade-controller".into(),
            instance: Some("node-1".into()),
        };
        let events = Arc::new(Events::new(client.clone(), reporter, nodes_store));
        let metrics = Metrics::new();
        let drains = Drains::new(DrainHandle {
            client: client.clone(),
            fence: None,
            claimant: Claimant::new("system-upgrade", "system-upgrade-controller"),
            events: events.clone(),
            metrics: metrics.clone(),
            wake: wake.clone(),
            board: Arc::default(),
        });
        let channel = ChannelClient::new(Duration::from_secs(1)).unwrap();
        let settings = Settings {
            namespace: "system-upgrade".into(),
            job: JobSettings::default(),
            polling_interval: Duration::from_secs(900),
        };
        let channels = Channels::new(channel, "cluster".into(), settings.polling_interval);
        let queries = Queries::new().unwrap();
        let ctx = Context::new(
            client,
            settings,
            caches,
            events,
            drains,
            (channels, queries),
            (metrics, Readiness::new(Arc::default())),
            wake,
        );
        ctx.caches_filled();
        (ctx, server)
    }

    /// The task's result; it must finish once its requests are answered.
    async fn finished<T>(task: tokio::task::JoinHandle<T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task did not finish")
            .unwrap()
    }

    #[tokio::test]
    async fn the_status_naming_the_node_is_written_before_its_job_is_created() {
        let plan = plan();
        let (ctx, mut api) = context(&plan, &[node("a")]);
        let ctx = Arc::new(ctx);
        let reconciling = tokio::spawn({
            let (plan, ctx) = (plan.clone(), ctx.clone());
            async move { reconcile(Arc::new(plan), ctx).await }
        });
        // Answered with the Plan as stored, without the node entries: as the API server answers
        // while it still applies a Plan CRD just fixed (found by the e2e suite, where a
        // CRDCurrent condition then stayed for good).
        let mut stored = serde_json::to_value(&plan).unwrap();
        stored["status"] = json!({"applying": ["a"]});
        let status = api.expect("PATCH", PLAN_STATUS, 200, stored).await;
        assert_eq!(status.body["metadata"]["resourceVersion"], "10");
        assert_eq!(status.body["status"]["applying"], json!(["a"]));
        // The CRD, read afresh, has them: no gap is recorded.
        let crd = serde_json::to_value(crate::api::crd()).unwrap();
        api.expect(
            "GET",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/plans.upgrade.cattle.io",
            200,
            crd,
        )
        .await;
        let created = api
            .expect("POST", JOBS, 201, json!({"metadata": {"name": "x"}}))
            .await;
        assert_eq!(
            created.body["metadata"]["labels"]["upgrade.cattle.io/node"],
            "a"
        );
        // Then the events: three on the Plan (none on the node: its Job says it starts).
        let mut told = Vec::new();
        for _ in 0..3 {
            let event = api.expect("POST", EVENTS, 201, json!({})).await;
            let kind = event.body["regarding"]["kind"].as_str().unwrap().to_owned();
            told.push((kind, event.body["reason"].as_str().unwrap().to_owned()));
        }
        told.sort();
        let expected = [
            ("Plan", "Resolved"),
            ("Plan", "SyncJob"),
            ("Plan", "Validated"),
        ];
        assert_eq!(
            told,
            expected.map(|(k, r)| (k.to_owned(), r.to_owned())).to_vec()
        );
        let action = finished(reconciling).await.unwrap();
        assert_eq!(action, Action::requeue(decide::RESYNC));
        assert!(ctx.crd.now().is_empty(), "{:?}", ctx.crd.now());
        api.done().await;
    }

    #[tokio::test]
    async fn a_plan_changed_meanwhile_is_a_conflict_and_nothing_starts() {
        let plan = plan();
        let (ctx, mut api) = context(&plan, &[node("a")]);
        let ctx = Arc::new(ctx);
        let reconciling = tokio::spawn({
            let (plan, ctx) = (plan.clone(), ctx.clone());
            async move { reconcile(Arc::new(plan), ctx).await }
        });
        api.refuse("PATCH", PLAN_STATUS, 409).await;
        let error = finished(reconciling).await.unwrap_err();
        assert!(matches!(error, ReconcileError::Conflict), "{error}");
        assert_eq!(ctx.backoff(&plan, &error), Duration::from_millis(200));
        let metrics = ctx.metrics.encode();
        assert!(
            metrics.contains("suc_reconcile_errors_total{error=\"conflict\"} 1"),
            "{metrics}"
        );
        // No Job was created and no event sent.
        api.done().await;
    }

    #[tokio::test]
    async fn a_job_or_node_already_gone_is_no_failure() {
        let mut plan = plan();
        plan.status = Some(crate::api::PlanStatus {
            latest_version: Some("v1.30.4-k3s1".into()),
            ..Default::default()
        });
        let (ctx, mut api) = context(&plan, &[]);
        let decision = Decision {
            status: plan.status.clone().unwrap_or_default(),
            tally: Default::default(),
            finished_jobs: Vec::new(),
            finished_hooks: Vec::new(),
            before: vec![
                Change::DeleteJob {
                    name: "old".into(),
                    why: "test".into(),
                    unless_begun: false,
                },
                Change::UpdateJob {
                    name: "gone".into(),
                    fields: JobFields {
                        backoff_limit: Some(1),
                        ..JobFields::default()
                    },
                },
                Change::LabelNode {
                    node: "a".into(),
                    labels: BTreeMap::from([("k".into(), "v".into())]),
                    annotations: BTreeMap::new(),
                },
                Change::Release { node: "a".into() },
            ],
            after: Vec::new(),
            notes: Vec::new(),
            requeue: decide::RESYNC,
        };
        let acting = tokio::spawn({
            let plan = plan.clone();
            async move { act(&ctx, &plan, &decision).await }
        });
        api.refuse("DELETE", &format!("{JOBS}/old"), 404).await;
        let patched = api.refuse("PATCH", &format!("{JOBS}/gone"), 404).await;
        assert_eq!(patched.body, json!({"spec": {"backoffLimit": 1}}));
        api.refuse("PATCH", "/api/v1/nodes/a", 404).await;
        api.refuse("GET", "/api/v1/nodes/a", 404).await;
        // The status is as stored: not written.
        finished(acting).await.unwrap();
        api.done().await;
    }

    /// Found by the soak (seed 6): a Job decided to be replaced because its upgrade had not
    /// begun was deleted milliseconds after its drain opened the gate (the decision read the
    /// caches before). The pods are read afresh first: a gate opened meanwhile keeps the Job.
    #[tokio::test]
    async fn a_job_whose_gate_opened_since_the_decision_is_not_deleted() {
        let mut plan = plan();
        plan.status = Some(crate::api::PlanStatus {
            latest_version: Some("v1.30.4-k3s1".into()),
            ..Default::default()
        });
        let job = json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "j", "namespace": "system-upgrade", "uid": "job-uid"}});
        let pod = |annotations: serde_json::Value| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j-pod", "namespace": "system-upgrade",
                "annotations": annotations, "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "job-uid"}]},
                "spec": {"nodeName": "a", "containers": [], "initContainers": [{"name": "drain"}]},
                "status": {"phase": "Pending", "initContainerStatuses": [{"name": "drain", "image": "x", "imageID": "",
                    "ready": false, "restartCount": 0, "state": {"running": {}}}]}})
        };
        for (annotations, deleted) in [
            (json!({crate::api::ANNOTATION_DRAINED: "now"}), false),
            (json!({}), true),
        ] {
            let (ctx, mut api) = context(&plan, &[]);
            let decision = Decision {
                status: plan.status.clone().unwrap_or_default(),
                tally: Default::default(),
                finished_jobs: Vec::new(),
                finished_hooks: Vec::new(),
                before: vec![Change::DeleteJob {
                    name: "j".into(),
                    why: "replacing the Job after a Plan edit".into(),
                    unless_begun: true,
                }],
                after: Vec::new(),
                notes: Vec::new(),
                requeue: decide::RESYNC,
            };
            let acting = tokio::spawn({
                let plan = plan.clone();
                async move { act(&ctx, &plan, &decision).await }
            });
            api.expect("GET", &format!("{JOBS}/j"), 200, job.clone())
                .await;
            let listed = api
                .expect("GET", "/api/v1/namespaces/system-upgrade/pods", 200,
                    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [pod(annotations)]}))
                .await;
            assert!(
                listed.uri.contains("controller-uid%3Djob-uid"),
                "{}",
                listed.uri
            );
            if deleted {
                api.expect("DELETE", &format!("{JOBS}/j"), 200, job.clone())
                    .await;
            }
            finished(acting).await.unwrap();
            api.done().await;
        }
    }

    /// Found by the long soak for drains, and true of a pass too: a replica stopped in the middle
    /// of a pass wakes with its decision made. Before each write it proves it still holds the
    /// Lease (reading it again once the last read no longer proves it): a replica that does not
    /// hold it writes nothing.
    #[tokio::test]
    async fn a_replica_that_lost_the_lease_writes_nothing_of_its_pass() {
        crate::controller::testing::crypto();
        let plan = plan();
        let (mut ctx, mut api) = context(&plan, &[]);
        ctx.fence = Some(crate::leader::Fence::new(
            ctx.client.clone(),
            "system-upgrade",
            "suc",
            "me",
        ));
        let change = Change::DeleteJob {
            name: "j".into(),
            why: "its node no longer needs the Plan".into(),
            unless_begun: false,
        };
        let acting = tokio::spawn({
            let plan = plan.clone();
            async move { apply(&ctx, &plan, &change).await }
        });
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "suc", "namespace": "system-upgrade"},
            "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15,
                "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()}});
        api.expect(
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/system-upgrade/leases/suc",
            200,
            lease,
        )
        .await;
        assert!(matches!(
            finished(acting).await,
            Err(ReconcileError::NotLeading)
        ));
        // No DELETE of the Job.
        api.done().await;
    }

    /// The finalizer goes only if it is still where the caches had it (a JSON patch that tests
    /// it first); a pod gone or changed meanwhile is left to the next pass.
    #[tokio::test]
    async fn a_pod_is_released_from_the_job_finalizer_only_where_it_was_seen() {
        let plan = plan();
        for code in [200, 422, 404] {
            let (ctx, mut api) = context(&plan, &[]);
            let change = Change::ReleasePod {
                name: "orphan".into(),
                index: 1,
                why: "its Job is gone".into(),
            };
            let acting = tokio::spawn({
                let plan = plan.clone();
                async move { apply(&ctx, &plan, &change).await }
            });
            let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan"}});
            let patched = if code == 200 {
                api.expect(
                    "PATCH",
                    "/api/v1/namespaces/system-upgrade/pods/orphan",
                    200,
                    pod,
                )
                .await
            } else {
                api.refuse(
                    "PATCH",
                    "/api/v1/namespaces/system-upgrade/pods/orphan",
                    code,
                )
                .await
            };
            assert_eq!(
                patched.body,
                json!([
                    {"op": "test", "path": "/metadata/finalizers/1", "value": "batch.kubernetes.io/job-tracking"},
                    {"op": "remove", "path": "/metadata/finalizers/1"},
                ])
            );
            assert!(finished(acting).await.is_ok(), "answered {code}");
            api.done().await;
        }
    }

    #[tokio::test]
    async fn a_job_name_taken_by_our_own_job_is_waited_for_and_by_another_blocks() {
        let plan = plan();
        for (owner, blocked) in [
            (json!("system-upgrade-controller"), false),
            (json!("other"), true),
        ] {
            let (ctx, mut api) = context(&plan, &[]);
            let job: Job = serde_json::from_value(
                json!({"metadata": {"name": "j", "namespace": "system-upgrade"}}),
            )
            .unwrap();
            let acting = tokio::spawn({
                let plan = plan.clone();
                async move { apply(&ctx, &plan, &Change::CreateJob(Box::new(job))).await }
            });
            api.refuse("POST", JOBS, 409).await;
            let existing = json!({"metadata": {"name": "j", "labels": {"upgrade.cattle.io/controller": owner}}});
            api.expect("GET", &format!("{JOBS}/j"), 200, existing).await;
            if blocked {
                let event = api.expect("POST", EVENTS, 201, json!({})).await;
                assert_eq!(event.body["reason"], "JobConflict");
            }
            let result = finished(acting).await;
            assert_eq!(
                matches!(result, Err(ReconcileError::Blocked(_))),
                blocked,
                "{result:?}"
            );
            api.done().await;
        }
    }

    /// Plan p claims node a, in the background.
    fn claim(
        client: Client,
    ) -> tokio::task::JoinHandle<Result<Option<(Node, cordon::Outcome)>, CordonError>> {
        tokio::spawn(async move {
            let who = Claimant::new("system-upgrade", "suc");
            cordon::cordon(&client, &who, "p", "a", true, &|| true).await
        })
    }

    #[tokio::test]
    async fn a_cordon_retries_when_the_node_changed_between_read_and_write() {
        let (client, mut api) = testing::client();
        let claiming = claim(client);
        let node = serde_json::to_value(node("a")).unwrap();
        api.expect("GET", "/api/v1/nodes/a", 200, node.clone())
            .await;
        let first = api.refuse("PATCH", "/api/v1/nodes/a", 409).await;
        assert_eq!(first.body["metadata"]["resourceVersion"], "5");
        let mut changed = node.clone();
        changed["metadata"]["resourceVersion"] = json!("6");
        api.expect("GET", "/api/v1/nodes/a", 200, changed.clone())
            .await;
        let second = api.expect("PATCH", "/api/v1/nodes/a", 200, changed).await;
        assert_eq!(second.body["metadata"]["resourceVersion"], "6");
        assert_eq!(second.body["spec"]["unschedulable"], true);
        let (_, outcome) = finished(claiming).await.unwrap().unwrap();
        assert_eq!(outcome.reason, Reason::Cordoned);
        api.done().await;
    }

    #[tokio::test]
    async fn a_node_that_keeps_changing_is_given_up_as_a_conflict() {
        let (client, mut api) = testing::client();
        let claiming = claim(client);
        let node = serde_json::to_value(node("a")).unwrap();
        for _ in 0..5 {
            api.expect("GET", "/api/v1/nodes/a", 200, node.clone())
                .await;
            api.refuse("PATCH", "/api/v1/nodes/a", 409).await;
        }
        let error = finished(claiming).await.unwrap_err();
        assert!(matches!(error, CordonError::Conflict(_)), "{error}");
        assert_eq!(ReconcileError::from(error).kind(), "conflict");
        api.done().await;
    }
}

#[cfg(test)]
mod patch_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_settings_are_patched_field_by_field_and_the_ttl_in_its_annotation_too() {
        let all = JobFields {
            active_deadline_seconds: Some(None),
            backoff_limit: Some(3),
            ttl_seconds_after_finished: Some(900),
        };
        assert_eq!(
            job_fields_patch(&all),
            json!({
                "spec": {"activeDeadlineSeconds": null, "backoffLimit": 3, "ttlSecondsAfterFinished": 900},
                "metadata": {"annotations": {"upgrade.cattle.io/ttl-seconds-after-finished": "900"}},
            })
        );
        let deadline = JobFields {
            active_deadline_seconds: Some(Some(600)),
            ..JobFields::default()
        };
        assert_eq!(
            job_fields_patch(&deadline),
            json!({"spec": {"activeDeadlineSeconds": 600}})
        );
    }

    #[test]
    fn the_finalizer_is_added_and_removed_testing_the_list_as_seen() {
        let key = FINALIZER_AFTER_HOOK;
        assert_eq!(
            finalizer_patch(None, true),
            Some(json!([{"op": "add", "path": "/metadata/finalizers", "value": [key]}]))
        );
        let others = vec!["example.com/keep".to_owned()];
        assert_eq!(
            finalizer_patch(Some(&others), true),
            Some(json!([
                {"op": "test", "path": "/metadata/finalizers", "value": ["example.com/keep"]},
                {"op": "add", "path": "/metadata/finalizers/-", "value": key},
            ]))
        );
        let both = vec!["example.com/keep".to_owned(), key.to_owned()];
        assert_eq!(
            finalizer_patch(Some(&both), false),
            Some(json!([
                {"op": "test", "path": "/metadata/finalizers/1", "value": key},
                {"op": "remove", "path": "/metadata/finalizers/1"},
            ]))
        );
        assert_eq!(finalizer_patch(Some(&both), true), None);
        assert_eq!(finalizer_patch(Some(&others), false), None);
        assert_eq!(finalizer_patch(None, false), None);
    }
}
