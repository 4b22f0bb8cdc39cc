//! Phase: version safety for K3s and RKE2 Plans (the rules are
//! [`crate::validation::versions`]'s). Before nodes are chosen, the nodes a version rule holds
//! are found (a downgrade, a skipped minor, control-plane nodes behind): they do not start, and
//! what is under way on them goes on. After the nodes are tracked, each held node that was not
//! chosen gets a `Held` entry saying why.

use k8s_openapi::api::core::v1::Node;

use super::decision::{Note, Target};
use super::pass::Pass;
use super::plan::Resolved;
use crate::api::{Phase, Reason};
use crate::controller::select;
use crate::controller::status::COMPLETE;
use crate::validation::versions;

/// Finds the nodes a version rule holds, into `pass.ledger.version_held`.
pub(super) fn find_holds(pass: &mut Pass<'_, '_>, r: &Resolved) {
    let cx = pass.cx;
    let Some(target) = versions::target(&cx.plan.spec, &r.version) else {
        return;
    };
    let Ok(Some(selector)) = select::node_selector(cx.plan) else {
        return;
    };
    let servers: Vec<&Node> = cx
        .nodes
        .values()
        .copied()
        .filter(|n| versions::is_control_plane(n))
        .collect();
    for (name, node) in &cx.nodes {
        if !select::needs_plan(&cx.plan_name, &selector, node, &r.hash)
            || pass.ledger.skipped.contains(name)
        {
            continue;
        }
        if let Some(hold) = versions::hold(&cx.plan.spec, &target, node, servers.iter().copied()) {
            let message = hold.message(name, &target);
            pass.ledger
                .version_held
                .insert(name.clone(), (hold.reason(), message));
        }
    }
}

/// Most `Held` entries in a Plan's status: an agent Plan of a thousand nodes waiting for its
/// servers would otherwise write a thousand; the condition and the metric count them all.
const HELD_ENTRIES: usize = 50;

/// A `Held` entry for each held node that was not chosen (one whose upgrade is under way goes
/// on and has its own entry), for the first [`HELD_ENTRIES`] by name.
pub(super) fn enter_holds(pass: &mut Pass<'_, '_>, chosen: &[&Node]) {
    let held: Vec<(String, String)> = pass
        .ledger
        .version_held
        .iter()
        .filter(|(name, _)| {
            !chosen
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(name.as_str()))
        })
        .map(|(name, (_, message))| (name.clone(), message.clone()))
        .take(HELD_ENTRIES)
        .collect();
    for (name, message) in held {
        if pass.out.entries.contains_key(&name) {
            continue;
        }
        let mut entry = pass.cx.entry(&name, Phase::Held, "", &message);
        entry.job = None;
        pass.out.enter(entry);
    }
}

/// Complete is False with the first hold's reason when held nodes are all that is left to do:
/// the message says why and how many nodes wait; a downgrade or skipped minor is a warning,
/// told once per version, and waiting for the servers is told once per version too.
pub(super) fn hold_condition(pass: &mut Pass<'_, '_>, version: &str) {
    let Some((reason, message)) = pass.ledger.version_held.values().next() else {
        return;
    };
    let (reason, mut text) = (*reason, message.clone());
    let others = pass.ledger.version_held.len() - 1;
    if others > 0 {
        text.push_str(&format!(
            " ({others} more node(s) held, up to {HELD_ENTRIES} in status.nodes)"
        ));
    }
    pass.out.set_condition(COMPLETE, "False", reason, &text);
    let warning = reason != Reason::WaitingForServers;
    let key = format!("{reason}/{version}");
    pass.out
        .notes
        .push(Note::new(Target::Plan, warning, reason, text).once(key));
}
