"""e4e (Tov et al. 2021): encoder for editing — one w plus progressively enabled deltas.

Per iteration (official ``training/coach.py`` at 99ea505, the code the training-step vector
``tests/conformance/training/e4e_train_step_256`` was recorded from):
  1. latent D step (if w_discriminator_lambda > 0): real w = mapping(z), fake = encoder codes
     + latent_avg (official since f0a8223) of the enabled rows, both through 50-code pools
     (row 0 when the pools are off); d_real_loss = mean softplus(−D(real)), d_fake_loss =
     mean softplus(D(fake)); Adam 2e-5; lazy R1 (γ/2 · R1 · d_reg_every, every
     ``d_reg_every``) on real w, a second Adam step. The encoder runs in train mode here, so
     its BatchNorm statistics move twice per iteration, as in the official coach.
  2. encoder step, terms added in the official order: λ_adv·mean_i softplus(−D(w_i)) over the
     enabled rows (``encoder_discriminator_loss``), λ_δ·Σ_{i=1..stage} mean_b ‖w_i − w_0‖
     (``delta{i}_loss``, ``total_delta_loss``; official since 789f1f0 "coach.py fixups", the
     first release summed 1..stage−1; none at 'all'), then pSp's reconstruction losses.
     Ranger 1e-4.
Logged keys are the official ``loss_dict`` keys under ``train/``. ``init_from`` (fine-tuning)
also loads the latent D from an official training checkpoint's ``discriminator_state_dict``.
Progressive stage k is enabled at iteration progressive_start + (k−1)·progressive_step_every
(stage 0 before progressive_start); without progressive_start every delta is on ('all').
The latent D's randomness depends on (run seed, iteration) only: the real-w z of N DDP ranks
are the rows of one draw over the global batch (``shard_randn``: the z of 1 process with N
times the batch), and the pools' decisions come from a ``random.Random`` reseeded per (seed,
rank, iteration), so a resumed run repeats them. The pools are per-rank state, like the
official per-process pool; a checkpoint stores rank 0's, which every rank resumes from.
``z_sampler(module, n) -> z [n, style_dim]`` replaces that draw (e.g. to replay the official
run's ``torch.randn``). (Generator noise with train_noise_mode=random uses torch's RNG, offset
per rank.)
Deliberate deviations from the official coach: the RNG streams above (same distributions,
different draws), and ``global_step`` counts iterations although two optimizers step.
"""
import functools
import random

import torch

from ..distributed import module_randn, run_seed, step_seed
from ..losses import d_logistic_terms, delta_losses, fp32_region, g_nonsaturating_loss, lazy_r1
from ..nets.latent_discriminator import LatentCodesDiscriminator, LatentCodesPool
from .base import step_uncounted
from .encoder import EncoderMethod
from .ranger import make_optimizer


class E4E(EncoderMethod):
    """e4e training on top of :class:`EncoderMethod`, per iteration as in the module docstring.

    Each argument is described where it is declared in ``__init__``.
    """

    def __init__(
        self,
        # Networks.
        generator,                      # StyleGAN2 generator (frozen unless train_decoder, see EncoderMethod)
        encoder,                        # Encoder4Editing: images -> W+ [B, n_latent, D] (w plus deltas), or a
                                        #   callable n_styles -> one (given generator.n_latent)
        # Latent discriminator (official defaults: conf/method/e4e.yaml).
        w_discriminator_lambda=0.1,     # latent D term's weight in the encoder loss (official 0.1); 0: no latent D
        w_discriminator_lr=2e-5,        # Adam lr of the latent D (official 2e-5)
        r1=10.0,                        # R1 weight of the latent D on real w (official 10); 0 off
        d_reg_every=16,                 # lazy R1 interval, iterations (official 16)
        w_pool_size=50,                 # codes in each pool of past real / fake w shown to the latent D (official
                                        #   50); 0: no pools (the latent D sees row 0 of the fakes)
        # Progressive deltas.
        delta_norm=2,                   # p of the delta regularisation's norm ‖w_i − w_0‖_p (official 2)
        delta_norm_lambda=2e-4,         # weight of the delta regularisation (official 2e-4)
        progressive_start=None,         # iteration that enables delta 1 (official 20000); None: every delta on
                                        #   ('all'), no delta regularisation
        progressive_step_every=2000,    # iterations between progressive stages (official 2000)
        # Latent D's real codes and the shared options.
        z_sampler=None,                 # (module, n) -> z [n, style_dim], replaces the real-w draw; None: seeded
        **kwargs,                       # EncoderMethod's arguments (losses, Ranger lr 1e-4, init, export)
    ):
        if callable(encoder) and not isinstance(encoder, torch.nn.Module):
            encoder = encoder(n_styles=generator.n_latent)
        super().__init__(generator, encoder, **kwargs)
        # logger=False: train.py logs the whole resolved config once
        self.save_hyperparameters(ignore=["generator", "encoder", "lpips", "z_sampler"], logger=False)
        self.automatic_optimization = False
        self.z_sampler = z_sampler
        if w_discriminator_lambda > 0:
            self.latent_discriminator = LatentCodesDiscriminator(generator.style_dim, 4)
            self.pool_rng = random.Random(0)  # reseeded every iteration (discriminator_step)
            self.real_w_pool = LatentCodesPool(w_pool_size, rng=self.pool_rng)
            self.fake_w_pool = LatentCodesPool(w_pool_size, rng=self.pool_rng)
            # fine-tuning: the official training checkpoint's latent D (save_training_data)
            if self.init_latent_discriminator is not None:
                self.latent_discriminator.load_state_dict(self.init_latent_discriminator, strict=True)
        self.init_latent_discriminator = None  # only needed while building

    # -- progressive schedule -----------------------------------------------------------
    def stage_at(self, iteration):
        """Progressive stage at an iteration: 0..n_styles−1, or 'all' when not progressive."""
        start, every = self.hparams.progressive_start, self.hparams.progressive_step_every
        if start is None:
            return "all"
        if iteration < start:
            return 0
        return min(1 + (iteration - start) // every, self.generator.n_latent - 1)

    def enabled_rows(self):
        return list(range(self.encoder.n_deltas + 1))

    # -- training -----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        hp = self.hparams
        stage = self.stage_at(self.global_step)
        self.encoder.progressive_stage = stage
        opts = self.optimizers()
        opt_e, opt_d = opts if isinstance(opts, list) else (opts, None)
        logs = {"stage": float(self.encoder.n_deltas)}
        if hp.w_discriminator_lambda > 0:
            logs.update(self.discriminator_step(batch["x"], opt_d))

        y_hat, loss = self.encoder_step(batch, opt_e, functools.partial(self.encoder_loss, stage=stage, logs=logs))
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log_train(logs, batch["x"], batch["y"], y_hat)

    def encoder_step(self, batch, opt_e, loss_fn):
        """Forward, ``loss_fn(x, y, y_hat, codes) -> (loss, logs)``, backward and the one counted
        optimizer step of the iteration -> (y_hat, loss). ReStyle overrides it with its passes."""
        x, y, codes, y_hat = self.invert_batch(batch, noise_mode=self.hparams.train_noise_mode)
        loss, _ = loss_fn(x, y, y_hat, codes)
        opt_e.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_e.step()
        return y_hat, loss

    def encoder_loss(self, x, y, y_hat, codes, stage, logs):
        """Step 2's encoder loss (adversarial, delta, reconstruction terms) -> (loss, logs); the
        terms are logged into ``logs``."""
        hp = self.hparams
        loss = y_hat.new_zeros(())
        if hp.w_discriminator_lambda > 0:
            self.latent_discriminator.requires_grad_(False)
            rows = self.enabled_rows()
            adv = sum(g_nonsaturating_loss(self.latent_discriminator(codes[:, i])) for i in rows) / len(rows)
            loss = loss + hp.w_discriminator_lambda * adv
            logs["encoder_discriminator_loss"] = adv.detach()
        if hp.progressive_start is not None and stage != "all":
            deltas = delta_losses(codes, stage, p=hp.delta_norm)
            logs.update({f"delta{i}_loss": d.detach() for i, d in enumerate(deltas, 1)})
            delta = deltas.sum()
            loss = loss + hp.delta_norm_lambda * delta
            logs["total_delta_loss"] = delta.detach()
        return self.reconstruction_loss(x, y, y_hat, codes, loss=loss, logs=logs)

    def fake_codes(self, x):
        """What the latent D sees as fake: the enabled rows of ``encode(x)`` [B, rows, D]."""
        return self.encode(x)[:, self.enabled_rows()]

    def discriminator_step(self, x, opt_d):
        hp = self.hparams
        d = self.latent_discriminator
        d.requires_grad_(True)
        self.pool_rng.seed(step_seed(run_seed(), self.global_step, "w_pools", self.global_rank))
        with torch.no_grad():
            if self.z_sampler is None:
                z = module_randn(self, x.shape[0], self.generator.style_dim, key="latent_d/z")
            else:
                z = self.z_sampler(self, x.shape[0]).to(self.device)
            real_w = self.real_w_pool.query(self.generator.mapping(z))
            fake_w = self.fake_w_pool.query(self.fake_codes(x))
            if fake_w.ndim == 3:  # pool disabled: official keeps row 0
                fake_w = fake_w[:, 0]
        real_loss, fake_loss = d_logistic_terms(d(real_w), d(fake_w))
        d_loss = real_loss + fake_loss
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss)
        step_uncounted(opt_d)
        logs = {"d_real_loss": real_loss.detach(), "d_fake_loss": fake_loss.detach(),
                "discriminator_loss": d_loss.detach()}
        if hp.r1 > 0 and self.global_step % hp.d_reg_every == 0:
            real_w = real_w.detach().requires_grad_(True)
            with fp32_region(real_w):  # R1's double backward stays fp32 under bf16-mixed
                r1 = lazy_r1(d(real_w), real_w, hp.r1, hp.d_reg_every)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(r1)
            step_uncounted(opt_d)
            logs["discriminator_r1_loss"] = r1.detach()
        return logs

    def on_validation_start(self):
        self.encoder.progressive_stage = self.stage_at(self.global_step)

    def configure_optimizers(self):
        hp = self.hparams
        opts = [make_optimizer(hp.optimizer, self.trainable_parameters(), hp.lr)]
        if hp.w_discriminator_lambda > 0:
            opts.append(torch.optim.Adam(self.latent_discriminator.parameters(), lr=hp.w_discriminator_lr))
        return opts

    # -- resume: the pools are training state too ----------------------------------------
    def on_save_checkpoint(self, checkpoint):
        super().on_save_checkpoint(checkpoint)
        if self.hparams.w_discriminator_lambda > 0:
            checkpoint["w_pools"] = {"real": self.real_w_pool.ws, "fake": self.fake_w_pool.ws}

    def on_load_checkpoint(self, checkpoint):
        super().on_load_checkpoint(checkpoint)
        pools = checkpoint.get("w_pools")
        if pools is not None:
            self.real_w_pool.ws, self.fake_w_pool.ws = list(pools["real"]), list(pools["fake"])
