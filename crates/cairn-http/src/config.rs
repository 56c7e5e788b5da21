//! Server settings: defaults, then a TOML file, then `CAIRN_*` environment variables, then flags
//! (applied by the binary). `cairn serve` with nothing set runs on `./cairn-data` at
//! `127.0.0.1:8008`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Data directory (packs and index).
    pub data: PathBuf,
    /// Address to listen on.
    pub listen: String,
    /// Target part size for new files jobs, in bytes.
    pub part_size: u64,
    /// Largest JSON request body, in bytes (files-job ops, metadata).
    pub max_json_body: usize,
    /// Seconds an upload body may send nothing (or a download reader take nothing) before the
    /// request is cut off; what an upload received is kept.
    pub idle_timeout_secs: u64,
    /// Seconds a client has to send a request's headers (slowloris defence).
    pub header_timeout_secs: u64,
    /// Most open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// A pack file is sealed (and becomes a candidate for repacking by gc) at this size.
    pub pack_size: u64,
    /// Bytes of the data disk kept free for the index (RocksDB): uploads get 507 `no_space`
    /// there, so deleting and gc still work on a disk the uploads filled. 0 keeps none.
    pub min_free_space: u64,
    /// How pack bytes reach the disk: `"direct"` (`O_DIRECT`, the default) or `"cached"`
    /// (through the page cache); both fsync before anything is acknowledged. See
    /// `cairn_store::StoreConfig::direct_writes`.
    pub pack_writes: String,
    /// Bytes an upload request receives between the durable commits made while it is still
    /// sending (its end always commits). A crash costs each stream at most this much resending.
    pub commit_every: u64,
    /// Requests per second each token may make (0: no limit); more get 429 `rate_limited`.
    pub rate_limit: u32,
    /// Requests a token may make at once above its rate.
    pub rate_burst: u32,
    /// Uploads one token may have receiving at once (0: no limit of its own); more wait up to
    /// `idle_timeout_secs` for one to end, then get 503 `busy`. The engine's 192 upload permits
    /// are shared by all tokens: this keeps one token's slow uploads from holding them all.
    pub max_uploads_per_token: usize,
    /// Origins whose pages may call the API from a browser (CORS): `["*"]` (the default) for
    /// any, `[]` for none, or exact origins such as `"https://app.example"`. See `cors.rs`.
    pub cors_origins: Vec<String>,
    /// The URL clients should use, as `GET /config` advertises it (`fabric_api`), when it is not
    /// `http://` + the request's `Host`: behind a TLS-terminating proxy, `"https://cairn.example/"`.
    pub public_url: Option<String>,
    /// Serve files whose type can run scripts in a browser (HTML, SVG, XML) with
    /// `Content-Security-Policy: sandbox` (the default): a page uploaded by one token's holder
    /// cannot then read another's token from its URL. Off for a server that hosts web apps
    /// (pages whose scripts call the API) in its objects.
    pub sandbox_pages: bool,
    /// Start even though pack files holding committed data are missing (restore them instead if
    /// you can): their files then read as `corrupt` and `cairn fsck` names them.
    pub allow_missing_packs: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            data: PathBuf::from("./cairn-data"),
            listen: "127.0.0.1:8008".into(),
            part_size: 32 << 20,
            max_json_body: 64 << 20,
            idle_timeout_secs: 60,
            header_timeout_secs: 30,
            max_connections: 4096,
            pack_size: 256 << 20,
            min_free_space: 128 << 20,
            pack_writes: "direct".into(),
            commit_every: 32 << 20,
            rate_limit: 10_000,
            rate_burst: 10_000,
            max_uploads_per_token: 64,
            cors_origins: vec!["*".into()],
            public_url: None,
            sandbox_pages: true,
            allow_missing_packs: false,
        }
    }
}

impl ServerConfig {
    /// Defaults, overridden by the TOML file (if given) and then by `CAIRN_DATA`,
    /// `CAIRN_LISTEN`, `CAIRN_PART_SIZE`, `CAIRN_CORS_ORIGINS` (comma-separated; empty for
    /// none), `CAIRN_PUBLIC_URL` (empty for none), `CAIRN_PACK_WRITES`, `CAIRN_SANDBOX_PAGES` and
    /// `CAIRN_ALLOW_MISSING_PACKS` (yes/no: [`env_bool`]).
    pub fn load(file: Option<&Path>) -> Result<ServerConfig, String> {
        let mut cfg = match file {
            Some(f) => {
                let text =
                    std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?
            }
            None => ServerConfig::default(),
        };
        if let Some(v) = env_set("CAIRN_DATA") {
            cfg.data = v.into();
        }
        if let Some(v) = env_set("CAIRN_LISTEN") {
            cfg.listen = v;
        }
        if let Some(v) = env_set("CAIRN_PART_SIZE") {
            cfg.part_size = v.parse().map_err(|e| format!("CAIRN_PART_SIZE: {e}"))?;
        }
        if let Ok(v) = std::env::var("CAIRN_CORS_ORIGINS") {
            cfg.cors_origins = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(String::from)
                .collect();
        }
        crate::cors::Origins::parse(&cfg.cors_origins)?;
        if let Some(v) = env_bool("CAIRN_ALLOW_MISSING_PACKS")? {
            cfg.allow_missing_packs = v;
        }
        if let Some(v) = env_bool("CAIRN_SANDBOX_PAGES")? {
            cfg.sandbox_pages = v;
        }
        if let Some(v) = env_set("CAIRN_PACK_WRITES") {
            cfg.pack_writes = v;
        }
        if let Some(v) = env_set("CAIRN_PUBLIC_URL") {
            cfg.public_url = Some(v);
        }
        if let Some(u) = &cfg.public_url {
            cfg.public_url = Some(check_public_url(u)?);
        }
        // A power of two so that parts are whole BLAKE3 subtrees: a file's hash then comes from
        // its parts' without re-reading them, and every file's declared blake3 is checked.
        if cfg.part_size < 1024 || cfg.part_size > (1 << 32) || !cfg.part_size.is_power_of_two() {
            return Err(format!(
                "part_size {} must be a power of two between 1 KiB and 4 GiB (e.g. 33554432 \
                 for 32 MiB): a file's blake3 is derived from its parts' hashes",
                cfg.part_size
            ));
        }
        if cfg.min_free_space > 1 << 40 {
            return Err(format!(
                "min_free_space {} must be at most 1 TiB",
                cfg.min_free_space
            ));
        }
        if !(2 << 20..=1 << 40).contains(&cfg.pack_size) {
            return Err(format!(
                "pack_size {} must be between 2 MiB and 1 TiB",
                cfg.pack_size
            ));
        }
        if !(1 << 20..=1 << 40).contains(&cfg.commit_every) {
            return Err(format!(
                "commit_every {} must be between 1 MiB and 1 TiB",
                cfg.commit_every
            ));
        }
        for (name, secs) in [
            ("idle_timeout_secs", cfg.idle_timeout_secs),
            ("header_timeout_secs", cfg.header_timeout_secs),
        ] {
            if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
                return Err(format!(
                    "{name} {secs} must be between 1 and {MAX_TIMEOUT_SECS} (a day)"
                ));
            }
        }
        if !(MIN_JSON_BODY..=1 << 30).contains(&cfg.max_json_body) {
            return Err(format!(
                "max_json_body {} must be between {MIN_JSON_BODY} bytes and 1 GiB (smaller \
                 refuses ordinary requests)",
                cfg.max_json_body
            ));
        }
        if cfg.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        let most = crate::limit::MAX_UPLOADS_PER_TOKEN;
        if cfg.max_uploads_per_token > most {
            return Err(format!(
                "max_uploads_per_token {} must be at most {most} (0 for no limit of its own)",
                cfg.max_uploads_per_token
            ));
        }
        if !["cached", "direct"].contains(&cfg.pack_writes.as_str()) {
            return Err(format!(
                "pack_writes {:?} must be \"cached\" or \"direct\"",
                cfg.pack_writes
            ));
        }
        Ok(cfg)
    }
}

/// Smallest `max_json_body`: a files job of a few ops, a library's name, metadata of a few keys.
const MIN_JSON_BODY: usize = 4096;

/// Longest configurable timeout: a day.
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;

/// The parts of a configured `http(s)://host[:port][/path]` URL.
pub(crate) struct HttpUrl<'a> {
    pub https: bool,
    pub port: Option<u16>,
    pub path: &'a str,
}

/// Parses a configured URL or origin; says why not when it is not one. Shared by the checks of
/// `public_url` and `cors_origins`. ASCII only (browsers send international names in
/// punycode), a host, a port from 1 to 65535 if any, and no user, query or fragment.
pub(crate) fn parse_http_url(u: &str) -> Result<HttpUrl<'_>, &'static str> {
    let (https, rest) = match (u.strip_prefix("https://"), u.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        _ => return Err("expected http:// or https://, then the host"),
    };
    if !rest.is_ascii()
        || rest.contains(['?', '#', '@'])
        || rest.contains(|c: char| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return Err("ASCII only (punycode), and no user, query, fragment or spaces");
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    // The last `:` starts a port unless it is inside an IPv6 literal (`[::1]`).
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => {
            let port = authority[i + 1..].parse::<u16>().ok().filter(|&p| p > 0);
            (
                &authority[..i],
                Some(port.ok_or("the port must be 1 to 65535")?),
            )
        }
        _ => (authority, None),
    };
    if host.is_empty() || host == "[]" {
        return Err("a host is needed");
    }
    Ok(HttpUrl { https, port, path })
}

/// A `CAIRN_*` variable's value; an empty one counts as unset (the config file's value stands),
/// as for the CLI's variables. (`CAIRN_CORS_ORIGINS` is read apart: empty there means none.)
fn env_set(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// A yes/no `CAIRN_*` variable: `1/true/yes/on` or `0/false/no/off`, any case; unset or empty
/// is `None`, anything else an error naming it.
fn env_bool(name: &str) -> Result<Option<bool>, String> {
    let Some(v) = env_set(name) else {
        return Ok(None);
    };
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" => Ok(Some(false)),
        _ => Err(format!(
            "{name}={v:?} must be 1/true/yes/on or 0/false/no/off"
        )),
    }
}

/// `http(s)://host[:port][/path]`, returned with exactly one trailing slash (the client
/// appends paths to it).
fn check_public_url(u: &str) -> Result<String, String> {
    parse_http_url(u).map_err(|why| format!("public_url {u:?}: {why}"))?;
    Ok(format!("{}/", u.trim_end_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_overrides_defaults_and_unknown_keys_fail() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cairn.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9999\"\npart_size = 4194304\n").unwrap();
        let cfg = ServerConfig::load(Some(&f)).unwrap();
        assert_eq!(
            (cfg.listen.as_str(), cfg.part_size),
            ("127.0.0.1:9999", 4 << 20)
        );
        assert_eq!(cfg.data, PathBuf::from("./cairn-data"));
        std::fs::write(&f, "lisen = 1\n").unwrap();
        assert!(ServerConfig::load(Some(&f)).is_err());
        std::fs::write(&f, "public_url = \"https://cairn.example:8443/api\"\n").unwrap();
        let cfg = ServerConfig::load(Some(&f)).unwrap();
        assert_eq!(
            cfg.public_url.as_deref(),
            Some("https://cairn.example:8443/api/")
        );
        for bad in [
            "cairn.example",
            "ftp://x",
            "https://",
            "https://:8443/",
            "https://x:0",
            "https://x:99999",
            "https://a b",
            "https://x/?q",
            "https://bücher.example",
        ] {
            std::fs::write(&f, format!("public_url = {bad:?}\n")).unwrap();
            assert!(ServerConfig::load(Some(&f)).is_err(), "{bad}");
        }
        std::fs::write(&f, "cors_origins = [\"https://app.example/\"]\n").unwrap();
        let e = ServerConfig::load(Some(&f)).unwrap_err();
        assert!(e.contains("not an origin"), "{e}");
    }

    /// Timeouts and the connection cap out of their bounds stop the server before it opens
    /// anything (as operations.md says of every setting).
    #[test]
    fn timeouts_and_connection_cap_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cairn.toml");
        for (bad, says) in [
            ("idle_timeout_secs = 0", "idle_timeout_secs"),
            ("header_timeout_secs = 0", "header_timeout_secs"),
            ("idle_timeout_secs = 86401", "idle_timeout_secs"),
            ("max_connections = 0", "max_connections"),
            ("pack_writes = \"fast\"", "pack_writes"),
            ("max_json_body = 0", "max_json_body"),
            ("max_json_body = 4095", "max_json_body"),
            ("max_uploads_per_token = 65537", "max_uploads_per_token"),
            ("part_size = 512", "part_size"),
            ("part_size = 8589934592", "part_size"),
            ("part_size = 33554431", "power of two"),
        ] {
            std::fs::write(&f, format!("{bad}\n")).unwrap();
            let e = ServerConfig::load(Some(&f)).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        std::fs::write(&f, "idle_timeout_secs = 1\nmax_connections = 1\n").unwrap();
        assert!(ServerConfig::load(Some(&f)).is_ok());
        std::fs::write(&f, "pack_writes = \"direct\"\n").unwrap();
        assert_eq!(ServerConfig::load(Some(&f)).unwrap().pack_writes, "direct");
    }
}
