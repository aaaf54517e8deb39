//! Strict `application/x-www-form-urlencoded` parsing with Stripe's bracket
//! syntax (`metadata[k]=v`, `line_items[0][price_data][unit_amount]=100`,
//! `expand[]=x`). Keys are kept flat, exactly as Stripe names them; the
//! parser's job is to refuse what Stripe might read differently from us.

use crate::path::hex_value;

/// Largest body the parser accepts (the filter enforces its own limit first).
pub const MAX_PARAMS: usize = 4096;
const MAX_KEY_LEN: usize = 512;
const MAX_DEPTH: usize = 8;

/// Why a body cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the body has a malformed percent-encoding")]
    BadPercentEncoding,
    #[error("the body is not valid UTF-8 after decoding")]
    NotUtf8,
    #[error("parameter name {0:?} is malformed")]
    BadKey(String),
    #[error("the body has more than {MAX_PARAMS} parameters")]
    TooManyParams,
    #[error("parameter {0:?} is given more than once")]
    Duplicate(String),
    #[error("parameter {0:?} has an array index that is not a plain decimal number (like 0, 1, 2)")]
    BadIndex(String),
}

/// Decoded parameters in the order they came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormParams {
    pairs: Vec<(String, String)>,
}

impl FormParams {
    /// Parses a form body. Empty pairs (`a=1&&b=2`) are ignored, as servers do.
    pub fn parse(body: &[u8]) -> Result<FormParams, FormError> {
        let mut pairs = Vec::new();
        for raw in body.split(|&b| b == b'&') {
            if raw.is_empty() {
                continue;
            }
            if pairs.len() >= MAX_PARAMS {
                return Err(FormError::TooManyParams);
            }
            let (k, v) = match raw.iter().position(|&b| b == b'=') {
                Some(i) => (raw.get(..i).unwrap_or_default(), raw.get(i + 1..).unwrap_or_default()),
                None => (raw, &b""[..]),
            };
            let key = decode_component(k)?;
            check_key(&key)?;
            pairs.push((key, decode_component(v)?));
        }
        Ok(FormParams { pairs })
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The single value of `key`; a key given twice is an error, because
    /// which one the upstream honours is not ours to guess.
    pub fn get(&self, key: &str) -> Result<Option<&str>, FormError> {
        let mut found = None;
        for (k, v) in &self.pairs {
            if k == key {
                if found.is_some() {
                    return Err(FormError::Duplicate(key.to_owned()));
                }
                found = Some(v.as_str());
            }
        }
        Ok(found)
    }

    /// Every parameter name that is given more than once, except array
    /// appends (`expand[]`), which Stripe defines as repeatable.
    pub fn first_duplicate(&self) -> Option<&str> {
        let mut keys: Vec<&str> = self.pairs.iter().map(|(k, _)| k.as_str()).filter(|k| !k.ends_with("[]")).collect();
        keys.sort_unstable();
        keys.windows(2).find(|w| w.first() == w.get(1)).and_then(|w| w.first().copied())
    }

    /// Canonical encoding: pairs sorted by key (stable, so repeated array
    /// appends keep their order), minimally percent-encoded. Two bodies that
    /// Stripe reads the same way encode the same.
    pub fn canonical(&self) -> String {
        let mut sorted: Vec<&(String, String)> = self.pairs.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = String::new();
        for (i, (k, v)) in sorted.into_iter().enumerate() {
            if i > 0 {
                out.push('&');
            }
            encode_component(k, &mut out);
            out.push('=');
            encode_component(v, &mut out);
        }
        out
    }

    /// Indices `n` for which some `prefix[n]...` key exists, ascending (for `line_items[n]`).
    pub fn array_indices(&self, prefix: &str) -> Result<Vec<u32>, FormError> {
        let mut out = Vec::new();
        // The smallest bad key is reported, so the error names the same key
        // however the body orders its parameters.
        let mut bad: Option<&String> = None;
        for (k, _) in &self.pairs {
            let Some(rest) = k.strip_prefix(prefix).and_then(|r| r.strip_prefix('[')) else { continue };
            // Only canonical indices: `[00]`, `[+1]` or `[x]` would be read
            // differently here and at Stripe, and a line item priced by one
            // reader but not the other is money moved past the cap.
            let idx = rest.split_once(']').map(|(i, _)| i).filter(|i| is_canonical_index(i));
            match idx.and_then(|i| i.parse().ok()) {
                Some(i) => out.push(i),
                None => bad = Some(bad.map_or(k, |b| b.min(k))),
            }
        }
        if let Some(k) = bad {
            return Err(FormError::BadIndex(k.clone()));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

fn is_canonical_index(i: &str) -> bool {
    !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) && (i == "0" || !i.starts_with('0'))
}

fn decode_component(raw: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        match b {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = raw.get(i + 1).and_then(|h| hex_value(*h));
                let lo = raw.get(i + 2).and_then(|l| hex_value(*l));
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(FormError::BadPercentEncoding);
                };
                out.push((hi << 4) | lo);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| FormError::NotUtf8)
}

/// `name` then zero or more `[...]` groups; no stray brackets, no control characters.
fn check_key(key: &str) -> Result<(), FormError> {
    let bad = || FormError::BadKey(key.chars().take(64).collect());
    if key.is_empty() || key.len() > MAX_KEY_LEN || key.chars().any(char::is_control) {
        return Err(bad());
    }
    let (name, mut rest) = match key.find('[') {
        Some(i) => key.split_at(i),
        None => (key, ""),
    };
    if name.is_empty() || name.contains(']') {
        return Err(bad());
    }
    let mut depth = 0;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let close = inner.find(']').ok_or_else(bad)?;
        let (group, after) = inner.split_at(close);
        if group.contains('[') {
            return Err(bad());
        }
        rest = after.get(1..).unwrap_or_default();
        depth += 1;
        if depth > MAX_DEPTH {
            return Err(bad());
        }
    }
    Ok(())
}

fn encode_component(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~[]".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
}

const HEX: [u8; 16] = *b"0123456789ABCDEF";

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_stripe_bracket_syntax() {
        let body = b"amount=2999&currency=usd&metadata%5Border_id%5D=o+1&line_items[0][price_data][unit_amount]=100&expand[]=a&expand[]=b";
        let p = FormParams::parse(body).unwrap();
        assert_eq!(p.get("amount").unwrap(), Some("2999"));
        assert_eq!(p.get("metadata[order_id]").unwrap(), Some("o 1"));
        assert_eq!(p.get("line_items[0][price_data][unit_amount]").unwrap(), Some("100"));
        assert_eq!(p.first_duplicate(), None);
        assert_eq!(p.array_indices("line_items"), Ok(vec![0]));
    }

    #[test]
    fn refuses_what_is_ambiguous() {
        assert_eq!(FormParams::parse(b"amount=%zz"), Err(FormError::BadPercentEncoding));
        assert_eq!(FormParams::parse(b"amount=%F"), Err(FormError::BadPercentEncoding));
        assert_eq!(FormParams::parse(b"a=%FF%FE"), Err(FormError::NotUtf8));
        assert!(matches!(FormParams::parse(b"meta[x=1"), Err(FormError::BadKey(_))));
        assert!(matches!(FormParams::parse(b"meta]x=1"), Err(FormError::BadKey(_))));
        assert!(matches!(FormParams::parse(b"=1"), Err(FormError::BadKey(_))));
        assert!(matches!(FormParams::parse(b"a[b]c=1"), Err(FormError::BadKey(_))));
        let dup = FormParams::parse(b"amount=1&amount=2").unwrap();
        assert_eq!(dup.get("amount"), Err(FormError::Duplicate("amount".into())));
        assert_eq!(dup.first_duplicate(), Some("amount"));
    }

    #[test]
    fn canonical_form_ignores_order_and_encoding_choices() {
        let a = FormParams::parse(b"currency=usd&amount=100&metadata[k]=a%20b").unwrap();
        let b = FormParams::parse(b"amount=100&metadata%5Bk%5D=a+b&currency=usd&").unwrap();
        assert_eq!(a.canonical(), b.canonical());
        let c = FormParams::parse(b"amount=101&currency=usd&metadata[k]=a b").unwrap();
        assert_ne!(a.canonical(), c.canonical());
        // Array appends keep their order: a different order is a different request.
        let e1 = FormParams::parse(b"expand[]=x&expand[]=y").unwrap();
        let e2 = FormParams::parse(b"expand[]=y&expand[]=x").unwrap();
        assert_ne!(e1.canonical(), e2.canonical());
    }

    #[test]
    fn a_bad_index_is_named_the_same_whatever_the_order() {
        let a = FormParams::parse(b"line_items[y]=1&line_items[a]=2&line_items[0][quantity]=1").unwrap();
        let b = FormParams::parse(b"line_items[0][quantity]=1&line_items[a]=2&line_items[y]=1").unwrap();
        let expected = Err(FormError::BadIndex("line_items[a]".into()));
        assert_eq!(a.array_indices("line_items"), expected);
        assert_eq!(b.array_indices("line_items"), expected);
    }

    proptest! {
        #[test]
        fn parse_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FormParams::parse(&body);
        }

        #[test]
        fn canonical_is_a_fixed_point(body in "[a-z%0-9=&+\\[\\]]{0,80}") {
            if let Ok(p) = FormParams::parse(body.as_bytes()) {
                let canon = p.canonical();
                let again = FormParams::parse(canon.as_bytes()).unwrap();
                prop_assert_eq!(again.canonical(), canon);
            }
        }
    }
}
