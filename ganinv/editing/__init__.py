"""Latent edits on W+ codes [B, n_latent, D]: InterFaceGAN, GANSpace and SeFa, and edit-spec strings;
directions fitted from data and written in the official layouts (CLI: ``python -m ganinv.editing``)."""
from .boundary import FittedBoundary, save_boundary, train_boundary
from .edits import Edit, EditSpec, apply_edit, edit_strip, parse_edit
from .ganspace import GANSPACE_SAMPLES, apply_ganspace, ganspace_pca, load_ganspace_pca, pca_of_w, save_ganspace_pca
from .interfacegan import Direction, apply_direction, load_direction, parse_layers
from .saved import edit_saved
from .sefa import SeFa, apply_sefa, modulation_weight, save_sefa, sefa_directions

__all__ = [
    "Edit", "EditSpec", "apply_edit", "edit_strip", "parse_edit", "edit_saved",
    "GANSPACE_SAMPLES", "apply_ganspace", "ganspace_pca", "load_ganspace_pca", "pca_of_w", "save_ganspace_pca",
    "Direction", "FittedBoundary", "apply_direction", "load_direction", "parse_layers", "save_boundary",
    "train_boundary",
    "SeFa", "apply_sefa", "modulation_weight", "save_sefa", "sefa_directions",
]
