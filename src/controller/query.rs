//! The Prometheus health gate: an instant query over HTTP whose answer must hold no series,
//! cached briefly per Plan so a busy rollout does not query on every pass.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::api::{Plan, PrometheusGate};
use crate::controller::decide::QueryOutcome;
use crate::syntax::duration;

/// How long an answer is reused for the same Plan and query.
pub const FRESH_FOR: Duration = Duration::from_secs(15);
/// A query's time limit unless the gate sets one.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of an answer read; a larger one is a failed query.
const MAX_ANSWER: usize = 1 << 20;
/// Series named in a closed gate's message.
const LISTED_SERIES: usize = 3;

/// The gate's HTTP client and each Plan's last answer.
pub struct Queries {
    client: reqwest::Client,
    /// By Plan UID: when, for which URL and query, and the answer.
    answers: Mutex<HashMap<String, (Instant, String, QueryOutcome)>>,
}

impl Queries {
    pub fn new() -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "system-upgrade-controller/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| format!("cannot build the Prometheus HTTP client: {e}"))?;
        Ok(Self {
            client,
            answers: Mutex::new(HashMap::new()),
        })
    }

    /// The Plan's Prometheus gate answer (`None` without such a gate), at most [`FRESH_FOR`] old.
    pub async fn check(&self, plan: &Plan) -> Option<QueryOutcome> {
        let gate = plan.spec.health_gates.as_ref()?.prometheus.as_ref()?;
        let uid = plan.metadata.uid.clone().unwrap_or_default();
        let key = format!("{}\n{}", gate.url, gate.query);
        if let Some((at, asked, answer)) = self.lock().get(&uid)
            && *asked == key
            && at.elapsed() < FRESH_FOR
        {
            return Some(answer.clone());
        }
        let answer = self.query(gate).await;
        self.lock()
            .insert(uid, (Instant::now(), key, answer.clone()));
        Some(answer)
    }

    /// Drops a deleted Plan's answer.
    pub fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    async fn query(&self, gate: &PrometheusGate) -> QueryOutcome {
        let timeout = gate
            .timeout
            .as_deref()
            .and_then(|t| duration::parse(t).ok())
            .and_then(|n| u64::try_from(n).ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_nanos)
            .min(Duration::from_secs(60));
        let url = format!("{}/api/v1/query", gate.url.trim_end_matches('/'));
        let sent = self
            .client
            .get(&url)
            .query(&[("query", gate.query.as_str())])
            .timeout(timeout)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(e) => return QueryOutcome::Failed(format!("querying {url}: {e}")),
        };
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ANSWER => {
                    body.extend_from_slice(&chunk);
                }
                Ok(Some(_)) => {
                    return QueryOutcome::Failed(format!("{url} answered more than 1 MiB"));
                }
                Ok(None) => break,
                Err(e) => return QueryOutcome::Failed(format!("reading {url}'s answer: {e}")),
            }
        }
        answer(&url, status.as_u16(), &body)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, String, QueryOutcome)>> {
        crate::sync::lock(&self.answers)
    }
}

/// Reads a Prometheus API answer: no series is clear, series close the gate, anything else is a
/// failed query.
pub fn answer(url: &str, status: u16, body: &[u8]) -> QueryOutcome {
    let parsed: serde_json::Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(e) => {
            return QueryOutcome::Failed(format!(
                "{url} answered HTTP {status} without a Prometheus API answer ({e})"
            ));
        }
    };
    if parsed["status"] != "success" {
        let error = parsed["error"].as_str().unwrap_or("no error given");
        return QueryOutcome::Failed(format!("{url} answered HTTP {status}: {error}"));
    }
    let data = &parsed["data"];
    let series = match data["resultType"].as_str() {
        Some("vector" | "matrix") => data["result"].as_array().cloned().unwrap_or_default(),
        // A scalar or string always has a value: it cannot "return no series".
        other => {
            return QueryOutcome::Failed(format!(
                "the query returns a {}, not series; write one that returns a vector",
                other.unwrap_or("nothing")
            ));
        }
    };
    if series.is_empty() {
        return QueryOutcome::Clear;
    }
    let named: Vec<String> = series
        .iter()
        .take(LISTED_SERIES)
        .map(|s| series_name(&s["metric"]))
        .collect();
    let more = series.len().saturating_sub(LISTED_SERIES);
    let mut text = format!("{} series: {}", series.len(), named.join(", "));
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    QueryOutcome::Firing(text)
}

/// `name{label="value",...}` of a series' labels.
fn series_name(metric: &serde_json::Value) -> String {
    let Some(labels) = metric.as_object() else {
        return "{}".to_owned();
    };
    let name = labels
        .get("__name__")
        .and_then(|n| n.as_str())
        .unwrap_or_default();
    let pairs: Vec<String> = labels
        .iter()
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={}", v))
        .collect();
    crate::validation::bounded(&format!("{name}{{{}}}", pairs.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_as_prometheus_writes_them() {
        let url = "http://p:9090/api/v1/query";
        let empty = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert_eq!(answer(url, 200, empty), QueryOutcome::Clear);
        let firing = br#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"ALERTS","alertname":"NodeDown","severity":"critical"},"value":[1,"1"]},
            {"metric":{"alertname":"B"},"value":[1,"1"]},
            {"metric":{"alertname":"C"},"value":[1,"1"]},
            {"metric":{"alertname":"D"},"value":[1,"1"]}]}}"#;
        assert_eq!(
            answer(url, 200, firing),
            QueryOutcome::Firing(
                "4 series: ALERTS{alertname=\"NodeDown\",severity=\"critical\"}, \
                 {alertname=\"B\"}, {alertname=\"C\"} and 1 more"
                    .into()
            )
        );
        let bad = br#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        assert_eq!(
            answer(url, 400, bad),
            QueryOutcome::Failed(format!("{url} answered HTTP 400: parse error at char 3"))
        );
        let scalar = br#"{"status":"success","data":{"resultType":"scalar","result":[1,"1"]}}"#;
        assert!(
            matches!(answer(url, 200, scalar), QueryOutcome::Failed(m) if m.contains("scalar"))
        );
        assert!(
            matches!(answer(url, 502, b"<html>bad gateway</html>"), QueryOutcome::Failed(m) if m.contains("HTTP 502"))
        );
    }
}
