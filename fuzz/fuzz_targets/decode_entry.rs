//! `decode_entry` must refuse bad bytes without panicking; whatever it
//! accepts must re-encode to bytes that decode to the same entry, and those
//! bytes must re-encode to themselves.

#![no_main]

use libfuzzer_sys::fuzz_target;
use purser_core::Entry;
use purser_store::{decode_entry, encode_entry};

fuzz_target!(|bytes: &[u8]| {
    let Ok(entry) = decode_entry(bytes) else {
        return;
    };
    let mut once = Vec::new();
    encode_entry(&entry, &mut once);
    let again: Entry = decode_entry(&once).expect("a re-encoded entry decodes");
    assert_eq!(again, entry, "the re-encoded entry decodes differently");
    let mut twice = Vec::new();
    encode_entry(&again, &mut twice);
    assert_eq!(once, twice, "the encoding is not stable");
});
