"""Latent regression (pbaylies/stylegan-encoder ``train_resnet.py`` / ``train_effnet.py``): an
encoder trained on generator samples G(w) -> w, the learned half of pbaylies' hybrid inversion
(``encode_images.py --load_resnet``: its prediction initialises the perceptual optimisation; here
``invert.py init=encoder encoder=export/latent_regression.pt``, see OptimizationInversion).

Per iteration: B pairs (x, w) from the frozen G (``GeneratorSampledDataset``: truncation ±0.7
towards the mean w, "negative truncation" pairs, 2/3/n_latent/2 style groups, constant noise), the
images area-pooled to the encoder's input size (official ``cv2.INTER_AREA``); minimise
logcosh(E(x) + latent_avg − w) over W+ (keras' ``logcosh``, mean over all entries) with Adam
lr 1e-3. Official schedule: chunks of ``--batch_size`` 2048 fresh pairs, each fitted for
``--epochs`` 2 in minibatches of 16 (``n_samples``, ``chunk_epochs``, ``batch_size`` here).

Validation: ``val/w_mse`` of the W+ prediction on ``val_samples`` held-out pairs (official: a test set
of ``--test_size`` 512), ``val/w_mse_mean`` the predict-the-mean baseline (latent_avg) and their
ratio ``val/w_ratio``; and, as for pSp, the encoder alone on the datamodule's val images (``val/mse``,
``val/psnr``, ``val/ssim``, ``val/lpips``, ``val/loss`` = l2·MSE).

Deviations: the prediction is an offset from latent_avg (official: absolute dlatents, see
:mod:`ganinv.nets.regression_encoder`); pairs come from an index schedule seeded by the run seed
(official: unseeded numpy draws); the official --max_patience early stopping is left to
``trainer.max_steps``; ImageNet trunk weights only from a given file (official: keras download).
"""
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints.safe import load_torch
from ..data.sampled import GeneratorSampledDataset
from ..distributed import run_seed, step_seed
from .encoder import EncoderMethod
from .targets import fit_to

LOSSES = ("logcosh", "mse")
STREAM_LENGTH = 2**62  # the training pairs are an endless stream of chunks
HELD_OUT_SPLIT = 1  # GeneratorSampledDataset split of the validation pairs
IMAGENET_HINT = ("torchvision's resnet50 ImageNet state dict, e.g. resnet50-0676ba61.pth "
                 "(https://download.pytorch.org/models/resnet50-0676ba61.pth)")


def log_cosh(pred, target):
    """keras ``logcosh``: mean of log(cosh(d)), computed as d + softplus(−2d) − log 2 (no overflow)."""
    d = pred - target
    return (d + F.softplus(-2 * d) - math.log(2.0)).mean()


@functools.lru_cache(maxsize=4)
def chunk_order(seed, chunk, epoch, n):
    """The order of a chunk's ``n`` pairs in one of its epochs (keras ``fit`` shuffles every epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(step_seed(seed, chunk, epoch))).tolist()


def pair_indices(draw, count, seed, n_samples=None, chunk_epochs=1):
    """Dataset indices of draws ``draw .. draw + count − 1``: chunk c holds pairs c·n .. c·n + n − 1,
    drawn ``chunk_epochs`` times, shuffled each time; ``n_samples`` None: every draw a fresh pair."""
    if n_samples is None:
        return list(range(draw, draw + count))
    out = []
    for p in range(draw, draw + count):
        chunk, q = divmod(p, n_samples * chunk_epochs)
        epoch, j = divmod(q, n_samples)
        out.append(chunk * n_samples + chunk_order(seed, chunk, epoch, n_samples)[j])
    return out


class LatentRegression(EncoderMethod):
    """A :class:`~ganinv.nets.regression_encoder.RegressionEncoder` (or any images -> W+ / w net)
    regressing the latents of its frozen generator's samples; see the module docstring.
    Each argument is described where it is declared in ``__init__``.
    """

    def __init__(
        self,
        # Networks (official defaults: conf/method/latent_regression.yaml).
        generator,                      # StyleGAN2 generator, frozen, whose samples G(w) -> w are regressed
        encoder,                        # RegressionEncoder (or any images -> W+ / w net), or a callable (n_styles,
                                        #   style_dim, input_size) -> one
        imagenet_weights=None,          # torchvision ResNet state dict for the trunk (official: keras ImageNet
                                        #   weights); None: random init; not loaded with init_from
        # Regression loss and Adam (official: keras Adam defaults).
        loss="logcosh",                 # 'logcosh' (keras logcosh, official --loss) or 'mse', on W+
        lr=1e-3,                        # learning rate (official 0.001)
        betas=(0.9, 0.999),             # Adam betas (official (0.9, 0.999))
        eps=1e-7,                       # Adam epsilon (official 1e-7; torch's default is 1e-8)
        # Training pairs from the generator (GeneratorSampledDataset, constant noise).
        batch_size=16,                  # pairs per step (official --minibatch_size 16)
        n_samples=2048,                 # fresh pairs per chunk (official --batch_size 2048); None: every draw fresh
        chunk_epochs=2,                 # passes over each chunk, reshuffled each pass (official --epochs 2)
        truncation=0.7,                 # truncation of the sampled w towards the generator's mean w (official 0.7)
        mirror=True,                    # every w also at −truncation (official: the "negative image pair")
        style_groups=True,              # several w's per image over consecutive layers (official: 2/3 or n_latent/2);
                                        #   False for a learn_in_w encoder
        image_size=256,                 # encoder input side in px, at most the generator size (official 256)
        val_samples=512,                # held-out pairs for val/w_* (official --test_size 512); the trainer's
                                        #   limit_val_batches bounds the real-image part
        # EncoderMethod's arguments.
        start_from_latent_avg=True,     # predict the offset from latent_avg (deviation: official absolute dlatents)
        lpips=None,                     # LPIPSLoss for val/lpips on the val images (no image loss in training)
        image_every=250,                # train input / reconstruction / target grid every this many steps; 0 never
        n_mean_latent=10000,            # mapped z averaged for latent_avg when the generator has none
        init_from=None,                 # a ganinv export/latent_regression.pt to continue from (fresh optimizer)
        export_opts=None,               # further opts written to the export (e.g. stylegan_weights)
    ):
        if loss not in LOSSES:
            raise ValueError(f"method.loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if n_samples is not None and (n_samples < 1 or chunk_epochs < 1):
            raise ValueError(f"method.n_samples and method.chunk_epochs must be >= 1, got {n_samples}, {chunk_epochs}")
        input_size = min(image_size, generator.size)
        if callable(encoder) and not isinstance(encoder, nn.Module):
            encoder = encoder(n_styles=generator.n_latent, style_dim=generator.style_dim, input_size=input_size)
        if getattr(encoder, "learn_in_w", False) and style_groups:
            raise ValueError("method.style_groups=true gives several w's per image; a learn_in_w encoder "
                             "predicts one: set method.style_groups=false")
        super().__init__(generator, encoder, start_from_latent_avg=start_from_latent_avg, lr=lr, optimizer="adam",
                         l2_lambda=1.0, lpips_lambda=0.0, lpips=lpips, train_noise_mode="const",
                         image_every=image_every, n_mean_latent=n_mean_latent, init_from=init_from,
                         export_opts=export_opts)
        self.save_hyperparameters(ignore=["generator", "encoder", "lpips"], logger=False)
        self.input_size = input_size
        if imagenet_weights is not None and init_from is None:
            encoder.load_trunk(load_torch(imagenet_weights, "ImageNet trunk weights", IMAGENET_HINT),
                               f"ImageNet trunk weights {imagenet_weights}")
        pairs = dict(truncation=truncation, noise_mode="const", batch_size=batch_size, mirror=mirror,
                     style_groups=style_groups)
        self.pairs = GeneratorSampledDataset(generator, STREAM_LENGTH, seed=run_seed(), **pairs)
        self.held_out = GeneratorSampledDataset(generator, val_samples, seed=run_seed(), split=HELD_OUT_SPLIT, **pairs)

    # -- inversion ----------------------------------------------------------------------
    def encode(self, x):
        """Images [B, 3, H, W] -> W+ [B, n_latent, D], resized to the encoder's input size first
        (antialiased bilinear, as the checkpoint loader's Inverter does for real images)."""
        if tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=self.input_size, mode="bilinear", align_corners=False, antialias=True)
        return super().encode(x)

    def regression_loss(self, pred, target):
        if self.hparams.loss == "mse":
            return F.mse_loss(pred, target)
        return log_cosh(pred, target)

    def sample_pairs(self, dataset, indices):
        """Pairs ``indices`` of ``dataset``: encoder inputs [n, 3, s, s] (area-pooled G images) and W+."""
        out = dataset.render(indices)
        size = (self.input_size, self.input_size)
        return fit_to(out["images"].float(), size).to(self.device), out["ws"].float().to(self.device)

    # -- training -----------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        hp = self.hparams
        draw = (self.global_step * self.trainer.world_size + self.global_rank) * hp.batch_size
        indices = pair_indices(draw, hp.batch_size, run_seed(), hp.n_samples, hp.chunk_epochs)
        x, ws = self.sample_pairs(self.pairs, indices)
        pred = self.encode(x)
        loss = self.regression_loss(pred, ws)
        self.log("train/loss", loss, prog_bar=True)
        logs = {"loss_w": loss.detach(), "w_mse": F.mse_loss(pred.detach(), ws)}
        every = hp.image_every
        y_hat = None
        if every and self.global_step % every == 0:
            with torch.no_grad():
                y_hat = self.decode(pred[:4].detach(), size=x.shape[-2:])
        self.log_train(logs, x[:4], x[:4], y_hat)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        return torch.optim.Adam(self.trainable_parameters(), lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)

    # -- validation ---------------------------------------------------------------------
    @torch.no_grad()
    def held_out_errors(self):
        """W+ MSE of the encoder and of the predict-the-mean baseline on the held-out pairs."""
        err = base = 0.0
        n = len(self.held_out)
        for start in range(0, n, self.hparams.batch_size):
            x, ws = self.sample_pairs(self.held_out, list(range(start, min(n, start + self.hparams.batch_size))))
            err += (self.encode(x) - ws).pow(2).mean((1, 2)).sum().item()
            base += (self.latent_avg - ws).pow(2).mean((1, 2)).sum().item()
        return err / max(n, 1), base / max(n, 1)

    def on_validation_epoch_end(self):
        if len(self.held_out) == 0:
            return
        err, base = self.held_out_errors()
        self.log_dict({"val/w_mse": err, "val/w_mse_mean": base, "val/w_ratio": err / base if base else 0.0},
                      sync_dist=True)

    # -- export -------------------------------------------------------------------------
    def official_opts(self):
        """pSp-layout opts plus this recipe's (official train_resnet.py option names where they exist)."""
        hp, enc = self.hparams, self.encoder
        return {**super().official_opts(), "image_size": self.input_size, "loss": hp.loss,
                "model_depth": getattr(enc, "depth", None), "trunk": getattr(enc, "trunk", None),
                "truncation": hp.truncation, "minibatch_size": hp.batch_size}
