//! The console's HTML building blocks: escaping, the page frame, and small
//! formatters. Every piece of text that comes from data goes through [`esc`]
//! (attribute values too), and the Content-Security-Policy forbids inline
//! script and style, so a label like `<script>` stays text.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use keybrake_core::money::UsdMicros;

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Keys,
    Audit,
    Health,
    /// A page of the console that is none of the three.
    None,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query parameter value.
pub fn url_param(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A query string from the pairs whose value is not empty.
pub fn query(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> =
        pairs.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={}", url_param(v))).collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

/// The hidden field every console form carries.
pub fn csrf_field(csrf: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", esc(csrf))
}

/// A whole page. `nav` is `None` outside a session (login, refusals); with a
/// session the header shows the navigation and a logout form.
pub fn page(title: &str, nav: Option<Nav>, csrf: Option<&str>, body: &str) -> String {
    let header = match (nav, csrf) {
        (Some(current), Some(csrf)) => {
            let link = |n: Nav, href: &str, text: &str| {
                let class = if n == current { " class=\"current\"" } else { "" };
                format!("<a href=\"{href}\"{class}>{text}</a>")
            };
            format!(
                "<nav>{}{}{}</nav><form method=\"post\" action=\"/admin/ui/logout\" class=\"logout\">{}\
                 <button type=\"submit\" class=\"link\">Log out</button></form>",
                link(Nav::Keys, "/admin/ui/keys", "Keys"),
                link(Nav::Audit, "/admin/ui/audit", "Audit"),
                link(Nav::Health, "/admin/ui/health", "Health"),
                csrf_field(csrf)
            )
        }
        _ => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Keybrake</title><link rel=\"icon\" href=\"data:,\">\
         <link rel=\"stylesheet\" href=\"/admin/ui/assets/console.css\">\
         <script src=\"/admin/ui/assets/console.js\" defer></script></head>\n\
         <body><header class=\"top\"><a class=\"brand\" href=\"/admin/ui/keys\">Keybrake</a>{header}</header>\n\
         <main>{body}</main></body></html>\n",
        esc(title)
    )
}

/// An HTML response.
pub fn respond(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// A page that reports an error from the domain (its message is the API's).
pub fn error_page(status: StatusCode, csrf: &str, nav: Nav, message: &str) -> Response {
    let body = format!("<h1>Something went wrong</h1><p class=\"error\">{}</p>", esc(message));
    respond(status, page("Error", Some(nav), Some(csrf), &body))
}

/// A status code for an admin error, as the API would answer it.
pub fn status_of(e: &crate::admin::AdminError) -> StatusCode {
    use crate::admin::AdminError as E;
    match e {
        E::Unauthorized => StatusCode::UNAUTHORIZED,
        E::Forbidden => StatusCode::FORBIDDEN,
        E::NotFound(_) => StatusCode::NOT_FOUND,
        E::Invalid(_) => StatusCode::BAD_REQUEST,
        E::Storage => StatusCode::SERVICE_UNAVAILABLE,
        E::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
    }
}

/// Micro-dollars from a USD amount as the API shows it (`32.99`); 0 when absent.
pub fn micros(n: Option<&serde_json::Number>) -> i64 {
    n.and_then(|n| UsdMicros::parse_decimal(&n.to_string()).ok()).map(|m| m.0).unwrap_or(0)
}

/// `$32.99`.
pub fn usd(m: i64) -> String {
    UsdMicros(m).to_string()
}

/// Width (of `total` pixels) that `part` takes of `whole`, in integers, clamped.
fn width(part: i64, whole: i64, total: i64) -> i64 {
    if whole <= 0 {
        return 0;
    }
    let w = i128::from(part.max(0)) * i128::from(total) / i128::from(whole);
    i64::try_from(w.clamp(0, i128::from(total))).unwrap_or(total)
}

/// The spend bar of a key: spent, reserved and uncertain stacked against its cap.
/// An inline SVG (attributes, not inline style, so the CSP stays strict).
pub fn spend_bar(spent: i64, reserved: i64, uncertain: i64, cap: Option<i64>) -> String {
    const W: i64 = 160;
    let Some(cap) = cap else {
        return "<span class=\"muted\">no cap</span>".to_owned();
    };
    let s = width(spent, cap, W);
    let r = width(reserved, cap, W).min(W - s);
    let u = width(uncertain, cap, W).min(W - s - r);
    let used = spent.saturating_add(reserved).saturating_add(uncertain);
    let percent = if cap > 0 { i128::from(used) * 100 / i128::from(cap) } else { 0 };
    format!(
        "<svg class=\"spend-bar\" width=\"{W}\" height=\"10\" viewBox=\"0 0 {W} 10\" role=\"img\" \
         data-spent-micros=\"{spent}\" data-reserved-micros=\"{reserved}\" data-uncertain-micros=\"{uncertain}\" \
         data-cap-micros=\"{cap}\"><title>{percent}% of the cap used</title>\
         <rect class=\"bar-bg\" x=\"0\" y=\"0\" width=\"{W}\" height=\"10\" rx=\"2\"/>\
         <rect class=\"bar-spent\" x=\"0\" y=\"0\" width=\"{s}\" height=\"10\"/>\
         <rect class=\"bar-reserved\" x=\"{s}\" y=\"0\" width=\"{r}\" height=\"10\"/>\
         <rect class=\"bar-uncertain\" x=\"{}\" y=\"0\" width=\"{u}\" height=\"10\"/></svg>",
        s + r
    )
}

/// A short human duration: `2h 05m`, `59s`.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (d, h, m, s) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h:02}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(esc("<script>\"a\" & 'b'</script>"), "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;");
        assert_eq!(query(&[("a", "x y&z"), ("b", "")]), "?a=x%20y%26z");
    }

    #[test]
    fn bars_scale_in_integers_and_never_overflow() {
        let bar = spend_bar(29_990_000, 0, 0, Some(50_000_000));
        assert!(bar.contains("class=\"bar-spent\" x=\"0\" y=\"0\" width=\"95\""), "{bar}");
        assert!(bar.contains("59% of the cap"));
        let full = spend_bar(90_000_000, 30_000_000, 1, Some(50_000_000));
        assert!(full.contains("bar-reserved\" x=\"160\" y=\"0\" width=\"0\""), "{full}");
        assert_eq!(spend_bar(1, 0, 0, None), "<span class=\"muted\">no cap</span>");
        assert_eq!(duration(3599), "59m 59s");
        assert_eq!(duration(86_400 * 2 + 3600), "2d 01h");
    }
}
