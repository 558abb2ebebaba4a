"""Losses and regularisers for encoder training and optimisation inversion."""
from .adversarial import d_logistic_loss, d_logistic_terms, fp32_region, g_nonsaturating_loss, lazy_r1, r1_penalty
from .id_loss import IDLoss
from .lpips import LPIPSLoss
from .masked import (
    apply_mask,
    dlatent_l1,
    gram_style_loss,
    logcosh_pixel_loss,
    masked_mse,
    masked_vgg_loss,
    msssim_loss,
    resize_mask,
)
from .moco import MocoLoss
from .regularizers import delta_losses, delta_regularization, noise_normalize_, noise_regularize, w_norm
from .vgg import VGG16_LAYERS, VGG16Features, vgg_feature_loss
from .weights import require_file, torchvision_weights_file

__all__ = [
    "IDLoss", "LPIPSLoss", "MocoLoss", "VGG16Features", "VGG16_LAYERS", "vgg_feature_loss",
    "w_norm", "delta_losses", "delta_regularization", "noise_regularize", "noise_normalize_",
    "g_nonsaturating_loss", "d_logistic_loss", "d_logistic_terms", "r1_penalty", "lazy_r1", "fp32_region",
    "require_file", "torchvision_weights_file",
    "apply_mask", "resize_mask", "masked_mse", "masked_vgg_loss", "gram_style_loss", "logcosh_pixel_loss",
    "msssim_loss", "dlatent_l1",
]
