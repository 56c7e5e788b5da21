//! Cairn's storage layer.
//!
//! Bytes enter as file segments, are cut by the [`chunker`] into content-defined chunks, hashed
//! with blake3, deduplicated against the [`index`], and appended to [`pack`] files. A [`Store`]
//! write session makes its chunks durable (group-committed fsync) before the index batch that
//! records them; reads verify every chunk's blake3. [`gc`] and [`fsck`] are library functions
//! that return reports.
//!
//! The layers above (cairn-jobs) add their own column families to the same RocksDB database so
//! their records change in the same atomic batch as the refcounts they imply.

mod bufpool;
pub mod cache;
pub mod chunker;
mod flusher;
pub mod fsck;
pub mod gc;
pub mod index;
pub mod outboard;
pub mod pack;
pub mod range;
mod room;
pub mod staging;
pub mod store;

pub use chunker::{ChunkParams, SegmentChunker};
pub use fsck::{ExternalRefs, FsckReport};
pub use gc::{GcOptions, GcReport, Released};
pub use index::{Batch, CfKind, Index};
pub use store::{
    part_digest, part_key, ChunkRef, PartRecord, Store, StoreConfig, StoreStats, Waiter,
    WriteSession,
};
