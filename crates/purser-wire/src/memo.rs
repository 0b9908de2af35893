//! What a debit's answer is made of besides its journal entry, kept in the
//! durable idempotency record instead of the rendered JSON.
//!
//! A debit's answer is ~750 bytes of JSON, most of it the balance after the
//! charge; with one record per keyed charge (every batch item has a key) the
//! records were most of the bytes each group commit wrote. The memo is the
//! entry's id and the balance's numbers (~60-120 bytes); a replay reads the
//! entry back from the journal and renders the same bytes again
//! ([`crate::render::debit_from_memo`]). Other answers stay JSON.
//!
//! A memo starts with a zero byte, which JSON never does.

use purser_core::{
    AccountHandle, Balance, BudgetBalance, CreditSum, Credits, KindBalance, Timestamp,
};

const MARKER: u8 = 0;
const VERSION: u8 = 1;

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
}

/// Whether a remembered answer is a memo (else it is the answer's JSON).
pub fn is_memo(body: &[u8]) -> bool {
    body.first() == Some(&MARKER)
}

impl DebitMemo {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend([MARKER, VERSION]);
        varint(&mut out, self.account.raw().into());
        varint(&mut out, self.seq.into());
        text(&mut out, &self.id);
        text(&mut out, &self.tier);
        match &self.pending_tier {
            None => out.push(0),
            Some(tier) => {
                out.push(1);
                text(&mut out, tier);
            }
        }
        let b = &self.balance;
        for sum in [b.available, b.held] {
            signed(&mut out, sum.micros());
        }
        varint(&mut out, b.debt.micros().into());
        for sum in [
            b.budget.granted,
            b.budget.used,
            b.budget.held,
            b.budget.available,
        ] {
            signed(&mut out, sum.micros());
        }
        for at in [b.budget.period_start, b.budget.period_end] {
            signed(&mut out, at.micros().into());
        }
        for kind in [b.rollover, b.packages, b.promo] {
            signed(&mut out, kind.available.micros());
            signed(&mut out, kind.held.micros());
        }
        out
    }

    /// `None` for anything [`DebitMemo::encode`] did not write.
    pub fn decode(bytes: &[u8]) -> Option<DebitMemo> {
        let mut input = Reader(bytes);
        if input.byte()? != MARKER || input.byte()? != VERSION {
            return None;
        }
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
        })
    }
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
            sums in proptest::array::uniform6(sum()),
            debt in 0u64..=Credits::MAX.micros(),
            times in (any::<i64>(), any::<i64>()),
            kinds in (kind(), kind(), kind()),
        ) {
            let memo = DebitMemo {
                account: AccountHandle::from_raw(raw),
                seq,
                id,
                tier,
                pending_tier: pending,
                balance: Balance {
                    available: sums[0],
                    held: sums[1],
                    debt: Credits::from_micros(debt).unwrap(),
                    budget: BudgetBalance {
                        granted: sums[2],
                        used: sums[3],
                        held: sums[4],
                        available: sums[5],
                        period_start: Timestamp::from_micros(times.0),
                        period_end: Timestamp::from_micros(times.1),
                    },
                    rollover: kinds.0,
                    packages: kinds.1,
                    promo: kinds.2,
                },
            };
            let bytes = memo.encode();
            prop_assert!(is_memo(&bytes));
            prop_assert_eq!(DebitMemo::decode(&bytes), Some(memo));
            // Cut short or with bytes to spare, it is refused, never misread.
            prop_assert_eq!(DebitMemo::decode(&bytes[..bytes.len() - 1]), None);
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert_eq!(DebitMemo::decode(&longer), None);
        }
    }

    #[test]
    fn json_is_never_a_memo() {
        assert!(!is_memo(br#"{"object":"debit"}"#));
        assert!(!is_memo(b""));
        assert_eq!(DebitMemo::decode(br#"{"object":"debit"}"#), None);
    }
}
