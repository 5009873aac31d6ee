//! The async driver: accepts TCP connections and runs the handshake and
//! transmission machines over them on tokio.
//!
//! One thread per connection, running a single-threaded runtime
//! (`Server::spawn_connection`). Within a connection, requests run concurrently
//! (bounded by [`ServerConfig::max_inflight_requests`] and
//! [`ServerConfig::max_inflight_bytes`]) and replies go out in completion
//! order, coalesced into as few `writev` calls as the socket allows.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::buffer::{BufferPool, IoBuffer};
use crate::bulk::{BULK_READ, BulkMember, BulkReads, BulkWay};
use crate::device::{BlockDevice, Catalog, DeviceError, Errno, FileSlice};
use crate::handshake::{Action, CloseReason, Handshake, HandshakeConfig, Negotiated};
use crate::protocol::REQUEST_HEADER_LEN;
use crate::sys;
use crate::transmission::{
    Command, ProtocolError, Rejection, check_request, decode_request, encode_block_status, encode_error,
    encode_ok, encode_read_header, encode_sparse_read, fill_read_header, read_reply_header_len,
};

/// Limits of a server. Every queue and buffer a client can grow is bounded
/// by one of these.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections served at once. A few more are told so in the handshake
    /// (every option gets `ERR_POLICY` saying the limit is reached, for at
    /// most [`REFUSAL_DEADLINE`]); beyond those, they are closed at once.
    pub max_connections: usize,
    /// A client must finish the handshake within this time (qemu
    /// CVE-2024-7409: idle clients must not hold the server).
    pub handshake_timeout: Duration,
    /// Requests executing at once on one connection.
    pub max_inflight_requests: usize,
    /// Payload bytes (write data in, read data out) held for one connection.
    pub max_inflight_bytes: usize,
    /// Limits of the option haggling.
    pub handshake: HandshakeConfig,
    /// How long a connection with nothing in flight polls its socket for
    /// the client's next request before it waits through the reactor. A
    /// client that sends one request at a time (iodepth 1, a write then a
    /// flush) answers within tens of microseconds; catching that on the
    /// same thread saves an epoll round and a worker wake-up per request.
    /// Zero turns it off.
    pub idle_poll: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            max_inflight_requests: 128,
            max_inflight_bytes: 96 << 20,
            handshake: HandshakeConfig::default(),
            idle_poll: Duration::from_micros(50),
        }
    }
}

/// Which kind of request a completed operation was, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Read,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    Cache,
}

impl RequestKind {
    /// Every kind, for exporting metrics.
    pub const ALL: [RequestKind; 7] = [
        RequestKind::Read,
        RequestKind::Write,
        RequestKind::Flush,
        RequestKind::Trim,
        RequestKind::WriteZeroes,
        RequestKind::BlockStatus,
        RequestKind::Cache,
    ];

    /// Lower-case name used in logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            RequestKind::Read => "read",
            RequestKind::Write => "write",
            RequestKind::Flush => "flush",
            RequestKind::Trim => "trim",
            RequestKind::WriteZeroes => "write_zeroes",
            RequestKind::BlockStatus => "block_status",
            RequestKind::Cache => "cache",
        }
    }
}

/// Receives one call per completed request (metrics). Must be cheap.
pub trait Observer: Send + Sync + 'static {
    /// `bytes` is the range the request covered (read, written, trimmed,
    /// zeroed, queried; 0 for flush), `ok` whether the reply was a success.
    fn request_done(&self, kind: RequestKind, bytes: u64, latency: Duration, ok: bool);
    /// A connection reached the transmission phase (`true`) or closed after
    /// it (`false`).
    fn connection(&self, _opened: bool) {}
}

/// An observer that records nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {
    fn request_done(&self, _: RequestKind, _: u64, _: Duration, _: bool) {}
}

/// An NBD server over a catalog of exports.
pub struct Server<C: Catalog> {
    catalog: Arc<C>,
    config: Arc<ServerConfig>,
    observer: Arc<dyn Observer>,
    pool: Arc<BufferPool>,
    bulk: Arc<BulkReads>,
}

impl<C: Catalog> std::fmt::Debug for Server<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("config", &self.config).finish_non_exhaustive()
    }
}

impl<C: Catalog> Server<C> {
    /// A server with the given limits.
    pub fn new(catalog: Arc<C>, config: ServerConfig) -> Server<C> {
        // 32 recycled buffers of up to 8 MiB: steady sequential IO at any
        // queue depth a client uses in practice allocates nothing.
        let pool = BufferPool::new(32);
        Server {
            catalog,
            config: Arc::new(config),
            observer: Arc::new(NoObserver),
            pool,
            bulk: Arc::default(),
        }
    }

    /// Reports completed requests to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Server<C> {
        self.observer = observer;
        self
    }

    /// Accepts connections until `shutdown` turns true, then stops accepting,
    /// lets every connection finish its in-flight requests, and returns.
    pub async fn serve(self, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
        let mut connections = JoinSet::new();
        let mut refusals = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if connections.len() >= self.config.max_connections {
                            let limit = self.config.max_connections;
                            if refusals.len() < MAX_REFUSALS {
                                tracing::warn!(%peer, limit, "connection limit reached; refusing new connection");
                                refusals.spawn(refuse(stream, self.config.clone(), self.catalog.clone()));
                            } else {
                                tracing::warn!(%peer, limit, "connection limit reached; closing new connection");
                                drop(stream);
                            }
                            continue;
                        }
                        match self.spawn_connection(stream, peer, shutdown.clone()) {
                            Ok(finished) => {
                                connections.spawn(async move {
                                    let _ = finished.await;
                                });
                            }
                            Err(error) => tracing::warn!(%peer, %error, "cannot serve connection; closed it"),
                        }
                    }
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                Some(_) = refusals.join_next(), if !refusals.is_empty() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
        drop(listener);
        refusals.abort_all();
        while connections.join_next().await.is_some() {}
    }
}

/// Connections over the limit that are told so at once; more are closed
/// without a word. Each is held at most [`REFUSAL_DEADLINE`], so they add
/// at most this many sockets for that long (qemu CVE-2024-7409).
pub const MAX_REFUSALS: usize = 8;

/// How long a connection over the limit may take to hear why.
pub const REFUSAL_DEADLINE: Duration = Duration::from_secs(2);

/// Tells a connection over the limit why it cannot be served: a handshake
/// that answers every option with `ERR_POLICY` and the limit, so qemu shows
/// that (libnbd logs it with `LIBNBD_DEBUG=1`) instead of "server disconnected".
async fn refuse<C: Catalog>(stream: TcpStream, config: Arc<ServerConfig>, catalog: Arc<C>) {
    let message = format!(
        "the server is at its connection limit ({} at once); try again when a connection closes",
        config.max_connections
    );
    let machine = Handshake::refusing(config.handshake.clone(), message);
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let mut input = InputBuffer::new(4 << 10);
    let deadline = config.handshake_timeout.min(REFUSAL_DEADLINE);
    // The refusing machine never asks for a lookup or a list, so the
    // catalog is not consulted.
    let talk = handshake(&mut reader, &mut writer, &mut input, machine, &*catalog);
    let _ = tokio::time::timeout(deadline, talk).await;
}

impl<C: Catalog> Server<C> {
    /// Serves one connection on a thread of its own, with a single-threaded
    /// runtime: the connection's requests, the device calls that run inline
    /// and its socket's readiness all stay on that thread, with no
    /// work-stealing between runtime workers and no cross-thread wake-ups.
    /// (docs/nbd.md has the figures.) Work a device offloads goes to the
    /// connection runtime's blocking pool, at most
    /// [`CONNECTION_BLOCKING_THREADS`] threads. The receiver completes when
    /// the thread is done; a thread that cannot be started is an error, and
    /// the connection is closed.
    fn spawn_connection(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> io::Result<tokio::sync::oneshot::Receiver<()>> {
        let stream = stream.into_std()?;
        let (catalog, config, observer, pool, bulk) = (
            self.catalog.clone(),
            self.config.clone(),
            self.observer.clone(),
            self.pool.clone(),
            self.bulk.clone(),
        );
        let (done, finished) = tokio::sync::oneshot::channel();
        std::thread::Builder::new().name("nbd-connection".into()).spawn(move || {
            // Built here, not on the accept task: a runtime must not be
            // dropped inside another one (as it would be if the spawn failed).
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(CONNECTION_BLOCKING_THREADS)
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::warn!(%peer, %error, "no runtime for the connection; closed it");
                    return;
                }
            };
            runtime.block_on(async move {
                tracing::debug!(%peer, "connection opened");
                let result = match TcpStream::from_std(stream) {
                    Ok(stream) => {
                        serve_connection(stream, catalog, config, observer, shutdown, pool, bulk).await
                    }
                    Err(error) => Err(error.into()),
                };
                match result {
                    Ok(()) => tracing::debug!(%peer, "connection closed"),
                    Err(error) => tracing::info!(%peer, %error, "connection ended"),
                }
            });
            drop(runtime);
            let _ = done.send(());
        })?;
        Ok(finished)
    }
}

/// Threads of a connection's blocking pool (large uncached reads, slow
/// syncs). Bounded per connection: with up to `max_connections` of them,
/// tokio's default of 512 each would let clients start hundreds of
/// thousands of threads.
pub const CONNECTION_BLOCKING_THREADS: usize = 16;

/// Why a connection ended other than by the client's choice.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The socket failed.
    #[error("socket error")]
    Io(#[from] io::Error),
    /// The client did not finish the handshake in time.
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// The client broke the handshake protocol.
    #[error("handshake: {0:?}")]
    Handshake(CloseReason),
    /// The client broke the transmission protocol.
    #[error("transmission")]
    Protocol(#[from] ProtocolError),
}

/// Serves one connection: handshake, then transmission until the client
/// disconnects or the server shuts down.
pub async fn serve_connection<C: Catalog>(
    stream: TcpStream,
    catalog: Arc<C>,
    config: Arc<ServerConfig>,
    observer: Arc<dyn Observer>,
    shutdown: watch::Receiver<bool>,
    pool: Arc<BufferPool>,
    bulk: Arc<BulkReads>,
) -> Result<(), ConnectionError> {
    stream.set_nodelay(true)?;
    let (mut reader, mut writer) = stream.into_split();
    let mut input = InputBuffer::new(64 << 10);
    let negotiated = tokio::time::timeout(
        config.handshake_timeout,
        handshake(&mut reader, &mut writer, &mut input, Handshake::new(config.handshake.clone()), &*catalog),
    )
    .await
    .map_err(|_| ConnectionError::HandshakeTimeout(config.handshake_timeout))??;
    let Some((session, device)) = negotiated else {
        return Ok(());
    };
    observer.connection(true);
    let result = Transmission {
        reader,
        writer,
        input,
        session,
        device: &device,
        config: &config,
        observer: &*observer,
        pool,
        shutdown,
        bulk: BulkMember::new(bulk),
    }
    .run()
    .await;
    observer.connection(false);
    result
}

async fn handshake<C: Catalog>(
    reader: &mut OwnedReadHalf,
    writer: &mut OwnedWriteHalf,
    input: &mut InputBuffer,
    mut machine: Handshake,
    catalog: &C,
) -> Result<Option<(Negotiated, C::Device)>, ConnectionError> {
    let mut device: Option<C::Device> = None;
    loop {
        if !machine.transmit().is_empty() {
            writer.write_all(machine.transmit()).await?;
            machine.transmit().clear();
        }
        match machine.poll_action() {
            Some(Action::Lookup(name)) => {
                match catalog.open(&name).await {
                    Ok(export) => {
                        device = Some(export.device);
                        machine.export_resolved(Ok(export.info));
                    }
                    Err(error) => {
                        tracing::debug!(name = %name.escape_debug(), %error, "export lookup failed");
                        device = None;
                        machine.export_resolved(Err(error));
                    }
                }
                continue;
            }
            Some(Action::List) => {
                machine.list_ready(&catalog.list());
                continue;
            }
            Some(Action::Transmission(negotiated)) => {
                writer.write_all(machine.transmit()).await?;
                machine.transmit().clear();
                let device = device.take().expect("a successful lookup precedes transmission");
                return Ok(Some((negotiated, device)));
            }
            Some(Action::Close(reason)) => {
                writer.write_all(machine.transmit()).await?;
                return match reason {
                    CloseReason::Aborted => Ok(None),
                    reason => Err(ConnectionError::Handshake(reason)),
                };
            }
            None => {}
        }
        let used = machine.receive(input.filled());
        input.consume(used);
        if used > 0 || machine.is_blocked() {
            continue;
        }
        input.reserve(machine.wanted());
        if input.read_from(reader).await? == 0 {
            return Ok(None);
        }
    }
}

/// Bytes read from the socket but not yet parsed.
struct InputBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
    /// The socket's receive low-water mark (`SO_RCVLOWAT`) as last set.
    low_water: usize,
    /// The last request carried a bulk payload, and no header was parsed
    /// since: when drained, read just the next header, so that a bulk
    /// payload after it is read straight into its own buffer instead of
    /// copied out of this one.
    header_only: bool,
}

impl InputBuffer {
    fn new(capacity: usize) -> InputBuffer {
        InputBuffer { data: vec![0; capacity], start: 0, end: 0, low_water: 1, header_only: false }
    }

    fn filled(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    fn consume(&mut self, count: usize) {
        self.start += count;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room for at least `wanted` unparsed bytes in total.
    fn reserve(&mut self, wanted: usize) {
        if self.start > 0 && self.data.len() - self.start < wanted.max(REQUEST_HEADER_LEN * 2) {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.data.len() < wanted {
            self.data.resize(wanted, 0);
        }
    }

    /// Makes room to read into.
    fn make_room(&mut self) {
        if self.end == self.data.len() {
            self.reserve(self.data.len() - self.start + 1);
            if self.end == self.data.len() {
                self.data.resize(self.data.len() * 2, 0);
            }
        }
    }

    /// Sets the socket's low-water mark to `bytes` unless it is already
    /// (best effort: a failure leaves reads waking as before).
    fn wake_at(&mut self, reader: &OwnedReadHalf, bytes: usize) {
        if self.low_water != bytes && sys::set_receive_low_water(reader.as_ref().as_raw_fd(), bytes).is_ok() {
            self.low_water = bytes;
        }
    }

    /// Where the next read goes: the free space, or just a header's worth
    /// (see `header_only`).
    fn room(&mut self) -> &mut [u8] {
        self.make_room();
        let end = if self.header_only && self.start == self.end {
            (self.end + REQUEST_HEADER_LEN).min(self.data.len())
        } else {
            self.data.len()
        };
        &mut self.data[self.end..end]
    }

    async fn read_from(&mut self, reader: &mut OwnedReadHalf) -> io::Result<usize> {
        let count = reader.read(self.room()).await?;
        self.end += count;
        Ok(count)
    }

    /// Reads what the socket holds right now, without waiting and without
    /// the reactor (whose cached readiness would answer "not readable"
    /// until its next poll): `None` when there is nothing yet.
    fn read_now(&mut self, reader: &OwnedReadHalf) -> io::Result<Option<usize>> {
        let count = sys::recv_now(reader.as_ref().as_raw_fd(), self.room())?;
        self.end += count.unwrap_or(0);
        Ok(count)
    }
}

/// One piece of the reply stream.
enum Chunk {
    /// Reply bytes. Read data counts against the in-flight budget at once
    /// (`counted`); a buffer of small replies and headers is open for
    /// more (`counted` false) until a chunk is queued after it, and then
    /// counts too, so a client that never reads its replies cannot queue
    /// small ones without bound either.
    Bytes { buffer: IoBuffer, counted: bool },
    /// Read data sent from a file with sendfile (after its header, which
    /// is in the `Bytes` chunk before it).
    File(FileSlice),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Bytes { buffer, .. } => buffer.len(),
            Chunk::File(slice) => slice.length,
        }
    }

    /// Bytes of the in-flight budget the chunk holds.
    fn counted(&self) -> usize {
        match self {
            Chunk::Bytes { counted: false, .. } => 0,
            chunk => chunk.len(),
        }
    }
}

/// Replies waiting for the socket. Small replies share a buffer; read data
/// travels in its own buffer, never copied again, or straight from a file.
struct Outgoing {
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    front_written: usize,
    /// Bytes queued that count against the in-flight budget: read data,
    /// and small replies but for the open buffer (at most
    /// [`COALESCE_LIMIT`] and one reply).
    bytes: usize,
}

/// Queued reply bytes above which the parser stops to push them out before
/// starting more requests: the client can consume replies (and send new
/// requests) while we work on the rest of a batch, so both sides stay busy.
const EAGER_FLUSH: usize = 32 << 10;

const COALESCE_LIMIT: usize = 64 << 10;

impl Outgoing {
    fn new() -> Outgoing {
        Outgoing { queue: VecDeque::new(), front_written: 0, bytes: 0 }
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// A buffer to append a small reply to.
    fn small(&mut self) -> &mut Vec<u8> {
        let reuse = matches!(self.queue.back(), Some(Chunk::Bytes { buffer, counted: false }) if buffer.len() < COALESCE_LIMIT)
            && !(self.queue.len() == 1 && self.front_written > 0);
        if !reuse {
            self.seal_small();
            let buffer = IoBuffer::unpooled(Vec::with_capacity(4096));
            self.queue.push_back(Chunk::Bytes { buffer, counted: false });
        }
        match self.queue.back_mut() {
            Some(Chunk::Bytes { buffer, .. }) => buffer.vec_mut(),
            _ => unreachable!("a bytes chunk is at the back"),
        }
    }

    /// Closes the open small-reply buffer at the back, if any: no more
    /// replies go into it, and its bytes count against the budget.
    fn seal_small(&mut self) {
        if let Some(Chunk::Bytes { buffer, counted }) = self.queue.back_mut()
            && !*counted
        {
            *counted = true;
            self.bytes += buffer.len();
        }
    }

    fn push(&mut self, buffer: IoBuffer) {
        self.seal_small();
        self.bytes += buffer.len();
        self.queue.push_back(Chunk::Bytes { buffer, counted: true });
    }

    /// Queues read data to be sent from a file. Its bytes count against the
    /// budget like a buffer's, so a client that does not read its replies
    /// cannot queue reads without bound.
    fn push_file(&mut self, slice: FileSlice) {
        self.seal_small();
        self.bytes += slice.length;
        self.queue.push_back(Chunk::File(slice));
    }

    /// Bytes waiting to be written.
    fn queued(&self) -> usize {
        self.queue.iter().map(Chunk::len).sum::<usize>() - self.front_written
    }

    /// The bytes chunks at the front, up to the first file chunk.
    fn slices(&self) -> ([IoSlice<'_>; 64], usize) {
        let mut slices: [IoSlice<'_>; 64] = [IoSlice::new(&[]); 64];
        let mut count = 0;
        for (index, chunk) in self.queue.iter().enumerate().take(slices.len()) {
            let Chunk::Bytes { buffer, .. } = chunk else { break };
            let skip = if index == 0 { self.front_written } else { 0 };
            slices[count] = IoSlice::new(&buffer[skip..]);
            count += 1;
        }
        (slices, count)
    }

    /// Sends what the socket takes now of the front chunk, a file chunk:
    /// `None` when the front is not one. A file that ends before the
    /// promised bytes (truncated while served) is an error: the reply's
    /// header is out, so the connection cannot go on.
    fn send_front_file(&self, socket: &TcpStream) -> Option<io::Result<usize>> {
        let Some(Chunk::File(slice)) = self.queue.front() else {
            return None;
        };
        let count = slice.length - self.front_written;
        let Some(offset) = slice.offset.checked_add(self.front_written as u64) else {
            return Some(Err(io::Error::new(io::ErrorKind::InvalidInput, "file offset overflows")));
        };
        let sent = socket.try_io(Interest::WRITABLE, || {
            sys::send_file(socket.as_raw_fd(), slice.file.as_raw_fd(), offset, count)
        });
        Some(match sent {
            Ok(0) => {
                tracing::warn!(
                    offset,
                    count,
                    "file ended before the read reply's data: closing the connection"
                );
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file ended before the read reply's data"))
            }
            other => other,
        })
    }

    /// One vectored write or one sendfile; cancel-safe (state changes only
    /// after it returns).
    async fn write_to(&mut self, writer: &mut OwnedWriteHalf) -> io::Result<()> {
        if matches!(self.queue.front(), Some(Chunk::File(_))) {
            let socket = writer.as_ref();
            let sent = loop {
                socket.writable().await?;
                match self.send_front_file(socket).expect("the front is a file chunk") {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    result => break result?,
                }
            };
            return self.advance(sent);
        }
        let (slices, count) = self.slices();
        let written = writer.write_vectored(&slices[..count]).await?;
        self.advance(written)
    }

    /// Writes what the socket takes right now, without waiting.
    fn try_write(&mut self, writer: &OwnedWriteHalf) -> io::Result<()> {
        let written = self.send_front_file(writer.as_ref()).unwrap_or_else(|| {
            let (slices, count) = self.slices();
            writer.try_write_vectored(&slices[..count])
        });
        match written {
            Ok(written) => self.advance(written),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn advance(&mut self, mut written: usize) -> io::Result<()> {
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let front = self.queue.front().expect("written bytes came from the queue");
            let left = front.len() - self.front_written;
            if written >= left {
                written -= left;
                self.bytes = self.bytes.saturating_sub(front.counted());
                self.queue.pop_front();
                self.front_written = 0;
            } else {
                self.front_written += written;
                written = 0;
            }
        }
        Ok(())
    }
}

/// How a finished request is answered.
enum Reply {
    Ok,
    Error(DeviceError),
    /// A read reply with its header filled in.
    Buffer(IoBuffer),
    /// Read data to send from a file: (where, offset asked, length).
    File(Vec<FileSlice>, u64, usize),
}

struct Completion {
    cookie: u64,
    kind: RequestKind,
    /// Payload bytes held while in flight (the per-connection budget).
    bytes: usize,
    /// Bytes the request covered (read, written, trimmed, zeroed), for metrics.
    covered: u64,
    started: Instant,
    reply: Reply,
}

type Pending<'a> = Pin<Box<dyn Future<Output = Completion> + Send + 'a>>;

/// What the parser expects next from the stream.
enum Parse {
    Header,
    /// Write payload being collected. `data` is `None` for a refused write,
    /// whose payload is read and dropped before the error reply.
    Payload {
        cookie: u64,
        command: Result<Command, Rejection>,
        data: Option<IoBuffer>,
        total: usize,
        filled: usize,
    },
}

impl Parse {
    /// A payload read straight into its buffer by [`read_more`]: the
    /// reactor wakes the connection when enough of it arrived, so polling
    /// would only take it in small pieces (and through the input buffer).
    fn is_bulk_payload(&self) -> bool {
        matches!(self, Parse::Payload { data: Some(data), .. } if data.len() >= DIRECT_PAYLOAD)
    }
}

/// The outcome of one parsing step.
enum Step {
    NeedInput,
    Disconnect,
    Handled,
    Start(u64, Command, IoBuffer),
}

/// A client seen pipelining is not polled for until it started this many
/// requests without.
const SERIAL_WINDOW: u64 = 256;

/// Payloads at least this long are read straight into their buffer (all
/// of it that is not in the input buffer already), and the header after
/// one alone.
const DIRECT_PAYLOAD: usize = 16 << 10;

/// While a bulk payload arrives, the connection waits for this much of it
/// at a time (or the rest, if less) before it reads: a 1 MiB write then
/// takes a few reads instead of one per segment the socket received.
const LOW_WATER_MAX: usize = 256 << 10;

/// Reads more bytes: straight into a write payload when the input buffer is
/// drained (no second copy of bulk data), else into the input buffer.
async fn read_more(
    reader: &mut OwnedReadHalf,
    input: &mut InputBuffer,
    parse: &mut Parse,
) -> io::Result<usize> {
    if let Parse::Payload { data: Some(data), filled, .. } = parse
        && input.filled().is_empty()
        && data.len() >= DIRECT_PAYLOAD
    {
        let remaining = data.len() - *filled;
        input.wake_at(reader, remaining.min(LOW_WATER_MAX));
        let count = reader.read(&mut data[*filled..]).await?;
        *filled += count;
        return Ok(count);
    }
    input.wake_at(reader, 1);
    input.read_from(reader).await
}

struct Transmission<'a, D: BlockDevice> {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    input: InputBuffer,
    session: Negotiated,
    device: &'a D,
    config: &'a ServerConfig,
    observer: &'a dyn Observer,
    shutdown: watch::Receiver<bool>,
    pool: Arc<BufferPool>,
    bulk: BulkMember,
}

impl<'a, D: BlockDevice> Transmission<'a, D> {
    async fn run(mut self) -> Result<(), ConnectionError> {
        let mut inflight: FuturesUnordered<Pending<'a>> = FuturesUnordered::new();
        let mut out = Outgoing::new();
        let mut parse = Parse::Header;
        let mut inflight_bytes = 0usize;
        // Requests started on this connection, and the count before which
        // the client was seen keeping two or more requests outstanding.
        let mut started = 0u64;
        let mut pipelined_until = 0u64;
        // No new requests once the client said DISC, hung up, or we shut down.
        let mut closing = *self.shutdown.borrow();
        loop {
            // Parse and start every complete request the budget allows.
            while !closing
                && inflight.len() < self.config.max_inflight_requests
                && inflight_bytes + out.bytes < self.config.max_inflight_bytes
            {
                match self.parse_one(&mut parse, &mut out)? {
                    Step::NeedInput => break,
                    Step::Disconnect => closing = true,
                    Step::Handled => {}
                    Step::Start(cookie, command, payload) => {
                        // Another request not yet answered in full: the
                        // client does not wait for each reply.
                        if !inflight.is_empty() || !out.is_empty() {
                            pipelined_until = started + SERIAL_WINDOW;
                        }
                        let serial = started >= pipelined_until
                            && inflight.is_empty()
                            && out.is_empty()
                            && self.input.filled().len() < REQUEST_HEADER_LEN;
                        started += 1;
                        // A flush the client waits for with nothing else to
                        // do: sync on this connection's own thread.
                        if serial
                            && matches!(command, Command::Flush)
                            && let Some(done) = self.flush_here(cookie)
                        {
                            self.finish(done, &mut out);
                            continue;
                        }
                        let (future, bytes) = self.start(cookie, command, payload);
                        inflight_bytes += bytes;
                        inflight.push(future);
                    }
                }
                while let Some(Some(done)) = inflight.next().now_or_never() {
                    inflight_bytes -= done.bytes.min(inflight_bytes);
                    self.finish(done, &mut out);
                }
                if out.queued() >= EAGER_FLUSH {
                    out.try_write(&self.writer)?;
                }
            }
            // Collect whatever finished without waiting.
            while let Some(Some(done)) = inflight.next().now_or_never() {
                inflight_bytes -= done.bytes.min(inflight_bytes);
                self.finish(done, &mut out);
            }
            if closing && inflight.is_empty() && out.is_empty() {
                let _ = self.writer.shutdown().await;
                return Ok(());
            }
            let want_input = !closing
                && inflight.len() < self.config.max_inflight_requests
                && inflight_bytes + out.bytes < self.config.max_inflight_bytes;
            // Only a client that keeps one request at a time outstanding
            // is polled for: one that pipelines is busy with the replies
            // just sent, and the poll would take the CPU it needs to send
            // the next requests (on two cores, 4 KiB random reads at QD32:
            // about a sixth fewer with the poll).
            if want_input
                && inflight.is_empty()
                && out.is_empty()
                && started >= pipelined_until
                && !parse.is_bulk_payload()
                && self.poll_idle()
            {
                continue;
            }
            tokio::select! {
                biased;
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    inflight_bytes -= done.bytes.min(inflight_bytes);
                    self.finish(done, &mut out);
                }
                written = out.write_to(&mut self.writer), if !out.is_empty() => written?,
                count = read_more(&mut self.reader, &mut self.input, &mut parse), if want_input => {
                    if count? == 0 {
                        // EOF: the client hung up. Requests already running
                        // finish (their effects stand); nobody reads replies.
                        closing = true;
                        out.queue.clear();
                        out.bytes = 0;
                        while let Some(done) = inflight.next().await {
                            self.observe(&done);
                        }
                    }
                }
                changed = self.shutdown.changed(), if !closing => {
                    if changed.is_err() || *self.shutdown.borrow() {
                        closing = true;
                    }
                }
            }
        }
    }

    /// Polls the socket for up to `idle_poll` (nothing in flight, nothing
    /// to send); true when bytes arrived. End of stream and errors are left
    /// for the reactor path to see again.
    fn poll_idle(&mut self) -> bool {
        if self.config.idle_poll.is_zero() {
            return false;
        }
        // poll(2) honours the low-water mark a bulk payload left set.
        self.input.wake_at(&self.reader, 1);
        let deadline = Instant::now() + self.config.idle_poll;
        let socket = self.reader.as_ref().as_raw_fd();
        loop {
            if !sys::readable_now(socket) {
                if Instant::now() >= deadline {
                    return false;
                }
                std::hint::spin_loop();
                continue;
            }
            match self.input.read_now(&self.reader) {
                Ok(Some(count)) => return count > 0,
                Ok(None) => {}
                Err(_) => return false,
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Parses at most one request (or advances one payload) from the buffer.
    fn parse_one(&mut self, parse: &mut Parse, out: &mut Outgoing) -> Result<Step, ProtocolError> {
        if let Parse::Payload { data, total, filled, .. } = parse {
            let available = self.input.filled();
            let take = (*total - *filled).min(available.len());
            if let Some(data) = data {
                data[*filled..*filled + take].copy_from_slice(&available[..take]);
            }
            self.input.consume(take);
            *filled += take;
            if *filled < *total {
                return Ok(Step::NeedInput);
            }
            self.input.header_only = *total >= DIRECT_PAYLOAD;
            let Parse::Payload { cookie, command, data, .. } = std::mem::replace(parse, Parse::Header) else {
                unreachable!("matched above")
            };
            return Ok(match (command, data) {
                (Ok(command), Some(data)) => Step::Start(cookie, command, data),
                (Err(rejection), _) => {
                    self.reject(cookie, rejection, out);
                    Step::Handled
                }
                (Ok(_), None) => unreachable!("accepted writes always get a buffer"),
            });
        }
        let Some(header) = decode_request(self.input.filled())? else {
            self.input.reserve(REQUEST_HEADER_LEN);
            return Ok(Step::NeedInput);
        };
        self.input.consume(REQUEST_HEADER_LEN);
        let checked = check_request(&self.session, &header);
        let total = header.payload_length() as usize;
        self.input.header_only = false;
        if total > 0 {
            let data = checked.is_ok().then(|| self.pool.take(total));
            *parse = Parse::Payload { cookie: header.cookie, command: checked, data, total, filled: 0 };
            return Ok(Step::Handled);
        }
        Ok(match checked {
            Ok(Command::Disconnect) => Step::Disconnect,
            Ok(command) => Step::Start(header.cookie, command, IoBuffer::unpooled(Vec::new())),
            Err(rejection) => {
                self.reject(header.cookie, rejection, out);
                Step::Handled
            }
        })
    }

    fn reject(&self, cookie: u64, rejection: Rejection, out: &mut Outgoing) {
        tracing::debug!(cookie, errno = ?rejection.errno, reason = rejection.message, "request refused");
        encode_error(out.small(), self.session.structured, cookie, rejection.errno, rejection.message);
    }

    /// Starts a checked request on the device; returns its future and the
    /// payload bytes it holds.
    fn start(&self, cookie: u64, command: Command, payload: IoBuffer) -> (Pending<'a>, usize) {
        let device = self.device;
        let pool = self.pool.clone();
        let structured = self.session.structured;
        let context = self.session.base_allocation.unwrap_or(0);
        let started = Instant::now();
        let done = move |kind, bytes: usize, covered: u64, reply| Completion {
            cookie,
            kind,
            bytes,
            covered,
            started,
            reply,
        };
        let unit = |result: Result<(), DeviceError>| match result {
            Ok(()) => Reply::Ok,
            Err(error) => Reply::Error(error),
        };
        match command {
            Command::Read { offset, length, df } => {
                let length = length as usize;
                // A lone bulk reader's way is measured; reads are copied on
                // this thread while others read in bulk too (see BulkReads).
                let way = (length as u64 >= BULK_READ).then(|| self.bulk.way(length as u64)).flatten();
                // In place: the reply is ready now (the observer sees no
                // device time; sending is the server's).
                if let Some(slices) = (way == Some(BulkWay::InPlace))
                    .then(|| device.read_in_place(offset, length as u64))
                    .flatten()
                    .map(|mut slices| {
                        slices.retain(|slice| slice.length > 0);
                        slices
                    })
                    .filter(|slices| slices.iter().map(|slice| slice.length).sum::<usize>() == length)
                {
                    let reply = Reply::File(slices, offset, length);
                    return (
                        Box::pin(std::future::ready(done(RequestKind::Read, 0, length as u64, reply))),
                        0,
                    );
                }
                let future = async move {
                    let header = read_reply_header_len(structured);
                    let buffer = pool.take(header + length);
                    let read = if way == Some(BulkWay::Offload) {
                        device.read_offloaded(offset, buffer, header).await
                    } else {
                        device.read(offset, buffer, header).await
                    };
                    let reply = match read {
                        Ok((buffer, holes)) if structured && !df && !holes.is_empty() => {
                            let mut sparse = Vec::with_capacity(header + length);
                            encode_sparse_read(&mut sparse, cookie, offset, &buffer[header..], &holes);
                            Reply::Buffer(IoBuffer::unpooled(sparse))
                        }
                        Ok((mut buffer, _)) => {
                            fill_read_header(&mut buffer, structured, cookie, offset);
                            Reply::Buffer(buffer)
                        }
                        Err(error) => Reply::Error(error),
                    };
                    done(RequestKind::Read, length, length as u64, reply)
                };
                (Box::pin(future), length)
            }
            Command::Write { offset, fua, .. } => {
                let bytes = payload.len();
                let future = async move {
                    let result = device.write(offset, payload, fua).await;
                    done(RequestKind::Write, bytes, bytes as u64, unit(result))
                };
                (Box::pin(future), bytes)
            }
            Command::Flush => {
                let future = async move { done(RequestKind::Flush, 0, 0, unit(device.flush().await)) };
                (Box::pin(future), 0)
            }
            Command::Trim { offset, length, fua } => {
                let future = async move {
                    let result = device.trim(offset, u64::from(length), fua).await;
                    done(RequestKind::Trim, 0, u64::from(length), unit(result))
                };
                (Box::pin(future), 0)
            }
            Command::Cache { offset, length } => {
                let future = async move {
                    let result = device.cache(offset, u64::from(length)).await;
                    done(RequestKind::Cache, 0, u64::from(length), unit(result))
                };
                (Box::pin(future), 0)
            }
            Command::WriteZeroes { offset, length, flags } => {
                let future = async move {
                    let result = device.write_zeroes(offset, u64::from(length), flags).await;
                    done(RequestKind::WriteZeroes, 0, u64::from(length), unit(result))
                };
                (Box::pin(future), 0)
            }
            Command::BlockStatus { offset, length, req_one } => {
                let future = async move {
                    let reply = match device.block_status(offset, u64::from(length)).await {
                        Ok(extents) => {
                            let mut buffer = IoBuffer::unpooled(Vec::with_capacity(64));
                            encode_block_status(buffer.vec_mut(), cookie, context, length, req_one, &extents);
                            Reply::Buffer(buffer)
                        }
                        Err(error) => Reply::Error(error),
                    };
                    done(RequestKind::BlockStatus, 0, u64::from(length), reply)
                };
                (Box::pin(future), 0)
            }
            Command::Disconnect => unreachable!("handled by the parser"),
        }
    }

    /// Runs a flush on this thread, if the device can.
    fn flush_here(&self, cookie: u64) -> Option<Completion> {
        let started = Instant::now();
        let reply = match self.device.flush_here()? {
            Ok(()) => Reply::Ok,
            Err(error) => Reply::Error(error),
        };
        Some(Completion { cookie, kind: RequestKind::Flush, bytes: 0, covered: 0, started, reply })
    }

    fn observe(&self, done: &Completion) {
        let ok = !matches!(done.reply, Reply::Error(_));
        self.observer.request_done(done.kind, done.covered, done.started.elapsed(), ok);
    }

    fn finish(&self, done: Completion, out: &mut Outgoing) {
        self.observe(&done);
        match done.reply {
            Reply::Ok => encode_ok(out.small(), done.cookie),
            Reply::Buffer(buffer) if buffer.len() <= 1024 => out.small().extend_from_slice(&buffer),
            Reply::Buffer(buffer) => out.push(buffer),
            Reply::File(slices, offset, length) => {
                encode_read_header(out.small(), self.session.structured, done.cookie, offset, length);
                for slice in slices {
                    out.push_file(slice);
                }
            }
            Reply::Error(error) => {
                if error.errno == Errno::Io {
                    tracing::warn!(kind = done.kind.name(), %error, "request failed");
                }
                encode_error(out.small(), self.session.structured, done.cookie, error.errno, &error.message);
            }
        }
    }
}
