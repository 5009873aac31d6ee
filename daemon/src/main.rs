//! `rewindd`: serves rewind volumes over NBD.
//!
//! Start-up: read flags and the optional config file (host names resolved,
//! values checked: exit 2), bind the NBD port, bind the control socket (its
//! directory, by default the data dir, is created for it), then open (or
//! create) the store and create volume `default` (1 GiB) if there is none,
//! serve. Binding comes first so that a port or socket in use leaves nothing
//! behind: not even an empty data dir. SIGTERM/SIGINT: stop accepting,
//! finish in-flight requests (NBD and control), flush every volume, remove
//! the control socket, exit 0.

mod catalog;
mod config;
mod control;
mod device;
mod metrics;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use crate::catalog::VolumeCatalog;
use crate::config::{Args, Config};

/// `error` and its causes, as one line: "journal read failed: failed to
/// fill whole buffer".
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) => return usage_error(error),
    };
    let config = match Config::load(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("rewindd: {error:#}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rewindd: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line a user can act on; details are in the chain.
            eprintln!("rewindd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Help and version go out as clap prints them; a bad flag is one
/// `rewindd: ...` line and exit 2, like every other start-up error.
fn usage_error(error: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(error.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = error.print();
        return ExitCode::SUCCESS;
    }
    let rendered = error.render().to_string();
    let body = rendered.split("\n\nUsage:").next().unwrap_or(&rendered);
    let body = body.split("\n\nFor more information").next().unwrap_or(body);
    let line = body.split_whitespace().collect::<Vec<_>>().join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    eprintln!("rewindd: {line} (rewindd --help shows the flags)");
    ExitCode::from(2)
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REWIND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never in log files.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).init();
}

async fn run(config: Config) -> anyhow::Result<()> {
    // A write past RLIMIT_FSIZE must fail with EFBIG (ENOSPC to clients),
    // not kill the daemon: catch SIGXFSZ for the process's lifetime.
    let _file_size_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ))
            .context("cannot install SIGXFSZ handler")?;
    // A daemon started from a shell that goes away (an SSH session closed)
    // gets SIGHUP, whose default is to die without a clean shutdown: keep
    // serving, and say so.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot install SIGHUP handler")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::warn!("SIGHUP ignored: rewindd keeps serving (SIGTERM or SIGINT stops it)");
        }
    });
    check_data_dir(&config.data_dir)?;
    // Nothing on disk yet: a port in use leaves nothing behind.
    let listener = bind_nbd(&config).await?;
    let nbd_listen = listener.local_addr().context("cannot read the NBD listen address")?;
    // The data dir, then the control socket in it (by default): bound
    // before the store starts its threads, as binding sets the process
    // umask. If the bind fails, the directories made for it go again.
    let mut made = missing_dirs(config.control.parent().unwrap_or(Path::new("")));
    made.extend(missing_dirs(&config.data_dir));
    store::create_private_dir(&config.data_dir)
        .map_err(|error| anyhow::anyhow!("cannot create data dir {}: {error}", config.data_dir.display()))
        .inspect_err(|_| remove_empty(&made))?;
    let control_socket = control::ControlSocket::bind(&config.control, &config.data_dir)
        .inspect_err(|_| remove_empty(&made))?;
    let store = open_store(&config)?;
    let catalog = Arc::new(VolumeCatalog::new(store.clone(), config.nbd.handshake_timeout)?);
    // Suggest a volume that exists: default if it does. (The catalog made
    // default if there was none.)
    let volumes = store.volumes();
    let suggestion = match volumes.iter().find(|volume| volume.name() == "default").or(volumes.first()) {
        Some(volume) => {
            format!("try: nbdinfo nbd://{}/{}", control::client_address(nbd_listen), volume.name())
        }
        None => "no volumes yet: rewind volume create NAME --size 20GiB".to_owned(),
    };
    tracing::info!(
        data_dir = %config.data_dir.display(),
        nbd = %nbd_listen,
        control = %control_socket.path().display(),
        "rewindd serving; {suggestion}"
    );
    let (stop, stopped) = watch::channel(false);
    let metrics = Arc::new(metrics::Metrics::new());
    let control_state = Arc::new(control::ControlState {
        store: store.clone(),
        metrics: metrics.clone(),
        // Absolute, so that `rewind status` says where the data is whatever
        // directory the daemon was started in.
        data_dir: std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone()),
        control_path: std::path::absolute(&config.control).unwrap_or_else(|_| config.control.clone()),
        nbd_listen,
        started: std::time::SystemTime::now(),
        open_exports: catalog.open_exports().clone(),
    });
    let controlling = tokio::spawn(control::serve(control_socket, control_state, stopped.clone()));
    let server = nbd_server::Server::new(catalog.clone(), config.nbd.clone()).with_observer(metrics);
    let serving = tokio::spawn(server.serve(listener, stopped));
    wait_for_signal().await?;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop.send(true);
    serving.await.context("NBD server task failed")?;
    controlling.await.context("control API task failed")??;
    drop(catalog);
    tokio::task::spawn_blocking(move || store.close())
        .await
        .context("final flush task failed")?
        .context("final flush failed; acknowledged writes may not be durable")?;
    tracing::info!("all volumes flushed; bye");
    Ok(())
}

/// A data dir that exists must be a directory (a typo pointing at a file
/// would otherwise fail later with a less direct message).
fn check_data_dir(dir: &Path) -> anyhow::Result<()> {
    // Inside another daemon's data dir (its volumes/, say), a daemon would
    // show up there as volumes and be removed with them.
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    if let Some(outer) = absolute
        .ancestors()
        .skip(1)
        .find(|ancestor| ancestor.join("LOCK").is_file() && ancestor.join(store::VOLUMES_DIR).is_dir())
    {
        anyhow::bail!(
            "data dir {} is inside the data dir {} of another rewindd; pass a --data-dir outside it",
            dir.display(),
            outer.display()
        );
    }
    match std::fs::metadata(dir) {
        Ok(metadata) if !metadata.is_dir() => {
            anyhow::bail!("data dir {} is not a directory; pass --data-dir DIR", dir.display())
        }
        Ok(_) => {
            // An existing directory this user cannot write to would only
            // show up later as a control socket or volume file we cannot
            // create: say what it is.
            if let Err(error) =
                rustix::fs::access(dir, rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK)
            {
                let error = std::io::Error::from(error).kind();
                anyhow::bail!(
                    "data dir {} is not writable by this user ({error}); fix its permissions or pass --data-dir DIR",
                    dir.display()
                );
            }
            Ok(())
        }
        Err(_) => Ok(()),
    }
}

/// Binds the NBD port: the first address the listen address resolves to
/// that binds.
async fn bind_nbd(config: &Config) -> anyhow::Result<tokio::net::TcpListener> {
    let listen = &config.nbd_listen;
    let mut last_error = None;
    for address in &listen.addresses {
        match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some((address, error)),
        }
    }
    let Some((address, error)) = last_error else {
        anyhow::bail!("cannot listen for NBD on {}: it resolves to no address", listen.text);
    };
    let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
        " (another rewindd or NBD server is using it; stop it or pass --nbd-listen ADDR)"
    } else {
        " (pass --nbd-listen ADDR)"
    };
    let shown = if listen.text == address.to_string() {
        listen.text.clone()
    } else {
        format!("{} ({address})", listen.text)
    };
    anyhow::bail!("cannot listen for NBD on {shown}: {error}{hint}")
}

/// The directories `dir` and its ancestors that do not exist yet, deepest
/// first.
fn missing_dirs(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors()
        .filter(|ancestor| !ancestor.as_os_str().is_empty())
        .take_while(|ancestor| std::fs::symlink_metadata(ancestor).is_err())
        .map(Path::to_owned)
        .collect()
}

/// Removes directories made by a start-up that then failed, in order
/// (deepest first), each only if it is empty: never anything someone put
/// there meanwhile.
fn remove_empty(dirs: &[PathBuf]) {
    for dir in dirs {
        let _ = std::fs::remove_dir(dir);
    }
}

/// Opens the store in the data dir (blocking: recovery replays journals).
fn open_store(config: &Config) -> anyhow::Result<Arc<store::Store>> {
    let dir = config.data_dir.display().to_string();
    let store = store::Store::open(&config.data_dir, config.store.options()).map_err(|error| {
        // The store's error names the path it failed on: say it once.
        match error {
            store::OpenError::Io { path, source } if path == dir => {
                anyhow::anyhow!("cannot open data dir {dir}: {source}")
            }
            store::OpenError::Io { path, source } => {
                anyhow::anyhow!("cannot open data dir {dir}: {path}: {source}")
            }
            store::OpenError::Locked { .. } => anyhow::anyhow!(
                "data dir {dir} is in use by another process (another rewindd?); stop it, or pass --data-dir DIR"
            ),
            error @ store::OpenError::Corrupt { .. } => anyhow::anyhow!("cannot open data dir {dir}: {error}"),
        }
    })?;
    for volume in store.volumes() {
        let stats = volume.recovery_stats();
        tracing::info!(
            volume = volume.name(),
            head = volume.head_seq(),
            replayed = stats.replayed,
            cut_bytes = stats.cut_bytes,
            "volume opened"
        );
    }
    Ok(Arc::new(store))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot install SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot install SIGINT handler")?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    Ok(())
}
