//! `bench-reserve`: load on the control service alone, over gRPC, the way the
//! filter calls it: `keybrake.v1.Gateway/Authorize` for a money-moving
//! `POST /v1/charges` (so each call is a durable reservation: spend reserved,
//! idempotency record, call row and audit intent, fsync'd before the answer),
//! then `Settle` with a 200 and a Stripe-shaped charge.
//!
//!   bench-reserve --grpc unix:/path/grpc.sock --http 127.0.0.1:PORT --admin-key KEY \
//!                 --concurrency 16 --duration 5 [--warmup 1] [--mode both]
//!
//! `--grpc` is the control service's gRPC socket (`unix:/path`, what Envoy
//! uses on the same host; run the bench as the service's user), or
//! `IP:PORT` for a control service started with
//! `--insecure-grpc-tcp-without-client-auth`.
//!
//! It issues its own vault key through the admin API (`POST /admin/vault_keys`,
//! a huge daily cap), hashes it for `vault_key_hash`, and gives every call a
//! fresh call id and fingerprint and no caller idempotency key, so no call is
//! deduplicated or replayed. Modes:
//!   reserve  Authorize only in the timed window (settled afterwards, untimed):
//!            durable reservations per second;
//!   cycle    Authorize then Settle in the timed window: full cycles per second;
//!   both     reserve, then cycle (default).
//! Prints one JSON object on stdout.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::net::{TcpStream, UnixStream};
use tonic::transport::{Channel, Endpoint};

mod wire {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("keybrake.v1");
}

use wire::authorize_response::Verdict;
use wire::gateway_client::GatewayClient;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
struct Args {
    grpc: String,
    http: String,
    admin_key: String,
    concurrency: usize,
    connections: usize,
    duration: Duration,
    warmup: Duration,
    mode: String,
    amount_minor: i64,
    dedup: String,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        grpc: String::new(),
        http: String::new(),
        admin_key: std::env::var("KEYBRAKE_ADMIN_KEY").unwrap_or_default(),
        concurrency: 16,
        connections: 2,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        mode: "both".into(),
        amount_minor: 100,
        dedup: "content".into(),
        threads: 1,
    };
    let secs = |v: String, flag: &str| -> Result<Duration, String> {
        v.parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("{flag}: seconds expected, got {v:?}"))
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--grpc" => a.grpc = value()?,
            "--http" => a.http = value()?,
            "--admin-key" => a.admin_key = value()?,
            "--concurrency" | "-c" => a.concurrency = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--connections" => a.connections = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--duration" | "-d" => a.duration = secs(value()?, &flag)?,
            "--warmup" => a.warmup = secs(value()?, &flag)?,
            "--mode" => a.mode = value()?,
            "--amount-minor" => a.amount_minor = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "--dedup" => a.dedup = value()?,
            "--threads" => a.threads = value()?.parse().map_err(|e| format!("{flag}: {e}"))?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.grpc.is_empty() || a.http.is_empty() || a.admin_key.is_empty() {
        return Err(format!("--grpc, --http and --admin-key (or KEYBRAKE_ADMIN_KEY) are required\n{USAGE}"));
    }
    if !["reserve", "cycle", "both"].contains(&a.mode.as_str()) {
        return Err("--mode must be reserve, cycle or both".into());
    }
    a.concurrency = a.concurrency.max(1);
    a.connections = a.connections.clamp(1, a.concurrency);
    a.threads = a.threads.max(1);
    Ok(a)
}

const USAGE: &str = "usage: bench-reserve --grpc unix:/path|HOST:PORT --http HOST:PORT --admin-key KEY \
[--concurrency 16] [--connections 2] [--duration 5] [--warmup 1] [--mode reserve|cycle|both] \
[--amount-minor 100] [--dedup content|idempotency_key] [--threads 1]";

/// Issues the bench's vault key through the admin API; returns the key.
async fn issue_key(args: &Args, label: &str) -> Result<String, Error> {
    let body = json!({
        "label": label,
        "vendor": "stripe",
        "allowed_endpoints": ["POST /v1/charges"],
        "daily_usd_cap": 1_000_000_000,
        "expires_in_seconds": 86_400,
        "dedup": args.dedup,
    })
    .to_string();
    let stream = TcpStream::connect(&args.http).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::post("/admin/vault_keys")
        .header("host", &args.http)
        .header("authorization", format!("Bearer {}", args.admin_key))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    if status.as_u16() != 201 {
        return Err(format!("POST /admin/vault_keys answered {status}: {}", String::from_utf8_lossy(&bytes)).into());
    }
    let v: Value = serde_json::from_slice(&bytes)?;
    v.get("vault_key").and_then(Value::as_str).map(str::to_owned).ok_or_else(|| "no vault_key in the answer".into())
}

/// What the workers share.
struct Run {
    key_hash: Vec<u8>,
    nonce: String,
    amount_minor: i64,
    seq: AtomicU64,
    /// Over the whole process, warm-ups and untimed settlements included.
    authorized: AtomicU64,
    settled: AtomicU64,
}

impl Run {
    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    fn authorize_request(&self, n: u64) -> wire::AuthorizeRequest {
        let body = format!("amount={}&currency=usd&description=bench-{}-{n}", self.amount_minor, self.nonce);
        let mut h = Sha256::new();
        h.update(b"POST\n/v1/charges\n");
        h.update(body.as_bytes());
        let fingerprint = hex(&h.finalize());
        wire::AuthorizeRequest {
            vault_key_hash: self.key_hash.clone(),
            vendor: "stripe".into(),
            method: "POST".into(),
            path: "/v1/charges".into(),
            stripe_account: String::new(),
            idempotency_key: String::new(),
            price: Some(wire::Price {
                kind: wire::price::Kind::Amount as i32,
                amount_minor: self.amount_minor,
                currency: "usd".into(),
                basis: "amount".into(),
                payout: false,
                object_id: String::new(),
            }),
            fingerprint,
            call_id: format!("call_bench{}x{n}", self.nonce),
            stripe_context: String::new(),
            mcp_tool: String::new(),
        }
    }

    fn settle_request(&self, call_id: String, n: u64, latency_us: u64) -> wire::SettleRequest {
        let request_id = format!("req_bench{}x{n}", self.nonce);
        let body = format!(
            r#"{{"id":"ch_bench{}x{n}","object":"charge","amount":{},"currency":"usd"}}"#,
            self.nonce, self.amount_minor
        );
        wire::SettleRequest {
            call_id,
            outcome: wire::Outcome::Responded as i32,
            http_status: 200,
            request_id: request_id.clone(),
            headers: vec![
                wire::Header { name: "content-type".into(), value: "application/json".into() },
                wire::Header { name: "request-id".into(), value: request_id },
            ],
            body: body.into_bytes(),
            body_truncated: false,
            latency_us,
            detail: "via_upstream".into(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One worker's record of a timed window.
#[derive(Default)]
struct Tally {
    authorize_us: Vec<u32>,
    cycle_us: Vec<u32>,
    /// Calls allowed but not settled in the window (reserve mode).
    unsettled: Vec<(String, u64)>,
    errors: u64,
    denied: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

async fn worker(mut client: GatewayClient<Channel>, run: Arc<Run>, until: Instant, settle: bool) -> Tally {
    let mut t = Tally::default();
    while Instant::now() < until {
        let n = run.next();
        let request = run.authorize_request(n);
        let started = Instant::now();
        let answer = client.authorize(request).await;
        let authorized = started.elapsed();
        let call_id = match answer.map(|r| r.into_inner().verdict) {
            Ok(Some(Verdict::Allow(allow))) if allow.settle => allow.call_id,
            Ok(Some(Verdict::Allow(_))) => {
                t.error("allowed without a settlement: not a durable call".into());
                continue;
            }
            Ok(Some(Verdict::Deny(d))) => {
                t.denied += 1;
                if t.first_error.is_none() {
                    t.first_error = Some(format!("denied: code {} {}", d.code, d.message));
                }
                continue;
            }
            Ok(Some(Verdict::Replay(_))) => {
                t.error("replayed: the call was deduplicated".into());
                continue;
            }
            Ok(None) => {
                t.error("empty verdict".into());
                continue;
            }
            Err(status) => {
                t.error(format!("authorize: {status}"));
                continue;
            }
        };
        t.authorize_us.push(micros(authorized));
        run.authorized.fetch_add(1, Ordering::Relaxed);
        if !settle {
            t.unsettled.push((call_id, n));
            continue;
        }
        let s = run.settle_request(call_id, n, u64::from(micros(authorized)));
        match client.settle(s).await {
            Ok(_) => {
                t.cycle_us.push(micros(started.elapsed()));
                run.settled.fetch_add(1, Ordering::Relaxed);
            }
            Err(status) => t.error(format!("settle: {status}")),
        }
    }
    t
}

fn percentile(sorted: &[u32], p: f64) -> Value {
    if sorted.is_empty() {
        return Value::Null;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let i = rank.clamp(1, sorted.len()) - 1;
    json!(sorted[i])
}

fn summary(mut lat: Vec<u32>, elapsed: Duration) -> Value {
    lat.sort_unstable();
    let count = lat.len();
    let mean = if count == 0 { 0.0 } else { lat.iter().map(|&v| f64::from(v)).sum::<f64>() / count as f64 };
    json!({
        "count": count,
        "per_s": count as f64 / elapsed.as_secs_f64().max(1e-9),
        "p50_us": percentile(&lat, 50.0),
        "p90_us": percentile(&lat, 90.0),
        "p99_us": percentile(&lat, 99.0),
        "max_us": lat.last().copied(),
        "mean_us": (mean * 10.0).round() / 10.0,
    })
}

/// Runs `concurrency` workers until `duration` has passed and merges their tallies.
async fn window(
    clients: &[GatewayClient<Channel>],
    run: &Arc<Run>,
    concurrency: usize,
    duration: Duration,
    settle: bool,
) -> (Tally, Duration) {
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
        let client = clients[i % clients.len()].clone();
        tasks.push(tokio::spawn(worker(client, run.clone(), until, settle)));
    }
    let mut all = Tally::default();
    for task in tasks {
        match task.await {
            Ok(t) => {
                all.authorize_us.extend(t.authorize_us);
                all.cycle_us.extend(t.cycle_us);
                all.unsettled.extend(t.unsettled);
                all.errors += t.errors;
                all.denied += t.denied;
                if all.first_error.is_none() {
                    all.first_error = t.first_error;
                }
            }
            Err(e) => all.error(format!("worker failed: {e}")),
        }
    }
    (all, started.elapsed())
}

/// Settles, untimed, the calls a reserve-only window left pending.
async fn settle_rest(
    clients: &[GatewayClient<Channel>],
    run: &Arc<Run>,
    calls: Vec<(String, u64)>,
    concurrency: usize,
) -> u64 {
    let calls = Arc::new(std::sync::Mutex::new(calls));
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let mut client = clients[i % clients.len()].clone();
        let calls = calls.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0u64;
            loop {
                let next = calls.lock().ok().and_then(|mut c| c.pop());
                let Some((call_id, n)) = next else { break };
                match client.settle(run.settle_request(call_id, n, 0)).await {
                    Ok(_) => {
                        run.settled.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => failed += 1,
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap_or(1);
    }
    failed
}

async fn measure(args: &Args, clients: &[GatewayClient<Channel>], run: &Arc<Run>, mode: &str) -> Value {
    let settle = mode == "cycle";
    if !args.warmup.is_zero() {
        let (warm, _) = window(clients, run, args.concurrency, args.warmup, settle).await;
        settle_rest(clients, run, warm.unsettled, args.concurrency).await;
    }
    let (t, elapsed) = window(clients, run, args.concurrency, args.duration, settle).await;
    let left = t.unsettled.len();
    let settle_failures = settle_rest(clients, run, t.unsettled, args.concurrency).await;
    json!({
        "mode": mode,
        "concurrency": args.concurrency,
        "connections": clients.len(),
        "elapsed_s": elapsed.as_secs_f64(),
        "reservations": summary(t.authorize_us, elapsed),
        "cycles": if settle { summary(t.cycle_us, elapsed) } else { Value::Null },
        "settled_after_window": left,
        "settle_failures_after_window": settle_failures,
        "errors": t.errors,
        "denied": t.denied,
        "first_error": t.first_error,
    })
}

/// One HTTP/2 connection to the control service's gRPC port: its Unix socket
/// (`unix:/path`), or TCP.
async fn connect(grpc: &str) -> Result<Channel, Error> {
    if let Some(path) = grpc.strip_prefix("unix:") {
        let path = std::path::PathBuf::from(path);
        // The URI only names the HTTP/2 authority; the connector decides where to go.
        let channel = Endpoint::from_static("http://localhost")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await?;
        return Ok(channel);
    }
    Ok(Endpoint::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

async fn main_async(args: Args) -> Result<Value, Error> {
    let nonce = format!(
        "{:x}{:x}",
        SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() % (1u128 << 48),
        std::process::id()
    );
    let vault_key = issue_key(&args, &format!("bench-reserve-{nonce}")).await?;
    let run = Arc::new(Run {
        key_hash: Sha256::digest(vault_key.as_bytes()).to_vec(),
        nonce,
        amount_minor: args.amount_minor,
        seq: AtomicU64::new(0),
        authorized: AtomicU64::new(0),
        settled: AtomicU64::new(0),
    });
    let mut clients = Vec::new();
    for _ in 0..args.connections {
        clients.push(GatewayClient::new(connect(&args.grpc).await?));
    }
    let modes: &[&str] = match args.mode.as_str() {
        "reserve" => &["reserve"],
        "cycle" => &["cycle"],
        _ => &["reserve", "cycle"],
    };
    let mut out = serde_json::Map::new();
    for mode in modes {
        out.insert((*mode).into(), measure(&args, &clients, &run, mode).await);
    }
    out.insert("dedup".into(), json!(args.dedup));
    out.insert("total_authorized".into(), json!(run.authorized.load(Ordering::Relaxed)));
    out.insert("total_settled".into(), json!(run.settled.load(Ordering::Relaxed)));
    out.insert("amount_minor".into(), json!(args.amount_minor));
    Ok(Value::Object(out))
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-reserve: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build();
    let result = match runtime {
        Ok(rt) => rt.block_on(main_async(args)),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench-reserve: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
