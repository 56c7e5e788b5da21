//! Cairn's Files Job engine.
//!
//! Libraries hold content objects; an object is a history of immutable versions. Edits happen in
//! a draft (write token): a files job applies ops (add, del, move, copy, link, meta) to the
//! draft's tree and plans new files onto upload jobs; clients stream each upload job's bytes,
//! which the store chunks, deduplicates and makes durable; finalize turns the draft into a
//! version whose hash follows the reference layout. Files of versions (and complete files of
//! drafts) can be read at any byte range.
//!
//! Module map: [`planner`] (pure), [`ops`] (request validation), [`tree`] (directory nodes and
//! the `files` JSON), [`engine`] (objects, drafts, versions, metadata), `files` (files jobs,
//! finalize), `upload` (ingest and seal), `read` (file reads), `maint` (gc, fsck).

pub mod bignode;
pub mod engine;
pub mod files;
pub mod maint;
pub mod ops;
pub mod planner;
pub mod read;
pub mod records;
pub mod tree;
pub mod upload;

pub use engine::{Engine, EngineConfig, QInfo, Qhit};
pub use files::{FilesJobCreated, FilesJobStatus, ForceReport, HeadCondition, Versions};
pub use maint::{EngineFsckReport, EngineGcReport, EngineStats};
pub use ops::FilesJobRequest;
pub use planner::PlanLimits;
pub use read::FileHandle;
pub use upload::{SegmentStatus, UploadReply, UploadStatus};
