//! Files-job requests: the JSON the protocol sends, validated into typed [`Op`]s.
//!
//! Validation happens before anything is planned or stored, so a bad request changes nothing.

use cairn_core::{Error, FilePath, Result};
use serde::Deserialize;
use serde_json::Value;

/// Largest file a files job may declare (1 TiB: 32,768 parts at the default part size).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Most ops in one files job.
pub const MAX_OPS: usize = 100_000;
/// Longest mime type or link target accepted.
const MAX_STRING: usize = 4096;
/// Most metadata on one file or directory, as JSON text. It lives in its directory's node,
/// which is rewritten whole by every edit of that directory and copied by every `copy`;
/// larger metadata belongs in the object's own (`…/meta`, up to 16 MiB).
pub const MAX_ENTRY_META: usize = 64 << 10;

/// The request body of `POST /q/{wt}/file_jobs`.
#[derive(Debug, Clone, Deserialize)]
pub struct FilesJobRequest {
    #[serde(default)]
    pub seq: Option<u64>,
    #[serde(default)]
    pub seq_complete: Option<bool>,
    #[serde(default)]
    pub defaults: Option<Value>,
    /// At most `MAX_OPS + 1` are kept (see [`at_most_ops`]).
    #[serde(default, deserialize_with = "at_most_ops")]
    pub ops: Vec<RawOp>,
}

/// Deserializes the ops array keeping at most `MAX_OPS + 1` of them and skipping the rest
/// unparsed, so that a body of millions of tiny ops (`{},{},…`: 3 bytes each, an op struct
/// hundreds) cannot take gigabytes before the count is checked; `validate` then refuses it.
fn at_most_ops<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<RawOp>, D::Error> {
    struct Bounded;
    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<RawOp>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an array of ops")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<RawOp>, A::Error> {
            let mut ops = Vec::new();
            while ops.len() <= MAX_OPS {
                match seq.next_element()? {
                    Some(op) => ops.push(op),
                    None => return Ok(ops),
                }
            }
            while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
            Ok(ops)
        }
    }
    d.deserialize_seq(Bounded)
}

/// One op as sent. Unknown fields are ignored (clients send extras such as `encryption`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RawOp {
    #[serde(default)]
    pub op: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub mime_type: Option<String>,
    #[serde(default)]
    pub copy_move_source_path: Option<String>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub meta: Option<Value>,
    #[serde(default)]
    pub encryption: Option<Value>,
    /// The file's blake3 (64 hex digits), computed by the client: when the library already
    /// holds a file with this hash and size, it is linked without an upload.
    #[serde(default)]
    pub blake3: Option<String>,
}

/// A validated op.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    AddFile {
        path: FilePath,
        size: u64,
        mime_type: Option<String>,
        meta: Option<Value>,
        hash: Option<cairn_core::Digest>,
    },
    AddDir {
        path: FilePath,
        meta: Option<Value>,
    },
    Del {
        path: FilePath,
    },
    Move {
        from: FilePath,
        to: FilePath,
    },
    Copy {
        from: FilePath,
        to: FilePath,
    },
    Link {
        path: FilePath,
        target: String,
        meta: Option<Value>,
        /// Served as the link's `Content-Type` instead of the target's.
        mime_type: Option<String>,
    },
    Meta {
        path: FilePath,
        meta: Value,
    },
}

impl FilesJobRequest {
    /// A single-batch request (`seq 0`, complete) with these ops.
    pub fn from_ops(ops: Vec<RawOp>) -> FilesJobRequest {
        FilesJobRequest {
            seq: Some(0),
            seq_complete: Some(true),
            defaults: None,
            ops,
        }
    }

    /// Validates every op; the first bad one fails the whole request.
    pub fn validate(&self) -> Result<Vec<Op>> {
        if self.ops.len() > MAX_OPS {
            return Err(Error::too_large(format!(
                "more than {MAX_OPS} ops in one files job"
            )));
        }
        check_encryption(self.defaults.as_ref().and_then(|d| d.get("encryption")))?;
        self.ops
            .iter()
            .enumerate()
            .map(|(i, op)| op.validate().map_err(|e| prefix(i, e)))
            .collect()
    }
}

fn prefix(i: usize, mut e: Error) -> Error {
    e.reason = format!("op {i}: {}", e.reason);
    e
}

/// Absent, `null`, `{}` or `{"scheme": "none"}`: anything else asks for an encryption this
/// server does not do, so it is refused rather than stored in the clear (review: a scheme that
/// was not a string read as none).
fn check_encryption(enc: Option<&Value>) -> Result<()> {
    let scheme = match enc {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(o)) => o.get("scheme"),
        Some(other) => {
            return Err(Error::invalid(format!(
                "encryption {other} is not an object; use {{\"scheme\":\"none\"}} or leave it out"
            )))
        }
    };
    match scheme {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if s == "none" => Ok(()),
        Some(other) => Err(Error::invalid(format!(
            "encryption scheme {other} is not supported; use \"none\""
        ))),
    }
}

fn required(field: &Option<String>, name: &str) -> Result<FilePath> {
    let s = field
        .as_deref()
        .ok_or_else(|| Error::invalid(format!("missing {name}")))?;
    Ok(FilePath::parse(s)?)
}

fn bounded(s: &Option<String>, name: &str) -> Result<Option<String>> {
    match s {
        // Control characters (NUL, CR, LF…) could never be sent back in a header.
        Some(v) if v.len() > MAX_STRING || v.chars().any(char::is_control) => Err(Error::invalid(
            format!("{name} is too long or has control characters"),
        )),
        other => Ok(other.clone()),
    }
}

/// A file's `mime_type`, which downloads send as `Content-Type`: a media type (`type/subtype`
/// with optional parameters, parsed by the `mime` crate), or none. An empty one is none (a
/// browser's `File.type` is "" when it does not know), so the name decides.
fn media_type(path: &FilePath, m: Option<String>) -> Result<Option<String>> {
    match m {
        Some(m) if m.trim().is_empty() => Ok(None),
        Some(m) if !is_media_type(&m) => Err(Error::invalid(format!(
            "{path}: mime_type {m:?} is not a media type (type/subtype)"
        ))),
        other => Ok(other),
    }
}

/// A media type a response can carry: `type/subtype`, both named (the `mime` crate also parses
/// an empty subtype, `text/`, and the media ranges of an `Accept` header, `*/*` and `text/*`).
fn is_media_type(m: &str) -> bool {
    m.parse::<mime::Mime>().is_ok_and(|t| {
        let (ty, sub) = (t.type_().as_str(), t.subtype().as_str());
        !ty.is_empty() && !sub.is_empty() && ty != "*" && sub != "*"
    })
}

impl RawOp {
    pub fn validate(&self) -> Result<Op> {
        check_encryption(self.encryption.as_ref())?;
        let op = self.op.as_deref().unwrap_or("add");
        match op {
            "add" => self.validate_add(),
            "del" | "delete" => Ok(Op::Del {
                path: required(&self.path, "path")?,
            }),
            "move" => Ok(Op::Move {
                from: required(&self.copy_move_source_path, "copy_move_source_path")?,
                to: required(&self.path, "path")?,
            }),
            "copy" => Ok(Op::Copy {
                from: required(&self.copy_move_source_path, "copy_move_source_path")?,
                to: required(&self.path, "path")?,
            }),
            "link" => {
                let target = bounded(&self.target, "target")?
                    .ok_or_else(|| Error::invalid("link op needs a target"))?;
                let path = required(&self.path, "path")?;
                let mime_type = media_type(&path, bounded(&self.mime_type, "mime_type")?)?;
                Ok(Op::Link {
                    path,
                    target,
                    meta: self.entry_meta()?,
                    mime_type,
                })
            }
            "meta" | "metadata" => {
                let meta = self.entry_meta()?.ok_or_else(|| {
                    Error::invalid(
                        "a meta op needs `meta`: the JSON value to keep on the entry (any \
                             value but null)",
                    )
                })?;
                Ok(Op::Meta {
                    path: required(&self.path, "path")?,
                    meta,
                })
            }
            other => Err(Error::invalid(format!("unknown op {other:?}"))),
        }
    }

    /// The op's `meta`, if within [`MAX_ENTRY_META`].
    fn entry_meta(&self) -> Result<Option<Value>> {
        let Some(meta) = &self.meta else {
            return Ok(None);
        };
        let mut len = Counted(0);
        serde_json::to_writer(&mut len, meta).map_err(|e| Error::invalid(e.to_string()))?;
        if len.0 > MAX_ENTRY_META {
            return Err(Error::too_large(format!(
                "meta is {} bytes of JSON; a file or directory may hold {MAX_ENTRY_META}",
                len.0
            )));
        }
        Ok(Some(meta.clone()))
    }

    fn validate_add(&self) -> Result<Op> {
        let path = required(&self.path, "path")?;
        match self.kind.as_deref().unwrap_or("file") {
            "directory" | "dir" => Ok(Op::AddDir {
                path,
                meta: self.entry_meta()?,
            }),
            "file" => {
                let size = self
                    .size
                    .ok_or_else(|| Error::invalid(format!("{path}: a file needs a size")))?;
                if size > MAX_FILE_SIZE {
                    return Err(Error::too_large(format!(
                        "{path}: size {size} exceeds {MAX_FILE_SIZE}"
                    )));
                }
                let hash = match &self.blake3 {
                    None => None,
                    Some(h) => Some(cairn_core::Digest::from_hex(h).ok_or_else(|| {
                        Error::invalid(format!("{path}: blake3 must be 64 hex digits"))
                    })?),
                };
                if size == 0 && hash.is_some_and(|h| h != cairn_core::Digest::empty()) {
                    return Err(Error::invalid(format!(
                        "{path}: blake3 is not that of an empty file, which size 0 says it is"
                    )));
                }
                let mime_type = media_type(&path, bounded(&self.mime_type, "mime_type")?)?;
                Ok(Op::AddFile {
                    path,
                    size,
                    mime_type,
                    meta: self.entry_meta()?,
                    hash,
                })
            }
            other => Err(Error::invalid(format!("{path}: unknown type {other:?}"))),
        }
    }
}

/// A writer that only counts.
struct Counted(usize);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<Op>> {
        let req: FilesJobRequest =
            serde_json::from_str(json).map_err(|e| Error::invalid(e.to_string()))?;
        req.validate()
    }

    #[test]
    fn accepts_the_reference_example() {
        let ops = parse(
            r#"{"seq":0,"seq_complete":true,"ops":[
            {"path":"/dir/a.mp4","type":"file","mime_type":"video/mp4","size":3738907},
            {"op":"add","type":"directory","path":"new-dir"},
            {"op":"del","path":"old/file.txt"},
            {"op":"move","copy_move_source_path":"a/old","path":"b/new"}]}"#,
        )
        .unwrap();
        assert_eq!(ops.len(), 4);
        assert!(
            matches!(&ops[0], Op::AddFile { path, size: 3738907, .. } if path.as_str() == "dir/a.mp4")
        );
    }

    #[test]
    fn rejects_bad_ops() {
        for bad in [
            r#"{"ops":[{"op":"frobnicate","path":"a"}]}"#,
            r#"{"ops":[{"path":"../etc/passwd","size":1}]}"#,
            r#"{"ops":[{"path":"a","size":-1}]}"#,
            r#"{"ops":[{"path":"a","size":18446744073709551616}]}"#,
            r#"{"ops":[{"path":"a"}]}"#,
            r#"{"ops":[{"path":"a","size":1,"encryption":{"scheme":"cgck"}}]}"#,
            r#"{"ops":[{"path":"a","size":17592186044417}]}"#,
            r#"{"ops":[{"op":"move","path":"a"}]}"#,
            r#"{"ops":[{"path":"a","size":1,"mime_type":"not a mime"}]}"#,
            r#"{"ops":[{"path":"a","size":1,"mime_type":"tëxt/plain"}]}"#,
            r#"{"ops":[{"path":"a","size":1,"mime_type":"text"}]}"#,
            r#"{"ops":[{"path":"a","size":1,"mime_type":"x\u2028y/z"}]}"#,
            // An empty file declared with another file's hash: nothing could check it later.
            r#"{"ops":[{"path":"a","size":0,"blake3":"09d2aa4fa5f31e0fc8bd4a0cc6c1a94e3e6f2b7d0a3c9e3d4b7c6a5f0e1d2c3b"}]}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let empty = r#"{"ops":[{"path":"a","size":0,"blake3":"af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"}]}"#;
        assert!(parse(empty).is_ok());
    }

    #[test]
    fn a_mime_type_is_a_media_type_or_none() {
        let mime_of = |m: &str| {
            let json = format!(r#"{{"ops":[{{"path":"a","size":1,"mime_type":{m}}}]}}"#);
            match parse(&json).unwrap().remove(0) {
                Op::AddFile { mime_type, .. } => mime_type,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(mime_of(r#""video/mp4""#).as_deref(), Some("video/mp4"));
        let with_param = mime_of(r#""text/plain; charset=utf-8""#);
        assert_eq!(with_param.as_deref(), Some("text/plain; charset=utf-8"));
        // A browser's File.type is "" when it does not know: the name decides then.
        assert_eq!(mime_of(r#""""#), None);
        assert_eq!(mime_of("null"), None);
        // Not a type a response can carry (QA30: the first three were accepted and served).
        for bad in [
            "text/",
            "*/*",
            "text/*",
            "/plain",
            "text",
            "a/b/c",
            "text/ plain",
        ] {
            let json = format!(r#"{{"ops":[{{"path":"a","size":1,"mime_type":"{bad}"}}]}}"#);
            let err = parse(&json).unwrap_err();
            assert!(err.reason.contains("is not a media type"), "{bad}: {err}");
        }
    }
}
