#!/bin/sh
# Seeds the cargo-fuzz corpora from the codec's golden fixtures
# (crates/purser-store/tests/fixtures/codec). The copies are not tracked
# (fuzz/.gitignore): the fixtures are the source of truth, so re-run this
# after blessing them. Existing corpus files are kept.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fixtures="$here/../crates/purser-store/tests/fixtures/codec"
if ! ls "$fixtures"/*.bin >/dev/null 2>&1; then
    echo "no fixtures in $fixtures: see crates/purser-store/tests/golden.rs" >&2
    exit 1
fi
mkdir -p "$here/corpus/decode_entry" "$here/corpus/decode_snapshot"
entries=0
snapshots=0
for file in "$fixtures"/entry-*.bin "$fixtures"/extra-*.bin; do
    cp "$file" "$here/corpus/decode_entry/"
    entries=$((entries + 1))
done
for file in "$fixtures"/snapshot-*.bin; do
    cp "$file" "$here/corpus/decode_snapshot/"
    snapshots=$((snapshots + 1))
done
echo "seeded $entries entries into fuzz/corpus/decode_entry, $snapshots snapshots into fuzz/corpus/decode_snapshot"
