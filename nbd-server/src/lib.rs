//! An NBD (Network Block Device) server library.
//!
//! The protocol is implemented sans-IO: [`handshake::Handshake`] is a state
//! machine for the fixed-newstyle handshake and [`transmission`] holds the
//! request decoder, the request checks and the reply encoders; neither does
//! IO or reads a clock. [`server`] is the thin tokio driver around them.
//!
//! What it serves is abstract: a [`device::Catalog`] resolves export names
//! to [`device::BlockDevice`]s. This crate knows nothing of journals, files
//! or volumes.
//!
//! Implemented (see `docs/nbd.md` for the test of each): fixed newstyle with
//! EXPORT_NAME, INFO, GO, LIST, ABORT, STRUCTURED_REPLY, LIST/SET_META_CONTEXT
//! (`base:allocation`); READ (structured data and hole chunks, DF), WRITE,
//! FLUSH, TRIM, WRITE_ZEROES (NO_HOLE, FAST_ZERO), BLOCK_STATUS (REQ_ONE),
//! CACHE, DISC; simple replies; many requests in flight; CAN_MULTI_CONN.
//! Not implemented: TLS (STARTTLS gets `ERR_UNSUP`), extended headers, RESIZE.

pub mod buffer;
pub mod bulk;
pub mod device;
pub mod file;
pub mod handshake;
pub mod protocol;
pub mod server;
mod sys;
pub mod transmission;

pub use buffer::{BufferPool, IoBuffer};
pub use device::{
    BlockDevice, Catalog, DeviceError, Errno, Export, ExportInfo, Extent, FileSlice, Listing, LookupError,
    SingleExport, SyncCost, ZeroFlags,
};
pub use file::FileDevice;
pub use server::{Observer, RequestKind, Server, ServerConfig};
