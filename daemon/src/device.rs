//! Journaled volumes and their points as NBD block devices.
//!
//! The store is synchronous. Short operations (a 4 KiB read from the page
//! cache, an append to the journal buffer) run inline on the connection's
//! task: a thread hand-off would cost more than the work. Long ones (large
//! copies, anything that waits for fdatasync) go to tokio's blocking pool so
//! the connection keeps receiving requests meanwhile.

use std::io;
use std::sync::Arc;

use nbd_server::{BlockDevice, DeviceError, Errno, Extent, IoBuffer, ZeroFlags};
use store::{PointView, Volume};

/// Requests moving at least this many bytes run on the blocking pool.
const OFFLOAD_BYTES: usize = 128 << 10;
/// Reads at least this long ask the index for holes, so the reply can skip
/// them (NBD_REPLY_TYPE_OFFSET_HOLE).
const HOLE_SCAN_BYTES: usize = 256 << 10;

/// What an export serves: the writable head, or a read-only point.
#[derive(Debug, Clone)]
pub enum VolumeDevice {
    Head(Arc<Volume>),
    Point(Arc<PointView>),
}

fn os_error(code: Option<i32>, kind: io::ErrorKind, message: String) -> DeviceError {
    let error = match code {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::from(kind),
    };
    DeviceError { errno: Errno::from_io(&error), message }
}

fn write_error(error: store::WriteError) -> DeviceError {
    os_error(error.raw_os_error(), error.kind(), error.to_string())
}

fn flush_error(error: store::FlushError) -> DeviceError {
    os_error(error.raw_os_error(), error.kind(), error.to_string())
}

fn read_error(error: store::ReadError) -> DeviceError {
    if matches!(error, store::ReadError::Corrupt { .. }) {
        // Corruption is reported, never served.
        tracing::error!(%error, "refusing to serve a corrupt record");
    }
    os_error(error.raw_os_error(), io::ErrorKind::Other, error.to_string())
}

fn joined<T>(result: Result<T, tokio::task::JoinError>) -> Result<T, DeviceError> {
    result.map_err(|error| DeviceError::new(Errno::Io, format!("IO task failed: {error}")))
}

fn read_only() -> DeviceError {
    DeviceError::new(Errno::Perm, "points in time are read-only")
}

impl VolumeDevice {
    fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<(), store::ReadError> {
        match self {
            VolumeDevice::Head(volume) => volume.read(offset, buf),
            VolumeDevice::Point(point) => point.read(offset, buf),
        }
    }

    fn extents(&self, offset: u64, length: u64) -> Result<Vec<store::Extent>, store::ReadError> {
        match self {
            VolumeDevice::Head(volume) => volume.extents(offset, length),
            VolumeDevice::Point(point) => point.extents(offset, length),
        }
    }

    fn head(&self) -> Result<&Arc<Volume>, DeviceError> {
        match self {
            VolumeDevice::Head(volume) => Ok(volume),
            VolumeDevice::Point(_) => Err(read_only()),
        }
    }

    /// Zero runs of `[offset, offset + length)` as (start, length) relative
    /// to `offset`.
    fn holes(&self, offset: u64, length: usize) -> Vec<(usize, usize)> {
        let Ok(extents) = self.extents(offset, length as u64) else { return Vec::new() };
        let mut holes = Vec::new();
        let mut at = 0usize;
        for extent in extents {
            let run = extent.length.min((length - at) as u64) as usize;
            if extent.zero && run >= 4096 {
                holes.push((at, run));
            }
            at += run;
            if at >= length {
                break;
            }
        }
        holes
    }
}

impl BlockDevice for VolumeDevice {
    async fn read(&self, offset: u64, mut buffer: IoBuffer, start: usize) -> nbd_server::device::ReadResult {
        let length = buffer.len() - start;
        if length >= OFFLOAD_BYTES {
            let device = self.clone();
            return joined(
                tokio::task::spawn_blocking(move || {
                    device.read_into(offset, &mut buffer[start..])?;
                    let holes =
                        if length >= HOLE_SCAN_BYTES { device.holes(offset, length) } else { Vec::new() };
                    Ok((buffer, holes))
                })
                .await,
            )?
            .map_err(read_error);
        }
        self.read_into(offset, &mut buffer[start..]).map_err(read_error)?;
        Ok((buffer, Vec::new()))
    }

    async fn write(&self, offset: u64, data: IoBuffer, fua: bool) -> Result<(), DeviceError> {
        let volume = self.head()?;
        if fua || data.len() >= OFFLOAD_BYTES {
            let volume = volume.clone();
            joined(tokio::task::spawn_blocking(move || volume.write(offset, &data, fua)).await)?
                .map_err(write_error)?;
        } else {
            volume.write(offset, &data, false).map_err(write_error)?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        match self {
            VolumeDevice::Head(volume) => {
                let volume = volume.clone();
                joined(tokio::task::spawn_blocking(move || volume.flush()).await)?.map_err(flush_error)
            }
            // A point has nothing to make durable.
            VolumeDevice::Point(_) => Ok(()),
        }
    }

    async fn trim(&self, offset: u64, length: u64, fua: bool) -> Result<(), DeviceError> {
        let volume = self.head()?.clone();
        if fua {
            joined(tokio::task::spawn_blocking(move || volume.trim(offset, length, true)).await)?
        } else {
            volume.trim(offset, length, false)
        }
        .map(drop)
        .map_err(write_error)
    }

    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<(), DeviceError> {
        // Zeroing is a journal record whatever the length: always fast, so
        // FAST_ZERO never needs ENOTSUP.
        let volume = self.head()?.clone();
        if flags.fua {
            joined(tokio::task::spawn_blocking(move || volume.write_zeroes(offset, length, true)).await)?
        } else {
            volume.write_zeroes(offset, length, false)
        }
        .map(drop)
        .map_err(write_error)
    }

    async fn block_status(&self, offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
        let extents = self.extents(offset, length).map_err(read_error)?;
        Ok(extents
            .into_iter()
            .take(1024)
            .map(|e| Extent { length: e.length, hole: e.hole, zero: e.zero })
            .collect())
    }
}
