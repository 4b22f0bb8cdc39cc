//! Which nodes each Plan's drains hold cordoned, and since when: what keeps several drains of
//! one Plan from waiting on each other's PodDisruptionBudgets for good (with concurrency above
//! one, each node cordoned and partly drained, each eviction refused because the other node's
//! evicted pods have nowhere to go). A drain takes a [`Seat`] once it has cordoned its node and
//! gives it up when it ends, however it ends (the seat is dropped with the task).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

/// The drains under way, by Plan UID: each node's drain and when it cordoned the node.
#[derive(Debug, Default)]
pub struct Board(Mutex<BTreeMap<String, BTreeMap<String, Instant>>>);

/// A drain's place on the [`Board`], given up when dropped.
#[derive(Debug)]
pub struct Seat {
    board: Arc<Board>,
    plan: String,
    node: String,
    pub since: Instant,
}

impl Board {
    /// Records that `node`'s drain for Plan `plan` (its UID) holds the node cordoned from now.
    pub fn take(self: &Arc<Self>, plan: &str, node: &str) -> Seat {
        let since = Instant::now();
        crate::sync::lock(&self.0)
            .entry(plan.to_owned())
            .or_default()
            .insert(node.to_owned(), since);
        Seat {
            board: self.clone(),
            plan: plan.to_owned(),
            node: node.to_owned(),
            since,
        }
    }

    /// The other nodes whose drains for `plan` hold their node cordoned, each with since when.
    pub fn others(&self, plan: &str, node: &str) -> Vec<(String, Instant)> {
        crate::sync::lock(&self.0)
            .get(plan)
            .into_iter()
            .flatten()
            .filter(|(n, _)| n.as_str() != node)
            .map(|(n, since)| (n.clone(), *since))
            .collect()
    }
}

impl Seat {
    /// The other nodes of the Plan whose drains cordoned their node before this one did (ties
    /// go to the node named first): this drain gives way to them.
    pub fn behind(&self) -> Vec<String> {
        self.board
            .others(&self.plan, &self.node)
            .into_iter()
            .filter(|(n, since)| (*since, n.as_str()) < (self.since, self.node.as_str()))
            .map(|(n, _)| n)
            .collect()
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut plans = crate::sync::lock(&self.board.0);
        if let Some(nodes) = plans.get_mut(&self.plan) {
            if nodes.get(&self.node) == Some(&self.since) {
                nodes.remove(&self.node);
            }
            if nodes.is_empty() {
                plans.remove(&self.plan);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_drain_gives_way_to_those_that_cordoned_first_and_leaves_when_dropped() {
        let board = Arc::new(Board::default());
        let a = board.take("plan", "a");
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let b = board.take("plan", "b");
        let other_plan = board.take("other", "c");
        assert_eq!(b.behind(), ["a"]);
        assert!(a.behind().is_empty());
        assert!(other_plan.behind().is_empty());
        assert_eq!(board.others("plan", "c").len(), 2);
        drop(a);
        assert!(b.behind().is_empty());
        assert_eq!(board.others("plan", "x"), [("b".to_owned(), b.since)]);
        drop(b);
        assert!(board.others("plan", "x").is_empty());
        // Cordoned at the same instant: the node named first goes on.
        let d = board.take("plan", "d");
        let e = board.take("plan", "e");
        assert!(d.behind().is_empty());
        assert_eq!(e.behind(), ["d"]);
    }
}
