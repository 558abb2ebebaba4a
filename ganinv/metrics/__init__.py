"""Evaluation metrics: per-image reconstruction (MSE, PSNR, SSIM, LPIPS, ID), FID/KID, e4e's LEC and the
procedural-face editability score."""
from .editability import (
    IDENTITY_FACTORS,
    FactorRegressor,
    editability_score,
    evaluate_regressor,
    load_regressor,
    save_regressor,
    train_factor_regressor,
)
from .fid import INCEPTION_WEIGHTS, DistributionMetrics, inception_weights_path
from .image import compute_image_metrics, id_similarity, lpips_distance, mse, psnr, ssim
from .lec import filter_outliers, latent_editing_consistency, lec_distances, shift_edit

__all__ = [
    "IDENTITY_FACTORS", "FactorRegressor", "editability_score", "evaluate_regressor", "load_regressor",
    "save_regressor", "train_factor_regressor",
    "INCEPTION_WEIGHTS", "DistributionMetrics", "inception_weights_path",
    "compute_image_metrics", "id_similarity", "lpips_distance", "mse", "psnr", "ssim",
    "filter_outliers", "latent_editing_consistency", "lec_distances", "shift_edit",
]
