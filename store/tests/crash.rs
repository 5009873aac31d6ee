//! Crash consistency: seeded random histories on MemoryFs, crashed at a
//! random sync, with torn or lost unsynced writes, or after a failed IO;
//! each crash state is reopened and checked against a plain model (one image
//! per seq): every flushed write present, losses only a suffix, every point
//! equal to the model's image at that seq (DESIGN.md invariants 1-3).
//!
//! Each test runs `REWIND_CRASH_CASES` cases (default 50,000; four tests).
//! A failure prints its seed; `REWIND_SEED=N cargo test -p store --test crash`
//! replays exactly that case (the seed picks the fault family too).

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use store::memory::{Faults, Loss, MemoryFs, SimRng};
use store::{ManualClock, SnapshotError, Store, StoreOptions, Volume};

const FAMILIES: u64 = 4;
const SIZE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// The Nth sync never happens: power is lost there.
    CrashAtSync,
    /// No fault; the machine loses power at a random moment.
    PowerLoss,
    /// The Nth write fails (EIO or ENOSPC), then power is lost later.
    FailedWrite,
    /// The Nth sync fails (EIO), then power is lost later.
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
        segment_bytes: [300, 1024, 4096, 1 << 20][rng.below(4) as usize],
        buffer_bytes: [512, 2048, 16 << 10][rng.below(3) as usize],
        checkpoint_records: rng.range(1, 10),
        commit_interval: None,
        inline_blake3: rng.chance(1, 4),
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

/// Runs one case; `Err` describes the violated property.
fn run_case(seed: u64) -> Result<u64, String> {
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
    };
    let faults = match family {
        Family::CrashAtSync => Faults { crash_at_sync: Some(rng.range(1, 12)), ..Faults::default() },
        Family::PowerLoss => Faults::default(),
        Family::FailedWrite => Faults {
            fail_write_at: Some((rng.range(1, 12), if rng.chance(1, 2) { libc::EIO } else { libc::ENOSPC })),
            ..Faults::default()
        },
        Family::FailedSync => {
            Faults { fail_sync_at: Some((rng.range(1, 10), libc::EIO)), ..Faults::default() }
        }
    };
    fs.set_faults(faults, rng.next_u64());
    let operations = rng.range(4, 40);
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
        let made_durable;
        let succeeded;
        match rng.below(100) {
            0..=49 => {
                let length = rng.range(1, 700).min(size);
                let offset = rng.below(size - length + 1);
                let mut data = vec![0; length as usize];
                rng.fill(&mut data);
                let fua = rng.chance(1, 5);
                let result = volume.write(offset, &data, fua);
                image[offset as usize..(offset + length) as usize].copy_from_slice(&data);
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
                succeeded = volume.delete_snapshot(&name).is_ok();
                made_durable = succeeded;
            }
            86..=91 => {
                let target = rng.below(head_before + 1);
                image = model.images[target as usize].clone();
                succeeded = volume.rollback(target).is_ok();
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
                succeeded = volume.resize(new_size).is_ok();
                made_durable = succeeded;
            }
            _ => {
                // Clean shutdown and restart, no crash.
                if store.close().is_err() || fs.crashed() {
                    break;
                }
                model.durable = model.head();
                live = None;
                // Reopening can meet the injected fault (recovery syncs).
                let Ok(store) = open(&fs, &options) else {
                    break;
                };
                let volume = store.volume("v").ok_or("volume lost on clean reopen")?;
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
                live = Some((store, volume));
                continue;
            }
        }
        if poisoned {
            ensure!(!succeeded || volume.head_seq() == head_before, "poisoned volume accepted a write");
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
        ensure!(
            volume.durable_seq() >= model.durable,
            "durable_seq {} below acknowledged {}",
            volume.durable_seq(),
            model.durable
        );
    }
    // Power loss.
    let loss = [Loss::KeepAll, Loss::LoseAll, Loss::TearLast, Loss::Random][rng.below(4) as usize];
    let image_fs = fs.crash_image(loss, rng.next_u64());
    drop(live);
    if let Some((image, snapshots)) = model.maybe.take() {
        // Only acceptable as the very next seq after the last known one.
        let store = open(&image_fs.crash_image(Loss::KeepAll, 0), &options)?;
        let head = store.volume("v").ok_or("volume lost")?.head_seq();
        if head == model.head() + 1 {
            model.push(image, snapshots);
        }
    }
    let store = open(&image_fs, &options)?;
    let volume = store.volume("v").ok_or("volume lost")?;
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
        let volume = store.volume("v").ok_or("volume lost")?;
        ensure!(volume.head_seq() == head + 1, "second recovery head {} != {}", volume.head_seq(), head + 1);
        let mut truncated = Model {
            images: model.images[..=head as usize].to_vec(),
            snapshots: model.snapshots[..=head as usize].to_vec(),
            durable: head,
            maybe: None,
            clones: model.clones.clone(),
        };
        let (mut image, snapshots) = truncated.current();
        image[..64].copy_from_slice(&data);
        truncated.push(image, snapshots);
        truncated.durable = head + 1;
        check(&store, &volume, &truncated, "after second crash")?;
    }
    Ok(model.head())
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
    for seq in 0..=head {
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
        if seed % FAMILIES == family {
            if let Err(error) = run_case(seed) {
                panic!("REWIND_SEED={seed}: {error}");
            }
        }
        return;
    }
    let cases: u64 = std::env::var("REWIND_CRASH_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(50_000);
    let base: u64 =
        std::env::var("REWIND_BASE_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
        });
    let base = base - base % FAMILIES + family;
    let mut records = 0;
    for case in 0..cases {
        let seed = base.wrapping_add(case * FAMILIES);
        match catch_unwind(AssertUnwindSafe(|| run_case(seed))) {
            Ok(Ok(head)) => records += head,
            Ok(Err(error)) => panic!(
                "crash case failed: {error}\nreplay: REWIND_SEED={seed} cargo test -p store --test crash"
            ),
            Err(_) => {
                panic!("crash case panicked\nreplay: REWIND_SEED={seed} cargo test -p store --test crash")
            }
        }
    }
    println!("{:?}: {cases} crash states checked, {records} records (base seed {base})", family_of(family));
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

/// A sync fails with EIO, the volume refuses further writes, then power is lost.
#[test]
fn failed_sync_then_crash() {
    run_family(3);
}
