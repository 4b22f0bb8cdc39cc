//! `system-upgrade-controller preview`: what a Plan would do, changing nothing. It reads the
//! cluster as kubectl would (the Plan if it exists, Nodes, the Secrets the hash covers), asks the
//! channel for the version when the Plan has one, and prints the nodes the Plan selects, those
//! done, opted out or held, and the order in which the rest would be upgraded, by the rules the
//! controller follows.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use crate::api::{GROUP, LABEL_HOSTNAME, LABEL_PAUSE, PLAN_LABEL_PREFIX, Plan, PlanStatus};
use crate::check;
use crate::config::{PreviewConfig, kube_config};
use crate::controller::resolve::{ChannelClient, munge};
use crate::controller::{hash, select};
use crate::error::Error;
use crate::syntax::{duration, window};
use crate::validation;
use crate::yaml;

/// What the preview of one Plan is made from.
pub struct Input<'a> {
    pub plan: &'a Plan,
    /// The Plan as stored in the cluster, if it is (its UID orders the nodes; its status says
    /// which nodes are applying).
    pub stored: Option<&'a Plan>,
    /// The version, or why it could not be resolved.
    pub version: Result<String, String>,
    /// The hash, or why it could not be computed.
    pub hash: Result<String, String>,
    pub nodes: &'a [Node],
    pub now: Timestamp,
}

/// The preview of every Plan asked for, as text.
pub async fn run(config: &PreviewConfig) -> Result<String, Error> {
    let client = Client::try_from(kube_config(config.kubeconfig.as_deref()).await?)
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
                .map_err(|e| Error::Preview(format!("reading Plan {name}: {e}")))?
                .ok_or_else(|| {
                    Error::Preview(format!(
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
        .map_err(|e| Error::Preview(format!("listing nodes: {e}")))?
        .items;
    let channels = ChannelClient::new(Duration::from_secs(30))
        .map_err(|e| Error::ChannelClient(e.to_string()))?;
    let mut out = String::new();
    for plan in &plans {
        let namespace = plan.metadata.namespace.clone().unwrap_or_default();
        let name = plan.metadata.name.clone().unwrap_or_default();
        let stored = if config.plan.is_some() {
            Some(plan.clone())
        } else {
            let api: Api<Plan> = Api::namespaced(client.clone(), &namespace);
            api.get_opt(&name)
                .await
                .map_err(|e| Error::Preview(format!("reading Plan {name}: {e}")))?
        };
        let version = resolve(plan, stored.as_ref(), &channels).await;
        let hash = match &version {
            Ok(version) => plan_hash(&client, plan, version).await,
            Err(_) => Err("no version, so no hash".to_owned()),
        };
        out.push_str(&report(&Input {
            plan,
            stored: stored.as_ref(),
            version,
            hash,
            nodes: &nodes,
            now: Timestamp::now(),
        }));
        out.push('\n');
    }
    Ok(out)
}

/// The Plans of some files, with the namespace given where they name none.
fn read_plans(files: &[PathBuf], namespace: &str) -> Result<Vec<Plan>, Error> {
    let mut plans = Vec::new();
    for file in files {
        let text = check::read(file)
            .map_err(|e| Error::Preview(format!("{}: cannot read: {e}", file.display())))?;
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

/// The version the controller would apply: `spec.version`, or what the channel answers now
/// (falling back to the stored one, said so, when the channel cannot be read).
async fn resolve(
    plan: &Plan,
    stored: Option<&Plan>,
    channels: &ChannelClient,
) -> Result<String, String> {
    if let Some(version) = plan.spec.version.as_deref().filter(|v| !v.is_empty()) {
        return Ok(munge(version));
    }
    let Some(channel) = plan.spec.channel.as_deref().filter(|c| !c.is_empty()) else {
        return Err("neither spec.version nor spec.channel is set".into());
    };
    let previous = stored
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.latest_version.clone())
        .unwrap_or_default();
    match channels.resolve(channel, &previous, "").await {
        Ok(version) => Ok(munge(&version)),
        Err(e) if !previous.is_empty() => {
            // Shown with the note, so the reader sees the channel failed.
            Ok(format!(
                "{previous} (the channel failed: {}; this is the last one resolved)",
                e.0
            ))
        }
        Err(e) => Err(format!("the channel failed: {}", e.0)),
    }
}

/// The Plan's hash for `version`, reading the Secrets it covers.
async fn plan_hash(client: &Client, plan: &Plan, version: &str) -> Result<String, String> {
    let version = version.split(' ').next().unwrap_or(version);
    let namespace = plan.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut secrets = Vec::new();
    for spec in plan.spec.secrets.iter().flatten() {
        if spec.ignore_updates.unwrap_or(false) {
            continue;
        }
        match api.get_opt(&spec.name).await {
            Ok(Some(secret)) => secrets.push(secret),
            Ok(None) => {
                return Err(format!(
                    "Secret {namespace}/{} is missing (the controller waits for it)",
                    spec.name
                ));
            }
            Err(e) => return Err(format!("reading Secret {namespace}/{}: {e}", spec.name)),
        }
    }
    let mut with_version = plan.clone();
    with_version.status = Some(PlanStatus {
        latest_version: Some(version.to_owned()),
        ..PlanStatus::default()
    });
    let refs: Vec<&Secret> = secrets.iter().collect();
    Ok(hash::plan_hash(&hash::go_shape(&with_version), &refs))
}

/// The preview of one Plan.
pub fn report(input: &Input<'_>) -> String {
    let plan = input.plan;
    let name = plan.metadata.name.as_deref().unwrap_or_default();
    let namespace = plan.metadata.namespace.as_deref().unwrap_or_default();
    let mut out = format!("Plan {namespace}/{name}\n");
    let line = |out: &mut String, key: &str, value: &str| {
        out.push_str(&format!("  {key:<12} {value}\n"));
    };
    let problems = validation::validate(plan).problems;
    if !problems.is_empty() {
        line(&mut out, "invalid:", "the controller would start no node:");
        for problem in problems {
            out.push_str(&format!("    {problem}\n"));
        }
        return out;
    }
    let source = if plan.spec.version.as_deref().is_some_and(|v| !v.is_empty()) {
        "spec.version"
    } else {
        "the channel"
    };
    match &input.version {
        Ok(version) => line(&mut out, "version:", &format!("{version} (from {source})")),
        Err(why) => line(&mut out, "version:", &format!("unknown: {why}")),
    }
    let hash = match &input.hash {
        Ok(hash) => {
            line(&mut out, "hash:", hash);
            Some(hash.as_str())
        }
        Err(why) => {
            line(&mut out, "hash:", &format!("unknown: {why}"));
            None
        }
    };
    let Ok(Some(selector)) = select::node_selector(plan) else {
        line(&mut out, "nodes:", "none: spec.nodeSelector is not set");
        return out;
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
    let no_hostname: Vec<String> = matching
        .iter()
        .filter(|n| !n.labels().contains_key(LABEL_HOSTNAME))
        .map(|n| node_name(n))
        .collect();
    let opted_out: Vec<String> = matching
        .iter()
        .filter(|n| n.labels().get(&label).is_some_and(|v| v == "disabled"))
        .map(|n| node_name(n))
        .collect();
    let eligible: Vec<&Node> = matching
        .iter()
        .copied()
        .filter(|n| select::eligible(name, &selector, n))
        .collect();
    let done: Vec<String> = eligible
        .iter()
        .filter(|n| hash.is_some_and(|h| select::done(name, n, h)))
        .map(|n| node_name(n))
        .collect();
    let applying: BTreeSet<String> = input
        .stored
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.applying.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let left: Vec<&Node> = eligible
        .iter()
        .copied()
        .filter(|n| !done.contains(&node_name(n)))
        .collect();
    let (running, waiting): (Vec<&Node>, Vec<&Node>) =
        left.iter().partition(|n| applying.contains(&node_name(n)));
    let (held, mut queue): (Vec<&Node>, Vec<&Node>) =
        waiting.iter().partition(|n| select::paused(n));
    line(
        &mut out,
        "nodes:",
        &format!(
            "{} match spec.nodeSelector; {} selected, {} done",
            matching.len(),
            eligible.len(),
            done.len()
        ),
    );
    let list = |out: &mut String, what: &str, names: &[String]| {
        if !names.is_empty() {
            out.push_str(&format!(
                "    {what} ({}): {}\n",
                names.len(),
                names.join(", ")
            ));
        }
    };
    let names = |nodes: &[&Node]| -> Vec<String> { nodes.iter().map(|n| node_name(n)).collect() };
    list(&mut out, "done", &done);
    list(
        &mut out,
        &format!("opted out ({label}=disabled)"),
        &opted_out,
    );
    list(
        &mut out,
        &format!("without the {LABEL_HOSTNAME} label, never selected"),
        &no_hostname,
    );
    list(
        &mut out,
        &format!("held ({LABEL_PAUSE}=true)"),
        &names(&held),
    );
    list(&mut out, "applying now", &names(&running));
    let concurrency = plan
        .spec
        .concurrency
        .as_ref()
        .and_then(|c| c.nodes(eligible.len()))
        .unwrap_or(0)
        .max(1);
    let how = match &plan.spec.concurrency {
        Some(c @ crate::api::IntOrPercent::Text(_)) => {
            format!(
                "{concurrency} at a time ({c} of {} selected nodes)",
                eligible.len()
            )
        }
        _ => format!("{concurrency} at a time"),
    };
    line(&mut out, "concurrency:", &how);
    for note in holds(input, &eligible) {
        line(&mut out, "hold:", &note);
    }
    if let Some(hash) = hash {
        let uid = input
            .stored
            .and_then(|p| p.metadata.uid.as_deref())
            .unwrap_or_default();
        queue.sort_by_cached_key(|n| select::start_order_key(n, uid, hash));
        if uid.is_empty() && !queue.is_empty() {
            out.push_str(
                "  (the Plan is not in the cluster yet: the order below depends on the UID it gets \
                 when created, so it is one possible order)\n",
            );
        }
    } else {
        queue.sort_by_key(|n| node_name(n));
    }
    if queue.is_empty() && running.is_empty() {
        line(&mut out, "order:", "nothing left to upgrade");
        return out;
    }
    line(
        &mut out,
        "order:",
        &format!(
            "{} node(s) to start, at most {concurrency} running at once; each batch starts as \
             the one before frees its slots",
            queue.len()
        ),
    );
    let first_room = concurrency.saturating_sub(running.len());
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut rest = queue.iter().map(|n| node_name(n));
    let first: Vec<String> = rest.by_ref().take(first_room).collect();
    if !running.is_empty() || !first.is_empty() {
        let mut batch = names(&running);
        batch.extend(first);
        batches.push(batch);
    }
    let rest: Vec<String> = rest.collect();
    batches.extend(rest.chunks(concurrency).map(<[String]>::to_vec));
    for (i, batch) in batches.iter().enumerate() {
        out.push_str(&format!("    {}: {}\n", i + 1, batch.join(", ")));
    }
    out
}

/// What would hold the rollout now: a pause, a closed window, a health gate.
fn holds(input: &Input<'_>, eligible: &[&Node]) -> Vec<String> {
    let spec = &input.plan.spec;
    let mut notes = Vec::new();
    if spec.paused == Some(true) {
        notes.push("spec.paused is true: no node would start".to_owned());
    }
    if let Some(w) = &spec.window {
        let days: Vec<String> = w.days.iter().flatten().map(|d| d.0.clone()).collect();
        let open = window::TimeWindow::parse(
            &days,
            w.start_time.as_deref().unwrap_or_default(),
            w.end_time.as_deref().unwrap_or_default(),
            w.time_zone.as_deref().unwrap_or_default(),
        )
        .is_ok_and(|w| w.contains(input.now));
        if !open {
            notes.push(format!(
                "spec.window is closed now ({} {}-{} {}): a rollout waits for it to open",
                days.join(","),
                w.start_time.as_deref().unwrap_or_default(),
                w.end_time.as_deref().unwrap_or_default(),
                w.time_zone.as_deref().unwrap_or("UTC"),
            ));
        }
    }
    if let Some(gates) = &spec.health_gates {
        if gates.all_nodes_ready == Some(true) {
            let not_ready: Vec<String> = eligible
                .iter()
                .filter(|n| !is_ready(n))
                .map(|n| n.metadata.name.clone().unwrap_or_default())
                .collect();
            if !not_ready.is_empty() {
                notes.push(format!(
                    "healthGates.allNodesReady: not Ready now: {}",
                    not_ready.join(", ")
                ));
            }
        }
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
    }
    notes
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
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
        nodes[0] = node("n1", json!({"pool": "a", "plan.upgrade.cattle.io/p": "h"}));
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
            version: Ok("v1.30.4-k3s1".into()),
            hash: Ok("h".into()),
            nodes: &nodes,
            now: Timestamp::UNIX_EPOCH,
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
        order.sort_by_cached_key(|n| select::start_order_key(&node(n, json!({})), "plan-uid", "h"));
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
            version: Ok("v1".into()),
            hash: Ok("h".into()),
            nodes: &[],
            now: Timestamp::UNIX_EPOCH,
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
            version: Err("the channel failed: timeout".into()),
            hash: Err("no version, so no hash".into()),
            nodes: &[node("a", json!({}))],
            now: Timestamp::UNIX_EPOCH,
        });
        assert!(
            text.contains("version:     unknown: the channel failed: timeout"),
            "{text}"
        );
        assert!(text.contains("hold:        spec.paused is true"), "{text}");
        assert!(text.contains("    1: a\n"), "{text}");
    }
}
