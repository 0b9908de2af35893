//! The OpenAPI 3.1 document, generated from the route table below (the same
//! table the metrics are labelled with; a test checks the router serves
//! every route in it).

use serde_json::{Map, Value, json};

/// One operation: method, path, summary, scope, body fields, success status, response.
#[derive(Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub scope: &'static str,
    /// (name, type, description); `*` after a name marks it required.
    pub fields: &'static [(&'static str, &'static str, &'static str)],
    pub status: u16,
    pub returns: &'static str,
}

const AMOUNT: &str = "amount";

macro_rules! route {
    ($method:literal $path:literal, $scope:literal, $status:literal $returns:literal, $summary:literal $(, $field:literal : $ty:expr => $doc:literal)* $(,)?) => {
        Route {
            method: $method,
            path: $path,
            summary: $summary,
            scope: $scope,
            fields: &[$(($field, $ty, $doc)),*],
            status: $status,
            returns: $returns,
        }
    };
}

pub const ROUTES: &[Route] = &[
    route!("get" "/healthz", "none", 200 "Status", "Liveness"),
    route!("get" "/readyz", "none", 200 "Status", "Readiness: the store is reachable and the engine takes writes"),
    route!("get" "/metrics", "none", 200 "Text", "Prometheus metrics"),
    route!("get" "/openapi.json", "none", 200 "Object", "This document"),
    route!("get" "/v1/catalog", "read", 200 "Catalog", "Tiers, packages and the task rate card"),
    route!("post" "/v1/api_keys", "admin", 201 "ApiKey", "Create an API key (the secret is shown once)",
        "scopes*": "scopes" => "admin, usage and/or read"),
    route!("get" "/v1/api_keys", "admin", 200 "List", "List API keys (without secrets)"),
    route!("post" "/v1/api_keys/{id}/revoke", "admin", 200 "ApiKey", "Revoke an API key"),
    route!("post" "/v1/accounts", "admin", 201 "Account", "Create an account; its first budget is granted at once",
        "id*": "account_id" => "1-64 characters of A-Za-z0-9_.:-",
        "name": "string" => "display name (default: the id)",
        "tier*": "nonempty" => "a tier id of the catalog",
        "anchor": "time" => "the instant periods count from (default: now)",
        "member_monthly_cap": AMOUNT => "credits one member may use per period",
        "low_balance_thresholds": "array" => "up to 5 amounts: credits.low when available falls below one (default: the tier's)",
        "auto_recharge": "auto_recharge" => "buy a package when available falls below threshold (enabled, threshold, package, max_per_month)",
        "metadata": "metadata" => "up to 50 string pairs"),
    route!("get" "/v1/accounts", "read", 200 "List", "List accounts, newest first (limit, starting_after)"),
    route!("get" "/v1/accounts/{id}", "read", 200 "Account", "Retrieve an account with its balance"),
    route!("post" "/v1/accounts/{id}", "admin", 200 "Account", "Update name, metadata, member cap, thresholds or auto-recharge",
        "name": "string" => "display name",
        "metadata": "metadata" => "replaces the metadata",
        "member_monthly_cap": AMOUNT => "null removes the account's own cap",
        "low_balance_thresholds": "array" => "up to 5 amounts; null goes back to the tier's",
        "auto_recharge": "auto_recharge" => "replaces the auto-recharge setting; null removes it"),
    route!("post" "/v1/accounts/{id}/close", "admin", 200 "Account", "Close an account: no more charges or renewals"),
    route!("post" "/v1/accounts/{id}/tier", "admin", 200 "Account", "Change tier: upgrades apply at once, downgrades at the next period",
        "tier*": "nonempty" => "the new tier",
        "proration": "proration" => "full (default), prorated or none"),
    route!("get" "/v1/accounts/{id}/balance", "read|usage", 200 "Balance", "The balance, from memory"),
    route!("post" "/v1/accounts/{id}/usage", "usage", 201 "Debit", "Charge an AI task (or credits)",
        "task": "nonempty" => "a task of the rate card (with quantity)",
        "quantity": AMOUNT => "units of the task",
        "credits": AMOUNT => "credits, instead of task and quantity",
        "member": "string" => "the member charged (for member caps and reports)",
        "mode": "mode" => "strict (default: refused when short) or record (shortfall becomes debt)",
        "metadata": "metadata" => "up to 50 string pairs"),
    route!("get" "/v1/accounts/{id}/usage/summary", "read", 200 "UsageSummary", "Usage grouped by task, day, member or kind (from, to, group_by)"),
    route!("get" "/v1/accounts/{id}/transactions", "read", 200 "List", "Journal entries, newest first (type, limit, starting_after)"),
    route!("post" "/v1/accounts/{id}/holds", "usage", 201 "Hold", "Reserve credits for a long job",
        "credits": AMOUNT => "credits to hold",
        "task": "string" => "a task (with quantity)",
        "quantity": AMOUNT => "units of the task",
        "ttl_seconds": "ttl_seconds" => "1-86400, default 900",
        "member": "string" => "the member",
        "metadata": "metadata" => "up to 50 string pairs"),
    route!("post" "/v1/accounts/{id}/grants", "admin", 201 "Grant", "Grant operator credits",
        "credits*": AMOUNT => "credits",
        "kind": "grant_kind" => "promo (default) or package",
        "expires_at": "time" => "when they expire (default: never)",
        "priority": "priority" => "burn priority 0-1000 (default by kind)",
        "reason*": "string" => "why"),
    route!("get" "/v1/accounts/{id}/grants", "read", 200 "List", "Grants, active first"),
    route!("post" "/v1/accounts/{id}/purchases", "admin", 201 "Purchase", "Start a package purchase (pending until paid)",
        "package*": "nonempty" => "a package of the catalog",
        "success_url": "string" => "with a provider's checkout: where the customer returns after paying",
        "cancel_url": "string" => "with a provider's checkout: where the customer returns after giving up"),
    route!("get" "/v1/accounts/{id}/purchases", "read", 200 "List", "Purchases, newest first"),
    route!("post" "/v1/usage/batch", "usage", 200 "BatchResults", "Up to 1000 charges, each atomic and idempotent on its own",
        "items*": "batch_items" => "charges, each with account and idempotency_key"),
    route!("get" "/v1/debits/{id}", "read", 200 "Debit", "Retrieve a charge"),
    route!("post" "/v1/debits/{id}/reverse", "admin", 200 "Transaction", "Reverse a charge fully or partly",
        "credits": AMOUNT => "default: all not yet reversed"),
    route!("get" "/v1/holds/{id}", "read", 200 "Hold", "Retrieve a hold"),
    route!("post" "/v1/holds/{id}/capture", "usage", 200 "Debit", "Charge the actual amount and release the rest",
        "credits": AMOUNT => "default: the held credits",
        "quantity": AMOUNT => "priced at the hold's task rate",
        "mode": "mode" => "strict (default) or record, for an amount above the hold"),
    route!("post" "/v1/holds/{id}/release", "usage", 200 "Hold", "Release a hold"),
    route!("post" "/v1/grants/{id}/void", "admin", 200 "Grant", "Void a grant's free remainder"),
    route!("get" "/v1/purchases/{id}", "read", 200 "Purchase", "Retrieve a purchase"),
    route!("post" "/v1/purchases/{id}/complete", "admin", 200 "Purchase", "Payment confirmed: grant the package once"),
    route!("post" "/v1/purchases/{id}/fail", "admin", 200 "Purchase", "Payment failed",
        "reason": "fail_reason" => "for an auto-recharge: payment_failed (default), action_required or no_payment_method"),
    route!("post" "/v1/purchases/{id}/cancel", "admin", 200 "Purchase", "Cancel a pending purchase"),
    route!("post" "/v1/purchases/{id}/refund", "admin", 200 "Purchase", "Refund: void the unused credits"),
    route!("post" "/v1/accounts/{id}/portal_sessions", "admin", 201 "PortalSession", "A signed, expiring link to the account's credits dashboard and billing settings",
        "return_url": "string" => "where the portal's back link goes (absolute http or https URL)"),
    route!("get" "/v1/events", "read", 200 "List", "Events, newest first (type, account, limit, starting_after)"),
    route!("get" "/v1/events/{id}", "read", 200 "Event", "Retrieve an event"),
    route!("post" "/v1/events/{id}/resend", "admin", 200 "Event", "Deliver an event again, now (to every subscribed endpoint, or one)",
        "endpoint": "string" => "a webhook endpoint id"),
    route!("post" "/v1/webhook_endpoints", "admin", 201 "WebhookEndpoint", "Register a webhook endpoint (the secret is shown once)",
        "url*": "nonempty" => "absolute http or https URL",
        "events": "array" => "event types, or [\"*\"] (default)",
        "description": "string" => "up to 500 characters"),
    route!("get" "/v1/webhook_endpoints", "admin", 200 "List", "Webhook endpoints, newest first (without secrets)"),
    route!("get" "/v1/webhook_endpoints/{id}", "admin", 200 "WebhookEndpoint", "Retrieve a webhook endpoint"),
    route!("post" "/v1/webhook_endpoints/{id}", "admin", 200 "WebhookEndpoint", "Update a webhook endpoint",
        "url": "string" => "absolute http or https URL",
        "events": "array" => "event types, or [\"*\"]",
        "description": "string" => "up to 500 characters",
        "status": "endpoint_status" => "enabled or disabled"),
    route!("delete" "/v1/webhook_endpoints/{id}", "admin", 200 "Object", "Delete a webhook endpoint"),
    route!("post" "/v1/webhook_endpoints/{id}/rotate_secret", "admin", 200 "WebhookEndpoint", "A new secret; the old one keeps signing beside it for 24 hours"),
    route!("get" "/v1/webhook_endpoints/{id}/deliveries", "admin", 200 "List", "Recent delivery attempts, newest first"),
    route!("post" "/v1/webhooks/stripe", "none", 200 "Object", "Stripe's events (signed with Stripe-Signature; PURSER_STRIPE_WEBHOOK_SECRET): checkout sessions complete or fail purchases, refunds void the refunded share, auto-recharge payment intents settle; each event applied once"),
    route!("get" "/v1/test_clock", "read", 200 "TestClock", "The test clock (only with --test-clock)"),
    route!("post" "/v1/test_clock/advance", "admin", 200 "TestClock", "Move the test clock; answered once due work is applied",
        "seconds*": "clock_seconds" => "how far, 0 to 100 years"),
];

fn schema(ty: &str) -> Value {
    match ty {
        "amount" => {
            json!({"oneOf": [{"type": "string", "pattern": "^-?\\d+(\\.\\d{1,6})?$"}, {"type": "number"}], "description": "exact decimal, at most 6 fractional digits"})
        }
        "time" => json!({"type": "string", "format": "date-time"}),
        "nonempty" => json!({"type": "string", "minLength": 1}),
        "account_id" => {
            json!({"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$", "not": {"enum": [".", ".."]}})
        }
        "mode" => json!({"type": "string", "enum": ["strict", "record"]}),
        "proration" => json!({"type": "string", "enum": ["full", "prorated", "none"]}),
        "grant_kind" => json!({"type": "string", "enum": ["promo", "package"]}),
        "endpoint_status" => json!({"type": "string", "enum": ["enabled", "disabled"]}),
        "fail_reason" => {
            json!({"type": "string", "enum": ["payment_failed", "action_required", "no_payment_method"]})
        }
        "ttl_seconds" => json!({"type": "integer", "minimum": 1, "maximum": 86_400}),
        "priority" => json!({"type": "integer", "minimum": 0, "maximum": 1_000}),
        "clock_seconds" => {
            json!({"type": "integer", "minimum": 0, "maximum": 100_i64 * 366 * 86_400})
        }
        "scopes" => {
            json!({"type": "array", "minItems": 1, "items": {"type": "string", "enum": ["admin", "usage", "read"]}})
        }
        "batch_items" => {
            json!({"type": "array", "minItems": 1, "maxItems": 1_000, "items": {"type": "object"}})
        }
        "metadata" => json!({"type": "object", "additionalProperties": {"type": "string"}}),
        "array" => json!({"type": "array", "items": {}}),
        "auto_recharge" => json!({"type": ["object", "null"], "additionalProperties": false,
        "required": ["enabled", "threshold", "package"], "properties": {
            "enabled": {"type": "boolean"},
            "threshold": schema("amount"),
            "package": {"type": "string", "description": "a package of the catalog"},
            "max_per_month": {"type": ["integer", "null"], "minimum": 1, "maximum": 1000},
        }}),
        other => {
            assert!(
                ["string", "integer", "number", "boolean", "object", "array"].contains(&other),
                "{other} is not a JSON Schema type"
            );
            json!({"type": other})
        }
    }
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for (name, ty, doc) in route.fields {
            let name = name.trim_end_matches('*');
            if route
                .fields
                .iter()
                .any(|(n, _, _)| n.trim_end_matches('*') == name && n.ends_with('*'))
            {
                required.push(name);
            }
            let mut property = schema(ty);
            property["description"] = json!(doc);
            properties.insert(name.to_owned(), property);
        }
        let mut operation = json!({
            "summary": route.summary,
            "x-purser-scope": route.scope,
            "responses": {
                route.status.to_string(): if route.returns == "Text" {
                    json!({"description": route.returns, "content": {"text/plain": {"schema": {"type": "string"}}}})
                } else {
                    json!({"description": route.returns, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", route.returns)}}}})
                },
                "4XX": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if route.path.contains('{') {
            operation["parameters"] = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
        }
        if route.method == "post" {
            operation["parameters"] = {
                let mut parameters = operation["parameters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                parameters.push(json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "minLength": 1, "maxLength": 255}}));
                Value::Array(parameters)
            };
            operation["requestBody"] = json!({"required": !required.is_empty(), "content": {"application/json": {"schema": {
                "type": "object", "additionalProperties": false, "properties": properties, "required": required,
            }}}});
        }
        if route.scope != "none" {
            operation["security"] = json!([{"bearer": []}]);
        }
        let entry = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        entry[route.method] = operation;
    }
    let mut schemas = Map::new();
    for name in [
        "Status",
        "Text",
        "Object",
        "Catalog",
        "ApiKey",
        "List",
        "Account",
        "Balance",
        "Debit",
        "UsageSummary",
        "Hold",
        "Grant",
        "Purchase",
        "BatchResults",
        "Transaction",
        "TestClock",
        "PortalSession",
        "Event",
        "WebhookEndpoint",
    ] {
        schemas.insert(name.to_owned(), json!({"type": "object"}));
    }
    schemas.insert(
        "Error".to_owned(),
        json!({"type": "object", "properties": {"error": {"type": "object", "required": ["type", "code", "message"], "properties": {
            "type": {"type": "string", "enum": ["invalid_request", "authentication_error", "insufficient_credits", "member_limit_exceeded", "permission_error", "not_found", "conflict", "idempotency_error", "payload_too_large", "rate_limited", "api_error"]},
            "code": {"type": "string"}, "message": {"type": "string"}, "param": {"type": "string"}}}}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {"title": "purser", "version": env!("CARGO_PKG_VERSION"), "description": "The credits engine for AI products."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    })
}

/// Route templates as the router matches them, for labelling metrics.
pub fn route_paths() -> Vec<&'static str> {
    let mut paths: Vec<&'static str> = ROUTES
        .iter()
        .map(|r| {
            // The four purchase actions are one route in the router.
            if r.path.starts_with("/v1/purchases/{id}/") {
                "/v1/purchases/{id}/{action}"
            } else {
                r.path
            }
        })
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths
}
