//! Why a command was refused: a closed set of outcomes with stable codes.
//! The server maps each [`ErrorType`] to an HTTP status in one place.

use std::fmt;

use crate::credits::{CreditSum, Credits};
use crate::entry::PurchaseStatus;
use crate::ids::MemberId;
use crate::limits::Limit;

/// The class of a rejection; one HTTP status each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    /// 400: the request names something that does not exist in the body, or asks for the impossible.
    InvalidRequest,
    /// 402.
    InsufficientCredits,
    /// 402.
    MemberLimitExceeded,
    /// 404: the object in the path does not exist.
    NotFound,
    /// 409: the object is not in a state that allows the action.
    Conflict,
}

/// A refused command. Nothing was changed by it (time-driven entries due
/// before it may still have been produced, and must still be stored).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    AccountNotFound,
    AccountExists,
    AccountClosed,
    UnknownTier,
    UnknownTask,
    UnknownPackage,
    InsufficientCredits {
        available: CreditSum,
        required: Credits,
    },
    MemberLimitExceeded {
        member: MemberId,
        cap: Credits,
        used: CreditSum,
        required: Credits,
    },
    HoldNotFound,
    HoldNotActive,
    /// A capture by quantity of a hold placed by credits (no task to price it).
    CaptureNeedsTask,
    GrantNotFound,
    GrantNotLive,
    /// Only `promo` and `package` grants can be issued by an operator.
    GrantKindNotAllowed,
    /// `expires_at` must be after `now`.
    ExpiryInPast,
    /// Priority above [`crate::grant::MAX_PRIORITY`].
    PriorityTooHigh,
    PurchaseNotFound,
    PurchaseNotAllowed {
        status: PurchaseStatus,
    },
    /// A partial refund of another amount paid than the purchase's
    /// earlier ones.
    RefundMismatch,
    /// Auto-recharge cannot be removed while one of its purchases is
    /// pending (switch it off instead, or settle the purchase).
    RechargeInFlight,
    DebitNotFound,
    NothingToReverse,
    ReversalTooLarge {
        reversible: Credits,
    },
    /// A computed amount (price, debt, grant growth) above 10¹².
    AmountTooLarge,
    LimitExceeded(Limit),
}

impl Rejection {
    pub fn error_type(&self) -> ErrorType {
        match self {
            Rejection::AccountNotFound
            | Rejection::HoldNotFound
            | Rejection::GrantNotFound
            | Rejection::PurchaseNotFound
            | Rejection::DebitNotFound => ErrorType::NotFound,
            Rejection::AccountExists
            | Rejection::AccountClosed
            | Rejection::HoldNotActive
            | Rejection::GrantNotLive
            | Rejection::PurchaseNotAllowed { .. }
            | Rejection::RefundMismatch
            | Rejection::RechargeInFlight
            | Rejection::NothingToReverse => ErrorType::Conflict,
            Rejection::InsufficientCredits { .. } => ErrorType::InsufficientCredits,
            Rejection::MemberLimitExceeded { .. } => ErrorType::MemberLimitExceeded,
            Rejection::UnknownTier
            | Rejection::UnknownTask
            | Rejection::UnknownPackage
            | Rejection::CaptureNeedsTask
            | Rejection::GrantKindNotAllowed
            | Rejection::ExpiryInPast
            | Rejection::PriorityTooHigh
            | Rejection::ReversalTooLarge { .. }
            | Rejection::AmountTooLarge
            | Rejection::LimitExceeded(_) => ErrorType::InvalidRequest,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::AccountNotFound => "account_not_found",
            Rejection::AccountExists => "account_exists",
            Rejection::AccountClosed => "account_closed",
            Rejection::UnknownTier => "unknown_tier",
            Rejection::UnknownTask => "unknown_task",
            Rejection::UnknownPackage => "unknown_package",
            Rejection::InsufficientCredits { .. } => "insufficient_credits",
            Rejection::MemberLimitExceeded { .. } => "member_limit_exceeded",
            Rejection::HoldNotFound => "hold_not_found",
            Rejection::HoldNotActive => "hold_not_active",
            Rejection::CaptureNeedsTask => "capture_needs_task",
            Rejection::GrantNotFound => "grant_not_found",
            Rejection::GrantNotLive => "grant_not_live",
            Rejection::GrantKindNotAllowed => "grant_kind_not_allowed",
            Rejection::ExpiryInPast => "expiry_in_past",
            Rejection::PriorityTooHigh => "priority_too_high",
            Rejection::PurchaseNotFound => "purchase_not_found",
            Rejection::PurchaseNotAllowed { .. } => "purchase_status_conflict",
            Rejection::RefundMismatch => "refund_mismatch",
            Rejection::RechargeInFlight => "recharge_in_flight",
            Rejection::DebitNotFound => "debit_not_found",
            Rejection::NothingToReverse => "nothing_to_reverse",
            Rejection::ReversalTooLarge { .. } => "reversal_too_large",
            Rejection::AmountTooLarge => "amount_too_large",
            Rejection::LimitExceeded(_) => "limit_exceeded",
        }
    }

    /// The request field at fault, where there is one.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            Rejection::UnknownTier => Some("tier"),
            Rejection::UnknownTask => Some("task"),
            Rejection::UnknownPackage => Some("package"),
            Rejection::CaptureNeedsTask => Some("quantity"),
            Rejection::GrantKindNotAllowed => Some("kind"),
            Rejection::ExpiryInPast => Some("expires_at"),
            Rejection::PriorityTooHigh => Some("priority"),
            Rejection::ReversalTooLarge { .. } | Rejection::AmountTooLarge => Some("credits"),
            Rejection::LimitExceeded(limit) => match limit {
                Limit::MetadataKeys | Limit::MetadataKeyLength | Limit::MetadataValueLength => {
                    Some("metadata")
                }
                Limit::NameLength => Some("name"),
                Limit::ReasonLength => Some("reason"),
                Limit::HoldTtl => Some("ttl_seconds"),
                Limit::MembersPerPeriod => Some("member"),
                Limit::LowBalanceThresholds => Some("low_balance_thresholds"),
                Limit::GrantsPerAccount
                | Limit::ActiveHoldsPerAccount
                | Limit::PendingPurchasesPerAccount => None,
            },
            _ => None,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::AccountNotFound => f.write_str("no such account"),
            Rejection::AccountExists => f.write_str("an account with this id already exists"),
            Rejection::AccountClosed => f.write_str("the account is closed"),
            Rejection::UnknownTier => f.write_str("no such tier in the catalog"),
            Rejection::UnknownTask => f.write_str("no such task in the catalog"),
            Rejection::UnknownPackage => f.write_str("no such package in the catalog"),
            Rejection::InsufficientCredits {
                available,
                required,
            } => {
                write!(
                    f,
                    "insufficient credits: {required} required, {available} available"
                )
            }
            Rejection::MemberLimitExceeded {
                member,
                cap,
                used,
                required,
            } => write!(
                f,
                "member {member} would exceed the monthly cap of {cap}: {used} used, {required} required"
            ),
            Rejection::HoldNotFound => f.write_str("no such hold"),
            Rejection::HoldNotActive => f.write_str("the hold is no longer active"),
            Rejection::CaptureNeedsTask => {
                f.write_str("the hold was placed by credits; capture it by credits, not quantity")
            }
            Rejection::GrantNotFound => f.write_str("no such grant"),
            Rejection::GrantNotLive => f.write_str("the grant has already expired or been voided"),
            Rejection::GrantKindNotAllowed => {
                f.write_str("operators may grant only kind promo or package")
            }
            Rejection::ExpiryInPast => f.write_str("expires_at must be in the future"),
            Rejection::PriorityTooHigh => {
                write!(f, "priority must be at most {}", crate::grant::MAX_PRIORITY)
            }
            Rejection::PurchaseNotFound => f.write_str("no such purchase"),
            Rejection::PurchaseNotAllowed { status } => {
                write!(f, "the purchase is {} and cannot do that", status.as_str())
            }
            Rejection::RefundMismatch => f.write_str(
                "the refund is of another amount paid than the purchase's earlier refunds",
            ),
            Rejection::RechargeInFlight => f.write_str(
                "an auto-recharge purchase is pending: settle it, or switch auto-recharge off instead of removing it",
            ),
            Rejection::DebitNotFound => f.write_str("no such debit"),
            Rejection::NothingToReverse => f.write_str("the debit has been fully reversed"),
            Rejection::ReversalTooLarge { reversible } => {
                write!(
                    f,
                    "at most {reversible} of this debit can still be reversed"
                )
            }
            Rejection::AmountTooLarge => {
                f.write_str("the amount would exceed 1000000000000 credits")
            }
            Rejection::LimitExceeded(limit) => write!(f, "limit exceeded: {limit}"),
        }
    }
}

impl std::error::Error for Rejection {}
