//! `system-upgrade-controller preview`: what a Plan would do, changing nothing. It reads the
//! cluster as kubectl would (the Plan if it exists, Nodes, the Plan's Jobs and their pods, the
//! Secrets it names), asks the channel for the version when the Plan has one, and runs the
//! controller's own decision on it: once as things are now (what holds the rollout, and why),
//! then played forward in simulated time with the holds lifted (`controller::simulate`), which
//! gives the order in which the nodes would be upgraded. A rule of the controller shows here
//! without a line of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::admission;
use serde::Serialize;

use crate::api::{
    ANNOTATION_APPROVE, GROUP, IntOrPercent, LABEL_CONTROLLER, LABEL_HOSTNAME, LABEL_PAUSE,
    LABEL_PLAN, PLAN_LABEL_PREFIX, Phase, Plan, PlanRun, Reason,
};
use crate::check;
use crate::config::{PreviewConfig, kube_config};
use crate::controller::decide::{self, Decision, Peer, Resolution};
use crate::controller::job::{Hook, JobSettings};
use crate::controller::resolve::ChannelClient;
use crate::controller::select;
use crate::controller::simulate::Cluster;
use crate::controller::status::{self, COMPLETE, LATEST_RESOLVED};
use crate::error::Error;
use crate::syntax::duration;
use crate::yaml;

/// What the preview of one Plan is made from.
pub struct Input<'a> {
    /// The Plan as written (a file) or as stored.
    pub plan: &'a Plan,
    /// The Plan as stored in the cluster, if it is (its UID orders the nodes; its status says
    /// which nodes are applying).
    pub stored: Option<&'a Plan>,
    /// What the channel (or `spec.version`) answered.
    pub resolution: Resolution,
    pub nodes: &'a [Node],
    /// The Plan's Jobs in the cluster, and their pods.
    pub jobs: &'a [Job],
    pub pods: &'a [Pod],
    /// Secrets of the Plan's namespace that it names, by name.
    pub secrets: &'a BTreeMap<String, Secret>,
    pub now: Timestamp,
    /// The other Plans of the namespace (`spec.dependsOn`, `spec.exclusiveGroup`).
    pub peers: &'a [Peer],
}

/// The preview of every Plan asked for, as text, and whether every one is valid.
pub async fn run(config: &PreviewConfig) -> Result<(String, bool), Error> {
    let client = Client::try_from(
        kube_config(config.kubeconfig.as_deref(), config.context.as_deref()).await?,
    )
    .map_err(|e| Error::KubeConfig(e.to_string()))?;
    let plans = match &config.plan {
        Some(name) => {
            let name = name
                .strip_prefix("plan/")
                .or_else(|| name.strip_prefix("plans/"))
                .unwrap_or(name);
            let api: Api<Plan> = Api::namespaced(client.clone(), &config.namespace);
            let plan = api
                .get_opt(name)
                .await
                .map_err(|e| Error::Cluster(format!("reading Plan {name}: {e}")))?
                .ok_or_else(|| {
                    Error::Cluster(format!(
                        "Plan {name} not found in namespace {}",
                        config.namespace
                    ))
                })?;
            vec![plan]
        }
        None => read_plans(&config.files, &config.namespace)?,
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Cluster(format!("listing nodes: {e}")))?
        .items;
    let channels = ChannelClient::new(Duration::from_secs(30))
        .map_err(|e| Error::ChannelClient(e.to_string()))?;
    let mut previews = Vec::new();
    for plan in &plans {
        let namespace = plan.metadata.namespace.clone().unwrap_or_default();
        let name = plan.metadata.name.clone().unwrap_or_default();
        let stored = if config.plan.is_some() {
            Some(plan.clone())
        } else {
            let api: Api<Plan> = Api::namespaced(client.clone(), &namespace);
            api.get_opt(&name)
                .await
                .map_err(|e| Error::Cluster(format!("reading Plan {name}: {e}")))?
        };
        let resolution = resolve(plan, stored.as_ref(), &channels).await;
        let (jobs, pods) = jobs_of(&client, &namespace, &name).await?;
        let secrets = secrets_of(&client, plan).await?;
        let peers = peers_of(&client, plan).await?;
        let input = Input {
            plan,
            stored: stored.as_ref(),
            resolution,
            nodes: &nodes,
            jobs: &jobs,
            pods: &pods,
            secrets: &secrets,
            now: Timestamp::now(),
            peers: &peers,
        };
        previews.push(preview(&input));
    }
    let valid = previews.iter().all(|p| p.valid);
    let text = || previews.iter().map(|p| p.text() + "\n").collect();
    Ok((config.output.render(&previews, text), valid))
}

/// The other Plans of the Plan's namespace, when it has an order to keep with them.
async fn peers_of(client: &Client, plan: &Plan) -> Result<Vec<Peer>, Error> {
    if !plan.spec.ordered() {
        return Ok(Vec::new());
    }
    let namespace = plan.metadata.namespace.clone().unwrap_or_default();
    let name = plan.metadata.name.clone().unwrap_or_default();
    let api: Api<Plan> = Api::namespaced(client.clone(), &namespace);
    let plans = api
        .list(&ListParams::default())
        .await
        .map_err(|e| Error::Cluster(format!("listing the Plans of {namespace}: {e}")))?;
    Ok(plans
        .items
        .iter()
        .filter(|p| p.metadata.name.as_deref() != Some(name.as_str()))
        .map(Peer::of)
        .collect())
}

/// The Plans of some files, with the namespace given where they name none.
fn read_plans(files: &[PathBuf], namespace: &str) -> Result<Vec<Plan>, Error> {
    let mut plans = Vec::new();
    for file in files {
        let text = check::read(file)
            .map_err(|e| Error::Unreadable(format!("{}: cannot read: {e}", file.display())))?;
        for document in yaml::documents(&text)? {
            let is_plan = document["kind"] == "Plan"
                && document["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(&format!("{GROUP}/")));
            if !is_plan {
                continue;
            }
            let mut plan: Plan = serde_json::from_value(document)
                .map_err(|e| Error::Preview(format!("{}: not a Plan: {e}", file.display())))?;
            if plan.metadata.namespace.is_none() {
                plan.metadata.namespace = Some(namespace.to_owned());
            }
            plans.push(plan);
        }
    }
    if plans.is_empty() {
        return Err(Error::Preview("no Plan in the files given".into()));
    }
    Ok(plans)
}

/// What the channel answers now, as the controller's poll would put it.
async fn resolve(plan: &Plan, stored: Option<&Plan>, channels: &ChannelClient) -> Resolution {
    if let Some(version) = plan.spec.version.as_deref().filter(|v| !v.is_empty()) {
        return Resolution::Version(version.to_owned());
    }
    let Some(channel) = plan.spec.channel.as_deref().filter(|c| !c.is_empty()) else {
        return Resolution::Missing;
    };
    let previous = stored
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.latest_version.clone())
        .unwrap_or_default();
    match channels.resolve(channel, &previous, "").await {
        Ok(version) => Resolution::Channel(version),
        Err(e) => Resolution::ChannelFailed {
            error: e.0,
            retry: Duration::from_secs(5),
        },
    }
}

/// The Plan's Jobs of this controller in the cluster, and their pods.
async fn jobs_of(
    client: &Client,
    namespace: &str,
    plan: &str,
) -> Result<(Vec<Job>, Vec<Pod>), Error> {
    let controller = JobSettings::default().controller_name;
    let selector = format!("{LABEL_PLAN}={plan},{LABEL_CONTROLLER}={controller}");
    let params = ListParams::default().labels(&selector);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let jobs = jobs
        .list(&params)
        .await
        .map_err(|e| Error::Cluster(format!("listing the Jobs of Plan {plan}: {e}")))?
        .items;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pods = pods
        .list(&ListParams::default().labels(&format!("{LABEL_PLAN}={plan}")))
        .await
        .map_err(|e| Error::Cluster(format!("listing the pods of Plan {plan}: {e}")))?
        .items;
    Ok((jobs, pods))
}

/// The Secrets a Plan names that exist, by name.
async fn secrets_of(client: &Client, plan: &Plan) -> Result<BTreeMap<String, Secret>, Error> {
    let namespace = plan.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut found = BTreeMap::new();
    for spec in plan.spec.secrets.iter().flatten() {
        let secret = api.get_opt(&spec.name).await.map_err(|e| {
            Error::Cluster(format!("reading Secret {namespace}/{}: {e}", spec.name))
        })?;
        if let Some(secret) = secret {
            found.insert(spec.name.clone(), secret);
        }
    }
    Ok(found)
}

/// The Plan the controller would see: as stored (a file's spec over the stored Plan's
/// metadata and status), or as the webhook would create it.
fn as_seen(input: &Input<'_>) -> Plan {
    match input.stored {
        Some(stored) => {
            let mut plan = stored.clone();
            plan.spec = input.plan.spec.clone();
            plan.metadata.annotations = input.plan.metadata.annotations.clone();
            plan
        }
        None => admission::created(input.plan),
    }
}

/// Why the controller would start no node of the Plan as seen (none when it is valid).
fn problems(plan: &Plan, input: &Input<'_>) -> Vec<String> {
    let secrets: BTreeMap<String, &Secret> =
        input.secrets.iter().map(|(k, v)| (k.clone(), v)).collect();
    decide::problems(plan, &secrets)
        .into_iter()
        .map(|p| p.to_string())
        .collect()
}

/// The preview of one Plan, as data (`-o json|yaml`); [`Preview::text`] renders it for people.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    pub namespace: String,
    pub plan: String,
    /// The controller would start no node of an invalid Plan; `problems` says why.
    pub valid: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// The version the controller would resolve (as `status.latestVersion`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Where it comes from: `spec.version` or `the channel`.
    pub version_from: String,
    /// What the resolution says besides (why the version is unknown, a channel not followed).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version_note: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The stored Plan's last rollouts (`status.history`), newest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rollouts: Vec<PlanRun>,
    /// The nodes; none without a `nodeSelector`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodesPreview>,
    /// Nodes at a time, and the percentage it comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_of: Option<String>,
    /// What holds the rollout now, and the gates that will hold each node on its way.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub holds: Vec<String>,
    /// Nodes a version rule holds now, in the controller's words.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub version_holds: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderPreview>,
}

/// The nodes a Plan matches and what is of each.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodesPreview {
    /// How many match `spec.nodeSelector`, and how many of those it selects.
    pub matching: usize,
    pub selected: usize,
    pub done: Vec<String>,
    pub opted_out: Vec<String>,
    pub without_hostname: Vec<String>,
    pub held: Vec<String>,
    pub applying: Vec<String>,
}

/// The order in which the nodes would start.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderPreview {
    /// Nothing can be ordered before the version is known.
    pub waiting_for_version: bool,
    /// Every selected node is done.
    pub nothing_left: bool,
    /// The Plan is not in the cluster: the order depends on the UID it gets.
    pub tentative: bool,
    pub starting: usize,
    pub before_hook: bool,
    pub after_hook: bool,
    /// Batches of nodes, each starting as the one before frees its slots; the first holds the
    /// nodes applying now.
    pub batches: Vec<Vec<String>>,
    /// Where a first wave's hold (`spec.canary`) stands: before the batch of that index.
    pub canary_holds: Vec<CanaryHold>,
    /// Where and why the rollout would stop before the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stops: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryHold {
    pub before_batch: usize,
    pub message: String,
}

/// The preview of one Plan, as text.
pub fn report(input: &Input<'_>) -> String {
    preview(input).text()
}

/// The preview of one Plan.
pub fn preview(input: &Input<'_>) -> Preview {
    let plan = as_seen(input);
    let mut out = Preview {
        namespace: plan.metadata.namespace.clone().unwrap_or_default(),
        plan: plan.metadata.name.clone().unwrap_or_default(),
        ..Preview::default()
    };
    out.problems = problems(&plan, input);
    out.valid = out.problems.is_empty();
    if !out.valid {
        return out;
    }
    let mut cluster = Cluster::new(
        plan.clone(),
        input.nodes.to_vec(),
        input.resolution.clone(),
        input.now,
    );
    cluster.jobs = input.jobs.to_vec();
    cluster.pods = input.pods.to_vec();
    cluster.secrets = input.secrets.clone();
    cluster.peers = input.peers.to_vec();
    let now = cluster.decide();
    let conditions = now.status.conditions.clone().unwrap_or_default();
    out.version_from = match input.resolution {
        Resolution::Version(_) => "spec.version",
        _ => "the channel",
    }
    .to_owned();
    let version = now.status.latest_version.clone().unwrap_or_default();
    let hash = now.status.latest_hash.clone().unwrap_or_default();
    let resolved = status::get(&conditions, LATEST_RESOLVED);
    out.version_note = resolved.and_then(|c| c.message.clone()).unwrap_or_default();
    if !version.is_empty() && status::is(&conditions, LATEST_RESOLVED, "True") {
        out.version = Some(version.clone());
    }
    out.hash = (!hash.is_empty()).then(|| hash.clone());
    out.rollouts = (input.stored)
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.history.clone())
        .unwrap_or_default();
    out.nodes = nodes(&plan, input, &hash);
    let Some(eligible) = out.nodes.as_ref().map(|n| n.selected) else {
        return out;
    };
    let concurrency = plan
        .spec
        .concurrency
        .as_ref()
        .and_then(|c| c.nodes(eligible))
        .unwrap_or(0);
    out.concurrency = Some(concurrency);
    if let Some(c @ IntOrPercent::Text(_)) = &plan.spec.concurrency {
        out.concurrency_of = Some(c.to_string());
    }
    out.holds = holds(&plan, &now);
    out.version_holds = version_holds(&now);
    out.order = Some(if version.is_empty() || hash.is_empty() {
        OrderPreview {
            waiting_for_version: true,
            ..OrderPreview::default()
        }
    } else {
        order(input, cluster)
    });
    out
}

impl Preview {
    /// The preview as people read it.
    pub fn text(&self) -> String {
        let mut out = format!("Plan {}/{}\n", self.namespace, self.plan);
        let line = |out: &mut String, key: &str, value: &str| {
            out.push_str(&format!("  {key:<12} {value}\n"));
        };
        if !self.valid {
            line(&mut out, "invalid:", "the controller would start no node:");
            for problem in &self.problems {
                out.push_str(&format!("    {problem}\n"));
            }
            return out;
        }
        let version = match (&self.version, self.version_note.as_str()) {
            (None, note) => format!("unknown: {note}"),
            (Some(v), "") => format!("{v} (from {})", self.version_from),
            (Some(v), note) => format!("{v} (from {}; {note})", self.version_from),
        };
        line(&mut out, "version:", &version);
        line(&mut out, "hash:", self.hash.as_deref().unwrap_or("unknown"));
        for (i, run) in self.rollouts.iter().enumerate() {
            let key = if i == 0 { "rollouts:" } else { "" };
            let ended = match (&run.result, &run.finished) {
                (Some(result), Some(at)) => format!("{result} at {at}"),
                (Some(result), None) => result.clone(),
                _ => "running".to_owned(),
            };
            out.push_str(&format!(
                "  {key:<12} {} from {}: {ended}; {}/{} done, {} failed\n",
                run.version, run.started, run.done, run.selected, run.failed
            ));
        }
        let Some(nodes) = &self.nodes else {
            line(&mut out, "nodes:", "none: spec.nodeSelector is not set");
            return out;
        };
        nodes.text(&mut out, &self.plan);
        let concurrency = self.concurrency.unwrap_or(0);
        let how = match &self.concurrency_of {
            Some(of) => format!(
                "{concurrency} at a time ({of} of {} selected nodes)",
                nodes.selected
            ),
            None => format!("{concurrency} at a time"),
        };
        line(&mut out, "concurrency:", &how);
        for hold in &self.holds {
            line(&mut out, "hold:", hold);
        }
        if !self.version_holds.is_empty() {
            out.push_str(&format!(
                "  {:<12} {} node(s) held by a version rule now:\n",
                "versions:",
                self.version_holds.len()
            ));
            for held in &self.version_holds {
                out.push_str(&format!("    {held}\n"));
            }
        }
        if let Some(order) = &self.order {
            order.text(&mut out, concurrency);
        }
        out
    }
}

impl NodesPreview {
    fn text(&self, out: &mut String, plan: &str) {
        out.push_str(&format!(
            "  {:<12} {} match spec.nodeSelector; {} selected, {} done\n",
            "nodes:",
            self.matching,
            self.selected,
            self.done.len()
        ));
        let label = format!("{PLAN_LABEL_PREFIX}{plan}");
        for (what, names) in [
            ("done".to_owned(), &self.done),
            (format!("opted out ({label}=disabled)"), &self.opted_out),
            (
                format!("without the {LABEL_HOSTNAME} label, never selected"),
                &self.without_hostname,
            ),
            (format!("held ({LABEL_PAUSE}=true)"), &self.held),
            ("applying now".to_owned(), &self.applying),
        ] {
            if !names.is_empty() {
                out.push_str(&format!(
                    "    {what} ({}): {}\n",
                    names.len(),
                    names.join(", ")
                ));
            }
        }
    }
}

impl OrderPreview {
    fn text(&self, out: &mut String, concurrency: usize) {
        if self.waiting_for_version {
            out.push_str(&format!(
                "  {:<12} none until the version is known: the controller starts nothing before\n",
                "order:"
            ));
            return;
        }
        if self.nothing_left {
            out.push_str(&format!("  {:<12} nothing left to upgrade\n", "order:"));
            return;
        }
        if self.tentative {
            out.push_str(
                "  (the Plan is not in the cluster yet: the order below depends on the UID it gets \
                 when created, so it is one possible order)\n",
            );
        }
        out.push_str(&format!(
            "  {:<12} {} node(s) to start, at most {concurrency} running at once; each \
             batch starts as the one before frees its slots\n",
            "order:", self.starting
        ));
        if self.before_hook {
            out.push_str(
                "    first: the before hook (spec.hooks.before); nodes start once it succeeded\n",
            );
        }
        let hold_line = |out: &mut String, i: usize| {
            for hold in self.canary_holds.iter().filter(|h| h.before_batch == i) {
                out.push_str(&format!(
                    "    then: the first wave holds the rest (spec.canary): {}; shown as if lifted\n",
                    hold.message
                ));
            }
        };
        for (i, batch) in self.batches.iter().enumerate() {
            hold_line(out, i);
            out.push_str(&format!("    {}: {}\n", i + 1, batch.join(", ")));
        }
        hold_line(out, self.batches.len());
        if self.after_hook {
            out.push_str(
                "    last: the after hook (spec.hooks.after); the Plan is Complete once it succeeded\n",
            );
        }
        if let Some(why) = &self.stops {
            out.push_str(&format!(
                "  {:<12} the rollout stops there: {why}\n",
                "then:"
            ));
        }
    }
}

/// The nodes the Plan matches, selects, and has done; `None` without a `nodeSelector`.
fn nodes(plan: &Plan, input: &Input<'_>, hash: &str) -> Option<NodesPreview> {
    let name = plan.metadata.name.clone().unwrap_or_default();
    let Ok(Some(selector)) = select::node_selector(plan) else {
        return None;
    };
    let label = format!("{PLAN_LABEL_PREFIX}{name}");
    let node_name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    let matching: Vec<&Node> = input
        .nodes
        .iter()
        .filter(|n| {
            let empty = Default::default();
            let labels = n.metadata.labels.as_ref().unwrap_or(&empty);
            kube::core::SelectorExt::matches(&selector, labels)
        })
        .collect();
    let names = |nodes: &[&Node]| -> Vec<String> { nodes.iter().map(|n| node_name(n)).collect() };
    let no_hostname: Vec<&Node> = matching
        .iter()
        .copied()
        .filter(|n| !n.labels().contains_key(LABEL_HOSTNAME))
        .collect();
    let opted_out: Vec<&Node> = matching
        .iter()
        .copied()
        .filter(|n| n.labels().get(&label).is_some_and(|v| v == "disabled"))
        .collect();
    let eligible: Vec<&Node> = matching
        .iter()
        .copied()
        .filter(|n| select::eligible(&name, &selector, n))
        .collect();
    let done: Vec<&Node> = eligible
        .iter()
        .copied()
        .filter(|n| !hash.is_empty() && select::done(&name, n, hash))
        .collect();
    let applying: BTreeSet<String> = applying(input).into_iter().collect();
    let (running, waiting): (Vec<&Node>, Vec<&Node>) = eligible
        .iter()
        .filter(|n| !done.iter().any(|d| d.metadata.name == n.metadata.name))
        .partition(|n| applying.contains(&node_name(n)));
    let held: Vec<&Node> = waiting.into_iter().filter(|n| select::paused(n)).collect();
    Some(NodesPreview {
        matching: matching.len(),
        selected: eligible.len(),
        done: names(&done),
        opted_out: names(&opted_out),
        without_hostname: names(&no_hostname),
        held: names(&held),
        applying: names(&running),
    })
}

/// The nodes a version rule holds now (a downgrade, a skipped minor, servers behind), each with
/// the controller's words; servers the rollout itself upgrades first free their agents in the
/// order below.
fn version_holds(now: &Decision) -> Vec<String> {
    now.status
        .nodes
        .iter()
        .flatten()
        .filter(|e| e.phase == Phase::Held.as_str())
        .map(|e| e.message.clone().unwrap_or_else(|| e.name.clone()))
        .collect()
}

/// The nodes applying as stored.
fn applying(input: &Input<'_>) -> Vec<String> {
    input
        .stored
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.applying.clone())
        .unwrap_or_default()
}

/// What holds the rollout now, in the controller's words (its Complete condition), and the
/// gates that will hold each node on its way.
fn holds(plan: &Plan, now: &Decision) -> Vec<String> {
    let mut notes = Vec::new();
    let conditions = now.status.conditions.clone().unwrap_or_default();
    if let Some(complete) = status::get(&conditions, COMPLETE) {
        let reason = complete.reason.as_deref().unwrap_or_default();
        let message = complete.message.clone().unwrap_or_default();
        let holding = [
            Reason::Paused,
            Reason::WaitingForHealth,
            Reason::Waiting,
            Reason::CRDOutdated,
            Reason::DowngradeHeld,
            Reason::MinorSkipHeld,
            Reason::WaitingForServers,
            Reason::RunningHook,
            Reason::HookFailed,
            Reason::Cancelled,
            Reason::AwaitingApproval,
            Reason::Soaking,
            Reason::WaitingForPlans,
            Reason::WaitingForGroup,
        ];
        if holding.iter().any(|r| r.as_str() == reason) {
            notes.push(message);
        }
    }
    for (field, w) in (plan
        .spec
        .window
        .iter()
        .map(|w| ("spec.window".to_owned(), w)))
    .chain(
        plan.spec
            .windows
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, w)| (format!("spec.windows[{i}]"), w)),
    ) {
        let days: Vec<String> = w.days.iter().flatten().map(|d| d.0.clone()).collect();
        let stop = if w.on_close.as_deref() == Some("Stop") {
            "; once it closes, only upgrades that began go on (onClose: Stop)"
        } else {
            ""
        };
        notes.push(format!(
            "{field}: a rollout starts only within {} {}-{} {}{stop}",
            days.join(","),
            w.start_time.as_deref().unwrap_or_default(),
            w.end_time.as_deref().unwrap_or_default(),
            w.time_zone.as_deref().unwrap_or("UTC"),
        ));
    }
    if let Some(names) = plan.spec.depends_on.as_ref().filter(|d| !d.is_empty()) {
        notes.push(format!(
            "dependsOn: no node starts until Plans {} are Complete for their current version",
            names.join(", ")
        ));
    }
    if let Some(group) = &plan.spec.exclusive_group {
        notes.push(format!(
            "exclusiveGroup {group}: no node starts while another Plan of the group has an \
             upgrade or a hook under way"
        ));
    }
    if let Some(canary) = &plan.spec.canary {
        let wave = match (&canary.nodes, &canary.node_selector) {
            (Some(nodes), _) => format!(
                "the first {} node(s) in the order below",
                nodes.to_string().trim_matches('"')
            ),
            _ => "the selected nodes that match canary.nodeSelector".to_owned(),
        };
        let lift = canary.soak_for.as_deref().map_or_else(
            || format!("until approved ({ANNOTATION_APPROVE})"),
            |soak| format!("until approved ({ANNOTATION_APPROVE}) or soaked for {soak} with the health gates open"),
        );
        notes.push(format!(
            "canary: {wave} run alone, then the rest waits {lift}"
        ));
    }
    if let Some(budget) = &plan.spec.failure_budget {
        let nodes = match &budget.nodes {
            IntOrPercent::Int(n) => n.to_string(),
            IntOrPercent::Text(t) => t.clone(),
        };
        notes.push(format!(
            "failureBudget: the rollout goes on without up to {nodes} failed node(s), left {}",
            budget
                .failed_nodes
                .as_deref()
                .unwrap_or("Cordoned")
                .to_lowercase()
        ));
    }
    if let Some(gates) = &plan.spec.health_gates {
        if let Some(ready_for) = gates.node_ready_for.as_deref() {
            let shown = duration::parse(ready_for).map_or(ready_for.to_owned(), duration::format);
            notes.push(format!(
                "healthGates.nodeReadyFor: each node holds its slot until Ready and schedulable \
                 for {shown} after its Job"
            ));
        }
        if let Some(prometheus) = &gates.prometheus {
            notes.push(format!(
                "healthGates.prometheus: the controller asks {} for {:?} before each start \
                 (not asked by preview)",
                prometheus.url, prometheus.query
            ));
        }
        for (i, gate) in gates.objects.iter().flatten().enumerate() {
            let which = gate.name.as_ref().map_or_else(
                || format!("{}s", gate.kind),
                |n| format!("{} {n}", gate.kind),
            );
            notes.push(format!(
                "healthGates.objects[{i}]: the controller checks {} on {which} before each \
                 start (not checked by preview)",
                gate.expression
            ));
        }
    }
    notes
}

/// The order in which the nodes would start: the controller's decision played forward with
/// what holds it now lifted (a pause, the window, the health gates), every upgrade succeeding.
fn order(input: &Input<'_>, mut cluster: Cluster) -> OrderPreview {
    cluster.plan.spec.paused = None;
    cluster.plan.spec.depends_on = None;
    cluster.plan.spec.exclusive_group = None;
    cluster.plan.spec.window = None;
    cluster.plan.spec.windows = None;
    cluster.query = None;
    for node in &mut cluster.nodes {
        let conditions = node
            .status
            .get_or_insert_with(NodeStatus::default)
            .conditions
            .get_or_insert_default();
        conditions.retain(|c| c.type_ != "Ready");
        conditions.push(NodeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(Time(Timestamp::UNIX_EPOCH)),
            ..NodeCondition::default()
        });
    }
    cluster.approves = true;
    let uid = cluster.plan.metadata.uid.clone().unwrap_or_default();
    let rollout = cluster.play();
    let hash = rollout.last.status.latest_hash.clone().unwrap_or_default();
    // Within a batch, in the order the controller picked them (its Jobs start together).
    let picked = |name: &String| {
        input
            .nodes
            .iter()
            .find(|n| n.metadata.name.as_ref() == Some(name))
            .map(|n| select::start_order_key(n, &uid, &hash))
    };
    let running = applying(input);
    // Batches of nodes, and where a first wave's hold (spec.canary) stands between them.
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut holds_after: Vec<(usize, String)> = Vec::new();
    for step in &rollout.steps {
        if let Some(held) = &step.held {
            holds_after.push((batches.len(), held.clone()));
        }
        if !step.started.is_empty() {
            let mut batch = step.started.clone();
            batch.sort_by_cached_key(picked);
            batches.push(batch);
        }
    }
    let starting: usize = batches.iter().map(Vec::len).sum();
    if starting == 0 && running.is_empty() && rollout.complete {
        return OrderPreview {
            nothing_left: true,
            ..OrderPreview::default()
        };
    }
    let first_new = rollout.steps.first().is_some_and(|s| !s.started.is_empty());
    if !running.is_empty() {
        let mut first: Vec<String> = running.clone();
        if first_new && !batches.is_empty() {
            first.extend(batches.remove(0));
        } else {
            // A batch more before each hold.
            for (after, _) in &mut holds_after {
                *after += 1;
            }
        }
        batches.insert(0, first);
    }
    let ran = |hook: Hook| rollout.steps.iter().any(|s| s.hooks.contains(&hook));
    let stops = (!rollout.complete).then(|| {
        let conditions = rollout.last.status.conditions.clone().unwrap_or_default();
        status::get(&conditions, COMPLETE)
            .map(|c| {
                format!(
                    "{}: {}",
                    c.reason.as_deref().unwrap_or_default(),
                    c.message.as_deref().unwrap_or_default()
                )
            })
            .unwrap_or_default()
    });
    OrderPreview {
        waiting_for_version: false,
        nothing_left: false,
        tentative: input.stored.is_none() && starting > 0,
        starting,
        before_hook: ran(Hook::Before),
        after_hook: ran(Hook::After),
        batches,
        canary_holds: holds_after
            .into_iter()
            .map(|(before_batch, message)| CanaryHold {
                before_batch,
                message,
            })
            .collect(),
        stops,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        let mut all = json!({"kubernetes.io/hostname": name});
        for (k, v) in labels.as_object().unwrap() {
            all[k] = v.clone();
        }
        serde_json::from_value(
            json!({"metadata": {"name": name, "uid": format!("uid-{name}"), "labels": all},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .unwrap()
    }

    fn plan(spec: serde_json::Value) -> Plan {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "system-upgrade", "uid": "plan-uid"}, "spec": spec}))
            .unwrap()
    }

    #[test]
    fn nodes_are_sorted_into_done_opted_out_held_and_batches_in_start_order() {
        let plan = plan(json!({"concurrency": "40%", "version": "v1.30.4+k3s1",
            "nodeSelector": {"matchLabels": {"pool": "a"}}, "upgrade": {"image": "rancher/k3s-upgrade"}}));
        let mut nodes: Vec<Node> = ["n1", "n2", "n3", "n4", "n5", "n6"]
            .iter()
            .map(|n| node(n, json!({"pool": "a"})))
            .collect();
        nodes.push(node("other", json!({"pool": "b"})));
        // The hash the controller computes for this Plan, which n1 already carries.
        let mut with_version = plan.clone();
        with_version.status = Some(crate::api::PlanStatus {
            latest_version: Some("v1.30.4-k3s1".into()),
            ..Default::default()
        });
        let h = crate::controller::hash::plan_hash(
            &crate::controller::hash::go_shape(&with_version),
            &[],
        );
        nodes[0] = node("n1", json!({"pool": "a", "plan.upgrade.cattle.io/p": h}));
        nodes[1] = node(
            "n2",
            json!({"pool": "a", "plan.upgrade.cattle.io/p": "disabled"}),
        );
        nodes[2] = node(
            "n3",
            json!({"pool": "a", "upgrade.cattle.io/pause": "true"}),
        );
        let text = report(&Input {
            plan: &plan,
            stored: Some(&plan),
            resolution: Resolution::Version("v1.30.4+k3s1".into()),
            nodes: &nodes,
            jobs: &[],
            pods: &[],
            secrets: &BTreeMap::new(),
            now: Timestamp::UNIX_EPOCH,
            peers: &[],
        });
        assert!(
            text.contains("version:     v1.30.4-k3s1 (from spec.version)"),
            "{text}"
        );
        assert!(
            text.contains("6 match spec.nodeSelector; 5 selected, 1 done"),
            "{text}"
        );
        assert!(text.contains("    done (1): n1\n"), "{text}");
        assert!(
            text.contains("opted out (plan.upgrade.cattle.io/p=disabled) (1): n2"),
            "{text}"
        );
        assert!(
            text.contains("held (upgrade.cattle.io/pause=true) (1): n3"),
            "{text}"
        );
        assert!(
            text.contains("2 at a time (\"40%\" of 5 selected nodes)"),
            "{text}"
        );
        // n4, n5, n6 in the controller's start order, two at a time.
        let mut order = ["n4", "n5", "n6"];
        order.sort_by_cached_key(|n| select::start_order_key(&node(n, json!({})), "plan-uid", &h));
        assert!(
            text.contains(&format!(
                "    1: {}, {}\n    2: {}\n",
                order[0], order[1], order[2]
            )),
            "{text}"
        );
    }

    #[test]
    fn invalid_and_unresolved_plans_say_why() {
        let invalid = plan(
            json!({"concurrency": 0, "version": "v1.30.4+k3s1", "nodeSelector": {},
            "upgrade": {"image": "rancher/k3s-upgrade"}}),
        );
        let text = report(&Input {
            plan: &invalid,
            stored: None,
            resolution: Resolution::Version("v1.30.4+k3s1".into()),
            nodes: &[],
            jobs: &[],
            pods: &[],
            secrets: &BTreeMap::new(),
            now: Timestamp::UNIX_EPOCH,
            peers: &[],
        });
        assert!(
            text.contains("spec.concurrency: must be at least 1"),
            "{text}"
        );
        let paused = plan(
            json!({"concurrency": 1, "channel": "https://x/y", "nodeSelector": {},
            "paused": true, "upgrade": {"image": "rancher/k3s-upgrade"}}),
        );
        let text = report(&Input {
            plan: &paused,
            stored: None,
            resolution: Resolution::ChannelFailed {
                error: "timeout".into(),
                retry: Duration::from_secs(5),
            },
            nodes: &[node("a", json!({}))],
            jobs: &[],
            pods: &[],
            secrets: &BTreeMap::new(),
            now: Timestamp::UNIX_EPOCH,
            peers: &[],
        });
        // As the controller: nothing starts, and nothing can be ordered, before a version.
        assert!(
            text.contains(
                "version:     unknown: Failed to resolve latest version from Spec.Channel: timeout"
            ),
            "{text}"
        );
        assert!(
            text.contains("order:       none until the version is known"),
            "{text}"
        );
        // Resolved, the pause is told in the controller's words and the order is what it
        // starts once resumed.
        let text = report(&Input {
            plan: &paused,
            stored: None,
            resolution: Resolution::Channel("v1.30.4+k3s1".into()),
            nodes: &[node("a", json!({}))],
            jobs: &[],
            pods: &[],
            secrets: &BTreeMap::new(),
            now: Timestamp::UNIX_EPOCH,
            peers: &[],
        });
        assert!(text.contains("hold:        spec.paused is true"), "{text}");
        assert!(text.contains("    1: a\n"), "{text}");
    }

    fn input<'a>(plan: &'a Plan, stored: Option<&'a Plan>, nodes: &'a [Node]) -> Input<'a> {
        Input {
            plan,
            stored,
            resolution: Resolution::Version("v1.30.4+k3s1".into()),
            nodes,
            jobs: &[],
            pods: &[],
            secrets: &NO_SECRETS,
            now: "2026-11-23T10:00:00Z".parse().unwrap(), // a Monday
            peers: &[],
        }
    }

    static NO_SECRETS: BTreeMap<String, Secret> = BTreeMap::new();

    #[test]
    fn a_stored_plan_without_concurrency_starts_nothing_and_a_new_one_gets_the_default() {
        let spec = json!({"version": "v1.30.4+k3s1", "nodeSelector": {},
            "upgrade": {"image": "rancher/k3s-upgrade"}});
        let plan = plan(spec);
        let nodes = [node("a", json!({}))];
        // Stored without it (the Go controller allowed that): the controller starts nothing.
        let text = report(&input(&plan, Some(&plan), &nodes));
        assert!(text.contains("invalid:"), "{text}");
        assert!(text.contains(decide::CONCURRENCY_UNSET), "{text}");
        assert!(!text.contains("order:"), "{text}");
        // Not created yet: the webhook will set 1.
        let text = report(&input(&plan, None, &nodes));
        assert!(text.contains("concurrency: 1 at a time"), "{text}");
        assert!(text.contains("    1: a\n"), "{text}");
    }

    fn running(mut node: Node, version: &str) -> Node {
        node.status
            .get_or_insert_default()
            .node_info
            .get_or_insert_default()
            .kubelet_version = version.into();
        node
    }

    #[test]
    fn version_holds_are_shown_per_node_and_servers_go_first_in_the_order() {
        let spec = json!({"concurrency": 3, "version": "v1.30.4+k3s1", "nodeSelector": {},
            "upgrade": {"image": "rancher/k3s-upgrade"}});
        let plan = plan(spec);
        let server = json!({"node-role.kubernetes.io/control-plane": "true"});
        let nodes = [
            running(node("agent-1", json!({})), "v1.29.9+k3s1"),
            running(node("agent-2", json!({})), "v1.29.9+k3s1"),
            running(node("newer", json!({})), "v1.31.0+k3s1"),
            running(node("server", server), "v1.29.9+k3s1"),
        ];
        let text = report(&input(&plan, Some(&plan), &nodes));
        assert!(
            text.contains("versions:    3 node(s) held by a version rule now:"),
            "{text}"
        );
        assert!(
            text.contains("    node agent-1 is not control-plane and waits until every control-plane node runs at least v1.30.4+k3s1"),
            "{text}"
        );
        assert!(
            text.contains("    node newer runs v1.31.0+k3s1, newer than v1.30.4+k3s1"),
            "{text}"
        );
        // The server first; its upgrade frees the agents; the newer node never starts.
        assert!(
            text.contains("    1: server\n    2: agent-1, agent-2\n"),
            "{text}"
        );
        assert!(
            text.contains("the rollout stops there: DowngradeHeld: node newer runs"),
            "{text}"
        );
    }

    #[test]
    fn a_closed_window_is_told_in_the_controllers_words_and_the_order_still_shown() {
        let spec = json!({"concurrency": 1, "version": "v1.30.4+k3s1", "nodeSelector": {},
            "window": {"days": ["saturday"], "startTime": "01:00", "endTime": "05:00", "timeZone": "UTC"},
            "upgrade": {"image": "rancher/k3s-upgrade"}});
        let plan = plan(spec);
        let nodes = [node("a", json!({})), node("b", json!({}))];
        let text = report(&input(&plan, Some(&plan), &nodes));
        assert!(
            text.contains("hold:        current time is not within configured window"),
            "{text}"
        );
        assert!(
            text.contains("spec.window: a rollout starts only within saturday 01:00-05:00 UTC"),
            "{text}"
        );
        assert!(
            text.contains("2 node(s) to start, at most 1 running at once"),
            "{text}"
        );
        assert!(!text.contains("then:"), "{text}");
    }

    #[test]
    fn the_plans_last_rollouts_are_shown_newest_first() {
        let spec = json!({"concurrency": 1, "version": "v1.30.5+k3s1", "nodeSelector": {},
            "upgrade": {"image": "rancher/k3s-upgrade"}});
        let mut stored = plan(spec);
        stored.status = serde_json::from_value(json!({"history": [
            {"version": "v1.30.5-k3s1", "hash": "h2", "started": "2026-12-05T10:00:00Z",
             "done": 1, "failed": 0, "selected": 2},
            {"version": "v1.30.4-k3s1", "hash": "h1", "started": "2026-12-01T10:00:00Z",
             "finished": "2026-12-01T10:20:00Z", "result": "Complete", "done": 2, "failed": 0,
             "selected": 2}]}))
        .unwrap();
        let nodes = [node("a", json!({})), node("b", json!({}))];
        let text = report(&input(&stored, Some(&stored), &nodes));
        assert!(
            text.contains(
                "  rollouts:    v1.30.5-k3s1 from 2026-12-05T10:00:00Z: running; 1/2 done, 0 failed\n"
            ) && text.contains(
                "               v1.30.4-k3s1 from 2026-12-01T10:00:00Z: Complete at 2026-12-01T10:20:00Z; \
                 2/2 done, 0 failed\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_plan_that_waits_for_another_says_so_and_shows_its_order() {
        let spec = json!({"concurrency": 1, "version": "v1.30.4+k3s1", "nodeSelector": {},
            "dependsOn": ["k3s-server"], "upgrade": {"image": "rancher/k3s-upgrade"}});
        let plan = plan(spec);
        let nodes = [node("a", json!({}))];
        let peers = [Peer {
            name: "k3s-server".into(),
            complete: Some((false, "SyncJob".into(), String::new())),
            ..Peer::default()
        }];
        let text = report(&Input {
            peers: &peers,
            ..input(&plan, Some(&plan), &nodes)
        });
        assert!(
            text.contains("hold:        1 node(s) wait: waiting for spec.dependsOn: Plan k3s-server is not Complete (SyncJob)"),
            "{text}"
        );
        assert!(text.contains("    1: a\n"), "{text}");
    }

    #[test]
    fn a_first_wave_is_shown_as_its_own_batch_with_the_hold_after_it() {
        for (canary, lifts) in [
            (json!({"nodes": 1}), "wait for approval"),
            (
                json!({"nodes": 1, "soakFor": "1h"}),
                "once it has soaked for 1h",
            ),
        ] {
            let spec = json!({"concurrency": 2, "version": "v1.30.4+k3s1", "nodeSelector": {},
                "canary": canary, "upgrade": {"image": "rancher/k3s-upgrade"}});
            let plan = plan(spec);
            let nodes = [
                node("a", json!({})),
                node("b", json!({})),
                node("c", json!({})),
                node("d", json!({})),
            ];
            let text = report(&input(&plan, Some(&plan), &nodes));
            let order: Vec<&str> = text
                .lines()
                .skip_while(|l| !l.starts_with("  order:"))
                .skip(1)
                .map(str::trim)
                .collect();
            assert_eq!(order.len(), 4, "{text}");
            assert_eq!(
                order[0].split(", ").count(),
                1,
                "the wave runs alone: {text}"
            );
            assert!(
                order[1].starts_with("then: the first wave holds the rest (spec.canary)")
                    && order[1].contains(lifts),
                "{text}"
            );
            assert_eq!(order[2].split(", ").count(), 2, "{text}");
            assert!(order[3].starts_with("3: "), "{text}");
            assert!(
                text.contains("hold:        canary: the first 1 node(s)"),
                "{text}"
            );
        }
    }

    #[test]
    fn hooks_are_shown_before_the_first_batch_and_after_the_last() {
        let spec = json!({"concurrency": 1, "version": "v1.30.4+k3s1", "nodeSelector": {},
            "hooks": {"before": {"image": "alpine:3.20"}, "after": {"image": "alpine:3.20"}},
            "upgrade": {"image": "rancher/k3s-upgrade"}});
        let plan = plan(spec);
        let nodes = [node("a", json!({})), node("b", json!({}))];
        let text = report(&input(&plan, Some(&plan), &nodes));
        let order: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.contains("order:"))
            .skip(1)
            .map(str::trim)
            .collect();
        assert!(order[0].starts_with("first: the before hook"), "{text}");
        assert!(order[1].starts_with("1: "), "{text}");
        assert!(order[2].starts_with("2: "), "{text}");
        assert!(order[3].starts_with("last: the after hook"), "{text}");
        assert!(!text.contains("then:"), "the rollout completes: {text}");
    }
}
