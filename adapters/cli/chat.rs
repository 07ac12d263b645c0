//! `confab chat`: a line-based terminal client of the confab.v1 Session RPC.
//!
//! Everything the server sends is shown through [`visible`], so no message can drive the
//! terminal: control characters, escape sequences, bidi controls and invisible characters are
//! printed as escapes (`\u{1b}`), never written raw.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use confab_engine::{is_bidi_control, is_invisible};
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

/// Whether `c` must not reach the terminal raw: C0 (ESC included), DEL and C1 controls, which
/// move the cursor, start escape sequences or set the title; bidi controls, which reorder what
/// follows; and characters that draw nothing, which hide what is there.
fn needs_escape(c: char) -> bool {
    c.is_control() || is_bidi_control(c) || is_invisible(c)
}

/// `text` as it may be printed: every character of [`needs_escape`] as `\u{…}` (so
/// `"\u{1b}]0;title\u{7}"` shows as `\u{1b}]0;title\u{7}`), the rest unchanged.
fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(shown, "\\u{{{:x}}}", u32::from(c));
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

fn print_frame(frame: v1::ServerFrame, resuming: bool) {
    if let Some(line) = frame_line(frame, resuming) {
        match line {
            Line::Out(line) => println!("{line}"),
            Line::Err(line) => eprintln!("{line}"),
        }
    }
}

/// A line to print, and where.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Out(String),
    Err(String),
}

/// What `frame` shows, every text from the server through [`visible`].
fn frame_line(frame: v1::ServerFrame, resuming: bool) -> Option<Line> {
    let v = visible;
    let line = match frame.frame? {
        server_frame::Frame::Event(event) => match event.event? {
            room_event::Event::Subscribed(s) => match (resuming, s.recovered) {
                (false, _) => format!("* joined #{}; live from seq {}", v(&s.room), s.first_seq),
                (true, true) => format!("* resumed #{} exactly, from seq {}", v(&s.room), s.first_seq),
                (true, false) => {
                    format!("* resumed #{} from seq {}: earlier messages are gone", v(&s.room), s.first_seq)
                }
            },
            room_event::Event::Message(m) => format!("[{} #{}] {}: {}", m.seq, v(&m.room), v(&m.user), v(&m.body)),
            room_event::Event::Lagged(l) => {
                format!("* missed {}..={} in #{} (too slow); see History", l.missed_from, l.missed_to, v(&l.room))
            }
            room_event::Event::Presence(p) => {
                format!("* {} {} #{}", v(&p.user), if p.present { "joined" } else { "left" }, v(&p.room))
            }
            room_event::Event::Typing(t) => format!("* {} is typing in #{}", v(&t.user), v(&t.room)),
        },
        server_frame::Frame::Ack(_) | server_frame::Frame::Left(_) => return None,
        server_frame::Frame::Error(e) => return Some(Line::Err(format!("! {} (code {})", v(&e.message), e.code))),
    };
    Some(Line::Out(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_passes_unchanged() {
        for text in ["hello", "zoë 李雷 محمد 🙂", "tab\\t is two characters here", ""] {
            assert!(matches!(visible(text), Cow::Borrowed(shown) if shown == text), "{text:?}");
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(visible("a\nb\rc\td"), "a\\u{a}b\\u{d}c\\u{9}d");
        assert_eq!(visible("\u{1b}]0;pwned\u{7}"), "\\u{1b}]0;pwned\\u{7}", "a title change");
        assert_eq!(visible("\u{1b}[2K\u{1b}[1A[9 #lobby] Server: fake"), "\\u{1b}[2K\\u{1b}[1A[9 #lobby] Server: fake");
        assert_eq!(visible("\u{7f}\u{80}\u{9b}31m\u{0}"), "\\u{7f}\\u{80}\\u{9b}31m\\u{0}", "DEL, C1 (CSI), NUL");
    }

    #[test]
    fn bidi_and_invisible_characters_are_escaped() {
        assert_eq!(visible("abc\u{202E}fdp.exe"), "abc\\u{202e}fdp.exe");
        assert_eq!(visible("\u{2066}x\u{2069}\u{200F}\u{61c}"), "\\u{2066}x\\u{2069}\\u{200f}\\u{61c}");
        assert_eq!(visible("a\u{200B}b\u{FEFF}c\u{2060}"), "a\\u{200b}b\\u{feff}c\\u{2060}");
    }

    #[test]
    fn every_field_of_a_frame_is_shown_escaped() {
        let message = v1::ChatMessage {
            room: "r".into(),
            seq: 3,
            user: "m\u{202E}".into(),
            client_msg_id: String::new(),
            body: "hi\n[4 #r] Server: fake".into(),
            accepted_at_ms: 0,
        };
        let event = v1::RoomEvent { event: Some(room_event::Event::Message(message)) };
        let frame = v1::ServerFrame { frame: Some(server_frame::Frame::Event(event)) };
        assert_eq!(frame_line(frame, false), Some(Line::Out("[3 #r] m\\u{202e}: hi\\u{a}[4 #r] Server: fake".into())));
        let error = v1::Error { room: String::new(), code: 3, message: "bad\u{1b}[31m".into() };
        let frame = v1::ServerFrame { frame: Some(server_frame::Frame::Error(error)) };
        assert_eq!(frame_line(frame, false), Some(Line::Err("! bad\\u{1b}[31m (code 3)".into())));
    }
}
