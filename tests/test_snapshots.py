"""ExportEvery: the method's export file every N optimizer steps of one training run."""
import pytest
import torch
from test_methods import tiny

from ganinv.checkpoints import load_torch
from ganinv.methods.snapshots import ExportEvery, snapshot_name
from ganinv.runner import train


def test_exports_every_n_steps_and_the_last_equals_the_final_export(compose_train, tmp_path):
    snaps = tmp_path / "snaps"
    cfg = compose_train(*tiny("psp", "trainer.max_steps=5", "export=true",
                              "+callbacks.export_every._target_=ganinv.methods.snapshots.ExportEvery",
                              "+callbacks.export_every.every_n_steps=2", f"+callbacks.export_every.dirpath={snaps}"))
    train(cfg)
    assert sorted(p.name for p in snaps.iterdir()) == [snapshot_name(s) for s in (2, 4, 5)]
    final = load_torch(tmp_path / "export" / "psp.pt", "export")
    last = load_torch(snaps / snapshot_name(5), "snapshot")
    first = load_torch(snaps / snapshot_name(2), "snapshot")
    assert last["state_dict"].keys() == final["state_dict"].keys()
    for k, v in final["state_dict"].items():
        assert torch.equal(last["state_dict"][k], v), k
    assert torch.equal(last["latent_avg"], final["latent_avg"]) and last["opts"] == final["opts"]
    enc = [k for k in final["state_dict"] if k.startswith("encoder.")]
    assert any(not torch.equal(first["state_dict"][k], last["state_dict"][k]) for k in enc)  # it trained


def test_every_n_steps_must_be_a_positive_int():
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError, match="every_n_steps must be an int >= 1"):
            ExportEvery(bad)


@pytest.mark.parametrize("method", ["idinvert", "e4e"])
def test_manual_optimisation_exports_at_iterations(compose_train, tmp_path, method):
    """IDInvert and e4e step their D outside the step count (manual optimisation): the exports still
    fall on iterations 2, 4 and the last (3 iterations -> 2, 3)."""
    snaps = tmp_path / "snaps"
    cfg = compose_train(*tiny(method, "trainer.max_steps=3",
                              "+callbacks.export_every._target_=ganinv.methods.snapshots.ExportEvery",
                              "+callbacks.export_every.every_n_steps=2", f"+callbacks.export_every.dirpath={snaps}"))
    trainer = train(cfg)
    assert trainer.global_step == 3
    assert sorted(p.name for p in snaps.iterdir()) == [snapshot_name(2), snapshot_name(3)]


def test_a_module_without_export_is_refused_before_training():
    import pytorch_lightning as pl

    with pytest.raises(ValueError, match="has no export"):
        ExportEvery(2).setup(None, pl.LightningModule(), "fit")
