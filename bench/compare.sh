#!/usr/bin/env bash
# The side-by-side race, in one run on one machine:
#   1. the conventional PostgreSQL ledger of ../shared/bench/pg-baseline (durable,
#      synchronous_commit=on), driven by pgbench through its own run.sh;
#   2. purser on the embedded store and on PostgreSQL, driven by `purser bench`;
# with the same shapes (10,000 accounts uniform; one hot account; 8/32/64
# clients), then one table: charges/s, p99, and purser's ratio to the baseline.
#
#   sudo bench/compare.sh          # ~6 minutes; DURATION=20 CLIENTS="8 32 64"
#
# purser runs on both of its stores: embedded (SQLite) and PostgreSQL.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BASELINE=${BASELINE:-$ROOT/../shared/bench/pg-baseline}
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-"8 32 64"}
OUT=$ROOT/target/bench
PORT=${PURSER_PORT:-18787}
KEY=sk_compare_$$
mkdir -p "$OUT"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

log "building purser (release)"
(cd "$ROOT" && cargo build --release -q -p purser)
PURSER=$ROOT/target/release/purser

log "baseline: PostgreSQL debit() with pgbench, durable, clients $CLIENTS, ${DURATION}s each"
RESULTS_DIR=$OUT/pg-baseline CLIENTS="$CLIENTS" MODES=durable SAMPLE_WAITS=0 DURATION=$DURATION \
    bash "$BASELINE/run.sh" > "$OUT/pg-baseline.log" 2>&1 || { tail -20 "$OUT/pg-baseline.log"; exit 1; }
# The baseline leaves its cluster running with 4 GB of shared buffers: stop it
# so that purser runs on the same, otherwise idle, machine.
pg_ctlcluster 15 pgbaseline stop 2>/dev/null || true
# ...and let the kernel finish writing its files back, so that the fsyncs
# purser waits for are not queued behind PostgreSQL's.
sync
sleep 5

: > "$OUT/purser.jsonl"
# purser on PostgreSQL uses the machine's own cluster (PG_URL, a user that may
# create databases), one fresh database per scenario.
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}
STORES=${STORES:-"embedded postgres"}
for store in $STORES; do
  for scenario in uniform hot; do
    data=$(mktemp -d)
    args=(--data-dir "$data")
    if [ "$store" = postgres ]; then
        db=purser_compare_$$_$scenario
        psql "$PG_URL" -qc "CREATE DATABASE $db" >/dev/null
        args=(--database-url "${PG_URL%/*}/$db")
    fi
    log "purser ($store): $scenario"
    PURSER_ADMIN_KEY=$KEY PURSER_LOG=warn "$PURSER" serve "${args[@]}" --listen 127.0.0.1:$PORT \
        > "$OUT/purser-$store-$scenario.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
    "$PURSER" bench --url "http://127.0.0.1:$PORT" --api-key "$KEY" --scenario "$scenario" \
        --setup --accounts 10000 --duration 1 --warmup 0 --json > /dev/null
    for clients in $CLIENTS; do
        "$PURSER" bench --url "http://127.0.0.1:$PORT" --api-key "$KEY" --scenario "$scenario" \
            --accounts 10000 --concurrency "$clients" --duration "$DURATION" --warmup 3 --json \
            | sed "s/^{/{\"store\":\"$store\",\"clients\":$clients,/" >> "$OUT/purser.jsonl"
    done
    kill "$server"; wait "$server" 2>/dev/null || true
    rm -rf "$data"
    if [ "$store" = postgres ]; then psql "$PG_URL" -qc "DROP DATABASE $db WITH (FORCE)" >/dev/null; fi
  done
done

python3 - "$OUT/pg-baseline/latest.txt" "$OUT/purser.jsonl" <<'PY' | tee "$OUT/compare.txt"
import json, sys
baseline = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) >= 9 and parts[0] in ("uniform", "hot") and parts[1] == "durable":
        baseline[(parts[0], int(parts[3]))] = (float(parts[4]), float(parts[7]))
print(f"{'scenario':<9} {'clients':>7} {'baseline/s':>11} {'p99 ms':>8}  {'purser on':<9} {'purser/s':>10} {'p99 ms':>8} {'ratio':>7}  errors")
for line in open(sys.argv[2]):
    r = json.loads(line)
    key = (r["scenario"], r["clients"])
    tps, p99 = baseline.get(key, (float("nan"), float("nan")))
    ours = r["charges_per_second"]
    print(f"{key[0]:<9} {key[1]:>7} {tps:>11.0f} {p99:>8.2f}  {r['store']:<9} {ours:>10.0f} {r['latency_ms']['p99']:>8.2f} {ours / tps:>6.1f}x  {r['errors'] or 'none'}")
PY
log "saved: $OUT/compare.txt"
