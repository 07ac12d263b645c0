//! Every frame the WebSocket transport parses from a client, from arbitrary bytes: as a JSON
//! text frame (serde into the flattened frame, then the `confab.v1` message) and as a binary
//! protobuf frame, then the shared conversion into engine input. A refusal must map to a close
//! frame whose reason fits a control frame (125 bytes, cut on a character boundary), whatever
//! the message says. Nothing may panic.
#![no_main]

use confab::api::convert;
use confab::api::error::ApiError;
use confab::proto::confab_v1 as v1;
use confab::ws::close::close_frame;
use confab::ws::json;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn refuse(error: ApiError) {
    let frame = close_frame(Some(error));
    assert!(frame.reason.len() <= 123, "a close reason must fit a control frame");
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match serde_json::from_str::<json::ClientFrame>(text) {
            Ok(frame) => {
                if let Err(error) = convert::client_frame(v1::ClientFrame::from(frame)) {
                    refuse(error);
                }
            }
            Err(error) => refuse(ApiError::Malformed(format!("text frame is not a JSON client frame: {error}"))),
        }
        // Any message, however long or multi-byte, as a refusal's reason.
        refuse(ApiError::Malformed(text.to_owned()));
    }
    if let Ok(frame) = v1::ClientFrame::decode(data) {
        if let Err(error) = convert::client_frame(frame) {
            refuse(error);
        }
    }
});
