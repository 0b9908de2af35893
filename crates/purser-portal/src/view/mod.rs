//! The portal's HTML (maud: escaped by construction). Amounts are shown
//! with thousands separators and carry their exact API string in
//! `data-value`; `data-testid` marks what the browser tests read.

use std::fmt::Write as _;

use maud::{DOCTYPE, Markup, html};
use purser_core::{Catalog, Timestamp};
use serde_json::Value;

use super::chart;
use super::forecast::Forecast;
use super::format;
use crate::pages::{micros, time};

mod billing;
mod csv;

pub use billing::{Billing, billing};
pub use csv::{CSV_HEADER, csv_row};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    Credits,
    Billing,
}

/// What every page shares.
#[derive(Debug)]
pub struct Frame<'a> {
    pub token: &'a str,
    pub account_id: String,
    pub account_name: String,
    pub tier_name: String,
    pub closed: bool,
    pub return_url: Option<&'a str>,
    pub expires_at: Timestamp,
    pub tab: Tab,
    pub notice: Option<&'static str>,
    pub error: Option<&'static str>,
    pub csrf: String,
    /// Idempotency nonce of this rendering's forms.
    pub form_nonce: String,
}

impl Frame<'_> {
    fn href(&self, page: &str) -> String {
        if page.is_empty() {
            format!("/portal/{}", self.token)
        } else {
            format!("/portal/{}/{page}", self.token)
        }
    }

    /// The hidden fields every form carries.
    fn form_fields(&self) -> Markup {
        html! {
            input type="hidden" name="csrf" value=(self.csrf);
            input type="hidden" name="nonce" value=(self.form_nonce);
        }
    }
}

/// The text of a `?notice=` code (a fixed set: nothing from the URL is echoed).
pub fn notice(code: &str) -> Option<&'static str> {
    Some(match code {
        "tier_changed" => "Your plan has changed. This period's budget is updated.",
        "tier_unchanged" => "Your plan is unchanged.",
        "downgrade_scheduled" => {
            "Your downgrade is scheduled for the start of the next period. You keep your current plan until then."
        }
        "downgrade_canceled" => {
            "The scheduled downgrade is canceled. You stay on your current plan."
        }
        "purchase_completed" => "Payment received: the package credits are in your account.",
        "purchase_pending" => {
            "Your purchase is pending until the payment is confirmed. The credits are added as soon as it is."
        }
        "purchase_canceled" => "The purchase is canceled.",
        "tier_change_requested" => {
            "Your plan change is on its way: it applies as soon as the payment provider confirms it."
        }
        "subscription_started" => {
            "Thank you: your subscription is being confirmed. Your new plan applies as soon as it is."
        }
        "subscription_not_started" => "The subscription was not started. Your plan is unchanged.",
        "subscription_ending" => {
            "Your subscription ends at the end of its billing period. You then move to the free plan."
        }
        "recharge_on" => "Auto-recharge is on.",
        "recharge_off" => "Auto-recharge is off.",
        "payment_received" => {
            "Thank you: your payment is being confirmed. The credits appear here as soon as it is."
        }
        "payment_canceled" => {
            "The payment was not completed. Your purchase waits below: pay for it or cancel it."
        }
        _ => return None,
    })
}

/// The text of a `?error=` code.
pub fn error_text(code: &str) -> &'static str {
    match code {
        "account_closed" => "This account is closed: its plan and purchases cannot change.",
        "unknown_tier" => "That plan is not offered.",
        "tier_change_unavailable" => {
            "We could not reach the payment provider. Your plan is unchanged: please try again in a moment."
        }
        "tier_not_billed" => {
            "That plan is not sold by subscription: end your subscription (the free plan) or ask your account manager."
        }
        "tier_changes_disabled" => "Plans are changed by your account manager, not here.",
        "unknown_package" => "That package is not offered.",
        "invalid_threshold" => {
            "Enter the balance as a positive number of credits, like 100 or 12.5."
        }
        "purchase_status_conflict" => "That purchase can no longer be changed.",
        "purchase_not_found" => "There is no such purchase on this account.",
        "idempotency_key_in_use" | "idempotency_key_reused" => {
            "That form was already sent. Reload the page to see the result."
        }
        "rate_limited" | "unavailable" => "We are busy right now. Please try again in a moment.",
        "payment_in_progress" => {
            "That purchase is being paid, so it can no longer be canceled. Reload the page in a moment."
        }
        "payment_provider_unavailable" | "payment_provider_error" => {
            "We could not reach the payment page. Your purchase waits below: please try again in a moment."
        }
        _ => "That did not work. Please try again.",
    }
}

fn page(frame: &Frame<'_>, title: &str, content: Markup) -> Markup {
    let tab = |tab: Tab, page: &str, label: &str, test_id: &str| {
        html! {
            a href=(frame.href(page)) data-testid=(test_id)
                aria-current=[(frame.tab == tab).then_some("page")] { (label) }
        }
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex, nofollow";
                title { (title) " · " (frame.account_name) }
                link rel="stylesheet" href="/portal/assets/portal.css";
                script src="/portal/assets/portal.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    div.wrap.bar {
                        div.brand {
                            span.logo aria-hidden="true" { "◆" }
                            span.account { (frame.account_name) }
                            span.pill data-testid="tier-name" { (frame.tier_name) }
                        }
                        nav.tabs aria-label="Portal" {
                            (tab(Tab::Credits, "", "Credits", "nav-credits"))
                            (tab(Tab::Billing, "billing", "Billing", "nav-billing"))
                        }
                        @if let Some(url) = frame.return_url {
                            a.back href=(url) { "← Back to the app" }
                        }
                    }
                }
                main #main .wrap {
                    @if frame.closed {
                        p.banner.warn role="status" { "This account is closed. Its history stays available here." }
                    }
                    @if let Some(text) = frame.notice {
                        p.banner.ok role="status" data-testid="notice" { (text) }
                    }
                    @if let Some(text) = frame.error {
                        p.banner.error role="alert" data-testid="error" { (text) }
                    }
                    (content)
                }
                footer.wrap.foot {
                    "This link is private to " (frame.account_id) " and works until "
                    time datetime=(frame.expires_at.to_string()) { (format::date_time(frame.expires_at)) }
                    "."
                }
            }
        }
    }
}

/// An amount: exact API string in `data-value`, readable text inside.
fn amount(test_id: &str, text: &str) -> Markup {
    html! {
        span.num data-testid=(test_id) data-value=(text) { (format::group(text)) }
    }
}

/// A time from the API's JSON, as a `<time>` with the date and time.
fn when(value: &Value) -> Markup {
    html! {
        @if let Some(at) = time(value) {
            time datetime=(at.to_string()) { (format::date_time(at)) }
        }
    }
}

fn amount_of(value: &Value) -> &str {
    value.as_str().unwrap_or("0")
}

/// A horizontal meter drawn as SVG (no inline style under the CSP).
fn meter(label: &str, part: i128, whole: i128) -> Markup {
    let filled = if whole <= 0 {
        0
    } else {
        (part.clamp(0, whole) * 10_000 / whole) as i64
    };
    let percent = format!("{}.{:02}%", filled / 100, filled % 100);
    html! {
        svg.meter width="100%" height="10" role="progressbar" aria-label=(label)
            aria-valuemin="0" aria-valuemax="100" aria-valuenow=(filled / 100) {
            rect.track x="0" y="0" width="100%" height="10" rx="5" {}
            @if filled > 0 {
                rect class=(if filled >= 9_000 { "fill high" } else { "fill" }) x="0" y="0" width=(percent) height="10" rx="5" {}
            }
        }
    }
}

/// The data behind a chart, for screen readers and anyone who wants numbers.
fn chart_table(caption: &str, rows: &[(String, i128)]) -> Markup {
    html! {
        details.data {
            summary { "Show as a table" }
            table {
                caption.sr { (caption) }
                thead { tr { th scope="col" { "Name" } th.r scope="col" { "Credits" } } }
                tbody {
                    @for (label, value) in rows {
                        tr { td { (label) } td.r { (format::credits(*value)) } }
                    }
                }
            }
        }
    }
}

/// The credits page's inputs.
#[derive(Debug)]
pub struct Credits<'a> {
    pub frame: Frame<'a>,
    pub catalog: &'a Catalog,
    pub account: &'a Value,
    pub now: Timestamp,
    pub by_task: Vec<(String, i128)>,
    /// `None` when no usage names a member.
    pub by_member: Option<Vec<(String, i128)>>,
    pub days: Vec<chart::Day>,
    pub present: [bool; 5],
    pub forecast: Forecast,
    /// Low-balance thresholds crossed this period: when, and the threshold.
    pub alerts: Vec<(Timestamp, String)>,
    pub transactions: Vec<Value>,
    /// The cursor of the next (older) page.
    pub older: Option<String>,
    /// Whether this is not the first page.
    pub paged: bool,
}

fn forecast_text(forecast: &Forecast, period_end: Timestamp) -> String {
    let per_day = |micros: i128| format!("about {} credits a day", format::credits_short(micros));
    match forecast {
        Forecast::InDebt => "Your account owes credits: the next credits you get pay that first. Buy a package to keep going now.".into(),
        Forecast::NotEnoughHistory => "Not enough usage yet to forecast. Check back after a few hours of use.".into(),
        Forecast::Idle => "No credits spent in the last 7 days: at this pace your credits last indefinitely.".into(),
        Forecast::LastsUntilRenewal { per_day: rate } => format!(
            "At your current pace ({}), your budget lasts until it renews on {}.",
            per_day(*rate),
            format::date(period_end)
        ),
        Forecast::RunsOut { per_day: rate, at, backup_days, backup_available } => {
            let first = format!(
                "At your current pace ({}), your budget runs out on {}",
                per_day(*rate),
                format::date(*at)
            );
            match backup_days {
                _ if *backup_available <= 0 => format!(
                    "{first}, before it renews on {}. Buy a package so your work doesn't stop.",
                    format::date(period_end)
                ),
                Some(days) => format!(
                    "{first}; then your package credits cover about {days} {} more.",
                    if *days == 1 { "day" } else { "days" }
                ),
                None => format!(
                    "{first}; then your package credits cover you until the budget renews on {}.",
                    format::date(period_end)
                ),
            }
        }
    }
}

pub fn credits(view: &Credits<'_>) -> Markup {
    let balance = &view.account["balance"];
    let budget = &balance["budget"];
    let period_start = time(&budget["period_start"]).unwrap_or(view.now);
    let period_end = time(&budget["period_end"]).unwrap_or(view.now);
    let (used, granted) = (micros(&budget["used"]), micros(&budget["granted"]));
    let held = micros(&balance["held"]);
    let debt = micros(&balance["debt"]);
    let others: Vec<(&str, &Value)> = [
        ("Rollover", &balance["rollover"]["available"]),
        ("Promo", &balance["promo"]["available"]),
    ]
    .into_iter()
    .filter(|(_, v)| micros(v) != 0)
    .collect();
    let frame = &view.frame;
    let content = html! {
        div.heading {
            h1 { "Credits" }
            p.sub {
                "Current period: " (format::date(period_start)) " – " (format::date(period_end))
            }
        }
        section.cards aria-label="Balance" {
            article.card.hero {
                h2 { "Available now" }
                p.big { (amount("available", amount_of(&balance["available"]))) " " span.unit { "credits" } }
                p.muted {
                    "Budget " (amount("budget-available", amount_of(&budget["available"])))
                    " · Packages " (format::group(amount_of(&balance["packages"]["available"])))
                    @for (label, value) in &others {
                        " · " (label) " " (format::group(amount_of(value)))
                    }
                }
            }
            article.card {
                h2 { "Monthly budget" }
                p.big {
                    (amount("budget-used", amount_of(&budget["used"])))
                    span.unit { " of " (amount("budget-granted", amount_of(&budget["granted"]))) " used" }
                }
                (meter("Budget used", used, granted))
                p.muted {
                    "Renews "
                    time data-testid="renews-at" datetime=(period_end.to_string()) { (format::date(period_end)) }
                    " · in " (format::duration(period_end.micros_since(view.now)))
                }
            }
            article.card {
                h2 { "Package credits" }
                p.big { (amount("packages-available", amount_of(&balance["packages"]["available"]))) " " span.unit { "credits" } }
                p.muted { "Never expire. Used once the budget is spent. " a href=(frame.href("billing")) { "Buy more" } }
            }
            article.card {
                h2 { "Held and debt" }
                p.pair {
                    span { "Held " (amount("held", amount_of(&balance["held"]))) }
                    span { "Debt " (amount("debt", amount_of(&balance["debt"]))) }
                }
                p.muted {
                    @if held > 0 {
                        "Held credits are reserved for tasks still running; what a task does not use comes back. "
                    }
                    @if debt > 0 {
                        "Debt is usage recorded beyond your credits; the next credits you get pay it first."
                    } @else if held == 0 {
                        "Nothing is reserved and nothing is owed."
                    }
                }
            }
        }
        section.panel.forecast aria-labelledby="forecast-title" {
            h2 #forecast-title { "Forecast" }
            p data-testid="forecast" { (forecast_text(&view.forecast, period_end)) }
        }
        @if !view.alerts.is_empty() {
            section.panel aria-labelledby="alerts-title" data-testid="alerts" {
                h2 #alerts-title { "Low-balance alerts this period" }
                ul {
                    @for (at, threshold) in &view.alerts {
                        li {
                            "Available credits fell below "
                            strong { (format::group(threshold)) }
                            " on "
                            time datetime=(at.to_string()) { (format::date(*at)) }
                            "."
                        }
                    }
                }
            }
        }
        section aria-labelledby="usage-title" {
            h2 #usage-title .section { "Usage this period" }
            div.grid2 {
                article.panel {
                    h3 { "By AI task" }
                    @if view.by_task.is_empty() {
                        p.empty { "No usage yet this period." }
                    } @else {
                        (chart::bars("chart-by-task", "Credits by AI task", &view.by_task))
                        (chart_table("Credits by AI task", &view.by_task))
                    }
                }
                article.panel {
                    h3 { "By member" }
                    @match &view.by_member {
                        Some(rows) => {
                            (chart::bars("chart-by-member", "Credits by member", rows))
                            (chart_table("Credits by member", rows))
                        }
                        None => p.empty { "No usage in this period names a member." },
                    }
                }
            }
            article.panel {
                h3 { "By day and source" }
                (chart::stacked_days("chart-by-day", "Credits by day, stacked by source", &view.days))
                (chart::legend(&view.present))
            }
        }
        section aria-labelledby="tx-title" {
            div.heading.row {
                h2 #tx-title .section { "Transactions" }
                a.button.ghost href=(frame.href("transactions.csv")) data-testid="export-csv" download { "Export CSV" }
            }
            div.scroll {
                table.tx data-testid="transactions" {
                    thead {
                        tr {
                            th scope="col" { "Date" }
                            th scope="col" { "What" }
                            th.details scope="col" { "Details" }
                            th.r scope="col" { "Credits" }
                            th.r.after scope="col" { "Available after" }
                        }
                    }
                    tbody {
                        @for tx in &view.transactions {
                            @let (what, details) = describe(tx, view.catalog);
                            @let credits = amount_of(&tx["credits"]);
                            tr {
                                td.nowrap { (when(&tx["created_at"])) }
                                td { (what) }
                                td.details { (details) }
                                td class=(signed_class(credits)) { (signed(credits)) }
                                td.r.num.after { (format::group(amount_of(&tx["balance_after"]["available"]))) }
                            }
                        }
                    }
                }
            }
            @if view.transactions.is_empty() {
                p.empty { "No transactions yet." }
            }
            nav.pager aria-label="Transaction pages" {
                @if view.paged {
                    a href=(frame.href("")) { "← Newest" }
                }
                @if let Some(older) = &view.older {
                    a href=(format!("{}?after={older}", frame.href(""))) { "Older →" }
                }
            }
        }
    };
    page(frame, "Credits", content)
}

fn signed(text: &str) -> String {
    match text.strip_prefix('-') {
        Some(rest) => format!("−{}", format::group(rest)),
        None if text == "0" => "0".into(),
        None => format!("+{}", format::group(text)),
    }
}

fn signed_class(text: &str) -> &'static str {
    if text.starts_with('-') {
        "r num neg"
    } else if text != "0" {
        "r num pos"
    } else {
        "r num"
    }
}

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "budget" => "Monthly budget",
        "rollover" => "Rollover",
        "package" => "Package",
        "promo" => "Promo",
        _ => "Credits",
    }
}

/// A transaction's type and details, in words.
fn describe(tx: &Value, catalog: &Catalog) -> (&'static str, String) {
    let text = |name: &str| tx[name].as_str().unwrap_or("").to_owned();
    let task = || {
        let id = text("task");
        let task = catalog.task(&id);
        let mut details = task.map_or_else(|| id.replace('_', " "), |t| t.name.clone());
        if let Some(quantity) = tx["quantity"].as_str() {
            let unit = task.map_or("", |t| t.unit.as_str());
            let plural = if quantity == "1" || unit.is_empty() || unit.ends_with('s') {
                ""
            } else {
                "s"
            };
            let _ = write!(details, " · {} {unit}{plural}", format::group(quantity));
        }
        if let Some(member) = tx["member"].as_str() {
            let _ = write!(details, " · {member}");
        }
        details
    };
    let tier_name = |id: &str| {
        catalog
            .tier(id)
            .map_or_else(|| id.to_owned(), |t| t.name.clone())
    };
    match tx["type"].as_str().unwrap_or("") {
        "grant" => ("Credits added", kind_name(&text("kind")).to_owned()),
        "debit" => ("Charge", task()),
        "hold" => ("Hold", "Reserved for a running task".into()),
        "capture" => ("Charge", format!("{} (from a hold)", task())),
        "release" => ("Hold released", "Unused credits returned".into()),
        "hold_expired" => ("Hold expired", "Reserved credits returned".into()),
        "expire" => (
            "Expired",
            "Unused credits at the end of their period".into(),
        ),
        "void" => ("Voided", "Credits withdrawn".into()),
        "reversal" => ("Refunded charge", "Credits returned for a charge".into()),
        "debt_paid" => ("Debt paid", "From newly added credits".into()),
        "rollover" => (
            "Rolled over",
            "Unused budget carried into this period".into(),
        ),
        "tier_changed" => (
            "Plan changed",
            format!("{} → {}", tier_name(&text("from")), tier_name(&text("to"))),
        ),
        "tier_scheduled" => match tx["pending_tier"].as_str() {
            Some(tier) => (
                "Downgrade scheduled",
                format!("To {} at the next period", tier_name(tier)),
            ),
            None => ("Downgrade canceled", String::new()),
        },
        "purchase_created" => (
            "Purchase started",
            catalog
                .package(&text("package"))
                .map_or_else(|| text("package"), |p| p.name.clone()),
        ),
        "purchase_completed" => ("Purchase completed", String::new()),
        "purchase_failed" => ("Purchase failed", String::new()),
        "purchase_canceled" => ("Purchase canceled", String::new()),
        "purchase_refunded" => ("Purchase refunded", String::new()),
        "account_created" => ("Account opened", String::new()),
        "account_updated" => ("Account updated", String::new()),
        "account_closed" => ("Account closed", String::new()),
        _ => ("Other", String::new()),
    }
}

/// A page with a message and nothing to act on (bad or expired links).
pub fn problem(title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="robots" content="noindex, nofollow";
                title { (title) }
                link rel="stylesheet" href="/portal/assets/portal.css";
            }
            body {
                main.wrap.problem {
                    div.card {
                        h1 { (title) }
                        p { (message) }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_come_from_a_fixed_set() {
        assert!(notice("tier_changed").is_some());
        assert!(notice("<script>").is_none());
        assert_eq!(error_text("<script>"), error_text("failed"));
    }
}
