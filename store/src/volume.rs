//! A journaled volume: its head (read-write) and its points (read-only).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use parking_lot::{Condvar, Mutex, MutexGuard, RwLock};

use crate::clock::Clock;
use crate::error::{
    FlushError, History, PointError, Poison, ReadError, ResizeError, RollbackError, SnapshotError,
    VerifyError, WriteError,
};
use crate::index::{Index, MAX_VOLUME_SIZE, NewRecord, Piece, Source};
use crate::journal::{Checkpoint, DurableMark, Journal, Writer};
use crate::layout::{FLAG_BLAKE3, MAX_RECORD_PAYLOAD, MAX_SNAPSHOT_NAME, RecordHeader, RecordKind};

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
    /// Seqs whose record failed its crc32c or blake3.
    pub corrupt: Vec<u64>,
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
}

/// Volume-level tunables, from the store's options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VolumeTuning {
    pub checkpoint_records: u64,
}

/// A journaled volume. Share it as `Arc<Volume>`; every method is
/// thread-safe and short (no lock is held across a sync except the
/// group-commit lock that only flushers take).
#[derive(Debug)]
pub struct Volume {
    name: String,
    id: u128,
    dir: String,
    parent: Option<(Arc<Volume>, u64)>,
    clock: Arc<dyn Clock>,
    journal: Journal,
    index: RwLock<Index>,
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
    tuning: VolumeTuning,
    recovery: RecoveryStats,
    flushes: AtomicU64,
    syncs: AtomicU64,
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
    fn head(&self) -> u64 {
        self.volume.head.load(Ordering::Acquire)
    }

    fn append(
        &mut self,
        kind: RecordKind,
        offset: u64,
        length: u64,
        payload: &[u8],
        name: Option<&str>,
    ) -> Result<u64, WriteError> {
        let mut header = RecordHeader::new(kind, offset, length);
        self.volume.journal.seal_payload(&mut header, payload);
        self.append_sealed(header, payload, name)
    }

    /// Appends a record whose payload crc (and blake3) the caller computed
    /// before taking the lock.
    fn append_sealed(
        &mut self,
        mut header: RecordHeader,
        payload: &[u8],
        name: Option<&str>,
    ) -> Result<u64, WriteError> {
        let volume = self.volume;
        let (kind, offset, length) = (header.kind, header.offset, header.length);
        let seq = self.head() + 1;
        let time = volume.clock.now_nanos().max(volume.last_time.load(Ordering::Relaxed));
        header.seq = seq;
        header.time = time;
        let location = match volume.journal.append(&mut self.writer, &mut header, payload) {
            Ok(location) => location,
            Err(error) => {
                volume.set_poison(&error);
                return Err(WriteError::Io(error));
            }
        };
        volume.last_time.store(time, Ordering::Relaxed);
        volume.index.write().insert(
            &NewRecord { kind, offset, length, location, payload_length: payload.len() as u32, time },
            name,
        );
        volume.head.store(seq, Ordering::Release);
        Ok(seq)
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
        journal: Journal,
        index: Index,
        checkpoint: Checkpoint,
        tuning: VolumeTuning,
        recovery: RecoveryStats,
    ) -> Self {
        let head = index.head();
        let size = index.size_at(head);
        // The index keeps milliseconds; the last record's exact time may be
        // anywhere in that millisecond, and record times never go back.
        let last_time = if head == 0 { index.created() } else { index.time(head) + 999_999 };
        Self {
            name,
            id,
            dir,
            parent,
            clock,
            journal,
            index: RwLock::new(index),
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
        self.parent.as_ref().map(|(parent, seq)| (parent.name.clone(), *seq))
    }

    pub(crate) fn parent(&self) -> Option<(Arc<Volume>, u64)> {
        self.parent.clone()
    }

    pub(crate) fn parent_id(&self) -> Option<u128> {
        self.parent.as_ref().map(|(parent, _)| parent.id)
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

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
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
            if data.is_empty() { appender.head() } else { appender.append_sealed(header, data, None)? }
        } else {
            let headers: Vec<RecordHeader> = data
                .chunks(MAX_RECORD_PAYLOAD)
                .enumerate()
                .map(|(i, part)| seal(offset + (i * MAX_RECORD_PAYLOAD) as u64, part))
                .collect();
            let mut appender = self.appender()?;
            self.check_range(offset, data.len() as u64)?;
            let mut seq = appender.head();
            for (header, part) in headers.into_iter().zip(data.chunks(MAX_RECORD_PAYLOAD)) {
                seq = appender.append_sealed(header, part, None)?;
            }
            seq
        };
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
        let seq =
            if length == 0 { appender.head() } else { appender.append(kind, offset, length, &[], None)? };
        drop(appender);
        if fua {
            self.flush()?;
        }
        Ok(seq)
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
            let seq = self.head_seq();
            match self.journal.prepare_sync(&mut writer) {
                Ok(ticket) => (ticket, seq),
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
        let mut checkpoint = self.checkpoint.lock();
        if seq > 0 {
            checkpoint.mark = Some(DurableMark { seq, ..ticket.mark });
        }
        if seq + 1 - checkpoint.next_seq >= self.tuning.checkpoint_records {
            let index = self.index.read();
            if let Err(error) = checkpoint.append(&index) {
                tracing::warn!(volume = %self.name, %error, "index checkpoint failed; recovery will replay more");
            }
        }
        Ok(())
    }

    /// Flushes, then checkpoints the whole index durably so that the next
    /// open replays nothing. Call on clean shutdown.
    pub fn close(&self) -> Result<(), FlushError> {
        self.flush()?;
        // Become the leader so no flush runs meanwhile.
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
        let index = self.index.read();
        let appended = checkpoint.append(&index).and_then(|()| checkpoint.sync());
        if let Err(error) = appended {
            tracing::warn!(volume = %self.name, %error, "index checkpoint failed; recovery will replay more");
        }
        Ok(())
    }

    /// Reads the head.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let seq = self.head_seq();
        let size = self.index.read().size_at(seq);
        self.read_image(seq, size, offset, buf)
    }

    /// Allocation status of the head, for NBD `base:allocation`.
    pub fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, ReadError> {
        let seq = self.head_seq();
        let size = self.index.read().size_at(seq);
        self.image_extents(seq, size, offset, length)
    }

    fn plan(&self, seq: u64, size: u64, offset: u64, length: u64) -> Result<Vec<Piece>, ReadError> {
        let end = offset.checked_add(length).filter(|&end| end <= size).ok_or(ReadError::OutOfBounds {
            offset,
            length,
            size,
        })?;
        // Reuse this thread's vectors: reads allocate nothing in the
        // common case (a clone's base read nests and takes fresh ones).
        let mut pieces = SCRATCH_PIECES.with(|cell| cell.take());
        pieces.clear();
        if length > 0 {
            SCRATCH_UNCOVERED.with(|cell| {
                let mut uncovered = cell.take();
                self.index.read().plan_with(seq, offset, end, &mut pieces, &mut uncovered);
                cell.replace(uncovered);
            });
        }
        Ok(pieces)
    }

    fn recycle(pieces: Vec<Piece>) {
        if pieces.capacity() <= 4096 {
            SCRATCH_PIECES.with(|cell| cell.replace(pieces));
        }
    }

    pub(crate) fn read_image(
        &self,
        seq: u64,
        size: u64,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ReadError> {
        let pieces = self.plan(seq, size, offset, buf.len() as u64)?;
        for &piece in &pieces {
            let at = (piece.offset - offset) as usize;
            let target = &mut buf[at..at + piece.length as usize];
            match piece.source {
                Source::Zero { .. } => target.fill(0),
                Source::Data { location } => self.journal.read(location, target).map_err(ReadError::Io)?,
                Source::Base => self.read_base(piece.offset, target)?,
            }
        }
        Self::recycle(pieces);
        Ok(())
    }

    fn read_base(&self, offset: u64, target: &mut [u8]) -> Result<(), ReadError> {
        let Some((parent, seq)) = &self.parent else {
            target.fill(0);
            return Ok(());
        };
        let parent_size = parent.index.read().size_at(*seq);
        let inside = parent_size.saturating_sub(offset).min(target.len() as u64) as usize;
        let (from_parent, beyond) = target.split_at_mut(inside);
        if !from_parent.is_empty() {
            parent.read_image(*seq, parent_size, offset, from_parent)?;
        }
        beyond.fill(0);
        Ok(())
    }

    pub(crate) fn image_extents(
        &self,
        seq: u64,
        size: u64,
        offset: u64,
        length: u64,
    ) -> Result<Vec<Extent>, ReadError> {
        let pieces = self.plan(seq, size, offset, length)?;
        let mut extents: Vec<Extent> = Vec::new();
        let mut push = |extent: Extent| match extents.last_mut() {
            Some(last) if last.hole == extent.hole && last.zero == extent.zero => {
                last.length += extent.length
            }
            _ => extents.push(extent),
        };
        for piece in pieces {
            match piece.source {
                Source::Data { .. } => push(Extent { length: piece.length, hole: false, zero: false }),
                Source::Zero { hole } => push(Extent { length: piece.length, hole, zero: true }),
                Source::Base => match &self.parent {
                    None => push(Extent { length: piece.length, hole: true, zero: true }),
                    Some((parent, parent_seq)) => {
                        let parent_size = parent.index.read().size_at(*parent_seq);
                        let inside = parent_size.saturating_sub(piece.offset).min(piece.length);
                        if inside > 0 {
                            for extent in
                                parent.image_extents(*parent_seq, parent_size, piece.offset, inside)?
                            {
                                push(extent);
                            }
                        }
                        if piece.length > inside {
                            push(Extent { length: piece.length - inside, hole: true, zero: true });
                        }
                    }
                },
            }
        }
        Ok(extents)
    }

    /// The retained history: every seq in `first_seq..=head_seq` is a point.
    pub fn history(&self) -> History {
        let index = self.index.read();
        let head = index.head();
        History { first_seq: 0, first_time: index.created(), head_seq: head, head_time: index.time(head) }
    }

    fn outside(&self, requested: String) -> PointError {
        PointError::OutsideHistory { requested, window: self.history() }
    }

    /// Opens the read-only image at `seq`. It stays valid, and unchanged,
    /// however the head moves.
    pub fn open_point(self: &Arc<Self>, seq: u64) -> Result<PointView, PointError> {
        let index = self.index.read();
        if seq > index.head() {
            drop(index);
            return Err(self.outside(format!("#{seq}")));
        }
        Ok(PointView { volume: self.clone(), seq, size: index.size_at(seq), time: index.time(seq) })
    }

    /// The last seq at or before `unix_nanos`. Times before the volume's
    /// creation or after now are outside the history. Resolution is one
    /// microsecond.
    pub fn resolve_time(&self, unix_nanos: i64) -> Result<u64, PointError> {
        let index = self.index.read();
        if unix_nanos < index.created() || unix_nanos > self.clock.now_nanos().max(index.time(index.head())) {
            drop(index);
            return Err(self.outside(format!("{unix_nanos} unix ns")));
        }
        Ok(index.resolve_time(unix_nanos))
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
        let seq = appender
            .append(RecordKind::Snapshot, 0, 0, name.as_bytes(), Some(name))
            .map_err(SnapshotError::Write)?;
        drop(appender);
        self.flush().map_err(|error| SnapshotError::Write(error.into()))?;
        Ok(Snapshot { name: name.to_owned(), seq, time: self.index.read().time(seq) })
    }

    /// Every snapshot, by name.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        let index = self.index.read();
        index
            .snapshots()
            .iter()
            .map(|(name, &seq)| Snapshot { name: name.clone(), seq, time: index.time(seq) })
            .collect()
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
        appender
            .append(RecordKind::SnapshotDelete, 0, 0, name.as_bytes(), Some(name))
            .map_err(SnapshotError::Write)?;
        drop(appender);
        self.flush().map_err(|error| SnapshotError::Write(error.into()))
    }

    /// Makes the head's image the image at `seq`, as a new seq; the
    /// abandoned branch stays readable at its seqs. Undo = roll back to
    /// `previous_head_seq`. Durable when it returns.
    pub fn rollback(&self, seq: u64) -> Result<RollbackOutcome, RollbackError> {
        let mut appender = self.appender().map_err(RollbackError::Write)?;
        let previous = appender.head();
        if seq > previous {
            drop(appender);
            return Err(RollbackError::Point(self.outside(format!("#{seq}"))));
        }
        let new_seq =
            appender.append(RecordKind::Rollback, seq, previous, &[], None).map_err(RollbackError::Write)?;
        self.size.store(self.index.read().size_at(new_seq), Ordering::Release);
        drop(appender);
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
        let seq =
            appender.append(RecordKind::Resize, new_size, old, &[], None).map_err(ResizeError::Write)?;
        self.size.store(new_size, Ordering::Release);
        drop(appender);
        self.flush().map_err(|error| ResizeError::Write(error.into()))?;
        Ok(seq)
    }

    /// Writes and bytes per `bucket_nanos` interval from `since_nanos` to the
    /// head's time (at most 100,000 buckets).
    pub fn timeline(&self, since_nanos: i64, bucket_nanos: i64) -> Vec<Bucket> {
        const MAX_BUCKETS: i128 = 100_000;
        // Any i64 input is valid: do the arithmetic in i128.
        let bucket = i128::from(bucket_nanos.max(1));
        let since = i128::from(since_nanos);
        let (head, end, first) = {
            let index = self.index.read();
            let head = index.head();
            let first =
                if since_nanos <= index.created() { 1 } else { index.resolve_time(since_nanos - 1) + 1 };
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
        let entry = {
            let index = self.index.read();
            if seq == 0 || seq > index.head() {
                return Err(ReadError::OutOfBounds { offset: seq, length: 1, size: index.head() + 1 });
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

    /// Reads back every record and checks its crc32c (and blake3 where
    /// stored). Corruption is reported, not fixed.
    pub fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let mut report = VerifyReport::default();
        for seq in 1..=self.head_seq() {
            match self.read_record(seq) {
                Ok(record) => {
                    report.records += 1;
                    report.bytes += record.payload.len() as u64;
                }
                Err(ReadError::Corrupt { .. }) => report.corrupt.push(seq),
                Err(ReadError::Io(error)) => return Err(VerifyError::Io(error)),
                Err(ReadError::OutOfBounds { .. }) => break,
            }
        }
        Ok(report)
    }

    /// Counters and sizes, for metrics.
    pub fn stats(&self) -> VolumeStats {
        let (index_bytes, snapshots) = {
            let index = self.index.read();
            (index.memory_bytes() as u64, index.snapshots().len() as u64)
        };
        VolumeStats {
            head_seq: self.head_seq(),
            durable_seq: self.durable_seq(),
            journal_bytes: self.journal.bytes(),
            segments: self.journal.segment_count() as u64,
            index_bytes,
            snapshots,
            flushes: self.flushes.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }

    /// Approximate bytes of memory held by the index.
    pub fn index_memory_bytes(&self) -> usize {
        self.index.read().memory_bytes()
    }
}

/// A read-only image of a volume at one seq.
#[derive(Debug, Clone)]
pub struct PointView {
    volume: Arc<Volume>,
    seq: u64,
    size: u64,
    time: i64,
}

impl PointView {
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

    /// Reads the image at this point.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        self.volume.read_image(self.seq, self.size, offset, buf)
    }

    /// Allocation status of the image at this point.
    pub fn extents(&self, offset: u64, length: u64) -> Result<Vec<Extent>, ReadError> {
        self.volume.image_extents(self.seq, self.size, offset, length)
    }
}
