//! A group commit's rows as columns, for one `INSERT … SELECT FROM
//! unnest(…)` each: entries (with their usage facts, checksums and the
//! commit's chain hash), idempotency records and events.

use purser_core::Entry;
use purser_store::{ChainHash, EventRecord, IdempotencyRecord, encode_entry, record_sum, usage_of};

/// The columns of a batch of entries, for one `unnest` insert.
#[derive(Default)]
pub(crate) struct Columns {
    pub(crate) account: Vec<i64>,
    pub(crate) seq: Vec<i64>,
    pub(crate) pos: Vec<i64>,
    pub(crate) kind: Vec<&'static str>,
    pub(crate) at: Vec<i64>,
    pub(crate) body: Vec<Vec<u8>>,
    pub(crate) task: Vec<Option<String>>,
    pub(crate) member: Vec<Option<String>>,
    pub(crate) credits: Vec<Option<i64>>,
    pub(crate) parts: [Vec<Option<i64>>; 5],
    pub(crate) debit_seq: Vec<Option<i64>>,
    pub(crate) sum: Vec<i64>,
    /// The chain hash, on the last entry only.
    pub(crate) chain: Vec<Option<Vec<u8>>>,
}

/// The columns of a batch of idempotency records, for one `unnest` insert.
pub(crate) struct KeyColumns<'a> {
    pub(crate) keys: Vec<&'a [u8]>,
    pub(crate) prints: Vec<&'a [u8]>,
    pub(crate) statuses: Vec<i32>,
    pub(crate) bodies: Vec<&'a [u8]>,
    pub(crate) expiries: Vec<i64>,
    pub(crate) sums: Vec<i64>,
}

impl<'a> KeyColumns<'a> {
    /// The records of a commit that ends the journal at `pos`.
    pub(crate) fn of(records: &'a [IdempotencyRecord], pos: i64) -> KeyColumns<'a> {
        KeyColumns {
            sums: records.iter().map(|r| record_sum(r, pos as u64)).collect(),
            keys: records.iter().map(|r| &r.key[..]).collect(),
            prints: records.iter().map(|r| &r.fingerprint[..]).collect(),
            statuses: records.iter().map(|r| i32::from(r.status)).collect(),
            bodies: records.iter().map(|r| r.body.as_slice()).collect(),
            expiries: records.iter().map(|r| r.expires_seconds()).collect(),
        }
    }
}

impl Columns {
    /// The columns of `entries` appended after position `last`, whose chain
    /// hash is `previous`; with the commit's own chain hash.
    pub(crate) fn of(entries: &[Entry], last: i64, previous: &ChainHash) -> (Columns, ChainHash) {
        let first_pos = last + 1;
        let mut columns = Columns::default();
        for (offset, entry) in entries.iter().enumerate() {
            let mut body = Vec::with_capacity(128);
            encode_entry(entry, &mut body);
            let usage = usage_of(entry);
            columns.account.push(entry.account.raw() as i64);
            columns.seq.push(entry.seq as i64);
            columns.pos.push(first_pos + offset as i64);
            columns.kind.push(entry.body.type_name());
            columns.at.push(entry.at.micros());
            columns.body.push(body);
            columns
                .task
                .push(usage.as_ref().and_then(|u| u.task.clone()));
            columns
                .member
                .push(usage.as_ref().and_then(|u| u.member.clone()));
            columns.credits.push(usage.as_ref().map(|u| u.credits));
            for (index, part) in columns.parts.iter_mut().enumerate() {
                part.push(usage.as_ref().map(|u| u.by_kind[index]));
            }
            columns.debit_seq.push(
                usage
                    .as_ref()
                    .filter(|u| !u.is_charge)
                    .map(|u| u.charge_seq as i64),
            );
        }
        let (sums, chain) = purser_store::seal(
            previous,
            last as u64,
            entries
                .iter()
                .zip(&columns.body)
                .map(|(entry, body)| (entry.account.raw(), entry.seq, body)),
        );
        columns.sum = sums;
        columns.chain = vec![None; entries.len()];
        if let Some(slot) = columns.chain.last_mut() {
            *slot = Some(chain.to_vec());
        }
        (columns, chain)
    }
}

/// A commit's events as the columns of an `unnest`.
pub(crate) struct EventColumns<'a> {
    pub(crate) account: Vec<i64>,
    pub(crate) seq: Vec<i64>,
    pub(crate) rank: Vec<i32>,
    pub(crate) account_id: Vec<&'a str>,
    pub(crate) kind: Vec<&'a str>,
    pub(crate) at: Vec<i64>,
    pub(crate) body: Vec<&'a [u8]>,
    pub(crate) sum: Vec<i64>,
}

impl<'a> EventColumns<'a> {
    pub(crate) fn of(events: &'a [EventRecord]) -> EventColumns<'a> {
        EventColumns {
            account: events.iter().map(|e| e.id.account.raw() as i64).collect(),
            seq: events.iter().map(|e| e.id.seq as i64).collect(),
            rank: events.iter().map(|e| i32::from(e.id.rank)).collect(),
            account_id: events.iter().map(|e| e.account.as_str()).collect(),
            kind: events.iter().map(|e| e.kind.name()).collect(),
            at: events.iter().map(|e| e.at.micros()).collect(),
            body: events.iter().map(|e| &e.body[..]).collect(),
            sum: events.iter().map(purser_store::event_sum).collect(),
        }
    }
}
