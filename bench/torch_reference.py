#!/usr/bin/env python3
"""PyTorch (and ONNX Runtime) twins of `graft bench`'s cases, for bench/compare.

Same architecture (EfficientNet-Lite0 with TF "SAME" padding, BN eps 1e-3, ReLU6), same weights
(the .pth graft pulls, when given; otherwise random), same batch, same thread count.

  forward     Lite0 forward, batch B, 224x224, eval mode, no autograd; also ONNX Runtime on the
              same network exported from this module (--onnx)
  tail_train  blocks 13-15 + head conv/BN + new 3-class linear; forward+backward+AdamW on a
              precomputed block-13 input; BatchNorm in eval mode (as graft's default)
  full_train  the whole network + new 3-class linear, forward+backward+AdamW on a batch of
              224x224 images (a fine-tuning step with nothing frozen); BatchNorm in eval mode
  head_epoch  one epoch of a linear head on 10,000 cached 1280-d rows, batch B, AdamW
  latency     one decoded 500x375 image to probabilities: graft's preprocessing (largest centred
              square, PIL bilinear to 224, (x - 127) / 128), the network at batch 1, softmax;
              also ONNX Runtime (--onnx) with the same numpy preprocessing

--device cuda (or cuda:N, mps, cpu) runs every case there; timings then wait for the device.

Prints one JSON object per case on stdout.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # bench/compare turns this into advice
    print(f"missing Python package: {e.name}; install with: pip install torch numpy", file=sys.stderr)
    sys.exit(3)

# (repeats, kernel, stride, expand, in, out) of Lite0's seven stages.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN_EPS = 1e-3


class SameConv(nn.Conv2d):
    """TensorFlow SAME padding: the odd extra pixel goes bottom/right."""

    def forward(self, x):
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, s, e):
        super().__init__()
        hidden = cin * e
        if e != 1:
            self._expand_conv = SameConv(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self.expand = e != 1
        self._depthwise_conv = SameConv(hidden, hidden, k, stride=s, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = s == 1 and cin == cout

    def forward(self, inputs):
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class Lite0(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks = []
        for repeats, k, s, e, cin, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, classes)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))


class Tail(nn.Module):
    def __init__(self, net, first):
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[first:])
        self.conv_head, self.bn_head = net._conv_head, net._bn1
        self.fc = nn.Linear(1280, 3)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        x = F.relu6(self.bn_head(self.conv_head(x)))
        return self.fc(x.mean((2, 3)))


SYNC = lambda: None  # waits for the device (set in main for CUDA)


def latency_image():
    """The decoded image of the latency case (the formula of `graft bench latency`)."""
    y, x = np.mgrid[0:375, 0:500].astype(np.int64)
    return np.stack([(x * 7 + y * 3) % 256, (x * 2 + y * 5) % 256, (x ^ y) % 256], axis=-1).astype(np.uint8)


def lite0_pixels(image):
    """graft's Lite0 preprocessing in PIL + numpy: [1, 3, 224, 224] float32."""
    from PIL import Image
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    square = Image.fromarray(image[top:top + s, left:left + s])
    x = np.asarray(square.resize((224, 224), Image.BILINEAR), dtype=np.float32)
    return ((x - 127.0) / 128.0).transpose(2, 0, 1)[None].copy()


def export_onnx(net, x, path):
    warnings.filterwarnings("ignore")  # the tracer's notes on SAME padding
    torch.onnx.export(net, (x,), path, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "n"}}, opset_version=17, dynamo=False)


def ort_session(path, threads):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def median_seconds(warmup, iters, step):
    times = []
    for i in range(warmup + iters):
        SYNC()
        start = time.perf_counter()
        step()
        SYNC()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def load(net, weights, reference):
    """Loads the .pth and checks the network against graft's PyTorch reference logits."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    net.load_state_dict(state)
    net.eval()
    if reference:
        inputs = torch.from_numpy(np.load(os.path.join(reference, "inputs.npy")))
        expected = np.load(os.path.join(reference, "logits.npy"))
        with torch.no_grad():
            got = net(inputs).numpy()
        diff = float(np.abs(got - expected).max())
        if diff > 1e-3:
            sys.exit(f"this PyTorch Lite0 differs from the reference logits by {diff}")
        return diff
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="forward,tail_train,head_epoch")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--head-batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--weights", help="Lite0 .pth (the file graft pulls)")
    ap.add_argument("--reference", help="folder with inputs.npy/logits.npy to check the network")
    ap.add_argument("--onnx", action="store_true", help="also time ONNX Runtime on the forward case")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps [default: cpu]")
    args = ap.parse_args()
    global SYNC
    dev = torch.device(args.device)
    if dev.type == "cuda":
        SYNC = lambda: torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        SYNC = torch.mps.synchronize
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = args.cases.split(",")
    net = Lite0()
    parity = load(net, args.weights, args.reference) if args.weights else None
    net.eval()
    net.to(dev)

    if "forward" in cases:
        x = torch.randn(args.batch, 3, 224, 224, device=dev)
        with torch.no_grad():
            t = median_seconds(args.warmup, args.iters, lambda: net(x))
        out = {"case": "forward", "framework": f"pytorch {torch.__version__}", "device": str(dev), "batch": args.batch,
               "threads": args.threads, "median_seconds": t, "images_per_second": args.batch / t,
               "reference_max_abs_diff": parity}
        if args.onnx and dev.type == "cpu":
            try:
                import onnxruntime as ort
            except ImportError:
                out["onnxruntime_error"] = "pip install onnxruntime onnx"
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "lite0.onnx")
                    export_onnx(net, x, path)
                    session = ort_session(path, args.threads)
                    feed = {"x": x.cpu().numpy()}
                    t_ort = median_seconds(args.warmup, args.iters, lambda: session.run(None, feed))
                out.update({"onnxruntime": f"onnxruntime {ort.__version__}",
                            "onnxruntime_median_seconds": t_ort,
                            "onnxruntime_images_per_second": args.batch / t_ort})
        print(json.dumps(out), flush=True)

    if "latency" in cases:
        image = latency_image()

        def torch_call():
            with torch.inference_mode():
                x = torch.from_numpy(lite0_pixels(image)).to(dev)
                return torch.softmax(net(x), 1).cpu()

        t = median_seconds(args.warmup, args.iters, torch_call)
        out = {"case": "latency", "framework": f"pytorch {torch.__version__}", "device": str(dev), "image": [500, 375],
               "threads": args.threads, "median_seconds": t, "median_ms": t * 1e3}
        if args.onnx and dev.type == "cpu":
            try:
                import onnxruntime as ort
            except ImportError:
                out["onnxruntime_error"] = "pip install onnxruntime onnx"
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "lite0.onnx")
                    export_onnx(net, torch.zeros(1, 3, 224, 224), path)
                    session = ort_session(path, args.threads)

                    def ort_call():
                        logits = session.run(None, {"x": lite0_pixels(image)})[0]
                        e = np.exp(logits - logits.max(axis=1, keepdims=True))
                        return e / e.sum(axis=1, keepdims=True)

                    t_ort = median_seconds(args.warmup, args.iters, ort_call)
                out.update({"onnxruntime": f"onnxruntime {ort.__version__}", "onnxruntime_median_seconds": t_ort,
                            "onnxruntime_median_ms": t_ort * 1e3})
        print(json.dumps(out), flush=True)

    if "tail_train" in cases:
        first = len(net._blocks) - 3
        tail = Tail(net, first).to(dev)
        tail.eval()  # BatchNorm keeps its running statistics, as in graft's fine-tuning default
        with torch.no_grad():
            probe = torch.zeros(1, 3, 224, 224, device=dev)
            probe = F.relu6(net._bn0(net._conv_stem(probe)))
            for block in net._blocks[:first]:
                probe = block(probe)
        x = torch.rand(args.batch, *probe.shape[1:], device=dev) * 6
        y = torch.arange(args.batch, device=dev) % 3
        opt = torch.optim.AdamW(tail.parameters(), lr=1e-4, eps=1e-8, weight_decay=0.01)

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(tail(x), y).backward()
            opt.step()

        t = median_seconds(args.warmup, args.iters, step)
        print(json.dumps({"case": "tail_train", "framework": f"pytorch {torch.__version__}", "device": str(dev),
                          "batch": args.batch, "input": list(x.shape), "threads": args.threads,
                          "median_seconds": t, "images_per_second": args.batch / t}), flush=True)

    if "full_train" in cases:
        import copy
        full = copy.deepcopy(net)
        full._fc = nn.Linear(1280, 3)
        full.to(dev)
        full.eval()  # BatchNorm keeps its running statistics, as in graft's fine-tuning default
        x = torch.rand(args.batch, 3, 224, 224, device=dev)
        y = torch.arange(args.batch, device=dev) % 3
        opt = torch.optim.AdamW(full.parameters(), lr=1e-4, eps=1e-8, weight_decay=0.01)

        def full_step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(full(x), y).backward()
            opt.step()

        t = median_seconds(args.warmup, args.iters, full_step)
        print(json.dumps({"case": "full_train", "framework": f"pytorch {torch.__version__}", "device": str(dev),
                          "batch": args.batch, "threads": args.threads,
                          "median_seconds": t, "images_per_second": args.batch / t}), flush=True)

    if "head_epoch" in cases:
        rows = torch.rand(10_000, 1280, device=dev) * 2
        labels = torch.arange(10_000, device=dev) % 3
        head = nn.Linear(1280, 3).to(dev)
        opt = torch.optim.AdamW(head.parameters(), lr=1e-3, eps=1e-8, weight_decay=0.01)

        def epoch():
            for start in range(0, 10_000, args.head_batch):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(head(rows[start:start + args.head_batch]), labels[start:start + args.head_batch]).backward()
                opt.step()

        t = median_seconds(args.warmup, args.iters, epoch)
        print(json.dumps({"case": "head_epoch", "framework": f"pytorch {torch.__version__}", "device": str(dev),
                          "batch": args.head_batch, "threads": args.threads, "median_seconds": t,
                          "rows_per_second": 10_000 / t}), flush=True)


if __name__ == "__main__":
    main()
