"""pSp (Richardson et al. 2021): a GradualStyleEncoder trained into W+ of a frozen StyleGAN2.

Per iteration: codes = E(x) + latent_avg; y_hat = G(codes); minimise
l2·‖y_hat − y‖² + lpips·LPIPS + id·(1 − cos ArcFace) + moco·… + w_norm·Σ‖w − w_avg‖/B
(+ crop variants); Ranger lr 1e-4. Inference-time style mixing (``mix_styles``) gives the
multi-modal outputs of pSp's image-to-image tasks.
"""
import torch

from .encoder import EncoderMethod
from .ranger import make_optimizer


def mix_styles(codes, inject, latent_mask, alpha=None):
    """pSp's latent_mask mixing: rows in ``latent_mask`` come from ``inject`` (or
    alpha·inject + (1 − alpha)·codes). codes, inject: [B, n_latent, D]."""
    codes = codes.clone()
    for i in latent_mask:
        codes[:, i] = inject[:, i] if alpha is None else alpha * inject[:, i] + (1 - alpha) * codes[:, i]
    return codes


class PSP(EncoderMethod):
    def __init__(self, generator, encoder, **kwargs):
        if callable(encoder) and not isinstance(encoder, torch.nn.Module):
            encoder = encoder(n_styles=generator.n_latent)
        super().__init__(generator, encoder, **kwargs)

    def training_step(self, batch, batch_idx):
        x, y, codes, y_hat = self.invert_batch(batch, noise_mode=self.hparams.train_noise_mode)
        loss, logs = self.reconstruction_loss(x, y, y_hat, codes)
        self.log("train/loss", loss, prog_bar=True)
        self.log_train(logs, x, y, y_hat)
        return loss

    @torch.no_grad()
    def sample_multimodal(self, x, n=4, latent_mask=range(8, 18), alpha=None):
        """pSp multi-modal synthesis: fine styles from random w's. -> [n, B, 3, S, S]."""
        codes = self.encode(x)
        mask = [i for i in latent_mask if i < codes.shape[1]]
        outs = []
        for _ in range(n):
            inject = self.generator.broadcast(self.generator.mapping(
                torch.randn(x.shape[0], self.generator.style_dim, device=x.device)))
            outs.append(self.decode(mix_styles(codes, inject, mask, alpha)))
        return torch.stack(outs)

    def configure_optimizers(self):
        return make_optimizer(self.hparams.optimizer, self.trainable_parameters(), self.hparams.lr)
