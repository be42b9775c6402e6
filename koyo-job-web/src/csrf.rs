//! Protection of the mutating routes against cross-site request forgery.
//!
//! A mutating request must carry the header `x-koyo-csrf` equal to the router's token. A page
//! on another origin cannot set that header on a request to this one without a CORS preflight
//! that the router never answers, and cannot read the token either (the same-origin policy
//! hides the page and `GET /api/csrf` from it). As a second fence, requests the browser marks
//! as cross-site (`Sec-Fetch-Site`) or whose `Origin` is not this host are refused outright.

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

use crate::api::ApiError;

/// The header a mutating request carries the token in.
pub(crate) const HEADER: &str = "x-koyo-csrf";

/// 128 random bits from the operating system, as 32 hex digits.
pub(crate) fn random_token() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if from_os.is_err() {
        // No /dev/urandom (not a Unix): std's hasher keys are random per process.
        use std::hash::{BuildHasher as _, Hasher as _};
        for chunk in bytes.chunks_mut(8) {
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u128(std::time::SystemTime::now().elapsed().map_or(0, |d| d.as_nanos()));
            chunk.copy_from_slice(&hasher.finish().to_le_bytes()[..chunk.len()]);
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a mutating request that is cross-site or lacks the token.
pub(crate) fn check(headers: &HeaderMap, token: &str) -> Result<(), ApiError> {
    let refuse = |why: &str| Err(ApiError::forbidden(why));
    if headers.get("sec-fetch-site").is_some_and(|site| site.as_bytes() == b"cross-site") {
        return refuse("cross-site requests may not change jobs");
    }
    if let Some(origin) = headers.get(ORIGIN) {
        // Behind a proxy that rewrites Host, the browser's host is in X-Forwarded-Host.
        let hosts = [headers.get(HOST), headers.get("x-forwarded-host")];
        if !hosts.into_iter().flatten().any(|host| origin_matches_host(origin.as_bytes(), host.as_bytes())) {
            return refuse("the request's Origin is not this site");
        }
    }
    match headers.get(HEADER) {
        None => refuse("the x-koyo-csrf header is missing: reload the page (scripts: GET api/csrf)"),
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => refuse("the x-koyo-csrf token is wrong or expired: reload the page"),
    }
}

/// `Origin: http://host:port` (or `null`) against `Host: host:port`.
fn origin_matches_host(origin: &[u8], host: &[u8]) -> bool {
    let authority = origin
        .strip_prefix(b"http://")
        .or_else(|| origin.strip_prefix(b"https://"))
        .unwrap_or(b"\0not a web origin");
    !host.is_empty() && authority.eq_ignore_ascii_case(host)
}

/// Compares without stopping at the first difference, so timing tells nothing of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_token_is_required_and_compared_whole() {
        assert!(check(&headers(&[(HEADER, TOKEN)]), TOKEN).is_ok());
        assert!(check(&headers(&[]), TOKEN).is_err());
        assert!(check(&headers(&[(HEADER, "0123456789abcdef0123456789abcdee")]), TOKEN).is_err());
        assert!(check(&headers(&[(HEADER, "0123456789abcdef")]), TOKEN).is_err());
    }

    #[test]
    fn cross_site_requests_are_refused_even_with_the_token() {
        assert!(check(&headers(&[(HEADER, TOKEN), ("sec-fetch-site", "cross-site")]), TOKEN).is_err());
        assert!(check(&headers(&[(HEADER, TOKEN), ("sec-fetch-site", "same-origin")]), TOKEN).is_ok());
        let other = [(HEADER, TOKEN), ("origin", "http://evil.example"), ("host", "127.0.0.1:8080")];
        assert!(check(&headers(&other), TOKEN).is_err());
        let same = [(HEADER, TOKEN), ("origin", "http://127.0.0.1:8080"), ("host", "127.0.0.1:8080")];
        assert!(check(&headers(&same), TOKEN).is_ok());
        assert!(check(&headers(&[(HEADER, TOKEN), ("origin", "null"), ("host", "a")]), TOKEN).is_err());
        let proxied = [
            (HEADER, TOKEN),
            ("origin", "https://jobs.example"),
            ("host", "10.0.0.5:3000"),
            ("x-forwarded-host", "jobs.example"),
        ];
        assert!(check(&headers(&proxied), TOKEN).is_ok());
    }

    #[test]
    fn random_tokens_are_long_and_differ() {
        let (a, b) = (random_token(), random_token());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
