//! Keybrake's proxy-wasm HTTP filter, running inside a stock Envoy.
//!
//! On vendor routes (`/stripe/...`) it reads the vault key, parses and prices
//! the request, asks the control service over gRPC whether the call may go,
//! and on "allow" swaps the vault key for the real vendor key. Everything
//! host-specific is behind [`host::Host`] and [`host::RootHost`]; the
//! decisions are plain code in [`flow`], [`root`] and `keybrake-core`, tested
//! natively. `glue.rs` (wasm32 only) connects them to proxy-wasm.
//!
//! Unsafe code is forbidden natively; the wasm32 build denies it except in
//! `glue.rs`'s two spots: WASI's `random_get` import and proxy-wasm's `main!`
//! (which exports `_initialize` with `#[no_mangle]`).
#![cfg_attr(not(target_arch = "wasm32"), forbid(unsafe_code))]

pub mod backoff;
pub mod call_ids;
pub mod config;
pub mod credentials;
pub mod flow;
pub mod host;
pub mod key_cache;
pub mod outbox;
pub mod refusal;
pub mod request;
pub mod root;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod glue;

#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod mock;
