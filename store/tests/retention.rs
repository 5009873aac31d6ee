//! Retention through the public API: what a fold keeps, what it retires,
//! what stops it, what it reclaims and reuses; reads that report holes; time
//! points at the millisecond edge. Crash safety of folding is in `crash.rs`.

use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use store::memory::{Loss, MemoryFs, SimRng};
use store::{Clock, JournalBudget, ManualClock, PointError, RetentionPolicy, Store, StoreOptions, Volume};

const T0: i64 = 1_800_000_000_000_000_000;
const SECOND: i64 = 1_000_000_000;

fn memory_options(fs: &MemoryFs, clock: &Arc<ManualClock>, retention: RetentionPolicy) -> StoreOptions {
    StoreOptions {
        clock: clock.clone(),
        filesystem: Some(Arc::new(fs.clone())),
        segment_bytes: 16 << 10,
        buffer_bytes: 8 << 10,
        checkpoint_records: 16,
        commit_interval: None,
        retention,
        retention_interval: None,
        ..StoreOptions::default()
    }
}

/// Options under a journal budget alone (no window), with segments of
/// `segment_bytes`.
fn budget_options(fs: &MemoryFs, clock: &Arc<ManualClock>, budget: u64, segment_bytes: u64) -> StoreOptions {
    let policy = RetentionPolicy { window: None, max_journal_bytes: Some(JournalBudget::Bytes(budget)) };
    StoreOptions { segment_bytes, ..memory_options(fs, clock, policy) }
}

fn open(fs: &MemoryFs, options: &StoreOptions) -> Store {
    let options = StoreOptions { filesystem: Some(Arc::new(fs.clone())), ..options.clone() };
    Store::open("/memory".as_ref(), options).unwrap()
}

fn image(volume: &Arc<Volume>, seq: u64) -> Vec<u8> {
    let point = volume.open_point(seq).unwrap();
    let mut buf = vec![0xEE; point.size() as usize];
    point.read(0, &mut buf).unwrap();
    buf
}

/// A byte model of a volume: its image after every seq.
struct Model {
    images: Vec<Vec<u8>>,
}

impl Model {
    fn new(size: usize) -> Self {
        Self { images: vec![vec![0; size]] }
    }

    /// Writes random bytes through the volume and the model; returns the seq.
    fn write(&mut self, volume: &Volume, rng: &mut SimRng, offset: u64, length: usize) -> u64 {
        let mut data = vec![0; length];
        rng.fill(&mut data);
        let seq = volume.write(offset, &data, false).unwrap();
        let mut image = self.images.last().unwrap().clone();
        image[offset as usize..offset as usize + length].copy_from_slice(&data);
        self.images.push(image);
        assert_eq!(seq as usize, self.images.len() - 1);
        seq
    }

    /// A record that leaves the image as it is (snapshot, delete).
    fn same(&mut self) {
        self.images.push(self.images.last().unwrap().clone());
    }

    /// Every retained point equals the model; the one before is outside.
    fn check(&self, volume: &Arc<Volume>) {
        let history = volume.history();
        assert_eq!(history.head_seq as usize, self.images.len() - 1);
        for seq in history.first_seq..=history.head_seq {
            assert!(image(volume, seq) == self.images[seq as usize], "seq {seq} differs from the model");
        }
        if history.first_seq > 0 {
            assert!(matches!(
                volume.open_point(history.first_seq - 1),
                Err(PointError::OutsideHistory { .. })
            ));
        }
    }
}

/// A store under a journal budget alone (16 KiB segments) with volume "v"
/// of `size` bytes written once in 4 KiB blocks of random data.
struct Filled {
    fs: MemoryFs,
    options: StoreOptions,
    store: Store,
    volume: Arc<Volume>,
    model: Model,
    rng: SimRng,
}

fn filled(size: u64, budget: u64, seed: u64) -> Filled {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let options = budget_options(&fs, &clock, budget, 16 << 10);
    let store = open(&fs, &options);
    let volume = store.create_volume("v", size).unwrap();
    let mut model = Model::new(size as usize);
    let mut rng = SimRng::new(seed);
    for block in 0..size / 4096 {
        model.write(&volume, &mut rng, block * 4096, 4096);
    }
    Filled { fs, options, store, volume, model, rng }
}

/// History older than the window is folded into the base: the oldest point
/// moves to the last one before the window's start, its time is reported,
/// older points are outside the history, every retained point (and the
/// head) reads as before, also after a crash and reopen.
#[test]
fn window_folds_old_history_and_keeps_every_retained_point() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let policy = RetentionPolicy { window: Some(Duration::from_secs(60)), max_journal_bytes: None };
    let options = memory_options(&fs, &clock, policy);
    let store = open(&fs, &options);
    let volume = store.create_volume("v", 256 << 10).unwrap();
    let mut model = Model::new(256 << 10);
    let mut rng = SimRng::new(1);
    for _minute in 0..5 {
        for _ in 0..40 {
            let offset = rng.below(60) * 4096 + rng.below(100);
            let length = rng.range(1, 9000) as usize;
            model.write(&volume, &mut rng, offset, length);
            clock.advance(SECOND);
        }
        let offset = rng.below(50) * 4096;
        volume.trim(offset, 20_000, false).unwrap();
        let mut image = model.images.last().unwrap().clone();
        image[offset as usize..offset as usize + 20_000].fill(0);
        model.images.push(image);
        clock.advance(20 * SECOND);
    }
    volume.flush().unwrap();
    let before = volume.history();
    assert_eq!(before.first_seq, 0);
    let report = volume.enforce_retention(clock.now_nanos()).unwrap();
    let after = volume.history();
    // The window started 60 s ago: everything before its last point is folded
    // (to a segment boundary), nothing inside the window is.
    let window_start = clock.now_nanos() - 60 * SECOND;
    let oldest_kept = volume.resolve_time(window_start).unwrap();
    assert!(after.first_seq > 0 && after.first_seq <= oldest_kept, "{after:?} vs #{oldest_kept}");
    assert_eq!(report.first_seq_after, after.first_seq);
    assert!(report.folded_records > 0 && report.reclaimed_segments > 0, "{report:?}");
    assert_eq!(after.first_time, volume.open_point(after.first_seq).unwrap().time());
    assert!(volume.resolve_time(after.first_time - 1).is_err());
    model.check(&volume);
    let stats = volume.stats();
    assert_eq!((stats.first_seq, stats.base_seq), (after.first_seq, after.first_seq));
    assert!(stats.base_bytes > 0 && stats.folded_bytes > 0 && stats.reclaimed_bytes > 0, "{stats:?}");
    // A second pass has nothing more to fold.
    let again = volume.enforce_retention(clock.now_nanos()).unwrap();
    assert_eq!(again.folded_records, 0);
    // A crash keeps all of it (the fold is durable when it returns).
    let crashed = fs.crash_image(Loss::LoseAll, 3);
    drop((volume, store));
    let store = open(&crashed, &options);
    let volume = store.volume("v").unwrap();
    assert_eq!(volume.history().first_seq, after.first_seq);
    model.check(&volume);
    // And so does a clean close, whose checkpoint skips the folded prefix.
    store.close().unwrap();
    drop((volume, store));
    let store = open(&crashed, &options);
    let volume = store.volume("v").unwrap();
    let recovery = volume.recovery_stats();
    assert_eq!(recovery.replayed, 0, "{recovery:?}");
    assert_eq!(recovery.checkpointed, volume.head_seq() - after.first_seq);
    model.check(&volume);
}

/// Under sustained random writes on a real directory every part of the
/// journal stays within its bound (docs/journal.md, "Policy"): the history
/// within the budget plus a segment, the dead bytes of base segments
/// within the dead allowance plus a segment (cleaning copies the live
/// bytes of mostly dead segments into the base file), base data in the
/// journal plus base data in the base file within the volume's size;
/// reclaimed segment files are reused for new segments; the head and every
/// retained point read what was written, also after a reopen.
#[test]
fn budget_bounds_the_journal_and_recycles_segment_files() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 512 << 10;
    let segment = 64 << 10;
    let size = 1 << 20;
    let options = StoreOptions {
        segment_bytes: segment,
        buffer_bytes: 16 << 10,
        commit_interval: None,
        retention: RetentionPolicy { window: None, max_journal_bytes: Some(JournalBudget::Bytes(budget)) },
        retention_interval: None,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), options.clone()).unwrap();
    let volume = store.create_volume("v", size).unwrap();
    let mut model = Model::new(size as usize);
    let mut rng = SimRng::new(2);
    for round in 0..60 {
        for _ in 0..40 {
            let offset = rng.below(250) * 4096;
            model.write(&volume, &mut rng, offset, 4096);
        }
        volume.flush().unwrap();
        volume.enforce_retention(0).unwrap();
        let stats = volume.stats();
        assert!(stats.history_bytes <= budget + segment, "round {round}: {stats:?}");
        assert!(stats.dead_journal_bytes <= stats.dead_allowance_bytes + segment, "round {round}: {stats:?}");
        assert!(stats.base_journal_bytes + stats.base_bytes <= size, "round {round}: {stats:?}");
        assert_eq!(
            stats.journal_bytes,
            stats.history_bytes + stats.base_journal_bytes + stats.dead_journal_bytes
                - volume.segment_usage().iter().filter(|s| !s.base).map(|s| s.live_bytes).sum::<u64>(),
            "round {round}: {stats:?}"
        );
    }
    let stats = volume.stats();
    assert!(stats.folds > 10 && stats.recycled_segments > 10, "{stats:?}");
    assert!(stats.cleaned_segments > 0 && stats.cleaned_bytes > 0, "{stats:?}");
    // Cleaning copies only what is still live when a segment is cleaned:
    // with the allowance at an eighth of the volume, about 0.58 of what
    // was folded (e^-x where x - 1 + e^-x = 1/8), against all of it when
    // folds copied.
    assert!(stats.cleaned_bytes * 10 < stats.folded_bytes * 7, "{stats:?}");
    assert!(stats.spare_segments <= 2);
    let files = std::fs::read_dir(dir.path().join("volumes/v")).unwrap().count();
    assert!(files < 30, "{files} files: segments are reclaimed");
    model.check(&volume);
    drop((volume, store));
    let store = Store::open(dir.path(), options).unwrap();
    let volume = store.volume("v").unwrap();
    model.check(&volume);
    // Recovery found the same live segments.
    assert_eq!(volume.stats().base_journal_bytes, stats.base_journal_bytes);
}

/// The default budget (the volume's size) keeps the point before one
/// complete overwrite of the disk, whatever the size and order of its
/// writes: ransomware encrypting every block must not push out the point
/// before it. Counting segment bytes against the budget folded that point
/// (the overwrite's record headers, and the segment it starts in, come on
/// top of its data). Retention runs throughout, as the retention thread
/// would, and folds the history before the point; the history stays
/// within the budget, its records' headers and one segment.
#[test]
fn the_default_budget_keeps_the_point_before_a_complete_overwrite() {
    let size: u64 = 16 << 20;
    for (chunk, shuffled) in [(4096_u64, true), (256 << 10, false), (1 << 20, false), (96 << 10, true)] {
        let fs = MemoryFs::new();
        let clock = Arc::new(ManualClock::new(T0));
        let options = StoreOptions {
            clock: clock.clone(),
            filesystem: Some(Arc::new(fs.clone())),
            commit_interval: None,
            retention: RetentionPolicy::default(),
            retention_interval: None,
            ..StoreOptions::default()
        };
        let store = open(&fs, &options);
        let volume = store.create_volume("v", size).unwrap();
        let mut rng = SimRng::new(chunk);
        let mut offsets: Vec<u64> = (0..size / chunk).map(|i| i * chunk).collect();
        let mut image = vec![0_u8; size as usize];
        let mut overwrite = |image: &mut Vec<u8>, rng: &mut SimRng| {
            if shuffled {
                for i in (1..offsets.len()).rev() {
                    offsets.swap(i, rng.below(i as u64 + 1) as usize);
                }
            }
            let mut records = 0;
            for (i, &offset) in offsets.iter().enumerate() {
                let range = offset as usize..(offset + chunk) as usize;
                rng.fill(&mut image[range.clone()]);
                volume.write(offset, &image[range], false).unwrap();
                records += chunk.div_ceil(4 << 20);
                if i % 64 == 63 {
                    volume.flush().unwrap();
                    volume.enforce_retention(T0).unwrap();
                }
            }
            volume.flush().unwrap();
            volume.enforce_retention(T0).unwrap();
            records
        };
        // Two complete writes of the disk, the point, the attack.
        overwrite(&mut image, &mut rng);
        overwrite(&mut image, &mut rng);
        let before = volume.head_seq();
        let good = image.clone();
        let records = overwrite(&mut image, &mut rng);
        let history = volume.history();
        assert!(history.first_seq > 1, "{chunk}: nothing was folded: {history:?}");
        assert!(
            history.first_seq <= before,
            "{chunk}: the point before the overwrite was folded: {history:?}"
        );
        let point = volume.open_point(before).unwrap();
        let mut read = vec![0; size as usize];
        point.read(0, &mut read).unwrap();
        assert!(read == good, "{chunk}: the point before the overwrite reads other bytes");
        let stats = volume.stats();
        let segment = RetentionPolicy::default().segment_bytes(size, StoreOptions::default().segment_bytes);
        let headers = records * 128;
        assert!(stats.history_bytes <= size + headers + segment, "{chunk}: {stats:?}");
        let mut head = vec![0; size as usize];
        volume.read(0, &mut head).unwrap();
        assert!(head == image, "{chunk}: the head reads other bytes");
    }
}

/// On a full disk the journal gives up its spare segment files (kept only
/// to save page allocations) before it refuses a write: a write is refused
/// with ENOSPC only once no spare is left but the cleaner's reserve, and
/// every acknowledged write reads back.
#[test]
fn full_disk_releases_spare_segments_before_refusing() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let retention = RetentionPolicy { window: None, max_journal_bytes: Some(JournalBudget::Bytes(32 << 10)) };
    let options = StoreOptions {
        segment_bytes: 8 << 10,
        reserve_bytes: 1,
        spare_segments: 2,
        ..memory_options(&fs, &clock, retention)
    };
    let store = open(&fs, &options);
    let volume = store.create_volume("v", 64 << 10).unwrap();
    let mut model = Model::new(64 << 10);
    let mut rng = SimRng::new(7);
    // A journal of about 100 KiB folded at once to its 32 KiB budget: more
    // segments are reclaimed than spares are kept.
    for _ in 0..100 {
        let (length, offset) = (rng.range(500, 1500) as usize, rng.below(60) * 1000);
        model.write(&volume, &mut rng, offset, length);
    }
    volume.flush().unwrap();
    volume.enforce_retention(T0).unwrap();
    assert_eq!(volume.stats().spare_segments, 2);
    fs.set_capacity(Some(fs.used_bytes()));
    let mut released = false;
    for _ in 0..200 {
        let before = volume.stats();
        let length = rng.range(500, 1500) as usize;
        let mut data = vec![0; length];
        rng.fill(&mut data);
        let offset = rng.below(60) * 1000;
        match volume.write(offset, &data, false) {
            Ok(seq) => {
                let mut image = model.images.last().unwrap().clone();
                image[offset as usize..offset as usize + length].copy_from_slice(&data);
                model.images.push(image);
                assert_eq!(seq as usize, model.images.len() - 1);
            }
            Err(error) => {
                assert!(matches!(error, store::WriteError::NoSpace(_)), "{error:?}");
                // One spare may stay: the cleaner's reserve (base segments
                // hold live data), which the write path leaves alone.
                assert!(
                    before.spare_segments == u64::from(before.base_journal_bytes > 0),
                    "refused while spare files held space: {before:?}"
                );
                break;
            }
        }
        let after = volume.stats();
        let reused = after.recycled_segments - before.recycled_segments;
        released |= after.spare_segments + reused < before.spare_segments;
    }
    assert!(released, "no spare file was given up for space");
    assert!(volume.write(0, &[1; 1000], false).is_err(), "the disk never filled");
    volume.flush().unwrap();
    model.check(&volume);
}

/// A volume out of space frees the other volumes' spare files too (they
/// hold no data): one volume's spares never keep another from writing. A
/// reopened volume's spares are its new journal's, freed once. Nothing
/// acknowledged is lost anywhere, and the volumes stay writable.
#[test]
fn a_volume_out_of_space_frees_the_other_volumes_spares() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let options = StoreOptions {
        reserve_bytes: 1,
        spare_segments: 2,
        ..budget_options(&fs, &clock, 32 << 10, 8 << 10)
    };
    let store = open(&fs, &options);
    let mut rng = SimRng::new(11);
    let mut volumes = Vec::new();
    for name in ["a", "b", "c"] {
        let volume = store.create_volume(name, 64 << 10).unwrap();
        let mut model = Model::new(64 << 10);
        model.write(&volume, &mut rng, 0, 1000);
        volume.flush().unwrap();
        volumes.push((volume, model));
    }
    // "a" and "c" hold two spares each, "b" none; "c" is reopened (its
    // old object keeps the files listed until it forgets them).
    for volume in [&volumes[0].0, &volumes[2].0] {
        assert_eq!(volume.prepare_spares(), 2);
        assert_eq!(volume.stats().spare_segments, 2);
    }
    let old_c = volumes[2].0.clone();
    volumes[2].0 = store.reopen_volume("c").unwrap();
    assert_eq!(volumes[2].0.stats().spare_segments, 2);
    // The old object forgot the files: they are the new journal's.
    assert_eq!(old_c.stats().spare_segments, 0);
    fs.set_capacity(Some(fs.used_bytes()));
    let (b, model) = &mut volumes[1];
    let mut written = 0;
    loop {
        let length = rng.range(500, 1500) as usize;
        let offset = rng.below(60) * 1000;
        let mut data = vec![0; length];
        rng.fill(&mut data);
        match b.write(offset, &data, false) {
            Ok(_) => {
                let mut image = model.images.last().unwrap().clone();
                image[offset as usize..offset as usize + length].copy_from_slice(&data);
                model.images.push(image);
                written += length;
            }
            Err(error) => {
                assert!(matches!(error, store::WriteError::NoSpace(_)), "{error:?}");
                break;
            }
        }
        assert!(written < 1 << 20, "the disk never filled");
    }
    // Four spares of 8 KiB freed: more than a segment's worth written.
    assert!(written > 24 << 10, "only {written} bytes written on the others' spares");
    for (volume, _) in &volumes {
        assert_eq!(volume.stats().spare_segments, 0, "{}", volume.name());
    }
    // With space again every volume writes on (no spare name left that
    // points at a removed file) and reads what was acknowledged.
    fs.set_capacity(None);
    for (volume, model) in &mut volumes {
        for _ in 0..40 {
            let (length, offset) = (rng.range(500, 1500) as usize, rng.below(60) * 1000);
            model.write(volume, &mut rng, offset, length);
        }
        volume.flush().unwrap();
        assert!(volume.poison().is_none());
        model.check(volume);
    }
}

/// Captures log lines (for the warning tests).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A named snapshot stops folding even when the journal is over budget:
/// the volume keeps serving, the snapshot and everything after stay
/// readable, the stats say which point blocks, and a warning says so
/// (once, not at every pass). Deleting the snapshot lets the next pass fold.
#[test]
fn snapshots_stop_folding_and_say_so_loudly() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &budget_options(&fs, &clock, 32 << 10, 16 << 10));
    let volume = store.create_volume("v", 128 << 10).unwrap();
    let mut model = Model::new(128 << 10);
    let mut rng = SimRng::new(3);
    for _ in 0..10 {
        let offset = rng.below(30) * 4096;
        model.write(&volume, &mut rng, offset, 4096);
    }
    let snapshot = volume.create_snapshot("clean").unwrap();
    model.same();
    for _ in 0..100 {
        let offset = rng.below(30) * 4096;
        model.write(&volume, &mut rng, offset, 4096);
    }
    volume.flush().unwrap();
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    tracing::subscriber::with_default(subscriber, || {
        for _ in 0..3 {
            let report = volume.enforce_retention(clock.now_nanos()).unwrap();
            assert_eq!(report.blocked_at, Some(snapshot.seq));
        }
    });
    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert_eq!(logged.matches("WARN").count(), 1, "{logged}");
    assert!(logged.contains("protected point #11") && logged.contains("a named snapshot"), "{logged}");
    let stats = volume.stats();
    assert_eq!(stats.retention_blocked_at, Some(snapshot.seq));
    assert!(stats.journal_bytes > 32 << 10);
    // Folded up to the snapshot, not past it.
    assert!(volume.history().first_seq <= snapshot.seq);
    assert!(volume.history().first_seq > 0);
    model.check(&volume);
    volume.delete_snapshot("clean").unwrap();
    model.same();
    volume.enforce_retention(clock.now_nanos()).unwrap();
    assert!(volume.history().first_seq > snapshot.seq);
    assert_eq!(volume.stats().retention_blocked_at, None);
    model.check(&volume);
}

/// A snapshot folded into the base (it is the base's own record) is still
/// listed, and still pins its point, after a crash and reopen.
#[test]
fn a_snapshot_at_the_base_survives_reopen() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let options = budget_options(&fs, &clock, 0, 200);
    let store = open(&fs, &options);
    let volume = store.create_volume("v", 64 << 10).unwrap();
    volume.write(0, b"before", false).unwrap();
    let snapshot = volume.create_snapshot("s").unwrap();
    volume.write(0, b"after!", true).unwrap();
    volume.enforce_retention(0).unwrap();
    assert_eq!(volume.history().first_seq, snapshot.seq);
    drop((volume, store));
    let store = open(&fs.crash_image(Loss::LoseAll, 1), &options);
    let volume = store.volume("v").unwrap();
    assert_eq!(volume.snapshot("s").map(|s| s.seq), Some(snapshot.seq));
    assert_eq!(&image(&volume, snapshot.seq)[..6], b"before");
    assert_eq!(&image(&volume, volume.head_seq())[..6], b"after!");
    volume.enforce_retention(0).unwrap();
    assert_eq!(volume.history().first_seq, snapshot.seq);
}

/// A clone's base point is protected like a snapshot while the clone
/// exists, the clone reads its base throughout, and deleting the clone
/// releases the point.
#[test]
fn clone_bases_are_protected_until_the_clone_is_deleted() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let options = budget_options(&fs, &clock, 0, 4096);
    let store = open(&fs, &options);
    let parent = store.create_volume("parent", 64 << 10).unwrap();
    let mut rng = SimRng::new(4);
    let mut model = Model::new(64 << 10);
    for _ in 0..20 {
        let offset = rng.below(15) * 4096;
        model.write(&parent, &mut rng, offset, 4096);
    }
    let base = parent.head_seq();
    let clone = store.clone_volume("parent", base, "child").unwrap();
    for _ in 0..40 {
        let offset = rng.below(15) * 4096;
        model.write(&parent, &mut rng, offset, 4096);
    }
    parent.flush().unwrap();
    let report = parent.enforce_retention(0).unwrap();
    assert_eq!(report.blocked_at, Some(base));
    assert!(parent.history().first_seq <= base);
    let mut buf = vec![0; 64 << 10];
    clone.read(0, &mut buf).unwrap();
    assert!(buf == model.images[base as usize]);
    // Across a reopen too: the clone's superblock pins it again.
    drop((parent, clone, store));
    let store = open(&fs, &options);
    let parent = store.volume("parent").unwrap();
    parent.enforce_retention(0).unwrap();
    assert!(parent.history().first_seq <= base);
    store.delete_volume("child", false).unwrap();
    parent.enforce_retention(0).unwrap();
    assert!(parent.history().first_seq > base);
    model.check(&parent);
    // Cloning a retired point is refused.
    assert!(store.clone_volume("parent", base, "late").is_err());
}

/// An open point view holds retention at its seq (a restore reading it
/// must not fail half-way); once it is dropped, retention folds past it, a
/// rollback to it is refused, and a point still retained keeps reading its
/// image.
#[test]
fn open_points_hold_retention_until_dropped() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &budget_options(&fs, &clock, 0, 16 << 10));
    let volume = store.create_volume("v", 64 << 10).unwrap();
    let mut rng = SimRng::new(5);
    let mut model = Model::new(64 << 10);
    for _ in 0..30 {
        let offset = rng.below(15) * 4096;
        model.write(&volume, &mut rng, offset, 4096);
    }
    let old = volume.open_point(3).unwrap();
    let copy = old.clone();
    let new = volume.open_point(volume.head_seq()).unwrap();
    volume.flush().unwrap();
    volume.enforce_retention(0).unwrap();
    assert!(volume.history().first_seq <= 3, "the open point held retention");
    assert!(volume.point_in_use(3));
    assert_eq!(volume.stats().retention_blocked_at, Some(3));
    let mut buf = vec![0; 64 << 10];
    old.read(0, &mut buf).unwrap();
    assert!(buf == model.images[3]);
    drop(old);
    assert!(volume.point_in_use(3), "a clone of the view holds it too");
    drop(copy);
    assert!(!volume.point_in_use(3));
    volume.enforce_retention(0).unwrap();
    let first = volume.history().first_seq;
    assert!(first > 3);
    assert!(matches!(volume.open_point(3), Err(PointError::OutsideHistory { .. })));
    new.read(0, &mut buf).unwrap();
    assert!(buf == *model.images.last().unwrap());
    assert!(volume.rollback(3).is_err());
    assert!(volume.rollback(first).is_ok());
}

/// `read_sparse` returns exactly the zero ranges served without IO: never
/// written, trimmed and written-zero ranges, base zeros after a fold, and a
/// clone's parent's zeros; every other byte came from data.
#[test]
fn read_sparse_reports_the_ranges_served_as_zeros() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let options = budget_options(&fs, &clock, 0, 200);
    let store = open(&fs, &options);
    let volume = store.create_volume("v", 64 << 10).unwrap();
    volume.write(4096, &[1; 4096], false).unwrap();
    volume.write(16384, &[2; 8192], false).unwrap();
    volume.trim(20480, 4096, false).unwrap();
    volume.write_zeroes(32768, 100, false).unwrap();
    let mut buf = vec![0xEE; 40_000];
    let zeros = volume.read_sparse(0, &mut buf).unwrap();
    assert_eq!(zeros, vec![(0, 4096), (8192, 8192), (20480, 19520)]);
    // At a point, relative to the buffer's start.
    let point = volume.open_point(1).unwrap();
    let mut buf = vec![0xEE; 8192];
    assert_eq!(point.read_sparse(2048, &mut buf).unwrap(), vec![(0, 2048), (6144, 2048)]);
    drop(point);
    // After folding everything, the same ranges come from the base.
    volume.write(50_000, &[3; 10], true).unwrap();
    volume.enforce_retention(0).unwrap();
    assert!(volume.stats().base_seq >= 4);
    let mut buf = vec![0xEE; 40_000];
    assert_eq!(volume.read_sparse(0, &mut buf).unwrap(), vec![(0, 4096), (8192, 8192), (20480, 19520)]);
    assert!(buf[4096..8192].iter().all(|&b| b == 1) && buf[16384..20480].iter().all(|&b| b == 2));
    // A clone: its own write, then the parent's image (zeros included).
    let clone = store.clone_volume("v", volume.head_seq(), "c").unwrap();
    clone.write(0, &[9; 100], false).unwrap();
    let mut buf = vec![0xEE; 10_000];
    assert_eq!(clone.read_sparse(0, &mut buf).unwrap(), vec![(100, 3996), (8192, 1808)]);
    assert!(buf[..100].iter().all(|&b| b == 9) && buf[4096..8192].iter().all(|&b| b == 1));
}

/// A time point never includes a write made after its instant, also within
/// the same millisecond: a write at 10.0005 s is not in the point at
/// 10.0003 s, and is in the one at 10.001 s; the point's time is at or
/// after the write's.
#[test]
fn time_points_never_include_a_later_write() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &memory_options(&fs, &clock, RetentionPolicy::KEEP_ALL));
    let volume = store.create_volume("v", 4096).unwrap();
    clock.set(T0 + 10 * SECOND);
    let first = volume.write(0, b"a", false).unwrap();
    clock.set(T0 + 10 * SECOND + 500_000);
    let second = volume.write(0, b"b", false).unwrap();
    assert_eq!(volume.resolve_time(T0 + 10 * SECOND + 300_000).unwrap(), first);
    assert_eq!(volume.resolve_time(T0 + 10 * SECOND + 999_999).unwrap(), first);
    assert_eq!(volume.resolve_time(T0 + 10 * SECOND + 1_000_000).unwrap(), second);
    assert!(volume.open_point(second).unwrap().time() >= T0 + 10 * SECOND + 500_000);
    assert_eq!(volume.open_point(first).unwrap().time(), T0 + 10 * SECOND);
}

/// The store's retention thread folds without being asked once a journal
/// goes over its budget (woken when a segment fills).
#[test]
fn the_retention_thread_folds_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let options = StoreOptions {
        segment_bytes: 64 << 10,
        commit_interval: Some(Duration::from_millis(5)),
        retention: RetentionPolicy { window: None, max_journal_bytes: Some(JournalBudget::Bytes(256 << 10)) },
        retention_interval: Some(Duration::from_secs(3600)),
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), options).unwrap();
    let volume = store.create_volume("v", 1 << 20).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0u64;
    while volume.stats().folds == 0 {
        assert!(std::time::Instant::now() < deadline, "no fold: {:?}", volume.stats());
        volume.write((i % 200) * 4096, &[i as u8; 4096], false).unwrap();
        i += 1;
        if i.is_multiple_of(64) {
            volume.flush().unwrap();
        }
    }
    assert!(volume.history().first_seq > 0);
}

/// Sequential overwrites are retained without copying a byte: each fold
/// leaves the newest data where it is in the journal, the segments of the
/// previous pass over the disk die whole and are reclaimed (and reused),
/// nothing is cleaned, and every retained point reads as written, also
/// after a crash (recovery keeps the base segments the map points into).
#[test]
fn sequential_overwrites_reclaim_segments_without_copying() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let size = 256 << 10;
    let budget = 256 << 10;
    let options = budget_options(&fs, &clock, budget, 32 << 10);
    let store = open(&fs, &options);
    let volume = store.create_volume("v", size).unwrap();
    let mut model = Model::new(size as usize);
    let mut rng = SimRng::new(11);
    for pass in 0..8u64 {
        for block in 0..size / 8192 {
            model.write(&volume, &mut rng, block * 8192, 8192);
            if block % 8 == 7 {
                volume.flush().unwrap();
                volume.enforce_retention(T0).unwrap();
            }
        }
        let stats = volume.stats();
        assert!(stats.history_bytes <= budget + (32 << 10), "pass {pass}: {stats:?}");
        // Base data: at most one image of the disk, in the journal.
        assert!(stats.base_journal_bytes <= size && stats.base_bytes == 0, "pass {pass}: {stats:?}");
    }
    let stats = volume.stats();
    assert_eq!((stats.cleaned_segments, stats.cleaned_bytes, stats.clean_failures), (0, 0, 0), "{stats:?}");
    assert!(stats.reclaimed_segments > 20 && stats.recycled_segments > 10, "{stats:?}");
    assert!(stats.folded_bytes > 4 * size && stats.base_journal_bytes > 0, "{stats:?}");
    assert!(stats.dead_journal_bytes <= 32 << 10, "a partly dead segment at most: {stats:?}");
    model.check(&volume);
    let crashed = fs.crash_image(Loss::LoseAll, 5);
    drop((volume, store));
    let store = open(&crashed, &options);
    let volume = store.volume("v").unwrap();
    model.check(&volume);
    assert_eq!(volume.stats().base_journal_bytes, stats.base_journal_bytes);
    assert_eq!(volume.stats().base_segments, stats.base_segments);
}

/// Small writes over data the cleaner moved into the base file are folded
/// into the base file in place (no punch now, nothing to copy back later),
/// large ones stay in the journal; every point, the head and a reopen
/// after a crash read as the model says.
#[test]
fn small_writes_over_base_file_data_fold_in_place() {
    let size = 256 << 10;
    let Filled { fs, options, store, volume, mut model, mut rng } = filled(size, 64 << 10, 13);
    // Then scatter 4 KiB overwrites until the cleaner has moved live data
    // into the base file.
    let mut rounds = 0;
    while volume.stats().base_bytes == 0 {
        for _ in 0..8 {
            let offset = rng.below(size / 4096) * 4096;
            model.write(&volume, &mut rng, offset, 4096);
        }
        volume.flush().unwrap();
        volume.enforce_retention(T0).unwrap();
        rounds += 1;
        assert!(rounds < 500, "nothing was cleaned into the base file: {:?}", volume.stats());
    }
    // Small overwrites of the whole disk, folded: those over base file data
    // go into the base file.
    let before = volume.stats();
    for block in 0..size / 4096 {
        model.write(&volume, &mut rng, block * 4096, 4096);
        if block % 4 == 3 {
            volume.flush().unwrap();
            volume.enforce_retention(T0).unwrap();
        }
    }
    let after = volume.stats();
    let in_place = after.fold_copied_bytes - before.fold_copied_bytes;
    assert!(in_place > 0 && in_place.is_multiple_of(4096), "{after:?}");
    assert!(after.base_bytes > 0, "{after:?}");
    model.check(&volume);
    // One large write over base file data stays in the journal (the base
    // file is punched there instead).
    let copied = after.fold_copied_bytes;
    model.write(&volume, &mut rng, 0, 128 << 10);
    for block in 0..64u64 {
        model.write(&volume, &mut rng, (128 << 10) + (block % 32) * 4096, 4096);
        if block % 4 == 3 {
            volume.flush().unwrap();
            volume.enforce_retention(T0).unwrap();
        }
    }
    let stats = volume.stats();
    assert!(stats.first_seq > model.images.len() as u64 - 66, "the large write was folded: {stats:?}");
    // The 64 small writes at most, never the large one.
    assert!(stats.fold_copied_bytes - copied <= 64 * 4096, "{stats:?}");
    model.check(&volume);
    // A crash that loses nothing unsynced changes nothing retained.
    let crashed = fs.crash_image(Loss::LoseAll, 7);
    drop((volume, store));
    let store = open(&crashed, &options);
    let volume = store.volume("v").unwrap();
    model.check(&volume);
}

/// Cost-benefit cleaning under a hot region: a disk filled once, then
/// overwritten only in its first 64 KiB. The dead bytes stay within the
/// allowance; hot segments are cleaned once mostly dead, cold data (still
/// live) is copied at most once (LFS's cost-benefit cleans a cold segment
/// only when its age outweighs its high live fraction), so cleaning copies
/// far less than the hot writes folded.
#[test]
fn cleaning_copies_hot_segments_late_and_cold_data_at_most_once() {
    let size = 512 << 10;
    let Filled { volume, mut model, mut rng, .. } = filled(size, 128 << 10, 12);
    volume.flush().unwrap();
    volume.enforce_retention(T0).unwrap();
    assert!(volume.stats().base_segments > 10, "{:?}", volume.stats());
    let filled = volume.stats().folded_bytes;
    for round in 0..200 {
        for _ in 0..8 {
            let offset = rng.below(16) * 4096;
            model.write(&volume, &mut rng, offset, 4096);
        }
        volume.flush().unwrap();
        volume.enforce_retention(T0).unwrap();
        let stats = volume.stats();
        assert!(
            stats.dead_journal_bytes <= stats.dead_allowance_bytes + (16 << 10),
            "round {round}: {stats:?}"
        );
    }
    let stats = volume.stats();
    let hot = stats.folded_bytes - filled;
    assert!(stats.cleaned_segments > 0, "{stats:?}");
    assert!(stats.cleaned_bytes < size + hot / 3, "{stats:?}");
    assert_eq!(stats.damaged_records, 0, "{stats:?}");
    model.check(&volume);
}

/// `rounds` rounds of 64 draws of `pick` (a 4 KiB block to write with
/// random data through the model, or none), each round then flushed and
/// followed by a retention pass.
fn overwrite_rounds(
    volume: &Arc<Volume>,
    model: &mut Model,
    rng: &mut SimRng,
    rounds: usize,
    mut pick: impl FnMut(&mut SimRng) -> Option<u64>,
) {
    for _round in 0..rounds {
        for _ in 0..64 {
            if let Some(block) = pick(rng) {
                model.write(volume, rng, block * 4096, 4096);
            }
        }
        volume.flush().unwrap();
        volume.enforce_retention(T0).unwrap();
    }
}

/// Flips (xor 0x5A) the byte `at` bytes into the payload of the folded
/// record that wrote 4 KiB block `block` of the model's head (before the
/// payload when negative: its header), in whichever segment file holds it.
/// Returns the file's name.
fn flip_record_byte(fs: &MemoryFs, model: &Model, block: usize, at: i64) -> String {
    use store::Filesystem;
    let data = &model.images.last().unwrap()[block * 4096..][..4096];
    for name in fs.list_dir("volumes/v").unwrap().into_iter().filter(|name| name.starts_with("seg-")) {
        let file = fs.open_file(&format!("volumes/v/{name}"), false).unwrap();
        let mut bytes = vec![0; file.len().unwrap() as usize];
        file.read_at(&mut bytes, 0).unwrap();
        if let Some(payload) = bytes.windows(64).position(|window| window == &data[..64]) {
            let at = (payload as i64 + at) as u64;
            let mut byte = [0u8];
            file.read_at(&mut byte, at).unwrap();
            file.write_at(&[byte[0] ^ 0x5A], at).unwrap();
            return name;
        }
    }
    panic!("block {block}'s record is in no segment");
}

/// Cleaning reads every record it copies whole and checks its crc32c: a
/// folded record whose bytes rotted in their segment after the sync is not
/// copied into the base file (where nothing would check it again); it stays
/// where it is, its segment is kept and not cleaned again, the damage is
/// counted, and the other segments are cleaned as usual. `verify` finds it
/// too. Without damage, the same walk finds none.
#[test]
fn cleaning_checks_crcs_and_leaves_damaged_base_data_in_place() {
    use store::Filesystem;
    let size = 512 << 10;
    let Filled { fs, volume, mut model, mut rng, .. } = filled(size, 128 << 10, 31);
    volume.flush().unwrap();
    volume.enforce_retention(T0).unwrap();
    assert!(volume.stats().base_segments > 10, "{:?}", volume.stats());
    let report = volume.verify().unwrap();
    assert!(report.corrupt.is_empty() && report.base_records > 0, "{report:?}");
    assert_eq!(report.unreadable_base_bytes, 0);
    // Flip a byte of block 5's data (written by seq 6) where its folded
    // record lies in a base segment.
    let damaged_block = 5;
    let segment_name = flip_record_byte(&fs, &model, damaged_block, 100);
    let report = volume.verify().unwrap();
    assert_eq!(report.corrupt, vec![damaged_block as u64 + 1], "{report:?}");
    // Overwrite every other block, over and over: the other base segments
    // die or get cleaned, and the damaged one, mostly dead, is chosen.
    overwrite_rounds(&volume, &mut model, &mut rng, 12, |rng| {
        let block = rng.below(size / 4096);
        Some(if block == damaged_block as u64 { block + 1 } else { block })
    });
    let stats = volume.stats();
    assert!(stats.cleaned_segments > 0, "{stats:?}");
    assert_eq!(stats.damaged_records, 1, "{stats:?}");
    // Its segment stays; the block reads back as it lies there (the
    // damaged bytes, not copied anywhere), every other byte as the model.
    assert!(fs.exists(&format!("volumes/v/{segment_name}")), "{segment_name} was reclaimed");
    let mut head = vec![0; size as usize];
    volume.read(0, &mut head).unwrap();
    let mut expected = model.images.last().unwrap().clone();
    expected[damaged_block * 4096 + 100] ^= 0x5A;
    assert!(head == expected, "the head differs from the model beyond the damaged byte");
    // Later passes leave it alone (counted once), and verify still names it.
    overwrite_rounds(&volume, &mut model, &mut rng, 1, |rng| Some(rng.below(size / 4096 / 2) * 2));
    assert_eq!(volume.stats().damaged_records, 1, "{:?}", volume.stats());
    assert_eq!(volume.verify().unwrap().corrupt, vec![damaged_block as u64 + 1]);
    // Once a new write covers the block, the damaged record is dead and
    // its segment goes like any other.
    model.write(&volume, &mut rng, damaged_block as u64 * 4096, 4096);
    overwrite_rounds(&volume, &mut model, &mut rng, 12, |rng| Some(rng.below(size / 4096)));
    assert!(!fs.exists(&format!("volumes/v/{segment_name}")), "{segment_name} kept after its data died");
    assert!(volume.verify().unwrap().corrupt.is_empty());
    model.check(&volume);
}

/// A record header that no longer decodes stops the walk of its segment:
/// cleaning copies the runs before it and leaves that record's and every
/// later run of the segment where they are (uncopied, counted, segment
/// kept), and `verify` counts their bytes as unreadable. The data itself
/// is intact, so reads still match the model; once every block is written
/// again, the segment goes.
#[test]
fn a_damaged_header_in_a_base_segment_leaves_the_rest_of_it_in_place() {
    use store::Filesystem;
    let size = 512 << 10;
    let Filled { fs, volume, mut model, mut rng, .. } = filled(size, 128 << 10, 37);
    volume.flush().unwrap();
    volume.enforce_retention(T0).unwrap();
    // The seq field of block 9's record header (96 bytes before its data).
    let damaged_block = 9;
    let segment_name = flip_record_byte(&fs, &model, damaged_block, -96 + 8);
    let report = volume.verify().unwrap();
    assert!(report.corrupt.is_empty(), "{report:?}");
    assert!(report.unreadable_base_bytes >= 4096, "{report:?}");
    overwrite_rounds(&volume, &mut model, &mut rng, 12, |rng| {
        Some(rng.below(size / 4096)).filter(|&block| block != damaged_block as u64)
    });
    let stats = volume.stats();
    assert!(stats.cleaned_segments > 0, "{stats:?}");
    assert!(stats.damaged_records >= 1, "{stats:?}");
    assert!(fs.exists(&format!("volumes/v/{segment_name}")), "{segment_name} was reclaimed");
    model.check(&volume);
    for block in 0..size / 4096 {
        model.write(&volume, &mut rng, block * 4096, 4096);
    }
    volume.flush().unwrap();
    volume.enforce_retention(T0).unwrap();
    overwrite_rounds(&volume, &mut model, &mut rng, 4, |rng| Some(rng.below(size / 4096)));
    assert!(!fs.exists(&format!("volumes/v/{segment_name}")), "{segment_name} kept after its data died");
    let report = volume.verify().unwrap();
    assert!(report.corrupt.is_empty() && report.unreadable_base_bytes == 0, "{report:?}");
    model.check(&volume);
}

/// verify holds off folds and cleans for one base segment at a time, not
/// for its whole walk: a retention pass that starts while verify reads the
/// base segments (each read slowed down) finishes before verify does. With
/// the lock held for the whole walk the pass waits for its end. The
/// verify still finds every base record intact although the base map
/// changed under it, and the volume still reads as the model.
#[test]
fn retention_runs_between_the_base_segments_verify_reads() {
    let size = 512 << 10;
    let Filled { fs, volume, mut model, mut rng, .. } = filled(size, 128 << 10, 43);
    volume.flush().unwrap();
    // Fold nearly all of the history: verify goes straight to the base.
    let tight = RetentionPolicy { window: None, max_journal_bytes: Some(JournalBudget::Bytes(8 << 10)) };
    volume.set_retention_policy(Some(tight));
    volume.enforce_retention(T0).unwrap();
    let base_segments = volume.stats().base_segments;
    assert!(base_segments >= 16, "{:?}", volume.stats());
    let delay = Duration::from_millis(25);
    fs.set_read_delay(delay);
    std::thread::scope(|scope| {
        let verifying = scope.spawn(|| {
            let report = volume.verify();
            (report, std::time::Instant::now())
        });
        // Let verify reach the base segments, then give retention history
        // to fold: one block written over and over, so that the pass has
        // little base data to clean (cleaning reads, slowed down too).
        std::thread::sleep(delay * 4);
        for _ in 0..16 {
            model.write(&volume, &mut rng, 0, 4096);
        }
        volume.flush().unwrap();
        let pass = volume.enforce_retention(T0).unwrap();
        let passed_at = std::time::Instant::now();
        let (report, verified_at) = verifying.join().unwrap();
        let report = report.unwrap();
        assert!(pass.folded_records > 0, "{pass:?}");
        assert!(
            passed_at < verified_at,
            "the retention pass waited for the whole verify ({base_segments} base segments)"
        );
        assert!(report.corrupt.is_empty() && report.unreadable_base_bytes == 0, "{report:?}");
        assert!(report.base_records > 0, "{report:?}");
    });
    fs.set_read_delay(Duration::ZERO);
    model.check(&volume);
}

/// On a full disk, cleaning can still run: the write path gives up its
/// spare segment files but not the cleaner's reserve; a retention pass
/// that runs out of space removes the reserve and goes on (folding, then
/// cleaning the segment with the fewest live bytes), and the space it
/// frees lets writes resume. Nothing acknowledged is lost.
#[test]
fn cleaning_on_a_full_disk_uses_its_reserve() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let size = 64 << 10;
    let options =
        StoreOptions { reserve_bytes: 1, spare_segments: 2, ..budget_options(&fs, &clock, 8 << 10, 4 << 10) };
    let store = open(&fs, &options);
    let volume = store.create_volume("v", size).unwrap();
    let mut model = Model::new(size as usize);
    let mut rng = SimRng::new(13);
    for _ in 0..200 {
        let offset = rng.below(60) * 1024;
        model.write(&volume, &mut rng, offset, 1024);
        if rng.chance(1, 10) {
            volume.flush().unwrap();
            volume.enforce_retention(T0).unwrap();
        }
    }
    volume.flush().unwrap();
    volume.enforce_retention(T0).unwrap();
    assert!(volume.stats().base_segments > 0 && volume.stats().spare_segments > 0, "{:?}", volume.stats());
    // Much more history, not folded yet: the next pass has a lot to do.
    for _ in 0..150 {
        let offset = rng.below(60) * 1024;
        model.write(&volume, &mut rng, offset, 1024);
    }
    volume.flush().unwrap();
    fs.set_capacity(Some(fs.used_bytes()));
    let mut refused = false;
    for _ in 0..100 {
        let mut data = vec![0; 1024];
        rng.fill(&mut data);
        let offset = rng.below(60) * 1024;
        match volume.write(offset, &data, false) {
            Ok(_) => {
                let mut image = model.images.last().unwrap().clone();
                image[offset as usize..offset as usize + 1024].copy_from_slice(&data);
                model.images.push(image);
            }
            Err(error) => {
                assert!(matches!(error, store::WriteError::NoSpace(_)), "{error:?}");
                refused = true;
                break;
            }
        }
    }
    assert!(refused, "the disk never filled");
    // The write path gave up the spares, not the reserve.
    assert_eq!(volume.stats().spare_segments, 1, "{:?}", volume.stats());
    volume.flush().unwrap();
    let before = volume.stats();
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    tracing::subscriber::with_default(subscriber, || volume.enforce_retention(T0).unwrap());
    let logged = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("the cleaner's reserve file removed"), "{logged}");
    let after = volume.stats();
    assert!(after.reclaimed_segments > before.reclaimed_segments, "{after:?}");
    assert_eq!(after.fold_failures + after.clean_failures, 0, "{after:?}");
    model.write(&volume, &mut rng, 0, 1024);
    volume.flush().unwrap();
    model.check(&volume);
}

/// A base segment that the base map points into but that is gone is
/// damage: the volume is not served (never its bytes read as zeros), and
/// the store says why.
#[test]
fn a_missing_base_segment_is_damage() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let options = budget_options(&fs, &clock, 0, 4 << 10);
    let store = open(&fs, &options);
    let volume = store.create_volume("v", 64 << 10).unwrap();
    let mut rng = SimRng::new(14);
    let mut model = Model::new(64 << 10);
    for block in 0..16 {
        model.write(&volume, &mut rng, block * 4096, 4096);
    }
    volume.flush().unwrap();
    volume.enforce_retention(T0).unwrap();
    let base = volume.segment_usage().into_iter().find(|s| s.base).expect("a base segment");
    model.check(&volume);
    drop((volume, store));
    use store::Filesystem;
    fs.remove_file(&format!("volumes/v/seg-{:010}.log", base.number)).unwrap();
    let store =
        Store::open("/memory".as_ref(), StoreOptions { filesystem: Some(Arc::new(fs.clone())), ..options })
            .unwrap();
    assert!(store.volume("v").is_none());
    let unopened = store.unopened();
    assert!(unopened.len() == 1 && unopened[0].1.contains("missing or damaged"), "{unopened:?}");
}

/// Journal bytes lent for sending straight from their segment file stay
/// what they were: lent segments are removed when reclaimed, never reused
/// for new records, while other reclaimed segments are reused; also after
/// the volume is reopened in the same process (a new journal over the same
/// files, whose recovery and reclaim must not reuse them either). Lending
/// covers only record data in real files, in order.
#[test]
fn lent_journal_bytes_are_never_overwritten_by_a_reused_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (segment, size, block) = (64 << 10, 1 << 20, 32 << 10);
    let options = StoreOptions {
        segment_bytes: segment,
        buffer_bytes: 16 << 10,
        commit_interval: None,
        retention: RetentionPolicy { window: None, max_journal_bytes: Some(JournalBudget::Bytes(256 << 10)) },
        retention_interval: None,
        spare_segments: 8,
        ..StoreOptions::default()
    };
    let store = Store::open(dir.path(), options).unwrap();
    let mut volume = store.create_volume("v", size).unwrap();
    let mut rng = SimRng::new(3);
    let read_lent = |lent: &[store::Lent]| {
        let mut bytes = Vec::new();
        for run in lent {
            let mut buf = vec![0; run.length as usize];
            run.file.read_at(&mut buf, run.position).unwrap();
            bytes.extend_from_slice(&buf);
        }
        bytes
    };

    // One block in two records: two runs, in order, holding the bytes.
    let mut first = vec![0; block as usize];
    rng.fill(&mut first);
    volume.write(0, &first[..16 << 10], false).unwrap();
    volume.write(16 << 10, &first[16 << 10..], false).unwrap();
    volume.flush().unwrap();
    let mut asked = 0;
    let two = volume
        .lend_head(0, block, 8, |_, _, _| {
            asked += 1;
            true
        })
        .expect("record data in a real file is lent");
    assert_eq!(two.iter().map(|run| run.length).collect::<Vec<_>>(), [16 << 10, 16 << 10]);
    assert_eq!(asked, 2);
    assert!(read_lent(&two) == first, "lent runs hold the written bytes");
    // Not lent: zeros never written, too many pieces, a declined piece.
    assert!(volume.lend_head(0, 2 * block, 8, |_, _, _| true).is_none(), "zeros are not in a file");
    assert!(volume.lend_head(0, block, 1, |_, _, _| true).is_none(), "more pieces than allowed");
    assert!(volume.lend_head(0, block, 8, |_, _, _| false).is_none(), "declined");

    // Every other block written and lent: the lent segments are reclaimed
    // while segments of the unlent blocks are too.
    let mut lent = vec![(two, first)];
    for index in 1..size / block {
        let mut data = vec![0; block as usize];
        rng.fill(&mut data);
        volume.write(index * block, &data, false).unwrap();
        volume.flush().unwrap();
        if index % 2 == 0 {
            lent.push((volume.lend_head(index * block, block, 8, |_, _, _| true).unwrap(), data));
        }
    }
    // Overwrite everything many times: segments are reclaimed and reused.
    // First, the volume is reopened: only the loans of this process protect
    // the lent segments from the new journal's recovery and reclaim.
    volume = store.reopen_volume("v").unwrap();
    for _ in 0..20 {
        for index in 0..size / block {
            let mut data = vec![0; block as usize];
            rng.fill(&mut data);
            volume.write(index * block, &data, false).unwrap();
        }
        volume.flush().unwrap();
        volume.enforce_retention(0).unwrap();
    }
    let stats = volume.stats();
    assert!(stats.recycled_segments > 5, "other segments are reused: {stats:?}");
    let mut removed = 0;
    for (index, (runs, data)) in lent.iter().enumerate() {
        assert!(read_lent(runs) == *data, "lent run {index} was overwritten in a reused segment");
        // A reclaimed lent segment is unlinked; the loan keeps it open.
        let links =
            |run: &store::Lent| std::fs::metadata(format!("/proc/self/fd/{}", run.fd)).unwrap().nlink();
        removed += runs.iter().filter(|run| links(run) == 0).count();
    }
    assert!(removed >= lent.len(), "lent segments were reclaimed (removed): {removed}");
}

/// The in-memory engine has no files to lend.
#[test]
fn the_memory_engine_lends_nothing() {
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(T0));
    let store = open(&fs, &memory_options(&fs, &clock, RetentionPolicy::default()));
    let volume = store.create_volume("v", 1 << 20).unwrap();
    volume.write(0, &[7; 256 << 10], false).unwrap();
    volume.flush().unwrap();
    assert!(volume.lend_head(0, 256 << 10, 8, |_, _, _| true).is_none());
}
