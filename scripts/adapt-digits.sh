#!/usr/bin/env bash
# Domain adaptation on digits (issue 6): MNIST→USPS and USPS→MNIST with LeNet at 28×28, every
# method of `graft adapt`, several seeds; prints a markdown table of target test accuracy
# (mean ± std over seeds) and the wall time per run. Raw results: $WORK/results.jsonl.
#
# Data (../shared/data): MNIST train = the 10,000 digits of train-10k, MNIST test = t10k (10,000);
# USPS train 7,291, USPS test 2,007. 10% of the source (stratified, seeded) picks the epoch; the
# target test set is evaluated once at the end and never used for any choice.
#
# Budget: TLlib trains 20 × 2,500 iterations of batch 128 on a GPU; this CPU benchmark runs
# EPOCHS × ITERS iterations of BATCH images per domain (default 8 × 100 × 32). ADDA spends half
# of the same budget on source pre-training and half on the adversarial phase.
#
# Usage: scripts/adapt-digits.sh [WORK_DIR]
#   SEEDS="0 1 2"  METHODS="source-only ddc dan coral dann adda cdan"  TASKS="m2u u2m"
#   (also mcc bsp afn mdd daan autodial dsn; ARGS_M2U/ARGS_U2M="--select dev" for label-free selection)
#   EPOCHS=8 ITERS=100 BATCH=32 DATA_ROOT=../shared/data
#   PRETRAIN_EPOCHS=N: ADDA pre-trains N epochs, then adapts EPOCHS (default: EPOCHS/2 + the rest)
#   PARALLEL=1: run the tasks side by side (one process per task), e.g. on a 2-core machine
#   THREADS=N: RAYON_NUM_THREADS of each run (default: 1 with PARALLEL=1, else unset); a second
#   thread costs 1–15% more CPU per LeNet iteration, so side-by-side runs use one each
#   ARGS_M2U="...", ARGS_U2M="...": extra `graft adapt` flags for one task, e.g. TLlib's settings
#   ARGS_U2M="--lr 0.1 --lr-schedule inv --lambda-schedule warm-start"
#   GRAFT=path: use this binary instead of building target/release/graft (a copy keeps a long
#   sweep safe from rebuilds)
#   NICE=10: niceness of the training processes
#   SUMMARY_ONLY=1: no runs; print the table of what $WORK/results-*.jsonl hold so far
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/adapt-digits}
SEEDS=${SEEDS:-"0 1 2"}
METHODS=${METHODS:-"source-only ddc dan coral dann adda cdan"}
TASKS=${TASKS:-"m2u u2m"}
EPOCHS=${EPOCHS:-8}
ITERS=${ITERS:-100}
BATCH=${BATCH:-32}
DATA_ROOT=${DATA_ROOT:-../shared/data}
PARALLEL=${PARALLEL:-0}
NICE=${NICE:-10}
SUMMARY_ONLY=${SUMMARY_ONLY:-0}
ARGS_M2U=${ARGS_M2U:-}
ARGS_U2M=${ARGS_U2M:-}
if [ -n "${THREADS:-}" ]; then
  export RAYON_NUM_THREADS=$THREADS
elif [ "$PARALLEL" = 1 ]; then
  export RAYON_NUM_THREADS=1
fi
if [ "$SUMMARY_ONLY" = 1 ]; then
  TASKS=""
elif [ -z "${GRAFT:-}" ]; then
  cargo build --release -q
  GRAFT=./target/release/graft
fi
mkdir -p "$WORK/runs"
RESULTS="$WORK/results.jsonl"
[ "$SUMMARY_ONLY" = 1 ] || : > "$RESULTS"

# All runs of one task, seed by seed, appended to $2.
sweep_task() {
  local task=$1 out=$2
  for seed in $SEEDS; do
    case $task in
      m2u) src=mnist:train; tgt=usps:train; test=usps:test; extra=$ARGS_M2U ;;
      u2m) src=usps:train; tgt=mnist:train; test=mnist:test; extra=$ARGS_U2M ;;
      *) echo "unknown task $task" >&2; exit 2 ;;
    esac
    for method in $METHODS; do
      run="$WORK/runs/$task-$method-$seed"
      rm -rf "$run"
      budget=(--epochs "$EPOCHS")
      if [ "$method" = adda ]; then
        if [ -n "${PRETRAIN_EPOCHS:-}" ]; then
          budget=(--pretrain-epochs "$PRETRAIN_EPOCHS" --epochs "$EPOCHS")
        else
          budget=(--pretrain-epochs $((EPOCHS / 2)) --epochs $((EPOCHS - EPOCHS / 2)))
        fi
      fi
      start=$(date +%s.%N)
      nice -n "$NICE" "$GRAFT" adapt --method "$method" --source "$src" --target "$tgt" --target-test "$test" \
        --data-root "$DATA_ROOT" --iters-per-epoch "$ITERS" --batch-size "$BATCH" "${budget[@]}" \
        $extra --seed "$seed" --out "$run" --json > "$run.json" 2> "$run.log"
      wall=$(python3 -c "import time,sys; print(round(time.time()-float(sys.argv[1]),1))" "$start")
      python3 - "$run.json" "$task" "$method" "$seed" "$wall" "$extra" >> "$out" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
print(json.dumps({"task": sys.argv[2], "method": sys.argv[3], "seed": int(sys.argv[4]), "args": sys.argv[6],
                  "target_test_accuracy": v["target_test_accuracy"], "source_val_accuracy": v["source_val_accuracy"],
                  "best_epoch": v["best_epoch"], "iterations": v["iterations"], "wall_seconds": float(sys.argv[5])}))
PY
      tail -n 1 "$out" >&2
    done
  done
}

pids=()
for task in $TASKS; do
  : > "$WORK/results-$task.jsonl"
  if [ "$PARALLEL" = 1 ]; then
    sweep_task "$task" "$WORK/results-$task.jsonl" &
    pids+=($!)
  else
    sweep_task "$task" "$WORK/results-$task.jsonl"
  fi
done
for pid in "${pids[@]}"; do wait "$pid"; done
for task in $TASKS; do cat "$WORK/results-$task.jsonl" >> "$RESULTS"; done
[ "$SUMMARY_ONLY" = 1 ] && cat "$WORK"/results-*.jsonl > "$RESULTS"

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
published = {"source-only": (82.1, 74.6), "dan": (86.0, 89.5), "dann": (91.7, 95.2), "adda": (94.5, 98.3), "cdan": (96.0, 97.7),
             "mcc": (95.1, 94.6), "mdd": (94.8, 97.8), "bsp": (95.7, 97.8), "afn": (88.6, 97.2)}
order = ["source-only", "ddc", "dan", "coral", "dann", "adda", "cdan", "mcc", "bsp", "afn", "mdd", "daan", "autodial", "dsn"]
def cell(method, task, key="target_test_accuracy", scale=100.0):
    v = [r[key] * scale for r in rows if r["method"] == method and r["task"] == task]
    if not v:
        return "—", None
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.1f} ± {sd:.1f} (n={len(v)})", statistics.mean(v)
print("| method | M→U (ours) | U→M (ours) | M→U TLlib | U→M TLlib | wall s/run (M→U, U→M) |")
print("|---|---|---|---|---|---|")
for m in order:
    if not any(r["method"] == m for r in rows):
        continue
    mu, _ = cell(m, "m2u"); um, _ = cell(m, "u2m")
    w = [statistics.mean([r["wall_seconds"] for r in rows if r["method"] == m and r["task"] == t] or [0]) for t in ("m2u", "u2m")]
    p = published.get(m, ("—", "—"))
    print(f"| {m} | {mu} | {um} | {p[0]} | {p[1]} | {w[0]:.0f}, {w[1]:.0f} |")
PY
