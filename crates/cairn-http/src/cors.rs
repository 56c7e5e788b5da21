//! Cross-origin access for browsers: a web app served from another origin (the official JS
//! client's main home, a media player page) may call the API and read its replies.
//!
//! Why it is safe to allow any origin by default: Cairn's credentials are bearer tokens that
//! the page must hold and send itself (header or `?authorization=`), never cookies, so a
//! foreign page gains nothing it could not do with the token anyway, and credentialed CORS is
//! never enabled. Operators who want to pin the apps that may call it list their origins
//! (`cors_origins`); an empty list turns cross-origin access off.
//!
//! The layer itself is tower-http's: it answers preflights (any `OPTIONS`) before auth, since
//! a browser sends them without the token, and adds `Access-Control-Allow-Origin` and the
//! exposed headers to every other reply, JSON errors included, so a page can read why it
//! was refused.

use std::time::Duration;

use axum::http::{header, HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};

/// How long a browser may cache a preflight's answer (Chromium caps it at 2 hours).
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(3600);

/// Headers a page may read from a reply beyond the CORS-safelisted ones: what a media player
/// and the JS client need for ranges, validators, rate-limit waits and auth challenges, and the
/// request's id for reports.
const EXPOSED: [HeaderName; 9] = [
    header::ACCEPT_RANGES,
    header::CONTENT_RANGE,
    header::CONTENT_LENGTH,
    header::ETAG,
    header::LAST_MODIFIED,
    header::RETRY_AFTER,
    header::WWW_AUTHENTICATE,
    header::CACHE_CONTROL,
    HeaderName::from_static(crate::REQUEST_ID),
];

/// Which origins may read replies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// No cross-origin access: no CORS headers, and a preflight, which carries no token, gets
    /// the 401 of any request without one.
    Off,
    /// Every origin (`*`).
    Any,
    /// Exactly these serialized origins, e.g. `https://app.example:8443`.
    List(Vec<HeaderValue>),
}

impl Origins {
    /// Parses the configured list: `["*"]` is any origin, `[]` none, anything else must be a
    /// list of origins (`scheme://host[:port]`, no path, no trailing slash).
    pub fn parse(list: &[String]) -> Result<Origins, String> {
        if list.is_empty() {
            return Ok(Origins::Off);
        }
        if list.iter().any(|o| o == "*") {
            return match list.len() {
                1 => Ok(Origins::Any),
                _ => Err("cors_origins: \"*\" cannot be combined with other origins".into()),
            };
        }
        list.iter()
            .map(|o| check_origin(o))
            .collect::<Result<Vec<_>, _>>()
            .map(Origins::List)
    }

    /// The layer for these origins, or `None` when cross-origin access is off.
    pub fn layer(&self) -> Option<CorsLayer> {
        let origin = match self {
            Origins::Off => return None,
            Origins::Any => AllowOrigin::any(),
            Origins::List(list) => AllowOrigin::list(list.iter().cloned()),
        };
        Some(
            CorsLayer::new()
                .allow_origin(origin)
                .allow_methods([
                    Method::GET,
                    Method::HEAD,
                    Method::POST,
                    Method::PUT,
                    Method::DELETE,
                ])
                // Credentials are never allowed, so echoing what the page asks for (it always
                // includes `authorization`, which `*` would not cover) grants nothing more.
                .allow_headers(AllowHeaders::mirror_request())
                .expose_headers(ExposeHeaders::list(EXPOSED))
                .max_age(PREFLIGHT_MAX_AGE),
        )
    }
}

/// An origin as a browser serializes it in the `Origin` header.
fn check_origin(o: &str) -> Result<HeaderValue, String> {
    let bad = |why: &str| Err(format!("cors_origins: {o:?} is not an origin ({why})"));
    match crate::config::parse_http_url(o) {
        Err(why) => return bad(why),
        Ok(u) if !u.path.is_empty() => return bad("no path after the host"),
        Ok(u) if u.port == Some(if u.https { 443 } else { 80 }) => {
            return bad("browsers leave the default port out")
        }
        Ok(_) => {}
    }
    if o.bytes().any(|b| b.is_ascii_uppercase()) {
        return bad("browsers send origins in lower case");
    }
    HeaderValue::from_str(o).or_else(|_| bad("not a valid header value"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(list: &[&str]) -> Result<Origins, String> {
        Origins::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn origins_are_any_none_or_exact() {
        assert_eq!(parse(&[]), Ok(Origins::Off));
        assert_eq!(parse(&["*"]), Ok(Origins::Any));
        assert_eq!(
            parse(&[
                "https://app.example",
                "http://127.0.0.1:8080",
                "http://[::1]:3000"
            ]),
            Ok(Origins::List(vec![
                HeaderValue::from_static("https://app.example"),
                HeaderValue::from_static("http://127.0.0.1:8080"),
                HeaderValue::from_static("http://[::1]:3000"),
            ]))
        );
        for bad in [
            &["*", "https://a.example"][..],
            &["app.example"],
            &["ftp://app.example"],
            &["https://app.example/"],
            &["https://app.example/path"],
            &["https://user@app.example"],
            &["https://"],
            &["https://App.example"],
            &["https://app.example\n"],
            &["https://app.example:443"],
            &["http://app.example:80"],
            &["https://:8080"],
            &["https://app.example:0"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(Origins::Off.layer().is_none());
        assert!(Origins::Any.layer().is_some());
    }
}
