//! A plain write loop for profiling the write path (`perf record`):
//! `cargo run -p store --release --example write_loop -- DIR COUNT BLOCK [uring]`
//! (`THREADS=N` splits the writes over N threads). `VOLUME_MIB` (default
//! 4096) sizes the volume, `SEQUENTIAL=1` writes in order instead of at
//! random, `BUDGET_MIB` sets the journal budget (default: the volume's
//! size), `SPARES=0` turns segment file reuse off, `RESERVE_KIB` sets how
//! much journal space is allocated ahead of the tail at a time, `READS=0`
//! skips the read pass. The retention thread folds (and cleans) in the
//! background; each quarter of the run prints its wall throughput, the
//! writer thread's CPU and the whole process's CPU (writer plus retention)
//! per write, so the steady state (journal at its budget) shows; then the
//! latency percentiles of the main thread's writes and the volume's stats.

use std::time::Instant;

/// CPU time this thread has run, in nanoseconds (/proc/thread-self/schedstat):
/// unlike wall time, it does not grow when another process takes the core.
fn cpu_nanos() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// CPU time of the whole process (every thread: writers, retention,
/// commit), in nanoseconds (/proc/self/schedstat sums the threads).
fn process_cpu_nanos() -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            total += std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

use store::memory::SimRng;
use store::{EngineChoice, JournalBudget, RetentionPolicy, Store, StoreOptions};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|n| n.parse().ok())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = tempfile::tempdir_in(args.get(1).map_or("/dev/shm", String::as_str)).unwrap();
    let count: u64 = args.get(2).map_or(200_000, |n| n.parse().unwrap());
    let block: usize = args.get(3).map_or(4096, |n| n.parse().unwrap());
    let engine =
        if args.get(4).is_some_and(|e| e == "uring") { EngineChoice::Uring } else { EngineChoice::File };
    let size = env("VOLUME_MIB").unwrap_or(4096) << 20;
    let mut retention = RetentionPolicy::default();
    if let Some(budget) = env("BUDGET_MIB") {
        retention.max_journal_bytes = Some(JournalBudget::Bytes(budget << 20));
    }
    let options = StoreOptions {
        engine,
        commit_interval: None,
        retention,
        retention_interval: Some(std::time::Duration::from_secs(1)),
        spare_segments: env("SPARES").unwrap_or(2) as usize,
        reserve_bytes: env("RESERVE_KIB").map_or(StoreOptions::default().reserve_bytes, |kib| kib << 10),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), options).unwrap();
    let volume = store.create_volume("v", size).unwrap();
    let data = vec![0x5Au8; block];
    let mut rng = SimRng::new(1);
    let threads: u64 = env("THREADS").unwrap_or(1);
    let sequential = env("SEQUENTIAL").is_some_and(|s| s == 1);
    let blocks = size / block as u64;
    let next = std::sync::atomic::AtomicU64::new(0);
    let offset = |rng: &mut SimRng| {
        let block_number = if sequential {
            next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % blocks
        } else {
            rng.below(blocks)
        };
        block_number * block as u64
    };
    let mut latencies: Vec<u64> = Vec::with_capacity((count / threads) as usize);
    let started = Instant::now();
    let cpu = cpu_nanos();
    let process_cpu = process_cpu_nanos();
    std::thread::scope(|scope| {
        for thread in 1..threads {
            let (volume, data, offset) = (&volume, &data, &offset);
            scope.spawn(move || {
                let mut rng = SimRng::new(thread + 100);
                for _ in 0..count / threads {
                    volume.write(offset(&mut rng), data, false).unwrap();
                }
            });
        }
        let per_thread = count / threads;
        let quarter = (per_thread / 4).max(1);
        let mut quarter_started = Instant::now();
        let mut quarter_cpu = cpu_nanos();
        let mut quarter_process_cpu = process_cpu_nanos();
        for i in 0..per_thread {
            let write_started = Instant::now();
            volume.write(offset(&mut rng), &data, false).unwrap();
            latencies.push(write_started.elapsed().as_nanos() as u64);
            if (i + 1) % quarter == 0 {
                let writes = quarter * threads;
                let bytes = writes * block as u64;
                let elapsed = quarter_started.elapsed();
                let (cpu_now, process_now) = (cpu_nanos(), process_cpu_nanos());
                let stats = volume.stats();
                println!(
                    "  quarter {}: {:.0} MiB/s wall, CPU/write {:.2} µs writer, {:.2} µs process; \
                     journal {} MiB, folds {}, recycled segments {}",
                    (i + 1) / quarter,
                    bytes as f64 / elapsed.as_secs_f64() / (1 << 20) as f64,
                    (cpu_now - quarter_cpu) as f64 / 1e3 / writes as f64,
                    (process_now - quarter_process_cpu) as f64 / 1e3 / writes as f64,
                    stats.journal_bytes >> 20,
                    stats.folds,
                    stats.recycled_segments,
                );
                quarter_started = Instant::now();
                quarter_cpu = cpu_now;
                quarter_process_cpu = process_now;
            }
        }
    });
    volume.flush().unwrap();
    let elapsed = started.elapsed();
    let cpu = cpu_nanos() - cpu;
    let process_cpu = process_cpu_nanos() - process_cpu;
    println!(
        "{count} writes of {block} B: {:.2} µs/write wall, {:.2} µs/write CPU (writer), {:.2} µs/write CPU \
         (process), {:.0} MiB/s wall, {:.0} MiB/s per writer CPU-second",
        elapsed.as_secs_f64() * 1e6 / count as f64,
        cpu as f64 / 1e3 / count as f64,
        process_cpu as f64 / 1e3 / count as f64,
        (count * block as u64) as f64 / elapsed.as_secs_f64() / (1 << 20) as f64,
        (count * block as u64) as f64 / (cpu as f64 / 1e9) / (1 << 20) as f64
    );
    latencies.sort_unstable();
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] as f64 / 1e3;
    println!(
        "write latency: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.0} µs",
        percentile(0.5),
        percentile(0.99),
        percentile(0.999),
        percentile(1.0)
    );
    println!("{:?}", volume.stats());
    if env("READS") == Some(0) {
        return;
    }
    let mut buf = vec![0u8; block];
    let started = Instant::now();
    for _ in 0..count {
        let offset = rng.below(size / block as u64) * block as u64;
        volume.read(offset, &mut buf).unwrap();
    }
    let elapsed = started.elapsed();
    println!("{count} random reads of {block} B: {:.2} µs/read", elapsed.as_secs_f64() * 1e6 / count as f64);
}
