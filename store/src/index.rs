//! The in-memory index: which record holds each byte of the image at any seq.
//!
//! Two structures, both append-only so that history never changes:
//!
//! - the **record table**: one 20-byte `Entry` per seq (offset, kind,
//!   length, journal location), in chunks so it grows without big copies;
//!   times are kept as runs (first seq, millisecond), one per distinct
//!   millisecond, so a busy volume pays almost nothing for them;
//! - the **spatial index**: for each chunk of the volume's address space, the
//!   seqs of the records that touch it, in seq order. Chunks come in
//!   [`LEVEL_SHIFTS`] sizes (256 KiB up to 2^60 bytes); a record is filed at the
//!   smallest level where it touches at most [`MAX_CHUNKS_PER_RECORD`]
//!   chunks, so a 4 KiB write costs one 8-byte list entry and a whole-disk
//!   trim costs a handful. Each list entry packs the seq with the coarse
//!   sub-range of the chunk the record covers, so most misses never touch
//!   the table.
//!
//! The image at seq S: for each byte, the newest record with seq ≤ S along
//! S's *lineage* covers it. A rollback record at seq R to target T makes the
//! image at R equal the image at T, so when a lookup walks down past R it
//! continues from T: records in (T, R) belong to the abandoned branch. Bytes no
//! record covers come from the base: the [`BaseMap`] of what retention folded
//! (data in the base file, zeros), else inherited (zeros, or a clone's parent).
//!
//! Retention folds a prefix of the history into the base: [`Index::fold`]
//! moves `base_seq` forward and drops the records at or before it (whole table
//! chunks, time runs, lineage entries at once; spatial lists in batches by
//! [`Index::prune`], and lookups ignore seqs ≤ `base_seq` meanwhile).
//!
//! Memory grows with records, not with the volume size: the table is 20 bytes
//! per record, a list entry 8 bytes per chunk a record touches, and each
//! touched chunk costs one hash-map slot plus its list's spare capacity.
//! Times have millisecond resolution here, rounded up (the journal keeps
//! nanoseconds): a time point never includes a later write.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::base::BaseMap;
use crate::layout::{IndexEntry, RECORD_HEADER_LEN, RecordKind};

/// Chunk size (log2 bytes) of each level of the spatial index.
pub const LEVEL_SHIFTS: [u32; 8] = [18, 24, 30, 36, 42, 48, 54, 60];
/// A record goes to the smallest level where it touches at most this many chunks.
pub const MAX_CHUNKS_PER_RECORD: u64 = 16;
/// Largest volume size (and end offset) the index can address.
pub const MAX_VOLUME_SIZE: u64 = 1 << 60;
/// Largest seq a list entry can hold.
pub const MAX_SEQ: u64 = (1 << 40) - 1;
/// Regions of this size (log2 bytes) are marked when a record filed below
/// [`REGION_LEVEL`] touches them.
const REGION_SHIFT: u32 = 30;
/// The first level whose chunks are at least a region.
const REGION_LEVEL: usize = 2;
const _: () = assert!(LEVEL_SHIFTS[REGION_LEVEL] == REGION_SHIFT);
const SUB_BITS: u32 = 12;
const SUB_MASK: u64 = (1 << SUB_BITS) - 1;
const TABLE_CHUNK: usize = 1 << 16;
const KIND_SHIFT: u32 = 60;
const OFFSET_MASK: u64 = (1 << KIND_SHIFT) - 1;

/// What the index keeps of one record (20 bytes: packed to 4-byte alignment).
///
/// `offset_kind`: kind in the top 4 bits, the record's `offset` field below.
/// `location`: for Write and snapshot records, the journal location of the
/// header; for Zeroes/Trim the extent length; for Resize the old size; for
/// Rollback the journal location. `length`: payload length.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct Entry {
    offset_kind: u64,
    location: u64,
    length: u32,
}

const _: () = assert!(size_of::<Entry>() == 20);

impl Entry {
    fn kind(&self) -> RecordKind {
        let offset_kind = self.offset_kind;
        RecordKind::from_u8((offset_kind >> KIND_SHIFT) as u8).unwrap_or(RecordKind::Write)
    }
    fn offset(&self) -> u64 {
        let offset_kind = self.offset_kind;
        offset_kind & OFFSET_MASK
    }
    fn location(&self) -> u64 {
        self.location
    }
    fn length(&self) -> u32 {
        self.length
    }
    /// The byte range this record defines at its seq, if any.
    fn extent(&self) -> Option<(u64, u64)> {
        let (offset, location) = (self.offset(), self.location());
        match self.kind() {
            RecordKind::Write => Some((offset, offset + u64::from(self.length()))),
            RecordKind::Zeroes | RecordKind::Trim => Some((offset, offset + location)),
            RecordKind::Resize if location > offset => Some((offset, location)),
            _ => None,
        }
    }
}

/// `nanos` in milliseconds, rounded up (towards the future).
fn ceil_millis(nanos: i64) -> i64 {
    nanos.div_euclid(1_000_000) + i64::from(nanos.rem_euclid(1_000_000) != 0)
}

/// A new record to index.
#[derive(Debug, Clone, Copy)]
pub struct NewRecord {
    pub kind: RecordKind,
    /// The header's offset field.
    pub offset: u64,
    /// The header's length field.
    pub length: u64,
    /// Journal location of the record header.
    pub location: u64,
    pub payload_length: u32,
    /// Unix nanoseconds.
    pub time: i64,
}

/// Where the bytes of one piece of a read come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Zeros without IO; `hole` when nothing is allocated (never written,
    /// trimmed, cut by a shrink) rather than written zeros.
    Zero { hole: bool },
    /// Journal bytes starting at this location.
    Data { location: u64 },
    /// Base file bytes at the piece's own offset (folded by retention).
    BaseFile,
    /// The inherited base: zeros, or a clone's parent at its seq.
    Base,
}

/// A contiguous piece of a read plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub offset: u64,
    pub length: u64,
    pub source: Source,
}

#[derive(Default)]
struct ChunkHasher(u64);

impl Hasher for ChunkHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(byte)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, value: u64) {
        // Fibonacci hashing: chunk numbers are dense, keep the high bits mixed.
        self.0 = (value ^ (value >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type ChunkMap = HashMap<u64, Vec<u64>, BuildHasherDefault<ChunkHasher>>;

/// The index of one volume. Not synchronized: the volume wraps it in a lock.
pub struct Index {
    /// Entries of the records after `base_seq`, in chunks of `TABLE_CHUNK`;
    /// `table[0][0]` is seq `table_first` (chunks wholly at or before
    /// `base_seq` are dropped by a fold).
    table: VecDeque<Vec<Entry>>,
    table_first: u64,
    head: u64,
    /// (first seq, unix milliseconds) for each distinct millisecond.
    time_runs: VecDeque<(u64, i64)>,
    levels: Vec<ChunkMapDebug>,
    used_levels: u8,
    /// 1 GiB regions that records filed at levels below REGION_LEVEL touch.
    occupied_regions: std::collections::HashSet<u64, BuildHasherDefault<ChunkHasher>>,
    rollbacks: Vec<(u64, u64)>,
    resizes: Vec<(u64, u64)>,
    snapshots: BTreeMap<String, u64>,
    /// (seq of a snapshot-delete record, seq the snapshot pinned): until
    /// the deletion is durable, a crash may bring the snapshot back, so it
    /// still protects its point.
    snapshot_deletions: Vec<(u64, u64)>,
    /// The base: the image at `base_seq` (0 = the volume's creation). Records
    /// at or before it are folded into `base_map` and the base file.
    base_seq: u64,
    base_time: i64,
    base_size: u64,
    base_map: BaseMap,
    /// Snapshots the committed base map says pin `base_seq` itself (kept
    /// as committed: a later record may delete one, but until that record
    /// is durable the base map must keep naming it).
    base_snapshots: Vec<String>,
    /// Oldest point that may be opened: `base_seq`, or later while a fold to
    /// it is under way (its records are still indexed until it completes).
    first_seq: u64,
    created: i64,
}

/// The folded state an index starts from (see [`Index::with_base`]).
#[derive(Debug, Clone, Default)]
pub struct BaseState {
    pub seq: u64,
    /// Time of `seq`, unix nanoseconds.
    pub time: i64,
    pub size: u64,
    pub map: BaseMap,
    /// Snapshots pinning `seq` itself (their records were folded).
    pub snapshots: Vec<String>,
}

/// A chunk map with a Debug that does not print millions of entries.
#[derive(Default)]
struct ChunkMapDebug(ChunkMap);

impl std::fmt::Debug for ChunkMapDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} chunks", self.0.len())
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("base_seq", &self.base_seq)
            .field("first_seq", &self.first_seq)
            .field("head", &self.head)
            .field("levels", &self.levels)
            .field("rollbacks", &self.rollbacks.len())
            .field("resizes", &self.resizes.len())
            .field("snapshots", &self.snapshots.len())
            .field("memory_bytes", &self.memory_bytes())
            .finish_non_exhaustive()
    }
}

struct Cursor<'a> {
    list: &'a [u64],
    pos: usize,
    chunk_start: u64,
    unit_shift: u32,
}

impl Index {
    /// An empty index: seq 0 is the base image, of `initial_size` bytes,
    /// at time `created` (unix nanoseconds).
    pub fn new(initial_size: u64, created: i64) -> Self {
        Self::with_base(
            BaseState { seq: 0, time: created, size: initial_size, ..BaseState::default() },
            created,
        )
    }

    /// An index whose history starts at a folded base: `base.seq` is the
    /// oldest point and the next record inserted is `base.seq + 1`.
    pub fn with_base(base: BaseState, created: i64) -> Self {
        let snapshots = base.snapshots.iter().map(|name| (name.clone(), base.seq)).collect();
        Self {
            table: VecDeque::new(),
            table_first: base.seq + 1,
            head: base.seq,
            time_runs: VecDeque::new(),
            levels: (0..LEVEL_SHIFTS.len()).map(|_| ChunkMapDebug::default()).collect(),
            used_levels: 0,
            occupied_regions: Default::default(),
            rollbacks: Vec::new(),
            resizes: Vec::new(),
            snapshots,
            snapshot_deletions: Vec::new(),
            base_seq: base.seq,
            base_time: base.time,
            base_size: base.size,
            base_map: base.map,
            base_snapshots: base.snapshots,
            first_seq: base.seq,
            created,
        }
    }

    /// The newest seq indexed (0 = none).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Time of seq 0.
    pub fn created(&self) -> i64 {
        self.created
    }

    /// The seq of the base image: records at or before it are folded.
    pub fn base_seq(&self) -> u64 {
        self.base_seq
    }

    /// What retention folded so far.
    pub fn base_map(&self) -> &BaseMap {
        &self.base_map
    }

    /// Size of the base image.
    pub fn base_size(&self) -> u64 {
        self.base_size
    }

    /// Snapshots the committed base map names as pinning the base seq.
    pub fn base_snapshots(&self) -> &[String] {
        &self.base_snapshots
    }

    /// The oldest point that may be opened.
    pub fn first_seq(&self) -> u64 {
        self.first_seq
    }

    /// Moves the oldest openable point forward (a fold to `seq` has begun:
    /// points before it must no longer be read). Never moves it back.
    pub fn set_first_seq(&mut self, seq: u64) {
        debug_assert!(seq <= self.head);
        self.first_seq = self.first_seq.max(seq);
    }

    /// The newest record at or before `head` that changed the image's
    /// bytes (a write, zeroes or a trim; not a snapshot, resize or
    /// rollback); else the base seq when something was folded (the last
    /// change is at or before it); else `None`: nothing was ever written.
    pub fn last_data_change(&self, head: u64) -> Option<u64> {
        let mut seq = head.min(self.head);
        while seq > self.base_seq {
            if matches!(self.entry(seq).kind(), RecordKind::Write | RecordKind::Zeroes | RecordKind::Trim) {
                return Some(seq);
            }
            seq -= 1;
        }
        (self.base_seq > 0).then_some(self.base_seq)
    }

    fn entry(&self, seq: u64) -> &Entry {
        debug_assert!(seq > self.base_seq && seq <= self.head, "seq {seq} not indexed");
        let index = (seq - self.table_first) as usize;
        &self.table[index / TABLE_CHUNK][index % TABLE_CHUNK]
    }

    /// Adds the record with seq `head() + 1`. `name` is the snapshot name of
    /// snapshot records. The caller has checked every bound.
    pub fn insert(&mut self, record: &NewRecord, name: Option<&str>) -> u64 {
        let seq = self.head + 1;
        assert!(seq <= MAX_SEQ, "seq space exhausted");
        let last_ms = self.time_runs.back().map_or(self.base_time.div_euclid(1_000_000), |&(_, ms)| ms);
        // Rounded up: a point at instant t must never include a write made
        // after t, so a write at 10.0005 s is stamped 10.001 s (a time point
        // may miss a write made less than 1 ms before it, never the reverse).
        let time_ms = ceil_millis(record.time).max(last_ms);
        if self.time_runs.is_empty() || time_ms != last_ms {
            self.time_runs.push_back((seq, time_ms));
        }
        let location = match record.kind {
            RecordKind::Zeroes | RecordKind::Trim | RecordKind::Resize => record.length,
            _ => record.location,
        };
        let entry = Entry {
            offset_kind: (record.offset & OFFSET_MASK) | ((record.kind as u64) << KIND_SHIFT),
            location,
            length: record.payload_length,
        };
        if self.table.back().is_none_or(|chunk| chunk.len() == TABLE_CHUNK) {
            self.table.push_back(Vec::new());
        }
        self.table.back_mut().expect("just pushed").push(entry);
        self.head = seq;
        match record.kind {
            RecordKind::Rollback => self.rollbacks.push((seq, record.offset)),
            RecordKind::Resize => self.resizes.push((seq, record.offset)),
            RecordKind::Snapshot => {
                if let Some(name) = name {
                    self.snapshots.insert(name.to_owned(), seq);
                }
            }
            RecordKind::SnapshotDelete => {
                if let Some(pinned) = name.and_then(|name| self.snapshots.remove(name)) {
                    self.snapshot_deletions.push((seq, pinned));
                }
            }
            _ => {}
        }
        if let Some((start, end)) = entry.extent()
            && start < end
        {
            self.file_spatially(seq, start, end);
        }
        seq
    }

    fn file_spatially(&mut self, seq: u64, start: u64, end: u64) {
        let last_level = LEVEL_SHIFTS.len() - 1;
        for (level, &shift) in LEVEL_SHIFTS.iter().enumerate() {
            let first = start >> shift;
            let last = (end - 1) >> shift;
            if last - first >= MAX_CHUNKS_PER_RECORD && level < last_level {
                continue;
            }
            let unit_shift = shift - SUB_BITS;
            let map = &mut self.levels[level].0;
            for chunk in first..=last {
                let chunk_start = chunk << shift;
                let chunk_end = chunk_start + (1 << shift);
                let sub_start = (start.max(chunk_start) - chunk_start) >> unit_shift;
                let sub_end = (end.min(chunk_end) - 1 - chunk_start) >> unit_shift;
                let list = map.entry(chunk).or_default();
                if list.len() == list.capacity() {
                    // Double up to a full chunk of 4 KiB blocks, then grow
                    // by half: lists are most of the index's memory.
                    let grow = if list.len() < 64 { list.len() } else { list.len() / 2 };
                    list.reserve_exact(grow.max(2));
                }
                list.push((seq << (2 * SUB_BITS)) | (sub_start << SUB_BITS) | sub_end);
            }
            self.used_levels |= 1 << level;
            if level < REGION_LEVEL {
                for region in (start >> REGION_SHIFT)..=((end - 1) >> REGION_SHIFT) {
                    self.occupied_regions.insert(region);
                }
            }
            return;
        }
    }

    /// Time of `seq` in unix nanoseconds (millisecond resolution, rounded
    /// up; the base's time for the base seq and anything not indexed).
    pub fn time(&self, seq: u64) -> i64 {
        if seq <= self.base_seq || seq > self.head {
            return self.base_time;
        }
        let run = self.time_runs.partition_point(|&(first, _)| first <= seq) - 1;
        self.time_runs[run].1 * 1_000_000
    }

    /// The last seq whose time is at or before `time` (nanoseconds, compared
    /// at millisecond resolution); the base seq when no later one is. The
    /// caller checks `time` against the oldest point's time.
    pub fn resolve_time(&self, time: i64) -> u64 {
        let time_ms = time.div_euclid(1_000_000);
        let after = self.time_runs.partition_point(|&(_, ms)| ms <= time_ms);
        let seq = match self.time_runs.get(after) {
            _ if after == 0 => self.base_seq,
            Some(&(first, _)) => first - 1,
            None => self.head,
        };
        seq.max(self.base_seq)
    }

    /// Size of the image at `seq` (≥ the base seq).
    pub fn size_at(&self, seq: u64) -> u64 {
        let mut limit = seq;
        loop {
            let resize = self.resizes.partition_point(|&(at, _)| at <= limit);
            let rollback = self.rollbacks.partition_point(|&(at, _)| at <= limit);
            let resize = resize.checked_sub(1).map(|i| self.resizes[i]);
            let rollback = rollback.checked_sub(1).map(|i| self.rollbacks[i]);
            match (resize, rollback) {
                (Some((at, size)), Some((back, _))) if at > back => return size,
                (_, Some((_, target))) => limit = target,
                (Some((_, size)), None) => return size,
                (None, None) => return self.base_size,
            }
        }
    }

    /// Lowers `limit` past every rollback between `candidate` and `limit`.
    /// Returns whether it moved.
    fn descend(&self, candidate: u64, limit: &mut u64) -> bool {
        let mut moved = false;
        loop {
            let below = self.rollbacks.partition_point(|&(at, _)| at <= *limit);
            let Some(&(at, target)) = below.checked_sub(1).map(|i| &self.rollbacks[i]) else {
                return moved;
            };
            if at <= candidate {
                return moved;
            }
            *limit = target;
            moved = true;
        }
    }

    /// Appends to `out` the pieces of the image at `seq` over `start..end`,
    /// in offset order, adjacent journal pieces merged.
    pub fn plan(&self, seq: u64, start: u64, end: u64, out: &mut Vec<Piece>) {
        let mut uncovered = Vec::with_capacity(4);
        self.plan_with(seq, start, end, out, &mut uncovered);
    }

    /// [`Self::plan`] with a caller-owned scratch vector, so a hot read path
    /// allocates nothing.
    pub fn plan_with(
        &self,
        seq: u64,
        start: u64,
        end: u64,
        out: &mut Vec<Piece>,
        uncovered: &mut Vec<(u64, u64)>,
    ) {
        let first_out = out.len();
        let level0 = LEVEL_SHIFTS[0];
        let mut at = start;
        while at < end {
            // Regions no small record touches are planned in one step, from
            // the coarse levels only: a sparse terabyte costs a few lookups
            // per GiB, not one per 256 KiB.
            let (step, first_level) = if self.occupied_regions.contains(&(at >> REGION_SHIFT)) {
                (level0, 0)
            } else {
                (REGION_SHIFT, REGION_LEVEL)
            };
            let piece_end = end.min(((at >> step) + 1) << step);
            self.plan_within_chunk(seq, at, piece_end, first_level, out, uncovered);
            at = piece_end;
        }
        // The per-chunk plans come out sorted; merge neighbours.
        let mut write = first_out;
        for read in first_out..out.len() {
            let piece = out[read];
            if write > first_out {
                let previous = &mut out[write - 1];
                let contiguous = previous.offset + previous.length == piece.offset;
                let merge = contiguous
                    && match (previous.source, piece.source) {
                        (Source::Data { location: a }, Source::Data { location: b }) => {
                            a + previous.length == b
                        }
                        (a, b) => a == b,
                    };
                if merge {
                    previous.length += piece.length;
                    continue;
                }
            }
            out[write] = piece;
            write += 1;
        }
        out.truncate(write);
    }

    /// Plans `start..end`, which lies within one chunk of every level from
    /// `first_level` up; lower levels are known to hold nothing here.
    fn plan_within_chunk(
        &self,
        seq: u64,
        start: u64,
        end: u64,
        first_level: usize,
        out: &mut Vec<Piece>,
        uncovered: &mut Vec<(u64, u64)>,
    ) {
        let first_out = out.len();
        let mut limit = seq;
        let mut cursors: [Option<Cursor<'_>>; 8] = Default::default();
        if seq > 0 {
            for (level, &shift) in LEVEL_SHIFTS.iter().enumerate().skip(first_level) {
                if self.used_levels & (1 << level) == 0 {
                    continue;
                }
                let chunk = start >> shift;
                if let Some(list) = self.levels[level].0.get(&chunk) {
                    let pos = list.partition_point(|&e| e >> (2 * SUB_BITS) <= limit);
                    if pos > 0 {
                        cursors[level] = Some(Cursor {
                            list,
                            pos,
                            chunk_start: chunk << shift,
                            unit_shift: shift - SUB_BITS,
                        });
                    }
                }
            }
        }
        // Uncovered ranges, sorted; at most a few in practice.
        uncovered.clear();
        uncovered.push((start, end));
        loop {
            let mut best: Option<(usize, u64)> = None;
            for (slot, cursor) in cursors.iter().enumerate() {
                if let Some(cursor) = cursor
                    && cursor.pos > 0
                {
                    let candidate = cursor.list[cursor.pos - 1] >> (2 * SUB_BITS);
                    if best.is_none_or(|(_, b)| candidate > b) {
                        best = Some((slot, candidate));
                    }
                }
            }
            let Some((slot, candidate)) = best else { break };
            if candidate <= self.base_seq {
                // Folded into the base (its list entry awaits pruning).
                break;
            }
            if self.descend(candidate, &mut limit) {
                for cursor in cursors.iter_mut().flatten() {
                    cursor.pos = cursor.list[..cursor.pos].partition_point(|&e| e >> (2 * SUB_BITS) <= limit);
                }
                continue;
            }
            let cursor = cursors[slot].as_mut().expect("best is a live cursor");
            cursor.pos -= 1;
            let packed = cursor.list[cursor.pos];
            let sub_start = (packed >> SUB_BITS) & SUB_MASK;
            let sub_end = packed & SUB_MASK;
            let query_start = (start - cursor.chunk_start) >> cursor.unit_shift;
            let query_end = (end - 1 - cursor.chunk_start) >> cursor.unit_shift;
            if sub_end < query_start || sub_start > query_end {
                continue;
            }
            // A record whose whole sub-range is covered already is skipped
            // without loading its entry: after scattered overwrites most
            // records of a chunk are, and each entry load is a cache miss.
            let approx_start = cursor.chunk_start + (sub_start << cursor.unit_shift);
            let approx_end = cursor.chunk_start.saturating_add((sub_end + 1) << cursor.unit_shift);
            let hole = uncovered.partition_point(|&(_, hole_end)| hole_end <= approx_start);
            if uncovered.get(hole).is_none_or(|&(hole_start, _)| hole_start >= approx_end) {
                continue;
            }
            let entry = self.entry(candidate);
            let Some((record_start, record_end)) = entry.extent() else {
                continue;
            };
            let kind = entry.kind();
            // The holes are sorted and disjoint: start at the first that
            // ends after the record starts, stop at the first that starts
            // after it ends (a read over scattered small records keeps
            // dozens of holes; scanning them all per record cost a seventh
            // of a fragmented copy-read's CPU).
            let mut i = uncovered.partition_point(|&(_, hole_end)| hole_end <= record_start);
            while i < uncovered.len() {
                let (hole_start, hole_end) = uncovered[i];
                if hole_start >= record_end {
                    break;
                }
                let cover_start = hole_start.max(record_start);
                let cover_end = hole_end.min(record_end);
                if cover_start >= cover_end {
                    i += 1;
                    continue;
                }
                let source = match kind {
                    RecordKind::Write => Source::Data {
                        location: entry.location() + RECORD_HEADER_LEN as u64 + (cover_start - record_start),
                    },
                    RecordKind::Zeroes => Source::Zero { hole: false },
                    _ => Source::Zero { hole: true },
                };
                out.push(Piece { offset: cover_start, length: cover_end - cover_start, source });
                // Replace the hole by what the record leaves uncovered.
                let left = (hole_start < cover_start).then_some((hole_start, cover_start));
                let right = (cover_end < hole_end).then_some((cover_end, hole_end));
                match (left, right) {
                    (Some(l), Some(r)) => {
                        uncovered[i] = l;
                        uncovered.insert(i + 1, r);
                        i += 2;
                    }
                    (Some(one), None) | (None, Some(one)) => {
                        uncovered[i] = one;
                        i += 1;
                    }
                    (None, None) => {
                        uncovered.remove(i);
                    }
                }
            }
            if uncovered.is_empty() {
                break;
            }
        }
        for &(hole_start, hole_end) in uncovered.iter() {
            self.base_map.plan(hole_start, hole_end, out);
        }
        out[first_out..].sort_unstable_by_key(|piece| piece.offset);
    }

    /// Current snapshots: name → seq.
    pub fn snapshots(&self) -> &BTreeMap<String, u64> {
        &self.snapshots
    }

    /// The newest seq ≤ `wanted` that can become the base without losing a
    /// point the history still needs: no snapshot before it (counting those
    /// whose deletion is not durable: records after `durable_seq` may be
    /// lost), and no retained rollback after it that targets before it
    /// (that rollback's image is the image at its target). Never below the
    /// current base.
    pub fn fold_limit(&self, wanted: u64, durable_seq: u64) -> u64 {
        let mut limit = wanted.min(self.head);
        if let Some(&oldest) = self.snapshots.values().min() {
            limit = limit.min(oldest);
        }
        for &(deleted_at, pinned) in &self.snapshot_deletions {
            if deleted_at > durable_seq {
                limit = limit.min(pinned);
            }
        }
        loop {
            let lowest =
                self.rollbacks.iter().filter(|&&(at, _)| at > limit).map(|&(_, target)| target).min();
            match lowest {
                Some(target) if target < limit => limit = target,
                _ => return limit.max(self.base_seq),
            }
        }
    }

    /// The byte ranges the records in `(from, to]` define, sorted and
    /// merged: with `from` = the base seq, where the image at `to` may
    /// differ from the base.
    pub fn fold_extents(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let mut extents: Vec<(u64, u64)> = (from.max(self.base_seq) + 1..=to.min(self.head))
            .filter_map(|at| self.entry(at).extent())
            .filter(|(start, end)| start < end)
            .collect();
        extents.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(extents.len());
        for (start, end) in extents {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// Makes the image at `seq` the base: `map` is its base map, and
    /// `snapshots` the snapshots it names as pinning `seq` (the caller has
    /// committed both). Drops the table chunks,
    /// time runs and lineage entries only the folded records needed; the
    /// spatial lists are trimmed by [`Self::prune`] (lookups skip folded
    /// entries meanwhile). The caller checked `seq` against
    /// [`Self::fold_limit`].
    pub fn fold(&mut self, seq: u64, map: BaseMap, snapshots: Vec<String>) {
        assert!(seq >= self.base_seq && seq <= self.head, "fold to {seq} outside the index");
        debug_assert!(self.rollbacks.iter().all(|&(at, target)| at <= seq || target >= seq));
        // Both answers need the records about to go.
        self.base_time = self.time(seq);
        self.base_size = self.size_at(seq);
        self.base_map = map;
        self.base_snapshots = snapshots;
        self.base_seq = seq;
        self.first_seq = self.first_seq.max(seq);
        while !self.table.is_empty() && self.table_first + TABLE_CHUNK as u64 - 1 <= seq {
            self.table.pop_front();
            self.table_first += TABLE_CHUNK as u64;
        }
        // Run i covers seqs up to run i+1's first seq - 1.
        while self.time_runs.len() >= 2 && self.time_runs[1].0 <= seq + 1 {
            self.time_runs.pop_front();
        }
        self.rollbacks.retain(|&(at, _)| at > seq);
        self.resizes.retain(|&(at, _)| at > seq);
        self.snapshot_deletions.retain(|&(at, _)| at > seq);
    }

    /// Replaces the base map by one describing the same image at the same
    /// base seq (cleaning moved data from the journal into the base file).
    pub fn set_base_map(&mut self, map: BaseMap) {
        self.base_map = map;
    }

    /// The spatial lists that still hold folded entries, as (level, chunk),
    /// for [`Self::prune`] in batches.
    pub fn prune_keys(&self) -> Vec<(u8, u64)> {
        let mut keys = Vec::new();
        for (level, map) in self.levels.iter().enumerate() {
            for (&chunk, list) in &map.0 {
                if list.first().is_some_and(|&packed| packed >> (2 * SUB_BITS) <= self.base_seq) {
                    keys.push((level as u8, chunk));
                }
            }
        }
        keys
    }

    /// Drops the folded entries of these lists (and lists left empty).
    pub fn prune(&mut self, keys: &[(u8, u64)]) {
        let base_seq = self.base_seq;
        for &(level, chunk) in keys {
            let map = &mut self.levels[level as usize].0;
            let Some(list) = map.get_mut(&chunk) else { continue };
            let folded = list.partition_point(|&packed| packed >> (2 * SUB_BITS) <= base_seq);
            if folded == list.len() {
                map.remove(&chunk);
            } else if folded > 0 {
                list.drain(..folded);
                if list.capacity() > 2 * list.len() + 8 {
                    list.shrink_to(list.len() + list.len() / 2);
                }
            }
        }
    }

    /// The record at `seq` as an index checkpoint entry (`location` 0 for
    /// records without a journal location in memory).
    pub fn checkpoint_entry(&self, seq: u64) -> IndexEntry {
        let entry = self.entry(seq);
        let kind = entry.kind();
        let (length, location) = match kind {
            RecordKind::Write => (u64::from(entry.length()), entry.location()),
            RecordKind::Zeroes | RecordKind::Trim | RecordKind::Resize => (entry.location(), 0),
            RecordKind::Rollback => (seq - 1, entry.location()),
            RecordKind::Snapshot | RecordKind::SnapshotDelete => (0, entry.location()),
        };
        IndexEntry {
            offset: entry.offset(),
            length,
            location,
            time: self.time(seq),
            payload_length: entry.length(),
            kind,
        }
    }

    /// Kind, offset and extent length (or payload length) of `seq`'s record.
    pub fn record_summary(&self, seq: u64) -> (RecordKind, u64, u64) {
        let entry = self.checkpoint_entry(seq);
        (entry.kind, entry.offset, entry.length)
    }

    /// Approximate heap bytes held by the index.
    pub fn memory_bytes(&self) -> usize {
        let table: usize = self.table.iter().map(|chunk| chunk.capacity() * size_of::<Entry>()).sum();
        let slot = size_of::<(u64, Vec<u64>)>() + 1;
        let levels: usize = self
            .levels
            .iter()
            .map(|level| {
                level.0.capacity() * slot + level.0.values().map(|list| list.capacity() * 8).sum::<usize>()
            })
            .sum();
        table
            + levels
            + self.time_runs.capacity() * 16
            + (self.rollbacks.capacity() + self.resizes.capacity()) * 16
            + self.occupied_regions.capacity() * 9
            + self.base_map.memory_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(index: &mut Index, offset: u64, length: u64, location: u64) -> u64 {
        index.insert(
            &NewRecord {
                kind: RecordKind::Write,
                offset,
                length,
                location,
                payload_length: length as u32,
                time: 1_000_000 * (index.head() as i64 + 1),
            },
            None,
        )
    }

    fn plan(index: &Index, seq: u64, start: u64, end: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        index.plan(seq, start, end, &mut out);
        out
    }

    const H: u64 = RECORD_HEADER_LEN as u64;

    /// Overlapping writes: the newest covers, older ones show around it, and
    /// each older seq still sees its own image.
    #[test]
    fn newest_record_wins_and_old_points_keep_their_image() {
        let mut index = Index::new(1 << 20, 0);
        write(&mut index, 0, 100, 1000);
        write(&mut index, 50, 10, 5000);
        assert_eq!(
            plan(&index, 2, 0, 200),
            vec![
                Piece { offset: 0, length: 50, source: Source::Data { location: 1000 + H } },
                Piece { offset: 50, length: 10, source: Source::Data { location: 5000 + H } },
                Piece { offset: 60, length: 40, source: Source::Data { location: 1000 + H + 60 } },
                Piece { offset: 100, length: 100, source: Source::Base },
            ]
        );
        assert_eq!(
            plan(&index, 1, 40, 70),
            vec![Piece { offset: 40, length: 30, source: Source::Data { location: 1000 + H + 40 } }]
        );
        assert_eq!(plan(&index, 0, 0, 10), vec![Piece { offset: 0, length: 10, source: Source::Base }]);
    }

    /// A rollback hides the abandoned branch from later seqs but not from
    /// the branch's own points.
    #[test]
    fn rollback_skips_the_abandoned_branch() {
        let mut index = Index::new(1 << 20, 0);
        write(&mut index, 0, 10, 1000); // 1
        write(&mut index, 0, 10, 2000); // 2
        index.insert(
            &NewRecord {
                kind: RecordKind::Rollback,
                offset: 1,
                length: 2,
                location: 3000,
                payload_length: 0,
                time: 0,
            },
            None,
        ); // 3
        write(&mut index, 5, 1, 4000); // 4
        let at = |seq| plan(&index, seq, 0, 10);
        assert_eq!(at(2)[0].source, Source::Data { location: 2000 + H });
        assert_eq!(at(3)[0].source, Source::Data { location: 1000 + H });
        assert_eq!(at(4)[1].source, Source::Data { location: 4000 + H });
        assert_eq!(at(4)[2].source, Source::Data { location: 1000 + H + 6 });
    }

    /// Large records land on coarse levels, chunk boundaries split nothing
    /// visible, and shrinking then growing reads zeros in the regrown tail.
    #[test]
    fn large_records_and_resize() {
        let mut index = Index::new(1 << 30, 0);
        index.insert(
            &NewRecord {
                kind: RecordKind::Trim,
                offset: 0,
                length: 1 << 30,
                location: 0,
                payload_length: 0,
                time: 0,
            },
            None,
        );
        write(&mut index, 65_530, 20, 100);
        assert_eq!(
            plan(&index, 2, 65_520, 65_560),
            vec![
                Piece { offset: 65_520, length: 10, source: Source::Zero { hole: true } },
                Piece { offset: 65_530, length: 20, source: Source::Data { location: 100 + H } },
                Piece { offset: 65_550, length: 10, source: Source::Zero { hole: true } },
            ]
        );
        write(&mut index, 1000, 10, 200); // 3
        index.insert(
            &NewRecord {
                kind: RecordKind::Resize,
                offset: 1004,
                length: 1 << 30,
                location: 0,
                payload_length: 0,
                time: 0,
            },
            None,
        ); // 4
        index.insert(
            &NewRecord {
                kind: RecordKind::Resize,
                offset: 4096,
                length: 1004,
                location: 0,
                payload_length: 0,
                time: 0,
            },
            None,
        ); // 5
        assert_eq!(index.size_at(3), 1 << 30);
        assert_eq!(index.size_at(4), 1004);
        assert_eq!(index.size_at(5), 4096);
        assert_eq!(
            plan(&index, 5, 1000, 1010),
            vec![
                Piece { offset: 1000, length: 4, source: Source::Data { location: 200 + H } },
                Piece { offset: 1004, length: 6, source: Source::Zero { hole: true } },
            ]
        );
    }

    /// A plan over a sparse terabyte is a handful of pieces and fast.
    #[test]
    fn sparse_terabyte_plans_quickly() {
        let mut index = Index::new(1 << 40, 0);
        write(&mut index, (1 << 39) + 5, 10, 100);
        let started = std::time::Instant::now();
        let pieces = plan(&index, 1, 0, 1 << 40);
        assert!(started.elapsed() < std::time::Duration::from_millis(200));
        assert_eq!(
            pieces,
            vec![
                Piece { offset: 0, length: (1 << 39) + 5, source: Source::Base },
                Piece { offset: (1 << 39) + 5, length: 10, source: Source::Data { location: 100 + H } },
                Piece { offset: (1 << 39) + 15, length: (1 << 39) - 15, source: Source::Base },
            ]
        );
    }

    /// The naive answer: walk every record from `seq` down (jumping at
    /// rollbacks), no spatial index. Pieces merged like `plan`'s.
    fn naive_plan(records: &[NewRecord], seq: u64, start: u64, end: u64) -> Vec<Piece> {
        let mut uncovered = vec![(start, end)];
        let mut pieces = Vec::new();
        let mut at = seq;
        while at > 0 && !uncovered.is_empty() {
            let record = records[at as usize - 1];
            if record.kind == RecordKind::Rollback {
                at = record.offset;
                continue;
            }
            let extent = match record.kind {
                RecordKind::Write | RecordKind::Zeroes | RecordKind::Trim => {
                    Some((record.offset, record.offset + record.length))
                }
                RecordKind::Resize if record.length > record.offset => Some((record.offset, record.length)),
                _ => None,
            };
            if let Some((record_start, record_end)) = extent {
                let mut next = Vec::new();
                for (hole_start, hole_end) in uncovered {
                    let cover_start = hole_start.max(record_start);
                    let cover_end = hole_end.min(record_end);
                    if cover_start >= cover_end {
                        next.push((hole_start, hole_end));
                        continue;
                    }
                    let source = match record.kind {
                        RecordKind::Write => {
                            Source::Data { location: record.location + H + (cover_start - record_start) }
                        }
                        RecordKind::Zeroes => Source::Zero { hole: false },
                        _ => Source::Zero { hole: true },
                    };
                    pieces.push(Piece { offset: cover_start, length: cover_end - cover_start, source });
                    if hole_start < cover_start {
                        next.push((hole_start, cover_start));
                    }
                    if cover_end < hole_end {
                        next.push((cover_end, hole_end));
                    }
                }
                uncovered = next;
            }
            at -= 1;
        }
        for (hole_start, hole_end) in uncovered {
            pieces.push(Piece { offset: hole_start, length: hole_end - hole_start, source: Source::Base });
        }
        pieces.sort_by_key(|piece| piece.offset);
        let mut merged: Vec<Piece> = Vec::new();
        for piece in pieces {
            if let Some(last) = merged.last_mut()
                && last.offset + last.length == piece.offset
                && match (last.source, piece.source) {
                    (Source::Data { location: a }, Source::Data { location: b }) => a + last.length == b,
                    (a, b) => a == b,
                }
            {
                last.length += piece.length;
                continue;
            }
            merged.push(piece);
        }
        merged
    }

    /// The spatial index answers exactly what a naive walk over all records
    /// answers, for random histories over 4 GiB with records from 1 byte to
    /// 64 MiB (every level up to 1 GiB chunks), rollbacks and resizes, at
    /// random seqs and ranges. Seeded; a failure names its seed.
    #[test]
    fn plan_matches_a_naive_walk() {
        use crate::memory::SimRng;
        for case in 0..1000u64 {
            let mut rng = SimRng::new(case);
            let size = 4u64 << 30;
            let mut index = Index::new(size, 0);
            let mut records = Vec::new();
            let mut location = 0u64;
            for _ in 0..rng.range(1, 120) {
                let head = index.head();
                let length = match rng.below(4) {
                    0 => rng.range(1, 600),
                    1 => rng.range(1, 300_000),
                    2 => rng.range(1, 20 << 20),
                    _ => rng.range(1, 64 << 20),
                };
                let offset = rng.below(size - length);
                let kind = match rng.below(20) {
                    0..=11 => RecordKind::Write,
                    12 | 13 => RecordKind::Zeroes,
                    14 | 15 => RecordKind::Trim,
                    16 | 17 => RecordKind::Rollback,
                    _ => RecordKind::Resize,
                };
                let record = match kind {
                    RecordKind::Rollback => NewRecord {
                        kind,
                        offset: rng.below(head + 1),
                        length: head,
                        location,
                        payload_length: 0,
                        time: 0,
                    },
                    RecordKind::Resize => {
                        let old = index.size_at(head);
                        NewRecord {
                            kind,
                            offset: rng.range(1, size),
                            length: old,
                            location: 0,
                            payload_length: 0,
                            time: 0,
                        }
                    }
                    _ => NewRecord { kind, offset, length, location, payload_length: length as u32, time: 0 },
                };
                location += 96 + length;
                index.insert(&record, None);
                records.push(record);
            }
            for _ in 0..40 {
                let seq = rng.below(index.head() + 1);
                let longest = [4096, 1 << 20, 64 << 20][rng.below(3) as usize];
                let length = rng.range(1, longest);
                let start = rng.below(size - length);
                assert_eq!(
                    plan(&index, seq, start, start + length),
                    naive_plan(&records, seq, start, start + length),
                    "case {case}, seq {seq}, {start}+{length}"
                );
            }
        }
    }

    /// A fake journal and base file for the fold test: record payloads by
    /// location, and the base file's bytes.
    struct Bytes {
        journal: BTreeMap<u64, Vec<u8>>,
        base: Vec<u8>,
    }

    impl Bytes {
        /// The image at `seq` (inherited ranges read as 0xAB, so that a
        /// wrong "inherited" answer shows).
        fn image(&self, index: &Index, seq: u64) -> Vec<u8> {
            let size = index.size_at(seq);
            let mut out = vec![0; size as usize];
            for piece in plan(index, seq, 0, size) {
                let target = &mut out[piece.offset as usize..(piece.offset + piece.length) as usize];
                match piece.source {
                    Source::Zero { .. } => target.fill(0),
                    Source::Base => target.fill(0xAB),
                    Source::BaseFile => target.copy_from_slice(
                        &self.base[piece.offset as usize..(piece.offset + piece.length) as usize],
                    ),
                    Source::Data { location } => {
                        let (&header, data) = self.journal.range(..=location - H).next_back().unwrap();
                        let skip = (location - header - H) as usize;
                        target.copy_from_slice(&data[skip..skip + target.len()]);
                    }
                }
            }
            out
        }

        /// What the volume's fold does: the image at `target` over the
        /// ranges the folded records touched becomes the base map, journal
        /// data where it is (no copy); base file data under it is punched
        /// (zeroed here, so a wrong read of it shows).
        fn fold(&mut self, index: &mut Index, target: u64) {
            let mut map = index.base_map().clone();
            let old = index.base_map().clone();
            for (start, end) in index.fold_extents(index.base_seq(), target) {
                for piece in plan(index, target, start, end) {
                    let (piece_start, piece_end) = (piece.offset, piece.offset + piece.length);
                    let kind = match piece.source {
                        Source::Data { location } => {
                            map.set_journal(piece_start, piece_end, location);
                            None
                        }
                        Source::Zero { hole: true } => Some(crate::base::BaseKind::Hole),
                        Source::Zero { hole: false } => Some(crate::base::BaseKind::Zero),
                        Source::BaseFile | Source::Base => continue,
                    };
                    if let Some(kind) = kind {
                        map.set(piece_start, piece_end, kind);
                    }
                    let mut under = Vec::new();
                    old.plan(piece_start, piece_end, &mut under);
                    for was in under.iter().filter(|was| was.source == Source::BaseFile) {
                        self.base[was.offset as usize..(was.offset + was.length) as usize].fill(0);
                    }
                }
            }
            index.fold(target, map, Vec::new());
            let keys = index.prune_keys();
            index.prune(&keys[..keys.len() / 2]);
        }

        /// What cleaning does: the journal runs of the base map become base
        /// file data (copied), so their records could go.
        fn clean(&mut self, index: &mut Index) {
            let mut map = index.base_map().clone();
            let image = self.image(index, index.base_seq());
            for segment in index.base_map().live_segments().keys().copied().collect::<Vec<_>>() {
                for run in index.base_map().journal_runs(segment) {
                    self.base[run.start as usize..run.end as usize]
                        .copy_from_slice(&image[run.start as usize..run.end as usize]);
                    map.set(run.start, run.end, crate::base::BaseKind::Data);
                }
            }
            assert_eq!(map.journal_bytes(), 0);
            index.set_base_map(map);
        }
    }

    /// Folding a prefix never changes the image of a later point: random
    /// histories over 8 MiB (writes from 1 byte to 256 KiB, zeroes and
    /// trims up to the whole volume, rollbacks, resizes) are folded at the
    /// furthest allowed seq at or below a random one, twice, with more
    /// records in between, and sometimes cleaned (journal runs copied into
    /// the base file); sampled points from the new base to the head read
    /// the same before and after, and the lineage of the folded prefix is
    /// gone.
    #[test]
    fn folding_keeps_every_later_image() {
        use crate::memory::SimRng;
        for case in 0..60u64 {
            let mut rng = SimRng::new(case);
            let size = 8u64 << 20;
            let mut index = Index::new(size, 0);
            let mut bytes = Bytes { journal: BTreeMap::new(), base: vec![0; 2 * size as usize] };
            let mut location = 0u64;
            for round in 0..2 {
                for _ in 0..rng.range(1, 60) {
                    let head = index.head();
                    let current = index.size_at(head);
                    let longest = if rng.chance(1, 2) { 5000 } else { 256 << 10 };
                    let length = rng.range(1, longest).min(current);
                    let offset = rng.below(current - length + 1);
                    let kind = match rng.below(20) {
                        0..=11 => RecordKind::Write,
                        12 | 13 => RecordKind::Zeroes,
                        14 | 15 => RecordKind::Trim,
                        16 | 17 => RecordKind::Rollback,
                        _ => RecordKind::Resize,
                    };
                    let record = match kind {
                        RecordKind::Rollback => {
                            let target = rng.range(index.first_seq(), head);
                            NewRecord {
                                kind,
                                offset: target,
                                length: head,
                                location,
                                payload_length: 0,
                                time: 0,
                            }
                        }
                        RecordKind::Resize => NewRecord {
                            kind,
                            offset: rng.range(1, 2 * size),
                            length: current,
                            location: 0,
                            payload_length: 0,
                            time: 0,
                        },
                        RecordKind::Write => NewRecord {
                            kind,
                            offset,
                            length,
                            location,
                            payload_length: length as u32,
                            time: 0,
                        },
                        _ => {
                            // Zeroes and trims up to the whole volume (coarse levels).
                            let length = if rng.chance(1, 3) { rng.range(1, current) } else { length };
                            let offset = rng.below(current - length + 1);
                            NewRecord { kind, offset, length, location, payload_length: 0, time: 0 }
                        }
                    };
                    if kind == RecordKind::Write {
                        let mut data = vec![0; length as usize];
                        rng.fill(&mut data);
                        bytes.journal.insert(location, data);
                    }
                    location += H + length;
                    index.insert(&record, None);
                }
                let head = index.head();
                let wanted = rng.range(index.base_seq(), head);
                let target = index.fold_limit(wanted, head);
                assert!(target <= wanted, "case {case}");
                let mut samples: Vec<u64> = (0..6).map(|_| rng.range(target, head)).collect();
                samples.extend([target, head]);
                let before: Vec<Vec<u8>> = samples.iter().map(|&seq| bytes.image(&index, seq)).collect();
                bytes.fold(&mut index, target);
                assert_eq!((index.base_seq(), index.first_seq()), (target, target), "case {case}");
                if rng.chance(1, 3) {
                    bytes.clean(&mut index);
                }
                for (&seq, image) in samples.iter().zip(&before) {
                    assert!(bytes.image(&index, seq) == *image, "case {case} round {round} seq {seq}");
                }
                assert!(index.rollbacks.iter().all(|&(at, target_seq)| at > target && target_seq >= target));
                assert!(index.table_first + TABLE_CHUNK as u64 > target || index.table.is_empty());
            }
        }
    }

    /// Times resolve to the last seq at or before, across time blocks.
    #[test]
    fn resolve_time_finds_last_seq_at_or_before() {
        let mut index = Index::new(4096, 0);
        for (i, time) in [10_000_000i64, 20_000_000, 20_000_000, 4_000_000_000_000_000].iter().enumerate() {
            index.insert(
                &NewRecord {
                    kind: RecordKind::Write,
                    offset: 0,
                    length: 1,
                    location: i as u64,
                    payload_length: 1,
                    time: *time,
                },
                None,
            );
        }
        assert_eq!(index.resolve_time(9_999_999), 0);
        assert_eq!(index.resolve_time(10_000_000), 1);
        assert_eq!(index.resolve_time(25_000_000), 3);
        assert_eq!(index.resolve_time(4_000_000_000_000_000), 4);
        assert_eq!(index.time(4), 4_000_000_000_000_000);
    }
}
