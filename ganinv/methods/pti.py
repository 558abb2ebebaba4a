"""Pivotal Tuning Inversion (Roich et al. 2021; danielroich/PTI ``training/coaches``).

After any inversion gives pivots w_p (W+ [N, n_latent, D]), a copy of the generator is tuned so
that G(w_p) reproduces the targets: Adam lr 3e-4 on the synthesis weights, per image
MSE + LPIPS(alex) (both weight 1), at most 350 steps, stopping as soon as LPIPS ≤ 0.06 (checked
before the step, as the official single-image coach; with several images: all of them).
Optional locality regularisation (off by default, as officially): per sample z, w_s is mapped
with truncation ψ = 0.5, moved to w_r = w_p + α·(w_s − w_p)/‖w_s − w_p‖ (α = 30, norm over the
whole code) and the tuned G is pulled to the original there, 0.1·MSE + 0.1·LPIPS, noise off.
The mapping network is not tuned (pivots bypass it; the official never gives it gradients).
"""
import copy

import torch

from .base import frozen_copy, log_grid
from .targets import TargetsModule, fit_to


class PTI(TargetsModule):
    """Tune a copy of ``generator`` around ``pivots`` [N, n_latent, D] to reproduce ``targets``
    [N, 3, H, W] in [-1, 1]; the original generator is left untouched.

    After ``trainer.fit``: ``self.generator`` is the tuned generator, ``self.result`` the images.
    Each argument is described where it is declared in ``__init__``.
    """

    def __init__(
        self,
        # Inputs (official defaults: conf/invert/refinement/pti.yaml).
        generator,                      # StyleGAN2 generator, left untouched: a copy is tuned (mapping frozen)
        targets,                        # images [N, 3, H, W] in [-1, 1] to reproduce
        pivots,                         # W+ pivots [N, n_latent, D] from any inversion
        lpips,                          # LPIPSLoss network (official: alex): the loss and the stopping rule
        # Tuning: Adam on the synthesis weights, per-image loss mse_lambda·MSE + lpips_lambda·LPIPS.
        steps=350,                      # at most this many steps (official 350)
        lr=3e-4,                        # Adam learning rate (official 3e-4)
        mse_lambda=1.0,                 # MSE weight (official 1)
        lpips_lambda=1.0,               # LPIPS weight (official 1)
        lpips_threshold=0.06,           # stop when all images' LPIPS <= this, checked before a step (official 0.06)
        # Locality regularisation (official Space_Regulizer; off, as officially).
        locality_regularization=False,  # pull the tuned G to the original around the pivots
        locality_samples=1,             # z samples per regularised step (official 1)
        locality_every=1,               # regularise every this many steps (official 1)
        locality_alpha=30.0,            # α: step from the pivot toward each sample, whole-code norm (official 30)
        locality_psi=0.5,               # truncation ψ of the samples' mapped w (official 0.5)
        locality_mse_lambda=0.1,        # MSE weight between tuned and original G there, noise off (official 0.1)
        locality_lpips_lambda=0.1,      # LPIPS weight there (official 0.1)
        # Noise and bookkeeping.
        noise_mode="const",             # the tuned G's noise while tuning and for the results (official: 'const', as
                                        #   synthesis(w, noise_mode='const'))
        keys=None,                      # a name per image (logging)
        image_every=0,                  # log a target / reconstruction grid every this many steps; 0 never
        name="pti",                     # prefix of the logged image grid
    ):
        if not isinstance(steps, int) or steps < 1:
            raise ValueError(f"pti steps must be an int >= 1, got {steps!r}")
        if lpips is None:
            raise ValueError("PTI needs an lpips network (its loss and stopping rule are LPIPS)")
        if pivots.shape != (len(targets), generator.n_latent, generator.style_dim):
            raise ValueError(f"pivots must be [{len(targets)}, {generator.n_latent}, {generator.style_dim}], "
                             f"got {tuple(pivots.shape)}")
        tuned = copy.deepcopy(generator)
        tuned.requires_grad_(True)
        tuned.style.requires_grad_(False)
        super().__init__(tuned, targets, steps, keys)
        self.save_hyperparameters(ignore=["generator", "targets", "pivots", "lpips", "keys"])
        self.lpips = lpips
        self.original = frozen_copy(generator) if locality_regularization else None
        self.register_buffer("pivots", pivots.detach().float().clone())

    def configure_optimizers(self):
        tuned = [p for p in self.generator.parameters() if p.requires_grad]
        return torch.optim.Adam(tuned, lr=self.hparams.lr)

    def locality_loss(self, rows):
        """Official ``Space_Regulizer``: per image, mean over samples of 0.1·MSE + 0.1·LPIPS between
        the tuned and original G at codes α away from the pivot toward truncated samples."""
        hp, g0 = self.hparams, self.original
        z = torch.randn(hp.locality_samples, g0.style_dim, device=self.pivots.device)
        with torch.no_grad():
            w = g0.broadcast(g0.mapping(z, truncation=hp.locality_psi, truncation_latent=g0.latent_avg))
        loss = 0.0
        pivots = self.pivots[rows]
        for ws in w:
            direction = ws - pivots
            moved = pivots + hp.locality_alpha * direction / direction.flatten(1).norm(dim=1)[:, None, None]
            new = self.generator.synthesis(moved, noise_mode="none")
            with torch.no_grad():
                old = g0.synthesis(moved, noise_mode="none")
            loss = loss + hp.locality_mse_lambda * (new - old).pow(2).mean((1, 2, 3))
            loss = loss + hp.locality_lpips_lambda * self.lpips(new, old, per_image=True)
        return loss / len(w)

    def training_step(self, step, batch_idx):
        hp = self.hparams
        opt = self.optimizers()
        rows = self.shard()
        target = self.targets[rows]
        if len(rows):
            img = self.generator.synthesis(self.pivots[rows], noise_mode=hp.noise_mode)
            img = fit_to(img, target.shape[-2:])
            lp = self.lpips(img, target, per_image=True)
            losses = hp.mse_lambda * (img - target).pow(2).mean((1, 2, 3)) + hp.lpips_lambda * lp
        else:  # more ranks than images
            img, lp, losses = None, target.new_zeros(0), target.new_zeros(0)
        full_lpips = self.gather(rows, lp)
        self.log_curves("pti_loss", self.gather(rows, losses))
        self.log_dict({f"pti_lpips/{k}": v for k, v in zip(self.keys, full_lpips)}, on_step=True,
                      on_epoch=False, batch_size=1)
        if hp.image_every and int(step) % hp.image_every == 0 and img is not None:
            log_grid(self, f"{hp.name}/target_reconstruction", [target, img])
        if full_lpips.max() <= hp.lpips_threshold:
            self.trainer.should_stop = True
            return
        if hp.locality_regularization and self.global_step % hp.locality_every == 0 and len(rows):
            losses = losses + self.locality_loss(rows)
        loss = losses.sum() * self.world_size() if len(rows) else self.zero_loss()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt.step()

    @torch.no_grad()
    def reconstruct(self):
        """``images`` [N, 3, S, S] of the tuned generator at the pivots (generator resolution),
        ``latents`` (the pivots), ``curves`` [steps run, N] and ``keys``."""
        img = self.generator.synthesis(self.pivots, noise_mode=self.hparams.noise_mode)
        return {"images": img.detach().float().cpu(), "latents": self.pivots.detach().cpu().clone(),
                "curves": self.curves, "keys": list(self.keys)}
