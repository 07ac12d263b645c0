//! [`NatsPresenceBus`]: the [`PresenceBus`] of cluster mode, over core NATS (no JetStream:
//! presence is ephemeral, and a lost message is healed by the next full snapshot).

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::presence::{BusError, PresenceBus};

/// The prefix of the presence subject; the log's stream prefix follows, so two clusters
/// (two stream prefixes) sharing one NATS do not hear each other's presence.
pub const PRESENCE_SUBJECT_PREFIX: &str = "confab.presence";

/// The presence subject of the cluster whose streams are named after `stream_prefix`. A
/// subject token cannot hold `.`, `*`, `>` or whitespace: those become `_`.
pub fn presence_subject(stream_prefix: &str) -> String {
    let token: String = stream_prefix
        .chars()
        .map(
            |character| if matches!(character, '.' | '*' | '>') || character.is_whitespace() { '_' } else { character },
        )
        .collect();
    format!("{PRESENCE_SUBJECT_PREFIX}.{token}")
}

/// Presence messages on one core NATS subject. Cheap to clone (the connection is shared).
#[derive(Clone, Debug)]
pub struct NatsPresenceBus {
    client: async_nats::Client,
    subject: String,
}

impl NatsPresenceBus {
    /// A bus on `subject` ([`presence_subject`]) over `client`'s connection.
    pub fn new(client: async_nats::Client, subject: String) -> Self {
        Self { client, subject }
    }

    /// The subject it publishes on.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl PresenceBus for NatsPresenceBus {
    fn publish(&self, payload: Vec<u8>) -> BoxFuture<'static, Result<(), BusError>> {
        let (client, subject) = (self.client.clone(), self.subject.clone());
        Box::pin(async move {
            if client.connection_state() != async_nats::connection::State::Connected {
                // Not buffered for after a reconnect: stale presence is worse than none.
                return Err(BusError::Unavailable { reason: "not connected to NATS".to_owned() });
            }
            client
                .publish(subject, payload.into())
                .await
                .map_err(|error| BusError::Unavailable { reason: error.to_string() })
        })
    }

    fn subscribe(&self) -> BoxFuture<'static, Result<BoxStream<'static, Vec<u8>>, BusError>> {
        let (client, subject) = (self.client.clone(), self.subject.clone());
        Box::pin(async move {
            let subscriber =
                client.subscribe(subject).await.map_err(|error| BusError::Unavailable { reason: error.to_string() })?;
            Ok(subscriber.map(|message| message.payload.to_vec()).boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_one_token_per_cluster() {
        assert_eq!(presence_subject("confab-rooms"), "confab.presence.confab-rooms");
        assert_eq!(presence_subject("a.b *>"), "confab.presence.a_b___");
    }
}
