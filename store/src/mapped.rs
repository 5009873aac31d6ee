//! Journal segments read through a shared, read-only memory mapping.
//!
//! A read of an image fragmented by small writes is one piece per record,
//! and a `pread` per piece costs a system call and a page-cache lookup each
//! (on tmpfs, a 4 GiB copy of a volume after random 4 KiB writes spent 18 %
//! of the server's time in the lookups alone). From a mapping, a cached
//! piece is a `memcpy`: its pages are looked up once, when first touched.
//! docs/journal.md, "Reading records through mappings", has the figures.
//!
//! A mapped read cannot return an error: a page that cannot be read in (a
//! disk error, or a page wholly beyond the end of a file cut shorter
//! behind the journal's back) raises SIGBUS. (The rest of a file's last,
//! partial page reads as zeros, as the kernel maps it. Only the journal
//! cuts its segment files: after a segment's last record, past which
//! nothing reads, and at recovery, before anything is mapped.)
//!
//! This module's handler turns that into a failed copy. When the fault
//! lies in the mapping the faulting thread is copying from, it maps a page
//! of zeros over the bad page so the copy can finish, and marks the
//! mapping poisoned. Every copy checks the mark after copying, so no
//! reader ever takes those zeros for data. The caller then reads with
//! `pread`, which reports the real error; a poisoned mapping is never read
//! again. A SIGBUS anywhere else goes to the handler that was there before
//! (Rust's stack-overflow check, or the default action).

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, compiler_fence, fence};
use std::sync::{Once, OnceLock};

/// A read-only shared mapping of the first `len` bytes of a file.
#[derive(Debug)]
pub struct Mapping {
    ptr: *const u8,
    len: usize,
    /// A page of it could not be read in and is zeros now: never copy from
    /// it again.
    poisoned: AtomicBool,
}

// SAFETY: the mapping is read-only and lives until `drop`; the pointer is
// only read through `copy`, which any thread may call.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

thread_local! {
    /// The mapping this thread is copying from (null when none). Constant
    /// initialised, no destructor: the signal handler may read it.
    static COPYING_FROM: Cell<*const Mapping> = const { Cell::new(std::ptr::null()) };
}

/// Page size, for the handler (set before it is installed).
static PAGE: AtomicUsize = AtomicUsize::new(0);

/// The SIGBUS action before ours (set before ours is installed).
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Mappings alive in this process, and the most there may be: each is a
/// kernel memory map entry (and a poisoned page splits one in up to
/// three), under `vm.max_map_count` (65,530 by default) together with the
/// rest of the process. Past the cap segments are read with `pread`, so
/// the handler's zero page always has an entry to spare.
static LIVE: AtomicUsize = AtomicUsize::new(0);
const MAX_LIVE: usize = 16_384;

static INSTALL: Once = Once::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

impl Mapping {
    /// Maps the first `len` bytes of `fd` (which may be longer than the
    /// file: a copy beyond its end fails like a bad page). `None` when
    /// mapping is not possible: the caller reads with `pread`.
    pub fn new(fd: RawFd, len: usize) -> Option<Mapping> {
        if len == 0 || !install_handler() {
            return None;
        }
        if LIVE.fetch_add(1, Ordering::Relaxed) >= MAX_LIVE {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        // SAFETY: a new mapping at an address of the kernel's choice; it
        // aliases nothing of ours.
        let ptr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, 0) };
        if ptr == libc::MAP_FAILED {
            LIVE.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Mapping { ptr: ptr.cast(), len, poisoned: AtomicBool::new(false) })
    }

    /// Copies the bytes at `position` into `buf`; false if they are beyond
    /// the mapping or a page of the mapping could not be read in (now or
    /// before): read them with `pread` instead.
    pub fn copy(&self, position: u64, buf: &mut [u8]) -> bool {
        let Some(start) = usize::try_from(position)
            .ok()
            .filter(|&start| start.checked_add(buf.len()).is_some_and(|end| end <= self.len))
        else {
            return false;
        };
        if self.poisoned.load(Ordering::Acquire) {
            return false;
        }
        // Volatile: the optimizer must neither drop these stores (nothing
        // it can see reads them) nor assume `self` never escapes.
        // SAFETY: the cell's own pointer, on this thread.
        COPYING_FROM.with(|cell| unsafe { std::ptr::write_volatile(cell.as_ptr(), self as *const Mapping) });
        compiler_fence(Ordering::SeqCst);
        // SAFETY: `start..start + len` lies within the mapping, which lives
        // as long as `self`; `buf` is ours and cannot overlap a read-only
        // mapping. A page that faults is replaced by zeros (see the module
        // docs), so the copy always completes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(start), buf.as_mut_ptr(), buf.len()) };
        compiler_fence(Ordering::SeqCst);
        // SAFETY: as above.
        COPYING_FROM.with(|cell| unsafe { std::ptr::write_volatile(cell.as_ptr(), std::ptr::null()) });
        // Another thread's fault on a page this copy read is marked before
        // the zeros are mapped, so a copy that saw them sees the mark.
        fence(Ordering::SeqCst);
        !self.poisoned.load(Ordering::SeqCst)
    }

    /// Whether a page of it could not be read in.
    pub fn poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; nothing borrows it
        // (`copy` borrows `self`).
        unsafe { libc::munmap(self.ptr.cast_mut().cast(), self.len) };
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Installs the SIGBUS handler once; whether it is in place.
fn install_handler() -> bool {
    INSTALL.call_once(|| {
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let Ok(page) = usize::try_from(page) else { return };
        if !page.is_power_of_two() {
            return;
        }
        PAGE.store(page, Ordering::Relaxed);
        // SAFETY: plain sigaction calls with valid pointers.
        unsafe {
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut previous) != 0 {
                return;
            }
            if PREVIOUS.set(previous).is_err() {
                return;
            }
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut()) == 0 {
                INSTALLED.store(true, Ordering::Release);
            }
        }
    });
    INSTALLED.load(Ordering::Acquire)
}

/// The SIGBUS handler: see the module docs. It only reads a thread-local
/// cell and atomics and makes system calls.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the cell's own pointer, on this thread.
    let mapping = COPYING_FROM.with(|cell| unsafe { std::ptr::read_volatile(cell.as_ptr()) });
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let address = unsafe { (*info).si_addr() } as usize;
    if !mapping.is_null() {
        // SAFETY: set by `copy` on this thread from a live `&Mapping`, and
        // cleared before that borrow ends.
        let mapping = unsafe { &*mapping };
        let start = mapping.ptr as usize;
        if address >= start && address - start < mapping.len {
            mapping.poisoned.store(true, Ordering::SeqCst);
            let page = PAGE.load(Ordering::Relaxed);
            let at = address & !(page - 1);
            // SAFETY: replaces one page of the mapping the copy reads,
            // inside it, with anonymous zeros.
            let zeros = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if zeros != libc::MAP_FAILED {
                return;
            }
        }
    }
    // Not ours: hand it on.
    let previous = PREVIOUS.get();
    let handler = previous.map_or(libc::SIG_DFL, |previous| previous.sa_sigaction);
    if handler != libc::SIG_DFL && handler != libc::SIG_IGN {
        let flags = previous.map_or(0, |previous| previous.sa_flags);
        // SAFETY: the previous handler, called as it was registered.
        unsafe {
            if flags & libc::SA_SIGINFO != 0 {
                let handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                    std::mem::transmute(handler);
                handler(signal, info, context);
            } else {
                let handler: extern "C" fn(libc::c_int) = std::mem::transmute(handler);
                handler(signal);
            }
        }
        return;
    }
    // The default action: returning re-runs the faulting access, which now
    // ends the process as if we had never been installed.
    // SAFETY: a plain sigaction call.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn page() -> usize {
        // SAFETY: sysconf has no memory effects.
        usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap()
    }

    #[test]
    fn copies_what_the_file_holds() {
        let page = page();
        let mut file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..3 * page).map(|i| (i * 7 % 251) as u8).collect();
        file.write_all(&data).unwrap();
        let mapping = Mapping::new(file.as_raw_fd(), 4 * page).unwrap();
        let mut buf = vec![0; page + 100];
        assert!(mapping.copy(page as u64 - 50, &mut buf));
        assert_eq!(buf, data[page - 50..2 * page + 50]);
        // Beyond the mapping: refused, nothing touched.
        let mut beyond = vec![9; 10];
        assert!(!mapping.copy(4 * page as u64 - 5, &mut beyond));
        assert!(!mapping.copy(u64::MAX, &mut beyond));
        assert_eq!(beyond, vec![9; 10]);
        assert!(!mapping.poisoned());
    }

    #[test]
    fn a_page_that_cannot_be_read_fails_the_copy_and_poisons_the_mapping() {
        let page = page();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![0x5a; 3 * page]).unwrap();
        let mapping = Mapping::new(file.as_raw_fd(), 3 * page).unwrap();
        let mut buf = vec![0; page];
        assert!(mapping.copy(0, &mut buf));
        // Cut the file behind the mapping's back: its last two pages now
        // raise SIGBUS when touched.
        file.set_len(page as u64).unwrap();
        let mut buf = vec![1; 2 * page];
        let copied = mapping.copy(page as u64 / 2, &mut buf);
        // Read what was copied: a copy into a buffer nobody reads may be
        // optimised away, and with it the fault.
        assert_eq!(buf[..page / 2], vec![0x5a; page / 2], "the page still in the file");
        assert!(!copied, "a copy over a lost page must fail");
        assert!(mapping.poisoned());
        // Poisoned: even the page still in the file is not copied again.
        let mut first = vec![1; 16];
        assert!(!mapping.copy(0, &mut first));
        assert_eq!(first, vec![1; 16]);
        // A second mapping of the same file still works where it can.
        let again = Mapping::new(file.as_raw_fd(), 3 * page).unwrap();
        let mut buf = vec![0; page];
        assert!(again.copy(0, &mut buf));
        assert_eq!(buf, vec![0x5a; page]);
        assert!(!again.copy(2 * page as u64, &mut buf));
    }

    #[test]
    fn mappings_stop_at_the_cap_and_come_back_once_dropped() {
        let page = page();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![3; page]).unwrap();
        let mut ours = Vec::new();
        while let Some(mapping) = Mapping::new(file.as_raw_fd(), page) {
            ours.push(mapping);
            assert!(ours.len() <= MAX_LIVE, "past the cap");
        }
        // The other tests of this process hold a few at most.
        assert!(ours.len() > MAX_LIVE - 64, "stopped at {}", ours.len());
        drop(ours);
        let mapping = Mapping::new(file.as_raw_fd(), page).expect("a slot once dropped");
        let mut buf = vec![0; 8];
        assert!(mapping.copy(0, &mut buf));
        assert_eq!(buf, vec![3; 8]);
    }

    /// Run in a child process by the test below: touches a lost page of a
    /// mapping that is not a [`Mapping`], with the handler installed.
    #[test]
    fn sigbus_elsewhere_child() {
        if std::env::var_os("REWIND_SIGBUS_CHILD").is_none() {
            return;
        }
        let page = page();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![1; 2 * page]).unwrap();
        let ours = Mapping::new(file.as_raw_fd(), 2 * page).unwrap();
        // SAFETY: a fresh mapping of our own file.
        let other = unsafe {
            libc::mmap(std::ptr::null_mut(), 2 * page, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        assert_ne!(other, libc::MAP_FAILED);
        file.set_len(0).unwrap();
        // SAFETY: in bounds of the mapping; the page is gone, so this
        // raises SIGBUS, which must end the process.
        let byte = unsafe { std::ptr::read_volatile(other.cast::<u8>().add(page)) };
        drop(ours);
        panic!("read {byte} from a lost page");
    }

    #[test]
    fn a_sigbus_outside_our_mappings_still_ends_the_process() {
        use std::os::unix::process::ExitStatusExt;
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "mapped::tests::sigbus_elsewhere_child", "--test-threads=1"])
            .env("REWIND_SIGBUS_CHILD", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGBUS), "child ended with {status:?}");
    }
}
