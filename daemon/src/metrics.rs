//! Prometheus metrics, served as text at `/metrics` on the control socket.
//!
//! NBD counters and latency histograms are fed by the NBD server through
//! [`nbd_server::Observer`] (lock-free atomics: one call per request on the
//! hot path). Volume gauges and counters are read from the store
//! ([`store::Volume::stats`]) when scraped. The names and their meaning are
//! listed in `docs/metrics.md`; keep the two in step.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use nbd_server::{Observer, RequestKind};
use store::{Store, Volume, VolumeStats};

use crate::device::OpenExports;

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

/// One per-volume series: its name, type, help, and its value for a volume
/// (`None`: no sample for that volume).
struct VolumeSeries {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&Volume, &VolumeStats) -> Option<u64>,
}

/// Every per-volume series but the NBD connection gauge (labelled by
/// export kind too). Counters count since the volume was opened (daemon
/// start or `rewind volume reopen`): Prometheus's `rate()` handles the reset.
const VOLUME_SERIES: &[VolumeSeries] = &[
    VolumeSeries {
        name: "rewind_volume_size_bytes",
        kind: "gauge",
        help: "Size of the volume's live head.",
        value: |volume, _| Some(volume.size()),
    },
    VolumeSeries {
        name: "rewind_volume_head_seq",
        kind: "gauge",
        help: "Newest journal sequence number (the head's point).",
        value: |_, stats| Some(stats.head_seq),
    },
    VolumeSeries {
        name: "rewind_volume_durable_seq",
        kind: "gauge",
        help: "Newest sequence number known durable.",
        value: |_, stats| Some(stats.durable_seq),
    },
    VolumeSeries {
        name: "rewind_volume_first_seq",
        kind: "gauge",
        help: "Oldest point that can still be opened (retention moves it forward).",
        value: |_, stats| Some(stats.first_seq),
    },
    VolumeSeries {
        name: "rewind_volume_base_seq",
        kind: "gauge",
        help: "Seq the base image holds: records up to it were folded into it.",
        value: |_, stats| Some(stats.base_seq),
    },
    VolumeSeries {
        name: "rewind_volume_journal_records",
        kind: "gauge",
        help: "Journal records in the retained history.",
        value: |_, stats| Some(stats.head_seq.saturating_sub(stats.first_seq)),
    },
    VolumeSeries {
        name: "rewind_volume_points",
        kind: "gauge",
        help: "Points in time that can be opened (every seq of the retained history).",
        value: |_, stats| Some(stats.head_seq.saturating_sub(stats.first_seq) + 1),
    },
    VolumeSeries {
        name: "rewind_volume_journal_bytes",
        kind: "gauge",
        help: "Bytes of the volume's journal segment files.",
        value: |_, stats| Some(stats.journal_bytes),
    },
    VolumeSeries {
        name: "rewind_volume_journal_segments",
        kind: "gauge",
        help: "Journal segment files.",
        value: |_, stats| Some(stats.segments),
    },
    VolumeSeries {
        name: "rewind_volume_journal_budget_bytes",
        kind: "gauge",
        help: "Journal budget retention keeps to (no sample: no budget).",
        value: |_, stats| stats.journal_budget_bytes,
    },
    VolumeSeries {
        name: "rewind_volume_base_bytes",
        kind: "gauge",
        help: "Bytes of data in the base image that old history is folded into.",
        value: |_, stats| Some(stats.base_bytes),
    },
    VolumeSeries {
        name: "rewind_volume_spare_segments",
        kind: "gauge",
        help: "Reclaimed segment files kept for reuse.",
        value: |_, stats| Some(stats.spare_segments),
    },
    VolumeSeries {
        name: "rewind_volume_retention_blocked",
        kind: "gauge",
        help: "1 if the journal is over its budget and a protected point (snapshot, clone base, rollback target) stops retention from folding, else 0.",
        value: |_, stats| Some(u64::from(stats.retention_blocked_at.is_some())),
    },
    VolumeSeries {
        name: "rewind_volume_snapshots",
        kind: "gauge",
        help: "Named snapshots.",
        value: |_, stats| Some(stats.snapshots),
    },
    VolumeSeries {
        name: "rewind_volume_index_memory_bytes",
        kind: "gauge",
        help: "Approximate memory held by the volume's index.",
        value: |_, stats| Some(stats.index_bytes),
    },
    VolumeSeries {
        name: "rewind_volume_write_error",
        kind: "gauge",
        help: "1 if the volume refuses writes after an IO error (fix the cause, then: rewind volume reopen VOLUME), else 0.",
        value: |volume, _| Some(u64::from(volume.poison().is_some())),
    },
    VolumeSeries {
        name: "rewind_volume_flushes_total",
        kind: "counter",
        help: "Flushes asked of the volume (NBD and control flushes, FUA writes, metadata records).",
        value: |_, stats| Some(stats.flushes),
    },
    VolumeSeries {
        name: "rewind_volume_syncs_total",
        kind: "counter",
        help: "fdatasync rounds run for the volume's journal (concurrent flushes share one).",
        value: |_, stats| Some(stats.syncs),
    },
    VolumeSeries {
        name: "rewind_volume_folds_total",
        kind: "counter",
        help: "Retention folds completed.",
        value: |_, stats| Some(stats.folds),
    },
    VolumeSeries {
        name: "rewind_volume_fold_failures_total",
        kind: "counter",
        help: "Retention folds that failed (IO errors on the base image; the next pass redoes them).",
        value: |_, stats| Some(stats.fold_failures),
    },
    VolumeSeries {
        name: "rewind_volume_folded_records_total",
        kind: "counter",
        help: "Journal records folded into the base image.",
        value: |_, stats| Some(stats.folded_records),
    },
    VolumeSeries {
        name: "rewind_volume_folded_bytes_total",
        kind: "counter",
        help: "Bytes of data folds made part of the base image (most stay where they are in the journal).",
        value: |_, stats| Some(stats.folded_bytes),
    },
    VolumeSeries {
        name: "rewind_volume_fold_copied_bytes_total",
        kind: "counter",
        help: "Bytes folds wrote into the base file in place (small pieces over base file data).",
        value: |_, stats| Some(stats.fold_copied_bytes),
    },
    VolumeSeries {
        name: "rewind_volume_cleaned_segments_total",
        kind: "counter",
        help: "Base segments cleaned (their live data copied into the base file, then reclaimed).",
        value: |_, stats| Some(stats.cleaned_segments),
    },
    VolumeSeries {
        name: "rewind_volume_cleaned_bytes_total",
        kind: "counter",
        help: "Live bytes cleaning copied from base segments into the base file.",
        value: |_, stats| Some(stats.cleaned_bytes),
    },
    VolumeSeries {
        name: "rewind_volume_clean_failures_total",
        kind: "counter",
        help: "Cleans that failed (IO errors); the next pass tries again.",
        value: |_, stats| Some(stats.clean_failures),
    },
    VolumeSeries {
        name: "rewind_volume_base_journal_bytes",
        kind: "gauge",
        help: "Bytes of base data kept in journal segments (folded data nothing newer replaced).",
        value: |_, stats| Some(stats.base_journal_bytes),
    },
    VolumeSeries {
        name: "rewind_volume_dead_journal_bytes",
        kind: "gauge",
        help: "Dead bytes of base segments (superseded data) that cleaning or reclaiming will free.",
        value: |_, stats| Some(stats.dead_journal_bytes),
    },
    VolumeSeries {
        name: "rewind_volume_reclaimed_segments_total",
        kind: "counter",
        help: "Journal segments reclaimed by retention.",
        value: |_, stats| Some(stats.reclaimed_segments),
    },
    VolumeSeries {
        name: "rewind_volume_reclaimed_bytes_total",
        kind: "counter",
        help: "Bytes of the journal segments reclaimed by retention.",
        value: |_, stats| Some(stats.reclaimed_bytes),
    },
    VolumeSeries {
        name: "rewind_volume_write_stalls_total",
        kind: "counter",
        help: "Writes that waited for a fold because the journal was past twice its budget (backpressure).",
        value: |_, stats| Some(stats.write_stalls),
    },
    VolumeSeries {
        name: "rewind_volume_write_no_space_total",
        kind: "counter",
        help: "Writes and metadata records refused with ENOSPC because the data dir's filesystem was full \
               (nothing was applied; the volume stays writable).",
        value: |_, stats| Some(stats.no_space_refusals),
    },
    VolumeSeries {
        name: "rewind_volume_damaged_records_total",
        kind: "counter",
        help: "Records of base data whose crc32c cleaning found wrong (bit rot after their sync); \
               their segment is kept and not cleaned again.",
        value: |_, stats| Some(stats.damaged_records),
    },
    VolumeSeries {
        name: "rewind_volume_recycled_segments_total",
        kind: "counter",
        help: "Journal segments started in a spare file (reclaimed, or made ahead) rather than a new one.",
        value: |_, stats| Some(stats.recycled_segments),
    },
    VolumeSeries {
        name: "rewind_volume_spares_made_total",
        kind: "counter",
        help: "Spare segment files made ahead of the writer because reclaim did not keep up.",
        value: |_, stats| Some(stats.spares_made),
    },
];

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
    pub fn render(&self, store: &Store, open: &OpenExports) -> String {
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

        render_volumes(&mut out, store, open);
        out
    }
}

fn render_volumes(out: &mut String, store: &Store, open: &OpenExports) {
    let volumes = store.volumes();
    header(out, "rewind_volumes", "gauge", "Volumes the daemon serves.");
    let _ = writeln!(out, "rewind_volumes {}", volumes.len());
    // One consistent reading per volume for all its series.
    let rows: Vec<(String, &Volume, VolumeStats)> =
        volumes.iter().map(|volume| (escape_label(volume.name()), &**volume, volume.stats())).collect();
    for series in VOLUME_SERIES {
        header(out, series.name, series.kind, series.help);
        for (label, volume, stats) in &rows {
            if let Some(value) = (series.value)(volume, stats) {
                let _ = writeln!(out, "{}{{volume=\"{label}\"}} {value}", series.name);
            }
        }
    }
    header(
        out,
        "rewind_volume_nbd_connections",
        "gauge",
        "NBD connections open to the volume, by export: the live head or points of its history.",
    );
    for (label, volume, _) in &rows {
        let (head, points) = open.count(volume.name(), volume.id());
        let _ = writeln!(out, "rewind_volume_nbd_connections{{volume=\"{label}\",export=\"head\"}} {head}");
        let _ =
            writeln!(out, "rewind_volume_nbd_connections{{volume=\"{label}\",export=\"points\"}} {points}");
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
        let volume = store.create_volume("db", 1 << 20).unwrap();
        volume.write(0, &[1; 4096], true).unwrap();
        let open = std::sync::Arc::new(OpenExports::default());
        let _hold = open.hold("db", volume.id(), true).unwrap();
        let text = metrics.render(&store, &open);
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
        assert!(text.contains("rewind_volume_points{volume=\"db\"} 2\n"), "{text}");
        assert!(text.contains("rewind_volume_syncs_total{volume=\"db\"} 1\n"), "{text}");
        assert!(text.contains("rewind_volume_write_stalls_total{volume=\"db\"} 0\n"), "{text}");
        assert!(text.contains("rewind_volume_journal_segments{volume=\"db\"} 1\n"), "{text}");
        assert!(text.contains("rewind_volume_nbd_connections{volume=\"db\",export=\"head\"} 1\n"));
        assert!(text.contains("rewind_volume_nbd_connections{volume=\"db\",export=\"points\"} 0\n"));
        // The journal's bytes are the store's figure, not a directory walk.
        let journal_bytes = volume.stats().journal_bytes;
        assert!(journal_bytes >= 4096);
        assert!(text.contains(&format!("rewind_volume_journal_bytes{{volume=\"db\"}} {journal_bytes}\n")));
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
