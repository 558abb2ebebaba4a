"""Procedural faces: a labelled, infinitely large, download-free face dataset.

Every image is a deterministic function of ``len(FACTORS)`` factors in [0, 1], so a GAN trained on it has
known generative factors (for editing directions, disentanglement and latent-recovery tests) and no
weights or data need to be fetched. Shapes are signed distance fields evaluated per pixel at the requested
size and anti-aliased with a one-pixel linear coverage ramp, so every resolution is rendered natively.

Coordinates: x (columns) and y (rows, pointing down) both span [-1, 1] over the image.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from ganinv.data.images import save_image

FACTORS: tuple[str, ...] = (
    "head_width",  # horizontal head radius
    "head_height",  # vertical head radius
    "skin_hue",  # reddish (0) to yellowish (1) skin
    "skin_light",  # dark (0) to light (1) skin
    "hair_tone",  # black, brown, auburn, light brown, blond
    "hair_amount",  # receding cap (0) to a full, shoulder-long head of hair (1)
    "eye_size",
    "eye_spacing",
    "mouth_curve",  # frown (0), neutral (0.5), smile (1)
    "mouth_width",
    "yaw",  # head turned to the image left (0) or right (1)
    "bg_hue",  # background hue (red through green and blue to purple); the shirt takes the opposite hue
)
SPLITS = ("train", "val", "test")

_MAX_YAW = 0.5  # radians; keeps every facial feature on the visible side of the head
# Natural hair colours from black through brown and auburn to blond.
_HAIR_RAMP = [
    [0.07, 0.05, 0.04], [0.24, 0.14, 0.08], [0.50, 0.20, 0.09], [0.62, 0.44, 0.26], [0.92, 0.80, 0.52]
]
_LIGHT = [v / math.sqrt(0.45**2 + 0.55**2 + 0.70**2) for v in (-0.45, -0.55, 0.70)]


def _hsv_to_rgb(h, s, v):
    """[B] hue and [B] or scalar saturation/value in [0, 1] -> [B, 3] RGB in [0, 1]."""
    k = (h.new_tensor([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6
    s, v = torch.as_tensor(s, device=h.device), torch.as_tensor(v, device=h.device)
    v = v[..., None] if v.dim() else v
    s = s[..., None] if s.dim() else s
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _ramp(t, table):
    """Piecewise-linear colour map: t [B] in [0, 1], table [K, 3] -> [B, 3]."""
    pos = t * (len(table) - 1)
    i = pos.floor().long().clamp(max=len(table) - 2)
    w = (pos - i)[:, None]
    return table[i] * (1 - w) + table[i + 1] * w


def _ellipse(x, y, cx, cy, rx, ry):
    """Approximate signed distance to an axis-aligned ellipse (exact on the boundary, first order near it)."""
    px, py = (x - cx) / rx, (y - cy) / ry
    k0 = torch.sqrt(px**2 + py**2)
    k1 = torch.sqrt((px / rx) ** 2 + (py / ry) ** 2).clamp_min(1e-6)
    return k0 * (k0 - 1) / k1


def _box(x, y, cx, cy, hx, hy):
    qx, qy = (x - cx).abs() - hx, (y - cy).abs() - hy
    return torch.hypot(qx.clamp_min(0), qy.clamp_min(0)) + torch.maximum(qx, qy).clamp_max(0)


def _segments(x, y, a, b):
    """Distance from every pixel to each segment a -> b.

    x, y: [1, 1, S] / [1, S, 1] pixel coordinates; a, b: [B, M, 2] end points -> [B, M, S, S].
    """
    a, ab = a[..., None, None], (b - a)[..., None, None]
    px, py = x[:, None] - a[:, :, 0], y[:, None] - a[:, :, 1]
    h = ((px * ab[:, :, 0] + py * ab[:, :, 1]) / (ab**2).sum(2).clamp_min(1e-9)).clamp(0, 1)
    return torch.hypot(px - ab[:, :, 0] * h, py - ab[:, :, 1] * h)


def _over(img, alpha, color):
    """Composite colour ([B, 3] or [B, 3, S, S]) in place over img [B, 3, S, S] with coverage [B, S, S]."""
    if color.dim() == 2:
        color = color[:, :, None, None]
    return img.lerp_(color.expand_as(img), alpha[:, None].expand_as(img))


def render_batch(factors, size=64):
    """Render faces from factors [B, len(FACTORS)] in [0, 1] -> images [B, 3, size, size] in [-1, 1].

    Runs on the factors' device, so a GPU renders large batches in one go.
    """
    if factors.dim() != 2 or factors.shape[1] != len(FACTORS):
        raise ValueError(f"factors must have shape [B, {len(FACTORS)}], got {list(factors.shape)}")
    if size < 8:
        raise ValueError(f"size must be at least 8, got {size}")
    f = factors.detach().float()
    if f.numel() and (f.min() < 0 or f.max() > 1):
        raise ValueError("factors must lie in [0, 1]")
    b, dev = f.shape[0], f.device
    v = dict(zip(FACTORS, f.unbind(1)))  # name -> [B]
    px = 2.0 / size
    sides = torch.tensor([-1.0, 1.0], device=dev)

    def cover(d, soft=1.0):
        return (0.5 - d / (soft * px)).clamp(0, 1)

    def pix(t):
        """Per-face value [B] or [B, 2] -> broadcastable over pixels ([B, 1, 1] or [B, 2, 1, 1])."""
        return t[..., None, None]

    def const(rgb):
        return torch.tensor(rgb, device=dev).expand(b, 3)

    t = (torch.arange(size, dtype=torch.float32, device=dev) + 0.5) * px - 1
    y, x = t[None, :, None], t[None, None, :]

    # Head geometry. Facial features sit on a sphere of the head's width and turn with the yaw angle.
    rx = 0.46 + 0.18 * v["head_width"]
    ry = 0.60 + 0.16 * v["head_height"]
    cx, cy = 0.0, -0.08
    phi = (2 * v["yaw"] - 1) * _MAX_YAW

    def on_head(u):
        """Image x [B, N] of features at frontal offsets u [B, N] (in head radii) after turning by phi."""
        return cx + rx[:, None] * torch.sin(torch.asin(u.clamp(-0.99, 0.99)) + phi[:, None])

    def squeeze(u):
        """Horizontal foreshortening [B, N] of small features at frontal offsets u [B, N]."""
        return torch.cos(torch.asin(u.clamp(-0.99, 0.99)) + phi[:, None])

    light = v["skin_light"]
    skin = _hsv_to_rgb(0.025 + 0.07 * v["skin_hue"], 0.5 - 0.2 * light, 0.32 + 0.63 * light)
    hair = _ramp(v["hair_tone"], torch.tensor(_HAIR_RAMP, device=dev))
    lip = skin * torch.tensor([0.86, 0.31, 0.34], device=dev)
    # Hue is circular; stopping short of a full turn keeps bg_hue recoverable from the image.
    bg_hue = 0.8 * v["bg_hue"]
    bg = _hsv_to_rgb(bg_hue, 0.3, 0.85)
    shirt = _hsv_to_rgb((bg_hue + 0.5) % 1, 0.5, 0.5)

    # Lambertian shading from the head ellipsoid's normal gives depth instead of flat cartoon fills.
    nx, ny = (x - cx) / pix(rx), (y - cy) / pix(ry)
    nz = (1 - nx**2 - ny**2).clamp_min(0).sqrt()
    norm = torch.sqrt(nx**2 + ny**2 + nz**2).clamp_min(1e-6)
    lam = (nx * _LIGHT[0] + ny * _LIGHT[1] + nz * _LIGHT[2]) / norm
    shade = (0.55 + 0.5 * lam.clamp_min(0))[:, None]

    vignette = ((1 - 0.2 * (x**2 + y**2)) * (1 - 0.08 * (y + 1)))[:, None]
    img = (bg[:, :, None, None] * vignette).expand(b, 3, size, size).contiguous()

    # Long hair behind the head: grows wider and longer with hair_amount, hidden by the head when bald.
    amount = v["hair_amount"]
    back = _ellipse(x, y, cx, cy - 0.02, pix(rx * (1 + 0.16 * amount)), pix(ry * (1 + 0.06 * amount)))
    back = torch.maximum(back, y - pix(cy + ry * (1.5 * amount - 0.4)))
    img = _over(img, cover(back), hair[:, :, None, None] * (0.5 + 0.3 * vignette))

    # Neck and shirt.
    neck_x = pix(cx + 0.3 * rx * torch.sin(phi))
    neck = _box(x, y, neck_x, pix(cy + ry + 0.15), pix(0.42 * rx), 0.35)
    chin_shadow = 1 - 0.45 * torch.exp(-(((y - pix(cy + ry)) / 0.12) ** 2))
    img = _over(img, cover(neck), skin[:, :, None, None] * (0.78 * chin_shadow)[:, None])
    body = torch.maximum(_ellipse(x, y, neck_x, 1.28, 0.95, 0.45), -_ellipse(x, y, neck_x, 0.83, 0.17, 0.1))
    img = _over(img, cover(body), shirt[:, :, None, None] * (1.0 - 0.1 * x)[:, None])

    # Ears sit behind the face centre, so turning the face moves them the other way.
    ear_x = cx + 0.97 * rx[:, None] * sides - (0.3 * rx * torch.sin(phi))[:, None]
    xs, ys = x[:, None], y[:, None]  # pixel grids for [B, 2, S, S] left/right feature pairs
    ears = _ellipse(xs, ys, pix(ear_x), pix(cy + 0.08 * ry)[:, None], 0.09, pix(0.23 * ry)[:, None])
    img = _over(img, cover(ears.amin(1)), skin * 0.8)

    head = _ellipse(x, y, cx, cy, pix(rx), pix(ry))
    img = _over(img, cover(head), skin[:, :, None, None] * shade)

    blush_x = pix(on_head(0.45 * sides.expand(b, 2)))
    blush = torch.exp(
        -(((x[:, None] - blush_x) / pix(0.14 * rx)[:, None]) ** 2)
        - ((y[:, None] - pix(cy + 0.3 * ry)[:, None]) / pix(0.1 * ry)[:, None]) ** 2
    ).sum(1)
    img = _over(img, 0.18 * blush * cover(head), skin * torch.tensor([1.0, 0.45, 0.45], device=dev))

    # Nose: a soft ridge shadow on the side turned away from the viewer, and two nostrils.
    face_x = on_head(torch.zeros(b, 1, device=dev))[:, 0]
    tip_x = cx + 1.18 * rx * torch.sin(phi)
    nose_y = cy + 0.3 * ry
    away = torch.where(phi >= 0, -1.0, 1.0)
    top = torch.stack([face_x + 0.4 * (tip_x - face_x), cy + 0.02 * ry], -1)[:, None]
    bottom = torch.stack([tip_x + away * 0.06 * rx, nose_y], -1)[:, None]
    ridge = _segments(x, y, top, bottom)[:, 0] - 0.012
    img = _over(img, 0.35 * cover(ridge, soft=2.5), skin * 0.55)
    sq0 = torch.cos(phi)
    nostril_x = pix(tip_x[:, None] + (0.06 * rx * sq0)[:, None] * sides)
    nostrils = _ellipse(xs, ys, nostril_x, pix(nose_y + 0.02)[:, None], pix(0.028 * sq0)[:, None], 0.018)
    img = _over(img, 0.8 * cover(nostrils.amin(1), soft=1.5), skin * 0.35)

    # Eyes: lash line, sclera, iris, pupil and a catch light; brows in a darker hair colour above them.
    u = (0.22 + 0.22 * v["eye_spacing"])[:, None] * sides  # [B, 2]
    eye_rx = rx * (0.12 + 0.09 * v["eye_size"])
    eye_ry = eye_rx * 0.62
    eye_y = cy + 0.02 * ry
    ex, sq = pix(on_head(u)), pix(squeeze(u))
    ery, ey = pix(eye_ry)[:, None], pix(eye_y)[:, None]
    sclera = _ellipse(xs, ys, ex, ey, pix(eye_rx)[:, None] * sq, ery)
    img = _over(img, cover(sclera.abs().amin(1) - 0.35 * px), skin * 0.3)
    img = _over(img, cover(sclera.amin(1)), const([0.93, 0.93, 0.9]))
    iris_x = ex + pix(0.25 * eye_rx * torch.sin(phi))[:, None]
    iris = torch.maximum(_ellipse(xs, ys, iris_x, ey, 0.62 * ery * sq, 0.62 * ery), sclera)
    img = _over(img, cover(iris.amin(1)), const([0.28, 0.18, 0.10]))
    pupil = _ellipse(xs, ys, iris_x, ey, 0.3 * ery * sq, 0.3 * ery)
    img = _over(img, cover(pupil.amin(1)), const([0.0, 0.0, 0.0]))
    glint = _ellipse(xs, ys, iris_x - 0.25 * ery, ey - 0.25 * ery, 0.1 * ery, 0.1 * ery)
    img = _over(img, 0.8 * cover(glint.amin(1)), const([1.0, 1.0, 1.0]))

    # Brows: three points per brow, arching higher towards the nose.
    brow_span = torch.tensor([-1.0, 0.0, 1.0], device=dev) * (0.9 * eye_rx / rx)[:, None, None]
    brow_u = (u[:, :, None] + brow_span).flatten(1)
    lift = torch.tensor([0.6, 1.0, 0.3, 0.3, 1.0, 0.6], device=dev)
    brow = torch.stack([on_head(brow_u), (eye_y - eye_ry - 0.06)[:, None] - 0.045 * lift], -1)
    ends = torch.tensor([0, 1, 3, 4], device=dev)
    brows = _segments(x, y, brow[:, ends], brow[:, ends + 1]).amin(1) - 0.022
    img = _over(img, cover(brows), hair * 0.6)

    # Mouth: a parabola whose curvature is the smile, thicker in the middle like lips.
    s = torch.linspace(-1, 1, 7, device=dev)
    mouth_u = s * (0.16 + 0.26 * v["mouth_width"])[:, None]
    curve = ((2 * v["mouth_curve"] - 1) * 0.11 * ry)[:, None]
    mouth = torch.stack([on_head(mouth_u), (cy + 0.58 * ry)[:, None] + curve * (0.5 - s**2)], -1)
    dist = _segments(x, y, mouth[:, :-1], mouth[:, 1:])
    mid = (s[1:] + s[:-1]) / 2
    half = pix(0.018 + 0.016 * (1 - mid**2))
    img = _over(img, cover((dist - half).amin(1)), lip)
    img = _over(img, cover((dist - 0.35 * half).amin(1), soft=1.2), skin * 0.25)

    # Hair on top of the head; the hairline, in frontal coordinates on the head sphere, curves down at the
    # sides and drops with hair_amount.
    du = torch.sin(torch.asin(((x - cx) / pix(rx)).clamp(-1, 1)) - pix(phi))
    hairline = pix(cy - ry * (0.85 - 0.55 * amount)) + pix(ry * (0.4 + 1.6 * amount)) * du**8
    cap = _ellipse(x, y, cx, pix(cy - 0.04 * ry), pix(1.07 * rx), pix(1.06 * ry))
    front = torch.maximum(cap, y - hairline)
    strands = 1 + 0.08 * torch.sin(40 * torch.atan2(y - cy - 0.3, x - pix(face_x)))
    img = _over(img, cover(front), hair[:, :, None, None] * shade * strands[:, None])

    return (img * 2 - 1).clamp(-1, 1).contiguous()


def render_face(params, size=64):
    """Render one face -> [3, size, size] in [-1, 1].

    params: a tensor [len(FACTORS)] in [0, 1], or a dict from factor name to value; factors missing from
    the dict default to 0.5 (the average face).
    """
    if isinstance(params, Mapping):
        unknown = sorted(set(params) - set(FACTORS))
        if unknown:
            raise ValueError(f"unknown face factors {unknown}; known: {list(FACTORS)}")
        params = torch.tensor([float(params.get(name, 0.5)) for name in FACTORS])
    return render_batch(torch.as_tensor(params, dtype=torch.float32).reshape(1, -1), size)[0]


class ProceduralFaces(Dataset):
    """Labelled procedural faces; item i -> (image [3, size, size] in [-1, 1], factors [F] in [0, 1]).

    Factors are drawn uniformly from a generator seeded by (seed, split, i), so items are reproducible
    without storing anything and the train/val/test streams never share a seed.
    """

    factor_names = FACTORS

    def __init__(self, length: int = 10000, size: int = 64, seed: int = 0, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if length < 0:
            raise ValueError(f"length must be non-negative, got {length}")
        self.length, self.size, self.seed, self.split = length, size, seed, split

    def __len__(self):
        return self.length

    def factors(self, index):
        """Factors [F] float32 of item index."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for ProceduralFaces of length {self.length}")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index])
        return torch.from_numpy(rng.random(len(FACTORS))).float()

    def __getitem__(self, index):
        factors = self.factors(index)
        return render_batch(factors[None], self.size)[0], factors

    def __getitems__(self, indices):
        """Batched fetch used by DataLoader: one vectorised render for the whole batch."""
        factors = torch.stack([self.factors(i) for i in indices])
        return list(zip(render_batch(factors, self.size).unbind(0), factors.unbind(0)))


def _grid(images, nrow):
    """[N, 3, H, W] -> [3, rows * H, nrow * W]."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    pad = images.new_full((rows * nrow - n, c, h, w), -1.0)
    images = torch.cat([images, pad]).reshape(rows, nrow, c, h, w)
    return images.permute(2, 0, 3, 1, 4).reshape(c, rows * h, nrow * w)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write procedural faces: a grid PNG and/or one PNG per face.")
    parser.add_argument("--grid", help="output PNG path of a grid")
    parser.add_argument("--folder", help="output folder of face_<i>.png (an input folder for invert.py)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="train", help="train | val | test: the dataset's disjoint seed streams")
    args = parser.parse_args(argv)
    if not (args.grid or args.folder):
        parser.error("give --grid PATH and/or --folder DIR")
    data = ProceduralFaces(args.n, args.size, args.seed, split=args.split)
    faces = [data[i][0] for i in range(args.n)]
    if args.grid:
        save_image(_grid(torch.stack(faces), int(math.sqrt(args.n))), args.grid)
    for i, face in enumerate(faces if args.folder else []):
        save_image(face, f"{args.folder}/face_{i:03d}.png")


if __name__ == "__main__":
    main()
