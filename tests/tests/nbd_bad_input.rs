//! Hostile and malformed NBD input against a real `rewindd`: each case gets an
//! error reply or a clean disconnect, the daemon never dies, never writes
//! outside the volume, and keeps serving a well-behaved client throughout.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rewind_tests::raw::*;
use rewind_tests::{Daemon, run};

/// A daemon with a short handshake deadline and a small connection cap, so
/// the slow-client cases finish quickly.
fn hardened_daemon(dir: &Path) -> Daemon {
    let config = dir.join("rewindd.toml");
    std::fs::write(&config, "[nbd]\nhandshake_timeout_ms = 1000\nmax_connections = 16\n").unwrap();
    let data = dir.join("data");
    Daemon::start_in(&data, &["--config", config.to_str().unwrap()])
}

/// A well-behaved client still gets served: GO, write, read back.
fn assert_serving(addr: SocketAddr) {
    let mut client = RawClient::connect(addr).expect("connect");
    let (size, _) = client.go("default").expect("GO default");
    assert_eq!(size, 1 << 30);
    client.request(0, CMD_WRITE, 1, 4096, 512, &[0x5a; 512]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (0, 1));
    client.request(0, CMD_READ, 2, 4096, 512, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (0, 2));
    assert_eq!(client.read_bytes(512).unwrap(), vec![0x5a; 512]);
    client.request(0, CMD_DISC, 3, 0, 0, &[]).unwrap();
}

fn info_data(name_length_field: u32, name: &[u8], requests: &[u16]) -> Vec<u8> {
    let mut data = Vec::new();
    data.extend_from_slice(&name_length_field.to_be_bytes());
    data.extend_from_slice(name);
    data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for request in requests {
        data.extend_from_slice(&request.to_be_bytes());
    }
    data
}

#[test]
fn silent_and_idle_clients_are_dropped_at_the_handshake_deadline() {
    // qemu CVE-2024-7409: clients that connect and send nothing (or stall
    // mid-handshake) must not hold the server. With a 1 s deadline and a cap
    // of 16 connections, 16 stalled clients fill the server, the next ones
    // are told the limit (8 at most; more are closed at once), all are
    // dropped after the deadline, and a real client is served again.
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = hardened_daemon(dir.path());
    // Let the start-up readiness probe's connection close first.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let mut silent: Vec<RawClient> = (0..15).map(|_| RawClient::connect_bare(daemon.nbd).unwrap()).collect();
    // A client stalled after sending part of an option.
    let mut stalled = RawClient::connect(daemon.nbd).unwrap();
    stalled.send_option(OPT_GO, 100, &[0, 0, 0, 7]).unwrap();
    // The server is full. A client over the cap is told why: its options
    // get ERR_POLICY naming the limit, and qemu shows that.
    let mut over = RawClient::connect(daemon.nbd).unwrap();
    let replies = over.option(OPT_GO, &RawClient::go_data(b"default")).unwrap();
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].kind, REP_ERR_POLICY);
    let message = String::from_utf8_lossy(&replies[0].data).into_owned();
    assert!(message.contains("connection limit (16 at once)"), "{message}");
    let info = Command::new("qemu-img").args(["info", &daemon.uri("default")]).output().unwrap();
    let stderr = String::from_utf8_lossy(&info.stderr);
    assert!(!info.status.success() && stderr.contains("connection limit (16 at once)"), "qemu-img: {stderr}");
    over.option(OPT_ABORT, &[]).unwrap();
    drop(over);
    // At most 8 are told at once; past them a connection is closed at once.
    std::thread::sleep(Duration::from_millis(200));
    let mut told: Vec<RawClient> = (0..8).map(|_| RawClient::connect_bare(daemon.nbd).unwrap()).collect();
    let mut closed = RawClient::connect_bare(daemon.nbd).unwrap();
    assert!(closed.is_closed(), "connection over the cap was kept");
    assert!(started.elapsed() < Duration::from_millis(900), "over-cap client was not refused at once");
    for client in &mut told {
        // The greeting, then EOF at the refusal's (here the handshake's) deadline.
        assert_eq!(&client.read_bytes(18).unwrap()[..8], b"NBDMAGIC");
        assert!(client.is_closed(), "a connection over the cap was held");
    }
    for client in silent.iter_mut().chain(std::iter::once(&mut stalled)) {
        // Greeting (if sent at all), then EOF once the deadline passes.
        let _ = client.read_bytes(18);
        assert!(client.is_closed(), "idle client was not disconnected");
    }
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(14), "idle clients held for {waited:?}");
    assert_serving(daemon.nbd);
    assert!(daemon.is_running());
}

#[test]
fn long_export_names_are_refused_safely() {
    // nbd-server CVE-2022-26495/26496 and qemu CVE-2017-15118: export names
    // at and past the 4096-byte limit, and name-length fields larger than the
    // option, get error replies; the same connection then negotiates normally.
    let dir = tempfile::tempdir().unwrap();
    let daemon = hardened_daemon(dir.path());
    let mut client = RawClient::connect(daemon.nbd).unwrap();

    let name = vec![b'a'; 4096];
    let reply = client.option(OPT_GO, &info_data(4096, &name, &[])).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_UNKNOWN, "4096-byte name is legal but unknown");
    // Its message stays within the spec's 4096-byte string limit, so
    // libnbd shows it (it refuses longer ones as "too long").
    let message = &reply.last().unwrap().data;
    let message = String::from_utf8_lossy(message);
    assert!(message.len() <= 4096 && message.contains("(4096 bytes)` is not a valid name"), "{message}");
    let output = run(
        Command::new("nbdinfo").env("LIBNBD_DEBUG", "1").arg(daemon.uri(std::str::from_utf8(&name).unwrap())),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && !stderr.contains("too long"), "{stderr}");
    assert!(stderr.contains("server error message: `aaaa"), "{stderr}");

    let name = vec![b'a'; 5000];
    let reply = client.option(OPT_INFO, &info_data(5000, &name, &[])).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_INVALID);

    let name = vec![b'b'; 60_000];
    let reply = client.option(OPT_GO, &info_data(60_000, &name, &[1, 2, 3])).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_INVALID);

    // Name length field far beyond the option data (the overflow case).
    let reply = client.option(OPT_GO, &info_data(u32::MAX, b"default", &[])).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_INVALID);
    let reply = client.option(OPT_GO, &info_data(0x8000_0000, b"default", &[])).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_INVALID);

    // Info-request count that does not match the option length.
    let mut data = info_data(7, b"default", &[]);
    data[11..13].copy_from_slice(&1000u16.to_be_bytes());
    let reply = client.option(OPT_GO, &data).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_INVALID);

    // Options larger than the server buffers are skipped, not buffered.
    let big = vec![0u8; 1 << 20];
    let reply = client.option(OPT_GO, &big).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_TOO_BIG);
    let reply = client.option(0x1234, &big).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_UNSUP);
    let reply = client.option(OPT_EXTENDED_HEADERS, &[]).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_UNSUP, "extended headers are not offered");

    // After all that, the same connection still negotiates and serves.
    let (size, _) = client.go("default").unwrap();
    assert_eq!(size, 1 << 30);
    client.request(0, CMD_READ, 9, 0, 4096, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (0, 9));
    assert_eq!(client.read_bytes(4096).unwrap().len(), 4096);

    // EXPORT_NAME with a huge declared length cannot be answered: hang up.
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.send_option(OPT_EXPORT_NAME, 100 << 20, b"default").unwrap();
    assert!(client.is_closed());
    assert_serving(daemon.nbd);
}

#[test]
fn garbage_after_the_magic_is_a_clean_disconnect() {
    // Unknown client flags, a wrong option magic, and garbage in place of a
    // request each end that connection only.
    let dir = tempfile::tempdir().unwrap();
    let mut daemon = hardened_daemon(dir.path());

    let mut client = RawClient::connect_bare(daemon.nbd).unwrap();
    client.read_bytes(18).unwrap();
    client.stream.write_all(&0xffff_fff0u32.to_be_bytes()).unwrap();
    assert!(client.is_closed(), "unknown client flags must drop the connection");

    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(client.is_closed(), "bad option magic must drop the connection");

    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.go("default").unwrap();
    client.stream.write_all(&[0xde; 64]).unwrap();
    assert!(client.is_closed(), "bad request magic must drop the connection");

    // Option whose internal lengths exceed its declared length.
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    let reply = client.option(OPT_LIST, &[1, 2, 3]).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_INVALID, "LIST takes no data");
    let mut meta = Vec::new();
    meta.extend_from_slice(&7u32.to_be_bytes());
    meta.extend_from_slice(b"default");
    meta.extend_from_slice(&5u32.to_be_bytes()); // five queries announced, none sent
    client.option(OPT_STRUCTURED_REPLY, &[]).unwrap();
    let reply = client.option(OPT_SET_META_CONTEXT, &meta).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ERR_INVALID);
    let reply = client.option(OPT_ABORT, &[]).unwrap();
    assert_eq!(reply.last().unwrap().kind, REP_ACK);
    assert!(client.is_closed());

    assert_serving(daemon.nbd);
    assert!(daemon.is_running());
}

#[test]
fn out_of_range_and_oversized_requests_get_errors_not_writes() {
    // offset + length overflowing u64, requests past the end, reads over
    // 32 MiB and unknown commands get error replies; the connection stays
    // usable; a write payload over 32 MiB is a disconnect. Nothing lands
    // outside the volume: the backing data stays within its size.
    let dir = tempfile::tempdir().unwrap();
    let daemon = hardened_daemon(dir.path());
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.go("default").unwrap();

    client.request(0, CMD_READ, 1, u64::MAX - 100, 4096, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (EINVAL, 1));
    client.request(0, CMD_WRITE, 2, u64::MAX - 511, 512, &[0xee; 512]).unwrap();
    let (error, cookie) = client.simple_reply().unwrap();
    assert_eq!(cookie, 2);
    assert!(error == EINVAL || error == ENOSPC, "overflowing write got {error}");
    client.request(0, CMD_WRITE, 3, (1 << 30) - 256, 512, &[0xee; 512]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (ENOSPC, 3), "write past the end");
    client.request(0, CMD_READ, 4, 0, 64 << 20, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (EINVAL, 4), "64 MiB read");
    client.request(0, 99, 5, 0, 512, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (EINVAL, 5), "unknown command");
    client.request(0x8000, CMD_READ, 6, 0, 512, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (EINVAL, 6), "unknown flag");
    client.request(0, CMD_FLUSH, 7, 4096, 0, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (EINVAL, 7), "flush with an offset");
    client.request(0, CMD_READ, 8, 0, 0, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (EINVAL, 8), "zero-length read");

    // Still in sync: a normal read works on the same connection.
    client.request(0, CMD_READ, 10, (1 << 30) - 512, 512, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (0, 10));
    assert!(client.read_bytes(512).unwrap().iter().all(|&b| b == 0), "last sector was written");

    // A write announcing 4 GiB of payload cannot be skipped: disconnect.
    client.request(0, CMD_WRITE, 11, 0, u32::MAX, &[]).unwrap();
    assert!(client.is_closed());

    // No byte landed past the end of the 1 GiB volume.
    let output = Command::new("nbdinfo").arg("--size").arg(daemon.uri("default")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), (1u64 << 30).to_string());
    assert_serving(daemon.nbd);
}

#[test]
fn disconnect_with_requests_in_flight_loses_nothing_acknowledged() {
    // A client that pipelines writes and a flush then vanishes mid-stream
    // leaves a consistent server: every acknowledged write reads back.
    let dir = tempfile::tempdir().unwrap();
    let daemon = hardened_daemon(dir.path());
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.go("default").unwrap();
    for i in 0..64u64 {
        client.request(0, CMD_WRITE, i, i * 4096, 4096, &[i as u8; 4096]).unwrap();
    }
    client.request(0, CMD_FLUSH, 1000, 0, 0, &[]).unwrap();
    let mut acknowledged = Vec::new();
    for _ in 0..65 {
        let (error, cookie) = client.simple_reply().unwrap();
        assert_eq!(error, 0);
        acknowledged.push(cookie);
    }
    assert!(acknowledged.contains(&1000));
    // Half a request, then gone.
    client.request(0, CMD_WRITE, 2000, 0, 4096, &[0xff; 100]).unwrap();
    drop(client);

    let mut reader = RawClient::connect(daemon.nbd).unwrap();
    reader.go("default").unwrap();
    for i in 0..64u64 {
        reader.request(0, CMD_READ, i, i * 4096, 4096, &[]).unwrap();
        assert_eq!(reader.simple_reply().unwrap(), (0, i));
        assert_eq!(reader.read_bytes(4096).unwrap(), vec![i as u8; 4096]);
    }
}

#[test]
fn requests_trickling_in_one_at_a_time_and_a_hang_up_while_idle() {
    // With nothing in flight the server polls the socket briefly for the
    // next request before it waits through the reactor (ServerConfig::
    // idle_poll). Requests that arrive a few bytes at a time, across and
    // after that window, are served exactly; a client that hangs up while
    // the server polls is noticed, and the daemon keeps serving.
    let dir = tempfile::tempdir().unwrap();
    let daemon = hardened_daemon(dir.path());
    let mut client = RawClient::connect(daemon.nbd).unwrap();
    client.go("default").unwrap();
    for i in 0..6u64 {
        let payload = [0x40 + i as u8; 512];
        let mut message = Vec::new();
        message.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        message.extend_from_slice(&0u16.to_be_bytes());
        message.extend_from_slice(&CMD_WRITE.to_be_bytes());
        message.extend_from_slice(&i.to_be_bytes());
        message.extend_from_slice(&(i * 512).to_be_bytes());
        message.extend_from_slice(&512u32.to_be_bytes());
        message.extend_from_slice(&payload);
        // Pieces of 1 to 200 bytes, 0 to 2 ms apart (the poll lasts 50 µs).
        let mut at = 0;
        for (step, size) in [1usize, 7, 20, 200].iter().cycle().enumerate() {
            if at == message.len() {
                break;
            }
            let end = (at + size).min(message.len());
            client.stream.write_all(&message[at..end]).unwrap();
            client.stream.flush().unwrap();
            at = end;
            std::thread::sleep(Duration::from_micros(((step as u64 + i) % 3) * 1000));
        }
        assert_eq!(client.simple_reply().unwrap(), (0, i));
    }
    for i in 0..6u64 {
        client.request(0, CMD_READ, 100 + i, i * 512, 512, &[]).unwrap();
        assert_eq!(client.simple_reply().unwrap(), (0, 100 + i));
        assert_eq!(client.read_bytes(512).unwrap(), vec![0x40 + i as u8; 512]);
    }
    // A reply, then gone at once: the server is still polling for the
    // next request when the connection ends.
    client.request(0, CMD_FLUSH, 200, 0, 0, &[]).unwrap();
    assert_eq!(client.simple_reply().unwrap(), (0, 200));
    drop(client);
    assert_serving(daemon.nbd);
    // The connection is gone from the daemon's count.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let socket = daemon.data_dir.join("control.sock");
        let status = rewind_tests::run_ok(
            Command::new(rewind_tests::binary("rewind"))
                .arg("--control")
                .arg(&socket)
                .args(["volume", "show", "default", "--json"]),
            Duration::from_secs(10),
        );
        if status.contains("\"head\":0") || status.contains("\"head\": 0") {
            break;
        }
        assert!(Instant::now() < deadline, "connection still counted: {status}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
