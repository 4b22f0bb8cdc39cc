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
    IntOrDuration, IntOrPercent, LATEST_HASH_VAR, LATEST_VERSION_VAR, PLAN_LABEL_PREFIX,
    POD_INFO_MOUNT, Plan, PlanSpec, RetrySpec, SecretSpec, TimeWindowSpec,
};
use crate::syntax::{duration, image, k8s, window};

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

/// A number of nodes (at least 1) or a whole percentage from 1% to 100%.
fn check_concurrency(concurrency: &IntOrPercent, report: &mut Report) {
    const FIELD: &str = "spec.concurrency";
    match (concurrency, concurrency.percent()) {
        (IntOrPercent::Int(n), _) if *n < 1 => report.problem(
            FIELD,
            format!("must be at least 1, got {n}; it is the number of nodes upgraded at a time"),
        ),
        (IntOrPercent::Text(text), Some(p)) if !(1..=100).contains(&p) => report.problem(
            FIELD,
            format!(
                "{text:?} is not between 1% and 100%; a percentage counts the nodes the Plan \
                 selects, e.g. \"25%\""
            ),
        ),
        (IntOrPercent::Text(text), None) => report.problem(
            FIELD,
            format!(
                "{text:?} is neither a number of nodes nor a percentage; use a number such as 2 \
                 or a percentage of the selected nodes such as \"25%\""
            ),
        ),
        _ => {}
    }
}

/// A duration field: it parses and is not negative (and at most `max` seconds when given).
fn check_duration(field: &str, text: &str, max: Option<i64>, report: &mut Report) {
    match duration::parse(text) {
        Ok(nanos) if nanos < 0 => report.problem(
            field,
            format!("{text:?} is negative; use a duration such as 30s or 5m"),
        ),
        Ok(nanos) if max.is_some_and(|m| nanos > m * 1_000_000_000) => report.problem(
            field,
            format!(
                "{text:?} is longer than {}; use a shorter duration",
                duration::format(max.unwrap_or_default() * 1_000_000_000)
            ),
        ),
        Ok(_) => {}
        Err(e) => report.problem(
            field,
            format!("{text:?} is not a duration ({e}); use e.g. 30s, 5m or 1h"),
        ),
    }
}

/// Health gates: durations that parse, and a Prometheus gate with an http(s) URL and a query.
fn check_health_gates(gates: &HealthGates, report: &mut Report) {
    if let Some(ready_for) = &gates.node_ready_for {
        check_duration("spec.healthGates.nodeReadyFor", ready_for, None, report);
    }
    let Some(prometheus) = &gates.prometheus else {
        return;
    };
    let valid = url::Url::parse(&prometheus.url).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    if valid.is_none() {
        report.problem(
            "spec.healthGates.prometheus.url",
            format!(
                "{:?} is not an absolute http or https URL with a host (e.g. \
                 http://prometheus-operated.monitoring:9090)",
                prometheus.url
            ),
        );
    }
    if prometheus.query.trim().is_empty() {
        report.problem(
            "spec.healthGates.prometheus.query",
            "is empty; give a PromQL query that returns series while the cluster is unhealthy, \
             e.g. ALERTS{alertstate=\"firing\",severity=\"critical\"}",
        );
    }
    if let Some(timeout) = &prometheus.timeout {
        check_duration(
            "spec.healthGates.prometheus.timeout",
            timeout,
            Some(60),
            report,
        );
    }
}

/// Retries: a limit from 0 to 100 and a backoff that is a duration of at least 0s.
fn check_retry(retry: &RetrySpec, report: &mut Report) {
    if let Some(limit) = retry.limit
        && !(0..=100).contains(&limit)
    {
        report.problem(
            "spec.retry.limit",
            format!(
                "must be between 0 and 100, got {limit}; it is how often a failed node is retried"
            ),
        );
    }
    if let Some(backoff) = &retry.backoff {
        match duration::parse(backoff) {
            Ok(nanos) if nanos < 0 => report.problem(
                "spec.retry.backoff",
                format!("{backoff:?} is negative; use a duration such as 30s or 5m"),
            ),
            Ok(_) => {}
            Err(e) => report.problem(
                "spec.retry.backoff",
                format!("{backoff:?} is not a duration ({e}); use e.g. 30s, 5m or 1h"),
            ),
        }
    }
}

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
    check_volume_names(spec, report);
    check_mount_paths(spec, report);
    check_version_and_channel(spec, report);

    if let Some(concurrency) = &spec.concurrency {
        check_concurrency(concurrency, report);
    }
    if let Some(retry) = &spec.retry {
        check_retry(retry, report);
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
        check_window(window, report);
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

/// An optional reference to another object by name must be a DNS subdomain when it is set.
fn check_object_name(field: &str, name: Option<&str>, kind: &str, report: &mut Report) {
    if let Some(name) = name.filter(|n| !n.is_empty())
        && let Err(reason) = k8s::dns_subdomain(name)
    {
        report.problem(
            field,
            format!("{name:?} is not a valid {kind} name: it {reason}"),
        );
    }
}

fn check_container(path: &str, container: &ContainerSpec, report: &mut Report) {
    let field = format!("{path}.image");
    match image::ImageRef::parse(&container.image) {
        Ok(reference) => {
            if reference.tag.as_deref() == Some("latest") {
                report.warn(format!(
                    "{field}: the tag \"latest\" makes upgrades unrepeatable; pin a version, or \
                     leave the tag off to use the Plan's version"
                ));
            }
        }
        Err(e) => report.problem(
            field,
            format!("{:?} is not a valid image reference: {e}", container.image),
        ),
    }
    let mut env_names = BTreeSet::new();
    for (i, env) in container.envs.iter().flatten().enumerate() {
        check_env(&format!("{path}.envs[{i}]"), env, report);
        env_names.insert(env.name.as_str());
    }
    for (i, source) in container.env_from.iter().flatten().enumerate() {
        let field = format!("{path}.envFrom[{i}]");
        let config_map = source.config_map_ref.as_ref().map(|r| r.name.as_str());
        let secret = source.secret_ref.as_ref().map(|r| r.name.as_str());
        check_object_name(
            &format!("{field}.configMapRef.name"),
            config_map,
            "ConfigMap",
            report,
        );
        check_object_name(&format!("{field}.secretRef.name"), secret, "Secret", report);
    }
    if let Some(context) = &container.security_context {
        check_security_context(&format!("{path}.securityContext"), context, report);
    }
    for (i, volume) in container.volumes.iter().flatten().enumerate() {
        let field = format!("{path}.volumes[{i}]");
        if let Err(reason) = k8s::dns_label(&volume.name) {
            report.problem(
                format!("{field}.name"),
                format!("{:?} is not a valid volume name: it {reason}", volume.name),
            );
        } else if matches!(volume.name.as_str(), "host-root" | "pod-info")
            || volume.name.starts_with("secret-")
        {
            report.problem(
                format!("{field}.name"),
                format!(
                    "{:?} is reserved for the volumes the controller adds (host-root, pod-info, \
                     secret-*); choose another name",
                    volume.name
                ),
            );
        }
        if !volume.source.starts_with('/') {
            report.problem(
                format!("{field}.source"),
                format!(
                    "{:?} is not an absolute host path (e.g. /var/lib/rancher)",
                    volume.source
                ),
            );
        }
        if volume.destination.is_empty() || volume.destination.contains(':') {
            report.problem(
                format!("{field}.destination"),
                format!(
                    "{:?} is not a valid mount path: it must be non-empty and contain no ':'",
                    volume.destination
                ),
            );
        }
    }
}

/// What the API server refuses in a container's security context (its pod validation), so an
/// upgrade Job of the Plan would never be created.
fn check_security_context(field: &str, context: &SecurityContext, report: &mut Report) {
    let escalation_off = context.allow_privilege_escalation == Some(false);
    if escalation_off && context.privileged == Some(true) {
        report.problem(
            format!("{field}.allowPrivilegeEscalation"),
            "cannot be false while privileged is true (the API server refuses such a pod): a \
             privileged container can always escalate; leave it unset",
        );
    }
    let adds_sys_admin = context
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .is_some_and(|add| add.iter().any(|c| c == "CAP_SYS_ADMIN"));
    if escalation_off && adds_sys_admin {
        report.problem(
            format!("{field}.allowPrivilegeEscalation"),
            "cannot be false while capabilities.add has CAP_SYS_ADMIN (the API server refuses \
             such a pod); leave it unset or drop the capability",
        );
    }
    for (name, id) in [
        ("runAsUser", context.run_as_user),
        ("runAsGroup", context.run_as_group),
    ] {
        if let Some(id) = id.filter(|id| !(0..=i64::from(i32::MAX)).contains(id)) {
            report.problem(
                format!("{field}.{name}"),
                format!("{id} is not a user or group ID: use 0 to 2147483647"),
            );
        }
    }
    let profiles = [
        (
            "seccompProfile",
            context
                .seccomp_profile
                .as_ref()
                .map(|p| (p.type_.as_str(), p.localhost_profile.as_deref())),
        ),
        (
            "appArmorProfile",
            context
                .app_armor_profile
                .as_ref()
                .map(|p| (p.type_.as_str(), p.localhost_profile.as_deref())),
        ),
    ];
    for (name, profile) in profiles {
        let Some((kind, localhost)) = profile else {
            continue;
        };
        match (kind, localhost.filter(|l| !l.is_empty())) {
            ("RuntimeDefault" | "Unconfined", None) | ("Localhost", Some(_)) => {}
            ("Localhost", None) => report.problem(
                format!("{field}.{name}.localhostProfile"),
                "is required when type is Localhost: the profile's file on the node",
            ),
            ("RuntimeDefault" | "Unconfined", Some(_)) => report.problem(
                format!("{field}.{name}.localhostProfile"),
                format!("is only allowed with type Localhost, not {kind}"),
            ),
            _ => report.problem(
                format!("{field}.{name}.type"),
                format!("{kind:?} is not RuntimeDefault, Unconfined or Localhost"),
            ),
        }
    }
}

/// Every container of an upgrade pod mounts the node's root at /host, its own metadata at
/// /run/system-upgrade/pod, and each Secret; its own volumes come on top. The API server
/// refuses a container that mounts two volumes at one path, so no path may repeat.
fn check_mount_paths(spec: &PlanSpec, report: &mut Report) {
    fn clean(path: &str) -> &str {
        match path.trim_end_matches('/') {
            "" => "/",
            trimmed => trimmed,
        }
    }
    let mut shared: BTreeMap<String, String> = BTreeMap::from([
        (
            HOST_ROOT_MOUNT.to_owned(),
            "the controller's host-root volume (the node's /)".to_owned(),
        ),
        (
            POD_INFO_MOUNT.to_owned(),
            "the controller's pod-info volume (the pod's labels and annotations)".to_owned(),
        ),
    ]);
    for (i, secret) in spec.secrets.iter().flatten().enumerate() {
        let path = secret.mount_path();
        let what = format!("Secret {:?}", secret.name);
        if let Some(taken) = shared.insert(clean(&path).to_owned(), what) {
            report.problem(
                format!("spec.secrets[{i}].path"),
                format!(
                    "{path:?} is where {taken} is mounted in every container; mount it elsewhere"
                ),
            );
        }
    }
    for (field, container) in [
        ("spec.upgrade", &spec.upgrade),
        ("spec.prepare", &spec.prepare),
    ] {
        let mut taken = shared.clone();
        for (i, volume) in container
            .iter()
            .flat_map(|c| c.volumes.iter().flatten())
            .enumerate()
        {
            let what = format!("volume {:?}", volume.name);
            if let Some(other) = taken.insert(clean(&volume.destination).to_owned(), what) {
                report.problem(
                    format!("{field}.volumes[{i}].destination"),
                    format!(
                        "{:?} is where {other} is mounted; the API server refuses two volumes at \
                         one path, so choose another",
                        volume.destination
                    ),
                );
            }
        }
    }
}

/// Prepare volumes are added to the pod next to the upgrade volumes, so one name must mean one
/// host path, and no name may repeat within a container.
fn check_volume_names(spec: &PlanSpec, report: &mut Report) {
    let mut sources: BTreeMap<&str, &str> = BTreeMap::new();
    for (path, container) in [
        ("spec.upgrade", &spec.upgrade),
        ("spec.prepare", &spec.prepare),
    ] {
        let mut seen = BTreeSet::new();
        for (i, volume) in container
            .iter()
            .flat_map(|c| c.volumes.iter().flatten())
            .enumerate()
        {
            let field = format!("{path}.volumes[{i}].name");
            if !seen.insert(volume.name.as_str()) {
                report.problem(
                    field,
                    format!(
                        "{:?} is used twice; volume names must be unique",
                        volume.name
                    ),
                );
                continue;
            }
            match sources.get(volume.name.as_str()) {
                Some(source) if *source != volume.source => report.problem(
                    field,
                    format!(
                        "{:?} is also an upgrade volume with another source ({source}); the \
                         prepare and upgrade containers share pod volumes, so use another name",
                        volume.name
                    ),
                ),
                _ => {
                    sources.insert(&volume.name, &volume.source);
                }
            }
        }
    }
}

fn check_env(field: &str, env: &EnvVar, report: &mut Report) {
    if let Err(reason) = k8s::env_var_name(&env.name) {
        report.problem(
            format!("{field}.name"),
            format!("{:?} is not a valid variable name: it {reason}", env.name),
        );
    } else if !k8s::is_classic_env_var_name(&env.name) {
        report.warn(format!(
            "{field}.name: {:?} is accepted only by Kubernetes 1.32 and later; older API servers \
             refuse the Job (use letters, digits, '_', '-' and '.', not starting with a digit)",
            env.name
        ));
    }
    if env.value.as_deref().is_some_and(|v| !v.is_empty()) && env.value_from.is_some() {
        report.problem(field, "sets both value and valueFrom; keep one");
    }
}

fn check_version_and_channel(spec: &PlanSpec, report: &mut Report) {
    let version = spec.version.as_deref().filter(|v| !v.is_empty());
    let channel = spec.channel.as_deref().filter(|c| !c.is_empty());
    match (version, channel) {
        (None, None) => report.problem(
            "spec",
            "neither version nor channel is set: set spec.version (e.g. v1.30.4+k3s1) or \
             spec.channel (e.g. https://update.k3s.io/v1-release/channels/stable)",
        ),
        (Some(_), Some(_)) => {
            report.warn("spec.channel is ignored because spec.version is set; remove one of them")
        }
        _ => {}
    }
    if let Some(version) = version {
        let image = spec.upgrade.as_ref().map(|u| u.image.as_str());
        check_version(
            version,
            image.is_some_and(is_kubernetes_upgrade_image),
            report,
        );
    }
    if let Some(channel) = channel {
        let valid = url::Url::parse(channel).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
        });
        if valid.is_none() {
            report.problem(
                "spec.channel",
                format!(
                    "{channel:?} is not an absolute http or https URL with a host (e.g. \
                     https://update.k3s.io/v1-release/channels/stable)"
                ),
            );
        }
    }
}

/// Whether an image is K3s's or RKE2's upgrade image (any registry or tag), whose tags are
/// Kubernetes versions.
fn is_kubernetes_upgrade_image(image: &str) -> bool {
    let repository = image.split(['@']).next().unwrap_or(image);
    let last = repository.rsplit('/').next().unwrap_or(repository);
    let name = last.split(':').next().unwrap_or(last);
    matches!(name, "k3s-upgrade" | "rke2-upgrade")
}

/// Why a version a channel answered cannot be used for this Plan, if it cannot: the rules of
/// `spec.version`, applied before the answer is stored as `status.latestVersion`.
pub fn resolved_version_problem(spec: &PlanSpec, version: &str) -> Option<String> {
    let image = spec.upgrade.as_ref().map(|u| u.image.as_str());
    let mut report = Report::default();
    check_version(
        version,
        image.is_some_and(is_kubernetes_upgrade_image),
        &mut report,
    );
    let problem = report.problems.first()?;
    let detail = problem
        .message
        .strip_prefix("spec.version: ")
        .unwrap_or(&problem.message);
    Some(detail.to_owned())
}

/// A version becomes an image tag (`+` → `-`). It must be SemVer where a SemVer is meant: it
/// starts with `v` and a digit, or it tags a K3s or RKE2 upgrade image. Other images' tags such
/// as `22.04` (ubuntu) or `12.8` (debian) are taken as they are.
fn check_version(version: &str, kubernetes_image: bool, report: &mut Report) {
    let tag = version.replace('+', "-");
    if !image::is_tag(&tag) {
        report.problem(
            "spec.version",
            format!(
                "{version:?} cannot be used as an image tag: use at most 128 letters, digits, '_', \
                 '.' and '-' ('+' becomes '-'), not starting with '.' or '-'"
            ),
        );
        return;
    }
    let number = version.strip_prefix('v').unwrap_or(version);
    let semver_meant = number.starts_with(|c: char| c.is_ascii_digit())
        && (version.starts_with('v') || kubernetes_image);
    if semver_meant && let Err(e) = semver::Version::parse(number) {
        report.problem(
            "spec.version",
            format!(
                "{version:?} is not SemVer ({e}): expected MAJOR.MINOR.PATCH without leading \
                 zeros, optionally with -prerelease and +build, e.g. v1.30.4+k3s1"
            ),
        );
    }
}

fn check_window(spec: &TimeWindowSpec, report: &mut Report) {
    let days: Vec<String> = spec.days.iter().flatten().map(|d| d.0.clone()).collect();
    let start = spec.start_time.as_deref().unwrap_or_default();
    let end = spec.end_time.as_deref().unwrap_or_default();
    let zone = spec.time_zone.as_deref().unwrap_or_default();
    // The CRD accepts only the lowercase spellings; say so before the API server does.
    for (i, day) in days.iter().enumerate() {
        if !DAY_NAMES.contains(&day.as_str()) && window::parse_day(day).is_some() {
            report.problems.push(Problem::text(
                format!("spec.window.days[{i}]"),
                format!("spec.window is invalid, days[{i}]: {day:?} must be written in lowercase ({:?})", day.to_lowercase()),
            ));
        }
    }
    if let Err(errors) = window::TimeWindow::parse(&days, start, end, zone) {
        for error in errors {
            let field = match &error {
                window::WindowError::NoDays => "spec.window.days".to_owned(),
                window::WindowError::Day(i, _) => format!("spec.window.days[{i}]"),
                window::WindowError::Time(name, _) => format!("spec.window.{name}"),
                window::WindowError::Zone(_) => "spec.window.timeZone".to_owned(),
            };
            report.problems.push(Problem::text(
                field,
                format!("spec.window is invalid, {error}"),
            ));
        }
    }
}

fn check_drain(drain: &DrainSpec, report: &mut Report) {
    if drain.delete_local_data.is_some() && drain.delete_emptydir_data.is_some() {
        report.problems.push(Problem::text(
            "spec.drain",
            "spec.drain cannot specify both deleteEmptydirData and deleteLocalData; keep \
             deleteEmptydirData (deleteLocalData is its deprecated name)"
                .to_owned(),
        ));
    }
    match &drain.timeout {
        Some(IntOrDuration::Nanos(n)) if *n < 0 => report.problem(
            "spec.drain.timeout",
            format!("must not be negative, got {n}; use a duration such as 5m"),
        ),
        Some(IntOrDuration::Text(text)) => match duration::parse(text) {
            Ok(n) if n < 0 => report.problem(
                "spec.drain.timeout",
                format!("must not be negative, got {text:?}; use a duration such as 5m"),
            ),
            Ok(_) => {}
            Err(e) => report.problem(
                "spec.drain.timeout",
                format!(
                    "{text:?} is not a duration ({e}); use e.g. 5m or an integer number of \
                     nanoseconds"
                ),
            ),
        },
        _ => {}
    }
    if let Some(policy) = &drain.on_timeout
        && !DRAIN_ON_TIMEOUT.contains(&policy.as_str())
    {
        report.problem(
            "spec.drain.onTimeout",
            format!(
                "{policy:?} is not one of {}; it says what happens when the drain times out",
                DRAIN_ON_TIMEOUT.join(", ")
            ),
        );
    }
    if drain.on_timeout.is_some() && drain.timeout.is_none() {
        report.warn(
            "spec.drain.onTimeout has no effect without spec.drain.timeout: the drain waits for \
             as long as it takes",
        );
    }
    if let Some(grace) = drain.grace_period
        && grace < 0
    {
        report.problem(
            "spec.drain.gracePeriod",
            format!(
                "must not be negative, got {grace}; omit it to use each pod's own grace period"
            ),
        );
    }
    if let Some(skip) = drain.skip_wait_for_delete_timeout
        && skip < 0
    {
        report.problem(
            "spec.drain.skipWaitForDeleteTimeout",
            format!("must not be negative, got {skip}; use 0 to wait for every deleted pod"),
        );
    }
    if let Some(selector) = &drain.pod_selector {
        check_selector("spec.drain.podSelector", selector, report);
    }
    if drain.force == Some(true) {
        report.warn(
            "spec.drain.force: pods that no controller manages will be deleted during drains and \
             are gone for good",
        );
    }
    if drain.disable_eviction == Some(true) {
        report.warn(
            "spec.drain.disableEviction: pods are deleted instead of evicted, bypassing \
             PodDisruptionBudgets",
        );
    }
}

fn check_selector(path: &str, selector: &LabelSelector, report: &mut Report) {
    for (key, value) in selector.match_labels.iter().flatten() {
        if let Err(reason) = k8s::label_key(key) {
            report.problem(
                format!("{path}.matchLabels"),
                format!("key {key:?} is not a valid label key: {reason}"),
            );
        }
        if let Err(reason) = k8s::label_value(value) {
            report.problem(
                format!("{path}.matchLabels.{key}"),
                format!("{value:?} is not a valid label value: it {reason}"),
            );
        }
    }
    for (i, requirement) in selector.match_expressions.iter().flatten().enumerate() {
        let field = format!("{path}.matchExpressions[{i}]");
        if let Err(reason) = k8s::label_key(&requirement.key) {
            report.problem(
                format!("{field}.key"),
                format!("{:?} is not a valid label key: {reason}", requirement.key),
            );
        }
        let values = requirement.values.as_deref().unwrap_or_default();
        match requirement.operator.as_str() {
            "In" | "NotIn" => {
                if values.is_empty() {
                    report.problem(
                        format!("{field}.values"),
                        format!("must not be empty for operator {}", requirement.operator),
                    );
                }
                for (j, value) in values.iter().enumerate() {
                    if let Err(reason) = k8s::label_value(value) {
                        report.problem(
                            format!("{field}.values[{j}]"),
                            format!("{value:?} is not a valid label value: it {reason}"),
                        );
                    }
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    report.problem(
                        format!("{field}.values"),
                        format!(
                            "must be empty for operator {}; remove the values",
                            requirement.operator
                        ),
                    );
                }
            }
            other => report.problem(
                format!("{field}.operator"),
                format!("{other:?} is not an operator; use In, NotIn, Exists or DoesNotExist"),
            ),
        }
    }
}

fn check_secrets(secrets: &[SecretSpec], report: &mut Report) {
    let mut names = BTreeSet::new();
    for (i, secret) in secrets.iter().enumerate() {
        let field = format!("spec.secrets[{i}]");
        if let Err(reason) = k8s::dns_subdomain(&secret.name) {
            report.problem(
                format!("{field}.name"),
                format!("{:?} is not a valid Secret name: it {reason}", secret.name),
            );
        } else if !names.insert(secret.name.as_str()) {
            report.problem(
                format!("{field}.name"),
                format!(
                    "{:?} is listed twice; each Secret can be mounted once",
                    secret.name
                ),
            );
        }
        if secret.path.is_empty() {
            report.problem(
                format!("{field}.path"),
                "is required: an absolute path, or one relative to /run/system-upgrade/secrets",
            );
        } else if secret.path.contains(':') {
            report.problem(
                format!("{field}.path"),
                format!("{:?} must not contain ':'", secret.path),
            );
        }
        if let Some(mode) = secret.default_mode
            && !(0..=0o777).contains(&mode)
        {
            report.problem(
                format!("{field}.defaultMode"),
                format!(
                    "{mode} is not a file mode; use a value from 0 to 0777 (511), e.g. 0400 (256)"
                ),
            );
        }
    }
}

fn check_toleration(field: &str, toleration: &Toleration, report: &mut Report) {
    let key = toleration.key.as_deref().unwrap_or_default();
    let operator = toleration.operator.as_deref().unwrap_or_default();
    let value = toleration.value.as_deref().unwrap_or_default();
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !key.is_empty()
        && let Err(reason) = k8s::label_key(key)
    {
        report.problem(
            format!("{field}.key"),
            format!("{key:?} is not a valid taint key: {reason}"),
        );
    }
    match operator {
        "" | "Equal" => {
            if key.is_empty() {
                report.problem(
                    format!("{field}.operator"),
                    "must be Exists when the key is empty (to tolerate every taint)",
                );
            }
            if let Err(reason) = k8s::label_value(value) {
                report.problem(
                    format!("{field}.value"),
                    format!("{value:?} is not a valid taint value: it {reason}"),
                );
            }
        }
        "Exists" => {
            if !value.is_empty() {
                report.problem(
                    format!("{field}.value"),
                    "must be empty when the operator is Exists",
                );
            }
        }
        other => report.problem(
            format!("{field}.operator"),
            format!("{other:?} is not a toleration operator; use Equal or Exists"),
        ),
    }
    match effect {
        "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute" => {}
        other => report.problem(
            format!("{field}.effect"),
            format!("{other:?} is not a taint effect; use NoSchedule, PreferNoSchedule or NoExecute, or leave it empty for all"),
        ),
    }
    if toleration.toleration_seconds.is_some() && effect != "NoExecute" {
        report.problem(
            format!("{field}.tolerationSeconds"),
            "is only allowed with effect NoExecute",
        );
    }
}

/// Keys must be label keys; values must be label values once `$(LATEST_VERSION)` and
/// `$(LATEST_HASH)` are expanded (with the Plan's own version when it has one).
fn check_post_complete_labels(
    labels: &BTreeMap<String, String>,
    spec: &PlanSpec,
    report: &mut Report,
) {
    let version = spec
        .version
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(|v| v.replace('+', "-"));
    let sample_hash = "0".repeat(56);
    for (key, value) in labels {
        if let Err(reason) = k8s::label_key(key) {
            report.problem(
                "spec.postCompleteLabels",
                format!("key {key:?} is not a valid label key: {reason}"),
            );
        }
        let expanded = value
            .replace(LATEST_VERSION_VAR, version.as_deref().unwrap_or("v1"))
            .replace(LATEST_HASH_VAR, &sample_hash);
        if let Err(reason) = k8s::label_value(&expanded) {
            let note = if expanded != *value {
                " once $(LATEST_VERSION) and $(LATEST_HASH) are expanded"
            } else {
                ""
            };
            report.problem(
                format!("spec.postCompleteLabels.{key}"),
                format!("{value:?} is not a valid label value{note}: it {reason}"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
