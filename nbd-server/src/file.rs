//! A raw file as a block device: the plain-file volume. Reads and writes
//! are `pread`/`pwrite` on the file; large reads of cached bytes are sent
//! from the page cache with sendfile ([`BlockDevice::read_in_place`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::buffer::IoBuffer;
use crate::device::{BlockDevice, DeviceError, Extent, FileSlice, ReadResult, SyncCost, ZeroFlags};

/// Reads at least this long are offered for sendfile when their bytes are
/// cached (the server may take the offer while the connection is the only
/// one reading in bulk: `bulk::BulkReads`), copied on the connection's
/// thread when cached but not sent in place, and read on the blocking pool
/// when not cached (a disk read must not hold up the connection) or when
/// the server asks for it.
pub const LARGE_READ: usize = crate::bulk::BULK_READ as usize;

/// A raw file served as it is: byte `n` of the device is byte `n` of the
/// file. Nothing is stored besides the file, so every extent reports data.
#[derive(Debug)]
pub struct FileDevice {
    file: Arc<File>,
    /// The file's length when served: the device's size.
    size: u64,
    /// Flushes run inline while syncs are cheap (tmpfs), offloaded otherwise.
    sync_cost: Arc<SyncCost>,
}

impl FileDevice {
    /// Serves `file` (opened for reading, and writing unless the export is
    /// read-only); the device's size is the file's length now.
    pub fn new(file: File) -> std::io::Result<FileDevice> {
        let size = file.metadata()?.len();
        Ok(FileDevice { file: Arc::new(file), size, sync_cost: Arc::new(SyncCost::new()) })
    }

    /// The device's size in bytes (the file's length when it was opened).
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl BlockDevice for FileDevice {
    fn read_in_place(&self, offset: u64, length: u64) -> Option<Vec<FileSlice>> {
        // Only whole ranges of the file: a reply cut short by the file's end
        // would have to drop the connection after its header went out.
        if length < LARGE_READ as u64 || offset.checked_add(length).is_none_or(|end| end > self.size) {
            return None;
        }
        FileSlice::if_cached(self.file.clone(), offset, length).map(|slice| vec![slice])
    }

    async fn read(&self, offset: u64, mut buffer: IoBuffer, start: usize) -> ReadResult {
        let length = buffer.len() - start;
        // Cached bytes are copied inline: a hand-off to the blocking pool
        // only adds thread switches (nbdcopy, four connections: 4.1-4.4
        // GB/s inline against 3.6-4.2 handed off).
        if length >= LARGE_READ && !FileSlice::cached(self.file.as_raw_fd(), offset, length as u64) {
            return self.read_offloaded(offset, buffer, start).await;
        }
        self.file.read_exact_at(&mut buffer[start..], offset)?;
        Ok((buffer, Vec::new()))
    }

    async fn read_offloaded(&self, offset: u64, mut buffer: IoBuffer, start: usize) -> ReadResult {
        let file = self.file.clone();
        let buffer = tokio::task::spawn_blocking(move || {
            file.read_exact_at(&mut buffer[start..], offset).map(|()| buffer)
        })
        .await??;
        Ok((buffer, Vec::new()))
    }

    async fn write(&self, offset: u64, data: IoBuffer, fua: bool) -> Result<(), DeviceError> {
        // Inline whatever the size: the payload is in memory and a buffered
        // pwrite only copies it into the page cache (measured: 1 MiB writes
        // 4.7 GB/s inline against 4.0 offloaded).
        self.file.write_all_at(&data, offset)?;
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        if self.sync_cost.is_cheap() {
            return Ok(self.sync_cost.time(|| self.file.sync_data())?);
        }
        let (file, cost) = (self.file.clone(), self.sync_cost.clone());
        Ok(tokio::task::spawn_blocking(move || cost.time(|| file.sync_data())).await??)
    }

    fn flush_here(&self) -> Option<Result<(), DeviceError>> {
        Some(self.sync_cost.time(|| self.file.sync_data()).map_err(DeviceError::from))
    }

    async fn trim(&self, _offset: u64, _length: u64, _fua: bool) -> Result<(), DeviceError> {
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, length: u64, flags: ZeroFlags) -> Result<(), DeviceError> {
        let zeros = vec![0u8; length.min(1 << 20) as usize];
        let mut at = offset;
        while at < offset + length {
            let count = (offset + length - at).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..count], at)?;
            at += count as u64;
        }
        if flags.fua {
            self.flush().await?;
        }
        Ok(())
    }

    async fn block_status(&self, _offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
        Ok(vec![Extent { length, hole: false, zero: false }])
    }
}
