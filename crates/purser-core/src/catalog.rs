//! What the operator sells: tiers (monthly budgets), credit packages, and the
//! rate card of AI tasks.

use std::fmt;
use std::sync::Arc;

use crate::credits::{Credits, MICROS_PER_UNIT, Quantity};
use crate::ids::{PackageId, TaskId, TierId};
use crate::limits::{MAX_CATALOG_ITEMS, MAX_NAME_LEN};

/// A subscription tier: the monthly budget an account gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tier {
    pub id: TierId,
    pub name: String,
    pub monthly_credits: Credits,
    /// Display and checkout price, in the catalog's currency.
    pub price: Credits,
    /// What one member may consume (or hold) per period; `None` is no cap.
    pub member_monthly_cap: Option<Credits>,
    /// How much unused budget moves into the next period.
    pub rollover_cap: Credits,
    /// Low-balance thresholds of accounts on this tier that set none (at
    /// most [`MAX_THRESHOLDS`]); `None`: 20 % of the monthly credits, filled
    /// in by [`Catalog::new`].
    pub low_balance_thresholds: Option<Vec<Credits>>,
    /// The Stripe Price (`price_…`, recurring) the tier is billed with,
    /// when tiers are sold through Stripe subscriptions; `None`: not billed
    /// by a provider (a free tier, or one the operator bills).
    pub stripe_price: Option<String>,
}

/// The most low-balance thresholds an account or a tier has.
pub const MAX_THRESHOLDS: usize = 5;

impl Tier {
    /// The tier's low-balance thresholds (see the field).
    pub fn low_balance_thresholds(&self) -> &[Credits] {
        self.low_balance_thresholds.as_deref().unwrap_or(&[])
    }

    /// The built-in threshold: 20 % of the monthly credits (none for a tier
    /// without credits).
    pub fn default_thresholds(monthly: Credits) -> Vec<Credits> {
        let fifth = Credits::from_micros(monthly.micros() / 5).unwrap_or(Credits::ZERO);
        if fifth.is_zero() {
            Vec::new()
        } else {
            vec![fifth]
        }
    }
}

/// A credit package: bought any number of times, never expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Package {
    pub id: PackageId,
    pub name: String,
    pub credits: Credits,
    pub price: Credits,
}

/// One line of the rate card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub id: TaskId,
    pub name: String,
    /// What a quantity counts: minute, page, document, message…
    pub unit: String,
    pub credits_per_unit: Credits,
    pub minimum: Option<Credits>,
}

impl Task {
    /// `quantity × credits_per_unit`, rounded up to the micro-credit, at least
    /// `minimum`. `None` when the result is above the single-amount limit.
    pub fn price(&self, quantity: Quantity) -> Option<Credits> {
        price_at(self.credits_per_unit, self.minimum, quantity)
    }
}

/// The credits of `quantity` units at `rate`, rounded up, at least `minimum`.
pub fn price_at(rate: Credits, minimum: Option<Credits>, quantity: Quantity) -> Option<Credits> {
    let product = u128::from(quantity.micros()) * u128::from(rate.micros());
    let micros = product.div_ceil(u128::from(MICROS_PER_UNIT));
    let credits = u64::try_from(micros).ok().and_then(Credits::from_micros)?;
    Some(credits.max(minimum.unwrap_or(Credits::ZERO)))
}

/// Why a catalog was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CatalogError {
    NoTiers,
    DuplicateId { kind: &'static str, id: String },
    NameLength { kind: &'static str, id: String },
    TooManyItems { kind: &'static str },
    EmptyCurrency,
    TooManyThresholds,
}

impl fmt::Display for CatalogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CatalogError::NoTiers => f.write_str("the catalog needs at least one tier"),
            CatalogError::DuplicateId { kind, id } => write!(f, "{kind} id {id:?} appears twice"),
            CatalogError::NameLength { kind, id } => {
                write!(f, "{kind} {id:?}: name must be 1-{MAX_NAME_LEN} characters")
            }
            CatalogError::TooManyItems { kind } => {
                write!(f, "at most {MAX_CATALOG_ITEMS} {kind}s")
            }
            CatalogError::EmptyCurrency => f.write_str("the currency must not be empty"),
            CatalogError::TooManyThresholds => {
                write!(
                    f,
                    "a tier has at most {MAX_THRESHOLDS} low-balance thresholds"
                )
            }
        }
    }
}

impl std::error::Error for CatalogError {}

/// Tiers, packages and tasks, validated. Items are shared (`Arc`) so that a
/// catalog can be swapped while accounts keep referring to tiers by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Catalog {
    currency: String,
    tiers: Vec<Arc<Tier>>,
    packages: Vec<Arc<Package>>,
    tasks: Vec<Arc<Task>>,
}

impl Catalog {
    pub fn new(
        currency: String,
        tiers: Vec<Tier>,
        packages: Vec<Package>,
        tasks: Vec<Task>,
    ) -> Result<Catalog, CatalogError> {
        if currency.trim().is_empty() {
            return Err(CatalogError::EmptyCurrency);
        }
        if tiers.is_empty() {
            return Err(CatalogError::NoTiers);
        }
        check_items(
            "tier",
            tiers.iter().map(|t| (t.id.as_str(), t.name.as_str())),
        )?;
        check_items(
            "package",
            packages.iter().map(|p| (p.id.as_str(), p.name.as_str())),
        )?;
        check_items(
            "task",
            tasks.iter().map(|t| (t.id.as_str(), t.name.as_str())),
        )?;
        if tiers.iter().any(|t| {
            t.low_balance_thresholds
                .as_ref()
                .is_some_and(|list| list.len() > MAX_THRESHOLDS)
        }) {
            return Err(CatalogError::TooManyThresholds);
        }
        let tiers = tiers.into_iter().map(|mut tier| {
            if tier.low_balance_thresholds.is_none() {
                tier.low_balance_thresholds = Some(Tier::default_thresholds(tier.monthly_credits));
            }
            Arc::new(tier)
        });
        Ok(Catalog {
            currency,
            tiers: tiers.collect(),
            packages: packages.into_iter().map(Arc::new).collect(),
            tasks: tasks.into_iter().map(Arc::new).collect(),
        })
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub fn tiers(&self) -> &[Arc<Tier>] {
        &self.tiers
    }

    pub fn packages(&self) -> &[Arc<Package>] {
        &self.packages
    }

    pub fn tasks(&self) -> &[Arc<Task>] {
        &self.tasks
    }

    pub fn tier(&self, id: &str) -> Option<&Arc<Tier>> {
        self.tiers.iter().find(|t| t.id.as_str() == id)
    }

    pub fn package(&self, id: &str) -> Option<&Arc<Package>> {
        self.packages.iter().find(|p| p.id.as_str() == id)
    }

    pub fn task(&self, id: &str) -> Option<&Arc<Task>> {
        self.tasks.iter().find(|t| t.id.as_str() == id)
    }

    /// The free tier: the first one priced 0 (where an account goes when
    /// its paid subscription ends).
    pub fn free_tier(&self) -> Option<&Arc<Tier>> {
        self.tiers.iter().find(|t| t.price.is_zero())
    }

    /// The tier billed with Stripe Price `price`.
    pub fn tier_by_stripe_price(&self, price: &str) -> Option<&Arc<Tier>> {
        self.tiers
            .iter()
            .find(|t| t.stripe_price.as_deref() == Some(price))
    }

    /// The catalog a fresh install runs with, matching the platform's
    /// credits page: five AI tasks, four tiers, three packages (USD).
    pub fn builtin() -> Catalog {
        let credits = |text: &str| Credits::parse(text, crate::Notation::String).unwrap();
        let tier = |id: &str, name: &str, monthly: &str, price: &str, rollover: &str| Tier {
            id: TierId::parse(id).unwrap(),
            name: name.into(),
            monthly_credits: credits(monthly),
            price: credits(price),
            member_monthly_cap: None,
            rollover_cap: credits(rollover),
            low_balance_thresholds: None,
            stripe_price: None,
        };
        let package = |id: &str, name: &str, amount: &str, price: &str| Package {
            id: PackageId::parse(id).unwrap(),
            name: name.into(),
            credits: credits(amount),
            price: credits(price),
        };
        let task = |id: &str, name: &str, unit: &str, rate: &str, minimum: Option<&str>| Task {
            id: TaskId::parse(id).unwrap(),
            name: name.into(),
            unit: unit.into(),
            credits_per_unit: credits(rate),
            minimum: minimum.map(credits),
        };
        Catalog::new(
            "USD".into(),
            vec![
                tier("free", "Free", "25", "0", "0"),
                tier("starter", "Starter", "100", "19", "0"),
                tier("pro", "Pro", "1000", "99", "250"),
                tier("business", "Business", "5000", "399", "1000"),
            ],
            vec![
                package("small", "200 credits", "200", "9"),
                package("medium", "500 credits", "500", "19"),
                package("large", "2000 credits", "2000", "59"),
            ],
            vec![
                task("transcribe_video", "Transcribe video", "minute", "2", None),
                task(
                    "generate_documentation",
                    "Generate documentation",
                    "page",
                    "5",
                    Some("5"),
                ),
                task(
                    "analyze_knowledge",
                    "Analyze and structure knowledge",
                    "document",
                    "3",
                    None,
                ),
                task("crawl_data", "Crawl data", "page", "0.2", None),
                task(
                    "assistant_message",
                    "Assistant conversation",
                    "message",
                    "0.5",
                    None,
                ),
            ],
        )
        .unwrap()
    }
}

fn check_items<'a>(
    kind: &'static str,
    items: impl Iterator<Item = (&'a str, &'a str)>,
) -> Result<(), CatalogError> {
    let mut seen = std::collections::HashSet::new();
    for (id, name) in items {
        if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
            return Err(CatalogError::NameLength {
                kind,
                id: id.into(),
            });
        }
        if !seen.insert(id) {
            return Err(CatalogError::DuplicateId {
                kind,
                id: id.into(),
            });
        }
        if seen.len() > MAX_CATALOG_ITEMS {
            return Err(CatalogError::TooManyItems { kind });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Notation;

    fn q(text: &str) -> Quantity {
        Quantity::parse_positive(text, Notation::String).unwrap()
    }

    fn c(text: &str) -> Credits {
        Credits::parse(text, Notation::String).unwrap()
    }

    #[test]
    fn task_prices_round_up_and_respect_the_minimum() {
        let cases = [
            ("0.5", None, "3", Some("1.5")),
            ("0.333333", None, "0.5", Some("0.166667")),
            ("0.000001", None, "0.000001", Some("0.000001")),
            ("5", Some("5"), "0.1", Some("5")),
            ("0", None, "7", Some("0")),
            ("1000000000000", None, "1.000001", None),
            ("1000000", None, "1000000", Some("1000000000000")),
        ];
        for (rate, minimum, quantity, expected) in cases {
            let credits = price_at(c(rate), minimum.map(c), q(quantity));
            assert_eq!(credits, expected.map(c), "{quantity} × {rate}");
        }
    }

    #[test]
    fn builtin_catalog_matches_the_seed() {
        let catalog = Catalog::builtin();
        let tasks: Vec<&str> = catalog.tasks().iter().map(|t| t.id.as_str()).collect();
        assert_eq!(
            tasks,
            [
                "transcribe_video",
                "generate_documentation",
                "analyze_knowledge",
                "crawl_data",
                "assistant_message"
            ]
        );
        assert_eq!(catalog.tiers().len(), 4);
        assert_eq!(catalog.packages().len(), 3);
        let monthly: Vec<Credits> = catalog.tiers().iter().map(|t| t.monthly_credits).collect();
        assert!(
            monthly.windows(2).all(|w| w[0] < w[1]),
            "tiers grow: {monthly:?}"
        );
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let builtin = Catalog::builtin();
        let mut tiers: Vec<Tier> = builtin.tiers().iter().map(|t| (**t).clone()).collect();
        tiers.push(tiers[0].clone());
        let error = Catalog::new("USD".into(), tiers, vec![], vec![]).unwrap_err();
        assert_eq!(
            error,
            CatalogError::DuplicateId {
                kind: "tier",
                id: "free".into()
            }
        );
        assert_eq!(
            Catalog::new("USD".into(), vec![], vec![], vec![]),
            Err(CatalogError::NoTiers)
        );
    }
}
