//! The test bed: a real control plane (started here or reused), kubectl as a user runs it, our
//! server as a child process, and patient waiting with clear failure messages.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const NAMESPACE: &str = "system-upgrade";
/// The controller's ServiceAccount, which the suite's servers act as.
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:system-upgrade:system-upgrade-controller";
/// The ServiceAccount Plans give their upgrade Jobs.
pub const JOB_SERVICE_ACCOUNT: &str = "system:serviceaccount:system-upgrade:system-upgrade";
pub const BIN: &str = env!("CARGO_BIN_EXE_system-upgrade-controller");

/// A path as kubectl's argument (the repository's paths are UTF-8).
pub fn path(file: &Path) -> &str {
    file.to_str().unwrap()
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The control plane the suite runs against.
pub struct Cluster {
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
    /// Started by this run (and stopped at its end), rather than reused.
    owned: bool,
}

impl Cluster {
    /// Reuses the cluster of `SUC_E2E_KUBECONFIG` when set (kept running), otherwise starts a
    /// fresh one with `SUC_E2E_NODES` simulated nodes (default 6; 3 next to a real node) that
    /// [`Cluster::stop`] removes.
    pub fn start(real_node: bool) -> Cluster {
        if let Ok(kubeconfig) = std::env::var("SUC_E2E_KUBECONFIG") {
            let kubeconfig = PathBuf::from(kubeconfig);
            let dir = kubeconfig.parent().unwrap().join("e2e");
            std::fs::create_dir_all(&dir).unwrap();
            eprintln!("e2e: reusing the cluster of {}", kubeconfig.display());
            return Cluster {
                kubeconfig,
                dir,
                owned: false,
            };
        }
        let dir = std::env::temp_dir().join(format!("suc-e2e-{}", std::process::id()));
        let nodes = std::env::var("SUC_E2E_NODES")
            .unwrap_or_else(|_| if real_node { "3" } else { "6" }.to_owned());
        eprintln!(
            "e2e: starting a fresh control plane with {nodes} nodes in {}",
            dir.display()
        );
        let output = Command::new("bash")
            .arg(repo("tests/cluster/cluster.sh"))
            .args(["up", "--dir"])
            .arg(dir.join("cluster"))
            .args(["--nodes", &nodes])
            .args(real_node.then_some("--real-node"))
            // The soak reads its history from the audit log.
            .arg("--audit-policy")
            .arg(repo("tests/cluster/audit-policy.yaml"))
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "the control plane did not start (its log tail is above)"
        );
        let kubeconfig = PathBuf::from(String::from_utf8(output.stdout).unwrap().trim());
        Cluster {
            kubeconfig,
            dir,
            owned: true,
        }
    }

    pub fn stop(&self) {
        if self.owned {
            let status = Command::new("bash")
                .arg(repo("tests/cluster/cluster.sh"))
                .args(["down", "--dir"])
                .arg(self.dir.join("cluster"))
                .status()
                .unwrap();
            assert!(status.success());
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Stops kube-apiserver for `down_for` and starts it again on the same port.
    pub fn restart_apiserver(&self, down_for: Duration) {
        let status = Command::new("bash")
            .arg(repo("tests/cluster/cluster.sh"))
            .args(["restart-apiserver", "--dir"])
            .arg(self.kubeconfig.parent().unwrap())
            .args(["--down-for", &down_for.as_secs().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kube-apiserver did not come back");
    }

    /// A kubeconfig that acts as our ServiceAccount (impersonation), to prove its RBAC.
    pub fn service_account_kubeconfig(&self) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let text = text.replacen(
            "  user:\n",
            &format!("  user:\n    as: {SERVICE_ACCOUNT}\n"),
            1,
        );
        // Servers start side by side, so a plain truncating write could let one read an empty
        // file; write a private copy and rename it into place.
        let path = self.dir.join("service-account.kubeconfig");
        let scratch = self.dir.join(format!(
            "service-account.kubeconfig.{:?}",
            std::thread::current().id()
        ));
        std::fs::write(&scratch, text).unwrap();
        std::fs::rename(&scratch, &path).unwrap();
        path
    }
}

/// What kubectl printed.
pub struct Kubectl {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Kubectl {
    #[track_caller]
    pub fn expect_ok(self) -> Self {
        assert!(self.ok, "kubectl failed:\n{}{}", self.stdout, self.stderr);
        self
    }
}

/// Shared by every test: the cluster, a client, and the server under test.
pub struct Ctx {
    pub cluster: Cluster,
    pub client: kube::Client,
    pub runtime: tokio::runtime::Runtime,
    pub server: std::sync::Mutex<Option<Server>>,
}

impl Ctx {
    pub fn new(cluster: Cluster) -> Ctx {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .worker_threads(2)
            .build()
            .unwrap();
        let client = runtime.block_on(async {
            let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .unwrap();
            kube::Client::try_from(config).unwrap()
        });
        Ctx {
            cluster,
            client,
            runtime,
            server: std::sync::Mutex::new(None),
        }
    }

    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// A generic Secret in the controller's namespace holding `key=value`, replacing any old one.
    pub fn put_secret(&self, name: &str, literal: &str) {
        self.kubectl(&[
            "-n",
            NAMESPACE,
            "delete",
            "secret",
            name,
            "--ignore-not-found",
        ])
        .expect_ok();
        self.kubectl(&[
            "-n",
            NAMESPACE,
            "create",
            "secret",
            "generic",
            name,
            &format!("--from-literal={literal}"),
        ])
        .expect_ok();
    }

    pub fn kubectl(&self, args: &[&str]) -> Kubectl {
        self.kubectl_with_input(args, None)
    }

    pub fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> Kubectl {
        use std::io::Write;
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &self.cluster.kubeconfig)
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = input {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let Output {
            status,
            stdout,
            stderr,
        } = child.wait_with_output().unwrap();
        Kubectl {
            ok: status.success(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }

    /// The suite's server, started (as our ServiceAccount) if none is running.
    pub fn ensure_server(&self) -> ServerInfo {
        let mut server = self.server.lock().unwrap_or_else(|e| e.into_inner());
        if server.is_none() {
            // What the server needs from deploy/, so any test can run first or alone.
            let files = [
                "deploy/namespace.yaml",
                "deploy/crd.yaml",
                "deploy/rbac.yaml",
            ]
            .map(|f| repo(f).display().to_string());
            self.kubectl(&["apply", "-f", &files[0], "-f", &files[1], "-f", &files[2]])
                .expect_ok();
            self.kubectl(&[
                "wait",
                "--for=condition=Established",
                "crd/plans.upgrade.cattle.io",
                "--timeout=60s",
            ])
            .expect_ok();
            let started = Server::start(self, "suite", &[]);
            started.wait_ready();
            *server = Some(started);
            drop(server);
            self.wait_for_ca_bundles();
            return self
                .server
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .unwrap()
                .info();
        }
        server.as_ref().unwrap().info()
    }

    pub fn stop_server(&self) {
        self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Runs `f` on the suite's server process.
    pub fn with_server<T>(&self, f: impl FnOnce(&mut Server) -> T) -> Option<T> {
        self.server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
            .map(f)
    }

    pub fn set_server(&self, server: Server) {
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(server);
    }

    /// The webhook configurations of webhook-config.yaml, calling `base_url` instead of the Service.
    pub fn register_webhooks(&self, base_url: &str) {
        let text = std::fs::read_to_string(repo("webhook-config.yaml")).unwrap();
        let mut documents = system_upgrade_controller::yaml::documents(&text).unwrap();
        for document in &mut documents {
            for webhook in document["webhooks"].as_array_mut().unwrap() {
                let path = webhook["clientConfig"]["service"]["path"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                webhook["clientConfig"] = serde_json::json!({"url": format!("{base_url}{path}")});
            }
        }
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": documents});
        self.kubectl_with_input(&["apply", "-f", "-"], Some(&list.to_string()))
            .expect_ok();
    }

    /// The CA the server keeps in its Secret.
    pub fn webhook_ca(&self) -> Option<String> {
        let out = self.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "secret",
            "system-upgrade-controller-webhook-ca",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        if !out.ok || out.stdout.is_empty() {
            return None;
        }
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(out.stdout.trim())
            .unwrap();
        Some(String::from_utf8(bytes).unwrap())
    }

    /// The caBundle of each of our two webhook configurations.
    pub fn ca_bundles(&self) -> Vec<Option<String>> {
        [
            "mutatingwebhookconfiguration",
            "validatingwebhookconfiguration",
        ]
        .iter()
        .map(|kind| {
            let out = self.kubectl(&[
                "get",
                kind,
                "system-upgrade-controller",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ]);
            use base64::Engine as _;
            (out.ok && !out.stdout.trim().is_empty()).then(|| {
                String::from_utf8(
                    base64::engine::general_purpose::STANDARD
                        .decode(out.stdout.trim())
                        .unwrap(),
                )
                .unwrap()
            })
        })
        .collect()
    }

    /// Waits until both webhook configurations trust the server's CA.
    pub fn wait_for_ca_bundles(&self) -> String {
        wait(
            "both webhook configurations carry the webhook CA",
            Duration::from_secs(30),
            || {
                let ca = self.webhook_ca()?;
                self.ca_bundles()
                    .iter()
                    .all(|b| b.as_deref() == Some(ca.as_str()))
                    .then_some(ca)
            },
        )
    }
}

/// A running `system-upgrade-controller run`, stopped (SIGTERM) when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

#[derive(Clone)]
pub struct ServerInfo {
    pub port: u16,
    pub log: PathBuf,
}

impl Server {
    /// Starts the server on a free loopback port, as our ServiceAccount, checking certificates
    /// every 2 s; the webhook configurations are pointed at it.
    pub fn start(ctx: &Ctx, name: &str, extra: &[&str]) -> Server {
        let server = Server::spawn(ctx, name, extra);
        ctx.register_webhooks(&format!("https://127.0.0.1:{}", server.port));
        server
    }

    /// Starts the server without touching the webhook configurations.
    pub fn spawn(ctx: &Ctx, name: &str, extra: &[&str]) -> Server {
        let port = free_port();
        let log = ctx.cluster.dir.join(format!("server-{name}-{port}.log"));
        let child = Command::new(BIN)
            .arg("run")
            .arg("--kubeconfig")
            .arg(ctx.cluster.service_account_kubeconfig())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--extra-cert-names",
                "127.0.0.1",
                "--cert-check-interval",
                "2s",
                "--debug",
            ])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Server { child, port, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn info(&self) -> ServerInfo {
        ServerInfo {
            port: self.port,
            log: self.log.clone(),
        }
    }

    /// Waits for `/readyz`; the server's log is shown if it never gets there.
    pub fn wait_ready(&self) {
        let port = self.port;
        let log = self.log.clone();
        wait_with_log(
            &format!("the server on port {port} to be ready"),
            Duration::from_secs(30),
            &log,
            || {
                let out = Command::new("curl")
                    .args(["-fsSk", &format!("https://127.0.0.1:{port}/readyz")])
                    .output()
                    .ok()?;
                out.status.success().then_some(())
            },
        );
    }
}

impl ServerInfo {
    pub fn metrics(&self) -> String {
        let out = Command::new("curl")
            .args(["-fsSk", &format!("https://127.0.0.1:{}/metrics", self.port)])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// The value of one sample line of `/metrics`, 0 when absent.
    pub fn sample(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|line| {
                line.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map_or(0.0, |value| value.trim().parse().unwrap())
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `check` until it returns a value, failing after `timeout` with what was awaited.
#[track_caller]
pub fn wait<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Like [`wait`], showing a log's tail on failure.
#[track_caller]
pub fn wait_with_log<T>(
    what: &str,
    timeout: Duration,
    log: &Path,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; log tail:\n{}",
            tail(log)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An HTTPS client that trusts only `ca_pem`.
pub fn client_trusting(ca_pem: &str) -> reqwest::blocking::Client {
    client_builder_trusting(ca_pem).build().unwrap()
}

/// A client builder that trusts only `ca_pem`, for settings of its own.
pub fn client_builder_trusting(ca_pem: &str) -> reqwest::blocking::ClientBuilder {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::blocking::Client::builder().use_preconfigured_tls(config)
}

/// A Plan fixture from tests/plans with its `# expect:` and `# warn:` lines.
pub struct PlanFile {
    pub path: PathBuf,
    pub name: String,
    pub text: String,
    pub expect: Vec<String>,
    pub warn: Vec<String>,
}

pub fn plan_files(kind: &str) -> Vec<PlanFile> {
    let mut files: Vec<PlanFile> = std::fs::read_dir(repo("tests/plans").join(kind))
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let marked = |marker: &str| {
                text.lines()
                    .filter_map(|l| l.strip_prefix(marker))
                    .map(str::to_owned)
                    .collect()
            };
            let document = system_upgrade_controller::yaml::documents(&text)
                .unwrap()
                .remove(0);
            PlanFile {
                name: document["metadata"]["name"].as_str().unwrap().to_owned(),
                expect: marked("# expect: "),
                warn: marked("# warn: "),
                path,
                text,
            }
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    files
}

/// Runs a script of the repository with bash and returns its stdout; panics with its stderr
/// when it fails.
pub fn script(name: &str, args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(repo(name))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
