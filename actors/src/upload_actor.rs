//! `UploadActor`: one per client-streamed upload. It folds chunks with the
//! [`UploadAggregator`] and commits the whole batch to the room on `Commit` (G6). If the client
//! aborts, the actor is stopped and nothing reaches the room.

use confab_engine::{Draft, Receipt, UploadAggregator, UploadError};
use kameo::Actor;
use kameo::message::{Context, Message};

use crate::answer::Answer;
use crate::directory::Directory;
use crate::error::EngineError;
use crate::room_actor::SendBatch;

/// The actor around one [`UploadAggregator`].
#[derive(Actor)]
pub(crate) struct UploadActor {
    /// `None` once committed.
    aggregator: Option<UploadAggregator>,
    directory: Directory,
}

impl UploadActor {
    pub(crate) fn new(aggregator: UploadAggregator, directory: Directory) -> Self {
        Self { aggregator: Some(aggregator), directory }
    }
}

/// One more message.
pub(crate) struct Chunk(pub(crate) Draft);

impl Message<Chunk> for UploadActor {
    type Reply = Answer<(), EngineError>;

    async fn handle(&mut self, Chunk(draft): Chunk, _: &mut Context<Self, Self::Reply>) -> Self::Reply {
        let result = match &mut self.aggregator {
            Some(aggregator) => aggregator.handle_chunk(draft).map_err(EngineError::from),
            None => Err(UploadError::Aborted.into()),
        };
        Answer(result)
    }
}

/// End of the upload: commit it and stop.
pub(crate) struct Commit;

impl Message<Commit> for UploadActor {
    type Reply = Answer<Receipt, EngineError>;

    async fn handle(&mut self, _: Commit, ctx: &mut Context<Self, Self::Reply>) -> Self::Reply {
        ctx.stop();
        let Some(aggregator) = self.aggregator.take() else {
            return Answer(Err(UploadError::Aborted.into()));
        };
        let batch = aggregator.handle_commit();
        let mut receipt = batch.receipt;
        if batch.drafts.is_empty() {
            return Answer(Ok(receipt));
        }
        let drafts = batch.drafts;
        let result = self.directory.request(&receipt.room, true, || SendBatch(drafts.clone())).await;
        Answer(match result {
            Ok(Some((_, seqs))) => {
                receipt.seqs = seqs;
                Ok(receipt)
            }
            Ok(None) => Err(EngineError::Stopped),
            Err(error) => Err(error),
        })
    }
}
