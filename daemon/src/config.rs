//! Configuration: built-in defaults, then the TOML file (`--config`), then
//! flags. `rewindd --print-config` prints the result.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};

/// Command-line flags. Every flag overrides the config file.
#[derive(Debug, Parser)]
#[command(name = "rewindd", version, about = "Serve rewind volumes over NBD")]
pub struct Args {
    /// Where volumes, journals and the daemon's identity live.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// NBD listen address.
    #[arg(long, value_name = "ADDR")]
    pub nbd_listen: Option<SocketAddr>,
    /// Control socket path (default: DATA_DIR/control.sock).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Replication (QUIC, UDP) listen address.
    #[arg(long, value_name = "ADDR")]
    pub replication_listen: Option<SocketAddr>,
    /// TOML config file; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The file format; every field optional so a file can set just one thing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    nbd_listen: Option<SocketAddr>,
    control: Option<PathBuf>,
    replication_listen: Option<SocketAddr>,
    nbd: Option<FileNbd>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNbd {
    max_connections: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    max_inflight_requests: Option<usize>,
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub nbd_listen: SocketAddr,
    pub control: PathBuf,
    pub replication_listen: SocketAddr,
    pub nbd: nbd_server::ServerConfig,
}

#[derive(Serialize)]
struct PrintedConfig<'a> {
    data_dir: &'a Path,
    nbd_listen: SocketAddr,
    control: &'a Path,
    replication_listen: SocketAddr,
    nbd: PrintedNbd,
}

#[derive(Serialize)]
struct PrintedNbd {
    max_connections: usize,
    handshake_timeout_ms: u64,
    max_inflight_requests: usize,
}

impl Config {
    /// Defaults, overlaid by the file named in `args`, overlaid by flags.
    pub fn load(args: &Args) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("config file {} is not valid", path.display()))?
            }
            None => FileConfig::default(),
        };
        let data_dir = args.data_dir.clone().or(file.data_dir).unwrap_or_else(|| "rewind-data".into());
        let control = args.control.clone().or(file.control).unwrap_or_else(|| data_dir.join("control.sock"));
        let mut nbd = nbd_server::ServerConfig::default();
        if let Some(file_nbd) = file.nbd {
            if let Some(value) = file_nbd.max_connections {
                nbd.max_connections = value;
            }
            if let Some(value) = file_nbd.handshake_timeout_ms {
                nbd.handshake_timeout = Duration::from_millis(value);
            }
            if let Some(value) = file_nbd.max_inflight_requests {
                nbd.max_inflight_requests = value.max(1);
            }
        }
        Ok(Config {
            nbd_listen: args.nbd_listen.or(file.nbd_listen).unwrap_or(([127, 0, 0, 1], 10809).into()),
            replication_listen: args
                .replication_listen
                .or(file.replication_listen)
                .unwrap_or(([127, 0, 0, 1], 10810).into()),
            data_dir,
            control,
            nbd,
        })
    }

    /// The configuration as a TOML file that `--config` accepts.
    pub fn to_toml(&self) -> String {
        let printed = PrintedConfig {
            data_dir: &self.data_dir,
            nbd_listen: self.nbd_listen,
            control: &self.control,
            replication_listen: self.replication_listen,
            nbd: PrintedNbd {
                max_connections: self.nbd.max_connections,
                handshake_timeout_ms: self.nbd.handshake_timeout.as_millis() as u64,
                max_inflight_requests: self.nbd.max_inflight_requests,
            },
        };
        toml::to_string(&printed).unwrap_or_else(|error| format!("# cannot print config: {error}\n"))
    }
}
