//! End-to-end tests against a real kube-apiserver, kube-controller-manager, kube-scheduler, etcd
//! and kwok nodes (tests/cluster/cluster.sh).
//!
//!   cargo test --features e2e --test e2e               # starts and stops a fresh control plane
//!   SUC_E2E_KUBECONFIG=... cargo test --features e2e --test e2e   # reuses a running one
//!   cargo test --features e2e --test e2e -- webhook    # only tests whose name contains "webhook"
//!   cargo test --features e2e --test e2e -- --exact NAME   # that one test
//!   cargo test --features e2e --test e2e -- --skip drain   # all but those containing "drain"
//!   cargo test --features e2e --test e2e -- --real-node # the suite of a real kubelet node (root)
//!
//! Tests run one after another, in order, sharing the cluster and the server under test; those
//! that need no cluster run first (and alone they start none), but for those marked `last`,
//! which run after the cluster's (their tool builds meanwhile: tests/run-all.sh). A failed test
//! does not stop the others; the run fails if any did.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code may panic.

mod control;
mod drain;
mod history;
mod install;
mod monitoring;
mod notify;
mod real_node;
mod resilience;
mod resolution;
mod rollout;
mod safety;
mod scenario;
mod servers;
mod soak;
mod support;
mod takeover;
mod testbed;
mod versions;
mod webhook;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use support::{Cluster, Ctx};

/// How a test runs: against the shared cluster, or alone (it needs no cluster, so it runs even
/// when none can be started, and before one is), or alone after the cluster's tests (a tool it
/// needs is slow to build cold, and the runner builds it while the cluster's tests run).
#[derive(Clone, Copy)]
enum Run {
    Cluster(ClusterTest),
    Alone(fn()),
    Last(fn()),
}

/// A test run against the shared cluster.
type ClusterTest = fn(&Ctx);

struct Test {
    name: &'static str,
    run: Run,
}

/// The registry: each test named once, by its function, with how it runs.
macro_rules! tests {
    ($($kind:ident $module:ident::$name:ident,)*) => {
        &[$(Test { name: stringify!($name), run: tests!(@$kind $module::$name) },)*]
    };
    (@cluster $path:path) => { Run::Cluster($path) };
    (@alone $path:path) => { Run::Alone($path) };
    (@last $path:path) => { Run::Last($path) };
}

const TESTS: &[Test] = tests! {
    cluster testbed::nodes_look_like_a_k3s_cluster_and_are_ready,
    cluster testbed::job_pods_succeed_or_fail_as_the_test_decides,
    cluster testbed::a_component_that_fails_to_start_fails_loudly,
    cluster webhook::crd_is_accepted_explained_and_printed,
    cluster webhook::rbac_allows_what_the_server_needs_and_no_more,
    cluster webhook::deploy_manifests_are_accepted_by_the_api_server,
    cluster webhook::webhooks_are_registered_with_the_servers_ca,
    cluster webhook::invalid_plans_are_refused_with_our_messages,
    cluster webhook::job_shapes_the_webhook_refuses_are_those_the_api_server_refuses,
    cluster webhook::valid_plans_are_stored_with_defaults_and_warnings,
    cluster webhook::server_dry_run_reaches_the_webhook_and_stores_nothing,
    cluster webhook::updates_are_validated,
    cluster webhook::plans_stored_while_the_webhook_was_down_stay_editable,
    cluster webhook::metrics_count_the_reviews_the_api_server_sent,
    cluster webhook::ca_bundle_is_reasserted,
    alone install::chart_renders_the_same_objects_as_deploy,
    alone monitoring::dashboards_and_alerts_query_metrics_that_exist,
    alone monitoring::metrics_are_served_over_plain_http_when_asked,
    cluster install::chart_values_are_applied_and_checked,
    cluster install::monitoring_objects_fit_prometheus_operators_schemas,
    cluster install::release_manifests_install_the_tagged_image,
    cluster install::examples_are_checked_and_accepted_by_the_api_server,
    cluster webhook::replicas_share_one_ca_that_survives_restarts,
    cluster rollout::rollout_within_concurrency_labels_and_uncordons,
    cluster rollout::jobs_have_the_go_controllers_shape,
    cluster rollout::ineligible_and_already_done_nodes_get_no_jobs,
    cluster rollout::joining_nodes_and_lowered_concurrency,
    cluster rollout::secrets_rerun_and_spec_edits_do_not,
    cluster rollout::failures_halt_and_an_edit_fixes_them,
    cluster rollout::post_complete_delay_holds_the_next_node,
    cluster rollout::bumps_and_departures_replace_or_remove_jobs,
    cluster rollout::foreign_jobs_stay_and_deleted_plans_clean_up,
    cluster rollout::exclusive_plans_take_turns,
    cluster rollout::windows_gate_the_start_of_a_rollout,
    cluster rollout::plans_in_other_namespaces_are_ignored,
    cluster control::paused_plans_and_nodes_hold_the_rollout,
    cluster control::percentage_concurrency_counts_the_selected_nodes,
    cluster control::status_lets_gitops_tools_tell_an_edit_from_its_completion,
    cluster control::failed_nodes_are_retried_automatically_and_on_request,
    cluster control::a_node_must_be_healthy_for_a_while_before_the_next_starts,
    cluster control::closed_health_gates_hold_the_rollout_until_they_open,
    cluster control::object_gates_hold_the_rollout_until_their_expression_is_true,
    cluster control::hooks_run_once_around_the_rollout_in_order,
    cluster control::deleting_a_plan_runs_its_after_hook_first_when_asked,
    cluster control::a_cancelled_rollout_lets_begun_upgrades_finish_and_resumes_on_request,
    cluster control::windows_in_another_zone_start_and_stop_a_rollout,
    cluster control::a_failure_budget_of_two_gives_up_two_failed_nodes_and_stops_at_the_third,
    cluster control::a_canary_wave_runs_alone_and_the_rest_waits_for_approval,
    cluster control::a_canary_wave_by_label_soaks_before_the_rest_start,
    cluster control::ordered_plans_and_an_exclusive_group_applied_together,
    cluster notify::notifications_reach_each_receiver_and_failures_are_told,
    cluster control::preview_shows_what_a_plan_would_do_and_the_controller_does_it,
    cluster resolution::channels_resolve_versions,
    cluster resolution::a_bad_channel_answer_is_refused_until_a_good_one,
    cluster resolution::plans_that_bypassed_the_webhook_are_validated,
    cluster resolution::a_channel_that_goes_back_is_not_followed,
    cluster versions::servers_go_first_when_server_and_agent_plans_are_applied_together,
    cluster versions::a_downgrade_and_a_two_minor_jump_are_held_until_allowed,
    cluster versions::an_upgrade_that_changes_nothing_is_not_called_done,
    cluster safety::editing_the_drain_never_ends_a_running_upgrade,
    cluster safety::a_pause_holds_automatic_retries,
    cluster safety::refused_jobs_and_pods_are_reported_and_go_on_once_allowed,
    cluster safety::a_node_the_go_controller_left_cordoned_without_a_job_is_returned,
    cluster resilience::twenty_nodes_concurrency_three_survive_a_sigkill,
    cluster resilience::replicas_elect_one_leader_and_hand_over,
    cluster resilience::an_api_server_outage_mid_rollout_is_survived,
    cluster resilience::a_refused_watch_is_logged_and_shown_in_readyz,
    cluster resilience::a_controller_started_while_the_api_server_is_down_waits_for_it,
    alone scenario::job_watch_counts_a_relist_as_one_snapshot,
    alone history::audit_events_are_read_with_who_and_when,
    alone history::the_checker_passes_a_history_that_keeps_the_rules,
    alone history::the_checker_catches_each_kind_of_violation,
    alone history::the_end_state_check_catches_what_is_left_behind,
    alone history::the_checker_catches_the_violation_the_soak_found,
    alone history::a_late_answer_about_a_pod_does_not_undo_a_newer_one,
    cluster drain::drains_evict_workloads_between_prepare_and_upgrade,
    cluster drain::bare_and_emptydir_pods_follow_the_drain_flags,
    cluster drain::budgets_block_until_the_timeout,
    cluster drain::a_drain_resumes_after_a_restart,
    cluster drain::go_example_plans_with_drain_run_end_to_end,
    cluster drain::an_untolerated_taint_never_cordons_or_drains,
    cluster drain::a_drain_stops_when_its_job_fails,
    cluster drain::drain_timeouts_skip_delete_or_retry_as_the_plan_says,
    cluster drain::drains_wait_for_volumes_to_detach,
    cluster drain::waiting_nodes_carry_a_prefer_no_schedule_taint,
    cluster drain::drains_of_one_plan_never_deadlock_on_a_shared_budget,
    cluster takeover::finished_jobs_complete_while_the_plans_secret_is_missing,
    cluster takeover::job_settings_follow_the_plan_in_place,
    cluster takeover::a_job_name_held_by_another_controller_is_reported,
    cluster takeover::a_crd_without_node_status_is_reported_and_events_stay_one_shot,
    cluster takeover::a_go_controller_install_is_taken_over,
    cluster takeover::switch_back_check_lists_what_the_go_controller_cannot_take,
    cluster servers::the_controller_survives_migration_drain_and_cordon_on_one_server,
    cluster servers::the_controller_survives_migration_drain_and_cordon_on_three_servers,
    cluster soak::a_seeded_soak_keeps_the_safety_rules,
    last monitoring::alerts_fire_where_they_should_and_stay_quiet_where_they_should_not,
};

/// With `--real-node`: a control plane with one real kubelet node (tests/cluster/real-node.sh),
/// where the controller runs in-cluster from its image and upgrade pods really run.
const REAL_NODE_TESTS: &[Test] = tests! {
    cluster real_node::the_go_controllers_deployment_is_replaced_on_the_only_server,
    cluster real_node::the_controller_runs_in_cluster_from_its_image,
    cluster real_node::a_plan_with_prepare_drain_and_upgrade_runs_on_the_real_node,
    cluster real_node::the_leader_pod_killed_mid_rollout_hands_over,
    cluster real_node::upgrades_that_really_fail_are_reported_and_retried_on_the_real_node,
    cluster real_node::the_only_server_drained_cordoned_and_upgraded_keeps_its_controller,
};

/// What the command line asks for, as libtest reads it: names to match (substrings, or whole
/// names with `--exact`), `--skip NAME` (repeatable), `--list`, and `--real-node`.
#[derive(Default)]
struct Selection {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
    real_node: bool,
}

impl Selection {
    fn from_args(args: impl IntoIterator<Item = String>) -> Self {
        let mut selection = Selection::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--exact" => selection.exact = true,
                "--list" => selection.list = true,
                "--real-node" => selection.real_node = true,
                "--skip" => selection.skips.extend(args.next()),
                _ if arg.starts_with("--skip=") => {
                    selection.skips.push(arg["--skip=".len()..].to_owned())
                }
                // Other libtest options (--nocapture, --test-threads) mean nothing here.
                _ if arg.starts_with('-') => {}
                _ => selection.filters.push(arg),
            }
        }
        selection
    }

    fn matches(&self, name: &str, pattern: &str) -> bool {
        if self.exact {
            name == pattern
        } else {
            name.contains(pattern)
        }
    }

    fn wants(&self, name: &str) -> bool {
        (self.filters.is_empty() || self.filters.iter().any(|f| self.matches(name, f)))
            && !self.skips.iter().any(|s| self.matches(name, s))
    }
}

fn main() {
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("a crypto provider was already installed");
    }
    let selection = Selection::from_args(std::env::args().skip(1));
    let tests = if selection.real_node {
        REAL_NODE_TESTS
    } else {
        TESTS
    };
    let mut names: Vec<&str> = tests.iter().map(|t| t.name).collect();
    names.sort_unstable();
    if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
        eprintln!("the test {} is registered twice", twice[0]);
        std::process::exit(2);
    }
    let selected: Vec<&Test> = tests.iter().filter(|t| selection.wants(t.name)).collect();
    if selection.list {
        for test in &selected {
            println!("{}: test", test.name);
        }
        return;
    }
    if selected.is_empty() {
        eprintln!("no end-to-end test matches the arguments (see --list)");
        std::process::exit(1);
    }
    let started = Instant::now();
    let mut failed = Vec::new();
    let mut record =
        |name: &'static str, outcome: std::thread::Result<()>, seconds: f64| match outcome {
            Ok(()) => println!("test {name} ... ok ({seconds:.1}s)"),
            Err(_) => {
                println!("test {name} ... FAILED ({seconds:.1}s)");
                failed.push(name);
            }
        };
    // Tests that need no cluster first: they run even when a cluster cannot be started.
    for test in &selected {
        if let Run::Alone(run) = test.run {
            let test_started = Instant::now();
            let outcome = std::panic::catch_unwind(run);
            record(test.name, outcome, test_started.elapsed().as_secs_f64());
        }
    }
    let on_cluster: Vec<(&str, ClusterTest)> = selected
        .iter()
        .filter_map(|t| match t.run {
            Run::Cluster(run) => Some((t.name, run)),
            Run::Alone(_) | Run::Last(_) => None,
        })
        .collect();
    if !on_cluster.is_empty() {
        let ctx = Ctx::new(Cluster::start(selection.real_node));
        println!(
            "\nrunning {} end-to-end tests on the cluster",
            on_cluster.len()
        );
        for (name, run) in on_cluster {
            let test_started = Instant::now();
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&ctx)));
            record(name, outcome, test_started.elapsed().as_secs_f64());
        }
        ctx.stop_server();
        ctx.cluster.stop();
    }
    for test in &selected {
        if let Run::Last(run) = test.run {
            let test_started = Instant::now();
            let outcome = std::panic::catch_unwind(run);
            record(test.name, outcome, test_started.elapsed().as_secs_f64());
        }
    }
    let total = started.elapsed().as_secs_f64();
    if failed.is_empty() {
        println!("\ne2e result: ok. {} passed in {total:.0}s", selected.len());
    } else {
        println!(
            "\ne2e result: FAILED. {} failed: {}",
            failed.len(),
            failed.join(", ")
        );
        std::process::exit(1);
    }
}
