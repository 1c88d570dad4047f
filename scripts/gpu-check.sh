#!/usr/bin/env bash
# The GPU check, for a machine with a GPU (or, with tiny sizes, lavapipe to check the script):
#   1. graft built with the wgpu feature; the parity tests on the GPU (≤ 1e-4 against PyTorch,
#      each asserting that its outputs were computed on that device);
#   2. bench/compare --device wgpu --full: forward, tail fine-tune, full fine-tune and a head epoch,
#      graft on the GPU against PyTorch on the same GPU (CUDA), at each batch size.
# Settings (environment):
#   GPU_CHECK_DEVICE   graft's device [default: wgpu]
#   GPU_CHECK_BATCHES  batch sizes, space-separated [default: "64 256"]; e.g. "2" on lavapipe
#   GPU_CHECK_ITERS    timed repetitions per case [default: 7]
#   GPU_CHECK_OUT      folder for the figures [default: target/gpu-check]
# Needs: a Vulkan driver (NVIDIA's ships one; Debian's mesa-vulkan-drivers is the CPU fallback),
# and for step 2 PyTorch (pip install torch numpy). Prints a JSON line per batch size.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-wgpu}
BATCHES=${GPU_CHECK_BATCHES:-64 256}
ITERS=${GPU_CHECK_ITERS:-7}
OUT=${GPU_CHECK_OUT:-target/gpu-check}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/wgpu}
mkdir -p "$OUT"

if command -v vulkaninfo >/dev/null; then
    vulkaninfo --summary 2>/dev/null | grep -E "deviceName|driverName" | tee "$OUT/vulkan.txt" || true
fi
start=$(date +%s)
cargo build --release --workspace --tests --features graft-cli/wgpu
echo "build: $(( $(date +%s) - start )) s" | tee "$OUT/build.txt"

start=$(date +%s)
GRAFT_TEST_DEVICE=$DEVICE cargo test --release --workspace --features graft-cli/wgpu --test tests -- \
    --nocapture parity::lite0_logits_and_features_match_pytorch zoo_parity::resnet18_logits_match_torchvision \
    zoo_parity::mobilenet_v2_logits_match_torchvision device::a_fit_trains_on_the_test_device 2>&1 | tee "$OUT/parity.txt"
echo "parity: $(( $(date +%s) - start )) s" | tee -a "$OUT/parity.txt"

for batch in $BATCHES; do
    bench/compare --device "$DEVICE" --full --json --batch "$batch" --iters "$ITERS" | tee "$OUT/compare-batch-$batch.json"
done
