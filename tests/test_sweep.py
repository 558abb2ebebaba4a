"""The cross-method sweep recipe (experiments/sweep): its yardsticks, the dependency check, the report,
and (slow) the whole recipe at a tiny budget."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ganinv.checkpoints import load_generator
from ganinv.config import ASSETS
from ganinv.metrics import FactorRegressor
from ganinv.nets.stylegan2 import Generator

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ROOT / "experiments" / "sweep"
sys.path.insert(0, str(SWEEP))

import report  # noqa: E402
import yardsticks  # noqa: E402

TINY = ["n_images=3", "yardsticks.regressor_steps=20", "yardsticks.boundary_samples=200",
        "yardsticks.realism_ref=100", "yardsticks.realism_steps=20", "budget.train_steps=2",
        "budget.batch_size=2", "budget.opt_steps=2", "budget.pti_steps=5"]


def env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline",
            "WANDB_SILENT": "true"}


def test_latent_realism_tells_codes_outside_w_apart():
    g = load_generator(ASSETS / "procedural64.pt")
    ref = yardsticks.sample_w(g, 600, seed=2)
    in_w = g.broadcast(yardsticks.sample_w(g, 12, seed=7)).clone()  # [12, 10, 512], in W by construction
    inside = yardsticks.latent_realism(in_w, ref, steps=100)
    outside = yardsticks.latent_realism(in_w + ref.std(0), ref, steps=100)  # every row 1σ off W
    central = yardsticks.latent_realism(g.latent_avg.expand_as(in_w).clone(), ref, steps=100)  # all at w̄
    assert 0.35 <= inside["latent_d_acc"] <= 0.65 and 0.9 <= inside["w_radius_ratio"] <= 1.1
    assert outside["latent_d_acc"] >= 0.95 and outside["w_radius_ratio"] > 1.2
    assert central["latent_d_acc"] >= 0.8 and central["w_radius_ratio"] < 0.2  # too typical is also not W
    assert outside["latent_d_p_real"] < 0.1 < 0.5 < inside["latent_d_p_real"]
    assert len(outside["latent_d_detect_per_layer"]) == g.n_latent
    assert min(outside["latent_d_detect_per_layer"]) >= 0.9


def test_editability_per_image_generators_and_zero_strength():
    torch.manual_seed(0)
    g = Generator(32, 64, n_mlp=2, channel_max=32).eval()
    regressor = FactorRegressor(size=32).eval()
    ws = g.broadcast(yardsticks.sample_w(g, 4, seed=1)).clone()
    normal = torch.nn.functional.normalize(torch.randn(1, 64), dim=1)
    bounds = {"yaw": {"normal": normal, "strength": 3.0}, "hair_tone": {"normal": -normal, "strength": 3.0}}
    shared = yardsticks.editability(ws, [g] * 4, bounds, regressor)
    own = yardsticks.editability(ws, [copy.deepcopy(g) for _ in range(4)], bounds, regressor)  # as PTI's
    assert own["editability"] == pytest.approx(shared["editability"], abs=1e-6)
    assert shared["target_shift"] > 0 and 0 <= shared["identity_drift"] <= 1
    assert shared["editability"] == pytest.approx(shared["target_shift"] - shared["identity_drift"])
    assert set(shared["per_factor"]) == {"yaw", "hair_tone"}
    still = yardsticks.editability(ws, [g] * 4, {"yaw": {"normal": normal, "strength": 0.0}}, regressor)
    assert still["target_shift"] == 0 and still["identity_drift"] == 0 and still["editability"] == 0


def test_a_missing_dependency_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, str(SWEEP / "sweep.py"), "job=opt_domain", f"sweep_dir={tmp_path}"],
                       capture_output=True, text=True, env=env(), timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs the idinvert job's encoder" in lines[0] and "job=idinvert" in lines[0]
    assert not (tmp_path / "shared").exists()  # failed before building anything


def fake_result(job, mse, editability, acc):
    return {"job": job, "label": job, "sweep": "embedded", "setting": "embedded", "n_images": 3, "mse": mse,
            "psnr": 10.0, "ssim": 0.5, "lpips": None, "editability": editability, "target_shift": 0.2,
            "identity_drift": 0.2 - editability, "latent_d_acc": acc, "train_seconds": 0.0,
            "train_shared_with": None, "invert_seconds_per_image": 0.1,
            "budget": {"train_steps": 2, "batch_size": 2, "opt_steps": 2, "domain_steps": 2, "pti_steps": 2,
                       "invert_batch": 8},
            "machine": {"platform": "test", "processor": "cpu", "cpus": 2, "torch": "x", "torch_threads": 1,
                        "cuda": None}}


def test_report_table_orderings_plot_and_notes(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep, out = tmp_path / "sweep", tmp_path / "results"
    for r in (fake_result("e4e", 0.05, 0.03, 0.7), fake_result("psp", 0.04, 0.01, 0.9),
              fake_result("opt_w", 0.02, 0.05, 0.6)):
        yardsticks.write_json(sweep / r["job"] / "result.json", r)
    yardsticks.write_json(sweep / "shared" / "prepare.json", {"reference": {"editability": 0.08, "latent_d_acc": 0.5}})
    report.main([str(sweep), "--out", str(out)])
    text = (out / "sweep.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| ") and ln.split(" | ")[0][2:] in ("psp", "e4e", "opt_w")]
    assert [r.split(" | ")[0][2:] for r in rows] == ["psp", "e4e", "opt_w"]  # the sweep's job order
    assert "| pSp reconstructs better than e4e | e4e | mse 0.04 (psp) vs 0.05 (e4e) | yes |" in text
    assert "| e4e edits better than pSp | e4e | editability 0.03 (e4e) vs 0.01 (psp) | yes |" in text
    assert "| PTI improves on its pivots' fidelity | PTI | not in this sweep | n/a |" in text
    assert "*sampled w (reference" in text and "0.080" in text
    assert Image.open(out / "tradeoff.png").size == (900, 620)
    assert len(json.loads((out / "sweep.json").read_text())["jobs"]) == 3
    assert list((sweep / "wandb").glob("offline-run-*"))  # the W&B report run, offline, next to the jobs
    # a hand-written note survives regeneration
    (out / "sweep.md").write_text(text.split("## Notes")[0] + "## Notes\n\nwritten by hand\n")
    report.main([str(sweep), "--out", str(out), "--no-wandb"])
    assert (out / "sweep.md").read_text().rstrip().endswith("## Notes\n\nwritten by hand")


@pytest.mark.slow
def test_recipe_end_to_end_tiny(tmp_path):
    sweep, out = tmp_path / "sweep", tmp_path / "results"
    r = subprocess.run([sys.executable, str(SWEEP / "run.py"), "--jobs", "e4e,e4e_pti,opt_w", "--threads", "1",
                        "--out", str(out), f"sweep_dir={sweep}", *TINY],
                       capture_output=True, text=True, env=env(), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = {j: json.loads((sweep / j / "result.json").read_text()) for j in ("e4e", "e4e_pti", "opt_w")}
    for x in res.values():
        assert x["n_images"] == 3
        assert 0 < x["mse"] < 1 and 5 < x["psnr"] < 60 and -1 <= x["ssim"] <= 1
        assert x["lpips"] is None or 0 <= x["lpips"] <= 1  # None without the pretrained AlexNet weights
        assert 0 <= x["target_shift"] <= 1 and 0 <= x["identity_drift"] <= 1
        assert x["editability"] == pytest.approx(x["target_shift"] - x["identity_drift"])
        assert set(x["editability_per_factor"]) == {"mouth_curve", "yaw", "hair_tone"}
        assert 0 <= x["latent_d_acc"] <= 1 and len(x["latent_d_detect_per_layer"]) == 10
        assert x["invert_seconds_per_image"] > 0
    assert res["e4e"]["train_seconds"] > 0 and res["opt_w"]["train_seconds"] == 0
    assert res["e4e_pti"]["train_seconds"] == res["e4e"]["train_seconds"]  # PTI reuses e4e's encoder ...
    assert res["e4e_pti"]["latent_d_acc"] == res["e4e"]["latent_d_acc"]  # ... and its codes (the pivots)
    assert res["e4e_pti"]["mse"] < res["e4e"]["mse"]  # tuning G toward the targets lowers distortion
    assert len(list((sweep / "e4e_pti" / "invert" / "generators").glob("*.pt"))) == 3
    text = (out / "sweep.md").read_text()
    labels = [ln.split(" | ")[0][2:] for ln in text.splitlines() if ln.startswith("| ") and " | " in ln]
    assert [x for x in labels if x in ("e4e", "e4e + PTI", "optimisation (W)")] == ["e4e", "optimisation (W)",
                                                                                    "e4e + PTI"]
    assert Image.open(out / "tradeoff.png").size == (900, 620)
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == 4  # three jobs + the report


def test_every_job_composes_and_own_generator_codes_are_not_scored():
    """Every job of the full sweep composes with the embedded setting; the hybrid inverts with
    stylegan-encoder's loss from its own regression export; ALAE's code columns are n/a (its W
    is not the sweep generator's), and the report shows them so."""
    import sweep
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(SWEEP / "conf"), version_base="1.3"):
        cfgs = {j: compose(config_name="sweep", overrides=[f"job={j}"]) for j in sweep.JOBS}
    assert [c.job.name for c in cfgs.values()] == list(sweep.JOBS)
    hybrid = cfgs["hybrid"]
    assert hybrid.job.train == "latent_regression"
    assert "init=encoder" in hybrid.job.invert_args and "inversion=stylegan_encoder" in hybrid.job.invert_args
    assert list(hybrid.setting.job_invert_args.hybrid) == list(hybrid.setting.job_invert_args.sge)
    assert "inversion.vgg_lambda=0" in hybrid.setting.job_invert_args.hybrid
    assert cfgs["restyle_e4e"].job.progressive.start == cfgs["e4e"].job.progressive.start
    scores = sweep.code_scores(cfgs["alae"], None, [], None)
    assert scores == dict.fromkeys(sweep.CODE_KEYS) and "latent_d_p_real" in scores
    row = report.markdown([{**fake_result("alae", 0.1, 0.0, 0.0), **scores}], "sw", None)
    assert "| alae | 0.1000 | 10.00 | 0.500 | n/a | n/a |" in row


@pytest.mark.slow
def test_curves_last_point_equals_the_sweep_job_at_that_budget(tmp_path):
    """curves.py trains pSp once to 4 iterations with exports at 2 and 4 and scores each as a sweep
    job does: the step-4 point equals `sweep.py job=psp` trained for 4 iterations (same seed, same
    run; pSp has no schedule tied to max_steps), and the step-2 export is a different encoder."""
    sweep_dir, out = tmp_path / "sweep", tmp_path / "results"
    tiny = [o if o != "budget.train_steps=2" else "budget.train_steps=4" for o in TINY]
    r = subprocess.run([sys.executable, str(SWEEP / "curves.py"), "--methods", "psp", "--steps", "4", "--every", "2",
                        "--baselines", "opt_wplus",
                        "--out", str(out), f"sweep_dir={sweep_dir}", *tiny],
                       capture_output=True, text=True, env=env(), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = subprocess.run([sys.executable, str(SWEEP / "sweep.py"), "job=psp", "wandb=false", f"sweep_dir={sweep_dir}",
                        *tiny], capture_output=True, text=True, env=env(), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / "curves.json").read_text())
    curve = data["curves"]["psp"]
    job = json.loads((sweep_dir / "psp" / "result.json").read_text())
    assert [p["step"] for p in curve["points"]] == [2, 4]
    last = curve["points"][-1]
    for key in ("mse", "psnr", "ssim", "editability", "target_shift", "w_radius_ratio", "latent_d_p_real"):
        assert last[key] == pytest.approx(job[key], rel=1e-5, abs=1e-7), key
    assert curve["points"][0]["mse"] != last["mse"]
    wplus = data["baselines"]["opt_wplus"]  # scored once, as the sweep's opt_wplus job
    assert 0 < wplus["mse"] < 1 and "step" not in wplus
    text = (out / "curves.md").read_text()
    assert "| 4 | " in text and "pSp reconstructs better than e4e" not in text  # no e4e curve: no e4e claims
    assert "W+ optimisation is more faithful than every encoder" not in text  # needs e4e and IDInvert too
    assert Image.open(out / "curves.png").size == (1200, 820)
    assert Image.open(out / "curves_tradeoff.png").size == (900, 620)


def test_embedded_long_is_the_embedded_setting_at_the_curves_budget():
    """setting=embedded_long inherits everything from embedded but the name (its own sweep folder)
    and the encoder budget (1500 iterations, experiments/results/curves.md)."""
    sys.path.insert(0, str(SWEEP))
    import curves

    short, long = curves.compose([]), curves.compose(["setting=embedded_long"])
    assert (short.budget.train_steps, long.budget.train_steps) == (300, 1500)
    assert long.sweep_dir == "outputs/sweep/embedded_long" and long.setting.name == "embedded_long"
    for key in ("generator", "method_args", "train_args", "invert_args", "job_invert_args"):
        assert long.setting[key] == short.setting[key], key
    assert {k: v for k, v in long.budget.items() if k != "train_steps"} == \
           {k: v for k, v in short.budget.items() if k != "train_steps"}


def test_idinvert_bn_reads_the_last_bn_and_sums_the_continuous_lr(tmp_path):
    """idinvert_bn.py: γ, β of the encoder's last BN (not an earlier one) against W's μ, σ, and Σ lr
    of the continuous decay (a geometric series: lr·(1 − q^t)/(1 − q), q = decay^(1/every))."""
    import idinvert_bn
    from omegaconf import OmegaConf

    from ganinv.nets.idinvert_encoder import IDInvertEncoder

    run = tmp_path / "curves" / "idinvert" / "train"
    (run / "snapshots").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (tmp_path / "shared").mkdir()
    OmegaConf.save({"trainer": {"max_steps": 40}, "method": {"module": {"lr": 3e-4, "lr_decay": 0.8,
                                                                         "decay_every": None}}},
                   run / ".hydra" / "config.yaml")
    enc = IDInvertEncoder(32, w_space_dim=4, encoder_channels_base=8, encoder_channels_max=16)  # 8 x 4 codes
    with torch.no_grad():
        enc.block4.bn.bn.weight.fill_(0.5)
        enc.block4.bn.bn.bias.copy_(torch.arange(32.0) % 4)  # beta = [0, 1, 2, 3] in every W+ row
        enc.block0.bn.bn.weight.fill_(9.0)  # an earlier BN: ignored
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in enc.state_dict().items()}},
               run / "snapshots" / "step_0000020.pt")
    w = torch.tensor([[0.0, 1.0, 2.0, 5.0], [2.0, 1.0, 2.0, 5.0]])  # mu = [1, 1, 2, 5], sigma = [1.41, 0, 0, 0]
    torch.save(w, tmp_path / "shared" / "w_ref.pt")
    (point,) = idinvert_bn.rows(tmp_path)
    q = 0.8 ** (1 / 10)  # decay_every = 40 // 4
    assert point["step"] == 20 and point["gamma_mean"] == pytest.approx(0.5)
    assert point["sigma_w_mean"] == pytest.approx(2**0.5 / 4)
    assert point["beta_minus_mu_rms"] == pytest.approx(((1 + 0 + 0 + 4) / 4) ** 0.5)
    assert point["mu_rms"] == pytest.approx(((1 + 1 + 4 + 25) / 4) ** 0.5)
    assert point["beta_moved_rms"] == pytest.approx(((0 + 1 + 4 + 9) / 4) ** 0.5)
    assert point["lr_sum"] == pytest.approx(3e-4 * (1 - q**20) / (1 - q))
    assert point["lr_sum_schedule"] == pytest.approx(3e-4 * (1 - q**40) / (1 - q))
    idinvert_bn.main(["--sweep-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert json.loads((tmp_path / "out" / "idinvert_bn.json").read_text())["points"] == [point]
    assert "| 20 | 0.5000 |" in (tmp_path / "out" / "idinvert_bn.md").read_text()


def test_curves_report_compares_idinvert_past_psp_with_psps_last_point():
    """IDInvert's MSE ÷ pSp's at each budget; where pSp's curve has ended, ÷ its last point (named)."""
    import curves_report

    machine = {"processor": "x86_64", "cpus": 2, "torch_threads": 1, "torch": "2"}

    def curve(method, label, mses):
        points = [{"step": 250 * (i + 1), "mse": m, "editability": 0.1, "latent_d_p_real": 0.1,
                   "w_radius_ratio": 1.0, "n_images": 4} for i, m in enumerate(mses)]
        return {"method": method, "label": label, "points": points, "machine": machine, "steps": 250 * len(mses),
                "every": 250, "budget": {"batch_size": 8}, "train_seconds": 1.0}

    data = {"curves": {"psp": curve("psp", "pSp", [0.02, 0.01]),
                       "idinvert": curve("idinvert", "IDInvert encoder", [0.2, 0.014, 0.012])}}
    md = curves_report.markdown(data)
    rows = md.split("## The papers' orderings at each budget")[1].splitlines()
    assert any(r.startswith("| 250 |") and r.endswith("| 10.00 (**no**) |") for r in rows)
    assert any(r.startswith("| 500 |") and r.endswith("| 1.40 |") for r in rows)
    assert any(r.startswith("| 750 |") and r.endswith("| 1.20 vs pSp at 500 |") for r in rows)
    assert "IDInvert encoder ran with another steps (750 vs 500)" in md
