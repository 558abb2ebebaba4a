"""ReStyle (Alaluf et al. 2021): a pSp or e4e encoder that refines its own inversion in passes.

Official yuval-alaluf/restyle-encoder at 5e80276: models/psp.py and models/e4e.py ``forward``,
training/coach_restyle_psp.py and coach_restyle_e4e.py, utils/inference_utils.py ``run_on_batch``,
scripts/encoder_bootstrapping_inference.py.

Pass t = 1..N (N = ``n_iters_per_batch``, official 5), x the encoder input [B, 3, h, w]:
  input_t = cat[x, ŷ_{t-1}] (6 channels); ŷ_0 = G(latent_avg) with constant noise, pooled to
  x's size (cars: cropped), w_0 = latent_avg (always: the official forward adds it on the first
  pass whatever ``start_from_latent_avg`` says, so it must be true here);
  w_t = w_{t-1} + E(input_t); ŷ_t = pool(G(w_t)).
Training (``perform_train_iteration_on_batch``): ``zero_grad`` once; at every pass the loss of
(ŷ_t, w_t) is back-propagated at once, with ŷ_{t-1} and w_{t-1} detached (no gradient flows
between passes; one pass's graph is alive at a time); then one optimizer step on the gradients
summed over the passes. Losses: pSp's ``calc_loss`` at every pass (ReStyle-pSp); e4e's
adversarial + delta + pSp terms at every pass (ReStyle-e4e), whose latent D steps once per
iteration before the passes, with fakes E(cat[x, ŷ_0]) -- the first pass's raw encoder output,
without latent_avg, as the official ``sample_real_and_fake_latents`` (e4e's own coach adds it).
Logged losses are the last pass's (the official ``loss_dict``).
Deliberate deviations: ŷ_{t-1} is detached without the official ``requires_grad_(True)`` (it
only makes autograd compute an input gradient nothing reads); validation decodes with constant
noise as every ganinv encoder method (the official ``validate`` keeps random noise); ŷ_0 is
computed from the current generator at every use (the official keeps the one of the first
iteration; they differ only with ``train_decoder``).
"""
import functools
from dataclasses import dataclass

import torch

from .e4e import E4E
from .psp import PSP


@dataclass
class RestylePass:
    """One pass's output: W+ codes [B, n_latent, D] and the image decoded from them [B, 3, H, W]."""

    codes: torch.Tensor
    image: torch.Tensor


def refine(encoder, x, y_hat, codes):
    """One ReStyle pass: ``codes + E(cat[x, y_hat])``. x [B, C, h, w] and y_hat [B, 3, h, w] in
    [-1, 1]; codes [B or 1, n_latent, D] (w_{t-1}) -> [B, n_latent, D]."""
    return codes + encoder(torch.cat([x, y_hat], dim=1))


class ReStyle:
    """Mixin placed before :class:`PSP` / :class:`E4E`: the passes, the per-pass training update
    and the ReStyle export (``n_iters_per_batch`` in ``opts``, which :func:`load_inverter` reads)."""

    def __init__(self, generator, encoder, n_iters_per_batch=5, **kwargs):
        super().__init__(generator, encoder, **kwargs)
        # logger=False: train.py logs the whole resolved config once
        self.save_hyperparameters(ignore=["generator", "encoder", "lpips", "z_sampler"], logger=False)
        self.automatic_optimization = False
        if n_iters_per_batch < 1:
            raise ValueError(f"method.n_iters_per_batch must be >= 1, got {n_iters_per_batch}")
        if not self.hparams.start_from_latent_avg:
            raise ValueError("method.start_from_latent_avg: ReStyle's first pass always starts from latent_avg "
                             "(official models/psp.py forward); it must be true")

    @torch.no_grad()
    def avg_image(self, size):
        """ŷ_0 = G(latent_avg), constant noise, at the encoder-input size: [1, 3, *size]."""
        return self.decode(self.latent_avg[None], noise_mode="const", size=size)

    def iterate(self, x, n_iters=None, noise_mode="const"):
        """Yield a :class:`RestylePass` per pass (images at x's size), pass t's inputs detached
        from pass t-1 as the official training loop does. x: [B, 3, h, w] in [-1, 1]."""
        y_hat = self.avg_image(x.shape[-2:]).expand(x.shape[0], -1, -1, -1)
        codes = self.latent_avg
        for _ in range(n_iters or self.hparams.n_iters_per_batch):
            codes = refine(self.encoder, x, y_hat.detach(), codes.detach())
            y_hat = self.decode(codes, noise_mode=noise_mode, size=x.shape[-2:])
            yield RestylePass(codes, y_hat)

    def passes(self, x, n_iters=None, noise_mode="const"):
        """Every pass's output (official ``run_on_batch``): a list of ``n_iters`` RestylePass."""
        return list(self.iterate(x, n_iters, noise_mode))

    def encode(self, x):
        """x [B, 3, h, w] -> the last pass's W+ codes [B, n_latent, D]."""
        return self.passes(x)[-1].codes

    def forward(self, x):
        return self.passes(x)[-1].image

    def invert_batch(self, batch, noise_mode):
        last = self.passes(batch["x"], noise_mode=noise_mode)[-1]
        return batch["x"], batch["y"], last.codes, last.image

    def encoder_step(self, batch, opt_e, loss_fn):
        """The official iteration: zero_grad, per pass ``loss_fn(x, y, ŷ_t, w_t)`` and backward,
        one optimizer step -> (last ŷ, last loss)."""
        x, y = batch["x"], batch["y"]
        opt_e.zero_grad(set_to_none=True)
        for step in self.iterate(x, noise_mode=self.hparams.train_noise_mode):
            loss, _ = loss_fn(x, y, step.image, step.codes)
            self.manual_backward(loss)
        opt_e.step()
        return step.image, loss

    def official_opts(self):
        return {**super().official_opts(), "n_iters_per_batch": self.hparams.n_iters_per_batch}


class ReStylePSP(ReStyle, PSP):
    """ReStyle over pSp (``coach_restyle_psp.py``): pSp's losses at every pass, Ranger 1e-4."""

    def training_step(self, batch, batch_idx):
        logs = {}
        loss_fn = functools.partial(self.reconstruction_loss, logs=logs)
        y_hat, loss = self.encoder_step(batch, self.optimizers(), loss_fn)
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log_train(logs, batch["x"], batch["y"], y_hat)


class ReStyleE4E(ReStyle, E4E):
    """ReStyle over e4e (``coach_restyle_e4e.py``): E4E's iteration (latent D step, progressive
    stage, adversarial + delta + pSp terms) with the encoder update run as ReStyle passes."""

    def fake_codes(self, x):
        """The latent D's fakes: the enabled rows of E(cat[x, ŷ_0]), no latent_avg (official)."""
        y0 = self.avg_image(x.shape[-2:]).expand(x.shape[0], -1, -1, -1)
        return self.encoder(torch.cat([x, y0], dim=1))[:, self.enabled_rows()]


@torch.no_grad()
def bootstrap_passes(first, second, x, n_iters=None):
    """Encoder bootstrapping (official ``scripts/encoder_bootstrapping_inference.py``).

    ``first`` and ``second`` are :class:`~ganinv.checkpoints.inverter.Inverter` s. ``first``
    inverts x in one pass (a ReStyle model: one pass from its average image; pSp/e4e: its
    encoder), giving w_0 and ŷ_0 = first's G(w_0); then ``second`` (a ReStyle model, e.g. a
    toonified one) runs ``n_iters`` passes from them (default: its ``n_iters_per_batch``):
    w_t = w_{t-1} + E2(cat[x, fit(ŷ_{t-1})]), ŷ_t = second's G(w_t), constant noise.
    x: images [B, 3, h, w] in [-1, 1]. Returns the 1 + n_iters RestylePass (images at the
    generators' full resolution, the official ``resize_outputs=False``).
    """
    if not second.restyle:
        raise ValueError("bootstrapping: the second model must be a ReStyle checkpoint")
    if first.n_styles != second.n_styles:
        raise ValueError(f"bootstrapping: the first model gives {first.n_styles} styles, the second "
                         f"takes {second.n_styles}")
    codes = first.encode(x, n_iters=1) if first.restyle else first.encode(x)
    out = [RestylePass(codes, first.decode(codes))]
    x2 = second.prepare(x)
    for _ in range(n_iters or second.n_iters):
        codes = refine(second.encoder, x2, second.fit(out[-1].image), codes)
        out.append(RestylePass(codes, second.decode(codes)))
    return out
