//! The rules a Plan must follow, shared by the admission webhook, the `check` command and the
//! controller's `Validated` condition: one set of rules, three doors.
//!
//! Every rule reports a [`Problem`] naming the field, what is wrong and what would be right, and
//! all problems are reported at once. Legal but risky settings produce warnings.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use k8s_openapi::api::core::v1::{EnvVar, SecurityContext, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::api::{
    ContainerSpec, DAY_NAMES, DRAIN_ON_TIMEOUT, DrainSpec, HOST_ROOT_MOUNT, HealthGates,
    IntOrDuration, IntOrPercent, LATEST_HASH_VAR, LATEST_VERSION_VAR, MAX_OBJECT_GATES, ObjectGate,
    PLAN_LABEL_PREFIX, POD_INFO_MOUNT, Plan, PlanSpec, RetrySpec, SecretSpec, TimeWindowSpec,
    VOLUME_DETACH_ON_TIMEOUT, VolumeDetach,
};
use crate::syntax::{duration, expression, image, k8s, window};

pub mod order;
mod pods;
mod rollout;
pub mod versions;

use pods::*;
pub use rollout::resolved_version_problem;
use rollout::*;

/// One problem with a Plan: the field path and a message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending field, e.g. `spec.window.days[2]`.
    pub field: String,
    /// The whole message, starting with the field path.
    pub message: String,
}

impl Problem {
    /// A problem written as `<field>: <detail>`.
    fn new(field: impl Into<String>, detail: impl fmt::Display) -> Self {
        let field = field.into();
        Self {
            message: bounded(&format!("{field}: {detail}")),
            field,
        }
    }

    /// A problem whose message is written out in full (it must still start with the field).
    fn text(field: impl Into<String>, message: String) -> Self {
        Self {
            field: field.into(),
            message: bounded(&message),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Longest quoted value a message repeats; the rest is cut, saying how long the value was. A Plan
/// may hold megabytes in one field, and messages end up in answers, logs and status.
pub const ECHO_LIMIT: usize = 100;

/// Longest message of one problem or warning, after long values are cut.
pub const MESSAGE_LIMIT: usize = 1000;

/// Most problems listed in one message; the rest are counted.
pub const LISTED_PROBLEMS: usize = 50;

/// `message` with every quoted value (`"..."` as `{:?}` writes it, or `` `...` `` as serde does)
/// cut to [`ECHO_LIMIT`] characters, and the whole cut to [`MESSAGE_LIMIT`].
pub fn bounded(message: &str) -> String {
    if message.chars().count() <= ECHO_LIMIT {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len().min(MESSAGE_LIMIT + 64));
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c != '"' && c != '`' {
            continue;
        }
        // Inside a quoted value: copy up to ECHO_LIMIT characters (an escape such as \" counts as
        // one, so it is never split), skip the rest, and close the quote.
        let (mut kept, mut total, mut closed) = (0usize, 0usize, false);
        while let Some(q) = chars.next() {
            if q == c {
                closed = true;
                break;
            }
            let escaped = (c == '"' && q == '\\').then(|| chars.next()).flatten();
            total += 1;
            if kept < ECHO_LIMIT {
                kept += 1;
                out.push(q);
                out.extend(escaped);
            }
        }
        if total > kept {
            out.push('…');
        }
        if closed {
            out.push(c);
        }
        if total > kept {
            out.push_str(&format!(" ({total} characters)"));
        }
        if out.len() > MESSAGE_LIMIT * 4 {
            break;
        }
    }
    if out.chars().count() > MESSAGE_LIMIT {
        out = out.chars().take(MESSAGE_LIMIT).collect();
        out.push_str("… (message cut)");
    }
    out
}

/// The outcome of validating a Plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.problems.is_empty()
    }

    /// All problems in one message, separated by `; `; after [`LISTED_PROBLEMS`] the rest are
    /// counted, not listed.
    pub fn message(&self) -> String {
        let mut message = self
            .problems
            .iter()
            .take(LISTED_PROBLEMS)
            .map(|p| p.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if let Some(more) = self.unlisted() {
            message.push_str(&format!("; and {more} more"));
        }
        message
    }

    /// How many problems a message leaves out, if any.
    pub fn unlisted(&self) -> Option<usize> {
        self.problems
            .len()
            .checked_sub(LISTED_PROBLEMS)
            .filter(|more| *more > 0)
    }

    fn problem(&mut self, field: impl Into<String>, detail: impl fmt::Display) {
        self.problems.push(Problem::new(field, detail));
    }

    fn warn(&mut self, warning: impl Into<String>) {
        self.warnings.push(bounded(&warning.into()));
    }
}

/// Validates a Plan given as JSON (a document of a file). A value that does not even have the
/// Plan's shape is reported as one problem naming the field.
pub fn validate_value(value: &serde_json::Value) -> Report {
    match serde_path_to_error::deserialize::<_, Plan>(value) {
        Ok(plan) => validate(&plan),
        Err(error) => shape_problem(error),
    }
}

/// Validates a Plan given as JSON text (an admission request's object), read straight into the
/// Plan without an intermediate JSON tree; returns the Plan too when it has the Plan's shape.
pub fn validate_json(text: &str) -> (Option<Plan>, Report) {
    let mut json = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Plan>(&mut json) {
        Ok(plan) => {
            let report = validate(&plan);
            (Some(plan), report)
        }
        Err(error) => (None, shape_problem(error)),
    }
}

fn shape_problem<E: fmt::Display>(error: serde_path_to_error::Error<E>) -> Report {
    let path = error.path().to_string();
    let inner = error.into_inner().to_string();
    let mut report = Report::default();
    // serde names a missing field in the message; name it in the path instead.
    let missing = inner
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'));
    match (path.as_str(), missing) {
        (".", Some(field)) => report.problem(field, "is required"),
        (".", None) => report.problem("object", inner),
        (_, Some(field)) => report.problem(format!("{path}.{field}"), "is required"),
        (_, None) => report.problem(path, inner),
    }
    report
}

/// Why a Plan in `namespace` is not this controller's, which serves `served` only (as the Go
/// controller, each controller handles the Plans of its own namespace; Rancher runs its own in
/// `cattle-system`). `None` for a Plan of the served namespace, or one that names none.
pub fn foreign_namespace(namespace: Option<&str>, served: &str) -> Option<String> {
    let namespace = namespace.filter(|n| !n.is_empty() && *n != served)?;
    Some(bounded(&format!(
        "metadata.namespace: this controller serves the Plans of namespace {served:?} only; a Plan \
         in {namespace:?} is left to the controller of that namespace (Rancher runs its own in \
         cattle-system); apply it in {served:?} for this controller to run it"
    )))
}

/// Validates a Plan: every problem and every warning.
pub fn validate(plan: &Plan) -> Report {
    let mut report = Report::default();
    check_name(plan, &mut report);
    check_spec(&plan.spec, &mut report);
    order::check(plan, &mut report);
    report
}

fn check_name(plan: &Plan, report: &mut Report) {
    let name = plan.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        // With generateName the API server appends 5 characters.
        if let Some(prefix) = plan.metadata.generate_name.as_deref()
            && prefix.len() + 5 > 63
        {
            report.problem(
                "metadata.generateName",
                format!(
                    "{prefix:?} is too long: a Plan's name is used as the node label name \
                     {PLAN_LABEL_PREFIX}<name>, which allows at most 63 characters, so use a \
                     prefix of at most 58"
                ),
            );
        }
        return;
    }
    if name.len() > 63 {
        report.problem(
            "metadata.name",
            format!(
                "{name:?} cannot be used as the node label name {PLAN_LABEL_PREFIX}{name}: at most \
                 63 characters are allowed, this has {}; use a shorter name",
                name.len()
            ),
        );
    } else if let Err(reason) = k8s::label_key(&format!("{PLAN_LABEL_PREFIX}{name}")) {
        report.problem(
            "metadata.name",
            format!(
                "{name:?} cannot be used as the node label name {PLAN_LABEL_PREFIX}{name}: \
                 {reason}; use a DNS label such as k3s-server"
            ),
        );
    }
}

/// The most windows a Plan may list in `spec.windows`.
pub const MAX_WINDOWS: usize = 16;

fn check_spec(spec: &PlanSpec, report: &mut Report) {
    match &spec.upgrade {
        Some(upgrade) => check_container("spec.upgrade", upgrade, report),
        None => report.problem(
            "spec.upgrade",
            "is required: set the upgrade container, e.g. {image: rancher/k3s-upgrade}",
        ),
    }
    if let Some(prepare) = &spec.prepare {
        check_container("spec.prepare", prepare, report);
    }
    if let Some(hooks) = &spec.hooks {
        pods::check_hooks(hooks, report);
    }
    check_volume_names(spec, report);
    check_mount_paths(spec, report);
    check_version_and_channel(spec, report);
    versions::check(spec, report);
    versions::check_convergence(spec, report);

    if let Some(concurrency) = &spec.concurrency {
        check_concurrency(concurrency, report);
    }
    if let Some(retry) = &spec.retry {
        check_retry(retry, report);
    }
    if let Some(budget) = &spec.failure_budget {
        check_failure_budget(budget, report);
    }
    if let Some(canary) = &spec.canary {
        check_canary(canary, report);
    }
    if let Some(gates) = &spec.health_gates {
        check_health_gates(gates, report);
    }
    if spec.paused == Some(true) {
        report.warn(
            "spec.paused is true: no node starts this Plan's upgrade until it is set to false \
             (upgrades already running finish)",
        );
    }
    if let Some(secs) = spec.job_active_deadline_secs
        && secs < 0
    {
        report.problem(
            "spec.jobActiveDeadlineSecs",
            format!(
                "must not be negative, got {secs}; use 0 for no deadline or a number of seconds"
            ),
        );
    }
    match &spec.node_selector {
        Some(selector) => check_selector("spec.nodeSelector", selector, report),
        None => report.warn(
            "spec.nodeSelector is not set, so this Plan selects no node; use nodeSelector: {} to \
             select every node",
        ),
    }
    if let Some(window) = &spec.window {
        check_window("spec.window", window, report);
    }
    let windows = spec.windows.as_deref().unwrap_or_default();
    if windows.len() > MAX_WINDOWS {
        report.problem(
            "spec.windows",
            format!(
                "{} windows; at most {MAX_WINDOWS} are allowed (a window may list several days)",
                windows.len()
            ),
        );
    }
    for (i, window) in windows.iter().enumerate().take(MAX_WINDOWS) {
        check_window(&format!("spec.windows[{i}]"), window, report);
    }
    if let Some(delay) = &spec.post_complete_delay {
        match duration::parse(delay) {
            Ok(nanos) if nanos < 0 => report.problems.push(Problem::text(
                "spec.postCompleteDelay",
                format!(
                    "spec.postCompleteDelay is negative ({delay:?}): use 0s or a positive \
                     duration such as 30s"
                ),
            )),
            Ok(_) => {}
            Err(e) => report.problem(
                "spec.postCompleteDelay",
                format!("{delay:?} is not a duration ({e}); use e.g. 30s, 5m or 1h30m"),
            ),
        }
    }
    if let Some(drain) = &spec.drain {
        check_drain(drain, report);
    }
    if let Some(secrets) = &spec.secrets {
        check_secrets(secrets, report);
    }
    if let Some(tolerations) = &spec.tolerations {
        for (i, toleration) in tolerations.iter().enumerate() {
            check_toleration(&format!("spec.tolerations[{i}]"), toleration, report);
        }
    }
    if let Some(labels) = &spec.post_complete_labels {
        check_post_complete_labels(labels, spec, report);
    }
    check_object_name(
        "spec.serviceAccountName",
        spec.service_account_name.as_deref(),
        "service account",
        report,
    );
    check_object_name(
        "spec.priorityClassName",
        spec.priority_class_name.as_deref(),
        "priority class",
        report,
    );
    for (i, secret) in spec.image_pull_secrets.iter().flatten().enumerate() {
        check_object_name(
            &format!("spec.imagePullSecrets[{i}].name"),
            Some(secret.name.as_str()),
            "Secret",
            report,
        );
    }
}

#[cfg(test)]
mod tests;
