//! Who is on the other end of an admin HTTP connection, and so which client
//! address a request is counted against (the admin authentication limiter,
//! the console's login log).
//!
//! `X-Forwarded-For` is a header any client can write. It is believed only
//! from a *trusted proxy*: a peer on the admin Unix socket (`--http-socket`,
//! which only the service's own user can open: the gateway on this host), or
//! a TCP peer whose address is in `--trusted-proxies`. From a trusted proxy
//! the client is the **last** element of `X-Forwarded-For`, the one the
//! proxy appended itself (Envoy with `use_remote_address: true` appends the
//! address of the connection it accepted; whatever the client sent comes
//! before it). From anyone else the client is the TCP peer's address, and the
//! header is ignored.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::http::{Extensions, HeaderMap};
use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The other end of an admin connection, decided when it was accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// The admin socket: the gateway on this host, running as this user.
    Socket,
    /// A TCP peer; `proxy` when its address is a trusted proxy.
    Tcp { ip: IpAddr, proxy: bool },
}

/// The client a request is counted against: the address the trusted proxy
/// in front reported, else the peer's own. `"unknown"` without connection
/// information (never happens on a real listener).
pub fn client_address(extensions: &Extensions, headers: &HeaderMap) -> String {
    match extensions.get::<ConnectInfo<Peer>>().map(|c| c.0) {
        Some(Peer::Socket) => forwarded_for(headers).map_or_else(|| "admin-socket".to_owned(), |ip| ip.to_string()),
        Some(Peer::Tcp { ip, proxy: true }) => forwarded_for(headers).unwrap_or(ip).to_string(),
        Some(Peer::Tcp { ip, proxy: false }) => ip.to_string(),
        None => "unknown".to_owned(),
    }
}

/// The last element of `X-Forwarded-For` (over all its lines), as an IP
/// address; `None` when absent or not an address.
fn forwarded_for(headers: &HeaderMap) -> Option<IpAddr> {
    let last_line = headers.get_all("x-forwarded-for").iter().next_back()?;
    let last = last_line.to_str().ok()?.rsplit(',').next()?.trim();
    last.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

/// `--trusted-proxies`: addresses and CIDR ranges whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|&(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => same_prefix(u128::from(u32::from(n)), u128::from(u32::from(a)), 32, len),
            (IpAddr::V6(n), IpAddr::V6(a)) => same_prefix(u128::from(n), u128::from(a), 128, len),
            _ => false,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `a` and `b`, numbers of `bits` bits, agree in their first `len` bits.
fn same_prefix(a: u128, b: u128, bits: u32, len: u8) -> bool {
    let len = u32::from(len).min(bits);
    len == 0 || (a ^ b) >> (bits - len) == 0
}

impl FromStr for TrustedProxies {
    type Err = String;

    /// `10.0.0.5, 10.1.0.0/16, fd00::/8`; empty for none.
    fn from_str(s: &str) -> Result<TrustedProxies, String> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, len) = match item.split_once('/') {
                Some((a, l)) => (a, Some(l)),
                None => (item, None),
            };
            let ip = addr.parse::<IpAddr>().map_err(|_| format!("not an IP address or CIDR range: {item:?}"))?;
            let ip = ip.to_canonical();
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let len = match len {
                None => max,
                Some(l) => l
                    .parse::<u8>()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| format!("bad prefix length in {item:?}"))?,
            };
            out.push((ip, len));
        }
        Ok(TrustedProxies(out))
    }
}

impl fmt::Display for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self.0.iter().map(|&(ip, len)| format!("{ip}/{len}")).collect();
        write!(f, "{}", items.join(","))
    }
}

/// Waits a little after a failed accept (out of file descriptors, say)
/// rather than spin, as axum's own listeners do.
async fn accept_failed(e: std::io::Error) {
    if !matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::Interrupted
    ) {
        tracing::error!(error = %e, "admin listener: accept failed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The admin API's TCP listener: TCP_NODELAY on, each peer checked against `--trusted-proxies`.
pub struct AdminTcp {
    pub listener: TcpListener,
    pub trusted: Arc<TrustedProxies>,
}

impl Listener for AdminTcp {
    type Io = TcpStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (TcpStream, Peer) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    // Small answers must not wait for delayed ACKs.
                    let _ = stream.set_nodelay(true);
                    let ip = addr.ip().to_canonical();
                    return (stream, Peer::Tcp { ip, proxy: self.trusted.contains(ip) });
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        let addr: SocketAddr = self.listener.local_addr()?;
        Ok(Peer::Tcp { ip: addr.ip(), proxy: false })
    }
}

/// The admin API's Unix socket: connections from other users are dropped
/// unread (the socket's mode should keep them out in the first place).
pub struct AdminSocket {
    pub listener: UnixListener,
    pub owner_uid: u32,
}

impl Listener for AdminSocket {
    type Io = UnixStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (UnixStream, Peer) {
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().ok().map(|c| c.uid());
                    if uid == Some(self.owner_uid) {
                        return (stream, Peer::Socket);
                    }
                    tracing::warn!(peer_uid = ?uid, "admin socket: connection from another user dropped");
                }
                Err(e) => accept_failed(e).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Peer> {
        Ok(Peer::Socket)
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, AdminTcp>> for Peer {
    fn connect_info(stream: IncomingStream<'_, AdminTcp>) -> Peer {
        *stream.remote_addr()
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, AdminSocket>> for Peer {
    fn connect_info(stream: IncomingStream<'_, AdminSocket>) -> Peer {
        *stream.remote_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: Option<Peer>, xff: &[&str]) -> String {
        let mut ext = Extensions::new();
        if let Some(p) = peer {
            ext.insert(ConnectInfo(p));
        }
        let mut headers = HeaderMap::new();
        for v in xff {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        client_address(&ext, &headers)
    }

    const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let direct = Some(Peer::Tcp { ip: ATTACKER, proxy: false });
        assert_eq!(request(direct, &["203.0.113.9"]), "127.0.0.1", "a direct client's header is ignored");
        assert_eq!(request(direct, &[]), "127.0.0.1");
        let proxy = Some(Peer::Tcp { ip: "10.0.0.5".parse().unwrap(), proxy: true });
        assert_eq!(request(proxy, &["203.0.113.9"]), "203.0.113.9");
        assert_eq!(request(proxy, &[]), "10.0.0.5", "a proxy that says nothing is the client");
        assert_eq!(request(Some(Peer::Socket), &["198.51.100.7"]), "198.51.100.7");
        assert_eq!(request(Some(Peer::Socket), &[]), "admin-socket");
        assert_eq!(request(None, &["198.51.100.7"]), "unknown");
    }

    #[test]
    fn the_proxys_own_element_is_the_last() {
        // What a client wrote comes first; Envoy appends the address it saw.
        let s = Some(Peer::Socket);
        assert_eq!(request(s, &["1.1.1.1, 2.2.2.2, 127.0.0.1"]), "127.0.0.1");
        assert_eq!(request(s, &["1.1.1.1", "2.2.2.2,127.0.0.9"]), "127.0.0.9");
        assert_eq!(request(s, &["1.1.1.1, not-an-ip"]), "admin-socket", "garbage is not an address");
        assert_eq!(request(s, &["::ffff:192.0.2.1"]), "192.0.2.1");
    }

    #[test]
    fn trusted_proxies_parse_and_match() {
        let t: TrustedProxies = "10.1.0.0/16, 192.0.2.7, fd00::/8".parse().unwrap();
        assert!(t.contains("10.1.200.3".parse().unwrap()));
        assert!(!t.contains("10.2.0.1".parse().unwrap()));
        assert!(t.contains("192.0.2.7".parse().unwrap()) && !t.contains("192.0.2.8".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.0.1".parse().unwrap()), "v4-mapped peers are v4");
        assert!(t.contains("fd12::1".parse().unwrap()) && !t.contains("fe80::1".parse().unwrap()));
        assert_eq!(t.to_string(), "10.1.0.0/16,192.0.2.7/32,fd00::/8");
        let none: TrustedProxies = "".parse().unwrap();
        assert!(none.is_empty() && !none.contains(ATTACKER));
        let all: TrustedProxies = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ATTACKER) && !all.contains("::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.1/x", "::/129"] {
            assert!(bad.parse::<TrustedProxies>().is_err(), "{bad}");
        }
    }
}
