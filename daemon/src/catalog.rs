//! The daemon's export catalog: maps NBD export names to volumes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use nbd_server::{Catalog, Export, ExportInfo, Listing, LookupError};
use rewind_api::parse_export_name;

use crate::config::Config;
use crate::file_volume::FileVolume;

/// Size of the volume an empty data dir starts with.
pub const DEFAULT_VOLUME_SIZE: u64 = 1 << 30;
/// Name of the volume an empty data dir starts with.
pub const DEFAULT_VOLUME: &str = "default";

/// Every volume the daemon serves.
#[derive(Debug)]
pub struct VolumeCatalog {
    directory: PathBuf,
    volumes: RwLock<BTreeMap<String, Arc<FileVolume>>>,
}

impl VolumeCatalog {
    /// Opens the data dir, creating it and the default volume if empty.
    pub fn open(config: &Config) -> anyhow::Result<VolumeCatalog> {
        let directory = config.data_dir.join("files");
        std::fs::create_dir_all(&directory)?;
        let mut volumes = BTreeMap::new();
        for entry in std::fs::read_dir(&directory)? {
            let path = entry?.path();
            let Some(name) = path.file_stem().and_then(|n| n.to_str()) else {
                continue;
            };
            if path.extension().is_some_and(|e| e == "raw") {
                let size = std::fs::metadata(&path)?.len();
                volumes.insert(name.to_owned(), Arc::new(FileVolume::open(&path, size)?));
            }
        }
        if volumes.is_empty() {
            let path = directory.join(format!("{DEFAULT_VOLUME}.raw"));
            let volume = FileVolume::open(&path, DEFAULT_VOLUME_SIZE)?;
            tracing::info!(
                name = DEFAULT_VOLUME,
                size = DEFAULT_VOLUME_SIZE,
                "created volume"
            );
            volumes.insert(DEFAULT_VOLUME.to_owned(), Arc::new(volume));
        }
        Ok(VolumeCatalog {
            directory,
            volumes: RwLock::new(volumes),
        })
    }

    /// Flushes every volume (shutdown).
    pub async fn flush_all(&self) -> anyhow::Result<()> {
        let volumes: Vec<_> = self
            .volumes
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        for volume in volumes {
            volume.sync()?;
        }
        let _ = &self.directory;
        Ok(())
    }
}

impl Catalog for VolumeCatalog {
    type Device = Arc<FileVolume>;

    fn list(&self) -> Vec<Listing> {
        self.volumes
            .read()
            .expect("lock")
            .iter()
            .map(|(name, volume)| Listing {
                name: name.clone(),
                description: format!("rewind volume {name} ({} bytes, live head)", volume.size()),
            })
            .collect()
    }

    async fn open(&self, name: &str) -> Result<Export<Self::Device>, LookupError> {
        let name = if name.is_empty() {
            DEFAULT_VOLUME
        } else {
            name
        };
        let parsed = parse_export_name(name).map_err(|error| LookupError {
            message: error.to_string(),
        })?;
        let volume = self
            .volumes
            .read()
            .expect("lock")
            .get(&parsed.volume)
            .cloned()
            .ok_or_else(|| LookupError {
                message: format!("no volume named `{}`", parsed.volume),
            })?;
        if parsed.point.is_some() {
            return Err(LookupError {
                message: "points in time are not available yet".into(),
            });
        }
        Ok(Export {
            info: ExportInfo {
                name: parsed.volume.clone(),
                description: format!("rewind volume {} (live head)", parsed.volume),
                size: volume.size(),
                read_only: false,
                multi_conn: true,
                preferred_block: 4096,
                fast_zero: false,
            },
            device: volume,
        })
    }
}
