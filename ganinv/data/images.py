"""Image file I/O: robust loading to [-1, 1] tensors and atomic saving."""

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..checkpoints.safe import atomic_write

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
_WHITE = (255, 255, 255)


def _to_8bit(img, path):
    """Convert any Pillow mode to RGB, warning when information is dropped or invented."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        warnings.warn(f"{path}: converted {mode} to RGB by compositing on white", stacklevel=3)
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        # 16/32-bit integer or float greyscale: Pillow's own convert() clips instead of rescaling.
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            peak = 65535.0
        elif mode == "F":
            peak = 1.0 if arr.max(initial=0) <= 1 else 255.0
        else:
            peak = 255.0 if arr.max(initial=0) <= 255 else 65535.0
        warnings.warn(f"{path}: converted {mode} greyscale (peak {peak:g}) to 8-bit RGB", stacklevel=3)
        grey = np.clip(np.round(arr / peak * 255), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    kind = {"L": "greyscale", "1": "bilevel", "P": "palette", "CMYK": "CMYK"}.get(mode, mode)
    warnings.warn(f"{path}: converted {kind} ({mode}) to RGB", stacklevel=3)
    return img.convert("RGB")


def open_image(path):
    """Open, fully decode and EXIF-orient an image as an 8-bit RGB PIL image.

    Raises FileNotFoundError for a missing file and ValueError (one line naming the file) for an empty,
    corrupt, non-image or oversized (decompression bomb, see ``Image.MAX_IMAGE_PIXELS``) file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ValueError(
            f"{path}: refused as a possible decompression bomb ({e}); raise PIL.Image.MAX_IMAGE_PIXELS "
            f"(now {Image.MAX_IMAGE_PIXELS}) if the file is trusted"
        ) from None
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ValueError(f"{path}: corrupt or truncated image ({e})") from None
    return _to_8bit(img, path)


def to_tensor(img):
    """8-bit RGB PIL image -> [3, H, W] float32 in [-1, 1]."""
    arr = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
    return arr.permute(2, 0, 1).float().div(127.5).sub(1)


def resize_crop(image, size):
    """Center-crop [C, H, W] to the aspect of size (int = square, or (h, w)), then resize with antialiased
    bilinear filtering -> [C, h, w]."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    H, W = image.shape[-2:]
    if H * w > W * h:  # too tall
        ch, cw = round(W * h / w), W
    else:
        ch, cw = H, round(H * w / h)
    top, left = (H - ch) // 2, (W - cw) // 2
    image = image[..., top : top + ch, left : left + cw]
    if (ch, cw) == (h, w):
        return image.contiguous()
    out = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp(-1, 1)


def load_image(path, size=None, mode="RGB"):
    """Load an image file -> [3, H, W] ('RGB') or [1, H, W] ('L') float32 in [-1, 1].

    Non-RGB files (greyscale, RGBA, palette, 16-bit, CMYK) are converted with a warning naming the file;
    transparency is composited on white. EXIF orientation is applied. With size, the image is
    center-cropped to that aspect and resized (see ``resize_crop``).
    """
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    image = to_tensor(open_image(path))
    if mode == "L":
        image = (image * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
    return image if size is None else resize_crop(image, size)


def save_image(image, path):
    """Write [3, H, W] or [1, H, W] in [-1, 1] (clamped) to path atomically; format from the extension."""
    path = Path(path)
    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"save_image expects [3, H, W] or [1, H, W], got {list(image.shape)} for {path}")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}")
    arr = ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr, "L" if arr.shape[2] == 1 else "RGB")
    atomic_write(path, lambda f: pil.save(f, format=fmt))
