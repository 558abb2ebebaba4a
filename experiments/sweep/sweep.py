"""One job of the cross-method sweep (a Hydra app; conf/ next to this file).

    python experiments/sweep/sweep.py -m job=psp,e4e,idinvert,opt_w,opt_wplus,opt_domain,e4e_pti,restyle_psp,...  (JOBS)
    python experiments/sweep/sweep.py job=opt_w budget.opt_steps=50     # one job

Every job writes into ``<sweep_dir>/<job>/`` (``sweep_dir``: ``outputs/sweep/<setting>``):

1. the shared artefacts in ``<sweep_dir>/shared/`` are built once (``job=prepare``, or the first job
   that finds them missing): the held-out test faces, the factor regressor, InterFaceGAN boundaries
   in W and reference codes w = mapping(z) (see ``yardsticks.py``);
2. an encoder job trains it with ``train.py`` (``budget.train_steps`` iterations at
   ``budget.batch_size``, into ``train/``; skipped when the same training already exported);
   ``opt_domain`` and ``e4e_pti`` use the encoder the ``idinvert`` / ``e4e`` job exported into the
   same sweep dir and fail with one line if it is not there (basic launcher: list them after it);
3. ``invert.py`` inverts the shared test faces into ``invert/`` (metrics.csv, latents, PTI generators);
4. ``result.json``: mse, psnr, ssim, lpips (null without the pretrained LPIPS-alex weights, never
   downloaded), editability and its parts, latent-D realism, train_seconds (wall time of train.py),
   invert_seconds_per_image (invert.py's per-image time, model loading excluded); logged to W&B
   offline with group = the sweep's name, job_type = the job.
"""
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from tests, not run as a script
    sys.path.insert(0, str(HERE))

import yardsticks  # noqa: E402

from ganinv import demo  # noqa: E402
from ganinv.checkpoints import load_generator, load_torch  # noqa: E402
from ganinv.config import register_resolvers  # noqa: E402
from ganinv.runner import one_line_errors  # noqa: E402

register_resolvers()
# the full sweep, in order (a job that uses another job's encoder comes after it)
JOBS = ("psp", "e4e", "idinvert", "opt_w", "opt_wplus", "opt_domain", "e4e_pti", "restyle_psp", "restyle_e4e",
        "sge", "hybrid", "alae")


def job_config(name):
    """A job's own yaml (conf/job/<name>.yaml), e.g. to find what another job trains."""
    path = HERE / "conf" / "job" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no job {name!r} (conf/job/{name}.yaml)")
    return OmegaConf.load(path)


def export_path(sweep_dir, job_name):
    """Where job ``job_name`` of this sweep exports its trained encoder."""
    return Path(sweep_dir) / job_name / "train" / "export" / f"{job_config(job_name).train}.pt"


def machine():
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def run_script(job, script, args, log):
    """train.py / invert.py as a subprocess (ganinv.demo.run), errors labelled with the sweep job."""
    return demo.run(script, *args, log=log, prog=f"sweep.py job={job}")


# -- training ---------------------------------------------------------------------------------
def train_args(cfg, out):
    method = cfg.job.train
    steps = int(cfg.setting.train_steps.get(method) or cfg.budget.train_steps)
    args = [f"+method={method}", f"trainer.max_steps={steps}", f"data.batch_size={cfg.budget.batch_size}",
            "logger=csv", f"trainer.val_check_interval={steps}", "+trainer.enable_progress_bar=false",
            f"seed={cfg.seed}", *cfg.setting.train_args, *cfg.setting.method_args.get(method, []),
            *cfg.job.train_args]
    if cfg.job.get("progressive"):
        p = cfg.job.progressive
        args += [f"method.module.progressive_start={round(p.start * steps)}",
                 f"method.module.progressive_step_every={max(1, round(p.every * steps))}"]
    return [*args, f"hydra.run.dir={out}"]


def train(cfg, job_dir):
    """Train this job's encoder unless the same training already exported it -> train record."""
    out = job_dir / "train"
    args = train_args(cfg, out)
    record = yardsticks.read_json(out / "train.json")
    export = out / "export" / f"{cfg.job.train}.pt"
    if record and record.get("args") == args and export.is_file():
        print(f"[{cfg.job.name}] reusing {export} (trained {record['seconds']:.0f} s)", flush=True)
        return record
    if out.exists():
        shutil.rmtree(out)  # another budget or setting: start clean (train.py would resume nothing)
    out.mkdir(parents=True)
    print(f"[{cfg.job.name}] training {cfg.job.train}: {' '.join(args[:3])} ...", flush=True)
    seconds = run_script(cfg.job.name, "train.py", args, out.parent / "train.log")
    if not export.is_file():
        raise FileNotFoundError(f"train.py finished without exporting {export}")
    record = {"args": args, "seconds": seconds, "export": str(export)}
    yardsticks.write_json(out / "train.json", record)
    return record


def dependency(cfg, sweep_dir):
    """(encoder path, its train record) of the job this one builds on; one-line error if missing."""
    dep = cfg.job.encoder_from
    path = export_path(sweep_dir, dep)
    record = yardsticks.read_json(path.parent.parent / "train.json")
    if not path.is_file() or record is None:
        raise FileNotFoundError(f"job {cfg.job.name} needs the {dep} job's encoder {path}: run job={dep} first "
                                f"into the same sweep_dir (e.g. -m job={dep},{cfg.job.name})")
    return path, record


# -- inversion and scores ---------------------------------------------------------------------
def invert(cfg, job_dir, inputs, encoder, key):
    """invert.py on the shared test faces into <job>/invert (redone when ``key`` changed)."""
    out = job_dir / "invert"
    args = [f"input={inputs}", f"output={out}", f"batch_size={cfg.budget.invert_batch}", f"seed={cfg.seed}",
            *cfg.setting.invert_args, *(a.replace("{encoder}", str(encoder)) for a in cfg.job.invert_args),
            *cfg.setting.get("job_invert_args", {}).get(cfg.job.name, [])]
    key = yardsticks.fingerprint([args, key])
    record = yardsticks.read_json(out / "invert.json")
    if not (record and record.get("key") == key and (out / "metrics.csv").is_file()):
        if out.exists():
            shutil.rmtree(out)
        print(f"[{cfg.job.name}] inverting {inputs} ...", flush=True)
        seconds = run_script(cfg.job.name, "invert.py", args, job_dir / "invert.log")
        yardsticks.write_json(out / "invert.json", {"args": args, "key": key, "seconds": seconds})
    return out


def image_scores(out):
    """metrics.csv -> mean mse, psnr, ssim, lpips (None when blank), seconds per image; rows."""
    rows, mean = demo.read_metrics(out / "metrics.csv")
    lp = [float(r["lpips"]) for r in rows if r.get("lpips") not in (None, "")]
    return rows, {"mse": mean["mse"], "psnr": mean["psnr"], "ssim": mean["ssim"],
                  "lpips": sum(lp) / len(lp) if len(lp) == len(rows) else None,
                  "invert_seconds_per_image": mean["seconds"]}


CODE_KEYS = ("editability", "target_shift", "identity_drift", "other_drift", "latent_d_acc", "latent_d_p_real",
             "w_radius_ratio")


def code_scores(cfg, out, rows, shared_dir):
    """Editability (with each image's generator) and latent realism of the saved codes; all None for a
    job with its own generator (``own_generator``: the sweep's boundaries and sampled w are not its W)."""
    if cfg.job.get("own_generator"):
        return dict.fromkeys(CODE_KEYS)
    y = cfg.yardsticks
    ws = torch.stack([load_torch(out / "latents" / f"{r['image']}.pt", "latent") for r in rows]).float()
    regressor, boundaries, w_ref = yardsticks.load_shared(shared_dir, bool(cfg.setting.editability))
    scores = yardsticks.latent_realism(ws, w_ref, folds=y.realism_folds, steps=y.realism_steps, seed=cfg.seed)
    if boundaries is not None:
        base = load_generator(cfg.setting.generator)
        gens = [load_generator(out / r["generator"]) if r.get("generator") else base for r in rows]
        e = yardsticks.editability(ws, gens, boundaries, regressor)
        scores.update({k: e[k] for k in ("editability", "target_shift", "identity_drift", "other_drift")},
                      editability_per_factor=e["per_factor"])
    else:
        scores.update(editability=None, target_shift=None, identity_drift=None, other_drift=None)
    return scores


def log_wandb(cfg, sweep_dir, result):
    import wandb

    os.environ.setdefault("WANDB_SILENT", "true")
    config = {"budget": OmegaConf.to_container(cfg.budget, resolve=True),
              "job": OmegaConf.to_container(cfg.job, resolve=True)}
    run = wandb.init(project="ganinv", group=cfg.name, job_type=cfg.job.name, name=f"{cfg.name}/{cfg.job.name}",
                     dir=str(sweep_dir), mode="offline", config=config)
    flat = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    run.log(flat)
    run.summary.update(flat)
    run.finish()


# -- the job ------------------------------------------------------------------------------------
def run_job(cfg):
    sweep_dir = Path(cfg.sweep_dir).resolve()
    job_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    name = cfg.job.name
    encoder, train_record = None, None
    if cfg.job.encoder_from:  # check first: a missing dependency costs nothing
        encoder, train_record = dependency(cfg, sweep_dir)
    prep = yardsticks.ensure_shared(sweep_dir / "shared", cfg)
    if name == "prepare":
        return prep
    t0 = time.time()
    if cfg.job.train:
        train_record = train(cfg, job_dir)
        encoder = Path(train_record["export"])
    out = invert(cfg, job_dir, prep["inputs"], encoder, [prep["fingerprint"], train_record])
    rows, result = image_scores(out)
    result.update(code_scores(cfg, out, rows, sweep_dir / "shared"))
    result = {"job": name, "label": cfg.job.label, "sweep": cfg.name, "setting": cfg.setting.name,
              "n_images": len(rows), **result,
              "train_seconds": train_record["seconds"] if train_record else 0.0,
              "train_shared_with": cfg.job.encoder_from, "encoder": str(encoder) if encoder else None,
              "budget": OmegaConf.to_container(cfg.budget, resolve=True),
              "job_seconds": time.time() - t0, "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    yardsticks.write_json(job_dir / "result.json", result)
    if cfg.wandb:
        log_wandb(cfg, sweep_dir, result)
    ed = "n/a" if result["editability"] is None else f"{result['editability']:.3f}"
    acc = "n/a" if result["latent_d_acc"] is None else f"{result['latent_d_acc']:.2f}"
    print(f"[{name}] mse {result['mse']:.4f} psnr {result['psnr']:.2f} ssim {result['ssim']:.3f} editability {ed} "
          f"latent-D acc {acc} -> {job_dir / 'result.json'}", flush=True)
    return result


@hydra.main(version_base="1.3", config_path="conf", config_name="sweep")
def main(cfg):
    with one_line_errors("sweep.py"):
        return run_job(cfg)


if __name__ == "__main__":
    main()
