//! Phase: the first wave of a rollout (`spec.canary`). Until the wave is over only its nodes
//! start (the first `nodes` in the Plan's order, or those `nodeSelector` picks); then the rest
//! waits until `upgrade.cattle.io/approve` (removed once acted on) or, with `soakFor`, until the
//! wave has been done that long with every health gate open. A failed node of the wave (given
//! up within `spec.failureBudget`) holds the rest until approval or a retry; without a budget a
//! failure stops the rollout as always. `status.canary` keeps where the wave stands for the
//! current hash across passes and restarts; a new hash opens a new wave.

use std::collections::BTreeSet;
use std::time::Duration;

use jiff::Timestamp;
use kube::core::{Selector, SelectorExt};

use super::decision::Change;
use super::facts::listed;
use super::holds::Gate;
use super::pass::Pass;
use super::plan::Resolved;
use crate::api::{ANNOTATION_APPROVE, Canary, CanaryPhase, CanaryStatus, Plan, Reason};
use crate::controller::select;
use crate::syntax::duration;

/// What the first wave asks of this pass.
pub(super) enum Wave {
    /// Nothing: no canary, or its hold was lifted.
    Open,
    /// The wave runs alone: at most `room` nodes started and not done or given up (a count),
    /// or only `members` (a selector).
    Alone {
        room: Option<usize>,
        members: Option<BTreeSet<String>>,
    },
    /// The wave is over and the rest waits.
    Hold(Gate),
}

impl Wave {
    /// Whether `node` may be chosen: while the wave runs by selector, only its members.
    pub(super) fn admits(&self, node: &str) -> bool {
        match self {
            Wave::Alone {
                members: Some(m), ..
            } => m.contains(node),
            // A hold stops new starts through the gate; nodes placed before keep their place.
            _ => true,
        }
    }

    /// The most nodes the wave lets be under way, if it limits them.
    pub(super) fn room(&self) -> Option<usize> {
        match self {
            Wave::Alone { room, .. } => *room,
            _ => None,
        }
    }
}

/// The stored wave's hold was lifted (a phase that is not ours is judged again).
fn lifted(wave: &CanaryStatus) -> bool {
    CanaryPhase::parse(&wave.phase).is_some_and(CanaryPhase::lifted)
}

/// Acts on the approve annotation and judges the wave of `r.hash`; `gate` is the health gate
/// of this pass (a closed one stops the soak clock).
pub(super) fn judge(pass: &mut Pass<'_, '_>, r: &Resolved, gate: Option<&Gate>) -> Wave {
    let cx = pass.cx;
    let approve =
        (cx.plan.metadata.annotations.as_ref()).and_then(|a| a.get(ANNOTATION_APPROVE).cloned());
    let Some(canary) = &cx.plan.spec.canary else {
        pass.out.status.canary = None;
        if let Some(value) = approve {
            let text = format!(
                "{ANNOTATION_APPROVE}: Plan {} has no spec.canary, so nothing waits for approval",
                cx.plan_name
            );
            pass.out.note(false, Reason::CanaryLifted, text);
            clear(pass, value);
        }
        return Wave::Open;
    };
    let mut wave = match pass.out.status.canary.take() {
        Some(stored) if stored.hash == r.hash => stored,
        _ => CanaryStatus {
            hash: r.hash.clone(),
            version: Some(r.version.clone()),
            phase: CanaryPhase::Running.to_string(),
            since: Some(cx.now.clone()),
            ..CanaryStatus::default()
        },
    };
    if let Some(value) = approve {
        if lifted(&wave) {
            let text = format!(
                "{ANNOTATION_APPROVE}: the first wave of Plan {} no longer holds its rollout ({})",
                cx.plan_name, wave.phase
            );
            pass.out.note(false, Reason::CanaryLifted, text);
        } else {
            let text = format!(
                "Plan {}: the rollout of version {} is approved past its first wave \
                 ({ANNOTATION_APPROVE}); the other nodes start",
                cx.plan_name, r.version
            );
            pass.out.note(false, Reason::CanaryLifted, text);
            set_phase(
                pass,
                &mut wave,
                CanaryPhase::Approved,
                format!("approved ({ANNOTATION_APPROVE})"),
            );
        }
        clear(pass, value);
    }
    let outcome = if lifted(&wave) {
        Wave::Open
    } else {
        judge_wave(pass, r, canary, gate, &mut wave)
    };
    pass.out.status.canary = Some(wave);
    outcome
}

/// Where a wave not lifted yet stands.
fn judge_wave(
    pass: &mut Pass<'_, '_>,
    r: &Resolved,
    canary: &Canary,
    gate: Option<&Gate>,
    wave: &mut CanaryStatus,
) -> Wave {
    let cx = pass.cx;
    let Ok(Some(selector)) = select::node_selector(cx.plan) else {
        return Wave::Open;
    };
    let wave_selector = match canary.node_selector.clone().map(Selector::try_from) {
        Some(Ok(s)) => Some(s),
        // The Plan is then invalid and starts nothing; say so rather than guess.
        Some(Err(_)) => {
            return Wave::Hold((
                Reason::AwaitingApproval,
                "spec.canary.nodeSelector is not valid".into(),
            ));
        }
        None => None,
    };
    let mut eligible = 0;
    let mut remaining = 0;
    let mut members = BTreeSet::new();
    let mut done = Vec::new();
    let mut failed = Vec::new();
    for (name, node) in &cx.nodes {
        if !select::eligible(&cx.plan_name, &selector, node) {
            continue;
        }
        eligible += 1;
        let is_done =
            pass.ledger.done_now.contains(name) || select::done(&cx.plan_name, node, &r.hash);
        let given_up = pass.ledger.given_up.contains(name);
        remaining += usize::from(!is_done && !given_up);
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let member = wave_selector.as_ref().is_none_or(|s| s.matches(&labels));
        if !member {
            continue;
        }
        members.insert(name.clone());
        if is_done {
            done.push(name.clone());
        } else if given_up {
            failed.push(name.clone());
        }
    }
    if remaining == 0 {
        set_phase(
            pass,
            wave,
            CanaryPhase::Done,
            "every node of the rollout is done".into(),
        );
        return Wave::Open;
    }
    let over = match &wave_selector {
        Some(_) => !members.is_empty() && done.len() + failed.len() == members.len(),
        None => {
            let size = canary
                .nodes
                .as_ref()
                .and_then(|n| n.nodes(eligible))
                .unwrap_or(1)
                .max(1);
            if done.len() + failed.len() < size {
                let room = size - done.len() - failed.len();
                set_phase(
                    pass,
                    wave,
                    CanaryPhase::Running,
                    format!("the first {size} node(s) run alone"),
                );
                return Wave::Alone {
                    room: Some(room),
                    members: None,
                };
            }
            true
        }
    };
    if wave_selector.is_some() && members.is_empty() {
        let message = format!(
            "spec.canary.nodeSelector matches none of the {eligible} node(s) the Plan selects; \
             fix it, or approve the rollout with {}",
            approve_command(pass)
        );
        set_phase(pass, wave, CanaryPhase::AwaitingApproval, message.clone());
        return Wave::Hold((Reason::AwaitingApproval, message));
    }
    if !over {
        let message = format!(
            "the first wave ({}) runs alone",
            listed("node", &as_strs(&members))
        );
        set_phase(pass, wave, CanaryPhase::Running, message);
        return Wave::Alone {
            room: None,
            members: Some(members),
        };
    }
    let mut wave_nodes: Vec<String> = done.iter().chain(&failed).cloned().collect();
    wave_nodes.sort();
    wave.nodes = Some(wave_nodes.clone());
    let shown = listed("node", &as_strs(&wave_nodes));
    if !failed.is_empty() {
        let message = format!(
            "the first wave ({shown}) is over and {} of it failed; retry with \
             upgrade.cattle.io/retry, or approve the rest with {}",
            listed("node", &as_strs(&failed)),
            approve_command(pass)
        );
        set_phase(pass, wave, CanaryPhase::AwaitingApproval, message.clone());
        return Wave::Hold((Reason::AwaitingApproval, message));
    }
    let Some(soak) = canary
        .soak_for
        .as_deref()
        .and_then(|s| duration::parse(s).ok())
        .filter(|s| *s > 0)
    else {
        let message = format!(
            "the first wave ({shown}) is done; {remaining} node(s) wait for approval: {}",
            approve_command(pass)
        );
        set_phase(pass, wave, CanaryPhase::AwaitingApproval, message.clone());
        return Wave::Hold((Reason::AwaitingApproval, message));
    };
    let soak_text = duration::format(soak);
    if let Some((_, why)) = gate {
        // The soak counts only time with every gate open: it starts again from now.
        let message = format!(
            "the first wave ({shown}) is done; the soak of {soak_text} starts again once the \
             health gates open ({why})"
        );
        wave.phase = CanaryPhase::Soaking.to_string();
        wave.since = Some(cx.now.clone());
        wave.message = Some(message.clone());
        return Wave::Hold((Reason::Soaking, message));
    }
    if wave.phase != CanaryPhase::Soaking.as_str() {
        wave.phase = CanaryPhase::Soaking.to_string();
        wave.since = Some(cx.now.clone());
    }
    let now = cx.obs.now;
    let ends = soak_ends(cx.plan, wave).unwrap_or(now);
    if ends <= now {
        let text = format!(
            "Plan {}: the first wave of version {} soaked for {soak_text} with the health gates \
             open; the other nodes start",
            cx.plan_name, r.version
        );
        pass.out.note(false, Reason::CanaryLifted, text);
        set_phase(
            pass,
            wave,
            CanaryPhase::Soaked,
            format!("soaked for {soak_text}"),
        );
        return Wave::Open;
    }
    pass.out
        .requeue_within(super::facts::until(now, ends).min(Duration::from_secs(600)));
    let message = format!(
        "the first wave ({shown}) is done; {remaining} node(s) start at {} once it has soaked \
         for {soak_text} with the health gates open, or at once with {}",
        crate::controller::status::stamp(ends),
        approve_command(pass)
    );
    wave.message = Some(message.clone());
    Wave::Hold((Reason::Soaking, message))
}

/// When the soak of a wave that is Soaking ends, if the gates stay open.
pub fn soak_ends(plan: &Plan, wave: &CanaryStatus) -> Option<Timestamp> {
    let soak = plan.spec.canary.as_ref()?.soak_for.as_deref()?;
    let soak = duration::parse(soak).ok()?;
    let since = wave.since.as_deref()?.parse::<Timestamp>().ok()?;
    (wave.phase == CanaryPhase::Soaking.as_str())
        .then(|| {
            since
                .checked_add(jiff::SignedDuration::from_nanos(soak))
                .ok()
        })
        .flatten()
}

/// Sets the wave's phase (its `since` kept while the phase stays) and message.
fn set_phase(pass: &Pass<'_, '_>, wave: &mut CanaryStatus, phase: CanaryPhase, message: String) {
    if wave.phase != phase.as_str() {
        wave.phase = phase.to_string();
        wave.since = Some(pass.cx.now.clone());
    }
    wave.message = Some(message);
}

fn approve_command(pass: &Pass<'_, '_>) -> String {
    format!(
        "kubectl -n {} annotate plan {} {ANNOTATION_APPROVE}=true",
        pass.cx.namespace, pass.cx.plan_name
    )
}

fn clear(pass: &mut Pass<'_, '_>, value: String) {
    pass.out.after.push(Change::ClearAnnotation {
        key: ANNOTATION_APPROVE,
        value,
    });
}

fn as_strs<'s>(names: impl IntoIterator<Item = &'s String>) -> Vec<&'s str> {
    names.into_iter().map(String::as_str).collect()
}
