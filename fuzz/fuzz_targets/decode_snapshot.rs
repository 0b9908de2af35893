//! `decode_snapshot` must refuse bad bytes without panicking; whatever it
//! accepts must re-encode to bytes that decode to the same accounts, and
//! those bytes must re-encode to themselves.

#![no_main]

use libfuzzer_sys::fuzz_target;
use purser_core::AccountSnapshot;
use purser_store::{decode_snapshot, encode_snapshot};

fuzz_target!(|bytes: &[u8]| {
    let Ok(accounts) = decode_snapshot(bytes) else {
        return;
    };
    let mut once = Vec::new();
    encode_snapshot(&accounts, &mut once);
    let again: Vec<AccountSnapshot> =
        decode_snapshot(&once).expect("a re-encoded snapshot decodes");
    assert_eq!(
        again, accounts,
        "the re-encoded snapshot decodes differently"
    );
    let mut twice = Vec::new();
    encode_snapshot(&again, &mut twice);
    assert_eq!(once, twice, "the encoding is not stable");
});
