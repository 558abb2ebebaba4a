"""ganinv.distributed: world-size-invariant z draws and SyncBatchNorm on 2 CPU (gloo) processes."""
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ganinv.distributed import SyncBatchNorm, convert_sync_batchnorm, revert_sync_batchnorm, shard_randn

WORLD = 2


def test_shard_randn_ranks_reassemble_the_single_process_draw():
    one = shard_randn(6, 5, seed=3, step=7)  # 1 process, global batch 6
    parts = [shard_randn(3, 5, seed=3, step=7, rank=r, world_size=2) for r in range(2)]
    assert parts[0].shape == (3, 5)
    together = torch.empty(6, 5)
    together[0::2], together[1::2] = parts  # rank r holds rows r::2, as ShardSampler's samples
    assert torch.equal(together, one)
    assert not torch.allclose(parts[0], parts[1], atol=0.1)  # ranks draw different z
    # a new iteration, another key or another seed is a new draw; same arguments, same draw
    assert not torch.allclose(shard_randn(6, 5, seed=3, step=8), one, atol=0.1)
    assert not torch.allclose(shard_randn(6, 5, seed=3, step=7, key="other"), one, atol=0.1)
    assert not torch.allclose(shard_randn(6, 5, seed=4, step=7), one, atol=0.1)
    assert torch.equal(shard_randn(6, 5, seed=3, step=7), one)
    assert shard_randn(2, (3, 4), seed=0, step=0).shape == (2, 3, 4)
    assert one.std().item() == pytest.approx(1.0, abs=0.4)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _problem():
    """Input [8, 3, 4, 4] with a per-channel offset (|mean| >> std for channel 2), upstream grad."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 4, 4, generator=g) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1)
    x = x + torch.tensor([0.0, -2.0, 20.0]).view(1, 3, 1, 1)
    return x, torch.randn(8, 3, 4, 4, generator=g)


def _make_bn(cls):
    bn = cls(3, momentum=0.3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, 0.5, 2.0]))
        bn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    return bn


def _run_rank(rank, port, queue):
    """One gloo rank: 2 training forwards of SyncBatchNorm on rows rank::2, then backward of the
    local loss; puts (rank, results) on ``queue``."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x, grad_out = _problem()
        x, grad_out = x[rank::WORLD].clone().requires_grad_(True), grad_out[rank::WORLD]
        bn = _make_bn(SyncBatchNorm)
        for _ in range(2):  # the second forward checks the running-stat update on top of the first
            y = bn(x)
        (y * grad_out).sum().backward()
        param_grad = torch.stack([bn.weight.grad, bn.bias.grad])
        dist.all_reduce(param_grad)  # what DDP does, before dividing by the world size
        results = {"y": y.detach(), "x_grad": x.grad, "param_grad": param_grad / WORLD,
                   "running_mean": bn.running_mean, "running_var": bn.running_var, "tracked": bn.num_batches_tracked}
        # numpy copies travel by value: a torch tensor would travel as a shared-memory handle that the
        # parent can only open while this process is alive (a race when the rank exits first)
        queue.put((rank, {k: v.detach().numpy().copy() for k, v in results.items()}))
    finally:
        dist.destroy_process_group()


def test_sync_batchnorm_two_gloo_processes_equal_one_batchnorm_on_the_whole_batch():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_run_rank, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, arrays = queue.get(timeout=120)
        results[rank] = {k: torch.from_numpy(v) for k, v in arrays.items()}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    x, grad_out = _problem()
    x.requires_grad_(True)
    ref = _make_bn(nn.BatchNorm2d)
    for _ in range(2):
        y = ref(x)
    # the global loss is the mean of the ranks' losses: its param grads are the averaged ones
    ((y * grad_out).sum() / WORLD).backward()
    for r in range(WORLD):
        got = results[r]
        assert torch.allclose(got["y"], y.detach()[r::WORLD], atol=1e-5)
        # each rank's input grad is that of the sum of all ranks' losses (torch SyncBatchNorm's convention)
        assert torch.allclose(got["x_grad"], WORLD * x.grad[r::WORLD], atol=1e-5)
        assert torch.allclose(got["param_grad"], torch.stack([ref.weight.grad, ref.bias.grad]), atol=1e-5)
        assert torch.allclose(got["running_mean"], ref.running_mean, atol=1e-5)
        assert torch.allclose(got["running_var"], ref.running_var, atol=1e-5)
        assert got["tracked"].item() == 2
    assert ref.running_mean[2].item() == pytest.approx(20.0 * (1 - 0.7**2), abs=0.2)  # the stats are real


def test_sync_batchnorm_is_plain_batchnorm_outside_a_process_group():
    x, _ = _problem()
    a, b = _make_bn(nn.BatchNorm2d), _make_bn(SyncBatchNorm)
    assert torch.allclose(a(x), b(x), atol=1e-6)
    assert torch.equal(a.running_var, b.running_var)
    a.eval(), b.eval()
    assert torch.allclose(a(x), b(x), atol=1e-6)


def test_convert_and_revert_keep_state_dict_keys_values_and_training_flag():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.Flatten(), nn.BatchNorm1d(16)))
    net[2][1].eval()
    net(torch.randn(2, 3, 4, 4))  # moves the first BN's running stats
    before = {k: v.clone() for k, v in net.state_dict().items()}
    weight = net[1].weight
    synced = convert_sync_batchnorm(net)
    assert isinstance(synced[1], SyncBatchNorm) and isinstance(synced[2][1], SyncBatchNorm)
    assert synced[1].weight is weight  # the same Parameter: an optimizer built before keeps it
    assert synced[1].training and not synced[2][1].training
    assert list(synced.state_dict()) == list(before)
    back = revert_sync_batchnorm(synced)
    assert type(back[1]) is nn.BatchNorm2d and type(back[2][1]) is nn.BatchNorm1d
    assert not back[2][1].training
    state = back.state_dict()
    assert list(state) == list(before)
    assert all(torch.equal(state[k], v) for k, v in before.items())


def test_stylegan2_latents_of_two_ranks_are_the_single_process_latents():
    """StyleGAN2's z, z2, mixing coin and crossover: rank r's [B, n_latent, D] latents are rows
    r::2 of one process's [2B, n_latent, D] at the same iteration (mixing=1: mixing always on)."""
    from types import SimpleNamespace

    from ganinv.methods.stylegan2 import StyleGAN2
    from ganinv.nets.stylegan2 import Discriminator, Generator

    module = StyleGAN2(Generator(16, style_dim=32, n_mlp=2, channel_max=16), Discriminator(16, channel_max=16),
                       mixing=1.0, image_every=0)

    def sample(rank, world_size, batch, step=5, key="g"):
        module._trainer = SimpleNamespace(global_rank=rank, world_size=world_size, global_step=step)
        with torch.no_grad():
            return module._sample_ws(batch, key)

    one = sample(0, 1, 6)
    assert one.shape == (6, module.generator.n_latent, 32)
    assert not torch.allclose(one[:, 0], one[:, -1], atol=1e-3)  # mixed: first and last rows differ
    together = torch.empty_like(one)
    together[0::2], together[1::2] = sample(0, 2, 3), sample(1, 2, 3)
    assert torch.allclose(together, one, atol=1e-6)
    assert not torch.allclose(sample(0, 1, 6, step=6), one, atol=1e-3)
    assert not torch.allclose(sample(0, 1, 6, key="d"), one, atol=1e-3)
