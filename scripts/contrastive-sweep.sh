#!/usr/bin/env bash
# One setting of SimCLR pretraining (graft pretrain --method contrastive) on the protocol of
# scripts/pretrain-digits.sh: pretrain on the 10,000 unlabelled MNIST digits, fine-tune the MLP on
# 100 labelled digits (50 epochs) and test on the 10,000 test digits, for each seed of SEEDS
# (default 0 1 2); appends LABEL, seed, test accuracy and the pretraining seconds to
# WORK/contrastive-sweep.tsv. WORK is a folder scripts/pretrain-digits.sh filled (unlabelled/,
# test/, labelled-SEED/).
#
#   scripts/contrastive-sweep.sh WORK LABEL [pretrain flags…]
#   e.g. scripts/contrastive-sweep.sh /tmp/pd lr3e-3 --lr 0.003 --temperature 0.2
set -euo pipefail
GRAFT=${GRAFT:-target/release/graft}
WORK=$1; label=$2; shift 2
for seed in ${SEEDS:-0 1 2}; do
  pre="$WORK/sweep-$label-$seed"; run="$WORK/sweep-fit-$label-$seed"
  [ -f "$pre/encoder.safetensors" ] || { rm -rf "$pre"; $GRAFT pretrain --method contrastive --data "$WORK/unlabelled" --seed "$seed" --out "$pre" "$@" >&2; }
  seconds=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["seconds"]))' "$pre/model.json")
  $GRAFT fit --init "$pre" --data "$WORK/labelled-$seed" --val-split 0 --epochs 50 --seed "$seed" --out "$run" --overwrite >&2
  acc=$($GRAFT eval --run "$run" --data "$WORK/test" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["accuracy"])')
  printf '%s\t%s\t%s\t%s\n' "$label" "$seed" "$acc" "$seconds" | tee -a "$WORK/contrastive-sweep.tsv"
done
