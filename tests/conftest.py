"""Shared test helpers: conformance vectors (copied from shared/conformance) and tiny configs."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

CONFORMANCE = Path(__file__).parent / "conformance"
ROOT = Path(__file__).resolve().parent.parent


def run_invert(*overrides, cwd):
    """invert.py in a subprocess (one torch thread), its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "invert.py"), *overrides], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)

_spec = importlib.util.spec_from_file_location("conformance_fill", CONFORMANCE / "fill.py")
fill = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fill)


class Vector:
    """One conformance vector: manifest, official state dict and stored tensors."""

    def __init__(self, name):
        self.name = name
        self.manifest = json.loads((CONFORMANCE / f"{name}.json").read_text())
        self.tensors = torch.load(CONFORMANCE / f"{name}.pt", weights_only=True)

    @property
    def config(self):
        return self.manifest["config"]

    def state_dict(self):
        return fill.fill_state_dict(self.manifest)

    def tolerance(self, key):
        return self.manifest["tensors"][key]["tolerance"]

    def check(self, key, actual):
        """Elementwise |ours - ref| <= atol + rtol*|ref| with the manifest's tolerance."""
        ref = self.tensors[key]
        assert actual.shape == ref.shape, f"{key}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
        tol = self.tolerance(key)
        err = (actual.double() - ref.double()).abs()
        bound = tol["atol"] + tol["rtol"] * ref.double().abs()
        worst = (err / bound).max().item()
        assert worst <= 1.0, f"{self.name}/{key}: max error is {worst:.2f}x the tolerance {tol}"


@pytest.fixture
def vector():
    return Vector


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def compose_config(config_name, overrides, output_dir):
    """Compose a ganinv Hydra config (``train`` or ``invert``) as the CLI would, with the run dir set to
    ``output_dir`` (:func:`ganinv.config.compose`)."""
    from ganinv.config import compose

    return compose(config_name, overrides, output_dir)


@pytest.fixture
def compose_train(tmp_path):
    def _compose(*overrides):
        return compose_config("train", overrides, tmp_path)
    return _compose


def write_tiny_run(root, keys, z_scale=1.0, generator=None):
    """The invert-driver tests' setup in ``root``: ``g.pt`` (``generator``, or a 32 px 64-d Generator
    seeded 0) and ``photos/<key>.png`` = G(z_scale · z) with constant noise, clamped to [-1, 1], one
    image per key (z drawn next from torch's global RNG) -> the generator."""
    from ganinv.checkpoints import save_atomic
    from ganinv.data.images import save_image
    from ganinv.nets.stylegan2 import Generator

    if generator is None:
        torch.manual_seed(0)
        generator = Generator(32, 64, n_mlp=2, channel_max=32).eval()
    save_atomic({"g_ema": generator.state_dict()}, Path(root) / "g.pt")
    with torch.no_grad():
        images = generator(torch.randn(len(keys), generator.style_dim) * z_scale, noise_mode="const").clamp(-1, 1)
    for key, image in zip(keys, images):
        save_image(image, Path(root) / "photos" / f"{key}.png")
    return generator


def noisy_generator(latent_avg=True):
    """The optimisation tests' generator: 32 px, 64-d, seeded; noise strengths 0.3 (an untrained G's
    are zero, so noise would not matter) and ``latent_avg`` the mean of 2000 mapped z when asked."""
    from ganinv.methods.targets import w_statistics
    from ganinv.nets.stylegan2 import Generator, NoiseInjection

    torch.manual_seed(0)
    gen = Generator(32, 64, n_mlp=2, channel_max=32).eval()
    for m in gen.modules():
        if isinstance(m, NoiseInjection):
            m.weight.data.fill_(0.3)
    if latent_avg:
        gen.latent_avg = w_statistics(gen, 2000)[0]
    return gen


@pytest.fixture(scope="module")
def module_one_thread():
    """torch at 1 thread for a whole test module (usefixtures), restored after: many tiny convolutions
    run ~10x faster on one thread when the second core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    """torch at 1 thread for the test (sums in a fixed order), restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
