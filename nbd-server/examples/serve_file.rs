//! Serves one raw file over NBD with this crate and nothing else: the NBD
//! layer's own cost, for the side-by-side benchmark against nbdkit and
//! qemu-nbd serving the same file (`benches/nbd-side-by-side.sh`, server
//! `nbd-layer`). Not a product: rewindd serves journaled volumes.
//!
//!     cargo run --release -p nbd-server --example serve_file -- 127.0.0.1:10809 disk.raw
//!
//! Logs go to stderr, filtered by `RUST_LOG` (default `warn`; e.g.
//! `RUST_LOG=nbd_server::bulk=debug` shows how lone bulk reads are sent).

use std::fs::OpenOptions;
use std::sync::Arc;

use nbd_server::{ExportInfo, FileDevice, Server, ServerConfig, SingleExport};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(path)) = (args.next(), args.next()) else {
        eprintln!("usage: serve_file HOST:PORT FILE");
        std::process::exit(2);
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let device = FileDevice::new(OpenOptions::new().read(true).write(true).open(path)?)?;
    let info = ExportInfo {
        name: "file".into(),
        description: "a raw file".into(),
        size: device.size(),
        read_only: false,
        multi_conn: true,
        preferred_block: 4096,
        fast_zero: false,
    };
    let catalog = Arc::new(SingleExport { info, device: Arc::new(device) });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        Server::new(catalog, ServerConfig::default()).serve(listener, stopped).await;
        Ok(())
    })
}
