//! Per-sender quotas: how much of what everyone shares one sender may hold at once.
//!
//! The sender is the same as for the rates ([`super::rate`]): the authenticated user over all
//! their connections on a server with `--tokens`, one client connection on an open server. What
//! it holds is counted here and given back when the [`Held`] guard drops (the stream, session
//! or upload ended, or the session left the room), so nothing needs releasing by hand:
//! - distinct rooms joined or subscribed ([`ROOMS_PER_USER_MAX`]), over every `Subscribe` stream
//!   and session (a room held twice counts once);
//! - open sessions ([`SESSIONS_PER_USER_MAX`]);
//! - open uploads ([`UPLOADS_PER_USER_MAX`]).
//!
//! Over a quota: [`QuotaExceeded`], RESOURCE_EXHAUSTED naming the limit and its flag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use confab_engine::limits::{
    ROOMS_PER_USER_MAX, SESSIONS_PER_USER_MAX, UPLOAD_BYTES_IN_FLIGHT_MAX, UPLOAD_BYTES_PER_USER_MAX,
    UPLOADS_PER_USER_MAX,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::rate::Sender;

/// The quotas of each sender; [`QuotaLimits::default`] uses the engine's named constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaLimits {
    /// See [`ROOMS_PER_USER_MAX`].
    pub rooms_per_user_max: usize,
    /// See [`SESSIONS_PER_USER_MAX`].
    pub sessions_per_user_max: usize,
    /// See [`UPLOADS_PER_USER_MAX`].
    pub uploads_per_user_max: usize,
    /// See [`UPLOAD_BYTES_IN_FLIGHT_MAX`] (server-wide, not per sender).
    pub upload_bytes_in_flight_max: usize,
    /// See [`UPLOAD_BYTES_PER_USER_MAX`].
    pub upload_bytes_per_user_max: usize,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self {
            rooms_per_user_max: ROOMS_PER_USER_MAX,
            sessions_per_user_max: SESSIONS_PER_USER_MAX,
            uploads_per_user_max: UPLOADS_PER_USER_MAX,
            upload_bytes_in_flight_max: UPLOAD_BYTES_IN_FLIGHT_MAX,
            upload_bytes_per_user_max: UPLOAD_BYTES_PER_USER_MAX,
        }
    }
}

/// A sender would hold more than its quota.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("over the quota of {max} {what} at once {scope} ({flag})")]
pub struct QuotaExceeded {
    /// What is counted ("rooms joined or subscribed", "sessions", "uploads").
    pub what: &'static str,
    /// Whose: per user (per connection on an open server), or the whole server's.
    pub scope: &'static str,
    /// The quota.
    pub max: usize,
    /// The flag that sets it.
    pub flag: &'static str,
}

/// The scope of the per-sender quotas, as refusals say it.
const PER_SENDER: &str = "per user (per connection on an open server)";

/// Something a sender holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Resource {
    Room(String),
    Session,
    Upload,
}

/// What one sender holds now.
#[derive(Debug, Default)]
struct Usage {
    /// Each room held, with how many streams and sessions hold it.
    rooms: HashMap<String, usize>,
    sessions: usize,
    uploads: usize,
    /// Bytes of message bodies its open uploads hold.
    upload_bytes: usize,
}

impl Usage {
    fn is_empty(&self) -> bool {
        self.rooms.is_empty() && self.sessions == 0 && self.uploads == 0 && self.upload_bytes == 0
    }
}

/// The server's quota table: cheap to clone, shared like the rate limiter.
#[derive(Clone, Debug)]
pub(crate) struct Quotas {
    limits: QuotaLimits,
    /// One permit per byte of upload bodies in flight, server-wide.
    upload_bytes: Arc<Semaphore>,
    /// Only senders that hold something have an entry, so the table is bounded by what is
    /// open (streams, sessions, uploads), itself bounded by the connection caps.
    usage: Arc<Mutex<HashMap<Sender, Usage>>>,
}

impl Quotas {
    pub(crate) fn new(limits: QuotaLimits) -> Self {
        let upload_bytes = Arc::new(Semaphore::new(limits.upload_bytes_in_flight_max.min(Semaphore::MAX_PERMITS)));
        Self { limits, upload_bytes, usage: Arc::default() }
    }

    /// A new, empty reservation of upload bytes, for one upload of `sender`.
    pub(crate) fn upload_bytes(&self, sender: &Sender) -> UploadBytes {
        UploadBytes { quotas: self.clone(), sender: sender.clone(), bytes: 0, held: None }
    }

    /// Counts `bytes` more of `sender`'s uploads, unless that goes past its quota.
    fn take_upload_bytes(&self, sender: &Sender, bytes: usize) -> Result<(), QuotaExceeded> {
        let max = self.limits.upload_bytes_per_user_max;
        let mut table = self.lock();
        let usage = table.entry(sender.clone()).or_default();
        match usage.upload_bytes.checked_add(bytes).filter(|total| *total <= max) {
            Some(total) => {
                usage.upload_bytes = total;
                Ok(())
            }
            None => {
                if usage.is_empty() {
                    table.remove(sender);
                }
                Err(QuotaExceeded {
                    what: "bytes of open uploads",
                    scope: PER_SENDER,
                    max,
                    flag: "--upload-bytes-per-user-max",
                })
            }
        }
    }

    /// Gives back `bytes` of `sender`'s uploads.
    fn give_upload_bytes(&self, sender: &Sender, bytes: usize) {
        let mut table = self.lock();
        let Some(usage) = table.get_mut(sender) else { return };
        usage.upload_bytes = usage.upload_bytes.saturating_sub(bytes);
        if usage.is_empty() {
            table.remove(sender);
        }
    }

    pub(crate) fn limits(&self) -> QuotaLimits {
        self.limits
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Sender, Usage>> {
        // Every update is one counter or one map entry: a poisoned table is still consistent.
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A room held by `sender` until the guard drops.
    pub(crate) fn hold_room(&self, sender: &Sender, room: &str) -> Result<Held, QuotaExceeded> {
        self.hold(sender, Resource::Room(room.to_owned()))
    }

    /// A session slot of `sender` until the guard drops.
    pub(crate) fn hold_session(&self, sender: &Sender) -> Result<Held, QuotaExceeded> {
        self.hold(sender, Resource::Session)
    }

    /// An upload slot of `sender` until the guard drops.
    pub(crate) fn hold_upload(&self, sender: &Sender) -> Result<Held, QuotaExceeded> {
        self.hold(sender, Resource::Upload)
    }

    fn hold(&self, sender: &Sender, resource: Resource) -> Result<Held, QuotaExceeded> {
        let limits = self.limits;
        let mut table = self.lock();
        let usage = table.entry(sender.clone()).or_default();
        let exceeded = match &resource {
            Resource::Room(room) => {
                let held = usage.rooms.len();
                match usage.rooms.get_mut(room) {
                    Some(holders) => {
                        *holders += 1;
                        None
                    }
                    None if held >= limits.rooms_per_user_max => Some(QuotaExceeded {
                        scope: PER_SENDER,
                        what: "rooms joined or subscribed",
                        max: limits.rooms_per_user_max,
                        flag: "--rooms-per-user-max",
                    }),
                    None => {
                        usage.rooms.insert(room.clone(), 1);
                        None
                    }
                }
            }
            Resource::Session if usage.sessions >= limits.sessions_per_user_max => Some(QuotaExceeded {
                scope: PER_SENDER,
                what: "sessions",
                max: limits.sessions_per_user_max,
                flag: "--sessions-per-user-max",
            }),
            Resource::Session => {
                usage.sessions += 1;
                None
            }
            Resource::Upload if usage.uploads >= limits.uploads_per_user_max => Some(QuotaExceeded {
                scope: PER_SENDER,
                what: "uploads",
                max: limits.uploads_per_user_max,
                flag: "--uploads-per-user-max",
            }),
            Resource::Upload => {
                usage.uploads += 1;
                None
            }
        };
        if let Some(exceeded) = exceeded {
            if usage.is_empty() {
                table.remove(sender);
            }
            return Err(exceeded);
        }
        Ok(Held { quotas: self.clone(), sender: sender.clone(), resource })
    }

    fn release(&self, sender: &Sender, resource: &Resource) {
        let mut table = self.lock();
        let Some(usage) = table.get_mut(sender) else { return };
        match resource {
            Resource::Room(room) => {
                if let Some(holders) = usage.rooms.get_mut(room) {
                    *holders -= 1;
                    if *holders == 0 {
                        usage.rooms.remove(room);
                    }
                }
            }
            Resource::Session => usage.sessions = usage.sessions.saturating_sub(1),
            Resource::Upload => usage.uploads = usage.uploads.saturating_sub(1),
        }
        if usage.is_empty() {
            table.remove(sender);
        }
    }

    #[cfg(test)]
    fn senders(&self) -> usize {
        self.lock().len()
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Self::new(QuotaLimits::default())
    }
}

/// The upload bytes one upload holds of its sender's quota and of the server's budget, given
/// back when dropped (the upload committed or ended).
#[derive(Debug)]
pub struct UploadBytes {
    quotas: Quotas,
    sender: Sender,
    /// Counted in the sender's usage.
    bytes: usize,
    held: Option<OwnedSemaphorePermit>,
}

impl UploadBytes {
    /// Reserves `bytes` more, or refuses if the sender's quota or the server's budget would be
    /// exceeded.
    pub fn reserve(&mut self, bytes: usize) -> Result<(), QuotaExceeded> {
        let max = self.quotas.limits.upload_bytes_in_flight_max;
        let refused = || QuotaExceeded {
            what: "bytes of uploads in flight",
            scope: "on the whole server",
            max,
            flag: "--upload-bytes-in-flight-max",
        };
        let permits = u32::try_from(bytes).map_err(|_| refused())?;
        self.quotas.take_upload_bytes(&self.sender, bytes)?;
        let more = match Arc::clone(&self.quotas.upload_bytes).try_acquire_many_owned(permits) {
            Ok(more) => more,
            Err(_) => {
                self.quotas.give_upload_bytes(&self.sender, bytes);
                return Err(refused());
            }
        };
        self.bytes += bytes;
        match self.held.as_mut() {
            Some(held) => held.merge(more),
            None => self.held = Some(more),
        }
        Ok(())
    }
}

impl Drop for UploadBytes {
    fn drop(&mut self) {
        self.quotas.give_upload_bytes(&self.sender, self.bytes);
    }
}

/// One thing a sender holds, given back when dropped.
#[derive(Debug)]
pub struct Held {
    quotas: Quotas,
    sender: Sender,
    resource: Resource,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.quotas.release(&self.sender, &self.resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(max: usize) -> Quotas {
        Quotas::new(QuotaLimits {
            rooms_per_user_max: max,
            sessions_per_user_max: max,
            uploads_per_user_max: max,
            upload_bytes_in_flight_max: 100,
            upload_bytes_per_user_max: 100,
        })
    }

    #[test]
    fn upload_bytes_are_one_budget_for_the_server_given_back_when_an_upload_ends() {
        let quotas = quotas(1);
        let mut first = quotas.upload_bytes(&connection(1));
        let mut second = quotas.upload_bytes(&connection(2));
        first.reserve(60).expect("60 of 100");
        first.reserve(30).expect("90 of 100");
        let refused = second.reserve(20).expect_err("110 of 100");
        assert!(refused.to_string().contains("--upload-bytes-in-flight-max"), "{refused}");
        assert!(refused.to_string().contains("on the whole server"), "{refused}");
        second.reserve(10).expect("exactly the budget");
        drop(first);
        second.reserve(90).expect("the first upload's bytes came back");
    }

    #[test]
    fn one_senders_uploads_share_its_byte_quota_and_give_it_back() {
        let quotas = Quotas::new(QuotaLimits { upload_bytes_per_user_max: 50, ..QuotaLimits::default() });
        let mut first = quotas.upload_bytes(&connection(1));
        let mut second = quotas.upload_bytes(&connection(1));
        first.reserve(40).expect("40 of the sender's 50");
        let refused = second.reserve(20).expect_err("60 of the sender's 50");
        assert!(refused.to_string().contains("--upload-bytes-per-user-max"), "{refused}");
        quotas.upload_bytes(&connection(2)).reserve(50).expect("another sender has its own");
        second.reserve(10).expect("exactly the quota");
        drop((first, second));
        assert_eq!(quotas.senders(), 0, "everything given back");
    }

    fn connection(port: u16) -> Sender {
        Sender::Connection(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    }

    #[test]
    fn distinct_rooms_count_once_and_come_back_when_released() {
        let quotas = quotas(2);
        let ann = connection(1);
        let a1 = quotas.hold_room(&ann, "a").expect("a");
        let a2 = quotas.hold_room(&ann, "a").expect("the same room again is free");
        let b = quotas.hold_room(&ann, "b").expect("b");
        let refused = quotas.hold_room(&ann, "c").expect_err("a third room");
        assert_eq!((refused.max, refused.flag), (2, "--rooms-per-user-max"));
        quotas.hold_room(&connection(2), "c").expect("another sender has its own quota");
        drop(a1);
        assert!(quotas.hold_room(&ann, "c").is_err(), "a is still held by its second holder");
        drop(a2);
        let c = quotas.hold_room(&ann, "c").expect("a was released");
        drop((b, c));
        assert_eq!(quotas.senders(), 0, "a sender that holds nothing has no entry");
    }

    #[test]
    fn sessions_and_uploads_have_their_own_quotas() {
        let quotas = quotas(1);
        let ann = connection(1);
        let session = quotas.hold_session(&ann).expect("session");
        let refused = quotas.hold_session(&ann).expect_err("second session");
        assert!(refused.to_string().contains("--sessions-per-user-max"), "{refused}");
        let upload = quotas.hold_upload(&ann).expect("an upload is not a session");
        assert!(quotas.hold_upload(&ann).is_err());
        drop(session);
        quotas.hold_session(&ann).expect("released");
        drop(upload);
        assert_eq!(quotas.senders(), 0);
    }
}
