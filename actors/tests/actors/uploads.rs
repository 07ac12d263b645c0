use confab_engine::{Checksum, Limits, RoomError, UploadError};

use super::{draft, engine_with, room, user};
use confab_actors::EngineError;

#[tokio::test(flavor = "current_thread")]
async fn a_committed_upload_is_one_contiguous_run_amid_concurrent_sends() {
    let engine = engine_with(Limits::default());
    let lobby = room("lobby");
    let chatter = {
        let engine = engine.clone();
        let lobby = lobby.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                engine.send(&lobby, draft("chatty", "", &i.to_string())).await.expect("sent");
                tokio::task::yield_now().await;
            }
        })
    };
    let mut upload = engine.upload(&lobby);
    let mut checksum = Checksum::new();
    for i in 0..100 {
        let body = format!("line {i}");
        checksum.update("up", &body);
        upload.push(draft("up", "", &body)).await.expect("chunk");
        tokio::task::yield_now().await;
    }
    let receipt = upload.commit().await.expect("committed");
    chatter.await.expect("chatter");
    assert_eq!((receipt.count, receipt.last_user.clone()), (100, Some(user("up"))));
    assert_eq!(receipt.checksum, checksum);
    let (first, last) = receipt.seqs.expect("a run");
    assert_eq!(last - first + 1, 100);
    let page = engine.history(&lobby, first - 1, 100).await.expect("history");
    assert!(page.messages.iter().all(|m| m.user == user("up")), "G6: nothing interleaves the run");
}

#[tokio::test(flavor = "current_thread")]
async fn an_aborted_upload_commits_nothing() {
    let engine = engine_with(Limits::default());
    let lobby = room("lobby");
    engine.send(&lobby, draft("ann", "", "before")).await.expect("sent");
    let mut upload = engine.upload(&lobby);
    for i in 0..5 {
        upload.push(draft("up", "", &i.to_string())).await.expect("chunk");
    }
    drop(upload);
    let mut aborted = engine.upload(&lobby);
    aborted.push(draft("up", "", "x")).await.expect("chunk");
    aborted.abort();
    tokio::task::yield_now().await;
    assert_eq!(engine.send(&lobby, draft("ann", "", "after")).await.expect("sent").seq, 2, "G6: nothing was committed");
}

#[tokio::test(flavor = "current_thread")]
async fn upload_limits_are_refusals() {
    let engine = engine_with(Limits { upload_messages_max: 2, message_bytes_max: 4, ..Limits::default() });
    let mut upload = engine.upload(&room("lobby"));
    let too_big = upload.push(draft("u", "", "12345")).await.expect_err("too big");
    assert!(matches!(too_big, EngineError::Upload(UploadError::Room(RoomError::MessageTooBig { .. }))));
    upload.push(draft("u", "", "a")).await.expect("fits");
    upload.push(draft("u", "", "b")).await.expect("fits");
    let too_many = upload.push(draft("u", "", "c")).await.expect_err("too many");
    assert_eq!(too_many, EngineError::Upload(UploadError::TooManyMessages { messages_max: 2 }));
    assert_eq!(upload.commit().await.expect("the accepted part commits").count, 2);
}
