//! One function per route of [`super::routes::ROUTES`].
//!
//! Store calls that may wait for the disk (create, clone, delete, snapshot,
//! rollback, resize, flush, reopen, timeline scans) run on tokio's blocking
//! pool so the runtime's threads keep serving NBD.
//!
//! Rollback, delete and reopen check the NBD connections open to the volume
//! first ([`crate::device::OpenExports`]) and refuse with 409 unless forced:
//! a rollback or delete under a running VM corrupts its filesystem. They
//! hold the volume exclusively from before the check until they are done
//! ([`crate::device::OpenExports::exclusive`]): a client that connects
//! meanwhile waits (up to 5 s, or half the handshake deadline if shorter)
//! and then sees the outcome, so none slips in between the check and the
//! operation. A second such operation on the same volume meanwhile gets
//! 409.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use rewind_api::control::{
    CloneOrigin, CloneVolume, Cloned, CreateSnapshot, CreateVolume, Deleted, Exported, Flushed, Force,
    NbdConnections, NotServed, PointInfo, RecoveryInfo, Reopened, ResizeVolume, Resized, Rollback,
    RolledBack, SnapshotCreated, SnapshotDeleted, SnapshotInfo, SnapshotList, Status, Timeline,
    TimelineBucket, Verified, VolumeCreated, VolumeDetail, VolumeInfo, VolumeList, nbd_uri,
};
use rewind_api::{Point, format_time};
use serde::Deserialize;
use store::{
    CloneError, CreateError, DeleteError, History, OpenError, PointError, ResizeError, RollbackError,
    SnapshotError, Volume, WriteError,
};

use super::routes::{ApiJson, ApiPath, ApiQuery, OPENAPI_DOCUMENT};
use super::{ApiError, ControlState};

type ApiResult<T> = Result<T, ApiError>;
type AppState = State<Arc<ControlState>>;

/// Intervals `timeline` picks from when none is given, in seconds.
const TIMELINE_INTERVALS: [u64; 17] =
    [1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 604_800];
/// Rows a timeline aims for when it picks the interval.
const TIMELINE_TARGET_ROWS: i64 = 48;
/// Most rows a timeline returns.
const TIMELINE_MAX_ROWS: i64 = 10_000;
/// Longest timeline interval: 365 days (`365d`, `52w` in CLI units).
const TIMELINE_MAX_INTERVAL_SECONDS: u64 = 365 * 86_400;

// ---- helpers ------------------------------------------------------------

/// The API's one time format: RFC 3339 UTC with milliseconds, exact for
/// points (index times are whole milliseconds), so it reads back as the
/// same point.
pub fn rfc3339(unix_nanos: i64) -> String {
    format_time(unix_nanos)
}

/// "1 connection", "2 connections".
fn plural(count: u64, noun: &str) -> String {
    if count == 1 { format!("1 {noun}") } else { format!("{count} {noun}s") }
}

fn now_nanos() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

/// Where NBD clients reach this daemon: the listen address, with a
/// wildcard address replaced by loopback (the CLI runs on this host).
pub fn client_address(listen: SocketAddr) -> String {
    let mut address = listen;
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    address.to_string()
}

/// Runs a store call on the blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(work).await.map_err(|error| ApiError::internal("store task failed", &error))
}

fn bad_name(error: rewind_api::PointError) -> ApiError {
    ApiError::bad_request(error.to_string())
}

fn lookup(state: &ControlState, name: &str) -> ApiResult<Arc<Volume>> {
    rewind_api::validate_volume_name(name).map_err(bad_name)?;
    state.store.volume(name).ok_or_else(|| unknown_volume(state, name))
}

/// 404 naming the volumes that do exist (a typo is the usual cause).
fn unknown_volume(state: &ControlState, name: &str) -> ApiError {
    if let Some((_, why)) = state.store.unopened().into_iter().find(|(dir, _)| dir == name) {
        return ApiError::not_found(format!(
            "volume {name} is not served: its directory {} was kept unopened at start-up, as {why}",
            state.data_dir.join(store::VOLUMES_DIR).join(name).display()
        ))
        .hint("the daemon's log has the details; rewind status lists every directory not served");
    }
    let names: Vec<String> = state.store.volumes().iter().map(|v| v.name().to_owned()).collect();
    if names.is_empty() {
        return ApiError::not_found(format!("no volume named {name} (there are none)"))
            .hint(format!("create one with: rewind volume create {name} --size 20GiB"));
    }
    ApiError::not_found(format!("no volume named {name} (volumes: {})", names.join(", ")))
        .hint("rewind volume list shows each volume; pass one of their names")
}

/// 409 for a name whose directory exists but is not a served volume: its
/// files are kept (they may be a damaged or renamed volume).
fn not_a_volume(state: &ControlState, error: CreateError) -> ApiError {
    let CreateError::NotAVolume { dir, why } = error else {
        return ApiError::internal("cannot create the volume", &error);
    };
    ApiError::conflict(format!(
        "{} exists and is not a volume the daemon serves ({why}); it is kept as it is",
        state.data_dir.join(dir).display()
    ))
    .hint("pick another name, or move that directory away once you have looked at it (the daemon's log says why it was not opened)")
}

fn parse_point(text: &str) -> ApiResult<Point> {
    Point::parse(text).map_err(|error| ApiError::bad_request(error.to_string()))
}

/// "retained history is #0 (2026-11-28T02:00:00.000Z) to #812 (...)".
fn describe_window(window: &History) -> String {
    format!(
        "retained history is #{} ({}) to #{} ({})",
        window.first_seq,
        rfc3339(window.first_time),
        window.head_seq,
        rfc3339(window.head_time)
    )
}

/// 422 for a point outside the history, naming the point as the user
/// wrote it (`text`, not a normalised form) and the retained window.
fn outside_history(volume: &Volume, text: &str, window: &History) -> ApiError {
    ApiError::outside_history(format!(
        "{text} is outside the history of {}: {}",
        volume.name(),
        describe_window(window)
    ))
    .hint(format!("pick a point inside the retained history; rewind timeline {} shows it", volume.name()))
}

/// Resolves `point` (parsed from `text`) to a seq, or 422: the point is
/// well-formed but not in the history (outside the retained window, which
/// the message names; or no such snapshot). Not 404: the volume the URL
/// names exists.
fn resolve(volume: &Volume, point: &Point, text: &str) -> ApiResult<u64> {
    let at_time = |nanos: i64| {
        volume.resolve_time(nanos).map_err(|error| match error {
            PointError::OutsideHistory { window, .. } if nanos > window.head_time.max(now_nanos()) => {
                ApiError::outside_history(format!(
                    "{text} is in the future: the history of {} ends now, at #{} ({})",
                    volume.name(),
                    window.head_seq,
                    rfc3339(window.head_time)
                ))
                .hint(format!("rewind export {} --at -0s reads the latest point", volume.name()))
            }
            PointError::OutsideHistory { window, .. } => outside_history(volume, text, &window),
            PointError::UnknownSnapshot(name) => unknown_snapshot(volume, &name),
        })
    };
    match point {
        Point::Seq(seq) => {
            let history = volume.history();
            if *seq < history.first_seq || *seq > history.head_seq {
                return Err(outside_history(volume, text, &history));
            }
            Ok(*seq)
        }
        Point::Time(time) => {
            let nanos = time.unix_timestamp_nanos();
            // Past 2262 or before 1677 (i64 nanoseconds): saturate, keeping the side.
            at_time(i64::try_from(nanos).unwrap_or(if nanos > 0 { i64::MAX } else { i64::MIN }))
        }
        Point::Ago(ago) => {
            at_time(now_nanos().saturating_sub(i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX)))
        }
        Point::Snapshot(name) => {
            volume.snapshot(name).map(|snapshot| snapshot.seq).ok_or_else(|| unknown_snapshot(volume, name))
        }
    }
}

fn unknown_snapshot(volume: &Volume, name: &str) -> ApiError {
    let names: Vec<String> = volume.snapshots().into_iter().map(|s| s.name).collect();
    let message = if names.is_empty() {
        format!("no snapshot named {name} on {} (it has none)", volume.name())
    } else {
        format!("no snapshot named {name} on {}; it has: {}", volume.name(), names.join(", "))
    };
    ApiError::outside_history(message)
        .hint(format!("rewind snapshot list {} shows the snapshots", volume.name()))
}

/// Starts an exclusive operation on volume `name` (rollback, reopen,
/// delete): no NBD connection to it opens until the returned guard drops,
/// so the connections counted after this stay counted. Take it before
/// looking the volume up, and move it into the blocking task that does
/// the work: a client that hangs up drops the handler, not the task.
fn exclusive(state: &ControlState, name: &str) -> ApiResult<crate::device::Exclusive> {
    state.open_exports.exclusive(name).map_err(|_| {
        ApiError::conflict(format!("a rollback, reopen or delete of volume {name} is under way"))
            .hint("try again once it has finished")
    })
}

/// NBD connections open to `volume`, to its head and to its points.
fn connections(state: &ControlState, volume: &Volume) -> NbdConnections {
    let (head, points) = state.open_exports.count(volume.name(), volume.id());
    NbdConnections { head: head as u64, points: points as u64 }
}

/// NBD connections an operation refuses to go on under.
enum Open {
    /// Those to the head.
    Head(u64),
    /// Those to the head and to points.
    Any(NbdConnections),
}

/// The 409 for the NBD connections open to `volume`, which `what`
/// ("roll back", "reopen it") would change or replace under them;
/// `command` is the CLI command that would go ahead with `--force`.
fn refuse_under_clients(volume: &str, open: Open, what: &str, consequence: &str, command: &str) -> ApiError {
    let open = match open {
        Open::Head(head) => format!("{} open to its head", plural(head, "NBD connection")),
        Open::Any(NbdConnections { head, points }) => format!(
            "{} open ({head} to its head, {points} to points)",
            plural(head + points, "NBD connection")
        ),
    };
    ApiError::conflict(format!("volume {volume} has {open}: {consequence}")).hint(format!(
        "stop the VM (or disconnect the NBD clients) first, then {what} again; to go ahead anyway: \
         {command} --force (API: ?force=true)"
    ))
}

fn time_of(volume: &Arc<Volume>, seq: u64) -> i64 {
    match volume.open_point(seq) {
        Ok(point) => point.time(),
        Err(_) => volume.history().head_time,
    }
}

fn point_info(volume: &Arc<Volume>, seq: u64) -> PointInfo {
    PointInfo { seq, time: rfc3339(time_of(volume, seq)) }
}

fn snapshot_info(snapshot: store::Snapshot) -> SnapshotInfo {
    SnapshotInfo { name: snapshot.name, seq: snapshot.seq, time: rfc3339(snapshot.time) }
}

/// What protects point `seq` of `volume` from retention, in words.
fn blocker(state: &ControlState, volume: &Arc<Volume>, seq: u64) -> String {
    let snapshots: Vec<String> =
        volume.snapshots().into_iter().filter(|snapshot| snapshot.seq == seq).map(|s| s.name).collect();
    if !snapshots.is_empty() {
        return format!("snapshot {} (#{seq})", snapshots.join(", "));
    }
    let clones: Vec<String> =
        clones_at(state, volume).into_iter().filter(|&(_, at)| at == seq).map(|(name, _)| name).collect();
    if !clones.is_empty() {
        return format!("the base of clone {} (#{seq})", clones.join(", "));
    }
    if volume.point_in_use(seq) {
        return format!("an open NBD connection to point #{seq}");
    }
    format!("point #{seq} (a rollback's branch point or a deletion not yet durable)")
}

/// The live clones that read through `volume`, with the seq each was
/// cloned at (matched by id: a deleted volume's name may be taken again).
fn clones_at(state: &ControlState, volume: &Volume) -> Vec<(String, u64)> {
    state
        .store
        .volumes()
        .iter()
        .filter(|v| v.parent_id() == Some(volume.id()))
        .filter_map(|v| v.clone_parent().map(|(_, seq)| (v.name().to_owned(), seq)))
        .collect()
}

/// The names of the live clones that read through `volume`: its own, and
/// those of its deleted clones ([`store::Store::clones_reading`]).
fn clones_of(state: &ControlState, volume: &Volume) -> Vec<String> {
    state.store.clones_reading(volume.id())
}

fn volume_info(state: &ControlState, volume: &Arc<Volume>) -> VolumeInfo {
    let history = volume.history();
    let stats = volume.stats();
    VolumeInfo {
        name: volume.name().to_owned(),
        size_bytes: volume.size(),
        first: PointInfo { seq: history.first_seq, time: rfc3339(history.first_time) },
        head: PointInfo { seq: history.head_seq, time: rfc3339(history.head_time) },
        last_write: volume.last_write().map(|(seq, time)| PointInfo { seq, time: rfc3339(time) }),
        durable_seq: volume.durable_seq(),
        points: history.head_seq.saturating_sub(history.first_seq) + 1,
        snapshot_count: stats.snapshots,
        journal_bytes: stats.journal_bytes,
        clone_of: volume.clone_parent().map(|(parent, seq)| CloneOrigin {
            volume: parent,
            seq,
            deleted: volume.clone_parent_deleted(),
        }),
        clones: clones_of(state, volume),
        write_error: volume.poison().map(|poison| poison.to_string()),
        nbd_connections: connections(state, volume),
    }
}

/// What to do about a volume that refuses writes.
fn reopen_hint(volume: &str) -> String {
    format!(
        "the volume refuses writes after an IO error (a failed write-out or sync; a full disk alone only \
         refuses the writes that do not fit); fix the cause (check the disk, free space), \
         then: rewind volume reopen {volume}"
    )
}

/// A failed journal append (snapshot, rollback, resize records).
fn write_failure(volume: &str, what: &str, error: WriteError) -> ApiError {
    match error {
        WriteError::Deleted => ApiError::not_found(format!("volume {volume} was deleted")),
        // Refused before anything changed; the volume stays writable.
        WriteError::NoSpace(_) => {
            ApiError::no_space(format!("cannot {what} {volume}: no space left on device"))
                .hint("free space on the data dir's filesystem, then retry (no reopen needed)")
        }
        // This write poisoned the volume, or an earlier one did.
        WriteError::Poisoned(_) | WriteError::Io(_) => {
            ApiError::internal(&format!("cannot {what} {volume}"), &error).hint(reopen_hint(volume))
        }
        error => ApiError::internal(&format!("cannot {what} {volume}"), &error),
    }
}

fn size_error(error: rewind_api::SizeError) -> ApiError {
    ApiError::bad_request(error.to_string())
        .hint("sizes are bytes (a multiple of 512) or text like 20GiB or 512M")
}

// ---- daemon -------------------------------------------------------------

pub async fn status(State(state): AppState) -> Json<Status> {
    let started = state.started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let uptime = state.started.elapsed().unwrap_or_default();
    let volumes = state.store.volumes();
    let journal_bytes = volumes.iter().map(|volume| volume.stats().journal_bytes).sum();
    Json(Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started: rfc3339(i64::try_from(started.as_nanos()).unwrap_or(0)),
        uptime_seconds: uptime.as_secs(),
        data_dir: state.data_dir.display().to_string(),
        control_socket: state.control_path.display().to_string(),
        nbd_listen: client_address(state.nbd_listen),
        nbd_connections: state.metrics.connections_open(),
        volumes: volumes.len() as u64,
        journal_bytes,
        not_served: state
            .store
            .unopened()
            .into_iter()
            .map(|(name, reason)| NotServed {
                dir: state.data_dir.join(store::VOLUMES_DIR).join(&name).display().to_string(),
                name,
                reason,
            })
            .collect(),
    })
}

pub async fn metrics(State(state): AppState) -> ApiResult<impl IntoResponse> {
    let state_for_render = state.clone();
    // Volume stats take each index's read lock: off the async threads.
    let text = blocking(move || {
        state_for_render.metrics.render(&state_for_render.store, &state_for_render.open_exports)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text))
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI_DOCUMENT)
}

// ---- volumes ------------------------------------------------------------

pub async fn list_volumes(State(state): AppState) -> ApiResult<Json<VolumeList>> {
    let state = state.clone();
    blocking(move || {
        let volumes = state.store.volumes().iter().map(|volume| volume_info(&state, volume)).collect();
        Json(VolumeList { volumes })
    })
    .await
}

pub async fn create_volume(
    State(state): AppState,
    ApiJson(request): ApiJson<CreateVolume>,
) -> ApiResult<impl IntoResponse> {
    rewind_api::validate_volume_name(&request.name).map_err(bad_name)?;
    let size = request.size.bytes().map_err(size_error)?;
    let name = request.name.clone();
    let store_state = state.clone();
    let created = blocking(move || store_state.store.create_volume(&name, size)).await?;
    let volume = created.map_err(|error| match error {
        CreateError::Exists(name) => ApiError::conflict(format!("volume {name} already exists"))
            .hint("pick another name, or delete the existing volume first"),
        error @ CreateError::NotAVolume { .. } => not_a_volume(&state, error),
        error @ (CreateError::InvalidName(_) | CreateError::InvalidSize { .. }) => {
            ApiError::bad_request(error.to_string())
        }
        error @ CreateError::Io(_) => {
            ApiError::internal(&format!("cannot create volume {}", request.name), &error)
        }
    })?;
    tracing::info!(volume = volume.name(), size, "created volume");
    let uri = nbd_uri(&client_address(state.nbd_listen), volume.name());
    let warning = space_warning(&state.data_dir, &volume, 0, size);
    if let Some(warning) = &warning {
        tracing::warn!(volume = volume.name(), "{warning}");
    }
    Ok((StatusCode::CREATED, Json(VolumeCreated { volume: volume_info(&state, &volume), uri, warning })))
}

/// The warning for a volume of `size` bytes (created, `from` 0, or grown
/// from `from`) whose use of the data dir can grow past its free space by
/// what this adds: its image plus a journal at the volume's budget and the
/// dead bytes cleaning allows (a quarter of it: about 2.25 times the size
/// with the default budget; docs/journal.md, "The space bound"). Without a
/// budget only the image is counted.
fn space_warning(data_dir: &Path, volume: &Volume, from: u64, size: u64) -> Option<String> {
    let stat = rustix::fs::statvfs(data_dir).ok()?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let policy = volume.retention_policy();
    let needs_at = |size: u64| {
        let journal = policy.budget_bytes(size).unwrap_or(0);
        size.saturating_add(journal.saturating_add(journal / 4))
    };
    let needs = needs_at(size).saturating_sub(needs_at(from));
    let more = if from > 0 { " more" } else { "" };
    let what = match policy.budget_bytes(size) {
        Some(budget) => format!(
            "its image plus a journal at its budget of {} of written data",
            rewind_api::format_size(budget)
        ),
        None => "its image; its journal has no budget and grows with the writes the window keeps".to_owned(),
    };
    (needs > free).then(|| {
        format!(
            "the data dir has {} free, and this volume can use up to {}{more} ({what}); writes past the free \
             space are refused (ENOSPC), never lost",
            rewind_api::format_size(free),
            rewind_api::format_size(needs)
        )
    })
}

pub async fn show_volume(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<VolumeDetail>> {
    let volume = lookup(&state, &name)?;
    let state = state.clone();
    blocking(move || {
        let recovery = volume.recovery_stats();
        let stats = volume.stats();
        let set_aside = volume.set_aside();
        Json(VolumeDetail {
            volume: volume_info(&state, &volume),
            snapshots: volume.snapshots().into_iter().map(snapshot_info).collect(),
            journal_segments: stats.segments,
            base_bytes: stats.base_bytes,
            history_bytes: stats.history_bytes,
            base_journal_bytes: stats.base_journal_bytes,
            dead_journal_bytes: stats.dead_journal_bytes,
            journal_budget_bytes: stats.journal_budget_bytes,
            retention_blocked_by: stats.retention_blocked_at.map(|seq| blocker(&state, &volume, seq)),
            index_memory_bytes: stats.index_bytes,
            recovery: RecoveryInfo {
                checkpointed_records: recovery.checkpointed,
                replayed_records: recovery.replayed,
                replayed_bytes: recovery.replayed_bytes,
                cut_bytes: recovery.cut_bytes,
                set_aside_files: set_aside.len() as u64,
                set_aside_bytes: set_aside.iter().map(|(_, len)| len).sum(),
            },
            uri: nbd_uri(&client_address(state.nbd_listen), volume.name()),
        })
    })
    .await
}

pub async fn delete_volume(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<Force>,
) -> ApiResult<Json<Deleted>> {
    let exclusive = exclusive(&state, &name)?;
    let target = lookup(&state, &name)?;
    let clones = clones_of(&state, &target);
    let snapshots: Vec<String> = target.snapshots().into_iter().map(|snapshot| snapshot.name).collect();
    let open = connections(&state, &target);
    let open_total = open.head + open.points;
    let set_aside = target.set_aside();
    if (open_total > 0 || !snapshots.is_empty() || !set_aside.is_empty()) && !query.force {
        // Named snapshots are kept until deleted: deleting the volume
        // would delete them too, so that takes --force as well.
        let mut reasons = Vec::new();
        let mut first = Vec::new();
        // What --force would do, for the reasons that apply only.
        let mut forced = Vec::new();
        if open_total > 0 {
            forced.push("connected clients then get errors");
            reasons.push(format!(
                "{} open ({} to its head, {} to points)",
                plural(open_total, "NBD connection"),
                open.head,
                open.points
            ));
            first.push("stop the VM (or disconnect the NBD clients)".to_owned());
        }
        if !clones.is_empty() {
            reasons.push(format!("clones that read through it: {}", clones.join(", ")));
            first.push("delete the clones".to_owned());
            forced.push("clones keep its data until the last one is deleted");
        }
        if !set_aside.is_empty() {
            let dir = state.data_dir.join(store::VOLUMES_DIR).join(&name);
            reasons.push(format!(
                "{} a recovery set aside ({}), which may hold acknowledged writes no longer served",
                plural(set_aside.len() as u64, "segment file"),
                rewind_api::format_size(set_aside.iter().map(|(_, len)| len).sum())
            ));
            first.push(format!("move {}/seg-*.log.cut-* somewhere safe", dir.display()));
            forced.push("the set-aside files are deleted with it");
        }
        if !snapshots.is_empty() {
            forced.push("its snapshots go with it");
            reasons.push(format!("named snapshots, deleted with it: {}", snapshots.join(", ")));
            first.push(format!("delete the snapshots you do not need (rewind snapshot delete {name} NAME)"));
        }
        return Err(ApiError::conflict(format!("volume {name} has {}", reasons.join(", and "))).hint(
            format!(
                "{} first; or force it (rewind volume delete {name} --force; API: ?force=true): {}",
                first.join(" and "),
                forced.join(", and ")
            ),
        ));
    }
    let store_state = state.clone();
    let volume = name.clone();
    let deleted = blocking(move || {
        let _exclusive = exclusive;
        store_state.store.delete_volume(&volume, query.force)
    })
    .await?;
    deleted.map_err(|error| match error {
        DeleteError::NotFound(name) => unknown_volume(&state, &name),
        DeleteError::HasClones { volume, clones } => ApiError::conflict(format!(
            "volume {volume} has clones that read through it: {}",
            clones.join(", ")
        ))
        .hint(format!(
            "delete the clones first, or force it (rewind volume delete {volume} --force; API: ?force=true): \
             {volume} disappears but its data is kept until its last clone is deleted"
        )),
        error @ DeleteError::Io(_) => ApiError::internal(&format!("cannot delete volume {name}"), &error),
    })?;
    tracing::info!(volume = name, force = query.force, nbd_connections = open_total, "deleted volume");
    Ok(Json(Deleted { volume: name, clones_kept: clones, nbd_connections: open_total }))
}

pub async fn reopen_volume(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<Force>,
) -> ApiResult<Json<Reopened>> {
    let exclusive = exclusive(&state, &name)?;
    let volume = lookup(&state, &name)?;
    // Connections hold the old volume object: after a reopen their writes
    // keep failing, and their reads fail too (the new object owns the
    // journal files and may reuse them), until the client reconnects.
    let open = connections(&state, &volume);
    let open_total = open.head + open.points;
    if open_total > 0 && !query.force {
        return Err(refuse_under_clients(
            &name,
            Open::Any(open),
            "reopen it",
            "they would keep the old volume, and their reads and writes would fail until they reconnect",
            &format!("rewind volume reopen {name}"),
        ));
    }
    let cleared = volume.poison().map(|poison| poison.to_string());
    drop(volume);
    let store_state = state.clone();
    let reopening = name.clone();
    let reopened = blocking(move || {
        let _exclusive = exclusive;
        store_state.store.reopen_volume(&reopening)
    })
    .await?;
    let volume = reopened.map_err(|error| match error {
        // Deleted meanwhile.
        OpenError::Corrupt { .. } if state.store.volume(&name).is_none() => unknown_volume(&state, &name),
        error => ApiError::internal(&format!("cannot reopen volume {name}"), &error).hint(format!(
            "the volume refuses writes until it opens; fix the cause (the log has it), then run \
             rewind volume reopen {name} again (or restart rewindd)"
        )),
    })?;
    tracing::info!(volume = name, cleared = ?cleared, stale_connections = open_total, "reopened volume");
    Ok(Json(Reopened {
        volume: volume_info(&state, &volume),
        cleared_write_error: cleared,
        stale_nbd_connections: open_total,
    }))
}

/// A shrink, like a rollback, changes the disk under a running VM (the
/// tail it still uses is cut): refused while NBD clients are connected to
/// the head, unless forced. Growing is not: clients keep the old size.
pub async fn resize_volume(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<Force>,
    ApiJson(request): ApiJson<ResizeVolume>,
) -> ApiResult<Json<Resized>> {
    let volume = lookup(&state, &name)?;
    let size = request.size.bytes().map_err(size_error)?;
    let old_size = volume.size();
    if size == old_size {
        // Nothing to record: a resize record would only add a point.
        return Ok(Json(Resized {
            volume: name,
            old_size_bytes: old_size,
            new_size_bytes: size,
            seq: None,
            warning: None,
        }));
    }
    let exclusive = if size < old_size {
        let exclusive = exclusive(&state, &name)?;
        let head = connections(&state, &volume).head;
        if head > 0 && !query.force {
            return Err(refuse_under_clients(
                &name,
                Open::Head(head),
                "shrink it",
                "a shrink cuts the disk under a running VM, whose reads and writes past the new end then \
                 fail",
                &format!("rewind volume resize {name} --size {size}"),
            ));
        }
        Some(exclusive)
    } else {
        None
    };
    let resizing = volume.clone();
    let resized = blocking(move || {
        let _exclusive = exclusive;
        resizing.resize(size)
    })
    .await?;
    let seq = resized.map_err(|error| match error {
        error @ ResizeError::InvalidSize { .. } => ApiError::bad_request(error.to_string()),
        ResizeError::Write(error) => write_failure(&name, "resize", error),
    })?;
    tracing::info!(volume = name, old_size, size, seq, "resized volume");
    let warning =
        (size > old_size).then(|| space_warning(&state.data_dir, &volume, old_size, size)).flatten();
    if let Some(warning) = &warning {
        tracing::warn!(volume = name, "{warning}");
    }
    Ok(Json(Resized {
        volume: name,
        old_size_bytes: old_size,
        new_size_bytes: size,
        seq: Some(seq),
        warning,
    }))
}

pub async fn flush_volume(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Flushed>> {
    let volume = lookup(&state, &name)?;
    state.metrics.control_flush();
    let flushing = volume.clone();
    blocking(move || flushing.flush())
        .await?
        .map_err(|error| write_failure(&name, "flush", WriteError::from(error)))?;
    Ok(Json(Flushed { volume: name, durable_seq: volume.durable_seq() }))
}

/// Reads back and checks every record the volume keeps (history, and
/// base data still in journal segments), on the blocking pool: it reads as
/// much as the journal holds. Damage is reported in the answer, not as an
/// error.
pub async fn verify_volume(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<VerifyQuery>,
) -> ApiResult<Json<Verified>> {
    let volume = lookup(&state, &name)?;
    let at = match &query.at {
        Some(text) => {
            let seq = resolve(&volume, &parse_point(text)?, text)?;
            Some(point_info(&volume, seq))
        }
        None => None,
    };
    let last = at.as_ref().map_or(u64::MAX, |point| point.seq);
    // A clone's image is also its parent's at the clone's base point (and
    // so on up): check what it reads through as well.
    let mut bases = Vec::new();
    let mut next = volume.parent();
    while let Some((parent, seq)) = next {
        next = parent.parent();
        bases.push((parent, seq));
    }
    let set_aside = volume.set_aside().len();
    let checked = blocking(move || {
        let report = volume.verify_to(last)?;
        let through = bases
            .into_iter()
            .map(|(parent, seq)| Ok((parent.verify_to(seq)?, parent, seq)))
            .collect::<Result<Vec<_>, store::VerifyError>>()?;
        Ok::<_, store::VerifyError>((report, through))
    })
    .await?
    .map_err(|error| ApiError::internal(&format!("cannot verify {name}"), &error))?;
    let (report, through) = checked;
    let verified = |volume: String, at: Option<PointInfo>, report: store::VerifyReport| {
        if !report.corrupt.is_empty() || report.unreadable_base_bytes > 0 {
            tracing::error!(
                volume,
                corrupt = ?report.corrupt,
                unreadable_base_bytes = report.unreadable_base_bytes,
                "verify found damaged records"
            );
        }
        Verified {
            volume,
            at,
            records: report.records,
            base_records: report.base_records,
            bytes: report.bytes,
            corrupt: report.corrupt,
            unreadable_base_bytes: report.unreadable_base_bytes,
            through: Vec::new(),
            set_aside_files: 0,
        }
    };
    let through = through
        .into_iter()
        .map(|(report, parent, seq)| {
            verified(parent.name().to_owned(), Some(point_info(&parent, seq)), report)
        })
        .collect();
    let set_aside_files = set_aside as u64;
    Ok(Json(Verified { through, set_aside_files, ..verified(name, at, report) }))
}

// ---- snapshots ----------------------------------------------------------

pub async fn list_snapshots(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<SnapshotList>> {
    let volume = lookup(&state, &name)?;
    let snapshots = volume.snapshots().into_iter().map(snapshot_info).collect();
    Ok(Json(SnapshotList { volume: name, snapshots }))
}

pub async fn create_snapshot(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<CreateSnapshot>,
) -> ApiResult<impl IntoResponse> {
    let volume = lookup(&state, &name)?;
    rewind_api::point::validate_name(&request.name).map_err(bad_name)?;
    if Point::parse(&request.name) != Ok(Point::Snapshot(request.name.clone())) {
        // `2026...` would read back as a time, never as this snapshot.
        return Err(ApiError::bad_request(format!(
            "snapshot name {} would be read as a point in time; start it with a letter",
            request.name
        )));
    }
    let snapshot_name = request.name.clone();
    let created = blocking(move || volume.create_snapshot(&snapshot_name)).await?;
    let snapshot = created.map_err(|error| match error {
        SnapshotError::Exists(snapshot) => ApiError::conflict(format!(
            "snapshot {snapshot} already exists on {name}"
        ))
        .hint(format!("pick another name, or delete it first: rewind snapshot delete {name} {snapshot}")),
        error @ (SnapshotError::InvalidName(_) | SnapshotError::NotFound(_)) => {
            ApiError::bad_request(error.to_string())
        }
        SnapshotError::Write(error) => write_failure(&name, "snapshot", error),
    })?;
    tracing::info!(volume = name, snapshot = snapshot.name, seq = snapshot.seq, "created snapshot");
    Ok((
        StatusCode::CREATED,
        Json(SnapshotCreated {
            volume: name,
            name: snapshot.name,
            seq: snapshot.seq,
            time: rfc3339(snapshot.time),
        }),
    ))
}

pub async fn delete_snapshot(
    State(state): AppState,
    ApiPath((name, snapshot)): ApiPath<(String, String)>,
) -> ApiResult<Json<SnapshotDeleted>> {
    let volume = lookup(&state, &name)?;
    rewind_api::point::validate_name(&snapshot).map_err(bad_name)?;
    let deleting = snapshot.clone();
    let deleted = blocking(move || volume.delete_snapshot(&deleting)).await?;
    deleted.map_err(|error| match error {
        SnapshotError::NotFound(snapshot) => {
            ApiError::not_found(format!("no snapshot named {snapshot} on {name}"))
                .hint(format!("rewind snapshot list {name} shows the snapshots"))
        }
        error @ (SnapshotError::InvalidName(_) | SnapshotError::Exists(_)) => {
            ApiError::bad_request(error.to_string())
        }
        SnapshotError::Write(error) => write_failure(&name, "delete a snapshot of", error),
    })?;
    tracing::info!(volume = name, snapshot, "deleted snapshot");
    Ok(Json(SnapshotDeleted { volume: name, snapshot }))
}

// ---- points -------------------------------------------------------------

pub async fn rollback(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<Force>,
    ApiJson(request): ApiJson<Rollback>,
) -> ApiResult<Json<RolledBack>> {
    let point = parse_point(&request.to)?;
    let exclusive = exclusive(&state, &name)?;
    let volume = lookup(&state, &name)?;
    let target = resolve(&volume, &point, &request.to)?;
    let head = connections(&state, &volume).head;
    if head > 0 && !query.force {
        return Err(refuse_under_clients(
            &name,
            Open::Head(head),
            "roll back",
            "its image would change under a running VM, whose next write corrupts its filesystem",
            &format!("rewind rollback {name} --to {}", rewind_api::shell_word(&request.to)),
        ));
    }
    let rolling = volume.clone();
    let previous_size_bytes = volume.size();
    let outcome = blocking(move || {
        let _exclusive = exclusive;
        rolling.rollback(target)
    })
    .await?
    .map_err(|error| match error {
        RollbackError::Point(PointError::OutsideHistory { window, .. }) => {
            outside_history(&volume, &request.to, &window)
        }
        RollbackError::Point(PointError::UnknownSnapshot(snapshot)) => unknown_snapshot(&volume, &snapshot),
        RollbackError::Write(error) => write_failure(&name, "roll back", error),
    })?;
    tracing::info!(
        volume = name,
        target,
        new_seq = outcome.new_seq,
        previous_head = outcome.previous_head_seq,
        nbd_connections = head,
        "rolled back"
    );
    Ok(Json(RolledBack {
        volume: name,
        target: point_info(&volume, target),
        new_head: point_info(&volume, outcome.new_seq),
        previous_head: point_info(&volume, outcome.previous_head_seq),
        undo_to: format!("#{}", outcome.previous_head_seq),
        nbd_connections: head,
        size_bytes: volume.size(),
        previous_size_bytes,
    }))
}

pub async fn clone_volume(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
    ApiJson(request): ApiJson<CloneVolume>,
) -> ApiResult<impl IntoResponse> {
    let source = lookup(&state, &name)?;
    let point = parse_point(&request.at)?;
    rewind_api::validate_volume_name(&request.name).map_err(bad_name)?;
    let seq = resolve(&source, &point, &request.at)?;
    let store_state = state.clone();
    let (source_name, new_name) = (name.clone(), request.name.clone());
    let cloned = blocking(move || store_state.store.clone_volume(&source_name, seq, &new_name)).await?;
    let clone = cloned.map_err(|error| match error {
        CloneError::SourceNotFound(source) => unknown_volume(&state, &source),
        CloneError::Point(PointError::OutsideHistory { window, .. }) => {
            outside_history(&source, &request.at, &window)
        }
        CloneError::Point(PointError::UnknownSnapshot(snapshot)) => unknown_snapshot(&source, &snapshot),
        CloneError::Create(CreateError::Exists(taken)) => {
            ApiError::conflict(format!("volume {taken} already exists"))
                .hint("pick another name for the clone")
        }
        CloneError::Create(error @ CreateError::NotAVolume { .. }) => not_a_volume(&state, error),
        CloneError::Create(error @ (CreateError::InvalidName(_) | CreateError::InvalidSize { .. })) => {
            ApiError::bad_request(error.to_string())
        }
        error @ CloneError::Create(CreateError::Io(_)) => {
            ApiError::internal(&format!("cannot clone {name}"), &error)
        }
    })?;
    tracing::info!(source = name, seq, clone = clone.name(), "cloned volume");
    let uri = nbd_uri(&client_address(state.nbd_listen), clone.name());
    Ok((
        StatusCode::CREATED,
        Json(Cloned {
            source: name,
            point: point_info(&source, seq),
            volume: volume_info(&state, &clone),
            uri,
        }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyQuery {
    at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    at: String,
}

pub async fn export_point(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> ApiResult<Json<Exported>> {
    let volume = lookup(&state, &name)?;
    let point = parse_point(&query.at)?;
    let seq = resolve(&volume, &point, &query.at)?;
    // A snapshot keeps its name; every other form is pinned to its seq, so
    // a relative point (`-15m`) does not drift while the URI is in use.
    let export_name = match &point {
        Point::Snapshot(snapshot) => format!("{name}@{snapshot}"),
        _ => format!("{name}@#{seq}"),
    };
    let view = volume.open_point(seq).map_err(|error| match error {
        PointError::OutsideHistory { window, .. } => outside_history(&volume, &query.at, &window),
        PointError::UnknownSnapshot(snapshot) => unknown_snapshot(&volume, &snapshot),
    })?;
    Ok(Json(Exported {
        volume: name,
        point: PointInfo { seq, time: rfc3339(view.time()) },
        uri: nbd_uri(&client_address(state.nbd_listen), &export_name),
        export_name,
        size_bytes: view.size(),
        read_only: true,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimelineQuery {
    since: Option<String>,
    interval: Option<u64>,
}

pub async fn timeline(
    State(state): AppState,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<TimelineQuery>,
) -> ApiResult<Json<Timeline>> {
    let volume = lookup(&state, &name)?;
    let since_text = query.since.unwrap_or_else(|| "-24h".to_owned());
    let since_point = parse_point(&since_text)?;
    let now = now_nanos();
    let history = volume.history();
    let requested = match &since_point {
        Point::Ago(ago) => now.saturating_sub(i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX)),
        Point::Time(time) => {
            let nanos = time.unix_timestamp_nanos();
            // Past 2262 or before 1677 (i64 nanoseconds): saturate, keeping the side.
            i64::try_from(nanos).unwrap_or(if nanos > 0 { i64::MAX } else { i64::MIN })
        }
        Point::Seq(_) | Point::Snapshot(_) => time_of(&volume, resolve(&volume, &since_point, &since_text)?),
    };
    if requested > now {
        return Err(ApiError::bad_request(format!("since {since_text} is in the future"))
            .hint("a timeline shows the past: pass a time before now, e.g. -6h or -1d"));
    }
    // Nothing happened before the volume existed: start there.
    let since = requested.max(history.first_time);
    let end = now.max(history.head_time);
    let span_seconds = (end - since) / 1_000_000_000;
    let interval_seconds = match query.interval {
        Some(seconds) if (1..=TIMELINE_MAX_INTERVAL_SECONDS).contains(&seconds) => seconds,
        Some(seconds) => {
            return Err(ApiError::bad_request(format!(
                "interval {seconds} is not between 1 and {TIMELINE_MAX_INTERVAL_SECONDS} seconds (1s to 365d)"
            )));
        }
        None => TIMELINE_INTERVALS
            .into_iter()
            .find(|&interval| span_seconds / (interval as i64) < TIMELINE_TARGET_ROWS)
            .unwrap_or(604_800),
    };
    let interval = interval_seconds as i64 * 1_000_000_000;
    // Rows start on whole intervals (02:00, 03:00), not at odd instants;
    // but the first row starts where asked (or where the history does),
    // and counts the writes from there only.
    let first_row_start = since;
    let since = since - since.rem_euclid(interval);
    let rows = (end - since) / interval + 1;
    if rows > TIMELINE_MAX_ROWS {
        return Err(ApiError::bad_request(format!(
            "that is {rows} rows of {interval_seconds} seconds; the most is {TIMELINE_MAX_ROWS}"
        ))
        .hint("pass a larger interval (--interval 1h, 1d or 1w) or a later since (--since -6h or -1d)"));
    }
    let scanning = volume.clone();
    let buckets = blocking(move || {
        let mut buckets = scanning.timeline(since, interval, first_row_start);
        // The store stops at the last write; a timeline runs until now.
        while (buckets.len() as i64) < rows {
            let start = since + buckets.len() as i64 * interval;
            buckets.push(store::Bucket { start, writes: 0, bytes: 0 });
        }
        buckets
            .into_iter()
            .map(|bucket| {
                let until = bucket.start.saturating_add(interval - 1).min(now);
                TimelineBucket {
                    start: rfc3339(bucket.start.max(first_row_start)),
                    writes: bucket.writes,
                    bytes: bucket.bytes,
                    last_seq: scanning.resolve_time(until).ok(),
                }
            })
            .collect()
    })
    .await?;
    let snapshots = volume
        .snapshots()
        .into_iter()
        .filter(|snapshot| snapshot.time >= first_row_start)
        .map(snapshot_info)
        .collect();
    Ok(Json(Timeline {
        volume: name,
        since: rfc3339(first_row_start),
        interval_seconds,
        first: PointInfo { seq: history.first_seq, time: rfc3339(history.first_time) },
        head: PointInfo { seq: history.head_seq, time: rfc3339(history.head_time) },
        buckets,
        snapshots,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_addresses_become_loopback_for_clients() {
        // A URI with 0.0.0.0 does not work as a destination; loopback does.
        assert_eq!(client_address("0.0.0.0:10809".parse().unwrap()), "127.0.0.1:10809");
        assert_eq!(client_address("[::]:10809".parse().unwrap()), "[::1]:10809");
        assert_eq!(client_address("192.0.2.7:99".parse().unwrap()), "192.0.2.7:99");
    }

    #[test]
    fn times_always_have_milliseconds() {
        // One format for every time the API returns.
        assert_eq!(rfc3339(1_795_832_030_000_000_000), "2026-11-28T02:13:50.000Z");
        assert_eq!(rfc3339(1_795_832_030_250_000_000), "2026-11-28T02:13:50.250Z");
    }
}
