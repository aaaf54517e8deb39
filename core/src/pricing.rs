//! The one table of Stripe endpoints that move money, and how much each call moves.
//!
//! Pricing happens in the filter, on the normalised path and the parsed form
//! body. The result says what the call costs in the currency's minor unit; the
//! control service converts to USD (it holds the FX table and the amounts of
//! objects created earlier through the gateway, e.g. the PaymentIntent that a
//! later `confirm` charges).
//!
//! Every POST endpoint not in the table moves no money; a key's scope is what
//! guards those.

use crate::currency::Currency;
use crate::form::{FormError, FormParams};
use crate::scope::Method;

/// Largest amount accepted in any amount parameter (Stripe's own limit is 8 digits).
pub const MAX_AMOUNT_DIGITS: usize = 15;

/// Where the currency of a priced amount comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurrencySource {
    /// Given in the request.
    Given(Currency),
    /// The currency of an object (`ch_...`, `pi_...`, `tr_...`) the gateway saw created.
    OfObject(String),
}

/// What a call costs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Price {
    /// Moves no money.
    Free,
    /// Moves `minor` units of a currency.
    Amount { minor: i64, currency: CurrencySource, basis: &'static str, payout: bool },
    /// Moves the recorded amount of an earlier object (confirm, pay, full capture or refund).
    ObjectAmount { object_id: String, basis: &'static str },
    /// Moves money, but nothing in the request says how much.
    Unpriced { reason: &'static str },
}

/// Why a request cannot be priced (a client error: 400, nothing forwarded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PricingError {
    #[error(transparent)]
    Form(#[from] FormError),
    #[error("missing required parameter: {0}")]
    Missing(&'static str),
    #[error("invalid {param}: {value:?} is not a whole number of the currency's minor unit")]
    InvalidAmount { param: String, value: String },
    #[error("invalid {param}: amounts must not be negative")]
    NegativeAmount { param: String },
    #[error("invalid {param}: the amount is too large")]
    AmountTooLarge { param: String },
    #[error("invalid currency: {0:?} is not a three-letter currency code")]
    InvalidCurrency(String),
    #[error("line items in different currencies cannot be priced together")]
    MixedCurrencies,
    #[error("invalid {param}: {value:?} is not a boolean (send true or false)")]
    InvalidBoolean { param: String, value: String },
    #[error("invalid {param}: {value:?} is not one of {choices}")]
    InvalidChoice { param: String, value: String, choices: &'static str },
}

impl PricingError {
    /// The request parameter at fault, for Stripe's `param` field.
    pub fn param(&self) -> Option<String> {
        match self {
            PricingError::Form(e) => e.param(),
            PricingError::Missing(p) => Some((*p).to_owned()),
            PricingError::InvalidAmount { param, .. }
            | PricingError::NegativeAmount { param }
            | PricingError::AmountTooLarge { param }
            | PricingError::InvalidBoolean { param, .. }
            | PricingError::InvalidChoice { param, .. } => Some(param.clone()),
            PricingError::InvalidCurrency(_) | PricingError::MixedCurrencies => Some("currency".to_owned()),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Rule {
    /// `amount` and `currency` required.
    AmountAndCurrency {
        payout: bool,
    },
    /// PaymentIntent create: counts only with `confirm=true`.
    PaymentIntentCreate,
    /// PaymentIntent update: counts when it sets `amount`.
    PaymentIntentUpdate,
    /// `amount` required; currency of the object in the path.
    AmountOfPathObject,
    /// Optional amount parameter; without it, the object's recorded amount.
    OptionalAmountOfPathObject {
        param: &'static str,
    },
    /// The object's recorded amount.
    PathObjectAmount,
    /// `POST /v1/refunds`: the object is `charge` or `payment_intent`.
    Refund,
    InvoiceItem,
    CheckoutSession,
    Unpriced {
        reason: &'static str,
    },
}

/// Where the upstream's answer to a call says how much it moved, so that it
/// can be checked against what was priced (the backstop behind canonical
/// forwarding: a differential nobody thought of still shows up here).
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// This field of the returned object, in the object's `currency`.
    Field(&'static str),
    /// A PaymentIntent: its `amount` if the call confirmed it, else nothing.
    IntentConfirmed,
    /// The answer cannot say what this call alone moved (a cumulative total,
    /// an amount the call did not price); unpriced calls are counted from it instead.
    NotChecked,
}

/// What an answer says a call moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moved {
    /// `minor` units of `currency` (lower case), read from `field`.
    Amount { minor: i64, currency: String, field: &'static str, payout: bool },
    /// Nothing to compare for this endpoint.
    NotChecked,
    /// The answer should say, but does not parse as the object expected.
    Unreadable,
}

/// PaymentIntent statuses in which it was not (yet) confirmed: no money moves.
const UNCONFIRMED_INTENT: &[&str] = &["requires_payment_method", "requires_confirmation", "canceled"];

/// What the upstream's 2xx answer `body` to `method path` says moved.
pub fn moved(method: Method, path: &str, body: &[u8]) -> Moved {
    let Some((rule, answer, _)) = lookup(path).filter(|_| method == Method::Post) else {
        return Moved::NotChecked;
    };
    let payout = matches!(rule, Rule::AmountAndCurrency { payout: true });
    let field = match answer {
        Answer::NotChecked => return Moved::NotChecked,
        Answer::Field(f) => f,
        Answer::IntentConfirmed => "amount",
    };
    let Ok(object) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Moved::Unreadable;
    };
    let currency = object.get("currency").and_then(|c| c.as_str()).map(str::to_ascii_lowercase);
    let amount = object.get(field).and_then(serde_json::Value::as_i64);
    let (Some(currency), Some(mut minor)) = (currency, amount) else {
        return Moved::Unreadable;
    };
    if matches!(answer, Answer::IntentConfirmed) {
        let Some(status) = object.get("status").and_then(|s| s.as_str()) else {
            return Moved::Unreadable;
        };
        if UNCONFIRMED_INTENT.contains(&status) {
            minor = 0;
        }
    }
    Moved::Amount { minor, currency, field, payout }
}

/// Whether a call needs durable state in the control service (a
/// reservation, an idempotency record, a settlement checked against the
/// answer): every POST that is priced, carries the caller's idempotency key,
/// or goes to an endpoint that can move money even when priced free.
pub fn holds_state(method: Method, path: &str, free: bool, has_idempotency_key: bool) -> bool {
    method == Method::Post && (!free || has_idempotency_key || moves_money(method, path))
}

/// `(pattern, rule, what the answer says moved)`; `*` is one object id. First match wins.
const TABLE: &[(&str, Rule, Answer)] = &[
    ("/v1/charges", Rule::AmountAndCurrency { payout: false }, Answer::Field("amount")),
    ("/v1/charges/*/capture", Rule::OptionalAmountOfPathObject { param: "amount" }, Answer::Field("amount_captured")),
    ("/v1/charges/*/refund", Rule::OptionalAmountOfPathObject { param: "amount" }, Answer::NotChecked),
    ("/v1/charges/*/refunds", Rule::OptionalAmountOfPathObject { param: "amount" }, Answer::Field("amount")),
    ("/v1/payment_intents", Rule::PaymentIntentCreate, Answer::IntentConfirmed),
    ("/v1/payment_intents/*", Rule::PaymentIntentUpdate, Answer::NotChecked),
    ("/v1/payment_intents/*/increment_authorization", Rule::AmountOfPathObject, Answer::NotChecked),
    (
        "/v1/payment_intents/*/capture",
        Rule::OptionalAmountOfPathObject { param: "amount_to_capture" },
        Answer::Field("amount_received"),
    ),
    ("/v1/payment_intents/*/confirm", Rule::PathObjectAmount, Answer::IntentConfirmed),
    ("/v1/refunds", Rule::Refund, Answer::Field("amount")),
    ("/v1/transfers", Rule::AmountAndCurrency { payout: false }, Answer::Field("amount")),
    ("/v1/transfers/*/reversals", Rule::OptionalAmountOfPathObject { param: "amount" }, Answer::Field("amount")),
    ("/v1/payouts", Rule::AmountAndCurrency { payout: true }, Answer::Field("amount")),
    ("/v1/topups", Rule::AmountAndCurrency { payout: false }, Answer::Field("amount")),
    ("/v1/invoiceitems", Rule::InvoiceItem, Answer::Field("amount")),
    ("/v1/invoices/*/pay", Rule::PathObjectAmount, Answer::Field("amount_paid")),
    (
        "/v1/invoices/*/finalize",
        Rule::Unpriced { reason: "finalizing an invoice may charge the customer automatically" },
        Answer::NotChecked,
    ),
    ("/v1/checkout/sessions", Rule::CheckoutSession, Answer::Field("amount_total")),
    (
        "/v1/subscriptions",
        Rule::Unpriced { reason: "a subscription charges amounts set by its prices" },
        Answer::NotChecked,
    ),
    (
        "/v1/subscriptions/*",
        Rule::Unpriced { reason: "a subscription update may charge prorations" },
        Answer::NotChecked,
    ),
    (
        "/v1/subscription_items",
        Rule::Unpriced { reason: "a subscription item may charge prorations" },
        Answer::NotChecked,
    ),
    (
        "/v1/subscription_schedules",
        Rule::Unpriced { reason: "a subscription schedule charges amounts set by its prices" },
        Answer::NotChecked,
    ),
    (
        "/v1/credit_notes",
        Rule::Unpriced { reason: "a credit note may refund an amount set by its lines" },
        Answer::NotChecked,
    ),
    (
        "/v1/payment_links",
        Rule::Unpriced { reason: "a payment link charges amounts set by its prices" },
        Answer::NotChecked,
    ),
];

/// Prices one call. `path` is normalised (see [`crate::path::normalize`]).
pub fn price(method: Method, path: &str, params: &FormParams) -> Result<Price, PricingError> {
    if method != Method::Post {
        return Ok(Price::Free);
    }
    let Some((rule, _, object)) = lookup(path) else {
        return Ok(Price::Free);
    };
    let object = object.unwrap_or_default().to_owned();
    match rule {
        Rule::AmountAndCurrency { payout } => Ok(Price::Amount {
            minor: required_amount(params, "amount")?,
            currency: CurrencySource::Given(required_currency(params)?),
            basis: "amount",
            payout,
        }),
        Rule::PaymentIntentCreate => {
            if !boolean(params, "confirm")? {
                return Ok(Price::Free);
            }
            Ok(Price::Amount {
                minor: required_amount(params, "amount")?,
                currency: CurrencySource::Given(required_currency(params)?),
                basis: "amount",
                payout: false,
            })
        }
        Rule::PaymentIntentUpdate => match amount(params, "amount")? {
            None => Ok(Price::Free),
            Some(minor) => Ok(Price::Amount {
                minor,
                currency: match params.get("currency") {
                    Some(c) => CurrencySource::Given(currency(c)?),
                    None => CurrencySource::OfObject(object),
                },
                basis: "amount",
                payout: false,
            }),
        },
        Rule::AmountOfPathObject => Ok(Price::Amount {
            minor: required_amount(params, "amount")?,
            currency: CurrencySource::OfObject(object),
            basis: "amount",
            payout: false,
        }),
        Rule::OptionalAmountOfPathObject { param } => match amount(params, param)? {
            Some(minor) => {
                Ok(Price::Amount { minor, currency: CurrencySource::OfObject(object), basis: param, payout: false })
            }
            None => Ok(Price::ObjectAmount { object_id: object, basis: "object_amount" }),
        },
        Rule::PathObjectAmount => Ok(Price::ObjectAmount { object_id: object, basis: "object_amount" }),
        Rule::Refund => refund(params),
        Rule::InvoiceItem => invoice_item(params),
        Rule::CheckoutSession => checkout_session(params),
        Rule::Unpriced { reason } => Ok(Price::Unpriced { reason }),
    }
}

/// Whether a (method, normalised path) is in the money-moving table at all.
pub fn moves_money(method: Method, path: &str) -> bool {
    method == Method::Post && lookup(path).is_some()
}

fn lookup(path: &str) -> Option<(Rule, Answer, Option<&str>)> {
    // Normalised paths start with '/'; anything else is no Stripe endpoint.
    if !path.starts_with('/') {
        return None;
    }
    'rules: for (pattern, rule, answer) in TABLE {
        let mut object = None;
        let mut got = path.split('/').skip(1);
        for want in pattern.split('/').skip(1) {
            let Some(seg) = got.next() else {
                continue 'rules;
            };
            if want == "*" {
                if seg.is_empty() {
                    continue 'rules;
                }
                object = Some(seg);
            } else if want != seg {
                continue 'rules;
            }
        }
        if got.next().is_none() {
            return Some((*rule, *answer, object));
        }
    }
    None
}

fn refund(params: &FormParams) -> Result<Price, PricingError> {
    let object = match (params.get("charge"), params.get("payment_intent")) {
        (Some(c), _) => Some(c.to_owned()),
        (None, Some(p)) => Some(p.to_owned()),
        (None, None) => None,
    };
    match (amount(params, "amount")?, object) {
        (Some(minor), object) => {
            let currency = match (params.get("currency"), object) {
                (Some(c), _) => CurrencySource::Given(currency(c)?),
                (None, Some(o)) => CurrencySource::OfObject(o),
                (None, None) => {
                    return Ok(Price::Unpriced {
                        reason: "a refund without charge or payment_intent has no known currency",
                    })
                }
            };
            Ok(Price::Amount { minor, currency, basis: "amount", payout: false })
        }
        (None, Some(object_id)) => Ok(Price::ObjectAmount { object_id, basis: "object_amount" }),
        (None, None) => Ok(Price::Unpriced { reason: "a refund without amount, charge or payment_intent" }),
    }
}

fn invoice_item(params: &FormParams) -> Result<Price, PricingError> {
    let quantity = amount(params, "quantity")?.unwrap_or(1);
    if let Some(raw) = params.get("amount") {
        // A negative invoice item is a credit: it lowers what the customer pays.
        if raw.starts_with('-') {
            parse_amount("amount", raw.trim_start_matches('-'))?;
            return Ok(Price::Free);
        }
        let minor = parse_amount("amount", raw)?;
        return Ok(Price::Amount {
            minor,
            currency: CurrencySource::Given(required_currency(params)?),
            basis: "amount",
            payout: false,
        });
    }
    let (unit, currency_param, basis) = match (params.get("unit_amount"), params.get("price_data[unit_amount]")) {
        (Some(u), _) => (parse_amount("unit_amount", u)?, "currency", "unit_amount * quantity"),
        (None, Some(u)) => {
            (parse_amount("price_data[unit_amount]", u)?, "price_data[currency]", "price_data[unit_amount] * quantity")
        }
        (None, None) => return Ok(Price::Unpriced { reason: "an invoice item priced by a Price object" }),
    };
    let currency_text = match params.get(currency_param) {
        Some(c) => c,
        None => params.get("currency").ok_or(PricingError::Missing("currency"))?,
    };
    let minor = unit.checked_mul(quantity).ok_or(PricingError::AmountTooLarge { param: "quantity".into() })?;
    Ok(Price::Amount { minor, currency: CurrencySource::Given(currency(currency_text)?), basis, payout: false })
}

fn checkout_session(params: &FormParams) -> Result<Price, PricingError> {
    let mode = params.get("mode").unwrap_or("payment");
    if !matches!(mode, "payment" | "setup" | "subscription") {
        return Err(PricingError::InvalidChoice {
            param: "mode".into(),
            value: mode.chars().take(32).collect(),
            choices: "payment, setup, subscription",
        });
    }
    if mode != "payment" {
        return Ok(Price::Unpriced { reason: "a checkout session in subscription or setup mode" });
    }
    let indices = params.array_indices("line_items")?;
    if indices.is_empty() {
        return Ok(Price::Unpriced { reason: "a checkout session without line items" });
    }
    let mut total: i64 = 0;
    let mut seen: Option<Currency> = None;
    for i in indices {
        let unit_key = format!("line_items[{i}][price_data][unit_amount]");
        let quantity_key = format!("line_items[{i}][quantity]");
        let currency_key = format!("line_items[{i}][price_data][currency]");
        let Some(unit) = params.get(&unit_key) else {
            return Ok(Price::Unpriced { reason: "a checkout session line item priced by a Price object" });
        };
        let unit = parse_amount(&unit_key, unit)?;
        let quantity = match params.get(&quantity_key) {
            Some(q) => parse_amount(&quantity_key, q)?,
            None => 1,
        };
        let c = currency(params.get(&currency_key).ok_or(PricingError::Missing("currency"))?)?;
        if seen.as_ref().is_some_and(|s| *s != c) {
            return Err(PricingError::MixedCurrencies);
        }
        seen = Some(c);
        let line = unit.checked_mul(quantity).ok_or(PricingError::AmountTooLarge { param: quantity_key })?;
        total = total.checked_add(line).ok_or(PricingError::AmountTooLarge { param: "line_items".into() })?;
    }
    match seen {
        Some(c) => {
            Ok(Price::Amount { minor: total, currency: CurrencySource::Given(c), basis: "line_items", payout: false })
        }
        None => Ok(Price::Unpriced { reason: "a checkout session without line items" }),
    }
}

fn required_amount(params: &FormParams, param: &'static str) -> Result<i64, PricingError> {
    amount(params, param)?.ok_or(PricingError::Missing(param))
}

fn amount(params: &FormParams, param: &str) -> Result<Option<i64>, PricingError> {
    params.get(param).map(|raw| parse_amount(param, raw)).transpose()
}

/// A boolean parameter pricing reads: absent is false; only `true` and
/// `false` are booleans (`True`, `1` or `yes` might be read either way upstream).
fn boolean(params: &FormParams, param: &str) -> Result<bool, PricingError> {
    match params.get(param) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => {
            Err(PricingError::InvalidBoolean { param: param.to_owned(), value: other.chars().take(32).collect() })
        }
    }
}

/// An amount parameter: ASCII digits only, no leading zero, at most [`MAX_AMOUNT_DIGITS`].
pub fn parse_amount(param: &str, raw: &str) -> Result<i64, PricingError> {
    if raw.starts_with('-') && raw.len() > 1 && raw.bytes().skip(1).all(|b| b.is_ascii_digit()) {
        return Err(PricingError::NegativeAmount { param: param.to_owned() });
    }
    let leading_zero = raw.len() > 1 && raw.starts_with('0');
    if raw.is_empty() || leading_zero || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PricingError::InvalidAmount { param: param.to_owned(), value: raw.chars().take(32).collect() });
    }
    if raw.trim_start_matches('0').len() > MAX_AMOUNT_DIGITS {
        return Err(PricingError::AmountTooLarge { param: param.to_owned() });
    }
    raw.parse().map_err(|_| PricingError::AmountTooLarge { param: param.to_owned() })
}

fn required_currency(params: &FormParams) -> Result<Currency, PricingError> {
    currency(params.get("currency").ok_or(PricingError::Missing("currency"))?)
}

fn currency(text: &str) -> Result<Currency, PricingError> {
    Currency::parse(text).map_err(|e| PricingError::InvalidCurrency(e.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(not(target_arch = "wasm32"))]
    use proptest::prelude::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// Parses and prices, as the filter does: a body the parser refuses is a pricing error too.
    fn p(path: &str, body: &str) -> Result<Price, PricingError> {
        price(Method::Post, path, &FormParams::parse(body.as_bytes())?)
    }

    fn usd() -> CurrencySource {
        CurrencySource::Given(Currency::usd())
    }

    #[test]
    fn charges_and_transfers_need_amount_and_currency() {
        assert_eq!(
            p("/v1/charges", "amount=2999&currency=usd&customer=cus_1").unwrap(),
            Price::Amount { minor: 2999, currency: usd(), basis: "amount", payout: false }
        );
        assert_eq!(p("/v1/charges", "currency=usd"), Err(PricingError::Missing("amount")));
        assert_eq!(p("/v1/charges", "amount=5"), Err(PricingError::Missing("currency")));
        assert!(matches!(p("/v1/transfers", "amount=5&currency=eu"), Err(PricingError::InvalidCurrency(_))));
        assert!(matches!(p("/v1/payouts", "amount=5&currency=ugx").unwrap(), Price::Amount { payout: true, .. }));
        assert!(matches!(p("/v1/topups", "amount=5&currency=usd").unwrap(), Price::Amount { minor: 5, .. }));
    }

    #[test]
    fn bad_amounts_are_errors() {
        assert!(matches!(p("/v1/charges", "amount=-5&currency=usd"), Err(PricingError::NegativeAmount { .. })));
        assert!(matches!(p("/v1/charges", "amount=12.5&currency=usd"), Err(PricingError::InvalidAmount { .. })));
        assert!(matches!(p("/v1/charges", "amount=abc&currency=usd"), Err(PricingError::InvalidAmount { .. })));
        assert!(matches!(p("/v1/charges", "amount=&currency=usd"), Err(PricingError::InvalidAmount { .. })));
        assert!(matches!(p("/v1/charges", "amount=+5&currency=usd"), Err(PricingError::InvalidAmount { .. })));
        // One reading only: no leading zeros, no exponents, no spaces, no other digits.
        for odd in ["0100", "00", "1e3", "%20100", "100%20", "%EF%BC%91%EF%BC%90%EF%BC%90", "100.0", "0x10"] {
            assert!(
                matches!(
                    p("/v1/charges", &format!("amount={odd}&currency=usd")),
                    Err(PricingError::InvalidAmount { .. })
                ),
                "{odd}"
            );
        }
        assert!(matches!(p("/v1/charges", "amount=0&currency=usd").unwrap(), Price::Amount { minor: 0, .. }));
        assert!(matches!(
            p("/v1/charges", "amount=99999999999999999999999&currency=usd"),
            Err(PricingError::AmountTooLarge { .. })
        ));
        assert!(matches!(
            p("/v1/charges", "amount=1&amount=2&currency=usd"),
            Err(PricingError::Form(FormError::Duplicate(_)))
        ));
    }

    #[test]
    fn booleans_that_price_a_call_are_true_or_false() {
        assert_eq!(p("/v1/payment_intents", "amount=500&currency=usd&confirm=false").unwrap(), Price::Free);
        for odd in ["True", "TRUE", "1", "yes", "on", "", "true%20"] {
            let body = format!("amount=500&currency=usd&confirm={odd}");
            assert!(matches!(p("/v1/payment_intents", &body), Err(PricingError::InvalidBoolean { .. })), "{odd:?}");
        }
        assert!(matches!(
            p("/v1/payment_intents", "amount=500&currency=usd&confirm"),
            Err(PricingError::InvalidBoolean { .. })
        ));
    }

    #[test]
    fn payment_intents_count_when_confirmed() {
        assert_eq!(p("/v1/payment_intents", "amount=500&currency=usd").unwrap(), Price::Free);
        assert!(matches!(
            p("/v1/payment_intents", "amount=500&currency=usd&confirm=true").unwrap(),
            Price::Amount { minor: 500, .. }
        ));
        assert_eq!(
            p("/v1/payment_intents/pi_1/confirm", "").unwrap(),
            Price::ObjectAmount { object_id: "pi_1".into(), basis: "object_amount" }
        );
        assert_eq!(p("/v1/payment_intents/pi_1", "description=x").unwrap(), Price::Free);
        assert_eq!(
            p("/v1/payment_intents/pi_1", "amount=700").unwrap(),
            Price::Amount {
                minor: 700,
                currency: CurrencySource::OfObject("pi_1".into()),
                basis: "amount",
                payout: false
            }
        );
        assert!(matches!(
            p("/v1/payment_intents/pi_1/increment_authorization", "amount=900").unwrap(),
            Price::Amount { minor: 900, .. }
        ));
        assert!(matches!(
            p("/v1/payment_intents/pi_1/capture", "amount_to_capture=300").unwrap(),
            Price::Amount { minor: 300, basis: "amount_to_capture", .. }
        ));
        assert!(matches!(p("/v1/payment_intents/pi_1/capture", "").unwrap(), Price::ObjectAmount { .. }));
    }

    #[test]
    fn refunds_captures_and_reversals() {
        assert!(matches!(
            p("/v1/refunds", "charge=ch_1&amount=100").unwrap(),
            Price::Amount { minor: 100, currency: CurrencySource::OfObject(ref o), .. } if o == "ch_1"
        ));
        assert!(
            matches!(p("/v1/refunds", "payment_intent=pi_1").unwrap(), Price::ObjectAmount { ref object_id, .. } if object_id == "pi_1")
        );
        assert!(matches!(p("/v1/refunds", "amount=100").unwrap(), Price::Unpriced { .. }));
        assert!(matches!(p("/v1/charges/ch_1/refund", "amount=5").unwrap(), Price::Amount { minor: 5, .. }));
        assert!(matches!(p("/v1/charges/ch_1/refunds", "").unwrap(), Price::ObjectAmount { .. }));
        assert!(matches!(p("/v1/charges/ch_1/capture", "amount=5").unwrap(), Price::Amount { minor: 5, .. }));
        assert!(matches!(p("/v1/transfers/tr_1/reversals", "amount=5").unwrap(), Price::Amount { minor: 5, .. }));
        assert!(matches!(p("/v1/invoices/in_1/pay", "").unwrap(), Price::ObjectAmount { .. }));
    }

    #[test]
    fn invoice_items_and_checkout_line_items() {
        assert!(matches!(
            p("/v1/invoiceitems", "amount=100&currency=usd&customer=c").unwrap(),
            Price::Amount { minor: 100, .. }
        ));
        assert_eq!(p("/v1/invoiceitems", "amount=-100&currency=usd").unwrap(), Price::Free);
        assert!(matches!(
            p("/v1/invoiceitems", "unit_amount=250&quantity=4&currency=eur").unwrap(),
            Price::Amount { minor: 1000, .. }
        ));
        assert!(matches!(
            p("/v1/invoiceitems", "price_data[unit_amount]=250&price_data[currency]=usd&quantity=2").unwrap(),
            Price::Amount { minor: 500, .. }
        ));
        assert!(matches!(p("/v1/invoiceitems", "price=price_1").unwrap(), Price::Unpriced { .. }));
        let body = "mode=payment&line_items[0][price_data][unit_amount]=1000&line_items[0][price_data][currency]=usd&line_items[0][quantity]=2&line_items[1][price_data][unit_amount]=50&line_items[1][price_data][currency]=usd";
        assert!(matches!(
            p("/v1/checkout/sessions", body).unwrap(),
            Price::Amount { minor: 2050, basis: "line_items", .. }
        ));
        assert!(matches!(p("/v1/checkout/sessions", "line_items[0][price]=price_1").unwrap(), Price::Unpriced { .. }));
        // Indices read differently here and at Stripe are refused, not skipped.
        for odd in ["00", "+1", "x", "", " 1", "01"] {
            let body = format!(
                "line_items[0][price_data][unit_amount]=50&line_items[0][price_data][currency]=usd\
                 &line_items[{odd}][price_data][unit_amount]=900000&line_items[{odd}][price_data][currency]=usd"
            );
            let err = p("/v1/checkout/sessions", &body).unwrap_err();
            assert!(
                matches!(
                    err,
                    PricingError::Form(FormError::BadIndex(_) | FormError::BadKey(_) | FormError::Conflict(_))
                ),
                "{odd:?}: {err:?}"
            );
        }
        // A line item past a gap would be read by some servers and not others.
        let gap = "line_items[0][price_data][unit_amount]=50&line_items[0][price_data][currency]=usd\
                   &line_items[2][price_data][unit_amount]=900000&line_items[2][price_data][currency]=usd";
        assert_eq!(
            p("/v1/checkout/sessions", gap),
            Err(PricingError::Form(FormError::SparseIndex("line_items".into())))
        );
        assert!(matches!(p("/v1/checkout/sessions", "mode=subscription").unwrap(), Price::Unpriced { .. }));
        assert!(matches!(p("/v1/checkout/sessions", "mode=Payment"), Err(PricingError::InvalidChoice { .. })));
        let mixed = "line_items[0][price_data][unit_amount]=1&line_items[0][price_data][currency]=usd&line_items[1][price_data][unit_amount]=1&line_items[1][price_data][currency]=eur";
        assert_eq!(p("/v1/checkout/sessions", mixed), Err(PricingError::MixedCurrencies));
    }

    #[test]
    fn the_answer_says_what_moved() {
        let post = |path: &str, body: &str| moved(Method::Post, path, body.as_bytes());
        let charge = r#"{"id":"ch_1","object":"charge","amount":100000,"currency":"USD","amount_captured":0}"#;
        assert_eq!(
            post("/v1/charges", charge),
            Moved::Amount { minor: 100_000, currency: "usd".into(), field: "amount", payout: false }
        );
        assert!(matches!(
            post("/v1/charges/ch_1/capture", charge),
            Moved::Amount { minor: 0, field: "amount_captured", .. }
        ));
        let intent = |status: &str| format!(r#"{{"id":"pi_1","amount":500,"currency":"eur","status":"{status}"}}"#);
        assert!(matches!(
            post("/v1/payment_intents", &intent("requires_confirmation")),
            Moved::Amount { minor: 0, .. }
        ));
        assert!(matches!(post("/v1/payment_intents", &intent("succeeded")), Moved::Amount { minor: 500, .. }));
        assert!(matches!(post("/v1/payment_intents", &intent("requires_capture")), Moved::Amount { minor: 500, .. }));
        assert!(matches!(
            post("/v1/payment_intents/pi_1/confirm", &intent("processing")),
            Moved::Amount { minor: 500, .. }
        ));
        assert!(matches!(post("/v1/payouts", r#"{"amount":5,"currency":"ugx"}"#), Moved::Amount { payout: true, .. }));
        assert_eq!(post("/v1/charges", "not json"), Moved::Unreadable);
        assert_eq!(post("/v1/charges", r#"{"amount":"100","currency":"usd"}"#), Moved::Unreadable);
        assert_eq!(post("/v1/charges/ch_1/refund", charge), Moved::NotChecked, "a cumulative total");
        assert_eq!(post("/v1/customers", r#"{"id":"cus_1"}"#), Moved::NotChecked);
        assert_eq!(moved(Method::Get, "/v1/charges", charge.as_bytes()), Moved::NotChecked);
    }

    #[test]
    fn calls_that_may_move_money_hold_state() {
        assert!(holds_state(Method::Post, "/v1/charges", false, false));
        assert!(holds_state(Method::Post, "/v1/payment_intents", true, false), "priced free, but it can move money");
        assert!(holds_state(Method::Post, "/v1/customers", true, true), "the caller's idempotency key");
        assert!(!holds_state(Method::Post, "/v1/customers", true, false));
        assert!(!holds_state(Method::Get, "/v1/charges", true, true));
    }

    #[test]
    fn what_moves_no_money_is_free() {
        assert_eq!(p("/v1/customers/cus_1", "email=a@b.c").unwrap(), Price::Free);
        assert_eq!(price(Method::Get, "/v1/charges", &FormParams::default()).unwrap(), Price::Free);
        assert_eq!(price(Method::Delete, "/v1/customers/cus_1", &FormParams::default()).unwrap(), Price::Free);
        assert!(matches!(p("/v1/subscriptions", "customer=c").unwrap(), Price::Unpriced { .. }));
        assert!(!moves_money(Method::Post, "/v1/customers"));
        assert!(moves_money(Method::Post, "/v1/charges"));
        assert!(!moves_money(Method::Get, "/v1/charges"));
    }

    #[cfg(not(target_arch = "wasm32"))]
    proptest! {
        #[test]
        fn charge_price_is_monotone_in_amount(a in 0i64..1_000_000_000_000, b in 0i64..1_000_000_000_000) {
            let price_of = |n: i64| match p("/v1/charges", &format!("amount={n}&currency=usd")).unwrap() {
                Price::Amount { minor, .. } => minor,
                other => panic!("unexpected {other:?}"),
            };
            prop_assert_eq!(a <= b, price_of(a) <= price_of(b));
        }

        #[test]
        fn pricing_never_panics(path in "(/v1/(charges|payment_intents|refunds|invoiceitems|checkout/sessions|x)(/[a-z_0-9]{1,5}){0,2})", body in "[a-z_\\[\\]0-9=&%-]{0,80}") {
            if let Ok(params) = FormParams::parse(body.as_bytes()) {
                let _ = price(Method::Post, &path, &params);
            }
        }
    }
}
