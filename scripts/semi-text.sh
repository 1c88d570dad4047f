#!/usr/bin/env bash
# Semi-supervised text classification (issue 19): SMS Spam Collection, 10 labelled messages per
# class (seeded), every message as unlabelled data (its `text` column only), evaluated on all
# 5,574 messages. Frozen MiniLM-L6 embeddings, linear head, batch 16; supervised-only gets the
# same number of optimiser steps. No validation split (fixed budgets, last epoch kept).
# Prints a markdown table (mean ± std over the seeds); raw results in $WORK/results.jsonl.
#
# Usage: scripts/semi-text.sh [WORK_DIR]     (SEEDS="0 1 2" by default; needs ../shared/data
# or SOURCE=DIR holding SMSSpamCollection)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/semi-text}
SEEDS=${SEEDS:-"0 1 2"}
SOURCE=${SOURCE:-../shared/data}
GRAFT=${GRAFT:-./target/release/graft}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q
mkdir -p "$WORK/runs"
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"

[ -f "$WORK/sms.csv" ] || $GRAFT data import sms-spam --source "$SOURCE" --out "$WORK/sms.csv" >/dev/null
# Unlabelled: the texts alone (a CSV with only a `text` column).
python3 - "$WORK/sms.csv" "$WORK/unlabelled.csv" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
with open(sys.argv[2], "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["text"])
    w.writerows([r["text"]] for r in rows)
PY
N=$(($(python3 -c "import csv,sys; print(sum(1 for _ in csv.DictReader(open('$WORK/unlabelled.csv', newline=''))))")))
for seed in $SEEDS; do
    labelled="$WORK/labelled-$seed.csv"
    $GRAFT data import sms-spam --source "$SOURCE" --per-class 10 --seed "$seed" --out "$labelled" >/dev/null
    run_case() {
        local name=$1; shift
        local run="$WORK/runs/$name-$seed"
        $GRAFT fit --model minilm-l6 --data "$labelled" --out "$run" --overwrite --val-split 0 --seed "$seed" --batch-size 16 "$@" --json > "$run.fit.json" 2> "$run.fit.log"
        local acc
        acc=$($GRAFT eval --run "$run" --data "$WORK/sms.csv" --json | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["accuracy"], v["macro_f1"])')
        echo "{\"case\": \"$name\", \"seed\": $seed, \"accuracy\": ${acc% *}, \"macro_f1\": ${acc#* }}" >> "$RESULTS"
        echo "$name seed $seed: $acc" >&2
    }
    # 20 epochs over N unlabelled texts, 7 per labelled one, 16 labelled per step.
    STEPS=$((20 * ((N + 111) / 112)))
    U=(--unlabelled "$WORK/unlabelled.csv" --epochs 20)
    run_case supervised --epochs "$((STEPS / 2))"
    run_case pseudo-label "${U[@]}" --method pseudo-label
    run_case pseudo-label-t0.8 "${U[@]}" --method pseudo-label --threshold 0.8
    run_case pseudo-label-align-t0.8 "${U[@]}" --method pseudo-label --align on --threshold 0.8
    run_case mean-teacher "${U[@]}" --method mean-teacher
done
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cases = list(dict.fromkeys(r["case"] for r in rows))
base = statistics.mean(r["accuracy"] for r in rows if r["case"] == "supervised")
print("| method | accuracy (mean ± std) | macro F1 | vs supervised-only | seeds |")
print("|---|---|---|---|---|")
for c in cases:
    a = [r["accuracy"] for r in rows if r["case"] == c]
    f = [r["macro_f1"] for r in rows if r["case"] == c]
    sd = statistics.stdev(a) if len(a) > 1 else 0.0
    print(f"| {c} | {statistics.mean(a):.3f} ± {sd:.3f} | {statistics.mean(f):.3f} | {100 * (statistics.mean(a) - base):+.1f} | {len(a)} |")
PY
