use std::sync::Arc;

use confab_engine::{
    ChatMessage, ClientFrame, FrameError, RoomEvent, Sent, ServerFrame, Session, SessionCommand, SessionError,
    SubscriberId, Subscription,
};

use super::{at, room_name, user};

fn commands(session: &mut Session) -> Vec<SessionCommand> {
    std::iter::from_fn(|| session.poll_command()).collect()
}

fn message(seq: u64, who: &str) -> Arc<ChatMessage> {
    Arc::new(ChatMessage {
        room: room_name("r"),
        seq,
        user: user(who),
        client_msg_id: None,
        body: Arc::from("hi"),
        accepted_at: at(0),
    })
}

/// Joins room `r`, whose subscription starts at `first_seq` with no backlog.
fn joined(session: &mut Session, first_seq: u64) -> SubscriberId {
    session.handle_frame(ClientFrame::Join { room: "r".into(), after_seq: None });
    assert!(matches!(commands(session).as_slice(), [SessionCommand::Subscribe { .. }]));
    let id = SubscriberId(1);
    let subscription = Subscription { id, epoch: 1, recovered: true, first_seq, backlog: Vec::new() };
    session.handle_subscribed(room_name("r"), Ok(subscription));
    commands(session);
    id
}

fn ack(session: &mut Session, seq: u64) -> Vec<SessionCommand> {
    session.handle_frame(ClientFrame::Ack { room: "r".into(), seq });
    commands(session)
}

fn is_ack_ahead(out: &[SessionCommand]) -> bool {
    matches!(
        out,
        [SessionCommand::Emit(ServerFrame::Error { error: FrameError::Session(SessionError::AckAhead { .. }), .. })]
    )
}

#[test]
fn frames_for_rooms_not_joined_are_refused_with_an_error_frame() {
    let mut session = Session::new(user("ann"), 4);
    session.handle_frame(ClientFrame::Send { room: "r".into(), client_msg_id: String::new(), body: "x".into() });
    let out = commands(&mut session);
    assert!(matches!(
        out.as_slice(),
        [SessionCommand::Emit(ServerFrame::Error { error: FrameError::Session(SessionError::NotJoined { .. }), .. })]
    ));
    session.handle_frame(ClientFrame::Join { room: "bad room".into(), after_seq: None });
    assert!(matches!(
        commands(&mut session).as_slice(),
        [SessionCommand::Emit(ServerFrame::Error { error: FrameError::Session(SessionError::Name(_)), .. })]
    ));
}

#[test]
fn joined_rooms_are_bounded() {
    let mut session = Session::new(user("ann"), 1);
    session.handle_frame(ClientFrame::Join { room: "a".into(), after_seq: None });
    session.handle_frame(ClientFrame::Join { room: "b".into(), after_seq: None });
    let out = commands(&mut session);
    assert!(matches!(out[0], SessionCommand::Subscribe { .. }));
    assert!(matches!(
        out[1],
        SessionCommand::Emit(ServerFrame::Error {
            error: FrameError::Session(SessionError::TooManyRooms { rooms_max: 1 }),
            ..
        })
    ));
}

#[test]
fn a_subscription_emits_its_backlog_then_attaches_the_ring() {
    let mut session = Session::new(user("ann"), 4);
    session.handle_frame(ClientFrame::Join { room: "r".into(), after_seq: Some(0) });
    commands(&mut session);
    let backlog = vec![message(1, "bob"), message(2, "cy")];
    let subscription = Subscription { id: SubscriberId(3), epoch: 1, recovered: true, first_seq: 1, backlog };
    session.handle_subscribed(room_name("r"), Ok(subscription));
    let out = commands(&mut session);
    let subscribed = RoomEvent::Subscribed { room: room_name("r"), epoch: 1, recovered: true, first_seq: 1 };
    assert_eq!(
        out,
        vec![
            SessionCommand::Emit(ServerFrame::Event(subscribed)),
            SessionCommand::Emit(ServerFrame::Event(RoomEvent::Message(message(1, "bob")))),
            SessionCommand::Emit(ServerFrame::Event(RoomEvent::Message(message(2, "cy")))),
            SessionCommand::Attach { room: room_name("r") },
        ],
        "the ring is attached only after the backlog, so live events follow it"
    );
    assert!(ack(&mut session, 2).is_empty(), "the backlog counts as delivered");
    assert!(is_ack_ahead(&ack(&mut session, 3)));
}

#[test]
fn close_finishes_at_once_naming_the_echo_still_owed() {
    let mut session = Session::new(user("ann"), 4);
    joined(&mut session, 1);
    session.handle_frame(ClientFrame::Send { room: "r".into(), client_msg_id: "c1".into(), body: "hi".into() });
    assert!(matches!(commands(&mut session).as_slice(), [SessionCommand::Send { .. }]));
    session.handle_sent(room_name("r"), None, Ok(Sent { seq: 2, duplicate: false }));
    session.handle_delivered(&room_name("r"), 1);
    session.handle_close();
    assert!(session.is_finished());
    let out = commands(&mut session);
    assert!(matches!(out[0], SessionCommand::Emit(ServerFrame::SendAck { seq: 2, .. })));
    assert_eq!(
        out[1..],
        [SessionCommand::Finish { echoes: vec![(room_name("r"), 2)] }],
        "the stream must still carry message 2, the session's own"
    );
    session.handle_close();
    assert!(commands(&mut session).is_empty(), "finished once");
    session.handle_frame(ClientFrame::Typing { room: "r".into() });
    assert!(matches!(
        commands(&mut session).as_slice(),
        [SessionCommand::Emit(ServerFrame::Error { error: FrameError::Session(SessionError::Closing), .. })]
    ));
}

#[test]
fn an_echo_already_delivered_or_declared_missed_is_not_owed() {
    let mut session = Session::new(user("ann"), 4);
    joined(&mut session, 1);
    session.handle_sent(room_name("r"), None, Ok(Sent { seq: 1, duplicate: false }));
    // The stream reported a lag of 1..=2: the echo was declared missed, nothing to wait for.
    session.handle_delivered(&room_name("r"), 2);
    session.handle_close();
    let out = commands(&mut session);
    assert_eq!(out.last(), Some(&SessionCommand::Finish { echoes: vec![] }));
}

#[test]
fn disconnect_drops_every_subscription_and_nothing_else() {
    let mut session = Session::new(user("ann"), 4);
    let id = joined(&mut session, 1);
    session.handle_frame(ClientFrame::Typing { room: "r".into() });
    session.handle_disconnect();
    assert!(session.is_finished());
    assert_eq!(
        commands(&mut session),
        vec![SessionCommand::Unsubscribe { room: room_name("r"), subscriber: id }],
        "frames for a client that went away are pointless"
    );
}

#[test]
fn acks_cannot_run_ahead_of_deliveries() {
    let mut session = Session::new(user("ann"), 4);
    joined(&mut session, 1);
    assert!(is_ack_ahead(&ack(&mut session, 1)), "nothing read yet");
    session.handle_delivered(&room_name("r"), 1);
    assert!(ack(&mut session, 1).is_empty());
    assert_eq!(session.acked(&room_name("r")), Some(1));
    assert!(is_ack_ahead(&ack(&mut session, 5)));
    session.handle_delivered(&room_name("r"), 0);
    assert!(ack(&mut session, 1).is_empty(), "a report never moves delivery back");
}

#[test]
fn delivery_reports_for_a_room_left_are_ignored() {
    let mut session = Session::new(user("ann"), 4);
    let id = joined(&mut session, 1);
    session.handle_frame(ClientFrame::Leave { room: "r".into() });
    assert_eq!(
        commands(&mut session),
        vec![
            SessionCommand::Unsubscribe { room: room_name("r"), subscriber: id },
            SessionCommand::Emit(ServerFrame::Left { room: room_name("r"), stopped: false }),
        ]
    );
    session.handle_delivered(&room_name("r"), 5);
    assert!(commands(&mut session).is_empty());
    joined(&mut session, 1);
    assert!(is_ack_ahead(&ack(&mut session, 1)), "the old subscription's report does not count for the new one");
}

#[test]
fn a_session_without_acks_sends_none_but_still_owes_its_echo_and_refusals() {
    let mut session = Session::new(user("ann"), 4).without_acks();
    joined(&mut session, 1);
    session.handle_frame(ClientFrame::Send { room: "r".into(), client_msg_id: String::new(), body: "x".into() });
    assert!(matches!(commands(&mut session).as_slice(), [SessionCommand::Send { .. }]));
    session.handle_sent(room_name("r"), None, Ok(Sent { seq: 3, duplicate: false }));
    assert!(commands(&mut session).is_empty(), "no acknowledgement frame");
    session.handle_sent(room_name("r"), None, Err(confab_engine::RoomError::Retired));
    assert!(
        matches!(commands(&mut session).as_slice(), [SessionCommand::Emit(ServerFrame::Error { .. })]),
        "a refusal is still told"
    );
    session.handle_close();
    assert_eq!(commands(&mut session), vec![SessionCommand::Finish { echoes: vec![(room_name("r"), 3)] }]);
}

#[test]
fn a_room_that_stops_is_left_with_its_reason_and_can_be_joined_again() {
    let mut session = Session::new(user("ann"), 4);
    let id = joined(&mut session, 1);
    session.handle_room_stopped(room_name("r"));
    assert_eq!(
        commands(&mut session),
        vec![
            SessionCommand::Unsubscribe { room: room_name("r"), subscriber: id },
            SessionCommand::Emit(ServerFrame::Left { room: room_name("r"), stopped: true }),
        ]
    );
    assert!(session.rooms().is_empty());
    session.handle_room_stopped(room_name("r"));
    assert_eq!(commands(&mut session), Vec::new(), "a room not joined stops nothing");
    session.handle_frame(ClientFrame::Join { room: "r".into(), after_seq: Some(3) });
    assert!(matches!(commands(&mut session).as_slice(), [SessionCommand::Subscribe { after_seq: Some(3), .. }]));
}
