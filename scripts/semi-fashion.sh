#!/usr/bin/env bash
# Semi-supervised fine-tuning (issue 19): Fashion-MNIST, 4 labelled training images per class
# (seeded), 10,000 unlabelled training images (1,000 per class, seed 100; their class folders
# are ignored), tested on the 10,000 test images. Frozen Lite0, linear head, batch 32.
# Supervised-only is the same fit without --unlabelled, given the same number of optimiser
# steps (450 epochs of 2 steps vs 20 epochs of 45). No validation split: every configuration
# has a fixed budget and keeps its last epoch, so the test set picks nothing.
# Prints a markdown table (mean ± std over the seeds, the first case the baseline); raw results in
# $WORK/results.jsonl.
# UNFROZEN=1: instead, Lite0's last block (_blocks.15) and head convolution trainable
# (--freeze 15), supervised-only and FixMatch --align on --threshold 0.8, same budgets; raw
# results in $WORK/results-unfrozen.jsonl.
# SELECT=1: pseudo-label with alignment, its inputs (the plain unlabelled images, --weak-augment
# none, or the default weak views) and threshold chosen without the test set: each pair of inputs
# and THRESHOLDS is fitted for every seed and measured on a labelled validation slice of the
# training split (100 per class, seed 300, less any image in a labelled or the unlabelled set); the
# pair with the best mean validation accuracy is then measured on the test set beside
# supervised-only. Raw results in $WORK/results-select.jsonl (validation rows have "split": "val").
#
# Usage: [UNFROZEN=1 | SELECT=1] scripts/semi-fashion.sh [WORK_DIR]     (SEEDS="0 1 2" by default)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/semi-fashion}
SEEDS=${SEEDS:-"0 1 2"}
GRAFT=${GRAFT:-./target/release/graft}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q
mkdir -p "$WORK/runs"
RESULTS="$WORK/results${UNFROZEN:+-unfrozen}${SELECT:+-select}.jsonl"
: > "$RESULTS"

[ -d "$WORK/test" ] || $GRAFT data import fashion-mnist --split test --out "$WORK/test" >/dev/null
[ -d "$WORK/unlabelled" ] || $GRAFT data import fashion-mnist --split train --per-class 1000 --seed 100 --out "$WORK/unlabelled" >/dev/null
for seed in $SEEDS; do
    [ -d "$WORK/labelled-$seed" ] || $GRAFT data import fashion-mnist --split train --per-class 4 --seed "$seed" --out "$WORK/labelled-$seed" >/dev/null
done
# run_case NAME SPLIT ARGS…: fit on this seed's labelled images, measure on $WORK/SPLIT.
run_case() {
    local name=$1 split=$2; shift 2
    local run="$WORK/runs/$name-$seed"
    local start=$SECONDS
    $GRAFT fit --data "$WORK/labelled-$seed" --out "$run" --overwrite --val-split 0 --seed "$seed" "$@" --json > "$run.fit.json" 2> "$run.fit.log"
    local fit_s=$((SECONDS - start))
    local acc
    acc=$($GRAFT eval --run "$run" --data "$WORK/$split" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"])')
    echo "{\"case\": \"$name\", \"split\": \"$split\", \"seed\": $seed, \"accuracy\": $acc, \"fit_seconds\": $fit_s}" >> "$RESULTS"
    echo "$name seed $seed, $split: $acc" >&2
}
U=(--unlabelled "$WORK/unlabelled" --epochs 20)
if [ -n "${SELECT:-}" ]; then
    if [ ! -d "$WORK/val" ]; then
        $GRAFT data import fashion-mnist --split train --per-class 100 --seed 300 --out "$WORK/val" >/dev/null
        # Images of the training split are named by their index: drop those already used.
        for f in "$WORK"/labelled-*/*/*.png "$WORK"/unlabelled/*/*.png; do
            rm -f "$WORK/val/$(basename "$(dirname "$f")")/$(basename "$f")"
        done
    fi
    # The inputs' name in the case, and their flags.
    declare -A INPUTS=([plain]="--weak-augment none" [weak]="")
    for inputs in plain weak; do
        for t in ${THRESHOLDS:-0.7 0.8 0.9 0.95}; do
            # shellcheck disable=SC2086 # the inputs' flags split into words
            for seed in $SEEDS; do run_case "pseudo-label-$inputs-align-t$t" val "${U[@]}" --method pseudo-label --align on ${INPUTS[$inputs]} --threshold "$t"; done
        done
    done
    best=$(python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [r for r in map(json.loads, filter(str.strip, open(sys.argv[1]))) if r["split"] == "val"]
means = {c: statistics.mean(r["accuracy"] for r in rows if r["case"] == c) for c in dict.fromkeys(r["case"] for r in rows)}
for c, m in means.items():
    print(f"validation {c}: {m:.4f}", file=sys.stderr)
best = max(means, key=means.get)
print(best.split("-")[2], best.rsplit("-t", 1)[1])
PY
)
    read -r inputs t <<< "$best"
    echo "chosen on validation: $inputs inputs, threshold $t" >&2
    for seed in $SEEDS; do
        run_case supervised test --epochs 450
        # shellcheck disable=SC2086
        run_case "pseudo-label-$inputs-align-t$t" test "${U[@]}" --method pseudo-label --align on ${INPUTS[$inputs]} --threshold "$t"
    done
else
    for seed in $SEEDS; do
        if [ -n "${UNFROZEN:-}" ]; then
            run_case supervised-freeze15 test --epochs 450 --freeze 15
            run_case fixmatch-align-t0.8-freeze15 test "${U[@]}" --method fixmatch --align on --threshold 0.8 --freeze 15
            continue
        fi
        run_case supervised test --epochs 450
        run_case pseudo-label test "${U[@]}" --method pseudo-label
        run_case pseudo-label-t0.8 test "${U[@]}" --method pseudo-label --threshold 0.8
        run_case pseudo-label-align test "${U[@]}" --method pseudo-label --align on
        run_case pseudo-label-align-t0.8 test "${U[@]}" --method pseudo-label --align on --threshold 0.8
        run_case fixmatch test "${U[@]}" --method fixmatch
        run_case fixmatch-t0.8 test "${U[@]}" --method fixmatch --threshold 0.8
        run_case fixmatch-align test "${U[@]}" --method fixmatch --align on
        run_case fixmatch-align-t0.8 test "${U[@]}" --method fixmatch --align on --threshold 0.8
        run_case mean-teacher test "${U[@]}" --method mean-teacher
    done
fi
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [r for r in map(json.loads, filter(str.strip, open(sys.argv[1]))) if r["split"] == "test"]
cases = list(dict.fromkeys(r["case"] for r in rows))
base = statistics.mean(r["accuracy"] for r in rows if r["case"] == cases[0])
print("| method | accuracy (mean ± std) | vs supervised-only | seeds |")
print("|---|---|---|---|")
for c in cases:
    a = [r["accuracy"] for r in rows if r["case"] == c]
    sd = statistics.stdev(a) if len(a) > 1 else 0.0
    print(f"| {c} | {statistics.mean(a):.3f} ± {sd:.3f} | {100 * (statistics.mean(a) - base):+.1f} | {len(a)} |")
PY
