//! Recording hosts for native tests: [`MockHost`] for the request flow,
//! [`MockRootHost`] for the root context.

use std::cell::RefCell;

use crate::host::{Counter, Host, RootHost, Rpc};

/// A local reply: status, headers, body.
pub type LocalReply = (u32, Vec<(String, String)>, Vec<u8>);

#[derive(Default)]
pub struct MockHost {
    pub request_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    pub code_details: Option<String>,
    pub local_reply: Option<LocalReply>,
    pub dispatched: Vec<(Rpc, Vec<u8>)>,
    pub grpc_body: Vec<u8>,
    pub resumed_request: u32,
    pub resumed_response: u32,
    pub now: i64,
    pub fail_dispatch: bool,
    pub fail_set_body: bool,
    pub counters: Vec<(Counter, Option<String>)>,
    pub next_token: u32,
    pub ids_made: u32,
    /// The worker cannot make call ids (never seeded, or its ids are busy).
    pub no_call_ids: bool,
    pub warnings: RefCell<Vec<String>>,
}

fn set(headers: &mut Vec<(String, String)>, name: &str, value: Option<&str>) {
    headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    if let Some(v) = value {
        headers.push((name.to_owned(), v.to_owned()));
    }
}

impl MockHost {
    pub fn request_header(&self, name: &str) -> Option<&str> {
        crate::host::header(&self.request_headers, name)
    }

    pub fn reply_json(&self) -> serde_json::Value {
        let (_, _, body) = self.local_reply.as_ref().expect("a local reply");
        serde_json::from_slice(body).expect("a JSON reply")
    }
}

impl Host for MockHost {
    fn request_headers(&self) -> Vec<(String, String)> {
        self.request_headers.clone()
    }
    fn set_request_header(&mut self, name: &str, value: Option<&str>) {
        set(&mut self.request_headers, name, value);
    }
    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.request_body.iter().take(size).copied().collect())
    }
    fn set_request_body(&mut self, size: usize, body: &[u8]) -> bool {
        if self.fail_set_body {
            return false;
        }
        let rest: Vec<u8> = self.request_body.iter().skip(size).copied().collect();
        self.request_body = [body, &rest].concat();
        true
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        self.response_headers.clone()
    }
    fn set_response_header(&mut self, name: &str, value: Option<&str>) {
        set(&mut self.response_headers, name, value);
    }
    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.response_body.iter().take(size).copied().collect())
    }
    fn response_code_details(&self) -> Option<String> {
        self.code_details.clone()
    }
    fn send_local_reply(&mut self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        let headers = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.local_reply = Some((status, headers, body.to_vec()));
    }
    fn dispatch(&mut self, rpc: Rpc, message: &[u8], _timeout_ms: u64) -> Option<u32> {
        if self.fail_dispatch {
            return None;
        }
        self.dispatched.push((rpc, message.to_vec()));
        self.next_token += 1;
        Some(self.next_token)
    }
    fn grpc_response_body(&self, _size: usize) -> Option<Vec<u8>> {
        Some(self.grpc_body.clone())
    }
    fn resume_request(&mut self) {
        self.resumed_request += 1;
    }
    fn resume_response(&mut self) {
        self.resumed_response += 1;
    }
    fn now_micros(&self) -> i64 {
        self.now
    }
    fn log_warn(&self, message: &str) {
        self.warnings.borrow_mut().push(message.to_owned());
    }
    fn new_call_id(&mut self) -> Option<String> {
        if self.no_call_ids {
            return None;
        }
        self.ids_made += 1;
        Some(format!("call_mock{}", self.ids_made))
    }
    fn count(&mut self, counter: Counter, reason: Option<&str>) {
        self.counters.push((counter, reason.map(str::to_owned)));
    }
}

/// A unary call the root context started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootCall {
    pub token: u32,
    pub cluster: String,
    pub rpc: Rpc,
    pub message: Vec<u8>,
    pub timeout_ms: u64,
}

#[derive(Default)]
pub struct MockRootHost {
    pub now_ms: u64,
    pub random: Option<[u8; 16]>,
    pub tick_period_ms: Option<u64>,
    pub calls: Vec<RootCall>,
    pub fail_dispatch: bool,
    /// Streams opened (token, cluster), and attempts to open one.
    pub streams: Vec<(u32, String)>,
    pub stream_attempts: u32,
    pub fail_open: bool,
    pub sent: Vec<(u32, Vec<u8>)>,
    pub cancelled: Vec<u32>,
    pub received: Vec<u8>,
    pub counters: Vec<(Counter, u64)>,
    pub warnings: RefCell<Vec<String>>,
    pub errors: RefCell<Vec<String>>,
    pub next_token: u32,
}

impl MockRootHost {
    /// How much was counted on `counter`, all calls added up.
    pub fn counted(&self, counter: Counter) -> u64 {
        self.counters.iter().filter(|(c, _)| *c == counter).map(|(_, n)| n).sum()
    }
}

impl RootHost for MockRootHost {
    fn now_nanos(&self) -> u64 {
        self.now_ms * 1_000_000
    }
    fn random_bytes(&mut self) -> Option<[u8; 16]> {
        self.random
    }
    fn set_tick_period(&mut self, period_ms: u64) {
        self.tick_period_ms = Some(period_ms);
    }
    fn dispatch(&mut self, cluster: &str, rpc: Rpc, message: &[u8], timeout_ms: u64) -> Option<u32> {
        if self.fail_dispatch {
            return None;
        }
        self.next_token += 1;
        let call = RootCall {
            token: self.next_token,
            cluster: cluster.to_owned(),
            rpc,
            message: message.to_vec(),
            timeout_ms,
        };
        self.calls.push(call);
        Some(self.next_token)
    }
    fn open_revocation_stream(&mut self, cluster: &str) -> Option<u32> {
        self.stream_attempts += 1;
        if self.fail_open {
            return None;
        }
        self.next_token += 1;
        self.streams.push((self.next_token, cluster.to_owned()));
        Some(self.next_token)
    }
    fn send_stream_message(&mut self, token: u32, message: &[u8]) {
        self.sent.push((token, message.to_vec()));
    }
    fn cancel_stream(&mut self, token: u32) {
        self.cancelled.push(token);
    }
    fn grpc_message(&self, size: usize) -> Option<Vec<u8>> {
        Some(self.received.iter().take(size).copied().collect())
    }
    fn count(&mut self, counter: Counter, by: u64) {
        self.counters.push((counter, by));
    }
    fn log_warn(&self, message: &str) {
        self.warnings.borrow_mut().push(message.to_owned());
    }
    fn log_error(&self, message: &str) {
        self.errors.borrow_mut().push(message.to_owned());
    }
}
