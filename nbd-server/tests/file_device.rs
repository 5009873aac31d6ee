//! Files served in-process, driven by real NBD clients: large reads of
//! cached bytes go out with sendfile, the others through `read`; every reply
//! must carry the file's bytes, in order with the rest of the stream.

use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nbd_server::bulk::{BulkWay, WINDOW_BYTES};
use nbd_server::device::ReadResult;
use nbd_server::file::LARGE_READ;
use nbd_server::{
    BlockDevice, Catalog, DeviceError, Errno, ExportInfo, Extent, FileDevice, FileSlice, IoBuffer, Server,
    ServerConfig, SingleExport, ZeroFlags,
};
use rewind_tests::{SYSTEM_PYTHON, nbd_python, random_bytes, run, run_ok, write_file};

const SIZE: usize = 32 << 20;

fn info(size: u64, read_only: bool) -> ExportInfo {
    ExportInfo {
        name: "file".into(),
        description: String::new(),
        size,
        read_only,
        multi_conn: true,
        preferred_block: 4096,
        fast_zero: false,
    }
}

/// Serves `catalog` on a loopback port, on its own runtime thread; it stops
/// when the returned sender is dropped.
fn serve<C: Catalog>(catalog: C) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    serve_with(catalog, ServerConfig::default())
}

/// [`serve`] with limits of the test's choosing.
fn serve_with<C: Catalog>(
    catalog: C,
    config: ServerConfig,
) -> (SocketAddr, tokio::sync::watch::Sender<bool>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        runtime.expect("runtime").block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            Server::new(Arc::new(catalog), config).serve(listener, stopped).await;
        });
    });
    (addr, stop)
}

fn serve_file(path: &Path) -> (SocketAddr, Arc<FileDevice>, tokio::sync::watch::Sender<bool>) {
    let file = OpenOptions::new().read(true).write(true).open(path).expect("open file");
    let device = Arc::new(FileDevice::new(file).expect("file device"));
    let (addr, stop) = serve(SingleExport { info: info(device.size(), false), device: device.clone() });
    (addr, device, stop)
}

/// The [`BlockDevice`] methods of a read-only test device of data only,
/// besides its reads: writes refused, flushes trivial, every extent data.
macro_rules! read_only_device {
    () => {
        async fn write(&self, _offset: u64, _data: IoBuffer, _fua: bool) -> Result<(), DeviceError> {
            Err(DeviceError::new(Errno::Perm, "read-only"))
        }

        async fn flush(&self) -> Result<(), DeviceError> {
            Ok(())
        }

        async fn trim(&self, _offset: u64, _length: u64, _fua: bool) -> Result<(), DeviceError> {
            Err(DeviceError::new(Errno::Perm, "read-only"))
        }

        async fn write_zeroes(
            &self,
            _offset: u64,
            _length: u64,
            _flags: ZeroFlags,
        ) -> Result<(), DeviceError> {
            Err(DeviceError::new(Errno::Perm, "read-only"))
        }

        async fn block_status(&self, _offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
            Ok(vec![Extent { length, hole: false, zero: false }])
        }
    };
}

/// A test device that offers every large read from its file in place,
/// cached or not. Without `copied` it fails if the server asks it to read
/// one instead: replies that carry the right bytes prove they came through
/// sendfile. With it, such reads are read and counted. Read-only.
#[derive(Clone, Debug, Default)]
struct InPlaceOnly {
    file: Option<Arc<File>>,
    /// Large reads the server asked to have in place.
    offered: Arc<AtomicUsize>,
    copied: Option<Arc<AtomicUsize>>,
}

impl InPlaceOnly {
    fn new(file: Arc<File>) -> InPlaceOnly {
        InPlaceOnly { file: Some(file), ..InPlaceOnly::default() }
    }

    fn file(&self) -> &Arc<File> {
        self.file.as_ref().expect("a file")
    }
}

impl BlockDevice for InPlaceOnly {
    /// In two slices, so replies of several chunks are covered too.
    fn read_in_place(&self, offset: u64, length: u64) -> Option<Vec<FileSlice>> {
        let length = usize::try_from(length).ok().filter(|&length| length >= LARGE_READ)?;
        self.offered.fetch_add(1, Ordering::Relaxed);
        let file = self.file();
        let first = length / 3;
        Some(vec![
            FileSlice { file: file.clone(), offset, length: first },
            FileSlice { file: file.clone(), offset: offset + first as u64, length: length - first },
        ])
    }

    async fn read(&self, offset: u64, mut buffer: IoBuffer, start: usize) -> ReadResult {
        if buffer.len() - start >= LARGE_READ {
            let Some(copied) = &self.copied else {
                return Err(DeviceError::new(Errno::Io, "a large read reached read()"));
            };
            copied.fetch_add(1, Ordering::Relaxed);
        }
        self.file().read_exact_at(&mut buffer[start..], offset)?;
        Ok((buffer, Vec::new()))
    }

    read_only_device!();
}

/// A directory on the file system the build uses (a disk here: tmpfs pages
/// cannot be evicted, and the first test evicts).
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

/// Drops the file's clean pages from the page cache.
fn evict(path: &Path) {
    let script = "import os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\nos.fsync(fd)\n\
                  os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)";
    run_ok(Command::new(SYSTEM_PYTHON).arg("-c").arg(script).arg(path), Duration::from_secs(30));
}

fn uri(addr: SocketAddr) -> String {
    format!("nbd://{addr}/file")
}

fn nbdcopy_to(addr: SocketAddr, to: &Path) {
    run_ok(
        Command::new("nbdcopy").args(["--connections=4", "--request-size=1048576", &uri(addr)]).arg(to),
        Duration::from_secs(60),
    );
}

/// Many reads in flight, large and small mixed, at unaligned offsets, with
/// structured replies and then simple ones; each reply must hold its range.
const MIXED_READS: &str = r#"
import nbd, random, sys, time
path = sys.argv[2]
data = open(path, "rb").read()
for structured in (True, False):
    h = nbd.NBD()
    h.set_request_structured_replies(structured)
    h.connect_uri(sys.argv[1])
    assert h.get_structured_replies_negotiated() == structured
    rng = random.Random(5)
    pending = []
    def check(entry):
        cookie, buf, offset, length = entry
        while not h.aio_command_completed(cookie):
            h.poll(-1)
        assert buf.to_bytearray() == data[offset:offset + length], (offset, length)
    for i in range(400):
        length = rng.choice([512, 4096, 65536, 131072, 1 << 20, 3 << 20])
        offset = rng.randrange(0, len(data) - length)
        buf = nbd.Buffer(length)
        pending.append((h.aio_pread(buf, offset), buf, offset, length))
        if len(pending) >= 16:
            check(pending.pop(0))
    for entry in pending:
        check(entry)
    h.shutdown()
    # Past the server's bulk-read window: the next connection reads alone.
    time.sleep(0.1)
print("ok")
"#;

fn mixed_reads(addr: SocketAddr, path: &Path) {
    let out = run_ok(
        Command::new(SYSTEM_PYTHON).arg("-c").arg(MIXED_READS).arg(uri(addr)).arg(path),
        Duration::from_secs(120),
    );
    assert_eq!(out.trim(), "ok");
}

#[test]
fn large_reads_are_sent_from_the_page_cache_when_cached_and_read_when_not() {
    let dir = scratch();
    let data = random_bytes(7, SIZE);
    let path = write_file(dir.path(), "disk.raw", &data);
    let (addr, device, _stop) = serve_file(&path);

    // Cached: the device offers the bytes in place for large reads inside
    // the file only.
    std::fs::read(&path).expect("read file into the page cache");
    assert!(device.read_in_place(1 << 20, 1 << 20).is_some(), "cached 1 MiB read not offered in place");
    assert!(device.read_in_place(1 << 20, 4096).is_none(), "a small read must go through read()");
    assert!(device.read_in_place(SIZE as u64 - 4096, 1 << 20).is_none(), "a read past the file's end");
    let copy = dir.path().join("copy.raw");
    nbdcopy_to(addr, &copy);
    assert!(std::fs::read(&copy).expect("copy") == data, "nbdcopy from cached pages differs");
    mixed_reads(addr, &path);

    // Evicted: the same reads go through read() and give the same bytes.
    evict(&path);
    assert!(device.read_in_place(1 << 20, 1 << 20).is_none(), "evicted bytes offered in place");
    std::fs::remove_file(&copy).expect("remove copy");
    nbdcopy_to(addr, &copy);
    assert!(std::fs::read(&copy).expect("copy") == data, "nbdcopy from evicted pages differs");

    // Writes land in the file, and reads of them are served.
    let out = nbd_python(
        "import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
         h.pwrite(b'\\x5a' * (2 << 20), 5 << 20)\nh.flush()\n\
         assert h.pread(2 << 20, 5 << 20) == b'\\x5a' * (2 << 20)\nprint('ok')",
        &uri(addr),
    );
    assert_eq!(out.trim(), "ok");
    let file = std::fs::read(&path).expect("file");
    assert!(file[5 << 20..7 << 20].iter().all(|&byte| byte == 0x5a), "write not in the file");
}

#[test]
fn sendfile_replies_keep_their_place_in_the_stream_with_simple_and_structured_replies() {
    let dir = scratch();
    let data = random_bytes(11, SIZE);
    let path = write_file(dir.path(), "disk.raw", &data);
    let file = Arc::new(File::open(&path).expect("open"));
    // Every large read goes out with sendfile (read() would fail it), and
    // 16 reads of up to 3 MiB in flight overrun the socket's buffer, so
    // sends are partial and wait for room.
    let (addr, _stop) = serve(SingleExport { info: info(SIZE as u64, true), device: InPlaceOnly::new(file) });
    mixed_reads(addr, &path);
}

/// Sendfile only while one connection reads in bulk: a single nbdcopy
/// connection gets every large read in place; several reading at once get
/// them copied (the server asks the device for no in-place bytes while
/// another connection read in bulk within the window), and every byte is
/// right either way.
#[test]
fn large_reads_go_in_place_only_while_one_connection_reads_in_bulk() {
    // nbdcopy hands its threads 128 MiB at a time: two of them read at once
    // only from a 256 MiB disk up.
    const BIG: usize = 256 << 20;
    let dir = scratch();
    let data = random_bytes(17, BIG);
    let path = write_file(dir.path(), "disk.raw", &data);
    let copied = Arc::new(AtomicUsize::new(0));
    let device = InPlaceOnly {
        copied: Some(copied.clone()),
        ..InPlaceOnly::new(Arc::new(File::open(&path).expect("open")))
    };
    let offered = device.offered.clone();
    let (addr, _stop) = serve(SingleExport { info: info(BIG as u64, true), device });
    let requests = BIG / (1 << 20);
    for connections in [1, 4] {
        offered.store(0, Ordering::Relaxed);
        copied.store(0, Ordering::Relaxed);
        let copy = dir.path().join(format!("copy-{connections}.raw"));
        run_ok(
            Command::new("nbdcopy")
                .arg(format!("--connections={connections}"))
                .args(["--request-size=1048576", &uri(addr)])
                .arg(&copy),
            Duration::from_secs(60),
        );
        assert!(std::fs::read(&copy).expect("copy") == data, "{connections} connections: copy differs");
        let (offered, copied) = (offered.load(Ordering::Relaxed), copied.load(Ordering::Relaxed));
        assert_eq!(offered + copied, requests, "{connections} connections: every 1 MiB read counted once");
        if connections == 1 {
            assert_eq!(copied, 0, "one connection: every large read in place");
        } else {
            assert!(copied >= requests / 2, "several connections: {copied} of {requests} reads copied");
        }
        // Past the window before the next run.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A file of [`REPEATED`] bytes served as a disk of `size` bytes (the
/// file over and over), with one way of answering large reads made slow;
/// records the way each large read took, in order.
#[derive(Clone)]
struct SlowWay {
    file: Arc<File>,
    slow: BulkWay,
    ways: Arc<Mutex<Vec<BulkWay>>>,
}

const REPEATED: u64 = 64 << 20;

/// How long the slow way takes per read: at 1 MiB, under 350 MiB/s, where
/// either way unimpeded reads a cached file several times faster.
const SLOW: Duration = Duration::from_millis(3);

impl SlowWay {
    fn took(&self, way: BulkWay) {
        self.ways.lock().expect("ways").push(way);
        if way == self.slow {
            std::thread::sleep(SLOW);
        }
    }
}

impl BlockDevice for SlowWay {
    fn read_in_place(&self, offset: u64, length: u64) -> Option<Vec<FileSlice>> {
        let at = offset % REPEATED;
        (length >= LARGE_READ as u64 && at + length <= REPEATED).then(|| {
            self.took(BulkWay::InPlace);
            vec![FileSlice { file: self.file.clone(), offset: at, length: length as usize }]
        })
    }

    async fn read(&self, offset: u64, mut buffer: IoBuffer, start: usize) -> ReadResult {
        self.file.read_exact_at(&mut buffer[start..], offset % REPEATED)?;
        Ok((buffer, Vec::new()))
    }

    async fn read_offloaded(&self, offset: u64, mut buffer: IoBuffer, start: usize) -> ReadResult {
        let device = self.clone();
        tokio::task::spawn_blocking(move || {
            device.took(BulkWay::Offload);
            device.file.read_exact_at(&mut buffer[start..], offset % REPEATED).map(|()| (buffer, Vec::new()))
        })
        .await
        .expect("join")
        .map_err(DeviceError::from)
    }

    read_only_device!();
}

/// A lone bulk reader's way is measured: whichever of sending in place and
/// offloading the copy is made slow, the server tries both, then keeps the
/// fast one, and every byte is right either way.
#[test]
fn a_lone_bulk_reader_gets_the_way_measured_faster() {
    // Trials take four windows; ten windows leave six to keep the winner.
    let windows = 10;
    let size = windows * WINDOW_BYTES;
    let reads = (size >> 20) as usize;
    let dir = scratch();
    let data = random_bytes(19, REPEATED as usize);
    let path = write_file(dir.path(), "disk.raw", &data);
    let file = Arc::new(File::open(&path).expect("open"));
    for slow in [BulkWay::InPlace, BulkWay::Offload] {
        let ways = Arc::new(Mutex::new(Vec::new()));
        let device = SlowWay { file: file.clone(), slow, ways: ways.clone() };
        let (addr, _stop) = serve(SingleExport { info: info(size, true), device });
        let mut copy = Command::new("nbdcopy")
            .args(["--connections=1", "--request-size=1048576", &uri(addr), "-"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("nbdcopy");
        let mut out = copy.stdout.take().expect("stdout");
        let mut chunk = vec![0u8; REPEATED as usize];
        for index in 0..windows * WINDOW_BYTES / REPEATED {
            std::io::Read::read_exact(&mut out, &mut chunk).expect("nbdcopy output");
            assert!(chunk == data, "slow {slow:?}: bytes differ in copy {index} of the file");
        }
        assert!(copy.wait().expect("nbdcopy").success(), "nbdcopy failed");
        let ways = ways.lock().expect("ways").clone();
        assert_eq!(ways.len(), reads, "slow {slow:?}: every 1 MiB read took one way");
        let slow_reads = ways.iter().filter(|&&way| way == slow).count();
        assert!(
            slow_reads >= (WINDOW_BYTES >> 20) as usize,
            "slow {slow:?}: tried for a window ({slow_reads})"
        );
        // The last two windows' reads all went the fast way.
        let tail = 2 * (WINDOW_BYTES >> 20) as usize;
        let fast_tail = ways[reads - tail..].iter().filter(|&&way| way != slow).count();
        assert_eq!(fast_tail, tail, "slow {slow:?}: kept the fast way ({slow_reads} slow reads in all)");
    }
}

#[test]
fn a_file_shorter_than_its_reply_closes_that_connection_and_no_other() {
    let dir = scratch();
    let data = random_bytes(13, 4 << 20);
    let path = write_file(dir.path(), "disk.raw", &data);
    let file = Arc::new(File::open(&path).expect("open"));
    // The export claims 1 MiB more than the file holds: a reply's header
    // promises bytes sendfile cannot find.
    let export = info((5 << 20) as u64, true);
    let (addr, _stop) = serve(SingleExport { info: export, device: InPlaceOnly::new(file) });
    let short = run(
        Command::new(SYSTEM_PYTHON)
            .arg("-c")
            .arg("import nbd, sys\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\nh.pread(1 << 20, 4 << 20)")
            .arg(uri(addr)),
        Duration::from_secs(60),
    );
    assert!(!short.status.success(), "a reply past the file's end must fail");
    // Other connections are served as before.
    let out = nbd_python(
        &format!(
            "import nbd, sys, time\ntime.sleep(0.1)\nh = nbd.NBD()\nh.connect_uri(sys.argv[1])\n\
             d = h.pread(1 << 20, 1 << 20)\nassert d == open({:?}, 'rb').read()[1 << 20:2 << 20]\nprint('ok')",
            path.display().to_string()
        ),
        &uri(addr),
    );
    assert_eq!(out.trim(), "ok");
}

/// A client that sends requests and never reads a reply: the server stops
/// reading once its queued replies reach the in-flight budget, small ones
/// (a 1000-byte read's simple reply, 1,016 bytes, goes into the shared
/// buffer of small replies) as well as read data. Before, small replies
/// were not counted: such a client made the server queue 36 bytes for each
/// 28 it sent, without bound (found by a review; 300 MiB in 2 s).
#[test]
fn a_client_that_never_reads_replies_cannot_queue_small_ones_without_bound() {
    use rewind_tests::raw::{CMD_READ, RawClient};
    use std::io::Write;
    let dir = scratch();
    let path = write_file(dir.path(), "disk.raw", &vec![7u8; 1 << 20]);
    let file = OpenOptions::new().read(true).write(true).open(&path).expect("open file");
    let device = Arc::new(FileDevice::new(file).expect("file device"));
    let config = ServerConfig { max_inflight_bytes: 4 << 20, ..ServerConfig::default() };
    let (addr, _stop) = serve_with(SingleExport { info: info(device.size(), false), device }, config);
    let mut client = RawClient::connect(addr).expect("connect");
    client.go("file").expect("go");
    let batch: Vec<u8> = (0..1000u64).flat_map(|cookie| request_header(CMD_READ, cookie, 0, 1000)).collect();
    client.stream.set_write_timeout(Some(Duration::from_secs(2))).expect("timeout");
    // 32 MiB of requests would queue 1.2 GB of replies. With the 4 MiB
    // budget the server stops reading after about 110 KiB of them, so the
    // client blocks once the sockets' buffers (a few MiB) are full.
    let limit = 32usize << 20;
    let mut sent = 0;
    let blocked = loop {
        if sent >= limit {
            break false;
        }
        if client.stream.write_all(&batch).is_err() {
            break true;
        }
        sent += batch.len();
    };
    assert!(blocked, "the server kept reading: {} MiB of requests taken", sent >> 20);
    assert!(sent < 16 << 20, "{} MiB of requests taken before the server stopped reading", sent >> 20);
}

/// Encodes a request header the way clients do.
fn request_header(kind: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(28);
    header.extend_from_slice(&rewind_tests::raw::REQUEST_MAGIC.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    header.extend_from_slice(&kind.to_be_bytes());
    header.extend_from_slice(&cookie.to_be_bytes());
    header.extend_from_slice(&offset.to_be_bytes());
    header.extend_from_slice(&length.to_be_bytes());
    header
}

/// Bulk write payloads are read straight into their buffers, the
/// connection waking only once a good part of one arrived: whatever the
/// pace and split of the bytes (one at a time, in pauses, pipelined with
/// small requests, payloads around the bulk threshold), every write
/// completes and lands where it was sent.
#[test]
fn write_payloads_complete_whatever_the_pace_and_split() {
    use rewind_tests::raw::{CMD_READ, CMD_WRITE, RawClient};
    use std::io::Write;
    let dir = scratch();
    let path = write_file(dir.path(), "disk.raw", &vec![0u8; SIZE]);
    let (addr, _device, _stop) = serve_file(&path);
    let mut client = RawClient::connect(addr).expect("connect");
    client.go("file").expect("go");
    let mut model = vec![0u8; SIZE];
    let mut cookie = 0u64;
    let mut stream = client.stream.try_clone().expect("clone");
    // (offset, length, how the request's bytes go out: piece size, pause
    // every so many pieces).
    let writes: [(usize, usize, usize, usize); 7] = [
        (0, 1 << 20, 1000, 64),
        (3 << 20, (1 << 20) + 7, 1, 4096),
        (5 << 20, 16 << 10, 1 << 20, 1),
        (6 << 20, (16 << 10) - 1, 333, 8),
        (7 << 20, (16 << 10) + 1, 4096, 1),
        (9 << 20, 300 << 10, 65536, 1),
        (12 << 20, 3 << 20, 1 << 20, 1),
    ];
    for (i, &(offset, length, piece, pause_every)) in writes.iter().enumerate() {
        let data = random_bytes(i as u64 + 1, length);
        model[offset..offset + length].copy_from_slice(&data);
        cookie += 1;
        let mut bytes = request_header(CMD_WRITE, cookie, offset as u64, length as u32);
        bytes.extend_from_slice(&data);
        for (n, chunk) in bytes.chunks(piece).enumerate() {
            stream.write_all(chunk).expect("send");
            if n % pause_every == pause_every - 1 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        assert_eq!(client.simple_reply().expect("reply"), (0, cookie), "write {i}");
    }
    // Pipelined: bulk and small writes back to back in one send, then a
    // payload cut off mid-way for a while before its rest arrives.
    let mut burst = Vec::new();
    let mut expected = Vec::new();
    for (i, length) in [(1usize << 20), 4096, 20 << 10, 512, 2 << 20, 100].into_iter().enumerate() {
        let offset = (20 << 20) + i * (2 << 20) + i * 3;
        let data = random_bytes(100 + i as u64, length);
        model[offset..offset + length].copy_from_slice(&data);
        cookie += 1;
        burst.extend_from_slice(&request_header(CMD_WRITE, cookie, offset as u64, length as u32));
        burst.extend_from_slice(&data);
        expected.push(cookie);
    }
    let cut = burst.len() - 700_000;
    stream.write_all(&burst[..cut]).expect("send");
    std::thread::sleep(Duration::from_millis(300));
    stream.write_all(&burst[cut..]).expect("send");
    let mut replies: Vec<u64> =
        (0..expected.len()).map(|_| client.simple_reply().expect("reply").1).collect();
    replies.sort();
    assert_eq!(replies, expected);
    // Everything reads back, through NBD and in the file.
    for (offset, length) in [(0usize, 8 << 20), (8 << 20, 8 << 20), (16 << 20, 16 << 20)] {
        cookie += 1;
        client.request(0, CMD_READ, cookie, offset as u64, length as u32, &[]).expect("read");
        assert_eq!(client.simple_reply().expect("reply"), (0, cookie));
        assert!(client.read_bytes(length).expect("data") == model[offset..offset + length], "{offset}");
    }
    assert!(std::fs::read(&path).expect("file") == model);
}

/// A memory device that counts how its flushes ran and keeps a durable
/// copy, updated only by a flush; `fail_here` makes the next flush on the
/// connection's thread fail.
#[derive(Debug, Default)]
struct FlushCounting {
    data: std::sync::Mutex<Vec<u8>>,
    durable: std::sync::Mutex<Vec<u8>>,
    here: std::sync::atomic::AtomicUsize,
    offloaded: std::sync::atomic::AtomicUsize,
    fail_here: std::sync::atomic::AtomicBool,
}

impl FlushCounting {
    fn sync(&self) {
        let data = self.data.lock().expect("data").clone();
        *self.durable.lock().expect("durable") = data;
    }
}

impl BlockDevice for FlushCounting {
    async fn read(&self, offset: u64, mut buffer: IoBuffer, start: usize) -> ReadResult {
        let data = self.data.lock().expect("data");
        let length = buffer.len() - start;
        buffer[start..].copy_from_slice(&data[offset as usize..offset as usize + length]);
        Ok((buffer, Vec::new()))
    }

    async fn write(&self, offset: u64, payload: IoBuffer, _fua: bool) -> Result<(), DeviceError> {
        let mut data = self.data.lock().expect("data");
        data[offset as usize..offset as usize + payload.len()].copy_from_slice(&payload);
        Ok(())
    }

    async fn flush(&self) -> Result<(), DeviceError> {
        self.offloaded.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.sync();
        Ok(())
    }

    fn flush_here(&self) -> Option<Result<(), DeviceError>> {
        self.here.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.fail_here.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Some(Err(DeviceError::new(Errno::Io, "sync failed")));
        }
        self.sync();
        Some(Ok(()))
    }

    async fn trim(&self, _offset: u64, _length: u64, _fua: bool) -> Result<(), DeviceError> {
        Ok(())
    }

    async fn write_zeroes(&self, _offset: u64, _length: u64, _flags: ZeroFlags) -> Result<(), DeviceError> {
        Err(DeviceError::new(Errno::NotSup, "not in this test"))
    }

    async fn block_status(&self, _offset: u64, length: u64) -> Result<Vec<Extent>, DeviceError> {
        Ok(vec![Extent { length, hole: false, zero: false }])
    }
}

/// A flush from a client that waits for every reply runs on the
/// connection's own thread (`flush_here`) and is answered only once the
/// data is durable; a flush pipelined behind other requests takes the
/// async path; a failed sync is an EIO reply, and the connection goes on.
#[test]
fn a_serial_flush_syncs_on_the_connection_and_answers_after_it() {
    use rewind_tests::raw::{CMD_FLUSH, CMD_WRITE, RawClient};
    use std::io::Write;
    use std::sync::atomic::Ordering;
    const EIO: u32 = 5;
    let device = Arc::new(FlushCounting {
        data: std::sync::Mutex::new(vec![0u8; 1 << 20]),
        durable: std::sync::Mutex::new(vec![0u8; 1 << 20]),
        ..FlushCounting::default()
    });
    let (addr, _stop) = serve(SingleExport { info: info(1 << 20, false), device: device.clone() });
    let mut client = RawClient::connect(addr).expect("connect");
    client.go("file").expect("go");
    let mut stream = client.stream.try_clone().expect("clone");
    let mut cookie = 0u64;
    // One request at a time: write, reply, flush, reply.
    for i in 0..20u64 {
        let data = random_bytes(i + 1, 4096);
        let offset = i * 8192;
        cookie += 1;
        client.request(0, CMD_WRITE, cookie, offset, 4096, &data).expect("write");
        assert_eq!(client.simple_reply().expect("reply"), (0, cookie));
        cookie += 1;
        client.request(0, CMD_FLUSH, cookie, 0, 0, &[]).expect("flush");
        assert_eq!(client.simple_reply().expect("reply"), (0, cookie));
        let durable = device.durable.lock().expect("durable");
        assert!(
            durable[offset as usize..offset as usize + 4096] == data[..],
            "flush {i} answered before the sync"
        );
    }
    assert_eq!(device.here.load(Ordering::SeqCst), 20);
    assert_eq!(device.offloaded.load(Ordering::SeqCst), 0);
    // A failed sync on the connection's thread: EIO, and the next works.
    device.fail_here.store(true, Ordering::SeqCst);
    cookie += 1;
    client.request(0, CMD_FLUSH, cookie, 0, 0, &[]).expect("flush");
    assert_eq!(client.simple_reply().expect("reply"), (EIO, cookie));
    cookie += 1;
    client.request(0, CMD_FLUSH, cookie, 0, 0, &[]).expect("flush");
    assert_eq!(client.simple_reply().expect("reply"), (0, cookie));
    // Pipelined: writes and flushes in one send. No flush waits on the
    // connection's thread while other requests are queued behind it.
    let here_before = device.here.load(Ordering::SeqCst);
    let mut burst = Vec::new();
    for i in 0..8u64 {
        cookie += 1;
        burst.extend_from_slice(&request_header(CMD_WRITE, cookie, i * 4096, 4096));
        burst.extend_from_slice(&random_bytes(100 + i, 4096));
        cookie += 1;
        burst.extend_from_slice(&request_header(CMD_FLUSH, cookie, 0, 0));
    }
    stream.write_all(&burst).expect("send");
    for _ in 0..16 {
        assert_eq!(client.simple_reply().expect("reply").0, 0);
    }
    // Only the first flush could run on the connection, and only if the
    // stream happened to split right after it with the first write's reply
    // already sent; every later one follows a request not yet answered.
    let here = device.here.load(Ordering::SeqCst) - here_before;
    let offloaded = device.offloaded.load(Ordering::SeqCst);
    assert!(here <= 1 && here + offloaded == 8, "pipelined flushes ran on the connection: {here} of 8");
}
