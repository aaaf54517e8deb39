//! `keybrake serve`: opens the store, loads the vault's secrets, and runs the
//! gRPC server (for the filter), the admin HTTP API and the background sweeper.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::app::{App, Limits};
use crate::calls::expire_leases;
use crate::clock::{Clock, SystemClock};
use crate::grpc::GatewayService;
use crate::secrets::{self, Vault};
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::wire::gateway_server::GatewayServer;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Directory of the SQLite database (created if missing); not used with --database-url.
    #[arg(long, env = "KEYBRAKE_DATA_DIR", default_value = "keybrake-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL (postgres://user@host:5432/db) for state shared by several replicas.
    #[arg(long, env = "KEYBRAKE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// gRPC address the Envoy filter calls.
    #[arg(long, env = "KEYBRAKE_GRPC_LISTEN", default_value = "127.0.0.1:50051")]
    pub grpc_listen: SocketAddr,
    /// Admin HTTP API address (Envoy routes /admin/ here).
    #[arg(long, env = "KEYBRAKE_HTTP_LISTEN", default_value = "127.0.0.1:8081")]
    pub http_listen: SocketAddr,
    /// How long completed idempotency records are kept, in seconds.
    #[arg(long, env = "KEYBRAKE_IDEMPOTENCY_TTL_SECONDS", default_value_t = 86_400)]
    pub idempotency_ttl_seconds: i64,
    /// How long a forwarded call may stay unsettled before it counts as uncertain, in seconds.
    #[arg(long, env = "KEYBRAKE_LEASE_SECONDS", default_value_t = 300)]
    pub lease_seconds: i64,
    /// JSON file of FX rates loaded at start: {"as_of": "YYYY-MM-DD", "rates": {"eur": "1.08"}}.
    #[arg(long, env = "KEYBRAKE_FX_RATES_FILE")]
    pub fx_rates_file: Option<PathBuf>,
    /// Envoy's admin address (e.g. http://127.0.0.1:9901): the console shows the
    /// filter's counters from its /stats.
    #[arg(long, env = "KEYBRAKE_ENVOY_ADMIN_URL")]
    pub envoy_admin_url: Option<String>,
    /// How often leases are checked and expired records purged, in milliseconds.
    #[arg(long, env = "KEYBRAKE_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let stripe_key = secrets::from_env("KEYBRAKE_STRIPE_SECRET_KEY")?
        .ok_or(secrets::SecretError::Missing("KEYBRAKE_STRIPE_SECRET_KEY"))?;
    let admin_key =
        secrets::from_env("KEYBRAKE_ADMIN_KEY")?.ok_or(secrets::SecretError::Missing("KEYBRAKE_ADMIN_KEY"))?;
    let vault = Vault::new(stripe_key, &admin_key)?;

    let store = open_store(&args).await?;
    let limits = Limits {
        record_ttl_secs: args.idempotency_ttl_seconds.max(60),
        lease_secs: args.lease_seconds.max(1),
        ..Limits::default()
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut app = App::new(store, vault, clock, limits);
    app.envoy_admin_url = args.envoy_admin_url.clone().filter(|u| !u.trim().is_empty());
    let app = Arc::new(app);
    if let Some(path) = &args.fx_rates_file {
        load_fx_file(&app, path).await?;
    }
    app.refresh_fx().await?;
    let latest = app.store.read(|l| l.latest_revocation()).await?;
    app.revocations.fast_forward(latest);

    let grpc = TcpListener::bind(args.grpc_listen).await.with_context(|| format!("binding {}", args.grpc_listen))?;
    let http = TcpListener::bind(args.http_listen).await.with_context(|| format!("binding {}", args.http_listen))?;
    let (grpc_addr, http_addr) = (grpc.local_addr()?, http.local_addr()?);
    tracing::info!(%grpc_addr, %http_addr, storage = app.store.backend_name(), "keybrake control service started");
    // Tests and scripts wait for this line to learn the ports.
    println!("READY grpc={grpc_addr} http={http_addr}");

    tokio::spawn(sweep(app.clone(), Duration::from_millis(args.sweep_interval_ms.max(10))));
    tokio::spawn(crate::revocation::relay(app.clone()));
    if matches!(app.store, Store::Postgres(_)) {
        tokio::spawn(chain_audit(app.clone()));
    }
    // TCP_NODELAY on every accepted connection: small answers must not wait
    // for delayed ACKs (Nagle's algorithm held ~1% of charges for 40 ms).
    // `Server::tcp_nodelay` does not apply to a listener passed in.
    let grpc_incoming = tonic::transport::server::TcpIncoming::from(grpc).with_nodelay(Some(true));
    // On a signal, both servers stop taking work; the workers' revocation
    // streams are closed, or the gRPC server would wait for them forever.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    tokio::spawn({
        let app = app.clone();
        async move {
            shutdown_signal().await;
            app.revocations.disconnect_all();
            let _ = stopping.send(true);
        }
    });
    let stopped = move || {
        let mut stop = stop.clone();
        async move {
            let _ = stop.wait_for(|s| *s).await;
        }
    };
    let grpc_server = tonic::transport::Server::builder()
        .add_service(GatewayServer::new(GatewayService { app: app.clone() }))
        .serve_with_incoming_shutdown(grpc_incoming, stopped());
    let http = http.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let http_server = axum::serve(http, crate::admin::router(app.clone())).with_graceful_shutdown(stopped());
    let (g, h) = tokio::join!(grpc_server, http_server);
    g?;
    h?;
    tracing::info!("keybrake control service stopped");
    Ok(())
}

/// PostgreSQL when a database URL is given, else SQLite in the data directory.
pub async fn open_store(args: &ServeArgs) -> anyhow::Result<Store> {
    match args.database_url.clone() {
        // Set but empty is a deployment whose secret was never filled in: on
        // SQLite each replica would keep caps of its own, so refuse instead.
        Some(url) if url.trim().is_empty() => anyhow::bail!(
            "KEYBRAKE_DATABASE_URL (--database-url) is set but empty: give a postgres:// URL, \
             or unset it to keep state in SQLite under --data-dir"
        ),
        Some(url) => {
            // The postgres client runs its own runtime: open it off the async threads.
            let store = tokio::task::spawn_blocking(move || PgStore::open(&url)).await?;
            Ok(Store::Postgres(store.context("opening the PostgreSQL database")?))
        }
        None => {
            std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
            let db = args.data_dir.join("keybrake.db");
            Ok(Store::Sqlite(SqliteStore::open(&db).with_context(|| format!("opening {}", db.display()))?))
        }
    }
}

async fn load_fx_file(app: &App, path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let request: crate::admin::SetRatesFile =
        crate::admin::parse_fx_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let now = app.clock.now_us() / 1_000_000;
    app.store
        .write(move |l| {
            for r in &request {
                l.put_fx_rate(r, now)?;
            }
            Ok(())
        })
        .await?;
    Ok(())
}

/// Expires leases of calls no gateway settled, and purges finished idempotency records and ended console sessions.
async fn sweep(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now_us = app.clock.now_us();
        let result = app
            .store
            .write(move |l| {
                let expired = expire_leases(l, now_us)?;
                let purged = l.purge_idempotency(now_us / 1_000_000)?;
                l.purge_sessions(now_us / 1_000_000)?;
                Ok((expired, purged))
            })
            .await;
        match result {
            Ok((expired, _)) if expired > 0 => {
                tracing::warn!(expired, "unsettled calls marked uncertain after their lease")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "sweep failed"),
        }
    }
}

/// Links new audit rows into the hash chain (PostgreSQL appends them unchained).
async fn chain_audit(app: Arc<App>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        if let Err(e) = crate::audit::chain_pending(&app.store).await {
            tracing::warn!(error = %e, "audit chainer failed; will retry");
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
