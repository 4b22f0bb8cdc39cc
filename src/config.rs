//! The command line. Every flag of `run` has a `SYSTEM_UPGRADE_*` environment twin; the names the
//! Go controller reads (`SYSTEM_UPGRADE_CONTROLLER_*`) keep their meaning.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::error::Error;

/// The version `--version` prints: the crate's version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SUC_GIT_COMMIT"),
    ")"
);

#[derive(Debug, Parser)]
#[command(
    name = "system-upgrade-controller",
    version = VERSION,
    about = "Upgrades Kubernetes nodes as declared in upgrade.cattle.io/v1 Plans, with an admission webhook"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line and the environment. As in the Go controller, a setting whose environment
    /// variable is set but empty takes its default (the Go manifests leave some empty).
    pub fn from_env() -> Cli {
        let command = Cli::command().mut_subcommand("run", |run| run.mut_args(ignore_if_empty));
        let matches = command.get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

fn ignore_if_empty(arg: Arg) -> Arg {
    let empty = arg
        .get_env()
        .and_then(std::env::var_os)
        .is_some_and(|value| value.is_empty());
    if empty { arg.env(None) } else { arg }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS server (webhooks, health, metrics) and, unless --webhook-only, the controller.
    Run(Box<RunConfig>),
    /// Print the Plan CustomResourceDefinition as YAML.
    Crd,
    /// Check Plan files offline with the webhook's rules (exit status 1 when a Plan is invalid).
    Check(CheckConfig),
    /// Show what a Plan would do, changing nothing: its version, its nodes (done, opted out,
    /// held) and the order in which the rest would be upgraded.
    Preview(PreviewConfig),
    /// List what in the cluster must change before the Go controller replaces this one, changing
    /// nothing (exit status 1 while anything must).
    SwitchBackCheck(SwitchBackConfig),
    /// Print a shell completion script: `source <(system-upgrade-controller completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// Serve the webhooks, health and metrics without connecting to any cluster.
    #[arg(long, env = "SYSTEM_UPGRADE_WEBHOOK_ONLY", value_parser = go_bool())]
    pub webhook_only: bool,

    /// Address of the HTTPS listener.
    #[arg(long, env = "SYSTEM_UPGRADE_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// Also serve /metrics (and /healthz) over plain HTTP on this address, e.g. 0.0.0.0:8080, for
    /// scrapers that do not speak the webhook's TLS.
    #[arg(long, env = "SYSTEM_UPGRADE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve tls.crt and tls.key from this directory, reloading them when they change. Without it,
    /// certificates are bootstrapped in the cluster (or self-signed in memory with --webhook-only).
    #[arg(long, env = "SYSTEM_UPGRADE_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,

    /// Controller name: value of the `upgrade.cattle.io/controller` label on its Jobs.
    #[arg(
        long,
        env = "SYSTEM_UPGRADE_CONTROLLER_NAME",
        default_value = "system-upgrade-controller"
    )]
    pub name: String,

    /// Namespace whose Plans, Jobs and Secrets the controller handles; also holds the webhook CA.
    #[arg(
        long,
        env = "SYSTEM_UPGRADE_CONTROLLER_NAMESPACE",
        default_value = "system-upgrade"
    )]
    pub namespace: String,

    /// Node the controller runs on (for events).
    #[arg(long, env = "SYSTEM_UPGRADE_CONTROLLER_NODE_NAME")]
    pub node_name: Option<String>,

    /// Log at debug level.
    #[arg(long, env = "SYSTEM_UPGRADE_CONTROLLER_DEBUG", value_parser = go_bool())]
    pub debug: bool,

    /// Log format.
    #[arg(
        long,
        env = "SYSTEM_UPGRADE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Kubeconfig file; in-cluster configuration when empty.
    #[arg(long, env = "SYSTEM_UPGRADE_CONTROLLER_KUBE_CONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// API server URL, overriding the kubeconfig's.
    #[arg(long, env = "SYSTEM_UPGRADE_CONTROLLER_MASTER_URL")]
    pub master: Option<String>,

    /// Name of the Service in front of this server (the webhook certificate is issued for it).
    #[arg(
        long,
        env = "SYSTEM_UPGRADE_WEBHOOK_SERVICE_NAME",
        default_value = "system-upgrade-controller"
    )]
    pub service_name: String,

    /// Name of the Mutating- and ValidatingWebhookConfiguration whose caBundle is kept current.
    #[arg(
        long,
        env = "SYSTEM_UPGRADE_WEBHOOK_CONFIG_NAME",
        default_value = "system-upgrade-controller"
    )]
    pub webhook_config_name: String,

    /// Extra DNS names or IP addresses for the bootstrapped serving certificate (comma-separated),
    /// e.g. for a webhook configuration that calls this server by URL.
    #[arg(
        long,
        env = "SYSTEM_UPGRADE_WEBHOOK_EXTRA_CERT_NAMES",
        value_delimiter = ','
    )]
    pub extra_cert_names: Vec<String>,

    /// How often the bootstrapped certificate is checked for renewal and the caBundle re-asserted.
    #[arg(long, env = "SYSTEM_UPGRADE_WEBHOOK_CERT_CHECK_INTERVAL", default_value = "1m", value_parser = parse_interval)]
    pub cert_check_interval: Duration,

    /// Run the controller only while holding the Lease named --name in --namespace, so replicas
    /// can run side by side (every replica serves the webhook).
    #[arg(long, env = "SYSTEM_UPGRADE_CONTROLLER_LEADER_ELECT", value_parser = go_bool())]
    pub leader_elect: bool,

    /// How long a leader's Lease stays valid after its last renewal (the Go controller's name).
    #[arg(long, env = "CATTLE_ELECTION_LEASE_DURATION", default_value = "45s", value_parser = parse_interval)]
    pub leader_election_lease_duration: Duration,

    /// A leader that has not renewed its Lease within this long stops its controller.
    #[arg(long, env = "CATTLE_ELECTION_RENEW_DEADLINE", default_value = "30s", value_parser = parse_interval)]
    pub leader_election_renew_deadline: Duration,

    /// How long to wait before trying again after a failed Lease request.
    #[arg(long, env = "CATTLE_ELECTION_RETRY_PERIOD", default_value = "2s", value_parser = parse_interval)]
    pub leader_election_retry_period: Duration,

    /// Reconciles of Plans running at once.
    #[arg(long, env = "SYSTEM_UPGRADE_CONTROLLER_THREADS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,

    /// Default activeDeadlineSeconds of upgrade Jobs (a Plan's jobActiveDeadlineSecs overrides it).
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS", default_value_t = 600, value_parser = clap::value_parser!(i64).range(0..))]
    pub job_active_deadline_seconds: i64,

    /// Upper bound of activeDeadlineSeconds, also imposed on Plans asking for none; 0 means no bound.
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_ACTIVE_DEADLINE_SECONDS_MAX", default_value_t = 0, value_parser = clap::value_parser!(i64).range(0..))]
    pub job_active_deadline_seconds_max: i64,

    /// backoffLimit of upgrade Jobs.
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_BACKOFF_LIMIT", default_value_t = 2, value_parser = clap::value_parser!(i32).range(0..))]
    pub job_backoff_limit: i32,

    /// imagePullPolicy of every container of upgrade Jobs.
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_IMAGE_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub job_image_pull_policy: String,

    /// Whether the default security context of the upgrade container is privileged.
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_PRIVILEGED", default_value_t = true, action = clap::ArgAction::Set, value_parser = go_bool())]
    pub job_privileged: bool,

    /// ttlSecondsAfterFinished of upgrade Jobs (raised to postCompleteDelay + 60s when shorter).
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_TTL_SECONDS_AFTER_FINISH", default_value_t = 900, value_parser = clap::value_parser!(i32).range(0..))]
    pub job_ttl_seconds_after_finish: i32,

    /// podReplacementPolicy of upgrade Jobs (`Failed` suits upgrades that reboot the node).
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_POD_REPLACEMENT_POLICY", default_value = "TerminatingOrFailed", value_parser = ["TerminatingOrFailed", "Failed"])]
    pub job_pod_replacement_policy: String,

    /// Image of the init container that holds the upgrade until the controller has cordoned or
    /// drained the node (it runs `sh`); the Plan's upgrade image when unset.
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_GATE_IMAGE")]
    pub job_gate_image: Option<String>,

    /// Accepted for compatibility with the Go controller's settings and unused: cordon and drain
    /// are done by the controller itself, so no kubectl image is needed.
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_KUBECTL_IMAGE", hide = true)]
    pub job_kubectl_image: Option<String>,

    /// Accepted for compatibility and unused, as --job-kubectl-image.
    #[arg(long, env = "SYSTEM_UPGRADE_JOB_KUBECTL_IMAGE_WINDOWS", hide = true)]
    pub job_kubectl_image_windows: Option<String>,

    /// How often a Plan's channel is polled for a new version. As in the Go controller, only
    /// an interval longer than 1m is used; a shorter one means the default, 15m.
    #[arg(long, env = "SYSTEM_UPGRADE_PLAN_POLLING_INTERVAL", default_value = "15m", value_parser = parse_polling_interval)]
    pub plan_polling_interval: PollingInterval,

    /// Secret (in --namespace) holding the webhook CA shared by all replicas.
    #[arg(
        long,
        env = "SYSTEM_UPGRADE_WEBHOOK_CA_SECRET",
        default_value = "system-upgrade-controller-webhook-ca"
    )]
    pub ca_secret_name: String,
}

/// Booleans as the Go controller reads them (`1`, `t`, `TRUE`, `false`...), plus `yes`/`no`.
fn go_bool() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

/// A positive Go-style duration such as `30s` or `5m`.
fn parse_interval(text: &str) -> Result<Duration, String> {
    match crate::syntax::duration::parse(text) {
        Ok(nanos) if nanos > 0 => Ok(Duration::from_nanos(nanos.unsigned_abs())),
        Ok(_) => Err("must be positive".to_owned()),
        Err(e) => Err(format!("{e}; use e.g. 30s or 5m")),
    }
}

/// The channel polling interval as configured, and the one used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollingInterval {
    /// What the setting said.
    pub configured: Duration,
    /// The setting when longer than a minute, else the default (15m), as the Go controller does.
    pub effective: Duration,
}

/// The default channel polling interval.
pub const DEFAULT_POLLING_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// A Go duration; intervals of a minute or less give the default, as in the Go controller.
fn parse_polling_interval(text: &str) -> Result<PollingInterval, String> {
    let nanos =
        crate::syntax::duration::parse(text).map_err(|e| format!("{e}; use e.g. 15m or 1h"))?;
    let configured = Duration::from_nanos(nanos.max(0).unsigned_abs());
    let effective = if configured > Duration::from_secs(60) {
        configured
    } else {
        DEFAULT_POLLING_INTERVAL
    };
    Ok(PollingInterval {
        configured,
        effective,
    })
}

/// A client configuration as kubectl finds one: the given kubeconfig file, else `KUBECONFIG`,
/// `~/.kube/config` or the in-cluster service account.
pub async fn kube_config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Config, Error> {
    let options = kube::config::KubeConfigOptions {
        context: context.map(str::to_owned),
        ..kube::config::KubeConfigOptions::default()
    };
    match (kubeconfig, context) {
        (Some(path), _) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|e| Error::KubeConfig(format!("{}: {e}", path.display())))
        }
        // A context names an entry of the kubeconfig kubectl reads ($KUBECONFIG, ~/.kube/config).
        (None, Some(_)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|e| Error::KubeConfig(e.to_string())),
        (None, None) => kube::Config::infer()
            .await
            .map_err(|e| Error::KubeConfig(e.to_string())),
    }
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit status: 0 every Plan valid; 1 a Plan invalid (the controller would \
start no node) or no Plan in the files; 2 a wrong command line; 3 a file could not be read; 4 the \
cluster could not be read (kubeconfig, connection, permissions, a Plan not found)."
)]
pub struct PreviewConfig {
    /// Plan files (multi-document YAML; `-` reads standard input), as they would be applied.
    #[arg(short = 'f', long = "filename", num_args = 1.., conflicts_with = "plan")]
    pub files: Vec<PathBuf>,
    /// A Plan in the cluster: `plan/NAME` or `NAME`.
    #[arg(required_unless_present = "files")]
    pub plan: Option<String>,
    /// Namespace of the Plan (a file's Plan keeps its own namespace when it names one).
    #[arg(short = 'n', long = "namespace", default_value = "system-upgrade")]
    pub namespace: String,
    /// Path to a kubeconfig file; by default as kubectl finds one.
    #[arg(long = "kubeconfig")]
    pub kubeconfig: Option<PathBuf>,
    /// The preview as text, or as JSON or YAML (a list, one entry per Plan) for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// The kubeconfig context to use; by default its current one.
    #[arg(long = "context")]
    pub context: Option<String>,
}

/// The namespace whose Plans the controller serves, for the tools that need it.
#[derive(Debug, Clone, Args)]
pub struct Served {
    /// The namespace the controller serves.
    #[arg(
        short = 'n',
        long,
        env = "SYSTEM_UPGRADE_CONTROLLER_NAMESPACE",
        default_value = "system-upgrade"
    )]
    pub namespace: String,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit status: 0 nothing blocks a switch back; 1 something must change \
first; 2 a wrong command line; 4 the cluster could not be read."
)]
pub struct SwitchBackConfig {
    #[command(flatten)]
    pub served: Served,
    /// The controller's name (its Jobs' `upgrade.cattle.io/controller` label).
    #[arg(
        long,
        env = "SYSTEM_UPGRADE_CONTROLLER_NAME",
        default_value = "system-upgrade-controller"
    )]
    pub name: String,
    /// Path to a kubeconfig file; by default as kubectl finds one.
    #[arg(long = "kubeconfig")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; by default its current one.
    #[arg(long = "context")]
    pub context: Option<String>,
}

#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Exit status: 0 every Plan valid; 1 a Plan (or the notifications ConfigMap) \
invalid, or a file not YAML; 2 a wrong command line; 3 a file or directory could not be read."
)]
pub struct CheckConfig {
    /// Plan files (multi-document YAML) or directories of them (their .yaml, .yml and .json
    /// files); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,

    /// Read the directories' subdirectories too.
    #[arg(short = 'R', long)]
    pub recursive: bool,

    /// The report as text (a line per problem), or as JSON or YAML for scripts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,

    /// A Plan that names another namespace is warned about.
    #[command(flatten)]
    pub served: Served,
}

/// How a command prints its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
    Yaml,
}

impl Output {
    /// A report in this format (`text` when it is text).
    pub fn render<T: serde::Serialize>(self, value: &T, text: impl FnOnce() -> String) -> String {
        match self {
            Output::Text => text(),
            Output::Json => serde_json::to_string_pretty(value)
                .map(|json| json + "\n")
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}\n")),
            Output::Yaml => {
                serde_saphyr::to_string(value).unwrap_or_else(|e| format!("error: {e}\n"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_run_flag_has_an_environment_twin() {
        let command = Cli::command();
        let run = command.find_subcommand("run").unwrap();
        for arg in run.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            // The election timings keep the names the Go controller reads (from wrangler).
            assert!(
                env.is_some_and(
                    |e| e.starts_with("SYSTEM_UPGRADE_") || e.starts_with("CATTLE_ELECTION_")
                ),
                "--{id} has no SYSTEM_UPGRADE_* twin"
            );
        }
    }

    #[test]
    fn defaults_and_flags() {
        let cli = Cli::try_parse_from(["suc", "run", "--webhook-only"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert!(run.webhook_only);
        assert_eq!(run.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(run.namespace, "system-upgrade");
        let cli = Cli::try_parse_from(["suc", "check", "-f", "a.yaml", "b.yaml"]).unwrap();
        let Command::Check(check) = cli.command else {
            panic!("not check")
        };
        assert_eq!(check.files.len(), 2);
        assert!(Cli::try_parse_from(["suc", "run", "--listen", "nonsense"]).is_err());
        let Command::Run(run) = Cli::try_parse_from(["suc", "run", "--cert-check-interval", "2s"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert_eq!(run.cert_check_interval, Duration::from_secs(2));
        assert!(Cli::try_parse_from(["suc", "run", "--cert-check-interval", "0s"]).is_err());
        assert!(Cli::try_parse_from(["suc", "run", "--cert-check-interval", "soon"]).is_err());
        let interval = |text: &str| {
            let Command::Run(run) =
                Cli::try_parse_from(["suc", "run", "--plan-polling-interval", text])
                    .unwrap()
                    .command
            else {
                panic!("not run")
            };
            run.plan_polling_interval.effective
        };
        assert_eq!(interval("1h"), Duration::from_secs(3600));
        assert_eq!(interval("61s"), Duration::from_secs(61));
        assert_eq!(
            interval("1m"),
            DEFAULT_POLLING_INTERVAL,
            "as in Go: > 1m only"
        );
        assert_eq!(interval("30s"), DEFAULT_POLLING_INTERVAL);
        assert!(Cli::try_parse_from(["suc", "run", "--plan-polling-interval", "soon"]).is_err());
        assert!(Cli::try_parse_from(["suc", "run", "--job-privileged", "false"]).is_ok());
        assert!(Cli::try_parse_from(["suc", "run", "--job-backoff-limit", "-1"]).is_err());
        assert!(
            Cli::try_parse_from(["suc", "run", "--job-image-pull-policy", "Sometimes"]).is_err()
        );
    }
}
