//! Opening an engine on a store: the partition count and the test clock
//! kept there, the ledger recovered from the journal, the idempotency
//! records still remembered, and the threads started.

use std::sync::Arc;

use purser_core::{Catalog, Ledger, Timestamp};
use purser_store::{RecoveryError, Store, StoreError, recover};

use crate::clock::{Clock, system_now};
use crate::committer::CommitObserver;
use crate::engine::{Engine, EngineConfig, Parts};
use crate::keys::KeyTable;
use crate::protocol::Render;

/// Where the test clock's time is kept, so it survives restarts.
pub const TEST_CLOCK_SETTING: &str = "test_clock_micros";
const PARTITIONS_SETTING: &str = "partitions";

/// Why an engine could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("recovery: {0}")]
    Recovery(#[from] RecoveryError),
    #[error("{0}")]
    Setting(String),
}

/// What an engine is opened with besides its store.
#[derive(Debug)]
pub struct Options {
    pub config: EngineConfig,
    /// Whether time is the test clock (moved only by `advance_test_clock`).
    pub test_clock: bool,
    /// Whether to accept the loss of the journal's end, if recovery finds
    /// one (the operator's `serve --accept-loss`): the store drops what is
    /// ahead of the journal and records the incident, then recovery runs
    /// again. Damage inside the journal is never accepted.
    pub accept_loss: bool,
    pub catalog: Catalog,
    pub render: Arc<dyn Render>,
    pub observer: Arc<dyn CommitObserver>,
}

impl Engine {
    /// Opens the engine on a store: `config.partitions` is used only for a
    /// new store (a store keeps its own). Returns the engine and the number
    /// of journal entries replayed after the snapshots.
    pub fn open(store: Arc<dyn Store>, options: Options) -> Result<(Engine, u64), OpenError> {
        let mut config = options.config;
        config.partitions = match store.setting(PARTITIONS_SETTING)? {
            Some(text) => text
                .parse::<u16>()
                .map_err(|_| OpenError::Setting(format!("stored partitions {text:?}")))?,
            None => {
                store.set_setting(PARTITIONS_SETTING, &config.partitions.to_string())?;
                config.partitions
            }
        };
        config.shards = config.shards.max(1);
        let clock = if options.test_clock {
            Clock::test(test_clock_start(&*store)?)
        } else {
            Clock::system()
        };
        let catalog = Arc::new(options.catalog);
        let (ledgers, entries) = match recover(&*store, catalog.clone(), config.partitions) {
            Err(RecoveryError::Damaged(report))
                if options.accept_loss && report.is_tail_loss_only() =>
            {
                tracing::warn!(end = report.end, %report, "accepting the loss of the journal's end, as asked (--accept-loss)");
                store.accept_loss(&report, clock.now())?;
                recover(&*store, catalog.clone(), config.partitions)?
            }
            other => other?,
        };
        warn_missing_tiers(&ledgers, &catalog);
        // No key is read here: the keys the store holds are learnt in the
        // background once serving (see `Engine::launch`), so a start takes
        // as long with a day of keys as with none.
        let keys = KeyTable::new(
            config.idempotency_retention_seconds,
            config.idempotency_cache_keys,
        );
        keys.set_complete(false);
        let parts = Parts {
            ledgers,
            store,
            clock,
            catalog,
            keys,
            render: options.render,
            observer: options.observer,
        };
        Ok((Engine::launch(&config, parts), entries))
    }
}

/// The test clock's time as kept in the store; now, for a new store.
fn test_clock_start(store: &dyn Store) -> Result<Timestamp, OpenError> {
    match store.setting(TEST_CLOCK_SETTING)? {
        Some(text) => {
            Ok(Timestamp::from_micros(text.parse().map_err(|_| {
                OpenError::Setting("stored test clock".into())
            })?))
        }
        None => {
            let now = system_now();
            store.set_setting(TEST_CLOCK_SETTING, &now.micros().to_string())?;
            Ok(now)
        }
    }
}

fn warn_missing_tiers(ledgers: &[Ledger], catalog: &Catalog) {
    for account in ledgers.iter().flat_map(|l| l.accounts()) {
        if catalog.tier(account.tier().as_str()).is_none() {
            tracing::warn!(account = %account.id(), tier = %account.tier(), "the account's tier is not in the catalog: it renews with 0 credits");
        }
    }
}
