//! Phase: which nodes carry the Plan's `upcoming.upgrade.cattle.io/<plan>:PreferNoSchedule`
//! taint (`drain.preferUpgradedNodes`). Nodes still waiting for their turn in a rollout that
//! drains carry it, so the scheduler puts pods evicted from a node being drained on nodes
//! already upgraded (or outside the Plan) where it can, and they are not moved twice. The taint
//! is only a preference: it never keeps a pod from being scheduled.

use super::decision::Change;
use super::pass::Pass;
use super::plan::Resolved;
use crate::api::TAINT_UPCOMING_PREFIX;
use crate::controller::select;

/// Adds the taint where a node waits for its turn and takes it off everywhere else. `running`
/// is false while the Plan may start no node (invalid, outside its window); then, as while
/// it is paused, no node keeps it, nor does a node labelled `upgrade.cattle.io/pause`.
pub(super) fn mark(pass: &mut Pass<'_, '_>, r: &Resolved, running: bool) {
    let cx = pass.cx;
    let key = format!("{TAINT_UPCOMING_PREFIX}{}", cx.plan_name);
    let wanted_by_plan = running
        && !cx.paused()
        && cx
            .plan
            .spec
            .drain
            .as_ref()
            .is_some_and(|d| d.prefer_upgraded_nodes != Some(false));
    let selector = select::node_selector(cx.plan).ok().flatten();
    let mut changes = Vec::new();
    for (name, node) in &cx.nodes {
        let wanted = wanted_by_plan
            && selector
                .as_ref()
                .is_some_and(|s| select::needs_plan(&cx.plan_name, s, node, &r.hash))
            && !select::paused(node)
            && !pass.ledger.done_now.contains(name)
            && !pass.ledger.skipped.contains(name)
            && !pass.ledger.version_held.contains_key(name);
        let has = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == key));
        if wanted != has {
            changes.push(Change::Taint {
                node: name.clone(),
                on: wanted,
            });
        }
    }
    pass.out.after.extend(changes);
}
