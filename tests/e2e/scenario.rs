//! A scenario: its own simulated nodes, labelled `suc-test/scenario=<name>`, and Plans selecting
//! them, all removed when the scenario ends, so scenarios do not disturb each other.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, ListParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use system_upgrade_controller::api::Plan;

use crate::support::{Ctx, NAMESPACE, wait};

pub const SCENARIO_LABEL: &str = "suc-test/scenario";

pub struct Scenario<'a> {
    pub ctx: &'a Ctx,
    pub name: String,
    pub nodes: Vec<String>,
}

impl<'a> Scenario<'a> {
    /// Creates `count` Ready nodes named `<name>-1`...
    pub fn new(ctx: &'a Ctx, name: &str, count: usize) -> Self {
        let scenario = Scenario {
            ctx,
            name: name.to_owned(),
            nodes: Vec::new(),
        };
        scenario.cleanup();
        let mut scenario = scenario;
        scenario.add_nodes(count);
        scenario
    }

    pub fn add_nodes(&mut self, count: usize) -> Vec<String> {
        if count == 0 {
            return Vec::new();
        }
        let first = self.nodes.len() + 1;
        let names: Vec<String> = (first..first + count)
            .map(|i| format!("{}-{i}", self.name))
            .collect();
        let items: Vec<Value> = names
            .iter()
            .map(|n| {
                json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": n, "annotations": {"kwok.x-k8s.io/node": "fake"}, "labels": {
                        "type": "kwok", "kubernetes.io/hostname": n, "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64", SCENARIO_LABEL: self.name,
                    }},
                })
            })
            .collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        self.ctx
            .kubectl_with_input(&["apply", "-f", "-"], Some(&list.to_string()))
            .expect_ok();
        for name in &names {
            wait(
                &format!("node {name} to be Ready and untainted"),
                Duration::from_secs(60),
                || {
                    let node = self.node(name)?;
                    let ready = node
                        .status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.status == "True");
                    let tainted = node
                        .spec
                        .as_ref()
                        .and_then(|s| s.taints.as_ref())
                        .is_some_and(|t| !t.is_empty());
                    (ready && !tainted).then_some(())
                },
            );
        }
        self.nodes.extend(names.iter().cloned());
        names
    }

    /// Applies a Plan named after the scenario (or `name`), selecting the scenario's nodes unless
    /// the spec selects otherwise.
    /// Returns what kubectl printed (the webhook's warnings are on stderr).
    pub fn apply_plan(
        &self,
        name: &str,
        mut spec: Value,
        metadata: Value,
    ) -> crate::support::Kubectl {
        if spec.get("nodeSelector").is_none() {
            spec["nodeSelector"] = json!({"matchLabels": {SCENARIO_LABEL: self.name}});
        }
        let mut meta = json!({"name": name, "namespace": NAMESPACE});
        for (k, v) in metadata.as_object().into_iter().flatten() {
            meta[k] = v.clone();
        }
        let plan = json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan", "metadata": meta, "spec": spec});
        self.ctx
            .kubectl_with_input(&["apply", "-f", "-"], Some(&plan.to_string()))
            .expect_ok()
    }

    pub fn plan(&self, name: &str) -> Option<Plan> {
        let api: Api<Plan> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        self.ctx.block_on(api.get_opt(name)).unwrap()
    }

    pub fn plan_json(&self, name: &str) -> Value {
        serde_json::to_value(self.plan(name).expect("the Plan exists")).unwrap()
    }

    pub fn condition(&self, plan: &str, type_: &str) -> Option<(String, String, String)> {
        let plan = self.plan(plan)?;
        let conditions = plan.status?.conditions?;
        let c = conditions.into_iter().find(|c| c.type_ == type_)?;
        Some((
            c.status,
            c.reason.unwrap_or_default(),
            c.message.unwrap_or_default(),
        ))
    }

    /// Waits for a condition to reach status and reason.
    #[track_caller]
    pub fn wait_condition(
        &self,
        plan: &str,
        type_: &str,
        status: &str,
        reason: &str,
        timeout: Duration,
    ) -> String {
        wait(
            &format!(
                "Plan {plan} {type_}={status}/{reason} (now {:?})",
                self.condition(plan, type_)
            ),
            timeout,
            || {
                self.condition(plan, type_)
                    .filter(|(s, r, _)| s == status && r == reason)
                    .map(|(_, _, m)| m)
            },
        )
    }

    /// Waits until the controller has reconciled the Plan's spec as it is now (its status's
    /// `observedGeneration` is the Plan's generation): what that pass decided has been done, so
    /// a check that the edit changed nothing needs no fixed wait.
    #[track_caller]
    pub fn wait_observed(&self, plan: &str, timeout: Duration) {
        wait(&format!("Plan {plan}'s edit observed"), timeout, || {
            let plan = self.plan_json(plan);
            let generation = plan["metadata"]["generation"].as_i64()?;
            (plan["status"]["observedGeneration"].as_i64() == Some(generation)).then_some(())
        })
    }

    pub fn jobs(&self, plan: &str) -> Vec<Job> {
        let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        let list = self
            .ctx
            .block_on(
                api.list(&ListParams::default().labels(&format!("upgrade.cattle.io/plan={plan}"))),
            )
            .unwrap();
        list.items
    }

    pub fn node(&self, name: &str) -> Option<Node> {
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        self.ctx.block_on(api.get_opt(name)).unwrap()
    }

    pub fn node_label(&self, node: &str, key: &str) -> Option<String> {
        self.node(node)?.metadata.labels?.get(key).cloned()
    }

    /// How many of the scenario's nodes carry the label of `plan` (are done).
    pub fn labelled(&self, plan: &str) -> usize {
        let key = format!("plan.upgrade.cattle.io/{plan}");
        self.nodes
            .iter()
            .filter(|n| self.node_label(n, &key).is_some())
            .count()
    }

    pub fn unschedulable(&self, node: &str) -> bool {
        self.node(node)
            .and_then(|n| n.spec?.unschedulable)
            .unwrap_or(false)
    }

    /// Events about an object (`Kind/name`), as "Reason: message".
    pub fn events(&self, namespace: &str, kind: &str, name: &str) -> Vec<String> {
        self.events_where(
            namespace,
            &format!("involvedObject.kind={kind},involvedObject.name={name}"),
        )
    }

    /// Events about the Plan as it exists now (not an earlier Plan of the same name), as
    /// "Reason: message".
    pub fn plan_events(&self, name: &str) -> Vec<String> {
        let uid = self
            .plan(name)
            .and_then(|p| p.metadata.uid)
            .expect("the Plan exists");
        self.events_of(NAMESPACE, &uid)
    }

    /// Events about the node as it exists now (not an earlier node of the same name).
    pub fn node_events(&self, name: &str) -> Vec<String> {
        let uid = self
            .node(name)
            .and_then(|n| n.metadata.uid)
            .expect("the node exists");
        self.events_of("default", &uid)
    }

    pub fn events_of(&self, namespace: &str, uid: &str) -> Vec<String> {
        self.events_where(namespace, &format!("involvedObject.uid={uid}"))
    }

    /// Events matching a field selector, as "Reason: message".
    fn events_where(&self, namespace: &str, fields: &str) -> Vec<String> {
        let out = self.ctx.kubectl(&[
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            fields,
            "-o",
            "json",
        ]);
        let list: Value = serde_json::from_str(&out.expect_ok().stdout).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e["reason"].as_str().unwrap_or(""),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    pub fn delete_plan(&self, name: &str) {
        self.ctx
            .kubectl(&[
                "-n",
                NAMESPACE,
                "delete",
                "plan",
                name,
                "--ignore-not-found",
                "--wait=true",
            ])
            .expect_ok();
    }

    /// Removes the scenario's Plans (those selecting its label or named after it), Jobs and nodes.
    pub fn cleanup(&self) {
        let api: Api<Plan> = Api::namespaced(self.ctx.client.clone(), NAMESPACE);
        let plans = self.ctx.block_on(api.list(&ListParams::default())).unwrap();
        for plan in plans.items {
            let name = plan.metadata.name.clone().unwrap_or_default();
            let ours = name.starts_with(&self.name)
                || serde_json::to_string(&plan.spec.node_selector)
                    .unwrap_or_default()
                    .contains(&format!("\"{}\"", self.name));
            if ours {
                self.delete_plan(&name);
            }
        }
        let nodes: Api<Node> = Api::all(self.ctx.client.clone());
        let selector = format!("{SCENARIO_LABEL}={}", self.name);
        let _ = self.ctx.block_on(nodes.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels(&selector),
        ));
        wait(
            "the scenario's nodes to go",
            Duration::from_secs(60),
            || {
                let left = self
                    .ctx
                    .block_on(nodes.list(&ListParams::default().labels(&selector)))
                    .unwrap();
                left.items.is_empty().then_some(())
            },
        );
    }
}

impl Drop for Scenario<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.cleanup();
        }
    }
}

/// Watches a Plan's Jobs for the whole scenario and checks the concurrency invariant at every
/// change: never more than the allowed number of nodes with an unfinished Job of one hash.
pub struct JobWatch {
    state: Arc<Mutex<WatchState>>,
    task: tokio::task::JoinHandle<()>,
}

/// One Job as the watch last saw it.
#[derive(Clone, Debug)]
struct Seen {
    node: String,
    hash: String,
    running: bool,
}

#[derive(Default)]
pub struct WatchState {
    /// Job name → what the watch last saw of it.
    jobs: BTreeMap<String, Seen>,
    /// A relist in progress: the Jobs it has shown so far, swapped in whole when it ends, so the
    /// count never mixes Jobs from before a watch gap with Jobs listed after it.
    relist: Option<BTreeMap<String, Seen>>,
    /// Highest number of nodes seen with an unfinished Job of one hash.
    pub max_unfinished: usize,
    /// The running Jobs at that moment, for the failure message.
    worst: Vec<String>,
    /// Job UIDs created per node.
    pub created: BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl WatchState {
    fn apply(&mut self, event: &watcher::Event<Job>, plan_label: &str) {
        let seen = |job: &Job| {
            let labels = job.metadata.labels.clone().unwrap_or_default();
            let finished = job
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                    })
                });
            Seen {
                node: labels
                    .get("upgrade.cattle.io/node")
                    .cloned()
                    .unwrap_or_default(),
                hash: labels.get(plan_label).cloned().unwrap_or_default(),
                running: !finished
                    && job.metadata.deletion_timestamp.is_none()
                    && job.spec.as_ref().and_then(|s| s.parallelism) != Some(0),
            }
        };
        let mut note_created = |job: &Job, node: &str| {
            self.created
                .entry(node.to_owned())
                .or_default()
                .insert(job.metadata.uid.clone().unwrap_or_default());
        };
        let name = |job: &Job| job.metadata.name.clone().unwrap_or_default();
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                return;
            }
            watcher::Event::InitApply(job) => {
                let job_seen = seen(job);
                note_created(job, &job_seen.node);
                self.relist
                    .get_or_insert_default()
                    .insert(name(job), job_seen);
                return;
            }
            watcher::Event::InitDone => {
                self.jobs = self.relist.take().unwrap_or_default();
            }
            watcher::Event::Apply(job) => {
                let job_seen = seen(job);
                note_created(job, &job_seen.node);
                self.jobs.insert(name(job), job_seen);
            }
            watcher::Event::Delete(job) => {
                self.jobs.remove(&name(job));
            }
        }
        let mut per_hash: BTreeMap<&String, std::collections::BTreeSet<&String>> = BTreeMap::new();
        for seen in self.jobs.values().filter(|s| s.running) {
            per_hash.entry(&seen.hash).or_default().insert(&seen.node);
        }
        let now = per_hash
            .values()
            .map(|nodes| nodes.len())
            .max()
            .unwrap_or(0);
        if now > self.max_unfinished {
            self.max_unfinished = now;
            self.worst = self
                .jobs
                .iter()
                .filter(|(_, s)| s.running)
                .map(|(name, s)| format!("{name} on {} (hash {})", s.node, s.hash))
                .collect();
        }
    }
}

impl JobWatch {
    pub fn start(ctx: &Ctx, plan: &str) -> JobWatch {
        let api: Api<Job> = Api::namespaced(ctx.client.clone(), NAMESPACE);
        let config = watcher::Config::default().labels(&format!("upgrade.cattle.io/plan={plan}"));
        let state = Arc::new(Mutex::new(WatchState::default()));
        let shared = state.clone();
        let plan_label = format!("plan.upgrade.cattle.io/{plan}");
        let task = ctx.runtime.spawn(async move {
            // With backoff: the API server may be restarted under the watch.
            let mut stream =
                kube::runtime::WatchStreamExt::default_backoff(watcher::watcher(api, config))
                    .boxed();
            while let Some(event) = stream.next().await {
                let Ok(event) = event else { continue };
                shared.lock().unwrap().apply(&event, &plan_label);
            }
        });
        JobWatch { state, task }
    }

    pub fn max_unfinished(&self) -> usize {
        self.state.lock().unwrap().max_unfinished
    }

    /// The Jobs that were running when the most nodes ran at once.
    pub fn worst_moment(&self) -> Vec<String> {
        self.state.lock().unwrap().worst.clone()
    }

    /// How many distinct Jobs each node got.
    pub fn jobs_per_node(&self) -> BTreeMap<String, usize> {
        self.state
            .lock()
            .unwrap()
            .created
            .iter()
            .map(|(n, uids)| (n.clone(), uids.len()))
            .collect()
    }
}

/// What a rollout must show, also when interrupted: never more than `concurrency` nodes with an
/// unfinished Job, every node upgraded by exactly one Job, and none left cordoned.
pub fn assert_rollout_kept_its_promises(s: &Scenario, watch: &JobWatch, concurrency: usize) {
    assert!(
        watch.max_unfinished() <= concurrency,
        "{} nodes ran at once: {:#?}",
        watch.max_unfinished(),
        watch.worst_moment()
    );
    let per_node = watch.jobs_per_node();
    assert_eq!(per_node.len(), s.nodes.len(), "{per_node:?}");
    assert!(
        per_node.values().all(|n| *n == 1),
        "a node ran twice: {per_node:?}"
    );
    for node in &s.nodes {
        assert!(!s.unschedulable(node), "{node} left cordoned");
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The watch's own check, with no cluster: a relist after a watch gap that lists the Jobs created
/// meanwhile before the ones that finished meanwhile must not count those as running together.
pub fn job_watch_counts_a_relist_as_one_snapshot() {
    let job = |node: &str, finished: bool| -> Job {
        let conditions = if finished {
            json!([{"type": "Complete", "status": "True"}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("apply-on-{node}"),
                "uid": format!("uid-{node}"),
                "labels": {"upgrade.cattle.io/node": node, "plan.upgrade.cattle.io/p": "h"},
            },
            "status": {"conditions": conditions},
        }))
        .unwrap()
    };
    let mut state = WatchState::default();
    let label = "plan.upgrade.cattle.io/p";
    for event in [
        watcher::Event::Apply(job("n3", false)),
        watcher::Event::Apply(job("n4", false)),
        // The gap: n3 and n4 finished, n1 and n2 started; the list comes sorted by name.
        watcher::Event::Init,
        watcher::Event::InitApply(job("n1", false)),
        watcher::Event::InitApply(job("n2", false)),
        watcher::Event::InitApply(job("n3", true)),
        watcher::Event::InitApply(job("n4", true)),
        watcher::Event::InitDone,
    ] {
        state.apply(&event, label);
    }
    assert_eq!(state.max_unfinished, 2, "{:?}", state.worst);
    assert_eq!(state.created.len(), 4);
    // A Job deleted during the gap is gone after the relist.
    for event in [
        watcher::Event::Init,
        watcher::Event::InitApply(job("n1", false)),
        watcher::Event::InitDone,
        watcher::Event::Apply(job("n5", false)),
    ] {
        state.apply(&event, label);
    }
    assert_eq!(state.jobs.len(), 2);
    assert_eq!(state.max_unfinished, 2);
    // Three running at once is still seen.
    state.apply(&watcher::Event::Apply(job("n6", false)), label);
    assert_eq!(state.max_unfinished, 3, "{:?}", state.worst);
}
