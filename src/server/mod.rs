//! The one HTTPS server: admission webhooks, health, readiness and metrics on one axum Router.

pub mod conn;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt as _;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

use crate::admission::{self, Webhook};
use crate::controller::objects::ObjectGates;
use crate::controller::select;
use crate::metrics::{AdmissionLabels, Metrics, WebhookLabels};
use crate::validation;
use crate::validation::versions;
use tls::CertResolver;

/// Largest request body accepted. The API server refuses requests over 3 MiB and etcd stores at
/// most 1.5 MiB per object, so an AdmissionReview with the object and the old object fits.
pub const BODY_LIMIT: usize = 3 * 1024 * 1024;

/// How much of a too-large body is read (and dropped) before the 413 is sent.
pub const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// Most bytes of admission bodies held at once, across all connections. A body takes its share
/// as it arrives; past the budget a review is answered 429 (the API server retries it).
pub const BODY_BUDGET: usize = 8 * 1024 * 1024;

/// Most reviews parsed and validated at once (large ones on blocking threads): the work is
/// CPU-bound and must not hold up the async workers that also renew the leader Lease.
pub const MAX_REVIEWS: usize = 2;

/// Largest body reviewed on the async worker that read it (still one of [`MAX_REVIEWS`] at a
/// time): a typical Plan's review is 1 KiB and takes about 13 µs, less than the hop to a blocking
/// thread, which halved `/validate`'s throughput. Larger ones go to the blocking threads.
pub const INLINE_REVIEW_LIMIT: usize = 16 * 1024;

/// How long a review waits for body budget before it is answered 429.
pub const BUSY_WAIT: Duration = Duration::from_secs(1);

/// Time for the TLS handshake, and then for the first request's headers.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 pings on connections silent for this long, closed when the ping is not answered.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Every request is answered within this time, below the webhooks' `timeoutSeconds: 5`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// How long in-flight requests may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How long a watch error counts after it happened, unless repeated (watches retry within 5 s).
const WATCH_ERROR_FRESH: Duration = Duration::from_secs(15);

/// What `/readyz` reports: ready once a certificate is served and, when the controller runs, its
/// caches have synced; not ready from the start of a shutdown.
#[derive(Debug, Default)]
pub struct Readiness {
    certificate: Arc<CertResolver>,
    shutting_down: AtomicBool,
    waiting_for_certificate: AtomicBool,
    waiting_for_controller: AtomicBool,
    /// Watches of the leading controller that fail, by resource, with their last error and when.
    failing_watches: std::sync::Mutex<std::collections::BTreeMap<&'static str, (String, Instant)>>,
    any_watch_failing: AtomicBool,
    /// What an operator should fix that does not stop the server from serving (the Plan CRD
    /// lacks fields, a notification receiver fails), by who tells it: shown in `/readyz`'s
    /// text, which stays 200.
    notices: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>,
}

impl Readiness {
    pub fn new(certificate: Arc<CertResolver>) -> Arc<Self> {
        Arc::new(Self {
            certificate,
            shutting_down: AtomicBool::new(false),
            waiting_for_certificate: AtomicBool::new(false),
            waiting_for_controller: AtomicBool::new(false),
            failing_watches: Default::default(),
            any_watch_failing: AtomicBool::new(false),
            notices: Default::default(),
        })
    }

    /// Readiness now also waits for [`Readiness::certificate_ready`]: the certificate served
    /// meanwhile is a stand-in the API server does not trust.
    pub fn expect_certificate(&self) {
        self.waiting_for_certificate.store(true, Ordering::SeqCst);
    }

    pub fn certificate_ready(&self) {
        self.waiting_for_certificate.store(false, Ordering::SeqCst);
    }

    /// Readiness now also waits for [`Readiness::controller_ready`].
    pub fn expect_controller(&self) {
        self.waiting_for_controller.store(true, Ordering::SeqCst);
    }

    pub fn controller_ready(&self) {
        self.waiting_for_controller.store(false, Ordering::SeqCst);
    }

    /// A watch of `resource` failed (not ready until it works again).
    pub fn watch_failed(&self, resource: &'static str, error: String) {
        self.watch_failed_at(resource, error, Instant::now());
    }

    fn watch_failed_at(&self, resource: &'static str, error: String, at: Instant) {
        let mut failing = crate::sync::lock(&self.failing_watches);
        failing.insert(resource, (validation::bounded(&error), at));
        self.any_watch_failing.store(true, Ordering::SeqCst);
    }

    /// A watch of `resource` delivered an event, so it works.
    pub fn watch_ok(&self, resource: &'static str) {
        if self.any_watch_failing.load(Ordering::Relaxed) {
            let mut failing = crate::sync::lock(&self.failing_watches);
            failing.remove(resource);
            self.any_watch_failing
                .store(!failing.is_empty(), Ordering::SeqCst);
        }
    }

    /// The watches failing now: those whose last error is recent. A watch that recovers by
    /// starting again delivers no event until something changes, so an error that is not
    /// repeated within [`WATCH_ERROR_FRESH`] (failing watches retry within 5 s) is over.
    fn failing_watches(&self, now: Instant) -> Option<String> {
        if !self.any_watch_failing.load(Ordering::SeqCst) {
            return None;
        }
        let failing = crate::sync::lock(&self.failing_watches);
        let list: Vec<String> = failing
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) < WATCH_ERROR_FRESH)
            .map(|(resource, (error, _))| format!("the watch of {resource} fails: {error}"))
            .collect();
        (!list.is_empty()).then(|| list.join("; "))
    }

    /// The controller stopped: its watches no longer count.
    pub fn watches_stopped(&self) {
        let mut failing = crate::sync::lock(&self.failing_watches);
        failing.clear();
        self.any_watch_failing.store(false, Ordering::SeqCst);
    }

    /// Sets (or clears) what `/readyz` tells besides readiness on behalf of `who`.
    pub fn set_notice(&self, who: &'static str, notice: Option<String>) {
        let mut notices = crate::sync::lock(&self.notices);
        match notice {
            Some(text) => notices.insert(who, validation::bounded(&text)),
            None => notices.remove(who),
        };
    }

    /// What `/readyz` tells besides readiness: one line each.
    pub fn notices(&self) -> Vec<String> {
        crate::sync::lock(&self.notices).values().cloned().collect()
    }

    /// Why the server is not ready, if it is not.
    pub fn problem(&self) -> Option<String> {
        self.problem_at(Instant::now())
    }

    fn problem_at(&self, now: Instant) -> Option<String> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Some("shutting down".to_owned())
        } else if !self.certificate.is_loaded() {
            Some("no serving certificate loaded yet".to_owned())
        } else if self.waiting_for_certificate.load(Ordering::SeqCst) {
            Some(
                "the webhook certificate is not issued yet (is the API server reachable?)"
                    .to_owned(),
            )
        } else if let Some(watches) = self.failing_watches(now) {
            Some(watches)
        } else if self.waiting_for_controller.load(Ordering::SeqCst) {
            Some("controller caches not synced yet".to_owned())
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
    /// The namespace whose Plans this controller serves.
    served: Arc<str>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    body_budget: Arc<Semaphore>,
    reviewers: Arc<Semaphore>,
    /// Reads the nodes a K3s or RKE2 Plan's new version would move (none: not checked).
    nodes: Option<kube::Client>,
    /// Tries an admitted Plan's object gates on the objects as they are (none: not tried).
    objects: Option<Arc<ObjectGates>>,
}

/// The server's routes and limits, for a controller serving the Plans of namespace `served`;
/// tests drive this same Router in-process.
pub fn router(
    served: &str,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    nodes: Option<kube::Client>,
) -> Router {
    let state = AppState {
        served: served.into(),
        metrics,
        readiness,
        body_budget: Arc::new(Semaphore::new(BODY_BUDGET)),
        reviewers: Arc::new(Semaphore::new(MAX_REVIEWS)),
        objects: nodes.clone().map(|c| Arc::new(ObjectGates::new(c))),
        nodes,
    };
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(state)
        // The admission routes read their bodies themselves, within BODY_LIMIT; the other
        // routes never read one.
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(CatchPanicLayer::new())
}

/// The plain-HTTP metrics listener's routes (`--metrics-listen`): `/metrics` and `/healthz`.
pub fn metrics_router(metrics: Arc<Metrics>, readiness: Arc<Readiness>) -> Router {
    let state = AppState {
        served: "".into(),
        metrics,
        readiness,
        body_budget: Arc::new(Semaphore::new(0)),
        reviewers: Arc::new(Semaphore::new(0)),
        nodes: None,
        objects: None,
    };
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(CatchPanicLayer::new())
}

/// Binds a plain-HTTP listener for `app` (the metrics one), with the HTTPS listener's connection
/// cap and timeouts; it stops with `stop`.
pub fn bind_plain(
    listen: SocketAddr,
    app: Router,
    stop: CancellationToken,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let address = listener.local_addr()?;
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        shutdown.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let mut server = axum_server::from_tcp(listener)?
        .acceptor(conn::Capped::new(conn::MAX_CONNECTIONS, conn::IDLE_TIMEOUT))
        .handle(handle);
    server
        .http_builder()
        .http1()
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    Ok((address, server.serve(app.into_make_service())))
}

/// How long the webhook waits for the nodes a Plan selects before admitting it unchecked.
const NODE_LIST_TIMEOUT: Duration = Duration::from_secs(2);
/// Nodes read per page of that list.
const NODE_PAGE: u32 = 500;

/// Checks a K3s or RKE2 Plan's new `spec.version` against the nodes it selects: refused when it
/// would downgrade a node or skip a minor version (see `validation::versions`). Fails open: when
/// the nodes cannot be read in time the Plan is admitted with a warning, and the controller
/// holds such nodes anyway.
async fn check_versions(client: Option<&kube::Client>, answer: &mut admission::Answer) {
    let (Some(plan), Some(client)) = (answer.check_versions.take(), client) else {
        return;
    };
    let Ok(Some(selector)) = select::node_selector(&plan) else {
        return;
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let selector_text = selector.to_string();
    let listed = tokio::time::timeout(NODE_LIST_TIMEOUT, async {
        let mut all = Vec::new();
        let mut params = ListParams::default()
            .labels(&selector_text)
            .limit(NODE_PAGE);
        loop {
            let page = nodes.list(&params).await?;
            all.extend(page.items);
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok::<_, kube::Error>(all),
            }
        }
    })
    .await;
    let plan_name = plan.metadata.name.clone().unwrap_or_default();
    match listed {
        Ok(Ok(listed)) => {
            let selected: Vec<&Node> = listed
                .iter()
                .filter(|n| select::eligible(&plan_name, &selector, n))
                .collect();
            if let Some(message) = versions::refusal(&plan.spec, &selected) {
                let name = validation::bounded(&format!("{plan_name:?}"));
                answer.refuse_on_cluster(validation::bounded(&format!(
                    "Plan {name} is invalid: {message}"
                )));
            }
        }
        Ok(Err(e)) => answer.warn(format!(
            "spec.version was not checked against the nodes' versions (reading them failed: \
             {e}); the controller holds any node it would downgrade or move past a minor"
        )),
        Err(_) => answer.warn(format!(
            "spec.version was not checked against the nodes' versions (reading them took more \
             than {}s); the controller holds any node it would downgrade or move past a minor",
            NODE_LIST_TIMEOUT.as_secs()
        )),
    }
}

/// How long the webhook tries a Plan's object gates, in all: with the nodes' 2 s, within the
/// request's 4 s.
const OBJECT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Tries an admitted Plan's object gates on the objects as they are now (within
/// [`OBJECT_PROBE_TIMEOUT`] in all) and warns of each that is closed: a field named wrongly, a kind
/// not served, objects the controller may not read, or an expression false now. Never refuses:
/// the objects, their CRD or the controller's rights may come after the Plan.
async fn check_objects(objects: Option<&ObjectGates>, answer: &mut admission::Answer) {
    let (Some(plan), Some(objects)) = (answer.check_objects.take(), objects) else {
        return;
    };
    let gates = plan
        .spec
        .health_gates
        .iter()
        .flat_map(|g| g.objects.iter().flatten());
    let tried = tokio::time::timeout(OBJECT_PROBE_TIMEOUT, async {
        let mut closed = Vec::new();
        for (i, gate) in gates.enumerate() {
            if let Err(why) = objects.probe(gate).await {
                closed.push(format!(
                    "spec.healthGates.objects[{i}] is closed now: {why}; no node starts until it \
                     is true"
                ));
            }
        }
        closed
    })
    .await;
    match tried {
        Ok(closed) => closed.into_iter().for_each(|w| answer.warn(w)),
        Err(_) => answer.warn(format!(
            "spec.healthGates.objects were not tried on the objects (that took more than {}s)",
            OBJECT_PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// How long the webhook waits for the Plans of a namespace to look for a `dependsOn` cycle.
const PLAN_LIST_TIMEOUT: Duration = Duration::from_secs(1);

/// Refuses a Plan whose `spec.dependsOn` closes a cycle through the other Plans of its
/// namespace, and warns of each Plan it names that does not exist yet. Fails open with a
/// warning when the Plans cannot be read in time: the controller holds a Plan of a cycle and
/// says so in its status.
async fn check_order(client: Option<&kube::Client>, answer: &mut admission::Answer) {
    let (Some(plan), Some(client)) = (answer.check_order.take(), client) else {
        return;
    };
    let namespace = plan.metadata.namespace.clone().unwrap_or_default();
    let api: Api<crate::api::Plan> = Api::namespaced(client.clone(), &namespace);
    let listed = tokio::time::timeout(PLAN_LIST_TIMEOUT, api.list(&ListParams::default())).await;
    let plans = match listed {
        Ok(Ok(list)) => list.items,
        Ok(Err(e)) => {
            answer.warn(format!(
                "spec.dependsOn was not checked for a cycle (reading the Plans failed: {e}); the \
                 controller holds a Plan of a cycle"
            ));
            return;
        }
        Err(_) => {
            answer.warn(format!(
                "spec.dependsOn was not checked for a cycle (reading the Plans took more than \
                 {}s); the controller holds a Plan of a cycle",
                PLAN_LIST_TIMEOUT.as_secs()
            ));
            return;
        }
    };
    let name = plan.metadata.name.clone().unwrap_or_default();
    let wanted = plan.spec.depends_on.clone().unwrap_or_default();
    let others: Vec<(&str, &[String])> = plans
        .iter()
        .map(|p| {
            let name = p.metadata.name.as_deref().unwrap_or_default();
            (name, p.spec.depends_on.as_deref().unwrap_or_default())
        })
        .collect();
    let missing = wanted
        .iter()
        .filter(|d| !others.iter().any(|(n, _)| n == d));
    for other in missing {
        answer.warn(format!(
            "spec.dependsOn: Plan {other} does not exist in namespace {namespace} yet; this Plan \
             starts no node until it does and is Complete"
        ));
    }
    if let Some(cycle) = validation::order::cycle_with(&name, &wanted, others) {
        let plan_name = validation::bounded(&format!("{name:?}"));
        answer.refuse_on_cluster(validation::bounded(&format!(
            "Plan {plan_name} is invalid: {}",
            validation::order::cycle_message(&cycle)
        )));
    }
}

async fn mutate(State(state): State<AppState>, request: Request) -> Response {
    review(state, Webhook::Mutate, request).await
}

async fn validate(State(state): State<AppState>, request: Request) -> Response {
    review(state, Webhook::Validate, request).await
}

/// Why a review was not handled.
enum Refusal {
    TooLarge,
    Busy,
    Unreadable(String),
}

#[tracing::instrument(name = "admission", skip_all, fields(webhook = webhook.as_str()))]
async fn review(state: AppState, webhook: Webhook, request: Request) -> Response {
    let started = Instant::now();
    let outcome = match read_body(request, &state.body_budget).await {
        Err(refusal) => Err(refusal),
        Ok((body, held)) => {
            // Waits for a reviewer without bound of its own: reviews are short, the body is
            // already counted in the budget, and the request timeout still applies.
            let reviewer = state.reviewers.clone().acquire_owned().await;
            if body.len() <= INLINE_REVIEW_LIMIT {
                let outcome = admission::handle(webhook, &state.served, &body);
                drop((held, reviewer));
                Ok(outcome)
            } else {
                let span = tracing::Span::current();
                let served = state.served.clone();
                let work = tokio::task::spawn_blocking(move || {
                    span.in_scope(|| (admission::handle(webhook, &served, &body), held))
                });
                let done = work.await;
                drop(reviewer);
                match done {
                    Ok((outcome, _held)) => Ok(outcome),
                    Err(e) => Err(Refusal::Unreadable(format!("the review failed: {e}"))),
                }
            }
        }
    };
    let mut outcome = outcome;
    if let Ok(Ok(answer)) = &mut outcome {
        check_versions(state.nodes.as_ref(), answer).await;
        check_objects(state.objects.as_deref(), answer).await;
        check_order(state.nodes.as_ref(), answer).await;
    }
    let (operation, result) = match &outcome {
        Ok(Ok(answer)) => (answer.operation, answer.decision.as_str()),
        Ok(Err(_)) | Err(Refusal::Unreadable(_)) => ("unknown", "bad_request"),
        Err(Refusal::TooLarge) => ("unknown", "too_large"),
        Err(Refusal::Busy) => ("unknown", "busy"),
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
        Ok(Ok(answer)) => {
            tracing::debug!(operation, result, "answered admission review");
            (
                [(header::CONTENT_TYPE, "application/json")],
                answer.to_vec(),
            )
                .into_response()
        }
        Ok(Err(bad)) => bad_request(&bad.to_string()),
        Err(Refusal::Unreadable(reason)) => bad_request(&reason),
        Err(Refusal::TooLarge) => too_large(),
        Err(Refusal::Busy) => {
            tracing::warn!("answered 429: too many admission review bytes held at once");
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                "too many admission reviews at once; retry\n",
            )
                .into_response()
        }
    }
}

fn bad_request(reason: &str) -> Response {
    tracing::info!(reason, "refused a malformed admission review");
    (StatusCode::BAD_REQUEST, format!("bad request: {reason}\n")).into_response()
}

fn too_large() -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than {BODY_LIMIT} bytes\n"),
    )
        .into_response()
}

/// Reads a body of at most [`BODY_LIMIT`] bytes into a buffer whose every byte of capacity is
/// first taken from the shared budget; the returned permit gives them back when dropped. A body
/// refused as too large or busy is drained first, so the answer reaches HTTP/2 clients intact.
async fn read_body(
    request: Request,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Refusal> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let mut body = request.into_body();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut bytes = Vec::new();
    let mut grow = async |bytes: &mut Vec<u8>, to: usize| -> Result<(), Refusal> {
        let more = to.saturating_sub(bytes.capacity());
        let share = u32::try_from(more).map_err(|_| Refusal::TooLarge)?;
        let permit = tokio::time::timeout(BUSY_WAIT, budget.clone().acquire_many_owned(share))
            .await
            .map_err(|_| Refusal::Busy)?
            .map_err(|_| Refusal::Busy)?;
        match &mut held {
            Some(all) => all.merge(permit),
            None => held = Some(permit),
        }
        bytes.reserve_exact(to - bytes.len());
        Ok(())
    };
    let mut seen = 0;
    let refused = loop {
        if let Some(declared) = declared.filter(|_| seen == 0) {
            if declared > BODY_LIMIT {
                break Refusal::TooLarge;
            }
            if let Err(refusal) = grow(&mut bytes, declared).await {
                break refusal;
            }
        }
        let Some(frame) = body.frame().await else {
            return Ok((Bytes::from(bytes), held));
        };
        let frame =
            frame.map_err(|e| Refusal::Unreadable(format!("the body could not be read: {e}")))?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        seen += chunk.len();
        let need = bytes.len() + chunk.len();
        if need > BODY_LIMIT {
            break Refusal::TooLarge;
        }
        let doubled = need.max(bytes.capacity() * 2).min(BODY_LIMIT);
        if need > bytes.capacity()
            && let Err(refusal) = grow(&mut bytes, doubled).await
        {
            break refusal;
        }
        bytes.extend_from_slice(&chunk);
    };
    drop(bytes);
    drain(body, seen).await;
    Err(refused)
}

/// Reads and drops the rest of a body that is too large, up to [`DRAIN_LIMIT`] bytes in all, so
/// the 413 ends the request cleanly: over HTTP/2 a response sent while the client is still
/// uploading ends the stream with a reset that clients report as a stream error.
async fn drain(mut body: Body, mut seen: usize) {
    while seen <= DRAIN_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => seen += frame.data_ref().map_or(0, |d| d.len()),
            _ => return,
        }
    }
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness.problem() {
        None => {
            let warnings: String = (state.readiness.notices().iter())
                .map(|n| format!("warning: {n}\n"))
                .collect();
            (StatusCode::OK, format!("ok\n{warnings}")).into_response()
        }
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
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .acceptor(conn::Capped::new(conn::MAX_CONNECTIONS, conn::IDLE_TIMEOUT));
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        readiness.shut_down();
        shutdown.graceful_shutdown(Some(SHUTDOWN_GRACE));
    });
    let mut server = axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .handle(handle)
        .first_request_timeout(HEADER_TIMEOUT)
        .accept_error_handler(|peer, error| {
            tracing::debug!(peer = ?peer, %error, "dropped a connection before its first request")
        });
    let http = server.http_builder();
    http.http1()
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    http.http2()
        .keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .initial_connection_window_size(64 * 1024)
        .initial_stream_window_size(64 * 1024)
        .max_concurrent_streams(32)
        .max_header_list_size(64 * 1024);
    let server = server.serve(app.into_make_service());
    Ok((address, server))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::testing;
    use serde_json::json;

    /// The validating webhook's answer to creating a K3s Plan at v1.30.4+k3s1 for every node.
    fn k3s_review() -> admission::Answer {
        k3s_review_from(None)
    }

    /// The same, as an update of a Plan that asked for `old` (`None`: a create).
    fn k3s_review_from(old: Option<&str>) -> admission::Answer {
        let plan = |version: &str, paused: bool| {
            json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
                "metadata": {"name": "p", "namespace": "system-upgrade"},
                "spec": {"concurrency": 1, "version": version, "nodeSelector": {}, "paused": paused,
                    "upgrade": {"image": "rancher/k3s-upgrade"}}})
        };
        let mut request = json!({"uid": "u1", "kind": {"group": "upgrade.cattle.io", "version": "v1", "kind": "Plan"},
            "operation": "CREATE", "name": "p", "namespace": "system-upgrade",
            "object": plan("v1.30.4+k3s1", false)});
        if let Some(old) = old {
            request["operation"] = json!("UPDATE");
            request["oldObject"] = plan(old, true);
        }
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
        let body = serde_json::to_vec(&review).unwrap();
        admission::handle(Webhook::Validate, "system-upgrade", &body).unwrap()
    }

    #[test]
    fn only_a_new_version_is_checked_against_the_nodes() {
        assert!(k3s_review().check_versions.is_some(), "a create");
        assert!(
            k3s_review_from(Some("v1.30.1+k3s1"))
                .check_versions
                .is_some()
        );
        assert!(
            k3s_review_from(Some("v1.30.4+k3s1"))
                .check_versions
                .is_none(),
            "an edit that keeps the version is not refused because nodes moved on"
        );
    }

    fn node(name: &str, version: &str) -> serde_json::Value {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"nodeInfo": {"kubeletVersion": version, "architecture": "", "bootID": "",
                "containerRuntimeVersion": "", "kernelVersion": "", "kubeProxyVersion": "",
                "machineID": "", "operatingSystem": "", "osImage": "", "systemUUID": ""}}})
    }

    #[tokio::test]
    async fn a_version_that_would_downgrade_a_node_on_any_page_of_the_list_is_refused() {
        let (client, mut api) = testing::client();
        let mut answer = k3s_review();
        assert!(answer.check_versions.is_some());
        let check = tokio::spawn(async move {
            check_versions(Some(&client), &mut answer).await;
            answer
        });
        let first = api
            .expect(
                "GET",
                "/api/v1/nodes?",
                200,
                json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {"continue": "page-2"},
                    "items": [node("a", "v1.30.1+k3s1")]}),
            )
            .await;
        assert!(first.uri.contains("limit=500"), "{}", first.uri);
        let second = api
            .expect(
                "GET",
                "/api/v1/nodes?",
                200,
                json!({"kind": "NodeList", "apiVersion": "v1", "metadata": {},
                    "items": [node("b", "v1.31.0+k3s1")]}),
            )
            .await;
        assert!(second.uri.contains("continue=page-2"), "{}", second.uri);
        let answer = check.await.unwrap();
        assert!(!answer.response.allowed);
        let message = answer.response.to_owned();
        let text = serde_json::to_string(&message).unwrap();
        assert!(
            text.contains("Plan \\\"p\\\" is invalid: spec.version: node b runs v1.31.0+k3s1, newer than v1.30.4+k3s1"),
            "{text}"
        );
        api.done().await;
    }

    /// A cycle of `dependsOn` through a stored Plan is refused, naming it; a Plan named that does
    /// not exist is a warning.
    #[tokio::test]
    async fn a_depends_on_cycle_through_stored_plans_is_refused() {
        let review = |depends_on: serde_json::Value| {
            let plan = json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
                "metadata": {"name": "os", "namespace": "system-upgrade"},
                "spec": {"concurrency": 1, "version": "v1.0.0", "nodeSelector": {},
                    "dependsOn": depends_on, "upgrade": {"image": "busybox"}}});
            let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "u1", "kind": {"group": "upgrade.cattle.io", "version": "v1", "kind": "Plan"},
                    "operation": "CREATE", "name": "os", "namespace": "system-upgrade", "object": plan}});
            admission::handle(
                Webhook::Validate,
                "system-upgrade",
                &serde_json::to_vec(&review).unwrap(),
            )
            .unwrap()
        };
        let stored = json!({"kind": "PlanList", "apiVersion": "upgrade.cattle.io/v1", "metadata": {},
            "items": [{"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
                "metadata": {"name": "k3s", "namespace": "system-upgrade"},
                "spec": {"dependsOn": ["os"], "upgrade": {"image": "x"}}}]});
        for (depends_on, refused) in [(json!(["k3s"]), true), (json!(["kernel"]), false)] {
            let (client, mut api) = testing::client();
            let mut answer = review(depends_on);
            assert!(answer.check_order.is_some());
            let check = tokio::spawn(async move {
                check_order(Some(&client), &mut answer).await;
                answer
            });
            api.expect(
                "GET",
                "/apis/upgrade.cattle.io/v1/namespaces/system-upgrade/plans?",
                200,
                stored.clone(),
            )
            .await;
            let answer = check.await.unwrap();
            let text = serde_json::to_string(&answer.response).unwrap();
            assert_eq!(answer.response.allowed, !refused, "{text}");
            if refused {
                assert!(
                    text.contains("spec.dependsOn: Plans os → k3s → os wait for each other"),
                    "{text}"
                );
            } else {
                assert!(
                    text.contains("Plan kernel does not exist in namespace system-upgrade yet"),
                    "{text}"
                );
            }
            api.done().await;
        }
    }

    /// A Plan with an object gate on a Widget, as the webhook admits it.
    fn gated_review() -> admission::Answer {
        let plan = json!({"apiVersion": "upgrade.cattle.io/v1", "kind": "Plan",
            "metadata": {"name": "p", "namespace": "system-upgrade"},
            "spec": {"concurrency": 1, "version": "v1.0.0", "nodeSelector": {},
                "healthGates": {"objects": [{"apiVersion": "suc-test.io/v1", "kind": "Widget",
                    "namespace": "default", "name": "storage", "expression": "object.status.helth == 'ok'"}]},
                "upgrade": {"image": "busybox"}}});
        let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u1", "kind": {"group": "upgrade.cattle.io", "version": "v1", "kind": "Plan"},
                "operation": "CREATE", "name": "p", "namespace": "system-upgrade", "object": plan}});
        let body = serde_json::to_vec(&review).unwrap();
        admission::handle(Webhook::Validate, "system-upgrade", &body).unwrap()
    }

    /// The webhook tries an admitted Plan's object gate on the object as it is: a field named
    /// wrongly is a warning, and the Plan is admitted.
    #[tokio::test]
    async fn an_object_gate_closed_now_is_a_warning() {
        let (client, mut api) = testing::client();
        let mut answer = gated_review();
        assert!(answer.response.allowed, "{:?}", answer.response);
        assert!(answer.check_objects.is_some());
        assert!(answer.check_versions.is_none());
        let check = tokio::spawn(async move {
            check_objects(Some(&ObjectGates::new(client)), &mut answer).await;
            answer
        });
        api.expect(
            "GET",
            "/apis/suc-test.io/v1",
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "suc-test.io/v1",
                "resources": [{"name": "widgets", "singularName": "widget", "namespaced": true,
                    "kind": "Widget", "verbs": ["get", "list"]}]}),
        )
        .await;
        api.expect(
            "GET",
            "/apis/suc-test.io/v1/namespaces/default/widgets/storage",
            200,
            json!({"apiVersion": "suc-test.io/v1", "kind": "Widget",
                "metadata": {"name": "storage", "namespace": "default"}, "status": {"health": "ok"}}),
        )
        .await;
        let answer = check.await.unwrap();
        assert!(answer.response.allowed);
        let warnings = answer.response.warnings.clone().unwrap_or_default();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with(
                "spec.healthGates.objects[0] is closed now: Widget default/storage: the expression fails"
            ) && warnings[0].contains("helth"),
            "{warnings:?}"
        );
        api.done().await;
    }

    #[tokio::test]
    async fn nodes_that_cannot_be_read_admit_the_plan_with_a_warning() {
        let (client, mut api) = testing::client();
        let mut answer = k3s_review();
        let check = tokio::spawn(async move {
            check_versions(Some(&client), &mut answer).await;
            answer
        });
        api.refuse("GET", "/api/v1/nodes?", 500).await;
        let answer = check.await.unwrap();
        assert!(answer.response.allowed);
        let warnings = answer.response.warnings.clone().unwrap_or_default();
        assert!(
            warnings.iter().any(|w| w.starts_with(
                "spec.version was not checked against the nodes' versions (reading them failed"
            )),
            "{warnings:?}"
        );
        // A Plan of another kind, or without a version, is not checked at all.
        let mut plain = k3s_review();
        plain.check_versions = None;
        let (client, api) = testing::client();
        check_versions(Some(&client), &mut plain).await;
        assert!(plain.response.allowed);
        api.done().await;
    }

    #[tokio::test]
    async fn a_notice_is_told_by_readyz_which_stays_ready() {
        let certificate = Arc::new(CertResolver::default());
        tls::self_signed(&certificate).unwrap();
        let readiness = Readiness::new(certificate);
        let app = router("system-upgrade", Metrics::new(), readiness.clone(), None);
        let readyz = |app: Router| async move {
            use tower::ServiceExt;
            let request = http::Request::get("/readyz").body(Body::empty()).unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        assert_eq!(
            readyz(app.clone()).await,
            (StatusCode::OK, "ok\n".to_owned())
        );
        readiness.set_notice(
            "crd",
            Some("the Plan CRD in the cluster lacks spec.paused".into()),
        );
        readiness.set_notice("notifications", Some("receiver chat failed".into()));
        assert_eq!(
            readyz(app.clone()).await,
            (
                StatusCode::OK,
                "ok\nwarning: the Plan CRD in the cluster lacks spec.paused\n\
                 warning: receiver chat failed\n"
                    .to_owned()
            )
        );
        readiness.set_notice("crd", None);
        readiness.set_notice("notifications", None);
        assert_eq!(readyz(app).await.1, "ok\n");
    }

    #[test]
    fn readiness_names_what_is_missing_in_order() {
        let certificate = Arc::new(CertResolver::default());
        let readiness = Readiness::new(certificate.clone());
        assert_eq!(
            readiness.problem().as_deref(),
            Some("no serving certificate loaded yet")
        );
        tls::self_signed(&certificate).unwrap();
        assert_eq!(readiness.problem(), None);

        readiness.expect_certificate();
        readiness.expect_controller();
        assert!(
            readiness
                .problem()
                .is_some_and(|p| p.starts_with("the webhook certificate is not issued yet")),
            "{:?}",
            readiness.problem()
        );
        readiness.certificate_ready();
        assert_eq!(
            readiness.problem().as_deref(),
            Some("controller caches not synced yet")
        );

        // A failing watch is named, before the caches it keeps from syncing, until it delivers.
        readiness.watch_failed("nodes", "403 Forbidden: nodes is forbidden".to_owned());
        readiness.watch_failed("pods", format!("{:?}", "x".repeat(5000)));
        let problem = readiness.problem().unwrap();
        assert!(
            problem.starts_with("the watch of nodes fails: 403 Forbidden: nodes is forbidden; the watch of pods fails: \""),
            "{problem}"
        );
        assert!(problem.len() < 300, "the error is cut: {}", problem.len());
        readiness.watch_ok("nodes");
        readiness.watch_ok("pods");
        readiness.controller_ready();
        assert_eq!(readiness.problem(), None);
        // A watch that failed to start again and then started delivers nothing: its error stops
        // counting once it is not repeated.
        let then = Instant::now();
        readiness.watch_failed_at("plans", "storage is (re)initializing".to_owned(), then);
        assert!(
            readiness
                .problem_at(then + Duration::from_secs(5))
                .is_some()
        );
        assert_eq!(readiness.problem_at(then + WATCH_ERROR_FRESH), None);
        readiness.watch_failed("plans", "gone".to_owned());
        readiness.watches_stopped();
        assert_eq!(
            readiness.problem(),
            None,
            "a stopped controller's watches do not count"
        );

        readiness.shut_down();
        assert_eq!(readiness.problem().as_deref(), Some("shutting down"));
    }
}
