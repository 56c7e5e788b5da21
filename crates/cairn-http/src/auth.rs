//! The admin token.
//!
//! The token comes from `CAIRN_TOKEN` when set; otherwise one is generated on first start, printed
//! once, and only its blake3 hash is stored (`<data>/admin-token.blake3`, mode 0600). Requests
//! carry it as `Authorization: Bearer …` or as `?authorization=…` (which the official client fills
//! with the header's value, `Bearer ` prefix included); several `authorization` parameters may
//! be sent and any one that matches is enough.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use axum::http::{header, HeaderMap};

use crate::error::ApiError;

const HASH_FILE: &str = "admin-token.blake3";

#[derive(Clone)]
pub struct Auth {
    hash: blake3::Hash,
}

impl Auth {
    /// Loads the token hash; returns a newly generated token (to print once) on first start.
    pub fn load_or_create(
        data: &Path,
        env_token: Option<&str>,
    ) -> std::io::Result<(Auth, Option<String>)> {
        if let Some(t) = env_token.filter(|t| !t.is_empty()) {
            return Ok((
                Auth {
                    hash: blake3::hash(t.as_bytes()),
                },
                None,
            ));
        }
        let path = data.join(HASH_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            let hash = blake3::Hash::from_hex(text.trim())
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            return Ok((Auth { hash }, None));
        }
        let token = format!("cairn_{}", bs58_token());
        std::fs::create_dir_all(data)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(blake3::hash(token.as_bytes()).to_hex().as_bytes())?;
        f.sync_all()?;
        Ok((
            Auth {
                hash: blake3::hash(token.as_bytes()),
            },
            Some(token),
        ))
    }

    /// Accepts the request if any offered token matches; returns the matching token's hash.
    pub fn check(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> Result<blake3::Hash, ApiError> {
        let mut offered: Vec<String> = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
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
        if offered.is_empty() {
            return Err(ApiError::unauthorized(
                "a token is required: Authorization: Bearer <token>",
            ));
        }
        // blake3::Hash equality is constant-time.
        if offered
            .iter()
            .any(|t| blake3::hash(strip_bearer(t).as_bytes()) == self.hash)
        {
            Ok(self.hash)
        } else {
            Err(ApiError::unauthorized("the token is not valid"))
        }
    }
}

fn strip_bearer(t: &str) -> &str {
    let t = t.trim();
    t.strip_prefix("Bearer ")
        .or_else(|| t.strip_prefix("bearer "))
        .unwrap_or(t)
        .trim()
}

fn bs58_token() -> String {
    bs58::encode(rand::random::<[u8; 24]>()).into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(auth.check(&HeaderMap::new(), None).is_err());
    }
}
