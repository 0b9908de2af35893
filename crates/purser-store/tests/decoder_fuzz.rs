//! Fuzzing the codec's decoders on the stable toolchain.
//!
//! Arbitrary bytes, and the golden fixtures (`tests/fixtures/codec/`, see
//! `golden.rs`) flipped, overwritten, truncated, extended and spliced, must
//! never make [`decode_entry`] or [`decode_snapshot`] panic; whatever decodes
//! must re-encode to bytes that decode to the same value, and those bytes must
//! re-encode to themselves (the encoder's output is canonical, the decoder may
//! accept more, such as over-long varints). Every strict prefix of a fixture
//! is refused, and so is a fixture with bytes appended.
//!
//! These run in a few seconds; for a long coverage-guided run of the same
//! checks see `fuzz/README.md` (cargo-fuzz, nightly).

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::sample::Index;
use purser_store::codec::FORMAT_VERSION;
use purser_store::{CodecError, decode_entry, decode_snapshot, encode_entry, encode_snapshot};

/// The golden fixtures, by name order.
fn seeds() -> &'static [Vec<u8>] {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/codec");
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "bin"))
            .collect();
        paths.sort();
        assert!(
            paths.len() > 10,
            "too few codec fixtures in {}",
            dir.display()
        );
        paths
            .iter()
            .map(|path| std::fs::read(path).unwrap())
            .collect()
    })
}

/// What the decoders made of some bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Decoded {
    entries: u32,
    snapshots: u32,
}

/// Feeds `bytes` to both decoders (they must not panic) and checks that
/// whatever decodes round-trips through the encoder.
fn check(bytes: &[u8]) -> Decoded {
    let mut decoded = Decoded::default();
    if let Ok(entry) = decode_entry(bytes) {
        decoded.entries += 1;
        let mut once = Vec::new();
        encode_entry(&entry, &mut once);
        let again = decode_entry(&once);
        assert_eq!(
            again.as_ref(),
            Ok(&entry),
            "{bytes:02x?} decoded, re-encoded as {once:02x?}, which decodes differently"
        );
        let mut twice = Vec::new();
        encode_entry(&again.unwrap(), &mut twice);
        assert_eq!(once, twice, "the encoding of {bytes:02x?} is not stable");
    }
    if let Ok(accounts) = decode_snapshot(bytes) {
        decoded.snapshots += 1;
        let mut once = Vec::new();
        encode_snapshot(&accounts, &mut once);
        let again = decode_snapshot(&once);
        assert_eq!(
            again.as_ref(),
            Ok(&accounts),
            "{bytes:02x?} decoded, re-encoded as {once:02x?}, which decodes differently"
        );
        let mut twice = Vec::new();
        encode_snapshot(&again.unwrap(), &mut twice);
        assert_eq!(once, twice, "the encoding of {bytes:02x?} is not stable");
    }
    decoded
}

/// Bytes that mean something to the codec more often than a random one:
/// tags, booleans, varint continuation and its edges, the format version.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        prop::sample::select(vec![0x00, 0x01, 0x02, 0x7f, 0x80, 0x81, 0xfe, 0xff]),
        0u8..=16,
    ]
}

/// One change to a fixture.
#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: Index,
        mask: u8,
    },
    Set {
        at: Index,
        byte: u8,
    },
    Insert {
        at: Index,
        bytes: Vec<u8>,
    },
    Remove {
        at: Index,
        len: usize,
    },
    Truncate {
        at: Index,
    },
    Extend {
        bytes: Vec<u8>,
    },
    /// Replaces the tail from `at` with the tail of another fixture from `from`.
    Splice {
        at: Index,
        seed: Index,
        from: Index,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = || prop::collection::vec(byte(), 1..12);
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        3 => (any::<Index>(), byte()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        1 => (any::<Index>(), bytes()).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (any::<Index>(), 1usize..8).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => any::<Index>().prop_map(|at| Mutation::Truncate { at }),
        1 => bytes().prop_map(|bytes| Mutation::Extend { bytes }),
        1 => (any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(at, seed, from)| Mutation::Splice { at, seed, from }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    // `Index::index` wants a non-empty range.
    let place = |at: &Index, len: usize| if len == 0 { 0 } else { at.index(len) };
    let len = bytes.len();
    match mutation {
        Mutation::Flip { at, mask } if len > 0 => bytes[at.index(len)] ^= mask,
        Mutation::Set { at, byte } if len > 0 => bytes[at.index(len)] = *byte,
        Mutation::Flip { .. } | Mutation::Set { .. } => {}
        Mutation::Insert { at, bytes: new } => {
            let at = place(at, len + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Remove { at, len: count } => {
            let at = place(at, len);
            bytes.drain(at..len.min(at + count));
        }
        Mutation::Truncate { at } => bytes.truncate(place(at, len)),
        Mutation::Extend { bytes: new } => bytes.extend_from_slice(new),
        Mutation::Splice { at, seed, from } => {
            let other = seed.get(seeds());
            bytes.truncate(place(at, len + 1));
            bytes.extend_from_slice(&other[place(from, other.len() + 1)..]);
        }
    }
}

// Case counts keep the whole file to a few seconds unoptimized (well under
// one with the workspace's test profile); longer runs belong to `fuzz/`.
proptest! {
    // Random bytes mostly stop early; the mutated fixtures below reach further.
    #![proptest_config(ProptestConfig {
        cases: 4_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(
        versioned in any::<bool>(),
        mut bytes in prop::collection::vec(byte(), 0..128),
    ) {
        // Most random bytes stop at the version; start half of them right.
        if versioned {
            bytes.insert(0, FORMAT_VERSION);
        }
        check(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 30_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_fixtures_never_panic_the_decoders(
        seed in any::<Index>(),
        mutations in prop::collection::vec(mutation(), 1..5),
    ) {
        let mut bytes = seed.get(seeds()).clone();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        check(&bytes);
    }
}

/// The fixtures themselves decode (one way or the other) and round-trip.
#[test]
fn every_fixture_decodes() {
    for bytes in seeds() {
        let decoded = check(bytes);
        assert_eq!(
            decoded.entries + decoded.snapshots,
            1,
            "{bytes:02x?} should decode as exactly one of an entry or a snapshot"
        );
    }
}

/// Deterministic neighbours of every fixture: each strict prefix (refused),
/// each byte with each bit flipped or set to a boundary value, and a few
/// bytes appended (refused as trailing).
#[test]
fn every_truncation_flip_and_extension_of_every_fixture_is_safe() {
    let mut tried = 0u32;
    let mut decoded = Decoded::default();
    let mut tally = |more: Decoded| {
        decoded.entries += more.entries;
        decoded.snapshots += more.snapshots;
    };
    for seed in seeds() {
        let is_entry = decode_entry(seed).is_ok();
        for end in 0..seed.len() {
            let prefix = &seed[..end];
            // (The other decoder may accept it: `[1, 0]` starts every entry
            // of account 0/0 and is also the empty snapshot.)
            let refused = if is_entry {
                decode_entry(prefix).is_err()
            } else {
                decode_snapshot(prefix).is_err()
            };
            assert!(refused, "a prefix decoded: {prefix:02x?}");
            tally(check(prefix));
            tried += 1;
        }
        let mut bytes = seed.clone();
        for at in 0..seed.len() {
            let masks = (0..8).map(|bit| seed[at] ^ (1u8 << bit));
            for value in masks.chain([0x00, 0x01, 0x7f, 0x80, 0xff]) {
                bytes[at] = value;
                tally(check(&bytes));
                tried += 1;
            }
            bytes[at] = seed[at];
        }
        for tail in [&[0x00][..], &[0x01], &[0x80], &[0xff, 0x01], &seed[..]] {
            let mut longer = seed.clone();
            longer.extend_from_slice(tail);
            let is_trailing =
                |result: Result<(), CodecError>| result == Err(CodecError::Trailing(tail.len()));
            let as_entry = decode_entry(&longer).map(|_| ());
            let as_snapshot = decode_snapshot(&longer).map(|_| ());
            assert!(
                is_trailing(as_entry.clone()) || is_trailing(as_snapshot.clone()),
                "{longer:02x?} is not refused as trailing: {as_entry:?} {as_snapshot:?}"
            );
            tally(check(&longer));
            tried += 1;
        }
    }
    // Some mutations must decode, or the round trip above checked nothing.
    assert!(
        decoded.entries > 100 && decoded.snapshots > 10,
        "only {decoded:?} of {tried} mutations decoded"
    );
}
