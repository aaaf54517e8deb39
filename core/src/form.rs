//! Strict `application/x-www-form-urlencoded` parsing with Stripe's bracket
//! syntax (`metadata[k]=v`, `line_items[0][price_data][unit_amount]=100`,
//! `expand[]=x`), and the one encoding the gateway forwards.
//!
//! The gateway never forwards a client's bytes: it forwards [`FormParams::encode`]
//! of what it parsed and priced. So the parser's job is to accept only what
//! has one reading, and the encoder's to write it so that any server reads
//! the same names and values back:
//!
//! - names are `name` then bracket groups: `name` of letters, digits and `_`;
//!   a group is `[]` (append, last only), a decimal index `[0]`, `[1]`... or a
//!   hash key of letters, digits, `_` and `-`;
//! - one name is never both a value and a list or hash (`a=1&a[x]=2`), a list
//!   and a hash, or given twice (except `[]` appends, which Stripe repeats);
//! - list indices are `0, 1, 2, ...` without gaps or leading zeros;
//! - values are UTF-8 without control characters other than tab and newlines;
//! - the encoding keeps every pair in order and percent-encodes every byte of
//!   a value outside RFC 3986's unreserved set.

use std::collections::BTreeMap;

use crate::path::hex_value;

/// Most parameters a body may have (the filter enforces its own byte limit first).
pub const MAX_PARAMS: usize = 4096;
const MAX_KEY_LEN: usize = 512;
const MAX_DEPTH: usize = 8;

/// Why a body cannot be read. Each names the parameter at fault where there is one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("the body has a malformed percent-encoding")]
    BadPercentEncoding,
    #[error("the body is not valid UTF-8 after decoding")]
    NotUtf8,
    #[error(
        "parameter name {0:?} is malformed (names are letters, digits and '_', then groups like [key], [0] or [])"
    )]
    BadKey(String),
    #[error("parameter {0:?} has a control character in its value")]
    ControlCharacter(String),
    #[error("the body has more than {MAX_PARAMS} parameters")]
    TooManyParams,
    #[error("parameter {0:?} is given more than once")]
    Duplicate(String),
    #[error("parameter {0:?} has an array index that is not a plain decimal number (like 0, 1, 2)")]
    BadIndex(String),
    #[error("parameter {0:?} is given both as a value and as a list or hash, or as both a list and a hash")]
    Conflict(String),
    #[error("the list {0:?} must be indexed 0, 1, 2... without gaps")]
    SparseIndex(String),
}

impl FormError {
    /// The parameter at fault, for Stripe's `param` field.
    pub fn param(&self) -> Option<String> {
        match self {
            FormError::BadKey(p)
            | FormError::ControlCharacter(p)
            | FormError::Duplicate(p)
            | FormError::BadIndex(p)
            | FormError::Conflict(p)
            | FormError::SparseIndex(p) => Some(p.clone()),
            FormError::BadPercentEncoding | FormError::NotUtf8 | FormError::TooManyParams => None,
        }
    }
}

/// Decoded parameters in the order they came; unambiguous by construction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormParams {
    pairs: Vec<(String, String)>,
}

/// One bracket group of a parameter name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Group<'a> {
    Append,
    Index(u32),
    Key(&'a str),
}

/// What the parameters seen so far make of one name (prefix).
#[derive(Debug, Default)]
enum Node {
    #[default]
    Unseen,
    Value,
    List,
    Indexed(BTreeMap<u32, Node>),
    Hash(BTreeMap<String, Node>),
}

impl FormParams {
    /// Parses a form body (or a query string). Empty pairs (`a=1&&b=2`) are
    /// skipped, as every server does; a pair without `=` has an empty value.
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
            groups(&key)?;
            let value = decode_component(v)?;
            if value.chars().any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r')) {
                return Err(FormError::ControlCharacter(key));
            }
            pairs.push((key, value));
        }
        let params = FormParams { pairs };
        params.check_structure()?;
        Ok(params)
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(String, String)> {
        self.pairs.iter()
    }

    /// The value of `key`. A parsed body gives every name but `[]` appends at
    /// most once, so there is one answer.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// What the gateway forwards: every pair in the order received, names as
    /// parsed, values percent-encoded outside the unreserved set.
    pub fn encode(&self) -> String {
        encode_pairs(self.pairs.iter())
    }

    /// The same pairs sorted by name (stable, so `[]` appends keep their
    /// order): two bodies that every server reads alike encode alike. The
    /// request fingerprint is computed on this.
    pub fn canonical(&self) -> String {
        let mut sorted: Vec<&(String, String)> = self.pairs.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        encode_pairs(sorted.into_iter())
    }

    /// The indices `0..n` of the list `prefix` (`line_items` for
    /// `line_items[0][...]`), empty when no parameter starts with it. An error
    /// when `prefix` names a value or a hash instead of a list.
    pub fn array_indices(&self, prefix: &str) -> Result<Vec<u32>, FormError> {
        let mut out = Vec::new();
        let mut not_a_list: Option<&str> = None;
        for (k, _) in &self.pairs {
            let Some(rest) = k.strip_prefix(prefix) else { continue };
            if rest.is_empty() || rest.starts_with('[') {
                match rest.strip_prefix('[').and_then(|r| r.split_once(']')).map(|(i, _)| parse_index(i)) {
                    Some(Some(i)) => out.push(i),
                    _ => not_a_list = Some(not_a_list.map_or(k.as_str(), |b| b.min(k.as_str()))),
                }
            }
        }
        if let Some(k) = not_a_list {
            return Err(FormError::BadIndex(k.to_owned()));
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Refuses names used two ways, repeated values and gappy lists. Names are
    /// visited in sorted order, so the error names the same parameter however
    /// the body orders them.
    fn check_structure(&self) -> Result<(), FormError> {
        let mut keys: Vec<&str> = self.pairs.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        let mut root: BTreeMap<String, Node> = BTreeMap::new();
        for key in keys {
            let (name, groups) = groups(key)?;
            let mut node = root.entry(name.to_owned()).or_default();
            let mut depth = name.len();
            for group in &groups {
                let prefix = key.get(..depth).unwrap_or(key);
                depth += key.get(depth..).and_then(|r| r.find(']')).map_or(0, |i| i + 1);
                let conflict = || FormError::Conflict(prefix.to_owned());
                node = match group {
                    Group::Append => {
                        if !matches!(node, Node::Unseen | Node::List) {
                            return Err(conflict());
                        }
                        *node = Node::List;
                        break;
                    }
                    Group::Index(i) => {
                        if matches!(node, Node::Unseen) {
                            *node = Node::Indexed(BTreeMap::new());
                        }
                        match node {
                            Node::Indexed(items) => items.entry(*i).or_default(),
                            _ => return Err(conflict()),
                        }
                    }
                    Group::Key(k) => {
                        if matches!(node, Node::Unseen) {
                            *node = Node::Hash(BTreeMap::new());
                        }
                        match node {
                            Node::Hash(fields) => fields.entry((*k).to_owned()).or_default(),
                            _ => return Err(conflict()),
                        }
                    }
                };
            }
            if groups.last() == Some(&Group::Append) {
                continue;
            }
            match node {
                Node::Unseen => *node = Node::Value,
                Node::Value => return Err(FormError::Duplicate(key.to_owned())),
                _ => return Err(FormError::Conflict(key.to_owned())),
            }
        }
        for (name, node) in &root {
            dense(name, node)?;
        }
        Ok(())
    }
}

/// Every list under `node` is indexed `0..n`.
fn dense(prefix: &str, node: &Node) -> Result<(), FormError> {
    match node {
        Node::Indexed(items) => {
            if items.keys().copied().ne(0..u32::try_from(items.len()).unwrap_or(u32::MAX)) {
                return Err(FormError::SparseIndex(prefix.to_owned()));
            }
            for (i, item) in items {
                dense(&format!("{prefix}[{i}]"), item)?;
            }
        }
        Node::Hash(fields) => {
            for (k, field) in fields {
                dense(&format!("{prefix}[{k}]"), field)?;
            }
        }
        Node::Unseen | Node::Value | Node::List => {}
    }
    Ok(())
}

/// A list index: `0`, or a decimal without leading zeros.
fn parse_index(text: &str) -> Option<u32> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    canonical.then(|| text.parse().ok()).flatten().filter(|i| *i < MAX_PARAMS as u32)
}

/// Splits a parameter name into its name and bracket groups, or refuses it.
fn groups(key: &str) -> Result<(&str, Vec<Group<'_>>), FormError> {
    let bad = || FormError::BadKey(key.chars().take(64).collect());
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(bad());
    }
    let (name, mut rest) = match key.find('[') {
        Some(i) => key.split_at(i),
        None => (key, ""),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(bad());
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[').ok_or_else(bad)?;
        let (group, after) = inner.split_once(']').ok_or_else(bad)?;
        rest = after;
        if out.len() >= MAX_DEPTH || out.last() == Some(&Group::Append) {
            return Err(bad());
        }
        let g = if group.is_empty() {
            Group::Append
        } else if group.bytes().all(|b| b.is_ascii_digit()) {
            Group::Index(parse_index(group).ok_or_else(|| FormError::BadIndex(key.to_owned()))?)
        } else if group.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            Group::Key(group)
        } else {
            return Err(bad());
        };
        out.push(g);
    }
    Ok((name, out))
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

fn encode_pairs<'a>(pairs: impl Iterator<Item = &'a (String, String)>) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.enumerate() {
        if i > 0 {
            out.push('&');
        }
        // Names hold only letters, digits, `_`, `-` and brackets (see `groups`).
        out.push_str(k);
        out.push('=');
        encode_value(v, &mut out);
    }
    out
}

fn encode_value(text: &str, out: &mut String) {
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
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
    #[cfg(not(target_arch = "wasm32"))]
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn parse(body: &str) -> Result<FormParams, FormError> {
        FormParams::parse(body.as_bytes())
    }

    #[test]
    fn reads_stripe_bracket_syntax() {
        let body = "amount=2999&currency=usd&metadata%5Border_id%5D=o+1&line_items[0][price_data][unit_amount]=100&expand[]=a&expand[]=b";
        let p = parse(body).unwrap();
        assert_eq!(p.get("amount"), Some("2999"));
        assert_eq!(p.get("metadata[order_id]"), Some("o 1"));
        assert_eq!(p.get("line_items[0][price_data][unit_amount]"), Some("100"));
        assert_eq!(p.array_indices("line_items"), Ok(vec![0]));
        assert_eq!(p.len(), 6);
    }

    #[test]
    fn refuses_what_is_ambiguous() {
        assert_eq!(parse("amount=%zz"), Err(FormError::BadPercentEncoding));
        assert_eq!(parse("amount=%F"), Err(FormError::BadPercentEncoding));
        assert_eq!(parse("a=%FF%FE"), Err(FormError::NotUtf8));
        for bad in
            ["meta[x=1", "meta]x=1", "=1", "a[b]c=1", "a.b=1", "a b=1", "a[b.c]=1", "a[]x=1", "a[][b]=1", "%61%5B=1"]
        {
            assert!(matches!(parse(bad), Err(FormError::BadKey(_))), "{bad}");
        }
        assert_eq!(parse("amount=1&amount=2"), Err(FormError::Duplicate("amount".into())));
        assert_eq!(parse("a[x]=1&a[x]=2"), Err(FormError::Duplicate("a[x]".into())));
        assert_eq!(parse("description=a%00b"), Err(FormError::ControlCharacter("description".into())));
        assert!(parse("description=line%0Anext%09tab").is_ok());
    }

    #[test]
    fn a_name_has_one_shape() {
        for (body, at) in [
            ("amount=1&amount[]=1000", "amount"),
            ("amount[]=1000&amount=1", "amount"),
            ("amount=1&amount[0]=1000", "amount"),
            ("amount=1&amount[x]=1000", "amount"),
            ("a[0]=1&a[x]=2", "a"),
            ("a[]=1&a[0]=2", "a"),
            ("a[x]=1&a[x][y]=2", "a[x]"),
            ("a[x][y]=2&a[x]=1", "a[x]"),
        ] {
            assert_eq!(parse(body), Err(FormError::Conflict(at.into())), "{body}");
        }
        assert_eq!(parse("a[1]=x"), Err(FormError::SparseIndex("a".into())));
        assert_eq!(parse("a[0][b][2]=x&a[0][b][0]=y"), Err(FormError::SparseIndex("a[0][b]".into())));
        assert_eq!(parse("a[00]=x"), Err(FormError::BadIndex("a[00]".into())));
        assert!(parse("a[1]=x&a[0]=y&expand[]=p&expand[]=q&m[k-1]=v").is_ok());
    }

    #[test]
    fn forwards_pairs_in_order_with_values_encoded() {
        let p =
            parse("currency=usd&amount=100&metadata[k]=a+b%26c%3Dd&expand[]=x.y&description=caf%C3%A9%3Bamount%3D1")
                .unwrap();
        assert_eq!(
            p.encode(),
            "currency=usd&amount=100&metadata[k]=a%20b%26c%3Dd&expand[]=x.y&description=caf%C3%A9%3Bamount%3D1"
        );
        assert_eq!(parse(&p.encode()).unwrap(), p, "the upstream reads back exactly what was parsed");
        assert_eq!(parse("confirm").unwrap().encode(), "confirm=", "a bare name is an empty value, and says so");
    }

    #[test]
    fn canonical_form_ignores_order_and_encoding_choices() {
        let a = parse("currency=usd&amount=100&metadata[k]=a%20b").unwrap();
        let b = parse("amount=100&metadata%5Bk%5D=a+b&currency=usd&").unwrap();
        assert_eq!(a.canonical(), b.canonical());
        let c = parse("amount=101&currency=usd&metadata[k]=a b").unwrap();
        assert_ne!(a.canonical(), c.canonical());
        // Array appends keep their order: a different order is a different request.
        let e1 = parse("expand[]=x&expand[]=y").unwrap();
        let e2 = parse("expand[]=y&expand[]=x").unwrap();
        assert_ne!(e1.canonical(), e2.canonical());
    }

    #[test]
    fn a_list_is_a_list() {
        let p = parse("line_items[1][quantity]=1&line_items[0][quantity]=2").unwrap();
        assert_eq!(p.array_indices("line_items"), Ok(vec![0, 1]));
        assert_eq!(p.array_indices("other"), Ok(vec![]));
        let hash = parse("line_items[a][quantity]=1").unwrap();
        assert_eq!(hash.array_indices("line_items"), Err(FormError::BadIndex("line_items[a][quantity]".into())));
        let value = parse("line_items=1").unwrap();
        assert_eq!(value.array_indices("line_items"), Err(FormError::BadIndex("line_items".into())));
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest! {
        #[test]
        fn parse_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FormParams::parse(&body);
        }

        #[test]
        fn what_is_forwarded_reads_back_the_same(body in "[a-z%0-9=&+\\[\\]]{0,80}") {
            if let Ok(p) = FormParams::parse(body.as_bytes()) {
                let forwarded = p.encode();
                prop_assert_eq!(FormParams::parse(forwarded.as_bytes()), Ok(p.clone()));
                let canon = p.canonical();
                let again = FormParams::parse(canon.as_bytes()).unwrap();
                prop_assert_eq!(again.canonical(), canon);
            }
        }
    }
}
