"""Mask files for masked inversion (inpainting, crossover, face masks): any image file at any size."""
import warnings

from .images import load_image


def load_mask(path, size):
    """Read a mask image -> [1, 1, size, size] float32 in [0, 1] (white = 1 = the pixel counts).

    Colour or greyscale files are reduced to luma; the mask is centre-cropped to a square and resized
    (antialiased bilinear) exactly as ``load_image(path, size)`` treats the image it belongs to.
    A missing file raises FileNotFoundError, an unreadable one a one-line ValueError naming it.
    """
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"load_mask: size must be a positive int, got {size!r}")
    with warnings.catch_warnings():
        # greyscale / palette / RGBA masks are the normal case here: no conversion warning
        warnings.filterwarnings("ignore", message=".*converted .* to (8-bit )?RGB", category=UserWarning)
        luma = load_image(path, size, mode="L")
    return luma.add(1).div(2).clamp(0, 1)[None]
