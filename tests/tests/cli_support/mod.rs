//! Shared by the CLI and control API tests: run the real `rewind` binary
//! against a real daemon, speak raw HTTP to its control socket, and bridge
//! that socket to loopback TCP for tools that cannot dial a Unix socket.

// Each test file uses a different subset.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use rewind_tests::{Daemon, binary, nbd_python, run};

/// The control socket of a daemon started by [`Daemon`] (the default:
/// DATA_DIR/control.sock).
pub fn socket(daemon: &Daemon) -> PathBuf {
    daemon.data_dir.join("control.sock")
}

/// `rewind ARGS` with nothing from the environment choosing the socket.
pub fn rewind_command(args: &[&str]) -> Command {
    let mut command = Command::new(binary("rewind"));
    command.args(args).env_remove("REWIND_CONTROL");
    command
}

/// `rewind --control SOCKET ARGS`, whatever the exit status.
pub fn rewind(daemon: &Daemon, args: &[&str]) -> Output {
    let socket = socket(daemon);
    let mut command = rewind_command(&["--control", socket.to_str().expect("utf-8 path")]);
    command.args(args);
    run(&mut command, Duration::from_secs(60))
}

/// Text of stdout and stderr.
pub fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `rewind ARGS`, which must exit 0; returns stdout.
pub fn rewind_ok(daemon: &Daemon, args: &[&str]) -> String {
    let output = rewind(daemon, args);
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "rewind {args:?} failed ({}):\n{stdout}\n{stderr}", output.status);
    stdout
}

/// `rewind ARGS --json`, which must exit 0 and print JSON.
pub fn rewind_json(daemon: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let stdout = rewind_ok(daemon, &args);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("rewind {args:?}: not JSON ({error}):\n{stdout}"))
}

/// `rewind ARGS`, which must fail with `code`; returns stderr.
pub fn rewind_fails(daemon: &Daemon, args: &[&str], code: i32) -> String {
    let output = rewind(daemon, args);
    let (stdout, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(code), "rewind {args:?}:\nstdout: {stdout}\nstderr: {stderr}");
    stderr
}

/// One HTTP/1.1 request on the control socket; returns status and body.
pub fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
    let body = body.unwrap_or("");
    let content_type = if body.is_empty() { "" } else { "Content-Type: application/json\r\n" };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: rewind\r\nConnection: close\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("send request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read response");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {response}"));
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).expect("status code");
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { dechunk(body) } else { body.to_owned() })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

/// Forwards loopback TCP connections to a Unix socket, one thread pair per
/// connection, for as long as the test process runs.
pub fn tcp_bridge(socket: &Path) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let address = listener.local_addr().expect("address");
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = UnixStream::connect(&socket) else { continue };
            let (Ok(mut client_read), Ok(mut server_write)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_read, &mut server_write);
                let _ = server_write.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let (mut server_read, mut client_write): (UnixStream, TcpStream) = (server, client);
                let _ = std::io::copy(&mut server_read, &mut client_write);
                let _ = client_write.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    address
}

/// Now, in RFC 3339 with nanoseconds, from the system clock the daemon
/// also reads.
pub fn now_rfc3339() -> String {
    let output = run(Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%S.%NZ"]), Duration::from_secs(10));
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Writes `fill` repeated over `length` bytes at `offset` of the export at
/// `uri`, then flushes.
pub fn nbd_write(uri: &str, offset: u64, length: usize, fill: u8) {
    nbd_python(
        &format!(
            "import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
             h.pwrite(bytes([{fill}]) * {length}, {offset}); h.flush(); h.shutdown()"
        ),
        uri,
    );
}

/// SHA-256 of the first `length` bytes of the export at `uri`.
pub fn nbd_digest(uri: &str, length: u64) -> String {
    nbd_python(
        &format!(
            "import sys, nbd, hashlib\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
             print(hashlib.sha256(h.pread({length}, 0)).hexdigest()); h.shutdown()"
        ),
        uri,
    )
    .trim()
    .to_owned()
}

/// An NBD connection held open by a libnbd client (a stand-in for a
/// running VM) until dropped.
pub struct HeldConnection {
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl HeldConnection {
    /// Connects to `uri` and returns once the export is open (the daemon
    /// counts the connection from then on).
    pub fn open(uri: &str) -> HeldConnection {
        use std::io::BufRead;
        use std::process::Stdio;
        let script = "import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\nprint('connected', flush=True)\n\
                      for line in sys.stdin:\n    \
                      if line.startswith('write'):\n        \
                      try:\n            h.pwrite(b'w' * 4096, 0); h.flush(); print('written', flush=True)\n        \
                      except nbd.Error as e:\n            print('failed', e.errno, flush=True)\n    \
                      if line.startswith('read'):\n        \
                      try:\n            print('read', sorted(set(h.pread(1 << 20, 0))), flush=True)\n        \
                      except nbd.Error as e:\n            print('failed', e.errno, flush=True)\n\
                      h.shutdown()";
        let mut child = Command::new(rewind_tests::SYSTEM_PYTHON)
            .args(["-c", script, uri])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a libnbd client");
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("client output");
        assert_eq!(line.trim(), "connected", "the client could not connect to {uri}");
        HeldConnection { child, stdout }
    }

    /// Writes 4 KiB at offset 0 and flushes; "written" or "failed ERRNO".
    pub fn write(&mut self) -> String {
        self.ask("write")
    }

    /// Reads the first MiB: "read [BYTES...]" (the distinct byte values,
    /// sorted) or "failed ERRNO".
    pub fn read(&mut self) -> String {
        self.ask("read")
    }

    /// Sends the client script one command; returns its answer line.
    fn ask(&mut self, command: &str) -> String {
        use std::io::BufRead;
        let stdin = self.child.stdin.as_mut().expect("piped");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .expect("send to client");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("client output");
        line.trim().to_owned()
    }

    /// Disconnects and waits for the client to exit.
    pub fn close(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Waits (at most 10 s) until the daemon counts no NBD connection to
/// `volume`: a client's exit reaches the daemon a moment later.
pub fn wait_disconnected(daemon: &Daemon, volume: &str) {
    let path = format!("/v1/volumes/{volume}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http(&socket(daemon), "GET", &path, None);
        let detail: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        if detail["volume"]["nbd_connections"] == serde_json::json!({"head": 0, "points": 0}) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "connections to {volume} never closed: {detail}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
