//! `rewind`: the command line for a running `rewindd`.
//!
//! Every command is one or two requests to the daemon's control API
//! (`docs/openapi.json`) over its Unix socket: `--control PATH`, else
//! `$REWIND_CONTROL`, else `./rewind-data/control.sock`. Output is a human
//! table by default and the daemon's JSON with `--json`. Exit codes: 0
//! done, 1 failed, 2 usage error.

mod cli;
mod client;
mod output;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use rewind_api::control::{
    CloneVolume, Cloned, CreateSnapshot, CreateVolume, Deleted, Exported, NbdConnections, Reopened, Resized,
    Rollback, RolledBack, SizeArg, SnapshotCreated, SnapshotDeleted, SnapshotList, Status, Timeline,
    Verified, VolumeCreated, VolumeDetail, VolumeInfo, VolumeList, percent_encode,
};
use rewind_api::{format_size, format_size_exact};
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::cli::{Cli, Command, SnapshotCommand, VolumeCommand};
use crate::client::{Client, DEFAULT_SOCKET, Failure, SocketSource, with_progress};
use crate::output::{Table, display_time, duration, plural, shell_word};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(error) => return usage_error(error),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => return usage_error(error),
    };
    let source = match matches.value_source("control") {
        Some(ValueSource::CommandLine) => SocketSource::Flag,
        Some(ValueSource::EnvVariable) => SocketSource::Environment,
        _ => SocketSource::Default,
    };
    let socket = cli.control.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let timeout = match cli.timeout {
        Some(0) => None,
        Some(seconds) => Some(std::time::Duration::from_secs(seconds)),
        None => Some(client::DEFAULT_TIMEOUT),
    };
    let client = Client::new(socket, source, timeout);
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("rewind: cannot start: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match runtime.block_on(run(cli, &client)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            report(&failure, json);
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// Help and version go out as clap prints them; every other parse error is
/// one line on stderr (or a JSON error with `--json`) and exit 2.
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
    let mut line = line.strip_prefix("error: ").unwrap_or(&line).to_owned();
    if error.kind() == ErrorKind::InvalidValue
        && std::env::var_os("REWIND_CONTROL").is_some_and(|value| value.is_empty())
        && !std::env::args().any(|arg| arg == "--control" || arg.starts_with("--control="))
    {
        line = "$REWIND_CONTROL is set but empty: unset it, or set it to the daemon's control socket".into();
    }
    if matches!(
        error.kind(),
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        // clap renders the command's help, whose first line is its about.
        let (path, command) = resolve_command(std::env::args().skip(1));
        let names: Vec<&str> =
            command.get_subcommands().map(|sub| sub.get_name()).filter(|name| *name != "help").collect();
        let path = path.strip_prefix("rewind ").unwrap_or(&path);
        line = format!("{path} needs a subcommand: {}", names.join(", "));
    }
    // One line, as PRODUCT.md promises; `--help` is where the usage is,
    // and the hint (shown with --json, where it costs no extra line) says so.
    let hint = format!("{} --help shows the usage", command_path(std::env::args().skip(1)));
    let failure = Failure::new(line, Some(hint));
    if std::env::args().any(|arg| arg == "--json") {
        report(&failure, true);
    } else {
        eprintln!("rewind: {}", failure.error);
    }
    ExitCode::from(EXIT_USAGE)
}

/// The (sub)command the words name, as far as they name one:
/// `volume create db --size x` → `rewind volume create`.
fn command_path(words: impl Iterator<Item = String>) -> String {
    resolve_command(words).0
}

/// [`command_path`] and the clap command it names.
fn resolve_command(words: impl Iterator<Item = String>) -> (String, clap::Command) {
    let mut command = Cli::command();
    let mut path = String::from("rewind");
    for word in words.filter(|word| !word.starts_with('-')) {
        let Some(sub) = command.find_subcommand(&word).cloned() else { continue };
        path.push(' ');
        path.push_str(sub.get_name());
        command = sub;
    }
    (path, command)
}

fn report(failure: &Failure, json: bool) {
    if json {
        let body =
            rewind_api::control::ErrorBody { error: failure.error.clone(), hint: failure.hint.clone() };
        println!("{}", serde_json::to_string_pretty(&body).unwrap_or_default());
    } else {
        eprintln!("rewind: {}", failure.error);
        if let Some(hint) = &failure.hint {
            eprintln!("hint: {hint}");
        }
    }
}

/// Prints `value` as JSON (`--json`) or runs `human` to print it for people.
fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T) -> String) {
    let text =
        if json { serde_json::to_string_pretty(value).unwrap_or_default() + "\n" } else { human(value) };
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn volume_path(name: &str) -> String {
    format!("/v1/volumes/{name}")
}

async fn run(cli: Cli, client: &Client) -> Result<(), Failure> {
    let json = cli.json;
    let cli_timeout = cli.timeout;
    let progress = !json;
    match cli.command {
        Command::Volume(command) => volume(command, client, json).await,
        Command::Snapshot(command) => snapshot(command, client, json).await,
        Command::Timeline(args) => {
            let mut path =
                format!("{}/timeline?since={}", volume_path(&args.volume), percent_encode(&args.since, &[]));
            if let Some(interval) = args.interval {
                path.push_str(&format!("&interval={interval}"));
            }
            let timeline: Timeline = with_progress(
                &format!("reading the timeline of {}", args.volume),
                progress,
                client.get(&path),
            )
            .await?;
            print(json, &timeline, human_timeline);
            Ok(())
        }
        Command::Rollback(args) => {
            let request = Rollback { to: args.to.clone() };
            let force = if args.force { "?force=true" } else { "" };
            let path = format!("{}/rollback{force}", volume_path(&args.volume));
            let message = format!("rolling back {} to {}", args.volume, args.to);
            let done: RolledBack = with_progress(&message, progress, client.post(&path, &request)).await?;
            let control = match client.source() {
                SocketSource::Flag => {
                    format!(" --control {}", shell_word(&client.socket().display().to_string()))
                }
                _ => String::new(),
            };
            print(json, &done, |done| {
                // Clients were connected and the user went ahead: the undo
                // must not stop at them.
                let force = if done.nbd_connections > 0 { " --force" } else { "" };
                let mut text = format!(
                    "Rolled back {volume} to #{target} ({target_time}): the head is now #{new} with that image.\n\
                     The previous head #{previous} ({previous_time}) is kept in the history.\n\
                     Undo with: rewind rollback {volume} --to {undo}{force}{control}\n",
                    volume = done.volume,
                    target = done.target.seq,
                    target_time = display_time(&done.target.time),
                    new = done.new_head.seq,
                    previous = done.previous_head.seq,
                    previous_time = display_time(&done.previous_head.time),
                    undo = shell_word(&done.undo_to),
                );
                if done.size_bytes != done.previous_size_bytes {
                    text.push_str(&format!(
                        "The size went with it: {} before, {} now (the image's size at #{}).\n",
                        format_size_exact(done.previous_size_bytes),
                        format_size_exact(done.size_bytes),
                        done.target.seq
                    ));
                }
                if done.nbd_connections > 0 {
                    text.push_str(&format!(
                        "Warning: {} to the head saw the image change under it; restart what uses it (a VM: \
                         reboot it, and check its filesystem).\n",
                        plural(done.nbd_connections, "NBD connection")
                    ));
                }
                text
            });
            Ok(())
        }
        Command::Clone(args) => {
            let request = CloneVolume { at: args.at.clone(), name: args.name.clone() };
            let path = format!("{}/clone", volume_path(&args.volume));
            let message = format!("cloning {} at {}", args.volume, args.at);
            let cloned: Cloned = with_progress(&message, progress, client.post(&path, &request)).await?;
            print(json, &cloned, |cloned| {
                format!(
                    "Cloned {} at #{} ({}) as {}: {}, writable.\nServe it: {}\n",
                    cloned.source,
                    cloned.point.seq,
                    display_time(&cloned.point.time),
                    cloned.volume.name,
                    format_size_exact(cloned.volume.size_bytes),
                    cloned.uri
                )
            });
            Ok(())
        }
        Command::Verify(args) if args.peer.is_some() => Err(Failure::new(
            "rewind verify --peer is not available yet: this rewindd has no replication or peers".to_owned(),
            Some(format!("rewind verify {} checks the local volume today", args.volume)),
        )),
        Command::Verify(args) => {
            let at =
                args.at.as_ref().map(|at| format!("?at={}", percent_encode(at, &[]))).unwrap_or_default();
            let path = format!("{}/verify{at}", volume_path(&args.volume));
            let message = format!("verifying {}", args.volume);
            // Reading a volume back can take long: no limit unless asked.
            let patient;
            let client = match cli_timeout {
                Some(_) => client,
                None => {
                    patient = client.with_timeout(None);
                    &patient
                }
            };
            let verified: Verified =
                with_progress(&message, progress, client.post(&path, &serde_json::json!({}))).await?;
            // The volume's own report, then what a clone reads through.
            let mut checked = Vec::new();
            let mut damage = Vec::new();
            for (index, report) in std::iter::once(&verified).chain(&verified.through).enumerate() {
                let counts = format!(
                    "{} and {} of base data, {}",
                    plural(report.records, "history record"),
                    plural(report.base_records, "folded record"),
                    format_size(report.bytes)
                );
                let whose = match (index, &report.at) {
                    (0, Some(point)) => {
                        format!("{counts}, the image at #{} ({})", point.seq, display_time(&point.time))
                    }
                    (0, None) => counts,
                    (_, point) => format!(
                        "{counts} of {} at #{} (a clone base)",
                        report.volume,
                        point.as_ref().map_or(0, |point| point.seq)
                    ),
                };
                checked.push(whose);
                let mut what = Vec::new();
                if !report.corrupt.is_empty() {
                    let seqs: Vec<String> =
                        report.corrupt.iter().take(20).map(|seq| format!("#{seq}")).collect();
                    let more = if report.corrupt.len() > seqs.len() { ", ..." } else { "" };
                    let fail =
                        if report.corrupt.len() == 1 { "fails its checksum" } else { "fail their checksums" };
                    what.push(format!(
                        "{} {fail} ({}{more})",
                        plural(report.corrupt.len() as u64, "record"),
                        seqs.join(", ")
                    ));
                }
                if report.unreadable_base_bytes > 0 {
                    what.push(format!(
                        "{} of base data lie in no readable record",
                        format_size(report.unreadable_base_bytes)
                    ));
                }
                if !what.is_empty() {
                    let prefix = if index == 0 {
                        String::new()
                    } else {
                        format!("in {}, which it is cloned from, ", report.volume)
                    };
                    damage.push(format!("{prefix}{}", what.join("; ")));
                }
            }
            let checked = checked.join("; ");
            if verified.set_aside_files > 0 && !json {
                eprintln!(
                    "note: {} set aside by a recovery (seg-*.log.cut-*) {} not checked or served; after a damaged \
                     record they may hold acknowledged writes (rewind volume show {} says more)",
                    plural(verified.set_aside_files, "segment file"),
                    if verified.set_aside_files == 1 { "is" } else { "are" },
                    verified.volume
                );
            }
            if damage.is_empty() {
                print(json, &verified, |verified| {
                    format!("{}: no damage ({checked} checked).\n", verified.volume)
                });
                return Ok(());
            }
            Err(Failure::new(
                format!("{} is damaged: {}; intact: {checked}", verified.volume, damage.join("; ")),
                Some(
                    "the disk changed bytes after they were synced; check it (SMART, dmesg), then restore the \
                     affected ranges from a replica or a copy"
                        .into(),
                ),
            ))
        }
        Command::Export(args) => {
            let path = format!("{}/export?at={}", volume_path(&args.volume), percent_encode(&args.at, &[]));
            let message = format!("resolving {} at {}", args.volume, args.at);
            let exported: Exported = with_progress(&message, progress, client.get(&path)).await?;
            print(json, &exported, |exported| {
                // The URI alone on stdout, so `$(rewind export ...)` is the URI.
                eprintln!(
                    "{} as of #{} ({}), {}, read-only:",
                    exported.volume,
                    exported.point.seq,
                    display_time(&exported.point.time),
                    format_size_exact(exported.size_bytes)
                );
                format!("{}\n", exported.uri)
            });
            Ok(())
        }
        Command::Status => {
            let status: Status = client.get("/v1/status").await?;
            print(json, &status, human_status);
            Ok(())
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "rewind", &mut std::io::stdout());
            Ok(())
        }
        Command::Man { out } => man(out),
        unavailable @ (Command::Replicate(_)
        | Command::Replication(_)
        | Command::Identity(_)
        | Command::Peer(_)
        | Command::Promote(_)) => {
            let name = match unavailable {
                Command::Replicate(_) => "replicate",
                Command::Replication(_) => "replication",
                Command::Identity(_) => "identity",
                Command::Peer(_) => "peer",
                _ => "promote",
            };
            Err(Failure::new(
                format!("rewind {name} is not available yet: this rewindd has no replication or peers"),
                Some("they come in a later release; rewind --help lists what works today".into()),
            ))
        }
    }
}

async fn volume(command: VolumeCommand, client: &Client, json: bool) -> Result<(), Failure> {
    let progress = !json;
    match command {
        VolumeCommand::Create { name, size } => {
            let request = CreateVolume { name: name.clone(), size: SizeArg::Bytes(size) };
            let message = format!("creating volume {name}");
            let created: VolumeCreated =
                with_progress(&message, progress, client.post("/v1/volumes", &request)).await?;
            print(json, &created, |created| {
                if let Some(warning) = &created.warning {
                    eprintln!("warning: {warning}");
                }
                format!(
                    "Created volume {} ({}).\nServe it: {}\n",
                    created.volume.name,
                    format_size_exact(created.volume.size_bytes),
                    created.uri
                )
            });
        }
        VolumeCommand::List => {
            let list: VolumeList =
                with_progress("listing volumes", progress, client.get("/v1/volumes")).await?;
            print(json, &list, |list| {
                let mut table = Table::new(&[
                    "NAME",
                    "SIZE",
                    "HEAD",
                    "LAST WRITE",
                    "POINTS",
                    "SNAPSHOTS",
                    "JOURNAL",
                    "NBD",
                    "CLONE OF",
                ]);
                let mut notes = String::new();
                for volume in &list.volumes {
                    table.row(vec![
                        volume.name.clone(),
                        format_size(volume.size_bytes),
                        format!("#{}", volume.head.seq),
                        last_write(volume),
                        volume.points.to_string(),
                        volume.snapshot_count.to_string(),
                        format_size(volume.journal_bytes),
                        connections_cell(volume.nbd_connections),
                        volume.clone_of.as_ref().map_or("-".into(), |origin| {
                            format!("{}@#{}{}", origin.volume, origin.seq, deleted(origin))
                        }),
                    ]);
                    if let Some(error) = &volume.write_error {
                        notes.push_str(&refuses_writes(&volume.name, error));
                    }
                }
                if list.volumes.is_empty() {
                    "No volumes. Create one with: rewind volume create NAME --size 20GiB\n".into()
                } else {
                    table.render() + &notes
                }
            });
        }
        VolumeCommand::Show { name } => {
            let detail: VolumeDetail =
                with_progress(&format!("reading {name}"), progress, client.get(&volume_path(&name))).await?;
            print(json, &detail, human_volume);
        }
        VolumeCommand::Resize { name, size, force } => {
            let request = rewind_api::control::ResizeVolume { size: SizeArg::Bytes(size) };
            let path = format!("{}/resize{}", volume_path(&name), if force { "?force=true" } else { "" });
            let resized: Resized =
                with_progress(&format!("resizing {name}"), progress, client.post(&path, &request)).await?;
            if let Some(warning) = resized.warning.as_ref().filter(|_| !json) {
                eprintln!("warning: {warning}");
            }
            print(json, &resized, |resized| {
                let Some(seq) = resized.seq else {
                    return format!(
                        "{} is already {}: nothing to do.\n",
                        resized.volume,
                        format_size_exact(resized.new_size_bytes)
                    );
                };
                let mut text = format!(
                    "Resized {} from {} to {} (#{seq}).\n",
                    resized.volume,
                    format_size_exact(resized.old_size_bytes),
                    format_size_exact(resized.new_size_bytes),
                );
                if resized.new_size_bytes < resized.old_size_bytes {
                    text.push_str(&format!(
                        "The cut tail is still in the history. To get it back (this also discards the writes \
                         made after the resize): rewind rollback {} --to {}\n",
                        resized.volume,
                        shell_word(&format!("#{}", seq.saturating_sub(1)))
                    ));
                }
                text
            });
        }
        VolumeCommand::Reopen { name, force } => {
            let path = format!("{}/reopen{}", volume_path(&name), if force { "?force=true" } else { "" });
            let reopened: Reopened = with_progress(
                &format!("reopening {name}"),
                progress,
                client.post(&path, &serde_json::json!({})),
            )
            .await?;
            print(json, &reopened, |reopened| {
                let volume = &reopened.volume;
                let mut text = match (&reopened.cleared_write_error, &volume.write_error) {
                    (_, Some(error)) => format!(
                        "Reopened {}, but it refuses writes again: {error}.\nFix the cause first, then run \
                         rewind volume reopen {} again.\n",
                        volume.name, volume.name
                    ),
                    (Some(cleared), None) => format!(
                        "Reopened {} at #{}: it takes writes again (it had refused them after: {cleared}).\n",
                        volume.name, volume.head.seq
                    ),
                    (None, None) => format!(
                        "Reopened {} at #{} (it was not refusing writes).\n",
                        volume.name, volume.head.seq
                    ),
                };
                if reopened.stale_nbd_connections > 0 {
                    text.push_str(&format!(
                        "Warning: {} to the head still use the old volume: their writes keep failing \
                         until their clients reconnect.\n",
                        plural(reopened.stale_nbd_connections, "NBD connection")
                    ));
                }
                text
            });
        }
        VolumeCommand::Delete { name, force } => {
            let path = format!("{}{}", volume_path(&name), if force { "?force=true" } else { "" });
            let deleted: Deleted =
                with_progress(&format!("deleting {name}"), progress, client.delete(&path)).await?;
            print(json, &deleted, |deleted| {
                let mut text = if deleted.clones_kept.is_empty() {
                    format!("Deleted volume {} and its history.\n", deleted.volume)
                } else {
                    format!(
                        "Deleted volume {}; its data is kept until its clones ({}) are deleted.\n",
                        deleted.volume,
                        deleted.clones_kept.join(", ")
                    )
                };
                if deleted.nbd_connections > 0 {
                    text.push_str(&format!(
                        "Warning: {} still open to it: writes now fail; reads show the deleted data \
                         until the client disconnects.\n",
                        plural(deleted.nbd_connections, "NBD connection")
                    ));
                }
                text
            });
        }
    }
    Ok(())
}

async fn snapshot(command: SnapshotCommand, client: &Client, json: bool) -> Result<(), Failure> {
    match command {
        SnapshotCommand::Create { volume, name } => {
            let path = format!("{}/snapshots", volume_path(&volume));
            let message = format!("snapshotting {volume}");
            let request = CreateSnapshot { name };
            let snapshot: SnapshotCreated =
                with_progress(&message, !json, client.post(&path, &request)).await?;
            print(json, &snapshot, |snapshot| {
                format!(
                    "Created snapshot {name} of {volume} at #{seq} ({time}); kept until deleted.\n\
                     Serve it: rewind export {volume} --at {name}\n",
                    name = snapshot.name,
                    volume = snapshot.volume,
                    seq = snapshot.seq,
                    time = display_time(&snapshot.time)
                )
            });
        }
        SnapshotCommand::List { volume } => {
            let list: SnapshotList = client.get(&format!("{}/snapshots", volume_path(&volume))).await?;
            print(json, &list, |list| {
                if list.snapshots.is_empty() {
                    return format!(
                        "{} has no snapshots. Create one with: rewind snapshot create {} NAME\n",
                        list.volume, list.volume
                    );
                }
                let mut table = Table::new(&["NAME", "SEQ", "TIME"]);
                for snapshot in &list.snapshots {
                    table.row(vec![
                        snapshot.name.clone(),
                        format!("#{}", snapshot.seq),
                        display_time(&snapshot.time),
                    ]);
                }
                table.render()
            });
        }
        SnapshotCommand::Delete { volume, name } => {
            let path = format!("{}/snapshots/{name}", volume_path(&volume));
            let message = format!("deleting snapshot {name} of {volume}");
            let deleted: SnapshotDeleted = with_progress(&message, !json, client.delete(&path)).await?;
            print(json, &deleted, |deleted| {
                format!(
                    "Deleted snapshot {} of {} (its point stays in the history while retained).\n",
                    deleted.snapshot, deleted.volume
                )
            });
        }
    }
    Ok(())
}

fn parse_time(text: &str) -> Option<i128> {
    OffsetDateTime::parse(text, &Rfc3339).ok().map(OffsetDateTime::unix_timestamp_nanos)
}

/// ` (deleted)` after the name of a clone's deleted parent.
fn deleted(origin: &rewind_api::control::CloneOrigin) -> &'static str {
    if origin.deleted { " (deleted)" } else { "" }
}

fn human_timeline(timeline: &Timeline) -> String {
    let mut out = format!(
        "{}: history #{} ({}) to #{} ({}); {} per row\n",
        timeline.volume,
        timeline.first.seq,
        display_time(&timeline.first.time),
        timeline.head.seq,
        display_time(&timeline.head.time),
        duration(timeline.interval_seconds)
    );
    let interval = i128::from(timeline.interval_seconds) * 1_000_000_000;
    let mut table = Table::new(&["START", "WRITES", "BYTES", "POINT AT END", "SNAPSHOTS"]);
    let starts: Vec<Option<i128>> = timeline.buckets.iter().map(|bucket| parse_time(&bucket.start)).collect();
    for (row, bucket) in timeline.buckets.iter().enumerate() {
        let start = starts[row];
        // A row ends where the next begins: the first row may start at the
        // history's start, off the interval's grid.
        let end = starts.get(row + 1).copied().flatten().or(start.map(|start| start + interval));
        let snapshots: Vec<&str> = timeline
            .snapshots
            .iter()
            .filter(|snapshot| {
                matches!((start, end, parse_time(&snapshot.time)), (Some(start), Some(end), Some(time)) if time >= start && time < end)
            })
            .map(|snapshot| snapshot.name.as_str())
            .collect();
        table.row(vec![
            display_time(&bucket.start),
            bucket.writes.to_string(),
            format_size(bucket.bytes),
            bucket.last_seq.map_or("-".into(), |seq| format!("#{seq}")),
            snapshots.join(", "),
        ]);
    }
    out.push_str(&table.render());
    out
}

fn human_status(status: &Status) -> String {
    let mut out = format!(
        "rewindd {} (pid {}), up {}\n  data dir   {}\n  control    {}\n  NBD        {} ({})\n  volumes    {} ({} of journal)\n",
        status.version,
        status.pid,
        duration(status.uptime_seconds),
        status.data_dir,
        status.control_socket,
        status.nbd_listen,
        plural(status.nbd_connections, "connection"),
        status.volumes,
        format_size(status.journal_bytes)
    );
    for dir in &status.not_served {
        out.push_str(&format!(
            "  NOT SERVED {}: {} (files kept; the daemon's log has more)\n",
            dir.dir, dir.reason
        ));
    }
    out
}

/// The time of the last write (zeroes and trims count; snapshots, resizes
/// and rollbacks do not), or `-` for a volume never written.
fn last_write(volume: &VolumeInfo) -> String {
    volume.last_write.as_ref().map_or_else(|| "-".into(), |point| display_time(&point.time))
}

/// `-`, `1 head`, `2 head, 1 point`.
fn connections_cell(connections: NbdConnections) -> String {
    match (connections.head, connections.points) {
        (0, 0) => "-".into(),
        (head, 0) => format!("{head} head"),
        (0, points) => plural(points, "point"),
        (head, points) => format!("{head} head, {}", plural(points, "point")),
    }
}

fn refuses_writes(volume: &str, error: &str) -> String {
    format!(
        "{volume} refuses writes after an IO error ({error}); fix the cause (free disk space, check the disk), \
         then: rewind volume reopen {volume}\n"
    )
}

fn human_volume(detail: &VolumeDetail) -> String {
    let volume = &detail.volume;
    let mut out = format!("Volume {}\n", volume.name);
    let mut line = |key: &str, value: String| out.push_str(&format!("  {key:<12} {value}\n"));
    line("size", format_size_exact(volume.size_bytes));
    line(
        "history",
        format!(
            "#{} ({}) to #{} ({}), {}",
            volume.first.seq,
            display_time(&volume.first.time),
            volume.head.seq,
            display_time(&volume.head.time),
            plural(volume.points, "point")
        ),
    );
    line("last write", last_write(volume));
    line("durable", format!("#{}", volume.durable_seq));
    let budget = detail
        .journal_budget_bytes
        .map_or(String::new(), |budget| format!(" (budget {} of written data)", format_size(budget)));
    line(
        "journal",
        format!(
            "{} in {}: history {}{budget}, base data {}, dead {}",
            format_size(volume.journal_bytes),
            plural(detail.journal_segments, "segment"),
            format_size(detail.history_bytes),
            format_size(detail.base_journal_bytes),
            format_size(detail.dead_journal_bytes)
        ),
    );
    line("base file", format!("{} of base image data", format_size(detail.base_bytes)));
    line("index", format!("{} in memory", format_size(detail.index_memory_bytes)));
    if detail.recovery.set_aside_files > 0 {
        line(
            "SET ASIDE",
            format!(
                "{} ({}) past a journal end a recovery found: seg-*.log.cut-* in the volume's directory, \
                 kept (deleting the volume takes --force while they are there); after a damaged record \
                 they may hold acknowledged writes no longer served (docs/journal.md, \"Recovery\"; the \
                 daemon's log names the record)",
                plural(detail.recovery.set_aside_files, "segment file"),
                format_size(detail.recovery.set_aside_bytes)
            ),
        );
    }
    if let Some(blocker) = &detail.retention_blocked_by {
        // What ends it: deleting the snapshot or the clone; a rollback's
        // branch point goes by itself once newer writes push it out.
        let until = if blocker.starts_with("snapshot ") {
            "until that snapshot is deleted"
        } else if blocker.starts_with("the base of clone ") {
            "until that clone is deleted"
        } else if blocker.starts_with("an open NBD connection") {
            "until that connection closes"
        } else {
            "until newer writes push it out of the history"
        };
        line("RETENTION", format!("blocked by {blocker}: the journal grows past its budget {until}"));
    }
    if let Some(origin) = &volume.clone_of {
        line("clone of", format!("{}{} at #{}", origin.volume, deleted(origin), origin.seq));
    }
    line("clones", if volume.clones.is_empty() { "none".into() } else { volume.clones.join(", ") });
    line("serve at", detail.uri.clone());
    let connections = volume.nbd_connections;
    line(
        "NBD",
        if connections.head + connections.points == 0 {
            "no connections".into()
        } else {
            format!(
                "{} to the head, {} to points",
                plural(connections.head, "connection"),
                connections.points
            )
        },
    );
    if let Some(error) = &volume.write_error {
        line(
            "WRITE ERROR",
            format!(
                "{error}: refuses writes; fix the cause (free disk space, check the disk), then: \
                 rewind volume reopen {}",
                volume.name
            ),
        );
    }
    if detail.snapshots.is_empty() {
        out.push_str("No snapshots.\n");
    } else {
        out.push_str("Snapshots\n");
        let mut table = Table::new(&["NAME", "SEQ", "TIME"]);
        for snapshot in &detail.snapshots {
            table.row(vec![
                snapshot.name.clone(),
                format!("#{}", snapshot.seq),
                display_time(&snapshot.time),
            ]);
        }
        for row in table.render().lines() {
            out.push_str(&format!("  {row}\n"));
        }
    }
    out
}

fn man(out: Option<PathBuf>) -> Result<(), Failure> {
    let command = Cli::command();
    match out {
        Some(dir) => {
            std::fs::create_dir_all(&dir).and_then(|()| clap_mangen::generate_to(command, &dir)).map_err(
                |error| Failure::new(format!("cannot write man pages to {}: {error}", dir.display()), None),
            )?;
            eprintln!("wrote man pages to {}", dir.display());
            Ok(())
        }
        None => match clap_mangen::Man::new(command).render(&mut std::io::stdout()) {
            // `rewind man | head` closes the pipe early: not a failure.
            Err(error) if error.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(Failure::new(format!("cannot print the man page: {error}"), None))
            }
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use rewind_api::control::{PointInfo, SnapshotInfo, Timeline, TimelineBucket};

    fn bucket(start: &str) -> TimelineBucket {
        TimelineBucket { start: start.into(), writes: 1, bytes: 4096, last_seq: Some(1) }
    }

    /// The first row starts at the history's start, off the interval's
    /// grid, and ends where the second begins: a snapshot is listed in the
    /// one row whose span holds it.
    #[test]
    fn a_snapshot_is_listed_in_the_one_row_that_holds_it() {
        let point = |seq, time: &str| PointInfo { seq, time: time.into() };
        let snapshot = |name: &str, time: &str| SnapshotInfo { name: name.into(), seq: 1, time: time.into() };
        let timeline = Timeline {
            volume: "tl".into(),
            since: "-1h".into(),
            interval_seconds: 10,
            first: point(0, "2026-11-29T07:00:57.197Z"),
            head: point(3, "2026-11-29T07:01:15Z"),
            buckets: vec![
                bucket("2026-11-29T07:00:57.197Z"),
                bucket("2026-11-29T07:01:00Z"),
                bucket("2026-11-29T07:01:10Z"),
            ],
            snapshots: vec![
                snapshot("first", "2026-11-29T07:00:58Z"),
                snapshot("second", "2026-11-29T07:01:03Z"),
                snapshot("third", "2026-11-29T07:01:12Z"),
            ],
        };
        let text = super::human_timeline(&timeline);
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert_eq!(rows.len(), 3, "{text}");
        for (row, name) in ["first", "second", "third"].into_iter().enumerate() {
            let listed: Vec<usize> = (0..3).filter(|&other| rows[other].contains(name)).collect();
            assert_eq!(listed, vec![row], "{name}:\n{text}");
        }
    }
}
