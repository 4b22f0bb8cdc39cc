//! Hostile clients against the release binary, on loopback: oversized and pathological admission
//! reviews, floods of idle and slow connections, and `check` on hostile files. Each test asserts
//! the bound (peak memory read from /proc, time to close, size of the answer) and that the server
//! still answers a good review afterwards.
//!
//! Built with `--features adversarial`; the binary under test is `SUC_BINARY`, by default
//! `target/release/system-upgrade-controller` (`cargo build --release`). `tests/run-all.sh`
//! points it at the linux/amd64 binary of the image.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code may panic.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Peak resident memory the server may reach under attack.
const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Slowest `/healthz` answer allowed while the webhook is under attack.
const HEALTHZ_LIMIT: Duration = Duration::from_millis(100);

fn binary() -> PathBuf {
    let path = std::env::var_os("SUC_BINARY").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/release/system-upgrade-controller")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --release` or set SUC_BINARY",
        path.display()
    );
    path
}

struct Server {
    child: Child,
    address: SocketAddr,
}

impl Server {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let child = Command::new(binary())
            .args(["run", "--webhook-only", "--listen", &address.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self { child, address };
        let started = Instant::now();
        while TcpStream::connect(address).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.address)
    }

    fn status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    }

    /// Peak resident memory so far, in KiB.
    fn peak_rss(&self) -> u64 {
        self.status("VmHWM:")
    }

    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// A good review is still answered correctly.
    async fn answers_a_good_review(&self, client: &reqwest::Client) {
        let response = client
            .post(self.url("/validate"))
            .body(review(&plan_object(r#""version":"v1.30.4+k3s1""#)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let answer: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(http2: bool) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(30));
    let builder = if http2 {
        builder.http2_prior_knowledge()
    } else {
        builder.http1_only()
    };
    builder.build().unwrap()
}

fn review(object: &str) -> Vec<u8> {
    format!(
        r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","kind":{{"group":"upgrade.cattle.io","version":"v1","kind":"Plan"}},"operation":"CREATE","object":{object}}}}}"#
    )
    .into_bytes()
}

/// A Plan object whose spec holds a valid upgrade, concurrency and selector, plus `extra`.
fn plan_object(extra: &str) -> String {
    format!(
        r#"{{"apiVersion":"upgrade.cattle.io/v1","kind":"Plan","metadata":{{"name":"p","namespace":"system-upgrade"}},"spec":{{"concurrency":1,"nodeSelector":{{}},"upgrade":{{"image":"rancher/k3s-upgrade"}},{extra}}}}}"#
    )
}

/// Hostile reviews just under the body limit (3 MiB), each costly in its own way.
fn hostile_bodies() -> Vec<Vec<u8>> {
    let room = 3 * 1024 * 1024 - 1024;
    // The whole spec a long array of zeros.
    let zeros = review(&format!(r#"{{"spec":[{}0]}}"#, "0,".repeat(room / 2 - 8)));
    // One string of nearly 3 MiB, echoed in the denial.
    let string = review(&plan_object(&format!(
        r#""version":"v1.2.3-{}""#,
        "x".repeat(room - 300)
    )));
    // As many tolerations as the value count allows, each with a long invalid key: a flood of
    // problems and many allocations.
    let toleration = format!(r#"{{"key":"{}","operator":"Exists"}},"#, "K".repeat(300));
    let count = (room - 300) / toleration.len();
    let tolerations = review(&plan_object(&format!(
        r#""tolerations":[{}{{}}]"#,
        toleration.repeat(count)
    )));
    for body in [&zeros, &string, &tolerations] {
        assert!(body.len() <= 3 * 1024 * 1024, "{}", body.len());
    }
    vec![zeros, string, tolerations]
}

/// Sends a body and returns the status and answer (empty when the stream failed).
async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, String) {
    match client.post(url).body(body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        Err(e) => (0, format!("{e:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_reviews_keep_memory_and_health_bounded() {
    let server = Server::start();
    let baseline = server.peak_rss();
    let bodies = hostile_bodies();
    let huge = review(&format!(r#"{{"spec":[{}0]}}"#, "0,".repeat(3_700_000)));
    assert!(huge.len() > 7 * 1024 * 1024);

    // One at a time: each hostile review gets its denial, the huge one a 413.
    let h1 = client(false);
    for body in &bodies {
        let (status, text) = send(&h1, &server.url("/validate"), body.clone()).await;
        assert_eq!(status, 200, "{text:.300}");
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(answer["response"]["allowed"], false);
        let message = answer["response"]["status"]["message"].as_str().unwrap();
        assert!(
            message.len() < 64 * 1024,
            "a denial of {} bytes",
            message.len()
        );
    }
    let (status, _) = send(&h1, &server.url("/validate"), huge.clone()).await;
    assert_eq!(status, 413);
    let one_at_a_time = server.peak_rss();

    // Sixteen at once of each kind, over HTTP/1.1 and HTTP/2, while /healthz is asked every
    // 20 ms on a connection of its own.
    let probe = tokio::spawn({
        let url = server.url("/healthz");
        async move {
            let health = client(false);
            health.get(&url).send().await.unwrap();
            let mut slowest = Duration::ZERO;
            let until = Instant::now() + Duration::from_secs(4);
            while Instant::now() < until {
                let started = Instant::now();
                let response = health.get(&url).send().await.unwrap();
                assert_eq!(response.status(), 200);
                slowest = slowest.max(started.elapsed());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            slowest
        }
    });
    let mut attacks = Vec::new();
    for i in 0..16 {
        for body in bodies.iter().chain([&huge]) {
            let attacker = client(i % 2 == 0);
            let url = server.url(if i % 3 == 0 { "/mutate" } else { "/validate" });
            let body = body.clone();
            attacks.push(tokio::spawn(
                async move { send(&attacker, &url, body).await },
            ));
        }
    }
    let mut statuses = std::collections::BTreeMap::new();
    for attack in attacks {
        let (status, text) = attack.await.unwrap();
        assert!(
            matches!(status, 200 | 413 | 429),
            "unexpected answer {status}: {text:.300}"
        );
        *statuses.entry(status).or_insert(0) += 1;
    }
    let slowest = probe.await.unwrap();
    let peak = server.peak_rss();
    eprintln!(
        "peak RSS: {baseline} KiB at start, {one_at_a_time} KiB after one of each, {peak} KiB \
         after 64 at once; answers {statuses:?}; slowest /healthz {slowest:?}"
    );
    assert!(peak < PEAK_RSS_LIMIT_KIB, "peak RSS {peak} KiB");
    assert!(slowest < HEALTHZ_LIMIT, "/healthz took {slowest:?}");
    server.answers_a_good_review(&client(true)).await;
}

#[tokio::test]
async fn too_large_bodies_get_413_over_http1_and_http2() {
    let server = Server::start();
    let body = vec![b' '; 8 * 1024 * 1024];
    for http2 in [false, true] {
        let client = client(http2);
        let response = client
            .post(server.url("/validate"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 413, "HTTP/2: {http2}");
        assert_eq!(
            response.version(),
            if http2 {
                reqwest::Version::HTTP_2
            } else {
                reqwest::Version::HTTP_11
            }
        );
        server.answers_a_good_review(&client).await;
    }
}

#[tokio::test]
async fn deep_nesting_and_problem_floods_get_bounded_denials() {
    let server = Server::start();
    let client = client(false);
    let deep = review(&format!(
        "{}{}",
        "[".repeat(1_000_000),
        "]".repeat(1_000_000)
    ));
    let (status, text) = send(&client, &server.url("/validate"), deep).await;
    assert_eq!(status, 200, "{text:.300}");
    assert!(text.contains("recursion limit exceeded"), "{text:.300}");

    let secrets: Vec<String> = (0..3000)
        .map(|i| format!(r#"{{"name":"Bad_{i}_{}","path":"/x"}}"#, "s".repeat(200)))
        .collect();
    let flood = review(&plan_object(&format!(
        r#""secrets":[{}]"#,
        secrets.join(",")
    )));
    let (status, text) = send(&client, &server.url("/mutate"), flood).await;
    assert_eq!(status, 200);
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let message = answer["response"]["status"]["message"].as_str().unwrap();
    assert_eq!(
        message.lines().filter(|l| l.starts_with("- spec")).count(),
        50,
        "{message:.3000}"
    );
    assert!(message.contains("\n- and "), "{message:.300}");
    assert!(message.len() < 32 * 1024, "{}", message.len());
    assert!(text.len() < 40 * 1024, "{}", text.len());
    server.answers_a_good_review(&client).await;
}

/// A TLS client that completes the handshake and then sends `partial` and nothing more; `None`
/// when the server refused the connection.
fn slow_client(
    address: SocketAddr,
    partial: &[u8],
) -> Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let connection =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let socket = TcpStream::connect(address).ok()?;
    let mut stream = rustls::StreamOwned::new(connection, socket);
    stream.write_all(partial).ok()?;
    stream.flush().ok()?;
    Some(stream)
}

/// Whether the server closed the socket (a read ends or fails rather than timing out).
fn closed(mut socket: &TcpStream) -> bool {
    socket
        .set_read_timeout(Some(Duration::from_millis(1)))
        .unwrap();
    let mut byte = [0u8; 1024];
    loop {
        match socket.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_within_the_timeouts() {
    let server = Server::start();
    let address = server.address;
    let opened = Instant::now();
    // 250 connections that send nothing at all, then 250 that finish TLS and send half a
    // request line.
    let silent: Vec<TcpStream> = (0..250)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    let slow: Vec<_> = tokio::task::spawn_blocking(move || {
        (0..250)
            .filter_map(|_| slow_client(address, b"POST /valid"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let files_at_peak = server.open_files();
    eprintln!(
        "{} slow clients completed TLS; the server had {files_at_peak} files open",
        slow.len()
    );
    assert!(files_at_peak < 256 + 32, "{files_at_peak} files open");

    // Everything is closed within the handshake and header timeouts (10 s) plus a margin.
    let deadline = opened + Duration::from_secs(15);
    loop {
        let open_silent = silent.iter().filter(|s| !closed(s)).count();
        let open_slow = slow.iter().filter(|s| !closed(&s.sock)).count();
        if open_silent + open_slow == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open_silent} silent and {open_slow} slow connections still open after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("all 500 closed after {:?}", opened.elapsed());

    // A keep-alive HTTP/1.1 connection that goes quiet after one request is closed too.
    let mut kept = slow_client(address, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let quiet = Instant::now();
    let mut answer = [0u8; 256];
    let n = kept.read(&mut answer).unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    while !closed(&kept.sock) {
        assert!(
            quiet.elapsed() < Duration::from_secs(15),
            "an idle keep-alive connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "the idle keep-alive connection was closed after {:?}",
        quiet.elapsed()
    );
    assert!(
        server.peak_rss() < PEAK_RSS_LIMIT_KIB,
        "{} KiB",
        server.peak_rss()
    );
    // The server is as good as new: fresh connections are answered.
    server.answers_a_good_review(&client(true)).await;
    server.answers_a_good_review(&client(false)).await;
}

/// Runs `check` and returns (exit success, output, peak RSS of the child in KiB, time taken).
fn check(file: &std::path::Path) -> (bool, String, u64, Duration) {
    let started = Instant::now();
    // Python's getrusage gives the finished child's peak memory.
    let output = Command::new("python3")
        .args([
            "-c",
            "import resource, subprocess, sys\n\
             r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n\
             print(r.returncode)\n\
             print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
             print(r.stdout + r.stderr)",
        ])
        .arg(binary())
        .args(["check", "-f"])
        .arg(file)
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut lines = text.splitn(3, '\n');
    let code: i32 = lines.next().unwrap().trim().parse().unwrap();
    let rss: u64 = lines.next().unwrap().trim().parse().unwrap();
    (
        code == 0,
        lines.next().unwrap_or_default().to_owned(),
        rss,
        elapsed,
    )
}

#[test]
fn check_bounds_yaml_bombs_and_huge_files() {
    let dir = tempfile::tempdir().unwrap();
    // A billion laughs: nine levels of aliases, each repeating the last nine times.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for pair in names.windows(2) {
        let (last, next) = (pair[0], pair[1]);
        bomb.push_str(&format!(
            "{next}: &{next} [{}]\n",
            vec![format!("*{last}"); 9].join(",")
        ));
    }
    let bomb_file = dir.path().join("bomb.yaml");
    std::fs::write(&bomb_file, &bomb).unwrap();
    let (ok, output, rss, took) = check(&bomb_file);
    eprintln!("YAML bomb: {rss} KiB, {took:?}: {output:.300}");
    assert!(!ok, "{output}");
    assert!(rss < PEAK_RSS_LIMIT_KIB, "{rss} KiB");
    assert!(took < Duration::from_secs(10), "{took:?}");

    // A 200 MB file is refused without reading it all.
    let huge_file = dir.path().join("huge.yaml");
    let file = std::fs::File::create(&huge_file).unwrap();
    file.set_len(200 * 1000 * 1000).unwrap();
    let (ok, output, rss, took) = check(&huge_file);
    eprintln!("200 MB file: {rss} KiB, {took:?}: {output:.300}");
    assert!(!ok, "{output}");
    assert!(output.contains("larger than"), "{output}");
    assert!(rss < PEAK_RSS_LIMIT_KIB, "{rss} KiB");
}
