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
        _ => return None,
    })
}

/// The text of a `?error=` code.
pub fn error_text(code: &str) -> &'static str {
    match code {
        "account_closed" => "This account is closed: its plan and purchases cannot change.",
        "unknown_tier" => "That plan is not offered.",
        "unknown_package" => "That package is not offered.",
        "purchase_status_conflict" => "That purchase can no longer be changed.",
        "purchase_not_found" => "There is no such purchase on this account.",
        "idempotency_key_in_use" | "idempotency_key_reused" => {
            "That form was already sent. Reload the page to see the result."
        }
        "rate_limited" | "unavailable" => "We are busy right now. Please try again in a moment.",
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

/// The billing page's inputs.
#[derive(Debug)]
pub struct Billing<'a> {
    pub frame: Frame<'a>,
    pub account: &'a Value,
    pub catalog: &'a Catalog,
    pub purchases: Vec<Value>,
    pub provider: &'static str,
    pub now: Timestamp,
}

pub fn billing(view: &Billing<'_>) -> Markup {
    let frame = &view.frame;
    let account = view.account;
    let current = account["tier"].as_str().unwrap_or("");
    let pending = account["pending_tier"].as_str();
    let period_end = time(&account["balance"]["budget"]["period_end"]).unwrap_or(view.now);
    let catalog = view.catalog;
    let currency = catalog.currency();
    let current_credits = catalog
        .tier(current)
        .map(|t| i128::from(t.monthly_credits.micros()));
    let name_of = |id: &str| {
        catalog
            .tier(id)
            .map_or_else(|| id.to_owned(), |t| t.name.clone())
    };
    let can_change = !frame.closed;
    let content = html! {
        div.heading {
            h1 { "Billing" }
            p.sub {
                "You are on the " strong { (frame.tier_name) } " plan. Your budget renews on "
                time datetime=(period_end.to_string()) { (format::date(period_end)) } "."
            }
        }
        @if let Some(tier) = pending {
            div.banner.info data-testid="pending-tier" data-tier=(tier) {
                p {
                    "Your plan changes to " strong { (name_of(tier)) } " on "
                    time datetime=(period_end.to_string()) { (format::date(period_end)) }
                    ". Until then you keep " (frame.tier_name) "."
                }
                @if can_change {
                    form method="post" action=(frame.href("tier")) {
                        (frame.form_fields())
                        input type="hidden" name="tier" value=(current);
                        input type="hidden" name="cancel" value="1";
                        button.button.ghost type="submit" data-testid="cancel-downgrade" { "Keep " (frame.tier_name) }
                    }
                }
            }
        }
        section aria-labelledby="plans-title" {
            h2 #plans-title .section { "Plans" }
            div.plans {
                @for tier in catalog.tiers() {
                    @let id = tier.id.as_str();
                    @let is_current = id == current;
                    @let credits = i128::from(tier.monthly_credits.micros());
                    @let upgrade = current_credits.is_none_or(|c| credits >= c);
                    article.card.plan.current[is_current] data-testid="tier-card" data-tier=(id)
                        data-current=[is_current.then_some("true")] {
                        h3 { (tier.name) }
                        p.price { (format::price(&tier.price.to_string(), currency)) span.unit { " / month" } }
                        ul.features {
                            li { strong { (format::credits(credits)) } " credits every month" }
                            @if tier.rollover_cap.micros() > 0 {
                                li { "Unused budget rolls over, up to " (format::credits(i128::from(tier.rollover_cap.micros()))) }
                            }
                            @if let Some(cap) = tier.member_monthly_cap {
                                li { "Up to " (format::credits(i128::from(cap.micros()))) " per member a month" }
                            }
                        }
                        @if is_current {
                            p.tag { "Current plan" }
                        } @else if pending == Some(id) {
                            p.tag { "Starts " (format::date(period_end)) }
                        } @else if can_change {
                            form method="post" action=(frame.href("tier")) {
                                (frame.form_fields())
                                input type="hidden" name="tier" value=(id);
                                @if upgrade {
                                    button.button type="submit" data-testid="choose-tier" { "Upgrade to " (tier.name) }
                                    p.hint { "Applies now" @if let Some(c) = current_credits { ": +" (format::credits(credits - c)) " credits this period" } "." }
                                } @else {
                                    button.button.ghost type="submit" data-testid="choose-tier" data-confirm=(format!("Downgrade to {} on {}?", tier.name, format::date(period_end))) { "Downgrade to " (tier.name) }
                                    p.hint { "Takes effect on " (format::date(period_end)) ", when your budget renews." }
                                }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="packages-title" {
            h2 #packages-title .section { "Credit packages" }
            p.sub {
                "Package credits never expire and are used once your monthly budget is spent. "
                @if view.provider == "manual" {
                    "A purchase stays pending until your payment is confirmed; the credits are added then."
                } @else if view.provider == "instant" {
                    "Demo payments: purchases complete at once."
                }
            }
            div.plans {
                @for package in catalog.packages() {
                    article.card.plan data-testid="package-card" data-package=(package.id.as_str()) {
                        h3 { (package.name) }
                        p.price { (format::price(&package.price.to_string(), currency)) }
                        @let credits = format::credits(i128::from(package.credits.micros()));
                        ul.features {
                            @if !package.name.contains(&credits) {
                                li { strong { (credits) } " credits" }
                            }
                            li { "Never expire" }
                            li { "Used after your monthly budget" }
                        }
                        @if can_change {
                            form method="post" action=(frame.href("purchases")) {
                                (frame.form_fields())
                                input type="hidden" name="package" value=(package.id.as_str());
                                button.button type="submit" data-testid="buy-package" { "Buy for " (format::price(&package.price.to_string(), currency)) }
                            }
                        }
                    }
                }
            }
        }
        section aria-labelledby="history-title" {
            h2 #history-title .section { "Purchase history" }
            @if view.purchases.is_empty() {
                p.empty { "No purchases yet." }
            } @else {
                div.scroll {
                    table.tx data-testid="purchases" {
                        thead {
                            tr {
                                th scope="col" { "Date" }
                                th scope="col" { "Package" }
                                th.r scope="col" { "Credits" }
                                th.r scope="col" { "Price" }
                                th scope="col" { "Status" }
                                th scope="col" { span.sr { "Actions" } }
                            }
                        }
                        tbody {
                            @for purchase in &view.purchases {
                                @let status = purchase["status"].as_str().unwrap_or("");
                                @let package = purchase["package"].as_str().unwrap_or("");
                                tr {
                                    td.nowrap { (when(&purchase["created_at"])) }
                                    td { (catalog.package(package).map_or(package, |p| p.name.as_str())) }
                                    td.r.num { (format::group(amount_of(&purchase["credits"]))) }
                                    td.r.num { (format::price(amount_of(&purchase["price"]), currency)) }
                                    td { span class=(format!("status {status}")) data-testid="purchase-status" { (status) } }
                                    td {
                                        @if status == "pending" && can_change {
                                            @if let Some(id) = purchase["id"].as_str() {
                                                form method="post" action=(frame.href(&format!("purchases/{id}/cancel"))) {
                                                    (frame.form_fields())
                                                    button.link type="submit" { "Cancel" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(frame, "Billing", content)
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

/// The CSV export's columns.
pub const CSV_HEADER: &str = "id,created_at,type,description,credits,available_after,held_after,debt_after,task,quantity,member,grant_kind,object\r\n";

/// One transaction as a CSV row (RFC 4180 quoting; a text cell that a
/// spreadsheet would read as a formula is prefixed with `'`).
pub fn csv_row(out: &mut String, tx: &Value, catalog: &Catalog) {
    let (what, details) = describe(tx, catalog);
    let text = |name: &str| tx[name].as_str().unwrap_or("").to_owned();
    let object = ["debit", "hold", "grant", "purchase"]
        .iter()
        .find_map(|name| tx[*name].as_str())
        .unwrap_or("")
        .to_owned();
    let description = if details.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {details}")
    };
    let cells = [
        text("id"),
        text("created_at"),
        text("type"),
        description,
        text("credits"),
        tx["balance_after"]["available"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        tx["balance_after"]["held"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        tx["balance_after"]["debt"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        text("task"),
        text("quantity"),
        text("member"),
        text("kind"),
        object,
    ];
    for (index, cell) in cells.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        csv_cell(out, cell, index >= 3 && index != 4);
    }
    out.push_str("\r\n");
}

fn csv_cell(out: &mut String, cell: &str, text: bool) {
    let guarded = text && cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if guarded || cell.contains([',', '"', '\n', '\r']) {
        out.push('"');
        if guarded {
            out.push('\'');
        }
        out.push_str(&cell.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_rows_quote_and_guard() {
        let mut out = String::new();
        let tx = json!({
            "id": "txn_1", "created_at": "2026-11-01T00:00:00Z", "type": "debit",
            "credits": "-1.5", "task": "assistant_message", "quantity": "3",
            "member": "-ann", "debit": "deb_1",
            "balance_after": {"available": "98.5", "held": "0", "debt": "0"},
        });
        csv_row(&mut out, &tx, &Catalog::builtin());
        assert_eq!(
            out,
            "txn_1,2026-11-01T00:00:00Z,debit,Charge: Assistant conversation · 3 messages · -ann,-1.5,98.5,0,0,assistant_message,3,\"'-ann\",,deb_1\r\n"
        );
    }

    #[test]
    fn notices_come_from_a_fixed_set() {
        assert!(notice("tier_changed").is_some());
        assert!(notice("<script>").is_none());
        assert_eq!(error_text("<script>"), error_text("failed"));
    }
}
