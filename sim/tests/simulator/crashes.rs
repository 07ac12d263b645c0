//! Node crashes and the single-node durable path: clients reconnect and resend, the store fails
//! commits, and every guarantee still holds, acknowledged messages included (G7 through
//! crashes); the same seed gives the same trace; and a defective engine is still caught.

use std::time::Duration;

use confab_engine::InjectedBug;
use confab_sim::{SimOptions, run};

/// Three nodes over the simulated replicated log, a crash every 10 s on average.
fn cluster_with_crashes(seed: u64) -> SimOptions {
    SimOptions {
        clients: 40,
        rooms: 2,
        duration: Duration::from_secs(60),
        send_interval: Duration::from_secs(1),
        session_share: 0.5,
        nodes: 3,
        crash_interval: Some(Duration::from_secs(10)),
        ..SimOptions::with_seed(seed)
    }
}

/// One node over the simulated store, failing 2% of its commits, crashing every 10 s on
/// average; busy enough that crashes catch sends in flight.
fn durable_with_faults(seed: u64) -> SimOptions {
    SimOptions {
        clients: 30,
        rooms: 2,
        duration: Duration::from_secs(40),
        send_interval: Duration::from_millis(50),
        session_share: 0.5,
        durable: true,
        commit_failures: 0.02,
        crash_interval: Some(Duration::from_secs(10)),
        ..SimOptions::with_seed(seed)
    }
}

#[test]
fn three_nodes_that_crash_keep_every_guarantee() {
    let report = run(&cluster_with_crashes(5), None).expect("valid");
    assert_eq!(report.violation_count, 0, "{report}");
    let counts = &report.counts;
    assert!(counts.crashes >= 2 && counts.restarts == counts.crashes, "nodes crashed and came back: {report}");
    assert!(counts.reconnects > 0 && counts.resends > 0, "clients reconnected and resent: {report}");
    assert_eq!(counts.audited_rooms, 2, "{report}");
}

#[test]
fn a_durable_node_with_failed_commits_and_crashes_keeps_every_guarantee() {
    let report = run(&durable_with_faults(6), None).expect("valid");
    assert_eq!(report.violation_count, 0, "{report}");
    let store = report.store_faults.expect("a durable run reports its store");
    assert!(store.failed_commits > 0 && report.counts.failed_sends > 0, "commits failed: {report}");
    assert_eq!(store.out_of_sequence, 0, "{report}");
    let counts = &report.counts;
    assert!(counts.crashes >= 2 && counts.restarts == counts.crashes, "the node crashed and came back: {report}");
    assert!(counts.reconnects > 0 && counts.resends > 0, "clients reconnected and resent: {report}");
}

#[test]
fn crashes_give_the_same_trace_twice() {
    for options in [cluster_with_crashes(8), durable_with_faults(8)] {
        let (first, second) = (run(&options, None).expect("valid"), run(&options, None).expect("valid"));
        assert_eq!(first.trace_hash, second.trace_hash, "{first}");
        assert_eq!(first.counts, second.counts);
        assert_eq!(first.store_faults, second.store_faults);
        assert_eq!(first.log_faults, second.log_faults);
    }
}

#[test]
fn a_defective_engine_is_still_caught_among_crashes() {
    let mut options = cluster_with_crashes(5);
    options.rooms = 1;
    options.send_interval = Duration::from_millis(300);
    options.injected_bug = Some(InjectedBug::ReorderRebase);
    let report = run(&options, None).expect("valid");
    assert!(report.violation_count > 0, "{report}");
    assert!(report.replay_command().contains("--crash-interval=10s"), "{}", report.replay_command());
    let mut options = durable_with_faults(6);
    options.injected_bug = Some(InjectedBug::SkipSeq(4));
    let report = run(&options, None).expect("valid");
    assert!(report.violations.iter().any(|violation| violation.guarantee == "G2"), "{report}");
}

proptest::proptest! {
    // Each case is a whole simulation with crashes; 16 keep `cargo test` quick.
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 16, ..proptest::prelude::ProptestConfig::default() })]

    /// Generated workloads with crashes: one durable node that fails some commits, or several
    /// nodes over the replicated log; every guarantee holds.
    #[test]
    fn every_guarantee_holds_through_generated_crashes(
        options in crate::properties::workload(),
        nodes in 1u32..4,
        crash_secs in 3u64..30,
        commit_failures in 0.0..0.05f64,
    ) {
        let durable = nodes == 1;
        let options = SimOptions {
            nodes,
            durable,
            commit_failures: if durable { commit_failures } else { 0.0 },
            crash_interval: Some(Duration::from_secs(crash_secs)),
            ..options
        };
        let report = run(&options, None).expect("generated options are valid");
        proptest::prop_assert_eq!(report.violation_count, 0, "{}", report);
    }
}
