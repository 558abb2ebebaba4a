"""Optimisation-based inversion as a LightningModule that owns its targets.

One module covers the optimisation family (images in [-1, 1], W+ as [B, n_latent, D]):

- rosinality / NVIDIA projector (``schedule='projector'``): Adam lr 0.1 with a 5 % ramp-up and a
  25 % cosine ramp-down, latent noise 0.05·σ_w·max(0, 1 − t/0.75)², per-image noise maps
  optimised with the 1e5 autocorrelation regulariser and renormalised after every step,
  w initialised at the mean of 10 000 mapped z, LPIPS-VGG;
- Image2StyleGAN (W+, Adam lr 0.01, MSE + VGG16 conv1_1/1_2/3_2/4_2 features) and
  Image2StyleGAN++ (``noise_steps``: a second phase that optimises only the noise maps with MSE);
- hybrid inversion (``init='encoder'``) and IDInvert's domain-regularised optimisation
  (``domain_lambda``: start at E(x), MSE + 5e-5·VGG conv4_3 + 2·mean((w − E(G(w)))²));
- per-pixel masks (``mask``: Image2StyleGAN++ masked W+ / noise embedding and inpainting, the
  face mask of stylegan-encoder); crossover and local style transfer are
  ``methods.image2stylegan_pp``;
- pbaylies/stylegan-encoder encode_images.py: logcosh pixel loss, MS-SSIM, a discriminator term,
  the L1 dlatent penalty, ``tile_dlatents``, the loss-plateau early stop and the staircase lr decay
  (``schedule='exponential'``).

Every image's loss is its own (per-image MSE / LPIPS / features / noise regulariser, summed over
the batch) and Adam is elementwise, so inverting a batch equals inverting its images one by one;
each image's randomness (noise maps, latent noise) comes from its own generator seeded by
(seed, key). ``trainer.fit(module)`` needs no datamodule: the module's dataloader yields the step
indices. Under DDP every rank keeps all latents but computes only its shard of the images; the
summed loss is scaled by the world size so DDP's gradient averaging returns each image's own
gradient, and every rank ends with every image's result.
"""
import math

import torch
from torch import nn

from ..distributed import step_seed
from ..losses import g_nonsaturating_loss, noise_normalize_, noise_regularize
from ..losses.masked import (
    MSSSIM_BETAS,
    apply_mask,
    dlatent_l1,
    logcosh_pixel_loss,
    masked_mse,
    masked_vgg_loss,
    msssim_loss,
    msssim_min_size,
    resize_mask,
)
from .base import log_grid
from .targets import TargetsModule, device_of, fit_to, w_statistics

LATENT_SPACES = ("z", "w", "w+")
INITS = ("mean", "random", "encoder")
SCHEDULES = ("constant", "projector", "exponential")
NOISE_INITS = ("const", "random")


def projector_lr(t, lr, rampup=0.05, rampdown=0.25):
    """Learning rate at progress t ∈ [0, 1) of the StyleGAN2 projectors:
    lr · min(1, t/rampup) · (½ − ½·cos(π · min(1, (1 − t)/rampdown)))."""
    ramp = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1.0 - t) / rampdown)) if rampdown > 0 else 1.0
    return lr * ramp * (min(1.0, t / rampup) if rampup > 0 else 1.0)


def exponential_lr(i, steps, lr, rate=0.9, every=0.04):
    """stylegan-encoder's staircase decay at step i (0-based): lr · rate^⌊(i + 1) / (every · steps)⌋
    (``tf.train.exponential_decay(staircase=True)`` of the incremented global step; the official
    --decay_steps is ``every`` in percent of --iterations)."""
    return lr * rate ** math.floor((i + 1) / (every * steps))


def latent_noise_strength(t, w_std, noise=0.05, ramp=0.75):
    """σ_w · noise · max(0, 1 − t/ramp)²: the projectors' exploration noise on the latent."""
    return w_std * noise * max(0.0, 1.0 - t / ramp) ** 2 if ramp > 0 else 0.0


class OptimizationInversion(TargetsModule):
    """Invert ``targets`` [N, 3, H, W] in [-1, 1] into a frozen StyleGAN2 ``generator``.

    Per-image loss: mse_lambda·MSE + lpips_lambda·LPIPS + vgg_lambda·Σ_l mean((F_l − F̂_l)²)
      + id_lambda·(1 − cos) + domain_lambda·mean((w − E(G(w)))²) + noise_regularize·noise reg,
      plus the stylegan-encoder terms logcosh_lambda·logcosh + msssim_lambda·(1 − MS-SSIM)
      + discriminator_lambda·softplus(−D(G(w))) + l1_lambda·dlatent_l1 (pbaylies encode_images.py /
      encoder/perceptual_model.py; deviation: the official adds the raw mean D score).
    Each argument is described where it is declared in ``__init__``.
    """

    NOT_HPARAMS = ("generator", "targets", "encoder", "lpips", "vgg", "id_loss", "w_stats", "keys", "mask",
                   "discriminator")

    def __init__(
        self,
        # Targets and latent / initialisation.
        generator,                      # StyleGAN2 generator, used frozen (requires_grad off, eval mode)
        targets,                        # images [N, 3, H, W] in [-1, 1] to invert
        latent_space="w+",              # 'z' [N, D] (through the mapping), 'w' [N, D] or 'w+' [N, n_latent, D]
        init="mean",                    # 'mean' (w̄ of n_mean_latent mapped z), 'random' (a per-image z, mapped
                                        #   for w/w+) or 'encoder' (encoder(targets) -> W+; layer mean for 'w')
        encoder=None,                   # callable images -> W+ [N, n_latent, D] (nn.Module, e.g. IDInvertEncoder,
                                        #   or an inverter's encode), frozen; for init='encoder', domain_lambda
        # Schedule (Adam on the latent).
        steps=1000,                     # optimisation steps on the latent
        lr=0.01,                        # Adam learning rate (projector: 0.1)
        betas=(0.9, 0.999),             # Adam betas
        schedule="constant",            # 'constant' lr, 'projector' ramps or 'exponential' (stylegan-encoder)
        lr_rampup=0.05,                 # projector lr ramp-up, fraction of steps
        lr_rampdown=0.25,               # projector cosine lr ramp-down, fraction of steps
        latent_noise=0.0,               # projector exploration noise on the latent (× σ_w); 0 disables
        latent_noise_ramp=0.75,         # fraction of steps over which the latent noise decays to 0
        # Noise maps: per-image maps exist when optimize_noise or noise_steps > 0, else G's constant noise.
        noise_init="const",             # 'const' (G's stored maps) or 'random' (N(0, 1) per image)
        optimize_noise=False,           # optimise the maps jointly with the latent (renormalised per image each step)
        noise_regularize=0.0,           # weight of the noise autocorrelation regulariser (projector: 1e5)
        noise_steps=0,                  # Image2StyleGAN++: then this many steps on the noise maps only, MSE only
        noise_lr=None,                  # lr of the noise-only phase (None: lr)
        # Per-image loss weights and their networks. Generator outputs are pooled to the target size.
        mse_lambda=1.0,                 # MSE
        lpips_lambda=0.0,               # LPIPS
        lpips=None,                     # LPIPSLoss network
        vgg_lambda=0.0,                 # Σ_l mean((F_l − F̂_l)²) over VGG feature layers
        vgg=None,                       # VGG16Features network
        feature_resize=256,             # VGG features of images above this size are computed pooled to it
        id_lambda=0.0,                  # 1 − cos of face-ID embeddings
        id_loss=None,                   # IDLoss network
        domain_lambda=0.0,              # IDInvert domain regulariser mean((w − E(G(w)))²); needs encoder
        early_stop_lpips=None,          # freeze an image from the first step its LPIPS <= this (needs lpips);
                                        #   the run stops when all are frozen
        # Bookkeeping.
        n_mean_latent=10000,            # mapped z averaged for w̄ and σ_w
        w_stats=None,                   # precomputed (w̄, σ_w), instead of n_mean_latent samples
        seed=0,                         # run seed; each image's randomness is seeded by (seed, key)
        keys=None,                      # a name per image (logging, per-image seeds)
        image_every=0,                  # log a target / reconstruction grid every this many steps; 0 never
        name="inversion",               # prefix of the logged image grid
        mask=None,                      # [N or 1, 1, h, w] in [0, 1], resized to the targets; image terms (MSE,
                                        #   logcosh, MS-SSIM, LPIPS, VGG, both phases) compare M ⊙ G(w) with
                                        #   M ⊙ x, M = 0 is left to the generator (inpainting); ID, domain and D
                                        #   terms see the whole image
        # stylegan-encoder options (official defaults: conf/invert/inversion/stylegan_encoder.yaml).
        logcosh_lambda=0.0,             # mean log cosh(127.5·(G(w) − x))
        msssim_lambda=0.0,              # 1 − MS-SSIM
        msssim_betas=MSSSIM_BETAS,      # MS-SSIM weight per scale
        discriminator_lambda=0.0,       # softplus(−D(G(w))) (the official adds the raw mean D score: deviation)
        discriminator=None,             # D network for discriminator_lambda, used frozen
        l1_lambda=0.0,                  # D·mean|w − w̄| (dlatent_l1)
        tile_dlatents=False,            # optimise one w for every layer (latent_space='w')
        plateau_threshold=None,         # official per-image early stop: avg ← ½·avg + (L_prev − L), count steps
                                        #   with avg < threshold (reset otherwise); None disables
        plateau_patience=10,            # freeze an image after the step where that count > patience
        lr_decay_rate=0.9,              # schedule='exponential' (exponential_lr): staircase factor
        lr_decay_every=0.04,            # ... applied every this fraction of steps
    ):
        if tile_dlatents:  # stylegan-encoder's tiled dlatents: one w for every layer
            if latent_space == "z":
                raise ValueError("tile_dlatents=true optimises one w; it cannot be combined with latent_space=z")
            latent_space = "w"
        self._check_options(latent_space, init, encoder, steps, schedule, noise_init, optimize_noise,
                            noise_steps, lpips_lambda, lpips, vgg_lambda, vgg, id_lambda, id_loss,
                            domain_lambda, early_stop_lpips)
        if discriminator_lambda and discriminator is None:
            raise ValueError("discriminator_lambda > 0 needs a discriminator network")
        if schedule == "exponential" and not (0 < lr_decay_rate and lr_decay_every * steps > 0):
            raise ValueError(f"schedule=exponential needs lr_decay_rate > 0 and lr_decay_every > 0; got "
                             f"{lr_decay_rate!r}, {lr_decay_every!r}")
        if msssim_lambda and targets.shape[-1] < msssim_min_size(msssim_betas):
            raise ValueError(f"msssim_lambda > 0 with {len(msssim_betas)} msssim_betas needs targets of at least "
                             f"{msssim_min_size(msssim_betas)} px, got {targets.shape[-1]}: give fewer msssim_betas")
        super().__init__(generator.requires_grad_(False).eval(), targets, steps + noise_steps, keys)
        self.save_hyperparameters(ignore=list(self.NOT_HPARAMS))
        self.lpips, self.vgg, self.id_loss = lpips, vgg, id_loss
        for net in (encoder, discriminator):
            if isinstance(net, nn.Module):
                net.requires_grad_(False).eval()
        self.encoder, self.discriminator = encoder, discriminator
        self.register_buffer("mask", None if mask is None else self.check_mask(mask, "mask"))
        w_mean, w_std = w_stats if w_stats is not None else w_statistics(generator, n_mean_latent)
        self.register_buffer("w_mean", w_mean.detach().float().to(self.targets.device).clone())
        self.w_std = float(w_std)
        self.register_buffer("done", torch.zeros(self.num_images, dtype=torch.bool))
        self.register_buffer("frozen_at", torch.full((self.num_images,), -1, dtype=torch.long))
        # stylegan-encoder plateau state per image: previous loss, running average drop (nan = none yet)
        self.register_buffer("plateau_prev", torch.full((self.num_images,), math.nan))
        self.register_buffer("plateau_avg", torch.full((self.num_images,), math.nan))
        self.register_buffer("plateau_count", torch.zeros(self.num_images, dtype=torch.long))
        # seeded by (run seed, image key): an image gets the same randomness in any batch
        self.rngs = [torch.Generator().manual_seed(step_seed(seed, k)) for k in self.keys]
        self.latent = nn.Parameter(self._initial_latent())
        self.noises = None
        if optimize_noise or noise_steps > 0:
            self.noises = nn.ParameterList([nn.Parameter(n) for n in self._initial_noise()])

    @staticmethod
    def _check_options(latent_space, init, encoder, steps, schedule, noise_init, optimize_noise, noise_steps,
                       lpips_lambda, lpips, vgg_lambda, vgg, id_lambda, id_loss, domain_lambda, early_stop):
        def choice(name, value, options):
            if value not in options:
                raise ValueError(f"{name} must be one of {', '.join(options)}; got {value!r}")

        choice("latent_space", latent_space, LATENT_SPACES)
        choice("init", init, INITS)
        choice("schedule", schedule, SCHEDULES)
        choice("noise_init", noise_init, NOISE_INITS)
        if not isinstance(steps, int) or steps < 1 or not isinstance(noise_steps, int) or noise_steps < 0:
            raise ValueError(f"steps must be an int >= 1 and noise_steps an int >= 0; got {steps!r}, "
                             f"{noise_steps!r}")
        if latent_space == "z" and init != "random":
            raise ValueError(f"latent_space=z starts from a random z; init={init} is for w / w+")
        if (init == "encoder" or domain_lambda > 0) and encoder is None:
            raise ValueError("init=encoder and domain_lambda > 0 need an encoder")
        if noise_init == "random" and not (optimize_noise or noise_steps > 0):
            raise ValueError("noise_init=random needs optimize_noise=true or noise_steps > 0")
        for weight, net, what in ((lpips_lambda, lpips, "lpips_lambda > 0 needs an lpips network"),
                                  (early_stop, lpips, "early_stop_lpips needs an lpips network"),
                                  (vgg_lambda, vgg, "vgg_lambda > 0 needs a vgg network"),
                                  (id_lambda, id_loss, "id_lambda > 0 needs an id_loss network")):
            if weight and net is None:
                raise ValueError(what)

    def check_mask(self, mask, name):
        """A user mask [N or 1, 1, h, w] in [0, 1] -> float, resized to the targets' size."""
        n = self.num_images
        if not torch.is_tensor(mask) or mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, n):
            shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f"{name} must be a tensor [N or 1, 1, H, W] for {self.num_images} targets, got {shape}")
        if mask.min() < 0 or mask.max() > 1:
            raise ValueError(f"{name} values must lie in [0, 1], got [{mask.min().item():g}, {mask.max().item():g}]")
        return resize_mask(mask.detach().float().to(self.targets.device), self.targets.shape[-2:]).clone()

    @staticmethod
    def rows_of(tensor, rows):
        """Per-image tensor [N, ...] at ``rows``, or a shared one [1, ...] as is."""
        return tensor if tensor.shape[0] == 1 else tensor[rows]

    # -- initialisation -----------------------------------------------------------------
    def _per_image_randn(self, shape, rows=None):
        rows = range(self.num_images) if rows is None else rows.tolist()
        return torch.stack([torch.randn(shape, generator=self.rngs[i]) for i in rows])

    @torch.no_grad()
    def _initial_latent(self):
        hp, g, n = self.hparams, self.generator, self.num_images
        device = self.targets.device
        if hp.init == "encoder":
            at = device_of(self.encoder, device)
            ws = torch.cat([self.encoder(x[None].to(at)) for x in self.targets]).float().to(device)
            if ws.shape[1:] != (g.n_latent, g.style_dim):
                raise ValueError(f"encoder returned codes {tuple(ws.shape)}, expected "
                                 f"[N, {g.n_latent}, {g.style_dim}] for this generator")
            return ws.mean(1) if hp.latent_space == "w" else ws
        if hp.init == "random":
            z = self._per_image_randn((g.style_dim,))
            if hp.latent_space == "z":
                return z.to(device)
            w = g.mapping(z.to(device_of(g, device))).to(device)
        else:
            w = self.w_mean.expand(n, -1)
        return w.clone() if hp.latent_space == "w" else g.broadcast(w).clone()

    @torch.no_grad()
    def _initial_noise(self):
        g = self.generator
        const = [getattr(g.noises, f"noise_{i}").to(self.targets.device) for i in range(g.num_layers)]
        if self.hparams.noise_init == "random":
            return [self._per_image_randn(m.shape[1:]).to(self.targets.device) for m in const]
        return [m.expand(self.num_images, -1, -1, -1).clone() for m in const]

    # -- synthesis and losses -----------------------------------------------------------
    def ws_of(self, latent):
        """The optimised variable -> W+ [n, n_latent, D]."""
        if self.hparams.latent_space == "z":
            latent = self.generator.mapping(latent)
        return latent if latent.ndim == 3 else self.generator.broadcast(latent)

    def synthesize(self, rows, latent_noise=0.0):
        """Images of ``rows`` [n, 3, S, S] (generator resolution) and their W+ codes."""
        latent = self.latent[rows]
        if latent_noise > 0:
            latent = latent + latent_noise * self._per_image_randn(latent.shape[1:], rows).to(latent)
        ws = self.ws_of(latent)
        noise = "const" if self.noises is None else [n[rows] for n in self.noises]
        return ws, self.generator.synthesis(ws, noise_mode=noise)

    def features(self, img):
        size = self.hparams.feature_resize
        return fit_to(img, (size, size)) if size and img.shape[-1] > size else img

    def regions(self, rows):
        """(target [n, 3, H, W], mask [n or 1, 1, H, W] or None) pairs whose image terms are summed."""
        return [(self.targets[rows], None if self.mask is None else self.rows_of(self.mask, rows))]

    def region_losses(self, rec, target, mask, noise_phase):
        """Image terms [n] of reconstructions ``rec`` against one masked target, and LPIPS [n] or None."""
        hp = self.hparams
        mse = masked_mse(rec, target, mask)
        if noise_phase:  # Image2StyleGAN++: the noise phase fits (masked) MSE alone
            loss = mse
        else:
            loss = hp.mse_lambda * mse
        lp = None
        if self.lpips is not None and (hp.lpips_lambda > 0 or hp.early_stop_lpips is not None):
            with torch.set_grad_enabled(torch.is_grad_enabled() and hp.lpips_lambda > 0 and not noise_phase):
                lp = self.lpips(apply_mask(rec, mask), apply_mask(target, mask), per_image=True)
        if noise_phase:
            return loss, lp
        if hp.lpips_lambda > 0:
            loss = loss + hp.lpips_lambda * lp
        if hp.vgg_lambda > 0:
            loss = loss + hp.vgg_lambda * masked_vgg_loss(self.vgg, self.features(rec), self.features(target), mask)
        if hp.logcosh_lambda > 0:
            loss = loss + hp.logcosh_lambda * logcosh_pixel_loss(rec, target, mask)
        if hp.msssim_lambda > 0:
            loss = loss + hp.msssim_lambda * msssim_loss(rec, target, mask, hp.msssim_betas)
        return loss, lp

    def image_losses(self, rows, img, ws, noise_phase):
        """Per-image loss [n] (and LPIPS [n] or None) of images ``img`` made from ``ws``."""
        hp = self.hparams
        loss = lp = None
        for target, mask in self.regions(rows):
            rec = fit_to(img, target.shape[-2:])
            terms, region_lp = self.region_losses(rec, target, mask, noise_phase)
            loss = terms if loss is None else loss + terms
            if region_lp is not None:
                lp = region_lp if lp is None else lp + region_lp
        if noise_phase:
            return loss, lp
        target = self.targets[rows]
        rec = fit_to(img, target.shape[-2:])
        if hp.id_lambda > 0:
            with torch.no_grad():
                target_id = self.id_loss.extract_feats(target)
            loss = loss + hp.id_lambda * (1 - (self.id_loss.extract_feats(rec) * target_id).sum(1))
        if hp.domain_lambda > 0:
            # IDInvert: the encoder sees the reconstruction at the size it saw the target
            codes = self.encoder(rec)
            if torch.is_grad_enabled() and not codes.requires_grad:
                raise ValueError("domain_lambda > 0 needs a differentiable encoder (its output has no grad)")
            loss = loss + hp.domain_lambda * (ws - codes).pow(2).mean((1, 2))
        if hp.discriminator_lambda > 0:  # on the generator-resolution image, as the official
            logits = self.discriminator(img).reshape(len(img), -1)
            loss = loss + hp.discriminator_lambda * torch.stack([g_nonsaturating_loss(row) for row in logits])
        if hp.l1_lambda > 0:
            loss = loss + hp.l1_lambda * dlatent_l1(ws, self.w_mean)
        if hp.optimize_noise and hp.noise_regularize > 0:
            reg = noise_regularize([n[rows] for n in self.noises], per_image=True)
            loss = loss + hp.noise_regularize * reg
        return loss, lp

    # -- optimisation -------------------------------------------------------------------
    def configure_optimizers(self):
        groups = [{"params": [self.latent], "lr": self.hparams.lr}]
        if self.noises is not None:
            groups.append({"params": list(self.noises), "lr": 0.0})
        return torch.optim.Adam(groups, lr=self.hparams.lr, betas=tuple(self.hparams.betas))

    def schedule(self, i):
        """(latent lr, noise lr, latent noise strength) at step i."""
        hp = self.hparams
        if i >= hp.steps:  # Image2StyleGAN++ noise phase
            return 0.0, hp.lr if hp.noise_lr is None else hp.noise_lr, 0.0
        t = i / hp.steps
        if hp.schedule == "projector":
            lr = projector_lr(t, hp.lr, hp.lr_rampup, hp.lr_rampdown)
        elif hp.schedule == "exponential":
            lr = exponential_lr(i, hp.steps, hp.lr, hp.lr_decay_rate, hp.lr_decay_every)
        else:
            lr = hp.lr
        strength = latent_noise_strength(t, self.w_std, hp.latent_noise, hp.latent_noise_ramp)
        return lr, lr if hp.optimize_noise else 0.0, strength

    def parameters_per_image(self):
        return [self.latent] + ([] if self.noises is None else list(self.noises))

    def training_step(self, step, batch_idx):
        hp = self.hparams
        i = int(step)
        noise_phase = i >= hp.steps
        opt = self.optimizers()
        lr, noise_lr, strength = self.schedule(i)
        opt.param_groups[0]["lr"] = lr
        if self.noises is not None:
            opt.param_groups[1]["lr"] = noise_lr

        rows = self.shard()
        img = None
        if len(rows):
            ws, img = self.synthesize(rows, strength)
            losses, lp = self.image_losses(rows, img, ws, noise_phase)
        else:  # more ranks than images
            losses = lp = self.targets.new_zeros(0)
        if hp.early_stop_lpips is not None:
            newly = (self.gather(rows, lp) <= hp.early_stop_lpips) & ~self.done
            self.frozen_at[newly] = i
            self.done |= newly
        full = self.gather(rows, losses)
        plateaued = self.plateau_step(full) & ~self.done if hp.plateau_threshold is not None else None
        self.log_curves("loss", full)
        self.log("lr", lr, on_step=True, on_epoch=False, batch_size=1)
        if hp.image_every and i % hp.image_every == 0 and img is not None:
            rec = fit_to(img, self.targets.shape[-2:])
            log_grid(self, f"{hp.name}/target_reconstruction", [self.targets[rows], rec])
        frozen = self.done.clone()
        if frozen.all():
            self.trainer.should_stop = True
            return
        loss = (losses * ~frozen[rows]).sum() * self.world_size() if len(rows) else self.zero_loss()
        opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        kept = [p.detach()[frozen].clone() for p in self.parameters_per_image()] if frozen.any() else None
        opt.step()
        if hp.optimize_noise and not noise_phase:
            noise_normalize_(list(self.noises), per_image=True)
        if kept is not None:
            with torch.no_grad():
                for p, k in zip(self.parameters_per_image(), kept):
                    p[frozen] = k
        if plateaued is not None:  # stylegan-encoder breaks after this step's update
            self.frozen_at[plateaued] = i
            self.done |= plateaued

    @torch.no_grad()
    def plateau_step(self, loss):
        """stylegan-encoder's early-stopping update with this step's loss [N] -> which images are done."""
        hp = self.hparams
        prev, avg = self.plateau_prev, self.plateau_avg
        started = ~torch.isnan(avg)
        drop = prev - loss
        self.plateau_avg = torch.where(started, 0.5 * avg + drop, drop)  # nan until a previous loss exists
        below = self.plateau_avg < hp.plateau_threshold
        self.plateau_count = torch.where(started & below, self.plateau_count + 1,
                                         torch.where(started, 0, self.plateau_count))
        self.plateau_prev = loss.detach().clone()
        return self.plateau_count > hp.plateau_patience

    # -- results ------------------------------------------------------------------------
    @torch.no_grad()
    def latents(self):
        """W+ codes of every image [N, n_latent, D] (float32, detached)."""
        return self.ws_of(self.latent).detach().float().clone()

    @torch.no_grad()
    def reconstruct(self):
        """Final results: ``latents`` W+ [N, n_latent, D], ``images`` [N, 3, S, S] at generator
        resolution (no latent noise), ``noises`` (per-image maps, list of [N, 1, r, r]) or None,
        ``curves`` [steps run, N], ``frozen_at`` [N] (the step an image met ``early_stop_lpips``,
        −1 if never) and ``keys``."""
        rows = torch.arange(self.num_images, device=self.targets.device)
        ws, img = self.synthesize(rows)
        return {"latents": ws.detach().float().cpu(), "images": img.detach().float().cpu(),
                "noises": None if self.noises is None else [n.detach().cpu().clone() for n in self.noises],
                "curves": self.curves, "frozen_at": self.frozen_at.cpu().clone(), "keys": list(self.keys)}
