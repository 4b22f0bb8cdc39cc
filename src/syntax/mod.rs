//! Pure parsers and checkers for the wire formats a Plan is written in: Go durations, image
//! references, Kubernetes names and labels, and time windows.

pub mod duration;
pub mod image;
pub mod k8s;
pub mod window;
