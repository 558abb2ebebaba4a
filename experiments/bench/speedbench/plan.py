"""Which measurements a command asks for: one spec per (part row, device, precision, layout, THP)."""

import torch

from . import inference, methods, optimization, ref
from .machine import native_bf16

PARTS = ("ref", "methods", "inference", "optimization", "ddp")


def plan(parts, sizes, configs, threads, warmup, repeats, official=None):
    """The measurement specs of ``parts`` for every (device, precision, layout[, thp]) config;
    ``official``: the official code's folder for the ref rows (side by side), or None."""
    specs = []
    for device, precision, layout, *thp in configs:
        base = dict(device=device, precision=precision, layout=layout, thp=(thp or ["on"])[0], threads=threads,
                    warmup=warmup, repeats=repeats)

        def add(section, key, name, kind, size, batch=4, unit="it/s", base=base, **extra):
            specs.append({**base, "section": section, "key": key, "name": name, "kind": kind, "size": size,
                          "batch": batch, "unit": unit, **extra})

        if "ref" in parts:
            ref.specs(sizes, add, None if official is None else str(official))
        if "methods" in parts:
            methods.specs(sizes, add)
        if "inference" in parts:
            inference.specs(sizes, add)
        if "optimization" in parts:
            optimization.specs(sizes, add)
    return specs


def available_configs(devices=None, precisions=None, layouts=("nchw",), thps=("on",)):
    """(device, precision, layout, thp) tuples: CPU fp32 always; bf16 where the CPU has native bf16
    (AMX or AVX512-BF16) or on CUDA; CUDA when available; every layout and THP setting given."""
    devices = devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for d in devices:
        for p in precisions or (["32", "bf16"] if native_bf16(d) else ["32"]):
            out += [(d, p, layout, thp) for layout in layouts for thp in thps]
    return out
