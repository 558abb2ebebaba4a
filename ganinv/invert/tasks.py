"""invert.py's Image2StyleGAN++ tasks and stylegan-encoder extras around the optimisation.

Abdal et al. 2020, "Image2StyleGAN++" (no official code; :mod:`ganinv.methods.image2stylegan_pp`) and
pbaylies/stylegan-encoder ``encode_images.py`` (``--face_mask`` / ``--mask_dir``):

- ``mask``: a PNG for every image or a folder of ``<key>.png`` (white = the pixel counts), read by
  :func:`ganinv.data.masks.load_mask` at the input size, stacked [n, 1, S, S], passed as ``mask=``;
- ``inpaint``: the mask marks the hole (white = missing): ``mask = 1 − hole`` is fitted and
  ``composites/<key>.png`` = the known input pixels outside the hole, G's inside (as ``inpaint``);
- ``crossover``: an image or a folder of ``<key>`` images (loaded like the inputs) fitted outside the
  mask (``targets2=``); needs ``inversion=image2stylegan_pp_edit`` and ``mask=``;
- ``style`` (+ ``style_lambda``, ``style_mask``): one style image [1, 3, S, S] for the Gram term;
- ``blend`` ``{with: KEY, mask: PNG, layer: K}``: after the run, ``blend/<key>.png`` =
  ``feature_blend(G, w_key, w_KEY, mask, K)`` for every finished image;
- a discriminator for ``inversion.discriminator_lambda > 0`` (stylegan-encoder's D term): the
  generator file's D (:func:`ganinv.checkpoints.load_discriminator`, as conf/discriminator/*.yaml).
"""
from pathlib import Path

import torch

from ..checkpoints import load_discriminator
from ..checkpoints.safe import load_torch
from ..data.images import IMAGE_EXTENSIONS, load_image
from ..data.masks import load_mask
from ..methods.image2stylegan_pp import feature_blend
from ..methods.targets import fit_to

EDIT_TARGET = "Image2StyleGANpp"


def check_tasks(cfg):
    """One line naming the key for a bad task setting (called by settings.check_config)."""
    for key in ("mask", "crossover", "style", "style_mask"):
        value = cfg.get(key)
        if value is not None and not Path(str(value)).exists():
            raise FileNotFoundError(f"{key}={value}: no such file or folder")
    if not isinstance(cfg.get("inpaint", False), bool):
        raise ValueError(f"inpaint={cfg.inpaint}: expected true or false")
    if cfg.get("inpaint") and cfg.get("mask") is None:
        raise ValueError("inpaint=true needs mask=PNG_OR_FOLDER (white = the hole)")
    edit = str(cfg.inversion.get("_target_", "")).endswith(EDIT_TARGET)
    for key in ("crossover", "style"):
        if cfg.get(key) is not None and (str(cfg.method) != "optimize" or not edit):
            raise ValueError(f"{key}= needs method=optimize inversion=image2stylegan_pp_edit")
    if cfg.get("crossover") is not None and cfg.get("mask") is None:
        raise ValueError("crossover= needs mask=PNG_OR_FOLDER (white = take the input, black = the crossover image)")
    lam = cfg.get("style_lambda")
    if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0):
        raise ValueError(f"style_lambda={lam}: expected a number >= 0")
    if cfg.get("style") is not None and not (lam if lam is not None else cfg.inversion.get("style_lambda")):
        raise ValueError("style= needs style_lambda > 0 (the Gram term's weight; inversion.style_lambda is 0)")
    blend = cfg.get("blend")
    if blend is not None:
        if not hasattr(blend, "keys") or set(blend.keys()) != {"with", "mask", "layer"}:
            raise ValueError(f"blend={blend}: expected {{with: KEY, mask: PNG, layer: K}}")
        if not Path(str(blend.mask)).is_file():
            raise FileNotFoundError(f"blend.mask={blend.mask}: no such file")
        if isinstance(blend.layer, bool) or not isinstance(blend.layer, int) or blend.layer < 0:
            raise ValueError(f"blend.layer={blend.layer}: expected an integer >= 0")


def per_key(path, key, what):
    """``path`` itself when it is a file, else the image ``<path>/<key>.<ext>`` (one line if none)."""
    path = Path(str(path))
    if path.is_file():
        return path
    for ext in what:
        if (path / f"{key}{ext}").is_file():
            return path / f"{key}{ext}"
    raise FileNotFoundError(f"{path}: no {key}{'/'.join(what)} for the image {key}")


class Tasks:
    """The extra keyword arguments of one batch's optimisation module, and the extra outputs."""

    def __init__(self, cfg, size):
        self.cfg, self.size = cfg, size
        self.inpaint = bool(cfg.get("inpaint"))

    def masks(self, keys):
        """mask= for keys [n] -> [n, 1, S, S] in [0, 1] (1 − hole for inpaint), or None."""
        if self.cfg.get("mask") is None:
            return None
        mask = torch.cat([load_mask(per_key(self.cfg.mask, k, [".png"]), self.size) for k in keys])
        return 1 - mask if self.inpaint else mask

    def kwargs(self, keys, x):
        """{mask, targets2, style, style_lambda, style_mask} as set, for the optimisation of x [n, 3, S, S]."""
        cfg, out = self.cfg, {}
        mask = self.masks(keys)
        if mask is not None:
            out["mask"] = mask
        if cfg.get("crossover") is not None:
            exts = sorted(IMAGE_EXTENSIONS)
            out["targets2"] = torch.stack([load_image(per_key(cfg.crossover, k, exts), self.size) for k in keys])
        if cfg.get("style") is not None:
            out["style"] = load_image(cfg.style, self.size)[None]
            if cfg.get("style_lambda") is not None:
                out["style_lambda"] = float(cfg.style_lambda)
        if cfg.get("style_mask") is not None:
            out["style_mask"] = load_mask(cfg.style_mask, self.size)
        return out

    def composites(self, x, images, mask):
        """inpaint: known pixels of x [n, 3, S, S] where mask (= 1 − hole) is 1, G's images elsewhere."""
        return mask * x + (1 - mask) * fit_to(images, x.shape[-2:])

    def extra_files(self):
        return [("composites", ".png")] if self.inpaint else []


def discriminator_for(cfg, preset, generator_cfg, device):
    """The frozen D of the generator file for preset.discriminator_lambda > 0 (None otherwise, or when
    the preset names its own ``discriminator``)."""
    if not preset.get("discriminator_lambda") or preset.get("discriminator") is not None:
        return None
    path = generator_cfg.get("path")
    if path is None:
        raise ValueError("inversion.discriminator_lambda > 0 needs a generator file with a discriminator "
                         "(generator=checkpoint generator.path=... or the embedded one), or inversion.discriminator")
    return load_discriminator(str(path), device=device).requires_grad_(False).eval()


@torch.no_grad()
def write_blends(cfg, generator, outputs, keys, device):
    """blend: ``blend/<key>.png`` for every key with a latents file -> the number written."""
    spec = cfg.blend
    other = outputs.path("latents", spec["with"], ".pt")
    if not other.is_file():
        raise ValueError(f"blend.with={spec['with']}: no latents/{spec['with']}.pt in {outputs.root} "
                         "(not the key of an inverted image)")
    ws_b = load_torch(other).float()[None].to(device)
    mask = load_mask(str(spec.mask), generator.size).to(device)
    generator.to(device)
    done = 0
    for key in keys:
        path = outputs.path("latents", key, ".pt")
        if not path.is_file():
            continue
        image = feature_blend(generator, load_torch(path).float()[None].to(device), ws_b, mask, int(spec.layer))
        outputs.write_picture("blend", key, image[0].float().cpu())
        done += 1
    return done
