//! The production Router, driven in-process: routes, status codes, limits and metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code may panic.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use std::sync::Arc;
use system_upgrade_controller::metrics::Metrics;
use system_upgrade_controller::server::tls::{self, CertResolver};
use system_upgrade_controller::server::{BODY_LIMIT, Readiness, router};
use tower::ServiceExt;

fn app() -> (axum::Router, Arc<Readiness>, Arc<CertResolver>) {
    let resolver = Arc::new(CertResolver::default());
    let readiness = Readiness::new(resolver.clone());
    (
        router("system-upgrade", Metrics::new(), readiness.clone(), None),
        readiness,
        resolver,
    )
}

async fn call(
    app: &axum::Router,
    method: &str,
    path: &str,
    body: impl Into<Body>,
) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(body.into())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

fn review(spec: Value) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3f1e",
            "kind": {"group": "upgrade.cattle.io", "version": "v1", "kind": "Plan"},
            "resource": {"group": "upgrade.cattle.io", "version": "v1", "resource": "plans"},
            "name": "p",
            "namespace": "system-upgrade",
            "operation": "CREATE",
            "userInfo": {"username": "admin"},
            "object": {"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan", "metadata": {"name": "p"}, "spec": spec},
        }
    })
    .to_string()
}

#[tokio::test]
async fn webhooks_answer_reviews_and_metrics_count_them() {
    let (app, _, _) = app();
    let valid = json!({"version": "v1.2.3", "nodeSelector": {}, "upgrade": {"image": "x"}});
    let (status, body) = call(&app, "POST", "/mutate", review(valid.clone())).await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["uid"], "3f1e");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(answer["response"]["patchType"], "JSONPatch");

    let mut invalid = valid;
    invalid["concurrency"] = json!(0);
    let (status, body) = call(&app, "POST", "/validate", review(invalid)).await;
    assert_eq!(status, StatusCode::OK, "a denial is a successful review");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], false);
    assert!(
        answer["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("spec.concurrency")
    );

    let (status, metrics) = call(&app, "GET", "/metrics", Body::empty()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(metrics.contains("suc_admission_requests_total{webhook=\"mutate\",operation=\"CREATE\",result=\"patched\"} 1"), "{metrics}");
    assert!(metrics.contains("suc_admission_requests_total{webhook=\"validate\",operation=\"CREATE\",result=\"denied\"} 1"), "{metrics}");
    assert!(
        metrics.contains("suc_admission_duration_seconds_count{webhook=\"validate\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("suc_build_info{"), "{metrics}");
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_reason() {
    let (app, _, _) = app();
    for body in [
        "",
        "{",
        "[]",
        "{\"apiVersion\":\"admission.k8s.io/v1beta1\",\"kind\":\"AdmissionReview\"}",
        "\u{0}\u{1}",
    ] {
        let (status, text) = call(&app, "POST", "/validate", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
        assert!(text.starts_with("bad request: "), "{text}");
    }
    let (_, metrics) = call(&app, "GET", "/metrics", Body::empty()).await;
    assert!(metrics.contains("suc_admission_requests_total{webhook=\"validate\",operation=\"unknown\",result=\"bad_request\"} 5"), "{metrics}");
}

#[tokio::test]
async fn too_large_bodies_get_413() {
    let (app, _, _) = app();
    let (status, _) = call(&app, "POST", "/mutate", vec![b' '; BODY_LIMIT + 1]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // Without a Content-Length (streamed), the limit applies while reading.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; BODY_LIMIT / 4])),
    );
    let (status, _) = call(&app, "POST", "/mutate", Body::from_stream(chunks)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = call(&app, "POST", "/mutate", vec![b' '; BODY_LIMIT]).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "exactly the limit is read (and is not a review)"
    );
}

#[tokio::test]
async fn health_readiness_and_unknown_routes() {
    let (app, readiness, resolver) = app();
    assert_eq!(
        call(&app, "GET", "/healthz", Body::empty()).await.0,
        StatusCode::OK
    );
    let (status, text) = call(&app, "GET", "/readyz", Body::empty()).await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no serving certificate loaded yet\n"
        )
    );
    tls::self_signed(&resolver).unwrap();
    assert_eq!(
        call(&app, "GET", "/readyz", Body::empty()).await.0,
        StatusCode::OK
    );
    readiness.shut_down();
    let (status, text) = call(&app, "GET", "/readyz", Body::empty()).await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n"
        )
    );
    assert_eq!(
        call(&app, "GET", "/nope", Body::empty()).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&app, "GET", "/validate", Body::empty()).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}
