//! Version resolution: `spec.version`, or the channel URL answered the way the Go controller reads
//! it (a 302 whose Location's last path element is the version), with its two request headers.

use std::time::Duration;

/// The version as an image tag: every `+` becomes `-`.
pub fn munge(version: &str) -> String {
    version.replace('+', "-")
}

/// Go's `filepath.Base`: the last element of a slash-separated path, trailing slashes ignored.
fn base(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return "/".to_owned();
    }
    trimmed.rsplit('/').next().unwrap_or(trimmed).to_owned()
}

/// Why a channel could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChannelError(pub String);

/// The HTTP client for channels: no redirects followed, proxies from `HTTP_PROXY`, `HTTPS_PROXY`
/// and `NO_PROXY`, the host's and the bundled root CAs, and a timeout.
#[derive(Clone)]
pub struct ChannelClient {
    client: reqwest::Client,
}

impl ChannelClient {
    pub fn new(timeout: Duration) -> Result<Self, ChannelError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .user_agent(concat!(
                "system-upgrade-controller/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| ChannelError(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self { client })
    }

    /// Asks the channel for the latest version (unmunged). `latest` and `cluster_id` are sent as
    /// `X-SUC-Latest-Version` and `X-SUC-Cluster-ID` when not empty.
    pub async fn resolve(
        &self,
        channel: &str,
        latest: &str,
        cluster_id: &str,
    ) -> Result<String, ChannelError> {
        let url = reqwest::Url::parse(channel)
            .map_err(|e| ChannelError(format!("invalid channel URL {channel:?}: {e}")))?;
        let mut request = self.client.get(url.clone());
        if !cluster_id.is_empty() {
            request = request.header("X-SUC-Cluster-ID", cluster_id);
        }
        if !latest.is_empty() {
            request = request.header("X-SUC-Latest-Version", latest);
        }
        let response = request
            .send()
            .await
            .map_err(|e| ChannelError(crate::error::with_causes(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::FOUND {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .ok_or_else(|| ChannelError("http: no Location header in response".to_owned()))?
                .to_str()
                .map_err(|e| ChannelError(format!("unreadable Location header: {e}")))?;
            let target = url
                .join(location)
                .map_err(|e| ChannelError(format!("invalid Location {location:?}: {e}")))?;
            let path = percent_encoding::percent_decode_str(target.path())
                .decode_utf8_lossy()
                .into_owned();
            return Ok(base(&path));
        }
        if (200..400).contains(&status.as_u16()) {
            // As in Go: the last element of the channel URL itself.
            return Ok(base(channel));
        }
        Err(ChannelError(format!(
            "unexpected response: {:?} {status}",
            response.version()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use std::sync::{Arc, Mutex};

    #[test]
    fn munging_and_base() {
        assert_eq!(munge("v1.30.4+k3s1"), "v1.30.4-k3s1");
        assert_eq!(munge("a+b+c"), "a-b-c");
        assert_eq!(
            base("/k3s-io/k3s/releases/tag/v1.30.4+k3s1"),
            "v1.30.4+k3s1"
        );
        assert_eq!(base("/local/test/"), "test");
        assert_eq!(base(""), ".");
        assert_eq!(base("/"), "/");
        assert_eq!(base("https://srv/releases/v9"), "v9");
        assert_eq!(
            base("https://srv/c/stable?x=1"),
            "stable?x=1",
            "the query stays, as in Go"
        );
    }

    type Seen = Arc<Mutex<Vec<HeaderMap>>>;

    async fn server() -> (String, Seen) {
        let seen: Seen = Arc::default();
        let record = |seen: Seen| {
            move |headers: HeaderMap| {
                seen.lock().unwrap().push(headers);
                async {}
            }
        };
        let s = seen.clone();
        let app = axum::Router::new()
            .route(
                "/relative",
                get({
                    let r = record(s.clone());
                    move |h: HeaderMap| async move {
                        r(h).await;
                        (
                            StatusCode::FOUND,
                            [(header::LOCATION, "/local/test/v1.2.3+test")],
                        )
                            .into_response()
                    }
                }),
            )
            .route(
                "/absolute",
                get(|| async {
                    (
                        StatusCode::FOUND,
                        [(
                            header::LOCATION,
                            "https://github.com/k3s-io/k3s/releases/tag/v1.30.4%2Bk3s1",
                        )],
                    )
                        .into_response()
                }),
            )
            .route("/releases/v9", get(|| async { "ok" }))
            .route(
                "/moved/v8",
                get(|| async {
                    (
                        StatusCode::MOVED_PERMANENTLY,
                        [(header::LOCATION, "/elsewhere/v7")],
                    )
                        .into_response()
                }),
            )
            .route("/no-location", get(|| async { StatusCode::FOUND }))
            .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
            .route("/broken", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{address}"), seen)
    }

    fn client() -> ChannelClient {
        let _ = rustls::crypto::ring::default_provider().install_default();
        ChannelClient::new(Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn redirects_name_the_version() {
        let (base_url, seen) = server().await;
        let client = client();
        let version = client
            .resolve(&format!("{base_url}/relative"), "", "cluster-uid")
            .await
            .unwrap();
        assert_eq!(version, "v1.2.3+test");
        assert_eq!(munge(&version), "v1.2.3-test");
        let headers = seen.lock().unwrap()[0].clone();
        assert_eq!(headers["x-suc-cluster-id"], "cluster-uid");
        assert!(
            headers.get("x-suc-latest-version").is_none(),
            "no latest version yet"
        );
        client
            .resolve(&format!("{base_url}/relative"), "v1.2.2-test", "")
            .await
            .unwrap();
        let headers = seen.lock().unwrap()[1].clone();
        assert_eq!(headers["x-suc-latest-version"], "v1.2.2-test");
        assert!(headers.get("x-suc-cluster-id").is_none());
        assert_eq!(
            client
                .resolve(&format!("{base_url}/absolute"), "", "")
                .await
                .unwrap(),
            "v1.30.4+k3s1"
        );
    }

    #[tokio::test]
    async fn other_successes_use_the_channel_url() {
        let (base_url, _) = server().await;
        let client = client();
        assert_eq!(
            client
                .resolve(&format!("{base_url}/releases/v9"), "", "")
                .await
                .unwrap(),
            "v9"
        );
        assert_eq!(
            client
                .resolve(&format!("{base_url}/moved/v8"), "", "")
                .await
                .unwrap(),
            "v8",
            "redirects other than 302 are not followed"
        );
    }

    #[tokio::test]
    async fn failures_are_explained() {
        let (base_url, _) = server().await;
        let client = client();
        let error = |path: &'static str| {
            let client = client.clone();
            let url = format!("{base_url}{path}");
            async move { client.resolve(&url, "", "").await.unwrap_err().0 }
        };
        assert_eq!(
            error("/missing").await,
            "unexpected response: HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            error("/broken").await,
            "unexpected response: HTTP/1.1 503 Service Unavailable"
        );
        assert_eq!(
            error("/no-location").await,
            "http: no Location header in response"
        );
        let refused = client
            .resolve("http://127.0.0.1:1/x", "", "")
            .await
            .unwrap_err()
            .0;
        assert!(
            refused.contains("Connection refused") || refused.contains("connect"),
            "{refused}"
        );
    }
}
