//! `purser.toml`: listen address, data directory, database URL, engine
//! limits, idempotency retention and the catalog. Amounts are strings, parsed
//! exactly. `purser config default` prints the built-in file.

use std::fmt::Write;
use std::path::PathBuf;

use purser_core::{Catalog, Credits, Notation, Package, PackageId, Task, TaskId, Tier, TierId};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    shards: Option<usize>,
    partitions: Option<u16>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    idempotency: RawIdempotency,
    #[serde(default)]
    portal: RawPortal,
    #[serde(default)]
    payments: RawPayments,
    #[serde(default)]
    webhooks: RawWebhooks,
    #[serde(default)]
    events: RawEvents,
    catalog: Option<RawCatalog>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    retention_days: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    retry_schedule_seconds: Option<Vec<u64>>,
    timeout_seconds: Option<u64>,
    allow_private_networks: Option<bool>,
    concurrency: Option<usize>,
    disable_after_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPortal {
    public_url: Option<String>,
    session_ttl_seconds: Option<i64>,
    tier_changes: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPayments {
    provider: Option<String>,
    #[serde(default)]
    stripe: RawStripe,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStripe {
    api_base: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    queue_capacity: Option<usize>,
    batch_limit: Option<usize>,
    request_timeout_seconds: Option<u64>,
    snapshot_every_entries: Option<u64>,
    max_connections: Option<usize>,
    header_timeout_seconds: Option<u64>,
    body_timeout_seconds: Option<u64>,
    list_reads_per_second: Option<u32>,
    list_reads_burst: Option<u32>,
    portal_actions_per_minute: Option<u32>,
    portal_actions_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdempotency {
    retention_seconds: Option<i64>,
    purge_interval_seconds: Option<u64>,
    cache_keys: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    currency: String,
    tiers: Vec<RawTier>,
    #[serde(default)]
    packages: Vec<RawPackage>,
    #[serde(default)]
    tasks: Vec<RawTask>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTier {
    id: String,
    name: String,
    monthly_credits: String,
    price: String,
    member_monthly_cap: Option<String>,
    rollover_cap: Option<String>,
    /// Credits; default 20 % of the monthly credits.
    low_balance_thresholds: Option<Vec<String>>,
    /// A recurring Stripe Price (`price_…`): the tier is sold through a
    /// Stripe subscription when `payments.provider = "stripe"`.
    stripe_price: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    id: String,
    name: String,
    credits: String,
    price: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTask {
    id: String,
    name: String,
    unit: String,
    credits_per_unit: String,
    minimum: Option<String>,
}

/// The server's settings, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub shards: usize,
    /// Used when a data directory is created; fixed for its life after that.
    pub partitions: u16,
    pub queue_capacity: usize,
    pub batch_limit: usize,
    pub request_timeout_seconds: u64,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// How long a client has to send a request's headers, and how long a
    /// connection may sit idle between requests, before it is closed.
    pub header_timeout_seconds: u64,
    /// How long a client has to send a request's body (408 past it).
    pub body_timeout_seconds: u64,
    /// Pages of one account's lists served a second (0: unpaced); more
    /// wait their turn, up to half the request timeout, then 429.
    pub list_reads_per_second: u32,
    /// Pages of one account's lists served at once before that pace.
    pub list_reads_burst: u32,
    /// Portal actions (form posts) of one account a minute (0: unpaced);
    /// more wait their turn, up to half the request timeout, then are
    /// refused (`error=rate_limited`).
    pub portal_actions_per_minute: u32,
    /// Portal actions of one account at once before that pace.
    pub portal_actions_burst: u32,
    /// A shard snapshots its partitions after writing this many entries, so
    /// recovery replays at most about that many per shard.
    pub snapshot_every_entries: u64,
    pub idempotency_retention_seconds: i64,
    /// How often expired idempotency records are purged while serving
    /// (from the store and from memory).
    pub idempotency_purge_interval_seconds: u64,
    /// How many recently finished idempotency keys keep their answer in
    /// memory; older ones keep 16 bytes (hash and expiry) and are answered
    /// from the store.
    pub idempotency_cache_keys: usize,
    pub catalog: Catalog,
    pub test_clock: bool,
    /// Start from a store whose journal lost its end (found at start, see
    /// `purser_store::journal`): accept the loss, record it, and serve.
    /// Only from the command line (`serve --accept-loss`), never a file.
    pub accept_loss: bool,
    /// The base of portal links (`https://billing.example.com`); without
    /// it, the `Host` the operator's request came to, over http.
    pub public_url: Option<String>,
    pub portal_session_ttl_seconds: i64,
    /// `portal.tier_changes`: whether customers change their tier in the
    /// portal (false: the plans are shown, without a way to change them).
    pub portal_tier_changes: bool,
    /// `manual`, `instant` or `stripe` (see `payments`).
    pub payment_provider: String,
    /// `payments.stripe.api_base`: Stripe's API, or a stand-in for tests.
    pub stripe_api_base: String,
    pub webhooks: crate::webhooks::Settings,
    /// Events older than this leave the outbox (API.md: at least 30 days).
    pub event_retention_days: i64,
}

/// How long a portal link works by default: one hour.
pub const DEFAULT_PORTAL_SESSION_TTL_SECONDS: i64 = 3_600;

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:8787".into(),
            data_dir: PathBuf::from("./purser-data"),
            database_url: None,
            shards: std::thread::available_parallelism().map_or(2, usize::from),
            partitions: 64,
            queue_capacity: 16_384,
            batch_limit: 2_048,
            request_timeout_seconds: 30,
            max_connections: 4_096,
            header_timeout_seconds: 30,
            body_timeout_seconds: 30,
            list_reads_per_second: 200,
            list_reads_burst: 50,
            portal_actions_per_minute: 60,
            portal_actions_burst: 10,
            snapshot_every_entries: 1_000_000,
            idempotency_retention_seconds:
                purser_core::limits::DEFAULT_IDEMPOTENCY_RETENTION_SECONDS,
            idempotency_purge_interval_seconds: 60,
            idempotency_cache_keys: 100_000,
            catalog: Catalog::builtin(),
            test_clock: false,
            accept_loss: false,
            public_url: None,
            portal_session_ttl_seconds: DEFAULT_PORTAL_SESSION_TTL_SECONDS,
            portal_tier_changes: true,
            payment_provider: "manual".into(),
            stripe_api_base: crate::stripe::DEFAULT_API_BASE.into(),
            webhooks: crate::webhooks::Settings::default(),
            event_retention_days: 30,
        }
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Toml(#[from] toml::de::Error),
    #[error("catalog: {0}")]
    Catalog(String),
    #[error("{0}")]
    Invalid(String),
}

fn amount(field: &str, text: &str) -> Result<Credits, ConfigError> {
    Credits::parse(text, Notation::String)
        .map_err(|e| ConfigError::Catalog(format!("{field} {text:?}: {e}")))
}

fn id<T>(
    kind: &str,
    text: &str,
    parse: fn(&str) -> Result<T, purser_core::IdError>,
) -> Result<T, ConfigError> {
    parse(text).map_err(|e| ConfigError::Catalog(format!("{kind} id {text:?}: {e}")))
}

impl Config {
    /// Reads a TOML configuration; missing settings keep their defaults.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)?;
        let mut config = Config::default();
        if let Some(listen) = raw.listen {
            config.listen = listen;
        }
        if let Some(dir) = raw.data_dir {
            config.data_dir = dir;
        }
        config.database_url = raw.database_url;
        if let Some(shards) = raw.shards {
            if !(1..=256).contains(&shards) {
                return Err(ConfigError::Invalid("shards must be from 1 to 256".into()));
            }
            config.shards = shards;
        }
        if let Some(partitions) = raw.partitions {
            if partitions == 0 {
                return Err(ConfigError::Invalid("partitions must be at least 1".into()));
            }
            config.partitions = partitions;
        }
        if let Some(capacity) = raw.limits.queue_capacity {
            config.queue_capacity = capacity.clamp(1, 1 << 20);
        }
        if let Some(limit) = raw.limits.batch_limit {
            config.batch_limit = limit.clamp(1, 65_536);
        }
        if let Some(every) = raw.limits.snapshot_every_entries {
            config.snapshot_every_entries = every.max(1);
        }
        if let Some(timeout) = raw.limits.request_timeout_seconds {
            config.request_timeout_seconds = timeout.clamp(1, 3_600);
        }
        if let Some(connections) = raw.limits.max_connections {
            config.max_connections = connections.clamp(1, 1 << 20);
        }
        if let Some(timeout) = raw.limits.header_timeout_seconds {
            config.header_timeout_seconds = timeout.clamp(1, 3_600);
        }
        if let Some(timeout) = raw.limits.body_timeout_seconds {
            config.body_timeout_seconds = timeout.clamp(1, 3_600);
        }
        if let Some(rate) = raw.limits.list_reads_per_second {
            config.list_reads_per_second = rate.min(1_000_000);
        }
        if let Some(burst) = raw.limits.list_reads_burst {
            config.list_reads_burst = burst.clamp(1, 1_000_000);
        }
        if let Some(rate) = raw.limits.portal_actions_per_minute {
            config.portal_actions_per_minute = rate.min(60_000_000);
        }
        if let Some(burst) = raw.limits.portal_actions_burst {
            config.portal_actions_burst = burst.clamp(1, 1_000_000);
        }
        if let Some(retention) = raw.idempotency.retention_seconds {
            if retention < 86_400 {
                return Err(ConfigError::Invalid(
                    "idempotency.retention_seconds must be at least 86400 (24 hours)".into(),
                ));
            }
            config.idempotency_retention_seconds = retention;
        }
        if let Some(interval) = raw.idempotency.purge_interval_seconds {
            config.idempotency_purge_interval_seconds = interval.clamp(1, 86_400);
        }
        if let Some(keys) = raw.idempotency.cache_keys {
            config.idempotency_cache_keys = keys.clamp(64, 100_000_000);
        }
        if let Some(days) = raw.events.retention_days {
            if !(30..=36_500).contains(&days) {
                return Err(ConfigError::Invalid(
                    "events.retention_days must be from 30 to 36500".into(),
                ));
            }
            config.event_retention_days = days;
        }
        let hooks = raw.webhooks;
        if let Some(schedule) = hooks.retry_schedule_seconds {
            if schedule.is_empty() || schedule.len() > 20 || schedule.iter().any(|s| *s > 604_800) {
                return Err(ConfigError::Invalid(
                    "webhooks.retry_schedule_seconds must hold 1-20 delays of at most 604800 s"
                        .into(),
                ));
            }
            config.webhooks.retry_schedule = schedule
                .into_iter()
                .map(std::time::Duration::from_secs)
                .collect();
        }
        if let Some(timeout) = hooks.timeout_seconds {
            config.webhooks.timeout = std::time::Duration::from_secs(timeout.clamp(1, 60));
        }
        if let Some(allow) = hooks.allow_private_networks {
            config.webhooks.allow_private_networks = allow;
        }
        if let Some(concurrency) = hooks.concurrency {
            config.webhooks.concurrency = concurrency.clamp(1, 256);
        }
        if let Some(after) = hooks.disable_after_seconds {
            config.webhooks.disable_after = std::time::Duration::from_secs(after.max(1));
        }
        if let Some(url) = raw.portal.public_url {
            config.set_public_url(&url)?;
        }
        if let Some(ttl) = raw.portal.session_ttl_seconds {
            if !(60..=7 * 86_400).contains(&ttl) {
                return Err(ConfigError::Invalid(
                    "portal.session_ttl_seconds must be from 60 to 604800 (7 days)".into(),
                ));
            }
            config.portal_session_ttl_seconds = ttl;
        }
        if let Some(changes) = raw.portal.tier_changes {
            config.portal_tier_changes = changes;
        }
        if let Some(provider) = raw.payments.provider {
            config.set_payment_provider(&provider)?;
        }
        if let Some(base) = raw.payments.stripe.api_base {
            if !purser_portal::session::valid_return_url(&base) {
                return Err(ConfigError::Invalid(format!(
                    "payments.stripe.api_base {base:?} must be an absolute http or https URL"
                )));
            }
            config.stripe_api_base = base.trim_end_matches('/').to_owned();
        }
        if let Some(catalog) = raw.catalog {
            config.catalog = catalog_from(catalog)?;
        }
        check_stripe_prices(&config.catalog)?;
        Ok(config)
    }

    /// Sets `portal.public_url`: an absolute http(s) URL, kept without a
    /// trailing slash.
    pub fn set_public_url(&mut self, url: &str) -> Result<(), ConfigError> {
        if !purser_portal::session::valid_return_url(url) {
            return Err(ConfigError::Invalid(format!(
                "portal.public_url {url:?} must be an absolute http or https URL"
            )));
        }
        self.public_url = Some(url.trim_end_matches('/').to_owned());
        Ok(())
    }

    /// Sets `payments.provider`.
    pub fn set_payment_provider(&mut self, name: &str) -> Result<(), ConfigError> {
        if !purser_portal::payments::PROVIDERS.contains(&name) {
            return Err(ConfigError::Invalid(format!(
                "payments.provider {name:?} must be one of {}",
                purser_portal::payments::PROVIDERS.join(", ")
            )));
        }
        self.payment_provider = name.to_owned();
        Ok(())
    }
}

fn catalog_from(raw: RawCatalog) -> Result<Catalog, ConfigError> {
    let tiers = raw
        .tiers
        .into_iter()
        .map(|t| {
            Ok(Tier {
                id: id("tier", &t.id, TierId::parse)?,
                monthly_credits: amount("monthly_credits", &t.monthly_credits)?,
                price: amount("price", &t.price)?,
                member_monthly_cap: t
                    .member_monthly_cap
                    .as_deref()
                    .map(|c| amount("member_monthly_cap", c))
                    .transpose()?,
                rollover_cap: t
                    .rollover_cap
                    .as_deref()
                    .map_or(Ok(Credits::ZERO), |c| amount("rollover_cap", c))?,
                low_balance_thresholds: t
                    .low_balance_thresholds
                    .map(|list| {
                        list.iter()
                            .map(|c| amount("low_balance_thresholds", c))
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .transpose()?,
                stripe_price: t
                    .stripe_price
                    .map(|price| {
                        let valid = price.starts_with("price_")
                            && price.len() <= 255
                            && price.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                        if valid {
                            Ok(price)
                        } else {
                            Err(ConfigError::Invalid(format!(
                                "tier {:?}: stripe_price {price:?} must be a Stripe Price id (price_…)",
                                t.id
                            )))
                        }
                    })
                    .transpose()?,
                name: t.name,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let packages = raw
        .packages
        .into_iter()
        .map(|p| {
            Ok(Package {
                id: id("package", &p.id, PackageId::parse)?,
                credits: amount("credits", &p.credits)?,
                price: amount("price", &p.price)?,
                name: p.name,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let tasks = raw
        .tasks
        .into_iter()
        .map(|t| {
            Ok(Task {
                id: id("task", &t.id, TaskId::parse)?,
                credits_per_unit: amount("credits_per_unit", &t.credits_per_unit)?,
                minimum: t
                    .minimum
                    .as_deref()
                    .map(|m| amount("minimum", m))
                    .transpose()?,
                unit: t.unit,
                name: t.name,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Catalog::new(raw.currency, tiers, packages, tasks)
        .map_err(|e| ConfigError::Catalog(e.to_string()))
}

/// Tiers billed through Stripe: each Price sells one paid tier, and the
/// catalog has a free tier (priced 0, not billed) for accounts whose
/// subscription ends.
fn check_stripe_prices(catalog: &Catalog) -> Result<(), ConfigError> {
    let billed: Vec<_> = catalog
        .tiers()
        .iter()
        .filter_map(|tier| Some((tier, tier.stripe_price.as_deref()?)))
        .collect();
    if billed.is_empty() {
        return Ok(());
    }
    for (at, (tier, price)) in billed.iter().enumerate() {
        if tier.price.is_zero() {
            return Err(ConfigError::Invalid(format!(
                "tier {:?} is priced 0: it cannot have a stripe_price",
                tier.id.as_str()
            )));
        }
        if billed[..at].iter().any(|(_, other)| other == price) {
            return Err(ConfigError::Invalid(format!(
                "stripe_price {price:?} is given to two tiers"
            )));
        }
    }
    if catalog.free_tier().is_none() {
        return Err(ConfigError::Invalid(
            "tiers with a stripe_price need a free tier (priced 0) for accounts whose subscription ends".into(),
        ));
    }
    Ok(())
}

/// The built-in configuration, as a commented `purser.toml`.
pub fn default_toml() -> String {
    let config = Config::default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# purser.toml: every setting, with its built-in value."
    );
    let _ = writeln!(out, "listen = {:?}", config.listen);
    let _ = writeln!(
        out,
        "data_dir = {:?}",
        config.data_dir.display().to_string()
    );
    let _ = writeln!(
        out,
        "# database_url = \"postgres://user@localhost/purser\"  (the PostgreSQL store instead of data_dir)"
    );
    let _ = writeln!(
        out,
        "# shards = {}  (default: the number of cores)",
        config.shards
    );
    let _ = writeln!(
        out,
        "partitions = {}  # fixed when the data directory is created",
        config.partitions
    );
    let _ = writeln!(out, "\n[limits]");
    let _ = writeln!(out, "queue_capacity = {}", config.queue_capacity);
    let _ = writeln!(out, "batch_limit = {}", config.batch_limit);
    let _ = writeln!(
        out,
        "request_timeout_seconds = {}",
        config.request_timeout_seconds
    );
    let _ = writeln!(
        out,
        "max_connections = {}  # more wait to be accepted; keep under the open-file limit",
        config.max_connections
    );
    let _ = writeln!(
        out,
        "header_timeout_seconds = {}  # to send a request's headers; also the idle keep-alive limit",
        config.header_timeout_seconds
    );
    let _ = writeln!(
        out,
        "body_timeout_seconds = {}  # to send a request's body",
        config.body_timeout_seconds
    );
    let _ = writeln!(
        out,
        "list_reads_per_second = {}  # pages of one account's lists a second (0: unpaced); more wait their turn",
        config.list_reads_per_second
    );
    let _ = writeln!(
        out,
        "list_reads_burst = {}  # pages of one account's lists at once before that pace",
        config.list_reads_burst
    );
    let _ = writeln!(out, "\n[idempotency]");
    let _ = writeln!(
        out,
        "retention_seconds = {}",
        config.idempotency_retention_seconds
    );
    let _ = writeln!(
        out,
        "purge_interval_seconds = {}  # expired records leave the store and memory while serving",
        config.idempotency_purge_interval_seconds
    );
    let _ = writeln!(
        out,
        "cache_keys = {}  # recent keys whose answer stays in memory; older ones: 16 bytes each, answered from the store",
        config.idempotency_cache_keys
    );
    let _ = writeln!(out, "\n[portal]");
    let _ = writeln!(
        out,
        "# public_url = \"https://billing.example.com\"  (the base of portal links; default: the Host the API was called on)"
    );
    let _ = writeln!(
        out,
        "session_ttl_seconds = {}",
        config.portal_session_ttl_seconds
    );
    let _ = writeln!(
        out,
        "tier_changes = {}  # false: customers see the plans but cannot change their tier in the portal",
        config.portal_tier_changes
    );
    let _ = writeln!(out, "\n[payments]");
    let _ = writeln!(
        out,
        "provider = {:?}  # manual: the operator confirms each purchase through the API; instant: completes at once (demos, tests); stripe: Stripe Checkout (PURSER_STRIPE_SECRET_KEY, PURSER_STRIPE_WEBHOOK_SECRET)",
        config.payment_provider
    );
    let _ = writeln!(out, "\n[payments.stripe]");
    let _ = writeln!(out, "api_base = {:?}", config.stripe_api_base);
    let hooks = &config.webhooks;
    let schedule: Vec<String> = hooks
        .retry_schedule
        .iter()
        .map(|delay| delay.as_secs().to_string())
        .collect();
    let _ = writeln!(out, "\n[webhooks]");
    let _ = writeln!(
        out,
        "retry_schedule_seconds = [{}]  # the delay before each retry (±10 %); given up after the last",
        schedule.join(", ")
    );
    let _ = writeln!(out, "timeout_seconds = {}", hooks.timeout.as_secs());
    let _ = writeln!(
        out,
        "allow_private_networks = {}  # false: endpoints on loopback and private networks are refused",
        hooks.allow_private_networks
    );
    let _ = writeln!(out, "concurrency = {}", hooks.concurrency);
    let _ = writeln!(
        out,
        "disable_after_seconds = {}",
        hooks.disable_after.as_secs()
    );
    let _ = writeln!(out, "\n[events]");
    let _ = writeln!(
        out,
        "retention_days = {}  # at least 30",
        config.event_retention_days
    );
    let catalog = &config.catalog;
    let _ = writeln!(out, "\n[catalog]\ncurrency = {:?}", catalog.currency());
    for tier in catalog.tiers() {
        let _ = writeln!(
            out,
            "\n[[catalog.tiers]]\nid = {:?}\nname = {:?}",
            tier.id.as_str(),
            tier.name
        );
        let _ = writeln!(
            out,
            "monthly_credits = \"{}\"\nprice = \"{}\"\nrollover_cap = \"{}\"",
            tier.monthly_credits, tier.price, tier.rollover_cap
        );
        if let Some(cap) = tier.member_monthly_cap {
            let _ = writeln!(out, "member_monthly_cap = \"{cap}\"");
        }
        let thresholds: Vec<String> = tier
            .low_balance_thresholds()
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect();
        let _ = writeln!(out, "low_balance_thresholds = [{}]", thresholds.join(", "));
        match &tier.stripe_price {
            Some(price) => {
                let _ = writeln!(out, "stripe_price = {price:?}");
            }
            None if !tier.price.is_zero() => {
                let _ = writeln!(
                    out,
                    "# stripe_price = \"price_…\"  (with payments.provider = \"stripe\": sold as a Stripe subscription)"
                );
            }
            None => {}
        }
    }
    for package in catalog.packages() {
        let _ = writeln!(
            out,
            "\n[[catalog.packages]]\nid = {:?}\nname = {:?}",
            package.id.as_str(),
            package.name
        );
        let _ = writeln!(
            out,
            "credits = \"{}\"\nprice = \"{}\"",
            package.credits, package.price
        );
    }
    for task in catalog.tasks() {
        let _ = writeln!(
            out,
            "\n[[catalog.tasks]]\nid = {:?}\nname = {:?}\nunit = {:?}",
            task.id.as_str(),
            task.name,
            task.unit
        );
        let _ = writeln!(out, "credits_per_unit = \"{}\"", task.credits_per_unit);
        if let Some(minimum) = task.minimum {
            let _ = writeln!(out, "minimum = \"{minimum}\"");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_file_parses_back_to_the_builtin_catalog() {
        let config = Config::from_toml(&default_toml()).unwrap();
        assert_eq!(config.catalog, Catalog::builtin());
        assert_eq!(config.listen, "127.0.0.1:8787");
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let cases = [
            ("listen = 5", "invalid type"),
            ("colour = \"blue\"", "unknown field"),
            ("[idempotency]\nretention_seconds = 60", "at least 86400"),
            (
                "[catalog]\ncurrency = \"USD\"\n[[catalog.tiers]]\nid = \"x\"\nname = \"X\"\nmonthly_credits = \"1.0000001\"\nprice = \"0\"",
                "6 fractional digits",
            ),
        ];
        for (text, reason) in cases {
            let error = Config::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    fn tier(id: &str, price: &str, stripe_price: Option<&str>) -> String {
        let line = stripe_price.map_or(String::new(), |p| format!("stripe_price = \"{p}\"\n"));
        format!(
            "[[catalog.tiers]]\nid = \"{id}\"\nname = \"{id}\"\nmonthly_credits = \"10\"\nprice = \"{price}\"\n{line}"
        )
    }

    #[test]
    fn stripe_prices_sell_paid_tiers_beside_a_free_one() {
        let catalog =
            |tiers: &[String]| format!("[catalog]\ncurrency = \"USD\"\n{}", tiers.concat());
        let good = catalog(&[
            tier("free", "0", None),
            tier("pro", "9", Some("price_1Pro")),
        ]);
        let config = Config::from_toml(&good).unwrap();
        assert_eq!(
            config
                .catalog
                .tier_by_stripe_price("price_1Pro")
                .map(|t| t.id.as_str()),
            Some("pro")
        );
        assert_eq!(
            config.catalog.free_tier().map(|t| t.id.as_str()),
            Some("free")
        );
        assert!(
            Config::from_toml(&default_toml())
                .unwrap()
                .portal_tier_changes
        );
        let off = Config::from_toml("[portal]\ntier_changes = false").unwrap();
        assert!(!off.portal_tier_changes);
        let cases = [
            (
                catalog(&[tier("pro", "9", Some("price_1Pro"))]),
                "need a free tier",
            ),
            (
                catalog(&[tier("free", "0", Some("price_1Free"))]),
                "priced 0",
            ),
            (
                catalog(&[
                    tier("free", "0", None),
                    tier("a", "9", Some("price_1")),
                    tier("b", "19", Some("price_1")),
                ]),
                "two tiers",
            ),
            (
                catalog(&[tier("free", "0", None), tier("a", "9", Some("prod_1"))]),
                "Stripe Price id",
            ),
        ];
        for (text, reason) in cases {
            let error = Config::from_toml(&text).unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }
}
