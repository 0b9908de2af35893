#!/usr/bin/env bash
# Idempotency keys at scale (issue 14, item 1): memory and disk per remembered
# key after N keyed charges (batch items, each with its own key), then after
# the retention passes on the test clock while the server keeps running (the
# janitor purges them), then after a restart.
#
#   bench/keys.sh [BINARY] [KEYS]      # defaults: ./target/release/purser 1000000
#   CACHE_KEYS=64 RESTART_FULL=0 bench/keys.sh
set -euo pipefail
BIN=$(realpath "${1:-./target/release/purser}")
KEYS=${2:-1000000}
PORT=${PORT:-18795}
KEY=sk_bench_keys_0123456789abcdef
DIR=$(mktemp -d)
# CACHE_KEYS: answers kept in memory (the server's default is 100,000); with
# a small cache, the figure per key is that of a key beyond the cache.
printf '[idempotency]\npurge_interval_seconds = 2\ncache_keys = %s\n' "${CACHE_KEYS:-100000}" > "$DIR/purser.toml"
cd "$DIR"
serve() {
    PURSER_ADMIN_KEY=$KEY PURSER_LOG=warn,purser_engine=info "$BIN" serve --data-dir data --listen 127.0.0.1:$PORT \
        --test-clock > server.log 2>&1 &
    SERVER=$!
    until curl -sf http://127.0.0.1:$PORT/readyz > /dev/null; do
        kill -0 $SERVER 2>/dev/null || { cat server.log; exit 1; }
        sleep 0.05
    done
}
rss() { awk '/RssAnon/ {print $2 * 1024}' /proc/$SERVER/status; }
db() {
    python3 - "$DIR/data/purser.db" <<'PY'
import sqlite3, sys
c = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
rows = c.execute("select count(*) from idempotency_record").fetchone()[0]
size = c.execute("pragma page_size").fetchone()[0]
pages = c.execute("pragma page_count").fetchone()[0]
free = c.execute("pragma freelist_count").fetchone()[0]
# The records' own pages (table and key index), journal entries aside.
records = c.execute("select coalesce(sum(pgsize), 0) from dbstat where name in ('idempotency_record', 'idempotency_record_by_key')").fetchone()[0]
print(rows, (pages - free) * size, free * size, records)
PY
}
trap 'kill $SERVER 2>/dev/null || true; rm -rf "$DIR"' EXIT
serve
bench=("$BIN" bench --url http://127.0.0.1:$PORT --api-key $KEY)
"${bench[@]}" --scenario batch --setup --accounts 10000 --count 1 --warmup 0 > /dev/null 2>&1
sleep 2
read -r rows0 used0 _ rec0 < <(db); rss0=$(rss)
"${bench[@]}" --scenario batch --batch-size 1000 --concurrency 4 --accounts 10000 \
    --count $((KEYS / 1000)) --warmup 0 2>&1 | grep -E "requests in"
sleep 5
read -r rows1 used1 _ rec1 < <(db); rss1=$(rss)
echo "after $KEYS keyed charges: $rows1 records; anonymous memory $(( (rss1 - rss0) / (rows1 - rows0) )) bytes a key (RssAnon $((rss0 / 1048576)) -> $((rss1 / 1048576)) MB); purser.db $(( (used1 - used0) / (rows1 - rows0) )) bytes a key in use with its journal entry, $(( (rec1 - rec0) / (rows1 - rows0) )) bytes the record alone (table and key index)"
curl -sf -X POST -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"seconds": 172800}' http://127.0.0.1:$PORT/v1/test_clock/advance > /dev/null
for _ in $(seq 60); do read -r rows _ < <(db); [ "$rows" -le "$rows0" ] && break; sleep 1; done
sleep 3
read -r rows2 used2 free2 _ < <(db); rss2=$(rss)
echo "the retention passed (test clock +48 h), server still running: $rows2 records left; RssAnon $((rss2 / 1048576)) MB; purser.db $((used2 / 1048576)) MB in use, $((free2 / 1048576)) MB free for reuse"
echo "memory the keys held (given back when they were forgotten): $(( (rss1 - rss2) / (rows1 - rows0) )) bytes a key"
# Some ordinary traffic: threads that allocated the freed memory take
# their freed blocks back (mimalloc frees across threads lazily).
"${bench[@]}" --scenario uniform --accounts 10000 --duration 3 --warmup 0 > /dev/null 2>&1
sleep 12
echo "after 3 s of unkeyed charges and 12 s idle: RssAnon $(( $(rss) / 1048576 )) MB"
kill -INT $SERVER; wait $SERVER || true
started=$(date +%s%N); serve; ready=$(date +%s%N)
echo "restart to ready: $(( (ready - started) / 1000000 )) ms; RssAnon $(( $(rss) / 1048576 )) MB"
if [ "${RESTART_FULL:-1}" = 1 ]; then
    # Again with every key still remembered: the start must not depend on
    # how many there are (they are learnt in the background).
    "${bench[@]}" --scenario batch --batch-size 1000 --concurrency 4 --accounts 10000 \
        --count $((KEYS / 1000)) --warmup 0 > /dev/null 2>&1
    sleep 3
    kill -INT $SERVER; wait $SERVER || true
    started=$(date +%s%N); serve; ready=$(date +%s%N)
    read -r rows3 _ < <(db)
    echo "restart to ready with $rows3 keys remembered: $(( (ready - started) / 1000000 )) ms"
    for _ in $(seq 120); do grep -q "idempotency keys learnt" server.log && break; sleep 0.5; done
    grep -o "idempotency keys learnt.*" server.log | head -1 || true
fi
