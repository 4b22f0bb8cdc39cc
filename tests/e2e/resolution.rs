//! Version resolution and the controller's own validation, against the real API server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use crate::scenario::Scenario;
use crate::support::{Ctx, NAMESPACE, wait};

const MINUTE: Duration = Duration::from_secs(60);

/// A channel server on loopback: what it answers can be changed, and what it was asked is kept.
struct ChannelServer {
    url: String,
    answer: Arc<Mutex<(u16, Option<String>)>>,
    requests: Arc<Mutex<Vec<HeaderMap>>>,
}

impl ChannelServer {
    fn start(ctx: &Ctx) -> ChannelServer {
        let answer = Arc::new(Mutex::new((
            302u16,
            Some("/k3s-io/k3s/releases/tag/v1.2.3+test".to_owned()),
        )));
        let requests: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
        let (a, r) = (answer.clone(), requests.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap| {
            let (a, r) = (a.clone(), r.clone());
            async move {
                r.lock().unwrap().push(headers);
                let (code, location) = a.lock().unwrap().clone();
                let status = StatusCode::from_u16(code).unwrap();
                match location {
                    Some(location) => (status, [(header::LOCATION, location)]).into_response(),
                    None => status.into_response(),
                }
            }
        });
        let listener = ctx
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        ctx.runtime
            .spawn(async move { axum::serve(listener, app).await.unwrap() });
        ChannelServer {
            url: format!("http://{address}"),
            answer,
            requests,
        }
    }

    fn answer(&self, code: u16, location: Option<&str>) {
        *self.answer.lock().unwrap() = (code, location.map(str::to_owned));
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

/// A channel's 302 names the version; failures are visible and retried; a version wins.
pub fn channels_resolve_versions(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "chan", 1);
    let server = ChannelServer::start(ctx);
    let cluster_id = ctx
        .kubectl(&[
            "get",
            "namespace",
            "kube-system",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
        .expect_ok()
        .stdout;

    // First a failing channel, retried, with an event and a condition message.
    server.answer(503, None);
    let spec = |channel: &str| json!({"concurrency": 1, "channel": channel, "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan("chan", spec(&format!("{}/stable", server.url)), json!({}));
    let message = s.wait_condition("chan", "LatestResolved", "False", "ChannelError", MINUTE);
    assert!(
        message.contains("unexpected response: HTTP/1.1 503 Service Unavailable"),
        "{message}"
    );
    wait("retries", MINUTE, || (server.count() >= 2).then_some(()));
    assert!(s.events(NAMESPACE, "Plan", "chan").iter().any(|e| e.starts_with("ResolveFailed: Failed to resolve latest version from Spec.Channel: unexpected response")));
    assert!(s.jobs("chan").is_empty());

    // The channel recovers with a 302.
    server.answer(302, Some("/k3s-io/k3s/releases/tag/v1.2.3+test"));
    wait("the resolved version", MINUTE, || {
        (s.plan_json("chan")["status"]["latestVersion"] == "v1.2.3-test").then_some(())
    });
    assert_eq!(
        s.condition("chan", "LatestResolved").unwrap(),
        ("True".into(), "Channel".into(), "".into())
    );
    let headers = server.requests.lock().unwrap().last().cloned().unwrap();
    assert_eq!(headers["x-suc-cluster-id"], cluster_id.as_str());
    s.wait_condition("chan", "Complete", "True", "Complete", MINUTE);
    let job = s.jobs("chan").into_iter().next().unwrap();
    let image = job.spec.unwrap().template.spec.unwrap().containers[0]
        .image
        .clone();
    assert_eq!(image.as_deref(), Some("rancher/k3s-upgrade:v1.2.3-test"));

    // A 200 names the version by the URL's last element.
    server.answer(200, None);
    s.apply_plan(
        "chan-200",
        spec(&format!("{}/releases/v9.1.0", server.url)),
        json!({}),
    );
    wait("v9.1.0", MINUTE, || {
        (s.plan("chan-200")
            .and_then(|p| p.status?.latest_version)
            .as_deref()
            == Some("v9.1.0"))
        .then_some(())
    });

    // A version wins; the channel is never asked. (Above v1.2.3-test, which the node now runs:
    // a lower one would be refused as a downgrade.)
    let before = server.count();
    let mut both = spec(&format!("{}/never", server.url));
    both["version"] = json!("v1.2.4");
    s.apply_plan("chan-version", both, json!({}));
    wait("the static version", MINUTE, || {
        (s.plan("chan-version")
            .and_then(|p| p.status?.latest_version)
            .as_deref()
            == Some("v1.2.4"))
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        server.count(),
        before,
        "the channel of a Plan with a version was polled"
    );
    for plan in ["chan", "chan-200", "chan-version"] {
        s.delete_plan(plan);
    }
}

/// A K3s channel that answers an older version after a newer one: the older one is never
/// followed (no Job, `latestVersion` and the hash stay), a warning says what it answered, and
/// a channel flapping between the two replaces nothing.
pub fn a_channel_that_goes_back_is_not_followed(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "back", 1);
    let server = ChannelServer::start(ctx);
    server.answer(302, Some("/k3s-io/k3s/releases/tag/v1.30.4+k3s1"));
    let spec = json!({"concurrency": 1, "channel": format!("{}/stable", server.url),
        "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan("back", spec, json!({}));
    s.wait_condition("back", "Complete", "True", "Complete", MINUTE);
    let hash = s.plan_json("back")["status"]["latestHash"].clone();
    let job = s.jobs("back")[0].metadata.uid.clone();
    server.answer(302, Some("/k3s-io/k3s/releases/tag/v1.30.2+k3s1"));
    // Asked now rather than after the poll interval: another channel URL is due at once.
    let poll = |s: &Scenario, n: u32| {
        let mut edited = s.plan_json("back")["spec"].clone();
        edited["channel"] = json!(format!("{}/stable?poll={n}", server.url));
        s.apply_plan("back", edited, json!({}));
    };
    poll(&s, 1);
    wait("the warning", MINUTE, || {
        s.plan_events("back")
            .iter()
            .any(|e| {
                e.starts_with(
                    "ChannelWentBack: the channel answers v1.30.2+k3s1, older than v1.30.4+k3s1",
                )
            })
            .then_some(())
    });
    let plan = s.plan_json("back");
    assert_eq!(plan["status"]["latestVersion"], "v1.30.4-k3s1");
    assert_eq!(plan["status"]["latestHash"], hash);
    let (status, _, message) = s.condition("back", "LatestResolved").unwrap();
    assert_eq!(status, "True");
    assert!(message.contains("still applying v1.30.4+k3s1"), "{message}");
    // Flapping back up changes nothing either.
    server.answer(302, Some("/k3s-io/k3s/releases/tag/v1.30.4+k3s1"));
    poll(&s, 2);
    std::thread::sleep(Duration::from_secs(3));
    let jobs = s.jobs("back");
    assert_eq!(jobs.len(), 1, "no new Job");
    assert_eq!(jobs[0].metadata.uid, job);
    assert_eq!(s.condition("back", "Complete").unwrap().0, "True");
    s.cleanup();
}

/// A channel answer that cannot be a version (a newline in the Location) is not stored: the Plan
/// says why and starts nothing, and the next good answer is stored and rolled out.
pub fn a_bad_channel_answer_is_refused_until_a_good_one(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "badchan", 1);
    let server = ChannelServer::start(ctx);
    server.answer(302, Some("/k3s-io/k3s/releases/tag/v1.2.3%0A"));
    let spec = json!({"concurrency": 1, "channel": format!("{}/stable", server.url), "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan("badchan", spec, json!({}));
    let message = s.wait_condition("badchan", "LatestResolved", "False", "ChannelError", MINUTE);
    assert!(
        message.contains(
            "the channel answered a version that cannot be used: \"v1.2.3\\n\" cannot be used as an image tag"
        ),
        "{message}"
    );
    let status = s.plan_json("badchan")["status"].clone();
    assert!(status["latestVersion"].is_null(), "{status}");
    assert!(s.jobs("badchan").is_empty());

    // The channel is asked again (with backoff) and its good answer repairs the Plan.
    server.answer(302, Some("/k3s-io/k3s/releases/tag/v1.2.4+test"));
    wait("the good version", MINUTE, || {
        (s.plan_json("badchan")["status"]["latestVersion"] == "v1.2.4-test").then_some(())
    });
    s.wait_condition("badchan", "Complete", "True", "Complete", MINUTE);
    let headers = server.requests.lock().unwrap().last().cloned().unwrap();
    assert!(
        headers
            .get("x-suc-latest-version")
            .is_none_or(|v| v.to_str().is_ok())
    );
    s.delete_plan("badchan");
}

/// Plans that reached the cluster while the webhook was down are refused
/// by the controller with the webhook's messages, and proceed once fixed.
pub fn plans_that_bypassed_the_webhook_are_validated(ctx: &Ctx) {
    let server = ctx.ensure_server();
    let s = Scenario::new(ctx, "byp", 1);
    ctx.kubectl(&[
        "delete",
        "mutatingwebhookconfiguration,validatingwebhookconfiguration",
        "system-upgrade-controller",
    ])
    .expect_ok();
    let base = json!({"concurrency": 1, "version": "v1.30.4+k3s1", "upgrade": {"image": "rancher/k3s-upgrade"}});
    let mut drain = base.clone();
    drain["drain"] = json!({"deleteLocalData": true, "deleteEmptydirData": true});
    let mut delay = base.clone();
    delay["postCompleteDelay"] = json!("-30s");
    let mut window = base.clone();
    window["window"] = json!({"days": ["mo"], "startTime": "25:00", "endTime": "03:00"});
    let mut secret = base.clone();
    secret["secrets"] = json!([{"name": "byp-secret", "path": "/s"}]);
    let mut unresolved = base.clone();
    unresolved.as_object_mut().unwrap().remove("version");
    let mut no_image = base.clone();
    no_image["upgrade"]["image"] = json!("");
    no_image["version"] = json!("v1.2.3+test");
    let mut no_concurrency = base.clone();
    no_concurrency
        .as_object_mut()
        .unwrap()
        .remove("concurrency");
    let cases = [
        (
            "byp-drain",
            drain,
            "spec.drain cannot specify both deleteEmptydirData and deleteLocalData",
        ),
        ("byp-delay", delay, "spec.postCompleteDelay is negative"),
        ("byp-window", window, "spec.window is invalid"),
        ("byp-secret", secret, "secrets \"byp-secret\" not found"),
        (
            "byp-unresolved",
            unresolved,
            "neither version nor channel is set",
        ),
        ("byp-image", no_image, "spec.upgrade.image"),
        (
            "byp-noconc",
            no_concurrency,
            "spec.concurrency: not set, so this Plan upgrades no node",
        ),
    ];
    for (name, spec, _) in &cases {
        s.apply_plan(name, spec.clone(), json!({}));
    }
    for (name, _, expected) in &cases {
        let message = s.wait_condition(name, "Validated", "False", "Error", MINUTE);
        assert!(message.contains(expected), "{name}: {message}");
        assert_eq!(s.condition(name, "Complete").unwrap().1, "NotReady");
        assert!(
            s.events(NAMESPACE, "Plan", name)
                .iter()
                .any(|e| e.starts_with("ValidateFailed: Failed to validate plan: "))
        );
        assert!(s.jobs(name).is_empty());
    }
    // The unresolvable Plan says so in LatestResolved too, and has no version or hash.
    assert_eq!(
        s.condition("byp-unresolved", "LatestResolved").unwrap(),
        (
            "False".into(),
            "Error".into(),
            "cannot resolve plan: missing channel and version".into()
        )
    );
    let status = s.plan_json("byp-unresolved")["status"].clone();
    assert!(
        status.get("latestVersion").is_none() && status.get("latestHash").is_none(),
        "{status}"
    );
    // Resolution and hash do not wait for the other rules (the Go controller's own e2e suite
    // expects this of a Plan without an upgrade image).
    assert_eq!(
        s.condition("byp-image", "LatestResolved").unwrap(),
        ("True".into(), "Version".into(), "".into())
    );
    let status = s.plan_json("byp-image")["status"].clone();
    assert_eq!(status["latestVersion"], "v1.2.3-test");
    assert_eq!(
        status["latestHash"].as_str().map(str::len),
        Some(56),
        "{status}"
    );
    // Creating the Secret lets its Plan go on without touching the Plan.
    ctx.put_secret("byp-secret", "k=v");
    s.wait_condition("byp-secret", "Complete", "True", "Complete", MINUTE);
    // Fixing a spec lets it go on.
    let mut fixed = cases[0].1.clone();
    fixed["drain"]
        .as_object_mut()
        .unwrap()
        .remove("deleteLocalData");
    s.apply_plan("byp-drain", fixed, json!({}));
    s.wait_condition("byp-drain", "Validated", "True", "PlanIsValid", MINUTE);
    for (name, _, _) in cases.iter().filter(|(name, _, _)| *name != "byp-noconc") {
        s.delete_plan(name);
    }
    ctx.kubectl(&["-n", NAMESPACE, "delete", "secret", "byp-secret"])
        .expect_ok();
    ctx.register_webhooks(&format!("https://127.0.0.1:{}", server.port));
    ctx.wait_for_ca_bundles();
    // A Plan stored without concurrency (as the Go controller ran it, upgrading nothing): an edit
    // through the webhook keeps it so, with a warning, instead of starting it silently.
    let edit = ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "plan",
        "byp-noconc",
        "--type=merge",
        "-p",
        r#"{"spec":{"version":"v1.30.5+k3s1"}}"#,
    ]);
    assert!(
        edit.ok && edit.stderr.contains("spec.concurrency is not set"),
        "{}{}",
        edit.stdout,
        edit.stderr
    );
    s.wait_observed("byp-noconc", MINUTE);
    let plan = s.plan_json("byp-noconc");
    assert!(plan["spec"].get("concurrency").is_none(), "{plan}");
    assert!(s.jobs("byp-noconc").is_empty());
    s.delete_plan("byp-noconc");
}
