//! The io_uring engine: one ring on a dedicated thread, fed by a bounded
//! channel. All of the crate's `unsafe` lives in this module, including the
//! plain system calls std lacks ([`punch_hole`], [`allocate`],
//! [`write_vectored_all_at`], [`copy_file_range_all`]).
//!
//! The calling thread blocks until its operation completes, so the buffer it
//! lent to the kernel outlives the operation: that is the whole soundness
//! argument, repeated at each `unsafe` below. The ring thread batches whatever
//! is queued into one `io_uring_enter`, which is where io_uring can win over
//! `pwrite`; for one caller at a time it costs two thread hand-offs
//! (docs/journal.md, "IO engine", has the measurements).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use io_uring::{IoUring, opcode, squeue, types};

use crate::backend::StorageBackend;

/// Submission queue entries of the ring, and the bound of its request channel.
pub const RING_DEPTH: u32 = 64;

/// Whether this kernel lets us create an io_uring (it may be disabled by
/// `kernel.io_uring_disabled` or a seccomp filter).
pub fn available() -> bool {
    IoUring::new(4).is_ok()
}

/// One operation for the ring thread.
struct Request {
    entry: squeue::Entry,
    /// Keeps the iovec array of a vectored write alive until completion.
    _iovecs: Vec<libc::iovec>,
    reply: SyncSender<i32>,
}

// SAFETY: the raw pointers inside `entry` and `_iovecs` point into buffers
// owned by the thread that sent the request, which blocks on `reply` until the
// ring thread answers; nothing else touches them meanwhile, so moving the
// request to the ring thread cannot create a data race.
unsafe impl Send for Request {}

/// A ring thread. Dropping it lets in-flight operations finish, then joins.
#[derive(Debug)]
pub struct Ring {
    sender: Option<SyncSender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Ring {
    /// Creates the ring and starts its thread.
    pub fn start(depth: u32) -> io::Result<Self> {
        let ring = IoUring::new(depth)?;
        let (sender, receiver) = mpsc::sync_channel(depth as usize);
        let thread = std::thread::Builder::new()
            .name("rewind-uring".into())
            .spawn(move || run(ring, receiver, depth as usize))?;
        Ok(Self { sender: Some(sender), thread: Some(thread) })
    }

    /// Submits one entry and waits for its result (the CQE's `res`).
    ///
    /// # Safety
    /// Every pointer in `entry` (and `iovecs`) must stay valid for the
    /// kernel's access until this function returns; it returns only after the
    /// completion arrived, or after the ring thread is known to be gone.
    unsafe fn submit(&self, entry: squeue::Entry, iovecs: Vec<libc::iovec>) -> io::Result<i32> {
        let (reply, result) = mpsc::sync_channel(1);
        let request = Request { entry, _iovecs: iovecs, reply };
        let sender = self.sender.as_ref().ok_or_else(ring_gone)?;
        sender.send(request).map_err(|_| ring_gone())?;
        // The ring thread only drops `reply` after the CQE arrived or when it
        // exits without having submitted the entry, so the buffer is free.
        result.recv().map_err(|_| ring_gone())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn ring_gone() -> io::Error {
    io::Error::other("io_uring thread is gone")
}

/// The ring thread: batch queued requests, submit, hand back completions.
fn run(mut ring: IoUring, receiver: Receiver<Request>, depth: usize) {
    let mut slots: Vec<Option<Request>> = (0..depth).map(|_| None).collect();
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut in_flight = 0usize;
    let mut closing = false;
    loop {
        let mut incoming = Vec::new();
        if in_flight == 0 {
            if closing {
                return;
            }
            match receiver.recv() {
                Ok(request) => incoming.push(request),
                Err(_) => return,
            }
        }
        while in_flight + incoming.len() < depth && !closing {
            match receiver.try_recv() {
                Ok(request) => incoming.push(request),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => closing = true,
            }
        }
        for request in incoming {
            let slot = free.pop().expect("in_flight < depth leaves a free slot");
            let entry = request.entry.clone().user_data(slot as u64);
            // SAFETY: the entry's buffers belong to a caller blocked in
            // `Ring::submit` until we answer through `reply`, which we do only
            // after this entry's CQE is reaped below.
            let pushed = unsafe { ring.submission().push(&entry) };
            if pushed.is_err() {
                // Cannot happen with in_flight < depth = SQ size; answer
                // EBUSY rather than lose the request.
                let _ = request.reply.send(-libc::EBUSY);
                free.push(slot);
                continue;
            }
            slots[slot] = Some(request);
            in_flight += 1;
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(error) if error.raw_os_error() == Some(libc::EINTR) => {}
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {}
            Err(error) => {
                // The ring is unusable. Entries already submitted may still be
                // executing in the kernel, so we must not answer their callers
                // (their buffers would be freed under the kernel): keep
                // reaping until each completion arrives.
                tracing::error!(%error, "io_uring submit failed");
                if ring.submitter().submit().is_err() {
                    std::thread::yield_now();
                }
            }
        }
        for completion in ring.completion() {
            let slot = completion.user_data() as usize;
            if let Some(request) = slots.get_mut(slot).and_then(Option::take) {
                let _ = request.reply.send(completion.result());
                free.push(slot);
                in_flight -= 1;
            }
        }
    }
}

/// Frees the blocks of `length` bytes at `offset` in `file`, which then read
/// as zeros; the file keeps its size (`fallocate(FALLOC_FL_PUNCH_HOLE |
/// FALLOC_FL_KEEP_SIZE)`). Fails with EOPNOTSUPP where the filesystem cannot.
pub fn punch_hole(file: &File, offset: u64, length: u64) -> io::Result<()> {
    let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    if length == 0 {
        return Ok(());
    }
    // SAFETY: fallocate reads only its integer arguments; the descriptor is
    // owned by `file`, which is borrowed for the whole call.
    let result = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            length,
        )
    };
    if result == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// What [`filesystem_facts`] tells of the filesystem holding a file.
#[derive(Debug, Clone, Copy)]
pub struct FilesystemFacts {
    /// It keeps files in memory (tmpfs, ramfs): a file's pages are its storage.
    pub in_memory: bool,
    /// Bytes available to us, and the filesystem's size (0 where it has
    /// no limit: ramfs, tmpfs mounted with `size=0`).
    pub available: u64,
    pub total: u64,
    /// The filesystem's magic number (`f_type`, e.g. 0xEF53 for ext4).
    pub magic: u32,
}

/// Whether `file` is on ext4 or XFS, which keep blocks `fallocate`
/// reserved unwritten until their first write and convert them at the
/// next sync ([`crate::StorageBackend::converts_allocations`]).
pub fn converts_allocations(file: &File) -> bool {
    const EXT4: u32 = 0xEF53;
    const XFS: u32 = 0x5846_5342;
    filesystem_facts(file).is_ok_and(|facts| matches!(facts.magic, EXT4 | XFS))
}

/// What the filesystem holding `file` is (`fstatfs(2)`).
pub fn filesystem_facts(file: &File) -> io::Result<FilesystemFacts> {
    const TMPFS_MAGIC: u32 = 0x0102_1994;
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    let mut facts = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes one `statfs` into the buffer it is given, which
    // is ours and large enough; the descriptor is owned by `file`, which is
    // borrowed for the whole call.
    let result = unsafe { libc::fstatfs(file.as_raw_fd(), facts.as_mut_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstatfs succeeded, so it filled the struct (and it was zeroed).
    let facts = unsafe { facts.assume_init() };
    // The field types differ between architectures; magic numbers are 32
    // bits (a signed 32-bit `f_type` holds the larger ones as negatives).
    #[allow(clippy::unnecessary_cast)]
    let (kind, block) = (facts.f_type as u32, facts.f_bsize as u64);
    #[allow(clippy::unnecessary_cast)]
    let (available, total) = (facts.f_bavail as u64, facts.f_blocks as u64);
    Ok(FilesystemFacts {
        in_memory: matches!(kind, TMPFS_MAGIC | RAMFS_MAGIC),
        available: available.saturating_mul(block),
        total: total.saturating_mul(block),
        magic: kind,
    })
}

/// Allocates `length` bytes at `offset` in `file` (`fallocate(2)` mode 0:
/// the file grows, with zeros, if the range ends past it). Fails with
/// EOPNOTSUPP where the filesystem cannot, ENOSPC where the space is not
/// there.
pub fn allocate(file: &File, offset: u64, length: u64) -> io::Result<()> {
    let (Ok(offset), Ok(length)) = (i64::try_from(offset), i64::try_from(length)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    if length == 0 {
        return Ok(());
    }
    loop {
        // SAFETY: fallocate reads only its integer arguments; the descriptor
        // is owned by `file`, which is borrowed for the whole call.
        let result = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset, length) };
        if result == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Copies `length` bytes from offset `source_offset` of the file open as
/// `source` to `offset` of `destination`, in the kernel (`copy_file_range(2)`:
/// no copy through user space; on filesystems that can, no copy at all).
/// Fails with EXDEV, EINVAL, ENOSYS or EOPNOTSUPP where the kernel cannot
/// copy between these files (the engines then copy through user space), with
/// `UnexpectedEof` if the source ends first.
///
/// The caller keeps `source` open for the whole call.
pub fn copy_file_range_all(
    source: std::os::fd::RawFd,
    source_offset: u64,
    destination: &File,
    offset: u64,
    length: u64,
) -> io::Result<()> {
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let mut from = i64::try_from(source_offset).map_err(|_| invalid())?;
    let mut to = i64::try_from(offset).map_err(|_| invalid())?;
    let end = source_offset.checked_add(length).ok_or_else(invalid)?;
    i64::try_from(end).map_err(|_| invalid())?;
    let mut left = length;
    while left > 0 {
        let step = left.min(1 << 30) as usize;
        // SAFETY: the kernel reads and updates the two offsets, which are
        // locals alive for the call, and reads only integers otherwise; both
        // descriptors are open for the whole call (`destination` is
        // borrowed, `source` is kept open by the caller).
        let copied =
            unsafe { libc::copy_file_range(source, &mut from, destination.as_raw_fd(), &mut to, step, 0) };
        let Some(copied) = progress(copied, io::ErrorKind::UnexpectedEof)? else { continue };
        left -= copied as u64;
    }
    Ok(())
}

/// The byte count a system call returned: `None` when it was interrupted
/// (call it again), `zero` as the error when it made no progress.
fn progress(result: isize, zero: io::ErrorKind) -> io::Result<Option<usize>> {
    if result < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::Interrupted { Ok(None) } else { Err(error) };
    }
    if result == 0 {
        return Err(zero.into());
    }
    Ok(Some(result as usize))
}

/// Writes the slices back to back from `offset` with `pwritev` (one system
/// call for a record's header, payload and padding), retrying short writes.
pub fn write_vectored_all_at(file: &File, parts: &[&[u8]], offset: u64) -> io::Result<()> {
    const MAX_PARTS: usize = 4;
    if parts.len() > MAX_PARTS {
        let mut at = offset;
        for part in parts {
            std::os::unix::fs::FileExt::write_all_at(file, part, at)?;
            at += part.len() as u64;
        }
        return Ok(());
    }
    let total: usize = parts.iter().map(|part| part.len()).sum();
    let mut done = 0usize;
    while done < total {
        let mut iovecs = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; MAX_PARTS];
        let mut count = 0;
        let mut skip = done;
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
                continue;
            }
            let rest = &part[skip..];
            skip = 0;
            iovecs[count] = libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() };
            count += 1;
        }
        let at =
            i64::try_from(offset + done as u64).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the first `count` iovecs point into `parts`, which are
        // borrowed (and so alive and unchanged) for the whole call; the
        // kernel only reads them; the descriptor is owned by `file`.
        let written = unsafe { libc::pwritev(file.as_raw_fd(), iovecs.as_ptr(), count as libc::c_int, at) };
        let Some(written) = progress(written, io::ErrorKind::WriteZero)? else { continue };
        done += written;
    }
    Ok(())
}

/// A file whose reads, writes and syncs go through a shared [`Ring`].
#[derive(Debug)]
pub struct UringBackend {
    file: File,
    ring: Arc<Ring>,
}

impl UringBackend {
    /// Wraps an open file; `ring` may be shared by many files.
    pub fn new(file: File, ring: Arc<Ring>) -> Self {
        Self { file, ring }
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }
}

fn check(result: i32) -> io::Result<usize> {
    if result < 0 { Err(io::Error::from_raw_os_error(-result)) } else { Ok(result as usize) }
}

impl StorageBackend for UringBackend {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let rest = &mut buf[done..];
            let length = rest.len().min(1 << 30) as u32;
            let entry =
                opcode::Read::new(self.fd(), rest.as_mut_ptr(), length).offset(offset + done as u64).build();
            // SAFETY: `rest` is borrowed mutably for this whole call and
            // `submit` returns only after the kernel is done with it.
            let read = check(unsafe { self.ring.submit(entry, Vec::new()) }?)?;
            if read == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            done += read;
        }
        Ok(())
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.write_vectored_at(&[data], offset)
    }

    fn write_vectored_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        let total: usize = parts.iter().map(|part| part.len()).sum();
        let mut done = 0usize;
        while done < total {
            // Rebuild the iovecs past what was written (short writes are rare).
            let mut skip = done;
            let mut iovecs = Vec::with_capacity(parts.len());
            for part in parts {
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                let rest = &part[skip..];
                skip = 0;
                iovecs
                    .push(libc::iovec { iov_base: rest.as_ptr() as *mut libc::c_void, iov_len: rest.len() });
            }
            let entry = opcode::Writev::new(self.fd(), iovecs.as_ptr(), iovecs.len() as u32)
                .offset(offset + done as u64)
                .build();
            // SAFETY: the iovecs point into `parts`, borrowed for this whole
            // call; the iovec array itself moves into the request, whose heap
            // storage does not move, and both outlive the completion.
            let written = check(unsafe { self.ring.submit(entry, iovecs) }?)?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            done += written;
        }
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        let entry = opcode::Fsync::new(self.fd()).flags(types::FsyncFlags::DATASYNC).build();
        // SAFETY: fsync lends no buffer to the kernel; the descriptor is owned
        // by `self`, which outlives the call.
        check(unsafe { self.ring.submit(entry, Vec::new()) }?)?;
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn punch_hole(&self, offset: u64, length: u64) -> io::Result<()> {
        match punch_hole(&self.file, offset, length) {
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                crate::backend::write_zeros(self, offset, length)
            }
            result => result,
        }
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn copy_from(
        &self,
        source: &dyn StorageBackend,
        source_offset: u64,
        length: u64,
        offset: u64,
    ) -> io::Result<()> {
        // A plain system call: copies are rare (cleaning) and need no buffer.
        crate::backend::copy_in_kernel(self, &self.file, source, source_offset, length, offset)
    }

    fn prepare(&self, length: u64) -> io::Result<()> {
        crate::backend::prepare_file(self, &self.file, length)
    }

    fn converts_allocations(&self) -> bool {
        converts_allocations(&self.file)
    }

    fn next_hole(&self, offset: u64) -> u64 {
        crate::backend::seek_hole(self.file.as_raw_fd(), offset)
    }

    fn allocate(&self, offset: u64, length: u64) -> io::Result<()> {
        if length == 0 {
            return Ok(());
        }
        let entry = opcode::Fallocate::new(self.fd(), length).offset(offset).mode(0).build();
        // SAFETY: fallocate lends no buffer to the kernel; the descriptor is
        // owned by `self`, which outlives the call.
        match unsafe { self.ring.submit(entry, Vec::new()) }.and_then(check) {
            Ok(_) => Ok(()),
            Err(error)
                if crate::backend::unsupported(&error) || error.raw_os_error() == Some(libc::EINVAL) =>
            {
                // EINVAL: a kernel whose ring lacks IORING_OP_FALLOCATE.
                match allocate(&self.file, offset, length) {
                    Err(error) if crate::backend::unsupported(&error) => {
                        crate::backend::allocate_by_writing(self, offset, length)
                    }
                    result => result,
                }
            }
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The io_uring engine reads back what it wrote, in pieces, and reports a
    /// read past the end as UnexpectedEof (skipped where io_uring is off).
    #[test]
    fn uring_backend_round_trips() {
        if !available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        let ring = Arc::new(Ring::start(8).unwrap());
        let backend = UringBackend::new(file, ring);
        backend.write_vectored_at(&[b"abc", b"", b"defg"], 10).unwrap();
        backend.sync().unwrap();
        let mut buf = [0; 7];
        backend.read_at(&mut buf, 10).unwrap();
        assert_eq!(&buf, b"abcdefg");
        assert_eq!(backend.len().unwrap(), 17);
        let error = backend.read_at(&mut buf, 12).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        // fallocate through the ring: the file grows with zeros.
        backend.allocate(15, 1 << 20).unwrap();
        assert_eq!(backend.len().unwrap(), 15 + (1 << 20));
        backend.read_at(&mut buf, 10).unwrap();
        assert_eq!(&buf, b"abcdefg");
        let mut zeros = [0xEE; 8];
        backend.read_at(&mut zeros, 17).unwrap();
        assert_eq!(zeros, [0; 8]);
        use std::os::unix::fs::MetadataExt;
        assert!(backend.file.metadata().unwrap().blocks() * 512 >= 1 << 20);
    }
}
