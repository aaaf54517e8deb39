//! `keybrake serve`: opens the store, loads the vault's secrets, and runs the
//! gRPC server (for the filter), the admin HTTP API and the background sweeper.
//!
//! The gRPC port answers only an authenticated gateway (see [`crate::channel`]):
//! a Unix socket of this user's by default, or TCP with client certificates.
//! The admin API listens on TCP (health, metrics, operators) and on a Unix
//! socket for the gateway on this host, whose `X-Forwarded-For` is believed
//! (see [`crate::peer`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::{App, Limits};
use crate::calls::expire_leases;
use crate::channel::{self, ChannelGuard, GrpcChannel, ListenAddr};
use crate::clock::{Clock, SystemClock};
use crate::grpc::GatewayService;
use crate::peer::{AdminSocket, AdminTcp, Peer, TrustedProxies};
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
    /// Where the Envoy filter calls: unix:/path/to.sock (default:
    /// unix:DATA_DIR/run/grpc.sock, mode 0600, only this user can connect) or
    /// IP:PORT, which needs --grpc-tls-cert, --grpc-tls-key and
    /// --grpc-client-ca (client certificates required).
    #[arg(long, env = "KEYBRAKE_GRPC_LISTEN")]
    pub grpc_listen: Option<ListenAddr>,
    /// The gRPC port's certificate chain (PEM), for a TCP --grpc-listen.
    #[arg(long, env = "KEYBRAKE_GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// The private key of --grpc-tls-cert (PEM).
    #[arg(long, env = "KEYBRAKE_GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<PathBuf>,
    /// The CA (PEM) whose client certificates the gRPC port accepts: the
    /// gateways'. Only a gateway should hold a certificate it signed.
    #[arg(long, env = "KEYBRAKE_GRPC_CLIENT_CA")]
    pub grpc_client_ca: Option<PathBuf>,
    /// Serve gRPC on TCP without client authentication. Anyone who reaches
    /// the port can trade a vault key for the real key: only for a network
    /// sealed by other means (a mesh sidecar enforcing mTLS and who may call).
    #[arg(long, env = "KEYBRAKE_INSECURE_GRPC_TCP_WITHOUT_CLIENT_AUTH")]
    pub insecure_grpc_tcp_without_client_auth: bool,
    /// Admin HTTP API address on TCP (health, metrics, operators; a proxy in
    /// --trusted-proxies may route /admin/ here).
    #[arg(long, env = "KEYBRAKE_HTTP_LISTEN", default_value = "127.0.0.1:8081")]
    pub http_listen: SocketAddr,
    /// The admin HTTP API on a Unix socket for the gateway on this host
    /// (Envoy routes /admin/ here; default DATA_DIR/run/http.sock, mode 0600).
    /// Its peer is a trusted proxy: the client is the address it appended to
    /// X-Forwarded-For.
    #[arg(long, env = "KEYBRAKE_HTTP_SOCKET")]
    pub http_socket: Option<PathBuf>,
    /// TCP peers whose X-Forwarded-For is believed (IPs or CIDR ranges,
    /// comma-separated; default none). From anyone else, the client is the
    /// TCP peer, whatever the header says.
    #[arg(long, env = "KEYBRAKE_TRUSTED_PROXIES", default_value = "")]
    pub trusted_proxies: TrustedProxies,
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
    /// The gateway's base URL (e.g. http://127.0.0.1:10000), where the MCP
    /// endpoint (/mcp) sends tool calls with the caller's vault key, so the
    /// filter decides them like any call. Without it /mcp answers 503.
    #[arg(long, env = "KEYBRAKE_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// Host header values /mcp accepts (comma-separated, e.g.
    /// keybrake-egress.keybrake.svc.cluster.local:10000); default any: every
    /// request must carry a vault key, so a DNS-rebound page gains nothing.
    #[arg(long, env = "KEYBRAKE_MCP_ALLOWED_HOSTS", value_delimiter = ',')]
    pub mcp_allowed_hosts: Vec<String>,
    /// How often leases are checked and expired records purged, in milliseconds.
    #[arg(long, env = "KEYBRAKE_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,
}

impl ServeArgs {
    /// The gRPC channel the flags ask for, checked (plain TCP is refused without the insecure flag).
    pub fn grpc_channel(&self) -> anyhow::Result<GrpcChannel> {
        let listen = self.grpc_listen.clone().unwrap_or_else(|| ListenAddr::Unix(self.run_dir().join("grpc.sock")));
        GrpcChannel::from_flags(
            listen,
            self.grpc_tls_cert.clone(),
            self.grpc_tls_key.clone(),
            self.grpc_client_ca.clone(),
            self.insecure_grpc_tcp_without_client_auth,
        )
    }

    /// The admin socket's path.
    pub fn http_socket_path(&self) -> PathBuf {
        self.http_socket.clone().unwrap_or_else(|| self.run_dir().join("http.sock"))
    }

    /// Where the default sockets live.
    fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run")
    }
}

/// The gRPC server, bound and configured: ready to serve once the rest is up.
enum GrpcListener {
    Unix(channel::OwnSocket),
    /// With the server's TLS configured (client certificates required), or without (the insecure flag).
    Tcp(TcpListener, Box<tonic::transport::Server>, bool),
}

pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // The flags first: a channel open to anyone is refused before anything starts.
    let grpc_channel = args.grpc_channel()?;
    if let Some(url) = args.gateway_url.as_deref().filter(|u| !u.trim().is_empty()) {
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(char::is_whitespace) {
            anyhow::bail!(
                "--gateway-url (KEYBRAKE_GATEWAY_URL) must be an http:// or https:// URL, like http://127.0.0.1:10000"
            );
        }
    }
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
    app.mcp = crate::mcp::Settings {
        gateway_url: args.gateway_url.clone().filter(|u| !u.trim().is_empty()),
        allowed_hosts: args.mcp_allowed_hosts.iter().map(|h| h.trim().to_owned()).filter(|h| !h.is_empty()).collect(),
    };
    let app = Arc::new(app);
    if let Some(path) = &args.fx_rates_file {
        load_fx_file(&app, path).await?;
    }
    prepare(&app).await?;

    let (grpc, grpc_shown) = match &grpc_channel {
        GrpcChannel::Unix(path) => {
            let socket = channel::bind_own_socket(path)?;
            (GrpcListener::Unix(socket), format!("unix:{}", path.display()))
        }
        GrpcChannel::MutualTls(addr, files) => {
            // Configured before anything listens: a certificate, key or CA that
            // does not load stops the start, never a server that cannot authenticate.
            let server = tonic::transport::Server::builder()
                .tls_config(channel::server_tls(files)?)
                .context("the gRPC TLS certificate, key or client CA")?;
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            let shown = listener.local_addr()?.to_string();
            (GrpcListener::Tcp(listener, Box::new(server), true), shown)
        }
        GrpcChannel::InsecureTcp(addr) => {
            let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
            let shown = listener.local_addr()?.to_string();
            (GrpcListener::Tcp(listener, Box::new(tonic::transport::Server::builder()), false), shown)
        }
    };
    let http = TcpListener::bind(args.http_listen).await.with_context(|| format!("binding {}", args.http_listen))?;
    let http_socket = channel::bind_own_socket(&args.http_socket_path())?;
    let http_addr = http.local_addr()?;
    let http_socket_path = http_socket.path.clone();
    let mode = match &grpc_channel {
        GrpcChannel::Unix(_) => "unix socket, this user only",
        GrpcChannel::MutualTls(..) => "TCP, mutual TLS",
        GrpcChannel::InsecureTcp(_) => "TCP WITHOUT CLIENT AUTHENTICATION",
    };
    if let GrpcChannel::InsecureTcp(_) = &grpc_channel {
        tracing::warn!(
            grpc_addr = %grpc_shown,
            "INSECURE: gRPC on TCP without client authentication ({}): anyone who can reach this port \
             can trade a vault key for the real Stripe key. Only for a network sealed by other means.",
            channel::INSECURE_FLAG
        );
    }
    tracing::info!(
        grpc = %grpc_shown,
        grpc_auth = mode,
        %http_addr,
        http_socket = %http_socket_path.display(),
        trusted_proxies = %args.trusted_proxies,
        storage = app.store.backend_name(),
        "keybrake control service started"
    );
    // Tests and scripts wait for this line to learn the addresses.
    println!("READY grpc={grpc_shown} http={http_addr} http_socket=unix:{}", http_socket_path.display());

    tokio::spawn(sweep(app.clone(), Duration::from_millis(args.sweep_interval_ms.max(10))));
    tokio::spawn(
        crate::revocation::Relay::new(app.store.clone(), app.revocations.clone(), app.keys.clone(), app.clock.clone())
            .run(),
    );
    if matches!(app.store, Store::Postgres(_)) {
        tokio::spawn(chain_audit(app.clone()));
    }
    // On a signal, every server stops taking work; the workers' revocation
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
    let gateway = GatewayService { app: app.clone() };
    let (grpc_server, grpc_socket) = match grpc {
        GrpcListener::Unix(socket) => {
            let guard = ChannelGuard::same_user(socket.owner_uid, app.clone());
            let listener = tokio::net::UnixListener::from_std(socket.listener)?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let server = tonic::transport::Server::builder()
                .add_service(GatewayServer::with_interceptor(gateway, guard))
                .serve_with_incoming_shutdown(incoming, stopped());
            (futures_util::future::Either::Left(server), Some(socket.file))
        }
        GrpcListener::Tcp(listener, mut builder, mutual_tls) => {
            // TCP_NODELAY on every accepted connection: small answers must not wait
            // for delayed ACKs (Nagle's algorithm held ~1% of charges for 40 ms).
            // `Server::tcp_nodelay` does not apply to a listener passed in.
            let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let guard = if mutual_tls {
                ChannelGuard::client_certificate(app.clone())
            } else {
                ChannelGuard::open(app.clone())
            };
            let server = builder
                .add_service(GatewayServer::with_interceptor(gateway, guard))
                .serve_with_incoming_shutdown(incoming, stopped());
            (futures_util::future::Either::Right(server), None)
        }
    };
    // The admin API and console, and the MCP endpoint for agents: one HTTP server.
    let router = crate::admin::router(app.clone()).merge(crate::mcp::router(app.clone()));
    let http_tcp = AdminTcp { listener: http, trusted: Arc::new(args.trusted_proxies.clone()) };
    let http_tcp = axum::serve(http_tcp, router.clone().into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(stopped());
    let owner_uid = http_socket.owner_uid;
    let http_socket_file = http_socket.file;
    let http_unix = AdminSocket { listener: tokio::net::UnixListener::from_std(http_socket.listener)?, owner_uid };
    let http_unix =
        axum::serve(http_unix, router.into_make_service_with_connect_info::<Peer>()).with_graceful_shutdown(stopped());
    let (g, h, u) = tokio::join!(grpc_server, http_tcp, http_unix);
    // The socket files go with the servers (on an early error, when the bound sockets are dropped).
    drop((grpc_socket, http_socket_file));
    g?;
    h?;
    u?;
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
    let request = crate::usd::parse_rates_file(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
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

/// What a replica reads before it serves: the FX table, and where the
/// revocation log ends (its watchers start there).
pub async fn prepare(app: &App) -> crate::store::StoreResult<()> {
    app.refresh_fx().await?;
    let latest = app.store.read(|l| l.latest_revocation()).await?;
    app.revocations.fast_forward(latest);
    Ok(())
}

/// Expires leases of calls no gateway settled, and purges finished idempotency records and ended console sessions.
async fn sweep(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        match sweep_once(&app).await {
            Ok((expired, _)) if expired > 0 => {
                tracing::warn!(expired, "unsettled calls marked uncertain after their lease")
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "sweep failed"),
        }
    }
}

/// One sweep (what [`sweep`] does every `--sweep-interval-ms`; the
/// deterministic simulator calls it as an event): returns the calls whose
/// lease ran out and the idempotency records purged.
pub async fn sweep_once(app: &App) -> crate::store::StoreResult<(usize, u64)> {
    let now_us = app.clock.now_us();
    app.store
        .write(move |l| {
            let expired = expire_leases(l, now_us)?;
            let purged = l.purge_idempotency(now_us / 1_000_000)?;
            l.purge_sessions(now_us / 1_000_000)?;
            Ok((expired, purged))
        })
        .await
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
