"""IDInvert (Zhu et al. 2020): a domain-guided encoder trained against the generator's own D.

Per iteration, as genforce/idinvert ``training/training_loop_encoder.py`` (TF), G frozen with
constant noise:
  1. E step: ‖x − G(E(x))‖² + 5e-5·‖F(x) − F(G(E(x)))‖² + 0.08·softplus(−D(G(E(x)))),
     F = VGG16 conv4_3.
  2. D step, on G(E(x)) from the just-updated E: softplus(D(fake)) + softplus(−D(x))
     + (γ/2)·E‖∇D(x)‖² (R1 every step).
Adam(0.9, 0.99, 1e-8), lr 1e-4 for both, decayed continuously: lr·``lr_decay``^(it / ``decay_every``)
(TF ``exponential_decay(staircase=False)``, ``decay_step = max_iters / 4``).
The encoder predicts W+ directly (no latent_avg) so the code stays in G's domain; the paired
domain-regularised optimisation lives in ``ganinv.methods.optimization``.
"""
import torch
import torch.nn.functional as F

from ..losses import d_logistic_loss, fp32_region, g_nonsaturating_loss, lazy_r1, vgg_feature_loss
from .base import step_uncounted
from .encoder import EncoderMethod


def decay_interval(decay_every, max_steps):
    """Iterations per ×lr_decay: ``decay_every``, or a quarter of ``max_steps`` (official max_iters // 4)."""
    return decay_every or max(1, max_steps // 4)


def lr_factor(it, lr_decay, every):
    """The lr multiplier at iteration ``it``: lr_decay^(it / every), continuous (TF staircase=False)."""
    return lr_decay ** (it / every)


class IDInvert(EncoderMethod):
    """IDInvert's domain-guided encoder on top of :class:`EncoderMethod`, trained as in the module
    docstring. Each argument is described where it is declared in ``__init__``.
    """

    def __init__(
        self,
        # Networks.
        generator,                      # StyleGAN2 generator, frozen, constant noise
        encoder,                        # IDInvertEncoder: images -> W+ [B, n_latent, D] (no latent_avg), or a
                                        #   callable resolution -> one (given generator.size)
        discriminator,                  # the generator's own D, fine-tuned in step 1
        vgg=None,                       # VGG16Features network (conv4_3) for feature_lambda
        # Optimisers: Adam(0.9, 0.99, 1e-8) for E and for D.
        lr=1e-4,                        # encoder lr (official 1e-4)
        lr_d=1e-4,                      # discriminator lr (official 1e-4)
        # Encoder loss weights.
        mse_lambda=1.0,                 # ‖x − G(E(x))‖² (official 1)
        feature_lambda=5e-5,            # ‖F(x) − F(G(E(x)))‖², F = VGG16 conv4_3 (official 5e-5); > 0 needs vgg
        adv_lambda=0.08,                # softplus(−D(G(E(x)))) (official 0.08)
        r1_gamma=10.0,                  # γ of D's R1 penalty (γ/2)·E‖∇D(x)‖² on reals, every D step (official 10)
        # Learning-rate decay (official: ×0.8 per quarter of training, continuous).
        lr_decay=0.8,                   # factor on both lrs per decay_every iterations, applied continuously
        decay_every=None,               # iterations between decays; None: a quarter of trainer.max_steps
        # Bookkeeping.
        image_every=250,                # train input / reconstruction / target grid every this many steps; 0 never
        n_mean_latent=10000,            # mapped z averaged for EncoderMethod's latent_avg (not added to the codes)
    ):
        if callable(encoder) and not isinstance(encoder, torch.nn.Module):
            encoder = encoder(resolution=generator.size)
        if feature_lambda > 0 and vgg is None:
            raise ValueError("method: feature_lambda > 0 needs a loss.vgg network")
        super().__init__(generator, encoder, start_from_latent_avg=False, lr=lr, optimizer="adam",
                         l2_lambda=mse_lambda, lpips_lambda=0.0, train_noise_mode="const",
                         image_every=image_every, n_mean_latent=n_mean_latent)
        # logger=False: train.py logs the whole resolved config once
        self.save_hyperparameters(ignore=["generator", "encoder", "discriminator", "vgg"], logger=False)
        self.automatic_optimization = False
        self.discriminator = discriminator.train()
        self.vgg = vgg if feature_lambda > 0 else None

    def training_step(self, batch, batch_idx):
        hp = self.hparams
        opt_e, opt_d = self.optimizers()
        x, y = batch["x"], batch["y"]
        size = y.shape[-2:]

        # 1. encoder, against the current D
        self.discriminator.requires_grad_(False)
        codes = self.encode(x)
        y_hat = self.decode(codes, size=size)
        mse = F.mse_loss(y_hat, y)
        adv = g_nonsaturating_loss(self.discriminator(y_hat))
        loss = hp.mse_lambda * mse + hp.adv_lambda * adv
        logs = {"loss_mse": mse.detach(), "loss_adv": adv.detach()}
        if self.vgg is not None:
            feat = vgg_feature_loss(self.vgg, y_hat, y)
            loss = loss + hp.feature_lambda * feat
            logs["loss_feat"] = feat.detach()
        opt_e.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_e.step()  # the one counted step per iteration

        # 2. discriminator (the generator's own D, fine-tuned), on the updated encoder's output
        self.discriminator.requires_grad_(True)
        with torch.no_grad():
            fake = self.decode(self.encode(x), size=size)
        real = y.detach().requires_grad_(True)
        with fp32_region(real):  # R1's double backward stays fp32 under bf16-mixed
            real_logits = self.discriminator(real)
            r1 = lazy_r1(real_logits, real, hp.r1_gamma, interval=1)
        d_loss = d_logistic_loss(real_logits, self.discriminator(fake))
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(d_loss + r1)
        step_uncounted(opt_d)
        for sch in self.lr_schedulers():
            sch.step()
        logs.update(d_loss=d_loss.detach(), d_r1=r1.detach())
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log_train(logs, x, y, y_hat)

    def configure_optimizers(self):
        hp = self.hparams
        every = decay_interval(hp.decay_every, self.trainer.max_steps if self.trainer else 4)
        opt_e = torch.optim.Adam(self.encoder.parameters(), lr=hp.lr, betas=(0.9, 0.99), eps=1e-8)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.lr_d, betas=(0.9, 0.99), eps=1e-8)
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda it: lr_factor(it, hp.lr_decay, every))
                  for o in (opt_e, opt_d)]
        return [opt_e, opt_d], [{"scheduler": s, "interval": "step"} for s in scheds]
