//! The checker on hand-made observations: a clean trace passes, and each guarantee's
//! violation is reported under its name.

use std::sync::Arc;

use confab_engine::{ChatMessage, ClientMsgId, HistoryPage, Lag, Receipt, RoomEvent, RoomName, Sent, Time, UserName};
use confab_sim::{Checker, SubId};

fn room() -> RoomName {
    RoomName::new("room-000").expect("valid")
}

fn message(seq: u64, id: Option<&str>, body: &str) -> Arc<ChatMessage> {
    Arc::new(ChatMessage {
        room: room(),
        seq,
        user: UserName::new("ann").expect("valid"),
        client_msg_id: id.map(|id| ClientMsgId::new(id).expect("valid").expect("not empty")),
        body: Arc::from(body),
        accepted_at: Time::from_millis(0),
    })
}

fn subscribed(first_seq: u64, recovered: bool) -> RoomEvent {
    RoomEvent::Subscribed { room: room(), epoch: 1, recovered, first_seq }
}

/// A checker with one live subscription of client 0 starting at #1.
fn with_subscriber() -> (Checker, SubId) {
    let mut checker = Checker::new(vec![room()], 1_000);
    let sub = checker.open(0, 0, None, 0);
    checker.event(sub, &subscribed(1, true), 0);
    (checker, sub)
}

fn guarantees(checker: &Checker) -> Vec<&'static str> {
    checker.violations().iter().map(|violation| violation.guarantee).collect()
}

#[test]
fn a_clean_trace_has_no_violations() {
    let (mut checker, sub) = with_subscriber();
    let other = checker.open(1, 0, None, 0);
    checker.event(other, &subscribed(1, true), 0);
    for seq in 1..=3 {
        let shared = message(seq, Some(&format!("m{seq}")), "hi");
        checker.sent(sub, Sent { seq, duplicate: false }, None, 1);
        checker.event(sub, &RoomEvent::Message(shared.clone()), 1);
        checker.event(other, &RoomEvent::Message(shared), 1);
    }
    checker.event(sub, &RoomEvent::Lagged { room: room(), lag: Lag { missed_from: 4, missed_to: 5 } }, 2);
    checker.event(sub, &RoomEvent::Message(message(6, None, "x")), 2);
    checker.event(other, &RoomEvent::Lagged { room: room(), lag: Lag { missed_from: 4, missed_to: 6 } }, 2);
    checker.finish(3);
    assert!(checker.violations().is_empty(), "{:?}", checker.violations());
    assert_eq!(checker.counts().deliveries, 7);
    assert_eq!(checker.counts().lag_events, 2);
}

#[test]
fn a_silent_gap_is_g2_and_the_excerpt_shows_it() {
    let (mut checker, sub) = with_subscriber();
    checker.event(sub, &RoomEvent::Message(message(1, None, "a")), 5);
    checker.event(sub, &RoomEvent::Message(message(3, None, "c")), 7);
    assert_eq!(guarantees(&checker), ["G2"]);
    let violation = &checker.violations()[0];
    assert!(violation.message.contains("expected #2, got #3"), "{}", violation.message);
    assert_eq!(violation.excerpt.len(), 3, "subscribed, last good, offending: {:?}", violation.excerpt);
    assert!(violation.excerpt[1].contains("receives #1"));
    assert!(violation.excerpt[2].contains("receives #3"));
}

#[test]
fn a_repeated_or_late_message_is_g1() {
    let (mut checker, sub) = with_subscriber();
    checker.event(sub, &RoomEvent::Message(message(1, None, "a")), 0);
    checker.event(sub, &RoomEvent::Message(message(1, None, "a")), 0);
    assert_eq!(guarantees(&checker), ["G1"]);
}

#[test]
fn subscribers_that_disagree_on_a_position_are_g1() {
    let (mut checker, sub) = with_subscriber();
    let other = checker.open(1, 0, None, 0);
    checker.event(other, &subscribed(1, true), 0);
    checker.event(sub, &RoomEvent::Message(message(1, None, "a")), 0);
    checker.event(other, &RoomEvent::Message(message(1, None, "b")), 0);
    assert_eq!(guarantees(&checker), ["G1"]);
}

#[test]
fn a_lag_marker_that_does_not_start_where_delivery_stopped_is_g2() {
    let (mut checker, sub) = with_subscriber();
    checker.event(sub, &RoomEvent::Lagged { room: room(), lag: Lag { missed_from: 2, missed_to: 4 } }, 0);
    assert_eq!(guarantees(&checker), ["G2"]);
}

#[test]
fn sends_sequenced_out_of_order_on_one_stream_are_g3() {
    let (mut checker, sub) = with_subscriber();
    checker.sent(sub, Sent { seq: 5, duplicate: false }, None, 0);
    checker.sent(sub, Sent { seq: 4, duplicate: false }, None, 0);
    assert_eq!(guarantees(&checker), ["G3"]);
}

#[test]
fn a_retry_appended_again_or_an_id_seen_twice_is_g4() {
    let (mut checker, sub) = with_subscriber();
    checker.sent(sub, Sent { seq: 1, duplicate: false }, None, 0);
    checker.sent(sub, Sent { seq: 2, duplicate: false }, Some(1), 0);
    checker.event(sub, &RoomEvent::Message(message(1, Some("m1"), "a")), 0);
    checker.event(sub, &RoomEvent::Message(message(2, Some("m1"), "a")), 0);
    assert_eq!(guarantees(&checker), ["G4", "G4"]);
}

#[test]
fn a_resume_that_does_not_continue_exactly_is_g5() {
    let mut checker = Checker::new(vec![room()], 1_000);
    let sub = checker.open(0, 0, Some((1, 10)), 0);
    checker.event(sub, &subscribed(12, true), 0);
    let sub = checker.open(0, 0, Some((1, 10)), 0);
    checker.event(sub, &subscribed(11, false), 0);
    assert_eq!(guarantees(&checker), ["G5", "G5"]);
}

#[test]
fn an_aborted_upload_that_appears_or_a_torn_commit_is_g6() {
    let (mut checker, sub) = with_subscriber();
    checker.upload_aborted(sub, &[Arc::from("u0-1 x")], 0);
    checker.event(sub, &RoomEvent::Message(message(1, None, "u0-1 x")), 0);
    let receipt = Receipt {
        room: room(),
        count: 2,
        bytes: 2,
        checksum: confab_engine::Checksum::new(),
        last_user: None,
        seqs: Some((2, 3)),
    };
    checker.upload_committed(sub, &[Arc::from("u0-2 a"), Arc::from("u0-3 b")], &receipt, 0);
    checker.event(sub, &RoomEvent::Message(message(2, None, "u0-2 a")), 0);
    checker.event(sub, &RoomEvent::Message(message(3, None, "someone else")), 0);
    assert_eq!(guarantees(&checker), ["G6", "G6"]);
}

#[test]
fn history_without_an_acknowledged_message_is_g7() {
    let (mut checker, sub) = with_subscriber();
    let page = HistoryPage { epoch: 1, messages: vec![], first_retained_seq: 1, last_seq: 4 };
    checker.history_read(sub, 4, "m4", &page, 0);
    assert_eq!(guarantees(&checker), ["G7"]);
}

#[test]
fn an_acknowledged_message_never_delivered_by_the_end_is_g2() {
    let (mut checker, sub) = with_subscriber();
    checker.sent(sub, Sent { seq: 1, duplicate: false }, None, 0);
    checker.finish(10);
    assert_eq!(guarantees(&checker), ["G2"]);
    assert!(checker.violations()[0].message.contains("never told of #1..=#1"));
}
