//! Configuration: built-in defaults, then the TOML file (`--config`), then
//! flags. `rewindd --print-config` prints the result.
//!
//! Everything is checked here, before the daemon touches the disk or the
//! network: a bad flag or file value is one `rewindd: ...` line and exit 2.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::{Deserialize, Serialize};

/// Data dir when none is given (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "rewind-data";
/// NBD listen address when none is given (10809 is NBD's IANA port).
pub const DEFAULT_NBD_LISTEN: &str = "127.0.0.1:10809";
/// Replication listen address when none is given.
pub const DEFAULT_REPLICATION_LISTEN: &str = "127.0.0.1:10810";

/// Bounds of the `[nbd]` settings: beyond them a value is a typo, not a
/// tuning (and 0 would make the server refuse everything).
const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=65_536;
const HANDSHAKE_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=600_000;
const IDLE_POLL_US_RANGE: std::ops::RangeInclusive<u64> = 0..=1_000;
const MAX_INFLIGHT_REQUESTS_RANGE: std::ops::RangeInclusive<usize> = 1..=65_536;

/// Command-line flags. Every flag overrides the config file.
#[derive(Debug, Parser)]
#[command(
    name = "rewindd",
    version,
    about = "Serve rewind volumes over NBD",
    long_about = "Serve rewind volumes over NBD, with a control API (the rewind CLI) on a Unix socket.\n\n\
        An empty data dir gets one volume, default, 1 GiB: nbdinfo nbd://127.0.0.1/default works right \
        after the first start. SIGTERM or SIGINT: finish in-flight requests, make acknowledged writes \
        durable, exit 0. SIGHUP is ignored (logged)."
)]
pub struct Args {
    /// Where volumes, journals and the daemon's identity live [default: ./rewind-data]
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// NBD listen address, HOST:PORT; a host name is resolved [default: 127.0.0.1:10809]
    #[arg(long, value_name = "ADDR")]
    pub nbd_listen: Option<String>,
    /// Control socket path (the rewind CLI's) [default: DATA_DIR/control.sock]
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// Replication (QUIC, UDP) listen address; replication is not available yet, so nothing listens
    /// [default: 127.0.0.1:10810]
    #[arg(long, value_name = "ADDR")]
    pub replication_listen: Option<String>,
    /// TOML config file; flags override it (--print-config shows every key)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    pub print_config: bool,
}

/// The file format; every field optional so a file can set just one thing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    nbd_listen: Option<String>,
    control: Option<PathBuf>,
    replication_listen: Option<String>,
    nbd: Option<FileNbd>,
    store: Option<FileStore>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStore {
    engine: Option<String>,
    retention_window: Option<String>,
    journal_budget: Option<String>,
    retention_interval: Option<String>,
    spare_segments: Option<usize>,
}

/// How volumes are stored: the `[store]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    pub engine: store::EngineChoice,
    pub retention: store::RetentionPolicy,
    pub retention_interval: Duration,
    pub spare_segments: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        let options = store::StoreOptions::default();
        StoreSettings {
            engine: options.engine,
            retention: options.retention,
            retention_interval: options.retention_interval.unwrap_or(Duration::from_secs(10)),
            spare_segments: options.spare_segments,
        }
    }
}

impl StoreSettings {
    /// The store's options with these settings.
    pub fn options(&self) -> store::StoreOptions {
        store::StoreOptions {
            engine: self.engine,
            retention: self.retention,
            retention_interval: Some(self.retention_interval),
            spare_segments: self.spare_segments,
            ..store::StoreOptions::default()
        }
    }
}

/// `auto`, `file` (pread/pwrite) or `uring`.
fn parse_engine(text: &str) -> Option<store::EngineChoice> {
    match text {
        "auto" => Some(store::EngineChoice::Auto),
        "file" => Some(store::EngineChoice::File),
        "uring" => Some(store::EngineChoice::Uring),
        _ => None,
    }
}

fn engine_name(engine: store::EngineChoice) -> &'static str {
    match engine {
        store::EngineChoice::Auto => "auto",
        store::EngineChoice::File => "file",
        store::EngineChoice::Uring | store::EngineChoice::UringIfAvailable => "uring",
    }
}

/// `24h`, `7d`, `1h30m`, or `forever`.
fn parse_window(text: &str) -> Option<Option<Duration>> {
    if text == "forever" {
        return Some(None);
    }
    rewind_api::parse_duration(text).filter(|d| !d.is_zero()).map(Some)
}

fn format_duration(duration: Duration) -> String {
    let mut seconds = duration.as_secs();
    let mut text = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if seconds >= size {
            text.push_str(&format!("{}{unit}", seconds / size));
            seconds %= size;
        }
    }
    if text.is_empty() { "0s".into() } else { text }
}

/// `100%` of the volume's size, a size such as `20GiB`, or `unlimited`.
fn parse_budget(text: &str) -> Option<Option<store::JournalBudget>> {
    if text == "unlimited" {
        return Some(None);
    }
    if let Some(percent) = text.strip_suffix('%') {
        return percent
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|p| (1..=100_000).contains(p))
            .map(|p| Some(store::JournalBudget::PercentOfSize(p)));
    }
    rewind_api::parse_size(text).ok().map(|bytes| Some(store::JournalBudget::Bytes(bytes)))
}

fn format_budget(budget: Option<store::JournalBudget>) -> String {
    match budget {
        None => "unlimited".into(),
        Some(store::JournalBudget::PercentOfSize(percent)) => format!("{percent}%"),
        Some(store::JournalBudget::Bytes(bytes)) => bytes.to_string(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNbd {
    max_connections: Option<usize>,
    handshake_timeout_ms: Option<u64>,
    max_inflight_requests: Option<usize>,
    idle_poll_us: Option<u64>,
}

/// A listen address as given (`localhost:10809`) and what it resolves to.
#[derive(Clone, Debug)]
pub struct ListenAddress {
    pub text: String,
    /// Never empty; bind tries them in order.
    pub addresses: Vec<SocketAddr>,
}

/// The effective configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    pub nbd_listen: ListenAddress,
    pub control: PathBuf,
    pub replication_listen: ListenAddress,
    pub nbd: nbd_server::ServerConfig,
    pub store: StoreSettings,
}

#[derive(Serialize)]
struct PrintedConfig<'a> {
    data_dir: &'a Path,
    nbd_listen: &'a str,
    control: &'a Path,
    replication_listen: &'a str,
    nbd: PrintedNbd,
    store: PrintedStore,
}

#[derive(Serialize)]
struct PrintedStore {
    engine: &'static str,
    retention_window: String,
    journal_budget: String,
    retention_interval: String,
    spare_segments: usize,
}

#[derive(Serialize)]
struct PrintedNbd {
    max_connections: usize,
    handshake_timeout_ms: u64,
    max_inflight_requests: usize,
    idle_poll_us: u64,
}

/// Resolves `HOST:PORT` (an IP address or a host name). `origin` names
/// where the value came from, for the error.
fn resolve(text: &str, origin: &str) -> anyhow::Result<ListenAddress> {
    let example = "write HOST:PORT, e.g. 127.0.0.1:10809, [::1]:10809 or localhost:10809";
    let addresses: Vec<SocketAddr> = match text.to_socket_addrs() {
        Ok(addresses) => addresses.collect(),
        Err(error) => anyhow::bail!("{origin} {text}: {error} ({example})"),
    };
    if addresses.is_empty() {
        anyhow::bail!("{origin} {text}: the name resolves to no address ({example})");
    }
    Ok(ListenAddress { text: text.to_owned(), addresses })
}

/// Checks an `[nbd]` value against its range.
fn in_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    range: &std::ops::RangeInclusive<T>,
    file: &Path,
) -> anyhow::Result<T> {
    if range.contains(&value) {
        Ok(value)
    } else {
        anyhow::bail!(
            "config file {}: {key} = {value} is out of range: use {} to {}",
            file.display(),
            range.start(),
            range.end()
        )
    }
}

impl Config {
    /// Defaults, overlaid by the file named in `args`, overlaid by flags.
    /// Host names are resolved here.
    pub fn load(args: &Args) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text).map_err(|error| {
                    // toml's message spans lines (a snippet of the file):
                    // one line here, as for every other start-up error.
                    // Rust's type names mean nothing to an admin.
                    let mut reason = error.message().trim().to_owned();
                    for (rust, words) in [
                        ("expected usize", "expected a whole number, 0 or more"),
                        ("expected u64", "expected a whole number, 0 or more"),
                        ("expected u32", "expected a whole number, 0 or more"),
                        ("expected u16", "expected a whole number, 0 or more"),
                    ] {
                        reason = reason.replace(rust, words);
                    }
                    let at = error
                        .span()
                        .map(|span| {
                            let start = span.start.min(text.len());
                            let line = text[..start].lines().count().max(1);
                            // The whole line, so the key is named too.
                            let begin = text[..start].rfind('\n').map_or(0, |at| at + 1);
                            let end = text[start..].find('\n').map_or(text.len(), |at| start + at);
                            match text[begin..end].trim() {
                                "" => format!(" (line {line})"),
                                shown => format!(" (line {line}: `{shown}`)"),
                            }
                        })
                        .unwrap_or_default();
                    anyhow::anyhow!("config file {} is not valid{at}: {reason}", path.display())
                })?
            }
            None => FileConfig::default(),
        };
        // A relative path in the file is relative to the file (as in
        // systemd units and most daemons' configs), not to wherever the
        // daemon happens to start; flags stay relative to the working dir.
        let beside_file = |path: PathBuf| match args.config.as_deref().and_then(Path::parent) {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir.map(beside_file))
            .unwrap_or_else(|| DEFAULT_DATA_DIR.into());
        let control = args
            .control
            .clone()
            .or(file.control.map(beside_file))
            .unwrap_or_else(|| data_dir.join("control.sock"));
        let file_origin = |key: &str| match &args.config {
            Some(path) => format!("{key} in {}:", path.display()),
            None => format!("{key}:"),
        };
        let nbd_listen = match (&args.nbd_listen, &file.nbd_listen) {
            (Some(text), _) => resolve(text, "--nbd-listen")?,
            (None, Some(text)) => resolve(text, &file_origin("nbd_listen"))?,
            (None, None) => resolve(DEFAULT_NBD_LISTEN, "default NBD address")?,
        };
        let replication_listen = match (&args.replication_listen, &file.replication_listen) {
            (Some(text), _) => resolve(text, "--replication-listen")?,
            (None, Some(text)) => resolve(text, &file_origin("replication_listen"))?,
            (None, None) => resolve(DEFAULT_REPLICATION_LISTEN, "default replication address")?,
        };
        let mut nbd = nbd_server::ServerConfig::default();
        if let (Some(file_nbd), Some(path)) = (file.nbd, &args.config) {
            if let Some(value) = file_nbd.max_connections {
                nbd.max_connections = in_range("[nbd] max_connections", value, &MAX_CONNECTIONS_RANGE, path)?;
            }
            if let Some(value) = file_nbd.handshake_timeout_ms {
                let value = in_range("[nbd] handshake_timeout_ms", value, &HANDSHAKE_TIMEOUT_MS_RANGE, path)?;
                nbd.handshake_timeout = Duration::from_millis(value);
            }
            if let Some(value) = file_nbd.max_inflight_requests {
                nbd.max_inflight_requests =
                    in_range("[nbd] max_inflight_requests", value, &MAX_INFLIGHT_REQUESTS_RANGE, path)?;
            }
            if let Some(value) = file_nbd.idle_poll_us {
                let value = in_range("[nbd] idle_poll_us", value, &IDLE_POLL_US_RANGE, path)?;
                nbd.idle_poll = Duration::from_micros(value);
            }
        }
        let mut store = StoreSettings::default();
        if let (Some(file_store), Some(path)) = (file.store, &args.config) {
            let bad = |key: &str, value: &str, expect: &str| {
                anyhow::anyhow!(
                    "config file {}: [store] {key} = {value:?} is not valid: {expect}",
                    path.display()
                )
            };
            if let Some(text) = file_store.engine {
                store.engine =
                    parse_engine(&text).ok_or_else(|| bad("engine", &text, "use auto, file or uring"))?;
            }
            if let Some(text) = file_store.retention_window {
                store.retention.window = parse_window(&text)
                    .ok_or_else(|| bad("retention_window", &text, "write e.g. 24h, 7d, 1h30m or forever"))?;
            }
            if let Some(text) = file_store.journal_budget {
                store.retention.max_journal_bytes = parse_budget(&text).ok_or_else(|| {
                    bad(
                        "journal_budget",
                        &text,
                        "write a percentage of the volume size (100%), a size (20GiB) or unlimited",
                    )
                })?;
            }
            if let Some(text) = file_store.retention_interval {
                store.retention_interval = rewind_api::parse_duration(&text)
                    .filter(|d| !d.is_zero() && d.as_secs() <= 3600)
                    .ok_or_else(|| bad("retention_interval", &text, "write 1s to 1h, e.g. 10s"))?;
            }
            if let Some(value) = file_store.spare_segments {
                store.spare_segments = in_range("[store] spare_segments", value, &(0..=64), path)?;
            }
        }
        Ok(Config { data_dir, nbd_listen, control, replication_listen, nbd, store })
    }

    /// The configuration as a TOML file that `--config` accepts.
    pub fn to_toml(&self) -> String {
        let printed = PrintedConfig {
            data_dir: &self.data_dir,
            nbd_listen: &self.nbd_listen.text,
            control: &self.control,
            replication_listen: &self.replication_listen.text,
            nbd: PrintedNbd {
                max_connections: self.nbd.max_connections,
                handshake_timeout_ms: self.nbd.handshake_timeout.as_millis() as u64,
                max_inflight_requests: self.nbd.max_inflight_requests,
                idle_poll_us: self.nbd.idle_poll.as_micros() as u64,
            },
            store: PrintedStore {
                engine: engine_name(self.store.engine),
                retention_window: self.store.retention.window.map_or("forever".into(), format_duration),
                journal_budget: format_budget(self.store.retention.max_journal_bytes),
                retention_interval: format_duration(self.store.retention_interval),
                spare_segments: self.store.spare_segments,
            },
        };
        toml::to_string(&printed).unwrap_or_else(|error| format!("# cannot print config: {error}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(flags: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("rewindd").chain(flags.iter().copied())).unwrap()
    }

    fn load_file(text: &str) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rewindd.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&args(&["--config", path.to_str().unwrap()]))
    }

    #[test]
    fn listen_addresses_take_host_names() {
        // `localhost:PORT` resolves (to loopback); a bad port or no port is
        // a one-line error that says how to write an address.
        let config = Config::load(&args(&["--nbd-listen", "localhost:23821"])).unwrap();
        assert!(config.nbd_listen.addresses.iter().all(|a| a.ip().is_loopback() && a.port() == 23821));
        assert_eq!(config.nbd_listen.text, "localhost:23821");
        for bad in ["localhost:99999", "localhost", "127.0.0.1"] {
            let error = format!("{:#}", Config::load(&args(&["--nbd-listen", bad])).unwrap_err());
            assert!(error.starts_with(&format!("--nbd-listen {bad}: ")), "{error}");
            assert!(error.contains("write HOST:PORT") && !error.contains('\n'), "{error}");
        }
    }

    #[test]
    fn relative_paths_in_the_file_are_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rewindd.toml");
        std::fs::write(&path, "data_dir = \"d2\"\ncontrol = \"run/d2.sock\"\n").unwrap();
        let config = Config::load(&args(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(config.data_dir, dir.path().join("d2"));
        assert_eq!(config.control, dir.path().join("run/d2.sock"));
        // Absolute ones are kept; flags stay relative to the working dir.
        std::fs::write(&path, "data_dir = \"/srv/rewind\"\n").unwrap();
        let config = Config::load(&args(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(config.data_dir, Path::new("/srv/rewind"));
        assert_eq!(config.control, Path::new("/srv/rewind/control.sock"));
        let config =
            Config::load(&args(&["--config", path.to_str().unwrap(), "--data-dir", "here"])).unwrap();
        assert_eq!(config.data_dir, Path::new("here"));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::load(&args(&[])).unwrap();
        assert_eq!(config.data_dir, Path::new("rewind-data"));
        assert_eq!(config.control, Path::new("rewind-data/control.sock"));
        assert_eq!(config.nbd_listen.addresses, ["127.0.0.1:10809".parse::<SocketAddr>().unwrap()]);
        assert_eq!(config.replication_listen.addresses, ["127.0.0.1:10810".parse::<SocketAddr>().unwrap()]);
    }

    #[test]
    fn nonsense_nbd_settings_are_refused_at_load() {
        // 0 connections would refuse every client; 0 in flight would hang
        // every request: refuse them, and absurd ones, with the valid range.
        for (text, key) in [
            ("[nbd]\nmax_connections = 0\n", "max_connections = 0"),
            ("[nbd]\nmax_inflight_requests = 0\n", "max_inflight_requests = 0"),
            ("[nbd]\nhandshake_timeout_ms = 0\n", "handshake_timeout_ms = 0"),
            ("[nbd]\nmax_connections = 10000000\n", "max_connections = 10000000"),
        ] {
            let error = format!("{:#}", load_file(text).unwrap_err());
            assert!(error.contains(key) && error.contains("out of range: use"), "{text}: {error}");
        }
        let error = format!("{:#}", load_file("[nbd]\nmax_connections = -1\n").unwrap_err());
        assert!(
            error.contains("is not valid (line 2: `max_connections = -1`)") && !error.contains('\n'),
            "{error}"
        );
        assert!(error.contains("expected a whole number, 0 or more") && !error.contains("usize"), "{error}");
        let error = format!("{:#}", load_file("[store]\nretention_window = 2\n").unwrap_err());
        assert!(error.contains("(line 2: `retention_window = 2`): invalid type"), "{error}");
        let config = load_file("[nbd]\nmax_connections = 8\nhandshake_timeout_ms = 500\n").unwrap();
        assert_eq!(config.nbd.max_connections, 8);
        assert_eq!(config.nbd.handshake_timeout, Duration::from_millis(500));
    }

    #[test]
    fn store_settings_parse_print_and_round_trip() {
        // [store] values in their documented forms load into the store's
        // options, print back in the same forms, and the printed config
        // loads to the same settings; nonsense is one line naming the key.
        let config = load_file(
            "[store]\nengine = \"uring\"\nretention_window = \"7d\"\njournal_budget = \"20GiB\"\n\
             retention_interval = \"30s\"\nspare_segments = 4\n",
        )
        .unwrap();
        assert_eq!(config.store.engine, store::EngineChoice::Uring);
        assert_eq!(config.store.retention.window, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(config.store.retention.max_journal_bytes, Some(store::JournalBudget::Bytes(20 << 30)));
        assert_eq!(config.store.retention_interval, Duration::from_secs(30));
        assert_eq!(config.store.options().spare_segments, 4);
        let printed = config.to_toml();
        assert!(printed.contains("retention_window = \"7d\""), "{printed}");
        assert_eq!(load_file(&printed).unwrap().store, config.store);

        let forever =
            load_file("[store]\nretention_window = \"forever\"\njournal_budget = \"unlimited\"\n").unwrap();
        assert_eq!(forever.store.retention, store::RetentionPolicy::KEEP_ALL);
        let defaults = Config::load(&args(&[])).unwrap();
        assert_eq!(defaults.store.retention, store::RetentionPolicy::default());
        assert!(defaults.to_toml().contains("journal_budget = \"100%\""));

        for (text, key) in [
            ("engine = \"fast\"", "[store] engine"),
            ("retention_window = \"0s\"", "[store] retention_window"),
            ("journal_budget = \"lots\"", "[store] journal_budget"),
            ("journal_budget = \"0%\"", "[store] journal_budget"),
            ("retention_interval = \"2h\"", "[store] retention_interval"),
            ("spare_segments = 1000", "[store] spare_segments"),
        ] {
            let error = format!("{:#}", load_file(&format!("[store]\n{text}\n")).unwrap_err());
            assert!(error.contains(key) && !error.contains('\n'), "{text}: {error}");
        }
    }
}
