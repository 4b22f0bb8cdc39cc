//! What holds new starts: a Plan CRD that lacks this controller's spec fields, a closed health
//! gate (`allNodesReady`, the Prometheus query), `spec.paused` or a node's pause label; and the
//! window, outside which a rollout does not start. Holds never stop what runs.

use k8s_openapi::api::core::v1::Node;

use super::GATE_RETRY;
use super::WINDOW_RETRY;
use super::choose;
use super::decision::QueryOutcome;
use super::facts::{listed, ready_since};
use super::jobs::Jobs;
use super::pass::Pass;
use super::plan::Resolved;
use crate::api::{LABEL_PAUSE, Plan, Reason};
use crate::controller::select;
use crate::controller::status::{self, COMPLETE};
use crate::syntax::window;

/// Why new starts are held, if they are: a closed health gate, or a Plan CRD that lacks this
/// controller's spec fields; with the reason for the Complete condition.
pub(super) type Gate = (Reason, String);

/// The gate of this pass: the CRD's hold first; then, for a Plan that may start nodes, the
/// health gates (every selected node Ready, `healthGates.allNodesReady`; the Prometheus query
/// without series; each object gate's expression true).
pub(super) fn gate(pass: &mut Pass<'_, '_>, r: &Resolved) -> Option<Gate> {
    let mut gate = r.crd_hold.clone();
    if !r.ready {
        return gate;
    }
    let plan = pass.cx.plan;
    let Some(gates) = &plan.spec.health_gates else {
        return gate;
    };
    let mut closed = Vec::new();
    if gates.all_nodes_ready == Some(true)
        && let Ok(Some(selector)) = select::node_selector(plan)
    {
        let not_ready: Vec<&str> = pass
            .cx
            .nodes
            .iter()
            .filter(|(_, n)| select::eligible(&pass.cx.plan_name, &selector, n))
            .filter(|(_, n)| ready_since(n).is_none())
            .map(|(name, _)| name.as_str())
            .collect();
        if !not_ready.is_empty() {
            closed.push(format!(
                "{} not Ready (healthGates.allNodesReady)",
                listed("node", &not_ready)
            ));
        }
    }
    match &pass.cx.obs.query {
        Some(QueryOutcome::Firing(series)) => closed.push(format!(
            "the Prometheus query returns {series} (healthGates.prometheus)"
        )),
        Some(QueryOutcome::Failed(error)) => closed.push(format!(
            "the Prometheus query failed: {error} (healthGates.prometheus)"
        )),
        Some(QueryOutcome::Clear) | None => {}
    }
    closed.extend(pass.cx.obs.object_gates.iter().cloned());
    if !closed.is_empty() {
        pass.out.requeue_within(GATE_RETRY);
        if gate.is_none() {
            gate = Some((Reason::WaitingForHealth, closed.join("; ")));
        }
    }
    gate
}

/// What holds a node whose Job would be created now (a retry, or a Job that went away):
/// `spec.paused`, the node's pause label, or a closed gate; the reason for the Complete
/// condition and what to say. Jobs that exist are never held.
pub(super) fn hold(pass: &Pass<'_, '_>, gate: Option<&Gate>, node_name: &str) -> Option<Gate> {
    if pass.cx.deleting() {
        return Some((Reason::Paused, "the Plan is being deleted".into()));
    }
    if pass.cx.paused() {
        return Some((Reason::Paused, "spec.paused is true".into()));
    }
    if pass.node(node_name).is_some_and(select::paused) {
        let why = format!("node {node_name} is labelled {LABEL_PAUSE}=true");
        return Some((Reason::Paused, why));
    }
    gate.cloned()
}

/// A rollout may only start inside one of its windows (`window`, `windows`); once started it
/// runs to completion, unless the window that closed last says `onClose: Stop` (see
/// [`stopped_by_window`]).
pub(super) fn window_closed(pass: &Pass<'_, '_>, jobs: &Jobs<'_>, chosen: &[&Node]) -> bool {
    let windows = windows(pass.cx.plan);
    if windows.as_ref().is_some_and(Vec::is_empty)
        || chosen.is_empty()
        || !choose::running(pass, jobs).is_empty()
    {
        return false;
    }
    // One that does not parse (the Plan is then invalid) is never open.
    !windows.is_some_and(|w| w.iter().any(|(w, _)| w.contains(pass.cx.obs.now)))
}

/// Outside every window, with a rollout under way, the window that closed last says
/// `onClose: Stop`: no node starts, and only upgrades that began go on until a window opens.
pub(super) fn stopped_by_window(pass: &Pass<'_, '_>, jobs: &Jobs<'_>) -> bool {
    let Some(windows) = windows(pass.cx.plan).filter(|w| !w.is_empty()) else {
        return false;
    };
    let now = pass.cx.obs.now;
    if windows.iter().any(|(w, _)| w.contains(now)) || choose::running(pass, jobs).is_empty() {
        return false;
    }
    windows
        .iter()
        .filter_map(|(w, stop)| Some((w.last_close_before(now)?, *stop)))
        .max_by_key(|(closed, _)| *closed)
        .is_some_and(|(_, stop)| stop)
}

/// Complete while a window that closed with `onClose: Stop` holds the rollout: Waiting, as
/// outside a window, saying that the upgrades that began finish (told once, as Waiting is).
pub(super) fn stopped_condition(pass: &mut Pass<'_, '_>, r: &Resolved, applying: &[String]) {
    let mut message = "current time is not within configured window (onClose: Stop)".to_owned();
    if !applying.is_empty() {
        message.push_str(&format!(
            "; the upgrades that began on {} finish; no other node starts until a window opens",
            applying.join(",")
        ));
    }
    let event = format!(
        "The window closed (onClose: Stop): version {} stops starting nodes until a window \
         opens. Hash: {}",
        r.version, r.hash
    );
    waiting(pass, &message, event);
}

/// The Plan's windows (`window`, then `windows`), each with whether it stops a rollout under
/// way when it closes; `None` when one does not parse.
fn windows(plan: &Plan) -> Option<Vec<(window::TimeWindow, bool)>> {
    (plan.spec.window.iter())
        .chain(plan.spec.windows.iter().flatten())
        .map(|spec| {
            let days: Vec<String> = spec.days.iter().flatten().map(|d| d.0.clone()).collect();
            let parsed = window::TimeWindow::parse(
                &days,
                spec.start_time.as_deref().unwrap_or_default(),
                spec.end_time.as_deref().unwrap_or_default(),
                spec.time_zone.as_deref().unwrap_or_default(),
            )
            .ok()?;
            Some((parsed, spec.on_close.as_deref() == Some("Stop")))
        })
        .collect()
}

/// The window is closed and nothing runs: `Complete` says so (told once), and the Plan is
/// looked at again within a minute.
pub(super) fn wait_for_window(pass: &mut Pass<'_, '_>, r: &Resolved) {
    let event = format!(
        "Waiting for start of Spec.Window to sync Jobs for version {}. Hash: {}",
        r.version, r.hash
    );
    waiting(pass, "current time is not within configured window", event);
}

/// Complete is False/Waiting with `message`, `event` told when the Plan starts waiting, and the
/// Plan looked at again within a minute.
fn waiting(pass: &mut Pass<'_, '_>, message: &str, event: String) {
    let out = &mut pass.out;
    if status::get(&out.conditions, COMPLETE).and_then(|c| c.reason.as_deref())
        != Some(Reason::Waiting.as_str())
    {
        out.note(false, Reason::Waiting, event);
    }
    out.set_condition(COMPLETE, "False", Reason::Waiting, message);
    out.requeue_within(WINDOW_RETRY);
}
