//! Helpers for end-to-end tests: start a real `rewindd` on a loopback port
//! with its own data dir, run real clients against it, talk raw NBD.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub mod raw;

/// Debian's python, which has the libnbd module (`nbdsh` uses it).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Path of a binary built from this workspace (`rewindd`, `rewind`), next to
/// the test executable's `deps/` directory. `cargo build --workspace` (the
/// README's test command) builds them before the tests run.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(path) = std::env::var(format!("{}_BIN", name.to_uppercase())) {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/..");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first (./scripts/test does)",
        path.display()
    );
    path
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind loopback").local_addr().expect("addr").port()
}

/// A running `rewindd`. Killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub nbd: SocketAddr,
    pub log: PathBuf,
    extra_args: Vec<String>,
    /// Command (and arguments) the daemon runs under; empty for none.
    pub wrapper: Vec<String>,
    _temp: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Starts a daemon on a fresh temporary data dir.
    pub fn start() -> Daemon {
        let temp = tempfile::Builder::new().prefix("rewind-test-").tempdir().expect("tempdir");
        let mut daemon = Daemon::start_in(temp.path(), &[]);
        daemon._temp = Some(temp);
        daemon
    }

    /// Starts a daemon on `data_dir` with extra flags.
    pub fn start_in(data_dir: &Path, extra_args: &[&str]) -> Daemon {
        Daemon::start_wrapped(data_dir, extra_args, &[])
    }

    /// Starts a daemon under a wrapper command (e.g. `prlimit --fsize=N`).
    pub fn start_wrapped(data_dir: &Path, extra_args: &[&str], wrapper: &[&str]) -> Daemon {
        let mut daemon = Daemon {
            wrapper: wrapper.iter().map(|s| s.to_string()).collect(),
            child: None,
            data_dir: data_dir.to_owned(),
            nbd: "127.0.0.1:0".parse().expect("addr"),
            log: data_dir.with_extension("log"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            _temp: None,
        };
        daemon.restart();
        daemon
    }

    /// (Re)starts the process on the same data dir, on a new port if the
    /// old one was taken meanwhile.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        for _attempt in 0..5 {
            let port = if self.nbd.port() == 0 { free_port() } else { self.nbd.port() };
            self.nbd = SocketAddr::from(([127, 0, 0, 1], port));
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("open daemon log");
            let mut command = match self.wrapper.split_first() {
                Some((program, args)) => {
                    let mut command = Command::new(program);
                    command.args(args).arg(binary("rewindd"));
                    command
                }
                None => Command::new(binary("rewindd")),
            };
            let child = command
                .arg("--data-dir")
                .arg(&self.data_dir)
                .arg("--nbd-listen")
                .arg(self.nbd.to_string())
                .arg("--replication-listen")
                .arg(format!("127.0.0.1:{}", free_port()))
                .args(&self.extra_args)
                .env("REWIND_LOG", "info,nbd_server=debug")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup log"))
                .stderr(log)
                .spawn()
                .expect("spawn rewindd");
            self.child = Some(child);
            if self.wait_ready(Duration::from_secs(20)) {
                return;
            }
            let status = self.child.take().map(|mut c| {
                let _ = c.kill();
                c.wait()
            });
            eprintln!("rewindd did not start ({status:?}); log:\n{}", self.log_text());
            self.nbd = SocketAddr::from(([127, 0, 0, 1], 0));
        }
        panic!("rewindd failed to start five times; log: {}", self.log.display());
    }

    fn wait_ready(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(_)) = child.try_wait()
            {
                return false;
            }
            if let Ok(mut stream) = TcpStream::connect_timeout(&self.nbd, Duration::from_millis(200)) {
                // Ready once the greeting arrives.
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut greeting = [0u8; 18];
                if stream.read_exact(&mut greeting).is_ok() && &greeting[..8] == b"NBDMAGIC" {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// `nbd://127.0.0.1:PORT/EXPORT`.
    pub fn uri(&self, export: &str) -> String {
        format!("nbd://{}/{}", self.nbd, export)
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait (at most 30 s) for the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        signal(&child, libc::SIGTERM);
        wait_timeout(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            panic!("rewindd ignored SIGTERM for 30 s; log:\n{}", self.log_text())
        })
    }

    /// SIGKILL: the crash case.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- rewindd log ({}) ---\n{}", self.log.display(), self.log_text());
        }
    }
}

fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
    unsafe {
        libc::kill(child.id() as i32, signal);
    }
}

/// Waits for a child with a deadline.
pub fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Runs a command with a deadline; returns its output whatever the status.
pub fn run(command: &mut Command, limit: Duration) -> Output {
    let description = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {description}: {e} (is it installed? see .ci/run)"));
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_thread = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stdout.read_to_end(&mut buffer);
        buffer
    });
    let err_thread = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stderr.read_to_end(&mut buffer);
        buffer
    });
    let status = wait_timeout(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("{description} did not finish within {limit:?}")
    });
    Output {
        status,
        stdout: out_thread.join().expect("stdout reader"),
        stderr: err_thread.join().expect("stderr reader"),
    }
}

/// Runs a command and panics with its output unless it succeeds.
pub fn run_ok(command: &mut Command, limit: Duration) -> String {
    let description = format!("{command:?}");
    let output = run(command, limit);
    assert!(
        output.status.success(),
        "{description} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a Python script under Debian's python with the libnbd module; the
/// script gets the URI in `sys.argv[1]` and must exit 0.
pub fn nbd_python(script: &str, uri: &str) -> String {
    run_ok(Command::new(SYSTEM_PYTHON).arg("-c").arg(script).arg(uri), Duration::from_secs(120))
}

/// `len` random bytes from a seeded generator.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

/// Writes `data` to a new file in `dir`.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    let mut file = std::fs::File::create(&path).expect("create file");
    file.write_all(data).expect("write file");
    path
}
