//! Request-target normalisation: the one canonical form that scope checks,
//! pricing and fingerprints see, and that the gateway forwards upstream.
//!
//! Anything that could make two different strings mean the same resource to
//! some server but not to us is either resolved here (duplicate slashes, dot
//! segments, percent-encoded unreserved characters, a trailing slash) or
//! refused. After decoding, a path holds only RFC 3986 unreserved characters
//! and `/` — all Stripe's paths need — so a decoded `?`, `#`, `;`, `%` or `\`
//! can never change what the upstream reads.

/// Longest request target accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 2048;
const MAX_SEGMENTS: usize = 32;

/// A normalised request target: path (always starting with `/`, no trailing
/// slash except the root) and the raw query, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: String,
    pub query: Option<String>,
}

impl Target {
    /// The path segments, without the leading slash.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').filter(|s| !s.is_empty())
    }

    /// Path plus query, as forwarded upstream.
    pub fn to_request_target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

/// Why a request target is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path must start with '/'")]
    NotAbsolute,
    #[error("the request target is longer than {MAX_TARGET_LEN} bytes")]
    TooLong,
    #[error("the request path has too many segments")]
    TooManySegments,
    #[error("the request path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the request path contains a malformed percent-encoding")]
    BadPercentEncoding,
    #[error("the request path is percent-encoded twice")]
    DoubleEncoding,
    #[error("the request path may hold only letters, digits, '-', '.', '_', '~' and '/'")]
    ForbiddenCharacter,
    #[error("the request path contains a ';' path parameter")]
    PathParameter,
    #[error("the request target contains a fragment")]
    Fragment,
    #[error("the request path climbs above the root with '..'")]
    AboveRoot,
}

/// Normalises a request target as received (`/v1/charges?x=1`).
pub fn normalize(raw: &str) -> Result<Target, PathError> {
    if raw.len() > MAX_TARGET_LEN {
        return Err(PathError::TooLong);
    }
    if raw.contains('#') {
        return Err(PathError::Fragment);
    }
    let (raw_path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    if let Some(q) = query {
        if q.bytes().any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()) {
            return Err(PathError::ForbiddenCharacter);
        }
    }
    if !raw_path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let decoded = decode_path(raw_path)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            s if s.contains(';') => return Err(PathError::PathParameter),
            s => segments.push(s),
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(PathError::TooManySegments);
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(Target { path, query: query.filter(|q| !q.is_empty()).map(str::to_owned) })
}

/// Decodes `%XX` escapes once. A decoded separator or `%` (double encoding)
/// is refused with its own reason; any other byte outside the unreserved set
/// (raw or decoded) is refused as a forbidden character.
fn decode_path(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let c = if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|h| hex_value(*h));
            let lo = bytes.get(i + 2).and_then(|l| hex_value(*l));
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(PathError::BadPercentEncoding);
            };
            i += 3;
            match (hi << 4) | lo {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                b'%' => return Err(PathError::DoubleEncoding),
                d => d,
            }
        } else {
            i += 1;
            b
        };
        let unreserved = c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~');
        if !(unreserved || c == b'/') {
            return if c == b';' { Err(PathError::PathParameter) } else { Err(PathError::ForbiddenCharacter) };
        }
        out.push(char::from(c));
    }
    Ok(out)
}

/// Value of one hexadecimal digit.
pub(crate) fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(not(target_arch = "wasm32"))]
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn path(raw: &str) -> String {
        normalize(raw).unwrap().path
    }

    #[test]
    fn resolves_what_is_equivalent() {
        assert_eq!(path("/v1/charges"), "/v1/charges");
        assert_eq!(path("/v1//charges/"), "/v1/charges");
        assert_eq!(path("/v1/./charges"), "/v1/charges");
        assert_eq!(path("/v1/charges/../refunds"), "/v1/refunds");
        assert_eq!(path("/v1/%63harges"), "/v1/charges");
        assert_eq!(path("/v1/charges/%2e%2e/refunds"), "/v1/refunds");
        assert_eq!(path("/"), "/");
        let t = normalize("/v1/charges?limit=3").unwrap();
        assert_eq!(t.query.as_deref(), Some("limit=3"));
        assert_eq!(t.to_request_target(), "/v1/charges?limit=3");
    }

    #[test]
    fn refuses_what_is_ambiguous() {
        assert_eq!(normalize("/v1/charges%2F..%2Frefunds"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/v1/charges%5c"), Err(PathError::EncodedSeparator));
        assert_eq!(normalize("/v1/%252e%252e/refunds"), Err(PathError::DoubleEncoding));
        assert_eq!(normalize("/v1/charges%zz"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/v1/charges%2"), Err(PathError::BadPercentEncoding));
        assert_eq!(normalize("/v1/charges;x=1"), Err(PathError::PathParameter));
        assert_eq!(normalize("/v1/charges%3bx"), Err(PathError::PathParameter));
        assert_eq!(normalize("/../v1/charges"), Err(PathError::AboveRoot));
        assert_eq!(normalize("v1/charges"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/v1/charges#x"), Err(PathError::Fragment));
        assert_eq!(normalize("/v1/char ges"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/v1/charges%00"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/v1\\charges"), Err(PathError::ForbiddenCharacter));
        // Decoded delimiters would re-split the target upstream: refused, not decoded.
        assert_eq!(normalize("/v1/charges/ch_1%3f/capture"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/v1/charges/ch_1%23/capture"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/v1/charges/ch_%3c1%3e"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/v1/charges/ch_1{x}"), Err(PathError::ForbiddenCharacter));
        assert_eq!(normalize("/v1/charges/ch_1~x"), Ok(Target { path: "/v1/charges/ch_1~x".into(), query: None }));
        assert_eq!(normalize(&format!("/{}", "a".repeat(MAX_TARGET_LEN))), Err(PathError::TooLong));
        assert_eq!(normalize(&"/a".repeat(40)), Err(PathError::TooManySegments));
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest! {
        #[test]
        fn never_panics_and_is_idempotent(raw in "[/a-z.%0-9;?A-F]{0,60}") {
            if let Ok(t) = normalize(&raw) {
                prop_assert!(t.path.starts_with('/'));
                prop_assert!(t.path.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~/".contains(&b)));
                prop_assert!(!t.path.contains("//"));
                prop_assert!(!t.path.split('/').any(|s| s == ".." || s == "."));
                let again = normalize(&t.path).unwrap();
                prop_assert_eq!(again.path, t.path);
            }
        }
    }
}
