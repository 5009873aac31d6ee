//! Arbitrary request streams through the transmission codec as the server
//! driver uses it: decode a header, check it against the session, consume
//! the payload of writes, apply accepted requests to a 1 MiB model disk
//! (slicing panics on any out-of-range access), and encode every reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_server::handshake::Negotiated;
use nbd_server::protocol::REQUEST_HEADER_LEN;
use nbd_server::transmission::{
    Command, check_request, decode_request, encode_block_status, encode_error, encode_ok,
    encode_sparse_read, fill_read_header, read_reply_header_len,
};
use nbd_server::{ExportInfo, Extent};

const SIZE: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut input)) = data.split_first() else { return };
    let session = Negotiated {
        export: ExportInfo {
            name: "disk".into(),
            description: String::new(),
            size: SIZE,
            read_only: mode & 1 == 1,
            multi_conn: true,
            preferred_block: 4096,
            fast_zero: mode & 8 == 8,
        },
        flags: 1 | if mode & 8 == 8 { 1 << 11 } else { 0 },
        structured: mode & 2 == 2,
        base_allocation: (mode & 4 == 4).then_some(1),
    };
    let mut disk = vec![0u8; SIZE as usize];
    let mut out = Vec::new();
    for _ in 0..256 {
        let header = match decode_request(input) {
            Ok(Some(header)) => header,
            Ok(None) | Err(_) => return,
        };
        input = &input[REQUEST_HEADER_LEN..];
        let payload_length = header.payload_length() as usize;
        if payload_length > input.len() {
            return;
        }
        let (payload, rest) = input.split_at(payload_length);
        input = rest;
        out.clear();
        match check_request(&session, &header) {
            Err(rejection) => {
                encode_error(&mut out, session.structured, header.cookie, rejection.errno, rejection.message)
            }
            Ok(Command::Read { offset, length, df }) => {
                let start = offset as usize;
                let data = &disk[start..start + length as usize];
                let hole_length = data.iter().take_while(|&&b| b == 0).count();
                if session.structured && !df && hole_length > 0 {
                    encode_sparse_read(&mut out, header.cookie, offset, data, &[(0, hole_length)]);
                } else {
                    let head = read_reply_header_len(session.structured);
                    let mut buffer = vec![0u8; head + data.len()];
                    buffer[head..].copy_from_slice(data);
                    fill_read_header(&mut buffer, session.structured, header.cookie, offset);
                    out.extend_from_slice(&buffer);
                }
            }
            Ok(Command::Write { offset, length, .. }) => {
                assert_eq!(length as usize, payload.len());
                disk[offset as usize..offset as usize + payload.len()].copy_from_slice(payload);
                encode_ok(&mut out, header.cookie);
            }
            Ok(Command::Trim { offset, length, .. }) | Ok(Command::WriteZeroes { offset, length, .. }) => {
                disk[offset as usize..offset as usize + length as usize].fill(0);
                encode_ok(&mut out, header.cookie);
            }
            Ok(Command::BlockStatus { offset, length, req_one }) => {
                let end = offset + u64::from(length);
                let extents = [
                    Extent { length: (end - offset) / 2 + 1, hole: true, zero: true },
                    Extent { length: u64::from(length), hole: false, zero: false },
                ];
                encode_block_status(&mut out, header.cookie, 1, length, req_one, &extents);
            }
            Ok(Command::Cache { offset, length }) => {
                assert!(offset + u64::from(length) <= SIZE);
                encode_ok(&mut out, header.cookie);
            }
            Ok(Command::Flush) => encode_ok(&mut out, header.cookie),
            Ok(Command::Disconnect) => return,
        }
        assert!(!out.is_empty());
    }
});
