//! `confab chat`: a line-based terminal client, a caller of [`confab_client::Client`]: it
//! rides out dropped connections and server restarts (reconnecting, resuming the room after
//! the last message shown, resending unacknowledged lines), so no line is shown twice and
//! nothing is skipped without a `*` line saying so.
//!
//! Everything the server sends is shown through [`visible`], so no message can drive the
//! terminal: control characters, escape sequences, bidi controls and invisible characters are
//! printed as escapes (`\u{1b}`), never written raw.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use confab_client::{Client, ClientOptions, ClientSecurity, Event};
use confab_engine::{is_bidi_control, is_invisible};
use tokio::io::{AsyncBufReadExt, BufReader};

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
        let security = ClientSecurity::default();
        let security = match &self.token {
            Some(token) => security.with_token(token.clone()),
            None => security,
        };
        match &self.tls_ca {
            Some(ca) => security.with_tls_ca(ca.clone()),
            None => security,
        }
    }
}

pub(crate) fn run(args: ChatArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(chat(args))
}

async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let options = ClientOptions::new(args.server.clone()).with_security(args.security.client());
    let options = match &args.user {
        Some(user) => options.with_user(user.clone()),
        None => options,
    };
    let (client, mut events) = Client::connect(options).await?;
    client.join(args.room.clone(), args.after_seq).await?;
    let room = args.room.clone();
    let typing = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.is_empty() {
                continue;
            }
            if client.send(room.clone(), line).await.is_err() {
                return;
            }
        }
        // Typed out: the session ends once every line is stored and has come back.
        let _ = client.close().await;
    });
    let resuming = args.after_seq.is_some();
    let mut end = Ok(());
    while let Some(event) = events.next().await {
        if let Event::Closed(result) = event {
            end = result;
            break;
        }
        print_event(event, resuming);
    }
    typing.abort();
    end.context("the session ended")
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

/// `error` and its sources, joined: a connection error says little at the top level.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn print_event(event: Event, resuming: bool) {
    if let Some(line) = event_line(event, resuming) {
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

/// What `event` shows, every text from the server through [`visible`]. Connection notices go
/// to stderr, so stdout is the conversation.
fn event_line(event: Event, resuming: bool) -> Option<Line> {
    let v = visible;
    let line = match event {
        Event::Joined { room, first_seq, recovered, .. } => match (resuming, recovered) {
            (false, _) => format!("* joined #{}; live from seq {first_seq}", v(&room)),
            (true, true) => format!("* resumed #{} exactly, from seq {first_seq}", v(&room)),
            (true, false) => format!("* resumed #{} from seq {first_seq}: earlier messages are gone", v(&room)),
        },
        Event::Resumed { room, first_seq, recovered: true, .. } => {
            format!("* resumed #{} exactly, from seq {first_seq}", v(&room))
        }
        Event::Resumed { room, first_seq, recovered: false, .. } => {
            format!("* resumed #{} from seq {first_seq}: earlier messages are gone", v(&room))
        }
        Event::Message(m) => format!("[{} #{}] {}: {}", m.seq, v(&m.room), v(&m.user), v(&m.body)),
        Event::Lagged { room, missed_from, missed_to } => {
            format!("* missed {missed_from}..={missed_to} in #{} (too slow); see History", v(&room))
        }
        Event::Presence { room, user, present } => {
            format!("* {} {} #{}", v(&user), if present { "joined" } else { "left" }, v(&room))
        }
        Event::Typing { room, user } => format!("* {} is typing in #{}", v(&user), v(&room)),
        Event::Refused(refusal) => {
            return Some(Line::Err(format!("! {} (code {})", v(&refusal.message), i32::from(refusal.code))));
        }
        Event::Disconnected { reason } => {
            return Some(Line::Err(format!("* connection lost: {}; reconnecting", v(&error_chain(&reason)))));
        }
        Event::Reconnected { outage } => return Some(Line::Err(format!("* reconnected after {outage:.1?}"))),
        _ => return None,
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
    fn every_field_of_an_event_is_shown_escaped() {
        let message = confab_client::Message {
            room: "r".into(),
            seq: 3,
            user: "m\u{202E}".into(),
            client_msg_id: String::new(),
            body: "hi\n[4 #r] Server: fake".into(),
            accepted_at_ms: 0,
        };
        let line = event_line(Event::Message(message), false);
        assert_eq!(line, Some(Line::Out("[3 #r] m\\u{202e}: hi\\u{a}[4 #r] Server: fake".into())));
        let refusal = confab_client::Refusal {
            room: String::new(),
            request: confab_client::Request::Join,
            code: tonic::Code::InvalidArgument,
            message: "bad\u{1b}[31m".into(),
        };
        let line = event_line(Event::Refused(refusal), false);
        assert_eq!(line, Some(Line::Err("! bad\\u{1b}[31m (code 3)".into())));
        let reason = confab_client::LinkError::Status(tonic::Status::unavailable("gone\u{7}"));
        let line = event_line(Event::Disconnected { reason }, false);
        let shown = "* connection lost: the session call ended: code: 'The service is currently unavailable', message: \"gone\\u{7}\"; reconnecting";
        assert_eq!(line, Some(Line::Err(shown.into())));
    }

    #[test]
    fn an_inexact_resume_says_what_is_gone() {
        let resumed = |recovered| Event::Resumed { room: "r".into(), epoch: 1, first_seq: 7, recovered };
        assert_eq!(event_line(resumed(true), false), Some(Line::Out("* resumed #r exactly, from seq 7".into())));
        let line = Some(Line::Out("* resumed #r from seq 7: earlier messages are gone".into()));
        assert_eq!(event_line(resumed(false), false), line);
    }
}
