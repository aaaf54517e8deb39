//! Endpoint scopes: `"METHOD /path"`, where a path segment may be `*` for one
//! object id (`POST /v1/charges/*/capture`). Scopes are matched against a
//! normalised [`Target`](crate::path::Target) only, never against raw input.

use std::fmt;
use std::str::FromStr;

const MAX_SCOPE_LEN: usize = 256;
const MAX_SCOPE_SEGMENTS: usize = 12;

/// The HTTP methods a scope can name. Anything else (HEAD, OPTIONS, CONNECT,
/// PUT, PATCH, ...) is never in scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    /// Parses a request method, ignoring ASCII case.
    pub fn parse(text: &str) -> Option<Method> {
        if text.eq_ignore_ascii_case("GET") {
            Some(Method::Get)
        } else if text.eq_ignore_ascii_case("POST") {
            Some(Method::Post)
        } else if text.eq_ignore_ascii_case("DELETE") {
            Some(Method::Delete)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment (an object id).
    Any,
}

/// One allowed endpoint of a vault key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    method: Method,
    segments: Vec<Segment>,
}

/// Why a scope string is malformed; the message is shown to the admin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope {0:?} must be \"METHOD /path\", e.g. \"POST /v1/charges\"")]
    Shape(String),
    #[error("scope {0:?}: method must be GET, POST or DELETE")]
    Method(String),
    #[error("scope {0:?}: path must start with '/'")]
    NotAbsolute(String),
    #[error("scope {0:?}: path segments must be non-empty letters, digits, '_', '-', '.' or a lone '*'")]
    Segment(String),
    #[error("scope {0:?} is too long")]
    TooLong(String),
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(text: &str) -> Result<Scope, ScopeError> {
        let owned = || text.to_owned();
        if text.len() > MAX_SCOPE_LEN {
            return Err(ScopeError::TooLong(owned()));
        }
        let (method, path) = text.split_once(' ').ok_or_else(|| ScopeError::Shape(owned()))?;
        let method = Method::parse(method).ok_or_else(|| ScopeError::Method(owned()))?;
        if !path.starts_with('/') {
            return Err(if path.contains(' ') || path.is_empty() {
                ScopeError::Shape(owned())
            } else {
                ScopeError::NotAbsolute(owned())
            });
        }
        let mut segments = Vec::new();
        for segment in path.split('/').skip(1) {
            let ok = segment == "*"
                || (!segment.is_empty()
                    && segment != "."
                    && segment != ".."
                    && segment.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)));
            if !ok {
                return Err(ScopeError::Segment(owned()));
            }
            segments.push(if segment == "*" { Segment::Any } else { Segment::Literal(segment.to_owned()) });
        }
        if segments.is_empty() || segments.len() > MAX_SCOPE_SEGMENTS {
            return Err(ScopeError::Segment(owned()));
        }
        Ok(Scope { method, segments })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.method)?;
        for s in &self.segments {
            match s {
                Segment::Literal(l) => write!(f, "/{l}")?,
                Segment::Any => f.write_str("/*")?,
            }
        }
        Ok(())
    }
}

impl Scope {
    pub fn method(&self) -> Method {
        self.method
    }

    /// The first path segment (e.g. `v1`, `admin`), for vendor checks.
    pub fn first_segment(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Literal(l)) => Some(l),
            _ => None,
        }
    }

    /// Whether a normalised request (method, path) falls in this scope.
    /// Matching is exact and case-sensitive; `*` never matches an empty segment.
    pub fn matches(&self, method: Method, normalized_path: &str) -> bool {
        if method != self.method || !normalized_path.starts_with('/') {
            return false;
        }
        let mut parts = normalized_path.split('/').skip(1);
        for want in &self.segments {
            let Some(got) = parts.next() else {
                return false;
            };
            let ok = match want {
                // Never a dot segment, should an unnormalised path ever get here.
                Segment::Any => !got.is_empty() && got != "." && got != "..",
                Segment::Literal(l) => l == got,
            };
            if !ok {
                return false;
            }
        }
        parts.next().is_none()
    }
}

/// True when any of `scopes` admits the request.
pub fn any_matches(scopes: &[Scope], method: Method, normalized_path: &str) -> bool {
    scopes.iter().any(|s| s.matches(method, normalized_path))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(not(target_arch = "wasm32"))]
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn scope(s: &str) -> Scope {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_canonically() {
        assert_eq!(scope("post /v1/charges").to_string(), "POST /v1/charges");
        assert_eq!(scope("POST /v1/charges/*/capture").to_string(), "POST /v1/charges/*/capture");
    }

    #[test]
    fn rejects_malformed_scopes() {
        for bad in [
            "",
            "POST",
            "POST ",
            "POST v1/charges",
            "PUT /v1/charges",
            "POST /v1//charges",
            "POST /v1/charges/",
            "POST /v1/../refunds",
            "POST /v1/char*",
            "POST  /v1/charges",
            "POST /v1/charges?x=1",
            "POST /v1/ch%61rges",
            "GET /",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad:?} should be refused");
        }
        assert!(matches!("HEAD /v1/charges".parse::<Scope>(), Err(ScopeError::Method(_))));
    }

    #[test]
    fn matches_exactly() {
        let s = scope("POST /v1/charges");
        assert!(s.matches(Method::Post, "/v1/charges"));
        assert!(!s.matches(Method::Get, "/v1/charges"));
        assert!(!s.matches(Method::Post, "/v1/charges/ch_1"));
        assert!(!s.matches(Method::Post, "/v1/refunds"));
        assert!(!s.matches(Method::Post, "/V1/Charges"));
        assert!(!s.matches(Method::Post, "/v1"));
        let w = scope("GET /v1/charges/*");
        assert!(w.matches(Method::Get, "/v1/charges/ch_123"));
        assert!(!w.matches(Method::Get, "/v1/charges"));
        assert!(!w.matches(Method::Get, "/v1/charges/ch_1/refunds"));
        assert!(!w.matches(Method::Get, "/v1/charges/.."));
        assert!(!s.matches(Method::Post, "x/v1/charges"));
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,64}") {
            let _ = s.parse::<Scope>();
        }

        #[test]
        fn display_round_trips(segs in proptest::collection::vec("[a-z_]{1,8}|\\*", 1..5)) {
            let text = format!("GET /{}", segs.join("/"));
            let s: Scope = text.parse().unwrap();
            prop_assert_eq!(s.to_string(), text.clone());
            prop_assert_eq!(s.to_string().parse::<Scope>().unwrap(), s);
        }
    }
}
