"""ganinv speed benchmark: one entry point, a markdown table on stdout and the rows as JSON.

    python experiments/bench/speed.py                      # everything, CPU fp32 (+ bf16 / CUDA if available)
    python experiments/bench/speed.py --only ref methods   # some parts: ref | methods | inference | optimization | ddp
    python experiments/bench/speed.py --quick              # smoke run: 64 px, 1 timed repeat, short DDP runs
    python experiments/bench/speed.py --device cuda --precision 32 bf16
    python experiments/bench/speed.py --only ref --precision 32 --layout nchw nhwc   # + channels_last rows

Parts (batch 4 unless said; images in [-1, 1]; W+ codes [B, n_latent, 512]):

- ``ref``: the issue's reference configuration, built from the nets and losses directly (no
  Lightning): Generator(S, 512, n_mlp 8, channel_multiplier 2) forward z -> image at every size
  (random noise, as the official ``g([z])``), forward+backward at the largest size (backward into
  all G parameters, as in G training), and at the largest size one e4e training step and one e4e
  inference batch with Encoder4Editing(50, 'ir_se') at stage 'all' (every delta on, the most
  expensive stage). The e4e step is the encoder update of the official ``training/coach.py`` at
  ``w_discriminator_lambda 0``, ``id_lambda 0``: codes = E(x) + latent_avg, y_hat = G.synthesis(codes,
  random noise) with G frozen (requires_grad False; gradients still reach the codes), loss =
  MSE + 0.8·LPIPS(alex), backward, Ranger step. The latent discriminator step is left out as the
  issue's loss has no adversarial term (it adds one no-grad encoder forward, see the ``methods``
  e4e row, which has it). LPIPS-alex runs on a random AlexNet trunk (``pnet_rand``): the ImageNet
  weights are not available offline; the architecture and therefore the cost are the same. The
  ``official`` column holds the issue's numbers for rosinality's pure-PyTorch op path on 2 CPU
  threads; ``speed-up`` = official / ours, shown for CPU fp32 only (identical math; NHWC rows
  included, the layout does not change the math).
- ``methods``: training iterations/s of the pSp, e4e and IDInvert LightningModules composed from
  ``conf/`` as ``train.py`` does (``loss=embedded``; e4e at stage 'all', ``progressive_start=null``;
  image grids off): at 64 px the embedded generator with the embedded encoder config, at 256 px
  Generator(256, 512, 8, 2) random with the checkpoint encoder config (IR-SE50, 256 px, 512-wide
  heads) and a random D for IDInvert. A Lightning Trainer runs warm-up + repeats steps on
  pre-rendered procedural faces; a callback times each step from ``on_train_batch_start`` to
  ``on_train_batch_end`` (the whole training_step, backward and optimizer steps, without data
  loading), warm-up steps dropped. Timing the Trainer's own steps (rather than calling
  ``training_step`` by hand) keeps manual optimisation, precision plugins and logging as in a run.
- ``inference``: encoder images/s at batch 1 and 8 (pSp, e4e, IDInvert encoders; e4e also with the
  generator: the whole image -> reconstruction), 64 and 256 px, eval mode, no grad.
- ``optimization``: steps/s of ``OptimizationInversion`` (Image2StyleGAN recipe: W+, Adam 0.01,
  MSE + VGG16 conv1_1/1_2/3_2/4_2 on a random trunk) for 4 images, embedded G at 64 px and
  Generator(256, 512, 8, 2) at 256 px; w statistics precomputed, excluded.
- ``ddp``: ``train.py +method=psp`` (embedded 64 px, per-process batch 4, 1 thread per process)
  as 1 process and as 2 gloo DDP processes; steady-state seconds per iteration from a timing
  callback on rank 0 (intervals between consecutive step ends after warm-up: start-up excluded,
  data loading and gradient all-reduce included). efficiency = (2-process images/s) /
  (2 × 1-process images/s). CPU only.

Transparent huge pages: importing ganinv sets ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch's CPU allocator
then backs tensors of 2 MB and more with 2 MB pages); ``--thp off`` measures without (rows marked
``THP off``). At 256 px a [4, 128, 256, 256] activation is 134 MB: with 4 KB pages every fresh
allocation costs ~33k page faults, and elementwise ops ran at a third of their speed.

Every timed number is the median over repeats after warm-up. Each measurement runs in its own
subprocess, so ``peak MB`` is that process's max RSS (``ru_maxrss``; it includes the 0.7-1 GB of
the torch / Lightning libraries) or, on CUDA, ``torch.cuda.max_memory_allocated``; ``Δ MB`` is the
peak above the level after those imports (what the measurement itself added).
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
PARTS = ("ref", "methods", "inference", "optimization", "ddp")
OFFICIAL_S = {  # the numbers: rosinality's pure-PyTorch ops, batch 4, fp32, 2 CPU threads
    "ref/g_forward_64": 1.7, "ref/g_forward_256": 4.9, "ref/g_forward_backward_256": 21.7,
    "ref/e4e_step_256": 39.0, "ref/e4e_inference_256": 7.7,
}
TARGET_SPEEDUP = 3.0
BIG = dict(style_dim=512, n_mlp=8, channel_multiplier=2)  # Generator(S, 512, 8, 2) beyond the embedded 64 px


# -- timing ---------------------------------------------------------------------------------
def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, warmup, repeats, device):
    """Seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


class _StepTimes:
    """Records ``time.perf_counter()`` at the start and end of every training batch (after a CUDA
    sync). With ``path``, rank 0 writes ``{"start": [...], "end": [...]}`` there at the end of
    training (``train.py`` runs add it as ``+callbacks.bench_timer._target_=speed.step_timer``)."""

    def __init__(self, path=None):
        super().__init__()
        self.path, self.start, self.end = path, [], []

    def _now(self, trainer):
        sync(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.start.append(self._now(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end.append(self._now(trainer))

    def on_train_end(self, trainer, pl_module):
        if self.path and trainer.is_global_zero:
            Path(self.path).write_text(json.dumps({"start": self.start, "end": self.end}))

    def step_times(self, warmup):
        return [e - s for s, e in zip(self.start, self.end)][warmup:]


def step_timer(path=None):
    """A Lightning callback with ``_StepTimes``' hooks. Lightning is imported here, not at the top,
    so that measurements without a Trainer do not pay for (or count the memory of) importing it."""
    import pytorch_lightning as pl

    return type("StepTimer", (_StepTimes, pl.Callback), {})(path)


def nhwc(spec, *modules):
    """With ``layout: nhwc``, store the modules' 4-D parameters and buffers channels_last, as
    ``train.py channels_last=true`` does (same math, NHWC kernels)."""
    if spec.get("layout") == "nhwc":
        from ganinv.runner import to_channels_last

        for m in modules:
            to_channels_last(m)


def nhwc_input(spec, x):
    return x.contiguous(memory_format=torch.channels_last) if spec.get("layout") == "nhwc" else x


def autocast(spec, device):
    bf16 = spec["precision"] == "bf16"
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


# -- building blocks --------------------------------------------------------------------------
def make_generator(spec, device):
    """spec['generator']: 'embedded' (ganinv/assets/procedural64.pt) or Generator kwargs."""
    from ganinv.checkpoints import load_generator
    from ganinv.nets.stylegan2 import Generator

    g = spec["generator"]
    g = load_generator(str(ROOT / "ganinv/assets/procedural64.pt")) if g == "embedded" else Generator(**g)
    return g.to(device).eval()


def encoder_kwargs(spec):
    """spec['encoder']: a conf/encoder/*.yaml name ('embedded', 'checkpoint') or FPN encoder kwargs."""
    from omegaconf import OmegaConf

    e = spec["encoder"]
    return dict(OmegaConf.load(CONF / "encoder" / f"{e}.yaml")) if isinstance(e, str) else dict(e)


def make_encoder(kind, spec, g, device):
    from ganinv.nets.e4e_encoder import Encoder4Editing
    from ganinv.nets.idinvert_encoder import IDInvertEncoder
    from ganinv.nets.psp_encoders import GradualStyleEncoder

    if kind == "idinvert":  # conf/method/idinvert.yaml
        return IDInvertEncoder(g.size, encoder_channels_base=64, encoder_channels_max=1024).to(device)
    cls = Encoder4Editing if kind == "e4e" else GradualStyleEncoder
    return cls(n_styles=g.n_latent, **encoder_kwargs(spec)).to(device)


def random_images(batch, size, device):
    """[batch, 3, size, size] uniform in [-1, 1]: the cost of the nets does not depend on content, and
    the procedural renderer would import Lightning (ganinv.data) into measurements that do not use it."""
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1


def procedural_batches(n, batch, size, device="cpu"):
    """n distinct procedural-face batches [batch, 3, size, size] in [-1, 1] (fixed seed)."""
    from ganinv.data.procedural import FACTORS, render_batch

    gen = torch.Generator().manual_seed(0)
    return [render_batch(torch.rand(batch, len(FACTORS), generator=gen), size).to(device) for _ in range(n)]


def trainer_for(spec, callbacks, root):
    import pytorch_lightning as pl

    return pl.Trainer(accelerator="gpu" if spec["device"] == "cuda" else "cpu", devices=1,
                      precision="bf16-mixed" if spec["precision"] == "bf16" else "32-true",
                      max_steps=spec["warmup"] + spec["repeats"], max_epochs=-1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks, default_root_dir=root)


def compose_train(overrides, output_dir):
    """The train.py config for ``overrides``, composed as the CLI does (run dir ``output_dir``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from ganinv.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


# -- measurements: spec -> list of seconds ----------------------------------------------------
def run_g_forward(spec, device):
    g = make_generator(spec, device)
    nhwc(spec, g)
    z = torch.randn(spec["batch"], g.style_dim, device=device)

    def fwd():
        with torch.no_grad(), autocast(spec, device):
            g(z)
    return time_calls(fwd, spec["warmup"], spec["repeats"], device)


def run_g_forward_backward(spec, device):
    g = make_generator(spec, device).requires_grad_(True)
    nhwc(spec, g)
    z = torch.randn(spec["batch"], g.style_dim, device=device)

    def fwd_bwd():
        g.zero_grad(set_to_none=True)
        with autocast(spec, device):
            loss = g(z).float().square().mean()
        loss.backward()
    return time_calls(fwd_bwd, spec["warmup"], spec["repeats"], device)


def e4e_parts(spec, device):
    g = make_generator(spec, device).requires_grad_(False)
    enc = make_encoder("e4e", spec, g, device)
    enc.progressive_stage = "all"
    avg = g.mean_latent(4096, seed=0)  # [1, 512], broadcast over the W+ rows like latent_avg
    nhwc(spec, g, enc)
    return g, enc, avg, nhwc_input(spec, random_images(spec["batch"], g.size, device))


def run_e4e_step(spec, device):
    from ganinv.losses import LPIPSLoss
    from ganinv.methods.ranger import Ranger

    g, enc, avg, x = e4e_parts(spec, device)
    lpips = LPIPSLoss("alex", pnet_rand=True).to(device)
    nhwc(spec, lpips)
    opt = Ranger(enc.parameters(), lr=1e-4)
    enc.train()

    def step():
        with autocast(spec, device):
            y_hat = g.synthesis(enc(x) + avg, noise_mode="random").float()
            loss = F.mse_loss(y_hat, x) + 0.8 * lpips(y_hat, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time_calls(step, spec["warmup"], spec["repeats"], device)


def run_e4e_inference(spec, device):
    g, enc, avg, x = e4e_parts(spec, device)
    enc.eval()

    def infer():
        with torch.no_grad(), autocast(spec, device):
            g.synthesis(enc(x) + avg, noise_mode="const")
    return time_calls(infer, spec["warmup"], spec["repeats"], device)


def run_encode(spec, device):
    """spec['encoder_kind'] in psp | e4e | idinvert; spec['decode'] also runs G.synthesis."""
    g = make_generator(spec, device).requires_grad_(False)
    enc = make_encoder(spec["encoder_kind"], spec, g, device).eval()
    nhwc(spec, g, enc)
    x = nhwc_input(spec, random_images(spec["batch"], g.size, device))

    def infer():
        with torch.no_grad(), autocast(spec, device):
            codes = enc(x)
            if spec.get("decode"):
                g.synthesis(codes, noise_mode="const")
    return time_calls(infer, spec["warmup"], spec["repeats"], device)


def run_method(spec, device):
    """spec['overrides']: train.py overrides (``+method=...`` first) composing the module."""
    from hydra.utils import instantiate

    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_train(spec["overrides"], tmp)
        module = instantiate(cfg.method.module)
        nhwc(spec, module)
        n = spec["warmup"] + spec["repeats"]
        imgs = [nhwc_input(spec, x) for x in procedural_batches(min(n, 4), spec["batch"], module.generator.size)]
        batches = [{"x": imgs[i % len(imgs)], "y": imgs[i % len(imgs)]} for i in range(n)]
        timer = step_timer()
        loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the ready batches as they are
        trainer_for(spec, [timer], tmp).fit(module, train_dataloaders=loader)
    return timer.step_times(spec["warmup"])


def run_optimization(spec, device):
    from ganinv.losses import VGG16Features
    from ganinv.methods.optimization import OptimizationInversion, w_statistics

    g = make_generator(spec, "cpu").requires_grad_(False)  # the Trainer moves the module to the device
    with torch.no_grad():
        targets = g(torch.randn(spec["batch"], g.style_dim), noise_mode="const")
    vgg = VGG16Features(["conv1_1", "conv1_2", "conv3_2", "conv4_2"], pretrained=False)
    module = OptimizationInversion(g, targets, latent_space="w+", lr=0.01, mse_lambda=1.0, vgg_lambda=1.0,
                                   vgg=vgg, steps=spec["warmup"] + spec["repeats"], w_stats=w_statistics(g))
    nhwc(spec, module)
    timer = step_timer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer_for(spec, [timer], tmp).fit(module)
    return timer.step_times(spec["warmup"])


KINDS = {"g_forward": run_g_forward, "g_forward_backward": run_g_forward_backward, "e4e_step": run_e4e_step,
         "e4e_inference": run_e4e_inference, "encode": run_encode, "method": run_method,
         "optimization": run_optimization}


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(spec):
    """Run one measurement in this process: spec (see ``plan``) -> row dict with ``times_s``,
    ``seconds`` (median), ``rate`` (``unit``: it/s, or img/s for inference), ``peak_mb`` (max RSS
    of the process, or CUDA max allocated) and ``peak_delta_mb`` (that minus the level after
    imports, before any net was built)."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    if spec["kind"] in ("method", "optimization") or spec.get("layout") == "nhwc":
        import ganinv.runner  # noqa: F401  (Lightning, Hydra: imported before the baseline, not measured)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else peak_memory_mb(device)
    times = KINDS[spec["kind"]](spec, device)
    seconds = statistics.median(times)
    per_image = spec["unit"] == "img/s"
    peak = peak_memory_mb(device)
    return {**spec, "times_s": times, "seconds": seconds, "rate": (spec["batch"] if per_image else 1) / seconds,
            "peak_mb": peak, "peak_delta_mb": peak - base}


def annotate(row):
    """Add the official time and speed-up (official / ours) for CPU fp32 reference rows."""
    official = OFFICIAL_S.get(row["key"])
    if official is not None and row["device"] == "cpu" and row["precision"] == "32" and "seconds" in row:
        row["official_s"] = official
        row["speedup"] = official / row["seconds"]
        row["best_s"] = min(row["times_s"])
        row["best_speedup"] = official / row["best_s"]
        row["meets_target"] = row["speedup"] >= TARGET_SPEEDUP
        row["comparable"] = row["threads"] == 2 and row["batch"] == 4  # the official setting (NHWC: same math)
    return row


def measure_isolated(spec):
    """``measure`` in a fresh subprocess (own peak memory, no state carried over); a failure
    becomes a row with ``error``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
           "THP_MEM_ALLOC_ENABLE": "0" if spec.get("thp") == "off" else "1"}
    r = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    for line in r.stdout.splitlines():
        if line.startswith("BENCH_ROW "):
            return json.loads(line[len("BENCH_ROW "):])
    return {**spec, "error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}


# -- DDP scaling ------------------------------------------------------------------------------
def ddp_run(out, processes, batch, steps, warmup, extra=()):
    """One ``train.py +method=psp`` run (``extra``: more overrides; ``trainer.strategy.*`` ones only
    for DDP) -> seconds of each iteration after ``warmup`` on rank 0 (intervals between step ends)."""
    timing = Path(out) / "steps.json"
    args = ["+method=psp", "logger=csv", "export=false", "trainer.precision=32", "trainer.accelerator=cpu",
            f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "+trainer.enable_progress_bar=false",
            f"data.batch_size={batch}", "data.val_length=0", "data.test_length=0", "method.module.image_every=0",
            "+callbacks.bench_timer._target_=speed.step_timer", f"+callbacks.bench_timer.path={timing}",
            f"hydra.run.dir={out}"]
    args += [e for e in extra if processes > 1 or not e.lstrip("+").startswith("trainer.strategy.")]
    args += ["trainer=ddp", f"trainer.devices={processes}"] if processes > 1 else ["trainer.devices=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    if r.returncode != 0:
        raise RuntimeError(f"train.py ({processes} processes) failed: {r.stderr.strip()[-2000:]}")
    end = json.loads(timing.read_text())["end"]
    intervals = [b - a for a, b in zip(end, end[1:])][max(warmup - 1, 0):]
    return intervals


def ddp_scaling(batch, steps, warmup, extra=()):
    """1-process and 2-process rows; the 2-process row carries ``efficiency``."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            try:
                times = ddp_run(Path(tmp) / f"p{processes}", processes, batch, steps, warmup, extra)
            except RuntimeError as e:
                rows.append({"section": "ddp", "processes": processes, "batch_per_process": batch,
                             "error": str(e).splitlines()[-1]})
                continue
            s = statistics.median(times)
            rows.append({"section": "ddp", "key": f"ddp/psp_64_p{processes}", "processes": processes,
                         "batch_per_process": batch, "threads_per_process": 1, "times_s": times, "seconds": s,
                         "rate": 1 / s, "images_per_s": processes * batch / s})
    if len(rows) == 2 and all("images_per_s" in r for r in rows):
        rows[1]["efficiency"] = rows[1]["images_per_s"] / (2 * rows[0]["images_per_s"])
    return rows


# -- plan -------------------------------------------------------------------------------------
def big_or_embedded(size):
    """64 px: the embedded G and encoder config; other sizes: Generator(size, 512, 8, 2) random and
    the checkpoint encoder config (IR-SE50, 256 px input, 512-wide heads)."""
    if size == 64:
        return "embedded", "embedded", []
    over = ["generator=random", f"generator.size={size}", "generator.n_mlp=8", "generator.channel_max=512",
            "encoder=checkpoint", f"encoder.input_size={size}"]
    return dict(size=size, **BIG), {**encoder_kwargs({"encoder": "checkpoint"}), "input_size": size}, over


def plan(parts, sizes, configs, threads, warmup, repeats):
    """The measurement specs of ``parts`` for every (device, precision, layout) config."""
    specs, top = [], max(sizes)
    for device, precision, layout, *thp in configs:
        base = dict(device=device, precision=precision, layout=layout, thp=(thp or ["on"])[0], threads=threads,
                    warmup=warmup, repeats=repeats)

        def add(section, key, name, kind, size, batch=4, unit="it/s", base=base, **extra):
            specs.append({**base, "section": section, "key": key, "name": name, "kind": kind, "size": size,
                          "batch": batch, "unit": unit, **extra})

        if "ref" in parts:
            ref_enc = dict(num_layers=50, mode="ir_se", input_size=top, head_channels=512)
            for s in sizes:
                add("ref", f"ref/g_forward_{s}", f"G forward {s} px", "g_forward", s, generator=dict(size=s, **BIG))
            gen = dict(size=top, **BIG)
            add("ref", f"ref/g_forward_backward_{top}", f"G forward+backward {top} px", "g_forward_backward", top,
                generator=gen)
            add("ref", f"ref/e4e_step_{top}", f"e4e training step {top} px", "e4e_step", top, generator=gen,
                encoder=ref_enc)
            add("ref", f"ref/e4e_inference_{top}", f"e4e inference {top} px (E + G)", "e4e_inference", top,
                generator=gen, encoder=ref_enc)
        for s in sizes:
            gen, enc, over = big_or_embedded(s)
            if "methods" in parts:
                for m in ("psp", "e4e", "idinvert"):
                    extra = ["method.module.progressive_start=null"] if m == "e4e" else []
                    add("methods", f"methods/{m}_{s}", f"{m} {s} px", "method", s,
                        overrides=[f"+method={m}", *over, "method.module.image_every=0", *extra])
            if "inference" in parts:
                for b in (1, 8):
                    for m, decode in (("psp", False), ("e4e", False), ("idinvert", False), ("e4e", True)):
                        what = f"{m} E + G" if decode else f"{m} E"
                        add("inference", f"inference/{m}{'_eg' if decode else ''}_{s}_b{b}", f"{what} {s} px",
                            "encode", s, batch=b, unit="img/s", generator=gen, encoder=enc, encoder_kind=m,
                            decode=decode)
            if "optimization" in parts:
                add("optimization", f"optimization/w+_{s}", f"Image2StyleGAN W+ {s} px, 4 images", "optimization",
                    s, generator=gen)
    return specs


def available_configs(devices=None, precisions=None, layouts=("nchw",), thps=("on",)):
    """(device, precision, layout, thp) tuples: CPU fp32 always; bf16 where the CPU has native bf16
    (AMX or AVX512-BF16) or on CUDA; CUDA when available; every layout and THP setting given."""
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native_bf16 = "amx_bf16" in cpuinfo or "avx512_bf16" in cpuinfo
    devices = devices or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    out = []
    for d in devices:
        for p in precisions or (["32", "bf16"] if d == "cuda" or native_bf16 else ["32"]):
            out += [(d, p, layout, thp) for layout in layouts for thp in thps]
    return out


# -- report -----------------------------------------------------------------------------------
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


def sgemm_gflops(threads, n=2048, repeats=10):
    """fp32 GFLOP/s of an n x n matmul on ``threads`` threads: the machine's speed at this moment.
    Shared cloud cores drift (the same G forward measured 0.51 s and 0.77 s an hour apart here);
    recorded before and after the measurements so that rows can be read against it."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.set_num_threads(old)
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:.0f}"


MEMORY = [("peak MB", "peak_mb"), ("Δ MB", "peak_delta_mb")]
CONFIG = [("config", "config")]
COLUMNS = {
    "ref": [("measurement", "name"), *CONFIG, ("batch", "batch"), ("s / call", "seconds"),
            ("official s", "official_s"), ("speed-up", "speedup"), ("best s", "best_s"),
            ("best speed-up", "best_speedup"), *MEMORY],
    "methods": [("method", "name"), *CONFIG, ("batch", "batch"), ("s / it", "seconds"), ("it/s", "rate"), *MEMORY],
    "inference": [("encoder", "name"), *CONFIG, ("batch", "batch"), ("s / batch", "seconds"), ("img/s", "rate"),
                  *MEMORY],
    "optimization": [("run", "name"), *CONFIG, ("images", "batch"), ("s / step", "seconds"), ("steps/s", "rate"),
                     *MEMORY],
    "ddp": [("processes", "processes"), ("batch / process", "batch_per_process"), ("s / it", "seconds"),
            ("it/s", "rate"), ("img/s (all)", "images_per_s"), ("efficiency", "efficiency")],
}
TITLES = {"ref": "Reference configuration (nets + losses, no Lightning)", "methods": "Training (Lightning methods)",
          "inference": "Encoder inference", "optimization": "Optimisation inversion",
          "ddp": "DDP scaling: pSp 64 px, gloo, 1 CPU thread per process"}


def cell(row, field):
    if field == "config":
        precision = "fp32" if row["precision"] == "32" else row["precision"]
        return (f"{row['device']} {precision}" + (" NHWC" if row.get("layout") == "nhwc" else "")
                + (" THP off" if row.get("thp") == "off" else ""))
    v = row.get(field)
    if field == "speedup" and v is not None:
        mark = "✓" if row["meets_target"] else "✗"
        return f"{v:.2f}× {mark}" + ("" if row["comparable"] else " *")
    if field == "best_speedup" and v is not None:
        return f"{v:.2f}×"
    if field in ("peak_mb", "peak_delta_mb") and v is not None:
        return f"{v:.0f}"
    if isinstance(v, float):
        return fmt(v)
    return "—" if v is None else str(v)


def markdown(result):
    m = result["machine"]
    quick = " (--quick)" if result.get("quick") else ""
    lines = [f"## ganinv speed{quick} — {m['cpu']} ({m['cpu_count']} cores), {m['threads']} threads"
             + (f", {m['gpu']}" if "gpu" in m else "") + f", torch {m['torch']}, Lightning {m['lightning']}", ""]
    if "sgemm_gflops" in result:
        before, after = result["sgemm_gflops"]
        lines += [f"Machine speed: fp32 sgemm 2048 on {m['threads']} threads {before:.0f} GFLOP/s before, "
                  f"{after:.0f} after the measurements.", ""]
    for part in PARTS:
        rows = [r for r in result["rows"] if r.get("section") == part]
        if not rows:
            continue
        cols = COLUMNS[part]
        lines += [f"### {TITLES[part]}", "", "| " + " | ".join(c for c, _ in cols) + " |",
                  "|" + "---|" * len(cols)]
        for r in rows:
            if "error" in r:
                lines.append(f"| {r.get('name', r.get('processes'))} | failed: {r['error'][:200]} |")
            else:
                lines.append("| " + " | ".join(cell(r, f) for _, f in cols) + " |")
        lines.append("")
    lines += [
        "Batch 4 unless stated; times are medians over repeats after warm-up; peak MB is the measuring "
        "process's max RSS (incl. ~0.7-1 GB of torch/Lightning libraries) or CUDA max allocated; Δ MB is the "
        "peak above the level after imports.",
        "Reference rows: LPIPS-alex on a random AlexNet trunk (no ImageNet weights offline; same architecture "
        "and cost); e4e step = encoder update at stage 'all', loss MSE + 0.8·LPIPS, Ranger, G frozen, no latent "
        f"discriminator. Official = rosinality's pure-PyTorch op path, fp32, 2 CPU threads; speed-up = official / "
        f"ours (CPU fp32 only, median), ✓ when ≥ {TARGET_SPEEDUP:g}×; best = the fastest repeat (least "
        "disturbed by other load on shared cores); * = not the official setting (threads ≠ 2 or "
        "batch ≠ 4), not comparable.",
        "Methods: e4e at stage 'all' with its latent discriminator; loss=embedded (LPIPS random trunk, no ID "
        "loss); 256 px = Generator(256, 512, 8, 2) random + IR-SE50 encoder (conf/encoder/checkpoint.yaml).",
        "DDP efficiency = 2-process img/s / (2 × 1-process img/s), same per-process batch.",
    ]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 px, 1 warm-up + 1 timed repeat, short DDP")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="default 64 256 (--quick: 64)")
    ap.add_argument("--device", nargs="+", choices=["cpu", "cuda"], default=None)
    ap.add_argument("--precision", nargs="+", choices=["32", "bf16"], default=None)
    ap.add_argument("--layout", nargs="+", choices=["nchw", "nhwc"], default=["nchw"],
                    help="nhwc: channels_last weights and activations (train.py channels_last=true)")
    ap.add_argument("--thp", nargs="+", choices=["on", "off"], default=["on"],
                    help="THP_MEM_ALLOC_ENABLE for the measurements (on: what importing ganinv sets)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per measurement (official: 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, --quick 1)")
    ap.add_argument("--ddp-steps", type=int, default=None, help="steps per DDP run (default 30, --quick 5)")
    ap.add_argument("--ddp-batch", type=int, default=4, help="per-process batch of the DDP rows")
    ap.add_argument("--ddp-args", nargs="*", default=[],
                    help="extra train.py overrides for both DDP runs (1 and 2 processes), e.g. channels_last=true")
    ap.add_argument("--json", default=None,
                    help="default experiments/results/bench.json (--quick: bench_quick.json)")
    ap.add_argument("--render", nargs="+", default=None, metavar="JSON",
                    help="print the tables of earlier runs' JSON files (rows merged) and exit")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.child is not None:  # one measurement, run by measure_isolated
        import logging

        logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
        print("BENCH_ROW " + json.dumps(measure(json.loads(args.child))), flush=True)
        return
    if args.render:
        results = [json.loads(Path(f).read_text()) for f in args.render]
        merged = {**results[0], "rows": [annotate(r) for res in results for r in res["rows"]]}
        print(markdown(merged))
        return
    sizes = args.sizes or ([64] if args.quick else [64, 256])
    repeats = args.repeats or (1 if args.quick else 3)
    ddp_steps = args.ddp_steps or (5 if args.quick else 30)
    configs = available_configs(args.device, args.precision, args.layout, args.thp)
    result = {"machine": machine_info(args.threads), "quick": args.quick, "sizes": sizes, "rows": []}
    out = Path(args.json or ROOT / "experiments/results" / ("bench_quick.json" if args.quick else "bench.json"))
    t_start = time.perf_counter()
    gflops_before = sgemm_gflops(args.threads)
    for spec in plan(args.only, sizes, configs, args.threads, 1, repeats):
        row = annotate(measure_isolated(spec))
        result["rows"].append(row)
        status = row.get("error") or f"{row['seconds']:.3f} s, {row['rate']:.3g} {row['unit']}, {row['peak_mb']:.0f} MB"
        print(f"[{time.perf_counter() - t_start:6.0f} s] {row['name']} ({cell(row, 'config')}, batch {row['batch']}): "
              f"{status}", file=sys.stderr, flush=True)
    if "ddp" in args.only:
        result["rows"] += ddp_scaling(args.ddp_batch, ddp_steps, 2 if args.quick else 5, args.ddp_args)
    result["sgemm_gflops"] = [gflops_before, sgemm_gflops(args.threads)]
    result["seconds_total"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    print(f"\nwrote {out} ({result['seconds_total']:.0f} s)")


if __name__ == "__main__":
    main()
