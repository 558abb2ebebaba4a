"""StyleALAE (Pidhorskyi et al. 2020), the official podgorskiy/ALAE ``train_alae.py`` recipe.

Per iteration (``train_alae.py`` loop, losses from ``model.py`` ``Model.forward`` / ``losses.py``),
all at the current level of detail ``lod`` and fade-in ``blend``:
  (a) E and D (``encoder_optimizer``): softplus(D(E(G(F(z))))) + softplus(−D(E(x))) + γ/2·‖∇ₓD(E(x))‖²
      on reals every step (γ = 10, ``discriminator_logistic_simple_gp``), fakes with style mixing.
  (b) F and G (``decoder_optimizer``): softplus(−D(E(G(F(z))))), style mixing, E frozen.
  (c) reciprocity, both optimisers step: mean‖F(z) − E(G(F(z)))‖² with F(z) detached (official
      ``Lae``), so it trains E and G; no mixing.
  Then the EMA copy (``model_s.lerp``, half-life ``ema_kimg`` thousand images) follows.
Every ``generate`` moves ``dlatent_avg`` toward the batch mean of F(z) (β = 0.995).
Progressive growing (``lod_driver.LODDriver``): LOD = images // images_per_lod (capped), the first
half of every cycle after the first fades the new level in with blend = sin(π·t − π/2)/2 + 1/2;
reals are box-downsampled to 2**(lod+2) px and blended with their nearest-upsampled half size;
both Adam states are reset when the LOD changes and the learning rate is ``learning_rates[lod]``.
Adam(β=(0, 0.99), eps 1e-8) with per-parameter equalised steps (``LREQAdam``). Deviations: LOD
counts images at the datamodule's fixed batch (official: per-LOD batch sizes, epochs of the
dataset); torch Adam adds eps after the bias correction (LREQAdam before); random draws are
seeded by (run seed, iteration, key) as in ganinv's other methods.
"""
import math
import random
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..checkpoints.alae import ALAEConfig, save_alae
from ..distributed import module_randn, run_seed, step_seed
from ..losses.adversarial import d_logistic_loss, fp32_region, g_nonsaturating_loss, lazy_r1
from ..nets.alae import lr_equalization_groups
from .base import check_precision, ema_update, frozen_copy, log_grid, offset_seed_by_rank, step_uncounted


@dataclass
class LOD:
    lod: int
    blend: float
    in_transition: bool


def lod_schedule(images, images_per_lod, layer_count):
    """The ``LODDriver`` state after ``images`` training images (0 images_per_lod: full size)."""
    if images_per_lod <= 0:
        return LOD(layer_count - 1, 1.0, False)
    cycle, pos = divmod(images, images_per_lod)
    lod = min(layer_count - 1, cycle)
    half = images_per_lod // 2
    in_transition = pos < half and cycle == lod and lod > 0
    if not in_transition:
        return LOD(lod, 1.0, False)
    return LOD(lod, math.sin(pos / half * math.pi - 0.5 * math.pi) * 0.5 + 0.5, True)


def reals_at(x, lod, blend, resolution):
    """Images [B, C, S, S] -> [B, C, r, r], r = ``resolution`` (2x2 box filter per octave),
    in transition lerped with the nearest-upsampled r/2 version (official loop)."""
    if x.shape[-1] != resolution:
        x = F.avg_pool2d(x, x.shape[-1] // resolution)
    if blend == 1:
        return x
    return x * blend + F.interpolate(F.avg_pool2d(x, 2, 2), resolution) * (1.0 - blend)


class ALAE(pl.LightningModule):
    """StyleALAE's F, G, E and D trained from scratch with the recipe of the module docstring.

    Each argument is described where it is declared in ``__init__``.
    """

    def __init__(
        self,
        # Architecture (official widths: the FFHQ config, configs/ffhq.yaml).
        size=32,                        # image side in px, a power of two >= 4 (the data size); LAYER_COUNT =
                                        #   log2(size) − 1 (official FFHQ: 1024 px, 9 layers)
        startf=16,                      # START_CHANNEL_COUNT (official 16)
        maxf=512,                       # MAX_CHANNEL_COUNT (official 512)
        latent_size=512,                # LATENT_SPACE_SIZE: the size of z and w (official 512)
        mapping_layers=8,               # MAPPING_LAYERS of F (official 8); D's mapping has the official fixed 3
        channels=3,                     # image channels, MODEL.CHANNELS (official 3)
        # Optimisation: LREQAdam for E + D (encoder_optimizer) and for F + G (decoder_optimizer).
        learning_rates=(0.0015,),       # lr per LOD (4, 8, ..., 1024 px), the last entry repeating (official FFHQ:
                                        #   0.0015 for 4..128 px, 0.002, 0.003, 0.003)
        betas=(0.0, 0.99),              # Adam betas, TRAIN.ADAM_BETA_0 / _1 (official (0, 0.99)); eps 1e-8, no decay
        r1_gamma=10.0,                  # R1 weight γ (γ/2·‖∇ₓD(E(x))‖² on reals, every step; official 10); 0 off
        style_mixing_prob=0.9,          # probability of style mixing in steps (a) and (b) (official 0.9)
        dlatent_avg_beta=0.995,         # β of dlatent_avg's running mean of F(z) (official 0.995)
        images_per_lod=960000,          # training images per LOD cycle (official 16 epochs × 60 000); 0: full size
        ema_kimg=10.0,                  # half-life of the EMA copy model_s, thousand images (official 10)
        # Logging.
        image_every=500,                # iterations between sample grids (input | EMA G(E(x)) | EMA G(F(z))); 0 never
        n_sample=8,                     # rows of the sample grid (fixed z, seed 0)
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        layer_count = int(math.log2(size)) - 1
        if 2 ** (layer_count + 1) != size or layer_count < 1:
            raise ValueError(f"method.module.size={size}: ALAE needs a power of two >= 4 (the data size)")
        self.config = ALAEConfig(layer_count, startf, maxf, latent_size, mapping_layers, channels)
        self.automatic_optimization = False
        self.model = self.config.build().train()
        self.model_s = frozen_copy(self.model)
        self.register_buffer("current_lod", torch.tensor(-1))
        self.register_buffer("sample_z", torch.randn(n_sample, latent_size, generator=torch.Generator().manual_seed(0)))

    def setup(self, stage):
        check_precision(self.trainer)
        offset_seed_by_rank(self.trainer)

    def schedule(self):
        images = self.global_step * self.batch_images
        return lod_schedule(images, self.hparams.images_per_lod, self.config.layer_count)

    def generate(self, b, s, key, mixing):
        """G(F(z)) at ``s`` (an :class:`LOD`), with F(z) [B, 1, D] (official ``generate``)."""
        m, hp = self.model, self.hparams
        styles = m.mapping_f(module_randn(self, b, self.config.latent_size, key=f"{key}/z"))
        with torch.no_grad():
            m.dlatent_avg.buff.lerp_(styles.mean(0), 1.0 - hp.dlatent_avg_beta)
        rng = random.Random(step_seed(run_seed(), self.global_step, key, "mixing"))
        if mixing and hp.style_mixing_prob and rng.random() < hp.style_mixing_prob:
            styles2 = m.mapping_f(module_randn(self, b, self.config.latent_size, key=f"{key}/z2"))
            cutoff = rng.randint(1, (s.lod + 1) * 2)
            layer = torch.arange(styles.shape[1], device=self.device)[None, :, None]
            styles = torch.where(layer < cutoff, styles, styles2)
        return styles[:, :1], m.decoder(styles, s.lod, s.blend, noise=True)

    def d_of_e(self, x, s):
        return self.model.mapping_d(self.model.encoder(x, s.lod, s.blend))

    def enter_lod(self, s, optimizers):
        """New LOD: fresh Adam states (official ``set_epoch``) and that LOD's learning rate."""
        rates = self.hparams.learning_rates
        lr = rates[min(s.lod, len(rates) - 1)]
        for opt in optimizers:
            opt.optimizer.state.clear()
            for group in opt.optimizer.param_groups:
                group["lr"] = lr * group["lr_coef"]
        self.current_lod.fill_(s.lod)

    def training_step(self, batch, batch_idx):
        real = batch["y"] if isinstance(batch, dict) else batch[0]
        b = real.shape[0]
        self.batch_images = b * self.trainer.world_size
        opt_e, opt_g = self.optimizers()
        m, s = self.model, self.schedule()
        if s.lod != int(self.current_lod):
            self.enter_lod(s, (opt_e, opt_g))
        x = reals_at(real, s.lod, s.blend, m.decoder.layer_to_resolution[s.lod]).detach().requires_grad_(True)

        # (a) E and D: logistic loss + R1 on reals
        with torch.no_grad():
            _, fake = self.generate(b, s, "d", mixing=True)
        m.encoder.requires_grad_(True)
        with fp32_region(x):  # R1's double backward stays fp32 under bf16-mixed
            d_real = self.d_of_e(x, s)
            r1 = lazy_r1(d_real, x, self.hparams.r1_gamma, 1) if self.hparams.r1_gamma else 0.0
        loss_d = d_logistic_loss(d_real, self.d_of_e(fake, s)) + r1
        opt_e.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        step_uncounted(opt_e)

        # (b) F and G: non-saturating loss through the frozen E and D
        m.encoder.requires_grad_(False)
        m.mapping_d.requires_grad_(False)
        _, fake = self.generate(b, s, "g", mixing=True)
        loss_g = g_nonsaturating_loss(self.d_of_e(fake, s))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g)
        step_uncounted(opt_g)
        m.encoder.requires_grad_(True)
        m.mapping_d.requires_grad_(True)

        # (c) reciprocity: E(G(w)) ≈ w, w = F(z) detached
        w, rec = self.generate(b, s, "ae", mixing=False)
        lae = (m.encoder(rec, s.lod, s.blend)[:, None] - w.detach()).pow(2).mean()
        opt_e.zero_grad(set_to_none=False)  # zeros, as the official torch: D's and F's Adam
        opt_g.zero_grad(set_to_none=False)  # states still advance (by a zero step), as official
        self.manual_backward(lae)
        step_uncounted(opt_e)
        opt_g.step()  # the one counted step per iteration

        ema_update(self.model_s, m, 0.5 ** (self.batch_images / (self.hparams.ema_kimg * 1000.0)))
        logs = {"train/loss_d": loss_d.detach(), "train/loss_g": loss_g.detach(), "train/lae": lae.detach(),
                "train/lod": float(s.lod), "train/blend": float(s.blend)}
        self.log_dict(logs, prog_bar=True, sync_dist=False)
        if self.hparams.image_every and self.global_step % self.hparams.image_every == 0:
            self.log_samples(x.detach(), s)

    @torch.no_grad()
    def log_samples(self, x, s):
        """Rows: input | EMA reconstruction G(E(x)) | EMA sample G(F(z))."""
        ms, n = self.model_s, min(x.shape[0], self.sample_z.shape[0])
        rec = ms.decoder(ms.encoder(x[:n], s.lod, s.blend), s.lod, s.blend)
        sample = ms.decoder(ms.mapping_f(self.sample_z[:n]), s.lod, s.blend)
        log_grid(self, "samples/alae", [x[:n], rec, sample])

    def configure_optimizers(self):
        hp = self.hparams
        m = self.model
        kw = dict(betas=tuple(hp.betas), eps=1e-8, weight_decay=0.0)
        lr = hp.learning_rates[0]
        opt_e = torch.optim.Adam(lr_equalization_groups(m.encoder, lr) + lr_equalization_groups(m.mapping_d, lr), **kw)
        opt_g = torch.optim.Adam(lr_equalization_groups(m.decoder, lr) + lr_equalization_groups(m.mapping_f, lr), **kw)
        return [opt_e, opt_g]

    def export(self, path):
        """The official Checkpointer layout plus ``config`` (:func:`ganinv.checkpoints.alae.save_alae`)."""
        save_alae(path, self.model, self.model_s, self.config)
