//! Grants: lots of credits on an account, and the burn order among them.

use crate::credits::Credits;
use crate::ids::TierId;
use crate::time::Timestamp;

/// What a grant is for; decides its default priority and how it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GrantKind {
    /// The tier's monthly credits for one period; expire at the period's end.
    Budget,
    /// Unused budget carried into the next period, up to the tier's cap.
    Rollover,
    /// Bought credits; never expire.
    Package,
    /// Operator credits, and debt already paid that a reversal gives back.
    Promo,
}

impl GrantKind {
    pub const ALL: [GrantKind; 4] = [
        GrantKind::Budget,
        GrantKind::Rollover,
        GrantKind::Package,
        GrantKind::Promo,
    ];

    /// Budget and rollover go first, package credits are the backup.
    pub const fn default_priority(self) -> u16 {
        match self {
            GrantKind::Budget | GrantKind::Rollover => 0,
            GrantKind::Promo => 5,
            GrantKind::Package => 10,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            GrantKind::Budget => "budget",
            GrantKind::Rollover => "rollover",
            GrantKind::Package => "package",
            GrantKind::Promo => "promo",
        }
    }

    pub fn parse(text: &str) -> Option<GrantKind> {
        GrantKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// Where a grant's credits came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GrantSource {
    /// The budget of period `index` under `tier` (renewal, first period, upgrade).
    Period { tier: TierId, index: i64 },
    /// Unused budget of the period that ended when this grant began.
    Rollover { index: i64 },
    /// A completed purchase (the sequence number of its creation entry).
    Purchase { purchase: u64 },
    /// Credits an operator granted, with the reason given.
    Operator { reason: Box<str> },
    /// Paid-off debt that a reversal of this debit gave back.
    Reversal { debit: u64 },
}

/// Whether a grant was voided. Expiry is a matter of time (`expires_at`), not
/// of state: past it, a grant keeps only credits still held, which expire as
/// their hold ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantState {
    Live,
    /// Voided by the operator or by a refund; held credits are voided when released.
    Voided,
}

/// The highest priority an operator may give.
pub const MAX_PRIORITY: u16 = 1_000;

/// A lot of credits. `0 ≤ held ≤ remaining`, `remaining + consumed ≤ amount`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Sequence number of the journal entry that created it (its id).
    pub seq: u64,
    pub kind: GrantKind,
    pub priority: u16,
    pub amount: Credits,
    /// Not yet consumed, expired or voided (held credits included).
    pub remaining: Credits,
    /// Reserved by active holds.
    pub held: Credits,
    /// Spent by charges and debt payments, net of reversals.
    pub consumed: Credits,
    pub effective_at: Timestamp,
    /// [`Timestamp::NEVER`] for grants that do not expire.
    pub expires_at: Timestamp,
    pub state: GrantState,
    pub source: GrantSource,
}

impl Grant {
    /// Rule 1: lower priority, then earlier expiry (never last), then earlier
    /// effective time, then id.
    pub fn burn_key(&self) -> (u16, Timestamp, Timestamp, u64) {
        (self.priority, self.expires_at, self.effective_at, self.seq)
    }

    /// Credits a charge or hold could take from this grant.
    pub fn free(&self) -> Credits {
        self.remaining.saturating_sub(self.held)
    }

    /// Spendable at `at`: live and in effect.
    pub fn is_active(&self, at: Timestamp) -> bool {
        self.state == GrantState::Live && self.effective_at <= at && at < self.expires_at
    }

    pub fn expires(&self) -> Option<Timestamp> {
        (self.expires_at != Timestamp::NEVER).then_some(self.expires_at)
    }

    /// The budget period this grant belongs to, if it is a period budget.
    pub fn period_index(&self) -> Option<i64> {
        match (&self.kind, &self.source) {
            (GrantKind::Budget, GrantSource::Period { index, .. }) => Some(*index),
            _ => None,
        }
    }
}
