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
use crate::api::{LABEL_PAUSE, Reason};
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

/// A rollout may only start inside its window; once started it runs to completion.
pub(super) fn window_closed(pass: &Pass<'_, '_>, jobs: &Jobs<'_>, chosen: &[&Node]) -> bool {
    let Some(spec) = &pass.cx.plan.spec.window else {
        return false;
    };
    if chosen.is_empty() || !choose::running(pass, jobs).is_empty() {
        return false;
    }
    let days: Vec<String> = spec.days.iter().flatten().map(|d| d.0.clone()).collect();
    !window::TimeWindow::parse(
        &days,
        spec.start_time.as_deref().unwrap_or_default(),
        spec.end_time.as_deref().unwrap_or_default(),
        spec.time_zone.as_deref().unwrap_or_default(),
    )
    .is_ok_and(|w| w.contains(pass.cx.obs.now))
}

/// The window is closed and nothing runs: `Complete` says so (told once), and the Plan is
/// looked at again within a minute.
pub(super) fn wait_for_window(pass: &mut Pass<'_, '_>, r: &Resolved) {
    let out = &mut pass.out;
    let message = "current time is not within configured window";
    if status::get(&out.conditions, COMPLETE).and_then(|c| c.reason.as_deref())
        != Some(Reason::Waiting.as_str())
    {
        out.note(
            false,
            Reason::Waiting,
            format!(
                "Waiting for start of Spec.Window to sync Jobs for version {}. Hash: {}",
                r.version, r.hash
            ),
        );
    }
    out.set_condition(COMPLETE, "False", Reason::Waiting, message);
    out.requeue_within(WINDOW_RETRY);
}
