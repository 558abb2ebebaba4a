"""ganinv: StyleGAN2 inversion and editing (pSp, e4e, IDInvert, optimisation, PTI)."""

__version__ = "0.1.0"
