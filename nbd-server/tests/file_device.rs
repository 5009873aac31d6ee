//! The plain-file device served in-process, driven by real NBD clients:
//! large reads of cached bytes go out with sendfile, the others through
//! `read`; every reply must carry the file's bytes, in order with the rest
//! of the stream.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nbd_server::{
    BlockDevice, Catalog, Export, ExportInfo, FileDevice, Listing, LookupError, Server, ServerConfig,
};
use rewind_tests::{SYSTEM_PYTHON, nbd_python, random_bytes, run_ok, write_file};

const SIZE: usize = 32 << 20;

#[derive(Debug)]
struct OneFile {
    device: Arc<FileDevice>,
    size: u64,
}

impl Catalog for OneFile {
    type Device = Arc<FileDevice>;

    fn list(&self) -> Vec<Listing> {
        vec![Listing { name: "file".into(), description: String::new() }]
    }

    async fn open(&self, name: &str) -> Result<Export<Arc<FileDevice>>, LookupError> {
        Ok(Export {
            info: ExportInfo {
                name: name.to_owned(),
                description: String::new(),
                size: self.size,
                read_only: false,
                multi_conn: true,
                preferred_block: 4096,
                fast_zero: false,
            },
            device: self.device.clone(),
        })
    }
}

/// A server for `path` on a loopback port, on its own runtime thread; it
/// stops when the returned sender is dropped.
fn serve(path: &Path) -> (SocketAddr, Arc<FileDevice>, tokio::sync::watch::Sender<bool>) {
    let file = OpenOptions::new().read(true).write(true).open(path).expect("open file");
    let size = file.metadata().expect("metadata").len();
    let device = Arc::new(FileDevice::new(file));
    let catalog = Arc::new(OneFile { device: device.clone(), size });
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        runtime.expect("runtime").block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            Server::new(catalog, ServerConfig::default()).serve(listener, stopped).await;
        });
    });
    (addr, device, stop)
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

#[test]
fn large_reads_are_sent_from_the_page_cache_when_cached_and_read_when_not() {
    // The temp dir is on a disk file system here (tmpfs pages cannot be evicted).
    let dir = tempfile::tempdir().expect("temp dir");
    let data = random_bytes(7, SIZE);
    let path = write_file(dir.path(), "disk.raw", &data);
    let (addr, device, _stop) = serve(&path);

    // Cached: the device offers the bytes in place for large reads only.
    std::fs::read(&path).expect("read file into the page cache");
    assert!(device.read_in_place(1 << 20, 1 << 20).is_some(), "cached 1 MiB read not offered in place");
    assert!(device.read_in_place(1 << 20, 4096).is_none(), "a small read must go through read()");
    let copy = dir.path().join("copy.raw");
    nbdcopy_to(addr, &copy);
    assert!(std::fs::read(&copy).expect("copy") == data, "nbdcopy from cached pages differs");

    // Evicted: the same reads go through read() and give the same bytes.
    evict(&path);
    assert!(device.read_in_place(1 << 20, 1 << 20).is_none(), "evicted bytes offered in place");
    std::fs::remove_file(&copy).expect("remove copy");
    nbdcopy_to(addr, &copy);
    assert!(std::fs::read(&copy).expect("copy") == data, "nbdcopy from evicted pages differs");
}

#[test]
fn sendfile_replies_keep_their_place_in_the_stream_with_simple_and_structured_replies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = random_bytes(11, SIZE);
    let path = write_file(dir.path(), "disk.raw", &data);
    std::fs::read(&path).expect("read file into the page cache");
    let (addr, _device, _stop) = serve(&path);
    // Many reads in flight, large (sendfile) and small (buffers) mixed, at
    // unaligned offsets; each reply must hold its own range.
    let script = r#"
import nbd, random, sys
path, structured = sys.argv[2], sys.argv[3] == "1"
data = open(path, "rb").read()
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
print("ok")
"#;
    for structured in ["1", "0"] {
        let out = run_ok(
            Command::new(SYSTEM_PYTHON).arg("-c").arg(script).arg(uri(addr)).arg(&path).arg(structured),
            Duration::from_secs(120),
        );
        assert_eq!(out.trim(), "ok", "structured={structured}");
    }
    // Writes land in the page cache and large reads of them go out in place.
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
