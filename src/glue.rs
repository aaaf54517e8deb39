//! The proxy-wasm glue: Envoy's callbacks in, [`Host`] and [`RootHost`] calls
//! out. No decisions here: the request flow is [`Flow`], the root context is
//! [`Root`], both plain code tested natively. Every hostcall error is handled
//! (the SDK's trait defaults `unwrap`, and a panic in the filter is a crashed
//! VM in Envoy). Logs go through the `log` crate, which proxy-wasm's logger
//! sends to the host.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls as hc;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, MetricType};

use crate::call_ids::CallIds;
use crate::flow::Flow;
use crate::host::{Counter, Host, RootHost, Rpc, Step, SERVICE};
use crate::root::Root;

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
    use super::RootGlue;
    use proxy_wasm::traits::RootContext;
    use proxy_wasm::types::LogLevel;

    proxy_wasm::main! {{
        proxy_wasm::set_log_level(LogLevel::Info);
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RootGlue::default()) });
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

/// The root context: proxy-wasm's root callbacks, handed to [`Root`].
#[derive(Default)]
struct RootGlue {
    root: Root,
    host: EnvoyRoot,
}

impl Context for RootGlue {
    fn on_grpc_stream_message(&mut self, token: u32, size: usize) {
        self.root.on_grpc_stream_message(&mut self.host, token, size);
    }

    fn on_grpc_stream_close(&mut self, token: u32, _status: u32) {
        self.root.on_grpc_stream_close(token);
    }

    fn on_grpc_call_response(&mut self, token: u32, status: u32, _size: usize) {
        self.root.on_grpc_call_response(&mut self.host, token, status);
    }

    fn on_done(&mut self) -> bool {
        self.root.on_done(&mut self.host)
    }
}

impl RootContext for RootGlue {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = hc::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten().unwrap_or_default();
        self.root.configure(&mut self.host, &bytes)
    }

    fn on_tick(&mut self) {
        self.root.on_tick(&mut self.host);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            flow: self.root.new_flow(),
            host: EnvoyHost {
                cluster: self.root.config().control_cluster.clone(),
                metrics: self.host.metrics.clone(),
                ids: self.root.ids(),
            },
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// [`RootHost`] over proxy-wasm hostcalls.
#[derive(Default)]
struct EnvoyRoot {
    metrics: Rc<RefCell<Metrics>>,
}

impl RootHost for EnvoyRoot {
    fn now_nanos(&self) -> u64 {
        hc::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .and_then(|d| u64::try_from(d.as_nanos()).ok())
            .unwrap_or(0)
    }

    fn random_bytes(&mut self) -> Option<[u8; 16]> {
        entropy::bytes::<16>()
    }

    fn set_tick_period(&mut self, period_ms: u64) {
        let _ = hc::set_tick_period(Duration::from_millis(period_ms));
    }

    fn dispatch(&mut self, cluster: &str, rpc: Rpc, message: &[u8], timeout_ms: u64) -> Option<u32> {
        hc::dispatch_grpc_call(cluster, SERVICE, rpc.method(), vec![], Some(message), Duration::from_millis(timeout_ms))
            .ok()
    }

    fn open_revocation_stream(&mut self, cluster: &str) -> Option<u32> {
        hc::open_grpc_stream(cluster, SERVICE, "WatchRevocations", vec![]).ok()
    }

    fn send_stream_message(&mut self, token: u32, message: &[u8]) {
        let _ = hc::send_grpc_stream_message(token, Some(message), false);
    }

    fn cancel_stream(&mut self, token: u32) {
        let _ = hc::cancel_grpc_stream(token);
    }

    fn grpc_message(&self, size: usize) -> Option<Vec<u8>> {
        hc::get_buffer(BufferType::GrpcReceiveBuffer, 0, size).ok().flatten()
    }

    fn count(&mut self, counter: Counter, by: u64) {
        if let Ok(mut m) = self.metrics.try_borrow_mut() {
            m.add(counter, i64::try_from(by).unwrap_or(i64::MAX));
        }
    }

    fn log_warn(&self, message: &str) {
        log::warn!("{message}");
    }

    fn log_error(&self, message: &str) {
        log::error!("{message}");
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
        log::warn!("{message}");
    }

    fn new_call_id(&mut self) -> Option<String> {
        self.ids.try_borrow_mut().ok().and_then(|mut ids| ids.fresh())
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
