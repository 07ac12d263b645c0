//! What one simulation run does: the workload, the fault mix and the engine limits it runs with.
//! Everything a run observes follows from these options and the seed (G8).

use std::fmt;
use std::time::Duration;

use confab_engine::{InjectedBug, Limits};

/// Probabilities, per client action, of each fault and probe. The rest of the actions are plain
/// sends. Each value is in `0.0..=1.0` and their sum is at most 1.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultMix {
    /// Stop reading for a while (the room's ring moves past it and it lags, G2).
    pub slow: f64,
    /// Disconnect, stay offline for a while, then resume with `after_seq` (G5).
    pub disconnect: f64,
    /// Send, then send again with the same client message id (G4).
    pub retry: f64,
    /// Upload a run of messages and commit it (G6).
    pub upload: f64,
    /// Upload a run of messages and abort it (G6: nothing may appear).
    pub abort: f64,
    /// Leave the room and join another one.
    pub churn: f64,
    /// Send, then read history and subscribe again to check the message is there (G7).
    pub read_check: f64,
}

impl FaultMix {
    /// The mix `confab sim` uses unless told otherwise: every fault, each a few percent.
    pub const DEFAULT: FaultMix = FaultMix {
        slow: 0.05,
        disconnect: 0.05,
        retry: 0.05,
        upload: 0.03,
        abort: 0.02,
        churn: 0.02,
        read_check: 0.05,
    };

    /// No faults, no probes: plain sends only.
    pub const NONE: FaultMix =
        FaultMix { slow: 0.0, disconnect: 0.0, retry: 0.0, upload: 0.0, abort: 0.0, churn: 0.0, read_check: 0.0 };

    const NAMES: [&'static str; 7] = ["slow", "disconnect", "retry", "upload", "abort", "churn", "read-check"];

    fn values(&self) -> [f64; 7] {
        [self.slow, self.disconnect, self.retry, self.upload, self.abort, self.churn, self.read_check]
    }

    fn value_mut(&mut self, name: &str) -> Option<&mut f64> {
        Some(match name {
            "slow" => &mut self.slow,
            "disconnect" => &mut self.disconnect,
            "retry" => &mut self.retry,
            "upload" => &mut self.upload,
            "abort" => &mut self.abort,
            "churn" => &mut self.churn,
            "read-check" => &mut self.read_check,
            _ => return None,
        })
    }

    /// Parses `default`, `none`, or a comma-separated list of `name=probability` that starts from
    /// no faults, e.g. `slow=0.1,disconnect=0.05`. Names: slow, disconnect, retry, upload,
    /// abort, churn, read-check.
    pub fn parse(text: &str) -> Result<FaultMix, OptionsError> {
        match text.trim() {
            "default" => return Ok(FaultMix::DEFAULT),
            "none" | "" => return Ok(FaultMix::NONE),
            _ => {}
        }
        let mut mix = FaultMix::NONE;
        for item in text.split(',') {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| OptionsError::Faults(format!("`{item}` is not name=probability")))?;
            let value: f64 = value
                .trim()
                .parse()
                .map_err(|_| OptionsError::Faults(format!("`{value}` is not a number (in `{item}`)")))?;
            let slot = mix.value_mut(name.trim()).ok_or_else(|| {
                OptionsError::Faults(format!("unknown fault `{name}`; known: {}", FaultMix::NAMES.join(", ")))
            })?;
            *slot = value;
        }
        mix.validate()?;
        Ok(mix)
    }

    /// Checks every probability is in range and they sum to at most 1.
    pub fn validate(&self) -> Result<(), OptionsError> {
        for (name, value) in FaultMix::NAMES.iter().zip(self.values()) {
            if !(0.0..=1.0).contains(&value) {
                return Err(OptionsError::Faults(format!("{name}={value} is not a probability in 0..=1")));
            }
        }
        let sum: f64 = self.values().iter().sum();
        if sum > 1.0 + 1e-9 {
            return Err(OptionsError::Faults(format!("the probabilities sum to {sum}, more than 1")));
        }
        Ok(())
    }
}

impl fmt::Display for FaultMix {
    /// The form [`FaultMix::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == FaultMix::NONE {
            return f.write_str("none");
        }
        let mut first = true;
        for (name, value) in FaultMix::NAMES.iter().zip(self.values()) {
            if value > 0.0 {
                if !first {
                    f.write_str(",")?;
                }
                write!(f, "{name}={value}")?;
                first = false;
            }
        }
        Ok(())
    }
}

/// A refused option.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// The fault mix does not parse or is out of range.
    #[error("--faults: {0}")]
    Faults(String),
    /// A count or duration is out of range.
    #[error("--{flag}: {reason}")]
    Range {
        /// The option's flag name.
        flag: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Largest `--clients`: each client is a task with a subscription; a million would need more
/// memory than a laptop has to spare.
pub const CLIENTS_MAX: u32 = 1_000_000;

/// Longest virtual `--duration`.
pub const DURATION_MAX: Duration = Duration::from_secs(30 * 24 * 3600);

/// Virtual time after `--duration` during which clients stop acting but keep reading, so that
/// everything sent is delivered before the final completeness check.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Most engines (nodes) a run may have (`--nodes`).
pub const NODES_MAX: u32 = 16;

/// Shortest `--crash-interval`: a node must get time to restart and its clients to come back
/// between crashes.
pub const CRASH_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// The options of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct SimOptions {
    /// The seed every random choice comes from.
    pub seed: u64,
    /// Simulated clients.
    pub clients: u32,
    /// Rooms they are spread over.
    pub rooms: u32,
    /// Virtual time the clients act for.
    pub duration: Duration,
    /// Mean virtual time between one client's actions (exponentially distributed).
    pub send_interval: Duration,
    /// Mean message body size in bytes (uniform in `1..=2 * mean`).
    pub body_bytes: u32,
    /// Share of clients that use the bidirectional session API (the rest use subscribe + send).
    pub session_share: f64,
    /// The fault mix.
    pub faults: FaultMix,
    /// Mean virtual time a slow reader stalls.
    pub stall: Duration,
    /// Mean virtual time a disconnected client stays offline.
    pub offline: Duration,
    /// Largest upload, in messages.
    pub upload_len_max: u32,
    /// Events each room's ring keeps, how far a reader may fall behind before it lags (the
    /// engine's `subscriber_queue_len_max`; small by default so slow readers do lag).
    pub queue_len: u32,
    /// Engines (nodes) the clients are spread over. Above 1 they are nodes of one simulated
    /// replicated log (cluster mode), and a client that reconnects moves to the next node.
    pub nodes: u32,
    /// Mean virtual time between node crashes (exponential), `None` for none. A crashed
    /// node's engine stops without answering what is in flight; its clients reconnect to
    /// another node (with one node, to the restarted one), resume and resend what was not
    /// acknowledged with the same client message ids; the node restarts a few seconds later
    /// as a fresh engine over the same log. With one node it needs `durable`.
    pub crash_interval: Option<Duration>,
    /// One node over the simulated store (the single-node durable path: the local log's
    /// pipelined appends and rollback) instead of in memory.
    pub durable: bool,
    /// With `durable`: the share of the store's commits that fail (senders get an error,
    /// nothing of the commit is stored, the room rolls back).
    pub commit_failures: f64,
    /// A deliberate engine defect, to prove the checker catches it.
    pub injected_bug: Option<InjectedBug>,
}

impl SimOptions {
    /// Default options with this seed.
    pub fn with_seed(seed: u64) -> Self {
        SimOptions {
            seed,
            clients: 1_000,
            rooms: 10,
            duration: Duration::from_secs(600),
            send_interval: Duration::from_secs(600),
            body_bytes: 64,
            session_share: 0.2,
            faults: FaultMix::DEFAULT,
            stall: Duration::from_secs(30),
            offline: Duration::from_secs(10),
            upload_len_max: 20,
            queue_len: 16,
            nodes: 1,
            crash_interval: None,
            durable: false,
            commit_failures: 0.0,
            injected_bug: None,
        }
    }

    /// Checks every option is in range.
    pub fn validate(&self) -> Result<(), OptionsError> {
        let range = |flag, reason: &str| Err(OptionsError::Range { flag, reason: reason.to_owned() });
        if self.clients == 0 || self.clients > CLIENTS_MAX {
            return range("clients", &format!("must be 1..={CLIENTS_MAX}"));
        }
        if self.rooms == 0 || self.rooms > self.clients {
            return range("rooms", "must be at least 1 and at most --clients");
        }
        if self.duration.is_zero() || self.duration > DURATION_MAX {
            return range("duration", "must be more than 0 and at most 30 days");
        }
        if self.send_interval < Duration::from_millis(1) {
            return range("send-interval", "must be at least 1ms");
        }
        if self.body_bytes == 0 || self.body_bytes as usize * 2 > confab_engine::limits::MESSAGE_BYTES_MAX {
            return range("body-bytes", "must be at least 1 and at most half the engine's message limit");
        }
        if !(0.0..=1.0).contains(&self.session_share) {
            return range("session-share", "must be in 0..=1");
        }
        if self.upload_len_max == 0 || self.upload_len_max as usize > confab_engine::limits::UPLOAD_MESSAGES_MAX {
            return range("upload-len", "must be at least 1 and at most the engine's upload limit");
        }
        if self.queue_len == 0 {
            return range("queue-len", "must be at least 1");
        }
        if self.nodes == 0 || self.nodes > NODES_MAX {
            return range("nodes", &format!("must be 1..={NODES_MAX}"));
        }
        if self.durable && self.nodes > 1 {
            return range("durable", "is the single-node path: several nodes share the simulated replicated log");
        }
        if !(0.0..=1.0).contains(&self.commit_failures) {
            return range("commit-failures", "must be in 0..=1");
        }
        if self.commit_failures > 0.0 && !self.durable {
            return range("commit-failures", "needs --durable (an in-memory node commits nothing)");
        }
        if let Some(interval) = self.crash_interval {
            if interval < CRASH_INTERVAL_MIN {
                return range("crash-interval", "must be at least 1s");
            }
            if self.nodes == 1 && !self.durable {
                return range("crash-interval", "with one node needs --durable (an in-memory node loses everything)");
            }
        }
        self.faults.validate()
    }

    /// The engine limits this run uses: the defaults, with the subscriber queue bound set.
    pub fn limits(&self) -> Limits {
        Limits {
            subscriber_queue_len_max: self.queue_len as usize,
            room_subscribers_max: Limits::default().room_subscribers_max.max(self.clients as usize),
            ..Limits::default()
        }
    }

    /// The `confab sim` arguments that replay this run exactly.
    pub fn replay_args(&self) -> Vec<String> {
        let mut args = vec![
            format!("--seed={}", self.seed),
            format!("--clients={}", self.clients),
            format!("--rooms={}", self.rooms),
            format!("--duration={}", humanize(self.duration)),
            format!("--send-interval={}", humanize(self.send_interval)),
            format!("--body-bytes={}", self.body_bytes),
            format!("--session-share={}", self.session_share),
            format!("--faults={}", self.faults),
            format!("--stall={}", humanize(self.stall)),
            format!("--offline={}", humanize(self.offline)),
            format!("--upload-len={}", self.upload_len_max),
            format!("--queue-len={}", self.queue_len),
        ];
        if self.nodes > 1 {
            args.push(format!("--nodes={}", self.nodes));
        }
        if self.durable {
            args.push("--durable".to_owned());
        }
        if self.commit_failures > 0.0 {
            args.push(format!("--commit-failures={}", self.commit_failures));
        }
        if let Some(interval) = self.crash_interval {
            args.push(format!("--crash-interval={}", humanize(interval)));
        }
        if let Some(bug) = self.injected_bug {
            args.push(format!("--inject-bug={}", bug_to_text(bug)));
        }
        args
    }
}

/// A duration in the form `humantime` parses (`1m 30s` → `90s`), without spaces.
fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

/// Parses `skip-seq:N`, `drop-delivery:N` or `reorder-rebase` (the hidden `--inject-bug`
/// flag; the last one needs `--nodes` above 1).
pub fn parse_bug(text: &str) -> Result<InjectedBug, String> {
    if text == "reorder-rebase" {
        return Ok(InjectedBug::ReorderRebase);
    }
    let (kind, seq) = text.split_once(':').ok_or("expected skip-seq:N, drop-delivery:N or reorder-rebase")?;
    let seq: u64 = seq.parse().map_err(|_| format!("`{seq}` is not a sequence number"))?;
    match kind {
        "skip-seq" => Ok(InjectedBug::SkipSeq(seq)),
        "drop-delivery" => Ok(InjectedBug::DropDelivery(seq)),
        _ => Err(format!("unknown bug `{kind}`: expected skip-seq or drop-delivery")),
    }
}

fn bug_to_text(bug: InjectedBug) -> String {
    match bug {
        InjectedBug::SkipSeq(seq) => format!("skip-seq:{seq}"),
        InjectedBug::DropDelivery(seq) => format!("drop-delivery:{seq}"),
        InjectedBug::ReorderRebase => "reorder-rebase".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_mix_round_trips_through_its_text_form() {
        let mix = FaultMix { slow: 0.25, abort: 0.5, ..FaultMix::NONE };
        assert_eq!(mix.to_string(), "slow=0.25,abort=0.5");
        assert_eq!(FaultMix::parse(&mix.to_string()), Ok(mix));
        assert_eq!(FaultMix::parse(&FaultMix::DEFAULT.to_string()), Ok(FaultMix::DEFAULT));
        assert_eq!(FaultMix::parse("none"), Ok(FaultMix::NONE));
    }

    #[test]
    fn fault_mix_refuses_bad_text() {
        assert!(FaultMix::parse("slow").expect_err("refused").to_string().contains("name=probability"));
        assert!(FaultMix::parse("fast=0.1").expect_err("refused").to_string().contains("unknown fault `fast`"));
        assert!(FaultMix::parse("slow=2").expect_err("refused").to_string().contains("not a probability"));
        assert!(FaultMix::parse("slow=0.6,retry=0.6").expect_err("refused").to_string().contains("sum"));
    }

    #[test]
    fn options_refuse_out_of_range_values_naming_the_flag() {
        let mut options = SimOptions::with_seed(1);
        options.rooms = options.clients + 1;
        assert!(options.validate().expect_err("refused").to_string().starts_with("--rooms"));
        let options = SimOptions { clients: 0, ..SimOptions::with_seed(1) };
        assert!(options.validate().expect_err("refused").to_string().starts_with("--clients"));
        assert_eq!(SimOptions::with_seed(1).validate(), Ok(()));
        let options = SimOptions { crash_interval: Some(Duration::from_secs(30)), ..SimOptions::with_seed(1) };
        assert!(options.validate().expect_err("refused").to_string().starts_with("--crash-interval"));
        let options = SimOptions { commit_failures: 0.1, ..SimOptions::with_seed(1) };
        assert!(options.validate().expect_err("refused").to_string().starts_with("--commit-failures"));
        let options = SimOptions { durable: true, nodes: 3, ..SimOptions::with_seed(1) };
        assert!(options.validate().expect_err("refused").to_string().starts_with("--durable"));
        let options = SimOptions {
            durable: true,
            commit_failures: 0.01,
            crash_interval: Some(Duration::from_secs(30)),
            ..SimOptions::with_seed(1)
        };
        assert_eq!(options.validate(), Ok(()));
        assert!(options.replay_args().join(" ").ends_with("--durable --commit-failures=0.01 --crash-interval=30s"));
    }

    #[test]
    fn injected_bugs_parse_and_print_back() {
        assert_eq!(parse_bug("skip-seq:4"), Ok(InjectedBug::SkipSeq(4)));
        assert_eq!(bug_to_text(InjectedBug::DropDelivery(9)), "drop-delivery:9");
        assert!(parse_bug("nope:1").is_err());
    }
}
