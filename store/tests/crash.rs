//! Crash consistency: seeded random histories on MemoryFs, crashed at a
//! random sync, with torn or lost unsynced writes, or after a failed IO;
//! each crash state is reopened and checked against a plain model (one image
//! per seq): every flushed write present, losses only a suffix, every point
//! equal to the model's image at that seq (DESIGN.md invariants 1-3).
//!
//! Retention runs as one of the random operations, with a random policy
//! (window, journal budget, spare segment files), and so does the spare
//! thread's work (spare files made ahead of the writer), so crashes land in the
//! middle of folds, cleans and reclaims too (a crash may also strike just
//! before any rename or file removal): after each crash every retained
//! point still equals the model (reading base data from the segments it
//! stayed in, or from the base file cleaning copied it to), points before
//! the first retained seq are outside the history, no protected point
//! (snapshot, clone base, rollback target) was folded past, and recovery
//! kept exactly the base segments the base map points into.
//!
//! A third of the cases run on a nearly full disk (a MemoryFs capacity a
//! few blocks above what the new volume uses, sometimes raised later, as
//! when space is freed): a write the journal has no space for must be
//! refused with ENOSPC before it is acknowledged, change nothing (no seq,
//! not in any point, before or after a crash) and leave the volume
//! writable; without injected faults the volume is never poisoned and every
//! flush succeeds (every acknowledged record's space was reserved, so its
//! write-out cannot fail).
//!
//! Each test runs `REWIND_CRASH_CASES` cases (default 50,000; four tests).
//! A failure prints its seed; `REWIND_SEED=N cargo test -p store --test crash`
//! replays exactly that case (the seed picks the fault family too).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use std::time::Duration;

use store::memory::{Faults, Loss, MemoryFs, SimRng};
use store::{
    Clock, JournalBudget, ManualClock, PointError, PointView, ReadError, ResizeError, RetentionPolicy,
    RollbackError, SnapshotError, Store, StoreOptions, Volume, WriteError,
};

const FAMILIES: u64 = 4;
const SIZE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// The Nth sync never happens: power is lost there.
    CrashAtSync,
    /// No fault; the machine loses power at a random moment.
    PowerLoss,
    /// The Nth write or space allocation fails (EIO or ENOSPC), then power
    /// is lost later.
    FailedWrite,
    /// The Nth sync fails (EIO or ENOSPC), then power is lost later.
    FailedSync,
}

fn family_of(seed: u64) -> Family {
    match seed % FAMILIES {
        0 => Family::CrashAtSync,
        1 => Family::PowerLoss,
        2 => Family::FailedWrite,
        _ => Family::FailedSync,
    }
}

/// The plain model: the image (bytes, size = len) and snapshots at every seq.
struct Model {
    images: Vec<Vec<u8>>,
    snapshots: Vec<BTreeMap<String, u64>>,
    /// Highest seq a successful flush, FUA write or metadata op covered.
    durable: u64,
    /// The image an op that failed without a seq would have made: its
    /// record may still have reached the disk whole (a failed write leaves
    /// its range undefined), so recovery may find it as one more seq.
    maybe: Option<(Vec<u8>, BTreeMap<String, u64>)>,
    /// Clones whose creation returned: name → the seq of "v" they cloned.
    clones: BTreeMap<String, u64>,
    /// Rollback records: (seq, target).
    rollbacks: Vec<(u64, u64)>,
    /// The oldest retained point: the highest the volume ever reported, and
    /// the highest a successful retention pass reported (so durable).
    first_seen: u64,
    first_durable: u64,
}

impl Model {
    fn head(&self) -> u64 {
        self.images.len() as u64 - 1
    }
    fn push(&mut self, image: Vec<u8>, snapshots: BTreeMap<String, u64>) {
        self.images.push(image);
        self.snapshots.push(snapshots);
    }
    fn current(&self) -> (Vec<u8>, BTreeMap<String, u64>) {
        (self.images.last().unwrap().clone(), self.snapshots.last().unwrap().clone())
    }
}

fn options(fs: &MemoryFs, clock: &Arc<ManualClock>, rng: &mut SimRng) -> StoreOptions {
    StoreOptions {
        clock: clock.clone(),
        filesystem: Some(Arc::new(fs.clone())),
        segment_bytes: [300, 500, 1024, 4096, 1 << 20][rng.below(5) as usize],
        buffer_bytes: [512, 2048, 16 << 10][rng.below(3) as usize],
        checkpoint_records: rng.range(1, 10),
        commit_interval: None,
        inline_blake3: rng.chance(1, 4),
        retention: RetentionPolicy {
            window: [None, Some(Duration::from_millis(rng.range(1, 20)))][rng.below(2) as usize],
            max_journal_bytes: match rng.below(5) {
                0 => None,
                1 | 2 => Some(JournalBudget::Bytes(rng.range(0, 3000))),
                _ => Some(JournalBudget::PercentOfSize(rng.range(5, 80) as u32)),
            },
        },
        retention_interval: None,
        spare_segments: rng.below(3) as usize,
        reserve_bytes: [1, 256, 4096, 16 << 10][rng.below(4) as usize],
        zero_ahead_bytes: [0, 64, 700, 4096][rng.below(4) as usize],
        ..StoreOptions::default()
    }
}

fn open(fs: &MemoryFs, options: &StoreOptions) -> Result<Store, String> {
    let mut options = options.clone();
    options.filesystem = Some(Arc::new(fs.clone()));
    Store::open("/memory".as_ref(), options).map_err(|e| format!("open failed: {e:?}"))
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}

/// What one case exercised, summed over a run to show coverage.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    records: u64,
    /// Cases with at least one completed fold before the crash; of those,
    /// cases where a fold wrote small pieces into the base file in place.
    folded: u64,
    folded_in_place: u64,
    /// Cases that reused a spare segment file; cases that prepared one
    /// ahead (a new file of zeros, not a reclaimed segment).
    recycled: u64,
    prepared: u64,
    /// Cases whose crash interrupted a fold (or failed one).
    fold_interrupted: u64,
    /// Cases that recovered with a folded base, or with a fold pending.
    recovered_base: u64,
    recovered_pending: u64,
    /// Cases where the disk was full: an operation was refused with ENOSPC;
    /// and of those, cases where a write succeeded after a refusal.
    refused: u64,
    resumed: u64,
    /// Cases that cleaned a base segment (copied its live data into the
    /// base file) before the crash; whose clean failed or was cut short by
    /// the crash; that crashed just before a rename or removal; and that
    /// recovered with base segments (base data kept in the journal).
    cleaned: u64,
    clean_interrupted: u64,
    dir_op_crash: u64,
    recovered_base_segments: u64,
}

impl std::ops::AddAssign for Coverage {
    fn add_assign(&mut self, other: Self) {
        self.records += other.records;
        self.folded += other.folded;
        self.folded_in_place += other.folded_in_place;
        self.recycled += other.recycled;
        self.prepared += other.prepared;
        self.fold_interrupted += other.fold_interrupted;
        self.recovered_base += other.recovered_base;
        self.recovered_pending += other.recovered_pending;
        self.refused += other.refused;
        self.resumed += other.resumed;
        self.cleaned += other.cleaned;
        self.clean_interrupted += other.clean_interrupted;
        self.dir_op_crash += other.dir_op_crash;
        self.recovered_base_segments += other.recovered_base_segments;
    }
}

/// Whether an operation was refused because the disk had no space for its
/// record (then it must have changed nothing).
fn no_space(error: &WriteError) -> bool {
    let refused = matches!(error, WriteError::NoSpace(_));
    if refused {
        assert!(error.is_retryable() && error.raw_os_error() == Some(libc::ENOSPC));
    }
    refused
}

/// Runs one case; `Err` describes the violated property.
fn run_case(seed: u64) -> Result<Coverage, String> {
    let mut coverage = Coverage::default();
    let family = family_of(seed);
    let mut rng = SimRng::new(seed);
    let fs = MemoryFs::new();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000_000_000));
    let options = options(&fs, &clock, &mut rng);
    let store = open(&fs, &options)?;
    let volume = store.create_volume("v", SIZE).map_err(|e| format!("create: {e:?}"))?;
    let mut model = Model {
        images: vec![vec![0; SIZE as usize]],
        snapshots: vec![BTreeMap::new()],
        durable: 0,
        maybe: None,
        clones: BTreeMap::new(),
        rollbacks: Vec::new(),
        first_seen: 0,
        first_durable: 0,
    };
    // A point opened at some time, read after later operations: it reads
    // its image until retention retires it, then fails, never other bytes.
    let mut held: Option<PointView> = None;
    // Half the cases favour folding: fewer protected points, longer runs,
    // later crashes.
    let fold_heavy = rng.chance(1, 2);
    let last_sync = if fold_heavy { 30 } else { 12 };
    let faults = match family {
        // A third crash just before a directory operation instead (a
        // rename or removal: mid-reclaim, before a replacement file lands).
        Family::CrashAtSync if rng.chance(1, 3) => {
            Faults { crash_at_dir_op: Some(rng.range(1, 16)), ..Faults::default() }
        }
        Family::CrashAtSync => Faults { crash_at_sync: Some(rng.range(1, last_sync)), ..Faults::default() },
        Family::PowerLoss => Faults::default(),
        Family::FailedWrite => {
            let fault = Some((rng.range(1, 12), if rng.chance(1, 2) { libc::EIO } else { libc::ENOSPC }));
            if rng.chance(1, 3) {
                Faults { fail_allocate_at: fault, ..Faults::default() }
            } else {
                Faults { fail_write_at: fault, ..Faults::default() }
            }
        }
        Family::FailedSync => {
            // ENOSPC too: some filesystems (NFS, thin-provisioned devices)
            // report a full disk only at fdatasync.
            let errno = if rng.chance(1, 4) { libc::ENOSPC } else { libc::EIO };
            Faults { fail_sync_at: Some((rng.range(1, 10), errno)), ..Faults::default() }
        }
    };
    fs.set_faults(faults.clone(), rng.next_u64());
    // A nearly full disk: a few blocks free (records are up to 800 bytes,
    // blocks 512).
    let full_disk = rng.chance(1, 3);
    if full_disk {
        fs.set_capacity(Some(fs.used_bytes() + rng.range(1, 24) * store::memory::BLOCK_BYTES));
    }
    let mut refusals = 0u64;
    let operations = if fold_heavy { rng.range(10, 50) } else { rng.range(4, 40) };
    let trace = std::env::var("REWIND_TRACE").is_ok();
    if trace {
        eprintln!("{family:?} {options:?}");
    }
    let mut failed = false;
    let mut live = Some((store, volume));
    for _ in 0..operations {
        let Some((store, volume)) = &live else { break };
        clock.advance(rng.range(0, 3_000_000) as i64);
        let head_before = volume.head_seq();
        ensure!(head_before == model.head(), "head {head_before} != model {}", model.head());
        let size = model.images.last().unwrap().len() as u64;
        let poisoned = volume.poison().is_some();
        let (mut image, mut snapshots) = model.current();
        if trace {
            let history = volume.history();
            eprintln!(
                "op: head {head_before} first {} durable {} stats {:?}",
                history.first_seq,
                volume.durable_seq(),
                volume.stats()
            );
        }
        let made_durable;
        let succeeded;
        // The op was refused for lack of space (so it must change nothing).
        let mut refused = false;
        let mut op = rng.below(121);
        if fold_heavy && matches!(op, 78..=82 | 86..=93) && rng.chance(3, 4) {
            // Fewer protected points, so that folds go further.
            op = rng.below(50);
        }
        match op {
            0..=49 => {
                let length = rng.range(1, 700).min(size);
                let offset = rng.below(size - length + 1);
                let mut data = vec![0; length as usize];
                rng.fill(&mut data);
                let fua = rng.chance(1, 5);
                let result = volume.write(offset, &data, fua);
                image[offset as usize..(offset + length) as usize].copy_from_slice(&data);
                refused = result.as_ref().is_err_and(no_space);
                succeeded = result.is_ok();
                made_durable = fua && succeeded;
            }
            50..=65 => {
                let length = rng.range(1, size);
                let offset = rng.below(size - length + 1);
                let fua = rng.chance(1, 5);
                let result = if rng.chance(1, 2) {
                    volume.write_zeroes(offset, length, fua)
                } else {
                    volume.trim(offset, length, fua)
                };
                image[offset as usize..(offset + length) as usize].fill(0);
                refused = result.as_ref().is_err_and(no_space);
                succeeded = result.is_ok();
                made_durable = fua && succeeded;
            }
            66..=77 => {
                succeeded = volume.flush().is_ok();
                made_durable = succeeded;
            }
            78..=82 => {
                let name = format!("s{}", rng.below(3));
                let exists = snapshots.contains_key(&name);
                match volume.create_snapshot(&name) {
                    Err(SnapshotError::Exists(_)) => {
                        ensure!(exists, "snapshot {name} refused as existing");
                        continue;
                    }
                    result => {
                        ensure!(!exists || poisoned, "duplicate snapshot {name} accepted");
                        snapshots.insert(name, head_before + 1);
                        refused = matches!(&result, Err(SnapshotError::Write(error)) if no_space(error));
                        succeeded = result.is_ok();
                    }
                }
                made_durable = succeeded;
            }
            83..=85 => {
                let Some(name) = snapshots.keys().next().cloned() else {
                    continue;
                };
                snapshots.remove(&name);
                let result = volume.delete_snapshot(&name);
                refused = matches!(&result, Err(SnapshotError::Write(error)) if no_space(error));
                succeeded = result.is_ok();
                made_durable = succeeded;
            }
            86..=91 => {
                let target = rng.below(head_before + 1);
                image = model.images[target as usize].clone();
                match volume.rollback(target) {
                    Err(RollbackError::Point(PointError::OutsideHistory { window, .. })) => {
                        ensure!(target < window.first_seq || poisoned, "rollback to #{target} refused");
                        continue;
                    }
                    result => {
                        refused = matches!(&result, Err(RollbackError::Write(error)) if no_space(error));
                        succeeded = result.is_ok();
                        if volume.head_seq() == head_before + 1 {
                            model.rollbacks.push((head_before + 1, target));
                        }
                    }
                }
                made_durable = succeeded;
            }
            92..=93 if model.clones.len() < 2 => {
                // A clone of a random point; its creation makes the parent
                // durable, so the model's durable mark moves to the head.
                let seq = rng.below(head_before + 1);
                let name = format!("c{}", model.clones.len());
                if store.clone_volume("v", seq, &name).is_ok() {
                    model.clones.insert(name, seq);
                    model.durable = model.head();
                }
                continue;
            }
            92..=96 => {
                let new_size = rng.range(1024, 2 * SIZE);
                image.resize(new_size as usize, 0);
                let result = volume.resize(new_size);
                refused = matches!(&result, Err(ResizeError::Write(error)) if no_space(error));
                succeeded = result.is_ok();
                made_durable = succeeded;
            }
            97..=114 => {
                // A retention pass (folds, reclaims, rewrites the checkpoint),
                // often after a flush: only durable records are folded.
                if rng.chance(2, 3) && volume.flush().is_ok() {
                    model.durable = model.head();
                }
                let folded = volume.enforce_retention(clock.now_nanos()).is_ok();
                let first = check_retention(volume, &model, "after a retention pass")?;
                ensure!(
                    first >= model.first_seen,
                    "first seq went back from {} to {first}",
                    model.first_seen
                );
                model.first_seen = first;
                if folded {
                    model.first_durable = first;
                }
                continue;
            }
            115 => {
                // What the spare thread does: whole-segment spare files
                // made ahead of the writer (zeros, fresh segment numbers).
                if volume.prepare_spares() > 0 {
                    coverage.prepared = 1;
                }
                continue;
            }
            116..=117 => {
                let history = volume.history();
                let seq = rng.range(history.first_seq, history.head_seq);
                held = Some(volume.open_point(seq).map_err(|e| format!("open point {seq}: {e:?}"))?);
                continue;
            }
            _ => {
                // Clean shutdown and restart, no crash.
                if store.close().is_err() || fs.crashed() {
                    break;
                }
                model.durable = model.head();
                live = None;
                // Its volume object is gone with the old store.
                held = None;
                // Reopening can meet the injected fault (recovery syncs).
                let Ok(store) = open(&fs, &options) else {
                    break;
                };
                let Some(volume) = store.volume("v") else {
                    // The fault met the volume's recovery: it is not opened
                    // (the store is, and says why).
                    ensure!(
                        store
                            .unopened()
                            .iter()
                            .any(|(name, why)| name == "v" && why.contains("opening it failed")),
                        "volume lost on clean reopen: {:?}",
                        store.unopened()
                    );
                    break;
                };
                if let Some((image, snapshots)) = model.maybe.take()
                    && volume.head_seq() == model.head() + 1
                {
                    model.push(image, snapshots);
                    model.durable = model.head();
                }
                ensure!(
                    volume.head_seq() == model.head(),
                    "clean reopen: head {} != {}",
                    volume.head_seq(),
                    model.head()
                );
                // Points retired by a fold whose intent never became durable
                // come back; those of a durable intent do not.
                check_segments(&volume, "clean reopen")?;
                let first = check_retention(&volume, &model, "clean reopen")?;
                ensure!(
                    (model.first_durable..=model.first_seen).contains(&first),
                    "clean reopen: first seq {first} outside {}..={}",
                    model.first_durable,
                    model.first_seen
                );
                model.first_seen = first;
                live = Some((store, volume));
                continue;
            }
        }
        if poisoned {
            ensure!(!succeeded || volume.head_seq() == head_before, "poisoned volume accepted a write");
        }
        if family == Family::PowerLoss {
            // No injected fault: a full disk refuses, it never poisons.
            ensure!(volume.poison().is_none(), "volume poisoned without a fault: {:?}", volume.poison());
            ensure!(succeeded || refused, "op {op} failed without a fault (and not for space)");
        }
        if matches!(family, Family::CrashAtSync | Family::FailedSync) {
            // Only the injected fault poisons, never the full disk.
            let injected = faults.fail_sync_at.map_or(libc::EIO, |(_, errno)| errno);
            let errno = volume.poison().and_then(|poison| poison.raw_os_error);
            ensure!(errno.is_none_or(|errno| errno == injected), "volume poisoned with errno {errno:?}");
        }
        if refused {
            // Refused before anything changed: no seq, the head's image as
            // before, the volume still writable.
            ensure!(full_disk || family == Family::FailedWrite, "refused for space with space to spare");
            ensure!(volume.head_seq() == head_before, "op {op} refused for space moved the head");
            ensure!(volume.poison().is_none(), "op {op} refused for space poisoned the volume");
            let expected = model.images.last().unwrap();
            let mut buf = vec![0xEE; expected.len()];
            match volume.read(0, &mut buf) {
                Ok(()) => ensure!(&buf == expected, "op {op} refused for space changed the head's image"),
                // The machine went down while the refusal gave up spare
                // files (a crash at a removal): nothing reads any more.
                Err(ReadError::Io(_)) if fs.crashed() => break,
                Err(error) => return Err(format!("head read after a refusal: {error:?}")),
            }
            refusals += 1;
            if full_disk && rng.chance(1, 6) {
                // Space is freed (or the disk grows).
                fs.set_capacity(
                    [None, Some(fs.used_bytes() + rng.range(1, 40) * 512)][rng.below(2) as usize],
                );
            }
            continue;
        }
        if succeeded && refusals > 0 && head_after_refusal(volume, head_before) {
            coverage.resumed = 1;
        }
        if let Some(point) = &held {
            check_held(point, volume, &model, fs.crashed())?;
        }
        // The op's record exists iff the head moved (a metadata op may have
        // appended and then failed its flush).
        let head_after = volume.head_seq();
        ensure!(
            head_after == head_before || head_after == head_before + 1,
            "one op moved the head by {}",
            head_after - head_before
        );
        if head_after == head_before + 1 {
            model.push(image, snapshots);
        } else if !succeeded && model.maybe.is_none() {
            model.maybe = Some((image, snapshots));
        } else {
            ensure!(!succeeded || head_after == head_before, "op succeeded without a record");
        }
        if made_durable {
            model.durable = model.head();
        }
        if !succeeded {
            failed = true;
        }
        if (failed && rng.chance(1, 3)) || fs.crashed() && rng.chance(1, 2) {
            break;
        }
        if family == Family::PowerLoss && rng.chance(1, 25) {
            break;
        }
    }
    if let Some((_, volume)) = &live {
        let stats = volume.stats();
        coverage.folded = u64::from(stats.folds > 0 || stats.base_seq > 0);
        coverage.folded_in_place = u64::from(stats.fold_copied_bytes > 0);
        coverage.recycled = u64::from(stats.recycled_segments > 0);
        coverage.fold_interrupted = u64::from(stats.fold_failures > 0 || stats.first_seq > stats.base_seq);
        coverage.cleaned = u64::from(stats.cleaned_segments > 0);
        coverage.clean_interrupted = u64::from(stats.clean_failures > 0);
        ensure!(
            volume.durable_seq() >= model.durable,
            "durable_seq {} below acknowledged {}",
            volume.durable_seq(),
            model.durable
        );
    }
    coverage.dir_op_crash = u64::from(faults.crash_at_dir_op.is_some() && fs.crashed());
    // Power loss.
    let loss = [Loss::KeepAll, Loss::LoseAll, Loss::TearLast, Loss::Random][rng.below(4) as usize];
    let image_fs = fs.crash_image(loss, rng.next_u64());
    drop(live);
    if let Some((image, snapshots)) = model.maybe.take() {
        // Only acceptable as the very next seq after the last known one.
        let store = open(&image_fs.crash_image(Loss::KeepAll, 0), &options)?;
        let head =
            store.volume("v").ok_or_else(|| format!("volume lost: {:?}", store.unopened()))?.head_seq();
        if head == model.head() + 1 {
            model.push(image, snapshots);
        }
    }
    let store = open(&image_fs, &options)?;
    let volume = store.volume("v").ok_or_else(|| format!("volume lost: {:?}", store.unopened()))?;
    let stats = volume.stats();
    coverage.recovered_base = u64::from(stats.base_seq > 0);
    coverage.recovered_pending = u64::from(stats.first_seq > stats.base_seq);
    coverage.recovered_base_segments = u64::from(stats.base_segments > 0);
    check(&store, &volume, &model, "after crash")?;
    // The recovered volume takes writes, and they do not resurrect anything
    // from before the cut (a stale record past the cut must stay dead).
    if rng.chance(1, 3) {
        let head = volume.head_seq();
        let data = [0x5A; 64];
        let written = volume.write(0, &data, true).map_err(|e| format!("write after recovery: {e:?}"))?;
        ensure!(written == head + 1, "seq after recovery");
        let again_fs = image_fs.crash_image(Loss::Random, rng.next_u64());
        drop(volume);
        drop(store);
        let store = open(&again_fs, &options)?;
        let volume = store.volume("v").ok_or_else(|| format!("volume lost: {:?}", store.unopened()))?;
        ensure!(volume.head_seq() == head + 1, "second recovery head {} != {}", volume.head_seq(), head + 1);
        let first = volume.history().first_seq;
        let mut truncated = Model {
            images: model.images[..=head as usize].to_vec(),
            snapshots: model.snapshots[..=head as usize].to_vec(),
            durable: head,
            maybe: None,
            clones: model.clones.clone(),
            rollbacks: model.rollbacks.iter().copied().filter(|&(seq, _)| seq <= head).collect(),
            first_seen: first,
            first_durable: first,
        };
        let (mut image, snapshots) = truncated.current();
        image[..64].copy_from_slice(&data);
        truncated.push(image, snapshots);
        truncated.durable = head + 1;
        check(&store, &volume, &truncated, "after second crash")?;
    }
    coverage.records = model.head();
    coverage.refused = u64::from(refusals > 0);
    Ok(coverage)
}

/// Whether the last op appended a record (a write went through).
fn head_after_refusal(volume: &Volume, head_before: u64) -> bool {
    volume.head_seq() > head_before
}

/// Checks that the oldest retained point passes no protected point: the
/// snapshots, the clones' bases, and the targets of rollbacks after it.
/// Returns the first retained seq.
fn check_retention(volume: &Volume, model: &Model, when: &str) -> Result<u64, String> {
    let history = volume.history();
    let first = history.first_seq;
    let head = history.head_seq;
    ensure!(first <= head, "{when}: first seq {first} past head {head}");
    for (name, &seq) in &model.snapshots[head as usize] {
        ensure!(first <= seq, "{when}: snapshot {name} at #{seq} folded (first #{first})");
    }
    for (name, &seq) in &model.clones {
        ensure!(first <= seq, "{when}: clone {name}'s base #{seq} folded (first #{first})");
    }
    for &(seq, target) in &model.rollbacks {
        ensure!(
            seq > head || seq <= first || target >= first,
            "{when}: rollback #{seq} to #{target} kept but its target folded (first #{first})"
        );
    }
    Ok(first)
}

/// Checks what recovery rebuilt of the base segments: it kept exactly the
/// ones the base map points into (a dead one is reclaimed at open), and the
/// live bytes it counts per segment add up to the base data in the journal.
fn check_segments(volume: &Volume, when: &str) -> Result<(), String> {
    let stats = volume.stats();
    let usage = volume.segment_usage();
    for segment in usage.iter().filter(|segment| segment.base) {
        ensure!(segment.live_bytes > 0, "{when}: dead base segment {segment:?} survived recovery");
        ensure!(segment.live_bytes <= segment.bytes, "{when}: segment {segment:?} more live than long");
    }
    let live: u64 = usage.iter().map(|segment| segment.live_bytes).sum();
    ensure!(live == stats.base_journal_bytes, "{when}: live bytes {live} != {}", stats.base_journal_bytes);
    ensure!(
        usage.iter().filter(|segment| segment.base).count() as u64 == stats.base_segments,
        "{when}: base segments miscounted"
    );
    Ok(())
}

/// A point opened earlier reads its image, or fails as retired once
/// retention passed it; never other bytes.
fn check_held(point: &PointView, volume: &Volume, model: &Model, crashed: bool) -> Result<(), String> {
    let mut buf = vec![0xEE; point.size() as usize];
    let seq = point.seq();
    match point.read(0, &mut buf) {
        Ok(()) => {
            ensure!(buf == model.images[seq as usize], "held point #{seq} differs from the model");
            Ok(())
        }
        Err(ReadError::Retired { .. }) => {
            ensure!(seq < volume.history().first_seq, "held point #{seq} retired inside the history");
            Ok(())
        }
        Err(ReadError::Io(_)) if crashed => Ok(()),
        Err(error) => Err(format!("held point #{seq}: {error:?}")),
    }
}

/// Checks a recovered volume against the model.
fn check(store: &Store, volume: &Arc<Volume>, model: &Model, when: &str) -> Result<(), String> {
    let head = volume.head_seq();
    ensure!(
        head >= model.durable,
        "{when}: lost acknowledged writes: head {head} < durable {}",
        model.durable
    );
    ensure!(head <= model.head(), "{when}: head {head} beyond model {}", model.head());
    check_segments(volume, when)?;
    let first = check_retention(volume, model, when)?;
    ensure!(
        (model.first_durable..=model.first_seen.max(model.first_durable)).contains(&first),
        "{when}: first seq {first} outside {}..={}",
        model.first_durable,
        model.first_seen
    );
    if first > 0 {
        ensure!(
            matches!(volume.open_point(first - 1), Err(PointError::OutsideHistory { .. })),
            "{when}: point #{} before the first retained one opens",
            first - 1
        );
    }
    for seq in first..=head {
        let expected = &model.images[seq as usize];
        let point = volume.open_point(seq).map_err(|e| format!("{when}: open point {seq}: {e:?}"))?;
        ensure!(
            point.size() == expected.len() as u64,
            "{when}: seq {seq} size {} != {}",
            point.size(),
            expected.len()
        );
        let mut buf = vec![0xEE; expected.len()];
        point.read(0, &mut buf).map_err(|e| format!("{when}: read point {seq}: {e:?}"))?;
        if &buf != expected {
            let at = buf.iter().zip(expected).position(|(a, b)| a != b).unwrap();
            return Err(format!("{when}: seq {seq} differs from the model at byte {at}"));
        }
    }
    let expected = &model.images[head as usize];
    let mut buf = vec![0xEE; expected.len()];
    volume.read(0, &mut buf).map_err(|e| format!("{when}: head read: {e:?}"))?;
    ensure!(&buf == expected, "{when}: head differs from the model");
    let mut at = 0usize;
    for extent in volume.extents(0, expected.len() as u64).map_err(|e| format!("{e:?}"))? {
        let bytes = &expected[at..at + extent.length as usize];
        ensure!(!extent.zero || bytes.iter().all(|&b| b == 0), "{when}: zero extent with data");
        at += extent.length as usize;
    }
    ensure!(at == expected.len(), "{when}: extents cover {at} bytes");
    for (name, &seq) in &model.clones {
        let clone = store.volume(name).ok_or(format!("{when}: clone {name} lost"))?;
        let expected = &model.images[seq as usize];
        ensure!(clone.size() == expected.len() as u64, "{when}: clone {name} size");
        let mut buf = vec![0xEE; expected.len()];
        clone.read(0, &mut buf).map_err(|e| format!("{when}: clone read: {e:?}"))?;
        ensure!(&buf == expected, "{when}: clone {name} differs from seq {seq}");
    }
    let snapshots: BTreeMap<String, u64> = volume.snapshots().into_iter().map(|s| (s.name, s.seq)).collect();
    ensure!(
        snapshots == model.snapshots[head as usize],
        "{when}: snapshots {snapshots:?} != {:?}",
        model.snapshots[head as usize]
    );
    Ok(())
}

fn run_family(family: u64) {
    if let Ok(seed) = std::env::var("REWIND_SEED") {
        let seed: u64 = seed.parse().expect("REWIND_SEED is a u64");
        if seed % FAMILIES == family
            && let Err(error) = run_case(seed)
        {
            panic!("REWIND_SEED={seed}: {error}");
        }
        return;
    }
    let cases: u64 = std::env::var("REWIND_CRASH_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(50_000);
    let base: u64 =
        std::env::var("REWIND_BASE_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    let base = base - base % FAMILIES + family;
    let mut coverage = Coverage::default();
    for case in 0..cases {
        let seed = base.wrapping_add(case * FAMILIES);
        match catch_unwind(AssertUnwindSafe(|| run_case(seed))) {
            Ok(Ok(case)) => coverage += case,
            Ok(Err(error)) => panic!(
                "crash case failed: {error}\nreplay: REWIND_SEED={seed} cargo test -p store --test crash"
            ),
            Err(_) => {
                panic!("crash case panicked\nreplay: REWIND_SEED={seed} cargo test -p store --test crash")
            }
        }
    }
    println!("{:?}: {cases} crash states checked, {coverage:?} (base seed {base})", family_of(family));
}

/// Power lost exactly at a random sync; unsynced bytes kept, lost or torn.
#[test]
fn crash_at_any_sync() {
    run_family(0);
}

/// Power lost at a random moment without any IO error.
#[test]
fn power_loss_at_random_moments() {
    run_family(1);
}

/// A write fails with EIO or ENOSPC (possibly half done), the volume refuses
/// further writes, then power is lost.
#[test]
fn failed_write_then_crash() {
    run_family(2);
}

/// A sync fails with EIO or ENOSPC, the volume refuses further writes, then
/// power is lost.
#[test]
fn failed_sync_then_crash() {
    run_family(3);
}
