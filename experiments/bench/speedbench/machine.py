"""The machine: CPU, GPU and library versions, and its peak at this moment (fp32 sgemm and bf16
matmul GFLOP/s of a 2048² matmul), measured before and after the rows so that they can be read
against it (shared cloud cores drift by up to 2x within an hour)."""
import os
import platform
import resource
import time
from pathlib import Path

import torch

from .timing import sync

PEAK_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def machine_info(threads):
    import pytorch_lightning as pl

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "lightning": pl.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def matmul_gflops(device, dtype, threads, n=2048, seconds=0.5):
    """GFLOP/s of an n x n @ n x n matmul of ``dtype`` on ``device`` (``threads`` CPU threads;
    TF32 off on CUDA): one warm-up, then calls until ``seconds`` have passed (at least one)."""
    old_threads = torch.get_num_threads()
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b
        sync(device)
        calls, t0 = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - t0 < seconds:
            a @ b
            sync(device)
            calls += 1
        return 2 * n**3 * calls / (time.perf_counter() - t0) / 1e9
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def native_bf16(device):
    """Whether ``device`` computes bf16 in hardware: CUDA, or a CPU with AMX or AVX512-BF16. Elsewhere
    (e.g. an AVX2-only AMD EPYC) PyTorch emulates bf16 and a 2048² matmul takes minutes."""
    if torch.device(device).type == "cuda":
        return True
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "amx_bf16" in cpuinfo or "avx512_bf16" in cpuinfo


def machine_peak(devices, threads, n=2048):
    """{device: {"fp32": GFLOP/s, "bf16": GFLOP/s or None}} for every device in ``devices``; bf16 is
    None (not measured) where it is not native (``native_bf16``)."""
    return {d: {name: matmul_gflops(d, dtype, threads, n) if name == "fp32" or native_bf16(d) else None
                for name, dtype in PEAK_DTYPES.items()} for d in devices}


def peak_memory_mb(device):
    """This process's max RSS in MB (Linux ``ru_maxrss``, KiB), or CUDA max allocated."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
