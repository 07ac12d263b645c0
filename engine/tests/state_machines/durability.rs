use confab_engine::{Limits, Persistence, Room, RoomEvent};

use super::{at, draft, room_name};

fn deferred_room() -> Room {
    let mut room = Room::new(room_name("d"), 3, &Limits::default(), at(0));
    room.set_persistence(Persistence::Deferred);
    room
}

#[test]
fn a_deferred_message_is_invisible_until_durable() {
    let mut room = deferred_room();
    let watcher = room.handle_subscribe(None, None, at(0)).expect("subscribed");
    let sent = room.handle_send(draft("ann", "a1", "hello"), at(1)).expect("sequenced");
    assert_eq!(sent.seq, 1);
    assert!(room.poll_delivery().is_none(), "nothing is delivered before it is durable");
    assert!(room.history(0, 10).expect("history").messages.is_empty(), "nor visible in history");
    let early = room.handle_subscribe(None, Some(0), at(1)).expect("subscribed");
    assert!(early.backlog.is_empty() && early.first_seq == 1);
    let to_write: Vec<u64> = room.take_to_persist().iter().map(|m| m.seq).collect();
    assert_eq!(to_write, vec![1]);
    assert!(room.take_to_persist().is_empty(), "handed over once");
    room.handle_durable(1);
    let delivered: Vec<_> = std::iter::from_fn(|| room.poll_delivery()).map(|d| (d.to, d.event.seq())).collect();
    assert_eq!(delivered, vec![(watcher.id, Some(1)), (early.id, Some(1))], "both subscribers get it once durable");
    assert_eq!(room.history(0, 10).expect("history").messages.len(), 1);
}

#[test]
fn a_failed_write_rolls_back_as_if_never_sent() {
    let mut room = deferred_room();
    room.handle_send(draft("ann", "a1", "kept"), at(1)).expect("sequenced");
    room.take_to_persist();
    room.handle_durable(1);
    room.handle_send(draft("ann", "a2", "lost"), at(2)).expect("sequenced");
    room.handle_send(draft("ann", "a3", "lost too"), at(2)).expect("sequenced");
    assert_eq!(room.handle_persist_failed(), Some((2, 3)));
    assert_eq!((room.last_seq(), room.durable_seq()), (1, 1));
    let again = room.handle_send(draft("ann", "a2", "retry"), at(3)).expect("sequenced");
    assert_eq!((again.seq, again.duplicate), (2, false), "the failed id is forgotten, its number reused");
    let kept = room.handle_send(draft("ann", "a1", "kept"), at(3)).expect("dedupe");
    assert!(kept.duplicate && kept.seq == 1, "durable ids are still remembered");
}

#[test]
fn a_restored_room_continues_its_numbers_and_remembers_ids() {
    let mut original = Room::new(room_name("d"), 9, &Limits::default(), at(0));
    for i in 1..=5 {
        original.handle_send(draft("ann", &format!("id{i}"), &i.to_string()), at(i)).expect("sent");
    }
    let tail: Vec<_> = original.history(2, 0).expect("history").messages.iter().map(|m| (**m).clone()).collect();
    let mut restored = Room::restore(room_name("d"), 9, &Limits::default(), at(100), Persistence::Deferred, 5, tail);
    assert_eq!((restored.epoch(), restored.last_seq(), restored.first_retained_seq()), (9, 5, 3));
    let retry = restored.handle_send(draft("ann", "id4", "4"), at(101)).expect("dedupe");
    assert_eq!((retry.seq, retry.duplicate), (4, true), "G4 across a restart");
    let resumed = restored.handle_subscribe(None, Some(3), at(101)).expect("subscribed");
    assert!(resumed.recovered);
    assert_eq!(resumed.backlog.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5], "G5 across a restart");
    assert_eq!(restored.handle_send(draft("bob", "", "next"), at(102)).expect("sent").seq, 6);
    assert!(restored.poll_delivery().is_none(), "deferred: invisible until durable");
    restored.handle_durable(6);
    assert!(matches!(restored.poll_delivery().map(|d| d.event), Some(RoomEvent::Message(m)) if m.seq == 6));
}
