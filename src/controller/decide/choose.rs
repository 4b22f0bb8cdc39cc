//! Phase: the nodes that apply or finish the Plan now. Those already applying, or still
//! finishing an earlier Job, keep their place (counting against the concurrency); others start
//! in the stable per-Plan order up to `concurrency`.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;

use super::facts::finished_at;
use super::jobs::Jobs;
use super::pass::Pass;
use super::plan::Resolved;
use crate::controller::select;

/// The nodes of a Plan that may start nodes: those under way, then new ones in order up to
/// `concurrency` (a percentage counts the eligible nodes, done or not), none while the Plan is
/// paused or `gated`. Without a `nodeSelector` nothing is selected.
pub(super) fn select<'a>(
    pass: &Pass<'_, 'a>,
    r: &Resolved,
    jobs: &Jobs<'a>,
    gated: bool,
) -> Vec<&'a Node> {
    let cx = pass.cx;
    let Ok(Some(selector)) = select::node_selector(cx.plan) else {
        return Vec::new();
    };
    let eligible = cx
        .nodes
        .values()
        .filter(|n| select::eligible(&cx.plan_name, &selector, n))
        .count();
    let candidates: Vec<&Node> = cx
        .nodes
        .values()
        .copied()
        .filter(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            !pass.ledger.done_now.contains(name) && !pass.ledger.skipped.contains(name)
        })
        .collect();
    let concurrency = if cx.paused() || gated {
        0
    } else {
        cx.plan
            .spec
            .concurrency
            .as_ref()
            .and_then(|c| c.nodes(eligible))
            .unwrap_or(0)
    };
    select::select(
        cx.plan,
        &selector,
        &candidates,
        &running(pass, jobs),
        concurrency,
        &r.hash,
    )
}

/// The nodes with an upgrade under way: persisted as applying, or with a running Job.
pub(super) fn running(pass: &Pass<'_, '_>, jobs: &Jobs<'_>) -> Vec<String> {
    let mut running: BTreeSet<String> = pass.cx.applying_before.iter().cloned().collect();
    running.extend(jobs.finishing.keys().cloned());
    running.extend(
        jobs.current
            .iter()
            .filter(|(_, j)| finished_at(j).is_none())
            .filter(|(_, j)| j.spec.as_ref().and_then(|s| s.parallelism) != Some(0))
            .map(|(n, _)| n.clone()),
    );
    running
        .into_iter()
        .filter(|n| !pass.ledger.skipped.contains(n))
        .collect()
}

/// When the Plan may not start anything (invalid or unresolved): the nodes whose upgrade is
/// under way keep their place, so their Jobs are followed to the end; nothing else is chosen.
pub(super) fn continuing<'a>(pass: &Pass<'_, 'a>, jobs: &Jobs<'a>) -> Vec<&'a Node> {
    running(pass, jobs)
        .iter()
        .filter(|n| !pass.ledger.done_now.contains(*n))
        .filter_map(|n| pass.node(n))
        .collect()
}
