//! `keybrake keys|usage|audit|fx`: the admin API from the command line.
//! Every command is one HTTP call to the gateway's `/admin/` routes, so the
//! CLI needs only the gateway address and the admin key.

use std::io::Write;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The gateway (or the control service's HTTP address).
    #[arg(long, env = "KEYBRAKE_URL", default_value = "http://127.0.0.1:10000", global = true)]
    pub url: String,
    /// The admin key (an audit-scoped vault key works for `audit query`/`export`).
    #[arg(long, env = "KEYBRAKE_ADMIN_KEY", hide_env_values = true, global = true)]
    pub admin_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a vault key; prints it once (only its hash is stored).
    ///
    /// Example: keybrake keys create --label ray-billing-cus_123 --endpoint "POST /v1/charges"
    ///          --daily-usd-cap 32.99 --expires-in 3600
    Create {
        /// What the key is for; revoke-by-prefix matches on it (e.g. "ray-billing-2026-06-").
        #[arg(long)]
        label: String,
        /// "stripe", or "keybrake" for an audit-scoped key (endpoint "GET /admin/audit").
        #[arg(long, default_value = "stripe")]
        vendor: String,
        /// An allowed endpoint, "METHOD /path" with "*" for an id ("POST /v1/charges/*/capture"); repeatable.
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// Spend cap in USD per UTC day (decimal, e.g. 32.99); omit for none.
        #[arg(long)]
        daily_usd_cap: Option<String>,
        /// Largest amount one call may move, in USD.
        #[arg(long)]
        max_amount_per_call_usd: Option<String>,
        /// Lifetime in seconds (1 to 2592000).
        #[arg(long = "expires-in", default_value_t = 3600)]
        expires_in_seconds: i64,
        /// Let money-moving calls whose amount is not in the request through a capped key.
        #[arg(long)]
        allow_unpriced_calls: bool,
        /// "content" (identical calls are one operation) or "idempotency_key" (trust the caller's keys).
        #[arg(long)]
        dedup: Option<String>,
        /// Window of content dedup in seconds.
        #[arg(long)]
        dedup_window_seconds: Option<i64>,
        /// A Stripe-Account the key may act for; repeatable (none: any).
        #[arg(long = "account")]
        allowed_accounts: Vec<String>,
    },
    /// List keys (never their secrets).
    List {
        #[arg(long)]
        label_prefix: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one key with its spend today.
    Show { id: String },
    /// Revoke one key by id, or every key under a label prefix (the kill switch).
    Revoke {
        /// The key's id (key_...).
        #[arg(conflicts_with = "label_prefix", required_unless_present = "label_prefix")]
        id: Option<String>,
        #[arg(long)]
        label_prefix: Option<String>,
    },
    /// Lift a key's suspension (one of its calls moved more than Keybrake priced:
    /// read the audit row with decision price_mismatch first).
    Reinstate {
        /// The key's id (key_...).
        id: String,
    },
}

/// Filters shared by `audit query` and `audit export`.
#[derive(Debug, Clone, Args)]
pub struct AuditFilters {
    #[arg(long)]
    key_id: Option<String>,
    #[arg(long)]
    label_prefix: Option<String>,
    /// Matches the caller's or the forwarded Idempotency-Key.
    #[arg(long)]
    idempotency_key: Option<String>,
    #[arg(long)]
    fingerprint: Option<String>,
    /// A Stripe object id (ch_..., pi_...).
    #[arg(long)]
    object_id: Option<String>,
    /// allowed, denied, replayed, abandoned or price_mismatch.
    #[arg(long)]
    decision: Option<String>,
    #[arg(long)]
    call_id: Option<String>,
    /// RFC 3339 time or unix seconds (inclusive).
    #[arg(long)]
    since: Option<String>,
    /// RFC 3339 time or unix seconds (exclusive).
    #[arg(long)]
    until: Option<String>,
}

impl AuditFilters {
    fn query(&self) -> Vec<(&'static str, String)> {
        let fields = [
            ("key_id", &self.key_id),
            ("label_prefix", &self.label_prefix),
            ("idempotency_key", &self.idempotency_key),
            ("fingerprint", &self.fingerprint),
            ("object_id", &self.object_id),
            ("decision", &self.decision),
            ("call_id", &self.call_id),
            ("since", &self.since),
            ("until", &self.until),
        ];
        fields.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k, v))).collect()
    }
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Show audit records, newest first (one page; --limit up to 1000).
    ///
    /// Pre-flight check "has this charge already happened?":
    ///   keybrake audit query --idempotency-key inv-42 --decision allowed
    Query {
        #[command(flatten)]
        filters: AuditFilters,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the raw JSON page instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Walk the hash chain; exits 1 if any row was edited, removed or reordered.
    Verify,
    /// Every matching record as JSON Lines, oldest first, on stdout.
    Export {
        #[command(flatten)]
        filters: AuditFilters,
    },
}

#[derive(Debug, Subcommand)]
pub enum FxCommand {
    /// Set exchange rates (USD per one unit of the currency), with the date they hold for.
    ///
    /// Example: keybrake fx set --as-of 2026-11-26 jpy=0.0067 eur=1.08
    Set {
        #[arg(long)]
        as_of: String,
        /// CURRENCY=RATE pairs.
        #[arg(required = true)]
        rates: Vec<String>,
    },
    /// Show the rates in use.
    List,
}

/// Errors the CLI reports (the API's own message when it gave one).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no admin key: pass --admin-key or set KEYBRAKE_ADMIN_KEY")]
    NoAdminKey,
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, String),
    #[error("{status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Usage(String),
}

pub struct AdminClient {
    base: String,
    key: String,
    agent: ureq::Agent,
}

impl AdminClient {
    pub fn new(c: &Connection) -> Result<AdminClient, CliError> {
        let key = c.admin_key.clone().filter(|k| !k.is_empty()).ok_or(CliError::NoAdminKey)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(AdminClient { base: c.url.trim_end_matches('/').to_owned(), key, agent })
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<(u16, String), CliError> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.key);
        let result = match (method, body) {
            ("POST", Some(b)) => self.agent.post(&url).header("Authorization", &auth).send_json(b),
            ("PUT", Some(b)) => self.agent.put(&url).header("Authorization", &auth).send_json(b),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", &auth).call(),
            _ => {
                let mut req = self.agent.get(&url).header("Authorization", &auth);
                for (k, v) in query {
                    req = req.query(*k, v);
                }
                req.call()
            }
        };
        let mut response = result.map_err(|e| CliError::Unreachable(self.base.clone(), e.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| CliError::Unreachable(self.base.clone(), e.to_string()))?;
        Ok((status, text))
    }

    /// A JSON call; a 4xx/5xx becomes an error carrying the API's message.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, CliError> {
        let (status, text) = self.call(method, path, query, body)?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status >= 400 {
            let message = value["error"]["message"].as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
            return Err(CliError::Api { status, message });
        }
        Ok(value)
    }
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn money(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        other => format!("${other}"),
    }
}

pub fn keys(conn: &Connection, command: KeysCommand) -> Result<(), CliError> {
    let client = AdminClient::new(conn)?;
    match command {
        KeysCommand::Create {
            label,
            vendor,
            endpoints,
            daily_usd_cap,
            max_amount_per_call_usd,
            expires_in_seconds,
            allow_unpriced_calls,
            dedup,
            dedup_window_seconds,
            allowed_accounts,
        } => {
            let mut body = Map::new();
            body.insert("label".into(), json!(label));
            body.insert("vendor".into(), json!(vendor));
            body.insert("allowed_endpoints".into(), json!(endpoints));
            body.insert("expires_in_seconds".into(), json!(expires_in_seconds));
            // Amounts go as decimal strings: exact, never through a float.
            if let Some(c) = daily_usd_cap {
                body.insert("daily_usd_cap".into(), json!(c));
            }
            if let Some(m) = max_amount_per_call_usd {
                body.insert("max_amount_per_call_usd".into(), json!(m));
            }
            if allow_unpriced_calls {
                body.insert("allow_unpriced_calls".into(), json!(true));
            }
            if let Some(d) = dedup {
                body.insert("dedup".into(), json!(d));
            }
            if let Some(w) = dedup_window_seconds {
                body.insert("dedup_window_seconds".into(), json!(w));
            }
            if !allowed_accounts.is_empty() {
                body.insert("allowed_accounts".into(), json!(allowed_accounts));
            }
            print_json(&client.json("POST", "/admin/vault_keys", &[], Some(&Value::Object(body)))?);
        }
        KeysCommand::List { label_prefix, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(p) = label_prefix {
                query.push(("label_prefix", p));
            }
            let page = client.json("GET", "/admin/vault_keys", &query, None)?;
            println!(
                "{:<29} {:<8} {:<10} {:>10} {:>10}  {:<20} LABEL",
                "ID", "STATE", "VENDOR", "CAP", "SPENT", "EXPIRES"
            );
            for k in page["data"].as_array().into_iter().flatten() {
                println!(
                    "{:<29} {:<8} {:<10} {:>10} {:>10}  {:<20} {}",
                    k["id"].as_str().unwrap_or(""),
                    k["state"].as_str().unwrap_or(""),
                    k["vendor"].as_str().unwrap_or(""),
                    money(&k["daily_usd_cap"]),
                    money(&k["spent_today_usd"]),
                    k["expires_at"].as_str().unwrap_or(""),
                    k["label"].as_str().unwrap_or("")
                );
            }
        }
        KeysCommand::Show { id } => print_json(&client.json("GET", &format!("/admin/vault_keys/{id}"), &[], None)?),
        KeysCommand::Revoke { id: Some(id), .. } => {
            print_json(&client.json("DELETE", &format!("/admin/vault_keys/{id}"), &[], None)?)
        }
        KeysCommand::Revoke { id: None, label_prefix: Some(p) } => {
            print_json(&client.json("POST", "/admin/vault_keys/revoke", &[], Some(&json!({ "label_prefix": p })))?)
        }
        KeysCommand::Revoke { .. } => return Err(CliError::Usage("give a key id or --label-prefix".into())),
        KeysCommand::Reinstate { id } => {
            print_json(&client.json("POST", &format!("/admin/vault_keys/{id}/reinstate"), &[], None)?)
        }
    }
    Ok(())
}

pub fn usage(conn: &Connection) -> Result<(), CliError> {
    let client = AdminClient::new(conn)?;
    let u = client.json("GET", "/admin/usage", &[], None)?;
    println!("Spend on {} (UTC)", u["day"].as_str().unwrap_or(""));
    println!("{:<29} {:>10} {:>10} {:>10} {:>10}  LABEL", "ID", "CAP", "SPENT", "RESERVED", "UNCERTAIN");
    for r in u["data"].as_array().into_iter().flatten() {
        println!(
            "{:<29} {:>10} {:>10} {:>10} {:>10}  {}",
            r["id"].as_str().unwrap_or(""),
            money(&r["daily_usd_cap"]),
            money(&r["spent_today_usd"]),
            money(&r["reserved_usd"]),
            money(&r["uncertain_usd"]),
            r["label"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// Returns false when `audit verify` found a broken chain.
pub fn audit(conn: &Connection, command: AuditCommand) -> Result<bool, CliError> {
    let client = AdminClient::new(conn)?;
    match command {
        AuditCommand::Query { filters, limit, json } => {
            let mut query = filters.query();
            query.push(("limit", limit.to_string()));
            let page = client.json("GET", "/admin/audit", &query, None)?;
            if json {
                print_json(&page);
                return Ok(true);
            }
            println!(
                "{:>6} {:<27} {:<8} {:<9} {:<7} {:<26} {:>6} {:>9}  REASON/OBJECT",
                "SEQ", "AT", "STAGE", "DECISION", "METHOD", "PATH", "STATUS", "USD"
            );
            for r in page["data"].as_array().into_iter().flatten() {
                let note = [r["reason"].as_str().unwrap_or(""), r["object_id"].as_str().unwrap_or("")].join(" ");
                println!(
                    "{:>6} {:<27} {:<8} {:<9} {:<7} {:<26} {:>6} {:>9}  {}",
                    r["seq"],
                    r["at"].as_str().unwrap_or(""),
                    r["stage"].as_str().unwrap_or(""),
                    r["decision"].as_str().unwrap_or(""),
                    r["method"].as_str().unwrap_or(""),
                    r["path"].as_str().unwrap_or(""),
                    r["upstream_status"].as_u64().map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
                    money(&r["usd"]),
                    note.trim()
                );
            }
            if page["has_more"].as_bool() == Some(true) {
                eprintln!("(more records: raise --limit or narrow the filters)");
            }
            Ok(true)
        }
        AuditCommand::Verify => {
            let report = client.json("GET", "/admin/audit/verify", &[], None)?;
            print_json(&report);
            Ok(report["ok"].as_bool() == Some(true))
        }
        AuditCommand::Export { filters } => {
            let mut query = filters.query();
            query.push(("format", "jsonl".into()));
            let (status, text) = client.call("GET", "/admin/audit", &query, None)?;
            if status >= 400 {
                return Err(CliError::Api { status, message: text });
            }
            let _ = std::io::stdout().write_all(text.as_bytes());
            Ok(true)
        }
    }
}

pub fn fx(conn: &Connection, command: FxCommand) -> Result<(), CliError> {
    let client = AdminClient::new(conn)?;
    match command {
        FxCommand::Set { as_of, rates } => {
            let mut map = Map::new();
            for pair in rates {
                let (currency, rate) =
                    pair.split_once('=').ok_or_else(|| CliError::Usage(format!("{pair:?}: expected CURRENCY=RATE")))?;
                map.insert(currency.to_ascii_lowercase(), json!(rate));
            }
            print_json(&client.json("PUT", "/admin/fx_rates", &[], Some(&json!({ "as_of": as_of, "rates": map })))?);
        }
        FxCommand::List => print_json(&client.json("GET", "/admin/fx_rates", &[], None)?),
    }
    Ok(())
}
