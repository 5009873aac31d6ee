//! The command line, as clap definitions. Completions and man pages are
//! generated from these (`rewind completions SHELL`, `rewind man`).
//!
//! Arguments are checked here, before anything reaches the daemon: a bad
//! name, size or point is a usage error (exit 2) with a one-line reason.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use rewind_api::Point;

/// The forms of POINT, for the help of every command that takes one (and
/// so for their man pages).
const POINT_FORMS: &str = "POINT is any point in the volume's history:\n  \
    #SEQ                   a journal sequence number, the exact handle (quote it in a shell: '#812')\n  \
    2026-11-28T02:13:50Z   an RFC 3339 time, with Z or an offset (+01:00); printed times are valid\n  \
    -90s, -15m, -2h, -1d   that long before now (units s, m, h, d, w; combined: -1h30m)\n  \
    NAME                   a snapshot";

/// Longest `--interval`: 365 days.
const MAX_INTERVAL_SECONDS: u64 = 365 * 86_400;

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
    /// Give up when the daemon has not answered in this many seconds (a
    /// stopped or stuck daemon); 0 waits forever. verify waits forever
    /// unless given
    #[arg(long, global = true, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, show, resize, reopen and delete volumes
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Bookmark the head of a volume by name, list and delete bookmarks
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Writes and bytes per interval, and the points to go back to
    #[command(after_help = POINT_FORMS)]
    Timeline(TimelineArgs),
    /// Make a volume's head the image at POINT (undoable: prints how)
    #[command(after_help = POINT_FORMS)]
    Rollback(RollbackArgs),
    /// Create a writable copy-on-write clone of a point
    #[command(after_help = POINT_FORMS)]
    Clone(CloneArgs),
    /// Print the nbd:// URI that serves a point, read-only
    #[command(after_help = POINT_FORMS)]
    Export(ExportArgs),
    /// The daemon: version, addresses, volumes, connections
    Status,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell to complete for
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
    /// Read back everything a volume keeps and check its checksums
    Verify(VerifyArgs),
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
        /// Name of the new volume: 1 to 64 of A-Z a-z 0-9 . _ - (not starting with . or -)
        #[arg(value_parser = volume_name)]
        name: String,
        /// Size with a unit: 20GiB, 512M, 1T (K/M/G/T are powers of 1024; KB/MB/GB powers of 1000)
        #[arg(long, value_parser = size, allow_hyphen_values = true)]
        size: u64,
    },
    /// Every volume, with its size, history, journal and NBD connections
    List,
    /// One volume: history, snapshots, clones, journal, NBD URI and connections
    Show {
        /// The volume
        #[arg(value_parser = volume_name)]
        name: String,
    },
    /// Change a volume's size (shrinking is undoable with a rollback)
    #[command(long_about = "Change a volume's size (shrinking is undoable with a rollback).\n\n\
        A shrink is refused while NBD clients are connected to the head, unless --force: it cuts the \
        disk under a running VM. Growing is not refused (clients keep the size they saw until they \
        reconnect).")]
    Resize {
        /// The volume
        #[arg(value_parser = volume_name)]
        name: String,
        /// New size with a unit: 30GiB, 512M
        #[arg(long, value_parser = size, allow_hyphen_values = true)]
        size: u64,
        /// Shrink even if NBD clients are connected to the head (their reads and writes past the
        /// new end fail)
        #[arg(long)]
        force: bool,
    },
    /// Reopen a volume that refuses writes after an IO error (ENOSPC, EIO), once the cause is fixed
    #[command(long_about = "Reopen a volume that refuses writes after an IO error (ENOSPC, EIO), once the \
        cause is fixed (disk space freed, disk replaced): the volume is opened afresh from its files, as a \
        daemon restart would, and takes writes again. Every write acknowledged as durable is kept.\n\n\
        NBD clients connected to the head keep the old volume, and their writes keep failing until they \
        reconnect: the reopen is refused while any are connected, unless --force.")]
    Reopen {
        /// The volume
        #[arg(value_parser = volume_name)]
        name: String,
        /// Reopen even if NBD clients are connected to the head (they must reconnect to write again)
        #[arg(long)]
        force: bool,
    },
    /// Delete a volume and all its history
    #[command(long_about = "Delete a volume and all its history.\n\n\
        Refused while NBD clients are connected to the volume (its head or its points), clones read \
        through it, or it has named snapshots (kept until deleted); --force overrides all three.")]
    Delete {
        /// The volume
        #[arg(value_parser = volume_name)]
        name: String,
        /// Delete even if NBD clients are connected (their writes then fail), clones read through it
        /// (it disappears, but its data is kept until its last clone is deleted), or it has named
        /// snapshots (deleted with it)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Bookmark the volume's head as it is now; kept until deleted
    Create {
        /// The volume
        #[arg(value_parser = volume_name)]
        volume: String,
        /// Name of the snapshot: starts with a letter or _, then A-Z a-z 0-9 . _ -
        #[arg(value_parser = snapshot_name)]
        name: String,
    },
    /// A volume's snapshots
    List {
        /// The volume
        #[arg(value_parser = volume_name)]
        volume: String,
    },
    /// Delete a snapshot (its point stays in the history while retained)
    Delete {
        /// The volume
        #[arg(value_parser = volume_name)]
        volume: String,
        /// The snapshot
        #[arg(value_parser = any_name)]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct TimelineArgs {
    /// The volume
    #[arg(value_parser = volume_name)]
    pub volume: String,
    /// Start of the timeline: a POINT, e.g. -24h, -15m, 2026-11-28T02:00:00Z
    #[arg(long, default_value = "-24h", allow_hyphen_values = true, value_parser = point, value_name = "POINT")]
    pub since: String,
    /// Length of each row, 1s to 365d: 30s, 5m, 1h, 1d, 1w [default: picked for about 48 rows]
    #[arg(long, value_parser = duration_seconds, value_name = "DURATION")]
    pub interval: Option<u64>,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The volume
    #[arg(value_parser = volume_name)]
    pub volume: String,
    /// The point whose image the head gets (forms below)
    #[arg(long, allow_hyphen_values = true, value_parser = point, value_name = "POINT")]
    pub to: String,
    /// Roll back even if NBD clients are connected to the head: a running VM's next write corrupts its
    /// filesystem, so stop it first
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The volume to clone
    #[arg(value_parser = volume_name)]
    pub volume: String,
    /// The point to clone (forms below)
    #[arg(long, allow_hyphen_values = true, value_parser = point, value_name = "POINT")]
    pub at: String,
    /// Name of the new volume
    #[arg(long, value_parser = volume_name, value_name = "NEW")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The volume
    #[arg(value_parser = volume_name)]
    pub volume: String,
    /// The point to serve (forms below)
    #[arg(long, allow_hyphen_values = true, value_parser = point, value_name = "POINT")]
    pub at: String,
}

/// `rewind verify VOL`.
#[derive(Debug, Args)]
#[command(
    after_help = "Reads every record of the volume's history (crc32c, and blake3 where stored) and every \
                  folded record still holding base data, and names the damaged ones. It reads as much as the \
                  journal holds (about half a second per GiB when cached, disk speed otherwise) while the \
                  volume keeps serving. Exit 0: no damage; exit 1: damage found (or the check failed). \
                  With --at POINT, only what that point's image is made of: the history up to it and the base \
                  data. Comparing a replica with its primary (--peer) comes with replication."
)]
pub struct VerifyArgs {
    /// The volume
    #[arg(value_parser = volume_name)]
    pub volume: String,
    /// Check only what the image at this point is made of: the history up to it and the base data
    #[arg(long, allow_hyphen_values = true, value_parser = point, value_name = "POINT")]
    pub at: Option<String>,
    /// [not available yet] Compare with the replica on this peer
    #[arg(long, value_name = "PEER")]
    pub peer: Option<String>,
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

/// `90s`, `15m`, `1h`, `1d`, `1w`, `1h30m` or plain seconds: 1 s to 365 d.
fn duration_seconds(text: &str) -> Result<u64, String> {
    let seconds = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse().unwrap_or(u64::MAX)
    } else {
        match rewind_api::parse_duration(text) {
            Some(duration) => duration.as_secs(),
            None => {
                return Err(format!("`{text}` is not a duration: write e.g. 30s, 5m, 1h, 1d, 1w or 1h30m"));
            }
        }
    };
    if seconds == 0 || seconds > MAX_INTERVAL_SECONDS {
        return Err(format!(
            "`{text}` is out of range: an interval is 1s to 365d (e.g. 30s, 5m, 1h, 1d, 1w)"
        ));
    }
    Ok(seconds)
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
            "rewind volume reopen db",
            "rewind volume reopen db --force",
            "rewind rollback db --to -15m --force",
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
            ("rewind timeline db --interval 0", "1s to 365d"),
            ("rewind timeline db --interval 0s", "1s to 365d"),
            ("rewind timeline db --interval 366d", "1s to 365d"),
            ("rewind timeline db --interval 1y", "1w"),
            ("rewind volume create db --size -5G", "`-5G` is negative"),
            ("rewind volume resize db --size -5G", "`-5G` is negative"),
            ("rewind rollback db --to 90s", "did you mean -90s?"),
            ("rewind rollback db --to +5m", "in the future"),
            ("rewind export db --at 2026-11-28T17:12:00", "add Z for UTC"),
        ] {
            let words: Vec<&str> = line.split(' ').collect();
            let error = Cli::try_parse_from(&words).unwrap_err();
            assert_eq!(error.exit_code(), 2, "{line}");
            assert!(error.to_string().contains(reason), "{line}: {error}");
        }
    }

    #[test]
    fn point_taking_commands_list_the_point_forms_in_their_help() {
        // `rewind rollback --help` (and so its man page) says what a POINT is.
        let mut command = Cli::command();
        for name in ["rollback", "clone", "export", "timeline"] {
            let help = command.find_subcommand_mut(name).unwrap().render_help().to_string();
            assert!(
                help.contains("#SEQ") && help.contains("-90s") && help.contains("RFC 3339"),
                "{name}: {help}"
            );
        }
    }

    #[test]
    fn every_argument_has_a_description() {
        // `<VOLUME>` alone says nothing: each argument of each command has help.
        fn walk(command: &clap::Command, path: &str) {
            for argument in command.get_arguments() {
                let id = argument.get_id().as_str();
                if argument.is_hide_set() || matches!(id, "help" | "version") {
                    continue;
                }
                assert!(argument.get_help().is_some(), "{path} {id} has no help");
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        walk(&Cli::command(), "rewind");
    }

    #[test]
    fn durations_take_units_or_seconds() {
        assert_eq!(duration_seconds("90"), Ok(90));
        assert_eq!(duration_seconds("5m"), Ok(300));
        assert_eq!(duration_seconds("1h30m"), Ok(5400));
        assert_eq!(duration_seconds("365d"), Ok(31_536_000));
        assert_eq!(duration_seconds("1w"), Ok(604_800));
        assert!(duration_seconds("0s").is_err());
        assert!(duration_seconds("0").is_err());
        assert!(duration_seconds("99999999999999999999999").is_err());
        assert!(duration_seconds("").is_err());
    }
}
