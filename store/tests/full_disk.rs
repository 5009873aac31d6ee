//! A full disk on a real filesystem, as in the user trial that found the
//! bug (the data dir on a 40 MiB tmpfs; 4 KiB writes with a flush every
//! 100): a write past the space must fail at write time with ENOSPC, leave
//! the volume writable, and every write acknowledged before it, flushed or
//! not, must be there after a clean shutdown and a reopen.
//!
//! The scenario runs in a child process (this test binary again, with
//! `REWIND_FULL_DISK_DIR` set, running only `full_disk_child`): under a
//! file size limit (`RLIMIT_FSIZE`; the journal's fallocate then fails with
//! EFBIG, which needs no root), and, when the test may mount (root), on a
//! 40 MiB tmpfs mounted in a private mount namespace, where it also frees
//! space and checks that writes go through again without a reopen.

use std::path::{Path, PathBuf};
use std::process::Command;

use store::{Store, StoreOptions, Volume};

/// The data dir of the child's scenario.
const DIR_ENV: &str = "REWIND_FULL_DISK_DIR";
/// Set when the child may free space (a ballast file on the same disk).
const BALLAST_ENV: &str = "REWIND_FULL_DISK_BALLAST";
const BLOCK: u64 = 4096;
const VOLUME_SIZE: u64 = 256 << 20;
/// Refused writes the scenario tries before it stops.
const REFUSALS: usize = 20;

/// Block `i`'s bytes: its number and position in every word, never zero.
fn block(i: u64) -> Vec<u8> {
    (0..BLOCK / 8).flat_map(|word| (1 << 63 | i << 16 | word).to_le_bytes()).collect()
}

/// Every acknowledged block reads its data; every refused one reads zeros.
fn check(volume: &Volume, acknowledged: &[u64], refused: &[u64], when: &str) {
    let mut buf = vec![0; BLOCK as usize];
    for &i in acknowledged {
        volume.read(i * BLOCK, &mut buf).unwrap();
        assert!(buf == block(i), "{when}: acknowledged block {i} lost");
    }
    for &i in refused {
        volume.read(i * BLOCK, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "{when}: refused block {i} was written");
    }
}

fn reopen(dir: &Path, options: &StoreOptions) -> (Store, std::sync::Arc<Volume>) {
    let store = Store::open(dir, options.clone()).unwrap();
    let volume = store.volume("v").unwrap();
    (store, volume)
}

/// The scenario, in the child: fill the disk with 4 KiB writes (a flush
/// every 100) until `REFUSALS` writes were refused, then check.
fn fill_until_full(dir: &Path, ballast: Option<&Path>) {
    // The daemon's options: commit and retention threads running.
    let options = StoreOptions::default();
    let mut acknowledged = Vec::new();
    let mut refused = Vec::new();
    let store = Store::open(dir, options.clone()).unwrap();
    let volume = store.create_volume("v", VOLUME_SIZE).unwrap();
    for i in 0..VOLUME_SIZE / BLOCK {
        match volume.write(i * BLOCK, &block(i), false) {
            Ok(_) => {
                assert!(
                    refused.is_empty(),
                    "block {i} acknowledged after a refusal with the disk still full"
                );
                acknowledged.push(i);
            }
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "block {i}: {error}");
                assert!(error.is_retryable(), "block {i}: {error}");
                assert!(volume.poison().is_none(), "a refusal poisoned the volume");
                refused.push(i);
                if refused.len() == REFUSALS {
                    break;
                }
            }
        }
        if (i + 1) % 100 == 0 {
            volume.flush().expect("flushes succeed while the disk is full");
        }
    }
    assert_eq!(refused.len(), REFUSALS, "the disk never filled");
    check(&volume, &acknowledged, &refused, "full");
    let stats = volume.stats();
    assert_eq!(stats.no_space_refusals, REFUSALS as u64);
    println!(
        "{} writes acknowledged, then {} refused with ENOSPC; journal {} bytes; {} unflushed",
        acknowledged.len(),
        refused.len(),
        stats.journal_bytes,
        stats.head_seq - stats.durable_seq
    );
    // Shutdown makes every acknowledged write durable: on the full disk too.
    store.close().expect("shutdown flush on a full disk");
    drop(volume);
    drop(store);
    let (store, volume) = reopen(dir, &options);
    check(&volume, &acknowledged, &refused, "reopened");
    let Some(ballast) = ballast else { return };
    // Space freed: the same volume takes the refused writes, no reopen.
    std::fs::remove_file(ballast).unwrap();
    for &i in &refused {
        volume.write(i * BLOCK, &block(i), false).expect("a write after space was freed");
    }
    store.close().unwrap();
    drop(volume);
    drop(store);
    let (_store, volume) = reopen(dir, &options);
    acknowledged.extend(&refused);
    check(&volume, &acknowledged, &[], "after freeing space");
    println!("space freed: the {} refused writes went through", refused.len());
}

/// Runs the scenario when started as the child of one of the tests below
/// (it does nothing in a normal test run).
#[test]
fn full_disk_child() {
    let Some(dir) = std::env::var_os(DIR_ENV).map(PathBuf::from) else {
        return;
    };
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    println!("{}", limits.lines().find(|line| line.starts_with("Max file size")).unwrap_or_default());
    let ballast = std::env::var_os(BALLAST_ENV).map(|_| {
        // Space to free later, taken before the store fills the disk.
        let path = dir.join("ballast");
        std::fs::write(&path, vec![0xBB; 1 << 20]).unwrap();
        path
    });
    let data = dir.join("data");
    fill_until_full(&data, ballast.as_deref());
}

/// Runs `script` with `sh -c`, `$0` being this test binary and `$1` the
/// data dir; returns (exit code, output).
fn run_child(script: &str, program: &str, dir: &Path, ballast: bool) -> (Option<i32>, String) {
    let exe = std::env::current_exe().unwrap();
    let mut command = Command::new(program);
    if program == "unshare" {
        command.args(["--mount", "--propagation", "private", "sh"]);
    }
    command.arg("-c").arg(script).arg(&exe).arg(dir).env(DIR_ENV, dir);
    if ballast {
        command.env(BALLAST_ENV, "1");
    }
    let output = command.output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

const CHILD: &str = "exec \"$0\" --exact full_disk_child --nocapture --test-threads=1";

/// Past a file size limit (`ulimit -f`: 20 MiB with dash's 512-byte
/// units, 40 MiB with bash's), the journal's writes are refused with ENOSPC
/// at write time and nothing acknowledged is lost (SIGXFSZ ignored, as a
/// daemon would).
#[test]
fn file_size_limit_refuses_writes_at_write_time() {
    let dir = tempfile::tempdir().unwrap();
    let script = format!("trap '' XFSZ; ulimit -f 40960 && {CHILD}");
    let (code, output) = run_child(&script, "sh", dir.path(), false);
    println!("{output}");
    assert_eq!(code, Some(0), "child failed:\n{output}");
    assert!(output.contains("refused with ENOSPC"), "the child did not run the scenario:\n{output}");
}

/// The user's trial: a 40 MiB tmpfs (mounted in a private mount
/// namespace; skipped where that is not allowed) fills up; writes past it
/// are refused with ENOSPC, every acknowledged one survives a shutdown and
/// a reopen, and once space is freed the refused writes go through.
#[test]
fn small_tmpfs_refuses_writes_at_write_time() {
    let probe = Command::new("unshare").args(["--mount", "--propagation", "private", "true"]).output();
    if !probe.is_ok_and(|output| output.status.success()) {
        println!("skipped: cannot make a mount namespace here (needs root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = format!("mount -t tmpfs -o size=40m rewind-full-disk \"$1\" || exit 77; {CHILD}");
    let (code, output) = run_child(&script, "unshare", dir.path(), true);
    println!("{output}");
    if code == Some(77) {
        println!("skipped: cannot mount a tmpfs here");
        return;
    }
    assert_eq!(code, Some(0), "child failed:\n{output}");
    assert!(output.contains("refused writes went through"), "the child did not run the scenario:\n{output}");
}
