//! The concurrency invariant under load and across a controller killed mid-rollout.

use std::time::Duration;

use serde_json::json;

use crate::scenario::{JobWatch, Scenario, assert_rollout_kept_its_promises};
use crate::support::{Ctx, NAMESPACE, Server, wait};

/// 20 nodes, concurrency 3: never more than 3 nodes with an unfinished Job, even when the
/// controller is SIGKILLed in the middle; it finishes after a restart, no node runs twice and no
/// Job is left behind.
pub fn twenty_nodes_concurrency_three_survive_a_sigkill(ctx: &Ctx) {
    ctx.ensure_server();
    let s = Scenario::new(ctx, "big", 20);
    let watch = JobWatch::start(ctx, "big");
    let spec = json!({"concurrency": 3, "version": "v1.30.4+k3s1", "cordon": true, "upgrade": {"image": "rancher/k3s-upgrade"}});
    s.apply_plan(
        "big",
        spec,
        json!({"annotations": {"suc-test/duration": "3s"}}),
    );
    wait(
        "a third of the nodes done",
        Duration::from_secs(120),
        || (s.labelled("big") >= 7).then_some(()),
    );
    ctx.with_server(Server::kill_hard);
    ctx.stop_server();
    let done_at_kill = s.labelled("big");
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        s.labelled("big") - done_at_kill <= 3,
        "nodes kept being labelled without a controller"
    );
    let restarted = Server::start(ctx, "after-kill", &[]);
    restarted.wait_ready();
    ctx.set_server(restarted);
    s.wait_condition(
        "big",
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(240),
    );
    assert_rollout_kept_its_promises(&s, &watch, 3);
    assert_eq!(
        watch.max_unfinished(),
        3,
        "the rollout used its concurrency"
    );
    let hash = s.plan_json("big")["status"]["latestHash"]
        .as_str()
        .unwrap()
        .to_owned();
    for node in &s.nodes {
        assert_eq!(
            s.node_label(node, "plan.upgrade.cattle.io/big").as_deref(),
            Some(hash.as_str())
        );
        assert!(!s.unschedulable(node), "{node} left cordoned");
    }
    let unfinished = s
        .jobs("big")
        .into_iter()
        .filter(|j| {
            j.status
                .as_ref()
                .and_then(|st| st.completion_time.as_ref())
                .is_none()
        })
        .count();
    assert_eq!(unfinished, 0, "orphaned Jobs");
}

/// Leader election with short timings: a 10 s Lease renewed 6 s after each renewal.
pub const ELECTION: &[&str] = &[
    "--leader-elect",
    "--leader-election-lease-duration",
    "10s",
    "--leader-election-renew-deadline",
    "6s",
    "--leader-election-retry-period",
    "1s",
];

/// Leader election: of two replicas started with `--leader-elect`, one runs the controller while
/// both serve the webhook; when the leader is SIGKILLed mid-rollout the other takes over within
/// the Lease duration and finishes without breaking the concurrency or re-running a node; a
/// replica stopped with SIGTERM hands the Lease back.
pub fn replicas_elect_one_leader_and_hand_over(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.stop_server();
    let s = Scenario::new(ctx, "ha", 6);
    let holder = || {
        let out = ctx.kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "lease",
            "system-upgrade-controller",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]);
        out.ok.then(|| out.stdout.trim().to_owned())
    };
    let mut replicas = [
        Server::spawn(ctx, "ha-a", ELECTION),
        Server::spawn(ctx, "ha-b", ELECTION),
    ];
    for replica in &replicas {
        replica.wait_ready();
    }
    // The holder is one of the two, and the metrics agree on who leads.
    let leader = wait("one replica to lead", Duration::from_secs(60), || {
        let holder = holder()?;
        replicas.iter().position(|r| {
            holder.ends_with(&format!("_{}", r.pid())) && r.info().sample("suc_leader") == 1.0
        })
    });
    let follower = 1 - leader;
    assert_eq!(replicas[follower].info().sample("suc_leader"), 0.0);

    // The follower answers the webhook while the leader rolls the Plan out.
    ctx.register_webhooks(&format!("https://127.0.0.1:{}", replicas[follower].port));
    let reviews = |r: &Server| {
        r.info()
            .sample("suc_admission_requests_total{webhook=\"validate\",operation=\"CREATE\",result=\"allowed\"}")
    };
    let before = reviews(&replicas[follower]);
    let watch = JobWatch::start(ctx, "ha");
    s.apply_plan(
        "ha",
        json!({"concurrency": 2, "version": "v1.30.4+k3s1", "cordon": true, "upgrade": {"image": "rancher/k3s-upgrade"}}),
        json!({"annotations": {"suc-test/duration": "3s"}}),
    );
    assert_eq!(reviews(&replicas[follower]), before + 1.0);
    wait("two nodes done", Duration::from_secs(120), || {
        (s.labelled("ha") >= 2).then_some(())
    });
    let follower_log = std::fs::read_to_string(&replicas[follower].log).unwrap();
    assert!(
        !follower_log.contains("controller starting"),
        "the follower ran a controller:\n{follower_log}"
    );

    replicas[leader].kill_hard();
    let killed_at = std::time::Instant::now();
    wait(
        "the follower to take the Lease",
        Duration::from_secs(60),
        || (replicas[follower].info().sample("suc_leader") == 1.0).then_some(()),
    );
    let took_over = killed_at.elapsed();
    s.wait_condition(
        "ha",
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(180),
    );
    eprintln!("failover: the follower led {took_over:?} after the SIGKILL (Lease duration 10s)");
    assert_rollout_kept_its_promises(&s, &watch, 2);

    // Someone else takes the Lease: the leader sees it at its next renewal and stops its
    // controller (Plans wait, the webhook still answers), then leads again once that holder's
    // Lease expires.
    ctx.kubectl(&[
        "-n",
        NAMESPACE,
        "patch",
        "lease",
        "system-upgrade-controller",
        "--type=merge",
        "-p",
        r#"{"spec":{"holderIdentity":"intruder"}}"#,
    ])
    .expect_ok();
    let survivor = replicas[follower].info();
    wait("the leader to step down", Duration::from_secs(30), || {
        (survivor.sample("suc_leader") == 0.0).then_some(())
    });
    assert!(
        survivor
            .log_tail()
            .contains("another replica holds the Lease; stopping the controller"),
        "{}",
        survivor.log_tail()
    );
    s.apply_plan(
        "ha-late",
        // The scenario's nodes are agents; the test bed's servers run v1.30.4.
        json!({"concurrency": 2, "version": "v1.30.5+k3s1", "upgrade": {"image": "rancher/k3s-upgrade"},
            "versionSafety": {"serversFirst": false}}),
        json!({}),
    );
    std::thread::sleep(Duration::from_secs(1));
    let jobs_meanwhile = s.jobs("ha-late").len();
    if survivor.sample("suc_leader") == 0.0 {
        assert_eq!(
            jobs_meanwhile, 0,
            "a replica that does not lead created Jobs"
        );
    }
    wait("the Lease back", Duration::from_secs(60), || {
        (survivor.sample("suc_leader") == 1.0).then_some(())
    });
    s.wait_condition(
        "ha-late",
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(180),
    );

    // SIGTERM: the controller stops and the Lease is handed back, so no successor waits.
    let [a, b] = replicas;
    drop(a);
    drop(b);
    assert_eq!(holder().as_deref(), Some(""), "the Lease was not released");
    s.cleanup();
}

/// The outage a K3s server upgrade causes: kube-apiserver stops for 12 s in the middle of a
/// rollout, longer than the leader's renew deadline. The leader stops its controller, leads again
/// once the API server is back, and the rollout finishes with the concurrency kept, no node run
/// twice and none left cordoned.
pub fn an_api_server_outage_mid_rollout_is_survived(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.stop_server();
    let s = Scenario::new(ctx, "outage", 6);
    let server = Server::start(ctx, "outage", ELECTION);
    server.wait_ready();
    let info = server.info();
    ctx.set_server(server);
    wait("the replica to lead", Duration::from_secs(60), || {
        (info.sample("suc_leader") == 1.0).then_some(())
    });
    let watch = JobWatch::start(ctx, "outage");
    s.apply_plan(
        "outage",
        json!({"concurrency": 2, "version": "v1.30.4+k3s1", "cordon": true, "upgrade": {"image": "rancher/k3s-upgrade"}}),
        json!({"annotations": {"suc-test/duration": "4s"}}),
    );
    wait("a Job running", Duration::from_secs(60), || {
        (!s.jobs("outage").is_empty()).then_some(())
    });
    ctx.cluster.restart_apiserver(Duration::from_secs(12));
    s.wait_condition(
        "outage",
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(240),
    );
    let log = std::fs::read_to_string(&info.log).unwrap();
    assert!(
        log.contains("cannot renew the Lease; stopping the controller"),
        "the leader did not step down during the outage:\n{}",
        info.log_tail()
    );
    assert!(
        log.matches("leading; starting the controller").count() >= 2,
        "the replica did not lead again:\n{}",
        info.log_tail()
    );
    assert_eq!(info.sample("suc_leader"), 1.0);
    assert_rollout_kept_its_promises(&s, &watch, 2);
    ctx.stop_server();
    s.cleanup();
}

/// A controller (re)started while kube-apiserver is down waits for it instead of exiting:
/// `/healthz` answers, `/readyz` says what is missing, and once the API server is back the
/// controller gets its certificate, becomes ready and rolls out a Plan.
pub fn a_controller_started_while_the_api_server_is_down_waits_for_it(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.stop_server();
    let s = Scenario::new(ctx, "cold", 1);
    let curl = |port: u16, path: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-sk",
                "-w",
                "\n%{http_code}",
                &format!("https://127.0.0.1:{port}{path}"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let server = std::thread::scope(|scope| {
        let outage = scope.spawn(|| ctx.cluster.restart_apiserver(Duration::from_secs(12)));
        wait("kube-apiserver to stop", Duration::from_secs(30), || {
            (!ctx
                .kubectl(&["get", "--raw", "/readyz", "--request-timeout=1s"])
                .ok)
                .then_some(())
        });
        let server = Server::spawn(ctx, "cold", &[]);
        let info = server.info();
        wait("/healthz", Duration::from_secs(10), || {
            curl(info.port, "/healthz").ends_with("\n200").then_some(())
        });
        std::thread::sleep(Duration::from_secs(4));
        let readyz = curl(info.port, "/readyz");
        assert!(
            readyz.starts_with("not ready: the webhook certificate is not issued yet")
                && readyz.ends_with("\n503"),
            "{readyz}"
        );
        assert!(
            std::path::Path::new(&format!("/proc/{}", server.pid())).exists(),
            "the controller exited while the API server was down:\n{}",
            info.log_tail()
        );
        outage.join().unwrap();
        server
    });
    let info = server.info();
    server.wait_ready();
    let log = std::fs::read_to_string(&info.log).unwrap();
    assert!(
        log.contains("cannot issue the webhook certificate yet; retrying"),
        "{}",
        info.log_tail()
    );
    ctx.register_webhooks(&format!("https://127.0.0.1:{}", info.port));
    ctx.set_server(server);
    s.apply_plan(
        "cold",
        json!({"concurrency": 1, "version": "v1.30.4+k3s1", "upgrade": {"image": "rancher/k3s-upgrade"}}),
        json!({}),
    );
    s.wait_condition(
        "cold",
        "Complete",
        "True",
        "Complete",
        Duration::from_secs(120),
    );
    ctx.stop_server();
    s.cleanup();
}

/// A watch the API server refuses (our ClusterRole loses list and watch on nodes) is logged as an
/// error and named in `/readyz`; once the permission is back the controller becomes ready.
pub fn a_refused_watch_is_logged_and_shown_in_readyz(ctx: &Ctx) {
    ctx.ensure_server();
    ctx.stop_server();
    /// Puts the ClusterRole back even when the test fails.
    struct Restore<'a>(&'a Ctx);
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            self.0.kubectl(&[
                "apply",
                "-f",
                &crate::support::repo("deploy/rbac.yaml").to_string_lossy(),
            ]);
        }
    }
    let restore = Restore(ctx);
    ctx.kubectl(&[
        "patch",
        "clusterrole",
        "system-upgrade-controller",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/rules/0/verbs", "value": ["get", "patch"]}]"#,
    ])
    .expect_ok();
    let server = Server::spawn(ctx, "refused", &[]);
    let info = server.info();
    let readyz = || {
        let out = std::process::Command::new("curl")
            .args(["-sk", &format!("https://127.0.0.1:{}/readyz", info.port)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let shown = wait(
        "/readyz to name the refused watch",
        Duration::from_secs(30),
        || {
            let text = readyz();
            text.starts_with("not ready: the watch of nodes fails:")
                .then_some(text)
        },
    );
    assert!(shown.contains("forbidden"), "{shown}");
    let log = std::fs::read_to_string(&info.log).unwrap();
    assert!(
        log.lines().any(|l| l.contains("ERROR")
            && l.contains("watch failed")
            && l.contains("resource=\"nodes\"")),
        "{}",
        info.log_tail()
    );
    drop(restore);
    server.wait_ready();
    assert_eq!(readyz(), "ok\n");
    ctx.set_server(server);
    ctx.stop_server();
}
