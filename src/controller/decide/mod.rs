//! The heart of a reconcile, as a pure function: from what is observed (the Plan, Nodes, the
//! Plan's Jobs and their pods, Secrets, the time and the version resolution) to the Plan's new
//! status, the changes to make to Jobs and Nodes, the events to record and when to look again.
//!
//! A pass runs its phases in this order, one file each; read [`decide`] top to bottom:
//!
//! 1. [`pass`]: the observation and the stored status taken apart ([`pass::Context`], read by
//!    every phase), what the pass writes ([`pass::Effects`]) and what it learns about nodes as it
//!    goes ([`pass::Ledger`]).
//! 2. [`plan`]: validate, resolve the version, hash; gives [`plan::Resolved`].
//! 3. [`jobs`]: what the caches say about the Plan's Jobs: finished ones complete their node
//!    ([`finish`]: uncordon, `postCompleteDelay`, `nodeReadyFor`, the label) and expire; stale
//!    ones go unless their upgrade may have begun; gives [`jobs::Jobs`].
//! 4. [`retries`]: nodes skipped after a drain timeout, and failed nodes given up within
//!    `spec.failureBudget`, stay so unless a retry names them; [`cancel`]: the cancel and resume
//!    annotations.
//! 5. [`holds`]: what holds new starts (a CRD that lacks spec fields, a closed health gate);
//!    [`canary`]: the first wave runs alone, then holds the rest until approved or soaked;
//!    [`order`]: Plans of `dependsOn` not Complete, or another of the `exclusiveGroup` busy;
//!    [`versions`]: which nodes a version rule holds (a downgrade, a skipped minor, servers
//!    behind).
//! 6. [`choose`]: the nodes that apply the Plan now, within the concurrency.
//! 7. [`holds`] again: a closed window ends the pass.
//! 8. [`track`]: each chosen node is started, followed through its gate (cordon, drain,
//!    upgrade), failed and retried ([`retries`]), or replaced after an edit; nodes held by a
//!    version rule get their entry ([`versions`]).
//! 9. [`release`]: Jobs of nodes that no longer need the Plan stop, claims go back, stranded
//!    pods go; [`taints`]: nodes waiting for their turn carry the Plan's `PreferNoSchedule`
//!    taint, others lose it.
//! 10. [`progress`]: the count of nodes, the conditions, and the [`Decision`].
//!
//! Only starting something new needs a valid, resolved Plan; finishing what runs never waits
//! for it.

pub(crate) mod canary;
mod cancel;
mod choose;
mod decision;
mod facts;
mod finish;
mod history;
mod holds;
mod hooks;
mod jobs;
mod order;
mod pass;
mod plan;
pub(crate) mod pods;
mod progress;
mod release;
mod retries;
mod taints;
mod track;
mod versions;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;

pub use decision::{
    Change, Decision, DrainProgress, JobFields, Merge, Note, Observed, Peer, QueryOutcome, Refusal,
    Resolution, Tally, Target, completed_message,
};
pub use facts::{completion_labels, finished_at};
pub use plan::problems;
pub use pods::upgrade_may_have_started;

use pass::{Context, Pass};

/// How often a Plan is looked at when nothing else wakes it.
pub const RESYNC: Duration = Duration::from_secs(600);
/// How often a Plan waiting for its window checks again.
pub const WINDOW_RETRY: Duration = Duration::from_secs(60);
/// How often a Plan held by a health gate looks again.
pub const GATE_RETRY: Duration = Duration::from_secs(15);
/// The controller's own rule for a stored Plan without `concurrency` (the webhook sets it on
/// create): the Go controller read it as 0 and upgraded nothing, so it must not start silently.
pub const CONCURRENCY_UNSET: &str = "spec.concurrency: not set, so this Plan upgrades no node \
    (the Go controller reads a missing concurrency as 0); set spec.concurrency, e.g. to 1, to start";

/// Decides one pass for a Plan.
pub fn decide(obs: &Observed<'_>) -> Decision {
    let (cx, effects) = Context::new(obs);
    let mut pass = Pass::new(&cx, effects);
    let mut resolved = plan::judge(&mut pass);
    let ready = resolved.ready;
    if resolved.version.is_empty() || resolved.hash.is_empty() {
        // Never resolved: no Job of this Plan can be judged yet; what runs keeps its place.
        let continuing = choose::continuing(&pass, &jobs::Jobs::default());
        let gate = resolved.crd_hold.clone();
        let tally = progress::count(&pass, &resolved, &continuing);
        return progress::conclude(pass, &resolved, gate.as_ref(), &continuing, tally, None);
    }
    let jobs = jobs::sort(&mut pass, &resolved);
    hooks::follow(&mut pass, &resolved);
    resolved.cancelled = cancel::judge(&mut pass, &resolved);
    resolved.window_stopped =
        ready && !resolved.cancelled && holds::stopped_by_window(&pass, &jobs);
    let cancelled = resolved.cancelled;
    // Only upgrades that began go on: the rollout is cancelled, or its window closed with Stop.
    let begun_only = cancelled || resolved.window_stopped;
    retries::carry_skipped(&mut pass, &resolved);
    let mut gate = holds::gate(&mut pass, &resolved);
    let wave = if ready {
        canary::judge(&mut pass, &resolved, gate.as_ref())
    } else {
        canary::Wave::Open
    };
    if let canary::Wave::Hold(hold) = &wave
        && gate.is_none()
    {
        gate = Some(hold.clone());
    }
    if ready && gate.is_none() {
        gate = order::gate(&mut pass);
    }
    if ready {
        versions::find_holds(&mut pass, &resolved);
    }
    let chosen = if begun_only {
        cancel::begun(&pass, &jobs)
    } else if ready {
        let chosen = choose::select(&pass, &resolved, &jobs, &wave, gate.is_some());
        let open = gate.is_none() && !holds::window_closed(&pass, &jobs, &chosen);
        match open.then(|| hooks::before(&mut pass, &resolved, &jobs, &chosen)) {
            Some(Some(hold)) => {
                gate = Some(hold);
                choose::select(&pass, &resolved, &jobs, &wave, true)
            }
            _ => chosen,
        }
    } else {
        choose::continuing(&pass, &jobs)
    };
    if ready && holds::window_closed(&pass, &jobs, &chosen) {
        holds::wait_for_window(&mut pass, &resolved);
        taints::mark(&mut pass, &resolved, false);
        let tally = progress::count(&pass, &resolved, &[]);
        return progress::finish(pass, gate.as_ref(), tally, None);
    }
    track::nodes(&mut pass, &resolved, &jobs, gate.as_ref(), &chosen);
    versions::enter_holds(&mut pass, &chosen);
    let selected: Vec<&Node> = chosen
        .into_iter()
        .filter(|n| {
            !pass
                .ledger
                .skipped
                .contains(n.metadata.name.as_deref().unwrap_or_default())
        })
        .collect();
    if ready || cancelled {
        let stopping = if cancelled {
            Some("the rollout was cancelled")
        } else {
            resolved
                .window_stopped
                .then_some("the window closed (onClose: Stop)")
        };
        release::leftovers(&mut pass, &jobs, &selected, stopping);
    }
    release::stranded_pods(&mut pass);
    taints::mark(&mut pass, &resolved, ready && !begun_only);
    let tally = progress::count(&pass, &resolved, &selected);
    // Where only what began goes on, the other Jobs go in this pass.
    let busy = if begun_only {
        !selected.is_empty()
    } else {
        !choose::under_way(&pass, &jobs).is_empty()
    };
    let after_hook = hooks::after(&mut pass, &resolved, &tally, &selected, busy);
    if ready {
        // Only a pass that could act on the retry annotation consumes it.
        retries::consume_retry_request(&mut pass);
    }
    progress::conclude(
        pass,
        &resolved,
        gate.as_ref(),
        &selected,
        tally,
        after_hook.as_ref(),
    )
}

/// Which Jobs may have a drain running for them: those neither finished, suspended nor being
/// deleted. Drains of other Jobs are stopped.
pub fn drainable_jobs(jobs: &[&Job]) -> Vec<String> {
    jobs.iter()
        .filter(|j| j.metadata.deletion_timestamp.is_none())
        .filter(|j| finished_at(j).is_none())
        .filter(|j| j.spec.as_ref().and_then(|s| s.suspend) != Some(true))
        .filter_map(|j| j.metadata.uid.clone())
        .collect()
}

#[cfg(test)]
mod tests;
