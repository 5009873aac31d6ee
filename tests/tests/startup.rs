//! How `rewindd` starts, or refuses to: its help names the defaults, bad
//! flags and config values are one `rewindd:` line and exit 2, host names
//! work as listen addresses, and a failure to bind (port or socket in use)
//! leaves nothing on disk.

mod cli_support;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cli_support::{http, texts};
use rewind_tests::{Daemon, binary, free_port, run, run_ok};

/// `rewindd ARGS` (a fresh replication port each time), to completion.
fn rewindd(args: &[&str]) -> Output {
    let mut command = Command::new(binary("rewindd"));
    command.args(args);
    if !args.contains(&"--replication-listen") {
        command.args(["--replication-listen", &format!("127.0.0.1:{}", free_port())]);
    }
    run(&mut command, Duration::from_secs(30))
}

/// Stderr of a start that must fail with `code`, as one line.
fn fails(output: &Output, code: i32) -> String {
    let (stdout, stderr) = texts(output);
    assert_eq!(output.status.code(), Some(code), "stdout: {stdout}\nstderr: {stderr}");
    // The last line is the reason (log lines may come before it).
    let line = stderr.lines().last().unwrap_or_default().to_owned();
    assert!(line.starts_with("rewindd: "), "{stderr}");
    line
}

#[test]
fn help_names_every_default() {
    // `rewindd --help` says what happens without flags: where the data and
    // the sockets go, and that replication is not there yet.
    let output = rewindd(&["--help"]);
    assert!(output.status.success());
    let help = texts(&output).0;
    for default in [
        "[default: ./rewind-data]",
        "[default: 127.0.0.1:10809]",
        "[default: DATA_DIR/control.sock]",
        "[default: 127.0.0.1:10810]",
        "not available yet",
    ] {
        assert!(help.contains(default), "{default} missing from:\n{help}");
    }
}

#[test]
fn bad_flags_and_config_values_are_one_line_and_exit_2() {
    // Nothing is created for a start that cannot work: the check comes
    // before any file or socket.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_text = data.to_str().unwrap();
    let config = dir.path().join("rewindd.toml");
    let config_text = config.to_str().unwrap();
    for (args, file, reason) in [
        (vec!["--frobnicate"], None, "unexpected argument '--frobnicate'"),
        (vec!["--nbd-listen", "localhost:99999"], None, "--nbd-listen localhost:99999: invalid port value"),
        (vec!["--nbd-listen", "localhost"], None, "write HOST:PORT"),
        (
            vec!["--config", config_text],
            Some("[nbd]\nmax_connections = 0\n"),
            "max_connections = 0 is out of range",
        ),
        (vec!["--config", config_text], Some("[nbd]\nmax_inflight_requests = 0\n"), "out of range: use 1 to"),
        (vec!["--config", config_text], Some("nbd_listen = \"nowhere\"\n"), "nbd_listen in"),
        (vec!["--config", config_text], Some("colour = 1\n"), "is not valid (line 1: `colour = 1`)"),
    ] {
        if let Some(text) = file {
            std::fs::write(&config, text).unwrap();
        }
        let mut args = args.clone();
        args.extend(["--data-dir", data_text]);
        let line = fails(&rewindd(&args), 2);
        assert!(line.contains(reason), "{args:?}: {line}");
        assert!(!data.exists(), "{args:?} created the data dir");
    }
}

#[test]
fn a_port_or_socket_in_use_leaves_nothing_behind() {
    // Binding comes before the data dir is made: a start that fails on a
    // taken NBD port or a live control socket creates no directory, no
    // store and no default volume.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("new").join("data");
    let line = fails(&rewindd(&["--data-dir", data.to_str().unwrap(), "--nbd-listen", &port]), 1);
    assert!(
        line.contains(&format!("cannot listen for NBD on {port}")) && line.contains("--nbd-listen"),
        "{line}"
    );
    assert!(!dir.path().join("new").exists(), "a failed start left {}", dir.path().join("new").display());

    let daemon = Daemon::start();
    let live = daemon.data_dir.join("control.sock");
    let line = fails(
        &rewindd(&[
            "--data-dir",
            data.to_str().unwrap(),
            "--nbd-listen",
            &format!("127.0.0.1:{}", free_port()),
            "--control",
            live.to_str().unwrap(),
        ]),
        1,
    );
    assert!(line.contains("another rewindd is serving control socket"), "{line}");
    assert!(!dir.path().join("new").exists(), "a failed start left {}", dir.path().join("new").display());
}

#[test]
fn data_dir_errors_say_what_is_wrong_once() {
    // A regular file is "not a directory"; a data dir another daemon holds
    // is "in use"; neither repeats the path ("cannot open X: cannot open X").
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let port = format!("127.0.0.1:{}", free_port());
    let line = fails(&rewindd(&["--data-dir", file.to_str().unwrap(), "--nbd-listen", &port]), 1);
    assert_eq!(line, format!("rewindd: data dir {} is not a directory; pass --data-dir DIR", file.display()));

    let daemon = Daemon::start();
    let data = daemon.data_dir.to_str().unwrap();
    let other_socket = dir.path().join("other.sock");
    let line = fails(
        &rewindd(&["--data-dir", data, "--nbd-listen", &port, "--control", other_socket.to_str().unwrap()]),
        1,
    );
    assert!(line.contains(&format!("data dir {data} is in use by another process")), "{line}");
    assert_eq!(line.matches(data).count(), 1, "the path once: {line}");
    assert!(!other_socket.exists(), "the failed start removed its socket");

    // The same data dir with its default control socket: that daemon
    // answers on it, and the remedy is another data dir, not --control.
    let line = fails(&rewindd(&["--data-dir", data, "--nbd-listen", &port]), 1);
    assert!(line.contains(&format!("data dir {data} is in use by another rewindd")), "{line}");
    assert!(line.contains("--data-dir DIR") && !line.contains("--control"), "{line}");

    // An existing directory this user cannot write to is named as such
    // (not as a control socket it could not create). Root writes anywhere,
    // so as root the daemon runs as nobody.
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let args = ["--data-dir", locked.to_str().unwrap(), "--nbd-listen", &port];
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let output = if root {
        let mut command = Command::new("setpriv");
        command.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"]).arg(binary("rewindd"));
        command.args(args).args(["--replication-listen", &format!("127.0.0.1:{}", free_port())]);
        run(&mut command, Duration::from_secs(30))
    } else {
        rewindd(&args)
    };
    let line = fails(&output, 1);
    assert_eq!(
        line,
        format!(
            "rewindd: data dir {} is not writable by this user (permission denied); fix its permissions or \
             pass --data-dir DIR",
            locked.display()
        )
    );
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0, "nothing was made in it");
}

/// Volume data is the users' disks: a data dir the daemon makes, and
/// every directory and file it makes in it, are for its user alone
/// (0700, 0600), whatever the umask (here 022, as a shell's). Others
/// could read every disk image before.
#[test]
fn the_data_dir_and_volume_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    let mut daemon = Daemon::start_wrapped(&data, &[], &["sh", "-c", "umask 022 && exec \"$0\" \"$@\""]);
    run_ok(
        Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 0x55 0 1M", &daemon.uri("default")]),
        Duration::from_secs(30),
    );
    assert!(daemon.stop().success());
    let mut seen = 0;
    let mut walk = vec![data.clone()];
    while let Some(path) = walk.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", path.display());
        seen += 1;
        if meta.is_dir() {
            walk.extend(std::fs::read_dir(&path).unwrap().map(|entry| entry.unwrap().path()));
        }
    }
    assert!(seen > 5, "only {seen} paths: the volume's files were not made");
}

/// Started with the default (relative) data dir, the daemon reports
/// absolute paths in its status: `rewind status` says where the data is,
/// whichever directory it is run from.
#[test]
fn status_names_the_data_dir_and_socket_by_absolute_paths() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary("rewindd"))
        .current_dir(dir.path())
        .args(["--nbd-listen", &format!("127.0.0.1:{}", free_port())])
        .args(["--replication-listen", &format!("127.0.0.1:{}", free_port())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.path().join("rewind-data/control.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http(&socket, "GET", "/v1/status", None);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let root = dir.path().canonicalize().unwrap();
    assert_eq!(status["data_dir"], root.join("rewind-data").to_str().unwrap(), "{status}");
    assert_eq!(status["control_socket"], root.join("rewind-data/control.sock").to_str().unwrap(), "{status}");
}

#[test]
fn listen_addresses_may_be_host_names() {
    // `--nbd-listen localhost:PORT` serves NBD on loopback; status reports
    // the address bound.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(binary("rewindd"))
        .args(["--data-dir", dir.path().to_str().unwrap(), "--nbd-listen", &format!("localhost:{port}")])
        .args(["--replication-listen", &format!("localhost:{}", free_port())])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = dir.path().join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !is_socket(&socket) {
        assert!(Instant::now() < deadline, "rewindd did not start");
        assert!(child.try_wait().unwrap().is_none(), "rewindd exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http(&socket, "GET", "/v1/status", None);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 200);
    let listen = serde_json::from_str::<serde_json::Value>(&body).unwrap()["nbd_listen"].clone();
    let listen = listen.as_str().unwrap();
    assert!(listen == format!("127.0.0.1:{port}") || listen == format!("[::1]:{port}"), "{listen}");
}

fn is_socket(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|metadata| metadata.file_type().is_socket())
}
