//! Criterion benches of the engine's hot paths: journal append (4 KiB random
//! and 1 MiB sequential, per IO engine, on tmpfs and on /tmp), FUA append,
//! index lookup, point open with 10^6 records, and recovery replay of a
//! 1 GiB journal tail. Also prints index bytes per record.
//!
//! `REWIND_BENCH_DIRS` (default "/dev/shm,/tmp") picks where files go.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use store::index::{Index, NewRecord, Piece};
use store::layout::RecordKind;
use store::memory::SimRng;
use store::{EngineChoice, Store, StoreOptions};

fn dirs() -> Vec<PathBuf> {
    std::env::var("REWIND_BENCH_DIRS")
        .unwrap_or_else(|_| "/dev/shm,/tmp".into())
        .split(',')
        .map(PathBuf::from)
        .collect()
}

fn engines() -> Vec<(&'static str, EngineChoice)> {
    let mut engines = vec![("pwrite", EngineChoice::File)];
    if store::uring::available() {
        engines.push(("io_uring", EngineChoice::Uring));
    }
    engines
}

fn options(engine: EngineChoice) -> StoreOptions {
    StoreOptions { engine, commit_interval: None, ..StoreOptions::default() }
}

const VOLUME: u64 = 4 << 30;

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("append");
    group.sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    for base in dirs() {
        for (engine_name, engine) in engines() {
            let dir = tempfile::tempdir_in(&base).unwrap();
            let store = Store::open(dir.path(), options(engine)).unwrap();
            let volume = store.create_volume("bench", VOLUME).unwrap();
            let where_ = format!("{engine_name}@{}", base.display());
            let block = vec![0x5Au8; 4096];
            let mut rng = SimRng::new(1);
            group.throughput(Throughput::Bytes(4096));
            group.bench_function(BenchmarkId::new("4KiB-random", &where_), |b| {
                b.iter(|| {
                    let offset = rng.below(VOLUME / 4096) * 4096;
                    volume.write(offset, &block, false).unwrap()
                })
            });
            group.bench_function(BenchmarkId::new("4KiB-random-fua", &where_), |b| {
                b.iter(|| {
                    let offset = rng.below(VOLUME / 4096) * 4096;
                    volume.write(offset, &block, true).unwrap()
                })
            });
            let big = vec![0xA5u8; 1 << 20];
            let mut offset = 0u64;
            group.throughput(Throughput::Bytes(1 << 20));
            group.bench_function(BenchmarkId::new("1MiB-sequential", &where_), |b| {
                b.iter(|| {
                    offset = (offset + (1 << 20)) % VOLUME;
                    volume.write(offset, &big, false).unwrap()
                })
            });
            eprintln!(
                "index bytes/record after append benches ({where_}): {:.1}",
                volume.index_memory_bytes() as f64 / volume.head_seq() as f64
            );
        }
    }
    group.finish();
}

fn write_record(index: &mut Index, offset: u64, length: u64, location: u64) {
    index.insert(
        &NewRecord {
            kind: RecordKind::Write,
            offset,
            length,
            location,
            payload_length: length as u32,
            time: index.head() as i64 * 10_000,
        },
        None,
    );
}

fn index(c: &mut Criterion) {
    const RECORDS: u64 = 1_000_000;
    let mut rng = SimRng::new(2);
    let mut index = Index::new(VOLUME, 0);
    for i in 0..RECORDS {
        write_record(&mut index, rng.below(VOLUME / 4096) * 4096, 4096, i * 4192);
    }
    let per_record = index.memory_bytes() as f64 / RECORDS as f64;
    eprintln!("index bytes/record, 10^6 random 4 KiB writes over 4 GiB: {per_record:.1}");
    let mut sequential = Index::new(VOLUME, 0);
    for i in 0..RECORDS {
        write_record(&mut sequential, (i * 4096) % VOLUME, 4096, i * 4192);
    }
    eprintln!(
        "index bytes/record, 10^6 sequential 4 KiB writes: {:.1}",
        sequential.memory_bytes() as f64 / RECORDS as f64
    );
    let mut group = c.benchmark_group("index");
    group.sample_size(30).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
    let mut out: Vec<Piece> = Vec::with_capacity(16);
    group.bench_function("lookup-4KiB-head", |b| {
        b.iter(|| {
            out.clear();
            let offset = rng.below(VOLUME / 4096) * 4096;
            index.plan(RECORDS, offset, offset + 4096, &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("lookup-4KiB-old-point", |b| {
        b.iter(|| {
            out.clear();
            let offset = rng.below(VOLUME / 4096) * 4096;
            index.plan(RECORDS / 2, offset, offset + 4096, &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("lookup-1MiB-head", |b| {
        b.iter(|| {
            out.clear();
            let offset = rng.below(VOLUME >> 20) << 20;
            index.plan(RECORDS, offset, offset + (1 << 20), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("insert-4KiB", |b| {
        let mut fresh = Index::new(VOLUME, 0);
        let mut i = 0;
        b.iter(|| {
            i += 1;
            write_record(&mut fresh, rng.below(VOLUME / 4096) * 4096, 4096, i * 4192);
        })
    });
    group.finish();
}

/// Opening a point and reading from it on a volume with 10^6 records.
fn point_open(c: &mut Criterion) {
    const RECORDS: u64 = 1_000_000;
    let base = dirs()[0].clone();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let store = Store::open(dir.path(), options(EngineChoice::File)).unwrap();
    let volume = store.create_volume("bench", 1 << 30).unwrap();
    let mut rng = SimRng::new(3);
    let block = [7u8; 512];
    for _ in 0..RECORDS {
        volume.write(rng.below((1 << 30) / 512) * 512, &block, false).unwrap();
    }
    volume.flush().unwrap();
    let mut group = c.benchmark_group("point");
    group.sample_size(30).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(300));
    group.bench_function("open-1e6-records", |b| {
        b.iter(|| {
            let seq = rng.range(1, RECORDS);
            let point = volume.open_point(seq).unwrap();
            let mut buf = [0u8; 4096];
            point.read(rng.below((1 << 30) / 4096) * 4096, &mut buf).unwrap();
            black_box(buf[0])
        })
    });
    group.bench_function("resolve-time-1e6-records", |b| {
        let history = volume.history();
        b.iter(|| {
            let at =
                history.first_time + rng.below((history.head_time - history.first_time) as u64 + 1) as i64;
            black_box(volume.resolve_time(at).unwrap())
        })
    });
    group.finish();
}

/// Reopening after a crash with a 1 GiB journal tail (no checkpoint).
fn recovery(c: &mut Criterion) {
    let base = dirs()[0].clone();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let options = StoreOptions { checkpoint_records: u64::MAX, ..options(EngineChoice::File) };
    {
        let store = Store::open(dir.path(), options.clone()).unwrap();
        let volume = store.create_volume("bench", 4 << 30).unwrap();
        let block = vec![9u8; 4096];
        let mut rng = SimRng::new(4);
        for _ in 0..(1u64 << 30) / 4096 {
            volume.write(rng.below((4 << 30) / 4096) * 4096, &block, false).unwrap();
        }
        volume.flush().unwrap();
        // Dropped without close(): no checkpoint, as after kill -9.
    }
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_millis(100));
    group.throughput(Throughput::Bytes(1 << 30));
    group.bench_function("reopen-1GiB-tail-4KiB-records", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                let started = Instant::now();
                let store = Store::open(dir.path(), options.clone()).unwrap();
                total += started.elapsed();
                assert_eq!(store.volume("bench").unwrap().head_seq(), (1 << 30) / 4096);
            }
            total
        })
    });
    group.finish();
    let _ = Arc::new(());
}

criterion_group!(benches, append, index, point_open, recovery);
criterion_main!(benches);
