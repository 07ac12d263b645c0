//! CPU seconds and memory of a local process, read from `/proc` (Linux only).

/// A reading of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    /// User plus system CPU time so far, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory now, in KiB.
    pub rss_kib: u64,
    /// Peak resident memory so far, in KiB.
    pub peak_rss_kib: u64,
}

/// Reads `pid`'s CPU time and memory; `None` if it cannot (no such process, not Linux).
pub fn sample(pid: u32) -> Option<ProcessSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    };
    // Linux reports CPU time in clock ticks of 1/100 s on every platform Rust targets today.
    const TICKS_PER_SECOND: f64 = 100.0;
    Some(ProcessSample { cpu_seconds: ticks / TICKS_PER_SECOND, rss_kib: kib("VmRSS:")?, peak_rss_kib: kib("VmHWM:")? })
}
