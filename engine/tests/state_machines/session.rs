use std::sync::Arc;

use confab_engine::{
    ChatMessage, ClientFrame, FrameError, Lag, RoomEvent, Sent, ServerFrame, Session, SessionCommand, SessionError,
    SubscriberId, Subscription,
};

use super::{at, room_name, user};

fn commands(session: &mut Session) -> Vec<SessionCommand> {
    std::iter::from_fn(|| session.poll_command()).collect()
}

fn message(seq: u64, who: &str) -> RoomEvent {
    RoomEvent::Message(Arc::new(ChatMessage {
        room: room_name("r"),
        seq,
        user: user(who),
        client_msg_id: None,
        body: Arc::from("hi"),
        accepted_at: at(0),
    }))
}

fn joined(session: &mut Session, first_seq: u64) -> SubscriberId {
    session.handle_frame(ClientFrame::Join { room: "r".into(), after_seq: None });
    assert!(matches!(commands(session).as_slice(), [SessionCommand::Subscribe { .. }]));
    let id = SubscriberId(1);
    let subscription = Subscription { id, epoch: 1, recovered: true, first_seq, backlog: Vec::new() };
    session.handle_subscribed(room_name("r"), Ok(subscription));
    commands(session);
    id
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
fn close_waits_for_own_messages_to_come_back() {
    let mut session = Session::new(user("ann"), 4);
    let id = joined(&mut session, 1);
    session.handle_frame(ClientFrame::Send { room: "r".into(), client_msg_id: "c1".into(), body: "hi".into() });
    assert!(matches!(commands(&mut session).as_slice(), [SessionCommand::Send { .. }]));
    session.handle_sent(room_name("r"), None, Ok(Sent { seq: 2, duplicate: false }));
    session.handle_close();
    let out = commands(&mut session);
    assert!(matches!(out.as_slice(), [SessionCommand::Emit(ServerFrame::SendAck { seq: 2, .. })]));
    assert!(!session.is_finished(), "message 2 has not come back yet");
    session.handle_room_event(id, None, message(1, "bob"));
    assert!(!session.is_finished());
    session.handle_room_event(id, None, message(2, "ann"));
    assert!(session.is_finished());
    let out = commands(&mut session);
    assert!(matches!(out.last(), Some(SessionCommand::Finish)));
    assert!(out.iter().any(|c| matches!(c, SessionCommand::Unsubscribe { .. })));
}

#[test]
fn a_lag_covering_own_message_also_releases_close() {
    let mut session = Session::new(user("ann"), 4);
    let id = joined(&mut session, 1);
    session.handle_sent(room_name("r"), None, Ok(Sent { seq: 1, duplicate: false }));
    session.handle_close();
    session.handle_room_event(id, Some(Lag { missed_from: 1, missed_to: 2 }), message(3, "bob"));
    assert!(session.is_finished());
}

#[test]
fn acks_cannot_run_ahead_of_deliveries() {
    let mut session = Session::new(user("ann"), 4);
    let id = joined(&mut session, 1);
    session.handle_room_event(id, None, message(1, "bob"));
    commands(&mut session);
    session.handle_frame(ClientFrame::Ack { room: "r".into(), seq: 1 });
    assert!(commands(&mut session).is_empty());
    assert_eq!(session.acked(&room_name("r")), Some(1));
    session.handle_frame(ClientFrame::Ack { room: "r".into(), seq: 5 });
    assert!(matches!(
        commands(&mut session).as_slice(),
        [SessionCommand::Emit(ServerFrame::Error { error: FrameError::Session(SessionError::AckAhead { .. }), .. })]
    ));
}

#[test]
fn deliveries_from_an_old_subscription_are_ignored() {
    let mut session = Session::new(user("ann"), 4);
    let id = joined(&mut session, 1);
    session.handle_frame(ClientFrame::Leave { room: "r".into() });
    commands(&mut session);
    session.handle_room_event(id, None, message(1, "bob"));
    assert!(commands(&mut session).is_empty());
}
