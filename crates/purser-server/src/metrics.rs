//! Prometheus metrics, kept in atomics and written as text by hand: request
//! counts and latency histograms per route, commit batch sizes and latency,
//! queue depth.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of latency buckets, in microseconds.
const LATENCY_BOUNDS_MICROS: [u64; 14] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 5_000_000,
];
/// Upper bounds of batch-size buckets, in commands.
const BATCH_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];
const STATUSES: [u16; 13] = [
    200, 201, 400, 401, 402, 403, 404, 409, 413, 429, 500, 503, 0,
];

#[derive(Debug)]
struct Histogram {
    bounds: &'static [u64],
    buckets: Vec<AtomicU64>,
    sum: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: u64) {
        if let Some(index) = self.bounds.iter().position(|&bound| value <= bound) {
            self.buckets[index].fetch_add(1, Ordering::Relaxed);
        }
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Writes the histogram; `scale` divides values for display (10⁶ for µs → s).
    fn write(&self, out: &mut String, name: &str, labels: &str, scale: u64) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
                decimal(*bound, scale)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum{{{labels}}} {}",
            decimal(self.sum.load(Ordering::Relaxed), scale)
        );
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

impl purser_engine::CommitObserver for Metrics {
    fn observe_commit(&self, entries: usize, commands: usize, elapsed: Duration) {
        self.commit_batch.observe(commands as u64);
        self.commit_latency.observe(elapsed.as_micros() as u64);
        self.entries.fetch_add(entries as u64, Ordering::Relaxed);
    }
}

/// `value / scale` as an exact decimal string (scale a power of ten).
fn decimal(value: u64, scale: u64) -> String {
    if scale == 1 {
        return value.to_string();
    }
    let digits = scale.ilog10() as usize;
    let fraction = format!("{:0digits$}", value % scale);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        (value / scale).to_string()
    } else {
        format!("{}.{fraction}", value / scale)
    }
}

#[derive(Debug)]
struct Route {
    latency: Histogram,
    statuses: [AtomicU64; STATUSES.len()],
}

#[derive(Debug)]
pub struct Metrics {
    routes: HashMap<&'static str, Route>,
    commit_batch: Histogram,
    commit_latency: Histogram,
    entries: AtomicU64,
    queue_depth: AtomicU64,
    /// Idempotency keys remembered, and those whose answer is in memory.
    keys: [AtomicU64; 2],
}

impl Metrics {
    pub fn new(routes: &[&'static str]) -> Metrics {
        Metrics {
            routes: routes
                .iter()
                .map(|&route| {
                    let route_stats = Route {
                        latency: Histogram::new(&LATENCY_BOUNDS_MICROS),
                        statuses: std::array::from_fn(|_| AtomicU64::new(0)),
                    };
                    (route, route_stats)
                })
                .collect(),
            commit_batch: Histogram::new(&BATCH_BOUNDS),
            commit_latency: Histogram::new(&LATENCY_BOUNDS_MICROS),
            entries: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            keys: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    pub fn observe_request(&self, route: &str, status: u16, elapsed: Duration) {
        let Some(stats) = self.routes.get(route) else {
            return;
        };
        stats.latency.observe(elapsed.as_micros() as u64);
        let slot = STATUSES
            .iter()
            .position(|&s| s == status)
            .unwrap_or(STATUSES.len() - 1);
        stats.statuses[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_queue_depth(&self, depth: u64) {
        self.queue_depth.store(depth, Ordering::Relaxed);
    }

    /// Idempotency keys remembered, and those of them whose answer is in
    /// memory (the rest are answered from the store).
    pub fn set_idempotency_keys(&self, (known, cached): (usize, usize)) {
        self.keys[0].store(known as u64, Ordering::Relaxed);
        self.keys[1].store(cached as u64, Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP purser_http_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE purser_http_requests_total counter\n");
        let mut routes: Vec<_> = self.routes.iter().collect();
        routes.sort_by_key(|(route, _)| *route);
        for (route, stats) in &routes {
            for (status, count) in STATUSES.iter().zip(&stats.statuses) {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    let status = if *status == 0 {
                        "other".to_string()
                    } else {
                        status.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "purser_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {count}"
                    );
                }
            }
        }
        out.push_str(
            "# HELP purser_http_request_duration_seconds HTTP request latency by route.\n",
        );
        out.push_str("# TYPE purser_http_request_duration_seconds histogram\n");
        for (route, stats) in &routes {
            if stats.latency.count.load(Ordering::Relaxed) > 0 {
                let labels = format!("route=\"{route}\"");
                stats.latency.write(
                    &mut out,
                    "purser_http_request_duration_seconds",
                    &labels,
                    1_000_000,
                );
            }
        }
        out.push_str("# HELP purser_commit_batch_commands Commands answered per group commit.\n");
        out.push_str("# TYPE purser_commit_batch_commands histogram\n");
        self.commit_batch
            .write(&mut out, "purser_commit_batch_commands", "", 1);
        out.push_str(
            "# HELP purser_commit_duration_seconds Time to make a group commit durable.\n",
        );
        out.push_str("# TYPE purser_commit_duration_seconds histogram\n");
        self.commit_latency
            .write(&mut out, "purser_commit_duration_seconds", "", 1_000_000);
        out.push_str("# HELP purser_journal_entries_total Journal entries committed.\n");
        out.push_str("# TYPE purser_journal_entries_total counter\n");
        let _ = writeln!(
            out,
            "purser_journal_entries_total {}",
            self.entries.load(Ordering::Relaxed)
        );
        out.push_str("# HELP purser_queue_depth Commands waiting in shard queues.\n");
        out.push_str("# TYPE purser_queue_depth gauge\n");
        let _ = writeln!(
            out,
            "purser_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed)
        );
        out.push_str("# HELP purser_idempotency_keys Idempotency keys remembered in memory: all (16 bytes each), and those whose answer is cached.\n");
        out.push_str("# TYPE purser_idempotency_keys gauge\n");
        for (held, count) in ["hash", "answer"].iter().zip(&self.keys) {
            let _ = writeln!(
                out,
                "purser_idempotency_keys{{held=\"{held}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal(2_500, 1_000_000), "0.0025");
        assert_eq!(decimal(5_000_000, 1_000_000), "5");
        assert_eq!(decimal(7, 1), "7");
    }

    #[test]
    fn histograms_are_cumulative() {
        let metrics = Metrics::new(&["/v1/x"]);
        metrics.observe_request("/v1/x", 201, Duration::from_micros(300));
        metrics.observe_request("/v1/x", 402, Duration::from_micros(30));
        let text = metrics.render();
        assert!(
            text.contains("purser_http_requests_total{route=\"/v1/x\",status=\"201\"} 1"),
            "{text}"
        );
        assert!(text.contains("route=\"/v1/x\",le=\"0.0001\"} 1"), "{text}");
        assert!(text.contains("route=\"/v1/x\",le=\"0.0005\"} 2"), "{text}");
    }
}
