//! The MCP tools: one table of Stripe operations (name, HTTP method, path
//! template, typed parameters, what money each can move) and Keybrake's own
//! audit search. Pure data and pure functions: which tools a vault key sees,
//! and each tool's JSON Schema and description as `tools/list` shows them.
//!
//! A tool is a Stripe API call made through the gateway with the caller's
//! vault key, so the gateway's rules (scope, pricing, caps, dedup, audit)
//! decide it; this table decides only what an agent is offered and which
//! arguments are sent (nothing undeclared ever is).

use keybrake_core::scope::{Method, Scope};
use keybrake_core::vendor::Vendor;
use serde_json::{json, Map, Value};

/// Longest free-text value sent (Stripe's own limit for most strings).
pub const MAX_TEXT: usize = 5000;
/// Longest object id accepted.
pub const MAX_ID: usize = 255;

/// A parameter's type: what JSON it takes and how it is encoded.
#[derive(Debug, Clone, Copy)]
pub enum Ty {
    /// Free text (at most [`MAX_TEXT`] characters).
    Text,
    /// A Stripe object id: letters, digits and `_` (`cus_123`).
    Id,
    /// A three-letter ISO currency code in lower case (`usd`).
    Currency,
    /// A whole number within the bounds.
    Int {
        min: i64,
        max: i64,
    },
    /// A plain decimal number (`12.5`), non-negative.
    Decimal,
    Bool,
    /// One of fixed strings.
    Enum(&'static [&'static str]),
    /// Stripe metadata: at most 50 keys (letters, digits, `_`, `-`, at most 40
    /// characters) with text values (at most 500 characters).
    Metadata,
    /// An object with fixed fields.
    Object(&'static [Field]),
    /// A list of at most `max` items, encoded `name[0]`, `name[1]`...
    List(&'static Ty, usize),
}

/// Where an argument goes in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// A Stripe parameter: the form body of a POST, the query of a GET or DELETE.
    Param,
    /// A `{name}` segment of the path.
    Path,
    /// A request header.
    Header(&'static str),
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub ty: Ty,
    pub required: bool,
    pub place: Place,
    pub doc: &'static str,
}

const fn opt(name: &'static str, ty: Ty, doc: &'static str) -> Field {
    Field { name, ty, required: false, place: Place::Param, doc }
}

const fn req(name: &'static str, ty: Ty, doc: &'static str) -> Field {
    Field { name, ty, required: true, place: Place::Param, doc }
}

/// What a tool does with money, for its description (checked against the
/// gateway's pricing table by a unit test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Money {
    /// A read.
    Reads,
    /// A write that moves no money; the text says what it does.
    None(&'static str),
    /// A priced money-moving call; the text says what moves.
    Priced(&'static str),
    /// A money-moving call whose amount is not in the request.
    Unpriced(&'static str),
}

/// One tool.
#[derive(Debug, Clone, Copy)]
pub struct ToolDef {
    pub name: &'static str,
    pub title: &'static str,
    pub vendor: Vendor,
    pub method: Method,
    /// The path, `{name}` segments filled from arguments of that name.
    pub path: &'static str,
    /// A Stripe list endpoint: takes `limit`, `starting_after`, `ending_before`.
    pub list: bool,
    pub money: Money,
    pub params: &'static [Field],
}

const AMOUNT: Ty = Ty::Int { min: 0, max: 99_999_999_999 };
const QUANTITY: Ty = Ty::Int { min: 0, max: 1_000_000 };
const DAYS: Ty = Ty::Int { min: 1, max: 3650 };
const MAX_ITEMS: usize = 20;

const PRICE_AND_QUANTITY: &[Field] =
    &[req("price", Ty::Id, "The Price's id (price_...)."), opt("quantity", QUANTITY, "How many; default 1.")];
const SUBSCRIPTION_ITEM: &[Field] = &[
    opt("id", Ty::Id, "An existing subscription item's id (si_...), to change or delete it."),
    opt("price", Ty::Id, "The Price's id (price_...)."),
    opt("quantity", QUANTITY, "How many."),
    opt("deleted", Ty::Bool, "Remove this item (with id)."),
];
const RECURRING: &[Field] = &[
    req("interval", Ty::Enum(&["day", "week", "month", "year"]), "How often the price is charged."),
    opt("interval_count", Ty::Int { min: 1, max: 365 }, "Intervals between charges; default 1."),
];
const AUTOMATIC_PAYMENT_METHODS: &[Field] = &[
    req("enabled", Ty::Bool, "Let Stripe choose the payment methods from the Dashboard's settings."),
    opt("allow_redirects", Ty::Enum(&["always", "never"]), "Whether redirect-based methods are allowed."),
];
const DISPUTE_EVIDENCE: &[Field] = &[
    opt("access_activity_log", Ty::Text, "Server or activity logs showing the customer used the product."),
    opt("billing_address", Ty::Text, "The billing address the customer gave."),
    opt("cancellation_policy_disclosure", Ty::Text, "How the cancellation policy was shown to the customer."),
    opt("cancellation_rebuttal", Ty::Text, "Why the customer's subscription was not cancelled."),
    opt("customer_email_address", Ty::Text, "The customer's email address."),
    opt("customer_name", Ty::Text, "The customer's name."),
    opt("duplicate_charge_explanation", Ty::Text, "Why the charges are not duplicates."),
    opt("product_description", Ty::Text, "What was sold."),
    opt("refund_policy_disclosure", Ty::Text, "How the refund policy was shown to the customer."),
    opt("refund_refusal_explanation", Ty::Text, "Why the customer is not entitled to a refund."),
    opt("service_date", Ty::Text, "When the service was provided."),
    opt("shipping_carrier", Ty::Text, "The carrier that shipped the product."),
    opt("shipping_date", Ty::Text, "When the product was shipped."),
    opt("shipping_tracking_number", Ty::Text, "The shipment's tracking number."),
    opt("uncategorized_text", Ty::Text, "Any other evidence."),
];

const METADATA: Field = opt("metadata", Ty::Metadata, "Key-value pairs to store on the object.");
const DESCRIPTION: Field = opt("description", Ty::Text, "An arbitrary description.");
const CUSTOMER: Field = opt("customer", Ty::Id, "The Customer's id (cus_...).");
const CURRENCY: Field = req("currency", Ty::Currency, "Three-letter ISO currency code, lower case (usd).");

/// Every tool, Stripe's first, in the order `tools/list` shows them.
pub const TOOLS: &[ToolDef] = &[
    // ---- charges
    ToolDef {
        name: "create_charge",
        title: "Create a charge",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/charges",
        list: false,
        money: Money::Priced(
            "charges `amount` (in the currency's smallest unit: cents for usd) to the customer's card or \
             source now (or authorizes it, with capture=false).",
        ),
        params: &[
            req("amount", AMOUNT, "Amount in the currency's smallest unit (2999 is $29.99)."),
            CURRENCY,
            CUSTOMER,
            opt("source", Ty::Id, "A card, bank account or token id to charge (tok_..., card_...)."),
            DESCRIPTION,
            opt("capture", Ty::Bool, "false to authorize only (capture later with capture_charge)."),
            opt("receipt_email", Ty::Text, "Where Stripe sends the receipt."),
            opt("statement_descriptor_suffix", Ty::Text, "Text appended to the statement descriptor."),
            METADATA,
        ],
    },
    ToolDef {
        name: "list_charges",
        title: "List charges",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/charges",
        list: true,
        money: Money::Reads,
        params: &[CUSTOMER, opt("payment_intent", Ty::Id, "Only charges of this PaymentIntent (pi_...).")],
    },
    ToolDef {
        name: "retrieve_charge",
        title: "Retrieve a charge",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/charges/{charge}",
        list: false,
        money: Money::Reads,
        params: &[],
    },
    ToolDef {
        name: "capture_charge",
        title: "Capture a charge",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/charges/{charge}/capture",
        list: false,
        money: Money::Priced("captures an authorized charge: `amount`, or the whole authorized amount when omitted."),
        params: &[
            opt("amount", AMOUNT, "Amount to capture in the smallest currency unit; default: all of it."),
            opt("receipt_email", Ty::Text, "Where Stripe sends the receipt."),
        ],
    },
    // ---- customers
    ToolDef {
        name: "create_customer",
        title: "Create a customer",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/customers",
        list: false,
        money: Money::None("Creates a customer."),
        params: &[
            opt("name", Ty::Text, "The customer's full name or business name."),
            opt("email", Ty::Text, "The customer's email address."),
            opt("phone", Ty::Text, "The customer's phone number."),
            DESCRIPTION,
            opt("payment_method", Ty::Id, "A PaymentMethod (pm_...) to attach."),
            METADATA,
        ],
    },
    ToolDef {
        name: "list_customers",
        title: "List customers",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/customers",
        list: true,
        money: Money::Reads,
        params: &[opt("email", Ty::Text, "Only customers with this email address (case-sensitive).")],
    },
    ToolDef {
        name: "retrieve_customer",
        title: "Retrieve a customer",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/customers/{customer}",
        list: false,
        money: Money::Reads,
        params: &[],
    },
    ToolDef {
        name: "update_customer",
        title: "Update a customer",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/customers/{customer}",
        list: false,
        money: Money::None("Updates a customer's details."),
        params: &[
            opt("name", Ty::Text, "The customer's full name or business name."),
            opt("email", Ty::Text, "The customer's email address."),
            opt("phone", Ty::Text, "The customer's phone number."),
            DESCRIPTION,
            METADATA,
        ],
    },
    // ---- products and prices
    ToolDef {
        name: "create_product",
        title: "Create a product",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/products",
        list: false,
        money: Money::None("Creates a product."),
        params: &[
            req("name", Ty::Text, "The product's name, shown to customers."),
            DESCRIPTION,
            opt("active", Ty::Bool, "Whether it can be bought; default true."),
            METADATA,
        ],
    },
    ToolDef {
        name: "list_products",
        title: "List products",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/products",
        list: true,
        money: Money::Reads,
        params: &[opt("active", Ty::Bool, "Only active (true) or archived (false) products.")],
    },
    ToolDef {
        name: "update_product",
        title: "Update a product",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/products/{product}",
        list: false,
        money: Money::None("Updates a product."),
        params: &[
            opt("name", Ty::Text, "The product's name."),
            DESCRIPTION,
            opt("active", Ty::Bool, "Whether it can be bought."),
            METADATA,
        ],
    },
    ToolDef {
        name: "create_price",
        title: "Create a price",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/prices",
        list: false,
        money: Money::None(
            "Creates a price for a product (what later charges, invoices, subscriptions and payment links using it cost).",
        ),
        params: &[
            req("product", Ty::Id, "The Product's id (prod_...)."),
            req("unit_amount", AMOUNT, "Price per unit in the currency's smallest unit."),
            CURRENCY,
            opt("recurring", Ty::Object(RECURRING), "For subscriptions: how often it is charged."),
            opt("nickname", Ty::Text, "A name for the price, not shown to customers."),
            opt("active", Ty::Bool, "Whether it can be used; default true."),
            METADATA,
        ],
    },
    ToolDef {
        name: "list_prices",
        title: "List prices",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/prices",
        list: true,
        money: Money::Reads,
        params: &[
            opt("product", Ty::Id, "Only prices of this product (prod_...)."),
            opt("active", Ty::Bool, "Only active or inactive prices."),
        ],
    },
    // ---- payment links
    ToolDef {
        name: "create_payment_link",
        title: "Create a payment link",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/payment_links",
        list: false,
        money: Money::Unpriced("creates a link anyone can use to pay the line items' prices, as often as it is used."),
        params: &[
            req("line_items", Ty::List(&Ty::Object(PRICE_AND_QUANTITY), MAX_ITEMS), "What the link sells."),
            METADATA,
        ],
    },
    ToolDef {
        name: "list_payment_links",
        title: "List payment links",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/payment_links",
        list: true,
        money: Money::Reads,
        params: &[opt("active", Ty::Bool, "Only active or deactivated links.")],
    },
    // ---- invoices and invoice items
    ToolDef {
        name: "create_invoice",
        title: "Create an invoice",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/invoices",
        list: false,
        money: Money::None("Creates a draft invoice for a customer's pending invoice items (finalize_invoice bills it)."),
        params: &[
            req("customer", Ty::Id, "The Customer's id (cus_...)."),
            opt(
                "collection_method",
                Ty::Enum(&["charge_automatically", "send_invoice"]),
                "charge_automatically charges the default payment method; send_invoice emails it.",
            ),
            opt("days_until_due", DAYS, "With send_invoice: days until it is due."),
            opt("auto_advance", Ty::Bool, "Whether Stripe finalizes and collects it automatically."),
            opt("currency", Ty::Currency, "The invoice's currency; default the customer's."),
            DESCRIPTION,
            METADATA,
        ],
    },
    ToolDef {
        name: "list_invoices",
        title: "List invoices",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/invoices",
        list: true,
        money: Money::Reads,
        params: &[
            CUSTOMER,
            opt("status", Ty::Enum(&["draft", "open", "paid", "uncollectible", "void"]), "Only invoices in this state."),
            opt("subscription", Ty::Id, "Only invoices of this subscription (sub_...)."),
        ],
    },
    ToolDef {
        name: "retrieve_invoice",
        title: "Retrieve an invoice",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/invoices/{invoice}",
        list: false,
        money: Money::Reads,
        params: &[],
    },
    ToolDef {
        name: "finalize_invoice",
        title: "Finalize an invoice",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/invoices/{invoice}/finalize",
        list: false,
        money: Money::Unpriced(
            "finalizes a draft invoice; with collection_method charge_automatically Stripe then charges its total.",
        ),
        params: &[opt("auto_advance", Ty::Bool, "Whether Stripe collects it automatically after finalizing.")],
    },
    ToolDef {
        name: "create_invoice_item",
        title: "Create an invoice item",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/invoiceitems",
        list: false,
        money: Money::Priced(
            "adds `amount` to what the customer's next invoice charges (a negative amount is a credit).",
        ),
        params: &[
            req("customer", Ty::Id, "The Customer's id (cus_...)."),
            req("amount", Ty::Int { min: -99_999_999_999, max: 99_999_999_999 }, "Amount in the smallest currency unit."),
            CURRENCY,
            opt("invoice", Ty::Id, "A draft invoice (in_...) to add it to; default the next one."),
            DESCRIPTION,
            METADATA,
        ],
    },
    ToolDef {
        name: "list_invoice_items",
        title: "List invoice items",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/invoiceitems",
        list: true,
        money: Money::Reads,
        params: &[CUSTOMER, opt("invoice", Ty::Id, "Only items of this invoice (in_...).")],
    },
    // ---- refunds
    ToolDef {
        name: "create_refund",
        title: "Refund a payment",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/refunds",
        list: false,
        money: Money::Priced(
            "sends money back to the customer: `amount`, or all that is left of the charge or PaymentIntent when omitted.",
        ),
        params: &[
            opt("payment_intent", Ty::Id, "The PaymentIntent to refund (pi_...); this or charge."),
            opt("charge", Ty::Id, "The charge to refund (ch_...); this or payment_intent."),
            opt("amount", AMOUNT, "Amount in the smallest currency unit; default: the whole remaining amount."),
            opt(
                "reason",
                Ty::Enum(&["duplicate", "fraudulent", "requested_by_customer"]),
                "Why it is refunded.",
            ),
            METADATA,
        ],
    },
    ToolDef {
        name: "list_refunds",
        title: "List refunds",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/refunds",
        list: true,
        money: Money::Reads,
        params: &[
            opt("charge", Ty::Id, "Only refunds of this charge (ch_...)."),
            opt("payment_intent", Ty::Id, "Only refunds of this PaymentIntent (pi_...)."),
        ],
    },
    // ---- balance
    ToolDef {
        name: "retrieve_balance",
        title: "Retrieve the balance",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/balance",
        list: false,
        money: Money::Reads,
        params: &[],
    },
    // ---- payment intents
    ToolDef {
        name: "create_payment_intent",
        title: "Create a payment intent",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/payment_intents",
        list: false,
        money: Money::Priced(
            "with confirm=true, charges `amount` to the payment method now (or authorizes it, with \
             capture_method=manual); without confirm nothing moves until confirm_payment_intent.",
        ),
        params: &[
            req("amount", AMOUNT, "Amount in the currency's smallest unit (2999 is $29.99)."),
            CURRENCY,
            CUSTOMER,
            opt("payment_method", Ty::Id, "The PaymentMethod to charge (pm_...)."),
            opt("confirm", Ty::Bool, "true to confirm (charge) at once."),
            opt(
                "capture_method",
                Ty::Enum(&["automatic", "automatic_async", "manual"]),
                "manual to authorize only (capture with capture_payment_intent).",
            ),
            opt("off_session", Ty::Bool, "With confirm: the customer is not present."),
            opt("return_url", Ty::Text, "With confirm: where redirect-based methods return."),
            opt(
                "automatic_payment_methods",
                Ty::Object(AUTOMATIC_PAYMENT_METHODS),
                "Let Stripe pick payment methods.",
            ),
            opt("payment_method_types", Ty::List(&Ty::Text, MAX_ITEMS), "Payment method types allowed (card...)."),
            opt("receipt_email", Ty::Text, "Where Stripe sends the receipt."),
            DESCRIPTION,
            METADATA,
        ],
    },
    ToolDef {
        name: "list_payment_intents",
        title: "List payment intents",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/payment_intents",
        list: true,
        money: Money::Reads,
        params: &[CUSTOMER],
    },
    ToolDef {
        name: "retrieve_payment_intent",
        title: "Retrieve a payment intent",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/payment_intents/{payment_intent}",
        list: false,
        money: Money::Reads,
        params: &[],
    },
    ToolDef {
        name: "confirm_payment_intent",
        title: "Confirm a payment intent",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/payment_intents/{payment_intent}/confirm",
        list: false,
        money: Money::Priced("charges (or authorizes) the amount the payment intent was created with."),
        params: &[
            opt("payment_method", Ty::Id, "The PaymentMethod to charge (pm_...)."),
            opt("off_session", Ty::Bool, "The customer is not present."),
            opt("return_url", Ty::Text, "Where redirect-based methods return."),
            opt("receipt_email", Ty::Text, "Where Stripe sends the receipt."),
        ],
    },
    ToolDef {
        name: "capture_payment_intent",
        title: "Capture a payment intent",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/payment_intents/{payment_intent}/capture",
        list: false,
        money: Money::Priced(
            "captures an authorized payment: `amount_to_capture`, or the whole authorized amount when omitted.",
        ),
        params: &[opt("amount_to_capture", AMOUNT, "Amount to capture; default: all of it.")],
    },
    ToolDef {
        name: "cancel_payment_intent",
        title: "Cancel a payment intent",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/payment_intents/{payment_intent}/cancel",
        list: false,
        money: Money::None("Cancels a payment intent that has not succeeded (an authorization is released)."),
        params: &[opt(
            "cancellation_reason",
            Ty::Enum(&["duplicate", "fraudulent", "requested_by_customer", "abandoned"]),
            "Why it is cancelled.",
        )],
    },
    // ---- subscriptions
    ToolDef {
        name: "list_subscriptions",
        title: "List subscriptions",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/subscriptions",
        list: true,
        money: Money::Reads,
        params: &[
            CUSTOMER,
            opt("price", Ty::Id, "Only subscriptions to this price (price_...)."),
            opt(
                "status",
                Ty::Enum(&[
                    "active",
                    "all",
                    "canceled",
                    "ended",
                    "incomplete",
                    "incomplete_expired",
                    "past_due",
                    "paused",
                    "trialing",
                    "unpaid",
                ]),
                "Only subscriptions in this state; default: all but canceled.",
            ),
        ],
    },
    ToolDef {
        name: "create_subscription",
        title: "Create a subscription",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/subscriptions",
        list: false,
        money: Money::Unpriced(
            "starts charging the customer the items' prices every period, usually the first one at once.",
        ),
        params: &[
            req("customer", Ty::Id, "The Customer's id (cus_...)."),
            req("items", Ty::List(&Ty::Object(PRICE_AND_QUANTITY), MAX_ITEMS), "The prices subscribed to."),
            opt("trial_period_days", DAYS, "Days of free trial before the first charge."),
            opt("default_payment_method", Ty::Id, "The PaymentMethod to charge (pm_...)."),
            opt(
                "collection_method",
                Ty::Enum(&["charge_automatically", "send_invoice"]),
                "Charge automatically, or email invoices.",
            ),
            opt("days_until_due", DAYS, "With send_invoice: days until each invoice is due."),
            opt("cancel_at_period_end", Ty::Bool, "Cancel at the end of the first period."),
            DESCRIPTION,
            METADATA,
        ],
    },
    ToolDef {
        name: "update_subscription",
        title: "Update a subscription",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/subscriptions/{subscription}",
        list: false,
        money: Money::Unpriced(
            "changes what the customer is charged each period; proration_behavior=always_invoice charges the \
             prorated difference at once.",
        ),
        params: &[
            opt("items", Ty::List(&Ty::Object(SUBSCRIPTION_ITEM), MAX_ITEMS), "Items to add, change or delete."),
            opt(
                "proration_behavior",
                Ty::Enum(&["create_prorations", "none", "always_invoice"]),
                "How the change is prorated.",
            ),
            opt("cancel_at_period_end", Ty::Bool, "Cancel at the end of the current period."),
            opt("default_payment_method", Ty::Id, "The PaymentMethod to charge (pm_...)."),
            DESCRIPTION,
            METADATA,
        ],
    },
    ToolDef {
        name: "cancel_subscription",
        title: "Cancel a subscription",
        vendor: Vendor::Stripe,
        method: Method::Delete,
        path: "/v1/subscriptions/{subscription}",
        list: false,
        money: Money::None(
            "Cancels a subscription at once: no further periods are charged. With invoice_now, Stripe invoices \
             pending usage and prorations, which it may charge.",
        ),
        params: &[
            opt("invoice_now", Ty::Bool, "Invoice pending usage and prorations now."),
            opt("prorate", Ty::Bool, "Credit the unused part of the period."),
        ],
    },
    // ---- coupons
    ToolDef {
        name: "create_coupon",
        title: "Create a coupon",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/coupons",
        list: false,
        money: Money::None("Creates a discount (lowers what later invoices charge)."),
        params: &[
            opt("percent_off", Ty::Decimal, "Percentage off (0 to 100); this or amount_off."),
            opt("amount_off", AMOUNT, "Amount off in the smallest currency unit; needs currency."),
            opt("currency", Ty::Currency, "With amount_off: its currency."),
            opt("duration", Ty::Enum(&["once", "repeating", "forever"]), "How long it applies; default once."),
            opt("duration_in_months", Ty::Int { min: 1, max: 1200 }, "With duration=repeating: months."),
            opt("max_redemptions", Ty::Int { min: 1, max: 1_000_000_000 }, "How often it can be redeemed."),
            opt("name", Ty::Text, "Its name, shown to customers."),
            opt("id", Ty::Id, "Its id (and code); default: generated."),
            METADATA,
        ],
    },
    ToolDef {
        name: "list_coupons",
        title: "List coupons",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/coupons",
        list: true,
        money: Money::Reads,
        params: &[],
    },
    // ---- disputes
    ToolDef {
        name: "list_disputes",
        title: "List disputes",
        vendor: Vendor::Stripe,
        method: Method::Get,
        path: "/v1/disputes",
        list: true,
        money: Money::Reads,
        params: &[
            opt("charge", Ty::Id, "Only disputes of this charge (ch_...)."),
            opt("payment_intent", Ty::Id, "Only disputes of this PaymentIntent (pi_...)."),
        ],
    },
    ToolDef {
        name: "update_dispute",
        title: "Update a dispute",
        vendor: Vendor::Stripe,
        method: Method::Post,
        path: "/v1/disputes/{dispute}",
        list: false,
        money: Money::None("Adds evidence to a dispute, or submits it (the card network's decision moves the money)."),
        params: &[
            opt("evidence", Ty::Object(DISPUTE_EVIDENCE), "Evidence for the dispute (text fields)."),
            opt("submit", Ty::Bool, "Submit the evidence now; default: saved only."),
            METADATA,
        ],
    },
    // ---- Keybrake's own
    ToolDef {
        name: AUDIT_TOOL,
        title: "Search Keybrake's audit log",
        vendor: Vendor::Keybrake,
        method: Method::Get,
        path: "/admin/audit",
        list: false,
        money: Money::Reads,
        params: &[
            opt("key_id", Ty::Id, "Only calls made with this vault key id."),
            opt("label_prefix", Ty::Text, "Only calls of keys whose label starts with this."),
            opt("idempotency_key", Ty::Text, "Only calls with this Idempotency-Key (the caller's)."),
            opt("fingerprint", Ty::Id, "Only calls with this request fingerprint."),
            opt("object_id", Ty::Id, "Only calls that created or acted on this Stripe object (ch_...)."),
            opt("decision", Ty::Enum(&["allowed", "denied", "replayed", "abandoned"]), "Only this decision."),
            opt("call_id", Ty::Id, "Only the rows of this call."),
            opt("since", Ty::Text, "From this time (RFC 3339 or unix seconds), inclusive."),
            opt("until", Ty::Text, "Until this time (RFC 3339 or unix seconds), exclusive."),
            opt("limit", Ty::Int { min: 1, max: 100 }, "Rows per page; default 100."),
            opt("starting_after", Ty::Text, "The next_cursor of the previous page."),
            opt("order", Ty::Enum(&["asc", "desc"]), "desc (newest first, default) or asc."),
        ],
    },
];

/// The audit-scoped keys' tool: "has this already happened?" before acting.
pub const AUDIT_TOOL: &str = "keybrake_audit_search";

const LIST_PARAMS: &[Field] = &[
    opt("limit", Ty::Int { min: 1, max: 100 }, "How many objects to return (1 to 100, default 10)."),
    opt("starting_after", Ty::Id, "A cursor: the last object id of the previous page."),
    opt("ending_before", Ty::Id, "A cursor: the first object id of the next page."),
];

/// `Stripe-Account`: act on a connected account (the vault key's allowed_accounts decide).
pub const ACCOUNT_FIELD: Field = Field {
    name: "stripe_account",
    ty: Ty::Id,
    required: false,
    place: Place::Header("Stripe-Account"),
    doc: "A connected account (acct_...) to act on, sent as Stripe-Account; default: your own account.",
};

/// The caller's own idempotency key, instead of the one derived from the call.
pub const IDEMPOTENCY_FIELD: Field = Field {
    name: "idempotency_key",
    ty: Ty::Text,
    required: false,
    place: Place::Header("Idempotency-Key"),
    doc: "Your own idempotency key (at most 255 characters). By default one is derived from the tool and its \
          arguments, so a retried call is answered with the first result; give a new key to make an identical \
          call a new operation.",
};

impl ToolDef {
    /// The `{name}` segments of the path, in order.
    pub fn path_params(&self) -> impl Iterator<Item = &'static str> {
        self.path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    }

    /// Every argument the tool takes: path segments, its own parameters, the
    /// list cursors, and the headers (account; idempotency key on POSTs).
    pub fn fields(&self) -> Vec<Field> {
        let mut out: Vec<Field> = self
            .path_params()
            .map(|name| Field { name, ty: Ty::Id, required: true, place: Place::Path, doc: "" })
            .collect();
        out.extend_from_slice(self.params);
        if self.list {
            out.extend_from_slice(LIST_PARAMS);
        }
        if self.vendor == Vendor::Stripe {
            out.push(ACCOUNT_FIELD);
            if self.method == Method::Post {
                out.push(IDEMPOTENCY_FIELD);
            }
        }
        out
    }

    /// Whether some scope of a key of `vendor` could allow this tool's call:
    /// the method is the same and each path segment matches (a `{name}`
    /// segment matches a scope's `*` or a literal id; a scope's `*` matches
    /// any one segment).
    pub fn visible_to(&self, vendor: Vendor, scopes: &[Scope]) -> bool {
        vendor == self.vendor && scopes.iter().any(|s| self.matches_scope(s))
    }

    fn matches_scope(&self, scope: &Scope) -> bool {
        if scope.method() != self.method {
            return false;
        }
        let text = scope.to_string();
        let Some((_, path)) = text.split_once(' ') else { return false };
        let ours: Vec<&str> = self.path.split('/').skip(1).collect();
        let theirs: Vec<&str> = path.split('/').skip(1).collect();
        ours.len() == theirs.len() && ours.iter().zip(&theirs).all(|(o, t)| *t == "*" || o.starts_with('{') || o == t)
    }

    /// What the agent reads: what the tool does, what money it can move and
    /// what happens on a retry.
    pub fn description(&self) -> String {
        let call = format!("{} {}", self.method, self.path);
        let mut text = match self.money {
            Money::Reads if self.vendor == Vendor::Keybrake => format!(
                "Searches Keybrake's audit log ({call}): every call made through the gateway, allowed or refused, \
                 with its key, amount, idempotency key and the Stripe object it made. Use it before acting to \
                 check whether an operation already happened. Moves no money."
            ),
            Money::Reads => format!("{} ({call}). Reads only: moves no money.", self.title),
            Money::None(what) => format!("{what} ({call}). Moves no money by itself."),
            Money::Priced(what) => format!(
                "{} ({call}): MOVES MONEY: {what} Keybrake prices the call and reserves it against this vault \
                 key's daily USD cap and per-call limit before it reaches Stripe; over either it is refused \
                 (spend_cap_exceeded or per_call_limit_exceeded: do not retry).",
                self.title
            ),
            Money::Unpriced(what) => format!(
                "{} ({call}): MOVES MONEY: {what} The amount is not in the request, so a vault key with a \
                 daily cap refuses it (unpriced_call_not_allowed) unless it was issued with \
                 allow_unpriced_calls; then it is counted after Stripe answers.",
                self.title
            ),
        };
        if self.method == Method::Post {
            text.push_str(
                " Retrying the same call with the same arguments returns the first result instead of doing it \
                 twice (an idempotency key is derived from the call).",
            );
        }
        text.push_str(" Refusals come back as errors with Stripe's type, code and message, and whether to retry.");
        text
    }

    /// The tool's input schema: its fields, typed, nothing else allowed.
    pub fn input_schema(&self) -> Map<String, Value> {
        object_schema(&self.fields())
    }
}

fn object_schema(fields: &[Field]) -> Map<String, Value> {
    let mut properties = Map::new();
    let mut required = Vec::new();
    for f in fields {
        let mut schema = type_schema(&f.ty);
        let doc = if f.place == Place::Path { format!("The {}'s id.", f.name) } else { f.doc.to_owned() };
        schema.insert("description".into(), Value::String(doc));
        properties.insert(f.name.into(), Value::Object(schema));
        if f.required {
            required.push(Value::String(f.name.into()));
        }
    }
    let mut schema = Map::new();
    schema.insert("type".into(), json!("object"));
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    schema.insert("additionalProperties".into(), json!(false));
    schema
}

fn type_schema(ty: &Ty) -> Map<String, Value> {
    let value = match ty {
        Ty::Text => json!({"type": "string", "maxLength": MAX_TEXT}),
        Ty::Id => json!({"type": "string", "pattern": "^[A-Za-z0-9_]+$", "maxLength": MAX_ID}),
        Ty::Currency => json!({"type": "string", "pattern": "^[a-z]{3}$"}),
        Ty::Int { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Ty::Decimal => json!({"type": "number", "minimum": 0}),
        Ty::Bool => json!({"type": "boolean"}),
        Ty::Enum(values) => json!({"type": "string", "enum": values}),
        Ty::Metadata => json!({
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z0-9_-]{1,40}$"},
            "additionalProperties": {"type": "string", "maxLength": 500},
            "maxProperties": 50
        }),
        Ty::Object(fields) => Value::Object(object_schema(fields)),
        Ty::List(item, max) => json!({"type": "array", "items": Value::Object(type_schema(item)), "maxItems": max}),
    };
    match value {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The tool of this name.
pub fn find(name: &str) -> Option<&'static ToolDef> {
    TOOLS.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybrake_core::form::FormParams;
    use keybrake_core::pricing::{self, Price};

    fn scopes(list: &[&str]) -> Vec<Scope> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn visible(vendor: Vendor, list: &[&str]) -> Vec<&'static str> {
        let s = scopes(list);
        TOOLS.iter().filter(|t| t.visible_to(vendor, &s)).map(|t| t.name).collect()
    }

    #[test]
    fn a_key_sees_the_tools_its_scopes_allow() {
        assert_eq!(visible(Vendor::Stripe, &["POST /v1/refunds"]), ["create_refund"]);
        assert_eq!(
            visible(Vendor::Stripe, &["POST /v1/charges", "GET /v1/charges"]),
            ["create_charge", "list_charges"]
        );
        // `*` and literal ids both match a `{name}` segment; a `*` matches a literal segment too.
        assert_eq!(visible(Vendor::Stripe, &["GET /v1/charges/*"]), ["retrieve_charge"]);
        assert_eq!(visible(Vendor::Stripe, &["GET /v1/charges/ch_123"]), ["retrieve_charge"]);
        assert_eq!(
            visible(Vendor::Stripe, &["GET /v1/*"]).len(),
            TOOLS
                .iter()
                .filter(|t| t.vendor == Vendor::Stripe && t.method == Method::Get && t.path.matches('/').count() == 2)
                .count()
        );
        assert_eq!(visible(Vendor::Stripe, &["DELETE /v1/subscriptions/*"]), ["cancel_subscription"]);
        // Method, length and vendor must agree.
        assert!(visible(Vendor::Stripe, &["GET /v1/refunds/*"]).is_empty());
        assert!(visible(Vendor::Stripe, &["POST /v1/charges/*/refunds"]).is_empty());
        assert_eq!(visible(Vendor::Keybrake, &["GET /admin/audit"]), [AUDIT_TOOL]);
        assert!(visible(Vendor::Stripe, &["GET /admin/audit"]).is_empty());
        assert!(visible(Vendor::Keybrake, &["POST /v1/charges"]).is_empty());
    }

    #[test]
    fn names_and_paths_are_well_formed() {
        let mut names: Vec<&str> = TOOLS.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), TOOLS.len(), "tool names are unique");
        for t in TOOLS {
            // The filter records the tool from Keybrake-Mcp-Tool: lower case, digits, '_', at most 64.
            assert!(t.name.len() <= 64 && t.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{}", t.name);
            // Each template is a valid scope once its parameters are `*`: a key can name it.
            let scope = format!(
                "{} {}",
                t.method,
                t.path.split('/').map(|s| if s.starts_with('{') { "*" } else { s }).collect::<Vec<_>>().join("/")
            );
            let scope: Scope = scope.parse().unwrap();
            assert!(t.vendor.check_scope(&scope).is_ok(), "{}", t.name);
            assert!(t.visible_to(t.vendor, &[scope]), "{}", t.name);
            let fields = t.fields();
            let mut field_names: Vec<&str> = fields.iter().map(|f| f.name).collect();
            field_names.sort_unstable();
            field_names.dedup();
            assert_eq!(field_names.len(), fields.len(), "{}: argument names are unique", t.name);
        }
    }

    /// The money a description claims is the gateway's pricing table's view:
    /// priced calls are priced, unpriced ones unpriced, the rest move nothing.
    #[test]
    fn descriptions_agree_with_the_pricing_table() {
        for t in TOOLS.iter().filter(|t| t.vendor == Vendor::Stripe) {
            let path =
                t.path.split('/').map(|s| if s.starts_with('{') { "obj_1" } else { s }).collect::<Vec<_>>().join("/");
            let moves = pricing::moves_money(t.method, &path);
            match t.money {
                Money::Reads => assert_eq!(t.method, Method::Get, "{}", t.name),
                Money::None(_) => assert!(!moves, "{}: the gateway prices it, so it moves money", t.name),
                Money::Priced(_) => {
                    assert!(moves, "{}", t.name);
                    // With its required arguments, the call is priced (an amount, or an object's amount).
                    // A refund names what it refunds (Stripe requires charge or payment_intent);
                    // a payment intent moves money when confirmed.
                    let mut required: Vec<String> = t
                        .params
                        .iter()
                        .filter(|f| f.required)
                        .map(|f| match f.ty {
                            Ty::Int { .. } => format!("{}=100", f.name),
                            Ty::Currency => format!("{}=usd", f.name),
                            _ => format!("{}=x_1", f.name),
                        })
                        .collect();
                    match t.name {
                        "create_refund" => required.push("charge=ch_1".into()),
                        "create_payment_intent" => required.push("confirm=true".into()),
                        _ => {}
                    }
                    let params = FormParams::parse(required.join("&").as_bytes()).unwrap();
                    let price = pricing::price(t.method, &path, &params);
                    assert!(
                        matches!(price, Ok(Price::Amount { .. } | Price::ObjectAmount { .. })),
                        "{}: {price:?}",
                        t.name
                    );
                }
                Money::Unpriced(_) => {
                    assert!(moves, "{}", t.name);
                    let price = pricing::price(t.method, &path, &FormParams::default());
                    assert!(matches!(price, Ok(Price::Unpriced { .. })), "{}: {price:?}", t.name);
                }
            }
            let d = t.description();
            assert_eq!(
                d.contains("MOVES MONEY"),
                matches!(t.money, Money::Priced(_) | Money::Unpriced(_)),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn schemas_are_closed_and_typed() {
        let t = find("create_charge").unwrap();
        let s = Value::Object(t.input_schema());
        assert_eq!(s["additionalProperties"], json!(false));
        assert_eq!(s["required"], json!(["amount", "currency"]));
        assert_eq!(s["properties"]["amount"]["type"], "integer");
        assert_eq!(s["properties"]["capture"]["type"], "boolean");
        assert_eq!(s["properties"]["metadata"]["type"], "object");
        assert!(s["properties"]["idempotency_key"].is_object() && s["properties"]["stripe_account"].is_object());
        let t = find("create_payment_link").unwrap();
        let s = Value::Object(t.input_schema());
        assert_eq!(s["properties"]["line_items"]["items"]["required"], json!(["price"]));
        assert_eq!(s["properties"]["line_items"]["items"]["additionalProperties"], json!(false));
        let t = find("retrieve_charge").unwrap();
        let s = Value::Object(t.input_schema());
        assert_eq!(s["required"], json!(["charge"]));
        assert!(s["properties"].get("idempotency_key").is_none(), "reads take no idempotency key");
        let s = Value::Object(find(AUDIT_TOOL).unwrap().input_schema());
        assert!(s["properties"].get("stripe_account").is_none());
    }
}
