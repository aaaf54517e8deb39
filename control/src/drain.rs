//! Refusing an HTTP request without reading its body, politely: a small body
//! is read and dropped first, so that the connection stays usable. Closing it
//! with bytes unread races the proxy in front, which may still be writing them
//! (over the gateway's Unix socket its write then fails at once, and Envoy
//! answers the client 503 instead of the refusal). A body too big or too slow
//! to read closes the connection instead (`Connection: close`), so it is never
//! reused. The admin API and the MCP endpoint both refuse this way.

use axum::response::Response;

/// Largest request body read (and dropped) before a refusal; bigger ones close the connection.
const DRAIN_LIMIT: usize = 64 * 1024;
/// How long a refused client may take to send that body.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Answers `response` to a request whose `body` was not read.
pub async fn refuse_with(mut response: Response, body: axum::body::Body) -> Response {
    if !matches!(tokio::time::timeout(DRAIN_TIME, axum::body::to_bytes(body, DRAIN_LIMIT)).await, Ok(Ok(_))) {
        response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}
