//! Points in time through NBD on a real `rewindd`: every write is a point;
//! `VOL@#SEQ`, `VOL@<time>` and `VOL@-Ns` serve exactly the model's image,
//! read-only; a kill -9 under load loses at most an unflushed suffix; an ext4
//! filesystem "encrypted" in place is intact at the point before.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rewind_tests::raw::{CMD_READ, CMD_WRITE, EPERM, REP_ERR_UNKNOWN, RawClient};
use rewind_tests::{Daemon, SYSTEM_PYTHON, nbd_python, random_bytes, run_ok, write_file};

/// Blocks of the test region; each write fills one 4 KiB block with its own
/// index (u64 little-endian, repeated), so any block read back names the
/// write that produced it.
const BLOCKS: u64 = 256;

/// Python: read the tags of the first BLOCKS blocks of argv[1]; a block that
/// is all zeros is tag 0, a block that is not a repeated tag is -1.
const READ_TAGS: &str = r#"
import sys, struct, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
blocks = int(sys.argv[2])
data = h.pread(blocks * 4096, 0)
out = []
for b in range(blocks):
    block = data[b * 4096:(b + 1) * 4096]
    tag = struct.unpack_from("<Q", block)[0]
    out.append(tag if block == struct.pack("<Q", tag) * 512 else -1)
print(" ".join(map(str, out)))
"#;

fn read_tags(uri: &str) -> Vec<i64> {
    let output = run_ok(
        Command::new(SYSTEM_PYTHON).arg("-c").arg(READ_TAGS).arg(uri).arg(BLOCKS.to_string()),
        Duration::from_secs(60),
    );
    output.split_whitespace().map(|t| t.parse().expect("tag")).collect()
}

/// The model: the image after the first `count` writes of `writes` (block
/// index of write i+1 is writes[i]); tags are write numbers, 0 = never written.
fn model_after(writes: &[u64], count: usize) -> Vec<i64> {
    let mut image = vec![0i64; BLOCKS as usize];
    for (index, &block) in writes.iter().take(count).enumerate() {
        image[block as usize] = index as i64 + 1;
    }
    image
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as i64
}

fn rfc3339(nanos: i64) -> String {
    // Whole seconds are not enough to separate writes; use microseconds.
    let secs = nanos.div_euclid(1_000_000_000);
    let micros = nanos.rem_euclid(1_000_000_000) / 1000;
    let output =
        Command::new("date").args(["-u", "-d", &format!("@{secs}"), "+%Y-%m-%dT%H:%M:%S"]).output().unwrap();
    format!("{}.{micros:06}Z", String::from_utf8_lossy(&output.stdout).trim())
}

/// Writes `count` tagged blocks through the raw client, one at a time, and
/// returns (block of each write, time after each acknowledgement).
fn tagged_writes(client: &mut RawClient, seed: u64, count: usize) -> (Vec<u64>, Vec<i64>) {
    let picks = random_bytes(seed, count * 2);
    let mut blocks = Vec::new();
    let mut times = Vec::new();
    for i in 0..count {
        let block = u64::from(u16::from_le_bytes([picks[2 * i], picks[2 * i + 1]])) % BLOCKS;
        let tag = (i + 1) as u64;
        let data: Vec<u8> = tag.to_le_bytes().repeat(512);
        client.request(0, CMD_WRITE, tag, block * 4096, 4096, &data).unwrap();
        assert_eq!(client.simple_reply().unwrap(), (0, tag));
        blocks.push(block);
        // Record times are kept to the millisecond: space the writes so the
        // instant after each acknowledgement precedes the next write.
        std::thread::sleep(Duration::from_millis(2));
        times.push(now_nanos());
        std::thread::sleep(Duration::from_millis(2));
    }
    (blocks, times)
}

#[test]
fn every_seq_time_and_relative_point_serves_the_model_image() {
    // 120 tagged writes on a fresh volume: write i is seq i. Every seq, the
    // time just after each sampled acknowledgement, and a relative point all
    // read back exactly the model's image; points refuse writes with EPERM;
    // seqs past the head and times before creation are unknown exports
    // whose message names the retained window.
    let daemon = Daemon::start();
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.go("default").unwrap();
    let (writes, times) = tagged_writes(&mut client, 11, 120);

    for seq in 0..=writes.len() {
        let image = read_tags(&daemon.uri(&format!("default@%23{seq}")));
        assert_eq!(image, model_after(&writes, seq), "point #{seq}");
    }
    for &index in &[0usize, 1, 17, 59, 119] {
        let uri = daemon.uri(&format!("default@{}", rfc3339(times[index])));
        assert_eq!(read_tags(&uri), model_after(&writes, index + 1), "time after write {}", index + 1);
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(read_tags(&daemon.uri("default@-1s")), model_after(&writes, writes.len()), "-1s");

    let mut point = RawClient::connect(daemon.nbd).unwrap();
    let (_, flags) = point.go("default@#3").unwrap();
    assert!(flags & 2 != 0, "points export NBD_FLAG_READ_ONLY");
    point.request(0, CMD_WRITE, 1, 0, 512, &[1; 512]).unwrap();
    assert_eq!(point.simple_reply().unwrap(), (EPERM, 1));
    point.request(0, CMD_READ, 2, 0, 512, &[]).unwrap();
    assert_eq!(point.simple_reply().unwrap(), (0, 2));

    for name in ["default@#121".to_string(), format!("default@{}", rfc3339(times[0] - 3_600_000_000_000))] {
        let mut probe = RawClient::connect(daemon.nbd).unwrap();
        let replies = probe.option(rewind_tests::raw::OPT_GO, &RawClient::go_data(name.as_bytes())).unwrap();
        let last = replies.last().unwrap();
        assert_eq!(last.kind, REP_ERR_UNKNOWN, "{name}");
        let message = String::from_utf8_lossy(&last.data);
        assert!(message.contains("retained history is #0"), "{name}: {message}");
    }
}

#[test]
fn points_survive_restart_and_head_keeps_moving() {
    // Points opened after a clean restart are unchanged, and writes after
    // the restart continue the sequence without changing older points.
    let mut daemon = Daemon::start();
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.go("default").unwrap();
    let (mut writes, _) = tagged_writes(&mut client, 5, 40);
    drop(client);
    assert!(daemon.stop().success());
    daemon.restart();
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.go("default").unwrap();
    let (more, _) = tagged_writes(&mut client, 6, 10);
    // The second batch's tags restart at 1; rename them 41..50 in the model
    // by rewriting the blocks' expected tags below.
    writes.extend(more.iter().copied());
    let mut expected = model_after(&writes[..40], 40);
    for (i, &block) in more.iter().enumerate() {
        expected[block as usize] = i as i64 + 1;
    }
    assert_eq!(read_tags(&daemon.uri("default")), expected, "head");
    assert_eq!(read_tags(&daemon.uri("default@%2340")), model_after(&writes[..40], 40), "#40");
    assert_eq!(read_tags(&daemon.uri("default@%2320")), model_after(&writes[..40], 20), "#20");
}

/// Python load for the crash test: tagged 4 KiB writes to random blocks of
/// the region, a flush every 16 writes; prints "W <index> <block>" before
/// each write and "F <count>" after each flush that covered `count` writes.
const CRASH_LOAD: &str = r#"
import sys, random, struct, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
rng = random.Random(int(sys.argv[2])); blocks = int(sys.argv[3])
i = 0
try:
    while True:
        i += 1
        block = rng.randrange(blocks)
        print("W", i, block, flush=True)
        h.pwrite(struct.pack("<Q", i) * 512, block * 4096)
        if i % 16 == 0:
            h.flush()
            print("F", i, flush=True)
        if i >= 200000:
            break
except Exception as e:
    print("E", e, flush=True)
"#;

#[test]
fn kill_9_under_write_load_loses_only_an_unflushed_suffix() {
    // Several trials: a libnbd client writes and flushes; the daemon is
    // killed with SIGKILL mid-stream and restarted. The head must equal the
    // model after some prefix k of the issued writes with k at least the
    // last flushed count, and every sampled point #s <= k must equal the
    // model after s writes; #k+1 must not exist.
    for trial in 0..4u64 {
        let mut daemon = Daemon::start();
        let mut load = Command::new(SYSTEM_PYTHON)
            .arg("-c")
            .arg(CRASH_LOAD)
            .arg(daemon.uri("default"))
            .arg(trial.to_string())
            .arg(BLOCKS.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(400 + 300 * trial));
        daemon.kill9();
        let output = load.wait_timeout_output();
        let mut writes: Vec<u64> = Vec::new();
        let mut flushed = 0usize;
        for line in output.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.first() {
                Some(&"W") => {
                    assert_eq!(fields[1].parse::<usize>().unwrap(), writes.len() + 1);
                    writes.push(fields[2].parse().unwrap());
                }
                Some(&"F") => flushed = fields[1].parse().unwrap(),
                _ => {}
            }
        }
        assert!(flushed >= 16, "trial {trial}: load did not get going ({} writes)", writes.len());

        daemon.restart();
        let head = read_tags(&daemon.uri("default"));
        assert!(!head.contains(&-1), "trial {trial}: torn block served: {head:?}");
        let k = *head.iter().max().unwrap() as usize;
        assert!(k >= flushed, "trial {trial}: flushed write {flushed} lost (head has up to {k})");
        assert!(k <= writes.len());
        assert_eq!(head, model_after(&writes, k), "trial {trial}: head is not a prefix of the writes");

        let mut samples: Vec<usize> = vec![0, 1, flushed, k];
        let picks = random_bytes(trial + 100, 16);
        samples.extend(picks.iter().map(|&p| p as usize * k / 255));
        samples.sort_unstable();
        samples.dedup();
        for seq in samples {
            let image = read_tags(&daemon.uri(&format!("default@%23{seq}")));
            assert_eq!(image, model_after(&writes, seq), "trial {trial}: point #{seq}");
        }
        let mut probe = RawClient::connect(daemon.nbd).unwrap();
        let name = format!("default@#{}", k + 1);
        let replies = probe.option(rewind_tests::raw::OPT_GO, &RawClient::go_data(name.as_bytes())).unwrap();
        assert_eq!(replies.last().unwrap().kind, REP_ERR_UNKNOWN, "trial {trial}: {name} exists");
    }
}

trait WaitOutput {
    fn wait_timeout_output(&mut self) -> String;
}

impl WaitOutput for std::process::Child {
    fn wait_timeout_output(&mut self) -> String {
        use std::io::Read;
        // Drain the pipe while waiting: the load prints more than a pipe holds.
        let mut stdout = self.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            stdout.read_to_string(&mut text).unwrap();
            text
        });
        if rewind_tests::wait_timeout(self, Duration::from_secs(60)).is_none() {
            let _ = self.kill();
            panic!("load did not stop after the daemon died");
        }
        reader.join().unwrap()
    }
}

#[test]
fn ext4_encrypted_in_place_is_intact_at_the_point_before() {
    // The ransomware story: an ext4 image with files is written through NBD;
    // later every file's data blocks are overwritten with random bytes. The
    // point before the attack passes `e2fsck -fn` and every file in it
    // matches the original; the head's files do not.
    let daemon = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("records")).unwrap();
    let mut files = BTreeMap::new();
    for (i, size) in [1000usize, 4096, 70_000, 300_000, 1 << 20].iter().enumerate() {
        let name = format!("records/patient-{i}.dat");
        let data = random_bytes(1000 + i as u64, *size);
        write_file(&tree, &name, &data);
        files.insert(name, data);
    }
    let image = dir.path().join("fs.img");
    run_ok(
        Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096", "-d"]).arg(&tree).arg(&image).arg("32M"),
        Duration::from_secs(60),
    );
    run_ok(
        Command::new("nbdcopy").arg("--flush").arg(&image).arg(daemon.uri("default")),
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(20));
    let before = rfc3339(now_nanos());
    std::thread::sleep(Duration::from_millis(20));

    // "Encrypt" each file's data blocks in place, as ransomware would.
    let mut attack = String::from("import sys, os, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\n");
    for name in files.keys() {
        let blocks = run_ok(
            Command::new("debugfs").arg("-R").arg(format!("blocks /{name}")).arg(&image),
            Duration::from_secs(30),
        );
        for block in blocks.split_whitespace() {
            let block: u64 = block.parse().unwrap();
            attack.push_str(&format!("h.pwrite(os.urandom(4096), {})\n", block * 4096));
        }
    }
    attack.push_str("h.flush()\n");
    nbd_python(&attack, &daemon.uri("default"));

    let restored = dir.path().join("restored.img");
    let attacked = dir.path().join("attacked.img");
    run_ok(
        Command::new("nbdcopy").arg(daemon.uri(&format!("default@{before}"))).arg(&restored),
        Duration::from_secs(60),
    );
    run_ok(Command::new("nbdcopy").arg(daemon.uri("default")).arg(&attacked), Duration::from_secs(60));
    for image in [&restored, &attacked] {
        std::fs::OpenOptions::new().write(true).open(image).unwrap().set_len(32 << 20).unwrap();
    }
    run_ok(Command::new("e2fsck").args(["-f", "-n"]).arg(&restored), Duration::from_secs(60));
    for (name, data) in &files {
        for (image, expect_intact) in [(&restored, true), (&attacked, false)] {
            let out = dir.path().join("out.dat");
            let _ = std::fs::remove_file(&out);
            run_ok(
                Command::new("debugfs").arg("-R").arg(format!("dump /{name} {}", out.display())).arg(image),
                Duration::from_secs(30),
            );
            let got = std::fs::read(&out).unwrap();
            assert_eq!(&got == data, expect_intact, "{name} in {}", image.display());
        }
    }
}

#[test]
fn base_allocation_describes_the_image_at_the_point() {
    // A block written then trimmed: the head maps it as a hole, the point
    // between the two as data; the point after a write-zeroes maps it as
    // zero. `nbdinfo --map` reads base:allocation of each export.
    let daemon = Daemon::start();
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.go("default").unwrap();
    client.request(0, CMD_WRITE, 1, 1 << 20, 65536, &[7; 65536]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (0, 1));
    client.request(0, 4, 2, 1 << 20, 65536, &[]).unwrap(); // NBD_CMD_TRIM
    assert_eq!(client.simple_reply().unwrap(), (0, 2));
    let map = |export: &str| {
        run_ok(Command::new("nbdinfo").arg("--map").arg(daemon.uri(export)), Duration::from_secs(30))
            .lines()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                (fields[0].parse::<u64>().unwrap(), fields[1].parse::<u64>().unwrap(), fields[3].to_string())
            })
            .collect::<Vec<_>>()
    };
    let at_write = map("default@%231");
    assert!(
        at_write.iter().any(|(start, length, kind)| *start <= 1 << 20
            && start + length >= (1 << 20) + 65536
            && kind == "data"),
        "point #1: {at_write:?}"
    );
    let head = map("default");
    assert!(head.iter().all(|(_, _, kind)| kind.contains("hole")), "head after trim: {head:?}");
    let at_creation = map("default@%230");
    assert_eq!(at_creation, vec![(0, 1 << 30, "hole,zero".to_string())]);
}

#[test]
fn named_snapshots_serve_their_image_and_are_listed() {
    // Snapshots taken between tagged writes (through the CLI) serve exactly
    // the model's image at that moment as `VOL@NAME`, read-only, survive a
    // restart, and appear in NBD_OPT_LIST next to the volume.
    let mut daemon = Daemon::start();
    let rewind = |args: &[&str]| {
        run_ok(
            Command::new(rewind_tests::binary("rewind"))
                .arg("--control")
                .arg(daemon.data_dir.join("control.sock"))
                .args(args),
            Duration::from_secs(30),
        )
    };
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.go("default").unwrap();
    let (first, _) = tagged_writes(&mut client, 21, 30);
    rewind(&["snapshot", "create", "default", "monday"]);
    // Later writes carry tags 1..=30 again; the model tracks them apart.
    let (second, _) = tagged_writes(&mut client, 22, 30);
    rewind(&["snapshot", "create", "default", "tuesday"]);
    let monday = model_after(&first, first.len());
    let mut tuesday = monday.clone();
    for (i, &block) in second.iter().enumerate() {
        tuesday[block as usize] = i as i64 + 1;
    }
    assert_eq!(read_tags(&daemon.uri("default@monday")), monday);
    assert_eq!(read_tags(&daemon.uri("default@tuesday")), tuesday);

    let listing = run_ok(Command::new("nbdinfo").arg("--list").arg(daemon.uri("")), Duration::from_secs(30));
    for name in ["\"default\"", "\"default@monday\"", "\"default@tuesday\""] {
        assert!(listing.contains(&format!("export={name}")), "{name} not listed:\n{listing}");
    }
    let mut point = RawClient::connect(daemon.nbd).unwrap();
    let (_, flags) = point.go("default@monday").unwrap();
    assert!(flags & 2 != 0, "snapshots are read-only");
    drop((client, point));

    assert!(daemon.stop().success());
    daemon.restart();
    assert_eq!(read_tags(&daemon.uri("default@monday")), monday, "after restart");
    let mut probe = RawClient::connect(daemon.nbd).unwrap();
    let replies = probe.option(rewind_tests::raw::OPT_GO, &RawClient::go_data(b"default@friday")).unwrap();
    let last = replies.last().unwrap();
    assert_eq!(last.kind, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&last.data).contains("monday"), "the message lists the snapshots");
}
