//! End-to-end tests against a real kube-apiserver, kube-controller-manager, kube-scheduler, etcd
//! and kwok nodes (tests/cluster/cluster.sh).
//!
//!   cargo test --features e2e --test e2e               # starts and stops a fresh control plane
//!   SUC_E2E_KUBECONFIG=... cargo test --features e2e --test e2e   # reuses a running one
//!   cargo test --features e2e --test e2e -- webhook    # only tests whose name contains "webhook"
//!   cargo test --features e2e --test e2e -- --real-node # the suite of a real kubelet node (root)
//!
//! Tests run one after another, in order, sharing the cluster and the server under test. A failed
//! test does not stop the others; the run fails if any did.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code may panic.

mod drain;
mod install;
mod real_node;
mod resilience;
mod resolution;
mod rollout;
mod scenario;
mod support;
mod takeover;
mod testbed;
mod webhook;

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use support::{Cluster, Ctx};

type Test = (&'static str, fn(&Ctx));

const TESTS: &[Test] = &[
    (
        "nodes_look_like_a_k3s_cluster_and_are_ready",
        testbed::nodes_look_like_a_k3s_cluster_and_are_ready,
    ),
    (
        "job_pods_succeed_or_fail_as_the_test_decides",
        testbed::job_pods_succeed_or_fail_as_the_test_decides,
    ),
    (
        "a_component_that_fails_to_start_fails_loudly",
        testbed::a_component_that_fails_to_start_fails_loudly,
    ),
    (
        "crd_is_accepted_explained_and_printed",
        webhook::crd_is_accepted_explained_and_printed,
    ),
    (
        "rbac_allows_what_the_server_needs_and_no_more",
        webhook::rbac_allows_what_the_server_needs_and_no_more,
    ),
    (
        "deploy_manifests_are_accepted_by_the_api_server",
        webhook::deploy_manifests_are_accepted_by_the_api_server,
    ),
    (
        "webhooks_are_registered_with_the_servers_ca",
        webhook::webhooks_are_registered_with_the_servers_ca,
    ),
    (
        "invalid_plans_are_refused_with_our_messages",
        webhook::invalid_plans_are_refused_with_our_messages,
    ),
    (
        "valid_plans_are_stored_with_defaults_and_warnings",
        webhook::valid_plans_are_stored_with_defaults_and_warnings,
    ),
    (
        "server_dry_run_reaches_the_webhook_and_stores_nothing",
        webhook::server_dry_run_reaches_the_webhook_and_stores_nothing,
    ),
    ("updates_are_validated", webhook::updates_are_validated),
    (
        "plans_stored_while_the_webhook_was_down_stay_editable",
        webhook::plans_stored_while_the_webhook_was_down_stay_editable,
    ),
    (
        "metrics_count_the_reviews_the_api_server_sent",
        webhook::metrics_count_the_reviews_the_api_server_sent,
    ),
    ("ca_bundle_is_reasserted", webhook::ca_bundle_is_reasserted),
    (
        "chart_renders_the_same_objects_as_deploy",
        install::chart_renders_the_same_objects_as_deploy,
    ),
    (
        "chart_values_are_applied_and_checked",
        install::chart_values_are_applied_and_checked,
    ),
    (
        "release_manifests_install_the_tagged_image",
        install::release_manifests_install_the_tagged_image,
    ),
    (
        "examples_are_checked_and_accepted_by_the_api_server",
        install::examples_are_checked_and_accepted_by_the_api_server,
    ),
    (
        "replicas_share_one_ca_that_survives_restarts",
        webhook::replicas_share_one_ca_that_survives_restarts,
    ),
    (
        "rollout_within_concurrency_labels_and_uncordons",
        rollout::rollout_within_concurrency_labels_and_uncordons,
    ),
    (
        "jobs_have_the_go_controllers_shape",
        rollout::jobs_have_the_go_controllers_shape,
    ),
    (
        "ineligible_and_already_done_nodes_get_no_jobs",
        rollout::ineligible_and_already_done_nodes_get_no_jobs,
    ),
    (
        "joining_nodes_and_lowered_concurrency",
        rollout::joining_nodes_and_lowered_concurrency,
    ),
    (
        "secrets_rerun_and_spec_edits_do_not",
        rollout::secrets_rerun_and_spec_edits_do_not,
    ),
    (
        "failures_halt_and_an_edit_fixes_them",
        rollout::failures_halt_and_an_edit_fixes_them,
    ),
    (
        "post_complete_delay_holds_the_next_node",
        rollout::post_complete_delay_holds_the_next_node,
    ),
    (
        "bumps_and_departures_replace_or_remove_jobs",
        rollout::bumps_and_departures_replace_or_remove_jobs,
    ),
    (
        "foreign_jobs_stay_and_deleted_plans_clean_up",
        rollout::foreign_jobs_stay_and_deleted_plans_clean_up,
    ),
    (
        "exclusive_plans_take_turns",
        rollout::exclusive_plans_take_turns,
    ),
    (
        "windows_gate_the_start_of_a_rollout",
        rollout::windows_gate_the_start_of_a_rollout,
    ),
    (
        "plans_in_other_namespaces_are_ignored",
        rollout::plans_in_other_namespaces_are_ignored,
    ),
    (
        "channels_resolve_versions",
        resolution::channels_resolve_versions,
    ),
    (
        "a_bad_channel_answer_is_refused_until_a_good_one",
        resolution::a_bad_channel_answer_is_refused_until_a_good_one,
    ),
    (
        "plans_that_bypassed_the_webhook_are_validated",
        resolution::plans_that_bypassed_the_webhook_are_validated,
    ),
    (
        "twenty_nodes_concurrency_three_survive_a_sigkill",
        resilience::twenty_nodes_concurrency_three_survive_a_sigkill,
    ),
    (
        "replicas_elect_one_leader_and_hand_over",
        resilience::replicas_elect_one_leader_and_hand_over,
    ),
    (
        "an_api_server_outage_mid_rollout_is_survived",
        resilience::an_api_server_outage_mid_rollout_is_survived,
    ),
    (
        "a_refused_watch_is_logged_and_shown_in_readyz",
        resilience::a_refused_watch_is_logged_and_shown_in_readyz,
    ),
    (
        "a_controller_started_while_the_api_server_is_down_waits_for_it",
        resilience::a_controller_started_while_the_api_server_is_down_waits_for_it,
    ),
    (
        "job_watch_counts_a_relist_as_one_snapshot",
        scenario::job_watch_counts_a_relist_as_one_snapshot,
    ),
    (
        "drains_evict_workloads_between_prepare_and_upgrade",
        drain::drains_evict_workloads_between_prepare_and_upgrade,
    ),
    (
        "bare_and_emptydir_pods_follow_the_drain_flags",
        drain::bare_and_emptydir_pods_follow_the_drain_flags,
    ),
    (
        "budgets_block_until_the_timeout",
        drain::budgets_block_until_the_timeout,
    ),
    (
        "a_drain_resumes_after_a_restart",
        drain::a_drain_resumes_after_a_restart,
    ),
    (
        "go_example_plans_with_drain_run_end_to_end",
        drain::go_example_plans_with_drain_run_end_to_end,
    ),
    (
        "an_untolerated_taint_never_cordons_or_drains",
        drain::an_untolerated_taint_never_cordons_or_drains,
    ),
    (
        "a_drain_stops_when_its_job_fails",
        drain::a_drain_stops_when_its_job_fails,
    ),
    (
        "finished_jobs_complete_while_the_plans_secret_is_missing",
        takeover::finished_jobs_complete_while_the_plans_secret_is_missing,
    ),
    (
        "job_settings_follow_the_plan_in_place",
        takeover::job_settings_follow_the_plan_in_place,
    ),
    (
        "a_job_name_held_by_another_controller_is_reported",
        takeover::a_job_name_held_by_another_controller_is_reported,
    ),
    (
        "a_crd_without_node_status_is_reported_and_events_stay_one_shot",
        takeover::a_crd_without_node_status_is_reported_and_events_stay_one_shot,
    ),
    (
        "a_go_controller_install_is_taken_over",
        takeover::a_go_controller_install_is_taken_over,
    ),
];

/// With `--real-node`: a control plane with one real kubelet node (tests/cluster/real-node.sh),
/// where the controller runs in-cluster from its image and upgrade pods really run.
const REAL_NODE_TESTS: &[Test] = &[
    (
        "the_controller_runs_in_cluster_from_its_image",
        real_node::the_controller_runs_in_cluster_from_its_image,
    ),
    (
        "a_plan_with_prepare_drain_and_upgrade_runs_on_the_real_node",
        real_node::a_plan_with_prepare_drain_and_upgrade_runs_on_the_real_node,
    ),
    (
        "the_leader_pod_killed_mid_rollout_hands_over",
        real_node::the_leader_pod_killed_mid_rollout_hands_over,
    ),
];

fn main() {
    if rustls::crypto::ring::default_provider()
        .install_default()
        .is_err()
    {
        eprintln!("a crypto provider was already installed");
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let real_node = std::env::args().any(|a| a == "--real-node");
    let tests = if real_node { REAL_NODE_TESTS } else { TESTS };
    let selected: Vec<&Test> = tests
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return;
    }
    let selected_count = selected.len();
    let started = Instant::now();
    let ctx = Ctx::new(Cluster::start(real_node));
    println!("\nrunning {} end-to-end tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in selected {
        let test_started = Instant::now();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| test(&ctx)));
        let seconds = test_started.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => println!("test {name} ... ok ({seconds:.1}s)"),
            Err(_) => {
                println!("test {name} ... FAILED ({seconds:.1}s)");
                failed.push(*name);
            }
        }
    }
    ctx.stop_server();
    ctx.cluster.stop();
    let total = started.elapsed().as_secs_f64();
    if failed.is_empty() {
        println!("\ne2e result: ok. {} passed in {total:.0}s", selected_count);
    } else {
        println!(
            "\ne2e result: FAILED. {} failed: {}",
            failed.len(),
            failed.join(", ")
        );
        std::process::exit(1);
    }
}
