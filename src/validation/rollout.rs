//! The rules for how a rollout goes: concurrency, durations, health gates, retries, the version
//! and channel, the window, the drain, selectors, Secrets and the labels a node gets when done.

use super::*;
use crate::api::{Canary, FailureBudget};

/// A number of nodes (at least 1) or a whole percentage from 1% to 100%.
pub(super) fn check_concurrency(concurrency: &IntOrPercent, report: &mut Report) {
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

/// A number of nodes (at least `min`; `what` says what it counts) or a whole percentage from 1%
/// to 100% of the selected nodes.
fn check_node_count(field: &str, nodes: &IntOrPercent, min: i64, what: &str, report: &mut Report) {
    match (nodes, nodes.percent()) {
        (IntOrPercent::Int(n), _) if *n < min => {
            let rule = match min {
                0 => "must not be negative".to_owned(),
                _ => format!("must be at least {min}"),
            };
            report.problem(field, format!("{rule}, got {n}; it is {what}"));
        }
        (IntOrPercent::Text(text), Some(p)) if !(1..=100).contains(&p) => report.problem(
            field,
            format!("{text:?} is not between 1% and 100% of the selected nodes, e.g. \"10%\""),
        ),
        (IntOrPercent::Text(text), None) => report.problem(
            field,
            format!(
                "{text:?} is neither a number of nodes nor a percentage; use e.g. {} or \"10%\"",
                min.max(1)
            ),
        ),
        _ => {}
    }
}

/// `spec.failureBudget`: a number of nodes (0 or more) or a percentage from 1% to 100%, and a
/// known policy for the failed nodes.
pub(super) fn check_failure_budget(budget: &FailureBudget, report: &mut Report) {
    let field = "spec.failureBudget.nodes";
    check_node_count(field, &budget.nodes, 0, "how many nodes may fail", report);
    if let Some(policy) = budget.failed_nodes.as_deref()
        && !matches!(policy, "Cordoned" | "Uncordoned")
    {
        report.problem(
            "spec.failureBudget.failedNodes",
            format!(
                "{policy:?} is not a policy: use Cordoned (failed nodes stay out of service) or \
                 Uncordoned"
            ),
        );
    }
}

/// `spec.canary`: a first wave named by a count (at least 1, or 1% to 100%) or by a selector,
/// not both, and a positive soak of at most 30 days.
pub(super) fn check_canary(canary: &Canary, report: &mut Report) {
    match (&canary.nodes, &canary.node_selector) {
        (Some(_), Some(_)) => report.problem(
            "spec.canary",
            "sets both nodes and nodeSelector; the first wave is one or the other: keep one",
        ),
        (None, None) => report.problem(
            "spec.canary",
            "names no first wave: set nodes (e.g. 1 or \"10%\") or nodeSelector",
        ),
        (Some(nodes), None) => {
            let field = "spec.canary.nodes";
            check_node_count(field, nodes, 1, "how many nodes go first", report);
        }
        (None, Some(selector)) => check_selector("spec.canary.nodeSelector", selector, report),
    }
    if let Some(soak) = canary.soak_for.as_deref() {
        const THIRTY_DAYS: i64 = 30 * 24 * 3600;
        check_duration("spec.canary.soakFor", soak, Some(THIRTY_DAYS), report);
        if duration::parse(soak).is_ok_and(|d| d == 0) {
            report.problem(
                "spec.canary.soakFor",
                "must be more than 0; leave it out to wait for approval alone",
            );
        }
    }
}

/// A duration field: it parses and is not negative (and at most `max` seconds when given).
pub(super) fn check_duration(field: &str, text: &str, max: Option<i64>, report: &mut Report) {
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
pub(super) fn check_health_gates(gates: &HealthGates, report: &mut Report) {
    if let Some(ready_for) = &gates.node_ready_for {
        check_duration("spec.healthGates.nodeReadyFor", ready_for, None, report);
    }
    if let Some(objects) = &gates.objects {
        check_object_gates(objects, report);
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
    if let Some(problem) = promql_problem(&prometheus.query) {
        report.problem("spec.healthGates.prometheus.query", problem);
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

/// Object gates: an API version and kind that are well formed, `name` or `selector` (not both)
/// and a CEL expression that compiles and reads the variable the gate defines.
fn check_object_gates(gates: &[ObjectGate], report: &mut Report) {
    if gates.len() > MAX_OBJECT_GATES {
        report.problem(
            "spec.healthGates.objects",
            format!(
                "has {} gates, more than {MAX_OBJECT_GATES}; combine expressions over the same \
                 objects with &&",
                gates.len()
            ),
        );
        return;
    }
    for (i, gate) in gates.iter().enumerate() {
        let field = |f: &str| format!("spec.healthGates.objects[{i}].{f}");
        let version_ok = match gate.api_version.split_once('/') {
            Some((group, version)) => {
                k8s::dns_subdomain(group).is_ok() && k8s::dns_label(version).is_ok()
            }
            None => k8s::dns_label(&gate.api_version).is_ok(),
        };
        if !version_ok {
            report.problem(
                field("apiVersion"),
                format!(
                    "{:?} is not an API version; write group/version (ceph.rook.io/v1, apps/v1) \
                     or v1 for the core group",
                    gate.api_version
                ),
            );
        }
        let kind_ok = gate
            .kind
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase())
            && gate.kind.chars().all(|c| c.is_ascii_alphanumeric())
            && gate.kind.len() <= 63;
        if !kind_ok {
            report.problem(
                field("kind"),
                format!(
                    "{:?} is not a kind; write it as the API server names it, e.g. CephCluster",
                    gate.kind
                ),
            );
        }
        if let Some(namespace) = &gate.namespace
            && let Err(problem) = k8s::dns_label(namespace)
        {
            report.problem(field("namespace"), format!("{namespace:?} {problem}"));
        }
        if let Some(name) = &gate.name
            && let Err(problem) = k8s::dns_subdomain(name)
        {
            report.problem(field("name"), format!("{name:?} {problem}"));
        }
        if gate.name.is_some() && gate.selector.is_some() {
            report.problem(
                field("selector"),
                "is set with name; give name for one object or selector for several, not both",
            );
        }
        if let Some(selector) = &gate.selector {
            check_selector(&field("selector"), selector, report);
        }
        let variable = if gate.name.is_some() {
            expression::Variable::Object
        } else {
            expression::Variable::Objects
        };
        if let Err(problem) = expression::compile(&gate.expression, variable) {
            report.problem(field("expression"), problem);
        }
    }
}

/// The longest PromQL query a gate may hold: parsing is bounded like every webhook input.
const MAX_QUERY: usize = 4096;

/// What is wrong with a Prometheus gate's query, if anything: empty, too long, not PromQL (with
/// the column where the lexer stops, when it does), or a query whose answer is a scalar or a
/// string, which is never empty, so the gate would stay closed for good.
fn promql_problem(query: &str) -> Option<String> {
    use promql_parser::parser::{self, value::ValueType};
    const EXAMPLE: &str = "e.g. ALERTS{alertstate=\"firing\",severity=\"critical\"}";
    if query.trim().is_empty() {
        return Some(format!(
            "is empty; give a PromQL query that returns series while the cluster is unhealthy, \
             {EXAMPLE}"
        ));
    }
    if query.len() > MAX_QUERY {
        return Some(format!(
            "is {} bytes long, more than {MAX_QUERY}; use a recording rule for a long query",
            query.len()
        ));
    }
    let expr = match parser::parse(query) {
        Ok(expr) => expr,
        Err(error) => {
            let at = lexer_column(query, &error)
                .map(|column| format!(" at column {column}"))
                .unwrap_or_default();
            return Some(format!(
                "{query:?} is not PromQL: {error}{at}; give an instant query that returns series \
                 while the cluster is unhealthy, {EXAMPLE}"
            ));
        }
    };
    match expr.value_type() {
        ValueType::Vector | ValueType::Matrix => None,
        other => Some(format!(
            "{query:?} returns a {}, which always holds a value, so the gate would never open; \
             give a query that returns series only while the cluster is unhealthy, such as a \
             comparison (up == 0), {EXAMPLE}",
            match other {
                ValueType::Scalar => "scalar",
                _ => "string",
            }
        )),
    }
}

/// The 1-based column of the character where the PromQL lexer stops with `error`: the end of
/// the shortest prefix that fails the same way (for an unclosed brace, the brace), or none when
/// the parser rather than the lexer refused the query.
fn lexer_column(query: &str, error: &str) -> Option<usize> {
    use promql_parser::parser::lex;
    let ends: Vec<usize> = query
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .collect();
    let first = ends
        .iter()
        .position(|end| lex::lexer(&query[..*end]).err().as_deref() == Some(error))?;
    Some(first + 1)
}

/// Retries: a limit from 0 to 100 and a backoff that is a duration of at least 0s.
pub(super) fn check_retry(retry: &RetrySpec, report: &mut Report) {
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

pub(super) fn check_version_and_channel(spec: &PlanSpec, report: &mut Report) {
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
pub(super) fn is_kubernetes_upgrade_image(image: &str) -> bool {
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
pub(super) fn check_version(version: &str, kubernetes_image: bool, report: &mut Report) {
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

/// A window's problem: in the Go controller's words for `spec.window` ("spec.window is invalid,
/// <detail>"), led by the field for the others (`spec.windows[1].days[0]: …`).
fn window_message(path: &str, detail: &str) -> String {
    if path == "spec.window" {
        format!("{path} is invalid, {detail}")
    } else {
        format!("{path}.{detail}")
    }
}

pub(super) fn check_window(path: &str, spec: &TimeWindowSpec, report: &mut Report) {
    let days: Vec<String> = spec.days.iter().flatten().map(|d| d.0.clone()).collect();
    let start = spec.start_time.as_deref().unwrap_or_default();
    let end = spec.end_time.as_deref().unwrap_or_default();
    let zone = spec.time_zone.as_deref().unwrap_or_default();
    // The CRD accepts only the lowercase spellings; say so before the API server does.
    for (i, day) in days.iter().enumerate() {
        if !DAY_NAMES.contains(&day.as_str()) && window::parse_day(day).is_some() {
            report.problems.push(Problem::text(
                format!("{path}.days[{i}]"),
                window_message(
                    path,
                    &format!(
                        "days[{i}]: {day:?} must be written in lowercase ({:?})",
                        day.to_lowercase()
                    ),
                ),
            ));
        }
    }
    if let Err(errors) = window::TimeWindow::parse(&days, start, end, zone) {
        for error in errors {
            let field = match &error {
                window::WindowError::NoDays => format!("{path}.days"),
                window::WindowError::Day(i, _) => format!("{path}.days[{i}]"),
                window::WindowError::Time(name, _) => format!("{path}.{name}"),
                window::WindowError::Zone(_) => format!("{path}.timeZone"),
            };
            report.problems.push(Problem::text(
                field,
                window_message(path, &error.to_string()),
            ));
        }
    }
    if let Some(on_close) = spec.on_close.as_deref()
        && !matches!(on_close, "Continue" | "Stop")
    {
        report.problem(
            format!("{path}.onClose"),
            format!(
                "{on_close:?} is not a policy: use Continue (a rollout under way runs on to its \
                 end) or Stop (no node starts until a window opens again)"
            ),
        );
    }
}

/// `drain.volumeDetach`: a timeout of at most a day and a known policy.
fn check_volume_detach(detach: &VolumeDetach, report: &mut Report) {
    if let Some(timeout) = &detach.timeout {
        check_duration(
            "spec.drain.volumeDetach.timeout",
            timeout,
            Some(24 * 3600),
            report,
        );
    }
    if let Some(policy) = &detach.on_timeout
        && !VOLUME_DETACH_ON_TIMEOUT.contains(&policy.as_str())
    {
        report.problem(
            "spec.drain.volumeDetach.onTimeout",
            format!(
                "{policy:?} is not one of {}; it says what happens when volumes are still \
                 attached at the timeout",
                VOLUME_DETACH_ON_TIMEOUT.join(", ")
            ),
        );
    }
}

pub(super) fn check_drain(drain: &DrainSpec, report: &mut Report) {
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
    if let Some(detach) = &drain.volume_detach {
        check_volume_detach(detach, report);
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

pub(super) fn check_selector(path: &str, selector: &LabelSelector, report: &mut Report) {
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

pub(super) fn check_secrets(secrets: &[SecretSpec], report: &mut Report) {
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

/// Keys must be label keys; values must be label values once `$(LATEST_VERSION)` and
/// `$(LATEST_HASH)` are expanded (with the Plan's own version when it has one).
pub(super) fn check_post_complete_labels(
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
