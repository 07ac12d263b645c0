//! Accepting TCP connections, for both ports (gRPC and web): what a broken or hostile peer can
//! make an accept loop do is bounded here, once.
//!
//! - An accept error that is not about one connection (out of descriptors: `EMFILE`, `ENFILE`,
//!   `ENOBUFS`, `ENOMEM`) backs off 5 ms, doubling to 1 s, as Go's `net/http` does, instead of
//!   spinning; the condition is logged at most once a second, with how many failures it covers.
//! - Connections are capped per port and per peer address; one over a cap is closed at once
//!   (and counted in a summary logged at most once a second).
//! - Every accepted socket gets TCP keepalive (a peer that vanished is found by the kernel)
//!   and no Nagle delay (chat frames are small and interactive).
//! - Every connection gets a handshake deadline; [`Preface`] makes it send its first bytes
//!   (the HTTP/2 preface, after TLS if any) by then, or its reads fail, so a TCP connection that
//!   never speaks is closed.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

/// The first wait after an accept error (Go's `net/http`: 5 ms).
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);

/// The longest wait between accept attempts while they keep failing (Go's `net/http`: 1 s).
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A repeated condition (accept errors, refused connections) is logged at most this often,
/// with a count: a flood of failures must not become a flood of log lines (a full disk).
pub const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// TCP connections open at once on one port (`--connections-max`). Each one holds a descriptor
/// and buffers; more are closed as soon as they are accepted.
pub const CONNECTIONS_MAX: usize = 10_000;

/// TCP connections open at once on one port from one peer address
/// (`--connections-per-peer-max`), so one host cannot take every slot of [`CONNECTIONS_MAX`].
/// An IPv6 peer counts by its /64 network ([`PEER_IPV6_PREFIX_BITS`]).
pub const CONNECTIONS_PER_PEER_MAX: usize = 1_000;

/// IPv6 peers are counted by network, not by address: one host is routinely given a whole /64
/// and can pick a new address for every connection.
pub const PEER_IPV6_PREFIX_BITS: u32 = 64;

/// Idle time before the kernel starts probing a connection (`--tcp-keepalive`): finds peers
/// that vanished without a FIN (a cable pulled, a host powered off).
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A new connection has this long to finish its TLS handshake (if any) and, on the gRPC port,
/// to send the HTTP/2 connection preface (`--handshake-timeout`); otherwise it is closed.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bytes of the HTTP/2 client connection preface (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`,
/// RFC 9113 section 3.4) that a gRPC connection must send within the deadline.
pub const HTTP2_PREFACE_BYTES: usize = 24;

/// The connection limits of one port.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// See [`CONNECTIONS_MAX`].
    pub connections_max: usize,
    /// See [`CONNECTIONS_PER_PEER_MAX`].
    pub connections_per_peer_max: usize,
    /// See [`TCP_KEEPALIVE`].
    pub tcp_keepalive: Duration,
    /// See [`HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX,
            connections_per_peer_max: CONNECTIONS_PER_PEER_MAX,
            tcp_keepalive: TCP_KEEPALIVE,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// Accepts connections on one port within its [`ConnectionLimits`].
#[derive(Debug)]
pub struct Acceptor {
    listener: TcpListener,
    /// Names the port in log lines (`grpc`, `web`).
    port: &'static str,
    limits: ConnectionLimits,
    /// Shared with every accepted connection's permit, which gives its place back on drop.
    open: Arc<Mutex<OpenConnections>>,
    /// How long to wait after the next accept error.
    backoff: Backoff,
    /// Accept errors not yet logged.
    failures: LogEvery,
    /// Connections refused over a cap, not yet logged.
    refusals: LogEvery,
}

impl Acceptor {
    /// Accepts on `listener`; `port` names it in log lines.
    pub fn new(listener: TcpListener, port: &'static str, limits: ConnectionLimits) -> Self {
        Self {
            listener,
            port,
            limits,
            open: Arc::default(),
            backoff: Backoff::default(),
            failures: LogEvery::default(),
            refusals: LogEvery::default(),
        }
    }

    /// The next connection within the limits. Never fails: accept errors are backed off and
    /// logged here, and connections over a cap are closed here.
    pub async fn accept(&mut self) -> Guarded {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => {
                    self.backoff.succeeded();
                    accepted
                }
                // About one connection (it was reset before we took it): take the next.
                Err(error) if is_connection_error(&error) => {
                    debug!(port = self.port, %error, "a connection failed while being accepted");
                    continue;
                }
                Err(error) => {
                    let delay = self.backoff.failed();
                    if let Some(failures) = self.failures.note(Instant::now()) {
                        warn!(
                            port = self.port,
                            %error,
                            failures,
                            backoff = ?delay,
                            "accepting connections fails (out of file descriptors? raise `ulimit -n`); retrying with backoff"
                        );
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            let opened = lock(&self.open).try_open(peer.ip(), &self.limits);
            if let Err(flag) = opened {
                debug!(port = self.port, %peer, flag, "connection refused: over the limit");
                if let Some(refused) = self.refusals.note(Instant::now()) {
                    warn!(port = self.port, refused, last_peer = %peer, flag, "connections refused: over the limit");
                }
                continue;
            }
            let permit = Permit { open: Arc::clone(&self.open), peer: peer.ip() };
            configure(&stream, &self.limits);
            let local = stream.local_addr().ok();
            let handshake_deadline = Instant::now() + self.limits.handshake_timeout;
            debug!(port = self.port, %peer, "connection accepted");
            return Guarded { stream, peer, local, handshake_deadline, _permit: permit };
        }
    }
}

/// Nodelay and TCP keepalive. Failing to set them is not worth refusing the connection for.
fn configure(stream: &TcpStream, limits: &ConnectionLimits) {
    let _ = stream.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new().with_time(limits.tcp_keepalive);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        debug!(%error, "setting TCP keepalive failed");
    }
}

/// Errors about the one connection being accepted, not about the listener (as hyper and axum
/// classify them): the next accept may succeed at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

fn lock(open: &Mutex<OpenConnections>) -> std::sync::MutexGuard<'_, OpenConnections> {
    // The counts stay consistent even if a holder panicked: each update is one statement.
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Open connections of one port, in total and per peer address.
#[derive(Debug, Default)]
struct OpenConnections {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

impl OpenConnections {
    /// Counts a new connection from `peer`, or names the flag of the limit it is over.
    fn try_open(&mut self, peer: IpAddr, limits: &ConnectionLimits) -> Result<(), &'static str> {
        if self.total >= limits.connections_max {
            return Err("--connections-max");
        }
        let from_peer = self.per_peer.entry(peer_key(peer)).or_default();
        if *from_peer >= limits.connections_per_peer_max {
            return Err("--connections-per-peer-max");
        }
        *from_peer += 1;
        self.total += 1;
        Ok(())
    }

    fn close(&mut self, peer: IpAddr) {
        self.total = self.total.saturating_sub(1);
        let key = peer_key(peer);
        if let Some(from_peer) = self.per_peer.get_mut(&key) {
            *from_peer = from_peer.saturating_sub(1);
            // Forget the peer, so the map holds only peers with open connections.
            if *from_peer == 0 {
                self.per_peer.remove(&key);
            }
        }
    }
}

/// What a peer is counted by: an IPv4 address (also when it arrives IPv4-mapped on a dual-stack
/// listener), or an IPv6 address's /64 network.
fn peer_key(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mask = u128::MAX.checked_shl(128 - PEER_IPV6_PREFIX_BITS).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        },
    }
}

/// A connection's place in [`OpenConnections`], given back when the connection is dropped.
#[derive(Debug)]
struct Permit {
    open: Arc<Mutex<OpenConnections>>,
    peer: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        lock(&self.open).close(self.peer);
    }
}

/// The delay between failing accepts: 5 ms, doubling to 1 s, back to none after a success.
#[derive(Debug, Default)]
struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    /// An accept failed: how long to wait before the next one.
    fn failed(&mut self) -> Duration {
        let delay = match self.delay {
            None => ACCEPT_BACKOFF_MIN,
            Some(delay) => (delay * 2).min(ACCEPT_BACKOFF_MAX),
        };
        self.delay = Some(delay);
        delay
    }

    fn succeeded(&mut self) {
        self.delay = None;
    }
}

/// Counts occurrences of a condition and says when a log line is due: at most once per
/// [`LOG_INTERVAL`], covering every occurrence since the last line.
#[derive(Debug, Default)]
struct LogEvery {
    logged_at: Option<Instant>,
    count: u64,
}

impl LogEvery {
    /// Notes one occurrence at `now`; `Some(count)` when a line is due.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self.logged_at.is_some_and(|logged_at| now.duration_since(logged_at) < LOG_INTERVAL) {
            return None;
        }
        self.logged_at = Some(now);
        Some(std::mem::take(&mut self.count))
    }
}

/// An accepted connection: it holds its place under the caps until dropped.
#[derive(Debug)]
pub struct Guarded {
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    /// When its handshake (TLS, the HTTP/2 preface) must be done: accepted + the timeout.
    handshake_deadline: Instant,
    _permit: Permit,
}

impl Guarded {
    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The local address the connection came in on.
    pub fn local(&self) -> Option<SocketAddr> {
        self.local
    }

    /// When the connection's handshake must be done ([`ConnectionLimits::handshake_timeout`]
    /// after it was accepted).
    pub fn handshake_deadline(&self) -> Instant {
        self.handshake_deadline
    }
}

impl AsyncRead for Guarded {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(context, buf)
    }
}

/// `AsyncWrite` by passing every call to the field `$field`: the connection wrappers (here and
/// in `grpc::idle`) only watch reads (or nothing), so their writes are the inner stream's. The
/// caller imports `Pin`, `Context`, `Poll`, `io` and `AsyncWrite`.
macro_rules! write_through {
    ($field:ident, impl $($header:tt)+) => {
        impl $($header)+ {
            fn poll_write(self: Pin<&mut Self>, context: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().$field).poll_write(context, data)
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                context: &mut Context<'_>,
                data: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.get_mut().$field).poll_write_vectored(context, data)
            }

            fn is_write_vectored(&self) -> bool {
                self.$field.is_write_vectored()
            }

            fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().$field).poll_flush(context)
            }

            fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.get_mut().$field).poll_shutdown(context)
            }
        }
    };
}

pub(crate) use write_through;

write_through!(stream, impl AsyncWrite for Guarded);

/// A connection (plaintext, or the plaintext side of TLS) that must send its first `bytes`
/// bytes (the HTTP/2 preface) before a deadline, or its reads fail: a connection that never
/// speaks is closed. Once they came, it is a plain pass-through.
#[derive(Debug)]
pub struct Preface<Io> {
    io: Io,
    bytes_left: usize,
    /// `None` once the bytes came.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<Io> Preface<Io> {
    /// `io` must send `bytes` bytes before `deadline`.
    pub fn new(io: Io, bytes: usize, deadline: Instant) -> Self {
        Self { io, bytes_left: bytes, deadline: (bytes > 0).then(|| Box::pin(tokio::time::sleep_until(deadline))) }
    }

    /// The connection inside.
    pub fn get_ref(&self) -> &Io {
        &self.io
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for Preface<Io> {
    fn poll_read(self: Pin<&mut Self>, context: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let filled_before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(context, buf);
        let Some(deadline) = &mut this.deadline else { return polled };
        match &polled {
            Poll::Ready(Ok(())) => {
                this.bytes_left = this.bytes_left.saturating_sub(buf.filled().len() - filled_before);
                if this.bytes_left == 0 {
                    this.deadline = None;
                }
            }
            Poll::Pending if deadline.as_mut().poll(context).is_ready() => {
                debug!("closing a connection that did not send its preface in time");
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the connection did not send its preface within --handshake-timeout",
                )));
            }
            _ => {}
        }
        polled
    }
}

write_through!(io, impl<Io: AsyncWrite + Unpin> AsyncWrite for Preface<Io>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_5_ms_to_1_s_and_resets_on_success() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..10).map(|_| backoff.failed()).collect();
        assert_eq!(delays[0], Duration::from_millis(5));
        assert_eq!(delays[1], Duration::from_millis(10));
        assert_eq!(delays[7], Duration::from_millis(640));
        assert_eq!(delays[8], ACCEPT_BACKOFF_MAX);
        assert_eq!(delays[9], ACCEPT_BACKOFF_MAX);
        backoff.succeeded();
        assert_eq!(backoff.failed(), ACCEPT_BACKOFF_MIN);
    }

    #[test]
    fn a_condition_is_logged_at_most_once_a_second_with_its_count() {
        let start = Instant::now();
        let mut log = LogEvery::default();
        assert_eq!(log.note(start), Some(1));
        for millis in 1..1_000 {
            assert_eq!(log.note(start + Duration::from_millis(millis)), None);
        }
        assert_eq!(log.note(start + Duration::from_millis(1_000)), Some(1_000));
    }

    #[test]
    fn connections_are_capped_per_port_and_per_peer() {
        let limits =
            ConnectionLimits { connections_max: 3, connections_per_peer_max: 2, ..ConnectionLimits::default() };
        let (one, two): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        let mut open = OpenConnections::default();
        assert_eq!(open.try_open(one, &limits), Ok(()));
        assert_eq!(open.try_open(one, &limits), Ok(()));
        assert_eq!(open.try_open(one, &limits), Err("--connections-per-peer-max"));
        assert_eq!(open.try_open(two, &limits), Ok(()));
        assert_eq!(open.try_open(two, &limits), Err("--connections-max"));
        open.close(one);
        assert_eq!(open.try_open(two, &limits), Ok(()));
        open.close(two);
        open.close(two);
        assert_eq!(open.per_peer.get(&two), None, "a peer without connections is forgotten");
        assert_eq!(open.total, 1);
    }

    #[test]
    fn an_ipv6_peer_counts_by_its_64_network_and_a_mapped_ipv4_as_itself() {
        let limits = ConnectionLimits { connections_per_peer_max: 2, ..ConnectionLimits::default() };
        let address = |text: &str| text.parse::<IpAddr>().expect("an address");
        let mut open = OpenConnections::default();
        assert_eq!(open.try_open(address("2001:db8:1:2::1"), &limits), Ok(()));
        assert_eq!(open.try_open(address("2001:db8:1:2:ffff::9"), &limits), Ok(()));
        assert_eq!(open.try_open(address("2001:db8:1:2::7"), &limits), Err("--connections-per-peer-max"));
        assert_eq!(open.try_open(address("2001:db8:1:3::1"), &limits), Ok(()), "another /64");
        assert_eq!(open.try_open(address("192.0.2.1"), &limits), Ok(()));
        assert_eq!(open.try_open(address("::ffff:192.0.2.1"), &limits), Ok(()));
        assert_eq!(open.try_open(address("::ffff:192.0.2.1"), &limits), Err("--connections-per-peer-max"));
        open.close(address("2001:db8:1:2::1"));
        assert_eq!(open.try_open(address("2001:db8:1:2::8"), &limits), Ok(()), "a closed one frees its network's slot");
    }
}
