//! Every failure the simulator ever found, pinned by its seed and options.

use confab_sim::{SimOptions, run};

/// Seed 1 with the default options (1,000 clients, 10 rooms, 10 virtual minutes) found a
/// silent gap at the tail: a subscriber whose queue overflowed after the room's last message
/// was never told (the lag marker waited for a next message that never came). Rooms now
/// retry lone lag markers (`LAG_MARKER_RETRY`).
#[test]
fn seed_1_default_options_tail_lag_is_declared() {
    let report = run(&SimOptions::with_seed(1), None).expect("valid");
    assert_eq!(report.violation_count, 0, "{report}");
    assert!(report.counts.lag_events > 0, "the case still makes subscribers lag: {report}");
}

/// Seed 1 again, once rooms began closing subscribers that stall too long (60 s without
/// taking an event): two clients whose stall outlasted that were closed, and the driver took
/// the end of their stream for the engine stopping, so they never resumed and the checker
/// reported the messages after their final lag marker as owed (G2). A closed client now
/// resumes after its last message, as after a disconnect, and the closing is counted.
#[test]
fn seed_1_default_options_stalled_subscribers_are_closed_and_resume() {
    let report = run(&SimOptions::with_seed(1), None).expect("valid");
    assert_eq!(report.violation_count, 0, "{report}");
    assert!(report.counts.stalled_closed > 0, "the case still closes stalled subscribers: {report}");
}

/// Seed 2, same bug, in another room and a session client.
#[test]
fn seed_2_default_options_tail_lag_is_declared() {
    let report = run(&SimOptions::with_seed(2), None).expect("valid");
    assert_eq!(report.violation_count, 0, "{report}");
}
