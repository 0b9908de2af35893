//! What the crash and failover tests share about charges and the ledger:
//! the charges sent, what the ledger must hold, reading the journal back
//! and checking it against them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use purser_client::{Charge, Client, ClientError, Cost, NewAccount, Reply};

use super::{ADMIN_KEY, Rng, ServerProcess};

/// Journal entries asked for per page.
const PAGE_LIMIT: usize = 100;

/// An admin client for `server`: a fresh one per server process, so no
/// pooled connection to a dead one.
pub fn admin(server: &ServerProcess, timeout: Duration) -> Client {
    Client::new(&server.base, ADMIN_KEY).with_timeout(timeout)
}

/// Creates the business account `id`.
pub async fn open_account(client: &Client, id: &str) {
    let account = NewAccount {
        id: id.into(),
        tier: "business".into(),
        name: None,
        anchor: None,
    };
    expect_status(client.create_account(&account).await, 201, "create account");
}

pub fn expect_status(reply: Result<Reply, ClientError>, status: u16, what: &str) -> Reply {
    let reply = reply.unwrap_or_else(|error| panic!("{what}: {error}"));
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    reply
}

/// One charge as sent: retrying it sends exactly the same request.
#[derive(Clone, Debug)]
pub struct Sent {
    pub key: String,
    pub account: &'static str,
    pub credits_micros: i128,
}

impl Sent {
    /// A charge of 0.001 to 0.5 credits to one of `accounts`.
    pub fn random(rng: &mut Rng, key: String, accounts: &[&'static str]) -> Sent {
        Sent {
            key,
            account: accounts[rng.range(0, accounts.len() as u64 - 1) as usize],
            // 0.001 to 0.5 credits.
            credits_micros: i128::from(rng.range(1, 500)) * 1_000,
        }
    }

    pub fn charge(&self) -> Charge {
        Charge::new(Cost::credits(format_micros(self.credits_micros)))
    }
}

/// What the test knows the ledger must hold.
#[derive(Debug, Default)]
pub struct Expected {
    /// Debit id → the charge it answers (acknowledged, or recovered by a retry).
    pub debits: HashMap<String, Sent>,
    /// Charges whose outcome is unknown until they are retried.
    pub unknown: Vec<Sent>,
    /// Charges acknowledged after a failed attempt, with their debits.
    pub retried: Vec<(Sent, String)>,
}

impl Expected {
    pub fn acknowledge(&mut self, sent: Sent, debit: String) {
        assert!(
            debit.starts_with("deb_"),
            "a 201 without a debit id: {sent:?}"
        );
        if let Some(other) = self.debits.get(&debit) {
            panic!("debit {debit} was answered to two different charges: {other:?} and {sent:?}");
        }
        self.debits.insert(debit, sent);
    }
}

/// A debit as the journal lists it.
#[derive(Clone, Debug)]
pub struct LedgerDebit {
    pub account: &'static str,
    pub credits_micros: i128,
    /// When it was committed (`created_at`), in microseconds since 1970.
    pub at_micros: i64,
}

/// Every debit of `accounts`, read through the transaction list (at most
/// `max_pages` pages an account); no debit may be listed twice.
pub async fn ledger_debits(
    client: &Client,
    accounts: &[&'static str],
    max_pages: usize,
) -> BTreeMap<String, LedgerDebit> {
    let mut debits = BTreeMap::new();
    for &account in accounts {
        for entry in journal(client, account, "debit", max_pages).await {
            let id = entry["debit"]
                .as_str()
                .expect("a debit entry names its debit");
            let credits_micros = -parse_micros(entry["credits"].as_str().expect("credits"));
            let created_at = entry["created_at"].as_str().expect("created_at");
            let at_micros = purser_core::Timestamp::parse_rfc3339(created_at)
                .unwrap_or_else(|| panic!("created_at {created_at:?} is not RFC 3339"))
                .micros();
            let debit = LedgerDebit {
                account,
                credits_micros,
                at_micros,
            };
            if let Some(first) = debits.insert(id.to_owned(), debit) {
                panic!("debit {id} appears twice in the ledger (first {first:?})");
            }
        }
    }
    debits
}

/// Every journal entry of one type for one account, newest first, read in
/// at most `max_pages` pages.
pub async fn journal(
    client: &Client,
    account: &str,
    kind: &str,
    max_pages: usize,
) -> Vec<serde_json::Value> {
    let mut entries: Vec<serde_json::Value> = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..max_pages {
        let mut query = format!("?type={kind}&limit={PAGE_LIMIT}");
        if let Some(last) = entries.last() {
            query.push_str(&format!(
                "&starting_after={}",
                last["id"].as_str().expect("id")
            ));
        }
        let page = expect_status(
            client.transactions(account, &query).await,
            200,
            "transactions",
        );
        for entry in page.body["data"].as_array().expect("a list") {
            let id = entry["id"].as_str().expect("a transaction id").to_owned();
            assert!(seen.insert(id.clone()), "transaction {id} listed twice");
            entries.push(entry.clone());
        }
        if page.body["has_more"] != serde_json::Value::Bool(true) {
            return entries;
        }
    }
    panic!("more than {max_pages} pages of {kind} entries for {account}");
}

/// Every expected debit is in the ledger with its account and credits;
/// returns the ledger's debits that nothing expected (yet) accounts for.
/// A failure says the charges are missing `missing_from` (e.g. "after the
/// restart") and ends with `logs()`.
pub fn check_acknowledged(
    expected: &Expected,
    ledger: &BTreeMap<String, LedgerDebit>,
    missing_from: &str,
    logs: impl Fn() -> String,
) -> BTreeMap<String, LedgerDebit> {
    let missing: Vec<_> = expected
        .debits
        .iter()
        .filter(|(id, _)| !ledger.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged charges are missing {missing_from}, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        logs()
    );
    for (id, sent) in &expected.debits {
        let found = &ledger[id];
        assert_eq!(
            (found.account, found.credits_micros),
            (sent.account, sent.credits_micros),
            "debit {id} differs from its charge {sent:?}"
        );
    }
    ledger
        .iter()
        .filter(|(id, _)| !expected.debits.contains_key(*id))
        .map(|(id, debit)| (id.clone(), debit.clone()))
        .collect()
}

/// How the retries of the unknown charges turned out.
#[derive(Debug, Default)]
pub struct Retries {
    /// The retry returned a debit already in the ledger (committed before).
    pub committed_before: usize,
    /// The charge had not committed and the retry created it.
    pub created_by_retry: usize,
}

/// Retries every charge whose outcome is unknown, with the same key and
/// body: it returns the debit it committed before (one the ledger lists that
/// no acknowledged charge explains) or creates it now, never another
/// charge's debit.
pub async fn retry_unknown(
    client: &Client,
    expected: &mut Expected,
    unexplained: &BTreeMap<String, LedgerDebit>,
) -> Retries {
    let mut retries = Retries::default();
    for sent in std::mem::take(&mut expected.unknown) {
        let reply = client
            .charge(sent.account, &sent.charge(), Some(&sent.key))
            .await;
        let reply = reply.unwrap_or_else(|error| panic!("retrying {sent:?}: {error}"));
        assert_eq!(reply.status, 201, "retrying {sent:?}: {reply:?}");
        let debit = reply.str("id").to_owned();
        if unexplained.contains_key(&debit) {
            retries.committed_before += 1;
        } else {
            retries.created_by_retry += 1;
        }
        expected.acknowledge(sent, debit);
    }
    retries
}

/// Per account of `accounts`: nothing held, no debt, the debits are exactly
/// the charges, and available = granted − debited (the grants read in at
/// most `max_pages` pages).
pub async fn check_balances(
    client: &Client,
    accounts: &[&'static str],
    max_pages: usize,
    expected: &Expected,
    ledger: &BTreeMap<String, LedgerDebit>,
) {
    for &account in accounts {
        let balance = expect_status(client.balance(account).await, 200, "balance");
        assert_eq!(balance.str("held"), "0", "{balance:?}");
        assert_eq!(balance.str("debt"), "0", "{balance:?}");
        let granted: i128 = journal(client, account, "grant", max_pages)
            .await
            .iter()
            .map(|entry| parse_micros(entry["credits"].as_str().expect("credits")))
            .sum();
        let debited: i128 = ledger
            .values()
            .filter(|debit| debit.account == account)
            .map(|debit| debit.credits_micros)
            .sum();
        let charged: i128 = expected
            .debits
            .values()
            .filter(|sent| sent.account == account)
            .map(|sent| sent.credits_micros)
            .sum();
        assert_eq!(
            debited, charged,
            "{account}: the ledger's debits differ from the charges"
        );
        assert_eq!(
            parse_micros(balance.str("available")),
            granted - debited,
            "{account}: available != granted {} - debited {}: {balance:?}",
            format_micros(granted),
            format_micros(debited)
        );
    }
}

/// `"-12.5"` → −12,500,000 micros.
pub fn parse_micros(text: &str) -> i128 {
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    assert!(fraction.len() <= 6, "more than 6 fractional digits: {text}");
    let whole: i128 = whole
        .parse()
        .unwrap_or_else(|_| panic!("not credits: {text}"));
    let fraction: i128 = format!("{fraction:0<6}").parse().expect("digits");
    sign * (whole * 1_000_000 + fraction)
}

/// −12,500,000 micros → `"-12.5"`.
pub fn format_micros(micros: i128) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let (whole, fraction) = (micros.abs() / 1_000_000, micros.abs() % 1_000_000);
    let fraction = format!("{fraction:06}");
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{sign}{whole}")
    } else {
        format!("{sign}{whole}.{fraction}")
    }
}
