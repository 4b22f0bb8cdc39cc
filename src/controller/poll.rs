//! Version resolution for a reconcile: `spec.version` as it is, or the channel, polled at most
//! once per interval per Plan and, after a failure, again with backoff (5 s doubling, at most
//! the interval). The schedule lives in memory; a restarted controller polls at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::Plan;
use crate::controller::decide::Resolution;
use crate::controller::resolve::{ChannelClient, ChannelError};
use crate::controller::status;

/// When a Plan's channel was polled and how often it failed since it last answered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Poll {
    channel: String,
    next: Instant,
    failures: u32,
}

/// The channel client, what identifies the cluster to channels, and each Plan's schedule.
pub struct Channels {
    client: ChannelClient,
    /// UID of the kube-system Namespace, sent to channels as X-SUC-Cluster-ID.
    cluster_id: String,
    interval: Duration,
    /// By Plan UID.
    polls: Mutex<HashMap<String, Poll>>,
}

impl Channels {
    pub fn new(client: ChannelClient, cluster_id: String, interval: Duration) -> Self {
        Channels {
            client,
            cluster_id,
            interval,
            polls: Mutex::default(),
        }
    }

    fn polls(&self) -> std::sync::MutexGuard<'_, HashMap<String, Poll>> {
        crate::sync::lock(&self.polls)
    }

    /// Resolves the Plan's version. Resolution does not wait for the other rules (as in the Go
    /// controller): only starting nodes needs a valid Plan.
    pub async fn resolve(&self, plan: &Plan) -> Resolution {
        let version = plan.spec.version.as_deref().filter(|v| !v.is_empty());
        let channel = plan.spec.channel.as_deref().filter(|c| !c.is_empty());
        if let Some(version) = version {
            return Resolution::Version(version.to_owned());
        }
        let Some(channel) = channel else {
            return Resolution::Missing;
        };
        let key = plan.metadata.uid.clone().unwrap_or_default();
        let stored = plan.status.clone().unwrap_or_default();
        let resolved = status::is(
            stored.conditions.as_deref().unwrap_or_default(),
            status::LATEST_RESOLVED,
            "True",
        );
        let now = Instant::now();
        if let Some(wait) = self.not_due(&key, channel, resolved, now) {
            return Resolution::ChannelNotDue(wait);
        }
        // A stored version that is not a tag (written by an older controller) is not sent back
        // as a header, where it could make every poll fail.
        let latest = stored
            .latest_version
            .filter(|v| crate::syntax::image::is_tag(v))
            .unwrap_or_default();
        let answer = self
            .client
            .resolve(channel, &latest, &self.cluster_id)
            .await
            .and_then(|version| usable(plan, version));
        match answer {
            Ok(version) => {
                self.answered(&key, channel, now);
                tracing::info!(%channel, %version, "polled the channel");
                Resolution::Channel(version)
            }
            Err(error) => {
                let retry = self.failed(&key, channel, now);
                tracing::warn!(%channel, %error, ?retry, "channel poll failed");
                Resolution::ChannelFailed {
                    error: error.0,
                    retry,
                }
            }
        }
    }

    /// How long until the Plan's channel is due, if it is not: polled recently, for this very
    /// channel, and resolved (or failing, which has its own backoff).
    fn not_due(&self, key: &str, channel: &str, resolved: bool, now: Instant) -> Option<Duration> {
        let polls = self.polls();
        let poll = polls.get(key)?;
        (poll.channel == channel && now < poll.next && (resolved || poll.failures > 0))
            .then(|| poll.next - now)
    }

    fn answered(&self, key: &str, channel: &str, now: Instant) {
        let poll = Poll {
            channel: channel.to_owned(),
            next: now + self.interval,
            failures: 0,
        };
        self.polls().insert(key.to_owned(), poll);
    }

    /// Records a failed poll; returns when to try again.
    fn failed(&self, key: &str, channel: &str, now: Instant) -> Duration {
        let mut polls = self.polls();
        let failures = polls
            .get(key)
            .filter(|p| p.channel == channel)
            .map_or(0, |p| p.failures)
            + 1;
        let retry = Duration::from_secs(5u64 << (failures - 1).min(10)).min(self.interval);
        let poll = Poll {
            channel: channel.to_owned(),
            next: now + retry,
            failures,
        };
        polls.insert(key.to_owned(), poll);
        retry
    }
}

/// An answer that cannot be a tag (say `v1.2.3%0A` in a Location) is a failed poll: the stored
/// version stays, and the next good answer replaces it. This checks the channel's answer with
/// the rule of `spec.version`; the Plan itself is validated once, by the decision.
fn usable(plan: &Plan, version: String) -> Result<String, ChannelError> {
    match crate::validation::resolved_version_problem(&plan.spec, &version) {
        None => Ok(version),
        Some(problem) => Err(ChannelError(format!(
            "the channel answered a version that cannot be used: {problem}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels() -> Channels {
        crate::controller::testing::crypto();
        let client = ChannelClient::new(Duration::from_secs(1)).unwrap();
        Channels::new(client, "cluster".into(), Duration::from_secs(60))
    }

    #[test]
    fn a_channel_that_answered_is_not_due_until_the_interval_passed() {
        let channels = channels();
        let now = Instant::now();
        assert_eq!(channels.not_due("p", "c", true, now), None);
        channels.answered("p", "c", now);
        let later = now + Duration::from_secs(20);
        assert_eq!(
            channels.not_due("p", "c", true, later),
            Some(Duration::from_secs(40))
        );
        assert_eq!(
            channels.not_due("p", "c", true, now + Duration::from_secs(60)),
            None
        );
        // Another channel, or a Plan that is not resolved (its status was lost), polls at once.
        assert_eq!(channels.not_due("p", "other", true, later), None);
        assert_eq!(channels.not_due("p", "c", false, later), None);
    }

    #[test]
    fn failures_back_off_from_five_seconds_to_the_interval() {
        let channels = channels();
        let now = Instant::now();
        let retries: Vec<u64> = (0..6)
            .map(|_| channels.failed("p", "c", now).as_secs())
            .collect();
        assert_eq!(retries, [5, 10, 20, 40, 60, 60]);
        // A failing channel waits out its backoff even while the Plan is not resolved.
        assert_eq!(
            channels.not_due("p", "c", false, now),
            Some(Duration::from_secs(60))
        );
        // Changing the channel starts the count again.
        assert_eq!(channels.failed("p", "d", now).as_secs(), 5);
        channels.answered("p", "d", now);
        assert_eq!(channels.failed("p", "d", now).as_secs(), 5);
    }

    #[test]
    fn a_version_that_is_not_a_tag_is_a_failed_poll() {
        let plan: Plan = serde_json::from_value(serde_json::json!({
            "apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
            "metadata": {"name": "p"},
            "spec": {"channel": "https://example.com", "upgrade": {"image": "rancher/k3s-upgrade"}},
        }))
        .unwrap();
        assert_eq!(usable(&plan, "v1.2.3".into()).unwrap(), "v1.2.3");
        let error = usable(&plan, "v1.2.3\n".into()).unwrap_err();
        assert!(
            error
                .0
                .starts_with("the channel answered a version that cannot be used"),
            "{}",
            error.0
        );
    }
}
