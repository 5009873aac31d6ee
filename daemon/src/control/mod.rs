//! The control API: HTTP/JSON on the daemon's Unix socket, for the `rewind`
//! CLI and scripts (`curl --unix-socket DATA_DIR/control.sock
//! http://rewind/v1/volumes`).
//!
//! The socket is mode 0600: whoever can connect can delete volumes, so only
//! the daemon's user may. A stale socket left by a crashed daemon is
//! replaced at start; a live one (another daemon) is an error. The socket
//! is removed on clean shutdown.
//!
//! Routes are listed once, in [`routes::ROUTES`]; `docs/openapi.json`
//! describes them (a unit test compares the two) and the daemon serves that
//! document at `/openapi.json`.

mod error;
mod handlers;
pub mod routes;

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use tokio::sync::watch;

use crate::metrics::Metrics;

pub use error::ApiError;
pub use handlers::client_address;

/// What the handlers share.
#[derive(Debug)]
pub struct ControlState {
    pub store: Arc<store::Store>,
    pub metrics: Arc<Metrics>,
    pub data_dir: PathBuf,
    pub control_path: PathBuf,
    pub nbd_listen: SocketAddr,
    pub started: SystemTime,
    /// NBD connections per volume (rollback and delete check them).
    pub open_exports: Arc<crate::device::OpenExports>,
}

/// A bound control socket. Dropping it removes the socket file, if the
/// file is still the one this process bound (not a successor's).
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
    identity: (u64, u64),
}

impl ControlSocket {
    /// Binds `path` with mode 0600, replacing a stale socket. Call before
    /// anything else in the process creates files (the umask is
    /// process-wide while it binds). `data_dir` is the daemon's, for the
    /// message when another daemon answers on a socket inside it.
    pub fn bind(path: &Path, data_dir: &Path) -> anyhow::Result<ControlSocket> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| {
                format!("cannot create the directory of control socket {}", path.display())
            })?;
        }
        remove_stale(path, data_dir)?;
        let listener = bind_private(path).map_err(|error| {
            let hint = if path.as_os_str().len() > 100 {
                " (socket paths are limited to 107 bytes; pass a shorter --control PATH)"
            } else {
                ""
            };
            anyhow::anyhow!("cannot create control socket {}: {error}{hint}", path.display())
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make control socket {} private", path.display()))?;
        listener.set_nonblocking(true).context("cannot make the control socket non-blocking")?;
        let metadata = std::fs::symlink_metadata(path)
            .with_context(|| format!("control socket {} vanished", path.display()))?;
        Ok(ControlSocket {
            path: path.to_owned(),
            listener: Some(listener),
            identity: (metadata.dev(), metadata.ino()),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        // Remove only our own socket: a daemon started after us may have
        // replaced it (it found ours stale, or we are a leftover process).
        if let Ok(metadata) = std::fs::symlink_metadata(&self.path)
            && (metadata.dev(), metadata.ino()) == self.identity
            && let Err(error) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove control socket");
        }
    }
}

/// Clears the way for a new socket at `path`: removes a socket nobody
/// listens on, refuses to touch a live one or a file that is not a socket.
fn remove_stale(path: &Path, data_dir: &Path) -> anyhow::Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !metadata.file_type().is_socket() {
        anyhow::bail!(
            "{} exists and is not a socket; move it away or pass --control PATH for the control socket",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        // The socket in the data dir (the default): that daemon has the
        // data dir too, and another --control PATH would not help.
        Ok(_) if path.parent() == Some(data_dir) => anyhow::bail!(
            "data dir {} is in use by another rewindd (it answers on {}); stop it, or pass --data-dir DIR",
            data_dir.display(),
            path.display()
        ),
        Ok(_) => anyhow::bail!(
            "another rewindd is serving control socket {}; stop it, or pass --control PATH",
            path.display()
        ),
        Err(error) => {
            tracing::info!(path = %path.display(), %error, "replacing stale control socket");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(error) => Err(error)
                    .with_context(|| format!("cannot remove stale control socket {}", path.display())),
            }
        }
    }
}

/// Binds with umask 0177 so the socket is never connectable by others,
/// not even between bind(2) and chmod(2).
fn bind_private(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    // SAFETY: umask(2) only swaps the process's file-creation mask; it has
    // no memory-safety preconditions and cannot fail.
    let previous = unsafe { libc::umask(0o177) };
    let result = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above; restores the mask the process had.
    unsafe { libc::umask(previous) };
    result
}

/// Serves the control API on `socket` until `stopped` turns true, then
/// finishes the requests in flight. The socket file goes when this returns.
pub async fn serve(
    mut socket: ControlSocket,
    state: Arc<ControlState>,
    mut stopped: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let listener = socket.listener.take().context("control socket already served")?;
    let listener = tokio::net::UnixListener::from_std(listener).context("cannot serve the control socket")?;
    let router = routes::router(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        })
        .await
        .context("control API server failed")?;
    drop(socket);
    Ok(())
}
