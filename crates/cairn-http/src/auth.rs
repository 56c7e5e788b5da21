//! Tokens: the admin token, and library tokens scoped to one library.
//!
//! The admin token comes from `CAIRN_TOKEN` when set; otherwise one is generated on first start,
//! printed once, and only its blake3 hash is stored (`<data>/admin-token.blake3`, mode 0600). It
//! may do everything.
//!
//! Library tokens are made by the admin (`POST /qlibs/{lib}/tokens`) for one library, with
//! `write` or `read` access. Their hashes live in `<data>/library-tokens.cbor` (mode 0600,
//! replaced atomically: temp file, fsync, rename, directory fsync), so a token is printed once
//! and never stored. What a library token may reach is decided in [`crate::authorize`].
//!
//! Requests carry a token as `Authorization: Bearer …` or as `?authorization=…` (which the
//! official client fills with the header's value, `Bearer ` prefix included); several
//! `authorization` parameters may be sent and any one that matches is enough.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::http::{header, HeaderMap};
use cairn_core::LibraryId;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The admin token's hash, in the data dir.
pub const HASH_FILE: &str = "admin-token.blake3";
const LIBRARY_TOKENS_FILE: &str = "library-tokens.cbor";
/// Library tokens per server: the file is rewritten whole on each change, so keep it small.
pub const MAX_LIBRARY_TOKENS: usize = 10_000;

/// Who a request acts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Library { library: LibraryId, access: Access },
}

/// What a library token may do inside its library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Only `GET` and `HEAD`.
    Read,
    /// Everything a library's content allows: uploads, finalize, metadata, deletes.
    #[default]
    Write,
}

/// A library token as stored: never the token itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LibraryToken {
    /// Public handle, to list and revoke it.
    pub id: String,
    pub library: LibraryId,
    pub access: Access,
    /// Seconds since the Unix epoch.
    pub created: u64,
    #[serde(with = "hash_hex")]
    hash: blake3::Hash,
}

mod hash_hex {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &blake3::Hash, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&h.to_hex())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<blake3::Hash, D::Error> {
        blake3::Hash::from_hex(String::deserialize(d)?).map_err(de::Error::custom)
    }
}

#[derive(Clone)]
pub struct Auth {
    admin: blake3::Hash,
    libs: Arc<LibraryTokens>,
}

struct LibraryTokens {
    path: PathBuf,
    by_hash: RwLock<HashMap<blake3::Hash, LibraryToken>>,
    /// Serialises changes (read, modify, write the file, then publish).
    change: Mutex<()>,
}

impl Auth {
    /// Loads the token hashes; returns a newly generated admin token (to print once) on first
    /// start.
    pub fn load_or_create(
        data: &Path,
        env_token: Option<&str>,
    ) -> std::io::Result<(Auth, Option<String>)> {
        let (admin, generated) = admin_hash(data, env_token)?;
        let libs = LibraryTokens::load(data)?;
        Ok((
            Auth {
                admin,
                libs: Arc::new(libs),
            },
            generated,
        ))
    }

    /// Accepts the request if any offered token matches; returns the matching token's hash
    /// (the rate limiter's key) and who it acts as.
    pub fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<(blake3::Hash, Principal), ApiError> {
        let mut offered: Vec<String> = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            // A value that is not ASCII is no token of ours, but it was offered: it is "not
            // valid", not missing.
            .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
            .collect();
        if let Some(q) = query {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).unwrap_or_default();
            offered.extend(
                pairs
                    .into_iter()
                    .filter(|(k, _)| k == "authorization")
                    .map(|(_, v)| v),
            );
        }
        // `Authorization: Bearer ` with nothing after it offers no token (a client whose token
        // setting is empty sends that): say one is needed rather than that it is wrong.
        offered.retain(|t| !strip_bearer(t).trim().is_empty());
        if offered.is_empty() {
            return Err(ApiError::unauthorized(
                "a token is required: Authorization: Bearer <token>",
            ));
        }
        let libs = self.libs.by_hash.read();
        for t in &offered {
            let h = blake3::hash(strip_bearer(t).as_bytes());
            // blake3::Hash equality is constant-time.
            if h == self.admin {
                return Ok((h, Principal::Admin));
            }
            if let Some(lt) = libs.get(&h) {
                let p = Principal::Library {
                    library: lt.library,
                    access: lt.access,
                };
                return Ok((h, p));
            }
        }
        Err(ApiError::unauthorized("the token is not valid"))
    }

    /// Makes a token for `library`; returns its record and the token (shown once).
    pub fn create_library_token(
        &self,
        library: LibraryId,
        access: Access,
    ) -> cairn_core::Result<(LibraryToken, String)> {
        let token = format!("cairn_{}", bs58_token());
        let rec = LibraryToken {
            id: format!(
                "tok_{}",
                bs58::encode(rand::random::<[u8; 9]>()).into_string()
            ),
            library,
            access,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            hash: blake3::hash(token.as_bytes()),
        };
        let mut full = false;
        self.libs
            .change(|all| {
                // Counted under the change lock: concurrent creations cannot pass the limit.
                full = all.len() >= MAX_LIBRARY_TOKENS;
                if !full {
                    all.push(rec.clone());
                }
                Ok(())
            })
            .map_err(|e| cairn_core::Error::io("store library tokens", e))?;
        if full {
            return Err(cairn_core::Error::too_large(format!(
                "at most {MAX_LIBRARY_TOKENS} library tokens; revoke some first"
            )));
        }
        Ok((rec, token))
    }

    /// The tokens of `library`, oldest first.
    pub fn library_tokens(&self, library: &LibraryId) -> Vec<LibraryToken> {
        let mut v: Vec<LibraryToken> = self
            .libs
            .by_hash
            .read()
            .values()
            .filter(|t| t.library == *library)
            .cloned()
            .collect();
        v.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        v
    }

    /// Revokes every token of `library` (it is being deleted); returns how many there were.
    pub fn revoke_library(&self, library: &LibraryId) -> cairn_core::Result<usize> {
        let mut n = 0;
        self.libs
            .change(|all| {
                let before = all.len();
                all.retain(|t| t.library != *library);
                n = before - all.len();
                Ok(())
            })
            .map_err(|e| cairn_core::Error::io("store library tokens", e))?;
        Ok(n)
    }

    /// Revokes token `id` of `library`; false if there is no such token.
    pub fn revoke_library_token(&self, library: &LibraryId, id: &str) -> cairn_core::Result<bool> {
        let mut found = false;
        self.libs
            .change(|all| {
                let before = all.len();
                all.retain(|t| !(t.library == *library && t.id == id));
                found = all.len() != before;
                Ok(())
            })
            .map_err(|e| cairn_core::Error::io("store library tokens", e))?;
        Ok(found)
    }
}

impl LibraryTokens {
    fn load(data: &Path) -> std::io::Result<LibraryTokens> {
        let path = data.join(LIBRARY_TOKENS_FILE);
        let all: Vec<LibraryToken> = match std::fs::read(&path) {
            Ok(bytes) => decode_tokens(&bytes)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        Ok(LibraryTokens {
            path,
            by_hash: RwLock::new(all.into_iter().map(|t| (t.hash, t)).collect()),
            change: Mutex::new(()),
        })
    }

    /// Applies `f` to the list, writes it durably, then makes it visible to requests.
    fn change(
        &self,
        f: impl FnOnce(&mut Vec<LibraryToken>) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let _one = self.change.lock();
        let mut all: Vec<LibraryToken> = self.by_hash.read().values().cloned().collect();
        all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        f(&mut all)?;
        write_atomically(&self.path, &encode_tokens(&all))?;
        *self.by_hash.write() = all.into_iter().map(|t| (t.hash, t)).collect();
        Ok(())
    }
}

/// File format: a version byte, then the CBOR list of tokens.
const TOKENS_VERSION: u8 = 1;

fn encode_tokens(all: &[LibraryToken]) -> Vec<u8> {
    let mut out = vec![TOKENS_VERSION];
    ciborium::into_writer(all, &mut out).expect("CBOR encoding into memory");
    out
}

fn decode_tokens(bytes: &[u8]) -> Result<Vec<LibraryToken>, String> {
    match bytes.split_first() {
        Some((&TOKENS_VERSION, body)) => {
            ciborium::from_reader(body).map_err(|e| format!("does not decode: {e}"))
        }
        Some((v, _)) => Err(format!("format version {v} is not supported")),
        None => Err("empty file".into()),
    }
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn admin_hash(
    data: &Path,
    env_token: Option<&str>,
) -> std::io::Result<(blake3::Hash, Option<String>)> {
    // Normalized as offered tokens are (`check`), so that `CAIRN_TOKEN="Bearer x"` or a
    // stray space still matches what a client sends; one that is empty after it is unset.
    if let Some(t) = env_token.map(strip_bearer).filter(|t| !t.is_empty()) {
        return Ok((blake3::hash(t.as_bytes()), None));
    }
    let path = data.join(HASH_FILE);
    let read = |path: &Path| -> std::io::Result<blake3::Hash> {
        let text = std::fs::read_to_string(path)?;
        blake3::Hash::from_hex(text.trim())
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
    };
    // Only a file that is not there is made anew: any other failure to read it (permissions,
    // an I/O error) must not replace the token its owner holds.
    match read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        other => return other.map(|h| (h, None)),
    }
    let token = format!("cairn_{}", bs58_token());
    std::fs::create_dir_all(data)?;
    // Whole or not at all, durable (directory entry included) before the token is shown, and
    // never over a file another start made meanwhile: written aside, then linked into place.
    let tmp = path.with_extension(format!("tmp{:016x}", rand::random::<u64>()));
    let hash = blake3::hash(token.as_bytes());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(hash.to_hex().as_bytes())?;
    f.sync_all()?;
    let linked = std::fs::hard_link(&tmp, &path);
    std::fs::remove_file(&tmp)?;
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return read(&path).map(|h| (h, None));
        }
        Err(e) => return Err(e),
    }
    std::fs::File::open(data)?.sync_all()?;
    Ok((hash, Some(token)))
}

/// The token in an offered value: without a leading `Bearer ` scheme, in any case (RFC 9110
/// §11.1: schemes are case-insensitive).
fn strip_bearer(t: &str) -> &str {
    let t = t.trim();
    if t.eq_ignore_ascii_case("bearer") {
        return "";
    }
    match t.get(..7) {
        Some(scheme) if scheme.eq_ignore_ascii_case("bearer ") => t[7..].trim(),
        _ => t,
    }
}

fn bs58_token() -> String {
    bs58::encode(rand::random::<[u8; 24]>()).into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token file that cannot be read is an error, never replaced by a new token; and
    /// nothing is left beside it.
    #[test]
    fn an_unreadable_token_file_is_an_error_not_a_new_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(HASH_FILE)).unwrap(); // reads fail: a directory
        assert!(Auth::load_or_create(dir.path(), None).is_err());
        assert!(dir.path().join(HASH_FILE).is_dir(), "left as it was");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
    }

    /// An empty token (`Bearer` and nothing, or an empty `?authorization=`) is no token: the
    /// 401 says one is required, not that the one given is wrong.
    #[test]
    fn an_empty_token_is_reported_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = Auth::load_or_create(dir.path(), None).unwrap();
        let reason = |h: &HeaderMap, q: Option<&str>| auth.check(h, q).unwrap_err().reason;
        for value in ["Bearer", "Bearer ", "bearer   ", ""] {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert!(reason(&h, None).contains("required"), "{value:?}");
        }
        assert!(reason(&HeaderMap::new(), Some("authorization=")).contains("required"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer nope".parse().unwrap());
        assert!(reason(&h, None).contains("not valid"));
        // CAIRN_TOKEN is normalized the same way as what clients offer.
        let (auth, _) = Auth::load_or_create(dir.path(), Some(" Bearer admin ")).unwrap();
        assert!(auth.check(&bearer("admin"), None).is_ok());
    }

    #[test]
    fn token_is_generated_once_and_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, token) = Auth::load_or_create(dir.path(), None).unwrap();
        let token = token.expect("first start prints a token");
        let stored = std::fs::read_to_string(dir.path().join(HASH_FILE)).unwrap();
        assert!(!stored.contains(&token), "only the hash is stored");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(HASH_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, none) = Auth::load_or_create(dir.path(), None).unwrap();
        assert!(none.is_none());
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 1, "only the hash file");
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        assert!(again.check(&h, None).is_ok());
        assert!(auth
            .check(
                &HeaderMap::new(),
                Some(&format!("authorization=x&authorization=Bearer%20{token}"))
            )
            .is_ok());
        assert!(auth
            .check(&HeaderMap::new(), Some("authorization=wrong"))
            .is_err());
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let mut h = HeaderMap::new();
            let value = format!("{scheme} {token}");
            h.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert!(auth.check(&h, None).is_ok(), "{scheme}");
        }
        // Only the scheme is dropped, never part of the token.
        assert_eq!(
            strip_bearer("Bearer"),
            "",
            "the scheme alone offers no token"
        );
        assert_eq!(strip_bearer("bearerx"), "bearerx");
        assert_eq!(strip_bearer(" BEARER  tok "), "tok");
        assert!(auth.check(&HeaderMap::new(), None).is_err());
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn library_tokens_are_scoped_stored_hashed_survive_restarts_and_revoke() {
        let dir = tempfile::tempdir().unwrap();
        let (auth, _) = Auth::load_or_create(dir.path(), Some("admin")).unwrap();
        let lib: LibraryId = "ilib2zJHpZ3Pr8EDkk9gSDEJK3mKvfmq".parse().unwrap();
        let (rec, token) = auth.create_library_token(lib, Access::Read).unwrap();
        let (_, p) = auth.check(&bearer(&token), None).unwrap();
        assert_eq!(
            p,
            Principal::Library {
                library: lib,
                access: Access::Read
            }
        );
        assert_eq!(
            auth.check(&bearer("admin"), None).unwrap().1,
            Principal::Admin
        );

        let file = dir.path().join(LIBRARY_TOKENS_FILE);
        let stored = std::fs::read(&file).unwrap();
        assert!(!stored.windows(token.len()).any(|w| w == token.as_bytes()));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );

        let (again, _) = Auth::load_or_create(dir.path(), Some("admin")).unwrap();
        assert_eq!(again.check(&bearer(&token), None).unwrap().1, p);
        assert_eq!(again.library_tokens(&lib).len(), 1);
        assert!(!again.revoke_library_token(&lib, "tok_nope").unwrap());
        assert!(again.revoke_library_token(&lib, &rec.id).unwrap());
        assert!(again.check(&bearer(&token), None).is_err());
        let (third, _) = Auth::load_or_create(dir.path(), Some("admin")).unwrap();
        assert!(third.check(&bearer(&token), None).is_err());
        assert!(third.library_tokens(&lib).is_empty());
    }
}
