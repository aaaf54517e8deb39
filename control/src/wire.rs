//! The contract's types and the gRPC server, generated from `proto/keybrake.proto`.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("keybrake.v1");
