//! Keybrake's control service: the vault that holds the real vendor keys,
//! the ledger of spend against each vault key's cap, the idempotency records
//! that make retries safe, and the hash-chained audit log. It serves gRPC to
//! the filter in Envoy and the admin HTTP API.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod audit;
pub mod auth_limit;
pub mod calls;
pub mod channel;
pub mod cli;
pub mod clock;
pub mod denial;
pub mod drain;
pub mod grpc;
pub mod ids;
pub mod issuing;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod peer;
pub mod reconcile;
pub mod replica_cache;
pub mod revocation;
pub mod secrets;
pub mod serve;
pub mod store;
pub mod usd;
pub mod wire;
