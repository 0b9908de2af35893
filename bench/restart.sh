#!/usr/bin/env bash
# Memory and restart at scale: 1,000,000 accounts (2M journal entries), a
# restart (time to ready, resident memory), then charges until the journal
# holds 10M entries, and another restart. About 8 minutes; figures in
# BENCHMARKS.md ("Memory and restart").
#
#   bench/restart.sh            # ACCOUNTS=1000000 CHARGES=8000000 PORT=8790 DIR=/tmp/purser-restart
#                               # BIN=<a purser binary> (default: build this checkout's)
set -euo pipefail
cd "$(dirname "$0")/.."
ACCOUNTS=${ACCOUNTS:-1000000}
CHARGES=${CHARGES:-8000000}
PORT=${PORT:-8790}
DIR=${DIR:-/tmp/purser-restart}
export PURSER_API_KEY=sk_bench_restart
if [ -z "${BIN:-}" ]; then
    BIN=./target/release/purser
    cargo build --release --locked -p purser >/dev/null
fi
rm -rf "$DIR" && mkdir -p "$DIR"
serve() {
    PURSER_ADMIN_KEY=$PURSER_API_KEY PURSER_LOG=warn "$BIN" serve --data-dir "$DIR/data" \
        --listen "127.0.0.1:$PORT" >>"$DIR/server.log" 2>&1 &
    SERVER=$!
}
ready() { until curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; do sleep 0.02; done; }
restart() {
    kill -INT "$SERVER"; wait "$SERVER" || true
    local started; started=$(date +%s.%N)
    serve; ready
    echo "restart to ready: $(echo "$(date +%s.%N) - $started" | bc) s"
    sleep 3
    grep -E 'VmRSS|RssAnon' "/proc/$SERVER/status" | tr -s ' \n' ' '; echo
}
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
serve; ready
"$BIN" --url "http://127.0.0.1:$PORT" bench --setup --accounts "$ACCOUNTS" --count 1 --warmup 0 >/dev/null 2>&1
echo "== $ACCOUNTS accounts"
restart
echo "== $CHARGES uniform charges"
"$BIN" --url "http://127.0.0.1:$PORT" bench --accounts "$ACCOUNTS" --count "$CHARGES" --warmup 0 2>&1 | tail -3
ls -la "$DIR/data"
echo "== after the charges"
restart
if [ "${VERIFY:-1}" = 1 ] && "$BIN" verify --help 2>/dev/null | grep -q database-url; then
    kill -INT "$SERVER"; wait "$SERVER" || true
    started=$(date +%s.%N)
    "$BIN" verify --data-dir "$DIR/data" 2>/dev/null | tail -1 | cut -c1-160
    echo "verify: $(echo "$(date +%s.%N) - $started" | bc) s"
    serve; ready
    started=$(date +%s.%N)
    "$BIN" backup "$DIR/backup" --data-dir "$DIR/data" 2>&1 | tail -1 | cut -c1-160
    echo "backup while serving, with its verify: $(echo "$(date +%s.%N) - $started" | bc) s"
fi
