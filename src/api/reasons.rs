//! The words the controller writes into status and events: condition types, node phases and
//! reasons. Each is an enum (or a constant) so a typo is a compile error and renaming one is a
//! visible change of the wire format.

/// Condition types of a Plan's status (shared with the Go controller).
pub mod conditions {
    /// The Plan passed validation.
    pub const VALIDATED: &str = "Validated";
    /// kstatus convention: the rollout is under way (True) or at rest (False).
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus convention: the rollout cannot go on without a change to the Plan (True).
    pub const STALLED: &str = "Stalled";
    /// A version was resolved (from `spec.version` or the channel).
    pub const LATEST_RESOLVED: &str = "LatestResolved";
    /// Every selected node runs the resolved version.
    pub const COMPLETE: &str = "Complete";
    /// Written only when False: the Plan CRD in the cluster lacks fields of this controller's.
    pub const CRD_CURRENT: &str = "CRDCurrent";
}

/// Declares a fieldless enum whose variants are written on the wire as their own names.
macro_rules! wire_words {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &[$name] = &[$($name::$variant,)*];

            /// The word as written in status and events.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => stringify!($variant),)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<$name> for &str {
            fn eq(&self, other: &$name) -> bool {
                *self == other.as_str()
            }
        }
    };
}

wire_words! {
    /// Where a node stands in a Plan's rollout (`status.nodes[].phase`).
    Phase {
        /// The Job exists; its pod is not on the node yet, or `prepare` runs.
        Preparing,
        /// The node's failed Job was deleted to try it again (automatically, or on request); the
        /// next pass creates it anew, whatever holds the rollout meanwhile.
        Retrying,
        /// The controller cordons and drains the node.
        Draining,
        /// The upgrade container runs (or the Job is followed to its end).
        Upgrading,
        /// The Job succeeded; the node is labelled done after `postCompleteDelay`.
        WaitingDelay,
        /// The Job succeeded; the node is labelled done once it has been Ready and schedulable
        /// for `healthGates.nodeReadyFor`.
        WaitingHealthy,
        /// The Job failed, or the node could not be drained.
        Failed,
        /// The drain timed out with `onTimeout: Skip`: the node is left as it was (uncordoned,
        /// not upgraded) until the Plan changes or is told to retry it.
        Skipped,
        /// The Job succeeded; the node is labelled done once it shows the upgrade happened
        /// (`spec.convergence`: its kubelet version, a reboot, a label).
        Converging,
        /// A version rule holds the node (a downgrade, a skipped minor, control-plane nodes
        /// behind): no Job is created for it until the rule is met or turned off.
        Held,
    }
}

wire_words! {
    /// Where a hook stands (`status.hooks[].phase`).
    HookPhase {
        /// The after hook is owed: a rollout is under way.
        Due,
        /// The after hook is owed and the Plan is paused with nothing under way; it runs after
        /// `hooks.afterWhenPausedFor`.
        Paused,
        /// Its Job runs.
        Running,
        /// Its Job is created once the Job of an earlier run (of the same name) has gone.
        Starting,
        /// Its Job succeeded.
        Succeeded,
        /// Its Job failed: it holds the rollout until retried or the Plan's hash changes.
        Failed,
    }
}

wire_words! {
    /// Where the first wave of a rollout stands (`status.canary.phase`, `spec.canary`).
    CanaryPhase {
        /// The wave runs alone.
        Running,
        /// The wave is done, or a node of it failed; the rest waits for the approve annotation.
        AwaitingApproval,
        /// The wave is done; the rest starts once `soakFor` has passed with the gates open.
        Soaking,
        /// Lifted by the approve annotation.
        Approved,
        /// Lifted by the soak.
        Soaked,
        /// Lifted: the wave was every node left.
        Done,
    }
}

impl CanaryPhase {
    /// The phase a stored wave names, if it is one of ours.
    pub fn parse(text: &str) -> Option<CanaryPhase> {
        CanaryPhase::ALL
            .iter()
            .copied()
            .find(|p| p.as_str() == text)
    }

    /// The hold is over for the wave's hash.
    pub fn lifted(self) -> bool {
        matches!(self, Self::Approved | Self::Soaked | Self::Done)
    }
}

impl HookPhase {
    /// The phase a stored hook entry names, if it is one of ours.
    pub fn parse(text: &str) -> Option<HookPhase> {
        HookPhase::ALL.iter().copied().find(|p| p.as_str() == text)
    }
}

impl Phase {
    /// The phase a stored entry names, if it is one of ours.
    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.iter().copied().find(|p| p.as_str() == text)
    }
}

wire_words! {
    /// Reasons of conditions and events. Those shared with the Go controller keep its spelling.
    Reason {
        // Validated
        /// Condition: the Plan is valid.
        PlanIsValid,
        /// Event: the Plan became valid.
        Validated,
        /// Event: the Plan is not valid.
        ValidateFailed,
        /// Condition: validation or resolution failed.
        Error,
        // LatestResolved
        /// Condition: resolved from `spec.version`.
        Version,
        /// Condition: resolved from `spec.channel`.
        Channel,
        /// Condition: the channel could not be read and nothing was resolved before.
        ChannelError,
        /// Event and Complete condition: a new version was resolved.
        Resolved,
        /// Event: the version could not be resolved.
        ResolveFailed,
        // Complete
        /// Condition and event: every selected node is done.
        Complete,
        /// Condition and event: Jobs run on the nodes in `applying`.
        SyncJob,
        /// Condition: the Plan is not valid and resolved, so nothing new starts.
        NotReady,
        /// Condition and event: the window is closed.
        Waiting,
        /// Condition and event: a node's Job failed.
        JobFailed,
        /// Condition and event: a node could not be drained.
        DrainFailed,
        /// Condition and event: the API server refused a node's Job, or the Job controller cannot
        /// create its pod (a quota, Pod Security admission, an admission webhook, the pod's shape).
        JobRefused,
        /// Condition and event: `spec.paused`, or the pause label on every node left, holds the
        /// rollout.
        Paused,
        /// Event: the Plan was paused (or its rollout cancelled) and starts nodes again.
        Resumed,
        /// Condition and event: the rollout of the current version was cancelled
        /// (`upgrade.cattle.io/cancel`); nothing new starts until it is resumed or the version
        /// changes.
        Cancelled,
        /// Condition and event: a health gate (`spec.healthGates`) holds the rollout.
        WaitingForHealth,
        /// Condition and event: the first wave (`spec.canary`) is done, or a node of it failed,
        /// and the rest of the rollout waits for `upgrade.cattle.io/approve`.
        AwaitingApproval,
        /// Condition and event: the first wave is done and the rest of the rollout starts once
        /// `canary.soakFor` has passed with the health gates open.
        Soaking,
        /// Event: the rollout was approved past its first wave, or its soak ended.
        CanaryLifted,
        /// Condition and event: a Plan of `spec.dependsOn` is missing, failed or not Complete
        /// for its current version; nothing new starts.
        WaitingForPlans,
        /// Condition and event: another Plan of the same `spec.exclusiveGroup` has an upgrade
        /// under way; nothing new starts.
        WaitingForGroup,
        /// Condition and event: the Plan CRD in the cluster lacks fields of this controller's
        /// (the API server drops them); while spec fields are missing nothing new starts.
        CRDOutdated,
        /// Condition and event: a failed node is tried again (now, or after its backoff).
        Retrying,
        /// Condition and event: the Plan would move a node to an older version than it runs.
        DowngradeHeld,
        /// Condition and event: the Plan would move a node up more than one minor version.
        MinorSkipHeld,
        /// Condition and event: nodes that are not control-plane wait for the control-plane
        /// nodes to run the target version.
        WaitingForServers,
        /// Condition and event: a node's Job succeeded but the node did not show the upgrade
        /// within `spec.convergence.within` (its kubelet version, a reboot, a label).
        NotConverged,
        /// Event: the channel answered an older version than the one resolved before; it is not
        /// followed.
        ChannelWentBack,
        /// Condition and event: a hook (`spec.hooks`) runs; nodes wait for the before hook, and
        /// Complete for the after hook.
        RunningHook,
        /// Condition and event: a hook's Job failed; the rollout waits until it is retried or
        /// the Plan's hash changes.
        HookFailed,
        /// Event: a hook's Job succeeded.
        HookSucceeded,
        // Nodes and Jobs
        /// Event: a node's Job succeeded and it waits out `postCompleteDelay`.
        JobCompleteWaiting,
        /// Event on the Plan: nodes' Jobs succeeded and the nodes are labelled done (each node
        /// records its upgrade in an `upgraded.upgrade.cattle.io/<plan>` annotation instead).
        JobComplete,
        /// Event: a Job of the wanted name belongs to someone else.
        JobConflict,
        /// Event: the node was cordoned for a Plan.
        Cordoned,
        /// Event: the last Plan released the node, which is schedulable again.
        Uncordoned,
        /// Event: a Plan released the node; others keep it cordoned.
        CordonReleased,
        /// Event: the drain of a node begins.
        Draining,
        /// Event: a pod was evicted.
        Evicted,
        /// Event: a pod was deleted (eviction disabled).
        Deleted,
        /// Event: a PodDisruptionBudget refuses an eviction.
        WaitingForBudget,
        /// Event: a PodDisruptionBudget refused a drain's eviction while an earlier drain of
        /// the same Plan holds its node; this drain uncordoned its node and waits for that one.
        DrainGaveWay,
        /// Event: the pods are gone and the drain waits for the node's volumes to detach
        /// (`drain.volumeDetach`).
        WaitingForVolumes,
        /// Event: volumes were still attached at `drain.volumeDetach.timeout` and the upgrade
        /// runs anyway (`onTimeout: Proceed`).
        VolumesStillAttached,
        /// Event: the node is drained.
        Drained,
        /// Event: the drain timed out and goes on as `drain.onTimeout` says (Retry, Delete).
        DrainTimedOut,
        /// Condition and event: the drain timed out with `onTimeout: Skip`; the rollout goes on
        /// without the node.
        DrainSkipped,
        // The controller itself
        /// Event: the controller process starts.
        Starting,
        /// Event: the controller leads and its caches are filled.
        Started,
        /// Event: the controller cannot start yet.
        StartFailed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_written_as_named_and_read_back() {
        assert_eq!(Phase::WaitingDelay.as_str(), "WaitingDelay");
        assert_eq!(Reason::WaitingForBudget.to_string(), "WaitingForBudget");
        assert!(Reason::JobFailed == "JobFailed");
        assert!("DrainFailed" == Reason::DrainFailed);
        for phase in Phase::ALL {
            assert_eq!(Phase::parse(phase.as_str()), Some(*phase));
        }
        assert_eq!(Phase::parse("Unknown"), None);
        let mut words: Vec<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        words.sort_unstable();
        words.dedup();
        assert_eq!(words.len(), Reason::ALL.len());
    }
}
