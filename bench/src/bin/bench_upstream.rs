//! `bench-upstream`: a fast Stripe stand-in for the benchmarks (not for tests:
//! it knows two endpoints and keeps no state but counters).
//!
//!   bench-upstream --port 0 --expect-key sk_test_... [--threads 1]
//!
//! Serves HTTP/1.1 (keep-alive) and h2c on loopback:
//!   GET  /v1/charges/{id}  a charge with that id
//!   POST /v1/charges       a new charge (`amount` and `currency` from the form body)
//!   GET  /__bench/counts   how many requests it answered, as JSON (no key needed)
//! Every Stripe call must carry `Authorization: Bearer <expected key>` (else 401).
//! Prints `READY <port>` on stdout once it listens.
#![forbid(unsafe_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[derive(Default)]
struct Counts {
    get: AtomicU64,
    post: AtomicU64,
    unauthorized: AtomicU64,
    other: AtomicU64,
    seq: AtomicU64,
}

struct State {
    expected: Vec<u8>,
    counts: Counts,
}

struct Args {
    port: u16,
    host: String,
    expect_key: String,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args { port: 0, host: "127.0.0.1".into(), expect_key: String::new(), threads: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--port" => args.port = value()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--host" => args.host = value()?,
            "--expect-key" => args.expect_key = value()?,
            "--threads" => args.threads = value()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "-h" | "--help" => {
                return Err("usage: bench-upstream [--port 0] [--host 127.0.0.1] --expect-key KEY [--threads 1]".into())
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if args.expect_key.is_empty() {
        return Err("--expect-key is required".into());
    }
    args.threads = args.threads.max(1);
    Ok(args)
}

fn json(status: StatusCode, request_id: u64, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&format!("req_bench{request_id:012}")) {
        headers.insert("request-id", v);
    }
    response
}

fn stripe_error(status: StatusCode, seq: u64, kind: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": {"type": kind, "message": message}}).to_string();
    json(status, seq, body)
}

/// A form parameter's raw value (the bench sends plain ASCII values).
fn form_value<'a>(body: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(body).ok()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then_some(v)
    })
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let counts = &state.counts;
    let seq = counts.seq.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path().to_owned();
    if path == "/__bench/counts" {
        let body = serde_json::json!({
            "get": counts.get.load(Ordering::Relaxed),
            "post": counts.post.load(Ordering::Relaxed),
            "unauthorized": counts.unauthorized.load(Ordering::Relaxed),
            "other": counts.other.load(Ordering::Relaxed),
        })
        .to_string();
        return Ok(json(StatusCode::OK, seq, body));
    }
    let authorized = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|k| k == state.expected.as_slice());
    if !authorized {
        counts.unauthorized.fetch_add(1, Ordering::Relaxed);
        return Ok(stripe_error(StatusCode::UNAUTHORIZED, seq, "invalid_request_error", "Invalid API Key provided."));
    }
    let method = req.method().clone();
    if method == Method::GET {
        if let Some(id) = path.strip_prefix("/v1/charges/") {
            if !id.is_empty() && !id.contains('/') {
                counts.get.fetch_add(1, Ordering::Relaxed);
                let body = serde_json::json!({
                    "id": id, "object": "charge", "amount": 100, "currency": "usd",
                })
                .to_string();
                return Ok(json(StatusCode::OK, seq, body));
            }
        }
    } else if method == Method::POST && path == "/v1/charges" {
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                counts.other.fetch_add(1, Ordering::Relaxed);
                return Ok(stripe_error(StatusCode::BAD_REQUEST, seq, "invalid_request_error", "Unreadable body."));
            }
        };
        let amount = form_value(&body, "amount").and_then(|a| a.parse::<i64>().ok());
        let currency = form_value(&body, "currency").unwrap_or("usd");
        let Some(amount) = amount else {
            counts.other.fetch_add(1, Ordering::Relaxed);
            return Ok(stripe_error(
                StatusCode::BAD_REQUEST,
                seq,
                "invalid_request_error",
                "Missing required param: amount.",
            ));
        };
        let n = counts.post.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "id": format!("ch_bench{n:016}"), "object": "charge", "amount": amount,
            "currency": currency.to_ascii_lowercase(),
        })
        .to_string();
        return Ok(json(StatusCode::OK, seq, body));
    }
    counts.other.fetch_add(1, Ordering::Relaxed);
    Ok(stripe_error(StatusCode::NOT_FOUND, seq, "invalid_request_error", "Unrecognized request URL."))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let listener = TcpListener::bind(addr).await?;
    let port = listener.local_addr()?.port();
    println!("READY {port}");
    use std::io::Write;
    std::io::stdout().flush()?;
    let state = Arc::new(State { expected: args.expect_key.into_bytes(), counts: Counts::default() });
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("bench-upstream: accept failed: {e}");
                    continue;
                }
            },
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let _ = auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-upstream: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build();
    let result = match runtime {
        Ok(rt) => rt.block_on(serve(args)),
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-upstream: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
