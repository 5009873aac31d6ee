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
use crate::layout::{BaseMapFile, FoldIntent};

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

/// The smallest seq whose folding frees enough leading segments to bring
/// the journal within `limit` bytes; `None` when it already is. Folding to
/// the first seq of segment k+1 frees segments 0..=k.
pub(crate) fn budget_seq(segments: &[SegmentInfo], limit: u64) -> Option<u64> {
    let mut bytes: u64 = segments.iter().map(|segment| segment.bytes).sum();
    let mut needed = None;
    for pair in segments.windows(2) {
        if bytes <= limit {
            break;
        }
        bytes -= pair[0].bytes;
        needed = Some(pair[1].first_seq);
    }
    match needed {
        // Even folding all but the current segment is not enough: fold as
        // far as the segments go.
        None if bytes > limit => segments.last().map(|segment| segment.first_seq),
        needed => needed,
    }
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

    /// The budget asks for the fewest leading segments that bring the
    /// journal under it, and only whole segments count.
    #[test]
    fn budget_frees_the_fewest_leading_segments() {
        let journal = segments(&[(1, 100), (10, 100), (20, 100), (30, 50)]);
        assert_eq!(budget_seq(&journal, 350), None);
        assert_eq!(budget_seq(&journal, 349), Some(10));
        assert_eq!(budget_seq(&journal, 250), Some(10));
        assert_eq!(budget_seq(&journal, 249), Some(20));
        assert_eq!(budget_seq(&journal, 0), Some(30));
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
