//! The notifications' configuration: the receivers a user names in the ConfigMap
//! `system-upgrade-controller-notifications` (key `notifications.yaml`), read and checked here
//! for the controller and for `check`, each problem naming its field and the fix.

use std::time::Duration;

use serde::Deserialize;

use crate::notify::message::Kind;
use crate::syntax::{duration, k8s};

/// The ConfigMap (in the controller's namespace) that names the receivers.
pub const CONFIGMAP: &str = "system-upgrade-controller-notifications";
/// The ConfigMap's key that holds the configuration.
pub const CONFIG_KEY: &str = "notifications.yaml";
/// Most receivers one configuration names.
pub const MAX_RECEIVERS: usize = 20;
/// Most alerts a receiver silences.
const MAX_SILENCED: usize = 50;
/// Longest configuration read (the ConfigMap limit is 1 MiB; a configuration is a few lines).
pub const MAX_CONFIG: usize = 64 * 1024;
/// A delivery's time limit unless the receiver sets one.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time limit a receiver may set: a slow receiver holds only its own queue.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a silence lasts unless the receiver says: longer than most upgrades; a node whose
/// upgrade ends sooner has its silence expired at once.
pub const DEFAULT_SILENCE: Duration = Duration::from_secs(3600);
/// Longest silence: an upgrade that takes longer is told of by the alerts.
const MAX_SILENCE: Duration = Duration::from_secs(24 * 3600);

/// The events a receiver gets unless it lists its own: what needs a person, and each rollout's
/// start and end, not each node's start and end (which a fleet of hundreds would drown in).
pub const DEFAULT_KINDS: &[Kind] = &[
    Kind::PlanStarted,
    Kind::NodeFailed,
    Kind::NodeHeld,
    Kind::PlanComplete,
    Kind::PlanStalled,
    Kind::AwaitingApproval,
];

/// The configuration, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// A name for this cluster, put in every message (for those who run several).
    #[serde(default)]
    pub cluster: Option<String>,
    #[serde(default)]
    pub receivers: Vec<Receiver>,
}

/// Where messages go.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Receiver {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ReceiverKind,
    /// The URL, when it holds no secret.
    #[serde(default)]
    pub url: Option<String>,
    /// The URL from a Secret of the controller's namespace (webhook URLs of chats are secrets).
    #[serde(default)]
    pub url_from: Option<SecretKey>,
    /// The events it gets; [`DEFAULT_KINDS`] when unset.
    #[serde(default)]
    pub events: Option<Vec<Kind>>,
    /// The Plans it hears about, by name; all when unset.
    #[serde(default)]
    pub plans: Option<Vec<String>>,
    /// A delivery's time limit (Go duration), [`DEFAULT_TIMEOUT`] when unset.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Alertmanager only: alerts silenced on a node while it is upgraded.
    #[serde(default)]
    pub silence: Option<Silence>,
}

/// A key of a Secret.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretKey {
    pub secret: String,
    pub key: String,
}

/// The alerts silenced on a node while it is upgraded.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Silence {
    /// Alert names (`alertname`).
    pub alerts: Vec<String>,
    /// The alerts' label that holds the node's name; `node` when unset (kube-state-metrics'
    /// and kube-prometheus' node alerts).
    #[serde(default)]
    pub node_label: Option<String>,
    /// Longest a silence lasts (Go duration), [`DEFAULT_SILENCE`] when unset.
    #[serde(default, rename = "for")]
    pub for_: Option<String>,
}

/// What a receiver speaks.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReceiverKind {
    /// A JSON object per event, POSTed.
    Webhook,
    /// A CloudEvent (structured mode, JSON) per event.
    Cloudevents,
    /// A Slack-compatible incoming webhook (`{"text": …}`; Mattermost, Rocket.Chat too).
    Slack,
    /// A Discord incoming webhook (`{"content": …}`).
    Discord,
    /// An Alertmanager (API v2): events become alerts; silences cover nodes being upgraded.
    Alertmanager,
}

impl Receiver {
    /// The events it gets.
    pub fn kinds(&self) -> &[Kind] {
        self.events.as_deref().unwrap_or(DEFAULT_KINDS)
    }

    /// Whether it hears about that event of that Plan.
    pub fn wants(&self, kind: Kind, plan: &str) -> bool {
        self.kinds().contains(&kind) && self.hears(plan)
    }

    /// Whether it hears about that Plan at all (`plans`).
    pub fn hears(&self, plan: &str) -> bool {
        self.plans
            .as_ref()
            .is_none_or(|plans| plans.iter().any(|p| p == plan))
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
            .as_deref()
            .and_then(|t| duration::parse(t).ok())
            .map_or(DEFAULT_TIMEOUT, nanos)
    }
}

impl Silence {
    pub fn node_label(&self) -> &str {
        self.node_label.as_deref().unwrap_or("node")
    }

    pub fn lasting(&self) -> Duration {
        self.for_
            .as_deref()
            .and_then(|t| duration::parse(t).ok())
            .map_or(DEFAULT_SILENCE, nanos)
    }
}

fn nanos(n: i64) -> Duration {
    Duration::from_nanos(n.max(0).unsigned_abs())
}

/// Reads and checks a configuration; every problem found, each naming its field.
pub fn parse(text: &str) -> Result<Config, Vec<String>> {
    if text.len() > MAX_CONFIG {
        return Err(vec![format!(
            "{CONFIG_KEY}: {} bytes, more than the {MAX_CONFIG} read; keep it to the receivers",
            text.len()
        )]);
    }
    let value = match crate::yaml::documents(text) {
        Ok(mut documents) if documents.len() <= 1 => documents.pop().unwrap_or_default(),
        Ok(_) => {
            return Err(vec![format!(
                "{CONFIG_KEY}: holds several YAML documents; write one"
            )]);
        }
        Err(e) => return Err(vec![format!("{CONFIG_KEY}: not YAML: {e}")]),
    };
    if value.is_null() {
        return Ok(Config::default());
    }
    let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        vec![format!("{CONFIG_KEY}: {field}: {}", e.into_inner())]
    })?;
    let problems = check(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// The problems of a configuration that parsed.
fn check(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if config.receivers.len() > MAX_RECEIVERS {
        problems.push(format!(
            "receivers: {} receivers, more than {MAX_RECEIVERS}; one receiver can hear about \
             every Plan",
            config.receivers.len()
        ));
    }
    if let Some(cluster) = &config.cluster
        && (cluster.is_empty() || cluster.len() > 63)
    {
        problems.push("cluster: give a name of 1 to 63 characters, or leave it out".to_owned());
    }
    for (i, receiver) in config.receivers.iter().enumerate() {
        let at = format!("receivers[{i}]");
        if let Err(e) = k8s::dns_label(&receiver.name) {
            problems.push(format!("{at}.name: {:?} {e}", receiver.name));
        }
        if config.receivers[..i]
            .iter()
            .any(|r| r.name == receiver.name)
        {
            problems.push(format!(
                "{at}.name: {:?} names an earlier receiver too; give each its own name",
                receiver.name
            ));
        }
        match (&receiver.url, &receiver.url_from) {
            (Some(_), Some(_)) => problems.push(format!(
                "{at}: set url or urlFrom, not both (urlFrom for a URL that is a secret)"
            )),
            (None, None) => problems.push(format!(
                "{at}: set url, or urlFrom: {{secret: NAME, key: KEY}} for a URL kept in a Secret"
            )),
            (Some(url), None) => {
                if let Err(e) = check_url(url) {
                    problems.push(format!("{at}.url: {e}"));
                }
            }
            (None, Some(from)) => {
                if let Err(e) = k8s::dns_subdomain(&from.secret) {
                    problems.push(format!("{at}.urlFrom.secret: {:?} {e}", from.secret));
                }
                if from.key.is_empty() {
                    problems.push(format!("{at}.urlFrom.key: name the Secret's key"));
                }
            }
        }
        if receiver.events.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!(
                "{at}.events: empty, so it would hear nothing; list events or leave it out for \
                 the default ({})",
                words(DEFAULT_KINDS)
            ));
        }
        if receiver.plans.as_ref().is_some_and(Vec::is_empty) {
            problems.push(format!(
                "{at}.plans: empty, so it would hear nothing; name Plans or leave it out for all"
            ));
        }
        if let Some(timeout) = &receiver.timeout {
            check_duration(
                &mut problems,
                &format!("{at}.timeout"),
                timeout,
                MAX_TIMEOUT,
            );
        }
        match (&receiver.silence, receiver.kind) {
            (Some(_), kind) if kind != ReceiverKind::Alertmanager => problems.push(format!(
                "{at}.silence: only an alertmanager receiver silences alerts"
            )),
            (Some(silence), _) => {
                if silence.alerts.is_empty() || silence.alerts.len() > MAX_SILENCED {
                    problems.push(format!(
                        "{at}.silence.alerts: list 1 to {MAX_SILENCED} alert names, for example \
                         [KubeNodeUnschedulable, KubeNodeNotReady]"
                    ));
                }
                for (j, alert) in silence.alerts.iter().enumerate() {
                    if alert.is_empty() || alert.len() > 200 || alert.contains(['\n', '"']) {
                        problems.push(format!(
                            "{at}.silence.alerts[{j}]: {alert:?} is not an alert name"
                        ));
                    }
                }
                if let Some(label) = &silence.node_label
                    && !is_prometheus_label(label)
                {
                    problems.push(format!(
                        "{at}.silence.nodeLabel: {label:?} is not a Prometheus label name \
                         ([a-zA-Z_][a-zA-Z0-9_]*)"
                    ));
                }
                if let Some(lasting) = &silence.for_ {
                    check_duration(
                        &mut problems,
                        &format!("{at}.silence.for"),
                        lasting,
                        MAX_SILENCE,
                    );
                }
            }
            (None, _) => {}
        }
    }
    problems
}

fn check_duration(problems: &mut Vec<String>, field: &str, text: &str, max: Duration) {
    match duration::parse(text) {
        Ok(n) if n > 0 && nanos(n) <= max => {}
        Ok(_) => problems.push(format!(
            "{field}: {text:?} is out of range; give more than 0s and at most {}",
            duration::format(i64::try_from(max.as_nanos()).unwrap_or(i64::MAX))
        )),
        Err(e) => problems.push(format!("{field}: {text:?}: {e}")),
    }
}

/// An http or https URL with a host.
pub fn check_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("give an http:// or https:// URL with a host".to_owned());
    }
    Ok(parsed)
}

fn is_prometheus_label(label: &str) -> bool {
    let mut chars = label.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn words(kinds: &[Kind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_configuration_reads() {
        let config = parse(
            "cluster: homelab\nreceivers:\n- name: chat\n  type: discord\n  urlFrom: {secret: discord, key: url}\n\
             - name: am\n  type: alertmanager\n  url: http://alertmanager:9093\n  events: [NodeFailed]\n  \
             silence: {alerts: [KubeNodeUnschedulable], for: 2h}\n",
        )
        .unwrap();
        assert_eq!(config.cluster.as_deref(), Some("homelab"));
        assert_eq!(config.receivers[0].kinds(), DEFAULT_KINDS);
        assert!(config.receivers[0].wants(Kind::PlanComplete, "any"));
        assert!(!config.receivers[0].wants(Kind::NodeDone, "any"));
        let silence = config.receivers[1].silence.as_ref().unwrap();
        assert_eq!(silence.node_label(), "node");
        assert_eq!(silence.lasting(), Duration::from_secs(7200));
        assert_eq!(config.receivers[1].timeout(), DEFAULT_TIMEOUT);
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn each_problem_names_its_field() {
        let problems = parse(
            "receivers:\n- name: Chat\n  type: slack\n  url: ftp://x\n  events: []\n  silence: {alerts: [A]}\n\
             - name: b\n  type: webhook\n  timeout: 5m\n",
        )
        .unwrap_err();
        let text = problems.join("\n");
        for expected in [
            "receivers[0].name: \"Chat\"",
            "receivers[0].url: give an http:// or https:// URL",
            "receivers[0].events: empty",
            "receivers[0].silence: only an alertmanager",
            "receivers[1]: set url, or urlFrom",
            "receivers[1].timeout: \"5m\" is out of range",
        ] {
            assert!(text.contains(expected), "{expected:?} not in {text}");
        }
        let unknown = parse("receivers:\n- name: a\n  type: teams\n  url: http://x\n").unwrap_err();
        assert!(unknown[0].contains("receivers[0].type"), "{unknown:?}");
        assert!(unknown[0].contains("slack"), "{unknown:?}");
        let event =
            parse("receivers:\n- {name: a, type: slack, url: 'http://x', events: [NodeBroke]}\n")
                .unwrap_err();
        assert!(event[0].contains("receivers[0].events[0]"), "{event:?}");
        let field = parse("receivers:\n- {name: a, type: slack, uri: 'http://x'}\n").unwrap_err();
        assert!(field[0].contains("uri"), "{field:?}");
    }
}
