//! The system calls the server makes outside tokio and std: every `unsafe`
//! block of this crate lives here.

use std::io;
use std::os::fd::RawFd;

/// `recv(2)` with `MSG_DONTWAIT`: what the socket holds right now. `None`
/// when nothing is there yet (or the call was interrupted); `Some(0)` at
/// end of stream.
pub(crate) fn recv_now(socket: RawFd, into: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `into` is writable for its whole length and outlives the call;
    // the descriptor is the caller's open socket.
    let count = unsafe { libc::recv(socket, into.as_mut_ptr().cast(), into.len(), libc::MSG_DONTWAIT) };
    if count < 0 {
        let error = io::Error::last_os_error();
        return match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(error),
        };
    }
    Ok(Some(count as usize))
}

/// `poll(2)` with no wait: whether the socket has bytes (or an end of
/// stream, or an error) to read, at least its low-water mark of them
/// ([`set_receive_low_water`]). Unlike a `recv` that finds nothing, it
/// does not take the socket's lock, so spinning on it does not hold up the
/// kernel delivering the very bytes waited for.
pub(crate) fn readable_now(socket: RawFd) -> bool {
    let mut entry = libc::pollfd { fd: socket, events: libc::POLLIN, revents: 0 };
    // SAFETY: `entry` is one valid pollfd for the call's duration.
    let ready = unsafe { libc::poll(&mut entry, 1, 0) };
    ready > 0 && entry.revents != 0
}

/// `SO_RCVLOWAT`: the socket reports readable (to epoll, so to tokio, and
/// to poll) only once it holds at least `bytes` (or at end of stream, on
/// an error, or when the kernel's receive window runs short). Reads that
/// do not wait are unaffected.
pub(crate) fn set_receive_low_water(socket: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a valid c_int for the call's duration; the
    // descriptor is the caller's open socket.
    let result = unsafe {
        libc::setsockopt(
            socket,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `sendfile(2)`: up to `count` bytes of `file` at `offset` into `socket`.
/// Returns the bytes sent (0: the file ends at `offset`); `WouldBlock` when
/// the socket's buffer is full.
pub(crate) fn send_file(socket: RawFd, file: RawFd, offset: u64, count: usize) -> io::Result<usize> {
    let mut at = libc::off64_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `at` is a valid, exclusively borrowed off64_t for the call;
    // both descriptors are open (the caller holds the socket and the file).
    let sent = unsafe { libc::sendfile64(socket, file, &mut at, count) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// `cachestat(2)` (Linux 6.5): 451 in the unified system call table that
/// these architectures share (alpha and MIPS number it differently; there
/// the check answers "cannot tell"). libc does not name it on all of them.
const SYS_CACHESTAT: Option<libc::c_long> = if cfg!(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc64",
    target_arch = "s390x"
)) {
    Some(451)
} else {
    None
};

#[repr(C)]
struct CachestatRange {
    offset: u64,
    length: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    cache: u64,
    dirty: u64,
    writeback: u64,
    evicted: u64,
    recently_evicted: u64,
}

/// Whether every page of `length` bytes of `file` at `offset` is in the page
/// cache now. `None` when the kernel cannot tell (before Linux 6.5, or a
/// file system without a page cache). Best effort: a page may be evicted
/// right after, or still be on its way in from a readahead.
pub(crate) fn cached(file: RawFd, offset: u64, length: u64) -> Option<bool> {
    static PAGE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    static UNSUPPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if length == 0 {
        return Some(true);
    }
    let number = SYS_CACHESTAT?;
    if UNSUPPORTED.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    // SAFETY: sysconf has no memory effects.
    let page = (*PAGE.get_or_init(|| u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()))
        .filter(|&page| page > 0)?;
    let range = CachestatRange { offset, length };
    let mut stat = Cachestat::default();
    // SAFETY: `range` and `stat` are valid for reads and writes of their
    // #[repr(C)] layouts (struct cachestat_range and struct cachestat of
    // include/uapi/linux/mman.h) for the call; flags must be 0. The
    // arguments are passed as longs, as the variadic syscall() reads them.
    let result = unsafe {
        libc::syscall(
            number,
            libc::c_long::from(file),
            &range as *const CachestatRange,
            &mut stat as *mut Cachestat,
            0 as libc::c_long,
        )
    };
    if result != 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            UNSUPPORTED.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        return None;
    }
    let first = offset / page;
    let last = offset.checked_add(length - 1)? / page;
    Some(stat.cache > last - first)
}
