"""Per-pixel masked image losses (Image2StyleGAN++, Abdal et al. 2020, Sec. 3) and the loss terms
of pbaylies/stylegan-encoder (encoder/perceptual_model.py) that ganinv had no copy of.

Images are [B, 3, H, W] in [-1, 1]; masks are [B or 1, 1, h, w] in [0, 1] (1 = the pixel counts) and
are resized to the images' size. Every masked term compares M ⊙ x with M ⊙ y, as both references do
(Image2StyleGAN++ ``L(w, x, M)``; stylegan-encoder multiplies both images by ``ref_weight``), so a
pixel with M = 0 contributes exactly zero gradient; with M = 1 everywhere each term is its unmasked
version. Every function returns a per-image loss [B].
"""
import torch
import torch.nn.functional as F
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

from .vgg import vgg_feature_loss

# tf.image.ssim_multiscale's power factors (= torchmetrics' default betas), five scales
MSSSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def resize_mask(mask, size):
    """mask [B or 1, 1, h, w] -> [B or 1, 1, *size], bilinear (antialiased when shrinking), in [0, 1]."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [N, 1, H, W] in [0, 1], got {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    shrink = mask.shape[-1] > size[-1]
    return F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False, antialias=shrink).clamp(0, 1)


def apply_mask(img, mask):
    """M ⊙ img with the mask resized to img's size; ``mask=None`` returns img."""
    return img if mask is None else img * resize_mask(mask, img.shape[-2:]).to(img)


def masked_mse(x, y, mask=None):
    """Image2StyleGAN++ L_mse: (1/N)·‖M ⊙ (x − y)‖² per image (N = 3·H·W, the unmasked MSE's divisor)."""
    return (apply_mask(x, mask) - apply_mask(y, mask)).pow(2).mean((1, 2, 3))


def masked_vgg_loss(vgg, x, y, mask=None):
    """Image2StyleGAN++ L_percept: Σ_l mean((F_l(M ⊙ x) − F_l(M ⊙ y))²) over ``vgg``'s layers."""
    return vgg_feature_loss(vgg, apply_mask(x, mask), apply_mask(y, mask), per_image=True)


def logcosh_pixel_loss(x, y, mask=None):
    """stylegan-encoder's pixel loss: mean log cosh of the difference of the [0, 255] images
    (``tf_custom_logcosh_loss`` on ``ref_weight``-masked images); x, y in [-1, 1] are scaled by 127.5.
    log cosh d = |d| + softplus(−2|d|) − log 2, which is exact and does not overflow."""
    d = (apply_mask(x, mask) - apply_mask(y, mask)).mul(127.5).abs()
    return (d + F.softplus(-2 * d) - torch.log(torch.tensor(2.0))).mean((1, 2, 3))


def msssim_loss(x, y, mask=None, betas=MSSSIM_BETAS, kernel_size=11):
    """1 − MS-SSIM(M ⊙ x, M ⊙ y) per image (stylegan-encoder ``1 − tf.image.ssim_multiscale``).

    torchmetrics with ``normalize='relu'`` clips negative per-scale values as TensorFlow does.
    Deviation: the official call passes ``max_val=1`` for [0, 255] images (its C1, C2 are then
    255²/4 times too small); here data_range = 2 for [-1, 1] images. torchmetrics needs images
    at least ``msssim_min_size`` (176 px for the five official scales): fewer betas suit small images.
    """
    score = multiscale_structural_similarity_index_measure(
        apply_mask(x, mask), apply_mask(y, mask), kernel_size=kernel_size, betas=tuple(betas),
        data_range=2.0, reduction="none", normalize="relu")
    return 1 - score


def msssim_min_size(betas=MSSSIM_BETAS, kernel_size=11):
    """Smallest image side torchmetrics' MS-SSIM (σ = 1.5) accepts: side // (scales − 1)² > kernel_size − 1,
    and its coarsest scale must exceed the Gaussian window's reflect padding of 5 px."""
    scales = len(betas)
    return max(kernel_size * max(1, scales - 1) ** 2, 6 * 2 ** (scales - 1), 2 ** scales)


def gram(features):
    """Gram matrices [B, C, C] of features [B, C, H, W], divided by H·W."""
    f = features.flatten(2)
    return f @ f.transpose(1, 2) / f.shape[-1]


def gram_style_loss(vgg, x, style, mask=None):
    """Image2StyleGAN++ L_style: Σ_l mean((Gram(F_l(M ⊙ x)) − Gram(F_l(M ⊙ s)))²) per image, F_l the
    layers of ``vgg``; ``style`` [B or 1, 3, H, W] (its Gram matrices carry no gradient)."""
    fx = vgg(apply_mask(x, mask))
    with torch.no_grad():
        fs = vgg(apply_mask(style.to(x), mask))
    return sum((gram(fx[name]) - gram(fs[name])).pow(2).mean((1, 2)) for name in fx)


def dlatent_l1(ws, w_avg):
    """stylegan-encoder's L1 penalty: 512·mean|w − w̄| over the dlatents, i.e. the mean over layers
    of ‖w_l − w̄‖₁; here per image, with the style dim D in place of 512 (equal for D = 512).
    ws [B, n_latent, D] (or [B, D]), w_avg [D]."""
    return (ws - w_avg).abs().flatten(1).mean(1) * ws.shape[-1]
