//! Everything the filter asks of its host (Envoy), behind two small traits
//! ([`Host`] for one HTTP stream, [`RootHost`] for the worker's root context),
//! so the request flow and the outbox drain are plain code that runs natively
//! in tests against `mock::MockHost` and `mock::MockRootHost`. The proxy-wasm
//! implementations live in `glue.rs`.

/// gRPC service of the control service (see `proto/keybrake.proto`).
pub const SERVICE: &str = "keybrake.v1.Gateway";

/// The calls the filter makes to the control service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Authorize,
    Settle,
    RecordCalls,
}

impl Rpc {
    pub fn method(self) -> &'static str {
        match self {
            Rpc::Authorize => "Authorize",
            Rpc::Settle => "Settle",
            Rpc::RecordCalls => "RecordCalls",
        }
    }
}

/// What a callback tells Envoy: go on, or hold the stream until resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Continue,
    Pause,
}

/// Counters the filter publishes as proxy-wasm metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    Allowed,
    Denied,
    Replayed,
    CalloutFailed,
    /// A read decided from the worker's key cache, without asking the control service.
    DecidedLocally,
    AuditDropped,
    /// Records and settlements put into the worker's outbox.
    OutboxQueued,
    /// ... and delivered to the control service (queued - delivered - dropped = pending).
    OutboxDelivered,
}

impl Counter {
    pub const ALL: [Counter; 8] = [
        Counter::Allowed,
        Counter::Denied,
        Counter::Replayed,
        Counter::CalloutFailed,
        Counter::DecidedLocally,
        Counter::AuditDropped,
        Counter::OutboxQueued,
        Counter::OutboxDelivered,
    ];
}

/// Host services for one HTTP stream.
pub trait Host {
    fn request_headers(&self) -> Vec<(String, String)>;
    /// Sets (or with `None` removes) a request header.
    fn set_request_header(&mut self, name: &str, value: Option<&str>);
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Replaces the first `size` bytes of the (whole, buffered) request body; false if the host refused.
    fn set_request_body(&mut self, size: usize, body: &[u8]) -> bool;
    fn response_headers(&self) -> Vec<(String, String)>;
    fn set_response_header(&mut self, name: &str, value: Option<&str>);
    fn response_body(&self, size: usize) -> Option<Vec<u8>>;
    /// Envoy's `response.code_details` ("via_upstream", "upstream_response_timeout", ...).
    fn response_code_details(&self) -> Option<String>;
    fn send_local_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]);
    /// Starts a unary call to the control service; `None` when it cannot be started.
    fn dispatch(&mut self, rpc: Rpc, message: &[u8], timeout_ms: u64) -> Option<u32>;
    fn grpc_response_body(&self, size: usize) -> Option<Vec<u8>>;
    fn resume_request(&mut self);
    fn resume_response(&mut self);
    fn now_micros(&self) -> i64;
    fn log_warn(&self, message: &str);
    /// A new call id, unique across workers and restarts (not a secret);
    /// `None` when none can be made (the call is then refused, never sent
    /// with an id another call may hold).
    fn new_call_id(&mut self) -> Option<String>;
    fn count(&mut self, counter: Counter, reason: Option<&str>);
}

/// Host services for the worker's root context ([`crate::root::Root`]): the
/// clock, the tick, unary calls and the revocation stream to the control
/// service, metrics and logs.
pub trait RootHost {
    /// Nanoseconds since the Unix epoch (0 when the host cannot tell).
    fn now_nanos(&self) -> u64;
    /// 16 bytes from the host's CSPRNG, or `None` when it has none to give.
    fn random_bytes(&mut self) -> Option<[u8; 16]>;
    /// Asks for `on_tick` every `period_ms`.
    fn set_tick_period(&mut self, period_ms: u64);
    /// Starts a unary call to the control service at `cluster`; `None` when it cannot be started.
    fn dispatch(&mut self, cluster: &str, rpc: Rpc, message: &[u8], timeout_ms: u64) -> Option<u32>;
    /// Opens the `WatchRevocations` stream at `cluster`; `None` when it cannot be opened.
    fn open_revocation_stream(&mut self, cluster: &str) -> Option<u32>;
    fn send_stream_message(&mut self, token: u32, message: &[u8]);
    fn cancel_stream(&mut self, token: u32);
    /// The gRPC message just received (a unary answer or a stream message).
    fn grpc_message(&self, size: usize) -> Option<Vec<u8>>;
    fn count(&mut self, counter: Counter, by: u64);
    fn log_warn(&self, message: &str);
    fn log_error(&self, message: &str);
}

/// Looks up a header by lower-case name (HTTP/2 and Envoy keep names lower-case).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// How many times a header occurs.
pub fn header_count(headers: &[(String, String)], name: &str) -> usize {
    headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).count()
}
