use confab_engine::{Checksum, Limits, Room, UploadAggregator, UploadError};

use super::{at, draft, room_name, user};

#[test]
fn commit_hands_over_the_whole_batch_as_one_run() {
    let mut room = Room::new(room_name("r"), 1, &Limits::default(), at(0));
    room.handle_send(draft("x", "", "before"), at(0)).expect("accepted");
    let mut upload = UploadAggregator::new(room_name("r"), &Limits::default());
    for (who, body) in [("alice", "a"), ("bob", "bb"), ("carol", "ccc")] {
        upload.handle_chunk(draft(who, "", body)).expect("chunk");
    }
    assert_eq!(room.last_seq(), 1, "nothing reaches the room before commit");
    let batch = upload.handle_commit();
    assert_eq!(batch.receipt.count, 3);
    assert_eq!(batch.receipt.bytes, 6);
    assert_eq!(batch.receipt.last_user, Some(user("carol")));
    let mut expected = Checksum::new();
    for (who, body) in [("alice", "a"), ("bob", "bb"), ("carol", "ccc")] {
        expected.update(who, body);
    }
    assert_eq!(batch.receipt.checksum, expected);
    let run = room.handle_send_batch(batch.drafts, at(1)).expect("committed");
    assert_eq!(run, Some((2, 4)));
}

#[test]
fn checksum_depends_on_order_and_boundaries() {
    let mut ab = Checksum::new();
    ab.update("u", "a");
    ab.update("u", "b");
    let mut ba = Checksum::new();
    ba.update("u", "b");
    ba.update("u", "a");
    let mut joined = Checksum::new();
    joined.update("u", "ab");
    assert_ne!(ab, ba);
    assert_ne!(ab, joined);
}

#[test]
fn limits_refuse_the_chunk_and_keep_the_upload() {
    let limits = Limits { upload_messages_max: 2, upload_bytes_max: 5, ..Limits::default() };
    let mut upload = UploadAggregator::new(room_name("r"), &limits);
    upload.handle_chunk(draft("u", "", "abc")).expect("fits");
    assert_eq!(upload.handle_chunk(draft("u", "", "abc")), Err(UploadError::TooManyBytes { bytes_max: 5 }));
    upload.handle_chunk(draft("u", "", "ab")).expect("fits");
    assert_eq!(upload.handle_chunk(draft("u", "", "")), Err(UploadError::TooManyMessages { messages_max: 2 }));
    assert_eq!(upload.count(), 2);
}
