"""Safe checkpoint loading: StyleGAN2 generators/discriminators from rosinality .pt and
NVIDIA .pkl files, never executing code from a file (see ``safe.py``)."""
from .safe import UnsafeCheckpointError, load_torch, save_atomic
from .stylegan import load_discriminator, load_generator

__all__ = ["UnsafeCheckpointError", "load_discriminator", "load_generator", "load_torch", "save_atomic"]
from .inverter import Inverter, load_inverter  # noqa: E402

__all__ += ["Inverter", "load_inverter"]
