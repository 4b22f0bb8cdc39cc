//! The upgrade controller: resolves Plans to versions, picks nodes within each Plan's
//! concurrency, runs the upgrade Jobs, and labels, cordons and uncordons nodes.
//!
//! Watch-driven: reflector caches of Plans (in the controller's namespace), this controller's
//! Jobs, Nodes and Secrets feed one kube-runtime Controller; the only timers are the channel
//! polling interval and the requeues a reconcile asks for (delays, windows, TTLs, a resync).

pub mod budgets;
pub mod cordon;
pub mod crd;
pub mod decide;
pub mod detach;
pub mod drain;
pub mod drains;
pub mod events;
pub mod expect;
pub mod hash;
pub mod job;
pub mod notices;
pub mod objects;
pub mod peers;
pub mod poll;
pub mod query;
pub mod reconcile;
pub mod refusals;
pub mod resolve;
pub mod select;
pub mod simulate;
pub mod status;
#[cfg(test)]
pub(crate) mod testing;
pub mod watches;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{LABEL_PLAN, Plan, Reason};
use crate::metrics::Metrics;
use crate::server::Readiness;
use drain::{DrainHandle, Wake};
use drains::Drains;
use events::{Events, Reporter};
use poll::Channels;
use query::Queries;
use reconcile::{Context, ReconcileError, Settings};
use watches::Watches;

/// Everything the controller needs from the command line.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub settings: Settings,
    pub threads: u16,
    pub node_name: Option<String>,
    /// With leader election: the Lease check drains make before they write.
    pub fence: Option<crate::leader::Fence>,
}

/// Runs the controller until `stop`; `ready` is called once every cache has synced.
pub async fn run(
    client: Client,
    config: ControllerOptions,
    metrics: Arc<Metrics>,
    ready: impl FnOnce() + Send + 'static,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> Result<(), crate::error::Error> {
    let settings = config.settings;
    let reporter = Reporter::new(&settings.job.controller_name, config.node_name.as_deref());
    let Some(cluster_id) = cluster_id(&client, &reporter, &stop).await else {
        return Ok(());
    };
    // Deleted Plans also go to the janitor, which returns the nodes they cordoned.
    let (deleted, deleted_rx) = tokio::sync::mpsc::unbounded_channel();
    let watches = Watches::new(&client, &settings, &readiness, deleted);
    // Drains report progress by waking their Plan through this channel.
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<Plan>>();
    let wake = Wake::new(wake);
    let events = Arc::new(Events::new(
        client.clone(),
        reporter,
        watches.caches.nodes.clone(),
    ));
    let drains = Drains::new(DrainHandle {
        client: client.clone(),
        fence: config.fence.clone(),
        claimant: settings.claimant(),
        events: events.clone(),
        metrics: metrics.clone(),
        wake: wake.clone(),
        board: Arc::default(),
    });
    let channel_client = resolve::ChannelClient::new(Duration::from_secs(30))
        .map_err(|e| crate::error::Error::ChannelClient(e.to_string()))?;
    let channels = Channels::new(channel_client, cluster_id, settings.polling_interval);
    let queries = Queries::new().map_err(crate::error::Error::HttpClient)?;
    let mut context = Context::new(
        client.clone(),
        settings.clone(),
        watches.caches.clone(),
        events,
        drains,
        (channels, queries),
        (metrics, readiness.clone()),
        wake,
    );
    context.fence = config.fence.clone();
    let notifier = crate::notify::Notifier::new(
        watches.caches.secrets.clone(),
        &settings.namespace,
        context.metrics.clone(),
        readiness.clone(),
    )
    .map_err(crate::error::Error::HttpClient)?;
    tokio::spawn(notifier.clone().watch(client.clone(), stop.clone()));
    context.notifier = Some(notifier);
    let context = Arc::new(context);
    // The Plan CRD, compared with this controller's whenever it is written.
    tokio::spawn(crd::watch(
        client.clone(),
        {
            let context = context.clone();
            move |gaps| context.crd_seen(gaps)
        },
        stop.clone(),
    ));

    let plans = watches.caches.plans.clone();
    let plans_for_secrets = plans.clone();
    let controller = Controller::for_stream(watches.plans, plans.clone())
        .owns_stream(watches.jobs)
        .watches_stream(watches.nodes, move |_node: Node| all_plans(&plans))
        .watches_stream(watches.secrets, move |secret: Secret| {
            plans_using_secret(&plans_for_secrets, &secret.name_any())
        })
        .watches_stream(watches.pods, plan_of_pod)
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(woken))
        // No debounce: it delays a reconcile until a Plan's triggers pause, and the pods of a
        // wide rollout never pause, so the next node waited up to a second after a Job finished.
        // Triggers that arrive while a Plan is queued or reconciling still fold into one pass.
        .with_config(ControllerConfig::default().concurrency(config.threads))
        .graceful_shutdown_on(stop.clone().cancelled_owned());

    tokio::spawn(janitor(context.clone(), deleted_rx, ready, stop));

    tracing::info!(namespace = %settings.namespace, controller = %settings.job.controller_name, "controller starting");
    controller
        .run(reconcile::reconcile, error_policy, context.clone())
        .for_each(|result| async move {
            match result {
                Ok((plan, _)) => tracing::debug!(plan = %plan.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
    context.drains.stop_all();
    readiness.watches_stopped();
    tracing::info!("controller stopped");
    Ok(())
}

/// The kube-system Namespace's UID, which identifies the cluster to channels. Read with
/// retries: a controller started while the API server is away waits for it instead of
/// exiting. `None`: stopped first.
async fn cluster_id(
    client: &Client,
    reporter: &Reporter,
    stop: &CancellationToken,
) -> Option<String> {
    let namespaces = Api::<Namespace>::all(client.clone());
    let mut failures = 0;
    let kube_system = crate::retry::until_it_works("read the kube-system Namespace", stop, || {
        failures += 1;
        let (namespaces, client, reporter) = (namespaces.clone(), client.clone(), reporter.clone());
        let first = failures == 1;
        async move {
            let result = namespaces.get("kube-system").await;
            if let Err(e) = &result
                && first
            {
                let message = format!(
                    "cannot read the kube-system Namespace (its UID identifies the cluster to \
                     channels): {e}; retrying"
                );
                events::controller_event(&client, &reporter, true, Reason::StartFailed, message)
                    .await;
            }
            result
        }
    })
    .await?;
    Some(kube_system.metadata.uid.unwrap_or_default())
}

/// The Plan whose Job a pod belongs to.
fn plan_of_pod(pod: Pod) -> Option<ObjectRef<Plan>> {
    let plan = pod.metadata.labels.as_ref()?.get(LABEL_PLAN)?.clone();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    Some(ObjectRef::new(&plan).within(&namespace))
}

/// Once every cache is filled: reconciles may act, readiness, the `Started` event, then the
/// first sweep of cordon claims left by deleted Plans, and a sweep after each Plan deletion.
async fn janitor(
    ctx: Arc<Context>,
    mut deleted: UnboundedReceiver<(String, String)>,
    ready: impl FnOnce(),
    stop: CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => return,
        result = watches::caches_filled(&ctx.caches) => if let Err(e) = result {
            tracing::error!(error = %e, "caches did not sync");
            return;
        },
    }
    tracing::info!("caches synced; controller is ready");
    ctx.caches_filled();
    ready();
    let started = format!(
        "system-upgrade-controller {} running as {}/{}",
        crate::config::VERSION,
        ctx.settings.namespace,
        ctx.settings.job.controller_name
    );
    let reporter = ctx.events.reporter();
    events::controller_event(&ctx.client, reporter, false, Reason::Started, started).await;
    release_orphaned_claims(&ctx).await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            plan = deleted.recv() => match plan {
                Some((plan, uid)) => {
                    tracing::info!(%plan, "Plan deleted; stopping its drains and returning the nodes it cordoned");
                    ctx.drains.plan_deleted(&uid).await;
                    ctx.expect.forget(&uid);
                    ctx.queries.forget(&uid);
                    ctx.objects.forget(&uid);
                    ctx.refusals.forget(&uid);
                    ctx.metrics.forget_plan(&ctx.settings.namespace, &plan);
                    release_orphaned_claims(&ctx).await;
                }
                None => return,
            },
        }
    }
}

/// Whether the Plan CRD in the cluster has `status.nodes`, which the Go controller's CRD lacks.
pub use crd::has_node_status as crd_has_node_status;

fn error_policy(plan: Arc<Plan>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let backoff = ctx.backoff(&plan, error);
    let plan = plan.name_any();
    match error {
        ReconcileError::Conflict => tracing::debug!(%plan, "status conflict; retrying"),
        ReconcileError::Blocked(e) => {
            tracing::warn!(%plan, error = %e, ?backoff, "reconcile blocked; retrying")
        }
        e => {
            tracing::warn!(%plan, failed = e.kind(), error = %e, ?backoff, "reconcile failed; retrying")
        }
    }
    Action::requeue(backoff)
}

fn all_plans(plans: &Store<Plan>) -> Vec<ObjectRef<Plan>> {
    plans
        .state()
        .iter()
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

fn plans_using_secret(plans: &Store<Plan>, secret: &str) -> Vec<ObjectRef<Plan>> {
    plans
        .state()
        .iter()
        .filter(|p| {
            p.spec
                .secrets
                .iter()
                .flatten()
                .any(|s| s.name == secret && !s.ignore_updates.unwrap_or(false))
        })
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Drops this instance's cordon claims of Plans that no longer exist, uncordoning nodes nobody
/// else holds, and those Plans' `upcoming` taints. Claims of another instance (another
/// namespace or controller name) are theirs.
async fn release_orphaned_claims(ctx: &Context) {
    let existing: Vec<String> = ctx
        .caches
        .plans
        .state()
        .iter()
        .map(|p| p.name_any())
        .collect();
    let who = ctx.settings.claimant();
    for node in ctx.caches.nodes.state() {
        let orphaned: Vec<String> = cordon::claims_of(&node, &who)
            .filter(|plan| !existing.iter().any(|e| e == plan))
            .map(str::to_owned)
            .collect();
        let untaint: Vec<String> = cordon::upcoming_taints(&node)
            .filter(|plan| !existing.iter().any(|e| e == plan))
            .map(str::to_owned)
            .collect();
        for plan in untaint {
            let name = node.name_any();
            let span = tracing::info_span!("untaint", %plan, node = %name);
            let may_write = || ctx.proved();
            let removed = cordon::taint(&ctx.client, &plan, &name, false, &may_write);
            if let Err(e) = removed.instrument(span.clone()).await {
                span.in_scope(|| tracing::warn!(error = %e, "could not remove an upcoming taint"));
            }
        }
        for plan in orphaned {
            let node = node.name_any();
            let span = tracing::info_span!("release", %plan, %node);
            let released = reconcile::release(ctx, &plan, &node).instrument(span.clone());
            if let Err(e) = released.await {
                span.in_scope(|| tracing::warn!(error = %e, "could not release a cordon claim"));
            }
        }
    }
}
