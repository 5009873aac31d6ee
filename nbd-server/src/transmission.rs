//! The transmission phase as plain functions: decode a request header, check
//! it against what was negotiated, encode replies. No IO.
//!
//! Layout of a request (28 bytes, big-endian):
//!
//! ```text
//! 0      4      6      8              16             24     28
//! | magic | flags | type | cookie       | offset       | length |
//! ```
//!
//! followed by `length` bytes of payload for `NBD_CMD_WRITE` only.

use crate::device::{Errno, Extent, ZeroFlags};
use crate::handshake::{MAX_REQUEST_LENGTH, Negotiated};
use crate::protocol::{
    REQUEST_HEADER_LEN, REQUEST_MAGIC, SIMPLE_REPLY_HEADER_LEN, SIMPLE_REPLY_MAGIC,
    STRUCTURED_REPLY_HEADER_LEN, STRUCTURED_REPLY_MAGIC, chunk, chunk_flags, command, command_flags,
    transmission_flags,
};

const MAGIC_OFFSET: usize = 0;
const FLAGS_OFFSET: usize = MAGIC_OFFSET + 4;
const TYPE_OFFSET: usize = FLAGS_OFFSET + 2;
const COOKIE_OFFSET: usize = TYPE_OFFSET + 2;
const OFFSET_OFFSET: usize = COOKIE_OFFSET + 8;
const LENGTH_OFFSET: usize = OFFSET_OFFSET + 8;
const _: () = assert!(LENGTH_OFFSET + 4 == REQUEST_HEADER_LEN);

/// Bytes before the data in a successful read reply: a simple reply header,
/// or a structured chunk header plus the chunk's 8-byte offset.
pub const fn read_reply_header_len(structured: bool) -> usize {
    if structured { STRUCTURED_REPLY_HEADER_LEN + 8 } else { SIMPLE_REPLY_HEADER_LEN }
}

/// A request header as it came off the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub length: u32,
}

impl RequestHeader {
    /// Bytes of payload that follow this header on the wire.
    pub fn payload_length(&self) -> u32 {
        if self.kind == command::WRITE { self.length } else { 0 }
    }

    /// Encodes the header (used by tests and fuzzers to build requests).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out.extend_from_slice(&self.flags.to_be_bytes());
        out.extend_from_slice(&self.kind.to_be_bytes());
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&self.offset.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// The stream cannot be parsed any further; the connection must be dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A request did not start with `NBD_REQUEST_MAGIC`.
    #[error("bad request magic {0:#010x}")]
    BadMagic(u32),
    /// A write announced more payload than the server accepts, so its bytes
    /// cannot be skipped safely.
    #[error("write payload of {0} bytes exceeds the 32 MiB limit")]
    PayloadTooLarge(u32),
}

/// Decodes one request header from the front of `input`; `Ok(None)` means
/// fewer than 28 bytes are available.
pub fn decode_request(input: &[u8]) -> Result<Option<RequestHeader>, ProtocolError> {
    let Some(bytes) = input.get(..REQUEST_HEADER_LEN) else {
        return Ok(None);
    };
    let be32 = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let be16 = |at: usize| u16::from_be_bytes(bytes[at..at + 2].try_into().expect("2 bytes"));
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let magic = be32(MAGIC_OFFSET);
    if magic != REQUEST_MAGIC {
        return Err(ProtocolError::BadMagic(magic));
    }
    let header = RequestHeader {
        flags: be16(FLAGS_OFFSET),
        kind: be16(TYPE_OFFSET),
        cookie: be64(COOKIE_OFFSET),
        offset: be64(OFFSET_OFFSET),
        length: be32(LENGTH_OFFSET),
    };
    if header.kind == command::WRITE && header.length > MAX_REQUEST_LENGTH {
        return Err(ProtocolError::PayloadTooLarge(header.length));
    }
    Ok(Some(header))
}

/// A request that passed every check; offsets and lengths are in range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Read { offset: u64, length: u32, df: bool },
    Write { offset: u64, length: u32, fua: bool },
    Flush,
    Trim { offset: u64, length: u32, fua: bool },
    Cache { offset: u64, length: u32 },
    WriteZeroes { offset: u64, length: u32, flags: ZeroFlags },
    BlockStatus { offset: u64, length: u32, req_one: bool },
    Disconnect,
}

/// A request refused before it reached the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub errno: Errno,
    pub message: &'static str,
}

fn reject(errno: Errno, message: &'static str) -> Result<Command, Rejection> {
    Err(Rejection { errno, message })
}

/// Checks a request against the negotiated export. Everything the device
/// later sees has `offset + length <= size`, computed without overflow.
pub fn check_request(session: &Negotiated, header: &RequestHeader) -> Result<Command, Rejection> {
    use command_flags as cf;
    let size = session.export.size;
    let flags = header.flags;
    let offset = header.offset;
    let length = header.length;
    let fua = flags & cf::FUA != 0;
    let allowed = match header.kind {
        command::READ if session.structured => cf::FUA | cf::DF,
        command::WRITE_ZEROES if session.flags & transmission_flags::SEND_FAST_ZERO != 0 => {
            cf::FUA | cf::NO_HOLE | cf::FAST_ZERO
        }
        command::WRITE_ZEROES => cf::FUA | cf::NO_HOLE,
        command::BLOCK_STATUS => cf::FUA | cf::REQ_ONE,
        _ => cf::FUA,
    };
    if header.kind > command::BLOCK_STATUS {
        return reject(Errno::Inval, "unknown command");
    }
    if flags & !allowed != 0 {
        return reject(Errno::Inval, "command flag not valid for this command");
    }
    let writes = matches!(header.kind, command::WRITE | command::TRIM | command::WRITE_ZEROES);
    if writes && session.export.read_only {
        return reject(Errno::Perm, "export is read-only");
    }
    match header.kind {
        command::DISC => return Ok(Command::Disconnect),
        command::FLUSH => {
            if offset != 0 || length != 0 {
                return reject(Errno::Inval, "flush offset and length must be zero");
            }
            return Ok(Command::Flush);
        }
        _ => {}
    }
    if length == 0 {
        return reject(Errno::Inval, "zero-length request");
    }
    let end = match offset.checked_add(u64::from(length)) {
        Some(end) => end,
        None => return reject(Errno::Inval, "offset + length overflows"),
    };
    if end > size {
        return if writes {
            reject(Errno::NoSpc, "request extends past the end of the export")
        } else {
            reject(Errno::Inval, "request extends past the end of the export")
        };
    }
    match header.kind {
        command::READ => {
            if length > MAX_REQUEST_LENGTH {
                return reject(Errno::Inval, "read longer than 32 MiB");
            }
            Ok(Command::Read { offset, length, df: flags & cf::DF != 0 })
        }
        command::WRITE => Ok(Command::Write { offset, length, fua }),
        command::TRIM => Ok(Command::Trim { offset, length, fua }),
        command::CACHE => Ok(Command::Cache { offset, length }),
        command::WRITE_ZEROES => Ok(Command::WriteZeroes {
            offset,
            length,
            flags: ZeroFlags { fua, no_hole: flags & cf::NO_HOLE != 0, fast: flags & cf::FAST_ZERO != 0 },
        }),
        command::BLOCK_STATUS => {
            if !session.structured || session.base_allocation.is_none() {
                return reject(Errno::Inval, "no metadata context was negotiated");
            }
            Ok(Command::BlockStatus { offset, length, req_one: flags & cf::REQ_ONE != 0 })
        }
        _ => reject(Errno::Inval, "unknown command"),
    }
}

/// Appends a simple reply header (no data).
pub fn encode_simple_reply(out: &mut Vec<u8>, cookie: u64, error: u32) {
    out.extend_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
}

fn encode_chunk_header(out: &mut Vec<u8>, cookie: u64, flags: u16, kind: u16, length: u32) {
    out.extend_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
}

/// Appends the reply for a request that succeeded without data.
pub fn encode_ok(out: &mut Vec<u8>, cookie: u64) {
    encode_simple_reply(out, cookie, 0);
}

/// Appends an error reply: a structured `NBD_REPLY_TYPE_ERROR` chunk with the
/// message if structured replies were negotiated, else a simple reply.
pub fn encode_error(out: &mut Vec<u8>, structured: bool, cookie: u64, errno: Errno, message: &str) {
    if !structured {
        encode_simple_reply(out, cookie, errno.code());
        return;
    }
    let mut end = message.len().min(4096);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let message = &message.as_bytes()[..end];
    encode_chunk_header(out, cookie, chunk_flags::DONE, chunk::ERROR, 6 + message.len() as u32);
    out.extend_from_slice(&errno.code().to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
}

/// Fills the header room at the front of a read reply buffer built as
/// `[header; read_reply_header_len(structured)] ++ data`.
pub fn fill_read_header(buffer: &mut [u8], structured: bool, cookie: u64, offset: u64) {
    let header_length = read_reply_header_len(structured);
    let mut header = Vec::with_capacity(header_length);
    encode_read_header(&mut header, structured, cookie, offset, buffer.len() - header_length);
    buffer[..header_length].copy_from_slice(&header);
}

/// Appends the header of a one-piece read reply whose `data_length` bytes
/// of data follow it (a simple reply, or one `OFFSET_DATA` chunk with
/// `DONE`).
pub fn encode_read_header(out: &mut Vec<u8>, structured: bool, cookie: u64, offset: u64, data_length: usize) {
    if structured {
        encode_chunk_header(out, cookie, chunk_flags::DONE, chunk::OFFSET_DATA, (data_length + 8) as u32);
        out.extend_from_slice(&offset.to_be_bytes());
    } else {
        encode_simple_reply(out, cookie, 0);
    }
}

/// Encodes a structured read reply that skips the given holes: data chunks
/// for the rest, `OFFSET_HOLE` chunks for the holes, `DONE` on the last.
/// `holes` are (start, length) relative to `data`, sorted, non-overlapping.
pub fn encode_sparse_read(
    out: &mut Vec<u8>,
    cookie: u64,
    offset: u64,
    data: &[u8],
    holes: &[(usize, usize)],
) {
    let mut pieces: Vec<(usize, usize, bool)> = Vec::with_capacity(holes.len() * 2 + 1);
    let mut at = 0;
    for &(start, length) in holes {
        let start = start.max(at).min(data.len());
        let end = start.saturating_add(length).min(data.len());
        if end <= start {
            continue;
        }
        if start > at {
            pieces.push((at, start - at, false));
        }
        pieces.push((start, end - start, true));
        at = end;
    }
    if at < data.len() || pieces.is_empty() {
        pieces.push((at, data.len() - at, false));
    }
    let last = pieces.len() - 1;
    for (index, (start, length, hole)) in pieces.into_iter().enumerate() {
        let flags = if index == last { chunk_flags::DONE } else { 0 };
        let chunk_offset = offset + start as u64;
        if hole {
            encode_chunk_header(out, cookie, flags, chunk::OFFSET_HOLE, 12);
            out.extend_from_slice(&chunk_offset.to_be_bytes());
            out.extend_from_slice(&(length as u32).to_be_bytes());
        } else {
            encode_chunk_header(out, cookie, flags, chunk::OFFSET_DATA, (length + 8) as u32);
            out.extend_from_slice(&chunk_offset.to_be_bytes());
            out.extend_from_slice(&data[start..start + length]);
        }
    }
}

/// Encodes a block-status reply for `base:allocation`: extents clipped to
/// the request, merged when equal, at most one if `req_one`.
pub fn encode_block_status(
    out: &mut Vec<u8>,
    cookie: u64,
    context_id: u32,
    length: u32,
    req_one: bool,
    extents: &[Extent],
) {
    let mut descriptors: Vec<(u32, u32)> = Vec::new();
    let mut left = u64::from(length);
    for extent in extents {
        if left == 0 {
            break;
        }
        let take = extent.length.min(left);
        if take == 0 {
            continue;
        }
        left -= take;
        let flags = extent.flags();
        match descriptors.last_mut() {
            Some((run, run_flags)) if *run_flags == flags => *run += take as u32,
            _ => descriptors.push((take as u32, flags)),
        }
        if req_one {
            break;
        }
    }
    if descriptors.is_empty() {
        // The device said nothing: status 0 ("allocated, unknown") is always safe.
        descriptors.push((length, 0));
    }
    if req_one {
        descriptors.truncate(1);
    }
    let payload = 4 + 8 * descriptors.len() as u32;
    encode_chunk_header(out, cookie, chunk_flags::DONE, chunk::BLOCK_STATUS, payload);
    out.extend_from_slice(&context_id.to_be_bytes());
    for (run, flags) in descriptors {
        out.extend_from_slice(&run.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::ExportInfo;
    use proptest::prelude::*;

    fn session(read_only: bool, structured: bool, meta: bool) -> Negotiated {
        let flags = transmission_flags::HAS_FLAGS | transmission_flags::SEND_FAST_ZERO;
        Negotiated {
            export: ExportInfo {
                name: "disk".into(),
                description: String::new(),
                size: 1 << 20,
                read_only,
                multi_conn: true,
                preferred_block: 4096,
                fast_zero: true,
            },
            flags,
            structured,
            base_allocation: meta.then_some(1),
        }
    }

    fn header(kind: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader { flags, kind, cookie: 7, offset, length }
    }

    #[test]
    fn decodes_what_encode_wrote_and_rejects_bad_magic() {
        // A header round-trips; a wrong magic is a protocol error; a short
        // buffer asks for more.
        let request = header(command::WRITE, command_flags::FUA, 4096, 512);
        let mut bytes = Vec::new();
        request.encode(&mut bytes);
        assert_eq!(decode_request(&bytes), Ok(Some(request)));
        assert_eq!(decode_request(&bytes[..27]), Ok(None));
        bytes[0] ^= 1;
        assert!(matches!(decode_request(&bytes), Err(ProtocolError::BadMagic(_))));
    }

    #[test]
    fn oversized_write_payload_is_a_protocol_error() {
        // Write payloads over 32 MiB cannot be skipped safely.
        let mut bytes = Vec::new();
        header(command::WRITE, 0, 0, MAX_REQUEST_LENGTH + 1).encode(&mut bytes);
        assert_eq!(decode_request(&bytes), Err(ProtocolError::PayloadTooLarge(MAX_REQUEST_LENGTH + 1)));
        let mut bytes = Vec::new();
        header(command::READ, 0, 0, MAX_REQUEST_LENGTH + 1).encode(&mut bytes);
        assert!(decode_request(&bytes).unwrap().is_some(), "reads carry no payload");
    }

    #[test]
    fn range_checks_use_the_right_errno() {
        // Past the end: EINVAL for reads, ENOSPC for writes; overflow: EINVAL.
        let s = session(false, true, true);
        let errno = |h| check_request(&s, &h).unwrap_err().errno;
        assert_eq!(errno(header(command::READ, 0, (1 << 20) - 1, 2)), Errno::Inval);
        assert_eq!(errno(header(command::WRITE, 0, (1 << 20) - 1, 2)), Errno::NoSpc);
        assert_eq!(errno(header(command::TRIM, 0, 1 << 20, 1)), Errno::NoSpc);
        assert_eq!(errno(header(command::READ, 0, u64::MAX, 1)), Errno::Inval);
        assert_eq!(errno(header(command::WRITE, 0, u64::MAX - 10, 512)), Errno::Inval);
        assert_eq!(errno(header(command::BLOCK_STATUS, 0, 1 << 19, 1 << 20)), Errno::Inval);
        assert_eq!(errno(header(command::READ, 0, 0, 0)), Errno::Inval);
        assert!(check_request(&s, &header(command::READ, 0, (1 << 20) - 1, 1)).is_ok());
    }

    #[test]
    fn flags_and_modes_are_enforced() {
        // Read-only exports refuse writes with EPERM; flags outside a
        // command's set, DF without structured replies, and block status
        // without a context are EINVAL.
        let ro = session(true, true, true);
        for kind in [command::WRITE, command::TRIM, command::WRITE_ZEROES] {
            assert_eq!(check_request(&ro, &header(kind, 0, 0, 512)).unwrap_err().errno, Errno::Perm);
        }
        assert!(check_request(&ro, &header(command::READ, command_flags::FUA, 0, 512)).is_ok());
        let simple = session(false, false, false);
        let df = header(command::READ, command_flags::DF, 0, 512);
        assert_eq!(check_request(&simple, &df).unwrap_err().errno, Errno::Inval);
        assert!(check_request(&session(false, true, false), &df).is_ok());
        let status = header(command::BLOCK_STATUS, 0, 0, 512);
        assert_eq!(check_request(&session(false, true, false), &status).unwrap_err().errno, Errno::Inval);
        let req_one_on_read = header(command::READ, command_flags::REQ_ONE, 0, 512);
        assert_eq!(check_request(&ro, &req_one_on_read).unwrap_err().errno, Errno::Inval);
        let zero = header(command::WRITE_ZEROES, command_flags::FAST_ZERO | command_flags::NO_HOLE, 0, 512);
        let Ok(Command::WriteZeroes { flags, .. }) = check_request(&simple, &zero) else { panic!() };
        assert!(flags.fast && flags.no_hole && !flags.fua);
    }

    #[test]
    fn sparse_read_covers_the_request_with_data_and_hole_chunks() {
        // Holes become OFFSET_HOLE chunks, the rest OFFSET_DATA, only the
        // last chunk has DONE, and together they cover the request exactly.
        let data: Vec<u8> = (0..16384u32).map(|i| if (4096..12288).contains(&i) { 0 } else { 1 }).collect();
        let mut out = Vec::new();
        encode_sparse_read(&mut out, 9, 1 << 16, &data, &[(4096, 8192)]);
        let mut at = 0;
        let mut covered = 0u64;
        let mut chunks = Vec::new();
        while at < out.len() {
            let flags = u16::from_be_bytes([out[at + 4], out[at + 5]]);
            let kind = u16::from_be_bytes([out[at + 6], out[at + 7]]);
            let length = u32::from_be_bytes(out[at + 16..at + 20].try_into().unwrap()) as usize;
            let offset = u64::from_be_bytes(out[at + 20..at + 28].try_into().unwrap());
            let size = if kind == chunk::OFFSET_HOLE {
                u32::from_be_bytes(out[at + 28..at + 32].try_into().unwrap()) as u64
            } else {
                (length - 8) as u64
            };
            assert_eq!(offset, (1 << 16) + covered);
            covered += size;
            chunks.push((kind, flags));
            at += 20 + length;
        }
        assert_eq!(covered, 16384);
        assert_eq!(
            chunks,
            [(chunk::OFFSET_DATA, 0), (chunk::OFFSET_HOLE, 0), (chunk::OFFSET_DATA, chunk_flags::DONE)]
        );
    }

    #[test]
    fn block_status_merges_clips_and_honours_req_one() {
        // Equal neighbours merge, extents are clipped to the request, REQ_ONE
        // sends exactly one descriptor, and an empty answer is "status 0".
        let extents = [
            Extent { length: 4096, hole: true, zero: true },
            Extent { length: 4096, hole: true, zero: true },
            Extent { length: 1 << 20, hole: false, zero: false },
        ];
        let descriptors = |req_one, length, extents: &[Extent]| {
            let mut out = Vec::new();
            encode_block_status(&mut out, 1, 1, length, req_one, extents);
            out[24..]
                .chunks(8)
                .map(|d| {
                    (
                        u32::from_be_bytes(d[..4].try_into().unwrap()),
                        u32::from_be_bytes(d[4..].try_into().unwrap()),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(descriptors(false, 10000, &extents), [(8192, 3), (1808, 0)]);
        assert_eq!(descriptors(true, 10000, &extents), [(4096, 3)]);
        assert_eq!(descriptors(false, 512, &[]), [(512, 0)]);
    }

    proptest! {
        #[test]
        fn checked_requests_stay_inside_the_export(
            kind in 0u16..10, flags in any::<u16>(), offset in any::<u64>(), length in any::<u32>(),
            read_only in any::<bool>(), structured in any::<bool>(),
        ) {
            // Whatever the header, an accepted request lies within the export
            // and never overflows.
            let s = session(read_only, structured, true);
            if let Ok(command) = check_request(&s, &header(kind, flags, offset, length)) {
                let range = match command {
                    Command::Read { offset, length, .. } | Command::Write { offset, length, .. }
                    | Command::Trim { offset, length, .. } | Command::Cache { offset, length }
                    | Command::WriteZeroes { offset, length, .. }
                    | Command::BlockStatus { offset, length, .. } => Some((offset, length)),
                    Command::Flush | Command::Disconnect => None,
                };
                if let Some((offset, length)) = range {
                    prop_assert!(offset.checked_add(u64::from(length)).is_some_and(|end| end <= 1 << 20));
                    prop_assert!(length > 0);
                }
                if read_only {
                    let is_write = matches!(command, Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. });
                    prop_assert!(!is_write);
                }
            }
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Any byte string decodes, asks for more, or is a protocol error.
            let _ = decode_request(&bytes);
        }
    }
}
