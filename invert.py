"""Invert images into a StyleGAN2 (encoder, optimisation, IDInvert, + PTI), composed by Hydra.

    python invert.py input=photos/ output=out/                          # projector, embedded generator
    python invert.py input=photos/ output=out/ method=e4e.pt refine=pti
    python invert.py input=photos/ output=out/ inversion=image2stylegan trainer=ddp trainer.devices=4
    python invert.py input=face.png output=out/ mask=hole.png inpaint=true inversion=image2stylegan_pp
    python invert.py input=a.png output=out/ crossover=b.png mask=left.png inversion=image2stylegan_pp_edit
    python invert.py input=photos/ output=out/ method=restyle.pt bootstrap=psp.pt save_steps=true

The config root is conf/invert/ (conf/invert/invert.yaml): there ``method`` and ``encoder`` are
plain values (a method name or a checkpoint path), not train.py's config groups; the groups both
entry points share come from conf/<group>/ (ganinv.config.register_shared_groups).

A bad config (unknown key or group option, wrong type) is one line on stderr and exit status 2
(ganinv.cli); in a multirun (-m) a failing job is reported and the others still run.
"""
import hydra

from ganinv import cli
from ganinv.config import register_resolvers, register_shared_groups

register_resolvers()
register_shared_groups()


@hydra.main(version_base="1.3", config_path="conf/invert", config_name="invert")
def main(cfg):
    from ganinv.inversion import main as invert

    return cli.job("invert.py", invert, cfg)  # top-level settings: ganinv.invert.settings.check_config


if __name__ == "__main__":
    cli.main("invert.py", main)
