//! Which nodes a Plan applies to now: eligibility, the Go controller's stable per-plan order, and
//! the concurrency limit. Nodes are identified by name throughout.

use k8s_openapi::api::core::v1::Node;
use kube::core::{Selector, SelectorExt};
use sha2::{Digest, Sha256};

use crate::api::{LABEL_HOSTNAME, LABEL_PAUSE};
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

/// A node the Plan applies to: it matches the selector, has a hostname label, and is not opted
/// out (`plan.upgrade.cattle.io/<plan>=disabled`). Done or not.
pub fn eligible(plan_name: &str, selector: &Selector, node: &Node) -> bool {
    let empty = Default::default();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    selector.matches(labels)
        && labels.contains_key(LABEL_HOSTNAME)
        && labels.get(&format!("{PLAN_LABEL_PREFIX}{plan_name}")) != Some(&"disabled".to_owned())
}

/// A node needs the Plan when it is eligible and not done with this hash.
pub fn needs_plan(plan_name: &str, selector: &Selector, node: &Node, hash: &str) -> bool {
    eligible(plan_name, selector, node) && !done(plan_name, node, hash)
}

/// The node carries this Plan's label with this hash.
pub fn done(plan_name: &str, node: &Node, hash: &str) -> bool {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(&format!("{PLAN_LABEL_PREFIX}{plan_name}")))
        .is_some_and(|v| v == hash)
}

/// The node is labelled `upgrade.cattle.io/pause=true`: no upgrade starts on it.
pub fn paused(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_PAUSE))
        .is_some_and(|v| v == "true")
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

/// How many nodes of a Plan may apply it at once, and whether new ones may start now.
#[derive(Clone, Copy, Debug)]
pub struct Room {
    pub concurrency: usize,
    /// False while the Plan is paused or gated: nobody new starts.
    pub starts_new: bool,
}

/// The nodes to apply the Plan on now, sorted by name: every node still needing the Plan whose
/// upgrade is under way (even beyond the concurrency, which may have been lowered); then the
/// `placed` ones (chosen before, nothing begun there) while the concurrency has room; then, when
/// `room.starts_new` (the Plan is not paused or gated), waiting nodes that are not paused by their
/// label, in start order up to `room.concurrency`.
pub fn select<'a>(
    plan: &Plan,
    selector: &Selector,
    nodes: &[&'a Node],
    under_way: &[String],
    placed: &[String],
    room: Room,
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
    let (mut selected, rest): (Vec<&Node>, Vec<&Node>) = needing
        .into_iter()
        .partition(|n| under_way.contains(&name(n)));
    let (mut kept, mut waiting): (Vec<&Node>, Vec<&Node>) =
        rest.into_iter().partition(|n| placed.contains(&name(n)));
    kept.sort_by_cached_key(|n| start_order_key(n, plan_uid, hash));
    waiting.retain(|n| room.starts_new && !paused(n));
    waiting.sort_by_cached_key(|n| start_order_key(n, plan_uid, hash));
    let free = room.concurrency.saturating_sub(selected.len());
    selected.extend(kept.into_iter().chain(waiting).take(free));
    selected.sort_by_key(|n| name(n));
    selected
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HASH: &str = "h1";

    fn room(concurrency: usize, starts_new: bool) -> Room {
        Room {
            concurrency,
            starts_new,
        }
    }

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
        let first = select(&p, &selector, &refs, &[], &[], room(2, true), HASH);
        assert_eq!(first.len(), 2);
        assert!(
            names(&first).windows(2).all(|w| w[0] < w[1]),
            "sorted by name"
        );
        // The same input always picks the same nodes, in whatever order nodes are listed.
        let mut reversed = refs.clone();
        reversed.reverse();
        assert_eq!(
            names(&select(
                &p,
                &selector,
                &reversed,
                &[],
                &[],
                room(2, true),
                HASH
            )),
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
            names(&select(
                &p,
                &selector,
                &refs,
                &applying,
                &[],
                room(1, true),
                HASH
            )),
            ["a", "b", "c"]
        );
        // Raising it fills the free slots at once.
        assert_eq!(
            select(&p, &selector, &refs, &applying, &[], room(4, true), HASH).len(),
            4
        );
        // A node that is done leaves; an applying name that no longer exists is dropped.
        let mut done = all.clone();
        done[3] = node("a", json!({"plan.upgrade.cattle.io/p": HASH}));
        let refs_done: Vec<&Node> = done.iter().collect();
        let gone = vec!["a".to_owned(), "zz".to_owned()];
        let next = select(&p, &selector, &refs_done, &gone, &[], room(1, true), HASH);
        assert_eq!(next.len(), 1);
        assert_ne!(names(&next), ["a"]);
    }

    #[test]
    fn placed_nodes_keep_their_place_only_within_the_concurrency() {
        let p = plan(json!({}));
        let selector = node_selector(&p).unwrap().unwrap();
        let all: Vec<Node> = ["a", "b", "c", "d"]
            .iter()
            .map(|n| node(n, json!({})))
            .collect();
        let refs: Vec<&Node> = all.iter().collect();
        let owned = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let pick = |under_way: &[&str], placed: &[&str], room: Room| {
            names(&select(
                &p,
                &selector,
                &refs,
                &owned(under_way),
                &owned(placed),
                room,
                HASH,
            ))
        };
        // Lowered to 2 after c and d were chosen: nothing has begun there, so they wait.
        assert_eq!(pick(&["a", "b"], &["c", "d"], room(2, true)), ["a", "b"]);
        // With room for one more, a placed node goes before any new one.
        assert_eq!(pick(&["a", "b"], &["d"], room(3, true)), ["a", "b", "d"]);
        // Paused: placed nodes keep their place within the concurrency, nobody new is added.
        assert_eq!(pick(&[], &["d"], room(2, false)), ["d"]);
    }

    #[test]
    fn a_node_labelled_pause_starts_nothing_but_keeps_what_it_runs() {
        let p = plan(json!({}));
        let selector = node_selector(&p).unwrap().unwrap();
        let all = [
            node("a", json!({"upgrade.cattle.io/pause": "true"})),
            node("b", json!({"upgrade.cattle.io/pause": "false"})),
            node("c", json!({"upgrade.cattle.io/pause": "true"})),
        ];
        let refs: Vec<&Node> = all.iter().collect();
        assert!(paused(&all[0]) && !paused(&all[1]));
        assert_eq!(
            names(&select(&p, &selector, &refs, &[], &[], room(3, true), HASH)),
            ["b"]
        );
        // Paused while running: it goes on (its Job finishes).
        let running = vec!["c".to_owned()];
        let with_c = |room| names(&select(&p, &selector, &refs, &running, &[], room, HASH));
        assert_eq!(with_c(room(3, true)), ["b", "c"]);
        // Still eligible, so counted among the Plan's nodes.
        assert!(eligible("p", &selector, &all[0]));
        // A paused Plan starts nobody new.
        assert_eq!(with_c(room(3, false)), ["c"]);
    }

    #[test]
    fn concurrency_as_a_percentage_of_the_selected_nodes() {
        use crate::api::IntOrPercent;
        let text = |t: &str| IntOrPercent::Text(t.to_owned());
        assert_eq!(text("25%").nodes(10), Some(2), "rounded down");
        assert_eq!(text("25%").nodes(3), Some(1), "at least one");
        assert_eq!(text("25%").nodes(0), Some(1));
        assert_eq!(text("100%").nodes(7), Some(7));
        assert_eq!(text("50%").nodes(1000), Some(500));
        assert_eq!(
            IntOrPercent::Int(3).nodes(10),
            Some(3),
            "a number is a number"
        );
        assert_eq!(IntOrPercent::Int(-1).nodes(10), Some(0));
        for bad in ["25", "%", "x%", "-5%", " 5%", "5 %", "1.5%", "9999999999%"] {
            assert_eq!(text(bad).nodes(10), None, "{bad}");
        }
        assert_eq!(text("0%").percent(), Some(0));
        assert_eq!(text("250%").percent(), Some(250));
        // Written back as it was read.
        let read: IntOrPercent = serde_json::from_value(json!("25%")).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), json!("25%"));
        let read: IntOrPercent = serde_json::from_value(json!(2)).unwrap();
        assert_eq!(serde_json::to_value(&read).unwrap(), json!(2));
        assert!(serde_json::from_value::<IntOrPercent>(json!(1.5)).is_err());
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
