//! system-upgrade-controller: upgrades Kubernetes nodes as declared in `upgrade.cattle.io/v1`
//! Plans, with an admission webhook that validates and defaults Plans.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod certs;
pub mod check;
pub mod config;
pub mod controller;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod notify;
pub mod preview;
pub mod retry;
pub mod server;
pub mod switchback;
pub mod sync;
pub mod syntax;
pub mod telemetry;
pub mod validation;
pub mod yaml;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};

use config::RunConfig;
use server::Readiness;
use server::tls::{self, CertResolver};

/// The client configuration from `--kubeconfig`/`--master`, or in-cluster configuration.
async fn kube_config(config: &RunConfig) -> Result<kube::Config> {
    let mut client_config = config::kube_config(config.kubeconfig.as_deref(), None).await?;
    // No silent retries inside the client: a 429 from the Eviction API is a PodDisruptionBudget
    // answering, which the drain reports and retries itself; reconciles have their own backoff.
    client_config.default_retry = false;
    if let Some(master) = &config.master {
        client_config.cluster_url = master
            .parse()
            .map_err(|e| Error::KubeConfig(format!("--master {master:?}: {e}")))?;
    }
    Ok(client_config)
}

/// Runs the HTTPS server and (unless --webhook-only) the controller until `stop` is cancelled.
pub async fn run(config: RunConfig, stop: CancellationToken) -> Result<()> {
    tracing::debug!(?config, "effective configuration");
    let polling = config.plan_polling_interval;
    if polling.effective != polling.configured {
        tracing::warn!(
            configured = ?polling.configured,
            used = ?polling.effective,
            "SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL is not longer than 1m; using the default, as \
             the Go controller does"
        );
    }
    let metrics = metrics::Metrics::new();
    let resolver = Arc::new(CertResolver::default());
    let readiness = Readiness::new(resolver.clone());

    if let Some(dir) = &config.cert_dir {
        let cert_dir = tls::CertDir::new(dir);
        let loaded = cert_dir.load(&resolver)?;
        tracing::info!(dir = %dir.display(), "serving tls.crt and tls.key, reloading them when they change");
        tokio::spawn(cert_dir.watch(
            resolver.clone(),
            loaded,
            std::time::Duration::from_secs(2),
            stop.clone(),
        ));
    } else if config.webhook_only {
        tls::self_signed(&resolver)?;
        tracing::info!(
            "serving a self-signed certificate generated in memory (use curl -k, or --cert-dir)"
        );
    }

    if config.cert_dir.is_none() && !config.webhook_only {
        // A stand-in until the webhook CA issues the real one, so probes are answered.
        tls::self_signed(&resolver)?;
        readiness.expect_certificate();
    }
    // The webhook reads nodes (a K3s Plan's version against theirs) with the controller's client.
    let kube = match config.webhook_only {
        true => None,
        false => {
            let client_config = kube_config(&config).await?;
            Some((api_client(client_config.clone())?, client_config))
        }
    };
    let nodes = kube.as_ref().map(|(client, _)| client.clone());
    let app = server::router(&config.namespace, metrics.clone(), readiness.clone(), nodes);
    let (address, serve) = server::bind(
        config.listen,
        app,
        resolver.clone(),
        readiness.clone(),
        stop.clone(),
    )?;
    tracing::info!(%address, "listening on https://{address} (/mutate, /validate, /healthz, /readyz, /metrics)");
    let serving_task = tokio::spawn(serve);
    if let Some(listen) = config.metrics_listen {
        let app = server::metrics_router(metrics.clone(), readiness.clone());
        let (address, serve) = server::bind_plain(listen, app, stop.clone())?;
        tracing::info!(%address, "listening on http://{address} (/metrics, /healthz)");
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "the metrics listener failed");
            }
        });
    }

    let mut controller = None;
    if let Some((client, client_config)) = kube {
        if config.cert_dir.is_none() {
            let bootstrap = certs::Bootstrap {
                client: client.clone(),
                namespace: config.namespace.clone(),
                service: config.service_name.clone(),
                ca_secret: config.ca_secret_name.clone(),
                webhook_config: config.webhook_config_name.clone(),
                extra_names: config.extra_cert_names.clone(),
                check_interval: config.cert_check_interval,
            };
            // Retried while the API server is away; /healthz answers meanwhile, /readyz says why
            // the server is not ready.
            let Some(serving) =
                retry::until_it_works("issue the webhook certificate", &stop, || {
                    bootstrap.start(&resolver)
                })
                .await
            else {
                return stop_serving(serving_task).await;
            };
            readiness.certificate_ready();
            tracing::info!(names = ?bootstrap.dns_names(), "serving a certificate issued by the webhook CA");
            tokio::spawn(bootstrap.maintain(resolver.clone(), serving, stop.clone()));
        }
        controller = Some(start_controller(
            &config,
            client,
            client_config,
            &metrics,
            &readiness,
            &stop,
        )?);
    }

    let Some(controller) = controller else {
        return stop_serving(serving_task).await;
    };
    // The server and the controller stop together; a controller that fails stops the process.
    let outcome = match controller.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e),
        Err(error) => Err(Error::TaskFailed {
            task: "controller",
            error,
        }),
    };
    stop.cancel();
    stop_serving(serving_task).await?;
    outcome
}

/// Starts the controller: at once, or (with `--leader-elect`) whenever this replica holds the
/// Lease. Sends the `Starting` event in the background.
fn start_controller(
    config: &RunConfig,
    client: kube::Client,
    client_config: kube::Config,
    metrics: &Arc<metrics::Metrics>,
    readiness: &Arc<Readiness>,
    stop: &CancellationToken,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let options = controller_options(config);
    let reporter = controller::events::Reporter::new(&config.name, config.node_name.as_deref());
    let starting = format!(
        "system-upgrade-controller {} starting as {}/{}{}",
        crate::config::VERSION,
        config.namespace,
        config.name,
        if config.leader_elect {
            "; it runs the controller while it holds the Lease"
        } else {
            ""
        }
    );
    // In the background: an API server slow to answer must not delay serving the webhook.
    let events_client = client.clone();
    tokio::spawn(async move {
        let reason = api::Reason::Starting;
        controller::events::controller_event(&events_client, &reporter, false, reason, starting)
            .await;
    });
    if !config.leader_elect {
        readiness.expect_controller();
        let ready = readiness.clone();
        metrics.set_leader(true);
        let run = controller::run(
            client,
            options,
            metrics.clone(),
            move || ready.controller_ready(),
            readiness.clone(),
            stop.clone(),
        );
        return Ok(tokio::spawn(run));
    }
    // Followers serve the webhook, so readiness does not wait for a controller.
    let election = election(config, client_config)?;
    let mut options = options;
    options.fence = Some(election.fence());
    let (readiness, metrics, stop) = (readiness.clone(), metrics.clone(), stop.clone());
    Ok(tokio::spawn(async move {
        let controller_metrics = metrics.clone();
        election
            .lead(metrics, stop, move |term| {
                controller::run(
                    client.clone(),
                    options.clone(),
                    controller_metrics.clone(),
                    || {},
                    readiness.clone(),
                    term,
                )
            })
            .await
    }))
}

/// Longest wait for the API server's answer to any request (its headers: a watch answers at once
/// and then streams). Without it a request to an API server that went silent waits forever.
pub const API_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A kube client whose every request times out after [`API_TIMEOUT`].
pub fn api_client(config: kube::Config) -> Result<kube::Client> {
    api_client_with_timeout(config, API_TIMEOUT)
}

fn api_client_with_timeout(
    config: kube::Config,
    timeout: std::time::Duration,
) -> Result<kube::Client> {
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::timeout::TimeoutLayer::new(timeout))
        .build())
}

/// Waits for the server to finish (it stops when `stop` is cancelled).
async fn stop_serving(serving: tokio::task::JoinHandle<std::io::Result<()>>) -> Result<()> {
    match serving.await {
        Ok(result) => result?,
        Err(error) => {
            return Err(Error::TaskFailed {
                task: "server",
                error,
            });
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The Lease election from the command line, with a client whose requests time out before a
/// Lease we hold can expire.
fn election(config: &RunConfig, mut client_config: kube::Config) -> Result<leader::Election> {
    let timings = leader::Timings {
        lease_duration: config.leader_election_lease_duration,
        renew_deadline: config.leader_election_renew_deadline,
        retry_period: config.leader_election_retry_period,
    };
    let timeout = timings.request_timeout().map_err(Error::LeaderElection)?;
    client_config.connect_timeout = Some(timeout);
    client_config.read_timeout = Some(timeout);
    client_config.write_timeout = Some(timeout);
    Ok(leader::Election {
        client: kube::Client::try_from(client_config)?,
        namespace: config.namespace.clone(),
        name: config.name.clone(),
        identity: leader::identity(),
        timings,
    })
}

/// The controller's settings from the command line.
fn controller_options(config: &RunConfig) -> controller::ControllerOptions {
    controller::ControllerOptions {
        fence: None,
        settings: controller::reconcile::Settings {
            namespace: config.namespace.clone(),
            job: controller::job::JobSettings {
                controller_name: config.name.clone(),
                active_deadline_seconds: config.job_active_deadline_seconds,
                active_deadline_seconds_max: config.job_active_deadline_seconds_max,
                backoff_limit: config.job_backoff_limit,
                image_pull_policy: config.job_image_pull_policy.clone(),
                privileged: config.job_privileged,
                ttl_seconds_after_finished: config.job_ttl_seconds_after_finish,
                pod_replacement_policy: config.job_pod_replacement_policy.clone(),
                gate_image: config.job_gate_image.clone(),
            },
            polling_interval: config.plan_polling_interval.effective,
        },
        threads: config.threads,
        node_name: config.node_name.clone(),
    }
}

/// A token cancelled on SIGTERM or SIGINT: the one shutdown signal every task watches. The
/// handlers are installed before this returns, so a signal that comes right after start-up (a
/// pod deleted as it starts) is a clean shutdown, never the default action that kills the
/// process without releasing the Lease.
pub fn shutdown_on_signals() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let cancel = token.clone();
    let listen = |kind: SignalKind, name: &'static str| {
        signal(kind)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for {name}"))
            .ok()
    };
    let (mut terminate, mut interrupt) = (
        listen(SignalKind::terminate(), "SIGTERM"),
        listen(SignalKind::interrupt(), "SIGINT"),
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = received(terminate.as_mut()) => tracing::info!("SIGTERM received, shutting down"),
            _ = received(interrupt.as_mut()) => tracing::info!("SIGINT received, shutting down"),
        }
        cancel.cancel();
    });
    token
}

/// Waits for a signal; forever when it could not be listened for.
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API server that accepts connections and never answers: requests fail after the
    /// timeout instead of waiting forever.
    #[tokio::test]
    async fn api_requests_time_out_when_the_api_server_goes_silent() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = kube::Config::new(format!("http://{address}").parse().unwrap());
        let client =
            api_client_with_timeout(config, std::time::Duration::from_millis(500)).unwrap();
        let started = std::time::Instant::now();
        let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
        let error = namespaces.get("kube-system").await.unwrap_err().to_string();
        let took = started.elapsed();
        assert!(error.contains("timed out"), "{error}");
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        silent.abort();
    }
}
