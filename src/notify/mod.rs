//! Notifications: what the controller's passes tell ([`message::Notice`]s) goes to the
//! receivers of the ConfigMap the user owns ([`config`]), each receiver with its own bounded
//! queue and worker, so a slow or dead receiver delays no rollout and no other receiver.
//! Deliveries have a time limit and are retried with a backoff; what fails, or is dropped from a
//! full queue, is counted in `suc_notifications_total` and told in `/readyz`'s text until the
//! receiver takes a message again. An Alertmanager receiver with `silence` silences the named
//! alerts on each node while its upgrade runs.
//!
//! A ConfigMap rather than a CRD: nothing more to install, upgrade or grant cluster-wide, and it
//! is kept in Git like the rest of the controller's settings; `check -f` checks it as the
//! controller does.

pub mod config;
pub mod message;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::server::Readiness;
use config::{CONFIGMAP, Config, Receiver, ReceiverKind};
use message::{Kind, Notice};

/// Deliveries a receiver's queue holds; more are dropped (and counted) while it is slow.
pub const QUEUE: usize = 100;
/// Tries of one delivery when the receiver is away or answers 429 or 5xx.
const ATTEMPTS: u32 = 4;
/// The wait before the first retry, doubled for each next one.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Most of a receiver's answer read (an Alertmanager's silence ID).
const MAX_ANSWER: usize = 64 * 1024;
/// Who tells `/readyz`.
const NOTICE: &str = "notifications";

/// What a receiver's worker does.
#[derive(Debug, Clone)]
enum Delivery {
    Message(Notice),
    /// Silence the receiver's alerts on a node (its upgrade started).
    Silence(Notice),
    /// Expire that silence (the node's upgrade ended).
    Unsilence {
        plan: String,
        node: String,
    },
}

/// The notifier a controller's term uses; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    shared: Arc<Shared>,
}

struct Shared {
    http: reqwest::Client,
    secrets: Store<Secret>,
    namespace: String,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    state: Mutex<State>,
    /// Silence IDs by receiver, Plan and node: kept across a change of configuration.
    silences: Mutex<HashMap<(String, String, String), String>>,
}

#[derive(Default)]
struct State {
    cluster: Option<String>,
    outlets: Vec<Arc<Outlet>>,
    /// Why the configuration cannot be used, if it cannot.
    problem: Option<String>,
    /// Stops the workers of the configuration in use.
    workers: Option<CancellationToken>,
}

/// A receiver and its queue.
struct Outlet {
    receiver: Receiver,
    queue: mpsc::Sender<Delivery>,
    /// The last failure, until a delivery succeeds.
    failing: Mutex<Option<String>>,
}

impl Notifier {
    pub fn new(
        secrets: Store<Secret>,
        namespace: &str,
        metrics: Arc<Metrics>,
        readiness: Arc<Readiness>,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "system-upgrade-controller/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| format!("cannot build the notifications' HTTP client: {e}"))?;
        Ok(Notifier {
            shared: Arc::new(Shared {
                http,
                secrets,
                namespace: namespace.to_owned(),
                metrics,
                readiness,
                state: Mutex::default(),
                silences: Mutex::default(),
            }),
        })
    }

    /// Follows the ConfigMap until `stop`: each version of it configures the receivers, its
    /// absence none. Then the workers stop and `/readyz` no longer tells of them.
    pub async fn watch(self, client: Client, stop: CancellationToken) {
        let api: Api<ConfigMap> = Api::namespaced(client, &self.shared.namespace);
        let selector = watcher::Config::default().fields(&format!("metadata.name={CONFIGMAP}"));
        let mut stream = watcher::watcher(api, selector).boxed();
        let mut seen = false;
        let mut warned = false;
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => break,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(Event::Init)) => seen = false,
                Some(Ok(Event::InitApply(map) | Event::Apply(map))) => {
                    seen = true;
                    warned = false;
                    self.configure(Some(&map));
                }
                Some(Ok(Event::InitDone)) if !seen => self.configure(None),
                Some(Ok(Event::Delete(_))) => self.configure(None),
                Some(Ok(Event::InitDone)) => {}
                Some(Err(e)) => {
                    if !warned {
                        warned = true;
                        tracing::warn!(error = %e, configmap = CONFIGMAP, "cannot watch the notifications' ConfigMap");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                }
                None => break,
            }
        }
        let mut state = crate::sync::lock(&self.shared.state);
        if let Some(workers) = state.workers.take() {
            workers.cancel();
        }
        *state = State::default();
        drop(state);
        self.shared.readiness.set_notice(NOTICE, None);
    }

    /// Uses the ConfigMap's configuration (none without one). A configuration with problems
    /// keeps none: each problem is logged and told in `/readyz`, and counted.
    fn configure(&self, map: Option<&ConfigMap>) {
        let text = map
            .and_then(|m| m.data.as_ref())
            .and_then(|d| d.get(config::CONFIG_KEY));
        let parsed = match (map, text) {
            (None, _) => Ok(Config::default()),
            (Some(_), None) => Err(vec![format!(
                "the ConfigMap has no key {}; put the receivers there",
                config::CONFIG_KEY
            )]),
            (Some(_), Some(text)) => config::parse(text),
        };
        let mut state = crate::sync::lock(&self.shared.state);
        if let Some(workers) = state.workers.take() {
            workers.cancel();
        }
        *state = State::default();
        match parsed {
            Ok(config) => {
                let workers = CancellationToken::new();
                state.outlets = config
                    .receivers
                    .into_iter()
                    .map(|receiver| self.start(receiver, &workers))
                    .collect();
                tracing::info!(receivers = state.outlets.len(), "notifications configured");
                state.cluster = config.cluster;
                state.workers = Some(workers);
                self.shared.metrics.notification_config_problems(0);
            }
            Err(problems) => {
                tracing::error!(configmap = CONFIGMAP, problems = ?problems, "the notifications' configuration is refused; nothing is sent");
                self.shared
                    .metrics
                    .notification_config_problems(problems.len());
                state.problem = Some(format!(
                    "ConfigMap {CONFIGMAP} is refused, nothing is sent: {}",
                    problems.join("; ")
                ));
            }
        }
        drop(state);
        self.shared.tell_readiness();
    }

    /// A worker for one receiver, stopped with `workers`.
    fn start(&self, receiver: Receiver, workers: &CancellationToken) -> Arc<Outlet> {
        let (queue, mut deliveries) = mpsc::channel(QUEUE);
        self.shared.metrics.notifications_known(&receiver.name);
        let outlet = Arc::new(Outlet {
            receiver,
            queue,
            failing: Mutex::default(),
        });
        let (shared, worker, stop) = (self.shared.clone(), outlet.clone(), workers.clone());
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    _ = stop.cancelled() => return,
                    delivery = deliveries.recv() => delivery,
                };
                let Some(delivery) = delivery else { return };
                let cluster = crate::sync::lock(&shared.state).cluster.clone();
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return,
                    outcome = shared.deliver(&worker.receiver, &delivery, cluster.as_deref()) => outcome,
                };
                let name = &worker.receiver.name;
                match outcome {
                    Ok(()) => {
                        shared.metrics.notification(name, "sent");
                        if crate::sync::lock(&worker.failing).take().is_some() {
                            tracing::info!(receiver = %name, "notifications are delivered again");
                            shared.tell_readiness();
                        }
                    }
                    Err(why) => {
                        shared.metrics.notification(name, "failed");
                        tracing::warn!(receiver = %name, error = %why, "a notification was not delivered");
                        worker.fail(format!("the last delivery failed: {why}"));
                        shared.tell_readiness();
                    }
                }
            }
        });
        outlet
    }

    /// Whether any receiver is configured (a pass works out its notices only then).
    pub fn listening(&self) -> bool {
        !crate::sync::lock(&self.shared.state).outlets.is_empty()
    }

    /// Hands a pass's notices to the receivers that want them; never waits.
    pub fn tell(&self, notices: &[Notice]) {
        if notices.is_empty() {
            return;
        }
        let outlets = crate::sync::lock(&self.shared.state).outlets.clone();
        for outlet in &outlets {
            for notice in notices {
                if outlet.receiver.wants(notice.kind, &notice.plan) {
                    self.offer(outlet, Delivery::Message(notice.clone()));
                }
                // Only an Alertmanager receiver has `silence` (the configuration's rule).
                let silences =
                    outlet.receiver.silence.is_some() && outlet.receiver.hears(&notice.plan);
                let Some(node) = notice.node.clone().filter(|_| silences) else {
                    continue;
                };
                match notice.kind {
                    Kind::NodeStarted => self.offer(outlet, Delivery::Silence(notice.clone())),
                    Kind::NodeDone | Kind::NodeFailed | Kind::NodeHeld => self.offer(
                        outlet,
                        Delivery::Unsilence {
                            plan: notice.plan.clone(),
                            node,
                        },
                    ),
                    _ => {}
                }
            }
        }
    }

    fn offer(&self, outlet: &Outlet, delivery: Delivery) {
        if outlet.queue.try_send(delivery).is_err() {
            self.shared
                .metrics
                .notification(&outlet.receiver.name, "dropped");
            outlet.fail(format!(
                "its queue is full ({QUEUE}), so notifications are dropped: it is slow or away"
            ));
            self.shared.tell_readiness();
        }
    }
}

impl Outlet {
    fn fail(&self, why: String) {
        let at = jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .unwrap_or_default();
        *crate::sync::lock(&self.failing) = Some(format!("{why} (at {at})"));
    }
}

impl Shared {
    /// `/readyz` tells of a refused configuration and of each failing receiver.
    fn tell_readiness(&self) {
        let state = crate::sync::lock(&self.state);
        let mut told: Vec<String> = state.problem.iter().cloned().collect();
        for outlet in &state.outlets {
            if let Some(why) = crate::sync::lock(&outlet.failing).as_ref() {
                told.push(format!("receiver {}: {why}", outlet.receiver.name));
            }
        }
        drop(state);
        let notice = (!told.is_empty()).then(|| format!("notifications: {}", told.join("; ")));
        self.readiness.set_notice(NOTICE, notice);
    }

    /// Delivers with retries: a receiver away, or answering 429 or 5xx, is tried again after
    /// 1, 2, then 4 s; any other answer but 2xx fails at once.
    async fn deliver(
        &self,
        receiver: &Receiver,
        delivery: &Delivery,
        cluster: Option<&str>,
    ) -> Result<(), String> {
        let mut wait = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.deliver_once(receiver, delivery, cluster).await {
                Ok(()) => return Ok(()),
                Err(Failure::Final(why)) => return Err(why),
                Err(Failure::Again(why)) if attempt >= ATTEMPTS => {
                    return Err(format!("{why} ({ATTEMPTS} tries)"));
                }
                Err(Failure::Again(_)) => {
                    tokio::time::sleep(wait).await;
                    wait *= 2;
                    attempt += 1;
                }
            }
        }
    }

    async fn deliver_once(
        &self,
        receiver: &Receiver,
        delivery: &Delivery,
        cluster: Option<&str>,
    ) -> Result<(), Failure> {
        let url = self.url(receiver).map_err(Failure::Final)?;
        let api = |path: &str| format!("{}/api/v2/{path}", url.trim_end_matches('/'));
        let (target, body, content_type) = match (delivery, receiver.kind) {
            (Delivery::Message(notice), kind) => {
                let body = match kind {
                    ReceiverKind::Webhook => notice.json(cluster),
                    ReceiverKind::Cloudevents => notice.cloud_event(cluster, &event_id(notice)),
                    ReceiverKind::Slack => notice.slack(cluster),
                    ReceiverKind::Discord => notice.discord(cluster),
                    ReceiverKind::Alertmanager => {
                        notice.alert(cluster, &later(&notice.time, config::DEFAULT_SILENCE))
                    }
                };
                let target = match kind {
                    ReceiverKind::Alertmanager => api("alerts"),
                    _ => url.clone(),
                };
                let content_type = match kind {
                    ReceiverKind::Cloudevents => "application/cloudevents+json",
                    _ => "application/json",
                };
                (target, body, content_type)
            }
            (Delivery::Silence(notice), _) => {
                let Some(silence) = &receiver.silence else {
                    return Ok(());
                };
                let node = notice.node.as_deref().unwrap_or_default();
                let comment = format!(
                    "node {node} is upgraded by Plan {}/{}{}",
                    notice.namespace,
                    notice.plan,
                    notice
                        .version
                        .as_deref()
                        .map(|v| format!(" to {v}"))
                        .unwrap_or_default()
                );
                let ends = later(&notice.time, silence.lasting());
                let body = message::silence(
                    &silence.alerts,
                    silence.node_label(),
                    node,
                    &comment,
                    (&notice.time, &ends),
                );
                let answer = self
                    .post(receiver, &api("silences"), &body, "application/json")
                    .await?;
                let id = serde_json::from_slice::<serde_json::Value>(&answer)
                    .ok()
                    .and_then(|v| v["silenceID"].as_str().map(str::to_owned))
                    .ok_or_else(|| {
                        Failure::Final("the Alertmanager answered no silenceID".into())
                    })?;
                let key = (receiver.name.clone(), notice.plan.clone(), node.to_owned());
                crate::sync::lock(&self.silences).insert(key, id);
                return Ok(());
            }
            (Delivery::Unsilence { plan, node }, _) => {
                let key = (receiver.name.clone(), plan.clone(), node.clone());
                let Some(id) = crate::sync::lock(&self.silences).remove(&key) else {
                    return Ok(());
                };
                let target = api(&format!("silence/{id}"));
                let response = self
                    .http
                    .delete(&target)
                    .timeout(receiver.timeout())
                    .send()
                    .await
                    .map_err(|e| Failure::Again(describe(e)))?;
                return match response.status().as_u16() {
                    200..=299 | 404 => Ok(()),
                    code => {
                        crate::sync::lock(&self.silences).insert(key, id);
                        Err(Failure::of_status(code, "expiring a silence"))
                    }
                };
            }
        };
        self.post(receiver, &target, &body, content_type)
            .await
            .map(|_| ())
    }

    /// POSTs JSON; the answer's body (bounded) when it is 2xx.
    async fn post(
        &self,
        receiver: &Receiver,
        url: &str,
        body: &serde_json::Value,
        content_type: &str,
    ) -> Result<Vec<u8>, Failure> {
        let mut response = self
            .http
            .post(url)
            .timeout(receiver.timeout())
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| Failure::Again(describe(e)))?;
        let code = response.status().as_u16();
        if !(200..300).contains(&code) {
            return Err(Failure::of_status(code, "posting"));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Failure::Again(describe(e)))?
        {
            if answer.len() + chunk.len() > MAX_ANSWER {
                break;
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(answer)
    }

    /// The receiver's URL: as written, or read now from its Secret (so a rotated one is used
    /// at once).
    fn url(&self, receiver: &Receiver) -> Result<String, String> {
        if let Some(url) = &receiver.url {
            return Ok(url.clone());
        }
        let Some(from) = &receiver.url_from else {
            return Err("no url".to_owned());
        };
        let secret = self
            .secrets
            .get(&ObjectRef::new(&from.secret).within(&self.namespace))
            .ok_or_else(|| {
                format!(
                    "Secret {}/{} (urlFrom) does not exist",
                    self.namespace, from.secret
                )
            })?;
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(&from.key))
            .ok_or_else(|| {
                format!(
                    "Secret {}/{} has no key {:?} (urlFrom)",
                    self.namespace, from.secret, from.key
                )
            })?;
        let url = String::from_utf8(bytes.0.clone()).map_err(|_| {
            format!(
                "Secret {}/{} key {:?} is not text",
                self.namespace, from.secret, from.key
            )
        })?;
        let url = url.trim().to_owned();
        config::check_url(&url).map_err(|e| {
            format!(
                "Secret {}/{} key {:?}: {e}",
                self.namespace, from.secret, from.key
            )
        })?;
        Ok(url)
    }
}

/// Why a delivery failed: for good, or worth another try.
enum Failure {
    Final(String),
    Again(String),
}

impl Failure {
    fn of_status(code: u16, doing: &str) -> Failure {
        let why = format!("{doing}: the receiver answered HTTP {code}");
        if code == 429 || code >= 500 {
            Failure::Again(why)
        } else {
            Failure::Final(why)
        }
    }
}

/// A CloudEvent's ID: the same notice gives the same ID, so a receiver can drop a repeat.
fn event_id(notice: &Notice) -> String {
    let digest = Sha256::digest(serde_json::to_vec(notice).unwrap_or_default());
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// `time` (RFC 3339) plus `lasting`, in RFC 3339.
fn later(time: &str, lasting: Duration) -> String {
    let start = time
        .parse::<jiff::Timestamp>()
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let span = jiff::SignedDuration::try_from(lasting).unwrap_or_default();
    start
        .checked_add(span)
        .unwrap_or(start)
        .round(jiff::Unit::Second)
        .unwrap_or(start)
        .to_string()
}

/// A reqwest error with its causes, without its URL: a chat's webhook URL is its secret.
fn describe(error: reqwest::Error) -> String {
    crate::error::with_causes(&error.without_url())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{Method, StatusCode, Uri};
    use axum::routing::any;
    use std::collections::BTreeMap;
    use std::collections::VecDeque;

    /// A receiver on loopback: answers with the statuses queued (then 200), and keeps what it
    /// was sent.
    #[derive(Clone, Default)]
    struct Receiver {
        answers: Arc<Mutex<VecDeque<u16>>>,
        got: Arc<Mutex<Vec<(Method, String, serde_json::Value)>>>,
    }

    async fn receive(
        State(r): State<Receiver>,
        method: Method,
        uri: Uri,
        body: String,
    ) -> (StatusCode, String) {
        let value = serde_json::from_str(&body).unwrap_or_default();
        r.got
            .lock()
            .unwrap()
            .push((method, uri.path().to_owned(), value));
        let code = r.answers.lock().unwrap().pop_front().unwrap_or(200);
        let answer = if uri.path().ends_with("/silences") {
            r#"{"silenceID":"s-1"}"#
        } else {
            ""
        };
        (StatusCode::from_u16(code).unwrap(), answer.to_owned())
    }

    async fn receiver() -> (Receiver, String) {
        let r = Receiver::default();
        let app = axum::Router::new()
            .fallback(any(receive))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (r, url)
    }

    fn notifier() -> (Notifier, Arc<Readiness>, Arc<Metrics>) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let certificate = Arc::new(crate::server::tls::CertResolver::default());
        let readiness = Readiness::new(certificate);
        let metrics = Metrics::new();
        let (secrets, _) = kube::runtime::reflector::store();
        let notifier = Notifier::new(
            secrets,
            "system-upgrade",
            metrics.clone(),
            readiness.clone(),
        )
        .unwrap();
        (notifier, readiness, metrics)
    }

    fn configure(notifier: &Notifier, yaml: &str) {
        notifier.configure(Some(&ConfigMap {
            data: Some(BTreeMap::from([(
                config::CONFIG_KEY.to_owned(),
                yaml.to_owned(),
            )])),
            ..ConfigMap::default()
        }));
    }

    fn notice(kind: Kind, node: Option<&str>) -> Notice {
        Notice {
            kind,
            namespace: "system-upgrade".into(),
            plan: "agent-plan".into(),
            node: node.map(str::to_owned),
            version: Some("v1.31.2-k3s1".into()),
            reason: None,
            message: "something happened".into(),
            time: "2026-12-06T01:00:00Z".into(),
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..200 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn a_receiver_that_fails_for_a_while_gets_the_message_and_readyz_says_so_meanwhile() {
        let (r, url) = receiver().await;
        let (notifier, readiness, metrics) = notifier();
        configure(
            &notifier,
            &format!(
                "cluster: home\nreceivers:\n- {{name: chat, type: slack, url: '{url}/hook/secret-part'}}\n"
            ),
        );
        // 503 twice: retried after 1 and 2 s, then taken.
        r.answers.lock().unwrap().extend([503, 503]);
        notifier.tell(&[
            notice(Kind::NodeFailed, Some("a")),
            notice(Kind::NodeStarted, Some("a")),
        ]);
        until("the third try", || r.got.lock().unwrap().len() == 3).await;
        let got = r.got.lock().unwrap().clone();
        assert!(got.iter().all(|(_, path, _)| path == "/hook/secret-part"));
        assert!(
            got[2].2["text"]
                .as_str()
                .unwrap()
                .contains("[home] something happened")
        );
        until("the count", || {
            metrics
                .encode()
                .contains("suc_notifications_total{receiver=\"chat\",result=\"sent\"} 1")
        })
        .await;
        assert!(readiness.notices().is_empty(), "{:?}", readiness.notices());
        // NodeStarted is not among a receiver's default events.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(r.got.lock().unwrap().len(), 3);

        // A 404 fails at once: counted, and told by /readyz without the URL (the secret).
        r.answers.lock().unwrap().push_back(404);
        notifier.tell(&[notice(Kind::PlanStalled, None)]);
        until("the failure", || !readiness.notices().is_empty()).await;
        let told = readiness.notices().join("\n");
        assert!(
            told.contains("receiver chat: the last delivery failed"),
            "{told}"
        );
        assert!(told.contains("HTTP 404"), "{told}");
        assert!(!told.contains("secret-part"), "{told}");
        assert!(
            metrics
                .encode()
                .contains("suc_notifications_total{receiver=\"chat\",result=\"failed\"} 1")
        );
        // The next delivery that succeeds clears it.
        notifier.tell(&[notice(Kind::PlanComplete, None)]);
        until("recovery", || readiness.notices().is_empty()).await;
    }

    #[tokio::test]
    async fn an_alertmanager_gets_alerts_and_silences_a_node_while_it_is_upgraded() {
        let (r, url) = receiver().await;
        let (notifier, _, _) = notifier();
        configure(
            &notifier,
            &format!(
                "receivers:\n- name: am\n  type: alertmanager\n  url: '{url}/'\n  events: [NodeFailed]\n  \
                 silence: {{alerts: [KubeNodeUnschedulable, KubeNodeNotReady], for: 30m}}\n"
            ),
        );
        notifier.tell(&[notice(Kind::NodeStarted, Some("a"))]);
        notifier.tell(&[notice(Kind::NodeDone, Some("a"))]);
        notifier.tell(&[notice(Kind::NodeFailed, Some("b"))]);
        until("three requests", || r.got.lock().unwrap().len() == 3).await;
        let got = r.got.lock().unwrap().clone();
        assert_eq!(
            (got[0].0.clone(), got[0].1.as_str()),
            (Method::POST, "/api/v2/silences")
        );
        let silence = &got[0].2;
        assert_eq!(
            silence["matchers"][0]["value"],
            "KubeNodeUnschedulable|KubeNodeNotReady"
        );
        assert_eq!(
            silence["matchers"][1],
            serde_json::json!({"name": "node", "value": "a", "isRegex": false, "isEqual": true})
        );
        assert_eq!(silence["endsAt"], "2026-12-06T01:30:00Z");
        assert_eq!(
            (got[1].0.clone(), got[1].1.as_str()),
            (Method::DELETE, "/api/v2/silence/s-1")
        );
        assert_eq!(got[2].1, "/api/v2/alerts");
        assert_eq!(
            got[2].2[0]["labels"]["alertname"],
            "SystemUpgradeNodeFailed"
        );
    }

    #[tokio::test]
    async fn a_refused_configuration_sends_nothing_and_says_why() {
        let (notifier, readiness, metrics) = notifier();
        configure(&notifier, "receivers:\n- {name: chat, type: slack}\n");
        let told = readiness.notices().join("\n");
        assert!(
            told.contains("is refused, nothing is sent: receivers[0]: set url"),
            "{told}"
        );
        assert!(
            metrics
                .encode()
                .contains("suc_notification_config_problems 1")
        );
        notifier.configure(None);
        assert!(readiness.notices().is_empty());
        assert!(
            metrics
                .encode()
                .contains("suc_notification_config_problems 0")
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts() {
        // A receiver that never answers within the test: its queue fills.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (notifier, readiness, metrics) = notifier();
        configure(
            &notifier,
            &format!("receivers:\n- {{name: slow, type: webhook, url: '{url}', timeout: 60s}}\n"),
        );
        let many: Vec<Notice> = (0..QUEUE + 10)
            .map(|_| notice(Kind::PlanStalled, None))
            .collect();
        notifier.tell(&many);
        let text = metrics.encode();
        assert!(
            text.contains("suc_notifications_total{receiver=\"slow\",result=\"dropped\"} "),
            "{text}"
        );
        assert!(!text.contains("result=\"dropped\"} 0"), "{text}");
        assert!(readiness.notices().join("").contains("its queue is full"));
        drop(listener);
    }
}
