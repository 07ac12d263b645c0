//! The ring's cursors on their own: exact lag spans, ephemeral losses, the stall sweep, the
//! end of a room, departures, and the injected defect the checkers rely on.

use std::sync::Arc;

use confab_engine::{ChatMessage, InjectedBug, Lag, ReadStatus, ReaderEnd, Ring, RoomEvent, Seq, SubscriberId, Time};

use super::{Seen, at, room_name, seen, user};

const STALL_MS: u64 = 1_000;

fn message(seq: Seq) -> RoomEvent {
    RoomEvent::Message(Arc::new(ChatMessage {
        room: room_name("r"),
        seq,
        user: user("u"),
        client_msg_id: None,
        body: Arc::from(seq.to_string()),
        accepted_at: at(0),
    }))
}

fn typing(who: &str) -> RoomEvent {
    RoomEvent::Typing { room: room_name("r"), user: user(who) }
}

fn push_messages(ring: &mut Ring, seqs: std::ops::RangeInclusive<Seq>, now: Time) {
    for seq in seqs {
        ring.push(message(seq), now);
    }
}

fn read(ring: &mut Ring, id: SubscriberId, max: usize) -> (Vec<Seen>, ReadStatus) {
    let mut items = Vec::new();
    let status = ring.read(id, &mut items, max);
    (items.iter().map(seen).collect(), status)
}

const A: SubscriberId = SubscriberId(1);
const B: SubscriberId = SubscriberId(2);

#[test]
fn a_new_reader_starts_at_the_head() {
    let mut ring = Ring::new(4, 0, STALL_MS);
    ring.push(message(1), at(0));
    ring.add_reader(A, 1);
    assert_eq!(read(&mut ring, A, 8), (vec![], ReadStatus::Empty), "what came before is in its backlog");
    ring.push(message(2), at(1));
    assert_eq!(read(&mut ring, A, 8), (vec![Seen::Message(2)], ReadStatus::Items));
}

#[test]
fn a_reader_that_falls_behind_gets_the_exact_span_then_the_oldest_retained() {
    let mut ring = Ring::new(3, 0, STALL_MS);
    ring.add_reader(A, 0);
    push_messages(&mut ring, 1..=7, at(0));
    assert!(ring.is_lagging(A));
    // The lag counts toward the batch: a reader taking 2 at a time gets it with message 5.
    assert_eq!(read(&mut ring, A, 2), (vec![Seen::Lagged(1, 4), Seen::Message(5)], ReadStatus::Items));
    assert!(!ring.is_lagging(A));
    assert_eq!(ring.delivered(A), Some(5));
    assert_eq!(read(&mut ring, A, 2), (vec![Seen::Message(6), Seen::Message(7)], ReadStatus::Items));
    assert_eq!(read(&mut ring, A, 2), (vec![], ReadStatus::Empty));
}

#[test]
fn a_lag_starts_after_the_last_message_delivered_not_at_the_ring() {
    // Ephemeral events between messages do not shift the span.
    let mut ring = Ring::new(2, 10, STALL_MS);
    ring.add_reader(A, 10);
    ring.push(message(11), at(0));
    assert_eq!(read(&mut ring, A, 8).0, vec![Seen::Message(11)]);
    for event in [typing("x"), message(12), typing("y"), message(13), typing("z"), message(14)] {
        ring.push(event, at(1));
    }
    assert_eq!(read(&mut ring, A, 8).0, vec![Seen::Lagged(12, 13), Seen::Typing("z".into()), Seen::Message(14)]);
}

#[test]
fn a_lag_over_ephemeral_events_only_is_not_reported_and_does_not_stall() {
    let mut ring = Ring::new(2, 0, STALL_MS);
    ring.add_reader(A, 0);
    ring.push(message(1), at(0));
    assert_eq!(read(&mut ring, A, 8).0, vec![Seen::Message(1)]);
    for who in ["x", "y", "z"] {
        ring.push(typing(who), at(0));
    }
    assert!(ring.is_lagging(A), "it lost typing x");
    // It missed no message: however long it stays, it holds nothing and is not closed.
    for now in (0..=5 * STALL_MS).step_by(50) {
        assert!(ring.handle_timeout(at(now)).is_empty(), "closed at {now} ms for a lost typing notice");
    }
    assert_eq!(
        read(&mut ring, A, 8),
        (vec![Seen::Typing("y".into()), Seen::Typing("z".into())], ReadStatus::Items),
        "no lag marker for ephemeral losses"
    );
    assert_eq!(ring.delivered(A), Some(1));
}

#[test]
fn the_sweep_closes_a_lagging_reader_that_did_not_move_and_not_a_slow_one() {
    const STUCK: SubscriberId = SubscriberId(1);
    const SLOW: SubscriberId = SubscriberId(2);
    let mut ring = Ring::new(2, 0, STALL_MS);
    ring.add_reader(STUCK, 0);
    ring.add_reader(SLOW, 0);
    let mut closed = Vec::new();
    let mut stuck_lagging_since = None;
    let mut slow_saw = Vec::new();
    // A message every 100 ms; the stuck reader takes message 1 and nothing after; the slow
    // one takes a single item every 300 ms, just before a push: it is behind at every sweep,
    // so only its moving keeps it open. The timer fires exactly when the ring asks (50 ms
    // steps hit every due time: 250 ms sweep interval).
    let mut seq = 0;
    for now in (50..=4_000u64).step_by(50) {
        if now == 150 {
            assert_eq!(read(&mut ring, STUCK, 8).0, vec![Seen::Message(1)]);
        }
        if now % 300 == 0 {
            slow_saw.extend(read(&mut ring, SLOW, 1).0);
        }
        if now % 100 == 0 {
            seq += 1;
            ring.push(message(seq), at(now));
        }
        if ring.is_lagging(STUCK) && stuck_lagging_since.is_none() {
            stuck_lagging_since = Some(now);
        }
        if ring.poll_timeout().is_some_and(|due| due <= at(now)) {
            closed.extend(ring.handle_timeout(at(now)).into_iter().map(|(id, lag)| (now, id, lag)));
        }
    }
    // It lags from message 4 (400 ms) on, message 2 being gone; the first sweep after that
    // (550 ms: the sweep was armed when the ring first overflowed, at 300 ms) starts its clock,
    // and the first sweep at least 1,000 ms later (1,550 ms) closes it.
    assert_eq!(stuck_lagging_since, Some(400));
    assert_eq!(closed, vec![(1_550, STUCK, Lag { missed_from: 2, missed_to: 15 })], "only the stuck reader");
    assert_eq!(
        read(&mut ring, STUCK, 8),
        (vec![], ReadStatus::Ended(ReaderEnd::Stalled(Lag { missed_from: 2, missed_to: 15 }))),
        "its stream ends with the span it missed, once"
    );
    assert_eq!(read(&mut ring, STUCK, 8), (vec![], ReadStatus::Ended(ReaderEnd::Unsubscribed)));
    assert!(slow_saw.iter().filter(|seen| matches!(seen, Seen::Lagged(..))).count() > 3, "the slow one lagged");
    assert!(ring.is_lagging(SLOW), "and lags still");
    assert_eq!(ring.reader_count(), 1, "the slow reader is still reading");
}

#[test]
fn the_sweep_stops_when_no_reader_lags() {
    let mut ring = Ring::new(1, 0, STALL_MS);
    ring.add_reader(A, 0);
    push_messages(&mut ring, 1..=2, at(0));
    let due = ring.poll_timeout().expect("a reader may lag: the sweep is armed");
    read(&mut ring, A, 8);
    assert!(ring.handle_timeout(due).is_empty());
    assert_eq!(ring.poll_timeout(), None, "nobody lags: no timer");
}

#[test]
fn close_ends_readers_after_they_drained_what_was_pushed() {
    let mut ring = Ring::new(2, 0, STALL_MS);
    ring.add_reader(A, 0);
    ring.add_reader(B, 0);
    push_messages(&mut ring, 1..=3, at(0));
    ring.close();
    assert_eq!(ring.poll_timeout(), None, "a closed ring needs no sweep");
    // A lagging reader still gets its lag and what is left, then the end.
    let drained = vec![Seen::Lagged(1, 1), Seen::Message(2), Seen::Message(3)];
    assert_eq!(read(&mut ring, A, 8), (drained, ReadStatus::Items));
    assert_eq!(read(&mut ring, A, 8), (vec![], ReadStatus::Ended(ReaderEnd::RoomClosed)));
    // One item at a time: the end comes only after the last one.
    assert_eq!(read(&mut ring, B, 1), (vec![Seen::Lagged(1, 1)], ReadStatus::Items));
    assert_eq!(read(&mut ring, B, 1), (vec![Seen::Message(2)], ReadStatus::Items));
    assert_eq!(read(&mut ring, B, 1), (vec![Seen::Message(3)], ReadStatus::Items));
    assert_eq!(read(&mut ring, B, 1), (vec![], ReadStatus::Ended(ReaderEnd::RoomClosed)));
    assert_eq!(ring.reader_count(), 0);
}

#[test]
fn a_reader_that_leaves_is_handed_to_the_room_once() {
    let mut ring = Ring::new(2, 0, STALL_MS);
    ring.add_reader(A, 0);
    ring.add_reader(B, 0);
    assert!(ring.remove_reader(A));
    assert!(!ring.remove_reader(A), "it left already");
    assert_eq!(ring.take_departed(), vec![A]);
    assert_eq!(ring.take_departed(), vec![], "collected once");
    assert_eq!(read(&mut ring, A, 8), (vec![], ReadStatus::Ended(ReaderEnd::Unsubscribed)));
    assert_eq!(ring.reader_count(), 1, "the other reader stays");
}

#[test]
fn an_injected_dropped_delivery_skips_silently_for_the_first_reader_only() {
    let mut ring = Ring::new(8, 0, STALL_MS);
    ring.inject_bug(InjectedBug::DropDelivery(2));
    ring.add_reader(A, 0);
    ring.add_reader(B, 0);
    push_messages(&mut ring, 1..=3, at(0));
    // The defect the checkers must catch: a gap with no lag marker (G2 broken on purpose).
    assert_eq!(read(&mut ring, A, 8).0, vec![Seen::Message(1), Seen::Message(3)]);
    assert_eq!(ring.delivered(A), Some(3), "silently");
    assert_eq!(read(&mut ring, B, 8).0, vec![Seen::Message(1), Seen::Message(2), Seen::Message(3)]);
}
