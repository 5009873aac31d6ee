//! The registry of volumes under a data dir: `DIR/volumes/NAME/`.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::backend::{EngineChoice, Filesystem, RealFs, pick_engine};
use crate::clock::{Clock, SystemClock};
use crate::error::{CloneError, CreateError, DeleteError, FlushError, OpenError, RetentionError};
use crate::index::{BaseState, Index, MAX_VOLUME_SIZE};
use crate::journal::{JournalOptions, SparePool, recover};
use crate::layout::{SEGMENT_HEADER_LEN, Superblock};
use crate::retention::{RetentionPolicy, Wake, load_base};
use crate::volume::{RecoveryStats, Volume, VolumeTuning, Wakes};

/// Directory (under the data dir) that holds one directory per volume.
pub const VOLUMES_DIR: &str = "volumes";
/// File name of a volume's superblock.
pub const SUPERBLOCK_FILE: &str = "volume";
const HIDDEN_PREFIX: &str = ".deleted-";

/// Default of [`StoreOptions::reserve_bytes`] (docs/journal.md, "Space",
/// has the measurements behind it).
pub const DEFAULT_RESERVE_BYTES: u64 = 4 << 20;

/// How to open a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Where "now" comes from (STYLE #3).
    pub clock: Arc<dyn Clock>,
    /// IO engine for the real disk; ignored with `filesystem`.
    pub engine: EngineChoice,
    /// Use this filesystem instead of the data dir (tests: [`crate::memory::MemoryFs`]).
    pub filesystem: Option<Arc<dyn Filesystem>>,
    /// Target size of a journal segment.
    pub segment_bytes: u64,
    /// Size of the in-memory write buffer of each volume.
    pub buffer_bytes: usize,
    /// Records between index checkpoints (bounds replay after a crash).
    pub checkpoint_records: u64,
    /// blake3 each payload on the write path (default: off; computed when
    /// read back by verify and replication; docs/journal.md says why).
    pub inline_blake3: bool,
    /// A background thread flushes every volume this often, bounding what a
    /// power loss can take from clients that never flush. None: no thread.
    pub commit_interval: Option<Duration>,
    /// Which history every volume keeps (a volume may override it with
    /// [`Volume::set_retention_policy`]).
    pub retention: RetentionPolicy,
    /// A background thread applies retention to every volume this often,
    /// and as soon as a segment fills while a journal is over its budget.
    /// None: no thread ([`Store::enforce_retention`] runs a pass by hand).
    pub retention_interval: Option<Duration>,
    /// Spare segment files each volume keeps ready for new segments:
    /// reclaimed ones, and on real files ones a background thread makes
    /// ahead (docs/journal.md, "Spare files made ahead"). 0: none.
    pub spare_segments: usize,
    /// Journal space each volume allocates on disk ahead of its tail at a
    /// time (`fallocate`), so that a full disk refuses writes with ENOSPC
    /// before acknowledging them instead of losing them at write-out
    /// (docs/journal.md, "Space"). Never more than a segment.
    pub reserve_bytes: u64,
    /// Zeros a volume writes ahead of its records while its syncs are
    /// frequent and small, on a disk (docs/journal.md, "Zeros ahead of
    /// frequent syncs"). 0: never.
    pub zero_ahead_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            engine: EngineChoice::Auto,
            filesystem: None,
            segment_bytes: 1 << 30,
            buffer_bytes: 1 << 20,
            checkpoint_records: 1 << 16,
            inline_blake3: false,
            commit_interval: Some(Duration::from_secs(1)),
            retention: RetentionPolicy::default(),
            retention_interval: Some(Duration::from_secs(10)),
            spare_segments: 2,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
            zero_ahead_bytes: 1 << 20,
        }
    }
}

/// What a [`Store`] shares with its commit thread.
#[derive(Debug)]
struct Shared {
    fs: Arc<dyn Filesystem>,
    options: StoreOptions,
    volumes: RwLock<BTreeMap<String, Arc<Volume>>>,
    /// Force-deleted volumes that clones still read through, by id.
    hidden: Mutex<HashMap<u128, Arc<Volume>>>,
    /// Directories in the volumes directory that were not opened as
    /// volumes, by name, with why (kept as they are for an admin to look
    /// at; a create or clone of that name is refused).
    unopened: Mutex<BTreeMap<String, Unopened>>,
    /// Serializes create, clone and delete.
    registry: Mutex<()>,
    counter: std::sync::atomic::AtomicU64,
    /// Wakes the retention thread.
    wake: Arc<Wake>,
    /// Wakes the spare thread, when there is one.
    spares_wake: Option<Arc<Wake>>,
    /// Every volume's spare files, for a journal out of space to free.
    spare_pool: Arc<SparePool>,
    _lock: Option<std::fs::File>,
}

/// A volume directory not opened at start-up.
#[derive(Debug, Clone)]
struct Unopened {
    why: String,
    /// Its superblock's clone parent (0: none or unknown): a clone that is
    /// not served still reads through its parent, which must be kept.
    parent: u128,
}

/// The volumes of one data dir. Open once per process.
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    commit_thread: Option<std::thread::JoinHandle<()>>,
    retention_thread: Option<std::thread::JoinHandle<()>>,
    spare_thread: Option<std::thread::JoinHandle<()>>,
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

/// Whether `name` is a valid volume name: 1-64 of `A-Z a-z 0-9 . _ -`, not
/// starting with `.` (so it can never clash with hidden directories).
pub fn valid_volume_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn io_error(path: &str) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io { path: path.to_owned(), source }
}

impl Store {
    /// Opens (creating if needed) the store in `dir` and recovers every
    /// volume: checkpointed index, journal tail replay, torn tail cut off.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Store, OpenError> {
        let display = dir.display().to_string();
        let (fs, lock): (Arc<dyn Filesystem>, _) = match &options.filesystem {
            Some(fs) => (fs.clone(), None),
            None => {
                crate::backend::create_private_dir(dir).map_err(io_error(&display))?;
                let lock = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(crate::backend::PRIVATE_FILE_MODE)
                    .open(dir.join("LOCK"))
                    .map_err(io_error(&display))?;
                // The toolchain is 1.95 (workspace rust-version lags behind).
                #[allow(clippy::incompatible_msrv)]
                let locked = lock.try_lock();
                if locked.is_err() {
                    return Err(OpenError::Locked { path: display });
                }
                let engine = pick_engine(options.engine);
                tracing::info!(%engine, "store IO engine");
                let fs = RealFs::new(dir, engine).map_err(io_error(&display))?;
                (Arc::new(fs) as Arc<dyn Filesystem>, Some(lock))
            }
        };
        fs.create_dir_all(VOLUMES_DIR).map_err(io_error(VOLUMES_DIR))?;
        let spares_wake = options.filesystem.is_none() && options.spare_segments > 0;
        let shared = Arc::new(Shared {
            fs,
            options,
            volumes: RwLock::new(BTreeMap::new()),
            hidden: Mutex::new(HashMap::new()),
            unopened: Mutex::new(BTreeMap::new()),
            registry: Mutex::new(()),
            counter: std::sync::atomic::AtomicU64::new(0),
            wake: Arc::new(Wake::default()),
            // Spare files save page allocations on real files only; tests
            // on the memory engine call Volume::prepare_spares themselves.
            spares_wake: spares_wake.then(|| Arc::new(Wake::default())),
            spare_pool: Arc::default(),
            _lock: lock,
        });
        shared.load_all()?;
        let stop = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
        let commit_thread = match shared.options.commit_interval {
            Some(interval) => {
                let weak = Arc::downgrade(&shared);
                let stop = stop.clone();
                Some(
                    std::thread::Builder::new()
                        .name("rewind-commit".into())
                        .spawn(move || commit_loop(weak, interval, stop))
                        .map_err(io_error("commit thread"))?,
                )
            }
            None => None,
        };
        let retention_thread = match shared.options.retention_interval {
            Some(interval) => {
                let weak = Arc::downgrade(&shared);
                let wake = shared.wake.clone();
                Some(
                    std::thread::Builder::new()
                        .name("rewind-retention".into())
                        .spawn(move || retention_loop(weak, wake, interval))
                        .map_err(io_error("retention thread"))?,
                )
            }
            None => None,
        };
        let spare_thread = match shared.spares_wake.clone() {
            Some(wake) => {
                let weak = Arc::downgrade(&shared);
                Some(
                    std::thread::Builder::new()
                        .name("rewind-spares".into())
                        .spawn(move || spare_loop(weak, wake))
                        .map_err(io_error("spare thread"))?,
                )
            }
            None => None,
        };
        Ok(Store { shared, commit_thread, retention_thread, spare_thread, stop })
    }

    /// Applies retention to every volume now (what the retention thread
    /// does every `retention_interval`). Returns the first failure; the
    /// other volumes are still processed.
    pub fn enforce_retention(&self) -> Result<(), RetentionError> {
        self.shared.enforce_retention()
    }

    /// Every live volume, by name.
    pub fn volumes(&self) -> Vec<Arc<Volume>> {
        self.shared.volumes.read().values().cloned().collect()
    }

    /// Names of the live volumes that read through volume `id`: its
    /// clones, and the clones of its deleted clones (kept, hidden, while
    /// something reads through them), at any depth. Deleting it keeps its
    /// data while any is left.
    pub fn clones_reading(&self, id: u128) -> Vec<String> {
        self.shared.clones_reading(id)
    }

    /// Directories of the volumes directory not served as volumes (a
    /// damaged superblock, a renamed directory, a clone whose parent is
    /// missing, files rewind did not make), by name, with why. Their files
    /// are kept; a volume of that name cannot be created or cloned.
    pub fn unopened(&self) -> Vec<(String, String)> {
        self.shared.unopened.lock().iter().map(|(name, dir)| (name.clone(), dir.why.clone())).collect()
    }

    /// The volume with this name.
    pub fn volume(&self, name: &str) -> Option<Arc<Volume>> {
        self.shared.volumes.read().get(name).cloned()
    }

    /// Creates an empty volume (reads as zeros) of `size_bytes`.
    pub fn create_volume(&self, name: &str, size_bytes: u64) -> Result<Arc<Volume>, CreateError> {
        let _registry = self.shared.registry.lock();
        self.shared.create(name, size_bytes, None)
    }

    /// Creates `new_name` whose base is `source`'s image at `seq`: metadata
    /// only, whatever the size. The clone is writable; `source` is unchanged.
    pub fn clone_volume(&self, source: &str, seq: u64, new_name: &str) -> Result<Arc<Volume>, CloneError> {
        let _registry = self.shared.registry.lock();
        let parent = self.volume(source).ok_or_else(|| CloneError::SourceNotFound(source.to_owned()))?;
        // Retention must not fold past the clone's base from now on.
        parent.pin(seq).map_err(CloneError::Point)?;
        let created = (|| {
            let point = parent.open_point(seq).map_err(CloneError::Point)?;
            // The clone's base must survive a crash: make the parent durable
            // through `seq` before the clone's superblock names it.
            parent
                .flush()
                .map_err(|error| CloneError::Create(CreateError::Io(std::io::Error::from(error.kind()))))?;
            self.shared
                .create(new_name, point.size(), Some((parent.clone(), seq)))
                .map_err(CloneError::Create)
        })();
        if created.is_err() {
            parent.unpin(seq);
        }
        created
    }

    /// Deletes a volume and its history. A volume that clones read through
    /// is refused unless `force`; forced, it disappears from the registry
    /// and refuses writes, but its files are kept (hidden) until its last
    /// clone is deleted.
    pub fn delete_volume(&self, name: &str, force: bool) -> Result<(), DeleteError> {
        let _registry = self.shared.registry.lock();
        let volume = self.volume(name).ok_or_else(|| DeleteError::NotFound(name.to_owned()))?;
        let clones = self.shared.clones_reading(volume.id());
        if !clones.is_empty() && !force {
            return Err(DeleteError::HasClones { volume: name.to_owned(), clones });
        }
        if !clones.is_empty() {
            // Clones keep reading it: its history must be durable.
            volume.close().map_err(|error| DeleteError::Io(std::io::Error::from(error.kind())))?;
        }
        volume.mark_deleted();
        self.shared.volumes.write().remove(name);
        if let Some((parent, seq)) = volume.parent() {
            parent.unpin(seq);
        }
        let fs = &self.shared.fs;
        if clones.is_empty() {
            fs.remove_dir_all(volume.dir()).map_err(DeleteError::Io)?;
        } else {
            let hidden = format!("{VOLUMES_DIR}/{HIDDEN_PREFIX}{:032x}", volume.id());
            fs.rename(volume.dir(), &hidden).map_err(DeleteError::Io)?;
            self.shared.hidden.lock().insert(volume.id(), volume.clone());
        }
        fs.sync_dir(VOLUMES_DIR).map_err(DeleteError::Io)?;
        self.shared.reap_hidden();
        Ok(())
    }

    /// Reopens a volume from its files, as a restart would: the way a
    /// volume poisoned by an IO error takes writes again. Whatever reached
    /// the disk is what the reopened volume holds (every acknowledged-durable
    /// write did). The old `Arc<Volume>` and its points keep serving reads
    /// but refuse writes; fetch the new one with [`Store::volume`].
    pub fn reopen_volume(&self, name: &str) -> Result<Arc<Volume>, OpenError> {
        let _registry = self.shared.registry.lock();
        let old = self
            .volume(name)
            .ok_or_else(|| OpenError::Corrupt { volume: name.to_owned(), reason: "no such volume".into() })?;
        if old.poison().is_none() {
            // Best effort: a healthy volume loses nothing by reopening.
            let _ = old.close();
        }
        old.mark_deleted();
        let dir = old.dir().to_owned();
        let path = format!("{dir}/{SUPERBLOCK_FILE}");
        let superblock = self.shared.read_superblock(&path).ok_or_else(|| OpenError::Corrupt {
            volume: name.to_owned(),
            reason: "superblock unreadable".into(),
        })?;
        let volume = self.shared.open_volume(&dir, &superblock, old.parent()).map_err(io_error(&dir))?;
        // Its clones read through the new object now, and pin it.
        for clone in self.shared.volumes.read().values().chain(self.shared.hidden.lock().values()) {
            if clone.parent_id() == Some(volume.id()) {
                clone.set_parent(volume.clone());
                if let Some((_, seq)) = clone.parent() {
                    let _ = volume.pin(seq);
                }
            }
        }
        // Before anything writes to the new object: from here the old one
        // reads nothing (points opened through it get an error, not bytes
        // of a reused segment file).
        old.mark_replaced();
        self.shared.volumes.write().insert(name.to_owned(), volume.clone());
        Ok(volume)
    }

    /// Flushes every volume and checkpoints its index, so the next open
    /// replays nothing. Call on clean shutdown (not called on drop: a crash
    /// test drops a store to simulate a crash).
    pub fn close(&self) -> Result<(), FlushError> {
        let mut result = Ok(());
        let hidden: Vec<Arc<Volume>> = self.shared.hidden.lock().values().cloned().collect();
        for volume in self.volumes().into_iter().chain(hidden) {
            if let Err(error) = volume.close() {
                tracing::error!(volume = volume.name(), %error, "close failed");
                result = Err(error);
            }
        }
        result
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let (stopped, wake) = &*self.stop;
        if let Ok(mut stopped) = stopped.lock() {
            *stopped = true;
        }
        wake.notify_all();
        self.shared.wake.stop();
        if let Some(wake) = &self.shared.spares_wake {
            wake.stop();
        }
        if let Some(thread) = self.spare_thread.take() {
            let _ = thread.join();
        }
        if let Some(thread) = self.commit_thread.take() {
            let _ = thread.join();
        }
        if let Some(thread) = self.retention_thread.take() {
            let _ = thread.join();
        }
    }
}

/// How long the spare thread lets retention reclaim segments before it
/// makes spare files itself.
const SPARE_DELAY: Duration = Duration::from_millis(100);

/// The spare thread: tops up the spare segment files of each volume whose
/// journal ran short of them (a segment start left none, reclaim is not
/// keeping up) and still has none a moment later. Idle volumes, and
/// volumes whose reclaimed segments keep the spares coming, get no files
/// made for them.
fn spare_loop(shared: Weak<Shared>, wake: Arc<Wake>) {
    while wake.wait(Duration::from_secs(3600)) {
        // Give the retention pass that the same segment start woke a
        // moment to reclaim segments: when it does, there is nothing to make.
        std::thread::sleep(SPARE_DELAY);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let volumes: Vec<Arc<Volume>> = shared.volumes.read().values().cloned().collect();
        drop(shared);
        for volume in volumes {
            if wake.stopped() {
                return;
            }
            if volume.take_spares_wanted() && volume.spare_files() == 0 {
                volume.prepare_spares();
            }
        }
    }
}

/// The retention thread: a pass over every volume each `interval`, or as
/// soon as a volume's journal goes over its budget.
fn retention_loop(shared: Weak<Shared>, wake: Arc<Wake>, interval: Duration) {
    while wake.wait(interval) {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Failures are logged by the volume and redone by the next pass.
        let _ = shared.enforce_retention();
    }
}

fn commit_loop(
    shared: Weak<Shared>,
    interval: Duration,
    stop: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
) {
    let (stopped, wake) = &*stop;
    loop {
        {
            let Ok(guard) = stopped.lock() else { return };
            let Ok((guard, _)) = wake.wait_timeout_while(guard, interval, |stopped| !*stopped) else {
                return;
            };
            if *guard {
                return;
            }
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let volumes: Vec<Arc<Volume>> = shared.volumes.read().values().cloned().collect();
        for volume in volumes {
            if volume.durable_seq() < volume.head_seq() && volume.poison().is_none() {
                let _ = volume.flush();
            }
        }
    }
}

impl Shared {
    fn journal_options(&self) -> JournalOptions {
        JournalOptions {
            segment_bytes: self.options.segment_bytes,
            buffer_bytes: self.options.buffer_bytes,
            inline_blake3: self.options.inline_blake3,
            spare_segments: self.options.spare_segments,
            reserve_bytes: self.options.reserve_bytes.max(1),
            zero_ahead_bytes: self.options.zero_ahead_bytes,
        }
    }

    fn enforce_retention(&self) -> Result<(), RetentionError> {
        let volumes: Vec<Arc<Volume>> = self.volumes.read().values().cloned().collect();
        let mut first_error = None;
        for volume in volumes {
            if volume.poison().is_some() {
                continue;
            }
            if let Err(error) = volume.enforce_retention(self.options.clock.now_nanos()) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn new_id(&self, name: &str) -> u128 {
        let mut hasher = blake3::Hasher::new();
        hasher.update(name.as_bytes());
        hasher.update(&self.options.clock.now_nanos().to_le_bytes());
        hasher.update(&self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed).to_le_bytes());
        hasher.update(&std::process::id().to_le_bytes());
        let hash = hasher.finalize();
        let mut id = [0; 16];
        id.copy_from_slice(&hash.as_bytes()[..16]);
        u128::from_le_bytes(id).max(1)
    }

    /// [`Store::clones_reading`].
    fn clones_reading(&self, id: u128) -> Vec<String> {
        let mut names = Vec::new();
        let mut through = vec![id];
        while let Some(id) = through.pop() {
            names.extend(
                self.volumes
                    .read()
                    .values()
                    .filter(|v| v.parent_id() == Some(id))
                    .map(|v| v.name().to_owned()),
            );
            names.extend(
                self.unopened
                    .lock()
                    .iter()
                    .filter(|(_, dir)| dir.parent == id)
                    .map(|(name, _)| format!("{name} (not served)")),
            );
            through.extend(self.hidden.lock().values().filter(|v| v.parent_id() == Some(id)).map(|v| v.id()));
        }
        names.sort();
        names
    }

    /// Removes hidden volumes nothing reads through any more.
    fn reap_hidden(&self) {
        loop {
            let doomed: Vec<Arc<Volume>> = {
                let hidden = self.hidden.lock();
                hidden
                    .values()
                    .filter(|v| {
                        let id = v.id();
                        !self.volumes.read().values().any(|c| c.parent_id() == Some(id))
                            && !hidden.values().any(|c| c.parent_id() == Some(id))
                            && !self.unopened.lock().values().any(|dir| dir.parent == id)
                    })
                    .cloned()
                    .collect()
            };
            if doomed.is_empty() {
                return;
            }
            for volume in doomed {
                self.hidden.lock().remove(&volume.id());
                let dir = format!("{VOLUMES_DIR}/{HIDDEN_PREFIX}{:032x}", volume.id());
                if let Err(error) = self.fs.remove_dir_all(&dir) {
                    tracing::warn!(%error, dir, "cannot remove deleted volume");
                }
            }
        }
    }

    fn create(
        &self,
        name: &str,
        size: u64,
        parent: Option<(Arc<Volume>, u64)>,
    ) -> Result<Arc<Volume>, CreateError> {
        if !valid_volume_name(name) {
            return Err(CreateError::InvalidName(name.to_owned()));
        }
        if size == 0 || size > MAX_VOLUME_SIZE {
            return Err(CreateError::InvalidSize { size, max: MAX_VOLUME_SIZE });
        }
        if self.volumes.read().contains_key(name) {
            return Err(CreateError::Exists(name.to_owned()));
        }
        let dir = format!("{VOLUMES_DIR}/{name}");
        let fs = &self.fs;
        if fs.exists(&dir) {
            // Not a half-created volume from a crash: opening the store
            // removed those. Something the store did not open (damage, a
            // renamed directory) or that an admin put there: keep it.
            let why = self.unopened.lock().get(name).map(|dir| dir.why.clone());
            return Err(CreateError::NotAVolume {
                dir,
                why: why.unwrap_or_else(|| "it is not a volume rewind made".to_owned()),
            });
        }
        let superblock = Superblock {
            volume_id: self.new_id(name),
            created: self.options.clock.now_nanos(),
            initial_size: size,
            parent_id: parent.as_ref().map_or(0, |(p, _)| p.id()),
            parent_seq: parent.as_ref().map_or(0, |(_, seq)| *seq),
            name: name.to_owned(),
            parent_name: parent.as_ref().map_or(String::new(), |(p, _)| p.name().to_owned()),
        };
        // Crash cases: before the superblock is synced the directory is
        // ignored (and removed) at the next open; after it, the volume exists.
        fs.create_dir_all(&dir).map_err(CreateError::Io)?;
        let made = (|| {
            let file = fs.open_file(&format!("{dir}/{SUPERBLOCK_FILE}"), true)?;
            file.write_at(&superblock.encode(), 0)
                .and_then(|()| file.sync())
                .and_then(|()| fs.sync_dir(&dir))
                .and_then(|()| fs.sync_dir(VOLUMES_DIR))?;
            self.open_volume(&dir, &superblock, parent)
        })();
        let volume = match made {
            Ok(volume) => {
                // A directory of this name not opened at start-up has been
                // moved away since.
                self.unopened.lock().remove(name);
                volume
            }
            Err(error) => {
                // Nothing was written into it: a later create may retry.
                if let Err(error) = fs.remove_dir_all(&dir) {
                    tracing::warn!(%error, dir, "cannot remove a volume whose creation failed");
                }
                return Err(CreateError::Io(error));
            }
        };
        self.volumes.write().insert(name.to_owned(), volume.clone());
        Ok(volume)
    }

    fn open_volume(
        &self,
        dir: &str,
        superblock: &Superblock,
        parent: Option<(Arc<Volume>, u64)>,
    ) -> std::io::Result<Arc<Volume>> {
        let initial = BaseState {
            seq: 0,
            time: superblock.created,
            size: superblock.initial_size,
            ..BaseState::default()
        };
        let base = load_base(self.fs.as_ref(), dir, superblock.volume_id, initial)?;
        let mut index = Index::with_base(base.state, superblock.created);
        let recovery =
            recover(self.fs.clone(), dir, superblock.volume_id, self.journal_options(), &mut index)?;
        recovery.journal.join_pool(&self.spare_pool);
        Ok(Arc::new(Volume::new(
            superblock.name.clone(),
            superblock.volume_id,
            dir.to_owned(),
            parent,
            self.options.clock.clone(),
            self.fs.clone(),
            recovery.journal,
            index,
            recovery.checkpoint,
            base.file,
            base.intent,
            Wakes {
                // Without the thread nobody would answer a stalled writer.
                retention: self.options.retention_interval.map(|_| self.wake.clone()),
                spares: self.spares_wake.clone(),
            },
            VolumeTuning {
                checkpoint_records: self.options.checkpoint_records.max(1),
                retention: self.options.retention,
                segment_bytes: self.options.segment_bytes,
            },
            RecoveryStats {
                checkpointed: recovery.checkpointed,
                replayed: recovery.replayed,
                replayed_bytes: recovery.replayed_bytes,
                cut_bytes: recovery.cut_bytes,
                reserved_bytes: recovery.reserved_bytes,
            },
        )))
    }

    fn read_superblock(&self, path: &str) -> Option<Superblock> {
        let file = self.fs.open_file(path, false).ok()?;
        let mut bytes = vec![0; file.len().ok()? as usize];
        file.read_at(&mut bytes, 0).ok()?;
        Superblock::decode(&bytes)
    }

    /// Logs why the volume directory `dir` is not served and remembers it
    /// for [`Store::unopened`].
    /// `parent` is the clone parent its superblock names, if known (0 if
    /// none): that volume is kept while this directory is.
    fn not_serving(&self, dir: &str, why: String, parent: u128) {
        tracing::error!(dir, "{why}; not serving it (its files are kept)");
        let name = dir.rsplit('/').next().unwrap_or(dir);
        if !name.starts_with(HIDDEN_PREFIX) {
            self.unopened.lock().insert(name.to_owned(), Unopened { why, parent });
        }
    }

    fn load_all(&self) -> Result<(), OpenError> {
        let names = self.fs.list_dir(VOLUMES_DIR).map_err(io_error(VOLUMES_DIR))?;
        let mut pending: Vec<(String, Superblock)> = Vec::new();
        for name in names {
            let dir = format!("{VOLUMES_DIR}/{name}");
            let Ok(entries) = self.fs.list_dir(&dir) else {
                tracing::warn!(dir, "ignoring a non-directory in the volumes directory");
                continue;
            };
            let path = format!("{dir}/{SUPERBLOCK_FILE}");
            match self.read_superblock(&path) {
                Some(superblock) if superblock.name == name || name.starts_with(HIDDEN_PREFIX) => {
                    pending.push((dir, superblock))
                }
                Some(superblock) => self.not_serving(
                    &dir,
                    format!(
                        "its superblock names volume {:?}: the directory was renamed or copied (rename it back \
                         to serve it)",
                        superblock.name
                    ),
                    superblock.parent_id,
                ),
                None => {
                    // Creation syncs the superblock before the first record
                    // can exist: only a directory holding nothing but a
                    // superblock and empty segments is a create that never
                    // completed. Records, an index, base data: damage, keep
                    // it; files a volume never holds: not ours, keep it.
                    let has_records = entries.iter().any(|entry| {
                        entry != SUPERBLOCK_FILE
                            && (!entry.starts_with("seg-")
                                || self
                                    .fs
                                    .open_file(&format!("{dir}/{entry}"), false)
                                    .and_then(|file| file.len())
                                    .map_or(true, |len| len > SEGMENT_HEADER_LEN as u64))
                    });
                    let ours = |entry: &str| {
                        entry == SUPERBLOCK_FILE
                            || entry.starts_with("seg-")
                            || entry.starts_with("spare-")
                            || entry.starts_with(crate::journal::INDEX_FILE)
                            || entry.starts_with(crate::retention::BASE_FILE)
                            || entry == crate::retention::FOLD_FILE
                    };
                    let foreign = entries.iter().any(|entry| !ours(entry));
                    if foreign {
                        self.not_serving(
                            &dir,
                            "it has no valid superblock and holds files rewind did not make".into(),
                            0,
                        );
                    } else if has_records {
                        self.not_serving(
                            &dir,
                            "it has journal records or base data but no valid superblock (damaged)".into(),
                            0,
                        );
                    } else {
                        tracing::warn!(dir, "removing a volume whose creation never completed");
                        self.fs.remove_dir_all(&dir).map_err(io_error(&dir))?;
                    }
                }
            }
        }
        // Parents before clones.
        let mut loaded: HashMap<u128, Arc<Volume>> = HashMap::new();
        loop {
            let before = pending.len();
            let mut waiting = Vec::new();
            for (dir, superblock) in pending {
                let parent = match superblock.parent_id {
                    0 => None,
                    id => match loaded.get(&id) {
                        Some(parent) => Some((parent.clone(), superblock.parent_seq)),
                        None => {
                            waiting.push((dir, superblock));
                            continue;
                        }
                    },
                };
                // One volume that cannot be opened (a full disk under the
                // copy recovery keeps of a damaged segment, an IO error) is
                // not served and said so; the others are.
                let volume = match self.open_volume(&dir, &superblock, parent.clone()) {
                    Ok(volume) => volume,
                    Err(error) => {
                        // A clone that is not opened still needs its base
                        // point: retention must not fold past it.
                        if let Some((parent, seq)) = parent {
                            let _ = parent.pin(seq);
                        }
                        self.not_serving(&dir, format!("opening it failed: {error}"), superblock.parent_id);
                        continue;
                    }
                };
                if let Some((parent, seq)) = volume.parent()
                    && parent.pin(seq).is_err()
                {
                    // Retention never folds past a clone's base; if it did,
                    // the clone's base is gone.
                    self.not_serving(
                        &dir,
                        format!(
                            "it is a clone whose base point #{seq} is outside its parent's history (a recovery \
                             that cut the parent's journal at a damaged record does this: see SET ASIDE in \
                             rewind volume show {})",
                            parent.name()
                        ),
                        superblock.parent_id,
                    );
                    continue;
                }
                loaded.insert(superblock.volume_id, volume);
            }
            pending = waiting;
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        for (dir, superblock) in pending {
            self.not_serving(
                &dir,
                format!("it is a clone of volume {:?}, which is missing", superblock.parent_name),
                superblock.parent_id,
            );
        }
        for volume in loaded.values() {
            let dir_name = volume.dir().rsplit('/').next().unwrap_or_default();
            if dir_name.starts_with(HIDDEN_PREFIX) {
                volume.mark_deleted();
                self.hidden.lock().insert(volume.id(), volume.clone());
            } else {
                self.volumes.write().insert(volume.name().to_owned(), volume.clone());
            }
        }
        self.reap_hidden();
        Ok(())
    }
}
