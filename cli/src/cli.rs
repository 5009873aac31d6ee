//! The command line, as clap definitions. Completions and man pages are
//! generated from these (`rewind completions SHELL`, `rewind man`).
//!
//! Arguments are checked here, before anything reaches the daemon: a bad
//! name, size or point is a usage error (exit 2) with a one-line reason.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use rewind_api::Point;

#[derive(Debug, Parser)]
#[command(
    name = "rewind",
    version,
    about = "Manage rewind volumes: snapshots, timelines, rollbacks, clones and exports",
    long_about = "Manage rewind volumes: snapshots, timelines, rollbacks, clones and exports.\n\n\
        rewind talks to a running rewindd through its control socket: --control PATH, else \
        $REWIND_CONTROL, else ./rewind-data/control.sock.\n\n\
        POINT is any point in a volume's history: #SEQ (a journal sequence number), an RFC 3339 \
        time (2026-11-28T02:13:50Z), a time relative to now (-90s, -15m, -2h, -1d, -1h30m) or a \
        snapshot name.\n\n\
        Exit codes: 0 done, 1 failed, 2 usage error.",
    propagate_version = true,
    disable_help_subcommand = true
)]
pub struct Cli {
    /// The daemon's control socket [default: $REWIND_CONTROL, else ./rewind-data/control.sock]
    #[arg(long, global = true, value_name = "PATH", env = "REWIND_CONTROL")]
    pub control: Option<PathBuf>,
    /// Print the result as JSON (errors too: {"error", "hint"} on stdout)
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show, resize and delete volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Bookmark the head of a volume by name, list and delete bookmarks
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Writes and bytes per interval, and the points to go back to
    Timeline(TimelineArgs),
    /// Make a volume's head the image at POINT (undoable: prints how)
    Rollback(RollbackArgs),
    /// Create a writable copy-on-write clone of a point
    Clone(CloneArgs),
    /// Print the nbd:// URI that serves a point, read-only
    Export(ExportArgs),
    /// The daemon: version, addresses, volumes, connections
    Status,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), or write one per command into DIR
    Man {
        /// Write rewind.1, rewind-volume.1, ... into this directory
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// [not available yet] Start continuous replication of a volume to a peer
    Replicate(Unavailable),
    /// [not available yet] Replication lag and link state
    Replication(Unavailable),
    /// [not available yet] Print this daemon's certificate
    Identity(Unavailable),
    /// [not available yet] Pin, list and remove peers
    Peer(Unavailable),
    /// [not available yet] Make a replica writable (failover)
    Promote(Unavailable),
    /// [not available yet] Check a volume's integrity, and a replica against its primary
    Verify(Unavailable),
}

/// Arguments of a command that comes in a later release: taken as they
/// are, so the user gets "not available yet" rather than a usage error.
#[derive(Debug, Args)]
pub struct Unavailable {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create an empty volume (reads as zeros), served at nbd://ADDR/NAME
    Create {
        #[arg(value_parser = volume_name)]
        name: String,
        /// Size with a unit: 20GiB, 512M, 1T (K/M/G/T are powers of 1024; KB/MB/GB powers of 1000)
        #[arg(long, value_parser = size)]
        size: u64,
    },
    /// Every volume, with its size, history and journal
    List,
    /// One volume: history, snapshots, clones, journal, NBD URI
    Show {
        #[arg(value_parser = volume_name)]
        name: String,
    },
    /// Change a volume's size (shrinking is undoable with a rollback)
    Resize {
        #[arg(value_parser = volume_name)]
        name: String,
        /// New size with a unit: 30GiB, 512M
        #[arg(long, value_parser = size)]
        size: u64,
    },
    /// Delete a volume and all its history
    Delete {
        #[arg(value_parser = volume_name)]
        name: String,
        /// Delete even if clones read through it: it disappears, but its data is kept until its last clone is deleted
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Bookmark the volume's head as it is now; kept until deleted
    Create {
        #[arg(value_parser = volume_name)]
        volume: String,
        #[arg(value_parser = snapshot_name)]
        name: String,
    },
    /// A volume's snapshots
    List {
        #[arg(value_parser = volume_name)]
        volume: String,
    },
    /// Delete a snapshot (its point stays in the history while retained)
    Delete {
        #[arg(value_parser = volume_name)]
        volume: String,
        #[arg(value_parser = any_name)]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct TimelineArgs {
    #[arg(value_parser = volume_name)]
    pub volume: String,
    /// Start of the timeline: a POINT, e.g. -24h, -15m, 2026-11-28T02:00:00Z
    #[arg(long, default_value = "-24h", allow_hyphen_values = true, value_parser = point, value_name = "POINT")]
    pub since: String,
    /// Length of each row: 30s, 5m, 1h, 1d [default: picked for about 48 rows]
    #[arg(long, value_parser = duration_seconds, value_name = "DURATION")]
    pub interval: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[arg(value_parser = volume_name)]
    pub volume: String,
    /// The point whose image the head gets
    #[arg(long, allow_hyphen_values = true, value_parser = point, value_name = "POINT")]
    pub to: String,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    #[arg(value_parser = volume_name)]
    pub volume: String,
    /// The point to clone
    #[arg(long, allow_hyphen_values = true, value_parser = point, value_name = "POINT")]
    pub at: String,
    /// Name of the new volume
    #[arg(long, value_parser = volume_name, value_name = "NEW")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(value_parser = volume_name)]
    pub volume: String,
    /// The point to serve
    #[arg(long, allow_hyphen_values = true, value_parser = point, value_name = "POINT")]
    pub at: String,
}

fn volume_name(text: &str) -> Result<String, String> {
    rewind_api::validate_volume_name(text).map(|()| text.to_owned()).map_err(|error| error.to_string())
}

fn any_name(text: &str) -> Result<String, String> {
    rewind_api::point::validate_name(text).map(|()| text.to_owned()).map_err(|error| error.to_string())
}

fn snapshot_name(text: &str) -> Result<String, String> {
    any_name(text)?;
    match Point::parse(text) {
        Ok(Point::Snapshot(_)) => Ok(text.to_owned()),
        _ => {
            Err(format!("`{text}` would be read as a point in time, not a snapshot: start it with a letter"))
        }
    }
}

fn point(text: &str) -> Result<String, String> {
    Point::parse(text).map(|_| text.to_owned()).map_err(|error| error.to_string())
}

fn size(text: &str) -> Result<u64, String> {
    rewind_api::parse_size(text).map_err(|error| error.to_string())
}

/// `90s`, `15m`, `1h`, `1d`, `1h30m` or plain seconds.
fn duration_seconds(text: &str) -> Result<u64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| format!("`{text}` is too long"));
    }
    match Point::parse(&format!("-{text}")) {
        Ok(Point::Ago(duration)) if duration.as_secs() > 0 => Ok(duration.as_secs()),
        _ => Err(format!("`{text}` is not a duration: write e.g. 30s, 5m, 1h, 1d or 1h30m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definitions_are_consistent() {
        // clap's own checks: no duplicate flags, valid defaults, and so on.
        Cli::command().debug_assert();
    }

    #[test]
    fn product_command_shapes_parse() {
        // The command lines of PRODUCT.md parse as written (the interface
        // is stable: scripts rely on it).
        for line in [
            "rewind volume create db --size 20GiB",
            "rewind volume list",
            "rewind volume show db",
            "rewind volume resize db --size 512M",
            "rewind volume delete db",
            "rewind volume delete db --force",
            "rewind snapshot create db before-upgrade",
            "rewind snapshot list db",
            "rewind snapshot delete db before-upgrade",
            "rewind timeline db",
            "rewind timeline db --since -24h",
            "rewind rollback db --to -15m",
            "rewind rollback db --to #812",
            "rewind rollback db --to 2026-11-28T02:13:50Z",
            "rewind clone db --at before-upgrade --name db-copy",
            "rewind export db --at -90s",
            "rewind status",
            "rewind --json status",
            "rewind status --json --control /run/rewind/control.sock",
        ] {
            let words: Vec<&str> = line.split(' ').collect();
            if let Err(error) = Cli::try_parse_from(&words) {
                panic!("{line}: {error}");
            }
        }
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        // Bad sizes, points and names fail in clap (exit 2), naming the problem.
        for (line, reason) in [
            ("rewind volume create db --size 20XB", "not a size"),
            ("rewind volume create db --size 1000", "multiple of 512"),
            ("rewind volume create ../db --size 1G", "not a valid name"),
            ("rewind rollback db --to -15x", "relative time"),
            ("rewind rollback db --to #x", "sequence number"),
            ("rewind export db --at 2026-13-01T00:00:00Z", "RFC 3339"),
            ("rewind snapshot create db 2026", "point in time"),
            ("rewind timeline db --interval 5x", "duration"),
        ] {
            let words: Vec<&str> = line.split(' ').collect();
            let error = Cli::try_parse_from(&words).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{line}");
            assert!(error.to_string().contains(reason), "{line}: {error}");
        }
    }

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(duration_seconds("90"), Ok(90));
        assert_eq!(duration_seconds("5m"), Ok(300));
        assert_eq!(duration_seconds("1h30m"), Ok(5400));
        assert!(duration_seconds("0s").is_err());
        assert!(duration_seconds("").is_err());
    }
}
