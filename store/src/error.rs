//! One error enum per operation. IO causes keep their `std::io::Error`, so
//! the NBD layer can map `raw_os_error()` / `kind()` to NBD_ENOSPC, NBD_EIO.

use std::io;

use thiserror::Error;

/// The retained history of a volume: the points that can be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct History {
    /// Oldest seq that can be opened (0 = the volume's creation).
    pub first_seq: u64,
    /// Time of `first_seq`, unix nanoseconds.
    pub first_time: i64,
    /// Newest seq (the head).
    pub head_seq: u64,
    /// Time of `head_seq`, unix nanoseconds.
    pub head_time: i64,
}

/// Why a volume refuses writes: the error that poisoned it, kept so that
/// every later write reports the same errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Poison {
    /// Kind of the first failed write or sync.
    pub kind: io::ErrorKind,
    /// Its errno, when it came from the OS (ENOSPC, EIO, ...).
    pub raw_os_error: Option<i32>,
}

impl Poison {
    pub(crate) fn from_error(error: &io::Error) -> Self {
        Self { kind: error.kind(), raw_os_error: error.raw_os_error() }
    }

    /// A fresh `io::Error` carrying the original errno.
    pub fn to_io_error(self) -> io::Error {
        match self.raw_os_error {
            Some(code) => io::Error::from_raw_os_error(code),
            None => io::Error::from(self.kind),
        }
    }
}

impl std::fmt::Display for Poison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_io_error())
    }
}

/// Failure of [`crate::Store::open`].
#[derive(Debug, Error)]
pub enum OpenError {
    /// The data dir or a volume's files could not be read or written.
    #[error("cannot open {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// Another process holds the data dir's lock file.
    #[error("data dir {path} is in use by another process")]
    Locked { path: String },
    /// A volume's files contradict each other in a way recovery cannot mend
    /// (for example a clone whose parent is missing).
    #[error("volume {volume} is damaged: {reason}")]
    Corrupt { volume: String, reason: String },
}

/// Failure of [`crate::Store::create_volume`].
#[derive(Debug, Error)]
pub enum CreateError {
    /// Names are 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with `.`.
    #[error("invalid volume name {0:?}: use 1-64 of A-Z a-z 0-9 . _ - (not starting with .)")]
    InvalidName(String),
    /// A volume with this name exists.
    #[error("volume {0} already exists")]
    Exists(String),
    /// The volume's directory exists but is not a served volume (damage, a
    /// renamed directory, foreign files): kept, not replaced.
    #[error("{dir} exists and is not a volume the daemon serves: {why}")]
    NotAVolume { dir: String, why: String },
    /// Size is zero or above the largest supported size.
    #[error("invalid size {size}: must be more than 0 and at most {max} bytes (1EiB)")]
    InvalidSize { size: u64, max: u64 },
    /// The volume's files could not be created.
    #[error("cannot create volume files")]
    Io(#[source] io::Error),
}

/// Failure of [`crate::Store::delete_volume`].
#[derive(Debug, Error)]
pub enum DeleteError {
    /// No volume has this name.
    #[error("no volume named {0}")]
    NotFound(String),
    /// Clones read through this volume; pass `force` to hide it instead (its
    /// data is kept until the last clone is deleted).
    #[error("volume {volume} has clones ({}); delete them first or force", clones.join(", "))]
    HasClones { volume: String, clones: Vec<String> },
    /// The volume's files could not be removed.
    #[error("cannot remove volume files")]
    Io(#[source] io::Error),
}

/// Failure of [`crate::Store::clone_volume`].
#[derive(Debug, Error)]
pub enum CloneError {
    /// No volume has the source name.
    #[error("no volume named {0}")]
    SourceNotFound(String),
    /// The point is outside the source's history.
    #[error("cannot clone that point")]
    Point(#[source] PointError),
    /// The new name is invalid or taken.
    #[error("cannot create the clone")]
    Create(#[source] CreateError),
}

/// Failure of a write, trim or write-zeroes.
#[derive(Debug, Error)]
pub enum WriteError {
    /// offset + length is past the end of the volume (or overflows).
    #[error("range {offset}+{length} is outside the volume of {size} bytes")]
    OutOfBounds { offset: u64, length: u64, size: u64 },
    /// A previous write or sync failed; the volume refuses writes until it
    /// is reopened. Carries the original errno.
    #[error("volume refuses writes after an earlier IO error ({0}); reopen it")]
    Poisoned(Poison),
    /// This write failed: the volume is now poisoned.
    #[error("journal write failed")]
    Io(#[source] io::Error),
    /// The disk has no space for this write's journal record (ENOSPC,
    /// EDQUOT, or EFBIG from the filesystem): the write was not applied,
    /// and nothing else changed. The volume stays writable: the same call
    /// succeeds once space is freed (retryable). Reported as ENOSPC.
    /// (Only a write whose records cannot share one journal segment, far
    /// bigger than any NBD request unless the journal budget is tiny, may
    /// have had a prefix of its records applied; docs/journal.md, "Space".)
    #[error("no disk space for the journal; the write was not applied (free space, then retry)")]
    NoSpace(#[source] io::Error),
    /// The volume was deleted.
    #[error("volume was deleted")]
    Deleted,
}

impl WriteError {
    /// The errno to report to a client: ENOSPC, EIO, EINVAL, ...
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::OutOfBounds { .. } => Some(libc::EINVAL),
            Self::Poisoned(poison) => poison.raw_os_error.or(Some(libc::EIO)),
            Self::Io(error) => error.raw_os_error().or(Some(libc::EIO)),
            Self::NoSpace(_) => Some(libc::ENOSPC),
            Self::Deleted => Some(libc::ESHUTDOWN),
        }
    }

    /// The io::ErrorKind closest to this error.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::OutOfBounds { .. } => io::ErrorKind::InvalidInput,
            Self::Poisoned(poison) => poison.kind,
            Self::Io(error) => error.kind(),
            Self::NoSpace(_) => io::ErrorKind::StorageFull,
            Self::Deleted => io::ErrorKind::NotFound,
        }
    }

    /// Whether the same call may succeed later without reopening: only
    /// [`Self::NoSpace`], once space is freed (an IO error poisons the
    /// volume; bounds do not change by retrying).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::NoSpace(_))
    }
}

/// Failure of a flush.
#[derive(Debug, Error)]
pub enum FlushError {
    /// A previous write or sync failed: nothing written since is durable.
    #[error("volume refuses writes after an earlier IO error ({0}); reopen it")]
    Poisoned(Poison),
    /// The sync failed: the volume is now poisoned.
    #[error("journal sync failed")]
    Io(#[source] io::Error),
}

impl FlushError {
    /// The errno to report to a client.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Poisoned(poison) => poison.raw_os_error.or(Some(libc::EIO)),
            Self::Io(error) => error.raw_os_error().or(Some(libc::EIO)),
        }
    }

    /// The io::ErrorKind closest to this error.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            Self::Poisoned(poison) => poison.kind,
            Self::Io(error) => error.kind(),
        }
    }
}

impl From<FlushError> for WriteError {
    fn from(error: FlushError) -> Self {
        match error {
            FlushError::Poisoned(poison) => Self::Poisoned(poison),
            FlushError::Io(error) => Self::Io(error),
        }
    }
}

/// Failure of a read (head or point).
#[derive(Debug, Error)]
pub enum ReadError {
    /// offset + length is past the end of the image (or overflows).
    #[error("range {offset}+{length} is outside the image of {size} bytes")]
    OutOfBounds { offset: u64, length: u64, size: u64 },
    /// The journal could not be read.
    #[error("journal read failed")]
    Io(#[source] io::Error),
    /// A record failed its checksum: corruption is reported, never served.
    #[error("record {seq} is corrupt: {reason}")]
    Corrupt { seq: u64, reason: String },
    /// The point (or record) was retired by retention after it was opened:
    /// the history now starts at `first_seq`.
    #[error("point #{seq} is no longer retained: the history now starts at #{first_seq}")]
    Retired { seq: u64, first_seq: u64 },
    /// The volume was reopened after this reader opened it: its files now
    /// belong to the new volume object, which may reuse them. Reconnect.
    #[error("the volume was reopened after this connection opened it: reconnect")]
    Replaced,
}

impl ReadError {
    /// The errno to report to a client.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::OutOfBounds { .. } => Some(libc::EINVAL),
            Self::Io(error) => error.raw_os_error().or(Some(libc::EIO)),
            Self::Corrupt { .. } => Some(libc::EIO),
            // The export's image is gone, as if the export were shut down.
            Self::Retired { .. } | Self::Replaced => Some(libc::ESHUTDOWN),
        }
    }
}

/// Failure of a retention pass ([`crate::Volume::enforce_retention`]).
#[derive(Debug, Error)]
pub enum RetentionError {
    /// The base image or a fold file could not be written or read. The
    /// journal still holds every record the fold needs; the next pass
    /// redoes the fold from the start (so a retried fsync never vouches for
    /// pages a failed one dropped). Journal writes are not affected.
    #[error("fold into the base image failed")]
    Io(#[from] io::Error),
}

/// Failure to open or name a point in time.
#[derive(Debug, Error)]
pub enum PointError {
    /// The seq or time is outside the retained history.
    #[error(
        "point {requested} is outside the history: seq {}..={} ({}..={} unix ns)",
        window.first_seq, window.head_seq, window.first_time, window.head_time
    )]
    OutsideHistory { requested: String, window: History },
    /// No snapshot has this name.
    #[error("no snapshot named {0}")]
    UnknownSnapshot(String),
}

/// Failure of a snapshot operation.
#[derive(Debug, Error)]
pub enum SnapshotError {
    /// Names are 1 to 64 of `A-Z a-z 0-9 . _ -`.
    #[error("invalid snapshot name {0:?}: use 1-64 of A-Z a-z 0-9 . _ -")]
    InvalidName(String),
    /// A snapshot with this name exists.
    #[error("snapshot {0} already exists")]
    Exists(String),
    /// No snapshot has this name.
    #[error("no snapshot named {0}")]
    NotFound(String),
    /// The journal record could not be written durably.
    #[error("cannot record the snapshot")]
    Write(#[source] WriteError),
}

/// Failure of a rollback.
#[derive(Debug, Error)]
pub enum RollbackError {
    /// The target is outside the history.
    #[error("cannot roll back to that point")]
    Point(#[source] PointError),
    /// The journal record could not be written durably.
    #[error("cannot record the rollback")]
    Write(#[source] WriteError),
}

/// Failure of a resize.
#[derive(Debug, Error)]
pub enum ResizeError {
    /// Zero or above the largest supported size.
    #[error("invalid size {size}: must be more than 0 and at most {max} bytes (1EiB)")]
    InvalidSize { size: u64, max: u64 },
    /// The journal record could not be written durably.
    #[error("cannot record the resize")]
    Write(#[source] WriteError),
}

/// Failure of [`crate::Volume::verify`].
#[derive(Debug, Error)]
pub enum VerifyError {
    /// The journal could not be read.
    #[error("journal read failed")]
    Io(#[source] io::Error),
}
