//! The contract's types and the gRPC server, generated from `proto/keybrake.proto`.

/// tonic's and prost's output, linted by their authors, not here.
#[allow(clippy::all, missing_docs)]
mod generated {
    tonic::include_proto!("keybrake.v1");
}

pub use generated::*;

/// Redacted: the upstream credential never reaches a log through `{:?}`.
impl std::fmt::Debug for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Allow")
            .field("upstream_authorization", &"<redacted>")
            .field("forwarded_idempotency_key", &self.forwarded_idempotency_key)
            .field("call_id", &self.call_id)
            .field("settle", &self.settle)
            .finish()
    }
}

impl Deny {
    /// The typed code (`None` for a number this build does not know).
    pub fn denial_code(&self) -> Option<keybrake_core::denial::DenialCode> {
        keybrake_core::denial::DenialCode::from_wire(self.code)
    }
}
