//! Phase: the nodes that apply or finish the Plan now. Those whose upgrade is under way, or
//! still finishing an earlier Job, keep their place (counting against the concurrency); those
//! chosen before where nothing began keep theirs within the concurrency; others start in the
//! stable per-Plan order up to `concurrency`.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Node;

use super::canary::Wave;
use super::facts::finished_at;
use super::jobs::Jobs;
use super::pass::Pass;
use super::plan::Resolved;
use crate::controller::cordon::claims;
use crate::controller::select;

/// The nodes of a Plan that may start nodes: those under way, then those chosen before, then
/// new ones in order up to `concurrency` (a percentage counts the eligible nodes, done or not),
/// no new ones while the Plan is paused or `gated`, and only the first wave's while it runs
/// (`wave`). Without a `nodeSelector` nothing is selected.
pub(super) fn select<'a>(
    pass: &Pass<'_, 'a>,
    r: &Resolved,
    jobs: &Jobs<'a>,
    wave: &Wave,
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
    let under_way = under_way(pass, jobs);
    // A node a version rule holds does not start; one whose upgrade is under way goes on.
    let candidates: Vec<&Node> = cx
        .nodes
        .values()
        .copied()
        .filter(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            let going = under_way.iter().any(|u| u == name);
            !pass.ledger.done_now.contains(name)
                && !pass.ledger.skipped.contains(name)
                && (!pass.ledger.version_held.contains_key(name) || going)
                && (wave.admits(name) || going)
        })
        .collect();
    // The concurrency stays what the Plan says while it is paused or gated: nodes chosen
    // before keep their place within it, and only new starts are held.
    let concurrency = cx
        .plan
        .spec
        .concurrency
        .as_ref()
        .and_then(|c| c.nodes(eligible))
        .unwrap_or(0)
        .min(wave.room().unwrap_or(usize::MAX));
    let placed: Vec<String> = pass
        .cx
        .applying_before
        .iter()
        .filter(|n| !under_way.contains(n))
        .cloned()
        .collect();
    select::select(
        cx.plan,
        &selector,
        &candidates,
        &under_way,
        &placed,
        select::Room {
            concurrency,
            starts_new: !(cx.paused() || gated),
        },
        &r.hash,
    )
}

/// The nodes whose upgrade is under way: a Job of the Plan not finished yet, an earlier Job
/// finishing, or a node persisted as applying where something began (a Job of the Plan, failed
/// or finished and waiting to be labelled, or a cordon for the Plan: its Job may have begun and
/// gone). They keep their place whatever the concurrency.
pub(super) fn under_way(pass: &Pass<'_, '_>, jobs: &Jobs<'_>) -> Vec<String> {
    let mut under_way: BTreeSet<String> = jobs.finishing.keys().cloned().collect();
    under_way.extend(
        jobs.current
            .iter()
            .filter(|(_, j)| finished_at(j).is_none())
            .filter(|(_, j)| j.spec.as_ref().and_then(|s| s.parallelism) != Some(0))
            .map(|(n, _)| n.clone()),
    );
    under_way.extend(
        pass.cx
            .applying_before
            .iter()
            .filter(|n| !nothing_began(pass, jobs, n))
            .cloned(),
    );
    under_way
        .into_iter()
        .filter(|n| !pass.ledger.skipped.contains(n))
        .collect()
}

/// A node persisted as applying where nothing began: no Job of the Plan (its create failed, or
/// it went before it began), no entry of a finished one, no cordon for the Plan.
fn nothing_began(pass: &Pass<'_, '_>, jobs: &Jobs<'_>, name: &str) -> bool {
    !jobs.current.contains_key(name)
        && !jobs.finishing.contains_key(name)
        && !pass.out.entries.contains_key(name)
        && pass
            .node(name)
            .is_none_or(|node| !pass.claims(name, node) && !go_era_cordon(pass, name, node))
}

/// The nodes with an upgrade under way or chosen before (persisted as applying).
pub(super) fn running(pass: &Pass<'_, '_>, jobs: &Jobs<'_>) -> Vec<String> {
    let mut running: BTreeSet<String> = under_way(pass, jobs).into_iter().collect();
    running.extend(
        pass.cx
            .applying_before
            .iter()
            .filter(|n| !pass.ledger.skipped.contains(*n))
            .cloned(),
    );
    running.into_iter().collect()
}

/// A node the Go controller named in `applying` (no entry of ours) that is cordoned with no
/// claim: its Go Job cordoned it and may have gone before the takeover.
pub(super) fn go_era_cordon(pass: &Pass<'_, '_>, name: &str, node: &Node) -> bool {
    node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
        && pass.cx.applying_before.iter().any(|n| n == name)
        && !pass.cx.old_entries.contains_key(name)
        && claims(node).next().is_none()
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
