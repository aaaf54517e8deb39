//! Who may call the control service's gRPC port, the one that hands the real
//! Stripe key to the filter.
//!
//! Only an authenticated gateway may: the port is either
//!
//! * a Unix domain socket (`--grpc-listen unix:/path`, the default, under the
//!   data directory) that only the service's own user can open: the socket is
//!   `0600` in a directory that is not writable by others, it comes into being
//!   already `0600` (bound in a private directory, then moved into place), and
//!   every call is refused unless the peer's uid (`SO_PEERCRED`) is the
//!   socket owner's; or
//! * TCP with mutual TLS (`--grpc-tls-cert`, `--grpc-tls-key`,
//!   `--grpc-client-ca`): a peer without a certificate signed by the client CA
//!   never completes the handshake, and every call is refused again unless
//!   it came over a connection with a verified client certificate.
//!
//! Plain TCP is refused at start-up unless
//! `--insecure-grpc-tcp-without-client-auth` says the network is sealed by
//! other means (a mesh sidecar, a private link), and then logged loudly.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tonic::transport::server::UdsConnectInfo;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::app::App;

/// Where a server listens: a Unix domain socket or a TCP address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenAddr, String> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path (unix:/run/keybrake/grpc.sock)".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| format!("expected unix:/path/to.sock or IP:PORT, got {s:?}"))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// The certificate files of the gRPC port's mutual TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The service's certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM). Read once; never logged.
    pub key: PathBuf,
    /// The CA (PEM, one or more certificates) that signs the gateways' client certificates.
    pub client_ca: PathBuf,
}

/// How the gRPC port authenticates its callers, decided from the flags.
#[derive(Debug, Clone)]
pub enum GrpcChannel {
    /// A Unix socket only the service's user can open.
    Unix(PathBuf),
    /// TCP with client certificates required.
    MutualTls(SocketAddr, TlsFiles),
    /// TCP without client authentication: only with the insecure flag.
    InsecureTcp(SocketAddr),
}

/// The flag that allows plain TCP, named so that nobody sets it by accident.
pub const INSECURE_FLAG: &str = "--insecure-grpc-tcp-without-client-auth";

impl GrpcChannel {
    /// Checks the combination of flags; anything that would leave the port
    /// open to an unauthenticated caller without saying so is refused.
    pub fn from_flags(
        listen: ListenAddr,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
        insecure_tcp: bool,
    ) -> anyhow::Result<GrpcChannel> {
        let tls_given = cert.is_some() || key.is_some() || client_ca.is_some();
        match listen {
            ListenAddr::Unix(path) => {
                if tls_given || insecure_tcp {
                    bail!(
                        "--grpc-tls-cert/--grpc-tls-key/--grpc-client-ca and {INSECURE_FLAG} are for a TCP \
                         --grpc-listen; a Unix socket is authenticated by its owner (give one or the other)"
                    );
                }
                Ok(GrpcChannel::Unix(path))
            }
            ListenAddr::Tcp(addr) => match (cert, key, client_ca) {
                (Some(cert), Some(key), Some(client_ca)) => {
                    if insecure_tcp {
                        bail!("{INSECURE_FLAG} contradicts --grpc-tls-*: give one or the other");
                    }
                    Ok(GrpcChannel::MutualTls(addr, TlsFiles { cert, key, client_ca }))
                }
                (None, None, None) if insecure_tcp => Ok(GrpcChannel::InsecureTcp(addr)),
                (None, None, None) => bail!(
                    "refusing to serve gRPC on TCP {addr} without client authentication: anyone who can reach \
                     it could trade a vault key for the real key. Use a Unix socket (--grpc-listen \
                     unix:/path), or mutual TLS (--grpc-tls-cert, --grpc-tls-key, --grpc-client-ca), or, only \
                     on a network sealed by other means, {INSECURE_FLAG}"
                ),
                _ => bail!(
                    "--grpc-tls-cert, --grpc-tls-key and --grpc-client-ca go together: TLS without client \
                     certificates would let any caller in"
                ),
            },
        }
    }
}

/// Reads the TLS files into tonic's server configuration (client
/// certificates required). Errors name the file, never its content.
pub fn server_tls(files: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
    // One crypto provider for rustls, whatever features other crates enable.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let read = |path: &Path, what: &str, marker: &str| -> anyhow::Result<Vec<u8>> {
        let bytes = std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))?;
        if !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            bail!("{} is not a PEM {what} (no {marker:?} in it)", path.display());
        }
        Ok(bytes)
    };
    let cert = read(&files.cert, "gRPC TLS certificate", "-----BEGIN CERTIFICATE-----")?;
    let key = read(&files.key, "gRPC TLS private key", "PRIVATE KEY-----")?;
    let ca = read(&files.client_ca, "gRPC client CA", "-----BEGIN CERTIFICATE-----")?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(false)
        // A peer that never finishes its handshake holds nothing for long.
        .timeout(Duration::from_secs(10)))
}

/// A Unix socket bound for the service alone.
#[derive(Debug)]
pub struct OwnSocket {
    pub listener: std::os::unix::net::UnixListener,
    pub path: PathBuf,
    /// The socket file's owner: the service's own user.
    pub owner_uid: u32,
    /// Removes the socket file when dropped (the service stopped, or failed to start).
    pub file: SocketFile,
}

/// The file of a socket bound here: removed on drop if it is still that
/// socket (same inode), never a file another process put in its place.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    inode: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.file_type().is_socket() && m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Longest path a socket address holds (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Binds a Unix socket at `path` that only this user can connect to:
///
/// * the directory is created `0700` if missing; an existing one must not be
///   writable by others (unless sticky, like /tmp), or another user could
///   put a socket of theirs in its place;
/// * a stale socket is removed, but not one a live server still answers on,
///   and never a file that is not a socket;
/// * the socket is bound inside a fresh `0700` directory, set to `0600`, then
///   renamed into place, so it never exists anywhere with looser permissions.
pub fn bind_own_socket(path: &Path) -> anyhow::Result<OwnSocket> {
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        bail!("the socket path {} is longer than {MAX_SOCKET_PATH} bytes: choose a shorter one", path.display());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    match std::fs::metadata(&parent) {
        Ok(m) => {
            if !m.is_dir() {
                bail!("{} is not a directory", parent.display());
            }
            let mode = m.permissions().mode();
            if mode & 0o022 != 0 && mode & 0o1000 == 0 {
                bail!(
                    "{} is writable by other users (mode {:o}): another user could replace the socket; \
                     put it in a directory only this user can write",
                    parent.display(),
                    mode & 0o7777
                );
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("checking {}", parent.display())),
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!("another process is serving on {}: stop it first", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket: refusing to replace it", path.display()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    }
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no random bytes for a temporary name: {e}"))?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let private = parent.join(format!(".keybrake-bind-{nonce}"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("creating {}", private.display()))?;
    let bound = (|| -> anyhow::Result<OwnSocket> {
        let staged = private.join("s");
        let listener = std::os::unix::net::UnixListener::bind(&staged)
            .with_context(|| format!("binding a socket in {}", private.display()))?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path).with_context(|| format!("moving the socket to {}", path.display()))?;
        let meta = std::fs::symlink_metadata(path)?;
        listener.set_nonblocking(true)?;
        let file = SocketFile { path: path.to_path_buf(), inode: meta.ino() };
        Ok(OwnSocket { listener, path: path.to_path_buf(), owner_uid: meta.uid(), file })
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Checks every gRPC call, before the service sees it, against how the port
/// authenticates: the same user on a socket, a verified client certificate
/// on TCP. (The transport already refuses others; this refuses them again,
/// on every method, should the transport ever let one through.)
#[derive(Clone)]
pub struct ChannelGuard {
    rule: Rule,
    app: Arc<App>,
}

#[derive(Clone, Copy, Debug)]
enum Rule {
    SameUser(u32),
    ClientCertificate,
    Open,
}

impl ChannelGuard {
    pub fn same_user(uid: u32, app: Arc<App>) -> ChannelGuard {
        ChannelGuard { rule: Rule::SameUser(uid), app }
    }

    pub fn client_certificate(app: Arc<App>) -> ChannelGuard {
        ChannelGuard { rule: Rule::ClientCertificate, app }
    }

    pub fn open(app: Arc<App>) -> ChannelGuard {
        ChannelGuard { rule: Rule::Open, app }
    }

    fn refuse(&self, status: Status) -> Result<Request<()>, Status> {
        self.app.metrics.error("grpc_peer_refused");
        Err(status)
    }
}

impl tonic::service::Interceptor for ChannelGuard {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.rule {
            Rule::SameUser(uid) => {
                let peer = request.extensions().get::<UdsConnectInfo>().and_then(|i| i.peer_cred).map(|c| c.uid());
                if peer == Some(uid) {
                    return Ok(request);
                }
                tracing::warn!(peer_uid = ?peer, "gRPC call from another user on the control socket refused");
                self.refuse(Status::permission_denied("this socket serves its owner's gateway only"))
            }
            Rule::ClientCertificate => {
                if request.peer_certs().is_some_and(|c| !c.is_empty()) {
                    return Ok(request);
                }
                tracing::warn!(peer = ?request.remote_addr(), "gRPC call without a client certificate refused");
                self.refuse(Status::unauthenticated("a client certificate is required"))
            }
            Rule::Open => Ok(request),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse() {
        assert_eq!("unix:/run/k/grpc.sock".parse(), Ok(ListenAddr::Unix("/run/k/grpc.sock".into())));
        assert_eq!("127.0.0.1:50051".parse(), Ok(ListenAddr::Tcp("127.0.0.1:50051".parse().unwrap())));
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("localhost:50051".parse::<ListenAddr>().is_err());
        assert_eq!(ListenAddr::Unix("/a/b.sock".into()).to_string(), "unix:/a/b.sock");
    }

    fn channel(listen: &str, tls: [bool; 3], insecure: bool) -> anyhow::Result<GrpcChannel> {
        let f = |on: bool, name: &str| on.then(|| PathBuf::from(name));
        GrpcChannel::from_flags(
            listen.parse().unwrap(),
            f(tls[0], "c.pem"),
            f(tls[1], "k.pem"),
            f(tls[2], "ca.pem"),
            insecure,
        )
    }

    #[test]
    fn tcp_needs_client_authentication_or_the_loud_flag() {
        let refused = channel("0.0.0.0:50051", [false; 3], false).unwrap_err().to_string();
        assert!(refused.contains(INSECURE_FLAG) && refused.contains("client authentication"), "{refused}");
        assert!(matches!(channel("0.0.0.0:50051", [false; 3], true), Ok(GrpcChannel::InsecureTcp(_))));
        assert!(matches!(channel("0.0.0.0:50051", [true; 3], false), Ok(GrpcChannel::MutualTls(..))));
        for partial in [[true, true, false], [true, false, false], [false, false, true]] {
            assert!(channel("0.0.0.0:50051", partial, false).is_err(), "{partial:?}");
            assert!(channel("0.0.0.0:50051", partial, true).is_err(), "{partial:?}");
        }
        assert!(channel("0.0.0.0:50051", [true; 3], true).is_err());
        assert!(matches!(channel("unix:/tmp/x.sock", [false; 3], false), Ok(GrpcChannel::Unix(_))));
        assert!(channel("unix:/tmp/x.sock", [true; 3], false).is_err());
        assert!(channel("unix:/tmp/x.sock", [false; 3], true).is_err());
    }

    #[test]
    fn sockets_are_private_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run").join("grpc.sock");
        let s = bind_own_socket(&path).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(s.owner_uid, meta.uid());
        // Nothing is left behind from staging.
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("grpc.sock")]);
        // A live socket is not taken over; a stale one is replaced.
        assert!(bind_own_socket(&path).unwrap_err().to_string().contains("another process"));
        // Stale: the listener closed, the file left behind (a crash).
        let OwnSocket { listener, file, .. } = s;
        drop(listener);
        std::mem::forget(file);
        let again = bind_own_socket(&path).unwrap();
        assert!(path.exists());
        drop(again);
        assert!(!path.exists(), "removed when dropped");
    }

    #[test]
    fn sockets_refuse_unsafe_places() {
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(bind_own_socket(&open.join("g.sock")).unwrap_err().to_string().contains("writable by other users"));
        let file = dir.path().join("file");
        std::fs::write(&file, "not a socket").unwrap();
        assert!(bind_own_socket(&file).unwrap_err().to_string().contains("not a socket"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
        let long = dir.path().join("x".repeat(120));
        assert!(bind_own_socket(&long).unwrap_err().to_string().contains("longer than"));
    }
}
