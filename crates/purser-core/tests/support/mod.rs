//! A small world for rule tests: one ledger, a clock the test moves, and the
//! whole journal, which is replayed and compared with the live state when the
//! world is dropped, so every scenario also checks recovery.

#![allow(dead_code)]

use std::sync::Arc;

use purser_core::{
    AccountId, Amount, CaptureAmount, Catalog, ChargeMode, Command, CreditSum, Credits,
    DebitRecord, Entry, Event, GrantKind, Ledger, MemberId, Metadata, Notation, ObjectId, Package,
    PackageId, Proration, Quantity, Rejection, TYPE_NAMES, Task, TaskId, Tier, TierId, Timestamp,
    verify,
};

pub fn t(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap_or_else(|| panic!("bad time {text}"))
}

pub fn c(text: &str) -> Credits {
    Credits::parse(text, Notation::String).unwrap()
}

pub fn q(text: &str) -> Quantity {
    Quantity::parse_positive(text, Notation::String).unwrap()
}

pub fn catalog() -> Catalog {
    let tier = |id: &str, monthly: &str, rollover: &str, cap: Option<&str>| Tier {
        id: TierId::parse(id).unwrap(),
        name: id.to_uppercase(),
        monthly_credits: c(monthly),
        price: c("10"),
        member_monthly_cap: cap.map(c),
        rollover_cap: c(rollover),
        low_balance_thresholds: None,
        stripe_price: None,
    };
    let task = |id: &str, rate: &str, minimum: Option<&str>| Task {
        id: TaskId::parse(id).unwrap(),
        name: id.into(),
        unit: "unit".into(),
        credits_per_unit: c(rate),
        minimum: minimum.map(c),
    };
    Catalog::new(
        "USD".into(),
        vec![
            tier("free", "10", "0", None),
            tier("starter", "100", "0", None),
            tier("pro", "400", "50", Some("30")),
            tier("team", "400", "0", None),
            Tier {
                low_balance_thresholds: Some(vec![c("10"), c("50")]),
                stripe_price: None,
                ..tier("alerts", "100", "0", None)
            },
        ],
        vec![Package {
            id: PackageId::parse("small").unwrap(),
            name: "Small".into(),
            credits: c("200"),
            price: c("9"),
        }],
        vec![
            task("assistant_message", "0.5", None),
            task("generate_documentation", "5", Some("5")),
            task("crawl_data", "0.333333", None),
        ],
    )
    .unwrap()
}

pub struct World {
    pub ledger: Ledger,
    pub now: Timestamp,
    pub journal: Vec<Entry>,
    /// Every event the commands made, in order.
    pub events: Vec<Event>,
    catalog: Arc<Catalog>,
}

impl World {
    pub fn new(now: &str) -> World {
        let catalog = Arc::new(catalog());
        World {
            ledger: Ledger::new(0, catalog.clone()),
            now: t(now),
            journal: Vec::new(),
            events: Vec::new(),
            catalog,
        }
    }

    /// Runs a command; on success, the entry that answers it (if any).
    pub fn exec(&mut self, command: Command) -> Result<Option<Entry>, Rejection> {
        let start = self.journal.len();
        let first_event = self.events.len();
        let result = self.ledger.execute_observed(
            self.now,
            command,
            &mut self.journal,
            Some(&mut self.events),
        );
        // Each event names its entry, by index among the command's.
        for event in &self.events[first_event..] {
            let entry = &self.journal[start + event.entry];
            assert_eq!(
                (entry.account, entry.seq, entry.at),
                (event.id.account, event.id.seq, event.at),
                "{event:?}"
            );
        }
        if let Err(rejection) = &result {
            // Only time-driven entries may accompany a refusal.
            for entry in &self.journal[start..] {
                assert!(
                    matches!(
                        entry.body.type_name(),
                        "grant"
                            | "expire"
                            | "rollover"
                            | "hold_expired"
                            | "debt_paid"
                            | "tier_changed"
                            | "void"
                    ),
                    "refused ({rejection}) yet wrote {entry:?}"
                );
            }
        }
        result.map(|receipt| receipt.primary.map(|index| self.journal[index].clone()))
    }

    pub fn ok(&mut self, command: Command) -> Option<Entry> {
        let described = format!("{command:?}");
        self.exec(command)
            .unwrap_or_else(|rejection| panic!("refused: {rejection} ({described})"))
    }

    pub fn refused(&mut self, command: Command) -> Rejection {
        match self.exec(command) {
            Ok(entry) => panic!("accepted, expected a refusal: {entry:?}"),
            Err(rejection) => rejection,
        }
    }

    /// Moves the clock and lets every account catch up.
    pub fn advance_to(&mut self, now: &str) {
        self.now = t(now);
        let handles: Vec<_> = self.ledger.accounts().map(|a| a.handle()).collect();
        for account in handles {
            self.ok(Command::Advance { account });
        }
    }

    pub fn open(&mut self, id: &str, tier: &str) {
        self.open_anchored(id, tier, None);
    }

    pub fn open_anchored(&mut self, id: &str, tier: &str, anchor: Option<&str>) {
        self.ok(Command::OpenAccount {
            id: AccountId::parse(id).unwrap(),
            name: None,
            tier: TierId::parse(tier).unwrap(),
            anchor: anchor.map(t),
            member_monthly_cap: None,
            metadata: Metadata::EMPTY,
            low_balance_thresholds: None,
            auto_recharge: None,
        });
    }

    pub fn charge(&mut self, id: &str, credits: &str) -> Result<Entry, Rejection> {
        self.charge_with(id, Amount::Credits(c(credits)), None, ChargeMode::Strict)
    }

    pub fn record(&mut self, id: &str, credits: &str) -> Entry {
        self.charge_with(id, Amount::Credits(c(credits)), None, ChargeMode::Record)
            .unwrap()
    }

    pub fn charge_with(
        &mut self,
        id: &str,
        amount: Amount,
        member: Option<&str>,
        mode: ChargeMode,
    ) -> Result<Entry, Rejection> {
        self.exec(Command::Charge {
            account: AccountId::parse(id).unwrap(),
            amount,
            member: member.map(|m| MemberId::parse(m).unwrap()),
            mode,
            metadata: Metadata::EMPTY,
        })
        .map(|entry| entry.unwrap())
    }

    pub fn task(name: &str, quantity: &str) -> Amount {
        Amount::Task {
            task: TaskId::parse(name).unwrap(),
            quantity: q(quantity),
        }
    }

    pub fn hold(
        &mut self,
        id: &str,
        credits: &str,
        ttl_seconds: i64,
    ) -> Result<ObjectId, Rejection> {
        self.hold_with(id, Amount::Credits(c(credits)), ttl_seconds, None)
    }

    pub fn hold_with(
        &mut self,
        id: &str,
        amount: Amount,
        ttl_seconds: i64,
        member: Option<&str>,
    ) -> Result<ObjectId, Rejection> {
        self.exec(Command::PlaceHold {
            account: AccountId::parse(id).unwrap(),
            amount,
            ttl_seconds,
            member: member.map(|m| MemberId::parse(m).unwrap()),
            metadata: Metadata::EMPTY,
        })
        .map(|entry| entry.unwrap().id())
    }

    pub fn capture(&mut self, hold: ObjectId, amount: CaptureAmount) -> Result<Entry, Rejection> {
        self.exec(Command::CaptureHold {
            hold,
            amount,
            mode: ChargeMode::Strict,
        })
        .map(|entry| entry.unwrap())
    }

    pub fn promo(&mut self, id: &str, credits: &str, expires_at: Option<&str>) -> ObjectId {
        self.ok(Command::IssueGrant {
            account: AccountId::parse(id).unwrap(),
            kind: GrantKind::Promo,
            credits: c(credits),
            expires_at: expires_at.map(t),
            priority: None,
            reason: "goodwill".into(),
        })
        .unwrap()
        .id()
    }

    pub fn buy(&mut self, id: &str) -> ObjectId {
        let purchase = self
            .ok(Command::CreatePurchase {
                account: AccountId::parse(id).unwrap(),
                package: PackageId::parse("small").unwrap(),
            })
            .unwrap()
            .id();
        self.ok(Command::CompletePurchase { purchase });
        purchase
    }

    pub fn change_tier(&mut self, id: &str, tier: &str, proration: Proration) -> Option<Entry> {
        self.ok(Command::ChangeTier {
            account: AccountId::parse(id).unwrap(),
            tier: TierId::parse(tier).unwrap(),
            proration,
        })
    }

    /// The record of a charge, as a store would hand it to a reversal.
    pub fn debit_record(entry: &Entry) -> DebitRecord {
        DebitRecord::from_entry(entry.id(), entry)
            .unwrap_or_else(|| panic!("not a charge: {:?}", entry.body))
    }

    pub fn reverse(&mut self, debit: &Entry, credits: Option<&str>) -> Result<Entry, Rejection> {
        self.exec(Command::Reverse {
            debit: World::debit_record(debit),
            credits: credits.map(c),
        })
        .map(|entry| entry.unwrap())
    }

    pub fn account(&self, id: &str) -> &purser_core::Account {
        self.ledger
            .account(id)
            .unwrap_or_else(|| panic!("no account {id}"))
    }

    /// `available/held/debt`, e.g. "70/0/0".
    pub fn totals(&self, id: &str) -> String {
        let balance = self.account(id).balance(self.now);
        format!("{}/{}/{}", balance.available, balance.held, balance.debt)
    }

    /// Grants with anything left or held, in burn order: `kind:remaining/amount`
    /// plus `(held h)` when some is held.
    pub fn grants(&self, id: &str) -> String {
        self.account(id)
            .grants()
            .iter()
            .filter(|g| !g.remaining.is_zero() || !g.held.is_zero())
            .map(|g| {
                let held = if g.held.is_zero() {
                    String::new()
                } else {
                    format!("(held {})", g.held)
                };
                format!("{}:{}/{}{held}", g.kind.as_str(), g.remaining, g.amount)
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Types of the entries written since `from` (an index into the journal).
    /// The events made since the `from`-th, as `type` (`type:threshold`
    /// for `credits.low`), each with its account's id checked.
    pub fn events_since(&self, from: usize) -> Vec<String> {
        self.events[from..]
            .iter()
            .map(|event| match event.threshold {
                Some(threshold) => format!("{}:{threshold}", event.kind),
                None => event.kind.to_string(),
            })
            .collect()
    }

    pub fn types_since(&self, from: usize) -> Vec<&'static str> {
        self.journal[from..]
            .iter()
            .map(|e| e.body.type_name())
            .collect()
    }
}

impl Drop for World {
    /// Every scenario ends with a replay: the journal must rebuild the live
    /// state exactly, with every recorded balance and invariant intact.
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        for entry in &self.journal {
            let name = entry.body.type_name();
            assert!(TYPE_NAMES.contains(&name), "{name} is not in TYPE_NAMES");
        }
        let (replayed, report) = verify::replay(0, self.catalog.clone(), self.journal.iter());
        assert!(report.is_clean(), "replay problems: {:?}", report.problems);
        let mut replayed = replayed;
        replayed.share_catalog_ids();
        let differences = verify::compare(&replayed, &self.ledger);
        assert!(differences.is_empty(), "replay differs: {differences:?}");
        // A snapshot restores every account exactly.
        let mut restored = Ledger::new(0, self.catalog.clone());
        for snapshot in self.ledger.snapshot() {
            restored.restore(snapshot).unwrap();
        }
        let differences = verify::compare(&restored, &self.ledger);
        assert!(differences.is_empty(), "snapshot differs: {differences:?}");
        // Signed journal credits add up to what the grants hold, net of debt.
        for account in self.ledger.accounts() {
            let journal: CreditSum = self
                .journal
                .iter()
                .filter(|e| e.account == account.handle())
                .map(|e| e.body.signed_credits())
                .fold(CreditSum::ZERO, |a, b| a.checked_add(b).unwrap());
            let remaining: CreditSum = account.grants().iter().map(|g| g.remaining).sum();
            let net = remaining.checked_sub(account.debt().to_sum()).unwrap();
            assert_eq!(
                journal,
                net,
                "signed credits of {} do not add up",
                account.id()
            );
        }
    }
}
