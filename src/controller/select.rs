//! Which nodes a Plan applies to now: eligibility, the Go controller's stable per-plan order, and
//! the concurrency limit. Nodes are identified by name throughout.

use k8s_openapi::api::core::v1::Node;
use kube::core::{Selector, SelectorExt};
use sha2::{Digest, Sha256};

use crate::api::LABEL_HOSTNAME;
use crate::api::{PLAN_LABEL_PREFIX, Plan};
use crate::controller::hash::hex;

/// The Plan's node selector; `None` when the Plan selects no node (no `nodeSelector`).
pub fn node_selector(plan: &Plan) -> Result<Option<Selector>, String> {
    match &plan.spec.node_selector {
        None => Ok(None),
        Some(selector) => Selector::try_from(selector.clone())
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

/// A node needs the Plan when it matches the selector, has a hostname label, and is neither
/// opted out (`plan.upgrade.cattle.io/<plan>=disabled`) nor done with this hash.
pub fn needs_plan(plan_name: &str, selector: &Selector, node: &Node, hash: &str) -> bool {
    let empty = Default::default();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    if !selector.matches(labels) || !labels.contains_key(LABEL_HOSTNAME) {
        return false;
    }
    match labels.get(&format!("{PLAN_LABEL_PREFIX}{plan_name}")) {
        Some(value) => value != "disabled" && value != hash,
        None => true,
    }
}

/// The order in which waiting nodes are started: by hex SHA-256 of node UID, plan UID and hash,
/// so every pass for one hash picks the same nodes, and different Plans spread differently.
pub fn start_order_key(node: &Node, plan_uid: &str, hash: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(node.metadata.uid.as_deref().unwrap_or_default());
    hasher.update(plan_uid);
    hasher.update(hash);
    hex(&hasher.finalize())
}

/// The nodes to apply the Plan on now, sorted by name: every node still needing the Plan that
/// is already applying (even beyond the concurrency, which may have been lowered), then waiting
/// nodes in start order up to `concurrency`.
pub fn select<'a>(
    plan: &Plan,
    selector: &Selector,
    nodes: &[&'a Node],
    applying: &[String],
    concurrency: usize,
    hash: &str,
) -> Vec<&'a Node> {
    let plan_name = plan.metadata.name.as_deref().unwrap_or_default();
    let plan_uid = plan.metadata.uid.as_deref().unwrap_or_default();
    let name = |n: &Node| n.metadata.name.clone().unwrap_or_default();
    let needing: Vec<&Node> = nodes
        .iter()
        .copied()
        .filter(|n| needs_plan(plan_name, selector, n, hash))
        .collect();
    let (mut selected, mut waiting): (Vec<&Node>, Vec<&Node>) = needing
        .into_iter()
        .partition(|n| applying.contains(&name(n)));
    if selected.len() < concurrency {
        waiting.sort_by_cached_key(|n| start_order_key(n, plan_uid, hash));
        let room = concurrency - selected.len();
        selected.extend(waiting.into_iter().take(room));
    }
    selected.sort_by_key(|n| name(n));
    selected
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HASH: &str = "h1";

    fn plan(selector: serde_json::Value) -> Plan {
        let mut spec = json!({"upgrade": {"image": "x"}});
        if !selector.is_null() {
            spec["nodeSelector"] = selector;
        }
        serde_json::from_value(json!({"metadata": {"name": "p", "uid": "plan-uid"}, "spec": spec}))
            .unwrap()
    }

    fn node(name: &str, labels: serde_json::Value) -> Node {
        let mut all = json!({"kubernetes.io/hostname": name});
        for (k, v) in labels.as_object().unwrap() {
            all[k] = v.clone();
        }
        serde_json::from_value(
            json!({"metadata": {"name": name, "uid": format!("uid-{name}"), "labels": all}}),
        )
        .unwrap()
    }

    fn names(nodes: &[&Node]) -> Vec<String> {
        nodes
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect()
    }

    #[test]
    fn null_selector_selects_nothing_and_empty_selects_all() {
        assert!(
            node_selector(&plan(serde_json::Value::Null))
                .unwrap()
                .is_none()
        );
        let all = node_selector(&plan(json!({}))).unwrap().unwrap();
        assert!(needs_plan("p", &all, &node("a", json!({})), HASH));
    }

    #[test]
    fn eligibility() {
        let selector = node_selector(&plan(json!({"matchLabels": {"upgrade": "true"}})))
            .unwrap()
            .unwrap();
        assert!(needs_plan(
            "p",
            &selector,
            &node("a", json!({"upgrade": "true"})),
            HASH
        ));
        assert!(
            !needs_plan("p", &selector, &node("a", json!({})), HASH),
            "selector must match"
        );
        assert!(
            !needs_plan(
                "p",
                &selector,
                &node(
                    "a",
                    json!({"upgrade": "true", "plan.upgrade.cattle.io/p": "disabled"})
                ),
                HASH
            ),
            "opted out"
        );
        assert!(
            !needs_plan(
                "p",
                &selector,
                &node(
                    "a",
                    json!({"upgrade": "true", "plan.upgrade.cattle.io/p": HASH})
                ),
                HASH
            ),
            "done"
        );
        assert!(
            needs_plan(
                "p",
                &selector,
                &node(
                    "a",
                    json!({"upgrade": "true", "plan.upgrade.cattle.io/p": "old"})
                ),
                HASH
            ),
            "older hash"
        );
        assert!(needs_plan(
            "p",
            &selector,
            &node(
                "a",
                json!({"upgrade": "true", "plan.upgrade.cattle.io/other": HASH})
            ),
            HASH
        ));
        let mut no_hostname = node("a", json!({"upgrade": "true"}));
        no_hostname
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(LABEL_HOSTNAME);
        assert!(
            !needs_plan("p", &selector, &no_hostname, HASH),
            "no hostname label"
        );
    }

    #[test]
    fn expressions_select_like_kubernetes() {
        let selector = node_selector(&plan(json!({"matchExpressions": [
            {"key": "node-role.kubernetes.io/control-plane", "operator": "DoesNotExist"},
            {"key": "arch", "operator": "NotIn", "values": ["arm"]},
        ]})))
        .unwrap()
        .unwrap();
        assert!(needs_plan("p", &selector, &node("a", json!({})), HASH));
        assert!(needs_plan(
            "p",
            &selector,
            &node("a", json!({"arch": "amd64"})),
            HASH
        ));
        assert!(!needs_plan(
            "p",
            &selector,
            &node("a", json!({"arch": "arm"})),
            HASH
        ));
        assert!(!needs_plan(
            "p",
            &selector,
            &node(
                "a",
                json!({"node-role.kubernetes.io/control-plane": "true"})
            ),
            HASH
        ));
    }

    #[test]
    fn concurrency_and_continuing_nodes() {
        let p = plan(json!({}));
        let selector = node_selector(&p).unwrap().unwrap();
        let all: Vec<Node> = ["e", "b", "d", "a", "c"]
            .iter()
            .map(|n| node(n, json!({})))
            .collect();
        let refs: Vec<&Node> = all.iter().collect();
        let first = select(&p, &selector, &refs, &[], 2, HASH);
        assert_eq!(first.len(), 2);
        assert!(
            names(&first).windows(2).all(|w| w[0] < w[1]),
            "sorted by name"
        );
        // The same input always picks the same nodes, in whatever order nodes are listed.
        let mut reversed = refs.clone();
        reversed.reverse();
        assert_eq!(
            names(&select(&p, &selector, &reversed, &[], 2, HASH)),
            names(&first)
        );
        // The order is the SHA-256 of node UID, plan UID and hash.
        let mut keyed: Vec<(String, String)> = all
            .iter()
            .map(|n| {
                (
                    start_order_key(n, "plan-uid", HASH),
                    n.metadata.name.clone().unwrap(),
                )
            })
            .collect();
        keyed.sort();
        let mut expected: Vec<String> = keyed.into_iter().take(2).map(|(_, n)| n).collect();
        expected.sort();
        assert_eq!(names(&first), expected);

        // Applying nodes continue even past a lowered concurrency; nobody new starts.
        let applying = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        assert_eq!(
            names(&select(&p, &selector, &refs, &applying, 1, HASH)),
            ["a", "b", "c"]
        );
        // Raising it fills the free slots at once.
        assert_eq!(select(&p, &selector, &refs, &applying, 4, HASH).len(), 4);
        // A node that is done leaves; an applying name that no longer exists is dropped.
        let mut done = all.clone();
        done[3] = node("a", json!({"plan.upgrade.cattle.io/p": HASH}));
        let refs_done: Vec<&Node> = done.iter().collect();
        let gone = vec!["a".to_owned(), "zz".to_owned()];
        let next = select(&p, &selector, &refs_done, &gone, 1, HASH);
        assert_eq!(next.len(), 1);
        assert_ne!(names(&next), ["a"]);
    }

    #[test]
    fn start_order_depends_on_plan_and_hash() {
        let n = node("a", json!({}));
        assert_eq!(start_order_key(&n, "u", "h").len(), 64);
        assert_ne!(start_order_key(&n, "u", "h"), start_order_key(&n, "v", "h"));
        assert_ne!(start_order_key(&n, "u", "h"), start_order_key(&n, "u", "i"));
        // sha256("uid-a" + "u" + "h")
        assert_eq!(
            start_order_key(&n, "u", "h"),
            hex(&Sha256::digest(b"uid-auh"))
        );
    }
}
