#!/usr/bin/env bash
# Heads on stored features: Fashion-MNIST, 20 training images per class (seed 0), all 200
# train (no validation split, fixed budgets), 2,000 test images (200 per class). The frozen
# Lite0 trunk runs once per image; every head after the first reads the feature cache, and so
# does `graft eval` on the test set. Prints a markdown table (the one in docs/heads.md).
#
# Usage: scripts/heads.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/heads}
GRAFT=./target/release/graft
cargo build --release -q
mkdir -p "$WORK/runs"
[ -d "$WORK/train" ] || $GRAFT data import fashion-mnist --split train --per-class 20 --seed 0 --out "$WORK/train" >/dev/null
[ -d "$WORK/test" ] || $GRAFT data import fashion-mnist --split test --per-class 200 --seed 0 --out "$WORK/test" >/dev/null
echo "| head | command | test accuracy | fit s | eval s |"
echo "|---|---|---|---|---|"
while read -r name args; do
    run="$WORK/runs/$name"
    rm -rf "$run"
    t0=$SECONDS
    # shellcheck disable=SC2086
    $GRAFT fit --data "$WORK/train" --out "$run" --val-split 0 $args --json > "$run.fit.json"
    t1=$SECONDS
    acc=$($GRAFT eval --run "$run" --data "$WORK/test" --json | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["accuracy"], 4))')
    echo "| $name | \`graft fit --data train --val-split 0 $args\` | $acc | $((t1 - t0)) | $((SECONDS - t1)) |"
done <<'LIST'
linear --head linear --epochs 30 --lr 0.01
mlp --head mlp:1024,1024 --dropout 0.5 --epochs 30 --lr 0.001
logistic --head logistic:c=1
svm --head svm
knn --head knn:5
prototype --head prototype
LIST
