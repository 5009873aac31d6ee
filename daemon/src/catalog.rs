//! The daemon's export catalog: maps NBD export names to volumes and points.
//!
//! | name | serves |
//! | --- | --- |
//! | `VOL` (or empty: `default`) | the live head, read-write |
//! | `VOL@SNAP`, `VOL@#SEQ`, `VOL@<RFC 3339>`, `VOL@-90s` | that point, read-only |

use std::sync::Arc;

use nbd_server::{Catalog, Export, ExportInfo, Listing, LookupError};
use rewind_api::{Point, format_time, parse_export_name};
use store::{History, PointError, Store, Volume};

use crate::device::{OpenExports, VolumeDevice};

/// Size of the volume an empty data dir starts with.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;
/// Name of the volume an empty data dir starts with.
pub const DEFAULT_VOLUME: &str = "default";

/// Every volume the daemon serves, and every point of each.
#[derive(Debug)]
pub struct VolumeCatalog {
    store: Arc<Store>,
    open: Arc<OpenExports>,
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
    /// Serves the volumes of `store`, creating `default` if there are none.
    pub fn new(store: Arc<Store>) -> anyhow::Result<VolumeCatalog> {
        if store.volumes().is_empty() {
            store.create_volume(DEFAULT_VOLUME, DEFAULT_VOLUME_SIZE)?;
            tracing::info!(name = DEFAULT_VOLUME, size = DEFAULT_VOLUME_SIZE, "created volume");
        }
        Ok(VolumeCatalog { store, open: Arc::new(OpenExports::default()) })
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

    async fn open(&self, name: &str) -> Result<Export<Self::Device>, LookupError> {
        let name = if name.is_empty() { DEFAULT_VOLUME } else { name };
        let parsed = parse_export_name(name).map_err(|error| lookup_error(error.to_string()))?;
        let volume = self.volume(&parsed.volume)?;
        let Some(point) = parsed.point else {
            let guard = self.open.hold(volume.name(), true);
            return Ok(Export {
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
            });
        };
        let typed = name.split_once('@').map_or("", |(_, typed)| typed);
        let seq = resolve_point(&volume, &point, typed).map_err(lookup_error)?;
        // Opening a point builds its read plan; keep it off the async threads.
        let opened = tokio::task::spawn_blocking(move || volume.open_point(seq).map(|view| (volume, view)))
            .await
            .map_err(|error| lookup_error(format!("cannot open point: {error}")))?;
        let (volume, view) = opened.map_err(|error| lookup_error(error.to_string()))?;
        Ok(Export {
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
            device: VolumeDevice::point(Arc::new(view), self.open.hold(volume.name(), false)),
        })
    }
}
