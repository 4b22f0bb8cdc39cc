//! Lease-based leader election. Every replica serves the webhook; the controller runs only in the
//! replica that holds the Lease named after the controller (`--name`) in its namespace. That is
//! the Lease the Go controller takes, so during a swap the two never lead at the same time.
//!
//! A leader that cannot renew stops its controller before the Lease can expire and campaigns
//! again, still serving the webhook (the Go controller exits instead).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseParams};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The election's timings, with the Go controller's defaults (45 s, 30 s, 2 s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// How long a Lease stays valid after its last renewal.
    pub lease_duration: Duration,
    /// The leader renews once this long after its last renewal, and stops leading if it fails.
    pub renew_deadline: Duration,
    /// The pause before trying again after a failed Lease request.
    pub retry_period: Duration,
}

impl Timings {
    /// The Lease duration and how long before expiry the holder renews, in whole seconds (the
    /// Lease's unit), or what is wrong with the settings.
    pub fn lease_seconds(&self) -> Result<(u64, u64), String> {
        let duration = self.lease_duration.as_secs_f64().ceil() as u64;
        let renew = self.renew_deadline.as_secs_f64().ceil() as u64;
        if renew >= duration {
            return Err(format!(
                "the renew deadline ({renew}s, CATTLE_ELECTION_RENEW_DEADLINE) must be shorter than \
                 the lease duration ({duration}s, CATTLE_ELECTION_LEASE_DURATION), or the Lease \
                 expires before the leader renews it"
            ));
        }
        if self.retry_period >= self.renew_deadline {
            return Err(format!(
                "the retry period ({:?}, CATTLE_ELECTION_RETRY_PERIOD) must be shorter than the \
                 renew deadline ({renew}s, CATTLE_ELECTION_RENEW_DEADLINE)",
                self.retry_period
            ));
        }
        Ok((duration, duration - renew))
    }

    /// The timeout of each Lease request: half the time between the renewal and the expiry, so a
    /// renewal that hangs fails, and the controller stops, while the Lease is still ours.
    pub fn request_timeout(&self) -> Result<Duration, String> {
        let (_, grace) = self.lease_seconds()?;
        Ok(Duration::from_millis(grace * 500).max(Duration::from_secs(1)))
    }
}

/// Who this replica is in the Lease: the host name (the pod's name in a cluster) and the process
/// id, so two processes on one machine are never mistaken for each other.
pub fn identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{host}_{}", std::process::id())
}

/// Where the Lease lives and who competes for it.
pub struct Election {
    /// A client whose requests time out within [`Timings::request_timeout`].
    pub client: kube::Client,
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub timings: Timings,
}

/// What a leader checks before a write that must not come from a replica that lost the Lease
/// without knowing yet (one paused, say by SIGSTOP, past the Lease's expiry, whose tasks wake
/// before its renewal notices). [`Fence::holds`] reads the Lease: it names this replica, and
/// until when that proves anything (its renewal plus its duration, less a margin, on this
/// process's monotonic clock). [`Fence::valid`] is asked right before each write: a process
/// stopped between the read and the write finds, when it wakes, that the proof has run out,
/// and reads the Lease again instead of writing (found by the soak: a replica stopped between
/// its check and its cordon cordoned a node 10 ms after it woke, the Lease long another's).
#[derive(Clone)]
pub struct Fence {
    client: kube::Client,
    namespace: String,
    name: String,
    identity: String,
    valid_until: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

/// How much of the Lease's remaining time a write does not count on: request latency and the
/// clocks of the replicas (another takes the Lease when its own clock says it expired).
const FENCE_MARGIN: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Fence({}/{} held by {})",
            self.namespace, self.name, self.identity
        )
    }
}

impl Fence {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Fence {
        Fence {
            client,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            valid_until: Arc::default(),
        }
    }

    /// Whether this replica holds the Lease now, with time left before it could expire; false
    /// when the Lease cannot be read.
    pub async fn holds(&self) -> bool {
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(self.client.clone(), &self.namespace);
        let spec = match leases.get(&self.name).await {
            Ok(lease) => lease.spec.unwrap_or_default(),
            Err(_) => return false,
        };
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let left = spec
            .renew_time
            .zip(spec.lease_duration_seconds)
            .and_then(|(renewed, seconds)| {
                let expires = renewed
                    .0
                    .checked_add(jiff::SignedDuration::from_secs(seconds.into()))
                    .ok()?;
                let left = jiff::Timestamp::now().duration_until(expires);
                Duration::try_from(left).ok()?.checked_sub(FENCE_MARGIN)
            })
            .filter(|_| ours);
        let until = left.map(|left| std::time::Instant::now() + left);
        *crate::sync::lock(&self.valid_until) = until;
        until.is_some()
    }

    /// Whether the last [`Fence::holds`] still proves this replica holds the Lease: asked right
    /// before a write, with no wait between.
    pub fn valid(&self) -> bool {
        crate::sync::lock(&self.valid_until).is_some_and(|until| std::time::Instant::now() < until)
    }
}

/// How long the controller may take to stop after the Lease is lost before the process exits.
pub const STOP_BOUND: Duration = Duration::from_secs(10);

impl Election {
    /// The check of this replica's hold on the Lease, for writes that need it.
    pub fn fence(&self) -> Fence {
        Fence::new(
            self.client.clone(),
            &self.namespace,
            &self.name,
            &self.identity,
        )
    }

    /// Runs `controller` for as long as this replica leads, campaigning again after losing the
    /// Lease, until `stop` is cancelled or the controller fails. On the way out the Lease is
    /// released, so another replica takes over at once instead of after the Lease expires.
    pub async fn lead<F, Fut>(
        &self,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
        mut controller: F,
    ) -> crate::error::Result<()>
    where
        F: FnMut(CancellationToken) -> Fut,
        Fut: Future<Output = crate::error::Result<()>> + Send + 'static,
    {
        let (duration, grace) = self
            .timings
            .lease_seconds()
            .map_err(crate::error::Error::LeaderElection)?;
        let params = LeaseParams::new(self.identity.clone(), duration, grace);
        loop {
            let Some(manager) = self.campaign(&params, &stop).await else {
                return Ok(());
            };
            tracing::info!(lease = %self.name, identity = %self.identity, "leading; starting the controller");
            metrics.set_leader(true);
            let term = stop.child_token();
            let mut running = tokio::spawn(controller(term.clone()));
            let finished = loop {
                tokio::select! {
                    finished = &mut running => break Some(finished),
                    still = manager.changed() => match still {
                        Ok(true) => continue,
                        Ok(false) => {
                            tracing::warn!(lease = %self.name, "another replica holds the Lease; stopping the controller");
                            break None;
                        }
                        Err(e) => {
                            tracing::warn!(lease = %self.name, error = %e, "cannot renew the Lease; stopping the controller before it expires");
                            break None;
                        }
                    },
                }
            };
            let finished = match finished {
                Some(finished) => finished,
                None => {
                    term.cancel();
                    match tokio::time::timeout(STOP_BOUND, &mut running).await {
                        Ok(finished) => finished,
                        Err(_) => {
                            // Another replica may be leading already: end the process (and every
                            // task of the controller with it) rather than act twice.
                            running.abort();
                            metrics.set_leader(false);
                            return Err(crate::error::Error::ControllerDidNotStop(STOP_BOUND));
                        }
                    }
                }
            };
            metrics.set_leader(false);
            let outcome = match finished {
                Ok(outcome) => outcome,
                Err(error) => Err(crate::error::Error::TaskFailed {
                    task: "controller",
                    error,
                }),
            };
            if stop.is_cancelled() || outcome.is_err() {
                self.release(&manager).await;
                return outcome;
            }
            tracing::info!(lease = %self.name, "controller stopped; campaigning again");
            if self.pause(&stop).await {
                return Ok(());
            }
        }
    }

    /// Waits until this replica holds the Lease (`None`: `stop` was cancelled first), trying
    /// again one retry period after a failed request.
    async fn campaign(
        &self,
        params: &LeaseParams,
        stop: &CancellationToken,
    ) -> Option<LeaseManager> {
        loop {
            // A new manager for each term starts out not leading, so its first answer is news.
            let attempt = async {
                let manager = LeaseManager::new(
                    self.client.clone(),
                    &self.name,
                    &self.namespace,
                    params.clone(),
                    LeaseCreateMode::AutoCreate,
                )
                .await?;
                tracing::info!(lease = %self.name, identity = %self.identity, "waiting to lead");
                let leading = manager.changed().await?;
                Ok::<_, kube_lease_manager::LeaseManagerError>(leading.then_some(manager))
            };
            let outcome = tokio::select! {
                _ = stop.cancelled() => return None,
                outcome = attempt => outcome,
            };
            match outcome {
                Ok(Some(manager)) => return Some(manager),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(lease = %self.name, error = %e, "a Lease request failed; trying again");
                    if self.pause(stop).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Hands the Lease back; a failure only means the next leader waits for it to expire.
    async fn release(&self, manager: &LeaseManager) {
        let timeout = self
            .timings
            .request_timeout()
            .unwrap_or(Duration::from_secs(5));
        match tokio::time::timeout(timeout, manager.release()).await {
            Ok(Ok(())) => tracing::info!(lease = %self.name, "released the Lease"),
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.name, error = %e, "could not release the Lease")
            }
            Err(_) => tracing::warn!(lease = %self.name, "releasing the Lease timed out"),
        }
    }

    /// Waits one retry period; true when `stop` was cancelled meanwhile.
    async fn pause(&self, stop: &CancellationToken) -> bool {
        tokio::select! {
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(self.timings.retry_period) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timings(lease: u64, renew: u64, retry: u64) -> Timings {
        Timings {
            lease_duration: Duration::from_secs(lease),
            renew_deadline: Duration::from_secs(renew),
            retry_period: Duration::from_secs(retry),
        }
    }

    #[test]
    fn the_go_defaults_renew_fifteen_seconds_before_expiry() {
        let defaults = timings(45, 30, 2);
        assert_eq!(defaults.lease_seconds(), Ok((45, 15)));
        assert_eq!(defaults.request_timeout(), Ok(Duration::from_millis(7500)));
    }

    #[test]
    fn fractions_round_up_to_whole_seconds() {
        let t = Timings {
            lease_duration: Duration::from_millis(4500),
            renew_deadline: Duration::from_millis(2100),
            retry_period: Duration::from_millis(500),
        };
        assert_eq!(t.lease_seconds(), Ok((5, 2)));
        assert_eq!(t.request_timeout(), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn inconsistent_timings_name_the_setting_to_change() {
        let e = timings(30, 30, 2).lease_seconds().unwrap_err();
        assert!(e.contains("CATTLE_ELECTION_RENEW_DEADLINE"), "{e}");
        assert!(e.contains("CATTLE_ELECTION_LEASE_DURATION"), "{e}");
        let e = timings(10, 20, 2).lease_seconds().unwrap_err();
        assert!(e.contains("must be shorter"), "{e}");
        let e = timings(45, 30, 30).lease_seconds().unwrap_err();
        assert!(e.contains("CATTLE_ELECTION_RETRY_PERIOD"), "{e}");
        assert!(timings(45, 30, 30).request_timeout().is_err());
    }

    #[test]
    fn identities_differ_between_processes_on_one_host() {
        let me = identity();
        assert!(me.ends_with(&format!("_{}", std::process::id())), "{me}");
        assert!(!me.starts_with('_'), "{me}");
    }

    /// A Lease the way the API server keeps it, for the replicas' requests: read, created,
    /// and patched (server-side apply and strategic merge both merge objects here).
    #[derive(Default)]
    struct Store {
        lease: Option<serde_json::Value>,
        version: u64,
    }

    fn merge(into: &mut serde_json::Value, patch: &serde_json::Value) {
        match (into, patch) {
            (serde_json::Value::Object(into), serde_json::Value::Object(patch)) => {
                for (k, v) in patch {
                    merge(into.entry(k.clone()).or_insert(serde_json::Value::Null), v);
                }
            }
            (into, patch) => *into = patch.clone(),
        }
    }

    impl Store {
        fn answer(&mut self, seen: &crate::controller::testing::Seen) -> (u16, serde_json::Value) {
            let missing = serde_json::json!({"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "NotFound", "code": 404});
            match (seen.method.as_str(), &mut self.lease) {
                ("GET", None) => (404, missing),
                ("GET", Some(lease)) => (200, lease.clone()),
                ("POST", _) | ("PATCH", None) => {
                    self.version += 1;
                    let mut lease = seen.body.clone();
                    lease["metadata"]["resourceVersion"] = self.version.to_string().into();
                    self.lease = Some(lease.clone());
                    (201, lease)
                }
                ("PATCH", Some(lease)) => {
                    self.version += 1;
                    merge(lease, &seen.body);
                    lease["metadata"]["resourceVersion"] = self.version.to_string().into();
                    (200, lease.clone())
                }
                _ => (405, missing),
            }
        }

        fn holder(&self) -> Option<String> {
            self.lease.as_ref()?["spec"]["holderIdentity"]
                .as_str()
                .map(str::to_owned)
        }
    }

    /// The election loop against a Lease another replica takes: the controller runs while this
    /// replica holds the Lease, is stopped (its token cancelled) once another holds it, runs
    /// again once the Lease is free, and the Lease is handed back when the process stops.
    #[tokio::test]
    async fn a_leader_that_loses_the_lease_stops_its_controller_and_leads_again_later() {
        use crate::controller::testing;
        let (client, mut api) = testing::client();
        let store = Arc::new(std::sync::Mutex::new(Store::default()));
        let serving = tokio::spawn({
            let store = store.clone();
            async move {
                while api
                    .answer(|seen| crate::sync::lock(&store).answer(seen))
                    .await
                    .is_some()
                {}
            }
        });
        let election = Election {
            client,
            namespace: "system-upgrade".into(),
            name: "suc".into(),
            identity: "me".into(),
            timings: Timings {
                retry_period: Duration::from_millis(200),
                ..timings(2, 1, 0)
            },
        };
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let (terms, mut started) = tokio::sync::mpsc::unbounded_channel();
        let leading = tokio::spawn({
            let (metrics, stop) = (metrics.clone(), stop.clone());
            async move {
                election
                    .lead(metrics, stop, move |term: CancellationToken| {
                        let _ = terms.send(term.clone());
                        async move {
                            term.cancelled().await;
                            Ok(())
                        }
                    })
                    .await
            }
        });
        let within = |seconds| Duration::from_secs(seconds);
        let first = tokio::time::timeout(within(10), started.recv())
            .await
            .expect("the controller starts")
            .unwrap();
        assert_eq!(crate::sync::lock(&store).holder().as_deref(), Some("me"));
        assert_eq!(metrics.leader.get(), 1);

        // Another replica holds the Lease now (its renewal just made).
        {
            let mut store = crate::sync::lock(&store);
            let lease = store.lease.as_mut().unwrap();
            lease["spec"]["holderIdentity"] = "other".into();
            lease["spec"]["renewTime"] = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string()
                .into();
        }
        tokio::time::timeout(within(10), first.cancelled())
            .await
            .expect("the controller is stopped once another replica holds the Lease");
        // The other replica stops renewing: once the Lease expires, this one leads again.
        let second = tokio::time::timeout(within(15), started.recv())
            .await
            .expect("the controller starts again")
            .unwrap();
        assert!(!second.is_cancelled());
        assert_eq!(crate::sync::lock(&store).holder().as_deref(), Some("me"));

        // Stopping the process stops the controller and hands the Lease back.
        stop.cancel();
        let outcome = tokio::time::timeout(within(10), leading)
            .await
            .unwrap()
            .unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
        assert!(second.is_cancelled());
        assert_eq!(metrics.leader.get(), 0);
        assert_ne!(crate::sync::lock(&store).holder().as_deref(), Some("me"));
        serving.abort();
    }
}
