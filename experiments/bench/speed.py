"""ganinv speed benchmark: a markdown table on stdout and the rows as JSON (the code: ``speedbench/``).

    python experiments/bench/speed.py                      # everything, CPU fp32 (+ bf16 / CUDA if available)
    python experiments/bench/speed.py --only ref methods   # some parts: ref | methods | inference | optimization | ddp
    python experiments/bench/speed.py --quick              # smoke run: 64 px, 1 timed repeat, short DDP runs
    python experiments/bench/speed.py --official DIR       # ref rows side by side with the official code in DIR
    python experiments/bench/speed.py --official none      # ganinv alone (no speed-up column)
    python experiments/bench/speed.py --device cuda --precision 32 bf16
    python experiments/bench/speed.py --only ref --precision 32 --layout nchw nhwc   # + channels_last rows
    python experiments/bench/speed.py --render a.json b.json                        # re-print earlier runs

Measurements (batch 4 unless said; images in [-1, 1]; W+ codes [B, n_latent, 512]); each part's
module says exactly what it times:

- ``ref`` (``speedbench/ref.py``): Generator(S, 512, 8, 2) forward at every size, forward+backward, one
  e4e training step and one e4e inference batch at the largest size, nets and losses called directly.
  Side by side with the official rosinality / e4e modules from ``--official DIR`` (default
  ``../shared/baselines`` beside the repo; laid out as ``rosinality/``, ``e4e/``): the same process, the
  official weights loaded into ganinv's, the same inputs, repeats interleaved; speed-up = official /
  ganinv of that run. A folder without the official files fails with one line naming it.
- ``methods``: training iterations/s of the pSp, e4e and IDInvert LightningModules (Trainer steps).
- ``inference``: encoder images/s at batch 1 and 8, with and without the generator.
- ``optimization``: steps/s of Image2StyleGAN W+ optimisation for 4 images.
- ``ddp``: ``train.py +method=psp`` as 1 process and as 2 gloo DDP processes; scaling efficiency.

Every run measures the machine's peak (fp32 sgemm and bf16 matmul GFLOP/s of a 2048² matmul on
``--threads`` threads) before and after the rows and prints it above the table; every row has its
FLOPs (``torch.utils.flop_counter.FlopCounterMode``, one call), GFLOP/s and their fraction of that
peak. Each measurement runs in its own subprocess (``--child``), so ``peak MB`` is that process's
max RSS (or CUDA max allocated) and ``Δ MB`` the part added by the measured nets.
``--thp off`` measures with ``THP_MEM_ALLOC_ENABLE=0`` (importing ganinv sets 1).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speedbench.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
