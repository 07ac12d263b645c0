//! Property tests: random operation sequences against the state machines, with every guarantee
//! the engine owns checked after every step against a simple model. Small limits (history of
//! 6, dedupe window of 3, queues of 2) make trimming, eviction and lag frequent.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use confab_engine::{
    ClientMsgId, Delivery, Draft, Lag, Limits, Room, RoomEvent, Seq, SubscriberId, UploadAggregator, UploadError,
};
use proptest::prelude::*;

use super::{at, room_name, user};

const HISTORY_LEN_MAX: usize = 6;
const DEDUPE_WINDOW_LEN: usize = 3;
const QUEUE_LEN_MAX: usize = 2;
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

/// A subscriber as the test sees it: a bounded queue and everything it received, in order.
struct Reader {
    id: SubscriberId,
    queue: VecDeque<Delivery>,
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

fn check_delivery(reader: &mut Reader, delivery: &Delivery, model: &Model) -> Result<(), TestCaseError> {
    let Some(seq) = delivery.event.seq() else {
        prop_assert!(delivery.lag.is_none(), "a lag marker travels with a message");
        return Ok(());
    };
    match delivery.lag {
        Some(Lag { missed_from, missed_to }) => {
            prop_assert_eq!(missed_from, reader.expected, "G2: lag starts where delivery stopped");
            prop_assert_eq!(missed_to + 1, seq, "G2: lag ends right before the message");
        }
        None => prop_assert_eq!(seq, reader.expected, "G1/G2: contiguous delivery"),
    }
    reader.expected = seq + 1;
    let RoomEvent::Message(message) = &delivery.event else { unreachable!("seq implies a message") };
    let (who, body) = &model.log[&seq];
    prop_assert_eq!(message.user.as_str(), who.as_str(), "G1: every subscriber sees the same message at a seq");
    prop_assert_eq!(&*message.body, body.as_str());
    Ok(())
}

fn drain(room: &mut Room, readers: &mut [Reader], model: &Model) -> Result<(), TestCaseError> {
    while let Some(delivery) = room.poll_delivery() {
        let reader = readers.iter_mut().find(|r| r.id == delivery.to).expect("deliveries go to subscribers");
        if reader.queue.len() == QUEUE_LEN_MAX {
            room.handle_delivery_full(&delivery);
            continue;
        }
        check_delivery(reader, &delivery, model)?;
        reader.queue.push_back(delivery);
    }
    Ok(())
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
    let limits = Limits { history_len_max: HISTORY_LEN_MAX, dedupe_window_len: DEDUPE_WINDOW_LEN, ..Limits::default() };
    let mut room = Room::new(room_name("prop"), 1, &limits, at(0));
    let mut model = Model::default();
    let mut readers: Vec<Reader> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let now = at(step as u64);
        match op {
            Op::Subscribe { user: who, after_seq } => {
                let sub = room.handle_subscribe(who.map(|i| user(USERS[i])), after_seq, now).expect("room not full");
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
                readers.push(Reader { id: sub.id, queue: VecDeque::new(), expected: model.last_seq + 1 });
            }
            Op::Unsubscribe { index } => {
                if !readers.is_empty() {
                    let reader = readers.remove(index % readers.len());
                    prop_assert!(room.handle_unsubscribe(reader.id, now));
                }
            }
            Op::Send { user: who, id } => {
                let draft = fresh_draft(&mut model, who, id);
                let remembered =
                    id.and_then(|id| model.window.iter().find(|(key, _)| *key == (who, id)).map(|(_, s)| *s));
                let sent = room.handle_send(draft.clone(), now).expect("accepted");
                match remembered {
                    Some(original) => {
                        prop_assert!(sent.duplicate, "G4: a retry inside the window is recognised");
                        prop_assert_eq!(sent.seq, original, "G4: a retry returns the original seq");
                        prop_assert_eq!(room.last_seq(), model.last_seq, "G4: a retry appends nothing");
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
                        let page = room.history(sent.seq - 1, 1).expect("history");
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
                    prop_assert_eq!(room.last_seq(), model.last_seq, "G6: an aborted upload commits nothing");
                } else {
                    let batch = upload.handle_commit();
                    prop_assert_eq!(batch.receipt.count, len);
                    let run = room.handle_send_batch(batch.drafts, now).expect("committed");
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
            Op::Typing { user: who } => room.handle_typing(user(USERS[who]), now).expect("typing"),
            Op::Consume { index, count } => {
                if !readers.is_empty() {
                    let len = readers.len();
                    let reader = &mut readers[index % len];
                    for _ in 0..count {
                        reader.queue.pop_front();
                    }
                }
            }
        }
        drain(&mut room, &mut readers, &model)?;
        prop_assert_eq!(room.last_seq(), model.last_seq);
        prop_assert_eq!(room.first_retained_seq(), model.first_retained());
        prop_assert_eq!(room.subscriber_count(), readers.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn room_keeps_g1_to_g7_under_random_operations(ops in proptest::collection::vec(op(), 1..120)) {
        run_room(ops)?;
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
