//! The rollout benchmark, run by `bash bench/run.sh`: a fresh simulated cluster of N nodes, one
//! Plan with concurrency C and short upgrade Jobs, measured from outside the controller.
//!
//! It measures, in order:
//! 1. the floor: waves of C bare Jobs (no controller) on the same test bed, each timed from the
//!    first create to the last completion seen; floor = ⌈N/C⌉ × the median wave;
//! 2. the rollout: wall time from `kubectl apply` of the Plan to the last node labelled done, and
//!    the hand-off (a Job's completion seen → the next Job seen created), from watch events
//!    stamped at millisecond resolution;
//! 3. API requests during the rollout: all clients' from kube-apiserver's `apiserver_request_total`
//!    (node leases left out), and the controller's own from the API server's audit log (the
//!    controller authenticates with its ServiceAccount's token, and only that user is audited);
//! 4. the controller's peak RSS and CPU seconds from /proc;
//! 5. the idle cost: with the Plan done and more Plans added that have nothing to do (every node
//!    already carries their hash), CPU, RSS, reconciles and API requests over a quiet minute.
//!
//! It prints one table with the goals and writes the figures as JSON.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{Value, json};

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const NAMESPACE: &str = "system-upgrade";
const PLAN: &str = "bench";
const CONTROLLER_USER: &str = "system:serviceaccount:system-upgrade:system-upgrade-controller";
/// Bare Jobs of the floor live here, away from the controller's namespace.
const FLOOR_NAMESPACE: &str = "suc-bench-floor";
const FLOOR_WAVES: usize = 3;

#[derive(Parser, Debug)]
#[command(about = "Measure a rollout of one Plan across a fresh simulated cluster")]
struct Args {
    /// Simulated nodes in the cluster; the Plan selects them all.
    #[arg(long, default_value_t = 50)]
    nodes: usize,
    /// The Plan's concurrency.
    #[arg(long, default_value_t = 5)]
    concurrency: usize,
    /// How long each upgrade Job runs on a simulated node.
    #[arg(long, default_value = "1s")]
    job_duration: String,
    /// Plans present while the idle cost is measured (the rolled-out one and others with nothing
    /// to do); 0 skips the idle measurement.
    #[arg(long, default_value_t = 50)]
    idle_plans: usize,
    /// Length of the idle measurement.
    #[arg(long, default_value_t = 60)]
    idle_seconds: u64,
    /// Working directory (cluster, logs).
    #[arg(long, default_value = "/tmp/suc-bench")]
    dir: PathBuf,
    /// Where the JSON goes (default: bench/results/nodes-N-concurrency-C.json).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The controller binary.
    #[arg(long, default_value = "target/release/system-upgrade-controller")]
    controller: PathBuf,
    /// Leave the cluster and the controller running afterwards.
    #[arg(long)]
    keep: bool,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let cluster = args.dir.join("cluster");
    let outcome = bench(&args, &cluster).await;
    if !args.keep {
        let _ = Command::new("bash")
            .args(["tests/cluster/cluster.sh", "down", "--dir"])
            .arg(&cluster)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    if let Err(e) = outcome {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

fn say(what: &str) {
    eprintln!("\n== {what}");
}

async fn bench(args: &Args, cluster: &Path) -> Result<()> {
    if args.nodes == 0 || args.concurrency == 0 {
        return Err("--nodes and --concurrency must be at least 1".into());
    }
    std::fs::create_dir_all(&args.dir)?;
    let policy = args.dir.join("audit-policy.yaml");
    std::fs::write(&policy, audit_policy())?;

    say(&format!(
        "Starting a fresh test cluster with {} nodes",
        args.nodes
    ));
    let started = Instant::now();
    let kubeconfig = run_out(
        Command::new("bash")
            .args(["tests/cluster/cluster.sh", "up", "--dir"])
            .arg(cluster)
            .args(["--nodes", &args.nodes.to_string(), "--audit-policy"])
            .arg(&policy)
            .stderr(Stdio::inherit()),
    )?;
    let kubeconfig = PathBuf::from(kubeconfig.trim());
    let cluster_start = started.elapsed();
    let client = client_for(&kubeconfig).await?;
    let kubectl = Kubectl(kubeconfig.clone());

    kubectl.run(&[
        "apply",
        "-f",
        "deploy/namespace.yaml",
        "-f",
        "deploy/crd.yaml",
        "-f",
        "deploy/rbac.yaml",
    ])?;
    kubectl.run(&[
        "wait",
        "--for",
        "condition=established",
        "crd/plans.upgrade.cattle.io",
        "--timeout=60s",
    ])?;

    let node_names = node_names(&client).await?;
    say(&format!(
        "The floor: {FLOOR_WAVES} waves of {} bare Jobs, no controller",
        args.concurrency
    ));
    let machine_before = machine_cpu()?;
    let wave = floor_wave(&client, &kubectl, &node_names, args).await?;
    let floor_busy = busy_share(machine_before, machine_cpu()?);
    let waves = args.nodes.div_ceil(args.concurrency);
    let floor = wave * u32::try_from(waves)?;
    eprintln!(
        "median wave {:.2}s; floor = {waves} waves × that = {:.1}s",
        wave.as_secs_f64(),
        floor.as_secs_f64()
    );

    say("Starting the controller as its ServiceAccount (token), webhooks pointed at it");
    let mut controller = Controller::start(args, &kubectl)?;
    let floor = Floor {
        wave,
        total: floor,
        busy: floor_busy,
    };
    let outcome = measure(args, &client, &kubectl, &controller, floor, cluster_start).await;
    if !args.keep {
        controller.stop();
    }
    outcome
}

/// The floor: the median wave of bare Jobs, the whole rollout's worth of them, and how busy the
/// machine was meanwhile.
struct Floor {
    wave: Duration,
    total: Duration,
    busy: f64,
}

async fn measure(
    args: &Args,
    client: &Client,
    kubectl: &Kubectl,
    controller: &Controller,
    floor: Floor,
    cluster_start: Duration,
) -> Result<()> {
    let audit_log = kubectl.0.with_file_name("logs").join("audit.log");
    let seen = Seen::start(client).await?;

    say(&format!(
        "Rolling Plan {PLAN} across {} nodes, concurrency {}",
        args.nodes, args.concurrency
    ));
    let api_before = apiserver_requests(kubectl)?;
    let audit_before = file_len(&audit_log);
    let cpu_before = controller.cpu_seconds()?;
    let machine_before = machine_cpu()?;
    let origin = seen.origin;
    let applied = origin.elapsed();
    kubectl.apply(&plan(PLAN, args, None))?;
    let limit = Duration::from_secs(600).max(floor.total * 10);
    let wall = loop {
        let labelled = seen.labelled();
        if labelled.len() >= args.nodes {
            let last = labelled.into_iter().max().unwrap_or_default();
            break last.saturating_sub(applied);
        }
        if origin.elapsed() - applied > limit {
            return Err(format!(
                "only {} of {} nodes were labelled after {}s; see {}",
                labelled.len(),
                args.nodes,
                limit.as_secs(),
                controller.log.display()
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let cpu_rollout = controller.cpu_seconds()? - cpu_before;
    let rollout_busy = busy_share(machine_before, machine_cpu()?);
    let peak_rss_rollout = controller.status_kib("VmHWM")?;
    kubectl.run(&[
        "-n",
        NAMESPACE,
        "wait",
        "--for=condition=Complete",
        &format!("plan/{PLAN}"),
        "--timeout=120s",
    ])?;
    // The last status write follows the last label; both belong to the rollout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let api_during = apiserver_requests(kubectl)?.minus(&api_before);
    let ours = audited(&audit_log, audit_before, file_len(&audit_log))?;
    let handoffs = seen.handoffs(args.concurrency);
    eprintln!(
        "last node labelled {:.1}s after the apply",
        wall.as_secs_f64()
    );

    let idle = if args.idle_plans > 0 {
        Some(idle(args, client, kubectl, controller, &audit_log).await?)
    } else {
        None
    };

    let report = Report {
        args,
        cluster_start,
        floor,
        wall,
        rollout_busy,
        handoffs,
        api_during,
        ours,
        cpu_rollout,
        peak_rss_rollout,
        idle,
    };
    report.print();
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "bench/results/nodes-{}-concurrency-{}.json",
            args.nodes, args.concurrency
        ))
    });
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report.json())? + "\n")?;
    eprintln!("\nwritten: {}", out.display());
    Ok(())
}

/// The audit policy: only the controller's own requests, once each when answered.
fn audit_policy() -> String {
    format!(
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived, ResponseStarted]\n\
         rules:\n- level: Metadata\n  users: [\"{CONTROLLER_USER}\"]\n- level: None\n"
    )
}

/// The benchmark's Plan: every node, short Jobs (the test bed's kwok stages read the duration
/// from the annotation, which the controller copies to the upgrade pod).
fn plan(name: &str, args: &Args, labels_done: Option<&str>) -> String {
    let mut plan = json!({
        "apiVersion": "upgrade.cattle.io/v1",
        "kind": "Plan",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "annotations": {"suc-test/duration": args.job_duration},
        },
        "spec": {
            "concurrency": args.concurrency,
            "version": "v1.30.4+k3s1",
            "serviceAccountName": "system-upgrade",
            "nodeSelector": {"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "Exists"}
            ]},
            "tolerations": [{"operator": "Exists"}],
            "upgrade": {"image": "rancher/k3s-upgrade"},
        },
    });
    if let Some(hash) = labels_done {
        plan["metadata"]["labels"] = json!({"suc-bench/idle": hash});
    }
    plan.to_string()
}

async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    Ok(Client::try_from(config)?)
}

async fn node_names(client: &Client) -> Result<Vec<String>> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut names: Vec<String> = nodes
        .list(&Default::default())
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect();
    names.sort();
    Ok(names)
}

/// Runs FLOOR_WAVES waves of C bare Jobs, one per node, shaped for the test bed's kwok stages
/// like the controller's (same label, same duration annotation), and returns the median wave.
async fn floor_wave(
    client: &Client,
    kubectl: &Kubectl,
    nodes: &[String],
    args: &Args,
) -> Result<Duration> {
    kubectl.run(&["create", "namespace", FLOOR_NAMESPACE])?;
    // The namespace's default ServiceAccount must exist before a Job's pod can be created.
    let deadline = Instant::now() + Duration::from_secs(60);
    while kubectl
        .run(&["-n", FLOOR_NAMESPACE, "get", "serviceaccount", "default"])
        .is_err()
    {
        if Instant::now() > deadline {
            return Err("the floor namespace got no default ServiceAccount".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let jobs: Api<Job> = Api::namespaced(client.clone(), FLOOR_NAMESPACE);
    let mut times = Vec::new();
    for w in 0..FLOOR_WAVES {
        let label = format!("suc-bench/wave={w}");
        let mut stream =
            watcher::watcher(jobs.clone(), watcher::Config::default().labels(&label)).boxed();
        // Wait for the watch to be established before starting the clock.
        while let Some(event) = stream.try_next().await? {
            if matches!(event, Event::InitDone) {
                break;
            }
        }
        let started = Instant::now();
        let wave: Vec<Job> = (0..args.concurrency)
            .map(|i| {
                let node = &nodes[(w * args.concurrency + i) % nodes.len()];
                serde_json::from_value(bare_job(w, i, node, &args.job_duration))
            })
            .collect::<Result<_, _>>()?;
        let mut created = futures::stream::iter(wave.into_iter().map(|job| {
            let jobs = jobs.clone();
            async move { jobs.create(&PostParams::default(), &job).await }
        }))
        .buffer_unordered(8);
        while let Some(result) = created.next().await {
            result?;
        }
        let mut done = std::collections::HashSet::new();
        let deadline = started + Duration::from_secs(300);
        while done.len() < args.concurrency {
            let next = tokio::time::timeout_at(deadline.into(), stream.try_next()).await;
            match next {
                Err(_) => return Err(format!("floor wave {w} did not finish in 300s").into()),
                Ok(Ok(Some(Event::Apply(job) | Event::InitApply(job)))) => {
                    if succeeded(&job) {
                        done.insert(job.name_any());
                    }
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return Err("the floor watch ended".into()),
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        let took = started.elapsed();
        eprintln!("wave {w}: {:.2}s", took.as_secs_f64());
        times.push(took);
    }
    // Gone before the rollout starts, so its clean-up is not counted with the rollout's requests.
    kubectl.run(&["delete", "namespace", FLOOR_NAMESPACE, "--timeout=180s"])?;
    times.sort();
    Ok(times[times.len() / 2])
}

fn bare_job(wave: usize, index: usize, node: &str, duration: &str) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": format!("floor-{wave}-{index}"),
            "labels": {"suc-bench/wave": wave.to_string()},
        },
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {
                    "labels": {"upgrade.cattle.io/controller": "suc-bench-floor"},
                    "annotations": {"suc-test/duration": duration},
                },
                "spec": {
                    "restartPolicy": "Never",
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "upgrade", "image": "rancher/k3s-upgrade"}],
                },
            },
        },
    })
}

fn succeeded(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.succeeded)
        .is_some_and(|n| n > 0)
}

/// What the benchmark's watches saw, stamped relative to `origin`.
struct Seen {
    origin: Instant,
    state: Arc<Mutex<SeenState>>,
}

#[derive(Default)]
struct SeenState {
    job_created: HashMap<String, Duration>,
    job_completed: HashMap<String, Duration>,
    node_labelled: HashMap<String, Duration>,
}

impl Seen {
    /// Starts watches of the Plan's Jobs and of all Nodes, and returns once both have listed.
    async fn start(client: &Client) -> Result<Seen> {
        let origin = Instant::now();
        let state = Arc::new(Mutex::new(SeenState::default()));
        let label = format!("upgrade.cattle.io/plan={PLAN}");
        let jobs: Api<Job> = Api::namespaced(client.clone(), NAMESPACE);
        let nodes: Api<Node> = Api::all(client.clone());
        let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(2);

        let (s, ready) = (state.clone(), ready_tx.clone());
        let mut job_events =
            watcher::watcher(jobs, watcher::Config::default().labels(&label)).boxed();
        tokio::spawn(async move {
            while let Some(Ok(event)) = job_events.next().await {
                let now = origin.elapsed();
                match event {
                    Event::InitDone => {
                        let _ = ready.send(()).await;
                    }
                    Event::Apply(job) | Event::InitApply(job) => {
                        let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                        s.job_created.entry(job.name_any()).or_insert(now);
                        if succeeded(&job) {
                            s.job_completed.entry(job.name_any()).or_insert(now);
                        }
                    }
                    _ => {}
                }
            }
        });
        let (s, ready) = (state.clone(), ready_tx);
        let key = format!("plan.upgrade.cattle.io/{PLAN}");
        let mut node_events = watcher::watcher(nodes, watcher::Config::default()).boxed();
        tokio::spawn(async move {
            while let Some(Ok(event)) = node_events.next().await {
                let now = origin.elapsed();
                match event {
                    Event::InitDone => {
                        let _ = ready.send(()).await;
                    }
                    Event::Apply(node) | Event::InitApply(node)
                        if node.labels().contains_key(&key) =>
                    {
                        let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                        s.node_labelled.entry(node.name_any()).or_insert(now);
                    }
                    _ => {}
                }
            }
        });
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
                .await
                .map_err(|_| "the benchmark's watches did not start in 60s")?;
        }
        Ok(Seen { origin, state })
    }

    fn labelled(&self) -> Vec<Duration> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.node_labelled.values().copied().collect()
    }

    /// Hand-offs: with concurrency C, the (C+k)-th Job created takes the slot the k-th Job
    /// completed frees, so each hand-off is that creation minus that completion.
    fn handoffs(&self, concurrency: usize) -> Vec<Duration> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut created: Vec<Duration> = s.job_created.values().copied().collect();
        let mut completed: Vec<Duration> = s.job_completed.values().copied().collect();
        created.sort();
        completed.sort();
        created
            .iter()
            .skip(concurrency)
            .zip(&completed)
            .map(|(c, d)| c.saturating_sub(*d))
            .collect()
    }
}

/// kubectl with the cluster's admin kubeconfig.
struct Kubectl(PathBuf);

impl Kubectl {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(&self.0).args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        run_out(self.command(args).stderr(Stdio::piped()))
    }

    fn apply(&self, manifest: &str) -> Result<()> {
        let mut child = self
            .command(&["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or("kubectl has no stdin")?
            .write_all(manifest.as_bytes())?;
        let status = child.wait()?;
        if !status.success() {
            return Err(format!("kubectl apply failed ({status})").into());
        }
        Ok(())
    }
}

fn run_out(command: &mut Command) -> Result<String> {
    let output = command.output()?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// The controller process, run on this machine as its ServiceAccount.
struct Controller {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Controller {
    fn start(args: &Args, kubectl: &Kubectl) -> Result<Controller> {
        let token = kubectl.run(&[
            "-n",
            NAMESPACE,
            "create",
            "token",
            "system-upgrade-controller",
            "--duration=24h",
        ])?;
        let mut config: Value = serde_json::from_str(&kubectl.run(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ])?)?;
        config["users"] = json!([{"name": "controller", "user": {"token": token.trim()}}]);
        config["contexts"][0]["context"]["user"] = json!("controller");
        let controller_kubeconfig = args.dir.join("controller.kubeconfig");
        std::fs::write(&controller_kubeconfig, config.to_string())?;

        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        // The webhooks call the controller on this machine by URL instead of through a Service.
        let webhooks = std::fs::read_to_string("webhook-config.yaml")?;
        kubectl.apply(&webhooks_by_url(
            &webhooks,
            &format!("https://127.0.0.1:{port}"),
        ))?;

        let log = args.dir.join("controller.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(&args.controller)
            .arg("run")
            .arg("--kubeconfig")
            .arg(&controller_kubeconfig)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--extra-cert-names",
                "127.0.0.1",
            ])
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()?;
        let controller = Controller { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while controller.get("/readyz").is_err() {
            if Instant::now() > deadline {
                return Err("the controller was not ready in 60s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        while kubectl
            .run(&[
                "get",
                "validatingwebhookconfiguration",
                "system-upgrade-controller",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ])?
            .is_empty()
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(controller)
    }

    fn get(&self, path: &str) -> Result<String> {
        run_out(
            Command::new("curl")
                .args(["-fsSk", "--max-time", "5"])
                .arg(format!("https://127.0.0.1:{}{path}", self.port)),
        )
    }

    /// CPU seconds (user and system) the process has used.
    fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // Fields after the command name, which ends with the last ')'.
        let rest = stat.rsplit_once(')').ok_or("unreadable stat")?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / clock_ticks()?)
    }

    fn status_kib(&self, field: &str) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no {field} in /proc status").into())
    }

    /// The sum of a counter family over its labels, from the controller's /metrics.
    fn counter(&self, family: &str) -> Result<f64> {
        Ok(sum_family(&self.get("/metrics")?, family))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The machine's CPU time so far, busy and in all, in clock ticks (from /proc/stat).
fn machine_cpu() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().ok_or("empty /proc/stat")?;
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0.0) + ticks.get(4).copied().unwrap_or(0.0);
    Ok((total - idle, total))
}

/// The share of the machine's CPU time that was busy between two readings of [`machine_cpu`].
fn busy_share(before: (f64, f64), after: (f64, f64)) -> f64 {
    let total = after.1 - before.1;
    if total <= 0.0 {
        return 0.0;
    }
    (after.0 - before.0) / total
}

fn clock_ticks() -> Result<f64> {
    Ok(run_out(Command::new("getconf").arg("CLK_TCK"))?
        .trim()
        .parse()?)
}

/// The webhook configuration with each `service:` reference replaced by a URL at `base`.
fn webhooks_by_url(config: &str, base: &str) -> String {
    let mut out = String::new();
    let mut in_service = false;
    let mut path = String::new();
    for line in config.lines() {
        if line == "    service:" {
            in_service = true;
            path.clear();
            continue;
        }
        if in_service {
            if let Some(rest) = line.strip_prefix("      ") {
                if let Some(p) = rest.trim().strip_prefix("path:") {
                    path = p.trim().to_owned();
                }
                continue;
            }
            out.push_str(&format!("    url: {base}{path}\n"));
            in_service = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn sum_family(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Requests by "verb resource" (resource with group and subresource).
#[derive(Default, Clone)]
struct Requests(BTreeMap<String, f64>);

impl Requests {
    fn minus(&self, before: &Requests) -> Requests {
        Requests(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0.0)))
                .filter(|(_, v)| *v > 0.0)
                .collect(),
        )
    }

    fn writes(&self) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                let verb = k.split(' ').next().unwrap_or_default().to_lowercase();
                matches!(
                    verb.as_str(),
                    "create" | "post" | "update" | "put" | "patch" | "delete" | "deletecollection"
                )
            })
            .map(|(_, v)| v)
            .sum()
    }

    fn total(&self) -> f64 {
        self.0.values().sum()
    }

    fn json(&self) -> Value {
        json!(self.0)
    }
}

/// kube-apiserver's request counts by verb and resource, node leases left out (kwok renews one
/// per node every few seconds, whatever the controller does).
fn apiserver_requests(kubectl: &Kubectl) -> Result<Requests> {
    let text = kubectl.run(&["get", "--raw", "/metrics"])?;
    let mut requests = Requests::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| -> String {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_owned())
                .unwrap_or_default()
        };
        let resource = resource_name(&label("group"), &label("resource"), &label("subresource"));
        if resource.is_empty() || resource.starts_with("leases") {
            continue;
        }
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *requests
            .0
            .entry(format!("{} {resource}", label("verb")))
            .or_default() += value;
    }
    Ok(requests)
}

fn resource_name(group: &str, resource: &str, subresource: &str) -> String {
    let mut name = resource.to_owned();
    if !group.is_empty() {
        name = format!("{name}.{group}");
    }
    if !subresource.is_empty() {
        name = format!("{name}/{subresource}");
    }
    name
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The controller's requests in the audit log between two offsets, by verb and resource.
fn audited(path: &Path, from: u64, to: u64) -> Result<Requests> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let reader = std::io::BufReader::new(file.take(to.saturating_sub(from)));
    let mut requests = Requests::default();
    for line in reader.lines() {
        let Ok(event) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        if event["user"]["username"] != CONTROLLER_USER {
            continue;
        }
        let object = &event["objectRef"];
        let resource = resource_name(
            object["apiGroup"].as_str().unwrap_or_default(),
            object["resource"].as_str().unwrap_or_default(),
            object["subresource"].as_str().unwrap_or_default(),
        );
        let verb = event["verb"].as_str().unwrap_or_default();
        *requests.0.entry(format!("{verb} {resource}")).or_default() += 1.0;
    }
    Ok(requests)
}

struct Idle {
    plans: usize,
    seconds: f64,
    cpu_percent: f64,
    rss_kib: u64,
    peak_rss_kib: u64,
    reconciles: f64,
    requests: Requests,
    settle_seconds: f64,
}

/// The idle cost: every node is given the done label of each extra Plan (they share the rolled-out
/// Plan's spec, hence its hash), the Plans are created and found Complete, and the controller is
/// then watched for a quiet while.
async fn idle(
    args: &Args,
    client: &Client,
    kubectl: &Kubectl,
    controller: &Controller,
    audit_log: &Path,
) -> Result<Idle> {
    let extra = args.idle_plans - 1;
    say(&format!(
        "Idle cost: {} Plans with nothing to do on {} nodes",
        args.idle_plans, args.nodes
    ));
    let hash = kubectl.run(&[
        "-n",
        NAMESPACE,
        "get",
        "plan",
        PLAN,
        "-o",
        "jsonpath={.status.latestHash}",
    ])?;
    let labels: BTreeMap<String, String> = (1..=extra)
        .map(|k| (format!("plan.upgrade.cattle.io/idle-{k}"), hash.clone()))
        .collect();
    let nodes: Api<Node> = Api::all(client.clone());
    let patch = json!({"metadata": {"labels": labels}});
    let names = node_names(client).await?;
    let mut patched = futures::stream::iter(names.iter().map(|name| {
        let (nodes, patch) = (nodes.clone(), patch.clone());
        async move {
            nodes
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    }))
    .buffer_unordered(16);
    while let Some(result) = patched.next().await {
        result?;
    }
    let started = Instant::now();
    let manifests: Vec<String> = (1..=extra)
        .map(|k| plan(&format!("idle-{k}"), args, Some(&hash)))
        .collect();
    if !manifests.is_empty() {
        kubectl.apply(&manifests.join("\n"))?;
    }
    kubectl.run(&[
        "-n",
        NAMESPACE,
        "wait",
        "--for=condition=Complete",
        "plans",
        "--all",
        "--timeout=300s",
    ])?;
    let settle_seconds = started.elapsed().as_secs_f64();
    // Let the last status writes and events land before the quiet window starts.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu_before = controller.cpu_seconds()?;
    let reconciles_before = controller.counter("suc_reconciles_total")?;
    let audit_before = file_len(audit_log);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.idle_seconds)).await;
    let seconds = window.elapsed().as_secs_f64();
    let cpu = controller.cpu_seconds()? - cpu_before;
    Ok(Idle {
        plans: args.idle_plans,
        seconds,
        cpu_percent: 100.0 * cpu / seconds,
        rss_kib: controller.status_kib("VmRSS")?,
        peak_rss_kib: controller.status_kib("VmHWM")?,
        reconciles: controller.counter("suc_reconciles_total")? - reconciles_before,
        requests: audited(audit_log, audit_before, file_len(audit_log))?,
        settle_seconds,
    })
}

struct Report<'a> {
    args: &'a Args,
    cluster_start: Duration,
    floor: Floor,
    wall: Duration,
    /// How busy the machine's CPUs were during the rollout (0 to 1).
    rollout_busy: f64,
    handoffs: Vec<Duration>,
    api_during: Requests,
    ours: Requests,
    cpu_rollout: f64,
    peak_rss_rollout: u64,
    idle: Option<Idle>,
}

fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    // Nearest rank.
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank - 1).copied()
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| (d.as_secs_f64() * 1000.0).round())
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

impl Report<'_> {
    fn handoff(&self, q: f64) -> Option<f64> {
        let mut sorted = self.handoffs.clone();
        sorted.sort();
        ms(percentile(&sorted, q))
    }

    /// Every hand-off in milliseconds, shortest first.
    fn handoffs_ms(&self) -> Vec<f64> {
        let mut all: Vec<f64> = self
            .handoffs
            .iter()
            .map(|d| (d.as_secs_f64() * 1000.0).round())
            .collect();
        all.sort_by(f64::total_cmp);
        all
    }

    fn writes_per_node(&self) -> f64 {
        self.ours.writes() / self.args.nodes as f64
    }

    fn print(&self) {
        let a = self.args;
        let ratio = self.wall.as_secs_f64() / self.floor.total.as_secs_f64();
        let rows: Vec<(String, String, String)> = vec![
            (
                "rollout wall time (apply → last node labelled)".into(),
                format!("{:.1} s", self.wall.as_secs_f64()),
                String::new(),
            ),
            (
                "floor (waves × bare-Job wave)".into(),
                format!(
                    "{:.1} s ({} × {:.2} s)",
                    self.floor.total.as_secs_f64(),
                    a.nodes.div_ceil(a.concurrency),
                    self.floor.wave.as_secs_f64()
                ),
                String::new(),
            ),
            (
                "machine CPU busy: bare Jobs / rollout".into(),
                format!(
                    "{:.0} % / {:.0} %",
                    self.floor.busy * 100.0,
                    self.rollout_busy * 100.0
                ),
                String::new(),
            ),
            (
                "wall time / floor".into(),
                format!("{ratio:.2}"),
                verdict(ratio <= 1.2, "≤ 1.2"),
            ),
            (
                "hand-off p50 / p99".into(),
                format!(
                    "{} / {} ms ({} hand-offs)",
                    fmt_opt(self.handoff(0.5)),
                    fmt_opt(self.handoff(0.99)),
                    self.handoffs.len()
                ),
                verdict(
                    self.handoff(0.99).is_some_and(|p| p < 100.0),
                    "p99 < 100 ms",
                ),
            ),
            (
                "controller writes per upgraded node".into(),
                format!("{:.2}", self.writes_per_node()),
                verdict(self.writes_per_node() <= 5.0, "≤ 5"),
            ),
            (
                "controller requests during rollout".into(),
                format!(
                    "{:.0} ({:.0} writes)",
                    self.ours.total(),
                    self.ours.writes()
                ),
                String::new(),
            ),
            (
                "all clients' requests (no leases)".into(),
                format!(
                    "{:.0} ({:.0} writes)",
                    self.api_during.total(),
                    self.api_during.writes()
                ),
                String::new(),
            ),
            (
                "controller CPU during rollout".into(),
                format!("{:.2} s", self.cpu_rollout),
                String::new(),
            ),
            (
                "controller peak RSS (start + rollout)".into(),
                format!("{} MiB", mib(self.peak_rss_rollout)),
                String::new(),
            ),
        ];
        let mut rows = rows;
        if let Some(idle) = &self.idle {
            rows.push((
                format!("idle RSS ({} Plans, {} nodes)", idle.plans, a.nodes),
                format!(
                    "{} MiB (peak {} MiB)",
                    mib(idle.rss_kib),
                    mib(idle.peak_rss_kib)
                ),
                verdict(idle.peak_rss_kib < 64 * 1024, "< 64 MiB"),
            ));
            rows.push((
                format!("idle CPU over {:.0} s", idle.seconds),
                format!("{:.2} % of a core", idle.cpu_percent),
                verdict(idle.cpu_percent < 1.0, "< 1 %"),
            ));
            rows.push((
                "idle reconciles / API requests".into(),
                format!("{:.0} / {:.0}", idle.reconciles, idle.requests.total()),
                String::new(),
            ));
        }
        println!(
            "\n{} nodes, concurrency {}, {} Jobs (cluster started in {:.0} s)\n",
            a.nodes,
            a.concurrency,
            a.job_duration,
            self.cluster_start.as_secs_f64()
        );
        println!("| measure | value | goal |");
        println!("|---|---|---|");
        for (name, value, goal) in rows {
            println!("| {name} | {value} | {goal} |");
        }
        println!("\ncontroller requests during the rollout, by verb and resource:");
        for (k, v) in &self.ours.0 {
            println!("  {v:>7.0}  {k}");
        }
        println!("\nall clients' requests during the rollout (node leases left out):");
        for (k, v) in &self.api_during.0 {
            println!("  {v:>7.0}  {k}");
        }
    }

    fn json(&self) -> Value {
        let a = self.args;
        json!({
            "nodes": a.nodes,
            "concurrency": a.concurrency,
            "job_duration": a.job_duration,
            "cluster_start_seconds": self.cluster_start.as_secs_f64(),
            "floor_wave_seconds": self.floor.wave.as_secs_f64(),
            "floor_seconds": self.floor.total.as_secs_f64(),
            "machine_cpu_busy_floor": self.floor.busy,
            "wall_seconds": self.wall.as_secs_f64(),
            "wall_over_floor": self.wall.as_secs_f64() / self.floor.total.as_secs_f64(),
            "machine_cpu_busy_rollout": self.rollout_busy,
            "handoffs": self.handoffs.len(),
            "handoff_p50_ms": self.handoff(0.5),
            "handoff_p99_ms": self.handoff(0.99),
            "handoff_max_ms": self.handoff(1.0),
            "handoffs_ms": self.handoffs_ms(),
            "controller_writes_per_node": self.writes_per_node(),
            "controller_requests": self.ours.json(),
            "apiserver_requests_without_leases": self.api_during.json(),
            "controller_cpu_seconds_rollout": self.cpu_rollout,
            "controller_peak_rss_mib_rollout": mib(self.peak_rss_rollout),
            "idle": self.idle.as_ref().map(|i| json!({
                "plans": i.plans,
                "seconds": i.seconds,
                "cpu_percent": i.cpu_percent,
                "rss_mib": mib(i.rss_kib),
                "peak_rss_mib": mib(i.peak_rss_kib),
                "reconciles": i.reconciles,
                "controller_requests": i.requests.json(),
                "plans_complete_after_seconds": i.settle_seconds,
            })),
        })
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.0}"))
}

fn verdict(met: bool, goal: &str) -> String {
    format!("{goal}: {}", if met { "met" } else { "NOT met" })
}
