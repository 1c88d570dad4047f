#!/usr/bin/env python3
"""PyTorch twin of `graft bench forward --arch NAME`, for `bench/compare --case archs`.

torchvision's builder (`torchvision.models.NAME()`, random weights: the arithmetic is the same as
with pretrained ones), eval mode, `torch.no_grad()`, a batch of B random 224x224 images, the median
of --iters timed forward passes after --warmup untimed ones, --threads intra-op threads.
Prints one JSON object.
"""
import argparse
import json
import sys
import time

try:
    import torch
    import torchvision
except ImportError as e:  # bench/compare turns this into advice
    print(f"missing Python package: {e.name}; install with: pip install torch torchvision", file=sys.stderr)
    sys.exit(3)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, help="a torchvision builder: resnet50, convnext_tiny, vit_b_16, ...")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = getattr(torchvision.models, args.arch)().eval()
    x = torch.randn(args.batch, 3, 224, 224)
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            net(x)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    times.sort()
    t = times[len(times) // 2]
    print(json.dumps({"case": "forward", "arch": args.arch, "framework": f"pytorch {torch.__version__}",
                      "torchvision": torchvision.__version__, "batch": args.batch, "threads": args.threads,
                      "iters": args.iters, "median_seconds": t, "images_per_second": args.batch / t}))


if __name__ == "__main__":
    main()
