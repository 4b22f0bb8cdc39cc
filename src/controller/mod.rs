//! The upgrade controller: resolves Plans to versions, picks nodes within each Plan's
//! concurrency, runs the upgrade Jobs, and labels, cordons and uncordons nodes.
//!
//! Watch-driven: reflector caches of Plans (in the controller's namespace), this controller's
//! Jobs, Nodes and Secrets feed one kube-runtime Controller; the only timers are the channel
//! polling interval and the requeues a reconcile asks for (delays, windows, TTLs, a resync).

pub mod decide;
pub mod drain;
pub mod hash;
pub mod job;
pub mod reconcile;
pub mod resolve;
pub mod select;
pub mod status;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::{LABEL_CONTROLLER, Plan};
use crate::metrics::Metrics;
use crate::server::Readiness;
use decide::CORDON_CLAIM_PREFIX;
use reconcile::{Context, ReconcileError, Reporter, Settings};

/// Everything the controller needs from the command line.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub settings: Settings,
    pub threads: u16,
    pub node_name: Option<String>,
}

/// Runs the controller until `stop`; `ready` is called once every cache has synced.
pub async fn run(
    client: Client,
    config: ControllerOptions,
    metrics: Arc<Metrics>,
    ready: impl FnOnce() + Send + 'static,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> Result<(), crate::Error> {
    let settings = config.settings;
    let namespace = settings.namespace.clone();
    let reporter = Reporter::new(&settings.job.controller_name, config.node_name.as_deref());
    // The kube-system Namespace's UID identifies the cluster to channels. Read with retries: a
    // controller started while the API server is away waits for it instead of exiting.
    let namespaces = Api::<Namespace>::all(client.clone());
    let mut failures = 0;
    let Some(kube_system) = crate::until_it_works("read the kube-system Namespace", &stop, || {
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
                reconcile::controller_event(&client, &reporter, true, "StartFailed", message).await;
            }
            result
        }
    })
    .await
    else {
        return Ok(());
    };
    let cluster_id = kube_system.metadata.uid.unwrap_or_default();

    let crd_lacks_nodes = !check_crd(&client).await;

    // Plans of our namespace; deletions also go to the janitor, which returns cordoned nodes.
    let (plans, plan_writer) = reflector::store::<Plan>();
    let (deleted_tx, mut deleted_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let plan_stream = reported(
        watcher(
            Api::<Plan>::namespaced(client.clone(), &namespace),
            watcher::Config::default(),
        ),
        "plans",
        readiness.clone(),
    )
    .reflect(plan_writer)
    .inspect(move |event| {
        if let Ok(Event::Delete(plan)) = event {
            let _ = deleted_tx.send((
                plan.name_any(),
                plan.metadata.uid.clone().unwrap_or_default(),
            ));
        }
    })
    .touched_objects();

    let selector = format!("{LABEL_CONTROLLER}={}", settings.job.controller_name);
    let (jobs, job_writer) = reflector::store::<Job>();
    let job_stream = reported(
        watcher(
            Api::<Job>::namespaced(client.clone(), &namespace),
            watcher::Config::default().labels(&selector),
        ),
        "jobs",
        readiness.clone(),
    )
    .reflect(job_writer)
    .touched_objects();

    // Node heartbeats change nothing a Plan looks at; only labels, annotations, schedulability
    // and existence do.
    let (nodes, node_writer) = reflector::store::<Node>();
    let mut fingerprints: HashMap<String, u64> = HashMap::new();
    let node_stream = reported(
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
        "nodes",
        readiness.clone(),
    )
    .reflect(node_writer)
    .filter(move |event| {
        let relevant = match event {
            Ok(Event::Apply(node) | Event::InitApply(node)) => {
                let print = node_fingerprint(node);
                fingerprints.insert(node.name_any(), print) != Some(print)
            }
            Ok(Event::Delete(node)) => {
                fingerprints.remove(&node.name_any());
                true
            }
            _ => true,
        };
        future::ready(relevant)
    })
    .touched_objects();

    let (secrets, secret_writer) = reflector::store::<Secret>();
    let secret_stream = reported(
        watcher(
            Api::<Secret>::namespaced(client.clone(), &namespace),
            watcher::Config::default(),
        ),
        "secrets",
        readiness.clone(),
    )
    .reflect(secret_writer)
    .touched_objects();

    // The pods of our Jobs: where each upgrade stands (prepare done, gate waiting).
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_stream = reported(
        watcher(
            Api::<Pod>::namespaced(client.clone(), &namespace),
            watcher::Config::default().labels(&selector),
        ),
        "pods",
        readiness.clone(),
    )
    .reflect(pod_writer)
    .touched_objects();

    // Drains report progress through this channel.
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel::<ObjectRef<Plan>>();
    let context = Arc::new(Context::new(
        client.clone(),
        settings.clone(),
        (
            plans.clone(),
            jobs.clone(),
            nodes.clone(),
            secrets.clone(),
            pods.clone(),
        ),
        reporter,
        resolve::ChannelClient::new(Duration::from_secs(30))
            .map_err(|e| crate::Error::KubeConfig(e.0))?,
        cluster_id,
        metrics,
        wake,
    ));

    if crd_lacks_nodes {
        reconcile::crd_lacks_nodes(&context);
    }

    let plans_for_nodes = plans.clone();
    let plans_for_secrets = plans.clone();
    let controller = Controller::for_stream(plan_stream, plans.clone())
        .owns_stream(job_stream)
        .watches_stream(node_stream, move |_node: Node| all_plans(&plans_for_nodes))
        .watches_stream(secret_stream, move |secret: Secret| {
            plans_using_secret(&plans_for_secrets, &secret.name_any())
        })
        .watches_stream(pod_stream, |pod: Pod| {
            let plan = pod
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(job::LABEL_PLAN))
                .cloned();
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            plan.map(|plan| ObjectRef::new(&plan).within(&namespace))
        })
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(woken))
        .with_config(
            ControllerConfig::default()
                .concurrency(config.threads)
                .debounce(Duration::from_millis(300)),
        )
        .graceful_shutdown_on(stop.clone().cancelled_owned());

    // Once every cache is filled: reconciles may act, readiness, then the janitor's first sweep.
    let janitor_context = context.clone();
    let drains_context = context.clone();
    let janitor_stop = stop.clone();
    let janitor = async move {
        let synced = async {
            wait_ready(&janitor_context.plans)
                .await
                .map_err(|e| format!("Plans: {e}"))?;
            wait_ready(&janitor_context.jobs)
                .await
                .map_err(|e| format!("Jobs: {e}"))?;
            wait_ready(&janitor_context.nodes)
                .await
                .map_err(|e| format!("Nodes: {e}"))?;
            wait_ready(&janitor_context.secrets)
                .await
                .map_err(|e| format!("Secrets: {e}"))?;
            wait_ready(&janitor_context.pods)
                .await
                .map_err(|e| format!("Pods: {e}"))?;
            Ok::<(), String>(())
        };
        tokio::select! {
            _ = janitor_stop.cancelled() => return,
            result = synced => if let Err(e) = result {
                tracing::error!(error = %e, "caches did not sync");
                return;
            },
        }
        tracing::info!("caches synced; controller is ready");
        janitor_context.caches_filled();
        ready();
        let started = format!(
            "system-upgrade-controller {} running as {}/{}",
            crate::config::VERSION,
            janitor_context.settings.namespace,
            janitor_context.settings.job.controller_name
        );
        reconcile::controller_event(
            &janitor_context.client,
            &janitor_context.reporter,
            false,
            "Started",
            started,
        )
        .await;
        release_orphaned_claims(&janitor_context).await;
        loop {
            tokio::select! {
                _ = janitor_stop.cancelled() => return,
                deleted = deleted_rx.recv() => match deleted {
                    Some((plan, uid)) => {
                        tracing::info!(%plan, "Plan deleted; stopping its drains and returning the nodes it cordoned");
                        janitor_context.forget_drains(&uid, &[]);
                        release_orphaned_claims(&janitor_context).await;
                    }
                    None => return,
                },
            }
        }
    };
    tokio::spawn(janitor);

    tracing::info!(%namespace, controller = %settings.job.controller_name, "controller starting");
    controller
        .run(reconcile::reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok((plan, _)) => tracing::debug!(plan = %plan.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
    drains_context.stop_drains();
    readiness.watches_stopped();
    tracing::info!("controller stopped");
    Ok(())
}

/// Whether the Plan CRD in the cluster has `status.nodes`, which the Go controller's CRD lacks
/// (and a Go controller rewrites it whenever it starts). Without it the API server prunes the
/// per-node status; the controller still works, and says what to do. `None`: could not be read.
pub fn crd_has_node_status(crd: &serde_json::Value) -> Option<bool> {
    let versions = crd.pointer("/spec/versions")?.as_array()?;
    let served = versions
        .iter()
        .find(|v| v.get("storage") == Some(&serde_json::Value::Bool(true)))
        .or(versions.first())?;
    Some(
        served
            .pointer("/schema/openAPIV3Schema/properties/status/properties/nodes")
            .is_some(),
    )
}

/// Reads the Plan CRD at start: false when it lacks `status.nodes`.
async fn check_crd(client: &Client) -> bool {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    match crds.get("plans.upgrade.cattle.io").await {
        Ok(crd) => {
            let value = serde_json::to_value(&crd).unwrap_or_default();
            crd_has_node_status(&value) != Some(false)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the Plan CRD to check it has status.nodes");
            true
        }
    }
}

/// Waits until a cache is filled. A store wakes only its most recent waiter, and the Controller
/// waits on the Plan store too, so this one asks again every quarter second instead of relying
/// on being woken.
async fn wait_ready<K>(store: &Store<K>) -> Result<(), reflector::store::WriterDropped>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    loop {
        if let Ok(result) =
            tokio::time::timeout(Duration::from_millis(250), store.wait_until_ready()).await
        {
            return result;
        }
    }
}

/// A watcher of `api` whose objects carry no managedFields (less memory in the caches).
fn watcher<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher::watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| {
            object.managed_fields_mut().clear();
        })
}

const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The wait before a failed watch is tried again: 250 ms doubling to 5 s, and 250 ms again once it
/// delivers. Short, because readiness waits on the watches after an API server restart.
struct WatchBackoff(Duration);

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = self.0;
        self.0 = (self.0 * 2).min(WATCH_BACKOFF_MAX);
        Some(wait)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0 = WATCH_BACKOFF_MIN;
    }
}

/// A watch's events, retried with backoff after an error; each error is logged and shown in
/// `/readyz` until the watch delivers again.
fn reported<K>(
    events: impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    resource: &'static str,
    readiness: Arc<Readiness>,
) -> impl futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send {
    events
        .backoff(WatchBackoff(WATCH_BACKOFF_MIN))
        .inspect(move |event| match event {
            Ok(_) => readiness.watch_ok(resource),
            Err(e) => {
                tracing::error!(resource, error = %e, "watch failed; retrying with backoff");
                readiness.watch_failed(resource, e.to_string());
            }
        })
}

fn error_policy(plan: Arc<Plan>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    let backoff = ctx.backoff(&plan, error);
    match error {
        ReconcileError::Conflict => {
            tracing::debug!(plan = %plan.name_any(), "status conflict; retrying")
        }
        ReconcileError::Blocked(e) => {
            tracing::warn!(plan = %plan.name_any(), error = %e, ?backoff, "reconcile blocked; retrying")
        }
        ReconcileError::Kube(e) => {
            tracing::warn!(plan = %plan.name_any(), error = %e, ?backoff, "reconcile failed; retrying")
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

/// What about a Node matters to Plans: labels, our annotations, schedulability.
fn node_fingerprint(node: &Node) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    node.metadata.labels.hash(&mut hasher);
    let claims: BTreeMap<&String, &String> = node
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(CORDON_CLAIM_PREFIX))
        .collect();
    claims.hash(&mut hasher);
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .hash(&mut hasher);
    node.metadata.uid.hash(&mut hasher);
    hasher.finish()
}

/// Drops the cordon claims of Plans that no longer exist, uncordoning nodes nobody else holds.
async fn release_orphaned_claims(ctx: &Context) {
    let existing: Vec<String> = ctx.plans.state().iter().map(|p| p.name_any()).collect();
    for node in ctx.nodes.state() {
        let orphaned: Vec<String> = node
            .metadata
            .annotations
            .iter()
            .flatten()
            .filter_map(|(k, _)| k.strip_prefix(CORDON_CLAIM_PREFIX))
            .filter(|plan| !existing.iter().any(|e| e == plan))
            .map(str::to_owned)
            .collect();
        for plan in orphaned {
            if let Err(e) = reconcile::cordon(ctx, &plan, &node.name_any(), false).await {
                tracing::warn!(%plan, node = %node.name_any(), error = %e, "could not release a cordon claim");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_crd_has_node_status_and_the_go_controllers_does_not() {
        let ours = serde_json::to_value(crate::api::crd()).unwrap();
        assert_eq!(crd_has_node_status(&ours), Some(true));
        let mut go = ours.clone();
        for version in go["spec"]["versions"].as_array_mut().unwrap() {
            version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
                .as_object_mut()
                .unwrap()
                .remove("nodes");
        }
        assert_eq!(crd_has_node_status(&go), Some(false));
        assert_eq!(crd_has_node_status(&serde_json::json!({})), None);
    }
}
