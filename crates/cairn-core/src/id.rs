//! Typed identifiers of the Files API, in the binary layouts of the Eluvio Content Fabric.
//!
//! The official client never looks inside most ids, but it does decode a few of them (it splits a
//! version hash to find the object it belongs to, and derives part hashes from it), so the payload
//! layouts follow the Fabric's `format/id`, `format/token` and `format/hash` exactly. The only
//! deliberate difference is the digest: Cairn hashes with blake3 where the Fabric uses sha256; both
//! are 32 bytes, so the layouts are unchanged.
//!
//! Every id has a text form `PREFIX ++ base58(payload)` (bitcoin alphabet). The prefix is what
//! makes an id self-describing in URLs and logs, so parsing insists on the exact prefix of the
//! expected type instead of guessing. The binary payload (`to_bytes`/`from_bytes`) is what the
//! storage layer uses as keys: it is shorter than the text and sorts the same way for every id of
//! one type.
//!
//! All types serialize (serde) as their text form, so JSON responses and CBOR records carry the
//! same string the client sees; there is exactly one representation to get right.

use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use crate::hash::Digest;

/// Longest text form accepted by any parser here.
///
/// The longest real id (a version hash with a huge size) is under 90 characters. Base58 decoding
/// is quadratic in the input length and ids arrive straight from HTTP paths, so anything much
/// longer is rejected before decoding rather than handed to the decoder.
const MAX_TEXT_LEN: usize = 160;

/// Why a text or binary id was rejected.
///
/// `kind` names the type (or the part of a composite id) being parsed, so a message read in a log
/// says what was expected without further context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The text does not start with the prefix of the expected type.
    #[error("{kind} must start with `{expected}`, found `{found}`")]
    WrongPrefix {
        kind: &'static str,
        expected: &'static str,
        found: String,
    },
    /// The text is far longer than any id of this type could be.
    #[error("{kind} text is {len} characters long; no valid id is longer than {max}", max = MAX_TEXT_LEN)]
    TooLong { kind: &'static str, len: usize },
    /// The part after the prefix is not base58 (bitcoin alphabet: no `0`, `O`, `I` or `l`).
    #[error("{kind} is not valid base58: {reason}")]
    BadBase58 { kind: &'static str, reason: String },
    /// A fixed-size field has the wrong number of bytes.
    #[error("{kind} must be {expected} bytes, got {actual}")]
    WrongLength {
        kind: &'static str,
        expected: usize,
        actual: usize,
    },
    /// The payload ends before a field it announces.
    #[error("{kind} is truncated: {needed} more bytes needed, only {remaining} left")]
    Truncated {
        kind: &'static str,
        needed: usize,
        remaining: usize,
    },
    /// A length or size field is not a valid (minimal, in-range) unsigned varint.
    #[error("{kind} has a bad varint: {reason}")]
    BadVarint { kind: &'static str, reason: String },
    /// An embedded id carries the type code of a different kind of id.
    #[error("{kind} has type code {actual}, expected {expected}")]
    BadCode {
        kind: &'static str,
        expected: u8,
        actual: u8,
    },
    /// Bytes remain after the last field; accepting them would give one id two spellings.
    #[error("{kind} has {count} trailing bytes")]
    TrailingBytes { kind: &'static str, count: usize },
    /// `hqpe` part hashes (encrypted parts) exist in the Fabric, but Cairn stores no encryption.
    #[error("encrypted part hashes (`hqpe`) are not supported")]
    EncryptedPart,
}

// ---------------------------------------------------------------------------------------------
// Text form, shared by every type.

/// What a type must provide to get the `PREFIX ++ base58(payload)` text form.
trait Textual: Sized {
    const PREFIX: &'static str;
    const KIND: &'static str;

    fn payload(&self) -> Vec<u8>;

    fn from_payload(bytes: &[u8]) -> Result<Self, IdError>;

    /// Hook for prefixes that deserve a more specific error than "wrong prefix".
    fn check_foreign_prefix(_text: &str) -> Result<(), IdError> {
        Ok(())
    }
}

fn format_text<T: Textual>(id: &T, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    f.write_str(T::PREFIX)?;
    f.write_str(&bs58::encode(id.payload()).into_string())
}

fn parse_text<T: Textual>(text: &str) -> Result<T, IdError> {
    T::check_foreign_prefix(text)?;
    let body = text
        .strip_prefix(T::PREFIX)
        .ok_or_else(|| wrong_prefix::<T>(text))?;
    if text.len() > MAX_TEXT_LEN {
        return Err(IdError::TooLong {
            kind: T::KIND,
            len: text.len(),
        });
    }
    let bytes = bs58::decode(body)
        .into_vec()
        .map_err(|e| IdError::BadBase58 {
            kind: T::KIND,
            reason: e.to_string(),
        })?;
    T::from_payload(&bytes)
}

/// Reports the start of the offending text, cut short so a garbage megabyte is not echoed back.
fn wrong_prefix<T: Textual>(text: &str) -> IdError {
    IdError::WrongPrefix {
        kind: T::KIND,
        expected: T::PREFIX,
        found: text.chars().take(T::PREFIX.len() + 8).collect(),
    }
}

/// Deserializes any [`Textual`] id from a string, borrowed or not (CBOR readers hand out
/// temporary strings, JSON readers may borrow), without an intermediate allocation.
struct TextVisitor<T>(PhantomData<T>);

impl<T: Textual> de::Visitor<'_> for TextVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a {} string starting with `{}`", T::KIND, T::PREFIX)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        parse_text(text).map_err(E::custom)
    }
}

/// Wires the std and serde traits of a [`Textual`] type to its text form.
macro_rules! impl_text_form {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                format_text(self, f)
            }
        }

        /// Same as `Display`: the text form is what people grep logs for.
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                format_text(self, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(text: &str) -> Result<Self, IdError> {
                parse_text(text)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(TextVisitor(PhantomData))
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Binary helpers.

fn fixed_array<const N: usize>(bytes: &[u8], kind: &'static str) -> Result<[u8; N], IdError> {
    bytes.try_into().map_err(|_| IdError::WrongLength {
        kind,
        expected: N,
        actual: bytes.len(),
    })
}

fn push_uvarint(out: &mut Vec<u8>, value: u64) {
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.extend_from_slice(unsigned_varint::encode::u64(value, &mut buf));
}

/// A length-prefixed field, as the Fabric frames the parts of a token.
fn push_chunk(out: &mut Vec<u8>, bytes: &[u8]) {
    push_uvarint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Cursor over a payload that turns every kind of malformation into an [`IdError`].
struct Reader<'a> {
    rest: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], kind: &'static str) -> Self {
        Reader { rest: bytes, kind }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], IdError> {
        if n > self.rest.len() {
            return Err(IdError::Truncated {
                kind: self.kind,
                needed: n,
                remaining: self.rest.len(),
            });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], IdError> {
        fixed_array(self.take(N)?, self.kind)
    }

    /// Rejects non-minimal encodings too, so every value has exactly one byte form.
    fn uvarint(&mut self) -> Result<u64, IdError> {
        let (value, tail) =
            unsigned_varint::decode::u64(self.rest).map_err(|e| IdError::BadVarint {
                kind: self.kind,
                reason: e.to_string(),
            })?;
        // The decoder keeps only the low bit of a tenth byte (`0x80` x9 then `0x02` reads as 0):
        // refuse what would not encode back to the same bytes.
        let used = &self.rest[..self.rest.len() - tail.len()];
        let mut buf = unsigned_varint::encode::u64_buffer();
        if unsigned_varint::encode::u64(value, &mut buf) != used {
            return Err(IdError::BadVarint {
                kind: self.kind,
                reason: "overflows 64 bits".to_string(),
            });
        }
        self.rest = tail;
        Ok(value)
    }

    fn chunk(&mut self) -> Result<&'a [u8], IdError> {
        let len = self.uvarint()?;
        self.take(usize::try_from(len).unwrap_or(usize::MAX))
    }

    fn finish(self) -> Result<(), IdError> {
        match self.rest.len() {
            0 => Ok(()),
            count => Err(IdError::TrailingBytes {
                kind: self.kind,
                count,
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixed-size ids.

/// Defines an id that is just `LEN` opaque bytes, plus the Fabric type code it carries when it is
/// embedded in another id (the Fabric's binary `id.ID` is `code ++ bytes`).
macro_rules! fixed_id {
    (
        $(#[$meta:meta])*
        $name:ident, len = $len:literal, prefix = $prefix:literal, code = $code:literal
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name([u8; $len]);

        impl $name {
            /// Length of the payload in bytes.
            pub const LEN: usize = $len;
            /// Prefix of the text form.
            pub const PREFIX: &'static str = $prefix;
            /// Fabric type code, used where ids are embedded in tokens.
            pub const CODE: u8 = $code;

            /// Wraps raw payload bytes; every byte string of the right length is a valid id.
            pub const fn new(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }

            /// A fresh id from the thread-local CSPRNG; collisions are as likely as guessing
            /// the bytes.
            pub fn random() -> Self {
                $name(rand::random())
            }

            /// The payload bytes (the storage key form).
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The payload bytes, owned.
            pub fn to_bytes(&self) -> Vec<u8> {
                self.0.to_vec()
            }

            /// Parses payload bytes, which must be exactly [`Self::LEN`] long.
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
                fixed_array(bytes, stringify!($name)).map($name)
            }

            /// The Fabric's binary `id.ID`: type code, then the payload.
            pub fn to_coded_bytes(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity(1 + $len);
                out.push(Self::CODE);
                out.extend_from_slice(&self.0);
                out
            }

            /// Parses the Fabric's binary `id.ID`, checking the type code.
            pub fn from_coded_bytes(bytes: &[u8]) -> Result<Self, IdError> {
                Self::from_coded_in(bytes, stringify!($name))
            }

            /// Like [`Self::from_coded_bytes`], with errors naming the enclosing field.
            fn from_coded_in(bytes: &[u8], kind: &'static str) -> Result<Self, IdError> {
                if bytes.len() != 1 + $len {
                    return Err(IdError::WrongLength {
                        kind,
                        expected: 1 + $len,
                        actual: bytes.len(),
                    });
                }
                if bytes[0] != Self::CODE {
                    return Err(IdError::BadCode {
                        kind,
                        expected: Self::CODE,
                        actual: bytes[0],
                    });
                }
                fixed_array(&bytes[1..], kind).map($name)
            }
        }

        impl Textual for $name {
            const PREFIX: &'static str = $prefix;
            const KIND: &'static str = stringify!($name);

            fn payload(&self) -> Vec<u8> {
                self.to_bytes()
            }

            fn from_payload(bytes: &[u8]) -> Result<Self, IdError> {
                Self::from_bytes(bytes)
            }
        }

        impl_text_form!($name);
    };
}

fixed_id! {
    /// A library: the container of content objects (`ilib…`).
    LibraryId, len = 20, prefix = "ilib", code = 3
}

fixed_id! {
    /// A content object (`iq__…`); its versions are named by [`VersionHash`]es.
    ObjectId, len = 20, prefix = "iq__", code = 4
}

fixed_id! {
    /// A content space, the root of the Fabric's naming (`ispc…`).
    SpaceId, len = 20, prefix = "ispc", code = 6
}

fixed_id! {
    /// A Fabric node (`inod…`); write tokens name the node that holds the draft.
    NodeId, len = 20, prefix = "inod", code = 9
}

fixed_id! {
    /// A Files-API upload job (`iqfu…`), created by `POST …/file_jobs`.
    UploadJobId, len = 16, prefix = "iqfu", code = 7
}

fixed_id! {
    /// A Files-API files job (`iqfj…`), grouping the upload jobs of one request.
    FilesJobId, len = 16, prefix = "iqfj", code = 8
}

impl LibraryId {
    /// The library's own content object, which shares the library's 20 bytes (that is where the
    /// Fabric keeps a library's metadata).
    pub const fn object_id(&self) -> ObjectId {
        ObjectId(self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Write tokens.

/// Names an open draft of an object (`tqw__…`): which object, on which node, plus 16 random
/// bytes so that two drafts of the same object never share a token.
///
/// Payload: `uvarint(21) [4] object  uvarint(21) [9] node  uvarint(16) rand`, i.e. each part is
/// length-prefixed and the ids carry their type codes, exactly as the Fabric frames it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WriteToken {
    pub object: ObjectId,
    pub node: NodeId,
    pub rand: [u8; WriteToken::RAND_LEN],
}

impl WriteToken {
    /// Prefix of the text form.
    pub const PREFIX: &'static str = "tqw__";
    /// Length of the random part.
    pub const RAND_LEN: usize = 16;

    /// A new token for a draft of `object` held by `node`, with fresh random bytes.
    pub fn new(object: ObjectId, node: NodeId) -> Self {
        WriteToken {
            object,
            node,
            rand: rand::random(),
        }
    }

    /// The payload bytes (the storage key form).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Self::bytes_prefix(&self.object);
        push_chunk(&mut out, &self.node.to_coded_bytes());
        push_chunk(&mut out, &self.rand);
        out
    }

    /// How [`WriteToken::to_bytes`] begins for every token of `object`, and for no token of
    /// another object (the object id is length-prefixed): a store keyed by tokens' bytes finds
    /// one object's drafts with a prefix scan.
    pub fn bytes_prefix(object: &ObjectId) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + 21 + 21 + Self::RAND_LEN);
        push_chunk(&mut out, &object.to_coded_bytes());
        out
    }

    /// Parses payload bytes; every length and type code must match exactly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let mut reader = Reader::new(bytes, "WriteToken");
        let object = ObjectId::from_coded_in(reader.chunk()?, "WriteToken object id")?;
        let node = NodeId::from_coded_in(reader.chunk()?, "WriteToken node id")?;
        let rand = fixed_array(reader.chunk()?, "WriteToken random part")?;
        reader.finish()?;
        Ok(WriteToken { object, node, rand })
    }
}

impl Textual for WriteToken {
    const PREFIX: &'static str = WriteToken::PREFIX;
    const KIND: &'static str = "WriteToken";

    fn payload(&self) -> Vec<u8> {
        self.to_bytes()
    }

    fn from_payload(bytes: &[u8]) -> Result<Self, IdError> {
        Self::from_bytes(bytes)
    }
}

impl_text_form!(WriteToken);

// ---------------------------------------------------------------------------------------------
// Content hashes.

/// Names one finalized version of an object (`hq__…`).
///
/// Payload: `digest(32) ++ uvarint(size) ++ object(20)`. The object id is embedded (without a
/// type code) so a client holding only a version hash can tell which object it belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionHash {
    pub digest: Digest,
    pub size: u64,
    pub object: ObjectId,
}

impl VersionHash {
    /// Prefix of the text form.
    pub const PREFIX: &'static str = "hq__";

    pub fn new(digest: Digest, size: u64, object: ObjectId) -> Self {
        VersionHash {
            digest,
            size,
            object,
        }
    }

    /// The hash of the version's root part: same digest and size, no object. The official
    /// client derives it the same way, so both sides must agree on it.
    pub fn part_hash(&self) -> PartHash {
        PartHash::new(self.digest, self.size)
    }

    /// The payload bytes (the storage key form).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 10 + ObjectId::LEN);
        out.extend_from_slice(self.digest.as_bytes());
        push_uvarint(&mut out, self.size);
        out.extend_from_slice(self.object.as_bytes());
        out
    }

    /// Parses payload bytes; nothing may follow the object id.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let mut reader = Reader::new(bytes, "VersionHash");
        let digest = Digest::from_bytes(reader.array()?);
        let size = reader.uvarint()?;
        let object = ObjectId(reader.array()?);
        reader.finish()?;
        Ok(VersionHash::new(digest, size, object))
    }
}

impl Textual for VersionHash {
    const PREFIX: &'static str = VersionHash::PREFIX;
    const KIND: &'static str = "VersionHash";

    fn payload(&self) -> Vec<u8> {
        self.to_bytes()
    }

    fn from_payload(bytes: &[u8]) -> Result<Self, IdError> {
        Self::from_bytes(bytes)
    }
}

impl_text_form!(VersionHash);

/// Names an immutable blob of bytes (`hqp_…`): its digest and its length.
///
/// Payload: `digest(32) ++ uvarint(size)`. Carrying the size lets a reader allocate and
/// range-check before fetching anything.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartHash {
    pub digest: Digest,
    pub size: u64,
}

impl PartHash {
    /// Prefix of the text form.
    pub const PREFIX: &'static str = "hqp_";
    /// Prefix of encrypted parts, which are recognised only to be refused clearly.
    const ENCRYPTED_PREFIX: &'static str = "hqpe";

    pub fn new(digest: Digest, size: u64) -> Self {
        PartHash { digest, size }
    }

    /// The payload bytes (the storage key form).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 10);
        out.extend_from_slice(self.digest.as_bytes());
        push_uvarint(&mut out, self.size);
        out
    }

    /// Parses payload bytes; nothing may follow the size.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdError> {
        let mut reader = Reader::new(bytes, "PartHash");
        let digest = Digest::from_bytes(reader.array()?);
        let size = reader.uvarint()?;
        reader.finish()?;
        Ok(PartHash::new(digest, size))
    }
}

impl Textual for PartHash {
    const PREFIX: &'static str = PartHash::PREFIX;
    const KIND: &'static str = "PartHash";

    fn payload(&self) -> Vec<u8> {
        self.to_bytes()
    }

    fn from_payload(bytes: &[u8]) -> Result<Self, IdError> {
        Self::from_bytes(bytes)
    }

    fn check_foreign_prefix(text: &str) -> Result<(), IdError> {
        if text.starts_with(PartHash::ENCRYPTED_PREFIX) {
            return Err(IdError::EncryptedPart);
        }
        Ok(())
    }
}

impl_text_form!(PartHash);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Text → value → text, payload → value, and both serde formats, for one value.
    fn assert_round_trips<T>(
        value: T,
        to_bytes: fn(&T) -> Vec<u8>,
        from_bytes: fn(&[u8]) -> Result<T, IdError>,
    ) where
        T: Textual + FromStr<Err = IdError> + fmt::Display + fmt::Debug + PartialEq + Serialize,
        T: for<'de> Deserialize<'de>,
    {
        let text = value.to_string();
        assert!(text.starts_with(T::PREFIX), "{text}");
        assert_eq!(format!("{value:?}"), text);
        assert_eq!(text.parse::<T>().unwrap(), value);
        assert_eq!(from_bytes(&to_bytes(&value)).unwrap(), value);

        let json = serde_json::to_string(&value).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);

        let mut cbor = Vec::new();
        ciborium::into_writer(&value, &mut cbor).unwrap();
        assert_eq!(cbor[0] >> 5, 3, "CBOR must carry a text string");
        assert_eq!(
            ciborium::from_reader::<T, _>(cbor.as_slice()).unwrap(),
            value
        );
    }

    macro_rules! fixed_round_trip {
        ($test:ident, $name:ident, $len:literal) => {
            proptest! {
                #[test]
                fn $test(bytes in any::<[u8; $len]>()) {
                    let id = $name::new(bytes);
                    assert_round_trips(id, $name::to_bytes, $name::from_bytes);
                    prop_assert_eq!(id.as_bytes(), &bytes);
                    prop_assert_eq!($name::from_coded_bytes(&id.to_coded_bytes()).unwrap(), id);
                }
            }
        };
    }

    fixed_round_trip!(library_id_round_trips, LibraryId, 20);
    fixed_round_trip!(object_id_round_trips, ObjectId, 20);
    fixed_round_trip!(space_id_round_trips, SpaceId, 20);
    fixed_round_trip!(node_id_round_trips, NodeId, 20);
    fixed_round_trip!(upload_job_id_round_trips, UploadJobId, 16);
    fixed_round_trip!(files_job_id_round_trips, FilesJobId, 16);

    proptest! {
        #[test]
        fn write_token_round_trips(o in any::<[u8; 20]>(), n in any::<[u8; 20]>(), r in any::<[u8; 16]>()) {
            let token = WriteToken { object: ObjectId::new(o), node: NodeId::new(n), rand: r };
            assert_round_trips(token, WriteToken::to_bytes, WriteToken::from_bytes);
        }

        #[test]
        fn version_hash_round_trips(d in any::<[u8; 32]>(), size in any::<u64>(), o in any::<[u8; 20]>()) {
            let hash = VersionHash::new(Digest::from_bytes(d), size, ObjectId::new(o));
            assert_round_trips(hash, VersionHash::to_bytes, VersionHash::from_bytes);
        }

        #[test]
        fn part_hash_round_trips(d in any::<[u8; 32]>(), size in any::<u64>()) {
            let hash = PartHash::new(Digest::from_bytes(d), size);
            assert_round_trips(hash, PartHash::to_bytes, PartHash::from_bytes);
        }
    }

    #[test]
    fn recorded_job_ids_parse_and_format_back() {
        let files = "iqfjKtr738S93t2JahZMfwRToq";
        assert_eq!(files.parse::<FilesJobId>().unwrap().to_string(), files);
        let upload = "iqfuKQ1c7xreTb3RjumG3rMXVg";
        assert_eq!(upload.parse::<UploadJobId>().unwrap().to_string(), upload);
    }

    #[test]
    fn pinned_write_token() {
        let token = WriteToken {
            object: ObjectId::new([1; 20]),
            node: NodeId::new([2; 20]),
            rand: [3; 16],
        };
        let text = token.to_string();
        assert_eq!(text, PINNED_TOKEN);
        let payload = bs58::decode(&text[WriteToken::PREFIX.len()..])
            .into_vec()
            .unwrap();
        assert_eq!(payload[..4], [21, 4, 1, 1]);
        assert_eq!(payload[22..24], [21, 9]);
        assert_eq!(payload[44], 16);
        assert_eq!(payload.len(), 1 + 21 + 1 + 21 + 1 + 16);
        assert_eq!(PINNED_TOKEN.parse::<WriteToken>().unwrap(), token);
    }

    const PINNED_TOKEN: &str =
        "tqw__HSPwEeLSob2fsKF4zJzhJ82UF28avwHXspHrX4xhqNCypbmwRbPArRfpSjRCfPb4Ety1sPnm3LrAuAC9Lrn";

    #[test]
    fn pinned_version_hash() {
        let digest = Digest::of(b"cairn");
        let hash = VersionHash::new(digest, 1234, ObjectId::new([7; 20]));
        let text = hash.to_string();
        assert_eq!(text, PINNED_VERSION_HASH);

        let payload = bs58::decode(&text[VersionHash::PREFIX.len()..])
            .into_vec()
            .unwrap();
        assert_eq!(&payload[..32], digest.as_bytes());
        // 1234 = 9 * 128 + 82: 82 with the continuation bit (0xd2), then 9.
        assert_eq!(payload[32..34], [0xd2, 0x09]);
        assert_eq!(payload[34..], [7; 20]);

        let part = hash.part_hash();
        assert_eq!(part, PartHash::new(digest, 1234));
        let part_payload = bs58::decode(&part.to_string()[PartHash::PREFIX.len()..])
            .into_vec()
            .unwrap();
        assert_eq!(part_payload, payload[..34]);
    }

    const PINNED_VERSION_HASH: &str =
        "hq__pkMQhXFXGUGCkPvm4DJqnyXvZ8ygQtxzpH5KWTmzkrxUUD7abEAoUCzoPfiRZKj79cYLHmpQv";

    #[test]
    fn random_ids_differ_and_tokens_keep_their_parts() {
        assert_ne!(ObjectId::random(), ObjectId::random());
        assert_ne!(FilesJobId::random(), FilesJobId::random());
        assert_ne!(UploadJobId::random(), UploadJobId::random());
        let (object, node) = (ObjectId::random(), NodeId::random());
        let (a, b) = (WriteToken::new(object, node), WriteToken::new(object, node));
        assert_ne!(a, b);
        assert_eq!((a.object, a.node), (object, node));
    }

    #[test]
    fn a_tokens_bytes_begin_with_its_objects_prefix_and_no_other_objects() {
        let node = NodeId::random();
        let (o, other) = (ObjectId::new([7; 20]), ObjectId::new([8; 20]));
        let bytes = WriteToken::new(o, node).to_bytes();
        assert!(bytes.starts_with(&WriteToken::bytes_prefix(&o)));
        assert!(!bytes.starts_with(&WriteToken::bytes_prefix(&other)));
        assert!(WriteToken::bytes_prefix(&o).len() < bytes.len());
    }

    #[test]
    fn library_object_shares_the_library_bytes() {
        let lib = LibraryId::random();
        assert_eq!(lib.object_id().as_bytes(), lib.as_bytes());
    }

    #[test]
    fn wrong_prefix_names_the_expected_prefix() {
        let object = ObjectId::new([5; 20]).to_string();
        let err = object.parse::<LibraryId>().unwrap_err();
        assert!(
            matches!(
                err,
                IdError::WrongPrefix {
                    expected: "ilib",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("`ilib`"), "{err}");
        let err = "".parse::<ObjectId>().unwrap_err();
        assert!(matches!(
            err,
            IdError::WrongPrefix {
                expected: "iq__",
                ..
            }
        ));
        let err = "hq__".parse::<PartHash>().unwrap_err();
        assert!(matches!(err, IdError::WrongPrefix { .. }));
    }

    #[test]
    fn empty_payload_is_wrong_length() {
        let err = "iq__".parse::<ObjectId>().unwrap_err();
        assert_eq!(
            err,
            IdError::WrongLength {
                kind: "ObjectId",
                expected: 20,
                actual: 0
            }
        );
    }

    #[test]
    fn non_bitcoin_base58_characters_are_rejected() {
        let good = ObjectId::new([9; 20]).to_string();
        for bad in ['0', 'O', 'I', 'l', '+'] {
            let text = format!("{}{bad}{}", &good[..6], &good[6..]);
            let err = text.parse::<ObjectId>().unwrap_err();
            assert!(matches!(err, IdError::BadBase58 { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn absurdly_long_text_is_rejected_before_decoding() {
        let text = format!("iq__{}", "2".repeat(10_000));
        assert!(matches!(
            text.parse::<ObjectId>(),
            Err(IdError::TooLong { .. })
        ));
    }

    fn encode(prefix: &str, payload: &[u8]) -> String {
        format!("{prefix}{}", bs58::encode(payload).into_string())
    }

    #[test]
    fn truncated_and_trailing_payloads_are_rejected() {
        let id = NodeId::new([4; 20]);
        let err = encode("inod", &id.as_bytes()[..19])
            .parse::<NodeId>()
            .unwrap_err();
        assert!(matches!(
            err,
            IdError::WrongLength {
                expected: 20,
                actual: 19,
                ..
            }
        ));
        let mut long = id.to_bytes();
        long.push(0);
        let err = encode("inod", &long).parse::<NodeId>().unwrap_err();
        assert!(matches!(err, IdError::WrongLength { actual: 21, .. }));

        let token = WriteToken::new(ObjectId::new([1; 20]), id).to_bytes();
        let err = WriteToken::from_bytes(&token[..token.len() - 1]).unwrap_err();
        assert!(
            matches!(
                err,
                IdError::Truncated {
                    needed: 16,
                    remaining: 15,
                    ..
                }
            ),
            "{err}"
        );
        let mut trailing = token.clone();
        trailing.push(0);
        let err = WriteToken::from_bytes(&trailing).unwrap_err();
        assert_eq!(
            err,
            IdError::TrailingBytes {
                kind: "WriteToken",
                count: 1
            }
        );

        let hash = VersionHash::new(Digest::from_bytes([8; 32]), 1 << 40, ObjectId::new([1; 20]));
        let bytes = hash.to_bytes();
        assert!(matches!(
            VersionHash::from_bytes(&bytes[..30]),
            Err(IdError::Truncated { .. })
        ));
        assert!(matches!(
            VersionHash::from_bytes(&bytes[..33]),
            Err(IdError::BadVarint { .. })
        ));
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(&[1, 2]);
        let err = VersionHash::from_bytes(&trailing).unwrap_err();
        assert_eq!(
            err,
            IdError::TrailingBytes {
                kind: "VersionHash",
                count: 2
            }
        );
        let mut trailing = hash.part_hash().to_bytes();
        trailing.push(7);
        assert!(matches!(
            PartHash::from_bytes(&trailing),
            Err(IdError::TrailingBytes { count: 1, .. })
        ));
    }

    #[test]
    fn token_code_bytes_and_lengths_are_checked() {
        let token = WriteToken {
            object: ObjectId::new([1; 20]),
            node: NodeId::new([2; 20]),
            rand: [3; 16],
        };
        let good = token.to_bytes();

        let mut swapped = good.clone();
        swapped[1] = NodeId::CODE;
        let err = encode("tqw__", &swapped).parse::<WriteToken>().unwrap_err();
        assert_eq!(
            err,
            IdError::BadCode {
                kind: "WriteToken object id",
                expected: 4,
                actual: 9
            }
        );

        let mut bad_node = good.clone();
        bad_node[23] = 3;
        assert!(matches!(
            WriteToken::from_bytes(&bad_node),
            Err(IdError::BadCode {
                expected: 9,
                actual: 3,
                ..
            })
        ));

        // A 17-byte random part, announced as such, is still the wrong length.
        let mut long_rand = good[..44].to_vec();
        push_chunk(&mut long_rand, &[3; 17]);
        assert!(matches!(
            WriteToken::from_bytes(&long_rand),
            Err(IdError::WrongLength {
                expected: 16,
                actual: 17,
                ..
            })
        ));
    }

    #[test]
    fn non_minimal_varints_are_rejected() {
        let mut bytes = [5u8; 32].to_vec();
        bytes.extend_from_slice(&[0x81, 0x00]); // 1, padded to two bytes
        assert!(matches!(
            PartHash::from_bytes(&bytes),
            Err(IdError::BadVarint { .. })
        ));
    }

    #[test]
    fn encrypted_part_hashes_are_refused_by_name() {
        let err = "hqpe3x5HBqZvHAV4tqSBbdb".parse::<PartHash>().unwrap_err();
        assert_eq!(err, IdError::EncryptedPart);
        assert!(err.to_string().contains("not supported"));
    }

    #[test]
    fn version_hash_does_not_accept_other_prefixes() {
        let text =
            VersionHash::new(Digest::from_bytes([1; 32]), 5, ObjectId::new([2; 20])).to_string();
        let as_tq = format!("tq__{}", &text[4..]);
        assert!(matches!(
            as_tq.parse::<VersionHash>(),
            Err(IdError::WrongPrefix { .. })
        ));
    }

    #[test]
    fn serde_rejects_invalid_text() {
        let err = serde_json::from_str::<ObjectId>("\"ilib111\"").unwrap_err();
        assert!(err.to_string().contains("iq__"), "{err}");
        assert!(serde_json::from_str::<ObjectId>("17").is_err());
    }
}
