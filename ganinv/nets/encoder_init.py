"""Official encoder initialisation (``encoder.init``): what pSp / e4e / ReStyle load into a new
encoder before training.

- ``irse50``: pSp's ``load_weights`` (``checkpoint_path`` None; e4e's and ReStyle's IR-SE
  encoders are the same): ``encoder.load_state_dict(torch.load(model_paths['ir_se50']),
  strict=False)`` with ArcFace IR-SE50 (``model_ir_se50.pth``): every ``input_layer.*`` and
  ``body.*`` entry is copied, the style heads / ``latlayer``s keep their initialisation, the
  file's ``output_layer.*`` is unused. pSp drops the ``input_layer`` keys when ``label_nc != 0``
  (sketches, segmentation maps); ReStyle widens the stem conv for ``input_nc != 3`` (RGB filters
  in channels 0-2, ``torch.randn`` elsewhere). See :func:`~ganinv.nets.psp_encoders.load_irse50_into_encoder`.
  Needs a 50-layer IR-SE trunk (the official encoders).
- ``resnet34_imagenet``: ReStyle's ResNet-34 encoders (``models/encoders/restyle_*``:
  ``resnet34(pretrained=True)``): the 16 BasicBlocks of torchvision's ImageNet ResNet-34
  (``layer1..layer4``) become ``body.0..15``. The stem is copied too, as ReStyle's
  ``models/psp.py`` ``__get_encoder_checkpoint`` does (it loads the unmapped torchvision file
  with ``strict=False``, so exactly ``conv1.weight`` and ``bn1.*`` match by name): ``conv1``'s
  ImageNet RGB filters fill input channels 0-2, ``torch.randn`` the rest (input_nc 6: the
  previous output), and ``bn1`` is ImageNet's; the PReLU keeps its initialisation. The weights
  file is torchvision's, read from the torch hub cache (never downloaded).
- ``none``: keep the initialisation (the embedded IR-SE18 default, tests).

A missing weights file fails with one line naming the file and where it goes.
"""
import torch

from ..checkpoints.safe import load_torch
from ..losses.id_loss import IR_SE50_HINT
from ..losses.weights import torchvision_weights_file
from .psp_encoders import load_irse50_into_encoder

ENCODER_INITS = ("irse50", "resnet34_imagenet", "none")
_RESNET34_LAYERS = (3, 4, 6, 3)


def resnet34_body_state(torchvision_sd):
    """torchvision ResNet-34 state dict -> ReStyle ``body.N.*`` entries (layer1..layer4 flattened)."""
    starts = [sum(_RESNET34_LAYERS[:i]) for i in range(4)]
    out = {}
    for key, value in torchvision_sd.items():
        head, _, rest = key.partition(".")
        if head.startswith("layer") and head[5:].isdigit():
            block, _, name = rest.partition(".")
            out[f"body.{starts[int(head[5:]) - 1] + int(block)}.{name}"] = value
    return out


def resnet34_stem_state(torchvision_sd, encoder):
    """ReStyle's stem from torchvision's ResNet-34: ``bn1.*`` as is, ``conv1.weight`` [64, 3, 7, 7]
    widened to the encoder's input channels with ``torch.randn`` beyond the first 3 (official)."""
    stem = {k: v for k, v in torchvision_sd.items() if k.startswith("bn1.")}
    rgb = torchvision_sd["conv1.weight"]
    input_nc = encoder.conv1.weight.shape[1]
    if input_nc == rgb.shape[1]:
        stem["conv1.weight"] = rgb
        return stem
    wide = torch.randn(rgb.shape[0], input_nc, *rgb.shape[2:], dtype=rgb.dtype)
    wide[:, :3] = rgb
    stem["conv1.weight"] = wide
    return stem


def init_encoder(encoder, init="none", weights_path=None, label_nc=0):
    """Apply ``init`` (one of :data:`ENCODER_INITS`) to ``encoder`` in place.

    ``weights_path``: ``model_ir_se50.pth`` for ``irse50`` (required); for
    ``resnet34_imagenet`` torchvision's file (default: its torch hub cache path).
    ``label_nc != 0`` (pSp's label inputs) keeps the input layer at initialisation.
    Returns ``load_state_dict``'s result (None for ``none``).
    """
    if init == "none":
        return None
    if init == "irse50":
        if weights_path is None:
            raise ValueError("encoder.init=irse50 needs encoder.init_weights (the model_ir_se50.pth path)")
        state = load_torch(weights_path, "encoder init (IR-SE50)", IR_SE50_HINT)
        own = encoder.state_dict()
        misfit = [k for k, v in state.items() if k in own and k != "input_layer.0.weight" and v.shape != own[k].shape]
        misfit += [k for k in own if k.startswith("body.") and k not in state]
        if misfit:
            name = type(encoder).__name__
            raise ValueError(f"encoder.init=irse50 needs the official 50-layer ir_se trunk, but {name}'s "
                             f"{misfit[0]!r} does not fit {weights_path}: use encoder.init=none for other trunks")
        return load_irse50_into_encoder(encoder, state, input_is_label=label_nc != 0)
    if init == "resnet34_imagenet":
        if not hasattr(encoder, "conv1") or "body.15.conv1.weight" not in encoder.state_dict():
            raise ValueError(f"encoder.init=resnet34_imagenet needs a ReStyle ResNet-34 encoder, "
                             f"got {type(encoder).__name__}")
        if weights_path is None:
            from torchvision.models import ResNet34_Weights
            weights_path = torchvision_weights_file(ResNet34_Weights.IMAGENET1K_V1)
        state = load_torch(weights_path, "encoder init (ImageNet ResNet-34)",
                           "torchvision's resnet34 ImageNet file in the torch hub cache")
        body = resnet34_body_state(state)
        missing = [k for k in encoder.state_dict() if k.startswith("body.") and k not in body
                   and not k.endswith("num_batches_tracked")]
        if missing:
            raise ValueError(f"{weights_path}: not a torchvision ResNet-34 state dict (no entry for {missing[0]!r})")
        return encoder.load_state_dict({**body, **resnet34_stem_state(state, encoder)}, strict=False)
    raise ValueError(f"encoder.init must be one of {ENCODER_INITS}, got {init!r}")
