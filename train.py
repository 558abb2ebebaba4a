"""Train an inversion method (or a StyleGAN2) with Lightning, composed by Hydra.

    python train.py +method=e4e                       # embedded default generator + data
    python train.py +method=psp generator=checkpoint generator.path=ffhq.pt data=folder data.root=DIR
    python train.py +method=e4e trainer=ddp trainer.devices=8
"""
import hydra

from ganinv.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg):
    from ganinv.runner import main as train

    return train(cfg)


if __name__ == "__main__":
    main()
