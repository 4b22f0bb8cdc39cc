//! The upgrade Job for one node of a Plan, built purely from the Plan, the Node and the settings,
//! with the shape the Go controller gives it (names, labels, annotations, pod spec, env order).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, DownwardAPIVolumeFile, DownwardAPIVolumeSource, EnvVar,
    EnvVarSource, HostPathVolumeSource, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSpec,
    PodTemplateSpec, SecretVolumeSource, SecurityContext, Toleration, Volume, VolumeMount,
    WindowsSecurityContextOptions,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use sha2::{Digest, Sha256};

use crate::api::{
    ANNOTATION_BOOT_ID, ANNOTATION_RUN, ANNOTATION_TEMPLATE, ANNOTATION_TTL, CATTLE_DOMAIN,
    ContainerSpec, HOST_ROOT_MOUNT, KUBECTL_DOMAIN, LABEL_CONTROLLER, LABEL_EXCLUSIVE,
    LABEL_HOSTNAME, LABEL_NODE, LABEL_OS, LABEL_PLAN, LABEL_VERSION, PLAN_API_VERSION, PLAN_KIND,
    PLAN_LABEL_PREFIX, POD_INFO_MOUNT, Plan, TAINT_UNSCHEDULABLE,
};
use crate::controller::hash::hex;
use crate::syntax::{duration, image};
use crate::validation::versions;

/// Names of the init container that holds the upgrade until the node is cordoned or drained.
pub const GATE_NAMES: [&str; 2] = ["cordon", "drain"];
/// The init container waiting for the controller's drain (`drain`) or cordon (`cordon`): named
/// like the Go controller's kubectl containers, it runs after `prepare` and before `upgrade`.
/// It polls twice a second: the kubelet rewrites the file within about 0.3 s of the annotation,
/// so the poll is most of the wait. A `sleep` without fractions (POSIX asks only for whole
/// seconds) falls back to one second. The key is matched exactly (dots escaped): Plan
/// annotations are copied to the pod, and one like `upgrade-cattle-io/drained` must not open it.
const GATE_SCRIPT: &str = "f=/run/system-upgrade/pod/annotations
echo \"waiting for the controller to prepare node ${SYSTEM_UPGRADE_NODE_NAME} for the upgrade\"
until grep -q '^upgrade\\.cattle\\.io/drained=' \"$f\" 2>/dev/null; do sleep 0.5 2>/dev/null || sleep 1; done
echo 'node ready; the upgrade starts'";

/// Job settings from the controller's configuration (`SYSTEM_UPGRADE_JOB_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSettings {
    pub controller_name: String,
    pub active_deadline_seconds: i64,
    pub active_deadline_seconds_max: i64,
    pub backoff_limit: i32,
    pub image_pull_policy: String,
    pub privileged: bool,
    pub ttl_seconds_after_finished: i32,
    pub pod_replacement_policy: String,
    /// Image of the init container that waits for the controller's cordon or drain; the
    /// upgrade image when unset. It needs `sh`.
    pub gate_image: Option<String>,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            controller_name: "system-upgrade-controller".into(),
            active_deadline_seconds: 600,
            active_deadline_seconds_max: 0,
            backoff_limit: 2,
            image_pull_policy: "IfNotPresent".into(),
            privileged: true,
            ttl_seconds_after_finished: 900,
            pod_replacement_policy: "TerminatingOrFailed".into(),
            gate_image: None,
        }
    }
}

/// wrangler's `name.SafeConcatName`: the parts joined by `-`, shortened to 63 characters with a
/// digest suffix when longer.
pub fn safe_concat_name(parts: &[&str]) -> String {
    let full = parts.join("-");
    shorten(&full, &full)
}

/// Shortens `visible` the way `SafeConcatName` does, with the digest taken over `digested`.
fn shorten(visible: &str, digested: &str) -> String {
    if visible.len() < 64 {
        return visible.to_owned();
    }
    let digest = hex(&Sha256::digest(digested.as_bytes()));
    let bytes = visible.as_bytes();
    let c = bytes[56];
    if c.is_ascii_lowercase() || c.is_ascii_digit() {
        format!("{}-{}", &visible[..57], &digest[..5])
    } else {
        format!("{}-{}", &visible[..56], &digest[..6])
    }
}

/// The Job name for a node: `apply-<plan>-on-<node up to its first dot>-with-<hash>`, shortened
/// as the Go controller does. The digest suffix covers the full node name, so nodes that share a
/// first DNS label get different Jobs (for names without dots it is exactly the Go name).
pub fn job_name(plan: &str, node: &str, hash: &str) -> String {
    let short_node = node.split('.').next().unwrap_or(node);
    let visible = format!("apply-{plan}-on-{short_node}-with-{hash}");
    let digested = format!("apply-{plan}-on-{node}-with-{hash}");
    shorten(&visible, &digested)
}

/// The image to run: an image without tag or digest gets `:<version>`; others stay as written.
pub fn image_with_version(image_ref: &str, version: &str) -> String {
    match image::ImageRef::parse(image_ref) {
        Ok(parsed) if parsed.tag.is_none() && parsed.digest.is_none() && image::is_tag(version) => {
            format!("{image_ref}:{version}")
        }
        _ => image_ref.to_owned(),
    }
}

/// activeDeadlineSeconds: the Plan's value (0 = none, negative = default) or the default, then
/// clamped to the maximum when one is set (which also replaces "none").
pub fn active_deadline(plan_value: Option<i64>, settings: &JobSettings) -> Option<i64> {
    let wanted = match plan_value {
        Some(v) if v >= 0 => v,
        _ => settings.active_deadline_seconds,
    };
    let max = settings.active_deadline_seconds_max;
    match (wanted, max) {
        (0, 0) => None,
        (0, max) => Some(max),
        (v, 0) => Some(v),
        (v, max) => Some(v.min(max)),
    }
}

/// ttlSecondsAfterFinished: the setting, raised to postCompleteDelay (plus the health gate's
/// nodeReadyFor and the convergence bound) + 60s when shorter, so a Job stays while its node
/// waits to be labelled.
pub fn ttl_seconds(plan: &Plan, settings: &JobSettings) -> i32 {
    let ttl = settings.ttl_seconds_after_finished;
    let nanos = |d: Option<&str>| d.and_then(|d| duration::parse(d).ok()).unwrap_or(0).max(0);
    let ready_for = plan
        .spec
        .health_gates
        .as_ref()
        .and_then(|g| g.node_ready_for.as_deref());
    // A node that has yet to show its upgrade (spec.convergence) waits with its Job too.
    let converge = versions::convergence_check(&plan.spec).map_or(0, |_| {
        i64::try_from(versions::convergence_within(&plan.spec).as_nanos()).unwrap_or(i64::MAX)
    });
    let delay_nanos = nanos(plan.spec.post_complete_delay.as_deref())
        .saturating_add(nanos(ready_for))
        .saturating_add(converge);
    if delay_nanos <= 0 {
        return ttl;
    }
    let needed = delay_nanos / 1_000_000_000 + 60;
    if i64::from(ttl) < needed {
        i32::try_from(needed).unwrap_or(i32::MAX)
    } else {
        ttl
    }
}

/// Plan labels are copied to Jobs and pods unless they belong to cattle.io.
fn copied_labels(plan: &Plan) -> BTreeMap<String, String> {
    plan.metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| !k.contains(CATTLE_DOMAIN))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Plan annotations are copied unless they belong to cattle.io or kubectl (last-applied).
fn copied_annotations(plan: &Plan) -> BTreeMap<String, String> {
    plan.metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !k.contains(CATTLE_DOMAIN) && !k.contains(KUBECTL_DOMAIN))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The labels of a node's Job and of its pod.
pub fn job_labels(
    plan: &Plan,
    node_name: &str,
    settings: &JobSettings,
) -> BTreeMap<String, String> {
    let name = plan.metadata.name.clone().unwrap_or_default();
    let status = plan.status.clone().unwrap_or_default();
    let mut labels = copied_labels(plan);
    labels.insert(LABEL_CONTROLLER.into(), settings.controller_name.clone());
    labels.insert(
        LABEL_EXCLUSIVE.into(),
        plan.spec.exclusive.unwrap_or(false).to_string(),
    );
    labels.insert(LABEL_NODE.into(), node_name.into());
    labels.insert(LABEL_PLAN.into(), name.clone());
    labels.insert(
        LABEL_VERSION.into(),
        status.latest_version.unwrap_or_default(),
    );
    labels.insert(
        format!("{PLAN_LABEL_PREFIX}{name}"),
        status.latest_hash.unwrap_or_default(),
    );
    labels
}

/// What every container of a node's Job shares.
struct Rendering<'a> {
    plan: &'a Plan,
    settings: &'a JobSettings,
    plan_name: String,
    version: String,
    hash: String,
    /// A Windows node: containers run as host processes.
    windows: bool,
    /// Mounts of the Plan's Secrets, in every container but the gate.
    secret_mounts: Vec<VolumeMount>,
}

/// Builds the Job that applies the Plan's current version on `node`.
pub fn build(plan: &Plan, node: &Node, settings: &JobSettings) -> Job {
    let status = plan.status.clone().unwrap_or_default();
    let node_name = node.metadata.name.clone().unwrap_or_default();
    let node_labels = node.metadata.labels.clone().unwrap_or_default();
    let hostname = node_labels
        .get(LABEL_HOSTNAME)
        .cloned()
        .unwrap_or_else(|| node_name.clone());
    let (volumes, secret_mounts) = volumes(plan);
    let parts = Rendering {
        plan,
        settings,
        plan_name: plan.metadata.name.clone().unwrap_or_default(),
        version: status.latest_version.unwrap_or_default(),
        hash: status.latest_hash.unwrap_or_default(),
        windows: node_labels.get(LABEL_OS).map(String::as_str) == Some("windows"),
        secret_mounts,
    };
    let labels = job_labels(plan, &node_name, settings);
    let pod_annotations = copied_annotations(plan);
    let mut init_containers: Vec<Container> = plan
        .spec
        .prepare
        .iter()
        .map(|prepare| parts.prepare(prepare))
        .collect();
    init_containers.extend(parts.gate());
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: (!pod_annotations.is_empty()).then(|| pod_annotations.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            host_ipc: Some(true),
            host_pid: Some(true),
            host_network: Some(true),
            dns_policy: Some("ClusterFirstWithHostNet".into()),
            affinity: Some(affinity(plan, &parts.plan_name, hostname)),
            tolerations: Some(tolerations(plan)),
            volumes: Some(volumes),
            init_containers: (!init_containers.is_empty()).then_some(init_containers),
            containers: vec![parts.upgrade()],
            ..plan_pod(plan)
        }),
    };
    let mut job = job(&parts, &node_name, labels, pod_annotations, template);
    if versions::convergence_check(&plan.spec) == Some(versions::Check::Reboot) {
        // Its node's boot ID now, so a reboot after the upgrade shows (spec.convergence).
        let boot_id = versions::node_boot_id(node).to_owned();
        job.metadata
            .annotations
            .get_or_insert_default()
            .insert(ANNOTATION_BOOT_ID.into(), boot_id);
    }
    job
}

/// What every pod of the Plan (a node's upgrade, a hook) takes from it: run once, its service
/// account, priority class and image pull secrets.
fn plan_pod(plan: &Plan) -> PodSpec {
    let set = |value: &Option<String>| value.clone().filter(|s| !s.is_empty());
    PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: set(&plan.spec.service_account_name),
        priority_class_name: set(&plan.spec.priority_class_name),
        image_pull_secrets: plan.spec.image_pull_secrets.clone(),
        ..PodSpec::default()
    }
}

/// The Job around a pod template: its name, labels, TTL and template digest, owner and limits.
fn job(
    parts: &Rendering<'_>,
    node_name: &str,
    labels: BTreeMap<String, String>,
    mut annotations: BTreeMap<String, String>,
    template: PodTemplateSpec,
) -> Job {
    let (plan, settings) = (parts.plan, parts.settings);
    let ttl = ttl_seconds(plan, settings);
    annotations.insert(ANNOTATION_TTL.into(), ttl.to_string());
    // The drain options count as part of the template (they were the kubectl container's
    // arguments in the Go controller's Jobs): changing them re-runs the node.
    annotations.insert(
        ANNOTATION_TEMPLATE.into(),
        template_hash(&template, plan.spec.drain.as_ref()),
    );
    annotations.insert(ANNOTATION_RUN.into(), run_hash(plan));
    let name = job_name(&parts.plan_name, node_name, &parts.hash);
    owned_job(plan, settings, name, (labels, annotations), ttl, template)
}

/// A Job of the Plan (its controller owner), run once, with the settings' backoff limit and pod
/// replacement policy, the Plan's deadline and the TTL `ttl`.
fn owned_job(
    plan: &Plan,
    settings: &JobSettings,
    name: String,
    (labels, annotations): (BTreeMap<String, String>, BTreeMap<String, String>),
    ttl: i32,
    template: PodTemplateSpec,
) -> Job {
    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: plan.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: PLAN_API_VERSION.into(),
                kind: PLAN_KIND.into(),
                name: plan.metadata.name.clone().unwrap_or_default(),
                uid: plan.metadata.uid.clone().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: Some(false),
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            completions: Some(1),
            parallelism: Some(1),
            backoff_limit: Some(settings.backoff_limit),
            active_deadline_seconds: active_deadline(plan.spec.job_active_deadline_secs, settings),
            ttl_seconds_after_finished: Some(ttl),
            pod_replacement_policy: Some(settings.pod_replacement_policy.clone()),
            template,
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The pod's volumes (the host's root, the pod's own labels and annotations, each Secret, then
/// the upgrade's and prepare's host paths), and the mounts of the Secrets.
fn volumes(plan: &Plan) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "host-root".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/".into(),
                type_: Some("Directory".into()),
            }),
            ..Volume::default()
        },
        Volume {
            name: "pod-info".into(),
            downward_api: Some(DownwardAPIVolumeSource {
                default_mode: Some(0o644),
                items: Some(vec![
                    downward_file("labels", "metadata.labels"),
                    downward_file("annotations", "metadata.annotations"),
                ]),
            }),
            ..Volume::default()
        },
    ];
    let (secrets, secret_mounts) = secret_volumes(plan);
    volumes.extend(secrets);
    // Upgrade volumes, then prepare volumes not already present (the Go controller forgets the
    // latter, which makes the pod invalid).
    for spec in [&plan.spec.upgrade, &plan.spec.prepare]
        .into_iter()
        .flatten()
    {
        for v in spec.volumes.iter().flatten() {
            if !volumes.iter().any(|existing| existing.name == v.name) {
                volumes.push(Volume {
                    name: v.name.clone(),
                    host_path: Some(HostPathVolumeSource {
                        path: v.source.clone(),
                        type_: None,
                    }),
                    ..Volume::default()
                });
            }
        }
    }
    (volumes, secret_mounts)
}

/// The volumes of the Plan's Secrets and their mounts (read only, at each Secret's path).
fn secret_volumes(plan: &Plan) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = Vec::new();
    let mut secret_mounts = Vec::new();
    for secret in plan.spec.secrets.iter().flatten() {
        let volume_name = safe_concat_name(&["secret", &secret.name]);
        volumes.push(Volume {
            name: volume_name.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                default_mode: secret.default_mode,
                optional: Some(secret.ignore_updates.unwrap_or(false)),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        secret_mounts.push(VolumeMount {
            name: volume_name,
            mount_path: secret.mount_path(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    (volumes, secret_mounts)
}

impl Rendering<'_> {
    /// A container of the Plan (`prepare` or `upgrade`): its image at the version, the host's
    /// root at /host, the pod's metadata, the Secrets, its own volumes and the SYSTEM_UPGRADE_*
    /// variables around its own.
    fn container(&self, name: &str, spec: &ContainerSpec) -> Container {
        let mut mounts = vec![
            VolumeMount {
                name: "host-root".into(),
                mount_path: HOST_ROOT_MOUNT.into(),
                ..VolumeMount::default()
            },
            pod_info_mount(),
        ];
        mounts.extend(self.secret_mounts.iter().cloned());
        for v in spec.volumes.iter().flatten() {
            mounts.push(VolumeMount {
                name: v.name.clone(),
                mount_path: v.destination.clone(),
                ..VolumeMount::default()
            });
        }
        let mut env = vec![
            field_env("SYSTEM_UPGRADE_NODE_NAME", "spec.nodeName"),
            field_env("SYSTEM_UPGRADE_POD_NAME", "metadata.name"),
            field_env("SYSTEM_UPGRADE_POD_UID", "metadata.uid"),
        ];
        env.extend(spec.envs.iter().flatten().cloned());
        env.push(value_env("SYSTEM_UPGRADE_PLAN_NAME", &self.plan_name));
        env.push(value_env("SYSTEM_UPGRADE_PLAN_LATEST_HASH", &self.hash));
        env.push(value_env(
            "SYSTEM_UPGRADE_PLAN_LATEST_VERSION",
            &self.version,
        ));
        Container {
            name: name.into(),
            image: Some(image_with_version(&spec.image, &self.version)),
            image_pull_policy: Some(self.settings.image_pull_policy.clone()),
            command: spec.command.clone(),
            args: spec.args.clone(),
            env: Some(env),
            env_from: spec.env_from.clone(),
            volume_mounts: Some(mounts),
            ..Container::default()
        }
    }

    fn prepare(&self, prepare: &ContainerSpec) -> Container {
        let mut container = self.container("prepare", prepare);
        container.security_context = if self.windows {
            Some(windows_context())
        } else {
            prepare.security_context.clone()
        };
        container
    }

    /// Cordon and drain are done by the controller; this container holds the upgrade until
    /// then. `None` when the Plan neither cordons nor drains.
    fn gate(&self) -> Option<Container> {
        let spec = &self.plan.spec;
        let name = match (&spec.drain, spec.cordon.unwrap_or(false)) {
            (Some(_), _) => "drain",
            (None, true) => "cordon",
            (None, false) => return None,
        };
        let upgrade_image = spec
            .upgrade
            .as_ref()
            .map(|u| u.image.clone())
            .unwrap_or_default();
        Some(Container {
            name: name.into(),
            image: Some(gate_image(self.settings, &upgrade_image, &self.version)),
            image_pull_policy: Some(self.settings.image_pull_policy.clone()),
            command: Some(vec!["sh".into(), "-c".into(), GATE_SCRIPT.into()]),
            env: Some(vec![field_env("SYSTEM_UPGRADE_NODE_NAME", "spec.nodeName")]),
            volume_mounts: Some(vec![pod_info_mount()]),
            security_context: self.windows.then(windows_context),
            ..Container::default()
        })
    }

    /// The upgrade container: privileged with CAP_SYS_BOOT unless the Plan says otherwise.
    fn upgrade(&self) -> Container {
        let spec = self.plan.spec.upgrade.clone().unwrap_or_default();
        let mut upgrade = self.container("upgrade", &spec);
        upgrade.security_context = match (&spec.security_context, self.windows) {
            (Some(context), _) => Some(context.clone()),
            (None, true) => Some(windows_context()),
            (None, false) => Some(SecurityContext {
                privileged: Some(self.settings.privileged),
                capabilities: Some(Capabilities {
                    add: Some(vec!["CAP_SYS_BOOT".into()]),
                    drop: None,
                }),
                ..SecurityContext::default()
            }),
        };
        upgrade
    }
}

/// The pod's own labels and annotations, where the gate reads the controller's go-ahead.
fn pod_info_mount() -> VolumeMount {
    VolumeMount {
        name: "pod-info".into(),
        mount_path: POD_INFO_MOUNT.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn windows_context() -> SecurityContext {
    SecurityContext {
        windows_options: Some(WindowsSecurityContextOptions {
            host_process: Some(true),
            run_as_user_name: Some("NT AUTHORITY\\SYSTEM".into()),
            ..WindowsSecurityContextOptions::default()
        }),
        ..SecurityContext::default()
    }
}

/// Cordoned nodes are tolerated (the upgrade runs on a cordoned node), then the Plan's own.
fn tolerations(plan: &Plan) -> Vec<Toleration> {
    let mut tolerations = vec![Toleration {
        key: Some(TAINT_UNSCHEDULABLE.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Toleration::default()
    }];
    tolerations.extend(plan.spec.tolerations.iter().flatten().cloned());
    tolerations
}

/// On the node by its host name, and never beside another pod of this Plan (or, for an
/// exclusive Plan, of any exclusive Plan).
fn affinity(plan: &Plan, plan_name: &str, hostname: String) -> Affinity {
    let (key, value) = if plan.spec.exclusive.unwrap_or(false) {
        (LABEL_EXCLUSIVE, "true".to_owned())
    } else {
        (LABEL_PLAN, plan_name.to_owned())
    };
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(vec![NodeSelectorRequirement {
                        key: LABEL_HOSTNAME.into(),
                        operator: "In".into(),
                        values: Some(vec![hostname]),
                    }]),
                    ..NodeSelectorTerm::default()
                }],
            }),
            ..NodeAffinity::default()
        }),
        pod_anti_affinity: Some(PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
                label_selector: Some(LabelSelector {
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: key.into(),
                        operator: "In".into(),
                        values: Some(vec![value]),
                    }]),
                    ..LabelSelector::default()
                }),
                topology_key: LABEL_HOSTNAME.into(),
                ..PodAffinityTerm::default()
            }]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    }
}

/// The gate's image: the configured one, else the upgrade image (with its version tag).
fn gate_image(settings: &JobSettings, upgrade_image: &str, version: &str) -> String {
    match settings.gate_image.as_deref().filter(|i| !i.is_empty()) {
        Some(image) => image.to_owned(),
        None => image_with_version(upgrade_image, version),
    }
}

/// A short digest of what the upgrade runs, from the Plan itself (not from how this controller
/// renders it, so a controller upgrade never changes it): `prepare`, `upgrade`, `secrets` and
/// `serviceAccountName`. The version and the rest of the hash are in the Job's name.
pub fn run_hash(plan: &Plan) -> String {
    let spec = &plan.spec;
    let json = serde_json::to_vec(&(
        &spec.prepare,
        &spec.upgrade,
        &spec.secrets,
        &spec.service_account_name,
    ))
    .unwrap_or_default();
    hex(&Sha256::digest(&json))[..16].to_owned()
}

/// A short digest of a pod template, to notice Plan edits that change it.
pub fn template_hash(template: &PodTemplateSpec, drain: Option<&crate::api::DrainSpec>) -> String {
    let mut json = serde_json::to_vec(template).unwrap_or_default();
    if let Some(drain) = drain {
        json.extend(serde_json::to_vec(drain).unwrap_or_default());
    }
    hex(&Sha256::digest(&json))[..16].to_owned()
}

fn downward_file(path: &str, field: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.into(),
        field_ref: Some(ObjectFieldSelector {
            field_path: field.into(),
            api_version: None,
        }),
        ..DownwardAPIVolumeFile::default()
    }
}

fn field_env(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

mod hook;
pub use hook::{Hook, hook_job, hook_job_name, hook_of};

#[cfg(test)]
mod tests;
