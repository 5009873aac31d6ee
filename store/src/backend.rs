//! How the engine reaches a disk: a per-file [`StorageBackend`] and a
//! [`Filesystem`] that names, creates and removes those files.
//!
//! Three engines implement them: [`FileBackend`] (`pread`/`pwrite`), the
//! io_uring engine in [`crate::uring`], and [`crate::memory`] for tests. The
//! engine knows nothing of what the bytes mean; the journal does.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One file of the store, addressed by byte offset.
///
/// Reads are exact: a read that reaches past the end of the file fails with
/// [`io::ErrorKind::UnexpectedEof`] (the journal never reads what it did not
/// write, so a short read means damage, not a hole).
pub trait StorageBackend: Send + Sync + fmt::Debug {
    /// Fills `buf` from `offset`; `UnexpectedEof` if the file is shorter.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `data` at `offset`, extending the file if needed.
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()>;
    /// Writes the slices back to back from `offset`; one syscall where the
    /// engine can.
    fn write_vectored_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        let mut at = offset;
        for part in parts {
            self.write_at(part, at)?;
            at += part.len() as u64;
        }
        Ok(())
    }
    /// Makes every completed write durable (`fdatasync` semantics).
    fn sync(&self) -> io::Result<()>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Current length of the file in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Makes `length` bytes at `offset` read as zeros, freeing their space
    /// where the engine can (a hole); never changes the file's size. Like a
    /// write, it is durable only after [`Self::sync`].
    fn punch_hole(&self, offset: u64, length: u64) -> io::Result<()> {
        write_zeros(self, offset, length)
    }
    /// Allocates disk space for `length` bytes at `offset` (`fallocate(2)`
    /// with mode 0), so that writes there later cannot fail for lack of
    /// space; the part past the file's end extends the file with zeros.
    /// Bytes already in the file are unchanged. Call it before a write that
    /// must not fail once acknowledged (the journal reserves its tail so).
    ///
    /// Fails with ENOSPC, EDQUOT or EFBIG ([`is_no_space`]) when the space
    /// is not there; part of the range may then be allocated and the file
    /// extended over that part (ext4 does so), which a retry allocates
    /// again. Like a write, durable only after [`Self::sync`].
    fn allocate(&self, offset: u64, length: u64) -> io::Result<()> {
        allocate_by_writing(self, offset, length)
    }
    /// The file's descriptor, when it is a real file (so that another file
    /// of the store can copy from it in the kernel).
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Copies `length` bytes at `source_offset` of `source` to `offset` of
    /// this file (cleaning moves base data from a journal segment into the
    /// base file so). The file engines copy in the kernel
    /// (`copy_file_range(2)`); the default reads and writes through a
    /// buffer. Like a write, durable only after [`Self::sync`].
    fn copy_from(
        &self,
        source: &dyn StorageBackend,
        source_offset: u64,
        length: u64,
        offset: u64,
    ) -> io::Result<()> {
        copy_by_reading(self, source, source_offset, length, offset)
    }
    /// Readies a new, empty file to be written `length` bytes from its
    /// start: at least its space allocated ([`Self::allocate`], the
    /// default); in memory (tmpfs) the file engines write zeros, so that
    /// the writes that fill it later overwrite pages that exist instead of
    /// allocating their own under the file's lock (`prepare_file`). The
    /// file reads as zeros after it. It may be slow (writing the whole
    /// length); the store calls it off the write path to make spare
    /// segment files.
    fn prepare(&self, length: u64) -> io::Result<()> {
        self.allocate(0, length)
    }
    /// Whether the first sync after a write into space [`Self::allocate`]
    /// reserved also commits the filesystem's metadata: ext4 and XFS keep
    /// such blocks *unwritten* until then and convert them at the sync.
    /// Not in memory (tmpfs), nor on filesystems that copy on write (an
    /// overwrite of written blocks needs new ones there anyway). The
    /// default says no; the memory engine says yes, so that the crash
    /// tests cover what the journal does about it.
    fn converts_allocations(&self) -> bool {
        false
    }
    /// The first offset at or after `offset` whose block has no data
    /// written (`lseek(2)` `SEEK_HOLE`: a hole, or space `fallocate` left
    /// unwritten; bytes written into the page cache count as data). The
    /// file's end when there is none; `offset` when the engine cannot tell
    /// (the default).
    fn next_hole(&self, offset: u64) -> u64 {
        offset
    }
}

/// `lseek(fd, offset, SEEK_HOLE)`; `offset` when it fails (past the end).
pub(crate) fn seek_hole(fd: std::os::fd::RawFd, offset: u64) -> u64 {
    let Ok(at) = i64::try_from(offset) else {
        return offset;
    };
    // SAFETY: lseek reads only its integer arguments; the caller owns `fd`.
    let found = unsafe { libc::lseek(fd, at, libc::SEEK_HOLE) };
    u64::try_from(found).unwrap_or(offset)
}

/// The portable [`StorageBackend::copy_from`]: reads and writes through a
/// buffer of at most 1 MiB.
pub fn copy_by_reading<B: StorageBackend + ?Sized>(
    file: &B,
    source: &dyn StorageBackend,
    source_offset: u64,
    length: u64,
    offset: u64,
) -> io::Result<()> {
    let mut buffer = vec![0; length.min(1 << 20) as usize];
    let mut done = 0;
    while done < length {
        let step = (length - done).min(buffer.len() as u64) as usize;
        source.read_at(&mut buffer[..step], source_offset + done)?;
        file.write_at(&buffer[..step], offset + done)?;
        done += step as u64;
    }
    Ok(())
}

/// Whether `copy_file_range` failed because the kernel cannot copy between
/// these files (then the engines copy through user space).
pub(crate) fn copy_unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP))
}

/// [`StorageBackend::copy_from`] for the engines over a real `file`: in the
/// kernel when `source` is a real file too, else (or where the kernel
/// refuses) through user space.
pub(crate) fn copy_in_kernel<B: StorageBackend + ?Sized>(
    engine: &B,
    file: &File,
    source: &dyn StorageBackend,
    source_offset: u64,
    length: u64,
    offset: u64,
) -> io::Result<()> {
    if let Some(fd) = source.raw_fd() {
        match crate::uring::copy_file_range_all(fd, source_offset, file, offset, length) {
            Err(error) if copy_unsupported(&error) => {}
            result => return result,
        }
    }
    copy_by_reading(engine, source, source_offset, length, offset)
}

/// Whether an error says the filesystem has no room for more bytes: ENOSPC,
/// EDQUOT (quota), EFBIG (the file may grow no further: `RLIMIT_FSIZE`, or
/// the filesystem's largest file).
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG))
        || error.kind() == io::ErrorKind::StorageFull
}

static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

/// A file is prepared only while its filesystem would keep this many times
/// its length available after it, and a tenth of its size: spare files
/// save time, never the last space a journal needs.
const PREPARE_HEADROOM: u64 = 3;

/// The file engines' [`StorageBackend::prepare`], `file` being the open
/// file behind `backend`.
///
/// - In memory (tmpfs), zeros are written over the whole length: writing
///   is what allocates every page and touches it. `fallocate` would
///   allocate pages without touching them, and in a virtual machine the
///   first touch is the expensive part.
/// - On a disk, `fallocate` only. Writing zeros too (synced, as PostgreSQL
///   initializes its WAL files, or left in the page cache) was measured:
///   the side-by-side run's flushes were slower and its first sequential
///   writes no faster (docs/journal.md, "Spare files made ahead").
pub(crate) fn prepare_file<B: StorageBackend + ?Sized>(
    backend: &B,
    file: &File,
    length: u64,
) -> io::Result<()> {
    let facts = crate::uring::filesystem_facts(file)?;
    let keep = length.saturating_mul(PREPARE_HEADROOM).max(facts.total / 10);
    if facts.total == 0 || facts.available < length.saturating_add(keep) {
        return Err(io::Error::new(
            io::ErrorKind::StorageFull,
            format!("{} bytes available: too few to prepare {length} more", facts.available),
        ));
    }
    if !facts.in_memory {
        return backend.allocate(0, length);
    }
    fill_zeros(backend, 0, length)
}

/// Writes zeros over `length` bytes at `offset` (the file grows if the
/// range ends past it), up to 1 MiB per call.
pub(crate) fn fill_zeros<B: StorageBackend + ?Sized>(
    backend: &B,
    offset: u64,
    length: u64,
) -> io::Result<()> {
    const STEP: u64 = 1 << 20;
    let mut at = 0;
    while at < length {
        let step = (length - at).min(STEP) as usize;
        let slices: Vec<&[u8]> =
            (0..step).step_by(ZEROS.len()).map(|from| &ZEROS[..(step - from).min(ZEROS.len())]).collect();
        backend.write_vectored_at(&slices, offset + at)?;
        at += step as u64;
    }
    Ok(())
}

/// Block size [`allocate_by_writing`] assumes (the largest common
/// filesystem block; smaller blocks are covered too).
const ALLOCATION_BLOCK: u64 = 4096;

/// The portable [`StorageBackend::allocate`], for filesystems without
/// `fallocate` (as glibc's `posix_fallocate` emulates it): writes zeros over
/// the part past the file's end, and inside the file writes one zero byte
/// into each block that reads as zero there (a hole, or a block whose data
/// starts with a zero: rewriting it changes nothing), which allocates it.
pub fn allocate_by_writing<B: StorageBackend + ?Sized>(file: &B, offset: u64, length: u64) -> io::Result<()> {
    let end = offset.checked_add(length).ok_or(io::ErrorKind::InvalidInput)?;
    let file_end = file.len()?;
    let mut block = offset - offset % ALLOCATION_BLOCK;
    while block < end.min(file_end) {
        let at = block.max(offset);
        let mut byte = [0];
        file.read_at(&mut byte, at)?;
        if byte[0] == 0 {
            file.write_at(&byte, at)?;
        }
        block += ALLOCATION_BLOCK;
    }
    let mut at = offset.max(file_end);
    while at < end {
        let step = (end - at).min(ZEROS.len() as u64) as usize;
        file.write_at(&ZEROS[..step], at)?;
        at += step as u64;
    }
    Ok(())
}

/// Writes zeros over `length` bytes at `offset`, up to the file's end only:
/// the portable [`StorageBackend::punch_hole`].
pub fn write_zeros<B: StorageBackend + ?Sized>(file: &B, offset: u64, length: u64) -> io::Result<()> {
    let end = offset.saturating_add(length).min(file.len()?);
    fill_zeros(file, offset, end.saturating_sub(offset))
}

/// The directory tree under a store's data dir. Paths are relative, with `/`.
///
/// Assumed of every implementation (docs/journal.md, "What we assume of the
/// disk"): creating, renaming and removing entries is durable once
/// [`Filesystem::sync_dir`] of the parent returns.
pub trait Filesystem: Send + Sync + fmt::Debug {
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &str) -> io::Result<()>;
    /// Names of the entries in a directory, sorted.
    fn list_dir(&self, path: &str) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing; creates it (empty) if `create`.
    fn open_file(&self, path: &str, create: bool) -> io::Result<Arc<dyn StorageBackend>>;
    /// Whether a file or directory exists.
    fn exists(&self, path: &str) -> bool;
    /// Removes a file.
    fn remove_file(&self, path: &str) -> io::Result<()>;
    /// Removes a directory and everything under it.
    fn remove_dir_all(&self, path: &str) -> io::Result<()>;
    /// Renames a file or directory.
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes the directory's entries durable.
    fn sync_dir(&self, path: &str) -> io::Result<()>;
    /// Whether every file's bytes are always in memory (tmpfs, ramfs): a
    /// read never waits for a disk, so a caller need not move large reads
    /// off a thread that must stay responsive.
    fn in_memory(&self) -> bool {
        false
    }
}

/// The IO engine to use for files on a real disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// The measured default for the journal's access pattern: `pread`/`pwrite`
    /// (docs/journal.md, "IO engine" has the figures).
    #[default]
    Auto,
    /// `pread`/`pwrite` on the calling thread.
    File,
    /// io_uring on a dedicated ring thread; falls back to [`Engine::File`]
    /// with a warning if the kernel refuses io_uring.
    Uring,
    /// io_uring if the kernel allows it, else `pread`/`pwrite`.
    UringIfAvailable,
}

/// The engine actually in use, after probing the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `pread`/`pwrite`.
    File,
    /// io_uring.
    Uring,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::File => "pread/pwrite",
            Self::Uring => "io_uring",
        })
    }
}

/// Picks the engine for a choice: call once at start.
pub fn pick_engine(choice: EngineChoice) -> Engine {
    match choice {
        EngineChoice::Auto | EngineChoice::File => Engine::File,
        EngineChoice::Uring | EngineChoice::UringIfAvailable => {
            if crate::uring::available() {
                Engine::Uring
            } else {
                if choice == EngineChoice::Uring {
                    tracing::warn!("io_uring is not available here; using pread/pwrite");
                }
                Engine::File
            }
        }
    }
}

/// `pread`/`pwrite` on a [`File`].
#[derive(Debug)]
pub struct FileBackend {
    file: File,
}

impl FileBackend {
    /// Wraps an open file (read and write access).
    pub fn new(file: File) -> Self {
        Self { file }
    }

    /// The file, for engines that share its descriptor.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl StorageBackend for FileBackend {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(data, offset)
    }

    fn write_vectored_at(&self, parts: &[&[u8]], offset: u64) -> io::Result<()> {
        crate::uring::write_vectored_all_at(&self.file, parts, offset)
    }

    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn punch_hole(&self, offset: u64, length: u64) -> io::Result<()> {
        match crate::uring::punch_hole(&self.file, offset, length) {
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => write_zeros(self, offset, length),
            result => result,
        }
    }

    fn allocate(&self, offset: u64, length: u64) -> io::Result<()> {
        match crate::uring::allocate(&self.file, offset, length) {
            Err(error) if unsupported(&error) => allocate_by_writing(self, offset, length),
            result => result,
        }
    }

    fn prepare(&self, length: u64) -> io::Result<()> {
        prepare_file(self, &self.file, length)
    }

    fn converts_allocations(&self) -> bool {
        crate::uring::converts_allocations(&self.file)
    }

    fn next_hole(&self, offset: u64) -> u64 {
        seek_hole(std::os::fd::AsRawFd::as_raw_fd(&self.file), offset)
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(&self.file))
    }

    fn copy_from(
        &self,
        source: &dyn StorageBackend,
        source_offset: u64,
        length: u64,
        offset: u64,
    ) -> io::Result<()> {
        copy_in_kernel(self, &self.file, source, source_offset, length, offset)
    }
}

/// Whether `fallocate` failed because the filesystem does not do it (then
/// the engines fall back to writing).
pub(crate) fn unsupported(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

/// A [`Filesystem`] rooted at a directory of the real disk.
#[derive(Debug)]
pub struct RealFs {
    root: PathBuf,
    engine: Engine,
    ring: Option<Arc<crate::uring::Ring>>,
    /// `root` is on tmpfs or ramfs.
    in_memory: bool,
}

/// `f_type` of ramfs (include/uapi/linux/magic.h; libc does not name it).
const RAMFS_MAGIC: u32 = 0x8584_58f6;

/// Mode of the files a store creates: its user's alone (the umask may take
/// more away, never add).
pub const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `path` and its missing parents with mode 0700 (before the
/// umask): a store's directories are its user's alone. Directories that
/// exist keep their mode.
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
}

impl RealFs {
    /// Uses `root` (created if missing) with the given engine.
    pub fn new(root: &Path, engine: Engine) -> io::Result<Self> {
        create_private_dir(root)?;
        let ring = match engine {
            Engine::File => None,
            Engine::Uring => Some(Arc::new(crate::uring::Ring::start(crate::uring::RING_DEPTH)?)),
        };
        // f_type is 32 bits wide, signed or not, or 64 bits, by
        // architecture: compare the low 32 bits, where the magics are.
        let in_memory = rustix::fs::statfs(root)
            .is_ok_and(|stat| [libc::TMPFS_MAGIC as u32, RAMFS_MAGIC].contains(&(stat.f_type as u32)));
        Ok(Self { root: root.to_owned(), engine, ring, in_memory })
    }

    /// The engine files are opened with.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    fn path(&self, relative: &str) -> PathBuf {
        if relative.is_empty() { self.root.clone() } else { self.root.join(relative) }
    }
}

impl Filesystem for RealFs {
    fn in_memory(&self) -> bool {
        self.in_memory
    }

    fn create_dir_all(&self, path: &str) -> io::Result<()> {
        create_private_dir(&self.path(path))
    }

    fn list_dir(&self, path: &str) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(self.path(path))? {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    fn open_file(&self, path: &str, create: bool) -> io::Result<Arc<dyn StorageBackend>> {
        // Volume data is the users' disks (patient records, say): created
        // for the daemon's user alone, whatever the umask.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .mode(PRIVATE_FILE_MODE)
            .open(self.path(path))?;
        Ok(match &self.ring {
            None => Arc::new(FileBackend::new(file)),
            Some(ring) => Arc::new(crate::uring::UringBackend::new(file, ring.clone())),
        })
    }

    fn exists(&self, path: &str) -> bool {
        self.path(path).exists()
    }

    fn remove_file(&self, path: &str) -> io::Result<()> {
        fs::remove_file(self.path(path))
    }

    fn remove_dir_all(&self, path: &str) -> io::Result<()> {
        fs::remove_dir_all(self.path(path))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }

    fn sync_dir(&self, path: &str) -> io::Result<()> {
        File::open(self.path(path))?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file engine reads back what it wrote and reports a read past the
    /// end as UnexpectedEof.
    #[test]
    fn file_backend_round_trips_and_short_reads_fail() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealFs::new(dir.path(), Engine::File).unwrap();
        let file = fs.open_file("a", true).unwrap();
        file.write_vectored_at(&[b"hello", b" world"], 3).unwrap();
        file.sync().unwrap();
        let mut buf = [0; 11];
        file.read_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"hello world");
        assert_eq!(file.len().unwrap(), 14);
        let error = file.read_at(&mut buf, 10).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(fs.list_dir("").unwrap(), vec!["a".to_owned()]);
        file.punch_hole(4, 5).unwrap();
        assert_eq!(file.len().unwrap(), 14);
        file.read_at(&mut buf, 3).unwrap();
        assert_eq!(&buf, b"h\0\0\0\0\0world");
    }

    /// Space allocated with fallocate (and with the portable fallback, over
    /// a hole) is really allocated (the file's block count covers it), the
    /// file grows with zeros past its end, and its bytes are unchanged.
    #[test]
    fn allocate_reserves_blocks_and_keeps_bytes() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let fs = RealFs::new(dir.path(), Engine::File).unwrap();
        let blocks = |name: &str| fs::metadata(dir.path().join(name)).unwrap().blocks() * 512;
        let file = fs.open_file("a", true).unwrap();
        file.write_at(b"data", 0).unwrap();
        file.allocate(2, 1 << 20).unwrap();
        assert_eq!(file.len().unwrap(), 2 + (1 << 20));
        assert!(blocks("a") >= 1 << 20, "{} bytes allocated", blocks("a"));
        let mut buf = [0xEE; 6];
        file.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"data\0\0");
        // Inside the file nothing moves.
        file.allocate(0, 4).unwrap();
        assert_eq!(file.len().unwrap(), 2 + (1 << 20));

        let holey = fs.open_file("b", true).unwrap();
        holey.write_at(b"head", 0).unwrap();
        holey.set_len(256 << 10).unwrap();
        holey.write_at(b"tail", (256 << 10) - 4).unwrap();
        let before = blocks("b");
        allocate_by_writing(holey.as_ref(), 0, 512 << 10).unwrap();
        assert_eq!(holey.len().unwrap(), 512 << 10);
        assert!(blocks("b") >= (512 << 10) && blocks("b") > before, "{} bytes allocated", blocks("b"));
        let mut buf = [0; 4];
        holey.read_at(&mut buf, 0).unwrap();
        assert_eq!(&buf, b"head");
        holey.read_at(&mut buf, (256 << 10) - 4).unwrap();
        assert_eq!(&buf, b"tail");
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(libc::EIO)));
    }

    /// A copy between two real files (in the kernel) and from a memory file
    /// (through a buffer) lands exactly where asked, and a copy past the
    /// source's end fails.
    #[test]
    fn copy_from_copies_ranges_between_files() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealFs::new(dir.path(), Engine::File).unwrap();
        let source = fs.open_file("source", true).unwrap();
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        source.write_at(&data, 0).unwrap();
        let target = fs.open_file("target", true).unwrap();
        target.copy_from(source.as_ref(), 1000, (2 << 20) + 7, 5).unwrap();
        let mut buf = vec![0; (2 << 20) + 7];
        target.read_at(&mut buf, 5).unwrap();
        assert!(buf == data[1000..1000 + buf.len()]);
        assert_eq!(target.len().unwrap(), 5 + buf.len() as u64);
        assert!(target.copy_from(source.as_ref(), (3 << 20) - 10, 20, 0).is_err());
        let memory = crate::memory::MemoryFs::new();
        let memory_source = memory.open_file("m", true).unwrap();
        memory_source.write_at(b"hello world", 0).unwrap();
        target.copy_from(memory_source.as_ref(), 6, 5, 1).unwrap();
        let mut word = [0; 5];
        target.read_at(&mut word, 1).unwrap();
        assert_eq!(&word, b"world");
    }
}
