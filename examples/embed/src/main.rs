//! Embeds the confab engine with its one crate and no async runtime of the program's own: the
//! engine runs on a thread of its own (`Engine::start_background`), and this program drives
//! its futures with the few lines of `block_on` below.
//!
//! ```sh
//! cargo run --manifest-path examples/embed/Cargo.toml
//! ```
//!
//! It subscribes to a room, sends two messages (one of them twice: the retry is recognised),
//! reads them back from the subscription in order, pages the history, and shuts the engine
//! down for good. It checks what it reads and exits non-zero if anything is off.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use confab_actors::{ClientMsgId, Draft, Engine, EngineConfig, EngineError, RoomEvent, RoomName, StreamItem, UserName};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let engine = Engine::start_background(EngineConfig::default())?;
    let lobby = RoomName::new("lobby")?;
    let ann = UserName::new("ann")?;
    let draft = |id: &str, body: &str| -> Result<Draft, Box<dyn std::error::Error>> {
        Ok(Draft { user: ann.clone(), client_msg_id: ClientMsgId::new(id)?, body: body.into() })
    };

    let mut events = block_on(engine.subscribe(&lobby, None, None))?;
    let first = block_on(engine.send(&lobby, draft("m1", "hello")?))?;
    let retry = block_on(engine.send(&lobby, draft("m1", "hello")?))?;
    let second = block_on(engine.send(&lobby, draft("m2", "and goodbye")?))?;
    println!("sent #{} and #{}; the retry of m1 was recognised: {}", first.seq, second.seq, retry.duplicate);
    assert!(retry.duplicate && retry.seq == first.seq, "a retry is kept once (G4)");

    let mut seen = Vec::new();
    while seen.len() < 2 {
        match block_on(next(&mut events)) {
            Some(StreamItem::Next(RoomEvent::Message(message))) => {
                println!("[{} #{}] {}: {}", message.seq, message.room, message.user, message.body);
                seen.push(message.seq);
            }
            Some(StreamItem::Next(_)) => {}
            other => return Err(format!("the subscription ended early: {other:?}").into()),
        }
    }
    assert_eq!(seen, [first.seq, second.seq], "in the room's order (G1)");

    let page = block_on(engine.history(&lobby, 0, 0))?;
    println!("history: {} messages, last seq {}", page.messages.len(), page.last_seq);
    assert_eq!(page.messages.len(), 2);

    block_on(engine.shutdown())?;
    assert_eq!(block_on(engine.send(&lobby, draft("m3", "too late")?)), Err(EngineError::Stopped));
    println!("shut down; later calls are refused");
    Ok(())
}

/// The next item of a stream (the engine's streams are `futures::Stream`s; this avoids a
/// dependency for one call).
fn next<S: confab_actors::Stream + Unpin>(stream: &mut S) -> impl Future<Output = Option<S::Item>> {
    std::future::poll_fn(move |cx| std::pin::Pin::new(&mut *stream).poll_next(cx))
}

/// Runs `future` on this thread until it is ready, parking in between.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut context = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        std::thread::park();
    }
}
