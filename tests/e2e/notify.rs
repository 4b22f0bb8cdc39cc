//! Notifications: the receivers of the ConfigMap `system-upgrade-controller-notifications`
//! hear of a rollout from the controller under test, through a receiver in this process that
//! plays a JSON webhook, a CloudEvents sink, Slack, Discord and an Alertmanager.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use serde_json::{Value, json};

use crate::scenario::Scenario;
use crate::support::{Ctx, NAMESPACE, wait};

const MINUTE: Duration = Duration::from_secs(60);
const CONFIGMAP: &str = "system-upgrade-controller-notifications";

/// One request a receiver got: method, path, content type and JSON body.
#[derive(Clone, Debug)]
struct Got {
    method: Method,
    path: String,
    content_type: String,
    body: Value,
}

/// Receivers on loopback: `/down/…` answers 500, Alertmanager's silences get an ID each, the
/// rest 200; every request is kept.
struct Receivers {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
}

impl Receivers {
    fn start(ctx: &Ctx) -> Receivers {
        let got: Arc<Mutex<Vec<Got>>> = Arc::default();
        let kept = got.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: String| {
                let kept = kept.clone();
                async move {
                    let content_type = headers
                        .get(header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let path = uri.path().to_owned();
                    let mut kept = kept.lock().unwrap();
                    kept.push(Got {
                        method,
                        path: path.clone(),
                        content_type,
                        body: serde_json::from_str(&body).unwrap_or(Value::Null),
                    });
                    if path.starts_with("/down/") {
                        (StatusCode::INTERNAL_SERVER_ERROR, String::new())
                    } else if path.ends_with("/api/v2/silences") {
                        (
                            StatusCode::OK,
                            json!({"silenceID": format!("s{}", kept.len())}).to_string(),
                        )
                    } else {
                        (StatusCode::OK, String::new())
                    }
                }
            },
        );
        let listener = ctx
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        ctx.runtime
            .spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receivers { url, got }
    }

    /// What was sent to paths starting with `prefix`.
    fn at(&self, prefix: &str) -> Vec<Got> {
        let got = self.got.lock().unwrap();
        got.iter()
            .filter(|g| g.path.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// The kinds the JSON webhook at `prefix` got, each with its node.
    fn kinds(&self, prefix: &str) -> Vec<String> {
        self.at(prefix)
            .iter()
            .map(|g| match g.body["node"].as_str() {
                Some(node) => format!("{}:{node}", g.body["kind"].as_str().unwrap_or("?")),
                None => g.body["kind"].as_str().unwrap_or("?").to_owned(),
            })
            .collect()
    }
}

fn apply_configmap(ctx: &Ctx, config: &str) {
    let map = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": CONFIGMAP, "namespace": NAMESPACE},
        "data": {"notifications.yaml": config}});
    ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&map.to_string()))
        .expect_ok();
}

fn readyz(ctx: &Ctx) -> String {
    let info = ctx.ensure_server();
    let out = std::process::Command::new("curl")
        .args(["-sk", &format!("https://127.0.0.1:{}/readyz", info.port)])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// A rollout of two nodes and a failing one, told to each kind of receiver as configured: the
/// JSON webhook gets every event it lists, in order, once; CloudEvents, Slack (URL from a
/// Secret) and Discord get theirs; the Alertmanager silences each node while it is upgraded and
/// gets an alert for the failed node; a receiver that answers 500 is tried 4 times, counted and
/// named in /readyz, and the rollout never waits for it; a refused configuration says why.
pub fn notifications_reach_each_receiver_and_failures_are_told(ctx: &Ctx) {
    let server = ctx.ensure_server();
    let s = Scenario::new(ctx, "notify", 2);
    let r = Receivers::start(ctx);
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "notify-chat", "namespace": NAMESPACE},
        "stringData": {"url": format!("{}/slack/T00/B00/secret-part", r.url)}});
    ctx.kubectl_with_input(&["apply", "-f", "-"], Some(&secret.to_string()))
        .expect_ok();
    let plans = "plans: [notify, notify-bad]";
    apply_configmap(
        ctx,
        &format!(
            "cluster: e2e\nreceivers:\n\
             - {{name: hook, type: webhook, url: '{url}/hook', {plans},\n\
             \x20  events: [PlanStarted, NodeStarted, NodeDone, NodeFailed, PlanComplete, PlanStalled]}}\n\
             - {{name: ce, type: cloudevents, url: '{url}/ce', {plans}, events: [PlanComplete]}}\n\
             - {{name: chat, type: slack, urlFrom: {{secret: notify-chat, key: url}}, {plans}}}\n\
             - {{name: disc, type: discord, url: '{url}/discord', {plans}}}\n\
             - {{name: am, type: alertmanager, url: '{url}/am', {plans}, events: [NodeFailed],\n\
             \x20  silence: {{alerts: [KubeNodeUnschedulable, KubeNodeNotReady], for: 30m}}}}\n\
             - {{name: down, type: webhook, url: '{url}/down/x', {plans}, timeout: 2s}}\n",
            url = r.url
        ),
    );
    // The watch picks the ConfigMap up: a receiver's series appear.
    wait("the receivers to be configured", MINUTE, || {
        server
            .metrics()
            .contains("suc_notifications_total{receiver=\"down\",result=\"sent\"} 0")
            .then_some(())
    });

    s.apply_plan(
        "notify",
        json!({"concurrency": 1, "version": "v1.30.4+k3s1", "upgrade": {"image": "rancher/k3s-upgrade"}}),
        json!({"annotations": {"suc-test/duration": "1s"}}),
    );
    s.wait_condition("notify", "Complete", "True", "Complete", 2 * MINUTE);
    let (first, second) = (&s.nodes[0], &s.nodes[1]);
    wait("the webhook to hear the end", MINUTE, || {
        r.kinds("/hook")
            .contains(&"PlanComplete".to_owned())
            .then_some(())
    });
    let mut told = r.kinds("/hook");
    // Nodes start in an order of the controller's choosing.
    let started: Vec<String> = (told.iter())
        .filter_map(|k| k.strip_prefix("NodeStarted:").map(str::to_owned))
        .collect();
    assert_eq!(started.len(), 2, "{told:?}");
    let (a, b) = (&started[0], &started[1]);
    assert_eq!(
        told,
        [
            "PlanStarted".to_owned(),
            format!("NodeStarted:{a}"),
            format!("NodeDone:{a}"),
            format!("NodeStarted:{b}"),
            format!("NodeDone:{b}"),
            "PlanComplete".to_owned(),
        ],
        "each once, in order"
    );
    assert!([first, second].contains(&a) && a != b);
    let hook = r.at("/hook");
    assert_eq!(hook[0].content_type, "application/json");
    assert_eq!(hook[0].body["namespace"], NAMESPACE);
    assert_eq!(hook[0].body["plan"], "notify");
    assert_eq!(hook[0].body["cluster"], "e2e");
    assert_eq!(hook[0].body["version"], "v1.30.4-k3s1");

    let ce = r.at("/ce");
    assert_eq!(ce.len(), 1, "{ce:?}");
    assert_eq!(ce[0].content_type, "application/cloudevents+json");
    assert_eq!(ce[0].body["specversion"], "1.0");
    assert_eq!(ce[0].body["type"], "io.cattle.upgrade.plan.v1.PlanComplete");
    assert_eq!(
        ce[0].body["source"],
        format!("/apis/upgrade.cattle.io/v1/namespaces/{NAMESPACE}/plans/notify")
    );
    assert_eq!(ce[0].body["data"]["kind"], "PlanComplete");

    // The default events: the start and the end, not each node's.
    let chat = r.at("/slack/T00/B00/secret-part");
    let texts: Vec<&str> = chat
        .iter()
        .filter_map(|g| g.body["text"].as_str())
        .collect();
    assert_eq!(texts.len(), 2, "{texts:?}");
    assert!(
        texts[0].contains(
            "[e2e] Plan system-upgrade/notify started rolling out to v1.30.4-k3s1 on 2 node(s)"
        ),
        "{texts:?}"
    );
    assert!(
        texts[1].contains(
            "Plan system-upgrade/notify is complete at v1.30.4-k3s1: 2 of 2 node(s) done"
        ),
        "{texts:?}"
    );
    let discord = r.at("/discord");
    assert_eq!(discord.len(), 2, "{discord:?}");
    assert_eq!(discord[1].body["allowed_mentions"]["parse"], json!([]));

    // Each node silenced when it started and the silence expired when it was done, in order.
    let am: Vec<(Method, String)> = r
        .at("/am")
        .iter()
        .map(|g| (g.method.clone(), g.path.clone()))
        .collect();
    assert_eq!(am.len(), 4, "{am:?}");
    let silences = r.at("/am/api/v2/silences");
    for (silence, node) in silences.iter().zip([a, b]) {
        assert_eq!(
            silence.body["matchers"][0]["value"],
            "KubeNodeUnschedulable|KubeNodeNotReady"
        );
        assert_eq!(silence.body["matchers"][1]["name"], "node");
        assert_eq!(silence.body["matchers"][1]["value"], node.as_str());
        assert_eq!(silence.body["createdBy"], "system-upgrade-controller");
    }
    assert_eq!(am[0].0, Method::POST);
    assert_eq!(am[1].0, Method::DELETE);
    assert!(am[1].1.starts_with("/am/api/v2/silence/s"), "{am:?}");

    // The receiver that answers 500: 4 tries of each message, each counted failed once, and
    // /readyz names it (without its URL) while the server stays ready.
    wait("the failing receiver's count", MINUTE, || {
        (server.sample("suc_notifications_total{receiver=\"down\",result=\"failed\"}") >= 2.0)
            .then_some(())
    });
    let tries = r.at("/down/").len();
    assert!(tries >= 8, "two messages, four tries each: {tries}");
    let ready = readyz(ctx);
    assert!(ready.starts_with("ok\n"), "{ready}");
    assert!(
        ready.contains("warning: notifications: receiver down: the last delivery failed: posting: the receiver answered HTTP 500 (4 tries)"),
        "{ready}"
    );
    assert!(!ready.contains(&r.url), "no URL in /readyz: {ready}");

    // A failing node: the webhook and the Alertmanager hear of it.
    told = r.kinds("/hook");
    s.apply_plan(
        "notify-bad",
        // Not K3s, so no version rule holds it: an OS upgrade whose pods fail.
        json!({"concurrency": 1, "version": "v2.0.0", "upgrade": {"image": "example/os-upgrade"}}),
        json!({"labels": {"suc-test/fail": "true"}}),
    );
    s.wait_condition("notify-bad", "Complete", "False", "JobFailed", 2 * MINUTE);
    wait("the failure to be told", MINUTE, || {
        r.kinds("/hook")
            .iter()
            .any(|k| k == "PlanStalled")
            .then_some(())
    });
    let now = r.kinds("/hook");
    let new: Vec<&String> = now[told.len()..].iter().collect();
    let failed = new
        .iter()
        .find_map(|k| k.strip_prefix("NodeFailed:"))
        .expect("NodeFailed");
    assert!(new.iter().any(|k| *k == "PlanStarted"), "{new:?}");
    let failure = r
        .at("/hook")
        .into_iter()
        .find(|g| g.body["kind"] == "NodeFailed")
        .unwrap();
    assert!(
        failure.body["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "node {failed} failed to upgrade to v2.0.0 (Plan system-upgrade/notify-bad): "
            )),
        "{}",
        failure.body
    );
    wait("the alert", MINUTE, || {
        r.at("/am/api/v2/alerts").first().cloned()
    });
    let alert = &r.at("/am/api/v2/alerts")[0].body[0];
    assert_eq!(alert["labels"]["alertname"], "SystemUpgradeNodeFailed");
    assert_eq!(alert["labels"]["node"], failed);
    assert_eq!(alert["labels"]["severity"], "warning");
    // Its silence was expired when it failed, so its own alerts fire.
    wait("the failed node's silence to go", MINUTE, || {
        (r.at("/am")
            .iter()
            .filter(|g| g.method == Method::DELETE)
            .count()
            == 3)
            .then_some(())
    });

    // A configuration with a mistake is refused: nothing is sent, and /readyz says which field.
    apply_configmap(
        ctx,
        "receivers:\n- {name: hook, type: webhook, url: 'ftp://x'}\n",
    );
    wait("the refusal in /readyz", MINUTE, || {
        readyz(ctx)
            .contains("ConfigMap system-upgrade-controller-notifications is refused, nothing is sent: receivers[0].url: give an http:// or https:// URL")
            .then_some(())
    });
    assert_eq!(server.sample("suc_notification_config_problems"), 1.0);
    ctx.kubectl(&["-n", NAMESPACE, "delete", "configmap", CONFIGMAP])
        .expect_ok();
    wait("/readyz to be clear", MINUTE, || {
        (!readyz(ctx).contains("notifications")).then_some(())
    });
    ctx.kubectl(&["-n", NAMESPACE, "delete", "secret", "notify-chat"])
        .expect_ok();
    s.cleanup();
}
