//! The append-only journal of one volume: segment files, the write buffer,
//! the index checkpoint, and recovery. The commit protocol is described step
//! by step in docs/journal.md; the comments here name the crash each step
//! guards against.
//!
//! Every record's bytes are **reserved** on disk before the record is
//! appended: the current segment's file is allocated ([`StorageBackend::allocate`],
//! `fallocate`) ahead of the journal's tail in chunks of
//! [`JournalOptions::reserve_bytes`], so that writing out an acknowledged
//! record cannot fail for lack of space. When the space is not there the
//! append fails with [`AppendError::NoSpace`] before anything changed, and
//! the journal takes appends again once space is freed.
//!
//! Retention folds a prefix of the history into the base image and then
//! [`Journal::reclaim`]s the segments that hold only folded records; their
//! files become *spares* that the next segments reuse (rename + overwrite:
//! on tmpfs and in the page cache, overwriting allocated pages is many times
//! faster than filling new ones).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use parking_lot::{Mutex, RwLock};

use crate::backend::{Filesystem, StorageBackend, is_no_space};
use crate::index::{Index, NewRecord};
use crate::layout::{
    self, FLAG_BLAKE3, INDEX_CHUNK_HEADER_LEN, INDEX_CHUNK_MAX_ENTRIES, INDEX_ENTRY_LEN, IndexChunkHeader,
    IndexEntry, RECORD_HEADER_LEN, RecordHeader, RecordKind, SEGMENT_HEADER_LEN, SegmentHeader,
};
use crate::mapped::Mapping;

/// File name of segment `number`.
pub fn segment_name(number: u64) -> String {
    format!("seg-{number:010}.log")
}

/// The number of segment file `name`; names with numbers no location can
/// hold are not ours ([`layout::MAX_SEGMENT_NUMBER`]).
fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?.strip_suffix(".log")?.parse().ok().filter(|&n| n <= layout::MAX_SEGMENT_NUMBER)
}

/// File name of a spare segment file: a reclaimed one (it was segment
/// `number`), or one made ahead (`number` was never a segment's).
fn spare_name(number: u64) -> String {
    format!("spare-{number:010}.log")
}

/// The segment number of a segment set aside by recovery
/// (`seg-N.log.cut-SEQ`, perhaps with a further `.K`): new segments are
/// numbered past it, so a later recovery never sets aside a file of the
/// same name over it.
pub(crate) fn parse_aside_name(name: &str) -> Option<u64> {
    let (segment, _) = name.split_once(".cut-")?;
    parse_segment_name(segment)
}

/// A name for segment file `path` set aside at `next_seq` that no file has
/// (a name can repeat only if the numbers were reused, as they were before
/// set-aside files counted: never replace what an earlier recovery kept).
fn aside_path(fs: &dyn Filesystem, path: &str, next_seq: u64) -> String {
    let aside = format!("{path}.cut-{next_seq}");
    (1u64..)
        .map(|k| if k == 1 { aside.clone() } else { format!("{aside}.{k}") })
        .find(|candidate| !fs.exists(candidate))
        .expect("a free name")
}

/// Whether a record of a later seq than `next_seq` (by at most 65,536)
/// starts in the MiB after `position` in `file` (which is `len` long): then
/// the record recovery stopped at was damaged, intact ones follow it, and
/// it is not the torn end of the journal. (A reused file's stale records
/// have earlier seqs; a reservation holds zeros.)
fn intact_record_after(
    file: &dyn StorageBackend,
    position: u64,
    len: u64,
    next_seq: u64,
) -> io::Result<bool> {
    let end = len.min(position.saturating_add((1 << 20) + RECORD_HEADER_LEN as u64));
    let mut bytes = vec![0; end.saturating_sub(position) as usize];
    file.read_at(&mut bytes, position)?;
    let mut at = layout::RECORD_ALIGN as usize;
    while at + RECORD_HEADER_LEN <= bytes.len() {
        if let Ok((header, _)) = RecordHeader::decode(&bytes[at..])
            && header.seq > next_seq
            && header.seq - next_seq <= 1 << 16
        {
            return Ok(true);
        }
        at += layout::RECORD_ALIGN as usize;
    }
    Ok(false)
}

/// Copies the first `len` bytes of `from` into a new file `to`, synced.
fn copy_file(fs: &dyn Filesystem, from: &dyn StorageBackend, to: &str, len: u64) -> io::Result<()> {
    let target = fs.open_file(to, true)?;
    let mut buffer = vec![0; len.min(1 << 20) as usize];
    let mut at = 0;
    while at < len {
        let step = (len - at).min(buffer.len() as u64) as usize;
        from.read_at(&mut buffer[..step], at)?;
        target.write_at(&buffer[..step], at)?;
        at += step as u64;
    }
    target.sync()
}

fn parse_spare_name(name: &str) -> Option<u64> {
    name.strip_prefix("spare-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
        .filter(|&n| n <= layout::MAX_SEGMENT_NUMBER)
}

/// Name of the index checkpoint file in a volume directory.
pub const INDEX_FILE: &str = "index";
/// A checkpoint being rewritten; renamed over [`INDEX_FILE`] once synced.
const INDEX_NEW_FILE: &str = "index.new";

/// Tunables of a journal.
#[derive(Debug, Clone, Copy)]
pub struct JournalOptions {
    /// A new segment starts once the current one would grow past this.
    pub segment_bytes: u64,
    /// Records below a quarter of this are gathered in memory and written
    /// in one call; larger ones are written directly.
    pub buffer_bytes: usize,
    /// Hash each payload with blake3 on the write path.
    pub inline_blake3: bool,
    /// Spare segment files kept ready for new segments (reclaimed, or
    /// made ahead by [`Journal::prepare_spare`]).
    pub spare_segments: usize,
    /// Disk space allocated ahead of the journal's tail at a time (never
    /// past the segment size). A record is appended only once its bytes
    /// are allocated.
    pub reserve_bytes: u64,
    /// While syncs come every [`SYNC_HEAVY_BYTES`] or less of records, on a
    /// filesystem that converts allocated blocks at a sync (ext4, XFS:
    /// [`StorageBackend::converts_allocations`]), zeros are written this far ahead of the
    /// records (within what is allocated), so that each sync finds its
    /// blocks written already: a sync into space `fallocate` left unwritten
    /// also commits the filesystem's journal (ext4 converts the extent).
    /// 0: never.
    pub zero_ahead_bytes: u64,
}

/// Syncs that cover this many bytes of records or fewer, on average, make
/// a journal write zeros ahead ([`JournalOptions::zero_ahead_bytes`]).
pub const SYNC_HEAVY_BYTES: u64 = 256 << 10;

/// Why [`Journal::append`] failed.
#[derive(Debug)]
pub enum AppendError {
    /// No disk space could be allocated for the record ([`is_no_space`]):
    /// nothing was appended, the journal is as it was, and appends succeed
    /// again once space is freed.
    NoSpace(io::Error),
    /// Writing out earlier records or starting a segment failed: what
    /// reached the disk is unknown (the volume must refuse writes).
    Io(io::Error),
}

impl AppendError {
    /// Classifies an allocation's error: lack of space, or IO failure.
    fn allocation(error: io::Error) -> Self {
        if is_no_space(&error) { Self::NoSpace(error) } else { Self::Io(error) }
    }
}

/// Space assumed allocated in a reused (spare) segment file: its length,
/// rounded down to a 4 KiB block. Every byte of a spare was written by an
/// earlier segment, except at most the few padding bytes recovery may have
/// restored with `set_len` (a hole) at its very end; the block holding them
/// is allocated again.
fn spare_allocated(len: u64) -> u64 {
    len - len % 4096
}

/// A segment file lent out ([`Journal::lend`]): the file, its descriptor
/// and where the lent bytes start in it.
pub type LentRun = (Arc<dyn StorageBackend>, RawFd, u64);

/// Segments lent out in this process, by (journal directory, number). The
/// mark outlives the [`Journal`] that lent them: a volume reopened in the
/// same process (a new journal over the same files) must not reuse them
/// either, in reclaim or in recovery. Entries go when the file is removed.
static LENT: parking_lot::Mutex<BTreeSet<(String, u64)>> = parking_lot::Mutex::new(BTreeSet::new());

fn was_lent(dir: &str, number: u64) -> bool {
    LENT.lock().contains(&(dir.to_owned(), number))
}

/// Removes segment file `number` of `dir`, and its lent mark.
fn remove_segment(fs: &dyn Filesystem, dir: &str, number: u64) -> io::Result<()> {
    fs.remove_file(&format!("{dir}/{}", segment_name(number)))?;
    LENT.lock().remove(&(dir.to_owned(), number));
    Ok(())
}

fn missing_segment() -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, "segment missing")
}

/// One segment file of the journal.
#[derive(Debug)]
struct Segment {
    file: Arc<dyn StorageBackend>,
    /// Seq of its first record (from its header).
    first_seq: u64,
    /// The file mapped for reads, made at the first read (`None`: not a
    /// real file, or it could not be mapped).
    map: OnceLock<Option<Arc<Mapping>>>,
}

impl Segment {
    fn new(file: Arc<dyn StorageBackend>, first_seq: u64) -> Segment {
        Segment { file, first_seq, map: OnceLock::new() }
    }

    /// The segment's mapping, made at the first call: of its file's length
    /// or `bytes` (the journal's segment size), whichever is larger, so a
    /// segment still being written needs one mapping.
    fn mapping(&self, bytes: u64) -> Option<Arc<Mapping>> {
        self.map
            .get_or_init(|| {
                let length = self.file.len().ok()?.max(bytes);
                Mapping::new(self.file.raw_fd()?, usize::try_from(length).ok()?).map(Arc::new)
            })
            .clone()
    }
}

/// One segment as retention sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub number: u64,
    /// Seq of its first record; every later segment starts later.
    pub first_seq: u64,
    /// Bytes it occupies (header, records, padding).
    pub bytes: u64,
}

/// What [`Journal::reclaim`] freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub segments: u64,
    pub bytes: u64,
    /// Of those segments, how many were kept as spares for reuse.
    pub spared: u64,
}

/// The size segments get for a wanted `bytes`: at least 1 (one record
/// always fits anyway), at most what a location can name.
fn segment_size(bytes: u64) -> u64 {
    bytes.clamp(1, layout::MAX_SEGMENT_BYTES)
}

/// Whether `count` records from `first` get seqs the index can hold
/// ([`crate::index::MAX_SEQ`]); an error naming the cause if not.
pub fn check_seqs(first: u64, count: u64) -> io::Result<()> {
    if first.saturating_add(count.saturating_sub(1)) > crate::index::MAX_SEQ {
        return Err(io::Error::other(format!(
            "this volume has used all {} seqs; copy it to a new volume",
            crate::index::MAX_SEQ
        )));
    }
    Ok(())
}

/// A journal's spare files: names in its volume directory.
#[derive(Debug)]
struct Spares {
    fs: Arc<dyn Filesystem>,
    dir: String,
    names: Mutex<Vec<String>>,
    /// The journal's volume was reopened or deleted: its files belong to
    /// whoever opened the directory next, never to this list.
    closed: AtomicBool,
}

impl Spares {
    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<String>> {
        self.names.lock()
    }

    /// Removes every file on the list, freeing its space; returns how many
    /// there were. Takes only this list's lock, and holds it while
    /// removing, so that [`Journal::close_spares`] waits for a release
    /// under way (a reopen lists the directory after that).
    fn release(&self) -> usize {
        let mut names = self.names.lock();
        let count = names.len();
        for name in names.drain(..) {
            if let Err(error) = self.fs.remove_file(&format!("{}/{name}", self.dir)) {
                tracing::warn!(dir = self.dir, name, %error, "cannot remove a spare segment file");
            }
        }
        count
    }
}

/// The spare files of every journal of a store. A journal that runs out of
/// space removes its own spares first, then the other journals' (spares
/// hold no data, they only save page allocations), so that one volume's
/// spares never keep another from writing. Cleaners' reserves stay.
#[derive(Debug, Default)]
pub struct SparePool {
    members: Mutex<Vec<Weak<Spares>>>,
}

impl SparePool {
    /// Removes the spare files of one journal in the pool other than
    /// `except` that has any; returns how many there were (0: none left).
    fn release_another(&self, except: &Arc<Spares>) -> usize {
        let members: Vec<Arc<Spares>> = {
            let mut members = self.members.lock();
            members.retain(|member| member.strong_count() > 0);
            members.iter().filter_map(Weak::upgrade).collect()
        };
        members
            .iter()
            .filter(|member| !Arc::ptr_eq(member, except) && !member.closed.load(Ordering::Acquire))
            .map(|member| member.release())
            .find(|&count| count > 0)
            .unwrap_or(0)
    }
}

/// The segment files of a volume and the bytes not yet handed to them.
#[derive(Debug)]
pub struct Journal {
    fs: Arc<dyn Filesystem>,
    dir: String,
    volume_id: u128,
    options: JournalOptions,
    /// Target size of new segments (retention lowers it for small budgets).
    segment_bytes: AtomicU64,
    segments: RwLock<BTreeMap<u64, Segment>>,
    /// Names of spare files in the volume directory, ready for reuse.
    spares: Arc<Spares>,
    /// The store's pool of spares ([`Journal::join_pool`]).
    pool: OnceLock<Arc<SparePool>>,
    /// The cleaner's reserve: one more spare file that neither new
    /// segments nor the write path's release take, kept while
    /// [`Journal::set_keep_reserve`] says base segments hold live data
    /// (docs/journal.md, "Space on a full disk"). Counts as a spare.
    reserve: Mutex<Option<String>>,
    keep_reserve: AtomicBool,
    /// Segments started in a spare file, since the journal was opened.
    recycled: AtomicU64,
    /// Spare files made ahead ([`Journal::prepare_spare`]), since then.
    made: AtomicU64,
    /// A segment was started since [`Journal::take_rolled`] last looked.
    rolled: AtomicBool,
    /// A segment started that left no spare file behind, in a journal of
    /// two segments or more: reclaim is not keeping up with the writer.
    short_of_spares: AtomicBool,
    /// Everything before this location has been handed to a segment file;
    /// reads below it need no lock.
    written_below: AtomicU64,
    /// Held while a large record is copied into its file. The kernel lets
    /// one buffered write into a file at a time (the inode lock), and its
    /// waiters spin while the holder copies: on two cores, 4 writers of
    /// 256 KiB records spent an eighth of the CPU spinning there. Waiting
    /// here sleeps instead.
    copying: Arc<Mutex<()>>,
    pub(crate) writer: Mutex<Writer>,
    /// Bytes of all segment files (headers, records, padding).
    bytes: AtomicU64,
}

/// The append side, behind the volume's writer lock.
pub struct Writer {
    segment_number: u64,
    segment: Option<Arc<dyn StorageBackend>>,
    /// End of the records in the current segment, buffered ones included.
    position: u64,
    buffer: Vec<u8>,
    /// Segment position of `buffer[0]`.
    buffer_start: u64,
    /// Header crc of the last record: the next record's chain.
    chain: u32,
    last_location: u64,
    /// Segments (current included) written since the last sync.
    unsynced: Vec<Arc<dyn StorageBackend>>,
    current_dirty: bool,
    /// The current segment reuses a spare file: stale bytes follow the
    /// records and are cut off when the segment is finished.
    recycled: bool,
    /// Segment position below which zeros were written ahead (or records
    /// were) in the current segment's file ([`JournalOptions::zero_ahead_bytes`]).
    zeroed: u64,
    /// The current segment's filesystem converts allocated blocks at the
    /// sync after their first write ([`StorageBackend::converts_allocations`]).
    converts: bool,
    /// Bytes of records appended since the last sync, and a moving average
    /// of the bytes each sync covered (`u64::MAX` until one was seen).
    unsynced_bytes: u64,
    bytes_per_sync: u64,
    /// Segment position below which the current segment's file has disk
    /// space allocated: every appended record ends at or below it (the
    /// reserved region past `position` reads as zeros, or as a reused
    /// file's stale bytes, and is cut off when the segment is finished).
    allocated: u64,
    /// Highest segment number used or found (spares included): numbers are
    /// never reused, so a reused file's stale header can never name the
    /// segment it now is.
    highest_number: Option<u64>,
    /// Seq of the last record appended (reserved or buffered).
    last_seq: u64,
    /// Records appended after a large record whose data is still being
    /// written outside the lock (that one included), in seq order. Empty in
    /// the common case: then every appended record is visible.
    pending: VecDeque<Pending>,
    /// The last visible record: every record up to it has its bytes in the
    /// buffer or a segment file. What a flush may cover.
    visible: DurableMark,
}

impl Writer {
    /// Seq of the last record appended (visible or not).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// A segment number never used before, for a new segment or spare.
    fn take_number(&mut self) -> io::Result<u64> {
        let number = self.highest_number.map_or(0, |highest| highest + 1);
        if number > layout::MAX_SEGMENT_NUMBER {
            return Err(io::Error::other(format!(
                "this volume has used all {} segment numbers; copy it to a new volume",
                layout::MAX_SEGMENT_NUMBER + 1
            )));
        }
        self.highest_number = Some(number);
        Ok(number)
    }
}

/// A record appended but not yet visible (see [`Writer::pending`]).
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// Its mark: seq, header crc, location, end.
    mark: DurableMark,
    /// Its bytes are written (always, for buffered records).
    done: bool,
}

/// A large record reserved in a segment, to be written outside the writer
/// lock by [`LargeWrite::write`], then completed by [`Journal::complete`].
#[derive(Debug)]
pub struct LargeWrite {
    pub seq: u64,
    /// Journal location of its header.
    pub location: u64,
    file: Arc<dyn StorageBackend>,
    position: u64,
    head: [u8; RECORD_HEADER_LEN],
    padding: usize,
    /// The journal's [`Journal::copying`].
    copying: Arc<Mutex<()>>,
}

impl LargeWrite {
    /// Writes the record (header, `payload`, padding) in one vectored call,
    /// one large record of the journal at a time. Call without the writer
    /// lock.
    pub fn write(&self, payload: &[u8]) -> io::Result<()> {
        let _one_at_a_time = self.copying.lock();
        self.file.write_vectored_at(&[&self.head, payload, &[0; 8][..self.padding]], self.position)
    }
}

/// Where [`Journal::append`] put a record.
#[derive(Debug)]
pub enum Appended {
    /// In the write buffer (or written): `visible` if every earlier record
    /// is, so the head may move to it now.
    Buffered { location: u64, visible: bool },
    /// Reserved: the caller writes it without the lock, then completes it.
    Reserved(LargeWrite),
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("segment_number", &self.segment_number)
            .field("position", &self.position)
            .field("buffered_bytes", &self.buffer.len())
            .field("unsynced_segments", &self.unsynced.len())
            .finish_non_exhaustive()
    }
}

/// What a flush captured under the writer lock and must now make durable.
#[derive(Debug)]
pub struct SyncTicket {
    files: Vec<Arc<dyn StorageBackend>>,
    /// The last record covered (seq 0: none).
    pub mark: DurableMark,
}

impl SyncTicket {
    /// fdatasync of every file the ticket covers. Call without the writer lock.
    pub fn sync(&self) -> io::Result<()> {
        for file in &self.files {
            file.sync()?;
        }
        Ok(())
    }
}

impl Journal {
    /// The file of segment `number` (NotFound once it was reclaimed).
    pub(crate) fn segment(&self, number: u64) -> io::Result<Arc<dyn StorageBackend>> {
        self.segments.read().get(&number).map(|segment| segment.file.clone()).ok_or_else(missing_segment)
    }

    /// Walks the records of segment `number` in order and hands `each`
    /// every record whose payload overlaps one of `wanted` (journal
    /// locations of payload bytes, `[start, end)`, sorted by start): its
    /// header, its payload's journal location, and the payload if its
    /// crc32c checks out, else `None`. The walk ends at the file's end or
    /// at a header that does not decode; what it did not reach was not
    /// handed out (the caller treats it as unchecked). Payloads no range
    /// wants are skipped unread where they are not in the read buffer.
    pub(crate) fn check_records(
        &self,
        number: u64,
        wanted: &[(u64, u64)],
        mut each: impl FnMut(&RecordHeader, u64, Option<&[u8]>) -> io::Result<()>,
    ) -> io::Result<()> {
        let Some(&(_, last_wanted)) = wanted.iter().max_by_key(|range| range.1) else {
            return Ok(());
        };
        let mut reader = SegmentReader::new(self.segment(number)?)?;
        let mut position = SEGMENT_HEADER_LEN as u64;
        let mut next = 0;
        while layout::location(number, position) < last_wanted {
            let Some(head) = reader.get(position, RECORD_HEADER_LEN)? else { break };
            let Ok((header, _)) = RecordHeader::decode(head) else { break };
            let payload_at = layout::location(number, position + RECORD_HEADER_LEN as u64);
            let payload_end = payload_at + u64::from(header.payload_length);
            while next < wanted.len() && wanted[next].1 <= payload_at {
                next += 1;
            }
            if next < wanted.len() && wanted[next].0 < payload_end && header.payload_length > 0 {
                let length = header.payload_length as usize;
                let payload = reader
                    .get(position + RECORD_HEADER_LEN as u64, length)?
                    .filter(|payload| crc32c::crc32c(payload) == header.payload_crc);
                each(&header, payload_at, payload)?;
            }
            position += layout::record_span(header.payload_length as usize);
        }
        Ok(())
    }

    /// Bytes of all segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    /// Spare files kept for reuse, the cleaner's reserve included.
    pub fn spare_count(&self) -> usize {
        // One lock at a time: reclaim takes reserve, then spares.
        let reserve = usize::from(self.reserve.lock().is_some());
        self.spares.lock().len() + reserve
    }

    /// Keeps one spare file as the cleaner's reserve (`keep`: base segments
    /// hold live data, so cleaning may need space), or gives it back to the
    /// spares. Takes a spare for it at once if there is one.
    pub fn set_keep_reserve(&self, keep: bool) {
        self.keep_reserve.store(keep, Ordering::Relaxed);
        let mut reserve = self.reserve.lock();
        let mut spares = self.spares.lock();
        if keep && reserve.is_none() {
            *reserve = spares.pop();
        } else if !keep && let Some(name) = reserve.take() {
            spares.push(name);
        }
    }

    /// Removes the cleaner's reserve file, freeing its space for a clean
    /// (or fold) that ran out of space; whether there was one.
    pub fn release_reserve(&self) -> bool {
        let Some(name) = self.reserve.lock().take() else {
            return false;
        };
        if let Err(error) = self.fs.remove_file(&format!("{}/{name}", self.dir)) {
            tracing::warn!(dir = self.dir, name, %error, "cannot remove the cleaner's reserve file");
            return false;
        }
        tracing::warn!(dir = self.dir, "out of disk space: the cleaner's reserve file removed");
        true
    }

    /// Spare files made ahead since the journal was opened.
    pub fn made_count(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    /// Segments started in a spare file since the journal was opened.
    pub fn recycled_count(&self) -> u64 {
        self.recycled.load(Ordering::Relaxed)
    }

    /// Whether a segment was started since the last call (cheap when not).
    pub fn take_rolled(&self) -> bool {
        self.rolled.load(Ordering::Relaxed) && self.rolled.swap(false, Ordering::Relaxed)
    }

    /// Whether a segment started since the last call and left the journal
    /// without a spare file, in a journal past its first segment: the cue
    /// to make spares ahead ([`Self::prepare_spare`]). A journal whose
    /// reclaimed segments keep the spares coming never asks, and a volume
    /// that wrote less than two segments never gets any.
    pub fn take_short_of_spares(&self) -> bool {
        self.short_of_spares() && self.short_of_spares.swap(false, Ordering::Relaxed)
    }

    /// [`Self::take_short_of_spares`] without taking it.
    pub fn short_of_spares(&self) -> bool {
        self.short_of_spares.load(Ordering::Relaxed)
    }

    /// The target size of new segments.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes.load(Ordering::Relaxed)
    }

    /// Sets the target size of segments started from now on (at least one
    /// record always fits: a bigger record gets a segment of its own).
    pub fn set_segment_bytes(&self, bytes: u64) {
        self.segment_bytes.store(segment_size(bytes), Ordering::Relaxed);
    }

    /// The segments in order, the current (last) one included.
    pub fn segment_infos(&self) -> Vec<SegmentInfo> {
        let segments = self.segments.read();
        let mut infos: Vec<SegmentInfo> = Vec::with_capacity(segments.len());
        let mut others = 0;
        let last = segments.keys().next_back().copied();
        for (&number, segment) in segments.iter() {
            let bytes = if Some(number) == last { 0 } else { segment.file.len().unwrap_or(0) };
            others += bytes;
            infos.push(SegmentInfo { number, first_seq: segment.first_seq, bytes });
        }
        if let Some(current) = infos.last_mut() {
            current.bytes = self.bytes().saturating_sub(others);
        }
        infos
    }

    /// Removes the segments that hold only records at or before `base_seq`
    /// (folded, so durable) and that the base map does not point into
    /// (`live`: segment number → live bytes): every segment whose successor
    /// starts at or before `base_seq + 1` and is not in `live`, wherever it
    /// is. The current segment always stays. Their files become spares (up
    /// to the configured number) or are removed. The caller has made a base
    /// map that no longer points into them durable, and guarantees that no
    /// reader still needs them.
    ///
    /// Crash cases: a rename or removal that did not reach the disk leaves a
    /// segment before the journal's start that the durable base map does
    /// not point into; recovery reclaims it again.
    pub fn reclaim(&self, base_seq: u64, live: &BTreeMap<u64, u64>) -> io::Result<Reclaimed> {
        let doomed: Vec<(u64, Segment)> = {
            let mut segments = self.segments.write();
            let starts: Vec<(u64, u64)> = segments.iter().map(|(&n, s)| (n, s.first_seq)).collect();
            starts
                .windows(2)
                .filter(|pair| pair[1].1 <= base_seq + 1 && !live.contains_key(&pair[0].0))
                .map(|pair| pair[0].0)
                .collect::<Vec<u64>>()
                .into_iter()
                .map(|n| (n, segments.remove(&n).expect("listed above")))
                .collect()
        };
        let mut reclaimed = Reclaimed::default();
        if doomed.is_empty() {
            return Ok(reclaimed);
        }
        // A segment finished since the last sync may still wait for one: its
        // records are all durable (folded), so drop it from that list.
        self.writer
            .lock()
            .unsynced
            .retain(|file| !doomed.iter().any(|(_, segment)| Arc::ptr_eq(&segment.file, file)));
        for (number, segment) in doomed {
            let bytes = segment.file.len()?;
            let _ = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |total| {
                Some(total.saturating_sub(bytes))
            });
            reclaimed.segments += 1;
            reclaimed.bytes += bytes;
            let path = format!("{}/{}", self.dir, segment_name(number));
            let mut reserve = self.reserve.lock();
            let mut spares = self.spares.lock();
            if !was_lent(&self.dir, number)
                && spares.len() + usize::from(reserve.is_some()) < self.options.spare_segments
            {
                let name = spare_name(number);
                self.fs.rename(&path, &format!("{}/{name}", self.dir))?;
                if reserve.is_none() && self.keep_reserve.load(Ordering::Relaxed) {
                    *reserve = Some(name);
                } else {
                    spares.push(name);
                }
                reclaimed.spared += 1;
            } else {
                drop((spares, reserve));
                remove_segment(self.fs.as_ref(), &self.dir, number)?;
            }
        }
        Ok(reclaimed)
    }

    /// Lends the files that hold journal bytes, for a reader that sends
    /// them from the files themselves (`sendfile(2)`) after it let go of
    /// the volume. `pieces` are (location, length), each within one record;
    /// for each: its file, the file's descriptor and the bytes' position in
    /// it, if `accept` (given descriptor, position and length) takes every
    /// piece. `None` when some bytes are not in their file yet, a file is no
    /// real file, or `accept` declined one (then nothing is marked).
    ///
    /// Written records never change in their segment file; only a reused
    /// segment file would be overwritten. A lent segment is therefore never
    /// reused: [`Self::reclaim`] removes it (the pages a socket holds stay
    /// as they were), also when a journal reopened over the same files
    /// reclaims it. Call with a read plan that names these bytes, made
    /// under the volume's gate: a fold that stops pointing at them swaps
    /// its map under the gate, so the segments are still listed here (a
    /// lookup that fails declines the loan).
    pub fn lend(
        &self,
        pieces: &[(u64, u64)],
        mut accept: impl FnMut(RawFd, u64, u64) -> bool,
    ) -> Option<Vec<LentRun>> {
        let written_below = self.written_below.load(Ordering::Acquire);
        let segments = self.segments.read();
        let mut lent = Vec::with_capacity(pieces.len());
        let mut numbers = Vec::with_capacity(pieces.len());
        for &(location, length) in pieces {
            if location.checked_add(length)? > written_below {
                return None;
            }
            let (number, position) = layout::split_location(location);
            let segment = segments.get(&number)?;
            let fd = segment.file.raw_fd()?;
            if !accept(fd, position, length) {
                return None;
            }
            lent.push((segment.file.clone(), fd, position));
            numbers.push(number);
        }
        let mut registry = LENT.lock();
        for number in numbers {
            registry.insert((self.dir.clone(), number));
        }
        Some(lent)
    }

    /// Reads journal bytes at `location` (they must lie within one record):
    /// written ones from the segment's mapping (`crate::mapped`) when it
    /// can, else with a read of the file.
    pub fn read(&self, location: u64, buf: &mut [u8]) -> io::Result<()> {
        if location + buf.len() as u64 <= self.written_below.load(Ordering::Acquire) {
            let (number, position) = layout::split_location(location);
            // The copy runs outside the segment table's lock (a page may
            // have to be read in); the reader's hold on the volume's gate
            // keeps the file from being reused meanwhile, as for `pread`.
            let source = {
                let segments = self.segments.read();
                let segment = segments.get(&number).ok_or_else(missing_segment)?;
                segment.mapping(self.segment_bytes()).ok_or_else(|| segment.file.clone())
            };
            return match source {
                Ok(mapping) if mapping.copy(position, buf) => Ok(()),
                // A page could not be read in: the file says why.
                Ok(_) => self.segment(number)?.read_at(buf, position),
                Err(file) => file.read_at(buf, position),
            };
        }
        let writer = self.writer.lock();
        let (number, position) = layout::split_location(location);
        if number == writer.segment_number && position >= writer.buffer_start {
            let at = (position - writer.buffer_start) as usize;
            let source = writer
                .buffer
                .get(at..at + buf.len())
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "read past the journal's end"))?;
            buf.copy_from_slice(source);
            return Ok(());
        }
        drop(writer);
        self.segment(number)?.read_at(buf, position)
    }

    /// Fills the payload's crc32c (and blake3 when hashed inline) into
    /// `header`. Call before taking the writer lock: it is the costly part.
    pub fn seal_payload(&self, header: &mut RecordHeader, payload: &[u8]) {
        header.payload_crc = crc32c::crc32c(payload);
        if self.options.inline_blake3 {
            header.flags |= FLAG_BLAKE3;
            header.blake3 = *blake3::hash(payload).as_bytes();
        }
    }

    /// Appends one record whose payload is sealed ([`Self::seal_payload`]).
    /// The caller holds the writer lock (`writer`) and assigns seqs in
    /// order. A record of more than a quarter of the buffer is only
    /// reserved: its bytes are written by the caller after releasing the
    /// lock ([`LargeWrite::write`], then [`Self::complete`]), so that
    /// writers of large records do not serialize on the copy.
    ///
    /// The record's bytes are allocated on disk first: without the space
    /// it fails with [`AppendError::NoSpace`] and nothing changed.
    pub fn append(
        &self,
        writer: &mut Writer,
        header: &mut RecordHeader,
        payload: &[u8],
    ) -> Result<Appended, AppendError> {
        check_seqs(header.seq, 1).map_err(AppendError::Io)?;
        let span = layout::record_span(payload.len());
        if writer.segment.is_none()
            || (writer.position > SEGMENT_HEADER_LEN as u64
                && writer.position + span > self.segment_bytes.load(Ordering::Relaxed))
        {
            self.roll(writer, header.seq, span)?;
        } else {
            self.reserve(writer, writer.position + span)?;
        }
        debug_assert!(writer.position + span <= writer.allocated);
        header.payload_length = payload.len() as u32;
        header.chain = writer.chain;
        debug_assert_eq!(header.payload_crc, crc32c::crc32c(payload));
        let location = layout::location(writer.segment_number, writer.position);
        let padding = (span as usize) - RECORD_HEADER_LEN - payload.len();
        let end = layout::location(writer.segment_number, writer.position + span);
        if span as usize <= self.options.buffer_bytes / 4 {
            if writer.buffer.len() + span as usize > self.options.buffer_bytes {
                self.write_out(writer).map_err(AppendError::Io)?;
            }
            let at = writer.buffer.len();
            writer.buffer.resize(at + RECORD_HEADER_LEN, 0);
            let crc = header.encode(&mut writer.buffer[at..]);
            writer.buffer.extend_from_slice(payload);
            writer.buffer.extend_from_slice(&[0; 8][..padding]);
            writer.chain = crc;
            writer.last_location = location;
            writer.position += span;
            writer.last_seq = header.seq;
            writer.unsynced_bytes += span;
            self.bytes.fetch_add(span, Ordering::Relaxed);
            let visible = writer.pending.is_empty();
            if !visible {
                let mark =
                    DurableMark { seq: header.seq, chain: crc, last_location: location, end_location: end };
                writer.pending.push_back(Pending { mark, done: true });
            }
            return Ok(Appended::Buffered { location, visible });
        }
        // Everything before the reserved bytes goes to the file first, so
        // that the region's start is where the written part ends (no zeros
        // ahead: the record is about to go there).
        self.write_buffer(writer, false).map_err(AppendError::Io)?;
        if writer.pending.is_empty() {
            writer.visible = self.last_mark(writer);
        }
        let mut head = [0; RECORD_HEADER_LEN];
        let crc = header.encode(&mut head);
        let segment = writer.segment.clone().expect("rolled above");
        writer.current_dirty = true;
        let large = LargeWrite {
            seq: header.seq,
            location,
            file: segment,
            position: writer.position,
            head,
            padding,
            copying: self.copying.clone(),
        };
        let mark = DurableMark { seq: header.seq, chain: crc, last_location: location, end_location: end };
        writer.pending.push_back(Pending { mark, done: false });
        writer.chain = crc;
        writer.last_location = location;
        writer.position += span;
        writer.buffer_start = writer.position;
        writer.last_seq = header.seq;
        writer.unsynced_bytes += span;
        self.bytes.fetch_add(span, Ordering::Relaxed);
        Ok(Appended::Reserved(large))
    }

    /// Marks a reserved record written (its file needs a sync again) and
    /// makes visible every record up to the first one still being written.
    /// Returns the new last visible seq, if it moved. Call with the writer
    /// lock, after [`LargeWrite::write`] succeeded.
    pub fn complete(&self, writer: &mut Writer, large: &LargeWrite) -> Option<u64> {
        if let Some(entry) = writer.pending.iter_mut().find(|entry| entry.mark.seq == large.seq) {
            entry.done = true;
        }
        // A flush since the reservation may have synced this file without
        // these bytes: it must be synced again.
        let current = writer.segment.as_ref().is_some_and(|segment| Arc::ptr_eq(segment, &large.file));
        if current {
            writer.current_dirty = true;
        } else if !writer.unsynced.iter().any(|file| Arc::ptr_eq(file, &large.file)) {
            writer.unsynced.push(large.file.clone());
        }
        let mut moved = None;
        while writer.pending.front().is_some_and(|entry| entry.done) {
            let entry = writer.pending.pop_front().expect("checked");
            writer.visible = entry.mark;
            moved = Some(entry.mark.seq);
        }
        self.settle_written_below(writer);
        moved
    }

    /// The mark of the last record appended.
    fn last_mark(&self, writer: &Writer) -> DurableMark {
        DurableMark {
            seq: writer.last_seq,
            chain: writer.chain,
            last_location: writer.last_location,
            end_location: layout::location(writer.segment_number, writer.position),
        }
    }

    /// The last visible record's mark (what a flush may cover).
    fn visible_mark(&self, writer: &Writer) -> DurableMark {
        if writer.pending.is_empty() { self.last_mark(writer) } else { writer.visible }
    }

    /// Publishes how far reads may go to the files without the lock: up to
    /// the buffer, or to the first record still being written.
    fn settle_written_below(&self, writer: &Writer) {
        let buffered = layout::location(writer.segment_number, writer.buffer_start);
        let unwritten = writer.pending.iter().find(|entry| !entry.done).map(|entry| entry.mark.last_location);
        let below = unwritten.map_or(buffered, |location| location.min(buffered));
        self.written_below.store(below, Ordering::Release);
    }

    /// Hands the buffered records to the segment file. On failure the buffer
    /// is kept, so reads of those records still work until the volume is
    /// reopened (they were never acknowledged durable).
    fn write_out(&self, writer: &mut Writer) -> io::Result<()> {
        self.write_buffer(writer, true)
    }

    /// [`Self::write_out`], with zeros ahead of the records when
    /// `zeros_ahead` and the journal's syncs call for them.
    fn write_buffer(&self, writer: &mut Writer, zeros_ahead: bool) -> io::Result<()> {
        if writer.buffer.is_empty() {
            return Ok(());
        }
        let segment = writer.segment.clone().expect("buffer implies a segment");
        writer.current_dirty = true;
        if zeros_ahead {
            self.zero_ahead(writer, segment.as_ref())?;
        }
        segment.write_at(&writer.buffer, writer.buffer_start)?;
        writer.buffer_start += writer.buffer.len() as u64;
        writer.buffer.clear();
        self.settle_written_below(writer);
        Ok(())
    }

    /// Writes zeros ahead of the buffer's records when syncs are frequent
    /// and the file's filesystem converts allocated blocks at a sync
    /// ([`JournalOptions::zero_ahead_bytes`]):
    /// from the buffer's end (or where earlier zeros end) up to
    /// `zero_ahead_bytes` further, never past the allocated space, from
    /// the first block with no data written (a reused file's old records
    /// are written blocks already). The reserved region past the records
    /// reads as zeros or stale bytes either way, and is cut when the
    /// segment is finished.
    fn zero_ahead(&self, writer: &mut Writer, segment: &dyn StorageBackend) -> io::Result<()> {
        let end = writer.buffer_start + writer.buffer.len() as u64;
        let step = self.options.zero_ahead_bytes;
        if step == 0 || !writer.converts || writer.bytes_per_sync > SYNC_HEAVY_BYTES || end <= writer.zeroed {
            return Ok(());
        }
        let from = writer.zeroed.max(end);
        let to = from.saturating_add(step).min(writer.allocated);
        // Blocks written already (a reused file's old records) need none.
        let hole = segment.next_hole(from).max(from);
        if to > hole {
            crate::backend::fill_zeros(segment, hole, to - hole)?;
        }
        writer.zeroed = to.max(end);
        Ok(())
    }

    /// Makes room for `total` bytes of records appended back to back (one
    /// write split into several records), so that either all of them are
    /// appended or none: if they fit in one segment but not in what is
    /// left of the current one, starts the next segment now; then reserves
    /// their space. Records too big together for one segment are reserved
    /// one at a time by [`Self::append`] (a lack of space may then refuse a
    /// later one after earlier ones were appended).
    pub fn reserve_records(&self, writer: &mut Writer, total: u64) -> Result<(), AppendError> {
        let limit = self.segment_bytes.load(Ordering::Relaxed);
        if SEGMENT_HEADER_LEN as u64 + total > limit {
            return Ok(());
        }
        if writer.segment.is_none()
            || (writer.position > SEGMENT_HEADER_LEN as u64 && writer.position + total > limit)
        {
            self.roll(writer, writer.last_seq + 1, total)
        } else {
            self.reserve(writer, writer.position + total)
        }
    }

    /// Allocates the current segment's file up to at least segment
    /// position `end`. Nothing changes when it fails.
    fn reserve(&self, writer: &mut Writer, end: u64) -> Result<(), AppendError> {
        if end <= writer.allocated {
            return Ok(());
        }
        let segment = writer.segment.clone().expect("a segment to reserve in");
        writer.allocated = self.allocate_ahead(segment.as_ref(), writer.allocated, end)?;
        Ok(())
    }

    /// Allocates `file` from `allocated` to at least `end`: a whole
    /// [`JournalOptions::reserve_bytes`] ahead (up to the segment size)
    /// when the space is there, else exactly to `end`; past a lack of
    /// space, this journal's spare files are removed (they only save page
    /// allocations) and it tries again, then the other journals' in the
    /// store ([`SparePool`]). Returns the new allocated end.
    fn allocate_ahead(
        &self,
        file: &dyn StorageBackend,
        allocated: u64,
        end: u64,
    ) -> Result<u64, AppendError> {
        if end <= allocated {
            return Ok(allocated);
        }
        let limit = self.segment_bytes.load(Ordering::Relaxed).max(end);
        let ahead = allocated.saturating_add(self.options.reserve_bytes).min(limit).max(end);
        // This journal's spares are released first, then one other
        // journal's at a time, until the allocation fits or none is left.
        let mut own_released = false;
        loop {
            let mut no_space = match file.allocate(allocated, ahead - allocated) {
                Ok(()) => return Ok(ahead),
                Err(error) => AppendError::allocation(error),
            };
            if ahead > end && matches!(no_space, AppendError::NoSpace(_)) {
                no_space = match file.allocate(allocated, end - allocated) {
                    Ok(()) => return Ok(end),
                    Err(error) => AppendError::allocation(error),
                };
            }
            if !matches!(no_space, AppendError::NoSpace(_)) {
                return Err(no_space);
            }
            // Try again after a release that removed files.
            let mut freed = 0;
            if !own_released {
                own_released = true;
                freed = self.release_spares();
            }
            if freed == 0 {
                freed = self.release_others_spares();
            }
            if freed == 0 {
                return Err(no_space);
            }
        }
    }

    /// Removes every spare segment file but the cleaner's reserve, freeing
    /// its space; returns how many there were.
    fn release_spares(&self) -> usize {
        let count = self.spares.release();
        if count > 0 {
            tracing::warn!(dir = self.dir, count, "journal out of disk space: spare segment files removed");
        }
        count
    }

    /// Removes the spare files of another journal of the store that has
    /// some (its cleaner's reserve stays); returns how many there were.
    fn release_others_spares(&self) -> usize {
        let count = self.pool.get().map_or(0, |pool| pool.release_another(&self.spares));
        if count > 0 {
            tracing::warn!(
                dir = self.dir,
                count,
                "journal out of disk space: other volumes' spare segment files removed"
            );
        }
        count
    }

    /// Joins the store's pool of spare files: from now on this journal
    /// may free the others' spares when out of space, and they its.
    pub fn join_pool(&self, pool: &Arc<SparePool>) {
        if self.pool.set(pool.clone()).is_ok() {
            let mut members = pool.members.lock();
            members.retain(|member| member.strong_count() > 0);
            members.push(Arc::downgrade(&self.spares));
        }
    }

    /// Forgets the spare files (without removing them) and leaves the
    /// pool: the volume is being reopened or deleted, and its directory's
    /// files are no longer this journal's to use or remove.
    pub fn close_spares(&self) {
        self.spares.closed.store(true, Ordering::Release);
        self.spares.lock().clear();
    }

    /// Makes one more spare file, a whole segment long and prepared
    /// ([`StorageBackend::prepare`]: zeros written on tmpfs, space
    /// allocated on disks), if the journal keeps fewer spares than
    /// [`JournalOptions::spare_segments`]. Returns whether it made one.
    ///
    /// A growing journal has no reclaimed files to reuse, so each new
    /// segment's writes would allocate its pages under the file's lock;
    /// the store's spare thread calls this off the write path instead
    /// (docs/journal.md, "Spare files made ahead").
    ///
    /// The file gets a segment number never used before, so it can never
    /// be mistaken for a segment. It reads as zeros only: a crash part way
    /// leaves a shorter spare, which recovery keeps or removes like any.
    pub fn prepare_spare(&self) -> io::Result<bool> {
        if self.spare_count() >= self.options.spare_segments {
            return Ok(false);
        }
        let number = self.writer.lock().take_number()?;
        let name = spare_name(number);
        let path = format!("{}/{name}", self.dir);
        let prepared = self
            .fs
            .open_file(&path, true)
            .and_then(|file| file.prepare(self.segment_bytes.load(Ordering::Relaxed)));
        if let Err(error) = prepared {
            let _ = self.fs.remove_file(&path);
            return Err(error);
        }
        // Lock order as in reclaim: reserve, then spares. A prepared file
        // never becomes the cleaner's reserve, which the writer never
        // frees: that one comes from a reclaimed segment (no new space).
        let reserve = self.reserve.lock();
        let mut spares = self.spares.lock();
        if spares.len() + usize::from(reserve.is_some()) >= self.options.spare_segments {
            drop((spares, reserve));
            self.fs.remove_file(&path)?;
            return Ok(false);
        }
        spares.push(name);
        self.made.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Starts a new segment whose first record will be `first_seq` and
    /// reserves space for its header and `span` bytes of records, in a
    /// spare file when there is one.
    ///
    /// The new file is made ready (created or renamed from a spare,
    /// allocated, its directory entry synced) before the current segment is
    /// touched: if there is no space, the new file is removed (or the spare
    /// renamed back) and the journal goes on in the current segment, as if
    /// the call had not happened.
    ///
    /// Crash cases: the file may exist with a torn or missing header (or,
    /// reused, with its old header naming another segment number); then
    /// recovery finds no record in it, keeps the previous segment's tail and
    /// removes this file (or makes it a spare again).
    fn roll(&self, writer: &mut Writer, first_seq: u64, span: u64) -> Result<(), AppendError> {
        self.write_out(writer).map_err(AppendError::Io)?;
        // A number is never used twice, even by a file removed again below.
        let number = writer.take_number().map_err(AppendError::Io)?;
        let path = format!("{}/{}", self.dir, segment_name(number));
        let need = SEGMENT_HEADER_LEN as u64 + span;
        let mut spare = self.spares.lock().pop();
        if let Some(name) = &spare {
            // Reuse: rename, then overwrite from the start. Never truncate:
            // the point is to keep the file's pages (and so their space).
            if let Err(error) = self.fs.rename(&format!("{}/{name}", self.dir), &path) {
                if error.kind() != io::ErrorKind::NotFound {
                    self.spares.lock().push(name.clone());
                    return Err(AppendError::allocation(error));
                }
                // Removed meanwhile (another journal's release for space
                // raced a reopen's listing): there is no spare after all.
                tracing::warn!(dir = self.dir, name, "a spare segment file was gone; starting a new file");
                spare = None;
            }
        }
        let prepared = match &spare {
            Some(name) => {
                let spare_path = format!("{}/{name}", self.dir);
                let prepared = self
                    .fs
                    .open_file(&path, false)
                    .and_then(|file| Ok((spare_allocated(file.len()?), file)))
                    .map_err(AppendError::Io)
                    .and_then(|(allocated, file)| {
                        Ok((self.allocate_ahead(file.as_ref(), allocated, need)?, file))
                    });
                // Not synced: a crash may leave the spare under its new
                // name, with its old header; recovery makes it a spare again.
                if prepared.is_err() && self.fs.rename(&path, &spare_path).is_ok() {
                    self.spares.lock().push(name.clone());
                }
                prepared?
            }
            None => {
                let file = self.fs.open_file(&path, true).map_err(AppendError::allocation)?;
                let allocated = file
                    .set_len(0)
                    .map_err(AppendError::Io)
                    .and_then(|()| self.allocate_ahead(file.as_ref(), 0, need));
                match allocated {
                    Ok(allocated) => (allocated, file),
                    Err(error) => {
                        // Not synced: a crash may leave the empty file,
                        // which recovery removes.
                        let _ = self.fs.remove_file(&path);
                        return Err(error);
                    }
                }
            }
        };
        let (allocated, file) = prepared;
        // The segment's directory entry must be durable before any record in
        // it is acknowledged durable: sync the directory now, once per segment.
        self.fs.sync_dir(&self.dir).map_err(AppendError::Io)?;
        if let Some(segment) = writer.segment.clone() {
            if writer.recycled || writer.allocated > writer.position {
                // Cut what follows our records (stale bytes of a reused
                // file, zeros of the unused reservation) so recovery sees
                // this segment end at its file end. The truncation is
                // synced with the segment, before any record of the next
                // segment can be acknowledged durable.
                segment.set_len(writer.position).map_err(AppendError::Io)?;
                writer.current_dirty = true;
            }
            writer.segment = None;
            if writer.current_dirty {
                writer.unsynced.push(segment);
            }
        }
        writer.recycled = spare.is_some();
        if writer.recycled {
            self.recycled.fetch_add(1, Ordering::Relaxed);
        }
        self.segments.write().insert(number, Segment::new(file.clone(), first_seq));
        self.rolled.store(true, Ordering::Relaxed);
        if self.segments.read().len() >= 2 && self.spares.lock().is_empty() {
            self.short_of_spares.store(true, Ordering::Relaxed);
        }
        let header = SegmentHeader { volume_id: self.volume_id, number, first_seq, chain: writer.chain };
        writer.segment_number = number;
        writer.converts = file.converts_allocations();
        writer.segment = Some(file);
        writer.allocated = allocated;
        writer.zeroed = 0;
        writer.current_dirty = true;
        writer.buffer.clear();
        writer.buffer.extend_from_slice(&header.encode());
        self.bytes.fetch_add(SEGMENT_HEADER_LEN as u64, Ordering::Relaxed);
        writer.buffer_start = 0;
        writer.position = SEGMENT_HEADER_LEN as u64;
        self.settle_written_below(writer);
        Ok(())
    }

    /// Writes out the buffer and captures what a sync must cover: every
    /// visible record (records still being written outside the lock, and
    /// those after them, wait for a later sync). Call with the writer lock;
    /// then call [`SyncTicket::sync`] without it.
    pub fn prepare_sync(&self, writer: &mut Writer) -> io::Result<SyncTicket> {
        // How much each sync covers decides whether zeros go ahead.
        let covered = std::mem::take(&mut writer.unsynced_bytes);
        if covered > 0 {
            let average = writer.bytes_per_sync;
            writer.bytes_per_sync =
                if average == u64::MAX { covered } else { average - average / 8 + covered / 8 };
        }
        self.write_out(writer)?;
        let mut files = std::mem::take(&mut writer.unsynced);
        if writer.current_dirty
            && let Some(segment) = &writer.segment
        {
            files.push(segment.clone());
        }
        writer.current_dirty = false;
        Ok(SyncTicket { files, mark: self.visible_mark(writer) })
    }

    /// Reads and checks the whole record at `location` (header at the start).
    pub fn read_record(&self, location: u64) -> io::Result<(RecordHeader, Vec<u8>)> {
        let mut head = [0; RECORD_HEADER_LEN];
        self.read(location, &mut head)?;
        let (header, _) = RecordHeader::decode(&head).map_err(|fault| {
            io::Error::new(io::ErrorKind::InvalidData, format!("bad record header: {fault:?}"))
        })?;
        let mut payload = vec![0; header.payload_length as usize];
        self.read(location + RECORD_HEADER_LEN as u64, &mut payload)?;
        if crc32c::crc32c(&payload) != header.payload_crc {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "payload checksum mismatch"));
        }
        Ok((header, payload))
    }
}

/// The newest durable record, as a checkpoint chunk must name it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DurableMark {
    pub seq: u64,
    /// Header crc of record `seq`.
    pub chain: u32,
    /// Journal location of record `seq`'s header.
    pub last_location: u64,
    /// Journal location just after record `seq`.
    pub end_location: u64,
}

/// The index checkpoint file and how far it reaches.
#[derive(Debug)]
pub struct Checkpoint {
    fs: Arc<dyn Filesystem>,
    dir: String,
    file: Option<Arc<dyn StorageBackend>>,
    position: u64,
    /// First seq the file holds (= `next_seq` when it holds none).
    pub first_seq: u64,
    /// First seq not yet in the file.
    pub next_seq: u64,
    /// The newest durable record: a chunk may cover up to it.
    pub mark: Option<DurableMark>,
}

impl Checkpoint {
    /// Appends entries for seqs `next_seq..=mark.seq` (all durable) as one
    /// chunk. No sync: the file is a cache, every chunk has a crc, and
    /// recovery replays the journal past the last valid chunk. Does nothing
    /// when the file's next seq was folded away: [`Self::rewrite`] then.
    pub fn append(&mut self, index: &Index) -> io::Result<()> {
        let (Some(file), Some(mark)) = (self.file.clone(), self.mark) else {
            return Ok(());
        };
        let last_seq = mark.seq;
        if last_seq < self.next_seq || self.next_seq <= index.base_seq() {
            return Ok(());
        }
        let count = (last_seq - self.next_seq + 1) as usize;
        if count > INDEX_CHUNK_MAX_ENTRIES {
            // Only if checkpoints were skipped for very long; recovery just
            // replays more of the journal.
            self.file = None;
            return Ok(());
        }
        let mut chunk = vec![0; INDEX_CHUNK_HEADER_LEN + count * INDEX_ENTRY_LEN];
        for (i, seq) in (self.next_seq..=last_seq).enumerate() {
            let at = INDEX_CHUNK_HEADER_LEN + i * INDEX_ENTRY_LEN;
            index.checkpoint_entry(seq).encode(&mut chunk[at..]);
        }
        IndexChunkHeader {
            first_seq: self.next_seq,
            count: count as u32,
            chain: mark.chain,
            end_location: mark.end_location,
            last_location: mark.last_location,
        }
        .seal(&mut chunk);
        // On failure nothing advances, so nothing is appended after a chunk
        // that may be half written: the next chunk starts at the same place
        // (same first seq, more entries, so it covers every byte this one
        // wrote). A crash meanwhile leaves a chunk whose crc fails: recovery
        // replays more. So a full disk only pauses checkpoints.
        file.write_at(&chunk, self.position)?;
        self.position += chunk.len() as u64;
        self.next_seq = last_seq + 1;
        Ok(())
    }

    /// Whether the entries at or before `base_seq` (folded, useless) are at
    /// least as many as the live ones, or the file cannot continue past the
    /// base: then [`Self::rewrite`] pays for itself (amortized, the file is
    /// rewritten at most once per live entry appended).
    pub fn wants_rewrite(&self, base_seq: u64) -> bool {
        let folded = (base_seq + 1).saturating_sub(self.first_seq).min(self.next_seq - self.first_seq);
        let live = (self.next_seq - 1).saturating_sub(base_seq);
        self.mark.is_some_and(|mark| mark.seq > base_seq) && (folded >= live.max(1) || self.file.is_none())
    }

    /// Replaces the file by one chunk holding the entries of seqs
    /// `base_seq + 1..=mark.seq`, which `entries(first, last)` encodes (in
    /// batches, so the caller can take its index lock per batch).
    ///
    /// Crash cases: the new file is written and synced under another name,
    /// then renamed over the old one and the directory synced; a crash
    /// leaves the old file or the new one, never a mix (a leftover
    /// `index.new` is removed at open).
    pub fn rewrite(&mut self, base_seq: u64, mut entries: impl FnMut(u64, u64) -> Vec<u8>) -> io::Result<()> {
        let Some(mark) = self.mark.filter(|mark| mark.seq > base_seq) else {
            return Ok(());
        };
        let count = mark.seq - base_seq;
        if count > INDEX_CHUNK_MAX_ENTRIES as u64 {
            return Ok(());
        }
        let header = IndexChunkHeader {
            first_seq: base_seq + 1,
            count: count as u32,
            chain: mark.chain,
            end_location: mark.end_location,
            last_location: mark.last_location,
        };
        let mut head = [0; INDEX_CHUNK_HEADER_LEN];
        header.seal(&mut head);
        // The chunk crc covers header bytes 8..40, then the entries.
        let mut crc = crc32c::crc32c(&head[8..]);
        let new_path = format!("{}/{INDEX_NEW_FILE}", self.dir);
        let file = self.fs.open_file(&new_path, true)?;
        file.set_len(0)?;
        let mut position = INDEX_CHUNK_HEADER_LEN as u64;
        let mut seq = base_seq + 1;
        while seq <= mark.seq {
            let last = mark.seq.min(seq + (1 << 16) - 1);
            let batch = entries(seq, last);
            debug_assert_eq!(batch.len() as u64, (last - seq + 1) * INDEX_ENTRY_LEN as u64);
            crc = crc32c::crc32c_append(crc, &batch);
            file.write_at(&batch, position)?;
            position += batch.len() as u64;
            seq = last + 1;
        }
        head[4..8].copy_from_slice(&crc.to_le_bytes());
        file.write_at(&head, 0)?;
        file.sync()?;
        self.fs.rename(&new_path, &format!("{}/{INDEX_FILE}", self.dir))?;
        self.fs.sync_dir(&self.dir)?;
        self.file = Some(file);
        self.position = position;
        self.first_seq = base_seq + 1;
        self.next_seq = mark.seq + 1;
        Ok(())
    }

    /// Makes the checkpoint durable (on clean close, to skip replay).
    pub fn sync(&self) -> io::Result<()> {
        match &self.file {
            Some(file) => file.sync(),
            None => Ok(()),
        }
    }
}

/// What recovery found.
#[derive(Debug)]
pub struct Recovery {
    pub journal: Journal,
    pub checkpoint: Checkpoint,
    /// Records found in the index checkpoint.
    pub checkpointed: u64,
    /// Records replayed from the journal tail.
    pub replayed: u64,
    /// Bytes of the journal tail scanned.
    pub replayed_bytes: u64,
    /// Bytes cut off the tail (torn or stale records).
    pub cut_bytes: u64,
    /// Bytes of zeros past the last record (an unused space reservation)
    /// released.
    pub reserved_bytes: u64,
}

/// Whether `file` holds only zeros from `from` to `len` (its end).
fn zeros_to_end(file: &dyn StorageBackend, from: u64, len: u64) -> io::Result<bool> {
    let mut buffer = vec![0; (len.saturating_sub(from)).min(1 << 20) as usize];
    let mut at = from;
    while at < len {
        let step = (len - at).min(buffer.len() as u64) as usize;
        file.read_at(&mut buffer[..step], at)?;
        if buffer[..step].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        at += step as u64;
    }
    Ok(true)
}

fn invalid(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_owned())
}

/// Sequential reader over one segment with a large buffer.
struct SegmentReader {
    file: Arc<dyn StorageBackend>,
    file_len: u64,
    buffer: Vec<u8>,
    buffer_start: u64,
}

const REPLAY_READ_BYTES: usize = 8 << 20;

impl SegmentReader {
    fn new(file: Arc<dyn StorageBackend>) -> io::Result<Self> {
        let file_len = file.len()?;
        Ok(Self { file, file_len, buffer: Vec::new(), buffer_start: 0 })
    }

    /// `length` bytes at `position`, or None past the end of the file.
    fn get(&mut self, position: u64, length: usize) -> io::Result<Option<&[u8]>> {
        let end = position + length as u64;
        if end > self.file_len {
            return Ok(None);
        }
        let buffered_end = self.buffer_start + self.buffer.len() as u64;
        if position < self.buffer_start || end > buffered_end {
            let want = (self.file_len - position).min(REPLAY_READ_BYTES.max(length) as u64);
            self.buffer.resize(want as usize, 0);
            self.file.read_at(&mut self.buffer, position)?;
            self.buffer_start = position;
        }
        let at = (position - self.buffer_start) as usize;
        Ok(Some(&self.buffer[at..at + length]))
    }
}

fn snapshot_name(payload: &[u8]) -> Option<String> {
    std::str::from_utf8(payload).ok().map(str::to_owned)
}

/// Opens the journal of the volume in `dir`: loads the index checkpoint,
/// replays the tail into `index`, cuts off torn or stale bytes, and makes the
/// recovered tail durable. After it returns, every record in `index` is on
/// disk and synced.
///
/// `index` starts at the volume's base (`index.base_seq()`, from the base
/// map file): records at or before it are folded; they are read (the chain
/// runs through them) but not indexed, and segments holding only such
/// records are reclaimed.
pub fn recover(
    fs: Arc<dyn Filesystem>,
    dir: &str,
    volume_id: u128,
    options: JournalOptions,
    index: &mut Index,
) -> io::Result<Recovery> {
    let base_seq = index.base_seq();
    let names = fs.list_dir(dir)?;
    let mut segment_numbers: Vec<u64> = names.iter().filter_map(|name| parse_segment_name(name)).collect();
    segment_numbers.sort_unstable();
    let mut spares: Vec<String> =
        names.iter().filter(|name| parse_spare_name(name).is_some()).cloned().collect();
    // Each segment's header: its first seq, if it is one of ours.
    let mut segments = BTreeMap::new();
    let mut headers: BTreeMap<u64, SegmentHeader> = BTreeMap::new();
    for &number in &segment_numbers {
        let file = fs.open_file(&format!("{dir}/{}", segment_name(number)), false)?;
        let mut head = [0; SEGMENT_HEADER_LEN];
        if file.read_at(&mut head, 0).is_ok()
            && let Some(header) = SegmentHeader::decode(&head)
            && header.volume_id == volume_id
            && header.number == number
        {
            headers.insert(number, header);
        }
        segments.insert(number, file);
    }
    // The retained journal starts in the last segment that starts at or
    // before the first record after the base: earlier ones are folded, and
    // kept only if the base map points into them.
    let start_segment =
        headers.iter().rev().find(|(_, header)| header.first_seq <= base_seq + 1).map(|(&number, _)| number);
    // Base data in a segment that is gone (or not ours) is damage: refuse
    // before anything is changed.
    let live: Vec<u64> = index.base_map().live_segments().keys().copied().collect();
    if let Some(&missing) = live.iter().find(|&&number| {
        headers.get(&number).is_none_or(|header| header.first_seq > base_seq || start_segment.is_none())
    }) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("base map points into segment {missing}, which is missing or damaged"),
        ));
    }

    // 1. The index checkpoint: valid chunks, in seq order, from the start.
    if fs.exists(&format!("{dir}/{INDEX_NEW_FILE}")) {
        // An unfinished rewrite: the old file is intact.
        fs.remove_file(&format!("{dir}/{INDEX_NEW_FILE}"))?;
    }
    let index_path = format!("{dir}/{INDEX_FILE}");
    let index_file = fs.open_file(&index_path, true)?;
    let index_bytes = {
        let len = index_file.len()? as usize;
        let mut bytes = vec![0; len];
        index_file.read_at(&mut bytes, 0)?;
        bytes
    };
    // Entries after the base, and the seq the file starts at.
    let mut entries: Vec<IndexEntry> = Vec::new();
    let mut file_first_seq = None;
    let mut next_in_file = 0u64;
    let mut valid_len = 0usize;
    let mut last_chunk: Option<IndexChunkHeader> = None;
    while let Some(chunk) = IndexChunkHeader::decode(&index_bytes[valid_len..]) {
        let len = chunk.chunk_len();
        let Some(bytes) = index_bytes.get(valid_len..valid_len + len) else {
            break;
        };
        let continues = match file_first_seq {
            None => (1..=base_seq + 1).contains(&chunk.first_seq),
            Some(_) => chunk.first_seq == next_in_file,
        };
        if !continues || !IndexChunkHeader::check(bytes) {
            break;
        }
        let decoded: Option<Vec<IndexEntry>> =
            bytes[INDEX_CHUNK_HEADER_LEN..].chunks_exact(INDEX_ENTRY_LEN).map(IndexEntry::decode).collect();
        let Some(decoded) = decoded else { break };
        let skip = (base_seq + 1).saturating_sub(chunk.first_seq).min(decoded.len() as u64) as usize;
        entries.extend_from_slice(&decoded[skip..]);
        file_first_seq.get_or_insert(chunk.first_seq);
        next_in_file = chunk.first_seq + u64::from(chunk.count);
        valid_len += len;
        last_chunk = Some(chunk);
    }
    // The checkpoint must reach past the base and agree with the journal:
    // the last entry's record is there with the crc the chunk names.
    // Otherwise replay everything.
    let mut trusted = None;
    if let Some(chunk) = last_chunk.filter(|_| next_in_file > base_seq + 1) {
        let last_seq = next_in_file - 1;
        let (number, position) = layout::split_location(chunk.last_location);
        let mut head = [0; RECORD_HEADER_LEN];
        let agrees = segments.get(&number).is_some_and(|file| file.read_at(&mut head, position).is_ok())
            && RecordHeader::decode(&head)
                .is_ok_and(|(header, crc)| header.seq == last_seq && crc == chunk.chain)
            && start_segment.is_some_and(|start| number >= start);
        if agrees {
            trusted = Some(chunk);
        } else {
            tracing::warn!(dir, "index checkpoint disagrees with the journal; replaying all of it");
        }
    }
    let journal = Journal {
        fs: fs.clone(),
        dir: dir.to_owned(),
        volume_id,
        options,
        segment_bytes: AtomicU64::new(segment_size(options.segment_bytes)),
        segments: RwLock::new(BTreeMap::new()),
        spares: Arc::new(Spares {
            fs: fs.clone(),
            dir: dir.to_owned(),
            names: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }),
        pool: OnceLock::new(),
        reserve: Mutex::new(None),
        keep_reserve: AtomicBool::new(false),
        recycled: AtomicU64::new(0),
        made: AtomicU64::new(0),
        rolled: AtomicBool::new(false),
        short_of_spares: AtomicBool::new(false),
        written_below: AtomicU64::new(0),
        copying: Arc::new(Mutex::new(())),
        bytes: AtomicU64::new(0),
        writer: Mutex::new(Writer {
            segment_number: 0,
            segment: None,
            position: 0,
            buffer: Vec::with_capacity(options.buffer_bytes),
            buffer_start: 0,
            chain: 0,
            last_location: 0,
            unsynced: Vec::new(),
            current_dirty: false,
            recycled: false,
            zeroed: 0,
            converts: false,
            unsynced_bytes: 0,
            bytes_per_sync: u64::MAX,
            allocated: 0,
            highest_number: None,
            last_seq: base_seq,
            pending: VecDeque::new(),
            visible: DurableMark::default(),
        }),
    };
    let mut last_location = trusted.map_or(0, |chunk| chunk.last_location);
    let (mut chain, mut next_seq, mut replay_from, checkpointed) = match trusted {
        Some(chunk) => {
            for entry in &entries {
                let name = match entry.kind {
                    RecordKind::Snapshot | RecordKind::SnapshotDelete => {
                        let mut payload = vec![0; entry.payload_length as usize];
                        let (number, position) = layout::split_location(entry.location);
                        segments
                            .get(&number)
                            .ok_or_else(|| invalid("index checkpoint names a missing segment"))?
                            .read_at(&mut payload, position + RECORD_HEADER_LEN as u64)?;
                        snapshot_name(&payload)
                    }
                    _ => None,
                };
                index.insert(
                    &NewRecord {
                        kind: entry.kind,
                        offset: entry.offset,
                        length: entry.length,
                        location: entry.location,
                        payload_length: entry.payload_length,
                        time: entry.time,
                    },
                    name.as_deref(),
                );
            }
            (
                chunk.chain,
                next_in_file,
                Some(layout::split_location(chunk.end_location)),
                entries.len() as u64,
            )
        }
        None => {
            valid_len = 0;
            file_first_seq = None;
            (0, base_seq + 1, None, 0)
        }
    };
    drop(entries);

    // 2. Replay the tail, segment by segment, while records chain.
    let mut replayed = 0u64;
    let mut replayed_bytes = 0u64;
    let mut cut_bytes = 0u64;
    let mut reserved_bytes = 0u64;
    // The segment that ends the journal and where its records end.
    let mut end: Option<(u64, u64)> = None;
    // Earlier segments with bytes past their records, and where these end.
    let mut tails: Vec<(u64, u64)> = Vec::new();
    let mut touched: Vec<u64> = Vec::new();
    let numbers: Vec<u64> = segments.keys().copied().collect();
    let start_index = match (replay_from, start_segment) {
        (Some((number, _)), _) | (None, Some(number)) => numbers.iter().position(|&n| n == number),
        (None, None) => None,
    };
    let mut cursor = start_index.unwrap_or(numbers.len());
    if replay_from.is_some() && start_index.is_none() {
        return Err(invalid("index checkpoint names a missing segment"));
    }
    let mut first_segment = true;
    // The journal ended at a record whose payload fails its checksum while
    // the record after it is intact: damage, not a torn write at the end.
    let mut damaged_end = false;
    while cursor < numbers.len() {
        let number = numbers[cursor];
        let mut reader = SegmentReader::new(segments[&number].clone())?;
        let mut position = match replay_from.take() {
            Some((_, position)) => position,
            None => {
                // A segment continues the journal only if its header says
                // so. The first one read starts it: its header is trusted.
                let Some(header) = headers.get(&number) else { break };
                if first_segment {
                    chain = header.chain;
                    next_seq = header.first_seq;
                } else if *header != (SegmentHeader { volume_id, number, first_seq: next_seq, chain }) {
                    break;
                }
                SEGMENT_HEADER_LEN as u64
            }
        };
        first_segment = false;
        touched.push(number);
        while let Some(head) = reader.get(position, RECORD_HEADER_LEN)? {
            if position + RECORD_HEADER_LEN as u64 > layout::LOCATION_POSITION_MASK {
                // Only a segment size over 4 GiB, which no version configures
                // by default and this one caps, could have put records here.
                return Err(invalid(
                    "a segment holds records past 4 GiB, more than a journal location can name",
                ));
            }
            let Ok((header, crc)) = RecordHeader::decode(head) else {
                break;
            };
            if header.seq != next_seq || header.chain != chain {
                break;
            }
            let payload_at = position + RECORD_HEADER_LEN as u64;
            let Some(payload) = reader.get(payload_at, header.payload_length as usize)? else {
                break;
            };
            if crc32c::crc32c(payload) != header.payload_crc {
                let after = position + layout::record_span(header.payload_length as usize);
                damaged_end = reader
                    .get(after, RECORD_HEADER_LEN)?
                    .and_then(|next| RecordHeader::decode(next).ok())
                    .is_some_and(|(next, _)| next.seq == next_seq + 1 && next.chain == crc);
                break;
            }
            let span = layout::record_span(header.payload_length as usize);
            if header.seq > base_seq {
                let name = match header.kind {
                    RecordKind::Snapshot | RecordKind::SnapshotDelete => snapshot_name(payload),
                    _ => None,
                };
                index.insert(
                    &NewRecord {
                        kind: header.kind,
                        offset: header.offset,
                        length: header.length,
                        location: layout::location(number, position),
                        payload_length: header.payload_length,
                        time: header.time,
                    },
                    name.as_deref(),
                );
                replayed += 1;
            }
            last_location = layout::location(number, position);
            position += span;
            replayed_bytes += span;
            chain = crc;
            next_seq += 1;
        }
        end = Some((number, position));
        cursor += 1;
        // Continue into the next segment if this one ended cleanly at its
        // file end (the last record's zero padding may be missing: a torn
        // write can stop right after the payload), or if the next one's
        // header continues the journal exactly where this one's records
        // stop: what follows them here is then no record of ours (the
        // unused part of a space reservation, or a reused file's stale
        // bytes, whose cut a crash undid) and is cut off. A torn or damaged
        // record before the segment's last one ends the journal: the next
        // header names a later first seq.
        if position < reader.file_len {
            let continues = numbers.get(cursor).is_some_and(|&next| {
                headers.get(&next)
                    == Some(&SegmentHeader { volume_id, number: next, first_seq: next_seq, chain })
            });
            if !continues {
                break;
            }
            tails.push((number, position));
        }
    }

    // 3. Cut: truncate the last segment after its last good record, set
    // aside every later segment (they hold only unacknowledged records, or
    // history past a rotten record), reclaim every earlier folded one.
    let mut writer = journal.writer.lock();
    // The journal ends before the base only if a folded record was damaged;
    // the base map may point past it, into the rest of that segment, so the
    // segment is not cut (the next record starts a new segment below).
    let ends_before_base = next_seq <= base_seq;
    let cut = end.filter(|_| !ends_before_base);
    for &(number, position) in tails.iter().chain(&cut) {
        let file = segments[&number].clone();
        let len = file.len()?;
        if !damaged_end && cut == Some((number, position)) && len > position {
            // A damaged header (or several damaged records) hides where the
            // next record starts: look for one just after.
            damaged_end = intact_record_after(file.as_ref(), position, len, next_seq)?;
        }
        if damaged_end && cut == Some((number, position)) {
            // The records after the damaged one may have been acknowledged:
            // keep the whole segment aside before cutting it.
            let path = format!("{dir}/{}", segment_name(number));
            let aside = aside_path(fs.as_ref(), &path, next_seq);
            tracing::error!(
                dir,
                seq = next_seq,
                segment = number,
                aside,
                "a record fails its checksum and intact records follow it (damage after it was written): \
                 the journal ends before it; the whole segment is kept aside"
            );
            if let Err(error) =
                copy_file(fs.as_ref(), file.as_ref(), &aside, len).and_then(|()| fs.sync_dir(dir))
            {
                // Nothing cut: the volume is not opened (and not changed)
                // until there is room for the copy.
                let _ = fs.remove_file(&aside);
                return Err(io::Error::new(
                    error.kind(),
                    format!(
                        "cannot keep segment {number}, which holds a damaged record, aside as {aside}: {error}"
                    ),
                ));
            }
        }
        if len != position {
            // Cut a torn tail, a reservation's zeros or a reused file's
            // stale bytes, or restore the missing padding of the last
            // record, so the next record starts exactly at `position`.
            // (Which counter the bytes go to is all the scan decides: a
            // megabyte tells a reservation's or a prepared spare's zeros
            // from a torn tail without reading a whole segment.)
            if len > position && zeros_to_end(file.as_ref(), position, len.min(position + (1 << 20)))? {
                reserved_bytes += len - position;
            } else {
                cut_bytes += len.saturating_sub(position);
            }
            file.set_len(position)?;
        }
    }
    if let Some((number, position)) = end {
        writer.segment_number = number;
        writer.segment = Some(segments[&number].clone());
        writer.position = position;
        writer.buffer_start = position;
        // The file now ends at the records: the next append reserves.
        writer.allocated = position;
        writer.zeroed = position;
        writer.converts = segments[&number].converts_allocations();
    }
    // New segments are numbered after every file found (a segment that does
    // not continue the journal, e.g. one whose header was torn before
    // anything was synced, is set aside below).
    let spare_numbers = spares.iter().filter_map(|name| parse_spare_name(name));
    let aside_numbers = names.iter().filter_map(|name| parse_aside_name(name));
    writer.highest_number = numbers.iter().copied().chain(spare_numbers).chain(aside_numbers).max();
    if ends_before_base {
        // Nothing to continue from: the next record starts a new segment,
        // which recovery will then start from.
        writer.segment = None;
        end = None;
    }
    let keep_from = start_segment.unwrap_or(0);
    let keep_through = end.map(|(number, _)| number);
    let mut kept = BTreeMap::new();
    for (number, file) in segments {
        let path = format!("{dir}/{}", segment_name(number));
        if live.contains(&number) {
            // A base segment (or the start segment) the base map points into.
            let first_seq = headers[&number].first_seq;
            kept.insert(number, Segment::new(file, first_seq));
            continue;
        }
        if number < keep_from && start_segment.is_some() {
            // Folded: only records at or before the base. Lent by an
            // earlier journal of this process: never reused.
            if spares.len() < options.spare_segments && !was_lent(dir, number) {
                let name = spare_name(number);
                fs.rename(&path, &format!("{dir}/{name}"))?;
                spares.push(name);
            } else {
                remove_segment(fs.as_ref(), dir, number)?;
            }
            continue;
        }
        if keep_through.is_some_and(|kept| number <= kept) {
            let first_seq = headers.get(&number).map_or(next_seq, |header| header.first_seq);
            kept.insert(number, Segment::new(file, first_seq));
            continue;
        }
        let len = file.len().unwrap_or(0);
        // Nothing but zeros past the header: a segment started (its space
        // reserved) whose first records never landed.
        let empty = len <= SEGMENT_HEADER_LEN as u64
            || zeros_to_end(file.as_ref(), SEGMENT_HEADER_LEN as u64, len).unwrap_or(false);
        if empty {
            reserved_bytes += len;
        } else {
            cut_bytes += len;
        }
        // A reused spare whose new header never landed still carries the
        // header of the (older) segment it was.
        let mut head = [0; SEGMENT_HEADER_LEN];
        let reused_spare = !headers.contains_key(&number)
            && file.read_at(&mut head, 0).is_ok()
            && SegmentHeader::decode(&head)
                .is_some_and(|header| header.volume_id == volume_id && header.number < number);
        if empty {
            fs.remove_file(&path)?;
        } else if reused_spare && spares.len() < options.spare_segments {
            // A spare renamed into place whose new header never landed: it
            // holds only old, folded records.
            let name = spare_name(number);
            fs.rename(&path, &format!("{dir}/{name}"))?;
            spares.push(name);
        } else if reused_spare {
            fs.remove_file(&path)?;
        } else {
            // Normally only unacknowledged records live here. But if the
            // journal ended early because a synced record rotted, these
            // would be acknowledged history: keep them aside, never delete.
            let aside = aside_path(fs.as_ref(), &path, next_seq);
            tracing::warn!(dir, segment = number, len, aside, "segment past the journal's end set aside");
            fs.rename(&path, &aside)?;
        }
    }
    while spares.len() > options.spare_segments {
        let name = spares.pop().expect("more than the cap");
        fs.remove_file(&format!("{dir}/{name}"))?;
    }
    *journal.segments.write() = kept;
    *journal.spares.lock() = spares;
    writer.chain = chain;
    writer.last_location = last_location;
    writer.last_seq = base_seq.max(next_seq - 1);
    let mark = (next_seq > base_seq + 1 && end.is_some()).then(|| DurableMark {
        seq: next_seq - 1,
        chain,
        last_location,
        end_location: layout::location(writer.segment_number, writer.position),
    });
    journal.written_below.store(layout::location(writer.segment_number, writer.position), Ordering::Release);
    // 4. Make the recovered tail durable: after a kill -9 it may be only in
    // the page cache, and we are about to call it durable.
    for number in touched {
        if let Ok(file) = journal.segment(number) {
            file.sync()?;
        }
    }
    fs.sync_dir(dir)?;
    let mut total = 0;
    for (&number, segment) in journal.segments.read().iter() {
        total += if number == writer.segment_number && writer.segment.is_some() {
            writer.position
        } else {
            segment.file.len()?
        };
    }
    journal.bytes.store(total, Ordering::Relaxed);
    drop(writer);

    if (index_file.len()? as usize) > valid_len {
        index_file.set_len(valid_len as u64)?;
        index_file.sync()?;
    }
    let next_checkpoint_seq = if trusted.is_some() { next_in_file } else { base_seq + 1 };
    let checkpoint = Checkpoint {
        fs,
        dir: dir.to_owned(),
        file: Some(index_file),
        position: valid_len as u64,
        first_seq: file_first_seq.unwrap_or(next_checkpoint_seq),
        next_seq: next_checkpoint_seq,
        mark,
    };
    if replayed > 0 || cut_bytes > 0 {
        tracing::info!(
            dir,
            checkpointed,
            replayed,
            replayed_bytes,
            cut_bytes,
            reserved_bytes,
            "journal recovered"
        );
    }
    Ok(Recovery { journal, checkpoint, checkpointed, replayed, replayed_bytes, cut_bytes, reserved_bytes })
}
