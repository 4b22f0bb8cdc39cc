//! Prometheus metrics, served on `/metrics`. Labels are bounded: webhook names, admission
//! operations and decisions, never object names.

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
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: &'static str,
}

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
    pub drain_duration: Histogram,
    pub leader: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("suc");
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
            "Pods evicted or deleted by drains, by result (evicted, deleted, blocked by a PodDisruptionBudget, error)",
            evictions.clone(),
        );
        let drain_duration = Histogram::new(exponential_buckets(0.5, 2.0, 14));
        registry.register(
            "drain_duration_seconds",
            "Time to drain a node",
            drain_duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 while this replica runs the controller (leads, or runs without leader election), else 0",
            leader.clone(),
        );
        Arc::new(Self {
            registry,
            admission_requests,
            admission_duration,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            jobs,
            nodes_upgraded,
            evictions,
            drain_duration,
            leader,
        })
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
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

    pub fn drain_finished(&self, took: std::time::Duration) {
        self.drain_duration.observe(took.as_secs_f64());
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
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
}
