"""Locating pretrained weight files. Nothing here downloads: a missing file is one clear error."""
from pathlib import Path

import torch


def require_file(path, what, where):
    """Return ``path`` as a Path if it is a file, else raise a one-line FileNotFoundError
    "<what> weights not found: <path>. Put the file there (<where>)."."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}. Put the file there ({where}).")
    return path


def torchvision_weights_file(weights):
    """Path of torchvision's cached file for ``weights`` (a weights enum member such as
    ``VGG16_Weights.IMAGENET1K_V1``): ``torch.hub.get_dir()/checkpoints/<url basename>``,
    where torchvision itself looks before it would download. Raises FileNotFoundError if absent."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    return require_file(path, f"torchvision {weights}", f"torch hub cache; the file is {weights.url}")
