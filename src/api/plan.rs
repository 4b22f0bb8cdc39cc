//! The `Plan` custom resource (`upgrade.cattle.io/v1`), field for field as Rancher's Go
//! system-upgrade-controller defines it: same JSON names, same types, same printer columns.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EnvFromSource, EnvVar, LocalObjectReference, SecurityContext, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The desired upgrade: what to run, on which nodes, how many at a time.
// The derive's repeated `printcolumn(type_ = ...)` arguments trip this lint.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "upgrade.cattle.io",
    version = "v1",
    kind = "Plan",
    namespaced,
    status = "PlanStatus",
    doc = "Plan represents a set of Jobs to apply an upgrade (or other operation) to a set of Nodes.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.upgrade.image"),
    printcolumn(name = "Channel", type_ = "string", json_path = ".spec.channel"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    // Added to the Go controller's columns: what a channel resolved, how far the rollout is, and
    // why it is not complete.
    printcolumn(name = "Latest", type_ = "string", json_path = ".status.latestVersion"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Complete",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Complete')].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type=='Complete')].reason"
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.conditions[?(@.message!='')].message"
    ),
    // Priority 10, as in the Go controller's CRD: shown only with `-o wide`.
    printcolumn(
        name = "Applying",
        type_ = "string",
        json_path = ".status.applying",
        priority = "10"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("required" = ["upgrade"]))]
pub struct PlanSpec {
    /// The maximum number of nodes to apply this upgrade on at the same time: a number (at least
    /// 1), or a percentage of the nodes the Plan selects such as `"25%"` (rounded down, at least
    /// one node). The admission webhook sets 1 when it is omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<IntOrPercent>,

    /// When true, no node starts the upgrade; Jobs already running finish. Set it back to false
    /// (or remove it) to resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,

    /// Automatic retries of a node whose Job or drain failed, before the Plan reports the
    /// failure. Without it a failed node waits for an edit of the Plan or the
    /// `upgrade.cattle.io/retry` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,

    /// How many nodes may fail (after their retries) while the rollout goes on with the others
    /// (an addition to the Go controller, which stops at the first failure). Without it, the
    /// first failed node stops the rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_budget: Option<FailureBudget>,

    /// Plans of this namespace, by name, that must be Complete for their current version before
    /// this Plan starts a node (e.g. OS packages after K3s). A missing, failed or unfinished one
    /// holds new starts and is named in status; what runs finishes. A cycle is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,

    /// Plans that share this name start nodes one Plan at a time: while one of them has an
    /// upgrade (or a hook) under way, the others start none (`exclusive` only keeps two Plans'
    /// Jobs off the same node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive_group: Option<String>,

    /// A first wave of nodes that runs alone, then holds the rollout until approved
    /// (`upgrade.cattle.io/approve`) or, with `soakFor`, until the wave has been done that long
    /// with every health gate open (an addition to the Go controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,

    /// Health checks between nodes: a closed gate holds the rollout (nothing new starts; what
    /// runs finishes) and says why in status and events; it never fails the Plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_gates: Option<HealthGates>,

    /// Version safety for K3s and RKE2 Plans (the `k3s-upgrade` and `rke2-upgrade` images): by
    /// default a node is never moved to an older version nor up more than one minor version in
    /// one step, and nodes that are not control-plane wait until every control-plane node runs
    /// the target. Each rule can be turned off here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_safety: Option<VersionSafety>,

    /// What shows that a node's upgrade happened, checked after its Job succeeds and before the
    /// node is labelled done: for K3s and RKE2 Plans by default the node's kubelet version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convergence: Option<Convergence>,

    /// Sets activeDeadlineSeconds on the Jobs generated for this Plan. If a Job does not complete
    /// within this time, the Plan stops processing until it is updated. 0 means no deadline;
    /// when unset the controller default (SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS) is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_active_deadline_secs: Option<i64>,

    /// Selects the nodes this Plan applies to. Omitted selects no node; `{}` selects every node.
    /// Nodes must also carry the `kubernetes.io/hostname` label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,

    /// The service account the upgrade pods run as. When empty, the namespace's default service
    /// account is used. Changing it re-runs the Plan on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// A URL that answers HTTP 302 with the version in the last path element of its Location
    /// header (`+` becomes `-`). Polled only when `version` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,

    /// The version to apply (`+` becomes `-`), used as the image tag of untagged images. When set,
    /// the channel is never contacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Secrets mounted into every container of the upgrade pods. Their content is part of the
    /// Plan's hash unless `ignoreUpdates` is set, so changing them re-runs the Plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<Vec<SecretSpec>>,

    /// Node taints the upgrade pods tolerate, appended to the built-in toleration of
    /// `node.kubernetes.io/unschedulable:NoSchedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Jobs of exclusive Plans never run on a node at the same time as those of another
    /// exclusive Plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclusive: Option<bool>,

    /// A time window in which a rollout of this Plan may start. A rollout that started inside the
    /// window runs to completion (unless the window says `onClose: Stop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<TimeWindowSpec>,

    /// More time windows (an addition to the Go controller, which knows only `window`): a rollout
    /// may start while any of these, or `window`, is open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<Vec<TimeWindowSpec>>,

    /// The prepare init container, run before cordon/drain, which run before the upgrade
    /// container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prepare: Option<ContainerSpec>,

    /// The upgrade container; required.
    // Optional in Rust so a Plan without it can be read and reported, required in the schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<ContainerSpec>,

    /// When true, the node is cordoned before the upgrade container runs and uncordoned after it
    /// succeeds. Implied by `drain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cordon: Option<bool>,

    /// Drain the node before the upgrade container runs. When omitted, no drain happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<DrainSpec>,

    /// Steps that run once around a rollout, as Jobs bound to no node (for example
    /// `ceph osd set noout` before the first node, `unset noout` after the last). An addition
    /// to the Go controller, which ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,

    /// Image pull secrets for the upgrade pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// How long to wait after a node's Job completes before the node is marked done and the next
    /// node may start, as a duration such as `30s` or `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_complete_delay: Option<String>,

    /// The priority class of the upgrade pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Labels set on a node when this Plan's Job completes on it. Values may contain
    /// `$(LATEST_VERSION)` or `$(LATEST_HASH)`, expanded from the Plan status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_complete_labels: Option<BTreeMap<String, String>>,
}

/// A simplified container template for the prepare and upgrade containers of the upgrade pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    /// Image reference. When it has neither tag nor digest, `:<status.latestVersion>` is added.
    pub image: String,
    /// Entrypoint array, as in a Pod's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Arguments to the entrypoint, as in a Pod's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    /// Environment variables (note the plural field name), placed after the pod identity
    /// variables and before the SYSTEM_UPGRADE_PLAN_* variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envs: Option<Vec<EnvVar>>,
    /// Sources of environment variables, as in a Pod's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from: Option<Vec<EnvFromSource>>,
    /// Host paths mounted into the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<VolumeSpec>>,
    /// Security context. For the upgrade container it replaces the default (privileged, with
    /// CAP_SYS_BOOT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
}

/// `spec.canary`: the first wave of a rollout, and what lifts the hold after it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// How many nodes the first wave upgrades: a number (at least 1), or a percentage of the
    /// nodes the Plan selects such as `"10%"` (rounded down, at least one). The wave's nodes are
    /// the first to start in the Plan's order. Set this or `nodeSelector`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<IntOrPercent>,
    /// The first wave: the selected nodes that also match this selector (e.g. a label you put
    /// on the nodes you test on). Set this or `nodes`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Lifts the hold once the wave has been done this long with every health gate open, e.g.
    /// `"1h"` (a closed gate starts the soak again). Without it only the approval annotation
    /// lifts the hold; with it the annotation still lifts it at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_for: Option<String>,
}

/// `spec.failureBudget`: failed nodes the rollout goes on without.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailureBudget {
    /// How many nodes may fail: a number (0 stops at the first failure, as without a budget), or
    /// a percentage of the nodes the Plan selects such as `"10%"` (rounded down, at least one).
    pub nodes: IntOrPercent,
    /// What a failed node the rollout goes on without is left as: `Cordoned` (the default, as
    /// a failed node is today: kept out of service until someone looks) or `Uncordoned`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Cordoned", "Uncordoned"]))]
    pub failed_nodes: Option<String>,
}

/// Steps that run once around a rollout (`spec.hooks`). Each is a Job of one container bound to
/// no node and not privileged, with the Plan's image rules, image pull secrets, service
/// account and Secrets. Hooks should be idempotent: a hook may run again after a change of
/// version or a controller restart at the wrong moment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    /// Runs before the first node of a rollout starts; no node starts until it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<ContainerSpec>,
    /// Runs once the last node is done (the Plan is Complete only after it succeeded); new
    /// nodes wait while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<ContainerSpec>,
    /// When set, the after hook also runs once the Plan has been paused (`spec.paused`) this
    /// long with no upgrade under way, e.g. `1h` (`0s`: as soon as it is paused). When the
    /// Plan resumes, the before hook runs again before the next node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_when_paused_for: Option<String>,
    /// When true, deleting the Plan while its after hook is owed starts no new node, lets the
    /// upgrades under way finish and runs the after hook before the Plan goes: the Plan carries
    /// the finalizer `upgrade.cattle.io/after-hook` while the hook is owed. A finalizer holds
    /// the Plan (and its namespace) while the controller is not running: remove it by hand then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_when_deleted: Option<bool>,
    /// When true, cancelling the rollout (`upgrade.cattle.io/cancel`) runs the owed after hook
    /// once the upgrades under way have finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_when_cancelled: Option<bool>,
}

/// A host path volume mounted into a container.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// Name of the volume in the Pod spec.
    pub name: String,
    /// Path on the host to mount.
    pub source: String,
    /// Path inside the container to mount the volume at.
    pub destination: String,
}

/// How a node is drained before the upgrade, with the meaning of the `kubectl drain` options of
/// the same names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DrainSpec {
    /// How long to wait for the drain before giving up: an integer number of nanoseconds, or a
    /// duration string such as `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<IntOrDuration>,
    /// Seconds each pod is given to terminate; the pod's own setting when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period: Option<i32>,
    /// Deprecated name of deleteEmptydirData; set at most one of the two.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_local_data: Option<bool>,
    /// Continue even if there are pods using emptyDir volumes (their data is lost). Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_emptydir_data: Option<bool>,
    /// Ignore DaemonSet-managed pods. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_daemon_sets: Option<bool>,
    /// Also delete pods that no controller manages; they are gone for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Delete pods instead of evicting them, bypassing PodDisruptionBudgets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_eviction: Option<bool>,
    /// Skip waiting for pods whose deletionTimestamp is older than this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_wait_for_delete_timeout: Option<i64>,
    /// Only drain the pods this selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// What happens when `timeout` passes with pods left: `Fail` (the default: the node fails
    /// and keeps its slot), `Retry` (keep evicting until the Job's activeDeadlineSeconds ends
    /// it), `Delete` (delete the pods left instead of evicting them, bypassing
    /// PodDisruptionBudgets, then wait once more up to `timeout`), or `Skip` (give the node up:
    /// its Job goes, it is uncordoned, and the rollout goes on without it until the Plan changes
    /// or the `upgrade.cattle.io/retry` annotation names it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
    /// After the pods are gone, wait for the node's volumes to detach before the upgrade runs
    /// (on by default): every `VolumeAttachment` of the node, except those of volumes that pods
    /// left on the node still use (DaemonSet pods, pods `podSelector` leaves), must be gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_detach: Option<VolumeDetach>,
    /// Taint the nodes still waiting for their turn `upcoming.upgrade.cattle.io/<plan>:
    /// PreferNoSchedule` (default true), so pods evicted from the nodes being drained prefer
    /// nodes already upgraded and are not moved twice. A node loses the taint when it is done,
    /// held, no longer selected, or when the Plan is paused, outside its window or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer_upgraded_nodes: Option<bool>,
}

/// The values of `drain.onTimeout`.
pub const DRAIN_ON_TIMEOUT: [&str; 4] = ["Fail", "Retry", "Delete", "Skip"];

/// How a drain waits for the node's volumes to detach.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VolumeDetach {
    /// Wait for the volumes (default true); false lets the upgrade run as soon as the pods are
    /// gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// How long to wait, from when the pods are gone (default `5m`, at most `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// What happens when `timeout` passes with volumes attached: `Fail` (the default: the drain
    /// fails, the node keeps its slot and retries apply), `Proceed` (the upgrade runs anyway,
    /// with a warning event), or `Skip` (give the node up, as `drain.onTimeout: Skip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_timeout: Option<String>,
}

/// The values of `drain.volumeDetach.onTimeout`.
pub const VOLUME_DETACH_ON_TIMEOUT: [&str; 3] = ["Fail", "Proceed", "Skip"];

/// An integer number of nanoseconds or a Go duration string (`5m`, `90s`): the Go controller's
/// IntOrString drain timeout, with a 64-bit integer so that nanosecond values fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntOrDuration {
    Nanos(i64),
    Text(String),
}

impl Serialize for IntOrDuration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Nanos(n) => serializer.serialize_i64(*n),
            Self::Text(t) => serializer.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrDuration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer number of nanoseconds or a duration string such as 5m")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IntOrDuration::Nanos(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(IntOrDuration::Nanos)
                    .map_err(|_| E::custom("number of nanoseconds out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrDuration::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for IntOrDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrDuration".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // The flag alone is the structural form; the API server then accepts an integer or a string.
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// A number of nodes, or a percentage of the selected nodes written as `"25%"`: the usual
/// Kubernetes int-or-string. Other strings are kept as written, so validation can name them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IntOrPercent {
    Int(i64),
    Text(String),
}

impl PlanSpec {
    /// The Plan keeps an order with other Plans (`dependsOn`, `exclusiveGroup`).
    pub fn ordered(&self) -> bool {
        self.depends_on.as_ref().is_some_and(|d| !d.is_empty()) || self.exclusive_group.is_some()
    }
}

impl IntOrPercent {
    /// The number of nodes this stands for out of `selected`: a number as it is (0 when below
    /// 1), a percentage rounded down but at least 1; `None` for a malformed string.
    pub fn nodes(&self, selected: usize) -> Option<usize> {
        match self {
            Self::Int(n) => Some(usize::try_from(*n).unwrap_or(0)),
            Self::Text(_) => {
                let percent = usize::try_from(self.percent()?).ok()?;
                Some((selected.saturating_mul(percent) / 100).max(1))
            }
        }
    }

    /// The percentage a string such as `"25%"` names (digits only, no sign or space).
    pub fn percent(&self) -> Option<u32> {
        let Self::Text(text) = self else { return None };
        let digits = text.strip_suffix('%')?;
        if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }
}

impl From<i64> for IntOrPercent {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}

impl std::fmt::Display for IntOrPercent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Text(t) => write!(f, "{t:?}"),
        }
    }
}

impl Serialize for IntOrPercent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Int(n) => serializer.serialize_i64(*n),
            Self::Text(t) => serializer.serialize_str(t),
        }
    }
}

impl<'de> Deserialize<'de> for IntOrPercent {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = IntOrPercent;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number of nodes or a percentage such as \"25%\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(IntOrPercent::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(IntOrPercent::Int)
                    .map_err(|_| E::custom("number of nodes out of range"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(IntOrPercent::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl JsonSchema for IntOrPercent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "IntOrPercent".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "x-kubernetes-int-or-string": true })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// How often, and after how long, a failed node is tried again.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Retries per node and Plan version (0 to 100; 0 means none). The node's Job is deleted and
    /// created again, the drain included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i32>,
    /// Wait before the first retry, doubled before each next one, at most 1h (or this value when
    /// it is longer), as a duration such as `30s` or `5m`. Default `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// The version rules a K3s or RKE2 Plan may turn off.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionSafety {
    /// Move nodes to a version older than the one they run (default false: such a node is held,
    /// `Complete=False/DowngradeHeld`, and a channel answering an older version than the one
    /// resolved before is not followed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_downgrade: Option<bool>,
    /// Move a node up more than one minor version in one step, e.g. v1.28 to v1.30 (default
    /// false: such a node is held, `Complete=False/MinorSkipHeld`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_minor_skip: Option<bool>,
    /// Hold nodes that are not control-plane until every control-plane node runs at least the
    /// target version (default true; `Complete=False/WaitingForServers` meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub servers_first: Option<bool>,
}

/// How a node shows that its upgrade happened.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Convergence {
    /// `KubeletVersion` (the node reports the Plan's version; the default for K3s and RKE2
    /// Plans), `Reboot` (the node's boot ID changed since its Job was created), `NodeLabel` (the
    /// node carries `nodeLabel`, which the upgrade sets), or `None` (the default for other
    /// Plans: the Job's success is enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// For `NodeLabel`: the label the upgrade sets, as `key` (any value) or `key=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_label: Option<String>,
    /// How long after its Job succeeded a node may take to show it (default `10m`, at most
    /// `24h`); past that the node fails with reason `NotConverged`, and retries apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub within: Option<String>,
}

/// Health checks a rollout waits for between nodes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthGates {
    /// After its Job succeeds (and after `postCompleteDelay`), a node must be Ready and
    /// schedulable for this long (e.g. `2m`, the reboot case) before it counts as done and frees
    /// its slot; a NotReady spell starts the count again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ready_for: Option<String>,
    /// No node starts while a node the Plan selects is not Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all_nodes_ready: Option<bool>,
    /// No node starts while this Prometheus query returns any series (kured's model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusGate>,
    /// No node starts unless each of these CEL expressions over objects of the cluster is true
    /// (a CephCluster's health, every Longhorn volume robust, a Deployment at full strength).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<Vec<ObjectGate>>,
}

/// Objects of one kind and a CEL expression over them that is true while they are healthy.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectGate {
    /// The objects' API version, e.g. `ceph.rook.io/v1`, `apps/v1`, `v1`.
    pub api_version: String,
    /// Their kind, e.g. `CephCluster`.
    pub kind: String,
    /// Their namespace (for a namespaced kind; unset: every namespace when selecting).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// One object by name: the expression reads it as `object`, and a missing object keeps the
    /// gate closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The objects whose labels match (without `name`; unset selects all): the expression reads
    /// them as the list `objects`, e.g. `objects.all(v, v.status.robustness == "healthy")`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// A CEL expression over `object` or `objects` that is true while they are healthy, e.g.
    /// `object.status.ceph.health == "HEALTH_OK"`. False, an error (a missing field) or
    /// objects that cannot be read keep the gate closed, with why in the Plan's status.
    pub expression: String,
}

/// At most this many object gates per Plan.
pub const MAX_OBJECT_GATES: usize = 16;

/// A Prometheus instant query that must return no series.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusGate {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus-operated.monitoring:9090`.
    pub url: String,
    /// PromQL, e.g. `ALERTS{alertstate="firing",severity="critical"}`.
    pub query: String,
    /// How long one query may take (default `10s`, at most `1m`); a query that fails or times
    /// out keeps the gate closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// A Secret mounted into the upgrade pods.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// Name of the Secret, in the Plan's namespace.
    pub name: String,
    /// Mount path: absolute, or relative to /run/system-upgrade/secrets.
    pub path: String,
    /// When true, the Secret's content is not part of the Plan's hash, so changing it does not
    /// re-run the Plan, and the Secret need not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_updates: Option<bool>,
    /// File mode of the mounted files (Kubernetes default 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_mode: Option<i32>,
}

/// Where every container of an upgrade pod sees the node's root file system.
pub const HOST_ROOT_MOUNT: &str = "/host";
/// Where every container of an upgrade pod reads its own labels and annotations.
pub const POD_INFO_MOUNT: &str = "/run/system-upgrade/pod";
/// Where a Secret with a relative `path` is mounted.
pub const SECRETS_DIR: &str = "/run/system-upgrade/secrets";

impl SecretSpec {
    /// Where the Secret is mounted: its path when absolute, else under [`SECRETS_DIR`] (its name
    /// when the path is empty, which only a Plan that bypassed the CRD can have).
    pub fn mount_path(&self) -> String {
        match self.path.as_str() {
            "" => format!("{SECRETS_DIR}/{}", self.name),
            p if p.starts_with('/') => p.to_owned(),
            p => format!("{SECRETS_DIR}/{p}"),
        }
    }
}

/// A weekly time window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TimeWindowSpec {
    /// Days the window is open on: names (`mo`, `mon`, `monday`, ...) or 0-6 with 0 = Sunday.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub days: Option<Vec<Day>>,
    /// Start of the window, e.g. `22:00`, `22:00:00`, `10pm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// End of the window, same formats as startTime; before startTime means overnight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// IANA time zone of the window, e.g. `Europe/Berlin`; UTC when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// What a rollout under way does once this window closes (an addition to the Go
    /// controller): `Continue` (the default, as the Go controller: it runs on to its end) or
    /// `Stop` (no node starts until a window opens again; Jobs whose upgrade has not begun stop
    /// and their nodes are released; upgrades that began finish).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Continue", "Stop"]))]
    pub on_close: Option<String>,
}

/// A day of the week: its name, a 2- or 3-letter abbreviation, or 0-6 with 0 = Sunday.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(transparent)]
pub struct Day(pub String);

/// Every spelling of a day the CRD accepts, in the Go controller's order.
pub const DAY_NAMES: [&str; 28] = [
    "0",
    "su",
    "sun",
    "sunday",
    "1",
    "mo",
    "mon",
    "monday",
    "2",
    "tu",
    "tue",
    "tuesday",
    "3",
    "we",
    "wed",
    "wednesday",
    "4",
    "th",
    "thu",
    "thursday",
    "5",
    "fr",
    "fri",
    "friday",
    "6",
    "sa",
    "sat",
    "saturday",
];

impl JsonSchema for Day {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Day".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "enum": DAY_NAMES })
    }

    fn inline_schema() -> bool {
        true
    }
}

/// The observed state of a Plan.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanStatus {
    /// The `metadata.generation` of the Plan this status describes: until it equals the Plan's
    /// generation, the status (conditions included) is about an earlier spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `LatestResolved`: the version to apply has been determined. `Validated`: the spec is
    /// valid. `Complete`: the latest version has completed on all selected nodes; when a Job
    /// fails this stays False and its reason and message say why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Option<Vec<Condition>>,
    /// The version resolved from spec.version or the channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_version: Option<String>,
    /// The hash of the most recently resolved Plan: version, service account, digest-annotated
    /// fields and referenced Secrets. Nodes done with it carry `plan.upgrade.cattle.io/<plan>=<hash>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_hash: Option<String>,
    /// Nodes the Plan is currently being applied on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying: Option<Vec<String>>,
    /// Progress of each node the Plan is being applied on (an addition to the Go controller's
    /// status): its phase, Job and, when something is wrong or waited for, why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub nodes: Option<Vec<NodeStatus>>,
    /// Nodes done with the latest hash out of the nodes the Plan selects, e.g. `3/10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// The hooks of the Plan's rollouts (`spec.hooks`), when it has any: where each stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub hooks: Option<Vec<HookStatus>>,
    /// Set while the rollout of `latestHash` is cancelled (`upgrade.cattle.io/cancel`): nothing new
    /// starts until `upgrade.cattle.io/resume` or a new version or hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancelled: Option<Cancellation>,
    /// The first wave of the rollout of `latestHash` (`spec.canary`): where it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// The Plan's last rollouts, newest first (at most 5): one per hash it rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<PlanRun>>,
}

/// One rollout of a Plan (`status.history[]`): a version and hash from start to end.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanRun {
    /// The version rolled out.
    pub version: String,
    /// The Plan hash (`status.latestHash`) of the rollout.
    pub hash: String,
    /// When the controller first saw this hash (RFC 3339).
    pub started: String,
    /// When every selected node was done, or the rollout was cancelled; unset while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// `Complete`, `Cancelled`, or `Failed` (a failure stops it, or failed nodes are all that is
    /// left); unset while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// Nodes done with this hash, out of `selected`.
    pub done: i64,
    /// Nodes whose upgrade failed.
    pub failed: i64,
    /// Nodes the Plan selected.
    pub selected: i64,
}

/// Where the first wave of a rollout stands (`status.canary`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    /// The Plan hash whose rollout this wave opens.
    pub hash: String,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Running (the wave runs alone), AwaitingApproval (the wave is done, or a node of it
    /// failed, and the rest waits for `upgrade.cattle.io/approve`), Soaking (done, and the rest
    /// starts once `soakFor` has passed with the health gates open), or what lifted the hold:
    /// Approved, Soaked, or Done (the wave was every node left).
    pub phase: String,
    /// Since when it has been in this phase; while Soaking, since when the health gates have
    /// been open (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The wave's nodes, once it is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Vec<String>>,
    /// What holds the rollout, or lifted the hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A cancelled rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cancellation {
    /// The Plan hash whose rollout is cancelled.
    pub hash: String,
    /// Its version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When it was cancelled (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

/// Where a hook (`spec.hooks`) stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HookStatus {
    /// `before` or `after`.
    pub name: String,
    /// Due (the after hook is owed: a rollout is under way), Paused (owed, the Plan is paused;
    /// see `afterWhenPausedFor`), Starting (its Job is created once an earlier one of its name is gone), Running,
    /// Succeeded or Failed (it holds the rollout until retried or the Plan's hash changes).
    pub phase: String,
    /// The Plan hash (`status.latestHash`) of the rollout it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// Its Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Details: why it failed, what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When it entered this phase (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// How many times it was retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
}

/// Where the upgrade of one node stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    /// Node name.
    pub name: String,
    /// Preparing (its Job runs `prepare`, or waits to be created; the node still serves its
    /// workloads), Draining (the controller cordons and drains it; the message names what it
    /// waits for), Upgrading (the upgrade container runs), WaitingDelay (done, waiting
    /// postCompleteDelay before the next node), WaitingHealthy (done, waiting to be Ready for
    /// healthGates.nodeReadyFor), Failed (its Job or drain failed; the node keeps its slot until
    /// the Plan changes or it is retried), Retrying (its failed Job was deleted to run it again),
    /// Skipped (its drain timed out with `drain.onTimeout: Skip`), Held (a version rule holds
    /// it: a downgrade, a skipped minor, control-plane nodes behind; nothing runs on it), or
    /// Converging (its Job succeeded; waiting for the node to show it, see `convergence`).
    pub phase: String,
    /// The upgrade Job of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Details of the phase: why the Job failed, until when the delay lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the node entered this phase (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Digest of the failed Job's pod template: an edit of the Plan that changes it retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// How many times the node was retried (automatically, or by the retry annotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<i32>,
    /// A failed node the rollout went on without, within `spec.failureBudget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_up: Option<bool>,
}

/// A condition of a Plan, as in the Go controller (with lastUpdateTime).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition: Validated, LatestResolved, Complete, or the kstatus conventions'
    /// Reconciling (the rollout is under way) and Stalled (it cannot go on without a change).
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition: True, False or Unknown.
    pub status: String,
    /// The Plan's `metadata.generation` when the condition was last set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last time this condition was updated (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
    /// The last time the condition changed from one status to another (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// Machine-readable reason for the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable details of the last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
