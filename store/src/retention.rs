//! Retention: which history a volume keeps, and the files that record what
//! was folded away.
//!
//! A [`RetentionPolicy`] keeps every point of a recent window and bounds the
//! journal's bytes. When history falls out of the window, or the journal is
//! over its budget, the oldest retained point moves forward: the records at
//! or before it are folded into the base image ([`crate::base`]) and the
//! segments that held only them are reclaimed. Protected points (named
//! snapshots, clone bases, rollback targets still in use) are never folded
//! past. The fold itself is [`crate::Volume::enforce_retention`]; its commit
//! protocol and crash cases are in docs/journal.md ("Retention").
//!
//! This module holds the policy, the pure decisions (which seq a budget
//! needs, which seqs free whole segments) and the small files of the fold
//! protocol, each replaced whole and atomically.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{Filesystem, StorageBackend};
use crate::index::BaseState;
use crate::journal::SegmentInfo;
use crate::layout::{self, BaseMapFile, FoldIntent};

/// File name of the base image (a sparse raw image of the folded history).
pub const BASE_FILE: &str = "base";
/// File name of the base map: what the base image holds, as of which seq.
pub const BASE_MAP_FILE: &str = "base-map";
/// File name of the fold intent: a fold to its seq has begun.
pub const FOLD_FILE: &str = "fold";
/// Suffix of a file being replaced (renamed over the real one once synced).
const TEMPORARY_SUFFIX: &str = ".tmp";

/// How much journal a volume may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalBudget {
    /// At most this many bytes of journal segments.
    Bytes(u64),
    /// At most this percentage of the volume's current size.
    PercentOfSize(u32),
}

impl JournalBudget {
    /// The budget in bytes for a volume of `size` bytes.
    pub fn bytes(self, size: u64) -> u64 {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::PercentOfSize(percent) => {
                u64::try_from(u128::from(size) * u128::from(percent) / 100).unwrap_or(u64::MAX)
            }
        }
    }
}

/// Which history a volume keeps. Named snapshots and clone bases are kept
/// whatever the policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Every point younger than this is kept, unless the journal budget
    /// needs the space. `None`: time alone never folds anything.
    pub window: Option<Duration>,
    /// The journal's budget; past it the oldest points are folded even
    /// inside the window. `None`: unlimited.
    pub max_journal_bytes: Option<JournalBudget>,
}

impl Default for RetentionPolicy {
    /// A day of every write, and a journal of at most the volume's size:
    /// enough for one complete overwrite of the disk (say, ransomware
    /// encrypting all of it) without losing the point before it, while disk
    /// use stays bounded at about twice the volume (docs/journal.md).
    fn default() -> Self {
        Self {
            window: Some(Duration::from_secs(24 * 60 * 60)),
            max_journal_bytes: Some(JournalBudget::PercentOfSize(100)),
        }
    }
}

impl RetentionPolicy {
    /// Keep everything forever (the behaviour before retention existed).
    pub const KEEP_ALL: Self = Self { window: None, max_journal_bytes: None };

    /// The journal budget in bytes for a volume of `size` bytes.
    pub fn budget_bytes(&self, size: u64) -> Option<u64> {
        self.max_journal_bytes.map(|budget| budget.bytes(size))
    }

    /// The segment size that lets the budget be met in steps of an eighth
    /// (at least 1 MiB), but never above `configured`.
    pub fn segment_bytes(&self, size: u64, configured: u64) -> u64 {
        match self.budget_bytes(size) {
            Some(budget) => configured.min((budget / 8).max(1 << 20)),
            None => configured,
        }
    }
}

/// Wakes one of a store's background threads (retention, spares) early,
/// and stops it.
#[derive(Debug, Default)]
pub(crate) struct Wake {
    /// (woken, stopped)
    state: parking_lot::Mutex<(bool, bool)>,
    condvar: parking_lot::Condvar,
}

impl Wake {
    /// Asks for a pass soon.
    pub fn notify(&self) {
        self.state.lock().0 = true;
        self.condvar.notify_all();
    }

    /// Stops the thread.
    pub fn stop(&self) {
        self.state.lock().1 = true;
        self.condvar.notify_all();
    }

    /// Whether [`Self::stop`] was called.
    pub fn stopped(&self) -> bool {
        self.state.lock().1
    }

    /// Waits until notified or `timeout` passed; false once stopped.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut state = self.state.lock();
        if !state.0 && !state.1 {
            self.condvar.wait_for(&mut state, timeout);
        }
        state.0 = false;
        !state.1
    }
}

/// Bytes of record payload that a segment of `bytes` bytes holding
/// `records` records carries at least: its size less its header and, per
/// record, a header and the most alignment padding a record can have.
fn payload_at_least(bytes: u64, records: u64) -> u64 {
    let per_record = layout::RECORD_HEADER_LEN as u64 + layout::RECORD_ALIGN - 1;
    bytes.saturating_sub(layout::SEGMENT_HEADER_LEN as u64).saturating_sub(records.saturating_mul(per_record))
}

/// The seq to fold to for the budget: the smallest one whose folding frees
/// leading history segments while the segments after them still hold more
/// than `limit` bytes of written data; `None` when no segment can go.
/// Folding to the first seq of segment k+1 frees segments 0..=k and keeps
/// every point from that seq on.
///
/// So the point before the last `limit` bytes of writes is always kept:
/// with the default budget (the volume's size), the point before one
/// complete overwrite of the disk (ransomware encrypting all of it)
/// survives the overwrite. Counting segment bytes instead did not: the
/// overwrite's record headers and the segment it starts in add to its
/// size, and folds freed the segment holding that point. The history's
/// bytes are therefore at most `limit` plus the headers of its records plus
/// one segment (the oldest, which holds the point).
///
/// `next_seq`: the seq after the last record appended (the current
/// segment's records end before it). A segment's data is counted from its
/// bytes and its number of records, never more than it holds.
pub(crate) fn budget_seq(segments: &[SegmentInfo], next_seq: u64, limit: u64) -> Option<u64> {
    let payloads: Vec<u64> = segments
        .iter()
        .enumerate()
        .map(|(i, segment)| {
            let end = segments.get(i + 1).map_or(next_seq, |next| next.first_seq);
            payload_at_least(segment.bytes, end.saturating_sub(segment.first_seq))
        })
        .collect();
    // Data in the segments after the one that would be freed.
    let mut after: u64 = payloads.iter().sum();
    let mut needed = None;
    for (pair, payload) in segments.windows(2).zip(&payloads) {
        after -= payload;
        if after <= limit {
            break;
        }
        needed = Some(pair[1].first_seq);
    }
    needed
}

/// Replaces `dir/name` with `bytes`, atomically: write `name.tmp`, fsync
/// it, rename it over `name`, fsync the directory. A crash leaves the old
/// file or the new one, never a mix.
pub(crate) fn replace_file(fs: &dyn Filesystem, dir: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temporary = format!("{dir}/{name}{TEMPORARY_SUFFIX}");
    let file = fs.open_file(&temporary, true)?;
    file.set_len(0)?;
    file.write_at(bytes, 0)?;
    file.sync()?;
    fs.rename(&temporary, &format!("{dir}/{name}"))?;
    fs.sync_dir(dir)
}

fn read_whole(file: &dyn StorageBackend) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0; usize::try_from(file.len()?).map_err(|_| io::ErrorKind::InvalidData)?];
    file.read_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// What a volume directory says about its base.
#[derive(Debug)]
pub(crate) struct LoadedBase {
    pub state: BaseState,
    /// The base image file, if one was ever written.
    pub file: Option<Arc<dyn StorageBackend>>,
    /// A fold that began (its intent is durable) but may not have finished:
    /// points before it are retired.
    pub intent: Option<u64>,
}

/// Reads the base map and fold intent of the volume in `dir` (absent: the
/// base is what the volume was created with) and removes leftover
/// temporaries of an interrupted replacement.
pub(crate) fn load_base(
    fs: &dyn Filesystem,
    dir: &str,
    volume_id: u128,
    initial: BaseState,
) -> io::Result<LoadedBase> {
    for name in [BASE_MAP_FILE, FOLD_FILE] {
        let temporary = format!("{dir}/{name}{TEMPORARY_SUFFIX}");
        if fs.exists(&temporary) {
            fs.remove_file(&temporary)?;
        }
    }
    let corrupt = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what} is damaged"));
    let state = match fs.open_file(&format!("{dir}/{BASE_MAP_FILE}"), false) {
        Ok(file) => {
            let decoded = BaseMapFile::decode(&read_whole(file.as_ref())?)
                .filter(|decoded| decoded.volume_id == volume_id)
                .ok_or_else(|| corrupt(BASE_MAP_FILE))?;
            BaseState {
                seq: decoded.seq,
                time: decoded.time,
                size: decoded.size,
                map: decoded.map,
                snapshots: decoded.snapshots,
            }
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => initial,
        Err(error) => return Err(error),
    };
    let intent = match fs.open_file(&format!("{dir}/{FOLD_FILE}"), false) {
        // The intent file is replaced atomically, so a file that does not
        // decode is damage; ignoring it could serve a half-rewritten base.
        Ok(file) => Some(
            FoldIntent::decode(&read_whole(file.as_ref())?)
                .filter(|intent| intent.volume_id == volume_id)
                .ok_or_else(|| corrupt(FOLD_FILE))?
                .target,
        ),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    }
    .filter(|&target| target > state.seq);
    let file = match fs.open_file(&format!("{dir}/{BASE_FILE}"), false) {
        Ok(file) => Some(file),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(error),
    };
    if file.is_none() && state.map.data_bytes() > 0 {
        return Err(corrupt("base image (missing)"));
    }
    Ok(LoadedBase { state, file, intent })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segments(spec: &[(u64, u64)]) -> Vec<SegmentInfo> {
        spec.iter()
            .enumerate()
            .map(|(number, &(first_seq, bytes))| SegmentInfo { number: number as u64, first_seq, bytes })
            .collect()
    }

    /// The budget frees the fewest leading segments that leave more than
    /// its bytes of data after them, and only whole segments count. A
    /// segment's data is its bytes less its header and its records'
    /// headers and padding.
    #[test]
    fn budget_frees_leading_segments_while_more_than_it_stays() {
        let overhead = |records: u64| {
            layout::SEGMENT_HEADER_LEN as u64
                + records * (layout::RECORD_HEADER_LEN as u64 + layout::RECORD_ALIGN - 1)
        };
        // Four segments of 9, 10, 10 and 5 records carrying 1000, 1000,
        // 1000 and 500 bytes of data at least.
        let journal = segments(&[
            (1, 1000 + overhead(9)),
            (10, 1000 + overhead(10)),
            (20, 1000 + overhead(10)),
            (30, 500 + overhead(5)),
        ]);
        let next_seq = 35;
        // Freeing the first segment leaves 2500 bytes of data.
        assert_eq!(budget_seq(&journal, next_seq, 2500), None);
        assert_eq!(budget_seq(&journal, next_seq, 2499), Some(10));
        assert_eq!(budget_seq(&journal, next_seq, 1500), Some(10));
        assert_eq!(budget_seq(&journal, next_seq, 1499), Some(20));
        assert_eq!(budget_seq(&journal, next_seq, 500), Some(20));
        assert_eq!(budget_seq(&journal, next_seq, 499), Some(30));
        assert_eq!(budget_seq(&journal, next_seq, 0), Some(30));
        // More records in the current segment: less data in it.
        assert_eq!(budget_seq(&journal, next_seq + 1, 499), Some(20));
        // One segment alone never goes.
        assert_eq!(budget_seq(&journal[..1], 10, 0), None);
    }

    /// Percent budgets scale with the size without overflowing, and the
    /// segment size follows small budgets.
    #[test]
    fn budgets_and_segment_sizes() {
        assert_eq!(JournalBudget::PercentOfSize(50).bytes(1 << 30), 1 << 29);
        assert_eq!(JournalBudget::PercentOfSize(1000).bytes(u64::MAX), u64::MAX);
        let policy = RetentionPolicy::default();
        assert_eq!(policy.segment_bytes(4 << 30, 1 << 30), 512 << 20);
        assert_eq!(policy.segment_bytes(1 << 20, 1 << 30), 1 << 20);
        assert_eq!(RetentionPolicy::KEEP_ALL.segment_bytes(1 << 20, 1 << 30), 1 << 30);
    }
}
