//! Every bound on something that grows, in one place. The edge (HTTP, CLI)
//! checks these before a command is built; the core checks them again and
//! refuses with [`crate::Rejection::LimitExceeded`] naming the [`Limit`].

use std::fmt;

/// Operator-chosen ids (accounts, tiers, packages, tasks, members).
pub const MAX_ID_LEN: usize = 64;
/// Account, tier, package and task display names.
pub const MAX_NAME_LEN: usize = 256;
/// Metadata on accounts and charges: Stripe's bounds.
pub const MAX_METADATA_KEYS: usize = 50;
pub const MAX_METADATA_KEY_LEN: usize = 40;
pub const MAX_METADATA_VALUE_LEN: usize = 500;
/// The reason an operator gives for a grant.
pub const MAX_REASON_LEN: usize = 500;
/// Grants an account holds at once that the operator or a purchase can add
/// (renewals and rollovers expire by themselves and are not counted).
pub const MAX_GRANTS_PER_ACCOUNT: usize = 1_000;
/// Holds active on one account at once.
pub const MAX_ACTIVE_HOLDS_PER_ACCOUNT: usize = 1_000;
/// Purchases waiting for payment on one account at once.
pub const MAX_PENDING_PURCHASES_PER_ACCOUNT: usize = 100;
/// Distinct members charged on one account in one period.
pub const MAX_MEMBERS_PER_PERIOD: usize = 10_000;
/// Hold time-to-live.
pub const DEFAULT_HOLD_TTL_SECONDS: i64 = 900;
pub const MAX_HOLD_TTL_SECONDS: i64 = 86_400;
/// Items in one batch request.
pub const MAX_BATCH_ITEMS: usize = 1_000;
/// Idempotency keys.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
/// Default time an idempotency key is remembered.
pub const DEFAULT_IDEMPOTENCY_RETENTION_SECONDS: i64 = 86_400;
/// Page size of lists.
pub const DEFAULT_PAGE_LIMIT: usize = 20;
pub const MAX_PAGE_LIMIT: usize = 100;
/// Request bodies.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Tiers, packages and tasks in a catalog.
pub const MAX_CATALOG_ITEMS: usize = 1_000;

/// A bound the core enforces, named in a rejection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    GrantsPerAccount,
    ActiveHoldsPerAccount,
    PendingPurchasesPerAccount,
    MembersPerPeriod,
    MetadataKeys,
    MetadataKeyLength,
    MetadataValueLength,
    NameLength,
    ReasonLength,
    HoldTtl,
    LowBalanceThresholds,
}

impl Limit {
    pub const fn code(self) -> &'static str {
        match self {
            Limit::GrantsPerAccount => "grants_per_account",
            Limit::ActiveHoldsPerAccount => "active_holds_per_account",
            Limit::PendingPurchasesPerAccount => "pending_purchases_per_account",
            Limit::MembersPerPeriod => "members_per_period",
            Limit::MetadataKeys => "metadata_keys",
            Limit::MetadataKeyLength => "metadata_key_length",
            Limit::MetadataValueLength => "metadata_value_length",
            Limit::NameLength => "name_length",
            Limit::ReasonLength => "reason_length",
            Limit::HoldTtl => "hold_ttl",
            Limit::LowBalanceThresholds => "low_balance_thresholds",
        }
    }

    /// The bound itself.
    pub const fn value(self) -> i64 {
        (match self {
            Limit::GrantsPerAccount => MAX_GRANTS_PER_ACCOUNT,
            Limit::ActiveHoldsPerAccount => MAX_ACTIVE_HOLDS_PER_ACCOUNT,
            Limit::PendingPurchasesPerAccount => MAX_PENDING_PURCHASES_PER_ACCOUNT,
            Limit::MembersPerPeriod => MAX_MEMBERS_PER_PERIOD,
            Limit::MetadataKeys => MAX_METADATA_KEYS,
            Limit::MetadataKeyLength => MAX_METADATA_KEY_LEN,
            Limit::MetadataValueLength => MAX_METADATA_VALUE_LEN,
            Limit::NameLength => MAX_NAME_LEN,
            Limit::ReasonLength => MAX_REASON_LEN,
            Limit::HoldTtl => MAX_HOLD_TTL_SECONDS as usize,
            Limit::LowBalanceThresholds => crate::catalog::MAX_THRESHOLDS,
        }) as i64
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at most {})", self.code(), self.value())
    }
}
