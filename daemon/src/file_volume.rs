//! A volume that is a plain sparse file: no journal, no history. Used until
//! the journaled engine serves every volume.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use nbd_server::{BlockDevice, DeviceError, Errno, Extent, ZeroFlags};

use crate::sys;

/// A sparse file served as a block device.
#[derive(Debug)]
pub struct FileVolume {
    file: Arc<File>,
    size: u64,
}

/// Requests at least this long run on the blocking pool, so the connection
/// keeps receiving the next request while the copy happens; shorter ones
/// run inline, where a thread hand-off would cost more than the copy.
const OFFLOAD_BYTES: usize = 128 << 10;

impl FileVolume {
    /// Opens (creating if needed) a sparse file of `size` bytes.
    pub fn open(path: &Path, size: u64) -> io::Result<FileVolume> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() != size {
            file.set_len(size)?;
        }
        Ok(FileVolume {
            file: Arc::new(file),
            size,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// fdatasync off the async worker: it can take milliseconds.
    pub fn sync(&self) -> Result<(), DeviceError> {
        tokio::task::block_in_place(|| self.file.sync_data()).map_err(DeviceError::from)
    }
}

impl BlockDevice for FileVolume {
    async fn read(
        &self,
        offset: u64,
        mut buffer: Vec<u8>,
        start: usize,
    ) -> Result<(Vec<u8>, Vec<(usize, usize)>), DeviceError> {
        if buffer.len() - start >= OFFLOAD_BYTES {
            let file = self.file.clone();
            buffer = tokio::task::spawn_blocking(move || {
                file.read_exact_at(&mut buffer[start..], offset)
                    .map(|()| buffer)
            })
            .await
            .map_err(|error| DeviceError::new(Errno::Io, error.to_string()))??;
        } else {
            self.file.read_exact_at(&mut buffer[start..], offset)?;
        }
        Ok((buffer, Vec::new()))
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), DeviceError> {
        if data.len() >= OFFLOAD_BYTES {
            let file = self.file.clone();
            tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
                .await
                .map_err(|error| DeviceError::new(Errno::Io, error.to_string()))??;
        } else {
            self.file.write_all_at(&data, offset)?;
        }
        if fua {
            self.sync()?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        self.sync()
    }

    async fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), DeviceError> {
        sys::punch_hole(&self.file, offset, length)?;
        if fua {
            self.sync()?;
        }
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        flags: ZeroFlags,
    ) -> Result<(), DeviceError> {
        let result = if flags.no_hole {
            sys::zero_range(&self.file, offset, length)
        } else {
            sys::punch_hole(&self.file, offset, length)
        };
        if let Err(error) = result {
            if flags.fast {
                return Err(DeviceError::new(
                    Errno::NotSup,
                    "fast zeroing is not available",
                ));
            }
            tracing::debug!(%error, "fallocate failed; writing zeros");
            let zeros = vec![0u8; 1 << 20];
            let mut at = offset;
            let end = offset + length;
            while at < end {
                let count = (end - at).min(zeros.len() as u64) as usize;
                self.file.write_all_at(&zeros[..count], at)?;
                at += count as u64;
            }
        }
        if flags.fua {
            self.sync()?;
        }
        Ok(())
    }

    async fn block_status(&self, offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
        let end = offset + length;
        let mut extents = Vec::new();
        let mut at = offset;
        while at < end && extents.len() < 64 {
            let data_start = sys::seek(&self.file, at, true)?.unwrap_or(end).min(end);
            if data_start > at {
                extents.push(Extent {
                    length: data_start - at,
                    hole: true,
                    zero: true,
                });
                at = data_start;
                continue;
            }
            let hole_start = sys::seek(&self.file, at, false)?.unwrap_or(end).min(end);
            let data_end = hole_start.max(at + 1).min(end);
            extents.push(Extent {
                length: data_end - at,
                hole: false,
                zero: false,
            });
            at = data_end;
        }
        Ok(extents)
    }
}
