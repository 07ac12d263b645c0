//! G8 in one process: the same seed and options give the same trace hash; another seed gives
//! another. (Two processes: the `confab sim` tests in the e2e suite.)

use std::time::Duration;

use confab_sim::{SimOptions, run};

fn options(seed: u64) -> SimOptions {
    SimOptions {
        clients: 60,
        rooms: 3,
        duration: Duration::from_secs(120),
        send_interval: Duration::from_secs(10),
        ..SimOptions::with_seed(seed)
    }
}

#[test]
fn the_same_seed_gives_the_same_trace_and_counts() {
    let first = run(&options(42), None).expect("valid");
    let second = run(&options(42), None).expect("valid");
    assert_eq!(first.violation_count, 0, "{first}");
    assert!(first.counts.deliveries > 1_000, "the run did something: {first}");
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.counts, second.counts);
    assert_eq!(first.timeline, second.timeline);
}

#[test]
fn another_seed_gives_another_trace() {
    let first = run(&options(42), None).expect("valid");
    let other = run(&options(43), None).expect("valid");
    assert_ne!(first.trace_hash, other.trace_hash);
}

#[test]
fn runs_on_other_threads_at_the_same_time_agree() {
    // Nothing global (actor ids, allocation addresses, thread ids) may reach the trace.
    let threads: Vec<_> = (0..2).map(|_| std::thread::spawn(|| run(&options(7), None).expect("valid"))).collect();
    let hashes: Vec<String> = threads.into_iter().map(|thread| thread.join().expect("no panic").trace_hash).collect();
    assert_eq!(hashes[0], hashes[1]);
    assert_eq!(hashes[0], run(&options(7), None).expect("valid").trace_hash);
}

#[test]
fn several_nodes_over_the_simulated_log_give_the_same_trace_twice() {
    let options = SimOptions { nodes: 3, ..options(11) };
    let (first, second) = (run(&options, None).expect("valid"), run(&options, None).expect("valid"));
    assert_eq!(first.violation_count, 0, "{first}");
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.counts, second.counts);
}
