//! Byte layout of every on-disk structure, mirrored from `docs/journal.md`.
//!
//! All integers are little-endian. Every structure carries a crc32c so that a
//! torn or stale write is detected and never interpreted. Offsets are derived
//! from each other so that a field can only move by editing the one above it.
//!
//! ```text
//! Segment file `seg-NNNNNNNNNN.log` = segment header, then records back to back.
//!
//! Segment header (64 bytes)
//!   0  magic            [u8; 8]  b"RWNDSEG1"
//!   8  version          u32      FORMAT_VERSION
//!  12  crc32c           u32      over bytes 0..64 with this field zeroed
//!  16  volume id        u128     the volume this segment belongs to
//!  32  segment number   u64      equals NNNNNNNNNN in the file name
//!  40  reserved         u64      zero
//!  48  first seq        u64      seq the first record of this segment carries
//!  56  chain            u32      header crc of the last record before this segment
//!  60  reserved         u32      zero
//!
//! Record header (96 bytes), followed by the payload padded with zeros to 8 bytes
//!   0  magic            u32      RECORD_MAGIC
//!   4  header crc32c    u32      over bytes 8..96 (so it also covers the payload crc)
//!   8  seq              u64      1, 2, 3, ... without gaps within a volume
//!  16  time             i64      unix nanoseconds, non-decreasing with seq
//!  24  offset           u64      write/zeroes/trim: volume byte offset;
//!                                rollback: target seq; resize: new size
//!  32  length           u64      write/zeroes/trim: extent length;
//!                                rollback: head seq before it; resize: old size
//!  40  payload length   u32      bytes after the header (before padding)
//!  44  kind             u8       RecordKind
//!  45  flags            u8       FLAG_BLAKE3 when the blake3 field is filled
//!  46  reserved         u16      zero
//!  48  payload crc32c   u32      over the payload bytes
//!  52  chain            u32      header crc of the previous record (segment chain
//!                                for the first record of a segment)
//!  56  blake3           [u8; 32] of the payload when FLAG_BLAKE3, else zero
//!  88  reserved         u64      zero
//!
//! Volume superblock file `volume` (VOLUME_FIXED_LEN bytes + names)
//!   0  magic            [u8; 8]  b"RWNDVOL1"
//!   8  version          u32
//!  12  crc32c           u32      over the whole file with this field zeroed
//!  16  volume id        u128
//!  32  created          i64      unix nanoseconds: the time of seq 0
//!  40  initial size     u64      bytes
//!  48  parent id        u128     zero: no parent (base reads as zeros)
//!  64  parent seq       u64      clone base = parent's image at this seq
//!  72  name length      u16
//!  74  parent name len  u16
//!  76  reserved         u32
//!  80  name, then parent name (UTF-8)
//!
//! Index checkpoint file `index` = chunks back to back.
//! Chunk header (40 bytes), then `count` entries of INDEX_ENTRY_LEN bytes
//!   0  magic            u32      INDEX_MAGIC
//!   4  crc32c           u32      over bytes 8..40 and all entries
//!   8  first seq        u64      seq of the first entry
//!  16  count            u32
//!  20  chain            u32      header crc of the journal record of the last entry
//!  24  end location     u64      journal location just after the last entry's record
//!  32  last location    u64      journal location of the last entry's record header
//! Index entry (40 bytes)
//!   0  offset           u64      as in the record header
//!   8  length           u64      as in the record header
//!  16  location         u64      journal location of the record header
//!  24  time             i64      unix nanoseconds, rounded up to milliseconds
//!  32  payload length   u32
//!  36  kind             u8
//!  37  reserved         [u8; 3]
//!
//!
//! Base map file `base-map` (BASE_MAP_FIXED_LEN bytes, runs, snapshot names);
//! replaced whole (write `base-map.tmp`, fsync, rename, fsync the directory)
//!   0  magic            [u8; 8]  b"RWNDBASE"
//!   8  version          u32      BASE_MAP_VERSION (version 1: runs without location;
//!                                version 2: locations with 40 bits of position)
//!  12  crc32c           u32      over the whole file with this field zeroed
//!  16  volume id        u128
//!  32  base seq         u64      the base image is the image at this seq
//!  40  base time        i64      unix nanoseconds of base seq (as indexed)
//!  48  base size        u64      bytes of the image at base seq
//!  56  run count        u64
//!  64  snapshot count   u32      snapshots that pin base seq itself
//!  68  reserved         u32      zero
//!  72  runs             run count × BASE_RUN_LEN:
//!                         0 start u64, 8 end u64, 16 kind u8 (BaseKind), 17 reserved [u8; 7],
//!                         24 location u64 (journal runs: location of byte `start`; else 0;
//!                         absent in version 1, whose runs are BASE_RUN_V1_LEN bytes)
//!  ..  snapshot names   each: length u8, then the name (UTF-8)
//!
//! Fold intent file `fold` (FOLD_LEN bytes); replaced whole like `base-map`
//!   0  magic            [u8; 8]  b"RWNDFOLD"
//!   8  version          u32
//!  12  crc32c           u32      over bytes 0..FOLD_LEN with this field zeroed
//!  16  volume id        u128
//!  32  target seq       u64      points before it are retired; the base file
//!                                may hold a mix of base seq's and target's image
//!                                where records in (base seq, target] wrote
//! ```
//!
//! A journal *location* is `segment_number << LOCATION_SEGMENT_SHIFT | byte
//! position in the segment file`: 32 bits of each, so segment numbers go up
//! to MAX_SEGMENT_NUMBER and segments up to MAX_SEGMENT_BYTES.

/// Version written in every segment header and superblock.
pub const FORMAT_VERSION: u32 = 1;

pub const SEGMENT_MAGIC: [u8; 8] = *b"RWNDSEG1";
pub const SEGMENT_MAGIC_OFFSET: usize = 0;
pub const SEGMENT_VERSION_OFFSET: usize = SEGMENT_MAGIC_OFFSET + 8;
pub const SEGMENT_CRC_OFFSET: usize = SEGMENT_VERSION_OFFSET + 4;
pub const SEGMENT_VOLUME_ID_OFFSET: usize = SEGMENT_CRC_OFFSET + 4;
pub const SEGMENT_NUMBER_OFFSET: usize = SEGMENT_VOLUME_ID_OFFSET + 16;
pub const SEGMENT_RESERVED0_OFFSET: usize = SEGMENT_NUMBER_OFFSET + 8;
pub const SEGMENT_FIRST_SEQ_OFFSET: usize = SEGMENT_RESERVED0_OFFSET + 8;
pub const SEGMENT_CHAIN_OFFSET: usize = SEGMENT_FIRST_SEQ_OFFSET + 8;
pub const SEGMENT_RESERVED_OFFSET: usize = SEGMENT_CHAIN_OFFSET + 4;
/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER_LEN: usize = SEGMENT_RESERVED_OFFSET + 4;

pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RWR1");
pub const RECORD_MAGIC_OFFSET: usize = 0;
pub const RECORD_CRC_OFFSET: usize = RECORD_MAGIC_OFFSET + 4;
pub const RECORD_SEQ_OFFSET: usize = RECORD_CRC_OFFSET + 4;
pub const RECORD_TIME_OFFSET: usize = RECORD_SEQ_OFFSET + 8;
pub const RECORD_OFFSET_OFFSET: usize = RECORD_TIME_OFFSET + 8;
pub const RECORD_LENGTH_OFFSET: usize = RECORD_OFFSET_OFFSET + 8;
pub const RECORD_PAYLOAD_LENGTH_OFFSET: usize = RECORD_LENGTH_OFFSET + 8;
pub const RECORD_KIND_OFFSET: usize = RECORD_PAYLOAD_LENGTH_OFFSET + 4;
pub const RECORD_FLAGS_OFFSET: usize = RECORD_KIND_OFFSET + 1;
pub const RECORD_RESERVED_OFFSET: usize = RECORD_FLAGS_OFFSET + 1;
pub const RECORD_PAYLOAD_CRC_OFFSET: usize = RECORD_RESERVED_OFFSET + 2;
pub const RECORD_CHAIN_OFFSET: usize = RECORD_PAYLOAD_CRC_OFFSET + 4;
pub const RECORD_BLAKE3_OFFSET: usize = RECORD_CHAIN_OFFSET + 4;
pub const RECORD_RESERVED2_OFFSET: usize = RECORD_BLAKE3_OFFSET + 32;
/// Bytes of a record header; the payload follows.
pub const RECORD_HEADER_LEN: usize = RECORD_RESERVED2_OFFSET + 8;
/// Records start on multiples of this, so headers are naturally aligned.
pub const RECORD_ALIGN: u64 = 8;
/// The blake3 field holds the payload's hash.
pub const FLAG_BLAKE3: u8 = 1;
/// Largest payload of one record; longer writes are split into several records.
pub const MAX_RECORD_PAYLOAD: usize = 8 << 20;
/// Longest snapshot name (bytes).
pub const MAX_SNAPSHOT_NAME: usize = 64;

pub const VOLUME_MAGIC: [u8; 8] = *b"RWNDVOL1";
pub const VOLUME_MAGIC_OFFSET: usize = 0;
pub const VOLUME_VERSION_OFFSET: usize = VOLUME_MAGIC_OFFSET + 8;
pub const VOLUME_CRC_OFFSET: usize = VOLUME_VERSION_OFFSET + 4;
pub const VOLUME_ID_OFFSET: usize = VOLUME_CRC_OFFSET + 4;
pub const VOLUME_CREATED_OFFSET: usize = VOLUME_ID_OFFSET + 16;
pub const VOLUME_SIZE_OFFSET: usize = VOLUME_CREATED_OFFSET + 8;
pub const VOLUME_PARENT_ID_OFFSET: usize = VOLUME_SIZE_OFFSET + 8;
pub const VOLUME_PARENT_SEQ_OFFSET: usize = VOLUME_PARENT_ID_OFFSET + 16;
pub const VOLUME_NAME_LENGTH_OFFSET: usize = VOLUME_PARENT_SEQ_OFFSET + 8;
pub const VOLUME_PARENT_NAME_LENGTH_OFFSET: usize = VOLUME_NAME_LENGTH_OFFSET + 2;
pub const VOLUME_RESERVED_OFFSET: usize = VOLUME_PARENT_NAME_LENGTH_OFFSET + 2;
/// Bytes of the superblock before the names.
pub const VOLUME_FIXED_LEN: usize = VOLUME_RESERVED_OFFSET + 4;

/// `RWI2`: locations as [`location`] builds them. Chunks of the first
/// layout (`RWIX`, 40-bit positions) are not read: recovery replays the
/// journal instead and rewrites the file.
pub const INDEX_MAGIC: u32 = u32::from_le_bytes(*b"RWI2");
pub const INDEX_MAGIC_OFFSET: usize = 0;
pub const INDEX_CRC_OFFSET: usize = INDEX_MAGIC_OFFSET + 4;
pub const INDEX_FIRST_SEQ_OFFSET: usize = INDEX_CRC_OFFSET + 4;
pub const INDEX_COUNT_OFFSET: usize = INDEX_FIRST_SEQ_OFFSET + 8;
pub const INDEX_CHAIN_OFFSET: usize = INDEX_COUNT_OFFSET + 4;
pub const INDEX_END_LOCATION_OFFSET: usize = INDEX_CHAIN_OFFSET + 4;
pub const INDEX_LAST_LOCATION_OFFSET: usize = INDEX_END_LOCATION_OFFSET + 8;
/// Bytes of an index chunk header.
pub const INDEX_CHUNK_HEADER_LEN: usize = INDEX_LAST_LOCATION_OFFSET + 8;
pub const INDEX_ENTRY_OFFSET_OFFSET: usize = 0;
pub const INDEX_ENTRY_LENGTH_OFFSET: usize = INDEX_ENTRY_OFFSET_OFFSET + 8;
pub const INDEX_ENTRY_LOCATION_OFFSET: usize = INDEX_ENTRY_LENGTH_OFFSET + 8;
pub const INDEX_ENTRY_TIME_OFFSET: usize = INDEX_ENTRY_LOCATION_OFFSET + 8;
pub const INDEX_ENTRY_PAYLOAD_LENGTH_OFFSET: usize = INDEX_ENTRY_TIME_OFFSET + 8;
pub const INDEX_ENTRY_KIND_OFFSET: usize = INDEX_ENTRY_PAYLOAD_LENGTH_OFFSET + 4;
/// Bytes of one index entry.
pub const INDEX_ENTRY_LEN: usize = INDEX_ENTRY_KIND_OFFSET + 4;
/// Most entries in one index chunk (one chunk per checkpoint).
pub const INDEX_CHUNK_MAX_ENTRIES: usize = 1 << 24;

pub const BASE_MAP_MAGIC: [u8; 8] = *b"RWNDBASE";
pub const BASE_MAP_MAGIC_OFFSET: usize = 0;
pub const BASE_MAP_VERSION_OFFSET: usize = BASE_MAP_MAGIC_OFFSET + 8;
pub const BASE_MAP_CRC_OFFSET: usize = BASE_MAP_VERSION_OFFSET + 4;
pub const BASE_MAP_VOLUME_ID_OFFSET: usize = BASE_MAP_CRC_OFFSET + 4;
pub const BASE_MAP_SEQ_OFFSET: usize = BASE_MAP_VOLUME_ID_OFFSET + 16;
pub const BASE_MAP_TIME_OFFSET: usize = BASE_MAP_SEQ_OFFSET + 8;
pub const BASE_MAP_SIZE_OFFSET: usize = BASE_MAP_TIME_OFFSET + 8;
pub const BASE_MAP_RUN_COUNT_OFFSET: usize = BASE_MAP_SIZE_OFFSET + 8;
pub const BASE_MAP_SNAPSHOT_COUNT_OFFSET: usize = BASE_MAP_RUN_COUNT_OFFSET + 8;
pub const BASE_MAP_RESERVED_OFFSET: usize = BASE_MAP_SNAPSHOT_COUNT_OFFSET + 4;
/// Bytes of the base map file before its runs.
pub const BASE_MAP_FIXED_LEN: usize = BASE_MAP_RESERVED_OFFSET + 4;
pub const BASE_RUN_START_OFFSET: usize = 0;
pub const BASE_RUN_END_OFFSET: usize = BASE_RUN_START_OFFSET + 8;
pub const BASE_RUN_KIND_OFFSET: usize = BASE_RUN_END_OFFSET + 8;
pub const BASE_RUN_LOCATION_OFFSET: usize = BASE_RUN_KIND_OFFSET + 8;
/// Bytes of one run in the base map file.
pub const BASE_RUN_LEN: usize = BASE_RUN_LOCATION_OFFSET + 8;
/// Bytes of one run in a version 1 base map file (no location).
pub const BASE_RUN_V1_LEN: usize = BASE_RUN_LOCATION_OFFSET;
/// Version of the base map file (2: runs carry a journal location; 3: in
/// today's location layout, [`LOCATION_SEGMENT_SHIFT`]).
pub const BASE_MAP_VERSION: u32 = 3;

pub const FOLD_MAGIC: [u8; 8] = *b"RWNDFOLD";
pub const FOLD_MAGIC_OFFSET: usize = 0;
pub const FOLD_VERSION_OFFSET: usize = FOLD_MAGIC_OFFSET + 8;
pub const FOLD_CRC_OFFSET: usize = FOLD_VERSION_OFFSET + 4;
pub const FOLD_VOLUME_ID_OFFSET: usize = FOLD_CRC_OFFSET + 4;
pub const FOLD_TARGET_OFFSET: usize = FOLD_VOLUME_ID_OFFSET + 16;
/// Bytes of the fold intent file.
pub const FOLD_LEN: usize = FOLD_TARGET_OFFSET + 8;

/// Bits of a journal location that hold the byte position in the segment
/// (32; it was 40 in index checkpoints `RWIX` and base maps version 2,
/// which left 24 bits, 16.7 million segments, for the segment number).
pub const LOCATION_SEGMENT_SHIFT: u32 = 32;
/// Largest byte position a location can hold.
pub const LOCATION_POSITION_MASK: u64 = (1 << LOCATION_SEGMENT_SHIFT) - 1;
/// Largest segment number a location can hold: 4.29 billion segments, so
/// even at the smallest segment size (1 MiB) a volume can write 4 PiB.
pub const MAX_SEGMENT_NUMBER: u64 = u64::MAX >> LOCATION_SEGMENT_SHIFT;
/// Largest segment size: every position in a segment, a record bigger than
/// the segment size included, must fit a location.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 31;
/// [`LOCATION_SEGMENT_SHIFT`] of base maps version 2.
const LOCATION_SEGMENT_SHIFT_V2: u32 = 40;

const _: () = assert!(SEGMENT_HEADER_LEN == 64);
const _: () = assert!(RECORD_HEADER_LEN == 96);
const _: () = assert!(VOLUME_FIXED_LEN == 80);
const _: () = assert!(INDEX_CHUNK_HEADER_LEN == 40);
const _: () = assert!(INDEX_ENTRY_LEN == 40);
const _: () = assert!(BASE_MAP_FIXED_LEN == 72);
const _: () = assert!(BASE_RUN_LEN == 32 && BASE_RUN_V1_LEN == 24);
const _: () = assert!(FOLD_LEN == 40);
// A segment may pass its size by one record (MAX_RECORD_PAYLOAD and a header).
const _: () = assert!(
    MAX_SEGMENT_BYTES + (MAX_RECORD_PAYLOAD + RECORD_HEADER_LEN) as u64 + RECORD_ALIGN
        <= LOCATION_POSITION_MASK
);
const _: () = assert!(MAX_SEGMENT_NUMBER == u32::MAX as u64);
const _: () = assert!((RECORD_HEADER_LEN as u64).is_multiple_of(RECORD_ALIGN));
const _: () = assert!((SEGMENT_HEADER_LEN as u64).is_multiple_of(RECORD_ALIGN));

/// Builds a journal location from a segment number and a byte position.
pub fn location(segment: u64, position: u64) -> u64 {
    debug_assert!(position <= LOCATION_POSITION_MASK);
    debug_assert!(segment <= MAX_SEGMENT_NUMBER);
    (segment << LOCATION_SEGMENT_SHIFT) | position
}

/// Splits a journal location into (segment number, byte position).
pub fn split_location(location: u64) -> (u64, u64) {
    (location >> LOCATION_SEGMENT_SHIFT, location & LOCATION_POSITION_MASK)
}

/// Bytes a record with this payload occupies in a segment, padding included.
pub fn record_span(payload_length: usize) -> u64 {
    (RECORD_HEADER_LEN as u64 + payload_length as u64).next_multiple_of(RECORD_ALIGN)
}

/// What a journal record does. Every kind takes one seq, so every seq is a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RecordKind {
    /// Payload = the data written at `offset`.
    Write = 1,
    /// `length` bytes at `offset` read as zeros afterwards (allocated zeros).
    Zeroes = 2,
    /// `length` bytes at `offset` are discarded; they read as zeros (a hole).
    Trim = 3,
    /// The image becomes the image at seq `offset`; `length` = head before.
    Rollback = 4,
    /// The size becomes `offset`; `length` = the size before. Shrinking zeroes the cut tail.
    Resize = 5,
    /// Payload = a snapshot name that now pins this record's seq.
    Snapshot = 6,
    /// Payload = a snapshot name that is no longer pinned.
    SnapshotDelete = 7,
}

impl RecordKind {
    /// Parses a kind byte; `None` for anything unknown.
    pub fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Write,
            2 => Self::Zeroes,
            3 => Self::Trim,
            4 => Self::Rollback,
            5 => Self::Resize,
            6 => Self::Snapshot,
            7 => Self::SnapshotDelete,
            _ => return None,
        })
    }

    /// Whether the record's payload is volume data.
    pub fn carries_data(self) -> bool {
        self == Self::Write
    }
}

/// A decoded record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub seq: u64,
    pub time: i64,
    pub offset: u64,
    pub length: u64,
    pub payload_length: u32,
    pub kind: RecordKind,
    pub flags: u8,
    pub payload_crc: u32,
    pub chain: u32,
    pub blake3: [u8; 32],
}

/// Why bytes are not a valid record header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFault {
    Short,
    Magic,
    Checksum,
    Kind,
    Length,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut raw = [0; 4];
    raw.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(raw)
}
fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut raw = [0; 8];
    raw.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(raw)
}
fn u128_at(bytes: &[u8], at: usize) -> u128 {
    let mut raw = [0; 16];
    raw.copy_from_slice(&bytes[at..at + 16]);
    u128::from_le_bytes(raw)
}
fn put(bytes: &mut [u8], at: usize, value: &[u8]) {
    bytes[at..at + value.len()].copy_from_slice(value);
}

impl RecordHeader {
    /// A header of `kind` with zero seq, time, checksums and chain, to be
    /// filled by the journal.
    pub fn new(kind: RecordKind, offset: u64, length: u64) -> Self {
        Self {
            seq: 0,
            time: 0,
            offset,
            length,
            payload_length: 0,
            kind,
            flags: 0,
            payload_crc: 0,
            chain: 0,
            blake3: [0; 32],
        }
    }

    /// Encodes the header into `out` (exactly RECORD_HEADER_LEN bytes) and
    /// returns its crc, which the next record carries as its chain.
    pub fn encode(&self, out: &mut [u8]) -> u32 {
        let out = &mut out[..RECORD_HEADER_LEN];
        put(out, RECORD_MAGIC_OFFSET, &RECORD_MAGIC.to_le_bytes());
        put(out, RECORD_SEQ_OFFSET, &self.seq.to_le_bytes());
        put(out, RECORD_TIME_OFFSET, &self.time.to_le_bytes());
        put(out, RECORD_OFFSET_OFFSET, &self.offset.to_le_bytes());
        put(out, RECORD_LENGTH_OFFSET, &self.length.to_le_bytes());
        put(out, RECORD_PAYLOAD_LENGTH_OFFSET, &self.payload_length.to_le_bytes());
        out[RECORD_KIND_OFFSET] = self.kind as u8;
        out[RECORD_FLAGS_OFFSET] = self.flags;
        put(out, RECORD_RESERVED_OFFSET, &[0; 2]);
        put(out, RECORD_PAYLOAD_CRC_OFFSET, &self.payload_crc.to_le_bytes());
        put(out, RECORD_CHAIN_OFFSET, &self.chain.to_le_bytes());
        put(out, RECORD_BLAKE3_OFFSET, &self.blake3);
        put(out, RECORD_RESERVED2_OFFSET, &[0; 8]);
        let crc = crc32c::crc32c(&out[RECORD_SEQ_OFFSET..]);
        put(out, RECORD_CRC_OFFSET, &crc.to_le_bytes());
        crc
    }

    /// Decodes and checks a header; returns it with its crc. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<(Self, u32), HeaderFault> {
        if bytes.len() < RECORD_HEADER_LEN {
            return Err(HeaderFault::Short);
        }
        let bytes = &bytes[..RECORD_HEADER_LEN];
        if u32_at(bytes, RECORD_MAGIC_OFFSET) != RECORD_MAGIC {
            return Err(HeaderFault::Magic);
        }
        let crc = u32_at(bytes, RECORD_CRC_OFFSET);
        if crc32c::crc32c(&bytes[RECORD_SEQ_OFFSET..]) != crc {
            return Err(HeaderFault::Checksum);
        }
        let kind = RecordKind::from_u8(bytes[RECORD_KIND_OFFSET]).ok_or(HeaderFault::Kind)?;
        let payload_length = u32_at(bytes, RECORD_PAYLOAD_LENGTH_OFFSET);
        if payload_length as usize > MAX_RECORD_PAYLOAD {
            return Err(HeaderFault::Length);
        }
        let mut blake3 = [0; 32];
        blake3.copy_from_slice(&bytes[RECORD_BLAKE3_OFFSET..RECORD_BLAKE3_OFFSET + 32]);
        let header = Self {
            seq: u64_at(bytes, RECORD_SEQ_OFFSET),
            time: u64_at(bytes, RECORD_TIME_OFFSET) as i64,
            offset: u64_at(bytes, RECORD_OFFSET_OFFSET),
            length: u64_at(bytes, RECORD_LENGTH_OFFSET),
            payload_length,
            kind,
            flags: bytes[RECORD_FLAGS_OFFSET],
            payload_crc: u32_at(bytes, RECORD_PAYLOAD_CRC_OFFSET),
            chain: u32_at(bytes, RECORD_CHAIN_OFFSET),
            blake3,
        };
        if kind.carries_data() && u64::from(payload_length) != header.length {
            return Err(HeaderFault::Length);
        }
        Ok((header, crc))
    }
}

/// A decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub volume_id: u128,
    pub number: u64,
    pub first_seq: u64,
    pub chain: u32,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut out = [0; SEGMENT_HEADER_LEN];
        put(&mut out, SEGMENT_MAGIC_OFFSET, &SEGMENT_MAGIC);
        put(&mut out, SEGMENT_VERSION_OFFSET, &FORMAT_VERSION.to_le_bytes());
        put(&mut out, SEGMENT_VOLUME_ID_OFFSET, &self.volume_id.to_le_bytes());
        put(&mut out, SEGMENT_NUMBER_OFFSET, &self.number.to_le_bytes());
        put(&mut out, SEGMENT_FIRST_SEQ_OFFSET, &self.first_seq.to_le_bytes());
        put(&mut out, SEGMENT_CHAIN_OFFSET, &self.chain.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        put(&mut out, SEGMENT_CRC_OFFSET, &crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < SEGMENT_HEADER_LEN {
            return None;
        }
        let mut copy = [0; SEGMENT_HEADER_LEN];
        copy.copy_from_slice(&bytes[..SEGMENT_HEADER_LEN]);
        let crc = u32_at(&copy, SEGMENT_CRC_OFFSET);
        put(&mut copy, SEGMENT_CRC_OFFSET, &[0; 4]);
        if copy[..8] != SEGMENT_MAGIC
            || u32_at(&copy, SEGMENT_VERSION_OFFSET) != FORMAT_VERSION
            || crc32c::crc32c(&copy) != crc
        {
            return None;
        }
        Some(Self {
            volume_id: u128_at(&copy, SEGMENT_VOLUME_ID_OFFSET),
            number: u64_at(&copy, SEGMENT_NUMBER_OFFSET),
            first_seq: u64_at(&copy, SEGMENT_FIRST_SEQ_OFFSET),
            chain: u32_at(&copy, SEGMENT_CHAIN_OFFSET),
        })
    }
}

/// The volume superblock: written once when the volume is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub volume_id: u128,
    pub created: i64,
    pub initial_size: u64,
    pub parent_id: u128,
    pub parent_seq: u64,
    pub name: String,
    pub parent_name: String,
}

impl Superblock {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0; VOLUME_FIXED_LEN + self.name.len() + self.parent_name.len()];
        put(&mut out, VOLUME_MAGIC_OFFSET, &VOLUME_MAGIC);
        put(&mut out, VOLUME_VERSION_OFFSET, &FORMAT_VERSION.to_le_bytes());
        put(&mut out, VOLUME_ID_OFFSET, &self.volume_id.to_le_bytes());
        put(&mut out, VOLUME_CREATED_OFFSET, &self.created.to_le_bytes());
        put(&mut out, VOLUME_SIZE_OFFSET, &self.initial_size.to_le_bytes());
        put(&mut out, VOLUME_PARENT_ID_OFFSET, &self.parent_id.to_le_bytes());
        put(&mut out, VOLUME_PARENT_SEQ_OFFSET, &self.parent_seq.to_le_bytes());
        put(&mut out, VOLUME_NAME_LENGTH_OFFSET, &(self.name.len() as u16).to_le_bytes());
        put(&mut out, VOLUME_PARENT_NAME_LENGTH_OFFSET, &(self.parent_name.len() as u16).to_le_bytes());
        put(&mut out, VOLUME_FIXED_LEN, self.name.as_bytes());
        put(&mut out, VOLUME_FIXED_LEN + self.name.len(), self.parent_name.as_bytes());
        let crc = crc32c::crc32c(&out);
        put(&mut out, VOLUME_CRC_OFFSET, &crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < VOLUME_FIXED_LEN {
            return None;
        }
        let name_length = u16_at(bytes, VOLUME_NAME_LENGTH_OFFSET) as usize;
        let parent_name_length = u16_at(bytes, VOLUME_PARENT_NAME_LENGTH_OFFSET) as usize;
        let total = VOLUME_FIXED_LEN + name_length + parent_name_length;
        if bytes.len() < total {
            return None;
        }
        let mut copy = bytes[..total].to_vec();
        let crc = u32_at(&copy, VOLUME_CRC_OFFSET);
        put(&mut copy, VOLUME_CRC_OFFSET, &[0; 4]);
        if copy[..8] != VOLUME_MAGIC
            || u32_at(&copy, VOLUME_VERSION_OFFSET) != FORMAT_VERSION
            || crc32c::crc32c(&copy) != crc
        {
            return None;
        }
        let name =
            std::str::from_utf8(&copy[VOLUME_FIXED_LEN..VOLUME_FIXED_LEN + name_length]).ok()?.to_owned();
        let parent_name = std::str::from_utf8(&copy[VOLUME_FIXED_LEN + name_length..total]).ok()?.to_owned();
        Some(Self {
            volume_id: u128_at(&copy, VOLUME_ID_OFFSET),
            created: u64_at(&copy, VOLUME_CREATED_OFFSET) as i64,
            initial_size: u64_at(&copy, VOLUME_SIZE_OFFSET),
            parent_id: u128_at(&copy, VOLUME_PARENT_ID_OFFSET),
            parent_seq: u64_at(&copy, VOLUME_PARENT_SEQ_OFFSET),
            name,
            parent_name,
        })
    }
}

/// The `base-map` file: what retention folded, as of `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseMapFile {
    pub volume_id: u128,
    pub seq: u64,
    pub time: i64,
    pub size: u64,
    pub map: crate::base::BaseMap,
    /// Snapshots pinning `seq` itself.
    pub snapshots: Vec<String>,
}

impl BaseMapFile {
    pub fn encode(&self) -> Vec<u8> {
        let names: usize = self.snapshots.iter().map(|name| 1 + name.len()).sum();
        let mut out = vec![0; BASE_MAP_FIXED_LEN + self.map.len() * BASE_RUN_LEN + names];
        put(&mut out, BASE_MAP_MAGIC_OFFSET, &BASE_MAP_MAGIC);
        put(&mut out, BASE_MAP_VERSION_OFFSET, &BASE_MAP_VERSION.to_le_bytes());
        put(&mut out, BASE_MAP_VOLUME_ID_OFFSET, &self.volume_id.to_le_bytes());
        put(&mut out, BASE_MAP_SEQ_OFFSET, &self.seq.to_le_bytes());
        put(&mut out, BASE_MAP_TIME_OFFSET, &self.time.to_le_bytes());
        put(&mut out, BASE_MAP_SIZE_OFFSET, &self.size.to_le_bytes());
        put(&mut out, BASE_MAP_RUN_COUNT_OFFSET, &(self.map.len() as u64).to_le_bytes());
        put(&mut out, BASE_MAP_SNAPSHOT_COUNT_OFFSET, &(self.snapshots.len() as u32).to_le_bytes());
        let mut at = BASE_MAP_FIXED_LEN;
        for run in self.map.iter() {
            put(&mut out, at + BASE_RUN_START_OFFSET, &run.start.to_le_bytes());
            put(&mut out, at + BASE_RUN_END_OFFSET, &run.end.to_le_bytes());
            out[at + BASE_RUN_KIND_OFFSET] = run.kind as u8;
            put(&mut out, at + BASE_RUN_LOCATION_OFFSET, &run.location.to_le_bytes());
            at += BASE_RUN_LEN;
        }
        for name in &self.snapshots {
            debug_assert!(name.len() <= MAX_SNAPSHOT_NAME);
            out[at] = name.len() as u8;
            put(&mut out, at + 1, name.as_bytes());
            at += 1 + name.len();
        }
        let crc = crc32c::crc32c(&out);
        put(&mut out, BASE_MAP_CRC_OFFSET, &crc.to_le_bytes());
        out
    }

    /// Decodes and checks the whole file; `None` if anything is off. Never panics.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < BASE_MAP_FIXED_LEN || bytes[..8] != BASE_MAP_MAGIC {
            return None;
        }
        let version = u32_at(bytes, BASE_MAP_VERSION_OFFSET);
        let run_len = match version {
            1 => BASE_RUN_V1_LEN,
            2 | BASE_MAP_VERSION => BASE_RUN_LEN,
            _ => return None,
        };
        let mut crc = crc32c::crc32c(&bytes[..BASE_MAP_CRC_OFFSET]);
        crc = crc32c::crc32c_append(crc, &[0; 4]);
        crc = crc32c::crc32c_append(crc, &bytes[BASE_MAP_CRC_OFFSET + 4..]);
        if crc != u32_at(bytes, BASE_MAP_CRC_OFFSET) {
            return None;
        }
        let runs = usize::try_from(u64_at(bytes, BASE_MAP_RUN_COUNT_OFFSET)).ok()?;
        let mut at = BASE_MAP_FIXED_LEN;
        let mut map = crate::base::BaseMap::new();
        let mut last_end = 0;
        for _ in 0..runs {
            let run = bytes.get(at..at.checked_add(run_len)?)?;
            let (start, end) = (u64_at(run, BASE_RUN_START_OFFSET), u64_at(run, BASE_RUN_END_OFFSET));
            let kind = crate::base::BaseKind::from_u8(run[BASE_RUN_KIND_OFFSET])?;
            let mut location =
                if run_len == BASE_RUN_LEN { u64_at(run, BASE_RUN_LOCATION_OFFSET) } else { 0 };
            if version == 2 && location != 0 {
                // Version 2's layout: 24 bits of segment, 40 of position.
                let (number, position) = (
                    location >> LOCATION_SEGMENT_SHIFT_V2,
                    location & ((1 << LOCATION_SEGMENT_SHIFT_V2) - 1),
                );
                if position > LOCATION_POSITION_MASK {
                    return None;
                }
                location = self::location(number, position);
            }
            if start < last_end || start >= end {
                return None;
            }
            if kind == crate::base::BaseKind::Journal {
                // Within one segment, past its header: a damaged map must
                // not name bytes of another segment.
                let (_, position) = split_location(location);
                let last = position.checked_add(end - start)?;
                if position < SEGMENT_HEADER_LEN as u64 || last > LOCATION_POSITION_MASK + 1 {
                    return None;
                }
                map.set_journal(start, end, location);
            } else {
                if location != 0 {
                    return None;
                }
                map.set(start, end, kind);
            }
            last_end = end;
            at += run_len;
        }
        let mut snapshots = Vec::new();
        for _ in 0..u32_at(bytes, BASE_MAP_SNAPSHOT_COUNT_OFFSET) {
            let length = *bytes.get(at)? as usize;
            let name = std::str::from_utf8(bytes.get(at + 1..at + 1 + length)?).ok()?;
            snapshots.push(name.to_owned());
            at += 1 + length;
        }
        if at != bytes.len() {
            return None;
        }
        let seq = u64_at(bytes, BASE_MAP_SEQ_OFFSET);
        if seq > crate::index::MAX_SEQ {
            return None;
        }
        Some(Self {
            volume_id: u128_at(bytes, BASE_MAP_VOLUME_ID_OFFSET),
            seq,
            time: u64_at(bytes, BASE_MAP_TIME_OFFSET) as i64,
            size: u64_at(bytes, BASE_MAP_SIZE_OFFSET),
            map,
            snapshots,
        })
    }
}

/// The `fold` file: a fold to `target` has begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FoldIntent {
    pub volume_id: u128,
    pub target: u64,
}

impl FoldIntent {
    pub fn encode(&self) -> [u8; FOLD_LEN] {
        let mut out = [0; FOLD_LEN];
        put(&mut out, FOLD_MAGIC_OFFSET, &FOLD_MAGIC);
        put(&mut out, FOLD_VERSION_OFFSET, &FORMAT_VERSION.to_le_bytes());
        put(&mut out, FOLD_VOLUME_ID_OFFSET, &self.volume_id.to_le_bytes());
        put(&mut out, FOLD_TARGET_OFFSET, &self.target.to_le_bytes());
        let crc = crc32c::crc32c(&out);
        put(&mut out, FOLD_CRC_OFFSET, &crc.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != FOLD_LEN {
            return None;
        }
        let mut copy = [0; FOLD_LEN];
        copy.copy_from_slice(bytes);
        let crc = u32_at(&copy, FOLD_CRC_OFFSET);
        put(&mut copy, FOLD_CRC_OFFSET, &[0; 4]);
        if copy[..8] != FOLD_MAGIC
            || u32_at(&copy, FOLD_VERSION_OFFSET) != FORMAT_VERSION
            || crc32c::crc32c(&copy) != crc
        {
            return None;
        }
        Some(Self {
            volume_id: u128_at(&copy, FOLD_VOLUME_ID_OFFSET),
            target: u64_at(&copy, FOLD_TARGET_OFFSET),
        })
    }
}

/// One entry of an index checkpoint chunk: everything the in-memory index
/// keeps about a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub length: u64,
    pub location: u64,
    pub time: i64,
    pub payload_length: u32,
    pub kind: RecordKind,
}

impl IndexEntry {
    pub fn encode(&self, out: &mut [u8]) {
        let out = &mut out[..INDEX_ENTRY_LEN];
        put(out, INDEX_ENTRY_OFFSET_OFFSET, &self.offset.to_le_bytes());
        put(out, INDEX_ENTRY_LENGTH_OFFSET, &self.length.to_le_bytes());
        put(out, INDEX_ENTRY_LOCATION_OFFSET, &self.location.to_le_bytes());
        put(out, INDEX_ENTRY_TIME_OFFSET, &self.time.to_le_bytes());
        put(out, INDEX_ENTRY_PAYLOAD_LENGTH_OFFSET, &self.payload_length.to_le_bytes());
        out[INDEX_ENTRY_KIND_OFFSET] = self.kind as u8;
        put(out, INDEX_ENTRY_KIND_OFFSET + 1, &[0; 3]);
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < INDEX_ENTRY_LEN {
            return None;
        }
        Some(Self {
            offset: u64_at(bytes, INDEX_ENTRY_OFFSET_OFFSET),
            length: u64_at(bytes, INDEX_ENTRY_LENGTH_OFFSET),
            location: u64_at(bytes, INDEX_ENTRY_LOCATION_OFFSET),
            time: u64_at(bytes, INDEX_ENTRY_TIME_OFFSET) as i64,
            payload_length: u32_at(bytes, INDEX_ENTRY_PAYLOAD_LENGTH_OFFSET),
            kind: RecordKind::from_u8(bytes[INDEX_ENTRY_KIND_OFFSET])?,
        })
    }
}

/// A decoded index chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexChunkHeader {
    pub first_seq: u64,
    pub count: u32,
    pub chain: u32,
    pub end_location: u64,
    pub last_location: u64,
}

impl IndexChunkHeader {
    /// Writes the header into `chunk[..INDEX_CHUNK_HEADER_LEN]`, with a crc over
    /// the header and the entries that follow it in `chunk`.
    pub fn seal(&self, chunk: &mut [u8]) {
        put(chunk, INDEX_MAGIC_OFFSET, &INDEX_MAGIC.to_le_bytes());
        put(chunk, INDEX_FIRST_SEQ_OFFSET, &self.first_seq.to_le_bytes());
        put(chunk, INDEX_COUNT_OFFSET, &self.count.to_le_bytes());
        put(chunk, INDEX_CHAIN_OFFSET, &self.chain.to_le_bytes());
        put(chunk, INDEX_END_LOCATION_OFFSET, &self.end_location.to_le_bytes());
        put(chunk, INDEX_LAST_LOCATION_OFFSET, &self.last_location.to_le_bytes());
        let crc = crc32c::crc32c(&chunk[INDEX_FIRST_SEQ_OFFSET..]);
        put(chunk, INDEX_CRC_OFFSET, &crc.to_le_bytes());
    }

    /// Decodes a header; the crc is checked separately by [`Self::check`].
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < INDEX_CHUNK_HEADER_LEN || u32_at(bytes, INDEX_MAGIC_OFFSET) != INDEX_MAGIC {
            return None;
        }
        let count = u32_at(bytes, INDEX_COUNT_OFFSET);
        if count == 0 || count as usize > INDEX_CHUNK_MAX_ENTRIES {
            return None;
        }
        Some(Self {
            first_seq: u64_at(bytes, INDEX_FIRST_SEQ_OFFSET),
            count,
            chain: u32_at(bytes, INDEX_CHAIN_OFFSET),
            end_location: u64_at(bytes, INDEX_END_LOCATION_OFFSET),
            last_location: u64_at(bytes, INDEX_LAST_LOCATION_OFFSET),
        })
    }

    /// Bytes of the whole chunk, header included.
    pub fn chunk_len(&self) -> usize {
        INDEX_CHUNK_HEADER_LEN + self.count as usize * INDEX_ENTRY_LEN
    }

    /// Whether `chunk` (header and entries) matches its crc.
    pub fn check(chunk: &[u8]) -> bool {
        chunk.len() >= INDEX_CHUNK_HEADER_LEN
            && crc32c::crc32c(&chunk[INDEX_FIRST_SEQ_OFFSET..]) == u32_at(chunk, INDEX_CRC_OFFSET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header() -> RecordHeader {
        RecordHeader {
            seq: 7,
            time: 1_700_000_000_123_456_789,
            offset: 4096,
            length: 11,
            payload_length: 11,
            kind: RecordKind::Write,
            flags: FLAG_BLAKE3,
            payload_crc: crc32c::crc32c(b"hello world"),
            chain: 0xdead_beef,
            blake3: *blake3::hash(b"hello world").as_bytes(),
        }
    }

    /// Encoding then decoding a record header gives back every field and the crc.
    #[test]
    fn record_header_round_trips() {
        let mut bytes = [0; RECORD_HEADER_LEN];
        let crc = header().encode(&mut bytes);
        assert_eq!(RecordHeader::decode(&bytes), Ok((header(), crc)));
    }

    /// Flipping any single bit of an encoded header makes it invalid.
    #[test]
    fn record_header_detects_every_bit_flip() {
        let mut bytes = [0; RECORD_HEADER_LEN];
        header().encode(&mut bytes);
        for bit in 0..RECORD_HEADER_LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(RecordHeader::decode(&flipped).is_err(), "bit {bit}");
        }
    }

    /// Segment headers and superblocks round-trip and reject a torn copy.
    #[test]
    fn segment_header_and_superblock_round_trip() {
        let segment = SegmentHeader { volume_id: 99, number: 3, first_seq: 1000, chain: 5 };
        let bytes = segment.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Some(segment));
        let mut torn = bytes;
        torn[40] ^= 1;
        assert_eq!(SegmentHeader::decode(&torn), None);
        let superblock = Superblock {
            volume_id: 1 << 100,
            created: 5,
            initial_size: 1 << 30,
            parent_id: 3,
            parent_seq: 42,
            name: "clone-1".into(),
            parent_name: "default".into(),
        };
        let bytes = superblock.encode();
        assert_eq!(Superblock::decode(&bytes), Some(superblock));
        assert_eq!(Superblock::decode(&bytes[..bytes.len() - 1]), None);
    }

    /// The base map and fold intent files round-trip and reject any torn or
    /// flipped copy.
    #[test]
    fn base_map_and_fold_intent_round_trip() {
        let mut map = crate::base::BaseMap::new();
        map.set(0, 4096, crate::base::BaseKind::Data);
        map.set(8192, 9000, crate::base::BaseKind::Hole);
        map.set(9000, 10_000, crate::base::BaseKind::Zero);
        map.set_journal(20_000, 24_096, location(3, 4096));
        map.set_journal(24_096, 30_000, location(9, 64));
        let file = BaseMapFile {
            volume_id: 7,
            seq: 99,
            time: 1_800_000_000_000_000_000,
            size: 1 << 20,
            map,
            snapshots: vec!["clean".into(), "b".into()],
        };
        let bytes = file.encode();
        assert_eq!(BaseMapFile::decode(&bytes), Some(file));
        for at in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[at] ^= 0x10;
            assert_eq!(BaseMapFile::decode(&flipped), None, "byte {at}");
        }
        assert_eq!(BaseMapFile::decode(&bytes[..bytes.len() - 1]), None);
        let intent = FoldIntent { volume_id: 7, target: 1234 };
        let bytes = intent.encode();
        assert_eq!(FoldIntent::decode(&bytes), Some(intent));
        let mut flipped = bytes;
        flipped[33] ^= 1;
        assert_eq!(FoldIntent::decode(&flipped), None);
    }

    /// A version 1 base map (runs without a location, written before base
    /// data could stay in the journal) still decodes.
    #[test]
    fn version_1_base_map_decodes() {
        let mut map = crate::base::BaseMap::new();
        map.set(0, 4096, crate::base::BaseKind::Data);
        map.set(8192, 9000, crate::base::BaseKind::Hole);
        let file =
            BaseMapFile { volume_id: 7, seq: 5, time: 9, size: 1 << 20, map, snapshots: vec!["s".into()] };
        let current = file.encode();
        let mut v1 = current[..BASE_MAP_FIXED_LEN].to_vec();
        for run in current[BASE_MAP_FIXED_LEN..BASE_MAP_FIXED_LEN + 2 * BASE_RUN_LEN].chunks(BASE_RUN_LEN) {
            v1.extend_from_slice(&run[..BASE_RUN_V1_LEN]);
        }
        v1.extend_from_slice(&current[BASE_MAP_FIXED_LEN + 2 * BASE_RUN_LEN..]);
        put(&mut v1, BASE_MAP_VERSION_OFFSET, &1u32.to_le_bytes());
        put(&mut v1, BASE_MAP_CRC_OFFSET, &[0; 4]);
        let crc = crc32c::crc32c(&v1);
        put(&mut v1, BASE_MAP_CRC_OFFSET, &crc.to_le_bytes());
        assert_eq!(BaseMapFile::decode(&v1), Some(file));
    }

    /// A version 2 base map (locations with 24 bits of segment number and
    /// 40 of position) decodes into today's locations; one naming a position
    /// no segment can reach is refused.
    #[test]
    fn version_2_base_map_decodes_into_current_locations() {
        let mut map = crate::base::BaseMap::new();
        map.set(0, 4096, crate::base::BaseKind::Data);
        map.set_journal(4096, 12288, location(0xab_cdef, 200));
        map.set_journal(12288, 16384, location(3, 64 + (1 << 31)));
        let file = BaseMapFile { volume_id: 7, seq: 5, time: 9, size: 1 << 20, map, snapshots: vec![] };
        let mut v2 = file.encode();
        let seal = |bytes: &mut Vec<u8>| {
            put(bytes, BASE_MAP_VERSION_OFFSET, &2u32.to_le_bytes());
            put(bytes, BASE_MAP_CRC_OFFSET, &[0; 4]);
            let crc = crc32c::crc32c(bytes);
            put(bytes, BASE_MAP_CRC_OFFSET, &crc.to_le_bytes());
        };
        let run_location = |run: usize| BASE_MAP_FIXED_LEN + run * BASE_RUN_LEN + BASE_RUN_LOCATION_OFFSET;
        put(&mut v2, run_location(1), &((0xab_cdef_u64 << 40) | 200).to_le_bytes());
        put(&mut v2, run_location(2), &((3u64 << 40) | (64 + (1 << 31))).to_le_bytes());
        seal(&mut v2);
        assert_eq!(BaseMapFile::decode(&v2), Some(file));
        // Read with today's layout it would have named other segments.
        assert_ne!(split_location((0xab_cdef_u64 << 40) | 200).0, 0xab_cdef);
        put(&mut v2, run_location(2), &((3u64 << 40) | (64 + (1 << 32))).to_le_bytes());
        seal(&mut v2);
        assert_eq!(BaseMapFile::decode(&v2), None);
    }

    /// A base map naming a seq past what the index can hold is refused.
    #[test]
    fn base_map_past_the_last_seq_is_refused() {
        let map = crate::base::BaseMap::new();
        let mut file = BaseMapFile {
            volume_id: 7,
            seq: crate::index::MAX_SEQ,
            time: 9,
            size: 4096,
            map,
            snapshots: vec![],
        };
        assert_eq!(BaseMapFile::decode(&file.encode()), Some(file.clone()));
        file.seq += 1;
        assert_eq!(BaseMapFile::decode(&file.encode()), None);
    }

    /// Location helpers split what they join, up to the largest segment
    /// number and position.
    #[test]
    fn locations_round_trip() {
        let joined = location(12345, LOCATION_POSITION_MASK);
        assert_eq!(split_location(joined), (12345, LOCATION_POSITION_MASK));
        let last = location(MAX_SEGMENT_NUMBER, 64);
        assert_eq!(split_location(last), (MAX_SEGMENT_NUMBER, 64));
    }

    proptest! {
        /// The record parser never panics on arbitrary bytes and accepts only
        /// what re-encodes to the same bytes.
        #[test]
        fn record_parser_accepts_only_canonical_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok((header, crc)) = RecordHeader::decode(&bytes) {
                let mut again = [0; RECORD_HEADER_LEN];
                prop_assert_eq!(header.encode(&mut again), crc);
                prop_assert_eq!(&again[..], &bytes[..RECORD_HEADER_LEN]);
            }
        }

        /// Any header round-trips through encode and decode.
        #[test]
        fn record_header_round_trips_for_any_fields(
            seq in any::<u64>(), time in any::<i64>(), offset in any::<u64>(),
            payload_length in 0u32..=MAX_RECORD_PAYLOAD as u32, kind in 1u8..=7,
            chain in any::<u32>(), payload_crc in any::<u32>(), length in any::<u64>(),
        ) {
            let kind = RecordKind::from_u8(kind).unwrap();
            let length = if kind.carries_data() { u64::from(payload_length) } else { length };
            let header = RecordHeader { seq, time, offset, length, payload_length, kind, flags: 0, payload_crc, chain, blake3: [0; 32] };
            let mut bytes = [0; RECORD_HEADER_LEN];
            let crc = header.encode(&mut bytes);
            prop_assert_eq!(RecordHeader::decode(&bytes), Ok((header, crc)));
        }

        /// The index chunk and entry parsers never panic on arbitrary bytes.
        #[test]
        fn index_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = IndexChunkHeader::decode(&bytes);
            let _ = IndexChunkHeader::check(&bytes);
            let _ = IndexEntry::decode(&bytes);
            let _ = SegmentHeader::decode(&bytes);
            let _ = Superblock::decode(&bytes);
            let _ = BaseMapFile::decode(&bytes);
            let _ = FoldIntent::decode(&bytes);
        }
    }
}
