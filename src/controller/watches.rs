//! The watches feeding the controller: Plans of the controller's namespace, this controller's
//! Jobs and their pods, Nodes and Secrets, each into a reflector cache. Node heartbeats are
//! filtered out (only labels, claims, schedulability, readiness, the kubelet version, the boot
//! and existence wake Plans), objects are cached without managedFields, Nodes without what
//! kubelets report but the Ready condition, the kubelet version and the boot ID, and a failing
//! watch is retried with backoff and shown in `/readyz`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, future};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    Container, Node, NodeStatus, NodeSystemInfo, Pod, PodSpec, PodTemplateSpec, Secret,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc::UnboundedSender;

use crate::api::{CORDON_CLAIM_PREFIX, GROUP, LABEL_CONTROLLER, Plan};
use crate::controller::reconcile::{Caches, Settings};
use crate::server::Readiness;

/// A watch's objects as they change.
pub type Touched<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// The watches' streams, to drive the controller, and the caches they fill.
pub struct Watches {
    pub caches: Caches,
    pub plans: Touched<Plan>,
    pub jobs: Touched<Job>,
    pub nodes: Touched<Node>,
    pub secrets: Touched<Secret>,
    pub pods: Touched<Pod>,
}

impl Watches {
    /// Sets up every watch (they run as the controller polls them). Deleted Plans (also those a
    /// re-list no longer shows) are sent, by name and UID, to `deleted`.
    pub fn new(
        client: &Client,
        settings: &Settings,
        readiness: &Arc<Readiness>,
        deleted: UnboundedSender<(String, String)>,
    ) -> Self {
        let namespace = settings.namespace.as_str();
        let ours = format!("{LABEL_CONTROLLER}={}", settings.job.controller_name);
        let (plans, plan_writer) = reflector::store::<Plan>();
        let plan_stream = reported(
            watcher(
                Api::namespaced(client.clone(), namespace),
                watcher::Config::default(),
            ),
            "plans",
            readiness.clone(),
        )
        .reflect(plan_writer)
        .inspect({
            let mut departures = Departures::default();
            move |event| {
                if let Ok(event) = event {
                    for gone in departures.see(event) {
                        let _ = deleted.send(gone);
                    }
                }
            }
        })
        .touched_objects()
        .boxed();

        let (jobs, job_stream) = cached(
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(&ours),
            "jobs",
            readiness,
            slim_job,
        );

        // Node heartbeats change nothing a Plan looks at; only labels, annotations,
        // schedulability and existence do.
        let (nodes, node_writer) = reflector::store::<Node>();
        let mut fingerprints: HashMap<String, u64> = HashMap::new();
        let node_stream = reported(
            watcher(Api::all(client.clone()), watcher::Config::default()).modify(slim_node),
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
        .touched_objects()
        .boxed();

        let (secrets, secret_stream) = cached(
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default(),
            "secrets",
            readiness,
            |_| {},
        );
        // The pods of our Jobs: where each upgrade stands (prepare done, gate waiting).
        let (pods, pod_stream) = cached(
            Api::namespaced(client.clone(), namespace),
            watcher::Config::default().labels(&ours),
            "pods",
            readiness,
            slim_pod,
        );

        Watches {
            caches: Caches {
                plans,
                jobs,
                nodes,
                secrets,
                pods,
            },
            plans: plan_stream,
            jobs: job_stream,
            nodes: node_stream,
            secrets: secret_stream,
            pods: pod_stream,
        }
    }
}

/// The Plans a watch has shown, to tell which went away: those deleted, and those a re-list
/// (after the watch broke, or its history was compacted) no longer shows, whose deletion the
/// watch never delivered.
#[derive(Default)]
struct Departures {
    /// Name by UID of the Plans known now.
    known: HashMap<String, String>,
    /// The Plans of a re-list in progress.
    relisted: Option<HashMap<String, String>>,
}

impl Departures {
    /// Takes in a watch event; returns the Plans (name, UID) it shows gone.
    fn see(&mut self, event: &Event<Plan>) -> Vec<(String, String)> {
        let id = |plan: &Plan| {
            let uid = plan.metadata.uid.clone().unwrap_or_default();
            (uid, plan.name_any())
        };
        match event {
            Event::Apply(plan) => {
                let (uid, name) = id(plan);
                self.known.insert(uid, name);
                Vec::new()
            }
            Event::Delete(plan) => {
                let (uid, name) = id(plan);
                self.known.remove(&uid);
                vec![(name, uid)]
            }
            Event::Init => {
                self.relisted = Some(HashMap::new());
                Vec::new()
            }
            Event::InitApply(plan) => {
                let (uid, name) = id(plan);
                self.relisted.get_or_insert_default().insert(uid, name);
                Vec::new()
            }
            Event::InitDone => {
                let now = self.relisted.take().unwrap_or_default();
                std::mem::replace(&mut self.known, now)
                    .into_iter()
                    .filter(|(uid, _)| !self.known.contains_key(uid))
                    .map(|(uid, name)| (name, uid))
                    .collect()
            }
        }
    }
}

/// A watch of `api` into a cache of objects trimmed by `slim`, and the objects it touches.
fn cached<K>(
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    readiness: &Arc<Readiness>,
    slim: fn(&mut K),
) -> (Store<K>, Touched<K>)
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reported(
        watcher(api, config).modify(slim),
        resource,
        readiness.clone(),
    )
    .reflect(writer)
    .touched_objects()
    .boxed();
    (store, stream)
}

/// Waits until every cache is filled; an error names the cache whose writer went away.
pub async fn caches_filled(caches: &Caches) -> Result<(), String> {
    wait_ready(&caches.plans)
        .await
        .map_err(|e| format!("Plans: {e}"))?;
    wait_ready(&caches.jobs)
        .await
        .map_err(|e| format!("Jobs: {e}"))?;
    wait_ready(&caches.nodes)
        .await
        .map_err(|e| format!("Nodes: {e}"))?;
    wait_ready(&caches.secrets)
        .await
        .map_err(|e| format!("Secrets: {e}"))?;
    wait_ready(&caches.pods)
        .await
        .map_err(|e| format!("Pods: {e}"))
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

/// A Node as the cache keeps it: what decisions, cordons and events read (metadata with only
/// this controller's annotations, the spec, the Ready condition without its heartbeat, the
/// kubelet version and boot ID). The
/// status a kubelet reports (images, addresses, capacity, the other conditions) can be most of a
/// Node's size, and every write to a Node is a merge patch, so nothing dropped here is written
/// back.
fn slim_node(node: &mut Node) {
    if let Some(annotations) = node.metadata.annotations.as_mut() {
        annotations.retain(|key, _| key.contains(GROUP));
    }
    let status = node.status.take().unwrap_or_default();
    let ready = status
        .conditions
        .and_then(|conditions| conditions.into_iter().find(|c| c.type_ == "Ready"))
        .map(|mut ready| {
            ready.last_heartbeat_time = None;
            ready
        });
    // What the node runs and since when it booted: what an upgrade changes.
    let node_info = status.node_info.map(|info| NodeSystemInfo {
        kubelet_version: info.kubelet_version,
        boot_id: info.boot_id,
        ..NodeSystemInfo::default()
    });
    node.status = (ready.is_some() || node_info.is_some()).then(|| NodeStatus {
        conditions: ready.map(|ready| vec![ready]),
        node_info,
        ..NodeStatus::default()
    });
}

/// A Job as the cache keeps it: without its pod template, which nothing reads (the template
/// digest annotation stands for it); completed Jobs stay until their TTL, a thousand of them
/// after a wide rollout.
fn slim_job(job: &mut Job) {
    if let Some(spec) = job.spec.as_mut() {
        spec.template = PodTemplateSpec::default();
    }
}

/// A pod of our Jobs as the cache keeps it: where it runs, its init containers' names and
/// commands (which gate it has), and its status; not the upgrade container's environment,
/// volumes, tolerations or affinity.
fn slim_pod(pod: &mut Pod) {
    let Some(spec) = pod.spec.take() else {
        return;
    };
    let names_only = |containers: Vec<Container>| -> Vec<Container> {
        containers
            .into_iter()
            .map(|c| Container {
                name: c.name,
                image: c.image,
                command: c.command,
                args: c.args,
                ..Container::default()
            })
            .collect()
    };
    pod.spec = Some(PodSpec {
        node_name: spec.node_name,
        containers: names_only(spec.containers),
        init_containers: spec.init_containers.map(names_only),
        ..PodSpec::default()
    });
}

/// What about a Node matters to Plans: labels, our annotations, schedulability, readiness, the
/// kubelet version and boot.
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
    // Readiness: health gates wait for it.
    node.status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status.as_str())
        .hash(&mut hasher);
    // The version it runs and its boot: an upgrade's outcome.
    let info = node.status.as_ref().and_then(|s| s.node_info.as_ref());
    info.map(|i| (&i.kubelet_version, &i.boot_id))
        .hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node() -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "a",
                "labels": {"kubernetes.io/hostname": "a", "plan.upgrade.cattle.io/p": "h"},
                "annotations": {
                    "k3s.io/node-args": "[\"server\",\"--disable\",\"traefik\"]",
                    "cordoned.upgrade.cattle.io/p": "2026-11-28T10:00:00Z",
                    "upgrade.cattle.io/adopted": "p",
                },
            },
            "spec": {"unschedulable": true, "taints": [{"key": "k", "effect": "NoSchedule"}]},
            "status": {
                "conditions": [
                    {"type": "MemoryPressure", "status": "False"},
                    {"type": "Ready", "status": "True", "reason": "KubeletReady",
                     "lastHeartbeatTime": "2026-11-28T10:00:05Z",
                     "lastTransitionTime": "2026-11-28T09:00:00Z"},
                ],
                "images": [{"names": ["rancher/k3s-upgrade:v1.30.4-k3s1"], "sizeBytes": 1}],
                "nodeInfo": {"architecture": "amd64", "bootID": "b-1", "containerRuntimeVersion": "",
                    "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": "v1.30.4+k3s1",
                    "machineID": "", "operatingSystem": "linux", "osImage": "", "systemUUID": ""},
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            },
        }))
        .unwrap()
    }

    fn plan(name: &str) -> Plan {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "uid": format!("uid-{name}")},
            "spec": {"upgrade": {"image": "x"}},
        }))
        .unwrap()
    }

    #[test]
    fn plans_gone_are_told_whether_deleted_or_missed_during_a_relist() {
        let mut departures = Departures::default();
        let gone = |d: &mut Departures, events: Vec<Event<Plan>>| -> Vec<String> {
            events
                .iter()
                .flat_map(|e| d.see(e))
                .map(|(n, _)| n)
                .collect()
        };
        let first = vec![
            Event::Init,
            Event::InitApply(plan("a")),
            Event::InitApply(plan("b")),
            Event::InitDone,
            Event::Apply(plan("c")),
        ];
        assert!(gone(&mut departures, first).is_empty());
        assert_eq!(gone(&mut departures, vec![Event::Delete(plan("a"))]), ["a"]);
        // The watch broke; "b" and "c" were deleted before the re-list.
        let relist = vec![Event::Init, Event::InitApply(plan("d")), Event::InitDone];
        let mut missed = gone(&mut departures, relist);
        missed.sort();
        assert_eq!(missed, ["b", "c"]);
        assert!(
            gone(
                &mut departures,
                vec![Event::Init, Event::InitApply(plan("d")), Event::InitDone]
            )
            .is_empty()
        );
    }

    #[test]
    fn a_cached_node_keeps_what_decisions_read_and_nothing_a_kubelet_reports() {
        let mut slim = node();
        slim_node(&mut slim);
        let full = node();
        assert_eq!(slim.metadata.labels, full.metadata.labels);
        assert_eq!(slim.spec, full.spec);
        let annotations: Vec<&String> =
            slim.metadata.annotations.as_ref().unwrap().keys().collect();
        assert_eq!(
            annotations,
            ["cordoned.upgrade.cattle.io/p", "upgrade.cattle.io/adopted"]
        );
        let status = slim.status.unwrap();
        let conditions = status.conditions.unwrap();
        assert_eq!(conditions.len(), 1);
        assert_eq!(conditions[0].type_, "Ready");
        assert_eq!(conditions[0].status, "True");
        assert!(conditions[0].last_heartbeat_time.is_none());
        assert!(conditions[0].last_transition_time.is_some());
        assert!(status.images.is_none() && status.addresses.is_none());
        let info = status.node_info.unwrap();
        assert_eq!(
            (info.kubelet_version.as_str(), info.boot_id.as_str()),
            ("v1.30.4+k3s1", "b-1")
        );
        assert_eq!(info.architecture, "", "only what an upgrade changes");
        // A new kubelet version or boot wakes Plans.
        let mut upgraded = node();
        upgraded
            .status
            .as_mut()
            .unwrap()
            .node_info
            .as_mut()
            .unwrap()
            .kubelet_version = "v1.31.0+k3s1".into();
        assert_ne!(node_fingerprint(&upgraded), node_fingerprint(&node()));
        // What wakes Plans is unchanged by slimming.
        assert_eq!(node_fingerprint(&slim_copy()), node_fingerprint(&node()));
    }

    fn slim_copy() -> Node {
        let mut n = node();
        slim_node(&mut n);
        n
    }

    #[test]
    fn a_cached_pod_answers_every_question_decisions_ask_as_the_full_pod_does() {
        use crate::controller::decide::pods;
        let full: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "apply-p-on-a", "namespace": "system-upgrade",
                "labels": {"upgrade.cattle.io/controller": "system-upgrade-controller"},
                "annotations": {"upgrade.cattle.io/drained": "now"}},
            "spec": {
                "nodeName": "a",
                "initContainers": [
                    {"name": "prepare", "image": "rancher/k3s-upgrade", "args": ["prepare"],
                     "env": [{"name": "SYSTEM_UPGRADE_NODE_NAME", "value": "a"}]},
                    {"name": "drain", "image": "busybox", "command": ["sh", "-c"], "args": ["wait"]},
                ],
                "containers": [{"name": "upgrade", "image": "rancher/k3s-upgrade",
                    "env": [{"name": "SYSTEM_UPGRADE_PLAN_NAME", "value": "p"}],
                    "volumeMounts": [{"name": "host-root", "mountPath": "/host"}]}],
                "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}],
                "tolerations": [{"operator": "Exists"}],
            },
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "prepare", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0}}},
            ]},
        }))
        .unwrap();
        let mut slim = full.clone();
        slim_pod(&mut slim);
        assert_eq!(pods::phase(&slim), pods::phase(&full));
        assert_eq!(pods::bound_node(&slim), Some("a"));
        assert_eq!(pods::gate(&slim), pods::gate(&full));
        assert!(
            pods::gate(&slim).is_some_and(pods::is_native_gate)
                == pods::gate(&full).is_some_and(pods::is_native_gate)
        );
        assert_eq!(pods::prepared(&slim), pods::prepared(&full));
        assert_eq!(slim.metadata, full.metadata);
        let spec = slim.spec.unwrap();
        assert!(spec.volumes.is_none() && spec.tolerations.is_none());
        assert!(spec.containers[0].env.is_none() && spec.containers[0].volume_mounts.is_none());
    }

    #[test]
    fn a_cached_job_keeps_its_settings_and_status_but_not_its_template() {
        let full: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "apply-p-on-a", "annotations": {"upgrade.cattle.io/template-hash": "d"}},
            "spec": {"backoffLimit": 2, "activeDeadlineSeconds": 900, "ttlSecondsAfterFinished": 900,
                "suspend": false, "parallelism": 1,
                "template": {"spec": {"containers": [{"name": "upgrade", "image": "i"}]}}},
            "status": {"succeeded": 1},
        }))
        .unwrap();
        let mut slim = full.clone();
        slim_job(&mut slim);
        let (spec, was) = (slim.spec.as_ref().unwrap(), full.spec.as_ref().unwrap());
        assert_eq!(spec.template, PodTemplateSpec::default());
        assert_eq!(
            (
                spec.backoff_limit,
                spec.active_deadline_seconds,
                spec.ttl_seconds_after_finished,
                spec.suspend,
                spec.parallelism
            ),
            (
                was.backoff_limit,
                was.active_deadline_seconds,
                was.ttl_seconds_after_finished,
                was.suspend,
                was.parallelism
            )
        );
        assert_eq!((slim.metadata, slim.status), (full.metadata, full.status));
    }

    #[test]
    fn a_node_without_status_stays_without() {
        let mut n = node();
        n.status = None;
        slim_node(&mut n);
        assert!(n.status.is_none());
    }
}
