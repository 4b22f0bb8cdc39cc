//! Cordon claims: a Plan that cordons a node records a claim annotation
//! (`cordoned.upgrade.cattle.io/<plan>`, valued `<namespace>/<controller> <time>`), and the node
//! is uncordoned only when the last claim is released. A node cordoned by someone else is never
//! claimed, so never uncordoned by us; a claim of another controller instance (another
//! namespace or name) is never released by this one.
//!
//! The decisions are pure functions of the node ([`cordon_patch`], [`adopt_patch`]); [`cordon`]
//! and [`adopt`] apply them read-modify-write with the node's resourceVersion, so Plans acting
//! on the same node at once cannot lose each other's claims.

use k8s_openapi::api::core::v1::{Node, Taint};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

use crate::api::{CORDON_CLAIM_PREFIX, Reason, TAINT_UPCOMING_PREFIX};

/// Who writes claims: one controller instance, `<namespace>/<controller name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant(String);

impl Claimant {
    pub fn new(namespace: &str, controller: &str) -> Self {
        Claimant(format!("{namespace}/{controller}"))
    }

    /// Whether a claim's value is this instance's. A value without an owner was written by an
    /// earlier version of this controller, which knew no other instance: it counts as ours.
    pub fn owns(&self, value: &str) -> bool {
        value
            .split_once(' ')
            .is_none_or(|(owner, _)| owner == self.0)
    }

    /// A claim's value: the owner, then the time of the claim.
    fn value(&self, now: &str) -> String {
        format!("{} {now}", self.0)
    }
}

/// The claims on a node: the Plan, and the claim's value.
fn claim_values(node: &Node) -> impl Iterator<Item = (&str, &str)> {
    node.metadata
        .annotations
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.strip_prefix(CORDON_CLAIM_PREFIX)?, v.as_str())))
}

/// The Plans holding a cordon claim on a node, whoever's they are.
pub fn claims(node: &Node) -> impl Iterator<Item = &str> {
    claim_values(node).map(|(plan, _)| plan)
}

/// The Plans of this controller instance holding a claim on a node.
pub fn claims_of<'a>(node: &'a Node, who: &'a Claimant) -> impl Iterator<Item = &'a str> {
    claim_values(node)
        .filter(|(_, value)| who.owns(value))
        .map(|(plan, _)| plan)
}

/// Whether a node carries this Plan's cordon claim, made by this controller instance.
pub fn has_claim(node: &Node, plan: &str, who: &Claimant) -> bool {
    claims_of(node, who).any(|p| p == plan)
}

fn unschedulable(node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

/// What a cordon change did, to be told in an event on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reason: Reason,
    pub message: String,
}

/// The merge patch that claims (`claim`) or releases a node for `plan`, and what it does; `None`
/// when nothing is to change: the claim is there already (or, releasing, is not), the node is
/// cordoned by someone else, or another controller instance holds a claim of that name. `now`
/// is the claim's time.
pub fn cordon_patch(
    node: &Node,
    plan: &str,
    claim: bool,
    who: &Claimant,
    now: &str,
) -> Option<(serde_json::Value, Outcome)> {
    let key = format!("{CORDON_CLAIM_PREFIX}{plan}");
    let held = claims(node).count();
    let mine = has_claim(node, plan, who);
    let version = node.resource_version();
    if claim {
        let taken = claims(node).any(|p| p == plan);
        if mine || taken || (unschedulable(node) && held == 0) {
            return None;
        }
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": version, "annotations": {&key: who.value(now)}},
            "spec": {"unschedulable": true},
        });
        let message = format!("Cordoned for Plan {plan}");
        return Some((
            patch,
            Outcome {
                reason: Reason::Cordoned,
                message,
            },
        ));
    }
    if !mine {
        return None;
    }
    let mut patch = serde_json::json!({
        "metadata": {"resourceVersion": version, "annotations": {&key: null}},
    });
    let outcome = if held == 1 {
        patch["spec"] = serde_json::json!({"unschedulable": null});
        Outcome {
            reason: Reason::Uncordoned,
            message: format!("Uncordoned: Plan {plan} released the node"),
        }
    } else {
        Outcome {
            reason: Reason::CordonReleased,
            message: format!("Plan {plan} released the node; other Plans keep it cordoned"),
        }
    };
    Some((patch, outcome))
}

/// The merge patch that records a node's cordon (made by a Go controller's Job) as `plan`'s
/// claim without changing its schedulability: only when the node is cordoned and nobody
/// claims it.
pub fn adopt_patch(
    node: &Node,
    plan: &str,
    who: &Claimant,
    now: &str,
) -> Option<serde_json::Value> {
    if !unschedulable(node) || claims(node).next().is_some() {
        return None;
    }
    let key = format!("{CORDON_CLAIM_PREFIX}{plan}");
    Some(serde_json::json!({"metadata": {
        "resourceVersion": node.resource_version(),
        "annotations": {&key: who.value(now)},
    }}))
}

/// Why a cordon change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CordonError {
    #[error("node {0} kept changing while its cordon was changed")]
    Conflict(String),
    #[error("reading node {node}: {error}")]
    Read { node: String, error: kube::Error },
    #[error("patching node {node}: {error}")]
    Patch { node: String, error: kube::Error },
    /// The writer could not prove, at the moment of the write, that it may write (a replica
    /// whose hold on the Lease ran out while it waited).
    #[error("not patching node {0}: this replica's hold on the Lease is not proved now")]
    Fenced(String),
}

/// How often a claim is tried again when the node changed between the read and the patch.
const ATTEMPTS: usize = 5;

/// Claims (`claim`) or releases a node for a Plan, uncordoning it when no claim is left. Returns
/// the node as read and what changed, or `None` when nothing did (also when the node is gone).
/// `may_write` is asked right before each patch, after the read. Logged within the caller's
/// span, which names the Plan and the node.
pub async fn cordon(
    client: &Client,
    who: &Claimant,
    plan: &str,
    node: &str,
    claim: bool,
    may_write: &(dyn Fn() -> bool + Send + Sync),
) -> Result<Option<(Node, Outcome)>, CordonError> {
    let nodes: Api<Node> = Api::all(client.clone());
    for _ in 0..ATTEMPTS {
        let Some(current) = read(&nodes, node).await? else {
            return Ok(None);
        };
        let now = crate::controller::status::stamp(jiff::Timestamp::now());
        let Some((patch, outcome)) = cordon_patch(&current, plan, claim, who, &now) else {
            return Ok(None);
        };
        if !may_write() {
            return Err(CordonError::Fenced(node.to_owned()));
        }
        match patch_node(&nodes, node, &patch).await? {
            Patched::Done => {
                tracing::info!(reason = %outcome.reason, "cordon");
                return Ok(Some((current, outcome)));
            }
            Patched::Gone => return Ok(None),
            Patched::Conflict => continue,
        }
    }
    Err(CordonError::Conflict(node.to_owned()))
}

/// Records the cordon of a node as this Plan's claim (see [`adopt_patch`]); a node that changed
/// meanwhile is a conflict, retried by the next reconcile.
pub async fn adopt(
    client: &Client,
    who: &Claimant,
    plan: &str,
    node: &str,
) -> Result<(), CordonError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(current) = read(&nodes, node).await? else {
        return Ok(());
    };
    let now = crate::controller::status::stamp(jiff::Timestamp::now());
    let Some(patch) = adopt_patch(&current, plan, who, &now) else {
        return Ok(());
    };
    match patch_node(&nodes, node, &patch).await? {
        Patched::Done => {
            tracing::info!("adopted the cordon of a Go controller's Job");
            Ok(())
        }
        Patched::Gone => Ok(()),
        Patched::Conflict => Err(CordonError::Conflict(node.to_owned())),
    }
}

async fn read(nodes: &Api<Node>, node: &str) -> Result<Option<Node>, CordonError> {
    nodes
        .get_opt(node)
        .await
        .map_err(|error| CordonError::Read {
            node: node.to_owned(),
            error,
        })
}

/// The merge patch putting a Plan's `upcoming.upgrade.cattle.io/<plan>:PreferNoSchedule` taint
/// on a node (`on`) or taking it off, with the node's other taints as they are (a node's taints
/// are one list, so the patch names the resourceVersion it was read at); `None` when the node
/// already is as asked.
pub fn taint_patch(node: &Node, plan: &str, on: bool) -> Option<serde_json::Value> {
    let key = format!("{TAINT_UPCOMING_PREFIX}{plan}");
    let mut taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let has = taints.iter().any(|t| t.key == key);
    if has == on {
        return None;
    }
    if on {
        taints.push(Taint {
            key,
            effect: "PreferNoSchedule".into(),
            ..Taint::default()
        });
    } else {
        taints.retain(|t| t.key != key);
    }
    Some(serde_json::json!({
        "metadata": {"resourceVersion": node.resource_version()},
        "spec": {"taints": taints},
    }))
}

/// The Plans whose `upcoming` taint a node carries.
pub fn upcoming_taints(node: &Node) -> impl Iterator<Item = &str> {
    node.spec
        .iter()
        .flat_map(|s| s.taints.iter().flatten())
        .filter_map(|t| t.key.strip_prefix(TAINT_UPCOMING_PREFIX))
}

/// Puts the Plan's `upcoming` taint on a node or takes it off (see [`taint_patch`]), reading
/// the node again when it changed between the read and the patch. A node gone needs nothing.
pub async fn taint(
    client: &Client,
    plan: &str,
    node: &str,
    on: bool,
    may_write: &(dyn Fn() -> bool + Send + Sync),
) -> Result<(), CordonError> {
    let nodes: Api<Node> = Api::all(client.clone());
    for _ in 0..ATTEMPTS {
        let Some(current) = read(&nodes, node).await? else {
            return Ok(());
        };
        let Some(patch) = taint_patch(&current, plan, on) else {
            return Ok(());
        };
        if !may_write() {
            return Err(CordonError::Fenced(node.to_owned()));
        }
        match patch_node(&nodes, node, &patch).await? {
            Patched::Done => {
                tracing::info!(on, "upcoming taint");
                return Ok(());
            }
            Patched::Gone => return Ok(()),
            Patched::Conflict => continue,
        }
    }
    Err(CordonError::Conflict(node.to_owned()))
}

enum Patched {
    Done,
    Gone,
    Conflict,
}

async fn patch_node(
    nodes: &Api<Node>,
    node: &str,
    patch: &serde_json::Value,
) -> Result<Patched, CordonError> {
    match nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(Patched::Done),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Patched::Conflict),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Patched::Gone),
        Err(error) => Err(CordonError::Patch {
            node: node.to_owned(),
            error,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn us() -> Claimant {
        Claimant::new("system-upgrade", "suc")
    }

    /// A node with claims, each `plan` (ours) or `plan=value`.
    fn node(unschedulable: bool, claims: &[&str]) -> Node {
        let annotations: serde_json::Map<String, serde_json::Value> = claims
            .iter()
            .map(|c| {
                let (plan, value) = c.split_once('=').unwrap_or((c, "system-upgrade/suc t"));
                (format!("{CORDON_CLAIM_PREFIX}{plan}"), json!(value))
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "n", "resourceVersion": "7", "annotations": annotations},
            "spec": {"unschedulable": unschedulable},
        }))
        .unwrap()
    }

    #[test]
    fn a_schedulable_node_is_claimed_and_cordoned() {
        let (patch, outcome) = cordon_patch(&node(false, &[]), "p", true, &us(), "now").unwrap();
        assert_eq!(
            patch,
            json!({
                "metadata": {"resourceVersion": "7", "annotations": {"cordoned.upgrade.cattle.io/p": "system-upgrade/suc now"}},
                "spec": {"unschedulable": true},
            })
        );
        assert_eq!(outcome.reason, Reason::Cordoned);
    }

    #[test]
    fn a_node_cordoned_by_someone_else_is_left_to_them() {
        assert_eq!(
            cordon_patch(&node(true, &[]), "p", true, &us(), "now"),
            None
        );
        assert_eq!(
            cordon_patch(&node(true, &[]), "p", false, &us(), "now"),
            None
        );
    }

    #[test]
    fn a_node_cordoned_by_another_plan_is_claimed_too() {
        let (patch, _) = cordon_patch(&node(true, &["other"]), "p", true, &us(), "now").unwrap();
        assert_eq!(
            patch["metadata"]["annotations"],
            json!({"cordoned.upgrade.cattle.io/p": "system-upgrade/suc now"})
        );
    }

    #[test]
    fn claiming_twice_or_releasing_what_is_not_held_changes_nothing() {
        assert_eq!(
            cordon_patch(&node(true, &["p"]), "p", true, &us(), "now"),
            None
        );
        assert_eq!(
            cordon_patch(&node(true, &["other"]), "p", false, &us(), "now"),
            None
        );
    }

    #[test]
    fn the_last_claim_released_uncordons() {
        let (patch, outcome) = cordon_patch(&node(true, &["p"]), "p", false, &us(), "now").unwrap();
        assert_eq!(
            patch,
            json!({
                "metadata": {"resourceVersion": "7", "annotations": {"cordoned.upgrade.cattle.io/p": null}},
                "spec": {"unschedulable": null},
            })
        );
        assert_eq!(outcome.reason, Reason::Uncordoned);
    }

    #[test]
    fn a_release_with_other_claims_keeps_the_node_cordoned() {
        let (patch, outcome) =
            cordon_patch(&node(true, &["p", "other"]), "p", false, &us(), "now").unwrap();
        assert!(patch.get("spec").is_none());
        assert_eq!(outcome.reason, Reason::CordonReleased);
    }

    #[test]
    fn only_an_unclaimed_cordon_is_adopted() {
        assert_eq!(
            adopt_patch(&node(true, &[]), "p", &us(), "now"),
            Some(json!({"metadata": {
                "resourceVersion": "7",
                "annotations": {"cordoned.upgrade.cattle.io/p": "system-upgrade/suc now"},
            }}))
        );
        assert_eq!(adopt_patch(&node(false, &[]), "p", &us(), "now"), None);
        assert_eq!(
            adopt_patch(&node(true, &["other"]), "p", &us(), "now"),
            None
        );
    }

    #[test]
    fn claims_are_read_from_annotations() {
        let n = node(true, &["a", "b"]);
        assert_eq!(claims(&n).collect::<Vec<_>>(), ["a", "b"]);
        assert!(has_claim(&n, "a", &us()));
        assert!(!has_claim(&n, "c", &us()));
    }

    #[test]
    fn another_instances_claims_are_never_ours() {
        let theirs = node(true, &["p=rancher/suc 2026-12-01T00:00:00Z"]);
        assert!(!has_claim(&theirs, "p", &us()), "another namespace's claim");
        assert_eq!(claims(&theirs).collect::<Vec<_>>(), ["p"]);
        assert_eq!(claims_of(&theirs, &us()).count(), 0);
        assert_eq!(
            cordon_patch(&theirs, "p", false, &us(), "now"),
            None,
            "never released by us"
        );
        assert_eq!(
            cordon_patch(&theirs, "p", true, &us(), "now"),
            None,
            "never overwritten by our claim of the same name"
        );
        let legacy = node(true, &["p=2026-11-01T00:00:00Z"]);
        assert!(
            has_claim(&legacy, "p", &us()),
            "an earlier version's claim is ours"
        );
    }
}
