//! The proxy-wasm glue: Envoy's callbacks in, [`Host`] calls out. No decisions
//! here; every hostcall error is handled (the SDK's trait defaults `unwrap`,
//! and a panic in the filter is a crashed VM in Envoy).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use prost::Message;
use proxy_wasm::hostcalls as hc;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::backoff::Backoff;
use crate::config::FilterConfig;
use crate::flow::Flow;
use crate::host::{Counter, Host, Rpc, Step, SERVICE};
use crate::ids::CallIds;
use crate::key_cache::KeyCache;
use crate::outbox::Outbox;
use crate::wire::{CallRecordBatch, Revocation, WatchRequest};

#[allow(unsafe_code)] // WASI's `random_get`, imported by hand: one call, into a buffer we own.
mod entropy {
    // Proxy-wasm hosts (Envoy among them) export WASI's `random_get` to every
    // module, backed by the host's CSPRNG.
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        fn random_get(buf: *mut u8, len: usize) -> i32;
    }

    /// `N` random bytes from the host, or `None` if it has none to give.
    pub fn bytes<const N: usize>() -> Option<[u8; N]> {
        let mut buf = [0u8; N];
        // SAFETY: `buf` is valid for writes of `N` bytes, and the host writes at most `len` bytes.
        let errno = unsafe { random_get(buf.as_mut_ptr(), N) };
        (errno == 0).then_some(buf)
    }
}

#[allow(unsafe_code)] // `main!` exports `_initialize` with `#[no_mangle]`.
mod entry {
    use super::Root;
    use proxy_wasm::traits::RootContext;
    use proxy_wasm::types::LogLevel;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
    }}
}

/// Counter ids, defined on first use (Envoy shows them as `wasmcustom.keybrake.*`).
/// The plain counters are looked up by position: nothing is allocated per request.
#[derive(Default)]
struct Metrics {
    plain: [Option<u32>; Counter::ALL.len()],
    by_reason: HashMap<(Counter, String), u32>,
}

impl Metrics {
    fn add(&mut self, counter: Counter, by: i64) {
        let slot = Counter::ALL.iter().position(|c| *c == counter);
        let Some(cached) = slot.and_then(|i| self.plain.get_mut(i)) else { return };
        let id = match *cached {
            Some(id) => id,
            None => match hc::define_metric(MetricType::Counter, counter_name(counter)) {
                Ok(id) => *cached.insert(id),
                Err(_) => return,
            },
        };
        let _ = hc::increment_metric(id, by);
    }

    fn add_reason(&mut self, counter: Counter, reason: &str) {
        let id = match self.by_reason.get(&(counter, reason.to_owned())) {
            Some(id) => *id,
            None => {
                let clean = reason.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "_");
                match hc::define_metric(MetricType::Counter, &format!("{}.reason.{clean}", counter_name(counter))) {
                    Ok(id) => {
                        self.by_reason.insert((counter, reason.to_owned()), id);
                        id
                    }
                    Err(_) => return,
                }
            }
        };
        let _ = hc::increment_metric(id, 1);
    }
}

fn counter_name(counter: Counter) -> &'static str {
    match counter {
        Counter::Allowed => "keybrake.requests_allowed",
        Counter::Denied => "keybrake.requests_denied",
        Counter::Replayed => "keybrake.requests_replayed",
        Counter::CalloutFailed => "keybrake.callout_failures",
        Counter::AuditDropped => "keybrake.audit_records_dropped",
        Counter::DecidedLocally => "keybrake.requests_decided_locally",
        Counter::OutboxQueued => "keybrake.outbox_queued",
        Counter::OutboxDelivered => "keybrake.outbox_delivered",
    }
}

/// The per-worker root context: configuration, metrics, and the outbox drain.
#[derive(Default)]
struct Root {
    config: Rc<FilterConfig>,
    outbox: Rc<RefCell<Outbox>>,
    metrics: Rc<RefCell<Metrics>>,
    ids: Rc<RefCell<CallIds>>,
    cache: Rc<RefCell<KeyCache>>,
    in_flight: Option<(u32, CallRecordBatch)>,
    /// After a failed delivery, wait before the next (the control service may be struggling).
    backoff: Backoff,
    reported_drops: u64,
    /// The open revocation stream, and when the last attempt to open one was made.
    watch: Option<u32>,
    watch_tried_at: Option<u64>,
}

impl Root {
    /// Sends one batch from the outbox, if none is in flight.
    fn flush(&mut self) {
        if self.in_flight.is_some() || !self.backoff.ready(now_millis()) {
            return;
        }
        let Ok(mut outbox) = self.outbox.try_borrow_mut() else {
            return;
        };
        for _ in self.reported_drops..outbox.dropped {
            if let Ok(mut m) = self.metrics.try_borrow_mut() {
                m.add(Counter::AuditDropped, 1);
            }
        }
        self.reported_drops = outbox.dropped;
        let Some(batch) = outbox.take_batch(self.config.audit_batch_size) else {
            return;
        };
        let bytes = batch.encode_to_vec();
        let timeout = Duration::from_millis(self.config.settle_timeout_ms);
        match hc::dispatch_grpc_call(
            &self.config.control_cluster,
            SERVICE,
            Rpc::RecordCalls.method(),
            vec![],
            Some(&bytes),
            timeout,
        ) {
            Ok(token) => self.in_flight = Some((token, batch)),
            Err(_) => outbox.requeue(batch),
        }
    }

    /// Opens the revocation stream if it is not open (at most once a second).
    fn watch_revocations(&mut self) {
        if self.watch.is_some() {
            return;
        }
        let now = now_millis();
        if self.watch_tried_at.is_some_and(|t| now.saturating_sub(t) < 1_000) {
            return;
        }
        self.watch_tried_at = Some(now);
        match hc::open_grpc_stream(&self.config.control_cluster, SERVICE, "WatchRevocations", vec![]) {
            Ok(token) => {
                self.watch = Some(token);
                self.ack(token, 0);
            }
            Err(_) => {
                let _ = hc::log(
                    LogLevel::Warn,
                    "keybrake: cannot open the revocation stream; reads go to the control service",
                );
            }
        }
    }

    fn ack(&self, token: u32, generation: u64) {
        let msg = WatchRequest { worker: String::new(), acked_generation: generation }.encode_to_vec();
        let _ = hc::send_grpc_stream_message(token, Some(&msg), false);
    }

    fn outbox_empty(&self) -> bool {
        self.outbox.try_borrow().map(|o| o.is_empty()).unwrap_or(false)
    }
}

impl Context for Root {
    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        if self.watch != Some(token) {
            return;
        }
        let bytes = hc::get_buffer(BufferType::GrpcReceiveBuffer, 0, size).ok().flatten().unwrap_or_default();
        let Ok(revocation) = Revocation::decode(bytes.as_slice()) else {
            // Unreadable: stop trusting the cache until a new stream starts over.
            if let Ok(mut cache) = self.cache.try_borrow_mut() {
                cache.disconnect();
            }
            let _ = hc::cancel_grpc_stream(token);
            self.watch = None;
            return;
        };
        let acked = match self.cache.try_borrow_mut() {
            Ok(mut cache) => cache.apply(&revocation),
            Err(_) => return,
        };
        self.ack(token, acked);
    }

    fn on_grpc_stream_close(&mut self, token: u32, _status: u32) {
        if self.watch == Some(token) {
            self.watch = None;
            if let Ok(mut cache) = self.cache.try_borrow_mut() {
                cache.disconnect();
            }
        }
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, _size: usize) {
        match self.in_flight.take() {
            Some((t, batch)) if t == token => {
                if status == 0 {
                    let n = batch.records.len() + batch.orphaned_settlements.len();
                    if let Ok(mut m) = self.metrics.try_borrow_mut() {
                        m.add(Counter::OutboxDelivered, n as i64);
                    }
                    self.backoff.succeeded();
                    // Delivered: send the next batch now rather than at the next tick.
                    if !self.outbox_empty() {
                        self.flush();
                    }
                } else {
                    if self.backoff.failed(now_millis()) {
                        let _ = hc::log(LogLevel::Warn, "keybrake: audit batch not delivered; retrying with backoff");
                    }
                    if let Ok(mut outbox) = self.outbox.try_borrow_mut() {
                        outbox.requeue(batch);
                    }
                }
            }
            other => self.in_flight = other,
        }
    }

    /// Envoy is stopping this VM. On a worker this runs after its event loop
    /// stopped, so nothing can be sent any more: a clean shutdown drains Envoy
    /// first (see `scripts/run-local.sh`), giving the tick time to flush. What
    /// is still queued here is reported, not silently dropped.
    fn on_done(&mut self) -> bool {
        let left = self.outbox.try_borrow().map(|o| o.len()).unwrap_or(0);
        if left > 0 {
            let _ = hc::log(
                LogLevel::Warn,
                &format!("keybrake: {left} audit records or settlements undelivered at shutdown (drain Envoy before stopping it)"),
            );
        }
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = hc::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten().unwrap_or_default();
        match FilterConfig::parse(&bytes) {
            Ok(config) => {
                // Seed this VM's call ids with the host's randomness: the time
                // alone was seen to seed two workers' VMs alike, and a call id
                // used twice settles the wrong call. The time stays in as a
                // fallback for a host without `random_get`.
                let now = hc::get_current_time()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let mut material = match entropy::bytes::<16>() {
                    Some(random) => random.to_vec(),
                    None => {
                        let _ = hc::log(
                            LogLevel::Warn,
                            "keybrake: the host gave no random bytes; call ids are seeded from the time",
                        );
                        Vec::new()
                    }
                };
                material.extend_from_slice(&now.to_le_bytes());
                material.extend_from_slice(&size.to_le_bytes());
                if let Ok(mut ids) = self.ids.try_borrow_mut() {
                    *ids = CallIds::seeded(&material);
                }
                if let Ok(mut outbox) = self.outbox.try_borrow_mut() {
                    outbox.set_limit(config.audit_queue_limit);
                }
                let _ = hc::set_tick_period(Duration::from_millis(config.audit_flush_interval_ms));
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                let _ = hc::log(LogLevel::Error, &format!("keybrake: {e}"));
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.flush();
        self.watch_revocations();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            flow: Flow::new(self.config.clone(), self.outbox.clone(), self.cache.clone()),
            host: EnvoyHost {
                cluster: self.config.control_cluster.clone(),
                metrics: self.metrics.clone(),
                ids: self.ids.clone(),
            },
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    flow: Flow,
    host: EnvoyHost,
}

fn action(step: Step) -> Action {
    match step {
        Step::Continue => Action::Continue,
        Step::Pause => Action::Pause,
    }
}

impl Context for Stream {
    fn on_grpc_call_response(&mut self, token: u32, status: u32, size: usize) {
        self.flow.on_grpc_response(&mut self.host, token, status, size);
    }
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_request_headers(&mut self.host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_request_body(&mut self.host, body_size, end_of_stream))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.flow.on_request_trailers(&mut self.host))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_response_headers(&mut self.host, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.flow.on_response_body(&mut self.host, body_size, end_of_stream))
    }

    fn on_log(&mut self) {
        self.flow.on_log(&mut self.host);
    }
}

/// [`Host`] over proxy-wasm hostcalls for the current stream.
struct EnvoyHost {
    cluster: String,
    metrics: Rc<RefCell<Metrics>>,
    ids: Rc<RefCell<CallIds>>,
}

impl Host for EnvoyHost {
    fn request_headers(&self) -> Vec<(String, String)> {
        hc::get_map(MapType::HttpRequestHeaders).unwrap_or_default()
    }

    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        let _ = hc::set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        hc::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten()
    }

    fn set_request_body(&mut self, size: usize, body: &[u8]) -> bool {
        hc::set_buffer(BufferType::HttpRequestBody, 0, size, body).is_ok()
    }

    fn response_headers(&self) -> Vec<(String, String)> {
        hc::get_map(MapType::HttpResponseHeaders).unwrap_or_default()
    }

    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        let _ = hc::set_map_value(MapType::HttpResponseHeaders, name, value);
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        hc::get_buffer(BufferType::HttpResponseBody, 0, size).ok().flatten()
    }

    fn response_code_details(&self) -> Option<String> {
        let bytes = hc::get_property(vec!["response", "code_details"]).ok().flatten()?;
        String::from_utf8(bytes).ok()
    }

    fn send_local_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        if hc::send_http_response(status, headers.to_vec(), Some(body)).is_err() {
            let _ = hc::reset_http_request();
        }
    }

    fn dispatch(&mut self, rpc: Rpc, message: &[u8], timeout_ms: u64) -> Option<u32> {
        hc::dispatch_grpc_call(
            &self.cluster,
            SERVICE,
            rpc.method(),
            vec![],
            Some(message),
            Duration::from_millis(timeout_ms),
        )
        .ok()
    }

    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>> {
        hc::get_buffer(BufferType::GrpcReceiveBuffer, 0, size).ok().flatten()
    }

    fn resume_request(&mut self) {
        let _ = hc::resume_http_request();
    }

    fn resume_response(&mut self) {
        let _ = hc::resume_http_response();
    }

    fn now_micros(&self) -> i64 {
        now_micros()
    }

    fn log_warn(&self, message: &str) {
        let _ = hc::log(LogLevel::Warn, message);
    }

    fn new_call_id(&mut self) -> String {
        self.ids.try_borrow_mut().map(|mut ids| ids.fresh()).unwrap_or_else(|_| CallIds::seeded(b"busy").fresh())
    }

    fn count(&mut self, counter: Counter, reason: Option<&str>) {
        if let Ok(mut m) = self.metrics.try_borrow_mut() {
            m.add(counter, 1);
            if let Some(r) = reason {
                m.add_reason(counter, r);
            }
        }
    }
}

fn now_micros() -> i64 {
    hc::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| i64::try_from(d.as_micros()).ok())
        .unwrap_or(0)
}

fn now_millis() -> u64 {
    u64::try_from(now_micros() / 1000).unwrap_or(0)
}
