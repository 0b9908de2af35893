//! purser-core: the exact, pure credits engine.
//!
//! Owns the credits type, the catalog, grants and their burn order, periods,
//! holds, purchases, reversals, debt, member caps, the journal entries every
//! change produces, and the invariants that must hold after each of them.
//!
//! It must not do IO, be async, read a clock, or know serde, SQL or HTTP:
//! callers pass `now` and already-parsed commands in, and get entries (or a
//! typed [`Rejection`]) back. The same [`Ledger::apply`] that commands go
//! through replays a stored journal, so recovery and `verify` rebuild exactly
//! the state the live engine had.

mod account;
mod catalog;
mod command;
mod credits;
mod decide;
mod entry;
pub mod events;
mod grant;
mod idempotency;
mod ids;
mod ledger;
pub mod limits;
mod metadata;
mod purchases;
mod rejection;
mod settled;
mod snapshot;
pub mod time;
pub mod verify;

pub use account::{
    Account, AccountSnapshot, AccountStatus, ApplyError, Balance, BudgetBalance, KindBalance,
    Violation,
};
pub use account::{AutoRecharge, RECHARGE_FAILURES_TO_DISABLE};
pub use catalog::{Catalog, CatalogError, MAX_THRESHOLDS, Package, Task, Tier, price_at};
pub use command::{Amount, CaptureAmount, Command, DebitRecord, Target};
pub use credits::{
    AmountError, CreditSum, Credits, MAX_MICROS, MAX_UNITS, MICROS_PER_UNIT, Notation, Quantity,
    parse_decimal,
};
pub use entry::{
    AccountUpdate, Actor, Allocation, AutoRechargeConfig, BalanceAfter, Body, Capture, ChargeMode,
    Debit, Entry, Hold, HoldEnd, Opened, Pricing, Proration, Purchase, PurchaseStatus,
    RechargeFailure, RechargeOutcome, RefundedShare, Release, ReleaseReason, Reversal, TYPE_NAMES,
    TierChange, VoidReason, allocated,
};
pub use events::{Event, EventId, EventType, Levels};
pub use grant::{Grant, GrantKind, GrantSource, GrantState, MAX_PRIORITY};
pub use idempotency::{Claim, Fingerprint, Found, IdempotencyTable, KeyHash};
pub use ids::{
    AccountHandle, AccountId, IdError, MemberId, ObjectId, ObjectKind, PackageId, TaskId, TierId,
    partition_of,
};
pub use ledger::{Ledger, Receipt};
pub use limits::Limit;
pub use metadata::Metadata;
pub use rejection::{ErrorType, Rejection};
pub use settled::{Settled, SettledBatch};
pub use time::Timestamp;

/// The README's example, compiled and run as a doctest so it stays true.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
