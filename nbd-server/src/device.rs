//! What the server serves: the block-device trait and the export catalog.
//!
//! The server knows nothing of journals or files. A [`Catalog`] turns an export
//! name into an [`Export`] (its description plus a [`BlockDevice`]); the
//! device does the IO. Both are async so a device may wait on a disk queue or
//! a group commit without holding a runtime thread.

use std::future::Future;
use std::io;
use std::sync::Arc;

use crate::buffer::IoBuffer;

/// The error numbers the NBD specification allows on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Errno {
    /// Operation not permitted (a write to a read-only export).
    Perm = 1,
    /// Input/output error.
    Io = 5,
    /// Cannot allocate memory.
    NoMem = 12,
    /// Invalid argument (bad flags, out of range, unknown command).
    Inval = 22,
    /// No space left on device (also EDQUOT and EFBIG, as the spec asks).
    NoSpc = 28,
    /// Value too large (a DF read we cannot send in one chunk).
    Overflow = 75,
    /// Operation not supported (FAST_ZERO that would be slow).
    NotSup = 95,
    /// Server is shutting down.
    Shutdown = 108,
}

impl Errno {
    /// The value that goes on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Maps an OS error to the closest errno the protocol allows.
    pub fn from_io(error: &io::Error) -> Errno {
        match error.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => Errno::NoSpc,
            Some(libc::EPERM | libc::EACCES | libc::EROFS) => Errno::Perm,
            Some(libc::ENOMEM) => Errno::NoMem,
            Some(libc::EINVAL) => Errno::Inval,
            Some(libc::EOVERFLOW) => Errno::Overflow,
            Some(libc::EOPNOTSUPP) => Errno::NotSup,
            Some(libc::ESHUTDOWN) => Errno::Shutdown,
            Some(_) => Errno::Io,
            None => match error.kind() {
                io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => Errno::Perm,
                io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Errno::NoSpc,
                io::ErrorKind::OutOfMemory => Errno::NoMem,
                io::ErrorKind::InvalidInput => Errno::Inval,
                io::ErrorKind::Unsupported => Errno::NotSup,
                _ => Errno::Io,
            },
        }
    }
}

/// A failed device operation: the errno for the client and a message for
/// structured error chunks and the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({errno:?})")]
pub struct DeviceError {
    /// What the client is told.
    pub errno: Errno,
    /// Human-readable detail, sent in structured error chunks.
    pub message: String,
}

impl DeviceError {
    /// An error with an explicit errno and message.
    pub fn new(errno: Errno, message: impl Into<String>) -> DeviceError {
        DeviceError { errno, message: message.into() }
    }
}

impl From<io::Error> for DeviceError {
    fn from(error: io::Error) -> DeviceError {
        DeviceError { errno: Errno::from_io(&error), message: error.to_string() }
    }
}

/// An IO task that panicked or was cancelled (`spawn_blocking`): EIO.
impl From<tokio::task::JoinError> for DeviceError {
    fn from(error: tokio::task::JoinError) -> DeviceError {
        DeviceError::new(Errno::Io, format!("IO task failed: {error}"))
    }
}

/// One run of blocks with the same `base:allocation` status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes; never zero.
    pub length: u64,
    /// Not allocated in the backing store.
    pub hole: bool,
    /// Reads as zeros.
    pub zero: bool,
}

impl Extent {
    /// `base:allocation` status flags of this extent.
    pub fn flags(&self) -> u32 {
        let mut flags = 0;
        if self.hole {
            flags |= crate::protocol::state::HOLE;
        }
        if self.zero {
            flags |= crate::protocol::state::ZERO;
        }
        flags
    }
}

/// Flags of a write-zeroes request, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// Durable before the reply.
    pub fua: bool,
    /// The client wants the range allocated, not punched.
    pub no_hole: bool,
    /// Fail with `ENOTSUP` rather than zero slowly; write nothing then.
    pub fast: bool,
}

/// Ranges (start, length) of a read buffer's data that read as zeros
/// without being stored.
pub type Holes = Vec<(usize, usize)>;

/// A filled read buffer and its holes.
pub type ReadResult = Result<(IoBuffer, Holes), DeviceError>;

/// Bytes of an open file that a read reply can be sent from with
/// `sendfile(2)`: the kernel hands the page-cache pages to the socket, and
/// the bytes are never copied through user space (nor through a blocking
/// pool). See [`BlockDevice::read_in_place`].
#[derive(Clone)]
pub struct FileSlice {
    /// The open file (whatever owns its descriptor); the slice keeps it
    /// open until the reply is sent.
    pub file: Arc<dyn std::os::fd::AsRawFd + Send + Sync>,
    /// Where the slice's first byte lies in the file.
    pub offset: u64,
    /// Bytes of the file from `offset`.
    pub length: usize,
}

impl std::fmt::Debug for FileSlice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSlice")
            .field("fd", &self.file.as_raw_fd())
            .field("offset", &self.offset)
            .field("length", &self.length)
            .finish()
    }
}

impl FileSlice {
    /// `length` bytes of `file` at `offset`, when every page of them is in
    /// the page cache now (so sending them from the connection's thread does
    /// not wait for a disk). `None` otherwise, or when the kernel cannot
    /// tell (`cachestat(2)` came with Linux 6.5).
    pub fn if_cached(
        file: Arc<dyn std::os::fd::AsRawFd + Send + Sync>,
        offset: u64,
        length: u64,
    ) -> Option<FileSlice> {
        let slice_length = usize::try_from(length).ok()?;
        Self::cached(file.as_raw_fd(), offset, length).then_some(FileSlice {
            file,
            offset,
            length: slice_length,
        })
    }

    /// Whether every page of `length` bytes at `offset` of the file behind
    /// `fd` is in the page cache now (false when the kernel cannot tell).
    pub fn cached(fd: std::os::fd::RawFd, offset: u64, length: u64) -> bool {
        crate::sys::cached(fd, offset, length) == Some(true)
    }
}

/// A block device the server can serve. Offsets and lengths handed to these
/// methods are already checked against the export size: `offset + length`
/// never exceeds [`ExportInfo::size`] and never overflows.
///
/// Durability contract: `flush` returns only when every write that completed
/// before it was called (on any connection to the same device) is durable;
/// an operation with `fua` returns only when its own effect is durable.
pub trait BlockDevice: Send + Sync + 'static {
    /// Reads `buffer.len() - start` bytes at `offset` into `buffer[start..]`
    /// and hands the buffer back. The buffer may hold stale bytes: on success
    /// every byte of `buffer[start..]` must have been written. Buffers are owned so a device can pass them
    /// to another thread or an io_uring ring; the bytes before `start` are
    /// the server's (reply header room) and must be left alone.
    ///
    /// Also returns the sub-ranges (start, length, relative to the data) that
    /// the device knows read as zeros without having stored them; they are
    /// zero-filled in the buffer as well, and the server may send them as
    /// holes. An empty vector is always correct.
    fn read(&self, offset: u64, buffer: IoBuffer, start: usize) -> impl Future<Output = ReadResult> + Send;

    /// Where the `length` bytes at `offset` can be sent from without
    /// [`read`](Self::read), when the device can tell at once: runs of
    /// files, in order, whose lengths add up to `length`, in the page cache
    /// (see [`FileSlice::if_cached`]). The server then answers with
    /// `sendfile(2)` on the connection's thread, one slice after another.
    /// Called on that thread, so it must not wait.
    ///
    /// The socket holds references to the file's pages until the client has
    /// received them, so a device may only offer bytes that nothing rewrites
    /// in that time but a client's own later write to the same range (which
    /// a reply in flight may show, as for any read racing a write). A device
    /// that reuses file space (a journal) must not offer it. The default
    /// offers nothing.
    fn read_in_place(&self, _offset: u64, _length: u64) -> Option<Vec<FileSlice>> {
        None
    }

    /// [`read`](Self::read), with the copy off the connection's thread (on
    /// the blocking pool): the server asks for this when one connection
    /// reads in bulk and it measured that faster than sending in place, so
    /// the connection sends one reply while the next is copied
    /// ([`BulkReads`](crate::bulk::BulkReads)). The default is `read`.
    fn read_offloaded(
        &self,
        offset: u64,
        buffer: IoBuffer,
        start: usize,
    ) -> impl Future<Output = ReadResult> + Send {
        self.read(offset, buffer, start)
    }

    /// Writes `data` at `offset`.
    fn write(
        &self,
        offset: u64,
        data: IoBuffer,
        fua: bool,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Makes every completed write durable.
    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Makes every completed write durable on the calling thread, when the
    /// device can: `None` means it cannot, and [`flush`](Self::flush) runs
    /// instead. The server calls this only when the connection has nothing
    /// else to do (no other request in flight or waiting to be read, a
    /// client seen sending one request at a time), so the wait stalls
    /// nobody, and the sync saves the hand-off to a blocking pool and back
    /// (on a disk, about a fifth of a QD1 write + flush loop's rate). The
    /// default cannot.
    fn flush_here(&self) -> Option<Result<(), DeviceError>> {
        None
    }

    /// Discards a range; later reads of it return zeros.
    fn trim(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Writes zeros over a range.
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        flags: ZeroFlags,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Allocation status of `[offset, offset + length)`. The extents must be
    /// contiguous from `offset`, non-empty, and may cover less than `length`.
    fn block_status(
        &self,
        offset: u64,
        length: u64,
    ) -> impl Future<Output = Result<Vec<Extent>, DeviceError>> + Send;

    /// A hint to prefetch a range. The default does nothing.
    fn cache(&self, _offset: u64, _length: u64) -> impl Future<Output = Result<(), DeviceError>> + Send {
        async { Ok(()) }
    }
}

impl<D: BlockDevice> BlockDevice for Arc<D> {
    fn read(&self, offset: u64, buffer: IoBuffer, start: usize) -> impl Future<Output = ReadResult> + Send {
        (**self).read(offset, buffer, start)
    }
    fn read_in_place(&self, offset: u64, length: u64) -> Option<Vec<FileSlice>> {
        (**self).read_in_place(offset, length)
    }
    fn write(
        &self,
        offset: u64,
        data: IoBuffer,
        fua: bool,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send {
        (**self).write(offset, data, fua)
    }
    fn flush(&self) -> impl Future<Output = Result<(), DeviceError>> + Send {
        (**self).flush()
    }
    fn flush_here(&self) -> Option<Result<(), DeviceError>> {
        (**self).flush_here()
    }
    fn trim(
        &self,
        offset: u64,
        length: u64,
        fua: bool,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send {
        (**self).trim(offset, length, fua)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        length: u64,
        flags: ZeroFlags,
    ) -> impl Future<Output = Result<(), DeviceError>> + Send {
        (**self).write_zeroes(offset, length, flags)
    }
    fn block_status(
        &self,
        offset: u64,
        length: u64,
    ) -> impl Future<Output = Result<Vec<Extent>, DeviceError>> + Send {
        (**self).block_status(offset, length)
    }
    fn cache(&self, offset: u64, length: u64) -> impl Future<Output = Result<(), DeviceError>> + Send {
        (**self).cache(offset, length)
    }
}

/// Whether a device's syncs are cheap enough to run inline on the
/// connection's thread. On tmpfs or a battery-backed cache an fdatasync costs
/// microseconds, less than a hand-off to a blocking pool; on a disk it costs
/// milliseconds and must not stall the connection. A moving average of the
/// measured durations decides; it starts unknown, so the first syncs are
/// offloaded and measured.
#[derive(Debug)]
pub struct SyncCost {
    /// Moving average of recent sync durations in nanoseconds; MAX while
    /// nothing was measured.
    recent_nanos: std::sync::atomic::AtomicU64,
}

impl SyncCost {
    /// Syncs run inline while they take less than this on average.
    pub const INLINE_NANOS: u64 = 50_000;

    pub const fn new() -> Self {
        Self { recent_nanos: std::sync::atomic::AtomicU64::new(u64::MAX) }
    }

    /// True while recent syncs were cheap enough to run inline.
    pub fn is_cheap(&self) -> bool {
        self.recent_nanos.load(std::sync::atomic::Ordering::Relaxed) < Self::INLINE_NANOS
    }

    /// Runs `operation` (which syncs) and folds its duration into the average.
    pub fn time<T>(&self, operation: impl FnOnce() -> T) -> T {
        use std::sync::atomic::Ordering;
        let started = std::time::Instant::now();
        let result = operation();
        let elapsed = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let old = self.recent_nanos.load(Ordering::Relaxed);
        let new = if old == u64::MAX { elapsed } else { old - old / 8 + elapsed / 8 };
        self.recent_nanos.store(new, Ordering::Relaxed);
        result
    }
}

impl Default for SyncCost {
    fn default() -> Self {
        Self::new()
    }
}

/// What the handshake tells a client about an export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// The canonical name (sent as `NBD_INFO_NAME`).
    pub name: String,
    /// Free text for `NBD_INFO_DESCRIPTION` and `NBD_OPT_LIST`.
    pub description: String,
    /// Size in bytes.
    pub size: u64,
    /// Writes, trims and write-zeroes get `EPERM`.
    pub read_only: bool,
    /// FLUSH and FUA on one connection cover writes completed on any other.
    pub multi_conn: bool,
    /// Preferred IO size, a power of two (block-size info).
    pub preferred_block: u32,
    /// The device answers FAST_ZERO without writing when zeroing is slow.
    pub fast_zero: bool,
}

/// An opened export: its description and the device that serves it.
#[derive(Debug)]
pub struct Export<D> {
    pub info: ExportInfo,
    pub device: D,
}

/// An entry of `NBD_OPT_LIST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    pub name: String,
    pub description: String,
}

/// Why an export name did not resolve; the message goes to the client in
/// `NBD_REP_ERR_UNKNOWN` (or is logged when the client used EXPORT_NAME).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct LookupError {
    /// Shown to the user by clients such as `nbdinfo` and qemu.
    pub message: String,
}

/// The set of exports a server offers.
pub trait Catalog: Send + Sync + 'static {
    /// The device type of an opened export.
    type Device: BlockDevice;

    /// Exports listed by `NBD_OPT_LIST`.
    fn list(&self) -> Vec<Listing>;

    /// Resolves an export name. Called for INFO, GO, EXPORT_NAME and the
    /// meta-context options; the name is untrusted (up to 4096 bytes).
    fn open(&self, name: &str) -> impl Future<Output = Result<Export<Self::Device>, LookupError>> + Send;
}

/// A catalog of one device, opened under any export name (the client's
/// name is echoed back); `NBD_OPT_LIST` shows `info.name`.
#[derive(Debug)]
pub struct SingleExport<D> {
    pub info: ExportInfo,
    pub device: D,
}

impl<D: BlockDevice + Clone> Catalog for SingleExport<D> {
    type Device = D;

    fn list(&self) -> Vec<Listing> {
        vec![Listing { name: self.info.name.clone(), description: self.info.description.clone() }]
    }

    async fn open(&self, name: &str) -> Result<Export<D>, LookupError> {
        let info = ExportInfo { name: name.to_owned(), ..self.info.clone() };
        Ok(Export { info, device: self.device.clone() })
    }
}

#[cfg(test)]
mod sync_cost_tests {
    use super::SyncCost;
    use std::time::Duration;

    #[test]
    fn offloads_until_measured_then_follows_the_average() {
        let cost = SyncCost::new();
        assert!(!cost.is_cheap(), "unknown cost must not run inline");
        assert_eq!(cost.time(|| 7), 7);
        assert!(cost.is_cheap(), "a sync of nanoseconds is cheap");
        // One slow sync moves the average by an eighth: 8 ms / 8 = 1 ms.
        cost.time(|| std::thread::sleep(Duration::from_millis(8)));
        assert!(!cost.is_cheap(), "a slow sync sends the next ones to the pool");
        // Fast syncs bring it back down (each keeps 7/8 of the average).
        for _ in 0..64 {
            cost.time(|| ());
        }
        assert!(cost.is_cheap());
    }
}
