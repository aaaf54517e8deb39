//! The gRPC face of the control service, called by the filter in each Envoy
//! worker: a thin translation onto [`App`].

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::app::App;
use crate::wire::gateway_server::Gateway;
use crate::wire::{
    AuthorizeRequest, AuthorizeResponse, CallRecordBatch, RecordCallsResponse, Revocation, SettleRequest,
    SettleResponse, WatchRequest,
};

pub struct GatewayService {
    pub app: Arc<App>,
}

fn unavailable(e: crate::store::StoreError) -> Status {
    tracing::error!(error = %e, "gateway: storage failed");
    Status::unavailable("storage unavailable")
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    async fn authorize(&self, request: Request<AuthorizeRequest>) -> Result<Response<AuthorizeResponse>, Status> {
        Ok(Response::new(self.app.authorize(request.into_inner()).await))
    }

    async fn settle(&self, request: Request<SettleRequest>) -> Result<Response<SettleResponse>, Status> {
        self.app.settle(request.into_inner()).await.map_err(unavailable)?;
        Ok(Response::new(SettleResponse {}))
    }

    async fn record_calls(&self, request: Request<CallRecordBatch>) -> Result<Response<RecordCallsResponse>, Status> {
        self.app.record_calls(request.into_inner()).await.map_err(unavailable)?;
        Ok(Response::new(RecordCallsResponse {}))
    }

    type WatchRevocationsStream = Pin<Box<dyn Stream<Item = Result<Revocation, Status>> + Send>>;

    async fn watch_revocations(
        &self,
        _request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        Err(Status::unimplemented("revocation streams are not served by this version"))
    }
}
