#!/usr/bin/env python3
"""The README's main job written the usual way in PyTorch, for `bench/compare --case fit`.

EfficientNet-Lite0 (ImageNet weights, the .pth graft pulls) frozen in eval mode, a new linear head
(dropout 0.5, as graft's default `--head linear`), trained on an image folder with torchvision
transforms and a DataLoader, then evaluated on a second image folder. The settings are graft's
`fit --val-split 0 --epochs 30 --lr 0.01` with its defaults: AdamW (weight decay 0.01), batch 32,
shuffled, no augmentation, cross-entropy; preprocessing as graft's for Lite0 (largest centred
square, bilinear to 224, (x - 127) / 128). As in most PyTorch recipes, the frozen backbone runs on
every batch of every epoch (nothing is cached).

Prints one JSON object: accuracy on the test folder, the seconds spent in each phase, and the
process's wall time from the start of this script (imports included).
"""
import argparse
import json
import os
import sys
import time

START = time.perf_counter()

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_reference import Lite0  # noqa: E402


class CentreSquare:
    """The largest centred square of a PIL image (graft's crop for Lite0)."""

    def __call__(self, image):
        w, h = image.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return image.crop((left, top, left + s, top + s))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True, help="image folder, one sub-folder per class")
    ap.add_argument("--test", required=True, help="image folder with the same classes")
    ap.add_argument("--weights", required=True, help="Lite0 .pth (the file graft pulls)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader worker processes [default: 0]")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    tf = transforms.Compose([
        transforms.Lambda(lambda im: im.convert("RGB")),
        CentreSquare(),
        transforms.Resize((224, 224), interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.ToTensor(),
        transforms.Normalize([127 / 255] * 3, [128 / 255] * 3),
    ])
    train = datasets.ImageFolder(args.train, tf)
    test = datasets.ImageFolder(args.test, tf)
    if train.classes != test.classes:
        sys.exit(f"the test folder's classes {test.classes} differ from the training folder's {train.classes}")

    backbone = Lite0()
    backbone.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    backbone._fc = nn.Identity()
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad = False
    head = nn.Sequential(nn.Dropout(0.5), nn.Linear(1280, len(train.classes)))
    opt = torch.optim.AdamW(head.parameters(), lr=args.lr, weight_decay=0.01)
    loss_fn = nn.CrossEntropyLoss()
    ready = time.perf_counter()

    loader = DataLoader(train, batch_size=args.batch, shuffle=True, num_workers=args.workers)
    for _ in range(args.epochs):
        head.train()
        for x, y in loader:
            with torch.no_grad():
                f = backbone(x)
            loss = loss_fn(head(f), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    trained = time.perf_counter()

    head.eval()
    correct = 0
    with torch.no_grad():
        for x, y in DataLoader(test, batch_size=64, num_workers=args.workers):
            correct += (head(backbone(x)).argmax(1) == y).sum().item()
    done = time.perf_counter()
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}", "threads": args.threads,
        "train_images": len(train), "test_images": len(test), "epochs": args.epochs,
        "accuracy": correct / len(test),
        "seconds": {"setup": ready - START, "train": trained - ready, "eval": done - trained,
                    "total": done - START},
    }))


if __name__ == "__main__":
    main()
