"""Train an inversion method (or a StyleGAN2) with Lightning, composed by Hydra.

    python train.py +method=e4e                       # embedded default generator + data
    python train.py +method=psp generator=checkpoint generator.path=ffhq.pt data=folder data.root=DIR
    python train.py +method=e4e trainer=ddp trainer.devices=8

A bad config (unknown key or group option, wrong type), file or disk is one line on stderr and exit
status 2 (ganinv.cli); in a multirun (-m) a failing job is reported and the others still run.
"""
import hydra

from ganinv import cli
from ganinv.config import register_resolvers

register_resolvers()
# Top-level settings no target's signature checks (cli.check_config): their types.
SCALARS = {"seed": int, "test": bool, "export": bool, "channels_last": bool, "compile": bool}


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    from ganinv.runner import main as train

    return cli.job("train.py", train, cfg, SCALARS)


if __name__ == "__main__":
    cli.main("train.py", main)
