//! Phase: the Plan's hooks (`spec.hooks`), steps that run once around a rollout as Jobs bound
//! to no node. A rollout's bracket opens when the before hook succeeds (without one, when the
//! first node applies) and closes when the after hook succeeds:
//!
//! - [`follow`]: hook Jobs are followed to their end, whatever else the pass decides; Jobs no
//!   entry names go.
//! - [`before`]: a node about to start while no bracket is open waits for the before hook,
//!   which is started then; nodes also wait while the after hook runs or has failed.
//! - [`after`]: the after hook is owed once a node applies; it runs when nothing is left to do
//!   (or the Plan has been paused for `afterWhenPausedFor`), and the Plan is Complete only once
//!   it succeeded.
//!
//! A failed hook holds what it guards (Stalled) until `spec.retry` tries it again, the retry
//! annotation names `hook/<name>`, or the Plan's hash changes. Each hook's entry in
//! `status.hooks` says where it stands; events say when it starts, succeeds and fails.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;

use super::decision::{Change, Note, Refusal, Tally, Target};
use super::facts::{failed_condition, finished_at, uid_of, until};
use super::holds::Gate;
use super::jobs::{Jobs, expire};
use super::pass::Pass;
use super::plan::Resolved;
use super::retries::{backoff_after, retry_ordinal, retry_policy, retry_requested};
use super::track::current_plan;
use crate::api::{FINALIZER_AFTER_HOOK, HookPhase, HookStatus, Reason};
use crate::controller::job::{Hook, hook_job, hook_job_name, hook_of};
use crate::controller::select;
use crate::controller::status::stamp;
use crate::syntax::duration;

/// The hooks' entries and Jobs: entries of hooks the Plan no longer has go, Jobs no entry names
/// go (finished ones after their TTL), and each hook whose Job runs is followed to its end.
pub(super) fn follow(pass: &mut Pass<'_, '_>, r: &Resolved) {
    let plan = pass.cx.plan;
    let hooks = pass.out.status.hooks.take().unwrap_or_default();
    let kept: Vec<HookStatus> = hooks
        .into_iter()
        .filter(|e| Hook::parse(&e.name).is_some_and(|h| h.spec(plan).is_some()))
        .collect();
    pass.out.status.hooks = (!kept.is_empty()).then_some(kept);
    for job in hook_jobs(pass) {
        let name = job.metadata.name.clone().unwrap_or_default();
        let named = pass
            .out
            .status
            .hooks
            .iter()
            .flatten()
            .any(|e| e.job.as_deref() == Some(name.as_str()));
        if job.metadata.deletion_timestamp.is_some() || named {
            continue;
        }
        match finished_at(job) {
            Some((_, at)) => {
                expire(pass, job, at);
            }
            None => pass.out.before.push(Change::DeleteJob {
                name,
                why: "no hook of the Plan runs it any more".into(),
                unless_begun: false,
            }),
        }
    }
    for hook in [Hook::Before, Hook::After] {
        follow_one(pass, r, hook);
    }
}

/// A hook whose Job runs (or is to be created): created when missing, and its end recorded.
fn follow_one(pass: &mut Pass<'_, '_>, r: &Resolved, hook: Hook) {
    let Some(entry) = entry(pass, hook) else {
        return;
    };
    let phase = HookPhase::parse(&entry.phase);
    if !matches!(phase, Some(HookPhase::Running | HookPhase::Starting)) {
        return;
    }
    let job_name = entry.job.clone().unwrap_or_default();
    let job = hook_jobs(pass)
        .into_iter()
        .find(|j| j.metadata.name.as_deref() == Some(job_name.as_str()));
    let Some(job) = job else {
        if let Some(Refusal::Job {
            message, retry_at, ..
        }) = pass.cx.obs.refusals.get(&job_name)
        {
            let text = format!("the API server refused Job {job_name}: {message}");
            if pass.cx.deleting() {
                // A namespace being deleted takes no new Job: the Plan goes without the hook.
                let failed = HookStatus {
                    phase: HookPhase::Failed.as_str().into(),
                    message: Some(text),
                    since: Some(pass.cx.now.clone()),
                    ..entry
                };
                put(pass, failed);
                return;
            }
            if pass.cx.obs.now < *retry_at {
                pass.out.requeue_within(until(pass.cx.obs.now, *retry_at));
                let refused = HookStatus {
                    message: Some(text),
                    ..entry
                };
                put(pass, refused);
                return;
            }
        }
        if r.ready {
            create(pass, r, hook, &entry);
        }
        return;
    };
    if phase == Some(HookPhase::Starting) {
        // The Job of an earlier run goes first (asked again until it is seen going).
        if job.metadata.deletion_timestamp.is_none() {
            pass.out.before.push(Change::DeleteJob {
                name: job_name,
                why: format!("the {} hook runs again", hook.as_str()),
                unless_begun: false,
            });
        }
        return;
    }
    if job.metadata.deletion_timestamp.is_some() {
        return; // deleted by someone: created again once it is gone
    }
    match finished_at(job) {
        None => {
            if let Some(refusal) = pass.cx.obs.refusals.get(&job_name) {
                let why = match refusal {
                    Refusal::Pod { message } => format!("its pod cannot be created: {message}"),
                    Refusal::Job { message, .. } => format!("refused: {message}"),
                };
                let mut running = entry.clone();
                running.message = Some(format!("Job {job_name} runs; {why}"));
                put(pass, running);
            }
        }
        Some((true, at)) => succeeded(pass, r, hook, &entry, job, at),
        Some((false, _)) => {
            let message = failure(job, hook);
            let phase = (
                HookPhase::Failed,
                Some(message.clone()),
                pass.cx.now.clone(),
            );
            ended(
                pass,
                hook,
                &entry,
                job,
                (Reason::HookFailed, message),
                phase,
            );
        }
    }
}

/// A hook's Job ended: its event (once per Job object, a warning when it failed), the metric,
/// and its entry in its new `phase` (with the entry's message and since).
fn ended(
    pass: &mut Pass<'_, '_>,
    hook: Hook,
    entry: &HookStatus,
    job: &Job,
    (reason, text): (Reason, String),
    (phase, message, since): (HookPhase, Option<String>, String),
) {
    let failed = reason == Reason::HookFailed;
    let key = format!("{reason}/{}", uid_of(job));
    let note = Note::new(Target::Plan, failed, reason, text);
    pass.out.notes.push(note.once(key));
    pass.out.finished_hooks.push((hook, !failed));
    put(
        pass,
        HookStatus {
            phase: phase.as_str().into(),
            message,
            since: Some(since),
            ..entry.clone()
        },
    );
}

/// A hook's Job succeeded: its entry says so, and a before hook opens the bracket (the after
/// hook becomes owed).
fn succeeded(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    hook: Hook,
    entry: &HookStatus,
    job: &Job,
    at: jiff::Timestamp,
) {
    let job_name = job.metadata.name.clone().unwrap_or_default();
    let plan = &pass.cx.plan_name;
    let text = format!(
        "Plan {plan}: the {} hook succeeded (Job {job_name})",
        hook.as_str()
    );
    let phase = (HookPhase::Succeeded, None, stamp(at));
    ended(pass, hook, entry, job, (Reason::HookSucceeded, text), phase);
    if hook == Hook::Before {
        owe_after(pass, r);
    }
}

/// The after hook becomes owed for the rollout of `r.hash` (when the Plan has one and it is not
/// owed or running already).
fn owe_after(pass: &mut Pass<'_, '_>, r: &Resolved) {
    if Hook::After.spec(pass.cx.plan).is_none() {
        return;
    }
    let phase = entry(pass, Hook::After).and_then(|e| HookPhase::parse(&e.phase));
    let failed_here = entry(pass, Hook::After)
        .is_some_and(|e| phase == Some(HookPhase::Failed) && e.hash.as_deref() == Some(&r.hash));
    if matches!(
        phase,
        Some(HookPhase::Due | HookPhase::Paused | HookPhase::Running | HookPhase::Starting)
    ) || failed_here
    {
        return;
    }
    put(
        pass,
        HookStatus {
            name: Hook::After.as_str().into(),
            phase: HookPhase::Due.as_str().into(),
            hash: Some(r.hash.clone()),
            message: Some("runs once the last node is done".into()),
            since: Some(pass.cx.now.clone()),
            ..HookStatus::default()
        },
    );
}

/// What holds new starts because of the hooks: the after hook running or failed, or the before
/// hook not (yet) succeeded for an open bracket, which is started when a node of `chosen` would
/// start now. `None` when no node would start.
pub(super) fn before(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    jobs: &Jobs<'_>,
    chosen: &[&Node],
) -> Option<Gate> {
    let starting = r.ready
        && !pass.cx.paused()
        && chosen.iter().any(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            !jobs.current.contains_key(name)
                && !jobs.finishing.contains_key(name)
                && !select::paused(n)
        });
    if !starting {
        return None;
    }
    if let Some(after) = entry(pass, Hook::After) {
        match HookPhase::parse(&after.phase) {
            Some(HookPhase::Running | HookPhase::Starting) => {
                return Some(running_gate(Hook::After, &after));
            }
            Some(HookPhase::Failed) if after.hash.as_deref() == Some(&r.hash) => {
                return failed(pass, r, Hook::After, &after);
            }
            _ => {}
        }
    }
    Hook::Before.spec(pass.cx.plan)?;
    let entry = entry(pass, Hook::Before);
    let phase = entry.as_ref().and_then(|e| HookPhase::parse(&e.phase));
    match (&entry, phase) {
        (Some(e), Some(HookPhase::Running | HookPhase::Starting)) => {
            Some(running_gate(Hook::Before, e))
        }
        (Some(e), Some(HookPhase::Succeeded)) if bracket_open(pass, r, e) => None,
        (Some(e), Some(HookPhase::Failed)) if e.hash.as_deref() == Some(&r.hash) => {
            failed(pass, r, Hook::Before, e)
        }
        _ => Some(launch(
            pass,
            r,
            Hook::Before,
            None,
            "runs before the first node",
        )),
    }
}

/// The bracket the before hook opened is still open: the after hook is owed (without an after
/// hook, the before hook ran for this hash).
fn bracket_open(pass: &Pass<'_, '_>, r: &Resolved, before: &HookStatus) -> bool {
    if Hook::After.spec(pass.cx.plan).is_none() {
        return before.hash.as_deref() == Some(&r.hash);
    }
    entry(pass, Hook::After).is_some_and(|a| {
        matches!(
            HookPhase::parse(&a.phase),
            Some(HookPhase::Due | HookPhase::Paused)
        )
    })
}

/// The after hook: owed once a node applies; run when nothing is left to do, when the Plan has
/// been paused for `afterWhenPausedFor`, or when it is being deleted (`afterWhenDeleted`), with
/// nothing `busy`. What it says for the Complete condition while it runs or failed. The Plan's
/// finalizer follows.
pub(super) fn after(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    tally: &Tally,
    selected: &[&Node],
    busy: bool,
) -> Option<Gate> {
    let gate = run_after(pass, r, tally, selected, busy);
    finalizer(pass);
    gate
}

fn run_after(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    tally: &Tally,
    selected: &[&Node],
    busy: bool,
) -> Option<Gate> {
    Hook::After.spec(pass.cx.plan)?;
    if r.hash.is_empty() {
        return None;
    }
    if !selected.is_empty() {
        owe_after(pass, r);
    }
    let entry = entry(pass, Hook::After)?;
    let on_delete = when_deleted(pass);
    match HookPhase::parse(&entry.phase)? {
        HookPhase::Running | HookPhase::Starting => Some(running_gate(Hook::After, &entry)),
        HookPhase::Failed if on_delete && failed_before_deletion(pass, &entry) && r.ready => {
            let why = "runs again because the Plan is being deleted";
            Some(launch(pass, r, Hook::After, Some(0), why))
        }
        // A Plan being deleted runs a failed after hook once more (above), then goes.
        HookPhase::Failed if !on_delete && entry.hash.as_deref() == Some(&r.hash) => {
            failed(pass, r, Hook::After, &entry)
        }
        HookPhase::Failed | HookPhase::Succeeded => None,
        phase @ (HookPhase::Due | HookPhase::Paused) => {
            let done = r.ready
                && selected.is_empty()
                && tally.waiting == 0
                && pass.ledger.skipped.is_empty()
                && pass.ledger.failure.is_none();
            if done {
                let why = "runs after the last node";
                return Some(launch(pass, r, Hook::After, None, why));
            }
            if on_delete && !busy && r.ready {
                let why = "runs because the Plan is being deleted";
                return Some(launch(pass, r, Hook::After, None, why));
            }
            let on_cancel = (pass.cx.plan.spec.hooks.as_ref())
                .is_some_and(|h| h.after_when_cancelled == Some(true));
            if r.cancelled && on_cancel && !busy && r.ready {
                let why = "runs because the rollout was cancelled";
                return Some(launch(pass, r, Hook::After, None, why));
            }
            paused_long(pass, r, &entry, phase, busy)
        }
    }
}

/// `hooks.afterWhenDeleted` asks for the after hook, and the Plan is being deleted.
fn when_deleted(pass: &Pass<'_, '_>) -> bool {
    pass.cx.deleting() && asked_when_deleted(pass)
}

fn asked_when_deleted(pass: &Pass<'_, '_>) -> bool {
    (pass.cx.plan.spec.hooks.as_ref())
        .is_some_and(|h| h.after.is_some() && h.after_when_deleted == Some(true))
}

/// A failed hook failed before the Plan's deletion began (so deleting runs it once more).
fn failed_before_deletion(pass: &Pass<'_, '_>, entry: &HookStatus) -> bool {
    let deleted = pass
        .cx
        .plan
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0);
    let since: Option<jiff::Timestamp> = entry.since.as_deref().and_then(|s| s.parse().ok());
    matches!((deleted, since), (Some(d), Some(s)) if s < d)
}

/// `hooks.afterWhenDeleted`: the Plan carries the finalizer `upgrade.cattle.io/after-hook` while
/// its after hook is owed (due, paused, running, or failed before any deletion), so deleting
/// it runs the hook first. Once the hook ran (or failed while the Plan was being deleted, which
/// a warning says), the finalizer goes and the Plan with it. None is added to a Plan being
/// deleted (the API server forbids it).
fn finalizer(pass: &mut Pass<'_, '_>) {
    let entry = entry(pass, Hook::After);
    let phase = entry.as_ref().and_then(|e| HookPhase::parse(&e.phase));
    let owed = match (phase, &entry) {
        (
            Some(HookPhase::Due | HookPhase::Paused | HookPhase::Running | HookPhase::Starting),
            _,
        ) => true,
        (Some(HookPhase::Failed), Some(e)) => {
            !pass.cx.deleting() || failed_before_deletion(pass, e)
        }
        _ => false,
    };
    let wanted = asked_when_deleted(pass) && owed;
    let has =
        (pass.cx.plan.metadata.finalizers.iter().flatten()).any(|f| f == FINALIZER_AFTER_HOOK);
    if wanted == has || (wanted && pass.cx.deleting()) {
        return;
    }
    if !wanted
        && pass.cx.deleting()
        && let Some(e) = entry.filter(|_| phase == Some(HookPhase::Failed))
    {
        let text = format!(
            "Plan {} is deleted without its after hook, which failed: {}",
            pass.cx.plan_name,
            e.message.unwrap_or_default()
        );
        pass.out.note(true, Reason::HookFailed, text);
    }
    pass.out.after.push(Change::Finalizer { on: wanted });
}

/// `hooks.afterWhenPausedFor`: an owed after hook of a Plan paused with nothing under way waits
/// that long (phase Paused), then runs; resuming makes it Due again.
fn paused_long(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    entry: &HookStatus,
    phase: HookPhase,
    busy: bool,
) -> Option<Gate> {
    let wait = pass
        .cx
        .plan
        .spec
        .hooks
        .as_ref()
        .and_then(|h| h.after_when_paused_for.as_deref())
        .and_then(|d| duration::parse(d).ok());
    let idle = pass.cx.paused() && !busy;
    match (wait, idle, phase) {
        (Some(wait), true, _) => {
            let now = pass.cx.obs.now;
            let since = match phase {
                HookPhase::Paused => entry.since.as_deref().and_then(|s| s.parse().ok()),
                _ => None,
            }
            .unwrap_or(now);
            let at = since
                .checked_add(jiff::SignedDuration::from_nanos(wait.max(0)))
                .unwrap_or(since);
            if now >= at && r.ready {
                let why = "runs because the Plan has been paused for hooks.afterWhenPausedFor";
                launch(pass, r, Hook::After, None, why);
                return None;
            }
            pass.out.requeue_within(until(now, at));
            put(
                pass,
                HookStatus {
                    phase: HookPhase::Paused.as_str().into(),
                    message: Some(format!(
                        "the Plan is paused: runs at {} (hooks.afterWhenPausedFor) unless it \
                         resumes first",
                        stamp(at)
                    )),
                    since: Some(stamp(since)),
                    ..entry.clone()
                },
            );
        }
        (_, _, HookPhase::Paused) => put(
            pass,
            HookStatus {
                phase: HookPhase::Due.as_str().into(),
                message: Some("runs once the last node is done".into()),
                since: Some(pass.cx.now.clone()),
                ..entry.clone()
            },
        ),
        _ => {}
    }
    None
}

/// A failed hook: tried again when the retry annotation names it or `spec.retry` allows it
/// (after its backoff); until then it holds what it guards.
fn failed(pass: &mut Pass<'_, '_>, r: &Resolved, hook: Hook, entry: &HookStatus) -> Option<Gate> {
    let token = format!("hook/{}", hook.as_str());
    let message = entry.message.clone().unwrap_or_default();
    if r.ready
        && let Some(request) = &pass.cx.retry_request
        && retry_requested(request, &token)
    {
        pass.ledger.retried_on_request.insert(token);
        return Some(launch(pass, r, hook, Some(0), "retried on request"));
    }
    let retries = entry.retries.unwrap_or(0);
    let mut shown = message.clone();
    if let Some((limit, backoff)) = retry_policy(pass.cx.plan)
        && retries < limit
    {
        let now = pass.cx.obs.now;
        let since: jiff::Timestamp = entry
            .since
            .as_deref()
            .and_then(|s| s.parse().ok())
            .unwrap_or(now);
        let due = since
            .checked_add(backoff_after(backoff, retries))
            .unwrap_or(since);
        let ordinal = retry_ordinal(pass.cx.plan, Some(retries));
        if now >= due && r.ready {
            let why = format!("retry {ordinal}");
            return Some(launch(pass, r, hook, Some(retries + 1), &why));
        }
        pass.out.requeue_within(until(now, due));
        shown = format!("{message}; retry {ordinal} at {}", stamp(due));
        return Some((Reason::Retrying, shown));
    }
    shown.push_str(&format!(
        "; annotate the Plan with upgrade.cattle.io/retry=hook/{} to run it again",
        hook.as_str()
    ));
    Some((Reason::HookFailed, shown))
}

/// Starts a run of the hook for `r.hash`: its Job is created (after the status naming it is
/// written), or, when a Job of that name is left from an earlier run, that one goes first.
fn launch(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    hook: Hook,
    retries: Option<i32>,
    why: &str,
) -> Gate {
    let name = hook_job_name(&pass.cx.plan_name, hook, &r.hash);
    let entry = HookStatus {
        name: hook.as_str().into(),
        phase: HookPhase::Starting.as_str().into(),
        hash: Some(r.hash.clone()),
        job: Some(name.clone()),
        message: Some(why.to_owned()),
        since: Some(pass.cx.now.clone()),
        retries,
    };
    let earlier = hook_jobs(pass)
        .into_iter()
        .any(|j| j.metadata.name.as_deref() == Some(name.as_str()));
    if earlier {
        pass.out.before.push(Change::DeleteJob {
            name: name.clone(),
            why: format!("the {} hook runs again ({why})", hook.as_str()),
            unless_begun: false,
        });
        put(pass, entry.clone());
    } else {
        create(pass, r, hook, &entry);
    }
    let plan = &pass.cx.plan_name;
    let text = format!("Plan {plan}: the {} hook {why} (Job {name})", hook.as_str());
    let key = format!("RunningHook/{name}/{}", pass.cx.now);
    let note = Note::new(Target::Plan, false, Reason::RunningHook, text);
    pass.out.notes.push(note.once(key));
    running_gate(hook, &entry)
}

/// Creates the hook's Job for the current version and hash; its entry says it runs.
fn create(pass: &mut Pass<'_, '_>, r: &Resolved, hook: Hook, entry: &HookStatus) {
    let plan = current_plan(pass.cx.plan, r);
    let Some(job) = hook_job(&plan, hook, pass.cx.obs.settings) else {
        return;
    };
    let name = job.metadata.name.clone().unwrap_or_default();
    pass.out.after.push(Change::CreateJob(Box::new(job)));
    let message = entry
        .message
        .clone()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "runs".into());
    put(
        pass,
        HookStatus {
            phase: HookPhase::Running.as_str().into(),
            hash: Some(r.hash.clone()),
            job: Some(name),
            message: Some(message),
            since: Some(pass.cx.now.clone()),
            ..entry.clone()
        },
    );
}

/// What a running hook holds: what it says for the Complete condition.
fn running_gate(hook: Hook, entry: &HookStatus) -> Gate {
    let job = entry.job.as_deref().unwrap_or_default();
    let what = match hook {
        Hook::Before => "the before hook runs first",
        Hook::After => "the after hook runs",
    };
    (
        Reason::RunningHook,
        format!("{what} (Job {job}, spec.hooks.{})", hook.as_str()),
    )
}

/// Why a hook's Job failed, from its Failed condition.
fn failure(job: &Job, hook: Hook) -> String {
    let name = job.metadata.name.clone().unwrap_or_default();
    let (reason, message) = failed_condition(job);
    format!(
        "the {} hook's Job {name} failed: {reason}: {message}",
        hook.as_str()
    )
}

/// The Plan's hook Jobs.
fn hook_jobs<'a>(pass: &Pass<'_, 'a>) -> Vec<&'a Job> {
    pass.cx
        .obs
        .jobs
        .iter()
        .copied()
        .filter(|j| hook_of(j).is_some())
        .collect()
}

/// The hook's entry as the pass has it.
fn entry(pass: &Pass<'_, '_>, hook: Hook) -> Option<HookStatus> {
    pass.out
        .status
        .hooks
        .iter()
        .flatten()
        .find(|e| e.name == hook.as_str())
        .cloned()
}

/// Writes a hook's entry (before first, then after).
fn put(pass: &mut Pass<'_, '_>, entry: HookStatus) {
    let hooks = pass.out.status.hooks.get_or_insert_default();
    hooks.retain(|e| e.name != entry.name);
    hooks.push(entry);
    hooks.sort_by_key(|e| Hook::parse(&e.name));
}
