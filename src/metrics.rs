//! Prometheus metrics, served on `/metrics`. Labels are bounded: webhook names, admission
//! operations and decisions; object names only in the per-Plan gauges (a series per Plan and
//! state, removed with the Plan). Process metrics (`process_*`) are read from `/proc` when the
//! metrics are encoded.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdmissionLabels {
    pub webhook: &'static str,
    pub operation: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    pub hook: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReceiverLabels {
    pub receiver: String,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabels {
    pub namespace: String,
    pub plan: String,
    pub state: &'static str,
}

/// What `suc_notifications_total`'s `result` label says.
pub const NOTIFICATION_RESULTS: [&str; 3] = ["sent", "failed", "dropped"];

/// What a failed reconcile's `error` label says (`ReconcileError::kind`).
pub const RECONCILE_ERRORS: [&str; 9] = [
    "conflict",
    "write_status",
    "job",
    "label_node",
    "clear_annotation",
    "finalizer",
    "cordon",
    "blocked",
    "not_leading",
];

/// The states `suc_plan_nodes` counts, as `decide::Tally` names them.
pub const PLAN_NODE_STATES: [&str; 12] = [
    "selected",
    "done",
    "applying",
    "failed",
    "waiting",
    "held",
    "skipped",
    "gated",
    "cordoned",
    "refused",
    "version_held",
    "canary_held",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
}

/// Every metric of the process, registered once at start-up and shared.
pub struct Metrics {
    registry: Registry,
    pub admission_requests: Family<AdmissionLabels, Counter>,
    pub admission_duration: Family<WebhookLabels, Histogram>,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Histogram,
    pub jobs: Family<ActionLabels, Counter>,
    pub nodes_upgraded: Counter,
    pub evictions: Family<ResultLabels, Counter>,
    pub drain_duration: Family<ResultLabels, Histogram>,
    pub job_duration: Family<ResultLabels, Histogram>,
    pub channel_resolutions: Family<ResultLabels, Counter>,
    pub hook_runs: Family<HookLabels, Counter>,
    pub plan_nodes: Family<PlanLabels, Gauge>,
    pub notifications: Family<ReceiverLabels, Counter>,
    pub notification_config_problems: Gauge,
    pub leader: Gauge,
    process: Process,
}

/// The process metrics, refreshed from `/proc/self` when the metrics are encoded.
#[derive(Default)]
struct Process {
    /// A counter, as the name `process_cpu_seconds_total` promises: raised by what /proc adds.
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    cpu_seen: std::sync::Mutex<f64>,
    resident_memory: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    start_time: Gauge<f64, std::sync::atomic::AtomicU64>,
    threads: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut root = Registry::default();
        let process = Process::default();
        process.start_time.set(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        // The usual names of the Prometheus client libraries' process collector.
        root.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            process.cpu_seconds.clone(),
        );
        root.register(
            "process_resident_memory_bytes",
            "Resident memory size, in bytes",
            process.resident_memory.clone(),
        );
        root.register(
            "process_virtual_memory_bytes",
            "Virtual memory size, in bytes",
            process.virtual_memory.clone(),
        );
        root.register(
            "process_open_fds",
            "Open file descriptors",
            process.open_fds.clone(),
        );
        root.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            process.start_time.clone(),
        );
        root.register("process_threads", "OS threads", process.threads.clone());
        let registry = root.sub_registry_with_prefix("suc");
        let admission_requests = Family::<AdmissionLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission reviews answered, by webhook, operation and result (allowed, patched, denied, bad_request)",
            admission_requests.clone(),
        );
        let admission_duration = Family::<WebhookLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission review, by webhook",
            admission_duration.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("SUC_GIT_COMMIT"),
            })
            .set(1);
        registry.register(
            "build_info",
            "Version and git commit of the running controller (always 1)",
            build_info,
        );
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Plan reconciles, by result (ok, error)",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed Plan reconciles, by what failed (conflict, write_status, job, label_node, cordon, blocked)",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "reconcile_duration_seconds",
            "Time to reconcile a Plan",
            reconcile_duration.clone(),
        );
        let jobs = Family::<ActionLabels, Counter>::default();
        registry.register(
            "jobs",
            "Upgrade Jobs created or deleted, by action",
            jobs.clone(),
        );
        let nodes_upgraded = Counter::default();
        registry.register(
            "nodes_upgraded",
            "Nodes labelled as done with a Plan",
            nodes_upgraded.clone(),
        );
        let evictions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "evictions",
            "Pods evicted or deleted by drains, by result (evicted, deleted, blocked by a PodDisruptionBudget (once per pod and drain), error)",
            evictions.clone(),
        );
        let drain_duration = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.5, 2.0, 14))
        });
        registry.register(
            "drain_duration_seconds",
            "Time a node's drain took, by result (drained, failed, skipped)",
            drain_duration.clone(),
        );
        let job_duration = Family::<ResultLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 14))
        });
        registry.register(
            "job_duration_seconds",
            "Time from an upgrade Job's start to its end, by result (succeeded, failed)",
            job_duration.clone(),
        );
        let channel_resolutions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "channel_resolutions",
            "Channel polls, by result (resolved, failed)",
            channel_resolutions.clone(),
        );
        let hook_runs = Family::<HookLabels, Counter>::default();
        registry.register(
            "hook_runs",
            "Runs of Plans' hooks (spec.hooks) that ended, by hook (before, after) and result \
             (succeeded, failed)",
            hook_runs.clone(),
        );
        for hook in ["before", "after"] {
            for result in ["succeeded", "failed"] {
                let _ = hook_runs.get_or_create(&HookLabels { hook, result });
            }
        }
        let plan_nodes = Family::<PlanLabels, Gauge>::default();
        registry.register(
            "plan_nodes",
            "A Plan's nodes by state: selected, done (with the latest hash), applying, failed, \
             waiting, held (pause label), skipped (drain timeout) and gated (waiting while a \
             health gate or spec.paused holds the rollout, or waiting to be healthy), \
             cordoned (kept cordoned by the Plan), refused (Job or pod refused), \
             version_held (waiting, held by a version rule of a K3s or RKE2 Plan) and \
             canary_held (waiting for the approval or soak after the first wave, spec.canary)",
            plan_nodes.clone(),
        );
        let notifications = Family::<ReceiverLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notifications (and Alertmanager silences) by receiver and result: sent, failed \
             (after its retries), dropped (the receiver's queue was full)",
            notifications.clone(),
        );
        let notification_config_problems = Gauge::default();
        registry.register(
            "notification_config_problems",
            "Problems found in the notifications' ConfigMap, which is then not used (0: used, \
             or absent)",
            notification_config_problems.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controller (leads, or runs without leader election), else 0",
            leader.clone(),
        );
        // Every known label value starts at zero, so rates and alerts see a series from the start.
        for webhook in ["mutate", "validate"] {
            let _ = admission_duration.get_or_create(&WebhookLabels { webhook });
            for operation in ["CREATE", "UPDATE"] {
                for result in ["allowed", "patched", "denied", "bad_request"] {
                    let _ = admission_requests.get_or_create(&AdmissionLabels {
                        webhook,
                        operation,
                        result,
                    });
                }
            }
        }
        let known: [(&Family<ResultLabels, Counter>, &[&'static str]); 3] = [
            (&reconciles, &["ok", "error"]),
            (&evictions, &["evicted", "deleted", "blocked", "error"]),
            (&channel_resolutions, &["resolved", "failed"]),
        ];
        for (family, results) in known {
            for &result in results {
                let _ = family.get_or_create(&ResultLabels { result });
            }
        }
        for error in RECONCILE_ERRORS {
            let _ = reconcile_errors.get_or_create(&ErrorLabels { error });
        }
        for action in ["created", "deleted"] {
            let _ = jobs.get_or_create(&ActionLabels { action });
        }
        for result in ["drained", "failed", "skipped"] {
            let _ = drain_duration.get_or_create(&ResultLabels { result });
        }
        for result in ["succeeded", "failed"] {
            let _ = job_duration.get_or_create(&ResultLabels { result });
        }
        Arc::new(Self {
            registry: root,
            admission_requests,
            admission_duration,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            jobs,
            nodes_upgraded,
            evictions,
            drain_duration,
            job_duration,
            channel_resolutions,
            hook_runs,
            plan_nodes,
            notifications,
            notification_config_problems,
            leader,
            process,
        })
    }

    /// This replica starts or stops leading. The per-Plan gauges go either way: only the leader
    /// exports them, and a new term fills them afresh (a Plan deleted while another replica led
    /// never comes back).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
        self.plan_nodes.clear();
    }

    /// A reconcile finished: `failed` names what failed, `None` when it succeeded.
    pub fn observe_reconcile(&self, failed: Option<&'static str>, took: std::time::Duration) {
        let result = if failed.is_some() { "error" } else { "ok" };
        if let Some(error) = failed {
            self.reconcile_errors
                .get_or_create(&ErrorLabels { error })
                .inc();
        }
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
        self.reconcile_duration.observe(took.as_secs_f64());
    }

    pub fn job_changed(&self, action: &'static str) {
        self.jobs.get_or_create(&ActionLabels { action }).inc();
    }

    pub fn node_upgraded(&self) {
        self.nodes_upgraded.inc();
    }

    pub fn eviction(&self, result: &'static str) {
        self.evictions.get_or_create(&ResultLabels { result }).inc();
    }

    /// A drain ended: `result` is drained, failed or skipped.
    pub fn drain_finished(&self, result: &'static str, took: std::time::Duration) {
        self.drain_duration
            .get_or_create(&ResultLabels { result })
            .observe(took.as_secs_f64());
    }

    /// An upgrade Job ended: `result` is succeeded or failed.
    pub fn job_finished(&self, result: &'static str, took: std::time::Duration) {
        self.job_duration
            .get_or_create(&ResultLabels { result })
            .observe(took.as_secs_f64());
    }

    /// A hook's Job ended.
    pub fn hook_finished(&self, hook: &'static str, succeeded: bool) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.hook_runs
            .get_or_create(&HookLabels { hook, result })
            .inc();
    }

    /// A channel was polled: `result` is resolved or failed.
    pub fn channel_polled(&self, result: &'static str) {
        self.channel_resolutions
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// A Plan's nodes by state (`PLAN_NODE_STATES`, in order).
    pub fn plan_nodes(&self, namespace: &str, plan: &str, counts: [usize; PLAN_NODE_STATES.len()]) {
        for (state, count) in PLAN_NODE_STATES.into_iter().zip(counts) {
            let labels = PlanLabels {
                namespace: namespace.to_owned(),
                plan: plan.to_owned(),
                state,
            };
            self.plan_nodes
                .get_or_create(&labels)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// A receiver is configured: its results start at zero.
    pub fn notifications_known(&self, receiver: &str) {
        for result in NOTIFICATION_RESULTS {
            let _ = self.notifications.get_or_create(&ReceiverLabels {
                receiver: receiver.to_owned(),
                result,
            });
        }
    }

    /// A delivery to a receiver ended (`NOTIFICATION_RESULTS`).
    pub fn notification(&self, receiver: &str, result: &'static str) {
        self.notifications
            .get_or_create(&ReceiverLabels {
                receiver: receiver.to_owned(),
                result,
            })
            .inc();
    }

    pub fn notification_config_problems(&self, problems: usize) {
        self.notification_config_problems
            .set(i64::try_from(problems).unwrap_or(i64::MAX));
    }

    /// A deleted Plan's gauges go.
    pub fn forget_plan(&self, namespace: &str, plan: &str) {
        for state in PLAN_NODE_STATES {
            self.plan_nodes.remove(&PlanLabels {
                namespace: namespace.to_owned(),
                plan: plan.to_owned(),
                state,
            });
        }
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        self.process.refresh();
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Process {
    /// Reads `/proc/self` (Linux); elsewhere the gauges stay as they are.
    fn refresh(&self) {
        // Fields after the command name (which may hold spaces) of /proc/self/stat: utime is
        // the 12th, stime the 13th, num_threads the 18th, vsize the 21st (from field 3 on).
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
            && let Some((_, rest)) = stat.rsplit_once(')')
        {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            // Linux reports CPU time in ticks of 1/100 s (USER_HZ) on every platform it runs on.
            if let (Some(user), Some(system)) = (number(11), number(12)) {
                let now = (user + system) as f64 / 100.0;
                let mut seen = crate::sync::lock(&self.cpu_seen);
                if now > *seen {
                    self.cpu_seconds.inc_by(now - *seen);
                    *seen = now;
                }
            }
            if let Some(threads) = number(17) {
                self.threads.set(i64::try_from(threads).unwrap_or(i64::MAX));
            }
            if let Some(vsize) = number(20) {
                self.virtual_memory
                    .set(i64::try_from(vsize).unwrap_or(i64::MAX));
            }
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status")
            && let Some(kib) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        {
            self.resident_memory.set(kib.saturating_mul(1024));
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds
                .set(i64::try_from(entries.count()).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_histograms_and_build_info() {
        let metrics = Metrics::new();
        let labels = AdmissionLabels {
            webhook: "validate",
            operation: "CREATE",
            result: "denied",
        };
        metrics.admission_requests.get_or_create(&labels).inc();
        metrics
            .admission_duration
            .get_or_create(&WebhookLabels {
                webhook: "validate",
            })
            .observe(0.002);
        let text = metrics.encode();
        assert!(text.contains("suc_admission_requests_total{webhook=\"validate\",operation=\"CREATE\",result=\"denied\"} 1"), "{text}");
        assert!(
            text.contains("suc_admission_duration_seconds_count{webhook=\"validate\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "suc_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                env!("SUC_GIT_COMMIT")
            )),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn process_and_plan_metrics() {
        let metrics = Metrics::new();
        metrics.plan_nodes("ns", "p", [5, 2, 1, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
        let text = metrics.encode();
        assert!(
            text.contains("suc_plan_nodes{namespace=\"ns\",plan=\"p\",state=\"done\"} 2"),
            "{text}"
        );
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(&format!("\n{name} ")), "{name}: {text}");
        }
        let rss: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(rss > 1e6, "{rss}");
        metrics.forget_plan("ns", "p");
        assert!(!metrics.encode().contains("plan=\"p\""));
        // Only the leader exports per-Plan state: losing the Lease drops it all, and a new
        // term starts with none (a Plan deleted meanwhile is not exported again).
        metrics.set_leader(true);
        metrics.plan_nodes("ns", "q", [1; PLAN_NODE_STATES.len()]);
        metrics.set_leader(false);
        assert!(!metrics.encode().contains("plan=\"q\""));
        metrics.plan_nodes("ns", "q", [1; PLAN_NODE_STATES.len()]);
        metrics.set_leader(true);
        assert!(!metrics.encode().contains("plan=\"q\""));
    }
}
