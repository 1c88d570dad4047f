"""The CPU's model name and the vector extensions that matter for speed, for bench/compare."""

WANTED = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
          "amx_tile", "amx_bf16", "amx_int8"]


def cpu():
    """{"model", "features"} read from Linux's /proc/cpuinfo ("unknown" and [] elsewhere)."""
    model, flags = "unknown", set()
    try:
        for line in open("/proc/cpuinfo"):
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "unknown":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "features": [f for f in WANTED if f in flags]}
