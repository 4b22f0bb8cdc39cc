//! A scripted API server for fast tests of the code that calls the API: a kube client whose
//! requests arrive here in order, each checked against what the test expects and answered as
//! the test says.

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::Value;
use tower_test::mock::{self, Handle};

/// Makes the process's TLS provider the one the binary installs at start (HTTP clients need one).
pub fn crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A client talking to a scripted API server, and the server's end.
pub fn client() -> (Client, ApiServer) {
    crypto();
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer { handle })
}

/// The API server's end: takes the client's requests one at a time.
pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

/// A request the client made.
#[derive(Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    /// The body as JSON (`Null` when empty).
    pub body: Value,
}

impl ApiServer {
    /// Takes the next request, which must be `method` on a URI starting with `path`, and answers
    /// it with `status` and `answer`. Returns the request.
    pub async fn expect(&mut self, method: &str, path: &str, status: u16, answer: Value) -> Seen {
        let next = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.handle.next_request(),
        )
        .await
        .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"));
        let (request, reply) =
            next.unwrap_or_else(|| panic!("the client went away; expected {method} {path}"));
        let seen = Seen {
            method: request.method().to_string(),
            uri: request.uri().to_string(),
            body: {
                let bytes = request.into_body().collect_bytes().await.unwrap();
                if bytes.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&bytes).unwrap()
                }
            },
        };
        assert_eq!(
            (seen.method.as_str(), seen.uri.starts_with(path)),
            (method, true),
            "expected {method} {path}, got {} {}",
            seen.method,
            seen.uri
        );
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap();
        reply.send_response(response);
        seen
    }

    /// Takes the next request, whatever it is, and answers it as `answer` says (status, body);
    /// `None` when the client went away. For stateful fakes (a Lease that replicas take).
    pub async fn answer(&mut self, answer: impl FnOnce(&Seen) -> (u16, Value)) -> Option<Seen> {
        let (request, reply) = self.handle.next_request().await?;
        let seen = Seen {
            method: request.method().to_string(),
            uri: request.uri().to_string(),
            body: {
                let bytes = request.into_body().collect_bytes().await.ok()?;
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            },
        };
        let (status, body) = answer(&seen);
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()))
            .ok()?;
        reply.send_response(response);
        Some(seen)
    }

    /// Answers the next request with an API error of this code (e.g. 404, 409).
    pub async fn refuse(&mut self, method: &str, path: &str, code: u16) -> Seen {
        let reason = match code {
            404 => "NotFound",
            409 => "Conflict",
            429 => "TooManyRequests",
            _ => "InternalError",
        };
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": format!("refused with {code}"), "reason": reason, "code": code,
        });
        self.expect(method, path, code, status).await
    }

    /// Asserts that the client makes no further request (waiting briefly for a straggler).
    pub async fn done(mut self) {
        let next = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            self.handle.next_request(),
        )
        .await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}
