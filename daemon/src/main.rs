//! `rewindd`: serves rewind volumes over NBD.
//!
//! Start-up: read flags and the optional config file, open (or create) the
//! data dir, create volume `default` (1 GiB) if there is none, bind the
//! control socket and the NBD port, serve. SIGTERM/SIGINT: stop accepting,
//! finish in-flight requests (NBD and control), flush every volume, remove
//! the control socket, exit 0.

mod catalog;
mod config;
mod control;
mod device;
mod metrics;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tokio::sync::watch;

use crate::catalog::VolumeCatalog;
use crate::config::{Args, Config};

fn main() -> ExitCode {
    let args = Args::parse();
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
    let store = open_store(&config)?;
    let catalog = Arc::new(VolumeCatalog::new(store.clone())?);
    // Bound before anything else runs: binding sets the process umask.
    let control_socket = control::ControlSocket::bind(&config.control)?;
    let listener = tokio::net::TcpListener::bind(config.nbd_listen).await.map_err(|error| {
        let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
            " (another rewindd or NBD server is using it; stop it or pass --nbd-listen ADDR)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen for NBD on {}: {error}{hint}", config.nbd_listen)
    })?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        nbd = %config.nbd_listen,
        control = %control_socket.path().display(),
        "rewindd serving; try: nbdinfo nbd://{}/default",
        config.nbd_listen
    );
    let (stop, stopped) = watch::channel(false);
    let metrics = Arc::new(metrics::Metrics::new());
    let control_state = Arc::new(control::ControlState {
        store: store.clone(),
        metrics: metrics.clone(),
        data_dir: config.data_dir.clone(),
        control_path: config.control.clone(),
        nbd_listen: config.nbd_listen,
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

/// Opens the store in the data dir (blocking: recovery replays journals).
fn open_store(config: &Config) -> anyhow::Result<Arc<store::Store>> {
    let store = store::Store::open(&config.data_dir, store::StoreOptions::default())
        .with_context(|| format!("cannot open data dir {}", config.data_dir.display()))?;
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
