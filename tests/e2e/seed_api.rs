use std::collections::BTreeMap;
use std::sync::Arc;

use confab::grpc::proto::chat::Message;
use tokio::sync::{Barrier, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use super::{TestServer, bounded, with_metadata};

fn message(user: &str, content: &str) -> Message {
    Message { user: user.into(), content: content.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_hello_replies_exactly_and_appends_to_the_room() {
    let server = TestServer::start().await;
    let mut client = server.seed().await;
    let reply = client.say_hello(message("Alice", "Hi there")).await.expect("hello").into_inner();
    assert_eq!(reply, message("Server", "Hello, Alice! Thanks for your message."));
    let other = client.say_hello(with_metadata(message("Bob", "in ops"), "room", "ops")).await.expect("hello");
    assert_eq!(other.into_inner().content, "Hello, Bob! Thanks for your message.");
    let lobby = server.engine.room(&confab_engine::RoomName::new("lobby").expect("name")).await.expect("info");
    assert_eq!(lobby.expect("lobby exists").last_seq, 1, "metadata room routes the second message elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_replays_the_room_between_welcome_and_finished() {
    let server = TestServer::start().await;
    let mut client = server.seed().await;
    let empty: Vec<Message> =
        collect(client.broadcast_messages(message("x", "")).await.expect("broadcast").into_inner()).await;
    assert_eq!(empty, vec![message("Server", "Welcome to the broadcast!"), message("Server", "Broadcast finished.")]);
    client.say_hello(message("Alice", "one")).await.expect("hello");
    client.say_hello(message("Bob", "two")).await.expect("hello");
    let replay = collect(client.broadcast_messages(message("x", "")).await.expect("broadcast").into_inner()).await;
    assert_eq!(
        replay,
        vec![
            message("Server", "Welcome to the broadcast!"),
            message("Alice", "one"),
            message("Bob", "two"),
            message("Server", "Broadcast finished."),
        ]
    );
}

async fn collect(mut stream: tonic::Streaming<Message>) -> Vec<Message> {
    let mut got = Vec::new();
    while let Some(m) = bounded(stream.message()).await.expect("stream ends OK") {
        got.push(m);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_stream_replies_exactly() {
    let server = TestServer::start().await;
    let mut client = server.seed().await;
    let messages = vec![message("Alice", "part 1"), message("Bob", "part 2"), message("Carol", "part 3")];
    let reply = client.upload_stream(tokio_stream::iter(messages)).await.expect("upload").into_inner();
    assert_eq!(reply, message("Server", "Finished receiving stream from Carol. Got 3 messages."));
    let none = client.upload_stream(tokio_stream::iter(Vec::<Message>::new())).await.expect("upload").into_inner();
    assert_eq!(none.content, "Finished receiving stream from . Got 0 messages.");
}

/// 50 ChatStream clients in one room: after all joined, each sends 10 messages; every client
/// sees the same sequence, and each sender's messages in its send order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_chat_streams_see_one_order() {
    const CLIENTS: usize = 50;
    const PER_CLIENT: usize = 10;
    let server = TestServer::start().await;
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut client = server.seed().await;
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let name = format!("user{c:02}");
            let (outgoing, requests) = mpsc::channel(PER_CLIENT + 1);
            outgoing.send(message(&name, "hello")).await.expect("queue");
            let request = with_metadata(ReceiverStream::new(requests), "room", "crowd");
            let mut incoming = client.chat_stream(request).await.expect("chat").into_inner();
            // Joined once our own hello came back.
            loop {
                let m = bounded(incoming.message()).await.expect("ok").expect("message");
                if m.user == name && m.content == "hello" {
                    break;
                }
            }
            barrier.wait().await;
            for i in 0..PER_CLIENT {
                outgoing.send(message(&name, &format!("m-{i}"))).await.expect("queue");
            }
            drop(outgoing);
            let mut seen = Vec::new();
            while let Some(m) = bounded(incoming.message()).await.expect("ends OK after half-close") {
                if m.content.starts_with("m-") {
                    seen.push((m.user, m.content));
                }
            }
            seen
        }));
    }
    let mut views = Vec::new();
    for task in tasks {
        views.push(task.await.expect("client"));
    }
    // A client's stream ends once its own messages are back, so a view may lack the tail sent by
    // others after that; every view must be a prefix of the longest.
    let longest = views.iter().max_by_key(|v| v.len()).expect("views").clone();
    assert_eq!(longest.len(), CLIENTS * PER_CLIENT, "the last client to finish saw everything");
    for view in &views {
        assert_eq!(view[..], longest[..view.len()], "G1: every client sees the same order");
    }
    let mut next_by_user: BTreeMap<&str, usize> = BTreeMap::new();
    for (user, content) in &longest {
        let n = next_by_user.entry(user).or_insert(0);
        assert_eq!(content, &format!("m-{n}"), "G3: {user}'s messages in send order");
        *n += 1;
    }
}
