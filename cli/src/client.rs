//! The control API client: one HTTP/1.1 request per connection over the
//! daemon's Unix socket (hyper), JSON in and out.
//!
//! Every failure becomes a [`Failure`] that says what to do: the daemon
//! not running names the socket tried and how to start one; an API error
//! carries the daemon's own message and hint.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rewind_api::control::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Where the socket path came from, for the error that says which one we
/// tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SocketSource {
    Flag,
    Environment,
    Default,
}

/// The default control socket, relative to the working directory.
pub const DEFAULT_SOCKET: &str = "./rewind-data/control.sock";

/// A command that did not succeed: exit 1 with this message and hint.
#[derive(Debug)]
pub struct Failure {
    pub error: String,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(error: impl Into<String>, hint: Option<String>) -> Failure {
        Failure { error: error.into(), hint }
    }
}

/// How long a request waits for the daemon's answer unless told
/// (`--timeout`): a stopped or stuck daemon must not hang a script.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Talks to one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    source: SocketSource,
    /// None: wait forever.
    timeout: Option<Duration>,
}

impl Client {
    pub fn new(socket: PathBuf, source: SocketSource, timeout: Option<Duration>) -> Client {
        Client { socket, source, timeout }
    }

    /// This client waiting `timeout` (None: forever) for answers.
    pub fn with_timeout(&self, timeout: Option<Duration>) -> Client {
        Client { timeout, ..self.clone() }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn source(&self) -> SocketSource {
        self.source
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send(Method::GET, path, None::<&()>).await
    }

    /// `POST path` with a JSON body.
    pub async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, Failure> {
        self.send(Method::POST, path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.send(Method::DELETE, path, None::<&()>).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Failure> {
        let Some(limit) = self.timeout else { return self.exchange(method, path, body).await };
        match tokio::time::timeout(limit, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(Failure::new(
                format!(
                    "rewindd did not answer within {} s on {} (stopped, or stuck: its log says which); the \
                     request may still take effect when it answers",
                    limit.as_secs(),
                    self.socket.display()
                ),
                Some("--timeout SECONDS waits longer; 0 waits forever".into()),
            )),
        }
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, Failure> {
        let stream =
            tokio::net::UnixStream::connect(&self.socket).await.map_err(|error| self.unreachable(&error))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| self.broken(&error))?;
        let driver = tokio::spawn(connection);
        let mut request = Request::builder().method(method).uri(path).header("host", "rewind");
        let payload = match body {
            Some(body) => {
                request = request.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(body).map_err(|error| Failure::new(error.to_string(), None))?)
            }
            None => Bytes::new(),
        };
        let request = request
            .body(Full::new(payload))
            .map_err(|error| Failure::new(format!("bad request: {error}"), None))?;
        let response = sender.send_request(request).await.map_err(|error| self.broken(&error))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|error| self.broken(&error))?.to_bytes();
        driver.abort();
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|error| {
                Failure::new(
                    format!("rewindd sent an answer this rewind does not understand: {error}"),
                    Some(
                        "rewind and rewindd should be the same version (rewind --version, rewind status)"
                            .into(),
                    ),
                )
            });
        }
        Err(api_failure(status, &bytes))
    }

    fn unreachable(&self, error: &io::Error) -> Failure {
        let path = self.socket.display();
        let from = match self.source {
            SocketSource::Flag => "from --control",
            SocketSource::Environment => "from $REWIND_CONTROL",
            SocketSource::Default => "the default; set --control PATH or $REWIND_CONTROL to use another",
        };
        let data_dir = match self.socket.file_name().and_then(|name| name.to_str()) {
            Some("control.sock") => self
                .socket
                .parent()
                .map(|dir| if dir.as_os_str().is_empty() { ".".into() } else { dir.display().to_string() })
                .unwrap_or_else(|| "DIR".into()),
            _ => "DIR".into(),
        };
        let start = format!("start one with: rewindd --data-dir {data_dir}");
        if let Some(failure) = self.not_a_socket(from) {
            return failure;
        }
        let (what, hint) = match error.kind() {
            io::ErrorKind::NotFound => (
                "no such socket: is rewindd running?".to_owned(),
                format!("{start} (its control socket is DATA_DIR/control.sock), or point rewind at a running daemon with --control PATH or $REWIND_CONTROL"),
            ),
            io::ErrorKind::ConnectionRefused => (
                "nothing listens on it: rewindd is not running (it crashed or was killed?)".to_owned(),
                format!("{start}; it replaces the stale socket"),
            ),
            io::ErrorKind::PermissionDenied => (
                "permission denied".to_owned(),
                "the control socket is private (mode 0600) to the user rewindd runs as: run rewind as that user"
                    .to_owned(),
            ),
            _ => (error.to_string(), start),
        };
        Failure::new(format!("cannot reach rewindd at {path} ({from}): {what}"), Some(hint))
    }

    /// When the path exists but is no socket (a data dir, a config file),
    /// says so: "not running" would send the user after the wrong problem.
    fn not_a_socket(&self, from: &str) -> Option<Failure> {
        let path = &self.socket;
        let file_type = std::fs::metadata(path).ok()?.file_type();
        if file_type.is_socket() {
            return None;
        }
        let what = if file_type.is_dir() {
            "a directory"
        } else if file_type.is_file() {
            "a regular file"
        } else {
            "a special file"
        };
        let candidate = path.join("control.sock");
        let hint = if file_type.is_dir()
            && std::fs::metadata(&candidate).is_ok_and(|m| m.file_type().is_socket())
        {
            format!(
                "did you mean --control {}? (a daemon's socket is DATA_DIR/control.sock)",
                candidate.display()
            )
        } else {
            "point rewind at the daemon's control socket: DATA_DIR/control.sock, or the --control PATH rewindd \
             was started with"
                .to_owned()
        };
        Some(Failure::new(
            format!("cannot reach rewindd at {} ({from}): it is {what}, not a socket", path.display()),
            Some(hint),
        ))
    }

    fn broken(&self, error: &dyn std::error::Error) -> Failure {
        Failure::new(
            format!("the connection to rewindd at {} failed: {error}", self.socket.display()),
            Some("rewindd may have stopped; rewind status tells, and its log says why".into()),
        )
    }
}

fn api_failure(status: StatusCode, bytes: &[u8]) -> Failure {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => Failure { error: body.error, hint: body.hint },
        Err(_) => Failure::new(
            format!("rewindd answered {status}: {}", String::from_utf8_lossy(bytes).trim()),
            None,
        ),
    }
}

/// Runs `work`, showing a spinner with `message` on stderr if it takes more
/// than a second and stderr is a terminal (never in `--json` mode).
pub async fn with_progress<T>(message: &str, show: bool, work: impl Future<Output = T>) -> T {
    tokio::pin!(work);
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return work.await;
    }
    tokio::select! {
        result = &mut work => return result,
        () = tokio::time::sleep(Duration::from_secs(1)) => {}
    }
    let spinner = indicatif::ProgressBar::new_spinner().with_elapsed(Duration::from_secs(1));
    spinner.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    spinner.set_message(message.to_owned());
    spinner.enable_steady_tick(Duration::from_millis(100));
    let result = work.await;
    spinner.finish_and_clear();
    result
}
