"""ganinv: StyleGAN2 inversion and editing (pSp, e4e, IDInvert, optimisation, PTI)."""
import os

# PyTorch's CPU allocator backs tensors >= 2 MB with transparent huge pages when this is set before
# its first allocation (train.py / invert.py import ganinv before torch). Activations at 256 px are
# 100+ MB: with 4 KB pages, page faults made elementwise ops ~3x slower on CPU (experiments/bench).
# Set THP_MEM_ALLOC_ENABLE=0 to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
