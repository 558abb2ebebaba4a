"""Latent edits on W+ codes [B, n_latent, D]: InterFaceGAN, GANSpace and SeFa, and edit-spec strings."""
from .edits import Edit, EditSpec, apply_edit, edit_strip, parse_edit
from .ganspace import apply_ganspace, ganspace_pca, load_ganspace_pca, pca_of_w
from .interfacegan import (
    Direction,
    FittedBoundary,
    apply_direction,
    load_direction,
    parse_layers,
    train_boundary,
)
from .sefa import SeFa, apply_sefa, modulation_weight, sefa_directions

__all__ = [
    "Edit", "EditSpec", "apply_edit", "edit_strip", "parse_edit",
    "apply_ganspace", "ganspace_pca", "load_ganspace_pca", "pca_of_w",
    "Direction", "FittedBoundary", "apply_direction", "load_direction", "parse_layers", "train_boundary",
    "SeFa", "apply_sefa", "modulation_weight", "sefa_directions",
]
