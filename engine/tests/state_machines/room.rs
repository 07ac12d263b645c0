use confab_engine::{Delivery, Lag, Limits, NameError, Room, RoomError, RoomEvent, RoomName};

use super::{at, draft, room_name, user};

fn small_room(history_len_max: usize) -> Room {
    let limits = Limits { history_len_max, dedupe_window_len: 2, room_idle_ms: 1_000, ..Limits::default() };
    Room::new(room_name("general"), 7, &limits, at(0))
}

fn drain(room: &mut Room) -> Vec<Delivery> {
    std::iter::from_fn(|| room.poll_delivery()).collect()
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
    let mut room = small_room(100);
    let a = room.handle_subscribe(Some(user("a")), None, at(0)).expect("subscribed");
    let b = room.handle_subscribe(None, None, at(0)).expect("subscribed");
    drain(&mut room);
    for body in ["one", "two", "three"] {
        room.handle_send(draft("c", "", body), at(1)).expect("accepted");
    }
    let deliveries = drain(&mut room);
    for id in [a.id, b.id] {
        let seqs: Vec<_> = deliveries.iter().filter(|d| d.to == id).filter_map(|d| d.event.seq()).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
    }
}

#[test]
fn a_full_queue_becomes_an_explicit_lag_not_a_gap() {
    let mut room = small_room(100);
    let slow = room.handle_subscribe(None, None, at(0)).expect("subscribed");
    let fast = room.handle_subscribe(None, None, at(0)).expect("subscribed");
    room.handle_send_batch((0..4).map(|i| draft("u", "", &i.to_string())).collect(), at(1)).expect("batch");
    let mut slow_got = Vec::new();
    let mut fast_got = Vec::new();
    while let Some(delivery) = room.poll_delivery() {
        if delivery.to == slow.id {
            // The slow subscriber's queue is full for messages 2 and 3.
            if matches!(delivery.event.seq(), Some(2) | Some(3)) {
                room.handle_delivery_full(&delivery);
                continue;
            }
            slow_got.push((delivery.lag, delivery.event.seq()));
        } else {
            assert_eq!(delivery.to, fast.id);
            fast_got.push((delivery.lag, delivery.event.seq()));
        }
    }
    assert_eq!(fast_got, vec![(None, Some(1)), (None, Some(2)), (None, Some(3)), (None, Some(4))]);
    assert_eq!(
        slow_got,
        vec![(None, Some(1)), (Some(Lag { missed_from: 2, missed_to: 3 }), Some(4))],
        "the slow subscriber sees 1, then a lag of 2..=3 together with 4"
    );
    assert!(!room.is_lagging(slow.id));
}

#[test]
fn a_failed_lag_marker_extends_the_lag() {
    let mut room = small_room(100);
    let slow = room.handle_subscribe(None, None, at(0)).expect("subscribed");
    room.handle_send(draft("u", "", "1"), at(1)).expect("accepted");
    let first = room.poll_delivery().expect("delivery");
    room.handle_delivery_full(&first);
    room.handle_send(draft("u", "", "2"), at(1)).expect("accepted");
    let second = room.poll_delivery().expect("delivery");
    assert_eq!(second.lag, Some(Lag { missed_from: 1, missed_to: 1 }));
    room.handle_delivery_full(&second);
    room.handle_send(draft("u", "", "3"), at(1)).expect("accepted");
    let third = room.poll_delivery().expect("delivery");
    assert_eq!(third.to, slow.id);
    assert_eq!(third.lag, Some(Lag { missed_from: 1, missed_to: 2 }));
    assert_eq!(third.event.seq(), Some(3));
}

#[test]
fn a_lag_with_no_message_after_it_is_declared_by_a_lone_marker() {
    // Found by the simulator (seed 1): a subscriber that overflowed on the room's last
    // message must still be told, or its gap stays silent until someone speaks again.
    let mut room = small_room(100);
    let slow = room.handle_subscribe(None, None, at(0)).expect("subscribed");
    room.handle_send_batch((0..3).map(|i| draft("u", "", &i.to_string())).collect(), at(1)).expect("batch");
    while let Some(delivery) = room.poll_delivery() {
        if delivery.event.seq() != Some(1) {
            room.handle_delivery_full(&delivery);
        }
    }
    let markers = room.take_lag_markers();
    let lag = Lag { missed_from: 2, missed_to: 3 };
    assert_eq!(
        markers,
        vec![Delivery { to: slow.id, lag: None, event: RoomEvent::Lagged { room: room_name("general"), lag } }]
    );
    assert!(!room.is_lagging(slow.id));
    // The queue is still full: the marker is reported back and the lag stays, then grows.
    room.handle_delivery_full(&markers[0]);
    assert!(room.is_lagging(slow.id));
    room.handle_send(draft("u", "", "4"), at(2)).expect("accepted");
    let next = room.poll_delivery().expect("delivery");
    assert_eq!((next.lag, next.event.seq()), (Some(Lag { missed_from: 2, missed_to: 3 }), Some(4)));
    assert!(room.take_lag_markers().is_empty(), "nobody lags any more");
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
    let mut room = small_room(10);
    let watcher = room.handle_subscribe(None, None, at(0)).expect("subscribed");
    let ann = room.handle_subscribe(Some(user("ann")), None, at(0)).expect("subscribed");
    let second_ann = room.handle_subscribe(Some(user("ann")), None, at(0)).expect("subscribed");
    room.handle_typing(user("ann"), at(1)).expect("typing");
    let deliveries = drain(&mut room);
    let to_watcher: Vec<_> = deliveries.iter().filter(|d| d.to == watcher.id).map(|d| &d.event).collect();
    assert!(matches!(to_watcher[0], RoomEvent::Presence { present: true, .. }));
    assert!(matches!(to_watcher[1], RoomEvent::Typing { .. }));
    assert_eq!(to_watcher.len(), 2, "a second subscription of the same user is not a new arrival");
    assert_eq!(room.present_users(), vec![user("ann")]);
    room.handle_unsubscribe(ann.id, at(2));
    assert_eq!(room.present_users(), vec![user("ann")]);
    room.handle_unsubscribe(second_ann.id, at(2));
    assert!(room.present_users().is_empty());
    let left = drain(&mut room);
    assert!(matches!(left.as_slice(), [Delivery { event: RoomEvent::Presence { present: false, .. }, .. }]));
    assert_eq!(room.last_seq(), 0);
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
fn names_are_validated() {
    assert_eq!(RoomName::new(""), Err(NameError::RoomEmpty));
    assert!(matches!(RoomName::new("a b"), Err(NameError::RoomCharset { bad: ' ' })));
    assert!(matches!(RoomName::new(&"r".repeat(65)), Err(NameError::RoomTooLong { .. })));
    assert!(RoomName::new("team-1.ops_x").is_ok());
    assert!(confab_engine::UserName::new("bad\nname").is_err());
    assert!(confab_engine::UserName::new("").is_ok());
}

#[test]
fn room_full_is_a_refusal() {
    let limits = Limits { room_subscribers_max: 1, ..Limits::default() };
    let mut room = Room::new(room_name("tiny"), 1, &limits, at(0));
    room.handle_subscribe(None, None, at(0)).expect("first fits");
    assert_eq!(room.handle_subscribe(None, None, at(0)), Err(RoomError::RoomFull { subscribers_max: 1 }));
}

/// One round of a room under load: a message to everyone, then the lag-marker retry that also
/// closes stalled subscribers. `full_for` says whose queue is full this round.
fn load_round(room: &mut Room, seq: u64, now_ms: u64, full_for: &[confab_engine::SubscriberId]) -> Vec<Delivery> {
    room.handle_send(draft("pub", "", &seq.to_string()), at(now_ms)).expect("accepted");
    let mut taken = Vec::new();
    for delivery in drain(room) {
        if full_for.contains(&delivery.to) {
            room.handle_delivery_full(&delivery);
        } else {
            taken.push(delivery);
        }
    }
    for marker in room.take_lag_markers() {
        if full_for.contains(&marker.to) {
            room.handle_delivery_full(&marker);
        } else {
            taken.push(marker);
        }
    }
    taken
}

#[test]
fn a_stalled_subscriber_is_closed_with_what_it_missed_and_a_slow_reader_is_not() {
    let limits = Limits { subscriber_stall_ms: 1_000, ..Limits::default() };
    let mut room = Room::new(room_name("general"), 7, &limits, at(0));
    let stalled = room.handle_subscribe(Some(user("stuck")), None, at(0)).expect("subscribed");
    let slow = room.handle_subscribe(Some(user("slow")), None, at(0)).expect("subscribed");
    let fast = room.handle_subscribe(None, None, at(0)).expect("subscribed");
    drain(&mut room);
    // Message 1 reaches everyone; from message 2 on the stalled queue is full for good, and the
    // slow reader's is full every other round (it takes something now and then).
    load_round(&mut room, 1, 0, &[]);
    let mut closed = Vec::new();
    let mut presence_left = Vec::new();
    for seq in 2..=30u64 {
        let now_ms = seq * 100;
        let mut full = vec![stalled.id];
        if seq % 2 == 0 {
            full.push(slow.id);
        }
        for delivery in load_round(&mut room, seq, now_ms, &full) {
            if delivery.to != fast.id {
                continue;
            }
            if let RoomEvent::Presence { user, present: false, .. } = &delivery.event {
                presence_left.push(user.as_str().to_owned());
            }
        }
        let stalled_now = room.take_stalled(at(now_ms));
        if !stalled_now.is_empty() {
            closed.push((seq, stalled_now));
        }
    }
    assert_eq!(closed.len(), 1, "closed once, and only the stalled one: {closed:?}");
    let (closed_at_seq, ref who) = closed[0];
    assert_eq!(who.len(), 1);
    assert_eq!(who[0].0, stalled.id);
    // Its clock started at the first check that saw it lag (message 2, 200 ms), so it closes
    // at the first check 1,000 ms later, and it missed everything from 2 to then.
    assert_eq!(closed_at_seq, 12);
    assert_eq!(who[0].1, Lag { missed_from: 2, missed_to: 12 });
    assert_eq!(room.subscriber_count(), 2, "the slow reader and the fast one stay");
    assert!(!room.present_users().iter().any(|u| u.as_str() == "stuck"));
    assert!(room.present_users().iter().any(|u| u.as_str() == "slow"));
    assert_eq!(presence_left, vec!["stuck".to_owned()], "the fast subscriber sees the stalled user leave");
    room.handle_send(draft("pub", "", "after"), at(4_000)).expect("accepted");
    let after = drain(&mut room);
    assert!(after.iter().all(|delivery| delivery.to != stalled.id), "nothing goes to a closed subscriber");
    assert!(after.iter().any(|delivery| delivery.to == fast.id));
}
