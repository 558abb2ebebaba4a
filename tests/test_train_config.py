"""Hydra composition: every method and experiment composes; train.py without a method says which."""
import subprocess
import sys
from pathlib import Path

import pytest

from ganinv.config import available_methods

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


METHODS = ["alae", "e4e", "idinvert", "latent_regression", "psp", "restyle_e4e", "restyle_psp", "stylegan2"]


def test_methods_listed():
    assert sorted(available_methods()) == METHODS


@pytest.mark.parametrize("method", METHODS)
def test_method_composes_with_paths_from_output_dir(compose_train, tmp_path, method):
    cfg = compose_train(f"+method={method}")
    assert cfg.method.name == method
    assert cfg.paths.checkpoint_dir == f"{tmp_path}/checkpoints"
    assert cfg.trainer.default_root_dir == str(tmp_path)
    assert cfg.method.module._target_.startswith("ganinv.methods.")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes(compose_train, experiment):
    method = {"procedural64_gan": "stylegan2"}.get(experiment, experiment.split("_")[0])
    if method not in available_methods():
        method = "e4e"
    cfg = compose_train(f"+method={method}", f"+experiment={experiment}")
    assert cfg.task_name


def test_train_without_method_lists_methods(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={tmp_path}"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines == [f"train.py: no method given; choose one with +method={'|'.join(METHODS)}"]
