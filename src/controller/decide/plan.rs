//! Phase 1: the Plan itself. Validation (the webhook's rules and the controller's own), the
//! CRD in the cluster, the version and the hash. What it finds is [`Resolved`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

use super::CONCURRENCY_UNSET;
use super::decision::{Note, Resolution, Target};
use super::facts::hashed_secrets;
use super::pass::Pass;
use crate::api::{Plan, PlanStatus, Reason};
use crate::controller::status::{self, COMPLETE, CRD_CURRENT, LATEST_RESOLVED, VALIDATED};
use crate::controller::{hash, resolve};
use crate::validation;
use crate::validation::versions;

/// What the Plan asks for in this pass.
pub(super) struct Resolved {
    /// `latestVersion`: resolved now, or as stored.
    pub version: String,
    /// `latestHash`: computed now, or as stored while a Secret it covers is missing.
    pub hash: String,
    /// New nodes may start: the Plan is valid and resolved now, and hashed.
    pub ready: bool,
    /// A Plan CRD that lacks this controller's spec fields holds new starts: the reason for
    /// the Complete condition and what to say.
    pub crd_hold: Option<(Reason, String)>,
    /// The rollout of this hash is cancelled (`upgrade.cattle.io/cancel`): only upgrades that
    /// began go on (set by [`super::cancel`]).
    pub cancelled: bool,
    /// Outside every window, whose last to close said `onClose: Stop`: only upgrades that began
    /// go on (set by `decide` from [`super::holds::stopped_by_window`]).
    pub window_stopped: bool,
}

/// Validates, resolves and hashes the Plan, setting `Validated`, `LatestResolved` and
/// `CRDCurrent`.
pub(super) fn judge(pass: &mut Pass<'_, '_>) -> Resolved {
    let (valid, secrets_present) = validate(pass);
    let crd_hold = crd_gaps(pass);
    let resolved = resolve(pass);
    let version = pass.out.status.latest_version.clone().unwrap_or_default();
    if resolved && secrets_present {
        hash_version(pass, &version);
    }
    let hash = pass.out.status.latest_hash.clone().unwrap_or_default();
    Resolved {
        ready: valid && resolved && !hash.is_empty(),
        version,
        hash,
        crd_hold,
        cancelled: false,
        window_stopped: false,
    }
}

/// Every problem that keeps a Plan from starting nodes: the webhook's rules, a concurrency
/// that is set, and the Secrets the hash covers (of `secrets`, the Plan's namespace's).
pub fn problems(plan: &Plan, secrets: &BTreeMap<String, &Secret>) -> Vec<String> {
    let mut problems: Vec<String> = validation::validate(plan)
        .problems
        .into_iter()
        .map(|p| p.message)
        .collect();
    if plan.spec.concurrency.is_none() {
        problems.push(CONCURRENCY_UNSET.to_owned());
    }
    for name in hashed_secrets(plan) {
        if !secrets.contains_key(name) {
            problems.push(format!("secrets \"{name}\" not found"));
        }
    }
    problems
}

/// Validation ([`problems`]). Sets `Validated`; returns whether the Plan is valid and whether
/// every Secret the hash covers is there.
fn validate(pass: &mut Pass<'_, '_>) -> (bool, bool) {
    let plan = pass.cx.plan;
    let secrets = pass.cx.obs.secrets;
    let problems = problems(plan, secrets);
    let secrets_present = hashed_secrets(plan).all(|name| secrets.contains_key(name));
    let out = &mut pass.out;
    if problems.is_empty() {
        if out.set_condition(VALIDATED, "True", Reason::PlanIsValid, "") {
            out.note(false, Reason::Validated, "Plan is valid".to_owned());
        }
    } else {
        let message = problems.join("; ");
        let before = status::get(&out.conditions, VALIDATED).and_then(|c| c.message.clone());
        out.set_condition(VALIDATED, "False", Reason::Error, &message);
        if before.as_deref() != Some(message.as_str()) {
            out.note(
                true,
                Reason::ValidateFailed,
                format!("Failed to validate plan: {message}"),
            );
        }
    }
    (problems.is_empty(), secrets_present)
}

/// A Plan CRD in the cluster that lacks fields of this controller's (the Go controller's or
/// Rancher's, which rewrite it when they start): the API server drops those fields, so the
/// Plan says so (condition CRDCurrent, a warning event), and while spec fields are missing
/// nothing new starts, since a pause, gate or retry setting stored in them is lost.
fn crd_gaps(pass: &mut Pass<'_, '_>) -> Option<(Reason, String)> {
    let gaps = pass.cx.obs.crd_gaps;
    let out = &mut pass.out;
    if gaps.is_empty() {
        out.conditions.retain(|c| c.type_ != CRD_CURRENT);
        return None;
    }
    let mut message = format!(
        "the Plan CRD in the cluster lacks {}, which the API server then drops (the Go \
         controller, and Rancher's, rewrite the CRD when they start); apply this controller's \
         CRD: kubectl apply -f deploy/crd.yaml (or helm upgrade)",
        gaps.join(", ")
    );
    let mut hold = None;
    if gaps.iter().any(|g| g.starts_with("spec.")) {
        message.push_str(
            "; no node starts until then, since a pause, a gate or a retry setting stored in \
             those fields is lost",
        );
        let why = "the Plan CRD in the cluster lacks this controller's spec fields (see the \
                   CRDCurrent condition)";
        hold = Some((Reason::CRDOutdated, why.to_owned()));
    }
    out.set_condition(CRD_CURRENT, "False", Reason::CRDOutdated, &message);
    let key = format!("{}/{}", Reason::CRDOutdated, gaps.join(","));
    out.notes
        .push(Note::new(Target::Plan, true, Reason::CRDOutdated, message).once(key));
    hold
}

/// Resolution, whatever validation found: `latestVersion` and `LatestResolved`. Returns whether
/// a version is resolved.
fn resolve(pass: &mut Pass<'_, '_>) -> bool {
    let out = &mut pass.out;
    status::ensure(&mut out.conditions, LATEST_RESOLVED, &pass.cx.now);
    let previous = out.status.latest_version.clone().unwrap_or_default();
    match pass.cx.obs.resolution.clone() {
        Resolution::Version(v) => resolved_to(pass, resolve::munge(&v), Reason::Version),
        Resolution::Channel(v) => {
            let version = resolve::munge(&v);
            if let Some(message) = went_back(pass.cx.plan, &previous, &version) {
                // Never followed down: a channel that flaps would start and replace Jobs in turn.
                let key = format!("{}/{version}/{previous}", Reason::ChannelWentBack);
                out.notes.push(
                    Note::new(Target::Plan, true, Reason::ChannelWentBack, message.clone())
                        .once(key),
                );
                out.set_condition(LATEST_RESOLVED, "True", Reason::Channel, &message);
            } else {
                resolved_to(pass, version, Reason::Channel);
            }
        }
        Resolution::ChannelFailed { error, retry } => {
            out.requeue_within(retry);
            let failed = format!("Failed to resolve latest version from Spec.Channel: {error}");
            out.note(true, Reason::ResolveFailed, failed.clone());
            if previous.is_empty() {
                out.set_condition(LATEST_RESOLVED, "False", Reason::ChannelError, &failed);
            } else {
                // The rollout continues with the version resolved before; say the poll failed.
                let message = format!("channel poll failed, still applying {previous}: {error}");
                out.set_condition(LATEST_RESOLVED, "True", Reason::Channel, &message);
            }
        }
        Resolution::ChannelNotDue(after) => out.requeue_within(after),
        Resolution::Missing => {
            let message = "cannot resolve plan: missing channel and version";
            if out.set_condition(LATEST_RESOLVED, "False", Reason::Error, message) {
                out.note(true, Reason::ResolveFailed, message.to_owned());
            }
        }
    }
    let out = &pass.out;
    status::is(&out.conditions, LATEST_RESOLVED, "True")
        && out
            .status
            .latest_version
            .as_deref()
            .is_some_and(|v| !v.is_empty())
}

/// What to say when a K3s or RKE2 Plan's channel answers `version`, older than `previous`
/// (resolved before), and the Plan does not allow downgrades: the answer is not followed.
fn went_back(plan: &Plan, previous: &str, version: &str) -> Option<String> {
    let allowed = plan
        .spec
        .version_safety
        .as_ref()
        .and_then(|s| s.allow_downgrade)
        == Some(true);
    let new = versions::target(&plan.spec, version)?;
    let old = versions::target(&plan.spec, previous)?;
    (!allowed && new < old).then(|| {
        format!(
            "the channel answers {new}, older than {old} resolved before: still applying {old} \
             (set spec.versionSafety.allowDowngrade: true to follow the channel down)"
        )
    })
}

/// A version was resolved (from `reason`: Version or Channel); a new one is told and makes
/// the Plan incomplete.
fn resolved_to(pass: &mut Pass<'_, '_>, version: String, reason: Reason) {
    let out = &mut pass.out;
    let was_resolved = status::is(&out.conditions, LATEST_RESOLVED, "True");
    let previous = out.status.latest_version.clone().unwrap_or_default();
    if !was_resolved || previous != version {
        out.note(
            false,
            Reason::Resolved,
            format!("Resolved latest version from Spec.{reason}: {version}"),
        );
        out.set_condition(COMPLETE, "False", Reason::Resolved, "");
    }
    out.set_condition(LATEST_RESOLVED, "True", reason, "");
    out.status.latest_version = Some(version);
}

/// The hash of the version just resolved, computed when every Secret it covers is there (else
/// the previous hash stays, as in the Go controller).
fn hash_version(pass: &mut Pass<'_, '_>, version: &str) {
    let plan = pass.cx.plan;
    let mut with_version = plan.clone();
    with_version.status = Some(PlanStatus {
        latest_version: Some(version.to_owned()),
        ..pass.out.status.clone()
    });
    let secrets: Vec<&Secret> = hashed_secrets(plan)
        .filter_map(|name| pass.cx.obs.secrets.get(name).copied())
        .collect();
    pass.out.status.latest_hash = Some(hash::plan_hash(&hash::go_shape(&with_version), &secrets));
}
