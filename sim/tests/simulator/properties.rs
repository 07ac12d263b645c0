//! Property tests: generated workloads (clients, rooms, rates, fault mixes, queue bounds,
//! seeds) run against the real engine, and every guarantee must hold. A failure prints the
//! report, with the `confab sim` command that replays the shrunk case.

use std::time::Duration;

use confab_sim::{FaultMix, SimOptions, run};
use proptest::prelude::*;

/// Small, fast workloads that still exercise every fault: few clients, short virtual time,
/// busy rooms and tiny queues so that lag, resume and upload paths all run.
pub(crate) fn workload() -> impl Strategy<Value = SimOptions> {
    let faults = (0.0..0.15f64, 0.0..0.15f64, 0.0..0.1f64, 0.0..0.1f64, 0.0..0.1f64, 0.0..0.1f64, 0.0..0.1f64)
        .prop_map(|(slow, disconnect, retry, upload, abort, churn, read_check)| FaultMix {
            slow,
            disconnect,
            retry,
            upload,
            abort,
            churn,
            read_check,
        });
    (any::<u64>(), 1u32..24, 1u32..4, 5u64..90, 1u64..20, 0.0..=1.0f64, faults, 1u32..8, 1u32..12).prop_map(
        |(seed, clients, rooms, duration, interval, session_share, faults, queue_len, upload_len_max)| SimOptions {
            seed,
            clients,
            rooms: rooms.min(clients),
            duration: Duration::from_secs(duration),
            send_interval: Duration::from_secs(interval),
            session_share,
            faults,
            stall: Duration::from_secs(5),
            offline: Duration::from_secs(2),
            queue_len,
            upload_len_max,
            ..SimOptions::with_seed(seed)
        },
    )
}

proptest! {
    // Each case is a whole simulation; 32 keep `cargo test` quick. A longer soak:
    // PROPTEST_CASES=2000 cargo test --release -p confab-sim --test simulator properties
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn every_guarantee_holds_for_generated_workloads(options in workload()) {
        let report = run(&options, None).expect("generated options are valid");
        prop_assert_eq!(report.violation_count, 0, "{}", report);
    }
}
