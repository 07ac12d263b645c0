//! The shell around [`Conversation`]: one task per [`Client`] that owns the `Session` call,
//! feeds the conversation what the caller and the server say, sends what it says to send, hands
//! its events to the caller, and reconnects with backoff ([`crate::backoff`]) when the
//! connection drops. The caller talks to the task through two bounded channels: requests in
//! ([`Client`]), events out ([`Events`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Endpoint;

use crate::backoff::{Backoff, Reconnect};
use crate::connect::{BearerToken, ClientSecurity, ConnectError, LinkError, endpoint};
use crate::conversation::{Conversation, Outgoing};
use crate::event::Event;
use crate::proto::confab_v1::{self as v1, chat_client::ChatClient};

/// Requests (joins, sends, leaves) a client holds that the server has not answered, counting
/// those made during an outage. Above it, [`Client::send`] and the others wait: a caller that
/// sends faster than the server answers, or through a long outage, is slowed down, not
/// buffered without end.
pub const REQUESTS_PENDING_MAX: usize = 1024;

/// Events the client buffers for its caller. A caller that does not read stops the client
/// reading the server; the server then reports lag (or ends the connection, which the client
/// resumes), so a slow caller costs neither side unbounded memory.
pub const EVENTS_BUFFERED_MAX: usize = 256;

/// How long opening the `Session` call may take on an established connection (the server
/// answers at once; one that does not is treated like a dropped connection).
pub const SESSION_OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often an idle connection is pinged, so that a server that vanished without closing the
/// connection (a network partition, a frozen host) is noticed and the client reconnects.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// How long a ping may go unanswered before the connection counts as dropped.
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Frames queued for the connection's request stream: the conversation has one request
/// outstanding at a time, so this never fills.
const OUTGOING_FRAMES_MAX: usize = 4;

/// Requests on their way from the [`Client`] handles to the session's task (the bound that
/// matters is [`REQUESTS_PENDING_MAX`], behind it).
const COMMANDS_BUFFERED: usize = 64;

/// The request metadata key that names the session's user (on a server without tokens).
const USER_KEY: &str = "user";

/// Where and how a [`Client`] connects.
///
/// ```
/// use confab_client::{ClientOptions, ClientSecurity};
///
/// let options = ClientOptions::new("https://chat.example:50051")
///     .with_security(ClientSecurity::default().with_tls_ca("ca.pem").with_token("s3cret-token-0123"))
///     .with_user("ann");
/// assert_eq!(options.user.as_deref(), Some("ann"));
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientOptions {
    /// The server's URL (`http://host:port`, or `https://` with a CA certificate).
    pub server: String,
    /// The bearer token and TLS settings.
    pub security: ClientSecurity,
    /// The user to chat as on a server without tokens (`None`: the server's default,
    /// "anonymous"). With a token the server takes the user from it and refuses another name.
    pub user: Option<String>,
    /// The reconnection delays and how long to keep trying.
    pub reconnect: Reconnect,
}

impl ClientOptions {
    /// Options for `server`, with no token, no TLS, the default user and reconnection.
    pub fn new(server: impl Into<String>) -> Self {
        Self { server: server.into(), security: ClientSecurity::default(), user: None, reconnect: Reconnect::default() }
    }

    /// The same, with these security settings.
    pub fn with_security(self, security: ClientSecurity) -> Self {
        Self { security, ..self }
    }

    /// The same, chatting as `user`.
    pub fn with_user(self, user: impl Into<String>) -> Self {
        Self { user: Some(user.into()), ..self }
    }

    /// The same, with these reconnection settings.
    pub fn with_reconnect(self, reconnect: Reconnect) -> Self {
        Self { reconnect, ..self }
    }
}

/// Why the session ended on its own ([`Event::Closed`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The server refused the session in a way reconnecting cannot fix (the token was revoked,
    /// …).
    #[error("the server refused the session")]
    Refused(#[source] Status),
    /// No connection for the longest outage allowed ([`Reconnect::outage_max`]).
    #[error("no connection for {outage:?}; gave up")]
    GaveUp {
        /// How long the client tried.
        outage: Duration,
        /// What the last attempt ran into (`None` if the limit left no time for one).
        #[source]
        last: Option<LinkError>,
    },
}

/// The session's task is gone: it was closed, gave up, or its [`Events`] were dropped.
#[derive(Debug, thiserror::Error)]
#[error("the session has ended")]
pub struct Closed;

/// What the caller asks of the session's task.
#[derive(Debug)]
enum Command {
    Join { room: String, after_seq: Option<u64> },
    Send { room: String, client_msg_id: String, body: String },
    Leave { room: String },
    Close,
}

/// A chat session with a server, over the `Session` call, that survives dropped connections.
///
/// Requests return once the session has taken them; their outcomes arrive in order as
/// [`Event`]s on the [`Events`] that [`Client::connect`] returned with it. When the connection
/// drops, the client reconnects on its own, resumes every joined room exactly after the last
/// message it handed over, and resends what the server had not acknowledged with the same
/// client message id (the server stores it once): the caller sees each message once and no
/// unannounced gap. Clones share the session.
#[derive(Clone, Debug)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    ids: Arc<MessageIds>,
}

/// The events of a [`Client`]'s session, in order; [`Event::Closed`] is the last.
#[derive(Debug)]
pub struct Events {
    receiver: mpsc::Receiver<Event>,
}

impl Events {
    /// The next event; `None` after [`Event::Closed`]. Dropping `Events` ends the session at
    /// once (nobody would hear what happens next).
    ///
    /// ```no_run
    /// # async fn example(mut events: confab_client::Events) {
    /// use confab_client::Event;
    ///
    /// while let Some(event) = events.next().await {
    ///     match event {
    ///         Event::Message(message) => println!("[{}] {}: {}", message.seq, message.user, message.body),
    ///         Event::Lagged { missed_from, missed_to, .. } => println!("missed {missed_from}..={missed_to}"),
    ///         Event::Resumed { recovered: false, first_seq, .. } => println!("history lost before {first_seq}"),
    ///         Event::Closed(result) => println!("ended: {result:?}"),
    ///         _ => {}
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn next(&mut self) -> Option<Event> {
        self.receiver.recv().await
    }
}

impl Client {
    /// Connects to `options.server` and opens a session; the connection must succeed now (a
    /// wrong address, certificate or token is reported here), later drops are ridden out.
    /// Spawns the session's task on the current tokio runtime.
    ///
    /// ```no_run
    /// use confab_client::{Client, ClientOptions, Event};
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
    /// let (client, mut events) = Client::connect(ClientOptions::new("http://127.0.0.1:50051").with_user("ann")).await?;
    /// client.join("lobby", None).await?;
    /// let id = client.send("lobby", "hello").await?;
    /// while let Some(event) = events.next().await {
    ///     if let Event::Sent { client_msg_id, seq, .. } = &event {
    ///         if *client_msg_id == id {
    ///             println!("stored as #{seq}");
    ///             break;
    ///         }
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(options: ClientOptions) -> Result<(Client, Events), ConnectError> {
        let (endpoint, token) = endpoint(&options.server, &options.security)?;
        let endpoint = endpoint
            .http2_keep_alive_interval(HTTP2_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let user = options
            .user
            .as_deref()
            .map(|user| MetadataValue::try_from(user).map_err(|_| ConnectError::User { user: user.to_owned() }))
            .transpose()?;
        let seed = random_seed();
        let link = Link { endpoint, token, user };
        let server = options.server.clone();
        let connection = link.open().await.map_err(|error| match error {
            LinkError::Connect(source) => ConnectError::Connect { server, source },
            other => ConnectError::Session { server, source: other },
        })?;
        let (commands, command_receiver) = mpsc::channel(COMMANDS_BUFFERED);
        let (event_sender, events) = mpsc::channel(EVENTS_BUFFERED_MAX);
        let driver = Driver {
            link,
            conversation: Conversation::new(),
            commands: command_receiver,
            commands_open: true,
            events: event_sender,
            backoff: Backoff::new(options.reconnect, seed),
        };
        tokio::spawn(driver.run(connection));
        let ids = Arc::new(MessageIds { prefix: format!("{seed:016x}"), next: AtomicU64::new(1) });
        Ok((Client { commands, ids }, Events { receiver: events }))
    }

    /// Joins `room`: live from now (`None`), or resuming after `after_seq` (the messages since
    /// are delivered first). [`Event::Joined`] or [`Event::Refused`] answers.
    ///
    /// ```no_run
    /// # async fn example(client: confab_client::Client) -> Result<(), confab_client::Closed> {
    /// client.join("lobby", Some(41)).await?; // replays from #42 on
    /// # Ok(())
    /// # }
    /// ```
    pub async fn join(&self, room: impl Into<String>, after_seq: Option<u64>) -> Result<(), Closed> {
        self.command(Command::Join { room: room.into(), after_seq }).await
    }

    /// Sends `body` to a joined `room` under a new client message id, which it returns:
    /// [`Event::Sent`] with that id answers (or [`Event::Refused`]), and the message comes
    /// back as an [`Event::Message`] like everyone else's. Made during an outage, it is sent
    /// once the connection is back.
    ///
    /// ```no_run
    /// # async fn example(client: confab_client::Client) -> Result<(), confab_client::Closed> {
    /// let id = client.send("lobby", "hello").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&self, room: impl Into<String>, body: impl Into<String>) -> Result<String, Closed> {
        let client_msg_id = self.ids.next();
        let command = Command::Send { room: room.into(), client_msg_id: client_msg_id.clone(), body: body.into() };
        self.command(command).await?;
        Ok(client_msg_id)
    }

    /// Sends `body` under the caller's own `client_msg_id` (up to 64 bytes), for a caller that
    /// keeps its outbox across restarts of its own: a send with an id the room has seen from
    /// this user is stored once (the server's dedupe window).
    ///
    /// ```no_run
    /// # async fn example(client: confab_client::Client) -> Result<(), confab_client::Closed> {
    /// client.send_with_id("lobby", "outbox-7", "hello").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send_with_id(
        &self,
        room: impl Into<String>,
        client_msg_id: impl Into<String>,
        body: impl Into<String>,
    ) -> Result<(), Closed> {
        let command = Command::Send { room: room.into(), client_msg_id: client_msg_id.into(), body: body.into() };
        self.command(command).await
    }

    /// Leaves `room`. [`Event::Left`] answers.
    ///
    /// ```no_run
    /// # async fn example(client: confab_client::Client) -> Result<(), confab_client::Closed> {
    /// client.leave("lobby").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn leave(&self, room: impl Into<String>) -> Result<(), Closed> {
        self.command(Command::Leave { room: room.into() }).await
    }

    /// Ends the session once everything asked before is answered and this client's own
    /// messages have come back; [`Event::Closed`] follows. Requests made after it are refused.
    /// Dropping every clone of the client does the same.
    ///
    /// ```no_run
    /// # async fn example(client: confab_client::Client, mut events: confab_client::Events) -> Result<(), confab_client::Closed> {
    /// client.send("lobby", "bye").await?;
    /// client.close().await?;
    /// while let Some(event) = events.next().await {} // "bye" comes back, then Closed
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(&self) -> Result<(), Closed> {
        self.command(Command::Close).await
    }

    async fn command(&self, command: Command) -> Result<(), Closed> {
        self.commands.send(command).await.map_err(|_| Closed)
    }
}

/// Client message ids: unique per client (a random prefix, so two clients of one user, or one
/// client run twice, never collide in the server's dedupe), numbered in send order.
#[derive(Debug)]
struct MessageIds {
    prefix: String,
    next: AtomicU64,
}

impl MessageIds {
    fn next(&self) -> String {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        format!("{}-{number}", self.prefix)
    }
}

/// A seed that differs between clients and runs: the process's random hash keys, the process
/// id and the time.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    if let Ok(since_epoch) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        hasher.write_u128(since_epoch.as_nanos());
    }
    hasher.finish()
}

/// How to open a session on a new connection.
struct Link {
    endpoint: Endpoint,
    token: BearerToken,
    user: Option<MetadataValue<Ascii>>,
}

/// One open `Session` call.
struct Connection {
    /// The request stream; dropping it half-closes.
    frames: Option<mpsc::Sender<v1::ClientFrame>>,
    incoming: tonic::Streaming<v1::ServerFrame>,
}

impl Link {
    /// A new connection with a `Session` call open on it.
    async fn open(&self) -> Result<Connection, LinkError> {
        let channel = self.endpoint.connect().await.map_err(LinkError::Connect)?;
        let mut chat = ChatClient::new(InterceptedService::new(channel, self.token.clone()));
        let (frames, outgoing) = mpsc::channel(OUTGOING_FRAMES_MAX);
        let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
        if let Some(user) = &self.user {
            request.metadata_mut().insert(USER_KEY, user.clone());
        }
        let response = tokio::time::timeout(SESSION_OPEN_TIMEOUT, chat.session(request))
            .await
            .map_err(|_| LinkError::Timeout(SESSION_OPEN_TIMEOUT))?
            .map_err(LinkError::Status)?;
        Ok(Connection { frames: Some(frames), incoming: response.into_inner() })
    }
}

/// The caller went away (dropped [`Events`]): the task stops.
struct CallerGone;

/// The session's task.
struct Driver {
    link: Link,
    conversation: Conversation,
    commands: mpsc::Receiver<Command>,
    /// `false` once every [`Client`] clone is dropped (which closes the session).
    commands_open: bool,
    events: mpsc::Sender<Event>,
    backoff: Backoff,
}

impl Driver {
    async fn run(mut self, first: Connection) {
        // `Err(CallerGone)`: nobody listens, so there is nobody to tell how it ended.
        if let Ok(result) = self.serve(first).await {
            let _ = self.events.send(Event::Closed(result)).await;
        }
    }

    /// Converses over `connection`, and over new ones after drops, until the session ends.
    async fn serve(&mut self, first: Connection) -> Result<Result<(), SessionError>, CallerGone> {
        let mut connection = first;
        self.conversation.handle_connected();
        loop {
            let error = match self.converse(&mut connection).await? {
                Ok(()) => return Ok(Ok(())),
                Err(error) => error,
            };
            let error = match error.into_permanent() {
                Ok(status) => return Ok(Err(SessionError::Refused(status))),
                Err(error) => error,
            };
            let lost_at = Instant::now();
            self.emit(Event::Disconnected { reason: error }).await?;
            self.conversation.handle_disconnected();
            self.flush_events().await?;
            connection = match self.reconnect(lost_at).await? {
                Ok(connection) => connection,
                Err(error) => return Ok(Err(error)),
            };
            self.backoff.reset();
            self.emit(Event::Reconnected { outage: lost_at.elapsed() }).await?;
            self.conversation.handle_connected();
        }
    }

    /// One connection until it ends: `Ok` when the session finished after the half-close.
    async fn converse(&mut self, connection: &mut Connection) -> Result<Result<(), LinkError>, CallerGone> {
        loop {
            while let Some(outgoing) = self.conversation.poll_outgoing() {
                match outgoing {
                    Outgoing::Frame(frame) => {
                        if let Some(frames) = &connection.frames {
                            // A send fails only when the call is already over, which the
                            // incoming side reports next.
                            let _ = frames.send(frame).await;
                        }
                    }
                    Outgoing::HalfClose => connection.frames = None,
                }
            }
            self.flush_events().await?;
            let taking = self.commands_open && self.conversation.pending() < REQUESTS_PENDING_MAX;
            tokio::select! {
                command = self.commands.recv(), if taking => self.take(command),
                frame = connection.incoming.message() => match frame {
                    Ok(Some(frame)) => self.conversation.handle_frame(frame),
                    Ok(None) if self.conversation.is_half_closed() => return Ok(Ok(())),
                    Ok(None) => return Ok(Err(LinkError::Ended)),
                    Err(status) => return Ok(Err(LinkError::Status(status))),
                },
            }
        }
    }

    /// Tries to connect again with backoff, taking the caller's requests meanwhile, until a
    /// session is open, a refusal is permanent, or the outage is over its limit.
    async fn reconnect(&mut self, lost_at: Instant) -> Result<Result<Connection, SessionError>, CallerGone> {
        let mut last = None;
        loop {
            let outage = lost_at.elapsed();
            if outage >= self.backoff.outage_max() {
                return Ok(Err(SessionError::GaveUp { outage, last }));
            }
            let wait = tokio::time::sleep(self.backoff.next_delay());
            tokio::pin!(wait);
            loop {
                let taking = self.commands_open && self.conversation.pending() < REQUESTS_PENDING_MAX;
                tokio::select! {
                    () = &mut wait => break,
                    command = self.commands.recv(), if taking => self.take(command),
                }
                self.flush_events().await?;
            }
            match self.link.open().await.map_err(LinkError::into_permanent) {
                Ok(connection) => return Ok(Ok(connection)),
                Err(Ok(status)) => return Ok(Err(SessionError::Refused(status))),
                Err(Err(error)) => last = Some(error),
            }
        }
    }

    /// Feeds one caller request (or the caller's going away) to the conversation.
    fn take(&mut self, command: Option<Command>) {
        match command {
            Some(Command::Join { room, after_seq }) => self.conversation.handle_join(room, after_seq),
            Some(Command::Send { room, client_msg_id, body }) => {
                self.conversation.handle_send(room, client_msg_id, body)
            }
            Some(Command::Leave { room }) => self.conversation.handle_leave(room),
            Some(Command::Close) => self.conversation.handle_close(),
            None => {
                self.commands_open = false;
                self.conversation.handle_close();
            }
        }
    }

    async fn flush_events(&mut self) -> Result<(), CallerGone> {
        while let Some(event) = self.conversation.poll_event() {
            self.emit(event).await?;
        }
        Ok(())
    }

    async fn emit(&self, event: Event) -> Result<(), CallerGone> {
        self.events.send(event).await.map_err(|_| CallerGone)
    }
}
