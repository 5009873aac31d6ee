//! Real NBD clients against a real `rewindd`: every client named in issue 2
//! negotiates, reads and writes, and what it reads back is what was written.

use std::process::Command;
use std::time::Duration;

use rewind_tests::{Daemon, nbd_python, random_bytes, run, run_ok, write_file};

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn nbdinfo_lists_describes_and_maps_the_default_volume() {
    // A fresh data dir serves `default` (1 GiB); nbdinfo's list, JSON and
    // map views agree with what the daemon created and what we write.
    let daemon = Daemon::start();
    let listing = run_ok(Command::new("nbdinfo").arg("--list").arg(daemon.uri("")), MINUTE);
    assert!(listing.contains("export=\"default\""), "{listing}");

    let json = run_ok(Command::new("nbdinfo").arg("--json").arg(daemon.uri("default")), MINUTE);
    let info: serde_json::Value = serde_json::from_str(&json).expect("nbdinfo JSON");
    let export = &info["exports"][0];
    assert_eq!(export["export-size"], 1u64 << 30);
    assert_eq!(export["is_read_only"], false);
    assert_eq!(export["can_multi_conn"], true);
    assert_eq!(export["can_flush"], true);
    assert_eq!(export["can_trim"], true);
    assert_eq!(export["can_zero"], true);
    assert_eq!(info["protocol"], "newstyle-fixed");
    assert!(export["contexts"].as_array().unwrap().iter().any(|c| c == "base:allocation"));

    // Unwritten: one hole. After a write at 1 MiB: data there, holes around.
    let map = run_ok(Command::new("nbdinfo").arg("--map").arg(daemon.uri("default")), MINUTE);
    assert!(map.contains("hole"), "{map}");
    run_ok(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x5a 1M 64k"]).arg(daemon.uri("default")),
        MINUTE,
    );
    let map = run_ok(Command::new("nbdinfo").arg("--map").arg(daemon.uri("default")), MINUTE);
    let data_line = map.lines().find(|l| l.contains("data")).unwrap_or_else(|| panic!("{map}"));
    let fields: Vec<&str> = data_line.split_whitespace().collect();
    let start: u64 = fields[0].parse().unwrap();
    assert!(start <= 1 << 20 && start + fields[1].parse::<u64>().unwrap() >= (1 << 20) + 65536, "{map}");
}

#[test]
fn qemu_img_info_and_convert_round_trip() {
    // qemu-img sees the right size, and a raw image converted into the
    // export and back out is byte-identical.
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let info =
        run_ok(Command::new("qemu-img").args(["info", "--output=json"]).arg(daemon.uri("default")), MINUTE);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["virtual-size"], 1u64 << 30);

    let data = random_bytes(7, 8 << 20);
    let source = write_file(dir.path(), "source.raw", &data);
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw", "-O", "raw"])
            .arg(&source)
            .arg(daemon.uri("default")),
        MINUTE,
    );
    let copy = dir.path().join("copy.raw");
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(daemon.uri("default"))
            .arg(&copy),
        MINUTE,
    );
    let back = std::fs::read(&copy).unwrap();
    assert_eq!(back.len(), 1 << 30);
    assert!(back[..data.len()] == data[..], "converted data differs");
    assert!(back[data.len()..].iter().all(|&b| b == 0), "unwritten tail is not zero");
}

#[test]
fn qemu_io_patterns_zeroes_discard_flush_and_aio() {
    // qemu-io's own pattern checks (`read -P`) fail the command on mismatch.
    let daemon = Daemon::start();
    let commands = [
        "write -P 0xab 0 1M",
        "read -P 0xab 0 1M",
        "write -P 0x11 4095 3",
        "read -P 0x11 4095 3",
        "read -P 0xab 4098 100",
        "write -z 64k 128k",
        "read -P 0 64k 128k",
        "read -P 0xab 192k 64k",
        "discard 256k 256k",
        "write -P 0x22 256k 4k",
        "read -P 0x22 256k 4k",
        "flush",
        "aio_write -P 0x33 2M 64k",
        "aio_write -P 0x44 3M 64k",
        "aio_flush",
        "aio_read -P 0x33 2M 64k",
        "aio_read -P 0x44 3M 64k",
        "aio_flush",
        "write -f -P 0x55 4M 4k",
        "read -P 0x55 4M 4k",
    ];
    let mut command = Command::new("qemu-io");
    command.args(["-f", "raw"]);
    for c in commands {
        command.arg("-c").arg(c);
    }
    let output = run_ok(command.arg(daemon.uri("default")), MINUTE);
    assert!(!output.contains("Pattern verification failed"), "{output}");
    // 7 synchronous reads and 2 aio reads, each reporting success.
    assert_eq!(output.lines().filter(|l| l.starts_with("read ")).count(), 9, "{output}");
}

#[test]
fn nbdcopy_with_four_connections_round_trips_64_mib() {
    // nbdcopy splits the copy over 4 connections (multi-conn); the image read
    // back over 4 connections is byte-identical to the random source.
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let data = random_bytes(64, 64 << 20);
    let source = write_file(dir.path(), "source.raw", &data);
    run_ok(
        Command::new("nbdcopy").arg("--connections=4").arg("--flush").arg(&source).arg(daemon.uri("default")),
        MINUTE * 2,
    );
    let copy = dir.path().join("copy.raw");
    std::fs::File::create(&copy).unwrap().set_len(1 << 30).unwrap();
    run_ok(Command::new("nbdcopy").arg("--connections=4").arg(daemon.uri("default")).arg(&copy), MINUTE * 2);
    let back = std::fs::read(&copy).unwrap();
    assert!(back[..data.len()] == data[..], "nbdcopy round trip differs");
}

#[test]
fn nbdsh_old_handshake_simple_replies_block_status_and_errors() {
    // libnbd with the options real clients vary: EXPORT_NAME-only handshake,
    // simple replies, block status with REQ_ONE, EINVAL past the end.
    let daemon = Daemon::start();
    let script = r#"
import sys, errno, nbd
uri = sys.argv[1]

# 1. Oldstyle-fixed negotiation off: plain newstyle, NBD_OPT_EXPORT_NAME only.
h = nbd.NBD()
h.set_handshake_flags(0)
h.set_request_structured_replies(False)
h.connect_uri(uri)
assert h.get_protocol() == "newstyle", h.get_protocol()
assert h.get_size() == 1 << 30
h.pwrite(b"\x7f" * 4096, 8192)
assert h.pread(4096, 8192) == b"\x7f" * 4096
h.shutdown()

# 2. Fixed newstyle without structured replies: simple replies only.
h = nbd.NBD()
h.set_request_structured_replies(False)
h.set_strict_mode(0)      # let out-of-range requests reach the server
h.connect_uri(uri)
assert not h.get_structured_replies_negotiated()
assert h.pread(4096, 8192) == b"\x7f" * 4096
try:
    h.pread(4096, (1 << 30) - 1024)
    raise SystemExit("read past the end succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
h.shutdown()

# 3. Structured replies and base:allocation with REQ_ONE.
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.set_strict_mode(0)
h.connect_uri(uri)
assert h.get_structured_replies_negotiated()
assert h.can_meta_context("base:allocation")
seen = []
def cb(metacontext, offset, entries, err):
    seen.append((metacontext, offset, list(entries)))
    return 0
h.block_status(1 << 20, 8192, cb, nbd.CMD_FLAG_REQ_ONE)
assert len(seen) == 1 and seen[0][0] == "base:allocation", seen
entries = seen[0][2]
assert len(entries) == 2, entries            # exactly one (length, flags) pair
assert entries[0] > 0 and entries[0] <= 1 << 20, entries
assert entries[1] & 1 == 0, entries          # the write at 8 KiB is data, not a hole
seen.clear()
h.block_status(1 << 20, 64 << 20, cb)        # far from any write: a hole reading as zeros
assert seen[0][2][1] == 3, seen
try:
    h.pread(512, 1 << 30)
    raise SystemExit("read past the end succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
try:
    h.block_status(4096, (1 << 30) - 512, cb)
    raise SystemExit("block status past the end succeeded")
except nbd.Error as e:
    assert e.errnum == errno.EINVAL, e
h.shutdown()
print("ok")
"#;
    assert_eq!(nbd_python(script, &daemon.uri("default")).trim(), "ok");
}

#[test]
fn fio_nbd_engine_verifies_crc32c() {
    // fio writes random blocks with crc32c headers through libnbd at QD16,
    // then reads them back and verifies every block.
    let daemon = Daemon::start();
    let output = run(
        Command::new("fio").args([
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={}", daemon.uri("default")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=64M",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            // No verify state file left in the working directory.
            "--verify_state_save=0",
            "--output-format=json",
        ]),
        MINUTE * 3,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "fio failed: {stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    let job = &json["jobs"][0];
    assert_eq!(job["error"], 0);
    assert_eq!(job["write"]["io_bytes"], 64u64 << 20);
    assert_eq!(job["read"]["io_bytes"], 64u64 << 20, "verify pass did not read everything back");
}

#[test]
fn structured_reads_send_unwritten_ranges_as_holes() {
    // libnbd's pread_structured sees each chunk: an unwritten 1 MiB range
    // arrives as OFFSET_HOLE chunks (no data on the wire), a half-written
    // one as data plus hole, and DF forces a single data chunk.
    let daemon = Daemon::start();
    let script = r#"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b"\x42" * 65536, 8 << 20)
def chunks(count, offset, flags=0):
    seen = []
    def cb(buf, off, status, err):
        seen.append(("hole" if status == nbd.READ_HOLE else "data", off, len(buf)))
        return 0
    data = h.pread_structured(count, offset, cb, flags)
    return seen, data
seen, data = chunks(1 << 20, 16 << 20)
assert data == bytes(1 << 20) and all(kind == "hole" for kind, _, _ in seen), seen
seen, data = chunks(1 << 20, (8 << 20) - (512 << 10))
kinds = sorted({kind for kind, _, _ in seen})
assert kinds == ["data", "hole"], seen
assert data[(512 << 10):(512 << 10) + 65536] == b"\x42" * 65536
seen, data = chunks(65536, 16 << 20, nbd.CMD_FLAG_DF)
assert [kind for kind, _, _ in seen] == ["data"], seen
print("ok")
"#;
    assert_eq!(nbd_python(script, &daemon.uri("default")).trim(), "ok");
}

#[test]
fn block_status_answers_at_most_a_gibibyte_and_clients_ask_for_the_rest() {
    // A 28-byte request may ask about 4 GiB: the daemon describes at most
    // 1 GiB per reply (the spec allows less than asked), so one request
    // cannot make it plan a million pieces; nbdinfo --map still covers the
    // whole volume by asking again.
    let daemon = Daemon::start();
    let control = daemon.data_dir.join("control.sock");
    run_ok(
        Command::new(rewind_tests::binary("rewind"))
            .arg("--control")
            .arg(&control)
            .args(["volume", "create", "big", "--size", "3GiB"]),
        MINUTE,
    );
    let script = r#"
import nbd, sys
h = nbd.NBD()
h.add_meta_context("base:allocation")
h.connect_uri(sys.argv[1])
seen = []
def cb(metacontext, offset, entries, err):
    seen.append(sum(entries[0::2]))
    return 0
h.block_status(3 << 30, 0, cb)
print(seen[0])
"#;
    assert_eq!(nbd_python(script, &daemon.uri("big")).trim(), (1u64 << 30).to_string());
    let map = run_ok(Command::new("nbdinfo").arg("--map").arg(daemon.uri("big")), MINUTE);
    let covered: u64 =
        map.lines().map(|line| line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(covered, 3 << 30, "{map}");
}
