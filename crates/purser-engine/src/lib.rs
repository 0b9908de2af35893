//! purser-engine: the single-writer, group-committing engine.
//!
//! Owns the shard threads (each the only writer of its partitions' ledgers),
//! the committer (one store transaction and one fsync per group of batches,
//! answers only after it), the due-time scheduler, the clock, opening an
//! engine from a store, and the life of an idempotency key from its claim to
//! its answer. The API and the portal both call it through [`Engine`].
//!
//! It must not know HTTP, axum or JSON. Answers are rendered inside the
//! shard (so a key's record is written in the same commit as its entries) by
//! a [`Render`] the caller supplies; the engine carries the rendered status
//! and bytes without reading them.

mod clock;
mod committer;
mod engine;
mod keys;
mod open;
pub mod pacer;
mod protocol;
mod shard;

pub use clock::{Clock, system_now};
pub use committer::CommitObserver;
pub use engine::{
    AccountsPage, AdvanceError, Busy, Engine, EngineConfig, Outcome, QueryError, Submitted,
};
pub use keys::IdempotencyKey;
pub use open::{OpenError, Options, TEST_CLOCK_SETTING};
pub use protocol::{
    Accepted, AccountRef, Actor, EventContext, Page, Read, Render, Rendered, Shape, shape_of,
};
