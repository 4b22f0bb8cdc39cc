//! The command line. Every flag of `run` has a `SYSTEM_UPGRADE_*` environment twin; the names the
//! Go controller reads (`SYSTEM_UPGRADE_CONTROLLER_*`) keep their meaning.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "system-upgrade-controller",
    version,
    about = "Upgrades Kubernetes nodes as declared in upgrade.cattle.io/v1 Plans, with an admission webhook"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS server (webhooks, health, metrics) and, unless --webhook-only, the controller.
    Run(Box<RunConfig>),
    /// Print the Plan CustomResourceDefinition as YAML.
    Crd,
    /// Check Plan files offline with the webhook's rules (exit status 1 when a Plan is invalid).
    Check(CheckConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct RunConfig {
    /// Serve the webhooks, health and metrics without connecting to any cluster.
    #[arg(long, env = "SYSTEM_UPGRADE_WEBHOOK_ONLY")]
    pub webhook_only: bool,

    /// Address of the HTTPS listener.
    #[arg(long, env = "SYSTEM_UPGRADE_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

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
    #[arg(long, env = "SYSTEM_UPGRADE_CONTROLLER_DEBUG")]
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

    /// Secret (in --namespace) holding the webhook CA shared by all replicas.
    #[arg(
        long,
        env = "SYSTEM_UPGRADE_WEBHOOK_CA_SECRET",
        default_value = "system-upgrade-controller-webhook-ca"
    )]
    pub ca_secret_name: String,
}

/// A positive Go-style duration such as `30s` or `5m`.
fn parse_interval(text: &str) -> Result<Duration, String> {
    match crate::syntax::duration::parse(text) {
        Ok(nanos) if nanos > 0 => Ok(Duration::from_nanos(nanos.unsigned_abs())),
        Ok(_) => Err("must be positive".to_owned()),
        Err(e) => Err(format!("{e}; use e.g. 30s or 5m")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct CheckConfig {
    /// Plan files (multi-document YAML); `-` reads standard input.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    pub files: Vec<PathBuf>,
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
            assert!(
                env.is_some_and(|e| e.starts_with("SYSTEM_UPGRADE_")),
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
    }
}
