use confab_engine::{Lag, Limits, NameError, ReadStatus, ReaderEnd, Room, RoomError, RoomName};

use super::{Seen, Shell, at, draft, room_name, user};

fn small_room(history_len_max: usize) -> Room {
    let limits = Limits { history_len_max, dedupe_window_len: 2, room_idle_ms: 1_000, ..Limits::default() };
    Room::new(room_name("general"), 7, &limits, at(0))
}

/// A room whose ring keeps `ring_len` events: a reader more than that behind lags.
fn shell_with_ring(ring_len: usize) -> Shell {
    Shell::new("general", &Limits { subscriber_queue_len_max: ring_len, ..Limits::default() })
}

#[test]
fn sequences_start_at_one_and_are_contiguous() {
    let mut room = small_room(100);
    for expected in 1..=5 {
        let sent = room.handle_send(draft("ann", "", "hi"), at(1)).expect("accepted");
        assert_eq!(sent.seq, expected);
        assert!(!sent.duplicate);
    }
    assert_eq!(room.last_seq(), 5);
}

#[test]
fn every_subscriber_gets_every_message_in_order() {
    let mut shell = shell_with_ring(16);
    let a = shell.subscribed(Some("a"), at(0));
    let b = shell.subscribed(None, at(0));
    for body in ["one", "two", "three"] {
        shell.send("c", body, at(1));
    }
    let messages = vec![Seen::Message(1), Seen::Message(2), Seen::Message(3)];
    // `a` arrived before `b` was reading and does not see its own arrival: only messages.
    assert_eq!(shell.read_all(a), (messages.clone(), ReadStatus::Empty));
    assert_eq!(shell.read_all(b), (messages, ReadStatus::Empty));
}

#[test]
fn a_reader_that_falls_behind_gets_an_explicit_lag_not_a_gap() {
    let mut shell = shell_with_ring(1);
    let slow = shell.subscribed(None, at(0));
    let fast = shell.subscribed(None, at(0));
    let mut slow_got = Vec::new();
    let mut fast_got = Vec::new();
    for seq in 1..=4u64 {
        shell.send("u", &seq.to_string(), at(seq));
        fast_got.extend(shell.read_all(fast).0);
        // The slow reader takes message 1, then nothing until 4 is out: 2 and 3 are gone.
        if seq == 1 || seq == 4 {
            slow_got.extend(shell.read_all(slow).0);
        }
    }
    assert_eq!(fast_got, vec![Seen::Message(1), Seen::Message(2), Seen::Message(3), Seen::Message(4)]);
    assert_eq!(
        slow_got,
        vec![Seen::Message(1), Seen::Lagged(2, 3), Seen::Message(4)],
        "the slow reader sees 1, then a lag of 2..=3 right before 4"
    );
    assert!(!shell.ring.is_lagging(slow));
    assert_eq!(shell.ring.delivered(slow), Some(4));
}

#[test]
fn a_lag_that_grows_while_the_reader_stays_behind_is_reported_once_whole() {
    let mut shell = shell_with_ring(1);
    let slow = shell.subscribed(None, at(0));
    shell.send("u", "1", at(1));
    shell.send("u", "2", at(1));
    assert!(shell.ring.is_lagging(slow), "message 1 is gone for it");
    shell.send("u", "3", at(1));
    assert!(shell.ring.is_lagging(slow));
    assert_eq!(shell.read_all(slow), (vec![Seen::Lagged(1, 2), Seen::Message(3)], ReadStatus::Empty));
    shell.send("u", "4", at(2));
    assert_eq!(shell.read_all(slow), (vec![Seen::Message(4)], ReadStatus::Empty), "the lag is not told twice");
}

#[test]
fn a_reader_that_overflowed_on_the_last_message_is_told_on_its_next_read() {
    // Regression, found by the simulator (seed 1) when deliveries were queued per subscriber:
    // a subscriber that overflowed on the room's last message was never told, and its gap
    // stayed silent until someone spoke again. With a ring it is found from the cursor.
    let mut shell = shell_with_ring(2);
    let slow = shell.subscribed(None, at(0));
    shell.send("u", "1", at(1));
    assert_eq!(shell.read_all(slow).0, vec![Seen::Message(1)]);
    shell.room.handle_send_batch(vec![draft("u", "", "2"), draft("u", "", "3")], at(2)).expect("batch");
    shell.flush(at(2));
    // Only ephemeral events follow the last message, and they push it out of the ring.
    for who in ["ann", "bob"] {
        shell.room.handle_typing(user(who), at(3)).expect("typing");
    }
    shell.flush(at(3));
    assert_eq!(
        shell.read_all(slow),
        (vec![Seen::Lagged(2, 3), Seen::Typing("ann".into()), Seen::Typing("bob".into())], ReadStatus::Empty),
        "the exact span, with no message after it"
    );
    assert_eq!(shell.ring.delivered(slow), Some(shell.room.last_seq()), "nothing silent at the tail");
    shell.send("u", "4", at(4));
    assert_eq!(shell.read_all(slow).0, vec![Seen::Message(4)], "told once");
}

#[test]
fn retried_send_returns_the_original_seq_within_the_window() {
    let mut room = small_room(100);
    let first = room.handle_send(draft("ann", "m1", "hello"), at(1)).expect("accepted");
    let retry = room.handle_send(draft("ann", "m1", "hello"), at(2)).expect("accepted");
    assert_eq!(retry.seq, first.seq);
    assert!(retry.duplicate);
    assert_eq!(room.last_seq(), 1, "a retry appends nothing");
    // Same id from another user is another message.
    assert_eq!(room.handle_send(draft("bob", "m1", "hi"), at(3)).expect("accepted").seq, 2);
    // The window holds 2 ids: after two more, m1 is forgotten and would be appended again.
    room.handle_send(draft("ann", "m2", "x"), at(4)).expect("accepted");
    room.handle_send(draft("ann", "m3", "x"), at(4)).expect("accepted");
    let late = room.handle_send(draft("ann", "m1", "hello"), at(5)).expect("accepted");
    assert!(!late.duplicate);
    assert_eq!(late.seq, 5);
}

#[test]
fn resume_is_exact_while_retained_and_says_so_otherwise() {
    let mut room = small_room(3);
    for i in 1..=5 {
        room.handle_send(draft("u", "", &i.to_string()), at(1)).expect("accepted");
    }
    // Retained: 3, 4, 5.
    let exact = room.handle_subscribe(None, Some(3), at(2)).expect("subscribed");
    assert!(exact.recovered);
    assert_eq!(exact.first_seq, 4);
    assert_eq!(exact.backlog.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5]);
    let edge = room.handle_subscribe(None, Some(2), at(2)).expect("subscribed");
    assert!(edge.recovered, "after_seq 2 resumes at 3, the first retained");
    assert_eq!(edge.backlog.len(), 3);
    let lost = room.handle_subscribe(None, Some(1), at(2)).expect("subscribed");
    assert!(!lost.recovered);
    assert_eq!(lost.first_seq, 3);
    let future = room.handle_subscribe(None, Some(99), at(2)).expect("subscribed");
    assert!(!future.recovered, "a position from another epoch is not a resume");
    let live = room.handle_subscribe(None, Some(5), at(2)).expect("subscribed");
    assert!(live.recovered);
    assert!(live.backlog.is_empty());
    assert_eq!(live.first_seq, 6);
}

#[test]
fn history_pages_and_limits() {
    let mut room = small_room(10);
    for i in 1..=12 {
        room.handle_send(draft("u", "", &i.to_string()), at(1)).expect("accepted");
    }
    let page = room.history(0, 4).expect("page");
    assert_eq!(page.first_retained_seq, 3);
    assert_eq!(page.last_seq, 12);
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4, 5, 6]);
    let tail = room.history(10, 0).expect("page");
    assert_eq!(tail.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![11, 12]);
    assert!(room.history(12, 5).expect("page").messages.is_empty());
}

#[test]
fn oversized_messages_are_refused_and_nothing_is_appended() {
    let mut room = small_room(10);
    let big = "x".repeat(Limits::default().message_bytes_max + 1);
    let error = room.handle_send(draft("u", "", &big), at(1)).expect_err("too big");
    assert!(matches!(error, RoomError::MessageTooBig { .. }));
    let batch = vec![draft("u", "", "ok"), draft("u", "", &big)];
    assert!(room.handle_send_batch(batch, at(1)).is_err());
    assert_eq!(room.last_seq(), 0, "a refused batch commits nothing");
}

#[test]
fn presence_and_typing_are_ephemeral_and_unsequenced() {
    let mut shell = shell_with_ring(16);
    let watcher = shell.subscribed(None, at(0));
    let ann = shell.subscribed(Some("ann"), at(0));
    let second_ann = shell.subscribed(Some("ann"), at(0));
    shell.room.handle_typing(user("ann"), at(1)).expect("typing");
    shell.flush(at(1));
    assert_eq!(
        shell.read_all(watcher).0,
        vec![Seen::Presence("ann".into(), true), Seen::Typing("ann".into())],
        "a second subscription of the same user is not a new arrival"
    );
    assert_eq!(shell.read_all(ann).0, vec![Seen::Typing("ann".into())], "no one sees their own arrival");
    assert_eq!(shell.room.present_users(), vec![user("ann")]);
    assert!(shell.unsubscribe(ann, at(2)));
    assert_eq!(shell.room.present_users(), vec![user("ann")]);
    assert!(shell.unsubscribe(second_ann, at(2)));
    assert!(shell.room.present_users().is_empty());
    assert_eq!(shell.read_all(watcher).0, vec![Seen::Presence("ann".into(), false)]);
    assert_eq!(shell.read(ann, 8), (vec![], ReadStatus::Ended(ReaderEnd::Unsubscribed)));
    assert_eq!(shell.room.last_seq(), 0);
}

#[test]
fn an_idle_room_retires_and_refuses_everything_after() {
    let mut room = small_room(10);
    let sub = room.handle_subscribe(None, None, at(0)).expect("subscribed");
    assert!(!room.handle_retire_if_idle(at(5_000)), "a room with a subscriber is not idle");
    room.handle_unsubscribe(sub.id, at(5_000));
    assert!(!room.handle_retire_if_idle(at(5_500)), "not idle long enough");
    assert!(room.handle_retire_if_idle(at(6_000)));
    assert_eq!(room.handle_send(draft("u", "", "late"), at(6_001)), Err(RoomError::Retired));
}

#[test]
fn a_room_that_never_got_a_message_retires_after_the_shorter_idle_time() {
    let limits = Limits { room_idle_ms: 10_000, empty_room_idle_ms: 1_000, ..Limits::default() };
    let mut empty = Room::new(room_name("empty"), 1, &limits, at(0));
    let mut used = Room::new(room_name("used"), 2, &limits, at(0));
    for room in [&mut empty, &mut used] {
        let sub = room.handle_subscribe(None, None, at(0)).expect("subscribed");
        room.handle_unsubscribe(sub.id, at(0));
    }
    used.handle_send(draft("ann", "", "history to keep"), at(0)).expect("sent");
    assert!(!empty.handle_retire_if_idle(at(999)), "not idle long enough");
    assert!(empty.handle_retire_if_idle(at(1_000)), "nothing to keep: the short idle time");
    assert!(!used.handle_retire_if_idle(at(1_000)), "a room with history keeps the normal idle time");
    assert!(used.handle_retire_if_idle(at(10_000)));
}

#[test]
fn history_pages_and_retained_history_are_bounded_in_bytes() {
    // Each message counts its body, its user ("u") and the overhead: 100 + 1 + 64 = 165.
    let one = 100 + 1 + confab_engine::limits::MESSAGE_OVERHEAD_BYTES;
    let limits = Limits { history_page_bytes_max: 3 * one + 10, history_bytes_max: 5 * one, ..Limits::default() };
    let mut room = Room::new(room_name("bytes"), 1, &limits, at(0));
    for _ in 0..8 {
        room.handle_send(draft("u", "", &"x".repeat(100)), at(0)).expect("sent");
    }
    let page = room.history(0, 0).expect("page");
    assert_eq!(page.first_retained_seq, 4, "the oldest beyond 5 messages' bytes were dropped");
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [4, 5, 6], "the page stops at its byte budget");
    assert_eq!(page.last_seq, 8, "and says how far the room goes, to continue after 6");
    let rest: Vec<u64> = room.history(6, 0).expect("page").messages.iter().map(|m| m.seq).collect();
    assert_eq!(rest, [7, 8]);
    // A message bigger than both budgets is still kept and served, alone.
    room.handle_send(draft("u", "", &"y".repeat(2_000)), at(0)).expect("sent");
    let page = room.history(0, 0).expect("page");
    assert_eq!((page.first_retained_seq, page.messages.len()), (9, 1), "never an empty page or history");
}

#[test]
fn names_are_validated() {
    assert_eq!(RoomName::new(""), Err(NameError::RoomEmpty));
    assert!(matches!(RoomName::new("a b"), Err(NameError::RoomCharset { bad: ' ' })));
    assert!(matches!(RoomName::new(&"r".repeat(65)), Err(NameError::RoomTooLong { .. })));
    assert!(RoomName::new("team-1.ops_x").is_ok());
    assert!(confab_engine::UserName::new("bad\nname").is_err());
    assert_eq!(confab_engine::UserName::new(""), Err(NameError::UserEmpty));
}

#[test]
fn room_full_is_a_refusal() {
    let limits = Limits { room_subscribers_max: 1, ..Limits::default() };
    let mut room = Room::new(room_name("tiny"), 1, &limits, at(0));
    room.handle_subscribe(None, None, at(0)).expect("first fits");
    assert_eq!(room.handle_subscribe(None, None, at(0)), Err(RoomError::RoomFull { subscribers_max: 1 }));
}

#[test]
fn a_stalled_subscriber_is_closed_with_what_it_missed_and_a_slow_reader_is_not() {
    // A ring of 2 events, swept every 250 ms, closing a lagging reader that did not move for
    // 1,000 ms. One message a round, every 100 ms.
    let limits = Limits { subscriber_queue_len_max: 2, subscriber_stall_ms: 1_000, ..Limits::default() };
    let mut shell = Shell::new("general", &limits);
    let stuck = shell.subscribed(Some("stuck"), at(0));
    let slow = shell.subscribed(Some("slow"), at(0));
    let fast = shell.subscribed(None, at(0));
    // Message 1 reaches everyone; from then on the stuck reader takes nothing, and the slow
    // one takes one item every third round, before the round's message: it lags at every
    // sweep (a message every 100 ms, 2 places, one item per 300 ms) but keeps moving.
    shell.send("pub", "1", at(100));
    for id in [stuck, slow, fast] {
        shell.read_all(id);
    }
    let mut closed = Vec::new();
    let mut fast_saw = Vec::new();
    let mut slow_saw = Vec::new();
    for seq in 2..=30u64 {
        let now = at(seq * 100);
        if seq % 3 == 0 {
            slow_saw.extend(shell.read(slow, 1).0);
        }
        shell.send("pub", &seq.to_string(), now);
        fast_saw.extend(shell.read_all(fast).0);
        if shell.ring.poll_timeout().is_some_and(|due| due <= now) {
            let stalled = shell.sweep(now);
            if !stalled.is_empty() {
                closed.push((seq, stalled));
            }
        }
    }
    assert_eq!(closed.len(), 1, "closed once, and only the stuck one: {closed:?}");
    let (closed_at_seq, ref who) = closed[0];
    // It first lagged when message 4 pushed message 1's neighbours out (first sweep seeing it:
    // 400 ms); it closes at the first sweep 1,000 ms after that, missing 2 up to then.
    assert_eq!(closed_at_seq, 16);
    assert_eq!(who, &vec![(stuck, Lag { missed_from: 2, missed_to: 16 })]);
    assert_eq!(
        shell.read(stuck, 8),
        (vec![], ReadStatus::Ended(ReaderEnd::Stalled(Lag { missed_from: 2, missed_to: 16 }))),
        "its stream ends with the span it missed"
    );
    assert_eq!(shell.room.subscriber_count(), 2, "the slow reader and the fast one stay");
    assert!(!shell.room.present_users().contains(&user("stuck")));
    assert!(shell.room.present_users().contains(&user("slow")));
    assert!(fast_saw.contains(&Seen::Presence("stuck".into(), false)), "the others see the stuck user leave");
    assert!(shell.ring.is_lagging(slow), "the slow reader lags to the end");
    slow_saw.extend(shell.read_all(slow).0);
    assert!(slow_saw.iter().filter(|seen| matches!(seen, Seen::Lagged(..))).count() > 3, "it was told it lagged");
    assert_eq!(shell.ring.delivered(slow), Some(30), "the slow reader is told of everything");
    shell.send("pub", "after", at(4_000));
    assert_eq!(shell.read(stuck, 8), (vec![], ReadStatus::Ended(ReaderEnd::Unsubscribed)), "nothing after its end");
    assert_eq!(shell.read_all(fast).0, vec![Seen::Message(31)]);
}

#[test]
fn presence_is_the_union_of_local_and_remote_members_without_duplicate_events() {
    let mut shell = shell_with_ring(16);
    let watcher = shell.subscribed(None, at(0));
    let remote = |names: &[&str]| names.iter().map(|name| user(name)).collect::<std::collections::BTreeSet<_>>();
    // Ann is on another node, then here too: one arrival.
    shell.room.handle_remote_members(remote(&["ann", "bob"]));
    shell.flush(at(1));
    let ann = shell.subscribed(Some("ann"), at(1));
    assert_eq!(shell.room.poll_local_members(), Some(remote(&["ann"])));
    assert_eq!(shell.room.poll_local_members(), None, "said once per change");
    assert_eq!(shell.read_all(watcher).0, vec![Seen::Presence("ann".into(), true), Seen::Presence("bob".into(), true)]);
    assert_eq!(shell.room.present_users(), vec![user("ann"), user("bob")]);
    // She leaves the other node: still here, no event; bob leaves: one event.
    shell.room.handle_remote_members(remote(&[]));
    shell.flush(at(2));
    assert_eq!(shell.read_all(watcher).0, vec![Seen::Presence("bob".into(), false)]);
    assert_eq!(shell.room.present_users(), vec![user("ann")]);
    // She comes back on the other node, then leaves here: still present, no event.
    shell.room.handle_remote_members(remote(&["ann"]));
    assert!(shell.unsubscribe(ann, at(3)));
    assert_eq!(shell.room.poll_local_members(), Some(remote(&[])));
    assert_eq!(shell.read_all(watcher).0, vec![]);
    assert_eq!(shell.room.present_users(), vec![user("ann")]);
    shell.room.handle_remote_members(remote(&[]));
    shell.room.handle_remote_typing(user("carl"));
    shell.flush(at(4));
    assert_eq!(shell.read_all(watcher).0, vec![Seen::Presence("ann".into(), false), Seen::Typing("carl".into())]);
    assert!(shell.room.present_users().is_empty());
}

#[test]
fn messages_past_the_age_limit_expire_oldest_first_but_the_last_one_stays() {
    let limits = Limits { history_age_max_ms: Some(1_000), ..Limits::default() };
    let mut room = Room::new(room_name("general"), 1, &limits, at(0));
    for (body, now) in [("old", 0), ("under a second old at 1500", 600), ("recent", 1_000)] {
        room.handle_send(draft("ann", "", body), at(now)).expect("accepted");
    }
    let seqs = |room: &Room| room.history(0, 0).expect("open").messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    room.handle_expire(at(1_000));
    assert_eq!(seqs(&room), [1, 2, 3], "nothing is over a second old yet");
    room.handle_expire(at(1_500));
    assert_eq!(seqs(&room), [2, 3], "#1 is 1.5 s old");
    assert_eq!(room.first_retained_seq(), 2);
    room.handle_expire(at(60_000));
    assert_eq!(seqs(&room), [3], "the room's last message stays, however old");
    assert_eq!(room.history(0, 0).expect("open").last_seq, 3);

    let unlimited = Limits::default();
    let mut room = Room::new(room_name("general"), 1, &unlimited, at(0));
    room.handle_send(draft("ann", "", "kept"), at(0)).expect("accepted");
    room.handle_send(draft("ann", "", "kept too"), at(0)).expect("accepted");
    room.handle_expire(at(u64::MAX));
    assert_eq!(seqs(&room), [1, 2], "without an age limit nothing expires");
}
