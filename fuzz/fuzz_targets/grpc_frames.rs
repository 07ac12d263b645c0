//! Every frame the gRPC transport parses from a client, from arbitrary bytes: protobuf decoding
//! of each inbound message type of both services, then the adapter's conversion into engine
//! input. Nothing may panic; a refused frame is an `ApiError`, which must map to a status.
#![no_main]

use confab::api::convert;
use confab::grpc::proto::{chat, confab_v1 as v1};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = v1::ClientFrame::decode(data) {
        if let Err(error) = convert::client_frame(frame) {
            let _ = tonic::Status::from(error);
        }
    }
    if let Ok(request) = v1::SendRequest::decode(data) {
        let _ = convert::room(&request.room);
        let _ = convert::draft(&request.user, &request.client_msg_id, request.body);
    }
    if let Ok(request) = v1::SubscribeRequest::decode(data) {
        let _ = convert::room(&request.room);
        let _ = convert::user(&request.user);
    }
    if let Ok(request) = v1::HistoryRequest::decode(data) {
        let _ = convert::room(&request.room);
    }
    if let Ok(chunk) = v1::UploadChunk::decode(data) {
        let _ = convert::room(&chunk.room);
        let _ = convert::draft(&chunk.user, "", chunk.body);
    }
    if let Ok(message) = chat::Message::decode(data) {
        let _ = convert::draft(&message.user, "", message.content);
    }
});
