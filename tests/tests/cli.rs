//! The `rewind` CLI against a real `rewindd`: every command of PRODUCT.md
//! that the daemon serves today, in human and JSON form, and the errors a
//! user meets (bad size, bad point, unknown volume, point outside history,
//! daemon not running, deleting a volume a clone needs).

mod cli_support;

use std::time::Duration;

use cli_support::{
    HeldConnection, nbd_digest, nbd_write, now_rfc3339, rewind, rewind_command, rewind_fails, rewind_json,
    rewind_ok, socket, texts, wait_disconnected,
};
use rewind_tests::{Daemon, nbd_python, run};

const MIB: u64 = 1 << 20;

#[test]
fn volume_create_list_show_resize_delete() {
    // A volume goes through its whole life by CLI; each step shows in
    // `list`/`show`, in tables and in JSON, and its head serves over NBD.
    let daemon = Daemon::start();
    let created = rewind_ok(&daemon, &["volume", "create", "db", "--size", "64MiB"]);
    assert!(created.contains("Created volume db (64 MiB)"), "{created}");
    assert!(created.contains(&daemon.uri("db")), "prints the NBD URI of the head: {created}");
    let size = nbd_python(
        "import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1]); print(h.get_size())",
        &daemon.uri("db"),
    );
    assert_eq!(size.trim(), (64 * MIB).to_string());

    let table = rewind_ok(&daemon, &["volume", "list"]);
    assert!(table.starts_with("NAME"), "a table with a header: {table}");
    assert!(table.lines().any(|line| line.starts_with("db ") && line.contains("64 MiB")), "{table}");
    let default_row = table.lines().find(|line| line.starts_with("default ")).expect("default listed");
    let cells: Vec<&str> = default_row.split_whitespace().collect();
    // NAME SIZE(2) HEAD LAST-WRITE POINTS ...: never written, so no last write.
    assert_eq!(&cells[..6], ["default", "1", "GiB", "#0", "-", "1"], "{table}");
    let shown = rewind_ok(&daemon, &["volume", "show", "default"]);
    assert!(shown.contains(", 1 point\n"), "singular: {shown}");
    assert!(
        shown.lines().any(|line| line.split_whitespace().collect::<Vec<_>>() == ["last", "write", "-"]),
        "{shown}"
    );
    let list = rewind_json(&daemon, &["volume", "list"]);
    let names: Vec<&str> =
        list["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["db", "default"]);

    nbd_write(&daemon.uri("db"), 0, 4096, 0xab);
    let shown = rewind_ok(&daemon, &["volume", "show", "db"]);
    assert!(shown.contains("Volume db"), "{shown}");
    assert!(shown.contains("#0 (") && shown.contains("to #1 ("), "history window: {shown}");
    assert!(shown.contains(", 2 points\n"), "{shown}");
    let detail = rewind_json(&daemon, &["volume", "show", "db"]);
    assert_eq!(detail["volume"]["size_bytes"], 64 * MIB);
    assert_eq!(detail["volume"]["head"]["seq"], 1);
    assert_eq!(detail["uri"], daemon.uri("db"));
    assert_eq!(detail["volume"]["snapshot_count"], 0);
    assert_eq!(detail["snapshots"], serde_json::json!([]));
    assert_eq!(detail["volume"]["nbd_connections"], serde_json::json!({"head": 0, "points": 0}));
    assert_eq!(detail["journal_segments"], 1);
    assert!(detail["volume"]["journal_bytes"].as_u64().unwrap() >= 4096, "{detail}");

    let resized = rewind_ok(&daemon, &["volume", "resize", "db", "--size", "128M"]);
    assert!(resized.contains("from 64 MiB to 128 MiB"), "{resized}");
    assert_eq!(rewind_json(&daemon, &["volume", "show", "db"])["volume"]["size_bytes"], 128 * MIB);
    let shrunk = rewind_json(&daemon, &["volume", "resize", "db", "--size", "32MiB"]);
    assert_eq!(shrunk["old_size_bytes"], 128 * MIB);
    assert_eq!(shrunk["new_size_bytes"], 32 * MIB);
    let shrunk_text = rewind_ok(&daemon, &["volume", "resize", "db", "--size", "16MiB"]);
    assert!(
        shrunk_text.contains("rewind rollback db --to '#"),
        "a shrink says how to undo it: {shrunk_text}"
    );
    assert!(shrunk_text.contains("also discards the writes made after the resize"), "{shrunk_text}");
    // The same size again is a no-op: no record, no new point.
    let head = rewind_json(&daemon, &["volume", "show", "db"])["volume"]["head"]["seq"].clone();
    let same = rewind_ok(&daemon, &["volume", "resize", "db", "--size", "16MiB"]);
    assert_eq!(same, "db is already 16 MiB: nothing to do.\n");
    assert_eq!(
        rewind_json(&daemon, &["volume", "resize", "db", "--size", "16M"])["seq"],
        serde_json::Value::Null
    );
    assert_eq!(rewind_json(&daemon, &["volume", "show", "db"])["volume"]["head"]["seq"], head);

    let deleted = rewind_ok(&daemon, &["volume", "delete", "db"]);
    assert!(deleted.contains("Deleted volume db"), "{deleted}");
    let after = rewind_json(&daemon, &["volume", "list"]);
    assert_eq!(after["volumes"].as_array().unwrap().len(), 1);
    let json = rewind_json(&daemon, &["volume", "create", "db2", "--size", "1G"]);
    assert_eq!(json["volume"]["size_bytes"], 1u64 << 30);
    assert_eq!(json["uri"], daemon.uri("db2"), "create gives the URI, as clone does");
    assert_eq!(json.get("warning"), None, "1 GiB fits: {json}");
    assert_eq!(rewind_json(&daemon, &["volume", "delete", "db2"])["volume"], "db2");

    // A size the short form rounds is given in bytes too.
    let odd = rewind_ok(&daemon, &["volume", "create", "odd", "--size", "4100K"]);
    assert!(odd.contains("Created volume odd (4.00 MiB (4198400 bytes))"), "{odd}");
    // A volume that can outgrow the data dir is created (it is thin), with
    // a warning that says how much it can use against what is free.
    let output = rewind(&daemon, &["volume", "create", "huge", "--size", "1P"]);
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("Created volume huge (1 PiB)"), "{stdout}");
    assert!(stderr.starts_with("warning: the data dir has "), "{stderr}");
    assert!(stderr.contains("this volume can use up to 2.25 PiB"), "{stderr}");
    let json = rewind_json(&daemon, &["volume", "create", "huge2", "--size", "1P"]);
    assert!(json["warning"].as_str().unwrap().contains("refused (ENOSPC), never lost"), "{json}");
    // Growing one past the free space warns the same way, for what it adds;
    // a small grow does not.
    let output = rewind(&daemon, &["volume", "resize", "odd", "--size", "1P"]);
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("this volume can use up to 2.25 PiB more"), "{stderr}");
    let output = rewind(&daemon, &["volume", "resize", "default", "--size", "2GiB"]);
    let (_, stderr) = texts(&output);
    assert!(output.status.success() && !stderr.contains("warning"), "{stderr}");
    // The warning counts the configured budget, not the default's.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rewindd.toml");
    std::fs::write(&config, "[store]\njournal_budget = \"20%\"\n").unwrap();
    let daemon = Daemon::start_in(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let output = rewind(&daemon, &["volume", "create", "h", "--size", "1P"]);
    let (_, stderr) = texts(&output);
    assert!(
        stderr.contains("can use up to 1.25 PiB (its image plus a journal at its budget of 204.80 TiB"),
        "{stderr}"
    );
}

#[test]
fn bad_arguments_exit_2_with_a_one_line_reason() {
    // Sizes, points and names are checked before the daemon is asked:
    // exit 2, one line that names the problem, nothing created.
    let daemon = Daemon::start();
    for (args, reason) in [
        (&["volume", "create", "db", "--size", "20XB"][..], "is not a size"),
        (&["volume", "create", "db", "--size", "1000"][..], "not a multiple of 512"),
        (&["volume", "create", "db", "--size", "0"][..], "greater than zero"),
        (&["volume", "create", "db", "--size", "8000PiB"][..], "the largest size is 1EiB"),
        (&["volume", "resize", "default", "--size", "1025P"][..], "the largest size is 1EiB"),
        (&["volume", "create", "db"][..], "--size"),
        (&["volume", "resize", "default", "--size", "lots"][..], "is not a size"),
        (&["volume", "create", "../etc", "--size", "1G"][..], "is not a valid name"),
        (&["rollback", "default", "--to", "-15x"][..], "is not a relative time"),
        (&["rollback", "default", "--to", "#12a"][..], "is not a sequence number"),
        (&["clone", "default", "--at", "2026-13-01T00:00:00Z", "--name", "c"][..], "is not an RFC 3339 time"),
        (&["export", "default", "--at", ""][..], "empty point"),
        (&["timeline", "default", "--since", "yesterday!"][..], "is not a valid name"),
        (&["volume", "frobnicate"][..], "unrecognized subcommand"),
        (&["timeline", "default", "--interval", "0"][..], "an interval is 1s to 365d"),
        (&["timeline", "default", "--interval", "1y"][..], "1w"),
        (&["volume", "create", "db", "--size", "-5G"][..], "`-5G` is negative"),
        (&["rollback", "default", "--to", "90s"][..], "did you mean -90s?"),
        (&["rollback", "default", "--to", "+5m"][..], "is in the future"),
        (&["export", "default", "--at", "2026-11-28T17:12:00"][..], "add Z for UTC (2026-11-28T17:12:00Z)"),
        (&["export", "default", "--at", "812"][..], "write #812"),
        (&["volume"][..], "volume needs a subcommand: create, list, show, resize, reopen, delete"),
        (&["snapshot"][..], "snapshot needs a subcommand: create, list, delete"),
    ] {
        let stderr = rewind_fails(&daemon, args, 2);
        assert_eq!(stderr.lines().count(), 1, "rewind {args:?}: one line, got:\n{stderr}");
        assert!(stderr.starts_with("rewind: ") && stderr.contains(reason), "rewind {args:?}: {stderr}");
    }
    let list = rewind_json(&daemon, &["volume", "list"]);
    assert_eq!(list["volumes"].as_array().unwrap().len(), 1, "nothing was created: {list}");
    // With --json the usage error is JSON on stdout.
    let output = rewind(&daemon, &["volume", "create", "db", "--size", "20XB", "--json"]);
    assert_eq!(output.status.code(), Some(2));
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON error");
    assert!(error["error"].as_str().unwrap().contains("is not a size"), "{error}");
    assert_eq!(error["hint"], "rewind volume create --help shows the usage", "same keys as every error");
    // An empty $REWIND_CONTROL is named as such (not as a --control flag).
    let binary = rewind_tests::binary("rewind");
    let output = run(
        std::process::Command::new(binary).arg("status").env("REWIND_CONTROL", ""),
        Duration::from_secs(30),
    );
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("$REWIND_CONTROL is set but empty"), "{stderr}");
    // Help and version are not errors.
    assert!(rewind_ok(&daemon, &["--help"]).contains("rollback"));
    assert!(rewind_ok(&daemon, &["--version"]).starts_with("rewind "));
}

#[test]
fn unknown_volumes_and_snapshots_are_named_with_what_exists() {
    // Asking for a volume or snapshot that does not exist fails with exit 1
    // and an error naming what does exist.
    let daemon = Daemon::start();
    for args in [
        &["volume", "show", "nosuch"][..],
        &["volume", "resize", "nosuch", "--size", "1G"][..],
        &["volume", "delete", "nosuch"][..],
        &["snapshot", "list", "nosuch"][..],
        &["snapshot", "create", "nosuch", "s"][..],
        &["rollback", "nosuch", "--to", "#0"][..],
        &["clone", "nosuch", "--at", "#0", "--name", "c"][..],
        &["export", "nosuch", "--at", "#0"][..],
        &["timeline", "nosuch"][..],
    ] {
        let stderr = rewind_fails(&daemon, args, 1);
        assert!(stderr.contains("no volume named nosuch (volumes: default)"), "rewind {args:?}: {stderr}");
        assert!(stderr.contains("hint: rewind volume list"), "rewind {args:?} says what to do: {stderr}");
        assert!(!stderr.contains("volume create"), "a typo is likelier than a missing volume: {stderr}");
    }
    let stderr = rewind_fails(&daemon, &["snapshot", "delete", "default", "nosuch"], 1);
    assert!(stderr.contains("no snapshot named nosuch on default"), "{stderr}");
    let stderr = rewind_fails(&daemon, &["export", "default", "--at", "nosuch"], 1);
    assert!(stderr.contains("no snapshot named nosuch on default"), "{stderr}");
    let taken = rewind_fails(&daemon, &["volume", "create", "default", "--size", "1G"], 1);
    assert!(taken.contains("volume default already exists"), "{taken}");
    // --json errors are JSON on stdout, with the same message.
    let output = rewind(&daemon, &["volume", "show", "nosuch", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON error");
    assert!(error["error"].as_str().unwrap().contains("no volume named nosuch"), "{error}");
    assert!(error["hint"].as_str().is_some(), "{error}");
}

#[test]
fn points_outside_history_name_the_retained_window() {
    // A well-formed point the volume never had fails with exit 1 and the
    // retained window, for every command that takes a point.
    let daemon = Daemon::start();
    nbd_write(&daemon.uri("default"), 0, 4096, 1);
    for args in [
        &["rollback", "default", "--to", "#99"][..],
        &["rollback", "default", "--to", "-30d"][..],
        &["clone", "default", "--at", "2001-01-01T00:00:00Z", "--name", "c"][..],
        &["export", "default", "--at", "#12345678"][..],
        &["timeline", "default", "--since", "#99"][..],
    ] {
        let stderr = rewind_fails(&daemon, args, 1);
        assert!(stderr.contains("is outside the history of default"), "rewind {args:?}: {stderr}");
        assert!(
            stderr.contains("retained history is #0 (") && stderr.contains("to #1 ("),
            "{args:?}: {stderr}"
        );
    }
    let stderr = rewind_fails(&daemon, &["rollback", "default", "--to", "-30d"], 1);
    assert!(stderr.contains("-30d is outside"), "relative points are shown as written: {stderr}");
    let stderr = rewind_fails(&daemon, &["export", "default", "--at", "-90s"], 1);
    assert!(stderr.contains("rewind: -90s is outside"), "not -1m30s: {stderr}");
    // The window's times are printed as the tables print them.
    let window = regex_like_times(&stderr);
    assert_eq!(window.len(), 2, "two times with milliseconds: {stderr}");
    let stderr = rewind_fails(&daemon, &["export", "default", "--at", "2999-01-01T00:00:00Z"], 1);
    assert!(stderr.contains("2999-01-01T00:00:00Z is in the future"), "{stderr}");
    // The hint's point is the latest one, and works as given.
    assert!(stderr.contains("rewind export default --at -0s reads the latest point"), "{stderr}");
    let latest = rewind_json(&daemon, &["export", "default", "--at", "-0s"]);
    let head = rewind_json(&daemon, &["volume", "show", "default"])["volume"]["head"]["seq"].clone();
    assert_eq!(latest["point"]["seq"], head, "{latest}");
}

/// The `YYYY-MM-DDTHH:MM:SS.mmmZ` times in `text`.
fn regex_like_times(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let shape = b"dddd-dd-ddTdd:dd:dd.dddZ";
    (0..bytes.len().saturating_sub(shape.len() - 1))
        .filter(|&at| {
            shape.iter().zip(&bytes[at..]).all(|(want, got)| match want {
                b'd' => got.is_ascii_digit(),
                other => other == got,
            })
        })
        .map(|at| text[at..at + shape.len()].to_owned())
        .collect()
}

#[test]
fn printed_times_are_valid_points_for_the_point_they_name() {
    // Every time the CLI prints has milliseconds, the index's resolution:
    // the time printed for a snapshot, pasted back as --at, exports that
    // snapshot's seq (with whole seconds it would resolve to an earlier one).
    let daemon = Daemon::start();
    for fill in 1..=3 {
        nbd_write(&daemon.uri("default"), 0, 4096, fill);
    }
    let created = rewind_ok(&daemon, &["snapshot", "create", "default", "mark"]);
    let printed = regex_like_times(&created);
    assert_eq!(printed.len(), 1, "{created}");
    assert!(created.contains("at #4 ("), "{created}");
    let exported = rewind_json(&daemon, &["export", "default", "--at", &printed[0]]);
    assert_eq!(exported["point"]["seq"], 4, "{printed:?} resolves to the snapshot's point");
    assert_eq!(exported["point"]["time"], printed[0].as_str(), "JSON uses the same format");
    // The table and JSON forms of the same snapshot agree.
    let table = rewind_ok(&daemon, &["snapshot", "list", "default"]);
    assert_eq!(regex_like_times(&table), printed, "{table}");
    let json = rewind_json(&daemon, &["snapshot", "create", "default", "mark2"]);
    assert_eq!(json["volume"], "default", "snapshot create names its volume");
    let time = json["time"].as_str().unwrap();
    assert_eq!(regex_like_times(time), [time], "{json}");
    // Every time in every answer has that one shape.
    for args in
        [&["volume", "list"][..], &["volume", "show", "default"], &["timeline", "default"], &["status"]]
    {
        let text = rewind_json(&daemon, args).to_string();
        for (at, _) in text.match_indices("T") {
            let candidate = text[..at].rsplit('"').next().unwrap_or("");
            if candidate.len() == 10 && candidate.as_bytes()[4] == b'-' {
                let end = text[at..].find('"').map_or(text.len(), |end| at + end);
                let time = &text[at - 10..end];
                assert_eq!(regex_like_times(time), [time], "rewind {args:?}: {time}");
            }
        }
    }
}

#[test]
fn daemon_not_running_names_the_socket_and_how_to_start_one() {
    // Without a daemon, every command fails with exit 1, naming the socket
    // it tried (and where that path came from) and the command that starts
    // a daemon there; a socket left by a killed daemon says so.
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("control.sock");
    let socket_text = socket_path.to_str().unwrap();
    let output = run(&mut rewind_command(&["--control", socket_text, "status"]), Duration::from_secs(30));
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("cannot reach rewindd at {socket_text} (from --control)")), "{stderr}");
    assert!(stderr.contains(&format!("rewindd --data-dir {}", dir.path().display())), "{stderr}");

    let output =
        run(rewind_command(&["volume", "list"]).env("REWIND_CONTROL", socket_text), Duration::from_secs(30));
    assert!(texts(&output).1.contains("(from $REWIND_CONTROL)"), "{:?}", texts(&output));

    let output = run(rewind_command(&["volume", "list"]).current_dir(dir.path()), Duration::from_secs(30));
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("cannot reach rewindd at ./rewind-data/control.sock (the default"), "{stderr}");
    assert!(stderr.contains("rewindd --data-dir ./rewind-data"), "{stderr}");

    let output =
        run(&mut rewind_command(&["--control", socket_text, "status", "--json"]), Duration::from_secs(30));
    let error: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON error");
    assert!(error["hint"].as_str().unwrap().contains("rewindd --data-dir"), "{error}");

    // A daemon killed with SIGKILL leaves its socket: nothing listens.
    let mut daemon = Daemon::start();
    rewind_ok(&daemon, &["status"]);
    daemon.kill9();
    assert!(socket(&daemon).exists(), "SIGKILL cannot remove the socket");
    let stderr = rewind_fails(&daemon, &["status"], 1);
    assert!(stderr.contains("nothing listens on it"), "{stderr}");
    assert!(stderr.contains("it replaces the stale socket"), "{stderr}");
    daemon.restart();
    rewind_ok(&daemon, &["status"]);
}

#[test]
fn deleting_a_volume_a_clone_needs_is_refused_unless_forced() {
    // A clone reads through its source: deleting the source is refused
    // (exit 1, naming the clone and --force); forced, the source goes but
    // the clone keeps serving the cloned point.
    let daemon = Daemon::start();
    rewind_ok(&daemon, &["volume", "create", "base", "--size", "4MiB"]);
    nbd_write(&daemon.uri("base"), 0, 65536, 0x5a);
    let expected = nbd_digest(&daemon.uri("base"), 4 * MIB);
    let cloned = rewind_ok(&daemon, &["clone", "base", "--at", "#1", "--name", "child"]);
    assert!(cloned.contains("Cloned base at #1") && cloned.contains("as child"), "{cloned}");
    assert!(cloned.contains(&daemon.uri("child")), "{cloned}");
    nbd_write(&daemon.uri("base"), 0, 65536, 0x11);

    let stderr = rewind_fails(&daemon, &["volume", "delete", "base"], 1);
    assert!(stderr.contains("volume base has clones that read through it: child"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    let shown = rewind_json(&daemon, &["volume", "show", "base"]);
    assert_eq!(shown["volume"]["clones"], serde_json::json!(["child"]));

    let forced = rewind_json(&daemon, &["volume", "delete", "base", "--force"]);
    assert_eq!(forced["clones_kept"], serde_json::json!(["child"]));
    let list = rewind_json(&daemon, &["volume", "list"]);
    let names: Vec<&str> =
        list["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["child", "default"]);
    assert_eq!(nbd_digest(&daemon.uri("child"), 4 * MIB), expected, "the clone still reads the cloned point");

    // A new volume under the deleted one's name is another volume: the
    // clone's origin is shown as deleted, the new one has no clones, and
    // deleting it says nothing about the old one's.
    let shown = rewind_json(&daemon, &["volume", "show", "child"]);
    assert_eq!(shown["volume"]["clone_of"], serde_json::json!({"volume": "base", "seq": 1, "deleted": true}));
    rewind_ok(&daemon, &["volume", "create", "base", "--size", "4MiB"]);
    let child = rewind_ok(&daemon, &["volume", "show", "child"]);
    assert!(child.contains("clone of     base (deleted) at #1"), "{child}");
    let list = rewind_ok(&daemon, &["volume", "list"]);
    assert!(
        list.lines().any(|line| line.starts_with("child ") && line.contains("base@#1 (deleted)")),
        "{list}"
    );
    assert_eq!(rewind_json(&daemon, &["volume", "show", "base"])["volume"]["clones"], serde_json::json!([]));
    // Named snapshots are kept until deleted: a volume that has some is
    // deleted only with --force.
    rewind_ok(&daemon, &["snapshot", "create", "base", "keep-me"]);
    let stderr = rewind_fails(&daemon, &["volume", "delete", "base"], 1);
    assert!(stderr.contains("volume base has named snapshots, deleted with it: keep-me"), "{stderr}");
    assert!(stderr.contains("rewind volume delete base --force"), "{stderr}");
    // The hint says what --force would do for the reasons that apply only.
    assert!(stderr.contains("its snapshots go with it"), "{stderr}");
    assert!(!stderr.contains("connected clients") && !stderr.contains("clones keep"), "{stderr}");
    assert_eq!(rewind_json(&daemon, &["snapshot", "list", "base"])["snapshots"][0]["name"], "keep-me");
    let deleted = rewind_ok(&daemon, &["volume", "delete", "base", "--force"]);
    assert_eq!(deleted.trim(), "Deleted volume base and its history.");
    assert_eq!(nbd_digest(&daemon.uri("child"), 4 * MIB), expected, "the clone still reads the cloned point");

    // A clone of a clone reads through both: once the middle one is
    // deleted, the first still names it as a clone that reads through it,
    // refuses a plain delete for it, and, forced, says its data is kept.
    rewind_ok(&daemon, &["clone", "child", "--at", "#0", "--name", "grandchild"]);
    rewind_ok(&daemon, &["volume", "create", "top", "--size", "4MiB"]);
    rewind_ok(&daemon, &["clone", "top", "--at", "#0", "--name", "middle"]);
    rewind_ok(&daemon, &["clone", "middle", "--at", "#0", "--name", "leaf"]);
    rewind_ok(&daemon, &["volume", "delete", "middle", "--force"]);
    let shown = rewind_json(&daemon, &["volume", "show", "top"]);
    assert_eq!(shown["volume"]["clones"], serde_json::json!(["leaf"]), "{shown}");
    let stderr = rewind_fails(&daemon, &["volume", "delete", "top"], 1);
    assert!(stderr.contains("volume top has clones that read through it: leaf"), "{stderr}");
    let forced = rewind_json(&daemon, &["volume", "delete", "top", "--force"]);
    assert_eq!(forced["clones_kept"], serde_json::json!(["leaf"]), "{forced}");
    rewind_ok(&daemon, &["volume", "delete", "leaf"]);
    rewind_ok(&daemon, &["volume", "delete", "grandchild"]);
    rewind_ok(&daemon, &["volume", "delete", "child"]);
}

#[test]
fn rollback_delete_and_reopen_refuse_while_a_client_is_connected() {
    // A libnbd client holding the head open stands for a running VM: the
    // volume shows the connection; rollback, reopen, shrink and delete are refused
    // (exit 1, naming the count and saying to stop the VM); --force rolls
    // back anyway, and the client's next write lands on the rolled-back
    // image; once it disconnects, delete goes ahead. A client on a point
    // blocks delete only.
    let daemon = Daemon::start();
    rewind_ok(&daemon, &["volume", "create", "emr", "--size", "1MiB"]);
    nbd_write(&daemon.uri("emr"), 0, 4096, b'c');
    rewind_ok(&daemon, &["snapshot", "create", "emr", "clean"]);
    nbd_write(&daemon.uri("emr"), 8192, 4096, b'x');
    let clean = nbd_digest(&daemon.uri("emr@clean"), MIB);

    let mut vm = HeldConnection::open(&daemon.uri("emr"));
    let shown = rewind_json(&daemon, &["volume", "show", "emr"]);
    assert_eq!(shown["volume"]["nbd_connections"], serde_json::json!({"head": 1, "points": 0}));
    let table = rewind_ok(&daemon, &["volume", "list"]);
    let row = table.lines().find(|line| line.starts_with("emr ")).unwrap();
    assert!(row.contains("1 head"), "{table}");
    assert!(rewind_ok(&daemon, &["volume", "show", "emr"]).contains("1 connection to the head"));

    let stderr = rewind_fails(&daemon, &["rollback", "emr", "--to", "clean"], 1);
    assert!(stderr.contains("volume emr has 1 NBD connection open to its head"), "{stderr}");
    assert!(stderr.contains("hint: stop the VM") && stderr.contains("--force"), "{stderr}");
    // The hint's command is the user's own, ready to paste (quoted for a shell).
    assert!(stderr.contains("rewind rollback emr --to clean --force"), "{stderr}");
    let stderr = rewind_fails(&daemon, &["rollback", "emr", "--to", "#1"], 1);
    assert!(stderr.contains("rewind rollback emr --to '#1' --force"), "{stderr}");
    let stderr = rewind_fails(&daemon, &["volume", "delete", "emr"], 1);
    assert!(stderr.contains("volume emr has 1 NBD connection open (1 to its head, 0 to points)"), "{stderr}");
    let stderr = rewind_fails(&daemon, &["volume", "reopen", "emr"], 1);
    assert!(stderr.contains("1 NBD connection open (1 to its head, 0 to points)"), "{stderr}");
    assert!(stderr.contains("their reads and writes would fail until they reconnect"), "{stderr}");
    // A shrink cuts the disk under the VM: refused too.
    let stderr = rewind_fails(&daemon, &["volume", "resize", "emr", "--size", "512KiB"], 1);
    assert!(stderr.contains("volume emr has 1 NBD connection open to its head: a shrink cuts"), "{stderr}");
    assert!(stderr.contains("rewind volume resize emr --size 524288 --force"), "{stderr}");
    assert_eq!(
        rewind_json(&daemon, &["volume", "show", "emr"])["volume"]["head"]["seq"],
        3,
        "nothing changed"
    );
    // Growing is not refused (the client keeps the size it saw); a forced
    // shrink goes ahead.
    rewind_ok(&daemon, &["volume", "resize", "emr", "--size", "2MiB"]);
    rewind_ok(&daemon, &["volume", "resize", "emr", "--size", "1MiB", "--force"]);
    assert_eq!(rewind_json(&daemon, &["volume", "show", "emr"])["volume"]["size_bytes"], MIB);

    let forced = rewind(&daemon, &["rollback", "emr", "--to", "clean", "--force"]);
    let (stdout, _) = texts(&forced);
    assert!(forced.status.success(), "{stdout}");
    assert!(stdout.contains("Warning: 1 NBD connection to the head saw the image change"), "{stdout}");
    assert!(stdout.contains("--force --control"), "the undo command goes past the client too: {stdout}");
    assert_eq!(nbd_digest(&daemon.uri("emr"), MIB), clean);
    assert_eq!(vm.write(), "written", "the forced client keeps writing, now on the rolled-back image");
    vm.close();
    wait_disconnected(&daemon, "emr");

    let reader = HeldConnection::open(&daemon.uri("emr@clean"));
    assert_eq!(
        rewind_json(&daemon, &["volume", "show", "emr"])["volume"]["nbd_connections"],
        serde_json::json!({"head": 0, "points": 1})
    );
    rewind_ok(&daemon, &["rollback", "emr", "--to", "clean"]);
    let stderr = rewind_fails(&daemon, &["volume", "delete", "emr"], 1);
    assert!(stderr.contains("1 NBD connection open (0 to its head, 1 to points)"), "{stderr}");
    let deleted = rewind_ok(&daemon, &["volume", "delete", "emr", "--force"]);
    assert!(
        deleted.contains(
            "Warning: 1 NBD connection still open to it: writes now fail; reads show the deleted data"
        ),
        "{deleted}"
    );
    // A new volume that takes the name does not inherit the deleted one's
    // connections (they counted against it, and refused its rollback).
    rewind_ok(&daemon, &["volume", "create", "emr", "--size", "4MiB"]);
    assert_eq!(
        rewind_json(&daemon, &["volume", "show", "emr"])["volume"]["nbd_connections"],
        serde_json::json!({"head": 0, "points": 0})
    );
    rewind_ok(&daemon, &["rollback", "emr", "--to", "#0"]);
    rewind_ok(&daemon, &["volume", "delete", "emr"]);
    reader.close();
    let list = rewind_json(&daemon, &["volume", "list"]);
    assert_eq!(list["volumes"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn a_full_disk_refuses_writes_without_breaking_the_volume() {
    // The daemon runs under a 24 MiB soft file-size limit: journal writes
    // past it fail as on a full disk. NBD writes get ENOSPC; the volume is
    // not marked broken (`volume show` has no write error); a snapshot
    // either fits in the reserved space or is refused with the "free space,
    // then retry" hint (HTTP 507). Once the limit is lifted (the disk
    // "freed"), writes resume with no reopen and no restart, everything
    // acknowledged before is intact, and `volume reopen` of the healthy
    // volume is a harmless no-op.
    let dir = tempfile::tempdir().unwrap();
    let daemon =
        Daemon::start_wrapped(&dir.path().join("data"), &[], &["prlimit", "--fsize=25165824:unlimited"]);
    let script = r#"
import sys, nbd
h = nbd.NBD(); h.connect_uri(sys.argv[1])
acked = 0
for i in range(64):
    try:
        h.pwrite(bytes([i + 1]) * (1 << 20), i << 20); acked = i + 1
    except nbd.Error as e:
        print(acked, e.errno); break
"#;
    let outcome = nbd_python(script, &daemon.uri("default"));
    let (acked, errno) = outcome.trim().split_once(' ').expect("a write failed");
    assert_eq!(errno, "ENOSPC", "{outcome}");
    let acked: u64 = acked.parse().unwrap();
    assert!(acked >= 8, "{outcome}");

    let detail = rewind_json(&daemon, &["volume", "show", "default"]);
    assert_eq!(detail["volume"]["write_error"], serde_json::Value::Null, "{detail}");
    let snapshot = rewind(&daemon, &["snapshot", "create", "default", "s"]);
    if !snapshot.status.success() {
        let (_, stderr) = texts(&snapshot);
        assert!(stderr.contains("no space left") && stderr.contains("free space"), "{stderr}");
        assert!(!stderr.contains("reopen"), "{stderr}");
    }
    let (status, metrics) = cli_support::http(&socket(&daemon), "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(!metrics.contains("rewind_volume_write_no_space_total{volume=\"default\"} 0\n"), "{metrics}");

    let pid = daemon.child.as_ref().unwrap().id().to_string();
    run_ok_quietly(&["prlimit", "--pid", &pid, "--fsize=unlimited"]);
    let check = format!(
        "import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         bad = [i for i in range({acked}) if h.pread(1 << 20, i << 20) != bytes([i + 1]) * (1 << 20)]\n\
         h.pwrite(b'y' * (1 << 20), 40 << 20); h.flush()\nprint(len(bad), h.pread(4096, 40 << 20) == b'y' * 4096)"
    );
    assert_eq!(nbd_python(&check, &daemon.uri("default")).trim(), "0 True");
    let again = rewind_json(&daemon, &["volume", "reopen", "default"]);
    assert_eq!(again["cleared_write_error"], serde_json::Value::Null, "a healthy volume reopens as it is");
    assert_eq!(again["stale_nbd_connections"], 0);
}

fn run_ok_quietly(args: &[&str]) {
    let output = run(std::process::Command::new(args[0]).args(&args[1..]), Duration::from_secs(30));
    assert!(output.status.success(), "{args:?}: {:?}", texts(&output));
}

#[test]
fn control_paths_that_are_not_sockets_are_named_as_such() {
    // --control at a directory (a data dir) or a regular file is not "a
    // daemon that is not running": say what the path is instead.
    let daemon = Daemon::start();
    let dir = daemon.data_dir.to_str().unwrap();
    let output = run(&mut rewind_command(&["--control", dir, "status"]), Duration::from_secs(30));
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("it is a directory, not a socket"), "{stderr}");
    assert!(stderr.contains(&format!("did you mean --control {dir}/control.sock?")), "{stderr}");
    assert!(!stderr.contains("not running"), "{stderr}");
    let file = tempfile::NamedTempFile::new().unwrap();
    let path = file.path().to_str().unwrap();
    let output = run(&mut rewind_command(&["--control", path, "volume", "list"]), Duration::from_secs(30));
    let (_, stderr) = texts(&output);
    assert!(stderr.contains("it is a regular file, not a socket"), "{stderr}");
}

#[test]
fn snapshots_are_created_listed_exported_and_deleted() {
    // A snapshot bookmarks the head; it lists with its seq, serves over
    // NBD by name (read-only) after the head moves on, and deletes.
    let daemon = Daemon::start();
    nbd_write(&daemon.uri("default"), 0, 8192, 0x42);
    let at_snapshot = nbd_digest(&daemon.uri("default"), MIB);
    let created = rewind_ok(&daemon, &["snapshot", "create", "default", "before-upgrade"]);
    assert!(created.contains("Created snapshot before-upgrade of default at #2"), "{created}");
    nbd_write(&daemon.uri("default"), 0, 8192, 0x43);

    let table = rewind_ok(&daemon, &["snapshot", "list", "default"]);
    assert!(table.lines().any(|line| line.starts_with("before-upgrade") && line.contains("#2")), "{table}");
    let list = rewind_json(&daemon, &["snapshot", "list", "default"]);
    assert_eq!(list["snapshots"][0]["name"], "before-upgrade");
    assert_eq!(list["snapshots"][0]["seq"], 2);

    let uri = rewind_ok(&daemon, &["export", "default", "--at", "before-upgrade"]);
    assert_eq!(uri.trim(), daemon.uri("default@before-upgrade"), "stdout is the URI alone");
    assert_eq!(nbd_digest(uri.trim(), MIB), at_snapshot);

    // Listed oldest first, not by name.
    rewind_ok(&daemon, &["snapshot", "create", "default", "after-upgrade"]);
    let list = rewind_json(&daemon, &["snapshot", "list", "default"]);
    let names: Vec<&str> =
        list["snapshots"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["before-upgrade", "after-upgrade"], "{list}");
    rewind_ok(&daemon, &["snapshot", "delete", "default", "after-upgrade"]);
    let duplicate = rewind_fails(&daemon, &["snapshot", "create", "default", "before-upgrade"], 1);
    assert!(duplicate.contains("snapshot before-upgrade already exists on default"), "{duplicate}");
    let bad = rewind_fails(&daemon, &["snapshot", "create", "default", "2026"], 2);
    assert!(bad.contains("would be read as a point in time"), "{bad}");

    let deleted = rewind_json(&daemon, &["snapshot", "delete", "default", "before-upgrade"]);
    assert_eq!(deleted["snapshot"], "before-upgrade");
    assert!(rewind_ok(&daemon, &["snapshot", "list", "default"]).contains("has no snapshots"));
    // Its point stays in the history.
    let uri = rewind_ok(&daemon, &["export", "default", "--at", "#2"]);
    assert_eq!(nbd_digest(uri.trim(), MIB), at_snapshot);
}

#[test]
fn rollback_makes_the_head_the_point_and_the_printed_command_undoes_it() {
    // Write, note a time, write more; `rewind rollback --to TIME` makes the
    // head (read through NBD) equal that point; the undo command it prints,
    // run by a shell as printed, makes the head equal the pre-rollback head.
    let daemon = Daemon::start();
    rewind_ok(&daemon, &["volume", "create", "vm", "--size", "4MiB"]);
    let head = daemon.uri("vm");
    nbd_write(&head, 0, 65536, b'A');
    nbd_write(&head, 2 * MIB, 4096, b'a');
    std::thread::sleep(Duration::from_millis(50));
    let noted = now_rfc3339();
    std::thread::sleep(Duration::from_millis(50));
    let point_uri = rewind_ok(&daemon, &["export", "vm", "--at", &noted]);
    let at_point = nbd_digest(point_uri.trim(), 4 * MIB);
    nbd_write(&head, 32768, 65536, b'B');
    nbd_write(&head, 3 * MIB, 4096, b'b');
    let before_rollback = nbd_digest(&head, 4 * MIB);
    assert_ne!(at_point, before_rollback);

    let printed = rewind_ok(&daemon, &["rollback", "vm", "--to", &noted]);
    assert!(printed.contains("Rolled back vm to #2"), "{printed}");
    assert!(printed.contains("The previous head #4"), "{printed}");
    assert_eq!(nbd_digest(&head, 4 * MIB), at_point, "the head is the image at the noted time");

    let undo = printed
        .lines()
        .find_map(|line| line.strip_prefix("Undo with: "))
        .unwrap_or_else(|| panic!("no undo command in:\n{printed}"));
    assert!(undo.starts_with("rewind rollback vm --to '#4' --control "), "{undo}");
    let rewind_dir = rewind_tests::binary("rewind").parent().unwrap().to_owned();
    let path = format!("{}:{}", rewind_dir.display(), std::env::var("PATH").unwrap_or_default());
    let output =
        run(std::process::Command::new("sh").arg("-c").arg(undo).env("PATH", path), Duration::from_secs(60));
    assert!(output.status.success(), "{undo}: {:?}", texts(&output));
    assert_eq!(nbd_digest(&head, 4 * MIB), before_rollback, "undo restores the pre-rollback head");

    // JSON names every seq; the abandoned branch stays readable.
    let json = rewind_json(&daemon, &["rollback", "vm", "--to", "#1"]);
    assert_eq!(json["target"]["seq"], 1);
    assert_eq!(json["previous_head"]["seq"], 6);
    assert_eq!(json["new_head"]["seq"], 7);
    assert_eq!(json["undo_to"], "#6");
    let abandoned = rewind_ok(&daemon, &["export", "vm", "--at", "#4"]);
    assert_eq!(nbd_digest(abandoned.trim(), 4 * MIB), before_rollback);
    assert!(!printed.contains("The size went with it"), "{printed}");
    // A rollback past a resize takes the size the image had: it says so.
    rewind_ok(&daemon, &["volume", "resize", "vm", "--size", "8MiB"]);
    let printed = rewind_ok(&daemon, &["rollback", "vm", "--to", "#7"]);
    assert!(
        printed.contains("The size went with it: 8 MiB before, 4 MiB now (the image's size at #7)"),
        "{printed}"
    );
    let json = rewind_json(&daemon, &["rollback", "vm", "--to", "#8"]);
    assert_eq!(
        (json["previous_size_bytes"].as_u64(), json["size_bytes"].as_u64()),
        (Some(4 * MIB), Some(8 * MIB))
    );
}

#[test]
fn clone_and_export_serve_points_over_nbd() {
    // A clone of a point is writable and independent of its source; an
    // export of a point is read-only and pinned to its seq.
    let daemon = Daemon::start();
    nbd_write(&daemon.uri("default"), 0, 4096, 7);
    let first = nbd_digest(&daemon.uri("default"), MIB);
    nbd_write(&daemon.uri("default"), 0, 4096, 8);
    let cloned = rewind_json(&daemon, &["clone", "default", "--at", "#1", "--name", "copy"]);
    assert_eq!(
        cloned["volume"]["clone_of"],
        serde_json::json!({"volume": "default", "seq": 1, "deleted": false})
    );
    assert_eq!(nbd_digest(&daemon.uri("copy"), MIB), first);
    nbd_write(&daemon.uri("copy"), 0, 4096, 9);
    assert_ne!(nbd_digest(&daemon.uri("copy"), MIB), first, "the clone takes writes");
    let taken = rewind_fails(&daemon, &["clone", "default", "--at", "#1", "--name", "copy"], 1);
    assert!(taken.contains("volume copy already exists"), "{taken}");

    std::thread::sleep(Duration::from_millis(1100));
    let exported = rewind_json(&daemon, &["export", "default", "--at", "-1s"]);
    assert_eq!(exported["read_only"], true);
    let pinned = exported["export_name"].as_str().unwrap();
    assert!(pinned.starts_with("default@#"), "relative points are pinned to a seq: {pinned}");
    let uri = rewind_ok(&daemon, &["export", "default", "--at", "#1"]);
    assert_eq!(uri.trim(), daemon.uri("default@%231"), "`#` is percent-encoded in the URI");
    assert_eq!(nbd_digest(uri.trim(), MIB), first);
    let refused = nbd_python(
        "import sys, nbd\nh = nbd.NBD(); h.connect_uri(sys.argv[1])\n\
         try:\n    h.pwrite(b'x' * 512, 0); print('written')\nexcept nbd.Error as e:\n    print('refused', e.errno)",
        uri.trim(),
    );
    assert!(refused.starts_with("refused"), "a point is read-only: {refused}");
}

#[test]
fn timeline_counts_writes_and_bytes_per_interval() {
    // Three writes show up as three writes and their bytes in the
    // timeline, with the snapshot and the point at the end of each row.
    let daemon = Daemon::start();
    nbd_write(&daemon.uri("default"), 0, 4096, 1);
    nbd_write(&daemon.uri("default"), 8192, 8192, 2);
    rewind_ok(&daemon, &["snapshot", "create", "default", "mark"]);
    nbd_write(&daemon.uri("default"), 65536, 512, 3);
    let timeline = rewind_json(&daemon, &["timeline", "default", "--since", "-10m", "--interval", "1m"]);
    assert_eq!(timeline["interval_seconds"], 60);
    let buckets = timeline["buckets"].as_array().unwrap();
    let writes: u64 = buckets.iter().map(|b| b["writes"].as_u64().unwrap()).sum();
    let bytes: u64 = buckets.iter().map(|b| b["bytes"].as_u64().unwrap()).sum();
    assert_eq!((writes, bytes), (3, 4096 + 8192 + 512), "{timeline}");
    assert_eq!(buckets.last().unwrap()["last_seq"], 4, "the last row ends at the head");
    assert_eq!(timeline["snapshots"][0]["name"], "mark");
    assert_eq!(timeline["head"]["seq"], 4);

    let text = rewind_ok(&daemon, &["timeline", "default"]);
    assert!(text.starts_with("default: history #0 ("), "{text}");
    assert!(text.contains("START") && text.contains("WRITES") && text.contains("BYTES"), "{text}");
    assert!(text.lines().any(|line| line.contains("mark")), "the snapshot is on its row: {text}");
    let stderr = rewind_fails(&daemon, &["timeline", "default", "--since", "2999-01-01T00:00:00Z"], 1);
    assert!(stderr.contains("is in the future"), "{stderr}");
    // An hour per row, from a day ago: the one row starts when the volume
    // was created, not at the whole hour before it.
    let timeline = rewind_json(&daemon, &["timeline", "default", "--since", "-1d", "--interval", "1h"]);
    let created = &timeline["first"]["time"];
    assert_eq!(&timeline["buckets"][0]["start"], created, "{timeline}");
    assert_eq!(&timeline["since"], created, "{timeline}");
    // From the snapshot, an hour per row: the one row starts at the
    // snapshot and counts only the write after it.
    let timeline = rewind_json(&daemon, &["timeline", "default", "--since", "mark", "--interval", "1h"]);
    let mark = rewind_json(&daemon, &["snapshot", "list", "default"])["snapshots"][0]["time"].clone();
    assert_eq!(timeline["buckets"][0]["start"], mark, "{timeline}");
    let buckets = timeline["buckets"].as_array().unwrap();
    let writes: u64 = buckets.iter().map(|b| b["writes"].as_u64().unwrap()).sum();
    let bytes: u64 = buckets.iter().map(|b| b["bytes"].as_u64().unwrap()).sum();
    assert_eq!((writes, bytes), (1, 512), "{timeline}");
}

#[test]
fn status_describes_the_daemon() {
    // `status` names the daemon's addresses and counts, as text and JSON.
    let daemon = Daemon::start();
    let text = rewind_ok(&daemon, &["status"]);
    assert!(text.starts_with("rewindd "), "{text}");
    assert!(text.contains(&daemon.nbd.to_string()), "{text}");
    let status = rewind_json(&daemon, &["status"]);
    assert_eq!(status["nbd_listen"], daemon.nbd.to_string());
    assert_eq!(status["volumes"], 1);
    assert_eq!(status["control_socket"], socket(&daemon).to_str().unwrap());
    assert_eq!(status["pid"], daemon.child.as_ref().unwrap().id());
}

#[test]
fn completions_and_man_pages_come_from_the_clap_definitions() {
    // Shell completions and man pages need no daemon and cover the commands.
    let bash = run(&mut rewind_command(&["completions", "bash"]), Duration::from_secs(30));
    assert!(bash.status.success());
    let bash = String::from_utf8_lossy(&bash.stdout);
    assert!(bash.contains("_rewind()") && bash.contains("rollback"), "bash completion");
    let zsh = run(&mut rewind_command(&["completions", "zsh"]), Duration::from_secs(30));
    assert!(String::from_utf8_lossy(&zsh.stdout).starts_with("#compdef rewind"));
    let man = run(&mut rewind_command(&["man"]), Duration::from_secs(30));
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(man.contains(".TH rewind 1") && man.contains("timeline"), "man page");
    let dir = tempfile::tempdir().unwrap();
    let output =
        run(&mut rewind_command(&["man", "--out", dir.path().to_str().unwrap()]), Duration::from_secs(30));
    assert!(output.status.success(), "{:?}", texts(&output));
    for page in ["rewind.1", "rewind-volume-create.1", "rewind-rollback.1", "rewind-snapshot-list.1"] {
        assert!(dir.path().join(page).exists(), "{page} written");
    }
    let rollback = std::fs::read_to_string(dir.path().join("rewind-rollback.1")).unwrap();
    assert!(rollback.contains("#SEQ") && rollback.contains("RFC 3339") && rollback.contains("\\-90s"));
    let help = run(&mut rewind_command(&["rollback", "--help"]), Duration::from_secs(30));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("POINT is any point")
            && help.contains("-1h30m")
            && help.contains("<VOLUME>  The volume")
    );
}

/// "Last write" is the disk's last write: a snapshot, a resize or a
/// snapshot deletion after it moves the head, not the last write (an
/// investigator reads it as when the disk last changed).
#[test]
fn last_write_is_the_last_write_not_the_last_record() {
    let daemon = Daemon::start();
    rewind_ok(&daemon, &["volume", "create", "lw", "--size", "1MiB"]);
    rewind_ok(&daemon, &["snapshot", "create", "lw", "s1"]);
    let show = || rewind_json(&daemon, &["volume", "show", "lw"])["volume"].clone();
    assert_eq!(show()["last_write"], serde_json::Value::Null, "a snapshot is not a write");
    let text = rewind_ok(&daemon, &["volume", "show", "lw"]);
    assert!(
        text.lines().any(|line| line.split_whitespace().collect::<Vec<_>>() == ["last", "write", "-"]),
        "{text}"
    );
    nbd_write(&daemon.uri("lw"), 0, 4096, 0x11);
    let written = show()["last_write"].clone();
    assert_eq!(written["seq"], 2, "{written}");
    rewind_ok(&daemon, &["snapshot", "create", "lw", "s2"]);
    rewind_ok(&daemon, &["volume", "resize", "lw", "--size", "2MiB"]);
    rewind_ok(&daemon, &["snapshot", "delete", "lw", "s1"]);
    let after = show();
    assert_eq!(after["head"]["seq"], 5, "{after}");
    assert_eq!(after["last_write"], written, "{after}");
}

#[test]
fn later_commands_say_they_are_not_available_yet() {
    // Replication, peers, identity and promote come with their own issues:
    // they exit 1 with a message, not a fake success.
    let daemon = Daemon::start();
    for args in [
        &["replicate", "default", "--to", "peer"][..],
        &["replication", "status"][..],
        &["identity"][..],
        &["peer", "list"][..],
        &["promote", "default"][..],
    ] {
        // Named by the command, also after --control PATH (which the
        // harness passes first).
        let stderr = rewind_fails(&daemon, args, 1);
        assert!(
            stderr.contains(&format!("rewind {} is not available yet", args[0])),
            "rewind {args:?}: {stderr}"
        );
    }
    let stderr = rewind_fails(&daemon, &["verify", "default", "--peer", "site-b"], 1);
    assert!(stderr.contains("rewind verify --peer is not available yet"), "{stderr}");
}

#[test]
fn verify_reads_everything_back_and_names_records_the_disk_changed() {
    // A healthy volume verifies clean (exit 0, what was checked); a byte
    // the disk changed under a running daemon is named by its record's
    // seq (exit 1, with what to do), in human and JSON form.
    let daemon = Daemon::start();
    nbd_write(&daemon.uri("default"), 0, 4096, 7);
    nbd_write(&daemon.uri("default"), MIB, 65536, 8);
    nbd_write(&daemon.uri("default"), 2 * MIB, 4096, 9);
    let clean = rewind_json(&daemon, &["verify", "default"]);
    assert_eq!(clean["volume"], "default");
    assert_eq!(clean["records"], 3, "{clean}");
    assert_eq!(clean["bytes"], 4096 + 65536 + 4096, "{clean}");
    assert_eq!(clean["corrupt"], serde_json::json!([]));
    let said = rewind_ok(&daemon, &["verify", "default"]);
    assert!(said.starts_with("default: no damage (3 history records"), "{said}");
    // Clones read through their parent's records: before and after the
    // write about to rot, and a clone of the latter.
    rewind_ok(&daemon, &["clone", "default", "--at", "#1", "--name", "c1"]);
    rewind_ok(&daemon, &["clone", "default", "--at", "#2", "--name", "c2"]);
    rewind_ok(&daemon, &["clone", "c2", "--at", "-0s", "--name", "c2b"]);
    // Rot one byte of the second write's data in its segment file.
    let segments: Vec<_> = std::fs::read_dir(daemon.data_dir.join("volumes/default"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("seg-"))
        .collect();
    let mut rotted = false;
    for path in segments {
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(4096).position(|window| window.iter().all(|&byte| byte == 8)) {
            bytes[at + 1000] ^= 0x40;
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &bytes[at + 1000..at + 1001], (at + 1000) as u64)
                .unwrap();
            rotted = true;
        }
    }
    assert!(rotted, "the second write's data is in a segment file");
    let stderr = rewind_fails(&daemon, &["verify", "default"], 1);
    assert!(stderr.contains("rewind: default is damaged: 1 record fails its checksum (#2)"), "{stderr}");
    assert!(stderr.contains("hint: "), "{stderr}");
    let output = rewind(&daemon, &["verify", "default", "--json"]);
    assert_eq!(output.status.code(), Some(1));
    let (stdout, _) = texts(&output);
    let error: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!(error["error"].as_str().unwrap().contains("(#2)"), "{error}");
    // --at checks what one point's image is made of: the image before the
    // rotted write is intact, the one after it is not.
    let before = rewind_json(&daemon, &["verify", "default", "--at", "#1"]);
    assert_eq!(before["records"], 1, "{before}");
    assert_eq!(before["at"]["seq"], 1, "{before}");
    assert_eq!(before["corrupt"], serde_json::json!([]), "{before}");
    let said = rewind_ok(&daemon, &["verify", "default", "--at", "#1"]);
    assert!(said.contains("no damage (1 history record") && said.contains("the image at #1"), "{said}");
    let stderr = rewind_fails(&daemon, &["verify", "default", "--at", "#2"], 1);
    assert!(stderr.contains("1 record fails its checksum (#2)"), "{stderr}");
    let stderr = rewind_fails(&daemon, &["verify", "default", "--at", "#99"], 1);
    assert!(stderr.contains("#99 is outside the history"), "{stderr}");
    // A clone's verify checks what it reads through (it checked nothing
    // but its own empty history, and said "no damage").
    let c1 = rewind_json(&daemon, &["verify", "c1"]);
    assert_eq!(c1["records"], 0, "{c1}");
    assert_eq!(c1["through"][0]["volume"], "default", "{c1}");
    assert_eq!(c1["through"][0]["at"]["seq"], 1, "{c1}");
    assert_eq!(c1["through"][0]["records"], 1, "{c1}");
    let said = rewind_ok(&daemon, &["verify", "c1"]);
    assert!(said.contains("no damage") && said.contains("of default at #1 (a clone base)"), "{said}");
    let stderr = rewind_fails(&daemon, &["verify", "c2"], 1);
    assert!(
        stderr
            .contains("c2 is damaged: in default, which it is cloned from, 1 record fails its checksum (#2)"),
        "{stderr}"
    );
    let stderr = rewind_fails(&daemon, &["verify", "c2b"], 1);
    assert!(stderr.contains("in default, which it is cloned from, 1 record fails"), "{stderr}");
    assert!(stderr.contains("of c2 at #0 (a clone base)"), "{stderr}");
    let missing = rewind_fails(&daemon, &["verify", "nosuch"], 1);
    assert!(missing.contains("no volume named nosuch"), "{missing}");
}

/// A fake daemon on a Unix socket that answers every request with a
/// minimal timeline after `delay`.
fn slow_daemon(dir: &std::path::Path, delay: Duration) -> std::path::PathBuf {
    use std::io::{Read, Write};
    let path = dir.join("slow.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let body = r#"{"volume":"v","since":"2026-11-28T00:00:00Z","interval_seconds":60,"first":{"seq":0,"time":"2026-11-28T00:00:00Z"},"head":{"seq":0,"time":"2026-11-28T00:00:00Z"},"buckets":[],"snapshots":[]}"#;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut byte = [0u8; 1];
            while !request.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                request.push(byte[0]);
            }
            std::thread::sleep(delay);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    path
}

#[test]
fn slow_answers_show_a_spinner_on_a_terminal_only() {
    // Waiting more than a second for the daemon shows a spinner on a
    // terminal's stderr (run under script(1) for a pty); a quick answer,
    // or --json, shows none.
    let dir = tempfile::tempdir().unwrap();
    let rewind = rewind_tests::binary("rewind");
    let on_terminal = |socket: &std::path::Path, extra: &str| {
        let line = format!("{} --control {} timeline v {extra}", rewind.display(), socket.display());
        let output = run(
            std::process::Command::new("script")
                .args(["-qec", &line, "/dev/null"])
                .env_remove("REWIND_CONTROL"),
            Duration::from_secs(60),
        );
        assert!(output.status.success(), "{line}: {:?}", texts(&output));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let slow = slow_daemon(dir.path(), Duration::from_millis(2500));
    let shown = on_terminal(&slow, "");
    assert!(shown.contains("reading the timeline of v"), "spinner expected:\n{shown}");
    assert!(shown.contains("v: history #0"), "{shown}");
    let json = on_terminal(&slow, "--json");
    assert!(!json.contains("reading the timeline"), "no spinner with --json:\n{json}");
    let fast_dir = tempfile::tempdir().unwrap();
    let fast = slow_daemon(fast_dir.path(), Duration::ZERO);
    let quick = on_terminal(&fast, "");
    assert!(!quick.contains("reading the timeline"), "no spinner for a quick answer:\n{quick}");
}

#[test]
fn a_daemon_that_does_not_answer_is_given_up_on() {
    // A stopped or stuck daemon (here, one that answers after 3 s) must
    // not hang a script forever: --timeout gives up with exit 1 and says
    // what to do; 0 waits.
    let dir = tempfile::tempdir().unwrap();
    let slow = slow_daemon(dir.path(), Duration::from_millis(3000));
    let socket = slow.to_str().unwrap();
    let started = std::time::Instant::now();
    let output = run(
        &mut rewind_command(&["--control", socket, "--timeout", "1", "timeline", "v"]),
        Duration::from_secs(60),
    );
    let (_, stderr) = texts(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rewindd did not answer within 1 s"), "{stderr}");
    assert!(started.elapsed() < Duration::from_millis(2900), "it waited for the answer");
    let output = run(
        &mut rewind_command(&["--control", socket, "--timeout", "0", "timeline", "v"]),
        Duration::from_secs(60),
    );
    assert!(output.status.success(), "{:?}", texts(&output));
}

/// A daemon with a 4 MiB journal budget and retention every second, and a
/// 16 MiB volume `vm` whose first MiB is written (0x11, seq 1). Keep the
/// directory while the daemon runs.
fn small_budget_daemon() -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rewindd.toml");
    std::fs::write(&config, "[store]\njournal_budget = \"4MiB\"\nretention_interval = \"1s\"\n").unwrap();
    let daemon = Daemon::start_in(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    rewind_ok(&daemon, &["volume", "create", "vm", "--size", "16MiB"]);
    nbd_write(&daemon.uri("vm"), 0, MIB as usize, 0x11);
    (dir, daemon)
}

/// Waits (at most 20 s: retention runs every second in these tests) until
/// `volume show VOLUME`'s `retention_blocked_by` satisfies `want`; returns it.
fn wait_for_blocked_by(
    daemon: &Daemon,
    volume: &str,
    want: &dyn Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value = rewind_json(daemon, &["volume", "show", volume])["retention_blocked_by"].clone();
        if want(&value) {
            return value;
        }
        assert!(std::time::Instant::now() < deadline, "retention_blocked_by stayed {value}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn volume_show_names_the_snapshot_that_keeps_the_journal_over_budget() {
    // A 4 MiB budget, retention every second: a snapshot under 8 MiB of
    // later writes keeps the journal over budget. `volume show` names it
    // (human and JSON) until it is deleted, then says nothing.
    let (_dir, daemon) = small_budget_daemon();
    rewind_ok(&daemon, &["snapshot", "create", "vm", "keep"]);
    let blocked_by = || rewind_json(&daemon, &["volume", "show", "vm"])["retention_blocked_by"].clone();
    assert_eq!(blocked_by(), serde_json::Value::Null, "nothing over budget yet");
    for round in 0..8u64 {
        nbd_write(&daemon.uri("vm"), round * MIB, MIB as usize, 0x20 + round as u8);
    }
    let value = wait_for_blocked_by(&daemon, "vm", &|value| value.is_string());
    assert!(value.as_str().unwrap().starts_with("snapshot keep (#"), "{value}");
    let shown = rewind_ok(&daemon, &["volume", "show", "vm"]);
    assert!(
        shown.contains("RETENTION    blocked by snapshot keep (#")
            && shown.contains("the journal grows past its budget until that snapshot is deleted"),
        "{shown}"
    );
    let shown = rewind_json(&daemon, &["volume", "show", "vm"]);
    let bytes = |shown: &serde_json::Value, key: &str| shown[key].as_u64().unwrap();
    assert!(bytes(&shown, "history_bytes") > 4 * MIB, "the history is past its budget: {shown}");

    rewind_ok(&daemon, &["snapshot", "delete", "vm", "keep"]);
    wait_for_blocked_by(&daemon, "vm", &|value| value.is_null());
    let text = rewind_ok(&daemon, &["volume", "show", "vm"]);
    assert!(!text.contains("RETENTION"), "{text}");
    assert!(text.contains("history ") && text.contains("base data ") && text.contains("dead "), "{text}");
    // Folded in place: the history is back within its budget (plus the
    // segment holding its oldest point and its records' headers), the
    // rest of the journal is base data and dead bytes, and the parts add
    // up to the journal.
    let shown = rewind_json(&daemon, &["volume", "show", "vm"]);
    let (history, base, dead) = (
        bytes(&shown, "history_bytes"),
        bytes(&shown, "base_journal_bytes"),
        bytes(&shown, "dead_journal_bytes"),
    );
    assert!(history <= 5 * MIB + 64 * 1024, "{shown}");
    assert!(base > 0, "{shown}");
    let journal = shown["volume"]["journal_bytes"].as_u64().unwrap();
    assert_eq!(history + base + dead, journal, "{shown}");
}

#[test]
fn directories_not_served_are_kept_listed_and_never_replaced() {
    // A volume directory the daemon does not open at start-up (here one an
    // admin renamed, and one holding files rewind did not make) keeps its
    // files: `status` lists it with why, `volume show` says so, and creating
    // or cloning a volume of that name is refused instead of removing it
    // (it removed the renamed volume's journal before).
    let mut daemon = Daemon::start();
    rewind_ok(&daemon, &["volume", "create", "vm", "--size", "4MiB"]);
    nbd_write(&daemon.uri("vm"), 0, 1 << 20, 0x5a);
    daemon.stop();
    let volumes = daemon.data_dir.join("volumes");
    std::fs::rename(volumes.join("vm"), volumes.join("vm-old")).unwrap();
    std::fs::create_dir(volumes.join("junk")).unwrap();
    std::fs::write(volumes.join("junk/precious.txt"), "precious").unwrap();
    let files = |dir: &str| -> Vec<(String, u64)> {
        let mut files: Vec<(String, u64)> = std::fs::read_dir(volumes.join(dir))
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                (entry.file_name().to_string_lossy().into_owned(), entry.metadata().unwrap().len())
            })
            .collect();
        files.sort();
        files
    };
    let renamed = files("vm-old");
    assert!(renamed.iter().any(|(name, len)| name.starts_with("seg-") && *len > 1 << 20), "{renamed:?}");
    daemon.restart();
    let status = rewind_ok(&daemon, &["status"]);
    assert!(
        status.contains("NOT SERVED") && status.contains("vm-old") && status.contains("renamed"),
        "{status}"
    );
    let json = rewind_json(&daemon, &["status"]);
    let not_served: Vec<&str> =
        json["not_served"].as_array().unwrap().iter().map(|dir| dir["name"].as_str().unwrap()).collect();
    assert_eq!(not_served, ["junk", "vm-old"]);
    let shown = rewind_fails(&daemon, &["volume", "show", "vm-old"], 1);
    assert!(shown.contains("vm-old is not served") && shown.contains("renamed"), "{shown}");
    let created = rewind_fails(&daemon, &["volume", "create", "vm-old", "--size", "4MiB"], 1);
    assert!(created.contains("exists and is not a volume the daemon serves"), "{created}");
    assert!(created.contains("is kept as it is"), "{created}");
    rewind_ok(&daemon, &["volume", "create", "src", "--size", "1MiB"]);
    let cloned = rewind_fails(&daemon, &["clone", "src", "--at", "-0s", "--name", "junk"], 1);
    assert!(cloned.contains("holds files rewind did not make"), "{cloned}");
    // Nothing was touched, and a restart keeps both directories too.
    daemon.stop();
    assert_eq!(files("vm-old"), renamed);
    assert_eq!(std::fs::read_to_string(volumes.join("junk/precious.txt")).unwrap(), "precious");
    daemon.restart();
    assert_eq!(files("vm-old"), renamed);
    assert!(volumes.join("junk/precious.txt").exists());
    rewind_ok(&daemon, &["volume", "create", "vm", "--size", "4MiB"]);
}

#[test]
fn a_record_damaged_on_disk_ends_the_journal_and_the_rest_is_kept_aside_and_shown() {
    // A synced record the disk changed, found by recovery after a crash:
    // the journal ends before it (the later writes are no longer served),
    // but the segment is kept whole aside, and `volume show` and `verify`
    // say so. Before, nothing visible did, and the intact records after
    // the damaged one in its segment were cut away (found by a new-user
    // trial).
    let mut daemon = Daemon::start();
    rewind_ok(&daemon, &["volume", "create", "rot", "--size", "4MiB"]);
    for (index, fill) in [0x11u8, 0x22, 0x33, 0x44].into_iter().enumerate() {
        // Small enough to share a segment.
        nbd_write(&daemon.uri("rot"), index as u64 * MIB, 65536, fill);
    }
    daemon.kill9();
    let dir = daemon.data_dir.join("volumes/rot");
    let mut rotted = false;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(at) = bytes.windows(4096).position(|window| window.iter().all(|&byte| byte == 0x22)) {
            let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &[0; 4], (at + 5000) as u64).unwrap();
            rotted = true;
        }
    }
    assert!(rotted, "the second write is in a segment file");
    daemon.restart();
    let shown = rewind_json(&daemon, &["volume", "show", "rot"]);
    assert_eq!(shown["volume"]["head"]["seq"], 1, "{shown}");
    assert!(shown["recovery"]["set_aside_files"].as_u64().unwrap() >= 1, "{shown}");
    let text = rewind_ok(&daemon, &["volume", "show", "rot"]);
    assert!(text.contains("SET ASIDE") && text.contains("acknowledged writes"), "{text}");
    let aside: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".cut-"))
        .collect();
    let kept: Vec<u8> = aside.iter().flat_map(|name| std::fs::read(dir.join(name)).unwrap()).collect();
    for fill in [0x33u8, 0x44] {
        assert!(kept.windows(4096).any(|window| window.iter().all(|&byte| byte == fill)), "{aside:?}");
    }
    let output = rewind(&daemon, &["verify", "rot"]);
    let (stdout, stderr) = texts(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(stderr.contains("note: ") && stderr.contains("set aside by a recovery"), "{stderr}");
    // Deleting the volume would delete them: refused unless forced.
    let refused = rewind_fails(&daemon, &["volume", "delete", "rot"], 1);
    assert!(
        refused.contains("a recovery set aside") && refused.contains("seg-*.log.cut-* somewhere safe"),
        "{refused}"
    );
    assert!(dir.join(&aside[0]).exists());
    rewind_ok(&daemon, &["volume", "delete", "rot", "--force"]);
    assert!(!dir.exists());
}

#[test]
fn the_start_up_line_suggests_a_volume_that_exists() {
    // The log's "try: nbdinfo ..." names default while it exists, and
    // another volume once it is deleted (it named default regardless).
    let mut daemon = Daemon::start();
    let last_serving_line = |daemon: &Daemon| {
        let log = daemon.log_text();
        log.lines().rfind(|line| line.contains("rewindd serving")).unwrap_or_default().to_owned()
    };
    assert!(last_serving_line(&daemon).contains(&format!("try: nbdinfo nbd://{}/default", daemon.nbd)));
    rewind_ok(&daemon, &["volume", "create", "vm", "--size", "1MiB"]);
    rewind_ok(&daemon, &["volume", "delete", "default"]);
    daemon.stop();
    daemon.restart();
    let line = last_serving_line(&daemon);
    assert!(line.contains(&format!("try: nbdinfo nbd://{}/vm", daemon.nbd)), "{line}");
}

#[test]
fn an_open_connection_to_a_point_holds_retention_until_it_closes() {
    // A restore copying a point out must not fail half-way because the
    // volume's writes pushed the point out of the budget (it got ESHUTDOWN;
    // found by a new-user trial): the connection holds the point, `volume
    // show` names it, and retention folds past it once it closes.
    let (_dir, daemon) = small_budget_daemon();
    let mut restore = HeldConnection::open(&daemon.uri("vm@%231"));
    for round in 0..8u64 {
        nbd_write(&daemon.uri("vm"), round * MIB, MIB as usize, 0x20 + round as u8);
    }
    let value = wait_for_blocked_by(&daemon, "vm", &|value| value.is_string());
    assert_eq!(value, "an open NBD connection to point #1");
    let shown = rewind_ok(&daemon, &["volume", "show", "vm"]);
    assert!(shown.contains("until that connection closes"), "{shown}");
    assert_eq!(restore.read(), "read [17]", "the point still reads as it was");
    restore.close();
    wait_for_blocked_by(&daemon, "vm", &|value| value.is_null());
    let first = rewind_json(&daemon, &["volume", "show", "vm"])["volume"]["first"]["seq"].as_u64().unwrap();
    assert!(first > 1, "retention folded past the point once it was closed: first #{first}");
}

#[test]
fn a_damaged_default_volume_is_not_replaced_and_the_daemon_still_starts() {
    // The only volume, default, has a damaged superblock: the daemon starts
    // (it failed: its start-up creation of default was refused), serves
    // nothing, creates no new default over it, and says why.
    let mut daemon = Daemon::start();
    nbd_write(&daemon.uri("default"), 0, 65536, 0x5a);
    daemon.stop();
    let superblock = daemon.data_dir.join("volumes/default/volume");
    let mut bytes = std::fs::read(&superblock).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&superblock, &bytes).unwrap();
    daemon.restart();
    let status = rewind_json(&daemon, &["status"]);
    assert_eq!(status["volumes"], 0, "{status}");
    assert_eq!(status["not_served"][0]["name"], "default", "{status}");
    assert!(status["not_served"][0]["reason"].as_str().unwrap().contains("no valid superblock"), "{status}");
    assert_eq!(std::fs::read(&superblock).unwrap(), bytes, "left as it was");
}
