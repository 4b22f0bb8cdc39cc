//! Pure parsers and checkers for the wire formats a Plan is written in: Go durations, image
//! references, Kubernetes names and labels, time windows, and Kubernetes versions as K3s and RKE2
//! write them.

pub mod duration;
pub mod expression;
pub mod image;
pub mod k8s;
pub mod kube_version;
pub mod window;
