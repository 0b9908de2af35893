#!/usr/bin/env bash
# A/B of two purser release binaries on this machine, interleaved:
# uniform and hot charges at 64 connections, then the server's CPU per
# batch charge at a fixed open-loop load (see BENCHMARKS.md).
#
#   bench/ab.sh BEFORE_BINARY AFTER_BINARY [ROUNDS]
#
# Keep the machine otherwise idle. Results: $OUT/results.jsonl and a table.
set -euo pipefail
BEFORE=$1 AFTER=$2 ROUNDS=${3:-3}
KEY=sk_ab_test_key_0123456789abcdef
PORT=${PORT:-18787}
OUT=${OUT:-$(mktemp -d)}; : > "$OUT/results.jsonl"
TICKS=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # binary name scenario round
  local bin=$1 name=$2 scenario=$3 round=$4 dir
  dir=$(mktemp -d)
  PURSER_ADMIN_KEY=$KEY PURSER_LOG=warn "$bin" serve --data-dir "$dir" --listen 127.0.0.1:$PORT \
      > "$OUT/server-$name.log" 2>&1 &
  local server=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done
  local bench=("$bin" bench --url http://127.0.0.1:$PORT --api-key $KEY --json)
  "${bench[@]}" --scenario "$scenario" --setup --accounts 10000 --duration 1 --warmup 0 > /dev/null
  if [ "$scenario" = batch ]; then
    local before after
    before=$(cpu_ticks $server)
    "${bench[@]}" --scenario batch --batch-size 1000 --concurrency 4 --rate 50 --duration 10 \
        --warmup 0 > "$OUT/batch.json"
    sleep 10 # the history index catches up, as in production
    after=$(cpu_ticks $server)
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); r.update(build=sys.argv[2], round=int(sys.argv[3]), cpu_seconds=int(sys.argv[4])/int(sys.argv[5])); print(json.dumps(r))' \
        "$OUT/batch.json" "$name" "$round" $((after - before)) "$TICKS" >> "$OUT/results.jsonl"
  else
    "${bench[@]}" --scenario "$scenario" --concurrency 64 --duration 10 --warmup 2 \
        | sed "s/^{/{\"build\":\"$name\",\"round\":$round,/" >> "$OUT/results.jsonl"
  fi
  kill $server; wait $server 2>/dev/null || true; rm -rf "$dir"
}
for round in $(seq "$ROUNDS"); do
  for scenario in uniform hot batch; do
    # Alternate which build goes first, so neither always runs on a warmer machine.
    if [ $((round % 2)) = 1 ]; then order=("$BEFORE" before "$AFTER" after); else order=("$AFTER" after "$BEFORE" before); fi
    run "${order[0]}" "${order[1]}" $scenario $round
    run "${order[2]}" "${order[3]}" $scenario $round
  done
done
python3 - "$OUT/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for row in rows:
    if row["scenario"] == "batch":
        charges = row["requests"] * 1000
        figure = f'{row["cpu_seconds"] * 1e6 / charges:.2f} us of server CPU per charge'
    else:
        figure = f'{row["charges_per_second"]:,.0f}/s, p99 {row["latency_ms"]["p99"]} ms'
    print(f'{row["build"]:<7} round {row["round"]} {row["scenario"]:<8} {figure}')
PY
echo "results: $OUT/results.jsonl"
