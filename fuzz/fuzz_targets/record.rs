//! Stored CBOR records (`cairn_core::record::Record::decode`) of every type in `cairn-store`
//! and `cairn-jobs`, on arbitrary bytes.
//!
//! A decode must be a `Corrupt` error or a value whose encoding is stable: encode, decode and
//! encode again give the same bytes. Never a panic, never an unbounded allocation.

#![no_main]

use cairn_core::record::Record;
use cairn_core::ErrorKind;
use cairn_jobs::records::{
    DraftRecord, FilesJobRecord, KnownFile, LibraryRecord, ObjectRecord, SegmentRecord, UjChunk,
    UploadJobRecord, VersionRecord,
};
use cairn_jobs::tree::DirNode;
use cairn_store::pack::ChunkLoc;
use cairn_store::store::PackInfo;
use cairn_store::PartRecord;
use libfuzzer_sys::fuzz_target;

fn check<T: Record>(bytes: &[u8]) {
    match T::decode(bytes) {
        Ok(value) => {
            let once = value.encode();
            let again = T::decode(&once)
                .unwrap_or_else(|e| panic!("{}: re-encoded record fails: {e}", T::NAME));
            assert_eq!(again.encode(), once, "{}: unstable round trip", T::NAME);
        }
        Err(e) => assert_eq!(e.kind, ErrorKind::Corrupt, "{}: {e}", T::NAME),
    }
}

fuzz_target!(|data: &[u8]| {
    check::<PartRecord>(data);
    check::<ChunkLoc>(data);
    check::<PackInfo>(data);
    check::<DirNode>(data);
    check::<LibraryRecord>(data);
    check::<ObjectRecord>(data);
    check::<VersionRecord>(data);
    check::<DraftRecord>(data);
    check::<FilesJobRecord>(data);
    check::<UploadJobRecord>(data);
    check::<UjChunk>(data);
    check::<SegmentRecord>(data);
    check::<KnownFile>(data);
});
