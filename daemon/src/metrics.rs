//! Prometheus metrics, served as text at `/metrics` on the control socket.
//!
//! NBD counters and latency histograms are fed by the NBD server through
//! [`nbd_server::Observer`] (lock-free atomics: one call per request on the
//! hot path). Volume gauges are read from the store when scraped. The names
//! and their meaning are listed in `docs/metrics.md`; keep the two in step.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use nbd_server::{Observer, RequestKind};
use store::Store;

/// Upper bounds of the latency histogram buckets, in seconds (`le`).
const LATENCY_BOUNDS_SECONDS: [f64; 17] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Counters the daemon updates as it works.
#[derive(Debug)]
pub struct Metrics {
    kinds: [KindMetrics; RequestKind::ALL.len()],
    connections_open: AtomicI64,
    connections_total: AtomicU64,
    control_flushes: AtomicU64,
    started_unix_seconds: i64,
}

#[derive(Debug, Default)]
struct KindMetrics {
    ok: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    latency: Histogram,
}

/// Non-cumulative bucket counts (made cumulative when rendered), so a
/// request touches one bucket.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_SECONDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn record(&self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let slot = LATENCY_BOUNDS_SECONDS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BOUNDS_SECONDS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

fn kind_index(kind: RequestKind) -> usize {
    RequestKind::ALL.iter().position(|&k| k == kind).unwrap_or(0)
}

/// Label values are volume names (`[A-Za-z0-9._-]`) and fixed words, but
/// escape anyway: the text format breaks on `"`, `\` and newlines.
fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Bytes of the files under `dir` (a volume's journal segments, index
/// checkpoint and superblock). The store does not report this itself.
pub fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut total = 0u64;
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => total = total.saturating_add(directory_bytes(&entry.path())),
            Ok(metadata) => total = total.saturating_add(metadata.len()),
            Err(_) => {}
        }
    }
    total
}

/// Where the store keeps a volume's files.
pub fn volume_dir(data_dir: &Path, volume: &str) -> std::path::PathBuf {
    data_dir.join(store::store::VOLUMES_DIR).join(volume)
}

impl Metrics {
    pub fn new() -> Metrics {
        let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Metrics {
            kinds: Default::default(),
            connections_open: AtomicI64::new(0),
            connections_total: AtomicU64::new(0),
            control_flushes: AtomicU64::new(0),
            started_unix_seconds: i64::try_from(started.as_secs()).unwrap_or(0),
        }
    }

    /// NBD connections in the transmission phase now.
    pub fn connections_open(&self) -> u64 {
        u64::try_from(self.connections_open.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// A flush asked for through the control API.
    pub fn control_flush(&self) {
        self.control_flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render(&self, store: &Store, data_dir: &Path) -> String {
        let mut out = String::with_capacity(8 << 10);
        header(&mut out, "rewind_build_info", "gauge", "Always 1; the version label names the build.");
        let _ = writeln!(out, "rewind_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        header(&mut out, "rewind_start_time_seconds", "gauge", "When the daemon started, unix seconds.");
        let _ = writeln!(out, "rewind_start_time_seconds {}", self.started_unix_seconds);

        header(
            &mut out,
            "rewind_nbd_requests_total",
            "counter",
            "NBD requests completed, by kind and result.",
        );
        for kind in RequestKind::ALL {
            let metrics = &self.kinds[kind_index(kind)];
            for (result, counter) in [("ok", &metrics.ok), ("error", &metrics.failed)] {
                let _ = writeln!(
                    out,
                    "rewind_nbd_requests_total{{kind=\"{}\",result=\"{result}\"}} {}",
                    kind.name(),
                    counter.load(Ordering::Relaxed)
                );
            }
        }
        header(
            &mut out,
            "rewind_nbd_bytes_total",
            "counter",
            "Payload bytes of successful NBD requests, by kind (read: sent; write: received; trim and write_zeroes: covered).",
        );
        for kind in RequestKind::ALL {
            let bytes = self.kinds[kind_index(kind)].bytes.load(Ordering::Relaxed);
            let _ = writeln!(out, "rewind_nbd_bytes_total{{kind=\"{}\"}} {bytes}", kind.name());
        }
        header(
            &mut out,
            "rewind_nbd_request_duration_seconds",
            "histogram",
            "Time from receiving an NBD request to queueing its reply, by kind.",
        );
        for kind in RequestKind::ALL {
            let histogram = &self.kinds[kind_index(kind)].latency;
            let mut cumulative = 0u64;
            for (slot, bucket) in histogram.buckets.iter().enumerate() {
                cumulative += bucket.load(Ordering::Relaxed);
                let le = match LATENCY_BOUNDS_SECONDS.get(slot) {
                    Some(bound) => bound.to_string(),
                    None => "+Inf".to_owned(),
                };
                let _ = writeln!(
                    out,
                    "rewind_nbd_request_duration_seconds_bucket{{kind=\"{}\",le=\"{le}\"}} {cumulative}",
                    kind.name()
                );
            }
            let sum = histogram.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ =
                writeln!(out, "rewind_nbd_request_duration_seconds_sum{{kind=\"{}\"}} {sum}", kind.name());
            let _ = writeln!(
                out,
                "rewind_nbd_request_duration_seconds_count{{kind=\"{}\"}} {cumulative}",
                kind.name()
            );
        }
        header(&mut out, "rewind_nbd_connections", "gauge", "NBD connections in the transmission phase now.");
        let _ = writeln!(out, "rewind_nbd_connections {}", self.connections_open());
        header(
            &mut out,
            "rewind_nbd_connections_total",
            "counter",
            "NBD connections that completed the handshake since start.",
        );
        let _ =
            writeln!(out, "rewind_nbd_connections_total {}", self.connections_total.load(Ordering::Relaxed));
        header(
            &mut out,
            "rewind_control_flushes_total",
            "counter",
            "Flushes asked for through the control API (NBD flushes are rewind_nbd_requests_total{kind=\"flush\"}).",
        );
        let _ =
            writeln!(out, "rewind_control_flushes_total {}", self.control_flushes.load(Ordering::Relaxed));

        self.render_volumes(&mut out, store, data_dir);
        out
    }

    fn render_volumes(&self, out: &mut String, store: &Store, data_dir: &Path) {
        struct Row {
            name: String,
            values: [u64; 9],
        }
        let volumes = store.volumes();
        header(out, "rewind_volumes", "gauge", "Volumes the daemon serves.");
        let _ = writeln!(out, "rewind_volumes {}", volumes.len());
        let rows: Vec<Row> = volumes
            .iter()
            .map(|volume| {
                let history = volume.history();
                Row {
                    name: escape_label(volume.name()),
                    values: [
                        volume.size(),
                        history.head_seq,
                        volume.durable_seq(),
                        history.head_seq.saturating_sub(history.first_seq),
                        directory_bytes(&volume_dir(data_dir, volume.name())),
                        history.head_seq.saturating_sub(history.first_seq) + 1,
                        volume.snapshots().len() as u64,
                        volume.index_memory_bytes() as u64,
                        u64::from(volume.poison().is_some()),
                    ],
                }
            })
            .collect();
        let series: [(&str, &str); 9] = [
            ("rewind_volume_size_bytes", "Size of the volume's live head."),
            ("rewind_volume_head_seq", "Newest journal sequence number (the head's point)."),
            ("rewind_volume_durable_seq", "Newest sequence number known durable."),
            ("rewind_volume_journal_records", "Journal records in the retained history."),
            (
                "rewind_volume_journal_bytes",
                "Bytes of the volume's files on disk (journal, index checkpoint).",
            ),
            (
                "rewind_volume_points",
                "Points in time that can be opened (every seq of the retained history).",
            ),
            ("rewind_volume_snapshots", "Named snapshots."),
            ("rewind_volume_index_memory_bytes", "Approximate memory held by the volume's index."),
            ("rewind_volume_write_error", "1 if the volume refuses writes after an IO error, else 0."),
        ];
        for (column, (name, help)) in series.iter().enumerate() {
            header(out, name, "gauge", help);
            for row in &rows {
                let _ = writeln!(out, "{name}{{volume=\"{}\"}} {}", row.name, row.values[column]);
            }
        }
    }
}

impl Observer for Metrics {
    fn request_done(&self, kind: RequestKind, bytes: u64, latency: Duration, ok: bool) {
        let metrics = &self.kinds[kind_index(kind)];
        if ok {
            metrics.ok.fetch_add(1, Ordering::Relaxed);
            metrics.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            metrics.failed.fetch_add(1, Ordering::Relaxed);
        }
        metrics.latency.record(latency);
    }

    fn connection(&self, opened: bool) {
        if opened {
            self.connections_open.fetch_add(1, Ordering::Relaxed);
            self.connections_total.fetch_add(1, Ordering::Relaxed);
        } else {
            self.connections_open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counts_match() {
        // Three reads land in three buckets; the exposition's buckets are
        // cumulative, end in +Inf with the count, and the sum adds up.
        let metrics = Metrics::new();
        metrics.request_done(RequestKind::Read, 4096, Duration::from_micros(40), true);
        metrics.request_done(RequestKind::Read, 4096, Duration::from_millis(3), true);
        metrics.request_done(RequestKind::Read, 0, Duration::from_secs(20), false);
        metrics.connection(true);
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(dir.path(), store::StoreOptions { commit_interval: None, ..Default::default() })
                .unwrap();
        store.create_volume("db", 1 << 20).unwrap();
        let text = metrics.render(&store, dir.path());
        assert!(text.contains("rewind_nbd_requests_total{kind=\"read\",result=\"ok\"} 2\n"), "{text}");
        assert!(text.contains("rewind_nbd_requests_total{kind=\"read\",result=\"error\"} 1\n"));
        assert!(text.contains("rewind_nbd_bytes_total{kind=\"read\"} 8192\n"));
        assert!(
            text.contains("rewind_nbd_request_duration_seconds_bucket{kind=\"read\",le=\"0.00005\"} 1\n")
        );
        assert!(text.contains("rewind_nbd_request_duration_seconds_bucket{kind=\"read\",le=\"0.005\"} 2\n"));
        assert!(text.contains("rewind_nbd_request_duration_seconds_bucket{kind=\"read\",le=\"10\"} 2\n"));
        assert!(text.contains("rewind_nbd_request_duration_seconds_bucket{kind=\"read\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("rewind_nbd_request_duration_seconds_count{kind=\"read\"} 3\n"));
        assert!(text.contains("rewind_nbd_connections 1\n"));
        assert!(text.contains("rewind_volume_size_bytes{volume=\"db\"} 1048576\n"));
        assert!(text.contains("rewind_volume_points{volume=\"db\"} 1\n"));
        // Every sample line belongs to a metric announced by a TYPE line.
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(typed.contains(&name) || typed.contains(&base), "untyped sample {line}");
        }
    }
}
