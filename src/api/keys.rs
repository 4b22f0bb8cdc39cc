//! Every label, annotation and API version string the controller reads or writes, in one place.
//! Keys marked "shared" are also read or written by the Go system-upgrade-controller; changing
//! one breaks taking over from it.

/// API group of the Plan resource.
pub const GROUP: &str = "upgrade.cattle.io";
/// `apiVersion` of Plans.
pub const PLAN_API_VERSION: &str = "upgrade.cattle.io/v1";
/// `kind` of Plans.
pub const PLAN_KIND: &str = "Plan";
/// Name of the Plan CustomResourceDefinition.
pub const PLAN_CRD: &str = "plans.upgrade.cattle.io";
/// `apiVersion` of the AdmissionReviews the webhook answers.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";

/// Node label prefix (shared): `plan.upgrade.cattle.io/<plan>` holds the hash the node completed.
pub const PLAN_LABEL_PREFIX: &str = "plan.upgrade.cattle.io/";
/// Label (shared) every Job and pod of the controller carries, valued with the controller's
/// name; drains never evict such pods.
pub const LABEL_CONTROLLER: &str = "upgrade.cattle.io/controller";
/// Job and pod label (shared): the Plan's name.
pub const LABEL_PLAN: &str = "upgrade.cattle.io/plan";
/// Job and pod label (shared): the node's name.
pub const LABEL_NODE: &str = "upgrade.cattle.io/node";
/// Job and pod label (shared): the version the Job applies.
pub const LABEL_VERSION: &str = "upgrade.cattle.io/version";
/// Job and pod label (shared) of Plans marked exclusive: their Jobs never run side by side.
pub const LABEL_EXCLUSIVE: &str = "upgrade.cattle.io/exclusive";
/// Job and pod label of a Plan's hook (`spec.hooks`): `before` or `after`. Hook Jobs name no node.
pub const LABEL_HOOK: &str = "upgrade.cattle.io/hook";
/// Plan finalizer while its after hook is owed and `hooks.afterWhenDeleted` asks for it to run
/// when the Plan is deleted.
pub const FINALIZER_AFTER_HOOK: &str = "upgrade.cattle.io/after-hook";
/// The well-known node label holding the node's host name (the Go controller writes these in
/// `status.applying`).
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
/// The well-known node label of the node's operating system.
pub const LABEL_OS: &str = "kubernetes.io/os";
/// Label of the objects the controller creates for itself (the webhook CA Secret).
pub const LABEL_APP_NAME: &str = "app.kubernetes.io/name";

/// Plan annotation (shared) listing extra fields (dotted paths) whose values feed the hash.
pub const ANNOTATION_DIGEST: &str = "upgrade.cattle.io/digest";
/// Job annotation (shared): the TTL the Job was given.
pub const ANNOTATION_TTL: &str = "upgrade.cattle.io/ttl-seconds-after-finished";
/// Job annotation: digest of the pod template a Job was created with; a Plan edit that changes
/// the template replaces the Job.
pub const ANNOTATION_TEMPLATE: &str = "upgrade.cattle.io/template-hash";
/// Job annotation: digest of what a Job's upgrade runs (the Plan's `prepare`, `upgrade`,
/// `secrets` and `serviceAccountName`). Once the upgrade may have begun, only a change of it
/// replaces the Job; other edits (drain settings, tolerations) wait for the next Job.
pub const ANNOTATION_RUN: &str = "upgrade.cattle.io/run-hash";
/// Pod annotation by which the controller lets the upgrade start once the node is drained.
pub const ANNOTATION_DRAINED: &str = "upgrade.cattle.io/drained";
/// Pod annotation: when the drain for this pod began (its timeout counts from there; a Job's
/// next pod, after a reboot, is drained with a timeout of its own).
pub const ANNOTATION_DRAIN_STARTED: &str = "upgrade.cattle.io/drain-started";
/// Job annotation recording why the node's drain failed (the Job is then suspended).
pub const ANNOTATION_DRAIN_FAILED: &str = "upgrade.cattle.io/drain-failed";
/// Job annotation recording when this controller took over a Job the Go controller created.
pub const ANNOTATION_ADOPTED: &str = "upgrade.cattle.io/adopted";
/// On a Job: when the controller last nudged it, the Job controller having created no pod for
/// it (the Job controller looks at a Job again when it changes).
pub const ANNOTATION_NUDGED: &str = "upgrade.cattle.io/nudged";
/// On a Job of a Plan whose convergence check is `Reboot`: the node's boot ID when the Job was
/// created.
pub const ANNOTATION_BOOT_ID: &str = "upgrade.cattle.io/boot-id";
/// Node annotation prefix recording that a Plan cordoned the node
/// (`cordoned.upgrade.cattle.io/<plan>`, valued `<namespace>/<controller> <time>`).
pub const CORDON_CLAIM_PREFIX: &str = "cordoned.upgrade.cattle.io/";
/// Node annotation prefix recording a Plan's last upgrade of the node
/// (`upgraded.upgrade.cattle.io/<plan>`, a JSON object: version, job, completed, seconds),
/// written with the completion label, in place of a per-node event.
pub const UPGRADED_PREFIX: &str = "upgraded.upgrade.cattle.io/";
/// Node annotation: the node's last upgrades by any Plan, newest first (a JSON array of at most
/// [`NODE_HISTORY`] objects: plan, version, result `Succeeded` or `Failed`, at, seconds).
pub const ANNOTATION_HISTORY: &str = "upgrade.cattle.io/history";
/// How many upgrades a node's history keeps.
pub const NODE_HISTORY: usize = 10;
/// How many rollouts a Plan's `status.history` keeps.
pub const PLAN_HISTORY: usize = 5;
/// Node taint key prefix (`upcoming.upgrade.cattle.io/<plan>`, effect `PreferNoSchedule`): the
/// node waits for its turn in the Plan's rollout, so pods evicted elsewhere prefer other nodes
/// (`drain.preferUpgradedNodes`).
pub const TAINT_UPCOMING_PREFIX: &str = "upcoming.upgrade.cattle.io/";
/// The annotation the kubelet puts on the mirror of a static pod (drains skip them).
pub const ANNOTATION_MIRROR_POD: &str = "kubernetes.io/config.mirror";

/// Label and annotation domains of Plans that are not copied to Jobs and pods.
pub const CATTLE_DOMAIN: &str = "cattle.io/";
/// kubectl's annotations (last-applied configuration), not copied to Jobs and pods.
pub const KUBECTL_DOMAIN: &str = "kubectl.kubernetes.io/";
/// The taint the node controller puts on cordoned nodes, which upgrade pods tolerate.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Node label: a node labelled `upgrade.cattle.io/pause=true` starts no Plan's upgrade until the
/// label is removed (or set to anything else); an upgrade already running on it finishes.
pub const LABEL_PAUSE: &str = "upgrade.cattle.io/pause";

/// Plan annotation asking to retry failed nodes now: `all`, or node names separated by commas.
/// The controller removes it once it has acted on it.
pub const ANNOTATION_RETRY: &str = "upgrade.cattle.io/retry";

/// Plan annotation cancelling the rollout of the current version (any value): upgrades not begun
/// stop, begun ones finish, nothing new starts. The controller removes it once acted on.
pub const ANNOTATION_CANCEL: &str = "upgrade.cattle.io/cancel";

/// Plan annotation resuming a cancelled rollout (any value); removed once acted on.
pub const ANNOTATION_RESUME: &str = "upgrade.cattle.io/resume";

/// Plan annotation approving the rollout of the current version past its first wave
/// (`spec.canary`; any value); removed once acted on.
pub const ANNOTATION_APPROVE: &str = "upgrade.cattle.io/approve";
