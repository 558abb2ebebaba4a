"""Datasets: procedural faces, image folders, generator samples, and pSp paired-input tasks."""

from ganinv.data.folder import (
    ImageDataModule,
    ImageFolder,
    PairedDataset,
    ProceduralDataModule,
    split_indices,
)
from ganinv.data.images import IMAGE_EXTENSIONS, load_image, open_image, resize_crop, save_image
from ganinv.data.procedural import FACTORS, ProceduralFaces, render_batch, render_face
from ganinv.data.sampled import GeneratorSampledDataset
from ganinv.data.tasks import EdgeSketch, Grayscale, Inpainting, OneHotLabels, SuperResolution

__all__ = [
    "FACTORS",
    "IMAGE_EXTENSIONS",
    "EdgeSketch",
    "GeneratorSampledDataset",
    "Grayscale",
    "ImageDataModule",
    "ImageFolder",
    "Inpainting",
    "OneHotLabels",
    "PairedDataset",
    "ProceduralDataModule",
    "ProceduralFaces",
    "SuperResolution",
    "load_image",
    "open_image",
    "render_batch",
    "render_face",
    "resize_crop",
    "save_image",
    "split_indices",
]
