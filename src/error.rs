//! The errors that stop the process or a command. The bottom layer: it names no other module
//! of the crate, so every module may use it; errors of the layers above arrive as text.

/// Errors of the library, each named for what failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("YAML: {0}")]
    Yaml(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig, the in-cluster configuration or `--master` cannot be used.
    #[error("Kubernetes client configuration: {0}")]
    KubeConfig(String),
    /// The `--leader-election-*` durations do not fit together.
    #[error("leader election: {0}")]
    LeaderElection(String),
    /// After losing the Lease the controller did not stop in time; the process exits so that
    /// two controllers never act at once.
    #[error(
        "the controller did not stop within {0:?} of losing the Lease; exiting so that only one \
         controller acts"
    )]
    ControllerDidNotStop(std::time::Duration),
    /// A task of the process panicked or was cancelled.
    #[error("the {task} task failed: {error}")]
    TaskFailed {
        task: &'static str,
        error: tokio::task::JoinError,
    },
    #[error("building the channel client: {0}")]
    ChannelClient(String),
    #[error("{0}")]
    HttpClient(String),
    /// The preview command found no Plan it can read in its files.
    #[error("{0}")]
    Preview(String),
    /// A command could not read a file it was given.
    #[error("{0}")]
    Unreadable(String),
    /// A command could not read what it needs from the cluster: the connection, a refusal
    /// (RBAC), or what it asked for is not there.
    #[error("{0}")]
    Cluster(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Exit status of the commands (`check`, `preview`, `switch-back-check`) for an invalid Plan, a
/// file that cannot be read, and a cluster that cannot be read (docs/plans.md lists them; 2 is
/// a wrong command line).
pub const EXIT_INVALID: u8 = 1;
pub const EXIT_UNREADABLE: u8 = 3;
pub const EXIT_CLUSTER: u8 = 4;

impl Error {
    /// The exit status a command that failed with this error ends with.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Unreadable(_) => EXIT_UNREADABLE,
            Error::Cluster(_) | Error::KubeConfig(_) | Error::Kube(_) => EXIT_CLUSTER,
            _ => EXIT_INVALID,
        }
    }
}

/// An error with its causes, which is where the useful part of an HTTP client's error usually is
/// ("error sending request: client error (Connect): tcp connect error: Connection refused").
pub fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
