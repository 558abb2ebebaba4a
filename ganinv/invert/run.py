"""invert.py's networks and one batch's inversion: encoder, optimisation or IDInvert, then PTI.

:class:`InversionRun` builds the networks once and inverts batches x [n, 3, S, S] in [-1, 1]
(an image-to-image checkpoint's encoder inputs [n, C, S, S]) into an :class:`InversionResult`.

The generator: the config's ``generator`` for method=optimize|idinvert without an encoder. With an
encoder checkpoint (method=PATH, init=encoder, method=idinvert) the checkpoint's own generator is
used unless the user chose one (:func:`generator_given`): then the user's generator is honoured --
a researcher naming a generator means to invert into it (e.g. a fine-tuned G with the encoder of its
parent as the initialisation) -- after checking that it takes the encoder's codes
(:func:`check_generator_fits`), and never replaced silently.

Layout and precision: ``channels_last=true`` stores every net's 4-D weights NHWC
(:func:`ganinv.runner.to_channels_last`) and hands the batches over NHWC -- the same math as NCHW.
``precision=bf16`` runs the encoder and generator forwards under ``torch.autocast(bfloat16)``: the
encoder pass by hand (:meth:`InversionRun.autocast`), the optimisation and PTI through their
trainer's ``precision="bf16-mixed"`` (Lightning's autocast around each training step). Under it
convolutions and linears run bf16, while norms, MSE / mean reductions and the ID loss's l2
normalisation (``torch.norm`` is on autocast's fp32 list) stay fp32; codes and images leave as fp32.
The mapping network always runs fp32 (``Generator.mapping`` turns autocast off), also inside a
bf16-mixed step (latent_space=z, PTI's locality samples).
"""
import contextlib
import functools
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from ..checkpoints.inverter import load_inverter
from ..editing.edits import Edit, edit_strip
from ..editing.saved import edit_tag
from ..methods.psp import mix_styles
from ..methods.restyle import RestylePass, bootstrap_passes
from ..methods.targets import w_statistics
from ..progress import StepProgress
from ..runner import build_loggers, to_channels_last
from .alae import is_alae_file, load_alae_encoder
from .inputs import InputTransform
from .settings import METHODS, edit_specs, parse_rows, torch_device, trainer_precision, uses_bf16
from .tasks import Tasks, discriminator_for


@dataclass
class InversionResult:
    """One batch's inversion. ``latents`` W+ [n, n_latent, D] and ``images`` [n, 3, R, R] in ~[-1, 1]
    (CPU); per image its noise maps ([1, 1, r, r] each, when optimised and no PTI followed) and its
    PTI-tuned generator file relative to the output folder (refine=pti), else None; ``strips``
    {edit tag: n edit strips [S, 3, R, R]}; ``composites`` [n, 3, S, S] (inpaint=true: the known
    input pixels, G's in the hole); ``steps`` [n, N, n_latent, D] and ``step_images`` [n, N, 3, R, R]
    (save_steps=true: every encoder pass); ``curves`` the :class:`LossCurve` of each fit (written with
    the batch's files, so a diverged or failed batch leaves none); ``is_global_zero``: this process writes the files."""

    is_global_zero: bool
    latents: Tensor
    images: Tensor
    noises: list | None = None
    generators: list | None = None
    strips: dict = field(default_factory=dict)
    composites: Tensor | None = None
    curves: list = field(default_factory=list)
    steps: Tensor | None = None
    step_images: Tensor | None = None


@dataclass
class LossCurve:
    """One fit's loss per step and image, ``values`` [steps, N] for ``keys`` [N], drawn to ``curves/<name>.png``."""

    name: str
    values: Tensor
    keys: list


class InverterEncoder(nn.Module):
    """An inverter's ``encode`` (images -> W+; ``n_iters`` ReStyle passes) as the encoder callable
    OptimizationInversion takes; a submodule, so it follows the LightningModule to its device."""

    def __init__(self, inverter, n_iters=None):
        super().__init__()
        self.inverter, self.n_iters = inverter, n_iters

    def forward(self, x):
        return self.inverter.encode(x, n_iters=self.n_iters)


def generator_given(cfg):
    """Whether the user chose a generator (``generator=checkpoint|random`` or a ``generator.path``
    other than the embedded one) rather than leaving the default."""
    g = cfg.generator
    if not str(g.get("_target_", "")).endswith("load_generator"):
        return True
    default = Path(str(cfg.paths.assets)) / "procedural64.pt"
    return os.path.realpath(str(g.path)) != os.path.realpath(default)


def check_generator_fits(generator, own, cfg, encoder_path):
    """The user's generator must take the codes the encoder gives: same W+ shape [n_latent, D]."""
    mine = (generator.n_latent, generator.style_dim)
    theirs = (own.n_latent, own.style_dim)
    if mine != theirs:
        given = f"generator.path={cfg.generator.path}" if "path" in cfg.generator else "generator="
        raise ValueError(f"{given} takes W+ codes [{mine[0]}, {mine[1]}], but the encoder {encoder_path} gives "
                         f"[{theirs[0]}, {theirs[1]}] (for the generator inside it); drop generator= to use "
                         "the encoder's own generator, or give an encoder trained for this one")


def key_generator(seed, key):
    """The random-number generator of one image's style-mixing draws: seeded by (run seed, output
    key), so an image's multimodal outputs do not depend on the batch or the listing order."""
    state = np.random.SeedSequence([seed, zlib.crc32(key.encode("utf-8"))]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class InversionRun:
    """The networks of one invert.py run and the inversion of its batches (see the module docstring).
    ``outputs`` (:class:`ganinv.outputs.Outputs`) receives the PTI-tuned generators."""

    def __init__(self, cfg, outputs):
        self.cfg, self.outputs = cfg, outputs
        self.device = torch_device(cfg.device)
        method = str(cfg.method)
        self.method = method if method in METHODS else "encoder"
        self.encoder_path = cfg.encoder if self.method != "encoder" else method
        self.inverter = self.encoder = self.transform = self.first = None
        self.generator = None
        if self.method != "optimize" or cfg.init == "encoder":
            self.load_encoder()
        if self.generator is None:
            self.generator = instantiate(cfg.generator)
        self.generator.requires_grad_(False).eval()
        self.channels_last = bool(cfg.get("channels_last", False))
        self.bf16 = uses_bf16(cfg)
        self.latent_mask, self.n_outputs = None, int(cfg.get("n_outputs") or 1)
        if cfg.get("latent_mask") is not None:
            if self.method != "encoder":
                raise ValueError("latent_mask= mixes an encoder's codes (pSp style mixing): it needs method=PATH")
            self.latent_mask = parse_rows(cfg.latent_mask, "latent_mask", limit=self.generator.n_latent)
        self.size, full = cfg.resize or self.generator.size, self.generator.size
        if self.size > full or full % self.size:
            raise ValueError(f"resize={self.size}: must divide the generator resolution {full}")
        self.optimize = None
        if self.method != "encoder":
            preset = cfg.inversion if self.method == "optimize" else cfg.idinvert
            extra = {"init": cfg.init} if self.method == "optimize" else {}
            discriminator = discriminator_for(cfg, preset, cfg.generator, self.device)
            if discriminator is not None:
                self.layout(discriminator)
                extra["discriminator"] = discriminator
            self.optimize = functools.partial(instantiate(preset), **extra)
            self.w_stats = w_statistics(self.generator, preset.n_mean_latent, seed=cfg.seed)
        self.tasks = Tasks(cfg, self.size)
        if self.method == "encoder" and (cfg.get("mask") is not None or self.tasks.inpaint):
            raise ValueError("mask= / inpaint= weight the optimisation's image terms: they need method=optimize "
                             "or method=idinvert, not an encoder checkpoint")
        self.pti = instantiate(cfg.pti) if cfg.get("refine") == "pti" else None
        self.edits = {edit_tag(spec): Edit(spec, self.generator) for spec in edit_specs(cfg)}
        self.loggers, self.curves = None, []
        for net in (self.generator, self.inverter, self.first):
            self.layout(net)

    def layout(self, net):
        """channels_last=true: ``net``'s 4-D parameters and buffers NHWC, in place (None: nothing)."""
        if self.channels_last and net is not None:
            to_channels_last(net)
        return net

    def batch(self, x):
        """An input batch [n, C, S, S] in the run's memory layout (NHWC with channels_last=true)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def autocast(self):
        """precision=bf16: torch.autocast(bfloat16) on the run's device type; else no context."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def load_encoder(self):
        """The encoder checkpoint: its inverter, its generator unless the user chose one, and the
        input transform of an image-to-image checkpoint (RGB checkpoints keep ``transform`` None)."""
        cfg, path = self.cfg, self.encoder_path
        try:
            self.inverter = load_inverter(path, device=self.device).requires_grad_(False)
        except ValueError:
            if not is_alae_file(path):
                raise
            self.load_alae(path)
            return
        self.generator = self.inverter.generator
        if generator_given(cfg):
            self.generator = instantiate(cfg.generator)
            check_generator_fits(self.generator, self.inverter.generator, cfg, path)
        self.encoder = InverterEncoder(self.inverter, cfg.restyle_iters)
        if cfg.get("bootstrap") is not None:  # official scripts/encoder_bootstrapping_inference.py
            if not self.inverter.restyle:
                raise ValueError(f"bootstrap={cfg.bootstrap}: method={path} must be a ReStyle checkpoint "
                                 "(official --model_2_checkpoint_path), not pSp/e4e")
            self.first = load_inverter(cfg.bootstrap, device=self.device).requires_grad_(False)
        transform = InputTransform(self.inverter, cfg.get("resize_factors"), path)
        if transform.kind != "rgb":
            if self.method != "encoder" or cfg.get("refine") is not None or cfg.align:
                raise ValueError(f"{path}: an image-to-image checkpoint ({transform.kind} inputs) runs as "
                                 "method=PATH only, without refine=, align= or method=optimize/idinvert (they fit "
                                 "RGB targets)")
            self.transform = transform

    def load_alae(self, path):
        """A StyleALAE checkpoint (:mod:`ganinv.invert.alae`): method=PATH only, with its own decoder."""
        cfg = self.cfg
        bad = [f"{k}=" for k in ("refine", "edit", "latent_mask", "bootstrap") if cfg.get(k) is not None]
        bad += ["generator="] if generator_given(cfg) else []
        bad = ([f"method={self.method} encoder="] if self.method != "encoder" else []) + bad
        if bad:
            raise ValueError(f"{path}: a StyleALAE checkpoint inverts as method=PATH with its own decoder only "
                             f"(not with {', '.join(bad)})")
        self.inverter = load_alae_encoder(path, device=self.device)
        self.generator = self.inverter.generator
        self.encoder = InverterEncoder(self.inverter, cfg.restyle_iters)

    def fit(self, module, curve_name):
        """trainer.fit(module) with the run's loggers, built once at the first fit as for a resumed
        train.py run (:func:`ganinv.runner.build_loggers`): an invert.py run always continues its output
        folder (finished images are skipped), so its CSV curves go to a fresh ``csv/resumed_<time>/``,
        never over an earlier run's, and W&B continues the folder's run. A progress line every
        ``progress_every`` steps (:class:`ganinv.progress.StepProgress`); global rank zero then draws the
        module's loss per step and image (``module.curves`` [steps, N]) for ``curves/<curve_name>.png``
        (a :class:`LossCurve` in ``self.curves``)."""
        if self.loggers is None:
            self.loggers = build_loggers(self.cfg, resuming=True)
        progress = StepProgress(every_n=int(self.cfg.get("progress_every") or 0))
        trainer = instantiate(self.cfg.trainer, logger=self.loggers or False, callbacks=[progress],
                              precision=trainer_precision(self.cfg))
        trainer.fit(module)
        if trainer.is_global_zero and len(module.history):
            self.curves.append(LossCurve(curve_name, module.curves, list(module.keys)))
        return trainer.is_global_zero

    def render_edits(self, ws, generator, strips, index):
        """Edit strips of codes ws [k, n_latent, D] with ``generator`` into strips[tag][index]."""
        generator.to(self.device)
        for tag, edit in self.edits.items():
            images = edit_strip(generator, ws.to(self.device), edit).float().cpu()  # [k, S, 3, R, R]
            for row, i in enumerate(index):
                strips[tag][i] = images[row]

    @torch.no_grad()
    def multimodal(self, ws, keys):
        """pSp's style mixing (``scripts/style_mixing.py``, ``models/psp.py`` ``forward`` with
        ``latent_mask`` / ``inject_latent`` / ``alpha``): per image, ``n_outputs`` draws z ~ N(0, I)
        (seeded by (seed, key), :func:`key_generator`), each mapped to a w and broadcast
        (``net(z, input_code=True, return_latents=True)``); the ``latent_mask`` rows of the image's
        codes become that w (or ``mix_alpha``·w + (1 − mix_alpha)·code) and are decoded. Noise is the
        generator's constant noise (the official style_mixing.py randomises it).
        ws [n, n_latent, D] -> [(images [K, 3, R, R], codes [K, n_latent, D])] per image."""
        g, out = self.generator.to(self.device), []
        for w, key in zip(ws, keys):
            z = torch.randn(self.n_outputs, g.style_dim, generator=key_generator(self.cfg.seed, key))
            inject = g.broadcast(g.mapping(z.to(self.device)))
            codes = mix_styles(w[None].to(self.device).expand(self.n_outputs, -1, -1), inject, self.latent_mask,
                               self.cfg.get("mix_alpha"))
            out.append((g.synthesis(codes, noise_mode="const").float().cpu(), codes.float().cpu()))
        return out

    def extra_files(self):
        """(kind, suffix) of the files beyond the reconstruction that every image gets."""
        extra = [("multimodal", ".png"), ("multimodal", ".pt"), ("multimodal", ".npy")] if self.latent_mask else []
        extra += self.tasks.extra_files()
        extra += [("steps", ".png"), ("steps", ".pt")] if self.cfg.get("save_steps") else []
        return extra + ([("couples", ".png")] if self.cfg.get("couple_outputs") else [])

    def invert(self, x, keys, name):
        """x [n, 3, S, S] -> :class:`InversionResult`. Edits use the PTI-tuned generator when refining.
        Every rank runs every stage (DDP); only global rank zero writes files."""
        self.curves = []
        x = self.batch(x)
        result = self.first_pass(x, keys, name)
        result.strips = {tag: [None] * len(keys) for tag in self.edits}
        if self.pti is None:
            self.render_edits(result.latents, self.generator, result.strips, range(len(keys)))
        else:
            self.refine(x, keys, name, result)
        result.curves = self.curves
        return result

    def encoder_passes(self, x):
        """The encoder's passes over x: bootstrap=PATH, official ``encoder_bootstrapping_inference.py``
        (pass 0 the first model, then ``restyle_iters`` passes of method=PATH, images from each model's
        G: :func:`ganinv.methods.restyle.bootstrap_passes`), else every ReStyle pass (one for pSp/e4e;
        image None: decoded by the run's generator) -> [RestylePass]."""
        if self.first is not None:
            return bootstrap_passes(self.first, self.inverter, x, self.cfg.restyle_iters)
        steps = self.inverter.encode(x, n_iters=self.encoder.n_iters, return_steps=True)
        return [RestylePass(codes, None) for codes in steps]

    def first_pass(self, x, keys, name):
        """The encoder (method=PATH) or the optimisation (method=optimize|idinvert) of x."""
        if self.optimize is None:
            self.generator.to(self.device)
            with torch.no_grad(), self.autocast():
                passes = self.encoder_passes(x.to(self.device))
                ws = passes[-1].codes.float()
                images = self.generator.synthesis(ws, noise_mode="const").float()
                result = InversionResult(True, ws.cpu(), images.cpu())
                if self.cfg.get("save_steps"):
                    result.steps = torch.stack([p.codes.float().cpu() for p in passes], dim=1)
                    result.step_images = torch.stack([
                        (p.image if p.image is not None else self.generator.synthesis(p.codes, noise_mode="const"))
                        .float().cpu() for p in passes], dim=1)
            return result
        module = self.optimize(generator=self.generator, targets=x, encoder=self.encoder, keys=keys,
                               w_stats=self.w_stats, name=name, **self.tasks.kwargs(keys, x))
        main = self.fit(module, keys[0])  # named by the first key: a re-run of the rest never overwrites it
        noises = module.result["noises"]
        if noises is not None:
            noises = [[n[i:i + 1] for n in noises] for i in range(len(keys))]
        result = InversionResult(main, module.result["latents"], module.result["images"], noises)
        if self.tasks.inpaint:
            result.composites = self.tasks.composites(x, result.images, module.mask.cpu())
        return result

    def refine(self, x, keys, name, result):
        """PTI around the pivots result.latents: per image (refine_per_image, official) or per batch;
        the tuned generators are written as ``generators/<key>.pt`` (``<first key>.batch.pt``)."""
        result.generators, result.noises = [None] * len(keys), None  # the tuned G has its own (constant) noise
        every = range(len(keys))
        for group in [[i] for i in every] if self.cfg.refine_per_image else [list(every)]:
            module = self.pti(generator=self.generator, targets=x[group], pivots=result.latents[group],
                              keys=[keys[i] for i in group], name=f"{name}_pti")
            tag = keys[group[0]] if self.cfg.refine_per_image else f"{keys[group[0]]}.batch"
            result.is_global_zero = self.fit(module, f"pti/{tag}")
            result.images[group] = module.result["images"]
            self.render_edits(result.latents[group], module.generator, result.strips, group)
            rel = self.outputs.generator_path(tag)
            if result.is_global_zero:
                self.outputs.write_generator(rel, module.generator)
            for i in group:
                result.generators[i] = rel
