//! A plain write loop for profiling the write path (`perf record`):
//! `cargo run -p store --release --example write_loop -- DIR COUNT BLOCK [uring]`
//! (`THREADS=N` splits the writes over N threads; CPU time is the main
//! thread's only).

use std::time::Instant;

/// CPU time this thread has run, in nanoseconds (/proc/thread-self/schedstat):
/// unlike wall time, it does not grow when another process takes the core.
fn cpu_nanos() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

use store::memory::SimRng;
use store::{EngineChoice, Store, StoreOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = tempfile::tempdir_in(args.get(1).map_or("/dev/shm", String::as_str)).unwrap();
    let count: u64 = args.get(2).map_or(200_000, |n| n.parse().unwrap());
    let block: usize = args.get(3).map_or(4096, |n| n.parse().unwrap());
    let engine =
        if args.get(4).is_some_and(|e| e == "uring") { EngineChoice::Uring } else { EngineChoice::File };
    let store =
        Store::open(dir.path(), StoreOptions { engine, commit_interval: None, ..StoreOptions::default() })
            .unwrap();
    let size = 4u64 << 30;
    let volume = store.create_volume("v", size).unwrap();
    let data = vec![0x5Au8; block];
    let mut rng = SimRng::new(1);
    let threads: u64 = std::env::var("THREADS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let started = Instant::now();
    let cpu = cpu_nanos();
    std::thread::scope(|scope| {
        for thread in 1..threads {
            let (volume, data) = (&volume, &data);
            scope.spawn(move || {
                let mut rng = SimRng::new(thread + 100);
                for _ in 0..count / threads {
                    let offset = rng.below(size / block as u64) * block as u64;
                    volume.write(offset, data, false).unwrap();
                }
            });
        }
        for _ in 0..count / threads {
            let offset = rng.below(size / block as u64) * block as u64;
            volume.write(offset, &data, false).unwrap();
        }
    });
    volume.flush().unwrap();
    let elapsed = started.elapsed();
    let cpu = cpu_nanos() - cpu;
    println!(
        "{count} writes of {block} B: {:.2} µs/write wall, {:.2} µs/write CPU, {:.0} MiB/s wall, {:.0} MiB/s per CPU-second",
        elapsed.as_secs_f64() * 1e6 / count as f64,
        cpu as f64 / 1e3 / count as f64,
        (count * block as u64) as f64 / elapsed.as_secs_f64() / (1 << 20) as f64,
        (count * block as u64) as f64 / (cpu as f64 / 1e9) / (1 << 20) as f64
    );
    let mut buf = vec![0u8; block];
    let started = Instant::now();
    for _ in 0..count {
        let offset = rng.below(size / block as u64) * block as u64;
        volume.read(offset, &mut buf).unwrap();
    }
    let elapsed = started.elapsed();
    println!("{count} random reads of {block} B: {:.2} µs/read", elapsed.as_secs_f64() * 1e6 / count as f64);
}
