//! The rules for what the upgrade Jobs' pods are made of: containers, security contexts, mounts,
//! volumes, environment, tolerations: what the API server would refuse in a Job's pod, so a Plan
//! never waits on a Job that cannot be created.

use super::*;
use crate::api::Hooks;

/// An optional reference to another object by name must be a DNS subdomain when it is set.
pub(super) fn check_object_name(field: &str, name: Option<&str>, kind: &str, report: &mut Report) {
    if let Some(name) = name.filter(|n| !n.is_empty())
        && let Err(reason) = k8s::dns_subdomain(name)
    {
        report.problem(
            field,
            format!("{name:?} is not a valid {kind} name: it {reason}"),
        );
    }
}

/// `spec.hooks`: each hook a container as `prepare` is, without host paths (a hook runs on no
/// particular node); `afterWhenPausedFor` a duration, for an after hook.
pub(super) fn check_hooks(hooks: &Hooks, report: &mut Report) {
    for (name, hook) in [("before", &hooks.before), ("after", &hooks.after)] {
        let Some(hook) = hook else { continue };
        let path = format!("spec.hooks.{name}");
        check_container(&path, hook, report);
        if hook.volumes.as_ref().is_some_and(|v| !v.is_empty()) {
            report.problem(
                format!("{path}.volumes"),
                "a hook runs on no particular node, so host paths are not mounted into it; \
                 remove volumes (the Plan's secrets are mounted, and envFrom reads ConfigMaps \
                 and Secrets)",
            );
        }
    }
    if hooks.before.is_none() && hooks.after.is_none() {
        report.warn("spec.hooks names neither before nor after, so no hook runs; remove it");
    }
    for (field, set) in [
        ("spec.hooks.afterWhenDeleted", hooks.after_when_deleted),
        ("spec.hooks.afterWhenCancelled", hooks.after_when_cancelled),
    ] {
        if set == Some(true) && hooks.after.is_none() {
            report.problem(
                field,
                "there is no after hook to run; set spec.hooks.after or remove this field",
            );
        }
    }
    if let Some(wait) = &hooks.after_when_paused_for {
        let field = "spec.hooks.afterWhenPausedFor";
        match duration::parse(wait) {
            Ok(nanos) if nanos < 0 => report.problem(
                field,
                format!("{wait:?} is negative; use 0s (as soon as paused) or e.g. 1h"),
            ),
            Ok(_) if hooks.after.is_none() => report.problem(
                field,
                "there is no after hook to run; set spec.hooks.after or remove this field",
            ),
            Ok(_) => {}
            Err(e) => report.problem(
                field,
                format!("{wait:?} is not a duration ({e}); use e.g. 30m or 1h"),
            ),
        }
    }
}

pub(super) fn check_container(path: &str, container: &ContainerSpec, report: &mut Report) {
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
pub(super) fn check_security_context(field: &str, context: &SecurityContext, report: &mut Report) {
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
pub(super) fn check_mount_paths(spec: &PlanSpec, report: &mut Report) {
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
pub(super) fn check_volume_names(spec: &PlanSpec, report: &mut Report) {
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

pub(super) fn check_env(field: &str, env: &EnvVar, report: &mut Report) {
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

pub(super) fn check_toleration(field: &str, toleration: &Toleration, report: &mut Report) {
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
