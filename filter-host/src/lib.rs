//! An in-process proxy-wasm host for tests: it loads the filter as built for
//! Envoy (`target/wasm/keybrake_filter.wasm`, made by `scripts/build-filter.sh`)
//! into the `wasmi` interpreter, implements the host side of the proxy-wasm
//! ABI 0.2.1 the filter imports (and WASI's `random_get`), and drives it with
//! Envoy's callbacks: a root context configured with a plugin configuration,
//! ticks, HTTP streams, gRPC answers and stream messages. What the filter did
//! is recorded in [`HostState`] for the tests to check.
//!
//! Semantics follow Envoy 1.40 where the filter relies on them: header names
//! are lower-case, `proxy_set_buffer_bytes` replaces the whole buffered body
//! when given its full size (and prepends with size 0, appends past the end),
//! a unary gRPC answer arrives as `proxy_on_grpc_receive` and a failure as
//! `proxy_on_grpc_close` with its status, and every callback runs with its
//! context as the effective one.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use wasmi::{Caller, Engine, Extern, ExternType, Instance, Linker, Memory, Module, Store, TypedFunc, Val};

/// proxy-wasm's status codes (the ones this host returns).
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const INTERNAL_FAILURE: i32 = 10;

/// Buffer and map types of the ABI.
const HTTP_REQUEST_BODY: i32 = 0;
const HTTP_RESPONSE_BODY: i32 = 1;
const GRPC_RECEIVE_BUFFER: i32 = 5;
const VM_CONFIGURATION: i32 = 6;
const PLUGIN_CONFIGURATION: i32 = 7;
const HTTP_REQUEST_HEADERS: i32 = 0;
const HTTP_RESPONSE_HEADERS: i32 = 2;

/// The root context's id (Envoy gives each plugin's root context its own).
pub const ROOT_ID: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error(
        "{}: no such file. Build the filter first (scripts/build-filter.sh; scripts/test.sh does), \
         or point KEYBRAKE_FILTER_WASM at a build",
        .0.display()
    )]
    Missing(PathBuf),
    #[error("reading {path}: {error}", path = .0.display(), error = .1)]
    Read(PathBuf, std::io::Error),
    #[error("wasm: {0}")]
    Wasm(#[from] wasmi::Error),
    #[error("the module does not follow the proxy-wasm ABI: {0}")]
    Abi(String),
    #[error("the filter trapped in {callback}: {error}; its last log lines: {logs:?}")]
    Trap { callback: &'static str, error: wasmi::Error, logs: Vec<String> },
}

/// What a request or response callback told the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
}

/// A local reply the filter sent instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl LocalReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// One HTTP stream as the host sees it.
#[derive(Debug, Clone, Default)]
pub struct HttpStream {
    pub request_headers: Vec<(String, String)>,
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    /// Properties by dotted path (`response.code_details`).
    pub properties: BTreeMap<String, Vec<u8>>,
    pub local_reply: Option<LocalReply>,
    /// `proxy_continue_stream` calls for the request and the response.
    pub request_resumed: u32,
    pub response_resumed: u32,
    /// `proxy_close_stream` calls (the stream was reset).
    pub resets: u32,
}

impl HttpStream {
    pub fn request_header(&self, name: &str) -> Option<&str> {
        header(&self.request_headers, name)
    }

    pub fn response_header(&self, name: &str) -> Option<&str> {
        header(&self.response_headers, name)
    }
}

/// A unary gRPC call the filter started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcCall {
    pub token: u32,
    /// The context that started it (a stream's, or the root's).
    pub context: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    pub message: Vec<u8>,
    pub timeout_ms: u32,
}

/// A gRPC stream the filter opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStream {
    pub token: u32,
    pub context: u32,
    pub cluster: String,
    pub service: String,
    pub method: String,
    /// Messages the filter sent on it, in order.
    pub sent: Vec<Vec<u8>>,
    pub cancelled: bool,
}

/// A metric the filter defined, and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metric {
    pub name: String,
    pub kind: u32,
    pub value: i64,
}

/// Everything the host knows and everything the filter asked of it.
#[derive(Debug, Default)]
pub struct HostState {
    /// The host's clock, in nanoseconds since the Unix epoch.
    pub now_nanos: u64,
    /// Seed of the bytes `random_get` gives; `None`: it fails (errno 52, ENOSYS).
    pub random_seed: Option<u64>,
    pub vm_configuration: Vec<u8>,
    pub plugin_configuration: Vec<u8>,
    pub tick_period_ms: Option<u32>,
    /// Log lines as (level, message); level 5 (critical) is what a panic logs.
    pub logs: Vec<(u32, String)>,
    pub streams: BTreeMap<u32, HttpStream>,
    pub grpc_calls: Vec<GrpcCall>,
    pub grpc_streams: Vec<GrpcStream>,
    /// Refuse `proxy_grpc_call` / `proxy_grpc_stream` (no such cluster, Envoy overloaded).
    pub fail_grpc_calls: bool,
    pub fail_grpc_streams: bool,
    pub metrics: Vec<Metric>,
    /// The message `proxy_get_buffer_bytes(GrpcReceiveBuffer)` returns during a gRPC callback.
    grpc_receive: Vec<u8>,
    /// The context hostcalls act on (the running callback's, or as set by the filter).
    effective: u32,
    next_token: u32,
}

impl HostState {
    /// A host whose clock reads `now_nanos` and whose `random_get` gives bytes
    /// derived from `random_seed` (or fails, with `None`).
    pub fn new(now_nanos: u64, random_seed: Option<u64>) -> HostState {
        HostState { now_nanos, random_seed, ..HostState::default() }
    }

    /// The stream the running callback acts on, if it is an HTTP stream.
    fn current(&mut self) -> Option<&mut HttpStream> {
        self.streams.get_mut(&self.effective)
    }

    pub fn stream(&self, context: u32) -> Option<&HttpStream> {
        self.streams.get(&context)
    }

    /// A metric's value by name (as the filter defined it, `keybrake.requests_allowed`).
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics.iter().find(|m| m.name == name).map(|m| m.value)
    }

    /// The unary calls to `method` (`Authorize`, `Settle`, `RecordCalls`), in order.
    pub fn calls_to(&self, method: &str) -> Vec<&GrpcCall> {
        self.grpc_calls.iter().filter(|c| c.method == method).collect()
    }

    pub fn logged(&self, level: u32) -> Vec<&str> {
        self.logs.iter().filter(|(l, _)| *l == level).map(|(_, m)| m.as_str()).collect()
    }

    fn token(&mut self) -> u32 {
        self.next_token += 1;
        self.next_token
    }

    fn random_bytes(&mut self, n: usize) -> Option<Vec<u8>> {
        let seed = self.random_seed.as_mut()?;
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            // splitmix64: deterministic, distinct per seed.
            *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(n);
        Some(out)
    }
}

/// Looks up a header by name, ignoring case.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The filter, loaded and instantiated, with its host.
pub struct Filter {
    store: Store<HostState>,
    instance: Instance,
    next_context: u32,
}

/// Where `scripts/build-filter.sh` puts the filter (or `KEYBRAKE_FILTER_WASM`).
pub fn built_filter_path() -> PathBuf {
    match std::env::var_os("KEYBRAKE_FILTER_WASM") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wasm/keybrake_filter.wasm"),
    }
}

impl Filter {
    /// Loads the filter `scripts/build-filter.sh` built; an error naming the
    /// file (and how to build it) when there is none.
    pub fn load_built(state: HostState) -> Result<Filter, HostError> {
        Filter::load(&built_filter_path(), state)
    }

    /// Loads a proxy-wasm module and runs its start-up (`_initialize`).
    pub fn load(path: &Path, state: HostState) -> Result<Filter, HostError> {
        if !path.is_file() {
            return Err(HostError::Missing(path.to_path_buf()));
        }
        let wasm = std::fs::read(path).map_err(|e| HostError::Read(path.to_path_buf(), e))?;
        let engine = Engine::default();
        let module = Module::new(&engine, &wasm[..])?;
        if module.exports().all(|e| e.name() != "proxy_abi_version_0_2_1") {
            return Err(HostError::Abi("no proxy_abi_version_0_2_1 export".into()));
        }
        let mut linker = Linker::<HostState>::new(&engine);
        define_hostcalls(&mut linker)?;
        // The SDK's unused trait defaults import more (shared data and queues, HTTP
        // calls, properties set, foreign functions): the filter never calls them, and
        // here a call to one traps, naming it.
        for import in module.imports() {
            if let ExternType::Func(ty) = import.ty() {
                let name = format!("{}.{}", import.module(), import.name());
                let unsupported = move |_: Caller<'_, HostState>, _: &[Val], _: &mut [Val]| {
                    Err(wasmi::Error::new(format!("the filter called {name}, which this host does not implement")))
                };
                // Already defined above: the real one stays.
                let _ = linker.func_new(import.module(), import.name(), ty.clone(), unsupported);
            }
        }
        let mut store = Store::new(&engine, state);
        let instance = linker.instantiate_and_start(&mut store, &module)?;
        let mut filter = Filter { store, instance, next_context: ROOT_ID + 1 };
        if filter.instance.get_func(&filter.store, "_initialize").is_some() {
            filter.call::<(), ()>("_initialize", ROOT_ID, ())?;
        }
        Ok(filter)
    }

    pub fn host(&self) -> &HostState {
        self.store.data()
    }

    pub fn host_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Calls an export with `context` as the effective context; a trap is an error.
    fn call<P: wasmi::WasmParams, R: wasmi::WasmResults>(
        &mut self,
        name: &'static str,
        context: u32,
        params: P,
    ) -> Result<R, HostError> {
        let func: TypedFunc<P, R> = self
            .instance
            .get_typed_func(&self.store, name)
            .map_err(|e| HostError::Abi(format!("export {name}: {e}")))?;
        self.store.data_mut().effective = context;
        func.call(&mut self.store, params).map_err(|error| HostError::Trap {
            callback: name,
            error,
            logs: self.store.data().logs.iter().rev().take(5).map(|(_, m)| m.clone()).collect(),
        })
    }

    /// Creates the root context and configures it, as Envoy does when it
    /// loads the plugin; returns what `on_configure` answered.
    pub fn configure(&mut self, plugin_configuration: &str) -> Result<bool, HostError> {
        self.host_mut().plugin_configuration = plugin_configuration.as_bytes().to_vec();
        self.call::<(i32, i32), ()>("proxy_on_context_create", ROOT_ID, (ROOT_ID as i32, 0))?;
        let vm_size = self.host().vm_configuration.len() as i32;
        let started: i32 = self.call("proxy_on_vm_start", ROOT_ID, (ROOT_ID as i32, vm_size))?;
        if started == 0 {
            return Ok(false);
        }
        let size = plugin_configuration.len() as i32;
        let configured: i32 = self.call("proxy_on_configure", ROOT_ID, (ROOT_ID as i32, size))?;
        Ok(configured != 0)
    }

    pub fn tick(&mut self) -> Result<(), HostError> {
        self.call("proxy_on_tick", ROOT_ID, ROOT_ID as i32)
    }

    /// A new HTTP stream (its context id).
    pub fn new_stream(&mut self) -> Result<u32, HostError> {
        let id = self.next_context;
        self.next_context += 1;
        self.host_mut().streams.insert(id, HttpStream::default());
        self.call::<(i32, i32), ()>("proxy_on_context_create", id, (id as i32, ROOT_ID as i32))?;
        Ok(id)
    }

    fn stream_mut(&mut self, context: u32) -> Result<&mut HttpStream, HostError> {
        self.host_mut().streams.get_mut(&context).ok_or_else(|| HostError::Abi(format!("no stream {context}")))
    }

    /// The request's headers arrive (names are lower-cased, as Envoy does).
    pub fn request_headers(
        &mut self,
        context: u32,
        headers: &[(&str, &str)],
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        let headers = headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned())).collect::<Vec<_>>();
        let n = headers.len() as i32;
        self.stream_mut(context)?.request_headers = headers;
        self.action("proxy_on_request_headers", context, n, end_of_stream)
    }

    /// A chunk of the request body arrives; the filter sees all that is buffered so far.
    pub fn request_body(&mut self, context: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        let stream = self.stream_mut(context)?;
        stream.request_body.extend_from_slice(chunk);
        let n = stream.request_body.len() as i32;
        self.action("proxy_on_request_body", context, n, end_of_stream)
    }

    /// The upstream's response headers arrive; `code_details` is Envoy's `response.code_details`.
    pub fn response_headers(
        &mut self,
        context: u32,
        headers: &[(&str, &str)],
        code_details: &str,
        end_of_stream: bool,
    ) -> Result<Action, HostError> {
        let headers = headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned())).collect::<Vec<_>>();
        let n = headers.len() as i32;
        let stream = self.stream_mut(context)?;
        stream.response_headers = headers;
        stream.properties.insert("response.code_details".into(), code_details.as_bytes().to_vec());
        self.action("proxy_on_response_headers", context, n, end_of_stream)
    }

    pub fn response_body(&mut self, context: u32, chunk: &[u8], end_of_stream: bool) -> Result<Action, HostError> {
        let stream = self.stream_mut(context)?;
        stream.response_body.extend_from_slice(chunk);
        let n = stream.response_body.len() as i32;
        self.action("proxy_on_response_body", context, n, end_of_stream)
    }

    fn action(&mut self, callback: &'static str, context: u32, n: i32, eos: bool) -> Result<Action, HostError> {
        let action: i32 = self.call(callback, context, (context as i32, n, i32::from(eos)))?;
        match action {
            0 => Ok(Action::Continue),
            1 => Ok(Action::Pause),
            other => Err(HostError::Abi(format!("{callback} returned action {other}"))),
        }
    }

    /// The stream is over: Envoy logs it, then tells the context it is done and deletes it.
    pub fn end_stream(&mut self, context: u32) -> Result<(), HostError> {
        self.call::<i32, ()>("proxy_on_log", context, context as i32)?;
        let _done: i32 = self.call("proxy_on_done", context, context as i32)?;
        self.call::<i32, ()>("proxy_on_delete", context, context as i32)
    }

    /// Envoy stops the VM: the root context's `on_done`.
    pub fn shut_down(&mut self) -> Result<bool, HostError> {
        let done: i32 = self.call("proxy_on_done", ROOT_ID, ROOT_ID as i32)?;
        Ok(done != 0)
    }

    fn caller_of(&self, token: u32) -> Option<u32> {
        let host = self.host();
        host.grpc_calls
            .iter()
            .find(|c| c.token == token)
            .map(|c| c.context)
            .or_else(|| host.grpc_streams.iter().find(|s| s.token == token).map(|s| s.context))
    }

    /// A gRPC message for `token`: the answer to a unary call, or a message on a stream.
    pub fn grpc_receive(&mut self, token: u32, message: &[u8]) -> Result<(), HostError> {
        let context = self.caller_of(token).unwrap_or(ROOT_ID);
        self.host_mut().grpc_receive = message.to_vec();
        let result = self.call::<(i32, i32, i32), ()>(
            "proxy_on_grpc_receive",
            context,
            (context as i32, token as i32, message.len() as i32),
        );
        self.host_mut().grpc_receive.clear();
        result
    }

    /// `token`'s call failed, or its stream closed, with gRPC `status`.
    pub fn grpc_close(&mut self, token: u32, status: u32) -> Result<(), HostError> {
        let context = self.caller_of(token).unwrap_or(ROOT_ID);
        self.call("proxy_on_grpc_close", context, (context as i32, token as i32, status as i32))
    }
}

fn memory(caller: &Caller<'_, HostState>) -> Result<Memory, wasmi::Error> {
    caller.get_export("memory").and_then(Extern::into_memory).ok_or_else(|| wasmi::Error::new("no memory export"))
}

fn read(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>, wasmi::Error> {
    let mut buf = vec![0; len as u32 as usize];
    memory(caller)?.read(caller, ptr as u32 as usize, &mut buf).map_err(|e| wasmi::Error::new(e.to_string()))?;
    Ok(buf)
}

fn read_string(caller: &Caller<'_, HostState>, ptr: i32, len: i32) -> Result<String, wasmi::Error> {
    String::from_utf8(read(caller, ptr, len)?).map_err(|e| wasmi::Error::new(e.to_string()))
}

fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> Result<(), wasmi::Error> {
    let memory = memory(caller)?;
    memory.write(&mut *caller, ptr as u32 as usize, bytes).map_err(|e| wasmi::Error::new(e.to_string()))
}

/// Copies `bytes` into memory the module allocates (its `malloc` export) and
/// writes the address and size where the module asked for them.
fn give(caller: &mut Caller<'_, HostState>, bytes: &[u8], ptr_out: i32, size_out: i32) -> Result<(), wasmi::Error> {
    let (address, size) = if bytes.is_empty() {
        (0, 0)
    } else {
        let malloc = ["malloc", "proxy_on_memory_allocate"]
            .iter()
            .find_map(|name| caller.get_export(name).and_then(Extern::into_func))
            .ok_or_else(|| wasmi::Error::new("the module exports no allocator"))?;
        let address: i32 = malloc.typed::<i32, i32>(&*caller)?.call(&mut *caller, bytes.len() as i32)?;
        write(caller, address, bytes)?;
        (address, bytes.len() as i32)
    };
    write(caller, ptr_out, &address.to_le_bytes())?;
    write(caller, size_out, &size.to_le_bytes())
}

/// The ABI's header map encoding: count, then each name's and value's size, then each name and value NUL-ended.
pub fn serialize_map(map: &[(String, impl AsRef<[u8]>)]) -> Vec<u8> {
    let mut out = (map.len() as u32).to_le_bytes().to_vec();
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

/// Reads the ABI's header map encoding; `None` when it is malformed.
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    let word = |at: usize| -> Option<usize> {
        let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(b) as usize)
    };
    let n = word(0)?;
    let mut data = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (klen, vlen) = (word(4 + i * 8)?, word(8 + i * 8)?);
        let k = String::from_utf8(bytes.get(data..data + klen)?.to_vec()).ok()?;
        data += klen + 1;
        let v = bytes.get(data..data + vlen)?.to_vec();
        data += vlen + 1;
        out.push((k, v));
    }
    Some(out)
}

fn headers_mut(state: &mut HostState, map_type: i32) -> Option<&mut Vec<(String, String)>> {
    let stream = state.current()?;
    match map_type {
        HTTP_REQUEST_HEADERS => Some(&mut stream.request_headers),
        HTTP_RESPONSE_HEADERS => Some(&mut stream.response_headers),
        _ => None,
    }
}

fn body_mut(state: &mut HostState, buffer_type: i32) -> Option<&mut Vec<u8>> {
    match buffer_type {
        HTTP_REQUEST_BODY => state.current().map(|s| &mut s.request_body),
        HTTP_RESPONSE_BODY => state.current().map(|s| &mut s.response_body),
        GRPC_RECEIVE_BUFFER => Some(&mut state.grpc_receive),
        VM_CONFIGURATION => Some(&mut state.vm_configuration),
        PLUGIN_CONFIGURATION => Some(&mut state.plugin_configuration),
        _ => None,
    }
}

type Host<'a> = Caller<'a, HostState>;
type Answer = Result<i32, wasmi::Error>;

/// Defines the host side of every call the filter may import.
fn define_hostcalls(linker: &mut Linker<HostState>) -> Result<(), wasmi::Error> {
    let abi = |e: wasmi::errors::LinkerError| wasmi::Error::new(e.to_string());
    linker
        .func_wrap("env", "proxy_log", |mut c: Host, level: i32, ptr: i32, len: i32| -> Answer {
            let message = read_string(&c, ptr, len)?;
            c.data_mut().logs.push((level as u32, message));
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_get_log_level", |mut c: Host, out: i32| -> Answer {
            write(&mut c, out, &2u32.to_le_bytes())?;
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_get_current_time_nanoseconds", |mut c: Host, out: i32| -> Answer {
            let now = c.data().now_nanos;
            write(&mut c, out, &now.to_le_bytes())?;
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_set_tick_period_milliseconds", |mut c: Host, period: i32| -> Answer {
            c.data_mut().tick_period_ms = Some(period as u32);
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_get_buffer_bytes",
            |mut c: Host, kind: i32, start: i32, max: i32, ptr_out: i32, size_out: i32| -> Answer {
                let Some(buffer) = body_mut(c.data_mut(), kind) else { return Ok(NOT_FOUND) };
                let start = (start as u32 as usize).min(buffer.len());
                let end = start.saturating_add(max as u32 as usize).min(buffer.len());
                let bytes = buffer.get(start..end).unwrap_or_default().to_vec();
                give(&mut c, &bytes, ptr_out, size_out)?;
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_set_buffer_bytes",
            |mut c: Host, kind: i32, start: i32, size: i32, ptr: i32, len: i32| -> Answer {
                let data = read(&c, ptr, len)?;
                let Some(buffer) = body_mut(c.data_mut(), kind) else { return Ok(NOT_FOUND) };
                let (start, size) = (start as u32 as usize, size as u32 as usize);
                // Envoy's rules: prepend, replace all, or append; nothing in between.
                if start == 0 && size == 0 {
                    buffer.splice(0..0, data);
                } else if start == 0 && size >= buffer.len() {
                    *buffer = data;
                } else if start >= buffer.len() {
                    buffer.extend_from_slice(&data);
                } else {
                    return Ok(BAD_ARGUMENT);
                }
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_get_header_map_pairs",
            |mut c: Host, kind: i32, ptr_out: i32, size_out: i32| -> Answer {
                let Some(headers) = headers_mut(c.data_mut(), kind) else { return Ok(NOT_FOUND) };
                let bytes = serialize_map(headers);
                give(&mut c, &bytes, ptr_out, size_out)?;
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_set_header_map_pairs", |mut c: Host, kind: i32, ptr: i32, len: i32| -> Answer {
            let Some(pairs) = deserialize_map(&read(&c, ptr, len)?) else { return Ok(BAD_ARGUMENT) };
            let Some(headers) = headers_mut(c.data_mut(), kind) else { return Ok(NOT_FOUND) };
            *headers = pairs
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), String::from_utf8_lossy(&v).into_owned()))
                .collect();
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_get_header_map_value",
            |mut c: Host, kind: i32, kptr: i32, klen: i32, ptr_out: i32, size_out: i32| -> Answer {
                let name = read_string(&c, kptr, klen)?;
                let Some(headers) = headers_mut(c.data_mut(), kind) else { return Ok(NOT_FOUND) };
                let Some(value) = header(headers, &name).map(str::to_owned) else { return Ok(NOT_FOUND) };
                give(&mut c, value.as_bytes(), ptr_out, size_out)?;
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_replace_header_map_value",
            |mut c: Host, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> Answer {
                let (name, value) = (read_string(&c, kptr, klen)?.to_ascii_lowercase(), read_string(&c, vptr, vlen)?);
                let Some(headers) = headers_mut(c.data_mut(), kind) else { return Ok(NOT_FOUND) };
                // Envoy replaces the first value and drops the others.
                let mut first = true;
                headers.retain(|(k, _)| *k != name || std::mem::replace(&mut first, false));
                match headers.iter_mut().find(|(k, _)| *k == name) {
                    Some((_, v)) => *v = value,
                    None => headers.push((name, value)),
                }
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_add_header_map_value",
            |mut c: Host, kind: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> Answer {
                let (name, value) = (read_string(&c, kptr, klen)?.to_ascii_lowercase(), read_string(&c, vptr, vlen)?);
                let Some(headers) = headers_mut(c.data_mut(), kind) else { return Ok(NOT_FOUND) };
                headers.push((name, value));
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_remove_header_map_value", |mut c: Host, kind: i32, kptr: i32, klen: i32| -> Answer {
            let name = read_string(&c, kptr, klen)?.to_ascii_lowercase();
            let Some(headers) = headers_mut(c.data_mut(), kind) else { return Ok(NOT_FOUND) };
            headers.retain(|(k, _)| *k != name);
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_get_property",
            |mut c: Host, ptr: i32, len: i32, ptr_out: i32, size_out: i32| -> Answer {
                let raw = read(&c, ptr, len)?;
                let path = raw.split(|b| *b == 0).map(String::from_utf8_lossy).collect::<Vec<_>>().join(".");
                let Some(value) = c.data_mut().current().and_then(|s| s.properties.get(&path).cloned()) else {
                    return Ok(NOT_FOUND);
                };
                give(&mut c, &value, ptr_out, size_out)?;
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_send_local_response",
            |mut c: Host,
             status: i32,
             _details_ptr: i32,
             _details_len: i32,
             body_ptr: i32,
             body_len: i32,
             headers_ptr: i32,
             headers_len: i32,
             _grpc_status: i32|
             -> Answer {
                let body = read(&c, body_ptr, body_len)?;
                let Some(headers) = deserialize_map(&read(&c, headers_ptr, headers_len)?) else {
                    return Ok(BAD_ARGUMENT);
                };
                let headers = headers.into_iter().map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned())).collect();
                let Some(stream) = c.data_mut().current() else { return Ok(NOT_FOUND) };
                stream.local_reply = Some(LocalReply { status: status as u32, headers, body });
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_continue_stream", |mut c: Host, kind: i32| -> Answer {
            let Some(stream) = c.data_mut().current() else { return Ok(NOT_FOUND) };
            match kind {
                0 => stream.request_resumed += 1,
                1 => stream.response_resumed += 1,
                _ => return Ok(BAD_ARGUMENT),
            }
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_close_stream", |mut c: Host, _kind: i32| -> Answer {
            let Some(stream) = c.data_mut().current() else { return Ok(NOT_FOUND) };
            stream.resets += 1;
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_grpc_call",
            |mut c: Host,
             cluster_ptr: i32,
             cluster_len: i32,
             service_ptr: i32,
             service_len: i32,
             method_ptr: i32,
             method_len: i32,
             _metadata_ptr: i32,
             _metadata_len: i32,
             message_ptr: i32,
             message_len: i32,
             timeout_ms: i32,
             token_out: i32|
             -> Answer {
                let cluster = read_string(&c, cluster_ptr, cluster_len)?;
                let service = read_string(&c, service_ptr, service_len)?;
                let method = read_string(&c, method_ptr, method_len)?;
                let message = read(&c, message_ptr, message_len)?;
                let state = c.data_mut();
                if state.fail_grpc_calls {
                    return Ok(INTERNAL_FAILURE);
                }
                let token = state.token();
                let context = state.effective;
                let timeout_ms = timeout_ms as u32;
                state.grpc_calls.push(GrpcCall { token, context, cluster, service, method, message, timeout_ms });
                write(&mut c, token_out, &token.to_le_bytes())?;
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap(
            "env",
            "proxy_grpc_stream",
            |mut c: Host,
             cluster_ptr: i32,
             cluster_len: i32,
             service_ptr: i32,
             service_len: i32,
             method_ptr: i32,
             method_len: i32,
             _metadata_ptr: i32,
             _metadata_len: i32,
             token_out: i32|
             -> Answer {
                let cluster = read_string(&c, cluster_ptr, cluster_len)?;
                let service = read_string(&c, service_ptr, service_len)?;
                let method = read_string(&c, method_ptr, method_len)?;
                let state = c.data_mut();
                if state.fail_grpc_streams {
                    return Ok(INTERNAL_FAILURE);
                }
                let token = state.token();
                let context = state.effective;
                let stream = GrpcStream { token, context, cluster, service, method, sent: vec![], cancelled: false };
                state.grpc_streams.push(stream);
                write(&mut c, token_out, &token.to_le_bytes())?;
                Ok(OK)
            },
        )
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_grpc_send", |mut c: Host, token: i32, ptr: i32, len: i32, _end: i32| -> Answer {
            let message = read(&c, ptr, len)?;
            let Some(stream) = c.data_mut().grpc_streams.iter_mut().find(|s| s.token == token as u32 && !s.cancelled)
            else {
                return Ok(NOT_FOUND);
            };
            stream.sent.push(message);
            Ok(OK)
        })
        .map_err(abi)?;
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        linker
            .func_wrap("env", name, |mut c: Host, token: i32| -> Answer {
                let Some(stream) = c.data_mut().grpc_streams.iter_mut().find(|s| s.token == token as u32) else {
                    return Ok(NOT_FOUND);
                };
                stream.cancelled = true;
                Ok(OK)
            })
            .map_err(abi)?;
    }
    linker
        .func_wrap("env", "proxy_set_effective_context", |mut c: Host, context: i32| -> Answer {
            c.data_mut().effective = context as u32;
            Ok(OK)
        })
        .map_err(abi)?;
    linker.func_wrap("env", "proxy_done", |_: Host| -> Answer { Ok(OK) }).map_err(abi)?;
    linker
        .func_wrap("env", "proxy_define_metric", |mut c: Host, kind: i32, ptr: i32, len: i32, id_out: i32| -> Answer {
            let name = read_string(&c, ptr, len)?;
            let metrics = &mut c.data_mut().metrics;
            let index = match metrics.iter().position(|m| m.name == name) {
                Some(i) => i,
                None => {
                    metrics.push(Metric { name, kind: kind as u32, value: 0 });
                    metrics.len() - 1
                }
            };
            write(&mut c, id_out, &(index as u32 + 1).to_le_bytes())?;
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_increment_metric", |mut c: Host, id: i32, by: i64| -> Answer {
            let Some(metric) = (id as u32 as usize).checked_sub(1).and_then(|i| c.data_mut().metrics.get_mut(i)) else {
                return Ok(NOT_FOUND);
            };
            metric.value += by;
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_record_metric", |mut c: Host, id: i32, value: i64| -> Answer {
            let Some(metric) = (id as u32 as usize).checked_sub(1).and_then(|i| c.data_mut().metrics.get_mut(i)) else {
                return Ok(NOT_FOUND);
            };
            metric.value = value;
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap("env", "proxy_get_metric", |mut c: Host, id: i32, out: i32| -> Answer {
            let Some(value) =
                (id as u32 as usize).checked_sub(1).and_then(|i| c.data().metrics.get(i)).map(|m| m.value)
            else {
                return Ok(NOT_FOUND);
            };
            write(&mut c, out, &value.to_le_bytes())?;
            Ok(OK)
        })
        .map_err(abi)?;
    linker
        .func_wrap("wasi_snapshot_preview1", "random_get", |mut c: Host, ptr: i32, len: i32| -> Answer {
            const ENOSYS: i32 = 52;
            let Some(bytes) = c.data_mut().random_bytes(len as u32 as usize) else { return Ok(ENOSYS) };
            write(&mut c, ptr, &bytes)?;
            Ok(0)
        })
        .map_err(abi)?;
    Ok(())
}
