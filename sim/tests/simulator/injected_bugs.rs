//! The checker must catch a defective engine: a room that skips a sequence number, or one that
//! silently drops a delivery. Both in a plain run and under proptest, whose shrinking must
//! reach a small counterexample.

use std::time::Duration;

use confab_engine::InjectedBug;
use confab_sim::{FaultMix, SimOptions, run};
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};

use crate::properties::workload;

fn busy(bug: InjectedBug) -> SimOptions {
    SimOptions {
        clients: 20,
        rooms: 2,
        duration: Duration::from_secs(60),
        send_interval: Duration::from_secs(5),
        faults: FaultMix::NONE,
        injected_bug: Some(bug),
        ..SimOptions::with_seed(3)
    }
}

#[test]
fn a_skipped_sequence_number_is_reported_with_a_replay_command() {
    let report = run(&busy(InjectedBug::SkipSeq(4)), None).expect("valid");
    assert!(report.violation_count > 0, "{report}");
    let first = &report.violations[0];
    assert_eq!(first.guarantee, "G2", "{report}");
    assert!(first.message.contains("expected #4, got #5"), "{}", first.message);
    assert!(report.replay_command().contains("--inject-bug=skip-seq:4"));
    assert!(report.to_string().contains("replay: confab sim --seed=3"));
}

#[test]
fn a_dropped_delivery_is_reported() {
    let report = run(&busy(InjectedBug::DropDelivery(6)), None).expect("valid");
    assert!(report.violations.iter().any(|violation| violation.guarantee == "G2"), "{report}");
}

#[test]
fn proptest_finds_and_shrinks_an_injected_bug() {
    let config = Config { cases: 64, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let outcome = runner.run(&workload(), |mut options| {
        options.injected_bug = Some(InjectedBug::SkipSeq(3));
        let report = run(&options, None).expect("valid");
        if report.violation_count > 0 {
            return Err(TestCaseError::fail(format!("{} violations", report.violation_count)));
        }
        Ok(())
    });
    match outcome {
        Err(TestError::Fail(_, minimal)) => {
            // A few clients in one room for a few seconds show a skipped number; shrinking
            // reaches 3 clients, 1 room, 15 s and no faults today.
            assert!(minimal.clients <= 3 && minimal.rooms == 1, "shrunk to {minimal:?}");
            assert_eq!(minimal.faults, confab_sim::FaultMix::NONE, "shrunk to {minimal:?}");
            assert!(minimal.duration.as_secs() <= 30, "shrunk to {minimal:?}");
        }
        other => panic!("the injected bug went unnoticed: {other:?}"),
    }
}

/// Three nodes over the simulated replicated log, busy enough in one room that nodes race
/// for positions and sequence whole uploads again.
fn cluster(bug: Option<InjectedBug>) -> SimOptions {
    SimOptions {
        clients: 30,
        rooms: 1,
        duration: Duration::from_secs(60),
        send_interval: Duration::from_millis(200),
        session_share: 0.5,
        nodes: 3,
        injected_bug: bug,
        ..SimOptions::with_seed(1)
    }
}

#[test]
fn a_node_that_sequences_lost_messages_again_in_the_wrong_order_is_caught() {
    let clean = run(&cluster(None), None).expect("valid");
    assert_eq!(clean.violation_count, 0, "{clean}");
    let log = clean.log_faults.expect("several nodes report their log");
    assert!(log.conflicts > 0 && log.lost_acks + log.timeouts > 0, "the log's faults happened: {log:?}");
    let report = run(&cluster(Some(InjectedBug::ReorderRebase)), None).expect("valid");
    assert!(report.violations.iter().any(|violation| violation.guarantee == "G6"), "{report}");
    assert!(report.replay_command().contains("--nodes=3 --inject-bug=reorder-rebase"));
}
