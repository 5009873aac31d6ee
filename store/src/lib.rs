//! rewind's volume engine: every write to a volume is appended to a journal,
//! so the volume can be read as it was at any point of its history.
//!
//! A [`Store`] holds the volumes of a data dir. A [`Volume`] is a base image
//! (zeros, or a clone's parent at a point) plus an append-only journal of
//! records, each with a seq; every seq is a point that [`Volume::open_point`]
//! opens read-only. Rollback and clones are metadata records, whatever the
//! size. The on-disk format and the commit protocol are in docs/journal.md.
//!
//! Retention ([`RetentionPolicy`]) keeps every point of a recent window
//! within a journal budget: a background thread folds older history into
//! the volume's base image without copying it (the base data stays in its
//! journal segment), reclaims the segments nothing points into, and cleans
//! segments that hold mostly dead data by copying their live data into the
//! base file; freed segment files are reused.
//!
//! A full disk refuses writes with ENOSPC ([`WriteError::NoSpace`]) before
//! acknowledging them: every journal record's disk space is allocated
//! before it is appended, so nothing acknowledged is lost for lack of space
//! (docs/journal.md, "Space").
//!
//! What this crate does not do: networking (the NBD server calls it),
//! thinning old history to one point per minute/hour/day or compacting
//! between protected points (folding the oldest history is the only
//! reclamation), replication.
//!
//! Threading: everything is synchronous and thread-safe; calls are short
//! except [`Volume::flush`] (and FUA writes), which wait for one fdatasync
//! shared by all concurrent flushers.

pub mod backend;
pub mod base;
pub mod clock;
pub mod error;
pub mod index;
pub mod journal;
pub mod layout;
pub mod mapped;
pub mod memory;
pub mod retention;
pub mod store;
pub mod uring;
pub mod volume;

pub use backend::{
    Engine, EngineChoice, FileBackend, Filesystem, PRIVATE_FILE_MODE, RealFs, StorageBackend,
    create_private_dir, pick_engine,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{
    CloneError, CreateError, DeleteError, FlushError, History, OpenError, PointError, Poison, ReadError,
    ResizeError, RetentionError, RollbackError, SnapshotError, VerifyError, WriteError,
};
pub use memory::{MemoryBackend, MemoryFs};
pub use retention::{JournalBudget, RetentionPolicy};
pub use store::{Store, StoreOptions, VOLUMES_DIR, valid_volume_name};
pub use uring::UringBackend;
pub use volume::{
    Bucket, Extent, FoldReport, JournalRecord, Lent, PointView, RecoveryStats, RollbackOutcome, SegmentUsage,
    Snapshot, VerifyReport, Volume, VolumeStats,
};
