#!/usr/bin/env python3
"""Independent reference values for tests/real_files.rs.

Reads the legacy EfficientNet-Lite0 .pth with nothing but the standard
library (pickle with stub globals; no torch, nothing executed), gathers the
strided tensors with a plain Python loop, and prints, for every tensor that is
not stored contiguously plus a few that are, a Rust table row:

    (name, shape, first 4 values, sum, weighted checksum)

where checksum = sum((i % 97 + 1) * x[i]) over the row-major element order,
so a wrong gather order changes it even when the plain sum does not.

usage: python3 lite0_reference.py path/to/efficientnet-lite0-57934424.pth
"""
import collections
import io
import pickle
import struct
import sys

SIZES = {"FloatStorage": ("f", 4), "LongStorage": ("q", 8)}


class Stub:
    def __init__(self, name):
        self.name = name


class Loader(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: ("T", storage, offset, size, stride)
        if module == "torch" and name in SIZES:
            return Stub(name)
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        _, stype, key, _location, numel, _view = pid
        return (stype.name, key, numel)


def main(path):
    f = open(path, "rb")
    for _ in range(3):
        Loader(f).load()
    sd = Loader(f).load()
    keys = Loader(f).load()
    kinds = {}
    for v in sd.values():
        kinds[v[1][1]] = v[1][0]
    storages = {}
    for key in keys:
        (n,) = struct.unpack("<Q", f.read(8))
        fmt, es = SIZES[kinds[key]]
        storages[key] = struct.unpack(f"<{n}{fmt}", f.read(n * es))

    rows = []
    for name, (_, (stype, key, _), offset, size, stride) in sd.items():
        contiguous = []
        acc = 1
        for s in reversed(size):
            contiguous.insert(0, acc)
            acc *= s
        if tuple(contiguous) == tuple(stride) and name not in ("_fc.weight", "_fc.bias", "_bn0.running_var", "_conv_head.weight"):
            continue
        data = storages[key]
        out = []
        idx = [0] * len(size)
        n = 1
        for s in size:
            n *= s
        for _ in range(n):
            out.append(data[offset + sum(i * st for i, st in zip(idx, stride))])
            for d in reversed(range(len(size))):
                idx[d] += 1
                if idx[d] < size[d]:
                    break
                idx[d] = 0
        total = sum(float(x) for x in out)
        check = sum((i % 97 + 1) * float(x) for i, x in enumerate(out))
        first = ", ".join(repr(float(x)) + "f32" if "." in repr(float(x)) else repr(float(x)) for x in out[:4])
        rows.append(f'    ("{name}", &{list(size)}, [{first}], {total!r}, {check!r}),')
    print(f"// {len(rows)} rows")
    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1])
