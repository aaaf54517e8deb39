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

/// How often a watching worker hears from its replica when there is nothing to revoke.
const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

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

    /// One Envoy worker's revocation feed: a first message to start from, then
    /// every revocation; the worker acks each on its side of the stream.
    async fn watch_revocations(
        &self,
        request: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let mut inbound = request.into_inner();
        let app = self.app.clone();
        let mut sub = app.revocations.subscribe();
        let (out, rx) = tokio::sync::mpsc::channel::<Result<Revocation, Status>>(64);
        let hello = Revocation {
            generation: u64::try_from(sub.generation).unwrap_or(0),
            key_hashes: Vec::new(),
            heartbeat: false,
            echo_ms: 0,
        };
        out.send(Ok(hello)).await.map_err(|_| Status::cancelled("watcher gone"))?;
        tokio::spawn(async move {
            // Every message echoes the latest clock the worker sent: it trusts
            // its cache only within a second of a time of its own we echoed.
            let (mut echo, mut acked) = (0u64, sub.generation);
            let mut beat = tokio::time::interval(HEARTBEAT_EVERY);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = beat.tick() => {
                        let heartbeat = Revocation { heartbeat: true, echo_ms: echo, ..Default::default() };
                        if out.send(Ok(heartbeat)).await.is_err() { break }
                    },
                    update = sub.updates.recv() => match update {
                        Ok(r) => if out.send(Ok(Revocation { echo_ms: echo, ..r })).await.is_err() { break },
                        // Missed revocations: the worker must start over with an empty cache.
                        Err(_) => break,
                    },
                    ack = inbound.message() => match ack {
                        Ok(Some(m)) => {
                            echo = echo.max(m.sent_at_ms);
                            // Only news wakes the relay (the worker also writes to send its clock).
                            let generation = i64::try_from(m.acked_generation).unwrap_or(0);
                            if generation > acked {
                                acked = generation;
                                app.revocations.ack(sub.id, generation);
                            }
                        }
                        _ => break,
                    },
                    kick = &mut sub.kicked => {
                        if kick == Ok(crate::revocation::Kick::Lagging) {
                            tracing::warn!(watcher = sub.id, "a worker fell behind on revocations; disconnected it");
                        }
                        break;
                    }
                }
            }
            app.revocations.unsubscribe(sub.id);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
