//! The upgrade controller: resolves Plans to versions, picks nodes within each Plan's
//! concurrency, runs the upgrade Jobs, and labels, cordons and uncordons nodes.

pub mod decide;
pub mod hash;
pub mod job;
pub mod resolve;
pub mod select;
pub mod status;
