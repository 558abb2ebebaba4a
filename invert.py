"""Invert images into a StyleGAN2 (encoder, optimisation, IDInvert, + PTI), composed by Hydra.

    python invert.py input=photos/ output=out/                          # projector, embedded generator
    python invert.py input=photos/ output=out/ method=e4e.pt refine=pti
    python invert.py input=photos/ output=out/ inversion=image2stylegan trainer=ddp trainer.devices=4

A bad config (unknown key or group option, wrong type) is one line on stderr and exit status 2
(ganinv.cli); in a multirun (-m) a failing job is reported and the others still run.
"""
import sys

import hydra

from ganinv import cli
from ganinv.config import register_resolvers

register_resolvers()
# `method` and `encoder` are also train.py's config groups (conf/method/, conf/encoder/), so Hydra
# would take `method=X` for a choice in that group; for invert.py they are plain values (a method
# name or a checkpoint path), stored as inversion_method / inversion_encoder.
sys.argv = [f"inversion_{a}" if a.split("=", 1)[0] in ("method", "encoder") else a for a in sys.argv]


@hydra.main(version_base="1.3", config_path="conf", config_name="invert")
def main(cfg):
    from ganinv.inversion import main as invert

    return cli.job("invert.py", invert, cfg)  # top-level settings: ganinv.inversion.check_config


if __name__ == "__main__":
    cli.main("invert.py", main)
