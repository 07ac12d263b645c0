//! What a benchmark run measured.

use std::time::Duration;

use hdrhistogram::Histogram;

use super::process::ProcessSample;

/// Highest latency the histograms record, in microseconds (a minute); larger values saturate.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Report {
    /// The scenario's name.
    pub scenario: String,
    /// What is counted, plural (calls, round trips, deliveries, messages).
    pub unit: &'static str,
    /// Operations completed in the measured window.
    pub operations: u64,
    /// The measured window.
    pub elapsed: Duration,
    /// Latency per operation, in microseconds.
    pub latency_us: Histogram<u64>,
    /// Calls or streams that failed.
    pub errors: u64,
    /// Lag markers received (fanout, mix).
    pub lag_events: u64,
    /// Order checks that failed: a gap no lag marker declared, a repeat, a resume that did not
    /// continue right after the last message seen (fanout, mix). Must be 0.
    pub order_violations: u64,
    /// Reconnects after a chosen disconnect (mix with `--disconnect-every`).
    pub reconnects: u64,
    /// The server process before and after the measured window, if `--server-pid` was given.
    pub server: Option<(ProcessSample, ProcessSample)>,
    /// What became of the stalled subscribers (`fanout --stalled`).
    pub stalled: Option<StalledTally>,
}

/// How the server treated subscribers that stopped reading.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StalledTally {
    /// Stalled subscribers opened.
    pub streams: u64,
    /// Those that, read again at the end, showed a final lag marker and then
    /// RESOURCE_EXHAUSTED: closed by the server, and told why.
    pub closed: u64,
    /// Those still open at the end (the server had not closed them yet).
    pub open: u64,
}

impl Report {
    /// A new empty latency histogram.
    pub fn histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
    }

    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.operations as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    fn percentile_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1_000.0
    }

    /// One line for people.
    pub fn human(&self) -> String {
        let mut line = format!(
            "{}: {:.0} {}/s ({} in {:.1}s), latency p50 {:.3} ms p99 {:.3} ms p999 {:.3} ms max {:.3} ms, errors {}, lag events {}",
            self.scenario,
            self.rate(),
            self.unit,
            self.operations,
            self.elapsed.as_secs_f64(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(0.999),
            self.latency_us.max() as f64 / 1_000.0,
            self.errors,
            self.lag_events,
        );
        if matches!(self.scenario.as_str(), "fanout" | "mix") {
            line.push_str(&format!(", order violations {}", self.order_violations));
        }
        if self.reconnects > 0 {
            line.push_str(&format!(", reconnects {}", self.reconnects));
        }
        if let Some(stalled) = self.stalled {
            line.push_str(&format!(
                "\nstalled subscribers: {}, closed with a lag marker and RESOURCE_EXHAUSTED {}, still open {}",
                stalled.streams, stalled.closed, stalled.open
            ));
        }
        if let Some((before, after)) = self.server {
            let cpu = (after.cpu_seconds - before.cpu_seconds) / self.elapsed.as_secs_f64().max(f64::EPSILON);
            line.push_str(&format!(
                "\nserver: cpu {:.0}% of a core, rss {} KiB (was {} KiB before the run), peak rss {} KiB",
                cpu * 100.0,
                after.rss_kib,
                before.rss_kib,
                after.peak_rss_kib
            ));
        }
        line
    }

    /// One JSON object for tools.
    pub fn json(&self) -> String {
        let server = match self.server {
            Some((before, after)) => format!(
                r#","server_cpu_seconds":{:.3},"server_rss_before_kib":{},"server_rss_kib":{},"server_peak_rss_kib":{}"#,
                after.cpu_seconds - before.cpu_seconds,
                before.rss_kib,
                after.rss_kib,
                after.peak_rss_kib
            ),
            None => String::new(),
        };
        let stalled = match self.stalled {
            Some(stalled) => format!(
                r#","stalled_streams":{},"stalled_closed":{},"stalled_open":{}"#,
                stalled.streams, stalled.closed, stalled.open
            ),
            None => String::new(),
        };
        format!(
            r#"{{"scenario":"{}","unit":"{}","operations":{},"seconds":{:.3},"rate":{:.1},"p50_ms":{:.3},"p99_ms":{:.3},"p999_ms":{:.3},"max_ms":{:.3},"errors":{},"lag_events":{},"order_violations":{},"reconnects":{}{}{}}}"#,
            self.scenario,
            self.unit,
            self.operations,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.percentile_ms(0.50),
            self.percentile_ms(0.99),
            self.percentile_ms(0.999),
            self.latency_us.max() as f64 / 1_000.0,
            self.errors,
            self.lag_events,
            self.order_violations,
            self.reconnects,
            server,
            stalled
        )
    }
}
