//! The checker: verifies G1–G7 online from what the simulated clients observe, and hashes every
//! observation into the run's trace (G8). It knows nothing of how the clients are driven: the
//! driver reports observations through the methods below, and tests feed it hand-made ones.
//!
//! Cost per delivery is a few vector lookups: subscriptions and room logs are dense vectors,
//! never searched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use confab_engine::{ChatMessage, HistoryPage, Lag, Receipt, RoomEvent, RoomName, Sent, Seq};
use hdrhistogram::Histogram;

use crate::trace::Trace;

/// A subscription (a subscribed stream, or a session's join of one room), numbered by the
/// checker in the order the driver opens them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubId(pub u32);

/// A guarantee that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Which guarantee: "G1" … "G7".
    pub guarantee: &'static str,
    /// Virtual time, in milliseconds since the run started.
    pub at_ms: u64,
    /// What went wrong, in one sentence.
    pub message: String,
    /// The shortest run of observations that shows it, oldest first.
    pub excerpt: Vec<String>,
}

/// Counters the report shows.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Messages appended: acknowledged first sends plus committed upload messages.
    pub messages: u64,
    /// Sends retried with the same client message id.
    pub retries: u64,
    /// Uploads committed.
    pub uploads_committed: u64,
    /// Uploads aborted.
    pub uploads_aborted: u64,
    /// Messages delivered to subscribers (live and backlog).
    pub deliveries: u64,
    /// Lag markers delivered.
    pub lag_events: u64,
    /// Subscriptions that asked to resume after a sequence number.
    pub resumes: u64,
    /// Subscriptions opened.
    pub subscriptions: u64,
    /// Slow-reader stalls.
    pub stalls: u64,
    /// Subscriptions the room closed because their reader stalled too long (the client then
    /// resumes, like after a disconnect).
    pub stalled_closed: u64,
    /// Subscriptions ended because their room stopped under them (a node's room reloading
    /// after falling behind the log); the client resumes, like after a disconnect.
    pub rooms_stopped: u64,
    /// Disconnects.
    pub disconnects: u64,
    /// Room changes.
    pub churns: u64,
    /// Read-your-writes probes (history reads after a send).
    pub read_checks: u64,
    /// Requests the engine refused (limits): not violations, but unexpected in the default mix.
    pub refusals: u64,
    /// Sends and uploads answered with a failed commit (`--commit-failures`): none of their
    /// messages may ever appear.
    pub failed_sends: u64,
    /// Node crashes (`--crash-interval`).
    pub crashes: u64,
    /// Crashed nodes started again over the same log.
    pub restarts: u64,
    /// Clients that lost their node to a crash and connected again (to another node, or the
    /// restarted one), resuming after what they had seen.
    pub reconnects: u64,
    /// Sends a crash left unanswered, sent again after the reconnect with the same client
    /// message id (G4: stored once).
    pub resends: u64,
    /// Rooms whose whole retained history was read at the end and compared with every
    /// acknowledgement (runs with crashes or a durable store).
    pub audited_rooms: u64,
}

/// A fault or probe the driver performed, counted and traced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A slow reader stopped reading.
    Stall,
    /// A client disconnected.
    Disconnect,
    /// A client changed rooms.
    Churn,
    /// The room closed a subscription whose reader stalled too long.
    ClosedForStalling,
    /// A subscription's room stopped under it.
    RoomStopped,
    /// A node crashed.
    Crash,
    /// A crashed node started again.
    Restart,
    /// A client whose node crashed connected again.
    Reconnect,
}

/// One room epoch's log as subscribers observed it.
#[derive(Default)]
struct RoomLog {
    room: u32,
    epoch: u64,
    /// Message `seq` at index `seq - 1`, once anyone observed it.
    messages: Vec<Option<Arc<ChatMessage>>>,
    /// Which sequence number each client message id was observed at (G4).
    ids: HashMap<Arc<str>, Seq>,
    /// Bodies of committed uploads, by the sequence number they must occupy (G6). Uploads carry
    /// no client message ids (the batch is the unit), so the driver makes their bodies unique.
    expected_bodies: BTreeMap<Seq, Arc<str>>,
    /// Highest sequence number acknowledged to a sender.
    max_acked: Seq,
    /// Which client message id each acknowledged send got, by sequence number: it must stay
    /// there, unchanged, through crashes (G7), and the id nowhere else (G4).
    acked_seqs: BTreeMap<Seq, Arc<str>>,
    /// The same, by client message id.
    acked_ids: HashMap<Arc<str>, Seq>,
}

/// What the checker remembers of one subscription.
struct SubState {
    client: u32,
    room: u32,
    /// Requested resume point: epoch and sequence number.
    after: Option<(u64, Seq)>,
    /// Index into `logs` once `Subscribed` arrived.
    log: Option<usize>,
    /// The next sequence number this subscription must see (a message or a lag marker's start).
    next: Seq,
    /// When the subscription started (messages accepted since are live deliveries).
    since_ms: u64,
    /// Highest sequence number acknowledged to sends on this stream (G3).
    last_acked: Seq,
    /// For excerpts: the `Subscribed` line and the last event accepted.
    opened: String,
    last: Option<(u64, LastEvent)>,
    closed: bool,
}

#[derive(Clone, Copy)]
enum LastEvent {
    Message(Seq),
    Lag(Lag),
}

/// Verifies G1–G7 and traces every observation.
pub struct Checker {
    room_names: Vec<RoomName>,
    logs: Vec<RoomLog>,
    log_index: BTreeMap<(u32, u64), usize>,
    subs: Vec<SubState>,
    /// Bodies of aborted uploads, per room: none may ever appear (G6).
    aborted: HashSet<(u32, Arc<str>)>,
    /// Client message ids of sends whose commit failed, per room: none may ever appear.
    failed: HashSet<(u32, Arc<str>)>,
    violations: Vec<Violation>,
    violations_max: usize,
    counts: Counts,
    trace: Trace,
    latency_ms: Histogram<u64>,
    /// Deliveries per time bucket (see `bucket_ms`).
    timeline: Vec<u64>,
    bucket_ms: u64,
}

/// Buckets of the deliveries-over-time chart.
pub const TIMELINE_BUCKETS: usize = 100;

/// Violations kept in full; more are counted only (the first ones explain the run).
pub const VIOLATIONS_KEPT: usize = 20;

impl Checker {
    /// A checker for a run over these rooms lasting `span_ms` of virtual time.
    pub fn new(room_names: Vec<RoomName>, span_ms: u64) -> Self {
        Checker {
            room_names,
            logs: Vec::new(),
            log_index: BTreeMap::new(),
            subs: Vec::new(),
            aborted: HashSet::new(),
            failed: HashSet::new(),
            violations: Vec::new(),
            violations_max: VIOLATIONS_KEPT,
            counts: Counts::default(),
            trace: Trace::default(),
            // Up to a day of virtual latency, three significant digits.
            latency_ms: Histogram::new_with_bounds(1, 86_400_000, 3).expect("valid histogram bounds"),
            timeline: vec![0; TIMELINE_BUCKETS],
            bucket_ms: (span_ms / TIMELINE_BUCKETS as u64).max(1),
        }
    }

    /// Opens a subscription of `client` to room number `room`, fresh or resuming after
    /// `after` (epoch, sequence number). Its first event must be `Subscribed`.
    pub fn open(&mut self, client: u32, room: u32, after: Option<(u64, Seq)>, now_ms: u64) -> SubId {
        let id = SubId(u32::try_from(self.subs.len()).expect("fewer than 2^32 subscriptions"));
        self.trace.record(&[1, u64::from(client), u64::from(room), after.map_or(0, |(_, seq)| seq + 1), now_ms]);
        self.counts.subscriptions += 1;
        if after.is_some() {
            self.counts.resumes += 1;
        }
        self.subs.push(SubState {
            client,
            room,
            after,
            log: None,
            next: 0,
            since_ms: now_ms,
            last_acked: 0,
            opened: String::new(),
            last: None,
            closed: false,
        });
        id
    }

    /// The subscription's room epoch and the last sequence number it accounted for (delivered
    /// or declared missed): where a client resumes after a disconnect.
    pub fn resume_point(&self, sub: SubId) -> Option<(u64, Seq)> {
        let state = &self.subs[sub.0 as usize];
        let log = &self.logs[state.log?];
        Some((log.epoch, state.next.saturating_sub(1)))
    }

    /// Records one event a subscription received.
    pub fn event(&mut self, sub: SubId, event: &RoomEvent, now_ms: u64) {
        match event {
            RoomEvent::Subscribed { epoch, recovered, first_seq, .. } => {
                self.subscribed(sub, *epoch, *recovered, *first_seq, now_ms)
            }
            RoomEvent::Message(message) => self.message(sub, message, now_ms),
            RoomEvent::Lagged { lag, .. } => self.lagged(sub, *lag, now_ms),
            RoomEvent::Presence { present, .. } => {
                self.trace.record(&[3, u64::from(sub.0), u64::from(*present), now_ms]);
            }
            RoomEvent::Typing { .. } => self.trace.record(&[4, u64::from(sub.0), now_ms]),
        }
    }

    fn subscribed(&mut self, sub: SubId, epoch: u64, recovered: bool, first_seq: Seq, now_ms: u64) {
        self.trace.record(&[2, u64::from(sub.0), epoch, u64::from(recovered), first_seq, now_ms]);
        let index = self.sub(sub);
        let room = self.subs[index].room;
        let log = self.log_for(room, epoch);
        let state = &mut self.subs[index];
        state.log = Some(log);
        state.next = first_seq;
        state.opened = format!(
            "{} client {} subscribes to {} {} -> Subscribed epoch={epoch} recovered={recovered} first_seq={first_seq}",
            at(now_ms),
            state.client,
            self.room_names[room as usize],
            match state.after {
                Some((_, seq)) => format!("after_seq={seq}"),
                None => "live".to_owned(),
            },
        );
        if let Some((after_epoch, after_seq)) = state.after
            && after_epoch == epoch
        {
            if recovered && first_seq != after_seq + 1 {
                let message = format!("resumed after #{after_seq} with recovered=true but starts at #{first_seq}");
                self.violate("G5", sub, now_ms, message, None);
            } else if !recovered && first_seq <= after_seq + 1 {
                let message = format!("#{} was retained, yet the resume says recovered=false", after_seq + 1);
                self.violate("G5", sub, now_ms, message, None);
            }
        }
    }

    fn message(&mut self, sub: SubId, message: &Arc<ChatMessage>, now_ms: u64) {
        let seq = message.seq;
        self.trace.record(&[5, u64::from(sub.0), seq, message.body.len() as u64, now_ms]);
        self.counts.deliveries += 1;
        let bucket = ((now_ms / self.bucket_ms) as usize).min(TIMELINE_BUCKETS - 1);
        self.timeline[bucket] += 1;
        let index = self.sub(sub);
        let Some(log_index) = self.subs[index].log else {
            return self.violate("G5", sub, now_ms, format!("#{seq} arrived before Subscribed"), None);
        };
        let state = &self.subs[index];
        let accepted_ms = message.accepted_at.as_millis();
        if accepted_ms >= state.since_ms {
            // Saturate rather than fail: a latency beyond the histogram's day is still a day.
            let _ = self.latency_ms.record(now_ms.saturating_sub(accepted_ms).min(86_400_000));
        }
        let expected = state.next;
        if seq != expected {
            let (guarantee, what) = if seq > expected {
                ("G2", format!("silent gap: expected #{expected}, got #{seq} without a lag marker"))
            } else {
                ("G1", format!("out of order: expected #{expected}, got #{seq} again or late"))
            };
            return self.violate(guarantee, sub, now_ms, what, Some(format!("receives #{seq}")));
        }
        let state = &mut self.subs[index];
        state.next = seq + 1;
        state.last = Some((now_ms, LastEvent::Message(seq)));
        self.record_in_log(log_index, sub, message, now_ms);
    }

    /// Compares a delivered message with what other subscribers saw at the same position (G1),
    /// with the client message ids seen elsewhere (G4), and with uploads (G6).
    fn record_in_log(&mut self, log_index: usize, sub: SubId, message: &Arc<ChatMessage>, now_ms: u64) {
        let seq = message.seq;
        let log = &mut self.logs[log_index];
        let slot = (seq - 1) as usize;
        if log.messages.len() <= slot {
            log.messages.resize(slot + 1, None);
        }
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        match &log.messages[slot] {
            Some(seen) if Arc::ptr_eq(seen, message) || **seen == **message => {}
            Some(seen) => problems.push((
                "G1",
                format!(
                    "subscribers disagree on #{seq}: {} said {:?}, now {} says {:?}",
                    seen.user, seen.body, message.user, message.body
                ),
            )),
            None => {
                if let Some(id) = &message.client_msg_id {
                    let id: Arc<str> = Arc::from(id.as_str());
                    if let Some(&other) = log.ids.get(&id) {
                        problems.push(("G4", format!("client message id {id} appended twice: #{other} and #{seq}")));
                    }
                    if let Some(&acked) = log.acked_ids.get(&id)
                        && acked != seq
                    {
                        problems
                            .push(("G4", format!("client message id {id} was acknowledged as #{acked}, is at #{seq}")));
                    }
                    if !self.failed.is_empty() && self.failed.contains(&(log.room, id.clone())) {
                        problems.push(("G7", format!("message {id}, whose commit failed, appeared at #{seq}")));
                    }
                    log.ids.insert(id, seq);
                }
                if let Some(acked) = log.acked_seqs.get(&seq)
                    && message.client_msg_id.as_ref().map(|id| id.as_str()) != Some(&**acked)
                {
                    problems.push(("G7", format!("#{seq} was acknowledged as {acked}, holds {:?}", message.body)));
                }
                if let Some(expected) = log.expected_bodies.get(&seq)
                    && *expected != message.body
                {
                    problems
                        .push(("G6", format!("#{seq} should be upload message {expected:?}, is {:?}", message.body)));
                }
                if !self.aborted.is_empty() && self.aborted.contains(&(log.room, message.body.clone())) {
                    problems
                        .push(("G6", format!("message {:?} of an aborted upload appeared at #{seq}", message.body)));
                }
                log.messages[slot] = Some(message.clone());
            }
        }
        for (guarantee, what) in problems {
            self.violate(guarantee, sub, now_ms, what, Some(format!("receives #{seq}")));
        }
    }

    fn lagged(&mut self, sub: SubId, lag: Lag, now_ms: u64) {
        self.trace.record(&[6, u64::from(sub.0), lag.missed_from, lag.missed_to, now_ms]);
        self.counts.lag_events += 1;
        let index = self.sub(sub);
        let expected = self.subs[index].next;
        if lag.missed_from != expected || lag.missed_to < lag.missed_from {
            let what = format!("lag marker #{}..=#{} does not start at #{expected}", lag.missed_from, lag.missed_to);
            let line = format!("receives Lagged #{}..=#{}", lag.missed_from, lag.missed_to);
            return self.violate("G2", sub, now_ms, what, Some(line));
        }
        let state = &mut self.subs[index];
        state.next = lag.missed_to + 1;
        state.last = Some((now_ms, LastEvent::Lag(lag)));
    }

    /// Records the answer to a send on `sub`'s stream; `retry_of` is the sequence number the
    /// original send got when this is a retry with the same client message id.
    pub fn sent(&mut self, sub: SubId, sent: Sent, retry_of: Option<Seq>, now_ms: u64) {
        self.trace.record(&[7, u64::from(sub.0), sent.seq, u64::from(sent.duplicate), now_ms]);
        let index = self.sub(sub);
        match retry_of {
            Some(original) => {
                self.counts.retries += 1;
                if !sent.duplicate || sent.seq != original {
                    let what = format!(
                        "retry of #{original} answered #{} duplicate={} (expected #{original} duplicate=true)",
                        sent.seq, sent.duplicate
                    );
                    self.violate("G4", sub, now_ms, what, None);
                }
            }
            None => {
                self.counts.messages += 1;
                let last = self.subs[index].last_acked;
                if sent.duplicate {
                    self.violate(
                        "G4",
                        sub,
                        now_ms,
                        format!("a first send was answered as a retry of #{}", sent.seq),
                        None,
                    );
                } else if sent.seq <= last {
                    let what = format!("sends on one stream sequenced out of order: #{} after #{last}", sent.seq);
                    self.violate("G3", sub, now_ms, what, None);
                }
                let state = &mut self.subs[index];
                state.last_acked = state.last_acked.max(sent.seq);
                if let Some(log) = state.log {
                    self.logs[log].max_acked = self.logs[log].max_acked.max(sent.seq);
                }
            }
        }
    }

    /// [`Checker::sent`] for a send with client message id `id`, which is remembered where it
    /// was acknowledged (G4, and G7 through crashes).
    pub fn sent_id(&mut self, sub: SubId, id: &str, sent: Sent, retry_of: Option<Seq>, now_ms: u64) {
        self.sent(sub, sent, retry_of, now_ms);
        self.remember_ack(sub, id, sent.seq, now_ms);
    }

    /// Records the answer to a send made again after a crash left it unanswered (same client
    /// message id): new or a duplicate, it must agree with every other acknowledgement and
    /// observation of the id (G4: stored once).
    pub fn resent(&mut self, sub: SubId, id: &str, sent: Sent, now_ms: u64) {
        self.trace.record(&[15, u64::from(sub.0), sent.seq, u64::from(sent.duplicate), now_ms]);
        self.counts.resends += 1;
        let index = self.sub(sub);
        let state = &mut self.subs[index];
        state.last_acked = state.last_acked.max(sent.seq);
        if let Some(log) = state.log {
            self.logs[log].max_acked = self.logs[log].max_acked.max(sent.seq);
        }
        self.remember_ack(sub, id, sent.seq, now_ms);
    }

    /// Checks an acknowledgement of `id` as `seq` against the others and what subscribers
    /// saw, and remembers it.
    fn remember_ack(&mut self, sub: SubId, id: &str, seq: Seq, now_ms: u64) {
        let Some(log_index) = self.subs[self.sub(sub)].log else { return };
        let log = &mut self.logs[log_index];
        let id: Arc<str> = Arc::from(id);
        let mut problems = Vec::new();
        if let Some(&other) = log.acked_ids.get(&id)
            && other != seq
        {
            problems.push(("G4", format!("client message id {id} acknowledged as #{other}, then as #{seq}")));
        }
        if let Some(&observed) = log.ids.get(&id)
            && observed != seq
        {
            problems.push(("G4", format!("client message id {id} acknowledged as #{seq}, but is at #{observed}")));
        }
        if let Some(Some(seen)) = log.messages.get((seq - 1) as usize)
            && seen.client_msg_id.as_ref().map(|seen| seen.as_str()) != Some(&*id)
        {
            problems.push(("G7", format!("{id} acknowledged as #{seq}, which holds {:?}", seen.body)));
        }
        log.acked_ids.insert(id.clone(), seq);
        log.acked_seqs.insert(seq, id);
        for (guarantee, what) in problems {
            self.violate(guarantee, sub, now_ms, what, None);
        }
    }

    /// Records a send answered with a failed commit: its message must never appear.
    pub fn send_failed(&mut self, sub: SubId, id: &str, now_ms: u64) {
        self.trace.record(&[16, u64::from(sub.0), now_ms]);
        self.counts.failed_sends += 1;
        let index = self.sub(sub);
        let id: Arc<str> = Arc::from(id);
        self.failed.insert((self.subs[index].room, id.clone()));
        let Some(log_index) = self.subs[index].log else { return };
        if let Some(&seq) = self.logs[log_index].ids.get(&id) {
            self.violate("G7", sub, now_ms, format!("message {id} appeared at #{seq}, yet its commit failed"), None);
        }
    }

    /// Records an upload whose commit failed: like an aborted one, none of its messages may
    /// ever appear.
    pub fn upload_failed(&mut self, sub: SubId, bodies: &[Arc<str>], now_ms: u64) {
        self.counts.failed_sends += 1;
        self.forbid_bodies(sub, bodies, now_ms);
    }

    /// At the end of a run with crashes or a durable store: room number `room`'s whole
    /// retained history as the engine serves it (`epoch` 0 if the room does not exist).
    /// Every message acknowledged in the room must still be there, unchanged (G7), no client
    /// message id twice (G4), and nothing whose commit failed.
    pub fn audit(
        &mut self,
        room: u32,
        epoch: u64,
        first_retained_seq: Seq,
        messages: &[Arc<ChatMessage>],
        now_ms: u64,
    ) {
        self.trace.record(&[17, u64::from(room), epoch, first_retained_seq, messages.len() as u64, now_ms]);
        self.counts.audited_rooms += 1;
        let mut problems: Vec<(&'static str, String)> = Vec::new();
        let mut ids: BTreeMap<&str, Seq> = BTreeMap::new();
        for message in messages {
            let Some(id) = message.client_msg_id.as_ref().map(|id| id.as_str()) else { continue };
            if let Some(other) = ids.insert(id, message.seq) {
                problems.push(("G4", format!("client message id {id} stored twice: #{other} and #{}", message.seq)));
            }
            if !self.failed.is_empty() && self.failed.contains(&(room, Arc::from(id))) {
                problems.push(("G7", format!("message {id}, whose commit failed, is stored at #{}", message.seq)));
            }
        }
        let by_seq = |seq: Seq| {
            let first = messages.first().map_or(0, |message| message.seq);
            seq.checked_sub(first).and_then(|offset| messages.get(offset as usize)).filter(|m| m.seq == seq)
        };
        for (&(_, log_epoch), &log_index) in self.log_index.range((room, 0)..=(room, u64::MAX)) {
            let log = &self.logs[log_index];
            if log_epoch != epoch {
                if log.max_acked > 0 {
                    problems.push((
                        "G7",
                        format!("epoch {log_epoch} had acknowledged messages; the room is now epoch {epoch}"),
                    ));
                }
                continue;
            }
            for (&seq, id) in log.acked_seqs.range(first_retained_seq..) {
                let stored = by_seq(seq).and_then(|message| message.client_msg_id.as_ref());
                if stored.map(|stored| stored.as_str()) != Some(&**id) {
                    problems.push(("G7", format!("#{seq} was acknowledged as {id}, the history holds {:?}", stored)));
                }
            }
            for (&seq, body) in log.expected_bodies.range(first_retained_seq..) {
                if by_seq(seq).map(|message| &message.body) != Some(body) {
                    problems.push((
                        "G7",
                        format!("#{seq} was committed as upload message {body:?}, is not in the history"),
                    ));
                }
            }
        }
        for (guarantee, what) in problems {
            self.violate_in_room(guarantee, room, now_ms, what);
        }
    }

    /// Records that room number `room` handed its store messages starting at `got` where
    /// the store holds up to `expected - 1`: a skipped (or repeated) sequence number (G2).
    pub fn store_gap(&mut self, room: u32, expected: Seq, got: Seq, at_ms: u64) {
        self.trace.record(&[18, u64::from(room), expected, got, at_ms]);
        let what = format!("the room gave its store #{got} next, after #{}", expected - 1);
        self.violate_in_room("G2", room, at_ms, what);
    }

    /// Records a committed upload of messages with these (unique) bodies (G6).
    pub fn upload_committed(&mut self, sub: SubId, bodies: &[Arc<str>], receipt: &Receipt, now_ms: u64) {
        let ids = bodies;
        let (first, last) = receipt.seqs.unwrap_or((0, 0));
        self.trace.record(&[8, u64::from(sub.0), ids.len() as u64, first, last, now_ms]);
        self.counts.uploads_committed += 1;
        self.counts.messages += ids.len() as u64;
        let index = self.sub(sub);
        let run_len = (last + 1).checked_sub(first);
        if receipt.count != ids.len() || (!ids.is_empty() && run_len != Some(ids.len() as u64)) {
            let what = format!("upload of {} messages committed as {} at #{first}..=#{last}", ids.len(), receipt.count);
            return self.violate("G6", sub, now_ms, what, None);
        }
        let Some(log_index) = self.subs[index].log else { return };
        let mut problems = Vec::new();
        let log = &mut self.logs[log_index];
        for (offset, id) in ids.iter().enumerate() {
            let seq = first + offset as u64;
            if let Some(Some(seen)) = log.messages.get((seq - 1) as usize)
                && seen.body != *id
            {
                problems.push(format!("#{seq} should be upload message {id:?}, was seen as {:?}", seen.body));
            }
            log.expected_bodies.insert(seq, id.clone());
        }
        log.max_acked = log.max_acked.max(last);
        for what in problems {
            self.violate("G6", sub, now_ms, what, None);
        }
    }

    /// Records an aborted upload: none of these (unique) bodies may ever appear (G6).
    pub fn upload_aborted(&mut self, sub: SubId, bodies: &[Arc<str>], now_ms: u64) {
        self.counts.uploads_aborted += 1;
        self.forbid_bodies(sub, bodies, now_ms);
    }

    /// None of these (unique) upload bodies may ever appear in `sub`'s room (G6).
    fn forbid_bodies(&mut self, sub: SubId, bodies: &[Arc<str>], now_ms: u64) {
        let ids = bodies;
        self.trace.record(&[9, u64::from(sub.0), ids.len() as u64, now_ms]);
        let index = self.sub(sub);
        let room = self.subs[index].room;
        let mut seen = Vec::new();
        for id in ids {
            self.aborted.insert((room, id.clone()));
            if let Some(log) = self.subs[index].log {
                let log = &self.logs[log];
                if let Some(message) = log.messages.iter().flatten().find(|message| message.body == *id) {
                    seen.push(format!("message {id:?} of an aborted upload appeared at #{}", message.seq));
                }
            }
        }
        for what in seen {
            self.violate("G6", sub, now_ms, what, None);
        }
    }

    /// Records a history read made right after a send acknowledged as `seq` with this client
    /// message id: the page must start with it unless it was already trimmed (G7).
    pub fn history_read(&mut self, sub: SubId, seq: Seq, id: &str, page: &HistoryPage, now_ms: u64) {
        let first = page.messages.first();
        self.trace.record(&[10, u64::from(sub.0), seq, first.map_or(0, |message| message.seq), now_ms]);
        self.counts.read_checks += 1;
        let found = first.is_some_and(|m| m.seq == seq && m.client_msg_id.as_ref().map(|c| c.as_str()) == Some(id));
        if !found && page.first_retained_seq <= seq {
            let what = format!(
                "send acknowledged as #{seq}, but history after #{} starts {:?}",
                seq - 1,
                first.map(|m| m.seq)
            );
            self.violate("G7", sub, now_ms, what, None);
        }
    }

    /// Counts and traces a fault the driver performed.
    pub fn action(&mut self, sub: Option<SubId>, action: Action, now_ms: u64) {
        let counter = match action {
            Action::Stall => &mut self.counts.stalls,
            Action::Disconnect => &mut self.counts.disconnects,
            Action::Churn => &mut self.counts.churns,
            Action::ClosedForStalling => &mut self.counts.stalled_closed,
            Action::RoomStopped => &mut self.counts.rooms_stopped,
            Action::Crash => &mut self.counts.crashes,
            Action::Restart => &mut self.counts.restarts,
            Action::Reconnect => &mut self.counts.reconnects,
        };
        *counter += 1;
        self.trace.record(&[11, sub.map_or(u64::MAX, |sub| u64::from(sub.0)), action as u64, now_ms]);
    }

    /// Records a refusal (a limit): counted, traced, not a violation.
    pub fn refused(&mut self, sub: SubId, now_ms: u64) {
        self.counts.refusals += 1;
        self.trace.record(&[12, u64::from(sub.0), now_ms]);
    }

    /// The subscription ended on the client's side: nothing more is checked for it.
    pub fn close(&mut self, sub: SubId, now_ms: u64) {
        self.trace.record(&[13, u64::from(sub.0), now_ms]);
        let index = self.sub(sub);
        self.subs[index].closed = true;
    }

    /// At the end of the run, after the drain: every subscription still open must have been
    /// told of every acknowledged message of its room (delivered or declared missed, G2).
    pub fn finish(&mut self, now_ms: u64) {
        let mut missing = Vec::new();
        for (index, state) in self.subs.iter().enumerate() {
            let Some(log) = state.log else { continue };
            let max_acked = self.logs[log].max_acked;
            if !state.closed && state.next <= max_acked {
                missing.push((SubId(index as u32), state.next, max_acked));
            }
        }
        for (sub, next, max_acked) in missing {
            let what = format!("never told of #{next}..=#{max_acked}, acknowledged before the drain ended");
            self.violate("G2", sub, now_ms, what, None);
        }
        self.trace.record(&[14, now_ms]);
    }

    /// Records that the nodes disagree on who is in a room after a quiet spell (presence
    /// across nodes did not converge): a violation of its own, "P1".
    pub fn presence_diverged(&mut self, message: String, now_ms: u64) {
        self.trace.violation();
        if self.violations.len() < self.violations_max {
            self.violations.push(Violation { guarantee: "P1", at_ms: now_ms, message, excerpt: Vec::new() });
        }
    }

    /// The violations found so far (at most [`VIOLATIONS_KEPT`]).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// How many violations there were in all.
    pub fn violation_count(&self) -> u64 {
        self.trace.violations()
    }

    /// Observations recorded in the trace (events the simulation processed).
    pub fn events(&self) -> u64 {
        self.trace.records()
    }

    /// The counters.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// The trace hash of everything observed so far (G8).
    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    /// Live delivery latency in virtual milliseconds.
    pub fn latency_ms(&self) -> &Histogram<u64> {
        &self.latency_ms
    }

    /// Deliveries per [`TIMELINE_BUCKETS`] equal slices of the run, and the slice's length in ms.
    pub fn timeline(&self) -> (&[u64], u64) {
        (&self.timeline, self.bucket_ms)
    }

    fn sub(&self, sub: SubId) -> usize {
        let index = sub.0 as usize;
        assert!(index < self.subs.len(), "the driver reported an unknown subscription {sub:?}");
        index
    }

    fn log_for(&mut self, room: u32, epoch: u64) -> usize {
        if let Some(&index) = self.log_index.get(&(room, epoch)) {
            return index;
        }
        self.logs.push(RoomLog { room, epoch, ..RoomLog::default() });
        self.log_index.insert((room, epoch), self.logs.len() - 1);
        self.logs.len() - 1
    }

    fn violate(&mut self, guarantee: &'static str, sub: SubId, now_ms: u64, message: String, line: Option<String>) {
        self.trace.violation();
        if self.violations.len() >= self.violations_max {
            return;
        }
        let state = &self.subs[sub.0 as usize];
        let mut excerpt = Vec::new();
        if !state.opened.is_empty() {
            excerpt.push(state.opened.clone());
        }
        if let Some((last_ms, last)) = state.last {
            let mut text = format!("{} client {} ", at(last_ms), state.client);
            match last {
                LastEvent::Message(seq) => write!(text, "receives #{seq}"),
                LastEvent::Lag(lag) => write!(text, "receives Lagged #{}..=#{}", lag.missed_from, lag.missed_to),
            }
            .expect("writing to a String");
            excerpt.push(text);
        }
        let line = line.unwrap_or_else(|| "observes".to_owned());
        excerpt.push(format!("{} client {} {line}   <-- {guarantee}: {message}", at(now_ms), state.client));
        let room = &self.room_names[state.room as usize];
        self.violations.push(Violation {
            guarantee,
            at_ms: now_ms,
            message: format!("{room}, client {}: {message}", state.client),
            excerpt,
        });
    }
}

impl Checker {
    /// A violation found in a room as a whole (the final audit), not by one subscription.
    fn violate_in_room(&mut self, guarantee: &'static str, room: u32, now_ms: u64, message: String) {
        self.trace.violation();
        if self.violations.len() >= self.violations_max {
            return;
        }
        let room = &self.room_names[room as usize];
        let excerpt = vec![format!("{} audit of {room}'s history   <-- {guarantee}: {message}", at(now_ms))];
        self.violations.push(Violation { guarantee, at_ms: now_ms, message: format!("{room}: {message}"), excerpt });
    }
}

/// Virtual time as `t=12.345s`.
fn at(ms: u64) -> String {
    format!("t={}.{:03}s", ms / 1000, ms % 1000)
}
