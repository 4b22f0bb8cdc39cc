//! What a notification says, and how each kind of receiver is told it: the notice (what
//! happened to which Plan or node) and the request body for a JSON webhook, a CloudEvent, a
//! Slack- or Discord-compatible chat, or an Alertmanager's alerts and silences.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What happened, as a receiver's `events` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// A rollout of a new version (or hash) started its first node.
    PlanStarted,
    /// A node's upgrade Job was created.
    NodeStarted,
    /// A node finished its upgrade and is labelled done.
    NodeDone,
    /// A node's upgrade failed (its Job, drain or convergence), or its drain was skipped.
    NodeFailed,
    /// A version rule holds a node (a downgrade, a skipped minor, servers behind).
    NodeHeld,
    /// Every selected node is done.
    PlanComplete,
    /// The rollout cannot go on without a change or an operator (kstatus Stalled).
    PlanStalled,
    /// The first wave (`spec.canary`) is done and the rest waits for approval.
    AwaitingApproval,
}

impl Kind {
    pub const ALL: &[Kind] = &[
        Kind::PlanStarted,
        Kind::NodeStarted,
        Kind::NodeDone,
        Kind::NodeFailed,
        Kind::NodeHeld,
        Kind::PlanComplete,
        Kind::PlanStalled,
        Kind::AwaitingApproval,
    ];

    /// The word as written in the configuration and the messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PlanStarted => "PlanStarted",
            Kind::NodeStarted => "NodeStarted",
            Kind::NodeDone => "NodeDone",
            Kind::NodeFailed => "NodeFailed",
            Kind::NodeHeld => "NodeHeld",
            Kind::PlanComplete => "PlanComplete",
            Kind::PlanStalled => "PlanStalled",
            Kind::AwaitingApproval => "AwaitingApproval",
        }
    }

    /// Whether it calls for a person (a warning in chats, severity `warning` in Alertmanager).
    pub fn is_trouble(self) -> bool {
        matches!(
            self,
            Kind::NodeFailed | Kind::NodeHeld | Kind::PlanStalled | Kind::AwaitingApproval
        )
    }

    fn mark(self) -> &'static str {
        match self {
            Kind::PlanStarted | Kind::NodeStarted => "▶",
            Kind::NodeDone | Kind::PlanComplete => "✔",
            Kind::NodeFailed | Kind::PlanStalled => "✖",
            Kind::NodeHeld | Kind::AwaitingApproval => "⏸",
        }
    }
}

/// One thing that happened, told to every receiver that wants its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    pub kind: Kind,
    pub namespace: String,
    pub plan: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The condition or phase reason behind it (`JobFailed`, `DowngradeHeld`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// One sentence a person reads.
    pub message: String,
    /// When it happened (RFC 3339).
    pub time: String,
}

/// Longest message sent to a chat (Discord takes 2000 characters).
const CHAT_LIMIT: usize = 1900;
/// The controller's name as a sender.
pub const SENDER: &str = "system-upgrade-controller";

impl Notice {
    /// The line a chat shows: a mark, the cluster when named, the sentence.
    pub fn text(&self, cluster: Option<&str>) -> String {
        let place = cluster.map(|c| format!("[{c}] ")).unwrap_or_default();
        cut(
            &format!("{} {place}{}", self.kind.mark(), self.message),
            CHAT_LIMIT,
        )
    }

    /// The generic webhook's JSON object.
    pub fn json(&self, cluster: Option<&str>) -> Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let (Some(cluster), Some(object)) = (cluster, value.as_object_mut()) {
            object.insert("cluster".to_owned(), cluster.into());
        }
        value
    }

    /// A CloudEvent 1.0 in structured mode (`application/cloudevents+json`), the generic JSON
    /// as its data.
    pub fn cloud_event(&self, cluster: Option<&str>, id: &str) -> Value {
        json!({
            "specversion": "1.0",
            "id": id,
            "source": format!(
                "/apis/upgrade.cattle.io/v1/namespaces/{}/plans/{}",
                self.namespace, self.plan
            ),
            "type": format!("io.cattle.upgrade.plan.v1.{}", self.kind.as_str()),
            "subject": self.node.as_deref().unwrap_or(&self.plan),
            "time": self.time,
            "datacontenttype": "application/json",
            "data": self.json(cluster),
        })
    }

    /// A Slack-compatible incoming webhook's body.
    pub fn slack(&self, cluster: Option<&str>) -> Value {
        json!({ "text": self.text(cluster) })
    }

    /// A Discord incoming webhook's body; no mention in a message pings anyone.
    pub fn discord(&self, cluster: Option<&str>) -> Value {
        json!({
            "content": self.text(cluster),
            "username": SENDER,
            "allowed_mentions": { "parse": [] },
        })
    }

    /// Alertmanager's `POST /api/v2/alerts` body: one alert that ends after `lasting`.
    pub fn alert(&self, cluster: Option<&str>, ends: &str) -> Value {
        let mut labels = json!({
            "alertname": format!("SystemUpgrade{}", self.kind.as_str()),
            "severity": if self.kind.is_trouble() { "warning" } else { "info" },
            "namespace": self.namespace,
            "plan": self.plan,
        });
        for (key, value) in [
            ("node", self.node.as_deref()),
            ("cluster", cluster),
            ("version", self.version.as_deref()),
        ] {
            if let Some(value) = value {
                labels[key] = value.into();
            }
        }
        json!([{
            "labels": labels,
            "annotations": { "summary": self.text(cluster), "description": self.message },
            "startsAt": self.time,
            "endsAt": ends,
        }])
    }
}

/// Alertmanager's `POST /api/v2/silences` body: the named alerts on one node, from `starts` to
/// `ends`.
pub fn silence(
    alerts: &[String],
    node_label: &str,
    node: &str,
    comment: &str,
    (starts, ends): (&str, &str),
) -> Value {
    let names = alerts
        .iter()
        .map(|a| escape_regex(a))
        .collect::<Vec<_>>()
        .join("|");
    json!({
        "matchers": [
            { "name": "alertname", "value": names, "isRegex": true, "isEqual": true },
            { "name": node_label, "value": node, "isRegex": false, "isEqual": true },
        ],
        "startsAt": starts,
        "endsAt": ends,
        "createdBy": SENDER,
        "comment": comment,
    })
}

/// An alert name as a literal in Alertmanager's (RE2) regular expressions.
fn escape_regex(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// At most `limit` characters, cut on a character boundary with an ellipsis.
fn cut(text: &str, limit: usize) -> String {
    match text.char_indices().nth(limit) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed() -> Notice {
        Notice {
            kind: Kind::NodeFailed,
            namespace: "system-upgrade".into(),
            plan: "agent-plan".into(),
            node: Some("agent-1".into()),
            version: Some("v1.31.2+k3s1".into()),
            reason: Some("JobFailed".into()),
            message: "node agent-1 failed to upgrade to v1.31.2+k3s1 (Plan agent-plan): @everyone BackoffLimitExceeded".into(),
            time: "2026-12-06T01:00:00Z".into(),
        }
    }

    #[test]
    fn every_receiver_gets_its_own_shape() {
        let notice = failed();
        assert_eq!(notice.json(None)["kind"], "NodeFailed");
        assert_eq!(notice.json(Some("home"))["cluster"], "home");
        assert_eq!(notice.json(None).get("cluster"), None);
        let event = notice.cloud_event(None, "abc");
        assert_eq!(event["specversion"], "1.0");
        assert_eq!(event["type"], "io.cattle.upgrade.plan.v1.NodeFailed");
        assert_eq!(event["subject"], "agent-1");
        assert_eq!(event["data"]["plan"], "agent-plan");
        assert!(
            notice.slack(Some("home"))["text"]
                .as_str()
                .unwrap()
                .starts_with("✖ [home] node agent-1 failed")
        );
        let discord = notice.discord(None);
        assert_eq!(discord["allowed_mentions"]["parse"], json!([]));
        let alert = notice.alert(None, "2026-12-06T02:00:00Z");
        assert_eq!(alert[0]["labels"]["alertname"], "SystemUpgradeNodeFailed");
        assert_eq!(alert[0]["labels"]["severity"], "warning");
        assert_eq!(alert[0]["labels"]["node"], "agent-1");
    }

    #[test]
    fn a_silence_matches_the_alerts_literally_on_one_node() {
        let body = silence(
            &["KubeNodeUnschedulable".into(), "a.b".into()],
            "node",
            "agent-1",
            "upgrading",
            ("t0", "t1"),
        );
        assert_eq!(body["matchers"][0]["value"], "KubeNodeUnschedulable|a\\.b");
        assert_eq!(body["matchers"][1]["value"], "agent-1");
        assert_eq!(body["createdBy"], SENDER);
    }

    #[test]
    fn chat_text_is_cut_for_discord() {
        let mut notice = failed();
        notice.message = "é".repeat(5000);
        assert_eq!(notice.text(None).chars().count(), CHAT_LIMIT + 1);
    }
}
