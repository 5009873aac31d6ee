//! An in-memory [`Filesystem`] for tests that models which bytes are durable
//! and injects faults: crash at the Nth sync or directory operation, fail the
//! Nth write, allocation or sync with an errno (EIO, ENOSPC), tear or lose
//! whatever was not synced, and run out of space ([`MemoryFs::set_capacity`]).
//!
//! Each file keeps what the process sees (`current`), what survived the last
//! sync (`durable`) and the writes in between (`pending`). A crash is modelled
//! by [`MemoryFs::crash_image`], which builds the filesystem a reboot would
//! find: the durable bytes plus a seeded choice of the pending writes, each
//! kept, lost, or torn. Directory entries are durable at once (we assume the
//! journal syncs directories where it matters; docs/journal.md).
//!
//! Space is modelled in blocks of [`BLOCK_BYTES`], as a filesystem allocates
//! it: a write allocates the blocks it touches, [`StorageBackend::allocate`]
//! allocates a range ahead of writes (growing the file like `fallocate` mode
//! 0), extending a file with `set_len` leaves a hole (no blocks), and
//! shrinking it or punching a hole frees blocks. With a capacity, a write
//! that needs more blocks than are free writes the prefix that fits and
//! fails with ENOSPC (a short write, then ENOSPC), and an allocation that
//! does not fit allocates a prefix, grows the file over it and fails (as
//! ext4 does). Only linked files count: a removed file's blocks are free at
//! once, even while a handle is open.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::{Filesystem, StorageBackend};

/// The allocation unit of [`MemoryFs`]'s space model.
pub const BLOCK_BYTES: u64 = 512;

/// A small, fast, seeded random generator (splitmix64), so that a test
/// failure replays exactly from its seed.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x853c_49e6_748f_ea9b)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// Uniform in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.below(high - low + 1)
    }

    /// True with probability `numerator / denominator`.
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// Faults to inject, counted from when they are set. Counts are 1-based.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// The Nth sync does not happen: it fails with EIO and every later call
    /// on any file fails too, as if the machine lost power at that moment.
    pub crash_at_sync: Option<u64>,
    /// The Nth write fails with this errno; a prefix of it (chosen by the
    /// seed) may have reached the file, as a short write before ENOSPC does.
    pub fail_write_at: Option<(u64, i32)>,
    /// The Nth sync fails with this errno; the writes it covered stay
    /// pending: a crash may keep or lose each of them.
    pub fail_sync_at: Option<(u64, i32)>,
    /// The Nth read fails with this errno.
    pub fail_read_at: Option<(u64, i32)>,
    /// The Nth allocation ([`StorageBackend::allocate`]) fails with this
    /// errno, allocating nothing.
    pub fail_allocate_at: Option<(u64, i32)>,
    /// The Nth rename or file removal does not happen: it fails with EIO
    /// and every later call fails too, as if the machine lost power just
    /// before it (a crash between two directory operations: mid-reclaim,
    /// or between writing a replacement file and renaming it into place).
    pub crash_at_dir_op: Option<u64>,
}

/// What a crash does to the writes that were not synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// kill -9: the page cache survives; everything written is kept.
    KeepAll,
    /// Power loss before any of it reached the disk.
    LoseAll,
    /// Every pending write kept, except the last one of each file, torn.
    TearLast,
    /// Each pending write kept, lost or torn at random, in any order.
    Random,
}

#[derive(Debug, Clone)]
enum Pending {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Clone, Default)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<Pending>,
    /// Which blocks of the file have space allocated.
    blocks: Vec<bool>,
}

impl FileData {
    fn allocated_blocks(&self) -> u64 {
        self.blocks.iter().filter(|&&allocated| allocated).count() as u64
    }

    /// Frees the blocks from `first` on; returns how many were allocated.
    fn free_from(&mut self, first: u64) -> u64 {
        let first = (first as usize).min(self.blocks.len());
        let freed = self.blocks[first..].iter().filter(|&&allocated| allocated).count();
        self.blocks.truncate(first);
        freed as u64
    }
}

#[derive(Debug, Default)]
struct FsState {
    paths: BTreeMap<String, u64>,
    dirs: BTreeSet<String>,
    files: BTreeMap<u64, FileData>,
    /// Removed (or replaced) files: open handles keep working on them, as
    /// an unlinked file's descriptor does, but no crash image holds them.
    orphans: BTreeMap<u64, FileData>,
    next_id: u64,
    faults: Faults,
    syncs: u64,
    writes: u64,
    reads: u64,
    allocations: u64,
    dir_ops: u64,
    /// Blocks that linked files may hold (None: unlimited), and hold now.
    capacity: Option<u64>,
    used: u64,
    crashed: bool,
    rng: Option<SimRng>,
    sync_delay: std::time::Duration,
    read_delay: std::time::Duration,
}

/// The in-memory filesystem. Cheap to clone: clones share state.
#[derive(Clone, Default)]
pub struct MemoryFs {
    state: Arc<Mutex<FsState>>,
}

impl std::fmt::Debug for MemoryFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock();
        f.debug_struct("MemoryFs")
            .field("files", &state.paths.len())
            .field("crashed", &state.crashed)
            .finish_non_exhaustive()
    }
}

fn apply(data: &mut Vec<u8>, op: &Pending) {
    match op {
        Pending::Write { offset, data: bytes } => {
            let end = *offset as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*offset as usize..end].copy_from_slice(bytes);
        }
        Pending::SetLen(len) => data.resize(*len as usize, 0),
    }
}

fn errno(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// The counted kinds of file operation that a fault can fail.
#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
    Allocate,
}

impl FsState {
    /// Counts one operation of `op`'s kind; fails it with EIO after a crash,
    /// or with the configured errno if it is the one to fail.
    fn fault(&mut self, op: Op) -> io::Result<()> {
        if self.crashed {
            return Err(errno(libc::EIO));
        }
        let (count, fault) = match op {
            Op::Read => (&mut self.reads, self.faults.fail_read_at),
            Op::Write => (&mut self.writes, self.faults.fail_write_at),
            Op::Allocate => (&mut self.allocations, self.faults.fail_allocate_at),
        };
        *count += 1;
        match fault {
            Some((n, code)) if *count == n => Err(errno(code)),
            _ => Ok(()),
        }
    }

    /// Counts a rename or removal; fails (and crashes the filesystem) if
    /// the machine is down or this is the one to crash at. After a crash no
    /// directory changes: the crash image must not see any.
    fn dir_op(&mut self) -> io::Result<()> {
        if self.crashed {
            return Err(errno(libc::EIO));
        }
        self.dir_ops += 1;
        if self.faults.crash_at_dir_op == Some(self.dir_ops) {
            self.crashed = true;
            return Err(errno(libc::EIO));
        }
        Ok(())
    }

    fn orphan(&mut self, id: u64) {
        if let Some(file) = self.files.remove(&id) {
            self.used -= file.allocated_blocks();
            self.orphans.insert(id, file);
        }
    }

    /// Allocates the blocks of `offset..end` of file `id`, in order, while
    /// the capacity lasts. Returns where the allocated prefix ends: `end`
    /// when all of it is (never below `offset`).
    fn allocate_range(&mut self, id: u64, offset: u64, end: u64) -> io::Result<u64> {
        if offset >= end {
            return Ok(end);
        }
        let linked = self.files.contains_key(&id);
        let (capacity, mut used) = (self.capacity, self.used);
        let file = self.file_mut(id)?;
        let last = end.div_ceil(BLOCK_BYTES) as usize;
        if file.blocks.len() < last {
            file.blocks.resize(last, false);
        }
        let mut reached = end;
        for block in (offset / BLOCK_BYTES) as usize..last {
            if file.blocks[block] {
                continue;
            }
            if linked && capacity.is_some_and(|capacity| used >= capacity) {
                reached = (block as u64 * BLOCK_BYTES).max(offset);
                break;
            }
            file.blocks[block] = true;
            used += u64::from(linked);
        }
        self.used = used;
        Ok(reached)
    }

    /// Frees the blocks of file `id` from `first` on.
    fn free_from(&mut self, id: u64, first: u64) -> io::Result<()> {
        let linked = self.files.contains_key(&id);
        let freed = self.file_mut(id)?.free_from(first);
        if linked {
            self.used -= freed;
        }
        Ok(())
    }

    fn file_mut(&mut self, id: u64) -> io::Result<&mut FileData> {
        match self.files.get_mut(&id) {
            Some(file) => Ok(file),
            None => self.orphans.get_mut(&id).ok_or_else(|| io::ErrorKind::NotFound.into()),
        }
    }

    fn file(&self, id: u64) -> io::Result<&FileData> {
        self.files.get(&id).or_else(|| self.orphans.get(&id)).ok_or_else(|| io::ErrorKind::NotFound.into())
    }
}

impl MemoryFs {
    /// An empty filesystem without faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the faults to inject and restarts their counters; `seed`
    /// drives the random parts (how much of a failed write lands).
    pub fn set_faults(&self, faults: Faults, seed: u64) {
        let mut state = self.state.lock();
        state.faults = faults;
        state.syncs = 0;
        state.writes = 0;
        state.reads = 0;
        state.allocations = 0;
        state.dir_ops = 0;
        state.rng = Some(SimRng::new(seed));
    }

    /// Limits the space linked files may hold to `bytes` (rounded down to
    /// whole blocks); `None`: unlimited. Lowering it below what is used
    /// frees nothing: later allocations fail until enough is freed.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().capacity = bytes.map(|bytes| bytes / BLOCK_BYTES);
    }

    /// Bytes of space the linked files hold (whole blocks).
    pub fn used_bytes(&self) -> u64 {
        self.state.lock().used * BLOCK_BYTES
    }

    /// Makes every sync take this long (to test group commit).
    pub fn set_sync_delay(&self, delay: std::time::Duration) {
        self.state.lock().sync_delay = delay;
    }

    /// Makes every read of a file's bytes take at least `delay` (a slow
    /// disk: tests of what may run while a long read is under way).
    pub fn set_read_delay(&self, delay: std::time::Duration) {
        self.state.lock().read_delay = delay;
    }

    /// Whether an injected crash happened.
    pub fn crashed(&self) -> bool {
        self.state.lock().crashed
    }

    /// Syncs and writes counted since the faults were last set.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.syncs, state.writes)
    }

    /// The filesystem a reboot would find now: durable bytes plus the
    /// pending writes that `loss` (driven by `seed`) lets through. Every
    /// byte of its files is allocated, and its capacity is unlimited (the
    /// reboot found space).
    pub fn crash_image(&self, loss: Loss, seed: u64) -> MemoryFs {
        let state = self.state.lock();
        let mut rng = SimRng::new(seed);
        let mut files = BTreeMap::new();
        for (&id, file) in &state.files {
            let mut data = file.durable.clone();
            let last = file.pending.len().checked_sub(1);
            for (index, op) in file.pending.iter().enumerate() {
                match loss {
                    Loss::KeepAll => apply(&mut data, op),
                    Loss::LoseAll => {}
                    Loss::TearLast => {
                        if Some(index) == last {
                            tear(&mut data, op, &mut rng);
                        } else {
                            apply(&mut data, op);
                        }
                    }
                    Loss::Random => match rng.below(4) {
                        0 => {}
                        1 => tear(&mut data, op, &mut rng),
                        _ => apply(&mut data, op),
                    },
                }
            }
            let blocks = vec![true; data.len().div_ceil(BLOCK_BYTES as usize)];
            files.insert(id, FileData { current: data.clone(), durable: data, pending: Vec::new(), blocks });
        }
        let used = files.values().map(FileData::allocated_blocks).sum();
        MemoryFs {
            state: Arc::new(Mutex::new(FsState {
                paths: state.paths.clone(),
                dirs: state.dirs.clone(),
                files,
                next_id: state.next_id,
                used,
                ..FsState::default()
            })),
        }
    }

    /// Total bytes currently held by files (for tests that bound space).
    pub fn total_bytes(&self) -> u64 {
        let state = self.state.lock();
        state.files.values().map(|f| f.current.len() as u64).sum()
    }
}

/// Applies part of `op`: a prefix, or a random subset of its 512-byte sectors.
fn tear(data: &mut Vec<u8>, op: &Pending, rng: &mut SimRng) {
    match op {
        Pending::Write { offset, data: bytes } => {
            if rng.chance(1, 2) {
                let keep = rng.below(bytes.len() as u64 + 1) as usize;
                apply(data, &Pending::Write { offset: *offset, data: bytes[..keep].to_vec() });
            } else {
                for (index, sector) in bytes.chunks(512).enumerate() {
                    if rng.chance(1, 2) {
                        apply(
                            data,
                            &Pending::Write { offset: offset + index as u64 * 512, data: sector.to_vec() },
                        );
                    }
                }
            }
        }
        Pending::SetLen(_) => {
            if rng.chance(1, 2) {
                apply(data, op);
            }
        }
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(parent, _)| parent)
}

impl Filesystem for MemoryFs {
    fn create_dir_all(&self, path: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.crashed {
            return Err(errno(libc::EIO));
        }
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            state.dirs.insert(at.clone());
        }
        Ok(())
    }

    fn list_dir(&self, path: &str) -> io::Result<Vec<String>> {
        let state = self.state.lock();
        if !path.is_empty() && !state.dirs.contains(path) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let mut names = BTreeSet::new();
        for entry in state.paths.keys().chain(state.dirs.iter()) {
            if parent_of(entry) == path && entry != path {
                names.insert(entry.rsplit('/').next().unwrap_or(entry).to_owned());
            }
        }
        Ok(names.into_iter().collect())
    }

    fn open_file(&self, path: &str, create: bool) -> io::Result<Arc<dyn StorageBackend>> {
        let mut state = self.state.lock();
        if state.crashed {
            return Err(errno(libc::EIO));
        }
        let id = match state.paths.get(path) {
            Some(&id) => id,
            None if create => {
                let parent = parent_of(path);
                if !parent.is_empty() && !state.dirs.contains(parent) {
                    return Err(io::ErrorKind::NotFound.into());
                }
                let id = state.next_id;
                state.next_id += 1;
                state.paths.insert(path.to_owned(), id);
                state.files.insert(id, FileData::default());
                id
            }
            None => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(Arc::new(MemoryFile { state: self.state.clone(), id }))
    }

    fn exists(&self, path: &str) -> bool {
        let state = self.state.lock();
        state.paths.contains_key(path) || state.dirs.contains(path)
    }

    fn remove_file(&self, path: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        state.dir_op()?;
        let id = state.paths.remove(path).ok_or(io::ErrorKind::NotFound)?;
        state.orphan(id);
        Ok(())
    }

    fn remove_dir_all(&self, path: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        state.dir_op()?;
        let prefix = format!("{path}/");
        let doomed: Vec<String> = state.paths.keys().filter(|p| p.starts_with(&prefix)).cloned().collect();
        for p in doomed {
            if let Some(id) = state.paths.remove(&p) {
                state.orphan(id);
            }
        }
        state.dirs.retain(|d| d != path && !d.starts_with(&prefix));
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut state = self.state.lock();
        state.dir_op()?;
        if let Some(id) = state.paths.remove(from) {
            if let Some(replaced) = state.paths.insert(to.to_owned(), id) {
                state.orphan(replaced);
            }
            return Ok(());
        }
        if !state.dirs.contains(from) {
            return Err(io::ErrorKind::NotFound.into());
        }
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = state
            .paths
            .iter()
            .filter(|(p, _)| p.starts_with(&prefix))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (p, id) in moved {
            state.paths.remove(&p);
            state.paths.insert(format!("{to}/{}", &p[prefix.len()..]), id);
        }
        let dirs: Vec<String> =
            state.dirs.iter().filter(|d| *d == from || d.starts_with(&prefix)).cloned().collect();
        for d in dirs {
            state.dirs.remove(&d);
            state.dirs.insert(format!("{to}{}", &d[from.len()..]));
        }
        Ok(())
    }

    fn sync_dir(&self, _path: &str) -> io::Result<()> {
        if self.state.lock().crashed {
            return Err(errno(libc::EIO));
        }
        Ok(())
    }
}

/// The in-memory storage backend: one file of a [`MemoryFs`].
pub type MemoryBackend = MemoryFile;

/// A handle to one file of a [`MemoryFs`].
pub struct MemoryFile {
    state: Arc<Mutex<FsState>>,
    id: u64,
}

impl std::fmt::Debug for MemoryFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryFile({})", self.id)
    }
}

impl StorageBackend for MemoryFile {
    /// Yes: the journal's zeros ahead of frequent syncs run here too, so
    /// the crash tests cover them.
    fn converts_allocations(&self) -> bool {
        true
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let delay = self.state.lock().read_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut state = self.state.lock();
        state.fault(Op::Read)?;
        let file = state.file(self.id)?;
        let end = offset.checked_add(buf.len() as u64).ok_or(io::ErrorKind::InvalidInput)?;
        if end > file.current.len() as u64 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.copy_from_slice(&file.current[offset as usize..end as usize]);
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        if state.crashed {
            return Err(errno(libc::EIO));
        }
        state.writes += 1;
        let mut keep = data.len();
        let mut failure = None;
        if let Some((n, code)) = state.faults.fail_write_at
            && state.writes == n
        {
            keep = state.rng.as_mut().map_or(0, |rng| rng.below(data.len() as u64 + 1)) as usize;
            failure = Some(errno(code));
        }
        // A short write where the space ends, then ENOSPC.
        let end = offset.checked_add(keep as u64).ok_or(io::ErrorKind::InvalidInput)?;
        let reached = state.allocate_range(self.id, offset, end)?;
        if reached < end {
            keep = (reached - offset) as usize;
            failure = Some(errno(libc::ENOSPC));
        }
        let op = Pending::Write { offset, data: data[..keep].to_vec() };
        let file = state.file_mut(self.id)?;
        apply(&mut file.current, &op);
        file.pending.push(op);
        failure.map_or(Ok(()), Err)
    }

    fn sync(&self) -> io::Result<()> {
        let delay = self.state.lock().sync_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut state = self.state.lock();
        if state.crashed {
            return Err(errno(libc::EIO));
        }
        state.syncs += 1;
        if state.faults.crash_at_sync == Some(state.syncs) {
            state.crashed = true;
            return Err(errno(libc::EIO));
        }
        if let Some((n, code)) = state.faults.fail_sync_at
            && state.syncs == n
        {
            return Err(errno(code));
        }
        let file = state.file_mut(self.id)?;
        file.durable = file.current.clone();
        file.pending.clear();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.fault(Op::Write)?;
        let file = state.file_mut(self.id)?;
        let op = Pending::SetLen(len);
        apply(&mut file.current, &op);
        file.pending.push(op);
        // Shrinking frees the blocks past the end; growing leaves a hole.
        state.free_from(self.id, len.div_ceil(BLOCK_BYTES))
    }

    fn punch_hole(&self, offset: u64, length: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.fault(Op::Write)?;
        let file = state.file_mut(self.id)?;
        let len = file.current.len() as u64;
        let end = offset.saturating_add(length).min(len);
        if offset >= end {
            return Ok(());
        }
        let op = Pending::Write { offset, data: vec![0; (end - offset) as usize] };
        apply(&mut file.current, &op);
        file.pending.push(op);
        // Whole blocks inside the range become a hole.
        let (first, last) = (offset.div_ceil(BLOCK_BYTES) as usize, (end / BLOCK_BYTES) as usize);
        let mut freed = 0;
        for block in first..last.min(file.blocks.len()) {
            freed += u64::from(std::mem::take(&mut file.blocks[block]));
        }
        if state.files.contains_key(&self.id) {
            state.used -= freed;
        }
        Ok(())
    }

    fn allocate(&self, offset: u64, length: u64) -> io::Result<()> {
        let mut state = self.state.lock();
        state.fault(Op::Allocate)?;
        let end = offset.checked_add(length).ok_or(io::ErrorKind::InvalidInput)?;
        let reached = state.allocate_range(self.id, offset, end)?;
        let file = state.file_mut(self.id)?;
        if reached > offset && reached > file.current.len() as u64 {
            // Mode 0 grows the file over what it allocated, even when it
            // then runs out of space.
            let op = Pending::SetLen(reached);
            apply(&mut file.current, &op);
            file.pending.push(op);
        }
        if reached < end { Err(errno(libc::ENOSPC)) } else { Ok(()) }
    }

    fn len(&self) -> io::Result<u64> {
        let state = self.state.lock();
        if state.crashed {
            return Err(errno(libc::EIO));
        }
        Ok(state.file(self.id)?.current.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Synced bytes survive every kind of crash; unsynced ones survive only
    /// a kill -9.
    #[test]
    fn crash_keeps_synced_bytes_and_drops_unsynced_ones() {
        let fs = MemoryFs::new();
        fs.create_dir_all("v").unwrap();
        let file = fs.open_file("v/a", true).unwrap();
        file.write_at(b"durable", 0).unwrap();
        file.sync().unwrap();
        file.write_at(b"lost", 7).unwrap();
        let lost = fs.crash_image(Loss::LoseAll, 1);
        let mut buf = vec![0; 7];
        let file = lost.open_file("v/a", false).unwrap();
        assert_eq!(file.len().unwrap(), 7);
        file.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"durable");
        let kept = fs.crash_image(Loss::KeepAll, 1);
        assert_eq!(kept.open_file("v/a", false).unwrap().len().unwrap(), 11);
        assert_eq!(fs.list_dir("v").unwrap(), vec!["a".to_owned()]);
    }

    /// With a capacity, writes and allocations take blocks until none is
    /// left, then write (or allocate, growing the file) the prefix that
    /// fits and fail with ENOSPC; shrinking, punching and removing free
    /// blocks; a set_len extension is a hole that takes none.
    #[test]
    fn capacity_bounds_allocated_blocks() {
        let fs = MemoryFs::new();
        let file = fs.open_file("a", true).unwrap();
        fs.set_capacity(Some(4 * BLOCK_BYTES));
        file.write_at(&[1; 600], 0).unwrap();
        assert_eq!(fs.used_bytes(), 2 * BLOCK_BYTES);
        file.set_len(10 * BLOCK_BYTES).unwrap();
        assert_eq!(fs.used_bytes(), 2 * BLOCK_BYTES, "a hole takes no space");
        // Two more blocks fit, a third does not: "b" grows to two blocks.
        let file = fs.open_file("b", true).unwrap();
        let error = file.allocate(0, 3 * BLOCK_BYTES).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(file.len().unwrap(), 2 * BLOCK_BYTES);
        assert_eq!(fs.used_bytes(), 4 * BLOCK_BYTES);
        // Allocated blocks take writes; the next block short-writes.
        file.write_at(&[2; 1024], 0).unwrap();
        let error = file.write_at(&[3; 1024], 2 * BLOCK_BYTES - 100).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(file.len().unwrap(), 2 * BLOCK_BYTES, "only the prefix that fits landed");
        // Punching block 0 of "a" and removing "b" free their blocks.
        let a = fs.open_file("a", false).unwrap();
        a.punch_hole(0, BLOCK_BYTES).unwrap();
        assert_eq!(fs.used_bytes(), 3 * BLOCK_BYTES);
        fs.remove_file("b").unwrap();
        assert_eq!(fs.used_bytes(), BLOCK_BYTES);
        a.set_len(0).unwrap();
        assert_eq!(fs.used_bytes(), 0);
        // A crash image holds every byte of its files and has no capacity.
        a.write_at(&[4; 2000], 0).unwrap();
        let image = fs.crash_image(Loss::KeepAll, 1);
        assert_eq!(image.used_bytes(), 4 * BLOCK_BYTES);
        image.open_file("a", false).unwrap().allocate(0, 1 << 20).unwrap();
    }

    /// The Nth sync crashes the filesystem and the failed write's errno
    /// comes back unchanged.
    #[test]
    fn faults_fire_at_their_count() {
        let fs = MemoryFs::new();
        let file = fs.open_file("a", true).unwrap();
        fs.set_faults(
            Faults { crash_at_sync: Some(2), fail_write_at: Some((2, libc::ENOSPC)), ..Faults::default() },
            7,
        );
        file.write_at(b"x", 0).unwrap();
        let error = file.write_at(b"y", 1).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        file.sync().unwrap();
        assert!(file.sync().is_err());
        assert!(fs.crashed());
        assert!(file.write_at(b"z", 0).is_err());
    }
}
