"""invert.py's settings: every top-level value checked before anything is built or written, one line
naming the key otherwise (the ``_target_`` nodes' keys and types are :func:`ganinv.cli.check_config`'s)."""
from pathlib import Path

import torch
from omegaconf import OmegaConf

from ..editing.edits import parse_edit
from .tasks import EDIT_TARGET, check_tasks

METHODS = ("optimize", "idinvert")
DEVICES = ("auto", "cpu", "cuda", "gpu", "mps")
PRECISIONS = ("32", "bf16")


def _positive_int(cfg, name, minimum=1, prefix=""):
    value = cfg.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{prefix}{name}={value}: expected an integer >= {minimum}")
    return value


def check_device(name):
    """device= names an accelerator this machine has (one line otherwise, before anything is built)."""
    if name in ("cuda", "gpu") and not torch.cuda.is_available():
        raise ValueError(f"device={name}: no CUDA GPU is available here (torch.cuda.is_available() is False); "
                         "use device=cpu or device=auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device=mps: Apple's MPS backend is not available here; use device=cpu or device=auto")


def check_config(cfg):
    """One-line ValueError/FileNotFoundError naming the key for a bad setting, before anything is
    built or written: paths, choices, integers (``seed``, ``batch_size``, the preset's
    ``n_mean_latent`` and ``steps``), a ``device`` this machine lacks, edit specs."""
    for key in ("input", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise ValueError(f"{key}=PATH is required (python invert.py input=DIR_OR_FILE output=DIR)")
    method = str(cfg.method)
    if method not in METHODS and not Path(method).is_file():
        raise FileNotFoundError(f"method={method}: not optimize, idinvert or an existing encoder checkpoint")
    if not str(cfg.inversion.get("_target_", "")).endswith(("OptimizationInversion", EDIT_TARGET)):
        raise ValueError("inversion= must name an optimisation preset (projector, image2stylegan, "
                         "image2stylegan_pp, image2stylegan_pp_edit, stylegan_encoder, idinvert); PTI is refine=pti")
    if method == "optimize" and cfg.init not in ("mean", "random", "encoder"):
        raise ValueError(f"init={cfg.init}: expected mean, random or encoder")
    encoder = cfg.get("encoder")
    if (method == "idinvert" or (method == "optimize" and cfg.init == "encoder")) and not encoder:
        raise ValueError(f"method={method}{' init=encoder' if method == 'optimize' else ''} needs "
                         "encoder=PATH (an encoder checkpoint)")
    if encoder and not Path(encoder).is_file():
        raise FileNotFoundError(f"encoder={encoder}: no such file")
    if cfg.get("restyle_iters") is not None:
        _positive_int(cfg, "restyle_iters")
    if cfg.get("refine") not in (None, "pti"):
        raise ValueError(f"refine={cfg.refine}: expected pti (or leave it unset)")
    _positive_int(cfg, "batch_size")
    _positive_int(cfg, "grid_max", 0)
    if cfg.get("progress_every") is not None:
        _positive_int(cfg, "progress_every", 0)
    if cfg.get("resize") is not None:
        _positive_int(cfg, "resize", 8)
    if cfg.device not in DEVICES:
        raise ValueError(f"device={cfg.device}: expected one of {', '.join(DEVICES)}")
    check_device(cfg.device)
    check_precision(cfg)
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed={seed}: expected an integer in [0, 2^32)")
    preset_key = "inversion" if method == "optimize" else "idinvert" if method == "idinvert" else None
    if preset_key is not None:
        _positive_int(cfg[preset_key], "n_mean_latent", prefix=f"{preset_key}.")
    if not isinstance(cfg.align, bool):
        raise ValueError(f"align={cfg.align}: expected true or false")
    for key in ("resize_outputs", "couple_outputs"):
        if not isinstance(cfg.get(key, False), bool):
            raise ValueError(f"{key}={cfg.get(key)}: expected true or false")
    if cfg.get("n_outputs") is not None:
        _positive_int(cfg, "n_outputs")
    alpha = cfg.get("mix_alpha")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1):
        raise ValueError(f"mix_alpha={alpha}: expected a number in [0, 1] (or leave it unset)")
    if (cfg.get("n_outputs") or 1) > 1 and cfg.get("latent_mask") is None:
        raise ValueError(f"n_outputs={cfg.n_outputs} needs latent_mask=ROWS, the W+ rows to mix (official "
                         "style_mixing.py --latent_mask, e.g. latent_mask='8,9,10,11,12,13,14,15,16,17')")
    if cfg.get("latent_mask") is not None:
        parse_rows(cfg.latent_mask, "latent_mask")
    if cfg.get("resize_factors") is not None:
        parse_rows(cfg.resize_factors, "resize_factors", minimum=1)
    for spec in edit_specs(cfg):
        parse_edit(spec)
    check_tasks(cfg)
    check_bootstrap(cfg)


def check_precision(cfg):
    """precision= is 32 or bf16 (fp16 would need a grad scaler, which the manual optimisation steps do
    not run); channels_last= a boolean."""
    if str(cfg.get("precision", 32)) not in PRECISIONS:
        raise ValueError(f"precision={cfg.get('precision')}: expected 32 or bf16")
    if not isinstance(cfg.get("channels_last", False), bool):
        raise ValueError(f"channels_last={cfg.get('channels_last')}: expected true or false")


def uses_bf16(cfg):
    """Whether the run computes in bf16 (precision=bf16)."""
    return str(cfg.get("precision", 32)) == "bf16"


def trainer_precision(cfg):
    """The Lightning ``precision`` of invert.py's optimisation / PTI trainers: bf16-mixed for
    precision=bf16 (Lightning's torch.autocast(bfloat16) around every training step), else the
    trainer config's own (32)."""
    return "bf16-mixed" if uses_bf16(cfg) else cfg.trainer.get("precision", 32)


def check_bootstrap(cfg):
    """bootstrap= (ReStyle encoder bootstrapping) and save_steps= (every encoder pass)."""
    boot, method = cfg.get("bootstrap"), str(cfg.method)
    if not isinstance(cfg.get("save_steps", False), bool):
        raise ValueError(f"save_steps={cfg.save_steps}: expected true or false")
    if cfg.get("save_steps") and method in METHODS:
        raise ValueError("save_steps=true writes an encoder's passes: it needs method=PATH (an encoder checkpoint)")
    if boot is None:
        return
    if not Path(str(boot)).is_file():
        raise FileNotFoundError(f"bootstrap={boot}: no such file (the first model's checkpoint)")
    if method in METHODS:
        raise ValueError(f"bootstrap= needs method=PATH (the ReStyle model that refines the first one's "
                         f"codes), not method={method}")
    if cfg.get("refine") is not None:
        raise ValueError("bootstrap= cannot be combined with refine=: the bootstrapped codes are the result")


def edit_specs(cfg):
    """``edit=`` as a list of spec strings (one string, a list, or nothing)."""
    edit = cfg.get("edit")
    if edit is None:
        return []
    return [str(edit)] if isinstance(edit, str) else [str(e) for e in edit]


def torch_device(name):
    """device= -> the torch device: auto is cuda when a GPU is available, else cpu; gpu is cuda."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if name == "gpu" else name)


def parse_rows(value, key, minimum=0, limit=None):
    """latent_mask / resize_factors as the official comma string ("8,9,10"), a list or one integer
    -> a list of integers (each >= minimum and < limit); a one-line error naming the key."""
    items = str(value).split(",") if isinstance(value, str) else list(value) if hasattr(value, "__iter__") else [value]
    try:
        rows = [int(str(v).strip()) for v in items]
    except ValueError:
        raise ValueError(f"{key}={value}: expected integers, e.g. {key}='8,9,10'") from None
    bad = [r for r in rows if r < minimum or (limit is not None and r >= limit)]
    if not rows or bad:
        span = f"[{minimum}, {limit})" if limit is not None else f">= {minimum}"
        raise ValueError(f"{key}={value}: every entry must lie in {span}" + (f" (got {bad})" if bad else ""))
    return rows
