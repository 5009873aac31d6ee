//! Damaged data dirs through recovery: a small store is written on a
//! MemoryFs (writes, a snapshot, a rollback, flushes), then the fuzzer's
//! input overwrites bytes of its files (journal segments, checkpoints,
//! superblock, base map) and truncates some; opening the store and reading
//! every point of every volume must return data or an error, never panic,
//! hang, or read outside a buffer.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use store::{Filesystem, ManualClock, MemoryFs, RetentionPolicy, Store, StoreOptions};

fn options(fs: &Arc<MemoryFs>) -> StoreOptions {
    StoreOptions {
        clock: Arc::new(ManualClock::new(1_800_000_000_000_000_000)),
        filesystem: Some(fs.clone() as Arc<dyn Filesystem>),
        segment_bytes: 64 << 10,
        checkpoint_records: 8,
        commit_interval: None,
        retention: RetentionPolicy::KEEP_ALL,
        retention_interval: None,
        ..StoreOptions::default()
    }
}

/// Every file under `dir`, depth first.
fn files(fs: &MemoryFs, dir: &str, out: &mut Vec<String>) {
    for name in fs.list_dir(dir).unwrap_or_default() {
        let path = format!("{dir}/{name}");
        if fs.list_dir(&path).is_ok() {
            files(fs, &path, out);
        } else {
            out.push(path);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fs = Arc::new(MemoryFs::new());
    {
        let store = Store::open("/data".as_ref(), options(&fs)).expect("fresh store");
        let volume = store.create_volume("disk", 1 << 20).expect("create");
        for i in 0..40u64 {
            let block = vec![i as u8 + 1; 512 * (1 + (i as usize % 9))];
            volume.write((i * 7919) % ((1 << 20) - 8192), &block, false).expect("write");
            if i % 10 == 9 {
                volume.flush().expect("flush");
            }
        }
        volume.create_snapshot("s").expect("snapshot");
        volume.rollback(5).expect("rollback");
        volume.write_zeroes(0, 65536, false).expect("zeroes");
        volume.flush().expect("flush");
        store.close().expect("close");
    }
    let mut paths = Vec::new();
    files(&fs, "", &mut paths);
    paths.sort();
    // Input: repeated (file selector, offset u16, byte) triples; a 0xFF
    // selector truncates the file at the offset instead.
    for chunk in data.chunks_exact(4) {
        if paths.is_empty() {
            break;
        }
        let path = &paths[chunk[0] as usize % paths.len()];
        let Ok(file) = fs.open_file(path, false) else { continue };
        let len = file.len().unwrap_or(0);
        if len == 0 {
            continue;
        }
        let offset = u64::from(u16::from_le_bytes([chunk[1], chunk[2]])) % len;
        if chunk[0] == 0xFF {
            let _ = file.set_len(offset);
        } else {
            let _ = file.write_at(&[chunk[3]], offset);
        }
    }
    let Ok(store) = Store::open("/data".as_ref(), options(&fs)) else { return };
    for volume in store.volumes() {
        let history = volume.history();
        let mut buffer = vec![0u8; 64 << 10];
        for seq in history.first_seq..=history.head_seq.min(history.first_seq + 64) {
            let Ok(point) = volume.open_point(seq) else { continue };
            let size = point.size();
            let mut offset = 0;
            while offset < size {
                let length = (size - offset).min(buffer.len() as u64) as usize;
                let _ = point.read(offset, &mut buffer[..length]);
                let _ = point.extents(offset, length as u64);
                offset += length as u64;
            }
        }
        let _ = volume.read(0, &mut buffer);
        let _ = volume.verify();
        let _ = volume.write(0, &[1; 4096], true);
    }
});
