//! What a debit's answer is made of besides its journal entry, kept in the
//! durable idempotency record instead of the rendered JSON.
//!
//! A debit's answer is ~750 bytes of JSON, most of it the balance after the
//! charge; with one record per keyed charge (every batch item has a key) the
//! records were most of the bytes each group commit wrote. The memo is the
//! entry's id and what of the balance cannot be derived (~35 bytes); a
//! replay reads the entry back from the journal, and the account's opening
//! entry for its id and anchor, and renders the same bytes again
//! ([`crate::render::debit_from_memo`]). Other answers stay JSON.
//!
//! Version 2 leaves out what the opening entry and the rest of the memo
//! tell: the account's id, the period's bounds (its index is kept; the
//! anchor never changes) and the balance's two sums ([`Balance::of`]).
//! Version 1 memos, which kept them, are still read.
//!
//! A memo starts with a zero byte, which JSON never does.

use purser_core::time::period_start;
use purser_core::{
    AccountHandle, Balance, BudgetBalance, CreditSum, Credits, KindBalance, Timestamp,
};

const MARKER: u8 = 0;
/// Memos written before the account's id and the balance's derived
/// parts were left out.
const VERSION_1: u8 = 1;
const VERSION: u8 = 2;

/// A debit answer's parts besides its entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebitMemo {
    /// The debit's (or capture's) entry.
    pub account: AccountHandle,
    pub seq: u64,
    /// The account's id, tier and pending tier when it was charged.
    pub id: String,
    pub tier: String,
    pub pending_tier: Option<String>,
    /// The balance right after the charge, as the answer showed it.
    pub balance: Balance,
    /// The index of the budget period `balance` shows (from the account's
    /// anchor); `None` when read from a version 1 memo, which does not say.
    pub period_index: Option<i64>,
}

/// A memo as read from its bytes: whole (version 1), or waiting for its
/// account's id and anchor, which its opening entry tells (version 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    Whole(DebitMemo),
    Partial(PartialMemo),
}

/// A version 2 memo before its account's id and anchor are known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialMemo {
    pub account: AccountHandle,
    pub seq: u64,
    tier: String,
    pending_tier: Option<String>,
    debt: Credits,
    budget: [CreditSum; 4],
    period_index: i64,
    kinds: [KindBalance; 3],
}

impl PartialMemo {
    /// The memo, given its account's id and anchor (from the account's
    /// opening entry); `None` when the period's bounds cannot be computed.
    pub fn complete(self, id: String, anchor: Timestamp) -> Option<DebitMemo> {
        let next = self.period_index.checked_add(1)?;
        // The calendar's range is bounded; an index outside it is damage.
        if self.period_index.unsigned_abs() > 1_000_000 {
            return None;
        }
        let [granted, used, held, available] = self.budget;
        let [rollover, packages, promo] = self.kinds;
        let budget = BudgetBalance {
            granted,
            used,
            held,
            available,
            period_start: period_start(anchor, self.period_index),
            period_end: period_start(anchor, next),
        };
        Some(DebitMemo {
            account: self.account,
            seq: self.seq,
            id,
            tier: self.tier,
            pending_tier: self.pending_tier,
            balance: Balance::of(self.debt, budget, rollover, packages, promo),
            period_index: Some(self.period_index),
        })
    }
}

/// Whether a remembered answer is a memo (else it is the answer's JSON).
pub fn is_memo(body: &[u8]) -> bool {
    body.first() == Some(&MARKER)
}

impl DebitMemo {
    /// The version 2 bytes: what [`PartialMemo::complete`] cannot derive.
    /// `period_index` must be set (a memo made from an account has it).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(48);
        out.extend([MARKER, VERSION]);
        varint(&mut out, self.account.raw().into());
        varint(&mut out, self.seq.into());
        text(&mut out, &self.tier);
        match &self.pending_tier {
            None => out.push(0),
            Some(tier) => {
                out.push(1);
                text(&mut out, tier);
            }
        }
        let b = &self.balance;
        varint(&mut out, b.debt.micros().into());
        for sum in [
            b.budget.granted,
            b.budget.used,
            b.budget.held,
            b.budget.available,
        ] {
            signed(&mut out, sum.micros());
        }
        signed(
            &mut out,
            self.period_index
                .expect("a memo to encode knows its period")
                .into(),
        );
        for kind in [b.rollover, b.packages, b.promo] {
            signed(&mut out, kind.available.micros());
            signed(&mut out, kind.held.micros());
        }
        out
    }

    /// `None` for anything [`DebitMemo::encode`] (or version 1's encoder)
    /// did not write.
    pub fn decode(bytes: &[u8]) -> Option<Decoded> {
        let mut input = Reader(bytes);
        if input.byte()? != MARKER {
            return None;
        }
        match input.byte()? {
            VERSION_1 => decode_v1(input).map(Decoded::Whole),
            VERSION => decode_v2(input).map(Decoded::Partial),
            _ => None,
        }
    }
}

fn decode_v2(mut input: Reader<'_>) -> Option<PartialMemo> {
    let account = AccountHandle::from_raw(u64::try_from(input.varint()?).ok()?);
    let seq = u64::try_from(input.varint()?).ok()?;
    let tier = input.text()?;
    let pending_tier = match input.byte()? {
        0 => None,
        1 => Some(input.text()?),
        _ => return None,
    };
    let debt = Credits::from_micros(u64::try_from(input.varint()?).ok()?)?;
    let mut sum = || input.signed().map(CreditSum::from_micros);
    let budget = [sum()?, sum()?, sum()?, sum()?];
    let period_index = i64::try_from(input.signed()?).ok()?;
    let mut kind = || {
        Some(KindBalance {
            available: CreditSum::from_micros(input.signed()?),
            held: CreditSum::from_micros(input.signed()?),
        })
    };
    let kinds = [kind()?, kind()?, kind()?];
    if !input.0.is_empty() {
        return None;
    }
    Some(PartialMemo {
        account,
        seq,
        tier,
        pending_tier,
        debt,
        budget,
        period_index,
        kinds,
    })
}

fn decode_v1(mut input: Reader<'_>) -> Option<DebitMemo> {
    let account = AccountHandle::from_raw(u64::try_from(input.varint()?).ok()?);
    let seq = u64::try_from(input.varint()?).ok()?;
    let id = input.text()?;
    let tier = input.text()?;
    let pending_tier = match input.byte()? {
        0 => None,
        1 => Some(input.text()?),
        _ => return None,
    };
    let mut sum = || input.signed().map(CreditSum::from_micros);
    let available = sum()?;
    let held = sum()?;
    let debt = Credits::from_micros(u64::try_from(input.varint()?).ok()?)?;
    let mut sum = || input.signed().map(CreditSum::from_micros);
    let (granted, used, budget_held, budget_available) = (sum()?, sum()?, sum()?, sum()?);
    let mut at = || {
        input
            .signed()
            .and_then(|micros| i64::try_from(micros).ok())
            .map(Timestamp::from_micros)
    };
    let (period_start, period_end) = (at()?, at()?);
    let mut kind = || {
        Some(KindBalance {
            available: CreditSum::from_micros(input.signed()?),
            held: CreditSum::from_micros(input.signed()?),
        })
    };
    let (rollover, packages, promo) = (kind()?, kind()?, kind()?);
    if !input.0.is_empty() {
        return None;
    }
    Some(DebitMemo {
        account,
        seq,
        id,
        tier,
        pending_tier,
        balance: Balance {
            available,
            held,
            debt,
            budget: BudgetBalance {
                granted,
                used,
                held: budget_held,
                available: budget_available,
                period_start,
                period_end,
            },
            rollover,
            packages,
            promo,
        },
        period_index: None,
    })
}

fn varint(out: &mut Vec<u8>, mut value: u128) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn signed(out: &mut Vec<u8>, value: i128) {
    varint(out, ((value << 1) ^ (value >> 127)) as u128);
}

fn text(out: &mut Vec<u8>, text: &str) {
    varint(out, text.len() as u128);
    out.extend_from_slice(text.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn varint(&mut self) -> Option<u128> {
        let mut value: u128 = 0;
        for shift in (0..128).step_by(7) {
            let byte = self.byte()?;
            value |= u128::from(byte & 0x7f).checked_shl(shift)?;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn signed(&mut self) -> Option<i128> {
        let raw = self.varint()?;
        Some(((raw >> 1) as i128) ^ -((raw & 1) as i128))
    }

    fn text(&mut self) -> Option<String> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (text, rest) = self.0.split_at(len);
        self.0 = rest;
        String::from_utf8(text.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sum() -> impl Strategy<Value = CreditSum> {
        any::<i128>().prop_map(CreditSum::from_micros)
    }

    fn kind() -> impl Strategy<Value = KindBalance> {
        (sum(), sum()).prop_map(|(available, held)| KindBalance { available, held })
    }

    proptest! {
        #[test]
        fn a_memo_reads_back_as_written(
            raw in any::<u64>(),
            seq in any::<u64>(),
            id in "[a-z0-9_-]{1,40}",
            tier in "[a-z]{1,12}",
            pending in proptest::option::of("[a-z]{1,12}"),
            sums in proptest::array::uniform4(sum()),
            debt in 0u64..=Credits::MAX.micros(),
            anchor in 0i64..4_000_000_000_000_000,
            period_index in -1_000i64..1_000,
            kinds in (kind(), kind(), kind()),
        ) {
            let anchor = Timestamp::from_micros(anchor);
            let budget = BudgetBalance {
                granted: sums[0],
                used: sums[1],
                held: sums[2],
                available: sums[3],
                period_start: period_start(anchor, period_index),
                period_end: period_start(anchor, period_index + 1),
            };
            let memo = DebitMemo {
                account: AccountHandle::from_raw(raw),
                seq,
                id: id.clone(),
                tier,
                pending_tier: pending,
                balance: Balance::of(
                    Credits::from_micros(debt).unwrap(),
                    budget,
                    kinds.0,
                    kinds.1,
                    kinds.2,
                ),
                period_index: Some(period_index),
            };
            let bytes = memo.encode();
            prop_assert!(is_memo(&bytes));
            let Some(Decoded::Partial(partial)) = DebitMemo::decode(&bytes) else {
                panic!("a version 2 memo reads back partial");
            };
            prop_assert_eq!(partial.complete(id, anchor), Some(memo));
            // Cut short or with bytes to spare, it is refused, never misread.
            prop_assert_eq!(DebitMemo::decode(&bytes[..bytes.len() - 1]), None);
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert_eq!(DebitMemo::decode(&longer), None);
        }
    }

    /// A memo version 1 wrote (before the id and the derived parts were
    /// left out), as that encoder wrote it, reads back whole.
    #[test]
    fn a_version_1_memo_still_reads() {
        let hex = "000187808080302a07616363742d31370370726f01046672656580b4c4c3218092f4010080c8afa02580a8d6b9078092f401808ee5e41d808092def6caaf068080fcd1e6e1b006000080a6dfde03000000";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let sum = CreditSum::from_micros;
        let Some(Decoded::Whole(memo)) = DebitMemo::decode(&bytes) else {
            panic!("a version 1 memo reads back whole");
        };
        assert_eq!(
            memo,
            DebitMemo {
                account: AccountHandle::from_raw(0x0003_0000_0007),
                seq: 42,
                id: "acct-17".into(),
                tier: "pro".into(),
                pending_tier: Some("free".into()),
                balance: Balance {
                    available: sum(4_500_000_000),
                    held: sum(2_000_000),
                    debt: Credits::ZERO,
                    budget: BudgetBalance {
                        granted: sum(5_000_000_000),
                        used: sum(1_000_000_000),
                        held: sum(2_000_000),
                        available: sum(3_998_000_000),
                        period_start: Timestamp::parse_rfc3339("2026-11-01T00:00:00Z").unwrap(),
                        period_end: Timestamp::parse_rfc3339("2026-12-01T00:00:00Z").unwrap(),
                    },
                    rollover: KindBalance::default(),
                    packages: KindBalance {
                        available: sum(502_000_000),
                        held: CreditSum::ZERO,
                    },
                    promo: KindBalance::default(),
                },
                period_index: None,
            }
        );
    }

    #[test]
    fn json_is_never_a_memo() {
        assert!(!is_memo(br#"{"object":"debit"}"#));
        assert!(!is_memo(b""));
        assert_eq!(DebitMemo::decode(br#"{"object":"debit"}"#), None);
    }
}
