//! Arbitrary client bytes, cut into arbitrary chunks, through the handshake
//! machine; lookups succeed for "disk" only. The machine must never panic,
//! never loop without consuming input, and keep its output bounded. With
//! bit 6 of the first byte set the machine is a refusing one (a connection
//! over the limit), which must never ask for a lookup or a list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_server::handshake::{Action, Handshake, HandshakeConfig};
use nbd_server::{ExportInfo, Listing, LookupError};

fuzz_target!(|data: &[u8]| {
    let Some((&chunking, input)) = data.split_first() else { return };
    let chunk = usize::from(chunking % 32) + 1;
    let config = HandshakeConfig { max_option_length: 4096, max_discard_length: 1 << 16, max_options: 64 };
    let refusing = chunking & 64 != 0;
    let mut machine =
        if refusing { Handshake::refusing(config, "at the limit".into()) } else { Handshake::new(config) };
    machine.transmit().clear();
    let mut pending: Vec<u8> = Vec::new();
    for piece in input.chunks(chunk) {
        pending.extend_from_slice(piece);
        for _round in 0..10_000 {
            let used = machine.receive(&pending);
            assert!(used <= pending.len());
            pending.drain(..used);
            match machine.poll_action() {
                Some(Action::Lookup(_)) | Some(Action::List) | Some(Action::Transmission(_)) if refusing => {
                    panic!("a refusing handshake asked the driver for something")
                }
                Some(Action::Lookup(name)) => {
                    assert!(name.len() <= 4096 || !name.is_empty());
                    let result = if name == "disk" {
                        Ok(ExportInfo {
                            name,
                            description: "d".into(),
                            size: 1 << 20,
                            read_only: chunking & 1 == 1,
                            multi_conn: true,
                            preferred_block: 4096,
                            fast_zero: true,
                        })
                    } else {
                        Err(LookupError { message: "unknown".into() })
                    };
                    machine.export_resolved(result);
                }
                Some(Action::List) => {
                    machine.list_ready(&[Listing { name: "disk".into(), description: String::new() }])
                }
                Some(Action::Transmission(_)) | Some(Action::Close(_)) => return,
                None if used == 0 => break,
                None => {}
            }
            assert!(machine.transmit().len() < 1 << 22, "unbounded output");
        }
    }
});
