//! The Job of a Plan's hook (`spec.hooks`): one container, bound to no node and not
//! privileged, with the Plan's image rules, image pull secrets, service account, priority
//! class and Secrets; labelled with the Plan, its version and hash like a node's Job, and with
//! the hook instead of a node.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    JobSettings, copied_annotations, copied_labels, image_with_version, owned_job, plan_pod,
    secret_volumes, shorten, value_env,
};
use crate::api::{
    ANNOTATION_TTL, ContainerSpec, LABEL_CONTROLLER, LABEL_HOOK, LABEL_PLAN, LABEL_VERSION,
    PLAN_LABEL_PREFIX, Plan,
};

/// Which hook of a Plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    Before,
    After,
}

impl Hook {
    /// The hook's name in status, labels and the retry annotation (`hook/<name>`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Hook::Before => "before",
            Hook::After => "after",
        }
    }

    /// The hook a label value names.
    pub fn parse(text: &str) -> Option<Hook> {
        [Hook::Before, Hook::After]
            .into_iter()
            .find(|h| h.as_str() == text)
    }

    /// The hook's container in the Plan, if it has one.
    pub fn spec(self, plan: &Plan) -> Option<&ContainerSpec> {
        let hooks = plan.spec.hooks.as_ref()?;
        match self {
            Hook::Before => hooks.before.as_ref(),
            Hook::After => hooks.after.as_ref(),
        }
    }
}

/// `hook-<plan>-<before|after>-with-<hash>`, shortened like a node's Job name.
pub fn hook_job_name(plan: &str, hook: Hook, hash: &str) -> String {
    let name = format!("hook-{plan}-{}-with-{hash}", hook.as_str());
    shorten(&name, &name)
}

/// The Job that runs `hook` of the Plan for its current version and hash, or `None` when the
/// Plan has no such hook.
pub fn hook_job(plan: &Plan, hook: Hook, settings: &JobSettings) -> Option<Job> {
    let spec = hook.spec(plan)?;
    let status = plan.status.clone().unwrap_or_default();
    let plan_name = plan.metadata.name.clone().unwrap_or_default();
    let version = status.latest_version.unwrap_or_default();
    let hash = status.latest_hash.unwrap_or_default();
    let (volumes, mounts) = secret_volumes(plan);
    let mut env = spec.envs.clone().unwrap_or_default();
    env.push(value_env("SYSTEM_UPGRADE_PLAN_NAME", &plan_name));
    env.push(value_env("SYSTEM_UPGRADE_PLAN_LATEST_HASH", &hash));
    env.push(value_env("SYSTEM_UPGRADE_PLAN_LATEST_VERSION", &version));
    env.push(value_env("SYSTEM_UPGRADE_HOOK", hook.as_str()));
    let container = Container {
        name: hook.as_str().into(),
        image: Some(image_with_version(&spec.image, &version)),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: Some(env),
        env_from: spec.env_from.clone(),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        // As written: a hook is privileged only when the Plan says so.
        security_context: spec.security_context.clone(),
        ..Container::default()
    };
    // The Plan's own labels and annotations, as on node Jobs; the pod carries no Plan label,
    // since node Jobs keep off nodes with a pod of their Plan.
    let mut pod_labels = copied_labels(plan);
    pod_labels.insert(
        LABEL_CONTROLLER.to_owned(),
        settings.controller_name.clone(),
    );
    pod_labels.insert(LABEL_HOOK.to_owned(), hook.as_str().to_owned());
    let annotations = copied_annotations(plan);
    let mut labels = pod_labels.clone();
    labels.insert(LABEL_PLAN.into(), plan_name.clone());
    labels.insert(LABEL_VERSION.into(), version);
    labels.insert(format!("{PLAN_LABEL_PREFIX}{plan_name}"), hash.clone());
    let ttl = settings.ttl_seconds_after_finished;
    let template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: (!annotations.is_empty()).then(|| annotations.clone()),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            volumes: (!volumes.is_empty()).then_some(volumes),
            containers: vec![container],
            ..plan_pod(plan)
        }),
    };
    let mut annotations = annotations;
    annotations.insert(ANNOTATION_TTL.to_owned(), ttl.to_string());
    let name = hook_job_name(&plan_name, hook, &hash);
    Some(owned_job(
        plan,
        settings,
        name,
        (labels, annotations),
        ttl,
        template,
    ))
}

/// The hook a Job of a Plan runs, if it is a hook's.
pub fn hook_of(job: &Job) -> Option<Hook> {
    job.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_HOOK))
        .and_then(|h| Hook::parse(h))
}
