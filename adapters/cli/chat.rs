//! `confab chat`: a line-based terminal client of the confab.v1 Session RPC.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;

use crate::grpc::client::{ClientSecurity, connect};
use crate::grpc::proto::confab_v1::{self as v1, chat_client::ChatClient, client_frame, room_event, server_frame};

/// Flags of `confab chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Server address.
    #[arg(long, default_value = "http://127.0.0.1:50051", value_name = "URL")]
    server: String,
    /// Room to join.
    #[arg(long, default_value = "lobby")]
    room: String,
    /// Your name (default: your token's user, or "anonymous" on an open server). With a token,
    /// any other name is refused.
    #[arg(long)]
    user: Option<String>,
    #[command(flatten)]
    security: SecurityArgs,
    /// Resume after this sequence number (replays what you missed); default: live only.
    #[arg(long, value_name = "SEQ")]
    after_seq: Option<u64>,
}

/// How a client authenticates and verifies the server (`confab chat` and `confab bench`).
#[derive(Debug, Args)]
pub(crate) struct SecurityArgs {
    /// Bearer token for a server started with --tokens.
    #[arg(long, env = "CONFAB_TOKEN", hide_env_values = true, value_name = "TOKEN")]
    token: Option<String>,
    /// CA certificate (PEM) that signed the server's TLS certificate; use an https:// URL.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

impl SecurityArgs {
    pub(crate) fn client(&self) -> ClientSecurity {
        ClientSecurity { token: self.token.clone(), tls_ca: self.tls_ca.clone() }
    }
}

pub(crate) fn run(args: ChatArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(chat(args))
}

fn frame(frame: client_frame::Frame) -> v1::ClientFrame {
    v1::ClientFrame { frame: Some(frame) }
}

async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let mut client = ChatClient::new(connect(&args.server, &args.security.client()).await?);
    let (frames, outgoing) = mpsc::channel(16);
    frames
        .send(frame(client_frame::Frame::Join(v1::Join { room: args.room.clone(), after_seq: args.after_seq })))
        .await?;
    let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
    if let Some(user) = &args.user {
        let user = MetadataValue::try_from(user.as_str()).context("--user must be ASCII text")?;
        request.metadata_mut().insert("user", user);
    }
    let mut incoming = client.session(request).await.context("opening the session")?.into_inner();
    let room = args.room.clone();
    let typing = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.is_empty() {
                continue;
            }
            let post = v1::Post { room: room.clone(), client_msg_id: String::new(), body: line };
            if frames.send(frame(client_frame::Frame::Post(post))).await.is_err() {
                break;
            }
        }
        // Dropping `frames` half-closes: the server ends the session once our messages are back.
    });
    let resuming = args.after_seq.is_some();
    while let Some(frame) = incoming.message().await.context("reading from the server")? {
        print_frame(frame, resuming);
    }
    typing.abort();
    Ok(())
}

fn print_frame(frame: v1::ServerFrame, resuming: bool) {
    let Some(frame) = frame.frame else { return };
    match frame {
        server_frame::Frame::Event(event) => match event.event {
            Some(room_event::Event::Subscribed(s)) => match (resuming, s.recovered) {
                (false, _) => println!("* joined #{}; live from seq {}", s.room, s.first_seq),
                (true, true) => println!("* resumed #{} exactly, from seq {}", s.room, s.first_seq),
                (true, false) => println!("* resumed #{} from seq {}: earlier messages are gone", s.room, s.first_seq),
            },
            Some(room_event::Event::Message(m)) => println!("[{} #{}] {}: {}", m.seq, m.room, m.user, m.body),
            Some(room_event::Event::Lagged(l)) => {
                println!("* missed {}..={} in #{} (too slow); see History", l.missed_from, l.missed_to, l.room)
            }
            Some(room_event::Event::Presence(p)) => {
                println!("* {} {} #{}", p.user, if p.present { "joined" } else { "left" }, p.room)
            }
            Some(room_event::Event::Typing(t)) => println!("* {} is typing in #{}", t.user, t.room),
            None => {}
        },
        server_frame::Frame::Ack(_) | server_frame::Frame::Left(_) => {}
        server_frame::Frame::Error(e) => eprintln!("! {} (code {})", e.message, e.code),
    }
}
