//! The checked journal: what makes damage in a store detectable.
//!
//! Every stored entry carries a checksum of its account, sequence number and
//! encoded bytes ([`entry_sum`]); the last entry of every group commit
//! carries a chain hash over the previous commit's chain hash, the commit's
//! first position and its entries' checksums in order ([`chain_hash`]), as
//! TigerBeetle hash-chains its log. Idempotency records carry a checksum too
//! ([`record_sum`]), with the journal position their commit ended at.
//!
//! [`JournalCheck`] reads the stored rows in commit order and finds what a
//! checksum, the chain, the positions and the accounts' sequence numbers
//! can show: flipped bytes, rows missing or moved, a commit cut short. A
//! commit cut off at the end leaves a valid chain, so the end is also held
//! against every other witness a store has of how far it once reached
//! ([`Witness`]: snapshots, idempotency records, a derived index). Anything
//! found is [`Damage`]; recovery refuses to serve from a damaged store.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use purser_core::AccountHandle;

use crate::{IdempotencyRecord, LegacyRecord};

/// A commit's chain hash.
pub type ChainHash = [u8; 32];

/// The chain hash "before the first commit".
pub const GENESIS: ChainHash = [0; 32];

/// The checksum of one stored entry: XXH3-64 of its encoded body, seeded
/// with XXH3-64 of its account and sequence number (so a row moved to
/// another account or position fails too). A non-cryptographic checksum is
/// enough to catch what storage does to bytes; each commit's chain hash over
/// the checksums is BLAKE3. (BLAKE3 per entry cost 208 ns, XXH3 about a
/// tenth: BENCHMARKS.md.)
pub fn entry_sum(account: u64, seq: u64, body: &[u8]) -> i64 {
    placed_sum(ENTRY_DOMAIN, account, seq, body)
}

/// XXH3-64 of `body`, seeded with XXH3-64 of where it is stored (`owner`,
/// `place`) in `domain`: the same bytes stored elsewhere fail their check.
fn placed_sum(domain: u64, owner: u64, place: u64, body: &[u8]) -> i64 {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&owner.to_le_bytes());
    key[8..].copy_from_slice(&place.to_le_bytes());
    let seed = xxhash_rust::xxh3::xxh3_64_with_seed(&key, domain);
    xxhash_rust::xxh3::xxh3_64_with_seed(body, seed) as i64
}

/// Keeps entry checksums apart from any other use of XXH3.
const ENTRY_DOMAIN: u64 = 0x7075_7273_6572_0e01;

/// The chain hash of a group commit whose entries start at `first_pos`.
pub fn chain_hash(
    previous: &ChainHash,
    first_pos: u64,
    sums: impl IntoIterator<Item = i64>,
) -> ChainHash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"purser.commit.v1");
    hasher.update(previous);
    hasher.update(&first_pos.to_le_bytes());
    for sum in sums {
        hasher.update(&sum.to_le_bytes());
    }
    *hasher.finalize().as_bytes()
}

/// The checksum of an idempotency record stored with a commit that ended
/// the journal at `pos` (XXH3-64 over every field, lengths included).
/// 31 bits: enough to find damage, and four bytes in SQLite's integers.
/// The checksum of a stored event (its id is part of it: a body moved to
/// another event's row fails).
pub fn event_sum(event: &crate::EventRecord) -> i64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(EVENT_DOMAIN);
    hasher.update(&event.id.account.raw().to_le_bytes());
    hasher.update(&event.id.seq.to_le_bytes());
    hasher.update(&[event.id.rank]);
    hasher.update(&(event.account.len() as u64).to_le_bytes());
    hasher.update(event.account.as_bytes());
    hasher.update(event.kind.name().as_bytes());
    hasher.update(&event.at.micros().to_le_bytes());
    hasher.update(&(event.body.len() as u64).to_le_bytes());
    hasher.update(&event.body);
    (hasher.digest() & 0x7fff_ffff) as i64
}

/// The checksum of an idempotency record stored with a commit that ended
/// the journal at `pos`: over what is stored (the expiry in seconds).
pub fn record_sum(record: &IdempotencyRecord, pos: u64) -> i64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(RECORD_DOMAIN);
    hasher.update(&record.key);
    hasher.update(&record.fingerprint);
    hasher.update(&record.status.to_le_bytes());
    hasher.update(&(record.body.len() as u64).to_le_bytes());
    hasher.update(&record.body);
    hasher.update(&record.expires_seconds().to_le_bytes());
    hasher.update(&pos.to_le_bytes());
    (hasher.digest() & 0x7fff_ffff) as i64
}

/// The checksum a migration gives a record that failed its old one: no
/// record sum is negative, so it never matches, and the record stays
/// refused on its own, as it was before the migration.
pub const DAMAGED_SUM: i64 = -1;

/// The checksum a [`LegacyRecord`] was stored with (SQLite schemas 7 to
/// 9, PostgreSQL 5 to 7):
/// checked once more when it is stored anew.
pub fn legacy_record_sum(record: &LegacyRecord, pos: u64) -> i64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(KEY_DOMAIN);
    hasher.update(&record.key);
    hasher.update(&record.fingerprint);
    hasher.update(&record.status.to_le_bytes());
    hasher.update(&(record.body.len() as u64).to_le_bytes());
    hasher.update(&record.body);
    hasher.update(&record.expires_at.micros().to_le_bytes());
    hasher.update(&pos.to_le_bytes());
    (hasher.digest() & 0x7fff_ffff) as i64
}

/// The checksum schema version 6 gave an idempotency record, when records
/// kept their key's text and a 32-byte fingerprint (`fingerprint`, as
/// stored then): checked once more when migration 7 replaces them by the
/// key's [`key_hash`] and the fingerprint's first 16 bytes.
pub fn record_sum_with_text(record: &LegacyRecord, key: &str, fingerprint: &[u8], pos: u64) -> i64 {
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(KEY_DOMAIN);
    hasher.update(&(key.len() as u64).to_le_bytes());
    hasher.update(key.as_bytes());
    hasher.update(fingerprint);
    hasher.update(&record.status.to_le_bytes());
    hasher.update(&(record.body.len() as u64).to_le_bytes());
    hasher.update(&record.body);
    hasher.update(&record.expires_at.micros().to_le_bytes());
    hasher.update(&pos.to_le_bytes());
    hasher.digest() as i64
}

/// An idempotency key as stored and looked up: the first 16 bytes of its
/// BLAKE3 hash (in a key-only domain). Its text is never stored.
pub fn key_hash(key: &str) -> purser_core::KeyHash {
    let mut hasher = blake3::Hasher::new_derive_key("purser 2026 idempotency key");
    hasher.update(key.as_bytes());
    let mut out = [0; 16];
    out.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
    out
}

/// Keeps idempotency record checksums apart from entry checksums (records
/// as stored before SQLite schema 8 and PostgreSQL 6).
const KEY_DOMAIN: u64 = 0x7075_7273_6572_0e02;

/// Keeps the checksums of records as they are stored now apart from the rest.
const RECORD_DOMAIN: u64 = 0x7075_7273_6572_0e05;

/// Keeps event checksums apart from the others.
const EVENT_DOMAIN: u64 = 0x7075_7273_6572_0e04;

/// The checksum of a partition snapshot taken at journal position `position`.
pub fn snapshot_sum(partition: u16, position: u64, body: &[u8]) -> i64 {
    placed_sum(SNAPSHOT_DOMAIN, u64::from(partition), position, body)
}

/// The checksum of one stored version of a settled object: over the
/// account, its sequence number, the version (`as_of`) and the bytes, so a
/// row moved to another object or version fails it too.
pub fn settled_sum(account: u64, seq: u64, as_of: u64, body: &[u8]) -> i64 {
    let mut place = [0u8; 16];
    place[..8].copy_from_slice(&seq.to_le_bytes());
    place[8..].copy_from_slice(&as_of.to_le_bytes());
    let seed = xxhash_rust::xxh3::xxh3_64_with_seed(&place, SETTLED_DOMAIN);
    placed_sum(seed, account, seq, body)
}

/// Keeps settled objects' checksums apart from the others.
const SETTLED_DOMAIN: u64 = 0x7075_7273_6572_0e06;

/// Keeps snapshot checksums apart from the others.
const SNAPSHOT_DOMAIN: u64 = 0x7075_7273_6572_0e03;

/// The sums and the chain hash of a commit of `bodies` (account, seq, encoded
/// entry) appended after position `last` whose chain hash was `previous`.
pub fn seal(
    previous: &ChainHash,
    last: u64,
    rows: impl IntoIterator<Item = (u64, u64, impl AsRef<[u8]>)>,
) -> (Vec<i64>, ChainHash) {
    let sums: Vec<i64> = rows
        .into_iter()
        .map(|(account, seq, body)| entry_sum(account, seq, body.as_ref()))
        .collect();
    let chain = chain_hash(previous, last + 1, sums.iter().copied());
    (sums, chain)
}

/// One journal row as a store holds it, before it is decoded.
#[derive(Clone, Copy, Debug)]
pub struct StoredRow<'a> {
    pub pos: u64,
    pub account: u64,
    pub seq: u64,
    pub body: &'a [u8],
    pub sum: i64,
    /// Present on the last row of each group commit.
    pub chain: Option<&'a [u8]>,
}

/// Evidence outside the journal of how far it once reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Witness {
    /// What holds the evidence, e.g. `history.db`.
    pub what: String,
    /// The journal position it says was committed.
    pub position: u64,
    /// What it says is lost, when it knows (the first few).
    pub lost: Vec<Lost>,
    /// How many more it says are lost.
    pub more: u64,
}

/// An entry a witness says was committed and the journal no longer holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    pub account: u64,
    pub seq: u64,
    pub pos: u64,
    /// The entry's type.
    pub kind: String,
}

impl fmt::Display for Lost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "account {} entry {} ({}, position {})",
            account_name(self.account),
            self.seq,
            self.kind,
            self.pos
        )
    }
}

/// Something wrong with a stored journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// Positions missing from the journal.
    Gap { after: u64, next: u64 },
    /// A row's bytes do not match its checksum.
    Checksum { pos: u64, account: u64, seq: u64 },
    /// A commit does not chain to the one before it: rows of it or of an
    /// earlier commit were changed, removed or moved.
    Chain { pos: u64 },
    /// A row's sequence number breaks its account's gapless order.
    Sequence {
        pos: u64,
        account: u64,
        expected: u64,
        found: u64,
    },
    /// A row whose checksum holds but does not decode or apply.
    Entry { pos: u64, detail: String },
    /// Rows after the journal's last complete commit: a commit cut short.
    Incomplete { from: u64, to: u64 },
    /// A witness says the journal once reached further: acknowledged
    /// commits are lost.
    Lost { end: u64, witness: Witness },
    /// A stored structure other than the journal is damaged (a snapshot,
    /// an idempotency record, the history index).
    Structure { what: String, detail: String },
}

impl Damage {
    /// The accounts (raw handles) this finding names.
    pub fn accounts(&self) -> Vec<u64> {
        match self {
            Damage::Checksum { account, .. } | Damage::Sequence { account, .. } => vec![*account],
            Damage::Lost { witness, .. } => witness.lost.iter().map(|l| l.account).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether this is the loss of the journal's end (what an operator may
    /// accept and serve on from), rather than damage inside it.
    pub fn is_tail_loss(&self) -> bool {
        matches!(self, Damage::Lost { .. } | Damage::Incomplete { .. })
    }
}

fn account_name(raw: u64) -> String {
    format!("{:?}", AccountHandle::from_raw(raw))
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::Gap { after, next } => write!(
                f,
                "journal positions {} to {} are missing (the rows after {after} resume at {next})",
                after + 1,
                next - 1
            ),
            Damage::Checksum { pos, account, seq } => write!(
                f,
                "journal position {pos} (account {}, entry {seq}): the stored bytes do not match their checksum",
                account_name(*account)
            ),
            Damage::Chain { pos } => write!(
                f,
                "the commit ending at journal position {pos} does not chain to the commit before it: rows were changed, removed or moved"
            ),
            Damage::Sequence {
                pos,
                account,
                expected,
                found,
            } => write!(
                f,
                "journal position {pos}: account {} has entry {found} where entry {expected} was due",
                account_name(*account)
            ),
            Damage::Entry { pos, detail } => write!(f, "journal position {pos}: {detail}"),
            Damage::Incomplete { from, to } => write!(
                f,
                "journal positions {from} to {to} are a commit cut short (its last rows are missing)"
            ),
            Damage::Lost { end, witness } => {
                write!(
                    f,
                    "acknowledged commits are lost: {} says the journal reached position {}, it ends at {end}",
                    witness.what, witness.position
                )?;
                if !witness.lost.is_empty() {
                    let lost: Vec<String> = witness.lost.iter().map(ToString::to_string).collect();
                    write!(f, "; lost: {}", lost.join(", "))?;
                }
                if witness.more > 0 {
                    write!(f, " and {} more", witness.more)?;
                }
                Ok(())
            }
            Damage::Structure { what, detail } => write!(f, "{what}: {detail}"),
        }
    }
}

/// Everything found wrong with a store, and where its journal ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DamageReport {
    /// The last position of the last complete, checked commit.
    pub end: u64,
    pub damage: Vec<Damage>,
    /// The ids of the accounts the findings name (by raw handle), where
    /// known: findings name accounts by handle (`partition/index`).
    pub names: BTreeMap<u64, String>,
}

impl DamageReport {
    /// Fills [`DamageReport::names`] for every account the findings name.
    pub fn name_accounts(&mut self, name: impl Fn(u64) -> Option<String>) {
        let accounts: Vec<u64> = self.damage.iter().flat_map(Damage::accounts).collect();
        for account in accounts {
            if let Some(id) = name(account) {
                self.names.insert(account, id);
            }
        }
    }

    /// The line naming the accounts, if any are known.
    pub fn names_line(&self) -> Option<String> {
        if self.names.is_empty() {
            return None;
        }
        let names: Vec<String> = self
            .names
            .iter()
            .map(|(raw, id)| format!("{} is {id:?}", account_name(*raw)))
            .collect();
        Some(format!("accounts named above: {}", names.join(", ")))
    }

    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }

    /// Whether everything found is loss at the journal's end: an operator
    /// may accept it and serve from the journal as it ends.
    pub fn is_tail_loss_only(&self) -> bool {
        !self.damage.is_empty() && self.damage.iter().all(Damage::is_tail_loss)
    }
}

impl fmt::Display for DamageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} problem(s) found; the journal's last complete commit ends at position {}:",
            self.damage.len(),
            self.end
        )?;
        for damage in &self.damage {
            writeln!(f, "  - {damage}")?;
        }
        if let Some(names) = self.names_line() {
            writeln!(f, "{names}")?;
        }
        if self.is_tail_loss_only() {
            write!(
                f,
                "Restore a backup (`purser restore`), or accept the loss of the commits after position {} and serve on (`purser serve --accept-loss`, recorded in the store).",
                self.end
            )
        } else {
            write!(
                f,
                "Restore a backup (`purser restore`): damage inside the journal cannot be accepted."
            )
        }
    }
}

/// At most this many findings are kept (a badly damaged store would
/// otherwise report every row); the count of the rest is kept.
const MAX_FINDINGS: usize = 1_000;

/// Checks stored rows as they are read in commit order.
#[derive(Debug)]
pub struct JournalCheck {
    last_pos: u64,
    chain: ChainHash,
    /// Sums of the rows since the last commit end.
    pending: Vec<i64>,
    pending_first: u64,
    /// The last position of the last complete commit.
    end: u64,
    next_seq: HashMap<u64, u64>,
    damage: Vec<Damage>,
    more: u64,
    /// Positions that must be commit ends (the snapshots'), and which were.
    boundaries: HashMap<u64, bool>,
    /// Commit ends whose chain hash a witness recorded (`purser.end`), and
    /// whether they were reached.
    checkpoints: HashMap<u64, (ChainHash, bool)>,
    rows: u64,
}

impl Default for JournalCheck {
    fn default() -> Self {
        JournalCheck::new(Vec::new())
    }
}

impl JournalCheck {
    /// A check of a journal from its start; `boundaries` are positions that
    /// must be commit ends (where snapshots were taken).
    pub fn new(boundaries: Vec<u64>) -> JournalCheck {
        JournalCheck {
            last_pos: 0,
            chain: GENESIS,
            pending: Vec::new(),
            pending_first: 1,
            end: 0,
            next_seq: HashMap::new(),
            damage: Vec::new(),
            more: 0,
            boundaries: boundaries.into_iter().map(|p| (p, p == 0)).collect(),
            checkpoints: HashMap::new(),
            rows: 0,
        }
    }

    /// Adds commit ends whose chain hash is known from outside the journal
    /// (the store's `checkpoints`): a journal that does not have that hash
    /// there is not the journal that witness was written with (a file from
    /// another store, or an older copy).
    pub fn with_checkpoints(mut self, checkpoints: Vec<(u64, ChainHash)>) -> JournalCheck {
        self.checkpoints = checkpoints
            .into_iter()
            .filter(|(position, _)| *position > 0)
            .map(|(position, chain)| (position, (chain, false)))
            .collect();
        self
    }

    pub fn found(&mut self, damage: Damage) {
        if self.damage.len() < MAX_FINDINGS {
            self.damage.push(damage);
        } else {
            self.more += 1;
        }
    }

    /// Whether anything has been found so far.
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty()
    }

    /// Rows checked so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Checks the next row; returns whether the row itself is sound (its
    /// checksum and sequence number hold), i.e. whether it may be decoded.
    pub fn row(&mut self, row: &StoredRow<'_>) -> bool {
        self.rows += 1;
        let mut sound = true;
        if row.pos != self.last_pos + 1 {
            if row.pos <= self.last_pos {
                self.found(Damage::Structure {
                    what: "journal".into(),
                    detail: format!(
                        "position {} read after position {}: rows out of order",
                        row.pos, self.last_pos
                    ),
                });
                return false;
            }
            self.found(Damage::Gap {
                after: self.last_pos,
                next: row.pos,
            });
            // The commit in progress lost rows: its chain cannot hold, and
            // that is the same finding.
            self.pending.clear();
            self.pending_first = row.pos;
        }
        self.last_pos = row.pos;
        if entry_sum(row.account, row.seq, row.body) != row.sum {
            self.found(Damage::Checksum {
                pos: row.pos,
                account: row.account,
                seq: row.seq,
            });
            sound = false;
        }
        let expected = self.next_seq.entry(row.account).or_insert(0);
        if row.seq != *expected {
            let found = Damage::Sequence {
                pos: row.pos,
                account: row.account,
                expected: *expected,
                found: row.seq,
            };
            *expected = row.seq + 1;
            self.found(found);
            sound = false;
        } else {
            *expected += 1;
        }
        if self.pending.is_empty() {
            self.pending_first = row.pos;
        }
        self.pending.push(row.sum);
        if let Some(stored) = row.chain {
            let computed = chain_hash(
                &self.chain,
                self.pending_first,
                self.pending.iter().copied(),
            );
            if stored != computed {
                self.found(Damage::Chain { pos: row.pos });
            }
            // Later commits are checked against what is stored, so one
            // broken link is one finding (a stored hash of the wrong length
            // is replaced by the computed one, for the same reason).
            self.chain = <ChainHash>::try_from(stored).unwrap_or(computed);
            self.pending.clear();
            self.end = row.pos;
            if let Some(seen) = self.boundaries.get_mut(&row.pos) {
                *seen = true;
            }
            let mismatch = match self.checkpoints.get_mut(&row.pos) {
                Some((expected, seen)) => {
                    *seen = true;
                    *expected != self.chain
                }
                None => false,
            };
            if mismatch {
                self.found(Damage::Structure {
                    what: "the journal".into(),
                    detail: format!(
                        "the commit ending at position {} is not the one the end marker recorded: this journal is not the one the marker was written with (another store's file, or an older copy)",
                        row.pos
                    ),
                });
            }
        }
        sound
    }

    /// The chain hash of the last complete commit.
    pub fn chain(&self) -> ChainHash {
        self.chain
    }

    /// The last position of the last complete commit.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Ends the check: rows after the last commit end are a commit cut
    /// short; snapshot positions must have been commit ends; each witness
    /// must not be ahead of the journal.
    pub fn finish(mut self, witnesses: Vec<Witness>) -> DamageReport {
        if self.last_pos > self.end {
            self.found(Damage::Incomplete {
                from: self.end + 1,
                to: self.last_pos,
            });
        }
        let mut unreached: Vec<u64> = std::mem::take(&mut self.checkpoints)
            .into_iter()
            .filter(|(position, (_, seen))| !seen && *position <= self.end)
            .map(|(position, _)| position)
            .collect();
        unreached.sort_unstable();
        for position in unreached {
            self.found(Damage::Structure {
                what: "the journal".into(),
                detail: format!(
                    "position {position}, where the end marker recorded a commit end, ends no commit: this journal is not the one the marker was written with"
                ),
            });
        }
        let mut boundaries: Vec<(u64, bool)> =
            std::mem::take(&mut self.boundaries).into_iter().collect();
        boundaries.sort_unstable();
        for (position, seen) in boundaries {
            if !seen && position <= self.end {
                self.found(Damage::Structure {
                    what: "a partition snapshot".into(),
                    detail: format!("taken at position {position}, which ends no commit"),
                });
            }
        }
        for witness in witnesses {
            if witness.position > self.end {
                let end = self.end;
                self.found(Damage::Lost { end, witness });
            }
        }
        if self.more > 0 {
            let more = self.more;
            self.damage.push(Damage::Structure {
                what: "the report".into(),
                detail: format!("{more} more problems not listed"),
            });
        }
        DamageReport {
            end: self.end,
            damage: self.damage,
            names: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stored row: position, account, seq, body, sum, chain.
    type Row = (u64, u64, u64, Vec<u8>, i64, Option<ChainHash>);

    /// A journal of `commits` commits of `per` rows each on two accounts.
    fn journal(commits: u64, per: u64) -> Vec<Row> {
        let mut rows = Vec::new();
        let mut chain = GENESIS;
        let mut seqs = [0u64; 2];
        let mut pos = 0;
        for commit in 0..commits {
            let bodies: Vec<(u64, u64, Vec<u8>)> = (0..per)
                .map(|i| {
                    let account = (commit + i) % 2;
                    let seq = seqs[account as usize];
                    seqs[account as usize] += 1;
                    (account + 1, seq, vec![commit as u8, i as u8, 7])
                })
                .collect();
            let (sums, next) = seal(&chain, pos, bodies.iter().map(|(a, s, b)| (*a, *s, b)));
            for (i, ((account, seq, body), sum)) in bodies.into_iter().zip(sums).enumerate() {
                pos += 1;
                let last = i as u64 == per - 1;
                rows.push((pos, account, seq, body, sum, last.then_some(next)));
            }
            chain = next;
        }
        rows
    }

    fn check(rows: &[Row], witnesses: Vec<Witness>) -> DamageReport {
        let mut check = JournalCheck::new(Vec::new());
        for (pos, account, seq, body, sum, chain) in rows {
            check.row(&StoredRow {
                pos: *pos,
                account: *account,
                seq: *seq,
                body,
                sum: *sum,
                chain: chain.as_ref().map(|c| &c[..]),
            });
        }
        check.finish(witnesses)
    }

    #[test]
    fn a_sound_journal_is_clean() {
        let rows = journal(5, 3);
        let report = check(&rows, Vec::new());
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.end, 15);
    }

    #[test]
    fn a_flipped_byte_fails_its_checksum() {
        let mut rows = journal(5, 3);
        rows[4].3[1] ^= 1;
        let report = check(&rows, Vec::new());
        assert_eq!(
            report.damage,
            vec![Damage::Checksum {
                pos: 5,
                account: rows[4].1,
                seq: rows[4].2
            }]
        );
    }

    #[test]
    fn a_row_removed_inside_is_a_gap_and_a_broken_sequence() {
        let mut rows = journal(5, 3);
        rows.remove(7);
        let report = check(&rows, Vec::new());
        assert!(
            matches!(report.damage[0], Damage::Gap { after: 7, next: 9 }),
            "{report}"
        );
        assert!(
            report
                .damage
                .iter()
                .any(|d| matches!(d, Damage::Sequence { .. })),
            "{report}"
        );
        assert!(!report.is_tail_loss_only());
    }

    #[test]
    fn a_commit_rewritten_with_fresh_checksums_breaks_the_chain() {
        let mut rows = journal(5, 3);
        rows[4].3 = vec![9, 9, 9];
        rows[4].4 = entry_sum(rows[4].1, rows[4].2, &rows[4].3);
        let report = check(&rows, Vec::new());
        assert_eq!(report.damage, vec![Damage::Chain { pos: 6 }]);
    }

    #[test]
    fn a_commit_cut_short_at_the_end_is_incomplete() {
        let mut rows = journal(5, 3);
        rows.pop();
        let report = check(&rows, Vec::new());
        assert_eq!(report.damage, vec![Damage::Incomplete { from: 13, to: 14 }]);
        assert_eq!(report.end, 12);
        assert!(report.is_tail_loss_only());
    }

    #[test]
    fn a_journal_cut_at_a_commit_end_is_caught_by_a_witness_ahead() {
        let rows = journal(5, 3);
        let witness = |position| Witness {
            what: "history.db".into(),
            position,
            lost: Vec::new(),
            more: 0,
        };
        let report = check(&rows[..9], vec![witness(15), witness(9)]);
        assert_eq!(
            report.damage,
            vec![Damage::Lost {
                end: 9,
                witness: witness(15)
            }]
        );
        assert!(report.is_tail_loss_only());
        assert!(report.to_string().contains("reached position 15"));
    }

    #[test]
    fn a_checkpoint_must_match_the_journal() {
        let rows = journal(3, 2);
        let chain_at = |pos: u64| rows[pos as usize - 1].5.unwrap();
        let run = |checkpoints: Vec<(u64, ChainHash)>| {
            let mut check = JournalCheck::new(Vec::new()).with_checkpoints(checkpoints);
            for (pos, account, seq, body, sum, chain) in &rows {
                check.row(&StoredRow {
                    pos: *pos,
                    account: *account,
                    seq: *seq,
                    body,
                    sum: *sum,
                    chain: chain.as_ref().map(|c| &c[..]),
                });
            }
            check.finish(Vec::new())
        };
        assert!(run(vec![(4, chain_at(4))]).is_clean());
        let other = run(vec![(4, chain_at(2))]);
        assert!(
            other
                .to_string()
                .contains("not the one the end marker recorded"),
            "{other}"
        );
        let inside = run(vec![(3, chain_at(4))]);
        assert!(inside.to_string().contains("ends no commit"), "{inside}");
    }

    #[test]
    fn a_snapshot_inside_a_commit_is_refused() {
        let rows = journal(2, 3);
        let mut check = JournalCheck::new(vec![3, 4]);
        for (pos, account, seq, body, sum, chain) in &rows {
            check.row(&StoredRow {
                pos: *pos,
                account: *account,
                seq: *seq,
                body,
                sum: *sum,
                chain: chain.as_ref().map(|c| &c[..]),
            });
        }
        let report = check.finish(Vec::new());
        assert_eq!(report.damage.len(), 1, "{report}");
        assert!(
            report
                .to_string()
                .contains("position 4, which ends no commit")
        );
    }
}
