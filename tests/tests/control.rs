//! The control API as a program other than `rewind` sees it: a private
//! Unix socket with a life cycle (stale ones replaced, live ones left
//! alone, removed at exit), JSON errors with the documented status codes,
//! Prometheus metrics, the OpenAPI document it serves, and schemathesis
//! fuzzing every operation of that document.

mod cli_support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cli_support::{HeldConnection, http, nbd_write, socket, tcp_bridge, wait_disconnected};
use rewind_tests::{Daemon, binary, free_port, run};

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|error| panic!("not JSON ({error}): {body}"))
}

fn openapi_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json")
}

#[test]
fn control_socket_is_private_and_removed_on_shutdown() {
    // The socket is mode 0600 (whoever connects can delete volumes) and a
    // clean SIGTERM removes it.
    let mut daemon = Daemon::start();
    let path = socket(&daemon);
    let metadata = std::fs::symlink_metadata(&path).expect("socket exists");
    assert!(metadata.file_type().is_socket());
    assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    assert_eq!(http(&path, "GET", "/v1/status", None).0, 200);
    assert!(daemon.stop().success());
    assert!(!path.exists(), "socket removed on clean shutdown");
}

#[test]
fn live_sockets_and_other_files_are_left_alone() {
    // A second daemon pointed at a live daemon's socket refuses to start
    // (and leaves the socket working); so does one pointed at a regular
    // file, which it does not delete.
    let daemon = Daemon::start();
    let path = socket(&daemon);
    let other = tempfile::tempdir().unwrap();
    let start_second = |control: &std::path::Path| {
        let mut command = Command::new(binary("rewindd"));
        command
            .arg("--data-dir")
            .arg(other.path().join("data"))
            .arg("--nbd-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--replication-listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--control")
            .arg(control);
        run(&mut command, Duration::from_secs(30))
    };
    let output = start_second(&path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "second daemon on a live socket must not start");
    assert!(stderr.contains("another rewindd is serving control socket"), "{stderr}");
    assert_eq!(http(&path, "GET", "/v1/status", None).0, 200, "the first daemon still answers");

    let file = other.path().join("not-a-socket");
    std::fs::write(&file, "precious").unwrap();
    let output = start_second(&file);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("exists and is not a socket"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

#[test]
fn stale_socket_from_a_killed_daemon_is_replaced() {
    // SIGKILL leaves the socket file behind; the next start replaces it.
    let mut daemon = Daemon::start();
    daemon.kill9();
    assert!(socket(&daemon).exists());
    daemon.restart();
    assert_eq!(http(&socket(&daemon), "GET", "/v1/volumes", None).0, 200);
    assert!(daemon.log_text().contains("replacing stale control socket"));
}

#[test]
fn errors_are_json_with_the_documented_status_codes() {
    // Each class of error has its status code and a JSON {error, hint}.
    let daemon = Daemon::start();
    let path = socket(&daemon);
    let post = |route: &str, body: &str| http(&path, "POST", route, Some(body));
    let cases: Vec<(&str, (u16, String), &str)> = vec![
        ("unknown volume", http(&path, "GET", "/v1/volumes/nosuch", None), "no volume named nosuch"),
        ("bad name", http(&path, "GET", "/v1/volumes/.hidden", None), "is not a valid name"),
        ("bad size", post("/v1/volumes", r#"{"name":"x","size":"20XB"}"#), "is not a size"),
        ("unaligned size", post("/v1/volumes", r#"{"name":"x","size":1000}"#), "multiple of 512"),
        ("bad JSON", post("/v1/volumes", "{"), "EOF"),
        ("unknown field", post("/v1/volumes", r#"{"name":"x","size":512,"colour":"red"}"#), "unknown field"),
        ("bad point", post("/v1/volumes/default/rollback", r#"{"to":"-5x"}"#), "not a relative time"),
        (
            "outside history",
            post("/v1/volumes/default/rollback", r##"{"to":"#9"}"##),
            "retained history is #0",
        ),
        ("unknown snapshot", post("/v1/volumes/default/rollback", r#"{"to":"nosuch"}"#), "no snapshot named"),
        ("name taken", post("/v1/volumes", r#"{"name":"default","size":"1G"}"#), "already exists"),
        ("unknown route", http(&path, "GET", "/v2/everything", None), "no route GET /v2/everything"),
        ("wrong method", http(&path, "PUT", "/v1/volumes", None), "does not accept PUT"),
    ];
    let expected_status = [404, 400, 400, 400, 400, 400, 400, 422, 422, 409, 404, 405];
    for ((what, (status, body), text), expected) in cases.into_iter().zip(expected_status) {
        assert_eq!(status, expected, "{what}: {body}");
        let body = json(&body);
        assert!(body["error"].as_str().unwrap().contains(text), "{what}: {body}");
    }

    assert_eq!(post("/v1/volumes", r#"{"name":"base","size":"1MiB"}"#).0, 201);
    assert_eq!(post("/v1/volumes/base/clone", r##"{"at":"#0","name":"child"}"##).0, 201);
    let (status, body) = http(&path, "DELETE", "/v1/volumes/base", None);
    assert_eq!(status, 409, "{body}");
    assert!(json(&body)["hint"].as_str().unwrap().contains("force"), "{body}");
    assert_eq!(http(&path, "DELETE", "/v1/volumes/base?force=true", None).0, 200);
}

#[test]
fn connected_clients_make_rollback_delete_and_reopen_conflicts_unless_forced() {
    // With an NBD client on the head, rollback, reopen and delete answer 409
    // naming the count and saying what to do; ?force=true goes ahead and
    // the answer reports the connections it went past.
    let daemon = Daemon::start();
    let path = socket(&daemon);
    let vm = HeldConnection::open(&daemon.uri("default"));
    let (status, body) = http(&path, "POST", "/v1/volumes/default/rollback", Some(r##"{"to":"#0"}"##));
    assert_eq!(status, 409, "{body}");
    let body = json(&body);
    assert!(body["error"].as_str().unwrap().contains("1 NBD connection open to its head"), "{body}");
    assert!(body["hint"].as_str().unwrap().contains("?force=true"), "{body}");
    for (method, route) in [("POST", "/v1/volumes/default/reopen"), ("DELETE", "/v1/volumes/default")] {
        let (status, body) = http(&path, method, route, None);
        assert_eq!(status, 409, "{method} {route}: {body}");
    }
    let (status, body) =
        http(&path, "POST", "/v1/volumes/default/rollback?force=true", Some(r##"{"to":"#0"}"##));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["nbd_connections"], 1);
    let (status, body) = http(&path, "POST", "/v1/volumes/default/reopen?force=true", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["stale_nbd_connections"], 1);
    vm.close();
    wait_disconnected(&daemon, "default");
    // A connection to a point alone makes reopen a conflict too: it keeps
    // the old volume object, whose reads fail after a reopen.
    let reader = HeldConnection::open(&daemon.uri("default@%230"));
    let (status, body) = http(&path, "POST", "/v1/volumes/default/reopen", None);
    assert_eq!(status, 409, "{body}");
    let error = json(&body)["error"].as_str().unwrap().to_owned();
    assert!(error.contains("1 NBD connection open (0 to its head, 1 to points)"), "{error}");
    reader.close();
    wait_disconnected(&daemon, "default");
    let (status, body) = http(&path, "POST", "/v1/volumes/default/reopen", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["volume"]["name"], "default");
    let (status, body) = http(&path, "POST", "/v1/volumes/nosuch/reopen", None);
    assert_eq!(status, 404, "{body}");
}

#[test]
fn served_openapi_document_is_docs_openapi_json_and_every_route_answers() {
    // The daemon serves docs/openapi.json byte for byte, and every method
    // and path in it reaches a handler (no "no route", no 405). The unit
    // test in daemon/src/control/routes.rs checks the reverse: every
    // served route is documented.
    let daemon = Daemon::start();
    let path = socket(&daemon);
    let document = std::fs::read_to_string(openapi_path()).expect("docs/openapi.json");
    let (status, served) = http(&path, "GET", "/openapi.json", None);
    assert_eq!(status, 200);
    assert_eq!(served, document);
    let document = json(&document);
    let mut probed = 0;
    for (template, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let route = template.replace("{volume}", "default").replace("{snapshot}", "nosuch");
            let route = match template.as_str() {
                "/v1/volumes/{volume}/export" => format!("{route}?at=%230"),
                _ => route,
            };
            let body = (method == "post").then_some("{}");
            let (status, answer) = http(&path, &method.to_uppercase(), &route, body);
            assert_ne!(status, 405, "{method} {route}: {answer}");
            assert!(!answer.contains("no route"), "{method} {route}: {answer}");
            probed += 1;
        }
    }
    assert_eq!(probed, 18, "every documented operation probed");
}

#[test]
fn metrics_count_nbd_requests_and_describe_volumes() {
    // After NBD writes and reads, /metrics (Prometheus text) counts them by
    // kind with bytes and latency histograms, and has per-volume gauges.
    let daemon = Daemon::start();
    let path = socket(&daemon);
    nbd_write(&daemon.uri("default"), 0, 8192, 1);
    nbd_write(&daemon.uri("default"), 8192, 4096, 2);
    assert_eq!(http(&path, "POST", "/v1/volumes/default/flush", None).0, 200);
    let (status, text) = http(&path, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value(r#"rewind_nbd_requests_total{kind="write",result="ok"}"#), 2.0);
    assert_eq!(value(r#"rewind_nbd_bytes_total{kind="write"}"#), 12288.0);
    assert_eq!(value(r#"rewind_nbd_requests_total{kind="flush",result="ok"}"#), 2.0);
    assert_eq!(value(r#"rewind_nbd_request_duration_seconds_count{kind="write"}"#), 2.0);
    assert_eq!(value(r#"rewind_nbd_request_duration_seconds_bucket{kind="write",le="+Inf"}"#), 2.0);
    assert_eq!(value("rewind_nbd_connections_total"), 2.0);
    assert_eq!(value("rewind_nbd_connections"), 0.0);
    assert_eq!(value("rewind_control_flushes_total"), 1.0);
    assert_eq!(value("rewind_volumes"), 1.0);
    assert_eq!(value(r#"rewind_volume_head_seq{volume="default"}"#), 2.0);
    assert_eq!(value(r#"rewind_volume_journal_records{volume="default"}"#), 2.0);
    assert_eq!(value(r#"rewind_volume_points{volume="default"}"#), 3.0);
    assert_eq!(value(r#"rewind_volume_snapshots{volume="default"}"#), 0.0);
    assert_eq!(value(r#"rewind_volume_size_bytes{volume="default"}"#), (1u64 << 30) as f64);
    assert!(value(r#"rewind_volume_journal_bytes{volume="default"}"#) >= 12288.0);
    // Journal bytes are the store's own figure, the same the API reports.
    let (_, detail) = http(&path, "GET", "/v1/volumes/default", None);
    let detail = json(&detail);
    assert_eq!(
        value(r#"rewind_volume_journal_bytes{volume="default"}"#),
        detail["volume"]["journal_bytes"].as_f64().unwrap()
    );
    assert_eq!(value(r#"rewind_volume_journal_segments{volume="default"}"#), 1.0);
    assert_eq!(value(r#"rewind_volume_first_seq{volume="default"}"#), 0.0);
    assert_eq!(value(r#"rewind_volume_retention_blocked{volume="default"}"#), 0.0);
    assert_eq!(value(r#"rewind_volume_folds_total{volume="default"}"#), 0.0);
    assert!(
        value(r#"rewind_volume_flushes_total{volume="default"}"#) >= 3.0,
        "two NBD flushes and one control"
    );
    assert!(value(r#"rewind_volume_syncs_total{volume="default"}"#) >= 1.0);
    assert_eq!(value(r#"rewind_volume_nbd_connections{volume="default",export="head"}"#), 0.0);
    // Every metric is documented.
    let documented =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md"))
            .expect("docs/metrics.md");
    for line in text.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let name = line.split(' ').next().unwrap();
        assert!(documented.contains(&format!("`{name}`")), "{name} is not in docs/metrics.md");
    }
}

/// The schemathesis executable: `$SCHEMATHESIS`, else `schemathesis` on
/// PATH. `scripts/install-schemathesis` installs it (from PyPI, into a
/// virtualenv); `./scripts/test` and `.ci/run` call it.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("schemathesis"))
        .find(|candidate| candidate.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "schemathesis not found: run the tests with ./scripts/test (it installs schemathesis), \
             or set SCHEMATHESIS=\"$(./scripts/install-schemathesis)\""
        )
    })
}

#[test]
fn schemathesis_finds_no_server_errors_and_every_response_matches_the_schema() {
    // schemathesis generates requests from docs/openapi.json (examples,
    // boundary values, random and schema-violating data, and stateful
    // sequences along the document's links) against a real daemon, and
    // checks every response: never a 5xx, status codes, content types,
    // headers and bodies as documented, bad input rejected, deleted
    // resources gone. `positive_data_acceptance` is off: a well-formed
    // point outside a volume's history is a documented 422, which that
    // check counts as a rejected valid request. Replay a failure with
    // SCHEMATHESIS_SEED=<the seed it prints>.
    let daemon = Daemon::start();
    let address = tcp_bridge(&socket(&daemon));
    let work = tempfile::tempdir().unwrap();
    let mut command = Command::new(schemathesis());
    command
        .current_dir(work.path())
        .arg("run")
        .arg(openapi_path())
        .args(["--url", &format!("http://{address}")])
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "300", "--request-timeout", "30", "--generation-database", "none"])
        .args(["--no-color", "--output-truncate", "false"])
        .env("NO_COLOR", "1");
    if let Ok(seed) = std::env::var("SCHEMATHESIS_SEED") {
        command.args(["--seed", &seed]);
    }
    let output = run(&mut command, Duration::from_secs(600));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "schemathesis failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("Tested: 18"), "every operation tested:\n{stdout}");
    eprintln!(
        "{}",
        stdout.lines().rev().take(12).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}
