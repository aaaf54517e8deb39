//! Keybrake's domain logic that both the filter (compiled to wasm, inside
//! Envoy) and the control service need: pure functions, no I/O, no panics on
//! input. Unit- and property-tested natively with `cargo test -p keybrake-core`;
//! the example-based tests also run compiled to wasm32, as the filter ships
//! this code, under Node (`scripts/build-filter.sh --core-tests`).
#![forbid(unsafe_code)]

pub mod account;
pub mod currency;
pub mod denial;
pub mod fingerprint;
pub mod form;
pub mod money;
pub mod path;
pub mod permission;
pub mod pricing;
pub mod scope;
pub mod stripe_error;
pub mod vault_key;
pub mod vendor;
