//! Phase: order between Plans. `spec.dependsOn`: each named Plan of the namespace exists and is
//! Complete for its current version; `spec.exclusiveGroup`: no other Plan of the group has an
//! upgrade or a hook under way. Either holds new starts (the gate, with the reason naming the
//! Plans); what runs finishes. A held Plan looks again every 15 s: a change of another Plan's
//! status does not wake it.

use std::collections::BTreeMap;

use super::GATE_RETRY;
use super::decision::Peer;
use super::facts::listed;
use super::holds::Gate;
use super::pass::Pass;
use crate::api::Reason;
use crate::validation::order::{cycle_message, cycle_with};

/// What another Plan's message may add to this Plan's, at most.
const QUOTED: usize = 160;

/// The hold the order between Plans puts on new starts, if any.
pub(super) fn gate(pass: &mut Pass<'_, '_>) -> Option<Gate> {
    let cx = pass.cx;
    let peers: BTreeMap<&str, &Peer> = (cx.obs.peers.iter())
        .filter(|p| p.name != cx.plan_name)
        .map(|p| (p.name.as_str(), p))
        .collect();
    let gate = depends_on(pass, &peers).or_else(|| exclusive(pass, &peers));
    if gate.is_some() {
        pass.out.requeue_within(GATE_RETRY);
    }
    gate
}

/// Each Plan of `spec.dependsOn` that is not Complete for its current version, and why.
fn depends_on(pass: &Pass<'_, '_>, peers: &BTreeMap<&str, &Peer>) -> Option<Gate> {
    let cx = pass.cx;
    let wanted = cx.plan.spec.depends_on.as_deref().unwrap_or_default();
    if wanted.is_empty() {
        return None;
    }
    let others = peers
        .values()
        .map(|p| (p.name.as_str(), p.depends_on.as_slice()));
    if let Some(cycle) = cycle_with(&cx.plan_name, wanted, others) {
        return Some((Reason::WaitingForPlans, cycle_message(&cycle)));
    }
    let waits: Vec<String> = wanted
        .iter()
        .filter_map(|name| match peers.get(name.as_str()) {
            None => Some(format!(
                "Plan {name} does not exist in namespace {} (create it, or remove it from \
                 spec.dependsOn)",
                cx.namespace
            )),
            Some(peer) => match &peer.complete {
                Some((true, _, _)) => None,
                None => Some(format!(
                    "Plan {name} has not reported on its current spec yet"
                )),
                Some((false, reason, message)) => {
                    let state = if peer.stalled {
                        "failed"
                    } else {
                        "is not Complete"
                    };
                    Some(format!(
                        "Plan {name} {state} ({reason}{}{})",
                        if message.is_empty() { "" } else { ": " },
                        quoted(message)
                    ))
                }
            },
        })
        .collect();
    (!waits.is_empty()).then(|| {
        (
            Reason::WaitingForPlans,
            format!("waiting for spec.dependsOn: {}", waits.join("; ")),
        )
    })
}

/// Another Plan of the same `spec.exclusiveGroup` with something under way.
fn exclusive(pass: &Pass<'_, '_>, peers: &BTreeMap<&str, &Peer>) -> Option<Gate> {
    let group = pass.cx.plan.spec.exclusive_group.as_deref()?;
    let busy: Vec<String> = peers
        .values()
        .filter(|p| p.exclusive_group.as_deref() == Some(group) && !p.busy.is_empty())
        .map(|p| {
            let names: Vec<&str> = p.busy.iter().map(String::as_str).collect();
            format!("Plan {} has {} under way", p.name, listed("node", &names))
        })
        .collect();
    (!busy.is_empty()).then(|| {
        (
            Reason::WaitingForGroup,
            format!(
                "exclusiveGroup {group}: {}; this Plan starts once it is done",
                busy.join("; ")
            ),
        )
    })
}

fn quoted(message: &str) -> String {
    match message.char_indices().nth(QUOTED) {
        Some((end, _)) => format!("{}…", &message[..end]),
        None => message.to_owned(),
    }
}
