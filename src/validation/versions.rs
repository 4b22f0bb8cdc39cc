//! Version safety for K3s and RKE2 Plans (the `k3s-upgrade` and `rke2-upgrade` images): a node
//! is never moved to an older version, never up more than one minor version in one step, and a
//! node that is not control-plane never gets a kubelet newer than every control-plane node's,
//! unless `spec.versionSafety` says otherwise. One rule for the controller's decision, the
//! webhook and `preview`.

use k8s_openapi::api::core::v1::Node;

use super::Report;
use super::rollout::is_kubernetes_upgrade_image;
use crate::api::{PlanSpec, Reason};
use crate::syntax::kube_version::{KubeVersion, Step, step};

/// The labels K3s, RKE2 and kubeadm put on control-plane nodes.
const CONTROL_PLANE_LABELS: [&str; 2] = [
    "node-role.kubernetes.io/control-plane",
    "node-role.kubernetes.io/master",
];

/// Why a version rule holds a node: nothing starts on it while it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// The node runs a newer version than the target.
    Downgrade { runs: KubeVersion },
    /// The target is more than one minor above what the node runs; `between` lists the minors
    /// to go through first.
    MinorSkip {
        runs: KubeVersion,
        between: Vec<String>,
    },
    /// The node is not control-plane and these control-plane nodes run less than the target
    /// (`None`: they report no version).
    ServersBehind {
        behind: Vec<(String, Option<KubeVersion>)>,
    },
}

impl Hold {
    /// The reason of the Complete condition and the events.
    pub fn reason(&self) -> Reason {
        match self {
            Hold::Downgrade { .. } => Reason::DowngradeHeld,
            Hold::MinorSkip { .. } => Reason::MinorSkipHeld,
            Hold::ServersBehind { .. } => Reason::WaitingForServers,
        }
    }

    /// What to tell the operator about node `node` and version `target`, with the way out.
    pub fn message(&self, node: &str, target: &KubeVersion) -> String {
        match self {
            Hold::Downgrade { runs } => format!(
                "node {node} runs {runs}, newer than {target}: the Plan would downgrade it, \
                 which Kubernetes does not support; set a version of at least {runs}, or \
                 spec.versionSafety.allowDowngrade: true to downgrade on purpose"
            ),
            Hold::MinorSkip { runs, between } => {
                let chain = if between.is_empty() {
                    format!("{target} is another major version")
                } else {
                    format!(
                        "upgrade through {} first (one minor at a time)",
                        between.join(", then ")
                    )
                };
                format!(
                    "node {node} runs {runs}, and {target} skips minor versions: {chain}, or set \
                     spec.versionSafety.allowMinorSkip: true"
                )
            }
            Hold::ServersBehind { behind } => {
                let servers: Vec<String> = behind
                    .iter()
                    .map(|(name, runs)| match runs {
                        Some(runs) => format!("{name} runs {runs}"),
                        None => format!("{name} reports no version"),
                    })
                    .collect();
                format!(
                    "node {node} is not control-plane and waits until every control-plane node \
                     runs at least {target} (a kubelet must not be newer than its API server): \
                     {}; upgrade the servers first (a server Plan), or set \
                     spec.versionSafety.serversFirst: false",
                    servers.join(", ")
                )
            }
        }
    }
}

/// The target version the rules apply to: the Plan upgrades K3s or RKE2 and `version` (the
/// resolved version, `+` or munged `-`) is a Kubernetes version.
pub fn target(spec: &PlanSpec, version: &str) -> Option<KubeVersion> {
    upgrades_kubernetes(spec)
        .then(|| KubeVersion::parse(version))
        .flatten()
}

/// Whether the Plan upgrades K3s or RKE2 (its upgrade image is `k3s-upgrade` or `rke2-upgrade`).
fn upgrades_kubernetes(spec: &PlanSpec) -> bool {
    spec.upgrade
        .as_ref()
        .is_some_and(|u| is_kubernetes_upgrade_image(&u.image))
}

/// The version the node's kubelet reports, if it reports one that parses.
pub fn kubelet_version(node: &Node) -> Option<KubeVersion> {
    let info = node.status.as_ref()?.node_info.as_ref()?;
    KubeVersion::parse(&info.kubelet_version)
}

/// The boot ID the node's kubelet reports (empty when none).
pub fn node_boot_id(node: &Node) -> &str {
    node.status
        .as_ref()
        .and_then(|s| s.node_info.as_ref())
        .map(|i| i.boot_id.as_str())
        .unwrap_or_default()
}

/// Whether the node carries a control-plane role label.
pub fn is_control_plane(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .is_some_and(|l| CONTROL_PLANE_LABELS.iter().any(|k| l.contains_key(*k)))
}

/// What holds `node` from moving to `target`, if anything; `nodes` are all the cluster's nodes
/// (for its control-plane nodes). A node whose kubelet reports no version is held only by the
/// servers-first rule.
pub fn hold<'a>(
    spec: &PlanSpec,
    target: &KubeVersion,
    node: &Node,
    nodes: impl IntoIterator<Item = &'a Node>,
) -> Option<Hold> {
    let safety = spec.version_safety.clone().unwrap_or_default();
    let runs = kubelet_version(node);
    if let Some(runs) = &runs {
        match step(runs, target) {
            Step::Down if safety.allow_downgrade != Some(true) => {
                return Some(Hold::Downgrade { runs: runs.clone() });
            }
            Step::SkipsMinors(between) if safety.allow_minor_skip != Some(true) => {
                return Some(Hold::MinorSkip {
                    runs: runs.clone(),
                    between,
                });
            }
            // Nothing moves: no kubelet gets newer than the servers'.
            Step::Same => return None,
            _ => {}
        }
    }
    if safety.servers_first == Some(false) || is_control_plane(node) {
        return None;
    }
    let behind: Vec<(String, Option<KubeVersion>)> = nodes
        .into_iter()
        .filter(|n| is_control_plane(n))
        .filter_map(|n| {
            let runs = kubelet_version(n);
            let name = n.metadata.name.clone().unwrap_or_default();
            runs.as_ref()
                .is_none_or(|r| r < target)
                .then_some((name, runs))
        })
        .collect();
    (!behind.is_empty()).then_some(Hold::ServersBehind { behind })
}

/// How long a node may take to show its upgrade when `spec.convergence.within` is not set.
pub const CONVERGE_WITHIN: std::time::Duration = std::time::Duration::from_secs(600);
/// The longest `spec.convergence.within`.
const CONVERGE_WITHIN_MAX_SECONDS: i64 = 86_400;
/// The values of `spec.convergence.check`.
const CHECKS: [&str; 4] = ["KubeletVersion", "Reboot", "NodeLabel", "None"];

/// What shows that a node's upgrade happened (`spec.convergence.check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The node reports the Job's version.
    KubeletVersion,
    /// The node's boot ID is not the one it had when its Job was created.
    Reboot,
    /// The node carries this label (with this value, if one is given).
    NodeLabel(String, Option<String>),
}

/// The check a Plan asks for: `spec.convergence.check`, else `KubeletVersion` for a K3s or RKE2
/// Plan; `None` when the Job's success is enough.
pub fn convergence_check(spec: &PlanSpec) -> Option<Check> {
    let convergence = spec.convergence.clone().unwrap_or_default();
    let kubernetes = upgrades_kubernetes(spec);
    match convergence.check.as_deref() {
        Some("KubeletVersion") => Some(Check::KubeletVersion),
        Some("Reboot") => Some(Check::Reboot),
        Some("NodeLabel") => {
            let label = convergence.node_label.unwrap_or_default();
            let (key, value) = match label.split_once('=') {
                Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
                None => (label, None),
            };
            Some(Check::NodeLabel(key, value))
        }
        Some(_) => None,
        None if kubernetes => Some(Check::KubeletVersion),
        None => None,
    }
}

/// How long a node may take to show its upgrade (`spec.convergence.within`, default 10m).
pub fn convergence_within(spec: &PlanSpec) -> std::time::Duration {
    spec.convergence
        .as_ref()
        .and_then(|c| c.within.as_deref())
        .and_then(|w| crate::syntax::duration::parse(w).ok())
        .filter(|n| *n > 0)
        .map_or(CONVERGE_WITHIN, |n| {
            std::time::Duration::from_nanos(u64::try_from(n).unwrap_or(u64::MAX))
        })
}

/// What a node still has to show for its upgrade to count (`None`: it shows it): `version` is
/// the Job's version, `boot_id` the node's boot ID when the Job was created (unknown for a Job
/// created before the check: taken as shown).
pub fn not_shown(
    check: &Check,
    node: &Node,
    version: &str,
    boot_id: Option<&str>,
) -> Option<String> {
    match check {
        Check::KubeletVersion => {
            let wanted = KubeVersion::parse(version)?;
            match kubelet_version(node) {
                Some(runs) if runs == wanted => None,
                Some(runs) => Some(format!("to report kubelet {wanted} (it reports {runs})")),
                None => Some(format!("to report kubelet {wanted} (it reports none)")),
            }
        }
        Check::Reboot => {
            let before = boot_id.filter(|b| !b.is_empty())?;
            (node_boot_id(node) == before)
                .then(|| format!("to reboot (its boot ID is still {before})"))
        }
        Check::NodeLabel(key, value) => {
            let has = node.metadata.labels.as_ref().and_then(|l| l.get(key));
            match (has, value) {
                (Some(_), None) => None,
                (Some(v), Some(want)) if v == want => None,
                (_, Some(want)) => Some(format!("to carry the label {key}={want}")),
                (None, None) => Some(format!("to carry the label {key}")),
            }
        }
    }
}

/// The problems of `spec.convergence`.
pub(super) fn check_convergence(spec: &PlanSpec, report: &mut Report) {
    let Some(convergence) = &spec.convergence else {
        return;
    };
    let check = convergence.check.as_deref();
    if let Some(check) = check
        && !CHECKS.contains(&check)
    {
        report.problem(
            "spec.convergence.check",
            format!("{check:?} is not one of {}", CHECKS.join(", ")),
        );
    }
    let kubernetes = upgrades_kubernetes(spec);
    if check == Some("KubeletVersion") && !kubernetes {
        report.problem(
            "spec.convergence.check",
            "KubeletVersion needs a k3s-upgrade or rke2-upgrade image, whose version the node \
             reports; use Reboot or NodeLabel for other upgrades",
        );
    }
    match (check, convergence.node_label.as_deref()) {
        (Some("NodeLabel"), None | Some("")) => report.problem(
            "spec.convergence.nodeLabel",
            "is required with check NodeLabel: the label the upgrade sets, e.g. \
             os-upgrade.example.com/done or os-upgrade.example.com/kernel=6.1.0",
        ),
        (Some("NodeLabel"), Some(label)) => {
            let (key, value) = label.split_once('=').unwrap_or((label, ""));
            let bad = crate::syntax::k8s::label_key(key)
                .err()
                .or_else(|| crate::syntax::k8s::label_value(value).err());
            if let Some(reason) = bad {
                report.problem(
                    "spec.convergence.nodeLabel",
                    format!("{label:?} is not a label key or key=value: {reason}"),
                );
            }
        }
        (_, Some(_)) => report.problem(
            "spec.convergence.nodeLabel",
            "is used only with check NodeLabel; set check: NodeLabel or remove it",
        ),
        _ => {}
    }
    if let Some(within) = &convergence.within {
        super::rollout::check_duration(
            "spec.convergence.within",
            within,
            Some(CONVERGE_WITHIN_MAX_SECONDS),
            report,
        );
    }
}

/// Most nodes named in one refusal; the rest are counted.
const NAMED_NODES: usize = 5;

/// The version `spec.version` asks of a K3s or RKE2 Plan, when the webhook checks it against
/// the nodes (a channel's answer is checked by the controller, which holds instead).
pub fn admission_target(spec: &PlanSpec) -> Option<KubeVersion> {
    target(spec, spec.version.as_deref()?)
}

/// Why `spec.version` is refused for the nodes it would move (`selected`): a downgrade or a
/// skipped minor, per node, unless `spec.versionSafety` allows it. The servers-first rule only
/// holds nodes, so it is not a reason to refuse.
pub fn refusal(spec: &PlanSpec, selected: &[&Node]) -> Option<String> {
    let target = admission_target(spec)?;
    let reasons: Vec<String> = selected
        .iter()
        .filter_map(|node| {
            let held = hold(spec, &target, node, std::iter::empty())?;
            let name = node.metadata.name.as_deref().unwrap_or_default();
            Some(held.message(name, &target))
        })
        .collect();
    let first = reasons.first()?;
    let more = match reasons.len() - 1 {
        0 => String::new(),
        n if n < NAMED_NODES => format!("; and: {}", reasons[1..].join("; ")),
        n => format!(
            "; and: {} (and {} more node(s))",
            reasons[1..NAMED_NODES].join("; "),
            n + 1 - NAMED_NODES
        ),
    };
    Some(format!("spec.version: {first}{more}"))
}

/// The warnings about `spec.versionSafety` and the steps it makes needless: the version rules
/// need the cluster's nodes, so no Plan is refused here.
pub(super) fn check(spec: &PlanSpec, report: &mut Report) {
    let kubernetes = upgrades_kubernetes(spec);
    let safety = spec.version_safety.clone().unwrap_or_default();
    if !kubernetes {
        if spec.version_safety.is_some() {
            report.warn(
                "spec.versionSafety applies to K3s and RKE2 Plans only (the k3s-upgrade and \
                 rke2-upgrade images); it does nothing for this Plan",
            );
        }
        return;
    }
    if safety.allow_downgrade == Some(true) {
        report.warn(
            "spec.versionSafety.allowDowngrade is true: nodes that run a newer version are moved \
             down to this one, which Kubernetes does not support; remove it once the downgrade \
             is done",
        );
    }
    if safety.allow_minor_skip == Some(true) {
        report.warn(
            "spec.versionSafety.allowMinorSkip is true: nodes may move up more than one minor \
             version in one step, which Kubernetes does not support for a control plane",
        );
    }
    let waits_for_plan = spec.prepare.as_ref().is_some_and(|p| {
        is_kubernetes_upgrade_image(&p.image)
            && p.args.as_ref().and_then(|a| a.first()).map(String::as_str) == Some("prepare")
    });
    if waits_for_plan && safety.servers_first != Some(false) {
        let other = spec
            .prepare
            .as_ref()
            .and_then(|p| p.args.as_ref())
            .and_then(|a| a.get(1))
            .cloned()
            .unwrap_or_default();
        report.warn(format!(
            "spec.prepare waits for Plan {other:?} to complete; this controller already holds \
             nodes that are not control-plane until every control-plane node runs the target \
             version (spec.versionSafety.serversFirst), so the step is no longer needed, and it \
             hangs if that Plan is missing or never completes: remove spec.prepare"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, version: Option<&str>, server: bool) -> Node {
        let mut labels = json!({"kubernetes.io/hostname": name});
        if server {
            labels["node-role.kubernetes.io/control-plane"] = json!("true");
        }
        let mut value = json!({"metadata": {"name": name, "labels": labels}});
        if let Some(v) = version {
            value["status"] = json!({"nodeInfo": {"kubeletVersion": v, "architecture": "", "bootID": "",
                "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "", "machineID": "",
                "operatingSystem": "", "osImage": "", "systemUUID": ""}});
        }
        serde_json::from_value(value).unwrap()
    }

    fn spec(extra: serde_json::Value) -> PlanSpec {
        let mut value = json!({"upgrade": {"image": "rancher/k3s-upgrade"}});
        value["versionSafety"] = extra;
        serde_json::from_value(value).unwrap()
    }

    fn v(text: &str) -> KubeVersion {
        KubeVersion::parse(text).unwrap()
    }

    #[test]
    fn only_kubernetes_upgrade_images_with_kubernetes_versions_have_a_target() {
        let k3s = spec(json!(null));
        assert_eq!(target(&k3s, "v1.30.4-k3s1"), Some(v("v1.30.4+k3s1")));
        assert_eq!(target(&k3s, "latest"), None);
        let os: PlanSpec = serde_json::from_value(json!({"upgrade": {"image": "ubuntu"}})).unwrap();
        assert_eq!(target(&os, "v1.30.4"), None);
    }

    #[test]
    fn downgrades_and_skipped_minors_are_held_unless_allowed() {
        let plan = spec(json!(null));
        let to = v("v1.30.4+k3s1");
        let newer = node("a", Some("v1.31.0+k3s1"), true);
        let hold_of = |s: &PlanSpec, n: &Node| hold(s, &to, n, [n]);
        let held = hold_of(&plan, &newer).unwrap();
        assert_eq!(held.reason(), Reason::DowngradeHeld);
        let message = held.message("a", &to);
        assert!(
            message.contains("node a runs v1.31.0+k3s1, newer than v1.30.4+k3s1"),
            "{message}"
        );
        assert!(
            message.contains("spec.versionSafety.allowDowngrade: true"),
            "{message}"
        );
        // A revision counts: k3s2 to k3s1 is a downgrade.
        let revision = node("a", Some("v1.30.4+k3s2"), true);
        assert!(matches!(
            hold_of(&plan, &revision),
            Some(Hold::Downgrade { .. })
        ));
        assert_eq!(
            hold_of(&spec(json!({"allowDowngrade": true})), &newer),
            None
        );
        let old = node("a", Some("v1.28.9+k3s1"), true);
        let skip = hold_of(&plan, &old).unwrap();
        assert_eq!(skip.reason(), Reason::MinorSkipHeld);
        assert!(
            skip.message("a", &to)
                .contains("upgrade through v1.29 first")
        );
        assert_eq!(hold_of(&spec(json!({"allowMinorSkip": true})), &old), None);
        // One minor up, a patch, a release candidate to its release: fine.
        for from in [
            "v1.29.9+k3s1",
            "v1.30.1+k3s1",
            "v1.30.4-rc1+k3s1",
            "v1.30.4+k3s1",
        ] {
            assert_eq!(hold_of(&plan, &node("a", Some(from), true)), None, "{from}");
        }
        // No version reported: nothing to compare with.
        assert_eq!(hold_of(&plan, &node("a", None, true)), None);
    }

    #[test]
    fn the_prepare_step_that_waits_for_the_server_plan_is_told_needless() {
        let agent: PlanSpec =
            serde_json::from_value(json!({"upgrade": {"image": "rancher/k3s-upgrade"},
            "prepare": {"image": "rancher/k3s-upgrade", "args": ["prepare", "server-plan"]}}))
            .unwrap();
        let mut report = Report::default();
        check(&agent, &mut report);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(report.warnings[0].contains("waits for Plan \"server-plan\""));
        assert!(report.problems.is_empty());
        let mut off = agent.clone();
        off.version_safety = Some(crate::api::VersionSafety {
            servers_first: Some(false),
            ..Default::default()
        });
        let mut report = Report::default();
        check(&off, &mut report);
        assert!(report.warnings.is_empty());
        let os: PlanSpec = serde_json::from_value(
            json!({"upgrade": {"image": "ubuntu"}, "versionSafety": {"allowDowngrade": true}}),
        )
        .unwrap();
        let mut report = Report::default();
        check(&os, &mut report);
        assert!(report.warnings[0].contains("K3s and RKE2 Plans only"));
    }

    #[test]
    fn the_webhook_refuses_a_version_that_would_downgrade_or_skip_a_selected_node() {
        let mut plan = spec(json!(null));
        plan.version = Some("v1.30.4+k3s1".into());
        let newer = node("a", Some("v1.31.0+k3s1"), false);
        let jump = node("b", Some("v1.28.1+k3s1"), false);
        let fine = node("c", Some("v1.30.0+k3s1"), false);
        let agent_behind_servers = node("d", Some("v1.30.0+k3s1"), false);
        let message = refusal(&plan, &[&newer, &jump, &fine]).unwrap();
        assert!(
            message.starts_with("spec.version: node a runs v1.31.0+k3s1"),
            "{message}"
        );
        assert!(
            message.contains("; and: node b runs v1.28.1+k3s1"),
            "{message}"
        );
        assert_eq!(refusal(&plan, &[&fine, &agent_behind_servers]), None);
        // A channel is the controller's to check; an allowed downgrade is no refusal.
        plan.version = None;
        assert_eq!(refusal(&plan, &[&newer]), None);
        plan.version = Some("v1.30.4+k3s1".into());
        plan.version_safety = Some(crate::api::VersionSafety {
            allow_downgrade: Some(true),
            allow_minor_skip: Some(true),
            ..Default::default()
        });
        assert_eq!(refusal(&plan, &[&newer, &jump]), None);
    }

    #[test]
    fn agents_wait_for_every_control_plane_node() {
        let plan = spec(json!(null));
        let to = v("v1.30.4+k3s1");
        let agent = node("agent", Some("v1.29.9+k3s1"), false);
        let done = node("s1", Some("v1.30.4+k3s1"), true);
        let behind = node("s2", Some("v1.29.9+k3s1"), true);
        let silent = node("s3", None, true);
        let held = hold(&plan, &to, &agent, [&agent, &done, &behind, &silent]).unwrap();
        assert_eq!(held.reason(), Reason::WaitingForServers);
        let message = held.message("agent", &to);
        assert!(
            message.contains("s2 runs v1.29.9+k3s1, s3 reports no version"),
            "{message}"
        );
        assert!(!message.contains("s1 runs"), "{message}");
        let ahead = node("s2", Some("v1.31.0+k3s1"), true);
        assert_eq!(hold(&plan, &to, &agent, [&agent, &done, &ahead]), None);
        let off = spec(json!({"serversFirst": false}));
        assert_eq!(hold(&off, &to, &agent, [&agent, &behind]), None);
        // Servers are never held by other servers; no control-plane node at all holds no one.
        assert_eq!(hold(&plan, &to, &behind, [&behind, &done]), None);
        assert_eq!(hold(&plan, &to, &agent, [&agent]), None);
        // An agent already on the target moves nothing.
        let there = node("agent", Some("v1.30.4+k3s1"), false);
        assert_eq!(hold(&plan, &to, &there, [&there, &behind]), None);
    }
}
