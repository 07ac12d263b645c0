use confab::grpc::proto::confab_v1::{ListRoomsRequest, SendRequest, SubscribeRequest};
use tonic::Code;

use super::{TestServer, bounded};

async fn subscribers(server: &TestServer, room: &str) -> u64 {
    let mut client = server.confab().await;
    let rooms = client.list_rooms(ListRoomsRequest::default()).await.expect("rooms").into_inner().rooms;
    rooms.iter().find(|r| r.name == room).map_or(0, |r| r.subscribers)
}

/// 1,000 Subscribe streams opened and dropped by their clients leave no subscriber (and so no
/// actor task or queue) behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_streams_leave_nothing_behind() {
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    let mut streams = Vec::new();
    for _ in 0..1_000 {
        let request = SubscribeRequest { room: "busy".into(), after_seq: None, user: String::new() };
        let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
        bounded(stream.message()).await.expect("ok").expect("subscribed");
        streams.push(stream);
    }
    assert_eq!(subscribers(&server, "busy").await, 1_000);
    drop(streams);
    bounded(async {
        while subscribers(&server, "busy").await != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_unavailable() {
    let server = TestServer::start().await;
    let mut client = server.confab().await;
    let request = SubscribeRequest { room: "r".into(), after_seq: None, user: String::new() };
    let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
    bounded(stream.message()).await.expect("ok").expect("subscribed");
    client
        .send(SendRequest { room: "r".into(), user: "a".into(), client_msg_id: String::new(), body: "x".into() })
        .await
        .expect("send");
    bounded(stream.message()).await.expect("ok").expect("message");
    let stopping = tokio::spawn(server.stop());
    let ended = bounded(stream.message()).await.expect_err("ends with a status");
    assert_eq!(ended.code(), Code::Unavailable);
    assert!(ended.message().contains("shutting down"));
    bounded(stopping).await.expect("task").expect("server stopped cleanly");
}
