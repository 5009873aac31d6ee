//! The daemon's only unsafe code: thin wrappers over Linux calls the
//! standard library does not expose.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Deallocates `[offset, offset + length)`; reads of it return zeros.
pub fn punch_hole(file: &File, offset: u64, length: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        length,
    )
}

/// Zeros `[offset, offset + length)` without writing data where possible.
pub fn zero_range(file: &File, offset: u64, length: u64) -> io::Result<()> {
    fallocate(
        file,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        offset,
        length,
    )
}

fn fallocate(file: &File, mode: i32, offset: u64, length: u64) -> io::Result<()> {
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let length = i64::try_from(length).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fallocate reads no memory of ours; the fd is valid for the
    // lifetime of `file`, which outlives the call.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, length) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `lseek(SEEK_DATA)` / `lseek(SEEK_HOLE)`: the next data (or hole) at or
/// after `offset`, or `None` past the last data (ENXIO).
pub fn seek(file: &File, offset: u64, data: bool) -> io::Result<Option<u64>> {
    let whence = if data {
        libc::SEEK_DATA
    } else {
        libc::SEEK_HOLE
    };
    let offset = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: lseek touches no memory of ours; the fd is valid while `file`
    // lives. The file position it moves is unused: all IO is positional.
    let result = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if result >= 0 {
        return Ok(Some(result as u64));
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(error)
    }
}
