//! A raw NBD client for tests that must send what real clients never do.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const OPTION_MAGIC: u64 = 0x4948_4156_454f_5054;
pub const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_MAGIC: u32 = 0x668e_33ef;

pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

pub const REP_ACK: u32 = 1;
pub const REP_INFO: u32 = 3;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;

pub const EPERM: u32 = 1;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;

/// An option reply: type and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionReply {
    pub kind: u32,
    pub data: Vec<u8>,
}

/// A connection that has read the greeting and sent the client flags.
#[derive(Debug)]
pub struct RawClient {
    pub stream: TcpStream,
}

impl RawClient {
    /// Connects, reads the 18-byte greeting, sends fixed-newstyle + no-zeroes.
    pub fn connect(addr: SocketAddr) -> io::Result<RawClient> {
        let mut client = RawClient::connect_bare(addr)?;
        let mut greeting = [0u8; 18];
        client.stream.read_exact(&mut greeting)?;
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        client.stream.write_all(&3u32.to_be_bytes())?;
        Ok(client)
    }

    /// Connects without reading or sending anything.
    pub fn connect_bare(addr: SocketAddr) -> io::Result<RawClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        stream.set_write_timeout(Some(Duration::from_secs(15)))?;
        Ok(RawClient { stream })
    }

    /// Sends an option header with a declared length and the given data
    /// (which may be shorter or longer than declared).
    pub fn send_option(&mut self, option: u32, declared: u32, data: &[u8]) -> io::Result<()> {
        let mut message = Vec::with_capacity(16 + data.len());
        message.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
        message.extend_from_slice(&option.to_be_bytes());
        message.extend_from_slice(&declared.to_be_bytes());
        message.extend_from_slice(data);
        self.stream.write_all(&message)
    }

    /// Reads one option reply.
    pub fn read_reply(&mut self) -> io::Result<(u32, OptionReply)> {
        let mut header = [0u8; 20];
        self.stream.read_exact(&mut header)?;
        let magic = u64::from_be_bytes(header[0..8].try_into().expect("8"));
        if magic != REPLY_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad reply magic"));
        }
        let option = u32::from_be_bytes(header[8..12].try_into().expect("4"));
        let kind = u32::from_be_bytes(header[12..16].try_into().expect("4"));
        let length = u32::from_be_bytes(header[16..20].try_into().expect("4")) as usize;
        assert!(length <= 1 << 20, "option reply of {length} bytes");
        let mut data = vec![0u8; length];
        self.stream.read_exact(&mut data)?;
        Ok((option, OptionReply { kind, data }))
    }

    /// Sends an option and collects replies up to the final one (ACK or error).
    pub fn option(&mut self, option: u32, data: &[u8]) -> io::Result<Vec<OptionReply>> {
        self.send_option(option, data.len() as u32, data)?;
        self.replies()
    }

    /// Reads replies up to and including the final one.
    pub fn replies(&mut self) -> io::Result<Vec<OptionReply>> {
        let mut replies = Vec::new();
        loop {
            let (_, reply) = self.read_reply()?;
            let last = reply.kind == REP_ACK || reply.kind & (1 << 31) != 0;
            replies.push(reply);
            if last {
                return Ok(replies);
            }
        }
    }

    /// NBD_OPT_GO data for `name` with no information requests.
    pub fn go_data(name: &[u8]) -> Vec<u8> {
        let mut data = Vec::new();
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name);
        data.extend_from_slice(&0u16.to_be_bytes());
        data
    }

    /// Negotiates `name` with GO (simple replies); returns (size, flags).
    pub fn go(&mut self, name: &str) -> io::Result<(u64, u16)> {
        let replies = self.option(OPT_GO, &RawClient::go_data(name.as_bytes()))?;
        let last = replies.last().expect("at least one reply");
        if last.kind != REP_ACK {
            return Err(io::Error::other(format!(
                "GO failed: {:#x} {}",
                last.kind,
                String::from_utf8_lossy(&last.data)
            )));
        }
        let info =
            replies.iter().find(|r| r.kind == REP_INFO && r.data[..2] == [0, 0]).expect("NBD_INFO_EXPORT");
        let size = u64::from_be_bytes(info.data[2..10].try_into().expect("8"));
        let flags = u16::from_be_bytes(info.data[10..12].try_into().expect("2"));
        Ok((size, flags))
    }

    /// Sends a request header (and payload, if any).
    pub fn request(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        let mut message = Vec::with_capacity(28 + payload.len());
        message.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        message.extend_from_slice(&flags.to_be_bytes());
        message.extend_from_slice(&kind.to_be_bytes());
        message.extend_from_slice(&cookie.to_be_bytes());
        message.extend_from_slice(&offset.to_be_bytes());
        message.extend_from_slice(&length.to_be_bytes());
        message.extend_from_slice(payload);
        self.stream.write_all(&message)
    }

    /// Reads a simple reply header: (error, cookie).
    pub fn simple_reply(&mut self) -> io::Result<(u32, u64)> {
        let mut header = [0u8; 16];
        self.stream.read_exact(&mut header)?;
        let magic = u32::from_be_bytes(header[0..4].try_into().expect("4"));
        if magic != SIMPLE_MAGIC {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("magic {magic:#x}")));
        }
        Ok((
            u32::from_be_bytes(header[4..8].try_into().expect("4")),
            u64::from_be_bytes(header[8..16].try_into().expect("8")),
        ))
    }

    /// Reads exactly `length` bytes.
    pub fn read_bytes(&mut self, length: usize) -> io::Result<Vec<u8>> {
        let mut data = vec![0u8; length];
        self.stream.read_exact(&mut data)?;
        Ok(data)
    }

    /// True if the server closed the connection (EOF or reset) within the
    /// read timeout, having sent nothing more.
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0) | Err(_))
    }
}
