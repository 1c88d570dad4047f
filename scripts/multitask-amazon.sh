#!/usr/bin/env bash
# Multi-task text heads (issue 19): Amazon reviews of four domains (books, dvd, electronics,
# kitchen; 500 positive and 500 negative each, seed 0) with two label columns, sentiment and
# domain. Every other review trains, the rest test. One frozen MiniLM-L6 pass feeds a linear head
# per task (`--tasks sentiment,domain`), against a fit on each task alone; 3 seeds, 30 epochs,
# no validation split. Prints a markdown table; raw results in $WORK/results.jsonl.
#
# Usage: scripts/multitask-amazon.sh [WORK_DIR]   (SOURCE=DIR holding the Amazon domains, default
# ../shared/data; SEEDS="0 1 2")
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/multitask-amazon}
SEEDS=${SEEDS:-"0 1 2"}
SOURCE=${SOURCE:-../shared/data}
GRAFT=${GRAFT:-./target/release/graft}
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -q
mkdir -p "$WORK/runs"
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
for d in books dvd electronics kitchen; do
    [ -f "$WORK/$d.csv" ] || $GRAFT data import "amazon:$d" --source "$SOURCE" --per-class 500 --seed 0 --out "$WORK/$d.csv" >/dev/null
done
python3 - "$WORK" <<'PY'
import csv, sys
work = sys.argv[1]
rows = []
for d in ["books", "dvd", "electronics", "kitchen"]:
    rows += [(r["text"], r["label"], d) for r in csv.DictReader(open(f"{work}/{d}.csv", newline=""))]
train, test = rows[0::2], rows[1::2]
def write(name, header, pick, part):
    with open(f"{work}/{name}", "w", newline="") as f:
        w = csv.writer(f); w.writerow(header); w.writerows(pick(r) for r in part)
for part, name in [(train, "train"), (test, "test")]:
    write(f"{name}.csv", ["text", "sentiment", "domain"], lambda r: r, part)
    write(f"{name}-sentiment.csv", ["text", "label"], lambda r: (r[0], r[1]), part)
    write(f"{name}-domain.csv", ["text", "label"], lambda r: (r[0], r[2]), part)
PY
acc() { $GRAFT eval --run "$1" --data "$2" --json | python3 -c "import json,sys; v=json.load(sys.stdin); print(json.dumps({k: t['accuracy'] for k, t in v['tasks'].items()}) if 'tasks' in v else v['accuracy'])"; }
for seed in $SEEDS; do
    common=(--model minilm-l6 --val-split 0 --epochs 30 --seed "$seed" --overwrite --json)
    run="$WORK/runs/multi-$seed"
    $GRAFT fit --data "$WORK/train.csv" --tasks sentiment,domain --out "$run" "${common[@]}" > "$run.fit.json" 2> "$run.fit.log"
    multi=$(acc "$run" "$WORK/test.csv")
    for task in sentiment domain; do
        one="$WORK/runs/$task-$seed"
        $GRAFT fit --data "$WORK/train-$task.csv" --out "$one" "${common[@]}" > "$one.fit.json" 2> "$one.fit.log"
        single=$(acc "$one" "$WORK/test-$task.csv")
        m=$(python3 -c "import json; print(json.loads('$multi')['$task'])")
        echo "{\"task\": \"$task\", \"seed\": $seed, \"multi\": $m, \"single\": $single, \"embedded\": $(python3 -c "import json; print(json.load(open('$run.fit.json'))['cache']['misses'])")}" >> "$RESULTS"
        echo "$task seed $seed: multi $m single $single" >&2
    done
done
python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| task | one multi-task fit | single-task fit | difference (points) | seeds |")
print("|---|---|---|---|---|")
for t in dict.fromkeys(r["task"] for r in rows):
    m = [r["multi"] for r in rows if r["task"] == t]; s = [r["single"] for r in rows if r["task"] == t]
    sd = lambda a: statistics.stdev(a) if len(a) > 1 else 0.0
    print(f"| {t} | {statistics.mean(m):.3f} ± {sd(m):.3f} | {statistics.mean(s):.3f} ± {sd(s):.3f} | {100 * (statistics.mean(m) - statistics.mean(s)):+.1f} | {len(m)} |")
PY
