//! The daemon's export catalog: maps NBD export names to volumes and points.
//!
//! | name | serves |
//! | --- | --- |
//! | `VOL` (or empty: `default`) | the live head, read-write |
//! | `VOL@SNAP`, `VOL@#SEQ`, `VOL@<RFC 3339>`, `VOL@-90s` | that point, read-only |

use std::sync::Arc;

use nbd_server::{Catalog, Export, ExportInfo, Listing, LookupError};
use rewind_api::{ExportName, Point, format_time, parse_export_name};
use store::{History, PointError, Store, Volume};

use crate::device::{OpenExports, VolumeDevice};

/// Size of the volume an empty data dir starts with.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;
/// Name of the volume an empty data dir starts with.
pub const DEFAULT_VOLUME: &str = "default";
/// How long a new NBD connection waits at most for a rollback, reopen or
/// delete of its volume to finish (they usually take milliseconds; a
/// reopen replays the journal's tail) before it is refused. Capped at half
/// the handshake deadline, so the client gets the reason, not a timeout.
const BUSY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Every volume the daemon serves, and every point of each.
#[derive(Debug)]
pub struct VolumeCatalog {
    store: Arc<Store>,
    open: Arc<OpenExports>,
    /// How long an open waits for a busy volume ([`BUSY_WAIT`] at most).
    busy_wait: std::time::Duration,
}

/// "retained history: #0 (2026-11-28T02:00:00Z) to #812 (2026-11-28T02:14:03Z)"
pub fn describe_window(window: &History) -> String {
    format!(
        "retained history is #{} ({}) to #{} ({})",
        window.first_seq,
        format_time(window.first_time),
        window.head_seq,
        format_time(window.head_time)
    )
}

fn now_nanos() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

fn lookup_error(message: impl Into<String>) -> LookupError {
    LookupError { message: message.into() }
}

/// Resolves a point of `volume` to a seq, or says why not in words a user
/// can act on (the retained window, the snapshot names). `typed` is the
/// point as the client wrote it, echoed in messages.
pub fn resolve_point(volume: &Volume, point: &Point, typed: &str) -> Result<u64, String> {
    let outside = |error: PointError| match error {
        PointError::OutsideHistory { window, .. } => {
            format!("{typed} is outside the history of {}: {}", volume.name(), describe_window(&window))
        }
        PointError::UnknownSnapshot(name) => format!("no snapshot named {name} on {}", volume.name()),
    };
    match point {
        Point::Seq(seq) => {
            let history = volume.history();
            if *seq < history.first_seq || *seq > history.head_seq {
                return Err(format!(
                    "{typed} is outside the history of {}: {}",
                    volume.name(),
                    describe_window(&history)
                ));
            }
            Ok(*seq)
        }
        Point::Time(time) => {
            let nanos = i64::try_from(time.unix_timestamp_nanos()).unwrap_or(i64::MIN);
            volume.resolve_time(nanos).map_err(outside)
        }
        Point::Ago(ago) => {
            let nanos = now_nanos().saturating_sub(i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX));
            volume.resolve_time(nanos).map_err(outside)
        }
        Point::Snapshot(name) => volume.snapshot(name).map(|snapshot| snapshot.seq).ok_or_else(|| {
            let names: Vec<String> = volume.snapshots().into_iter().map(|s| s.name).collect();
            if names.is_empty() {
                format!("no snapshot named {name} on {} (it has none)", volume.name())
            } else {
                format!("no snapshot named {name} on {}; it has: {}", volume.name(), names.join(", "))
            }
        }),
    }
}

impl VolumeCatalog {
    /// Serves the volumes of `store`, creating `default` if there are none
    /// (and no volume directory went unopened: those are for an admin to
    /// look at, and one may be `default`); `handshake_timeout` is the NBD
    /// server's handshake deadline.
    pub fn new(store: Arc<Store>, handshake_timeout: std::time::Duration) -> anyhow::Result<VolumeCatalog> {
        if store.volumes().is_empty() && store.unopened().is_empty() {
            store.create_volume(DEFAULT_VOLUME, DEFAULT_VOLUME_SIZE)?;
            tracing::info!(name = DEFAULT_VOLUME, size = DEFAULT_VOLUME_SIZE, "created volume");
        }
        Ok(VolumeCatalog {
            store,
            open: Arc::new(OpenExports::default()),
            busy_wait: BUSY_WAIT.min(handshake_timeout / 2),
        })
    }

    /// Who holds which volume open over NBD.
    pub fn open_exports(&self) -> &Arc<OpenExports> {
        &self.open
    }

    fn volume(&self, name: &str) -> Result<Arc<Volume>, LookupError> {
        self.store.volume(name).ok_or_else(|| {
            let names: Vec<String> = self.store.volumes().iter().map(|v| v.name().to_owned()).collect();
            lookup_error(format!("no volume named {name}; volumes: {}", names.join(", ")))
        })
    }
}

impl Catalog for VolumeCatalog {
    type Device = VolumeDevice;

    fn list(&self) -> Vec<Listing> {
        let mut listings = Vec::new();
        for volume in self.store.volumes() {
            listings.push(Listing {
                name: volume.name().to_owned(),
                description: format!("live head of {} ({} bytes)", volume.name(), volume.size()),
            });
            for snapshot in volume.snapshots() {
                listings.push(Listing {
                    name: format!("{}@{}", volume.name(), snapshot.name),
                    description: format!("snapshot #{} taken {}", snapshot.seq, format_time(snapshot.time)),
                });
            }
        }
        listings
    }

    /// Waits (up to `busy_wait`: [`BUSY_WAIT`], or half the handshake
    /// deadline if that is shorter) while a rollback, reopen or delete of
    /// the volume is under way: the connection then sees its outcome.
    /// Rollback holds point connections back too, for simplicity: briefly.
    async fn open(&self, name: &str) -> Result<Export<Self::Device>, LookupError> {
        let name = if name.is_empty() { DEFAULT_VOLUME } else { name };
        let parsed = parse_export_name(name).map_err(|error| lookup_error(error.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.busy_wait;
        loop {
            if let Some(export) = self.try_open(name, &parsed).await? {
                return Ok(export);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(lookup_error(format!(
                    "volume {} is busy: a rollback, reopen or delete of it is under way; try again",
                    parsed.volume
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

impl VolumeCatalog {
    /// Opens export `name`; `None` if its volume was busy or replaced
    /// meanwhile (look it up again).
    async fn try_open(
        &self,
        name: &str,
        parsed: &ExportName,
    ) -> Result<Option<Export<VolumeDevice>>, LookupError> {
        if self.open.busy(&parsed.volume) {
            return Ok(None);
        }
        let volume = self.volume(&parsed.volume)?;
        let Some(point) = &parsed.point else {
            let Some(guard) = self.hold(&volume, true) else { return Ok(None) };
            return Ok(Some(Export {
                info: ExportInfo {
                    name: volume.name().to_owned(),
                    description: format!("live head of {}", volume.name()),
                    size: volume.size(),
                    read_only: false,
                    multi_conn: true,
                    preferred_block: 4096,
                    fast_zero: true,
                },
                device: VolumeDevice::head(volume, guard),
            }));
        };
        let typed = name.split_once('@').map_or("", |(_, typed)| typed);
        let seq = resolve_point(&volume, point, typed).map_err(lookup_error)?;
        // Opening a point builds its read plan; keep it off the async threads.
        let opened = tokio::task::spawn_blocking(move || volume.open_point(seq).map(|view| (volume, view)))
            .await
            .map_err(|error| lookup_error(format!("cannot open point: {error}")))?;
        let (volume, view) = opened.map_err(|error| lookup_error(error.to_string()))?;
        let Some(guard) = self.hold(&volume, false) else { return Ok(None) };
        Ok(Some(Export {
            info: ExportInfo {
                name: name.to_owned(),
                description: format!(
                    "{} as of #{} ({}), read-only",
                    volume.name(),
                    view.seq(),
                    format_time(view.time())
                ),
                size: view.size(),
                read_only: true,
                multi_conn: true,
                preferred_block: 4096,
                fast_zero: false,
            },
            device: VolumeDevice::point(Arc::new(view), guard),
        }))
    }

    /// Counts a connection to `volume` (its head, or a point), unless an
    /// exclusive operation runs on it or it is no longer the catalog's
    /// volume of that name (reopened or deleted since it was looked up).
    fn hold(&self, volume: &Arc<Volume>, head: bool) -> Option<Arc<crate::device::ExportGuard>> {
        let guard = self.open.hold(volume.name(), volume.id(), head)?;
        let current = self.store.volume(volume.name()).is_some_and(|current| Arc::ptr_eq(&current, volume));
        current.then_some(guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A connection that arrives during a rollback, reopen or delete waits
    /// for it, then sees its outcome: the head once it is done, the
    /// reopened volume (not the old object), or the news that the volume is
    /// gone.
    #[tokio::test]
    async fn a_connection_during_an_exclusive_operation_waits_and_sees_its_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let options = store::StoreOptions { commit_interval: None, ..Default::default() };
        let store = Arc::new(Store::open(dir.path(), options).unwrap());
        store.create_volume("db", 1 << 20).unwrap();
        let catalog = VolumeCatalog::new(store.clone(), std::time::Duration::from_secs(10)).unwrap();
        let open = catalog.open_exports().clone();

        let exclusive = open.exclusive("db").unwrap();
        let opening = async {
            let export = catalog.open("db").await.map(|export| export.info.name);
            (export, Instant::now())
        };
        let releasing = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let id = catalog.store.volume("db").unwrap().id();
            assert_eq!(open.count("db", id), (0, 0), "connected during the operation");
            drop(exclusive);
            Instant::now()
        };
        let ((export, opened_at), released_at) = tokio::join!(opening, releasing);
        assert_eq!(export.unwrap(), "db");
        assert!(opened_at >= released_at);

        // Reopened while the connection waited: it gets the new object
        // (the old one refuses writes).
        let exclusive = open.exclusive("db").unwrap();
        let opening = catalog.open("db");
        let reopening = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.reopen_volume("db").unwrap();
            drop(exclusive);
        };
        let (export, ()) = tokio::join!(opening, reopening);
        let device = export.unwrap().device;
        let written =
            nbd_server::BlockDevice::write(&device, 0, nbd_server::IoBuffer::unpooled(vec![7; 4096]), true);
        written.await.expect("a write through the reopened volume");
        drop(device);

        let exclusive = open.exclusive("db").unwrap();
        let opening = catalog.open("db@#0");
        let deleting = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            store.delete_volume("db", true).unwrap();
            drop(exclusive);
        };
        let (export, ()) = tokio::join!(opening, deleting);
        let error = export.map(|export| export.info.name).unwrap_err();
        assert!(error.message.starts_with("no volume named db"), "{}", error.message);
    }
}
