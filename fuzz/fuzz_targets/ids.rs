//! The typed ids of `cairn_core::id`: text forms and binary payloads.
//!
//! The input is tried as text (every id type) and as a payload (every type's `from_bytes`, and
//! `PREFIX ++ base58(input)` through the text parser). Anything accepted must be its value's
//! only spelling: it prints (or encodes) back to exactly the input.

#![no_main]

use std::fmt::{Debug, Display};
use std::str::FromStr;

use cairn_core::{
    FilesJobId, IdError, LibraryId, NodeId, ObjectId, PartHash, SpaceId, UploadJobId, VersionHash,
    WriteToken,
};
use libfuzzer_sys::fuzz_target;

fn text<T: FromStr<Err = IdError> + Display + Debug + PartialEq>(s: &str) -> bool {
    match s.parse::<T>() {
        Ok(v) => {
            assert_eq!(v.to_string(), s, "accepted text is not canonical");
            assert_eq!(v.to_string().parse::<T>().as_ref(), Ok(&v));
            true
        }
        Err(_) => false,
    }
}

fn payload<T: FromStr<Err = IdError> + Debug + PartialEq>(
    prefix: &str,
    bytes: &[u8],
    from_bytes: fn(&[u8]) -> Result<T, IdError>,
    to_bytes: fn(&T) -> Vec<u8>,
) {
    let decoded = from_bytes(bytes);
    if let Ok(v) = &decoded {
        assert_eq!(to_bytes(v), bytes, "accepted payload is not canonical");
    }
    let t = format!("{prefix}{}", bs58::encode(bytes).into_string());
    let parsed = t.parse::<T>();
    if t.len() > 160 {
        assert!(matches!(parsed, Err(IdError::TooLong { .. })), "{t}");
    } else {
        assert_eq!(parsed, decoded, "{t}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let accepted = [
            text::<LibraryId>(s),
            text::<ObjectId>(s),
            text::<SpaceId>(s),
            text::<NodeId>(s),
            text::<UploadJobId>(s),
            text::<FilesJobId>(s),
            text::<WriteToken>(s),
            text::<VersionHash>(s),
            text::<PartHash>(s),
        ];
        assert!(accepted.iter().filter(|a| **a).count() <= 1, "{s:?}");
    }
    if data.len() > 120 {
        return;
    }
    payload("ilib", data, LibraryId::from_bytes, LibraryId::to_bytes);
    payload("iq__", data, ObjectId::from_bytes, ObjectId::to_bytes);
    payload("ispc", data, SpaceId::from_bytes, SpaceId::to_bytes);
    payload("inod", data, NodeId::from_bytes, NodeId::to_bytes);
    payload("iqfu", data, UploadJobId::from_bytes, UploadJobId::to_bytes);
    payload("iqfj", data, FilesJobId::from_bytes, FilesJobId::to_bytes);
    payload("tqw__", data, WriteToken::from_bytes, WriteToken::to_bytes);
    payload("hq__", data, VersionHash::from_bytes, VersionHash::to_bytes);
    payload("hqp_", data, PartHash::from_bytes, PartHash::to_bytes);
    for (decoded, encode) in [
        (
            ObjectId::from_coded_bytes(data).map(|v| v.to_coded_bytes()),
            0,
        ),
        (
            NodeId::from_coded_bytes(data).map(|v| v.to_coded_bytes()),
            1,
        ),
        (
            LibraryId::from_coded_bytes(data).map(|v| v.to_coded_bytes()),
            2,
        ),
    ] {
        if let Ok(bytes) = decoded {
            assert_eq!(bytes, data, "coded id {encode} is not canonical");
        }
    }
});
