//! The fixed-newstyle handshake as a sans-IO state machine.
//!
//! Bytes from the client go in through [`Handshake::receive`]; bytes for the
//! client accumulate in [`Handshake::transmit`]; whenever the machine needs
//! something only the driver can do (resolve an export name, list exports)
//! or the negotiation ends, [`Handshake::poll_action`] says so. No clock, no
//! socket: the driver enforces the handshake deadline.
//!
//! Every length the client sends is checked before use: option data is
//! bounded by [`HandshakeConfig::max_option_length`] (bigger options are
//! skipped without buffering, up to [`HandshakeConfig::max_discard_length`],
//! then the connection is dropped), strings by [`MAX_STRING`], and the
//! number of options per connection by [`HandshakeConfig::max_options`].

use crate::device::{ExportInfo, Listing, LookupError};
use crate::protocol::{
    BASE_ALLOCATION, INIT_PASSWD, MAX_STRING, OPTION_HEADER_LEN, OPTION_MAGIC, OPTION_REPLY_MAGIC,
    client_flags, handshake_flags, info, option, reply, transmission_flags,
};

/// Context id we hand out for `base:allocation` in SET_META_CONTEXT.
pub const BASE_ALLOCATION_ID: u32 = 1;

/// Largest request the server accepts, in bytes (advertised as the maximum
/// block size). Bigger requests get `EINVAL` (reads, block status) or a
/// disconnect (writes, whose payload cannot be trusted).
pub const MAX_REQUEST_LENGTH: u32 = 32 << 20;

/// Limits of one handshake.
#[derive(Clone, Debug)]
pub struct HandshakeConfig {
    /// Option data longer than this is skipped unread (reply `ERR_TOO_BIG`
    /// or `ERR_UNSUP`).
    pub max_option_length: u32,
    /// Option data longer than this drops the connection.
    pub max_discard_length: u32,
    /// Options after this many drop the connection.
    pub max_options: u32,
}

impl Default for HandshakeConfig {
    fn default() -> Self {
        HandshakeConfig { max_option_length: 64 << 10, max_discard_length: 16 << 20, max_options: 4096 }
    }
}

/// What the driver must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Resolve this export name and call [`Handshake::export_resolved`].
    Lookup(String),
    /// Call [`Handshake::list_ready`] with the exports to list.
    List,
    /// Write out [`Handshake::transmit`], then start the transmission phase.
    /// The export is the one resolved by the last lookup.
    Transmission(Negotiated),
    /// Write out [`Handshake::transmit`] (it may be empty), then close.
    Close(CloseReason),
}

/// Why the handshake ends the connection.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum CloseReason {
    /// The client sent NBD_OPT_ABORT.
    Aborted,
    /// EXPORT_NAME named an export that does not exist (the protocol has no
    /// way to say so but to hang up).
    UnknownExport(String),
    /// The client broke the protocol; the text says how.
    Protocol(&'static str),
    /// A refusing handshake ([`Handshake::refusing`]) got EXPORT_NAME.
    Refused,
}

/// The outcome of a successful negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub export: ExportInfo,
    /// Transmission flags sent to the client.
    pub flags: u16,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected for this export, under this id.
    pub base_allocation: Option<u32>,
}

#[derive(Debug)]
enum State {
    ClientFlags,
    OptionHeader,
    OptionData { option: u32, length: u32 },
    Discard { option: u32, remaining: u64, too_big: bool },
    Awaiting(Pending),
    Finished,
}

/// An option waiting for the driver.
#[derive(Debug)]
enum Pending {
    Info { option: u32, name: String, requests: Vec<u16> },
    ExportName { name: String },
    MetaContext { option: u32, name: String, queries: Vec<String> },
    List,
}

/// The server side of one handshake.
#[derive(Debug)]
pub struct Handshake {
    config: HandshakeConfig,
    state: State,
    transmit: Vec<u8>,
    actions: Option<Action>,
    fixed_newstyle: bool,
    no_zeroes: bool,
    structured: bool,
    /// Export name and whether `base:allocation` was selected for it.
    meta: Option<(String, bool)>,
    options_seen: u32,
    /// Set by [`Handshake::refusing`]: every option is answered with
    /// `ERR_POLICY` and this message.
    refusal: Option<String>,
}

impl Handshake {
    /// Starts a handshake; the server greeting is already in `transmit`.
    pub fn new(config: HandshakeConfig) -> Handshake {
        let mut transmit = Vec::with_capacity(256);
        transmit.extend_from_slice(&INIT_PASSWD.to_be_bytes());
        transmit.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
        transmit
            .extend_from_slice(&(handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES).to_be_bytes());
        Handshake {
            config,
            state: State::ClientFlags,
            transmit,
            actions: None,
            fixed_newstyle: false,
            no_zeroes: false,
            structured: false,
            meta: None,
            options_seen: 0,
            refusal: None,
        }
    }

    /// A handshake that serves nothing: every option but ABORT is answered
    /// with `ERR_POLICY` and `message` (EXPORT_NAME, which has no error
    /// reply, closes the connection), so that a client the server cannot
    /// take (at its connection limit) shows why instead of "server
    /// disconnected". It never asks the driver for a lookup or a list.
    pub fn refusing(config: HandshakeConfig, message: String) -> Handshake {
        Handshake { refusal: Some(message), ..Handshake::new(config) }
    }

    /// Bytes to send to the client. The driver drains it.
    pub fn transmit(&mut self) -> &mut Vec<u8> {
        &mut self.transmit
    }

    /// The next thing the driver must do, if any. When this returns `None`
    /// the machine wants more input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.take()
    }

    /// Whether the machine is waiting for the driver (lookup or list) or has
    /// finished; input given now would not be consumed.
    pub fn is_blocked(&self) -> bool {
        self.actions.is_some() || matches!(self.state, State::Awaiting(_) | State::Finished)
    }

    /// Consumes as much of `input` as forms complete messages and returns how
    /// many bytes were used. Stops early when an action is pending.
    pub fn receive(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while !self.is_blocked() {
            let rest = &input[used..];
            let step = match self.state {
                State::ClientFlags => self.on_client_flags(rest),
                State::OptionHeader => self.on_option_header(rest),
                State::OptionData { option, length } => self.on_option_data(option, length, rest),
                State::Discard { option, remaining, too_big } => {
                    self.on_discard(option, remaining, too_big, rest)
                }
                State::Awaiting(_) | State::Finished => None,
            };
            match step {
                Some(count) => used += count,
                None => break,
            }
        }
        used
    }

    /// How many more input bytes the machine needs before it can make
    /// progress (a hint for the driver's buffer; at least 1).
    pub fn wanted(&self) -> usize {
        match self.state {
            State::ClientFlags => 4,
            State::OptionHeader => OPTION_HEADER_LEN,
            State::OptionData { length, .. } => length as usize,
            _ => 1,
        }
    }

    /// Answer to [`Action::Lookup`].
    pub fn export_resolved(&mut self, result: Result<ExportInfo, LookupError>) {
        let State::Awaiting(pending) = std::mem::replace(&mut self.state, State::OptionHeader) else {
            return;
        };
        match pending {
            Pending::ExportName { name } => match result {
                Ok(export) => {
                    let negotiated = self.negotiated(&name, export);
                    self.transmit.extend_from_slice(&negotiated.export.size.to_be_bytes());
                    self.transmit.extend_from_slice(&negotiated.flags.to_be_bytes());
                    if !self.no_zeroes {
                        self.transmit.extend_from_slice(&[0u8; 124]);
                    }
                    self.finish(Action::Transmission(negotiated));
                }
                Err(_) => self.finish(Action::Close(CloseReason::UnknownExport(name))),
            },
            Pending::Info { option, name, requests } => match result {
                Ok(export) => {
                    self.send_info(option, &name, &requests, &export);
                    self.reply(option, reply::ACK, &[]);
                    if option == option::GO {
                        let negotiated = self.negotiated(&name, export);
                        self.finish(Action::Transmission(negotiated));
                    }
                }
                Err(error) => self.reply(option, reply::ERR_UNKNOWN, error.message.as_bytes()),
            },
            Pending::MetaContext { option, name, queries } => match result {
                Ok(_) => self.send_meta_contexts(option, name, &queries),
                Err(error) => {
                    if option == option::SET_META_CONTEXT {
                        self.meta = None;
                    }
                    self.reply(option, reply::ERR_UNKNOWN, error.message.as_bytes());
                }
            },
            Pending::List => self.state = State::Awaiting(Pending::List),
        }
    }

    /// Answer to [`Action::List`].
    pub fn list_ready(&mut self, exports: &[Listing]) {
        if !matches!(self.state, State::Awaiting(Pending::List)) {
            return;
        }
        self.state = State::OptionHeader;
        for export in exports {
            let name = truncate(&export.name);
            let description = truncate(&export.description);
            let mut data = Vec::with_capacity(4 + name.len() + description.len());
            data.extend_from_slice(&(name.len() as u32).to_be_bytes());
            data.extend_from_slice(name.as_bytes());
            data.extend_from_slice(description.as_bytes());
            self.reply(option::LIST, reply::SERVER, &data);
        }
        self.reply(option::LIST, reply::ACK, &[]);
    }

    fn finish(&mut self, action: Action) {
        self.state = State::Finished;
        self.actions = Some(action);
    }

    fn negotiated(&self, name: &str, export: ExportInfo) -> Negotiated {
        use transmission_flags as f;
        let mut flags = f::HAS_FLAGS | f::SEND_FLUSH | f::SEND_FUA | f::SEND_CACHE;
        if export.read_only {
            flags |= f::READ_ONLY;
        } else {
            flags |= f::SEND_TRIM | f::SEND_WRITE_ZEROES;
            if export.fast_zero {
                flags |= f::SEND_FAST_ZERO;
            }
        }
        if export.multi_conn {
            flags |= f::CAN_MULTI_CONN;
        }
        if self.structured {
            flags |= f::SEND_DF;
        }
        // A selection made for another export name does not carry over.
        let base_allocation = match &self.meta {
            Some((meta_name, true)) if meta_name == name => Some(BASE_ALLOCATION_ID),
            _ => None,
        };
        Negotiated { export, flags, structured: self.structured, base_allocation }
    }

    fn on_client_flags(&mut self, input: &[u8]) -> Option<usize> {
        let bytes = input.get(..4)?;
        let flags = u32::from_be_bytes(bytes.try_into().expect("4 bytes"));
        if flags & !(client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES) != 0 {
            // The spec: the server MUST drop the connection on unknown flags.
            self.finish(Action::Close(CloseReason::Protocol("unknown client flags")));
            return Some(4);
        }
        self.fixed_newstyle = flags & client_flags::FIXED_NEWSTYLE != 0;
        self.no_zeroes = flags & client_flags::NO_ZEROES != 0;
        self.state = State::OptionHeader;
        Some(4)
    }

    fn on_option_header(&mut self, input: &[u8]) -> Option<usize> {
        let header = input.get(..OPTION_HEADER_LEN)?;
        let magic = u64::from_be_bytes(header[0..8].try_into().expect("8 bytes"));
        let option = u32::from_be_bytes(header[8..12].try_into().expect("4 bytes"));
        let length = u32::from_be_bytes(header[12..16].try_into().expect("4 bytes"));
        if magic != OPTION_MAGIC {
            self.finish(Action::Close(CloseReason::Protocol("bad option magic")));
            return Some(OPTION_HEADER_LEN);
        }
        self.options_seen += 1;
        if self.options_seen > self.config.max_options {
            self.finish(Action::Close(CloseReason::Protocol("too many options")));
            return Some(OPTION_HEADER_LEN);
        }
        if !self.fixed_newstyle && option != option::EXPORT_NAME {
            // Plain newstyle allows nothing else and has no way to reply.
            self.finish(Action::Close(CloseReason::Protocol("option needs fixed newstyle")));
            return Some(OPTION_HEADER_LEN);
        }
        if length > self.config.max_option_length {
            if option == option::EXPORT_NAME || length > self.config.max_discard_length {
                self.finish(Action::Close(CloseReason::Protocol("option data too long")));
            } else {
                let too_big = is_known(option);
                self.state = State::Discard { option, remaining: u64::from(length), too_big };
            }
            return Some(OPTION_HEADER_LEN);
        }
        self.state = State::OptionData { option, length };
        Some(OPTION_HEADER_LEN)
    }

    fn on_discard(&mut self, option: u32, remaining: u64, too_big: bool, input: &[u8]) -> Option<usize> {
        if input.is_empty() {
            return None;
        }
        let take = remaining.min(input.len() as u64);
        let remaining = remaining - take;
        if remaining == 0 {
            self.state = State::OptionHeader;
            if too_big {
                self.reply(option, reply::ERR_TOO_BIG, b"option data too long");
            } else {
                self.reply(option, reply::ERR_UNSUP, b"option not supported");
            }
        } else {
            self.state = State::Discard { option, remaining, too_big };
        }
        Some(take as usize)
    }

    fn on_option_data(&mut self, option: u32, length: u32, input: &[u8]) -> Option<usize> {
        let length = length as usize;
        let data = input.get(..length)?;
        self.state = State::OptionHeader;
        if let Some(message) = self.refusal.take() {
            match option {
                option::ABORT => {
                    self.reply(option, reply::ACK, &[]);
                    self.finish(Action::Close(CloseReason::Aborted));
                }
                option::EXPORT_NAME => self.finish(Action::Close(CloseReason::Refused)),
                _ => self.reply(option, reply::ERR_POLICY, message.as_bytes()),
            }
            self.refusal = Some(message);
            return Some(length);
        }
        match option {
            option::EXPORT_NAME => match std::str::from_utf8(data) {
                Ok(name) => {
                    let name = name.to_owned();
                    self.state = State::Awaiting(Pending::ExportName { name: name.clone() });
                    self.actions = Some(Action::Lookup(name));
                }
                Err(_) => self.finish(Action::Close(CloseReason::Protocol("export name is not UTF-8"))),
            },
            option::ABORT => {
                // The spec asks for an ACK; clients may already be gone.
                self.reply(option, reply::ACK, &[]);
                self.finish(Action::Close(CloseReason::Aborted));
            }
            option::LIST => {
                if length != 0 {
                    self.reply(option, reply::ERR_INVALID, b"NBD_OPT_LIST takes no data");
                } else {
                    self.state = State::Awaiting(Pending::List);
                    self.actions = Some(Action::List);
                }
            }
            option::STRUCTURED_REPLY => {
                if length != 0 {
                    self.reply(option, reply::ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data");
                } else {
                    self.structured = true;
                    self.reply(option, reply::ACK, &[]);
                }
            }
            option::INFO | option::GO => match parse_info(data) {
                Ok((name, requests)) => {
                    self.state = State::Awaiting(Pending::Info { option, name: name.clone(), requests });
                    self.actions = Some(Action::Lookup(name));
                }
                Err(message) => self.reply(option, reply::ERR_INVALID, message.as_bytes()),
            },
            option::LIST_META_CONTEXT | option::SET_META_CONTEXT => {
                if !self.structured {
                    self.reply(option, reply::ERR_INVALID, b"negotiate structured replies first");
                    if option == option::SET_META_CONTEXT {
                        self.meta = None;
                    }
                    return Some(length);
                }
                match parse_meta_context(data) {
                    Ok((name, queries)) => {
                        self.state =
                            State::Awaiting(Pending::MetaContext { option, name: name.clone(), queries });
                        self.actions = Some(Action::Lookup(name));
                    }
                    Err(message) => {
                        if option == option::SET_META_CONTEXT {
                            self.meta = None;
                        }
                        self.reply(option, reply::ERR_INVALID, message.as_bytes());
                    }
                }
            }
            // STARTTLS: we run in NOTLS mode (spec: reply ERR_UNSUP or POLICY).
            // EXTENDED_HEADERS and anything unknown: ERR_UNSUP, keep going.
            _ => self.reply(option, reply::ERR_UNSUP, b"option not supported"),
        }
        Some(length)
    }

    fn send_info(&mut self, option: u32, name: &str, requests: &[u16], export: &ExportInfo) {
        let negotiated = self.negotiated(name, export.clone());
        let mut data = Vec::with_capacity(12);
        data.extend_from_slice(&info::EXPORT.to_be_bytes());
        data.extend_from_slice(&export.size.to_be_bytes());
        data.extend_from_slice(&negotiated.flags.to_be_bytes());
        self.reply(option, reply::INFO, &data);
        if requests.contains(&info::NAME) {
            let canonical = truncate(&export.name);
            let mut data = Vec::with_capacity(2 + canonical.len());
            data.extend_from_slice(&info::NAME.to_be_bytes());
            data.extend_from_slice(canonical.as_bytes());
            self.reply(option, reply::INFO, &data);
        }
        if requests.contains(&info::DESCRIPTION) && !export.description.is_empty() {
            let description = truncate(&export.description);
            let mut data = Vec::with_capacity(2 + description.len());
            data.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
            data.extend_from_slice(description.as_bytes());
            self.reply(option, reply::INFO, &data);
        }
        // Block sizes are advertised whether asked or not (the spec allows
        // it) and never required: minimum 1 byte.
        let mut data = Vec::with_capacity(14);
        data.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        data.extend_from_slice(&1u32.to_be_bytes());
        data.extend_from_slice(&export.preferred_block.clamp(512, MAX_REQUEST_LENGTH).to_be_bytes());
        data.extend_from_slice(&MAX_REQUEST_LENGTH.to_be_bytes());
        self.reply(option, reply::INFO, &data);
    }

    fn send_meta_contexts(&mut self, option: u32, name: String, queries: &[String]) {
        let selected = if option == option::LIST_META_CONTEXT {
            queries.is_empty() || queries.iter().any(|query| query == "base:" || query == BASE_ALLOCATION)
        } else {
            queries.iter().any(|query| query == BASE_ALLOCATION)
        };
        if selected {
            // LIST replies carry id 0 (reserved); SET hands out a real id.
            let id = if option == option::SET_META_CONTEXT { BASE_ALLOCATION_ID } else { 0 };
            let mut data = Vec::with_capacity(4 + BASE_ALLOCATION.len());
            data.extend_from_slice(&id.to_be_bytes());
            data.extend_from_slice(BASE_ALLOCATION.as_bytes());
            self.reply(option, reply::META_CONTEXT, &data);
        }
        if option == option::SET_META_CONTEXT {
            self.meta = Some((name, selected));
        }
        self.reply(option, reply::ACK, &[]);
    }

    /// Queues an option reply. An error's message is cut to the spec's
    /// string limit ([`MAX_MESSAGE`]): a message that echoes a 4096-byte
    /// export name would pass it, and libnbd then shows its own "string
    /// too long" instead of ours.
    fn reply(&mut self, option: u32, kind: u32, data: &[u8]) {
        let (data, cut) = if kind & ERROR_BIT != 0 { cut_message(data) } else { (data, false) };
        let ellipsis: &[u8] = if cut { b"..." } else { b"" };
        self.transmit.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
        self.transmit.extend_from_slice(&option.to_be_bytes());
        self.transmit.extend_from_slice(&kind.to_be_bytes());
        self.transmit.extend_from_slice(&((data.len() + ellipsis.len()) as u32).to_be_bytes());
        self.transmit.extend_from_slice(data);
        self.transmit.extend_from_slice(ellipsis);
    }
}

/// Option reply types with this bit set are errors.
const ERROR_BIT: u32 = 1 << 31;

/// The longest string the spec lets either side send (4096 bytes); an
/// error message is cut to it.
pub const MAX_MESSAGE: usize = 4096;

/// `message`, or its start cut at a UTF-8 character boundary leaving room
/// for "..." when it is longer than [`MAX_MESSAGE`] (then `true`).
fn cut_message(message: &[u8]) -> (&[u8], bool) {
    if message.len() <= MAX_MESSAGE {
        return (message, false);
    }
    let mut end = MAX_MESSAGE - 3;
    // Not inside a character: continuation bytes are 0b10xxxxxx.
    while end > 0 && message[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    (&message[..end], true)
}

fn is_known(option: u32) -> bool {
    matches!(
        option,
        option::EXPORT_NAME
            | option::ABORT
            | option::LIST
            | option::INFO
            | option::GO
            | option::STRUCTURED_REPLY
            | option::LIST_META_CONTEXT
            | option::SET_META_CONTEXT
    )
}

/// Strings we send are cut to the protocol maximum on a char boundary.
fn truncate(text: &str) -> &str {
    if text.len() <= MAX_STRING {
        return text;
    }
    let mut end = MAX_STRING;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A cursor over option data that refuses to read past the end.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], &'static str> {
        if count > self.data.len() {
            return Err("option data shorter than its fields");
        }
        let (head, tail) = self.data.split_at(count);
        self.data = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, &'static str> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }

    fn u32(&mut self) -> Result<u32, &'static str> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn string(&mut self) -> Result<String, &'static str> {
        let length = self.u32()? as usize;
        if length > MAX_STRING {
            return Err("string longer than 4096 bytes");
        }
        let bytes = self.take(length)?;
        let text = std::str::from_utf8(bytes).map_err(|_| "string is not UTF-8")?;
        if text.contains('\0') {
            return Err("string contains NUL");
        }
        Ok(text.to_owned())
    }
}

/// INFO/GO data: u32 name length, name, u16 count, count × u16.
fn parse_info(data: &[u8]) -> Result<(String, Vec<u16>), &'static str> {
    let mut reader = Reader { data };
    let name = reader.string()?;
    let count = reader.u16()? as usize;
    if reader.data.len() != count * 2 {
        return Err("information request count does not match option length");
    }
    let mut requests = Vec::with_capacity(count);
    for _ in 0..count {
        requests.push(reader.u16()?);
    }
    Ok((name, requests))
}

/// LIST/SET_META_CONTEXT data: u32 name length, name, u32 count, count × string.
fn parse_meta_context(data: &[u8]) -> Result<(String, Vec<String>), &'static str> {
    let mut reader = Reader { data };
    let name = reader.string()?;
    let count = reader.u32()? as usize;
    // Each query takes at least its 4-byte length: bound before allocating.
    if count > reader.data.len() / 4 {
        return Err("query count does not match option length");
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        queries.push(reader.string()?);
    }
    if !reader.data.is_empty() {
        return Err("trailing bytes after the queries");
    }
    Ok((name, queries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{OPTION_MAGIC, info, option, reply};
    use proptest::prelude::*;

    fn export(name: &str) -> ExportInfo {
        ExportInfo {
            name: name.into(),
            description: "a test export".into(),
            size: 1 << 20,
            read_only: false,
            multi_conn: true,
            preferred_block: 4096,
            fast_zero: true,
        }
    }

    /// Error messages longer than the spec's string limit are cut to it,
    /// with "...", never inside a UTF-8 character; shorter ones are whole.
    #[test]
    fn long_error_messages_are_cut_to_the_string_limit() {
        let short = "no volume named x".as_bytes();
        assert_eq!(cut_message(short), (short, false));
        let exact = vec![b'a'; MAX_MESSAGE];
        assert_eq!(cut_message(&exact), (&exact[..], false));
        let long = vec![b'a'; MAX_MESSAGE + 1];
        let (cut, was_cut) = cut_message(&long);
        assert!(was_cut && cut.len() + 3 == MAX_MESSAGE);
        // A 3-byte character straddling the cut goes whole.
        let mut text = "a".repeat(MAX_MESSAGE - 4);
        text.push_str(&"€".repeat(10));
        let (cut, was_cut) = cut_message(text.as_bytes());
        assert!(was_cut && std::str::from_utf8(cut).is_ok() && cut.len() == MAX_MESSAGE - 4, "{}", cut.len());
    }

    fn option_bytes(option: u32, data: &[u8]) -> Vec<u8> {
        let mut bytes = OPTION_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&option.to_be_bytes());
        bytes.extend_from_slice(&(data.len() as u32).to_be_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn info_request(name: &str, requests: &[u16]) -> Vec<u8> {
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&(requests.len() as u16).to_be_bytes());
        for r in requests {
            data.extend_from_slice(&r.to_be_bytes());
        }
        data
    }

    /// Parses option replies out of the transmit buffer: (option, type, data).
    fn replies(bytes: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            assert_eq!(u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap()), OPTION_REPLY_MAGIC);
            let option = u32::from_be_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            let kind = u32::from_be_bytes(bytes[at + 12..at + 16].try_into().unwrap());
            let length = u32::from_be_bytes(bytes[at + 16..at + 20].try_into().unwrap()) as usize;
            out.push((option, kind, bytes[at + 20..at + 20 + length].to_vec()));
            at += 20 + length;
        }
        out
    }

    /// A handshake past the greeting and client flags, transmit drained.
    fn started() -> Handshake {
        let mut machine = Handshake::new(HandshakeConfig::default());
        assert_eq!(machine.transmit().len(), 18);
        machine.transmit().clear();
        assert_eq!(machine.receive(&3u32.to_be_bytes()), 4);
        machine
    }

    /// Feeds input byte by byte, answering lookups from `exports`: proves the
    /// machine never needs a message to arrive in one piece.
    fn drive(machine: &mut Handshake, input: &[u8], exports: &[&str]) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for &byte in input {
            pending.push(byte);
            loop {
                let used = machine.receive(&pending);
                pending.drain(..used);
                match machine.poll_action() {
                    Some(Action::Lookup(name)) => {
                        let result = if exports.contains(&name.as_str()) {
                            Ok(export(&name))
                        } else {
                            Err(LookupError { message: format!("no export {name}") })
                        };
                        machine.export_resolved(result);
                        actions.push(Action::Lookup(name));
                    }
                    Some(Action::List) => {
                        let listings: Vec<_> = exports
                            .iter()
                            .map(|n| Listing { name: n.to_string(), description: String::new() })
                            .collect();
                        machine.list_ready(&listings);
                        actions.push(Action::List);
                    }
                    Some(action) => {
                        actions.push(action);
                        return actions;
                    }
                    None if used == 0 => break,
                    None => {}
                }
            }
        }
        actions
    }

    #[test]
    fn greeting_is_nbdmagic_ihaveopt_and_fixed_newstyle_flags() {
        // The first 18 bytes a client sees are the fixed-newstyle greeting.
        let mut machine = Handshake::new(HandshakeConfig::default());
        let greeting = machine.transmit().clone();
        assert_eq!(&greeting[..8], b"NBDMAGIC");
        assert_eq!(&greeting[8..16], b"IHAVEOPT");
        assert_eq!(u16::from_be_bytes([greeting[16], greeting[17]]), 3);
    }

    #[test]
    fn go_replies_info_then_ack_and_enters_transmission() {
        // GO for a known export: INFO_EXPORT, the requested NAME and
        // DESCRIPTION, BLOCK_SIZE unasked, ACK, then the transmission action.
        let mut machine = started();
        let mut input = option_bytes(option::STRUCTURED_REPLY, &[]);
        input.extend(option_bytes(option::GO, &info_request("disk", &[info::NAME, info::DESCRIPTION])));
        let actions = drive(&mut machine, &input, &["disk"]);
        let Some(Action::Transmission(negotiated)) = actions.last() else { panic!("{actions:?}") };
        assert!(negotiated.structured);
        assert_eq!(negotiated.base_allocation, None);
        let sent = replies(machine.transmit());
        let kinds: Vec<u32> = sent.iter().map(|r| r.1).collect();
        assert_eq!(kinds, [reply::ACK, reply::INFO, reply::INFO, reply::INFO, reply::INFO, reply::ACK]);
        let info_types: Vec<u16> = sent[1..5].iter().map(|r| u16::from_be_bytes([r.2[0], r.2[1]])).collect();
        assert_eq!(info_types, [info::EXPORT, info::NAME, info::DESCRIPTION, info::BLOCK_SIZE]);
        let flags = u16::from_be_bytes([sent[1].2[10], sent[1].2[11]]);
        assert_eq!(flags, negotiated.flags);
        assert!(flags & transmission_flags::SEND_DF != 0, "DF needs structured replies");
        assert!(flags & transmission_flags::CAN_MULTI_CONN != 0);
    }

    #[test]
    fn unknown_export_in_go_is_err_unknown_and_haggling_continues() {
        // GO on a missing export answers ERR_UNKNOWN with the catalog's
        // message; the client may then pick another export.
        let mut machine = started();
        let mut input = option_bytes(option::GO, &info_request("nope", &[]));
        input.extend(option_bytes(option::GO, &info_request("disk", &[])));
        let actions = drive(&mut machine, &input, &["disk"]);
        assert!(matches!(actions.last(), Some(Action::Transmission(_))));
        let sent = replies(machine.transmit());
        assert_eq!(sent[0].1, reply::ERR_UNKNOWN);
        assert_eq!(sent[0].2, b"no export nope");
    }

    #[test]
    fn export_name_sends_size_flags_and_no_zero_padding_when_asked() {
        // EXPORT_NAME ends haggling with size, flags and (without NO_ZEROES)
        // 124 zero bytes; an unknown name can only hang up.
        for (client_flags, padding) in [(1u32, 124usize), (3, 0)] {
            let mut machine = Handshake::new(HandshakeConfig::default());
            machine.transmit().clear();
            machine.receive(&client_flags.to_be_bytes());
            let actions = drive(&mut machine, &option_bytes(option::EXPORT_NAME, b"disk"), &["disk"]);
            assert!(matches!(actions.last(), Some(Action::Transmission(_))));
            assert_eq!(machine.transmit().len(), 8 + 2 + padding);
            assert_eq!(&machine.transmit()[..8], &(1u64 << 20).to_be_bytes());
        }
        let mut machine = started();
        let actions = drive(&mut machine, &option_bytes(option::EXPORT_NAME, b"nope"), &["disk"]);
        assert_eq!(actions.last(), Some(&Action::Close(CloseReason::UnknownExport("nope".into()))));
    }

    #[test]
    fn meta_context_needs_structured_replies_and_selects_base_allocation() {
        // SET_META_CONTEXT before STRUCTURED_REPLY is ERR_INVALID; after it,
        // base:allocation gets an id that GO on the same export keeps and GO
        // on another export drops.
        let mut meta = (4u32).to_be_bytes().to_vec();
        meta.extend_from_slice(b"disk");
        meta.extend_from_slice(&1u32.to_be_bytes());
        meta.extend_from_slice(&(BASE_ALLOCATION.len() as u32).to_be_bytes());
        meta.extend_from_slice(BASE_ALLOCATION.as_bytes());

        let mut machine = started();
        drive(&mut machine, &option_bytes(option::SET_META_CONTEXT, &meta), &["disk"]);
        assert_eq!(replies(machine.transmit())[0].1, reply::ERR_INVALID);

        for (go_name, expect) in [("disk", Some(BASE_ALLOCATION_ID)), ("other", None)] {
            let mut machine = started();
            let mut input = option_bytes(option::STRUCTURED_REPLY, &[]);
            input.extend(option_bytes(option::SET_META_CONTEXT, &meta));
            input.extend(option_bytes(option::GO, &info_request(go_name, &[])));
            let actions = drive(&mut machine, &input, &["disk", "other"]);
            let Some(Action::Transmission(negotiated)) = actions.last() else { panic!() };
            assert_eq!(negotiated.base_allocation, expect);
            let sent = replies(machine.transmit());
            assert_eq!(sent[1].1, reply::META_CONTEXT);
            assert_eq!(&sent[1].2[..4], &BASE_ALLOCATION_ID.to_be_bytes());
        }
    }

    #[test]
    fn list_sends_one_server_reply_per_export_then_ack() {
        // LIST answers every export by name, then ACK.
        let mut machine = started();
        drive(&mut machine, &option_bytes(option::LIST, &[]), &["a", "bb"]);
        let sent = replies(machine.transmit());
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0].2, [0, 0, 0, 1, b'a']);
        assert_eq!(sent[1].2, [0, 0, 0, 2, b'b', b'b']);
        assert_eq!(sent[2].1, reply::ACK);
    }

    #[test]
    fn a_refusing_handshake_answers_every_option_with_its_message() {
        // A connection over the server's limit: STRUCTURED_REPLY, LIST, GO
        // and INFO all get ERR_POLICY and the message, no lookup or list is
        // asked of the driver, and ABORT is still acknowledged.
        let mut machine = Handshake::refusing(HandshakeConfig::default(), "at the limit".into());
        assert_eq!(machine.transmit().len(), 18, "the usual greeting");
        machine.transmit().clear();
        assert_eq!(machine.receive(&3u32.to_be_bytes()), 4);
        let mut input = option_bytes(option::STRUCTURED_REPLY, &[]);
        input.extend(option_bytes(option::LIST, &[]));
        input.extend(option_bytes(option::GO, &info_request("a", &[])));
        input.extend(option_bytes(option::INFO, &info_request("a", &[])));
        input.extend(option_bytes(option::ABORT, &[]));
        let actions = drive(&mut machine, &input, &["a"]);
        assert_eq!(actions, [Action::Close(CloseReason::Aborted)]);
        let sent = replies(machine.transmit());
        let options: Vec<u32> = sent.iter().map(|r| r.0).collect();
        assert_eq!(
            options,
            [option::STRUCTURED_REPLY, option::LIST, option::GO, option::INFO, option::ABORT]
        );
        for (_, kind, data) in &sent[..4] {
            assert_eq!((*kind, data.as_slice()), (reply::ERR_POLICY, b"at the limit".as_slice()));
        }
        assert_eq!(sent[4].1, reply::ACK);
        // EXPORT_NAME has no error reply: the connection is closed.
        let mut machine = Handshake::refusing(HandshakeConfig::default(), "at the limit".into());
        machine.transmit().clear();
        machine.receive(&3u32.to_be_bytes());
        let actions = drive(&mut machine, &option_bytes(option::EXPORT_NAME, b"a"), &["a"]);
        assert_eq!(actions, [Action::Close(CloseReason::Refused)]);
        assert!(machine.transmit().is_empty());
    }

    #[test]
    fn unknown_and_unsupported_options_get_err_unsup() {
        // STARTTLS, EXTENDED_HEADERS and made-up options are declined and
        // the machine keeps parsing.
        let mut machine = started();
        let mut input = option_bytes(option::STARTTLS, &[]);
        input.extend(option_bytes(option::EXTENDED_HEADERS, &[]));
        input.extend(option_bytes(0xdead, b"junk"));
        input.extend(option_bytes(option::ABORT, &[]));
        let actions = drive(&mut machine, &input, &[]);
        assert_eq!(actions.last(), Some(&Action::Close(CloseReason::Aborted)));
        let kinds: Vec<u32> = replies(machine.transmit()).iter().map(|r| r.1).collect();
        assert_eq!(kinds, [reply::ERR_UNSUP, reply::ERR_UNSUP, reply::ERR_UNSUP, reply::ACK]);
    }

    #[test]
    fn plain_newstyle_clients_may_only_send_export_name() {
        // Without the fixed-newstyle client flag there is no way to reply to
        // an option, so anything but EXPORT_NAME hangs up.
        let mut machine = Handshake::new(HandshakeConfig::default());
        machine.receive(&0u32.to_be_bytes());
        let actions = drive(&mut machine, &option_bytes(option::LIST, &[]), &[]);
        assert!(matches!(actions.last(), Some(Action::Close(CloseReason::Protocol(_)))));
    }

    #[test]
    fn option_count_is_bounded() {
        // A client cannot keep a handshake alive forever with cheap options.
        let mut machine = Handshake::new(HandshakeConfig { max_options: 3, ..HandshakeConfig::default() });
        machine.receive(&3u32.to_be_bytes());
        let input: Vec<u8> = (0..5).flat_map(|_| option_bytes(option::STRUCTURED_REPLY, &[])).collect();
        let actions = drive(&mut machine, &input, &[]);
        assert_eq!(actions.last(), Some(&Action::Close(CloseReason::Protocol("too many options"))));
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics_and_stays_bounded(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32),
            prefix in any::<bool>(),
        ) {
            // Hostile bytes, optionally after a valid option header prefix:
            // the machine consumes or refuses them without panicking and its
            // transmit buffer stays bounded.
            let mut machine = started();
            let mut input = Vec::new();
            if prefix {
                input.extend_from_slice(&OPTION_MAGIC.to_be_bytes());
            }
            for chunk in chunks {
                input.extend(chunk);
            }
            drive(&mut machine, &input, &["disk"]);
            prop_assert!(machine.transmit().len() < 1 << 20);
        }

        #[test]
        fn well_formed_info_requests_round_trip(name in "[a-z]{0,40}", requests in proptest::collection::vec(0u16..8, 0..10)) {
            // Whatever valid INFO a client builds is parsed back exactly.
            let (parsed_name, parsed) = parse_info(&info_request(&name, &requests)).unwrap();
            prop_assert_eq!(parsed_name, name);
            prop_assert_eq!(parsed, requests);
        }
    }
}
