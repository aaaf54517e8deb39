//! The filter's plugin configuration (the `configuration` of Envoy's wasm
//! `PluginConfig`, as JSON). It holds no secret: real keys live in the
//! control service, never in Envoy's config.

use serde::Deserialize;

/// A vendor route: requests whose path starts with `prefix` + `/` are the
/// vendor's API calls and need a vault key. A route at the root of the
/// listener has an empty prefix and names the vendor's API `roots` instead
/// (`/v1/...`, `/v2/...`): SDKs that take only a host and a port call those.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub prefix: String,
    pub vendor: String,
    #[serde(default)]
    pub roots: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Envoy cluster (HTTP/2) of the control service's gRPC port.
    pub control_cluster: String,
    pub routes: Vec<Route>,
    /// How long a call may wait for its decision (many concurrent calls on one
    /// key queue on its spend row); past it the call is refused, never forwarded.
    pub authorize_timeout_ms: u64,
    pub settle_timeout_ms: u64,
    /// Largest request body read for pricing; larger bodies are refused.
    pub max_request_body_bytes: usize,
    /// Largest response body kept for replay; larger ones are stored cut.
    pub max_response_body_bytes: usize,
    /// How often the root context sends queued audit records (and, at most
    /// every 250 ms, the worker's clock on its revocation stream: with an
    /// interval much over 500 ms the key cache's trust lapses between ticks,
    /// and reads are decided by the control service).
    pub audit_flush_interval_ms: u64,
    pub audit_batch_size: usize,
    /// Records kept while the control service is unreachable; older ones are dropped (and counted).
    pub audit_queue_limit: usize,
}

impl Default for FilterConfig {
    fn default() -> FilterConfig {
        FilterConfig {
            control_cluster: "keybrake_control".to_owned(),
            routes: vec![
                Route { prefix: "/stripe".to_owned(), vendor: "stripe".to_owned(), roots: Vec::new() },
                Route {
                    prefix: String::new(),
                    vendor: "stripe".to_owned(),
                    roots: vec!["/v1".to_owned(), "/v2".to_owned()],
                },
            ],
            authorize_timeout_ms: 10_000,
            settle_timeout_ms: 5_000,
            max_request_body_bytes: 64 * 1024,
            max_response_body_bytes: 64 * 1024,
            audit_flush_interval_ms: 100,
            audit_batch_size: 256,
            audit_queue_limit: 20_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("plugin configuration is not valid JSON for Keybrake: {0}")]
    Json(String),
    #[error("plugin configuration is invalid: {0}")]
    Invalid(String),
}

impl FilterConfig {
    /// Parses the plugin configuration; an empty configuration means the defaults.
    pub fn parse(bytes: &[u8]) -> Result<FilterConfig, ConfigError> {
        let config: FilterConfig = if bytes.iter().all(u8::is_ascii_whitespace) {
            FilterConfig::default()
        } else {
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.control_cluster.is_empty() {
            return bad("control_cluster must name the control service's Envoy cluster");
        }
        if self.routes.is_empty() {
            return bad("routes must list at least one vendor route");
        }
        let well_formed = |p: &str| p.starts_with('/') && !p.ends_with('/') && p.len() >= 2;
        for r in &self.routes {
            if r.prefix.is_empty() {
                if r.roots.is_empty() || !r.roots.iter().all(|root| well_formed(root)) {
                    return bad("a route at the root names its API roots, like [\"/v1\", \"/v2\"]");
                }
            } else if !well_formed(&r.prefix) || !r.roots.is_empty() {
                return bad("a route prefix looks like \"/stripe\": a leading '/', no trailing '/' (and no roots)");
            }
            if keybrake_core::vendor::Vendor::parse(&r.vendor) != Some(keybrake_core::vendor::Vendor::Stripe) {
                return bad("route vendor must be \"stripe\"");
            }
        }
        let ranges = [
            (self.authorize_timeout_ms, 1, 60_000, "authorize_timeout_ms"),
            (self.settle_timeout_ms, 1, 60_000, "settle_timeout_ms"),
            (self.audit_flush_interval_ms, 1, 60_000, "audit_flush_interval_ms"),
            (self.max_request_body_bytes as u64, 1, 16 << 20, "max_request_body_bytes"),
            (self.max_response_body_bytes as u64, 0, 16 << 20, "max_response_body_bytes"),
            (self.audit_batch_size as u64, 1, 10_000, "audit_batch_size"),
            (self.audit_queue_limit as u64, 1, 10_000_000, "audit_queue_limit"),
        ];
        for (value, lo, hi, name) in ranges {
            if value < lo || value > hi {
                return Err(ConfigError::Invalid(format!("{name} must be between {lo} and {hi}")));
            }
        }
        Ok(())
    }

    /// The vendor route a request path falls under, and the path after the prefix.
    pub fn route_for<'a>(&self, path: &'a str) -> Option<(&Route, &'a str)> {
        self.routes.iter().find_map(|r| {
            let rest = path.strip_prefix(r.prefix.as_str())?;
            let at_root =
                r.roots.iter().any(|root| rest.strip_prefix(root.as_str()).is_some_and(|t| t.starts_with('/')));
            (rest.starts_with('/') && (r.prefix.is_empty() == at_root)).then_some((r, rest))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(FilterConfig::parse(b"").unwrap(), FilterConfig::default());
        let c = FilterConfig::parse(br#"{"control_cluster":"ctl","max_request_body_bytes":1024}"#).unwrap();
        assert_eq!(c.control_cluster, "ctl");
        assert_eq!(c.max_request_body_bytes, 1024);
    }

    #[test]
    fn refuses_bad_config() {
        assert!(matches!(FilterConfig::parse(b"{"), Err(ConfigError::Json(_))));
        assert!(matches!(FilterConfig::parse(br#"{"nope":1}"#), Err(ConfigError::Json(_))));
        assert!(matches!(FilterConfig::parse(br#"{"authorize_timeout_ms":0}"#), Err(ConfigError::Invalid(_))));
        assert!(matches!(
            FilterConfig::parse(br#"{"routes":[{"prefix":"stripe","vendor":"stripe"}]}"#),
            Err(ConfigError::Invalid(_))
        ));
        assert!(matches!(
            FilterConfig::parse(br#"{"routes":[{"prefix":"/x","vendor":"paypal"}]}"#),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn routes_match_on_segment_boundaries() {
        let c = FilterConfig::default();
        assert_eq!(c.route_for("/stripe/v1/charges").map(|(_, p)| p), Some("/v1/charges"));
        assert!(c.route_for("/stripex/v1").is_none());
        assert!(c.route_for("/stripe").is_none());
        assert!(c.route_for("/admin/vault_keys").is_none());
        assert!(c.route_for("/mcp").is_none());
        // Stripe's own paths at the root, for SDKs that take only a host and a port.
        let (route, rest) = c.route_for("/v1/charges").unwrap();
        assert_eq!((route.prefix.as_str(), rest), ("", "/v1/charges"));
        assert_eq!(c.route_for("/v2/core/events").map(|(_, p)| p), Some("/v2/core/events"));
        assert!(c.route_for("/v1").is_none());
        assert!(c.route_for("/v12/charges").is_none());
        assert!(c.route_for("/%76%31/charges").is_none(), "Envoy's route matches the raw path: so does the filter");
        assert!(matches!(
            FilterConfig::parse(br#"{"routes":[{"prefix":"","vendor":"stripe"}]}"#),
            Err(ConfigError::Invalid(_))
        ));
    }
}
