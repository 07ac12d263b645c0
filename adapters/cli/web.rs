//! The `--ws-*` flags of `confab serve`: the web chat page and the WebSocket transport.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use confab_actors::Engine;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::net::ConnectionLimits;
use crate::ws::liveness::LivenessConfig;
use crate::ws::server::{WS_CONNECTIONS_MAX, WS_FRAME_BYTES_MAX, WsConfig, serve};

/// Where the page is served when `--ws-listen` is not given. If this port is taken, a free
/// port is used instead (the printed line says which), so `confab serve` always starts.
pub(crate) const WS_LISTEN_DEFAULT: &str = "127.0.0.1:8080";

/// Flags of the web chat page and WebSocket transport.
#[derive(Debug, Args)]
#[command(next_help_heading = "Web chat and WebSocket")]
pub(crate) struct WebArgs {
    /// Address of the web chat page and the WebSocket transport (ws://ADDR/ws), or `off`.
    /// Default: 127.0.0.1:8080, or a free port if 8080 is taken; an address given here must bind.
    #[arg(long, value_name = "ADDR|off", value_parser = parse_ws_listen)]
    ws_listen: Option<WsListen>,
    /// Largest WebSocket message a client may send, in bytes (bigger: the connection closes
    /// with code 1009).
    #[arg(long, default_value_t = WS_FRAME_BYTES_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    ws_frame_bytes_max: u64,
    /// WebSocket connections open at once (more: HTTP 503 before the upgrade).
    #[arg(long, default_value_t = WS_CONNECTIONS_MAX as u64, value_parser = clap::value_parser!(u64).range(1..))]
    ws_connections_max: u64,
    /// A client has this long to send a request's headers; a half-sent request is closed.
    #[arg(long, default_value = "10s", value_parser = super::parse_positive_duration, value_name = "DURATION")]
    ws_header_read_timeout: Duration,
    /// A WebSocket the server has not heard from for this long is pinged.
    #[arg(long, default_value = "20s", value_parser = super::parse_positive_duration, value_name = "DURATION")]
    ws_ping_interval: Duration,
    /// A WebSocket that answers no ping within this long is dropped; its session (and its
    /// presence) ends.
    #[arg(long, default_value = "20s", value_parser = super::parse_positive_duration, value_name = "DURATION")]
    ws_pong_timeout: Duration,
    /// A WebSocket whose client sends no frame of its own (pongs do not count) for this long
    /// is closed (1000, "idle").
    #[arg(long, default_value = "30m", value_parser = super::parse_positive_duration, value_name = "DURATION")]
    ws_idle_timeout: Duration,
    /// Origins (scheme://host[:port]) besides the page's own whose pages may open a WebSocket,
    /// comma-separated; `*` allows any. Others get HTTP 403.
    #[arg(long, value_name = "ORIGIN,...", value_delimiter = ',')]
    ws_allowed_origins: Vec<String>,
    /// Host names that requests may name besides the bound address (and `localhost` on
    /// loopback), comma-separated, for a server reached by name; `*` allows any. Others get
    /// HTTP 403 (a defence against DNS rebinding).
    #[arg(long, value_name = "HOST,...", value_delimiter = ',')]
    ws_allowed_hosts: Vec<String>,
}

/// The value of `--ws-listen`.
#[derive(Debug, Clone, Copy)]
enum WsListen {
    /// No page, no WebSocket.
    Off,
    /// Exactly this address.
    At(SocketAddr),
}

fn parse_ws_listen(text: &str) -> Result<WsListen, String> {
    if text == "off" {
        return Ok(WsListen::Off);
    }
    text.parse().map(WsListen::At).map_err(|error| format!("{error} (write an address like 127.0.0.1:8080, or off)"))
}

/// A running web server.
pub(crate) struct Web {
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

/// The web server's listener, bound before anything is printed so a busy address fails first.
pub(crate) struct WebListener {
    listener: TcpListener,
    config: WsConfig,
}

impl WebArgs {
    /// Binds the web address, unless `--ws-listen off`.
    pub(crate) async fn bind(&self) -> anyhow::Result<Option<WebListener>> {
        let listener = match self.ws_listen {
            Some(WsListen::Off) => return Ok(None),
            Some(WsListen::At(address)) => {
                TcpListener::bind(address).await.with_context(|| format!("--ws-listen {address}: cannot bind"))?
            }
            None => bind_default().await?,
        };
        Ok(Some(WebListener { listener, config: self.config() }))
    }

    /// The web port's configuration from the flags.
    pub(crate) fn config(&self) -> WsConfig {
        let size = |value: u64| usize::try_from(value).unwrap_or(usize::MAX);
        WsConfig {
            frame_bytes_max: size(self.ws_frame_bytes_max),
            connections_max: size(self.ws_connections_max),
            header_read_timeout: self.ws_header_read_timeout,
            liveness: LivenessConfig {
                ping_interval: self.ws_ping_interval,
                pong_timeout: self.ws_pong_timeout,
                idle_timeout: self.ws_idle_timeout,
            },
            allowed_origins: self.ws_allowed_origins.clone(),
            allowed_hosts: self.ws_allowed_hosts.clone(),
            ..WsConfig::default()
        }
    }
}

impl WebListener {
    /// Holds every WebSocket session to `limiter`'s rates (shared with the gRPC port) and to
    /// the server's tokens, like the gRPC ones.
    pub(crate) fn with_guards(
        mut self,
        limiter: crate::grpc::rate::SendLimiter,
        auth: crate::grpc::auth::Authenticator,
    ) -> Self {
        self.config.send_rate = limiter.rate();
        self.config.limiter = Some(limiter);
        self.config.auth = auth;
        self
    }

    /// The port's connection caps and deadlines, and TLS when the server has a certificate.
    pub(crate) fn with_transport(
        mut self,
        connections: ConnectionLimits,
        tls: Option<std::sync::Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> Self {
        self.config.connections = connections;
        self.config.tls = tls;
        self
    }

    /// Starts serving and prints the page's URL.
    pub(crate) fn start(self, engine: Engine) -> anyhow::Result<Web> {
        let address = self.listener.local_addr().context("reading the web address")?;
        let (http, ws) = if self.config.tls.is_some() { ("https", "wss") } else { ("http", "ws") };
        // Not println!: a parent that read only the first line may have closed the pipe, and
        // a failed print must not stop the server.
        let _ = writeln!(
            std::io::stdout(),
            "confab web chat on {http}://{address}/ (WebSocket {ws}://{address}/ws); open it in a browser"
        );
        info!(%address, config = ?self.config, "serving the web chat page and WebSocket transport");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(self.listener, engine, self.config, async {
            let _ = stopped.await;
        }));
        Ok(Web { stop, task })
    }
}

/// The default address, or a free port beside it when something else holds it.
async fn bind_default() -> anyhow::Result<TcpListener> {
    let address: SocketAddr = WS_LISTEN_DEFAULT.parse().context("the default web address")?;
    match TcpListener::bind(address).await {
        Ok(listener) => Ok(listener),
        Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
            warn!(%address, "port taken; serving the web chat on a free port instead (see --ws-listen)");
            TcpListener::bind(SocketAddr::new(address.ip(), 0)).await.context("binding a free port for the web chat")
        }
        Err(error) => Err(error).with_context(|| format!("--ws-listen {address}: cannot bind")),
    }
}

impl Web {
    /// Closes every WebSocket (1001, going away) and waits for them, at most `grace`.
    pub(crate) async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(error))) => Err(error).context("serving the web chat"),
            Ok(Err(error)) => Err(error).context("the web server task failed"),
            Err(_) => {
                warn!("WebSocket connections still open after the grace period; exiting anyway");
                Ok(())
            }
        }
    }
}
