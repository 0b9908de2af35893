//! Identifiers: the operator's own ids (accounts, tiers, tasks, members) and
//! the ledger's object ids (`deb_…`, `gr_…`, `hold_…`, `pur_…`, `txn_…`).
//!
//! An object id encodes the [`AccountHandle`] of the account it belongs to and
//! the account-local sequence number of the journal entry that created it, so
//! any object id leads straight to its account (and so to its shard) without
//! a lookup table.

use std::fmt;
use std::sync::Arc;

use crate::limits::MAX_ID_LEN;

fn is_id_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b':' | b'-')
}

/// Why an operator-chosen id was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdError {
    Empty,
    TooLong,
    InvalidCharacter,
    /// `.` or `..`: they would be path segments of their own in a URL.
    Reserved,
}

impl IdError {
    pub const fn message(self) -> &'static str {
        match self {
            IdError::Empty => "must not be empty",
            IdError::TooLong => "must be at most 64 characters",
            IdError::InvalidCharacter => "may contain only A-Z, a-z, 0-9 and _ . : -",
            IdError::Reserved => "must not be . or ..",
        }
    }
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for IdError {}

fn check_id(text: &str) -> Result<(), IdError> {
    if text.is_empty() {
        Err(IdError::Empty)
    } else if text.len() > MAX_ID_LEN {
        Err(IdError::TooLong)
    } else if !text.bytes().all(is_id_byte) {
        Err(IdError::InvalidCharacter)
    } else if text == "." || text == ".." {
        Err(IdError::Reserved)
    } else {
        Ok(())
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// 1–64 characters of `A-Za-z0-9_.:-`; cheap to clone (shared).
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Arc<str>);

        impl $name {
            pub fn parse(text: &str) -> Result<$name, IdError> {
                check_id(text)?;
                Ok($name(Arc::from(text)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name_type!(
    /// An account id, chosen by the operator.
    AccountId
);
name_type!(
    /// A tier id from the catalog.
    TierId
);
name_type!(
    /// A package id from the catalog.
    PackageId
);
name_type!(
    /// A task id from the rate card.
    TaskId
);
name_type!(
    /// A member of an account (a person in the customer's workspace).
    MemberId
);

/// The stable partition of an account id (FNV-1a): never changes across
/// restarts or versions, because handles and object ids embed it.
pub fn partition_of(id: &str, partitions: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions)) as u16
}

/// The ledger's compact handle of an account: the partition it lives in and
/// its index there. Assigned when the account is opened, never reused.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountHandle(u64);

impl AccountHandle {
    pub const fn new(partition: u16, index: u32) -> AccountHandle {
        AccountHandle(((index as u64) << 16) | partition as u64)
    }

    pub const fn from_raw(raw: u64) -> AccountHandle {
        AccountHandle(raw)
    }

    pub const fn raw(self) -> u64 {
        self.0
    }

    pub const fn partition(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    pub const fn index(self) -> u32 {
        (self.0 >> 16) as u32
    }
}

impl fmt::Debug for AccountHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.partition(), self.index())
    }
}

/// The kinds of object an id can name; each has its own prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A charge (a `debit` or a hold's `capture`).
    Debit,
    Grant,
    Hold,
    Purchase,
    /// Any journal entry.
    Transaction,
}

impl ObjectKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            ObjectKind::Debit => "deb",
            ObjectKind::Grant => "gr",
            ObjectKind::Hold => "hold",
            ObjectKind::Purchase => "pur",
            ObjectKind::Transaction => "txn",
        }
    }
}

/// Hex digits that carry the sequence number, at the end of every object id.
const SEQ_DIGITS: usize = 12;
const MAX_SEQ: u64 = (1 << (4 * SEQ_DIGITS)) - 1;

/// An object of an account: the account's handle and the sequence number of
/// the journal entry that created the object.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ObjectId {
    pub account: AccountHandle,
    pub seq: u64,
}

impl ObjectId {
    /// The wire form: `prefix_` + the handle in hex + the sequence number in
    /// 12 hex digits, e.g. `deb_10000000000002a`.
    pub fn format(self, kind: ObjectKind) -> String {
        debug_assert!(self.seq <= MAX_SEQ);
        format!(
            "{}_{:x}{:0width$x}",
            kind.prefix(),
            self.account.raw(),
            self.seq,
            width = SEQ_DIGITS
        )
    }

    /// `None` unless `text` is an id of this kind.
    pub fn parse(kind: ObjectKind, text: &str) -> Option<ObjectId> {
        let rest = text.strip_prefix(kind.prefix())?.strip_prefix('_')?;
        if rest.len() <= SEQ_DIGITS
            || rest.len() > SEQ_DIGITS + 16
            || !rest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let (handle, seq) = rest.split_at(rest.len() - SEQ_DIGITS);
        Some(ObjectId {
            account: AccountHandle::from_raw(u64::from_str_radix(handle, 16).ok()?),
            seq: u64::from_str_radix(seq, 16).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_never_change() {
        // Handles and object ids embed the partition: these values (FNV-1a,
        // computed by an independent implementation) must hold forever.
        let cases = [
            ("acme", 15, 527),
            ("a", 12, 140),
            ("acme-01:eu.x_y", 13, 333),
        ];
        for (id, of_64, of_1024) in cases {
            assert_eq!(partition_of(id, 64), of_64, "{id}");
            assert_eq!(partition_of(id, 1024), of_1024, "{id}");
            assert_eq!(partition_of(id, 1), 0, "{id}");
        }
    }

    #[test]
    fn operator_ids_are_checked() {
        assert!(AccountId::parse("acme-01:eu.x_y").is_ok());
        assert_eq!(AccountId::parse(""), Err(IdError::Empty));
        assert_eq!(AccountId::parse(&"a".repeat(65)), Err(IdError::TooLong));
        assert!(AccountId::parse(&"a".repeat(64)).is_ok());
        assert_eq!(AccountId::parse("a b"), Err(IdError::InvalidCharacter));
        assert_eq!(AccountId::parse("é"), Err(IdError::InvalidCharacter));
        assert_eq!(AccountId::parse("."), Err(IdError::Reserved));
        assert_eq!(AccountId::parse(".."), Err(IdError::Reserved));
        assert!(AccountId::parse("...").is_ok());
    }

    #[test]
    fn object_ids_round_trip() {
        for (partition, index, seq) in [(0, 0, 0), (3, 7, 42), (u16::MAX, u32::MAX, MAX_SEQ)] {
            let id = ObjectId {
                account: AccountHandle::new(partition, index),
                seq,
            };
            let text = id.format(ObjectKind::Hold);
            assert_eq!(ObjectId::parse(ObjectKind::Hold, &text), Some(id), "{text}");
            assert_eq!(ObjectId::parse(ObjectKind::Debit, &text), None);
        }
        assert_eq!(
            ObjectId {
                account: AccountHandle::new(1, 0),
                seq: 0x2a
            }
            .format(ObjectKind::Debit),
            "deb_100000000002a"
        );
        for bad in [
            "deb_",
            "deb_000000000001",
            "deb_X0000000000001",
            "deb_10000000000002A",
            "gr_1000000000000",
        ] {
            assert_eq!(ObjectId::parse(ObjectKind::Debit, bad), None, "{bad}");
        }
    }
}
