#!/usr/bin/env bash
# Fashion-MNIST with 100 labelled images (10 per class) and 2,000 other training images
# unlabelled: test accuracy (2,000 test images, 200 per class) of a linear head on
# EfficientNet-Lite0's frozen pooled features, from the original trunk vs. from a trunk whose top
# (the last block and the head convolution; --freeze 15) was tuned on the unlabelled images by
# SimCLR (contrastive: two stored augmented views of each image) or by siamese pairs (half of
# the same class, half of different ones; the class folders decide same/different only), 3 seeds
# (the seed picks the labelled subset, the pretraining's initialisation of the projection head,
# its batch order and view draws, and the head's initialisation), mean ± std. INITS picks the cases.
#
#   scripts/pretrain-trunk.sh [WORKDIR]      (run from the repository root, after cargo build --release)
set -euo pipefail
GRAFT=${GRAFT:-target/release/graft}
WORK=${1:-target/pretrain-trunk}
UNLABELLED=${UNLABELLED:-200}   # per class
PAIRS=${PAIRS:-2000}
PRE_EPOCHS=${PRE_EPOCHS:-10}
FIT_EPOCHS=${FIT_EPOCHS:-30}
SEEDS=${SEEDS:-"0 1 2"}
INITS=${INITS:-"original contrastive siamese"}
PRE_FLAGS=${PRE_FLAGS:-}
mkdir -p "$WORK"
[ -d "$WORK/unlabelled" ] || $GRAFT data import fashion-mnist --per-class "$UNLABELLED" --seed 100 --out "$WORK/unlabelled" >&2
[ -d "$WORK/test" ] || $GRAFT data import fashion-mnist --split test --per-class 200 --out "$WORK/test" >&2
[ -f "$WORK/pairs.csv" ] || python3 - "$WORK/unlabelled" "$PAIRS" > "$WORK/pairs.csv" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
by_class = {c: sorted(os.listdir(os.path.join(root, c))) for c in sorted(os.listdir(root))}
classes = list(by_class)
rng = random.Random(0)
print("a,b,same")
for i in range(n):
    c = rng.choice(classes)
    a = rng.choice(by_class[c])
    if i % 2 == 0:
        d, same = c, 1
    else:
        d, same = rng.choice([k for k in classes if k != c]), 0
    b = rng.choice(by_class[d])
    print(f"{c}/{a},{d}/{b},{same}")
PY
results="$WORK/results-pre${PRE_EPOCHS}-fit${FIT_EPOCHS}.tsv"
[ -f "$results" ] || printf 'seed\tinit\ttest_accuracy\tpretrain_seconds\tfirst_loss\tlast_loss\n' > "$results"
for seed in $SEEDS; do
  labelled="$WORK/labelled-$seed"
  [ -d "$labelled" ] || $GRAFT data import fashion-mnist --per-class 10 --seed "$seed" --out "$labelled" >&2
  for init in $INITS; do
    pre="$WORK/pre-$init-$seed"
    from=()
    stats="-\t-\t-"
    case $init in
      contrastive) [ -f "$pre/trunk.safetensors" ] || $GRAFT pretrain --method contrastive --model efficientnet-lite0 \
          --data "$WORK/unlabelled" --epochs "$PRE_EPOCHS" $PRE_FLAGS --seed "$seed" --out "$pre" >&2 ;;
      siamese) [ -f "$pre/trunk.safetensors" ] || $GRAFT pretrain --method siamese --model efficientnet-lite0 --pairs "$WORK/pairs.csv" \
          --data "$WORK/unlabelled" --epochs "$PRE_EPOCHS" $PRE_FLAGS --seed "$seed" --out "$pre" >&2 ;;
    esac
    if [ "$init" != original ]; then
      from=(--weights "$pre/trunk.safetensors")
      stats=$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("%.0f\t%.4f\t%.4f" % (m["seconds"], m["first_epoch_loss"], m["last_epoch_loss"]))' "$pre/model.json")
    fi
    run="$WORK/fit-$init-$seed"
    $GRAFT fit --model efficientnet-lite0 "${from[@]}" --data "$labelled" --val-split 0 --epochs "$FIT_EPOCHS" --seed "$seed" --out "$run" --overwrite >&2
    acc=$($GRAFT eval --run "$run" --data "$WORK/test" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"])')
    printf '%s\t%s\t%s\t%b\n' "$seed" "$init" "$acc" "$stats" | tee -a "$results"
  done
done
python3 - "$results" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for init in dict.fromkeys(r["init"] for r in rows):
    acc = [float(r["test_accuracy"]) for r in rows if r["init"] == init]
    sd = statistics.stdev(acc) if len(acc) > 1 else float("nan")
    print(f"{init:<12} test accuracy {statistics.mean(acc):.4f} ± {sd:.4f} (n = {len(acc)}: {', '.join(f'{a:.4f}' for a in acc)})")
PY
