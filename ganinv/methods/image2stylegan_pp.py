"""Image2StyleGAN++ (Abdal, Qin, Wonka 2020, "Image2StyleGAN++: How to Edit the Embedded Images?")
local editing on top of its W+ (+ noise, ``noise_steps``) embedding in ``OptimizationInversion``.

Images [N, 3, H, W] in [-1, 1]; masks [N or 1, 1, h, w] in [0, 1] at any size (``data.masks.load_mask``
reads PNGs), resized to where they are used. The paper publishes no code; what follows is its
Sec. 4–5 recipe with our choices named:

- inpainting: masked embedding of the known region only (``mask`` = 1 − hole), the hole is whatever
  G makes of the fitted code; ``composite`` also pastes the known pixels back;
- crossover: one code fitting x1 inside M and x2 inside 1 − M (masked MSE / VGG of both regions);
- local style transfer: content (masked MSE / VGG) inside M, Gram-matrix style loss of VGG features
  of a style image inside ``style_mask`` (default 1 − M);
- activation-tensor blending (``feature_blend``): synthesise A, and at layer K replace the masked
  region of A's generator state by B's, then continue with A's styles. StyleGAN2's state at layer
  K is the feature map and the RGB skip accumulated so far; both are blended (the paper's StyleGAN
  has no skips: our addition so that an all-one mask carries B's whole state).
"""
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ..losses.masked import gram_style_loss, resize_mask
from .optimization import OptimizationInversion
from .targets import fit_to


class Image2StyleGANpp(OptimizationInversion):
    """``OptimizationInversion`` with a second target (crossover) and a local style term.

    targets2: [N, 3, H, W] fitted inside 1 − ``mask`` while ``targets`` are fitted inside ``mask``.
    style: [N or 1, 3, h, w] style image(s), resized to the targets; style_lambda·Σ_l mean((Gram(F_l(
      S ⊙ G(w))) − Gram(F_l(S ⊙ style)))²) with S = ``style_mask`` (default 1 − mask, or all ones)
      and F_l the layers of ``style_vgg`` (default ``vgg``). Not in the noise phase.
    Every other keyword is ``OptimizationInversion``'s.
    """

    NOT_HPARAMS = OptimizationInversion.NOT_HPARAMS + ("targets2", "style", "style_mask", "style_vgg")

    def __init__(self, generator, targets, targets2=None, style=None, style_lambda=0.0, style_mask=None,
                 style_vgg=None, **kwargs):
        super().__init__(generator, targets, **kwargs)
        if targets2 is not None and (self.mask is None or tuple(targets2.shape) != tuple(self.targets.shape)):
            raise ValueError(f"targets2 needs a mask and the targets' shape {tuple(self.targets.shape)}, got "
                             f"{tuple(targets2.shape)}{'' if self.mask is not None else ' without a mask'}")
        self.register_buffer("targets2", None if targets2 is None else targets2.detach().float().clone())
        self.style_vgg = style_vgg if style_vgg is not None else self.vgg
        if style_lambda and (style is None or self.style_vgg is None):
            raise ValueError("style_lambda > 0 needs a style image and a style_vgg (or vgg) network")
        if style is not None and (style.ndim != 4 or style.shape[1] != 3 or style.shape[0] not in (1, self.num_images)):
            raise ValueError(f"style must be images [N or 1, 3, H, W], got {tuple(style.shape)}")
        if style is not None and style.shape[-2:] != self.targets.shape[-2:]:
            style = F.interpolate(style.float(), size=tuple(self.targets.shape[-2:]), mode="bilinear",
                                  align_corners=False, antialias=True)
        self.register_buffer("style", None if style is None else style.detach().float().clone())
        if style_mask is not None:
            style_mask = self.check_mask(style_mask, "style_mask")
        elif self.mask is not None:
            style_mask = 1 - self.mask
        self.register_buffer("style_mask", style_mask)

    def regions(self, rows):
        if self.targets2 is None:
            return super().regions(rows)
        mask = self.rows_of(self.mask, rows)
        return [(self.targets[rows], mask), (self.targets2[rows], 1 - mask)]

    def image_losses(self, rows, img, ws, noise_phase):
        loss, lp = super().image_losses(rows, img, ws, noise_phase)
        if noise_phase or not self.hparams.style_lambda:
            return loss, lp
        rec = self.features(fit_to(img, self.targets.shape[-2:]))
        mask = None if self.style_mask is None else self.rows_of(self.style_mask, rows)
        style = self.features(self.rows_of(self.style, rows))
        return loss + self.hparams.style_lambda * gram_style_loss(self.style_vgg, rec, style, mask), lp


def run(module, trainer=None):
    """Fit ``module`` (a default single-device trainer without logging when none is given) -> its result
    (``OptimizationInversion.reconstruct``: latents, images, noises, curves, frozen_at, keys)."""
    if trainer is None:
        trainer = pl.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False,
                             enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    return module.result


def inpaint(generator, image, hole, trainer=None, **opts):
    """Fill ``hole`` ([N or 1, 1, h, w], 1 = missing) of ``image`` [N, 3, H, W]: fit the known pixels only.
    The result adds ``composite`` [N, 3, H, W]: the known pixels of ``image``, G's inside the hole."""
    module = Image2StyleGANpp(generator, image, mask=1 - hole, **opts)
    result = run(module, trainer)
    known = module.mask.cpu()
    result["composite"] = known * image.cpu() + (1 - known) * fit_to(result["images"], image.shape[-2:])
    return result


def crossover(generator, image1, image2, mask, trainer=None, **opts):
    """One embedding that is ``image1`` inside ``mask`` (1 = take image1) and ``image2`` outside."""
    return run(Image2StyleGANpp(generator, image1, targets2=image2, mask=mask, **opts), trainer)


def style_transfer(generator, content, style, mask, style_lambda, style_vgg=None, trainer=None, **opts):
    """Keep ``content`` inside ``mask`` (1 = content) and match ``style``'s Gram matrices outside it."""
    module = Image2StyleGANpp(generator, content, style=style, style_lambda=style_lambda, mask=mask,
                              style_vgg=style_vgg, **opts)
    return run(module, trainer)


def state_modules(generator, layer):
    """The synthesis modules whose outputs form G's state after conv ``layer`` (0 = the 4 px conv,
    then ``generator.convs`` in order): that conv, and the ToRGB that produced the skip so far (None
    at layer 0). Conv k uses style row k, so the state depends on rows 0 … k only."""
    if not isinstance(layer, int) or not 0 <= layer < generator.num_layers:
        raise ValueError(f"layer must be an int in [0, {generator.num_layers - 1}], got {layer!r}")
    if layer == 0:
        return generator.conv1, None
    block = (layer - 1) // 2  # resolution block of convs[layer − 1]
    return generator.convs[layer - 1], generator.to_rgb1 if block == 0 else generator.to_rgbs[block - 1]


@torch.no_grad()
def feature_blend(generator, ws_a, ws_b, mask, layer, noise_mode="const"):
    """Activation-tensor blending: G(ws_a) with its state after conv ``layer`` replaced by
    M ⊙ state(ws_b) + (1 − M) ⊙ state(ws_a), M = ``mask`` [B or 1, 1, h, w] resized to each tensor.
    ws_a, ws_b [B, n_latent, D] -> images [B, 3, S, S]. M = 0 gives G(ws_a) exactly; M = 1 gives
    G([ws_b rows 0 … layer, ws_a rows after])."""
    modules = [m for m in state_modules(generator, layer) if m is not None]
    recorded = {}

    def record(module, inputs, output):
        recorded[module] = output

    def blend(module, inputs, output):
        m = resize_mask(mask.to(output), output.shape[-2:])
        return m * recorded[module] + (1 - m) * output

    for hook in (record, blend):
        handles = [m.register_forward_hook(hook) for m in modules]
        try:
            image = generator.synthesis(ws_b if hook is record else ws_a, noise_mode=noise_mode)
        finally:
            for h in handles:
                h.remove()
    return image
