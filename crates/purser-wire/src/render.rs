//! Wire output: core values rendered as the JSON objects of API.md, by hand
//! (the core has no serde). Amounts are decimal strings, times RFC 3339.

use std::fmt::Display;

use purser_core::{
    Account, AccountHandle, Allocation, BalanceAfter, Body, Entry, ErrorType, Grant, GrantSource,
    GrantState, Hold, ObjectId, ObjectKind, Pricing, Purchase, Rejection, Timestamp,
};
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Value, json};

use crate::memo::DebitMemo;

/// A value written with its `Display` (amounts, times, ids) as a JSON string.
#[derive(Debug)]
pub struct Text<T>(pub T);

impl<T: Display> Serialize for Text<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// An object's id (`deb_…`, `gr_…`, …).
pub fn object_id(handle: AccountHandle, seq: u64, kind: ObjectKind) -> String {
    ObjectId {
        account: handle,
        seq,
    }
    .format(kind)
}

pub fn account_body(account: &Account, now: Timestamp) -> Vec<u8> {
    serde_json::to_vec(&account_json(account, now)).expect("JSON rendering cannot fail")
}

pub fn account_json(account: &Account, now: Timestamp) -> Value {
    let metadata: serde_json::Map<String, Value> = account
        .metadata()
        .iter()
        .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
        .collect();
    json!({
        "object": "account",
        "id": account.id().as_str(),
        "name": account.name(),
        "tier": account.tier().as_str(),
        "pending_tier": account.pending_tier().map(|t| t.as_str()),
        "anchor": Text(account.anchor()),
        "status": account.status().as_str(),
        "created_at": Text(account.created_at()),
        "member_monthly_cap": account.member_monthly_cap().map(|c| c.to_string()),
        // The account's own; null when its tier's apply (the catalog's).
        "low_balance_thresholds": account
            .low_balance_thresholds()
            .map(|list| list.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "auto_recharge": account.auto_recharge().map(auto_recharge_json),
        "metadata": metadata,
        "balance": BalanceJson::new(account, now),
    })
}

/// An account's auto-recharge: its setting, and the failed payments in a
/// row (three switch it off).
pub fn auto_recharge_json(auto: &purser_core::AutoRecharge) -> Value {
    json!({
        "enabled": auto.config.enabled,
        "threshold": auto.config.threshold.to_string(),
        "package": auto.config.package.as_str(),
        "max_per_month": auto.config.max_per_month,
        "failures": auto.failures,
    })
}

/// The balance object of API.md.
#[derive(Debug, Serialize)]
pub struct BalanceJson<'a> {
    object: &'static str,
    account: &'a str,
    available: Text<purser_core::CreditSum>,
    held: Text<purser_core::CreditSum>,
    debt: Text<purser_core::Credits>,
    budget: BudgetJson,
    rollover: KindJson,
    packages: KindJson,
    promo: KindJson,
    tier: &'a str,
    pending_tier: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct BudgetJson {
    granted: Text<purser_core::CreditSum>,
    used: Text<purser_core::CreditSum>,
    held: Text<purser_core::CreditSum>,
    available: Text<purser_core::CreditSum>,
    period_start: Text<Timestamp>,
    period_end: Text<Timestamp>,
}

#[derive(Debug, Serialize)]
struct KindJson {
    available: Text<purser_core::CreditSum>,
    held: Text<purser_core::CreditSum>,
}

impl<'a> BalanceJson<'a> {
    pub fn new(account: &'a Account, now: Timestamp) -> BalanceJson<'a> {
        BalanceJson::of(
            account.id().as_str(),
            &account.balance(now),
            account.tier().as_str(),
            account.pending_tier().map(|t| t.as_str()),
        )
    }

    fn of(
        account: &'a str,
        balance: &purser_core::Balance,
        tier: &'a str,
        pending_tier: Option<&'a str>,
    ) -> BalanceJson<'a> {
        let kind = |k: purser_core::KindBalance| KindJson {
            available: Text(k.available),
            held: Text(k.held),
        };
        BalanceJson {
            object: "balance",
            account,
            available: Text(balance.available),
            held: Text(balance.held),
            debt: Text(balance.debt),
            budget: BudgetJson {
                granted: Text(balance.budget.granted),
                used: Text(balance.budget.used),
                held: Text(balance.budget.held),
                available: Text(balance.budget.available),
                period_start: Text(balance.budget.period_start),
                period_end: Text(balance.budget.period_end),
            },
            rollover: kind(balance.rollover),
            packages: kind(balance.packages),
            promo: kind(balance.promo),
            tier,
            pending_tier,
        }
    }
}

/// Allocations as `[{"grant", "kind", "credits"}]`.
struct AllocationsJson<'a>(AccountHandle, &'a [Allocation]);

impl Serialize for AllocationsJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.1.iter().map(|a| AllocationJson(self.0, a)))
    }
}

/// One allocation (keys in the order `json!` wrote them: sorted).
struct AllocationJson<'a>(AccountHandle, &'a Allocation);

impl Serialize for AllocationJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry("credits", &Text(self.1.credits))?;
        map.serialize_entry("grant", &object_id(self.0, self.1.grant, ObjectKind::Grant))?;
        map.serialize_entry("kind", self.1.kind.as_str())?;
        map.end()
    }
}

/// A charge: a `debit` entry, or a hold's `capture`.
struct DebitJson<'a> {
    account: &'a str,
    entry: &'a Entry,
    balance: BalanceJson<'a>,
}

impl Serialize for DebitJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let handle = self.entry.account;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("object", "debit")?;
        map.serialize_entry("id", &object_id(handle, self.entry.seq, ObjectKind::Debit))?;
        map.serialize_entry("account", self.account)?;
        let (credits, pricing, member, mode, debt) = match &self.entry.body {
            Body::Debited(d) => (d.credits, &d.pricing, &d.member, d.mode, d.debt_incurred),
            Body::Captured(c) => (c.credits, &c.pricing, &c.member, c.mode, c.debt_incurred),
            _ => unreachable!("a debit is a debit or a capture"),
        };
        serialize_pricing(&mut map, pricing.as_ref())?;
        map.serialize_entry("credits", &Text(credits))?;
        map.serialize_entry("member", &member.as_ref().map(|m| m.as_str()))?;
        map.serialize_entry("mode", mode.as_str())?;
        match &self.entry.body {
            Body::Debited(d) => {
                map.serialize_entry("allocations", &AllocationsJson(handle, &d.allocations))?;
                map.serialize_entry("hold", &Option::<String>::None)?;
                let metadata: serde_json::Map<String, Value> = d
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.to_owned(), Value::String(v.to_owned())))
                    .collect();
                map.serialize_entry("metadata", &metadata)?;
            }
            Body::Captured(c) => {
                let all: Vec<Allocation> = c.allocations();
                map.serialize_entry("allocations", &AllocationsJson(handle, &all))?;
                map.serialize_entry("hold", &object_id(handle, c.hold, ObjectKind::Hold))?;
                map.serialize_entry("metadata", &json!({}))?;
            }
            _ => {}
        }
        map.serialize_entry("debt_incurred", &Text(debt))?;
        map.serialize_entry("created_at", &Text(self.entry.at))?;
        map.serialize_entry("balance", &self.balance)?;
        map.end()
    }
}

fn serialize_pricing<M: SerializeMap>(
    map: &mut M,
    pricing: Option<&Pricing>,
) -> Result<(), M::Error> {
    map.serialize_entry("task", &pricing.map(|p| p.task.as_str()))?;
    map.serialize_entry(
        "quantity",
        &pricing.and_then(|p| p.quantity).map(|q| q.to_string()),
    )?;
    map.serialize_entry("rate", &pricing.map(|p| p.rate.to_string()))?;
    Ok(())
}

pub fn debit_body(account: &Account, entry: &Entry, now: Timestamp) -> Vec<u8> {
    serde_json::to_vec(&DebitJson {
        account: account.id().as_str(),
        entry,
        balance: BalanceJson::new(account, now),
    })
    .expect("JSON rendering cannot fail")
}

/// What [`debit_body`] needs besides the entry, to remember for the charge's
/// idempotency key.
pub fn debit_memo(account: &Account, entry: &Entry, now: Timestamp) -> DebitMemo {
    DebitMemo {
        account: entry.account,
        seq: entry.seq,
        id: account.id().as_str().to_owned(),
        tier: account.tier().as_str().to_owned(),
        pending_tier: account.pending_tier().map(|t| t.as_str().to_owned()),
        balance: account.balance(now),
        period_index: Some(account.period_index()),
    }
}

/// The same bytes [`debit_body`] gave, from the memo and the entry read back.
pub fn debit_from_memo(memo: &DebitMemo, entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(&DebitJson {
        account: &memo.id,
        entry,
        balance: BalanceJson::of(
            &memo.id,
            &memo.balance,
            &memo.tier,
            memo.pending_tier.as_deref(),
        ),
    })
    .expect("JSON rendering cannot fail")
}

pub fn hold_json(account: &Account, hold: &Hold, status: &str) -> Value {
    let handle = account.handle();
    json!({
        "object": "hold",
        "id": object_id(handle, hold.seq, ObjectKind::Hold),
        "account": account.id().as_str(),
        "credits": hold.credits.to_string(),
        "status": status,
        "task": hold.pricing.as_ref().map(|p| p.task.as_str()),
        "quantity": hold.pricing.as_ref().and_then(|p| p.quantity).map(|q| q.to_string()),
        "rate": hold.pricing.as_ref().map(|p| p.rate.to_string()),
        "member": hold.member.as_ref().map(|m| m.as_str()),
        "allocations": AllocationsJson(handle, &hold.allocations),
        "created_at": Text(hold.created_at),
        "expires_at": Text(hold.expires_at),
        "metadata": hold.metadata.iter().map(|(k, v)| (k.to_owned(), Value::String(v.to_owned()))).collect::<serde_json::Map<_, _>>(),
    })
}

fn grant_status(grant: &Grant, now: Timestamp) -> &'static str {
    if grant.state == GrantState::Voided {
        "voided"
    } else if grant.expires_at <= now {
        "expired"
    } else if grant.remaining.is_zero() {
        "exhausted"
    } else {
        "active"
    }
}

pub fn grant_json(account: &Account, grant: &Grant, now: Timestamp) -> Value {
    grant_json_of(account.handle(), account.id().as_str(), grant, now)
}

/// A grant of the account `handle` whose id is `account` (one read back
/// from the store: the account is not at hand).
pub fn grant_json_of(handle: AccountHandle, account: &str, grant: &Grant, now: Timestamp) -> Value {
    let source = match &grant.source {
        GrantSource::Period { tier, index } => {
            json!({"type": "period", "tier": tier.as_str(), "period": index})
        }
        GrantSource::Rollover { index } => json!({"type": "rollover", "period": index}),
        GrantSource::Purchase { purchase } => {
            json!({"type": "purchase", "purchase": object_id(handle, *purchase, ObjectKind::Purchase)})
        }
        GrantSource::Operator { reason } => json!({"type": "operator", "reason": &**reason}),
        GrantSource::Reversal { debit } => {
            json!({"type": "reversal", "debit": object_id(handle, *debit, ObjectKind::Debit)})
        }
    };
    json!({
        "object": "grant",
        "id": object_id(handle, grant.seq, ObjectKind::Grant),
        "account": account,
        "kind": grant.kind.as_str(),
        "status": grant_status(grant, now),
        "amount": grant.amount.to_string(),
        "remaining": grant.remaining.to_string(),
        "held": grant.held.to_string(),
        "available": if grant.is_active(now) { grant.free().to_string() } else { "0".to_string() },
        "priority": grant.priority,
        "effective_at": Text(grant.effective_at),
        "expires_at": grant.expires().map(|t| t.to_string()),
        "source": source,
    })
}

pub fn purchase_json(account: &Account, purchase: &Purchase) -> Value {
    purchase_json_of(account.handle(), account.id().as_str(), purchase)
}

/// A purchase of the account `handle` whose id is `account` (one read back
/// from the store: the account is not at hand).
pub fn purchase_json_of(handle: AccountHandle, account: &str, purchase: &Purchase) -> Value {
    let mut value = json!({
        "object": "purchase",
        "id": object_id(handle, purchase.seq, ObjectKind::Purchase),
        "account": account,
        "package": purchase.package.as_str(),
        "credits": purchase.credits.to_string(),
        "price": purchase.price.to_string(),
        "status": purchase.status.as_str(),
        "grant": purchase.grant.map(|g| object_id(handle, g, ObjectKind::Grant)),
        "created_at": Text(purchase.created_at),
        "updated_at": Text(purchase.updated_at),
        "checkout_url": Value::Null,
        "auto_recharge": purchase.auto_recharge,
    });
    // Partial refunds (minor units of the payment, as the provider counts).
    if let Some(share) = purchase.partly_refunded {
        value["amount_refunded"] = json!(share.refunded);
        value["amount_paid"] = json!(share.paid);
    }
    value
}

fn balance_after_json(balance: &BalanceAfter) -> Value {
    json!({
        "available": balance.available.to_string(),
        "held": balance.held.to_string(),
        "debt": balance.debt.to_string(),
    })
}

/// A journal entry as a transaction; `account` is the account's id.
pub fn transaction_json(account: &str, entry: &Entry) -> Value {
    let handle = entry.account;
    let allocations: Vec<Allocation> = match &entry.body {
        Body::Debited(d) => d.allocations.clone(),
        Body::Captured(c) => c.allocations(),
        Body::Held(h) => h.allocations.clone(),
        Body::Released(r) => r.allocations.clone(),
        Body::Expired(a) => vec![*a],
        Body::Voided { allocation, .. } => vec![*allocation],
        Body::Reversed(r) => r.returned.clone(),
        Body::DebtPaid(allocations) => allocations.clone(),
        Body::RolledOver { from, .. } => from.clone(),
        Body::Granted(g) => vec![Allocation {
            grant: g.seq,
            kind: g.kind,
            credits: g.amount,
        }],
        _ => Vec::new(),
    };
    let mut value = json!({
        "object": "transaction",
        "id": object_id(handle, entry.seq, ObjectKind::Transaction),
        "account": account,
        "type": entry.body.type_name(),
        "credits": entry.body.signed_credits().to_string(),
        "allocations": AllocationsJson(handle, &allocations),
        "created_at": Text(entry.at),
        "balance_after": balance_after_json(&entry.balance_after),
    });
    let extra = match &entry.body {
        Body::Debited(d) => json!({
            "debit": object_id(handle, entry.seq, ObjectKind::Debit),
            "task": d.pricing.as_ref().map(|p| p.task.as_str()),
            "quantity": d.pricing.as_ref().and_then(|p| p.quantity).map(|q| q.to_string()),
            "member": d.member.as_ref().map(|m| m.as_str()),
            "debt_incurred": d.debt_incurred.to_string(),
        }),
        Body::Captured(c) => json!({
            "debit": object_id(handle, entry.seq, ObjectKind::Debit),
            "hold": object_id(handle, c.hold, ObjectKind::Hold),
            "task": c.pricing.as_ref().map(|p| p.task.as_str()),
            "quantity": c.pricing.as_ref().and_then(|p| p.quantity).map(|q| q.to_string()),
            "member": c.member.as_ref().map(|m| m.as_str()),
            "debt_incurred": c.debt_incurred.to_string(),
        }),
        Body::Held(h) => {
            json!({"hold": object_id(handle, h.seq, ObjectKind::Hold), "held": h.credits.to_string()})
        }
        Body::Released(r) => json!({"hold": object_id(handle, r.hold, ObjectKind::Hold)}),
        Body::Reversed(r) => json!({
            "debit": object_id(handle, r.debit, ObjectKind::Debit),
            "reversed": r.credits.to_string(),
            "forfeited": AllocationsJson(handle, &r.forfeited),
            "debt_canceled": r.debt_canceled.to_string(),
            "debt_refunded": r.debt_refunded.to_string(),
        }),
        Body::Granted(g) => {
            json!({"grant": object_id(handle, g.seq, ObjectKind::Grant), "kind": g.kind.as_str()})
        }
        Body::TierChanged(c) => {
            json!({"from": c.from.as_str(), "to": c.to.as_str(), "budget_increase": c.budget_increase.to_string()})
        }
        Body::TierScheduled(t) => json!({"pending_tier": t.as_ref().map(|t| t.as_str())}),
        Body::PurchaseCreated(p) => {
            json!({"purchase": object_id(handle, p.seq, ObjectKind::Purchase), "package": p.package.as_str()})
        }
        Body::PurchaseUpdated { purchase, status } => {
            json!({"purchase": object_id(handle, *purchase, ObjectKind::Purchase), "status": status.as_str()})
        }
        Body::AutoRecharge { purchase, outcome } => json!({
            "purchase": purchase.map(|p| object_id(handle, p, ObjectKind::Purchase)),
            "reason": match outcome {
                purser_core::RechargeOutcome::Succeeded => None,
                purser_core::RechargeOutcome::Failed(reason) => Some(reason.as_str()),
            },
        }),
        Body::PurchasePartlyRefunded { purchase, share } => {
            json!({"purchase": object_id(handle, *purchase, ObjectKind::Purchase), "status": "completed", "amount_refunded": share.refunded, "amount_paid": share.paid})
        }
        _ => json!({}),
    };
    if let (Value::Object(base), Value::Object(extra)) = (&mut value, extra) {
        base.extend(extra);
    }
    // Who caused it (null for entries written before actors were kept).
    value["actor"] = entry.actor.as_ref().map_or(
        Value::Null,
        |actor| json!({"type": actor.kind(), "id": actor.id()}),
    );
    value
}

/// A refusal: its status and the error object of API.md.
pub fn rejection(rejection: &Rejection) -> (u16, Vec<u8>) {
    let (status, kind) = match rejection.error_type() {
        ErrorType::InvalidRequest => (400, "invalid_request"),
        ErrorType::InsufficientCredits => (402, "insufficient_credits"),
        ErrorType::MemberLimitExceeded => (402, "member_limit_exceeded"),
        ErrorType::NotFound => (404, "not_found"),
        ErrorType::Conflict => (409, "conflict"),
    };
    let mut error =
        json!({"type": kind, "code": rejection.code(), "message": rejection.to_string()});
    if let Some(param) = rejection.param() {
        error["param"] = json!(param);
    }
    match rejection {
        Rejection::InsufficientCredits {
            available,
            required,
        } => {
            error["available"] = json!(available.to_string());
            error["required"] = json!(required.to_string());
        }
        Rejection::MemberLimitExceeded {
            member,
            cap,
            used,
            required,
        } => {
            error["member"] = json!(member.as_str());
            error["cap"] = json!(cap.to_string());
            error["used"] = json!(used.to_string());
            error["required"] = json!(required.to_string());
        }
        Rejection::ReversalTooLarge { reversible } => {
            error["reversible"] = json!(reversible.to_string())
        }
        Rejection::PurchaseNotAllowed { status } => error["status"] = json!(status.as_str()),
        _ => {}
    }
    (status, to_json(&json!({"error": error})))
}

/// A value's JSON.
pub fn to_json(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("JSON rendering cannot fail")
}
