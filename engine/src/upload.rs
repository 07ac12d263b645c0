//! Aggregates a client-streamed upload (G6): chunks are checked and folded into a receipt as
//! they come; nothing reaches the room until [`UploadAggregator::handle_commit`], which hands the
//! whole batch over at once. Dropping the aggregator (an aborted upload) commits nothing.

use crate::error::{RoomError, UploadError};
use crate::limits::Limits;
use crate::types::{Draft, RoomName, Seq, UserName};

/// 64-bit FNV-1a over every chunk in order: user bytes, 0xFF, body bytes, 0xFE. Simple,
/// dependency-free and stable across versions, so clients can recompute it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checksum(u64);

impl Checksum {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;

    /// The checksum of no chunks.
    pub const fn new() -> Self {
        Self(Self::OFFSET)
    }

    /// Folds one chunk in.
    pub fn update(&mut self, user: &str, body: &str) {
        let fold = |hash: u64, byte: u8| (hash ^ u64::from(byte)).wrapping_mul(Self::PRIME);
        let mut hash = user.bytes().fold(self.0, fold);
        hash = fold(hash, 0xFF);
        hash = body.bytes().fold(hash, fold);
        self.0 = fold(hash, 0xFE);
    }

    /// The value.
    pub const fn value(self) -> u64 {
        self.0
    }
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

/// What a committed upload reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The room.
    pub room: RoomName,
    /// Messages committed.
    pub count: usize,
    /// Body bytes committed.
    pub bytes: usize,
    /// Checksum over the chunks in order.
    pub checksum: Checksum,
    /// The user of the last chunk (`None` for an empty upload).
    pub last_user: Option<UserName>,
    /// First and last sequence numbers of the committed run (`None` for an empty upload).
    pub seqs: Option<(Seq, Seq)>,
}

/// The batch to commit and the receipt to complete with its sequence numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The messages, in upload order.
    pub drafts: Vec<Draft>,
    /// The receipt, with `seqs` still `None`.
    pub receipt: Receipt,
}

/// One upload's state machine.
#[derive(Debug)]
pub struct UploadAggregator {
    room: RoomName,
    drafts: Vec<Draft>,
    bytes: usize,
    checksum: Checksum,
    messages_max: usize,
    bytes_max: usize,
    message_bytes_max: usize,
}

impl UploadAggregator {
    /// An empty upload into `room`.
    pub fn new(room: RoomName, limits: &Limits) -> Self {
        Self {
            room,
            drafts: Vec::new(),
            bytes: 0,
            checksum: Checksum::new(),
            messages_max: limits.upload_messages_max,
            bytes_max: limits.upload_bytes_max,
            message_bytes_max: limits.message_bytes_max,
        }
    }

    /// The room it will commit to.
    pub fn room(&self) -> &RoomName {
        &self.room
    }

    /// Adds one message. A refused chunk leaves the upload as it was.
    pub fn handle_chunk(&mut self, draft: Draft) -> Result<(), UploadError> {
        let bytes = draft.body.len();
        if bytes > self.message_bytes_max {
            return Err(RoomError::MessageTooBig { bytes, bytes_max: self.message_bytes_max }.into());
        }
        if self.drafts.len() >= self.messages_max {
            return Err(UploadError::TooManyMessages { messages_max: self.messages_max });
        }
        if self.bytes + bytes > self.bytes_max {
            return Err(UploadError::TooManyBytes { bytes_max: self.bytes_max });
        }
        self.checksum.update(draft.user.as_str(), &draft.body);
        self.bytes += bytes;
        self.drafts.push(draft);
        Ok(())
    }

    /// Messages so far.
    pub fn count(&self) -> usize {
        self.drafts.len()
    }

    /// Ends the upload, handing over the whole batch.
    pub fn handle_commit(self) -> Batch {
        let receipt = Receipt {
            room: self.room,
            count: self.drafts.len(),
            bytes: self.bytes,
            checksum: self.checksum,
            last_user: self.drafts.last().map(|draft| draft.user.clone()),
            seqs: None,
        };
        Batch { drafts: self.drafts, receipt }
    }
}
