//! Control API messages: what `rewind` sends to `rewindd` and what it gets
//! back, as JSON over HTTP on the daemon's Unix socket.
//!
//! `docs/openapi.json` describes the same shapes (the daemon serves it at
//! `/openapi.json`, and a test checks it against the routes the daemon
//! serves). Change both together.
//!
//! Conventions:
//! - Every time is RFC 3339 in UTC with milliseconds
//!   (`2026-11-28T02:13:50.123Z`, [`crate::format_time`]), valid as a point;
//!   every size is in bytes (`*_bytes`); every point is also given by its
//!   seq, the exact handle (`#SEQ` in point syntax).
//! - Every error is an [`ErrorBody`] with a 4xx or 5xx status: 400 bad
//!   input, 404 the volume or snapshot the URL names does not exist, 409 a
//!   conflict (name taken, a clone still needs the volume, NBD clients are
//!   connected; `?force=true` overrides the last two), 422 a
//!   well-formed point that is not in the history (outside the retained
//!   window, or an unknown snapshot name), 500 an IO failure in the daemon.

use serde::{Deserialize, Serialize};

/// Path prefix of every versioned route.
pub const API_PREFIX: &str = "/v1";

/// Error body of every non-2xx response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, in one sentence.
    pub error: String,
    /// What to do about it, when there is something to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// A size in a request: a byte count (`21474836480`) or text with a unit
/// (`"20GiB"`, `"512M"`), parsed with [`crate::parse_size`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeArg {
    Bytes(u64),
    Text(String),
}

impl SizeArg {
    /// The size in bytes: a positive multiple of 512.
    pub fn bytes(&self) -> Result<u64, crate::SizeError> {
        match self {
            SizeArg::Text(text) => crate::parse_size(text),
            SizeArg::Bytes(0) => Err(crate::SizeError::Zero),
            SizeArg::Bytes(bytes) if !bytes.is_multiple_of(512) => {
                Err(crate::SizeError::Unaligned(bytes.to_string(), *bytes))
            }
            SizeArg::Bytes(bytes) if *bytes > crate::size::MAX_SIZE => {
                Err(crate::SizeError::TooLarge(bytes.to_string()))
            }
            SizeArg::Bytes(bytes) => Ok(*bytes),
        }
    }
}

/// `POST /v1/volumes`: create an empty volume (reads as zeros).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateVolume {
    pub name: String,
    pub size: SizeArg,
}

/// `POST /v1/volumes/{volume}/resize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeVolume {
    pub size: SizeArg,
}

/// `POST /v1/volumes/{volume}/snapshots`: bookmark the head as it is now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    pub name: String,
}

/// `?force=true` of `DELETE /v1/volumes/{volume}`,
/// `POST /v1/volumes/{volume}/rollback` and `POST /v1/volumes/{volume}/reopen`:
/// go ahead although NBD clients are connected (and, for delete, although
/// clones read through the volume).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Force {
    #[serde(default)]
    pub force: bool,
}

/// `POST /v1/volumes/{volume}/rollback`. Refused (409) while NBD clients
/// are connected to the head, unless `?force=true`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollback {
    /// A point in any form of [`crate::Point::parse`].
    pub to: String,
}

/// `POST /v1/volumes/{volume}/clone`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneVolume {
    /// A point of the source volume, in any form of [`crate::Point::parse`].
    pub at: String,
    /// Name of the new volume.
    pub name: String,
}

/// One point of a volume's history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointInfo {
    pub seq: u64,
    pub time: String,
}

/// Where a clone comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneOrigin {
    pub volume: String,
    pub seq: u64,
    /// The parent was deleted (forced) and is kept hidden for its clones;
    /// a volume created since under its name is another volume.
    pub deleted: bool,
}

/// NBD connections open to a volume.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NbdConnections {
    /// To the live head (read-write): a VM's disk.
    pub head: u64,
    /// To points of its history (read-only exports).
    pub points: u64,
}

/// A volume as `volume list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub size_bytes: u64,
    /// The oldest point that can still be opened.
    pub first: PointInfo,
    /// The newest point: the live head.
    pub head: PointInfo,
    /// The newest record that changed the volume's bytes (write, zeroes,
    /// trim; not a snapshot, resize or rollback). `None`: never written.
    /// Past retention it is the base point (the write was at or before it).
    #[serde(default)]
    pub last_write: Option<PointInfo>,
    /// Newest seq known durable.
    pub durable_seq: u64,
    /// Points that can be opened (`head.seq - first.seq + 1`).
    pub points: u64,
    /// Named snapshots (`GET /v1/volumes/{volume}/snapshots` lists them).
    pub snapshot_count: u64,
    /// Bytes of the volume's journal segment files.
    pub journal_bytes: u64,
    /// Set when the volume is a clone of another volume's point.
    pub clone_of: Option<CloneOrigin>,
    /// Live volumes that are clones of this one.
    pub clones: Vec<String>,
    /// Why the volume refuses writes (an earlier IO error), if it does;
    /// `POST /v1/volumes/{volume}/reopen` clears it once the cause is fixed.
    pub write_error: Option<String>,
    pub nbd_connections: NbdConnections,
}

/// `GET /v1/volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeList {
    pub volumes: Vec<VolumeInfo>,
}

/// What recovery found when the daemon opened the volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryInfo {
    pub checkpointed_records: u64,
    pub replayed_records: u64,
    pub replayed_bytes: u64,
    pub cut_bytes: u64,
    /// Segment files a recovery (this one or an earlier) set aside past
    /// the journal end it found (`seg-N.log.cut-SEQ` in the volume's
    /// directory; a volume delete takes force while they are there): after a damaged record they may hold
    /// acknowledged writes no longer served.
    #[serde(default)]
    pub set_aside_files: u64,
    #[serde(default)]
    pub set_aside_bytes: u64,
}

/// `POST /v1/volumes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeCreated {
    pub volume: VolumeInfo,
    /// Where the volume's head is served, read-write.
    pub uri: String,
    /// Set when the volume can grow past the data dir's free space: its
    /// image plus a journal at its budget and cleaning's allowance (about
    /// 2.25 times its size with the default budget) does not fit. Writes past the free space are refused
    /// (ENOSPC), never lost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `GET /v1/volumes/{volume}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDetail {
    pub volume: VolumeInfo,
    pub snapshots: Vec<SnapshotInfo>,
    /// Journal segment files (`volume.journal_bytes` is their size).
    pub journal_segments: u64,
    /// Bytes of data in the base image that retention folds old history into.
    pub base_bytes: u64,
    /// Of `volume.journal_bytes`: the history segments (the retained
    /// records; what the budget bounds).
    pub history_bytes: u64,
    /// Of `volume.journal_bytes`: base image data that folds left in place
    /// in journal segments (retention folds without copying).
    pub base_journal_bytes: u64,
    /// Of `volume.journal_bytes`: superseded bytes of those segments, which
    /// cleaning reclaims once they pass a quarter of the budget.
    pub dead_journal_bytes: u64,
    /// The journal budget retention keeps to, if any.
    pub journal_budget_bytes: Option<u64>,
    /// What keeps the journal over its budget, if something does: the
    /// protected point retention cannot fold past (a snapshot, a clone's
    /// base, a rollback target), e.g. `snapshot before-upgrade (#47)`.
    pub retention_blocked_by: Option<String>,
    pub index_memory_bytes: u64,
    pub recovery: RecoveryInfo,
    /// Export name of the live head (`nbd://ADDR/NAME`).
    pub uri: String,
}

/// `POST /v1/volumes/{volume}/resize`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resized {
    pub volume: String,
    pub old_size_bytes: u64,
    pub new_size_bytes: u64,
    /// Seq of the resize record; `None` when the volume already had that
    /// size (nothing was written).
    pub seq: Option<u64>,
    /// Set when a grow takes the volume past the data dir's free space
    /// (as [`VolumeCreated::warning`], for the bytes it adds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `DELETE /v1/volumes/{volume}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub volume: String,
    /// Clones that still read through the (now hidden) volume.
    pub clones_kept: Vec<String>,
    /// NBD connections that were open to the volume (only with force):
    /// their writes now fail; their reads show the deleted data until they
    /// disconnect.
    pub nbd_connections: u64,
}

/// `POST /v1/volumes/{volume}/reopen`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reopened {
    /// The volume as it is now, opened afresh from its files.
    pub volume: VolumeInfo,
    /// The IO error the volume refused writes after, now cleared.
    pub cleared_write_error: Option<String>,
    /// NBD connections to the head opened before the reopen (only with
    /// force): they still hold the old volume, so their writes keep failing
    /// until their clients reconnect.
    pub stale_nbd_connections: u64,
}

/// `POST /v1/volumes/{volume}/flush`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flushed {
    pub volume: String,
    pub durable_seq: u64,
}

/// `POST /v1/volumes/{volume}/verify`: every record of the history read
/// back and checked (crc32c, and blake3 where stored), then every folded
/// record whose bytes are still base data in a journal segment (crc32c).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    pub volume: String,
    /// With `?at=POINT`: the point whose image was checked (its history
    /// records up to it, and the base data). `None`: the whole history.
    #[serde(default)]
    pub at: Option<PointInfo>,
    /// History records checked.
    pub records: u64,
    /// Folded records still holding base data, checked.
    pub base_records: u64,
    /// Payload bytes checked.
    pub bytes: u64,
    /// Seqs of the records whose checksums no longer match (empty: none).
    pub corrupt: Vec<u64>,
    /// Bytes of base data that lie in no readable record (a damaged
    /// record header ends the walk of its segment).
    pub unreadable_base_bytes: u64,
    /// For a clone: what its image reads through, checked as `?at=` checks
    /// a point: its parent at the clone's base point, then that parent's
    /// parent, and so on (each with `through` empty).
    #[serde(default)]
    pub through: Vec<Verified>,
    /// Segment files a recovery set aside (`RecoveryInfo.set_aside_files`):
    /// not checked, not served, deleted only with the volume (forced).
    #[serde(default)]
    pub set_aside_files: u64,
}

/// A named snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub name: String,
    pub seq: u64,
    pub time: String,
}

/// `POST /v1/volumes/{volume}/snapshots`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreated {
    pub volume: String,
    pub name: String,
    pub seq: u64,
    pub time: String,
}

/// `GET /v1/volumes/{volume}/snapshots`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotList {
    pub volume: String,
    pub snapshots: Vec<SnapshotInfo>,
}

/// `DELETE /v1/volumes/{volume}/snapshots/{snapshot}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDeleted {
    pub volume: String,
    pub snapshot: String,
}

/// `POST /v1/volumes/{volume}/rollback`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    pub volume: String,
    /// The point whose image the head now has.
    pub target: PointInfo,
    /// The rollback record: the new head.
    pub new_head: PointInfo,
    /// The head before the rollback, still readable; rolling back to it
    /// undoes this rollback.
    pub previous_head: PointInfo,
    /// The point to roll back to in order to undo this (`#SEQ`).
    pub undo_to: String,
    /// NBD connections that were open to the head (only with force): their
    /// clients now read the rolled-back image under their feet.
    pub nbd_connections: u64,
    /// The head's size now: the target's (a rollback takes the size the
    /// image had at the target).
    #[serde(default)]
    pub size_bytes: u64,
    /// The head's size before the rollback.
    #[serde(default)]
    pub previous_size_bytes: u64,
}

/// `POST /v1/volumes/{volume}/clone`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cloned {
    pub source: String,
    pub point: PointInfo,
    pub volume: VolumeInfo,
    /// Where the clone's head is served, read-write.
    pub uri: String,
}

/// `GET /v1/volumes/{volume}/export?at=POINT`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exported {
    pub volume: String,
    pub point: PointInfo,
    /// The NBD export name that serves the point (`VOL@SNAP` or `VOL@#SEQ`).
    pub export_name: String,
    /// `nbd://HOST:PORT/EXPORT`, percent-encoded.
    pub uri: String,
    pub size_bytes: u64,
    pub read_only: bool,
}

/// One interval of a timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineBucket {
    pub start: String,
    /// Write, write-zeroes and trim records in the interval.
    pub writes: u64,
    /// Bytes they covered.
    pub bytes: u64,
    /// The last point at or before the interval's end (its image is the
    /// volume as the interval ended), if the volume existed then.
    pub last_seq: Option<u64>,
}

/// `GET /v1/volumes/{volume}/timeline?since=POINT&interval=SECONDS`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    pub volume: String,
    pub since: String,
    pub interval_seconds: u64,
    pub first: PointInfo,
    pub head: PointInfo,
    pub buckets: Vec<TimelineBucket>,
    /// Snapshots taken since `since`.
    pub snapshots: Vec<SnapshotInfo>,
}

/// `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub started: String,
    pub uptime_seconds: u64,
    pub data_dir: String,
    pub control_socket: String,
    /// Address NBD clients connect to (`HOST:PORT`).
    pub nbd_listen: String,
    pub nbd_connections: u64,
    pub volumes: u64,
    pub journal_bytes: u64,
    /// Directories in the data dir's volumes directory that were not
    /// opened as volumes at start-up (their files are kept).
    pub not_served: Vec<NotServed>,
}

/// A directory of the volumes directory that is not served, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotServed {
    /// The directory's name (a volume of that name cannot be created).
    pub name: String,
    /// Its path.
    pub dir: String,
    /// Why it was not opened, e.g. "it has journal records but no valid
    /// superblock (damaged)".
    pub reason: String,
}

/// Percent-encodes `text` for a URI path segment or query value: keeps
/// unreserved characters and those in `keep`.
pub fn percent_encode(text: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `nbd://ADDR/EXPORT` with the export name encoded so that `#`, `?` and
/// `%` in points (`db@#812`) survive URI parsing.
pub fn nbd_uri(address: &str, export_name: &str) -> String {
    format!("nbd://{address}/{}", percent_encode(export_name, b"@:+"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_arrive_as_bytes_or_text() {
        // Both JSON forms of a size parse, and the 512-byte rule holds for both.
        let text: CreateVolume = serde_json::from_str(r#"{"name":"db","size":"20GiB"}"#).unwrap();
        assert_eq!(text.size.bytes(), Ok(20 << 30));
        let bytes: CreateVolume = serde_json::from_str(r#"{"name":"db","size":1048576}"#).unwrap();
        assert_eq!(bytes.size.bytes(), Ok(1 << 20));
        assert!(SizeArg::Bytes(1000).bytes().is_err());
        assert!(SizeArg::Bytes(0).bytes().is_err());
        assert!(serde_json::from_str::<CreateVolume>(r#"{"name":"db","size":-1}"#).is_err());
        assert!(serde_json::from_str::<CreateVolume>(r#"{"name":"db","size":1,"x":1}"#).is_err());
    }

    #[test]
    fn uris_encode_the_characters_uri_parsers_split_on() {
        // `#` would start a fragment and `?` a query: both are escaped.
        assert_eq!(nbd_uri("127.0.0.1:10809", "db@#812"), "nbd://127.0.0.1:10809/db@%23812");
        assert_eq!(
            nbd_uri("[::1]:10809", "db@2026-11-28T02:13:50+01:00"),
            "nbd://[::1]:10809/db@2026-11-28T02:13:50+01:00"
        );
        assert_eq!(percent_encode("-24h ?", &[]), "-24h%20%3F");
    }
}
