//! The other Plans a pass needs for `spec.dependsOn` and `spec.exclusiveGroup`: read from the
//! Plan cache, with what this process's own last pass of each wrote (the cache shows it a moment
//! later). Passes of Plans of one exclusive group run one at a time, so two of them never both
//! see the other idle and start together.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::Plan;
use crate::controller::decide::{Decision, Peer};

/// How long a pass's own record of what a Plan has under way is trusted over the cache.
const TRUSTED_FOR: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct Peers {
    /// By Plan UID: what its last pass here left under way, and when.
    written: Mutex<BTreeMap<String, (Vec<String>, Instant)>>,
    /// One lock per exclusive group.
    groups: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Peers {
    /// Waits until no other pass of a Plan of `group` runs; the pass holds the guard until its
    /// writes are done.
    pub async fn exclusive(&self, group: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = crate::sync::lock(&self.groups)
            .entry(group.to_owned())
            .or_default()
            .clone();
        lock.lock_owned().await
    }

    /// The Plans of `plan`'s namespace other than it, as peers; none for a Plan that keeps no
    /// order with others (no `dependsOn`, no `exclusiveGroup`).
    pub fn of(&self, plans: &[Arc<Plan>], plan: &Plan) -> Vec<Peer> {
        if !plan.spec.ordered() {
            return Vec::new();
        }
        let written = crate::sync::lock(&self.written);
        plans
            .iter()
            .filter(|p| p.metadata.namespace == plan.metadata.namespace)
            .filter(|p| p.metadata.uid != plan.metadata.uid)
            .map(|p| {
                let mut peer = Peer::of(p);
                if let Some((busy, at)) = written.get(p.metadata.uid.as_deref().unwrap_or_default())
                    && at.elapsed() < TRUSTED_FOR
                {
                    peer.busy = busy.clone();
                }
                peer
            })
            .collect()
    }

    /// Records what a pass of a Plan of an exclusive group is about to write, before it writes
    /// it (only group members read it).
    pub fn record(&self, plan: &Plan, decision: &Decision) {
        if plan.spec.exclusive_group.is_none() {
            return;
        }
        let busy = Peer::busy(&decision.status);
        let mut written = crate::sync::lock(&self.written);
        written.retain(|_, (_, at)| at.elapsed() < TRUSTED_FOR);
        written.insert(
            plan.metadata.uid.clone().unwrap_or_default(),
            (busy, Instant::now()),
        );
    }
}
