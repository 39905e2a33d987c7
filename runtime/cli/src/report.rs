//! Shared reporting helpers: latency percentiles, byte sizes, process memory.

use std::time::Duration;

/// Collected latencies of repeated operations.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<Duration>,
}

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.samples.push(d);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.samples.extend(other.samples);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The `q`-quantile (0..=1), nearest rank.
    pub fn quantile(&mut self, q: f64) -> Duration {
        if self.samples.is_empty() {
            return Duration::ZERO;
        }
        self.samples.sort_unstable();
        let rank = ((q * self.samples.len() as f64).ceil() as usize).clamp(1, self.samples.len());
        self.samples[rank - 1]
    }

    /// `p50 …, p99 …, max …`.
    pub fn summary(&mut self) -> String {
        format!(
            "p50 {}, p99 {}, max {}",
            micros(self.quantile(0.5)),
            micros(self.quantile(0.99)),
            micros(self.quantile(1.0))
        )
    }
}

/// A duration in µs or ms, whichever reads better.
pub fn micros(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 10_000.0 { format!("{us:.1} µs") } else { format!("{:.2} ms", us / 1e3) }
}

/// A byte count in B/KiB/MiB/GiB.
pub fn bytes(n: usize) -> String {
    let n = n as f64;
    match n {
        n if n < 1024.0 => format!("{n} B"),
        n if n < 1024.0 * 1024.0 => format!("{:.1} KiB", n / 1024.0),
        n if n < 1024.0 * 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1024.0 / 1024.0),
        n => format!("{:.2} GiB", n / 1024.0 / 1024.0 / 1024.0),
    }
}

/// Resident and peak resident memory of this process, from /proc (Linux only).
pub fn rss() -> Option<(usize, usize)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| -> Option<usize> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line.split_whitespace().nth(1)?.parse::<usize>().ok().map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// `rss X (peak Y)` or `n/a`.
pub fn rss_line() -> String {
    rss().map_or_else(|| "n/a".into(), |(now, peak)| format!("{} (peak {})", bytes(now), bytes(peak)))
}
