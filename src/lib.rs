//! system-upgrade-controller: upgrades Kubernetes nodes as declared in `upgrade.cattle.io/v1`
//! Plans, with an admission webhook that validates and defaults Plans.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod syntax;
pub mod validation;
pub mod yaml;

/// Errors of the library. Every variant maps to a short static category for metrics labels.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("YAML: {0}")]
    Yaml(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
