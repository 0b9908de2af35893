#!/usr/bin/env bash
# The outbox's cost, in one run on one machine: purser on the embedded store
# races the same charges (uniform over 10,000 accounts, and one hot account;
# 64 connections) with no webhook endpoint, then with one endpoint
# subscribed to every event, delivered to a local receiver that verifies
# each delivery with the standardwebhooks package (e2e/webhook-receiver.mjs).
#
#   bench/webhooks.sh          # ~2 minutes; DURATION=20 CLIENTS=64 TIER=starter
#
# The uniform run's accounts are on TIER (default starter: 100 credits a
# month, an alert at 20) and its charges take CREDITS each, so they cross
# the alert as the run goes: the endpoint has events to receive. The hot
# account is on business (5,000), as in bench/compare.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-20}
CLIENTS=${CLIENTS:-64}
TIER=${TIER:-starter}
# Per uniform charge: ~1M charges over 10,000 accounts in 20 s take ~90 of
# each account's 100 credits, crossing its 20-credit alert.
CREDITS=${CREDITS:-0.9}
OUT=$ROOT/target/bench
PORT=${PURSER_PORT:-18788}
KEY=sk_webhooks_$$
mkdir -p "$OUT"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

(cd "$ROOT" && cargo build --release -q -p purser)
[ -d "$ROOT/e2e/node_modules/standardwebhooks" ] || npm ci --prefix "$ROOT/e2e" --no-audit --no-fund
PURSER=$ROOT/target/release/purser

work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
node "$ROOT/e2e/webhook-receiver.mjs" "$work/receiver.port" &
for _ in $(seq 100); do [ -s "$work/receiver.port" ] && break; sleep 0.1; done
RECEIVER=http://127.0.0.1:$(cat "$work/receiver.port")

: > "$OUT/webhooks.jsonl"
for endpoint in none one; do
  for scenario in uniform hot; do
    data=$(mktemp -d)
    PURSER_ADMIN_KEY=$KEY PURSER_LOG=warn "$PURSER" serve --data-dir "$data" --listen 127.0.0.1:$PORT \
        > "$OUT/webhooks-$endpoint-$scenario.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
    if [ "$endpoint" = one ]; then
        secret=$(curl -sf -X POST "http://127.0.0.1:$PORT/v1/webhook_endpoints" \
            -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
            -d "{\"url\": \"$RECEIVER/hook\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')
        curl -sf -X POST "$RECEIVER/_secrets" -d "{\"secrets\": [\"$secret\"]}" >/dev/null
    fi
    "$PURSER" bench --url "http://127.0.0.1:$PORT" --api-key "$KEY" --scenario "$scenario" \
        --tier "$([ "$scenario" = hot ] && echo business || echo "$TIER")" --setup --accounts 10000 --duration 1 --warmup 0 --json > /dev/null
    "$PURSER" bench --url "http://127.0.0.1:$PORT" --api-key "$KEY" --scenario "$scenario" \
        --credits "$([ "$scenario" = hot ] && echo 0.001 || echo "$CREDITS")" \
        --accounts 10000 --concurrency "$CLIENTS" --duration "$DURATION" --warmup 3 --json \
        | sed "s/^{/{\"endpoint\":\"$endpoint\",/" >> "$OUT/webhooks.jsonl"
    sleep 2
    kill "$server"; wait "$server" 2>/dev/null || true
    rm -rf "$data"
  done
done
delivered=$(curl -sf "$RECEIVER/_log" | python3 -c 'import json,sys; log=json.load(sys.stdin); print(len(log), sum(1 for d in log if all(d["verified"].values()) and d["verified"]))')
python3 - "$OUT/webhooks.jsonl" "$delivered" <<'PY' | tee "$OUT/webhooks.txt"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
got, verified = sys.argv[2].split()
print(f"{'scenario':<9} {'endpoint':<9} {'charges/s':>10} {'p50 ms':>8} {'p99 ms':>8}  errors")
for r in rows:
    print(f"{r['scenario']:<9} {r['endpoint']:<9} {r['charges_per_second']:>10.0f} {r['latency_ms']['p50']:>8.2f} {r['latency_ms']['p99']:>8.2f}  {r['errors'] or 'none'}")
print(f"deliveries received: {got}, verified by standardwebhooks: {verified}")
PY
