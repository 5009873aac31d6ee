//! `rewindd` as a process: first start, restart, signals, and the one-line
//! errors a user gets for a taken port or an unwritable data dir.

use std::process::Command;
use std::time::Duration;

use rewind_tests::{Daemon, binary, nbd_python, run};

#[test]
fn restart_serves_the_same_data() {
    // Data written and flushed before a SIGTERM is served after a restart on
    // the same data dir, and SIGTERM exits 0. SIGHUP (the shell that
    // started it went away) is logged and ignored: it used to kill the
    // daemon without a clean shutdown.
    let mut daemon = Daemon::start();
    let uri = daemon.uri("default");
    nbd_python(
        "import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\nh.pwrite(b'rewind' * 1000, 12345)\nh.flush(); h.shutdown()",
        &uri,
    );
    let pid = daemon.child.as_ref().unwrap().id().to_string();
    run(Command::new("kill").args(["-HUP", &pid]), Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    assert!(daemon.is_running(), "SIGHUP stopped the daemon");
    assert!(daemon.log_text().contains("SIGHUP ignored"), "{}", daemon.log_text());
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM exit status {status}");
    daemon.restart();
    let out = nbd_python(
        "import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\nprint(h.pread(6000, 12345) == b'rewind' * 1000)",
        &daemon.uri("default"),
    );
    assert_eq!(out.trim(), "True");
}

#[test]
fn sigterm_under_load_finishes_in_flight_requests_and_exits_zero() {
    // A client streams writes; SIGTERM arrives mid-stream. Every write the
    // client saw acknowledged is on disk after the daemon exits 0 and
    // restarts; the client sees a clean end, not garbage.
    let mut daemon = Daemon::start();
    let uri = daemon.uri("default");
    let script = r#"
import sys, nbd, time
h = nbd.NBD(); h.connect_uri(sys.argv[1])
acked = 0
try:
    for i in range(200000):
        h.pwrite(i.to_bytes(4, "little") * 1024, (i % 4096) * 4096)
        acked = i + 1
        if i == 200:
            print("started", flush=True)
except nbd.Error as e:
    pass
print(acked, flush=True)
"#;
    let child = Command::new(rewind_tests::SYSTEM_PYTHON)
        .arg("-c")
        .arg(script)
        .arg(&uri)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let status = daemon.stop();
    assert!(status.success(), "SIGTERM under load: exit status {status}");
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let acked: u64 = text.lines().last().unwrap().trim().parse().unwrap();
    assert!(acked > 200 && acked < 200000, "load did not overlap the signal: {text}");
    daemon.restart();
    // The last acknowledged write to each of the first blocks is there.
    let check = format!(
        "import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\nacked = {acked}\nbad = 0\nfor block in range(min(acked, 4096)):\n    last = max(i for i in range(block, acked, 4096))\n    if h.pread(4096, block * 4096) != last.to_bytes(4, 'little') * 1024: bad += 1\nprint(bad)"
    );
    assert_eq!(nbd_python(&check, &daemon.uri("default")).trim(), "0");
}

#[test]
fn a_taken_port_is_one_clear_line_and_exit_1() {
    // Starting a second daemon on a busy port fails fast with a message
    // that names the address and what to do.
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let output = run(
        Command::new(binary("rewindd"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--nbd-listen")
            .arg(daemon.nbd.to_string()),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().last().unwrap();
    assert!(line.contains(&daemon.nbd.to_string()) && line.contains("--nbd-listen"), "{stderr}");
}

#[test]
fn a_data_dir_inside_another_daemons_is_refused() {
    // A second daemon nested in a running one's data dir (its volumes/)
    // would appear there as a volume and be removed with it: refused.
    let daemon = Daemon::start();
    let output = run(
        Command::new(binary("rewindd"))
            .arg("--data-dir")
            .arg(daemon.data_dir.join("volumes"))
            .arg("--nbd-listen")
            .arg(format!("127.0.0.1:{}", rewind_tests::free_port())),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is inside the data dir") && stderr.contains("of another rewindd"), "{stderr}");
    assert!(!daemon.data_dir.join("volumes/LOCK").exists(), "nothing made");
}

#[test]
fn an_unwritable_data_dir_is_one_clear_line_and_exit_1() {
    // A data dir under a regular file cannot be created: say which and stop.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let output = run(
        Command::new(binary("rewindd"))
            .arg("--data-dir")
            .arg(file.join("data"))
            .arg("--nbd-listen")
            .arg(format!("127.0.0.1:{}", rewind_tests::free_port())),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("data dir") && stderr.contains("not-a-dir"), "{stderr}");
}

#[test]
fn print_config_shows_defaults_file_values_and_flag_overrides() {
    // Defaults, then the TOML file, then flags: --print-config shows the
    // effective result and a bad file is a usage error (exit 2).
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "data_dir = \"/srv/rewind\"\nnbd_listen = \"127.0.0.1:11000\"\n[nbd]\nidle_poll_us = 20\n",
    )
    .unwrap();
    let output = run(
        Command::new(binary("rewindd")).arg("--config").arg(&config).args([
            "--nbd-listen",
            "127.0.0.1:12000",
            "--print-config",
        ]),
        Duration::from_secs(20),
    );
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("data_dir = \"/srv/rewind\""), "{text}");
    assert!(text.contains("nbd_listen = \"127.0.0.1:12000\""), "{text}");
    assert!(text.contains("control = \"/srv/rewind/control.sock\""), "{text}");
    assert!(text.contains("replication_listen = \"127.0.0.1:10810\""), "{text}");
    assert!(text.contains("idle_poll_us = 20"), "{text}");

    std::fs::write(&config, "nbd_listen = 5\n").unwrap();
    let output = run(
        Command::new(binary("rewindd")).arg("--config").arg(&config).arg("--print-config"),
        Duration::from_secs(20),
    );
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_full_disk_turns_writes_into_enospc_and_loses_nothing_acknowledged() {
    // The daemon runs with a 40 MiB file-size limit (RLIMIT_FSIZE: journal
    // writes past it fail with EFBIG, as on a full disk). A client writes
    // 1 MiB blocks, flushing every 4, until a write fails: the error is
    // ENOSPC and the daemon keeps running and serving reads. A small write
    // afterwards either fails with ENOSPC too or is acknowledged (if the
    // journal's reserved space still holds it). After a restart without the
    // limit every acknowledged write reads back, flushed or not, and writes
    // work again.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_wrapped(&data, &[], &["prlimit", "--fsize=41943040"]);
    let script = r#"
import sys, errno, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
acked = 0
failed = None
for i in range(200):
    try:
        h.pwrite(bytes([i % 251 + 1]) * (1 << 20), i << 20)
        acked = i + 1
        if acked % 4 == 0:
            h.flush()
    except nbd.Error as e:
        failed = e.errnum
        break
assert failed == errno.ENOSPC, failed
small = 0
try:
    h.pwrite(b"x" * 4096, 190 << 20)
    small = 1
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
assert h.pread(4096, 0) == b"\x01" * 4096
print(acked, small)
"#;
    let output = nbd_python(script, &daemon.uri("default"));
    let mut fields = output.split_whitespace().map(|f| f.parse::<usize>().unwrap());
    let (acked, small) = (fields.next().unwrap(), fields.next().unwrap());
    assert!((10..40).contains(&acked), "{acked} MiB acknowledged before ENOSPC");
    assert!(daemon.is_running(), "the daemon died on a full disk");
    let _ = daemon.stop();
    daemon.wrapper.clear();
    daemon.restart();
    let check = format!(
        "import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         bad = [i for i in range({acked}) if h.pread(1 << 20, i << 20) != bytes([i % 251 + 1]) * (1 << 20)]\n\
         small = h.pread(4096, 190 << 20) == b'x' * 4096\n\
         h.pwrite(b'y' * 4096, 0); h.flush()\n\
         print(len(bad), int(small), h.pread(4096, 0) == b'y' * 4096)"
    );
    assert_eq!(nbd_python(&check, &daemon.uri("default")).trim(), format!("0 {small} True"));
}
