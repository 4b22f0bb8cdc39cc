//! Reading the objects: what a Job, a node or the Plan says, as the phases ask it.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;

use crate::api::{
    ANNOTATION_ADOPTED, ANNOTATION_TEMPLATE, LABEL_HOSTNAME, LATEST_HASH_VAR, LATEST_VERSION_VAR,
    NodeStatus, Plan,
};
use crate::syntax::duration;

/// How long a Job ran until `end`: from its start (or creation).
pub(super) fn ran_for(job: &Job, end: Timestamp) -> Duration {
    let start = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .or(job.metadata.creation_timestamp.as_ref())
        .map_or(end, |t| t.0);
    end.duration_since(start)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Since when a node has been Ready, if it is.
pub(super) fn ready_since(node: &Node) -> Option<Timestamp> {
    let ready = node
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    Some(
        ready
            .last_transition_time
            .as_ref()
            .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
    )
}

/// "node a", "nodes a,b,c", "nodes a,b,c,d,e and 3 more".
pub(super) fn listed(what: &str, names: &[&str]) -> String {
    const SHOWN: usize = 5;
    match names {
        [one] => format!("{what} {one}"),
        _ if names.len() <= SHOWN => format!("{what}s {}", names.join(",")),
        _ => format!(
            "{what}s {} and {} more",
            names[..SHOWN].join(","),
            names.len() - SHOWN
        ),
    }
}

pub(super) fn node_names(nodes: &[&Node]) -> Vec<String> {
    nodes
        .iter()
        .map(|n| n.metadata.name.clone().unwrap_or_default())
        .collect()
}

pub(super) fn entries_list(entries: BTreeMap<String, NodeStatus>) -> Option<Vec<NodeStatus>> {
    (!entries.is_empty()).then(|| entries.into_values().collect())
}

/// The Secrets of `spec.secrets` whose content is part of the hash, in spec order.
pub(super) fn hashed_secrets(plan: &Plan) -> impl Iterator<Item = &str> {
    plan.spec
        .secrets
        .iter()
        .flatten()
        .filter(|s| !s.ignore_updates.unwrap_or(false))
        .map(|s| s.name.as_str())
}

/// `status.applying` as node names: the Go controller writes the nodes' hostname labels there,
/// this controller their names; both are read (an unknown entry is kept as it is).
pub(super) fn as_node_names(applying: &[String], nodes: &BTreeMap<String, &Node>) -> Vec<String> {
    applying
        .iter()
        .map(|entry| {
            if nodes.contains_key(entry) {
                return entry.clone();
            }
            nodes
                .iter()
                .find(|(_, n)| node_label(n, LABEL_HOSTNAME) == Some(entry.as_str()))
                .map_or_else(|| entry.clone(), |(name, _)| name.clone())
        })
        .collect()
}

pub(super) fn node_label<'n>(node: &'n Node, key: &str) -> Option<&'n str> {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

pub(super) fn post_complete_delay(plan: &Plan) -> Option<i64> {
    plan.spec
        .post_complete_delay
        .as_deref()
        .and_then(|d| duration::parse(d).ok())
        .filter(|d| *d > 0)
}

/// Whether a Job was created by the Go controller: it carries no template digest of ours, or
/// this controller adopted it.
pub(super) fn is_go_era(job: &Job) -> bool {
    annotation(job, ANNOTATION_TEMPLATE).is_none() || annotation(job, ANNOTATION_ADOPTED).is_some()
}

pub(super) fn uid_of(job: &Job) -> &str {
    job.metadata.uid.as_deref().unwrap_or_default()
}

pub(super) fn annotation(job: &Job, key: &str) -> Option<String> {
    job.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .cloned()
}

/// When a Job finished, and whether it succeeded.
pub fn finished_at(job: &Job) -> Option<(bool, Timestamp)> {
    let status = job.status.as_ref()?;
    for condition in status.conditions.iter().flatten() {
        if condition.status != "True" {
            continue;
        }
        let at = condition.last_transition_time.as_ref().map(|t| t.0);
        match condition.type_.as_str() {
            "Complete" => {
                return Some((true, status.completion_time.as_ref().map(|t| t.0).or(at)?));
            }
            "Failed" => return Some((false, at?)),
            _ => {}
        }
    }
    None
}

/// "Job <ns>/<job> failed on Node <node>: <reason>: <message>", as in the Go controller.
pub(super) fn failure_message(job: &Job, namespace: &str, node: &str) -> String {
    let name = job.metadata.name.clone().unwrap_or_default();
    let (reason, message) = failed_condition(job);
    format!("Job {namespace}/{name} failed on Node {node}: {reason}: {message}")
}

/// The reason and message of a Job's Failed condition (empty when it has none).
pub(super) fn failed_condition(job: &Job) -> (String, String) {
    let failed = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Failed" && c.status == "True"));
    let reason = failed.and_then(|c| c.reason.clone()).unwrap_or_default();
    let message = failed.and_then(|c| c.message.clone()).unwrap_or_default();
    (reason, message)
}

/// The Plan's postCompleteLabels with `$(LATEST_VERSION)` and `$(LATEST_HASH)` expanded the
/// Kubernetes way (`$$` escapes, unknown variables stay as written).
pub fn completion_labels(plan: &Plan, version: &str, hash: &str) -> BTreeMap<String, String> {
    plan.spec
        .post_complete_labels
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), expand(v, version, hash)))
        .collect()
}

pub(super) fn expand(value: &str, version: &str, hash: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix(LATEST_VERSION_VAR) {
            out.push_str(version);
            rest = after;
        } else if let Some(after) = rest.strip_prefix(LATEST_HASH_VAR) {
            out.push_str(hash);
            rest = after;
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

pub(super) fn until(now: Timestamp, then: Timestamp) -> Duration {
    let seconds = then.as_second() - now.as_second();
    Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1))
}
