//! What a run found: counters, speed, virtual-time latency, the trace hash and the violations,
//! as text for people, JSON for machines and an SVG of two charts.

use std::fmt;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::checker::{Checker, Counts};
use crate::options::{DRAIN, SimOptions};

/// Delivery latency percentiles, in virtual milliseconds (live deliveries only).
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    /// Deliveries measured.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

/// One violation, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct ViolationReport {
    /// "G1" … "G8".
    pub guarantee: String,
    /// Virtual milliseconds since the start.
    pub at_ms: u64,
    /// What went wrong.
    pub message: String,
    /// The observations that show it, oldest first.
    pub excerpt: Vec<String>,
}

/// A run's results.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The `confab sim` arguments that replay this run.
    pub replay_args: Vec<String>,
    /// What happened.
    pub counts: Counts,
    /// Virtual time simulated, drain included, in seconds.
    pub virtual_secs: f64,
    /// Wall time the run took, in seconds.
    pub wall_secs: f64,
    /// Virtual seconds per wall second.
    pub compression: f64,
    /// Deliveries per wall second.
    pub deliveries_per_wall_sec: f64,
    /// Observations (deliveries, acks, subscriptions, faults…) per wall second.
    pub events_per_wall_sec: f64,
    /// Live delivery latency in virtual time.
    pub latency_ms: Latency,
    /// Latency histogram: (upper bound in ms, deliveries) per power-of-two bucket.
    pub latency_histogram: Vec<(u64, u64)>,
    /// Deliveries per equal slice of virtual time.
    pub timeline: Vec<u64>,
    /// The slice's length in virtual milliseconds.
    pub timeline_slice_ms: u64,
    /// The process's peak resident memory in KiB (Linux only).
    pub peak_rss_kib: Option<u64>,
    /// The trace hash (G8), 16 hex digits.
    pub trace_hash: String,
    /// Violations in all.
    pub violation_count: u64,
    /// The first violations, in full.
    pub violations: Vec<ViolationReport>,
    /// With several nodes: what the simulated replicated log did.
    pub log_faults: Option<crate::LogFaults>,
    /// With `--durable`: what the simulated store did.
    pub store_faults: Option<crate::StoreFaults>,
}

impl Report {
    /// The report of a finished run.
    pub fn new(options: &SimOptions, checker: &Checker, wall: Duration) -> Self {
        let wall_secs = wall.as_secs_f64().max(1e-9);
        let virtual_secs = (options.duration + DRAIN).as_secs_f64();
        let latency = checker.latency_ms();
        let mut latency_histogram = Vec::new();
        if !latency.is_empty() {
            for bucket in latency.iter_log(1, 2.0) {
                latency_histogram.push((bucket.value_iterated_to(), bucket.count_since_last_iteration()));
            }
        }
        let (timeline, timeline_slice_ms) = checker.timeline();
        let counts = checker.counts().clone();
        Report {
            seed: options.seed,
            replay_args: options.replay_args(),
            virtual_secs,
            wall_secs,
            compression: virtual_secs / wall_secs,
            deliveries_per_wall_sec: counts.deliveries as f64 / wall_secs,
            events_per_wall_sec: checker.events() as f64 / wall_secs,
            counts,
            latency_ms: Latency {
                count: latency.len(),
                p50: latency.value_at_quantile(0.5),
                p99: latency.value_at_quantile(0.99),
                p999: latency.value_at_quantile(0.999),
                max: latency.max(),
            },
            latency_histogram,
            timeline: timeline.to_vec(),
            timeline_slice_ms,
            peak_rss_kib: peak_rss_kib(),
            trace_hash: format!("{:016x}", checker.trace_hash()),
            violation_count: checker.violation_count(),
            violations: checker
                .violations()
                .iter()
                .map(|violation| ViolationReport {
                    guarantee: violation.guarantee.to_owned(),
                    at_ms: violation.at_ms,
                    message: violation.message.clone(),
                    excerpt: violation.excerpt.clone(),
                })
                .collect(),
            log_faults: None,
            store_faults: None,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!("confab sim {}", self.replay_args.join(" "))
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serialises")
    }

    /// Two charts as one SVG: the latency histogram and deliveries over virtual time.
    pub fn to_svg(&self) -> String {
        let (width, height) = (720.0, 260.0);
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n",
            height * 2.0 + 40.0
        );
        let _ = writeln!(svg, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let latency: Vec<(String, u64)> =
            self.latency_histogram.iter().map(|(upper, count)| (format!("≤{upper}"), *count)).collect();
        bar_chart(&mut svg, 0.0, "Live delivery latency, virtual ms (deliveries per bucket)", &latency, width, height);
        let slice_secs = self.timeline_slice_ms as f64 / 1000.0;
        let timeline: Vec<(String, u64)> = self
            .timeline
            .iter()
            .enumerate()
            .map(|(index, count)| (format!("{:.0}s", index as f64 * slice_secs), *count))
            .collect();
        let title = format!("Deliveries per {slice_secs:.1} s of virtual time (seed {})", self.seed);
        bar_chart(&mut svg, height + 40.0, &title, &timeline, width, height);
        svg.push_str("</svg>\n");
        svg
    }
}

/// Appends a bar chart with a title at vertical offset `top`; labels every few bars.
fn bar_chart(svg: &mut String, top: f64, title: &str, bars: &[(String, u64)], width: f64, height: f64) {
    let (left, bottom, plot_top) = (50.0, top + height - 20.0, top + 30.0);
    let _ = writeln!(svg, "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{}</text>", top + 18.0, escape(title));
    let max = bars.iter().map(|(_, count)| *count).max().unwrap_or(0).max(1);
    let bar_width = (width - left - 10.0) / bars.len().max(1) as f64;
    let label_every = (bars.len() / 10).max(1);
    for (index, (label, count)) in bars.iter().enumerate() {
        let bar_height = (bottom - plot_top) * *count as f64 / max as f64;
        let x = left + index as f64 * bar_width;
        let _ = writeln!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bar_height:.1}\" fill=\"#4a7bd0\"><title>{}: {count}</title></rect>",
            bottom - bar_height,
            (bar_width - 1.0).max(0.5),
            escape(label)
        );
        if index % label_every == 0 {
            let _ = writeln!(
                svg,
                "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
                bottom + 14.0,
                escape(label)
            );
        }
    }
    let _ = writeln!(svg, "<text x=\"4\" y=\"{:.1}\" font-size=\"10\">{max}</text>", plot_top + 4.0);
    let _ =
        writeln!(svg, "<line x1=\"{left}\" y1=\"{bottom}\" x2=\"{}\" y2=\"{bottom}\" stroke=\"black\"/>", width - 10.0);
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Peak resident set size of this process, from /proc (Linux); `None` elsewhere.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = &self.counts;
        writeln!(f, "seed={}  trace={}", self.seed, self.trace_hash)?;
        writeln!(
            f,
            "messages {}  deliveries {}  lag events {}  resumes {}  retries {}  uploads {} committed / {} aborted",
            counts.messages,
            counts.deliveries,
            counts.lag_events,
            counts.resumes,
            counts.retries,
            counts.uploads_committed,
            counts.uploads_aborted
        )?;
        writeln!(
            f,
            "faults: {} stalls ({} closed by the room), {} rooms stopped under a reader, {} disconnects, {} room changes; {} read-your-writes checks; {} refusals",
            counts.stalls,
            counts.stalled_closed,
            counts.rooms_stopped,
            counts.disconnects,
            counts.churns,
            counts.read_checks,
            counts.refusals
        )?;
        if let Some(log) = &self.log_faults {
            writeln!(
                f,
                "log: {} appends, {} conflicts between nodes, {} lost acknowledgements, {} timeouts, {} leader elections",
                log.appends, log.conflicts, log.lost_acks, log.timeouts, log.elections
            )?;
        }
        if let Some(store) = &self.store_faults {
            writeln!(
                f,
                "store: {} commits, {} failed commits ({} sends and uploads told), {} appends refused behind a failed one, {} lost in crashes",
                store.commits, store.failed_commits, counts.failed_sends, store.fenced, store.lost_in_crash
            )?;
            if store.out_of_sequence > 0 {
                writeln!(
                    f,
                    "store: {} appends refused for not continuing their room (an engine bug)",
                    store.out_of_sequence
                )?;
            }
        }
        if counts.crashes > 0 {
            writeln!(
                f,
                "crashes: {} nodes crashed, {} restarted; {} client reconnects, {} sends resent; {} rooms audited at the end",
                counts.crashes, counts.restarts, counts.reconnects, counts.resends, counts.audited_rooms
            )?;
        }
        writeln!(
            f,
            "time: {:.0} s virtual in {:.2} s wall ({:.0}x); {:.0} deliveries/s, {:.0} events/s (wall)",
            self.virtual_secs, self.wall_secs, self.compression, self.deliveries_per_wall_sec, self.events_per_wall_sec
        )?;
        let latency = &self.latency_ms;
        writeln!(
            f,
            "live delivery latency (virtual ms): p50 {} p99 {} p999 {} max {} over {} deliveries",
            latency.p50, latency.p99, latency.p999, latency.max, latency.count
        )?;
        if let Some(peak) = self.peak_rss_kib {
            writeln!(f, "peak memory: {:.1} MiB", peak as f64 / 1024.0)?;
        }
        if self.violation_count == 0 && counts.audited_rooms > 0 {
            write!(f, "violations: none (G1-G7 checked online, G2 completeness and every room's history at the end)")
        } else if self.violation_count == 0 {
            write!(f, "violations: none (G1-G7 checked online, G2 completeness at the end)")
        } else {
            writeln!(f, "violations: {}", self.violation_count)?;
            for violation in &self.violations {
                writeln!(f, "  {} {}", violation.guarantee, violation.message)?;
                for line in &violation.excerpt {
                    writeln!(f, "      {line}")?;
                }
            }
            write!(f, "replay: {}", self.replay_command())
        }
    }
}
