//! Property tests for hostile input to `cairn-core`: id text and payload parsers, path rules, and
//! versioned CBOR record decoding. The modules' own proptests cover round trips of valid values
//! and the cleanliness of parsed paths; these cover what arbitrary input can make the parsers
//! accept, and the operations built on an accepted value.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use cairn_core::path::{MAX_DEPTH, MAX_PATH_LEN, MAX_SEGMENT_LEN};
use cairn_core::record::Record;
use cairn_core::{
    Digest, ErrorKind, FilePath, FilesJobId, IdError, LibraryId, NodeId, ObjectId, PartHash,
    PathError, SpaceId, UploadJobId, VersionHash, WriteToken,
};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------------------------------------
// Ids.

/// Every text prefix, plus the refused `hqpe` and near misses.
const PREFIXES: &[&str] = &[
    "ilib", "iq__", "ispc", "inod", "iqfu", "iqfj", "tqw__", "hq__", "hqp_", "hqpe", "iq_", "tq__",
    "",
];

/// Parses `text` as `T`; if accepted, the value must print back as exactly `text` (one spelling
/// per id) and parse again to itself.
fn check_text<T>(text: &str) -> Option<T>
where
    T: FromStr<Err = IdError> + Display + PartialEq + std::fmt::Debug + Copy,
    T: for<'de> Deserialize<'de>,
{
    let value = text.parse::<T>().ok()?;
    assert_eq!(value.to_string(), text, "accepted text is not canonical");
    assert_eq!(value.to_string().parse::<T>(), Ok(value));
    // serde goes through the same parser.
    let json = serde_json::to_string(text).unwrap();
    assert_eq!(serde_json::from_str::<T>(&json).ok(), Some(value));
    Some(value)
}

/// Parses `text` as every id type; returns how many accepted it (at most one: prefixes are
/// distinct).
fn parse_as_every_id(text: &str) -> usize {
    let accepted = [
        check_text::<LibraryId>(text).is_some(),
        check_text::<ObjectId>(text).is_some(),
        check_text::<SpaceId>(text).is_some(),
        check_text::<NodeId>(text).is_some(),
        check_text::<UploadJobId>(text).is_some(),
        check_text::<FilesJobId>(text).is_some(),
        check_text::<WriteToken>(text).is_some(),
        check_text::<VersionHash>(text).is_some(),
        check_text::<PartHash>(text).is_some(),
    ];
    accepted.iter().filter(|a| **a).count()
}

/// Decodes `bytes` as every payload type; anything accepted must re-encode to exactly `bytes`.
fn decode_every_payload(bytes: &[u8]) {
    fn same<T>(bytes: &[u8], decoded: Result<T, IdError>, encode: fn(&T) -> Vec<u8>) {
        if let Ok(value) = decoded {
            assert_eq!(encode(&value), bytes, "accepted payload is not canonical");
        }
    }
    same(bytes, LibraryId::from_bytes(bytes), LibraryId::to_bytes);
    same(bytes, ObjectId::from_bytes(bytes), ObjectId::to_bytes);
    same(bytes, SpaceId::from_bytes(bytes), SpaceId::to_bytes);
    same(bytes, NodeId::from_bytes(bytes), NodeId::to_bytes);
    same(bytes, UploadJobId::from_bytes(bytes), UploadJobId::to_bytes);
    same(bytes, FilesJobId::from_bytes(bytes), FilesJobId::to_bytes);
    same(bytes, WriteToken::from_bytes(bytes), WriteToken::to_bytes);
    same(bytes, VersionHash::from_bytes(bytes), VersionHash::to_bytes);
    same(bytes, PartHash::from_bytes(bytes), PartHash::to_bytes);
    same(
        bytes,
        ObjectId::from_coded_bytes(bytes),
        ObjectId::to_coded_bytes,
    );
    same(
        bytes,
        NodeId::from_coded_bytes(bytes),
        NodeId::to_coded_bytes,
    );
    same(
        bytes,
        LibraryId::from_coded_bytes(bytes),
        LibraryId::to_coded_bytes,
    );
}

/// Valid payloads of the variable-layout ids, so mutations land near acceptance.
fn valid_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (any::<[u8; 20]>(), any::<[u8; 20]>(), any::<[u8; 16]>()).prop_map(|(o, n, r)| {
            WriteToken {
                object: ObjectId::new(o),
                node: NodeId::new(n),
                rand: r,
            }
            .to_bytes()
        }),
        (any::<[u8; 32]>(), any::<u64>(), any::<[u8; 20]>()).prop_map(|(d, s, o)| {
            VersionHash::new(Digest::from_bytes(d), s, ObjectId::new(o)).to_bytes()
        }),
        (any::<[u8; 32]>(), any::<u64>()).prop_map(|(d, s)| PartHash::new(
            Digest::from_bytes(d),
            s
        )
        .to_bytes()),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(prop::sample::Index),
    Append(Vec<u8>),
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        prop::collection::vec(any::<u8>(), 1..4).prop_map(Mutation::Append),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Truncate(i) if !bytes.is_empty() => bytes.truncate(i.index(bytes.len())),
            Mutation::Append(tail) => bytes.extend_from_slice(tail),
            Mutation::Set(i, b) if !bytes.is_empty() => {
                let i = i.index(bytes.len());
                bytes[i] = *b;
            }
            Mutation::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), *b),
            _ => {}
        }
    }
    bytes
}

/// Id-like text: a prefix, then base58 digits with a sprinkle of characters outside the alphabet.
fn id_like_text() -> impl Strategy<Value = String> {
    (
        prop::sample::select(PREFIXES),
        "[1-9A-HJ-NP-Za-km-z]{0,100}",
        "[0OIl+/ é_]{0,2}",
        any::<prop::sample::Index>(),
    )
        .prop_map(|(prefix, body, noise, at)| {
            let mut body = body;
            let at = at.index(body.len() + 1);
            body.insert_str(at, &noise);
            format!("{prefix}{body}")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any text, parsed as every id type: no panic, at most one type accepts it, and an accepted
    /// text is the value's only spelling (`to_string` gives it back byte for byte).
    #[test]
    fn id_text_is_accepted_only_in_canonical_form(text in prop_oneof![id_like_text(), any::<String>()]) {
        prop_assert!(parse_as_every_id(&text) <= 1, "{:?}", text);
    }

    /// `PREFIX ++ base58(bytes)` parses exactly when the payload decodes and the text is within
    /// the length limit, to the same value: the text layer adds nothing but the prefix.
    #[test]
    fn id_text_and_payload_agree(
        payload in prop_oneof![
            valid_payload(),
            (valid_payload(), prop::collection::vec(mutation(), 1..3)).prop_map(|(p, m)| mutate(p, &m)),
            prop::collection::vec(any::<u8>(), 0..80),
        ],
    ) {
        fn agree<T>(prefix: &str, payload: &[u8], from_bytes: fn(&[u8]) -> Result<T, IdError>)
        where
            T: FromStr<Err = IdError> + PartialEq + std::fmt::Debug,
        {
            let text = format!("{prefix}{}", bs58::encode(payload).into_string());
            let parsed = text.parse::<T>();
            if text.len() > 160 {
                // Refused before decoding, whatever the payload.
                assert!(matches!(parsed, Err(IdError::TooLong { .. })), "{text}");
                return;
            }
            assert_eq!(parsed, from_bytes(payload), "{text}");
        }
        agree::<WriteToken>("tqw__", &payload, WriteToken::from_bytes);
        agree::<VersionHash>("hq__", &payload, VersionHash::from_bytes);
        agree::<PartHash>("hqp_", &payload, PartHash::from_bytes);
        agree::<ObjectId>("iq__", &payload, ObjectId::from_bytes);
        agree::<UploadJobId>("iqfu", &payload, UploadJobId::from_bytes);
    }

    /// Mutated and random payloads: no panic, and anything accepted re-encodes to the exact
    /// input (non-minimal varints, trailing bytes and wrong type codes are all refused).
    #[test]
    fn id_payloads_are_accepted_only_in_canonical_form(
        payload in prop_oneof![
            (valid_payload(), prop::collection::vec(mutation(), 1..4)).prop_map(|(p, m)| mutate(p, &m)),
            prop::collection::vec(any::<u8>(), 0..80),
        ],
    ) {
        decode_every_payload(&payload);
    }

    /// A valid id of one type is refused by every other type's parser.
    #[test]
    fn an_id_never_parses_as_another_type(o in any::<[u8; 20]>(), d in any::<[u8; 32]>(), s in any::<u64>()) {
        let texts = [
            LibraryId::new(o).to_string(),
            ObjectId::new(o).to_string(),
            SpaceId::new(o).to_string(),
            NodeId::new(o).to_string(),
            UploadJobId::new(o[..16].try_into().unwrap()).to_string(),
            FilesJobId::new(o[..16].try_into().unwrap()).to_string(),
            WriteToken { object: ObjectId::new(o), node: NodeId::new(o), rand: d[..16].try_into().unwrap() }.to_string(),
            VersionHash::new(Digest::from_bytes(d), s, ObjectId::new(o)).to_string(),
            PartHash::new(Digest::from_bytes(d), s).to_string(),
        ];
        for text in &texts {
            prop_assert_eq!(parse_as_every_id(text), 1, "{}", text);
        }
    }
}

/// Pinned: `unsigned-varint` keeps only the low bit of a tenth byte, so `0x80` x9 `0x02`
/// used to decode to 0 and give a part hash of size 0 a second spelling.
#[test]
fn a_varint_overflowing_64_bits_is_refused() {
    let mut payload = vec![7u8; 32];
    payload.extend_from_slice(&[0x80; 9]);
    payload.push(0x02);
    assert!(matches!(
        PartHash::from_bytes(&payload),
        Err(IdError::BadVarint { .. })
    ));
    // Bits past 64 next to a valid top bit (0x41) are dropped the same way.
    let mut high = payload[..41].to_vec();
    high.push(0x41);
    assert!(matches!(
        PartHash::from_bytes(&high),
        Err(IdError::BadVarint { .. })
    ));
    let text = format!("hqp_{}", bs58::encode(&payload).into_string());
    assert!(matches!(
        text.parse::<PartHash>(),
        Err(IdError::BadVarint { .. })
    ));
    // The largest value still decodes: nine continuation bytes, then 0x01.
    let mut max = vec![7u8; 32];
    max.extend_from_slice(&[0xff; 9]);
    max.push(0x01);
    assert_eq!(PartHash::from_bytes(&max).unwrap().size, u64::MAX);
}

// ---------------------------------------------------------------------------------------------
// Paths.

/// Inputs built from the pieces that matter to the rules, including long segments and deep
/// paths, so the limits are reached as well as the character rules.
fn path_input() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => Just("/".to_string()),
        1 => Just(".".to_string()),
        1 => Just("..".to_string()),
        4 => "[a-z]{1,3}",
        1 => Just("é".to_string()),
        1 => Just(" ".to_string()),
        1 => Just("\\".to_string()),
        1 => Just("\0".to_string()),
        1 => Just("\x7f".to_string()),
        1 => Just("\u{85}".to_string()),
        1 => (250..260usize).prop_map(|n| "x".repeat(n)),
    ];
    prop_oneof![
        4 => prop::collection::vec(piece, 0..24).prop_map(|p| p.concat()),
        // Near the depth limit.
        1 => (250..260usize, any::<bool>()).prop_map(|(n, lead)| {
            format!("{}{}", if lead { "/" } else { "" }, vec!["d"; n].join("/"))
        }),
        // Near the length limit.
        1 => (14..18usize, 240..256usize).prop_map(|(n, len)| vec!["y".repeat(len); n].join("/")),
    ]
}

/// A valid single segment or something close to one.
fn name_input() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z.]{1,4}",
        1 => Just(String::new()),
        1 => Just("..".to_string()),
        1 => "[a-z]{0,2}[/\\\\\0][a-z]{0,2}",
        1 => (250..260usize).prop_map(|n| "n".repeat(n)),
    ]
}

/// The limits and character rules, checked directly on the normalized text.
fn assert_within_rules(path: &FilePath) {
    let text = path.as_str();
    assert!(text.len() <= MAX_PATH_LEN, "{} bytes", text.len());
    assert!(!text.starts_with('/') && !text.ends_with('/'));
    if path.is_root() {
        assert_eq!(text, "");
        return;
    }
    let segments: Vec<&str> = text.split('/').collect();
    assert!(segments.len() <= MAX_DEPTH, "{} segments", segments.len());
    assert_eq!(path.segments().collect::<Vec<_>>(), segments);
    for segment in segments {
        assert!(!segment.is_empty() && segment != "." && segment != "..");
        assert!(
            segment.len() <= MAX_SEGMENT_LEN,
            "segment of {}",
            segment.len()
        );
        assert!(!segment.contains('\\') && !segment.contains('\0'));
        assert!(!segment.bytes().any(|b| b.is_ascii_control()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// An accepted path obeys every rule (length, depth, segment length, characters), and
    /// normalization only ever drops leading slashes and one trailing slash: nothing inside the
    /// path is repaired into a different name.
    #[test]
    fn accepted_paths_obey_the_limits_and_are_only_trimmed(input in path_input()) {
        match FilePath::parse_dir(&input) {
            Ok(path) => {
                assert_within_rules(&path);
                let rest = input.trim_start_matches('/');
                prop_assert!(
                    rest == path.as_str() || rest.strip_suffix('/') == Some(path.as_str()),
                    "{:?} became {:?}", input, path.as_str()
                );
                prop_assert_eq!(FilePath::parse_dir(path.as_str()), Ok(path.clone()));
                // `parse` is `parse_dir` minus the root.
                let file = FilePath::parse(&input);
                if path.is_root() {
                    prop_assert_eq!(file, Err(PathError::Empty));
                } else {
                    prop_assert_eq!(file, Ok(path));
                }
            }
            Err(_) => prop_assert!(FilePath::parse(&input).is_err()),
        }
    }

    /// Navigation on an accepted path stays consistent: the parent joined with the file name is
    /// the path, the path starts with its parent, and stripping the parent leaves the name.
    #[test]
    fn navigation_is_consistent(input in path_input()) {
        let Ok(path) = FilePath::parse(&input) else { return Ok(()) };
        let parent = path.parent().unwrap();
        let name = path.file_name().unwrap();
        prop_assert_eq!(parent.join(name), Ok(path.clone()));
        prop_assert!(path.starts_with(&parent) && path.starts_with(&FilePath::root()));
        prop_assert_eq!(path.strip_prefix(&parent), Some(FilePath::parse(name).unwrap()));
        prop_assert_eq!(path.strip_prefix(&path), Some(FilePath::root()));
        prop_assert_eq!(path.segments().count(), parent.segments().count() + 1);
    }

    /// `join` accepts exactly the names that make a valid one-deeper path, and the result is
    /// what parsing the joined text gives.
    #[test]
    fn join_agrees_with_parsing(dir in path_input(), name in name_input()) {
        let Ok(dir) = FilePath::parse_dir(&dir) else { return Ok(()) };
        let joined = dir.join(&name);
        let parsed = FilePath::parse_dir(&format!("{dir}/{name}"));
        if name.is_empty() || name.contains('/') {
            prop_assert!(joined.is_err(), "{:?} + {:?}", dir, name);
        } else {
            prop_assert_eq!(joined.as_ref().ok(), parsed.as_ref().ok(), "{:?} + {:?}", dir, name);
        }
        if let Ok(joined) = joined {
            assert_within_rules(&joined);
            prop_assert_eq!(joined.parent(), Some(dir));
            prop_assert_eq!(joined.file_name(), Some(name.as_str()));
        }
    }

    /// `starts_with`/`strip_prefix` compare whole segments, never string prefixes.
    #[test]
    fn prefixes_are_whole_segments(
        a in prop::collection::vec("[ab]{1,2}", 0..5),
        b in prop::collection::vec("[ab]{1,2}", 0..5),
    ) {
        let pa = FilePath::parse_dir(&a.join("/")).unwrap();
        let pb = FilePath::parse_dir(&b.join("/")).unwrap();
        let segment_prefix = a.len() >= b.len() && a[..b.len()] == b[..];
        prop_assert_eq!(pa.starts_with(&pb), segment_prefix);
        let rest = pa.strip_prefix(&pb);
        prop_assert_eq!(rest.is_some(), segment_prefix);
        if let Some(rest) = rest {
            prop_assert_eq!(rest.as_str(), a[b.len()..].join("/"));
        }
    }

    /// Deserializing a path (JSON or CBOR) applies exactly the directory rules.
    #[test]
    fn serde_applies_the_path_rules(input in path_input()) {
        let expected = FilePath::parse_dir(&input).ok();
        let json = serde_json::to_string(&input).unwrap();
        prop_assert_eq!(serde_json::from_str::<FilePath>(&json).ok(), expected.clone());
        let mut cbor = Vec::new();
        ciborium::into_writer(&input, &mut cbor).unwrap();
        prop_assert_eq!(ciborium::from_reader::<FilePath, _>(cbor.as_slice()).ok(), expected);
    }
}

// ---------------------------------------------------------------------------------------------
// Records.

/// A record shaped like the stored ones: ids and paths that validate on decode, digests as CBOR
/// bytes, options, nested collections and free JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Sample {
    object: ObjectId,
    token: Option<WriteToken>,
    head: Option<VersionHash>,
    path: FilePath,
    digest: Digest,
    size: u64,
    chunks: Vec<(Digest, u32)>,
    names: BTreeMap<String, Option<u64>>,
    meta: Option<serde_json::Value>,
}

impl Record for Sample {
    const NAME: &'static str = "sample";
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e9..1e9f64).prop_map(Value::from),
        "[a-z é]{0,6}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{0,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn sample() -> impl Strategy<Value = Sample> {
    (
        any::<[u8; 20]>(),
        any::<Option<([u8; 20], [u8; 16])>>(),
        any::<Option<([u8; 32], u64)>>(),
        prop::collection::vec("[a-z]{1,4}", 0..4),
        any::<[u8; 32]>(),
        any::<u64>(),
        prop::collection::vec((any::<[u8; 32]>(), any::<u32>()), 0..4),
        prop::collection::btree_map("[a-z]{0,4}", any::<Option<u64>>(), 0..4),
        // `Some(Null)` and `None` share one encoding (CBOR null), so only non-null meta.
        prop::option::of(json_value().prop_filter("null", |v| !v.is_null())),
    )
        .prop_map(|(o, t, h, path, d, size, chunks, names, meta)| Sample {
            object: ObjectId::new(o),
            token: t.map(|(n, r)| WriteToken {
                object: ObjectId::new(o),
                node: NodeId::new(n),
                rand: r,
            }),
            head: h.map(|(d, s)| VersionHash::new(Digest::from_bytes(d), s, ObjectId::new(o))),
            path: FilePath::parse_dir(&path.join("/")).unwrap(),
            digest: Digest::from_bytes(d),
            size,
            chunks: chunks
                .into_iter()
                .map(|(d, l)| (Digest::from_bytes(d), l))
                .collect(),
            names,
            meta,
        })
}

/// Decodes `bytes`; a failure must be `Corrupt`, a success must survive encode → decode.
fn decode_checked<T: Record + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<T> {
    match T::decode(bytes) {
        Ok(value) => {
            let again = T::decode(&value.encode()).expect("a decoded record re-encodes");
            assert_eq!(again, value);
            Some(value)
        }
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::Corrupt, "{e}");
            None
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes (with the right version byte or not) never panic the decoder: they are a
    /// `Corrupt` error or a value that round-trips.
    #[test]
    fn arbitrary_bytes_decode_to_corrupt_or_a_stable_value(
        version in prop_oneof![Just(1u8), any::<u8>()],
        body in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut bytes = vec![version];
        bytes.extend_from_slice(&body);
        if version != 1 {
            prop_assert_eq!(Sample::decode(&bytes).unwrap_err().kind, ErrorKind::Corrupt);
        }
        decode_checked::<Sample>(&bytes);
        decode_checked::<Sample>(&body);
    }

    /// Valid records round-trip; every strict prefix of an encoding is refused (nothing is
    /// silently defaulted); and mutated encodings decode to `Corrupt` or a stable value.
    #[test]
    fn records_round_trip_and_damage_is_detected(
        value in sample(),
        cut in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let bytes = value.encode();
        prop_assert_eq!(Sample::decode(&bytes).unwrap(), value.clone());
        let cut = cut.index(bytes.len());
        let err = Sample::decode(&bytes[..cut]).unwrap_err();
        prop_assert_eq!(err.kind, ErrorKind::Corrupt);
        decode_checked::<Sample>(&mutate(bytes, &mutations));
    }
}
