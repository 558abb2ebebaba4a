"""StyleGAN2 training (Karras et al. 2020, rosinality's recipe) as a LightningModule.

Per iteration (rosinality ``train.py``):
  1. D step: softplus(D(G(z))) + softplus(-D(x)); every ``d_reg_every`` iterations lazy R1,
     (r1/2)·E‖∇D(x)‖²·d_reg_every.
  2. G step: softplus(-D(G(z))), with style mixing (prob ``mixing``); every ``g_reg_every``
     iterations optional path-length regularisation.
  3. G_ema <- EMA(G) with half-life ``ema_kimg`` thousand images.
Adam with the lazy-regularisation correction: lr·c, betas (0, 0.99^c), c = k/(k+1).
``global_step`` counts iterations (see ``step_uncounted``). The checkpoint export writes the
rosinality layout (``g``, ``g_ema``, ``d``, ``latent_avg``) that ``load_generator`` reads.
z, z2 and the mixing decision depend on (run seed, iteration, draw) only: N DDP ranks draw the
rows of one draw over the global batch (``shard_randn``), the z of one process with N times the
batch. Generator and path-length noise use torch's RNG, offset per rank.
"""
import math
import random

import pytorch_lightning as pl
import torch

from ..distributed import module_randn, run_seed, step_seed
from ..losses import d_logistic_loss, fp32_region, g_nonsaturating_loss, lazy_r1
from .base import check_precision, ema_update, frozen_copy, log_grid, offset_seed_by_rank, step_uncounted


class StyleGAN2(pl.LightningModule):
    def __init__(self, generator, discriminator, lr=0.002, r1=10.0, d_reg_every=16, g_reg_every=4,
                 path_regularize=0.0, path_batch_shrink=2, mixing=0.9, ema_kimg=10.0,
                 image_every=500, n_sample=16):
        super().__init__()
        # logger=False: train.py logs the whole resolved config once
        self.save_hyperparameters(ignore=["generator", "discriminator"], logger=False)
        self.automatic_optimization = False
        self.generator = generator.train()
        self.discriminator = discriminator.train()
        self.g_ema = frozen_copy(generator)
        self.register_buffer("mean_path_length", torch.zeros(()))
        self.register_buffer("sample_z", torch.randn(n_sample, generator.style_dim,
                                                     generator=torch.Generator().manual_seed(0)))

    # -- helpers ------------------------------------------------------------------------
    def _sample_ws(self, batch, key):
        """This rank's ``batch`` latents with style mixing: [batch, n_latent, D]. ``key`` names the
        draw within the iteration ("d", "g", "path"). The mixing coin and crossover are one draw
        per global batch (as rosinality's per batch), the same on every rank."""
        g = self.generator
        z = module_randn(self, batch, g.style_dim, key=f"{key}/z")
        rng = random.Random(step_seed(run_seed(), self.global_step, key, "mixing"))
        if self.hparams.mixing > 0 and rng.random() < self.hparams.mixing:
            z2 = module_randn(self, batch, g.style_dim, key=f"{key}/z2")
            return g.mix(g.mapping(z), g.mapping(z2), rng.randint(1, g.n_latent - 1))
        return g.broadcast(g.mapping(z))

    def _ema_decay(self, batch):
        return 0.5 ** (batch / (self.hparams.ema_kimg * 1000))

    def setup(self, stage):
        check_precision(self.trainer)
        offset_seed_by_rank(self.trainer)

    # -- training -----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        real = batch["y"] if isinstance(batch, dict) else batch[0]
        b = real.shape[0]
        opt_g, opt_d = self.optimizers()
        it = self.global_step
        hp = self.hparams

        # 1. discriminator
        self.generator.requires_grad_(False)
        self.discriminator.requires_grad_(True)
        with torch.no_grad():
            fake = self.generator.synthesis(self._sample_ws(b, "d"), noise_mode="random")
        d_loss = d_logistic_loss(self.discriminator(real), self.discriminator(fake))
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        step_uncounted(opt_d)
        logs = {"train/d_loss": d_loss.detach()}
        if hp.r1 > 0 and it % hp.d_reg_every == 0:
            real_r = real.detach().requires_grad_(True)
            with fp32_region(real_r):  # double backward: fp32 also under bf16-mixed
                r1_loss = lazy_r1(self.discriminator(real_r), real_r, hp.r1, hp.d_reg_every)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(r1_loss)
            step_uncounted(opt_d)
            logs["train/r1_loss"] = r1_loss.detach()

        # 2. generator
        self.generator.requires_grad_(True)
        self.discriminator.requires_grad_(False)
        fake = self.generator.synthesis(self._sample_ws(b, "g"), noise_mode="random")
        g_loss = g_nonsaturating_loss(self.discriminator(fake))
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        if hp.path_regularize > 0 and it % hp.g_reg_every == 0:
            step_uncounted(opt_g)
            logs["train/path"] = self._path_step(opt_g, b)
        opt_g.step()  # the one counted step per iteration
        logs["train/g_loss"] = g_loss.detach()

        # 3. EMA generator
        ema_update(self.g_ema, self.generator, self._ema_decay(b * self.trainer.world_size))
        self.log_dict(logs, prog_bar=True, sync_dist=False)
        if hp.image_every and (it % hp.image_every == 0):
            self._log_samples()

    def _path_step(self, opt_g, batch):
        """Path-length regularisation step (rosinality ``g_path_regularize``)."""
        hp = self.hparams
        n = max(1, batch // hp.path_batch_shrink)
        ws = self._sample_ws(n, "path").detach().requires_grad_(True)
        img = self.generator.synthesis(ws, noise_mode="random")
        noise = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.pow(2).sum(2).mean(1).sqrt()
        path_mean = self.mean_path_length + 0.01 * (lengths.mean().detach() - self.mean_path_length)
        penalty = (lengths - path_mean).pow(2).mean()
        self.mean_path_length.copy_(path_mean)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(hp.path_regularize * hp.g_reg_every * penalty + 0 * img[0, 0, 0, 0])
        return penalty.detach()

    @torch.no_grad()
    def _log_samples(self):
        img = self.g_ema(self.sample_z, noise_mode="const")
        log_grid(self, "samples/g_ema", [img[i::4] for i in range(4)])

    def configure_optimizers(self):
        hp = self.hparams
        g_ratio = hp.g_reg_every / (hp.g_reg_every + 1) if hp.path_regularize > 0 else 1.0
        d_ratio = hp.d_reg_every / (hp.d_reg_every + 1)
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=hp.lr * g_ratio, betas=(0.0, 0.99**g_ratio))
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr * d_ratio, betas=(0.0, 0.99**d_ratio))
        return [opt_g, opt_d]

    # -- export -------------------------------------------------------------------------
    def export(self, path, n_mean=10000, include_g=False):
        """Write a rosinality-layout checkpoint (:func:`ganinv.checkpoints.stylegan.save_generator`):
        g_ema, d, latent_avg [D] (mean of ``n_mean`` mapped z, seed 0), arch (lr_mlp, mbstd group),
        and the raw ``g`` with ``include_g``; the Lightning checkpoint is what resumes training."""
        from ..checkpoints.stylegan import save_generator

        latent_avg = self.g_ema.mean_latent(n_mean, seed=0)[0]
        save_generator(path, self.g_ema, d=self.discriminator, latent_avg=latent_avg,
                       g=self.generator if include_g else None)
