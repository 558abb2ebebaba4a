"""StyleGAN2 G/D against vectors produced by rosinality's official model.py."""
import torch

from ganinv.nets.stylegan2 import Discriminator, Generator


def _generator(vector):
    v = vector("rosinality_generator_64")
    g = Generator(**v.config)
    g.load_state_dict(v.state_dict(), strict=True)
    return v, g.eval()


@torch.no_grad()
def test_generator_matches_official_calls(vector):
    v, g = _generator(vector)
    t = v.tensors
    w_a = g.mapping(t["z"])
    v.check("w_a", w_a)
    v.check("latent_a", g.broadcast(w_a))
    v.check("image_a", g.synthesis(g.broadcast(w_a), noise_mode="const"))
    v.check("image_b", g.synthesis(t["w_plus"]))
    mean_latent = g.mapping(t["z_pool"]).mean(0, keepdim=True)
    v.check("mean_latent", mean_latent)
    w_c = g.mapping(t["z"], truncation=0.7, truncation_latent=mean_latent)
    v.check("latent_c", g.broadcast(w_c))
    v.check("image_c", g.synthesis(g.broadcast(w_c)))
    ws_mix = g.mix(g.mapping(t["z"]), g.mapping(t["z2"]), inject_index=4)
    v.check("latent_mix", ws_mix)
    v.check("image_mix", g.synthesis(ws_mix))


@torch.no_grad()
def test_truncation_defaults_to_latent_avg(vector):
    v, g = _generator(vector)
    g.latent_avg = g.mapping(v.tensors["z_pool"]).mean(0)
    w = g.mapping(v.tensors["z"], truncation=0.7)
    v.check("latent_c", g.broadcast(w))


@torch.no_grad()
def test_discriminator_matches_official(vector):
    v = vector("rosinality_discriminator_64")
    d = Discriminator(**v.config)
    d.load_state_dict(v.state_dict(), strict=True)
    d.eval()
    v.check("logits", d(v.tensors["images"]))
    v.check("logits_b8", d(v.tensors["images_b8"]))
