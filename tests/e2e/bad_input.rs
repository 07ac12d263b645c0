use confab::grpc::proto::confab_v1::{
    HistoryRequest, SendRequest, SubscribeRequest, UploadChunk, UploadReceipt, room_event,
};
use confab_engine::Limits;
use tonic::Code;

use super::{TestServer, bounded};

fn send(room: &str, body: String) -> SendRequest {
    SendRequest { room: room.into(), user: "ann".into(), client_msg_id: String::new(), body }
}

/// An upload chunk whose body is raw bytes, to send bytes that are not UTF-8 (garbage).
#[derive(Clone, PartialEq, prost::Message)]
struct RawChunk {
    #[prost(string, tag = "1")]
    room: String,
    #[prost(string, tag = "2")]
    user: String,
    #[prost(bytes = "vec", tag = "3")]
    body: Vec<u8>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_statuses_while_other_streams_carry_on() {
    let server = TestServer::start_with(Limits { message_bytes_max: 1_000, ..Limits::default() }).await;
    let mut client = server.confab().await;
    let request = SubscribeRequest { room: "calm".into(), after_seq: None, user: String::new() };
    let mut watcher = client.subscribe(request).await.expect("subscribe").into_inner();
    bounded(watcher.message()).await.expect("ok").expect("subscribed");

    let empty = client.send(send("", "x".into())).await.expect_err("empty room");
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("room"), "names the field: {}", empty.message());
    let spaced = client.send(send("no spaces", "x".into())).await.expect_err("bad charset");
    assert_eq!(spaced.code(), Code::InvalidArgument);
    let big = client.send(send("calm", "x".repeat(1_001))).await.expect_err("too big");
    assert_eq!(big.code(), Code::ResourceExhausted);
    assert!(big.message().contains("1000"), "names the limit: {}", big.message());
    let unknown = client
        .history(HistoryRequest { room: "never-used".into(), after_seq: 0, limit: 10 })
        .await
        .expect_err("unknown room");
    assert_eq!(unknown.code(), Code::NotFound);

    let mixed = vec![
        UploadChunk { room: "calm".into(), user: "u".into(), body: "fine".into() },
        UploadChunk { room: "other".into(), user: "u".into(), body: "wrong room".into() },
    ];
    let mismatch = client.upload(tokio_stream::iter(mixed)).await.expect_err("room changed");
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    let no_chunks = client.upload(tokio_stream::iter(Vec::<UploadChunk>::new())).await.expect_err("names no room");
    assert_eq!(no_chunks.code(), Code::InvalidArgument);

    // Bytes that are not UTF-8 where the proto says string: the server cannot decode the chunk.
    let mut raw = tonic::client::Grpc::new(server.channel().await);
    raw.ready().await.expect("ready");
    let garbage = vec![
        RawChunk { room: "calm".into(), user: "u".into(), body: b"ok".to_vec() },
        RawChunk { room: String::new(), user: "u".into(), body: vec![0xff, 0xfe, 0x00, 0xc3] },
    ];
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/confab.v1.Chat/Upload");
    let codec = tonic_prost::ProstCodec::<RawChunk, UploadReceipt>::default();
    let decoded = raw.client_streaming(tonic::Request::new(tokio_stream::iter(garbage)), path, codec).await;
    assert_eq!(decoded.expect_err("garbage").code(), Code::InvalidArgument);
    // The same garbage as a unary call: the client's fault too, not the server's INTERNAL
    // (which is also logged at WARN, once per call).
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/confab.v1.Chat/Send");
    let codec = tonic_prost::ProstCodec::<RawChunk, UploadReceipt>::default();
    let bad = RawChunk { room: String::new(), user: "u".into(), body: vec![0xff, 0xfe, 0x00, 0xc3] };
    raw.ready().await.expect("ready");
    let unary = raw.unary(tonic::Request::new(bad), path, codec).await.expect_err("garbage");
    assert_eq!(unary.code(), Code::InvalidArgument, "{unary:?}");
    assert!(unary.message().contains("malformed message"), "{unary:?}");

    // Nothing of the refused requests reached the room, and the watcher still gets live messages.
    let ok = client.send(send("calm", "still fine".into())).await.expect("send").into_inner();
    assert_eq!(ok.seq, 1, "refused sends and aborted uploads appended nothing");
    match bounded(watcher.message()).await.expect("ok").expect("event").event {
        Some(room_event::Event::Message(m)) => assert_eq!((m.seq, m.body.as_str()), (1, "still fine")),
        other => panic!("expected the message, got {other:?}"),
    }
}
