"""e4e encoder (Tov et al. 2021): a single w plus progressively enabled per-layer offsets.

Same trunk, heads and state-dict names as pSp's GradualStyleEncoder (e4e's
``models/encoders/psp_encoders.py``), so official e4e checkpoints load with ``strict=True``.
"""
import torch

from .psp_encoders import FPNStyleEncoderBase, ProgressiveStage


class Encoder4Editing(ProgressiveStage, FPNStyleEncoderBase):
    """[B, input_nc, H, W] images in [-1, 1] -> W+ offsets [B, n_styles, 512] (latent_avg not added).

    w0 = styles[0](c3) fills every row; row i (1 <= i <= stage) adds the delta styles[i](feat),
    feat = c3 for i < 3, the FPN map p2 for i < 7, p1 after. ``progressive_stage`` is an int in
    [0, n_styles-1] (e4e training: stage k trains deltas 1..k) or ``'all'`` (official
    ``ProgressiveStage.Inference``). Heads past the stage are not run, so they get no gradient,
    and the FPN maps are only built once a delta needs them. ``n_styles = 2*log2(size) - 2``
    (official: from ``opts.stylegan_size``).
    """

    def __init__(self, num_layers=50, mode="ir_se", n_styles=18, input_nc=3, input_size=256, head_channels=512):
        super().__init__(num_layers, mode, n_styles, input_nc, input_size, head_channels)
        self.progressive_stage = "all"

    @property
    def n_deltas(self):
        """Number of rows (after row 0) that receive a delta at the current stage."""
        return self.style_count - 1 if self._progressive_stage == "all" else self._progressive_stage

    def forward(self, x):
        c1, c2, c3 = self.trunk(x)
        w0 = self.styles[0](c3)
        rows, features = [w0], c3
        for i in range(1, self.n_deltas + 1):
            if i == self.coarse_ind:
                p2 = self.fpn_middle(c3, c2)
                features = p2
            elif i == self.middle_ind:
                features = self.fpn_fine(p2, c1)
            rows.append(w0 + self.styles[i](features))
        rows += [w0] * (self.style_count - len(rows))
        return torch.stack(rows, dim=1)
