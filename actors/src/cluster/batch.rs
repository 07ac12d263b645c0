//! An atomic batch publish (ADR-50, nats-server 2.12+): several messages stored all or nothing.
//!
//! async-nats 0.51 has the header names but no batch publisher. The protocol, on one subject:
//! - the first message carries `Nats-Batch-Id`, `Nats-Batch-Sequence: 1` and the room's
//!   expectation; it is a request, and the server answers it with an empty reply once the batch
//!   is open (or an error: no such stream, atomic batches off, too many batches in flight);
//! - the middle messages carry the id and their sequence and are plain publishes: the server
//!   only answers them when they have a reply subject, and a lost one surfaces at the commit as
//!   a gap, so waiting for each would only add round trips;
//! - the last message also carries `Nats-Batch-Commit: 1` and is a request: the server checks
//!   the expectation against the stream as it was before the batch, under its lock, and answers
//!   with one acknowledgement (the last message's position and the batch's `count`) or one error,
//!   and the batch is stored entirely or not at all.
//!
//! Everything before the commit is "not stored" if it fails; only the commit can end in
//! "unknown".

use std::time::Duration;

use async_nats::header::{NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL, NATS_BATCH_ID, NATS_BATCH_SEQUENCE};
use async_nats::{Client, HeaderMap};

use super::jetstream::{
    Acknowledgement, AppendError, Entry, Position, committed_unknown, entry_headers, expect_last, not_committed,
    parse_reply,
};

/// Publishes `entries` (at least two) to `subject` as one atomic batch conditional on
/// `expected_last`; returns the commit's acknowledgement.
pub(super) async fn publish(
    client: &Client,
    subject: String,
    expected_last: Position,
    entries: &[Entry],
    timeout: Duration,
) -> Result<Acknowledgement, AppendError> {
    assert!(entries.len() >= 2, "a batch has at least two entries");
    // Unique among this client's batches, and across clients (an inbox is a fresh NUID):
    // the server tells concurrent batches on a stream apart by this id alone.
    let batch_id = client.new_inbox();
    let (last, opening) = entries.split_last().expect("a batch has a last entry");
    for (index, entry) in opening.iter().enumerate() {
        let mut headers = batch_headers(entry, &batch_id, index + 1);
        if index > 0 {
            client
                .publish_with_headers(subject.clone(), headers, entry.payload.clone())
                .await
                .map_err(|error| AppendError::Unavailable { reason: error.to_string() })?;
            continue;
        }
        expect_last(&mut headers, expected_last);
        let request = async_nats::Request::new().headers(headers).payload(entry.payload.clone()).timeout(Some(timeout));
        let reply = client.send_request(subject.clone(), request).await.map_err(not_committed)?;
        if let Some(acknowledgement) = parse_reply(&reply.payload)? {
            // Only the commit stores anything, so this is a protocol this client does not know:
            // the outcome is unknown (and a resend, safe by the expectation, finds out).
            return Err(AppendError::Unknown {
                reason: format!("the server acknowledged a batch's first message as stored at {}", acknowledgement.seq),
            });
        }
    }
    let mut headers = batch_headers(last, &batch_id, entries.len());
    headers.insert(NATS_BATCH_COMMIT, NATS_BATCH_COMMIT_FINAL);
    let request = async_nats::Request::new().headers(headers).payload(last.payload.clone()).timeout(Some(timeout));
    let reply = client.send_request(subject, request).await.map_err(committed_unknown)?;
    parse_reply(&reply.payload)?
        .ok_or_else(|| AppendError::Unknown { reason: "empty acknowledgement of a batch commit".to_owned() })
}

/// An entry's headers as the `sequence`th (from 1) message of batch `batch_id`.
fn batch_headers(entry: &Entry, batch_id: &str, sequence: usize) -> HeaderMap {
    let mut headers = entry_headers(entry);
    headers.insert(NATS_BATCH_ID, batch_id);
    headers.insert(NATS_BATCH_SEQUENCE, sequence.to_string().as_str());
    headers
}
