//! A line-based TCP chat on smol that embeds the confab engine: a frontend with no tokio, no
//! gRPC and no HTTP, only `Engine::start_background()` and the handle's session.
//!
//! ```sh
//! cargo run --example line_chat -- 127.0.0.1:7878
//! nc 127.0.0.1 7878        # in two terminals: type a name, then lines to send
//! ```
//!
//! The first line a client sends is its name; it starts in `#lobby`. Then every line is a
//! message, `/join ROOM` moves to another room and `/quit` leaves. The client sees
//! `[seq #room] user: text` for every message, its own included, in the room's order, and
//! `* ...` lines for joins and leaves. It prints `line_chat listening on ADDR` first.

use std::error::Error;
use std::io;
use std::sync::Arc;

use confab_actors::{Engine, EngineConfig, SessionEvents, StreamEnd, StreamItem};
use confab_engine::{ClientFrame, RoomEvent, ServerFrame, UserName};
use futures::StreamExt;
use smol::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use smol::lock::Semaphore;
use smol::net::{TcpListener, TcpStream};

/// Where it listens without an argument.
const ADDRESS_DEFAULT: &str = "127.0.0.1:7878";

/// The room every client starts in.
const ROOM_DEFAULT: &str = "lobby";

/// Longest line a client may send, in bytes; a longer one ends the connection with a message.
const LINE_BYTES_MAX: u64 = 4_096;

/// Clients connected at once; more are told so and closed.
const CONNECTIONS_MAX: usize = 256;

fn main() -> Result<(), Box<dyn Error>> {
    let address = std::env::args().nth(1).unwrap_or_else(|| ADDRESS_DEFAULT.to_owned());
    // The engine's actors run on a tokio thread of their own; everything below is smol.
    let engine = Engine::start_background(EngineConfig::default())?;
    smol::block_on(async {
        let listener = TcpListener::bind(&address).await?;
        println!("line_chat listening on {}", listener.local_addr()?);
        let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
        loop {
            let (mut stream, _) = listener.accept().await?;
            let Some(slot) = slots.try_acquire_arc() else {
                let _ = stream.write_all(format!("! full: {CONNECTIONS_MAX} clients at once\n").as_bytes()).await;
                continue;
            };
            let engine = engine.clone();
            smol::spawn(async move {
                if let Err(error) = serve_client(&engine, stream).await {
                    eprintln!("line_chat: a client ended with: {error}");
                }
                drop(slot);
            })
            .detach();
        }
    })
}

/// One client: its name first, then lines in and session frames out, until it leaves.
async fn serve_client(engine: &Engine, stream: TcpStream) -> io::Result<()> {
    let mut reader = BufReader::new(stream.clone());
    let mut replies = stream.clone();
    replies.write_all(b"name?\n").await?;
    let Some(name) = read_line(&mut reader, &mut replies).await? else { return Ok(()) };
    let user = match UserName::new(name.trim()) {
        Ok(user) => user,
        Err(error) => return replies.write_all(format!("! name: {error}\n").as_bytes()).await,
    };
    let (frames, events) = engine.open_session(user.clone());
    let mut room = ROOM_DEFAULT.to_owned();
    frames.send(ClientFrame::Join { room: room.clone(), after_seq: None }).await.map_err(io::Error::other)?;
    // Frames are printed by a task of their own, so a quiet client still sees the room.
    let printer = smol::spawn(print_frames(events, user, stream));
    while let Some(line) = read_line(&mut reader, &mut replies).await? {
        let line = line.trim_end_matches(['\r', '\n']);
        let frame = if line == "/quit" {
            break;
        } else if let Some(next) = line.strip_prefix("/join ") {
            let leave = ClientFrame::Leave { room: std::mem::replace(&mut room, next.trim().to_owned()) };
            frames.send(leave).await.map_err(io::Error::other)?;
            ClientFrame::Join { room: room.clone(), after_seq: None }
        } else if line.is_empty() {
            continue;
        } else {
            ClientFrame::Send { room: room.clone(), client_msg_id: String::new(), body: line.to_owned() }
        };
        frames.send(frame).await.map_err(io::Error::other)?;
    }
    // A half-close: the session ends once this client's own messages have come back.
    frames.close().await.map_err(io::Error::other)?;
    printer.await
}

/// The next line, `None` at the end of input. A line over [`LINE_BYTES_MAX`] is refused.
async fn read_line(reader: &mut BufReader<TcpStream>, replies: &mut TcpStream) -> io::Result<Option<String>> {
    let mut line = String::new();
    let read = (&mut *reader).take(LINE_BYTES_MAX).read_line(&mut line).await?;
    if read == 0 {
        return Ok(None);
    }
    if !line.ends_with('\n') && read as u64 >= LINE_BYTES_MAX {
        replies.write_all(format!("! line over {LINE_BYTES_MAX} bytes; bye\n").as_bytes()).await?;
        return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
    }
    Ok(Some(line))
}

/// Writes each session frame as a line, until the session ends (saying why, if a room closed it).
async fn print_frames(mut events: SessionEvents, me: UserName, mut out: TcpStream) -> io::Result<()> {
    while let Some(item) = events.next().await {
        let line = match item {
            StreamItem::Next(frame) => render(&frame, &me),
            StreamItem::End(StreamEnd::Stalled(stalled)) => {
                Some(format!("! #{} closed the session: it read nothing while lagging; bye\n", stalled.room))
            }
            StreamItem::End(_) => None,
        };
        if let Some(line) = line {
            out.write_all(line.as_bytes()).await?;
        }
    }
    Ok(())
}

/// A frame as a line for a person, or `None` for frames a line chat does not show.
fn render(frame: &ServerFrame, me: &UserName) -> Option<String> {
    Some(match frame {
        ServerFrame::Event(RoomEvent::Subscribed { room, .. }) => {
            format!("* you are {me} in #{room}; type to talk, /join ROOM to move, /quit to leave\n")
        }
        ServerFrame::Event(RoomEvent::Message(message)) => {
            format!("[{} #{}] {}: {}\n", message.seq, message.room, message.user, message.body)
        }
        ServerFrame::Event(RoomEvent::Presence { room, user, present }) if user != me => {
            format!("* {user} {} #{room}\n", if *present { "joined" } else { "left" })
        }
        ServerFrame::Event(RoomEvent::Lagged { room, lag }) => {
            format!("* #{room}: missed messages {} to {}\n", lag.missed_from, lag.missed_to)
        }
        ServerFrame::Error { error, .. } => format!("! {error}\n"),
        _ => return None,
    })
}
