//! Property tests: random operation sequences against the state machines, with every guarantee
//! the engine owns checked after every step against a simple model. Small limits (history of
//! 6, dedupe window of 3, rings of 1 to 8) make trimming, eviction and lag frequent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use confab_engine::{
    ClientMsgId, Draft, Lag, Limits, ReadItem, ReadStatus, ReaderEnd, RoomEvent, Seq, SubscriberId, Time,
    UploadAggregator, UploadError,
};
use proptest::prelude::*;

use super::{Shell, at, room_name, user};

const HISTORY_LEN_MAX: usize = 6;
const DEDUPE_WINDOW_LEN: usize = 3;
/// Events a ring keeps in the room test: a reader two events behind lags.
const RING_LEN: usize = 2;
const USERS: [&str; 3] = ["ann", "bob", "cy"];

#[derive(Clone, Debug)]
enum Op {
    Subscribe { user: Option<usize>, after_seq: Option<u64> },
    Unsubscribe { index: usize },
    Send { user: usize, id: Option<u8> },
    Batch { len: usize, abort: bool },
    Typing { user: usize },
    Consume { index: usize, count: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (proptest::option::of(0..USERS.len()), proptest::option::of(0..20u64))
            .prop_map(|(user, after_seq)| Op::Subscribe { user, after_seq }),
        1 => any::<usize>().prop_map(|index| Op::Unsubscribe { index }),
        6 => (0..USERS.len(), proptest::option::of(0..5u8)).prop_map(|(user, id)| Op::Send { user, id }),
        1 => (0..4usize, any::<bool>()).prop_map(|(len, abort)| Op::Batch { len, abort }),
        1 => (0..USERS.len()).prop_map(|user| Op::Typing { user }),
        4 => (any::<usize>(), 0..4usize).prop_map(|(index, count)| Op::Consume { index, count }),
    ]
}

/// A subscriber as the test sees it: where its ring cursor must be.
struct Reader {
    id: SubscriberId,
    /// The next sequence number it must see (delivered or inside a lag marker).
    expected: Seq,
}

/// What the room promised so far.
#[derive(Default)]
struct Model {
    last_seq: Seq,
    /// Every sequenced message: (user, body).
    log: BTreeMap<Seq, (String, String)>,
    /// Dedupe window: (user, id) -> seq, oldest first.
    window: VecDeque<((usize, u8), Seq)>,
    /// Last fresh seq per user (G3: later sends get later numbers).
    last_by_user: BTreeMap<usize, Seq>,
    next_body: u64,
}

impl Model {
    fn first_retained(&self) -> Seq {
        (self.last_seq + 1).saturating_sub(HISTORY_LEN_MAX as u64).max(1)
    }
}

fn check_item(reader: &mut Reader, item: &ReadItem, model: &Model) -> Result<(), TestCaseError> {
    match item {
        ReadItem::Lagged(Lag { missed_from, missed_to }) => {
            prop_assert_eq!(*missed_from, reader.expected, "G2: lag starts where delivery stopped");
            prop_assert!(missed_from <= missed_to, "G2: a lag marker names at least one message");
            reader.expected = missed_to + 1;
        }
        ReadItem::Event(published) => {
            let RoomEvent::Message(message) = &published.event else { return Ok(()) };
            prop_assert_eq!(message.seq, reader.expected, "G1/G2: contiguous delivery, or a lag right before");
            reader.expected = message.seq + 1;
            let (who, body) = &model.log[&message.seq];
            prop_assert_eq!(message.user.as_str(), who.as_str(), "G1: every subscriber sees the same message at a seq");
            prop_assert_eq!(&*message.body, body.as_str());
        }
    }
    Ok(())
}

/// One read of at most `max` items by `reader`, each checked. Returns whether it read anything.
fn consume(shell: &mut Shell, reader: &mut Reader, max: usize, model: &Model) -> Result<bool, TestCaseError> {
    let mut items = Vec::new();
    let status = shell.ring.read(reader.id, &mut items, max);
    for item in &items {
        check_item(reader, item, model)?;
    }
    prop_assert_eq!(status == ReadStatus::Items, !items.is_empty(), "Items exactly when something was read");
    prop_assert!(!matches!(status, ReadStatus::Ended(_)), "a subscribed reader's stream goes on: {:?}", status);
    prop_assert_eq!(shell.ring.delivered(reader.id), Some(reader.expected - 1), "the cursor agrees with the stream");
    Ok(!items.is_empty())
}

fn fresh_draft(model: &mut Model, user_index: usize, id: Option<u8>) -> Draft {
    model.next_body += 1;
    Draft {
        user: user(USERS[user_index]),
        client_msg_id: id.map(|id| ClientMsgId::new(&format!("m{id}")).expect("id").expect("non-empty")),
        body: Arc::from(format!("body {}", model.next_body)),
    }
}

fn record_fresh(model: &mut Model, user_index: usize, draft: &Draft, seq: Seq) -> Result<(), TestCaseError> {
    prop_assert_eq!(seq, model.last_seq + 1, "G1: numbers are contiguous");
    model.last_seq = seq;
    model.log.insert(seq, (USERS[user_index].to_string(), draft.body.to_string()));
    if let Some(previous) = model.last_by_user.insert(user_index, seq) {
        prop_assert!(previous < seq, "G3: a user's later send is sequenced later");
    }
    Ok(())
}

fn run_room(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let limits = Limits {
        history_len_max: HISTORY_LEN_MAX,
        dedupe_window_len: DEDUPE_WINDOW_LEN,
        subscriber_queue_len_max: RING_LEN,
        ..Limits::default()
    };
    let mut shell = Shell::new("prop", &limits);
    let mut model = Model::default();
    let mut readers: Vec<Reader> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let now = at(step as u64);
        match op {
            Op::Subscribe { user: who, after_seq } => {
                let sub = shell.subscribe(who.map(|i| USERS[i]), after_seq, now).expect("room not full");
                let first_retained = model.first_retained();
                match after_seq {
                    None => {
                        prop_assert!(sub.recovered);
                        prop_assert_eq!(sub.first_seq, model.last_seq + 1);
                    }
                    Some(k) if k <= model.last_seq && k + 1 >= first_retained => {
                        prop_assert!(sub.recovered, "G5: resume within history is exact");
                        prop_assert_eq!(sub.first_seq, k + 1);
                    }
                    Some(_) => {
                        prop_assert!(!sub.recovered, "G5: an impossible resume says so");
                        prop_assert_eq!(sub.first_seq, first_retained);
                    }
                }
                let backlog: Vec<Seq> = sub.backlog.iter().map(|m| m.seq).collect();
                let expected: Vec<Seq> = (sub.first_seq..=model.last_seq).collect();
                prop_assert_eq!(backlog, expected, "G5: backlog is exactly first_seq..=last");
                readers.push(Reader { id: sub.id, expected: model.last_seq + 1 });
            }
            Op::Unsubscribe { index } => {
                if !readers.is_empty() {
                    let reader = readers.remove(index % readers.len());
                    prop_assert!(shell.unsubscribe(reader.id, now));
                    let mut rest = Vec::new();
                    let ended = shell.ring.read(reader.id, &mut rest, usize::MAX);
                    prop_assert_eq!(ended, ReadStatus::Ended(ReaderEnd::Unsubscribed));
                    prop_assert!(rest.is_empty(), "nothing after leaving");
                }
            }
            Op::Send { user: who, id } => {
                let draft = fresh_draft(&mut model, who, id);
                let remembered =
                    id.and_then(|id| model.window.iter().find(|(key, _)| *key == (who, id)).map(|(_, s)| *s));
                let sent = shell.room.handle_send(draft.clone(), now).expect("accepted");
                match remembered {
                    Some(original) => {
                        prop_assert!(sent.duplicate, "G4: a retry inside the window is recognised");
                        prop_assert_eq!(sent.seq, original, "G4: a retry returns the original seq");
                        prop_assert_eq!(shell.room.last_seq(), model.last_seq, "G4: a retry appends nothing");
                    }
                    None => {
                        prop_assert!(!sent.duplicate);
                        record_fresh(&mut model, who, &draft, sent.seq)?;
                        if let Some(id) = id {
                            if model.window.len() == DEDUPE_WINDOW_LEN {
                                model.window.pop_front();
                            }
                            model.window.push_back(((who, id), sent.seq));
                        }
                        let page = shell.room.history(sent.seq - 1, 1).expect("history");
                        prop_assert_eq!(page.messages.first().map(|m| m.seq), Some(sent.seq), "G7: read your writes");
                    }
                }
            }
            Op::Batch { len, abort } => {
                let mut upload = UploadAggregator::new(room_name("prop"), &limits);
                let drafts: Vec<(usize, Draft)> =
                    (0..len).map(|i| (i % USERS.len(), fresh_draft(&mut model, i % USERS.len(), None))).collect();
                for (_, draft) in &drafts {
                    upload.handle_chunk(draft.clone()).expect("chunk fits");
                }
                if abort {
                    drop(upload);
                    prop_assert_eq!(shell.room.last_seq(), model.last_seq, "G6: an aborted upload commits nothing");
                } else {
                    let batch = upload.handle_commit();
                    prop_assert_eq!(batch.receipt.count, len);
                    let run = shell.room.handle_send_batch(batch.drafts, now).expect("committed");
                    match run {
                        None => prop_assert_eq!(len, 0),
                        Some((first, last)) => {
                            prop_assert_eq!(first, model.last_seq + 1, "G6: the run follows the log");
                            prop_assert_eq!(last - first + 1, len as u64, "G6: the run is contiguous and whole");
                            for (offset, (who, draft)) in drafts.iter().enumerate() {
                                record_fresh(&mut model, *who, draft, first + offset as u64)?;
                            }
                        }
                    }
                }
            }
            Op::Typing { user: who } => shell.room.handle_typing(user(USERS[who]), now).expect("typing"),
            Op::Consume { index, count } => {
                if !readers.is_empty() {
                    let len = readers.len();
                    consume(&mut shell, &mut readers[index % len], count, &model)?;
                }
            }
        }
        shell.flush(now);
        prop_assert_eq!(shell.room.last_seq(), model.last_seq);
        prop_assert_eq!(shell.room.first_retained_seq(), model.first_retained());
        prop_assert_eq!(shell.room.subscriber_count(), readers.len());
    }
    // Everyone reads to the end: each is told of every message, delivered or missed (G2).
    for reader in &mut readers {
        while consume(&mut shell, reader, 3, &model)? {}
        prop_assert_eq!(reader.expected, model.last_seq + 1, "G2: nothing silent at the tail");
    }
    Ok(())
}

/// What happens around a ring in [`run_ring`].
#[derive(Clone, Debug)]
enum RingOp {
    Send {
        user: usize,
    },
    Batch {
        len: usize,
    },
    Typing {
        user: usize,
    },
    /// A new reader: a slow one reads only when [`RingOp::ReadOne`] names it.
    Subscribe {
        user: Option<usize>,
        slow: bool,
        batch_max: usize,
    },
    Unsubscribe {
        index: usize,
    },
    /// Every reader that is not slow reads one batch.
    ReadFast,
    /// One reader, slow or not, reads one batch.
    ReadOne {
        index: usize,
    },
    /// Time passes; the stall sweep runs when the ring asks for it.
    Wait {
        millis: u64,
    },
}

fn ring_op() -> impl Strategy<Value = RingOp> {
    prop_oneof![
        5 => (0..USERS.len()).prop_map(|user| RingOp::Send { user }),
        1 => (0..5usize).prop_map(|len| RingOp::Batch { len }),
        2 => (0..USERS.len()).prop_map(|user| RingOp::Typing { user }),
        1 => (proptest::option::of(0..USERS.len()), any::<bool>(), 1..5usize)
            .prop_map(|(user, slow, batch_max)| RingOp::Subscribe { user, slow, batch_max }),
        1 => any::<usize>().prop_map(|index| RingOp::Unsubscribe { index }),
        3 => Just(RingOp::ReadFast),
        2 => any::<usize>().prop_map(|index| RingOp::ReadOne { index }),
        1 => (0..200u64).prop_map(|millis| RingOp::Wait { millis }),
    ]
}

/// One reader of [`run_ring`] and everything its stream carried.
struct RingReader {
    id: SubscriberId,
    slow: bool,
    batch_max: usize,
    /// The last message its subscription carried (its backlog's end): its stream goes on after it.
    start: Seq,
    items: Vec<ReadItem>,
    /// How its stream ended, if it did.
    end: Option<ReaderEnd>,
}

impl RingReader {
    /// Reads one batch; a stream that ended must say so again and carry nothing more.
    fn read(&mut self, shell: &mut Shell) -> Result<ReadStatus, TestCaseError> {
        let before = self.items.len();
        let status = shell.ring.read(self.id, &mut self.items, self.batch_max);
        match (&self.end, &status) {
            (Some(ReaderEnd::Stalled(_)), ReadStatus::Ended(ReaderEnd::Unsubscribed)) => {}
            (Some(end), status) => {
                prop_assert_eq!(status, &ReadStatus::Ended(end.clone()), "an ended stream stays ended")
            }
            (None, ReadStatus::Ended(end)) => prop_assert!(false, "a subscribed reader's stream ended: {:?}", end),
            (None, _) => {}
        }
        let read = self.items.len() - before;
        prop_assert!(read <= self.batch_max, "a read takes at most its batch");
        prop_assert_eq!(status == ReadStatus::Items, read > 0, "Items exactly when something was read");
        Ok(status)
    }
}

/// Checks a reader's whole stream; returns the last message it was given or told it missed.
/// Messages come in increasing order without duplicates, each the one the room sequenced at
/// its number; every gap before a message is exactly covered by the lag spans read since the
/// message before it (none means no gap); every lag span starts right after what the reader
/// had (delivered or missed) and names at least one message; an ephemeral event comes after
/// every message published before it, delivered or declared missed.
fn check_stream(reader: &RingReader, log: &BTreeMap<Seq, Arc<str>>) -> Result<Seq, TestCaseError> {
    let mut told_upto = reader.start;
    let mut last_message: Option<Seq> = None;
    for item in &reader.items {
        match item {
            ReadItem::Lagged(Lag { missed_from, missed_to }) => {
                prop_assert_eq!(*missed_from, told_upto + 1, "G2: a lag starts right after what the reader had");
                prop_assert!(missed_from <= missed_to, "G2: a lag names at least one message");
                prop_assert!(log.contains_key(missed_to), "G2: a lag names sequenced messages only");
                told_upto = *missed_to;
            }
            ReadItem::Event(published) => match &published.event {
                RoomEvent::Message(message) => {
                    prop_assert!(
                        last_message.is_none_or(|last| message.seq > last),
                        "messages in increasing order, no duplicates: {} after {:?}",
                        message.seq,
                        last_message
                    );
                    prop_assert_eq!(message.seq, told_upto + 1, "G2: a gap without a lag span right before it");
                    prop_assert_eq!(Some(&message.body), log.get(&message.seq), "G1: the message at that number");
                    told_upto = message.seq;
                    last_message = Some(message.seq);
                }
                _ => prop_assert_eq!(published.seq_before, told_upto, "G2: an event overtook a message"),
            },
        }
    }
    Ok(told_upto)
}

fn run_ring(capacity: usize, stall_ms: u64, ops: Vec<RingOp>) -> Result<(), TestCaseError> {
    let limits = Limits { subscriber_queue_len_max: capacity, subscriber_stall_ms: stall_ms, ..Limits::default() };
    let mut shell = Shell::new("ring", &limits);
    let mut readers: Vec<RingReader> = Vec::new();
    // Every message's body by number, as the room sequenced it.
    let mut log: BTreeMap<Seq, Arc<str>> = BTreeMap::new();
    let mut millis = 0;
    for (step, op) in ops.into_iter().enumerate() {
        millis += 1;
        let now = Time::from_millis(millis);
        match op {
            RingOp::Send { user: who } => {
                let body = format!("body {step}");
                let seq = shell.send(USERS[who], &body, now);
                log.insert(seq, Arc::from(body));
            }
            RingOp::Batch { len } => {
                let bodies: Vec<String> = (0..len).map(|i| format!("body {step}.{i}")).collect();
                let drafts = bodies
                    .iter()
                    .map(|body| Draft { user: user("batch"), client_msg_id: None, body: Arc::from(body.as_str()) })
                    .collect();
                if let Some((first, _)) = shell.room.handle_send_batch(drafts, now).expect("the batch fits") {
                    for (offset, body) in bodies.into_iter().enumerate() {
                        log.insert(first + offset as u64, Arc::from(body));
                    }
                }
            }
            RingOp::Typing { user: who } => shell.room.handle_typing(user(USERS[who]), now).expect("typing"),
            RingOp::Subscribe { user: who, slow, batch_max } => {
                let id = shell.subscribed(who.map(|i| USERS[i]), now);
                let start = shell.room.durable_seq();
                readers.push(RingReader { id, slow, batch_max, start, items: Vec::new(), end: None });
            }
            RingOp::Unsubscribe { index } => {
                let live: Vec<usize> = (0..readers.len()).filter(|&i| readers[i].end.is_none()).collect();
                if !live.is_empty() {
                    let reader = &mut readers[live[index % live.len()]];
                    prop_assert!(shell.unsubscribe(reader.id, now));
                    reader.end = Some(ReaderEnd::Unsubscribed);
                }
            }
            RingOp::ReadFast => {
                for reader in readers.iter_mut().filter(|reader| !reader.slow) {
                    reader.read(&mut shell)?;
                }
            }
            RingOp::ReadOne { index } => {
                if !readers.is_empty() {
                    let len = readers.len();
                    readers[index % len].read(&mut shell)?;
                }
            }
            RingOp::Wait { millis: waited } => millis += waited,
        }
        shell.flush(now);
        if shell.ring.poll_timeout().is_some_and(|due| due <= now) {
            for (id, lag) in shell.sweep(now) {
                let Some(reader) = readers.iter_mut().find(|reader| reader.id == id) else {
                    return Err(TestCaseError::fail(format!("the sweep closed {id:?}, never a reader")));
                };
                prop_assert!(reader.end.is_none(), "closed a reader that had ended");
                let told_upto = check_stream(reader, &log)?;
                prop_assert_eq!(lag.missed_from, told_upto + 1, "G2: the final lag starts where the stream stopped");
                prop_assert_eq!(lag.missed_to, shell.room.durable_seq(), "G2: the final lag reaches the last message");
                reader.end = Some(ReaderEnd::Stalled(lag));
            }
        }
        let live = readers.iter().filter(|reader| reader.end.is_none()).count();
        prop_assert_eq!(shell.room.subscriber_count(), live, "the room counts exactly the live readers");
        prop_assert_eq!(shell.ring.reader_count(), live);
    }
    // A final full read: every live reader is told of every message, delivered or missed.
    let last = shell.room.durable_seq();
    for reader in &mut readers {
        while reader.read(&mut shell)? == ReadStatus::Items {}
        let told_upto = check_stream(reader, &log)?;
        match &reader.end {
            None => {
                prop_assert_eq!(told_upto, last, "G2: nothing silent at the tail");
                prop_assert_eq!(shell.ring.delivered(reader.id), Some(last), "the cursor agrees with the stream");
            }
            Some(ReaderEnd::Stalled(lag)) => prop_assert_eq!(lag.missed_from, told_upto + 1),
            Some(_) => {}
        }
    }
    Ok(())
}

#[test]
fn the_stream_check_catches_a_silently_dropped_message() {
    // The ring property is only as good as its checker: fed the injected defect (the first
    // reader skips message 2 without a lag marker), it must object.
    let mut shell = Shell::new("ring", &Limits { subscriber_queue_len_max: 8, ..Limits::default() });
    shell.ring.inject_bug(confab_engine::InjectedBug::DropDelivery(2));
    let id = shell.subscribed(None, at(0));
    let mut log = BTreeMap::new();
    for body in ["a", "b", "c"] {
        let seq = shell.send("u", body, at(1));
        log.insert(seq, Arc::from(body));
    }
    let mut reader = RingReader { id, slow: false, batch_max: 8, start: 0, items: Vec::new(), end: None };
    while reader.read(&mut shell).expect("the read itself is sound") == ReadStatus::Items {}
    let verdict = check_stream(&reader, &log);
    assert!(verdict.is_err(), "a gap without a lag marker went unnoticed: {verdict:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn room_keeps_g1_to_g7_under_random_operations(ops in proptest::collection::vec(op(), 1..120)) {
        run_room(ops)?;
    }

    #[test]
    fn ring_readers_are_told_exactly_what_they_missed(
        capacity in 1..8usize,
        stall_ms in 20..400u64,
        ops in proptest::collection::vec(ring_op(), 1..150),
    ) {
        run_ring(capacity, stall_ms, ops)?;
    }

    #[test]
    fn upload_receipt_counts_exactly_the_accepted_chunks(
        sizes in proptest::collection::vec(0..40usize, 0..30),
        messages_max in 0..20usize,
        bytes_max in 0..300usize,
    ) {
        let limits = Limits { upload_messages_max: messages_max, upload_bytes_max: bytes_max, ..Limits::default() };
        let mut upload = UploadAggregator::new(room_name("u"), &limits);
        let (mut count, mut bytes) = (0, 0);
        for size in sizes {
            let draft = Draft { user: user("u"), client_msg_id: None, body: Arc::from("x".repeat(size)) };
            match upload.handle_chunk(draft) {
                Ok(()) => { count += 1; bytes += size; }
                Err(UploadError::TooManyMessages { .. }) => prop_assert_eq!(count, messages_max),
                Err(UploadError::TooManyBytes { .. }) => prop_assert!(bytes + size > bytes_max),
                Err(other) => prop_assert!(false, "unexpected refusal {other}"),
            }
            prop_assert!(count <= messages_max && bytes <= bytes_max);
        }
        let receipt = upload.handle_commit().receipt;
        prop_assert_eq!(receipt.count, count);
        prop_assert_eq!(receipt.bytes, bytes);
    }
}
