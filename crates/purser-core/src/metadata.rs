//! Bounded string maps that operators attach to accounts and charges.

use crate::limits::{Limit, MAX_METADATA_KEY_LEN, MAX_METADATA_KEYS, MAX_METADATA_VALUE_LEN};

/// Key/value strings, sorted by key, within the bounds of [`crate::limits`].
/// Empty metadata costs one pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata(Option<Box<[Pair]>>);

type Pair = (Box<str>, Box<str>);

impl Metadata {
    pub const EMPTY: Metadata = Metadata(None);

    /// Builds metadata from pairs; a later duplicate key replaces an earlier one.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Metadata, Limit> {
        let mut sorted: Vec<(Box<str>, Box<str>)> = Vec::new();
        for (key, value) in pairs {
            if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_LEN {
                return Err(Limit::MetadataKeyLength);
            }
            if value.chars().count() > MAX_METADATA_VALUE_LEN {
                return Err(Limit::MetadataValueLength);
            }
            match sorted.binary_search_by(|(k, _)| (**k).cmp(key.as_str())) {
                Ok(at) => sorted[at].1 = value.into(),
                Err(at) => sorted.insert(at, (key.into(), value.into())),
            }
            if sorted.len() > MAX_METADATA_KEYS {
                return Err(Limit::MetadataKeys);
            }
        }
        Ok(Metadata(
            (!sorted.is_empty()).then(|| sorted.into_boxed_slice()),
        ))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0
            .iter()
            .flat_map(|pairs| pairs.iter().map(|(k, v)| (&**k, &**v)))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_sorted() {
        let metadata = Metadata::new([("b".into(), "2".into()), ("a".into(), "1".into())]).unwrap();
        assert_eq!(
            metadata.iter().collect::<Vec<_>>(),
            [("a", "1"), ("b", "2")]
        );
        assert!(Metadata::new([]).unwrap().is_empty());
        let many = (0..51).map(|i| (format!("k{i}"), String::new()));
        assert_eq!(Metadata::new(many), Err(Limit::MetadataKeys));
        assert_eq!(
            Metadata::new([("k".repeat(41), String::new())]),
            Err(Limit::MetadataKeyLength)
        );
        assert_eq!(
            Metadata::new([("k".into(), "v".repeat(501))]),
            Err(Limit::MetadataValueLength)
        );
    }
}
