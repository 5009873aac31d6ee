//! A journaled volume: its head (read-write) and its points (read-only),
//! and the retention that folds its oldest history into the base image.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::backend::{Filesystem, StorageBackend};
use crate::base::{BaseKind, BaseRun};
use crate::clock::Clock;
use crate::error::{
    FlushError, History, PointError, Poison, ReadError, ResizeError, RetentionError, RollbackError,
    SnapshotError, VerifyError, WriteError,
};
use crate::index::{Index, MAX_VOLUME_SIZE, NewRecord, Piece, Source};
use crate::journal::{
    AppendError, Appended, Checkpoint, DurableMark, Journal, LargeWrite, SegmentInfo, Writer,
};
use crate::layout::{
    self, BaseMapFile, FLAG_BLAKE3, FoldIntent, INDEX_ENTRY_LEN, MAX_RECORD_PAYLOAD, MAX_SNAPSHOT_NAME,
    RecordHeader, RecordKind,
};
use crate::retention::{
    BASE_FILE, BASE_MAP_FILE, FOLD_FILE, RetentionPolicy, Wake, budget_seq, replace_file,
};

/// One run of a block-status answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Bytes in this run.
    pub length: u64,
    /// Nothing allocated here (never written, trimmed, or cut by a shrink).
    pub hole: bool,
    /// Reads return zeros here.
    pub zero: bool,
}

/// A named snapshot: a bookmark of one seq, kept until deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub name: String,
    /// The seq of the snapshot's own record; its image equals the head's
    /// image when the snapshot was taken.
    pub seq: u64,
    /// Unix nanoseconds.
    pub time: i64,
}

/// What a rollback did, and how to undo it: roll back to `previous_head_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackOutcome {
    /// Seq of the rollback record: the new head, whose image is the target's.
    pub new_seq: u64,
    /// The head before the rollback; still readable as a point.
    pub previous_head_seq: u64,
}

/// Writes per time interval, for `rewind timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    /// Start of the interval, unix nanoseconds.
    pub start: i64,
    /// Write, write-zeroes and trim records in the interval.
    pub writes: u64,
    /// Bytes they covered.
    pub bytes: u64,
}

/// One journal record as replication and verify see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    pub seq: u64,
    pub time: i64,
    pub kind: RecordKind,
    pub offset: u64,
    pub length: u64,
    pub payload: Vec<u8>,
    /// blake3 of the payload: from the record when it was hashed inline,
    /// else computed now from the crc-checked payload.
    pub blake3: [u8; 32],
}

/// Result of [`Volume::verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Payload bytes checked.
    pub bytes: u64,
    /// Seqs whose record failed its crc32c or blake3 (history records),
    /// or its crc32c (folded records still holding base data), or lies
    /// past the end of a segment file cut short.
    pub corrupt: Vec<u64>,
    /// Folded records checked that still hold base data in their
    /// journal segment.
    pub base_records: u64,
    /// Bytes of base data in journal segments that lie in no readable
    /// record (a damaged record header stops the walk of its segment).
    pub unreadable_base_bytes: u64,
}

/// What the last open of a volume found (for logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Records loaded from the index checkpoint.
    pub checkpointed: u64,
    /// Records replayed from the journal tail.
    pub replayed: u64,
    /// Bytes of journal tail scanned.
    pub replayed_bytes: u64,
    /// Bytes cut off the tail (torn or unacknowledged records).
    pub cut_bytes: u64,
    /// Bytes of unused journal space reservation (zeros past the last
    /// record) released.
    pub reserved_bytes: u64,
}

/// Counters and sizes of a volume, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeStats {
    pub head_seq: u64,
    pub durable_seq: u64,
    /// Bytes of journal segment files.
    pub journal_bytes: u64,
    /// Journal segment files.
    pub segments: u64,
    /// Approximate bytes of memory held by the index.
    pub index_bytes: u64,
    /// Snapshots currently pinned.
    pub snapshots: u64,
    /// Calls to flush (including FUA writes and metadata operations).
    pub flushes: u64,
    /// fdatasync rounds actually run (flushes share them).
    pub syncs: u64,
    /// Oldest point that can be opened (retention moves it forward).
    pub first_seq: u64,
    /// Seq of the base image: records at or before it were folded into it.
    pub base_seq: u64,
    /// Bytes of base data in the base file (its sparse file's data).
    pub base_bytes: u64,
    /// Bytes of base data kept in journal segments (folded records' data
    /// that nothing newer at or before the base seq replaced).
    pub base_journal_bytes: u64,
    /// Bytes of the history segments (the retained records; what the
    /// budget bounds).
    pub history_bytes: u64,
    /// Base segments (holding only folded records, kept for their base
    /// data), and their dead bytes (superseded data, headers, padding).
    pub base_segments: u64,
    pub dead_journal_bytes: u64,
    /// The journal budget in bytes, if any (from the retention policy).
    pub journal_budget_bytes: Option<u64>,
    /// Dead bytes of base segments that cleaning tolerates.
    pub dead_allowance_bytes: u64,
    /// Folds completed since the volume was opened.
    pub folds: u64,
    /// Records folded into the base since the volume was opened.
    pub folded_records: u64,
    /// Bytes of data those folds made part of the base image, and of those
    /// the bytes written into the base file over its older data there
    /// (small pieces: docs/journal.md, "The fold"); the rest stayed where
    /// it was in the journal.
    pub folded_bytes: u64,
    pub fold_copied_bytes: u64,
    /// Base segments cleaned, and the live bytes cleaning copied from them
    /// into the base file.
    pub cleaned_segments: u64,
    pub cleaned_bytes: u64,
    /// Journal segments reclaimed since the volume was opened, and their
    /// bytes (of which `cleaned_bytes` were copied first; the rest was
    /// dropped without a copy).
    pub reclaimed_segments: u64,
    pub reclaimed_bytes: u64,
    /// Segments started in a spare file (reclaimed, or made ahead).
    pub recycled_segments: u64,
    /// Spare segment files kept ready: reclaimed ones and ones made ahead.
    pub spare_segments: u64,
    /// Spare segment files the spare thread made (written whole), since
    /// the volume was opened.
    pub spares_made: u64,
    /// When the journal is over budget but a protected point (snapshot,
    /// clone base, rollback target) keeps it from folding further: that
    /// point's seq.
    pub retention_blocked_at: Option<u64>,
    /// Folds that failed (IO errors on the base file, the intent or the
    /// map, or while reclaiming); the next pass redoes them.
    pub fold_failures: u64,
    /// Cleans that failed (IO errors copying into the base file or
    /// committing the map); the next pass tries again.
    pub clean_failures: u64,
    /// Writes that waited for a fold because the journal was past twice
    /// its budget (write backpressure).
    pub write_stalls: u64,
    /// Writes (and metadata operations) refused with ENOSPC because the
    /// disk had no space for their journal records (the volume stays
    /// writable).
    pub no_space_refusals: u64,
    /// Records of base data that cleaning found damaged (their crc32c no
    /// longer matches, or their header is unreadable), since the volume
    /// was opened. Their bytes stay where they are, uncopied, and their
    /// segment is not cleaned again (docs/journal.md, "Cleaning").
    pub damaged_records: u64,
}

/// The store's background threads a volume wakes.
#[derive(Debug, Clone, Default)]
pub(crate) struct Wakes {
    /// Retention: when a segment fills while the journal is over its
    /// budget; a writer stalled on the budget waits for it.
    pub retention: Option<Arc<Wake>>,
    /// The spare thread: when a segment start leaves the journal without
    /// spare files.
    pub spares: Option<Arc<Wake>>,
}

/// Volume-level tunables, from the store's options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VolumeTuning {
    pub checkpoint_records: u64,
    /// The store's retention policy (a volume may override it).
    pub retention: RetentionPolicy,
    /// The store's configured segment size (retention may lower it).
    pub segment_bytes: u64,
}

/// What one retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FoldReport {
    /// The oldest retained point before and after the pass.
    pub first_seq_before: u64,
    pub first_seq_after: u64,
    /// Records folded into the base, bytes of data they made part of the
    /// base image, and of those the bytes written into the base file.
    pub folded_records: u64,
    pub folded_bytes: u64,
    pub fold_copied_bytes: u64,
    /// Base segments cleaned, and bytes copied into the base file.
    pub cleaned_segments: u64,
    pub cleaned_bytes: u64,
    /// Journal segments (and bytes) reclaimed.
    pub reclaimed_segments: u64,
    pub reclaimed_bytes: u64,
    /// The journal is over its budget and this protected point stops folding.
    pub blocked_at: Option<u64>,
}

/// One journal segment as retention sees it ([`Volume::segment_usage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentUsage {
    pub number: u64,
    /// Seq of its first record.
    pub first_seq: u64,
    /// Bytes it occupies.
    pub bytes: u64,
    /// Bytes of base data (the base map's journal runs) in it.
    pub live_bytes: u64,
    /// A base segment: all of its records are folded, and it is kept only
    /// for its live bytes (the rest is dead). Else a history segment.
    pub base: bool,
}

/// Retention state of a volume, behind one small lock.
#[derive(Debug, Default)]
struct RetentionState {
    /// A per-volume policy, replacing the store's.
    policy: Option<RetentionPolicy>,
    /// Clone bases: seq → number of clones whose base is this volume's
    /// image at seq. Protected like snapshots.
    pins: BTreeMap<u64, usize>,
    /// Of `pins`: those held by open point views (an NBD connection to a
    /// point), seq → count.
    views: BTreeMap<u64, usize>,
    /// The protected point last warned about, and when (unix nanoseconds).
    warned: Option<(u64, i64)>,
    blocked_at: Option<u64>,
}

/// Retention counters, for [`VolumeStats`].
#[derive(Debug, Default)]
struct RetentionCounters {
    folds: AtomicU64,
    folded_records: AtomicU64,
    folded_bytes: AtomicU64,
    fold_copied_bytes: AtomicU64,
    cleaned_segments: AtomicU64,
    cleaned_bytes: AtomicU64,
    reclaimed_segments: AtomicU64,
    reclaimed_bytes: AtomicU64,
    failures: AtomicU64,
    clean_failures: AtomicU64,
    stalls: AtomicU64,
    damaged_records: AtomicU64,
    /// Writes refused for lack of disk space (not a retention counter, but
    /// kept with the volume's other counters).
    no_space: AtomicU64,
}

/// Longest a write waits for a fold when the journal is past twice its budget.
const WRITE_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// How often the warning that protected points keep the journal over its
/// budget repeats while nothing changes.
const BLOCKED_WARNING_INTERVAL_NANOS: i64 = 10 * 60 * 1_000_000_000;
/// A fold writes folded data of pieces smaller than this into the base
/// file in place where the base file already holds that range's data,
/// instead of leaving it in the journal and punching the base file
/// (docs/journal.md, "The fold").
const FOLD_IN_PLACE_MAX: u64 = 64 << 10;
/// Damaged records a clean names in a log line each (the rest are counted).
const DAMAGE_LOGGED: u64 = 8;
/// Segments cleaned per retention pass at most (the next pass goes on).
const CLEAN_SEGMENTS_PER_PASS: usize = 16;
/// Records whose ranges a fold collects at once.
const FOLD_BATCH_RECORDS: u64 = 1 << 20;
/// Address space planned per index lock while folding.
const FOLD_PLAN_BYTES: u64 = 64 << 20;
/// Spatial lists pruned per index lock after a fold.
const PRUNE_BATCH: usize = 4096;

/// A journaled volume. Share it as `Arc<Volume>`; every method is
/// thread-safe and short (no lock is held across a sync except the
/// group-commit lock that only flushers take).
#[derive(Debug)]
pub struct Volume {
    name: String,
    id: u128,
    dir: String,
    /// The clone's parent and seq. Behind a lock only because reopening the
    /// parent swaps in its new `Volume`.
    parent: RwLock<Option<(Arc<Volume>, u64)>>,
    clock: Arc<dyn Clock>,
    fs: Arc<dyn Filesystem>,
    journal: Journal,
    index: RwLock<Index>,
    /// Readers hold it (shared) from planning a read until its IO is done;
    /// a fold takes it (exclusive) at the two moments it retires points or
    /// the records behind them, so no read ever follows a stale plan into a
    /// rewritten base range or a reclaimed segment.
    gate: RwLock<()>,
    /// The base image file, once retention has written one.
    base_file: OnceLock<Arc<dyn StorageBackend>>,
    /// One fold at a time.
    fold_lock: Mutex<()>,
    retention: Mutex<RetentionState>,
    counters: RetentionCounters,
    /// Base segments holding damaged base data: cleaning leaves them be.
    damaged_segments: Mutex<BTreeSet<u64>>,
    /// The newest durable record, for index checkpoints.
    durable_mark: Mutex<Option<DurableMark>>,
    /// Signalled (with the writer lock) when the head moves past records
    /// that were being written outside the lock, or the volume is poisoned.
    published: Condvar,
    /// No new use (rollback target, clone base) of a point before this: a
    /// fold to it has been decided. At least the first seq.
    floor: AtomicU64,
    /// The target of the last fold intent known durable.
    intent_written: AtomicU64,
    /// The store threads this volume wakes.
    wakes: Wakes,
    /// Held while a spare file is prepared; deleting the volume waits for it.
    spare_lock: Mutex<()>,
    /// The journal budget in bytes (u64::MAX: none), for the write path.
    budget: AtomicU64,
    /// Dead bytes of base segments that cleaning tolerates.
    dead_allowance: AtomicU64,
    /// Base data kept in journal segments (the base map's journal runs), so
    /// that the write path can tell history from base data lock-free.
    base_journal_bytes: AtomicU64,
    /// The last retention pass could not fold enough (a protected point, or
    /// an IO error): writers over the budget must not wait for it.
    cannot_fold: AtomicBool,
    /// Signalled after each fold, for writers waiting in [`Self::throttle`].
    folded: (Mutex<()>, Condvar),
    head: AtomicU64,
    durable: AtomicU64,
    size: AtomicU64,
    last_time: AtomicI64,
    poisoned: AtomicBool,
    poison: Mutex<Option<Poison>>,
    /// Group commit: whether a flusher (the leader) is syncing now. The
    /// others wait on `synced` and usually find their writes covered.
    syncing: Mutex<bool>,
    synced: Condvar,
    /// The index checkpoint; only the current leader (or close) touches it.
    checkpoint: Mutex<Checkpoint>,
    deleted: AtomicBool,
    /// Reopened: a new object owns the files ([`Self::mark_replaced`]).
    replaced: AtomicBool,
    tuning: VolumeTuning,
    recovery: RecoveryStats,
    flushes: AtomicU64,
    syncs: AtomicU64,
}

/// Appends `start..start+length` to the zero ranges, merged with the last.
fn push_zeros(zeros: &mut Option<&mut Vec<(usize, usize)>>, start: usize, length: usize) {
    let Some(zeros) = zeros.as_deref_mut() else { return };
    if length == 0 {
        return;
    }
    match zeros.last_mut() {
        Some((last_start, last_length)) if *last_start + *last_length == start => *last_length += length,
        _ => zeros.push((start, length)),
    }
}

/// Dead bytes of base segments that cleaning tolerates under `policy`: a
/// quarter of the budget (of the volume's size without one), and at least
/// two segments, so that the partly dead segment of sequential overwrites
/// never needs cleaning (docs/journal.md, "Policy").
fn dead_allowance(policy: &RetentionPolicy, size: u64, journal: &Journal) -> u64 {
    (policy.budget_bytes(size).unwrap_or(size) / 4).max(journal.segment_bytes().saturating_mul(2))
}

/// Whether a retention step failed for lack of disk space.
fn out_of_space(result: &Result<(), RetentionError>) -> bool {
    matches!(result, Err(RetentionError::Io(error)) if crate::backend::is_no_space(error))
}

fn missing_base() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, "base image file missing")
}

thread_local! {
    static SCRATCH_PIECES: std::cell::Cell<Vec<Piece>> = const { std::cell::Cell::new(Vec::new()) };
    static SCRATCH_UNCOVERED: std::cell::Cell<Vec<(u64, u64)>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Ends a flush leader's turn, even if it panics, and wakes the waiters.
struct Leader<'a>(&'a Volume);

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        *self.0.syncing.lock() = false;
        self.0.synced.notify_all();
    }
}

/// The writer lock, held while records are appended and indexed in order.
struct Appender<'a> {
    volume: &'a Volume,
    writer: MutexGuard<'a, Writer>,
}

impl Appender<'_> {
    /// Seq of the last record appended (it may not be visible yet).
    fn head(&self) -> u64 {
        self.writer.last_seq()
    }

    fn append(
        &mut self,
        kind: RecordKind,
        offset: u64,
        length: u64,
        payload: &[u8],
        name: Option<&str>,
    ) -> Result<(u64, Option<LargeWrite>), WriteError> {
        let mut header = RecordHeader::new(kind, offset, length);
        self.volume.journal.seal_payload(&mut header, payload);
        self.append_sealed(header, payload, name)
    }

    /// Appends a record whose payload crc (and blake3) the caller computed
    /// before taking the lock. A large record comes back reserved: the
    /// caller must write it with [`Volume::finish`] after dropping the lock.
    fn append_sealed(
        &mut self,
        mut header: RecordHeader,
        payload: &[u8],
        name: Option<&str>,
    ) -> Result<(u64, Option<LargeWrite>), WriteError> {
        let volume = self.volume;
        let (kind, offset, length) = (header.kind, header.offset, header.length);
        let seq = self.head() + 1;
        let time = volume.clock.now_nanos().max(volume.last_time.load(Ordering::Relaxed));
        header.seq = seq;
        header.time = time;
        let (location, visible, large) = match volume.journal.append(&mut self.writer, &mut header, payload) {
            Ok(Appended::Buffered { location, visible }) => (location, visible, None),
            Ok(Appended::Reserved(large)) => (large.location, false, Some(large)),
            Err(AppendError::NoSpace(error)) => {
                // Nothing was appended: refuse this write, keep the volume.
                volume.counters.no_space.fetch_add(1, Ordering::Relaxed);
                return Err(WriteError::NoSpace(error));
            }
            Err(AppendError::Io(error)) => {
                volume.set_poison(&error);
                return Err(WriteError::Io(error));
            }
        };
        volume.last_time.store(time, Ordering::Relaxed);
        if volume.journal.take_rolled() {
            if let Some(wake) = &volume.wakes.retention
                && volume.over_budget()
            {
                wake.notify();
            }
            if let Some(wake) = &volume.wakes.spares
                && volume.journal.short_of_spares()
            {
                wake.notify();
            }
        }
        volume.index.write().insert(
            &NewRecord { kind, offset, length, location, payload_length: payload.len() as u32, time },
            name,
        );
        if visible {
            volume.head.store(seq, Ordering::Release);
        }
        Ok((seq, large))
    }
}

fn valid_name(name: &str) -> bool {
    (1..=MAX_SNAPSHOT_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Volume {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        id: u128,
        dir: String,
        parent: Option<(Arc<Volume>, u64)>,
        clock: Arc<dyn Clock>,
        fs: Arc<dyn Filesystem>,
        journal: Journal,
        index: Index,
        checkpoint: Checkpoint,
        base_file: Option<Arc<dyn StorageBackend>>,
        intent: Option<u64>,
        wakes: Wakes,
        tuning: VolumeTuning,
        recovery: RecoveryStats,
    ) -> Self {
        let mut index = index;
        if let Some(target) = intent {
            // A fold began before the volume was closed or crashed: its
            // points stay retired, and the next retention pass finishes it.
            index.set_first_seq(target.min(index.head()));
        }
        let first_seq = index.first_seq();
        let head = index.head();
        let size = index.size_at(head);
        // Index times are rounded up to the millisecond, so the head's is at
        // or after its exact time: record times never go back.
        let last_time = index.time(head);
        let base = OnceLock::new();
        if let Some(file) = base_file {
            let _ = base.set(file);
        }
        journal.set_segment_bytes(tuning.retention.segment_bytes(size, tuning.segment_bytes));
        let durable_mark = checkpoint.mark;
        let base_journal_bytes = index.base_map().journal_bytes();
        let allowance = dead_allowance(&tuning.retention, size, &journal);
        journal.set_keep_reserve(base_journal_bytes > 0);
        Self {
            name,
            id,
            dir,
            parent: RwLock::new(parent),
            clock,
            fs,
            journal,
            index: RwLock::new(index),
            gate: RwLock::new(()),
            base_file: base,
            fold_lock: Mutex::new(()),
            retention: Mutex::new(RetentionState::default()),
            counters: RetentionCounters::default(),
            damaged_segments: Mutex::new(BTreeSet::new()),
            durable_mark: Mutex::new(durable_mark),
            published: Condvar::new(),
            floor: AtomicU64::new(first_seq),
            intent_written: AtomicU64::new(intent.unwrap_or(0)),
            wakes,
            spare_lock: Mutex::new(()),
            budget: AtomicU64::new(tuning.retention.budget_bytes(size).unwrap_or(u64::MAX)),
            dead_allowance: AtomicU64::new(allowance),
            base_journal_bytes: AtomicU64::new(base_journal_bytes),
            cannot_fold: AtomicBool::new(false),
            folded: (Mutex::new(()), Condvar::new()),
            head: AtomicU64::new(head),
            // Recovery synced everything it indexed.
            durable: AtomicU64::new(head),
            size: AtomicU64::new(size),
            last_time: AtomicI64::new(last_time),
            poisoned: AtomicBool::new(false),
            poison: Mutex::new(None),
            syncing: Mutex::new(false),
            synced: Condvar::new(),
            checkpoint: Mutex::new(checkpoint),
            deleted: AtomicBool::new(false),
            replaced: AtomicBool::new(false),
            tuning,
            recovery,
            flushes: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        }
    }

    /// What recovery found when this volume was opened.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Identifier that stays with the volume's files (clones name it).
    pub fn id(&self) -> u128 {
        self.id
    }

    pub(crate) fn dir(&self) -> &str {
        &self.dir
    }

    /// Segment files a recovery set aside (`seg-N.log.cut-SEQ`: past a
    /// journal end it found, which a damaged record can cause as well as a
    /// torn one, so they may hold acknowledged writes), with their sizes.
    /// Only a forced delete of the volume removes them.
    pub fn set_aside(&self) -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = self
            .fs
            .list_dir(&self.dir)
            .unwrap_or_default()
            .into_iter()
            .filter(|name| crate::journal::parse_aside_name(name).is_some())
            .map(|name| {
                let len = self
                    .fs
                    .open_file(&format!("{}/{name}", self.dir), false)
                    .and_then(|file| file.len())
                    .unwrap_or(0);
                (name, len)
            })
            .collect();
        files.sort();
        files
    }

    /// Current size of the head in bytes.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Newest seq: the head's point.
    pub fn head_seq(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Newest seq known durable (survives power loss).
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// The clone's parent volume name and seq, if this volume is a clone.
    pub fn clone_parent(&self) -> Option<(String, u64)> {
        self.parent.read().as_ref().map(|(parent, seq)| (parent.name.clone(), *seq))
    }

    /// For a clone: the volume it reads through and the seq of its base
    /// point there (a force-deleted parent is still this, hidden).
    pub fn parent(&self) -> Option<(Arc<Volume>, u64)> {
        self.parent.read().clone()
    }

    /// Points this clone at a reopened parent (same volume, new object).
    pub(crate) fn set_parent(&self, parent: Arc<Volume>) {
        if let Some((old, _)) = self.parent.write().as_mut() {
            *old = parent;
        }
    }

    /// Whether the clone's parent was deleted (forced: it stays hidden
    /// while clones read through it).
    pub fn clone_parent_deleted(&self) -> bool {
        self.parent.read().as_ref().is_some_and(|(parent, _)| parent.deleted.load(Ordering::Acquire))
    }

    /// The clone's parent volume's id (a deleted parent's name may be
    /// taken by a new volume; its id never is).
    pub fn parent_id(&self) -> Option<u128> {
        self.parent.read().as_ref().map(|(parent, _)| parent.id)
    }

    /// The error that made the volume refuse writes, if any.
    pub fn poison(&self) -> Option<Poison> {
        *self.poison.lock()
    }

    fn set_poison(&self, error: &std::io::Error) {
        let mut poison = self.poison.lock();
        if poison.is_none() {
            tracing::error!(volume = %self.name, %error, "journal IO failed; volume refuses writes until reopened");
            *poison = Some(Poison::from_error(error));
        }
        self.poisoned.store(true, Ordering::Release);
    }

    /// Refuses writes and retention from now on; waits for a fold under way.
    pub(crate) fn mark_deleted(&self) {
        let _fold = self.fold_lock.lock();
        let _spare = self.spare_lock.lock();
        self.deleted.store(true, Ordering::Release);
        // Whoever opens the directory next owns its spare files.
        self.journal.close_spares();
    }

    /// Refuses reads from now on ([`ReadError::Replaced`]): a reopened
    /// volume's new object owns its files and may reuse a segment file
    /// this one still reads, so what this one would read is not its data.
    /// Waits for reads under way.
    pub(crate) fn mark_replaced(&self) {
        let _gate = self.gate.write();
        self.replaced.store(true, Ordering::Release);
    }

    /// Spare segment files the journal holds now (the cleaner's reserve
    /// included).
    pub(crate) fn spare_files(&self) -> usize {
        self.journal.spare_count()
    }

    /// Whether the journal ran short of spare files since the last call
    /// (the spare thread's question).
    pub(crate) fn take_spares_wanted(&self) -> bool {
        self.journal.take_short_of_spares()
    }

    /// Tops up the journal's spare files ([`Journal::prepare_spare`]):
    /// what the store's spare thread does for each volume after a segment
    /// starts. Returns how many it made. Best effort: a failure (a full
    /// disk, an IO error) is logged and leaves the journal as it was.
    pub fn prepare_spares(&self) -> usize {
        let _spare = self.spare_lock.lock();
        let mut made = 0;
        let stopping = || self.wakes.spares.as_ref().is_some_and(|wake| wake.stopped());
        while !self.deleted.load(Ordering::Acquire) && self.poison().is_none() && !stopping() {
            match self.journal.prepare_spare() {
                Ok(true) => made += 1,
                Ok(false) => break,
                Err(error) if crate::backend::is_no_space(&error) => {
                    tracing::debug!(volume = %self.name, %error, "no spare segment file prepared");
                    break;
                }
                Err(error) => {
                    tracing::warn!(volume = %self.name, %error, "cannot prepare a spare segment file");
                    break;
                }
            }
        }
        made
    }

    fn appender(&self) -> Result<Appender<'_>, WriteError> {
        let writer = self.journal.writer.lock();
        if self.deleted.load(Ordering::Acquire) {
            return Err(WriteError::Deleted);
        }
        if self.poisoned.load(Ordering::Acquire) {
            return Err(WriteError::Poisoned(self.poison().expect("poisoned has a cause")));
        }
        Ok(Appender { volume: self, writer })
    }

    fn check_range(&self, offset: u64, length: u64) -> Result<(), WriteError> {
        let size = self.size();
        match offset.checked_add(length) {
            Some(end) if end <= size => Ok(()),
            _ => Err(WriteError::OutOfBounds { offset, length, size }),
        }
    }

    /// Writes `data` at `offset`; returns its seq. With `fua` it returns
    /// only once the write (and everything before it) is durable.
    pub fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<u64, WriteError> {
        let seal = |at: u64, part: &[u8]| {
            let mut header = RecordHeader::new(RecordKind::Write, at, part.len() as u64);
            self.journal.seal_payload(&mut header, part);
            header
        };
        let seq = if data.len() <= MAX_RECORD_PAYLOAD {
            // The common case: checksum before taking the lock, no allocation.
            let header = seal(offset, data);
            let mut appender = self.appender()?;
            self.check_range(offset, data.len() as u64)?;
            let (seq, large) = if data.is_empty() {
                (appender.head(), None)
            } else {
                appender.append_sealed(header, data, None)?
            };
            drop(appender);
            self.finish(seq, large.map(|large| (large, data)))?
        } else {
            let headers: Vec<RecordHeader> = data
                .chunks(MAX_RECORD_PAYLOAD)
                .enumerate()
                .map(|(i, part)| seal(offset + (i * MAX_RECORD_PAYLOAD) as u64, part))
                .collect();
            let mut appender = self.appender()?;
            self.check_range(offset, data.len() as u64)?;
            // Seqs and space for all the records first, so that running
            // out refuses the whole write, not a part of it.
            if let Err(error) = crate::journal::check_seqs(appender.head() + 1, headers.len() as u64) {
                self.set_poison(&error);
                return Err(WriteError::Io(error));
            }
            let total = data.chunks(MAX_RECORD_PAYLOAD).map(|part| layout::record_span(part.len())).sum();
            match self.journal.reserve_records(&mut appender.writer, total) {
                Ok(()) => {}
                Err(AppendError::NoSpace(error)) => {
                    self.counters.no_space.fetch_add(1, Ordering::Relaxed);
                    return Err(WriteError::NoSpace(error));
                }
                Err(AppendError::Io(error)) => {
                    self.set_poison(&error);
                    return Err(WriteError::Io(error));
                }
            }
            let mut seq = appender.head();
            let mut reserved = Vec::new();
            let mut failure = None;
            for (header, part) in headers.into_iter().zip(data.chunks(MAX_RECORD_PAYLOAD)) {
                match appender.append_sealed(header, part, None) {
                    Ok((appended, large)) => {
                        seq = appended;
                        reserved.extend(large.map(|large| (large, part)));
                    }
                    Err(error) => {
                        failure = Some(error);
                        break;
                    }
                }
            }
            drop(appender);
            // Records already appended are written even if a later one
            // failed: the writers queued behind them wait for them.
            for (large, part) in reserved {
                self.finish(large.seq, Some((large, part)))?;
            }
            if let Some(error) = failure {
                return Err(error);
            }
            self.finish(seq, None)?
        };
        self.throttle();
        if fua {
            self.flush()?;
        }
        Ok(seq)
    }

    /// Makes `length` bytes at `offset` read as zeros (allocated zeros).
    pub fn write_zeroes(&self, offset: u64, length: u64, fua: bool) -> Result<u64, WriteError> {
        self.extent_record(RecordKind::Zeroes, offset, length, fua)
    }

    /// Discards `length` bytes at `offset`; they read as zeros afterwards.
    pub fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<u64, WriteError> {
        self.extent_record(RecordKind::Trim, offset, length, fua)
    }

    fn extent_record(
        &self,
        kind: RecordKind,
        offset: u64,
        length: u64,
        fua: bool,
    ) -> Result<u64, WriteError> {
        let mut appender = self.appender()?;
        self.check_range(offset, length)?;
        let (seq, large) = if length == 0 {
            (appender.head(), None)
        } else {
            appender.append(kind, offset, length, &[], None)?
        };
        drop(appender);
        let seq = self.finish(seq, large.map(|large| (large, &[][..])))?;
        self.throttle();
        if fua {
            self.flush()?;
        }
        Ok(seq)
    }

    /// Ends an append: writes a reserved large record (without the writer
    /// lock, so concurrent writers copy in parallel), then waits until
    /// `seq` is visible, i.e. every record up to it is written (to the
    /// buffer or the file). Records become visible in seq order, so a
    /// later record is never visible, or made durable by a flush, while an
    /// earlier one is unwritten.
    fn finish(&self, seq: u64, large: Option<(LargeWrite, &[u8])>) -> Result<u64, WriteError> {
        if let Some((large, payload)) = large {
            let written = large.write(payload);
            let mut writer = self.journal.writer.lock();
            match written {
                Ok(()) => {
                    if let Some(visible) = self.journal.complete(&mut writer, &large) {
                        self.head.fetch_max(visible, Ordering::AcqRel);
                    }
                    self.published.notify_all();
                }
                Err(error) => {
                    // The head can never pass this record: refuse writes
                    // (and wake those waiting behind it).
                    self.set_poison(&error);
                    self.published.notify_all();
                    return Err(WriteError::Io(error));
                }
            }
        }
        if self.head_seq() >= seq {
            return Ok(seq);
        }
        let mut writer = self.journal.writer.lock();
        while self.head_seq() < seq {
            if self.poisoned.load(Ordering::Acquire) {
                return Err(WriteError::Poisoned(self.poison().expect("poisoned has a cause")));
            }
            self.published.wait(&mut writer);
        }
        Ok(seq)
    }

    /// Write backpressure: past twice its budget plus the dead allowance
    /// (its bytes that are not base data) the journal grows faster than
    /// retention reclaims it, so the writer waits for a pass (up to a
    /// second a write). Never when a protected point keeps the journal over
    /// budget or the last pass failed: then the volume keeps serving.
    fn throttle(&self) {
        let budget = self.budget.load(Ordering::Relaxed);
        if budget != u64::MAX {
            let limit = budget.saturating_mul(2).saturating_add(self.dead_allowance.load(Ordering::Relaxed));
            if self.unfolded_bytes() > limit {
                self.wait_for_fold(limit);
            }
        }
    }

    /// Journal bytes that are not base data: history and dead bytes.
    fn unfolded_bytes(&self) -> u64 {
        self.journal.bytes().saturating_sub(self.base_journal_bytes.load(Ordering::Relaxed))
    }

    #[cold]
    fn wait_for_fold(&self, limit: u64) {
        let Some(wake) = &self.wakes.retention else { return };
        if self.cannot_fold.load(Ordering::Relaxed) {
            return;
        }
        self.counters.stalls.fetch_add(1, Ordering::Relaxed);
        wake.notify();
        let deadline = std::time::Instant::now() + WRITE_STALL_MAX;
        let mut folded = self.folded.0.lock();
        while self.unfolded_bytes() > limit
            && !self.cannot_fold.load(Ordering::Relaxed)
            && !self.folded.1.wait_until(&mut folded, deadline).timed_out()
        {}
    }

    /// Makes every write that returned before this call durable. Concurrent
    /// callers share one fdatasync: one of them (the leader) syncs whatever
    /// was written when it started; the others wait for it and return at
    /// once if it covered them, else one of them leads the next sync.
    pub fn flush(&self) -> Result<(), FlushError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let target = self.head_seq();
        {
            let mut syncing = self.syncing.lock();
            loop {
                if self.durable_seq() >= target {
                    return Ok(());
                }
                if self.poisoned.load(Ordering::Acquire) {
                    return Err(FlushError::Poisoned(self.poison().expect("poisoned has a cause")));
                }
                if !*syncing {
                    *syncing = true;
                    break;
                }
                self.synced.wait(&mut syncing);
            }
        }
        let _leader = Leader(self);
        self.lead_sync()
    }

    /// The leader's part of a flush: capture, sync, publish, checkpoint.
    fn lead_sync(&self) -> Result<(), FlushError> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        let (ticket, seq) = {
            let mut writer = self.journal.writer.lock();
            match self.journal.prepare_sync(&mut writer) {
                Ok(ticket) => {
                    let seq = ticket.mark.seq;
                    debug_assert_eq!(seq, self.head_seq());
                    (ticket, seq)
                }
                Err(error) => {
                    self.set_poison(&error);
                    return Err(FlushError::Io(error));
                }
            }
        };
        // The slow part, without the writer lock: writers keep appending.
        if let Err(error) = ticket.sync() {
            // Never guess what reached the disk (fsyncgate): refuse writes.
            self.set_poison(&error);
            return Err(FlushError::Io(error));
        }
        self.durable.store(seq, Ordering::Release);
        if seq > 0 {
            *self.durable_mark.lock() = Some(ticket.mark);
        }
        // A fold may be rewriting the checkpoint: then skip this one rather
        // than make every flusher wait (the next leader appends more).
        if let Some(mut checkpoint) = self.checkpoint.try_lock() {
            checkpoint.mark = *self.durable_mark.lock();
            if (seq + 1).saturating_sub(checkpoint.next_seq) >= self.tuning.checkpoint_records {
                let index = self.index.read();
                if let Err(error) = checkpoint.append(&index) {
                    tracing::warn!(volume = %self.name, %error, "index checkpoint failed; recovery will replay more");
                }
            }
        }
        Ok(())
    }

    /// Flushes, then checkpoints the whole index durably so that the next
    /// open replays nothing. Call on clean shutdown.
    pub fn close(&self) -> Result<(), FlushError> {
        self.flush()?;
        // No fold meanwhile (a checkpoint rewrite needs the entries it
        // covers), and become the leader so no flush runs meanwhile.
        let _fold = self.fold_lock.lock();
        {
            let mut syncing = self.syncing.lock();
            while *syncing {
                self.synced.wait(&mut syncing);
            }
            *syncing = true;
        }
        let _leader = Leader(self);
        self.checkpoint_all()
    }

    fn checkpoint_all(&self) -> Result<(), FlushError> {
        let mut checkpoint = self.checkpoint.lock();
        checkpoint.mark = *self.durable_mark.lock();
        let base_seq = self.index.read().base_seq();
        let written = if checkpoint.wants_rewrite(base_seq) {
            self.rewrite_checkpoint(&mut checkpoint, base_seq)
        } else {
            let index = self.index.read();
            checkpoint.append(&index)
        };
        if let Err(error) = written.and_then(|()| checkpoint.sync()) {
            tracing::warn!(volume = %self.name, %error, "index checkpoint failed; recovery will replay more");
        }
        Ok(())
    }

    /// Rewrites the checkpoint without the folded entries. The caller holds
    /// the fold lock, so the entries it encodes stay indexed.
    fn rewrite_checkpoint(&self, checkpoint: &mut Checkpoint, base_seq: u64) -> std::io::Result<()> {
        checkpoint.rewrite(base_seq, |first, last| {
            let index = self.index.read();
            let mut bytes = vec![0; (last - first + 1) as usize * INDEX_ENTRY_LEN];
            for (i, seq) in (first..=last).enumerate() {
                index.checkpoint_entry(seq).encode(&mut bytes[i * INDEX_ENTRY_LEN..]);
            }
            bytes
        })
    }

    /// Whether its files are always in memory (tmpfs): a read never waits
    /// for a disk ([`Filesystem::in_memory`]).
    pub fn in_memory(&self) -> bool {
        self.fs.in_memory()
    }

    /// Reads the head.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.read_head(offset, buf, None)
    }

    /// Reads the head like [`Self::read`], and returns the ranges of `buf`
    /// (start, length; relative to `buf`, in order, merged) that were
    /// served as zeros without IO: holes, written zeros, never-written
    /// ranges, zeros of the base. An NBD server can send them as hole
    /// chunks without asking the index again.
    pub fn read_sparse(&self, offset: u64, buf: &mut [u8]) -> Result<Vec<(usize, usize)>, ReadError> {
        let mut zeros = Vec::new();
        self.read_head(offset, buf, Some(&mut zeros))?;
        Ok(zeros)
    }

    /// Allocation status of the head, for NBD `base:allocation`.
    pub fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, ReadError> {
        loop {
            let seq = self.head_seq();
            let size = self.index.read().size_at(seq);
            match self.image_extents(seq, size, offset, length) {
                // See `read_head`.
                Err(ReadError::Retired { .. }) => continue,
                result => return result,
            }
        }
    }

    /// Reads the image at the head. A fold may retire the seq this read
    /// loaded as the head before the read plans it (the head moved on and
    /// a fold passed it meanwhile); the head itself is never retired (a
    /// fold's target is at most the durable seq), so read the new head.
    fn read_head(
        &self,
        offset: u64,
        buf: &mut [u8],
        mut zeros: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(), ReadError> {
        loop {
            let seq = self.head_seq();
            let size = self.index.read().size_at(seq);
            if let Some(zeros) = zeros.as_deref_mut() {
                zeros.clear();
            }
            match self.read_image(seq, size, offset, buf, zeros.as_deref_mut()) {
                Err(ReadError::Retired { .. }) => continue,
                result => return result,
            }
        }
    }

    /// The read plan of the image at `seq`. The caller holds the gate until
    /// it has read what the plan names.
    fn plan(&self, seq: u64, size: u64, offset: u64, length: u64) -> Result<Vec<Piece>, ReadError> {
        let end = offset.checked_add(length).filter(|&end| end <= size).ok_or(ReadError::OutOfBounds {
            offset,
            length,
            size,
        })?;
        if self.replaced.load(Ordering::Acquire) {
            return Err(ReadError::Replaced);
        }
        // Reuse this thread's vectors: reads allocate nothing in the
        // common case (a clone's base read nests and takes fresh ones).
        let mut pieces = SCRATCH_PIECES.with(|cell| cell.take());
        pieces.clear();
        let index = self.index.read();
        if seq < index.first_seq() {
            // A point opened before retention retired it.
            return Err(ReadError::Retired { seq, first_seq: index.first_seq() });
        }
        if length > 0 {
            SCRATCH_UNCOVERED.with(|cell| {
                let mut uncovered = cell.take();
                index.plan_with(seq, offset, end, &mut pieces, &mut uncovered);
                cell.replace(uncovered);
            });
        }
        Ok(pieces)
    }

    /// Lends the journal files that hold the `length` bytes at `offset` of
    /// the head, when all of them are record data in real files
    /// ([`Journal::lend`]): a server can then send them straight from those
    /// files, one [`Lent`] after another, in order. `None` otherwise (zeros,
    /// base file data, a clone's base, the in-memory engine, more than
    /// `max_pieces` pieces, or `accept` declined a piece): read them instead.
    pub fn lend_head(
        &self,
        offset: u64,
        length: u64,
        max_pieces: usize,
        accept: impl FnMut(RawFd, u64, u64) -> bool,
    ) -> Option<Vec<Lent>> {
        let seq = self.head_seq();
        let size = self.index.read().size_at(seq);
        self.lend_image(seq, size, offset, length, max_pieces, accept)
    }

    /// [`Self::lend_head`] for the image at `seq`.
    fn lend_image(
        &self,
        seq: u64,
        size: u64,
        offset: u64,
        length: u64,
        max_pieces: usize,
        accept: impl FnMut(RawFd, u64, u64) -> bool,
    ) -> Option<Vec<Lent>> {
        // The caller must not wait (an NBD connection's thread): a fold or a
        // clean queued for the gate declines the loan; the caller reads.
        let _gate = self.gate.try_read()?;
        let pieces = self.plan(seq, size, offset, length).ok()?;
        let runs: Option<Vec<(u64, u64)>> = (pieces.len() <= max_pieces)
            .then(|| {
                pieces
                    .iter()
                    .map(|piece| match piece.source {
                        Source::Data { location } => Some((location, piece.length)),
                        _ => None,
                    })
                    .collect()
            })
            .flatten();
        Self::recycle(pieces);
        let runs = runs?;
        let lent = self.journal.lend(&runs, accept)?;
        Some(
            lent.into_iter()
                .zip(runs)
                .map(|((file, fd, position), (_, length))| Lent { file, fd, position, length })
                .collect(),
        )
    }

    fn recycle(pieces: Vec<Piece>) {
        if pieces.capacity() <= 4096 {
            SCRATCH_PIECES.with(|cell| cell.replace(pieces));
        }
    }

    /// Runs `ask` on this clone's parent at its base seq (`parent`, as this
    /// read loaded it). A reopen of the parent (`Store::reopen_volume`)
    /// points this clone at the new object before it retires the old one,
    /// so an answer of `Replaced` from the old one is asked again of the
    /// new one (and `parent` updated for the rest of the read).
    fn through_parent<T>(
        &self,
        parent: &mut (Arc<Volume>, u64),
        mut ask: impl FnMut(&Volume, u64) -> Result<T, ReadError>,
    ) -> Result<T, ReadError> {
        loop {
            let volume = parent.0.clone();
            match ask(&volume, parent.1) {
                Err(ReadError::Replaced) => match self.parent() {
                    Some(newer) if !Arc::ptr_eq(&newer.0, &volume) => *parent = newer,
                    _ => return Err(ReadError::Replaced),
                },
                answer => return answer,
            }
        }
    }

    /// Reads `target`, at `offset` in this clone's image, from its parent's
    /// image at the clone's seq (zeros past the parent's size at that seq;
    /// with `zeros`, the ranges served as zeros at `at` onwards).
    fn read_parent(
        &self,
        parent: &mut (Arc<Volume>, u64),
        offset: u64,
        target: &mut [u8],
        at: usize,
        zeros: &mut Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(), ReadError> {
        let want_zeros = zeros.is_some();
        let (inside, nested) = self.through_parent(parent, |volume, seq| {
            let size = volume.index.read().size_at(seq);
            let inside = size.saturating_sub(offset).min(target.len() as u64) as usize;
            let mut nested = Vec::new();
            if inside > 0 {
                volume.read_image(
                    seq,
                    size,
                    offset,
                    &mut target[..inside],
                    want_zeros.then_some(&mut nested),
                )?;
            }
            Ok((inside, nested))
        })?;
        for (start, length) in nested {
            push_zeros(zeros, at + start, length);
        }
        target[inside..].fill(0);
        push_zeros(zeros, at + inside, target.len() - inside);
        Ok(())
    }

    /// Reads the image at `seq` into `buf`; with `zeros`, also appends the
    /// ranges of `buf` served as zeros without IO (relative, merged).
    pub(crate) fn read_image(
        &self,
        seq: u64,
        size: u64,
        offset: u64,
        buf: &mut [u8],
        mut zeros: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(), ReadError> {
        let _gate = self.gate.read();
        let pieces = self.plan(seq, size, offset, buf.len() as u64)?;
        let mut parent = self.parent();
        for &piece in &pieces {
            let at = (piece.offset - offset) as usize;
            let target = &mut buf[at..at + piece.length as usize];
            match piece.source {
                Source::Zero { .. } => {
                    target.fill(0);
                    push_zeros(&mut zeros, at, target.len());
                }
                Source::Data { location } => self.journal.read(location, target).map_err(ReadError::Io)?,
                Source::BaseFile => {
                    let file = self.base_file.get().ok_or_else(|| ReadError::Io(missing_base()))?;
                    file.read_at(target, piece.offset).map_err(ReadError::Io)?;
                }
                Source::Base => match parent.as_mut() {
                    None => {
                        target.fill(0);
                        push_zeros(&mut zeros, at, target.len());
                    }
                    Some(parent) => self.read_parent(parent, piece.offset, target, at, &mut zeros)?,
                },
            }
        }
        Self::recycle(pieces);
        Ok(())
    }

    pub(crate) fn image_extents(
        &self,
        seq: u64,
        size: u64,
        offset: u64,
        length: u64,
    ) -> Result<Vec<Extent>, ReadError> {
        let _gate = self.gate.read();
        let pieces = self.plan(seq, size, offset, length)?;
        let mut parent = self.parent();
        let mut extents: Vec<Extent> = Vec::new();
        let mut push = |extent: Extent| match extents.last_mut() {
            Some(last) if last.hole == extent.hole && last.zero == extent.zero => {
                last.length += extent.length
            }
            _ => extents.push(extent),
        };
        for &piece in &pieces {
            match piece.source {
                Source::Data { .. } | Source::BaseFile => {
                    push(Extent { length: piece.length, hole: false, zero: false })
                }
                Source::Zero { hole } => push(Extent { length: piece.length, hole, zero: true }),
                Source::Base => match parent.as_mut() {
                    None => push(Extent { length: piece.length, hole: true, zero: true }),
                    Some(parent) => {
                        let (inside, found) = self.through_parent(parent, |volume, seq| {
                            let size = volume.index.read().size_at(seq);
                            let inside = size.saturating_sub(piece.offset).min(piece.length);
                            let found = match inside {
                                0 => Vec::new(),
                                _ => volume.image_extents(seq, size, piece.offset, inside)?,
                            };
                            Ok((inside, found))
                        })?;
                        found.into_iter().for_each(&mut push);
                        if piece.length > inside {
                            push(Extent { length: piece.length - inside, hole: true, zero: true });
                        }
                    }
                },
            }
        }
        Self::recycle(pieces);
        Ok(extents)
    }

    /// The retained history: every seq in `first_seq..=head_seq` is a point.
    pub fn history(&self) -> History {
        let index = self.index.read();
        let head = self.head_seq();
        let first = index.first_seq();
        History {
            first_seq: first,
            first_time: index.time(first),
            head_seq: head,
            head_time: index.time(head),
        }
    }

    /// The seq and time of the newest record that changed the head's bytes
    /// (write, zeroes, trim: [`Index::last_data_change`]); `None` when
    /// nothing was ever written. Snapshots, resizes and rollbacks are not
    /// writes: an investigator reading "last write" wants the disk's.
    pub fn last_write(&self) -> Option<(u64, i64)> {
        let index = self.index.read();
        let seq = index.last_data_change(self.head_seq())?;
        Some((seq, index.time(seq)))
    }

    fn outside(&self, requested: String) -> PointError {
        PointError::OutsideHistory { requested, window: self.history() }
    }

    /// Opens the read-only image at `seq`. It stays valid, and unchanged,
    /// however the head moves, until retention retires it (then its reads
    /// fail with [`ReadError::Retired`]; never with other bytes).
    pub fn open_point(self: &Arc<Self>, seq: u64) -> Result<PointView, PointError> {
        let index = self.index.read();
        if seq > self.head_seq() || seq < index.first_seq() {
            drop(index);
            return Err(self.outside(format!("#{seq}")));
        }
        let (size, time) = (index.size_at(seq), index.time(seq));
        drop(index);
        // Retention must not fold past a point while it is read (a restore
        // copying it out would fail half-way): the view pins it.
        self.pin(seq)?;
        self.retention.lock().views.entry(seq).and_modify(|count| *count += 1).or_insert(1);
        let pin = Arc::new(ViewPin { volume: self.clone(), seq });
        Ok(PointView { volume: self.clone(), seq, size, time, _pin: pin })
    }

    /// Whether an open point view (an NBD connection to the point) holds
    /// `seq` against retention.
    pub fn point_in_use(&self, seq: u64) -> bool {
        self.retention.lock().views.contains_key(&seq)
    }

    /// The last seq at or before `unix_nanos`. Times before the oldest
    /// retained point or after now are outside the history. Index times are
    /// milliseconds rounded up, so a time point never includes a write made
    /// after it (it may miss one made less than a millisecond before it).
    pub fn resolve_time(&self, unix_nanos: i64) -> Result<u64, PointError> {
        let index = self.index.read();
        let head = self.head_seq();
        let first = index.first_seq();
        if unix_nanos < index.time(first) || unix_nanos > self.clock.now_nanos().max(index.time(head)) {
            drop(index);
            return Err(self.outside(format!("{unix_nanos} unix ns")));
        }
        Ok(index.resolve_time(unix_nanos).clamp(first, head))
    }

    /// Names the head's current image; pins its seq until deleted. Durable
    /// when it returns.
    pub fn create_snapshot(&self, name: &str) -> Result<Snapshot, SnapshotError> {
        if !valid_name(name) {
            return Err(SnapshotError::InvalidName(name.to_owned()));
        }
        let mut appender = self.appender().map_err(SnapshotError::Write)?;
        if self.index.read().snapshots().contains_key(name) {
            return Err(SnapshotError::Exists(name.to_owned()));
        }
        let (seq, large) = appender
            .append(RecordKind::Snapshot, 0, 0, name.as_bytes(), Some(name))
            .map_err(SnapshotError::Write)?;
        drop(appender);
        self.finish(seq, large.map(|large| (large, name.as_bytes()))).map_err(SnapshotError::Write)?;
        self.flush().map_err(|error| SnapshotError::Write(error.into()))?;
        Ok(Snapshot { name: name.to_owned(), seq, time: self.index.read().time(seq) })
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let index = self.index.read();
        let mut snapshots: Vec<Snapshot> = index
            .snapshots()
            .iter()
            .map(|(name, &seq)| Snapshot { name: name.clone(), seq, time: index.time(seq) })
            .collect();
        // A timeline of bookmarks: oldest first (names break ties).
        snapshots.sort_by_key(|snapshot| snapshot.seq);
        snapshots
    }

    /// The snapshot with this name.
    pub fn snapshot(&self, name: &str) -> Option<Snapshot> {
        let index = self.index.read();
        index.snapshots().get(name).map(|&seq| Snapshot { name: name.to_owned(), seq, time: index.time(seq) })
    }

    /// Unpins a snapshot (its seq stays a point while retained). Durable
    /// when it returns.
    pub fn delete_snapshot(&self, name: &str) -> Result<(), SnapshotError> {
        let mut appender = self.appender().map_err(SnapshotError::Write)?;
        if !self.index.read().snapshots().contains_key(name) {
            return Err(SnapshotError::NotFound(name.to_owned()));
        }
        let (seq, large) = appender
            .append(RecordKind::SnapshotDelete, 0, 0, name.as_bytes(), Some(name))
            .map_err(SnapshotError::Write)?;
        drop(appender);
        self.finish(seq, large.map(|large| (large, name.as_bytes()))).map_err(SnapshotError::Write)?;
        self.flush().map_err(|error| SnapshotError::Write(error.into()))
    }

    /// Makes the head's image the image at `seq`, as a new seq; the
    /// abandoned branch stays readable at its seqs. Undo = roll back to
    /// `previous_head_seq`. Durable when it returns.
    pub fn rollback(&self, seq: u64) -> Result<RollbackOutcome, RollbackError> {
        let mut appender = self.appender().map_err(RollbackError::Write)?;
        let previous = appender.head();
        // The floor, not just the first seq: a fold about to retire points
        // before its target has already refused new uses of them.
        if seq > previous || seq < self.floor.load(Ordering::Acquire) {
            drop(appender);
            return Err(RollbackError::Point(self.outside(format!("#{seq}"))));
        }
        let (new_seq, large) =
            appender.append(RecordKind::Rollback, seq, previous, &[], None).map_err(RollbackError::Write)?;
        self.size.store(self.index.read().size_at(new_seq), Ordering::Release);
        drop(appender);
        self.finish(new_seq, large.map(|large| (large, &[][..]))).map_err(RollbackError::Write)?;
        self.flush().map_err(|error| RollbackError::Write(error.into()))?;
        Ok(RollbackOutcome { new_seq, previous_head_seq: previous })
    }

    /// Changes the size. Shrinking discards the cut tail (growing again
    /// reads zeros there); earlier points keep their size. Durable when it
    /// returns.
    pub fn resize(&self, new_size: u64) -> Result<u64, ResizeError> {
        if new_size == 0 || new_size > MAX_VOLUME_SIZE {
            return Err(ResizeError::InvalidSize { size: new_size, max: MAX_VOLUME_SIZE });
        }
        let mut appender = self.appender().map_err(ResizeError::Write)?;
        let old = self.size();
        let (seq, large) =
            appender.append(RecordKind::Resize, new_size, old, &[], None).map_err(ResizeError::Write)?;
        self.size.store(new_size, Ordering::Release);
        drop(appender);
        self.finish(seq, large.map(|large| (large, &[][..]))).map_err(ResizeError::Write)?;
        self.flush().map_err(|error| ResizeError::Write(error.into()))?;
        Ok(seq)
    }

    /// Writes and bytes per `bucket_nanos` interval from `since_nanos` to the
    /// head's time (at most 100,000 buckets), counting only records from
    /// `from_nanos` on (the first bucket may start before it: buckets on
    /// whole intervals, counted from a snapshot's instant).
    pub fn timeline(&self, since_nanos: i64, bucket_nanos: i64, from_nanos: i64) -> Vec<Bucket> {
        const MAX_BUCKETS: i128 = 100_000;
        // Any i64 input is valid: do the arithmetic in i128.
        let bucket = i128::from(bucket_nanos.max(1));
        let since = i128::from(since_nanos);
        let (head, end, first) = {
            let index = self.index.read();
            let head = self.head_seq();
            let from = since_nanos.max(from_nanos);
            let first = if from <= index.time(index.base_seq()) {
                index.base_seq() + 1
            } else {
                index.resolve_time(from - 1) + 1
            };
            (head, i128::from(index.time(head)).max(since), first)
        };
        let count = ((end - since) / bucket + 1).min(MAX_BUCKETS) as usize;
        let mut buckets: Vec<Bucket> = (0..count)
            .map(|i| Bucket {
                start: (since + i as i128 * bucket).min(i128::from(i64::MAX)) as i64,
                writes: 0,
                bytes: 0,
            })
            .collect();
        // In batches, so a long history never holds the index lock for long.
        let mut seq = first;
        while seq <= head {
            let index = self.index.read();
            // A fold may have dropped records since the last batch.
            seq = seq.max(index.base_seq() + 1);
            let batch_end = head.min(seq + 65_535);
            for at in seq..=batch_end {
                let (kind, _, length) = index.record_summary(at);
                if !matches!(kind, RecordKind::Write | RecordKind::Zeroes | RecordKind::Trim) {
                    continue;
                }
                let slot = (i128::from(index.time(at)) - since) / bucket;
                if let Some(bucket) = usize::try_from(slot).ok().and_then(|slot| buckets.get_mut(slot)) {
                    bucket.writes += 1;
                    bucket.bytes += length;
                }
            }
            seq = batch_end + 1;
        }
        buckets
    }

    /// The record at `seq`, checked, with its blake3 (for replication and
    /// verify).
    pub fn read_record(&self, seq: u64) -> Result<JournalRecord, ReadError> {
        let _gate = self.gate.read();
        if self.replaced.load(Ordering::Acquire) {
            return Err(ReadError::Replaced);
        }
        let entry = {
            let index = self.index.read();
            let head = self.head_seq();
            if seq == 0 || seq > head {
                return Err(ReadError::OutOfBounds { offset: seq, length: 1, size: head + 1 });
            }
            if seq <= index.base_seq() {
                // Folded into the base: the record is gone.
                return Err(ReadError::Retired { seq, first_seq: index.first_seq() });
            }
            index.checkpoint_entry(seq)
        };
        let corrupt = |reason: String| ReadError::Corrupt { seq, reason };
        if !matches!(
            entry.kind,
            RecordKind::Write | RecordKind::Snapshot | RecordKind::SnapshotDelete | RecordKind::Rollback
        ) {
            // Records without a location in memory carry no payload.
            return Ok(JournalRecord {
                seq,
                time: self.index.read().time(seq),
                kind: entry.kind,
                offset: entry.offset,
                length: entry.length,
                payload: Vec::new(),
                blake3: *blake3::hash(&[]).as_bytes(),
            });
        }
        let (header, payload) =
            self.journal.read_record(entry.location).map_err(|error| match error.kind() {
                std::io::ErrorKind::InvalidData => corrupt(error.to_string()),
                _ => ReadError::Io(error),
            })?;
        if header.seq != seq {
            return Err(corrupt(format!("found seq {} at its location", header.seq)));
        }
        let hash = *blake3::hash(&payload).as_bytes();
        if header.flags & FLAG_BLAKE3 != 0 && header.blake3 != hash {
            return Err(corrupt("blake3 mismatch".into()));
        }
        Ok(JournalRecord {
            seq,
            time: header.time,
            kind: header.kind,
            offset: header.offset,
            length: header.length,
            payload,
            blake3: hash,
        })
    }

    /// Reads back every record of the history and checks its crc32c (and
    /// blake3 where stored), then every folded record whose bytes are
    /// still base data in its journal segment (crc32c). Corruption is
    /// reported, not fixed. Holds off folds and cleans while it reads one
    /// segment's base data, and lets them run between segments: a
    /// volume's base data can be hundreds of GiB, and retention, a delete
    /// and a clean shutdown all wait for that lock. A record folded between
    /// two segments may then be counted twice (as history, then as base).
    pub fn verify(&self) -> Result<VerifyReport, VerifyError> {
        self.verify_to(u64::MAX)
    }

    /// [`Self::verify`] of what the image at seq `last` is made of: the
    /// history records up to `last` (not the later ones) and all base data.
    pub fn verify_to(&self, last: u64) -> Result<VerifyReport, VerifyError> {
        let mut report = VerifyReport::default();
        let mut seq = self.index.read().base_seq() + 1;
        while seq <= self.head_seq().min(last) {
            match self.read_record(seq) {
                Ok(record) => {
                    report.records += 1;
                    report.bytes += record.payload.len() as u64;
                }
                Err(ReadError::Corrupt { .. }) => report.corrupt.push(seq),
                // A segment file cut short under the record: damage to
                // name, not a reason to stop checking the rest.
                Err(ReadError::Io(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => {
                    report.corrupt.push(seq)
                }
                Err(ReadError::Io(error)) => return Err(VerifyError::Io(error)),
                Err(ReadError::OutOfBounds { .. }) => break,
                // Folded meanwhile: continue after the new base.
                Err(ReadError::Retired { .. }) => seq = seq.max(self.index.read().base_seq()),
                Err(error @ ReadError::Replaced) => {
                    return Err(VerifyError::Io(std::io::Error::other(error.to_string())));
                }
            }
            seq += 1;
        }
        // Base data still in journal segments: every record a journal run
        // of the base map points into, read whole, a segment at a time. No
        // fold or clean moves a segment's runs while it is read; the runs
        // are looked up again under the lock (a clean may have moved them
        // out, a fold added some).
        let numbers: BTreeSet<u64> =
            self.index.read().base_map().iter().filter_map(|run| run.segment()).collect();
        for number in numbers {
            let fold = self.fold_lock.lock();
            let mut runs: Vec<BaseRun> =
                self.index.read().base_map().iter().filter(|run| run.segment() == Some(number)).collect();
            runs.sort_unstable_by_key(|run| run.location);
            let unreached = self
                .check_base_runs(&runs, |header, _, _, payload| {
                    match payload {
                        Some(payload) => {
                            report.base_records += 1;
                            report.bytes += payload.len() as u64;
                        }
                        None => report.corrupt.push(header.seq),
                    }
                    Ok(())
                })
                .map_err(VerifyError::Io)?;
            report.unreadable_base_bytes += unreached.iter().map(|run| run.end - run.start).sum::<u64>();
            // A pass waiting for the lock gets it now (a plain unlock lets
            // this loop take it straight back).
            MutexGuard::unlock_fair(fold);
        }
        Ok(report)
    }

    /// Counters and sizes, for metrics.
    pub fn stats(&self) -> VolumeStats {
        let (index_bytes, snapshots, first_seq, base_seq, base_bytes) = {
            let index = self.index.read();
            (
                index.memory_bytes() as u64,
                index.snapshots().len() as u64,
                index.first_seq(),
                index.base_seq(),
                index.base_map().data_bytes(),
            )
        };
        let usage = self.segment_usage();
        let (mut history_bytes, mut base_segments, mut dead_journal_bytes, mut base_journal_bytes) =
            (0, 0, 0, 0);
        for segment in &usage {
            base_journal_bytes += segment.live_bytes;
            if segment.base {
                base_segments += 1;
                dead_journal_bytes += segment.bytes.saturating_sub(segment.live_bytes);
            } else {
                history_bytes += segment.bytes;
            }
        }
        let counters = &self.counters;
        VolumeStats {
            head_seq: self.head_seq(),
            durable_seq: self.durable_seq(),
            journal_bytes: self.journal.bytes(),
            segments: self.journal.segment_count() as u64,
            index_bytes,
            snapshots,
            flushes: self.flushes.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            first_seq,
            base_seq,
            base_bytes,
            base_journal_bytes,
            history_bytes,
            base_segments,
            dead_journal_bytes,
            journal_budget_bytes: self.retention_policy().budget_bytes(self.size()),
            dead_allowance_bytes: self.dead_allowance.load(Ordering::Relaxed),
            folds: counters.folds.load(Ordering::Relaxed),
            folded_records: counters.folded_records.load(Ordering::Relaxed),
            folded_bytes: counters.folded_bytes.load(Ordering::Relaxed),
            fold_copied_bytes: counters.fold_copied_bytes.load(Ordering::Relaxed),
            cleaned_segments: counters.cleaned_segments.load(Ordering::Relaxed),
            cleaned_bytes: counters.cleaned_bytes.load(Ordering::Relaxed),
            reclaimed_segments: counters.reclaimed_segments.load(Ordering::Relaxed),
            reclaimed_bytes: counters.reclaimed_bytes.load(Ordering::Relaxed),
            recycled_segments: self.journal.recycled_count(),
            spares_made: self.journal.made_count(),
            spare_segments: self.journal.spare_count() as u64,
            retention_blocked_at: self.retention.lock().blocked_at,
            fold_failures: counters.failures.load(Ordering::Relaxed),
            clean_failures: counters.clean_failures.load(Ordering::Relaxed),
            write_stalls: counters.stalls.load(Ordering::Relaxed),
            no_space_refusals: counters.no_space.load(Ordering::Relaxed),
            damaged_records: counters.damaged_records.load(Ordering::Relaxed),
        }
    }

    /// Approximate bytes of memory held by the index.
    pub fn index_memory_bytes(&self) -> usize {
        self.index.read().memory_bytes()
    }
}

/// Retention: moving the oldest retained point forward by folding the
/// records before it into the base image (docs/journal.md, "Retention").
impl Volume {
    /// The retention policy in force: the volume's own, else the store's.
    pub fn retention_policy(&self) -> RetentionPolicy {
        self.retention.lock().policy.unwrap_or(self.tuning.retention)
    }

    /// Gives this volume its own policy (`None`: the store's again). Kept
    /// in memory only: apply it again after each open.
    pub fn set_retention_policy(&self, policy: Option<RetentionPolicy>) {
        self.retention.lock().policy = policy;
        self.apply_policy(&self.retention_policy());
    }

    /// Derives the segment size and the write path's budget from `policy`.
    fn apply_policy(&self, policy: &RetentionPolicy) {
        let size = self.size();
        self.journal.set_segment_bytes(policy.segment_bytes(size, self.tuning.segment_bytes));
        self.budget.store(policy.budget_bytes(size).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.dead_allowance.store(dead_allowance(policy, size, &self.journal), Ordering::Relaxed);
    }

    /// Every journal segment, oldest first: its bytes, the base data in it,
    /// and whether it is a base segment (docs/journal.md, "Where the base
    /// image lives").
    pub fn segment_usage(&self) -> Vec<SegmentUsage> {
        let segments = self.journal.segment_infos();
        let index = self.index.read();
        let base_seq = index.base_seq();
        // The start segment: the last one starting at or before base + 1.
        let start = segments.iter().rposition(|segment| segment.first_seq <= base_seq + 1).unwrap_or(0);
        segments
            .iter()
            .enumerate()
            .map(|(i, segment)| SegmentUsage {
                number: segment.number,
                first_seq: segment.first_seq,
                bytes: segment.bytes,
                live_bytes: index.base_map().live_bytes(segment.number),
                base: i < start,
            })
            .collect()
    }

    /// Protects the image at `seq` from retention (a clone's base) until
    /// [`Self::unpin`]. Fails if the point is no longer (or not yet) there.
    pub(crate) fn pin(&self, seq: u64) -> Result<(), PointError> {
        let mut state = self.retention.lock();
        if seq < self.floor.load(Ordering::Acquire) || seq > self.head_seq() {
            drop(state);
            return Err(self.outside(format!("#{seq}")));
        }
        *state.pins.entry(seq).or_default() += 1;
        Ok(())
    }

    /// Drops one pin of `seq`.
    pub(crate) fn unpin(&self, seq: u64) {
        let mut state = self.retention.lock();
        if let Some(count) = state.pins.get_mut(&seq) {
            *count -= 1;
            if *count == 0 {
                state.pins.remove(&seq);
            }
        }
    }

    /// Whether the journal holds more than its budget (lock-free: the
    /// write path asks when a segment fills).
    pub(crate) fn over_budget(&self) -> bool {
        self.unfolded_bytes() > self.budget.load(Ordering::Relaxed)
    }

    /// Applies the retention policy once, as of `now` (unix nanoseconds):
    /// if history older than the window, or history past the budget, can
    /// be folded without passing a protected point, folds it into the base
    /// image (copying nothing); reclaims the segments nothing points into
    /// any more; and while the base segments' dead bytes exceed the dead
    /// allowance, cleans the base segment with the best cost-benefit ratio
    /// (copies its live base data into the base file, then reclaims it).
    /// The store's retention thread calls it; tests call it directly. Runs
    /// one pass at a time.
    ///
    /// Never changes the image of a retained point. Points before the new
    /// first seq become outside the history. When a protected point keeps
    /// the journal over its budget, the volume keeps serving, and a warning
    /// is logged (and `blocked_at` reported).
    pub fn enforce_retention(&self, now: i64) -> Result<FoldReport, RetentionError> {
        let _fold = self.fold_lock.lock();
        let first = self.index.read().first_seq();
        let mut report =
            FoldReport { first_seq_before: first, first_seq_after: first, ..FoldReport::default() };
        if self.deleted.load(Ordering::Acquire) {
            return Ok(report);
        }
        let policy = self.retention_policy();
        self.apply_policy(&policy);
        let segments = self.journal.segment_infos();
        // The budget bounds the history segments; base segments are the
        // cleaner's (docs/journal.md, "Policy").
        let history: Vec<SegmentInfo> = {
            let usage = self.segment_usage();
            usage
                .iter()
                .filter(|segment| !segment.base)
                .map(|segment| SegmentInfo {
                    number: segment.number,
                    first_seq: segment.first_seq,
                    bytes: segment.bytes,
                })
                .collect()
        };
        let budget = policy.budget_bytes(self.size());
        let next_seq = self.journal.writer.lock().last_seq() + 1;
        let needed_by_budget = budget.and_then(|limit| budget_seq(&history, next_seq, limit));
        if needed_by_budget.is_some_and(|needed| needed > self.durable_seq()) && self.poison().is_none() {
            // Only durable records are folded: over budget, do not wait for
            // a client's (or the commit thread's) flush.
            let _ = self.flush();
        }
        let durable = self.durable_seq();
        // Lock order: retention state, then the index.
        let pinned = self.retention.lock().pins.keys().next().copied().unwrap_or(u64::MAX);
        let (target, protected, base_seq) = {
            let index = self.index.read();
            let by_window = policy.window.map_or(index.base_seq(), |window| {
                let start = now.saturating_sub(i64::try_from(window.as_nanos()).unwrap_or(i64::MAX));
                if start < index.time(index.first_seq()) {
                    index.base_seq()
                } else {
                    index.resolve_time(start)
                }
            });
            let wanted = by_window.max(needed_by_budget.unwrap_or(0)).min(durable);
            // The furthest segment boundary no protected point forbids
            // (a rollback after a lower boundary may forbid it even when a
            // higher one is fine: check each); always finish a fold begun.
            let allowed = |seq: u64| seq <= pinned && index.fold_limit(seq, durable) == seq;
            let boundary = segments
                .iter()
                .skip(1)
                .rev()
                .map(|segment| segment.first_seq)
                .filter(|&first| first <= wanted)
                .find(|&first| allowed(first));
            let target = boundary.unwrap_or(0).max(index.first_seq());
            let protected = needed_by_budget
                .map(|needed| needed.min(durable))
                .map(|needed| index.fold_limit(needed, durable).min(pinned).min(needed));
            (target, protected, index.base_seq())
        };
        let blocked =
            needed_by_budget.zip(protected).filter(|&(needed, protected)| protected < needed.min(durable));
        let blocked = blocked.map(|(_, protected)| protected);
        self.note_blocked(blocked, budget, now);
        report.blocked_at = blocked;
        let mut result = if target > base_seq { self.fold_to(target, &mut report) } else { Ok(()) };
        if out_of_space(&result) && self.journal.release_reserve() {
            // The fold's map replacement needs a copy of the map: the
            // cleaner's reserve is for that too.
            result = self.fold_to(target, &mut report);
        }
        // What the fold (or an earlier pass that failed after its commit)
        // left dead goes first: it costs nothing. Then clean, unless the
        // fold failed (the pass is redone from the start next time).
        let folded = result.and_then(|()| self.reclaim(&mut report));
        if let Err(error) = &folded {
            self.counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(volume = %self.name, target, %error, "fold failed; the next retention pass redoes it");
        }
        let cleaned = match folded.is_ok().then(|| self.clean(&mut report, false)) {
            // Out of space: free the cleaner's reserve and clean the segment
            // with the fewest live bytes, which needs the least.
            Some(result) if out_of_space(&result) && self.journal.release_reserve() => {
                self.clean(&mut report, true)
            }
            result => result.unwrap_or(Ok(())),
        };
        if let Err(error) = &cleaned {
            self.counters.clean_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(volume = %self.name, %error, "cleaning failed; the next retention pass tries again");
        }
        let result = folded.and(cleaned);
        // Stalled writers wait only while passes make progress: not when a
        // protected point blocks, a pass failed, or nothing was foldable
        // or cleanable (say, the budget is smaller than one segment).
        let stuck = report.folded_records == 0
            && report.reclaimed_segments == 0
            && report.cleaned_segments == 0
            && target <= base_seq;
        self.cannot_fold.store(blocked.is_some() || result.is_err() || stuck, Ordering::Relaxed);
        {
            let _folded = self.folded.0.lock();
            self.folded.1.notify_all();
        }
        result?;
        // Drop the folded entries from the index checkpoint once they
        // outweigh the live ones.
        let mut checkpoint = self.checkpoint.lock();
        checkpoint.mark = *self.durable_mark.lock();
        let base_seq = self.index.read().base_seq();
        if checkpoint.wants_rewrite(base_seq)
            && let Err(error) = self.rewrite_checkpoint(&mut checkpoint, base_seq)
        {
            tracing::warn!(volume = %self.name, %error, "index checkpoint rewrite failed; recovery will replay more");
        }
        report.first_seq_after = self.index.read().first_seq();
        Ok(report)
    }

    fn note_blocked(&self, blocked: Option<u64>, budget: Option<u64>, now: i64) {
        let mut state = self.retention.lock();
        state.blocked_at = blocked;
        let Some(seq) = blocked else {
            state.warned = None;
            return;
        };
        if state.warned.is_some_and(|(warned, at)| {
            warned == seq && now.saturating_sub(at) < BLOCKED_WARNING_INTERVAL_NANOS
        }) {
            return;
        }
        state.warned = Some((seq, now));
        let index = self.index.read();
        let (reason, until) = if index.snapshots().values().any(|&snapshot| snapshot == seq) {
            ("a named snapshot", "until the snapshot is deleted")
        } else if state.views.contains_key(&seq) {
            ("an open point (an NBD connection to it)", "until it is closed")
        } else if state.pins.contains_key(&seq) {
            ("a clone's base", "until the clone is deleted")
        } else {
            (
                "the target of a rollback still in the history",
                "until newer writes push the rollback out of it",
            )
        };
        tracing::warn!(
            volume = %self.name,
            protected_seq = seq,
            reason,
            journal_bytes = self.journal.bytes(),
            budget_bytes = budget.unwrap_or(0),
            "journal is over its budget but protected point #{seq} ({reason}) cannot be folded: \
             the journal keeps growing {until} (the volume keeps serving)"
        );
    }

    /// Folds every record at or before `target` into the base image,
    /// without copying: the base map points at the newest version ≤
    /// `target` of every range where it is. Steps (docs/journal.md, "The
    /// fold", has each crash case):
    /// 1. refuse new uses of points before `target`, make the fold intent
    ///    durable, then retire those points (readers of them now fail);
    /// 2. plan the new base map over every range the folded records
    ///    touched (journal runs, zeros, holes), punching the base file where
    ///    its data moves out;
    /// 3. commit: replace `base-map` (base seq = `target`) durably;
    /// 4. drop the folded records from the index and swap in the new map.
    ///
    /// The caller then reclaims the segments the new map does not need.
    fn fold_to(&self, target: u64, report: &mut FoldReport) -> Result<(), RetentionError> {
        let (base_seq, first_seq) = {
            let index = self.index.read();
            (index.base_seq(), index.first_seq())
        };
        // 1. Retire the points before the target.
        let mut target = target;
        if target > first_seq {
            let state = self.retention.lock();
            let _writer = self.journal.writer.lock();
            let index = self.index.read();
            let pinned = state.pins.keys().next().copied().unwrap_or(u64::MAX);
            if index.fold_limit(target, self.durable_seq()) < target || pinned < target {
                // A protected point appeared since the decision: only
                // finish the fold already begun, if any.
                target = first_seq;
            } else {
                self.floor.fetch_max(target, Ordering::AcqRel);
            }
        }
        if target <= base_seq {
            return Ok(());
        }
        if self.intent_written.load(Ordering::Acquire) < target {
            let intent = FoldIntent { volume_id: self.id, target }.encode();
            if let Err(error) = replace_file(self.fs.as_ref(), &self.dir, FOLD_FILE, &intent) {
                // The intent may have reached the disk (a crash would then
                // retire these points): retire them now too, but change
                // nothing else until an intent is known durable.
                self.retire_before(target);
                return Err(RetentionError::Io(error));
            }
            self.intent_written.store(target, Ordering::Release);
        }
        self.retire_before(target);

        // 2. Plan the new map.
        let base_file = self.base_file.get().cloned();
        let mut map = self.index.read().base_map().clone();
        let mut folded_bytes = 0;
        let mut pieces = Vec::new();
        let mut under = Vec::new();
        // Base file work of one planning step, done without the index lock.
        let mut punches = Vec::new();
        let mut copies = Vec::new();
        let mut copied_in_place = 0;
        // The ranges the folded records touched, a batch of records at a
        // time (bounded memory; a range touched in two batches is planned
        // twice, with the same result).
        let mut from = base_seq;
        while from < target {
            let to = target.min(from + FOLD_BATCH_RECORDS);
            let extents = self.index.read().fold_extents(from, to);
            for &(start, end) in &extents {
                let mut at = start;
                while at < end {
                    let step_end = end.min(at.saturating_add(FOLD_PLAN_BYTES));
                    pieces.clear();
                    punches.clear();
                    {
                        let index = self.index.read();
                        index.plan(target, at, step_end, &mut pieces);
                        // The base file span to punch, grown over
                        // consecutive replaced ranges (one fallocate, and
                        // one discard on a `discard` mount, instead of one
                        // per fragment).
                        let mut span: Option<(u64, u64)> = None;
                        for piece in &pieces {
                            let (piece_start, piece_end) = (piece.offset, piece.offset + piece.length);
                            let location = match piece.source {
                                Source::Data { location } => Some(location),
                                Source::Zero { hole } => {
                                    let kind = if hole { BaseKind::Hole } else { BaseKind::Zero };
                                    map.set(piece_start, piece_end, kind);
                                    None
                                }
                                // Unchanged since the base: its base file
                                // data stays, so a span cannot cross it.
                                Source::BaseFile | Source::Base => {
                                    punches.extend(span.take());
                                    continue;
                                }
                            };
                            // What the base had there. The index's map is
                            // the committed one: only folds and cleans
                            // change it, one at a time (the fold lock).
                            under.clear();
                            if base_file.is_some() {
                                index.base_map().plan(piece_start, piece_end, &mut under);
                            } else {
                                under.push(Piece { source: Source::Base, ..*piece });
                            }
                            for old in &under {
                                let (old_start, old_end) = (old.offset, old.offset + old.length);
                                let in_file = old.source == Source::BaseFile;
                                if let Some(location) = location {
                                    let at = location + (old_start - piece_start);
                                    folded_bytes += old.length;
                                    if in_file && piece.length < FOLD_IN_PLACE_MAX {
                                        // Small data over base file data:
                                        // write it there (the map keeps
                                        // saying data) rather than punch
                                        // a fragment now and copy it back
                                        // when cleaning its segment.
                                        copies.push((at, old_start, old.length));
                                        punches.extend(span.take());
                                        continue;
                                    }
                                    map.set_journal(old_start, old_end, at);
                                }
                                // Base file data this range replaces is dead
                                // from the commit on: free its space (the
                                // space bound). Base file bytes the old map
                                // does not point at (journal runs, zeros,
                                // holes) are dead already, so a span may
                                // cover them between pieces of file data.
                                if in_file {
                                    match &mut span {
                                        Some((_, span_end)) => *span_end = old_end,
                                        None => span = Some((old_start, old_end)),
                                    }
                                }
                            }
                        }
                        punches.extend(span.take());
                    }
                    if let Some(file) = &base_file {
                        for &(start, end) in &punches {
                            file.punch_hole(start, end - start)?;
                        }
                        for (location, offset, length) in copies.drain(..) {
                            let (number, position) = layout::split_location(location);
                            file.copy_from(self.journal.segment(number)?.as_ref(), position, length, offset)?;
                            copied_in_place += length;
                        }
                    }
                    at = step_end;
                }
            }
            from = to;
        }
        // Data written into the base file in place must be durable before
        // the map that relies on it.
        if copied_in_place > 0
            && let Some(file) = &base_file
        {
            file.sync()?;
        }

        // 3. Commit. A snapshot can pin the base only if it is the base's
        // own record (protection keeps every other one after it); whether a
        // later record deletes it is for the replay to say.
        let snapshots = match self.index.read().record_summary(target).0 {
            RecordKind::Snapshot => {
                let record = self.read_record(target).map_err(|error| match error {
                    ReadError::Io(error) => error,
                    error => std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string()),
                })?;
                vec![String::from_utf8_lossy(&record.payload).into_owned()]
            }
            _ => Vec::new(),
        };
        let committed = {
            let index = self.index.read();
            BaseMapFile {
                volume_id: self.id,
                seq: target,
                time: index.time(target),
                size: index.size_at(target),
                map,
                snapshots,
            }
        };
        replace_file(self.fs.as_ref(), &self.dir, BASE_MAP_FILE, &committed.encode())?;

        // 4. In memory. Readers that planned with the folded records (or
        // the old map) finish before they go.
        {
            let _gate = self.gate.write();
            let mut index = self.index.write();
            index.fold(target, committed.map, committed.snapshots);
            self.base_journal_bytes.store(index.base_map().journal_bytes(), Ordering::Relaxed);
        }
        self.journal.set_keep_reserve(self.base_journal_bytes.load(Ordering::Relaxed) > 0);
        let keys = self.index.read().prune_keys();
        for batch in keys.chunks(PRUNE_BATCH) {
            self.index.write().prune(batch);
        }
        let records = target - base_seq;
        report.folded_records += records;
        report.folded_bytes += folded_bytes;
        report.fold_copied_bytes += copied_in_place;
        let counters = &self.counters;
        counters.folds.fetch_add(1, Ordering::Relaxed);
        counters.folded_records.fetch_add(records, Ordering::Relaxed);
        counters.folded_bytes.fetch_add(folded_bytes, Ordering::Relaxed);
        counters.fold_copied_bytes.fetch_add(copied_in_place, Ordering::Relaxed);
        tracing::debug!(volume = %self.name, base_seq = target, records, folded_bytes, copied_in_place, "folded");
        Ok(())
    }

    /// Reclaims every segment whose records are all folded and that the
    /// (committed) base map does not point into.
    fn reclaim(&self, report: &mut FoldReport) -> Result<(), RetentionError> {
        let (base_seq, live) = {
            let index = self.index.read();
            (index.base_seq(), index.base_map().live_segments().clone())
        };
        let reclaimed = self.journal.reclaim(base_seq, &live)?;
        report.reclaimed_segments += reclaimed.segments;
        report.reclaimed_bytes += reclaimed.bytes;
        self.counters.reclaimed_segments.fetch_add(reclaimed.segments, Ordering::Relaxed);
        self.counters.reclaimed_bytes.fetch_add(reclaimed.bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Cleans base segments while their dead bytes exceed the allowance,
    /// the best cost-benefit ratio first (docs/journal.md, "Cleaning"): as
    /// few as bring the dead bytes back under it, at most
    /// [`CLEAN_SEGMENTS_PER_PASS`], in one batch (one sync, one map
    /// commit); `short_of_space`: only the one with the fewest live bytes.
    /// Not while a fold is pending: its punches and plan must not
    /// interleave with a clean's copies.
    fn clean(&self, report: &mut FoldReport, short_of_space: bool) -> Result<(), RetentionError> {
        let (base_seq, pending) = {
            let index = self.index.read();
            (index.base_seq(), index.first_seq() > index.base_seq())
        };
        if pending {
            return Ok(());
        }
        let usage = self.segment_usage();
        // Segments with damaged base data are kept as they are: their
        // dead bytes are not cleaning's to free.
        let damaged = self.damaged_segments.lock().clone();
        let mut dead: u64 = usage
            .iter()
            .filter(|segment| segment.base && !damaged.contains(&segment.number))
            .map(|segment| segment.bytes.saturating_sub(segment.live_bytes))
            .sum();
        let allowance = self.dead_allowance.load(Ordering::Relaxed);
        if dead <= allowance {
            return Ok(());
        }
        // LFS's cost-benefit: free space gained (1 - u) times its age, per
        // byte read and written (1 + u). A base segment's last record is
        // just before its successor's first.
        let mut candidates: Vec<(f64, SegmentUsage)> = usage
            .windows(2)
            .filter(|pair| {
                pair[0].base
                    && pair[0].live_bytes > 0
                    && pair[0].bytes > 0
                    && !damaged.contains(&pair[0].number)
            })
            .map(|pair| {
                let segment = pair[0];
                let live = segment.live_bytes.min(segment.bytes) as f64 / segment.bytes as f64;
                let age = (base_seq + 2).saturating_sub(pair[1].first_seq) as f64;
                ((1.0 - live) * age / (1.0 + live), segment)
            })
            .collect();
        candidates.sort_by(|a, b| b.0.total_cmp(&a.0));
        if short_of_space {
            // One segment, the one that needs the least space to clean.
            let fewest =
                candidates.iter().map(|(_, segment)| *segment).min_by_key(|segment| segment.live_bytes);
            return self
                .clean_segments(&fewest.map(|segment| vec![segment.number]).unwrap_or_default(), report);
        }
        let mut chosen = Vec::new();
        for (_, segment) in candidates {
            if dead <= allowance || chosen.len() == CLEAN_SEGMENTS_PER_PASS {
                break;
            }
            dead -= segment.bytes.saturating_sub(segment.live_bytes);
            chosen.push(segment.number);
        }
        self.clean_segments(&chosen, report)
    }

    /// Copies the live base data of these segments into the base file,
    /// commits the map that says so, and reclaims the segments. Crash cases
    /// in docs/journal.md ("Cleaning").
    fn clean_segments(&self, numbers: &[u64], report: &mut FoldReport) -> Result<(), RetentionError> {
        let mut runs: Vec<BaseRun> = {
            let index = self.index.read();
            numbers.iter().flat_map(|&number| index.base_map().journal_runs(number)).collect()
        };
        if runs.is_empty() {
            return Ok(());
        }
        // 1. Copy, in journal order (sequential reads), and sync. No map
        // points at these base file ranges yet, so no reader reads them.
        // Each record a run points into is read whole and its crc32c
        // checked first: a record damaged since its sync is not copied
        // into the base file, where nothing would check it again.
        let base_file = self.open_base_file()?;
        runs.sort_unstable_by_key(|run| run.location);
        let mut copied = 0;
        let mut written = Vec::with_capacity(runs.len());
        let mut damaged = Vec::new();
        let mut damaged_records = 0;
        let mut failure = None;
        for segment_runs in runs.chunk_by(|a, b| a.segment() == b.segment()) {
            let number = layout::split_location(segment_runs[0].location).0;
            let result = self.check_base_runs(segment_runs, |header, payload_at, covered, payload| {
                let Some(payload) = payload else {
                    // The first few by name; the count follows below.
                    if damaged_records < DAMAGE_LOGGED {
                        tracing::error!(
                            volume = %self.name,
                            seq = header.seq,
                            segment = number,
                            offset = header.offset,
                            "damaged base data: a folded record's checksum no longer matches; it stays in its \
                             journal segment, uncleaned"
                        );
                    }
                    damaged_records += 1;
                    damaged.extend_from_slice(covered);
                    return Ok(());
                };
                for &run in covered {
                    let from = (run.location - payload_at) as usize;
                    let bytes = &payload[from..from + (run.end - run.start) as usize];
                    // Listed first: a failed write is punched out too.
                    written.push(run);
                    base_file.write_at(bytes, run.start)?;
                    copied += run.end - run.start;
                }
                Ok(())
            });
            match result {
                Ok(unreached) if unreached.is_empty() => {}
                Ok(mut unreached) => {
                    tracing::error!(
                        volume = %self.name,
                        segment = number,
                        runs = unreached.len(),
                        "damaged base data: runs of base data lie in no readable record of their journal \
                         segment; they stay there, uncleaned"
                    );
                    damaged_records += 1;
                    damaged.append(&mut unreached);
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        if let Some(error) = failure {
            // Give back the space of the copies no map points at (on a
            // full disk the retry needs it).
            for run in &written {
                let _ = base_file.punch_hole(run.start, run.end - run.start);
            }
            return Err(error.into());
        }
        let mut cleaned = numbers.len() as u64;
        if !damaged.is_empty() {
            let mut segments = self.damaged_segments.lock();
            let before = segments.len();
            segments.extend(damaged.iter().filter_map(BaseRun::segment));
            cleaned -= numbers.iter().filter(|number| segments.contains(number)).count() as u64;
            tracing::error!(
                volume = %self.name,
                records = damaged_records,
                new_segments = segments.len() - before,
                kept = ?segments,
                "cleaning found damaged base data and left it in place (those ranges read back as \
                 damaged until rewritten or restored from a replica); its segments are kept and no \
                 longer cleaned"
            );
            drop(segments);
            self.counters.damaged_records.fetch_add(damaged_records, Ordering::Relaxed);
        }
        let runs = written;
        if runs.is_empty() {
            return Ok(());
        }
        base_file.sync()?;
        // 2. Commit: the same base, those runs now in the base file.
        let committed = {
            let index = self.index.read();
            let mut map = index.base_map().clone();
            for run in &runs {
                map.set(run.start, run.end, BaseKind::Data);
            }
            BaseMapFile {
                volume_id: self.id,
                seq: index.base_seq(),
                time: index.time(index.base_seq()),
                size: index.base_size(),
                map,
                snapshots: index.base_snapshots().to_vec(),
            }
        };
        replace_file(self.fs.as_ref(), &self.dir, BASE_MAP_FILE, &committed.encode())?;
        // 3. Swap: reads planned into the segments finish first.
        {
            let _gate = self.gate.write();
            let mut index = self.index.write();
            index.set_base_map(committed.map);
            self.base_journal_bytes.store(index.base_map().journal_bytes(), Ordering::Relaxed);
        }
        self.journal.set_keep_reserve(self.base_journal_bytes.load(Ordering::Relaxed) > 0);
        let segments = cleaned;
        report.cleaned_segments += segments;
        report.cleaned_bytes += copied;
        self.counters.cleaned_segments.fetch_add(segments, Ordering::Relaxed);
        self.counters.cleaned_bytes.fetch_add(copied, Ordering::Relaxed);
        tracing::debug!(volume = %self.name, segments, copied, "cleaned");
        // 4. Reclaim.
        self.reclaim(report)
    }

    /// Walks the records that `runs` (journal runs into one segment,
    /// sorted by location) point into, each read whole and its crc32c
    /// checked: `each` gets the record's header, its payload's journal
    /// location, the runs within its payload, and the payload, or `None`
    /// when its checksum does not match. Returns the runs that lie in no
    /// record the walk could read (a damaged header stops it).
    fn check_base_runs(
        &self,
        runs: &[BaseRun],
        mut each: impl FnMut(&RecordHeader, u64, &[BaseRun], Option<&[u8]>) -> std::io::Result<()>,
    ) -> std::io::Result<Vec<BaseRun>> {
        let Some(number) = runs.first().and_then(BaseRun::segment) else {
            return Ok(Vec::new());
        };
        let wanted: Vec<(u64, u64)> =
            runs.iter().map(|run| (run.location, run.location + (run.end - run.start))).collect();
        let mut next = 0;
        let mut unreached = Vec::new();
        self.journal.check_records(number, &wanted, |header, payload_at, payload| {
            // Runs before this record's payload lie in no record found.
            while next < runs.len() && runs[next].location < payload_at {
                unreached.push(runs[next]);
                next += 1;
            }
            let first = next;
            let payload_end = payload_at + u64::from(header.payload_length);
            while next < runs.len() && runs[next].location < payload_end {
                if runs[next].location + (runs[next].end - runs[next].start) > payload_end {
                    // Past the payload's end: no record of ours holds it.
                    break;
                }
                next += 1;
            }
            each(header, payload_at, &runs[first..next], payload)
        })?;
        unreached.extend_from_slice(&runs[next..]);
        Ok(unreached)
    }

    /// The base file, created on first use (its directory entry becomes
    /// durable with the base map that first names data in it).
    fn open_base_file(&self) -> std::io::Result<Arc<dyn StorageBackend>> {
        if let Some(file) = self.base_file.get() {
            return Ok(file.clone());
        }
        let file = self.fs.open_file(&format!("{}/{BASE_FILE}", self.dir), true)?;
        Ok(self.base_file.get_or_init(|| file).clone())
    }

    /// Makes every point before `target` outside the history; readers of
    /// them that already planned finish first.
    fn retire_before(&self, target: u64) {
        self.floor.fetch_max(target, Ordering::AcqRel);
        let _gate = self.gate.write();
        self.index.write().set_first_seq(target);
    }
}

/// Journal bytes lent out for sending straight from their file
/// ([`Volume::lend_head`]). Holding it keeps the file open; its bytes at
/// `position` never change (a lent segment file is never reused).
#[derive(Debug, Clone)]
pub struct Lent {
    /// The segment file.
    pub file: Arc<dyn StorageBackend>,
    /// Its descriptor, open for as long as `file` lives.
    pub fd: RawFd,
    /// Where the bytes start in the file.
    pub position: u64,
    /// How many bytes.
    pub length: u64,
}

impl std::os::fd::AsRawFd for Lent {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// A read-only image of a volume at one seq. Retention does not fold past
/// it while it (or a clone of it) lives.
#[derive(Debug, Clone)]
pub struct PointView {
    volume: Arc<Volume>,
    seq: u64,
    size: u64,
    time: i64,
    _pin: Arc<ViewPin>,
}

/// The pin of a point view's seq; dropped with the last clone of the view.
#[derive(Debug)]
struct ViewPin {
    volume: Arc<Volume>,
    seq: u64,
}

impl Drop for ViewPin {
    fn drop(&mut self) {
        let mut state = self.volume.retention.lock();
        if let Some(count) = state.views.get_mut(&self.seq) {
            *count -= 1;
            if *count == 0 {
                state.views.remove(&self.seq);
            }
        }
        drop(state);
        self.volume.unpin(self.seq);
    }
}

impl PointView {
    /// [`Volume::in_memory`] of its volume.
    pub fn in_memory(&self) -> bool {
        self.volume.in_memory()
    }

    /// Size of the image at this point.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The point's seq.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The point's time, unix nanoseconds.
    pub fn time(&self) -> i64 {
        self.time
    }

    /// The volume this is a point of.
    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// [`Volume::lend_head`] for the image at this point.
    pub fn lend(
        &self,
        offset: u64,
        length: u64,
        max_pieces: usize,
        accept: impl FnMut(RawFd, u64, u64) -> bool,
    ) -> Option<Vec<Lent>> {
        self.volume.lend_image(self.seq, self.size, offset, length, max_pieces, accept)
    }

    /// Reads the image at this point.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.volume.read_image(self.seq, self.size, offset, buf, None)
    }

    /// Reads like [`Self::read`] and returns the ranges of `buf` served as
    /// zeros without IO ([`Volume::read_sparse`]).
    pub fn read_sparse(&self, offset: u64, buf: &mut [u8]) -> Result<Vec<(usize, usize)>, ReadError> {
        let mut zeros = Vec::new();
        self.volume.read_image(self.seq, self.size, offset, buf, Some(&mut zeros))?;
        Ok(zeros)
    }

    /// Allocation status of the image at this point.
    pub fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, ReadError> {
        self.volume.image_extents(self.seq, self.size, offset, length)
    }
}
