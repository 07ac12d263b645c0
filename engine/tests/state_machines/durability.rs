use confab_engine::{Limits, Persistence, ReadStatus, Room, RoomEffect};

use super::{Seen, Shell, at, draft, room_name};

fn deferred_room() -> Room {
    let mut room = Room::new(room_name("d"), 3, &Limits::default(), at(0));
    room.set_persistence(Persistence::Deferred);
    room
}

/// The seqs of what the room asks to write, draining its effects (nothing else may be due).
fn persist_effects(room: &mut Room) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Some(effect) = room.poll_effect() {
        match effect {
            RoomEffect::Persist(messages) => seqs.extend(messages.iter().map(|m| m.seq)),
            RoomEffect::Publish(event) => panic!("nothing is published before it is durable: {event:?}"),
        }
    }
    seqs
}

#[test]
fn a_deferred_message_is_invisible_until_durable() {
    let mut shell = Shell::around(deferred_room(), &Limits::default());
    let watcher = shell.subscribed(None, at(0));
    let sent = shell.room.handle_send(draft("ann", "a1", "hello"), at(1)).expect("sequenced");
    assert_eq!(sent.seq, 1);
    shell.flush(at(1));
    assert_eq!(shell.read_all(watcher), (vec![], ReadStatus::Empty), "nothing is delivered before it is durable");
    assert!(shell.room.history(0, 10).expect("history").messages.is_empty(), "nor visible in history");
    let early = shell.subscribe(None, Some(0), at(1)).expect("subscribed");
    assert!(early.backlog.is_empty() && early.first_seq == 1);
    let to_write: Vec<u64> = std::mem::take(&mut shell.to_write).iter().map(|m| m.seq).collect();
    assert_eq!(to_write, vec![1]);
    shell.flush(at(1));
    assert!(shell.to_write.is_empty(), "handed over once");
    shell.room.handle_durable(1);
    shell.flush(at(2));
    for id in [watcher, early.id] {
        assert_eq!(shell.read_all(id).0, vec![Seen::Message(1)], "every subscriber gets it once durable");
    }
    assert_eq!(shell.room.history(0, 10).expect("history").messages.len(), 1);
}

#[test]
fn a_failed_write_rolls_back_as_if_never_sent() {
    let mut room = deferred_room();
    room.handle_send(draft("ann", "a1", "kept"), at(1)).expect("sequenced");
    assert_eq!(persist_effects(&mut room), vec![1]);
    room.handle_durable(1);
    assert!(matches!(room.poll_effect(), Some(RoomEffect::Publish(event)) if event.seq() == Some(1)));
    room.handle_send(draft("ann", "a2", "lost"), at(2)).expect("sequenced");
    room.handle_send(draft("ann", "a3", "lost too"), at(2)).expect("sequenced");
    assert_eq!(persist_effects(&mut room), vec![2, 3]);
    assert_eq!(room.handle_persist_failed(), Some((2, 3)));
    assert_eq!((room.last_seq(), room.durable_seq()), (1, 1));
    assert_eq!(room.poll_effect(), None, "a failed write publishes nothing");
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
    let restored = Room::restore(room_name("d"), 9, &Limits::default(), at(100), Persistence::Deferred, 5, tail);
    assert_eq!((restored.epoch(), restored.last_seq(), restored.first_retained_seq()), (9, 5, 3));
    // The ring continues the restored numbering: pushing message 6 would panic otherwise.
    let mut shell = Shell::around(restored, &Limits::default());
    let retry = shell.room.handle_send(draft("ann", "id4", "4"), at(101)).expect("dedupe");
    assert_eq!((retry.seq, retry.duplicate), (4, true), "G4 across a restart");
    let resumed = shell.subscribe(None, Some(3), at(101)).expect("subscribed");
    assert!(resumed.recovered);
    assert_eq!(resumed.backlog.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![4, 5], "G5 across a restart");
    assert_eq!(shell.room.handle_send(draft("bob", "", "next"), at(102)).expect("sent").seq, 6);
    shell.flush(at(102));
    assert_eq!(shell.read_all(resumed.id), (vec![], ReadStatus::Empty), "deferred: invisible until durable");
    shell.room.handle_durable(6);
    shell.flush(at(103));
    assert_eq!(shell.read_all(resumed.id).0, vec![Seen::Message(6)], "live right after the backlog");
}
