"""Non-saturating logistic GAN losses and the R1 penalty (StyleGAN2; used by e4e and IDInvert).

Logits are raw D outputs of any shape with the batch first ([B, 1] for the image and the
latent discriminator). Inputs to R1 may be images [B, 3, H, W] or latent codes [B, 512].
IDInvert's ``softplus(x, threshold=10000)`` is the same function as the default softplus
(they differ only where log1p(exp(x)) = x in float32), so no separate helper is needed.
"""
import torch
import torch.nn.functional as F


def g_nonsaturating_loss(fake_logits):
    """Generator / encoder side: mean softplus(−D(fake)) = −mean log σ(D(fake))."""
    return F.softplus(-fake_logits).mean()


def d_logistic_terms(real_logits, fake_logits):
    """The two discriminator terms (mean softplus(−D(real)), mean softplus(D(fake))), which
    e4e's coach logs as ``d_real_loss`` and ``d_fake_loss``."""
    return F.softplus(-real_logits).mean(), F.softplus(fake_logits).mean()


def d_logistic_loss(real_logits, fake_logits):
    """Discriminator side: mean softplus(−D(real)) + mean softplus(D(fake))."""
    real, fake = d_logistic_terms(real_logits, fake_logits)
    return real + fake


def r1_penalty(real_logits, real_inputs):
    """R1 (Mescheder et al. 2018): mean_b ‖∇_x D(x_b)‖², the gradient of Σ D(real) with respect
    to ``real_inputs`` (which must require grad and produce ``real_logits``). The graph is kept
    so the penalty can be backpropagated into D."""
    if not real_inputs.requires_grad:
        raise ValueError("r1_penalty: real_inputs must require grad (set requires_grad before running D)")
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.pow(2).reshape(grad.shape[0], -1).sum(1).mean()


def fp32_region(tensor):
    """A context that turns autocast off on ``tensor``'s device: the D forward whose R1 penalty is
    taken runs fp32 under ``trainer.precision=bf16-mixed`` too (R1 differentiates the gradient of D;
    bf16's 8-bit mantissa in that double backward is the precision loss issue 20 keeps out)."""
    return torch.autocast(tensor.device.type, enabled=False)


def lazy_r1(real_logits, real_inputs, gamma=10.0, interval=16):
    """Lazy R1 loss to backpropagate every ``interval`` D steps: γ/2 · R1 · interval.

    rosinality / StyleGAN2 use γ = 10, interval = 16 (``d_reg_every``); e4e's latent D the same.
    For R1 on every step (IDInvert) use interval=1. The zero-weighted logit term keeps D's last
    layer in the graph (R1 does not depend on its bias), which DistributedDataParallel requires.
    """
    r1 = r1_penalty(real_logits, real_inputs)
    return gamma / 2 * r1 * interval + 0 * real_logits.reshape(-1)[0]
