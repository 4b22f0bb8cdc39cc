//! The one HTTPS server: admission webhooks, health, readiness and metrics on one axum Router.

pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::admission::{self, Webhook};
use crate::metrics::{AdmissionLabels, Metrics, WebhookLabels};
use tls::CertResolver;

/// Largest request body accepted: an AdmissionReview carries the object and, on updates, the old
/// object, each at most the API server's 3 MiB object limit.
pub const BODY_LIMIT: usize = 7 * 1024 * 1024;

/// Every request is answered within this time, below the webhooks' `timeoutSeconds: 5`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// How long in-flight requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// What `/readyz` reports: ready once a certificate is served and, when the controller runs, its
/// caches have synced; not ready from the start of a shutdown.
#[derive(Debug, Default)]
pub struct Readiness {
    certificate: Arc<CertResolver>,
    shutting_down: AtomicBool,
    waiting_for_controller: AtomicBool,
}

impl Readiness {
    pub fn new(certificate: Arc<CertResolver>) -> Arc<Self> {
        Arc::new(Self {
            certificate,
            shutting_down: AtomicBool::new(false),
            waiting_for_controller: AtomicBool::new(false),
        })
    }

    /// Readiness now also waits for [`Readiness::controller_ready`].
    pub fn expect_controller(&self) {
        self.waiting_for_controller.store(true, Ordering::SeqCst);
    }

    pub fn controller_ready(&self) {
        self.waiting_for_controller.store(false, Ordering::SeqCst);
    }

    /// Why the server is not ready, if it is not.
    pub fn problem(&self) -> Option<&'static str> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Some("shutting down")
        } else if !self.certificate.is_loaded() {
            Some("no serving certificate loaded yet")
        } else if self.waiting_for_controller.load(Ordering::SeqCst) {
            Some("controller caches not synced yet")
        } else {
            None
        }
    }

    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

/// The server's routes and limits; tests drive this same Router in-process.
pub fn router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, readiness })
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(CatchPanicLayer::new())
}

async fn mutate(State(state): State<AppState>, body: Bytes) -> Response {
    review(&state, Webhook::Mutate, &body)
}

async fn validate(State(state): State<AppState>, body: Bytes) -> Response {
    review(&state, Webhook::Validate, &body)
}

fn review(state: &AppState, webhook: Webhook, body: &[u8]) -> Response {
    let started = Instant::now();
    let outcome = admission::handle(webhook, body);
    let (operation, result) = match &outcome {
        Ok(answer) => (answer.operation, answer.decision.as_str()),
        Err(_) => ("unknown", "bad_request"),
    };
    let labels = AdmissionLabels {
        webhook: webhook.as_str(),
        operation,
        result,
    };
    state
        .metrics
        .admission_requests
        .get_or_create(&labels)
        .inc();
    state
        .metrics
        .admission_duration
        .get_or_create(&WebhookLabels {
            webhook: webhook.as_str(),
        })
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(answer) => {
            tracing::debug!(
                webhook = webhook.as_str(),
                operation,
                result,
                "answered admission review"
            );
            Json(answer.to_json()).into_response()
        }
        Err(bad) => {
            tracing::info!(webhook = webhook.as_str(), reason = %bad, "refused a malformed admission review");
            (StatusCode::BAD_REQUEST, format!("bad request: {bad}\n")).into_response()
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness.problem() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(problem) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {problem}\n"),
        )
            .into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Binds the listener now (so a port in use fails start-up) and returns its address and the
/// future that serves until `stop` is cancelled. On stop, readiness turns false first, then
/// in-flight requests get [`SHUTDOWN_GRACE`] to finish.
pub fn bind(
    listen: SocketAddr,
    app: Router,
    resolver: Arc<CertResolver>,
    readiness: Arc<Readiness>,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let config = axum_server::tls_rustls::RustlsConfig::from_config(tls::server_config(resolver));
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        readiness.shut_down();
        shutdown.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let server = axum_server::from_tcp_rustls(listener, config)?
        .handle(handle)
        .serve(app.into_make_service());
    Ok((address, server))
}
