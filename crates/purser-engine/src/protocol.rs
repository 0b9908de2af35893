//! What flows through the engine: the reads a shard answers, what an
//! accepted command's answer is about, and the [`Render`] that turns both
//! into the bytes a client gets.

use std::fmt;

use purser_core::{
    Account, AccountHandle, AccountId, Command, Entry, Event, Hold, ObjectId, Receipt, Rejection,
    Timestamp,
};
use purser_store::Store;

/// What a shard can be asked to read and render.
#[derive(Debug)]
pub enum Read {
    Account(AccountId),
    AccountByHandle(AccountHandle),
    Balance(AccountId),
    Grants(AccountId, Page),
    Purchases(AccountId, Page),
    /// An active hold, or not found from memory (the caller then asks the store).
    Hold(ObjectId),
    /// One purchase of an account.
    Purchase(ObjectId),
}

/// A page of an in-memory list: at most `limit` items after the object
/// `starting_after` (a sequence number of this account).
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub limit: usize,
    pub starting_after: Option<u64>,
}

/// How a read names its account.
#[derive(Debug)]
pub enum AccountRef<'a> {
    Id(&'a AccountId),
    Handle(AccountHandle),
}

impl Read {
    pub fn account(&self) -> AccountRef<'_> {
        match self {
            Read::Account(id)
            | Read::Balance(id)
            | Read::Grants(id, _)
            | Read::Purchases(id, _) => AccountRef::Id(id),
            Read::AccountByHandle(handle) => AccountRef::Handle(*handle),
            Read::Hold(object) | Read::Purchase(object) => AccountRef::Handle(object.account),
        }
    }
}

/// What an accepted command answers with.
#[derive(Clone, Debug)]
pub enum Shape {
    AccountCreated,
    Account,
    /// A charge: created (a `debit`) or a hold's capture.
    Debit {
        created: bool,
    },
    Hold,
    /// The hold as it was just before its release.
    Released(Option<Box<Hold>>),
    Grant {
        created: bool,
    },
    /// `seq` when the command names the purchase (it may change nothing).
    Purchase {
        seq: Option<u64>,
    },
    Transaction,
    Empty,
}

pub fn shape_of(command: &Command) -> Shape {
    match command {
        Command::OpenAccount { .. } => Shape::AccountCreated,
        Command::UpdateAccount { .. }
        | Command::CloseAccount { .. }
        | Command::ChangeTier { .. } => Shape::Account,
        Command::Charge { .. } => Shape::Debit { created: true },
        Command::CaptureHold { .. } => Shape::Debit { created: false },
        Command::PlaceHold { .. } => Shape::Hold,
        Command::ReleaseHold { .. } => Shape::Released(None),
        Command::IssueGrant { .. } => Shape::Grant { created: true },
        Command::VoidGrant { .. } => Shape::Grant { created: false },
        Command::CreatePurchase { .. } => Shape::Purchase { seq: None },
        Command::CompletePurchase { purchase }
        | Command::FailPurchase { purchase, .. }
        | Command::CancelPurchase { purchase }
        | Command::RefundPurchase { purchase, .. } => Shape::Purchase {
            seq: Some(purchase.seq),
        },
        Command::Reverse { .. } => Shape::Transaction,
        Command::Advance { .. } => Shape::Empty,
    }
}

/// An answer as the client gets it: a status and a body, opaque to the engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub status: u16,
    pub body: Vec<u8>,
    /// What the request's idempotency key remembers: set only for an
    /// accepted command that has a key (the answer itself, or less, from
    /// which [`Render::recall`] gives the answer again).
    pub remember: Option<Vec<u8>>,
}

/// An accepted command, for its answer to be rendered.
#[derive(Debug)]
pub struct Accepted<'a> {
    pub shape: Shape,
    pub receipt: &'a Receipt,
    /// The account after the command.
    pub account: &'a Account,
    /// The batch's entries so far; the receipt's indexes point into them.
    pub entries: &'a [Entry],
    pub now: Timestamp,
    /// Whether an idempotency key will remember the answer.
    pub keyed: bool,
}

pub use purser_core::Actor;

/// An event of a command, for its stored body to be rendered.
#[derive(Debug)]
pub struct EventContext<'a> {
    pub event: &'a Event,
    /// The account after the command.
    pub account: &'a Account,
    /// The command's entries; the event's `entry` indexes them.
    pub entries: &'a [Entry],
    pub actor: &'a Actor,
    pub now: Timestamp,
}

/// Turns the engine's outcomes into the bytes a client gets. Called on the
/// shard threads: it must be quick and must not block.
pub trait Render: Send + Sync + fmt::Debug + 'static {
    fn accepted(&self, accepted: &Accepted<'_>) -> Rendered;
    fn refused(&self, rejection: &Rejection) -> Rendered;
    /// An event as the API shows it (stored in the outbox).
    fn event(&self, event: &EventContext<'_>) -> Vec<u8>;
    /// A read; `account` is `None` when the account does not exist.
    fn read(&self, read: Read, account: Option<&Account>, now: Timestamp) -> Rendered;
    /// An account, as a list of accounts shows it.
    fn account(&self, account: &Account, now: Timestamp) -> Vec<u8>;
    /// Whether [`Render::recall`] of this record reads the store (it is then
    /// run off the async threads).
    fn recall_reads_store(&self, remembered: &[u8]) -> bool;
    /// The answer an idempotency key remembered, as the client first got it;
    /// `Err` with what went wrong.
    fn recall(&self, remembered: &[u8], store: &dyn Store) -> Result<Vec<u8>, String>;
}
