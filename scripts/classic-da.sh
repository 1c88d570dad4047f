#!/usr/bin/env bash
# The classic domain-adaptation methods on the JDA paper's digits protocol (Long et al., ICCV
# 2013): 1,800 USPS and 2,000 MNIST images drawn at random (one draw per seed), 16×16 grey raw
# pixels (box filter, see docs/classic-da.md), each row L2-normalised, 1-NN after the transform,
# tested on the drawn target images themselves (transductive, as the paper). TCA and JDA: k = 100,
# μ = 1 (μ = 0.1 is the paper's digit setting: MU=0.1), linear kernel (the authors' "primal"),
# JDA 10 iterations; GFK d = 20; PCA k = 100; NN = no transform.
# Prints a markdown table of mean ± std over seeds next to the paper's figures.
# Raw results: $WORK/results.jsonl (one line per run).
#
# Data (../shared/data): USPS train (7,291) and MNIST train (the 10,000 of train-10k): the draws
# come from these (the paper drew from all of USPS and all 70,000 of MNIST).
#
# Usage: scripts/classic-da.sh [WORK_DIR]
#   SEEDS="0 1 2 3 4"  METHODS="none pca gfk tca jda"  TASKS="u2m m2u"
#   FEATURES=raw:16 (raw:16:bilinear, a zoo MODEL[:LAYER], …)  MU=1  DIM=  (empty: the defaults)
#   EXTRA="..." more `graft adapt` flags; DATA_ROOT=../shared/data; NICE=10
#   GRAFT=path: use this binary instead of building target/release/graft
#   SUMMARY_ONLY=1: no runs; print the table of what $WORK/results.jsonl holds
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-target/classic-da}
SEEDS=${SEEDS:-"0 1 2 3 4"}
METHODS=${METHODS:-"none pca gfk tca jda"}
TASKS=${TASKS:-"u2m m2u"}
FEATURES=${FEATURES:-raw:16}
MU=${MU:-1}
DIM=${DIM:-}
EXTRA=${EXTRA:-}
DATA_ROOT=${DATA_ROOT:-../shared/data}
NICE=${NICE:-10}
SUMMARY_ONLY=${SUMMARY_ONLY:-0}
mkdir -p "$WORK/runs"
RESULTS="$WORK/results.jsonl"
if [ "$SUMMARY_ONLY" != 1 ]; then
  if [ -z "${GRAFT:-}" ]; then
    cargo build --release -q
    GRAFT=./target/release/graft
  fi
  : > "$RESULTS"
  for task in $TASKS; do
    case $task in
      u2m) src=usps:train; tgt=mnist:train; ns=1800; nt=2000 ;;
      m2u) src=mnist:train; tgt=usps:train; ns=2000; nt=1800 ;;
      *) echo "unknown task $task" >&2; exit 2 ;;
    esac
    for seed in $SEEDS; do
      for method in $METHODS; do
        run="$WORK/runs/$task-$method-$seed"
        rm -rf "$run"
        flags=()
        case $method in tca|jda) flags+=(--mu "$MU") ;; esac
        if [ -n "$DIM" ]; then case $method in none|coral-shallow) ;; *) flags+=(--dim "$DIM") ;; esac; fi
        nice -n "$NICE" "$GRAFT" adapt --method "$method" --source "$src" --target "$tgt" --target-test "$tgt" \
          --source-samples "$ns" --target-samples "$nt" --features "$FEATURES" --data-root "$DATA_ROOT" \
          "${flags[@]}" $EXTRA --seed "$seed" --out "$run" --json > "$run.json" 2> "$run.log"
        python3 - "$run.json" "$task" "$method" "$seed" >> "$RESULTS" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
print(json.dumps({"task": sys.argv[2], "method": sys.argv[3], "seed": int(sys.argv[4]),
                  "target_test_accuracy": v["target_test_accuracy"], "mu": v["mu"], "dim": v["dim"],
                  "per_iteration": [i["target_test_accuracy"] for i in v["per_iteration"]],
                  "fit_seconds": v["fit_seconds"], "wall_seconds": v["wall_seconds"]}))
PY
        tail -n 1 "$RESULTS" >&2
      done
    done
  done
fi

python3 - "$RESULTS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
# Long et al. 2013, Table 2 (USPS→MNIST, MNIST→USPS).
paper = {"none": (44.70, 65.94), "pca": (44.95, 66.22), "gfk": (46.45, 67.22), "tca": (51.05, 56.28), "jda": (59.65, 67.28)}
names = {"none": "NN", "pca": "PCA", "gfk": "GFK", "tca": "TCA", "jda": "JDA", "sa": "SA", "coral-shallow": "CORAL"}
def cell(method, task):
    v = [r["target_test_accuracy"] * 100 for r in rows if r["method"] == method and r["task"] == task]
    if not v:
        return "—"
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    return f"{statistics.mean(v):.2f} ± {sd:.2f} (n={len(v)})"
print("| method | USPS→MNIST (graft) | paper | MNIST→USPS (graft) | paper | fit s/run |")
print("|---|---|---|---|---|---|")
for m in ["none", "pca", "gfk", "tca", "jda", "sa", "coral-shallow"]:
    if not any(r["method"] == m for r in rows):
        continue
    p = paper.get(m, ("—", "—"))
    fit = statistics.mean(r["fit_seconds"] for r in rows if r["method"] == m)
    print(f"| {names[m]} | {cell(m, 'u2m')} | {p[0]} | {cell(m, 'm2u')} | {p[1]} | {fit:.1f} |")
PY
